//! Plugin failures, each naming the plugin (and, for a call, the export and the cause).

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

/// Which call into a plugin failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Call {
    /// Creating the instance (core start functions, initial memories and tables).
    Instantiate,
    /// The `configure` export.
    Configure,
    /// A scheduler's `schedule` export.
    Schedule,
    /// A preprocessing plugin's `observe` export.
    Observe,
    /// A preprocessing plugin's `prepare` export.
    Prepare,
    /// A preprocessing plugin's `process` export (the transform).
    Process,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Call::Instantiate => "instantiation",
            Call::Configure => "configure",
            Call::Schedule => "schedule",
            Call::Observe => "observe",
            Call::Prepare => "prepare",
            Call::Process => "process",
        })
    }
}

/// A call into a plugin failed: which plugin, which call, and why, in one line. The host is
/// unaffected; the instance is discarded. (The wasm backtrace of a trap is a `debug` event.)
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}` ({call}): {fault}")]
pub struct PluginError {
    /// Plugin name.
    pub plugin: String,
    /// The call that failed.
    pub call: Call,
    /// What went wrong.
    pub fault: Fault,
}

/// Why a plugin call failed. Every text a plugin chose is cut to [`super::LOG_MESSAGE_CAP`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Fault {
    /// The guest trapped (unreachable, out-of-bounds access, stack exhausted, ...).
    #[error("trapped: {message}{}", frame.as_ref().map(|f| format!(" (in `{f}`)")).unwrap_or_default())]
    Trap {
        /// The trap reason.
        message: String,
        /// The innermost guest function, when known.
        frame: Option<String>,
    },
    /// The guest panicked (a Rust guest aborts with `unreachable`; its panic message is taken
    /// from what it wrote to stderr).
    #[error("panicked: {message}")]
    Panic {
        /// The panic message and location.
        message: String,
    },
    /// The guest called WASI `exit`: plugins answer through their exports, they do not exit.
    #[error("exited with status {code} (a plugin may not exit)")]
    Exit {
        /// The exit status.
        code: i32,
    },
    /// A host function refused what the guest asked (an oversized `random` request, ...).
    #[error("a host call was refused: {message}")]
    HostCallRefused {
        /// The host's reason.
        message: String,
    },
    /// The call ran past its deadline and was interrupted.
    #[error("exceeded its {limit_ms} ms deadline")]
    Deadline {
        /// The deadline.
        limit_ms: u64,
    },
    /// The guest asked for more linear memory than its limit (all its memories together).
    #[error("hit its memory limit of {limit_mib} MiB")]
    MemoryLimit {
        /// The limit.
        limit_mib: u32,
    },
    /// The guest asked for more table elements than its limit (all its tables together).
    #[error("hit its table limit of {limit} elements")]
    TableLimit {
        /// The limit.
        limit: u32,
    },
    /// The guest returned its own error value.
    #[error("returned an error ({kind}): {message}")]
    Guest {
        /// `invalid-config`, `invalid-input` or `internal`.
        kind: &'static str,
        /// The guest's text.
        message: String,
    },
    /// The answer could not be read or broke the contract of the world.
    #[error("returned malformed output: {reason}")]
    MalformedOutput {
        /// What was wrong.
        reason: String,
    },
    /// The answer was well-formed but broke the rules of the host (for a scheduler: a GPU given
    /// twice, busy, unhealthy, too small, an incomplete gang, a quota exceeded...).
    #[error("gave an invalid answer, rejected whole: {reason}")]
    InvalidAnswer {
        /// The first rule broken.
        reason: String,
    },
    /// A scheduler placed nothing, cycle after cycle, while the native strategy could place
    /// jobs of the same queue.
    #[error(
        "placed nothing for {cycles} cycles ({waited_s:.0} s) while jobs in the queue fit the free GPUs"
    )]
    NoProgress {
        /// Cycles in a row with nothing placed.
        cycles: u32,
        /// Time since the first of them, seconds of the cycles' clock.
        waited_s: f64,
    },
    /// The plugin is quarantined after repeated faults; the fallback decides.
    #[error("is quarantined after {faults} faults ({why})")]
    Quarantined {
        /// Faults that led to quarantine.
        faults: u32,
        /// Which rule quarantined it.
        why: String,
    },
    /// The plugin overran its deadline recently; the fallback decides until the back-off ends.
    #[error(
        "is backing off after overrunning its deadline; the fallback decides {cycles} more cycle(s)"
    )]
    BackingOff {
        /// Cycles of back-off left, this one included.
        cycles: u32,
    },
    /// A fresh instance could not be created (the instance pool is exhausted, a count over the
    /// manifest's limits...).
    #[error("could not be instantiated: {message}")]
    Instantiate {
        /// The reason.
        message: String,
    },
}

impl PluginError {
    /// This error, a missed deadline naming `limit_ms` (the whole deadline, where the call had
    /// what its setup left of it).
    pub fn with_deadline(mut self, limit_ms: u64) -> Self {
        if let Fault::Deadline { limit_ms: l } = &mut self.fault {
            *l = limit_ms;
        }
        self
    }

    /// A failure of `call` into `plugin`.
    pub fn new(plugin: impl Into<String>, call: Call, fault: Fault) -> Self {
        Self {
            plugin: plugin.into(),
            call,
            fault,
        }
    }

    /// A short machine-readable name of the failure class, for counters and JSON.
    pub fn class(&self) -> &'static str {
        self.fault.class()
    }
}

impl Fault {
    /// A short machine-readable name of the failure class, for counters and JSON.
    pub fn class(&self) -> &'static str {
        match self {
            Fault::Trap { .. } => "trap",
            Fault::Panic { .. } => "panic",
            Fault::Exit { .. } => "exit",
            Fault::HostCallRefused { .. } => "host-call-refused",
            Fault::Deadline { .. } => "deadline",
            Fault::MemoryLimit { .. } | Fault::TableLimit { .. } => "memory-limit",
            Fault::Guest { .. } => "guest-error",
            Fault::MalformedOutput { .. } => "malformed-output",
            Fault::InvalidAnswer { .. } => "invalid-answer",
            Fault::NoProgress { .. } => "no-progress",
            Fault::Quarantined { .. } => "quarantined",
            Fault::BackingOff { .. } => "backing-off",
            Fault::Instantiate { .. } => "instantiate",
        }
    }

    /// Guest-chosen text, cut to [`super::LOG_MESSAGE_CAP`] bytes on one line.
    pub fn text(s: impl AsRef<str>) -> String {
        cap_line(s.as_ref(), super::LOG_MESSAGE_CAP)
    }
}

/// `s` on one line (line breaks and other control characters as spaces), at most `cap` bytes
/// (cut at a character boundary, saying how much was cut).
pub fn cap_line(s: &str, cap: usize) -> String {
    let mut cut = s.len().min(cap);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out: String = s[..cut]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if cut < s.len() {
        out.push_str(&format!("… ({} more bytes cut)", s.len() - cut));
    }
    out
}
