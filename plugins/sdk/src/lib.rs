//! Guest SDK for Gantry plugins written in Rust.
//!
//! It holds the one `wit_bindgen::generate!` call per world, so every plugin shares the same
//! bindings, plus small helpers that every scheduling strategy needs:
//!
//! - [`sched`]: the scheduler's data ([`model`]: GPU and job columns with row views) and the
//!   [`Strategy`] trait.
//! - [`fit`]: an index of free GPUs by node, NVLink domain and rack, with best-fit and
//!   worst-fit pickers; [`binpack`]: least-fragmentation bin packing on it. Both come from the
//!   `gantry-model` crate, which the host uses too: both sides decide identically.
//! - [`wire`]: the one place where the world's types become the model and back.
//! - [`transform`]: the preprocessing world's record batches and the [`transform::Transform`]
//!   trait ([`export_transform!`]).
//! - [`config`]: typed access to the manifest's `[config]` entries.
//! - [`log`]: logging through the host.
//!
//! A scheduler plugin is a `cdylib` crate built for `wasm32-wasip2`:
//!
//! ```ignore
//! use gantry_plugin_sdk::sched::{ConfigEntry, Jobs, Placement, PluginError, Snapshot, Strategy};
//! struct MyStrategy;
//! impl Strategy for MyStrategy {
//!     fn configure(_config: Vec<ConfigEntry>) -> Result<(), PluginError> { Ok(()) }
//!     fn schedule(snapshot: Snapshot, queue: Jobs) -> Result<Vec<Placement>, PluginError> {
//!         Ok(Vec::new())
//!     }
//! }
//! gantry_plugin_sdk::export_strategy!(MyStrategy);
//! ```

/// Bindings for the [`world::SCHEDULER`] world. The macro wants the name as a literal: it fails
/// to compile when the WIT has no such world, and a test holds [`world::SCHEDULER`] to the WIT.
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

/// Bindings for the [`world::PREPROCESS`] world; the host interfaces are the
/// scheduler bindings' (one `gantry:host` package, one set of types).
pub mod preprocess {
    wit_bindgen::generate!({
        world: "gantry:preprocess/preprocess@0.1.0",
        path: ["../../wit/host", "../../wit/preprocess"],
        pub_export_macro: true,
        export_macro_name: "export_preprocess",
        default_bindings_module: "gantry_plugin_sdk::preprocess",
        with: {
            "gantry:host/types@0.1.0": crate::scheduler::gantry::host::types,
            "gantry:host/log@0.1.0": crate::scheduler::gantry::host::log,
        },
    });
}

#[doc(hidden)]
pub use preprocess::export_preprocess;

/// What a scheduling strategy implements; export it with [`export_strategy!`].
pub trait Strategy {
    /// Called once on each new instance with the manifest's `[config]`.
    fn configure(config: Vec<sched::ConfigEntry>) -> Result<(), sched::PluginError>;
    /// One scheduling cycle: placements for (some of) the queued jobs.
    fn schedule(
        snapshot: sched::Snapshot,
        queue: sched::Jobs,
    ) -> Result<Vec<sched::Placement>, sched::PluginError>;
}

/// The scheduler world's data (GPU and job columns with row views), and the trait a strategy
/// implements.
pub mod sched {
    pub use crate::Strategy;
    pub use crate::model::{
        Allocation, Gpu, Gpus, Job, Jobs, Node, Placement, Snapshot, Tenant, Topology,
    };
    pub use crate::scheduler::gantry::host::types::{ConfigEntry, PluginError};
}

/// Exports a [`Strategy`] as the component's `gantry:scheduler/strategy` implementation.
///
/// Only on wasm targets: native builds (unit tests) cannot link the WIT export names.
#[macro_export]
macro_rules! export_strategy {
    ($strategy:ty) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            use $crate::scheduler::exports::gantry::scheduler::strategy as wit;
            struct GantryStrategyExport;
            impl wit::Guest for GantryStrategyExport {
                fn configure(
                    config: ::std::vec::Vec<$crate::sched::ConfigEntry>,
                ) -> ::std::result::Result<(), $crate::sched::PluginError> {
                    <$strategy as $crate::Strategy>::configure(config)
                }
                fn schedule(
                    snapshot: wit::Snapshot,
                    queue: wit::Jobs,
                ) -> ::std::result::Result<wit::Placements, $crate::sched::PluginError> {
                    let (snapshot, queue) = $crate::wire::model(snapshot, queue)?;
                    <$strategy as $crate::Strategy>::schedule(snapshot, queue)
                        .map($crate::wire::placements)
                }
            }
            $crate::export_scheduler!(GantryStrategyExport);
        };
    };
}

#[doc(hidden)]
pub use scheduler::export_scheduler;

pub mod config;
pub mod transform;
pub mod wire;

/// The scheduler's data model (the `gantry-model` crate, shared with the host).
pub use gantry_model as model;
pub use gantry_model::{binpack, fit, testing, world};

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
