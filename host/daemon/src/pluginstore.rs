//! Where uploaded plugins and the active scheduler are kept, as a trait: one daemon keeps a
//! plugin's component in its encrypted store and its record and the active scheduler in its
//! database ([`LocalPlugins`]); a replicated control plane keeps them in etcd
//! ([`EtcdPlugins`]), so that the next leader schedules with the plugin the last one was told
//! to, and every replica knows every upload.

use std::sync::Arc;

use gantry_etcd::Etcd;
use serde::{Deserialize, Serialize};

use crate::ACTIVE_SCHEDULER;
use crate::db::rowmac::{Authenticated, Covered, RowMac, marked_word, split_marked};
use crate::db::{Db, PluginRecord};
use crate::etcdblobs::{Blob, EtcdBlobs};
use crate::etcdstore::{checked_value, seed_once, sign_unmarked, signed_value};

/// A place for uploaded plugins and the active scheduler.
pub trait PluginStore: Send + Sync {
    /// Uploaded plugins, by name; with `name`, only that one.
    fn plugins(&self, name: Option<&str>) -> Result<Vec<PluginRecord>, String>;

    /// The component (wasm) of `record`.
    fn component(&self, record: &PluginRecord) -> Result<Vec<u8>, String>;

    /// Keeps `wasm` and adds (or replaces) plugin `record.name` with it; returns the record as
    /// kept (its `object` naming the component).
    fn put_plugin(&self, record: PluginRecord, wasm: &[u8]) -> Result<PluginRecord, String>;

    /// The scheduler plugin made active, if one was.
    fn active_scheduler(&self) -> Result<Option<String>, String>;

    /// Makes `name` the scheduler plugin to start with.
    fn set_active_scheduler(&self, name: &str) -> Result<(), String>;

    /// Whether a plugin's component is object `object` of the daemon's encrypted store.
    fn uses(&self, object: &str) -> Result<bool, String>;
}

/// The daemon's plugins, wherever they are kept.
pub type Plugins = Arc<dyn PluginStore>;

/// One daemon's: components in the encrypted store, records and the active scheduler in the
/// database.
pub struct LocalPlugins {
    /// The database.
    pub db: Arc<Db>,
    /// The encrypted store.
    pub store: Arc<gantry::storage::Store>,
}

impl PluginStore for LocalPlugins {
    fn plugins(&self, name: Option<&str>) -> Result<Vec<PluginRecord>, String> {
        self.db.plugins(name).map_err(|e| e.to_string())
    }

    fn component(&self, record: &PluginRecord) -> Result<Vec<u8>, String> {
        self.store.get(&record.object).map_err(|e| e.to_string())
    }

    fn put_plugin(&self, mut record: PluginRecord, wasm: &[u8]) -> Result<PluginRecord, String> {
        // Pinned until the record names it: see `Store::remove_unused`.
        let pinned = self.store.put_pinned(wasm).map_err(|e| e.to_string())?;
        record.object = pinned.id().to_string();
        self.db.put_plugin(&record).map_err(|e| e.to_string())?;
        Ok(record)
    }

    fn uses(&self, object: &str) -> Result<bool, String> {
        let plugins = self.plugins(None)?;
        Ok(plugins.iter().any(|p| p.object == object))
    }

    fn active_scheduler(&self) -> Result<Option<String>, String> {
        self.db.setting(ACTIVE_SCHEDULER).map_err(|e| e.to_string())
    }

    fn set_active_scheduler(&self, name: &str) -> Result<(), String> {
        self.db
            .set_setting(ACTIVE_SCHEDULER, name)
            .map_err(|e| e.to_string())
    }
}

/// A plugin as etcd keeps it: its record and where its component is.
#[derive(Debug, Serialize, Deserialize)]
struct Kept {
    record: PluginRecord,
    /// The record's manifest, which its JSON leaves out (the API lists records without it).
    manifest: String,
    blob: Blob,
}

/// The component's SHA-256 among what it covers, a plugin's MAC authenticates its component: a
/// writer of etcd without the key file cannot load a plugin of theirs (the blob is checked
/// against its SHA-256 when read).
impl Covered for Kept {
    const TABLE: &'static str = "plugins";
    fn row(&self) -> String {
        self.record.name.clone()
    }
    fn covered(&self) -> serde_json::Value {
        serde_json::json!(["plugin", self.record, self.manifest, self.blob])
    }
}

/// The active scheduler plugin's name, as its MAC covers it.
struct Active<'a>(&'a str);

impl Covered for Active<'_> {
    const TABLE: &'static str = "plugins";
    fn row(&self) -> String {
        "active_scheduler".into()
    }
    fn covered(&self) -> serde_json::Value {
        serde_json::json!(["active_scheduler", self.0])
    }
}

/// A control plane's, in etcd under a root prefix: `plugins/records/<name>` a plugin's record
/// and component blob, `plugins/components/` the components ([`crate::etcdblobs`]),
/// `plugins/active_scheduler`, and `plugins/seeded` once the first leader copied its own in
/// ([`seed`]).
#[derive(Debug)]
pub struct EtcdPlugins {
    etcd: Arc<Etcd>,
    root: String,
    blobs: EtcdBlobs,
    /// Set where a key file is in use: records and the active scheduler are written with their
    /// MACs and read only when theirs verify, as [`crate::db::Db::authenticate_rows`].
    rows: Option<RowMac>,
}

impl Authenticated for EtcdPlugins {
    fn with_rows(mut self, rows: Option<RowMac>) -> EtcdPlugins {
        self.rows = rows;
        self
    }
}

impl EtcdPlugins {
    /// The plugins under `root` in `etcd`.
    pub fn new(etcd: Arc<Etcd>, root: &str) -> EtcdPlugins {
        let root = root.trim_end_matches('/').to_string();
        EtcdPlugins {
            blobs: EtcdBlobs::new(etcd.clone(), &format!("{root}/plugins/components")),
            etcd,
            root,
            rows: None,
        }
    }

    /// Gives every record, and the active scheduler, without a MAC its MAC
    /// (`--authenticate-etcd-rows`); how many.
    pub fn authenticate_unmarked(&self) -> Result<usize, String> {
        let Some(rows) = &self.rows else {
            return Ok(0);
        };
        let records = sign_unmarked::<Kept>(&self.etcd, rows, &self.key("records/"));
        let mut done = records.map_err(|e| e.to_string())?;
        if let Some((name, None)) = self.active()? {
            self.set_active_scheduler(&name)?;
            done += 1;
        }
        Ok(done)
    }

    /// The active scheduler's name and its MAC, unchecked.
    fn active(&self) -> Result<Option<(String, Option<String>)>, String> {
        let key = self.key("active_scheduler");
        let Some(kv) = self.etcd.get(&key).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let value = String::from_utf8(kv.value)
            .map_err(|e| format!("etcd key `{}`: {e}", String::from_utf8_lossy(&key)))?;
        let (name, mac) = split_marked(&value);
        Ok(Some((name.to_string(), mac.map(str::to_string))))
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}/plugins/{rest}", self.root).into_bytes()
    }

    fn kept(&self, name: Option<&str>) -> Result<Vec<Kept>, String> {
        let prefix = self.key("records/");
        let kvs = match name {
            Some(n) => {
                let key = self.key(&format!("records/{n}"));
                self.etcd
                    .get(&key)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .collect()
            }
            // Small values (a manifest is at most 64 KiB): read in pages.
            None => self.etcd.prefix(&prefix, 0).map_err(|e| e.to_string())?,
        };
        kvs.iter()
            .map(|kv| {
                let mut kept: Kept =
                    checked_value(self.rows.as_ref(), kv).map_err(|e| e.to_string())?;
                kept.record.manifest = std::mem::take(&mut kept.manifest);
                Ok(kept)
            })
            .collect()
    }
}

impl PluginStore for EtcdPlugins {
    fn plugins(&self, name: Option<&str>) -> Result<Vec<PluginRecord>, String> {
        Ok(self.kept(name)?.into_iter().map(|k| k.record).collect())
    }

    fn component(&self, record: &PluginRecord) -> Result<Vec<u8>, String> {
        let kept = self
            .kept(Some(&record.name))?
            .pop()
            .filter(|k| k.record.object == record.object)
            .ok_or_else(|| format!("plugin `{}` was replaced or removed", record.name))?;
        self.blobs.get(&kept.blob, crate::api::MAX_UPLOAD)
    }

    fn put_plugin(&self, mut record: PluginRecord, wasm: &[u8]) -> Result<PluginRecord, String> {
        let blob = self.blobs.put(wasm)?;
        record.object = blob.object.clone();
        let previous = self.kept(Some(&record.name))?.pop();
        let kept = Kept {
            manifest: record.manifest.clone(),
            record: record.clone(),
            blob,
        };
        let value = signed_value(self.rows.as_ref(), &kept);
        self.etcd
            .put(&self.key(&format!("records/{}", record.name)), &value, 0)
            .map_err(|e| e.to_string())?;
        // The component it replaced goes, unless another plugin has the same one.
        if let Some(old) = previous.filter(|p| p.blob.object != kept.blob.object) {
            let shared = self
                .kept(None)?
                .iter()
                .any(|k| k.blob.object == old.blob.object);
            if !shared {
                self.blobs.delete(&old.blob);
            }
        }
        Ok(record)
    }

    fn active_scheduler(&self) -> Result<Option<String>, String> {
        let Some((name, mac)) = self.active()? else {
            return Ok(None);
        };
        if let Some(rows) = &self.rows {
            rows.verify(&Active(&name), mac.as_deref()).map_err(|bad| {
                let key = self.key("active_scheduler");
                format!(
                    "etcd key `{}`: {}",
                    String::from_utf8_lossy(&key),
                    bad.problem
                )
            })?;
        }
        Ok(Some(name))
    }

    fn set_active_scheduler(&self, name: &str) -> Result<(), String> {
        let value = marked_word(self.rows.as_ref(), name, &Active(name));
        self.etcd
            .put(&self.key("active_scheduler"), value.as_bytes(), 0)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn uses(&self, _object: &str) -> Result<bool, String> {
        // Components are kept in etcd, none in the daemon's store.
        Ok(false)
    }
}

/// Copies `from`'s uploaded plugins and active scheduler into `to`, once
/// ([`crate::etcdstore::seed_once`]); returns how many plugins were copied.
pub fn seed(from: &dyn PluginStore, to: &EtcdPlugins) -> Result<Option<usize>, String> {
    seed_once(&to.etcd, &to.key("seeded"), || {
        let mut copied = 0;
        for record in from.plugins(None)? {
            if to.kept(Some(&record.name))?.is_empty() {
                let wasm = from.component(&record)?;
                to.put_plugin(record, &wasm)?;
                copied += 1;
            }
        }
        if let (Some(active), None) = (from.active_scheduler()?, to.active_scheduler()?) {
            to.set_active_scheduler(&active)?;
        }
        Ok::<_, String>(copied)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_etcd::testing::EtcdProcess;

    fn record(name: &str, version: &str) -> PluginRecord {
        PluginRecord {
            name: name.into(),
            kind: crate::KIND_SCHEDULER.into(),
            version: version.into(),
            manifest: format!("name = \"{name}\""),
            object: String::new(),
            signature: None,
            owner: "pat".into(),
            created_at: 1.0,
        }
    }

    /// Both places keep plugins by name (an upload replaces one), their components byte for
    /// byte, and the active scheduler.
    fn keeps_plugins(s: &dyn PluginStore) {
        assert!(s.plugins(None).unwrap().is_empty());
        assert_eq!(s.active_scheduler().unwrap(), None);
        let b1 = s.put_plugin(record("b", "1"), b"wasm b1").unwrap();
        let a = s.put_plugin(record("a", "1"), b"wasm a").unwrap();
        let b2 = s.put_plugin(record("b", "2"), b"wasm b2").unwrap();
        assert_ne!(b1.object, b2.object);
        let names: Vec<(String, String)> = s
            .plugins(None)
            .unwrap()
            .into_iter()
            .map(|p| (p.name, p.version))
            .collect();
        assert_eq!(names, [("a".into(), "1".into()), ("b".into(), "2".into())]);
        assert_eq!(s.plugins(Some("b")).unwrap(), vec![b2.clone()]);
        assert_eq!(s.component(&b2).unwrap(), b"wasm b2");
        assert_eq!(s.component(&a).unwrap(), b"wasm a");
        s.set_active_scheduler("b").unwrap();
        assert_eq!(s.active_scheduler().unwrap().as_deref(), Some("b"));
    }

    #[test]
    fn the_local_store_keeps_plugins() {
        let dir = tempfile::tempdir().unwrap();
        keeps_plugins(&LocalPlugins {
            db: Arc::new(Db::open(&dir.path().join("g.db")).unwrap()),
            store: Arc::new(gantry::storage::Store::init(&dir.path().join("store")).unwrap()),
        });
    }

    /// Found by reading etcd as its writer would: a replicated control plane's plugin
    /// components are blobs of etcd named by their SHA-256, so a writer of etcd without the key
    /// file loaded a scheduler of their own by pointing a record at their blob, or made another
    /// plugin the active scheduler. Under a key file records and the active scheduler carry a
    /// MAC, refused where read unless it verifies.
    #[test]
    fn plugins_written_into_etcd_outside_gantry_are_refused_under_a_key_file() {
        let Some(etcd) = EtcdProcess::start_or_skip("plugins_written_into_etcd") else {
            return;
        };
        let client = Arc::new(etcd.client());
        let keyed =
            || EtcdPlugins::new(client.clone(), "gantry").with_rows(Some(RowMac::new(&[6; 32])));
        keeps_plugins(&keyed());
        let plain = EtcdPlugins::new(client.clone(), "gantry");
        let theirs = plain
            .put_plugin(record("x", "1"), b"their scheduler")
            .unwrap();
        let refused = |e: String, key: &str| {
            assert!(e.contains(key) && e.contains("key file"), "{e}");
        };
        refused(
            keyed().plugins(None).unwrap_err(),
            "gantry/plugins/records/x",
        );
        // A record of ours pointed at their component, its MAC kept.
        let blob = client.get(b"gantry/plugins/records/x").unwrap().unwrap();
        let blob: serde_json::Value = serde_json::from_slice(&blob.value).unwrap();
        client.delete(b"gantry/plugins/records/x").unwrap();
        let a = "gantry/plugins/records/a";
        crate::testing::change_in_etcd(&client, a, "blob", blob["blob"].clone());
        refused(keyed().plugins(Some("a")).unwrap_err(), a);
        // The active scheduler, named without a MAC or with another's.
        plain.set_active_scheduler("a").unwrap();
        refused(
            keyed().active_scheduler().unwrap_err(),
            "gantry/plugins/active_scheduler",
        );
        keyed().set_active_scheduler("b").unwrap();
        let b = client
            .get(b"gantry/plugins/active_scheduler")
            .unwrap()
            .unwrap();
        let mac = String::from_utf8(b.value).unwrap().replacen("b ", "a ", 1);
        client
            .put(b"gantry/plugins/active_scheduler", mac.as_bytes(), 0)
            .unwrap();
        refused(
            keyed().active_scheduler().unwrap_err(),
            "gantry/plugins/active_scheduler",
        );
        // Authenticated once asked, where etcd is trusted: those without a MAC.
        plain
            .put_plugin(record("x", "1"), b"their scheduler")
            .unwrap();
        plain.set_active_scheduler("x").unwrap();
        assert_eq!(keyed().authenticate_unmarked().unwrap(), 2);
        assert_eq!(keyed().active_scheduler().unwrap().as_deref(), Some("x"));
        let x = keyed().plugins(Some("x")).unwrap().pop().unwrap();
        assert_eq!(x.object, theirs.object);
    }

    #[test]
    fn etcd_keeps_plugins_and_seeds_them_once() {
        let Some(etcd) = EtcdProcess::start_or_skip("etcd_keeps_plugins") else {
            return;
        };
        let client = Arc::new(etcd.client());
        let s = EtcdPlugins::new(client.clone(), "gantry");
        keeps_plugins(&s);
        // The replaced component went.
        let components = client.prefix(b"gantry/plugins/components/", 0).unwrap();
        assert_eq!(components.len(), 2);

        let dir = tempfile::tempdir().unwrap();
        let local = LocalPlugins {
            db: Arc::new(Db::open(&dir.path().join("g.db")).unwrap()),
            store: Arc::new(gantry::storage::Store::init(&dir.path().join("store")).unwrap()),
        };
        local.put_plugin(record("c", "1"), b"wasm c").unwrap();
        local.put_plugin(record("b", "0"), b"older b").unwrap();
        local.set_active_scheduler("c").unwrap();
        let fresh = EtcdPlugins::new(client.clone(), "other");
        assert_eq!(seed(&local, &fresh).unwrap(), Some(2));
        assert_eq!(fresh.active_scheduler().unwrap().as_deref(), Some("c"));
        fresh.set_active_scheduler("b").unwrap();
        assert_eq!(seed(&local, &fresh).unwrap(), None, "seeded once");
        assert_eq!(fresh.active_scheduler().unwrap().as_deref(), Some("b"));
        let b = fresh.plugins(Some("b")).unwrap().pop().unwrap();
        assert_eq!(fresh.component(&b).unwrap(), b"older b");
    }
}
