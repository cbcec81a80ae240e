//! Large values in etcd (a policy bundle, a plugin's component): etcd refuses requests over
//! 1.5 MiB, so a blob is kept in chunks of 1 MiB under `<prefix>/<sha256>/<n>`, named by its
//! SHA-256 and checked against it when read. Whatever names a blob is written after all its
//! chunks, so it never names one not all there.

use std::sync::Arc;

use gantry_etcd::Etcd;
use serde::{Deserialize, Serialize};

/// The most bytes of a blob one etcd value holds.
pub const CHUNK: usize = 1 << 20;

/// A blob kept in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    /// Its SHA-256, hex.
    pub object: String,
    /// Its length, bytes.
    pub size: usize,
    /// How many chunks hold it.
    pub chunks: usize,
}

/// Blobs under one prefix.
#[derive(Debug)]
pub struct EtcdBlobs {
    etcd: Arc<Etcd>,
    prefix: String,
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

impl EtcdBlobs {
    /// Blobs under `prefix` (`gantry/policy/bundles`, say) in `etcd`.
    pub fn new(etcd: Arc<Etcd>, prefix: &str) -> EtcdBlobs {
        EtcdBlobs {
            etcd,
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    fn chunk_key(&self, object: &str, n: usize) -> Vec<u8> {
        format!("{}/{object}/{n:06}", self.prefix).into_bytes()
    }

    /// Keeps `bytes`; returns what names them.
    pub fn put(&self, bytes: &[u8]) -> Result<Blob, String> {
        let object = sha256_hex(bytes);
        let mut chunks = 0;
        for (n, chunk) in bytes.chunks(CHUNK).enumerate() {
            self.etcd
                .put(&self.chunk_key(&object, n), chunk, 0)
                .map_err(|e| e.to_string())?;
            chunks += 1;
        }
        Ok(Blob {
            object,
            size: bytes.len(),
            chunks,
        })
    }

    /// The bytes of `blob`, which may be at most `max` long; an error names a chunk missing or
    /// a blob that does not match its SHA-256.
    pub fn get(&self, blob: &Blob, max: usize) -> Result<Vec<u8>, String> {
        if blob.size > max || blob.chunks != blob.size.div_ceil(CHUNK) {
            return Err(format!(
                "`{}/{}`: {} bytes in {} chunks is not a blob this version wrote",
                self.prefix, blob.object, blob.size, blob.chunks
            ));
        }
        let mut bytes = Vec::with_capacity(blob.size);
        for n in 0..blob.chunks {
            let key = self.chunk_key(&blob.object, n);
            let kv = self
                .etcd
                .get(&key)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!("etcd key `{}` is missing", String::from_utf8_lossy(&key))
                })?;
            bytes.extend_from_slice(&kv.value);
        }
        if bytes.len() != blob.size || sha256_hex(&bytes) != blob.object {
            return Err(format!(
                "the blob in etcd under `{}/{}` does not match its SHA-256",
                self.prefix, blob.object
            ));
        }
        Ok(bytes)
    }

    /// Deletes `blob`'s chunks once nothing names it (a failure only leaves them behind).
    pub fn delete(&self, blob: &Blob) {
        for n in 0..blob.chunks {
            let _ = self.etcd.delete(&self.chunk_key(&blob.object, n));
        }
    }
}
