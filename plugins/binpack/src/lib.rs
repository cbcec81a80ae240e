//! The `binpack` scheduler plugin: least-fragmentation bin packing (see [`packing`]).

use gantry_plugin_sdk::config::Config;
use gantry_plugin_sdk::fit;
use gantry_plugin_sdk::sched::{ConfigEntry, Jobs, Placement, PluginError, Snapshot, Strategy};

/// The scheduler world's types, under the names `packing` expects.
mod sched {
    pub use gantry_plugin_sdk::sched::*;
}

pub mod packing;

/// The plugin's entry points.
pub struct Binpack;

impl Strategy for Binpack {
    fn configure(config: Vec<ConfigEntry>) -> Result<(), PluginError> {
        Config::new(config).reject_unknown(&[])
    }

    fn schedule(snapshot: Snapshot, queue: Jobs) -> Result<Vec<Placement>, PluginError> {
        Ok(packing::pack(&snapshot, &queue))
    }
}

gantry_plugin_sdk::export_strategy!(Binpack);

#[cfg(test)]
mod tests;
