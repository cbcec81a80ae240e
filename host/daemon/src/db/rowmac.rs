//! Rows authenticated under the key file.
//!
//! With `GANTRY_KEY_FILE`, master keys are sealed, but `gantry.db` (and etcd) lay open to
//! whoever could write them: a changed `roles` column made anyone an admin, a row added to
//! `tokens` (a salt and hash of the writer's choosing) was a token, a row added to `jobs` ran a
//! program of the writer's as a tenant's job, a dataset's lowered classification showed it to
//! those not cleared for it, a setting named another key as the one that signs the audit log, a
//! job's checkpoint named another tenant's (its model then theirs), a placement handed a run to
//! another node, and in etcd a policy or plugin of the writer's was installed. Every such record
//! now carries a MAC (HMAC-SHA256 under a key derived from the key file) over what decides
//! access or what runs ([`Covered`]), and one that does not verify is refused, naming it. A
//! job's MAC covers what was submitted (never changed after), not its state. What a MAC cannot
//! tell is a record put back as it was before (a revoked token's older row), or a job's state
//! moved back: the audit log records every revocation and every job's end.

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

    /// `t`'s MAC, as its row keeps it.
    pub(crate) fn sign<T: Covered>(&self, t: &T) -> String {
        self.tag(&covered_bytes(t))
    }

    /// Checks `t`'s row's MAC `mac`.
    pub(crate) fn verify<T: Covered>(&self, t: &T, mac: Option<&str>) -> Result<(), BadValue> {
        self.check(&covered_bytes(t), mac, T::TABLE, &t.row())
    }

    fn tag(&self, message: &[u8]) -> String {
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
impl Covered for User {
    const TABLE: &'static str = "users";
    fn row(&self) -> String {
        self.name.clone()
    }
    fn covered(&self) -> serde_json::Value {
        serde_json::json!(["user", self.name, self.roles, self.tenants, self.clearance])
    }
}

impl Covered for TokenRow<'_> {
    const TABLE: &'static str = "tokens";
    fn row(&self) -> String {
        self.id.to_string()
    }
    fn covered(&self) -> serde_json::Value {
        let hex = |b: &[u8]| data_encoding::HEXLOWER.encode(b);
        let t = self;
        serde_json::json!([
            "token",
            t.id,
            t.user,
            hex(t.salt),
            hex(t.hash),
            t.expires_at,
            t.revoked_at
        ])
    }
}

/// A store in etcd whose records the replicas' shared key file authenticates.
pub(crate) trait Authenticated: Sized {
    /// The store, its records authenticated under `rows` where given.
    fn with_rows(self, rows: Option<RowMac>) -> Self;

    /// The store, authenticated under the key file of the data directory at `data_dir` where
    /// one is in use (the replicas share it, as they share the master keys sealed under it).
    fn authenticated_as(self, data_dir: &std::path::Path) -> Result<Self, String> {
        let rows = RowMac::of_data_dir(data_dir).map_err(|e| e.to_string())?;
        Ok(self.with_rows(rows))
    }
}

/// A record a MAC authenticates: what its MAC covers, and how a refusal names it.
pub(crate) trait Covered {
    /// Its table (in etcd, its key says where it is).
    const TABLE: &'static str;

    /// Which row, as a refusal names it.
    fn row(&self) -> String;

    /// What its MAC covers, a tag of its kind first (no MAC of one kind verifies another).
    fn covered(&self) -> serde_json::Value;
}

fn covered_bytes<T: Covered>(t: &T) -> Vec<u8> {
    serde_json::to_vec(&t.covered()).expect("JSON serialises")
}

/// A record etcd keeps as one word (a checkpoint's object, the active scheduler's name: neither
/// holds a space) with its MAC after a space where `rows` authenticates rows; `t` is what the
/// MAC covers.
pub(crate) fn marked_word<T: Covered>(rows: Option<&RowMac>, word: &str, t: &T) -> String {
    match rows {
        Some(rows) => format!("{word} {}", rows.sign(t)),
        None => word.to_string(),
    }
}

/// The word and the MAC, where it has one, of a [`marked_word`].
pub(crate) fn split_marked(text: &str) -> (&str, Option<&str>) {
    match text.split_once(' ') {
        Some((word, mac)) => (word, Some(mac)),
        None => (text, None),
    }
}

/// A value as etcd keeps it, with its MAC where rows are authenticated.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Signed<T> {
    /// The value.
    #[serde(flatten)]
    pub value: T,
    /// Its MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Covered for super::GpuHealth {
    const TABLE: &'static str = "gpu_health";
    fn row(&self) -> String {
        self.gpu.clone()
    }
    fn covered(&self) -> serde_json::Value {
        serde_json::json!(["gpu_health", self.gpu, self.healthy, self.by, self.at])
    }
}

impl Covered for crate::nodes::RegisteredNode {
    const TABLE: &'static str = "registered_nodes";
    fn row(&self) -> String {
        self.name.clone()
    }
    fn covered(&self) -> serde_json::Value {
        serde_json::json!(["node", self])
    }
}

impl Covered for super::PluginRecord {
    const TABLE: &'static str = "plugins";
    fn row(&self) -> String {
        self.name.clone()
    }
    fn covered(&self) -> serde_json::Value {
        let p = self;
        serde_json::json!([
            "plugin",
            p.name,
            p.kind,
            p.version,
            p.manifest,
            p.object,
            p.signature,
            p.owner,
            p.created_at
        ])
    }
}

/// Job `job`'s placement: the node's agent a run of it was handed to.
pub(crate) struct Placed<'a> {
    pub job: &'a str,
    pub placement: &'a crate::jobstore::Placement,
}

impl Covered for Placed<'_> {
    const TABLE: &'static str = "placements";
    fn row(&self) -> String {
        self.job.to_string()
    }
    fn covered(&self) -> serde_json::Value {
        let p = self.placement;
        serde_json::json!(["placement", self.job, p.node, p.attempt])
    }
}

/// The SHA-256 (hex) of job `j`'s bodies, its `train` and `command`: what its MAC covers of
/// them, so that a listing, which reads no bodies, checks the rest against the digest kept
/// beside them, and a whole read checks the bodies too.
pub(crate) fn bodies_digest(j: &JobRecord) -> String {
    let bodies = serde_json::json!([j.train, j.command]);
    let bytes = serde_json::to_vec(&bodies).expect("JSON serialises");
    data_encoding::HEXLOWER.encode(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref())
}

/// A job as its MAC covers it: what was submitted, by whom, for which tenant, its bodies by
/// their digest ([`bodies_digest`]); never its state, placement or result, which the control
/// plane changes as the job runs.
pub(crate) struct Submitted<'a> {
    job: &'a JobRecord,
    bodies: String,
}

impl<'a> Submitted<'a> {
    /// `job`, its bodies as it holds them.
    pub(crate) fn whole(job: &'a JobRecord) -> Submitted<'a> {
        Submitted {
            bodies: bodies_digest(job),
            job,
        }
    }

    /// `job` as a listing reads it, without its bodies: their digest as kept beside them.
    pub(crate) fn listed(job: &'a JobRecord, bodies: String) -> Submitted<'a> {
        Submitted { job, bodies }
    }
}

impl Covered for Submitted<'_> {
    const TABLE: &'static str = "jobs";
    fn row(&self) -> String {
        self.job.id.clone()
    }
    fn covered(&self) -> serde_json::Value {
        let j = self.job;
        serde_json::json!([
            "job",
            j.id,
            j.tenant,
            j.owner,
            j.gpus,
            j.memory_per_gpu_mib,
            j.est_runtime_s,
            j.submitted_at,
            self.bodies
        ])
    }
}

impl Covered for DatasetRecord {
    const TABLE: &'static str = "datasets";
    fn row(&self) -> String {
        self.name.clone()
    }
    fn covered(&self) -> serde_json::Value {
        let d = self;
        serde_json::json!([
            "dataset",
            d.name,
            d.tenant,
            d.classification,
            d.object,
            d.bytes,
            d.owner,
            d.created_at
        ])
    }
}

/// A setting: among them the installed policy's object and the key that signs the audit log.
pub(crate) struct Setting<'a> {
    pub key: &'a str,
    pub value: &'a str,
}

impl Covered for Setting<'_> {
    const TABLE: &'static str = "settings";
    fn row(&self) -> String {
        self.key.to_string()
    }
    fn covered(&self) -> serde_json::Value {
        serde_json::json!(["setting", self.key, self.value])
    }
}

/// A job's checkpoint: the job binds it to its owner's tenant.
pub(crate) struct Checkpoint<'a> {
    pub job: &'a str,
    pub step: u32,
    pub object: &'a str,
}

impl Covered for Checkpoint<'_> {
    const TABLE: &'static str = "checkpoints";
    fn row(&self) -> String {
        format!("{} step {}", self.job, self.step)
    }
    fn covered(&self) -> serde_json::Value {
        serde_json::json!(["checkpoint", self.job, self.step, self.object])
    }
}
