//! Rows authenticated under the key file.
//!
//! With `GANTRY_KEY_FILE`, master keys are sealed, but `gantry.db` (and etcd) lay open to
//! whoever could write them: a changed `roles` column made anyone an admin, a row added to
//! `tokens` (a salt and hash of the writer's choosing) was a token, a row added to `jobs` ran a
//! program of the writer's as a tenant's job, a dataset's lowered classification showed it to
//! those not cleared for it, a setting named another key as the one that signs the audit log, and
//! a job's checkpoint named another tenant's (its model then theirs). Every `users`, `tokens`,
//! `jobs`, `datasets`, `settings` and `checkpoints` row now carries a MAC (HMAC-SHA256 under a key derived from the key file) over every column that decides
//! access or what runs, and one that does not verify is refused, naming its row. A job's MAC
//! covers what was submitted (never changed after), not its state. What a MAC cannot tell is a
//! row put back as it was before (a revoked token's older row), or a job's state moved back:
//! the audit log records every revocation and every job's end.

use ring::hmac;

use super::{BadValue, DatasetRecord, JobRecord, User};

/// The key rows are authenticated with.
#[derive(Clone)]
pub(crate) struct RowMac(hmac::Key);

impl std::fmt::Debug for RowMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowMac")
    }
}

/// What a token's MAC covers: every column that decides whether it lets someone in.
pub(crate) struct TokenRow<'a> {
    pub id: &'a str,
    pub user: &'a str,
    pub salt: &'a [u8],
    pub hash: &'a [u8],
    pub expires_at: Option<f64>,
    pub revoked_at: Option<f64>,
}

impl RowMac {
    /// Rows authenticated under `key` ([`gantry::storage::rows_key`]).
    pub(crate) fn new(key: &[u8; 32]) -> RowMac {
        RowMac(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    /// The key of the key file of the data directory at `root`, where one is in use.
    pub(crate) fn of_data_dir(
        root: &std::path::Path,
    ) -> Result<Option<RowMac>, gantry::storage::StoreError> {
        Ok(gantry::storage::rows_key(root)?.map(|key| RowMac::new(&key)))
    }

    /// User `u`'s MAC, as its row keeps it.
    pub(crate) fn user(&self, u: &User) -> String {
        self.sign(&user_message(u))
    }

    /// Token `t`'s MAC, as its row keeps it.
    pub(crate) fn token(&self, t: &TokenRow<'_>) -> String {
        self.sign(&token_message(t))
    }

    /// Job `j`'s MAC, as its row keeps it.
    pub(crate) fn job(&self, j: &JobRecord) -> String {
        self.sign(&job_message(j, &bodies_digest(j)))
    }

    /// Dataset `d`'s MAC, as its row keeps it.
    pub(crate) fn dataset(&self, d: &DatasetRecord) -> String {
        self.sign(&dataset_message(d))
    }

    /// Setting `key`'s MAC, its value being `value`.
    pub(crate) fn setting(&self, key: &str, value: &str) -> String {
        self.sign(&setting_message(key, value))
    }

    /// The MAC of job `job`'s checkpoint at `step`, stored as `object`.
    pub(crate) fn checkpoint(&self, job: &str, step: u32, object: &str) -> String {
        self.sign(&checkpoint_message(job, step, object))
    }

    /// Checks user `u`'s row's MAC `mac`.
    pub(crate) fn check_user(&self, u: &User, mac: Option<&str>) -> Result<(), BadValue> {
        self.check(&user_message(u), mac, "users", &u.name)
    }

    /// Checks token `t`'s row's MAC `mac`.
    pub(crate) fn check_token(&self, t: &TokenRow<'_>, mac: Option<&str>) -> Result<(), BadValue> {
        self.check(&token_message(t), mac, "tokens", t.id)
    }

    /// Checks job `j`'s row's MAC `mac`, `bodies` being the digest of its `train` and
    /// `command` ([`bodies_digest`]): of the bodies read, or, where a listing reads none, as
    /// kept beside them.
    pub(crate) fn check_job(
        &self,
        j: &JobRecord,
        bodies: &str,
        mac: Option<&str>,
    ) -> Result<(), BadValue> {
        self.check(&job_message(j, bodies), mac, "jobs", &j.id)
    }

    /// Checks the MAC `mac` of setting `key`, its value being `value`.
    pub(crate) fn check_setting(
        &self,
        key: &str,
        value: &str,
        mac: Option<&str>,
    ) -> Result<(), BadValue> {
        self.check(&setting_message(key, value), mac, "settings", key)
    }

    /// Checks the MAC `mac` of job `job`'s checkpoint at `step`, stored as `object`.
    pub(crate) fn check_checkpoint(
        &self,
        job: &str,
        step: u32,
        object: &str,
        mac: Option<&str>,
    ) -> Result<(), BadValue> {
        let row = format!("{job} step {step}");
        self.check(
            &checkpoint_message(job, step, object),
            mac,
            "checkpoints",
            &row,
        )
    }

    /// Checks dataset `d`'s row's MAC `mac`.
    pub(crate) fn check_dataset(
        &self,
        d: &DatasetRecord,
        mac: Option<&str>,
    ) -> Result<(), BadValue> {
        self.check(&dataset_message(d), mac, "datasets", &d.name)
    }

    fn sign(&self, message: &[u8]) -> String {
        data_encoding::HEXLOWER.encode(hmac::sign(&self.0, message).as_ref())
    }

    fn check(
        &self,
        message: &[u8],
        mac: Option<&str>,
        table: &'static str,
        row: &str,
    ) -> Result<(), BadValue> {
        let bad = |problem: &str| BadValue {
            table,
            row: row.to_string(),
            column: "mac",
            problem: problem.to_string(),
        };
        let Some(mac) = mac else {
            return Err(bad(
                "not authenticated by the key file (GANTRY_KEY_FILE): written outside Gantry, \
                 or before the key file was in use (`gantry key seal` authenticates a data \
                 directory's rows, `gantry up --authenticate-etcd-rows` those in etcd)",
            ));
        };
        let tag = data_encoding::HEXLOWER
            .decode(mac.as_bytes())
            .map_err(|_| bad("not a MAC"))?;
        hmac::verify(&self.0, message, &tag).map_err(|_| {
            bad(
                "does not verify under the key file (GANTRY_KEY_FILE): the row was changed \
                 outside Gantry",
            )
        })
    }
}

/// What a user's MAC covers: the name binds the row to its user, so that no row is moved to
/// another.
fn user_message(u: &User) -> Vec<u8> {
    let value = serde_json::json!(["user", u.name, u.roles, u.tenants, u.clearance]);
    serde_json::to_vec(&value).expect("JSON serialises")
}

fn token_message(t: &TokenRow<'_>) -> Vec<u8> {
    let hex = |b: &[u8]| data_encoding::HEXLOWER.encode(b);
    let value = serde_json::json!([
        "token",
        t.id,
        t.user,
        hex(t.salt),
        hex(t.hash),
        t.expires_at,
        t.revoked_at
    ]);
    serde_json::to_vec(&value).expect("JSON serialises")
}

/// The SHA-256 (hex) of job `j`'s bodies, its `train` and `command`: what its MAC covers of
/// them, so that a listing, which reads no bodies, checks the rest against the digest kept
/// beside them, and a whole read checks the bodies too.
pub(crate) fn bodies_digest(j: &JobRecord) -> String {
    let bodies = serde_json::json!([j.train, j.command]);
    let bytes = serde_json::to_vec(&bodies).expect("JSON serialises");
    data_encoding::HEXLOWER.encode(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref())
}

/// What a job's MAC covers: what was submitted, by whom, for which tenant; never its state,
/// placement or result, which the control plane changes as the job runs.
fn job_message(j: &JobRecord, bodies: &str) -> Vec<u8> {
    let value = serde_json::json!([
        "job",
        j.id,
        j.tenant,
        j.owner,
        j.gpus,
        j.memory_per_gpu_mib,
        j.est_runtime_s,
        j.submitted_at,
        bodies
    ]);
    serde_json::to_vec(&value).expect("JSON serialises")
}

/// What a setting's MAC covers: among them the installed policy's object and the key that signs
/// the audit log.
fn setting_message(key: &str, value: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!(["setting", key, value])).expect("JSON serialises")
}

/// What a checkpoint's MAC covers: the job binds it to its owner's tenant.
fn checkpoint_message(job: &str, step: u32, object: &str) -> Vec<u8> {
    let value = serde_json::json!(["checkpoint", job, step, object]);
    serde_json::to_vec(&value).expect("JSON serialises")
}

fn dataset_message(d: &DatasetRecord) -> Vec<u8> {
    let value = serde_json::json!([
        "dataset",
        d.name,
        d.tenant,
        d.classification,
        d.object,
        d.bytes,
        d.owner,
        d.created_at
    ]);
    serde_json::to_vec(&value).expect("JSON serialises")
}
