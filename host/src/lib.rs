//! Gantry: a host runtime for AI-training clusters.
//!
//! Gantry owns the GPUs and loads sandboxed WebAssembly plugins for the decisions every platform
//! wants to customise. This crate is what platforms embed; the `gantry` binary is a thin layer
//! over it.

pub mod bindings;
pub mod cluster;
pub mod engine;
pub mod plugin;
