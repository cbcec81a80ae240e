//! The `binpack` scheduler plugin: least-fragmentation bin packing
//! ([`gantry_plugin_sdk::binpack`], the code the host runs natively as its fallback).

use gantry_plugin_sdk::binpack;
use gantry_plugin_sdk::config::Config;
use gantry_plugin_sdk::sched::{ConfigEntry, Jobs, Placement, PluginError, Snapshot, Strategy};

/// The plugin's entry points.
pub struct Binpack;

impl Strategy for Binpack {
    fn configure(config: Vec<ConfigEntry>) -> Result<(), PluginError> {
        Config::new(config).reject_unknown(&[])
    }

    fn schedule(snapshot: Snapshot, queue: Jobs) -> Result<Vec<Placement>, PluginError> {
        Ok(binpack::pack(&snapshot, &queue))
    }
}

gantry_plugin_sdk::export_strategy!(Binpack);
