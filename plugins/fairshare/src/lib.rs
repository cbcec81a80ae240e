//! The `fairshare` scheduler plugin: dominant-resource fair share across tenants with EASY
//! backfill (see [`drf`]).

use gantry_plugin_sdk::config::Config;
use gantry_plugin_sdk::fit;
use gantry_plugin_sdk::sched::{ConfigEntry, Jobs, Placement, PluginError, Snapshot, Strategy};

/// The scheduler world's types, under the names the strategy's modules expect.
mod sched {
    pub use gantry_plugin_sdk::sched::*;
}

pub mod backfill;
pub mod drf;
pub mod usable;

/// The plugin's entry points.
pub struct Fairshare;

impl Strategy for Fairshare {
    fn configure(config: Vec<ConfigEntry>) -> Result<(), PluginError> {
        Config::new(config).reject_unknown(&[])
    }

    fn schedule(snapshot: Snapshot, queue: Jobs) -> Result<Vec<Placement>, PluginError> {
        Ok(drf::schedule(&snapshot, &queue))
    }
}

gantry_plugin_sdk::export_strategy!(Fairshare);

#[cfg(test)]
mod tests;
