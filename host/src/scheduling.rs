//! Scheduling: the cluster's live state, the snapshot handed to a strategy, the validation of
//! its answer, the plugin calls and the native fallback.

pub mod native;
pub mod plugin;
pub mod snapshot;
pub mod state;
pub mod validate;

pub use plugin::SchedulerPlugin;
pub use state::{ClusterState, PendingJob, RunningAlloc};
