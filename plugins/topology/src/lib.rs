//! The `topology` scheduler plugin: topology-aware gang placement that fills NVLink domains
//! before crossing nodes and nodes before crossing racks (see [`placement`]).

use std::sync::atomic::{AtomicU64, Ordering};

use gantry_plugin_sdk::config::Config;
use gantry_plugin_sdk::sched::{ConfigEntry, Jobs, Placement, PluginError, Snapshot, Strategy};

pub mod placement;

/// Seconds a job waits before each further scope it may cross, when the manifest is silent.
pub const DEFAULT_RELAX_AFTER_S: f64 = 600.0;

/// The configured `relax_after_s`, as `f64` bits. The host calls `configure` once per fresh
/// instance and `schedule` after it, so the value must outlive the call; an atomic keeps that
/// safe without `unsafe`.
static RELAX_AFTER_S: AtomicU64 = AtomicU64::new(DEFAULT_RELAX_AFTER_S.to_bits());

/// The `relax_after_s` that `schedule` uses: the configured one, else the default.
pub fn relax_after_s() -> f64 {
    f64::from_bits(RELAX_AFTER_S.load(Ordering::Relaxed))
}

/// Reads `relax_after_s` from the manifest's config: seconds (a non-negative number), or
/// `"never"` for infinity, which keeps every job to the tightest scope that could hold it.
pub fn parse_relax_after_s(config: &Config) -> Result<f64, PluginError> {
    const KEY: &str = "relax_after_s";
    if config
        .get(KEY)
        .is_some_and(|v| v.trim().trim_matches('"').eq_ignore_ascii_case("never"))
    {
        return Ok(f64::INFINITY);
    }
    let seconds: f64 = config.parse_or(KEY, DEFAULT_RELAX_AFTER_S)?;
    if seconds.is_nan() || seconds < 0.0 {
        return Err(PluginError::InvalidConfig(format!(
            "config key `{KEY}`: {seconds} is not a number of seconds >= 0 (or \"never\")"
        )));
    }
    Ok(seconds)
}

/// The plugin's entry points.
pub struct TopologyAware;

impl Strategy for TopologyAware {
    fn configure(config: Vec<ConfigEntry>) -> Result<(), PluginError> {
        let config = Config::new(config);
        config.reject_unknown(&["relax_after_s"])?;
        let seconds = parse_relax_after_s(&config)?;
        RELAX_AFTER_S.store(seconds.to_bits(), Ordering::Relaxed);
        Ok(())
    }

    fn schedule(snapshot: Snapshot, queue: Jobs) -> Result<Vec<Placement>, PluginError> {
        Ok(placement::place(&snapshot, &queue, relax_after_s()))
    }
}

gantry_plugin_sdk::export_strategy!(TopologyAware);

#[cfg(test)]
mod tests;
