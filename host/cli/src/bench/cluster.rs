//! `gantry bench cluster`: the control plane's costs with its two stores, side by side in one
//! run: a daemon keeping its jobs in SQLite (one machine, the default) and one leading a
//! replicated control plane on a real etcd (`gantry up --etcd`, Debian's etcd-server started on
//! loopback; skipped, and said so, where it is not installed). Over a cluster of `nodes` x 8
//! GPUs, jobs submitted one at a time: the latency of `POST /v1/jobs` (policy decision, audit
//! record, the store's commit) and from submission to `scheduled` (a scheduling cycle and the
//! placement's compare-and-set). Each job is cancelled once measured, so the cluster is as free
//! for the last as for the first.

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
    /// Why there is no etcd run.
    pub etcd_skipped: Option<String>,
    /// etcd's median submit-to-scheduled latency over SQLite's.
    pub to_scheduled_p50_ratio: Option<f64>,
}

/// Runs the benchmark; `cache_dir` is where compiled plugins are cached.
pub fn run(
    params: ClusterParams,
    cache_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<ClusterReport> {
    let sqlite = super::in_scratch_dir("cluster-sqlite", |dir| {
        one(dir, params, None, cache_dir.clone())
    })?;
    let (etcd, etcd_skipped) = match gantry_etcd::testing::etcd_binary() {
        None => (
            None,
            Some("no etcd here (Debian: apt-get install etcd-server)".to_string()),
        ),
        Some(binary) => {
            let process = gantry_etcd::testing::EtcdProcess::try_start(&binary)
                .map_err(|e| anyhow::anyhow!("starting {}: {e}", binary.display()))?;
            let lease = Duration::from_secs(5);
            let plane = gantry_daemon::replicas::ControlPlane {
                etcd: std::sync::Arc::new(gantry_etcd::Etcd::new(&[process.url()], lease / 3)?),
                root: "gantry-bench".into(),
                advertise: None,
                lease,
            };
            let run = super::in_scratch_dir("cluster-etcd", |dir| {
                one(dir, params, Some(plane), cache_dir.clone())
            })?;
            (Some(run), None)
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
        etcd_skipped,
        to_scheduled_p50_ratio,
    })
}

/// Racks and nodes per rack for about `nodes` nodes: racks of 8 (fewer when there are fewer).
fn shape(nodes: u32) -> (u32, u32) {
    let per_rack = nodes.clamp(1, 8);
    (nodes.div_ceil(per_rack).max(1), per_rack)
}

/// One daemon on `dir`, its jobs in SQLite or (with `plane`) in etcd: the workload, measured.
fn one(
    dir: &std::path::Path,
    params: ClusterParams,
    plane: Option<gantry_daemon::replicas::ControlPlane>,
    cache_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<StoreRun> {
    let store = if plane.is_some() { "etcd" } else { "sqlite" };
    gantry::storage::Store::init(dir)?;
    let user = User {
        name: "bench".into(),
        roles: vec!["admin".into()],
        tenants: vec!["vision".into()],
        clearance: "public".into(),
    };
    let token = crate::local::add_users(dir, "gantry bench cluster", &[user])?.remove(0);
    let (racks, per_rack) = shape(params.nodes);
    let mut cluster = gantry::cluster::Cluster::uniform(racks, per_rack, 8, 1);
    cluster.tenants[0].name = "vision".into();
    let server = crate::local::start_daemon_with(dir, cluster, cache_dir, plane)?;
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
    server.stop()?;
    Ok(StoreRun {
        store,
        submit: latency(submits),
        to_scheduled: latency(scheduled),
        lost_jobs,
    })
}
