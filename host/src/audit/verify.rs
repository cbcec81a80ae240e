//! Verifying a log: one pass over its lines, streamed (a line longer than [`MAX_LINE`] is
//! refused before it is read whole), checking the sequence, the chain, every checkpoint's
//! signature by the pinned key, the runs between checkpoints, the sealed position kept outside
//! the log, and that the log ends sealed.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use ring::signature::{ED25519, UnparsedPublicKey};
use serde::Serialize;

use super::{
    AuditError, CHECKPOINT_EVERY, CHECKPOINT_SIGNATURE_V2, Entry, GENESIS, Head, MAX_LINE,
    checkpoint_message, legacy_checkpoint_message,
};
use crate::keys;
use crate::plugin::cache::sha256_hex;

/// What a verification found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Entries that verified (checkpoints included).
    pub entries: u64,
    /// Signed checkpoints among them.
    pub checkpoints: u64,
    /// Entries after the last checkpoint: chained, not yet signed (0 when the log is sealed).
    pub unsigned_tail: u64,
    /// Hex public key that signed the checkpoints.
    pub key: Option<String>,
    /// Whether the file ends in a partial line (a crash during a write), not verified.
    pub torn_tail: bool,
    /// Bytes of that partial line.
    pub torn_bytes: u64,
    /// The last sealed position: the last checkpoint and the hash of its line.
    pub head: Option<Head>,
}

/// What to check besides the chain and the signatures.
#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions<'a> {
    /// The hex public key every checkpoint must be signed with (default: the first
    /// checkpoint's, reported so it can be compared).
    pub key: Option<&'a str>,
    /// A sealed position recorded outside the log: the log must hold this exact checkpoint.
    pub head: Option<&'a Head>,
    /// The log must end in a checkpoint (no unsealed entries, no partial line).
    pub sealed_end: bool,
    /// Verify only up to this sealed position, which the log must hold (a live log, up to a
    /// seal its writer just made).
    pub up_to: Option<&'a Head>,
}

impl Default for VerifyOptions<'_> {
    fn default() -> Self {
        Self {
            key: None,
            head: None,
            sealed_end: true,
            up_to: None,
        }
    }
}

/// Verifies the log at `path`: the chain, the sequence, every checkpoint's signature by
/// `trusted_key` (hex public key) when given, else by the key of the first checkpoint, runs
/// between checkpoints no longer than [`CHECKPOINT_EVERY`], and a signed checkpoint at the end.
pub fn verify(path: &Path, trusted_key: Option<&str>) -> Result<VerifyReport, AuditError> {
    verify_with(
        path,
        &VerifyOptions {
            key: trusted_key,
            ..VerifyOptions::default()
        },
    )
}

/// [`verify`] with every option.
pub fn verify_with(path: &Path, options: &VerifyOptions<'_>) -> Result<VerifyReport, AuditError> {
    scan(path, options).map(|s| s.report)
}

/// A verified log, with what its writer needs to continue it.
#[derive(Debug, Default)]
pub(super) struct Scan {
    pub report: VerifyReport,
    /// Hash of the last whole line ([`GENESIS`] when there is none).
    pub prev: String,
    /// Bytes up to the end of the last whole line.
    pub whole_bytes: u64,
}

pub(super) fn scan(path: &Path, options: &VerifyOptions<'_>) -> Result<Scan, AuditError> {
    match scan_prefix(path, options) {
        (scan, None) => Ok(scan),
        (_, Some(e)) => Err(e),
    }
}

/// The part of the log at `path` that verifies (with `key` pinned), and the first problem after
/// it, if any: what `gantry audit recover` names as the last verified position of a damaged log.
pub fn last_verified(path: &Path, key: &str) -> (VerifyReport, Option<AuditError>) {
    let options = VerifyOptions {
        key: Some(key),
        ..VerifyOptions::default()
    };
    let (scan, problem) = scan_prefix(path, &options);
    (scan.report, problem)
}

/// Scans as far as the log verifies; returns what verified and the first problem.
fn scan_prefix(path: &Path, options: &VerifyOptions<'_>) -> (Scan, Option<AuditError>) {
    let mut scan = Scan {
        report: VerifyReport {
            key: options.key.map(str::to_string),
            ..VerifyReport::default()
        },
        prev: GENESIS.to_string(),
        whole_bytes: 0,
    };
    let problem = scan_lines(path, options, &mut scan)
        .and_then(|()| finish(path, &scan, options))
        .err();
    (scan, problem)
}

fn scan_lines(path: &Path, options: &VerifyOptions<'_>, scan: &mut Scan) -> Result<(), AuditError> {
    let io = |error| AuditError::Io {
        path: path.to_path_buf(),
        error,
    };
    let bad = |line: u64, reason: String| AuditError::Tampered {
        path: path.to_path_buf(),
        line: line as usize,
        reason,
    };
    let mut input = BufReader::new(std::fs::File::open(path).map_err(io)?);
    let mut line = Vec::new();
    loop {
        if options
            .up_to
            .is_some_and(|last| scan.report.entries >= last.seq)
        {
            break;
        }
        line.clear();
        let n = scan.report.entries + 1;
        let read = input
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(io)?;
        if read == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            if line.len() > MAX_LINE {
                return Err(bad(n, format!("longer than {MAX_LINE} bytes")));
            }
            // A crash during a write: reported, never verified.
            scan.report.torn_tail = true;
            scan.report.torn_bytes = line.len() as u64;
            break;
        }
        line.pop();
        check_line(scan, &line, n, options).map_err(|(at, reason)| bad(at, reason))?;
        scan.whole_bytes += read as u64;
    }
    Ok(())
}

/// Checks entry `n`, whose line (without its newline) is `line`, and moves `scan` past it. An
/// error names the bad line and why.
fn check_line(
    scan: &mut Scan,
    line: &[u8],
    n: u64,
    options: &VerifyOptions<'_>,
) -> Result<(), (u64, String)> {
    let entry: Entry =
        serde_json::from_slice(line).map_err(|e| (n, format!("not an audit entry ({e})")))?;
    if entry.seq != n {
        return Err((
            n,
            format!(
                "entry number {} where {n} was expected: entries were removed, inserted or \
                 reordered here",
                entry.seq
            ),
        ));
    }
    if entry.prev != scan.prev {
        return Err((
            n - 1,
            "the next entry does not chain to this one: it was changed, or entries around it \
             were removed, inserted or reordered"
                .into(),
        ));
    }
    let (hash, at) = (sha256_hex(line), |reason| (n, reason));
    let report = &mut scan.report;
    if entry.kind == "checkpoint" {
        check_signature(&entry, &mut report.key).map_err(at)?;
        report.checkpoints += 1;
        report.unsigned_tail = 0;
        report.head = Some(Head {
            seq: n,
            hash: hash.clone(),
        });
    } else {
        report.unsigned_tail += 1;
        if report.unsigned_tail > CHECKPOINT_EVERY {
            return Err(at(format!(
                "{} entries in a row without a signed checkpoint, more than the writer ever \
                 leaves ({CHECKPOINT_EVERY}): checkpoints were removed",
                report.unsigned_tail
            )));
        }
    }
    for head in [options.head, options.up_to].into_iter().flatten() {
        if head.seq == n && (entry.kind != "checkpoint" || hash != head.hash) {
            return Err(at(format!(
                "this is not the sealed position {head} recorded outside the log: the log was \
                 rewritten or replaced"
            )));
        }
    }
    report.entries = n;
    scan.prev = hash;
    Ok(())
}

/// A checkpoint's signature, by `key` (learned from the first checkpoint when not pinned), over
/// every field of its line; a checkpoint carries no record.
fn check_signature(entry: &Entry, key: &mut Option<String>) -> Result<(), String> {
    let (Some(sig), Some(signer)) = (&entry.signature, &entry.key) else {
        return Err("checkpoint without signature or key".into());
    };
    if entry.record.is_some() {
        return Err("a checkpoint with a record, which checkpoints never carry".into());
    }
    let (sig, message) = match sig.strip_prefix(CHECKPOINT_SIGNATURE_V2) {
        Some(sig) => (
            sig,
            checkpoint_message(entry.seq, entry.time_ms, &entry.prev, signer),
        ),
        None => (
            sig.as_str(),
            legacy_checkpoint_message(entry.seq, &entry.prev),
        ),
    };
    let expected = key.get_or_insert_with(|| signer.clone());
    if signer != expected {
        return Err(format!(
            "checkpoint signed by key {signer}, not the trusted {expected}"
        ));
    }
    let (Some(sig), Some(signer)) = (keys::from_hex(sig), keys::from_hex(signer)) else {
        return Err("checkpoint signature or key is not hex".into());
    };
    UnparsedPublicKey::new(&ED25519, signer)
        .verify(&message, &sig)
        .map_err(|_| {
            "checkpoint signature does not verify: it or the entries before it were rewritten"
                .into()
        })
}

/// The checks that concern the log as a whole: the head it must hold, and a sealed end.
fn finish(path: &Path, scan: &Scan, options: &VerifyOptions<'_>) -> Result<(), AuditError> {
    let report = &scan.report;
    for head in [options.head, options.up_to].into_iter().flatten() {
        if report.entries < head.seq {
            return Err(AuditError::Behind {
                path: path.to_path_buf(),
                head: head.clone(),
                found: format!("it ends at entry {}", report.entries),
            });
        }
    }
    if options.sealed_end && (report.unsigned_tail > 0 || report.torn_tail) {
        return Err(AuditError::Unsealed {
            path: path.to_path_buf(),
            entries: report.unsigned_tail,
            torn: if report.torn_tail {
                ", and a partial last line"
            } else {
                ""
            },
        });
    }
    Ok(())
}
