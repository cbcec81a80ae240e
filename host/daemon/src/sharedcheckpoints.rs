//! A replicated control plane's checkpoints, readable by every replica: a checkpoint arrives at
//! the leader of the moment and goes into its data directory's store, but a run that starts
//! again under a later leader (its node lost) resumes from it there. So the leader also keeps
//! each job's newest checkpoint in etcd, still sealed as its store sealed it (chunks and data
//! key encrypted; the replicas share their master keys, being copies of one data directory),
//! and a replica that lacks it brings it into its own store before reading it. One per job, at
//! most [`MAX_SHARED`] bytes, under `<root>/sealed-checkpoints/<job>/` (beside the jobs' own keys); forgotten when the job ends.

use std::sync::Arc;

use gantry::storage::{SealedObject, Store, StoreError};
use gantry_etcd::Etcd;
use serde::{Deserialize, Serialize};

use crate::etcdblobs::{Blob, EtcdBlobs};

/// The largest checkpoint a replicated control plane keeps in etcd, bytes.
pub const MAX_SHARED: usize = 64 << 20;

/// A job's newest checkpoint, as etcd keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Shared {
    /// Its object id in the stores.
    object: String,
    chunks: Blob,
    key: Blob,
}

/// The jobs' newest checkpoints in etcd.
#[derive(Debug)]
pub struct SharedCheckpoints {
    etcd: Arc<Etcd>,
    root: String,
}

impl SharedCheckpoints {
    /// Checkpoints under `root` in `etcd`.
    pub fn new(etcd: Arc<Etcd>, root: &str) -> SharedCheckpoints {
        SharedCheckpoints {
            etcd,
            root: root.trim_end_matches('/').to_string(),
        }
    }

    /// Job `job`'s blobs: its own prefix, so that forgetting them touches no other job's.
    fn blobs(&self, job: &str) -> EtcdBlobs {
        EtcdBlobs::new(
            self.etcd.clone(),
            &format!("{}/sealed-checkpoints/{job}/blobs", self.root),
        )
    }

    fn key(&self, job: &str) -> Vec<u8> {
        format!("{}/sealed-checkpoints/{job}/newest", self.root).into_bytes()
    }

    fn newest(&self, job: &str) -> Result<Option<Shared>, String> {
        let Some(kv) = self.etcd.get(&self.key(job)).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        crate::etcdstore::decode(&kv.key, &kv.value)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Keeps object `object` of `store` in etcd as job `job`'s newest checkpoint (the one
    /// before it goes): before the checkpoint is recorded, so that no record names one a later
    /// leader cannot read.
    pub fn share(&self, store: &Store, job: &str, object: &str) -> Result<(), String> {
        let sealed = store
            .sealed(object, MAX_SHARED as u64)
            .map_err(|e| match e {
                StoreError::Corrupt { .. } => format!(
                    "the checkpoint is over the {MAX_SHARED} bytes a replicated control plane \
                     keeps in etcd"
                ),
                e => e.to_string(),
            })?;
        let blobs = self.blobs(job);
        let shared = Shared {
            object: object.to_string(),
            chunks: blobs.put(&sealed.chunks)?,
            key: blobs.put(&sealed.key)?,
        };
        let before = self.newest(job)?;
        let value = serde_json::to_vec(&shared).expect("a checkpoint's record serialises");
        self.etcd
            .put(&self.key(job), &value, 0)
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

    /// Brings job `job`'s checkpoint `object` into `store` from etcd; an error when etcd does
    /// not hold it (not the job's newest) or it does not read as that object.
    pub fn fetch(&self, store: &Store, job: &str, object: &str) -> Result<(), String> {
        let shared = self
            .newest(job)?
            .filter(|s| s.object == object)
            .ok_or_else(|| {
                format!(
                    "checkpoint object {} of job {job} is neither in this replica's store nor in etcd",
                    &object[..object.len().min(16)]
                )
            })?;
        let blobs = self.blobs(job);
        let sealed = SealedObject {
            chunks: blobs.get(&shared.chunks, MAX_SHARED)?,
            key: blobs.get(&shared.key, 4096)?,
        };
        store
            .put_sealed(object, &sealed)
            .map_err(|e| format!("checkpoint object from etcd: {e}"))
    }

    /// Forgets job `job`'s checkpoint (the job is over); a failure only leaves it behind.
    pub fn forget(&self, job: &str) {
        if let Ok(Some(shared)) = self.newest(job) {
            let _ = self.etcd.delete(&self.key(job));
            let blobs = self.blobs(job);
            blobs.delete(&shared.chunks);
            blobs.delete(&shared.key);
        }
    }
}
