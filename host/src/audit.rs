//! The audit log: an append-only file of JSON lines, each carrying the SHA-256 of the line before
//! it, with checkpoints signed by the host's Ed25519 key.
//!
//! The chain makes a changed, removed, inserted or reordered entry visible at the next line; the
//! signed checkpoints make a rewrite of the whole chain visible too (the hashes are unkeyed, the
//! signatures are not). Entries after the last checkpoint are chained but not yet signed: a log is
//! closed with a checkpoint, and [`verify`] reports how many entries trail the last one.
//!
//! Every entry is written with one `write` of a whole line and synced before `append` returns. A
//! crash can only leave a partial last line without its newline; [`AuditLog::open`] cuts it off
//! and [`verify`] reports it rather than failing.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::keys;
use crate::plugin::cache::{hex, sha256_hex};

/// `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Entries between automatic checkpoints.
pub const CHECKPOINT_EVERY: u64 = 64;

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When it was written, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `decision`, `plugin.load`, `plugin.unload`, `plugin.upload`, `policy.swap`,
    /// `request.rejected` (the daemon's refusals that no policy decided) or `checkpoint`.
    pub kind: String,
    /// What happened (absent on checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<serde_json::Value>,
    /// Hex SHA-256 of the previous line's bytes ([`GENESIS`] for the first).
    pub prev: String,
    /// Checkpoints: hex Ed25519 signature of [`checkpoint_message`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Checkpoints: hex public key of the signer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A policy decision, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Decision<'a> {
    /// Unique id, also on the decision's `tracing` event.
    pub decision_id: &'a str,
    /// Who asked (the input's `subject`).
    pub subject: &'a serde_json::Value,
    /// What they asked to do.
    pub action: &'a serde_json::Value,
    /// On what.
    pub resource: &'a serde_json::Value,
    /// The entrypoint evaluated.
    pub entrypoint: &'a str,
    /// The answer (false on any evaluation error: fail closed).
    pub allow: bool,
    /// Why not, or the error.
    pub reasons: Vec<String>,
    /// Revision of the policy bundle that decided.
    pub revision: &'a str,
    /// Evaluation time, microseconds.
    pub latency_us: f64,
}

/// A fresh decision id: 128 random bits, hex.
pub fn new_decision_id() -> String {
    let mut bytes = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    hex(&bytes)
}

/// The bytes a checkpoint signs: it covers its position and, through `prev`, every line before.
pub fn checkpoint_message(seq: u64, prev: &str) -> Vec<u8> {
    format!("gantry-audit-checkpoint\n{seq}\n{prev}").into_bytes()
}

/// Audit log failures, naming the file and, for verification, the first bad line.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The log.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// The log does not verify.
    #[error("{path}:{line}: {reason}")]
    Tampered {
        /// The log.
        path: PathBuf,
        /// The first bad line (1-based).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// An open log, appending. Shared by reference between threads: entries are written in one
/// order under a lock, and made durable by group commit (see [`AuditLog::append`]).
pub struct AuditLog {
    path: PathBuf,
    key: Ed25519KeyPair,
    tail: std::sync::Mutex<Tail>,
    /// The highest sequence number known to be on disk; held while syncing.
    synced: std::sync::Mutex<u64>,
    /// A second handle on the file, synced without holding `tail`.
    sync_file: File,
}

/// The appending end of the log.
struct Tail {
    file: File,
    seq: u64,
    prev: String,
    since_checkpoint: u64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("seq", &self.len())
            .finish()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl AuditLog {
    /// Opens (or creates) the log at `path`, signing checkpoints with `key`. A partial last line
    /// left by a crash is cut off (and logged); the rest must verify.
    pub fn open(path: &Path, key: Ed25519KeyPair) -> Result<Self, AuditError> {
        let io = |error| AuditError::Io {
            path: path.to_path_buf(),
            error,
        };
        let (mut seq, mut prev, mut since_checkpoint) = (0, GENESIS.to_string(), 0);
        if path.exists() {
            let bytes = std::fs::read(path).map_err(io)?;
            let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if whole < bytes.len() {
                tracing::warn!(
                    path = %path.display(),
                    bytes = bytes.len() - whole,
                    "audit log: cutting off a partial last entry (a crash during a write)"
                );
                let file = OpenOptions::new().write(true).open(path).map_err(io)?;
                file.set_len(whole as u64).map_err(io)?;
                file.sync_all().map_err(io)?;
            }
            let report = verify_bytes(path, &bytes[..whole], None)?;
            seq = report.entries;
            since_checkpoint = report.unsigned_tail;
            if let Some(last) = bytes[..whole]
                .strip_suffix(b"\n")
                .and_then(|b| b.split(|&c| c == b'\n').next_back())
            {
                prev = sha256_hex(last);
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let sync_file = file.try_clone().map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            key,
            tail: std::sync::Mutex::new(Tail {
                file,
                seq,
                prev,
                since_checkpoint,
            }),
            synced: std::sync::Mutex::new(seq),
            sync_file,
        })
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries written so far (checkpoints included).
    pub fn len(&self) -> u64 {
        self.tail().seq
    }

    /// True when the log has no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes one entry at the end of `tail` (not yet synced). One write of the whole line: a
    /// crash leaves either the line or a partial tail without a newline, which `open` cuts off.
    fn write(
        &self,
        tail: &mut Tail,
        kind: &str,
        record: Option<serde_json::Value>,
    ) -> Result<u64, AuditError> {
        let seq = tail.seq + 1;
        let mut entry = Entry {
            seq,
            time_ms: now_ms(),
            kind: kind.to_string(),
            record,
            prev: tail.prev.clone(),
            signature: None,
            key: None,
        };
        if kind == "checkpoint" {
            let sig = self.key.sign(&checkpoint_message(seq, &tail.prev));
            entry.signature = Some(hex(sig.as_ref()));
            entry.key = Some(hex(self.key.public_key().as_ref()));
        }
        let mut line = serde_json::to_vec(&entry).expect("an entry serializes");
        let hash = sha256_hex(&line);
        line.push(b'\n');
        tail.file.write_all(&line).map_err(|error| AuditError::Io {
            path: self.path.clone(),
            error,
        })?;
        tail.seq = seq;
        tail.prev = hash;
        tail.since_checkpoint = if kind == "checkpoint" {
            0
        } else {
            tail.since_checkpoint + 1
        };
        Ok(seq)
    }

    /// Returns once entry `seq` is on disk. Group commit: whoever finds it unsynced syncs
    /// everything written so far, while the others wait on `synced` and then find their entry
    /// covered; so concurrent requests share one sync instead of queueing for one each.
    fn durable(&self, seq: u64) -> Result<(), AuditError> {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced >= seq {
            return Ok(());
        }
        let written = self.tail().seq;
        self.sync_file.sync_data().map_err(|error| AuditError::Io {
            path: self.path.clone(),
            error,
        })?;
        *synced = written;
        Ok(())
    }

    /// Appends an event (`plugin.load`, `policy.swap`, ...), with a signed checkpoint every
    /// [`CHECKPOINT_EVERY`] entries, and returns the entry's sequence number once it is on disk.
    pub fn append(&self, kind: &str, record: serde_json::Value) -> Result<u64, AuditError> {
        let (seq, last) = {
            let mut tail = self.tail();
            let seq = self.write(&mut tail, kind, Some(record))?;
            if tail.since_checkpoint >= CHECKPOINT_EVERY {
                self.write(&mut tail, "checkpoint", None)?;
            }
            (seq, tail.seq)
        };
        self.durable(last)?;
        Ok(seq)
    }

    /// Appends a policy decision and emits it as a `tracing` event with its id.
    pub fn decision(&self, decision: &Decision<'_>) -> Result<u64, AuditError> {
        tracing::info!(
            target: "gantry::audit",
            decision_id = decision.decision_id,
            allow = decision.allow,
            entrypoint = decision.entrypoint,
            revision = decision.revision,
            latency_us = decision.latency_us,
            "policy decision"
        );
        let record = serde_json::to_value(decision).expect("a decision serializes");
        self.append("decision", record)
    }

    /// Appends a signed checkpoint covering every entry so far.
    pub fn checkpoint(&self) -> Result<u64, AuditError> {
        let seq = {
            let mut tail = self.tail();
            self.write(&mut tail, "checkpoint", None)?
        };
        self.durable(seq)?;
        Ok(seq)
    }

    /// Ends the log with a checkpoint, so every entry is covered by a signature.
    pub fn close(&self) -> Result<(), AuditError> {
        if self.tail().since_checkpoint > 0 {
            self.checkpoint()?;
        }
        Ok(())
    }
}

/// What a verification found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Entries that verified (checkpoints included).
    pub entries: u64,
    /// Signed checkpoints among them.
    pub checkpoints: u64,
    /// Entries after the last checkpoint: chained, not yet signed.
    pub unsigned_tail: u64,
    /// Hex public key that signed the checkpoints.
    pub key: Option<String>,
    /// Whether a partial last line (a crash during a write) was ignored.
    pub torn_tail: bool,
}

/// Verifies the log at `path`: the chain, the sequence, and every checkpoint's signature, by
/// `trusted_key` (hex public key) when given, else by the key of the first checkpoint.
pub fn verify(path: &Path, trusted_key: Option<&str>) -> Result<VerifyReport, AuditError> {
    let bytes = std::fs::read(path).map_err(|error| AuditError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut report = verify_bytes(path, &bytes[..whole], trusted_key)?;
    report.torn_tail = whole < bytes.len();
    Ok(report)
}

fn verify_bytes(
    path: &Path,
    bytes: &[u8],
    trusted_key: Option<&str>,
) -> Result<VerifyReport, AuditError> {
    let bad = |line: usize, reason: String| AuditError::Tampered {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut report = VerifyReport {
        entries: 0,
        checkpoints: 0,
        unsigned_tail: 0,
        key: trusted_key.map(str::to_string),
        torn_tail: false,
    };
    let mut prev = GENESIS.to_string();
    let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if text.is_empty() {
        return Ok(report);
    }
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let entry: Entry = serde_json::from_slice(line)
            .map_err(|e| bad(n, format!("not an audit entry ({e})")))?;
        if entry.seq != n as u64 {
            return Err(bad(
                n,
                format!(
                    "entry number {} where {n} was expected: entries were removed, inserted or \
                     reordered here",
                    entry.seq
                ),
            ));
        }
        if entry.prev != prev {
            return Err(bad(
                n - 1,
                "the next entry does not chain to this one: it was changed, or entries around \
                 it were removed, inserted or reordered"
                    .into(),
            ));
        }
        if entry.kind == "checkpoint" {
            let (Some(sig), Some(key)) = (&entry.signature, &entry.key) else {
                return Err(bad(n, "checkpoint without signature or key".into()));
            };
            let expected = report.key.get_or_insert_with(|| key.clone());
            if key != expected {
                return Err(bad(
                    n,
                    format!("checkpoint signed by key {key}, not the trusted {expected}"),
                ));
            }
            let (Some(sig), Some(key)) = (keys::from_hex(sig), keys::from_hex(key)) else {
                return Err(bad(n, "checkpoint signature or key is not hex".into()));
            };
            UnparsedPublicKey::new(&ED25519, key)
                .verify(&checkpoint_message(entry.seq, &entry.prev), &sig)
                .map_err(|_| {
                    bad(
                        n,
                        "checkpoint signature does not verify: the entries before it were \
                         rewritten"
                            .into(),
                    )
                })?;
            report.checkpoints += 1;
            report.unsigned_tail = 0;
        } else {
            report.unsigned_tail += 1;
        }
        prev = sha256_hex(line);
        report.entries += 1;
    }
    Ok(report)
}
