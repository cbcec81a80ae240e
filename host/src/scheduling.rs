//! Scheduling: the cluster's live state, the snapshot handed to a strategy, the validation of
//! its answer, the plugin calls and the native fallback.

/// The scheduler's data: the `gantry-model` crate, which the guest SDK shares, so the host's
/// validation and native strategy read exactly what plugins read.
pub use gantry_model as model;
pub mod native;
pub mod plugin;
pub mod snapshot;
pub mod state;
pub mod validate;
pub mod wire;

pub use plugin::SchedulerPlugin;
pub use state::{ClusterState, PendingJob, RunningAlloc};
