//! The daemon's metadata: users and their tokens, and jobs, in SQLite (WAL journal, full sync:
//! a job the API accepted survives a `kill -9` or a power cut).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// A database failure, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("database {context}: {source}")]
pub struct DbError {
    context: String,
    #[source]
    source: rusqlite::Error,
}

trait Context<T> {
    fn ctx(self, context: &str) -> Result<T, DbError>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn ctx(self, context: &str) -> Result<T, DbError> {
        self.map_err(|source| DbError {
            context: context.to_string(),
            source,
        })
    }
}

/// A user: who they are to the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user's name.
    pub name: String,
    /// Roles (`researcher`, `admin`, ...).
    pub roles: Vec<String>,
    /// Tenants the user belongs to.
    pub tenants: Vec<String>,
    /// Highest dataset classification the user may read (`public`, `internal`, ...).
    #[serde(default = "public")]
    pub clearance: String,
}

fn public() -> String {
    "public".into()
}

impl User {
    /// The policy's `subject`.
    pub fn subject(&self) -> serde_json::Value {
        serde_json::json!({"user": self.name, "roles": self.roles, "tenants": self.tenants,
                           "clearance": self.clearance})
    }

    /// Whether the user holds the admin role.
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }
}

/// A job's lifecycle. The legal moves are [`JobState::predecessors`], enforced by
/// [`Db::transition`] in the database itself: nothing else changes a job's state.
///
/// ```text
///            +------------- requeue (GPU lost, daemon restart) -------------+
///            v                                                              |
/// Pending --> Scheduled --> Running --> Succeeded | Failed                  |
///    |            |            |                                            |
///    |            +------------+--> Cancelling --> Cancelled  (run stops)   |
///    +------------+-----------------------------> Cancelled  (no run)       |
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Accepted, waiting for GPUs.
    Pending,
    /// GPUs assigned.
    Scheduled,
    /// Training.
    Running,
    /// A cancel was asked while its run was under way: it keeps its GPUs until the run stops,
    /// at its next step.
    Cancelling,
    /// Finished.
    Succeeded,
    /// Stopped by an error.
    Failed,
    /// Stopped by a user.
    Cancelled,
}

impl JobState {
    /// Every state, for listings and tests.
    pub const ALL: [JobState; 7] = [
        JobState::Pending,
        JobState::Scheduled,
        JobState::Running,
        JobState::Cancelling,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The name stored in the database and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Cancelling => "cancelling",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The state named `s`; `None` for a name no version of Gantry writes (a corrupt row).
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// The states a job may move to `self` from: the whole lifecycle in one table. Terminal
    /// states have no successor, so a finished, failed or cancelled job stays so.
    pub fn predecessors(self) -> &'static [JobState] {
        use JobState::*;
        match self {
            // Requeued: its GPUs were lost, or the daemon restarted under it.
            Pending => &[Scheduled, Running],
            Scheduled => &[Pending],
            Running => &[Scheduled],
            Cancelling => &[Scheduled, Running],
            Succeeded => &[Running],
            Failed => &[Pending, Scheduled, Running],
            Cancelled => &[Pending, Scheduled, Cancelling],
        }
    }

    /// Whether a job may move from `self` to `next`.
    pub fn may_become(self, next: JobState) -> bool {
        next.predecessors().contains(&self)
    }

    /// Whether the job is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// Whether a job in this state holds GPUs.
    pub fn holds_gpus(self) -> bool {
        matches!(
            self,
            JobState::Scheduled | JobState::Running | JobState::Cancelling
        )
    }
}

/// A job as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Unique id.
    pub id: String,
    /// The tenant whose queue and quota it uses.
    pub tenant: String,
    /// Who submitted it.
    pub owner: String,
    /// GPUs asked for.
    pub gpus: u32,
    /// Memory per GPU, MiB.
    pub memory_per_gpu_mib: u64,
    /// Estimated runtime, seconds.
    pub est_runtime_s: f64,
    /// Where it is in its life.
    pub state: JobState,
    /// GPU ids, once scheduled.
    pub gpu_ids: Vec<String>,
    /// Why it failed or was cancelled.
    pub reason: Option<String>,
    /// Unix seconds of submission.
    pub submitted_at: f64,
    /// The training job (`TRAIN.toml` text), if it trains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<String>,
    /// What training reported (loss, accuracy, steps, throughput), once it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Runs of it that a crash of the daemon interrupted (see [`MAX_CRASHES`]).
    #[serde(default)]
    pub crashes: u32,
    /// Unix seconds before which it is not queued again (a backoff after a crash).
    #[serde(default)]
    pub not_before: f64,
}

/// A job whose runs were interrupted by this many crashes of the daemon is not run again: it
/// ends `failed`, so a job that brings the daemon down cannot do so for ever.
pub const MAX_CRASHES: u32 = 3;

/// A stored dataset: its metadata; the bytes are an object of the encrypted store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRecord {
    /// Unique name.
    pub name: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// `public`, `internal`, `confidential` or `secret` (the policy's levels).
    pub classification: String,
    /// The store object holding it.
    pub object: String,
    /// Its size.
    pub bytes: u64,
    /// Who uploaded it.
    pub owner: String,
    /// Unix seconds.
    pub created_at: f64,
}

impl DatasetRecord {
    /// The policy's `resource` for this dataset.
    pub fn resource(&self) -> serde_json::Value {
        serde_json::json!({"name": self.name, "classification": self.classification,
                           "tenant": self.tenant})
    }
}

/// A plugin uploaded through the API: its manifest, and its component as a store object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginRecord {
    /// The name it is loaded by (the manifest's `name`).
    pub name: String,
    /// `scheduler` or `preprocess` (the manifest's `kind`).
    pub kind: String,
    /// The manifest's `version`.
    pub version: String,
    /// The manifest's text.
    #[serde(skip)]
    pub manifest: String,
    /// The store object holding the component (its SHA-256).
    pub object: String,
    /// Its `plugin.sig`, if it came with one.
    pub signature: Option<crate::plugin::signature::PluginSignature>,
    /// Who uploaded it.
    pub owner: String,
    /// Unix seconds.
    pub created_at: f64,
}

/// A token as stored: never the token itself.
#[derive(Debug, Clone)]
pub struct StoredToken {
    /// Random salt.
    pub salt: Vec<u8>,
    /// SHA-256 of the salt and the token's secret.
    pub hash: Vec<u8>,
    /// Whose it is.
    pub user: User,
}

/// The database, shared by the API's handlers.
pub struct Db {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Db")
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    roles TEXT NOT NULL,
    tenants TEXT NOT NULL,
    clearance TEXT NOT NULL DEFAULT 'public'
);
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    classification TEXT NOT NULL,
    object TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name),
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    owner TEXT NOT NULL,
    gpus INTEGER NOT NULL,
    memory_per_gpu_mib INTEGER NOT NULL,
    est_runtime_s REAL NOT NULL,
    state TEXT NOT NULL,
    gpu_ids TEXT NOT NULL DEFAULT '[]',
    reason TEXT,
    submitted_at REAL NOT NULL,
    seq INTEGER NOT NULL,
    train TEXT,
    result TEXT
);
CREATE TABLE IF NOT EXISTS job_events (
    job TEXT NOT NULL,
    at REAL NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_events_by_job ON job_events(job);
CREATE TABLE IF NOT EXISTS checkpoints (
    job TEXT NOT NULL REFERENCES jobs(id),
    step INTEGER NOT NULL,
    object TEXT NOT NULL,
    PRIMARY KEY (job, step)
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state);
CREATE TABLE IF NOT EXISTS plugins (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    version TEXT NOT NULL,
    manifest TEXT NOT NULL,
    object TEXT NOT NULL,
    signature TEXT,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS job_curves (
    job TEXT PRIMARY KEY REFERENCES jobs(id),
    curve TEXT NOT NULL
);
";

/// Changes to [`SCHEMA`] since it was first released, in order. `PRAGMA user_version` counts
/// those applied, so a database made by an earlier version is brought up to date at open, in
/// one transaction. Append only; never edit a released step.
const MIGRATIONS: &[&str] = &[
    // 1: crash accounting of jobs.
    "ALTER TABLE jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE jobs ADD COLUMN not_before REAL NOT NULL DEFAULT 0;",
];

impl Db {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let conn = Connection::open(path).ctx(&format!("opening {}", path.display()))?;
        // WAL lets the CLI read while the daemon writes; FULL sync makes each commit durable.
        conn.pragma_update(None, "journal_mode", "WAL")
            .ctx("enabling WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")
            .ctx("setting synchronous")?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .ctx("enabling foreign keys")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .ctx("setting the busy timeout")?;
        conn.execute_batch(SCHEMA).ctx("creating the schema")?;
        migrate(&conn)?;
        Ok(Db {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds (or replaces) a user.
    pub fn put_user(&self, user: &User) -> Result<(), DbError> {
        self.conn()
            .execute(
                "INSERT INTO users(name, roles, tenants, clearance) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO UPDATE SET roles = ?2, tenants = ?3, clearance = ?4",
                params![
                    user.name,
                    serde_json::to_string(&user.roles).expect("strings serialise"),
                    serde_json::to_string(&user.tenants).expect("strings serialise"),
                    user.clearance,
                ],
            )
            .ctx("adding a user")?;
        Ok(())
    }

    /// Stores a token's salted hash for `user`.
    pub fn put_token(&self, id: &str, user: &str, salt: &[u8], hash: &[u8]) -> Result<(), DbError> {
        self.conn()
            .execute(
                "INSERT INTO tokens(id, user, salt, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, user, salt, hash, now()],
            )
            .ctx("storing a token")?;
        Ok(())
    }

    /// A token's salt, hash and user.
    pub fn token(&self, id: &str) -> Result<Option<StoredToken>, DbError> {
        let conn = self.conn();
        conn.query_row(
            "SELECT t.salt, t.hash, u.name, u.roles, u.tenants, u.clearance
             FROM tokens t JOIN users u ON u.name = t.user WHERE t.id = ?1",
            params![id],
            |r| {
                let roles: String = r.get(3)?;
                let tenants: String = r.get(4)?;
                Ok(StoredToken {
                    salt: r.get(0)?,
                    hash: r.get(1)?,
                    user: User {
                        name: r.get(2)?,
                        roles: serde_json::from_str(&roles).unwrap_or_default(),
                        tenants: serde_json::from_str(&tenants).unwrap_or_default(),
                        clearance: r.get(5)?,
                    },
                })
            },
        )
        .optional()
        .ctx("looking up a token")
    }

    /// Inserts a new job; `false` if the id is taken.
    pub fn insert_job(&self, job: &JobRecord) -> Result<bool, DbError> {
        let conn = self.conn();
        let n = conn
            .execute(
                "INSERT OR IGNORE INTO jobs(id, tenant, owner, gpus, memory_per_gpu_mib,
                   est_runtime_s, state, gpu_ids, reason, submitted_at, seq, train)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
                   (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), ?11)",
                params![
                    job.id,
                    job.tenant,
                    job.owner,
                    job.gpus,
                    job.memory_per_gpu_mib as i64,
                    job.est_runtime_s,
                    job.state.as_str(),
                    serde_json::to_string(&job.gpu_ids).expect("strings serialise"),
                    job.reason,
                    job.submitted_at,
                    job.train,
                ],
            )
            .ctx("inserting a job")?;
        Ok(n == 1)
    }

    /// Moves job `id` to `to` (with its GPUs, and why), if its current state allows it
    /// ([`JobState::predecessors`]); returns whether it moved. The check and the change are one
    /// statement, so two racing changes (a cancel and the end of a run, say) cannot both win.
    pub fn transition(
        &self,
        id: &str,
        to: JobState,
        gpu_ids: &[String],
        reason: Option<&str>,
    ) -> Result<bool, DbError> {
        let from: Vec<String> = to
            .predecessors()
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        let n = self
            .conn()
            .execute(
                &format!(
                    "UPDATE jobs SET state = ?2, gpu_ids = ?3, reason = ?4
                     WHERE id = ?1 AND state IN ({})",
                    from.join(", ")
                ),
                params![
                    id,
                    to.as_str(),
                    serde_json::to_string(gpu_ids).expect("strings serialise"),
                    reason
                ],
            )
            .ctx("updating a job's state")?;
        Ok(n == 1)
    }

    /// Moves a scheduled job to `running` and counts the run against it (the count is
    /// cleared when the run ends without a crash, see [`Db::run_ended`]); false when the job is
    /// no longer `scheduled` (a cancel won the race).
    pub fn run_started(&self, id: &str) -> Result<bool, DbError> {
        let n = self
            .conn()
            .execute(
                "UPDATE jobs SET state = 'running', crashes = crashes + 1
                 WHERE id = ?1 AND state = 'scheduled'",
                params![id],
            )
            .ctx("starting a job's run")?;
        Ok(n == 1)
    }

    /// A run of job `id` ended without a crash of the daemon: it does not count as one.
    pub fn run_ended(&self, id: &str) -> Result<(), DbError> {
        self.conn()
            .execute(
                "UPDATE jobs SET crashes = MAX(crashes - 1, 0) WHERE id = ?1",
                params![id],
            )
            .ctx("ending a job's run")?;
        Ok(())
    }

    /// Job `id` is not to be queued again before `at` (Unix seconds).
    pub fn set_not_before(&self, id: &str, at: f64) -> Result<(), DbError> {
        self.conn()
            .execute(
                "UPDATE jobs SET not_before = ?2 WHERE id = ?1",
                params![id, at],
            )
            .ctx("deferring a job")?;
        Ok(())
    }

    /// Appends a line to job `id`'s log.
    pub fn log(&self, id: &str, message: &str) -> Result<(), DbError> {
        self.conn()
            .execute(
                "INSERT INTO job_events(job, at, message) VALUES (?1, ?2, ?3)",
                params![id, now(), message],
            )
            .ctx("writing a job's log")?;
        Ok(())
    }

    /// Job `id`'s log: `(unix seconds, message)`, oldest first.
    pub fn logs(&self, id: &str) -> Result<Vec<(f64, String)>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT at, message FROM job_events WHERE job = ?1 ORDER BY rowid")
            .ctx("reading a job's log")?;
        let rows = stmt
            .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
            .ctx("reading a job's log")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("reading a job's log")
    }

    /// Records a training job's outcome.
    pub fn set_result(&self, id: &str, result: &serde_json::Value) -> Result<(), DbError> {
        self.conn()
            .execute(
                "UPDATE jobs SET result = ?2 WHERE id = ?1",
                params![id, result.to_string()],
            )
            .ctx("recording a result")?;
        Ok(())
    }

    /// Saves job `id`'s training metrics (replacing earlier ones).
    pub fn set_curve(&self, id: &str, curve: &super::curve::Curve) -> Result<(), DbError> {
        let text = serde_json::to_string(curve).unwrap_or_default();
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO job_curves(job, curve) VALUES (?1, ?2)",
                params![id, text],
            )
            .ctx("saving a job's metrics")?;
        Ok(())
    }

    /// Job `id`'s saved training metrics.
    pub fn curve(&self, id: &str) -> Result<Option<super::curve::Curve>, DbError> {
        let text: Option<String> = self
            .conn()
            .query_row(
                "SELECT curve FROM job_curves WHERE job = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()
            .ctx("reading a job's metrics")?;
        // A curve this version cannot read is shown as none rather than failing the job.
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Records a checkpoint of `job` after `step` steps, stored as `object`.
    pub fn add_checkpoint(&self, job: &str, step: u32, object: &str) -> Result<(), DbError> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO checkpoints(job, step, object) VALUES (?1, ?2, ?3)",
                params![job, step, object],
            )
            .ctx("recording a checkpoint")?;
        Ok(())
    }

    /// The newest checkpoint of `job`: `(step, object)`.
    pub fn latest_checkpoint(&self, job: &str) -> Result<Option<(u32, String)>, DbError> {
        self.conn()
            .query_row(
                "SELECT step, object FROM checkpoints WHERE job = ?1 ORDER BY step DESC LIMIT 1",
                params![job],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .ctx("reading checkpoints")
    }

    /// Adds a dataset; `false` if the name is taken.
    pub fn insert_dataset(&self, d: &DatasetRecord) -> Result<bool, DbError> {
        let n = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO datasets(name, tenant, classification, object, bytes, owner,
                   created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    d.name,
                    d.tenant,
                    d.classification,
                    d.object,
                    d.bytes as i64,
                    d.owner,
                    d.created_at
                ],
            )
            .ctx("adding a dataset")?;
        Ok(n == 1)
    }

    /// Every dataset, by name.
    pub fn datasets(&self) -> Result<Vec<DatasetRecord>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!("{SELECT_DATASET} ORDER BY name"))
            .ctx("listing datasets")?;
        let rows = stmt.query_map([], row_to_dataset).ctx("listing datasets")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("listing datasets")
    }

    /// The dataset called `name`.
    pub fn dataset(&self, name: &str) -> Result<Option<DatasetRecord>, DbError> {
        self.conn()
            .query_row(
                &format!("{SELECT_DATASET} WHERE name = ?1"),
                params![name],
                row_to_dataset,
            )
            .optional()
            .ctx("reading a dataset")
    }

    /// Adds or replaces the uploaded plugin `p.name`.
    pub fn put_plugin(&self, p: &PluginRecord) -> Result<(), DbError> {
        let signature = p
            .signature
            .as_ref()
            .map(|s| serde_json::to_string(s).unwrap_or_default());
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO plugins(name, version, manifest, object, signature, owner,
                   created_at, kind) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    p.name,
                    p.version,
                    p.manifest,
                    p.object,
                    signature,
                    p.owner,
                    p.created_at,
                    p.kind
                ],
            )
            .ctx("recording a plugin")?;
        Ok(())
    }

    /// Uploaded plugins, by name; with `name`, only that one.
    pub fn plugins(&self, name: Option<&str>) -> Result<Vec<PluginRecord>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT name, version, manifest, object, signature, owner, created_at, kind FROM plugins
                 WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
            )
            .ctx("listing plugins")?;
        let rows = stmt
            .query_map(params![name], |r| {
                let signature: Option<String> = r.get(4)?;
                Ok(PluginRecord {
                    name: r.get(0)?,
                    version: r.get(1)?,
                    manifest: r.get(2)?,
                    object: r.get(3)?,
                    signature: signature.and_then(|s| serde_json::from_str(&s).ok()),
                    owner: r.get(5)?,
                    created_at: r.get(6)?,
                    kind: r.get(7)?,
                })
            })
            .ctx("listing plugins")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("listing plugins")
    }

    /// A daemon setting (the active scheduler plugin, say).
    pub fn setting(&self, key: &str) -> Result<Option<String>, DbError> {
        self.conn()
            .query_row(
                "SELECT value FROM settings WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .ctx("reading a setting")
    }

    /// Sets a daemon setting.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), DbError> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO settings(key, value) VALUES (?1, ?2)",
                params![key, value],
            )
            .ctx("writing a setting")?;
        Ok(())
    }

    /// How many jobs are in each state.
    pub fn counts_by_state(&self) -> Result<Vec<(String, u64)>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")
            .ctx("counting jobs")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .ctx("counting jobs")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("counting jobs")
    }

    /// One job.
    pub fn job(&self, id: &str) -> Result<Option<JobRecord>, DbError> {
        let conn = self.conn();
        conn.query_row(
            &format!("{SELECT_JOB} WHERE id = ?1"),
            params![id],
            row_to_job,
        )
        .optional()
        .ctx("reading a job")
    }

    /// Every job, in submission order.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!("{SELECT_JOB} ORDER BY seq"))
            .ctx("listing jobs")?;
        let rows = stmt.query_map([], row_to_job).ctx("listing jobs")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("listing jobs")
    }
}

/// Applies the [`MIGRATIONS`] a database has not had yet.
fn migrate(conn: &Connection) -> Result<(), DbError> {
    let applied: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .ctx("reading the schema version")?;
    let applied = usize::try_from(applied).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        return Err(DbError {
            context: format!(
                "opening a database of schema version {applied}: this build knows versions up to {}; use a newer gantry",
                MIGRATIONS.len()
            ),
            source: rusqlite::Error::InvalidQuery,
        });
    }
    if applied == MIGRATIONS.len() {
        return Ok(());
    }
    let mut batch = String::from("BEGIN IMMEDIATE;\n");
    for step in &MIGRATIONS[applied..] {
        batch.push_str(step);
        batch.push('\n');
    }
    batch.push_str(&format!(
        "PRAGMA user_version = {};\nCOMMIT;",
        MIGRATIONS.len()
    ));
    conn.execute_batch(&batch)
        .ctx("bringing the schema up to date")
}

const SELECT_DATASET: &str =
    "SELECT name, tenant, classification, object, bytes, owner, created_at FROM datasets";

fn row_to_dataset(r: &rusqlite::Row<'_>) -> rusqlite::Result<DatasetRecord> {
    Ok(DatasetRecord {
        name: r.get(0)?,
        tenant: r.get(1)?,
        classification: r.get(2)?,
        object: r.get(3)?,
        bytes: r.get::<_, i64>(4)? as u64,
        owner: r.get(5)?,
        created_at: r.get(6)?,
    })
}

const SELECT_JOB: &str = "SELECT id, tenant, owner, gpus, memory_per_gpu_mib, est_runtime_s, state,
    gpu_ids, reason, submitted_at, train, result, crashes, not_before FROM jobs";

fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    let state: String = r.get(6)?;
    // An unknown state is a corrupt row, never a default: read as "pending", a finished job
    // would run again and hold GPUs.
    let state = JobState::parse(&state).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            6,
            rusqlite::types::Type::Text,
            format!(
                "jobs.state of `{}`: `{state}` is not a job state",
                r.get::<_, String>(0).unwrap_or_default()
            )
            .into(),
        )
    })?;
    let gpu_ids: String = r.get(7)?;
    Ok(JobRecord {
        id: r.get(0)?,
        tenant: r.get(1)?,
        owner: r.get(2)?,
        gpus: r.get(3)?,
        memory_per_gpu_mib: r.get::<_, i64>(4)? as u64,
        est_runtime_s: r.get(5)?,
        state,
        gpu_ids: serde_json::from_str(&gpu_ids).unwrap_or_default(),
        reason: r.get(8)?,
        submitted_at: r.get(9)?,
        train: r.get(10)?,
        result: r
            .get::<_, Option<String>>(11)?
            .and_then(|t| serde_json::from_str(&t).ok()),
        crashes: r.get(12)?,
        not_before: r.get(13)?,
    })
}

/// Unix time in seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
