//! The plugin runtime: manifests, compilation (cached), sandboxed stores, limits, stdio capture,
//! failure classification and quarantine. Kind-specific calls live with their kind
//! (`scheduling::plugin` for schedulers).

pub mod cache;
pub mod compile;
pub mod driver;
pub mod env;
pub mod error;
pub mod files;
pub mod health;
pub mod limits;
pub mod manifest;
pub mod output;
pub mod signature;
pub mod stdio;

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, Trap, WasmBacktrace};
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

pub use cache::{ArtifactCache, CacheOutcome};
pub use env::CallEnv;
pub use error::{Call, Fault, LoadError, PluginError};
pub use health::{Health, HealthReport};
pub use limits::PluginLimiter;
pub use manifest::{Limits, Manifest, PluginKind};
pub use output::OutputBudget;
pub use stdio::CapturedOutput;

use crate::bindings::sched_v0_1::Level;

/// Log events a plugin may emit in one call; the rest are dropped (and counted).
pub const LOG_EVENTS_PER_CALL: u32 = 1000;
/// Longest log message or error text kept from a plugin, in bytes.
pub const LOG_MESSAGE_CAP: usize = 4096;
/// Most bytes a guest may make the host allocate while lifting one call's results.
pub const HOSTCALL_FUEL: usize = 64 << 20;
/// Largest `wasi:random` request served in one host call.
pub const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// What each plugin store holds: a WASI context with nothing of the host's in it (no files,
/// environment, sockets or inherited stdio; a clock and randomness the host chooses per call),
/// the limiter, the captured output and the plugin's output allowance.
pub struct PluginState {
    plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: PluginLimiter,
    stdout: CapturedOutput,
    stderr: CapturedOutput,
    log_events: u32,
    output: Arc<OutputBudget>,
    dropped_seen: u64,
    env: CallEnv,
}

impl PluginState {
    /// True when the store refused a memory or table growth.
    pub fn limit_exceeded(&self) -> bool {
        self.limiter.exceeded
    }

    /// The time and randomness the next call sees.
    pub fn env(&self) -> &CallEnv {
        &self.env
    }

    /// Emits captured guest output as `tracing` events (within the plugin's allowance) and
    /// resets per-call budgets; says, at most every few seconds, that output was dropped.
    pub fn end_call(&mut self) {
        self.stdout
            .flush_to_tracing(&self.plugin, "stdout", &self.output);
        self.stderr
            .flush_to_tracing(&self.plugin, "stderr", &self.output);
        self.log_events = 0;
        let dropped = self.output.dropped();
        if dropped.events > self.dropped_seen && self.output.warning_due() {
            tracing::warn!(
                target: "gantry::guest",
                plugin = &*self.plugin,
                dropped_events = dropped.events,
                dropped_bytes = dropped.bytes,
                "plugin output over its allowance ({} B/s) was dropped",
                output::OUTPUT_RATE
            );
        }
        self.dropped_seen = dropped.events;
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl crate::bindings::scheduler::gantry::host::log::Host for PluginState {
    fn log(&mut self, level: Level, message: String) {
        self.log_events += 1;
        if self.log_events > LOG_EVENTS_PER_CALL {
            self.output.drop_event(message.len());
            return;
        }
        let message = error::cap_line(&message, LOG_MESSAGE_CAP);
        if !self.output.admit(message.len()) {
            return;
        }
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(target: "gantry::guest", plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "gantry::guest", plugin, "{message}"),
            Level::Info => tracing::info!(target: "gantry::guest", plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "gantry::guest", plugin, "{message}"),
            Level::Error => tracing::error!(target: "gantry::guest", plugin, "{message}"),
        }
    }
}

impl crate::bindings::scheduler::gantry::host::types::Host for PluginState {}

/// A linker with the imports every plugin gets: WASI (with an empty context) and host logging.
///
/// WASI is linked in its async form: a guest waiting on a clock or stream then parks its fiber
/// rather than the host thread, so [`driver::within_deadline`] can abandon it.
pub fn base_linker(engine: &Engine) -> wasmtime::Result<Linker<PluginState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    crate::bindings::scheduler::gantry::host::log::add_to_linker::<_, HasSelf<_>>(
        &mut linker,
        |s| s,
    )?;
    Ok(linker)
}

/// A fresh, isolated store for one plugin, with its limits and deadline armed, writing into
/// the plugin's `output` allowance and seeing the time and randomness of `env`.
pub fn new_store(
    engine: &Engine,
    plugin: &Arc<str>,
    limits: &Limits,
    output: &Arc<OutputBudget>,
    env: CallEnv,
) -> Store<PluginState> {
    let stdout = CapturedOutput::default();
    let stderr = CapturedOutput::default();
    let wasi = WasiCtxBuilder::new()
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .wall_clock(env.wall_clock())
        .monotonic_clock(env.monotonic_clock())
        .secure_random(env.random())
        .insecure_random(env.random())
        .insecure_random_seed(env::name_seed(plugin))
        .max_random_size(MAX_RANDOM_BYTES)
        .build();
    let state = PluginState {
        plugin: plugin.clone(),
        wasi,
        table: ResourceTable::new(),
        limiter: PluginLimiter::new(limits),
        stdout,
        stderr,
        log_events: 0,
        output: output.clone(),
        dropped_seen: output.dropped().events,
        env,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_hostcall_fuel(HOSTCALL_FUEL);
    arm_deadline(&mut store, limits.deadline_ms);
    store
}

/// Sets the epoch deadline for the next guest call.
pub fn arm_deadline<T>(store: &mut Store<T>, deadline_ms: u64) {
    let ticks = deadline_ms.div_ceil(crate::engine::EPOCH_TICK.as_millis() as u64);
    store.set_epoch_deadline(ticks.max(1));
    store.epoch_deadline_trap();
}

/// Turns a wasmtime error from guest call `call` into the plugin's typed error, in one line;
/// the wasm backtrace, when there is one, goes out as a `debug` event (`-v`).
pub fn classify(
    plugin: &str,
    call: Call,
    limits: &Limits,
    state: &PluginState,
    err: wasmtime::Error,
) -> PluginError {
    let backtrace = err.downcast_ref::<WasmBacktrace>();
    if let Some(bt) = backtrace {
        tracing::debug!(plugin, %call, "wasm backtrace of the fault:\n{bt}");
    }
    let fault = fault_of(limits, state, &err, backtrace);
    PluginError::new(plugin, call, fault)
}

fn fault_of(
    limits: &Limits,
    state: &PluginState,
    err: &wasmtime::Error,
    backtrace: Option<&WasmBacktrace>,
) -> Fault {
    let limit = || match state.limiter.table_refused() {
        true => Fault::TableLimit {
            limit: limits.table_elements,
        },
        false => Fault::MemoryLimit {
            limit_mib: limits.memory_mib,
        },
    };
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return Fault::Exit { code: exit.0 };
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        if *trap == Trap::Interrupt {
            return Fault::Deadline {
                limit_ms: limits.deadline_ms,
            };
        }
        if state.limit_exceeded() {
            return limit();
        }
        if *trap == Trap::UnreachableCodeReached
            && let Some(message) = state.stderr.panic_message()
        {
            return Fault::Panic {
                message: Fault::text(message),
            };
        }
        let frame = backtrace
            .and_then(|bt| bt.frames().first())
            .and_then(|f| f.func_name())
            .map(Fault::text);
        return Fault::Trap {
            message: trap.to_string(),
            frame,
        };
    }
    if state.limit_exceeded() {
        return limit();
    }
    // An error with a wasm backtrace was raised while guest code was on the stack: a host
    // function (WASI, logging) refused what it was asked. One without was raised after the guest
    // returned: the canonical ABI refusing the answer (bad pointers, invalid UTF-8, results over
    // the host-allocation fuel).
    if backtrace.is_some_and(|bt| !bt.frames().is_empty()) {
        // The outermost context is the backtrace; the host function's own reason is the root.
        let reason = err
            .chain()
            .last()
            .map(ToString::to_string)
            .unwrap_or_default();
        return Fault::HostCallRefused {
            message: Fault::text(reason),
        };
    }
    Fault::MalformedOutput {
        reason: Fault::text(format!("{err:#}")),
    }
}

/// A compiled plugin with its manifest.
pub struct Compiled {
    /// The manifest.
    pub manifest: Manifest,
    /// The plugin name, shared by its stores.
    pub name: Arc<str>,
    /// The compiled component.
    pub component: wasmtime::component::Component,
    /// SHA-256 of the wasm bytes, hex.
    pub wasm_sha256: String,
    /// Whether the compiled form came from the cache.
    pub cache: CacheOutcome,
    /// Time to compile or load, in milliseconds.
    pub load_ms: f64,
}

/// The guest's own refusal (`plugin-error`) from `call` as the host's typed error (its text cut
/// to [`LOG_MESSAGE_CAP`]).
pub fn guest_error(
    plugin: &str,
    call: Call,
    e: crate::bindings::scheduler::gantry::host::types::PluginError,
) -> PluginError {
    use crate::bindings::scheduler::gantry::host::types::PluginError as GuestError;
    let (kind, message) = match e {
        GuestError::InvalidConfig(m) => ("invalid-config", m),
        GuestError::InvalidInput(m) => ("invalid-input", m),
        GuestError::Internal(m) => ("internal", m),
    };
    PluginError::new(
        plugin,
        call,
        Fault::Guest {
            kind,
            message: Fault::text(message),
        },
    )
}

/// A loaded plugin as `Debug` shows it (`kind` names its type): its name, version and component
/// hash, not its compiled code or warm instances.
pub(crate) fn debug(
    f: &mut std::fmt::Formatter<'_>,
    kind: &str,
    name: &str,
    manifest: &Manifest,
    wasm_sha256: &str,
) -> std::fmt::Result {
    f.debug_struct(kind)
        .field("name", &name)
        .field("version", &manifest.version)
        .field("wasm_sha256", &wasm_sha256)
        .finish()
}

/// Checks that `manifest` declares `kind`, compiles (or loads from cache) the component and
/// links it; `typed` checks the world's exports (the bindings' `*Pre::new`). A component that
/// does not implement the kind's world is a [`LoadError::WrongWorld`]. Crate-private: no trust
/// check happens here; the public way in is [`crate::Host`]'s loaders, which check first.
#[allow(clippy::too_many_arguments)] // the loader's inputs, passed through from each kind's load
pub(crate) fn link<P>(
    engine: &Engine,
    linker: &Linker<PluginState>,
    cache: &ArtifactCache,
    manifest: Manifest,
    wasm: &[u8],
    origin: &std::path::Path,
    kind: PluginKind,
    typed: impl FnOnce(wasmtime::component::InstancePre<PluginState>) -> wasmtime::Result<P>,
) -> Result<(Compiled, P), LoadError> {
    if manifest.kind != kind {
        return Err(LoadError::Manifest {
            path: origin.to_path_buf(),
            message: format!(
                "field `kind`: expected a {} plugin, got {:?}",
                format!("{kind:?}").to_lowercase(),
                manifest.kind
            ),
        });
    }
    let compiled = compile(engine, cache, manifest, wasm, origin)?;
    let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld {
        plugin: compiled.manifest.name.clone(),
        world: kind.world().to_string(),
        message: format!("{e:#}"),
    };
    let pre = linker
        .instantiate_pre(&compiled.component)
        .and_then(typed)
        .map_err(wrong_world)?;
    tracing::info!(
        plugin = %compiled.name,
        kind = ?kind,
        version = %compiled.manifest.version,
        sha256 = %compiled.wasm_sha256,
        cache = ?compiled.cache,
        load_ms = compiled.load_ms,
        "loaded plugin"
    );
    Ok((compiled, pre))
}

/// Compiles (or loads from cache) the component `wasm` described by `manifest` (crate-private,
/// like [`link`]).
pub(crate) fn compile(
    engine: &Engine,
    cache: &ArtifactCache,
    manifest: Manifest,
    wasm: &[u8],
    origin: &std::path::Path,
) -> Result<Compiled, LoadError> {
    let start = std::time::Instant::now();
    let wasm_sha256 = cache::sha256_hex(wasm);
    let (component, outcome) = cache
        .load_or_compile(engine, wasm, &wasm_sha256)
        .map_err(|e| LoadError::Compile {
            plugin: manifest.name.clone(),
            path: origin.to_path_buf(),
            message: format!("{e:#}"),
        })?;
    Ok(Compiled {
        name: Arc::from(manifest.name.as_str()),
        manifest,
        component,
        wasm_sha256,
        cache: outcome,
        load_ms: start.elapsed().as_secs_f64() * 1e3,
    })
}
