//! Gantry: a host runtime for AI-training clusters.
//!
//! Gantry owns the GPUs and loads sandboxed WebAssembly plugins for the decisions every platform
//! wants to customise; this crate is what platforms embed, and the `gantry` binary is a thin
//! layer over it.
//!
//! - [`Host`]: one wasmtime engine, the loaded plugins and the cluster state.
//! - [`audit`]: the tamper-evident audit log (hash chain, signed checkpoints).
//! - [`keys`]: Ed25519 signing keys.
//! - [`plugin`]: the plugin runtime (manifests, cached compilation, limits, failures, quarantine).
//! - [`policy`]: Rego policies packed into OPA-ABI wasm, bundles, and sandboxed decisions.
//! - [`scheduling`]: snapshots, validation, plugin calls and the native fallback.
//! - [`cluster`]: the cluster model and its files.
//! - [`simulate`]: discrete-event simulation of a cluster over a job trace.
//! - [`training`]: training jobs on the native kernels (`gantry-kernels`): configs, data, devices,
//!   checkpoints.
//! - [`chart`], [`durable`]: SVG line charts; crash-safe whole-file writes.

pub mod audit;
pub mod bench;
pub mod bindings;
pub mod builtin;
pub mod chart;
pub mod cluster;
pub mod daemon;
pub mod durable;
pub mod engine;
#[cfg(test)]
pub(crate) mod fuzz;
mod host;
pub mod keys;
pub mod pipeline;
pub mod plugin;
pub mod policy;
pub mod preprocess;
pub mod scheduling;
pub mod simulate;
pub mod storage;
pub mod training;

pub use host::{
    Assignment, CycleReport, DECISION_ENTRYPOINT, Decider, Host, HostConfig, HostError,
    PluginSource, PluginTrust, UploadedPlugin, Verdict, default_cache_dir,
};

// The README's Rust examples compile and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
