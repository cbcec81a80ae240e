//! A replicated control plane: three `gantry up --etcd` processes on one real etcd (Debian's
//! etcd-server, on loopback). One leads; followers send clients to it; `kill -9` of the leader,
//! again and again while jobs are submitted and run, loses no accepted job and never gives a
//! GPU to two jobs, and a new leader answers within the bound the README states (twice the
//! lease); a leader paused past its lease is replaced, and on waking it stops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry_etcd::testing::EtcdProcess;
use serde_json::{Value, json};

use crate::support::{add_user, init_data_dir, job_user_args, shared_cache};

/// The leader's lease in these tests, seconds.
const LEASE_S: u64 = 2;

/// Eight GPUs, so that jobs wait for each other's and placements are contended (on one node:
/// a command job runs on one node).
const EIGHT_GPUS: &str = r#"
[[tenants]]
name = "vision"

[[nodes]]
name = "node-a"
rack = "r0"
gpus = { count = 8, model = "H100-80GB", memory_mib = 81920 }
"#;

/// Three nodes of four GPUs, each served by its agent.
const THREE_NODES: &str = r#"
[[tenants]]
name = "vision"

[[nodes]]
name = "node-a"
rack = "r0"
gpus = { count = 4, model = "H100-80GB", memory_mib = 81920 }

[[nodes]]
name = "node-b"
rack = "r0"
gpus = { count = 4, model = "H100-80GB", memory_mib = 81920 }

[[nodes]]
name = "node-c"
rack = "r0"
gpus = { count = 4, model = "H100-80GB", memory_mib = 81920 }
"#;

/// What a command job of the kill loop runs: it prints the GPUs it saw, then sleeps `{pause}`.
const SAW: &str = "echo saw=$GANTRY_GPU_IDS devices=$CUDA_VISIBLE_DEVICES; sleep {pause}";

/// A `gantry up --etcd` replica on its own copy of the data directory.
struct Replica {
    dir: PathBuf,
    etcd: String,
    cache: PathBuf,
    child: Option<Child>,
    url: String,
    /// More arguments of `gantry up`.
    extra: Vec<String>,
}

impl Replica {
    /// A replica compiling its plugins and policy into `cache`.
    fn start_cached(dir: &Path, etcd: &str, cache: &Path) -> Replica {
        Self::start_with(dir, etcd, cache, &[])
    }

    /// A replica given `extra` arguments of `gantry up` besides.
    fn start_with(dir: &Path, etcd: &str, cache: &Path, extra: &[&str]) -> Replica {
        let mut r = Replica {
            dir: dir.to_path_buf(),
            etcd: etcd.to_string(),
            cache: cache.to_path_buf(),
            child: None,
            url: String::new(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        r.restart();
        r
    }

    /// Starts it (again: on the address it had, so that agents given every replica's URL
    /// find it).
    fn restart(&mut self) {
        let lease = LEASE_S.to_string();
        let listen = match self.url.strip_prefix("http://") {
            Some(addr) => addr.to_string(),
            None => "127.0.0.1:0".to_string(),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["up", "--listen", &listen, "--data-dir"])
            .arg(&self.dir)
            .args(["--etcd", &self.etcd, "--leader-lease-s", &lease])
            .arg("--cluster")
            .arg(self.dir.join("cluster.toml"))
            .args(job_user_args())
            .args(["--kill-grace-s", "0.5"])
            .args(&self.extra)
            .env("GANTRY_CACHE_DIR", &self.cache)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            // Its log, every start's, for a failing test to show.
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("replica.log"))
                    .expect("a replica's log"),
            )
            .spawn()
            .expect("starting gantry up --etcd");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("gantry up --etcd said {line:?}"));
        self.url = format!("http://{addr}");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Whether it leads, by its health.
    fn leads(&self) -> bool {
        self.child.is_some()
            && try_request(&format!("{}/v1/health", self.url), "GET", None, None)
                .is_some_and(|(_, v)| v["role"] == "leader")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A request that may find nobody listening (`None`), bounded in time.
fn try_request(
    url: &str,
    method: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let auth = token.map(|t| format!("Bearer {t}"));
    let response = match method {
        "POST" => {
            let mut r = agent.post(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send_json(body.cloned().unwrap_or(Value::Null))
        }
        _ => {
            let mut r = agent.get(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
    }
    .ok()?;
    let status = response.status().as_u16();
    let value = response.into_body().read_json().unwrap_or(Value::Null);
    Some((status, value))
}

/// `POST /v1/jobs` as a client of the control plane does it: through any replica, then to the
/// leader a follower names; while a dead leader is still named (until its lease ends), again.
fn submit_through(via: &str, token: &str, body: &Value) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(4 * LEASE_S + 10);
    loop {
        let answer = try_request(&format!("{via}/v1/jobs"), "POST", Some(token), Some(body));
        let answer = match answer {
            Some((503, v)) => match v["leader"].as_str() {
                Some(l) => try_request(&format!("{l}/v1/jobs"), "POST", Some(token), Some(body)),
                None => None,
            },
            a => a,
        };
        match answer {
            Some((503, _)) | None => {}
            Some(a) => return a,
        }
        assert!(Instant::now() < deadline, "no leader took {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `POST /v1/jobs` through any replica until one takes it (anything but 503), within `within`,
/// restarting replicas that exit meanwhile as a supervisor would; on failure, the replicas'
/// logs are shown.
fn submit_supervised(
    replicas: &mut [Replica],
    token: &str,
    body: &Value,
    within: Duration,
) -> (u16, Value) {
    let start = Instant::now();
    loop {
        supervise(replicas);
        for r in replicas.iter() {
            let answer = try_request(
                &format!("{}/v1/jobs", r.url),
                "POST",
                Some(token),
                Some(body),
            );
            let answer = match answer {
                Some((503, v)) => v["leader"].as_str().and_then(|l| {
                    try_request(&format!("{l}/v1/jobs"), "POST", Some(token), Some(body))
                }),
                a => a,
            };
            if let Some(a) = answer.filter(|(s, _)| *s != 503) {
                eprintln!("{body} taken after {:?}", start.elapsed());
                return a;
            }
        }
        if start.elapsed() > within {
            show_logs(replicas);
            panic!("no replica took {body} within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prints the tail of each replica's log, for a failing test.
fn show_logs(replicas: &[Replica]) {
    for r in replicas {
        let log = std::fs::read_to_string(r.dir.join("replica.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!(
            "--- {} (tail, newest first)\n{}",
            r.dir.display(),
            tail.join("\n")
        );
    }
}

/// The index of the replica that leads, waiting up to `within`; and how long it took.
fn leader_within(replicas: &mut [Replica], within: Duration) -> (usize, Duration) {
    let start = Instant::now();
    loop {
        supervise(replicas);
        if let Some(i) = replicas.iter().position(Replica::leads) {
            return (i, start.elapsed());
        }
        assert!(start.elapsed() < within, "no leader within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts again every replica whose process ended by itself (a leader that lost its lease
/// exits, for its supervisor to start it again), as systemd would.
fn supervise(replicas: &mut [Replica]) {
    for r in replicas.iter_mut() {
        let ended = r
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some());
        if ended {
            r.child = None;
            r.restart();
        }
    }
}

/// The control-plane tests run one at a time: each is a handful of processes on a lease, and
/// they would starve each other's renewals on a small machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A copy of directory `from` at `to`.
/// `n` replicas on etcd `etcd` (URLs), each on its own copy (`dir/r0`, ...) of data directory
/// `data` with cluster file `cluster`, given `extra` arguments of `gantry up` besides.
fn replicas_on(
    dir: &Path,
    data: &Path,
    etcd: &str,
    n: usize,
    cluster: &str,
    extra: &[&str],
) -> Vec<Replica> {
    (0..n)
        .map(|i| {
            let d = dir.join(format!("r{i}"));
            copy_dir(data, &d);
            std::fs::write(d.join("cluster.toml"), cluster).unwrap();
            Replica::start_with(&d, etcd, &shared_cache(), extra)
        })
        .collect()
}

/// Installs, through the leader at `url` as admin `admin`, the shipped policy with researchers
/// held to 2 GPUs a job (built under `dir`); its revision.
fn install_strict_policy(dir: &Path, url: &str, admin: &str) -> Value {
    let bundle = dir.join("strict.tar.gz");
    crate::support::build_policy(
        &crate::support::strict_policy(dir),
        "gantry/authz/decision",
        &bundle,
        &shared_cache(),
    );
    let (s, v) = crate::support::send_raw(
        "POST",
        &format!("{url}/v1/policy"),
        admin,
        &std::fs::read(&bundle).unwrap(),
    );
    assert_eq!(s, 200, "{v}");
    v["revision"].clone()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A small fixed-seed generator (the seed is printed; `GANTRY_KILL_SEED` replays another).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Three control planes and three node agents (emulated GPUs): jobs of both kinds run on the
/// agents while the leader is killed again and again; no accepted job is lost, no GPU is held by
/// two jobs, a new leader answers within the bound, and every run saw exactly the GPUs its job
/// was placed on.
#[test]
fn killing_the_leader_again_and_again_loses_no_job_and_never_shares_a_gpu() {
    let _serial = one_at_a_time();
    let Some(etcd) = EtcdProcess::start_or_skip("killing_the_leader_again_and_again") else {
        return;
    };
    kill_loop(&etcd.url(), 20261203);
}

/// The kill loop again, the control plane's state on a three-member etcd cluster.
#[test]
fn killing_the_leader_again_and_again_on_three_etcd_members_loses_no_job() {
    let _serial = one_at_a_time();
    let Some(etcd) = gantry_etcd::testing::EtcdCluster::start_or_skip("kill_loop_three_members", 3)
    else {
        return;
    };
    kill_loop(&etcd.urls(), 20261204);
}

/// Three replicas on etcd `etcd` (URLs) and three node agents; the leader killed 20 times
/// (seeded by `seed`, or `GANTRY_KILL_SEED`) while jobs of both kinds are submitted and run.
fn kill_loop(etcd: &str, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(&dir.path().join("d0"));
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let nodes = ["node-a", "node-b", "node-c"];
    let node_tokens: Vec<String> = nodes
        .iter()
        .map(|n| add_user(&data, n, "node", "vision", "public"))
        .collect();
    let agent_lease = ["--agent-lease-s", "3"];
    let mut replicas = replicas_on(dir.path(), &data, etcd, 3, THREE_NODES, &agent_lease);
    let bound = Duration::from_secs(2 * LEASE_S);
    let (mut leader, _) = leader_within(&mut replicas, bound + Duration::from_secs(10));
    // Each agent is given every replica's URL, as the README's three-node setup does.
    let urls: Vec<&str> = replicas.iter().map(|r| r.url.as_str()).collect();
    let urls = urls.join(",");
    let mut extra = vec!["--kill-grace-s", "0.5"];
    extra.extend(job_user_args());
    let _agents: Vec<crate::agents::Agent> = nodes
        .iter()
        .zip(&node_tokens)
        .map(|(n, t)| crate::agents::Agent::start_with(&urls, t, n, 4, &extra))
        .collect();

    let seed = std::env::var("GANTRY_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(seed);
    eprintln!("kill loop seed {seed}");
    let mut rng = Lcg(seed);
    let mut accepted: Vec<String> = Vec::new();
    let mut failovers = Vec::new();
    for round in 0..20 {
        // Jobs submitted through any replica: followers send the client to the leader.
        for k in 0..=rng.below(3) {
            let id = format!("j{round}-{k}");
            let body = if rng.below(3) == 0 {
                json!({"id": id, "tenant": "vision", "gpus": 1 + rng.below(2),
                       "train": crate::daemon::train_toml(1 + rng.below(2) as u32)})
            } else {
                let pause = format!("0.{}", 1 + rng.below(5));
                json!({"id": id, "tenant": "vision", "gpus": 1 + rng.below(4),
                       "command": {"argv": ["sh", "-c", SAW.replace("{pause}", &pause)]}})
            };
            let via = &replicas[rng.below(3) as usize].url;
            let (s, v) = submit_through(via, &rae, &body);
            assert_eq!(s, 201, "round {round}: {v}");
            accepted.push(id);
        }
        std::thread::sleep(Duration::from_millis(rng.below(600)));
        replicas[leader].kill();
        let (next, took) = leader_within(&mut replicas, bound + Duration::from_secs(10));
        failovers.push(took);
        assert!(
            took <= bound,
            "round {round}: a new leader after {took:?}, over {bound:?}"
        );
        replicas[leader].restart();
        leader = next;
        check_jobs(&replicas[leader].url, &rae, &accepted, round);
    }
    failovers.sort();
    eprintln!(
        "failover over 20 kills of the leader: median {:?}, max {:?}",
        failovers[failovers.len() / 2],
        failovers.last().unwrap()
    );

    // A leader paused past its lease is replaced; on waking it finds it no longer leads and
    // stops, its writes refused.
    replicas[leader].signal("-STOP");
    std::thread::sleep(Duration::from_secs(LEASE_S));
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let start = Instant::now();
    while !others.iter().any(|i| replicas[*i].leads()) {
        assert!(
            start.elapsed() < bound + Duration::from_secs(10),
            "nobody took over"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    replicas[leader].signal("-CONT");
    let child = replicas[leader].child.as_mut().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the paused leader never stopped");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "a deposed leader exits with an error");
    let (now_leader, _) = leader_within(&mut replicas, bound);
    check_jobs(&replicas[now_leader].url, &rae, &accepted, 20);
    // The CLI given every replica's URL finds the leader, past one that is down and through a
    // follower.
    let follower = (0..3).find(|i| *i != now_leader && *i != leader);
    if let Some(f) = follower {
        let urls = format!("http://127.0.0.1:1,{}", replicas[f].url);
        let out = crate::support::gantry_as(&rae, &["jobs", "--url", &urls], &shared_cache());
        let (stdout, stderr) = crate::support::text(&out);
        assert!(out.status.success(), "{stderr}");
        assert!(stdout.contains(accepted[0].as_str()), "{stdout}");
    }

    // And every accepted job comes to its end: those a killed leader was running ran again,
    // unless the control plane went down while they ran too often (the daemon's crash-loop
    // guard, which cannot tell a kill from the outside from a job that brings it down).
    let url = &replicas[now_leader].url;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, jobs) = try_request(&format!("{url}/v1/jobs"), "GET", Some(&rae), None)
            .expect("the leader answers");
        let jobs = jobs.as_array().unwrap();
        let open: Vec<&Value> = jobs
            .iter()
            .filter(|j| !["succeeded", "failed"].contains(&j["state"].as_str().unwrap()))
            .collect();
        if open.is_empty() {
            let guard = "the daemon went down 3 times while this job ran";
            for j in jobs.iter().filter(|j| j["state"] == "failed") {
                let reason = j["reason"].as_str().unwrap_or_default();
                assert!(reason.starts_with(guard), "{j}");
            }
            let done: Vec<&Value> = jobs.iter().filter(|j| j["state"] == "succeeded").collect();
            eprintln!("{} of {} jobs succeeded", done.len(), jobs.len());
            for j in done {
                ran_on_its_gpus(url, &rae, j);
            }
            break;
        }
        assert!(Instant::now() < deadline, "jobs that never ended: {open:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Job `j` (succeeded) ran on an agent on exactly the GPUs it was placed on: a command saw them
/// (`CUDA_VISIBLE_DEVICES` their ordinals), a training run names them.
fn ran_on_its_gpus(url: &str, token: &str, j: &Value) {
    let id = j["id"].as_str().unwrap();
    let gpus: Vec<&str> = j["gpu_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    let log = crate::support::log_of(url, token, id);
    if j["result"]["ran_on"].is_object() {
        assert_eq!(j["result"]["ran_on"]["gpus"], json!(gpus), "{j}");
        assert!(log.contains(&format!("GPUs {}", gpus.join(", "))), "{log}");
    } else {
        let ordinals: Vec<&str> = gpus
            .iter()
            .map(|g| g.rsplit_once("/gpu").unwrap().1)
            .collect();
        let saw = format!("saw={} devices={}", gpus.join(","), ordinals.join(","));
        assert!(log.contains(&saw), "{id} did not see {saw}: {log}");
    }
    let node = gpus[0].split_once('/').unwrap().0;
    assert!(
        log.contains(&format!("handed to node {node}'s agent")),
        "{log}"
    );
}

/// Every accepted job is there, and no GPU is held by two jobs.
fn check_jobs(url: &str, token: &str, accepted: &[String], round: usize) {
    let (s, jobs) = try_request(&format!("{url}/v1/jobs"), "GET", Some(token), None)
        .unwrap_or_else(|| panic!("round {round}: the leader at {url} answers"));
    assert_eq!(s, 200, "{jobs}");
    let jobs = jobs.as_array().unwrap();
    for id in accepted {
        assert!(
            jobs.iter().any(|j| j["id"] == id.as_str()),
            "round {round}: accepted job {id} lost"
        );
    }
    let mut held: Vec<&str> = jobs
        .iter()
        .filter(|j| ["scheduled", "running", "cancelling"].contains(&j["state"].as_str().unwrap()))
        .flat_map(|j| {
            j["gpu_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g.as_str().unwrap())
        })
        .collect();
    let all = held.len();
    held.sort();
    held.dedup();
    assert_eq!(held.len(), all, "round {round}: a GPU held by two jobs");
}

/// On a three-member etcd, the control plane survives losing one member (its client moves to
/// the others), and then its leader.
#[test]
fn a_control_plane_on_three_etcd_members_survives_one_member_and_its_leader() {
    let _serial = one_at_a_time();
    let Some(mut etcd) = gantry_etcd::testing::EtcdCluster::start_or_skip("three_etcd_members", 3)
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(&dir.path().join("d0"));
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let mut replicas = replicas_on(dir.path(), &data, &etcd.urls(), 2, EIGHT_GPUS, &[]);
    let (leader, _) = leader_within(&mut replicas, Duration::from_secs(20));
    let job = |id: &str| json!({"id": id, "tenant": "vision", "gpus": 1});
    assert_eq!(
        submit_through(&replicas[1 - leader].url, &ada, &job("a")).0,
        201
    );
    etcd.members[0].kill();
    // While the two members left elect a leader, etcd answers nothing: a control-plane leader
    // cut off for its whole lease steps down (and is started again), the other replica taking
    // over; either way a submission is taken once etcd answers again.
    let (s, v) = submit_supervised(&mut replicas, &ada, &job("b"), Duration::from_secs(60));
    assert_eq!(s, 201, "{v}");
    let (leader, _) = leader_within(&mut replicas, Duration::from_secs(20));
    replicas[leader].kill();
    let (next, _) = leader_within(&mut replicas, Duration::from_secs(20));
    assert_ne!(next, leader);
    check_jobs(&replicas[next].url, &ada, &["a".into(), "b".into()], 0);
    assert_eq!(submit_through(&replicas[next].url, &ada, &job("c")).0, 201);
}

/// Regression: a replica whose opening (the policy compiled from a cold cache, jobs recovered)
/// outlasted its lease lost it while opening, then led again in a new term with what it had
/// loaded in the old one. Its lease is renewed while it opens, and a new term is a loss.
#[test]
fn a_replica_slower_to_open_than_its_lease_keeps_leading() {
    let _serial = one_at_a_time();
    let Some(etcd) = EtcdProcess::start_or_skip("a_replica_slower_to_open") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(&dir.path().join("d0"));
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let d = dir.path().join("r0");
    copy_dir(&data, &d);
    std::fs::write(d.join("cluster.toml"), EIGHT_GPUS).unwrap();
    // A cold cache: compiling the policy takes longer than the 2 s lease in a debug build.
    let cold = dir.path().join("cold-cache");
    let started = Instant::now();
    let mut replicas = vec![Replica::start_cached(&d, &etcd.url(), &cold)];
    leader_within(&mut replicas, Duration::from_secs(120));
    let opening = started.elapsed();
    let term = |r: &Replica| {
        try_request(&format!("{}/v1/health", r.url), "GET", None, None)
            .map(|(_, v)| v["term"].clone())
    };
    let first = term(&replicas[0]);
    std::thread::sleep(Duration::from_secs(2 * LEASE_S));
    let child = replicas[0].child.as_mut().unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "the replica stopped (opened in {opening:?})"
    );
    assert!(replicas[0].leads());
    assert_eq!(
        term(&replicas[0]),
        first,
        "it leads in another term (opened in {opening:?})"
    );
    let (s, v) = submit_through(
        &replicas[0].url,
        &ada,
        &json!({"id": "a", "tenant": "vision", "gpus": 1}),
    );
    assert_eq!(s, 201, "{v}");
    eprintln!("opened from a cold cache in {opening:?}");
}

/// `gantry bench cluster` runs both stores (etcd here, where it is installed) and loses nothing.
#[test]
fn a_short_cluster_bench_measures_both_stores() {
    let _serial = one_at_a_time();
    let out = crate::support::gantry(
        &[
            "bench",
            "cluster",
            "--nodes",
            "16",
            "--jobs",
            "10",
            "--heartbeat-s",
            "0.5",
            "--failovers",
            "2",
            "--json",
        ],
        &shared_cache(),
    );
    let (stdout, stderr) = crate::support::text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (v["nodes"].as_u64(), v["gpus"].as_u64()),
        (Some(16), Some(128)),
        "{v}"
    );
    assert_eq!(v["sqlite"]["lost_jobs"], 0, "{v}");
    assert_eq!(v["sqlite"]["to_scheduled"]["requests"], 10, "{v}");
    // Again with every node registered by its agent's heartbeats.
    let agents = &v["sqlite_agents"]["agents"];
    assert_eq!(
        (agents["nodes"].as_u64(), agents["failed"].as_u64()),
        (Some(16), Some(0)),
        "{v}"
    );
    assert!(
        agents["heartbeat"]["requests"].as_u64().unwrap() >= 16,
        "{v}"
    );
    assert_eq!(v["sqlite_agents"]["to_scheduled"]["requests"], 10, "{v}");
    if gantry_etcd::testing::etcd_binary().is_some() {
        assert_eq!(v["etcd"]["lost_jobs"], 0, "{v}");
        assert_eq!(v["etcd_agents"]["agents"]["failed"], 0, "{v}");
        let failover = &v["failover"];
        assert_eq!(
            (failover["kills"].as_u64(), failover["lost_jobs"].as_u64()),
            (Some(2), Some(0)),
            "{v}"
        );
        assert!(failover["max_s"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["to_scheduled_p50_ratio"].as_f64().unwrap() > 0.0, "{v}");
    } else {
        assert!(v["etcd_skipped"].is_string(), "{v}");
    }
}

/// `gantry up --etcd` refuses control-plane flags out of their range, naming the flag, before
/// it reaches etcd (an hour-long lease would leave the cluster without a leader for an hour).
#[test]
fn control_plane_flags_out_of_range_are_refused_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = init_data_dir(tmp.path());
    let d = data.to_str().unwrap();
    let etcd = "http://127.0.0.1:9";
    for (bad, flag) in [
        (
            vec!["--etcd", etcd, "--leader-lease-s", "1"],
            "--leader-lease-s",
        ),
        (
            vec!["--etcd", etcd, "--leader-lease-s", "86400"],
            "--leader-lease-s",
        ),
        (vec!["--etcd", etcd, "--etcd-prefix", "/"], "--etcd-prefix"),
        (vec!["--etcd", "http://192.0.2.1:2379"], "--etcd"),
        (vec!["--etcd", "https://127.0.0.1:9"], "--etcd-ca-cert"),
        (
            vec!["--etcd", etcd, "--etcd-ca-cert", "nowhere.pem"],
            "nowhere.pem",
        ),
        (
            vec!["--etcd", etcd, "--etcd-cert", "c.pem"],
            "--etcd-ca-cert",
        ),
    ] {
        let mut args = vec!["up", "--data-dir", d, "--listen", "127.0.0.1:0"];
        args.extend(&bad);
        let out = crate::support::gantry(&args, &shared_cache());
        let (_, stderr) = crate::support::text(&out);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(stderr.contains(flag), "{bad:?}: {stderr}");
    }
}

/// Regression: users, tokens, the admins' GPU marks, the installed policy and the active
/// scheduler lived in each replica's copy of the data directory, so a token revoked through the
/// leader still worked once another replica led, a user added through one replica was unknown
/// to the others, a GPU an admin took out came back into service, a stricter policy gave way
/// to an older one, and the scheduler went back to the one the copy named.
/// They live in etcd now, copied in once from the first leader's directory, and users are
/// managed through the API (`gantry user ... --url`).
#[test]
fn what_an_admin_changed_through_one_leader_holds_under_the_next() {
    let _serial = one_at_a_time();
    let Some(etcd) = EtcdProcess::start_or_skip("what_an_admin_changed") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(&dir.path().join("d0"));
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let grace = add_user(&data, "grace", "admin", "vision", "public");
    let mut replicas = replicas_on(dir.path(), &data, &etcd.url(), 2, EIGHT_GPUS, &[]);
    let (leader, _) = leader_within(&mut replicas, Duration::from_secs(60));
    let status = |url: &str, token: &str| {
        try_request(&format!("{url}/v1/jobs"), "GET", Some(token), None).map(|(s, _)| s)
    };
    assert_eq!(status(&replicas[leader].url, &ada), Some(200));

    // Through the leader: ada's tokens revoked, lin added.
    let url = replicas[leader].url.clone();
    let (s, v) = try_request(
        &format!("{url}/v1/users/ada/revoke"),
        "POST",
        Some(&grace),
        None,
    )
    .unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(status(&url, &ada), Some(401));
    let lin = json!({"name": "lin", "roles": ["researcher"], "tenants": ["vision"]});
    let (s, v) = try_request(&format!("{url}/v1/users"), "POST", Some(&grace), Some(&lin)).unwrap();
    assert_eq!(s, 201, "{v}");
    let lin = v["token"].as_str().unwrap().to_string();
    // Only admins manage users (the shipped policy's `user.manage`).
    let eve = json!({"name": "eve", "roles": ["admin"]});
    let (s, _) = try_request(&format!("{url}/v1/users"), "POST", Some(&lin), Some(&eve)).unwrap();
    assert_eq!(s, 403);
    let gpu = json!({"gpu": "node-a/gpu3"});
    let (s, v) = try_request(
        &format!("{url}/v1/gpus/unhealthy"),
        "POST",
        Some(&grace),
        Some(&gpu),
    )
    .unwrap();
    assert_eq!(s, 200, "{v}");
    // A stricter policy: researchers may ask for at most 2 GPUs.
    let strict = install_strict_policy(dir.path(), &url, &grace);
    let topology = json!({"name": "topology"});
    let (s, v) = try_request(
        &format!("{url}/v1/plugins/scheduler"),
        "POST",
        Some(&grace),
        Some(&topology),
    )
    .unwrap();
    assert_eq!(s, 200, "{v}");

    replicas[leader].kill();
    let (next, _) = leader_within(&mut replicas, Duration::from_secs(20));
    assert_eq!(next, 1 - leader);
    let url = replicas[next].url.clone();
    assert_eq!(status(&url, &ada), Some(401), "a revoked token works again");
    assert_eq!(status(&url, &lin), Some(200), "a user added is unknown");
    let (s, gpus) = try_request(&format!("{url}/v1/gpus"), "GET", Some(&grace), None).unwrap();
    assert_eq!(s, 200, "{gpus}");
    let gpu3 = gpus["gpus"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["id"] == "node-a/gpu3"))
        .unwrap_or_else(|| panic!("{gpus}"));
    assert_eq!(gpu3["healthy"], false, "a GPU taken out came back: {gpu3}");
    let (_, v) = try_request(&format!("{url}/v1/policy"), "GET", Some(&grace), None).unwrap();
    assert_eq!(
        (&v["source"], &v["revision"]),
        (&json!("installed"), &strict)
    );
    let (_, v) = try_request(&format!("{url}/v1/plugins"), "GET", Some(&grace), None).unwrap();
    assert_eq!(v["scheduler"]["name"], "topology", "{v}");
    let four = json!({"id": "four", "tenant": "vision", "gpus": 4});
    let (s, v) = submit_through(&url, &lin, &four);
    assert_eq!(s, 403, "an older policy decides: {v}");

    // `gantry user token --url` with every replica's URL (the dead one first) finds the leader.
    let urls = format!("{},{url}", replicas[leader].url);
    let out = crate::support::gantry_as(
        &grace,
        &["user", "token", "ada", "--url", &urls],
        &shared_cache(),
    );
    let (stdout, stderr) = crate::support::text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(status(&url, stdout.trim()), Some(200), "{stderr}");
}

/// A follower answers reads of what etcd holds itself (jobs, their logs, the policy in force),
/// decided by the policy the leader installed and with the accounts the leader changed, and
/// sends everything else to the leader (503 with its address); when the leader dies it takes
/// over, its reads closed first (one holder of its data directory at a time).
#[test]
fn a_follower_answers_reads_itself_and_sends_the_rest_to_the_leader() {
    let _serial = one_at_a_time();
    let Some(etcd) = EtcdProcess::start_or_skip("a_follower_answers_reads") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(&dir.path().join("d0"));
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let grace = add_user(&data, "grace", "admin", "vision", "public");
    let mut replicas = replicas_on(dir.path(), &data, &etcd.url(), 2, EIGHT_GPUS, &[]);
    let (leader, _) = leader_within(&mut replicas, Duration::from_secs(60));
    let (lead, follow) = (
        replicas[leader].url.clone(),
        replicas[1 - leader].url.clone(),
    );
    let job = json!({"id": "seen", "tenant": "vision", "gpus": 1});
    let (s, v) = submit_through(&lead, &ada, &job);
    assert_eq!(s, 201, "{v}");

    // Reads, answered by the follower.
    let get = |path: &str, token: Option<&str>| {
        try_request(&format!("{follow}{path}"), "GET", token, None).expect("the follower answers")
    };
    let (s, jobs) = get("/v1/jobs", Some(&ada));
    assert_eq!(s, 200, "{jobs}");
    assert!(
        jobs.as_array().unwrap().iter().any(|j| j["id"] == "seen"),
        "{jobs}"
    );
    let (s, v) = get("/v1/jobs/seen", Some(&ada));
    assert_eq!((s, &v["owner"]), (200, &json!("ada")), "{v}");
    let (s, v) = get("/v1/jobs/seen/logs", Some(&ada));
    assert_eq!(s, 200, "{v}");
    assert!(v.to_string().contains("submitted by ada"), "{v}");
    assert_eq!(get("/v1/jobs", None).0, 401, "a read without a token");
    assert_eq!(get("/v1/jobs/nope", Some(&ada)).0, 404);
    // Everything else is the leader's: writes, and what only the leader knows.
    for (method, path) in [("POST", "/v1/jobs"), ("GET", "/v1/gpus")] {
        let (s, v) = try_request(&format!("{follow}{path}"), method, Some(&ada), Some(&job))
            .expect("the follower answers");
        assert_eq!(
            (s, v["leader"].as_str()),
            (503, Some(lead.as_str())),
            "{method} {path}: {v}"
        );
    }

    // What the leader changes, the follower decides by: a stricter policy, a revoked token.
    let strict = install_strict_policy(dir.path(), &lead, &grace);
    let (s, v) = try_request(
        &format!("{lead}/v1/users/ada/revoke"),
        "POST",
        Some(&grace),
        None,
    )
    .unwrap();
    assert_eq!(s, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, policy) = get("/v1/policy", Some(&grace));
        let revoked = get("/v1/jobs", Some(&ada)).0 == 401;
        if policy["revision"] == strict && revoked {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower still decides by the old policy or token: {policy}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The leader dies: the follower takes over, and takes writes.
    replicas[leader].kill();
    let (next, _) = leader_within(&mut replicas, Duration::from_secs(20));
    assert_eq!(next, 1 - leader);
    let two = json!({"id": "after", "tenant": "vision", "gpus": 2});
    let (s, v) = submit_through(&follow, &grace, &two);
    assert_eq!(s, 201, "{v}");
    // Its audit log, with the decisions it made as a follower, verifies under its own key.
    let verified = try_request(
        &format!("{follow}/v1/audit/verify"),
        "GET",
        Some(&grace),
        None,
    );
    assert_eq!(
        verified.as_ref().map(|(s, _)| *s),
        Some(200),
        "{verified:?}"
    );
}

/// A control plane reaches etcd over TLS (`https://`, `--etcd-ca-cert`, and a client
/// certificate for an etcd that asks for one): its replica leads and takes jobs; the same etcd
/// over plain HTTP is not reached.
#[test]
fn a_control_plane_reaches_etcd_over_tls() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = gantry_etcd::testing::pki(dir.path());
    let Some(etcd) =
        EtcdProcess::start_tls_or_skip("a_control_plane_reaches_etcd_over_tls", &server)
    else {
        return;
    };
    let data = init_data_dir(&dir.path().join("d0"));
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    std::fs::write(data.join("cluster.toml"), EIGHT_GPUS).unwrap();
    let pem = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(["--etcd", &etcd.url(), "--leader-lease-s", "2"])
        .args(["--etcd-ca-cert", &pem("ca.pem")])
        .args([
            "--etcd-cert",
            &pem("client.pem"),
            "--etcd-key",
            &pem("client.key"),
        ])
        .arg("--cluster")
        .arg(data.join("cluster.toml"))
        .env("GANTRY_CACHE_DIR", shared_cache())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = format!(
        "http://{}",
        line.trim().strip_prefix("listening on ").unwrap()
    );
    let (s, v) = submit_through(
        &url,
        &ada,
        &json!({"id": "a", "tenant": "vision", "gpus": 1}),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(s, 201, "{v}");
    assert!(
        etcd.client()
            .prefix(b"gantry/jobs/vision/a", 0)
            .unwrap()
            .len()
            == 1,
        "the job is in the TLS etcd"
    );
}

/// Regression: a checkpoint went only into the store of the leader that received it, so a
/// training run that started again under a later leader (its node lost) found its newest
/// checkpoint in no store there, and failed. The leader keeps each job's newest checkpoint in
/// etcd too, sealed; a replica that lacks it brings it in.
#[test]
fn a_training_run_resumes_under_a_new_leader_from_a_checkpoint_the_old_one_received() {
    let _serial = one_at_a_time();
    let Some(etcd) = EtcdProcess::start_or_skip("a_training_run_resumes_under_a_new_leader") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(&dir.path().join("d0"));
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let node_a = add_user(&data, "node-a", "node", "vision", "public");
    let node_b = add_user(&data, "node-b", "node", "vision", "public");
    let agent_lease = ["--agent-lease-s", "3"];
    let mut replicas = replicas_on(dir.path(), &data, &etcd.url(), 2, THREE_NODES, &agent_lease);
    let (leader, _) = leader_within(&mut replicas, Duration::from_secs(20));
    let urls: Vec<&str> = replicas.iter().map(|r| r.url.as_str()).collect();
    let urls = urls.join(",");
    let agent_a = crate::agents::Agent::start_with(&urls, &node_a, "node-a", 4, &[]);
    // 18,000 steps: still running when the leader and node-a go down below.
    let body = json!({"id": "t1", "tenant": "vision", "gpus": 2,
                      "train": crate::daemon::train_toml(600)});
    let (s, v) = submit_supervised(&mut replicas, &ada, &body, Duration::from_secs(30));
    assert_eq!(s, 201, "{v}");
    let url = replicas[leader].url.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !crate::support::log_of(&url, &ada, "t1").contains("checkpoint at step") {
        assert!(Instant::now() < deadline, "t1 never checkpointed");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The leader and node-a go down together; node-b's agent takes the job under the next
    // leader, which never received the checkpoint.
    let _agent_b = crate::agents::Agent::start_with(&urls, &node_b, "node-b", 4, &[]);
    drop(agent_a);
    replicas[leader].kill();
    let (next, _) = leader_within(&mut replicas, Duration::from_secs(20));
    assert_ne!(next, leader);
    let url = replicas[next].url.clone();
    let job = crate::support::until_over(&url, &ada, "t1", Duration::from_secs(120));
    let log = crate::support::log_of(&url, &ada, "t1");
    if job["state"] != "succeeded" {
        show_logs(&replicas);
    }
    assert_eq!(job["state"], "succeeded", "{job}\n{log}");
    assert_eq!(job["result"]["ran_on"]["node"], "node-b", "{job}");
    assert!(
        job["result"]["resumed_at_step"].as_u64().unwrap() >= 100,
        "{job}"
    );
    // The job succeeded: etcd keeps one of its checkpoints, its model (the older ones are let
    // go as each new one is recorded), which the leader serves. An object in etcd is a record
    // (`.../object`) and its blobs.
    let kept = || {
        let kept = etcd
            .client()
            .prefix(b"gantry/sealed/checkpoint/", 0)
            .unwrap();
        let keys = kept
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned());
        keys.filter(|k| k.ends_with("/object")).count()
    };
    crate::support::eventually("etcd keeps its model only", || kept() == 1);
    let (s, _) = try_request(&format!("{url}/v1/jobs/t1/model"), "GET", Some(&ada), None)
        .expect("the leader answers");
    assert_eq!(s, 200);
}

/// Regression: a dataset's record and bytes stayed in the data directory of the leader it was
/// uploaded through: under the next leader it was not listed, not readable, and a job on it
/// could not train. Its record lives in etcd, its bytes too (sealed).
#[test]
fn a_dataset_uploaded_through_one_leader_is_there_under_the_next() {
    let _serial = one_at_a_time();
    let Some(etcd) = EtcdProcess::start_or_skip("a_dataset_uploaded_through_one_leader") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(&dir.path().join("d0"));
    let ada = add_user(&data, "ada", "researcher,writer", "vision", "internal");
    let mut replicas = replicas_on(dir.path(), &data, &etcd.url(), 2, EIGHT_GPUS, &[]);
    let (leader, _) = leader_within(&mut replicas, Duration::from_secs(20));
    let csv = crate::daemon::spirals_csv();
    let url = replicas[leader].url.clone();
    let at = format!("{url}/v1/datasets/spirals.csv?tenant=vision&classification=internal");
    let (s, v) = crate::daemon::put(&at, &ada, csv.as_bytes());
    assert_eq!(s, 201, "{v}");

    replicas[leader].kill();
    let (next, _) = leader_within(&mut replicas, Duration::from_secs(20));
    let url = replicas[next].url.clone();
    let (_, listed) = try_request(&format!("{url}/v1/datasets"), "GET", Some(&ada), None).unwrap();
    assert_eq!(listed[0]["name"], "spirals.csv", "{listed}");
    let content = ureq::get(&format!("{url}/v1/datasets/spirals.csv/content"))
        .header("Authorization", &format!("Bearer {ada}"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(content == csv, "the bytes read back differ");
    // A job trains on it under the new leader, through the preprocessing plugin.
    let body = json!({"id": "ds1", "tenant": "vision", "gpus": 1,
                      "train": crate::daemon::spirals_train(20)});
    let (s, v) = submit_supervised(&mut replicas, &ada, &body, Duration::from_secs(30));
    assert_eq!(s, 201, "{v}");
    let job = crate::support::until_over(&url, &ada, "ds1", Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "{job}");
}

/// Found by a review: a leader running a command job itself (no agents) that was paused
/// (`SIGSTOP`) past its lease left its run going (a process of its own, which a frozen daemon
/// cannot stop) while the next leader started the job again on the same GPU: the two ran side
/// by side for as long as the pause lasted. The run's lease guard kills it when the leader's
/// lease lapses, before any other replica may lead.
#[test]
fn a_paused_leaders_own_run_dies_with_its_lease_before_the_next_leader_runs_the_job() {
    let _serial = one_at_a_time();
    let Some(etcd) = EtcdProcess::start_or_skip("a_paused_leaders_own_run_dies") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(&dir.path().join("d0"));
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let mut replicas = replicas_on(dir.path(), &data, &etcd.url(), 2, EIGHT_GPUS, &[]);
    let (leader, _) = leader_within(&mut replicas, Duration::from_secs(20));
    let body = json!({"id": "c1", "tenant": "vision", "gpus": 1,
                      "command": {"argv": ["sh", "-c", "sleep 300"]}});
    let (s, v) = submit_supervised(&mut replicas, &rae, &body, Duration::from_secs(30));
    assert_eq!(s, 201, "{v}");
    let url = replicas[leader].url.clone();
    let started = |url: &str| -> Vec<u64> {
        crate::support::log_of(url, &rae, "c1")
            .split("started `sh` (pid ")
            .skip(1)
            .filter_map(|rest| rest.split(',').next()?.parse().ok())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(&pid) = started(&url).first() {
            break pid as u32;
        }
        assert!(Instant::now() < deadline, "c1 never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    replicas[leader].signal("-STOP");
    let deadline = Instant::now() + Duration::from_secs(60);
    // The paused replica is not asked (it would not answer).
    let next = loop {
        let other = (0..replicas.len()).find(|&i| i != leader && replicas[i].leads());
        if let Some(i) = other
            && started(&replicas[i].url).len() > 1
        {
            break i;
        }
        if Instant::now() > deadline {
            replicas[leader].signal("-CONT");
            show_logs(&replicas);
            panic!("c1 never started again under another leader");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let outlived = crate::support::alive(first);
    replicas[leader].signal("-CONT");
    if outlived {
        show_logs(&replicas);
    }
    assert!(
        !outlived,
        "the paused leader's run outlived its lease: it ran beside the next leader's"
    );
    let again = started(&replicas[next].url);
    assert_ne!(again.last(), Some(&u64::from(first)), "{again:?}");
}

/// Found by a review: only job writes were fenced by the leader's term. A leader paused (SIGSTOP)
/// in the middle of a dataset upload, deposed meanwhile, finished the upload on waking and
/// recorded the dataset in etcd (201), past the quota its successor was keeping (a tenant
/// allowed one dataset held two). Every write of a leader's stores is fenced now: the deposed
/// leader's is refused and nothing of it lands.
#[test]
fn a_deposed_leaders_upload_in_flight_lands_nothing() {
    use std::io::{Read, Write};
    let _serial = one_at_a_time();
    let Some(etcd) = EtcdProcess::start_or_skip("a_deposed_leaders_upload_in_flight") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(&dir.path().join("d0"));
    let ada = add_user(&data, "ada", "researcher,writer", "vision", "public");
    let mut replicas = replicas_on(dir.path(), &data, &etcd.url(), 2, EIGHT_GPUS, &[]);
    let (leader, _) = leader_within(&mut replicas, Duration::from_secs(20));
    // An upload to the leader, all but its last byte sent.
    let body = b"1,2\n3,4\n".repeat(1000);
    let addr = replicas[leader]
        .url
        .strip_prefix("http://")
        .unwrap()
        .to_string();
    let mut held = std::net::TcpStream::connect(&addr).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let head = format!(
        "PUT /v1/datasets/old.csv?tenant=vision&classification=public HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {ada}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    held.write_all(head.as_bytes()).unwrap();
    held.write_all(&body[..body.len() - 1]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Paused past its lease: the other replica leads, and takes an upload.
    replicas[leader].signal("-STOP");
    let deadline = Instant::now() + Duration::from_secs(30);
    let next = loop {
        if let Some(i) = (0..replicas.len()).find(|&i| i != leader && replicas[i].leads()) {
            break i;
        }
        assert!(Instant::now() < deadline, "no other leader");
        std::thread::sleep(Duration::from_millis(50));
    };
    let url = replicas[next].url.clone();
    let at = format!("{url}/v1/datasets/new.csv?tenant=vision&classification=public");
    let (s, v) = crate::durability::put_raw(&at, &ada, &body);
    assert_eq!(s, 201, "{v}");
    // Awake, the old leader gets the last byte.
    replicas[leader].signal("-CONT");
    held.write_all(&body[body.len() - 1..]).unwrap();
    let mut answer = String::new();
    let _ = held.read_to_string(&mut answer);
    let status = answer.split(' ').nth(1).unwrap_or("").to_string();
    let kept: Vec<String> = etcd
        .client()
        .prefix(b"gantry/datasets/vision/", 0)
        .unwrap()
        .into_iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    assert_eq!(
        kept,
        ["gantry/datasets/vision/new.csv"],
        "the deposed leader answered {answer:?}"
    );
    assert_ne!(status, "201", "{answer}");
}

/// Found by a review: only the API refused to rotate a replica's master key; `gantry key
/// rotate` on a replica's directory, offline, retired the key that sealed what the replicas keep
/// in etcd, and under that replica as leader every dataset answered 500. Refused offline too.
#[test]
fn a_replicas_data_directory_refuses_key_rotation_offline_too() {
    let _serial = one_at_a_time();
    let Some(etcd) = EtcdProcess::start_or_skip("a_replicas_data_directory_refuses") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(&dir.path().join("d0"));
    let mut replicas = replicas_on(dir.path(), &data, &etcd.url(), 1, EIGHT_GPUS, &[]);
    leader_within(&mut replicas, Duration::from_secs(20));
    replicas[0].kill();
    let r0 = dir.path().join("r0");
    let out = crate::support::gantry(
        &["key", "rotate", "--data-dir", r0.to_str().unwrap()],
        &shared_cache(),
    );
    let (_, e) = crate::support::text(&out);
    assert!(
        !out.status.success() && e.contains("a replica's of a control plane on etcd"),
        "{e}"
    );
}
