//! The reliability suite's crash consistency: the real daemon killed (`kill -9`) at seeded
//! random points while clients write, many times, bounded in time; after every restart the
//! invariants are checked. Extend `workload` with more kinds of writes and `check_invariants`
//! with what they promise.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::daemon::{Daemon, request};
use crate::durability::{Rng, bytes, get_raw, log_lines, must, put_raw, run};
use crate::support::{add_user, init_data_dir, shared_cache};

/// What the crash suite checks after every restart.
struct Acknowledged {
    datasets: Vec<(String, Vec<u8>)>,
    jobs: Vec<String>,
}

/// The reliability suite's crash consistency: the real daemon killed (`kill -9`) at seeded
/// random points during uploads (one content under several names among them), job submissions
/// and a key rotation, many times (bounded to about a minute); after every restart every
/// acknowledged upload reads back whole, every accepted job is there, `store verify` and
/// `audit verify` are clean (the crash's tail reported and sealed), and no temporary is left.
#[test]
fn kill_9_at_random_points_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ops = add_user(&data, "ops", "admin,writer", "vision", "secret");
    let mut rng = Rng(0xc0ffee);
    let mut acked = Acknowledged {
        datasets: Vec::new(),
        jobs: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut rounds, mut sealed_tails) = (0, 0);
    let mut left = None;
    while rounds < 10 && (rounds < 3 || Instant::now() < deadline) {
        rounds += 1;
        let mut daemon = Daemon::start(&data, &shared_cache());
        sealed_tails += u32::from(check_tail_sealed(&data, left.take(), rounds));
        check_invariants(&data, &daemon.url, &ops, &acked, rounds);
        let url = daemon.url.clone();
        let seed = rng.next();
        let kill_after = Duration::from_millis(100 + rng.below(900));
        let (tx, rx) = std::sync::mpsc::channel::<(String, Option<Vec<u8>>)>();
        std::thread::scope(|s| {
            for w in 0..3u64 {
                let (url, ops, tx) = (&url, &ops, tx.clone());
                s.spawn(move || workload(url, ops, seed ^ w, w, &tx));
            }
            drop(tx);
            std::thread::sleep(kill_after);
            daemon.signal("-9");
        });
        // What the crash left unsealed, for the next start to report and seal.
        let options = gantry::audit::VerifyOptions {
            sealed_end: false,
            ..Default::default()
        };
        left = Some(gantry::audit::verify_with(&data.join("audit.log"), &options).unwrap());
        for (name, body) in rx {
            match body {
                Some(b) => acked.datasets.push((name, b)),
                None => acked.jobs.push(name),
            }
        }
    }
    let daemon = Daemon::start(&data, &shared_cache());
    sealed_tails += u32::from(check_tail_sealed(&data, left.take(), rounds + 1));
    check_invariants(&data, &daemon.url, &ops, &acked, rounds + 1);
    assert!(sealed_tails > 0, "no kill ever left a tail to seal");
    assert!(
        acked.datasets.len() + acked.jobs.len() >= 10,
        "too little was acknowledged to prove anything: {} uploads, {} jobs",
        acked.datasets.len(),
        acked.jobs.len()
    );
}

/// One client's writes until the daemon dies: uploads (worker 0 re-uploads one content under new
/// names), submissions, and (worker 2) a key rotation; each acknowledged write is sent on `tx`.
fn workload(
    url: &str,
    token: &str,
    seed: u64,
    worker: u64,
    tx: &std::sync::mpsc::Sender<(String, Option<Vec<u8>>)>,
) {
    let mut rng = Rng(seed | 1);
    let shared = bytes(200_000, 42);
    for i in 0..200 {
        let tag = format!("w{worker}-{:x}-{i}", seed & 0xffff_ffff);
        let done = match (worker, i % 3) {
            (2, 0) if i == 3 => {
                let (s, _) = request_or_dead(&format!("{url}/v1/keys/rotate"), token);
                s.map(|_| ())
            }
            (_, 0) | (0, _) => {
                let body = if worker == 0 {
                    shared.clone()
                } else {
                    bytes(1000 + rng.below(3 << 20) as usize, rng.next())
                };
                let (s, _) = put_raw(
                    &format!("{url}/v1/datasets/{tag}?tenant=vision&classification=public"),
                    token,
                    &body,
                );
                match s {
                    201 => {
                        let _ = tx.send((tag, Some(body)));
                        Some(())
                    }
                    0 => None,
                    other => panic!("upload {tag}: {other}"),
                }
            }
            _ => {
                let body = json!({"id": tag, "tenant": "vision", "gpus": 1}).to_string();
                match submit_or_dead(&format!("{url}/v1/jobs"), token, &body) {
                    Some(201) => {
                        let _ = tx.send((tag, None));
                        Some(())
                    }
                    Some(other) => panic!("submit {tag}: {other}"),
                    None => None,
                }
            }
        };
        if done.is_none() {
            return; // the daemon is gone
        }
    }
}

/// A POST without a body: `(Some(status), body)`, or `None` when the daemon is gone.
fn request_or_dead(url: &str, token: &str) -> (Option<u16>, Value) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    match agent
        .post(url)
        .header("Authorization", &format!("Bearer {token}"))
        .send_empty()
    {
        Ok(r) => (Some(r.status().as_u16()), Value::Null),
        Err(_) => (None, Value::Null),
    }
}

fn submit_or_dead(url: &str, token: &str, body: &str) -> Option<u16> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    agent
        .post(url)
        .header("Authorization", &format!("Bearer {token}"))
        .header("content-type", "application/json")
        .send(body.as_bytes())
        .ok()
        .map(|r| r.status().as_u16())
}

/// After a restart on what a kill left (`left`: the log as the crash left it): the log verifies,
/// and if the crash left entries unsealed or a partial line, the daemon
/// recorded sealing exactly those. Returns whether there was a tail to seal.
fn check_tail_sealed(data: &Path, left: Option<gantry::audit::VerifyReport>, round: u32) -> bool {
    // The log verifies as far as it goes (the scheduler may already have decided placements
    // since the start sealed it: the API's verify, which seals first, follows).
    let options = gantry::audit::VerifyOptions {
        sealed_end: false,
        ..Default::default()
    };
    gantry::audit::verify_with(&data.join("audit.log"), &options)
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
    let Some(left) = left else {
        return false;
    };
    if left.unsigned_tail == 0 && left.torn_bytes == 0 {
        return false;
    }
    let lines = log_lines(data);
    let marker = lines
        .iter()
        .skip(left.entries as usize)
        .find(|l| l.contains("\"kind\":\"audit.tail_sealed\""))
        .unwrap_or_else(|| panic!("round {round}: the crashed tail was not reported"));
    let marker: Value = serde_json::from_str(marker).unwrap();
    assert_eq!(
        (
            marker["record"]["entries"].as_u64(),
            marker["record"]["torn_bytes"].as_u64()
        ),
        (Some(left.unsigned_tail), Some(left.torn_bytes)),
        "round {round}: {marker}"
    );
    true
}

fn check_invariants(data: &Path, url: &str, token: &str, acked: &Acknowledged, round: u32) {
    for (name, body) in &acked.datasets {
        let (s, got) = get_raw(&format!("{url}/v1/datasets/{name}/content"), token);
        assert!(
            s == 200 && got == *body,
            "round {round}: dataset {name}: {s}"
        );
    }
    let (s, v) = request(&format!("{url}/v1/jobs"), "GET", Some(token), None);
    assert_eq!(s, 200, "{v}");
    let listed: std::collections::HashSet<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    for id in &acked.jobs {
        assert!(listed.contains(id.as_str()), "round {round}: job {id} lost");
    }
    must(run(data, &["store", "verify"]));
    let tmp = std::fs::read_dir(data.join("objects/tmp")).unwrap().count();
    assert_eq!(tmp, 0, "round {round}: partial uploads left");
    // The log as the restarted daemon sealed it (the reads above were decided and recorded
    // since: verified up to the daemon's own seal).
    let (s, v) = request(&format!("{url}/v1/audit/verify"), "GET", Some(token), None);
    assert_eq!(s, 200, "round {round}: {v}");
}
