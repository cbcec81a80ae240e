//! Where the policy an admin installed (`POST /v1/policy`) is kept, as a trait: one daemon keeps
//! the bundle in its encrypted store and names it in its database ([`LocalPolicy`]); a
//! replicated control plane keeps it in etcd ([`EtcdPolicy`]), so that the next leader decides
//! with the policy the last one was given, never with an older copy.

use std::sync::Arc;

use gantry_etcd::Etcd;
use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::db::rowmac::{Authenticated, Covered, RowMac};
use crate::etcdblobs::{Blob, EtcdBlobs};
use crate::etcdstore::{checked_value, seed_once, sign_unmarked, signed_value};
use crate::persisted::{POLICY_OBJECT, POLICY_REVISION};

/// The bundle an admin installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// Where it is kept: a store object, or its SHA-256 in etcd.
    pub object: String,
    /// The bundle's revision.
    pub revision: String,
}

/// A place for the installed policy.
pub trait PolicyStore: Send + Sync {
    /// The bundle an admin installed, if any.
    fn installed(&self) -> Result<Option<Installed>, String>;

    /// The bytes of bundle `installed`.
    fn bundle(&self, installed: &Installed) -> Result<Vec<u8>, String>;

    /// Keeps `bytes` (a bundle of `revision`) and names it the policy to start with.
    fn install(&self, bytes: &[u8], revision: &str) -> Result<Installed, String>;

    /// Forgets the installed policy: the shipped one is started with.
    fn forget(&self) -> Result<(), String>;

    /// Whether the installed bundle is object `object` of the daemon's encrypted store.
    fn uses(&self, object: &str) -> Result<bool, String>;
}

/// The daemon's installed policy, wherever it is kept.
pub type Policies = Arc<dyn PolicyStore>;

/// One daemon's: the bundle in the encrypted store, named in the database's settings.
pub struct LocalPolicy {
    /// The database.
    pub db: Arc<Db>,
    /// The encrypted store.
    pub store: Arc<gantry::storage::Store>,
}

impl PolicyStore for LocalPolicy {
    fn installed(&self) -> Result<Option<Installed>, String> {
        let object = self.db.setting(POLICY_OBJECT).map_err(|e| e.to_string())?;
        let revision = self
            .db
            .setting(POLICY_REVISION)
            .map_err(|e| e.to_string())?;
        Ok(object.map(|object| Installed {
            object,
            revision: revision.unwrap_or_default(),
        }))
    }

    fn bundle(&self, installed: &Installed) -> Result<Vec<u8>, String> {
        self.store.get(&installed.object).map_err(|e| e.to_string())
    }

    fn install(&self, bytes: &[u8], revision: &str) -> Result<Installed, String> {
        // Pinned until the setting names it: see `Store::remove_unused`.
        let pinned = self.store.put_pinned(bytes).map_err(|e| e.to_string())?;
        let object = pinned.id().to_string();
        self.db
            .set_setting(POLICY_REVISION, revision)
            .and_then(|()| self.db.set_setting(POLICY_OBJECT, &object))
            .map_err(|e| e.to_string())?;
        Ok(Installed {
            object,
            revision: revision.to_string(),
        })
    }

    fn forget(&self) -> Result<(), String> {
        self.db
            .delete_setting(POLICY_OBJECT)
            .and_then(|()| self.db.delete_setting(POLICY_REVISION))
            .map_err(|e| e.to_string())
    }

    fn uses(&self, object: &str) -> Result<bool, String> {
        Ok(self.installed()?.is_some_and(|i| i.object == object))
    }
}

/// What `policy/installed` holds.
#[derive(Debug, Serialize, Deserialize)]
struct Pointer {
    #[serde(flatten)]
    blob: Blob,
    revision: String,
}

/// The bundle's SHA-256 among what it covers, a pointer's MAC authenticates the bundle: a writer
/// of etcd without the key file cannot install a policy of theirs (the blob is checked against
/// its SHA-256 when read).
impl Covered for Pointer {
    const TABLE: &'static str = "policy";
    fn row(&self) -> String {
        "installed".into()
    }
    fn covered(&self) -> serde_json::Value {
        serde_json::json!(["policy", self.blob, self.revision])
    }
}

/// A control plane's, in etcd under a root prefix: `policy/bundles/` the bundle as a blob
/// ([`crate::etcdblobs`]), `policy/installed` naming it, `policy/seeded` once the first leader
/// copied its own in ([`seed`]).
#[derive(Debug)]
pub struct EtcdPolicy {
    etcd: Arc<Etcd>,
    root: String,
    blobs: EtcdBlobs,
    /// Set where a key file is in use: what is installed is written with its MAC and read only
    /// when its MAC verifies, as [`crate::db::Db::authenticate_rows`].
    rows: Option<RowMac>,
}

impl Authenticated for EtcdPolicy {
    fn with_rows(mut self, rows: Option<RowMac>) -> EtcdPolicy {
        self.rows = rows;
        self
    }
}

impl EtcdPolicy {
    /// The policy under `root` in `etcd`.
    pub fn new(etcd: Arc<Etcd>, root: &str) -> EtcdPolicy {
        let root = root.trim_end_matches('/').to_string();
        EtcdPolicy {
            blobs: EtcdBlobs::new(etcd.clone(), &format!("{root}/policy/bundles")),
            etcd,
            root,
            rows: None,
        }
    }

    /// Gives what is installed its MAC if it has none (`--authenticate-etcd-rows`); how many.
    pub fn authenticate_unmarked(&self) -> Result<usize, String> {
        let Some(rows) = &self.rows else {
            return Ok(0);
        };
        let key = self.key("installed");
        sign_unmarked::<Pointer>(&self.etcd, rows, &key).map_err(|e| e.to_string())
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}/policy/{rest}", self.root).into_bytes()
    }

    fn pointer(&self) -> Result<Option<Pointer>, String> {
        let key = self.key("installed");
        match self.etcd.get(&key).map_err(|e| e.to_string())? {
            None => Ok(None),
            Some(kv) => (checked_value(self.rows.as_ref(), &kv))
                .map(Some)
                .map_err(|e| e.to_string()),
        }
    }
}

impl PolicyStore for EtcdPolicy {
    fn installed(&self) -> Result<Option<Installed>, String> {
        Ok(self.pointer()?.map(|p| Installed {
            object: p.blob.object,
            revision: p.revision,
        }))
    }

    fn bundle(&self, installed: &Installed) -> Result<Vec<u8>, String> {
        let pointer = self
            .pointer()?
            .filter(|p| p.blob.object == installed.object)
            .ok_or_else(|| format!("bundle {} is no longer installed", installed.object))?;
        self.blobs.get(&pointer.blob, crate::api::MAX_UPLOAD)
    }

    fn install(&self, bytes: &[u8], revision: &str) -> Result<Installed, String> {
        let blob = self.blobs.put(bytes)?;
        let previous = self.pointer().ok().flatten();
        let pointer = Pointer {
            blob: blob.clone(),
            revision: revision.to_string(),
        };
        let value = signed_value(self.rows.as_ref(), &pointer);
        self.etcd
            .put(&self.key("installed"), &value, 0)
            .map_err(|e| e.to_string())?;
        if let Some(old) = previous.filter(|p| p.blob.object != blob.object) {
            self.blobs.delete(&old.blob);
        }
        Ok(Installed {
            object: blob.object,
            revision: revision.to_string(),
        })
    }

    fn forget(&self) -> Result<(), String> {
        let previous = self.pointer().ok().flatten();
        self.etcd
            .delete(&self.key("installed"))
            .map_err(|e| e.to_string())?;
        if let Some(old) = previous {
            self.blobs.delete(&old.blob);
        }
        Ok(())
    }

    fn uses(&self, _object: &str) -> Result<bool, String> {
        // The bundle is kept in etcd, not in the daemon's store.
        Ok(false)
    }
}

/// Copies the policy `from` has installed (if any) into `to`, once
/// ([`crate::etcdstore::seed_once`]); returns the revision copied.
pub fn seed(from: &dyn PolicyStore, to: &EtcdPolicy) -> Result<Option<String>, String> {
    let copied = seed_once(&to.etcd, &to.key("seeded"), || {
        let Some(installed) = from.installed()? else {
            return Ok::<_, String>(None);
        };
        if to.installed()?.is_some() {
            return Ok(None);
        }
        let bytes = from.bundle(&installed)?;
        to.install(&bytes, &installed.revision)?;
        Ok(Some(installed.revision))
    })?;
    Ok(copied.flatten())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcdblobs::CHUNK;
    use gantry_etcd::testing::EtcdProcess;

    /// Both places keep what is installed, give it back byte for byte, and forget it.
    fn keeps_and_forgets(s: &dyn PolicyStore) {
        assert_eq!(s.installed().unwrap(), None);
        // Over two etcd values, and not a multiple of one.
        let big: Vec<u8> = (0..CHUNK + 4321).map(|i| (i * 7 % 251) as u8).collect();
        let first = s.install(&big, "r1").unwrap();
        assert_eq!(s.installed().unwrap(), Some(first.clone()));
        assert_eq!(s.bundle(&first).unwrap(), big);
        let second = s.install(b"small", "r2").unwrap();
        assert_eq!(s.installed().unwrap().unwrap().revision, "r2");
        assert_eq!(s.bundle(&second).unwrap(), b"small");
        s.forget().unwrap();
        assert_eq!(s.installed().unwrap(), None);
    }

    #[test]
    fn the_local_store_keeps_the_installed_policy() {
        let dir = tempfile::tempdir().unwrap();
        let store = gantry::storage::Store::init(&dir.path().join("store")).unwrap();
        let db = Db::open(&dir.path().join("g.db")).unwrap();
        keeps_and_forgets(&LocalPolicy {
            db: Arc::new(db),
            store: Arc::new(store),
        });
    }

    #[test]
    fn etcd_keeps_the_installed_policy_and_checks_it() {
        let Some(etcd) = EtcdProcess::start_or_skip("etcd_keeps_the_installed_policy") else {
            return;
        };
        let client = Arc::new(etcd.client());
        let s = EtcdPolicy::new(client.clone(), "gantry");
        keeps_and_forgets(&s);
        // Only the bundle in force is kept.
        assert_eq!(
            client.prefix(b"gantry/policy/bundles/", 0).unwrap().len(),
            0
        );
        let installed = s.install(&[1u8; 3 * CHUNK], "r3").unwrap();
        assert_eq!(
            client.prefix(b"gantry/policy/bundles/", 0).unwrap().len(),
            3
        );
        // A chunk changed under it: refused, naming where.
        let chunk = format!("gantry/policy/bundles/{}/000001", installed.object);
        client.put(chunk.as_bytes(), &[2u8; CHUNK], 0).unwrap();
        let e = s.bundle(&installed).unwrap_err();
        assert!(
            e.contains("SHA-256") && e.contains(&installed.object),
            "{e}"
        );
    }

    /// Found by reading etcd as its writer would: a replicated control plane's policy bundle is
    /// a blob of etcd named by its SHA-256, so a writer of etcd without the key file installed
    /// a policy of their own (allow everything) by writing a blob and pointing `installed` at
    /// it. Under a key file what is installed carries a MAC over the bundle's SHA-256 and
    /// revision, refused where read unless it verifies.
    #[test]
    fn a_policy_installed_in_etcd_outside_gantry_is_refused_under_a_key_file() {
        let Some(etcd) = EtcdProcess::start_or_skip("a_policy_installed_in_etcd") else {
            return;
        };
        let client = Arc::new(etcd.client());
        let keyed =
            EtcdPolicy::new(client.clone(), "gantry").with_rows(Some(RowMac::new(&[6; 32])));
        keeps_and_forgets(&keyed);
        let ours = keyed.install(b"the security team's bundle", "r1").unwrap();
        assert_eq!(keyed.bundle(&ours).unwrap(), b"the security team's bundle");
        let refused = |e: String| {
            assert!(
                e.contains("gantry/policy/installed") && e.contains("key file"),
                "{e}"
            );
        };
        // Theirs, written as a replica without the key file would.
        let plain = EtcdPolicy::new(client.clone(), "gantry");
        let mac =
            crate::testing::change_in_etcd(&client, "gantry/policy/installed", "mac", "".into());
        plain.install(b"allow everything", "r2").unwrap();
        refused(keyed.installed().unwrap_err());
        // Its MAC taken from ours.
        crate::testing::change_in_etcd(&client, "gantry/policy/installed", "mac", mac);
        refused(keyed.installed().unwrap_err());
        // Authenticated once asked, where etcd is trusted.
        assert_eq!(
            keyed.authenticate_unmarked().unwrap(),
            0,
            "its MAC is there"
        );
        crate::testing::change_in_etcd(
            &client,
            "gantry/policy/installed",
            "mac",
            serde_json::Value::Null,
        );
        assert_eq!(keyed.authenticate_unmarked().unwrap(), 1);
        assert_eq!(keyed.installed().unwrap().unwrap().revision, "r2");
    }

    /// The first leader copies its installed policy in once; one installed through the control
    /// plane afterwards is never replaced by a replica's older copy.
    #[test]
    fn the_policy_is_seeded_once() {
        let Some(etcd) = EtcdProcess::start_or_skip("the_policy_is_seeded_once") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let local = LocalPolicy {
            db: Arc::new(Db::open(&dir.path().join("g.db")).unwrap()),
            store: Arc::new(gantry::storage::Store::init(&dir.path().join("store")).unwrap()),
        };
        local.install(b"old bundle", "r-old").unwrap();
        let s = EtcdPolicy::new(Arc::new(etcd.client()), "gantry");
        assert_eq!(seed(&local, &s).unwrap().as_deref(), Some("r-old"));
        let new = s.install(b"new bundle", "r-new").unwrap();
        assert_eq!(seed(&local, &s).unwrap(), None);
        assert_eq!(s.installed().unwrap(), Some(new));
    }
}
