//! [`Host`]: what a platform embeds. One engine, the loaded plugins and the cluster state.
//!
//! ```no_run
//! use gantry::{Host, HostConfig, PluginSource};
//! use gantry::cluster::{Cluster, files};
//!
//! # fn main() -> anyhow::Result<()> {
//! let cluster = files::load_cluster("cluster.toml".as_ref())?;
//! let jobs = files::load_jobs("jobs.toml".as_ref(), &cluster)?;
//! let mut host = Host::new(HostConfig::new(cluster))?;
//! host.load_scheduler(&"binpack".parse::<PluginSource>()?)?;
//! for job in jobs {
//!     host.submit(job)?;
//! }
//! let cycle = gantry::blocking::block_on(host.schedule_cycle(0.0));
//! for a in &cycle.placements {
//!     println!("{} -> {:?}", a.job_id, a.gpus);
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use wasmtime::Engine;
use wasmtime::component::Linker;

use crate::audit::{AuditLog, Decision};
use crate::builtin;
use crate::cluster::{Cluster, JobSpec, files};
use crate::engine;
use crate::plugin::health::HealthRules;
use crate::plugin::{self, ArtifactCache, LoadError, Manifest, PluginState};
use crate::policy::decide::{LoadedPolicy, PolicyLimits, PolicyLoader, PolicySlot};
use crate::policy::request::{Action, Admission, PluginRef, Request, Subject};
use crate::scheduling::{ClusterState, RunningAlloc, SchedulerPlugin};

mod cycle;
#[cfg(test)]
mod tests;
pub use cycle::{CyclePlan, DecidedCycle};

/// Where a plugin comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginSource {
    /// A plugin shipped in the binary, by name.
    Builtin(String),
    /// A manifest file, or a directory holding `plugin.toml`.
    Path(PathBuf),
    /// A plugin uploaded to the daemon: its files as bytes (kept in the encrypted store).
    Uploaded(Box<UploadedPlugin>),
}

impl PluginSource {
    /// How the policy names it: a shipped or uploaded plugin's name, a path as given.
    fn name(&self) -> String {
        match self {
            PluginSource::Builtin(name) => name.clone(),
            PluginSource::Path(path) => path.display().to_string(),
            PluginSource::Uploaded(up) => up.name.clone(),
        }
    }
}

/// A plugin's files held in memory rather than on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadedPlugin {
    /// The name it was uploaded under (errors name it as `<uploaded>/{name}/plugin.toml`).
    pub name: String,
    /// The manifest's text.
    pub manifest: String,
    /// The component.
    pub wasm: Vec<u8>,
    /// Its `plugin.sig`, if it came with one.
    pub signature: Option<plugin::signature::PluginSignature>,
}

impl UploadedPlugin {
    /// Where errors say the manifest came from.
    pub fn origin(&self) -> PathBuf {
        PathBuf::from(format!("<uploaded>/{}/plugin.toml", self.name))
    }

    /// Whether a key in `trusted` signed exactly these files; the error says why not.
    pub fn verify(&self, trusted: &[String]) -> Result<(), String> {
        match &self.signature {
            Some(sig) => {
                plugin::signature::verify(sig, &self.wasm, self.manifest.as_bytes(), trusted)
            }
            None => Err("it came without a signature (sign it with `gantry plugin sign`)".into()),
        }
    }
}

impl std::str::FromStr for PluginSource {
    type Err = std::convert::Infallible;
    /// A shipped plugin's name, else a path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match builtin::scheduler(s) {
            Some(b) => PluginSource::Builtin(b.name.to_string()),
            None => PluginSource::Path(PathBuf::from(s)),
        })
    }
}

/// The entrypoint the host asks: `allow` plus `reasons` (see `policies/authz.rego`).
pub const DECISION_ENTRYPOINT: &str = "gantry/authz/decision";

/// The host-wide cap on a scheduler call's deadline, milliseconds.
pub const DEFAULT_MAX_SCHEDULER_DEADLINE_MS: u64 = 10_000;

/// Seconds a job waits before GPUs are held for it against later jobs, by default (see
/// [`HostConfig::reserve_after_s`]).
pub const DEFAULT_RESERVE_AFTER_S: f64 = 300.0;

/// How to build a [`Host`].
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The cluster the host owns.
    pub cluster: Cluster,
    /// Where compiled plugins are cached; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// When a scheduler plugin is quarantined, and when it makes no progress.
    pub health: HealthRules,
    /// No scheduler call runs longer than this, whatever its manifest says (up to 600 s): the
    /// longest the cluster goes without a scheduling decision.
    pub max_scheduler_deadline_ms: u64,
    /// What a component from outside the binary may be before it is compiled, and how long
    /// its compile may take (shipped plugins and policies are not bounded).
    pub compile: plugin::compile::CompileLimits,
    /// Which plugins on disk may load.
    pub trust: PluginTrust,
    /// Seconds a job that could run waits before GPUs are held for it: later jobs are then
    /// placed only where they cannot delay it (the guard of [`gantry_model::reserve`], applied
    /// to every strategy's answer), so a large gang is not starved by a stream of small jobs.
    /// 0 holds for the first waiting job at once (EASY backfill); infinity never holds.
    pub reserve_after_s: f64,
}

/// Which plugins on disk a host loads: those signed by a trusted key, or (for development) any,
/// with a warning on each load. Shipped plugins are part of the binary and need no signature.
///
/// Every public way to load a plugin from outside the binary checks this ([`Host::load_scheduler`],
/// [`Host::load_scheduler_as`], [`Host::load_scheduler_plugin`], [`Host::load_preprocess_plugin`]
/// and the same on [`Host::loader`]). What loads a component's bytes without the check is private
/// to the crate; none of these compile outside it:
///
/// ```compile_fail
/// # let engine = gantry::engine::build().unwrap();
/// # let linker = gantry::plugin::base_linker(&engine).unwrap();
/// # let cache = gantry::plugin::ArtifactCache::new(&engine, None);
/// let b = gantry::builtin::scheduler("binpack").unwrap();
/// let origin = std::path::Path::new("unchecked/plugin.toml");
/// let manifest = gantry::plugin::Manifest::parse(b.manifest, origin).unwrap();
/// let rules = gantry::plugin::health::HealthRules::default();
/// gantry::scheduling::SchedulerPlugin::load(
///     &engine, &linker, &cache, manifest, b.wasm, origin, rules, 1000,
/// );
/// ```
///
/// ```compile_fail
/// # let engine = gantry::engine::build().unwrap();
/// # let linker = gantry::plugin::base_linker(&engine).unwrap();
/// # let cache = gantry::plugin::ArtifactCache::new(&engine, None);
/// let b = gantry::builtin::preprocessor("standardize").unwrap();
/// let origin = std::path::Path::new("unchecked/plugin.toml");
/// let manifest = gantry::plugin::Manifest::parse(b.manifest, origin).unwrap();
/// gantry::preprocess::PreprocessPlugin::load(&engine, &linker, &cache, manifest, b.wasm, origin);
/// ```
///
/// ```compile_fail
/// # let engine = gantry::engine::build().unwrap();
/// # let linker = gantry::plugin::base_linker(&engine).unwrap();
/// # let cache = gantry::plugin::ArtifactCache::new(&engine, None);
/// let b = gantry::builtin::scheduler("binpack").unwrap();
/// let origin = std::path::Path::new("unchecked/plugin.toml");
/// let manifest = gantry::plugin::Manifest::parse(b.manifest, origin).unwrap();
/// let kind = gantry::plugin::PluginKind::Scheduler;
/// gantry::plugin::link(&engine, &linker, &cache, manifest, b.wasm, origin, kind, Ok);
/// ```
#[derive(Debug, Clone, Default)]
pub struct PluginTrust {
    /// Hex Ed25519 public keys whose signatures make a plugin loadable.
    pub trusted_keys: Vec<String>,
    /// Load plugins without a trusted signature.
    pub allow_unsigned: bool,
}

impl HostConfig {
    /// Defaults: the user's cache directory, [`HealthRules::default`], scheduler calls capped
    /// at [`DEFAULT_MAX_SCHEDULER_DEADLINE_MS`].
    pub fn new(cluster: Cluster) -> Self {
        Self {
            cluster,
            cache_dir: default_cache_dir(),
            health: HealthRules::default(),
            max_scheduler_deadline_ms: DEFAULT_MAX_SCHEDULER_DEADLINE_MS,
            compile: plugin::compile::CompileLimits::default(),
            trust: PluginTrust::default(),
            reserve_after_s: DEFAULT_RESERVE_AFTER_S,
        }
    }
}

/// `$GANTRY_CACHE_DIR`, else `$XDG_CACHE_HOME/gantry`, else `~/.cache/gantry`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("GANTRY_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("gantry"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("gantry"))
}

/// A host could not be built or refused a request.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The wasm engine could not be created.
    #[error("cannot create the wasm engine: {0}")]
    Engine(String),
    /// A change to the cluster was refused (a node registering under a name taken, say).
    #[error("cluster: {0}")]
    Cluster(String),
    /// A plugin could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A submitted job is invalid.
    #[error("job `{id}`: {message}")]
    Job {
        /// The job.
        id: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The policy refused the request (an evaluation failure refuses too: its error is the
    /// reason).
    #[error("denied by policy (decision {decision_id}): {}", reasons.join("; "))]
    Denied {
        /// What was asked.
        action: Action,
        /// The decision's id, as recorded in the audit log.
        decision_id: String,
        /// Why.
        reasons: Vec<String>,
    },
    /// A policy bundle could not be loaded.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// A policy swap was asked of a [`Decider`] made before the host had a policy: the host
    /// installs its first one itself ([`Host::set_policy`]).
    #[error("no policy to replace: the host has none yet (install one with Host::set_policy)")]
    NoPolicy,
    /// The audit log could not be written; the action was not taken.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

/// A policy decision the host made and recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Its id (in the audit log and the `tracing` event).
    pub decision_id: String,
    /// Allowed or not.
    pub allow: bool,
    /// Why not (or the evaluation error: any failure denies).
    pub reasons: Vec<String>,
}

/// GPUs given to a job in one cycle.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assignment {
    /// The job.
    pub job_id: String,
    /// Its tenant.
    pub tenant: String,
    /// GPU ids.
    pub gpus: Vec<String>,
    /// The allocation created.
    pub alloc_id: u64,
}

/// What one scheduling cycle did.
#[derive(Debug, Clone, Serialize)]
pub struct CycleReport {
    /// The clock of the cycle.
    pub now_s: f64,
    /// The plugin that decided, or the native fallback.
    pub decided_by: String,
    /// Why the fallback decided, when it did.
    pub fallback_reason: Option<String>,
    /// The failure class of the plugin, when it faulted.
    pub fault: Option<&'static str>,
    /// Placements applied.
    pub placements: Vec<Assignment>,
    /// Placements the policy refused (job id, reasons); those jobs stay pending.
    pub policy_refused: Vec<(String, Vec<String>)>,
    /// The job GPUs were held for this cycle, when one had waited long enough (see
    /// [`HostConfig::reserve_after_s`]).
    pub reserved: Option<Reserved>,
    /// Jobs still pending afterwards.
    pub pending: usize,
    /// Wall time of the cycle, microseconds.
    pub elapsed_us: f64,
}

/// GPUs held for a job that waited: its id, when enough are expected free, and the jobs whose
/// placements were held back (they stay pending).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reserved {
    /// The job held for.
    pub job_id: String,
    /// When enough GPUs for it are expected to be free, on the host's clock.
    pub shadow_s: f64,
    /// Jobs the strategy placed that would have delayed it.
    pub held_back: Vec<String>,
}

/// A job [`Host::check`] found fit for the host's cluster; only that check makes one, so a
/// submission that carries it ([`Host::submit_checked_as`]) is not checked twice.
///
/// ```compile_fail
/// # fn made(spec: gantry::cluster::JobSpec) -> gantry::CheckedJob {
/// gantry::CheckedJob { spec, generation: 0 }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CheckedJob {
    spec: JobSpec,
    /// The host's state generation it was checked at.
    generation: u64,
}

impl CheckedJob {
    /// The job.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }
}

/// The Gantry host.
pub struct Host {
    loader: PluginLoader,
    state: ClusterState,
    scheduler: Option<Arc<SchedulerPlugin>>,
    /// Bumped by every change of `state`: a cycle decided on an older one re-validates.
    generation: u64,
    policy: Option<Arc<PolicySlot>>,
    audit: Option<Arc<AuditLog>>,
    /// What jobs are admitted against, when not the GPUs in service now ([`Host::admit_against`]).
    capacity: Option<Cluster>,
    /// GPUs whose node registered again without them ([`Host::update_node`]).
    retired: HashSet<String>,
    /// See [`HostConfig::reserve_after_s`].
    reserve_after_s: f64,
}

impl Host {
    /// A host owning `config.cluster`, with no plugin loaded (the native strategy schedules).
    pub fn new(config: HostConfig) -> Result<Self, HostError> {
        let engine = engine::build().map_err(|e| HostError::Engine(format!("{e:#}")))?;
        let linker =
            plugin::base_linker(&engine).map_err(|e| HostError::Engine(format!("{e:#}")))?;
        Ok(Self {
            loader: PluginLoader {
                cache: ArtifactCache::new(&engine, config.cache_dir),
                compile: config.compile,
                engine,
                linker,
                health: config.health,
                max_scheduler_deadline_ms: config.max_scheduler_deadline_ms,
                trust: config.trust,
                policy_modules: Default::default(),
            },
            state: ClusterState::new(config.cluster),
            scheduler: None,
            generation: 0,
            policy: None,
            audit: None,
            capacity: None,
            retired: HashSet::new(),
            reserve_after_s: config.reserve_after_s,
        })
    }

    /// Admits jobs against `cluster`, what the cluster has, instead of the GPUs in service now:
    /// for a host whose GPUs leave service for a while and come back (a node whose agent lost
    /// its lease, an admin's mark). A job is then refused only when `cluster` could never hold
    /// it; one that fits only GPUs out of service now waits in the queue, and a job requeued
    /// from a lost node is queued again rather than refused.
    pub fn admit_against(&mut self, cluster: Cluster) {
        self.capacity = Some(cluster);
    }

    /// Sets [`HostConfig::reserve_after_s`] (seconds; infinity never holds GPUs for a job).
    pub fn set_reserve_after_s(&mut self, seconds: f64) {
        self.reserve_after_s = seconds;
    }

    /// Loads a scheduler plugin (without installing it): see [`PluginLoader`].
    pub fn load_scheduler_plugin(
        &self,
        source: &PluginSource,
    ) -> Result<SchedulerPlugin, LoadError> {
        self.loader.load_scheduler_plugin(source)
    }

    /// Loads preprocessing plugin `name`: see [`PluginLoader::load_preprocess_plugin`].
    pub fn load_preprocess_plugin(
        &self,
        name: &str,
        uploaded: Option<&UploadedPlugin>,
    ) -> Result<crate::preprocess::PreprocessPlugin, LoadError> {
        self.loader.load_preprocess_plugin(name, uploaded)
    }

    /// What loading plugins takes (engine, linker, cache, trust), apart from the host: clone it
    /// to compile a plugin without holding a lock on the host.
    pub fn loader(&self) -> &PluginLoader {
        &self.loader
    }

    /// Loads a scheduler plugin and makes it the active strategy. On error the previous one
    /// stays active.
    pub fn load_scheduler(&mut self, source: &PluginSource) -> Result<&SchedulerPlugin, LoadError> {
        let plugin = self.load_scheduler_plugin(source)?;
        Ok(self.scheduler.insert(Arc::new(plugin)))
    }

    /// Loads `bundle` (default [`PolicyLimits`]) and installs it as the host's access-control
    /// policy ([`Host::set_policy`]); returns the policy it replaces. On error the previous one
    /// stays in force.
    pub async fn install_policy(
        &mut self,
        bundle: crate::policy::bundle::Bundle,
    ) -> Result<Option<Arc<LoadedPolicy>>, HostError> {
        let policy = self
            .policy_loader()
            .load(bundle, PolicyLimits::default())
            .await?;
        self.set_policy(policy).await
    }

    /// Installs `policy` as the host's access-control policy, atomically: decisions already
    /// running finish on the policy they started with. Returns the one it replaces. The swap is
    /// recorded first ([`Decider::swap_policy`]): when the record fails, nothing changes.
    pub async fn set_policy(
        &mut self,
        policy: Arc<LoadedPolicy>,
    ) -> Result<Option<Arc<LoadedPolicy>>, HostError> {
        if self.policy.is_some() {
            return self.decider().swap_policy(policy).await.map(Some);
        }
        let record = serde_json::json!({"from": None::<String>, "to": policy.revision()});
        self.record("policy.swap", record).await?;
        self.policy = Some(Arc::new(PolicySlot::new(policy)));
        Ok(None)
    }

    /// Records decisions and host events (plugin loads, policy swaps) in `log` from now on.
    pub fn set_audit_log(&mut self, log: AuditLog) {
        self.audit = Some(Arc::new(log));
    }

    /// [`Host::set_audit_log`] with a log shared with its owner (a daemon seals it on a timer).
    pub fn set_shared_audit_log(&mut self, log: Arc<AuditLog>) {
        self.audit = Some(log);
    }

    /// Closes the audit log with a signed checkpoint.
    pub fn close_audit_log(&mut self) -> Result<(), HostError> {
        if let Some(log) = self.audit.take() {
            log.close()?;
        }
        Ok(())
    }

    /// Appends an event to the audit log (when one is set), synced on the blocking pool.
    pub async fn record(&self, kind: &str, record: serde_json::Value) -> Result<(), HostError> {
        self.decider().record_async(kind, record).await
    }

    /// [`Decider::authorize`] with this host's policy and audit log.
    pub async fn authorize(&self, request: &Request) -> Result<Verdict, HostError> {
        self.decider().authorize(request).await
    }

    /// The policy and the audit log, apart from the rest of the host: what deciding a request
    /// needs, shareable with threads that must not wait on the host (a daemon's handlers). It
    /// follows later policy swaps (they happen inside the slot).
    pub fn decider(&self) -> Decider {
        Decider {
            policy: self.policy.clone(),
            audit: self.audit.clone(),
        }
    }

    /// [`Host::submit`] on behalf of `subject`, after the policy allowed `job.submit`.
    pub async fn submit_as(&mut self, subject: &Subject, job: JobSpec) -> Result<(), HostError> {
        self.admit(subject, &job).await?;
        self.submit(job)
    }

    /// [`Host::submit_as`] for a job [`Host::check`] has checked: it is not checked again
    /// (unless the host's state changed since).
    pub async fn submit_checked_as(
        &mut self,
        subject: &Subject,
        job: CheckedJob,
    ) -> Result<(), HostError> {
        self.admit(subject, &job.spec).await?;
        self.enqueue(job)
    }

    /// Asks the policy whether `subject` may submit `job` (recorded with the decision).
    async fn admit(&self, subject: &Subject, job: &JobSpec) -> Result<(), HostError> {
        self.decider()
            .require(&Request::new(
                subject.clone(),
                Action::JobSubmit,
                self.admission(job),
            ))
            .await?;
        Ok(())
    }

    /// What the policy is asked to admit `job` against (`job.submit`): the GPUs its tenant
    /// holds now.
    pub fn admission(&self, job: &JobSpec) -> Admission {
        let tenant = self.state.cluster.tenant_index(&job.tenant);
        Admission {
            tenant: job.tenant.clone(),
            gpus: u64::from(job.gpus),
            tenant_used_gpus: tenant.map_or(0, |t| u64::from(self.state.used_gpus[t as usize])),
            job: job.id.clone(),
        }
    }

    /// Queues `job`, which the policy admitted against `decided` ([`Host::admission`]) off the
    /// host's lock, if what it would be admitted against now is the same; `Ok(false)`, with
    /// nothing queued, when it changed meanwhile (the caller decides again). So a caller
    /// sharing the host need not hold its lock across the decision and its synced record.
    pub fn enqueue_admitted(
        &mut self,
        job: CheckedJob,
        decided: &Admission,
    ) -> Result<bool, HostError> {
        if self.admission(&job.spec) != *decided {
            return Ok(false);
        }
        self.enqueue(job).map(|()| true)
    }

    /// [`Host::load_scheduler`] on behalf of `subject`, after the policy allowed `plugin.load`
    /// (the resource says whether the plugin carries a trusted signature). The load is recorded.
    /// Its three steps apart, for a caller sharing the host behind a lock:
    /// [`PluginLoader::prepare_scheduler_as`] (no host), [`PreparedScheduler::record`] (no host),
    /// [`Host::install_scheduler`] (the swap alone).
    pub async fn load_scheduler_as(
        &mut self,
        subject: &Subject,
        source: &PluginSource,
    ) -> Result<&SchedulerPlugin, HostError> {
        let decider = self.decider();
        let prepared = (self.loader)
            .prepare_scheduler_as(&decider, subject, source)
            .await?;
        let recorded = prepared.record(&decider).await?;
        Ok(self.install_scheduler(recorded))
    }

    /// Makes a scheduler plugin whose load is recorded the active strategy; returns it. Only a
    /// swap: deciding, compiling and recording happened before, without the host.
    pub fn install_scheduler(&mut self, recorded: RecordedScheduler) -> &SchedulerPlugin {
        self.scheduler.insert(Arc::new(recorded.plugin))
    }

    /// Unloads the active scheduler plugin on behalf of `subject`, after the policy allowed
    /// `plugin.unload`; the native strategy decides from then on. Recorded in the audit log.
    pub async fn unload_scheduler_as(
        &mut self,
        subject: &Subject,
    ) -> Result<Option<Arc<SchedulerPlugin>>, HostError> {
        let Some(name) = self.scheduler.as_ref().map(|p| p.name().to_string()) else {
            return Ok(None);
        };
        let verdict = self
            .decider()
            .require(&Request::new(
                subject.clone(),
                Action::PluginUnload,
                PluginRef::named(name.clone()),
            ))
            .await?;
        self.decider()
            .record_async(
                "plugin.unload",
                serde_json::json!({"plugin": name, "decision_id": verdict.decision_id}),
            )
            .await?;
        Ok(self.scheduler.take())
    }

    /// The policy slot, shareable with threads that make decisions.
    pub fn policy(&self) -> Option<&Arc<PolicySlot>> {
        self.policy.as_ref()
    }

    /// Which plugins from outside the binary may load.
    pub fn trust(&self) -> &PluginTrust {
        &self.loader.trust
    }

    /// Removes the temporaries a crash left in the compiled-artifact cache; returns how many.
    pub fn sweep_cache(&self) -> std::io::Result<usize> {
        self.loader.cache.sweep()
    }

    /// What loading a policy bundle on this host's engine and cache takes, apart from the host:
    /// clone it to compile a bundle without holding a lock on the host.
    pub fn policy_loader(&self) -> PolicyLoader {
        PolicyLoader::new(
            self.loader.engine.clone(),
            self.loader.cache.clone(),
            self.loader.policy_modules.clone(),
            self.loader.compile,
        )
    }

    /// The active scheduler plugin.
    pub fn scheduler(&self) -> Option<&SchedulerPlugin> {
        self.scheduler.as_deref()
    }

    /// The live cluster state.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The state, for a change: a cycle decided before it re-validates its answer.
    fn state_mut(&mut self) -> &mut ClusterState {
        self.generation += 1;
        &mut self.state
    }

    /// Swaps in another cluster state (for example one restored from storage, or a benchmark's
    /// starting point) and returns the old one.
    pub fn replace_state(&mut self, state: ClusterState) -> ClusterState {
        std::mem::replace(self.state_mut(), state)
    }

    /// Whether [`Host::add_node`] would add node `name` with `gpus` (checked before a
    /// registration is kept, so that one kept is one the host takes again at its next start).
    pub fn can_add_node(
        &self,
        name: &str,
        gpus: &[(String, String, u32)],
    ) -> Result<(), HostError> {
        if let Some(capacity) = &self.capacity {
            capacity
                .can_add_node(name, gpus)
                .map_err(HostError::Cluster)?;
        }
        self.state
            .cluster
            .can_add_node(name, gpus)
            .map_err(HostError::Cluster)
    }

    /// Adds a node that registered itself, and its GPUs (out of service until its agent's
    /// heartbeat brings them in): to the cluster the scheduler places on and to the one jobs
    /// are admitted against. See [`Cluster::add_node`].
    pub fn add_node(
        &mut self,
        name: &str,
        rack: &str,
        gpus: &[(String, String, u32)],
    ) -> Result<(), HostError> {
        self.can_add_node(name, gpus)?;
        let grown = match &self.capacity {
            Some(capacity) => {
                let mut grown = capacity.clone();
                grown
                    .add_node(name, rack, gpus)
                    .map_err(HostError::Cluster)?;
                // What the cluster has: the new GPUs count for admission from now on.
                for g in grown.gpus.iter_mut().skip(capacity.gpus.len()) {
                    g.gpu.healthy = true;
                }
                Some(grown)
            }
            None => None,
        };
        self.state_mut()
            .add_node(name, rack, gpus)
            .map_err(HostError::Cluster)?;
        if grown.is_some() {
            self.capacity = grown;
        }
        Ok(())
    }

    /// Changes node `name` (one [`Host::add_node`] added) to what it has now, as its agent
    /// registers it again: its rack, and `gpus` updated or added (out of service until its
    /// agent's heartbeat brings them in), each counted when jobs are admitted. Its GPUs not in
    /// `gpus` are retired (the node was removed: none at all): they stay at their indices, out
    /// of what jobs are admitted against, until a later registration names them again; taking
    /// them out of service is the caller's (its jobs go back to the queue). Returns the ids
    /// retired.
    pub fn update_node(
        &mut self,
        name: &str,
        rack: &str,
        gpus: &[(String, String, u32)],
    ) -> Result<Vec<String>, HostError> {
        // The admission cluster first: both refuse before changing anything.
        if let Some(capacity) = &mut self.capacity {
            let missing = (capacity.update_node(name, rack, gpus)).map_err(HostError::Cluster)?;
            let given: HashSet<&str> = gpus.iter().map(|(id, ..)| id.as_str()).collect();
            for g in &mut capacity.gpus {
                if given.contains(g.id.as_str()) {
                    g.gpu.healthy = true;
                }
            }
            for i in missing {
                capacity.gpus[i].gpu.healthy = false;
            }
        }
        let missing =
            (self.state_mut().update_node(name, rack, gpus)).map_err(HostError::Cluster)?;
        for (id, ..) in gpus {
            self.retired.remove(id);
        }
        let retired: Vec<String> = (missing.iter())
            .map(|&i| self.state.cluster.gpus[i].id.clone())
            .collect();
        self.retired.extend(retired.iter().cloned());
        Ok(retired)
    }

    /// Whether GPU `id` was retired ([`Host::update_node`]).
    pub fn is_retired(&self, id: &str) -> bool {
        self.retired.contains(id)
    }

    /// Checks `job` against the cluster (its fields, its tenant, whether it could ever run);
    /// the error names the field.
    pub fn check(&self, job: JobSpec) -> Result<CheckedJob, HostError> {
        let cluster = self.capacity.as_ref().unwrap_or(&self.state.cluster);
        match files::check_job(&job, cluster) {
            Ok(()) => Ok(CheckedJob {
                spec: job,
                generation: self.generation,
            }),
            Err(message) => Err(HostError::Job {
                id: job.id,
                message,
            }),
        }
    }

    /// Queues a job after checking it against the cluster.
    pub fn submit(&mut self, job: JobSpec) -> Result<(), HostError> {
        let job = self.check(job)?;
        self.enqueue(job)
    }

    /// Whether job `id` is queued or running here.
    pub fn holds(&self, id: &str) -> bool {
        self.state.pending.iter().any(|p| p.spec.id == id)
            || self.state.running.iter().any(|a| a.job_id == id)
    }

    /// Queues a checked job, checked again only when the state changed since (the cluster may
    /// have lost GPUs); a job whose id is queued or running already is refused.
    fn enqueue(&mut self, job: CheckedJob) -> Result<(), HostError> {
        let job = match job.generation == self.generation {
            true => job.spec,
            false => self.check(job.spec)?.spec,
        };
        if self.holds(&job.id) {
            return Err(HostError::Job {
                id: job.id,
                message: "id: a job with this id is already queued or running".into(),
            });
        }
        let tenant = self.state.cluster.tenant_index(&job.tenant).unwrap_or(0);
        self.state_mut().enqueue(job, tenant);
        Ok(())
    }

    /// Takes back a job that was running before a restart: queues `job` and gives it GPUs
    /// `gpu_ids` at once, as it held them. Refused when a GPU is unknown or held already, or
    /// they are not as many as the job asks for.
    pub fn adopt(&mut self, job: JobSpec, gpu_ids: &[String], now_s: f64) -> Result<(), HostError> {
        let refused = |message: String| HostError::Job {
            id: job.id.clone(),
            message,
        };
        let gpus = &self.state.cluster.gpus;
        let indices: Vec<u32> = gpu_ids
            .iter()
            .map(|id| {
                gpus.iter()
                    .position(|g| &g.id == id)
                    .map(|i| i as u32)
                    .ok_or_else(|| refused(format!("GPU `{id}` is not in the cluster")))
            })
            .collect::<Result<_, _>>()?;
        if indices.len() != job.gpus as usize {
            return Err(refused(format!(
                "it held {} GPUs and asks for {}",
                indices.len(),
                job.gpus
            )));
        }
        if let Some(&held) = indices
            .iter()
            .find(|&&i| self.state.holder[i as usize].is_some())
        {
            return Err(refused(format!(
                "GPU `{}` is held by another job",
                gpus[held as usize].id
            )));
        }
        let id = job.id.clone();
        self.submit(job)?;
        let state = self.state_mut();
        let position = state
            .pending
            .iter()
            .position(|p| p.spec.id == id)
            .expect("the job was just queued");
        state.allocate(position, indices, now_s);
        state.prune_pending();
        Ok(())
    }

    /// Takes job `job_id` out of the queue and ends every allocation it holds; false when it is
    /// neither queued nor running.
    pub fn cancel(&mut self, job_id: &str) -> bool {
        let queued = self.state.pending.len();
        self.state_mut().pending.retain(|p| p.spec.id != job_id);
        let mut found = self.state.pending.len() != queued;
        let allocations: Vec<u64> = self
            .state
            .running
            .iter()
            .filter(|a| a.job_id == job_id)
            .map(|a| a.id)
            .collect();
        for id in allocations {
            found |= self.state.release(id).is_some();
        }
        found
    }

    /// Marks GPU `gpu_id` unhealthy: it is never placed on again, and every allocation holding
    /// it ends. Returns the ids of the jobs that lost their GPUs (the caller requeues them), or
    /// `None` for an unknown GPU.
    pub fn mark_unhealthy(&mut self, gpu_id: &str) -> Option<Vec<String>> {
        let holders = self.set_gpu_health(gpu_id, false)?;
        for job in &holders {
            self.cancel(job);
            tracing::warn!(gpu = gpu_id, job = %job, "GPU marked unhealthy; its job loses its allocation");
        }
        Some(holders)
    }

    /// Marks GPU `gpu_id` healthy or not (an unhealthy GPU is never placed on again), leaving
    /// allocations as they are: returns the ids of the jobs holding it, for a caller that
    /// releases them itself once their work has stopped; `None` for an unknown GPU.
    pub fn set_gpu_health(&mut self, gpu_id: &str, healthy: bool) -> Option<Vec<String>> {
        let index = self
            .state
            .cluster
            .gpus
            .iter()
            .position(|g| g.id == gpu_id)?;
        self.state_mut().cluster.gpus[index].gpu.healthy = healthy;
        let mut holders: Vec<String> = self
            .state
            .running
            .iter()
            .filter(|a| a.gpus.contains(&(index as u32)))
            .map(|a| a.job_id.clone())
            .collect();
        holders.dedup();
        Some(holders)
    }

    /// Ends allocation `id` (its work finished), freeing its GPUs.
    pub fn complete(&mut self, id: u64) -> Option<RunningAlloc> {
        self.state_mut().release(id)
    }
}

/// What loading a plugin takes: the engine, the linker, the compiled-artifact cache, the trust
/// settings and the rules loaded plugins run under. Cheap to clone, so a daemon compiles an
/// upload with a clone and never holds the host's lock meanwhile.
#[derive(Clone)]
pub struct PluginLoader {
    engine: Engine,
    linker: Linker<PluginState>,
    cache: ArtifactCache,
    health: HealthRules,
    max_scheduler_deadline_ms: u64,
    trust: PluginTrust,
    /// Bounds on compiling what does not ship in the binary.
    compile: plugin::compile::CompileLimits,
    /// Policy modules compiled so far (in practice the one engine module every bundle carries).
    policy_modules: crate::policy::decide::CompiledModules,
}

impl PluginLoader {
    /// The cache, compiling within the bounds for plugins from outside the binary.
    fn bounded_cache(&self) -> ArtifactCache {
        self.cache.clone().with_compile_limits(self.compile)
    }

    /// Asks the policy whether `subject` may load the scheduler plugin at `source` (the
    /// resource says whether it carries a trusted signature; the decision is recorded), then
    /// compiles it on the blocking pool. Takes no host: a daemon runs it without the host's
    /// lock, so cycles and requests go on while a new plugin compiles.
    pub async fn prepare_scheduler_as(
        &self,
        decider: &Decider,
        subject: &Subject,
        source: &PluginSource,
    ) -> Result<PreparedScheduler, HostError> {
        // Read once: the policy decides on the bytes that then load. Read twice, files swapped
        // between the reads loaded unsigned code that the decision recorded as signed.
        let read = self.read_scheduler(source);
        let resource = match &read {
            Ok(read) => self.plugin_ref(read),
            Err(_) => PluginRef::new(source.name(), false),
        };
        let verdict = decider
            .require(&Request::new(subject.clone(), Action::PluginLoad, resource))
            .await?;
        let (loader, read) = (self.clone(), read?);
        let plugin = crate::blocking::run(move || loader.load_read(read)).await?;
        Ok(PreparedScheduler {
            plugin,
            decision_id: verdict.decision_id,
        })
    }

    /// The policy's view of the plugin read: its name, and whether a trusted key signed it
    /// (shipped plugins are part of the signed-off binary).
    fn plugin_ref(&self, read: &ReadScheduler) -> PluginRef {
        match read {
            ReadScheduler::Builtin { name, .. } => PluginRef::new(name.clone(), true),
            ReadScheduler::Files { given, files } => PluginRef::new(
                given.display().to_string(),
                self.files_signed(files).is_ok(),
            ),
            ReadScheduler::Uploaded(up) => {
                PluginRef::new(up.name.clone(), up.verify(&self.trust.trusted_keys).is_ok())
            }
        }
    }

    /// Reads the scheduler plugin at `source`, once.
    fn read_scheduler(&self, source: &PluginSource) -> Result<ReadScheduler, LoadError> {
        Ok(match source {
            PluginSource::Builtin(name) => {
                let b = builtin::scheduler(name).ok_or_else(|| LoadError::Manifest {
                    path: PathBuf::from(name),
                    message: "no shipped plugin of that name".into(),
                })?;
                let origin = PathBuf::from(format!("<builtin>/{}/plugin.toml", b.name));
                ReadScheduler::Builtin {
                    name: name.clone(),
                    manifest: Box::new(Manifest::parse(b.manifest, &origin)?),
                    wasm: b.wasm.to_vec(),
                    origin,
                }
            }
            // Only regular files inside the plugin's directory, under size limits: they are
            // read before the signature over them can be checked.
            PluginSource::Path(path) => ReadScheduler::Files {
                given: path.clone(),
                files: Box::new(plugin::files::PluginFiles::read(path)?),
            },
            PluginSource::Uploaded(up) => ReadScheduler::Uploaded(up.clone()),
        })
    }

    /// Loads a scheduler plugin (without installing it).
    pub fn load_scheduler_plugin(
        &self,
        source: &PluginSource,
    ) -> Result<SchedulerPlugin, LoadError> {
        self.load_read(self.read_scheduler(source)?)
    }

    /// Loads the scheduler plugin `read`, if the trust settings let it.
    fn load_read(&self, read: ReadScheduler) -> Result<SchedulerPlugin, LoadError> {
        // What ships in the binary is ours; everything else compiles within the bounds.
        let cache = match &read {
            ReadScheduler::Builtin { .. } => self.cache.clone(),
            _ => self.bounded_cache(),
        };
        let (manifest, wasm, origin) = match read {
            ReadScheduler::Builtin {
                manifest,
                wasm,
                origin,
                ..
            } => (*manifest, wasm, origin),
            ReadScheduler::Files { files, .. } => {
                self.trust_or_refuse(&files.manifest_path, self.files_signed(&files))?;
                (files.manifest, files.wasm, files.wasm_path)
            }
            ReadScheduler::Uploaded(up) => {
                let origin = up.origin();
                let manifest = Manifest::parse(&up.manifest, &origin)?;
                let verified = up.verify(&self.trust.trusted_keys);
                self.trust_or_refuse(&origin, verified)?;
                (manifest, up.wasm, origin)
            }
        };
        SchedulerPlugin::load(
            &self.engine,
            &self.linker,
            &cache,
            manifest,
            &wasm,
            &origin,
            self.health,
            self.max_scheduler_deadline_ms,
        )
    }

    /// Preprocessing plugin `name`: a shipped one, or `uploaded` (checked against the trust
    /// settings as scheduler plugins from outside the binary are), on this host's engine.
    pub fn load_preprocess_plugin(
        &self,
        name: &str,
        uploaded: Option<&UploadedPlugin>,
    ) -> Result<crate::preprocess::PreprocessPlugin, LoadError> {
        let Some(up) = uploaded else {
            return crate::preprocess::PreprocessPlugin::builtin(
                &self.engine,
                &self.linker,
                &self.cache,
                name,
            );
        };
        let origin = up.origin();
        let manifest = Manifest::parse(&up.manifest, &origin)?;
        self.trust_or_refuse(&origin, up.verify(&self.trust.trusted_keys))?;
        crate::preprocess::PreprocessPlugin::load(
            &self.engine,
            &self.linker,
            &self.bounded_cache(),
            manifest,
            &up.wasm,
            &origin,
        )
    }

    /// Whether a trusted key signed the plugin files read: a plugin from disk loads only then,
    /// unless unsigned plugins are allowed (then with a warning). Shipped plugins are part of
    /// the binary and need none.
    fn files_signed(&self, files: &plugin::files::PluginFiles) -> Result<(), String> {
        plugin::signature::check(
            &files.manifest_path,
            &files.manifest_bytes,
            &files.wasm,
            &self.trust.trusted_keys,
        )
    }

    /// A signature check's verdict under the trust settings: unsigned plugins pass (with a
    /// warning) only when allowed.
    fn trust_or_refuse(
        &self,
        manifest_path: &std::path::Path,
        checked: Result<(), String>,
    ) -> Result<(), LoadError> {
        match checked {
            Ok(()) => Ok(()),
            Err(why) if self.trust.allow_unsigned => {
                tracing::warn!(
                    manifest = %manifest_path.display(),
                    "loading a plugin without a trusted signature ({why}): unsigned plugins are allowed"
                );
                Ok(())
            }
            Err(message) => Err(LoadError::Signature {
                path: manifest_path.to_path_buf(),
                message,
            }),
        }
    }
}

/// A scheduler plugin's files, read once (see [`PluginLoader::prepare_scheduler_as`]).
enum ReadScheduler {
    /// Shipped in the binary.
    Builtin {
        name: String,
        manifest: Box<Manifest>,
        wasm: Vec<u8>,
        origin: PathBuf,
    },
    /// From disk, at the path `given`.
    Files {
        given: PathBuf,
        files: Box<plugin::files::PluginFiles>,
    },
    /// Uploaded to a daemon.
    Uploaded(Box<UploadedPlugin>),
}

/// A scheduler plugin the policy allowed to load, compiled: what
/// [`PluginLoader::prepare_scheduler_as`] makes. Its load is recorded next
/// ([`PreparedScheduler::record`]); only then can it be installed.
pub struct PreparedScheduler {
    plugin: SchedulerPlugin,
    /// The decision that allowed the load.
    decision_id: String,
}

impl PreparedScheduler {
    /// The plugin.
    pub fn plugin(&self) -> &SchedulerPlugin {
        &self.plugin
    }

    /// Records `plugin.load` (name, version, digest, the decision's id) in the audit log, synced
    /// on the blocking pool. A caller sharing the host records and installs
    /// ([`Host::install_scheduler`]) in one turn of its own, so the log's order of loads is the
    /// order they took effect (the last installed is the active one).
    pub async fn record(self, decider: &Decider) -> Result<RecordedScheduler, HostError> {
        let plugin = self.plugin;
        decider
            .record_async(
                "plugin.load",
                serde_json::json!({
                    "plugin": plugin.name(),
                    "version": plugin.manifest().version,
                    "sha256": plugin.wasm_sha256(),
                    "decision_id": self.decision_id,
                }),
            )
            .await?;
        Ok(RecordedScheduler { plugin })
    }
}

/// A scheduler plugin whose load the audit log holds: only [`PreparedScheduler::record`] makes
/// one, so no plugin is installed ([`Host::install_scheduler`]) unrecorded.
///
/// ```compile_fail
/// # fn made(plugin: gantry::scheduling::SchedulerPlugin) -> gantry::RecordedScheduler {
/// gantry::RecordedScheduler { plugin }
/// # }
/// ```
pub struct RecordedScheduler {
    plugin: SchedulerPlugin,
}

/// Decides requests with the policy and records each decision in the audit log (see
/// [`Host::decider`]).
#[derive(Clone, Default)]
pub struct Decider {
    policy: Option<Arc<PolicySlot>>,
    audit: Option<Arc<AuditLog>>,
}

impl Decider {
    /// Asks the policy whether the request's subject may do its action on its resource, and
    /// records the decision in the audit log (when one is set) before returning it. Any
    /// evaluation failure denies. Without a policy, every request is allowed (and still
    /// recorded). The policy runs on the calling task; the audit log's sync on the blocking pool
    /// ([`crate::blocking`]).
    pub async fn authorize(&self, request: &Request) -> Result<Verdict, HostError> {
        let decision_id = crate::audit::new_decision_id();
        let start = Instant::now();
        let input = request.input();
        let (allow, reasons, revision, given) = match &self.policy {
            None => (true, Vec::new(), String::new(), Vec::new()),
            Some(slot) => {
                let policy = slot.current();
                let (result, given) = policy.evaluate_given(DECISION_ENTRYPOINT, &input).await;
                let (allow, reasons) = crate::policy::decide::verdict(&result);
                (allow, reasons, policy.revision().to_string(), given)
            }
        };
        let latency_us = start.elapsed().as_secs_f64() * 1e6;
        if let Some(log) = &self.audit {
            let decision = Decision {
                decision_id: &decision_id,
                subject: &input["subject"],
                action: &input["action"],
                resource: &input["resource"],
                entrypoint: DECISION_ENTRYPOINT,
                allow,
                reasons: reasons.clone(),
                revision: &revision,
                latency_us,
                given: &given,
            };
            if allow && log.aggregates(request) && log.decision_in_aggregate(&decision) {
                // Counted into the next summary.
            } else {
                let record = decision.record();
                let log = log.clone();
                crate::blocking::run(move || log.append("decision", record)).await?;
            }
        } else {
            let action = request.action.as_str();
            tracing::info!(target: "gantry::audit", decision_id, allow, action, "policy decision");
        }
        Ok(Verdict {
            decision_id,
            allow,
            reasons,
        })
    }

    /// [`Decider::authorize`], with a denial as [`HostError::Denied`]: the allowing verdict, or
    /// why not.
    pub async fn require(&self, request: &Request) -> Result<Verdict, HostError> {
        let verdict = self.authorize(request).await?;
        if verdict.allow {
            return Ok(verdict);
        }
        Err(HostError::Denied {
            action: request.action,
            decision_id: verdict.decision_id,
            reasons: verdict.reasons,
        })
    }

    /// Makes `policy` the one in force once its swap is recorded (`policy.swap`, from and to
    /// revisions), and returns the policy it replaces; decisions already running finish on the
    /// one they started with. When the record fails nothing changes: no policy is in force
    /// unrecorded, and no record claims a swap that did not happen (the swap itself cannot
    /// fail). Swaps take turns, record and swap together, so the log's order of swaps is the
    /// order they took effect. Holds no lock of the host's; the sync runs on the blocking pool.
    pub async fn swap_policy(
        &self,
        policy: Arc<LoadedPolicy>,
    ) -> Result<Arc<LoadedPolicy>, HostError> {
        let decider = self.clone();
        crate::blocking::run(move || {
            let slot = decider.policy.as_ref().ok_or(HostError::NoPolicy)?;
            slot.swap_after(policy.clone(), |from| {
                let record = serde_json::json!({"from": from.revision(), "to": policy.revision()});
                decider.record("policy.swap", record)
            })
        })
        .await
    }

    /// Appends an event to the audit log (when one is set). Blocks until it is on disk: async
    /// callers use [`Self::record_async`].
    pub fn record(&self, kind: &str, record: serde_json::Value) -> Result<(), HostError> {
        if let Some(log) = &self.audit {
            log.append(kind, record)?;
        }
        Ok(())
    }

    /// [`Self::record`] with the sync on the blocking pool.
    pub async fn record_async(
        &self,
        kind: &str,
        record: serde_json::Value,
    ) -> Result<(), HostError> {
        let (decider, kind) = (self.clone(), kind.to_string());
        crate::blocking::run(move || decider.record(&kind, record)).await
    }
}
