//! The job operations of the daemon's lifecycle, as a trait: the daemon's API handlers, its
//! lifecycle, runner and start reach jobs only through it ([`crate::Daemon::jobs`]). The SQLite
//! [`crate::db::Db`] implements it, the embedded default; a replicated store (etcd, issue 13)
//! can implement it later. Nothing in it names SQL: jobs are [`JobRecord`]s, failures the
//! store's own error, and every change of a job's state is a checked compare-and-set
//! ([`JobStore::transition`]). Users, tokens and settings are not jobs: they stay on the `Db`.

use super::curve::Curve;
use super::db::{JobRecord, JobState, TransitionError};

/// A store of jobs that owns their state, their logs, results, metrics and checkpoints.
pub trait JobStore: Send + Sync {
    /// The store's own failure (I/O, corruption, a lost connection).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Adds a new job in the state it carries; `false` if the id is taken.
    fn insert_job(&self, job: &JobRecord) -> Result<bool, Self::Error>;

    /// One job; `None` when there is no such job.
    fn job(&self, id: &str) -> Result<Option<JobRecord>, Self::Error>;

    /// Every job, in submission order.
    fn jobs(&self) -> Result<Vec<JobRecord>, Self::Error>;

    /// The jobs called `name`, in any tenant, in submission order.
    fn jobs_named(&self, name: &str) -> Result<Vec<JobRecord>, Self::Error>;

    /// At most `limit` jobs of `tenants` (`None`: every tenant's), in submission order, those
    /// submitted after job `after` (a key) when given, as a listing shows them ([`Listed`]): a
    /// listing's page, what it reads bounded by the page whatever the table holds. A store that
    /// cannot do better reads every job.
    fn jobs_page(
        &self,
        tenants: Option<&[String]>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Listed>, Self::Error> {
        let jobs = self.jobs()?;
        let start = match after {
            Some(key) => match jobs.iter().position(|j| j.id == key) {
                Some(at) => at + 1,
                None => return Ok(Vec::new()),
            },
            None => 0,
        };
        Ok(jobs
            .into_iter()
            .skip(start)
            .filter(|j| tenants.is_none_or(|t| t.contains(&j.tenant)))
            .take(limit)
            .map(Listed::from)
            .collect())
    }

    /// How many jobs are in each state (by the state's name).
    fn counts_by_state(&self) -> Result<Vec<(String, u64)>, Self::Error>;

    /// Moves job `id` to `to`, recording its GPUs (empty when it holds none) and why, if it is
    /// in `from` (`None`: whatever state it is in now) and may become `to`
    /// ([`JobState::may_become`]), as one compare-and-set: the one checked way a job's state
    /// changes, so a finished, failed or cancelled job stays so. Returns the state it moved
    /// from; a refused move changes nothing.
    fn transition(
        &self,
        id: &str,
        from: Option<JobState>,
        to: JobState,
        gpu_ids: &[String],
        reason: Option<&str>,
    ) -> Result<JobState, TransitionError<Self::Error>>;

    /// `scheduled` -> `running` as a run starts, counting the run against the job until
    /// [`JobStore::run_ended`] (a run a crash interrupts stays counted); refused when the job
    /// is no longer `scheduled` (a cancel won the race).
    fn run_started(&self, id: &str) -> Result<JobState, TransitionError<Self::Error>>;

    /// A run of job `id` ended without a crash of the daemon: it does not count as one.
    fn run_ended(&self, id: &str) -> Result<(), Self::Error>;

    /// Job `id` is not to be queued again before `at` (Unix seconds).
    fn set_not_before(&self, id: &str, at: f64) -> Result<(), Self::Error>;

    /// Appends a line to job `id`'s log.
    fn log(&self, id: &str, message: &str) -> Result<(), Self::Error>;

    /// Appends a line to job `id`'s log unless one of `key` is there already; whether it did.
    /// What a node's agent reports may arrive twice (its answer lost as a leader died, say, and
    /// the agent sending it again, perhaps to the next leader): each entry is kept once.
    fn log_once(&self, id: &str, key: &str, message: &str) -> Result<bool, Self::Error>;

    /// Job `id`'s log: `(unix seconds, message)`, oldest first.
    fn logs(&self, id: &str) -> Result<Vec<(f64, String)>, Self::Error>;

    /// Records a training job's outcome.
    fn set_result(&self, id: &str, result: &serde_json::Value) -> Result<(), Self::Error>;

    /// Saves job `id`'s training metrics (replacing earlier ones).
    fn set_curve(&self, id: &str, curve: &Curve) -> Result<(), Self::Error>;

    /// Job `id`'s saved training metrics.
    fn curve(&self, id: &str) -> Result<Option<Curve>, Self::Error>;

    /// Records a checkpoint of `job` after `step` steps, stored as `object`, as the job's one
    /// checkpoint: the ones before it are forgotten in the same step (a run resumes from the
    /// newest only, and each would otherwise stay on disk for ever). Returns the objects they
    /// named that `object` is not, for the caller to let go ([`crate::Daemon::let_go`]).
    fn add_checkpoint(
        &self,
        job: &str,
        step: u32,
        object: &str,
    ) -> Result<Vec<String>, Self::Error>;

    /// Forgets job `id`'s checkpoints (it is over: nothing resumes from them); returns the
    /// objects they named, for the caller to let go.
    fn forget_checkpoints(&self, id: &str) -> Result<Vec<String>, Self::Error>;

    /// Whether a checkpoint of any job is stored as `object`.
    fn checkpoint_uses(&self, object: &str) -> Result<bool, Self::Error>;

    /// The newest checkpoint of `job`: `(step, object)`.
    fn latest_checkpoint(&self, job: &str) -> Result<Option<(u32, String)>, Self::Error>;

    /// Records that job `id`'s run was handed to a node's agent as `placement` (`None`: it has
    /// no run on an agent now), so that a control plane starting over adopts the run rather
    /// than starting it again.
    fn set_placement(&self, id: &str, placement: Option<&Placement>) -> Result<(), Self::Error>;

    /// Where job `id`'s run was handed, if it was ([`JobStore::set_placement`]).
    fn placement(&self, id: &str) -> Result<Option<Placement>, Self::Error>;

    /// Forgets `tenant`'s finished jobs beyond the `keep` that ended last, at most `at_most` of
    /// them in one call, each with its log, metrics, checkpoints and placement: a tenant's
    /// stored jobs are bounded by its waiting, running and `keep` finished ones, however many it
    /// ever submitted. Returns the `(job, object)` of their checkpoints, for the caller to let
    /// go.
    fn forget_finished(
        &self,
        tenant: &str,
        keep: usize,
        at_most: usize,
    ) -> Result<Vec<(String, String)>, Self::Error>;

    /// `tenant`'s ended jobs that still name a checkpoint (a succeeded job's is its model), in
    /// the order they ended, oldest first.
    fn kept_models(&self, tenant: &str) -> Result<Vec<String>, Self::Error>;
}

/// What a job does, as a listing says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// It trains (`train`).
    Train,
    /// It runs a program (`command`).
    Command,
    /// Neither: it holds its GPUs for its estimated runtime.
    Reservation,
}

/// A job as a listing shows it: its record without its bodies (`train` and `command`, each up
/// to the submission's bound: a page of a thousand was tens of megabytes, read under the
/// store's lock), and its kind. `GET /v1/jobs/{id}` shows one whole.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Listed {
    /// The record, `train` and `command` left out.
    #[serde(flatten)]
    pub job: JobRecord,
    /// What it does.
    pub kind: JobKind,
}

impl From<JobRecord> for Listed {
    fn from(mut job: JobRecord) -> Listed {
        let kind = match (&job.train, &job.command) {
            (Some(_), _) => JobKind::Train,
            (None, Some(_)) => JobKind::Command,
            (None, None) => JobKind::Reservation,
        };
        job.train = None;
        job.command = None;
        Listed { job, kind }
    }
}

/// A run handed to a node's agent: the node, and the run's attempt number.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    /// The node.
    pub node: String,
    /// The attempt the agent runs.
    pub attempt: u64,
}

/// The failure of whichever store keeps the control plane's state: its jobs and its accounts
/// ([`crate::accounts`]).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The embedded SQLite store.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// The control plane's etcd.
    #[error(transparent)]
    Etcd(#[from] crate::etcdstore::EtcdStoreError),
    /// A stored value this version cannot read, in either store.
    #[error("{what}: {problem}")]
    Corrupt {
        /// What the value is.
        what: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// The daemon's jobs, in whichever store keeps them.
pub type Jobs = std::sync::Arc<dyn JobStore<Error = StateError>>;

/// A store seen with the daemon's one error type ([`StateError`]).
#[derive(Debug)]
pub struct Erased<S>(pub std::sync::Arc<S>);

impl<S> JobStore for Erased<S>
where
    S: JobStore,
    StateError: From<S::Error>,
{
    type Error = StateError;

    fn insert_job(&self, job: &JobRecord) -> Result<bool, StateError> {
        Ok(self.0.insert_job(job)?)
    }
    fn job(&self, id: &str) -> Result<Option<JobRecord>, StateError> {
        Ok(self.0.job(id)?)
    }
    fn jobs(&self) -> Result<Vec<JobRecord>, StateError> {
        Ok(self.0.jobs()?)
    }
    fn jobs_named(&self, name: &str) -> Result<Vec<JobRecord>, StateError> {
        Ok(self.0.jobs_named(name)?)
    }
    fn jobs_page(
        &self,
        tenants: Option<&[String]>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Listed>, StateError> {
        Ok(self.0.jobs_page(tenants, after, limit)?)
    }
    fn counts_by_state(&self) -> Result<Vec<(String, u64)>, StateError> {
        Ok(self.0.counts_by_state()?)
    }
    fn transition(
        &self,
        id: &str,
        from: Option<JobState>,
        to: JobState,
        gpu_ids: &[String],
        reason: Option<&str>,
    ) -> Result<JobState, TransitionError<StateError>> {
        self.0
            .transition(id, from, to, gpu_ids, reason)
            .map_err(TransitionError::widen)
    }
    fn run_started(&self, id: &str) -> Result<JobState, TransitionError<StateError>> {
        self.0.run_started(id).map_err(TransitionError::widen)
    }
    fn run_ended(&self, id: &str) -> Result<(), StateError> {
        Ok(self.0.run_ended(id)?)
    }
    fn set_not_before(&self, id: &str, at: f64) -> Result<(), StateError> {
        Ok(self.0.set_not_before(id, at)?)
    }
    fn log(&self, id: &str, message: &str) -> Result<(), StateError> {
        Ok(self.0.log(id, message)?)
    }
    fn log_once(&self, id: &str, key: &str, message: &str) -> Result<bool, StateError> {
        Ok(self.0.log_once(id, key, message)?)
    }
    fn logs(&self, id: &str) -> Result<Vec<(f64, String)>, StateError> {
        Ok(self.0.logs(id)?)
    }
    fn set_result(&self, id: &str, result: &serde_json::Value) -> Result<(), StateError> {
        Ok(self.0.set_result(id, result)?)
    }
    fn set_curve(&self, id: &str, curve: &Curve) -> Result<(), StateError> {
        Ok(self.0.set_curve(id, curve)?)
    }
    fn curve(&self, id: &str) -> Result<Option<Curve>, StateError> {
        Ok(self.0.curve(id)?)
    }
    fn add_checkpoint(
        &self,
        job: &str,
        step: u32,
        object: &str,
    ) -> Result<Vec<String>, StateError> {
        Ok(self.0.add_checkpoint(job, step, object)?)
    }
    fn forget_checkpoints(&self, id: &str) -> Result<Vec<String>, StateError> {
        Ok(self.0.forget_checkpoints(id)?)
    }
    fn checkpoint_uses(&self, object: &str) -> Result<bool, StateError> {
        Ok(self.0.checkpoint_uses(object)?)
    }
    fn latest_checkpoint(&self, job: &str) -> Result<Option<(u32, String)>, StateError> {
        Ok(self.0.latest_checkpoint(job)?)
    }
    fn set_placement(&self, id: &str, placement: Option<&Placement>) -> Result<(), StateError> {
        Ok(self.0.set_placement(id, placement)?)
    }
    fn placement(&self, id: &str) -> Result<Option<Placement>, StateError> {
        Ok(self.0.placement(id)?)
    }
    fn forget_finished(
        &self,
        tenant: &str,
        keep: usize,
        at_most: usize,
    ) -> Result<Vec<(String, String)>, StateError> {
        Ok(self.0.forget_finished(tenant, keep, at_most)?)
    }
    fn kept_models(&self, tenant: &str) -> Result<Vec<String>, StateError> {
        Ok(self.0.kept_models(tenant)?)
    }
}

/// The contract every [`JobStore`] keeps, as checks any store runs in its own tests (SQLite in
/// [`crate::db`], etcd in [`crate::etcdstore`]).
#[cfg(test)]
pub(crate) mod contract {
    use super::JobStore;
    use crate::db::{JobRecord, JobState, TransitionError};

    pub(crate) fn job(id: &str) -> JobRecord {
        JobRecord {
            id: id.into(),
            tenant: id.split_once('/').map_or("vision", |(t, _)| t).into(),
            owner: "ada".into(),
            gpus: 1,
            memory_per_gpu_mib: 1000,
            est_runtime_s: 1.0,
            state: JobState::Pending,
            gpu_ids: Vec::new(),
            reason: None,
            submitted_at: 0.0,
            train: None,
            command: None,
            result: None,
            crashes: 0,
            not_before: 0.0,
        }
    }

    /// The lifecycle whole, as a table: every pair of states is a legal move or not.
    const LEGAL: [(JobState, JobState); 13] = {
        use JobState::*;
        [
            (Pending, Scheduled),
            (Pending, Failed),
            (Pending, Cancelled),
            (Scheduled, Pending),
            (Scheduled, Running),
            (Scheduled, Cancelling),
            (Scheduled, Failed),
            (Scheduled, Cancelled),
            (Running, Pending),
            (Running, Cancelling),
            (Running, Succeeded),
            (Running, Failed),
            (Cancelling, Cancelled),
        ]
    };

    /// A stored job `id` brought to `state` by legal moves.
    /// A listing's pages: the callers' tenants' jobs alone, in submission order, `limit` at a
    /// time, each page after the last one's final job; nothing after an unknown key. (Tenants of
    /// their own: `db` may hold other jobs.)
    pub(crate) fn pages<S: JobStore>(db: &S) {
        let ids = ["pgv/p1", "pgn/p2", "pgv/p3", "pgv/p4", "pgn/p5", "pgv/p6"];
        for id in ids {
            let mut job = job(id);
            if id == "pgv/p3" {
                job.train = Some("x".repeat(60_000));
            }
            assert!(db.insert_job(&job).unwrap());
        }
        // A listing leaves the bodies out and says what each job is.
        let listed = db.jobs_page(Some(&["pgv".to_string()]), None, 3).unwrap();
        let kinds: Vec<_> = listed
            .iter()
            .map(|l| (l.kind, l.job.train.is_some()))
            .collect();
        assert_eq!(
            kinds,
            [
                (super::JobKind::Reservation, false),
                (super::JobKind::Train, false),
                (super::JobKind::Reservation, false)
            ]
        );
        assert_eq!(
            db.job("pgv/p3").unwrap().unwrap().train.map(|t| t.len()),
            Some(60_000)
        );
        let page = |tenants: Option<&[String]>, after: Option<&str>, limit| -> Vec<String> {
            let jobs = db.jobs_page(tenants, after, limit).unwrap();
            jobs.into_iter().map(|j| j.job.id).collect()
        };
        let pgv = ["pgv".to_string()];
        assert_eq!(page(Some(&pgv), None, 2), ["pgv/p1", "pgv/p3"]);
        assert_eq!(page(Some(&pgv), Some("pgv/p3"), 2), ["pgv/p4", "pgv/p6"]);
        assert!(page(Some(&pgv), Some("pgv/p6"), 2).is_empty());
        assert!(page(Some(&pgv), Some("pgv/zz"), 2).is_empty());
        let both = ["pgn".to_string(), "pgv".to_string()];
        assert_eq!(
            page(Some(&both), Some("pgv/p1"), 3),
            ["pgn/p2", "pgv/p3", "pgv/p4"]
        );
        let all = page(None, Some("pgv/p4"), 10);
        assert!(
            all.starts_with(&["pgn/p5".to_string(), "pgv/p6".to_string()]),
            "{all:?}"
        );
        assert!(page(Some(&["none".to_string()]), None, 10).is_empty());
    }

    /// A tenant's finished jobs beyond the newest to end are forgotten, whole, oldest end
    /// first and a bounded number at a time; its waiting and running jobs, the newest finished
    /// and other tenants' jobs stay.
    pub(crate) fn forgets_finished<S: JobStore>(db: &S) {
        // Submitted in this order, ended in another: a job submitted first ended last.
        for (id, state) in [
            ("fgv/long", JobState::Running),
            ("fgv/a", JobState::Failed),
            ("fgv/b", JobState::Cancelled),
            ("fgv/c", JobState::Succeeded),
            ("fgv/wait", JobState::Pending),
            ("fgn/other", JobState::Failed),
        ] {
            job_in(db, id, state);
        }
        db.log("fgv/a", "a's line").unwrap();
        db.add_checkpoint("fgv/a", 3, "obj-a").unwrap();
        db.set_placement(
            "fgv/a",
            Some(&super::Placement {
                node: "n".into(),
                attempt: 1,
            }),
        )
        .unwrap();
        db.set_curve("fgv/a", &crate::curve::Curve::default())
            .unwrap();
        db.transition("fgv/long", None, JobState::Succeeded, &[], None)
            .unwrap();
        db.add_checkpoint("fgv/c", 9, "obj-c").unwrap();
        assert_eq!(db.forget_checkpoints("fgv/c").unwrap(), ["obj-c"]);
        assert_eq!(db.latest_checkpoint("fgv/c").unwrap(), None);
        assert!(!db.checkpoint_uses("obj-c").unwrap());
        assert!(db.forget_checkpoints("fgv/c").unwrap().is_empty());
        // Models: ended jobs that name a checkpoint, in the order they ended; not a job still
        // waiting, nor another tenant's.
        db.add_checkpoint("fgv/long", 5, "obj-long").unwrap();
        db.add_checkpoint("fgv/wait", 1, "obj-wait").unwrap();
        db.add_checkpoint("fgn/other", 1, "obj-other").unwrap();
        assert_eq!(db.kept_models("fgv").unwrap(), ["fgv/a", "fgv/long"]);
        assert_eq!(db.kept_models("fgn").unwrap(), ["fgn/other"]);
        assert!(
            db.kept_models("fg").unwrap().is_empty(),
            "a tenant by its whole name"
        );
        let names =
            |db: &S| -> Vec<String> { db.jobs().unwrap().into_iter().map(|j| j.id).collect() };
        assert!(db.forget_finished("fgv", 4, 10).unwrap().is_empty());
        assert_eq!(
            db.forget_finished("fgv", 2, 1).unwrap(),
            [("fgv/a".to_string(), "obj-a".to_string())],
            "one at most"
        );
        assert!(!names(db).contains(&"fgv/a".to_string()));
        assert_eq!(db.job("fgv/a").unwrap(), None);
        assert!(db.logs("fgv/a").unwrap().is_empty());
        assert_eq!(db.latest_checkpoint("fgv/a").unwrap(), None);
        assert!(!db.checkpoint_uses("obj-a").unwrap());
        assert_eq!(db.placement("fgv/a").unwrap(), None);
        assert_eq!(db.curve("fgv/a").unwrap(), None);
        assert!(
            db.forget_finished("fgv", 2, 10).unwrap().is_empty(),
            "b had none"
        );
        let kept: Vec<String> = names(db)
            .into_iter()
            .filter(|n| n.starts_with("fg"))
            .collect();
        assert_eq!(kept, ["fgv/long", "fgv/c", "fgv/wait", "fgn/other"]);
        db.forget_finished("fgv", 0, 10).unwrap();
        assert!(db.kept_models("fgv").unwrap().is_empty());
        let kept: Vec<String> = names(db)
            .into_iter()
            .filter(|n| n.starts_with("fg"))
            .collect();
        assert_eq!(kept, ["fgv/wait", "fgn/other"], "the newest to end, last");
        // Its name is free again.
        assert!(db.insert_job(&job("fgv/a")).unwrap());
        assert!(db.logs("fgv/a").unwrap().is_empty());
    }

    /// A job's placement is kept, replaced and forgotten.
    pub(crate) fn placements<S: JobStore>(db: &S) {
        job_in(db, "vision/p", JobState::Running);
        assert_eq!(db.placement("vision/p").unwrap(), None);
        for (node, attempt) in [("node-a", 7), ("node-b", 8)] {
            let p = super::Placement {
                node: node.into(),
                attempt,
            };
            db.set_placement("vision/p", Some(&p)).unwrap();
            assert_eq!(db.placement("vision/p").unwrap(), Some(p));
        }
        db.set_placement("vision/p", None).unwrap();
        assert_eq!(db.placement("vision/p").unwrap(), None);
    }

    pub(crate) fn job_in<S: JobStore>(db: &S, id: &str, state: JobState) {
        use JobState::*;
        assert!(db.insert_job(&job(id)).unwrap());
        let path: &[JobState] = match state {
            Pending => &[],
            Scheduled => &[Scheduled],
            Running => &[Scheduled, Running],
            Cancelling => &[Scheduled, Cancelling],
            Succeeded => &[Scheduled, Running, Succeeded],
            Failed => &[Failed],
            Cancelled => &[Cancelled],
        };
        for to in path {
            db.transition(id, None, *to, &[], None).unwrap();
        }
        assert_eq!(db.job(id).unwrap().unwrap().state, state);
    }

    /// `db` keeps the lifecycle table: every legal move is made, every other refused.
    pub(crate) fn transition_table<S: JobStore>(db: &S) {
        for (i, from) in JobState::ALL.into_iter().enumerate() {
            for (j, to) in JobState::ALL.into_iter().enumerate() {
                let legal = LEGAL.contains(&(from, to));
                assert_eq!(from.may_become(to), legal, "{from:?} -> {to:?}");
                let id = format!("j{i}{j}");
                job_in(db, &id, from);
                match db.transition(&id, Some(from), to, &[], None) {
                    Ok(was) => assert!(legal && was == from, "{from:?} -> {to:?} was made"),
                    Err(TransitionError::Illegal { from: f, to: t, .. }) => {
                        assert!(!legal && (f, t) == (from, to), "{from:?} -> {to:?} refused")
                    }
                    Err(e) => panic!("{from:?} -> {to:?}: {e}"),
                }
                let stored = db.job(&id).unwrap().unwrap().state;
                assert_eq!(stored, if legal { to } else { from });
            }
        }
        for s in JobState::ALL.into_iter().filter(|s| s.is_final()) {
            assert!(JobState::ALL.iter().all(|t| !s.may_become(*t)), "{s:?}");
        }
    }

    pub(crate) fn terminal_is_final<S: JobStore>(db: &S) {
        use JobState::*;
        job_in(db, "j", Scheduled);
        assert_eq!(db.run_started("j").unwrap(), Scheduled);
        db.transition(
            "j",
            Some(Running),
            Cancelling,
            &["g0".into()],
            Some("by ada"),
        )
        .unwrap();
        db.transition("j", None, Cancelled, &[], Some("by ada"))
            .unwrap();
        let late = db.transition("j", Some(Running), Succeeded, &["g0".into()], None);
        assert!(
            matches!(
                &late,
                Err(TransitionError::Moved {
                    expected: Running,
                    now: Cancelled,
                    ..
                })
            ),
            "{late:?}"
        );
        let late = db.transition("j", None, Succeeded, &["g0".into()], None);
        assert!(
            matches!(
                &late,
                Err(TransitionError::Illegal {
                    from: Cancelled,
                    to: Succeeded,
                    ..
                })
            ),
            "{late:?}"
        );
        let again = db.run_started("j");
        assert!(
            matches!(&again, Err(TransitionError::Moved { .. })),
            "{again:?}"
        );
        let j = db.job("j").unwrap().unwrap();
        assert_eq!(
            (j.state, j.reason.as_deref(), j.crashes),
            (Cancelled, Some("by ada"), 1)
        );
        assert!(matches!(
            db.transition("nobody", None, Running, &[], None),
            Err(TransitionError::NoJob(_))
        ));
    }

    /// `db` keeps what it is given, in order: jobs in submission order (ids per tenant), their
    /// fields, logs in the order written, metrics, the newest checkpoint.
    /// Job `id`'s log, its messages only.
    fn messages<S: JobStore>(db: &S, id: &str) -> Vec<String> {
        db.logs(id).unwrap().into_iter().map(|l| l.1).collect()
    }

    /// Entries logged once by their key: kept once, in the order first written, per job.
    pub(crate) fn logs_once<S: JobStore>(db: &S) {
        assert!(db.insert_job(&job("vision/once")).unwrap());
        db.log("vision/once", "first").unwrap();
        for (key, line, added) in [
            ("7-a-1", "reported", true),
            ("7-a-1", "reported", false),
            ("7-a-2", "reported", true),
            ("8-a-1", "next attempt", true),
        ] {
            assert_eq!(
                db.log_once("vision/once", key, line).unwrap(),
                added,
                "{key}"
            );
        }
        db.log("vision/once", "last").unwrap();
        assert!(
            db.log_once("vision/other", "7-a-1", "another job's")
                .unwrap()
        );
        let lines = messages(db, "vision/once");
        assert_eq!(
            lines,
            ["first", "reported", "reported", "next attempt", "last"]
        );
    }

    pub(crate) fn records_logs_and_checkpoints<S: JobStore>(db: &S) {
        for id in ["vision/b", "vision/a", "nlp/a"] {
            assert!(db.insert_job(&job(id)).unwrap());
        }
        assert!(
            !db.insert_job(&job("vision/a")).unwrap(),
            "an id is taken once"
        );
        let ids: Vec<String> = db.jobs().unwrap().into_iter().map(|j| j.id).collect();
        assert_eq!(ids, ["vision/b", "vision/a", "nlp/a"]);
        let named: Vec<String> = db
            .jobs_named("a")
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(named, ["vision/a", "nlp/a"]);
        db.transition("nlp/a", None, JobState::Failed, &[], Some("bad"))
            .unwrap();
        assert_eq!(
            db.counts_by_state().unwrap(),
            [("failed".to_string(), 1), ("pending".to_string(), 2)]
        );
        db.transition(
            "vision/a",
            None,
            JobState::Scheduled,
            &["n/g1".into()],
            None,
        )
        .unwrap();
        assert_eq!(db.run_started("vision/a").unwrap(), JobState::Scheduled);
        assert_eq!(db.job("vision/a").unwrap().unwrap().crashes, 1);
        db.run_ended("vision/a").unwrap();
        db.set_not_before("vision/a", 42.5).unwrap();
        db.set_result("vision/a", &serde_json::json!({"loss": 0.25}))
            .unwrap();
        let a = db.job("vision/a").unwrap().unwrap();
        assert_eq!(
            (a.state, a.gpu_ids.as_slice(), a.crashes, a.not_before),
            (JobState::Running, &["n/g1".to_string()][..], 0, 42.5)
        );
        assert_eq!(a.result, Some(serde_json::json!({"loss": 0.25})));
        assert_eq!(
            db.job("nlp/a").unwrap().unwrap().reason.as_deref(),
            Some("bad")
        );
        assert_eq!(db.job("vision/zz").unwrap(), None);

        for i in 0..12 {
            db.log("vision/a", &format!("line {i}")).unwrap();
        }
        db.log("vision/ab", "another job's").unwrap();
        let lines = messages(db, "vision/a");
        assert_eq!(
            lines,
            (0..12).map(|i| format!("line {i}")).collect::<Vec<_>>()
        );

        assert_eq!(db.curve("vision/a").unwrap(), None);
        let mut curve = crate::curve::Curve::default();
        curve.rewind(0);
        db.set_curve("vision/a", &curve).unwrap();
        assert_eq!(db.curve("vision/a").unwrap(), Some(curve));

        assert_eq!(db.latest_checkpoint("vision/a").unwrap(), None);
        let mut forgotten = Vec::new();
        for step in [10, 200, 30] {
            forgotten.push(
                db.add_checkpoint("vision/a", step, &format!("obj{step}"))
                    .unwrap(),
            );
        }
        assert_eq!(
            db.latest_checkpoint("vision/a").unwrap(),
            Some((30, "obj30".to_string())),
            "the one recorded last"
        );
        assert_eq!(forgotten, [vec![], vec!["obj10"], vec!["obj200"]]);
        assert!(db.checkpoint_uses("obj30").unwrap());
        assert!(!db.checkpoint_uses("obj200").unwrap());
        db.add_checkpoint("vision/b", 5, "obj30").unwrap();
        assert_eq!(
            db.add_checkpoint("vision/a", 40, "obj30").unwrap(),
            Vec::<String>::new(),
            "an object the new checkpoint is stays"
        );
        assert_eq!(
            db.add_checkpoint("vision/a", 50, "obj50").unwrap(),
            ["obj30"],
            "another job's use of an object is the caller's to ask"
        );
        assert!(db.checkpoint_uses("obj30").unwrap());
    }

    /// Moves of one job raced from several threads: exactly one of the conflicting moves wins.
    pub(crate) fn racing_moves_have_one_winner<S: JobStore + Sync>(db: &S) {
        for round in 0..5 {
            let id = format!("vision/race{round}");
            job_in(db, &id, JobState::Scheduled);
            let wins = std::sync::atomic::AtomicU32::new(0);
            std::thread::scope(|s| {
                for t in 0..4 {
                    let (id, wins) = (&id, &wins);
                    s.spawn(move || {
                        let won = if t % 2 == 0 {
                            db.run_started(id).is_ok()
                        } else {
                            db.transition(
                                id,
                                Some(JobState::Scheduled),
                                JobState::Cancelling,
                                &[],
                                None,
                            )
                            .is_ok()
                        };
                        if won {
                            wins.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    });
                }
            });
            assert_eq!(wins.into_inner(), 1, "{id}");
        }
    }
}
