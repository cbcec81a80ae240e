//! The Gantry policy engine: Rego evaluated by `regorus` behind OPA's Wasm ABI (version 1.2), so
//! any OPA-ABI host (here `opa-wasm`) can run it as if `opa build -t wasm` had produced it.
//!
//! The module is built once, for `wasm32-unknown-unknown`, without a policy. `gantry policy build`
//! packs a policy into a copy: it appends a data segment holding the [`Policy`] as JSON (Rego
//! modules, entrypoints, base data) and points the exported `GANTRY_POLICY` cell at it. The ABI's
//! version globals are added by the same packer, as Rust cannot define exported wasm globals.
//!
//! - [`policy`]: the policy description and its evaluation (plain Rust, tested natively).
//! - [`diagnostic`]: regorus's errors as `file:line:col: message`.
//! - `abi` (wasm only): the ABI exports, the bump heap the ABI expects, the `env` imports.

extern crate alloc;

pub mod diagnostic;
pub mod policy;

#[cfg(target_family = "wasm")]
mod abi;
