//! `gantry up` as a real process on loopback: tokens, policy decisions, bad requests, tenants'
//! isolation, scheduling, `kill -9` and restart without losing a job, and a verified audit log.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry::training::BackendChoice;
use gantry::training::config::{Synthetic, TrainData, TrainToml};
use gantry_daemon::jobstore::JobStore;
use serde_json::{Value, json};

use crate::support::{
    add_user, build_policy, gantry, gantry_as, init_data_dir, owner_only, rejected_entries,
    rejected_tallies, send_raw, shared_cache, strict_policy, text,
};

pub(crate) struct Daemon {
    child: Child,
    pub(crate) url: String,
}

impl Daemon {
    pub(crate) fn start(data: &Path, cache: &Path) -> Daemon {
        Self::start_with(data, cache, &[])
    }

    pub(crate) fn start_with(data: &Path, cache: &Path, extra: &[&str]) -> Daemon {
        Self::start_under(&[], data, cache, extra)
    }

    /// Starts `gantry up` through `wrapper` (a command such as `prlimit --nofile=...`, then
    /// `--`), when given.
    pub(crate) fn start_under(
        wrapper: &[&str],
        data: &Path,
        cache: &Path,
        extra: &[&str],
    ) -> Daemon {
        Self::start_on("127.0.0.1:0", wrapper, data, cache, extra)
    }

    /// Starts `gantry up` listening on `listen` (a daemon started again where the last one
    /// was, say).
    pub(crate) fn start_on(
        listen: &str,
        wrapper: &[&str],
        data: &Path,
        cache: &Path,
        extra: &[&str],
    ) -> Daemon {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_gantry"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_gantry")),
        };
        let mut child = command
            .args(["up", "--listen", listen, "--data-dir"])
            .arg(data)
            .args(extra)
            .env("GANTRY_CACHE_DIR", cache)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting gantry up");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Daemon {
            url: format!("http://{addr}"),
            child,
        }
    }

    /// The daemon's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn signal(&mut self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (status, JSON body) of a request.
pub(crate) fn request(
    url: &str,
    method: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let response = match method {
        "PUT" => {
            let mut r = agent.put(url).header("content-type", "application/json");
            if let Some(t) = token {
                r = r.header("Authorization", &format!("Bearer {t}"));
            }
            r.send(body.unwrap_or("").as_bytes())
        }
        "POST" => {
            let mut r = agent.post(url).header("content-type", "application/json");
            if let Some(t) = token {
                r = r.header("Authorization", &format!("Bearer {t}"));
            }
            r.send(body.unwrap_or("").as_bytes())
        }
        "DELETE" => {
            let mut r = agent.delete(url);
            if let Some(t) = token {
                r = r.header("Authorization", &format!("Bearer {t}"));
            }
            r.call()
        }
        _ => {
            let mut r = agent.get(url);
            if let Some(t) = token {
                r = r.header("Authorization", &format!("Bearer {t}"));
            }
            r.call()
        }
    }
    .expect("the daemon answers");
    let status = response.status().as_u16();
    let body = response.into_body().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// `POST /v1/jobs` of `body` as `token`: (status, JSON body).
pub(crate) fn submit(url: &str, token: &str, body: &Value) -> (u16, Value) {
    request(
        &format!("{url}/v1/jobs"),
        "POST",
        Some(token),
        Some(&body.to_string()),
    )
}

/// `POST /v1/jobs/{job}/cancel` as `token`: (status, JSON body).
pub(crate) fn cancel(url: &str, token: &str, job: &str) -> (u16, Value) {
    request(
        &format!("{url}/v1/jobs/{job}/cancel"),
        "POST",
        Some(token),
        None,
    )
}

pub(crate) fn wait_for_state(url: &str, token: &str, job: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = request(&format!("{url}/v1/jobs/{job}"), "GET", Some(token), None);
        if v["state"] == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "job {job} never became {want}: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until job `job` has a checkpoint of at least `step` steps; returns its step.
fn wait_for_checkpoint(db: &gantry_daemon::db::Db, job: &str, step: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((at, _)) = db.latest_checkpoint(job).unwrap()
            && at >= step
        {
            return at;
        }
        assert!(Instant::now() < deadline, "no checkpoint of {job} yet");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls the job at `url` until it succeeded or failed; returns it.
pub(crate) fn wait_until_over(url: &str, token: &str, seconds: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let (_, v) = request(url, "GET", Some(token), None);
        if v["state"] == "succeeded" || v["state"] == "failed" {
            return v;
        }
        assert!(Instant::now() < deadline, "the job did not finish: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_daemon_authenticates_decides_isolates_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let cache = shared_cache();
    let data = init_data_dir(dir.path());
    let token = |name: &str, tenant: &str| add_user(&data, name, "researcher", tenant, "public");
    let (ada, lee) = (token("ada", "vision"), token("lee", "language"));

    let mut daemon = Daemon::start(&data, &cache);
    let url = daemon.url.clone();
    let jobs = format!("{url}/v1/jobs");
    assert_eq!(
        request(&format!("{url}/v1/health"), "GET", None, None).0,
        200
    );

    // Authentication.
    assert_eq!(request(&jobs, "GET", None, None).0, 401);
    assert_eq!(request(&jobs, "GET", Some("gantry_0000_nope"), None).0, 401);
    let mut forged = ada.clone();
    forged.pop();
    assert_eq!(request(&jobs, "GET", Some(&forged), None).0, 401);

    // Allowed, and refused by policy with the reason.
    let (s, v) = request(
        &jobs,
        "POST",
        Some(&ada),
        Some(r#"{"id": "v1", "tenant": "vision", "gpus": 8}"#),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["state"], "pending");
    let (s, v) = request(
        &jobs,
        "POST",
        Some(&ada),
        Some(r#"{"tenant": "language", "gpus": 8}"#),
    );
    assert_eq!(s, 403, "{v}");
    assert!(
        v["reasons"][0]
            .as_str()
            .unwrap()
            .contains("not a member of tenant language"),
        "{v}"
    );

    // Bad requests: nothing stored.
    for (body, want) in [
        ("{not json", 400),
        (r#"{"tenant": "vision"}"#, 400),
        (r#"{"tenant": "vision", "gpus": 1, "colour": "red"}"#, 400),
        (
            r#"{"id": "../../etc/passwd", "tenant": "vision", "gpus": 1}"#,
            400,
        ),
        (r#"{"id": "v1", "tenant": "vision", "gpus": 1}"#, 409),
        (r#"{"tenant": "nowhere", "gpus": 1}"#, 400),
    ] {
        let (s, v) = request(&jobs, "POST", Some(&ada), Some(body));
        assert_eq!(s, want, "{body}: {v}");
        assert!(v["error"].is_string(), "{body}: {v}");
    }
    let huge = format!(
        r#"{{"tenant": "vision", "gpus": 1, "id": "{}"}}"#,
        "x".repeat(100_000)
    );
    assert_eq!(request(&jobs, "POST", Some(&ada), Some(&huge)).0, 413);
    let (_, all) = request(&jobs, "GET", Some(&ada), None);
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");

    // Tenants see only their own jobs; another tenant's job is a 404, not a 403.
    let (_, theirs) = request(&jobs, "GET", Some(&lee), None);
    assert_eq!(theirs, json!([]));
    assert_eq!(
        request(&format!("{jobs}/v1"), "GET", Some(&lee), None).0,
        404
    );
    assert_eq!(
        request(&format!("{jobs}/v1/cancel"), "POST", Some(&lee), None).0,
        404
    );

    // The scheduler places it; a second job too.
    wait_for_state(&url, &ada, "v1", "scheduled");
    let (s, _) = request(
        &jobs,
        "POST",
        Some(&lee),
        Some(r#"{"id": "l1", "tenant": "language", "gpus": 4}"#),
    );
    assert_eq!(s, 201);
    // Everyone sees the GPUs busy; only its tenant sees which job holds them.
    wait_for_state(&url, &lee, "l1", "scheduled");
    let holders = |token: &str| -> (usize, Vec<Value>) {
        let (_, v) = request(&format!("{url}/v1/gpus"), "GET", Some(token), None);
        let gpus = v["gpus"].as_array().unwrap().clone();
        let busy = gpus.iter().filter(|g| g["busy"] == true).count();
        (busy, gpus.into_iter().map(|g| g["job"].clone()).collect())
    };
    let (busy_lee, seen_lee) = holders(&lee);
    let (busy_ada, seen_ada) = holders(&ada);
    assert_eq!(busy_lee, busy_ada);
    assert!(seen_lee.contains(&json!("l1")));
    assert!(!seen_ada.contains(&json!("l1")), "another tenant's job id");

    // Prometheus metrics, no token needed: counts only.
    let agent = ureq::Agent::new_with_defaults();
    let metrics = agent
        .get(&format!("{url}/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    let value = |line: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no `{line}` in\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(value("gantry_policy_decisions_total{allow=\"false\"}") >= 1.0);
    assert!(value("gantry_policy_decisions_total{allow=\"true\"}") >= 2.0);
    assert!(value("gantry_http_requests_total{class=\"4xx\"}") >= 10.0);
    assert!(value("gantry_scheduling_cycles_total") >= 1.0);
    assert!(value("gantry_plugin_calls_total{plugin=\"binpack\"}") >= 1.0);
    assert!(value("gantry_jobs{state=\"scheduled\"}") >= 1.0);

    // kill -9, restart: every accepted job is still there and placed again.
    daemon.signal("-9");
    let mut daemon = Daemon::start(&data, &cache);
    let url = daemon.url.clone();
    wait_for_state(&url, &ada, "v1", "scheduled");
    wait_for_state(&url, &lee, "l1", "scheduled");
    let (s, v) = cancel(&url, &lee, "l1");
    assert_eq!((s, v["state"].as_str()), (200, Some("cancelled")), "{v}");
    // Refusals no policy decided are counted and go into the log in aggregate (once per
    // interval, and at a clean stop): a missing token, a malformed and an oversized body,
    // another tenant's job.
    let jobs = format!("{url}/v1/jobs");
    assert_eq!(request(&jobs, "GET", None, None).0, 401);
    assert_eq!(request(&jobs, "POST", Some(&ada), Some("{not json")).0, 400);
    assert_eq!(request(&jobs, "POST", Some(&ada), Some(&huge)).0, 413);
    assert_eq!(
        request(&format!("{jobs}/v1"), "GET", Some(&lee), None).0,
        404
    );
    daemon.signal("-TERM");

    // Every decision was recorded; the log verifies (the torn tail of the killed run cut).
    let key = gantry::keys::load(&data.join("keys/host.pk8")).unwrap();
    let report = gantry::audit::verify(
        &data.join("audit.log"),
        Some(&gantry::keys::public_hex(&key)),
    )
    .unwrap();
    let text = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert!(text.contains("not a member of tenant language"));
    assert!(text.matches("\"job.submit\"").count() >= 3, "{report:?}");
    // So was every refused request that never reached the policy: bad tokens, bad bodies,
    // oversized ones, other tenants' jobs.
    let statuses: std::collections::BTreeSet<u64> = rejected_tallies(&rejected_entries(&text))
        .iter()
        .filter_map(|t| t["status"].as_u64())
        .collect();
    assert!(
        [400, 401, 404, 413].iter().all(|s| statuses.contains(s)),
        "{statuses:?}"
    );
    assert!(
        text.contains("a valid bearer token is required"),
        "the reason is recorded"
    );
}

/// A training job's `TRAIN.toml`: `epochs` over 960 spirals rows, a checkpoint every 100 steps.
pub(crate) fn train_toml(epochs: u32) -> String {
    TrainToml {
        seed: 5,
        epochs: epochs.into(),
        batch_size: 32,
        hidden: vec![32, 32],
        backend: Some(BackendChoice::Cpu),
        threads: Some(1),
        checkpoint_every_steps: Some(100),
        ..TrainToml::new(TrainData::Synthetic(Synthetic::Spirals {
            classes: 3,
            rows_per_class: 400,
            noise: 0.15,
        }))
    }
    .to_string()
}

/// Row `i` of [`blobs`]: its class, then two features around the class's centre.
fn blob_row(i: usize) -> String {
    format!("{},{}.{},{}.5", i % 3, 3 * (i % 3), i % 7, i % 5)
}

/// Uploads `rows` rows of three classes around three centres as confidential dataset
/// `blobs.csv` of tenant `vision` (the label first: a stored dataset has no header), as `token`;
/// returns a `TRAIN.toml` that trains on it for `epochs`.
fn blobs(url: &str, token: &str, rows: usize, epochs: u32) -> String {
    let csv: String = (0..rows).map(|i| blob_row(i) + "\n").collect();
    let dataset = format!("{url}/v1/datasets/blobs.csv?tenant=vision&classification=confidential");
    assert_eq!(put(&dataset, token, csv.as_bytes()).0, 201);
    format!(
        "epochs = {epochs}\nbatch_size = 16\n[data]\ndataset = \"blobs.csv\"\nlabel_column = 0\n\
         [model]\nhidden = [8]\nloss = \"softmax_cross_entropy\"\n\
         [optimizer]\nkind = \"adam\"\nlr = 0.02\n[devices]\nbackend = \"cpu\"\nthreads = 1\n"
    )
}

/// Under a key file every job and dataset row is written with its MAC and checked where read:
/// a daemon uploads a dataset, trains on it, lists both, and starts again over them (what the
/// store tests check row by row, here through the API and a restart).
#[test]
fn a_daemon_under_a_key_file_trains_on_a_stored_dataset_and_starts_again() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cache = shared_cache();
    let data = init_data_dir(dir.path());
    let wendy = add_user(
        &data,
        "wendy",
        "researcher,writer",
        "vision",
        "confidential",
    );
    let kek = dir.path().join("kek");
    std::fs::write(&kek, "3d".repeat(32)).unwrap();
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    let sealed = [("GANTRY_KEY_FILE", kek.as_path())];
    let d = data.to_str().unwrap();
    let seal = crate::support::gantry_with(&["key", "seal", "--data-dir", d], &cache, &sealed);
    assert!(seal.status.success(), "{}", text(&seal).1);
    let under = format!("GANTRY_KEY_FILE={}", kek.display());
    let start = || Daemon::start_under(&["env", &under], &data, &cache, &[]);
    let daemon = start();
    let url = daemon.url.clone();
    let train = blobs(&url, &wendy, 120, 1);
    let body = json!({"id": "k1", "tenant": "vision", "gpus": 1, "train": train});
    let (status, v) = submit(&url, &wendy, &body);
    assert_eq!(status, 201, "{v}");
    let job = wait_until_over(&format!("{url}/v1/jobs/k1"), &wendy, 120);
    assert_eq!(job["state"], "succeeded", "{job}");
    let listed = |url: &str, what: &str| {
        let (status, v) = request(&format!("{url}/v1/{what}"), "GET", Some(&wendy), None);
        assert_eq!(status, 200, "{v}");
        v.to_string()
    };
    assert!(listed(&url, "jobs").contains("k1"));
    assert!(listed(&url, "datasets").contains("blobs.csv"));
    drop(daemon);
    let check = crate::support::gantry_with(&["db", "check", "--data-dir", d], &cache, &sealed);
    assert!(check.status.success(), "{}", text(&check).1);
    let again = start();
    assert!(listed(&again.url, "jobs").contains("k1"));
    assert!(listed(&again.url, "datasets").contains("blobs.csv"));
}

#[test]
fn a_training_job_checkpoints_into_the_store_and_resumes_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let cache = shared_cache();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher", "vision", "public");

    let mut daemon = Daemon::start(&data, &cache);
    let jobs = format!("{}/v1/jobs", daemon.url);
    // A malformed config is refused naming its line; nothing stored.
    let bad = json!({"id": "t0", "tenant": "vision", "gpus": 1, "train": train_toml(3).replace("epochs = 3", "epochs = \"x\"")});
    let (s, v) = request(&jobs, "POST", Some(&ada), Some(&bad.to_string()));
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("job t0: train:2:"),
        "{v}"
    );

    let body = json!({"id": "t1", "tenant": "vision", "gpus": 1, "train": train_toml(150)});
    let (s, v) = request(&jobs, "POST", Some(&ada), Some(&body.to_string()));
    assert_eq!(s, 201, "{v}");
    let db = gantry_daemon::db::Db::open(&gantry_daemon::db_path(&data)).unwrap();
    let at = wait_for_checkpoint(&db, "vision/t1", 200);
    // Checkpoints are encrypted objects of the store, and authenticate. A job keeps one: the
    // one read may be replaced (its object deleted) before it is fetched, so the newest is
    // read again then (a race of this test, seen on a loaded machine).
    let store = gantry::storage::Store::open(&data).unwrap();
    let bytes = (0..100)
        .find_map(|_| {
            let (_, object) = db.latest_checkpoint("vision/t1").unwrap().unwrap();
            let got = store.get(&object).ok();
            if got.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            got
        })
        .expect("a checkpoint stays in the store long enough to be read");
    assert!(gantry::training::checkpoint::from_bytes(&bytes, Path::new("c")).is_ok());
    // Live metrics while it runs: its step, loss and throughput, and on /metrics.
    let (s, m) = request(&format!("{jobs}/t1/metrics"), "GET", Some(&ada), None);
    assert_eq!((s, m["state"].as_str()), (200, Some("running")), "{m}");
    assert!(m["step"].as_u64().unwrap() >= u64::from(at), "{m}");
    assert_eq!(m["total_steps"], 150 * 30, "{m}");
    assert!(m["loss"].as_f64().unwrap().is_finite(), "{m}");
    assert!(m["samples_per_s"].as_f64().unwrap() > 0.0, "{m}");
    assert!(!m["points"].as_array().unwrap().is_empty(), "{m}");
    let prom = ureq::get(&format!("{}/metrics", daemon.url))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    let rate = prom
        .lines()
        .find_map(|l| l.strip_prefix("gantry_train_samples_per_second "))
        .unwrap_or_else(|| panic!("no training rate in\n{prom}"));
    assert!(rate.parse::<f64>().unwrap() > 0.0, "{prom}");
    assert!(
        !prom.contains("t1"),
        "job ids stay behind authentication: {prom}"
    );
    daemon.signal("-9");

    // Restart: the job resumes from a stored checkpoint (not from step 0) and finishes.
    let mut daemon = Daemon::start(&data, &cache);
    let url = daemon.url.clone();
    let job = wait_until_over(&format!("{url}/v1/jobs/t1"), &ada, 180);
    assert_eq!(job["state"], "succeeded", "{job}");
    let resumed = job["result"]["resumed_at_step"].as_u64().unwrap();
    assert!(
        resumed >= u64::from(at),
        "resumed at {resumed}, a checkpoint existed at {at}"
    );
    assert_eq!(job["result"]["steps"], 150 * 30);
    assert!(
        job["result"]["test"]["accuracy"].as_f64().unwrap() > 0.9,
        "{job}"
    );
    // Its loss curve spans the whole run, the steps before the kill included, and falls.
    let metrics = format!("{url}/v1/jobs/t1/metrics");
    let (s, m) = request(&metrics, "GET", Some(&ada), None);
    assert_eq!((s, m["state"].as_str()), (200, Some("succeeded")), "{m}");
    assert_eq!(
        (m["step"].as_u64(), m["progress"].as_f64()),
        (Some(4500), Some(1.0))
    );
    let points = m["points"].as_array().unwrap();
    let steps: Vec<u64> = points.iter().map(|p| p["step"].as_u64().unwrap()).collect();
    assert!(steps[0] <= m["stride"].as_u64().unwrap(), "{steps:?}");
    assert_eq!(*steps.last().unwrap(), 4500);
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    let loss = |p: &Value| p["loss"].as_f64().unwrap();
    assert!(loss(points.last().unwrap()) < loss(&points[0]), "{m}");
    // The CLI shows the same, and the log.
    let client = ["--url", url.as_str()];
    let out = gantry_as(&ada, &[&["metrics", "t1"][..], &client].concat(), &cache);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("t1 succeeded: step 4500 of 4500 (100 %)"),
        "{stdout}"
    );
    assert!(stdout.contains("test accuracy"), "{stdout}");
    let out = gantry_as(&ada, &[&["logs", "t1"][..], &client].concat(), &cache);
    assert!(
        text(&out).0.contains("resuming from the checkpoint"),
        "{out:?}"
    );

    // Its log tells the story, kill and resume included.
    let (s, v) = request(&format!("{url}/v1/jobs/t1/logs"), "GET", Some(&ada), None);
    assert_eq!(s, 200, "{v}");
    let lines: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    let has = |p: &str| lines.iter().any(|l| l.starts_with(p));
    assert!(
        has("submitted by ada")
            && has("scheduled on 1 GPU(s)")
            && has("training on synthetic spirals"),
        "{lines:?}"
    );
    assert!(
        has("checkpoint at step 100")
            && has("resuming from the checkpoint at step")
            && has("succeeded after 4500 steps"),
        "{lines:?}"
    );
    // Over, it keeps one checkpoint, its model at its last step, and the store nothing else.
    let (step, object) = db.latest_checkpoint("vision/t1").unwrap().unwrap();
    assert_eq!(step, 4500);
    assert_eq!(
        store.list().unwrap(),
        [object],
        "its older checkpoints were let go"
    );

    // A running job stops when cancelled.
    let body = json!({"id": "t2", "tenant": "vision", "gpus": 1, "train": train_toml(1000)});
    assert_eq!(submit(&url, &ada, &body).0, 201);
    wait_for_state(&url, &ada, "t2", "running");
    let (s, v) = cancel(&url, &ada, "t2");
    assert_eq!((s, v["state"].as_str()), (202, Some("cancelling")), "{v}");
    wait_for_state(&url, &ada, "t2", "cancelled");
    daemon.signal("-TERM");
}

/// Training jobs kept no model: a job that ended let its last checkpoint go, and nothing
/// could download a succeeded job's weights. A succeeded job keeps its model (its checkpoint at
/// its last step) while it is kept, for members of its tenant cleared for the data it learned
/// from (`job.model`); `gantry model` writes it, checked, for `gantry eval` to score.
#[test]
fn a_succeeded_jobs_model_is_kept_for_members_cleared_for_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let wendy = add_user(
        &data,
        "wendy",
        "researcher,writer",
        "vision",
        "confidential",
    );
    let ivy = add_user(&data, "ivy", "researcher", "vision", "internal");
    let bob = add_user(&data, "bob", "researcher", "language", "secret");
    let cache = shared_cache();
    let mut daemon = Daemon::start_with(&data, &cache, &["--keep-models-per-tenant", "1"]);
    let url = daemon.url.clone();
    let train = blobs(&url, &wendy, 240, 3);
    let body = json!({"id": "m1", "tenant": "vision", "gpus": 1, "train": train});
    assert_eq!(submit(&url, &wendy, &body).0, 201);
    let job = wait_until_over(&format!("{url}/v1/jobs/m1"), &wendy, 120);
    assert_eq!(job["state"], "succeeded", "{job}");
    let steps = job["result"]["steps"].as_u64().unwrap();

    let model = dir.path().join("m1.ckpt");
    let get = |token: &str| {
        let args = [
            "model",
            "m1",
            "--out",
            model.to_str().unwrap(),
            "--url",
            &url,
        ];
        gantry_as(token, &args, &cache)
    };
    let out = get(&wendy);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(&format!("(step {steps},")), "{stdout}");
    // The model scores data of its kind.
    let eval_csv = dir.path().join("eval.csv");
    let rows: String = (0..30).map(|i| blob_row(i) + "\n").collect();
    std::fs::write(&eval_csv, format!("class,x,y\n{rows}")).unwrap();
    let args = ["eval", "--checkpoint", model.to_str().unwrap()];
    let args = [
        &args[..],
        &["--data", eval_csv.to_str().unwrap(), "--label", "class"],
    ]
    .concat();
    let out = gantry(&args, dir.path());
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("accuracy"), "{}", text(&out).0);

    // A member below the data's classification is refused, saying why; another tenant's user
    // does not see the job; neither gets a file.
    std::fs::remove_file(&model).unwrap();
    let (s, v) = request(&format!("{url}/v1/jobs/m1/model"), "GET", Some(&ivy), None);
    assert_eq!(s, 403, "{v}");
    let reasons = v["reasons"].to_string();
    assert!(reasons.contains("learned from confidential data"), "{v}");
    let out = get(&ivy);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("confidential"), "{}", text(&out).1);
    let (s, v) = request(&format!("{url}/v1/jobs/m1/model"), "GET", Some(&bob), None);
    assert_eq!(s, 404, "{v}");
    assert!(!model.exists(), "nothing written for a refused download");

    // A cancelled job has no model, nor a command job.
    let long = json!({"id": "m2", "tenant": "vision", "gpus": 1, "train": train_toml(100000)});
    assert_eq!(submit(&url, &wendy, &long).0, 201);
    wait_for_state(&url, &wendy, "m2", "running");
    cancel(&url, &wendy, "m2");
    wait_for_state(&url, &wendy, "m2", "cancelled");
    let (s, v) = request(
        &format!("{url}/v1/jobs/m2/model"),
        "GET",
        Some(&wendy),
        None,
    );
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("is cancelled"), "{v}");

    // The tenant keeps one model (`--keep-models-per-tenant 1`): the next to succeed takes its
    // place, and the first's log says so.
    let body = json!({"id": "m3", "tenant": "vision", "gpus": 1, "train": train});
    assert_eq!(submit(&url, &wendy, &body).0, 201);
    let job = wait_until_over(&format!("{url}/v1/jobs/m3"), &wendy, 120);
    assert_eq!(job["state"], "succeeded", "{job}");
    let model_of = |id: &str| {
        let out = dir.path().join(format!("{id}.ckpt"));
        let args = ["model", id, "--out", out.to_str().unwrap(), "--url", &url];
        let out = gantry_as(&wendy, &args, &cache);
        (out.status.success(), text(&out).1)
    };
    crate::support::eventually("m1 lets its model go", || !model_of("m1").0);
    let (_, stderr) = model_of("m1");
    assert!(stderr.contains("keeps no model"), "{stderr}");
    assert!(model_of("m3").0);
    let log = crate::support::log_of(&url, &wendy, "m1");
    assert!(log.contains("its model was let go"), "{log}");
    daemon.signal("-TERM");
}

/// `PUT` with a raw body.
pub(crate) fn put(url: &str, token: &str, body: &[u8]) -> (u16, Value) {
    send_raw("PUT", url, token, body)
}

#[test]
fn datasets_are_stored_encrypted_and_guarded_by_clearance_and_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let user = |name: &str, roles: &str, tenant: &str, clearance: &str| {
        add_user(&data, name, roles, tenant, clearance)
    };
    let wendy = user("wendy", "researcher,writer", "vision", "confidential");
    let ada = user("ada", "researcher", "vision", "internal");
    let lee = user("lee", "researcher,writer", "language", "secret");
    let root = user("root", "admin", "vision", "secret");
    let daemon = Daemon::start(&data, &shared_cache());
    let base = format!("{}/v1/datasets", daemon.url);
    let csv = b"1,2,3\n4,5,6\n".repeat(1000);

    let (s, v) = put(
        &format!("{base}/pets.csv?tenant=vision&classification=internal"),
        &wendy,
        &csv,
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["bytes"], csv.len());
    // A one-byte upload to `path` as `token`: its status; or refused (403) for the reason `why`.
    let status = |path: &str, token: &str| put(&format!("{base}/{path}"), token, b"1").0;
    let refused_for = |path: &str, token: &str, why: &str| {
        let (s, v) = put(&format!("{base}/{path}"), token, b"1");
        assert_eq!(s, 403, "{v}");
        assert!(v["reasons"][0].as_str().unwrap().contains(why), "{v}");
    };
    let internal = "tenant=vision&classification=internal";
    let public = "tenant=vision&classification=public";
    // Writing needs the writer role; classification above clearance is refused; wrong tenant.
    refused_for(&format!("x.csv?{internal}"), &ada, "needs the writer role");
    refused_for(
        "y.csv?tenant=vision&classification=secret",
        &wendy,
        "above the clearance",
    );
    assert_eq!(status(&format!("z.csv?{public}"), &lee), 403);
    // Bad names and queries, duplicates, oversized uploads: 4xx, nothing stored.
    let objects = || {
        gantry::storage::Store::open(&data)
            .unwrap()
            .list()
            .unwrap()
            .len()
    };
    let stored = objects();
    assert_eq!(status(&format!("..%2Fescape?{public}"), &wendy), 400);
    assert_eq!(status(&format!(".hidden?{public}"), &wendy), 400);
    assert_eq!(status("q.csv?tenant=vision", &wendy), 400);
    assert_eq!(status(&format!("pets.csv?{internal}"), &wendy), 409);
    let huge = vec![b'7'; 65 << 20];
    let (s, v) = put(
        &format!("{base}/huge.bin?tenant=vision&classification=public"),
        &wendy,
        &huge,
    );
    assert!(
        s == 413 || (s == 0 && v.as_str().unwrap().contains("Broken pipe")),
        "{s} {v}"
    );
    let (_, listed) = request(&base, "GET", Some(&wendy), None);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(objects(), stored, "a refused upload left an object behind");
    // Found by a review: the listing gave every member the object's id, the SHA-256 of the
    // bytes, which confirms a guess of a dataset above one's clearance: only the uploader
    // sees it.
    let (_, seen) = request(&base, "GET", Some(&ada), None);
    assert_eq!(seen[0]["name"], "pets.csv", "{seen}");
    assert!(seen[0].get("object").is_none(), "{seen}");
    assert_eq!(seen[0]["bytes"], listed[0]["bytes"], "{seen}");

    // Reading: same tenant and enough clearance; another tenant sees nothing.
    let agent = ureq::Agent::new_with_defaults();
    let got = agent
        .get(&format!("{base}/pets.csv/content"))
        .header("Authorization", &format!("Bearer {ada}"))
        .call()
        .unwrap()
        .into_body()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap();
    assert!(got == csv);
    let (_, theirs) = request(&base, "GET", Some(&lee), None);
    assert_eq!(theirs, json!([]));
    assert_eq!(
        request(&format!("{base}/pets.csv/content"), "GET", Some(&lee), None).0,
        404
    );
    // At rest it is ciphertext.
    let store = gantry::storage::Store::open(&data).unwrap();
    let object = listed[0]["object"].as_str().unwrap();
    let raw = std::fs::read(data.join("objects").join(&object[..2]).join(object)).unwrap();
    assert!(!raw.windows(12).any(|w| w == b"1,2,3\n4,5,6\n"));
    assert!(store.get(object).unwrap() == csv);
    // Found by a review: an admin's upload to a tenant the cluster does not have (`a/b`, ``,
    // `../..`) was stored where no read reached it again, holding quota for ever.
    for tenant in ["a%2Fb", "", "..%2F..", "nobody"] {
        let (s, v) = put(
            &format!("{base}/r2?tenant={tenant}&classification=public"),
            &root,
            b"1",
        );
        assert_eq!(s, 400, "{tenant}: {v}");
        assert!(v["error"].as_str().unwrap().contains("tenant"), "{v}");
    }
}

#[test]
fn a_short_load_test_loses_nothing() {
    let out = gantry(
        &[
            "bench",
            "api",
            "--clients",
            "3",
            "--submits",
            "20",
            "--json",
        ],
        &shared_cache(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (v["errors"].as_u64(), v["lost_jobs"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    assert_eq!(v["submit"]["requests"], 60);
    assert!(v["submit"]["p99_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_failed_gpu_requeues_its_job_which_resumes_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let user = |name: &str, roles: &str| add_user(&data, name, roles, "vision", "public");
    let (ops, ada) = (user("ops", "admin"), user("ada", "researcher"));
    let daemon = Daemon::start(&data, &shared_cache());
    let url = daemon.url.clone();
    let body = json!({"id": "t3", "tenant": "vision", "gpus": 2, "train": train_toml(150)});
    assert_eq!(submit(&url, &ada, &body).0, 201);
    let db = gantry_daemon::db::Db::open(&gantry_daemon::db_path(&data)).unwrap();
    let at = wait_for_checkpoint(&db, "vision/t3", 100);
    let (_, job) = request(&format!("{url}/v1/jobs/t3"), "GET", Some(&ada), None);
    let bad = job["gpu_ids"][0].as_str().unwrap().to_string();

    // Only admins; unknown GPUs are 404.
    let mark = format!("{url}/v1/gpus/unhealthy");
    let which = json!({"gpu": bad}).to_string();
    assert_eq!(request(&mark, "POST", Some(&ada), Some(&which)).0, 403);
    assert_eq!(
        request(&mark, "POST", Some(&ops), Some(r#"{"gpu": "nope"}"#)).0,
        404
    );
    let (s, v) = request(&mark, "POST", Some(&ops), Some(&which));
    assert_eq!((s, v["requeued"].clone()), (200, json!(["t3"])), "{v}");
    let (_, gpus) = request(&format!("{url}/v1/gpus"), "GET", Some(&ada), None);
    let entry = gpus["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == bad.as_str())
        .unwrap();
    assert_eq!(entry["healthy"], false, "{entry}");
    let (_, nodes) = request(&format!("{url}/v1/nodes"), "GET", Some(&ada), None);
    let node = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == entry["node"])
        .unwrap();
    assert_eq!(
        node["healthy_gpus"].as_u64().unwrap() + 1,
        node["gpus"].as_u64().unwrap(),
        "{node}"
    );

    // It runs again on healthy GPUs, from its checkpoint, and finishes.
    let job = wait_until_over(&format!("{url}/v1/jobs/t3"), &ada, 180);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(
        !job["gpu_ids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == bad.as_str()),
        "{job}"
    );
    assert!(
        job["result"]["resumed_at_step"].as_u64().unwrap() >= u64::from(at),
        "{job}"
    );

    // Plugins: listed to anyone; swapping the scheduler is the policy's plugin.load (admins).
    let (s, v) = request(&format!("{url}/v1/plugins"), "GET", Some(&ada), None);
    assert_eq!(
        (s, v["scheduler"]["name"].as_str()),
        (200, Some("binpack")),
        "{v}"
    );
    assert_eq!(v["preprocessors"].as_array().unwrap().len(), 3, "{v}");
    let swap = format!("{url}/v1/plugins/scheduler");
    let (s, v) = request(&swap, "POST", Some(&ada), Some(r#"{"name": "topology"}"#));
    assert_eq!(s, 403, "{v}");
    assert!(
        v["reasons"][0].as_str().unwrap().contains("only admins"),
        "{v}"
    );
    assert_eq!(
        request(&swap, "POST", Some(&ops), Some(r#"{"name": "nope"}"#)).0,
        404
    );
    let (s, v) = request(&swap, "POST", Some(&ops), Some(r#"{"name": "topology"}"#));
    assert_eq!((s, v["name"].as_str()), (200, Some("topology")), "{v}");

    // The audit log verifies over the API, for those the policy lets read it.
    assert_eq!(
        request(&format!("{url}/v1/audit/verify"), "GET", Some(&ada), None).0,
        403
    );
    let (s, v) = request(&format!("{url}/v1/audit/verify"), "GET", Some(&ops), None);
    assert_eq!(s, 200, "{v}");
    assert!(v["entries"].as_u64().unwrap() >= 5, "{v}");
}

/// 900 spirals as CSV without a header, features scaled and shifted far from zero (so
/// standardising matters), the class id in column 1 of 3.
pub(crate) fn spirals_csv() -> String {
    let set = gantry_kernels::synthetic::spirals(3, 300, 0.15, 4);
    let mut csv = String::new();
    for r in 0..set.rows() {
        let (x, y) = (set.features[2 * r], set.features[2 * r + 1]);
        csv += &format!(
            "{},{},{}\n",
            1000.0 + 50.0 * x,
            set.targets[r],
            -300.0 + 20.0 * y
        );
    }
    csv
}

/// Trains on `spirals.csv` (class id in column 1) through `standardize`, on the CPU.
///
/// Adam at 0.005: at the default 0.01 this network sat at the edge of stability, and a change
/// of rounding alone (the CPU backend's own kernels for the 3-wide last layer) sent seed 2 to
/// 0.856 test accuracy while seeds 1 and 3-8 reached 0.978-1.0. At 0.005 seeds 1-8 reach
/// 0.978-1.0 with either rounding.
pub(crate) fn spirals_train(epochs: u64) -> String {
    TrainToml {
        seed: 2,
        epochs,
        batch_size: 32,
        lr: 0.005,
        backend: Some(BackendChoice::Cpu),
        ..TrainToml::new(TrainData::dataset("spirals.csv", 1, Some("standardize")))
    }
    .to_string()
}

#[test]
fn a_job_trains_on_a_stored_dataset_through_the_preprocessing_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let user =
        |name: &str, roles: &str, tenant: &str| add_user(&data, name, roles, tenant, "internal");
    let (ada, lee) = (
        user("ada", "researcher,writer", "vision"),
        user("lee", "researcher", "language"),
    );
    let daemon = Daemon::start(&data, &shared_cache());
    let url = daemon.url.clone();
    let csv = spirals_csv();
    let (s, v) = put(
        &format!("{url}/v1/datasets/spirals.csv?tenant=vision&classification=internal"),
        &ada,
        csv.as_bytes(),
    );
    assert_eq!(s, 201, "{v}");

    let train = spirals_train(80);
    let jobs = format!("{url}/v1/jobs");
    // Another tenant's dataset is not there for lee; an unknown plugin is a 400.
    let theirs = json!({"id": "x", "tenant": "language", "gpus": 1, "train": train});
    let (s, v) = request(&jobs, "POST", Some(&lee), Some(&theirs.to_string()));
    assert_eq!(s, 404, "{v}");
    let unknown = json!({"id": "y", "tenant": "vision", "gpus": 1, "train": train.replace("standardize", "nope")});
    assert_eq!(
        request(&jobs, "POST", Some(&ada), Some(&unknown.to_string())).0,
        400
    );

    let body = json!({"id": "ds1", "tenant": "vision", "gpus": 1, "train": train});
    let (s, v) = request(&jobs, "POST", Some(&ada), Some(&body.to_string()));
    assert_eq!(s, 201, "{v}");
    let job = wait_until_over(&format!("{jobs}/ds1"), &ada, 120);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(
        job["result"]["test"]["accuracy"].as_f64().unwrap() > 0.9,
        "{job}"
    );

    // Without a plugin the columns are parsed as they stream from the store.
    let raw = train
        .replace("preprocess = \"standardize\"\n", "")
        .replace("epochs = 80", "epochs = 2");
    let body = json!({"id": "ds2", "tenant": "vision", "gpus": 1, "train": raw});
    assert_eq!(submit(&url, &ada, &body).0, 201);
    let job = wait_until_over(&format!("{jobs}/ds2"), &ada, 120);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["steps"], 2 * (720 / 32 + 1), "{job}");

    // A bad label fails the job, naming its line.
    let (s, _) = put(
        &format!("{url}/v1/datasets/bad.csv?tenant=vision&classification=internal"),
        &ada,
        b"1,0,2\n3,1,4\n5,x,6\n",
    );
    assert_eq!(s, 201);
    let body = json!({"id": "ds3", "tenant": "vision", "gpus": 1,
                      "train": train.replace("spirals.csv", "bad.csv")});
    assert_eq!(submit(&url, &ada, &body).0, 201);
    let job = wait_until_over(&format!("{jobs}/ds3"), &ada, 60);
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap()
            .contains("line 3: label `x` is not a number"),
        "{job}"
    );
}

#[test]
fn with_a_certificate_the_daemon_speaks_only_tls() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let d = data.to_str().unwrap();
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
    let up_with_key = |key: &Path| {
        Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                d,
                "--tls-cert",
            ])
            .arg(&cert_pem)
            .arg("--tls-key")
            .arg(key)
            .env("GANTRY_CACHE_DIR", shared_cache())
            .output()
            .unwrap()
    };
    // A key others may read (written as the umask left it) is refused at start, naming the
    // file: on a node whose command jobs run as other uids, every job could read it.
    let o = up_with_key(&key_pem);
    assert_eq!(o.status.code(), Some(1));
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains("read by others") && said.contains("key.pem"),
        "{o:?}"
    );
    owner_only(&key_pem);

    // A key that does not belong to the certificate is refused at start, naming the file.
    let other = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
    let wrong_key = dir.path().join("wrong.pem");
    std::fs::write(&wrong_key, other.signing_key.serialize_pem()).unwrap();
    owner_only(&wrong_key);
    let o = up_with_key(&wrong_key);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("do not go together"),
        "{o:?}"
    );

    let daemon = Daemon::start_with(
        &data,
        &shared_cache(),
        &[
            "--tls-cert",
            cert_pem.to_str().unwrap(),
            "--tls-key",
            key_pem.to_str().unwrap(),
        ],
    );
    let https = daemon.url.replace("http://", "https://");
    // Plain HTTP to the TLS port gets no answer.
    assert!(
        ureq::get(&format!("{}/v1/health", daemon.url))
            .call()
            .is_err()
    );
    // The CLI over HTTPS, trusting the certificate; and refusing an untrusted one.
    let submit = |ca: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gantry"));
        cmd.args([
            "submit", "--tenant", "vision", "--gpus", "1", "--url", &https,
        ])
        .env("GANTRY_TOKEN", &ada)
        .env_remove("GANTRY_CA_CERT");
        if let Some(ca) = ca {
            cmd.arg("--ca-cert").arg(ca);
        }
        cmd.output().unwrap()
    };
    let o = submit(Some(&cert_pem));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = submit(None);
    assert_eq!(
        o.status.code(),
        Some(1),
        "an untrusted certificate must fail"
    );
}

/// POSTs raw bytes.
fn post_bytes(url: &str, token: &str, body: &[u8]) -> (u16, Value) {
    send_raw("POST", url, token, body)
}

#[test]
fn admins_replace_the_policy_with_a_bundle_and_it_decides_from_then_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let user = |name: &str, roles: &str| add_user(&data, name, roles, "vision", "public");
    let (ops, ada) = (user("ops", "admin"), user("ada", "researcher"));

    // A stricter policy: researchers may ask for at most 2 GPUs.
    let src = strict_policy(dir.path());
    let bundle = |entrypoint: &str, name: &str| {
        let out = dir.path().join(name);
        build_policy(&src, entrypoint, &out, &shared_cache());
        std::fs::read(out).unwrap()
    };
    let strict_bundle = bundle("gantry/authz/decision", "strict.tar.gz");
    let allow_only = bundle("gantry/authz/allow", "allow.tar.gz");

    let daemon = Daemon::start(&data, &shared_cache());
    let url = daemon.url.clone();
    let jobs = format!("{url}/v1/jobs");
    let policy = format!("{url}/v1/policy");
    let eight = |id: &str| json!({"id": id, "tenant": "vision", "gpus": 8}).to_string();
    assert_eq!(
        request(&jobs, "POST", Some(&ada), Some(&eight("before"))).0,
        201
    );

    assert_eq!(post_bytes(&policy, &ada, &strict_bundle).0, 403);
    assert_eq!(post_bytes(&policy, &ops, b"not a tarball").0, 400);
    let (s, v) = post_bytes(&policy, &ops, &allow_only);
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("would deny every request"),
        "{v}"
    );
    let (s, v) = post_bytes(&policy, &ops, &strict_bundle);
    assert_eq!(s, 200, "{v}");
    assert!(
        v["previous"].is_string() && v["revision"] != v["previous"],
        "{v}"
    );

    let (s, v) = request(&jobs, "POST", Some(&ada), Some(&eight("after")));
    assert_eq!(s, 403, "{v}");
    assert!(
        v["reasons"][0]
            .as_str()
            .unwrap()
            .contains("allow at most 2"),
        "{v}"
    );
    let two = json!({"id": "small", "tenant": "vision", "gpus": 2}).to_string();
    assert_eq!(request(&jobs, "POST", Some(&ada), Some(&two)).0, 201);
    let log = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert!(log.contains("policy.swap"), "the swap is audited");
}

/// Without TLS nothing crosses the network in the clear unless asked: `gantry up` refuses an
/// address beyond loopback, and the CLI refuses to send its token to one over `http://`;
/// `--insecure` allows it.
#[test]
fn plain_http_beyond_loopback_is_refused_without_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let up = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_gantry"));
        c.args(["up", "--listen", "0.0.0.0:0", "--data-dir"])
            .arg(&data)
            .args(extra)
            .env("GANTRY_CACHE_DIR", shared_cache())
            .env_remove("RUST_LOG");
        c
    };
    let o = up(&[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--listen 0.0.0.0:0") && stderr.contains("--insecure"),
        "{stderr}"
    );

    let mut child = up(&["--insecure"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().rsplit_once(':').map(|(_, p)| p.to_string());
    let health = port.map(|p| {
        request(
            &format!("http://127.0.0.1:{p}/v1/health"),
            "GET",
            None,
            None,
        )
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(health.map(|h| h.0), Some(200), "{line}");

    // Nor jobs to an etcd on another machine (its client speaks plain HTTP).
    let mut etcd = Command::new(env!("CARGO_BIN_EXE_gantry"));
    etcd.args([
        "up",
        "--listen",
        "127.0.0.1:0",
        "--etcd",
        "http://192.0.2.1:2379",
    ])
    .arg("--data-dir")
    .arg(&data)
    .env("GANTRY_CACHE_DIR", shared_cache());
    let o = etcd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--etcd http://192.0.2.1:2379") && stderr.contains("--insecure"),
        "{stderr}"
    );

    // The CLI: no token to another machine over plain HTTP, whatever the spelling.
    for url in [
        "http://192.0.2.1:7070",
        "HTTP://example.com",
        "http://user@[2001:db8::1]:80/x",
    ] {
        let o = gantry_as("t", &["jobs", "--url", url], &shared_cache());
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{url}: {stderr}");
        assert!(stderr.contains("in the clear"), "{url}: {stderr}");
    }
}

/// Regression: a job with neither a program nor training held its GPUs until someone cancelled
/// it (nothing ever ran it). It is a reservation: it holds them for its estimated runtime, then
/// succeeds and frees them; a cancel before then still wins.
#[test]
fn a_job_with_neither_program_nor_training_ends_after_its_estimated_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let daemon = Daemon::start(&data, &shared_cache());
    let url = daemon.url.clone();
    let short = json!({"id": "r1", "tenant": "vision", "gpus": 2, "est_runtime_s": 1.5});
    let long = json!({"id": "r2", "tenant": "vision", "gpus": 2, "est_runtime_s": 1.5});
    assert_eq!(submit(&url, &ada, &short).0, 201);
    assert_eq!(submit(&url, &ada, &long).0, 201);
    wait_for_state(&url, &ada, "r1", "scheduled");
    wait_for_state(&url, &ada, "r2", "scheduled");
    let (s, v) = cancel(&url, &ada, "r2");
    assert_eq!((s, v["state"].as_str()), (200, Some("cancelled")), "{v}");
    wait_for_state(&url, &ada, "r1", "succeeded");
    let (_, logs) = request(&format!("{url}/v1/jobs/r1/logs"), "GET", Some(&ada), None);
    assert!(
        logs.to_string().contains("the reservation of 1.5 s ended"),
        "{logs}"
    );
    let (_, gpus) = request(&format!("{url}/v1/gpus"), "GET", Some(&ada), None);
    assert_eq!(gpus["busy"], 0, "{gpus}");
    std::thread::sleep(Duration::from_secs(2));
    let (_, r2) = request(&format!("{url}/v1/jobs/r2"), "GET", Some(&ada), None);
    assert_eq!(r2["state"], "cancelled", "{r2}");

    // Found by a review: a reservation of 1e9 s (31 years) was accepted and held its GPUs past
    // any wall time a command may have. Refused past --max-wall-time-s, naming the field.
    let forever = json!({"id": "r3", "tenant": "vision", "gpus": 2, "est_runtime_s": 1e9});
    let (s, v) = submit(&url, &ada, &forever);
    assert_eq!(s, 400, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("est_runtime_s") && e.contains("--max-wall-time-s"),
        "{e}"
    );
}

/// Reported by a review: `GET /v1/jobs` read every job of every tenant (train configurations
/// included) under the database's one lock and filtered afterwards, so 2,483 jobs of one tenant
/// made another tenant's listing of none take seconds. A listing now reads one page of the
/// caller's tenants' jobs (`?limit=`, at most 1,000; `?after=TENANT/ID` for the next).
#[test]
fn a_listing_reads_one_page_of_the_callers_tenants_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let lee = add_user(&data, "lee", "researcher", "language", "public");
    let daemon = Daemon::start(&data, &shared_cache());
    let url = daemon.url.clone();
    for i in 0..25 {
        let body = json!({"id": format!("v{i:02}"), "tenant": "vision", "gpus": 1});
        assert_eq!(submit(&url, &ada, &body).0, 201);
    }
    for i in 0..2 {
        let body = json!({"id": format!("l{i}"), "tenant": "language", "gpus": 1});
        assert_eq!(submit(&url, &lee, &body).0, 201);
    }
    let list = |token: &str, query: &str| {
        request(&format!("{url}/v1/jobs{query}"), "GET", Some(token), None)
    };
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (s, v) = list(&lee, "");
    assert_eq!(s, 200, "{v}");
    assert_eq!(ids(&v), ["l0", "l1"]);
    // Ada's, ten at a time, in submission order, each page after the last one's.
    let mut seen = Vec::new();
    let mut query = "?limit=10".to_string();
    loop {
        let (s, v) = list(&ada, &query);
        assert_eq!(s, 200, "{v}");
        let page = ids(&v);
        assert!(page.len() <= 10);
        seen.extend(page.clone());
        if page.len() < 10 {
            break;
        }
        query = format!("?limit=10&after=vision/{}", page.last().unwrap());
    }
    let expected: Vec<String> = (0..25).map(|i| format!("v{i:02}")).collect();
    assert_eq!(seen, expected);
    for bad in ["?limit=0", "?limit=1001", "?limit=x", "?page=2"] {
        let (s, v) = list(&ada, bad);
        assert_eq!(s, 400, "{bad}: {v}");
    }
    // Never an empty page that reads as the listing's end.
    let (s, v) = list(&ada, "?after=vision/no-such-job");
    assert_eq!(s, 404, "{v}");
    // Found by a review: a page after another tenant's job said it existed (200, its later
    // jobs) where a missing one got 404. It answers as missing.
    let (s, missing) = list(&ada, "?after=language/no-such-job");
    assert_eq!(s, 404, "{missing}");
    let (s, other) = list(&ada, "?after=language/l0");
    assert_eq!(
        (s, &other),
        (
            404,
            &missing
                .to_string()
                .replace("no-such-job", "l0")
                .parse::<Value>()
                .unwrap()
        )
    );
}
