//! What the daemon's unit tests share: a daemon over a fresh data directory (the real store,
//! SQLite database, audit log, shipped policy and scheduler), and jobs in it.

use std::sync::Arc;

use super::curve::Curve;
use super::db::{JobRecord, JobState, TransitionError};
use super::jobstore::{JobStore, Placement, StateError};
use super::lifecycle::RunControl;
use super::{Daemon, DaemonConfig};

/// A daemon over a temporary data directory, with the runtime its blocking steps need.
pub(crate) struct TestDaemon {
    /// The daemon.
    pub daemon: Arc<Daemon>,
    /// The runtime the daemon's async steps (a scheduling cycle) run on.
    pub runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl TestDaemon {
    /// A daemon over a fresh data directory and a cluster of 2 GPUs; tenant `vision`.
    pub fn new() -> TestDaemon {
        Self::with_limits(Default::default())
    }

    /// [`TestDaemon::new`], holding training jobs to `train_limits`.
    pub fn with_limits(train_limits: gantry::training::TrainLimits) -> TestDaemon {
        Self::build(train_limits, None, None)
    }

    /// [`TestDaemon::with_limits`], its training runs taking at most `mib` together.
    pub fn with_budget(train_limits: gantry::training::TrainLimits, mib: u64) -> TestDaemon {
        Self::build(train_limits, None, Some(mib))
    }

    /// [`TestDaemon::new`] with node agents on, each heartbeat a lease of `lease`.
    pub fn with_agents(lease: std::time::Duration) -> TestDaemon {
        Self::build(Default::default(), Some(lease), None)
    }

    fn build(
        train_limits: gantry::training::TrainLimits,
        agent_lease: Option<std::time::Duration>,
        train_memory_mib: Option<u64>,
    ) -> TestDaemon {
        let dir = tempfile::tempdir().expect("a temporary directory");
        gantry::storage::Store::init(dir.path()).expect("a data directory");
        let mut cluster = gantry::cluster::Cluster::uniform(1, 1, 2, 1);
        cluster.tenants[0].name = "vision".into();
        let config = DaemonConfig {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().expect("an address"),
            cluster,
            // Compiled plugins and policies kept between runs: compiling them is most of a
            // daemon's start in a debug build.
            cache_dir: Some(std::env::temp_dir().join("gantry-daemon-unit-tests-cache")),
            tls: None,
            client_ca: None,
            insecure: false,
            trust: Default::default(),
            train_limits,
            train_memory_mib,
            train_budget: None,
            agent_lease,
            agent_here: false,
            commands: Default::default(),
            conn_limits: Default::default(),
            shipped_policy: false,
            audit_each_read: false,
            min_free_disk_mib: 0,
            reserve_after_s: gantry::DEFAULT_RESERVE_AFTER_S,
            control_plane: None,
            tenant_limits: Default::default(),
        };
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        // Policy loads run in the runtime's context, as in `gantry up`.
        let daemon = {
            let _context = runtime.enter();
            Daemon::open(&config).expect("the daemon opens")
        };
        TestDaemon {
            daemon: Arc::new(daemon),
            runtime,
            _dir: dir,
        }
    }

    /// Job `name` of tenant `vision`, stored `pending`.
    pub fn submit(&self, name: &str) -> JobRecord {
        self.submit_training(name, None)
    }

    /// Job `name` of tenant `vision` training on `train` (a TRAIN.toml text), stored `pending`
    /// as it is, unchecked.
    pub fn submit_training(&self, name: &str, train: Option<&str>) -> JobRecord {
        let job = JobRecord {
            id: super::db::key("vision", name),
            tenant: "vision".into(),
            owner: "ada".into(),
            gpus: 1,
            memory_per_gpu_mib: 1_000,
            est_runtime_s: 60.0,
            state: JobState::Pending,
            gpu_ids: Vec::new(),
            reason: None,
            submitted_at: super::db::now(),
            train: train.map(str::to_string),
            command: None,
            result: None,
            crashes: 0,
            not_before: 0.0,
        };
        assert!(self.daemon.jobs.insert_job(&job).expect("stored"));
        job
    }

    /// Job `name` of tenant `vision` training on `train` (if any), placed on a GPU
    /// (`scheduled`), as a scheduling cycle leaves it.
    pub fn scheduled(&self, name: &str, train: Option<&str>) -> JobRecord {
        let job = self.submit_training(name, train);
        let jobs = &self.daemon.jobs;
        let gpus = vec!["gpu-0".to_string()];
        jobs.transition(
            &job.id,
            Some(JobState::Pending),
            JobState::Scheduled,
            &gpus,
            None,
        )
        .expect("placed");
        jobs.job(&job.id).expect("read").expect("stored")
    }

    /// Job `name`, placed on a GPU with its run registered and started (`running`), as the
    /// runner leaves it: the job as stored, and the run's control.
    pub fn running(&self, name: &str) -> (JobRecord, Arc<RunControl>) {
        let job = self.scheduled(name, None);
        let d = &self.daemon;
        let control = d.claim_run(&job.id).expect("one run");
        assert!(d.run_starting(&job.id).expect("started"));
        let job = d.jobs.job(&job.id).expect("read").expect("stored");
        assert_eq!(job.state, JobState::Running);
        (job, control)
    }
}

/// A job store that refuses every write once [`Deposable::depose`] is called, as a leader's
/// fenced etcd store does once the replica no longer leads; reads go on. Put in place of a
/// test daemon's store with [`Deposable::over`].
pub struct Deposable {
    inner: crate::jobstore::Jobs,
    deposed: std::sync::atomic::AtomicBool,
}

impl Deposable {
    /// `daemon`'s store, wrapped (in its place): the wrapper, to depose it later.
    pub fn over(daemon: &mut Daemon) -> Arc<Deposable> {
        let wrapped = Arc::new(Deposable {
            inner: daemon.jobs.clone(),
            deposed: Default::default(),
        });
        daemon.jobs = wrapped.clone();
        wrapped
    }

    /// From now on, every write fails.
    pub fn depose(&self) {
        self.deposed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Writes go through again (a replica that leads again).
    pub fn restore(&self) {
        self.deposed
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    fn write(&self) -> Result<(), StateError> {
        match self.deposed.load(std::sync::atomic::Ordering::SeqCst) {
            true => Err(crate::etcdstore::EtcdStoreError::NotLeader.into()),
            false => Ok(()),
        }
    }
}

impl JobStore for Deposable {
    type Error = StateError;

    fn insert_job(&self, job: &JobRecord) -> Result<bool, StateError> {
        self.write()?;
        self.inner.insert_job(job)
    }
    fn job(&self, id: &str) -> Result<Option<JobRecord>, StateError> {
        self.inner.job(id)
    }
    fn jobs(&self) -> Result<Vec<JobRecord>, StateError> {
        self.inner.jobs()
    }
    fn jobs_named(&self, name: &str) -> Result<Vec<JobRecord>, StateError> {
        self.inner.jobs_named(name)
    }
    fn jobs_page(
        &self,
        tenants: Option<&[String]>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::jobstore::Listed>, StateError> {
        self.inner.jobs_page(tenants, after, limit)
    }
    fn counts_by_state(&self) -> Result<Vec<(String, u64)>, StateError> {
        self.inner.counts_by_state()
    }
    fn transition(
        &self,
        id: &str,
        from: Option<JobState>,
        to: JobState,
        gpu_ids: &[String],
        reason: Option<&str>,
    ) -> Result<JobState, TransitionError<StateError>> {
        self.write()?;
        self.inner.transition(id, from, to, gpu_ids, reason)
    }
    fn run_started(&self, id: &str) -> Result<JobState, TransitionError<StateError>> {
        self.write()?;
        self.inner.run_started(id)
    }
    fn run_ended(&self, id: &str) -> Result<(), StateError> {
        self.write()?;
        self.inner.run_ended(id)
    }
    fn set_not_before(&self, id: &str, at: f64) -> Result<(), StateError> {
        self.write()?;
        self.inner.set_not_before(id, at)
    }
    fn log(&self, id: &str, message: &str) -> Result<(), StateError> {
        self.write()?;
        self.inner.log(id, message)
    }
    fn log_once(&self, id: &str, key: &str, message: &str) -> Result<bool, StateError> {
        self.write()?;
        self.inner.log_once(id, key, message)
    }
    fn logs(&self, id: &str) -> Result<Vec<(f64, String)>, StateError> {
        self.inner.logs(id)
    }
    fn set_result(&self, id: &str, result: &serde_json::Value) -> Result<(), StateError> {
        self.write()?;
        self.inner.set_result(id, result)
    }
    fn set_curve(&self, id: &str, curve: &Curve) -> Result<(), StateError> {
        self.write()?;
        self.inner.set_curve(id, curve)
    }
    fn curve(&self, id: &str) -> Result<Option<Curve>, StateError> {
        self.inner.curve(id)
    }
    fn add_checkpoint(
        &self,
        job: &str,
        step: u32,
        object: &str,
    ) -> Result<Vec<String>, StateError> {
        self.write()?;
        self.inner.add_checkpoint(job, step, object)
    }
    fn forget_checkpoints(&self, id: &str) -> Result<Vec<String>, StateError> {
        self.write()?;
        self.inner.forget_checkpoints(id)
    }
    fn checkpoint_uses(&self, object: &str) -> Result<bool, StateError> {
        self.inner.checkpoint_uses(object)
    }
    fn latest_checkpoint(&self, job: &str) -> Result<Option<(u32, String)>, StateError> {
        self.inner.latest_checkpoint(job)
    }
    fn set_placement(&self, id: &str, placement: Option<&Placement>) -> Result<(), StateError> {
        self.write()?;
        self.inner.set_placement(id, placement)
    }
    fn placement(&self, id: &str) -> Result<Option<Placement>, StateError> {
        self.inner.placement(id)
    }
    fn forget_finished(
        &self,
        tenant: &str,
        keep: usize,
        at_most: usize,
    ) -> Result<Vec<(String, String)>, StateError> {
        self.write()?;
        self.inner.forget_finished(tenant, keep, at_most)
    }
    fn kept_models(&self, tenant: &str) -> Result<Vec<String>, StateError> {
        self.inner.kept_models(tenant)
    }
}

/// Sets `field` of the JSON value at `key` in `etcd` to `to`, as a writer of etcd would, behind
/// the control plane's back; returns what it was.
pub(crate) fn change_in_etcd(
    etcd: &gantry_etcd::Etcd,
    key: &str,
    field: &str,
    to: serde_json::Value,
) -> serde_json::Value {
    let kv = etcd.get(key.as_bytes()).unwrap().unwrap();
    let mut value: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
    let was = std::mem::replace(&mut value[field], to);
    etcd.put(key.as_bytes(), &serde_json::to_vec(&value).unwrap(), 0)
        .unwrap();
    was
}
