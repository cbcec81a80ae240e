//! Calls into scheduler plugins: a fresh isolated instance per call (or a warm pool when the
//! manifest asks), deadline armed before every guest call, the call's time and random seed set
//! by the host, failures classified.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use tracing::Instrument;
use wasmtime::component::Linker;
use wasmtime::{Engine, Store};

use super::model::{Jobs, Placement, Snapshot};
use super::wire;
use crate::bindings::sched_v0_1::{self as wit, Scheduler, SchedulerPre};
use crate::plugin::health::HealthRules;
use crate::plugin::{
    self, ArtifactCache, CacheOutcome, Call, CallEnv, Fault, Health, Limits, LoadError, Manifest,
    PluginError, PluginKind, PluginState,
};

pub(crate) type Ready = (Store<PluginState>, Scheduler);

/// A loaded scheduler plugin: compiled, linked and pre-instantiated once.
pub struct SchedulerPlugin {
    name: Arc<str>,
    manifest: Manifest,
    /// The manifest's limits with the deadline capped by the host.
    limits: Limits,
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
        plugin::debug(
            f,
            "SchedulerPlugin",
            &self.name,
            &self.manifest,
            &self.wasm_sha256,
        )
    }
}

impl SchedulerPlugin {
    /// Compiles (or loads from cache) and links the component `wasm` described by `manifest`.
    /// `origin` names the source in errors; `rules` say when it is quarantined; no call may run
    /// longer than `max_deadline_ms`, whatever the manifest says. No trust check happens here:
    /// crate-private, reached only through [`crate::Host`]'s loaders, which check first.
    #[allow(clippy::too_many_arguments)] // the loader's inputs, passed through from the host
    pub(crate) fn load(
        engine: &Engine,
        linker: &Linker<PluginState>,
        cache: &ArtifactCache,
        manifest: Manifest,
        wasm: &[u8],
        origin: &std::path::Path,
        rules: HealthRules,
        max_deadline_ms: u64,
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
        let mut limits = compiled.manifest.limits.clone();
        limits.deadline_ms = limits.deadline_ms.min(max_deadline_ms.max(1));
        Ok(Self {
            config: compiled.manifest.config_entries(),
            name: compiled.name,
            manifest: compiled.manifest,
            limits,
            wasm_sha256: compiled.wasm_sha256,
            cache: compiled.cache,
            load_ms: compiled.load_ms,
            engine: engine.clone(),
            pre,
            warm: Mutex::new(Vec::new()),
            health: Health::new(rules, Arc::default()),
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

    /// The limits calls run under (the manifest's, the deadline capped by the host).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn fail(&self, call: Call, store: &Store<PluginState>, err: wasmtime::Error) -> PluginError {
        plugin::classify(&self.name, call, &self.limits, store.data(), err)
    }

    /// Instantiates and configures the plugin once, as a call would, and drops the instance:
    /// what an upload must pass before it is kept.
    pub async fn probe(&self) -> Result<(), PluginError> {
        self.instantiate().await.map(|_| ())
    }

    /// A new instance, configured, at time 0 (used by the benchmarks).
    pub async fn instantiate(&self) -> Result<Ready, PluginError> {
        self.instantiate_with(CallEnv::default()).await
    }

    /// A new instance, configured, seeing `env`.
    async fn instantiate_with(&self, env: CallEnv) -> Result<Ready, PluginError> {
        plugin::driver::within_deadline(
            &self.name,
            Call::Configure,
            &self.limits,
            self.configured(env),
        )
        .await
    }

    async fn configured(&self, env: CallEnv) -> Result<Ready, PluginError> {
        let output = self.health.output();
        let mut store = plugin::new_store(&self.engine, &self.name, &self.limits, output, env);
        let bindings = match self.pre.instantiate_async(&mut store).await {
            Ok(b) => b,
            Err(e) if store.data().limit_exceeded() => {
                return Err(self.fail(Call::Instantiate, &store, e));
            }
            Err(e) => {
                store.data_mut().end_call();
                return Err(PluginError::new(
                    self.name.as_ref(),
                    Call::Instantiate,
                    Fault::Instantiate {
                        message: Fault::text(format!("{e:#}")),
                    },
                ));
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
        let result = match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(plugin::guest_error(&self.name, Call::Configure, e)),
            Err(e) => Err(self.fail(Call::Configure, &store, e)),
        };
        store.data_mut().end_call();
        result.map(|()| (store, bindings))
    }

    /// Calls `configure` with no entries on a ready instance: the cheapest possible guest call,
    /// for measuring call overhead.
    pub async fn trivial_call(&self, ready: &mut Ready) -> Result<(), PluginError> {
        let (store, bindings) = ready;
        plugin::arm_deadline(store, self.limits.deadline_ms);
        match bindings
            .gantry_scheduler_strategy()
            .call_configure(&mut *store, &[])
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(Call::Configure, store, e)),
        }
    }

    /// One scheduling cycle in the sandbox, bounded by the deadline whether the guest computes
    /// or waits in a host call. The plugin's clocks read the snapshot's `now_s` and its random
    /// source is seeded from the plugin, that time and the input (see [`crate::plugin::env`]),
    /// so the same input gives the same answer. Does not validate the answer (see
    /// [`super::validate`]) nor record health: the caller does both.
    pub async fn schedule(
        &self,
        snapshot: &Snapshot,
        queue: &Jobs,
    ) -> Result<Vec<Placement>, PluginError> {
        let span = tracing::debug_span!("gantry_scheduling.plugin_call", plugin = %self.name);
        let (snapshot, queue) = wire::columns(snapshot, queue);
        let seed = seed(&self.name, &snapshot, &queue);
        let began = std::time::Instant::now();
        let warm = self.warm.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let (mut store, bindings) = match warm {
            Some(ready) => {
                ready.0.data().env().set(snapshot.now_s, seed);
                ready
            }
            None => {
                let env = CallEnv::default();
                env.set(snapshot.now_s, seed);
                self.instantiate_with(env).instrument(span.clone()).await?
            }
        };
        // Configure drew from the generator: start the call from the seed again.
        store.data().env().set(snapshot.now_s, seed);
        // One deadline for the whole call: a cold instance's setup (its `configure`) counts,
        // or a plugin slow in both would take twice its deadline every cycle, never a fault.
        let spent = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
        let limits = Limits {
            deadline_ms: self.limits.deadline_ms.saturating_sub(spent).max(1),
            ..self.limits.clone()
        };
        plugin::arm_deadline(&mut store, limits.deadline_ms);
        let call = async {
            let result = bindings
                .gantry_scheduler_strategy()
                .call_schedule(&mut store, &snapshot, &queue)
                .await;
            let result = match result {
                Ok(Ok(placements)) => Ok(placements),
                // A guest error leaves the instance sane, but it is dropped all the same: cheap,
                // and no state from a failed call can leak into the next one.
                Ok(Err(e)) => Err(plugin::guest_error(&self.name, Call::Schedule, e)),
                Err(e) => Err(self.fail(Call::Schedule, &store, e)),
            };
            store.data_mut().end_call();
            result
        };
        let placements = plugin::driver::within_deadline(&self.name, Call::Schedule, &limits, call)
            .instrument(span)
            .await
            .map_err(|e| e.with_deadline(self.limits.deadline_ms))?;
        let placements = wire::placements(placements).map_err(|reason| {
            PluginError::new(
                self.name.as_ref(),
                Call::Schedule,
                Fault::MalformedOutput {
                    reason: Fault::text(reason),
                },
            )
        })?;
        let mut pool = self.warm.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < self.limits.warm_pool as usize {
            pool.push((store, bindings));
        }
        Ok(placements)
    }
}

/// The random seed of a cycle: the plugin, the time and what it is asked about.
fn seed(plugin: &str, snapshot: &wit::Snapshot, queue: &wit::Jobs) -> u64 {
    // A fixed seed: the same in every process of this build. FxHash, not SipHash: this hashes
    // the whole queue on every cycle (~200 KB for 10,000 jobs), and SipHash took 70 us of it.
    let mut h = rustc_hash::FxHasher::with_seed(0x9e37_79b9);
    plugin.hash(&mut h);
    snapshot.now_s.to_bits().hash(&mut h);
    snapshot.gpus.busy.hash(&mut h);
    snapshot.gpus.healthy.hash(&mut h);
    snapshot.gpus.memory_free_mib.hash(&mut h);
    snapshot.running.gpus.hash(&mut h);
    queue.tenant.hash(&mut h);
    queue.gpus.hash(&mut h);
    queue.priority.hash(&mut h);
    queue.memory_per_gpu_mib.hash(&mut h);
    h.finish()
}
