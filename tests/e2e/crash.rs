//! The reliability suite's crash consistency: the real daemon killed (`kill -9`) at seeded
//! random points while clients write, many times, bounded in time; after every restart the
//! invariants are checked.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::daemon::{Daemon, cancel, request, train_toml};
use crate::durability::{Rng, bytes, get_raw, log_lines, must, put_raw, run};
use crate::reliability::check_holdings;
use crate::support::{add_user, hostile, init_data_dir, plugin_key, shared_cache, sign_plugin};

/// What the crash suite checks after every restart.
#[derive(Default)]
struct Acknowledged {
    datasets: Vec<(String, Vec<u8>)>,
    jobs: Vec<String>,
    /// Training jobs (also in `jobs`): they checkpoint and resume across the kills.
    training: Vec<String>,
    /// The sha256 of the plugin's component, once an upload of it was acknowledged.
    plugin: Option<String>,
}

/// An acknowledged write, as a workload reports it.
enum Ack {
    Dataset(String, Vec<u8>),
    Job(String),
    Training(String),
    Plugin,
}

/// The reliability suite's crash consistency: the real daemon killed (`kill -9`) at seeded
/// random points during uploads (one content under several names among them), job submissions,
/// training jobs that checkpoint, plugin uploads and a key rotation, many times (bounded to
/// about a minute); after every restart every acknowledged upload reads back whole, every
/// accepted job is there, the last acknowledged plugin is kept, no GPU is held by two jobs,
/// `store verify` and `audit verify` are clean (the crash's tail reported and sealed), and no
/// temporary is left; at the end every training job ends (resumed from its checkpoints, or
/// failed for the crashes it saw) and no job is left holding a GPU.
#[test]
fn kill_9_at_random_points_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let cache = shared_cache();
    let data = init_data_dir(dir.path());
    let ops = add_user(&data, "ops", "admin,writer", "vision", "secret");
    let (key, public) = plugin_key(dir.path(), &cache);
    let plugin = hostile(&dir.path().join("p"), "ok", "");
    sign_plugin(&plugin, &key, &cache);
    let plugin_sha = {
        let m = gantry::plugin::Manifest::load(&plugin).unwrap();
        let wasm = std::fs::read(m.wasm_path(&plugin)).unwrap();
        data_encoding::HEXLOWER.encode(ring::digest::digest(&ring::digest::SHA256, &wasm).as_ref())
    };
    let plugin = upload_body(&plugin).to_string();
    let start = |data: &Path| Daemon::start_with(data, &cache, &["--trust", &public]);
    let mut rng = Rng(0xc0ffee);
    let mut acked = Acknowledged::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut rounds, mut sealed_tails) = (0, 0);
    let mut left = None;
    // The temporaries each kill left, which the next start must have swept.
    let mut left_tmp = Vec::new();
    while rounds < 10 && (rounds < 3 || Instant::now() < deadline) {
        rounds += 1;
        let mut daemon = start(&data);
        sealed_tails += u32::from(check_tail_sealed(&data, left.take(), rounds));
        check_invariants(&data, &daemon.url, &ops, &acked, rounds);
        check_swept(&data, &std::mem::take(&mut left_tmp), rounds);
        let url = daemon.url.clone();
        let seed = rng.next_u64();
        let kill_after = Duration::from_millis(100 + u64::from(rng.below(900)));
        let (tx, rx) = std::sync::mpsc::channel::<Ack>();
        std::thread::scope(|s| {
            for w in 0..3u64 {
                let (url, ops, tx, plugin) = (&url, &ops, tx.clone(), &plugin);
                s.spawn(move || workload(url, ops, seed ^ w, w, plugin, &tx));
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
        left_tmp = temporaries(&data);
        for ack in rx {
            match ack {
                Ack::Dataset(name, b) => acked.datasets.push((name, b)),
                Ack::Job(id) => acked.jobs.push(id),
                Ack::Training(id) => {
                    acked.jobs.push(id.clone());
                    acked.training.push(id);
                }
                Ack::Plugin => acked.plugin = Some(plugin_sha.clone()),
            }
        }
    }
    let daemon = start(&data);
    sealed_tails += u32::from(check_tail_sealed(&data, left.take(), rounds + 1));
    check_invariants(&data, &daemon.url, &ops, &acked, rounds + 1);
    check_swept(&data, &left_tmp, rounds + 1);
    assert!(sealed_tails > 0, "no kill ever left a tail to seal");
    assert!(
        acked.datasets.len() + acked.jobs.len() >= 10 && !acked.training.is_empty(),
        "too little was acknowledged to prove anything: {} uploads, {} jobs, {} training",
        acked.datasets.len(),
        acked.jobs.len(),
        acked.training.len()
    );
    every_job_ends(&daemon.url, &ops, &acked);
}

/// After the last restart: every training job ends by itself (`succeeded`, resumed from its
/// checkpoints, or `failed` because the daemon went down under it too often), every other job
/// (those whose submission a kill cut off before the answer among them) is cancelled, and then
/// no job holds a GPU.
fn every_job_ends(url: &str, token: &str, acked: &Acknowledged) {
    let (s, all) = request(&format!("{url}/v1/jobs"), "GET", Some(token), None);
    assert_eq!(s, 200, "{all}");
    for job in all.as_array().unwrap() {
        let id = job["id"].as_str().unwrap();
        if acked.training.iter().any(|t| t == id) {
            continue;
        }
        let (s, v) = cancel(url, token, id);
        assert!([200, 202, 409].contains(&s), "cancel {id}: {s} {v}");
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    for id in &acked.training {
        let job = loop {
            let (s, v) = request(&format!("{url}/v1/jobs/{id}"), "GET", Some(token), None);
            assert_eq!(s, 200, "{v}");
            if ["succeeded", "failed", "cancelled"].contains(&v["state"].as_str().unwrap()) {
                break v;
            }
            assert!(
                Instant::now() < deadline,
                "training job {id} never ended: {v}"
            );
            std::thread::sleep(Duration::from_millis(300));
        };
        let reason = job["reason"].as_str().unwrap_or_default();
        assert!(
            job["state"] == "succeeded" || reason.contains("went down"),
            "training job {id} ended otherwise than by finishing or by the crashes: {job}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, gpus) = request(&format!("{url}/v1/gpus"), "GET", Some(token), None);
        if gpus["busy"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "GPUs still held after every job ended: {gpus}\n{}",
            request(&format!("{url}/v1/jobs"), "GET", Some(token), None).1
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    check_holdings(url, token, true);
}

/// The JSON body of `PUT /v1/plugins/{name}` for the signed plugin whose manifest is `manifest`.
fn upload_body(manifest: &Path) -> Value {
    let text = std::fs::read_to_string(manifest).unwrap();
    let m = gantry::plugin::Manifest::load(manifest).unwrap();
    let wasm = std::fs::read(m.wasm_path(manifest)).unwrap();
    let sig: Value =
        serde_json::from_slice(&std::fs::read(manifest.with_file_name("plugin.sig")).unwrap())
            .unwrap();
    json!({"manifest": text, "wasm": data_encoding::BASE64.encode(&wasm), "signature": sig})
}

/// One client's writes until the daemon dies: uploads (worker 0 re-uploads one content under new
/// names), submissions (worker 1: a training job among them), and (worker 2) a plugin upload and
/// a key rotation; each acknowledged write is sent on `tx`.
fn workload(
    url: &str,
    token: &str,
    seed: u64,
    worker: u64,
    plugin: &str,
    tx: &std::sync::mpsc::Sender<Ack>,
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
            (2, 1) if i == 1 => {
                match send_or_dead(
                    &format!("{url}/v1/plugins/hostile-ok"),
                    "PUT",
                    token,
                    plugin,
                ) {
                    Some((200 | 201, _)) => {
                        let _ = tx.send(Ack::Plugin);
                        Some(())
                    }
                    Some((other, v)) => panic!("plugin upload: {other} {v}"),
                    None => None,
                }
            }
            (_, 0) | (0, _) => {
                let body = if worker == 0 {
                    shared.clone()
                } else {
                    bytes(1000 + rng.below(3 << 20) as usize, rng.next_u64())
                };
                let (s, _) = put_raw(
                    &format!("{url}/v1/datasets/{tag}?tenant=vision&classification=public"),
                    token,
                    &body,
                );
                match s {
                    201 => {
                        let _ = tx.send(Ack::Dataset(tag, body));
                        Some(())
                    }
                    0 => None,
                    other => panic!("upload {tag}: {other}"),
                }
            }
            _ => {
                // Worker 1's first submission of a round trains (long enough to checkpoint).
                let train = worker == 1 && i == 1;
                let mut body = json!({"id": tag, "tenant": "vision", "gpus": 1});
                if train {
                    body["train"] = train_toml(12).into();
                }
                match send_or_dead(&format!("{url}/v1/jobs"), "POST", token, &body.to_string()) {
                    Some((201, _)) => {
                        let _ = tx.send(if train {
                            Ack::Training(tag)
                        } else {
                            Ack::Job(tag)
                        });
                        Some(())
                    }
                    Some((other, v)) => panic!("submit {tag}: {other} {v}"),
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

/// A JSON request: `Some((status, body))`, or `None` when the daemon is gone.
fn send_or_dead(url: &str, method: &str, token: &str, body: &str) -> Option<(u16, Value)> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("Authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body.as_bytes().to_vec())
        .unwrap();
    let mut response = agent.run(request).ok()?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
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
    check_holdings(url, token, false);
    if let Some(sha) = &acked.plugin {
        let (s, v) = request(&format!("{url}/v1/plugins"), "GET", Some(token), None);
        assert_eq!(s, 200, "{v}");
        let kept = v["uploaded"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "hostile-ok");
        assert_eq!(
            kept.map(|p| &p["object"]),
            Some(&Value::from(sha.as_str())),
            "round {round}: the acknowledged plugin upload is not what is kept: {v}"
        );
    }
    must(run(data, &["store", "verify"]));
    // The log as the restarted daemon sealed it (the reads above were decided and recorded
    // since: verified up to the daemon's own seal).
    let (s, v) = request(&format!("{url}/v1/audit/verify"), "GET", Some(token), None);
    assert_eq!(s, 200, "round {round}: {v}");
}

/// The names in the store's temporary directory now.
fn temporaries(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("objects/tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// None of the temporaries a kill left (`left`) is there after the restart. (Others may be:
/// writes of the restarted daemon under way, a resumed training job's checkpoint say.)
fn check_swept(data: &Path, left: &[String], round: u32) {
    let now = temporaries(data);
    let kept: Vec<&String> = left.iter().filter(|t| now.contains(t)).collect();
    assert!(
        kept.is_empty(),
        "round {round}: partial writes left by the kill: {kept:?}"
    );
}
