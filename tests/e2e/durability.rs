//! Durability and integrity of what the host stores (issue 10, sections 3 and 4), through the
//! real `gantry` binary: concurrent uploads, the data directory's lock, key rotation through the
//! daemon and killed mid-way, corruption refused and recovered from, state an admin set kept
//! across restarts, users and tokens audited, expired and revoked, and audit logs forged every way
//! the log claims to detect. The crash-consistency suite is in `crash.rs`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The seeded generator of the crash tests (the model's test generator: one xorshift).
pub(crate) use gantry::scheduling::model::testing::Rng;

use crate::daemon::{Daemon, request, submit};
use crate::support::{
    add_user, build_policy, gantry, gantry_as, init_data_dir, send_raw, shared_cache,
    strict_policy, text,
};

/// `PUT` with a raw body: (status, JSON body); status 0 when the connection failed.
pub(crate) fn put_raw(url: &str, token: &str, body: &[u8]) -> (u16, Value) {
    send_raw("PUT", url, token, body)
}

/// `GET` of raw bytes: (status, body); status 0 when the connection failed.
pub(crate) fn get_raw(url: &str, token: &str) -> (u16, Vec<u8>) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent();
    match agent
        .get(url)
        .header("Authorization", &format!("Bearer {token}"))
        .call()
    {
        Ok(r) => {
            let status = r.status().as_u16();
            let mut body = Vec::new();
            let _ = r
                .into_body()
                .into_with_config()
                .limit(256 << 20)
                .reader()
                .read_to_end(&mut body);
            (status, body)
        }
        Err(_) => (0, Vec::new()),
    }
}

/// `POST` with a raw body.
fn post_raw(url: &str, token: &str, body: &[u8]) -> (u16, Value) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let r = agent
        .post(url)
        .header("Authorization", &format!("Bearer {token}"))
        .send(body)
        .expect("the daemon answers");
    let status = r.status().as_u16();
    let text = r.into_body().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Runs `gantry up` on `data`, which must refuse to start; returns its stderr.
fn start_refused(data: &Path, extra: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .env("GANTRY_CACHE_DIR", shared_cache())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting gantry up");
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    if line.starts_with("listening on") {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the daemon started on {}", data.display());
    }
    let status = child.wait().unwrap();
    let stderr = stderr_of(&mut child);
    assert_eq!(status.code(), Some(1), "{stderr}");
    stderr
}

/// Everything `child`, whose stderr is piped, wrote to it.
fn stderr_of(child: &mut Child) -> String {
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

/// `gantry ARGS --data-dir DATA`.
pub(crate) fn run(data: &Path, args: &[&str]) -> std::process::Output {
    let mut all = args.to_vec();
    all.extend(["--data-dir", data.to_str().unwrap()]);
    gantry(&all, &shared_cache())
}

pub(crate) fn must(out: std::process::Output) -> String {
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    stdout
}

/// Bytes that differ by seed.
pub(crate) fn bytes(n: usize, seed: u64) -> Vec<u8> {
    Rng::seeded(seed).bytes(n)
}

fn kill_9(child: &mut std::process::Child) {
    let status = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = child.wait();
}

/// Issue 10, section 3: concurrent uploads of one content under different names answered 500
/// and left every dataset of that content unreadable, acknowledged ones included.
#[test]
fn concurrent_uploads_of_one_content_under_different_names_all_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher,writer", "vision", "internal");
    let daemon = Daemon::start(&data, &shared_cache());
    let content = bytes(3 << 20, 7);
    let statuses: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let (url, ada, content) = (&daemon.url, &ada, &content);
                s.spawn(move || {
                    // The daemon bounds transfers at once, in all and per tenant (503, 429:
                    // try again), as a client would.
                    let url =
                        format!("{url}/v1/datasets/copy{i}?tenant=vision&classification=public");
                    let deadline = Instant::now() + Duration::from_secs(120);
                    loop {
                        let (status, v) = put_raw(&url, ada, content);
                        if (status != 503 && status != 429) || Instant::now() > deadline {
                            return (status, v);
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (status, v)) in statuses.iter().enumerate() {
        assert_eq!(*status, 201, "upload {i}: {v}");
    }
    for i in 0..12 {
        let (s, got) = get_raw(&format!("{}/v1/datasets/copy{i}/content", daemon.url), &ada);
        assert!(s == 200 && got == content, "copy{i}: {s}");
    }
    must(run(&data, &["store", "verify"]));
}

/// Found by a review: datasets are never replaced, and one tenant could upload under new names
/// without end (empty ones too), filling the disk and the table for every tenant. A tenant's
/// datasets are bounded in count and bytes: an upload past either is refused (429), before
/// its body when its declared length is over, else as its record is made, so uploads racing
/// for the last room keep one; a refused upload leaves nothing in the store, and other tenants
/// are unaffected.
#[test]
fn a_tenants_datasets_are_bounded_in_count_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher,writer", "vision", "internal");
    let lee = add_user(&data, "lee", "researcher,writer", "language", "internal");
    let daemon = Daemon::start_with(
        &data,
        &shared_cache(),
        &[
            "--max-datasets-per-tenant",
            "3",
            "--max-dataset-bytes-per-tenant",
            "100000",
        ],
    );
    let put = |token: &str, tenant: &str, name: &str, body: &[u8]| {
        let url = format!(
            "{}/v1/datasets/{name}?tenant={tenant}&classification=public",
            daemon.url
        );
        put_raw(&url, token, body)
    };
    let (s, v) = put(&ada, "vision", "d1", &bytes(60_000, 1));
    assert_eq!(s, 201, "{v}");
    let (s, v) = put(&ada, "vision", "big", &bytes(50_000, 2));
    assert_eq!(s, 429, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("tenant vision's datasets hold 60000 bytes")
            && error.contains("--max-dataset-bytes-per-tenant"),
        "{v}"
    );
    // Four uploads, each of which fits alone, racing for the room of one.
    let raced: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|i| {
                let put = &put;
                let ada = &ada;
                s.spawn(move || put(ada, "vision", &format!("r{i}"), &bytes(30_000, 10 + i)).0)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(raced.iter().filter(|s| **s == 201).count(), 1, "{raced:?}");
    assert!(raced.iter().all(|s| *s == 201 || *s == 429), "{raced:?}");
    let (s, v) = put(&ada, "vision", "tiny", b"1");
    assert_eq!(s, 201, "{v}");
    let (s, v) = put(&ada, "vision", "tiny2", b"");
    assert_eq!(s, 429, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("tenant vision has 3 datasets"),
        "{v}"
    );
    // Another tenant's room is its own.
    let (s, v) = put(&lee, "language", "d1", &bytes(90_000, 3));
    assert_eq!(s, 201, "{v}");
    // Nothing refused was kept: the store holds the datasets listed, no more.
    let (s, listed) = request(
        &format!("{}/v1/datasets", daemon.url),
        "GET",
        Some(&ada),
        None,
    );
    assert_eq!(s, 200, "{listed}");
    let mut named: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["object"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(named.len(), 3, "{listed}");
    let (_, theirs) = request(
        &format!("{}/v1/datasets", daemon.url),
        "GET",
        Some(&lee),
        None,
    );
    named.push(theirs[0]["object"].as_str().unwrap().to_string());
    named.sort();
    let stored = gantry::storage::Store::open(&data).unwrap().list().unwrap();
    assert_eq!(stored, named);
}

/// Found by a review: a client that hung up right after sending its body dropped its request's
/// handler, and with it the record the stored object was waiting for: 30 such uploads past a
/// 1 MiB quota kept 27 MB in the store, no dataset listed. The store and the record now run to
/// their end whatever the client does: each upload is kept as a dataset, or refused and gone.
#[test]
fn an_upload_whose_client_hangs_up_after_its_body_leaves_nothing_unnamed() {
    use std::net::{Shutdown, TcpStream};
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher,writer", "vision", "internal");
    let daemon = Daemon::start_with(
        &data,
        &shared_cache(),
        &["--max-dataset-bytes-per-tenant", "1048576"],
    );
    let addr = daemon.url.trim_start_matches("http://").to_string();
    for i in 0..4u64 {
        let body = bytes(900_000, 40 + i);
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "PUT /v1/datasets/gone{i}?tenant=vision&classification=public HTTP/1.1\r\n\
             Host: {addr}\r\nAuthorization: Bearer {ada}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        let _ = s.shutdown(Shutdown::Both);
    }
    // Whatever the store keeps, a dataset names (one fits the quota; a refused one is gone).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, listed) = request(
            &format!("{}/v1/datasets", daemon.url),
            "GET",
            Some(&ada),
            None,
        );
        assert_eq!(status, 200, "{listed}");
        let mut named: Vec<String> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["object"].as_str().unwrap().to_string())
            .collect();
        named.sort();
        let stored = gantry::storage::Store::open(&data).unwrap().list().unwrap();
        if stored == named && named.len() <= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stored {stored:?}, named by datasets {named:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 10, section 3: `gantry key rotate` against a running daemon deleted the master key it
/// held, and a second `gantry up` on the same directory started too.
#[test]
fn key_rotate_and_a_second_daemon_against_a_running_daemon_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ops = add_user(&data, "ops", "admin", "vision", "secret");
    let daemon = Daemon::start(&data, &shared_cache());
    let url = daemon.url.clone();
    let upload = |name: &str, body: &[u8]| {
        let (s, v) = put_raw(
            &format!("{url}/v1/datasets/{name}?tenant=vision&classification=public"),
            &ops,
            body,
        );
        assert_eq!(s, 201, "{v}");
    };
    upload("before", b"1,2\n3,4\n");

    // A second daemon, and offline writers, are refused naming the holder.
    let e = start_refused(&data, &[]);
    assert!(e.contains("`gantry up`") && e.contains("pid "), "{e}");
    let out = run(&data, &["user", "add", "eve", "--roles", "admin"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("stop it"), "{}", text(&out).1);
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["key", "rotate", "--data-dir", data.to_str().unwrap()])
        .env_remove("GANTRY_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("admin's token"), "{}", text(&out).1);
    let masters = || {
        std::fs::read_dir(data.join("keys"))
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                n.to_string_lossy().starts_with("master-")
            })
            .count()
    };
    assert_eq!(masters(), 1, "nothing was touched");

    // Through the daemon: rotated, audited, every object still readable, uploads go on.
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["key", "rotate", "--data-dir", data.to_str().unwrap()])
        .env("GANTRY_TOKEN", &ops)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(
        text(&out).0.contains("1 data key(s) re-wrapped"),
        "{}",
        text(&out).0
    );
    upload("after", b"5,6\n");
    for name in ["before", "after"] {
        let (s, _) = get_raw(&format!("{url}/v1/datasets/{name}/content"), &ops);
        assert_eq!(s, 200, "{name}");
    }
    assert_eq!(masters(), 1);
    // A researcher may not rotate.
    drop(daemon);
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let mut daemon = Daemon::start(&data, &shared_cache());
    let url = daemon.url.clone();
    let (s, _) = request(&format!("{url}/v1/keys/rotate"), "POST", Some(&ada), None);
    assert_eq!(s, 403);
    // After a restart, everything reads; the rotation is in the audit log.
    for name in ["before", "after"] {
        assert_eq!(
            get_raw(&format!("{url}/v1/datasets/{name}/content"), &ops).0,
            200
        );
    }
    daemon.signal("-TERM");
    must(run(&data, &["store", "verify"]));
    must(run(&data, &["audit", "verify"]));
    let log = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert!(log.contains("\"key.rotate\"") && log.contains("\"user\":\"ops\""));
}

/// Issue 10, section 3: a crash in the middle of a rotation loses nothing. `gantry key rotate`
/// is killed (`kill -9`) at seeded random points of its run, many times; after each kill every
/// object reads, and in the end `store verify` is clean with one master key left.
#[test]
fn a_key_rotation_killed_at_random_points_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let objects: Vec<(String, Vec<u8>)> = {
        let store = gantry::storage::Store::open_exclusive(&data, "test").unwrap();
        (0..300)
            .map(|i| {
                let b = bytes(64 + i, i as u64);
                (store.put_bytes(&b).unwrap(), b)
            })
            .collect()
    };
    let rotate = || {
        Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["key", "rotate", "--data-dir", data.to_str().unwrap()])
            .env_remove("GANTRY_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // How long a whole rotation takes here: kill points are drawn across it.
    let t = Instant::now();
    assert!(rotate().wait().unwrap().success());
    let whole = t.elapsed().as_millis() as u64;
    let mut rng = Rng(0x5eed_0001);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut kills = 0;
    while kills < 12 && Instant::now() < deadline {
        let mut child = rotate();
        std::thread::sleep(Duration::from_millis(rng.below(whole * 13 / 10).into()));
        kill_9(&mut child);
        kills += 1;
        let store = gantry::storage::Store::open(&data).unwrap();
        for (id, b) in &objects {
            assert!(
                store
                    .get(id)
                    .unwrap_or_else(|e| panic!("after kill {kills}: {e}"))
                    == *b,
                "after kill {kills}: {id}"
            );
        }
    }
    assert!(kills >= 4, "only {kills} kills in a minute");
    // Finished by a last run: one master left, every key under it, the store and log clean.
    assert!(rotate().wait().unwrap().success());
    let masters: Vec<_> = std::fs::read_dir(data.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("master-") || n.ends_with(".tmp"))
        .collect();
    assert_eq!(masters.len(), 1, "{masters:?}");
    must(run(&data, &["store", "verify"]));
    must(run(&data, &["audit", "verify"]));
}

/// Issue 10, section 3: the database and the audit log were 0644 in a 0755 directory.
#[test]
fn the_data_directory_its_database_and_audit_log_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    // Found by a review: key files left readable by others (a copy, an editor) stayed so.
    let keys: Vec<PathBuf> = std::fs::read_dir(data.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(keys.len() >= 3, "{keys:?}");
    for key in &keys {
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let daemon = Daemon::start(&data, &shared_cache());
    let body = json!({"id": "j", "tenant": "vision", "gpus": 1});
    assert_eq!(submit(&daemon.url, &ada, &body).0, 201);
    let mode = |p: PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(data.clone()), 0o700);
    for f in [
        "gantry.db",
        "gantry.db-wal",
        "gantry.db-shm",
        "audit.log",
        "lock",
    ] {
        assert_eq!(mode(data.join(f)), 0o600, "{f}");
    }
    for key in keys {
        assert_eq!(mode(key.clone()), 0o600, "{}", key.display());
    }
}

/// Found by a review: a data directory whose database was gone (a restore interrupted between
/// setting the old one aside and moving the backup in, a mistake) started as a new, empty
/// installation: every user, token, job and dataset record silently gone. And `gantry db check`
/// on a directory without one created it. Both refuse now, naming the way back.
#[test]
fn a_data_directory_that_lost_its_database_is_refused_not_started_empty() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    add_user(&data, "ada", "researcher", "vision", "public");
    for suffix in ["", "-wal", "-shm"] {
        let from = data.join(format!("gantry.db{suffix}"));
        if from.exists() {
            std::fs::rename(&from, data.join(format!("gantry.db.damaged-1{suffix}"))).unwrap();
        }
    }
    let e = start_refused(&data, &[]);
    assert!(
        e.contains("no such database, but this data directory was used")
            && e.contains("gantry db restore"),
        "{e}"
    );
    assert!(
        !data.join("gantry.db").exists(),
        "no empty database in its place"
    );
    let out = gantry(
        &["db", "check", "--data-dir", data.to_str().unwrap()],
        &shared_cache(),
    );
    let (_, e) = text(&out);
    assert!(
        !out.status.success() && e.contains("no such database"),
        "{e}"
    );
    assert!(!data.join("gantry.db").exists());
}

/// A job's state column, as it is in the database file: one bit flipped in every copy.
fn flip_in_file(path: &Path, text: &[u8], bit: u8) {
    let mut b = std::fs::read(path).unwrap();
    let at: Vec<usize> = b
        .windows(text.len())
        .enumerate()
        .filter(|(_, w)| *w == text)
        .map(|(i, _)| i)
        .collect();
    assert!(
        !at.is_empty(),
        "{:?} not in the file",
        String::from_utf8_lossy(text)
    );
    for i in at {
        b[i] ^= bit;
    }
    std::fs::write(path, b).unwrap();
}

/// Issue 10, section 3: a flipped byte in SQLite row data was read as a default (a finished job
/// became a pending one holding a GPU); there was no way back from a detected corruption. Now
/// the daemon refuses to start naming the table, row and column, and an online backup restores.
#[test]
fn a_corrupt_database_stops_the_daemon_naming_the_row_and_a_backup_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let ops = add_user(&data, "ops", "admin", "vision", "public");
    let eve = add_user(&data, "eve", "researcher", "vision", "public");
    let mut daemon = Daemon::start(&data, &shared_cache());
    let jobs = format!("{}/v1/jobs", daemon.url);
    let body = json!({"id": "done", "tenant": "vision", "gpus": 1}).to_string();
    assert_eq!(request(&jobs, "POST", Some(&ada), Some(&body)).0, 201);
    let (s, _) = request(&format!("{jobs}/done/cancel"), "POST", Some(&ada), None);
    assert_eq!(s, 200);
    // An online backup, while the daemon runs.
    let backup = dir.path().join("backup.db");
    must(run(
        &data,
        &["db", "backup", "-o", backup.to_str().unwrap()],
    ));
    // Found by a review: a restore brought back every token revoked since the backup, and
    // every user's roles as they were. Eve's token is revoked after the backup; ada loses the
    // researcher role (an auditor now).
    let users = format!("{}/v1/users", daemon.url);
    let (s, v) = request(&format!("{users}/eve/revoke"), "POST", Some(&ops), None);
    assert_eq!(s, 200, "{v}");
    let demoted = json!({"name": "ada", "roles": ["auditor"], "tenants": ["vision"],
                         "clearance": "public"});
    let (s, v) = request(&users, "POST", Some(&ops), Some(&demoted.to_string()));
    assert_eq!(s, 201, "{v}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
        0o600
    );
    daemon.signal("-TERM");
    // Checked (and, as the last connection closes, the WAL folded into the file), then damaged.
    must(run(&data, &["db", "check"]));
    flip_in_file(&data.join("gantry.db"), b"cancelled", 0x20);
    let e = start_refused(&data, &[]);
    assert!(
        e.contains("table jobs, row vision/done, column state") && e.contains("gantry db restore"),
        "{e}"
    );
    let out = run(&data, &["db", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("table jobs, row vision/done"),
        "{}",
        text(&out).1
    );

    let out = must(run(&data, &["db", "restore", backup.to_str().unwrap()]));
    assert!(out.contains("kept as"), "{out}");
    assert!(
        out.contains("change(s) to users and tokens made again from the audit log"),
        "{out}"
    );
    let kept = std::fs::read_dir(&data)
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            n.to_string_lossy().starts_with("gantry.db.damaged-")
        })
        .count();
    assert!(kept >= 1, "the damaged database is kept as evidence");
    let daemon = Daemon::start(&data, &shared_cache());
    let (s, v) = request(
        &format!("{}/v1/jobs/done", daemon.url),
        "GET",
        Some(&ada),
        None,
    );
    assert_eq!((s, v["state"].as_str()), (200, Some("cancelled")), "{v}");
    let (s, v) = request(
        &format!("{}/v1/jobs/done", daemon.url),
        "GET",
        Some(&eve),
        None,
    );
    assert_eq!(
        s, 401,
        "a token revoked after the backup stays revoked: {v}"
    );
    let body = json!({"id": "after", "tenant": "vision", "gpus": 1}).to_string();
    let (s, v) = request(
        &format!("{}/v1/jobs", daemon.url),
        "POST",
        Some(&ada),
        Some(&body),
    );
    assert_eq!(s, 403, "ada's roles are as they were made last: {v}");
    let log = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert!(log.contains("\"db.restored\""));
}

/// Found by a review: an object deleted from the store passed every check (`db check`,
/// `store verify`, which lists only what is there) while reading its dataset answered 500.
/// `gantry db check` looks for every object the database names, naming what names it.
#[test]
fn db_check_finds_an_object_the_database_names_and_the_store_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher,writer", "vision", "internal");
    let mut daemon = Daemon::start(&data, &shared_cache());
    let url = format!(
        "{}/v1/datasets/lost.csv?tenant=vision&classification=public",
        daemon.url
    );
    let (s, v) = put_raw(&url, &ada, &bytes(5_000, 7));
    assert_eq!(s, 201, "{v}");
    let object = v["object"].as_str().unwrap().to_string();
    daemon.signal("-TERM");
    let ok = must(run(&data, &["db", "check"]));
    assert!(ok.contains("objects they name are in the store"), "{ok}");
    std::fs::remove_file(data.join("objects").join(&object[..2]).join(&object)).unwrap();
    let out = run(&data, &["db", "check"]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("dataset vision/lost.csv names object {object}")),
        "{err}"
    );
}

/// Found by a review of the change that made a node's reports on its runs `node.report`: a
/// policy installed before it (written from the shipped one of its day) refuses it as an
/// unknown action, and every agent's runs were then handed out and never reported. Where
/// agents are on, a policy that refuses a node's own identity its work is refused: at install
/// (400) and at start, saying what to do.
#[test]
fn a_policy_that_refuses_nodes_their_work_is_refused_where_agents_are_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ops = add_user(&data, "ops", "admin", "vision", "public");
    add_user(&data, "node-a", "node", "vision", "public");
    let old = dir.path().join("old");
    std::fs::create_dir(&old).unwrap();
    let shipped = crate::support::repo().join("policies");
    let rego = std::fs::read_to_string(shipped.join("authz.rego")).unwrap();
    let before = rego.replace("\"node.report\", ", "");
    assert_ne!(before, rego, "the shipped policy changed shape");
    std::fs::write(old.join("authz.rego"), before).unwrap();
    std::fs::copy(shipped.join("data.json"), old.join("data.json")).unwrap();
    let bundle = dir.path().join("old.tar.gz");
    build_policy(&old, "gantry/authz/decision", &bundle, &shared_cache());
    let bundle = std::fs::read(&bundle).unwrap();
    let cluster = dir.path().join("cluster.toml");
    std::fs::write(&cluster, crate::support::TWO_NODES).unwrap();
    let agents = [
        "--cluster",
        cluster.to_str().unwrap(),
        "--agent-lease-s",
        "10",
    ];

    let mut daemon = Daemon::start_with(&data, &shared_cache(), &agents);
    let (s, v) = post_raw(&format!("{}/v1/policy", daemon.url), &ops, &bundle);
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("`node.report`"),
        "{v}"
    );
    daemon.signal("-TERM");

    let mut daemon = Daemon::start(&data, &shared_cache());
    let (s, v) = post_raw(&format!("{}/v1/policy", daemon.url), &ops, &bundle);
    assert_eq!(s, 200, "without agents it decides nothing of theirs: {v}");
    daemon.signal("-TERM");
    let e = start_refused(&data, &agents);
    assert!(
        e.contains("`node.report`") && e.contains("--shipped-policy"),
        "{e}"
    );
    let _daemon = Daemon::start_with(
        &data,
        &shared_cache(),
        &[&agents[..], &["--shipped-policy"]].concat(),
    );
}

/// Issue 10, section 3: a policy replaced through `POST /v1/policy` was back to the shipped one
/// after a restart, and a GPU marked unhealthy was healthy again.
#[test]
fn a_policy_and_gpu_health_an_admin_set_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ops = add_user(&data, "ops", "admin", "vision", "public");
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    // A stricter policy: researchers may ask for at most 2 GPUs.
    let src = strict_policy(dir.path());
    let bundle = dir.path().join("strict.tar.gz");
    build_policy(&src, "gantry/authz/decision", &bundle, &shared_cache());
    let mut daemon = Daemon::start(&data, &shared_cache());
    let url = daemon.url.clone();
    let (_, v) = request(&format!("{url}/v1/policy"), "GET", Some(&ada), None);
    assert_eq!(v["source"], "shipped", "{v}");
    let (s, v) = post_raw(
        &format!("{url}/v1/policy"),
        &ops,
        &std::fs::read(&bundle).unwrap(),
    );
    assert_eq!(s, 200, "{v}");
    let revision = v["revision"].as_str().unwrap().to_string();
    let gpu = {
        let (_, v) = request(&format!("{url}/v1/gpus"), "GET", Some(&ops), None);
        v["gpus"][3]["id"].as_str().unwrap().to_string()
    };
    let (s, v) = request(
        &format!("{url}/v1/gpus/unhealthy"),
        "POST",
        Some(&ops),
        Some(&json!({"gpu": gpu}).to_string()),
    );
    assert_eq!(s, 200, "{v}");
    daemon.signal("-9");

    let mut daemon = Daemon::start(&data, &shared_cache());
    let url = daemon.url.clone();
    let (_, v) = request(&format!("{url}/v1/policy"), "GET", Some(&ada), None);
    assert_eq!(
        (v["source"].as_str(), v["revision"].as_str()),
        (Some("installed"), Some(revision.as_str())),
        "{v}"
    );
    let eight = json!({"tenant": "vision", "gpus": 8}).to_string();
    let (s, v) = request(&format!("{url}/v1/jobs"), "POST", Some(&ada), Some(&eight));
    assert_eq!(
        s, 403,
        "the installed policy decides after the restart: {v}"
    );
    let healthy = |url: &str| {
        let (_, v) = request(&format!("{url}/v1/gpus"), "GET", Some(&ops), None);
        v["gpus"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["id"] == gpu.as_str())
            .unwrap()["healthy"]
            .as_bool()
            .unwrap()
    };
    assert!(!healthy(&url), "still out of service");
    let (s, _) = request(
        &format!("{url}/v1/gpus/healthy"),
        "POST",
        Some(&ops),
        Some(&json!({"gpu": gpu}).to_string()),
    );
    assert_eq!(s, 200);
    daemon.signal("-TERM");
    let daemon = Daemon::start(&data, &shared_cache());
    assert!(healthy(&daemon.url), "back in service, and it stays so");
    drop(daemon);

    // An installed policy that no longer loads stops the start (never silently the shipped
    // one); `--shipped-policy` replaces it, audited.
    let db = gantry_daemon::db::Db::open(&gantry_daemon::db_path(&data)).unwrap();
    let object = db.setting("policy.object").unwrap().unwrap();
    drop(db);
    let key = data
        .join("objects")
        .join(&object[..2])
        .join(format!("{object}.key"));
    let good = std::fs::read(&key).unwrap();
    std::fs::write(&key, b"{}").unwrap();
    let e = start_refused(&data, &[]);
    assert!(
        e.contains("--shipped-policy") && e.contains(&revision),
        "{e}"
    );
    std::fs::write(&key, good).unwrap();
    let mut daemon = Daemon::start_with(&data, &shared_cache(), &["--shipped-policy"]);
    let (_, v) = request(
        &format!("{}/v1/policy", daemon.url),
        "GET",
        Some(&ada),
        None,
    );
    assert_eq!(v["source"], "shipped", "{v}");
    daemon.signal("-TERM");
    let log = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert!(log.contains("\"policy.reset\""));
}

/// Issue 10, section 3: `gantry user add` and `gantry key rotate` wrote no audit entry; tokens
/// never expired and could not be revoked.
#[test]
fn user_changes_are_audited_and_expired_or_revoked_tokens_get_401() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let out = run(
        &data,
        &[
            "user",
            "add",
            "ada",
            "--roles",
            "researcher",
            "--tenants",
            "vision",
            "--expires",
            "2s",
        ],
    );
    let short = must(out).trim().to_string();
    let lee = add_user(&data, "lee", "researcher", "vision", "public");
    let lee2 = must(run(&data, &["user", "token", "lee", "--expires", "never"]))
        .trim()
        .to_string();
    must(run(&data, &["key", "rotate"]));
    assert!(
        run(
            &data,
            &["user", "add", "x", "--roles", "a", "--expires", "3w"]
        )
        .status
        .code()
            == Some(1)
    );
    let log = std::fs::read_to_string(data.join("audit.log")).unwrap();
    for kind in ["user.add", "token.issue", "key.rotate"] {
        assert!(log.contains(&format!("\"kind\":\"{kind}\"")), "{kind}");
    }
    assert!(
        !log.contains(&short[7..]),
        "a token's secret never reaches the log"
    );
    must(run(&data, &["audit", "verify"]));

    let started = Instant::now();
    let daemon = Daemon::start(&data, &shared_cache());
    let jobs = format!("{}/v1/jobs", daemon.url);
    assert_eq!(request(&jobs, "GET", Some(&lee), None).0, 200);
    assert_eq!(request(&jobs, "GET", Some(&lee2), None).0, 200);
    // Expiry: well past the 2 s, the short-lived token is refused.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
    assert_eq!(request(&jobs, "GET", Some(&short), None).0, 401);
    drop(daemon);

    // Revoking one token through the running daemon (an admin's token; no restart), then all
    // of a user's offline.
    let ops = add_user(&data, "ops", "admin", "vision", "public");
    let daemon = Daemon::start(&data, &shared_cache());
    let jobs = format!("{}/v1/jobs", daemon.url);
    let id = lee2.split('_').nth(1).unwrap();
    let revoke_as = |token: &str| {
        Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["user", "revoke", "lee", "--token", id, "--data-dir"])
            .arg(&data)
            .env("GANTRY_TOKEN", token)
            .output()
            .unwrap()
    };
    let out = revoke_as(&lee);
    assert_eq!(out.status.code(), Some(1), "a researcher may not revoke");
    assert!(text(&out).1.contains("403"), "{}", text(&out).1);
    must(revoke_as(&ops));
    assert_eq!(request(&jobs, "GET", Some(&lee2), None).0, 401);
    assert_eq!(request(&jobs, "GET", Some(&lee), None).0, 200);
    drop(daemon);
    let out = run(&data, &["user", "add", "../x", "--roles", "admin"]);
    assert_eq!(out.status.code(), Some(1), "user names are checked");
    must(run(&data, &["user", "revoke", "lee"]));
    let listed = must(run(&data, &["user", "tokens", "lee"]));
    assert_eq!(listed.matches("revoked").count(), 2, "{listed}");
    let daemon = Daemon::start(&data, &shared_cache());
    assert_eq!(
        request(&format!("{}/v1/jobs", daemon.url), "GET", Some(&lee), None).0,
        401
    );
    drop(daemon);
    let log = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert_eq!(log.matches("\"kind\":\"user.revoke\"").count(), 2);
}

/// Users are added and issued tokens through a running daemon (`gantry user add --url`, an
/// admin's token), with no restart: checked like the offline command, audited, admins only.
#[test]
fn users_are_added_and_issued_tokens_through_a_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ops = add_user(&data, "ops", "admin", "vision", "public");
    let lee = add_user(&data, "lee", "researcher", "vision", "public");
    let daemon = Daemon::start(&data, &shared_cache());
    let jobs = format!("{}/v1/jobs", daemon.url);
    let through = |token: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--url", &daemon.url]);
        gantry_as(token, &all, &shared_cache())
    };
    let add = [
        "user",
        "add",
        "zoe",
        "--roles",
        "researcher",
        "--tenants",
        "vision",
    ];
    let zoe = must(through(&ops, &add)).trim().to_string();
    assert_eq!(request(&jobs, "GET", Some(&zoe), None).0, 200);
    let again = must(through(&ops, &["user", "token", "zoe", "--expires", "1h"]));
    assert_eq!(request(&jobs, "GET", Some(again.trim()), None).0, 200);

    let refused = |token: &str, args: &[&str], code: &str, says: &str| {
        let out = through(token, args);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr.contains(code) && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    };
    refused(&lee, &add, "403", "admins");
    refused(
        &ops,
        &["user", "add", "../x", "--roles", "a"],
        "400",
        "user name",
    );
    refused(
        &ops,
        &["user", "add", "x", "--roles", "a b"],
        "400",
        "roles",
    );
    refused(
        &ops,
        &["user", "token", "x", "--expires", "3w"],
        "400",
        "expires",
    );
    refused(&ops, &["user", "token", "nobody"], "404", "nobody");
    let many = vec!["r"; 65].join(",");
    refused(
        &ops,
        &["user", "add", "x", "--roles", &many],
        "400",
        "at most 64",
    );
    let mut daemon = daemon;
    // A stop seals the log's tail.
    daemon.signal("-TERM");
    let log = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert_eq!(log.matches("\"kind\":\"user.add\"").count(), 3, "{log}");
    assert_eq!(log.matches("\"kind\":\"token.issue\"").count(), 1);
    assert!(
        !log.contains(&zoe[20..]),
        "a token's secret never reaches the log"
    );
    must(run(&data, &["audit", "verify"]));
}

/// The audit log's lines, and rewriting them.
pub(crate) fn log_lines(data: &Path) -> Vec<String> {
    std::fs::read_to_string(data.join("audit.log"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn rechain(t: &mut [String], from: usize) {
    for i in from.max(1)..t.len() {
        let prev = gantry::plugin::cache::sha256_hex(t[i - 1].as_bytes());
        let mut e: Value = serde_json::from_str(&t[i]).unwrap();
        e["prev"] = Value::String(prev);
        let entry: gantry::audit::Entry = serde_json::from_value(e).unwrap();
        t[i] = serde_json::to_string(&entry).unwrap();
    }
}

fn renumber(t: &mut [String]) {
    for (i, line) in t.iter_mut().enumerate() {
        let mut e: Value = serde_json::from_str(line).unwrap();
        e["seq"] = (i + 1).into();
        *line = serde_json::to_string(&e).unwrap();
    }
}

/// Issue 10, section 4: a daemon started on a forged log accepted it and signed new checkpoints
/// over it. Every forgery the log claims to detect, and the new ones (checkpoints stripped and
/// the chain recomputed, the tail cut to a checkpoint and mid-way, another key), stops the
/// daemon; `gantry audit recover` keeps the damaged log and starts a new one naming it.
#[test]
fn a_daemon_refuses_every_forged_audit_log_and_recover_gets_it_running() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let mut daemon = Daemon::start(&data, &shared_cache());
    // Enough decisions for several automatic checkpoints, denials among them.
    for i in 0..90 {
        let tenant = if i % 3 == 0 { "language" } else { "vision" };
        let body = json!({"id": format!("j{i}"), "tenant": tenant, "gpus": 1});
        submit(&daemon.url, &ada, &body);
    }
    daemon.signal("-TERM");
    must(run(&data, &["audit", "verify"]));
    let clean = log_lines(&data);
    let is_cp = |l: &String| l.contains("\"kind\":\"checkpoint\"");
    let cps: Vec<usize> = (0..clean.len()).filter(|&i| is_cp(&clean[i])).collect();
    assert!(cps.len() >= 2, "{} checkpoints", cps.len());
    let denied = clean
        .iter()
        .position(|l| l.contains("\"allow\":false"))
        .unwrap();
    let other_key = gantry::keys::generate(&dir.path().join("other.pk8")).unwrap();

    let mut forgeries: Vec<(&str, Vec<String>)> = Vec::new();
    let mut t = clean.clone();
    t[denied] = t[denied].replace("\"allow\":false", "\"allow\":true");
    forgeries.push(("modified", t.clone()));
    rechain(&mut t, denied + 1);
    forgeries.push(("rewritten chain", t));
    let mut t = clean.clone();
    t.remove(5);
    forgeries.push(("deleted", t));
    let mut t = clean.clone();
    t.swap(5, 6);
    forgeries.push(("reordered", t));
    let mut t = clean.clone();
    t.insert(6, clean[5].clone());
    forgeries.push(("inserted", t));
    let mut t: Vec<String> = clean.iter().filter(|l| !is_cp(l)).cloned().collect();
    for line in t.iter_mut() {
        *line = line.replace("\"allow\":false", "\"allow\":true");
    }
    renumber(&mut t);
    rechain(&mut t, 1);
    forgeries.push(("checkpoints stripped, chain recomputed", t));
    forgeries.push(("cut to a checkpoint", clean[..=cps[0]].to_vec()));
    forgeries.push(("cut mid-way", clean[..cps[cps.len() - 1] - 3].to_vec()));
    // Signed by another key: a whole log of the same events, sealed by it.
    let forged = dir.path().join("forged.log");
    let log = gantry::audit::AuditLog::open(&forged, other_key).unwrap();
    for _ in 0..clean.len().saturating_sub(2) {
        log.append("decision", json!({"allow": true})).unwrap();
    }
    log.close().unwrap();
    forgeries.push(("another key", log_lines_at(&forged)));

    for (name, lines) in &forgeries {
        std::fs::write(data.join("audit.log"), lines.join("\n") + "\n").unwrap();
        let e = start_refused(&data, &[]);
        assert!(e.contains("gantry audit recover"), "{name}: {e}");
        let out = run(&data, &["audit", "verify"]);
        assert_eq!(out.status.code(), Some(1), "{name}: audit verify passed");
    }

    // Recovery, from the last forgery: the damaged log kept, a new one naming it, the daemon up.
    let out = must(run(&data, &["audit", "recover", "--reason", "test"]));
    assert!(out.contains("kept as"), "{out}");
    let out = run(&data, &["audit", "recover"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "nothing to recover the second time"
    );
    let first: Value = serde_json::from_str(&log_lines(&data)[0]).unwrap();
    assert_eq!(first["kind"], "audit.recovered");
    assert!(
        first["record"]["damaged_log"]
            .as_str()
            .unwrap()
            .starts_with("audit.log.damaged-")
    );
    assert!(first["record"]["damaged_sha256"].is_string());
    must(run(&data, &["audit", "verify"]));
    let mut daemon = Daemon::start(&data, &shared_cache());
    assert_eq!(
        request(&format!("{}/v1/jobs", daemon.url), "GET", Some(&ada), None).0,
        200
    );
    daemon.signal("-TERM");
    must(run(&data, &["audit", "verify"]));
}

fn log_lines_at(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// Issue 10, section 4: the daemon seals at least every few seconds (a timer, not only a count)
/// and on shutdown, keeps the sealed position in its database and serves it for anchoring; after
/// a `kill -9` it reports and seals the torn or unsealed tail at the next start.
#[test]
fn the_daemon_seals_on_a_timer_serves_its_head_and_seals_a_crashed_tail() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ops = add_user(&data, "ops", "admin", "vision", "public");
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let mut daemon = Daemon::start(&data, &shared_cache());
    let url = daemon.url.clone();
    let jobs = format!("{url}/v1/jobs");
    for _ in 0..3 {
        assert_eq!(request(&jobs, "GET", Some(&ada), None).0, 200);
    }
    // Unsealed now; sealed by the timer within a few seconds (polled, generously bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = log_lines(&data);
        if lines
            .last()
            .is_some_and(|l| l.contains("\"kind\":\"checkpoint\""))
        {
            break;
        }
        assert!(Instant::now() < deadline, "never sealed by the timer");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The head, for anchoring: an auditor's request seals first, and the log holds it.
    assert_eq!(
        request(&format!("{url}/v1/audit/head"), "GET", Some(&ada), None).0,
        403
    );
    let (s, head) = request(&format!("{url}/v1/audit/head"), "GET", Some(&ops), None);
    assert_eq!(s, 200, "{head}");
    let anchored = head["head"].as_str().unwrap().to_string();
    let (s, v) = request(&format!("{url}/v1/audit/verify"), "GET", Some(&ops), None);
    assert_eq!(s, 200, "{v}");
    for _ in 0..4 {
        request(&jobs, "GET", Some(&ada), None);
    }
    daemon.signal("-9");
    // Killed, with half an entry written: the log alone says it is not sealed.
    let torn = br#"{"seq":999999,"time_ms":1,"kind":"decis"#;
    std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("audit.log"))
        .unwrap()
        .write_all(torn)
        .unwrap();
    let out = run(&data, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("partial last line"),
        "{}",
        text(&out).1
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .env("GANTRY_CACHE_DIR", shared_cache())
        .env("RUST_LOG", "gantry=warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    // Sealed at start, saying how many entries it covers.
    must(run(&data, &["audit", "verify"]));
    let lines = log_lines(&data);
    let marker = lines
        .iter()
        .rev()
        .find(|l| l.contains("\"kind\":\"audit.tail_sealed\""))
        .expect("the sealing is recorded");
    let marker: Value = serde_json::from_str(marker).unwrap();
    assert_eq!(
        marker["record"]["torn_bytes"].as_u64(),
        Some(torn.len() as u64),
        "{marker}"
    );
    let out = must(run(&data, &["audit", "verify", "--head", &anchored]));
    assert!(out.contains("holds the sealed position"), "{out}");
    kill_9(&mut child);
    let stderr = stderr_of(&mut child);
    assert!(stderr.contains("sealing"), "{stderr}");
}

/// Issue 10, section 4: the daemon pins its own key. A log re-signed by another key, with
/// `keys/host.pk8` replaced by that key, is refused: the key that signs the log is recorded in the
/// database the first time the directory is written.
#[test]
fn a_replaced_host_key_cannot_sign_over_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let original = std::fs::read(data.join("keys/host.pk8")).unwrap();
    // The attacker's key in place of the host's, and a log of its own signed by it.
    std::fs::remove_file(data.join("keys/host.pk8")).unwrap();
    let forger = gantry::keys::generate(&data.join("keys/host.pk8")).unwrap();
    std::fs::remove_file(data.join("audit.log")).unwrap();
    let log = gantry::audit::AuditLog::open(&data.join("audit.log"), forger).unwrap();
    log.append("user.add", json!({"user": "ada"})).unwrap();
    log.close().unwrap();
    let e = start_refused(&data, &[]);
    assert!(e.contains("host key was replaced"), "{e}");
    // The original key back (and the log recovered): the daemon starts.
    std::fs::write(data.join("keys/host.pk8"), original).unwrap();
    must(run(&data, &["audit", "recover", "--reason", "forged log"]));
    let daemon = Daemon::start(&data, &shared_cache());
    assert_eq!(
        request(&format!("{}/v1/jobs", daemon.url), "GET", Some(&ada), None).0,
        200
    );
}
