//! The job operations the daemon's lifecycle needs from its metadata store, as a trait: the
//! SQLite [`Db`] implements it today; a replicated store (etcd, issue 13) can implement it
//! later. Nothing in it names SQL: jobs are [`JobRecord`]s, failures the store's own error, and
//! every change of a job's state is a checked compare-and-set ([`JobStore::transition`]).

use super::db::{Db, DbError, JobRecord, JobState, TransitionError};

/// A store of jobs that owns their state.
pub trait JobStore: Send + Sync {
    /// The store's own failure (I/O, corruption, a lost connection).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Adds a new job in the state it carries; `false` if the id is taken.
    fn insert_job(&self, job: &JobRecord) -> Result<bool, Self::Error>;

    /// One job; `None` when there is no such job.
    fn job(&self, id: &str) -> Result<Option<JobRecord>, Self::Error>;

    /// Every job, in submission order.
    fn jobs(&self) -> Result<Vec<JobRecord>, Self::Error>;

    /// Moves job `id` to `to`, with its GPUs and why, if it is in `from` (`None`: any state)
    /// and may become `to` ([`JobState::may_become`]), as one compare-and-set; returns the state
    /// it moved from. A refused move changes nothing.
    fn transition(
        &self,
        id: &str,
        from: Option<JobState>,
        to: JobState,
        gpu_ids: &[String],
        reason: Option<&str>,
    ) -> Result<JobState, TransitionError<Self::Error>>;

    /// `scheduled` -> `running` as a run starts, counting the run against the job until
    /// [`JobStore::run_ended`] (a run a crash interrupts stays counted).
    fn run_started(&self, id: &str) -> Result<JobState, TransitionError<Self::Error>>;

    /// A run of job `id` ended without a crash of the daemon: it does not count as one.
    fn run_ended(&self, id: &str) -> Result<(), Self::Error>;

    /// Job `id` is not to be queued again before `at` (Unix seconds).
    fn set_not_before(&self, id: &str, at: f64) -> Result<(), Self::Error>;
}

impl JobStore for Db {
    type Error = DbError;

    fn insert_job(&self, job: &JobRecord) -> Result<bool, DbError> {
        Db::insert_job(self, job)
    }

    fn job(&self, id: &str) -> Result<Option<JobRecord>, DbError> {
        Db::job(self, id)
    }

    fn jobs(&self) -> Result<Vec<JobRecord>, DbError> {
        Db::jobs(self)
    }

    fn transition(
        &self,
        id: &str,
        from: Option<JobState>,
        to: JobState,
        gpu_ids: &[String],
        reason: Option<&str>,
    ) -> Result<JobState, TransitionError> {
        Db::transition(self, id, from, to, gpu_ids, reason)
    }

    fn run_started(&self, id: &str) -> Result<JobState, TransitionError> {
        Db::run_started(self, id)
    }

    fn run_ended(&self, id: &str) -> Result<(), DbError> {
        Db::run_ended(self, id)
    }

    fn set_not_before(&self, id: &str, at: f64) -> Result<(), DbError> {
        Db::set_not_before(self, id, at)
    }
}
