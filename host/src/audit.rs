//! The audit log: an append-only file of JSON lines, each carrying the SHA-256 of the line before
//! it, with checkpoints signed by the host's Ed25519 key.
//!
//! The chain makes a changed, removed, inserted or reordered entry visible at the next line; the
//! signed checkpoints make a rewrite of the whole chain visible too (the hashes are unkeyed, the
//! signatures are not), and each signs every field of its own line, which no later line covers
//! when it is the last. A log verifies only if it ends in a checkpoint signed by the expected key
//! and no run of entries between checkpoints is longer than the writer ever leaves one
//! ([`CHECKPOINT_EVERY`]): stripping checkpoints and recomputing the chain, or cutting the tail
//! mid-way, fails. A log cut back to an earlier checkpoint still ends sealed; that is caught by
//! the latest sealed position ([`Head`]) kept outside the log (the daemon keeps it in its
//! database, and an operator can anchor it anywhere): verification given a head fails unless
//! the log holds that exact checkpoint.
//!
//! The writer seals (appends a checkpoint) every [`CHECKPOINT_EVERY`] entries, whenever asked
//! ([`AuditLog::seal`]: the daemon does so every [`SEAL_INTERVAL`]) and on [`AuditLog::close`].
//! Every entry is written with one `write` of a whole line and synced before `append` returns. A
//! crash can only leave a partial last line without its newline and some entries not yet
//! sealed; [`AuditLog::open`] cuts the partial line off and seals those entries, recording how
//! many in an `audit.tail_sealed` entry, so the log verifies again and says what happened.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::plugin::cache::{hex, sha256_hex};

pub mod tally;
mod verify;

pub use self::verify::{VerifyOptions, VerifyReport, last_verified, verify, verify_with};

/// `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Entries between automatic checkpoints: also the longest run without one that verifies.
pub const CHECKPOINT_EVERY: u64 = 64;

/// How often a daemon seals entries that arrived since the last checkpoint.
pub const SEAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest line the log holds (a bigger record is replaced by its size and digest); a
/// longer line is refused by verification before it is read whole.
pub const MAX_LINE: usize = 1 << 20;

/// One line of the log. A field the writer never writes is refused by verification: the last
/// line is covered by no later `prev`, only by its signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When it was written, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `decision`, `plugin.load`, `plugin.unload`, `plugin.upload`, `policy.swap`,
    /// `request.rejected` (the daemon's refusals that no policy decided), `key.rotate`,
    /// `user.add`, `user.revoke`, `audit.tail_sealed` (entries a crash left unsealed, sealed at
    /// the next start), `audit.recovered` (the first entry of a log that replaced a damaged one)
    /// or `checkpoint`.
    pub kind: String,
    /// What happened (absent on checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<serde_json::Value>,
    /// Hex SHA-256 of the previous line's bytes ([`GENESIS`] for the first).
    pub prev: String,
    /// Checkpoints: `v2:` and the hex Ed25519 signature of [`checkpoint_message`] (logs written
    /// before: the hex signature of [`legacy_checkpoint_message`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Checkpoints: hex public key of the signer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A sealed position of a log: a checkpoint's sequence number and the SHA-256 of its line (the
/// `prev` of the entry after it). Written `SEQ:HASH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The checkpoint's sequence number.
    pub seq: u64,
    /// Hex SHA-256 of its line.
    pub hash: String,
}

impl std::fmt::Display for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

impl std::str::FromStr for Head {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (seq, hash) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("`{s}`: a head is SEQ:HASH"))?;
        let seq = seq
            .parse()
            .map_err(|_| format!("`{s}`: SEQ is a sequence number"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("`{s}`: HASH is 64 hex digits"));
        }
        Ok(Head {
            seq,
            hash: hash.to_ascii_lowercase(),
        })
    }
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
    /// What the host gave the policy: its clock reading and random draws (absent when none), so
    /// that a decision that depended on them can be explained.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub given: &'a [crate::policy::decide::HostValue],
}

impl Decision<'_> {
    /// The decision as an audit entry's record (what [`AuditLog::decision`] appends), emitted as
    /// a `tracing` event with its id.
    pub fn record(&self) -> serde_json::Value {
        tracing::info!(
            target: "gantry::audit",
            decision_id = self.decision_id,
            allow = self.allow,
            entrypoint = self.entrypoint,
            revision = self.revision,
            latency_us = self.latency_us,
            "policy decision"
        );
        serde_json::to_value(self).expect("a decision serializes")
    }
}

/// A fresh decision id: 128 random bits, hex.
pub fn new_decision_id() -> String {
    let mut bytes = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    hex(&bytes)
}

/// The bytes a checkpoint of the first format signed: its position and, through `prev`, every
/// line before, but not its own time, so the last line of a log could be altered and still
/// verify. Still verified in logs written before [`checkpoint_message`] replaced it.
pub fn legacy_checkpoint_message(seq: u64, prev: &str) -> Vec<u8> {
    format!("gantry-audit-checkpoint\n{seq}\n{prev}").into_bytes()
}

/// What a checkpoint's signature tells apart from the first format's: it starts its `signature`.
pub const CHECKPOINT_SIGNATURE_V2: &str = "v2:";

/// The bytes a checkpoint signs: every field of its own line (its position, time and key) and,
/// through `prev`, every line before. Its `signature` is [`CHECKPOINT_SIGNATURE_V2`] and the
/// hex signature.
pub fn checkpoint_message(seq: u64, time_ms: u64, prev: &str, key: &str) -> Vec<u8> {
    format!("gantry-audit-checkpoint-v2\n{seq}\n{time_ms}\n{prev}\n{key}").into_bytes()
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
    /// The log does not end in a signed checkpoint.
    #[error(
        "{path}: the last {entries} entries are not covered by a signed checkpoint{torn}: the log \
         was cut, or its writer stopped without sealing it (a daemon started on the directory \
         seals a crashed writer's tail and records it)"
    )]
    Unsealed {
        /// The log.
        path: PathBuf,
        /// Entries after the last checkpoint.
        entries: u64,
        /// ", and a partial last line" when there is one.
        torn: &'static str,
    },
    /// The log does not hold the sealed position recorded outside it.
    #[error(
        "{path}: the sealed position {head} recorded outside the log is not in it ({found}): the \
         log was cut back or replaced"
    )]
    Behind {
        /// The log.
        path: PathBuf,
        /// The position expected.
        head: Head,
        /// What the log has instead.
        found: String,
    },
    /// Entries follow the position sealed when the log was last closed cleanly.
    #[error(
        "{path}: {entries} entries follow seq {seq}, where the log was sealed when its writer last \
         closed it cleanly: someone else appended them"
    )]
    AfterClose {
        /// The log.
        path: PathBuf,
        /// The position sealed at the clean close.
        seq: u64,
        /// Entries after it.
        entries: u64,
    },
    /// The log was sealed by its own key past the position recorded outside it as a clean
    /// close: what recorded that position (the data directory's database) is older than the
    /// log.
    #[error(
        "{path}: the log was sealed with this directory's key up to seq {sealed}, past seq \
         {recorded}, where the database records its last clean close: the database is older than \
         the log (copied back from an earlier copy, or its WAL lost). Restore the newest backup \
         (`gantry db restore`), which takes the log's position; do not set the log aside \
         (`gantry audit recover`): it is the newer of the two"
    )]
    RecordBehind {
        /// The log.
        path: PathBuf,
        /// The position recorded outside it.
        recorded: u64,
        /// The log's last sealed position.
        sealed: u64,
    },
    /// The log was closed; nothing more is appended.
    #[error("{0}: the audit log is closed")]
    Closed(PathBuf),
    /// A failed write left part of an entry that could not be cut off again: nothing more is
    /// appended until the log is opened again (which cuts it).
    #[error("{path}: a failed write left a partial entry that could not be cut off ({error})")]
    Broken {
        /// The log.
        path: PathBuf,
        /// Why it could not be cut off.
        error: String,
    },
}

/// What the writer of a log expects of it when it opens it: the latest sealed position it
/// recorded outside the log, and whether it closed the log cleanly there.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// The latest sealed position recorded outside the log.
    pub head: Option<Head>,
    /// Whether the log was closed cleanly at `head` (then nothing may follow it).
    pub closed: bool,
}

/// Checks the log at `path` as [`AuditLog::open_expecting`] would with the key whose public
/// half is `key` (hex), without writing anything: what opening it would find.
pub fn examine(path: &Path, key: &str, expected: &Expected) -> Result<VerifyReport, AuditError> {
    examine_scan(path, key, expected).map(|s| s.report)
}

fn examine_scan(path: &Path, key: &str, expected: &Expected) -> Result<verify::Scan, AuditError> {
    if !path.exists() {
        if let Some(head) = &expected.head {
            return Err(AuditError::Behind {
                path: path.to_path_buf(),
                head: head.clone(),
                found: "the log is missing".into(),
            });
        }
        return Ok(verify::Scan {
            prev: GENESIS.to_string(),
            ..verify::Scan::default()
        });
    }
    let found = verify::scan(
        path,
        &VerifyOptions {
            key: Some(key),
            head: expected.head.as_ref(),
            sealed_end: false,
            up_to: None,
        },
    )?;
    if let Some(head) = expected.head.as_ref().filter(|_| expected.closed)
        && found.report.entries > head.seq
    {
        // Sealed past it by this log's own key: its writer went on, and the position recorded
        // outside is old (a database copied back, or its WAL lost). A review followed the
        // advice below for this case, set the good log aside and ran on the stale database.
        if let Some(sealed) = found.report.head.as_ref().filter(|s| s.seq > head.seq) {
            return Err(AuditError::RecordBehind {
                path: path.to_path_buf(),
                recorded: head.seq,
                sealed: sealed.seq,
            });
        }
        return Err(AuditError::AfterClose {
            path: path.to_path_buf(),
            seq: head.seq,
            entries: found.report.entries - head.seq,
        });
    }
    Ok(found)
}

/// What [`AuditLog::open`] found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Opened {
    /// Entries in the log as found (checkpoints included).
    pub entries: u64,
    /// Entries found after the last checkpoint, now sealed (recorded in `audit.tail_sealed`).
    pub sealed_tail: u64,
    /// Bytes of a partial last line cut off.
    pub torn_bytes: u64,
}

/// Called with each new sealed position once it is durable, and whether the log was closed
/// there: where a writer keeps its head outside the log.
pub type OnSeal = Box<dyn Fn(&Head, bool) + Send + Sync>;

/// An open log, appending. Shared by reference between threads: entries are written in one
/// order under a lock, and made durable by group commit (see [`AuditLog::append`]).
pub struct AuditLog {
    path: PathBuf,
    key: Ed25519KeyPair,
    tail: Mutex<Tail>,
    /// The highest sequence number known to be on disk; held while syncing.
    synced: Mutex<u64>,
    /// A second handle on the file, synced without holding `tail`.
    sync_file: File,
    opened: Opened,
    on_seal: Mutex<Option<Arc<OnSeal>>>,
    /// Why the last append failed, until one succeeds ([`AuditLog::failing`]).
    failing: Mutex<Option<String>>,
    /// Allowed decisions recorded in aggregate ([`AuditLog::decision_in_aggregate`]).
    tallies: tally::Tallies,
    /// Whether every decision is an entry of its own ([`AuditLog::record_each_decision`]).
    each_decision: std::sync::atomic::AtomicBool,
}

/// The appending end of the log.
struct Tail {
    file: File,
    /// The log's length: whole entries only.
    bytes: u64,
    /// Why appends are refused after a failed write could not be undone.
    broken: Option<String>,
    seq: u64,
    prev: String,
    since_checkpoint: u64,
    head: Option<Head>,
    closed: bool,
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

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log at `path`, signing checkpoints with `key`; see
    /// [`AuditLog::open_expecting`].
    pub fn open(path: &Path, key: Ed25519KeyPair) -> Result<Self, AuditError> {
        Self::open_expecting(path, key, &Expected::default())
    }

    /// Opens (or creates, mode 0600) the log at `path`, signing checkpoints with `key`. The log
    /// must verify with `key`'s public key pinned (a log signed by another key is refused), hold
    /// `expected.head` when given, and have nothing after it if it was closed there. A partial
    /// last line left by a crash is cut off, and entries left unsealed are sealed, with an
    /// `audit.tail_sealed` entry saying how many (both logged as warnings).
    pub fn open_expecting(
        path: &Path,
        key: Ed25519KeyPair,
        expected: &Expected,
    ) -> Result<Self, AuditError> {
        let io = |error| AuditError::Io {
            path: path.to_path_buf(),
            error,
        };
        let public = hex(key.public_key().as_ref());
        let found = examine_scan(path, &public, expected)?;
        if found.report.torn_bytes > 0 {
            tracing::warn!(
                path = %path.display(),
                bytes = found.report.torn_bytes,
                "audit log: cutting off a partial last entry (a crash during a write)"
            );
            let file = OpenOptions::new().write(true).open(path).map_err(io)?;
            file.set_len(found.whole_bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path).map_err(io)?;
        let bytes = file.metadata().map_err(io)?.len();
        let sync_file = file.try_clone().map_err(io)?;
        let report = &found.report;
        let log = Self {
            path: path.to_path_buf(),
            key,
            tail: Mutex::new(Tail {
                file,
                bytes,
                broken: None,
                seq: report.entries,
                prev: found.prev.clone(),
                since_checkpoint: report.unsigned_tail,
                head: report.head.clone(),
                closed: false,
            }),
            synced: Mutex::new(report.entries),
            sync_file,
            opened: Opened {
                entries: report.entries,
                sealed_tail: report.unsigned_tail,
                torn_bytes: report.torn_bytes,
            },
            on_seal: Mutex::new(None),
            failing: Mutex::new(None),
            tallies: tally::Tallies::default(),
            each_decision: std::sync::atomic::AtomicBool::new(false),
        };
        if report.unsigned_tail > 0 || report.torn_bytes > 0 {
            log.seal_tail(report.entries)?;
        }
        Ok(log)
    }

    /// Seals what the last writer left unsealed, with an entry that says what it covers.
    fn seal_tail(&self, entries: u64) -> Result<(), AuditError> {
        let o = &self.opened;
        tracing::warn!(
            path = %self.path.display(),
            entries = o.sealed_tail,
            torn_bytes = o.torn_bytes,
            "audit log: sealing {} entries its last writer left unsealed (it stopped without \
             closing the log: a crash)",
            o.sealed_tail
        );
        let last = {
            let mut tail = self.tail();
            if tail.since_checkpoint > 0 {
                self.write(&mut tail, "checkpoint", None)?;
            }
            let record = serde_json::json!({
                "entries": o.sealed_tail,
                "from_seq": entries + 1 - o.sealed_tail,
                "to_seq": entries,
                "torn_bytes": o.torn_bytes,
                "reason": "its writer stopped without sealing them (a crash); sealed at the next open",
            });
            self.write(&mut tail, "audit.tail_sealed", Some(record))?;
            self.write(&mut tail, "checkpoint", None)?;
            tail.seq
        };
        self.durable(last)
    }

    fn tail(&self) -> MutexGuard<'_, Tail> {
        guard(&self.tail)
    }

    /// What opening the log found and did.
    pub fn opened(&self) -> &Opened {
        &self.opened
    }

    /// The log's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hex public key of the signer.
    pub fn public_key(&self) -> String {
        hex(self.key.public_key().as_ref())
    }

    /// Calls `on_seal` with every sealed position from now on, once it is durable (and on close).
    pub fn set_on_seal(&self, on_seal: OnSeal) {
        *guard(&self.on_seal) = Some(Arc::new(on_seal));
    }

    fn sealed(&self, head: &Head, closed: bool) {
        let callback = guard(&self.on_seal).clone();
        if let Some(f) = callback {
            f(head, closed);
        }
    }

    /// The latest sealed position, if the log has a checkpoint.
    pub fn head(&self) -> Option<Head> {
        self.tail().head.clone()
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
        if tail.closed {
            return Err(AuditError::Closed(self.path.clone()));
        }
        if let Some(error) = &tail.broken {
            return Err(AuditError::Broken {
                path: self.path.clone(),
                error: error.clone(),
            });
        }
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
            let key = hex(self.key.public_key().as_ref());
            let message = checkpoint_message(seq, entry.time_ms, &tail.prev, &key);
            let sig = self.key.sign(&message);
            entry.signature = Some(format!("{CHECKPOINT_SIGNATURE_V2}{}", hex(sig.as_ref())));
            entry.key = Some(key);
        }
        let mut line = serde_json::to_vec(&entry).expect("an entry serializes");
        if line.len() >= MAX_LINE {
            // Kept verifiable and bounded: what it was, not all of it.
            entry.record = Some(serde_json::json!({
                "oversized_record_bytes": line.len(),
                "sha256": sha256_hex(&line),
            }));
            line = serde_json::to_vec(&entry).expect("an entry serializes");
        }
        let hash = sha256_hex(&line);
        line.push(b'\n');
        if let Err(error) = tail.file.write_all(&line) {
            // Part of the line may be written (a full disk): cut back to the last whole entry,
            // or every later one would follow a fragment and the log would no longer open.
            if let Err(e) = tail.file.set_len(tail.bytes) {
                tail.broken = Some(e.to_string());
            }
            return Err(AuditError::Io {
                path: self.path.clone(),
                error,
            });
        }
        tail.bytes += line.len() as u64;
        tail.seq = seq;
        if kind == "checkpoint" {
            tail.since_checkpoint = 0;
            tail.head = Some(Head {
                seq,
                hash: hash.clone(),
            });
        } else {
            tail.since_checkpoint += 1;
        }
        tail.prev = hash;
        Ok(seq)
    }

    /// Returns once entry `seq` is on disk. Group commit: whoever finds it unsynced syncs
    /// everything written so far, while the others wait on `synced` and then find their entry
    /// covered; so concurrent requests share one sync instead of queueing for one each.
    fn durable(&self, seq: u64) -> Result<(), AuditError> {
        let mut synced = guard(&self.synced);
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
        let appended = self.append_entry(kind, record);
        *guard(&self.failing) = appended.as_ref().err().map(ToString::to_string);
        appended
    }

    /// Why the last append failed (a full disk, say), while no later one has succeeded: every
    /// request that must be recorded fails meanwhile, which a health check should say.
    pub fn failing(&self) -> Option<String> {
        guard(&self.failing).clone()
    }

    fn append_entry(&self, kind: &str, record: serde_json::Value) -> Result<u64, AuditError> {
        let (seq, last, sealed) = {
            let mut tail = self.tail();
            let seq = self.write(&mut tail, kind, Some(record))?;
            let sealed = if tail.since_checkpoint >= CHECKPOINT_EVERY {
                self.write(&mut tail, "checkpoint", None)?;
                tail.head.clone()
            } else {
                None
            };
            (seq, tail.seq, sealed)
        };
        self.durable(last)?;
        if let Some(head) = sealed {
            self.sealed(&head, false);
        }
        Ok(seq)
    }

    /// Appends a policy decision and emits it as a `tracing` event with its id.
    pub fn decision(&self, decision: &Decision<'_>) -> Result<u64, AuditError> {
        self.append("decision", decision.record())
    }

    /// Records every decision as an entry of its own, reads included (an operator's choice:
    /// `gantry up --audit-each-read`), or counts allowed reads in aggregate (the default).
    pub fn record_each_decision(&self, each: bool) {
        self.each_decision
            .store(each, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether allowed decisions of `request` go into the next `decision.summary` entry rather
    /// than an entry of their own ([`tally`]).
    pub fn aggregates(&self, request: &crate::policy::Request) -> bool {
        (request.action.aggregated_when_allowed() || request.routine)
            && !self
                .each_decision
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts `decision`, allowed, into the next `decision.summary` entry
    /// ([`AuditLog::record_tallies`]) instead of appending an entry of its own: see [`tally`]
    /// for which decisions and why. `false` when it could not be counted (the interval's keys
    /// are full): the caller appends it as an entry of its own.
    pub fn decision_in_aggregate(&self, decision: &Decision<'_>) -> bool {
        debug_assert!(decision.allow, "refusals are recorded each");
        let counted = self.tallies.note(decision);
        if counted {
            decision.record();
        }
        counted
    }

    /// Appends the decisions counted since the last time as one `decision.summary` entry (none
    /// when there were none). The daemon calls it every few seconds and before closing the log.
    /// Counts that could not be written are kept for the next time.
    pub fn record_tallies(&self) -> Result<(), AuditError> {
        let Some(taken) = self.tallies.take() else {
            return Ok(());
        };
        match self.append("decision.summary", taken.record()) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.tallies.put_back(taken);
                Err(e)
            }
        }
    }

    /// Appends a signed checkpoint covering every entry so far; returns the sealed position.
    pub fn checkpoint(&self) -> Result<Head, AuditError> {
        let head = {
            let mut tail = self.tail();
            self.write(&mut tail, "checkpoint", None)?;
            tail.head.clone().expect("a checkpoint was just written")
        };
        self.durable(head.seq)?;
        self.sealed(&head, false);
        Ok(head)
    }

    /// Seals the entries written since the last checkpoint, if there are any; returns the
    /// sealed position it wrote.
    pub fn seal(&self) -> Result<Option<Head>, AuditError> {
        if self.tail().since_checkpoint == 0 {
            return Ok(None);
        }
        self.checkpoint().map(Some)
    }

    /// Ends the log with a checkpoint, so every entry is covered by a signature, and refuses
    /// every append after it.
    pub fn close(&self) -> Result<(), AuditError> {
        // A summary that cannot be written does not keep the log from being sealed.
        if !self.tail().closed
            && let Err(e) = self.record_tallies()
        {
            tracing::error!(error = %e, "recording allowed reads before closing the audit log");
        }
        let head = {
            let mut tail = self.tail();
            if tail.closed {
                return Ok(());
            }
            if tail.since_checkpoint > 0 {
                self.write(&mut tail, "checkpoint", None)?;
            }
            tail.closed = true;
            (tail.seq, tail.head.clone())
        };
        self.durable(head.0)?;
        if let Some(h) = head.1 {
            self.sealed(&h, true);
        }
        Ok(())
    }
}
