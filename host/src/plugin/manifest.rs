//! The plugin manifest: a TOML file next to the `.wasm`.
//!
//! ```toml
//! name = "binpack"
//! version = "0.1.0"
//! kind = "scheduler"
//! world = "gantry:scheduler/scheduler@0.1.0"
//! wasm = "binpack.wasm"        # optional; defaults to <name>.wasm
//!
//! [limits]
//! memory_mib = 64              # all linear memories together
//! deadline_ms = 1000           # per call
//! table_elements = 10000       # all tables together
//! instances = 16               # core module instances
//! memories = 4                 # linear memories
//! tables = 16                  # tables
//! warm_pool = 0                # >0 keeps that many ready instances between calls
//!
//! [config]                     # passed to the plugin's `configure`
//! relax_after_s = 600
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::LoadError;
use crate::engine::{
    MAX_PLUGIN_INSTANCES, MAX_PLUGIN_MEMORIES, MAX_PLUGIN_MEMORY_MIB, MAX_PLUGIN_TABLE_ELEMENTS,
    MAX_PLUGIN_TABLES,
};

/// What a plugin is for; each kind has one WIT world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// Implements `gantry:scheduler/scheduler`.
    Scheduler,
    /// Implements `gantry:preprocess/preprocess`.
    Preprocess,
}

impl PluginKind {
    /// The fully qualified WIT world a plugin of this kind must implement.
    pub fn world(self) -> &'static str {
        match self {
            PluginKind::Scheduler => gantry_model::world::SCHEDULER,
            PluginKind::Preprocess => gantry_model::world::PREPROCESS,
        }
    }
}

/// Resource limits of one plugin.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Cap on linear memory, in MiB: every memory of the plugin's store together.
    pub memory_mib: u32,
    /// Wall-clock deadline of one call, in milliseconds.
    pub deadline_ms: u64,
    /// Cap on table elements: every table of the plugin's store together.
    pub table_elements: u32,
    /// Cap on core module instances in one store.
    pub instances: u32,
    /// Cap on linear memories in one store.
    pub memories: u32,
    /// Cap on tables in one store.
    pub tables: u32,
    /// Ready instances kept between calls; 0 gives every call a fresh, isolated instance.
    pub warm_pool: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mib: 64,
            deadline_ms: 1000,
            table_elements: 10_000,
            instances: 16,
            memories: 4,
            tables: 16,
            warm_pool: 0,
        }
    }
}

/// A parsed and checked manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Plugin name, used in every log line and error about it.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// What the plugin does.
    pub kind: PluginKind,
    /// The WIT world it implements; must match `kind`.
    pub world: String,
    /// The component file, relative to the manifest.
    #[serde(default)]
    pub wasm: Option<PathBuf>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Configuration passed to the plugin's `configure`.
    #[serde(default)]
    pub config: toml::Table,
}

impl Manifest {
    /// Parses manifest text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, LoadError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| LoadError::Manifest {
            path: origin.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        manifest.check(origin)?;
        Ok(manifest)
    }

    /// Reads (a regular file, under [`super::files::MAX_MANIFEST_BYTES`]) and parses the manifest
    /// at `path`.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let bytes = super::files::read_named(path, super::files::MAX_MANIFEST_BYTES)?;
        let text = std::str::from_utf8(&bytes).map_err(|e| LoadError::Manifest {
            path: path.to_path_buf(),
            message: format!("not UTF-8 ({e})"),
        })?;
        Self::parse(text, path)
    }

    fn check(&self, origin: &Path) -> Result<(), LoadError> {
        let fail = |field: &str, message: String| LoadError::Manifest {
            path: origin.to_path_buf(),
            message: format!("field `{field}`: {message}"),
        };
        let valid_name = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Err(fail(
                "name",
                format!(
                    "`{}` must be non-empty ASCII letters, digits, `-` or `_`",
                    self.name
                ),
            ));
        }
        if self.world != self.kind.world() {
            return Err(fail(
                "world",
                format!(
                    "a {:?} plugin implements `{}`, not `{}`",
                    self.kind,
                    self.kind.world(),
                    self.world
                ),
            ));
        }
        let relative = self.wasm_relative();
        let confined = relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !confined || relative.as_os_str().is_empty() {
            return Err(fail(
                "wasm",
                format!(
                    "`{}` must be a relative path inside the plugin's directory (no `..`, no \
                     absolute path)",
                    relative.display()
                ),
            ));
        }
        let l = &self.limits;
        if l.memory_mib == 0 || l.memory_mib > MAX_PLUGIN_MEMORY_MIB {
            return Err(fail(
                "limits.memory_mib",
                format!("{} is outside 1..={MAX_PLUGIN_MEMORY_MIB}", l.memory_mib),
            ));
        }
        if l.deadline_ms == 0 || l.deadline_ms > 600_000 {
            return Err(fail(
                "limits.deadline_ms",
                format!("{} is outside 1..=600000", l.deadline_ms),
            ));
        }
        let counts = [
            (
                "limits.table_elements",
                l.table_elements,
                MAX_PLUGIN_TABLE_ELEMENTS,
            ),
            ("limits.instances", l.instances, MAX_PLUGIN_INSTANCES),
            ("limits.memories", l.memories, MAX_PLUGIN_MEMORIES),
            ("limits.tables", l.tables, MAX_PLUGIN_TABLES),
        ];
        for (field, value, max) in counts {
            if value == 0 || value > max {
                return Err(fail(field, format!("{value} is outside 1..={max}")));
            }
        }
        if l.warm_pool > 64 {
            return Err(fail(
                "limits.warm_pool",
                format!("{} is above 64", l.warm_pool),
            ));
        }
        Ok(())
    }

    /// The `[config]` table as the `(key, text)` pairs the WIT `configure` takes.
    pub fn config_entries(&self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()
    }

    /// The manifest of a plugin given as a directory (its `plugin.toml`) or as the manifest.
    pub fn path_of(plugin: &Path) -> PathBuf {
        if plugin.is_dir() {
            plugin.join("plugin.toml")
        } else {
            plugin.to_path_buf()
        }
    }

    /// The component's path relative to the manifest's directory (`wasm`, or `<name>.wasm`).
    pub fn wasm_relative(&self) -> PathBuf {
        match &self.wasm {
            Some(p) => p.clone(),
            None => PathBuf::from(format!("{}.wasm", self.name)),
        }
    }

    /// Where the component is, given the manifest's own path (read it with
    /// [`super::files::PluginFiles`], which keeps it inside the directory).
    pub fn wasm_path(&self, manifest_path: &Path) -> PathBuf {
        let dir = manifest_path.parent().unwrap_or(Path::new("."));
        dir.join(self.wasm_relative())
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, LoadError> {
        Manifest::parse(text, Path::new("plugin.toml"))
    }

    const GOOD: &str = r#"
name = "binpack"
version = "0.1.0"
kind = "scheduler"
world = "gantry:scheduler/scheduler@0.1.0"
[limits]
memory_mib = 32
[config]
mode = "fast"
depth = 3
"#;

    #[test]
    fn parses_limits_and_config() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.limits.memory_mib, 32);
        assert_eq!(m.limits.deadline_ms, 1000);
        let mut entries = m.config_entries();
        entries.sort();
        assert_eq!(
            entries,
            vec![("depth".into(), "3".into()), ("mode".into(), "fast".into())]
        );
        assert_eq!(
            m.wasm_path(Path::new("/p/plugin.toml")),
            Path::new("/p/binpack.wasm")
        );
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let err = parse(&GOOD.replace("memory_mib = 32", "memory_mib = \"lots\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("plugin.toml"), "{err}");
        assert!(err.contains("line 7"), "{err}");
        assert!(err.contains("memory_mib"), "{err}");

        let err = parse(&GOOD.replace("kind = \"scheduler\"", "kind = \"scheduler\"\ncolour = 1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");

        let err = parse(&GOOD.replace("scheduler/scheduler", "preprocess/preprocess"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("field `world`"), "{err}");

        let err = parse(&GOOD.replace("memory_mib = 32", "memory_mib = 4096"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.memory_mib"), "{err}");
    }

    #[test]
    fn manifest_bounds_instances_and_table_elements() {
        for field in ["instances", "table_elements", "memories", "tables"] {
            for value in ["0", "4294967295"] {
                let text = GOOD.replace("memory_mib = 32", &format!("{field} = {value}"));
                let err = parse(&text).unwrap_err().to_string();
                assert!(err.contains(&format!("field `limits.{field}`")), "{err}");
                assert!(err.contains(value) && err.contains("outside 1..="), "{err}");
            }
        }
        let defaults = parse(GOOD).unwrap().limits;
        assert!(
            defaults.instances >= 14,
            "componentize-py components hold ~14 core instances"
        );
    }
}
