//! Where the datasets' records live: this data directory's SQLite for one machine, etcd for a
//! replicated control plane, so that a dataset uploaded through one leader is there under the
//! next (its bytes, sealed, in etcd too: [`crate::sealedobjects`]).

use std::sync::Arc;

use gantry_etcd::{Compare, Etcd, Op};
use serde::{Deserialize, Serialize};

use crate::db::rowmac::{Authenticated, Covered, RowMac};
use crate::db::{DatasetRecord, Db};
use crate::etcdstore::{
    EtcdStoreError, checked_value, decode_prefix, seed_once, sign_unmarked, signed_value,
};
use crate::jobstore::StateError;

/// The datasets' records.
pub trait DatasetStore: Send + Sync {
    /// Adds a dataset; `false` if its key is taken.
    fn insert_dataset(&self, d: &DatasetRecord) -> Result<bool, StateError>;

    /// The dataset whose key is `key` (`tenant/name`).
    fn dataset(&self, key: &str) -> Result<Option<DatasetRecord>, StateError>;

    /// Every dataset, by key.
    fn datasets(&self) -> Result<Vec<DatasetRecord>, StateError>;

    /// The datasets called `name`, in any tenant, by key.
    fn datasets_named(&self, name: &str) -> Result<Vec<DatasetRecord>, StateError>;

    /// Whether a dataset is stored as `object`.
    fn dataset_uses(&self, object: &str) -> Result<bool, StateError>;

    /// How many datasets `tenant` has, and their bytes together.
    fn tenant_usage(&self, tenant: &str) -> Result<(usize, u64), StateError>;
}

/// The daemon's dataset records, in whichever store keeps them.
pub type Datasets = Arc<dyn DatasetStore>;

impl DatasetStore for Db {
    fn insert_dataset(&self, d: &DatasetRecord) -> Result<bool, StateError> {
        Ok(Db::insert_dataset(self, d)?)
    }
    fn dataset(&self, key: &str) -> Result<Option<DatasetRecord>, StateError> {
        Ok(Db::dataset(self, key)?)
    }
    fn datasets(&self) -> Result<Vec<DatasetRecord>, StateError> {
        Ok(Db::datasets(self)?)
    }
    fn datasets_named(&self, name: &str) -> Result<Vec<DatasetRecord>, StateError> {
        Ok(Db::datasets_named(self, name)?)
    }
    fn dataset_uses(&self, object: &str) -> Result<bool, StateError> {
        Ok(Db::dataset_uses(self, object)?)
    }
    fn tenant_usage(&self, tenant: &str) -> Result<(usize, u64), StateError> {
        Ok(Db::dataset_usage(self, tenant)?)
    }
}

/// A dataset's record as etcd keeps it (the API's form shows the name without its tenant).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    key: String,
    tenant: String,
    classification: String,
    object: String,
    bytes: u64,
    owner: String,
    created_at: f64,
}

/// What a record's MAC covers: what the database's covers.
impl Covered for Stored {
    const TABLE: &'static str = "datasets";
    fn row(&self) -> String {
        self.key.clone()
    }
    fn covered(&self) -> serde_json::Value {
        DatasetRecord::from(self.clone()).covered()
    }
}

impl From<&DatasetRecord> for Stored {
    fn from(d: &DatasetRecord) -> Self {
        Stored {
            key: d.name.clone(),
            tenant: d.tenant.clone(),
            classification: d.classification.clone(),
            object: d.object.clone(),
            bytes: d.bytes,
            owner: d.owner.clone(),
            created_at: d.created_at,
        }
    }
}

impl From<Stored> for DatasetRecord {
    fn from(s: Stored) -> Self {
        DatasetRecord {
            name: s.key,
            tenant: s.tenant,
            classification: s.classification,
            object: s.object,
            bytes: s.bytes,
            owner: s.owner,
            created_at: s.created_at,
        }
    }
}

/// Dataset records in etcd, under `<root>/datasets/<tenant>/<name>`.
#[derive(Debug)]
pub struct EtcdDatasets {
    etcd: Arc<Etcd>,
    root: String,
    /// Set where a key file is in use: each record is written with its MAC and read only when
    /// its MAC verifies, as [`Db::authenticate_rows`].
    rows: Option<RowMac>,
}

impl Authenticated for EtcdDatasets {
    fn with_rows(mut self, rows: Option<RowMac>) -> EtcdDatasets {
        self.rows = rows;
        self
    }
}

impl EtcdDatasets {
    /// Datasets under `root` in `etcd`.
    pub fn new(etcd: Arc<Etcd>, root: &str) -> EtcdDatasets {
        EtcdDatasets {
            etcd,
            root: root.trim_end_matches('/').to_string(),
            rows: None,
        }
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}/datasets/{rest}", self.root).into_bytes()
    }

    /// `d` as etcd keeps it, with its MAC where rows are authenticated.
    fn value(&self, d: &DatasetRecord) -> Vec<u8> {
        signed_value(self.rows.as_ref(), &Stored::from(d))
    }

    /// The record in `kv`, checked where rows are authenticated.
    fn checked(&self, kv: &gantry_etcd::Kv) -> Result<DatasetRecord, EtcdStoreError> {
        Ok(checked_value::<Stored>(self.rows.as_ref(), kv)?.into())
    }

    /// Gives every record without a MAC its MAC, as
    /// [`crate::etcdstore::EtcdJobs::authenticate_unmarked`] does jobs; how many.
    pub fn authenticate_unmarked(&self) -> Result<usize, EtcdStoreError> {
        match &self.rows {
            Some(rows) => sign_unmarked::<Stored>(&self.etcd, rows, &self.key("")),
            None => Ok(0),
        }
    }
}

impl DatasetStore for EtcdDatasets {
    fn insert_dataset(&self, d: &DatasetRecord) -> Result<bool, StateError> {
        let key = self.key(&d.name);
        let value = self.value(d);
        let outcome = self
            .etcd
            .txn(
                &[Compare::Created(key.clone(), 0)],
                &[Op::Put(key, value, 0)],
                &[],
            )
            .map_err(EtcdStoreError::from)?;
        Ok(outcome.succeeded)
    }

    fn dataset(&self, key: &str) -> Result<Option<DatasetRecord>, StateError> {
        match self
            .etcd
            .get(&self.key(key))
            .map_err(EtcdStoreError::from)?
        {
            Some(kv) => Ok(Some(self.checked(&kv)?)),
            None => Ok(None),
        }
    }

    fn datasets(&self) -> Result<Vec<DatasetRecord>, StateError> {
        // Keys are in `tenant/name` order, as SQLite's listing is.
        let all = self
            .etcd
            .prefix(&self.key(""), 0)
            .map_err(EtcdStoreError::from)?;
        Ok(all
            .iter()
            .map(|kv| self.checked(kv))
            .collect::<Result<_, _>>()?)
    }

    fn datasets_named(&self, name: &str) -> Result<Vec<DatasetRecord>, StateError> {
        Ok(self
            .datasets()?
            .into_iter()
            .filter(|d| crate::db::name_of(&d.name) == name)
            .collect())
    }

    fn dataset_uses(&self, object: &str) -> Result<bool, StateError> {
        Ok(self.datasets()?.iter().any(|d| d.object == object))
    }

    fn tenant_usage(&self, tenant: &str) -> Result<(usize, u64), StateError> {
        let all: Vec<Stored> = decode_prefix(&self.etcd, &self.key(&format!("{tenant}/")))?;
        let bytes = all.iter().map(|d| d.bytes).fold(0u64, u64::saturating_add);
        Ok((all.len(), bytes))
    }
}

/// Copies `from`'s dataset records into `to` once ([`seed_once`]), each dataset's bytes kept in
/// etcd by `share` first; how many were copied.
pub fn seed(
    from: &Db,
    to: &EtcdDatasets,
    share: impl Fn(&DatasetRecord) -> Result<(), String>,
) -> Result<Option<usize>, String> {
    let marker = format!("{}/seeded/datasets", to.root).into_bytes();
    seed_once(&to.etcd, &marker, || {
        let mut copied = 0;
        for d in from.datasets().map_err(|e| e.to_string())? {
            if to.dataset(&d.name).map_err(|e| e.to_string())?.is_none() {
                share(&d)?;
                to.insert_dataset(&d).map_err(|e| e.to_string())?;
                copied += 1;
            }
        }
        Ok::<_, String>(copied)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_etcd::testing::EtcdProcess;

    fn record(tenant: &str, name: &str) -> DatasetRecord {
        DatasetRecord {
            name: crate::db::key(tenant, name),
            tenant: tenant.into(),
            classification: "internal".into(),
            object: "ab".repeat(32),
            bytes: 7,
            owner: "ada".into(),
            created_at: 1.0,
        }
    }

    /// What both stores must do alike.
    fn contract(s: &dyn DatasetStore) {
        assert!(s.datasets().unwrap().is_empty());
        assert!(s.insert_dataset(&record("vision", "b.csv")).unwrap());
        assert!(s.insert_dataset(&record("language", "b.csv")).unwrap());
        assert!(s.insert_dataset(&record("vision", "a.csv")).unwrap());
        assert!(
            !s.insert_dataset(&record("vision", "a.csv")).unwrap(),
            "taken"
        );
        let keys = |v: Vec<DatasetRecord>| v.into_iter().map(|d| d.name).collect::<Vec<_>>();
        assert_eq!(
            keys(s.datasets().unwrap()),
            ["language/b.csv", "vision/a.csv", "vision/b.csv"]
        );
        assert_eq!(
            keys(s.datasets_named("b.csv").unwrap()),
            ["language/b.csv", "vision/b.csv"]
        );
        let d = s.dataset("vision/a.csv").unwrap().unwrap();
        assert_eq!((d.tenant.as_str(), d.bytes), ("vision", 7));
        assert!(s.dataset("vision/c.csv").unwrap().is_none());
    }

    #[test]
    fn sqlite_keeps_datasets() {
        let dir = tempfile::tempdir().unwrap();
        contract(&Db::open(&dir.path().join("g.db")).unwrap());
    }

    #[test]
    fn etcd_keeps_datasets_and_is_seeded_once() {
        let Some(etcd) = EtcdProcess::start_or_skip("etcd_keeps_datasets") else {
            return;
        };
        let s = EtcdDatasets::new(Arc::new(etcd.client()), "gantry");
        contract(&s);
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("g.db")).unwrap();
        db.insert_dataset(&record("vision", "local.csv")).unwrap();
        let shared = std::cell::Cell::new(0);
        let share = |_: &DatasetRecord| {
            shared.set(shared.get() + 1);
            Ok(())
        };
        assert_eq!(seed(&db, &s, share).unwrap(), Some(1));
        assert_eq!(shared.get(), 1, "its bytes were kept first");
        assert!(s.dataset("vision/local.csv").unwrap().is_some());
        assert_eq!(seed(&db, &s, share).unwrap(), None, "once");
    }

    /// Under a key file dataset records in etcd are authenticated: one whose classification a
    /// writer of etcd lowered, or one planted, is refused where it is read; those written before
    /// are authenticated once asked (`--authenticate-etcd-rows`).
    #[test]
    fn datasets_in_etcd_changed_outside_gantry_are_refused_under_a_key_file() {
        let Some(etcd) = EtcdProcess::start_or_skip("datasets_in_etcd_changed") else {
            return;
        };
        let client = Arc::new(etcd.client());
        let plain = EtcdDatasets::new(client.clone(), "gantry");
        let keyed =
            EtcdDatasets::new(client.clone(), "gantry").with_rows(Some(RowMac::new(&[5; 32])));
        assert!(plain.insert_dataset(&record("vision", "old.csv")).unwrap());
        let refused = |e: StateError, key: &str| {
            let e = e.to_string();
            assert!(e.contains(key) && e.contains("key file"), "{e}");
        };
        refused(
            keyed.datasets().unwrap_err(),
            "gantry/datasets/vision/old.csv",
        );
        assert_eq!(keyed.authenticate_unmarked().unwrap(), 1);
        assert!(keyed.insert_dataset(&record("vision", "new.csv")).unwrap());
        assert_eq!(keyed.datasets().unwrap().len(), 2);
        contract(
            &EtcdDatasets::new(client.clone(), "other").with_rows(Some(RowMac::new(&[5; 32]))),
        );

        let key = "gantry/datasets/vision/new.csv";
        crate::testing::change_in_etcd(&client, key, "classification", "public".into());
        refused(
            keyed.dataset("vision/new.csv").unwrap_err(),
            "vision/new.csv",
        );
        refused(
            keyed.datasets_named("new.csv").unwrap_err(),
            "vision/new.csv",
        );
        assert!(
            plain.dataset("vision/new.csv").unwrap().is_some(),
            "no key file"
        );
        let planted = serde_json::to_vec(&Stored::from(&record("vision", "planted.csv"))).unwrap();
        client.put(key.as_bytes(), &planted, 0).unwrap();
        refused(
            keyed.dataset("vision/new.csv").unwrap_err(),
            "vision/new.csv",
        );
    }
}
