//! The `spread` scheduler plugin: worst-fit placement that spreads load across nodes and racks
//! (see [`spreading`]).

use gantry_plugin_sdk::config::Config;
use gantry_plugin_sdk::sched::{ConfigEntry, Jobs, Placement, PluginError, Snapshot, Strategy};

pub mod spreading;

/// The plugin's entry points.
pub struct Spread;

impl Strategy for Spread {
    fn configure(config: Vec<ConfigEntry>) -> Result<(), PluginError> {
        Config::new(config).reject_unknown(&[])
    }

    fn schedule(snapshot: Snapshot, queue: Jobs) -> Result<Vec<Placement>, PluginError> {
        Ok(spreading::spread(&snapshot, &queue))
    }
}

gantry_plugin_sdk::export_strategy!(Spread);

#[cfg(test)]
mod tests;
