//! The audit log: every kind of tampering is detected and named; a crash never breaks it.

use std::path::Path;

use gantry::audit::{self, AuditError, AuditLog, Decision};

fn key(dir: &Path, name: &str) -> ring::signature::Ed25519KeyPair {
    gantry::keys::generate(&dir.join(name)).unwrap()
}

/// A closed log of `n` decisions (with automatic checkpoints); returns its lines.
fn write_log(path: &Path, dir: &Path, n: usize) -> Vec<String> {
    let log = AuditLog::open(path, key(dir, "host.pk8")).unwrap();
    for i in 0..n {
        let subject = serde_json::json!({"user": format!("user{i}")});
        log.decision(&Decision {
            decision_id: &format!("id{i}"),
            subject: &subject,
            action: &serde_json::json!("job.submit"),
            resource: &serde_json::json!({"tenant": "vision", "gpus": i}),
            entrypoint: "gantry/authz/decision",
            allow: i % 3 != 0,
            reasons: if i % 3 == 0 {
                vec!["over quota".into()]
            } else {
                vec![]
            },
            revision: "r1",
            latency_us: 12.5,
        })
        .unwrap();
        if i == 5 {
            log.append("plugin.load", serde_json::json!({"plugin": "binpack"}))
                .unwrap();
        }
    }
    log.close().unwrap();
    lines(path)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// Index of the first denied decision at or after `from`.
fn denied_after(lines: &[String], from: usize) -> usize {
    (from..lines.len())
        .find(|&i| lines[i].contains("\"allow\":false"))
        .expect("a denied decision")
}

fn save(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn bad_line(path: &Path) -> (usize, String) {
    match audit::verify(path, None) {
        Err(AuditError::Tampered { line, reason, .. }) => (line, reason),
        other => panic!("tampering went unnoticed: {other:?}"),
    }
}

#[test]
fn a_clean_log_verifies_with_every_entry_signed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let lines = write_log(&path, dir.path(), 150);
    let report = audit::verify(&path, None).unwrap();
    // 150 decisions + 1 plugin load, a checkpoint after every 64 entries and one at close.
    assert_eq!(report.entries as usize, lines.len());
    assert_eq!(report.checkpoints, 3);
    assert_eq!(report.unsigned_tail, 0);
    assert!(!report.torn_tail);
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["record"]["decision_id"], "id0");
    assert_eq!(first["record"]["allow"], false);
    assert_eq!(first["record"]["reasons"][0], "over quota");
    assert_eq!(first["prev"], audit::GENESIS);
}

#[test]
fn modified_deleted_reordered_and_inserted_entries_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let clean = write_log(&path, dir.path(), 100);

    // Modified: a denied decision now says allowed.
    let k = denied_after(&clean, 9);
    let mut t = clean.clone();
    t[k] = t[k].replace("\"allow\":false", "\"allow\":true");
    assert_ne!(t[k], clean[k], "the test must change something");
    save(&path, &t);
    assert_eq!(bad_line(&path).0, k + 1);

    // Deleted: entry 10 removed.
    let mut t = clean.clone();
    t.remove(9);
    save(&path, &t);
    assert_eq!(bad_line(&path).0, 10);

    // Reordered: entries 10 and 11 swapped.
    let mut t = clean.clone();
    t.swap(9, 10);
    save(&path, &t);
    assert_eq!(bad_line(&path).0, 10);

    // Inserted: a copy of entry 10 replayed after it.
    let mut t = clean.clone();
    t.insert(10, clean[9].clone());
    save(&path, &t);
    assert_eq!(bad_line(&path).0, 11);

    // Deleted at the end: the closing checkpoint removed leaves an unsigned tail, reported.
    let mut t = clean.clone();
    t.pop();
    save(&path, &t);
    let report = audit::verify(&path, None).unwrap();
    assert!(report.unsigned_tail > 0);
}

#[test]
fn a_rewritten_chain_fails_at_the_next_signed_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let clean = write_log(&path, dir.path(), 100);
    // Flip a denied decision and recompute every later hash, as an attacker without the key can.
    let k = denied_after(&clean, 9);
    let mut t = clean.clone();
    t[k] = t[k].replace("\"allow\":false", "\"allow\":true");
    assert_ne!(t[k], clean[k], "the test must change something");
    for i in k + 1..t.len() {
        let prev = gantry::plugin::cache::sha256_hex(t[i - 1].as_bytes());
        let mut e: serde_json::Value = serde_json::from_str(&t[i]).unwrap();
        e["prev"] = serde_json::Value::String(prev);
        let entry: audit::Entry = serde_json::from_value(e).unwrap();
        t[i] = serde_json::to_string(&entry).unwrap();
    }
    save(&path, &t);
    let (line, reason) = bad_line(&path);
    let first_checkpoint = clean
        .iter()
        .position(|l| l.contains("\"kind\":\"checkpoint\""))
        .unwrap()
        + 1;
    assert_eq!(line, first_checkpoint, "{reason}");
    assert!(reason.contains("signature does not verify"), "{reason}");

    // Another key's checkpoints are refused when the host's key is pinned.
    save(&path, &clean);
    let other = gantry::keys::public_hex(&key(dir.path(), "other.pk8"));
    let err = audit::verify(&path, Some(&other)).unwrap_err().to_string();
    assert!(err.contains("not the trusted"), "{err}");
}

#[test]
fn a_crash_mid_write_leaves_a_log_that_verifies_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let clean = write_log(&path, dir.path(), 20);
    // A crash during a write: half a line, no newline.
    let half = &clean[3][..clean[3].len() / 2];
    std::fs::write(&path, clean.join("\n") + "\n" + half).unwrap();
    let report = audit::verify(&path, None).unwrap();
    assert!(report.torn_tail);
    assert_eq!(report.entries as usize, clean.len());
    // Reopening cuts the partial line off and the chain goes on.
    let log = AuditLog::open(
        &path,
        gantry::keys::load(&dir.path().join("host.pk8")).unwrap(),
    )
    .unwrap();
    log.append("policy.swap", serde_json::json!({"revision": "r2"}))
        .unwrap();
    log.close().unwrap();
    let report = audit::verify(&path, None).unwrap();
    assert!(!report.torn_tail);
    assert_eq!(report.entries as usize, clean.len() + 2);
    assert_eq!(report.unsigned_tail, 0);
}

#[test]
fn audit_cli_verifies_and_names_the_bad_line() {
    use crate::support::{gantry, text};
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("host.pk8");
    let out = gantry(
        &["audit", "keygen", "-o", key_path.to_str().unwrap()],
        dir.path(),
    );
    let (public, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let public = public.trim().to_string();
    assert_eq!(public.len(), 64, "{public}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let log = dir.path().join("audit.log");
    let l = AuditLog::open(&log, gantry::keys::load(&key_path).unwrap()).unwrap();
    for i in 0..5 {
        l.append("plugin.load", serde_json::json!({"plugin": i}))
            .unwrap();
    }
    l.close().unwrap();
    let out = gantry(
        &["audit", "verify", log.to_str().unwrap(), "--key", &public],
        dir.path(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("6 entries verified, 1 signed checkpoints"),
        "{stdout}"
    );
    let mut t = lines(&log);
    t[2] = t[2].replace("\"plugin\":2", "\"plugin\":7");
    save(&log, &t);
    let out = gantry(&["audit", "verify", log.to_str().unwrap()], dir.path());
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("audit.log:3:"), "{stderr}");
}

#[test]
fn concurrent_appends_share_syncs_and_the_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let signer = key(dir.path(), "host.pk8");
    let public = gantry::keys::public_hex(&signer);
    let log = AuditLog::open(&path, signer).unwrap();
    let (threads, each) = (8, 150);
    let seqs: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let log = &log;
                s.spawn(move || {
                    (0..each)
                        .map(|i| {
                            log.append("test.event", serde_json::json!({"thread": t, "i": i}))
                                .unwrap()
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    // Every append got its own place, and each returned only once its entry was written.
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), threads * each);
    let on_disk = lines(&path);
    assert!(
        sorted.iter().all(|&s| s as usize <= on_disk.len()),
        "an append returned before its line was in the file"
    );
    log.close().unwrap();
    let report = audit::verify(&path, Some(&public)).unwrap();
    let events = lines(&path)
        .iter()
        .filter(|l| l.contains("\"test.event\""))
        .count();
    assert_eq!(events, threads * each, "{report:?}");
}
