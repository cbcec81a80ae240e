//! `gantry bench policy`: decisions of the shipped `authz` policy through the sandboxed engine
//! module (opa-wasm) and through native `regorus`, on the same requests, in the same run.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use gantry::policy::decide::{LoadedPolicy, PolicyLimits, ResultSet};
use gantry::policy::source::PolicySource;
use gantry::{Host, HostConfig, HostError, builtin};

/// The entrypoint measured.
pub const ENTRYPOINT: &str = "gantry/authz/decision";

/// Workload of the policy benchmark.
#[derive(Debug, Clone, Copy)]
pub struct PolicyParams {
    /// Timed decisions per side for the latency figures (single thread).
    pub decisions: usize,
    /// Threads for the throughput figure (default: every core).
    pub threads: usize,
    /// Seconds each side runs for the throughput figure.
    pub throughput_secs: f64,
    /// Request seed.
    pub seed: u64,
}

impl Default for PolicyParams {
    fn default() -> Self {
        Self {
            decisions: 20_000,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            throughput_secs: 2.0,
            seed: 7,
        }
    }
}

/// Latency and throughput of one side.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// Median decision latency, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Decisions per second with `threads` threads.
    pub decisions_per_s: f64,
}

/// What `gantry bench policy --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    /// Through the engine module in the sandbox.
    pub wasm: Side,
    /// Native regorus: the engine module's own code (the interpreter), outside the sandbox.
    pub native: Side,
    /// `wasm.p50_us / native.p50_us`.
    pub ratio: f64,
    /// Timed decisions per side (latency).
    pub decisions: usize,
    /// Threads used for throughput.
    pub threads: usize,
    /// Share of the requests the policy allowed.
    pub allowed_share: f64,
}

/// Requests as the host makes them: members and strangers, small and large jobs, datasets of
/// every classification, plugin loads, audit reads.
pub fn requests(n: usize, seed: u64) -> Vec<serde_json::Value> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let roles = [
        "researcher",
        "researcher",
        "intern",
        "writer",
        "auditor",
        "admin",
    ];
    let tenants = ["vision", "language", "robotics"];
    let labels = ["public", "internal", "confidential", "secret"];
    let pick = |r: u64, items: &[&'static str]| items[(r % items.len() as u64) as usize];
    (0..n)
        .map(|i| {
            let subject = serde_json::json!({
                "user": format!("user{}", i % 50),
                "roles": [pick(next(), &roles)],
                "tenants": [pick(next(), &tenants)],
                "clearance": pick(next(), &labels),
            });
            let (action, resource) = match next() % 6 {
                0..=2 => {
                    let gpus = [1, 8, 8, 16, 64, 512][(next() % 6) as usize];
                    let resource = serde_json::json!({
                        "tenant": pick(next(), &tenants),
                        "gpus": gpus,
                        "tenant_used_gpus": next() % 500,
                    });
                    ("job.submit", resource)
                }
                3 => (
                    "dataset.read",
                    serde_json::json!({"name": "scans", "classification": pick(next(), &labels)}),
                ),
                4 => (
                    "plugin.load",
                    serde_json::json!({"name": "binpack", "signed": next() % 4 != 0}),
                ),
                _ => ("audit.read", serde_json::json!({})),
            };
            serde_json::json!({"subject": subject, "action": action, "resource": resource})
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// (p50, p99) in µs of `decisions` calls of `decide` on one thread.
fn latencies(
    decisions: usize,
    mut decide: impl FnMut(usize) -> Result<(), String>,
) -> Result<(f64, f64), String> {
    let mut times = Vec::with_capacity(decisions);
    for i in 0..decisions {
        let t = Instant::now();
        decide(i)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

/// Decisions per second of `threads` threads running `decide(thread, n)` for `secs` seconds.
fn throughput<F>(threads: usize, secs: f64, decide: F) -> Result<f64, String>
where
    F: Fn(usize, usize) -> Result<(), String> + Sync,
{
    let start = Instant::now();
    let counts: Vec<Result<u64, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let decide = &decide;
                scope.spawn(move || {
                    let mut n = 0u64;
                    while start.elapsed().as_secs_f64() < secs {
                        decide(t, t * 7919 + n as usize)?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a benchmark thread panicked".into()))
            })
            .collect()
    });
    let total: u64 = counts.into_iter().sum::<Result<u64, String>>()?;
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Runs the policy benchmark; `progress(done, total)` reports its four phases.
pub fn run(
    params: PolicyParams,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PolicyReport, HostError> {
    let err = HostError::Engine;
    let threads = params.threads.max(1);
    let (name, rego, data) = builtin::AUTHZ_POLICY;
    let source = PolicySource::from_parts(&[(name, rego)], data).map_err(|e| err(e.to_string()))?;
    // The host stays alive while its policy decides.
    let (_host, wasm) = load_wasm(&source, threads)?;
    let compiled = compile_native(&source).map_err(err)?;

    let requests = requests(4096, params.seed);
    let texts: Vec<String> = requests.iter().map(|r| r.to_string()).collect();
    // Both sides end with the result set as JSON text.
    let wasm_decide = |i: usize| -> Result<ResultSet, String> {
        gantry::blocking::block_on(wasm.evaluate(ENTRYPOINT, &requests[i % requests.len()]))
            .map_err(|e| e.to_string())
    };
    // The native side starts from the same JSON text the sandbox receives and, like the module,
    // ends with the result set as JSON text.
    let native_decide = |_thread: usize, i: usize| -> Result<String, String> {
        let input =
            regorus::Value::from_json_str(&texts[i % texts.len()]).map_err(|e| e.to_string())?;
        gantry_policy_engine::policy::evaluate_compiled(&compiled, input).map_err(|e| e.to_string())
    };

    let allowed = agreement(requests.len(), &wasm_decide, &native_decide).map_err(err)?;
    progress(1, 4);
    let (wasm_p50, wasm_p99) =
        latencies(params.decisions, |i| wasm_decide(i).map(drop)).map_err(err)?;
    progress(2, 4);
    let (native_p50, native_p99) =
        latencies(params.decisions, |i| native_decide(0, i).map(drop)).map_err(err)?;
    progress(3, 4);
    let wasm_tput = throughput(threads, params.throughput_secs, |_, i| {
        wasm_decide(i).map(drop)
    })
    .map_err(err)?;
    let native_tput = throughput(threads, params.throughput_secs, |t, i| {
        native_decide(t, i).map(drop)
    })
    .map_err(err)?;
    progress(4, 4);
    Ok(PolicyReport {
        wasm: Side {
            p50_us: wasm_p50,
            p99_us: wasm_p99,
            decisions_per_s: wasm_tput,
        },
        native: Side {
            p50_us: native_p50,
            p99_us: native_p99,
            decisions_per_s: native_tput,
        },
        ratio: wasm_p50 / native_p50,
        decisions: params.decisions,
        threads,
        allowed_share: allowed as f64 / requests.len() as f64,
    })
}

/// The policy compiled into the engine module and loaded by a host, `threads` instances in its
/// pool.
fn load_wasm(
    source: &PolicySource,
    threads: usize,
) -> Result<(Host, Arc<LoadedPolicy>), HostError> {
    let err = HostError::Engine;
    let entrypoints = vec![ENTRYPOINT.to_string()];
    let bundle =
        gantry::policy::build(source, &entrypoints, None).map_err(|e| err(e.to_string()))?;
    let mut config = HostConfig::new(gantry::cluster::Cluster::uniform(1, 1, 1, 1));
    config.cache_dir = None;
    let host = Host::new(config)?;
    let limits = PolicyLimits {
        pool: threads,
        ..PolicyLimits::default()
    };
    let wasm = gantry::blocking::block_on(host.policy_loader().load(bundle, limits))
        .map_err(|e| err(e.to_string()))?;
    Ok((host, wasm))
}

/// The same code the engine module runs inside the sandbox (the entrypoint compiled for
/// regorus's interpreter, a fresh interpreter state per decision), to run natively.
fn compile_native(source: &PolicySource) -> Result<gantry_policy_engine::policy::Compiled, String> {
    let data_value = source.data_value().map_err(|e| e.to_string())?;
    let description = source
        .policy_description(&[ENTRYPOINT.to_string()])
        .to_string();
    let host = gantry::policy::source::native_host();
    let engine_policy = gantry_policy_engine::policy::Policy::from_json(&description, &host)
        .map_err(|e| e.to_string())?;
    engine_policy
        .compile_entrypoint(ENTRYPOINT, &data_value)
        .map_err(|e| e.to_string())
}

/// Both sides must decide alike before their speed means anything: every one of the `count`
/// requests through both; how many were allowed.
fn agreement(
    count: usize,
    wasm_decide: &dyn Fn(usize) -> Result<ResultSet, String>,
    native_decide: &dyn Fn(usize, usize) -> Result<String, String>,
) -> Result<usize, String> {
    let mut allowed = 0usize;
    for i in 0..count {
        let w = wasm_decide(i)?.to_json().map_err(|e| e.to_string())?[0]["result"].clone();
        let set: serde_json::Value =
            serde_json::from_str(&native_decide(0, i)?).map_err(|e| e.to_string())?;
        let n = set[0]["result"].clone();
        if w != n {
            return Err(format!(
                "wasm and native disagree on request {i}: {w} vs {n}"
            ));
        }
        allowed += usize::from(w["allow"] == serde_json::json!(true));
    }
    Ok(allowed)
}
