//! `gantry-daemon`: the Gantry core as a service (`gantry up`). It owns the HTTP API, the
//! metadata database (SQLite: users, tokens, jobs, datasets), TLS, the scheduling and training
//! loops that run the core's decisions, and recovery after a crash; everything it decides or
//! stores goes through the core (`gantry`). An HTTP JSON API (loopback by default) over the host's
//! data directory: bearer tokens identify users, every request is decided by the access-control
//! policy and recorded in the audit log, jobs are kept in SQLite and scheduled by the scheduler
//! plugin on every change.
//!
//! Endpoints (JSON): `GET /v1/health`; `POST /v1/jobs`; `GET /v1/jobs`; `GET /v1/jobs/{id}`;
//! `GET /v1/jobs/{id}/logs`, `GET /v1/jobs/{id}/metrics` (step, loss, throughput, loss curve);
//! `POST /v1/jobs/{id}/cancel`; `PUT /v1/datasets/{name}?tenant=..&classification=..`,
//! `GET /v1/datasets`, `GET /v1/datasets/{name}/content`; `GET /v1/nodes`, `GET /v1/gpus`,
//! `POST /v1/gpus/unhealthy` (admins; the GPU's jobs are requeued); `GET /v1/plugins`,
//! `PUT /v1/plugins/{name}` (a signed scheduler plugin, kept in the store),
//! `POST /v1/plugins/scheduler`, `POST /v1/plugins/scheduler/reload`; `GET /v1/audit/verify`,
//! `GET /v1/audit/head` (the sealed position, for anchoring); `POST /v1/policy` (a bundle,
//! admins; kept for restarts), `GET /v1/policy` (the revision in force); `POST /v1/gpus/healthy`;
//! `POST /v1/keys/rotate` (admins); node agents' `POST /v1/nodes/{node}/heartbeat`,
//! `POST /v1/nodes/{node}/runs` (a run's events) and, for a training run,
//! `GET /v1/nodes/{node}/runs/dataset`, `GET`/`PUT /v1/nodes/{node}/runs/checkpoint`;
//! and `GET /metrics` (Prometheus text; like health, it needs no
//! token and shows counts only). Errors are `{"error": ..., "reasons": [...]}` with 400, 401,
//! 403, 404, 409 or 413.

pub mod accounts;
pub mod api;
pub mod auth;
pub(crate) mod body;
pub mod budget;
pub mod cgroup;
pub mod command;
pub mod curve;
pub mod datadir;
pub mod datasetstore;
pub mod db;
pub mod etcdaccounts;
pub mod etcdblobs;
pub mod etcdstore;
pub mod gpu_nodes;
pub mod jobstore;
pub mod kernelcounts;
pub mod labels;
pub mod lifecycle;
pub mod metrics;
pub mod mountns;
pub mod netns;
pub mod nodes;
pub mod persisted;
pub mod pidns;
pub mod pluginstore;
pub mod policystore;
pub mod recovery;
pub mod rejections;
pub mod replicas;
pub mod runguard;
pub mod runner;
pub mod scratch;
pub mod scratchfs;
pub mod sealedobjects;
pub mod seccomp;
pub mod serve;
pub mod tls;

#[cfg(test)]
mod testing;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gantry::audit::AuditLog;
use gantry::cluster::Cluster;
use gantry::{Host, HostConfig, PluginSource, builtin};

use self::db::rowmac::Authenticated as _;
use self::db::{Db, JobState};

/// What `gantry up` serves.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The data directory (`gantry init`).
    pub data_dir: PathBuf,
    /// Where to listen (loopback by default).
    pub listen: SocketAddr,
    /// The cluster.
    pub cluster: Cluster,
    /// Where compiled plugins are cached.
    pub cache_dir: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain and PEM private key (none: plain HTTP, for
    /// loopback).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// With TLS: the CA (PEM) whose client certificates nodes present (`--client-ca`); a node's
    /// requests then need one naming the node, besides its token.
    pub client_ca: Option<PathBuf>,
    /// Serve plain HTTP beyond loopback anyway (`--insecure`): bearer tokens then cross the
    /// network in the clear. Without it, a non-loopback address without TLS is refused.
    pub insecure: bool,
    /// Whose signatures make an uploaded plugin loadable.
    pub trust: gantry::PluginTrust,
    /// The largest sizes a training job may imply.
    pub train_limits: gantry::training::TrainLimits,
    /// The memory the daemon's own training runs may take together, MiB ([`budget`]); `None`:
    /// [`budget::Budget::total_for`]'s default. At least the limits' `max_memory_mib`.
    pub train_memory_mib: Option<u64>,
    /// The budget to take that memory from, when this process shares it with a node agent of
    /// its own (`gantry up` on a GPU machine): one budget for both; `None`: one of its own.
    pub train_budget: Option<Arc<budget::Budget>>,
    /// How command jobs run: as whom, their wall time, the grace after SIGTERM, their output.
    pub commands: command::CommandLimits,
    /// With node agents: how long a heartbeat's lease lasts; nodes serve only while their agent
    /// holds one ([`nodes`]). `None`: every node of the cluster serves (one machine).
    pub agent_lease: Option<std::time::Duration>,
    /// The node agent runs inside this process (`gantry up` on one machine), under this
    /// daemon's command limits: a command job that cannot run here is refused when submitted.
    pub agent_here: bool,
    /// What connections may hold (caps and timeouts against slow or hostile clients).
    pub conn_limits: serve::ConnLimits,
    /// Start with the shipped policy, replacing one an admin installed (which then no longer
    /// loads, say); recorded in the audit log.
    pub shipped_policy: bool,
    /// Record every allowed read in the audit log as an entry of its own, not counted into a
    /// `decision.summary` every few seconds ([`gantry::audit::tally`]).
    pub audit_each_read: bool,
    /// Space the data directory's disk keeps free for recording the work under way, MiB: below
    /// it, submissions and uploads are refused (507) and `/v1/health` says so (503), before the
    /// disk is full and every write of every tenant fails.
    pub min_free_disk_mib: u64,
    /// With several replicas on etcd: elect a leader, keep jobs in etcd ([`replicas`]).
    /// `None`: one daemon, jobs in the data directory's SQLite (the default).
    pub control_plane: Option<replicas::ControlPlane>,
    /// What one tenant may have: waiting jobs, datasets.
    pub tenant_limits: TenantLimits,
    /// Seconds a job that could run waits before GPUs are held for it against later jobs
    /// ([`gantry::HostConfig::reserve_after_s`]).
    pub reserve_after_s: f64,
}

/// What one tenant may have at once, so that one tenant cannot take the daemon's queue or disk
/// from the others. A request past a bound is refused (429) naming it and its flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantLimits {
    /// Jobs waiting to be placed (`--max-queued-jobs-per-tenant`).
    pub queued_jobs: usize,
    /// Datasets (`--max-datasets-per-tenant`).
    pub datasets: usize,
    /// Bytes of all its datasets together (`--max-dataset-bytes-per-tenant`).
    pub dataset_bytes: u64,
    /// Requests a second one user's token may send (`--max-requests-per-user-per-s`; twice as
    /// many at once after a pause; 0: not paced). Admins and node identities are not paced.
    pub user_requests_per_s: u32,
    /// Finished jobs kept (`--keep-finished-jobs-per-tenant`): those beyond the newest to end
    /// are forgotten, with their logs, metrics and checkpoints, as the tenant submits more.
    pub finished_jobs: usize,
    /// Succeeded jobs whose model is kept (`--keep-models-per-tenant`): those beyond the newest
    /// to end let theirs go as more succeed.
    pub models: usize,
}

impl Default for TenantLimits {
    fn default() -> Self {
        TenantLimits {
            queued_jobs: DEFAULT_MAX_QUEUED_PER_TENANT,
            datasets: DEFAULT_MAX_DATASETS_PER_TENANT,
            dataset_bytes: DEFAULT_MAX_DATASET_BYTES_PER_TENANT,
            user_requests_per_s: DEFAULT_MAX_REQUESTS_PER_USER_PER_S,
            finished_jobs: DEFAULT_KEPT_FINISHED_PER_TENANT,
            models: DEFAULT_KEPT_MODELS_PER_TENANT,
        }
    }
}

/// The default of [`TenantLimits::finished_jobs`]. Finished jobs were kept for ever: one user
/// submitting and cancelling in a loop (50 jobs a second in a review) grew the job table, every
/// lookup and every listing without end.
pub const DEFAULT_KEPT_FINISHED_PER_TENANT: usize = 1_000;

/// The default of [`TenantLimits::models`]. A succeeded job keeps its model, a checkpoint of
/// up to four times a job's memory: kept for each of a tenant's 1,000 finished jobs, one
/// tenant's loop of small jobs with large networks would fill the disk (and etcd) for all.
pub const DEFAULT_KEPT_MODELS_PER_TENANT: usize = 16;

/// [`DEFAULT_KEPT_MODELS_PER_TENANT`] on a replicated control plane, which keeps every model
/// in etcd too (up to [`sealedobjects::MAX_SHARED`] each, in a database of at most 8 GiB).
pub const DEFAULT_KEPT_MODELS_PER_TENANT_ON_ETCD: usize = 4;

/// The default of [`TenantLimits::user_requests_per_s`]: more than a person or a script polling
/// a job needs, while one user asking as fast as they can (1,600 requests a second in a review,
/// each an audit entry synced to disk) no longer fills the disk for every tenant in minutes.
pub const DEFAULT_MAX_REQUESTS_PER_USER_PER_S: u32 = 100;

/// The default of [`TenantLimits::queued_jobs`]: room for any real queue, while one tenant
/// submitting in a loop (100 jobs a second, 2,483 in 25 s in a review) cannot grow the queue,
/// the job table and every listing without end.
pub const DEFAULT_MAX_QUEUED_PER_TENANT: usize = 10_000;

/// The default of [`TenantLimits::datasets`]: datasets are never replaced, so without a bound
/// one tenant uploading under new names (empty ones included) grows the table without end.
pub const DEFAULT_MAX_DATASETS_PER_TENANT: usize = 10_000;

/// The default of [`TenantLimits::dataset_bytes`] (64 GiB): a thousand of the largest uploads
/// ([`api::MAX_UPLOAD`]), where one tenant's uploads could otherwise fill the disk.
pub const DEFAULT_MAX_DATASET_BYTES_PER_TENANT: u64 = 64 << 30;

/// [`DEFAULT_MAX_DATASET_BYTES_PER_TENANT`] on a replicated control plane (1 GiB), which keeps
/// every dataset in etcd too: etcd's whole database is at most 8 GiB (2 GiB by default), and
/// one full etcd stops every write of the control plane.
pub const DEFAULT_MAX_DATASET_BYTES_PER_TENANT_ON_ETCD: u64 = 1 << 30;

/// Where a daemon keeps what its replicas must share ([`Daemon::stores`]).
struct Stores {
    jobs: jobstore::Jobs,
    accounts: accounts::Accounts,
    marks: accounts::Marks,
    policies: policystore::Policies,
    plugins: pluginstore::Plugins,
    /// What was copied into etcd from this directory, this time (the first leader's).
    seeded: Vec<serde_json::Value>,
    /// The datasets' records.
    datasets: datasetstore::Datasets,
    /// For a replicated control plane: checkpoints and datasets, sealed, in etcd.
    shared: Option<sealedobjects::SealedObjects>,
}

/// A daemon failed to start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The data directory, its store or its database.
    #[error("{0}")]
    Setup(String),
    /// The listening socket.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        error: std::io::Error,
    },
}

/// The state the handlers share.
pub struct Daemon {
    /// Users, tokens, settings, datasets and plugins (the SQLite database).
    pub db: Arc<Db>,
    /// Jobs: every job operation of the lifecycle goes through this trait: the same SQLite
    /// database as [`Daemon::db`] (the embedded default), or etcd for a replicated control
    /// plane.
    pub jobs: jobstore::Jobs,
    /// Users and tokens: the SQLite database's, or etcd's for a replicated control plane
    /// (seeded once from the first leader's data directory).
    pub accounts: accounts::Accounts,
    /// GPUs admins took out of service (or put back): where the accounts are.
    pub marks: accounts::Marks,
    /// The policy an admin installed: this directory's store, or etcd.
    pub policies: policystore::Policies,
    /// Uploaded plugins and the active scheduler: this directory's store, or etcd.
    pub plugins: pluginstore::Plugins,
    /// This replica's leadership, when it is the leader of a replicated control plane.
    pub leadership: Option<gantry_etcd::election::Fencer>,
    /// Cluster state, scheduler plugin, policy and audit log.
    pub host: std::sync::RwLock<Host>,
    /// The policy and the audit log, without the host's lock: every request's decision.
    pub decider: gantry::Decider,
    /// Taken by whatever changes the scheduler plugin or the policy in force, across its audit
    /// record, the change and the setting a restart reads: concurrent changes take turns, so
    /// the log, the one in force and the setting agree (the last change wins). Never taken
    /// while holding the host's lock.
    pub installs: Mutex<()>,
    /// Datasets, checkpoints and artifacts, encrypted (holding the data directory's lock).
    pub store: Arc<gantry::storage::Store>,
    /// The audit log (also the host's): sealed by a timer, and its head served.
    pub audit: Arc<AuditLog>,
    /// Counters for `/metrics`.
    pub metrics: metrics::Metrics,
    /// The largest sizes a training job may imply.
    pub train_limits: gantry::training::TrainLimits,
    /// The memory the daemon's own training runs may take together.
    pub train_budget: Arc<budget::Budget>,
    /// How command jobs run.
    pub commands: command::CommandLimits,
    /// Beyond its limit or a stop, what a run handed to an agent may take to end
    /// ([`nodes::STOP_SLACK`]).
    pub stop_slack: std::time::Duration,
    /// What one tenant may have ([`DaemonConfig::tenant_limits`]).
    pub tenant_limits: TenantLimits,
    /// Held while a dataset's record is checked against its tenant's limits and inserted, so
    /// that two uploads cannot both pass the check with room for one.
    pub dataset_inserts: Mutex<()>,
    /// The cgroups command jobs run in, where this machine lets the daemon make them.
    pub cgroups: Option<cgroup::Cgroups>,
    /// The node agents' leases, when agents are on.
    pub nodes: Option<nodes::Nodes>,
    /// GPUs the cluster file declares unhealthy.
    file_unhealthy: std::collections::HashSet<String>,
    /// Refused requests no policy decided, counted for the audit log's aggregate.
    pub rejections: rejections::Rejections,
    /// The runs of training jobs under way, by job id (see [`lifecycle`]).
    running: Mutex<std::collections::HashMap<String, Arc<lifecycle::RunControl>>>,
    /// Jobs waiting out a backoff before they are queued again: (Unix seconds, job id).
    deferred: Mutex<Vec<(f64, String)>>,
    /// Reservations (jobs with neither a program nor training) placed: when each ends (Unix
    /// seconds; [`Daemon::end_reservations`]).
    reservations: Mutex<std::collections::HashMap<String, f64>>,
    /// Ends of runs the job store failed to record (a full disk, etcd away), tried again each
    /// tick ([`Daemon::record_unrecorded_ends`]): dropped, their jobs stayed `running` holding
    /// their GPUs until the next restart.
    unrecorded_ends: Mutex<Vec<lifecycle::UnrecordedEnd>>,
    /// Command jobs told that they wait for one node's GPUs ([`lifecycle::SPLIT_RETRY_S`]).
    split: Mutex<std::collections::HashSet<String>>,
    /// Training metrics of the jobs running now, by job id.
    curves: Mutex<std::collections::HashMap<String, curve::Curve>>,
    /// Each running job's checkpoints recorded, and when its log last said so
    /// ([`Daemon::record_checkpoint`]).
    checkpoint_lines: Mutex<std::collections::HashMap<String, (std::time::Instant, u64)>>,
    /// [`DaemonConfig::min_free_disk_mib`], in bytes.
    min_free_disk: u64,
    /// The datasets' records: this directory's SQLite, or etcd for a replicated control plane.
    pub datasets: datasetstore::Datasets,
    /// For a replicated control plane: the jobs' newest checkpoints and the datasets, sealed,
    /// kept in etcd for every replica.
    shared: Option<sealedobjects::SealedObjects>,
    /// For a follower: when it last looked at the policy the leader installed, and which
    /// object that was ([`Daemon::follow_policy`]).
    followed_policy: Mutex<(std::time::Instant, Option<String>)>,
    /// Whether a node's requests need a client certificate naming the node (`--client-ca`).
    pub node_certs: bool,
    /// Whether the node agent runs inside this process ([`DaemonConfig::agent_here`]).
    pub agent_here: bool,
}

/// How often a follower looks for a policy the leader installed.
pub const FOLLOW_POLICY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The settings key naming the active scheduler plugin.
pub const ACTIVE_SCHEDULER: &str = "scheduler";

/// The scheduler plugin a new daemon starts with.
pub const DEFAULT_SCHEDULER: &str = "binpack";

/// Where scheduler plugin `name` comes from: shipped in the binary, or uploaded (its component
/// read back from the encrypted store). The error says which lookup failed.
pub fn plugin_source(
    plugins: &dyn pluginstore::PluginStore,
    name: &str,
) -> Result<PluginSource, String> {
    if builtin::scheduler(name).is_some() {
        return Ok(PluginSource::Builtin(name.to_string()));
    }
    let record = plugins
        .plugins(Some(name))?
        .pop()
        .filter(|r| r.kind == KIND_SCHEDULER)
        .ok_or_else(|| format!("no scheduler plugin `{name}` (shipped or uploaded)"))?;
    let wasm = plugins.component(&record)?;
    Ok(PluginSource::Uploaded(Box::new(gantry::UploadedPlugin {
        name: record.name,
        manifest: record.manifest,
        wasm,
        signature: record.signature,
    })))
}

/// The kinds of uploaded plugins, as the database records them.
pub const KIND_SCHEDULER: &str = "scheduler";
/// See [`KIND_SCHEDULER`].
pub const KIND_PREPROCESS: &str = "preprocess";

/// Preprocessing plugin `name`, shipped or uploaded, ready to start workers on `host`'s engine.
/// An uploaded one must still carry a signature the host trusts (unless unsigned plugins are
/// allowed): trust withdrawn after the upload stops it from running.
pub fn preprocess_plugin(
    plugins: &dyn pluginstore::PluginStore,
    host: &Host,
    name: &str,
) -> Result<gantry::preprocess::PreprocessPlugin, String> {
    if builtin::preprocessor(name).is_some() {
        return host
            .load_preprocess_plugin(name, None)
            .map_err(|e| e.to_string());
    }
    let record = plugins
        .plugins(Some(name))?
        .pop()
        .filter(|r| r.kind == KIND_PREPROCESS)
        .ok_or_else(|| format!("no preprocessing plugin `{name}` (shipped or uploaded)"))?;
    let wasm = plugins.component(&record)?;
    let plugin = gantry::UploadedPlugin {
        name: record.name,
        manifest: record.manifest,
        wasm,
        signature: record.signature,
    };
    host.load_preprocess_plugin(name, Some(&plugin))
        .map_err(|e| e.to_string())
}

/// The database file of a data directory.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("gantry.db")
}

/// The name of this data directory's cgroups: a hash of its canonical path, the same across
/// restarts and versions.
fn cgroup_scope(data_dir: &std::path::Path) -> String {
    let path = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    cgroup::scope_for(path.as_os_str().as_encoded_bytes())
}

impl Daemon {
    /// Opens the data directory (locked for the daemon's life, swept, its database and audit log
    /// checked: see [`datadir::DataDir::open`]), the policy an admin installed (else the shipped
    /// one), the GPU health admins set, and the active scheduler; requeues every job the database
    /// says is not over (a restart after a crash loses no accepted job).
    pub fn open(config: &DaemonConfig) -> Result<Daemon, DaemonError> {
        Self::open_leading(config, None)
    }

    /// [`Daemon::open`] for the leader of a replicated control plane: its jobs in etcd, every
    /// write fenced by `leadership`.
    pub fn open_leading(
        config: &DaemonConfig,
        leadership: Option<gantry_etcd::election::Fencer>,
    ) -> Result<Daemon, DaemonError> {
        let setup = |m: String| DaemonError::Setup(m);
        let job_mib = config.train_limits.max_memory_mib;
        budget::Budget::total_for(config.train_memory_mib, job_mib).map_err(setup)?;
        // Of the configuration alone: before anything is opened, swept or recorded.
        if config.agent_lease.is_some() {
            nodes::agents_can_name(&config.cluster).map_err(setup)?;
        }
        let datadir::DataDir {
            store, db, audit, ..
        } = datadir::DataDir::open(&config.data_dir, "gantry up")
            .map_err(|e| setup(e.to_string()))?;
        if config.control_plane.is_some() {
            datadir::mark_replicated(&db).map_err(|e| setup(e.to_string()))?;
        }
        let mut host_config = HostConfig::new(config.cluster.clone());
        host_config.cache_dir = config.cache_dir.clone();
        host_config.trust = config.trust.clone();
        host_config.reserve_after_s = config.reserve_after_s;
        let mut host = Host::new(host_config).map_err(|e| setup(e.to_string()))?;
        match host.sweep_cache() {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                files = n,
                "removed compiled-plugin temporaries a crash left"
            ),
            Err(e) => tracing::warn!(error = %e, "sweeping the compiled-plugin cache"),
        }
        // What a crashed daemon's (or agent's) command runs left in their scratch goes now.
        scratch::sweep_dead_owners();
        let (db, store) = (Arc::new(db), Arc::new(store));
        let Stores {
            jobs,
            accounts,
            marks,
            policies,
            plugins,
            seeded,
            datasets,
            shared,
        } = Self::stores(config, leadership.as_ref(), &db, &store).map_err(setup)?;
        // The scheduler an admin made active survives restarts; one that no longer loads (a
        // trust key withdrawn, say) gives way to the shipped default, with a warning.
        let active = plugins
            .active_scheduler()
            .map_err(setup)?
            .unwrap_or_else(|| DEFAULT_SCHEDULER.to_string());
        let loaded = plugin_source(&*plugins, &active)
            .and_then(|source| host.load_scheduler(&source).map_err(|e| e.to_string()));
        if let Err(e) = loaded {
            tracing::warn!(plugin = %active, error = %e, "the active scheduler plugin does not load; using {DEFAULT_SCHEDULER}");
            host.load_scheduler(&PluginSource::Builtin(DEFAULT_SCHEDULER.into()))
                .map_err(|e| setup(e.to_string()))?;
        }
        host.set_shared_audit_log(audit.clone());
        for record in seeded {
            tracing::info!(%record, "copied from this data directory into etcd, once");
            api::here(host.record("etcd.seeded", record)).map_err(|e| setup(e.to_string()))?;
        }
        let node_identities = match config.agent_lease {
            Some(_) => accounts
                .users()
                .map_err(|e| setup(e.to_string()))?
                .into_iter()
                .filter(accounts::is_node)
                .collect(),
            None => Vec::new(),
        };
        Self::start_policy(
            &mut host,
            &*policies,
            config.shipped_policy,
            &node_identities,
        )
        .map_err(setup)?;
        // Nodes that registered through their agents, before anything refers to their GPUs
        // (an admin's marks, the jobs on them).
        let registered = marks.registered_nodes().map_err(|e| setup(e.to_string()))?;
        let mut capacity = config.cluster.clone();
        let mut taken = Vec::new();
        for n in registered {
            if config.cluster.nodes.iter().any(|c| c.name == n.name) {
                tracing::warn!(node = %n.name, "a registered node is in the cluster file now: the file's holds");
                continue;
            }
            let gpus = n.gpus();
            // One that no longer fits the cluster (the file took its name or a GPU id since)
            // stays out, said, rather than stopping every start: its agent's next heartbeat is
            // refused, saying why.
            if let Err(e) = host.can_add_node(&n.name, &gpus).and_then(|()| {
                capacity
                    .can_add_node(&n.name, &gpus)
                    .map_err(gantry::HostError::Cluster)
            }) {
                tracing::error!(node = %n.name, error = %e, "a registered node does not fit the cluster; left out");
                continue;
            }
            host.add_node(&n.name, &n.rack, &gpus)
                .map_err(|e| setup(e.to_string()))?;
            let before = capacity.gpus.len();
            capacity.add_node(&n.name, &n.rack, &gpus).map_err(setup)?;
            for g in &mut capacity.gpus[before..] {
                g.gpu.healthy = true;
            }
            taken.push(n);
        }
        let unhealthy = persisted::apply_gpu_health(&mut host, &*marks).map_err(setup)?;
        if unhealthy > 0 {
            tracing::info!(
                gpus = unhealthy,
                "GPUs marked unhealthy by admins stay out of service"
            );
        }
        let file_unhealthy: std::collections::HashSet<String> = config
            .cluster
            .gpus
            .iter()
            .filter(|g| !g.gpu.healthy)
            .map(|g| g.id.clone())
            .collect();
        // Jobs are admitted against what the cluster has: GPUs out of service for a while (an
        // admin's mark, a node whose agent is away) come back, and a job requeued from them is
        // queued again, not refused.
        host.admit_against(capacity);
        if config.agent_lease.is_some() {
            // With agents, a node serves once its agent holds a lease: none does yet.
            for g in &config.cluster.gpus {
                host.set_gpu_health(&g.id, false);
            }
        }
        // What command jobs of this data directory a crash left running goes before any job runs
        // again: a job never runs twice at once.
        let cgroups = cgroup::Cgroups::detect(&cgroup_scope(&config.data_dir));
        match &cgroups {
            Some(c) => {
                match c.reap_leftovers() {
                    0 => {}
                    n => tracing::warn!(
                        processes = n,
                        "killed what command jobs left running when the daemon last stopped"
                    ),
                }
                match c.sweep_dead_scopes() {
                    0 => {}
                    n => tracing::warn!(
                        scopes = n,
                        "removed the cgroups of daemons and agents that were killed"
                    ),
                }
            }
            None => tracing::info!(
                "no writable cgroups here: command jobs run without memory or CPU limits"
            ),
        }
        kernelcounts::lift_for_runs(cgroups.as_ref(), &config.commands);
        // Jobs accepted before a crash or stop: pending again (scheduled ones lost their
        // allocation with the process and are placed anew), unless a crash interrupted their
        // runs too often (see `lifecycle::recovery`).
        let lifecycle::Recovered {
            requeued,
            deferred,
            adopted,
        } = lifecycle::recover_jobs(&*jobs, &mut host, db::now(), config.agent_lease.is_some())
            .map_err(setup)?;
        tracing::info!(requeued, adopted = adopted.len(), "daemon state recovered");
        // What starting recorded (the policy in force, say) is sealed before the first request.
        audit.seal().map_err(|e| setup(e.to_string()))?;
        let stores = Stores {
            jobs,
            accounts,
            marks,
            policies,
            plugins,
            seeded: Vec::new(),
            datasets,
            shared,
        };
        let mut daemon = Self::assemble(config, (db, store, audit), host, stores, leadership);
        daemon.cgroups = cgroups;
        daemon.nodes =
            (config.agent_lease).map(|lease| nodes::Nodes::with_registered(lease, taken));
        daemon.file_unhealthy = file_unhealthy;
        daemon.deferred = Mutex::new(deferred);
        daemon.adopt_runs(adopted);
        Ok(daemon)
    }

    /// The read side of a follower of a replicated control plane ([`replicas`]): it answers
    /// reads of what lives in etcd (jobs, their logs, their metrics as last saved, datasets,
    /// the policy in force) as the leader would: the same stores, the policy the leader
    /// installed ([`Daemon::follow_policy`]), its decisions in this replica's audit log. It
    /// writes nothing the replicas share (its job store refuses every write, and no loop, run
    /// or agent is its), and it holds this data directory until it is dropped.
    pub fn open_following(config: &DaemonConfig) -> Result<Daemon, DaemonError> {
        let setup = |m: String| DaemonError::Setup(m);
        let Some(cp) = &config.control_plane else {
            return Err(setup("only a replica of a control plane follows".into()));
        };
        let datadir::DataDir {
            store, db, audit, ..
        } = datadir::DataDir::open(&config.data_dir, "gantry up (following)")
            .map_err(|e| setup(e.to_string()))?;
        datadir::mark_replicated(&db).map_err(|e| setup(e.to_string()))?;
        let mut host_config = HostConfig::new(config.cluster.clone());
        host_config.cache_dir = config.cache_dir.clone();
        host_config.trust = config.trust.clone();
        host_config.reserve_after_s = config.reserve_after_s;
        let mut host = Host::new(host_config).map_err(|e| setup(e.to_string()))?;
        host.set_shared_audit_log(audit.clone());
        let never: etcdstore::Fence = Arc::new(|| None);
        let accounts = etcdaccounts::EtcdAccounts::new(cp.etcd.clone(), &cp.root);
        let accounts = Arc::new(accounts.authenticated_as(&config.data_dir).map_err(setup)?);
        let policies = policystore::EtcdPolicy::new(cp.etcd.clone(), &cp.root)
            .authenticated_as(&config.data_dir)
            .map_err(setup)?;
        let (policy, info) =
            persisted::policy_to_start_with(&host, &policies, false).map_err(setup)?;
        api::here(host.set_policy(policy)).map_err(|e| setup(e.to_string()))?;
        let stores = Stores {
            jobs: Arc::new(jobstore::Erased(Arc::new(
                etcdstore::EtcdJobs::new(cp.etcd.clone(), &cp.root, Some(never))
                    .authenticated_as(&config.data_dir)
                    .map_err(setup)?,
            ))),
            accounts: accounts.clone(),
            marks: accounts,
            policies: Arc::new(policies),
            plugins: Arc::new(
                pluginstore::EtcdPlugins::new(cp.etcd.clone(), &cp.root)
                    .authenticated_as(&config.data_dir)
                    .map_err(setup)?,
            ),
            seeded: Vec::new(),
            datasets: Arc::new(
                datasetstore::EtcdDatasets::new(cp.etcd.clone(), &cp.root)
                    .authenticated_as(&config.data_dir)
                    .map_err(setup)?,
            ),
            shared: Some(sealedobjects::SealedObjects::new(cp.etcd.clone(), &cp.root)),
        };
        let (db, store) = (Arc::new(db), Arc::new(store));
        let daemon = Self::assemble(config, (db, store, audit), host, stores, None);
        *daemon
            .followed_policy
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = (std::time::Instant::now(), info.object);
        Ok(daemon)
    }

    /// Whether this daemon may act as the control plane now: one machine's always; a replica's
    /// while it holds the leadership.
    pub fn leads(&self) -> bool {
        self.leadership.as_ref().is_none_or(|l| l.term().is_some())
    }

    /// A follower ([`Daemon::open_following`]) puts in force the policy the leader installed
    /// since it last looked, looking at most once per [`FOLLOW_POLICY_EVERY`]. Blocks.
    pub fn follow_policy(&self) -> Result<(), String> {
        let mut followed = self
            .followed_policy
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if followed.0.elapsed() < FOLLOW_POLICY_EVERY {
            return Ok(());
        }
        followed.0 = std::time::Instant::now();
        let installed = self.policies.installed()?.map(|i| i.object);
        if installed == followed.1 {
            return Ok(());
        }
        let (policy, info) =
            persisted::policy_to_start_with(&self.host_read(), &*self.policies, false)?;
        api::here(self.host().set_policy(policy)).map_err(|e| e.to_string())?;
        tracing::info!(revision = %info.revision, "a follower follows the leader's new policy");
        followed.1 = info.object;
        Ok(())
    }

    /// A daemon of `config` over an open data directory (its database, store and audit log),
    /// `host` and `stores`; no runs, agents or cgroups (the leader's open adds them).
    fn assemble(
        config: &DaemonConfig,
        (db, store, audit): (Arc<Db>, Arc<gantry::storage::Store>, Arc<AuditLog>),
        host: Host,
        stores: Stores,
        leadership: Option<gantry_etcd::election::Fencer>,
    ) -> Daemon {
        audit.record_each_decision(config.audit_each_read);
        Daemon {
            db,
            jobs: stores.jobs,
            accounts: stores.accounts,
            marks: stores.marks,
            policies: stores.policies,
            plugins: stores.plugins,
            leadership,
            decider: host.decider(),
            installs: Mutex::new(()),
            host: std::sync::RwLock::new(host),
            store,
            audit,
            metrics: metrics::Metrics::default(),
            train_limits: config.train_limits.clone(),
            stop_slack: nodes::STOP_SLACK,
            // Refused when opening a leader; a follower runs no training.
            train_budget: config.train_budget.clone().unwrap_or_else(|| {
                let job_mib = config.train_limits.max_memory_mib;
                let total =
                    budget::Budget::total_for(config.train_memory_mib, job_mib).unwrap_or(job_mib);
                let share = budget::Budget::share_for(None, total, job_mib).unwrap_or(total);
                Arc::new(budget::Budget::with_share(total, share))
            }),
            commands: config.commands.clone(),
            tenant_limits: config.tenant_limits,
            dataset_inserts: Mutex::new(()),
            cgroups: None,
            nodes: None,
            file_unhealthy: Default::default(),
            rejections: Default::default(),
            running: Mutex::new(Default::default()),
            deferred: Mutex::default(),
            split: Mutex::default(),
            reservations: Mutex::default(),
            unrecorded_ends: Mutex::default(),
            curves: Mutex::new(Default::default()),
            checkpoint_lines: Mutex::new(Default::default()),
            min_free_disk: config.min_free_disk_mib.saturating_mul(1 << 20),
            datasets: stores.datasets,
            shared: stores.shared,
            followed_policy: Mutex::new((std::time::Instant::now(), None)),
            node_certs: config.client_ca.is_some(),
            agent_here: config.agent_here,
        }
    }

    /// Where jobs, accounts, GPU marks, the installed policy and plugins live: this
    /// directory's SQLite `db` and `store`, or etcd for the leader of a replicated control plane
    /// (all but jobs copied in from this directory the first time, which the stores' `seeded`
    /// says, for the audit log).
    fn stores(
        config: &DaemonConfig,
        leadership: Option<&gantry_etcd::election::Fencer>,
        db: &Arc<Db>,
        store: &Arc<gantry::storage::Store>,
    ) -> Result<Stores, String> {
        let local_policy = policystore::LocalPolicy {
            db: db.clone(),
            store: store.clone(),
        };
        let local_plugins = pluginstore::LocalPlugins {
            db: db.clone(),
            store: store.clone(),
        };
        let Some(cp) = &config.control_plane else {
            return Ok(Stores {
                jobs: Arc::new(jobstore::Erased(db.clone())),
                accounts: db.clone(),
                marks: db.clone(),
                policies: Arc::new(local_policy),
                plugins: Arc::new(local_plugins),
                seeded: Vec::new(),
                datasets: db.clone(),
                shared: None,
            });
        };
        let Some(lead) = leadership.cloned() else {
            return Err("a replica of a control plane opens the daemon only once it leads".into());
        };
        let fence: etcdstore::Fence = Arc::new(move || lead.fence());
        // Every store writes through the leader's fenced client: nothing a replica that no
        // longer leads still does (a request in flight, a task run to its end) lands.
        let etcd = Arc::new(cp.etcd.fenced(fence.clone()));
        let jobs = etcdstore::EtcdJobs::new(etcd.clone(), &cp.root, Some(fence))
            .authenticated_as(&config.data_dir)?;
        let accounts = etcdaccounts::EtcdAccounts::new(etcd.clone(), &cp.root);
        let accounts = Arc::new(accounts.authenticated_as(&config.data_dir)?);
        let datasets = datasetstore::EtcdDatasets::new(etcd.clone(), &cp.root)
            .authenticated_as(&config.data_dir)?;
        let policies = policystore::EtcdPolicy::new(etcd.clone(), &cp.root)
            .authenticated_as(&config.data_dir)?;
        let plugins = pluginstore::EtcdPlugins::new(etcd.clone(), &cp.root)
            .authenticated_as(&config.data_dir)?;
        fn copying(what: &'static str) -> impl Fn(String) -> String {
            move |e| format!("copying {what} into etcd: {e}")
        }
        let mut seeded = Vec::new();
        if let Some(n) = jobs
            .index_ended_once()
            .map_err(|e| format!("indexing the jobs that ended: {e}"))?
            && n > 0
        {
            seeded.push(serde_json::json!({ "ended_jobs_indexed": n }));
        }
        if let Some(n) = etcdaccounts::seed(&**db, &accounts).map_err(copying("the accounts"))? {
            seeded.push(serde_json::json!({"users": n.users, "tokens": n.tokens}));
        }
        if cp.authenticate_rows {
            let authenticating = |e: String| format!("authenticating the rows in etcd: {e}");
            let accounts = accounts.authenticate_unmarked().map_err(authenticating)?;
            let jobs = (jobs.authenticate_unmarked()).map_err(|e| authenticating(e.to_string()))?;
            let datasets =
                (datasets.authenticate_unmarked()).map_err(|e| authenticating(e.to_string()))?;
            let policy = policies.authenticate_unmarked().map_err(authenticating)?;
            let plugins = plugins.authenticate_unmarked().map_err(authenticating)?;
            seeded.push(serde_json::json!({
                "rows_authenticated": {"accounts": accounts, "jobs": jobs, "datasets": datasets,
                                       "policy": policy, "plugins": plugins}
            }));
        }
        if let Some(revision) =
            policystore::seed(&local_policy, &policies).map_err(copying("the installed policy"))?
        {
            seeded.push(serde_json::json!({ "policy": revision }));
        }
        if let Some(n) =
            pluginstore::seed(&local_plugins, &plugins).map_err(copying("the plugins"))?
        {
            seeded.push(serde_json::json!({ "plugins": n }));
        }
        let sealed = sealedobjects::SealedObjects::new(etcd.clone(), &cp.root);
        let share = |d: &db::DatasetRecord| {
            sealed.share(store, &format!("dataset/{}", d.object), &d.object)
        };
        if let Some(n) =
            datasetstore::seed(db, &datasets, share).map_err(copying("the datasets"))?
        {
            seeded.push(serde_json::json!({ "datasets": n }));
        }
        Ok(Stores {
            jobs: Arc::new(jobstore::Erased(Arc::new(jobs))),
            accounts: accounts.clone(),
            marks: accounts,
            policies: Arc::new(policies),
            plugins: Arc::new(plugins),
            seeded,
            datasets: Arc::new(datasets),
            shared: Some(sealed),
        })
    }

    /// Installs the policy to start with ([`persisted::policy_to_start_with`]) and says which.
    fn start_policy(
        host: &mut Host,
        policies: &dyn policystore::PolicyStore,
        shipped: bool,
        node_identities: &[db::User],
    ) -> Result<(), String> {
        let replaced = policies
            .installed()?
            .map(|i| i.revision)
            .filter(|_| shipped);
        let (policy, info) = persisted::policy_to_start_with(host, policies, shipped)?;
        persisted::lets_nodes_work(&policy, node_identities).map_err(|e| {
            format!(
                "{e}; start without agents (no --agent-lease-s) and install such a policy \
                 (POST /v1/policy), or start with `gantry up --shipped-policy` (recorded in the \
                 audit log)"
            )
        })?;
        api::here(host.set_policy(policy)).map_err(|e| e.to_string())?;
        if let Some(revision) = replaced {
            let record =
                serde_json::json!({"replaced": revision, "by": "gantry up --shipped-policy"});
            api::here(host.record("policy.reset", record)).map_err(|e| e.to_string())?;
        }
        tracing::info!(revision = %info.revision, source = info.source, "policy in force");
        Ok(())
    }

    /// Seals the audit log's entries since its last checkpoint (the daemon's timer).
    pub fn seal_audit(&self) {
        if let Err(e) = self.audit.seal() {
            tracing::error!(error = %e, "sealing the audit log");
        }
    }

    /// The host, locked for a change (scheduling, submitting, loading plugins).
    pub fn host(&self) -> std::sync::RwLockWriteGuard<'_, Host> {
        self.host.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The host, shared: policy decisions and reads run side by side, so their audit entries
    /// share a sync (the log's group commit) instead of queueing behind one lock.
    pub fn host_read(&self) -> std::sync::RwLockReadGuard<'_, Host> {
        self.host.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the cluster has GPUs and none serves, when the host can be read without waiting
    /// (a writer holds it across a decision's audit sync: `/v1/health` must not queue behind
    /// that); `None` when it cannot now.
    pub fn no_gpu_serves(&self) -> Option<bool> {
        let host = match self.host.try_read() {
            Ok(host) => host,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let s = host.state();
        Some(!s.cluster.gpus.is_empty() && s.healthy_gpus() == 0)
    }

    /// One scheduling cycle; placed jobs become `scheduled` in the database, and training jobs
    /// start (resuming from their newest checkpoint, if they have one). Jobs whose backoff
    /// ended join the queue first.
    ///
    /// The host's lock is held only to take the cycle's snapshot and to apply its answer, not
    /// while the plugin decides; all three steps run on the blocking pool (the lock and SQLite
    /// block, and a guest computes up to its deadline).
    pub async fn schedule(self: &Arc<Self>) {
        let d = self.clone();
        let plan = gantry::blocking::run(move || {
            d.queue_due();
            d.host_read().plan_cycle(db::now())
        })
        .await;
        let decided = gantry::blocking::run_future(plan.decide()).await;
        let d = self.clone();
        gantry::blocking::run(move || {
            let report = d.host().apply_cycle(decided);
            metrics::Metrics::inc(&d.metrics.cycles);
            d.metrics.placements.fetch_add(
                report.placements.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            for a in &report.placements {
                d.placed(a);
            }
        })
        .await;
    }

    /// Queues job `id` again at `at` (Unix seconds), if it is still pending then.
    fn defer(&self, id: &str, at: f64) {
        self.deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((at, id.to_string()));
    }

    /// Queues the deferred jobs whose backoff has ended (and are still pending).
    fn queue_due(&self) {
        let now = db::now();
        let due: Vec<String> = {
            let mut deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
            let (due, later) = deferred.drain(..).partition(|(at, _)| *at <= now);
            *deferred = later;
            due.into_iter().map(|(_, id)| id).collect()
        };
        for id in due {
            match self.jobs.job(&id) {
                Ok(Some(job)) if job.state == JobState::Pending => {
                    let refused = {
                        let mut host = self.host();
                        host.submit(api::spec(&job))
                            .err()
                            .filter(|_| !host.holds(&id))
                    };
                    if let Some(e) = refused {
                        self.fail_unqueueable(&id, &e.to_string());
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!(job = %id, error = %e, "reading a deferred job"),
            }
        }
    }

    fn curves(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, curve::Curve>> {
        self.curves.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets (or, with `None`, ends) job `id`'s live metrics; returns the ones it replaces.
    fn set_live_curve(&self, id: &str, curve: Option<curve::Curve>) -> Option<curve::Curve> {
        match curve {
            Some(c) => self.curves().insert(id.to_string(), c),
            None => self.curves().remove(id),
        }
    }

    /// Job `id`'s live metrics, if it is running.
    fn live_curve(&self, id: &str) -> Option<curve::Curve> {
        self.curves().get(id).cloned()
    }

    /// The running jobs' metrics.
    fn live_curves(&self) -> Vec<curve::Curve> {
        self.curves().values().cloned().collect()
    }

    /// Records a training step of job `id`.
    fn record_step(&self, id: &str, p: &gantry::training::Progress) {
        if let Some(c) = self.curves().get_mut(id) {
            c.record(p, db::now());
        }
    }

    /// Job `id`'s training metrics: live while it runs, else as last saved.
    pub fn curve(&self, id: &str) -> Result<Option<curve::Curve>, jobstore::StateError> {
        match self.live_curve(id) {
            Some(c) => Ok(Some(c)),
            None => self.jobs.curve(id),
        }
    }

    /// The data directory's disk: `Err((free, reserve))` in bytes while it has less free than
    /// the daemon keeps for recording the work under way ([`DaemonConfig::min_free_disk_mib`]).
    /// A machine that cannot say counts as having room.
    pub fn disk_room(&self) -> Result<(), (u64, u64)> {
        let dir = self.db.path().parent().unwrap_or(std::path::Path::new("."));
        match datadir::free_bytes(dir) {
            Some(free) if free < self.min_free_disk => Err((free, self.min_free_disk)),
            _ => Ok(()),
        }
    }

    /// Writes the refusals no policy decided, and the allowed reads decided, counted since the
    /// last time into the audit log: an entry each.
    pub fn record_rejections(&self) {
        if let Some(record) = self.rejections.drain()
            && let Err(e) = self.decider.record("request.rejected", record)
        {
            tracing::error!(error = %e, "recording refused requests in the audit log");
        }
        if let Err(e) = self.audit.record_tallies() {
            tracing::error!(error = %e, "recording allowed reads in the audit log");
        }
    }

    /// Closes the audit log with a signed checkpoint.
    pub fn close(&self) {
        if let Err(e) = self.host().close_audit_log() {
            tracing::error!(error = %e, "closing the audit log");
        }
    }
}

/// A daemon serving from a thread of this process (the demo, benchmarks, embedding).
pub struct Background {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), DaemonError>>>,
}

impl Background {
    /// Starts serving `config` on its own runtime; returns once it listens.
    pub fn start(config: DaemonConfig) -> Result<Background, DaemonError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("gantry-daemon".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| DaemonError::Setup(format!("starting a runtime: {e}")))?;
                runtime.block_on(serve_until(
                    config,
                    async {
                        let _ = stop_rx.await;
                    },
                    move |addr| {
                        let _ = ready_tx.send(addr);
                    },
                ))
            })
            .map_err(|e| DaemonError::Setup(format!("starting the daemon thread: {e}")))?;
        match ready_rx.recv() {
            Ok(addr) => Ok(Background {
                addr,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Err(_) => Err(thread
                .join()
                .map_err(|_| DaemonError::Setup("the daemon panicked".into()))?
                .err()
                .unwrap_or_else(|| DaemonError::Setup("the daemon did not start".into()))),
        }
    }

    /// Stops it (closing the audit log) and waits.
    pub fn stop(mut self) -> Result<(), DaemonError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), DaemonError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| DaemonError::Setup("the daemon panicked".into()))?,
            None => Ok(()),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Serves until SIGINT or SIGTERM; prints `listening on ADDR` on stdout once ready.
pub async fn serve(config: DaemonConfig) -> Result<(), DaemonError> {
    serve_then(config, |_| {}, async {}).await
}

/// [`serve`], running `then` with the address once it listens (after "listening on"), and
/// `stopping` to its end on SIGINT or SIGTERM while the daemon still serves (what `gantry up`
/// runs beside it winds down first).
pub async fn serve_then(
    config: DaemonConfig,
    then: impl FnOnce(SocketAddr),
    stopping: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stopping.await;
    };
    serve_until(config, shutdown, |addr| {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "listening on {addr}");
        let _ = out.flush();
        then(addr);
    })
    .await
}

pub async fn serve_until(
    config: DaemonConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), DaemonError> {
    let tls = match &config.tls {
        Some((cert, key)) => Some(tls::server_config(cert, key, config.client_ca.as_deref())?),
        None => None,
    };
    if tls.is_none() && !config.listen.ip().is_loopback() {
        if !config.insecure {
            return Err(DaemonError::Setup(format!(
                "--listen {}: beyond loopback the daemon serves only HTTPS, or bearer tokens \
                 would cross the network in the clear: give --tls-cert and --tls-key (or \
                 --insecure to serve plain HTTP anyway)",
                config.listen
            )));
        }
        tracing::warn!(
            listen = %config.listen,
            "serving plain HTTP beyond loopback: bearer tokens cross the network in the clear \
             (give --tls-cert and --tls-key)"
        );
    }
    let limits = config
        .conn_limits
        .clone()
        .fitted(serve::raise_descriptor_limit());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|error| DaemonError::Listen {
            addr: config.listen,
            error,
        })?;
    let addr = listener.local_addr().map_err(|error| DaemonError::Listen {
        addr: config.listen,
        error,
    })?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut ready = Some(ready);
    // A replica of a control plane answers as a follower until it leads.
    let candidate = match &config.control_plane {
        None => None,
        Some(cp) => {
            if let Some(ready) = ready.take() {
                ready(addr);
            }
            let me = cp
                .advertise
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{addr}"));
            let candidate = gantry_etcd::election::Candidate::new(
                cp.etcd.clone(),
                &cp.leader_key(),
                &me,
                cp.lease,
            );
            let leader = replicas::Leader::default();
            let won = Arc::new(Mutex::new(None));
            let campaign = {
                let (won, leader, stop) = (won.clone(), leader.clone(), stop.clone());
                async move {
                    let c = replicas::campaign(candidate, leader, stop).await;
                    *won.lock().unwrap_or_else(|e| e.into_inner()) = c;
                }
            };
            let following = config.clone();
            let reads = replicas::FollowerReads::new(Box::new(move || {
                Daemon::open_following(&following).map_err(|e| e.to_string())
            }));
            let app = replicas::follower_app(leader, reads.clone());
            serve::serve(
                &listener,
                acceptor.clone(),
                app,
                limits.clone(),
                |_| {},
                campaign,
            )
            .await;
            // Its data directory is the leader's to open next.
            let closed = reads.close(limits.drain_timeout).await;
            let won = won.lock().unwrap_or_else(|e| e.into_inner()).take();
            match won {
                Some(c) if closed => Some(c),
                Some(mut c) => {
                    let _ = tokio::task::spawn_blocking(move || c.resign()).await;
                    return Err(DaemonError::Setup(
                        "this control plane won the election, but reads it served as a \
                         follower still hold its data directory; start it again"
                            .into(),
                    ));
                }
                None => return Ok(()), // stopped while following
            }
        }
    };
    let leadership = candidate.as_ref().map(|c| c.fencer());
    // Opening (the policy compiled, jobs recovered) may outlast the lease: it is renewed
    // meanwhile, or replicas slower to open than their lease would depose each other forever.
    let (opened, opening) = tokio::sync::watch::channel(false);
    let renewing = candidate.map(|c| tokio::spawn(replicas::hold(c, opening)));
    let open = tokio::task::block_in_place(|| Daemon::open_leading(&config, leadership));
    let _ = opened.send(true);
    let candidate = match renewing {
        None => None,
        Some(task) => match task.await {
            Ok(Some(c)) => Some(c),
            _ => {
                if let Ok(daemon) = &open {
                    daemon.close();
                }
                return Err(DaemonError::Setup(
                    "this control plane lost the leadership while it opened (etcd unreachable \
                     for its lease); start it again to follow the new leader"
                        .into(),
                ));
            }
        },
    };
    let daemon = match open {
        Ok(daemon) => Arc::new(daemon),
        Err(e) => {
            // Hand over at once rather than when the lease runs out.
            if let Some(mut c) = candidate {
                let _ = tokio::task::spawn_blocking(move || c.resign()).await;
            }
            return Err(e);
        }
    };
    if let Some(lock) = daemon.store.dir_lock() {
        // Where `gantry key rotate` and other commands reach the daemon that holds the directory.
        lock.set_url(&format!("{scheme}://{addr}"))
            .map_err(|e| DaemonError::Setup(e.to_string()))?;
    }
    if let Some(ready) = ready.take() {
        ready(addr);
    }
    // Scheduling is woken by submissions (and every second).
    let wake = Arc::new(tokio::sync::Notify::new());
    let loops = spawn_loops(&daemon, wake.clone());
    let app = api::router(daemon.clone(), wake);
    // The leader serves until stopped or until it loses the leadership.
    let kept = Arc::new(Mutex::new(None));
    let deposed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let until = {
        let (kept, deposed, mut stop) = (kept.clone(), deposed.clone(), stop.clone());
        async move {
            match candidate {
                Some(c) => match replicas::hold(c, stop).await {
                    Some(c) => *kept.lock().unwrap_or_else(|e| e.into_inner()) = Some(c),
                    None => deposed.store(true, std::sync::atomic::Ordering::SeqCst),
                },
                None => {
                    let _ = stop.wait_for(|s| *s).await;
                }
            }
        }
    };
    let counted = daemon.clone();
    let at_cap = move |what| {
        metrics::Metrics::inc(match what {
            serve::AtCap::Refused => &counted.metrics.connections_refused,
            serve::AtCap::Evicted => &counted.metrics.connections_evicted,
        })
    };
    serve::serve(&listener, acceptor, app, limits, at_cap, until).await;
    for task in loops {
        task.abort();
    }
    // Runs stop at a step boundary and their jobs go back to the queue (not counted as
    // crashes); they resume from their newest checkpoint on restart.
    let stopping = daemon.clone();
    let _ = tokio::task::spawn_blocking(move || {
        stopping.record_rejections();
        stopping.stop_runs(std::time::Duration::from_secs(10))
    })
    .await;
    daemon.close();
    // Only once its runs have stopped does a leader hand over.
    let kept = kept.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(mut c) = kept {
        let _ = tokio::task::spawn_blocking(move || c.resign()).await;
    }
    if deposed.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(DaemonError::Setup(
            "this control plane lost the leadership (its lease ended): its runs were stopped \
             and its writes are refused; start it again to follow the new leader"
                .into(),
        ));
    }
    Ok(())
}

/// The daemon's background tasks: the audit log's entries sealed at least every
/// [`gantry::audit::SEAL_INTERVAL`], scheduling as one task (woken by `wake` and every
/// second), and refusals no policy decided recorded in the audit log in aggregate, once per
/// [`rejections::FLUSH_EVERY`].
fn spawn_loops(
    daemon: &Arc<Daemon>,
    wake: Arc<tokio::sync::Notify>,
) -> [tokio::task::JoinHandle<()>; 3] {
    let every = |period: std::time::Duration, work: fn(&Daemon)| {
        let daemon = daemon.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let d = daemon.clone();
                let _ = tokio::task::spawn_blocking(move || work(&d)).await;
            }
        })
    };
    let sealer = every(gantry::audit::SEAL_INTERVAL, Daemon::seal_audit);
    let scheduler = {
        let daemon = daemon.clone();
        tokio::spawn(async move {
            loop {
                let d = daemon.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if d.nodes.is_some() {
                        d.expire_leases();
                        d.give_up_overdue_runs();
                    }
                    d.record_unrecorded_ends();
                    d.end_reservations();
                })
                .await;
                daemon.schedule().await;
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        })
    };
    let recorder = every(rejections::FLUSH_EVERY, Daemon::record_rejections);
    [sealer, scheduler, recorder]
}
