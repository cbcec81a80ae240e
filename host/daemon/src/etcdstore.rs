//! Jobs in etcd (issue 13): the [`JobStore`] a control plane of several replicas shares, as the
//! SQLite [`crate::db::Db`] is one machine's. The same contract, checked by the same tests
//! ([`crate::jobstore::contract`]).
//!
//! Layout under a root prefix: `jobs/<tenant>/<name>` holds a job's record as JSON (the key is
//! the authority for its id), `logs/<job>/<unique>` one log entry each, `curves/<job>` its
//! metrics, `checkpoints/<job>/<step>` its checkpoints. Submission and log order are etcd's own
//! commit order (each key's create revision). Every change of a job is a compare-and-set on the
//! job's mod revision, so two writers never both win a move; and every write carries the
//! leader's fence when one is given ([`gantry_etcd::election::Candidate::fence`]), so a replica
//! that no longer leads can change nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gantry_etcd::{Compare, Etcd, EtcdError, Kv, Op};

use crate::curve::Curve;
use crate::db::rowmac::{
    Authenticated, Checkpoint, Covered, Placed, RowMac, Signed, Submitted, marked_word,
    split_marked,
};
use crate::db::{JobRecord, JobState, TransitionError, now};
use crate::jobstore::{JobStore, Listed, Placement};

/// The compare a leader's writes carry; `None` while this replica does not lead.
pub use gantry_etcd::Fence;

/// How often a job's compare-and-set is retried against other writers before giving up.
const MAX_RETRIES: u32 = 64;

/// What went wrong keeping jobs in etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdStoreError {
    /// etcd failed or could not be reached.
    #[error(transparent)]
    Etcd(EtcdError),
    /// A stored value this version cannot read (corruption is an error, never a default).
    #[error("etcd key `{key}`: {problem}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong with its value.
        problem: String,
    },
    /// This replica does not lead (any more): its write was refused.
    #[error("this control plane does not lead: the write was refused")]
    NotLeader,
    /// Other writers kept changing the job first.
    #[error("job `{0}`: other writers kept changing it first ({MAX_RETRIES} tries)")]
    Contended(String),
}

impl From<EtcdError> for EtcdStoreError {
    fn from(e: EtcdError) -> Self {
        match e {
            EtcdError::Fenced => EtcdStoreError::NotLeader,
            e => EtcdStoreError::Etcd(e),
        }
    }
}

/// Jobs kept in etcd under a root prefix.
pub struct EtcdJobs {
    etcd: Arc<Etcd>,
    root: String,
    fence: Option<Fence>,
    /// Makes log keys unique within this process.
    entries: AtomicU64,
    /// Set where a key file is in use: each job is written with its MAC and read only when
    /// its MAC verifies, as [`crate::db::Db::authenticate_rows`].
    rows: Option<RowMac>,
}

/// A job as etcd keeps it: its record, and its MAC where rows are authenticated.
#[derive(serde::Serialize)]
struct JobValue<'a> {
    #[serde(flatten)]
    job: &'a JobRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    mac: Option<&'a str>,
}

/// A [`JobValue`] read back.
#[derive(serde::Deserialize)]
struct StoredJob {
    #[serde(flatten)]
    job: JobRecord,
    #[serde(default)]
    mac: Option<String>,
}

impl std::fmt::Debug for EtcdJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdJobs")
            .field("endpoints", &self.etcd.endpoints())
            .field("root", &self.root)
            .field("fenced", &self.fence.is_some())
            .finish()
    }
}

impl Authenticated for EtcdJobs {
    fn with_rows(mut self, rows: Option<RowMac>) -> EtcdJobs {
        self.rows = rows;
        self
    }
}

impl EtcdJobs {
    /// Jobs under `root` (`gantry`, say) in `etcd`; every write carries `fence` when given.
    pub fn new(etcd: Arc<Etcd>, root: &str, fence: Option<Fence>) -> EtcdJobs {
        EtcdJobs {
            etcd,
            root: root.trim_end_matches('/').to_string(),
            fence,
            entries: AtomicU64::new(0),
            rows: None,
        }
    }

    /// Job `job`'s placement `p` as etcd keeps it, with its MAC where rows are authenticated.
    fn placement_value(&self, job: &str, p: &Placement) -> Vec<u8> {
        let mac = (self.rows.as_ref()).map(|rows| rows.sign(&Placed { job, placement: p }));
        serde_json::to_vec(&Signed { value: p, mac }).expect("a placement serialises")
    }

    /// `job` as etcd keeps it, `mac` its MAC.
    fn value(job: &JobRecord, mac: Option<&str>) -> Vec<u8> {
        serde_json::to_vec(&JobValue { job, mac }).expect("a job serialises")
    }

    fn key(&self, kind: &str, rest: &str) -> Vec<u8> {
        format!("{}/{kind}/{rest}", self.root).into_bytes()
    }

    /// A transaction with the leader's fence added to `compare`.
    fn write(
        &self,
        mut compare: Vec<Compare>,
        success: &[Op],
        failure: &[Op],
    ) -> Result<gantry_etcd::TxnOutcome, EtcdStoreError> {
        if let Some(fence) = &self.fence {
            compare.push(fence().ok_or(EtcdStoreError::NotLeader)?);
        }
        Ok(self.etcd.txn(&compare, success, failure)?)
    }

    /// A write that only the fence can refuse.
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), EtcdStoreError> {
        let outcome = self.write(Vec::new(), &[Op::Put(key, value, 0)], &[])?;
        if outcome.succeeded {
            Ok(())
        } else {
            Err(EtcdStoreError::NotLeader)
        }
    }

    /// The job in `kv`, and its MAC, unchecked.
    fn decode_stored(&self, kv: &Kv) -> Result<StoredJob, EtcdStoreError> {
        let prefix = format!("{}/jobs/", self.root);
        let id = String::from_utf8_lossy(&kv.key)
            .strip_prefix(&prefix)
            .ok_or_else(|| corrupt(&kv.key, "not a job's key"))?
            .to_string();
        let mut stored: StoredJob = decode(&kv.key, &kv.value)?;
        // The record shows its name only; the key says whose it is.
        stored.job.id = id;
        Ok(stored)
    }

    /// The job in `kv`, and its MAC, checked where rows are authenticated.
    fn checked(&self, kv: &Kv) -> Result<StoredJob, EtcdStoreError> {
        let stored = self.decode_stored(kv)?;
        if let Some(rows) = &self.rows {
            (rows.verify(&Submitted::whole(&stored.job), stored.mac.as_deref()))
                .map_err(|bad| corrupt(&kv.key, bad.problem))?;
        }
        Ok(stored)
    }

    fn decode_job(&self, kv: &Kv) -> Result<JobRecord, EtcdStoreError> {
        Ok(self.checked(kv)?.job)
    }

    fn read_job(&self, id: &str) -> Result<Option<(StoredJob, i64)>, EtcdStoreError> {
        match self.etcd.get(&self.key("jobs", id))? {
            Some(kv) => Ok(Some((self.checked(&kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    /// Gives every job, placement and checkpoint without a MAC its MAC (rows are authenticated: see
    /// [`EtcdJobs::authenticated_as`]): those written before the key file was in use. One
    /// changed meanwhile is left to the next call; one whose MAC does not verify stays refused.
    /// Returns how many it authenticated.
    pub fn authenticate_unmarked(&self) -> Result<usize, EtcdStoreError> {
        let Some(rows) = &self.rows else {
            return Ok(0);
        };
        let put =
            |compare: &[Compare], ops: &[Op]| Ok(self.write(compare.to_vec(), ops, &[])?.succeeded);
        let jobs = rewrite_each(
            &self.etcd,
            &self.key("jobs", ""),
            |kv| {
                let stored = self.decode_stored(kv)?;
                let mac = || rows.sign(&Submitted::whole(&stored.job));
                Ok(stored
                    .mac
                    .is_none()
                    .then(|| Self::value(&stored.job, Some(&mac()))))
            },
            put,
        )?;
        let placements = self.key("placements", "");
        let placed = rewrite_each(
            &self.etcd,
            &placements,
            |kv| {
                let job = String::from_utf8_lossy(&kv.key[placements.len()..]);
                let signed: Signed<Placement> = decode(&kv.key, &kv.value)?;
                Ok(signed
                    .mac
                    .is_none()
                    .then(|| self.placement_value(&job, &signed.value)))
            },
            put,
        )?;
        let checkpoints = self.key("checkpoints", "");
        let kept = rewrite_each(
            &self.etcd,
            &checkpoints,
            |kv| {
                let value = String::from_utf8_lossy(&kv.value);
                let (object, None) = split_marked(&value) else {
                    return Ok(None);
                };
                let key = String::from_utf8_lossy(&kv.key[checkpoints.len()..]);
                let Some((job, step)) = key.rsplit_once('/') else {
                    return Err(corrupt(&kv.key, "not a checkpoint's key"));
                };
                let step: u32 = step
                    .parse()
                    .map_err(|_| corrupt(&kv.key, "not a step number"))?;
                let checkpoint = Checkpoint { job, step, object };
                Ok(Some(
                    marked_word(Some(rows), object, &checkpoint).into_bytes(),
                ))
            },
            put,
        )?;
        Ok(jobs + placed + kept)
    }

    /// Changes job `id` by `change` as one compare-and-set, retried while other writers win;
    /// returns the job as it was.
    fn update(
        &self,
        id: &str,
        mut change: impl FnMut(&mut JobRecord) -> Result<(), TransitionError<EtcdStoreError>>,
    ) -> Result<JobRecord, TransitionError<EtcdStoreError>> {
        let key = self.key("jobs", id);
        for _ in 0..MAX_RETRIES {
            let (StoredJob { job: was, mac }, revision) = self
                .read_job(id)?
                .ok_or_else(|| TransitionError::NoJob(id.to_string()))?;
            let mut job = was.clone();
            change(&mut job)?;
            // What the MAC covers was submitted and never changes: it stays the job's.
            let value = Self::value(&job, mac.as_deref());
            let mut ops = vec![Op::Put(key.clone(), value, 0)];
            if job.state.is_final() && !was.state.is_final() {
                // The tenant's order of ends (its key's create revision), for
                // `forget_finished`.
                ops.push(Op::Put(self.key("ended", id), Vec::new(), 0));
            }
            let outcome = self.write(
                vec![Compare::Modified(key.clone(), revision)],
                &ops,
                &[Op::Get(key.clone())],
            )?;
            if outcome.succeeded {
                return Ok(was);
            }
            // Refused with the job unchanged: the fence, not another writer, said no.
            let now = outcome.gets.into_iter().flatten().next();
            if now.is_some_and(|kv| kv.mod_revision == revision) {
                return Err(EtcdStoreError::NotLeader.into());
            }
        }
        Err(EtcdStoreError::Contended(id.to_string()).into())
    }

    /// Every key under `kind/<rest>`, in commit order.
    fn in_commit_order(&self, kind: &str, rest: &str) -> Result<Vec<Kv>, EtcdStoreError> {
        let mut kvs = self.etcd.prefix(&self.key(kind, rest), 0)?;
        kvs.sort_by_key(|kv| kv.create_revision);
        Ok(kvs)
    }
}

/// Runs `copy` unless `marker` exists in `etcd`, then creates `marker`: what the first leader
/// copies from its data directory into etcd, once (never again, so that no replica's older copy
/// undoes what was changed through the control plane since). `copy` only creates what is absent,
/// so a copy cut short is finished by the next leader. `None` when it was done before.
pub(crate) fn seed_once<T, E: std::fmt::Display>(
    etcd: &Etcd,
    marker: &[u8],
    copy: impl FnOnce() -> Result<T, E>,
) -> Result<Option<T>, String> {
    if etcd.get(marker).map_err(|e| e.to_string())?.is_some() {
        return Ok(None);
    }
    let copied = copy().map_err(|e| e.to_string())?;
    etcd.txn(
        &[Compare::Created(marker.to_vec(), 0)],
        &[Op::Put(marker.to_vec(), b"1".to_vec(), 0)],
        &[],
    )
    .map_err(|e| e.to_string())?;
    Ok(Some(copied))
}

/// A value of `key` that this version cannot read.
pub(crate) fn corrupt(key: &[u8], problem: impl Into<String>) -> EtcdStoreError {
    EtcdStoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        problem: problem.into(),
    }
}

/// `key`'s JSON value, or an error naming the key.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    key: &[u8],
    value: &[u8],
) -> Result<T, EtcdStoreError> {
    serde_json::from_slice(value).map_err(|e| corrupt(key, e.to_string()))
}

/// `value` as etcd keeps it: with its MAC where `rows` authenticates rows.
pub(crate) fn signed_value<T: Covered + serde::Serialize>(
    rows: Option<&RowMac>,
    value: &T,
) -> Vec<u8> {
    let mac = rows.map(|rows| rows.sign(value));
    serde_json::to_vec(&Signed { value, mac }).expect("a value serialises")
}

/// The value in `kv` ([`signed_value`]), its MAC checked where `rows` authenticates rows.
pub(crate) fn checked_value<T: Covered + serde::de::DeserializeOwned>(
    rows: Option<&RowMac>,
    kv: &Kv,
) -> Result<T, EtcdStoreError> {
    let signed: Signed<T> = decode(&kv.key, &kv.value)?;
    if let Some(rows) = rows {
        (rows.verify(&signed.value, signed.mac.as_deref()))
            .map_err(|bad| corrupt(&kv.key, bad.problem))?;
    }
    Ok(signed.value)
}

/// Gives every value under `prefix` in `etcd` without a MAC its MAC (as [`signed_value`]
/// writes it), as [`rewrite_each`] does; how many. For `--authenticate-etcd-rows`.
pub(crate) fn sign_unmarked<T>(
    etcd: &Etcd,
    rows: &RowMac,
    prefix: &[u8],
) -> Result<usize, EtcdStoreError>
where
    T: Covered + serde::Serialize + serde::de::DeserializeOwned,
{
    let sign = |kv: &Kv| {
        let signed: Signed<T> = decode(&kv.key, &kv.value)?;
        Ok(signed
            .mac
            .is_none()
            .then(|| signed_value(Some(rows), &signed.value)))
    };
    let put = |compare: &[Compare], ops: &[Op]| Ok(etcd.txn(compare, ops, &[])?.succeeded);
    rewrite_each(etcd, prefix, sign, put)
}

/// Rewrites each value under `prefix` in `etcd` that `rewrite` gives a new value for (one
/// without a MAC: it with its MAC), each written by `put` as a compare-and-set on the revision
/// read, so that one changed meanwhile is left to the next call; how many were written. Read a
/// page at a time: an operator's one-time act over a whole store (jobs with their bodies), never
/// all of it in memory.
pub(crate) fn rewrite_each(
    etcd: &Etcd,
    prefix: &[u8],
    mut rewrite: impl FnMut(&Kv) -> Result<Option<Vec<u8>>, EtcdStoreError>,
    mut put: impl FnMut(&[Compare], &[Op]) -> Result<bool, EtcdStoreError>,
) -> Result<usize, EtcdStoreError> {
    let mut done = 0;
    etcd.prefix_pages(prefix, |page| {
        for kv in page {
            if let Some(value) = rewrite(&kv)? {
                let compare = [Compare::Modified(kv.key.clone(), kv.mod_revision)];
                done += usize::from(put(&compare, &[Op::Put(kv.key, value, 0)])?);
            }
        }
        Ok::<(), EtcdStoreError>(())
    })?;
    Ok(done)
}

/// Every value under `prefix`, in key order, each decoded as [`decode`] does.
pub(crate) fn decode_prefix<T: serde::de::DeserializeOwned>(
    etcd: &gantry_etcd::Etcd,
    prefix: &[u8],
) -> Result<Vec<T>, EtcdStoreError> {
    etcd.prefix(prefix, 0)?
        .iter()
        .map(|kv| decode(&kv.key, &kv.value))
        .collect()
}

/// The object a checkpoint's value names: its first word (a MAC follows where rows are
/// authenticated, [`EtcdJobs::authenticated_as`]). Unchecked: what is forgotten with it.
fn checkpoint_object(value: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(value).ok()?;
    Some(split_marked(value).0.to_string())
}

/// A job's move to `to` from `from` (`None`: whatever it is in), checked as the SQLite store
/// checks it.
fn check_move(
    job: &JobRecord,
    from: Option<JobState>,
    to: JobState,
) -> Result<(), TransitionError<EtcdStoreError>> {
    if let Some(expected) = from.filter(|f| *f != job.state) {
        return Err(TransitionError::Moved {
            id: job.id.clone(),
            expected,
            now: job.state,
        });
    }
    if !job.state.may_become(to) {
        return Err(TransitionError::Illegal {
            id: job.id.clone(),
            from: job.state,
            to,
        });
    }
    Ok(())
}

impl JobStore for EtcdJobs {
    type Error = EtcdStoreError;

    fn insert_job(&self, job: &JobRecord) -> Result<bool, EtcdStoreError> {
        let key = self.key("jobs", &job.id);
        let mac = self
            .rows
            .as_ref()
            .map(|rows| rows.sign(&Submitted::whole(job)));
        let value = Self::value(job, mac.as_deref());
        let outcome = self.write(
            vec![Compare::Created(key.clone(), 0)],
            &[Op::Put(key.clone(), value, 0)],
            &[Op::Get(key)],
        )?;
        if outcome.succeeded {
            return Ok(true);
        }
        match outcome.gets.into_iter().flatten().next() {
            Some(_) => Ok(false),
            // Refused though the id is free: the fence said no.
            None => Err(EtcdStoreError::NotLeader),
        }
    }

    fn job(&self, id: &str) -> Result<Option<JobRecord>, EtcdStoreError> {
        Ok(self.read_job(id)?.map(|(stored, _)| stored.job))
    }

    fn jobs(&self) -> Result<Vec<JobRecord>, EtcdStoreError> {
        self.in_commit_order("jobs", "")?
            .iter()
            .map(|kv| self.decode_job(kv))
            .collect()
    }

    fn jobs_page(
        &self,
        tenants: Option<&[String]>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Listed>, EtcdStoreError> {
        // The keys alone (no values), of the callers' tenants alone, in submission order; then
        // the values of the page's jobs, read together: a listing reads every job no more.
        let mut keys = Vec::new();
        match tenants {
            None => keys = self.etcd.prefix_keys(&self.key("jobs", ""))?,
            Some(tenants) => {
                for tenant in tenants {
                    let prefix = self.key("jobs", &format!("{tenant}/"));
                    keys.extend(self.etcd.prefix_keys(&prefix)?);
                }
            }
        }
        keys.sort_by_key(|kv| kv.create_revision);
        let start = match after {
            None => 0,
            Some(id) => {
                let key = self.key("jobs", id);
                match keys.iter().position(|kv| kv.key == key) {
                    Some(at) => at + 1,
                    None => return Ok(Vec::new()),
                }
            }
        };
        let page: Vec<&Kv> = keys.iter().skip(start).take(limit).collect();
        let mut jobs = Vec::with_capacity(page.len());
        // A transaction's operations are bounded (etcd's --max-txn-ops, 128 by default).
        for chunk in page.chunks(100) {
            let gets: Vec<Op> = chunk.iter().map(|kv| Op::Get(kv.key.clone())).collect();
            let outcome = self.etcd.txn(&[], &gets, &[])?;
            // One gone since the keys were read is no longer one of them.
            for kv in outcome.gets.into_iter().flatten() {
                jobs.push(Listed::from(self.decode_job(&kv)?));
            }
        }
        Ok(jobs)
    }

    fn jobs_named(&self, name: &str) -> Result<Vec<JobRecord>, EtcdStoreError> {
        // The names alone, then only the jobs called `name`: `GET /v1/jobs/{name}` is asked
        // often and must not read every job.
        let mut named = self.etcd.prefix_keys(&self.key("jobs", ""))?;
        named.retain(|kv| crate::db::name_of(&String::from_utf8_lossy(&kv.key)) == name);
        named.sort_by_key(|kv| kv.create_revision);
        let mut jobs = Vec::new();
        for kv in named {
            // Gone since the names were read: no longer one of them.
            if let Some(kv) = self.etcd.get(&kv.key)? {
                jobs.push(self.decode_job(&kv)?);
            }
        }
        Ok(jobs)
    }

    fn counts_by_state(&self) -> Result<Vec<(String, u64)>, EtcdStoreError> {
        let mut counts = std::collections::BTreeMap::<String, u64>::new();
        for job in self.jobs()? {
            *counts.entry(job.state.as_str().to_string()).or_default() += 1;
        }
        Ok(counts.into_iter().collect())
    }

    fn transition(
        &self,
        id: &str,
        from: Option<JobState>,
        to: JobState,
        gpu_ids: &[String],
        reason: Option<&str>,
    ) -> Result<JobState, TransitionError<EtcdStoreError>> {
        let was = self.update(id, |job| {
            check_move(job, from, to)?;
            job.state = to;
            job.gpu_ids = gpu_ids.to_vec();
            job.reason = reason.map(str::to_string);
            Ok(())
        })?;
        Ok(was.state)
    }

    fn run_started(&self, id: &str) -> Result<JobState, TransitionError<EtcdStoreError>> {
        let was = self.update(id, |job| {
            check_move(job, Some(JobState::Scheduled), JobState::Running)?;
            job.state = JobState::Running;
            job.crashes += 1;
            Ok(())
        })?;
        Ok(was.state)
    }

    fn run_ended(&self, id: &str) -> Result<(), EtcdStoreError> {
        self.change(id, |job| job.crashes = job.crashes.saturating_sub(1))
    }

    fn set_not_before(&self, id: &str, at: f64) -> Result<(), EtcdStoreError> {
        self.change(id, |job| job.not_before = at)
    }

    fn log(&self, id: &str, message: &str) -> Result<(), EtcdStoreError> {
        let at = now();
        let n = self.entries.fetch_add(1, Ordering::Relaxed);
        let unique = format!("{:020}-{}-{n}", (at * 1e9) as u64, std::process::id());
        let value = serde_json::to_vec(&serde_json::json!({ "at": at, "message": message }))
            .expect("an entry serialises");
        self.put(self.key("logs", &format!("{id}/{unique}")), value)
    }

    fn log_once(&self, id: &str, key: &str, message: &str) -> Result<bool, EtcdStoreError> {
        // Reported entries' keys start with `once-`, the others' with digits: none collide.
        let key = self.key("logs", &format!("{id}/once-{key}"));
        let value = serde_json::to_vec(&serde_json::json!({ "at": now(), "message": message }))
            .expect("an entry serialises");
        let outcome = self.write(
            vec![Compare::Created(key.clone(), 0)],
            &[Op::Put(key.clone(), value, 0)],
            &[Op::Get(key)],
        )?;
        match (outcome.succeeded, outcome.gets.first()) {
            (true, _) => Ok(true),
            (false, Some(Some(_))) => Ok(false),
            // Not there, so the fence refused it.
            (false, _) => Err(EtcdStoreError::NotLeader),
        }
    }

    fn logs(&self, id: &str) -> Result<Vec<(f64, String)>, EtcdStoreError> {
        #[derive(serde::Deserialize)]
        struct Entry {
            at: f64,
            message: String,
        }
        self.in_commit_order("logs", &format!("{id}/"))?
            .into_iter()
            .map(|kv| {
                let e: Entry = decode(&kv.key, &kv.value)?;
                Ok((e.at, e.message))
            })
            .collect()
    }

    fn set_result(&self, id: &str, result: &serde_json::Value) -> Result<(), EtcdStoreError> {
        self.change(id, |job| job.result = Some(result.clone()))
    }

    fn set_curve(&self, id: &str, curve: &Curve) -> Result<(), EtcdStoreError> {
        let value = serde_json::to_vec(curve).expect("a curve serialises");
        self.put(self.key("curves", id), value)
    }

    fn curve(&self, id: &str) -> Result<Option<Curve>, EtcdStoreError> {
        let key = self.key("curves", id);
        match self.etcd.get(&key)? {
            None => Ok(None),
            Some(kv) => decode(&kv.key, &kv.value).map(Some),
        }
    }

    fn add_checkpoint(
        &self,
        job: &str,
        step: u32,
        object: &str,
    ) -> Result<Vec<String>, EtcdStoreError> {
        let prefix = format!("{}/checkpoints/{job}/", self.root);
        let before = self.etcd.prefix(prefix.as_bytes(), 0)?;
        let key = self.key("checkpoints", &format!("{job}/{step:010}"));
        let mut ops: Vec<Op> = before
            .iter()
            .filter(|kv| kv.key != key)
            .map(|kv| Op::Delete(kv.key.clone()))
            .collect();
        let checkpoint = Checkpoint { job, step, object };
        let value = marked_word(self.rows.as_ref(), object, &checkpoint);
        ops.push(Op::Put(key, value.into_bytes(), 0));
        if !self.write(Vec::new(), &ops, &[])?.succeeded {
            return Err(EtcdStoreError::NotLeader);
        }
        let mut forgotten: Vec<String> = before
            .iter()
            .filter_map(|kv| checkpoint_object(&kv.value))
            .filter(|o| o != object)
            .collect();
        forgotten.dedup();
        Ok(forgotten)
    }

    fn forget_checkpoints(&self, id: &str) -> Result<Vec<String>, EtcdStoreError> {
        let prefix = self.key("checkpoints", &format!("{id}/"));
        let mut objects: Vec<String> = self
            .etcd
            .prefix(&prefix, 0)?
            .iter()
            .filter_map(|kv| checkpoint_object(&kv.value))
            .collect();
        if !self
            .write(Vec::new(), &[Op::DeletePrefix(prefix)], &[])?
            .succeeded
        {
            return Err(EtcdStoreError::NotLeader);
        }
        objects.dedup();
        Ok(objects)
    }

    fn checkpoint_uses(&self, object: &str) -> Result<bool, EtcdStoreError> {
        // Every job's checkpoint: one per job (`add_checkpoint` keeps no more).
        let prefix = format!("{}/checkpoints/", self.root);
        let kvs = self.etcd.prefix(prefix.as_bytes(), 0)?;
        Ok(kvs
            .iter()
            .any(|kv| checkpoint_object(&kv.value).is_some_and(|o| o == object)))
    }

    fn latest_checkpoint(&self, job: &str) -> Result<Option<(u32, String)>, EtcdStoreError> {
        let prefix = format!("{}/checkpoints/{job}/", self.root);
        let kvs = self.etcd.prefix(prefix.as_bytes(), 0)?;
        let Some(kv) = kvs.last() else {
            return Ok(None);
        };
        let key = String::from_utf8_lossy(&kv.key);
        let step = key[prefix.len()..]
            .parse()
            .map_err(|_| corrupt(&kv.key, "not a step number"))?;
        let value = std::str::from_utf8(&kv.value).map_err(|e| corrupt(&kv.key, e.to_string()))?;
        let (object, mac) = split_marked(value);
        if let Some(rows) = &self.rows {
            (rows.verify(&Checkpoint { job, step, object }, mac))
                .map_err(|bad| corrupt(&kv.key, bad.problem))?;
        }
        Ok(Some((step, object.to_string())))
    }

    fn set_placement(&self, id: &str, placement: Option<&Placement>) -> Result<(), EtcdStoreError> {
        let key = self.key("placements", id);
        let op = match placement {
            Some(p) => Op::Put(key, self.placement_value(id, p), 0),
            None => Op::Delete(key),
        };
        let outcome = self.write(Vec::new(), &[op], &[])?;
        if outcome.succeeded {
            Ok(())
        } else {
            Err(EtcdStoreError::NotLeader)
        }
    }

    fn placement(&self, id: &str) -> Result<Option<Placement>, EtcdStoreError> {
        let Some(kv) = self.etcd.get(&self.key("placements", id))? else {
            return Ok(None);
        };
        let signed: Signed<Placement> = decode(&kv.key, &kv.value)?;
        if let Some(rows) = &self.rows {
            let placed = Placed {
                job: id,
                placement: &signed.value,
            };
            (rows.verify(&placed, signed.mac.as_deref()))
                .map_err(|bad| corrupt(&kv.key, bad.problem))?;
        }
        Ok(Some(signed.value))
    }
    fn kept_models(&self, tenant: &str) -> Result<Vec<String>, EtcdStoreError> {
        // Keys only: `checkpoints/<tenant>/<name>/<step>`, `ended/<tenant>/<name>`.
        let after =
            |root: &[u8], key: &[u8]| String::from_utf8_lossy(&key[root.len()..]).into_owned();
        let root = self.key("checkpoints", "");
        let named: std::collections::BTreeSet<String> = (self.etcd)
            .prefix_keys(&self.key("checkpoints", &format!("{tenant}/")))?
            .iter()
            .filter_map(|kv| Some(after(&root, &kv.key).rsplit_once('/')?.0.to_string()))
            .collect();
        let root = self.key("ended", "");
        let mut ended = self
            .etcd
            .prefix_keys(&self.key("ended", &format!("{tenant}/")))?;
        ended.sort_by_key(|kv| kv.create_revision);
        Ok(ended
            .iter()
            .map(|kv| after(&root, &kv.key))
            .filter(|id| named.contains(id))
            .collect())
    }

    fn forget_finished(
        &self,
        tenant: &str,
        keep: usize,
        at_most: usize,
    ) -> Result<Vec<(String, String)>, EtcdStoreError> {
        // The keys alone, in the order the jobs ended.
        let prefix = self.key("ended", &format!("{tenant}/"));
        let mut ended = self.etcd.prefix_keys(&prefix)?;
        let over = ended.len().saturating_sub(keep).min(at_most);
        ended.sort_by_key(|kv| kv.create_revision);
        self.forget_ended(&ended[..over])
    }
}

impl EtcdJobs {
    /// Gives each job that finished under an earlier version (before the `ended/` index) its
    /// index key, once ([`seed_once`]); how many. Without it they were never forgotten, and
    /// counted against no tenant's kept finished jobs. In submission order, and older than any
    /// end to come: the next leader's first act.
    pub fn index_ended_once(&self) -> Result<Option<usize>, String> {
        let marker = self.key("seeded", "ended");
        seed_once(&self.etcd, &marker, || {
            let mut indexed = 0;
            for kv in self.in_commit_order("jobs", "")? {
                // Its state alone: an index, which runs nothing.
                let job = self.decode_stored(&kv)?.job;
                if !job.state.is_final() {
                    continue;
                }
                let ended = self.key("ended", &job.id);
                let absent = Compare::Created(ended.clone(), 0);
                let outcome = self.write(vec![absent], &[Op::Put(ended, Vec::new(), 0)], &[])?;
                indexed += usize::from(outcome.succeeded);
            }
            Ok::<_, EtcdStoreError>(indexed)
        })
    }

    /// Forgets the jobs whose `ended/` keys were read as `ended` (a listing that may be stale
    /// by now): each only if its key is still the one read.
    fn forget_ended(&self, ended: &[Kv]) -> Result<Vec<(String, String)>, EtcdStoreError> {
        let root = self.key("ended", "");
        let mut objects = Vec::new();
        for kv in ended {
            let id = String::from_utf8_lossy(&kv.key[root.len()..]).into_owned();
            let checkpoints = self.key("checkpoints", &format!("{id}/"));
            let named: Vec<(String, String)> = self
                .etcd
                .prefix(&checkpoints, 0)?
                .iter()
                .filter_map(|kv| Some((id.clone(), checkpoint_object(&kv.value)?)))
                .collect();
            let ops = [
                Op::Delete(self.key("jobs", &id)),
                Op::Delete(self.key("curves", &id)),
                Op::Delete(self.key("placements", &id)),
                Op::DeletePrefix(self.key("logs", &format!("{id}/"))),
                Op::DeletePrefix(checkpoints),
                Op::Delete(kv.key.clone()),
            ];
            // The job that ended then, and no other: another submission's call may have
            // forgotten it meanwhile, and a new job taken its name (deleted unseen, it was queued
            // and stored nowhere).
            let same = Compare::Created(kv.key.clone(), kv.create_revision);
            let outcome = self.write(vec![same], &ops, &[Op::Get(kv.key.clone())])?;
            if outcome.succeeded {
                objects.extend(named);
                continue;
            }
            let still = outcome.gets.into_iter().flatten().next();
            if still.is_some_and(|k| k.create_revision == kv.create_revision) {
                // Refused with the key as it was: the fence said no.
                return Err(EtcdStoreError::NotLeader);
            }
        }
        Ok(objects)
    }
}

impl EtcdJobs {
    /// A change of a job's record that is not a move of its state.
    fn change(&self, id: &str, mut f: impl FnMut(&mut JobRecord)) -> Result<(), EtcdStoreError> {
        match self.update(id, |job| {
            f(job);
            Ok(())
        }) {
            Ok(_) | Err(TransitionError::NoJob(_)) => Ok(()),
            Err(TransitionError::Db(e)) => Err(e),
            Err(e) => unreachable!("a change that moves no state was refused: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobstore::contract;
    use gantry_etcd::testing::EtcdProcess;

    fn store(etcd: &EtcdProcess) -> EtcdJobs {
        EtcdJobs::new(Arc::new(etcd.client()), "gantry", None)
    }

    #[test]
    fn the_etcd_store_keeps_the_lifecycle_table() {
        let Some(etcd) = EtcdProcess::start_or_skip("the_etcd_store_keeps_the_lifecycle_table")
        else {
            return;
        };
        contract::transition_table(&store(&etcd));
    }

    #[test]
    fn in_etcd_a_late_success_after_a_cancel_is_refused() {
        let Some(etcd) = EtcdProcess::start_or_skip("in_etcd_a_late_success") else {
            return;
        };
        contract::terminal_is_final(&store(&etcd));
    }

    #[test]
    fn the_etcd_store_keeps_records_logs_and_checkpoints_in_order() {
        let Some(etcd) = EtcdProcess::start_or_skip("the_etcd_store_keeps_records") else {
            return;
        };
        contract::records_logs_and_checkpoints(&store(&etcd));
        contract::logs_once(&store(&etcd));
        contract::placements(&store(&etcd));
        contract::pages(&store(&etcd));
        contract::forgets_finished(&store(&etcd));
    }

    /// The same, its rows authenticated as under a key file.
    #[test]
    fn etcd_with_authenticated_rows_keeps_records_logs_and_checkpoints() {
        let Some(etcd) = EtcdProcess::start_or_skip("etcd_with_authenticated_rows_keeps") else {
            return;
        };
        let store = || store(&etcd).with_rows(Some(RowMac::new(&[9; 32])));
        contract::records_logs_and_checkpoints(&store());
        contract::placements(&store());
        contract::pages(&store());
        contract::forgets_finished(&store());
        contract::transition_table(&store());
    }

    /// `--authenticate-etcd-rows` over more values than etcd hands out in a page: every one
    /// authenticated once, none skipped at a page's edge.
    #[test]
    fn values_written_before_the_key_file_are_authenticated_past_a_page() {
        let Some(etcd) = EtcdProcess::start_or_skip("values_written_before_the_key_file") else {
            return;
        };
        let plain = store(&etcd);
        let keyed = store(&etcd).with_rows(Some(RowMac::new(&[5; 32])));
        let n = gantry_etcd::PAGE as usize + 1;
        for i in 0..n {
            let id = format!("vision/j{i}");
            assert!(plain.insert_job(&contract::job(&id)).unwrap());
            plain.add_checkpoint(&id, 1, "aa").unwrap();
        }
        assert!(keyed.jobs().is_err(), "refused before");
        assert_eq!(keyed.authenticate_unmarked().unwrap(), 2 * n);
        assert_eq!(keyed.authenticate_unmarked().unwrap(), 0, "once");
        assert_eq!(keyed.jobs().unwrap().len(), n);
        let last = format!("vision/j{}", n - 1);
        assert_eq!(
            keyed.latest_checkpoint(&last).unwrap(),
            Some((1, "aa".into()))
        );
    }

    /// Under a key file the jobs in etcd are authenticated as a data directory's are: one
    /// planted or changed by a writer of etcd is refused where it is read (a move of it too);
    /// those written before are authenticated once asked (`--authenticate-etcd-rows`).
    #[test]
    fn jobs_in_etcd_changed_outside_gantry_are_refused_under_a_key_file() {
        let Some(etcd) = EtcdProcess::start_or_skip("jobs_in_etcd_changed") else {
            return;
        };
        let plain = store(&etcd);
        let keyed = store(&etcd).with_rows(Some(RowMac::new(&[5; 32])));
        let command: crate::command::CommandSpec =
            serde_json::from_value(serde_json::json!({"argv": ["sh", "-c", "true"]})).unwrap();
        let old = JobRecord {
            command: Some(command),
            submitted_at: 1.0e9 / 3.0,
            ..contract::job("vision/old")
        };
        assert!(plain.insert_job(&old).unwrap());
        let refused = |e: EtcdStoreError, key: &str| {
            let e = e.to_string();
            assert!(e.contains(key) && e.contains("key file"), "{e}");
        };
        plain.add_checkpoint("vision/old", 3, "aa").unwrap();
        refused(
            keyed.job("vision/old").unwrap_err(),
            "gantry/jobs/vision/old",
        );
        refused(keyed.jobs().unwrap_err(), "gantry/jobs/vision/old");
        let checkpoint = "gantry/checkpoints/vision/old/0000000003";
        refused(
            keyed.latest_checkpoint("vision/old").unwrap_err(),
            checkpoint,
        );
        assert_eq!(plain.authenticate_unmarked().unwrap(), 0, "no key");
        assert_eq!(keyed.authenticate_unmarked().unwrap(), 2);
        assert_eq!(keyed.job("vision/old").unwrap().unwrap(), old);
        let latest = keyed.latest_checkpoint("vision/old").unwrap();
        assert_eq!(latest, Some((3, "aa".into())));
        assert!(keyed.checkpoint_uses("aa").unwrap());
        // Pointed at another tenant's checkpoint, its MAC kept.
        let kv = etcd.client().get(checkpoint.as_bytes()).unwrap().unwrap();
        let value = String::from_utf8(kv.value).unwrap().replacen("aa", "bb", 1);
        (etcd
            .client()
            .put(checkpoint.as_bytes(), value.as_bytes(), 0))
        .unwrap();
        refused(
            keyed.latest_checkpoint("vision/old").unwrap_err(),
            checkpoint,
        );
        assert_eq!(keyed.add_checkpoint("vision/old", 4, "cc").unwrap(), ["bb"]);
        let latest = keyed.latest_checkpoint("vision/old").unwrap();
        assert_eq!(latest, Some((4, "cc".into())));
        // Moves and changes keep its MAC.
        keyed
            .transition(
                "vision/old",
                None,
                JobState::Scheduled,
                &["g0".into()],
                None,
            )
            .unwrap();
        keyed.run_started("vision/old").unwrap();
        keyed.set_not_before("vision/old", 7.0).unwrap();
        assert_eq!(keyed.jobs_page(None, None, 10).unwrap().len(), 1);

        let client = etcd.client();
        let change = |key: &str, field: &str, to: serde_json::Value| {
            crate::testing::change_in_etcd(&client, &format!("gantry/jobs/{key}"), field, to)
        };
        let argv = serde_json::json!({"argv": ["sh", "-c", "evil"]});
        let was = change("vision/old", "command", argv);
        refused(
            keyed.job("vision/old").unwrap_err(),
            "gantry/jobs/vision/old",
        );
        refused(keyed.jobs_page(None, None, 10).unwrap_err(), "vision/old");
        refused(keyed.jobs_named("old").unwrap_err(), "vision/old");
        let moved = keyed.transition("vision/old", None, JobState::Cancelling, &[], None);
        assert!(matches!(moved, Err(TransitionError::Db(_))), "{moved:?}");
        change("vision/old", "command", was);
        let was = change("vision/old", "owner", "eve".into());
        refused(keyed.job("vision/old").unwrap_err(), "vision/old");
        change("vision/old", "owner", was);
        keyed.job("vision/old").unwrap();
        // A placement moved to another node.
        let placement = Placement {
            node: "n1".into(),
            attempt: 2,
        };
        plain.set_placement("vision/old", Some(&placement)).unwrap();
        refused(
            keyed.placement("vision/old").unwrap_err(),
            "gantry/placements/vision/old",
        );
        assert_eq!(keyed.authenticate_unmarked().unwrap(), 1);
        assert_eq!(keyed.placement("vision/old").unwrap(), Some(placement));
        crate::testing::change_in_etcd(
            &client,
            "gantry/placements/vision/old",
            "node",
            "n2".into(),
        );
        refused(
            keyed.placement("vision/old").unwrap_err(),
            "gantry/placements/vision/old",
        );
        // Planted whole, or its MAC taken from another job.
        let planted = contract::job("vision/planted");
        assert!(plain.insert_job(&planted).unwrap());
        refused(keyed.job("vision/planted").unwrap_err(), "vision/planted");
        let mac = change("vision/old", "mac", serde_json::Value::Null);
        change("vision/planted", "mac", mac);
        refused(keyed.job("vision/planted").unwrap_err(), "vision/planted");
    }

    #[test]
    fn in_etcd_racing_moves_of_a_job_have_one_winner() {
        let Some(etcd) = EtcdProcess::start_or_skip("in_etcd_racing_moves") else {
            return;
        };
        contract::racing_moves_have_one_winner(&store(&etcd));
    }

    #[test]
    fn a_replica_without_the_fence_changes_nothing() {
        let Some(etcd) = EtcdProcess::start_or_skip("a_replica_without_the_fence") else {
            return;
        };
        let client = Arc::new(etcd.client());
        let leader = EtcdJobs::new(client.clone(), "gantry", None);
        contract::job_in(&leader, "vision/a", JobState::Scheduled);
        // A deposed leader: its fence compares a term that is not the leader key's.
        let stale: Fence = Arc::new(|| Some(Compare::Created(b"gantry/leader".to_vec(), 12345)));
        let deposed = EtcdJobs::new(client.clone(), "gantry", Some(stale));
        let refused = deposed.transition("vision/a", None, JobState::Running, &[], None);
        assert!(
            matches!(refused, Err(TransitionError::Db(EtcdStoreError::NotLeader))),
            "{refused:?}"
        );
        let job = contract::job("vision/b");
        assert!(matches!(
            deposed.insert_job(&job),
            Err(EtcdStoreError::NotLeader)
        ));
        assert!(matches!(
            deposed.log("vision/a", "x"),
            Err(EtcdStoreError::NotLeader)
        ));
        // One that does not lead at all refuses before it asks.
        let follower = EtcdJobs::new(client, "gantry", Some(Arc::new(|| None)));
        assert!(matches!(
            follower.insert_job(&job),
            Err(EtcdStoreError::NotLeader)
        ));
        assert_eq!(
            leader.job("vision/a").unwrap().unwrap().state,
            JobState::Scheduled
        );
        assert_eq!(leader.job("vision/b").unwrap(), None);
        assert!(leader.logs("vision/a").unwrap().is_empty());
    }

    /// Found by a review of this change: jobs that finished before the `ended/` index were
    /// never forgotten. The first leader of this version indexes them, once.
    #[test]
    fn jobs_finished_before_the_index_are_indexed_once_and_then_forgotten() {
        let Some(etcd) = EtcdProcess::start_or_skip("jobs_finished_before_the_index") else {
            return;
        };
        let s = store(&etcd);
        let old = JobRecord {
            state: JobState::Failed,
            ..contract::job("vision/old")
        };
        // As an earlier version left it: the record alone.
        s.etcd
            .put(
                &s.key("jobs", "vision/old"),
                &serde_json::to_vec(&old).unwrap(),
                0,
            )
            .unwrap();
        contract::job_in(&s, "vision/waits", JobState::Pending);
        assert_eq!(s.index_ended_once(), Ok(Some(1)));
        assert_eq!(s.index_ended_once(), Ok(None), "once");
        s.forget_finished("vision", 0, 10).unwrap();
        assert_eq!(s.job("vision/old").unwrap(), None);
        assert!(s.job("vision/waits").unwrap().is_some());
    }

    /// Found by a review: the calls of two submissions read the same finished jobs, and the
    /// later deleted, without a compare, a new job that had taken a forgotten one's name in
    /// between: queued in the host, stored nowhere. A stale listing forgets nothing new.
    #[test]
    fn a_stale_listing_of_finished_jobs_never_forgets_a_new_job_of_the_same_name() {
        let Some(etcd) = EtcdProcess::start_or_skip("a_stale_listing_of_finished_jobs") else {
            return;
        };
        let s = store(&etcd);
        contract::job_in(&s, "vision/x", JobState::Failed);
        let stale = s.etcd.prefix_keys(&s.key("ended", "vision/")).unwrap();
        assert_eq!(stale.len(), 1);
        s.forget_finished("vision", 0, 10).unwrap();
        assert!(s.insert_job(&contract::job("vision/x")).unwrap());
        assert!(s.forget_ended(&stale).unwrap().is_empty());
        assert_eq!(
            s.job("vision/x").unwrap().map(|j| j.state),
            Some(JobState::Pending),
            "the new job stays"
        );
    }

    #[test]
    fn a_job_that_does_not_read_is_an_error_naming_its_key() {
        let Some(etcd) = EtcdProcess::start_or_skip("a_job_that_does_not_read") else {
            return;
        };
        let s = store(&etcd);
        contract::job_in(&s, "vision/a", JobState::Succeeded);
        let key = b"gantry/jobs/vision/a";
        let mut value: serde_json::Value =
            serde_json::from_slice(&etcd.client().get(key).unwrap().unwrap().value).unwrap();
        value["state"] = "finished-ish".into();
        etcd.client()
            .put(key, value.to_string().as_bytes(), 0)
            .unwrap();
        let e = s.job("vision/a").unwrap_err().to_string();
        assert!(
            e.contains("gantry/jobs/vision/a") && e.contains("finished-ish"),
            "{e}"
        );
        assert!(s.jobs().is_err());
    }
}
