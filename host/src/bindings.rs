//! Host-side bindings, generated once per WIT world and re-exported by version so a second
//! version can live beside the first.

/// [`gantry_model::world::SCHEDULER`]. `bindgen!` wants the name as a literal: it fails to
/// compile when the WIT has no such world, and a test holds the constant to the WIT.
pub mod scheduler {
    wasmtime::component::bindgen!({
        world: "gantry:scheduler/scheduler@0.1.0",
        path: ["../wit/host", "../wit/scheduler"],
        additional_derives: [PartialEq],
        // Exports are called on a fiber so a guest parked in a WASI host call (a sleep, a poll)
        // can be abandoned at its deadline; epoch interruption only reaches running wasm.
        exports: { default: async },
    });
}

/// The scheduler world's types, version 0.1.
pub mod sched_v0_1 {
    pub use super::scheduler::Scheduler;
    pub use super::scheduler::SchedulerPre;
    pub use super::scheduler::gantry::host::log::Level;
    pub use super::scheduler::gantry::host::types::PluginError as GuestError;
    pub use super::scheduler::gantry::scheduler::types::{
        Allocations, Gpus, Jobs, Placements, Snapshot, Tenant,
    };
}

/// [`gantry_model::world::PREPROCESS`]; the `gantry:host` interfaces are the scheduler
/// bindings', so one linker serves both worlds.
pub mod preprocess {
    wasmtime::component::bindgen!({
        world: "gantry:preprocess/preprocess@0.1.0",
        path: ["../wit/host", "../wit/preprocess"],
        with: {
            "gantry:host/types@0.1.0": crate::bindings::scheduler::gantry::host::types,
            "gantry:host/log@0.1.0": crate::bindings::scheduler::gantry::host::log,
        },
        exports: { default: async },
    });
}

/// The preprocess world's types, version 0.1.
pub mod pre_v0_1 {
    pub use super::preprocess::Preprocess;
    pub use super::preprocess::PreprocessPre;
    pub use super::preprocess::exports::gantry::preprocess::transform::{Batch, Tensor};
}
