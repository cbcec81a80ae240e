//! The Gantry policy engine: Rego evaluated by `regorus` behind OPA's Wasm ABI (version 1.2), so
//! any OPA-ABI host (here `opa-wasm`) can run it as if `opa build -t wasm` had produced it.
//!
//! The module is built once, for `wasm32-unknown-unknown`, without a policy, and every bundle
//! carries these same bytes: the policy (Rego modules and entrypoints, a [`policy::Policy`] as
//! JSON) travels in the bundle's `data.json` under [`policy::POLICY_KEY`], so a host compiles the
//! module once and reuses it for every policy. The ABI's version globals are added once by the
//! host (`gantry::policy::pack`), as Rust cannot define exported wasm globals.
//!
//! - [`policy`]: the policy description and its evaluation (plain Rust, tested natively).
//! - [`diagnostic`]: regorus's errors as `file:line:col: message`.
//! - [`json`]: JSON text to a regorus value with exact numbers (inputs and data).
//! - [`host_builtins`]: the clock and entropy, which the host provides (`opa_builtin*`).
//! - [`go_builtins`]: builtins OPA takes from Go's standard library, read as Go reads them.
//! - [`go_crypto`]: OPA's digests, HMACs and JSON Web Tokens, HMAC, RSA, ECDSA and Ed25519
//!   signed (`crypto.*`, `io.jwt.*`).
//! - [`go_regex`]: Go's regular expressions (OPA's `regex.*`) on Rust's `regex` crate.
//! - [`go_glob`]: gobwas/glob's globs (OPA's `glob.match`) on Rust's `regex` crate.
//! - [`go_fmt`]: Go's `fmt.Sprintf` (OPA's `sprintf`), width, precision and error markers included.
//! - `abi` (wasm only): the ABI exports, the bump heap the ABI expects, the `env` imports.

extern crate alloc;

pub mod diagnostic;
pub mod go_builtins;
pub mod go_crypto;
pub mod go_fmt;
pub mod go_glob;
pub mod go_net;
pub mod go_regex;
pub mod go_strings;
pub mod go_units;
pub mod host_builtins;
pub mod json;
pub mod policy;

#[cfg(target_family = "wasm")]
mod abi;
