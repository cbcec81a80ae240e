//! Gantry: a host runtime for AI-training clusters.
//!
//! Gantry owns the GPUs and loads sandboxed WebAssembly plugins for the decisions every platform
//! wants to customise. This crate, the core, is what platforms embed (see `examples/embedder`):
//! the engine, plugins, policy, scheduling, storage, the audit log, the preprocessing pipeline
//! and training jobs. It has no HTTP server, database or command line: those are
//! `gantry-daemon` and `gantry-cli`, built on it.
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
//! - [`storage`]: the encrypted, content-addressed object store.
//! - [`preprocess`], [`pipeline`]: preprocessing plugins and the streaming data path.
//! - [`builtin`]: the shipped plugins and policy, compiled in.
//! - [`engine`], [`bindings`]: the one wasmtime engine; the host side of the WIT worlds.
//! - [`chart`], [`durable`]: SVG line charts; crash-safe whole-file writes.

pub mod audit;
pub mod bindings;
pub mod blocking;
pub mod builtin;
pub mod chart;
pub mod cluster;
pub mod durable;
pub mod engine;
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
    Assignment, CheckedJob, CyclePlan, CycleReport, DECISION_ENTRYPOINT, DecidedCycle, Decider,
    Host, HostConfig, HostError, PluginSource, PluginTrust, PreparedScheduler, RecordedScheduler,
    UploadedPlugin, Verdict, default_cache_dir,
};

// The README's Rust examples compile and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
