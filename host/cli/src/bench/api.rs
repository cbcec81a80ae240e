//! `gantry bench api`: a load test of the daemon on loopback. A daemon on a throwaway data
//! directory, `clients` threads each submitting small jobs and reading them back as fast as
//! they can, for a bounded count; latencies per request kind, errors, and a check that every
//! accepted job is in the database.

use std::time::Instant;

use serde::Serialize;

use gantry_daemon::db::User;
use gantry_daemon::{self as daemon, Background, DaemonConfig};

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
    let dir = std::env::temp_dir().join(format!("gantry-bench-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = run_in(&dir, params, cache_dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(
    dir: &std::path::Path,
    params: ApiParams,
    cache_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<ApiReport> {
    gantry::storage::Store::init(dir)?;
    let admin = daemon::datadir::DataDir::open(dir, "gantry bench api")?;
    let user = User {
        name: "load".into(),
        roles: vec!["admin".into()],
        tenants: vec!["vision".into()],
        clearance: "public".into(),
    };
    let token = admin.add_user(&user, None)?.token;
    admin.close()?;
    // 256 GPUs; the tenant is one the shipped policy gives a quota (512 GPUs).
    let mut cluster = gantry::cluster::Cluster::uniform(4, 8, 8, 1);
    cluster.tenants[0].name = "vision".into();
    let server = Background::start(DaemonConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("an address"),
        cluster,
        cache_dir,
        tls: None,
        trust: Default::default(),
        train_limits: Default::default(),
        conn_limits: Default::default(),
        shipped_policy: false,
    })?;
    let base = format!("http://{}/v1/jobs", server.addr);
    let start = Instant::now();
    type ClientRun = (Vec<f64>, Vec<f64>, Vec<String>, Vec<String>);
    let loading = std::sync::atomic::AtomicBool::new(true);
    let mut health = Vec::new();
    let per_client: Vec<ClientRun> = std::thread::scope(|s| {
        let prober = s.spawn(|| {
            let agent = ureq::Agent::new_with_defaults();
            let url = base.replace("/v1/jobs", "/v1/health");
            let mut ms = Vec::new();
            while loading.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let _ = agent
                    .get(&url)
                    .call()
                    .map(|r| r.into_body().read_to_string());
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            ms
        });
        let handles: Vec<_> = (0..params.clients)
            .map(|c| {
                let (base, token) = (&base, &token);
                s.spawn(move || {
                    let agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .build()
                        .new_agent();
                    let auth = format!("Bearer {token}");
                    let (mut submits, mut reads, mut errors, mut accepted) =
                        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                    let describe =
                        |r: Result<ureq::http::Response<ureq::Body>, ureq::Error>| match r {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                format!(
                                    "{status}: {}",
                                    r.into_body().read_to_string().unwrap_or_default()
                                )
                            }
                            Err(e) => e.to_string(),
                        };
                    for i in 0..params.submits_per_client {
                        let id = format!("load-{c}-{i}");
                        let body = serde_json::json!({"id": id, "tenant": "vision", "gpus": 1});
                        let t = Instant::now();
                        let r = agent
                            .post(base.as_str())
                            .header("Authorization", &auth)
                            .send_json(&body);
                        submits.push(t.elapsed().as_secs_f64() * 1e3);
                        match r {
                            Ok(r) if r.status().as_u16() == 201 => accepted.push(id.clone()),
                            other => errors.push(format!("POST {id}: {}", describe(other))),
                        }
                        let t = Instant::now();
                        let r = agent
                            .get(&format!("{base}/{id}"))
                            .header("Authorization", &auth)
                            .call();
                        reads.push(t.elapsed().as_secs_f64() * 1e3);
                        if !matches!(r, Ok(ref r) if r.status().as_u16() == 200) {
                            errors.push(format!("GET {id}: {}", describe(r)));
                        }
                    }
                    (submits, reads, errors, accepted)
                })
            })
            .collect();
        let runs = handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect();
        loading.store(false, std::sync::atomic::Ordering::Relaxed);
        health = prober.join().expect("health prober");
        runs
    });
    let seconds = start.elapsed().as_secs_f64();
    server.stop()?;
    let (mut submits, mut reads, mut errors, mut accepted) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (s, r, e, a) in per_client {
        submits.extend(s);
        reads.extend(r);
        errors.extend(e);
        accepted.extend(a);
    }
    let db = gantry_daemon::db::Db::open(&daemon::db_path(dir))?;
    let stored: std::collections::HashSet<String> = db
        .jobs()?
        .into_iter()
        .map(|j| daemon::db::name_of(&j.id).to_string())
        .collect();
    let lost_jobs = accepted.iter().filter(|id| !stored.contains(*id)).count();
    let requests = submits.len() + reads.len();
    Ok(ApiReport {
        clients: params.clients,
        submit: latency(submits),
        read: latency(reads),
        health: latency(health),
        requests_per_s: requests as f64 / seconds,
        errors: errors.len(),
        lost_jobs,
        first_error: errors.into_iter().next(),
    })
}
