//! `gantry bench cluster`: the control plane's costs with its two stores, side by side in one
//! run: a daemon keeping its jobs in SQLite (one machine, the default) and one leading a
//! replicated control plane on a real etcd (`gantry up --etcd`, Debian's etcd-server started on
//! loopback; skipped, and said so, where it is not installed). Over a cluster of `nodes` x 8
//! GPUs, jobs submitted one at a time: the latency of `POST /v1/jobs` (policy decision, audit
//! record, the store's commit) and from submission to `scheduled` (a scheduling cycle and the
//! placement's compare-and-set). Each job is cancelled once measured, so the cluster is as free
//! for the last as for the first. With `heartbeat_s`, each store runs again with every node
//! registered by its agent's heartbeats (`node.heartbeat`, each node's own token; the agents
//! are threads of the bench, a heartbeat every `heartbeat_s` per node) while the jobs are
//! submitted: what a thousand nodes' heartbeats cost the control plane, and their latency.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use super::api::{Latency, latency};
use gantry_daemon::db::User;

/// Workload of the cluster benchmark.
#[derive(Debug, Clone, Copy)]
pub struct ClusterParams {
    /// Nodes of 8 GPUs.
    pub nodes: u32,
    /// Jobs submitted (one at a time), each waited for until scheduled.
    pub jobs: usize,
    /// Seconds between two heartbeats of a node's agent; 0: no run with agents.
    pub heartbeat_s: f64,
    /// Leaders of three replicas killed, one after another (with etcd); 0: none.
    pub failovers: usize,
}

/// Threads that send the nodes' heartbeats.
const HEARTBEAT_THREADS: usize = 4;

/// The agents' load during a run.
#[derive(Debug, Clone, Serialize)]
pub struct AgentLoad {
    /// Nodes, each with its agent.
    pub nodes: u32,
    /// Seconds between a node's heartbeats.
    pub heartbeat_s: f64,
    /// From the first heartbeat to every node's GPUs in service, seconds.
    pub registered_s: f64,
    /// `POST /v1/nodes/{node}/heartbeat`, over the whole run.
    pub heartbeat: Latency,
    /// Heartbeats answered per second.
    pub heartbeats_per_s: f64,
    /// Heartbeats not answered 200.
    pub failed: usize,
}

/// One store's figures.
#[derive(Debug, Clone, Serialize)]
pub struct StoreRun {
    /// `sqlite` or `etcd`.
    pub store: &'static str,
    /// `POST /v1/jobs`.
    pub submit: Latency,
    /// From just before `POST /v1/jobs` to the job read back as `scheduled`.
    pub to_scheduled: Latency,
    /// Accepted jobs the daemon did not list afterwards.
    pub lost_jobs: usize,
    /// With agents: their heartbeats.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agents: Option<AgentLoad>,
}

/// What `gantry bench cluster --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    /// The CPU it ran on.
    pub cpu: String,
    /// Nodes and GPUs of the cluster.
    pub nodes: u32,
    /// GPUs in all.
    pub gpus: u32,
    /// The one-machine default.
    pub sqlite: StoreRun,
    /// The replicated control plane's leader, when etcd is installed.
    pub etcd: Option<StoreRun>,
    /// SQLite again, every node registered by its agent's heartbeats.
    pub sqlite_agents: Option<StoreRun>,
    /// etcd again, every node registered by its agent's heartbeats.
    pub etcd_agents: Option<StoreRun>,
    /// Why there is no etcd run.
    pub etcd_skipped: Option<String>,
    /// Three replicas, their leader killed `failovers` times.
    pub failover: Option<super::failover::Failover>,
    /// etcd's median submit-to-scheduled latency over SQLite's.
    pub to_scheduled_p50_ratio: Option<f64>,
}

/// Runs the benchmark; `cache_dir` is where compiled plugins are cached.
pub fn run(
    params: ClusterParams,
    cache_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<ClusterReport> {
    let agents = params.heartbeat_s > 0.0;
    let sqlite_run = |agents: bool| {
        super::in_scratch_dir("cluster-sqlite", |dir| {
            one(dir, params, None, agents, cache_dir.clone())
        })
    };
    let sqlite = sqlite_run(false)?;
    let sqlite_agents = agents.then(|| sqlite_run(true)).transpose()?;
    let (etcd, etcd_agents, failover, etcd_skipped) = match gantry_etcd::testing::etcd_binary() {
        None => (
            None,
            None,
            None,
            Some("no etcd here (Debian: apt-get install etcd-server)".to_string()),
        ),
        Some(binary) => {
            let etcd_run = |agents: bool| -> anyhow::Result<StoreRun> {
                // A fresh etcd for each run: the first's keys do not weigh on the second.
                let process = gantry_etcd::testing::EtcdProcess::try_start(&binary)
                    .map_err(|e| anyhow::anyhow!("starting {}: {e}", binary.display()))?;
                let lease = Duration::from_secs(5);
                let etcd = gantry_etcd::Etcd::new(&[process.url()], lease / 3)?;
                let plane = gantry_daemon::replicas::ControlPlane {
                    etcd: std::sync::Arc::new(etcd),
                    root: "gantry-bench".into(),
                    advertise: None,
                    lease,
                    authenticate_rows: false,
                };
                super::in_scratch_dir("cluster-etcd", |dir| {
                    one(dir, params, Some(plane), agents, cache_dir.clone())
                })
            };
            let plain = etcd_run(false)?;
            let with_agents = agents.then(|| etcd_run(true)).transpose()?;
            let failover = (params.failovers > 0)
                .then(|| super::failover::run(&binary, params.failovers, cache_dir.clone()))
                .transpose()?;
            (Some(plain), with_agents, failover, None)
        }
    };
    let to_scheduled_p50_ratio = etcd
        .as_ref()
        .map(|e| e.to_scheduled.p50_ms / sqlite.to_scheduled.p50_ms.max(1e-9));
    let (racks, per_rack) = shape(params.nodes);
    Ok(ClusterReport {
        cpu: super::kernels::cpu_model(),
        nodes: racks * per_rack,
        gpus: racks * per_rack * 8,
        sqlite,
        etcd,
        sqlite_agents,
        etcd_agents,
        failover,
        etcd_skipped,
        to_scheduled_p50_ratio,
    })
}

/// Racks and nodes per rack for about `nodes` nodes: racks of 8 (fewer when there are fewer).
fn shape(nodes: u32) -> (u32, u32) {
    let per_rack = nodes.clamp(1, 8);
    (nodes.div_ceil(per_rack).max(1), per_rack)
}

/// One daemon on `dir`, its jobs in SQLite or (with `plane`) in etcd, its nodes served by
/// agents' heartbeats or not: the workload, measured.
fn one(
    dir: &std::path::Path,
    params: ClusterParams,
    plane: Option<gantry_daemon::replicas::ControlPlane>,
    agents: bool,
    cache_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<StoreRun> {
    let store = if plane.is_some() { "etcd" } else { "sqlite" };
    gantry::storage::Store::init(dir)?;
    let (racks, per_rack) = shape(params.nodes);
    let mut cluster = gantry::cluster::Cluster::uniform(racks, per_rack, 8, 1);
    cluster.tenants[0].name = "vision".into();
    let user = User {
        name: "bench".into(),
        roles: vec!["admin".into()],
        tenants: vec!["vision".into()],
        clearance: "public".into(),
    };
    let node_names: Vec<String> = match agents {
        true => cluster.nodes.iter().map(|n| n.name.clone()).collect(),
        false => Vec::new(),
    };
    let users: Vec<User> = std::iter::once(user)
        .chain(node_names.iter().map(|n| User {
            name: n.clone(),
            roles: vec!["node".into()],
            tenants: Vec::new(),
            clearance: "public".into(),
        }))
        .collect();
    let mut tokens = crate::local::add_users(dir, "gantry bench cluster", &users)?;
    let token = tokens.remove(0);
    // A node's lease outlasts a few missed heartbeats.
    let lease = Duration::from_secs_f64((5.0 * params.heartbeat_s).max(5.0));
    let server = gantry_daemon::Background::start(gantry_daemon::DaemonConfig {
        control_plane: plane,
        agent_lease: agents.then_some(lease),
        ..crate::local::daemon_config(dir, cluster, cache_dir)
    })?;
    let base = format!("http://{}", server.addr);
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent();
    let auth = format!("Bearer {token}");
    let get = |path: &str| -> anyhow::Result<Value> {
        let r = agent
            .get(&format!("{base}{path}"))
            .header("Authorization", &auth)
            .call()?;
        Ok(r.into_body().read_json()?)
    };
    // A replica answers as a follower until it has won the election and opened the daemon.
    let deadline = Instant::now() + Duration::from_secs(60);
    while store == "etcd" && get("/v1/health")?["role"] != "leader" {
        anyhow::ensure!(Instant::now() < deadline, "the control plane never led");
        std::thread::sleep(Duration::from_millis(20));
    }
    let beats = agents.then(|| {
        Heartbeats::start(
            &base,
            node_names.into_iter().zip(tokens).collect(),
            params.heartbeat_s,
        )
    });
    let registered_s = match &beats {
        Some(_) => {
            let t = Instant::now();
            let all = u64::from(racks * per_rack) * 8;
            let deadline = t + Duration::from_secs(300);
            while get("/v1/gpus")?["healthy"].as_u64().unwrap_or(0) < all {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{store}: the nodes never all served"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            t.elapsed().as_secs_f64()
        }
        None => 0.0,
    };
    let (mut submits, mut scheduled, mut accepted) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..params.jobs {
        let id = format!("bench-{i}");
        let body = json!({"id": id, "tenant": "vision", "gpus": 1 + i % 8});
        let t = Instant::now();
        let r = agent
            .post(&format!("{base}/v1/jobs"))
            .header("Authorization", &auth)
            .send_json(&body)?;
        submits.push(t.elapsed().as_secs_f64() * 1e3);
        let status = r.status().as_u16();
        anyhow::ensure!(
            status == 201,
            "{store}: POST {id}: {status} {}",
            r.into_body().read_to_string().unwrap_or_default()
        );
        accepted.push(id.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(&format!("/v1/jobs/{id}"))?["state"] != "scheduled" {
            anyhow::ensure!(Instant::now() < deadline, "{store}: {id} never scheduled");
            std::thread::sleep(Duration::from_micros(500));
        }
        scheduled.push(t.elapsed().as_secs_f64() * 1e3);
        // Cancelled once measured: the cluster and the tenant's quota stay free for the next.
        let r = agent
            .post(&format!("{base}/v1/jobs/{id}/cancel"))
            .header("Authorization", &auth)
            .send_empty()?;
        anyhow::ensure!(r.status().is_success(), "{store}: cancelling {id}");
    }
    let listed = get("/v1/jobs")?;
    let listed: std::collections::HashSet<&str> = listed
        .as_array()
        .map(|jobs| jobs.iter().filter_map(|j| j["id"].as_str()).collect())
        .unwrap_or_default();
    let lost_jobs = accepted
        .iter()
        .filter(|id| !listed.contains(id.as_str()))
        .count();
    let agents = beats.map(|b| {
        let (times, failed, seconds) = b.stop();
        AgentLoad {
            nodes: racks * per_rack,
            heartbeat_s: params.heartbeat_s,
            registered_s,
            heartbeats_per_s: times.len() as f64 / seconds.max(1e-9),
            heartbeat: latency(times),
            failed,
        }
    });
    server.stop()?;
    Ok(StoreRun {
        store,
        submit: latency(submits),
        to_scheduled: latency(scheduled),
        lost_jobs,
        agents,
    })
}

/// Node agents as threads: each node's heartbeat (8 healthy emulated GPUs, its own token) every
/// `period` seconds, spread over [`HEARTBEAT_THREADS`] threads.
struct Heartbeats {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(Vec<f64>, usize)>>,
    started: Instant,
}

impl Heartbeats {
    fn start(base: &str, nodes: Vec<(String, String)>, period: f64) -> Heartbeats {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let body = json!({"emulated": true, "gpus": (0..8).map(|o| json!({"ordinal": o,
            "name": "emulated (CPU)", "memory_mib": 81920, "healthy": true}))
            .collect::<Vec<_>>()});
        let per = nodes.len().div_ceil(HEARTBEAT_THREADS).max(1);
        let threads = nodes
            .chunks(per)
            .map(|mine| {
                let (mine, stop, body) = (mine.to_vec(), stop.clone(), body.clone());
                let base = base.to_string();
                std::thread::spawn(move || beat(&base, &mine, &body, period, &stop))
            })
            .collect();
        Heartbeats {
            stop,
            threads,
            started: Instant::now(),
        }
    }

    /// Stops them: every heartbeat's latency (ms), the failed ones, and the seconds they ran.
    fn stop(self) -> (Vec<f64>, usize, f64) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let seconds = self.started.elapsed().as_secs_f64();
        let (mut times, mut failed) = (Vec::new(), 0);
        for t in self.threads {
            if let Ok((ms, f)) = t.join() {
                times.extend(ms);
                failed += f;
            }
        }
        (times, failed, seconds)
    }
}

/// One thread's nodes: each sends a heartbeat every `period` seconds, until `stop`.
fn beat(
    base: &str,
    nodes: &[(String, String)],
    body: &Value,
    period: f64,
    stop: &std::sync::atomic::AtomicBool,
) -> (Vec<f64>, usize) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent();
    let gap = Duration::from_secs_f64(period / nodes.len().max(1) as f64);
    let (mut times, mut failed) = (Vec::new(), 0);
    let mut next = Instant::now();
    'run: loop {
        for (node, token) in nodes {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                break 'run;
            }
            let t = Instant::now();
            let r = agent
                .post(&format!("{base}/v1/nodes/{node}/heartbeat"))
                .header("Authorization", &format!("Bearer {token}"))
                .send_json(body);
            times.push(t.elapsed().as_secs_f64() * 1e3);
            if !r.is_ok_and(|r| r.status() == 200) {
                failed += 1;
            }
            next += gap;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    (times, failed)
}
