//! Guest SDK for Gantry plugins written in Rust.
//!
//! It holds the one `wit_bindgen::generate!` call per world, so every plugin shares the same
//! bindings, plus small helpers that every scheduling strategy needs:
//!
//! - [`sched`]: the scheduler world's types under short names.
//! - [`fit`]: an index of free GPUs by node, NVLink domain and rack, with best-fit and
//!   worst-fit pickers. The host compiles this same file natively for its fallback strategy.
//! - [`config`]: typed access to the manifest's `[config]` entries.
//! - [`log`]: logging through the host.
//!
//! A scheduler plugin is a `cdylib` crate built for `wasm32-wasip2`:
//!
//! ```ignore
//! use gantry_plugin_sdk::sched::{ConfigEntry, Guest, Job, Placement, PluginError, Snapshot};
//! struct MyStrategy;
//! impl Guest for MyStrategy {
//!     fn configure(_config: Vec<ConfigEntry>) -> Result<(), PluginError> { Ok(()) }
//!     fn schedule(snapshot: Snapshot, queue: Vec<Job>) -> Result<Vec<Placement>, PluginError> {
//!         Ok(Vec::new())
//!     }
//! }
//! gantry_plugin_sdk::export_scheduler!(MyStrategy);
//! ```

/// Bindings for the `gantry:scheduler/scheduler@0.1.0` world.
pub mod scheduler {
    wit_bindgen::generate!({
        world: "gantry:scheduler/scheduler@0.1.0",
        path: ["../../wit/host", "../../wit/scheduler"],
        pub_export_macro: true,
        export_macro_name: "export_scheduler",
        default_bindings_module: "gantry_plugin_sdk::scheduler",
        additional_derives: [PartialEq],
        generate_all,
    });
}

/// The scheduler world's types and the trait a strategy implements.
pub mod sched {
    pub use crate::scheduler::exports::gantry::scheduler::strategy::Guest;
    pub use crate::scheduler::gantry::host::types::{ConfigEntry, PluginError};
    pub use crate::scheduler::gantry::scheduler::types::{
        Allocation, Gpu, Job, Node, Placement, Snapshot, Tenant, Topology,
    };
}

pub use scheduler::export_scheduler;

pub mod config;
pub mod fit;
pub mod testing;

/// Logging through the host; events are tagged with the plugin's name.
pub mod log {
    use crate::scheduler::gantry::host::log::{Level, log};

    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    /// Logs at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
}
