//! The daemon's metadata: users and their tokens, and jobs, in SQLite (WAL journal, full sync:
//! a job the API accepted survives a `kill -9` or a power cut).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use gantry::audit::Head;

use super::jobstore::{JobKind, JobStore, Listed, Placement};

pub(crate) mod rowmac;
use rowmac::{Checkpoint, Covered, Placed, RowMac, Setting, Submitted, TokenRow};

/// A database failure, naming what was being done, or the table, row and column of a stored
/// value that does not read (corruption is an error, never a default).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed.
    #[error("database {context}: {source}")]
    Sqlite {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored value this version cannot read: corruption, or a change outside Gantry.
    #[error("database {context}: {bad}")]
    Corrupt {
        /// What was being done.
        context: String,
        /// Where, and what is wrong.
        bad: BadValue,
    },
    /// SQLite's own integrity check failed.
    #[error(
        "{}: SQLite's integrity check failed: {detail}; restore a backup (`gantry db restore`)",
        path.display()
    )]
    Integrity {
        /// The database file.
        path: PathBuf,
        /// What `PRAGMA quick_check` said (its first lines).
        detail: String,
    },
    /// The database is not there (only a data directory's first opening creates it).
    #[error(
        "{}: no such database{why}; restore a backup (`gantry db restore --data-dir DIR BACKUP`) \
         (a `gantry.db.damaged-*` beside it may be the one an interrupted restore set aside)",
        path.display()
    )]
    Missing {
        /// The database file.
        path: PathBuf,
        /// What says there was one (", but ..."), or nothing.
        why: String,
    },
}

impl DbError {
    /// Whether a user or token row does not verify under the key file
    /// ([`Db::authenticate_rows`]).
    pub fn unauthenticated(&self) -> bool {
        matches!(self, DbError::Corrupt { bad, .. } if bad.column == "mac")
    }
}

/// Why a job did not move ([`JobStore::transition`]); `E`
/// is the store's own failure.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError<E = DbError> {
    /// The lifecycle has no such move ([`JobState::may_become`]): a finished, failed or
    /// cancelled job, say, never becomes anything else.
    #[error("job `{id}` is {}: it cannot become {}", .from.as_str(), .to.as_str())]
    Illegal {
        /// The job.
        id: String,
        /// The state it is in.
        from: JobState,
        /// The state asked for.
        to: JobState,
    },
    /// The job is no longer in the state the caller saw: someone else moved it first.
    #[error("job `{id}` is {}, not {}", .now.as_str(), .expected.as_str())]
    Moved {
        /// The job.
        id: String,
        /// The state the caller saw.
        expected: JobState,
        /// The state it is in.
        now: JobState,
    },
    /// There is no such job.
    #[error("no job `{0}`")]
    NoJob(String),
    /// The store failed.
    #[error(transparent)]
    Db(#[from] E),
}

impl<E> TransitionError<E> {
    /// The same refusal, with the store's failure as a wider error.
    pub fn widen<F: From<E>>(self) -> TransitionError<F> {
        match self {
            TransitionError::Illegal { id, from, to } => TransitionError::Illegal { id, from, to },
            TransitionError::Moved { id, expected, now } => {
                TransitionError::Moved { id, expected, now }
            }
            TransitionError::NoJob(id) => TransitionError::NoJob(id),
            TransitionError::Db(e) => TransitionError::Db(e.into()),
        }
    }

    /// The database failure, if that is why; `None` when the job was in no state to move (a
    /// refusal the caller may expect: a race it lost, or a job that is over).
    pub fn into_db(self) -> Option<E> {
        match self {
            TransitionError::Db(e) => Some(e),
            _ => None,
        }
    }
}

/// A stored value that does not read: its table, row and column, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("table {table}, row {row}, column {column}: {problem}")]
pub struct BadValue {
    /// The table.
    pub table: &'static str,
    /// The row's key.
    pub row: String,
    /// The column.
    pub column: &'static str,
    /// What is wrong with the value.
    pub problem: String,
}

impl BadValue {
    /// As the error a row mapper returns (turned back into [`DbError::Corrupt`] by `ctx`).
    fn into_sqlite(self) -> rusqlite::Error {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(self))
    }
}

trait Context<T> {
    fn ctx(self, context: &str) -> Result<T, DbError>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn ctx(self, context: &str) -> Result<T, DbError> {
        self.map_err(|source| {
            if let rusqlite::Error::FromSqlConversionFailure(_, _, e) = &source
                && let Some(bad) = e.downcast_ref::<BadValue>()
            {
                return DbError::Corrupt {
                    context: context.to_string(),
                    bad: bad.clone(),
                };
            }
            DbError::Sqlite {
                context: context.to_string(),
                source,
            }
        })
    }
}

/// Column `idx` of `r`, a JSON text, parsed; a value that does not parse is a [`BadValue`].
fn json_column<T: serde::de::DeserializeOwned>(
    r: &rusqlite::Row<'_>,
    idx: usize,
    table: &'static str,
    row: &str,
    column: &'static str,
) -> rusqlite::Result<T> {
    let text: String = r.get(idx)?;
    serde_json::from_str(&text).map_err(|e| {
        BadValue {
            table,
            row: row.to_string(),
            column,
            problem: format!("not the JSON this version writes ({e})"),
        }
        .into_sqlite()
    })
}

/// Column `idx` of `r`, an integer that must not be negative.
fn count_column(
    r: &rusqlite::Row<'_>,
    idx: usize,
    table: &'static str,
    row: &str,
    column: &'static str,
) -> rusqlite::Result<u64> {
    let v: i64 = r.get(idx)?;
    u64::try_from(v).map_err(|_| {
        BadValue {
            table,
            row: row.to_string(),
            column,
            problem: format!("{v} is negative"),
        }
        .into_sqlite()
    })
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
    pub fn subject(&self) -> gantry::policy::Subject {
        gantry::policy::Subject::new(&self.name, &self.roles)
            .in_tenants(&self.tenants)
            .cleared_for(&self.clearance)
    }

    /// Whether the user holds the admin role.
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }
}

/// A job's lifecycle. The legal moves are [`JobState::predecessors`], enforced by
/// [`JobStore::transition`] (and [`JobStore::run_started`], the same check) as a compare-and-set in the
/// database: nothing else changes a stored job's state.
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
    /// Its key: `tenant/name` ([`key`]). Ids are per tenant, so another tenant's job of the same
    /// name is another job; the API shows (serializes) the name only.
    #[serde(serialize_with = "as_name")]
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
    /// The program it runs, if it is a command job ([`crate::command`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<crate::command::CommandSpec>,
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

/// The stored key of a job or dataset `name` of `tenant`. Names are per tenant: the same name in
/// two tenants is two jobs (or datasets), and neither tenant learns of the other's.
pub fn key(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

/// The name part of a [`key`] (names never hold `/`).
pub fn name_of(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(_, name)| name)
}

/// The tenant part of a [`key`].
pub fn tenant_of(key: &str) -> &str {
    key.split_once('/').map_or("", |(tenant, _)| tenant)
}

fn as_name<S: serde::Serializer>(key: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name_of(key))
}

/// A job whose runs were interrupted by this many crashes of the daemon is not run again: it
/// ends `failed`, so a job that brings the daemon down cannot do so for ever.
pub const MAX_CRASHES: u32 = 3;

/// A stored dataset: its metadata; the bytes are an object of the encrypted store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRecord {
    /// Its key: `tenant/name` ([`key`]), names being per tenant; the API shows the name only.
    #[serde(serialize_with = "as_name")]
    pub name: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// `public`, `internal`, `confidential` or `secret` (the policy's levels).
    pub classification: String,
    /// The store object holding it: the SHA-256 of its bytes, so the API shows it only to the
    /// dataset's uploader (empty, and left out, in what others see: an unsalted hash of a
    /// dataset above one's clearance confirms a guess of its content).
    #[serde(default, skip_serializing_if = "String::is_empty")]
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
    pub fn resource(&self) -> gantry::policy::request::DatasetRef {
        gantry::policy::request::DatasetRef {
            name: name_of(&self.name).to_string(),
            classification: self.classification.clone(),
            tenant: self.tenant.clone(),
        }
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
    pub signature: Option<gantry::plugin::signature::PluginSignature>,
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
    /// Unix seconds after which it is refused (none: it does not expire).
    pub expires_at: Option<f64>,
    /// Unix seconds when it was revoked.
    pub revoked_at: Option<f64>,
}

/// What `gantry user tokens` shows of a token: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenInfo {
    /// The token's id (the part after `gantry_`).
    pub id: String,
    /// Whose it is.
    pub user: String,
    /// Unix seconds.
    pub created_at: f64,
    /// Unix seconds after which it is refused.
    pub expires_at: Option<f64>,
    /// Unix seconds when it was revoked.
    pub revoked_at: Option<f64>,
}

/// A GPU's health as an admin set it (`POST /v1/gpus/unhealthy`), applied at every start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuHealth {
    /// The GPU's id.
    pub gpu: String,
    /// Whether it is in service.
    pub healthy: bool,
    /// Who changed it.
    pub by: String,
    /// Unix seconds.
    pub at: f64,
}

/// The database, shared by the API's handlers.
pub struct Db {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Set where a key file is in use: every row that decides access, what runs or where it
    /// runs is written with a MAC and read only when its MAC verifies ([`Db::authenticate_rows`]).
    rows: std::sync::OnceLock<RowMac>,
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
CREATE INDEX IF NOT EXISTS checkpoints_by_object ON checkpoints(object);
CREATE INDEX IF NOT EXISTS datasets_by_object ON datasets(object);
CREATE INDEX IF NOT EXISTS datasets_by_tenant ON datasets(tenant);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_by_seq ON jobs(seq);
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs(tenant, seq);
-- By name, whatever the tenant (a key is `tenant/name`): a lookup by name scanned every job.
CREATE INDEX IF NOT EXISTS jobs_by_name ON jobs(substr(id, instr(id, '/') + 1));
CREATE INDEX IF NOT EXISTS datasets_by_name ON datasets(substr(name, instr(name, '/') + 1));
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
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    closed INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS gpu_health (
    gpu TEXT PRIMARY KEY,
    healthy INTEGER NOT NULL,
    changed_by TEXT NOT NULL,
    changed_at REAL NOT NULL
);
";

/// Changes to [`SCHEMA`] since it was first released, in order. `PRAGMA user_version` counts
/// those applied, so a database made by an earlier version is brought up to date at open, in
/// one transaction. Append only; never edit a released step.
const MIGRATIONS: &[&str] = &[
    // 1: crash accounting of jobs.
    "ALTER TABLE jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE jobs ADD COLUMN not_before REAL NOT NULL DEFAULT 0;",
    // 2: token expiry and revocation.
    "ALTER TABLE tokens ADD COLUMN expires_at REAL;
     ALTER TABLE tokens ADD COLUMN revoked_at REAL;",
    // 3: job ids and dataset names are per tenant: the stored key is `tenant/name`.
    "PRAGMA defer_foreign_keys = ON;
     UPDATE job_events SET job = (SELECT tenant || '/' || id FROM jobs WHERE jobs.id = job_events.job)
       WHERE job IN (SELECT id FROM jobs);
     UPDATE checkpoints SET job = (SELECT tenant || '/' || id FROM jobs WHERE jobs.id = checkpoints.job)
       WHERE job IN (SELECT id FROM jobs);
     UPDATE job_curves SET job = (SELECT tenant || '/' || id FROM jobs WHERE jobs.id = job_curves.job)
       WHERE job IN (SELECT id FROM jobs);
     UPDATE jobs SET id = tenant || '/' || id;
     UPDATE datasets SET name = tenant || '/' || name;",
    // 4: command jobs (the program, as JSON).
    "ALTER TABLE jobs ADD COLUMN command TEXT;",
    // 5: the node agent and attempt a job's run was handed to, for a daemon starting over to
    // adopt it.
    "CREATE TABLE placements (
         job TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
         node TEXT NOT NULL,
         attempt INTEGER NOT NULL
     );",
    // 6: nodes that registered through their agents (not in the cluster file), as JSON.
    "CREATE TABLE registered_nodes (
         name TEXT PRIMARY KEY,
         record TEXT NOT NULL
     );",
    // 7: the order finished jobs ended in, per tenant (those beyond the newest are forgotten);
    // jobs finished before it count as ended in submission order.
    "ALTER TABLE jobs ADD COLUMN ended INTEGER;
     UPDATE jobs SET ended = seq WHERE state IN ('succeeded', 'failed', 'cancelled');
     CREATE INDEX jobs_by_end ON jobs(tenant, ended);",
    // 8: log entries kept once by their key (an agent's report sent again).
    "ALTER TABLE job_events ADD COLUMN once TEXT;
     CREATE UNIQUE INDEX job_events_once ON job_events(job, once) WHERE once IS NOT NULL;",
    // 9: account rows authenticated under the key file (`rowmac`).
    "ALTER TABLE users ADD COLUMN mac TEXT;
     ALTER TABLE tokens ADD COLUMN mac TEXT;",
    // 10: every other row that decides access, what runs or where it runs authenticated under
    // the key file too; a job's listing checks its MAC against the digest of its bodies kept
    // beside them (`rowmac::bodies_digest`).
    "ALTER TABLE jobs ADD COLUMN mac TEXT;
     ALTER TABLE jobs ADD COLUMN bodies_digest TEXT;
     ALTER TABLE datasets ADD COLUMN mac TEXT;
     ALTER TABLE settings ADD COLUMN mac TEXT;
     ALTER TABLE checkpoints ADD COLUMN mac TEXT;
     ALTER TABLE gpu_health ADD COLUMN mac TEXT;
     ALTER TABLE registered_nodes ADD COLUMN mac TEXT;
     ALTER TABLE placements ADD COLUMN mac TEXT;
     ALTER TABLE plugins ADD COLUMN mac TEXT;",
];

/// `ended` of a job of tenant `tenant` (an SQL expression) stored in or moving to state `?1`:
/// the next in the tenant's order of ends when the state is final, else none.
fn ended(tenant: &str) -> String {
    format!(
        "CASE WHEN ?1 IN ('succeeded', 'failed', 'cancelled')
           THEN (SELECT COALESCE(MAX(e.ended), 0) + 1 FROM jobs AS e WHERE e.tenant = {tenant})
         END"
    )
}

impl Db {
    /// Opens (creating) the database at `path`. A new file is created owner-only (0600), and
    /// SQLite gives its WAL and shared-memory files the same mode.
    /// Opens the database at `path`, which must exist: the commands that read or repair a data
    /// directory never create an empty one in its place.
    pub fn open_existing(path: &Path) -> Result<Db, DbError> {
        if !path.exists() {
            return Err(DbError::Missing {
                path: path.to_path_buf(),
                why: String::new(),
            });
        }
        Db::open(path)
    }

    pub fn open(path: &Path) -> Result<Db, DbError> {
        #[cfg(unix)]
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            // Created empty here so SQLite opens (and copies the mode of) a private file.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
        }
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
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            rows: std::sync::OnceLock::new(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every store object a row names, with what names it (`dataset vision/scans.csv`,
    /// `plugin binpack 1.0.0`, `checkpoint of job vision/j1`): what `gantry db check` looks
    /// for in the store.
    pub fn named_objects(&self) -> Result<Vec<(String, String)>, DbError> {
        let mut named: Vec<(String, String)> = self
            .datasets()?
            .into_iter()
            .map(|d| (format!("dataset {}", d.name), d.object))
            .collect();
        named.extend(
            self.plugins(None)?
                .into_iter()
                .map(|p| (format!("plugin {} {}", p.name, p.version), p.object)),
        );
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT job, object FROM checkpoints ORDER BY job")
            .ctx("listing checkpoints")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    format!("checkpoint of job {}", r.get::<_, String>(0)?),
                    r.get(1)?,
                ))
            })
            .ctx("listing checkpoints")?;
        named.extend(
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .ctx("listing checkpoints")?,
        );
        Ok(named)
    }

    /// Checks the database whole: SQLite's `PRAGMA quick_check` (every page and record is well
    /// formed), then every stored value through the same strict readers the daemon uses, so a
    /// corrupt value stops the start, naming its table, row and column, instead of surfacing in
    /// a request (or as a default) later. Returns how many rows it read.
    pub fn check(&self) -> Result<u64, DbError> {
        let problems: Vec<String> = {
            let conn = self.conn();
            let mut stmt = conn
                .prepare("PRAGMA quick_check(20)")
                .ctx("checking integrity")?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .ctx("checking integrity")?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .ctx("checking integrity")?
        };
        if problems != ["ok"] {
            return Err(DbError::Integrity {
                path: self.path.clone(),
                detail: problems.join("; "),
            });
        }
        let mut rows = self.users()?.len() + self.tokens(None)?.len();
        rows += self.jobs()?.len() + self.datasets()?.len() + self.plugins(None)?.len();
        rows += self.gpu_health()?.len() + self.registered_nodes()?.len();
        let placements = "SELECT job, node, attempt, mac FROM placements";
        rows += self.count_checked(placements, |r| self.checked_placement(r))?;
        let settings = "SELECT key, value, mac FROM settings";
        rows += self.count_checked(settings, |r| self.checked_setting(r))?;
        let curves: Vec<String> = {
            let conn = self.conn();
            let mut stmt = conn
                .prepare("SELECT job FROM job_curves")
                .ctx("listing metrics")?;
            let ids = stmt.query_map([], |r| r.get(0)).ctx("listing metrics")?;
            ids.collect::<rusqlite::Result<Vec<_>>>()
                .ctx("listing metrics")?
        };
        for job in &curves {
            self.curve(job)?;
        }
        let checkpoints: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM checkpoints WHERE step < 0", [], |r| {
                r.get(0)
            })
            .ctx("reading checkpoints")?;
        if checkpoints > 0 {
            return Err(DbError::Corrupt {
                context: "reading checkpoints".into(),
                bad: BadValue {
                    table: "checkpoints",
                    row: format!("{checkpoints} row(s)"),
                    column: "step",
                    problem: "negative".into(),
                },
            });
        }
        let checkpoints = "SELECT job, step, object, mac FROM checkpoints";
        rows += self.count_checked(checkpoints, |r| self.checked_checkpoint(r))?;
        self.audit_head()?;
        Ok((rows + curves.len()) as u64)
    }

    /// How many rows `sql` selects, each read by `read` (a check of it).
    fn count_checked<T>(
        &self,
        sql: &str,
        read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<usize, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(sql).ctx("checking rows")?;
        let rows = stmt.query_map([], read);
        let rows = rows.and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>());
        Ok(rows.ctx("checking rows")?.len())
    }

    /// Writes a consistent copy of the database into `out` (an empty or missing file): SQLite's
    /// `VACUUM INTO`, which reads a snapshot while others write.
    pub fn vacuum_into(&self, out: &Path) -> Result<(), DbError> {
        let target = out.to_string_lossy().into_owned();
        self.conn()
            .execute("VACUUM INTO ?1", params![target])
            .ctx(&format!("backing up into {}", out.display()))?;
        Ok(())
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<User>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name, roles, tenants, clearance, mac FROM users ORDER BY name")
            .ctx("listing users")?;
        let rows = stmt
            .query_map([], |r| self.checked_user(r, 0, 4))
            .ctx("listing users")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("listing users")
    }

    /// The user called `name`.
    pub fn user(&self, name: &str) -> Result<Option<User>, DbError> {
        self.conn()
            .query_row(
                "SELECT name, roles, tenants, clearance, mac FROM users WHERE name = ?1",
                params![name],
                |r| self.checked_user(r, 0, 4),
            )
            .optional()
            .ctx("reading a user")
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on, authenticates rows under `key` (the key file's,
    /// [`gantry::storage::rows_key`]): each row that decides access, what runs or where it runs
    /// ([`rowmac`]) is written with its MAC, and one whose MAC is missing or does not verify is
    /// refused where it is read, naming it. Set once, at opening.
    pub fn authenticate_rows(&self, key: &[u8; 32]) {
        let _ = self.rows.set(RowMac::new(key));
    }

    /// Gives every row without a MAC its MAC ([`Db::authenticate_rows`] first): what
    /// `gantry key seal` does for the rows written before. A row whose MAC does not verify is
    /// left as it is (and refused). Returns how many rows it authenticated.
    pub fn authenticate_unmarked_rows(&self) -> Result<usize, DbError> {
        let Some(rows) = self.rows.get() else {
            return Ok(0);
        };
        let mut conn = self.conn();
        let tx = conn.transaction().ctx("authenticating rows")?;
        let t = &tx;
        let user = |r: &rusqlite::Row<'_>| row_to_user(r, 0);
        let columns = "name, roles, tenants, clearance";
        let mut signed = sign_unmarked(t, "users", columns, user, |u: &User| rows.sign(u))?;
        let token = |t: &TokenColumns| rows.sign(&t.row());
        signed += sign_unmarked(t, "tokens", TokenColumns::SELECT, TokenColumns::read, token)?;
        let job = |j: &JobRecord| rows.sign(&Submitted::whole(j));
        signed += sign_unmarked(t, "jobs", JOB_COLUMNS, row_to_job, job)?;
        // A listing checks a job against the digest of its bodies kept beside them.
        let select = format!("SELECT {JOB_COLUMNS}, rowid FROM jobs WHERE bodies_digest IS NULL");
        for_each_row(t, &select, row_to_job, |job, rowid| {
            let update = "UPDATE jobs SET bodies_digest = ?2 WHERE rowid = ?1";
            (t.execute(update, params![rowid, rowmac::bodies_digest(&job)]))
                .map(drop)
                .ctx("authenticating rows")
        })?;
        let dataset = |d: &DatasetRecord| rows.sign(d);
        signed += sign_unmarked(t, "datasets", DATASET_COLUMNS, row_to_dataset, dataset)?;
        let checkpoint = |(job, step, object): &(String, u32, String)| {
            let (job, step, object) = (job.as_str(), *step, object.as_str());
            rows.sign(&Checkpoint { job, step, object })
        };
        let read = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?));
        signed += sign_unmarked(t, "checkpoints", "job, step, object", read, checkpoint)?;
        let setting = |(key, value): &(String, String)| rows.sign(&Setting { key, value });
        let read = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?));
        signed += sign_unmarked(t, "settings", "key, value", read, setting)?;
        let mark = |m: &GpuHealth| rows.sign(m);
        let columns = "gpu, healthy, changed_by, changed_at";
        signed += sign_unmarked(t, "gpu_health", columns, row_to_gpu_health, mark)?;
        let node = |n: &crate::nodes::RegisteredNode| rows.sign(n);
        signed += sign_unmarked(t, "registered_nodes", "name, record", row_to_node, node)?;
        let placed = |(job, placement): &(String, Placement)| rows.sign(&Placed { job, placement });
        let columns = "job, node, attempt";
        signed += sign_unmarked(t, "placements", columns, row_to_placement, placed)?;
        let plugin = |p: &PluginRecord| rows.sign(p);
        signed += sign_unmarked(t, "plugins", PLUGIN_COLUMNS, row_to_plugin, plugin)?;
        tx.commit().ctx("authenticating rows")?;
        Ok(signed)
    }

    /// The user of a `users` row read at `at` (its MAC at `mac`), checked where rows are
    /// authenticated.
    fn checked_user(&self, r: &rusqlite::Row<'_>, at: usize, mac: usize) -> rusqlite::Result<User> {
        let user = row_to_user(r, at)?;
        if let Some(rows) = self.rows.get() {
            let mac: Option<String> = r.get(mac)?;
            rows.verify(&user, mac.as_deref())
                .map_err(BadValue::into_sqlite)?;
        }
        Ok(user)
    }

    /// The token of a `tokens` row read as [`TokenColumns::SELECT`] (its MAC at `mac`),
    /// checked where rows are authenticated.
    fn checked_token(&self, r: &rusqlite::Row<'_>, mac: usize) -> rusqlite::Result<TokenColumns> {
        let token = TokenColumns::read(r)?;
        if let Some(rows) = self.rows.get() {
            let mac: Option<String> = r.get(mac)?;
            (rows.verify(&token.row(), mac.as_deref())).map_err(BadValue::into_sqlite)?;
        }
        Ok(token)
    }

    /// The job of a row read as [`SELECT_JOB`] (or, `listed`, as [`SELECT_LISTED`], without
    /// its bodies: its MAC checked against the digest of them kept beside it), checked where
    /// rows are authenticated.
    fn checked_job(&self, r: &rusqlite::Row<'_>, listed: bool) -> rusqlite::Result<JobRecord> {
        let job = row_to_job(r)?;
        if let Some(rows) = self.rows.get() {
            let mac: Option<String> = r.get(15)?;
            let bodies = match listed {
                true => r.get::<_, Option<String>>(16)?.unwrap_or_default(),
                false => rowmac::bodies_digest(&job),
            };
            (rows.verify(&Submitted::listed(&job, bodies), mac.as_deref()))
                .map_err(BadValue::into_sqlite)?;
        }
        Ok(job)
    }

    /// The job, step and object of a `checkpoints` row read as (job, step, object, mac),
    /// checked where rows are authenticated: a job pointed at another's checkpoint would resume
    /// from (and its model show) another tenant's weights.
    fn checked_checkpoint(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, u32, String)> {
        let (job, step, object): (String, u32, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        if let Some(rows) = self.rows.get() {
            let mac: Option<String> = r.get(3)?;
            (rows.verify(
                &Checkpoint {
                    job: &job,
                    step,
                    object: &object,
                },
                mac.as_deref(),
            ))
            .map_err(BadValue::into_sqlite)?;
        }
        Ok((job, step, object))
    }

    /// `t`, read from `r`, its MAC at `mac`: checked where rows are authenticated.
    fn checked<T: Covered>(&self, r: &rusqlite::Row<'_>, t: T, mac: usize) -> rusqlite::Result<T> {
        if let Some(rows) = self.rows.get() {
            let mac: Option<String> = r.get(mac)?;
            rows.verify(&t, mac.as_deref())
                .map_err(BadValue::into_sqlite)?;
        }
        Ok(t)
    }

    /// The placement of a row read as (job, node, attempt, mac), checked where rows are
    /// authenticated: a run adopted at a start goes to the node it names.
    fn checked_placement(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<Placement> {
        let (job, placement) = row_to_placement(r)?;
        if let Some(rows) = self.rows.get() {
            let mac: Option<String> = r.get(3)?;
            let placed = Placed {
                job: &job,
                placement: &placement,
            };
            rows.verify(&placed, mac.as_deref())
                .map_err(BadValue::into_sqlite)?;
        }
        Ok(placement)
    }

    /// The MAC of job `job`'s placement `p`, where rows are authenticated.
    fn placed_mac(&self, job: &str, p: &Placement) -> Option<String> {
        (self.rows.get()).map(|rows| rows.sign(&Placed { job, placement: p }))
    }

    /// The dataset of a row read as [`SELECT_DATASET`], checked where rows are authenticated.
    fn checked_dataset(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<DatasetRecord> {
        let dataset = row_to_dataset(r)?;
        if let Some(rows) = self.rows.get() {
            let mac: Option<String> = r.get(7)?;
            (rows.verify(&dataset, mac.as_deref())).map_err(BadValue::into_sqlite)?;
        }
        Ok(dataset)
    }

    /// Adds (or replaces) a user.
    pub fn put_user(&self, user: &User) -> Result<(), DbError> {
        let mac = self.rows.get().map(|rows| rows.sign(user));
        self.conn()
            .execute(
                "INSERT INTO users(name, roles, tenants, clearance, mac) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(name) DO UPDATE SET roles = ?2, tenants = ?3, clearance = ?4,
                                                 mac = ?5",
                params![
                    user.name,
                    serde_json::to_string(&user.roles).expect("strings serialise"),
                    serde_json::to_string(&user.tenants).expect("strings serialise"),
                    user.clearance,
                    mac,
                ],
            )
            .ctx("adding a user")?;
        Ok(())
    }

    /// Stores a token's salted hash for `user`, refused after `expires_at` (unix seconds).
    pub fn put_token(
        &self,
        id: &str,
        user: &str,
        salt: &[u8],
        hash: &[u8],
        expires_at: Option<f64>,
    ) -> Result<(), DbError> {
        let row = TokenRow {
            id,
            user,
            salt,
            hash,
            expires_at,
            revoked_at: None,
        };
        let mac = self.rows.get().map(|rows| rows.sign(&row));
        self.conn()
            .execute(
                "INSERT INTO tokens(id, user, salt, hash, created_at, expires_at, mac)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![id, user, salt, hash, now(), expires_at, mac],
            )
            .ctx("storing a token")?;
        Ok(())
    }

    /// A token's salt, hash, user, expiry and revocation.
    pub fn token(&self, id: &str) -> Result<Option<StoredToken>, DbError> {
        let conn = self.conn();
        conn.query_row(
            &format!(
                "SELECT {}, t.mac, u.name, u.roles, u.tenants, u.clearance, u.mac
                 FROM tokens t JOIN users u ON u.name = t.user WHERE t.id = ?1",
                TokenColumns::SELECT
            ),
            params![id],
            |r| {
                let token = self.checked_token(r, 6)?;
                Ok(StoredToken {
                    user: self.checked_user(r, 7, 11)?,
                    salt: token.salt,
                    hash: token.hash,
                    expires_at: token.expires_at,
                    revoked_at: token.revoked_at,
                })
            },
        )
        .optional()
        .ctx("looking up a token")
    }

    /// The tokens of `user` (every user's with `None`), oldest first.
    pub fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenInfo>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {}, mac, created_at FROM tokens
                 WHERE ?1 IS NULL OR user = ?1 ORDER BY created_at, id",
                TokenColumns::SELECT
            ))
            .ctx("listing tokens")?;
        let rows = stmt
            .query_map(params![user], |r| {
                let token = self.checked_token(r, 6)?;
                Ok(TokenInfo {
                    id: token.id,
                    user: token.user,
                    created_at: r.get(7)?,
                    expires_at: token.expires_at,
                    revoked_at: token.revoked_at,
                })
            })
            .ctx("listing tokens")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("listing tokens")
    }

    /// Revokes every live token of `user` (or, with `token`, that one of theirs); returns the
    /// ids revoked.
    pub fn revoke_tokens(&self, user: &str, token: Option<&str>) -> Result<Vec<String>, DbError> {
        // Where rows are authenticated, each row's MAC is written again with its revocation:
        // checked first, so that a row changed outside Gantry is never authenticated by being
        // revoked.
        let mut conn = self.conn();
        let tx = conn.transaction().ctx("revoking tokens")?;
        let live: Vec<TokenColumns> = {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT {}, mac FROM tokens
                     WHERE user = ?1 AND (?2 IS NULL OR id = ?2) AND revoked_at IS NULL",
                    TokenColumns::SELECT
                ))
                .ctx("revoking tokens")?;
            let found = stmt.query_map(params![user, token], |r| self.checked_token(r, 6));
            found
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .ctx("revoking tokens")?
        };
        let at = now();
        for token in &live {
            let revoked = TokenRow {
                revoked_at: Some(at),
                ..token.row()
            };
            let mac = self.rows.get().map(|rows| rows.sign(&revoked));
            tx.execute(
                "UPDATE tokens SET revoked_at = ?2, mac = ?3 WHERE id = ?1",
                params![token.id, at, mac],
            )
            .ctx("revoking tokens")?;
        }
        tx.commit().ctx("revoking tokens")?;
        Ok(live.into_iter().map(|t| t.id).collect())
    }

    /// The audit log's latest sealed position as recorded here, and whether the log was closed
    /// cleanly there.
    pub fn audit_head(&self) -> Result<(Option<Head>, bool), DbError> {
        let found: Option<(i64, String, bool)> = self
            .conn()
            .query_row(
                "SELECT seq, hash, closed FROM audit_head WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .ctx("reading the audit head")?;
        let Some((seq, hash, closed)) = found else {
            return Ok((None, false));
        };
        let head = format!("{seq}:{hash}")
            .parse::<Head>()
            .map_err(|problem| DbError::Corrupt {
                context: "reading the audit head".into(),
                bad: BadValue {
                    table: "audit_head",
                    row: "1".into(),
                    column: "seq, hash",
                    problem,
                },
            })?;
        Ok((Some(head), closed))
    }

    /// Records `head` as the audit log's latest sealed position (never moving it back), and
    /// whether the log was closed there.
    pub fn set_audit_head(&self, head: &Head, closed: bool) -> Result<(), DbError> {
        self.conn()
            .execute(
                "INSERT INTO audit_head(id, seq, hash, closed) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET seq = ?1, hash = ?2, closed = ?3
                 WHERE ?1 >= audit_head.seq",
                params![head.seq, head.hash, closed],
            )
            .ctx("recording the audit head")?;
        Ok(())
    }

    /// Records `head` as the audit log's sealed position even if it is behind the one recorded:
    /// for a new log that replaced a damaged one (`gantry audit recover`).
    pub fn reset_audit_head(&self, head: &Head, closed: bool) -> Result<(), DbError> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO audit_head(id, seq, hash, closed) VALUES (1, ?1, ?2, ?3)",
                params![head.seq, head.hash, closed],
            )
            .ctx("resetting the audit head")?;
        Ok(())
    }

    /// Records GPU `gpu`'s health, as set by `by`.
    pub fn set_gpu_health(&self, gpu: &str, healthy: bool, by: &str) -> Result<(), DbError> {
        let mark = GpuHealth {
            gpu: gpu.to_string(),
            healthy,
            by: by.to_string(),
            at: now(),
        };
        let mac = self.rows.get().map(|rows| rows.sign(&mark));
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO gpu_health(gpu, healthy, changed_by, changed_at, mac)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![mark.gpu, mark.healthy, mark.by, mark.at, mac],
            )
            .ctx("recording a GPU's health")?;
        Ok(())
    }

    /// Registers `node`, unless a node of its name is registered already (the first
    /// registration holds).
    pub fn register_node(&self, node: &crate::nodes::RegisteredNode) -> Result<(), DbError> {
        let record = serde_json::to_string(node).expect("a node serialises");
        let mac = self.rows.get().map(|rows| rows.sign(node));
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO registered_nodes(name, record, mac) VALUES (?1, ?2, ?3)",
                params![node.name, record, mac],
            )
            .ctx("registering a node")?;
        Ok(())
    }

    /// Replaces the record of registered node `node.name` (its agent registered it again).
    pub fn register_node_again(&self, node: &crate::nodes::RegisteredNode) -> Result<(), DbError> {
        let record = serde_json::to_string(node).expect("a node serialises");
        let mac = self.rows.get().map(|rows| rows.sign(node));
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO registered_nodes(name, record, mac) VALUES (?1, ?2, ?3)",
                params![node.name, record, mac],
            )
            .ctx("registering a node again")?;
        Ok(())
    }

    /// Forgets registered node `name` (an admin removed it); whether it was registered.
    pub fn forget_node(&self, name: &str) -> Result<bool, DbError> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM registered_nodes WHERE name = ?1",
                params![name],
            )
            .ctx("forgetting a registered node")?;
        Ok(n > 0)
    }

    /// The registered nodes, by name.
    pub fn registered_nodes(&self) -> Result<Vec<crate::nodes::RegisteredNode>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name, record, mac FROM registered_nodes ORDER BY name")
            .ctx("reading registered nodes")?;
        let rows = stmt
            .query_map([], |r| self.checked(r, row_to_node(r)?, 2))
            .ctx("reading registered nodes")?;
        rows.collect::<Result<_, _>>()
            .ctx("reading registered nodes")
    }

    /// Every GPU health an admin set, by GPU id.
    pub fn gpu_health(&self) -> Result<Vec<GpuHealth>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT gpu, healthy, changed_by, changed_at, mac FROM gpu_health ORDER BY gpu",
            )
            .ctx("reading GPU health")?;
        let rows = stmt
            .query_map([], |r| self.checked(r, row_to_gpu_health(r)?, 4))
            .ctx("reading GPU health")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("reading GPU health")
    }

    /// Checks and makes one move of job `id` to `to`, setting the columns of `set` too (`?4`
    /// on are `values`). The state is read and the move checked under the connection's lock,
    /// and the update is a compare-and-set on the state read, so a move that lost a race with
    /// another writer of the file is refused as well.
    fn move_job(
        &self,
        id: &str,
        from: Option<JobState>,
        to: JobState,
        set: &str,
        values: &[&dyn rusqlite::ToSql],
    ) -> Result<JobState, TransitionError> {
        let conn = self.conn();
        let now = conn
            .query_row("SELECT state FROM jobs WHERE id = ?1", params![id], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .ctx("reading a job's state")?
            .ok_or_else(|| TransitionError::NoJob(id.to_string()))?;
        let now = JobState::parse(&now).ok_or_else(|| DbError::Corrupt {
            context: "reading a job's state".to_string(),
            bad: BadValue {
                table: "jobs",
                row: id.to_string(),
                column: "state",
                problem: format!("unknown state {now:?}"),
            },
        })?;
        let moved = |expected: JobState| TransitionError::Moved {
            id: id.to_string(),
            expected,
            now,
        };
        if let Some(expected) = from.filter(|f| *f != now) {
            return Err(moved(expected));
        }
        if !now.may_become(to) {
            return Err(TransitionError::Illegal {
                id: id.to_string(),
                from: now,
                to,
            });
        }
        let (to_s, now_s) = (to.as_str(), now.as_str());
        let mut all: Vec<&dyn rusqlite::ToSql> = vec![&to_s, &id, &now_s];
        all.extend_from_slice(values);
        let n = conn
            .execute(
                &format!(
                    "UPDATE jobs SET state = ?1, ended = {}{set} WHERE id = ?2 AND state = ?3",
                    ended("jobs.tenant")
                ),
                all.as_slice(),
            )
            .ctx("updating a job's state")?;
        if n != 1 {
            // Another writer of the file moved it between the read and the update.
            return Err(moved(now));
        }
        Ok(now)
    }

    /// Adds a dataset; `false` if the name is taken.
    pub fn insert_dataset(&self, d: &DatasetRecord) -> Result<bool, DbError> {
        let n = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO datasets(name, tenant, classification, object, bytes, owner,
                   created_at, mac) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    d.name,
                    d.tenant,
                    d.classification,
                    d.object,
                    d.bytes,
                    d.owner,
                    d.created_at,
                    self.rows.get().map(|rows| rows.sign(d)),
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
        let rows = stmt
            .query_map([], |r| self.checked_dataset(r))
            .ctx("listing datasets")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("listing datasets")
    }

    /// How many datasets `tenant` has, and their bytes together.
    pub fn dataset_usage(&self, tenant: &str) -> Result<(usize, u64), DbError> {
        let (count, bytes): (i64, i64) = self
            .conn()
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM datasets WHERE tenant = ?1",
                params![tenant],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ctx("reading datasets")?;
        Ok((
            usize::try_from(count).unwrap_or(usize::MAX),
            u64::try_from(bytes).unwrap_or(0),
        ))
    }

    /// Whether a dataset is stored as `object`.
    pub fn dataset_uses(&self, object: &str) -> Result<bool, DbError> {
        self.conn()
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM datasets WHERE object = ?1)",
                params![object],
                |r| r.get(0),
            )
            .ctx("reading datasets")
    }

    /// The datasets called `name`, in any tenant.
    pub fn datasets_named(&self, name: &str) -> Result<Vec<DatasetRecord>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!("{SELECT_DATASET} {DATASETS_NAMED}"))
            .ctx("reading datasets")?;
        let rows = stmt
            .query_map(params![name], |r| self.checked_dataset(r))
            .ctx("reading datasets")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("reading datasets")
    }

    /// The dataset whose key is `key` ([`key`]).
    pub fn dataset(&self, name: &str) -> Result<Option<DatasetRecord>, DbError> {
        self.conn()
            .query_row(
                &format!("{SELECT_DATASET} WHERE name = ?1"),
                params![name],
                |r| self.checked_dataset(r),
            )
            .optional()
            .ctx("reading a dataset")
    }

    /// Adds or replaces the uploaded plugin `p.name`.
    pub fn put_plugin(&self, p: &PluginRecord) -> Result<(), DbError> {
        let signature = p
            .signature
            .as_ref()
            .map(|s| serde_json::to_string(s).expect("a signature serialises"));
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO plugins(name, version, manifest, object, signature, owner,
                   created_at, kind, mac) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    p.name,
                    p.version,
                    p.manifest,
                    p.object,
                    signature,
                    p.owner,
                    p.created_at,
                    p.kind,
                    self.rows.get().map(|rows| rows.sign(p)),
                ],
            )
            .ctx("recording a plugin")?;
        Ok(())
    }

    /// Uploaded plugins, by name; with `name`, only that one.
    pub fn plugins(&self, name: Option<&str>) -> Result<Vec<PluginRecord>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {PLUGIN_COLUMNS}, mac FROM plugins WHERE ?1 IS NULL OR name = ?1
                 ORDER BY name"
            ))
            .ctx("listing plugins")?;
        let rows = stmt
            .query_map(params![name], |r| self.checked(r, row_to_plugin(r)?, 8))
            .ctx("listing plugins")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("listing plugins")
    }

    /// A daemon setting (the active scheduler plugin, say).
    pub fn setting(&self, key: &str) -> Result<Option<String>, DbError> {
        self.conn()
            .query_row(
                "SELECT key, value, mac FROM settings WHERE key = ?1",
                params![key],
                |r| self.checked_setting(r).map(|(_, value)| value),
            )
            .optional()
            .ctx("reading a setting")
    }

    /// The key and value of a `settings` row read as (key, value, mac), checked where rows are
    /// authenticated.
    fn checked_setting(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String)> {
        let (key, value): (String, String) = (r.get(0)?, r.get(1)?);
        if let Some(rows) = self.rows.get() {
            let mac: Option<String> = r.get(2)?;
            (rows.verify(
                &Setting {
                    key: &key,
                    value: &value,
                },
                mac.as_deref(),
            ))
            .map_err(BadValue::into_sqlite)?;
        }
        Ok((key, value))
    }

    /// Sets a daemon setting.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), DbError> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO settings(key, value, mac) VALUES (?1, ?2, ?3)",
                params![
                    key,
                    value,
                    self.rows
                        .get()
                        .map(|rows| rows.sign(&Setting { key, value }))
                ],
            )
            .ctx("writing a setting")?;
        Ok(())
    }

    /// Removes a daemon setting.
    pub fn delete_setting(&self, key: &str) -> Result<(), DbError> {
        self.conn()
            .execute("DELETE FROM settings WHERE key = ?1", params![key])
            .ctx("removing a setting")?;
        Ok(())
    }
}

impl JobStore for Db {
    type Error = DbError;

    fn insert_job(&self, job: &JobRecord) -> Result<bool, DbError> {
        let conn = self.conn();
        let n = conn
            .execute(
                &format!(
                    "INSERT OR IGNORE INTO jobs(state, tenant, id, owner, gpus,
                       memory_per_gpu_mib, est_runtime_s, gpu_ids, reason, submitted_at, seq,
                       train, command, ended, mac, bodies_digest)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
                       (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), ?11, ?12, {}, ?13, ?14)",
                    ended("?2")
                ),
                params![
                    job.state.as_str(),
                    job.tenant,
                    job.id,
                    job.owner,
                    job.gpus,
                    job.memory_per_gpu_mib,
                    job.est_runtime_s,
                    serde_json::to_string(&job.gpu_ids).expect("strings serialise"),
                    job.reason,
                    job.submitted_at,
                    job.train,
                    job.command
                        .as_ref()
                        .map(|c| serde_json::to_string(c).expect("a command serialises")),
                    self.rows
                        .get()
                        .map(|rows| rows.sign(&Submitted::whole(job))),
                    rowmac::bodies_digest(job),
                ],
            )
            .ctx("inserting a job")?;
        Ok(n == 1)
    }

    fn job(&self, id: &str) -> Result<Option<JobRecord>, DbError> {
        let conn = self.conn();
        conn.query_row(&format!("{SELECT_JOB} WHERE id = ?1"), params![id], |r| {
            self.checked_job(r, false)
        })
        .optional()
        .ctx("reading a job")
    }

    fn jobs(&self) -> Result<Vec<JobRecord>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!("{SELECT_JOB} ORDER BY seq"))
            .ctx("listing jobs")?;
        let rows = stmt
            .query_map([], |r| self.checked_job(r, false))
            .ctx("listing jobs")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("listing jobs")
    }

    fn jobs_page(
        &self,
        tenants: Option<&[String]>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Listed>, DbError> {
        // Without the bodies: their kind alone is read.
        let mut sql = format!("{SELECT_LISTED} WHERE seq > ?1");
        if let Some(tenants) = tenants {
            let marks: Vec<String> = (0..tenants.len()).map(|i| format!("?{}", i + 3)).collect();
            sql += &format!(" AND tenant IN ({})", marks.join(", "));
        }
        sql += " ORDER BY seq LIMIT ?2";
        let conn = self.conn();
        let start: i64 = match after {
            Some(key) => match conn
                .query_row("SELECT seq FROM jobs WHERE id = ?1", params![key], |r| {
                    r.get(0)
                })
                .optional()
                .ctx("listing jobs")?
            {
                Some(seq) => seq,
                None => return Ok(Vec::new()),
            },
            None => i64::MIN,
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut values: Vec<&dyn rusqlite::ToSql> = vec![&start, &limit];
        if let Some(tenants) = tenants {
            values.extend(tenants.iter().map(|t| t as &dyn rusqlite::ToSql));
        }
        let mut stmt = conn.prepare(&sql).ctx("listing jobs")?;
        let rows = stmt
            .query_map(values.as_slice(), |r| {
                let kind = match r.get::<_, Option<String>>(17)?.as_deref() {
                    Some("train") => JobKind::Train,
                    Some("command") => JobKind::Command,
                    _ => JobKind::Reservation,
                };
                let job = self.checked_job(r, true)?;
                Ok(Listed { job, kind })
            })
            .ctx("listing jobs")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("listing jobs")
    }

    fn jobs_named(&self, name: &str) -> Result<Vec<JobRecord>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!("{SELECT_JOB} {JOBS_NAMED}"))
            .ctx("reading jobs")?;
        let rows = stmt
            .query_map(params![name], |r| self.checked_job(r, false))
            .ctx("reading jobs")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("reading jobs")
    }

    fn counts_by_state(&self) -> Result<Vec<(String, u64)>, DbError> {
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

    fn transition(
        &self,
        id: &str,
        from: Option<JobState>,
        to: JobState,
        gpu_ids: &[String],
        reason: Option<&str>,
    ) -> Result<JobState, TransitionError> {
        let gpu_ids = serde_json::to_string(gpu_ids).expect("strings serialise");
        self.move_job(
            id,
            from,
            to,
            ", gpu_ids = ?4, reason = ?5",
            &[&gpu_ids as &dyn rusqlite::ToSql, &reason],
        )
    }

    fn run_started(&self, id: &str) -> Result<JobState, TransitionError> {
        self.move_job(
            id,
            Some(JobState::Scheduled),
            JobState::Running,
            ", crashes = crashes + 1",
            &[],
        )
    }

    fn run_ended(&self, id: &str) -> Result<(), DbError> {
        self.conn()
            .execute(
                "UPDATE jobs SET crashes = MAX(crashes - 1, 0) WHERE id = ?1",
                params![id],
            )
            .ctx("ending a job's run")?;
        Ok(())
    }

    fn set_not_before(&self, id: &str, at: f64) -> Result<(), DbError> {
        self.conn()
            .execute(
                "UPDATE jobs SET not_before = ?2 WHERE id = ?1",
                params![id, at],
            )
            .ctx("deferring a job")?;
        Ok(())
    }

    fn log(&self, id: &str, message: &str) -> Result<(), DbError> {
        self.conn()
            .execute(
                "INSERT INTO job_events(job, at, message) VALUES (?1, ?2, ?3)",
                params![id, now(), message],
            )
            .ctx("writing a job's log")?;
        Ok(())
    }

    fn log_once(&self, id: &str, key: &str, message: &str) -> Result<bool, DbError> {
        let added = self
            .conn()
            .execute(
                "INSERT INTO job_events(job, at, message, once) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (job, once) WHERE once IS NOT NULL DO NOTHING",
                params![id, now(), message, key],
            )
            .ctx("writing a job's log")?;
        Ok(added == 1)
    }

    fn logs(&self, id: &str) -> Result<Vec<(f64, String)>, DbError> {
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

    fn set_result(&self, id: &str, result: &serde_json::Value) -> Result<(), DbError> {
        self.conn()
            .execute(
                "UPDATE jobs SET result = ?2 WHERE id = ?1",
                params![id, result.to_string()],
            )
            .ctx("recording a result")?;
        Ok(())
    }

    fn set_curve(&self, id: &str, curve: &super::curve::Curve) -> Result<(), DbError> {
        let text = serde_json::to_string(curve).expect("a curve serialises");
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO job_curves(job, curve) VALUES (?1, ?2)",
                params![id, text],
            )
            .ctx("saving a job's metrics")?;
        Ok(())
    }

    fn curve(&self, id: &str) -> Result<Option<super::curve::Curve>, DbError> {
        self.conn()
            .query_row(
                "SELECT curve FROM job_curves WHERE job = ?1",
                params![id],
                |r| json_column(r, 0, "job_curves", id, "curve"),
            )
            .optional()
            .ctx("reading a job's metrics")
    }

    fn add_checkpoint(&self, job: &str, step: u32, object: &str) -> Result<Vec<String>, DbError> {
        let mut conn = self.conn();
        let tx = write_transaction(&mut conn).ctx("recording a checkpoint")?;
        let before = {
            let mut stmt = tx
                .prepare("SELECT DISTINCT object FROM checkpoints WHERE job = ?1")
                .ctx("recording a checkpoint")?;
            let rows = stmt
                .query_map(params![job], |r| r.get::<_, String>(0))
                .ctx("recording a checkpoint")?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .ctx("recording a checkpoint")?
        };
        tx.execute("DELETE FROM checkpoints WHERE job = ?1", params![job])
            .ctx("recording a checkpoint")?;
        let mac = self
            .rows
            .get()
            .map(|rows| rows.sign(&Checkpoint { job, step, object }));
        tx.execute(
            "INSERT INTO checkpoints(job, step, object, mac) VALUES (?1, ?2, ?3, ?4)",
            params![job, step, object, mac],
        )
        .ctx("recording a checkpoint")?;
        tx.commit().ctx("recording a checkpoint")?;
        Ok(before.into_iter().filter(|o| o != object).collect())
    }

    fn forget_checkpoints(&self, id: &str) -> Result<Vec<String>, DbError> {
        const CTX: &str = "forgetting a job's checkpoints";
        let mut conn = self.conn();
        let tx = write_transaction(&mut conn).ctx(CTX)?;
        let objects = {
            let mut stmt = tx
                .prepare("SELECT DISTINCT object FROM checkpoints WHERE job = ?1")
                .ctx(CTX)?;
            let rows = stmt.query_map(params![id], |r| r.get(0)).ctx(CTX)?;
            rows.collect::<rusqlite::Result<Vec<String>>>().ctx(CTX)?
        };
        tx.execute("DELETE FROM checkpoints WHERE job = ?1", params![id])
            .ctx(CTX)?;
        tx.commit().ctx(CTX)?;
        Ok(objects)
    }

    fn checkpoint_uses(&self, object: &str) -> Result<bool, DbError> {
        self.conn()
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM checkpoints WHERE object = ?1)",
                params![object],
                |r| r.get(0),
            )
            .ctx("reading checkpoints")
    }

    fn latest_checkpoint(&self, job: &str) -> Result<Option<(u32, String)>, DbError> {
        self.conn()
            .query_row(
                "SELECT job, step, object, mac FROM checkpoints WHERE job = ?1
                 ORDER BY step DESC LIMIT 1",
                params![job],
                |r| {
                    self.checked_checkpoint(r)
                        .map(|(_, step, object)| (step, object))
                },
            )
            .optional()
            .ctx("reading checkpoints")
    }

    fn set_placement(&self, id: &str, placement: Option<&Placement>) -> Result<(), DbError> {
        let conn = self.conn();
        match placement {
            Some(p) => conn.execute(
                "INSERT OR REPLACE INTO placements(job, node, attempt, mac)
                 VALUES (?1, ?2, ?3, ?4)",
                params![id, p.node, p.attempt, self.placed_mac(id, p)],
            ),
            None => conn.execute("DELETE FROM placements WHERE job = ?1", params![id]),
        }
        .ctx("recording a placement")?;
        Ok(())
    }

    fn placement(&self, id: &str) -> Result<Option<Placement>, DbError> {
        self.conn()
            .query_row(
                "SELECT job, node, attempt, mac FROM placements WHERE job = ?1",
                params![id],
                |r| self.checked_placement(r),
            )
            .optional()
            .ctx("reading a placement")
    }
    fn kept_models(&self, tenant: &str) -> Result<Vec<String>, DbError> {
        const CTX: &str = "reading a tenant's kept models";
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id FROM jobs WHERE tenant = ?1 AND ended IS NOT NULL
                 AND EXISTS (SELECT 1 FROM checkpoints WHERE checkpoints.job = jobs.id)
                 ORDER BY ended",
            )
            .ctx(CTX)?;
        let rows = stmt.query_map(params![tenant], |r| r.get(0)).ctx(CTX)?;
        rows.collect::<rusqlite::Result<_>>().ctx(CTX)
    }

    fn forget_finished(
        &self,
        tenant: &str,
        keep: usize,
        at_most: usize,
    ) -> Result<Vec<(String, String)>, DbError> {
        const CTX: &str = "forgetting finished jobs";
        let mut conn = self.conn();
        let tx = write_transaction(&mut conn).ctx(CTX)?;
        let ended: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE tenant = ?1 AND ended IS NOT NULL",
                params![tenant],
                |r| r.get(0),
            )
            .ctx(CTX)?;
        let over = usize::try_from(ended).unwrap_or(0).saturating_sub(keep);
        let n = i64::try_from(over.min(at_most)).unwrap_or(i64::MAX);
        if n == 0 {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = {
            let mut stmt = tx
                .prepare(
                    "SELECT id FROM jobs WHERE tenant = ?1 AND ended IS NOT NULL
                     ORDER BY ended LIMIT ?2",
                )
                .ctx(CTX)?;
            let rows = stmt.query_map(params![tenant, n], |r| r.get(0)).ctx(CTX)?;
            rows.collect::<rusqlite::Result<_>>().ctx(CTX)?
        };
        let mut objects = Vec::new();
        for id in &ids {
            let mut stmt = tx
                .prepare_cached("SELECT DISTINCT object FROM checkpoints WHERE job = ?1")
                .ctx(CTX)?;
            let rows = stmt
                .query_map(params![id], |r| Ok((id.clone(), r.get::<_, String>(0)?)))
                .ctx(CTX)?;
            objects.extend(rows.collect::<rusqlite::Result<Vec<_>>>().ctx(CTX)?);
            for table in [
                "DELETE FROM checkpoints WHERE job = ?1",
                "DELETE FROM job_events WHERE job = ?1",
                "DELETE FROM job_curves WHERE job = ?1",
                "DELETE FROM placements WHERE job = ?1",
                "DELETE FROM jobs WHERE id = ?1",
            ] {
                tx.prepare_cached(table)
                    .and_then(|mut s| s.execute(params![id]))
                    .ctx(CTX)?;
            }
        }
        tx.commit().ctx(CTX)?;
        Ok(objects)
    }
}

/// A transaction that will write: the write lock taken at its start (`BEGIN IMMEDIATE`), waiting
/// on another connection's for the busy timeout. A deferred one that read first was refused
/// its upgrade at once ("database is locked") whenever another connection (the audit log's
/// seal) had committed meanwhile, whatever the timeout.
fn write_transaction(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

/// How many rows [`for_each_row`] reads at a time.
const ROWS_PAGE: usize = 256;

/// Hands each row `select` finds (`SELECT <columns>, rowid FROM <table> WHERE <condition>`),
/// read by `read`, to `each` with its rowid; how many. Read in pages by rowid: an operator's
/// one-time act over a whole table (jobs with their bodies), never all of it in memory.
fn for_each_row<T>(
    tx: &rusqlite::Transaction<'_>,
    select: &str,
    mut read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    mut each: impl FnMut(T, i64) -> Result<(), DbError>,
) -> Result<usize, DbError> {
    let paged = format!("{select} AND rowid > ?1 ORDER BY rowid LIMIT {ROWS_PAGE}");
    let mut stmt = tx.prepare(&paged).ctx("authenticating rows")?;
    let (mut after, mut done) = (i64::MIN, 0);
    loop {
        let page = (stmt.query_map([after], |r| Ok((read(r)?, r.get::<_, i64>("rowid")?))))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .ctx("authenticating rows")?;
        let Some(last) = page.last().map(|(_, rowid)| *rowid) else {
            return Ok(done);
        };
        done += page.len();
        for (row, rowid) in page {
            each(row, rowid)?;
        }
        after = last;
    }
}

/// Gives each row of `table` without a MAC the MAC `mac` makes of it, read by `read` from its
/// `columns`; how many ([`Db::authenticate_unmarked_rows`]).
fn sign_unmarked<T>(
    tx: &rusqlite::Transaction<'_>,
    table: &str,
    columns: &str,
    read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    mac: impl Fn(&T) -> String,
) -> Result<usize, DbError> {
    let select = format!("SELECT {columns}, rowid FROM {table} WHERE mac IS NULL");
    let update = format!("UPDATE {table} SET mac = ?2 WHERE rowid = ?1");
    for_each_row(tx, &select, read, |row, rowid| {
        (tx.execute(&update, params![rowid, mac(&row)]))
            .map(drop)
            .ctx("authenticating rows")
    })
}

/// Applies the [`MIGRATIONS`] a database has not had yet.
fn migrate(conn: &Connection) -> Result<(), DbError> {
    let applied: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .ctx("reading the schema version")?;
    let applied = usize::try_from(applied).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        return Err(DbError::Sqlite {
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

/// The jobs, and the datasets, of one name in any tenant: by the name part of their key, which
/// an index serves (`jobs_by_name`, `datasets_by_name`).
const JOBS_NAMED: &str = "WHERE substr(id, instr(id, '/') + 1) = ?1 ORDER BY seq";
const DATASETS_NAMED: &str = "WHERE substr(name, instr(name, '/') + 1) = ?1 ORDER BY name";

/// The columns [`row_to_dataset`] reads.
macro_rules! dataset_columns {
    () => {
        "name, tenant, classification, object, bytes, owner, created_at"
    };
}
const DATASET_COLUMNS: &str = dataset_columns!();
const SELECT_DATASET: &str = concat!("SELECT ", dataset_columns!(), ", mac FROM datasets");

fn row_to_dataset(r: &rusqlite::Row<'_>) -> rusqlite::Result<DatasetRecord> {
    let name: String = r.get(0)?;
    Ok(DatasetRecord {
        bytes: count_column(r, 4, "datasets", &name, "bytes")?,
        name,
        tenant: r.get(1)?,
        classification: r.get(2)?,
        object: r.get(3)?,
        owner: r.get(5)?,
        created_at: r.get(6)?,
    })
}

/// The columns [`row_to_plugin`] reads.
const PLUGIN_COLUMNS: &str = "name, version, manifest, object, signature, owner, created_at, kind";

/// A plugin from columns 0..8 ([`PLUGIN_COLUMNS`]).
fn row_to_plugin(r: &rusqlite::Row<'_>) -> rusqlite::Result<PluginRecord> {
    let name: String = r.get(0)?;
    let signature = match r.get::<_, Option<String>>(4)? {
        None => None,
        Some(_) => Some(json_column(r, 4, "plugins", &name, "signature")?),
    };
    Ok(PluginRecord {
        name,
        version: r.get(1)?,
        manifest: r.get(2)?,
        object: r.get(3)?,
        signature,
        owner: r.get(5)?,
        created_at: r.get(6)?,
        kind: r.get(7)?,
    })
}

/// A GPU's health from columns 0..4 (gpu, healthy, changed_by, changed_at).
fn row_to_gpu_health(r: &rusqlite::Row<'_>) -> rusqlite::Result<GpuHealth> {
    let gpu: String = r.get(0)?;
    let healthy = match r.get::<_, i64>(1)? {
        0 => false,
        1 => true,
        v => {
            return Err(BadValue {
                table: "gpu_health",
                row: gpu,
                column: "healthy",
                problem: format!("{v} is neither 0 nor 1"),
            }
            .into_sqlite());
        }
    };
    Ok(GpuHealth {
        gpu,
        healthy,
        by: r.get(2)?,
        at: r.get(3)?,
    })
}

/// A registered node from columns 0..2 (name, record).
fn row_to_node(r: &rusqlite::Row<'_>) -> rusqlite::Result<crate::nodes::RegisteredNode> {
    let (name, record): (String, String) = (r.get(0)?, r.get(1)?);
    serde_json::from_str(&record).map_err(|e| {
        BadValue {
            table: "registered_nodes",
            row: name,
            column: "record",
            problem: e.to_string(),
        }
        .into_sqlite()
    })
}

/// A job and its placement from columns 0..3 (job, node, attempt).
fn row_to_placement(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Placement)> {
    let placement = Placement {
        node: r.get(1)?,
        attempt: r.get::<_, i64>(2)? as u64,
    };
    Ok((r.get(0)?, placement))
}

/// The columns [`row_to_job`] reads.
macro_rules! job_columns {
    () => {
        "id, tenant, owner, gpus, memory_per_gpu_mib, est_runtime_s, state, gpu_ids, reason,
         submitted_at, train, result, crashes, not_before, command"
    };
}
const JOB_COLUMNS: &str = job_columns!();
const SELECT_JOB: &str = concat!("SELECT ", job_columns!(), ", mac, bodies_digest FROM jobs");

/// [`SELECT_JOB`]'s columns without the bodies (`train`, `command`: NULL), then the job's
/// kind ([`Listed`]).
const SELECT_LISTED: &str = "SELECT id, tenant, owner, gpus, memory_per_gpu_mib, est_runtime_s,
    state, gpu_ids, reason, submitted_at, NULL, result, crashes, not_before, NULL, mac,
    bodies_digest,
    CASE WHEN train IS NOT NULL THEN 'train' WHEN command IS NOT NULL THEN 'command' END
    FROM jobs";

fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    let id: String = r.get(0)?;
    let state: String = r.get(6)?;
    // An unknown state is a corrupt row, never a default: read as "pending", a finished job
    // would run again and hold GPUs.
    let state = JobState::parse(&state).ok_or_else(|| {
        BadValue {
            table: "jobs",
            row: id.clone(),
            column: "state",
            problem: format!("unknown state {state:?}"),
        }
        .into_sqlite()
    })?;
    let result = match r.get::<_, Option<String>>(11)? {
        None => None,
        Some(_) => Some(json_column(r, 11, "jobs", &id, "result")?),
    };
    let command = match r.get::<_, Option<String>>(14)? {
        None => None,
        Some(_) => Some(json_column(r, 14, "jobs", &id, "command")?),
    };
    Ok(JobRecord {
        tenant: r.get(1)?,
        owner: r.get(2)?,
        gpus: r.get(3)?,
        memory_per_gpu_mib: count_column(r, 4, "jobs", &id, "memory_per_gpu_mib")?,
        est_runtime_s: r.get(5)?,
        state,
        gpu_ids: json_column(r, 7, "jobs", &id, "gpu_ids")?,
        reason: r.get(8)?,
        submitted_at: r.get(9)?,
        train: r.get(10)?,
        command,
        result,
        crashes: r.get(12)?,
        not_before: r.get(13)?,
        id,
    })
}

/// A user from columns `at..at + 4` (name, roles, tenants, clearance).
/// A `tokens` row's columns that its MAC covers, as read.
struct TokenColumns {
    id: String,
    user: String,
    salt: Vec<u8>,
    hash: Vec<u8>,
    expires_at: Option<f64>,
    revoked_at: Option<f64>,
}

impl TokenColumns {
    /// What [`TokenColumns::read`] reads, first in a `SELECT`.
    const SELECT: &str = "id, user, salt, hash, expires_at, revoked_at";

    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenColumns> {
        Ok(TokenColumns {
            id: r.get(0)?,
            user: r.get(1)?,
            salt: r.get(2)?,
            hash: r.get(3)?,
            expires_at: r.get(4)?,
            revoked_at: r.get(5)?,
        })
    }

    fn row(&self) -> TokenRow<'_> {
        TokenRow {
            id: &self.id,
            user: &self.user,
            salt: &self.salt,
            hash: &self.hash,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
        }
    }
}

fn row_to_user(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<User> {
    let name: String = r.get(at)?;
    Ok(User {
        roles: json_column(r, at + 1, "users", &name, "roles")?,
        tenants: json_column(r, at + 2, "users", &name, "tenants")?,
        clearance: r.get(at + 3)?,
        name,
    })
}

/// Unix time in seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::super::jobstore::{JobStore, contract};
    use super::*;
    use contract::job;

    /// Under a key file, a users or tokens row changed while the database is open (by a writer
    /// of the disk, not through Gantry) is refused where it is read: a token lookup names it.
    #[test]
    fn account_rows_changed_outside_gantry_are_refused_where_they_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("gantry.db")).unwrap();
        db.authenticate_rows(&[7; 32]);
        let ada = User {
            name: "ada".into(),
            roles: vec!["researcher".into()],
            tenants: vec!["vision".into()],
            clearance: "public".into(),
        };
        db.put_user(&ada).unwrap();
        db.put_token("t1", "ada", b"salt", b"hash", None).unwrap();
        db.put_token("t2", "ada", b"salt", b"hash", Some(9e9))
            .unwrap();
        assert_eq!(db.token("t1").unwrap().unwrap().user, ada);
        assert_eq!(db.revoke_tokens("ada", Some("t2")).unwrap(), ["t2"]);
        assert!(db.token("t2").unwrap().unwrap().revoked_at.is_some());
        db.check().unwrap();
        let refused = |e: DbError, row: &str| {
            let e = e.to_string();
            assert!(e.contains(row) && e.contains("column mac"), "{e}");
        };
        let tamper = |sql: &str| db.conn().execute_batch(sql).unwrap();
        tamper(r#"UPDATE users SET roles = '["admin"]'"#);
        refused(db.token("t1").unwrap_err(), "table users, row ada");
        refused(db.user("ada").unwrap_err(), "table users, row ada");
        refused(db.check().unwrap_err(), "table users, row ada");
        tamper(r#"UPDATE users SET roles = '["researcher"]'"#);
        db.token("t1").unwrap();
        // A hash of the writer's choosing; a revocation taken back; a row without a MAC.
        tamper("UPDATE tokens SET hash = x'00' WHERE id = 't1'");
        refused(db.token("t1").unwrap_err(), "table tokens, row t1");
        refused(
            db.revoke_tokens("ada", None).unwrap_err(),
            "table tokens, row t1",
        );
        tamper("UPDATE tokens SET revoked_at = NULL WHERE id = 't2'");
        refused(db.token("t2").unwrap_err(), "table tokens, row t2");
        tamper(
            "INSERT INTO tokens(id, user, salt, hash, created_at) VALUES ('t3', 'ada', x'00', x'00', 0)",
        );
        refused(db.token("t3").unwrap_err(), "table tokens, row t3");
        refused(db.tokens(Some("ada")).unwrap_err(), "table tokens, row t");
        // Without the key (no key file), rows are read as they are.
        let plain = Db::open(&dir.path().join("gantry.db")).unwrap();
        assert!(plain.token("t3").unwrap().is_some());
    }

    /// `gantry key seal` over more rows than it reads at a time: every row authenticated once,
    /// none skipped at a page's edge.
    #[test]
    fn rows_written_before_the_key_file_are_authenticated_past_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gantry.db");
        let before = Db::open(&path).unwrap();
        let n = ROWS_PAGE + 1;
        for i in 0..n {
            let id = format!("vision/j{i}");
            before.insert_job(&job(&id)).unwrap();
            before.add_checkpoint(&id, 1, "aa").unwrap();
        }
        drop(before);
        let db = Db::open(&path).unwrap();
        db.authenticate_rows(&[7; 32]);
        assert!(db.check().is_err(), "refused before");
        assert_eq!(db.authenticate_unmarked_rows().unwrap(), 2 * n);
        assert_eq!(db.authenticate_unmarked_rows().unwrap(), 0, "once");
        db.check().unwrap();
        assert_eq!(JobStore::jobs(&db).unwrap().len(), n);
        let last = format!("vision/j{}", n - 1);
        assert_eq!(db.latest_checkpoint(&last).unwrap(), Some((1, "aa".into())));
    }

    /// Under a key file, a jobs, datasets, checkpoints or settings row planted or changed by a
    /// writer of the disk (a command of theirs run as a tenant's job, a dataset's classification
    /// lowered, a job resuming from another tenant's weights, another key for the audit log) is
    /// refused where it is read, a listing too; the rows of an earlier version are authenticated once
    /// asked (`gantry key seal`), and a job moving through its life keeps its MAC.
    #[test]
    fn job_and_dataset_rows_changed_outside_gantry_are_refused_where_they_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gantry.db");
        // Written before the key file: read as they are until authenticated.
        let before = Db::open(&path).unwrap();
        let command: crate::command::CommandSpec =
            serde_json::from_value(serde_json::json!({"argv": ["sh", "-c", "true"]})).unwrap();
        let old = JobRecord {
            command: Some(command.clone()),
            ..job("vision/old")
        };
        before.insert_job(&old).unwrap();
        let dataset = |name: &str| DatasetRecord {
            name: key("vision", name),
            tenant: "vision".into(),
            classification: "secret".into(),
            object: "ab".repeat(32),
            bytes: 7,
            owner: "ada".into(),
            created_at: 1.5,
        };
        before.insert_dataset(&dataset("old.csv")).unwrap();
        before.add_checkpoint("vision/old", 3, "aa").unwrap();
        drop(before);
        let db = Db::open(&path).unwrap();
        db.authenticate_rows(&[7; 32]);
        let refused = |e: DbError, row: &str| {
            let e = e.to_string();
            assert!(e.contains(row) && e.contains("column mac"), "{e}");
        };
        refused(
            db.job("vision/old").unwrap_err(),
            "table jobs, row vision/old",
        );
        refused(db.check().unwrap_err(), "row vision/old");
        refused(
            db.latest_checkpoint("vision/old").unwrap_err(),
            "table checkpoints, row vision/old step 3",
        );
        assert_eq!(db.authenticate_unmarked_rows().unwrap(), 3);
        assert_eq!(
            db.latest_checkpoint("vision/old").unwrap(),
            Some((3, "aa".into()))
        );
        assert_eq!(db.job("vision/old").unwrap().unwrap(), old);
        db.check().unwrap();

        let trains = JobRecord {
            train: Some("[model]\nlayers = [4, 2]\n".into()),
            est_runtime_s: 0.1 + 0.2,
            submitted_at: 1.0e9 / 3.0,
            ..job("vision/trains")
        };
        db.insert_job(&trains).unwrap();
        db.insert_dataset(&dataset("new.csv")).unwrap();
        // Its life changes its state, placement and result, never its MAC's content.
        db.transition(
            "vision/trains",
            None,
            JobState::Scheduled,
            &["g0".into()],
            None,
        )
        .unwrap();
        db.run_started("vision/trains").unwrap();
        db.set_result("vision/trains", &serde_json::json!({"loss": 0.5}))
            .unwrap();
        db.transition("vision/trains", None, JobState::Succeeded, &[], None)
            .unwrap();
        assert_eq!(
            db.job("vision/trains").unwrap().unwrap().train,
            trains.train
        );
        assert_eq!(db.jobs_page(None, None, 10).unwrap().len(), 2);
        db.check().unwrap();

        let tamper = |sql: &str| db.conn().execute_batch(sql).unwrap();
        // Another program: the listing, which reads no bodies, checks them by their digest.
        tamper(
            r#"UPDATE jobs SET command = '{"argv":["sh","-c","evil"]}' WHERE id = 'vision/old'"#,
        );
        refused(
            db.job("vision/old").unwrap_err(),
            "table jobs, row vision/old",
        );
        refused(db.jobs().unwrap_err(), "table jobs, row vision/old");
        refused(db.jobs_named("old").unwrap_err(), "row vision/old");
        refused(db.check().unwrap_err(), "table jobs, row vision/old");
        tamper(r#"UPDATE jobs SET bodies_digest = NULL WHERE id = 'vision/old'"#);
        refused(db.jobs_page(None, None, 10).unwrap_err(), "row vision/old");
        tamper(
            "DELETE FROM checkpoints WHERE job = 'vision/old'; DELETE FROM jobs WHERE id = 'vision/old'",
        );
        // Another owner, more GPUs, or a job planted whole.
        tamper("UPDATE jobs SET owner = 'eve' WHERE id = 'vision/trains'");
        refused(
            db.jobs_page(None, None, 10).unwrap_err(),
            "row vision/trains",
        );
        tamper("UPDATE jobs SET owner = 'ada', gpus = 8 WHERE id = 'vision/trains'");
        refused(db.job("vision/trains").unwrap_err(), "row vision/trains");
        tamper("UPDATE jobs SET gpus = 1 WHERE id = 'vision/trains'");
        db.check().unwrap();
        tamper(
            r#"INSERT INTO jobs(id, tenant, owner, gpus, memory_per_gpu_mib, est_runtime_s, state,
                 submitted_at, seq, command)
               VALUES ('vision/planted', 'vision', 'ada', 1, 1, 1, 'pending', 0, 99,
                 '{"argv":["sh","-c","evil"]}')"#,
        );
        refused(db.job("vision/planted").unwrap_err(), "row vision/planted");
        refused(
            db.jobs_page(None, None, 10).unwrap_err(),
            "row vision/planted",
        );
        tamper("DELETE FROM jobs WHERE id = 'vision/planted'");
        // A secret dataset shown as public.
        tamper("UPDATE datasets SET classification = 'public' WHERE name = 'vision/new.csv'");
        refused(
            db.dataset("vision/new.csv").unwrap_err(),
            "table datasets, row vision/new.csv",
        );
        refused(db.datasets().unwrap_err(), "row vision/new.csv");
        refused(
            db.datasets_named("new.csv").unwrap_err(),
            "row vision/new.csv",
        );
        refused(db.check().unwrap_err(), "row vision/new.csv");
        tamper("UPDATE datasets SET classification = 'secret' WHERE name = 'vision/new.csv'");
        db.check().unwrap();
        // Another tenant's checkpoint: the job would resume from (and its model show) their
        // weights.
        db.add_checkpoint("vision/trains", 5, "bb").unwrap();
        tamper("UPDATE checkpoints SET object = 'cc' WHERE job = 'vision/trains'");
        refused(
            db.latest_checkpoint("vision/trains").unwrap_err(),
            "row vision/trains step 5",
        );
        refused(db.check().unwrap_err(), "row vision/trains step 5");
        tamper("UPDATE checkpoints SET object = 'bb' WHERE job = 'vision/trains'");
        // Another key to check the audit log by.
        db.set_setting("audit.key", "ab").unwrap();
        assert_eq!(db.setting("audit.key").unwrap().as_deref(), Some("ab"));
        tamper("UPDATE settings SET value = 'cd' WHERE key = 'audit.key'");
        refused(
            db.setting("audit.key").unwrap_err(),
            "table settings, row audit.key",
        );
        refused(db.check().unwrap_err(), "table settings, row audit.key");
    }

    /// Under a key file, the rows that decide where runs go and what runs there are
    /// authenticated too: a GPU an admin took out of service put back, a node planted or given
    /// more GPUs, a run's placement moved to another node (its agent handed the run, and the
    /// job's data, at the next start), a plugin's record pointed at another component.
    #[test]
    fn marks_nodes_placements_and_plugins_changed_outside_gantry_are_refused() {
        use crate::nodes::{RegisteredGpu, RegisteredNode};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gantry.db");
        let before = Db::open(&path).unwrap();
        before.set_gpu_health("n1/gpu0", false, "ada").unwrap();
        drop(before);
        let db = Db::open(&path).unwrap();
        db.authenticate_rows(&[4; 32]);
        let refused = |e: DbError, row: &str| {
            let e = e.to_string();
            assert!(e.contains(row) && e.contains("column mac"), "{e}");
        };
        refused(
            db.gpu_health().unwrap_err(),
            "table gpu_health, row n1/gpu0",
        );
        assert_eq!(db.authenticate_unmarked_rows().unwrap(), 1);
        assert!(!db.gpu_health().unwrap()[0].healthy);
        let node = RegisteredNode {
            name: "n1".into(),
            rack: "r1".into(),
            gpus: vec![RegisteredGpu {
                ordinal: 0,
                model: "H200".into(),
                memory_mib: 141_000,
                missing: false,
            }],
            at: 1.0e9 / 7.0,
        };
        db.register_node(&node).unwrap();
        db.insert_job(&job("vision/placed")).unwrap();
        let placed = Placement {
            node: "n1".into(),
            attempt: 3,
        };
        db.set_placement("vision/placed", Some(&placed)).unwrap();
        let plugin = PluginRecord {
            name: "binpack".into(),
            kind: crate::KIND_SCHEDULER.into(),
            version: "1.0.0".into(),
            manifest: "name = \"binpack\"".into(),
            object: "ab".repeat(32),
            signature: None,
            owner: "pat".into(),
            created_at: 2.5,
        };
        db.put_plugin(&plugin).unwrap();
        assert_eq!(db.registered_nodes().unwrap(), [node]);
        assert_eq!(db.placement("vision/placed").unwrap(), Some(placed));
        assert_eq!(db.plugins(None).unwrap(), [plugin]);
        db.check().unwrap();

        let tamper = |sql: &str| db.conn().execute_batch(sql).unwrap();
        tamper("UPDATE gpu_health SET healthy = 1");
        refused(
            db.gpu_health().unwrap_err(),
            "table gpu_health, row n1/gpu0",
        );
        refused(db.check().unwrap_err(), "row n1/gpu0");
        tamper("UPDATE gpu_health SET healthy = 0");
        tamper("UPDATE registered_nodes SET record = replace(record, '141000', '999999')");
        refused(
            db.registered_nodes().unwrap_err(),
            "table registered_nodes, row n1",
        );
        refused(db.check().unwrap_err(), "row n1");
        tamper("UPDATE registered_nodes SET record = replace(record, '999999', '141000')");
        tamper("UPDATE placements SET node = 'n2'");
        refused(
            db.placement("vision/placed").unwrap_err(),
            "table placements, row vision/placed",
        );
        refused(db.check().unwrap_err(), "row vision/placed");
        tamper("UPDATE placements SET node = 'n1'");
        tamper(&format!(
            "UPDATE plugins SET object = '{}'",
            "cd".repeat(32)
        ));
        refused(db.plugins(None).unwrap_err(), "table plugins, row binpack");
        refused(db.check().unwrap_err(), "row binpack");
    }

    /// Found by a review: a job asking for 2^64-1 MiB a GPU was stored as -1 (`as i64`), and
    /// every listing, the job's own reads and the daemon's next start failed on the row. A
    /// value the database cannot hold is refused, never wrapped (the API bounds it first).
    #[test]
    fn a_value_the_database_cannot_hold_is_refused_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("gantry.db")).unwrap();
        let huge = JobRecord {
            memory_per_gpu_mib: u64::MAX,
            ..job("vision/huge")
        };
        assert!(db.insert_job(&huge).is_err());
        assert_eq!(db.job("vision/huge").unwrap(), None);
        db.check().expect("the database still checks");
    }

    /// Found by a review: another tenant's requests made a training job fail, "database is
    /// locked". A checkpoint's record read, then wrote, in a deferred transaction; when the
    /// audit log's seal (a connection of its own) committed in between, SQLite refused the
    /// upgrade to a write at once (its busy timeout does not apply to it), and the job failed.
    /// Transactions that write take the write lock first, and wait for it.
    #[test]
    fn a_write_racing_another_connections_commits_waits_rather_than_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gantry.db");
        let db = Db::open(&path).unwrap();
        let seals = Db::open(&path).unwrap();
        assert!(db.insert_job(&job("vision/a")).unwrap());
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut seq = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    seq += 1;
                    let head = Head {
                        seq,
                        hash: format!("{seq:064}"),
                    };
                    seals.set_audit_head(&head, false).unwrap();
                    // A gap for the other connection's writes, as between real seals.
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
            });
            let mut failed = Vec::new();
            for step in 0..400 {
                if let Err(e) = db.add_checkpoint("vision/a", step, &format!("o{step}")) {
                    failed.push(e.to_string());
                }
                if let Err(e) = db.forget_finished("vision", 0, 1) {
                    failed.push(e.to_string());
                }
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            assert!(
                failed.is_empty(),
                "{} failed: {:?}",
                failed.len(),
                failed.first()
            );
        });
    }

    /// Found by a review: a job (or dataset) looked up by name, as every `GET /v1/jobs/{id}`
    /// does, compared each row's key with its own tenant column: no index could serve it, so
    /// every lookup scanned every job ever stored, under the database's one lock. Both use an
    /// index by the name part of the key now.
    #[test]
    fn a_lookup_by_name_uses_an_index_not_a_scan_of_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("gantry.db")).unwrap();
        for (sql, index) in [
            (format!("{SELECT_JOB} {JOBS_NAMED}"), "jobs_by_name"),
            (
                format!("{SELECT_DATASET} {DATASETS_NAMED}"),
                "datasets_by_name",
            ),
        ] {
            let conn = db.conn();
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let plan: Vec<String> = stmt
                .query_map(params!["a"], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(plan.contains(index), "{plan}");
        }
        // And they find what they found before (the job store's contract checks the rest).
        db.insert_dataset(&DatasetRecord {
            name: key("vision", "d"),
            tenant: "vision".into(),
            classification: "public".into(),
            object: "o".into(),
            bytes: 1,
            owner: "ada".into(),
            created_at: 0.0,
        })
        .unwrap();
        let found = db.datasets_named("d").unwrap();
        assert_eq!(found.len(), 1);
        assert!(db.datasets_named("vision").unwrap().is_empty());
    }

    /// Flips one bit of every occurrence of `text` in the database file (the row, and an index
    /// entry when the column is indexed, so the file stays consistent and only the value is
    /// wrong).
    fn flip(path: &Path, text: &[u8], at: usize, bit: u8) {
        let mut bytes = std::fs::read(path).unwrap();
        let found: Vec<usize> = bytes
            .windows(text.len())
            .enumerate()
            .filter(|(_, w)| *w == text)
            .map(|(i, _)| i)
            .collect();
        assert!(!found.is_empty(), "{:?}", String::from_utf8_lossy(text));
        for i in found {
            bytes[i + at] ^= bit;
        }
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn the_stored_transition_relation_is_exactly_the_lifecycle_table() {
        let dir = tempfile::tempdir().unwrap();
        contract::transition_table(&Db::open(&dir.path().join("gantry.db")).unwrap());
    }

    #[test]
    fn sqlite_keeps_records_logs_and_checkpoints_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("gantry.db")).unwrap();
        contract::records_logs_and_checkpoints(&db);
        contract::logs_once(&db);
        contract::placements(&db);
        contract::pages(&db);
        contract::forgets_finished(&db);
    }

    /// The same, its rows authenticated as under a key file.
    #[test]
    fn sqlite_with_authenticated_rows_keeps_records_logs_and_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("gantry.db")).unwrap();
        db.authenticate_rows(&[9; 32]);
        contract::records_logs_and_checkpoints(&db);
        contract::placements(&db);
        contract::pages(&db);
        contract::forgets_finished(&db);
        contract::transition_table(&db);
        db.check().unwrap();
    }

    #[test]
    fn in_sqlite_racing_moves_of_a_job_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        contract::racing_moves_have_one_winner(&Db::open(&dir.path().join("gantry.db")).unwrap());
    }

    /// A cancel wins over the end of the run it stopped: the run's late "succeeded" (or a
    /// restart of the run) is refused with a typed error and the job stays cancelled.
    #[test]
    fn a_late_success_after_a_cancel_is_refused_and_the_job_stays_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        contract::terminal_is_final(&Db::open(&dir.path().join("gantry.db")).unwrap());
    }

    /// Issue 10, section 3: one flipped bit in SQLite row data turned a user's tenants into none
    /// and a finished job into a pending one; both must be errors naming table, row and column.
    #[test]
    fn a_flipped_byte_in_row_data_is_an_error_naming_table_row_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gantry.db");
        let db = Db::open(&path).unwrap();
        db.put_user(&User {
            name: "ada".into(),
            roles: vec!["researcher".into()],
            tenants: vec!["vision".into()],
            clearance: "public".into(),
        })
        .unwrap();
        let token = super::super::auth::issue(&db, "ada").unwrap();
        assert!(db.insert_job(&job("v1")).unwrap());
        for to in [JobState::Scheduled, JobState::Running, JobState::Succeeded] {
            db.transition("v1", None, to, &[], None).unwrap();
        }
        drop(db); // closing moves the WAL into the file
        flip(&path, b"[\"vision\"]", 9, 0x20); // ] -> }
        flip(&path, b"succeeded", 0, 0x20); // s -> S
        let db = Db::open(&path).unwrap();
        let e = super::super::auth::check(&db, &token)
            .expect_err("a user whose tenants do not read is an error, not a user of none")
            .to_string();
        assert!(e.contains("table users, row ada, column tenants"), "{e}");
        let e = db
            .job("v1")
            .expect_err("an unknown state is an error, not pending")
            .to_string();
        assert!(e.contains("table jobs, row v1, column state"), "{e}");
        assert!(e.contains("\"Succeeded\""), "{e}");
        let e = db.check().unwrap_err().to_string();
        assert!(e.contains("table "), "{e}");
    }

    /// Bad JSON anywhere a value is JSON, and a negative size, are errors too.
    #[test]
    fn every_stored_value_is_read_strictly_and_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gantry.db");
        let db = Db::open(&path).unwrap();
        assert!(db.insert_job(&job("j")).unwrap());
        assert_eq!(db.check().unwrap(), 1);
        let raw = Connection::open(&path).unwrap();
        for (sql, names) in [
            (
                "UPDATE jobs SET gpu_ids = '[\"a\"' WHERE id = 'j'",
                "column gpu_ids",
            ),
            (
                "UPDATE jobs SET result = '{' WHERE id = 'j'",
                "column result",
            ),
            (
                "UPDATE jobs SET memory_per_gpu_mib = -1 WHERE id = 'j'",
                "memory_per_gpu_mib",
            ),
            (
                "INSERT INTO job_curves(job, curve) VALUES ('j', 'nope')",
                "column curve",
            ),
        ] {
            raw.execute_batch(sql).unwrap();
            let e = db.check().unwrap_err().to_string();
            assert!(e.contains(names), "{sql}: {e}");
            raw.execute_batch(
                "UPDATE jobs SET gpu_ids = '[]', result = NULL, memory_per_gpu_mib = 1 WHERE id = 'j';
                 DELETE FROM job_curves;",
            )
            .unwrap();
            db.check().unwrap();
        }
    }

    /// A data directory made before ids were per tenant (and before crash accounting) opens
    /// with every job, event, checkpoint, curve and dataset under its new key.
    #[test]
    fn a_database_of_the_first_schema_is_brought_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute_batch(
                "INSERT INTO jobs(id, tenant, owner, gpus, memory_per_gpu_mib, est_runtime_s,
                   state, gpu_ids, submitted_at, seq) VALUES
                   ('t1', 'vision', 'ada', 1, 1, 1.0, 'running', '[]', 0.0, 1);
                 INSERT INTO job_events(job, at, message) VALUES ('t1', 0.0, 'submitted');
                 INSERT INTO checkpoints(job, step, object) VALUES ('t1', 100, 'abc');
                 INSERT INTO job_curves(job, curve) VALUES ('t1', '{}');
                 INSERT INTO datasets(name, tenant, classification, object, bytes, owner,
                   created_at) VALUES ('pets.csv', 'vision', 'internal', 'abc', 3, 'ada', 0.0);",
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let job = db
            .job("vision/t1")
            .unwrap()
            .expect("the job under its new key");
        assert_eq!((job.state, job.crashes), (JobState::Running, 0));
        assert_eq!(db.jobs_named("t1").unwrap().len(), 1);
        assert_eq!(db.logs("vision/t1").unwrap().len(), 1);
        // Entries kept once by a key, beside those that have none.
        assert!(db.log_once("vision/t1", "1-a-1", "reported").unwrap());
        assert!(!db.log_once("vision/t1", "1-a-1", "reported").unwrap());
        assert_eq!(db.logs("vision/t1").unwrap().len(), 2);
        assert_eq!(
            db.latest_checkpoint("vision/t1").unwrap(),
            Some((100, "abc".to_string()))
        );
        assert!(db.dataset("vision/pets.csv").unwrap().is_some());
        // Serialized for the API, keys show as names.
        let shown = serde_json::to_value(&job).unwrap();
        assert_eq!(shown["id"], "t1");
        // Opening again changes nothing.
        drop(db);
        let db = Db::open(&path).unwrap();
        assert!(db.job("vision/t1").unwrap().is_some());
    }
}
