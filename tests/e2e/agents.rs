//! Node agents: `gantry up --agent-lease-s` and `gantry agent` processes on loopback. A node
//! serves only while its agent holds a lease; a killed agent's node leaves service and its jobs
//! go back to the queue; only node identities speak for nodes.

use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::daemon::{Daemon, request, submit, wait_for_state};
use crate::support::{
    TWO_NODES, add_user, alive, eventually, init_data_dir, job_user_args, log_of, number_after,
    path_after, shared_cache,
};

/// A `gantry agent` process, killed when dropped; what it said on stderr is shown when a
/// test fails (an agent says there why a report or a run failed).
pub(crate) struct Agent(Child, tempfile::NamedTempFile);

impl Agent {
    pub(crate) fn start(url: &str, token: &str, node: &str, gpus: u32) -> Agent {
        Self::start_with(url, token, node, gpus, &[])
    }

    /// An agent of `node` with `gpus` emulated GPUs, reporting to `url` (URLs, comma
    /// separated, for a replicated control plane).
    pub(crate) fn start_with(
        url: &str,
        token: &str,
        node: &str,
        gpus: u32,
        extra: &[&str],
    ) -> Agent {
        let gpus = gpus.to_string();
        let args: Vec<&str> = ["--emulate-gpus", gpus.as_str()]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        Self::spawn(url, token, node, &args)
    }

    /// An agent of `node` given `args` besides its node, URL and heartbeat period.
    fn spawn(url: &str, token: &str, node: &str, args: &[&str]) -> Agent {
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["agent", "--node", node, "--heartbeat-s", "0.2"])
            .args(["--url", url])
            .args(args)
            .env("GANTRY_TOKEN", token)
            .stdout(Stdio::null())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .expect("starting gantry agent");
        Agent(child, stderr)
    }
}

impl Agent {
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            // Nothing here may panic: a second panic aborts the test run.
            let said = std::fs::read(self.1.path()).unwrap_or_default();
            let tail = String::from_utf8_lossy(&said[said.len().saturating_sub(16 << 10)..]);
            eprintln!("agent {} said (its last 16 KiB):\n{tail}", self.0.id());
        }
    }
}

/// Starts a daemon over the two-node cluster whose nodes serve while their agents hold leases
/// of `lease_s` seconds (the users it needs are added to `data` before).
fn two_nodes_with_agents(dir: &std::path::Path, data: &std::path::Path, lease_s: &str) -> Daemon {
    let cluster = dir.join("cluster.toml");
    std::fs::write(&cluster, TWO_NODES).unwrap();
    Daemon::start_with(
        data,
        &shared_cache(),
        &[
            "--cluster",
            cluster.to_str().unwrap(),
            "--agent-lease-s",
            lease_s,
        ],
    )
}

/// A heartbeat reporting node-a's two GPUs healthy.
fn two_gpus() -> Value {
    json!({"gpus": [{"ordinal": 0, "healthy": true}, {"ordinal": 1, "healthy": true}]})
}

/// The test as node-a's agent (token `node`): it reports its two GPUs, has job `id` (`sleep
/// 300` on `gpus` GPUs) submitted by `rae`, and returns the run it is handed at its next
/// heartbeat.
fn handed_run(url: &str, rae: &str, node: &str, id: &str, gpus: u32) -> Value {
    assert_eq!(heartbeat(url, node, "node-a", &two_gpus()).0, 200);
    let body = json!({"id": id, "tenant": "vision", "gpus": gpus,
                      "command": {"argv": ["sleep", "300"]}});
    assert_eq!(submit(url, rae, &body).0, 201);
    wait_for_state(url, rae, id, "scheduled");
    // Handed once the placement is followed, which a CI run's heartbeat came before.
    let mut run = Value::Null;
    eventually("the run is handed to node-a", || {
        let (_, v) = heartbeat(url, node, "node-a", &two_gpus());
        run = v["runs"][0].clone();
        !run.is_null()
    });
    run
}

fn heartbeat(url: &str, token: &str, node: &str, body: &Value) -> (u16, Value) {
    request(
        &format!("{url}/v1/nodes/{node}/heartbeat"),
        "POST",
        Some(token),
        Some(&body.to_string()),
    )
}

fn job(url: &str, token: &str, id: &str) -> Value {
    request(&format!("{url}/v1/jobs/{id}"), "GET", Some(token), None).1
}

fn serving_gpus(url: &str, token: &str) -> u64 {
    let (_, gpus) = request(&format!("{url}/v1/gpus"), "GET", Some(token), None);
    gpus["healthy"].as_u64().unwrap()
}

#[test]
fn nodes_serve_while_their_agent_holds_a_lease_and_their_jobs_requeue_when_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let ops = add_user(&data, "ops", "admin", "vision", "secret");
    let node = add_user(&data, "node-a", "node", "vision", "public");
    let node_b = add_user(&data, "node-b", "node", "vision", "public");
    let node_z = add_user(&data, "node-z", "node", "vision", "public");
    let daemon = two_nodes_with_agents(dir.path(), &data, "1.5");
    let url = daemon.url.clone();

    // No agent yet: no GPU serves, and a job waits.
    assert_eq!(serving_gpus(&url, &ada), 0);
    let (s, v) = submit(
        &url,
        &ada,
        &json!({"id": "j1", "tenant": "vision", "gpus": 2}),
    );
    assert_eq!(s, 201, "{v}");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(job(&url, &ada, "j1")["state"], "pending");

    // Only a node identity speaks for a node (not a researcher, not an admin), and with a
    // well-formed report; a node the cluster lacks registers only with a GPU and a good rack.
    let two = json!({"gpus": [{"ordinal": 0, "healthy": true}, {"ordinal": 1, "healthy": true}]});
    for token in [&ada, &ops] {
        let (s, v) = heartbeat(&url, token, "node-a", &two);
        assert_eq!(s, 403, "{v}");
        assert!(
            v["reasons"][0]
                .as_str()
                .unwrap()
                .contains("needs the node role"),
            "{v}"
        );
    }
    let (s, v) = heartbeat(&url, &node, "node-b", &two);
    assert_eq!(s, 403, "{v}");
    assert!(
        v["reasons"][0]
            .as_str()
            .unwrap()
            .contains("may not act as node node-b"),
        "{v}"
    );
    let (s, v) = heartbeat(&url, &node_z, "node-z", &json!({"gpus": []}));
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("at least one GPU"), "{v}");
    let bad_rack = json!({"gpus": [{"ordinal": 0, "healthy": true}], "rack": "r 1/.."});
    let (s, v) = heartbeat(&url, &node_z, "node-z", &bad_rack);
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("field `rack`"), "{v}");
    let twice = json!({"gpus": [{"ordinal": 0, "healthy": true}, {"ordinal": 0, "healthy": true}]});
    let (s, v) = heartbeat(&url, &node, "node-a", &twice);
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("gpus[1].ordinal"),
        "{v}"
    );
    // A GPU its agent reports unfit stays out; ordinals the cluster lacks are named back.
    let (s, v) = heartbeat(
        &url,
        &node_b,
        "node-b",
        &json!({"gpus": [{"ordinal": 0, "healthy": true}, {"ordinal": 1, "healthy": false},
                         {"ordinal": 7, "healthy": true}]}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["serving"], json!(["node-b/gpu0"]), "{v}");
    assert_eq!(v["not_in_cluster"], json!([7]), "{v}");
    assert_eq!(serving_gpus(&url, &ada), 1);

    // An agent on node-a with two emulated GPUs: the job is placed there.
    let agent_a = Agent::start(&url, &node, "node-a", 2);
    wait_for_state(&url, &ada, "j1", "scheduled");
    let placed = job(&url, &ada, "j1");
    assert_eq!(
        placed["gpu_ids"],
        json!(["node-a/gpu0", "node-a/gpu1"]),
        "{placed}"
    );

    // The agent dies (kill -9): when its lease ends the node leaves service and the job is
    // queued again; an agent on node-b takes it.
    drop(agent_a);
    wait_for_state(&url, &ada, "j1", "pending");
    let requeued = job(&url, &ada, "j1");
    assert!(
        requeued["reason"]
            .as_str()
            .unwrap()
            .contains("its node's agent stopped renewing its lease"),
        "{requeued}"
    );
    // node-b's one heartbeat above has run out too: nothing serves.
    assert_eq!(serving_gpus(&url, &ada), 0);
    let _agent_b = Agent::start(&url, &node_b, "node-b", 2);
    wait_for_state(&url, &ada, "j1", "scheduled");
    let placed = job(&url, &ada, "j1");
    assert_eq!(
        placed["gpu_ids"],
        json!(["node-b/gpu0", "node-b/gpu1"]),
        "{placed}"
    );
}

/// Regression: a job requeued from GPUs that left service was checked against the GPUs still in
/// service, refused ("can never run"), and left pending in the database but in no queue: it
/// never ran again, even once its GPUs were back.
#[test]
fn a_job_requeued_from_gpus_out_of_service_runs_when_they_return() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let cluster = dir.path().join("cluster.toml");
    std::fs::write(&cluster, TWO_NODES).unwrap();
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let ops = add_user(&data, "ops", "admin", "vision", "secret");
    let daemon = Daemon::start_with(
        &data,
        &shared_cache(),
        &["--cluster", cluster.to_str().unwrap()],
    );
    let url = daemon.url.clone();
    let body = json!({"id": "big", "tenant": "vision", "gpus": 4});
    assert_eq!(submit(&url, &ada, &body).0, 201);
    wait_for_state(&url, &ada, "big", "scheduled");
    let mark = |health: &str, gpu: &str| {
        let (s, v) = request(
            &format!("{url}/v1/gpus/{health}"),
            "POST",
            Some(&ops),
            Some(&json!({"gpu": gpu}).to_string()),
        );
        assert_eq!(s, 200, "{v}");
    };
    mark("unhealthy", "node-a/gpu0");
    wait_for_state(&url, &ada, "big", "pending");
    // While the cluster has 3 GPUs in service a gang of 4 waits; new ones are admitted too.
    let (s, v) = submit(
        &url,
        &ada,
        &json!({"id": "big2", "tenant": "vision", "gpus": 4}),
    );
    assert_eq!(s, 201, "{v}");
    mark("healthy", "node-a/gpu0");
    wait_for_state(&url, &ada, "big", "scheduled");
}

/// Waits (up to 30 s) until `check` holds.
#[test]
fn command_jobs_run_on_their_nodes_agent_and_a_stale_attempt_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let node = add_user(&data, "node-a", "node", "vision", "public");
    let node_b = add_user(&data, "node-b", "node", "vision", "public");
    let daemon = two_nodes_with_agents(dir.path(), &data, "1.5");
    let url = daemon.url.clone();
    let mut extra = vec!["--kill-grace-s", "0.5"];
    extra.extend(job_user_args());
    let agent_a = Agent::start_with(&url, &node, "node-a", 2, &extra);

    // The job runs on its node's agent (the program is the agent's child), on its placed GPUs.
    let script = format!(
        "echo on=$GANTRY_GPU_IDS devices=$CUDA_VISIBLE_DEVICES; sleep 300 & echo child=$! {}; wait",
        crate::support::PIDNS
    );
    let body = json!({"id": "c1", "tenant": "vision", "gpus": 2,
                      "command": {"argv": ["sh", "-c", script]}});
    let (s, v) = submit(&url, &rae, &body);
    assert_eq!(s, 201, "{v}");
    eventually("c1 prints its child", || {
        log_of(&url, &rae, "c1").contains("child=")
    });
    wait_for_state(&url, &rae, "c1", "running");
    let log = log_of(&url, &rae, "c1");
    assert!(
        log.contains("on=node-a/gpu0,node-a/gpu1 devices=0,1"),
        "{log}"
    );
    // The run's process (its pid in the log) is the agent's child.
    let leader = number_after(&log, "(pid ");
    let stat = std::fs::read_to_string(format!("/proc/{leader}/stat")).unwrap();
    let parent = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap();
    assert_eq!(parent, agent_a.0.id().to_string(), "{log}\n{stat}");
    let child_a = crate::support::JobPid::from_log(&log, "child=");
    let attempt = number_after(&log, "(attempt ");

    // Reports of anything but the current attempt on its node are refused.
    let report = |node_name: &str, token: &str, attempt: u64| {
        request(
            &format!("{url}/v1/nodes/{node_name}/runs"),
            "POST",
            Some(token),
            Some(
                &json!({"job": "vision/c1", "attempt": attempt, "event": "log",
                        "entry": "forged"})
                .to_string(),
            ),
        )
    };
    let (s, v) = report("node-a", &node, attempt + 1);
    assert_eq!(s, 409, "{v}");
    let (s, v) = report("node-b", &node_b, attempt);
    assert_eq!(s, 409, "{v}");
    assert!(!log_of(&url, &rae, "c1").contains("forged"));

    // Agent A stops (SIGSTOP) past its lease: the control plane gives its run up and hands the job
    // to node-b's agent as a new attempt. Its run, a process of its own that a frozen agent
    // cannot stop, is killed by its lease guard before then (a review found it running beside
    // the new attempt for as long as the agent was stopped). When A resumes, its reports are
    // refused; the job runs on, on node-b.
    let _agent_b = Agent::start_with(&url, &node_b, "node-b", 2, &extra);
    agent_a.signal("-STOP");
    let mut seen_dead = false;
    eventually("c1 runs again on node-b", || {
        // Dead first, seen before the job's move is.
        seen_dead |= !child_a.alive();
        let j = job(&url, &rae, "c1");
        j["state"] == "running" && j["gpu_ids"] == json!(["node-b/gpu0", "node-b/gpu1"])
    });
    assert!(
        seen_dead,
        "the frozen agent's run outlived its lease: it ran beside the job's next attempt"
    );
    agent_a.signal("-CONT");
    // Found by a review: woken, the agent renewed its run's guard, gone (it had killed the run),
    // and died of SIGPIPE, every other run of its node with it.
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        alive(agent_a.0.id()),
        "the agent did not survive its run's guard"
    );
    let j = job(&url, &rae, "c1");
    assert_eq!(j["state"], "running", "{j}");
    assert_eq!(j["gpu_ids"], json!(["node-b/gpu0", "node-b/gpu1"]), "{j}");

    // A cancel reaches the agent that runs it.
    let (s, v) = crate::daemon::cancel(&url, &rae, "c1");
    assert_eq!(s, 202, "{v}");
    wait_for_state(&url, &rae, "c1", "cancelled");
}

/// Left by a review: one action, `node.heartbeat`, authorized both a node's heartbeats and its
/// reports on its runs (a job's start and end), so heartbeats could not be counted in the
/// audit log like other repeated requests and 1,000 nodes wrote a thousand synced entries a
/// second. Run reports are `node.report` now; heartbeats are counted. A review then found a
/// chatty run's log reports (a few a second, each an entry) wrote half a megabyte of audit log
/// a minute: a run's output and progress are counted too, its start and end an entry each.
#[test]
fn a_nodes_heartbeats_and_run_output_are_counted_in_the_audit_log_and_starts_and_ends_are_entries()
{
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let node = add_user(&data, "node-a", "node", "vision", "public");
    let mut daemon = two_nodes_with_agents(dir.path(), &data, "30");
    let url = daemon.url.clone();
    for _ in 0..40 {
        assert_eq!(heartbeat(&url, &node, "node-a", &two_gpus()).0, 200);
    }
    let run = handed_run(&url, &rae, &node, "counted", 1);
    let attempt = run["attempt"].as_u64().unwrap();
    for event in [
        json!({"event": "started"}),
        json!({"event": "log", "entry": "hello"}),
        json!({"event": "log", "entry": "again"}),
        json!({"event": "log", "entry": "and again"}),
    ] {
        let mut body = json!({"job": "vision/counted", "attempt": attempt});
        body.as_object_mut()
            .unwrap()
            .extend(event.as_object().unwrap().clone());
        let (s, v) = request(
            &format!("{url}/v1/nodes/node-a/runs"),
            "POST",
            Some(&node),
            Some(&body.to_string()),
        );
        assert_eq!(s, 200, "{v}");
    }
    // A person is no node, whatever their roles: refused as `node.report`, an entry.
    let (s, v) = request(
        &format!("{url}/v1/nodes/node-a/runs"),
        "POST",
        Some(&rae),
        Some(&json!({"job": "vision/counted", "attempt": attempt, "event": "started"}).to_string()),
    );
    assert_eq!(s, 403, "{v}");
    daemon.signal("-TERM");
    let log = std::fs::read_to_string(data.join("audit.log")).unwrap();
    let entries: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let decisions = |action: &str, allow: bool| {
        entries
            .iter()
            .filter(|e| {
                e["kind"] == "decision"
                    && e["record"]["action"] == action
                    && e["record"]["allow"] == allow
            })
            .count()
    };
    let counted_of = |action: &str| -> u64 {
        entries
            .iter()
            .filter(|e| e["kind"] == "decision.summary")
            .flat_map(|e| e["record"]["tallies"].as_array().unwrap().clone())
            .filter(|t| t["action"] == action && t["subject"]["user"] == "node-a")
            .map(|t| t["count"].as_u64().unwrap())
            .sum()
    };
    let counted = counted_of("node.heartbeat");
    assert_eq!(
        decisions("node.heartbeat", true),
        0,
        "heartbeats are counted"
    );
    assert_eq!(counted, 42, "40 heartbeats and the 2 of handed_run");
    assert_eq!(decisions("node.report", true), 1, "the start is an entry");
    assert_eq!(
        counted_of("node.report"),
        3,
        "the three log reports are counted"
    );
    assert_eq!(decisions("node.report", false), 1, "and a refusal too");
    let key = gantry::keys::load(&data.join("keys/host.pk8")).unwrap();
    gantry::audit::verify(
        &data.join("audit.log"),
        Some(&gantry::keys::public_hex(&key)),
    )
    .unwrap();
}

/// `gantry up` on `cluster` (TOML, written under `dir`) whose nodes need agents, with none: no
/// GPU serves, so every job waits (until cancelled).
fn without_agents(
    dir: &std::path::Path,
    data: &std::path::Path,
    cluster: &str,
    extra: &[&str],
) -> Daemon {
    let file = dir.join("cluster.toml");
    std::fs::write(&file, cluster).unwrap();
    let mut args = vec!["--cluster", file.to_str().unwrap(), "--agent-lease-s", "10"];
    args.extend(extra);
    Daemon::start_with(data, &shared_cache(), &args)
}

/// Reported by a review: one tenant submitted 2,483 jobs in 25 s (a reservation holding the
/// GPUs, every other job waiting), and each listing of jobs took seconds while the table grew
/// without end. A tenant's waiting jobs are bounded (`--max-queued-jobs-per-tenant`): past it a
/// submission is refused (429) until some are placed or cancelled.
#[test]
fn a_tenants_waiting_jobs_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher", "vision", "public");
    let daemon = without_agents(
        dir.path(),
        &data,
        TWO_NODES,
        &["--max-queued-jobs-per-tenant", "3"],
    );
    let url = daemon.url.clone();
    let job = |id: &str| json!({"id": id, "tenant": "vision", "gpus": 1});
    for id in ["w1", "w2", "w3"] {
        let (s, v) = submit(&url, &rae, &job(id));
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = submit(&url, &rae, &job("w4"));
    assert_eq!(s, 429, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("tenant vision has 3 jobs waiting"),
        "{v}"
    );
    let (s, v) = crate::daemon::cancel(&url, &rae, "w1");
    assert!(s == 200 || s == 202, "{v}");
    let (s, v) = submit(&url, &rae, &job("w4"));
    assert_eq!(s, 201, "{v}");
}

/// Found by a review: finished jobs were kept for ever and counted against no bound, so one
/// user submitting and cancelling in a loop (50 stored jobs a second) grew the job table, every
/// lookup and every listing without end. A tenant keeps its newest finished jobs
/// (`--keep-finished-jobs-per-tenant`); older ones are forgotten, log and all, as it submits
/// more; another tenant's are not touched. Listings show each job's kind, not its body, and a
/// page asked for after a forgotten job says so rather than reading as the end.
#[test]
fn a_tenant_submitting_and_cancelling_in_a_loop_keeps_its_newest_finished_jobs_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher", "vision", "public");
    let lee = add_user(&data, "lee", "researcher", "language", "public");
    let two_tenants = TWO_NODES.replacen(
        "[[tenants]]",
        "[[tenants]]\nname = \"language\"\n\n[[tenants]]",
        1,
    );
    let daemon = without_agents(
        dir.path(),
        &data,
        &two_tenants,
        &["--keep-finished-jobs-per-tenant", "3"],
    );
    let url = daemon.url.clone();
    let (s, v) = submit(
        &url,
        &lee,
        &json!({"id": "l1", "tenant": "language", "gpus": 1}),
    );
    assert_eq!(s, 201, "{v}");
    assert!(crate::daemon::cancel(&url, &lee, "l1").0 < 300);
    for i in 1..=10 {
        let id = format!("j{i}");
        let (s, v) = submit(
            &url,
            &rae,
            &json!({"id": id, "tenant": "vision", "gpus": 1}),
        );
        assert_eq!(s, 201, "{v}");
        let (s, v) = crate::daemon::cancel(&url, &rae, &id);
        assert!(s == 200 || s == 202, "{v}");
    }
    let (s, v) = submit(
        &url,
        &rae,
        &json!({"id": "last", "tenant": "vision", "gpus": 1, "train": crate::daemon::train_toml(1)}),
    );
    assert_eq!(s, 201, "{v}");
    let list = |token: &str, query: &str| {
        request(&format!("{url}/v1/jobs{query}"), "GET", Some(token), None)
    };
    let (s, jobs) = list(&rae, "");
    assert_eq!(s, 200, "{jobs}");
    let ids: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["j8", "j9", "j10", "last"],
        "the newest three to end, and the waiting one"
    );
    let last = &jobs.as_array().unwrap()[3];
    assert_eq!(last["kind"], "train", "{last}");
    assert!(
        last.get("train").is_none(),
        "a listing leaves the body out: {last}"
    );
    let (s, one) = request(&format!("{url}/v1/jobs/last"), "GET", Some(&rae), None);
    assert!(s == 200 && one["train"].is_string(), "{one}");
    for gone in ["/v1/jobs/j1", "/v1/jobs/j1/logs"] {
        let (s, v) = request(&format!("{url}{gone}"), "GET", Some(&rae), None);
        assert_eq!(s, 404, "{gone}: {v}");
    }
    let (s, v) = list(&rae, "?after=vision/j1");
    assert_eq!(s, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("list again"), "{v}");
    let (s, v) = list(&lee, "");
    assert_eq!(
        (s, v[0]["id"].as_str()),
        (200, Some("l1")),
        "another tenant's stays: {v}"
    );
    // Its name is free again.
    let (s, v) = submit(
        &url,
        &rae,
        &json!({"id": "j1", "tenant": "vision", "gpus": 1}),
    );
    assert_eq!(s, 201, "{v}");
    // Found by a review: an unknown tenant's refusal listed every tenant of the cluster.
    let (s, v) = submit(
        &url,
        &rae,
        &json!({"id": "x", "tenant": "nowhere", "gpus": 1}),
    );
    assert_eq!(s, 400, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("unknown tenant `nowhere`") && !e.contains("language"),
        "{v}"
    );
}

/// A loopback proxy to `to` that can freeze: from then on it accepts connections and never
/// answers, like a control plane that hangs or a network that drops packets.
struct FreezingProxy {
    url: String,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FreezingProxy {
    fn to(to: &str) -> FreezingProxy {
        use std::io::copy;
        use std::sync::atomic::Ordering::SeqCst;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let target = to.trim_start_matches("http://").to_string();
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let frozen_too = frozen.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for client in listener.incoming().flatten() {
                if frozen_too.load(SeqCst) {
                    held.push(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let (mut c1, mut s1) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut c2, mut s2) = (client, server);
                std::thread::spawn(move || {
                    let _ = copy(&mut c1, &mut s1);
                    let _ = s1.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        FreezingProxy { url, frozen }
    }

    fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Reported by a review: a job ran twice at once. An agent whose control plane stopped
/// answering (connections accepted, never answered) waited on its heartbeat for ever, so it
/// never saw its lease lapse, and its run went on beside the attempt the control plane gave to
/// another node; and an agent that came back after its lease (SIGSTOP, SIGCONT) stopped its
/// given-up run with the grace of a stop (SIGTERM, then SIGKILL after `--kill-grace-s`), so a
/// program ignoring SIGTERM ran on beside its new attempt for the whole grace. Now every request
/// of an agent is bounded well under its lease, each run kills itself the moment its agent's
/// lease (counted from when the heartbeat was sent) lapses, and a run the control plane no
/// longer lists is killed at once.
#[test]
fn a_given_up_run_is_killed_before_its_job_runs_elsewhere_however_its_agent_was_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let node = add_user(&data, "node-a", "node", "vision", "public");
    let node_b = add_user(&data, "node-b", "node", "vision", "public");
    let daemon = two_nodes_with_agents(dir.path(), &data, "2");
    let url = daemon.url.clone();
    // A grace far longer than the test: only a kill without it ends these programs in time.
    let mut extra = vec!["--kill-grace-s", "600"];
    extra.extend(job_user_args());
    let script = format!(
        "trap '' TERM; sleep 300 & echo child=$! {}; wait",
        crate::support::PIDNS
    );
    let runs_on = |id: &str, node: &str| {
        let j = job(&url, &rae, id);
        j["state"] == "running"
            && j["gpu_ids"] == json!([format!("{node}/gpu0"), format!("{node}/gpu1")])
    };

    // The control plane stops answering agent A.
    let proxy = FreezingProxy::to(&url);
    let agent_a = Agent::start_with(&proxy.url, &node, "node-a", 2, &extra);
    let body = json!({"id": "h1", "tenant": "vision", "gpus": 2,
                      "command": {"argv": ["sh", "-c", script]}});
    let (s, v) = submit(&url, &rae, &body);
    assert_eq!(s, 201, "{v}");
    eventually("h1 prints its child", || {
        log_of(&url, &rae, "h1").contains("child=")
    });
    let child = crate::support::JobPid::from_log(&log_of(&url, &rae, "h1"), "child=");
    let agent_b = Agent::start_with(&url, &node_b, "node-b", 2, &extra);
    proxy.freeze();
    eventually("h1 runs again on node-b", || runs_on("h1", "node-b"));
    assert!(
        !child.alive(),
        "the run of the agent cut off from its control plane outlived its lease"
    );
    let (s, v) = crate::daemon::cancel(&url, &rae, "h1");
    assert_eq!(s, 202, "{v}");
    drop(agent_a);
    drop(agent_b);
    eventually("no node serves", || serving_gpus(&url, &rae) == 0);
    wait_for_state(&url, &rae, "h1", "cancelled");

    // Agent A is stopped past its lease, then goes on.
    let agent_a = Agent::start_with(&url, &node, "node-a", 2, &extra);
    eventually("node-a serves", || serving_gpus(&url, &rae) == 2);
    let body = json!({"id": "h2", "tenant": "vision", "gpus": 2,
                      "command": {"argv": ["sh", "-c", script]}});
    let (s, v) = submit(&url, &rae, &body);
    assert_eq!(s, 201, "{v}");
    eventually("h2 runs on node-a", || {
        runs_on("h2", "node-a") && log_of(&url, &rae, "h2").contains("child=")
    });
    let child = crate::support::JobPid::from_log(&log_of(&url, &rae, "h2"), "child=");
    let _agent_b = Agent::start_with(&url, &node_b, "node-b", 2, &extra);
    agent_a.signal("-STOP");
    eventually("h2 runs again on node-b", || runs_on("h2", "node-b"));
    agent_a.signal("-CONT");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.alive() {
        assert!(
            std::time::Instant::now() < deadline,
            "the given-up run was still alive 10 s after its agent went on"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Regression: a command run's scratch directory on an agent (no `cwd` given) stayed in `/tmp`
/// for good when its agent was killed mid-run. The agent, started again, removes it.
#[test]
fn a_killed_agents_run_scratch_directory_is_removed_when_it_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let node = add_user(&data, "node-a", "node", "vision", "public");
    let daemon = two_nodes_with_agents(dir.path(), &data, "1.5");
    let url = daemon.url.clone();
    let mut extra = vec!["--kill-grace-s", "0.5"];
    extra.extend(job_user_args());
    let agent = Agent::start_with(&url, &node, "node-a", 2, &extra);
    let body = json!({"id": "s1", "tenant": "vision", "gpus": 1,
                      "command": {"argv": ["sh", "-c", "echo scratch=$(pwd); sleep 300"]}});
    assert_eq!(submit(&url, &rae, &body).0, 201);
    eventually("s1 prints its directory", || {
        log_of(&url, &rae, "s1").contains("scratch=")
    });
    let log = log_of(&url, &rae, "s1");
    let scratch = path_after(&log, "scratch=");
    assert!(scratch.is_absolute() && scratch.is_dir(), "{log}");

    agent.signal("-9");
    drop(agent);
    let _agent = Agent::start_with(&url, &node, "node-a", 2, &extra);
    eventually(
        "the restarted agent removes the killed run's directory",
        || !scratch.exists(),
    );
}

/// Regression: a command run cancelled before its agent started it was never ended (the agent
/// skips a run it is told to stop, so no end was ever reported): the job stayed `cancelling` and
/// kept its GPUs.
#[test]
fn a_run_cancelled_before_its_agent_started_it_ends_and_frees_its_gpus() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let node = add_user(&data, "node-a", "node", "vision", "public");
    let daemon = two_nodes_with_agents(dir.path(), &data, "30");
    let url = daemon.url.clone();
    // The test is node-a's agent: it heartbeats, and never starts what it is handed.
    let two = two_gpus();
    let run = handed_run(&url, &rae, &node, "c2", 2);
    assert_eq!(run["job"], "vision/c2", "{run}");
    assert_eq!(run["stop"], false, "{run}");
    let (s, v) = crate::daemon::cancel(&url, &rae, "c2");
    assert_eq!(s, 202, "{v}");
    // The next heartbeat ends it: nothing is handed, the job is cancelled, its GPUs are free.
    let (_, v) = heartbeat(&url, &node, "node-a", &two);
    assert_eq!(v["runs"], json!([]), "{v}");
    wait_for_state(&url, &rae, "c2", "cancelled");
    // The end is recorded, then followed (the GPUs freed in the scheduler's view): a CI run
    // read them in between.
    eventually("the cancelled run's GPUs are free", || {
        let (_, gpus) = request(&format!("{url}/v1/gpus"), "GET", Some(&rae), None);
        gpus["busy"] == 0
    });
}

/// A TCP proxy on loopback to `to` that can cut the network: while cut, every open connection is
/// shut and new ones are dropped at once.
struct Proxy {
    addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start(to: std::net::SocketAddr) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>> = Default::default();
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(to) else {
                    continue;
                };
                o.lock().unwrap().push(client.try_clone().unwrap());
                let pump = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                };
                pump(client.try_clone().unwrap(), server.try_clone().unwrap());
                pump(server, client);
            }
        });
        Proxy { addr, cut, open }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
        if cut {
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Regression: an agent whose report of a run's end was lost on the way (the network cut as the
/// run ended) never sent it again: the job stayed running, holding its GPUs.
#[test]
fn a_runs_end_lost_on_the_way_is_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let node = add_user(&data, "node-a", "node", "vision", "public");
    let daemon = two_nodes_with_agents(dir.path(), &data, "30");
    let url = daemon.url.clone();
    let proxy = Proxy::start(url.trim_start_matches("http://").parse().unwrap());
    let _agent = Agent::start_with(
        &format!("http://{}", proxy.addr),
        &node,
        "node-a",
        2,
        &job_user_args(),
    );
    let body = json!({"id": "c3", "tenant": "vision", "gpus": 1,
                      "command": {"argv": ["sh", "-c", "echo begun; sleep 1.5"]}});
    assert_eq!(submit(&url, &rae, &body).0, 201);
    eventually("c3 begins", || log_of(&url, &rae, "c3").contains("begun"));
    // The network is cut while the run ends, and back after.
    proxy.set_cut(true);
    std::thread::sleep(std::time::Duration::from_millis(3000));
    assert_eq!(job(&url, &rae, "c3")["state"], "running");
    proxy.set_cut(false);
    eventually("c3's end arrives", || {
        job(&url, &rae, "c3")["state"] == "succeeded"
    });
}

/// Regression: the control plane kept every log entry a node reported for its current run, so
/// whoever held a node's token could grow a job's log, and the store, without bound. It keeps
/// what a run on the daemon itself may keep, and says once that the rest was dropped.
#[test]
fn a_node_cannot_log_more_for_a_run_than_a_run_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let node = add_user(&data, "node-a", "node", "vision", "public");
    let daemon = two_nodes_with_agents(dir.path(), &data, "30");
    let url = daemon.url.clone();
    let run = handed_run(&url, &rae, &node, "c4", 1);
    let attempt = run["attempt"].as_u64().expect("a handed run");
    let report = |event: Value| {
        let mut body = json!({"job": "vision/c4", "attempt": attempt});
        body.as_object_mut()
            .unwrap()
            .extend(event.as_object().unwrap().clone());
        let (s, v) = request(
            &format!("{url}/v1/nodes/node-a/runs"),
            "POST",
            Some(&node),
            Some(&body.to_string()),
        );
        assert_eq!(s, 200, "{v}");
    };
    report(json!({"event": "started"}));
    wait_for_state(&url, &rae, "c4", "running");
    // 40 entries of 60 KiB: 2.3 MiB, over twice what a run keeps (1 MiB).
    let entry = "x".repeat(60 << 10);
    for _ in 0..40 {
        report(json!({"event": "log", "entry": entry}));
    }
    let log = log_of(&url, &rae, "c4");
    assert!(
        log.len() < (1 << 20) + (64 << 10),
        "{} bytes kept",
        log.len()
    );
    assert!(
        log.len() > (1 << 20) - (64 << 10),
        "{} bytes kept",
        log.len()
    );
    assert_eq!(
        log.matches("the rest is dropped").count(),
        1,
        "{}",
        &log[log.len() - 400..]
    );
}

/// A run a node's agent is running goes on when its control plane restarts: the new one adopts
/// it (its attempt, its GPUs) from the placement it recorded, instead of requeueing the job and
/// starting it again (before, every command run on an agent was killed and started over, and
/// counted against the job's crash guard).
#[test]
fn a_restarted_control_plane_adopts_the_runs_its_agents_are_running() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let node = add_user(&data, "node-a", "node", "vision", "public");
    let mut daemon = two_nodes_with_agents(dir.path(), &data, "10");
    let url = daemon.url.clone();
    let mut extra = vec!["--kill-grace-s", "0.5"];
    extra.extend(job_user_args());
    let _agent = Agent::start_with(&url, &node, "node-a", 2, &extra);
    let script = format!(
        "echo child=$$ {}; sleep 8; echo done",
        crate::support::PIDNS
    );
    let body = json!({"id": "c1", "tenant": "vision", "gpus": 2,
                      "command": {"argv": ["sh", "-c", script]}});
    let (s, v) = submit(&url, &rae, &body);
    assert_eq!(s, 201, "{v}");
    eventually("c1 runs", || log_of(&url, &rae, "c1").contains("child="));
    let child = crate::support::JobPid::from_log(&log_of(&url, &rae, "c1"), "child=");

    daemon.signal("-9");
    let listen = url.trim_start_matches("http://");
    let cluster = dir.path().join("cluster.toml");
    let _again = Daemon::start_on(
        listen,
        &[],
        &data,
        &shared_cache(),
        &[
            "--cluster",
            cluster.to_str().unwrap(),
            "--agent-lease-s",
            "10",
        ],
    );
    let j = job(&url, &rae, "c1");
    assert_eq!(j["state"], "running", "{j}");
    assert_eq!(j["gpu_ids"], json!(["node-a/gpu0", "node-a/gpu1"]), "{j}");
    assert!(child.alive(), "the run goes on through the restart");
    wait_for_state(&url, &rae, "c1", "succeeded");
    let log = log_of(&url, &rae, "c1");
    assert_eq!(
        log.matches("handed to node").count(),
        1,
        "started again: {log}"
    );
    assert!(log.contains("adopted") && log.contains("done"), "{log}");
    assert!(!log.contains("requeued"), "{log}");
}

/// The test as node `node`'s agent asking for job `job`'s newest checkpoint as `attempt`: the
/// status, and the answer's bytes as text where they are (an error's JSON).
fn checkpoint_as(url: &str, token: &str, node: &str, job: &str, attempt: u64) -> (u16, String) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let response = agent
        .get(&format!(
            "{url}/v1/nodes/{node}/runs/checkpoint?job=vision/{job}&attempt={attempt}"
        ))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .expect("the daemon answers");
    let status = response.status().as_u16();
    let bytes = response.into_body().read_to_vec().unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[test]
fn training_runs_on_its_nodes_agent_and_resumes_from_its_checkpoint_on_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let node_a = add_user(&data, "node-a", "node", "vision", "public");
    let node_b = add_user(&data, "node-b", "node", "vision", "public");
    let daemon = two_nodes_with_agents(dir.path(), &data, "1.5");
    let url = daemon.url.clone();
    let agent_a = Agent::start(&url, &node_a, "node-a", 2);

    // The job trains on node-a's agent, on the two GPUs it was placed on (emulated: one CPU
    // replica each); its checkpoints go into the control plane's store.
    // 18,000 steps: still running when node-a's agent is killed below, however fast the CPU
    // backend gets.
    let train = crate::daemon::train_toml(600);
    let body = json!({"id": "t1", "tenant": "vision", "gpus": 2, "train": train});
    let (s, v) = submit(&url, &ada, &body);
    assert_eq!(s, 201, "{v}");
    eventually("t1 checkpoints on node-a", || {
        log_of(&url, &ada, "t1").contains("checkpoint at step")
    });
    let log = log_of(&url, &ada, "t1");
    assert!(
        log.contains("training on node node-a, GPUs node-a/gpu0, node-a/gpu1 (emulated GPUs 0,1"),
        "{log}"
    );
    let attempt = number_after(&log, "(attempt ");
    let (_, m) = request(
        &format!("{url}/v1/jobs/t1/metrics"),
        "GET",
        Some(&ada),
        None,
    );
    assert!(
        m["step"].as_u64().unwrap() >= 100,
        "steps reach the metrics: {m}"
    );

    // Only the node the run is on reads its data, as the run's current attempt.
    assert_eq!(checkpoint_as(&url, &node_a, "node-a", "t1", attempt).0, 200);
    let (s, v) = checkpoint_as(&url, &node_b, "node-b", "t1", attempt);
    assert_eq!(s, 403, "{v}");
    assert!(v.contains("has no run on node node-b"), "{v}");
    assert_eq!(checkpoint_as(&url, &ada, "node-a", "t1", attempt).0, 403);
    let (s, v) = checkpoint_as(&url, &node_a, "node-a", "t1", attempt + 1);
    assert_eq!(s, 409, "{v}");
    let forged = request(
        &format!(
            "{url}/v1/nodes/node-a/runs/checkpoint?job=vision/t1&attempt={}&step=1",
            attempt + 1
        ),
        "PUT",
        Some(&node_a),
        Some("not a checkpoint"),
    );
    assert_eq!(forged.0, 409, "{forged:?}");

    // node-a's agent is killed: the lease ends, the job is requeued and node-b's agent resumes
    // it from its newest checkpoint.
    let _agent_b = Agent::start(&url, &node_b, "node-b", 2);
    agent_a.signal("-KILL");
    let job = crate::daemon::wait_until_over(&format!("{url}/v1/jobs/t1"), &ada, 240);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        job["gpu_ids"],
        json!(["node-b/gpu0", "node-b/gpu1"]),
        "{job}"
    );
    let result = &job["result"];
    assert_eq!(result["ran_on"]["node"], "node-b", "{job}");
    assert_eq!(result["steps"], 600 * 30, "{job}");
    assert!(result["resumed_at_step"].as_u64().unwrap() >= 100, "{job}");
    let log = log_of(&url, &ada, "t1");
    assert!(
        log.contains("resuming from the checkpoint at step"),
        "{log}"
    );
    assert!(log.contains("training on node node-b"), "{log}");
}

#[test]
fn a_training_run_on_an_agent_reads_its_stored_dataset_raw_or_through_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher,writer", "vision", "internal");
    let node_a = add_user(&data, "node-a", "node", "vision", "public");
    let daemon = two_nodes_with_agents(dir.path(), &data, "5");
    let url = daemon.url.clone();
    let _agent = Agent::start(&url, &node_a, "node-a", 2);
    let put = |name: &str, bytes: &[u8]| {
        let at = format!("{url}/v1/datasets/{name}?tenant=vision&classification=internal");
        let (s, v) = crate::daemon::put(&at, &ada, bytes);
        assert_eq!(s, 201, "{v}");
    };
    put("spirals.csv", crate::daemon::spirals_csv().as_bytes());
    put("bad.csv", b"1,0,2\n3,1,4\n5,x,6\n");

    // Through the plugin: the control plane standardises the records in its sandbox and the
    // agent trains on what the plugin made. Raw: the agent parses the records as they stream.
    let train = crate::daemon::spirals_train(80);
    let raw = train
        .replace("preprocess = \"standardize\"\n", "")
        .replace("epochs = 80", "epochs = 2");
    let bad = train.replace("spirals.csv", "bad.csv");
    for (id, train) in [("ds1", &train), ("ds2", &raw), ("ds3", &bad)] {
        let body = json!({"id": id, "tenant": "vision", "gpus": 1, "train": train});
        let (s, v) = submit(&url, &ada, &body);
        assert_eq!(s, 201, "{v}");
    }
    let over = |id: &str| crate::daemon::wait_until_over(&format!("{url}/v1/jobs/{id}"), &ada, 120);
    let job = over("ds1");
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["ran_on"]["node"], "node-a", "{job}");
    assert!(
        job["result"]["test"]["accuracy"].as_f64().unwrap() > 0.9,
        "{job}"
    );
    let job = over("ds2");
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["steps"], 2 * (720 / 32 + 1), "{job}");
    let job = over("ds3");
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap()
            .contains("line 3: label `x` is not a number"),
        "{job}"
    );
    let log = log_of(&url, &ada, "ds3");
    assert!(log.contains("handed to node node-a's agent"), "{log}");
}

#[test]
fn a_node_the_cluster_file_lacks_registers_through_its_agent_and_stays_registered() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let node_z = add_user(&data, "node-z", "node", "vision", "public");
    let root = add_user(&data, "root", "admin", "vision", "secret");
    let mut daemon = two_nodes_with_agents(dir.path(), &data, "10");
    let url = daemon.url.clone();
    let nodes = |url: &str| request(&format!("{url}/v1/nodes"), "GET", Some(&rae), None).1;

    // node-z is in no cluster file: its agent registers it (rack r9, 3 GPUs), its GPUs serve,
    // and a job too large for any other node runs there. node-a and node-b have no agent.
    let mut extra = vec!["--rack", "r9"];
    extra.extend(job_user_args());
    let agent = Agent::start_with(&url, &node_z, "node-z", 3, &extra);
    eventually("node-z registers and serves", || {
        serving_gpus(&url, &rae) == 3
    });
    let listed = nodes(&url);
    let z = listed["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-z")
        .unwrap_or_else(|| panic!("{listed}"))
        .clone();
    assert_eq!(
        (z["rack"].as_str(), z["gpus"].as_u64()),
        (Some("r9"), Some(3)),
        "{z}"
    );
    let body = json!({"id": "z1", "tenant": "vision", "gpus": 3,
                      "command": {"argv": ["sh", "-c", "echo on=$GANTRY_GPU_IDS"]}});
    let (s, v) = submit(&url, &rae, &body);
    assert_eq!(s, 201, "{v}");
    wait_for_state(&url, &rae, "z1", "succeeded");
    let log = log_of(&url, &rae, "z1");
    assert!(
        log.contains("on=node-z/gpu0,node-z/gpu1,node-z/gpu2"),
        "{log}"
    );

    // A restart keeps the registration: the node is known (out of service) before its agent
    // comes back.
    drop(agent);
    daemon.signal("-9");
    let listen = url.trim_start_matches("http://");
    let cluster = dir.path().join("cluster.toml");
    let args = [
        "--cluster",
        cluster.to_str().unwrap(),
        "--agent-lease-s",
        "10",
    ];
    let mut again = Daemon::start_on(listen, &[], &data, &shared_cache(), &args);
    let node_z_is = |gpus: u64, rack: &str| {
        let listed = nodes(&url);
        (listed["nodes"].as_array().unwrap().iter())
            .any(|n| n["name"] == "node-z" && n["gpus"] == gpus && n["rack"] == rack)
    };
    assert!(node_z_is(3, "r9"), "{}", nodes(&url));
    assert_eq!(serving_gpus(&url, &rae), 0);
    let back = Agent::start_with(&url, &node_z, "node-z", 3, &extra);
    eventually("node-z serves again", || serving_gpus(&url, &rae) == 3);

    // Its agent comes back with a GPU fewer, in another rack: the node is registered again as
    // it is now (it was kept as it first registered), the GPU gone kept as missing: out of
    // service, still counted (it may come back), so a job that needs it waits; a restart keeps
    // that.
    drop(back);
    let mut moved = vec!["--rack", "r8"];
    moved.extend(job_user_args());
    let fewer = Agent::start_with(&url, &node_z, "node-z", 2, &moved);
    eventually("node-z registers again", || {
        node_z_is(3, "r8") && serving_gpus(&url, &rae) == 2
    });
    let (_, gpus) = request(&format!("{url}/v1/gpus"), "GET", Some(&rae), None);
    let missing: Vec<&str> = (gpus["gpus"].as_array().unwrap().iter())
        .filter(|g| g["missing"] == true)
        .filter_map(|g| g["id"].as_str())
        .collect();
    assert_eq!(missing, ["node-z/gpu2"], "{gpus}");
    let seven = json!({"id": "z7", "tenant": "vision", "gpus": 7,
                       "command": {"argv": ["true"]}});
    let (s, v) = submit(&url, &rae, &seven);
    assert_eq!(s, 201, "{v}");
    again.signal("-9");
    let _third = Daemon::start_on(listen, &[], &data, &shared_cache(), &args);
    assert!(node_z_is(3, "r8"), "{}", nodes(&url));

    // Its agent gone for good, an admin removes it (no one else may): its GPUs no longer count.
    eventually("node-z serves again", || serving_gpus(&url, &rae) == 2);
    drop(fewer);
    let remove = |token: &str| {
        request(
            &format!("{url}/v1/nodes/node-z"),
            "DELETE",
            Some(token),
            None,
        )
    };
    assert_eq!(remove(&rae).0, 403);
    // Once its lease has ended, no heartbeat of the agent killed is still on its way (one
    // would register the node again).
    eventually("node-z's lease ends", || {
        (nodes(&url)["nodes"].as_array().unwrap().iter())
            .any(|n| n["name"] == "node-z" && n["healthy_gpus"] == 0)
    });
    let (s, v) = remove(&root);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["retired"].as_array().map(Vec::len), Some(3), "{v}");
    // The job waiting for its GPUs can no longer be held: it fails, saying why.
    wait_for_state(&url, &rae, "z7", "failed");
    let log = log_of(&url, &rae, "z7");
    assert!(log.contains("can no longer be queued"), "{log}");
    let listed = nodes(&url);
    let names: Vec<&str> = (listed["nodes"].as_array().unwrap().iter())
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, ["node-a", "node-b"], "{listed}");
    let five = json!({"id": "z5", "tenant": "vision", "gpus": 5,
                      "command": {"argv": ["true"]}});
    assert_eq!(submit(&url, &rae, &five).0, 400);
    assert_eq!(remove(&root).0, 404);
}

/// Found by a review: a node's registration was kept before the host checked it, so one the
/// host refused (a GPU id the cluster file gave another node) was kept anyway, and every later
/// start of the daemon failed on it. With agents, a cluster file's GPU ids are now
/// `<node>/gpu<ordinal>` (a start naming another is refused, naming it: found by a second
/// review, such a GPU never came into service), so a registration no longer collides with the
/// file's; a registered node the file lists later is the file's, and the start goes on.
#[test]
fn a_registration_the_cluster_refuses_is_not_kept_and_never_stops_a_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let node_z = add_user(&data, "node-z", "node", "vision", "public");
    let cluster = dir.path().join("cluster.toml");
    // Node nx's one GPU has the id node n4's first GPU would have.
    std::fs::write(
        &cluster,
        format!(
            "{TWO_NODES}\n[[nodes]]\nname = \"nx\"\nrack = \"r0\"\n[[nodes.gpu]]\n\
             id = \"n4/gpu0\"\nmodel = \"H100-80GB\"\nmemory_total_mib = 81920\n"
        ),
    )
    .unwrap();
    let args = [
        "--cluster",
        cluster.to_str().unwrap(),
        "--agent-lease-s",
        "10",
    ];
    // Bounded: a start that is not refused would serve until killed.
    let refused = Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_gantry"))
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(args)
        .env("GANTRY_CACHE_DIR", shared_cache())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`n4/gpu0`") && stderr.contains("nx/gpu<ordinal>"),
        "{stderr}"
    );
    std::fs::write(&cluster, TWO_NODES).unwrap();
    let mut daemon = Daemon::start_with(&data, &shared_cache(), &args);
    assert_eq!(
        heartbeat(&daemon.url, &node_z, "node-z", &two_gpus()).0,
        200
    );
    daemon.signal("-TERM");
    // The file lists node-z now: the file's holds.
    std::fs::write(
        &cluster,
        format!(
            "{TWO_NODES}\n[[nodes]]\nname = \"node-z\"\nrack = \"r0\"\n\
             gpus = {{ count = 2, model = \"H100-80GB\", memory_mib = 81920 }}\n"
        ),
    )
    .unwrap();
    let daemon = Daemon::start_with(&data, &shared_cache(), &args);
    let url = daemon.url.clone();
    let health = || request(&format!("{url}/v1/health"), "GET", None, None);
    let (s, v) = health();
    assert_eq!(s, 200, "a kept registration the file lists now is left out");
    // Found by a review: with every agent gone the health check said "ok". Up, but saying
    // that nothing can run until an agent holds a lease.
    assert_eq!(v["status"], "degraded: no GPU serves", "{v}");
    let (s, v) = heartbeat(&url, &node_z, "node-z", &two_gpus());
    assert_eq!(s, 200, "{v}");
    crate::support::eventually("the health check says ok once a GPU serves", || {
        health().1["status"] == "ok"
    });
}

/// A devices file of node-a's two GPUs, `healthy` saying which are fit.
fn devices(healthy: [bool; 2]) -> String {
    (0..2)
        .map(|k| {
            format!(
                "[[gpus]]\nordinal = {k}\nname = \"H100-80GB\"\nmemory_mib = 81920\n\
                 pci_bus_id = \"0000:1{k}:00.0\"\nhealthy = {}\n",
                healthy[k]
            )
        })
        .collect()
}

#[test]
fn a_gpu_its_devices_file_calls_unfit_leaves_service_and_its_job_is_requeued() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let node = add_user(&data, "node-a", "node", "vision", "public");
    let daemon = two_nodes_with_agents(dir.path(), &data, "10");
    let url = daemon.url.clone();

    // A devices file that does not read stops the agent at once, naming the file and line.
    let file = dir.path().join("devices.toml");
    std::fs::write(&file, "[[gpus]]\nordinal = 0\nhealthy = maybe\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["agent", "--node", "node-a", "--url", &url, "--devices"])
        .arg(&file)
        .env("GANTRY_TOKEN", &node)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("devices.toml") && stderr.contains("line 3"),
        "{stderr}"
    );

    std::fs::write(&file, devices([true, true])).unwrap();
    let mut args = vec!["--devices", file.to_str().unwrap(), "--kill-grace-s", "0.5"];
    args.extend(job_user_args());
    let _agent = Agent::spawn(&url, &node, "node-a", &args);
    eventually("both GPUs serve", || serving_gpus(&url, &rae) == 2);
    let body = json!({"id": "c1", "tenant": "vision", "gpus": 2,
                      "command": {"argv": ["sleep", "300"]}});
    assert_eq!(submit(&url, &rae, &body).0, 201);
    wait_for_state(&url, &rae, "c1", "running");
    // Its log names the devices it runs on by their PCI addresses.
    let line =
        "runs on node node-a: GPUs node-a/gpu0, node-a/gpu1 (PCI 0000:10:00.0, 0000:11:00.0)";
    eventually("the devices line", || {
        log_of(&url, &rae, "c1").contains(line)
    });

    // The file calls GPU 1 unfit: it leaves service, and the job on it goes back to the queue
    // (its run stopped).
    std::fs::write(&file, devices([true, false])).unwrap();
    eventually("GPU 1 leaves service", || serving_gpus(&url, &rae) == 1);
    wait_for_state(&url, &rae, "c1", "pending");
    let log = log_of(&url, &rae, "c1");
    assert!(log.contains("reported its GPU unfit"), "{log}");
    // A file that stops reading changes nothing: the last report stands.
    std::fs::write(&file, "[[gpus]\n").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(serving_gpus(&url, &rae), 1);
    // Fit again: the job runs again.
    std::fs::write(&file, devices([true, true])).unwrap();
    wait_for_state(&url, &rae, "c1", "running");
}

/// A training job on node agents trains with a replica per GPU it is placed on: its sizes are
/// checked that way when it is submitted (a job over the limits that way was once accepted,
/// and failed only when its run started).
#[test]
fn a_training_job_is_checked_at_submission_with_a_replica_per_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher", "vision", "public");
    let cluster = dir.path().join("cluster.toml");
    std::fs::write(&cluster, TWO_NODES).unwrap();
    let limits = dir.path().join("limits.toml");
    std::fs::write(&limits, "max_replicas = 1\n").unwrap();
    let args = [
        "--cluster",
        cluster.to_str().unwrap(),
        "--agent-lease-s",
        "10",
        "--train-limits",
        limits.to_str().unwrap(),
    ];
    let daemon = Daemon::start_with(&data, &shared_cache(), &args);
    let job = |gpus: u32| {
        json!({"id": format!("t{gpus}"), "tenant": "vision", "gpus": gpus,
               "train": crate::daemon::train_toml(1)})
    };
    let (s, v) = submit(&daemon.url, &rae, &job(2));
    assert_eq!(s, 400, "{v}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("on 2 GPU(s)") && error.contains("replicas"),
        "{v}"
    );
    assert_eq!(submit(&daemon.url, &rae, &job(1)).0, 201);
}

/// `gantry up --emulate-gpus 2` (what `gantry up` does with the real GPUs on a machine whose
/// CUDA driver finds some): this machine is one node, run by an agent inside the daemon under
/// a node identity of its own. A command job and a training job run on their placed GPUs; a
/// SIGTERM stops the agent's runs first, their ends reported (the training job back in the
/// queue), and the next start resumes it from its checkpoint.
#[test]
fn gantry_up_runs_this_machines_gpus_through_its_own_agent() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let mut extra = vec!["--emulate-gpus", "2", "--kill-grace-s", "0.5"];
    extra.extend(job_user_args());
    let mut daemon = Daemon::start_with(&data, &shared_cache(), &extra);
    let url = daemon.url.clone();
    // It opens no GPU device node: its GPU is emulated, and CUDA_VISIBLE_DEVICES alone only hid
    // GPUs from CUDA (a program that opened /dev/nvidia<N> itself reached every GPU).
    // Not under /tmp or /var/tmp: a run has its own of every world-writable directory.
    let dev = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let nodes = crate::support::gpu_device_nodes(dev.path());
    let mut argv = vec![
        json!("sh"),
        json!("-c"),
        json!(
            r#"echo saw=$GANTRY_GPU_IDS devices=$CUDA_VISIBLE_DEVICES; for n in "$@"; do cat "$n" 2>&1; done; true"#
        ),
        json!("sh"),
    ];
    argv.extend(nodes.iter().map(|n| json!(n)));
    let saw = json!({"id": "saw", "tenant": "vision", "gpus": 1, "command": {"argv": argv}});
    assert_eq!(submit(&url, &rae, &saw).0, 201);
    // Long enough to be running still when the SIGTERM below reaches the agent (up to a
    // heartbeat later): 18,000 steps. With 1,800, once the CPU backend stopped handing each
    // GEMM to a pool thread, the job finished first (0.6 s in a debug build).
    let long = json!({"id": "long", "tenant": "vision", "gpus": 1,
                      "train": crate::daemon::train_toml(600)});
    assert_eq!(submit(&url, &rae, &long).0, 201);
    wait_for_state(&url, &rae, "saw", "succeeded");
    let log = log_of(&url, &rae, "saw");
    assert!(log.contains("runs on node local: GPUs local/gpu"), "{log}");
    assert!(
        log.contains("saw=local/gpu") && log.contains("devices="),
        "{log}"
    );
    // Where the machine's cgroups have device control (v2, or v1's `devices`), as here.
    let v1_devices = std::path::Path::new("/sys/fs/cgroup/devices/cgroup.procs").is_file();
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").is_file();
    if crate::support::cgroups_here() && (v1_devices || v2) {
        assert!(
            log.contains("no NVIDIA GPU device node open to it"),
            "{log}"
        );
        for node in &nodes {
            assert!(
                log.contains(&format!("{}: Operation not permitted", node.display())),
                "{log}"
            );
        }
    }
    eventually("a checkpoint of the training job", || {
        log_of(&url, &rae, "long").contains("checkpoint at step")
    });
    let log = log_of(&url, &rae, "long");
    assert!(
        log.contains("training on node local, GPUs local/gpu"),
        "{log}"
    );

    let stopping = std::time::Instant::now();
    daemon.signal("-TERM");
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(30),
        "the daemon and its agent took {:?} to stop",
        stopping.elapsed()
    );
    let daemon = Daemon::start_with(&data, &shared_cache(), &extra);
    let url = daemon.url.clone();
    let job = crate::support::until_over(&url, &rae, "long", std::time::Duration::from_secs(120));
    let log = log_of(&url, &rae, "long");
    assert_eq!(job["state"], "succeeded", "{job}\n{log}");
    assert!(log.contains("the daemon stopped"), "{log}");
    assert!(job["result"]["resumed_at_step"].as_u64() > Some(0), "{job}");
}

/// Found by a review: an admin's `POST /v1/users` for the name of `gantry up`'s own node
/// identity (`local`) replaced its roles: its heartbeats were refused from then on, its GPUs
/// left service, and the daemon refused its next start. A node identity stays one, and no
/// user becomes one, by an update (409).
#[test]
fn an_update_of_a_user_never_takes_over_or_makes_a_node_identity() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let root = add_user(&data, "root", "admin", "vision", "secret");
    add_user(&data, "rae", "researcher", "vision", "public");
    let mut daemon = Daemon::start_with(&data, &shared_cache(), &["--emulate-gpus", "2"]);
    let url = daemon.url.clone();
    eventually("this machine's GPUs in service", || {
        serving_gpus(&url, &root) == 2
    });
    let users = format!("{url}/v1/users");
    for (name, roles, status) in [
        ("local", json!(["admin"]), 409),
        ("rae", json!(["node"]), 409),
        // Found by a review of the rule: still a node, and an admin too, stopped the next start.
        ("local", json!(["node", "admin"]), 400),
    ] {
        let body = json!({"name": name, "roles": roles, "tenants": ["vision"]}).to_string();
        let (s, v) = request(&users, "POST", Some(&root), Some(&body));
        assert_eq!(s, status, "{name}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains("node identity"),
            "{v}"
        );
    }
    let body = json!({"name": "rae", "roles": ["researcher", "runner"], "tenants": ["vision"]});
    let (s, v) = request(&users, "POST", Some(&root), Some(&body.to_string()));
    assert_eq!(s, 201, "an update that keeps what it is: {v}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(serving_gpus(&url, &root), 2, "its GPUs stay in service");
    daemon.signal("-TERM");
    // Found by a review: `gantry user add` on the stopped daemon's directory skipped both
    // rules: a person made a node kept their token, which then spoke for a node.
    for (name, roles) in [("rae", "node"), ("local", "admin"), ("mixed", "node,admin")] {
        let out = crate::support::gantry(
            &[
                "user",
                "add",
                name,
                "--roles",
                roles,
                "--data-dir",
                data.to_str().unwrap(),
            ],
            dir.path(),
        );
        let (_, err) = crate::support::text(&out);
        assert!(!out.status.success(), "{name} as {roles}");
        assert!(err.contains("node identity"), "{name} as {roles}: {err}");
    }
    let daemon = Daemon::start_with(&data, &shared_cache(), &["--emulate-gpus", "2"]);
    assert_eq!(
        request(&format!("{}/v1/health", daemon.url), "GET", None, None).0,
        200
    );
}

/// Found by a review: runs handed to an agent reserved nothing from the training budget, and
/// agents held them to the built-in limits, not the operator's: under `gantry up
/// --emulate-gpus` (its own agent runs the jobs, in its process) three jobs of 673 MiB each
/// ran at once under a 1,200 MiB budget, and one over `--train-limits` ran. An agent's runs
/// share its budget (with its daemon, for `gantry up`'s own) and its limits.
#[test]
fn an_agents_training_runs_share_the_memory_budget_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let limits = dir.path().join("limits.toml");
    std::fs::write(&limits, "max_memory_mib = 100\n").unwrap();
    let extra = [
        "--emulate-gpus",
        "2",
        "--train-limits",
        limits.to_str().unwrap(),
        "--train-memory-mib",
        "100",
    ];
    let daemon = Daemon::start_with(&data, &shared_cache(), &extra);
    let url = daemon.url.clone();
    // Two hidden layers of 1,024: about 65 MiB each, so two do not fit in 100.
    let text = crate::daemon::train_toml(2).replace("hidden = [32, 32]", "hidden = [1024, 1024]");
    assert!(text.contains("[1024, 1024]"), "{text}");
    for id in ["m1", "m2"] {
        let job = json!({"id": id, "tenant": "vision", "gpus": 1, "train": text});
        let (s, v) = submit(&url, &rae, &job);
        assert_eq!(s, 201, "{v}");
    }
    for id in ["m1", "m2"] {
        let job = crate::support::until_over(&url, &rae, id, std::time::Duration::from_secs(240));
        assert_eq!(
            job["state"],
            "succeeded",
            "{job}\n{}",
            log_of(&url, &rae, id)
        );
    }
    let waited = ["m1", "m2"]
        .iter()
        .filter(|id| log_of(&url, &rae, id).contains("waiting for memory"))
        .count();
    assert_eq!(waited, 1, "one waited for the other");
    // Over the operator's limits: refused at submission, as the agent would refuse it.
    let big = crate::daemon::train_toml(2).replace("hidden = [32, 32]", "hidden = [2048, 2048]");
    let job = json!({"id": "big", "tenant": "vision", "gpus": 1, "train": big});
    let (s, v) = submit(&url, &rae, &job);
    assert_eq!(s, 400, "{v}");
}

/// Found by a review: a run handed to an agent trains with a replica per GPU it was placed on,
/// but reserved from the budget what its text's `replicas` (one) needs: a job on two GPUs
/// (81 MiB) reserved 65, so it and a one-GPU job (65) ran at once under a 140 MiB budget.
#[test]
fn a_run_on_several_gpus_reserves_memory_for_a_replica_each() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let limits = dir.path().join("limits.toml");
    std::fs::write(&limits, "max_memory_mib = 100\n").unwrap();
    let extra = [
        "--emulate-gpus",
        "3",
        "--train-limits",
        limits.to_str().unwrap(),
        "--train-memory-mib",
        "140",
    ];
    let daemon = Daemon::start_with(&data, &shared_cache(), &extra);
    let url = daemon.url.clone();
    // Two hidden layers of 1,024: 65 MiB with one replica, 81 with two.
    let text = crate::daemon::train_toml(2).replace("hidden = [32, 32]", "hidden = [1024, 1024]");
    for (id, gpus) in [("two", 2), ("one", 1)] {
        let job = json!({"id": id, "tenant": "vision", "gpus": gpus, "train": text});
        let (s, v) = submit(&url, &rae, &job);
        assert_eq!(s, 201, "{v}");
    }
    for id in ["two", "one"] {
        let job = crate::support::until_over(&url, &rae, id, std::time::Duration::from_secs(240));
        let log = log_of(&url, &rae, id);
        assert_eq!(job["state"], "succeeded", "{job}\n{log}");
    }
    let waited: Vec<String> = ["two", "one"]
        .iter()
        .map(|id| log_of(&url, &rae, id))
        .filter(|log| log.contains("waiting for memory"))
        .collect();
    assert_eq!(waited.len(), 1, "one waited for the other: {waited:?}");
    assert!(
        waited[0].contains("it may need 81 MiB") || waited[0].contains("have 81 of"),
        "the two-GPU run counts two replicas: {}",
        waited[0]
    );
}

/// A CA, a server certificate for loopback and client certificates naming `nodes`, signed by
/// it, and one naming node-a from a stranger CA: PEM files under `dir` (`ca.pem`, `server.pem`,
/// `server.key`, `<node>.pem`, `<node>.key`, `stranger.pem`, `stranger.key`).
fn node_pki(dir: &std::path::Path, nodes: &[&str]) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose as Eku, IsCa,
        KeyPair,
    };
    let ca_of = || {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    };
    let (ca, stranger) = (ca_of(), ca_of());
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    let sign = |name: &str, names: Vec<String>, usage: Eku, by: &CertifiedIssuer<'_, KeyPair>| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        write(
            &format!("{name}.pem"),
            &params.signed_by(&key, by).unwrap().pem(),
        );
        write(&format!("{name}.key"), &key.serialize_pem());
        crate::support::owner_only(&dir.join(format!("{name}.key")));
    };
    write("ca.pem", &ca.pem());
    sign("server", vec!["127.0.0.1".into()], Eku::ServerAuth, &ca);
    for node in nodes {
        sign(node, vec![node.to_string()], Eku::ClientAuth, &ca);
    }
    sign(
        "stranger",
        vec!["node-a".into()],
        Eku::ClientAuth,
        &stranger,
    );
}

/// A heartbeat of node-a over HTTPS trusting `dir/ca.pem`, presenting `dir/<cert>.pem` when
/// given: its status, or `None` when the connection failed (a handshake refused).
fn heartbeat_with(
    url: &str,
    dir: &std::path::Path,
    cert: Option<&str>,
    token: &str,
) -> Option<u16> {
    heartbeat_as(url, "node-a", dir, cert, token)
}

/// [`heartbeat_with`], as node `node`.
fn heartbeat_as(
    url: &str,
    node: &str,
    dir: &std::path::Path,
    cert: Option<&str>,
    token: &str,
) -> Option<u16> {
    let read = |name: String| std::fs::read(dir.join(name)).unwrap();
    let pem_certs = |pem: &[u8]| -> Vec<ureq::tls::Certificate<'static>> {
        ureq::tls::parse_pem(pem)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c.to_owned()),
                _ => None,
            })
            .collect()
    };
    let mut tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(
        &pem_certs(&read("ca.pem".into())),
    ));
    if let Some(name) = cert {
        let key_pem = read(format!("{name}.key"));
        let key = ureq::tls::parse_pem(&key_pem)
            .find_map(|i| match i {
                Ok(ureq::tls::PemItem::PrivateKey(k)) => Some(k.to_owned()),
                _ => None,
            })
            .unwrap();
        let chain = pem_certs(&read(format!("{name}.pem")));
        tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
    }
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(tls.build())
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .new_agent();
    let response = agent
        .post(format!("{url}/v1/nodes/{node}/heartbeat"))
        .header("Authorization", &format!("Bearer {token}"))
        .send_json(two_gpus())
        .ok()?;
    Some(response.status().as_u16())
}

/// With `gantry up --client-ca`, a node's requests need a client certificate of that CA naming
/// the node, besides its token: the node's token alone, or with another node's certificate, is
/// refused (403), a certificate of another CA fails the handshake; users need none; an agent
/// given its certificate serves and runs its jobs.
#[test]
fn with_a_client_ca_a_node_speaks_only_with_a_certificate_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(&dir.path().join("data"));
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let node_a = add_user(&data, "node-a", "node", "vision", "public");
    let upper = add_user(&data, "NODE-A", "node", "vision", "public");
    let pki = dir.path();
    node_pki(pki, &["node-a", "node-b"]);
    let cluster = dir.path().join("cluster.toml");
    std::fs::write(&cluster, TWO_NODES).unwrap();
    let path = |name: &str| pki.join(name).to_str().unwrap().to_string();
    let (server, key, ca) = (path("server.pem"), path("server.key"), path("ca.pem"));
    let args = [
        "--cluster",
        cluster.to_str().unwrap(),
        "--agent-lease-s",
        "10",
        "--tls-cert",
        &server,
        "--tls-key",
        &key,
        "--client-ca",
        &ca,
    ];
    let daemon = Daemon::start_with(&data, &shared_cache(), &args);
    let url = daemon.url.replace("http://", "https://");

    assert_eq!(heartbeat_with(&url, pki, None, &node_a), Some(403));
    assert_eq!(
        heartbeat_with(&url, pki, Some("node-b"), &node_a),
        Some(403)
    );
    assert_eq!(heartbeat_with(&url, pki, Some("stranger"), &node_a), None);
    assert_eq!(
        heartbeat_with(&url, pki, Some("node-a"), &node_a),
        Some(200)
    );
    // Found by a review: certificates match names as DNS does (case aside), so node-a's passed
    // for a node NODE-A, whose token then spoke as it. One spelling only.
    assert_eq!(
        heartbeat_as(&url, "NODE-A", pki, Some("node-a"), &upper),
        Some(403)
    );

    // The agent with its certificate; a user without one.
    let mut agent_args = vec![
        "--emulate-gpus",
        "2",
        "--ca-cert",
        &ca,
        "--kill-grace-s",
        "0.5",
    ];
    let (cert, cert_key) = (path("node-a.pem"), path("node-a.key"));
    agent_args.extend(["--client-cert", &cert, "--client-key", &cert_key]);
    agent_args.extend(job_user_args());
    let _agent = Agent::spawn(&url, &node_a, "node-a", &agent_args);
    let out = crate::support::gantry_as(
        &rae,
        &[
            "submit",
            "--url",
            &url,
            "--ca-cert",
            &ca,
            "--tenant",
            "vision",
            "--gpus",
            "1",
            "--id",
            "c1",
            "--",
            "sh",
            "-c",
            "echo on $GANTRY_GPU_IDS",
        ],
        &shared_cache(),
    );
    let (_, stderr) = crate::support::text(&out);
    assert!(out.status.success(), "{stderr}");
    eventually("c1 runs on node-a, its log read over TLS", || {
        let out = crate::support::gantry_as(
            &rae,
            &["logs", "c1", "--url", &url, "--ca-cert", &ca],
            &shared_cache(),
        );
        crate::support::text(&out).0.contains("on node-a/gpu")
    });
}

/// `gantry up` running its own agent, as root without `--job-user`: a command job, which its
/// agent would refuse to run as root, is refused when submitted (it was accepted, then failed
/// on the agent). As another user the same job is accepted and runs.
#[test]
fn a_command_job_this_machines_agent_cannot_run_is_refused_when_submitted() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let daemon = Daemon::start_with(&data, &shared_cache(), &["--emulate-gpus", "1"]);
    let body = json!({"id": "c1", "tenant": "vision", "gpus": 1,
                      "command": {"argv": ["true"]}});
    let (s, v) = submit(&daemon.url, &rae, &body);
    if crate::support::root() {
        assert_eq!(s, 400, "{v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap_or_default()
                .contains("--job-user"),
            "{v}"
        );
    } else {
        assert_eq!(s, 201, "{v}");
        wait_for_state(&daemon.url, &rae, "c1", "succeeded");
    }
}
