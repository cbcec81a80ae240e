//! The `spread` scheduler plugin: worst-fit placement that spreads load across nodes and racks
//! (see [`spreading`]).

use gantry_plugin_sdk::config::Config;
use gantry_plugin_sdk::sched::{ConfigEntry, Guest, Job, Placement, PluginError, Snapshot};

pub mod spreading;

/// The plugin's entry points.
pub struct Spread;

impl Guest for Spread {
    fn configure(config: Vec<ConfigEntry>) -> Result<(), PluginError> {
        Config::new(config).reject_unknown(&[])
    }

    fn schedule(snapshot: Snapshot, queue: Vec<Job>) -> Result<Vec<Placement>, PluginError> {
        Ok(spreading::spread(&snapshot, &queue))
    }
}

// Exported only into the component: native builds (unit tests) would choke on the WIT names.
#[cfg(target_family = "wasm")]
gantry_plugin_sdk::export_scheduler!(Spread);

#[cfg(test)]
mod tests;
