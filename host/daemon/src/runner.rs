//! Runs a scheduled training job on the native hot path, in a thread of its own: checkpoints go
//! into the encrypted store (recorded in the database), a restarted daemon resumes from the
//! newest one, and a cancelled job stops after its current step (see [`super::lifecycle`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Daemon;
use super::db::JobRecord;
use super::labels::LabelSplit;
use super::lifecycle::{RunControl, RunEnd};
use gantry::training::checkpoint::{self, Checkpoint};
use gantry::training::csv::{CsvReader, Targets};
use gantry::training::limits::{RowBudget, TrainLimits};
use gantry::training::{self, CheckpointSink, Hooks, Job, TrainConfig, TrainError};

/// Starts `job` (whose `train` is set) on a thread of its own, once the daemon's training
/// budget has room for what its configuration may need ([`crate::budget`]): see [`spawn_run`].
pub fn start(daemon: Arc<Daemon>, job: JobRecord) {
    // A configuration that no longer reads fails in the run, saying why; it reserves little.
    let mib = job
        .train
        .as_deref()
        .and_then(|text| train_config(&daemon.train_limits, &job.id, text).ok())
        .map_or(1, |c| c.memory_bound_mib(&daemon.train_limits));
    spawn_run(daemon, job, Some(mib), |daemon, job, control| {
        let end = match run(daemon, job, control) {
            Ok(o) => {
                tracing::info!(steps = o.steps, "training job succeeded");
                RunEnd::Finished(result_json(&o), summary(&o))
            }
            Err(TrainError::Stopped { step }) => {
                tracing::info!(step, "training job stopped");
                RunEnd::Stopped
            }
            Err(e) => {
                tracing::warn!(error = %e, "training job failed");
                RunEnd::Failed(e.to_string())
            }
        };
        daemon.keep_curve(&job.id);
        end
    });
}

impl Daemon {
    /// Starts job `id`'s live metrics from those saved, without the steps after `resumes_at`
    /// (a resumed run takes them again).
    pub(crate) fn continue_curve(&self, id: &str, resumes_at: u32) {
        let mut curve = self.jobs.curve(id).ok().flatten().unwrap_or_default();
        curve.rewind(resumes_at);
        self.set_live_curve(id, Some(curve));
    }

    /// Ends job `id`'s live metrics, saving them.
    pub(crate) fn keep_curve(&self, id: &str) {
        if let Some(curve) = self.set_live_curve(id, None)
            && let Err(e) = self.jobs.set_curve(id, &curve)
        {
            tracing::error!(job = %id, error = %e, "saving a job's metrics");
        }
    }

    /// Records job `id`'s checkpoint at `step`, stored as `object` (pinned by the caller until
    /// this returns): in the job's state as its one checkpoint (with its metrics so far, so a
    /// resumed run's curve continues from it) and in its log; on a replicated control plane,
    /// kept in etcd first, for a later leader to read. The checkpoint it replaces is let go.
    ///
    /// `current` is asked just before the record and what it returns held until the record is
    /// made: a run on an agent records only while it is its job's current run (the runs' lock
    /// is held, so it cannot be given up in between). A refused one leaves nothing: its etcd
    /// copy, under an owner of its own, never stood in for the job's recorded one.
    pub(crate) fn record_checkpoint<G>(
        &self,
        id: &str,
        step: u32,
        object: &str,
        current: impl FnOnce() -> Result<G, String>,
    ) -> Result<(), Unrecorded> {
        let owner = checkpoint_owner(id, object);
        if let Some(shared) = &self.shared {
            shared.share(&self.store, &owner, object).map_err(|e| {
                Unrecorded::Failed(format!(
                    "keeping the checkpoint at step {step} in etcd: {e}"
                ))
            })?;
        }
        let recorded = match current() {
            Ok(held) => {
                let forgotten = self.jobs.add_checkpoint(id, step, object);
                drop(held);
                forgotten.map_err(|e| Unrecorded::Failed(e.to_string()))
            }
            Err(stale) => Err(Unrecorded::Stale(stale)),
        };
        let forgotten = match recorded {
            Ok(forgotten) => forgotten,
            Err(e) => {
                // Its copy goes, unless the job's record names the same bytes (a report sent
                // again after its answer was lost): that copy is the record's.
                let named = self.jobs.latest_checkpoint(id).ok().flatten();
                if let Some(shared) = &self.shared
                    && named.is_none_or(|(_, o)| o != object)
                {
                    shared.forget(&owner);
                }
                return Err(e);
            }
        };
        self.let_go_checkpoints(id, &forgotten);
        let recorded = || -> Result<(), super::jobstore::StateError> {
            if let Some(curve) = self.live_curve(id) {
                self.jobs.set_curve(id, &curve)?;
            }
            match self.checkpoint_line(id) {
                Some(count) => {
                    let short = &object[..object.len().min(16)];
                    let line =
                        format!("checkpoint at step {step} (object {short}; {count} so far)");
                    self.jobs.log(id, &line)
                }
                None => Ok(()),
            }
        };
        recorded().map_err(|e| Unrecorded::Failed(e.to_string()))
    }

    /// Counts a checkpoint of job `id`; the count so far when the job's log should say so: the
    /// first, then at most one line every [`CHECKPOINT_LINE_EVERY`]. A line per checkpoint
    /// (`every_steps = 1`: 250 a second) grew a job's log without bound, read whole by each
    /// `GET .../logs`.
    fn checkpoint_line(&self, id: &str) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut lines = self
            .checkpoint_lines
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (said, count) = lines.entry(id.to_string()).or_insert((now, 0));
        *count += 1;
        if *count == 1 || now.duration_since(*said) >= CHECKPOINT_LINE_EVERY {
            *said = now;
            return Some(*count);
        }
        None
    }

    /// Removes from the store each of `objects` that nothing names any more: no checkpoint,
    /// dataset, plugin or installed policy (the store is content-addressed, so another owner
    /// may have stored the same bytes) and no put under way ([`gantry::storage::Pinned`]).
    /// A failure only leaves an object behind.
    pub(crate) fn let_go(&self, objects: &[String]) {
        // And those let go earlier while a put of the same bytes had them pinned.
        let later = self.store.deferred();
        for object in objects.iter().chain(&later) {
            match self
                .store
                .remove_unused(object, || self.object_in_use(object))
            {
                Ok(true) => tracing::debug!(object = %object, "removed an object nothing names"),
                Ok(false) => {}
                Err(e) => tracing::warn!(object = %object, error = %e, "keeping an object"),
            }
        }
    }

    /// Forgets `tenant`'s finished jobs beyond those it keeps ([`crate::TenantLimits`]), a
    /// bounded number at a time (a store grown under an earlier version shrinks over several
    /// submissions), and lets go of what their checkpoints named. A failure only keeps them.
    pub(crate) fn forget_finished(&self, tenant: &str) {
        /// At most this many per call: each submission forgets more than it adds.
        const AT_MOST: usize = 64;
        let keep = self.tenant_limits.finished_jobs;
        let forgotten = match self.jobs.forget_finished(tenant, keep, AT_MOST) {
            Ok(forgotten) => forgotten,
            Err(e) => {
                tracing::warn!(tenant, error = %e, "keeping finished jobs");
                return;
            }
        };
        let mut by_job: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for (job, object) in &forgotten {
            by_job.entry(job).or_default().push(object.clone());
        }
        for (job, objects) in by_job {
            self.let_go_checkpoints(job, &objects);
        }
    }

    /// Lets go of `objects`, checkpoints job `id` no longer names: from the store, and on a
    /// replicated control plane from etcd, with the copy an earlier version kept there.
    fn let_go_checkpoints(&self, id: &str, objects: &[String]) {
        self.let_go(objects);
        if let Some(shared) = &self.shared {
            for object in objects {
                shared.forget(&checkpoint_owner(id, object));
            }
            // Where a control plane of an earlier version kept the job's one checkpoint.
            shared.forget(&format!("checkpoint/{id}"));
        }
    }

    /// Drops `pinned`, an object just stored whose record was not made, and removes it if this
    /// put made it and nothing names it: a refused upload leaves nothing behind, and takes
    /// nothing that was there before it (an operator's `gantry store put` of the same bytes).
    pub(crate) fn let_go_unrecorded(&self, pinned: gantry::storage::Pinned) {
        let (object, created) = (pinned.id().to_string(), pinned.created());
        drop(pinned);
        if created {
            self.let_go(&[object]);
        }
    }

    /// Whether anything the daemon keeps names store object `object`.
    fn object_in_use(&self, object: &str) -> Result<bool, String> {
        Ok(self
            .jobs
            .checkpoint_uses(object)
            .map_err(|e| e.to_string())?
            || self
                .datasets
                .dataset_uses(object)
                .map_err(|e| e.to_string())?
            || self.plugins.uses(object)?
            || self.policies.uses(object)?)
    }

    /// A reader over job `id`'s checkpoint `object`: see [`Daemon::object_reader`].
    pub(crate) fn checkpoint_reader(
        &self,
        id: &str,
        object: &str,
    ) -> Result<gantry::storage::ObjectReader, String> {
        match self.object_reader(&checkpoint_owner(id, object), object) {
            // Kept by a control plane of an earlier version, under the job's one owner.
            Err(e) if self.shared.is_some() => self
                .object_reader(&format!("checkpoint/{id}"), object)
                .map_err(|_| e),
            read => read,
        }
    }

    /// Whether job `id`'s recorded checkpoint `object` (at `step`) is gone from the store, and
    /// from etcd where a replicated control plane keeps copies: a database restored from a
    /// backup names the checkpoint of then, which the job replaced since (a job keeps one). Its
    /// run then starts over, its log saying why, rather than failing.
    pub(crate) fn checkpoint_gone(&self, id: &str, step: u32, object: &str) -> bool {
        if self.store.has(object) {
            return false;
        }
        let line = format!(
            "its checkpoint at step {step} (object {}) is no longer stored (a restored \
             database names one replaced since): starting from the beginning",
            &object[..object.len().min(16)]
        );
        tracing::warn!(job = %id, "{line}");
        let _ = self.jobs.log(id, &line);
        true
    }

    /// A reader over object `object` of `owner` (`checkpoint/<job>`, `dataset/<object>`): from
    /// this daemon's store, where a replica of a control plane first brings it from etcd when
    /// another leader received it.
    pub(crate) fn object_reader(
        &self,
        owner: &str,
        object: &str,
    ) -> Result<gantry::storage::ObjectReader, String> {
        match (self.store.reader(object), &self.shared) {
            (Err(gantry::storage::StoreError::NotFound(_)), Some(shared)) => {
                shared.fetch(&self.store, owner, object)?;
                self.store.reader(object).map_err(|e| e.to_string())
            }
            (reader, _) => reader.map_err(|e| e.to_string()),
        }
    }

    /// A reader over the dataset stored as `object`: see [`Daemon::object_reader`].
    pub(crate) fn dataset_reader(
        &self,
        object: &str,
    ) -> Result<gantry::storage::ObjectReader, String> {
        self.object_reader(&format!("dataset/{object}"), object)
    }

    /// A replicated control plane keeps the dataset just stored as `object` in etcd, for every
    /// replica to read (nothing to do on one machine).
    pub(crate) fn share_dataset(&self, object: &str) -> Result<(), String> {
        match &self.shared {
            Some(shared) => shared.share(&self.store, &format!("dataset/{object}"), object),
            None => Ok(()),
        }
    }

    /// Job `id` failed or was cancelled: nothing resumes from its checkpoint, which is forgotten
    /// and let go (an ended job's kept its up to 64 MiB on disk, and in etcd, until the job
    /// itself was forgotten). A succeeded job's is its model, kept until then
    /// ([`Daemon::forget_finished`]), as is one a failure here kept.
    /// Whether it named any.
    pub(crate) fn forget_checkpoints(&self, id: &str) -> bool {
        self.checkpoint_lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let objects = match self.jobs.forget_checkpoints(id) {
            Ok(objects) => objects,
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "keeping a finished job's checkpoint");
                return false;
            }
        };
        self.let_go_checkpoints(id, &objects);
        !objects.is_empty()
    }

    /// Lets go of the models of `tenant`'s ended jobs beyond the newest it keeps
    /// ([`crate::TenantLimits::models`]), each job's log saying so: a tenant's kept models are
    /// bounded however many of its jobs succeed.
    pub(crate) fn keep_newest_models(&self, tenant: &str) {
        let keep = self.tenant_limits.models;
        let kept = match self.jobs.kept_models(tenant) {
            Ok(kept) => kept,
            Err(e) => {
                tracing::warn!(tenant, error = %e, "reading a tenant's kept models");
                return;
            }
        };
        for id in &kept[..kept.len().saturating_sub(keep)] {
            // Once, though two jobs' ends may ask at once.
            if self.forget_checkpoints(id) {
                let line = format!(
                    "its model was let go: tenant {tenant} keeps those of its {keep} newest \
                     succeeded jobs (--keep-models-per-tenant)"
                );
                let _ = self.jobs.log(id, &line);
            }
        }
    }
}

/// The least time between two lines of a job's log about its checkpoints.
const CHECKPOINT_LINE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The owner, in etcd, of job `id`'s checkpoint `object` ([`crate::sealedobjects`]): one per
/// object, so that a share by a run that turns out stale never replaces the copy of the one
/// the job's record names.
fn checkpoint_owner(id: &str, object: &str) -> String {
    format!("checkpoint/{id}/{object}")
}

/// Why a checkpoint was not recorded.
#[derive(Debug)]
pub(crate) enum Unrecorded {
    /// The run that wrote it is not its job's current run.
    Stale(String),
    /// The store, the database or etcd failed.
    Failed(String),
}

impl std::fmt::Display for Unrecorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unrecorded::Stale(e) | Unrecorded::Failed(e) => f.write_str(e),
        }
    }
}

/// Starts command job `job` (whose `command` is set) on a thread of its own, which supervises
/// the program to its end ([`crate::command::run`]): see [`spawn_run`].
pub fn start_command(daemon: Arc<Daemon>, job: JobRecord) {
    spawn_run(daemon, job, None, |daemon, job, control| {
        let end = crate::command::run(daemon, job, control);
        match &end {
            RunEnd::Failed(e) => tracing::warn!(error = %e, "command job failed"),
            _ => tracing::info!(?end, "command job ended"),
        }
        end
    });
}

/// Runs `body` for `job` on a thread of its own. The run is registered with the daemon first, so
/// a cancel or a lost GPU can stop it; with `memory_mib`, it then waits for that much of the
/// daemon's training budget, held until it ends; it ends through [`Daemon::run_ended`], which
/// records the outcome and frees the GPUs. A panic inside the run is caught there and fails
/// the job, never the daemon.
fn spawn_run(
    daemon: Arc<Daemon>,
    job: JobRecord,
    memory_mib: Option<u64>,
    body: impl FnOnce(&Arc<Daemon>, &JobRecord, &RunControl) -> RunEnd + Send + 'static,
) {
    let id = job.id.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("gantry-job-{id}"))
        .spawn(move || {
            let span = tracing::info_span!("gantry_daemon.job", job = %job.id);
            let _entered = span.enter();
            let Some(control) = daemon.claim_run(&job.id) else {
                return;
            };
            let _reserved = match memory_mib.map(|mib| reserve(&daemon, &job, &control, mib)) {
                None => None,
                Some(Ok(Some(reserved))) => Some(reserved),
                Some(Ok(None)) => return daemon.run_ended(&job, &control, false, RunEnd::Stopped),
                Some(Err(e)) => {
                    return daemon.run_ended(&job, &control, false, RunEnd::Failed(e));
                }
            };
            let started = daemon.run_starting(&job.id).unwrap_or_else(|e| {
                tracing::error!(error = %e, "starting a run");
                false
            });
            let end = if started {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    body(&daemon, &job, &control)
                }))
                .unwrap_or_else(|panic| {
                    let message = panic_message(panic.as_ref());
                    tracing::error!(panic = %message, "a job's run panicked");
                    RunEnd::Failed(format!("the run panicked: {message}"))
                })
            } else {
                RunEnd::Stopped
            };
            daemon.run_ended(&job, &control, started, end);
        });
    if let Err(e) = spawned {
        tracing::error!(job = %id, error = %e, "starting a job's thread");
    }
}

/// `mib` of the daemon's training budget for `job`'s run, waited for (the job's log says so)
/// while other runs leave no room; `None` when the run is asked to stop first.
fn reserve<'d>(
    daemon: &'d Daemon,
    job: &JobRecord,
    control: &RunControl,
    mib: u64,
) -> Result<Option<crate::budget::Reserved<'d>>, String> {
    let budget = &daemon.train_budget;
    budget.reserve(
        &job.tenant,
        mib,
        || control.stopping(),
        |used| {
            let line = format!(
                "waiting for memory: it may need {mib} MiB, and the daemon's training runs have \
                 {used} of their {} MiB (--train-memory-mib)",
                budget.total_mib()
            );
            tracing::info!("{line}");
            let _ = daemon.jobs.log(&job.id, &line);
        },
    )
}

/// A panic's message, if it carried text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

/// What a finished run records as the job's result. Not its last checkpoint, the job's model
/// (`GET /v1/jobs/{id}/model`): a result naming an object outlived it (found by a review).
pub fn result_json(o: &training::Outcome) -> serde_json::Value {
    serde_json::json!({
        "steps": o.steps,
        "resumed_at_step": o.resumed_at_step,
        "train_loss": o.train_loss,
        "test": o.test,
        "samples_per_s": o.samples_per_s,
        "backend": o.backend,
    })
}

/// The job log's line for a finished run.
pub fn summary(o: &training::Outcome) -> String {
    format!(
        "succeeded after {} steps: train loss {:.4}{}",
        o.steps,
        o.train_loss,
        o.test
            .and_then(|t| t.accuracy)
            .map(|a| format!(", test accuracy {:.1} %", 100.0 * a))
            .unwrap_or_default()
    )
}

/// Job `job`'s training configuration `text`, checked: parsed against `limits` (every size it
/// implies bounded) and held to the data a daemon job may read, synthetic rows or a stored
/// dataset, never a file on the host's disk (a FIFO or `/dev/zero` to hang or exhaust it, any
/// file to read).
///
/// The one check of both the submission (`POST /v1/jobs`) and the run. The run checks the
/// stored text again on purpose rather than keeping what the submission parsed: a job runs from
/// its stored text, after a daemon restart too, and against the limits the daemon runs with
/// then (`gantry up --train-limits`), which may be lower than when it was submitted; a parse
/// held in memory would not survive the restart, and a job in the store is not trusted to have
/// passed this daemon's submission.
pub fn train_config(
    limits: &TrainLimits,
    job: &str,
    text: &str,
) -> Result<TrainConfig, TrainError> {
    let origin = format!("job {job}: train");
    let path = std::path::Path::new(&origin);
    let config = TrainConfig::parse_with(text, path, limits)?;
    if config.data.file.is_some() || config.data.test_file.is_some() {
        return Err(TrainError::Invalid {
            path: path.to_path_buf(),
            line: None,
            message: "a daemon job's [data] is `synthetic` or a `dataset`, with no `test_file` (files on the host's disk are not reachable through the API)".into(),
        });
    }
    Ok(config)
}

fn run(
    daemon: &Daemon,
    job: &JobRecord,
    control: &RunControl,
) -> Result<training::Outcome, TrainError> {
    let text = job.train.as_deref().unwrap_or_default();
    let limits = &daemon.train_limits;
    // Checked again, not taken from the submission: see `train_config`.
    let config = train_config(limits, &job.id, text)?;
    let data = match &config.data.dataset {
        Some(name) => load_dataset(daemon, job, &config, name)?,
        None => training::data::load(&config, limits)?,
    };
    let mut store = StoreCheckpoints { daemon, job };
    let run = Job::new(config, data)?.resume_from(store.latest()?.map(|(_, c)| c));
    // The curve continues from the checkpoint: the steps after it are taken again.
    daemon.continue_curve(&job.id, run.resumes_at().unwrap_or(0));
    let line = format!(
        "training on {} ({})",
        run.data().source,
        run.selected().reason()
    );
    daemon.jobs.log(&job.id, &line).map_err(unavailable)?;
    let batch = run.config().batch_size as u64;
    let mut progress = |p: &training::Progress| {
        let m = &daemon.metrics;
        m.train_steps.fetch_add(1, Ordering::Relaxed);
        m.train_samples.fetch_add(batch, Ordering::Relaxed);
        daemon.record_step(&job.id, p);
    };
    // A replica that no longer leads stops its runs at the next step (the next leader runs
    // the job again), not once its requests have drained.
    let stop = || control.stopping() || !daemon.leads();
    let hooks = Hooks::new()
        .progress(&mut progress)
        .stop(&stop)
        .time_limit_s(daemon.train_limits.max_run_time_s)
        .checkpoints(&mut store);
    run.run(hooks)
}

/// A failure of the daemon's store or database, as a training error.
fn unavailable(e: impl std::fmt::Display) -> TrainError {
    TrainError::Unavailable(e.to_string())
}

/// A job's checkpoints in the encrypted store, each recorded in the database (with the job's
/// metrics so far, so a resumed run's curve continues from it) and in the job's log.
struct StoreCheckpoints<'a> {
    daemon: &'a Daemon,
    job: &'a JobRecord,
}

impl CheckpointSink for StoreCheckpoints<'_> {
    fn save(&mut self, c: &Checkpoint) -> Result<String, TrainError> {
        let (daemon, id) = (self.daemon, &self.job.id);
        let pinned = daemon
            .store
            .put_pinned(&checkpoint::to_bytes(c)[..])
            .map_err(unavailable)?;
        let object = pinned.id().to_string();
        let recorded = daemon.record_checkpoint(id, c.state.step, &object, || Ok(()));
        match recorded {
            Ok(()) => drop(pinned),
            Err(_) => daemon.let_go_unrecorded(pinned),
        }
        recorded.map_err(unavailable)?;
        Ok(object)
    }

    fn latest(&mut self) -> Result<Option<(String, Checkpoint)>, TrainError> {
        let (daemon, id) = (self.daemon, &self.job.id);
        let Some((step, object)) = daemon.jobs.latest_checkpoint(id).map_err(unavailable)? else {
            return Ok(None);
        };
        let mut reader = match daemon.checkpoint_reader(id, &object) {
            Ok(reader) => reader,
            Err(_) if daemon.checkpoint_gone(id, step, &object) => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut bytes).map_err(unavailable)?;
        tracing::info!(step, object = %object, "resuming from checkpoint");
        let _ = daemon
            .jobs
            .log(id, &format!("resuming from the checkpoint at step {step}"));
        let name = format!("checkpoint {object}");
        let c = checkpoint::from_bytes(&bytes, std::path::Path::new(&name))?;
        Ok(Some((object, c)))
    }
}

/// A job's stored dataset, streamed: decrypted chunk by chunk, the records parsed as they
/// come or (when the config names a plugin) the label column split off and the feature columns
/// streamed through the preprocessing plugin in the sandbox. Only the features and labels are
/// ever held whole.
fn load_dataset(
    daemon: &Daemon,
    job: &JobRecord,
    config: &TrainConfig,
    name: &str,
) -> Result<training::data::Loaded, TrainError> {
    let record = daemon
        .datasets
        .dataset(&super::db::key(&job.tenant, name))
        .map_err(unavailable)?
        .ok_or_else(|| unavailable(format!("no dataset `{name}` in tenant {}", job.tenant)))?;
    let label = config.data.label_column.unwrap_or(0);
    let stored = Stored {
        daemon,
        object: &record.object,
        name,
        label,
    };
    let dataset = match &config.data.preprocess {
        None => {
            let input = daemon.dataset_reader(&record.object).map_err(unavailable)?;
            return stored_rows(input, name, label, config, &daemon.train_limits);
        }
        Some(plugin) => stored.preprocess(plugin)?,
    };
    prepared(config, dataset, name, &daemon.train_limits)
}

/// Stored dataset `name`'s records (CSV without a header, the label in column `label`, parsed
/// as they stream from `input`), split into training and held-out rows as `config` says: a
/// daemon's run, or a node agent's with the records streamed through the control plane.
pub fn stored_rows(
    input: impl std::io::Read,
    name: &str,
    label: usize,
    config: &TrainConfig,
    limits: &TrainLimits,
) -> Result<training::data::Loaded, TrainError> {
    let source = format!("dataset `{name}`");
    let targets = Targets::Index(label);
    let dataset =
        CsvReader::new(input, std::path::Path::new(&source), targets, None, limits)?.read()?;
    prepared(config, dataset, name, limits)
}

/// A stored dataset's rows, split as `config` says.
fn prepared(
    config: &TrainConfig,
    dataset: gantry_kernels::Dataset,
    name: &str,
    limits: &TrainLimits,
) -> Result<training::data::Loaded, TrainError> {
    // Records are lines (no header): row 0 is line 1.
    training::data::prepare(config, dataset, format!("dataset {name}"), limits, Some(1))
}

/// Job `job`'s stored dataset `name` through preprocessing plugin `plugin` in this daemon's
/// sandbox, as CSV records without a header: the label first, then the features the plugin
/// made (each `f32` written so that it reads back exactly). What a node's agent trains on when
/// its job's data goes through a plugin: plugins run in the control plane.
pub fn preprocessed_records(
    daemon: &Daemon,
    job: &JobRecord,
    config: &TrainConfig,
    name: &str,
    plugin: &str,
) -> Result<Vec<u8>, TrainError> {
    use std::fmt::Write as _;
    let record = daemon
        .datasets
        .dataset(&super::db::key(&job.tenant, name))
        .map_err(unavailable)?
        .ok_or_else(|| unavailable(format!("no dataset `{name}` in tenant {}", job.tenant)))?;
    let stored = Stored {
        daemon,
        object: &record.object,
        name,
        label: config.data.label_column.unwrap_or(0),
    };
    let set = stored.preprocess(plugin)?;
    let width = set.inputs.max(1);
    let mut out = String::new();
    for (row, label) in set.features.chunks(width).zip(&set.targets) {
        let _ = write!(out, "{label}");
        for v in row {
            let _ = write!(out, ",{v}");
        }
        out.push('\n');
    }
    Ok(out.into_bytes())
}

/// A stored dataset's records (CSV without a header) and the column of their labels.
struct Stored<'a> {
    daemon: &'a Daemon,
    object: &'a str,
    name: &'a str,
    label: usize,
}

impl Stored<'_> {
    /// The records' feature columns through preprocessing plugin `plugin`, the labels beside.
    fn preprocess(&self, plugin: &str) -> Result<gantry_kernels::Dataset, TrainError> {
        let (daemon, name) = (self.daemon, self.name);
        // Here first (a replica brings it from etcd), for the passes below to read.
        drop(daemon.dataset_reader(self.object).map_err(unavailable)?);
        let labels = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let open = || -> Result<Box<dyn std::io::Read + Send>, gantry::storage::StoreError> {
            let reader = daemon.store.reader(self.object)?;
            Ok(Box::new(LabelSplit::new(
                reader,
                self.label,
                labels.clone(),
            )))
        };
        let mut rows = FeatureRows::new(&daemon.train_limits);
        let plugin = super::preprocess_plugin(&*daemon.plugins, &daemon.host_read(), plugin)
            .map_err(unavailable)?;
        gantry::pipeline::run(
            &open,
            &plugin,
            gantry::pipeline::PipelineConfig::default(),
            &mut |t| rows.tensor(&t.shape, t.data),
        )
        .map_err(|e| unavailable(format!("dataset `{name}`: {e}")))?;
        let width = rows.budget.width().unwrap_or(0);
        let features = rows.values;
        let labels = std::mem::take(&mut *labels.lock().unwrap_or_else(|e| e.into_inner()));
        if labels.len() * width != features.len() {
            return Err(unavailable(format!(
                "dataset `{name}`: {} labels for {} feature values of width {width}",
                labels.len(),
                features.len()
            )));
        }
        Ok(gantry_kernels::Dataset {
            features,
            targets: labels,
            inputs: width,
            targets_per_row: 1,
        })
    }
}

/// Feature values a preprocessing plugin returns, bounded as they arrive (its output is not
/// bounded by the dataset's size): see [`RowBudget`].
struct FeatureRows {
    values: Vec<f32>,
    budget: RowBudget,
}

impl FeatureRows {
    fn new(limits: &training::limits::TrainLimits) -> Self {
        Self {
            values: Vec::new(),
            budget: RowBudget::new(limits),
        }
    }

    /// Adds a preprocessing plugin's tensor of `shape` (records first; a row is the rest).
    fn tensor(&mut self, shape: &[u32], data: Vec<f32>) -> Result<(), String> {
        let rows = shape.first().copied().unwrap_or(0);
        let width = shape[1.min(shape.len())..]
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d as usize))
            .ok_or_else(|| format!("shape {shape:?} overflows"))?;
        self.budget
            .take(u64::from(rows), width, 0)
            .map_err(|e| format!("shape {shape:?}: {e}"))?;
        self.values.extend(data);
        Ok(())
    }
}

#[cfg(test)]
mod feature_rows_props {
    use super::FeatureRows;
    use gantry::training::limits::TrainLimits;

    #[test]
    fn rows_of_another_width_are_refused_naming_both() {
        let limits = TrainLimits::default();
        let mut rows = FeatureRows::new(&limits);
        rows.tensor(&[2, 3], vec![0.0; 6]).unwrap();
        let e = rows.tensor(&[3, 2], vec![0.0; 6]).unwrap_err();
        assert!(
            e.contains("2 feature values in a row where the first row had 3"),
            "{e}"
        );
        assert!(rows.budget.take(1, 3, 0).is_ok());
        assert!(rows.budget.take(1, 4, 0).is_err());
    }

    proptest::proptest! {
        #![proptest_config(gantry_fuzz::config(256))]

        /// Arbitrary tensor shapes (overflowing ones among them) are refused or kept with one
        /// row width throughout, within the limits; never a panic.
        #[test]
        fn arbitrary_tensor_shapes_keep_one_width_within_the_limits(
            shapes in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::prop_oneof![0u32..5, proptest::strategy::Just(u32::MAX)],
                    0..4,
                ),
                1..6,
            )
        ) {
            let limits = TrainLimits { max_memory_mib: 1, ..TrainLimits::default() };
            let mut rows = FeatureRows::new(&limits);
            for shape in &shapes {
                let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d as usize));
                let data = vec![0.0; n.filter(|&n| n <= 64).unwrap_or(0)];
                let len = data.len();
                if rows.tensor(shape, data).is_err() {
                    break;
                }
                let width = rows.budget.width().unwrap();
                proptest::prop_assert!(rows.budget.rows() * width as u64 * 4 <= 1 << 20);
                let records = shape.first().copied().unwrap_or(0) as usize;
                proptest::prop_assert!(len == 0 || shape.is_empty() || len == records * width);
            }
        }
    }

    #[test]
    fn a_plugin_output_past_the_limits_is_refused_before_it_is_kept() {
        let limits = TrainLimits {
            max_memory_mib: 1,
            ..TrainLimits::default()
        };
        let mut rows = FeatureRows::new(&limits);
        let e = rows.tensor(&[1 << 20, 8], Vec::new()).unwrap_err();
        assert!(e.contains("memory limit"), "{e}");
        assert!(rows.values.is_empty());
        let mut rows = FeatureRows::new(&limits);
        let e = rows
            .tensor(&[1, u32::MAX, u32::MAX], Vec::new())
            .unwrap_err();
        assert!(e.contains("features") || e.contains("overflows"), "{e}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::db::JobState;
    use crate::testing::TestDaemon;

    /// Five epochs on one CPU thread, on the data `data` names (the `[data]` table's body).
    fn train(data: &str) -> String {
        format!(
            "epochs = 5\nbatch_size = 16\n[data]\n{data}\n\
             [model]\nhidden = [4]\nloss = \"softmax_cross_entropy\"\n\
             [optimizer]\nkind = \"adam\"\nlr = 0.01\n[devices]\nbackend = \"cpu\"\nthreads = 1\n"
        )
    }

    /// A small synthetic set.
    const SPIRALS: &str = r#"synthetic = { kind = "spirals", classes = 2, rows_per_class = 20 }"#;

    /// Stores job `name` training on `train` as the store holds it, places it on a GPU and
    /// starts its run; returns the job as the run left it (waited for at most a minute).
    fn run_stored(t: &TestDaemon, name: &str, train: &str) -> JobRecord {
        let job = t.scheduled(name, Some(train));
        let jobs = &t.daemon.jobs;
        start(t.daemon.clone(), job.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = jobs.job(&job.id).expect("read").expect("stored");
            if matches!(now.state, JobState::Succeeded | JobState::Failed) {
                return now;
            }
            assert!(Instant::now() < deadline, "the run did not end: {now:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The runner checks a job's stored text again, against the limits the daemon runs with
    /// now: a job accepted under higher limits (before a restart with lower ones) fails with
    /// the field and the limit named, rather than running past them.
    #[test]
    fn a_job_checked_under_higher_limits_fails_when_the_daemon_runs_with_lower_ones() {
        let text = train(SPIRALS);
        train_config(&TrainLimits::default(), "t", &text).expect("valid when submitted");
        let lowered = TrainLimits {
            max_epochs: 2,
            ..TrainLimits::default()
        };
        let t = TestDaemon::with_limits(lowered);
        let job = run_stored(&t, "t", &text);
        assert_eq!(job.state, JobState::Failed, "{job:?}");
        let reason = job.reason.unwrap_or_default();
        assert!(
            reason.starts_with("job vision/t: train:")
                && reason.contains("epochs")
                && reason.contains("above the limit"),
            "{reason}"
        );
        // The same text runs where the limits allow it: the refusal is the limits' alone.
        let t = TestDaemon::new();
        assert_eq!(run_stored(&t, "t", &text).state, JobState::Succeeded);
    }

    /// Issue 11: the runner held the stored text to the limits but not to the data a daemon
    /// job may read, so a stored job naming a file (never accepted by the API, but the store is
    /// not the API) trained on the host's disk. Now it fails, naming why.
    #[test]
    fn a_stored_job_naming_a_file_on_the_host_fails_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rows.csv");
        let rows: String = (0..64)
            .map(|i| format!("{},{i}.5,{}\n", i % 2, i % 3))
            .collect();
        std::fs::write(&file, format!("label,x,y\n{rows}")).unwrap();
        let text = train(&format!("file = {file:?}\nlabel = \"label\""));
        let t = TestDaemon::new();
        let job = run_stored(&t, "f", &text);
        assert_eq!(job.state, JobState::Failed, "{job:?}");
        let reason = job.reason.unwrap_or_default();
        assert!(reason.contains("files on the host's disk"), "{reason}");
    }

    /// A review's `[checkpoint] every_steps = 1` wrote 76 MB/s into the store and nothing was
    /// ever deleted (2.3 GB in 30 s, kept after the job ended). A job keeps one checkpoint: each
    /// new one replaces the one before, whose object leaves the store; a succeeded job keeps its
    /// last, its model (until the job itself is forgotten), and nothing else.
    #[test]
    fn a_jobs_checkpoints_do_not_pile_up_in_the_store() {
        let text = format!("{}[checkpoint]\nevery_steps = 1\n", train(SPIRALS));
        let t = TestDaemon::new();
        let jobs = ["c1", "c2"].map(|name| {
            let job = run_stored(&t, name, &text);
            assert_eq!(job.state, JobState::Succeeded, "{job:?}");
            job
        });
        let logs = t.daemon.jobs.logs(&jobs[0].id).unwrap();
        let said: Vec<&String> = logs
            .iter()
            .map(|(_, l)| l)
            .filter(|l| l.starts_with("checkpoint at step"))
            .collect();
        assert_eq!(
            said.len(),
            1,
            "one line per 10 s, not one per checkpoint: {logs:?}"
        );
        let written: u64 = said[0]
            .rsplit_once("; ")
            .and_then(|(_, n)| n.strip_suffix(" so far)"))
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert_eq!(written, 1, "the first line says the first");
        for job in &jobs {
            // Found by a review: the result named the checkpoint the job's end let go.
            let result = job.result.as_ref().unwrap();
            assert!(result.get("checkpoint").is_none(), "{result}");
        }
        let steps = jobs[0].result.as_ref().unwrap()["steps"].as_u64().unwrap();
        let mut models: Vec<String> = (jobs.iter())
            .map(|job| t.daemon.jobs.latest_checkpoint(&job.id).unwrap().unwrap())
            .inspect(|(step, _)| assert_eq!(u64::from(*step), steps, "its last step"))
            .map(|(_, object)| object)
            .collect();
        // Content-addressed: two jobs that trained alike share one object.
        models.sort();
        models.dedup();
        let mut kept = t.daemon.store.list().unwrap();
        kept.sort();
        assert_eq!(kept, models, "{written} written");
    }

    /// A succeeded job keeps its model; a tenant keeps those of its newest succeeded jobs only
    /// (`--keep-models-per-tenant`): the oldest let theirs go as more succeed, each log saying
    /// so, and the store holds only what is still named. One tenant's loop of jobs cannot fill
    /// the disk (or etcd) with models.
    #[test]
    fn a_tenant_keeps_the_models_of_its_newest_succeeded_jobs_only() {
        let mut t = TestDaemon::new();
        Arc::get_mut(&mut t.daemon).unwrap().tenant_limits.models = 2;
        let ids: Vec<String> = (1..=3)
            .map(|seed| {
                let text = format!("seed = {seed}\n{}", train(SPIRALS));
                let job = run_stored(&t, &format!("m{seed}"), &text);
                assert_eq!(job.state, JobState::Succeeded, "{job:?}");
                job.id
            })
            .collect();
        let d = &t.daemon;
        let deadline = Instant::now() + Duration::from_secs(20);
        let let_go = |log: &[(f64, String)]| {
            (log.iter()).any(|(_, l)| l.starts_with("its model was let go"))
        };
        // The log line follows the checkpoint's forgetting: both waited for (CI, loaded, read
        // the log between the two).
        let (named, log) = loop {
            let named: Vec<Option<String>> = (ids.iter())
                .map(|id| d.jobs.latest_checkpoint(id).unwrap().map(|(_, o)| o))
                .collect();
            let log = d.jobs.logs(&ids[0]).unwrap();
            if named.iter().map(Option::is_some).eq([false, true, true]) && let_go(&log)
                || Instant::now() > deadline
            {
                break (named, log);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            named[0].is_none() && named[1].is_some() && named[2].is_some(),
            "{named:?}"
        );
        assert!(let_go(&log), "{log:?}");
        let mut kept = d.store.list().unwrap();
        kept.sort();
        let mut models: Vec<String> = named.into_iter().flatten().collect();
        models.sort();
        assert_eq!(kept, models, "the first model's object left the store");
    }

    /// The store is content-addressed: an object a job's older checkpoint let go may be what
    /// another job's checkpoint, a dataset, or a put under way (not yet recorded) is too. Only
    /// an object nothing names leaves the store.
    #[test]
    fn an_object_another_owner_names_stays_when_a_checkpoint_lets_it_go() {
        let t = TestDaemon::new();
        let d = &t.daemon;
        let (a, b) = (t.submit("a").id, t.submit("b").id);
        // As a run does: stored (pinned), recorded, unpinned.
        let record = |job: &str, step: u32, bytes: &[u8]| {
            let pinned = d.store.put_pinned(bytes).unwrap();
            d.record_checkpoint(job, step, pinned.id(), || Ok(()))
                .unwrap();
            pinned.id().to_string()
        };
        let reads = |object: &str| d.store.get(object).is_ok();

        // A dataset's bytes, recorded as a's checkpoint too, then replaced there.
        let dataset = d.store.put_bytes(b"rows and a checkpoint alike").unwrap();
        d.datasets
            .insert_dataset(&crate::db::DatasetRecord {
                name: crate::db::key("vision", "rows"),
                tenant: "vision".into(),
                classification: "public".into(),
                object: dataset.clone(),
                bytes: 27,
                owner: "ada".into(),
                created_at: 0.0,
            })
            .unwrap();
        assert_eq!(record(&a, 1, b"rows and a checkpoint alike"), dataset);
        let a2 = record(&a, 2, b"a at step 2");
        assert!(reads(&dataset), "the dataset still names it");

        // One object, both jobs' checkpoint: it goes when the last lets it go.
        let both = record(&a, 3, b"a and b alike");
        assert!(!reads(&a2), "a's step 2 is gone");
        record(&b, 3, b"a and b alike");
        record(&a, 4, b"a at step 4");
        assert!(reads(&both), "b's checkpoint still names it");
        record(&b, 4, b"b at step 4");
        assert!(!reads(&both), "nothing names it any more");

        // Bytes being stored again (pinned, not yet recorded) as a lets them go.
        let again = d.store.put_pinned(&b"a at step 4"[..]).unwrap();
        record(&a, 5, b"a at step 5");
        assert!(reads(again.id()), "pinned by a put under way");
    }

    /// Found by a review: a tenant's upload refused after its body (a name taken meanwhile)
    /// removed its object, though the same bytes were an operator's `gantry store put` object,
    /// which nothing in the daemon names: the operator's object was gone. A refused upload
    /// removes only what it made itself.
    #[test]
    fn a_refused_upload_never_takes_bytes_stored_before_it() {
        let t = TestDaemon::new();
        let d = &t.daemon;
        let operators = d.store.put_bytes(b"an operator's object").unwrap();
        let upload = d.store.put_pinned(&b"an operator's object"[..]).unwrap();
        assert!(!upload.created());
        d.let_go_unrecorded(upload);
        assert!(
            d.store.get(&operators).is_ok(),
            "the operator's object stays"
        );
        let own = d.store.put_pinned(&b"the upload's own bytes"[..]).unwrap();
        let id = own.id().to_string();
        d.let_go_unrecorded(own);
        assert!(d.store.get(&id).is_err(), "its own is gone");
    }

    /// Found by a review: `gantry db restore` brought back a database naming a checkpoint its
    /// job had replaced since (a job keeps one, the rest leave the store), and the job failed
    /// ("no object ..."). A run whose recorded checkpoint is no longer stored starts from the
    /// beginning, its log saying why; one that is stored but does not read still fails.
    #[test]
    fn a_run_whose_recorded_checkpoint_is_gone_starts_over() {
        let text = format!("{}[checkpoint]\nevery_steps = 1\n", train(SPIRALS));
        let t = TestDaemon::new();
        let job = t.scheduled("r", Some(&text));
        let gone = "ab".repeat(32);
        t.daemon.jobs.add_checkpoint(&job.id, 7, &gone).unwrap();
        start(t.daemon.clone(), job.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        let ended = loop {
            let now = t.daemon.jobs.job(&job.id).unwrap().unwrap();
            if matches!(now.state, JobState::Succeeded | JobState::Failed) {
                break now;
            }
            assert!(Instant::now() < deadline, "the run did not end");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(ended.state, JobState::Succeeded, "{ended:?}");
        assert_eq!(
            ended.result.unwrap()["resumed_at_step"],
            serde_json::Value::Null
        );
        let logs = t.daemon.jobs.logs(&job.id).unwrap();
        assert!(
            logs.iter().any(|(_, l)| l.contains("is no longer stored")),
            "{logs:?}"
        );
    }

    /// A run on an agent given up while its checkpoint was on its way into etcd (seconds for a
    /// large one) still had it recorded as its job's newest, over the checkpoint of the job's
    /// new run, and its copy replaced the job's one copy in etcd. The record is made only while
    /// the run is still current (its check held until the record is made); a stale one records
    /// nothing, and the job keeps the checkpoint it had.
    #[test]
    fn a_checkpoint_whose_run_was_given_up_meanwhile_records_nothing() {
        let t = TestDaemon::new();
        let d = &t.daemon;
        let a = t.submit("a").id;
        let kept = d.store.put_pinned(&b"the current run's"[..]).unwrap();
        d.record_checkpoint(&a, 1, kept.id(), || Ok(())).unwrap();
        let stale = d.store.put_pinned(&b"a given-up run's"[..]).unwrap();
        let refused = d.record_checkpoint(&a, 2, stale.id(), || Err::<(), _>("given up".into()));
        assert!(matches!(refused, Err(Unrecorded::Stale(_))), "{refused:?}");
        assert_eq!(
            d.jobs.latest_checkpoint(&a).unwrap(),
            Some((1, kept.id().to_string()))
        );
        assert!(d.store.get(kept.id()).is_ok());
    }

    /// Found by a review: each training job was held to the limits by itself (8 GiB), but the
    /// daemon ran as many at once as the cluster model had GPUs for (256 built in), so a few
    /// large jobs took more memory than the machine had, and the daemon down with every
    /// tenant's work. Runs reserve what they may need from one budget: one that does not fit
    /// waits, saying so in its log, and starts when another gives its memory back.
    #[test]
    fn training_runs_wait_for_room_in_the_daemons_memory_budget() {
        let limits = TrainLimits {
            max_memory_mib: 60,
            ..TrainLimits::default()
        };
        // Two hidden layers of 1,024: about 42 MiB each, so two do not fit in 60.
        let text = train(SPIRALS).replace("hidden = [4]", "hidden = [1024, 1024]");
        let config = train_config(&limits, "t", &text).unwrap();
        let mib = config.memory_bound_mib(&limits);
        assert!((31..=60).contains(&mib), "{mib}");
        let t = TestDaemon::with_budget(limits, 60);
        let (a, b) = (t.scheduled("a", Some(&text)), t.scheduled("b", Some(&text)));
        start(t.daemon.clone(), a.clone());
        start(t.daemon.clone(), b.clone());
        let jobs = &t.daemon.jobs;
        let deadline = Instant::now() + Duration::from_secs(120);
        let ended = |id: &str| {
            let job = jobs.job(id).unwrap().unwrap();
            matches!(job.state, JobState::Succeeded | JobState::Failed).then_some(job.state)
        };
        while ended(&a.id).is_none() || ended(&b.id).is_none() {
            assert!(Instant::now() < deadline, "the runs did not end");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            (ended(&a.id), ended(&b.id)),
            (Some(JobState::Succeeded), Some(JobState::Succeeded))
        );
        // One waited for the other: its training began after the other's ended.
        let log = |id: &str| jobs.logs(id).unwrap();
        let at = |lines: &[(f64, String)], prefix: &str| {
            lines
                .iter()
                .find(|(_, l)| l.starts_with(prefix))
                .map(|(t, _)| *t)
                .unwrap_or_else(|| panic!("no `{prefix}` in {lines:?}"))
        };
        let (la, lb) = (log(&a.id), log(&b.id));
        let (first, second) = match lb.iter().any(|(_, l)| l.starts_with("waiting for memory")) {
            true => (la, lb),
            false => (lb, la),
        };
        let waited = at(&second, "waiting for memory");
        assert!(
            second[..]
                .iter()
                .any(|(_, l)| l.contains("the daemon's training runs have")),
            "{second:?}"
        );
        assert!(
            at(&second, "training on") >= at(&first, "succeeded after"),
            "{first:?}\n{second:?}"
        );
        assert!(waited <= at(&first, "succeeded after"));
    }
}
