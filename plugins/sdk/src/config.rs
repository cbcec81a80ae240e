//! Typed access to the `[config]` entries of a plugin manifest.

use crate::sched::{ConfigEntry, PluginError};

/// The manifest's configuration, looked up by key.
#[derive(Debug, Default, Clone)]
pub struct Config {
    entries: Vec<ConfigEntry>,
}

impl Config {
    /// Wraps the entries passed to `configure`.
    pub fn new(entries: Vec<ConfigEntry>) -> Self {
        Self { entries }
    }

    /// The raw text of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    }

    /// Parses `key` as `T`, or returns `default` when absent.
    pub fn parse_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, PluginError> {
        match self.get(key) {
            None => Ok(default),
            Some(text) => text.trim_matches('"').parse().map_err(|_| {
                PluginError::InvalidConfig(format!("config key `{key}`: cannot parse `{text}`"))
            }),
        }
    }

    /// Fails on any key not in `known`, so a typo in a manifest is reported, not ignored.
    pub fn reject_unknown(&self, known: &[&str]) -> Result<(), PluginError> {
        match self
            .entries
            .iter()
            .find(|e| !known.contains(&e.key.as_str()))
        {
            Some(e) => Err(PluginError::InvalidConfig(format!(
                "unknown config key `{}` (known: {})",
                e.key,
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }
}
