//! Calls into scheduler plugins: a fresh isolated instance per call (or a warm pool when the
//! manifest asks), deadline armed before every guest call, failures classified.

use std::sync::{Arc, Mutex};

use tracing::Instrument;
use wasmtime::component::Linker;
use wasmtime::{Engine, Store};

use super::model::{Jobs, Placement, Snapshot};
use super::wire;
use crate::bindings::sched_v0_1::{Scheduler, SchedulerPre};
use crate::plugin::{
    self, ArtifactCache, CacheOutcome, Health, LoadError, Manifest, PluginError, PluginKind,
    PluginState,
};

pub(crate) type Ready = (Store<PluginState>, Scheduler);

/// A loaded scheduler plugin: compiled, linked and pre-instantiated once.
pub struct SchedulerPlugin {
    name: Arc<str>,
    manifest: Manifest,
    wasm_sha256: String,
    cache: CacheOutcome,
    load_ms: f64,
    engine: Engine,
    pre: SchedulerPre<PluginState>,
    config: Vec<(String, String)>,
    warm: Mutex<Vec<Ready>>,
    health: Health,
}

impl std::fmt::Debug for SchedulerPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerPlugin")
            .field("name", &self.name)
            .field("version", &self.manifest.version)
            .field("wasm_sha256", &self.wasm_sha256)
            .finish()
    }
}

impl SchedulerPlugin {
    /// Compiles (or loads from cache) and links the component `wasm` described by `manifest`.
    /// `origin` names the source in errors.
    pub fn load(
        engine: &Engine,
        linker: &Linker<PluginState>,
        cache: &ArtifactCache,
        manifest: Manifest,
        wasm: &[u8],
        origin: &std::path::Path,
        quarantine_after: u32,
    ) -> Result<Self, LoadError> {
        let (compiled, pre) = plugin::link(
            engine,
            linker,
            cache,
            manifest,
            wasm,
            origin,
            PluginKind::Scheduler,
            SchedulerPre::new,
        )?;
        Ok(Self {
            config: compiled.manifest.config_entries(),
            name: compiled.name,
            manifest: compiled.manifest,
            wasm_sha256: compiled.wasm_sha256,
            cache: compiled.cache,
            load_ms: compiled.load_ms,
            engine: engine.clone(),
            pre,
            warm: Mutex::new(Vec::new()),
            health: Health::new(quarantine_after),
        })
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The manifest it was loaded with.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// SHA-256 of its wasm bytes.
    pub fn wasm_sha256(&self) -> &str {
        &self.wasm_sha256
    }

    /// Whether the compiled form came from the on-disk cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }

    /// Milliseconds spent compiling or loading the compiled form.
    pub fn load_ms(&self) -> f64 {
        self.load_ms
    }

    /// Its fault counters and quarantine state.
    pub fn health(&self) -> &Health {
        &self.health
    }

    fn fail(&self, store: &Store<PluginState>, err: wasmtime::Error) -> PluginError {
        plugin::classify(
            &self.name,
            &self.manifest.limits,
            store.data().limit_exceeded(),
            err,
        )
    }

    /// Instantiates and configures the plugin once, as a call would, and drops the instance:
    /// what an upload must pass before it is kept.
    pub fn probe(&self) -> Result<(), PluginError> {
        plugin::driver::block_on(self.instantiate()).map(|_| ())
    }

    /// A new instance, configured (used per call, and by the benchmarks).
    pub(crate) async fn instantiate(&self) -> Result<Ready, PluginError> {
        plugin::driver::within_deadline(&self.name, &self.manifest.limits, self.configured()).await
    }

    async fn configured(&self) -> Result<Ready, PluginError> {
        let mut store = plugin::new_store(&self.engine, &self.name, &self.manifest.limits);
        let bindings = match self.pre.instantiate_async(&mut store).await {
            Ok(b) => b,
            Err(e) if store.data().limit_exceeded() => return Err(self.fail(&store, e)),
            Err(e) => {
                return Err(PluginError::Instantiate {
                    plugin: self.name.to_string(),
                    message: format!("{e:#}"),
                });
            }
        };
        let config: Vec<_> = self
            .config
            .iter()
            .map(
                |(key, value)| crate::bindings::scheduler::gantry::host::types::ConfigEntry {
                    key: key.clone(),
                    value: value.clone(),
                },
            )
            .collect();
        let result = bindings
            .gantry_scheduler_strategy()
            .call_configure(&mut store, &config)
            .await;
        store.data_mut().end_call();
        match result {
            Ok(Ok(())) => Ok((store, bindings)),
            Ok(Err(e)) => Err(plugin::guest_error(&self.name, e)),
            Err(e) => Err(self.fail(&store, e)),
        }
    }

    /// Calls `configure` with no entries on a ready instance: the cheapest possible guest call,
    /// for measuring call overhead.
    pub(crate) async fn trivial_call(&self, ready: &mut Ready) -> Result<(), PluginError> {
        let (store, bindings) = ready;
        plugin::arm_deadline(store, self.manifest.limits.deadline_ms);
        match bindings
            .gantry_scheduler_strategy()
            .call_configure(&mut *store, &[])
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(store, e)),
        }
    }

    /// One scheduling cycle in the sandbox, from synchronous code (see [`Self::schedule_async`]).
    pub fn schedule(
        &self,
        snapshot: &Snapshot,
        queue: &Jobs,
    ) -> Result<Vec<Placement>, PluginError> {
        plugin::driver::block_on(self.schedule_async(snapshot, queue))
    }

    /// One scheduling cycle in the sandbox, bounded by the manifest's deadline whether the guest
    /// computes or waits in a host call. Does not validate the answer (see [`super::validate`])
    /// nor record health: the caller does both.
    pub async fn schedule_async(
        &self,
        snapshot: &Snapshot,
        queue: &Jobs,
    ) -> Result<Vec<Placement>, PluginError> {
        let span = tracing::debug_span!("gantry_scheduling.plugin_call", plugin = %self.name);
        let warm = self.warm.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let (mut store, bindings) = match warm {
            Some(ready) => ready,
            None => self.instantiate().instrument(span.clone()).await?,
        };
        let (snapshot, queue) = wire::columns(snapshot, queue);
        plugin::arm_deadline(&mut store, self.manifest.limits.deadline_ms);
        let call = async {
            let result = bindings
                .gantry_scheduler_strategy()
                .call_schedule(&mut store, &snapshot, &queue)
                .await;
            store.data_mut().end_call();
            match result {
                Ok(Ok(placements)) => Ok(placements),
                // A guest error leaves the instance sane, but it is dropped all the same: cheap,
                // and no state from a failed call can leak into the next one.
                Ok(Err(e)) => Err(plugin::guest_error(&self.name, e)),
                Err(e) => Err(self.fail(&store, e)),
            }
        };
        let placements = plugin::driver::within_deadline(&self.name, &self.manifest.limits, call)
            .instrument(span)
            .await?;
        let placements =
            wire::placements(placements).map_err(|reason| PluginError::MalformedOutput {
                plugin: self.name.to_string(),
                reason,
            })?;
        let mut pool = self.warm.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < self.manifest.limits.warm_pool as usize {
            pool.push((store, bindings));
        }
        Ok(placements)
    }
}
