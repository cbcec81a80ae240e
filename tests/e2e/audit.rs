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
            given: &[],
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

/// A copy of `clean` in which the first denied decision at or after `from` says allowed:
/// (that decision's index, the copy).
fn flip_denied(clean: &[String], from: usize) -> (usize, Vec<String>) {
    let k = denied_after(clean, from);
    let mut t = clean.to_vec();
    t[k] = t[k].replace("\"allow\":false", "\"allow\":true");
    assert_ne!(t[k], clean[k], "the test must change something");
    (k, t)
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
    let (k, t) = flip_denied(&clean, 9);
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

    // Deleted at the end: the closing checkpoint removed leaves an unsealed tail: refused.
    let mut t = clean.clone();
    t.pop();
    save(&path, &t);
    let e = audit::verify(&path, None).unwrap_err();
    assert!(matches!(e, AuditError::Unsealed { .. }), "{e}");
}

/// Recomputes the chain from line `from` on, as anyone can (the hashes are unkeyed).
fn rechain(t: &mut [String], from: usize) {
    for i in from.max(1)..t.len() {
        let prev = gantry::plugin::cache::sha256_hex(t[i - 1].as_bytes());
        let mut e: serde_json::Value = serde_json::from_str(&t[i]).unwrap();
        e["prev"] = serde_json::Value::String(prev);
        let entry: audit::Entry = serde_json::from_value(e).unwrap();
        t[i] = serde_json::to_string(&entry).unwrap();
    }
}

/// Every denial turned into an allow.
fn allow_everything(t: &mut [String]) {
    for line in t.iter_mut() {
        *line = line.replace("\"allow\":false", "\"allow\":true");
    }
}

/// Issue 10, section 4: a log with its checkpoints removed and its chain recomputed (every
/// denial turned into an allow) passed `gantry audit verify` with exit 0.
#[test]
fn a_log_with_checkpoints_stripped_and_chain_recomputed_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    for n in [20, 100] {
        let clean = write_log(&path, dir.path(), n);
        let mut t: Vec<String> = clean
            .iter()
            .filter(|l| !l.contains("\"kind\":\"checkpoint\""))
            .cloned()
            .collect();
        allow_everything(&mut t);
        for (i, line) in t.iter_mut().enumerate() {
            let mut e: serde_json::Value = serde_json::from_str(line).unwrap();
            e["seq"] = (i + 1).into();
            *line = serde_json::to_string(&e).unwrap();
        }
        rechain(&mut t, 1);
        save(&path, &t);
        let e = audit::verify(&path, None).expect_err("a forged log must not verify");
        let text = e.to_string();
        assert!(
            text.contains("without a signed checkpoint")
                || text.contains("not covered by a signed checkpoint"),
            "{n}: {text}"
        );
        let out = crate::support::gantry(&["audit", "verify", path.to_str().unwrap()], dir.path());
        assert_eq!(out.status.code(), Some(1), "{n}");
        std::fs::remove_file(&path).unwrap();
    }
}

/// Issue 10, section 4: a log with its tail cut off passed verification: cut mid-way it no
/// longer ends sealed; cut back to an earlier checkpoint it is a valid log, caught only by the
/// sealed position kept outside it (`--head`).
#[test]
fn a_log_with_its_tail_cut_fails_mid_way_and_against_its_head() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let clean = write_log(&path, dir.path(), 150);
    let head = audit::verify(&path, None).unwrap().head.unwrap();
    assert_eq!(head.seq as usize, clean.len());
    // Mid-way: after some entries of the last run.
    let first_cp = clean
        .iter()
        .position(|l| l.contains("\"kind\":\"checkpoint\""))
        .unwrap();
    save(&path, &clean[..first_cp + 10]);
    let e = audit::verify(&path, None).unwrap_err();
    assert!(matches!(e, AuditError::Unsealed { entries: 9, .. }), "{e}");
    // Back to the first checkpoint: it verifies alone, not against the head.
    save(&path, &clean[..=first_cp]);
    audit::verify(&path, None).unwrap();
    let options = audit::VerifyOptions {
        head: Some(&head),
        ..Default::default()
    };
    let e = audit::verify_with(&path, &options).unwrap_err();
    assert!(matches!(e, AuditError::Behind { .. }), "{e}");
    let out = crate::support::gantry(
        &[
            "audit",
            "verify",
            path.to_str().unwrap(),
            "--head",
            &head.to_string(),
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        crate::support::text(&out).1.contains("cut back"),
        "{:?}",
        crate::support::text(&out)
    );
    // The whole log holds its head.
    save(&path, &clean);
    audit::verify_with(&path, &options).unwrap();
    // A head that names another line there fails too.
    let wrong = audit::Head {
        seq: head.seq,
        hash: "ab".repeat(32),
    };
    let e = audit::verify_with(
        &path,
        &audit::VerifyOptions {
            head: Some(&wrong),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("not the sealed position"), "{e}");
}

/// Issue 10, section 4: a writer pins its own key (a log signed by another key is refused at
/// open), refuses a log behind the position it sealed, and refuses entries appended after it
/// closed the log cleanly.
#[test]
fn a_writer_refuses_another_key_a_cut_log_and_entries_after_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let clean = write_log(&path, dir.path(), 100);
    let head = audit::verify(&path, None).unwrap().head.unwrap();
    let ours = || gantry::keys::load(&dir.path().join("host.pk8")).unwrap();
    let e = AuditLog::open(&path, key(dir.path(), "other.pk8")).unwrap_err();
    assert!(e.to_string().contains("not the trusted"), "{e}");
    // Cut back to an earlier checkpoint: behind the recorded head.
    let first_cp = clean
        .iter()
        .position(|l| l.contains("\"kind\":\"checkpoint\""))
        .unwrap();
    save(&path, &clean[..=first_cp]);
    let expected = audit::Expected {
        head: Some(head.clone()),
        closed: true,
    };
    let e = AuditLog::open_expecting(&path, ours(), &expected).unwrap_err();
    assert!(matches!(e, AuditError::Behind { .. }), "{e}");
    // Found by a review: the whole log, sealed by our key past a clean close recorded at its
    // first checkpoint (the database copied back from an older copy), was blamed on someone
    // appending to the log, and the advice given (set the log aside) ran on the stale
    // database. It says the database is the older of the two.
    let early = audit::verify(&path, None).unwrap().head.unwrap();
    save(&path, &clean);
    let rolled_back = audit::Expected {
        head: Some(early.clone()),
        closed: true,
    };
    let e = AuditLog::open_expecting(&path, ours(), &rolled_back).unwrap_err();
    assert!(
        matches!(&e, AuditError::RecordBehind { recorded, sealed, .. }
            if *recorded == early.seq && *sealed == head.seq),
        "{e}"
    );
    assert!(e.to_string().contains("gantry db restore"), "{e}");
    // Whole, plus two forged entries chained after the clean close.
    let mut t = clean.clone();
    t.push(t[3].clone());
    t.push(t[4].clone());
    for (i, line) in t.iter_mut().enumerate().skip(clean.len()) {
        let mut e: serde_json::Value = serde_json::from_str(line).unwrap();
        e["seq"] = (i + 1).into();
        *line = serde_json::to_string(&e).unwrap();
    }
    rechain(&mut t, clean.len());
    save(&path, &t);
    let e = AuditLog::open_expecting(&path, ours(), &expected).unwrap_err();
    assert!(
        matches!(e, AuditError::AfterClose { entries: 2, .. }),
        "{e}"
    );
    // The same log after a crash (not closed): sealed, and the sealing says what it covers.
    let crashed = audit::Expected {
        head: Some(head),
        closed: false,
    };
    let log = AuditLog::open_expecting(&path, ours(), &crashed).unwrap();
    assert_eq!(log.opened().sealed_tail, 2);
    drop(log);
    let report = audit::verify(&path, None).unwrap();
    assert_eq!(report.entries as usize, t.len() + 3);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"kind\":\"audit.tail_sealed\""), "{text}");
}

/// Issue 10, section 4: the writer seals on a timer's call and on close, so a live log ends
/// sealed after `seal`; a crash leaves at most the entries since the last seal, which the next
/// open seals, saying how many.
#[test]
fn entries_a_crash_left_unsealed_are_sealed_at_open_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let signer = key(dir.path(), "host.pk8");
    let log = AuditLog::open(&path, signer).unwrap();
    for i in 0..5 {
        log.append("test.event", serde_json::json!({"i": i}))
            .unwrap();
    }
    let sealed = log.seal().unwrap().unwrap();
    assert_eq!(sealed.seq, 6);
    assert_eq!(log.seal().unwrap(), None, "nothing new to seal");
    audit::verify(&path, None).unwrap();
    for i in 0..3 {
        log.append("test.event", serde_json::json!({"i": i}))
            .unwrap();
    }
    drop(log); // a crash: never closed
    assert!(matches!(
        audit::verify(&path, None),
        Err(AuditError::Unsealed { entries: 3, .. })
    ));
    let log = AuditLog::open(
        &path,
        gantry::keys::load(&dir.path().join("host.pk8")).unwrap(),
    )
    .unwrap();
    assert_eq!((log.opened().sealed_tail, log.opened().torn_bytes), (3, 0));
    log.close().unwrap();
    assert!(
        log.append("late", serde_json::json!({})).is_err(),
        "closed means closed"
    );
    let report = audit::verify(&path, None).unwrap();
    // A checkpoint over the three, the sealing entry, and its checkpoint.
    assert_eq!(report.entries, 9 + 3);
    let marker: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .nth(10)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(marker["kind"], "audit.tail_sealed");
    assert_eq!(marker["record"]["entries"], 3);
    assert_eq!(
        (
            marker["record"]["from_seq"].as_u64(),
            marker["record"]["to_seq"].as_u64()
        ),
        (Some(7), Some(9))
    );
}

/// Reported by a review: a checkpoint's signature covered its position and `prev` only, so the
/// last line of a log (a checkpoint, covered by no later `prev`) could be given another time, a
/// forged `record` or any field, and still verified without `--head`. It signs every field of
/// its line now, a checkpoint with a record or a line with a field the writer never writes is
/// refused, and logs whose checkpoints were signed the first way still verify.
#[test]
fn the_last_checkpoint_line_cannot_be_altered_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let clean = write_log(&path, dir.path(), 20);
    let last = clean.len() - 1;
    assert!(
        clean[last].contains("\"kind\":\"checkpoint\""),
        "{}",
        clean[last]
    );
    let edit = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut t = clean.clone();
        let mut e: serde_json::Value = serde_json::from_str(&t[last]).unwrap();
        change(&mut e);
        t[last] = serde_json::to_string(&e).unwrap();
        save(&path, &t);
        bad_line(&path)
    };
    let (line, reason) = edit(&|e| e["time_ms"] = (e["time_ms"].as_u64().unwrap() + 1).into());
    assert_eq!(line, last + 1);
    assert!(reason.contains("signature does not verify"), "{reason}");
    let (_, reason) = edit(&|e| e["record"] = serde_json::json!({"allow": true}));
    assert!(reason.contains("a checkpoint with a record"), "{reason}");
    let (_, reason) = edit(&|e| e["note"] = "nothing to see".into());
    assert!(reason.contains("unknown field `note`"), "{reason}");

    // A log signed the first way (position and `prev` only) still verifies.
    let pair = gantry::keys::load(&dir.path().join("host.pk8")).unwrap();
    let mut legacy = clean.clone();
    for i in 0..legacy.len() {
        if i > 0 {
            rechain(&mut legacy[i - 1..=i], 1);
        }
        let mut e: audit::Entry = serde_json::from_str(&legacy[i]).unwrap();
        if e.kind == "checkpoint" {
            let sig = pair.sign(&audit::legacy_checkpoint_message(e.seq, &e.prev));
            e.signature = Some(gantry::plugin::cache::hex(sig.as_ref()));
            legacy[i] = serde_json::to_string(&e).unwrap();
        }
    }
    assert!(legacy.iter().all(|l| !l.contains("v2:")));
    save(&path, &legacy);
    audit::verify(&path, None).unwrap();
}

#[test]
fn a_rewritten_chain_fails_at_the_next_signed_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let clean = write_log(&path, dir.path(), 100);
    // Flip a denied decision and recompute every later hash, as an attacker without the key can.
    let (k, mut t) = flip_denied(&clean, 9);
    rechain(&mut t, k + 1);
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
    // Not sealed at its end: refused until a writer opens it and seals what the crash left.
    let e = audit::verify(&path, None).unwrap_err();
    assert!(e.to_string().contains("partial last line"), "{e}");
    let partial = audit::verify_with(
        &path,
        &audit::VerifyOptions {
            sealed_end: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(partial.torn_tail);
    assert_eq!(partial.entries as usize, clean.len());
    // Reopening cuts the partial line off (recording it) and the chain goes on.
    let log = AuditLog::open(
        &path,
        gantry::keys::load(&dir.path().join("host.pk8")).unwrap(),
    )
    .unwrap();
    assert_eq!(log.opened().torn_bytes as usize, half.len());
    log.append("policy.swap", serde_json::json!({"revision": "r2"}))
        .unwrap();
    log.close().unwrap();
    let report = audit::verify(&path, None).unwrap();
    assert!(!report.torn_tail);
    // The sealing entry and its checkpoint, the swap and the closing checkpoint.
    assert_eq!(report.entries as usize, clean.len() + 4);
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

/// Found by a review: a write the disk could not take whole (a full disk) left part of an
/// entry in the log, and the next entry, once there was room again, followed that fragment in
/// the middle of the file: the log no longer verified, and the daemon no longer started on it.
/// A failed write is cut back to the last whole entry.
#[test]
fn a_write_the_disk_cannot_take_whole_leaves_no_fragment_before_the_next_entry() {
    // A file size limit (RLIMIT_FSIZE) stands in for the full disk: it is the whole process's,
    // so the test runs again in a process of its own.
    const CHILD: &str = "GANTRY_TEST_AUDIT_FSIZE_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let name =
            "audit::a_write_the_disk_cannot_take_whole_leaves_no_fragment_before_the_next_entry";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads", "1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(&path, key(dir.path(), "host.pk8")).unwrap();
    log.append("plugin.load", serde_json::json!({"plugin": "binpack"}))
        .unwrap();
    let written = std::fs::metadata(&path).unwrap().len();
    let limit = |soft: libc::rlim_t| {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `l` is a valid rlimit for both calls; this process alone runs this test.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut l), 0);
            l.rlim_cur = soft;
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &l), 0);
        }
    };
    // SAFETY: ignoring a signal; the write past the limit then fails with EFBIG instead.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    limit(written + 100);
    let big = serde_json::json!({"plugin": "x".repeat(400)});
    let e = log.append("plugin.load", big).unwrap_err();
    assert!(matches!(e, AuditError::Io { .. }), "{e}");
    // Said until an append succeeds (a health check reads it).
    assert!(
        log.failing()
            .is_some_and(|why| why.contains("File too large"))
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        written,
        "the part written was cut off"
    );
    limit(libc::RLIM_INFINITY);
    log.append("policy.swap", serde_json::json!({"revision": "r2"}))
        .unwrap();
    assert_eq!(log.failing(), None);
    log.close().unwrap();
    let report = audit::verify(&path, None).unwrap();
    assert_eq!(report.unsigned_tail, 0);
}
