//! `gantry bench api`: a load test of the daemon on loopback. A daemon on a throwaway data
//! directory, `clients` threads each submitting small jobs and reading them back as fast as
//! they can, for a bounded count; latencies per request kind, errors, and a check that every
//! accepted job is in the database.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;

use gantry_daemon as daemon;
use gantry_daemon::db::User;
use gantry_daemon::jobstore::JobStore;

/// Workload of the API benchmark.
#[derive(Debug, Clone, Copy)]
pub struct ApiParams {
    /// Client threads.
    pub clients: usize,
    /// Submissions per client (each followed by one read of the job).
    pub submits_per_client: usize,
}

impl Default for ApiParams {
    fn default() -> Self {
        Self {
            clients: 8,
            submits_per_client: 250,
        }
    }
}

/// Latencies of one request kind, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Requests made.
    pub requests: usize,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// What `gantry bench api --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ApiReport {
    /// Concurrent clients.
    pub clients: usize,
    /// `POST /v1/jobs` (policy decision, audit record, SQLite commit, scheduler wake-up).
    pub submit: Latency,
    /// `GET /v1/jobs/{id}`.
    pub read: Latency,
    /// `GET /v1/health`, asked every 10 ms by one more client while the others load the API:
    /// what a load balancer's health check sees under load.
    pub health: Latency,
    /// All requests per second over the run.
    pub requests_per_s: f64,
    /// Requests that failed (transport errors or unexpected statuses).
    pub errors: usize,
    /// Accepted jobs missing from the database afterwards.
    pub lost_jobs: usize,
    /// The first failure, when there was one.
    pub first_error: Option<String>,
}

/// Percentiles of `ms`.
pub(crate) fn latency(mut ms: Vec<f64>) -> Latency {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        ms.get(((ms.len() as f64 * q) as usize).min(ms.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Latency {
        requests: ms.len(),
        p50_ms: at(0.5),
        p95_ms: at(0.95),
        p99_ms: at(0.99),
        max_ms: ms.last().copied().unwrap_or(0.0),
    }
}

/// Runs the load test; `cache_dir` is where compiled plugins are cached.
pub fn run(params: ApiParams, cache_dir: Option<std::path::PathBuf>) -> anyhow::Result<ApiReport> {
    super::in_scratch_dir("api", |dir| run_in(dir, params, cache_dir))
}

/// What one client saw: submit and read latencies (ms), failures, the ids accepted.
#[derive(Default)]
struct ClientRun {
    submits: Vec<f64>,
    reads: Vec<f64>,
    errors: Vec<String>,
    accepted: Vec<String>,
}

fn run_in(
    dir: &std::path::Path,
    params: ApiParams,
    cache_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<ApiReport> {
    gantry::storage::Store::init(dir)?;
    let user = User {
        name: "load".into(),
        roles: vec!["admin".into()],
        tenants: vec!["vision".into()],
        clearance: "public".into(),
    };
    let token = crate::local::add_users(dir, "gantry bench api", &[user])?.remove(0);
    // 256 GPUs; the tenant is one the shipped policy gives a quota (512 GPUs).
    let mut cluster = gantry::cluster::Cluster::uniform(4, 8, 8, 1);
    cluster.tenants[0].name = "vision".into();
    let server = crate::local::start_daemon(dir, cluster, cache_dir)?;
    let base = format!("http://{}/v1/jobs", server.addr);
    let start = Instant::now();
    let loading = AtomicBool::new(true);
    let (runs, health) = std::thread::scope(|s| {
        let prober = s.spawn(|| probe_health(&base.replace("/v1/jobs", "/v1/health"), &loading));
        let handles: Vec<_> = (0..params.clients)
            .map(|c| {
                let (base, token) = (&base, &token);
                s.spawn(move || client(c, base, token, params.submits_per_client))
            })
            .collect();
        let runs: Vec<ClientRun> = handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect();
        loading.store(false, Ordering::Relaxed);
        (runs, prober.join().expect("health prober"))
    });
    let seconds = start.elapsed().as_secs_f64();
    server.stop()?;
    let mut all = ClientRun::default();
    for run in runs {
        all.submits.extend(run.submits);
        all.reads.extend(run.reads);
        all.errors.extend(run.errors);
        all.accepted.extend(run.accepted);
    }
    let lost_jobs = lost_jobs(dir, &all.accepted)?;
    let requests = all.submits.len() + all.reads.len();
    Ok(ApiReport {
        clients: params.clients,
        submit: latency(all.submits),
        read: latency(all.reads),
        health: latency(health),
        requests_per_s: requests as f64 / seconds,
        errors: all.errors.len(),
        lost_jobs,
        first_error: all.errors.into_iter().next(),
    })
}

/// Asks `url` every 10 ms while `loading`; the latencies, ms.
fn probe_health(url: &str, loading: &AtomicBool) -> Vec<f64> {
    let agent = ureq::Agent::new_with_defaults();
    let mut ms = Vec::new();
    while loading.load(Ordering::Relaxed) {
        let t = Instant::now();
        let _ = agent
            .get(url)
            .call()
            .map(|r| r.into_body().read_to_string());
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    ms
}

/// Client `c`: `submits` jobs submitted to `base`, each read back once.
fn client(c: usize, base: &str, token: &str, submits: usize) -> ClientRun {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let auth = format!("Bearer {token}");
    let mut run = ClientRun::default();
    let describe = |r: Result<ureq::http::Response<ureq::Body>, ureq::Error>| match r {
        Ok(r) => {
            let status = r.status().as_u16();
            format!(
                "{status}: {}",
                r.into_body().read_to_string().unwrap_or_default()
            )
        }
        Err(e) => e.to_string(),
    };
    for i in 0..submits {
        let id = format!("load-{c}-{i}");
        let body = serde_json::json!({"id": id, "tenant": "vision", "gpus": 1});
        let t = Instant::now();
        let r = agent
            .post(base)
            .header("Authorization", &auth)
            .send_json(&body);
        run.submits.push(t.elapsed().as_secs_f64() * 1e3);
        match r {
            Ok(r) if r.status().as_u16() == 201 => run.accepted.push(id.clone()),
            other => run.errors.push(format!("POST {id}: {}", describe(other))),
        }
        let t = Instant::now();
        let r = agent
            .get(&format!("{base}/{id}"))
            .header("Authorization", &auth)
            .call();
        run.reads.push(t.elapsed().as_secs_f64() * 1e3);
        if !matches!(r, Ok(ref r) if r.status().as_u16() == 200) {
            run.errors.push(format!("GET {id}: {}", describe(r)));
        }
    }
    run
}

/// Accepted jobs missing from the database of `dir`.
fn lost_jobs(dir: &std::path::Path, accepted: &[String]) -> anyhow::Result<usize> {
    let db = gantry_daemon::db::Db::open(&daemon::db_path(dir))?;
    let stored: std::collections::HashSet<String> = db
        .jobs()?
        .into_iter()
        .map(|j| daemon::db::name_of(&j.id).to_string())
        .collect();
    Ok(accepted.iter().filter(|id| !stored.contains(*id)).count())
}
