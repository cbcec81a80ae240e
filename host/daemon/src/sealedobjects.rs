//! Objects of a replicated control plane that every replica must read: a checkpoint or a dataset
//! arrives at the leader of the moment and goes into its data directory's store, but a later
//! leader reads it too (a run that starts again, a training job on the dataset). So the leader
//! also keeps them in etcd, still sealed as its store sealed them (chunks and data key
//! encrypted; the replicas share their master keys, being copies of one data directory), and a
//! replica that lacks one brings it into its own store before reading it. Each under an
//! *owner*, one object per owner: `checkpoint/<job>/<object>` (each forgotten when the job's
//! record no longer names it, or the job ends; one of a run refused as stale at once) or
//! `dataset/<object>` (datasets are never replaced); at most [`MAX_SHARED`] bytes each,
//! under `<root>/sealed/<owner>/`.

use std::sync::Arc;

use gantry::storage::{SealedObject, Store, StoreError};
use gantry_etcd::Etcd;
use serde::{Deserialize, Serialize};

use crate::etcdblobs::{Blob, EtcdBlobs};

/// The largest object a replicated control plane keeps in etcd, sealed, bytes: one of the
/// largest upload ([`crate::api::MAX_UPLOAD`], a dataset's), which bounds a checkpoint's upload
/// too on a replicated control plane.
pub const MAX_SHARED: usize = gantry::storage::sealed_len(crate::api::MAX_UPLOAD as u64) as usize;

/// An owner's object, as etcd keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Shared {
    /// Its object id in the stores.
    object: String,
    chunks: Blob,
    key: Blob,
}

/// Sealed objects in etcd, by owner.
#[derive(Debug)]
pub struct SealedObjects {
    etcd: Arc<Etcd>,
    root: String,
}

impl SealedObjects {
    /// Objects under `root` in `etcd`.
    pub fn new(etcd: Arc<Etcd>, root: &str) -> SealedObjects {
        SealedObjects {
            etcd,
            root: root.trim_end_matches('/').to_string(),
        }
    }

    /// `owner`'s blobs: its own prefix, so that forgetting them touches no other owner's.
    fn blobs(&self, owner: &str) -> EtcdBlobs {
        EtcdBlobs::new(
            self.etcd.clone(),
            &format!("{}/sealed/{owner}/blobs", self.root),
        )
    }

    fn key(&self, owner: &str) -> Vec<u8> {
        format!("{}/sealed/{owner}/object", self.root).into_bytes()
    }

    fn newest(&self, owner: &str) -> Result<Option<Shared>, String> {
        let Some(kv) = self.etcd.get(&self.key(owner)).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        crate::etcdstore::decode(&kv.key, &kv.value)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Keeps object `object` of `store` in etcd as `owner`'s (the one it had before goes): before
    /// what names the object is recorded, so that nothing names one a later leader cannot read.
    pub fn share(&self, store: &Store, owner: &str, object: &str) -> Result<(), String> {
        let sealed = store
            .sealed(object, MAX_SHARED as u64)
            .map_err(|e| match e {
                StoreError::Corrupt { .. } => format!(
                    "{owner}: over the {MAX_SHARED} bytes a replicated control plane keeps in etcd"
                ),
                e => e.to_string(),
            })?;
        let blobs = self.blobs(owner);
        let shared = Shared {
            object: object.to_string(),
            chunks: blobs.put(&sealed.chunks)?,
            key: blobs.put(&sealed.key)?,
        };
        let before = self.newest(owner)?;
        let value = serde_json::to_vec(&shared).expect("a sealed object's record serialises");
        self.etcd
            .put(&self.key(owner), &value, 0)
            .map_err(|e| e.to_string())?;
        if let Some(old) = before.filter(|old| old.object != object) {
            for blob in [&old.chunks, &old.key] {
                if blob != &shared.chunks && blob != &shared.key {
                    blobs.delete(blob);
                }
            }
        }
        Ok(())
    }

    /// Brings `owner`'s object `object` into `store` from etcd; an error when etcd does not hold
    /// it (not the owner's) or it does not read as that object.
    pub fn fetch(&self, store: &Store, owner: &str, object: &str) -> Result<(), String> {
        let shared = self
            .newest(owner)?
            .filter(|s| s.object == object)
            .ok_or_else(|| {
                format!(
                    "object {} ({owner}) is neither in this replica's store nor in etcd",
                    &object[..object.len().min(16)]
                )
            })?;
        let blobs = self.blobs(owner);
        let sealed = SealedObject {
            chunks: blobs.get(&shared.chunks, MAX_SHARED)?,
            key: blobs.get(&shared.key, 4096)?,
        };
        store
            .put_sealed(object, &sealed)
            .map_err(|e| format!("{owner}'s object from etcd: {e}"))
    }

    /// Forgets `owner`'s object; a failure only leaves it behind.
    pub fn forget(&self, owner: &str) {
        if let Ok(Some(shared)) = self.newest(owner) {
            let _ = self.etcd.delete(&self.key(owner));
            let blobs = self.blobs(owner);
            blobs.delete(&shared.chunks);
            blobs.delete(&shared.key);
        }
    }
}
