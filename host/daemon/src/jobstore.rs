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

    /// Job `id`'s log: `(unix seconds, message)`, oldest first.
    fn logs(&self, id: &str) -> Result<Vec<(f64, String)>, Self::Error>;

    /// Records a training job's outcome.
    fn set_result(&self, id: &str, result: &serde_json::Value) -> Result<(), Self::Error>;

    /// Saves job `id`'s training metrics (replacing earlier ones).
    fn set_curve(&self, id: &str, curve: &Curve) -> Result<(), Self::Error>;

    /// Job `id`'s saved training metrics.
    fn curve(&self, id: &str) -> Result<Option<Curve>, Self::Error>;

    /// Records a checkpoint of `job` after `step` steps, stored as `object`.
    fn add_checkpoint(&self, job: &str, step: u32, object: &str) -> Result<(), Self::Error>;

    /// The newest checkpoint of `job`: `(step, object)`.
    fn latest_checkpoint(&self, job: &str) -> Result<Option<(u32, String)>, Self::Error>;
}
