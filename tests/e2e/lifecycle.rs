//! The job lifecycle of a real `gantry up` on loopback: cancel stops a run before its GPUs are
//! given to anyone else, terminal states stay terminal, sizes a job implies are bounded before
//! anything is allocated, a job that fails never takes the daemon with it, and a job whose runs
//! keep taking the daemon down is not retried for ever.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::daemon::{
    Daemon, cancel, put, request, submit, train_toml, wait_for_state, wait_until_over,
};
use crate::support::{add_user, init_data_dir, shared_cache};

/// A cluster of one node with one GPU: whoever holds it, nobody else can.
const ONE_GPU: &str = r#"
[[tenants]]
name = "vision"

[[nodes]]
name = "solo"
rack = "r0"
gpus = { count = 1, model = "H100-80GB", memory_mib = 81920 }
"#;

fn step(url: &str, token: &str, job: &str) -> u64 {
    let (_, m) = request(
        &format!("{url}/v1/jobs/{job}/metrics"),
        "GET",
        Some(token),
        None,
    );
    m["step"].as_u64().unwrap_or(0)
}

fn wait_for_steps(url: &str, token: &str, job: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while step(url, token, job) < at_least {
        assert!(
            Instant::now() < deadline,
            "{job} never reached step {at_least}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(unix seconds, message)` of the first line of `job`'s log that starts with `prefix`.
fn logged(url: &str, token: &str, job: &str, prefix: &str) -> Option<(f64, String)> {
    let (_, v) = request(
        &format!("{url}/v1/jobs/{job}/logs"),
        "GET",
        Some(token),
        None,
    );
    v.as_array()?.iter().find_map(|l| {
        let m = l["message"].as_str()?;
        m.starts_with(prefix)
            .then(|| (l["at"].as_f64().unwrap_or(0.0), m.to_string()))
    })
}

/// The review: cancelling a running training job did not stop it (it kept training and
/// checkpointing), its GPUs were given to another job meanwhile, and its state flipped from
/// `cancelled` back to `succeeded`.
#[test]
fn cancelling_a_running_training_job_stops_it_before_its_gpus_are_given_away() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let cluster = dir.path().join("one-gpu.toml");
    std::fs::write(&cluster, ONE_GPU).unwrap();
    let daemon = Daemon::start_with(
        &data,
        &shared_cache(),
        &["--cluster", cluster.to_str().unwrap()],
    );
    let url = daemon.url.clone();

    // Long enough (120,000 steps) that it cannot finish during the test.
    let long = json!({"id": "long", "tenant": "vision", "gpus": 1, "train": train_toml(4000)});
    assert_eq!(submit(&url, &ada, &long).0, 201);
    wait_for_steps(&url, &ada, "long", 50);

    let (s, v) = cancel(&url, &ada, "long");
    assert!(
        (s, v["state"].as_str()) == (202, Some("cancelling"))
            || (s, v["state"].as_str()) == (200, Some("cancelled")),
        "{s} {v}"
    );
    // The next job wants the only GPU: it may have it only once the run has stopped.
    let next = json!({"id": "next", "tenant": "vision", "gpus": 1});
    assert_eq!(submit(&url, &ada, &next).0, 201);
    wait_for_state(&url, &ada, "long", "cancelled");
    wait_for_state(&url, &ada, "next", "scheduled");

    // It stopped: no more steps, no more checkpoints, and it stays cancelled.
    let stopped_at = step(&url, &ada, "long");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(step(&url, &ada, "long"), stopped_at, "it kept training");
    let (_, job) = request(&format!("{url}/v1/jobs/long"), "GET", Some(&ada), None);
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(
        job["reason"].as_str().unwrap().contains("cancelled by ada"),
        "{job}"
    );
    let (stop_time, _) =
        logged(&url, &ada, "long", "cancelled by ada: stopped").expect("the run's end is logged");
    let (placed_time, _) =
        logged(&url, &ada, "next", "scheduled on 1 GPU(s)").expect("next was placed");
    assert!(
        placed_time >= stop_time,
        "the GPU was given to `next` at {placed_time}, before `long` stopped at {stop_time}"
    );

    // A terminal state is final: cancelling again is a conflict, not a change.
    let (s, v) = cancel(&url, &ada, "long");
    assert_eq!(s, 409, "{v}");
    let (_, job) = request(&format!("{url}/v1/jobs/long"), "GET", Some(&ada), None);
    assert_eq!(job["state"], "cancelled", "{job}");
}

/// The review: one researcher crashed the daemon for good with `synthetic rows = 10^12` (a
/// 40 TB allocation, and again at every restart), and `classes = 0` panicked the job's thread
/// and left it holding its GPU.
#[test]
fn sizes_a_training_job_implies_are_refused_before_anything_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let daemon = Daemon::start(&data, &shared_cache());
    let url = daemon.url.clone();
    let good = train_toml(2);
    for (i, (from, to, needle)) in [
        (
            "rows_per_class = 400",
            "rows_per_class = 1000000000000",
            "above the limit",
        ),
        ("classes = 3,", "classes = 0,", "at least 2"),
        (
            "hidden = [32, 32]",
            "hidden = [4000000000]",
            "above the limit",
        ),
        ("threads = 1", "threads = 100000", "above the limit"),
        ("epochs = 2", "epochs = 100000000000", "above the limit"),
        ("hidden = [32, 32]", "hidden = [60000, 60000, 60000]", "MiB"),
    ]
    .into_iter()
    .enumerate()
    {
        let text = good.replace(from, to);
        assert_ne!(text, good, "{from}");
        let body = json!({"id": format!("big{i}"), "tenant": "vision", "gpus": 1, "train": text});
        let (s, v) = submit(&url, &ada, &body);
        assert_eq!(s, 400, "{to}: {v}");
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains(needle) && error.contains(&format!("job big{i}: train:")),
            "{to}: {error}"
        );
    }
    let (s, _) = request(&format!("{url}/v1/health"), "GET", None, None);
    assert_eq!(s, 200);
    let (_, jobs) = request(&format!("{url}/v1/jobs"), "GET", Some(&ada), None);
    assert_eq!(jobs.as_array().unwrap().len(), 0, "nothing stored: {jobs}");
}

/// The review: a dataset whose label column holds 10^12 made as many classes (the largest
/// label + 1), and the daemon aborted on the allocation. Now the label is refused with its
/// line, the job fails with that reason and frees its GPU, and the daemon serves on.
#[test]
fn a_dataset_label_of_a_trillion_fails_its_job_not_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let wendy = add_user(&data, "wendy", "researcher,writer", "vision", "internal");
    let daemon = Daemon::start(&data, &shared_cache());
    let url = daemon.url.clone();
    let mut csv = String::new();
    for i in 0..200 {
        let label = if i == 2 {
            "1000000000000".to_string()
        } else {
            (i % 2).to_string()
        };
        csv.push_str(&format!("{label},{}.5,{}.25\n", i % 7, i % 5));
    }
    let (s, v) = put(
        &format!("{url}/v1/datasets/huge-label.csv?tenant=vision&classification=internal"),
        &wendy,
        csv.as_bytes(),
    );
    assert_eq!(s, 201, "{v}");
    let train = |classes: &str| {
        format!(
            "epochs = 2\nbatch_size = 16\n[data]\ndataset = \"huge-label.csv\"\nlabel_column = 0\n\
             [model]\nhidden = [8]\nloss = \"softmax_cross_entropy\"\n{classes}\n\
             [optimizer]\nkind = \"adam\"\nlr = 0.01\n[devices]\nbackend = \"cpu\"\nthreads = 1\n"
        )
    };
    for (id, classes, needle) in [
        ("implied", "", "above the limit of"),
        ("named", "classes = 2", "outside the 2 classes"),
    ] {
        let body = json!({"id": id, "tenant": "vision", "gpus": 1, "train": train(classes)});
        let (s, v) = submit(&url, &wendy, &body);
        assert_eq!(s, 201, "{v}");
        let job = wait_until_over(&format!("{url}/v1/jobs/{id}"), &wendy, 60);
        assert_eq!(job["state"], "failed", "{job}");
        let reason = job["reason"].as_str().unwrap();
        assert!(
            reason.contains("line 3") && reason.contains(needle),
            "{id}: {reason}"
        );
    }
    // The daemon is up, and no GPU is held by the failed jobs.
    let (s, gpus) = request(&format!("{url}/v1/gpus"), "GET", Some(&wendy), None);
    assert_eq!(s, 200);
    assert_eq!(gpus["busy"], 0, "{gpus}");
}

/// A job whose runs keep taking the daemon down (here: killed with -9 while it runs, three
/// times) is not requeued blindly at every restart: it is retried, then backed off, then
/// `failed` with the reason.
#[test]
fn a_job_whose_runs_keep_taking_the_daemon_down_ends_failed() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let cache = shared_cache();
    let body = json!({"id": "crashy", "tenant": "vision", "gpus": 1, "train": train_toml(4000)});
    let mut daemon = Daemon::start(&data, &cache);
    assert_eq!(submit(&daemon.url, &ada, &body).0, 201);
    for crash in 1..=gantry_daemon::db::MAX_CRASHES {
        // The backoff before the third run is 15 s; wait for each run to be under way.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (_, job) = request(
                &format!("{}/v1/jobs/crashy", daemon.url),
                "GET",
                Some(&ada),
                None,
            );
            if job["state"] == "running" && step(&daemon.url, &ada, "crashy") > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "run {crash} never started: {job}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon.signal("-9");
        daemon = Daemon::start(&data, &cache);
    }
    let (_, job) = request(
        &format!("{}/v1/jobs/crashy", daemon.url),
        "GET",
        Some(&ada),
        None,
    );
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap()
            .contains("went down 3 times"),
        "{job}"
    );
    // A clean stop is not a crash: a fresh job survives any number of them.
    let body = json!({"id": "calm", "tenant": "vision", "gpus": 1, "train": train_toml(4000)});
    assert_eq!(submit(&daemon.url, &ada, &body).0, 201);
    for _ in 0..gantry_daemon::db::MAX_CRASHES {
        wait_for_state(&daemon.url, &ada, "calm", "running");
        daemon.signal("-TERM");
        daemon = Daemon::start(&data, &cache);
    }
    wait_for_state(&daemon.url, &ada, "calm", "running");
}

/// Found by a review: a job accepted on one cluster that the cluster after a restart can never
/// hold (4 GPUs asked of a cluster of 1) was left pending for ever, its log saying nothing:
/// the scheduler's refusal to queue it was dropped. It ends failed now, saying why.
#[test]
fn a_job_the_cluster_after_a_restart_cannot_hold_fails_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let cluster = dir.path().join("cluster.toml");
    std::fs::write(&cluster, crate::support::TWO_NODES).unwrap();
    let with = |cluster: &std::path::Path| ["--cluster".to_string(), cluster.display().to_string()];
    let args = with(&cluster);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start_with(&data, &shared_cache(), &args);
    // `hold` takes every GPU (a reservation: scheduled, holding them), so `big` waits.
    for (id, gpus) in [("hold", 4), ("big", 4)] {
        let body = json!({"id": id, "tenant": "vision", "gpus": gpus});
        let (s, v) = submit(&daemon.url, &ada, &body);
        assert_eq!(s, 201, "{v}");
    }
    wait_for_state(&daemon.url, &ada, "hold", "scheduled");
    drop(daemon);
    let small = dir.path().join("small.toml");
    std::fs::write(&small, ONE_GPU).unwrap();
    let args = with(&small);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start_with(&data, &shared_cache(), &args);
    let job = wait_until_over(&format!("{}/v1/jobs/big", daemon.url), &ada, 30);
    assert_eq!(job["state"], "failed", "{job}");
    let reason = job["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("it can no longer be queued") && reason.contains("gpus"),
        "{reason}"
    );
}
