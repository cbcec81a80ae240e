//! The job lifecycle of the daemon: every change of a job's state goes through here.
//!
//! The database is the authority on a job's state ([`JobStore::transition`] checks each move against
//! [`JobState::predecessors`] and makes it as a compare-and-set); the host's scheduling state
//! (its queue and GPUs) is built from the database at start and afterwards follows each move the
//! database made through one function, [`Daemon::follow`]: whoever made a move has it followed,
//! and nobody else changes the host's view of a stored job. A job whose run is under way keeps its GPUs until the
//! run has stopped: a cancel or a lost GPU only asks the run to stop ([`RunControl`]); the run's
//! own end ([`Daemon::run_ended`]) then moves the job and frees them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Daemon;
use super::api::spec;
use super::db::{JobRecord, JobState, MAX_CRASHES, TransitionError};
use super::jobstore::JobStore;
use super::jobstore::StateError;
use gantry::Assignment;

/// Why a run was asked to stop. When several ask, the strongest wins: a user's cancel over a
/// requeue, a requeue over a shutdown.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopReason {
    /// The daemon is shutting down: the job goes back to the queue and resumes from its newest
    /// checkpoint when the daemon starts again.
    Shutdown,
    /// Its GPUs were lost: it goes back to the queue now.
    Requeue(String),
    /// A user cancelled it: it ends `cancelled`.
    Cancel(String),
}

/// How the daemon steers one run: a stop flag the training loop reads after every step, and
/// why it was set.
#[derive(Debug, Default)]
pub struct RunControl {
    stop: AtomicBool,
    reason: std::sync::Mutex<Option<StopReason>>,
    /// When a stop was first asked for.
    asked: std::sync::OnceLock<std::time::Instant>,
}

impl RunControl {
    /// Asks the run to stop after its current step, for `reason` (unless a stronger reason
    /// asked already).
    pub fn request(&self, reason: StopReason) {
        let mut current = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_none_or(|c| *c < reason) {
            *current = Some(reason);
        }
        let _ = self.asked.set(std::time::Instant::now());
        self.stop.store(true, Ordering::SeqCst);
    }

    /// When a stop was first asked for, if one was.
    pub fn stop_asked_at(&self) -> Option<std::time::Instant> {
        self.asked.get().copied()
    }

    /// Whether the run should stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum RunEnd {
    /// It trained to the end; the JSON result.
    Finished(serde_json::Value, String),
    /// It stopped because it was asked to.
    Stopped,
    /// It failed (an error, or a panic caught at the run's edge).
    Failed(String),
}

/// Where a run's end leaves its job, given why it was asked to stop (if it was): the state,
/// why, the line for its log, and a finished run's result. A user's cancel wins over how the
/// run ended.
fn outcome(
    end: RunEnd,
    stop: Option<StopReason>,
) -> (JobState, Option<String>, String, Option<serde_json::Value>) {
    match (end, stop) {
        (_, Some(StopReason::Cancel(reason))) => (
            JobState::Cancelled,
            Some(reason.clone()),
            format!("{reason}: stopped"),
            None,
        ),
        (RunEnd::Finished(result, summary), _) => {
            (JobState::Succeeded, None, summary, Some(result))
        }
        (RunEnd::Stopped, Some(StopReason::Requeue(reason))) => (
            JobState::Pending,
            Some(reason.clone()),
            format!("requeued ({reason}); it resumes from its newest checkpoint"),
            None,
        ),
        (RunEnd::Stopped, _) => (
            JobState::Pending,
            Some("the daemon stopped".to_string()),
            "the daemon stopped; the job resumes from its newest checkpoint when it starts again"
                .to_string(),
            None,
        ),
        (RunEnd::Failed(e), _) => {
            // Kept twice (the reason and a log line) and read with every listing: bounded,
            // whatever a run's error quoted (a review: an 8 MB CSV field, 16 MB a job).
            let e = cut(&e, MAX_REASON);
            (
                JobState::Failed,
                Some(e.clone()),
                format!("failed: {e}"),
                None,
            )
        }
    }
}

/// The longest reason a failed job keeps, bytes (more is cut, and says so).
pub const MAX_REASON: usize = 4096;

/// `text`, at most `cap` bytes (cut at a character, saying how much went).
fn cut(text: &str, cap: usize) -> String {
    if text.len() <= cap {
        return text.to_string();
    }
    let mut at = cap;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}… ({} more bytes cut)", &text[..at], text.len() - at)
}

/// Seconds before a command job placed across nodes is queued again ([`Daemon::placed`]).
pub const SPLIT_RETRY_S: f64 = 2.0;

/// Seconds to wait before queueing again a job whose runs were interrupted by `crashes`
/// crashes of the daemon: the first crash may have nothing to do with the job, so it retries at
/// once; later ones back off.
pub fn crash_backoff_s(crashes: u32) -> f64 {
    match crashes {
        0 | 1 => 0.0,
        n => 15.0 * f64::from(1u32 << (n - 2).min(10)),
    }
}

/// The state a job moved from, if a move ([`JobStore::transition`]) was made: `None` when
/// the job was in no state to make it (someone else moved it first, or it is over), an error
/// only when the database failed.
pub(crate) fn moved<E: std::fmt::Display>(
    result: Result<JobState, TransitionError<E>>,
) -> Result<Option<JobState>, E> {
    match result {
        Ok(from) => Ok(Some(from)),
        Err(TransitionError::Db(e)) => Err(e),
        Err(refused) => {
            tracing::debug!(%refused, "a job's state was not changed");
            Ok(None)
        }
    }
}

impl Daemon {
    /// Records a placement the scheduler made: `pending` -> `scheduled`, and the run starts if
    /// the job trains. A placement of a job that stopped being pending meanwhile (a cancel won
    /// the race) is released instead.
    pub(crate) fn placed(self: &Arc<Self>, a: &Assignment) {
        if self.split_command(a) {
            return;
        }
        self.split
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&a.job_id);
        let placed = format!(
            "scheduled on {} GPU(s): {}",
            a.gpus.len(),
            a.gpus.join(", ")
        );
        match moved(self.jobs.transition(
            &a.job_id,
            Some(JobState::Pending),
            JobState::Scheduled,
            &a.gpus,
            None,
        )) {
            Ok(Some(_)) => {}
            Ok(None) => {
                self.host().complete(a.alloc_id);
                return;
            }
            Err(e) => {
                // The database could not say: free the GPUs rather than hold them unrecorded.
                tracing::error!(job = %a.job_id, error = %e, "recording a placement");
                self.host().complete(a.alloc_id);
                return;
            }
        }
        let _ = self.jobs.log(&a.job_id, &placed);
        match self.jobs.job(&a.job_id) {
            // With agents, a job runs on its node, by the node's agent.
            Ok(Some(job)) if let Some(nodes) = self.agent_for(&job) => {
                self.hand_to_agent(nodes, job)
            }
            Ok(Some(job)) if job.train.is_some() => super::runner::start(self.clone(), job),
            Ok(Some(job)) if job.command.is_some() => {
                super::runner::start_command(self.clone(), job)
            }
            // Neither: a reservation, which holds its GPUs for its estimated runtime.
            Ok(Some(job)) => {
                // Held to the wall time of now, whatever it was accepted under.
                let until = crate::db::now() + job.est_runtime_s.min(self.commands.max_wall_time_s);
                self.reservations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(job.id, until);
            }
            Ok(None) => {}
            Err(e) => tracing::error!(job = %a.job_id, error = %e, "reading a placed job"),
        }
    }

    /// The agents that run placed job `job` on its node, if one does: with agents on, a command
    /// job or a training job.
    fn agent_for(&self, job: &JobRecord) -> Option<&super::nodes::Nodes> {
        let nodes = self.nodes.as_ref()?;
        (job.command.is_some() || job.train.is_some()).then_some(nodes)
    }

    /// A command job placed on GPUs of several nodes cannot run (it is one process group), nor
    /// can a job an agent runs (an agent runs its own node's GPUs): the placement is given back and the job queued again after [`SPLIT_RETRY_S`], to wait for
    /// GPUs on one node (its log says so once). The scheduler is asked for one node
    /// ([`crate::api::spec`]), but that is a preference a plugin may not honour.
    fn split_command(&self, a: &Assignment) -> bool {
        if !crate::command::spans_nodes(&a.gpus) {
            return false;
        }
        let what = match self.jobs.job(&a.job_id) {
            Ok(Some(job)) if job.command.is_some() => "a command job runs as one process group",
            Ok(Some(job)) if self.agent_for(&job).is_some() => "a job runs on one node's agent",
            Ok(_) => return false,
            Err(e) => {
                tracing::error!(job = %a.job_id, error = %e, "reading a placed job");
                return false;
            }
        };
        self.host().complete(a.alloc_id);
        self.defer(&a.job_id, crate::db::now() + SPLIT_RETRY_S);
        let first = self
            .split
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(a.job_id.clone());
        if first {
            let line = format!(
                "waits for {} GPUs on one node ({what}; it was placed across nodes)",
                a.gpus.len()
            );
            let _ = self.jobs.log(&a.job_id, &line);
        }
        true
    }

    /// Ends the reservations (jobs with neither a program nor training) whose time is up: each
    /// held its GPUs for its `est_runtime_s` from its placement, and then succeeds. One that
    /// stopped being scheduled meanwhile (cancelled, requeued) is left as it is.
    pub(crate) fn end_reservations(&self) {
        let now = crate::db::now();
        let due: Vec<String> = {
            let mut held = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
            let due: Vec<String> = held
                .iter()
                .filter(|(_, until)| **until <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &due {
                held.remove(id);
            }
            due
        };
        for id in due {
            // Kept to be tried again at the next tick when the store fails (its job would stay
            // `scheduled`, holding its GPUs, until a restart).
            let retry = |id: &String| {
                let mut held = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
                held.insert(id.clone(), now);
            };
            let job = match self.jobs.job(&id) {
                Ok(Some(job)) if job.state == JobState::Scheduled => job,
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "reading a reservation");
                    retry(&id);
                    continue;
                }
            };
            // Through `running`, the lifecycle's one way to `succeeded`; not a run a crash
            // could interrupt, so not counted as one.
            match moved(self.jobs.run_started(&id)) {
                Ok(Some(_)) => {}
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "ending a reservation");
                    retry(&id);
                    continue;
                }
            }
            if let Err(e) = self.jobs.run_ended(&id) {
                tracing::error!(job = %id, error = %e, "ending a reservation");
            }
            let ended = self.jobs.transition(
                &id,
                Some(JobState::Running),
                JobState::Succeeded,
                &job.gpu_ids,
                None,
            );
            match moved(ended) {
                Ok(Some(from)) => {
                    let line = format!(
                        "the reservation of {} s ended; its GPUs are free",
                        job.est_runtime_s
                    );
                    let _ = self.jobs.log(&id, &line);
                    self.follow(&id, from, JobState::Succeeded);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "ending a reservation");
                    // `running` now: its end is recorded at a later tick.
                    self.unrecorded(UnrecordedEnd {
                        id: id.clone(),
                        to: JobState::Succeeded,
                        gpu_ids: job.gpu_ids.clone(),
                        reason: None,
                        message: format!(
                            "the reservation of {} s ended; its GPUs are free",
                            job.est_runtime_s
                        ),
                        result: None,
                        move_owed: true,
                    });
                }
            }
        }
    }

    fn unrecorded(&self, end: UnrecordedEnd) {
        let mut ends = self
            .unrecorded_ends
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        ends.push(end);
    }

    /// Records the ends of runs the job store failed to record before, as the runs ended;
    /// those it fails again are kept for the next tick.
    pub(crate) fn record_unrecorded_ends(&self) {
        let ends = std::mem::take(
            &mut *self
                .unrecorded_ends
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for mut end in ends {
            // A run of the job under way again: this end is no longer its to record.
            if self.runs().contains_key(&end.id) {
                continue;
            }
            if let Some(result) = &end.result {
                if let Err(e) = self.jobs.set_result(&end.id, result) {
                    tracing::error!(job = %end.id, error = %e, "recording a result");
                    self.unrecorded(end);
                    continue;
                }
                end.result = None;
            }
            if !end.move_owed {
                continue;
            }
            // Still as the run left it (placed, running, or being cancelled): else moved
            // meanwhile (requeued, given up), and the end is no longer this run's to record.
            let recorded = match self.jobs.job(&end.id) {
                Ok(Some(job))
                    if matches!(
                        job.state,
                        JobState::Scheduled | JobState::Running | JobState::Cancelling
                    ) =>
                {
                    self.jobs.transition(
                        &end.id,
                        Some(job.state),
                        end.to,
                        &end.gpu_ids,
                        end.reason.as_deref(),
                    )
                }
                Ok(_) => continue,
                Err(e) => Err(TransitionError::Db(e)),
            };
            match moved(recorded) {
                Ok(Some(from)) => {
                    tracing::info!(job = %end.id, state = end.to.as_str(), "a run's end recorded late");
                    let _ = self.jobs.log(&end.id, &end.message);
                    self.follow(&end.id, from, end.to);
                }
                // Moved meanwhile (cancelled, given up): nothing left to record.
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(job = %end.id, error = %e, "recording the end of a run");
                    self.unrecorded(end);
                }
            }
        }
    }

    /// Cancels `job` on behalf of `by`. A job whose run is under way becomes `cancelling` and
    /// keeps its GPUs until the run stops (at its next step); any other live job is
    /// `cancelled` at once and its GPUs freed. Returns the job as the cancel left it (what the
    /// API answers: the run may stop, and the job move on, before the answer is sent); `None`
    /// when it was already over (or being cancelled).
    pub(crate) fn cancel_job(
        &self,
        job: &JobRecord,
        by: &str,
    ) -> Result<Option<JobRecord>, StateError> {
        let reason = format!("cancelled by {by}");
        let left = |state: JobState, gpu_ids: Vec<String>| JobRecord {
            state,
            gpu_ids,
            reason: Some(reason.clone()),
            ..job.clone()
        };
        let runs = self.runs();
        if let Some(control) = runs.get(&job.id)
            && moved(self.jobs.transition(
                &job.id,
                None,
                JobState::Cancelling,
                &job.gpu_ids,
                Some(&reason),
            ))?
            .is_some()
        {
            control.request(StopReason::Cancel(reason.clone()));
            let how = if job.command.is_some() {
                format!(
                    "SIGTERM, then SIGKILL after {} s",
                    self.commands.kill_grace.as_secs_f64()
                )
            } else {
                "after this step".to_string()
            };
            let _ = self
                .jobs
                .log(&job.id, &format!("cancel asked by {by}; stopping ({how})"));
            return Ok(Some(left(JobState::Cancelling, job.gpu_ids.clone())));
        }
        let to = JobState::Cancelled;
        if let Some(from) = moved(self.jobs.transition(&job.id, None, to, &[], Some(&reason)))? {
            self.follow(&job.id, from, to);
            let _ = self.jobs.log(&job.id, &reason);
            return Ok(Some(left(to, Vec::new())));
        }
        Ok(None)
    }

    /// Jobs whose GPUs were lost (a GPU failed): one with a run under way stops at its next
    /// step and is requeued then; the others go back to the queue now.
    pub(crate) fn requeue_lost(&self, jobs: &[String], reason: &str) {
        for id in jobs {
            let runs = self.runs();
            if let Some(control) = runs.get(id) {
                control.request(StopReason::Requeue(reason.to_string()));
                continue;
            }
            match moved(
                self.jobs
                    .transition(id, None, JobState::Pending, &[], Some(reason)),
            ) {
                Ok(Some(from)) => self.follow(id, from, JobState::Pending),
                Ok(None) => {}
                Err(e) => tracing::error!(job = %id, error = %e, "requeueing a job"),
            }
        }
    }

    /// Brings the host's view of job `id` in line with a move from `from` to `to` that the
    /// database made: after start, the one way the scheduler's state follows the store. A job
    /// that ends, or stops holding GPUs, leaves the host's queue and frees its GPUs; one that is
    /// `pending` again is queued anew. Placements and runs starting or stopping change nothing
    /// here: the host made the placement, and a run keeps its GPUs until it has stopped.
    fn follow(&self, id: &str, from: JobState, to: JobState) {
        // A succeeded job keeps its last checkpoint, its trained model, while the job is kept
        // (`GET /v1/jobs/{id}/model`); nothing resumes any other that ended.
        if to == JobState::Succeeded {
            self.keep_newest_models(crate::db::tenant_of(id));
        } else if to.is_final() {
            self.forget_checkpoints(id);
        }
        let queue = if to == JobState::Pending {
            match self.jobs.job(id) {
                Ok(Some(record)) => Some(spec(&record)),
                Ok(None) => None,
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "reading a requeued job");
                    return;
                }
            }
        } else {
            None
        };
        let mut host = self.host();
        if to.is_final() || (from.holds_gpus() && !to.holds_gpus()) {
            host.cancel(id);
        }
        // Refused, unless because it is queued already.
        let refused = queue.and_then(|spec| host.submit(spec).err().filter(|_| !host.holds(id)));
        drop(host);
        if let Some(e) = refused {
            self.fail_unqueueable(id, &e.to_string());
        }
    }

    /// Ends pending job `id`, which the scheduler refuses to queue (`why`: the cluster it was
    /// accepted on changed, its tenant left it), as failed, saying why: left pending it would
    /// wait for ever, never placed nor ended.
    pub(crate) fn fail_unqueueable(&self, id: &str, why: &str) -> bool {
        let reason = format!("it can no longer be queued: {why}");
        let failed = self.jobs.transition(
            id,
            Some(JobState::Pending),
            JobState::Failed,
            &[],
            Some(&reason),
        );
        match moved(failed) {
            Ok(Some(_)) => {
                tracing::warn!(job = %id, "{reason}");
                let _ = self.jobs.log(id, &reason);
                self.forget_checkpoints(id);
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::error!(job = %id, error = %e, "failing a job it cannot queue");
                false
            }
        }
    }

    /// Ends the queued jobs that the cluster, having lost GPUs for good (a node removed, a
    /// GPU's memory made smaller), can no longer hold, as [`Self::fail_unqueueable`] does: left
    /// queued they would wait for ever. Returns their ids.
    pub(crate) fn fail_beyond_capacity(&self) -> Vec<String> {
        let refused: Vec<(String, String)> = {
            let host = self.host_read();
            (host.state().pending.iter())
                .filter_map(|p| {
                    let e = host.check(p.spec.clone()).err()?;
                    Some((p.spec.id.clone(), e.to_string()))
                })
                .collect()
        };
        let mut failed = Vec::new();
        for (id, why) in refused {
            if self.fail_unqueueable(&id, &why) {
                self.host().cancel(&id);
                failed.push(id);
            }
        }
        failed
    }

    /// Registers a run of `id`: `None` when one is registered already.
    pub(crate) fn claim_run(&self, id: &str) -> Option<Arc<RunControl>> {
        let mut runs = self.runs();
        if runs.contains_key(id) {
            tracing::error!(job = %id, "a second run of a job was refused");
            return None;
        }
        let control = Arc::new(RunControl::default());
        runs.insert(id.to_string(), control.clone());
        Some(control)
    }

    /// Moves a scheduled job to `running` as its run starts; false when it is no longer
    /// scheduled (a cancel came first), in which case the run must not start.
    pub(crate) fn run_starting(&self, id: &str) -> Result<bool, StateError> {
        Ok(moved(self.jobs.run_started(id))?.is_some())
    }

    /// A run of `job` ended (or never started: `started` is false): records how, frees its GPUs
    /// where the job is over or requeued, and unregisters the run.
    pub(crate) fn run_ended(
        &self,
        job: &JobRecord,
        control: &RunControl,
        started: bool,
        end: RunEnd,
    ) {
        let id = &job.id;
        let mut runs = self.runs();
        if started && let Err(e) = self.jobs.run_ended(id) {
            tracing::error!(job = %id, error = %e, "recording the end of a run");
        }
        let (to, reason, message, result) = outcome(end, control.reason());
        let mut unrecorded_result = None;
        if let Some(result) = result
            && let Err(e) = self.jobs.set_result(id, &result)
        {
            tracing::error!(job = %id, error = %e, "recording a result");
            unrecorded_result = Some(result);
        }
        let gpu_ids = if to == JobState::Pending {
            Vec::new()
        } else {
            job.gpu_ids.clone()
        };
        match moved(
            self.jobs
                .transition(id, None, to, &gpu_ids, reason.as_deref()),
        ) {
            Ok(Some(from)) => {
                let _ = self.jobs.log(id, &message);
                if to == JobState::Pending {
                    // Unregister first: the requeued job may be placed and start again.
                    runs.remove(id);
                    drop(runs);
                    // At shutdown the host is going away: queueing the job again would only let
                    // a last cycle place it.
                    if control.reason() != Some(StopReason::Shutdown) {
                        self.follow(id, from, to);
                    }
                    return;
                }
                self.follow(id, from, to);
            }
            Ok(None) => {
                // Moved by someone else (cancelled before the run started): theirs to release.
            }
            Err(e) => {
                tracing::error!(job = %id, error = %e, "recording the end of a run");
                // Tried again each tick: the run is over, and its job must not hold its GPUs.
                self.unrecorded(UnrecordedEnd {
                    id: id.clone(),
                    to,
                    gpu_ids,
                    reason,
                    message,
                    result: unrecorded_result,
                    move_owed: true,
                });
                runs.remove(id);
                return;
            }
        }
        runs.remove(id);
        // The move recorded, its result not: that is tried again alone.
        if let Some(result) = unrecorded_result {
            drop(runs);
            self.unrecorded(UnrecordedEnd {
                id: id.clone(),
                to,
                gpu_ids: Vec::new(),
                reason: None,
                message: String::new(),
                result: Some(result),
                move_owed: false,
            });
        }
    }

    /// At shutdown: asks every run to stop after its step and waits for them (up to `wait`);
    /// a stopped run's job is `pending` again and resumes on the next start. Runs still going
    /// when the wait ends are left to the restart's crash accounting.
    pub(crate) fn stop_runs(&self, wait: std::time::Duration) {
        for control in self.runs().values() {
            control.request(StopReason::Shutdown);
        }
        let deadline = std::time::Instant::now() + wait;
        while !self.runs().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for id in self.runs().keys() {
            tracing::warn!(job = %id, "still running at shutdown; it resumes from its checkpoint on restart");
        }
    }

    fn runs(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<RunControl>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether job `id` has a run registered now.
    pub fn has_run(&self, id: &str) -> bool {
        self.runs().contains_key(id)
    }
}

/// What a restarted daemon does with a job it finds live in the database, and when it may be
/// queued again (Unix seconds).
#[derive(Debug, Clone, PartialEq)]
pub enum Recovery {
    /// Queue it (again) from this time on.
    Queue(f64),
    /// It is over: record this state and reason.
    End(JobState, String),
}

/// The recovery of `job` at a restart at time `now`: a run a crash interrupted counts against
/// the job ([`MAX_CRASHES`] of them fail it, with backoff in between); a cancel that was under
/// way completes; everything else is queued again.
pub fn recovery(job: &JobRecord, now: f64) -> Recovery {
    match job.state {
        JobState::Cancelling => Recovery::End(
            JobState::Cancelled,
            job.reason
                .clone()
                .unwrap_or_else(|| "cancelled".to_string()),
        ),
        JobState::Running if job.crashes >= MAX_CRASHES => Recovery::End(
            JobState::Failed,
            format!(
                "the daemon went down {} times while this job ran; it is not run again (resubmit it to retry)",
                job.crashes
            ),
        ),
        JobState::Running => Recovery::Queue(now + crash_backoff_s(job.crashes)),
        _ => Recovery::Queue(job.not_before),
    }
}

/// The end of a run the job store failed to record ([`Daemon::record_unrecorded_ends`]).
#[derive(Debug, Clone)]
pub(crate) struct UnrecordedEnd {
    id: String,
    to: JobState,
    gpu_ids: Vec<String>,
    reason: Option<String>,
    message: String,
    /// A finished run's result, when the store failed to record it.
    result: Option<serde_json::Value>,
    /// Whether the move to `to` is still to be recorded (else only the result is).
    move_owed: bool,
}

/// What [`recover_jobs`] found.
pub(crate) struct Recovered {
    /// Jobs queued now.
    pub requeued: usize,
    /// Jobs queued once their backoff ends: (Unix seconds, job id).
    pub deferred: Vec<(f64, String)>,
    /// Runs node agents were running, taken back with their GPUs (see [`adopt`]).
    pub adopted: Vec<(crate::db::JobRecord, crate::jobstore::Placement)>,
}

/// At start: brings every live job of `jobs` back at time `now`: a run handed to a node's agent
/// (with `agents` on) adopted with its GPUs in `host`, as that run goes on; anything else as
/// [`recovery`] says: over (recorded), or pending again and queued (now, or once its backoff
/// ends).
pub(crate) fn recover_jobs(
    jobs: &dyn JobStore<Error = StateError>,
    host: &mut gantry::Host,
    now: f64,
    agents: bool,
) -> Result<Recovered, String> {
    let (mut requeued, mut deferred, mut adopted) = (0, Vec::new(), Vec::new());
    for job in jobs.jobs().map_err(|e| e.to_string())? {
        if job.state.is_final() {
            continue;
        }
        if agents && let Some(placement) = adopt(jobs, host, &job, now)? {
            adopted.push((job, placement));
            continue;
        }
        if matches!(job.state, JobState::Scheduled | JobState::Running) {
            // Its run is over, whoever ran it: never to be adopted later.
            jobs.set_placement(&job.id, None)
                .map_err(|e| e.to_string())?;
        }
        let moved = |to: JobState, reason: &str| {
            moved(jobs.transition(&job.id, Some(job.state), to, &[], Some(reason)))
                .map(|from| from.is_some())
                .map_err(|e| e.to_string())
        };
        match recovery(&job, now) {
            Recovery::End(to, reason) => {
                if moved(to, &reason)? {
                    tracing::warn!(job = %job.id, state = to.as_str(), "{reason}");
                    let _ = jobs.log(&job.id, &reason);
                }
            }
            Recovery::Queue(at) => {
                if job.state != JobState::Pending {
                    let why = if job.state == JobState::Running {
                        "its run was interrupted by a crash of the daemon"
                    } else {
                        "the daemon restarted"
                    };
                    moved(JobState::Pending, why)?;
                    let _ = jobs.log(&job.id, &format!("requeued: {why}"));
                }
                if at > now {
                    jobs.set_not_before(&job.id, at)
                        .map_err(|e| e.to_string())?;
                    tracing::warn!(job = %job.id, crashes = job.crashes, wait_s = at - now, "requeued after a backoff");
                    deferred.push((at, job.id.clone()));
                } else {
                    match host.submit(spec(&job)) {
                        Ok(_) => requeued += 1,
                        // Accepted on a cluster that changed since: it would wait for ever.
                        Err(_) if host.holds(&job.id) => {}
                        Err(e) => {
                            let reason = format!("it can no longer be queued: {e}");
                            if moved(JobState::Failed, &reason)? {
                                tracing::warn!(job = %job.id, "{reason}");
                                let _ = jobs.log(&job.id, &reason);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(Recovered {
        requeued,
        deferred,
        adopted,
    })
}

/// Takes back `job` if its run was handed to a node's agent (a placement is recorded, on the
/// node of the GPUs it holds) and its GPUs are free in `host`: they are its again, and the run
/// goes on. A placement that cannot be taken back is forgotten, and the job recovered as any
/// other.
fn adopt(
    jobs: &dyn JobStore<Error = StateError>,
    host: &mut gantry::Host,
    job: &crate::db::JobRecord,
    now: f64,
) -> Result<Option<crate::jobstore::Placement>, String> {
    let on_agents = job.command.is_some() || job.train.is_some();
    if !matches!(job.state, JobState::Scheduled | JobState::Running) || !on_agents {
        return Ok(None);
    }
    let Some(placement) = jobs.placement(&job.id).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let on_its_node = !job.gpu_ids.is_empty()
        && job
            .gpu_ids
            .iter()
            .all(|g| g.rsplit_once('/').is_some_and(|(n, _)| n == placement.node));
    let taken = match on_its_node {
        true => host.adopt(spec(job), &job.gpu_ids, now),
        false => Err(gantry::HostError::Job {
            id: job.id.clone(),
            message: format!("its GPUs are not on node {}", placement.node),
        }),
    };
    match taken {
        Ok(()) => Ok(Some(placement)),
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "a run handed to an agent is not adopted");
            jobs.set_placement(&job.id, None)
                .map_err(|e| e.to_string())?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_are_final_and_runs_stop_before_gpus_are_freed() {
        for s in JobState::ALL {
            for t in JobState::ALL {
                if s.is_final() {
                    assert!(!s.may_become(t), "{s:?} -> {t:?}");
                }
            }
        }
        // A running job cannot be cancelled outright (its GPUs would be freed under it): it goes
        // through `cancelling`, which holds them.
        assert!(!JobState::Running.may_become(JobState::Cancelled));
        assert!(JobState::Running.may_become(JobState::Cancelling));
        assert!(JobState::Cancelling.holds_gpus());
        assert!(!JobState::Cancelling.may_become(JobState::Succeeded));
        assert!(!JobState::Cancelled.may_become(JobState::Succeeded));
    }

    /// Found by a review: a run's error quoting an 8 MB CSV field was kept whole as the job's
    /// reason and again in its log (`gantry.db` grew 16 MB a job, and every listing read it).
    /// A failed job keeps at most [`MAX_REASON`] bytes of why, and says what was cut.
    #[test]
    fn a_failed_jobs_reason_is_bounded() {
        let t = crate::testing::TestDaemon::new();
        let (job, control) = t.running("huge");
        let error = format!("bad field `{}`", "é".repeat(4 << 20));
        t.daemon
            .run_ended(&job, &control, true, RunEnd::Failed(error));
        let stored = t.daemon.jobs.job(&job.id).unwrap().unwrap();
        assert_eq!(stored.state, JobState::Failed);
        let reason = stored.reason.unwrap();
        assert!(reason.len() < MAX_REASON + 64, "{} bytes", reason.len());
        assert!(reason.starts_with("bad field `éé") && reason.ends_with("more bytes cut)"));
        let logs = t.daemon.jobs.logs(&job.id).unwrap();
        assert!(logs.iter().all(|(_, l)| l.len() < MAX_REASON + 64));
    }

    /// Issue 11: the cancel handler read the job again to answer, so a run that stopped between
    /// the cancel and that read made the 202 answer say `cancelled` instead of `cancelling`
    /// (seen once under load in `daemon::a_training_job_checkpoints_into_the_store_and_resumes_after_kill_9`).
    /// Here the run stops in exactly that window: after the cancel, before the answer.
    #[test]
    fn a_cancel_answers_cancelling_even_when_the_run_stops_before_the_answer_is_sent() {
        let t = crate::testing::TestDaemon::new();
        let (job, control) = t.running("t1");
        let answer = t
            .daemon
            .cancel_job(&job, "ada")
            .unwrap()
            .expect("cancelled");
        // The run sees the stop at its next step and ends, before the API has answered.
        assert!(control.stopping());
        t.daemon.run_ended(&job, &control, true, RunEnd::Stopped);
        let stored = t.daemon.jobs.job(&job.id).unwrap().unwrap();
        assert_eq!(
            stored.state,
            JobState::Cancelled,
            "the run's end moved it on"
        );
        assert_eq!(answer.state, JobState::Cancelling, "{answer:?}");
        assert_eq!(
            answer.gpu_ids, job.gpu_ids,
            "a cancelling job holds its GPUs"
        );
        assert_eq!(answer.reason.as_deref(), Some("cancelled by ada"));
        // A job with no run is cancelled at once, and so answered.
        let queued = t.submit("t2");
        let answer = t.daemon.cancel_job(&queued, "ada").unwrap().unwrap();
        assert_eq!(answer.state, JobState::Cancelled);
        assert!(
            t.daemon.cancel_job(&queued, "ada").unwrap().is_none(),
            "already over"
        );
    }

    /// Issue 11: the daemon reaches jobs only through [`JobStore`] (`Daemon::jobs`), here the
    /// SQLite store: a job stored, placed by a real scheduling cycle, cancelled, and a running
    /// one recovered at a restart, each read back through the trait.
    #[test]
    fn the_lifecycle_runs_through_the_job_store_trait_over_sqlite() {
        let t = crate::testing::TestDaemon::new();
        let jobs: &dyn JobStore<Error = StateError> = &*t.daemon.jobs;
        let job = t.submit("placed");
        t.daemon.host().submit(spec(&job)).unwrap();
        t.runtime.block_on(t.daemon.schedule());
        let placed = jobs.job(&job.id).unwrap().unwrap();
        assert_eq!(placed.state, JobState::Scheduled, "{placed:?}");
        assert_eq!(placed.gpu_ids.len(), 1);
        assert_eq!(t.daemon.host_read().state().busy_gpus(), 1);
        // No run under way: cancelled at once, its GPU freed.
        let cancelled = t.daemon.cancel_job(&placed, "ada").unwrap().unwrap();
        assert_eq!(cancelled.state, JobState::Cancelled);
        assert_eq!(
            jobs.job(&job.id).unwrap().unwrap().state,
            JobState::Cancelled
        );
        assert_eq!(t.daemon.host_read().state().busy_gpus(), 0);
        let log: Vec<String> = jobs
            .logs(&job.id)
            .unwrap()
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        assert!(log[0].starts_with("scheduled on 1 GPU(s)"), "{log:?}");
        assert_eq!(log[1], "cancelled by ada");
        // A run a crash interrupted: pending again at the restart, and queued.
        let (running, _control) = t.running("crashed");
        let recovered = recover_jobs(jobs, &mut t.daemon.host(), crate::db::now(), false).unwrap();
        assert_eq!((recovered.requeued, recovered.deferred.len()), (1, 0));
        let recovered = jobs.job(&running.id).unwrap().unwrap();
        assert_eq!((recovered.state, recovered.crashes), (JobState::Pending, 1));
        let counts = jobs.counts_by_state().unwrap();
        assert_eq!(
            counts,
            vec![("cancelled".to_string(), 1), ("pending".to_string(), 1)]
        );
    }

    /// Found by a review: a run's end the job store failed to record (a full disk, etcd away)
    /// was only logged: its job stayed `running`, holding its GPUs, until the next restart. It
    /// is recorded at a later tick, result and all.
    #[test]
    fn a_runs_end_the_store_failed_to_record_is_recorded_at_a_later_tick() {
        let mut td = crate::testing::TestDaemon::new();
        let store = crate::testing::Deposable::over(Arc::get_mut(&mut td.daemon).unwrap());
        let (job, control) = td.running("late");
        let d = &td.daemon;
        store.depose();
        let result = serde_json::json!({"final_loss": 0.5});
        d.run_ended(
            &job,
            &control,
            true,
            RunEnd::Finished(result.clone(), "done".into()),
        );
        let state = || d.jobs.job(&job.id).unwrap().unwrap();
        assert_eq!(state().state, JobState::Running, "not recorded yet");
        d.record_unrecorded_ends();
        assert_eq!(state().state, JobState::Running, "the store still refuses");
        store.restore();
        d.record_unrecorded_ends();
        let ended = state();
        assert_eq!(ended.state, JobState::Succeeded);
        assert_eq!(ended.result, Some(result));
        assert!(d.unrecorded_ends.lock().unwrap().is_empty());
        // A run that failed before it started leaves its job placed (`scheduled`): recorded too.
        let early = td.scheduled("early", None);
        let control = d.claim_run(&early.id).expect("one run");
        store.depose();
        d.run_ended(
            &early,
            &control,
            false,
            RunEnd::Failed("no such program".into()),
        );
        store.restore();
        d.record_unrecorded_ends();
        let early = d.jobs.job(&early.id).unwrap().unwrap();
        assert_eq!(early.state, JobState::Failed, "{early:?}");
    }

    #[test]
    fn stop_reasons_keep_the_strongest() {
        let c = RunControl::default();
        c.request(StopReason::Shutdown);
        c.request(StopReason::Cancel("by ada".into()));
        c.request(StopReason::Requeue("gpu".into()));
        assert!(c.stopping());
        assert_eq!(c.reason(), Some(StopReason::Cancel("by ada".into())));
    }

    #[test]
    fn a_job_that_keeps_crashing_the_daemon_backs_off_then_fails() {
        let mut job = JobRecord {
            id: "j".into(),
            tenant: "t".into(),
            owner: "o".into(),
            gpus: 1,
            memory_per_gpu_mib: 1,
            est_runtime_s: 1.0,
            state: JobState::Running,
            gpu_ids: vec![],
            reason: None,
            submitted_at: 0.0,
            train: None,
            command: None,
            result: None,
            crashes: 1,
            not_before: 0.0,
        };
        assert_eq!(recovery(&job, 100.0), Recovery::Queue(100.0));
        job.crashes = 2;
        assert!(matches!(recovery(&job, 100.0), Recovery::Queue(t) if t > 100.0));
        job.crashes = MAX_CRASHES;
        assert!(matches!(
            recovery(&job, 100.0),
            Recovery::End(JobState::Failed, _)
        ));
        job.state = JobState::Cancelling;
        assert!(matches!(
            recovery(&job, 100.0),
            Recovery::End(JobState::Cancelled, _)
        ));
    }
}
