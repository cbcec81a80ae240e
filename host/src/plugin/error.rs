//! Plugin failures, each naming the plugin.

use std::path::PathBuf;

/// A plugin could not be loaded. Nothing is registered when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, so not also a `source`).
        error: std::io::Error,
    },
    /// A plugin file may not be read (outside the directory, not a regular file, too large).
    #[error(transparent)]
    File(#[from] super::files::FileError),
    /// The manifest is malformed or inconsistent.
    #[error("bad plugin manifest {}: {message}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong, with line and field where known.
        message: String,
    },
    /// The bytes are not a valid component.
    #[error("plugin `{plugin}`: {} is not a valid wasm component: {message}", path.display())]
    Compile {
        /// Plugin name.
        plugin: String,
        /// The wasm file.
        path: PathBuf,
        /// The compiler's reason.
        message: String,
    },
    /// The plugin is not signed by a trusted key (and unsigned plugins are not allowed).
    #[error("plugin at {}: refused: {message}", path.display())]
    Signature {
        /// The manifest.
        path: PathBuf,
        /// What is missing or wrong.
        message: String,
    },
    /// The component does not implement the world its kind requires.
    #[error("plugin `{plugin}` does not implement world `{world}`: {message}")]
    WrongWorld {
        /// Plugin name.
        plugin: String,
        /// The required world.
        world: String,
        /// What is missing or extra.
        message: String,
    },
}

/// A call into a plugin failed. The host is unaffected; the instance is discarded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The guest trapped (unreachable, out-of-bounds access, stack exhausted, ...).
    #[error("plugin `{plugin}` trapped: {message}{backtrace}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The trap reason.
        message: String,
        /// The wasm backtrace, one frame per line (empty when unavailable).
        backtrace: String,
    },
    /// The call ran past the manifest's deadline and was interrupted.
    #[error("plugin `{plugin}` exceeded its {limit_ms} ms deadline")]
    Deadline {
        /// Plugin name.
        plugin: String,
        /// The deadline.
        limit_ms: u64,
    },
    /// The guest asked for more linear memory (or table space) than its limit.
    #[error("plugin `{plugin}` hit its memory limit of {limit_mib} MiB")]
    MemoryLimit {
        /// Plugin name.
        plugin: String,
        /// The limit.
        limit_mib: u32,
    },
    /// The guest returned its own error value.
    #[error("plugin `{plugin}` returned an error ({kind}): {message}")]
    Guest {
        /// Plugin name.
        plugin: String,
        /// `invalid-config`, `invalid-input` or `internal`.
        kind: &'static str,
        /// The guest's text.
        message: String,
    },
    /// The answer could not be read or broke the contract of the world.
    #[error("plugin `{plugin}` returned malformed output: {reason}")]
    MalformedOutput {
        /// Plugin name.
        plugin: String,
        /// What was wrong.
        reason: String,
    },
    /// The answer was well-formed but broke the rules of the host (for a scheduler: a GPU given
    /// twice, busy, unhealthy, too small, an incomplete gang, a quota exceeded...).
    #[error("plugin `{plugin}` gave an invalid answer, rejected whole: {reason}")]
    InvalidAnswer {
        /// Plugin name.
        plugin: String,
        /// The first rule broken.
        reason: String,
    },
    /// The plugin is quarantined after repeated faults; the caller should use its fallback.
    #[error("plugin `{plugin}` is quarantined after {faults} consecutive faults")]
    Quarantined {
        /// Plugin name.
        plugin: String,
        /// Consecutive faults that led to quarantine.
        faults: u32,
    },
    /// A fresh instance could not be created (for example the instance pool is exhausted).
    #[error("plugin `{plugin}` could not be instantiated: {message}")]
    Instantiate {
        /// Plugin name.
        plugin: String,
        /// The reason.
        message: String,
    },
}

impl PluginError {
    /// A short machine-readable name of the failure class, for counters and JSON.
    pub fn class(&self) -> &'static str {
        match self {
            PluginError::Trap { .. } => "trap",
            PluginError::Deadline { .. } => "deadline",
            PluginError::MemoryLimit { .. } => "memory-limit",
            PluginError::Guest { .. } => "guest-error",
            PluginError::MalformedOutput { .. } => "malformed-output",
            PluginError::InvalidAnswer { .. } => "invalid-answer",
            PluginError::Quarantined { .. } => "quarantined",
            PluginError::Instantiate { .. } => "instantiate",
        }
    }
}
