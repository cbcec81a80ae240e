//! `gantry demo`: the whole product in under two minutes, on a throwaway data directory.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Context as _;
use gantry::pipeline::{self, PipelineConfig};
use gantry::storage::Store;
use gantry::training::config::{TrainData, TrainToml};
use gantry_daemon as daemon;
use gantry_daemon::db::User;
use serde_json::json;

use super::daemon::{Client, call};
use super::table::Table;

/// Arguments of `gantry demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the data directory (its path is printed) instead of removing it.
    #[arg(long)]
    keep: bool,
}

/// The demo's training job: the uploaded spirals dataset (class id in column 1), its feature
/// columns standardised by the wasm `standardize` plugin, a 2-64-64-3 ReLU network, Adam.
fn train_toml() -> String {
    TrainToml {
        seed: 11,
        epochs: EPOCHS,
        batch_size: 64,
        lr: 0.005,
        checkpoint_every_steps: Some(500),
        ..TrainToml::new(TrainData::dataset("spirals.csv", 1, Some("standardize")))
    }
    .to_string()
}

/// Epochs of the demo's training job.
const EPOCHS: u64 = 60;

fn step(n: u32, what: &str) {
    println!("\n[{n}/6] {what}");
}

/// Runs `gantry demo`.
pub fn run(ctx: &super::Context, args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!(
        "gantry-demo-{}-{}",
        std::process::id(),
        gantry_daemon::db::now() as u64
    ));
    let result = demo(ctx, &dir);
    if args.keep {
        println!("\ndata directory kept: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result?;
    println!(
        "\ndemo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn demo(ctx: &super::Context, dir: &std::path::Path) -> anyhow::Result<()> {
    step(
        1,
        "a host on a fresh data directory, and an agent on each of four nodes",
    );
    let (server, ada, lee, nodes) = start(ctx, dir)?;
    let addr = server.addr;
    let _agents = Agents::start(addr, &nodes, &ada)?;

    step(
        2,
        "ada uploads a dataset; two tenants submit jobs; the policy decides each one",
    );
    upload_spirals(addr, &ada)?;
    submit_jobs(&ada, &lee);

    step(
        3,
        "a generated dataset, encrypted at rest, through the wasm preprocessing plugin",
    );
    let preprocess_mb_s = preprocess(ctx, dir, addr, &ada)?;

    step(
        4,
        "vision-train trains natively on spirals.csv (decrypted, standardised in the sandbox) and vision-eval runs a program, each by its node's agent on the GPUs it was placed on",
    );
    let job = train(addr, &ada)?;
    if job["state"] == "succeeded" {
        // The model it keeps, as its owners take it (decided as `job.model`).
        let out = dir.join("vision-train.ckpt");
        println!(
            "  {}",
            super::daemon::fetch_model(&ada, "vision-train", &out)?
        );
    }
    command_job(&ada)?;

    step(5, "what the host did");
    summary(addr, &ada, &lee, &job["result"], preprocess_mb_s)?;

    step(6, "stop, and verify the audit log");
    server.stop()?;
    let key = gantry::storage::host_key(dir)?;
    let report = gantry::audit::verify(
        &dir.join("audit.log"),
        Some(&gantry::keys::public_hex(&key)),
    )
    .context("verifying the audit log")?;
    println!(
        "  audit log verified: {} entries, {} signed checkpoints, signed by {}…",
        report.entries,
        report.checkpoints,
        &report.key.unwrap_or_default()[..16]
    );
    Ok(())
}

/// The nodes of the built-in cluster that run an agent in the demo.
const AGENT_NODES: [&str; 4] = ["node-000", "node-001", "node-002", "node-003"];
/// Nodes and their agents' tokens.
type NodeTokens = Vec<(String, String)>;

/// GPUs each agent advertises (emulated: bound like real ones, run on the CPU).
const AGENT_GPUS: u32 = 8;

/// Step 1: the store, two users (ada on vision, lee on language), a node identity for each
/// agent, and the daemon with node agents on, in this process on a free loopback port.
fn start(
    ctx: &super::Context,
    dir: &std::path::Path,
) -> anyhow::Result<(daemon::Background, Client, Client, NodeTokens)> {
    let master = Store::init(dir)?.master_id();
    println!(
        "  {}: encrypted store (master key {master}), host signing key",
        dir.display(),
    );
    let people = [("ada", "vision"), ("lee", "language")];
    let users: Vec<User> = people
        .iter()
        .map(|(name, tenant)| User {
            name: (*name).into(),
            roles: vec!["researcher".into(), "writer".into(), "runner".into()],
            tenants: vec![(*tenant).into()],
            clearance: "internal".into(),
        })
        .chain(AGENT_NODES.iter().map(|node| User {
            name: (*node).into(),
            roles: vec!["node".into()],
            tenants: Vec::new(),
            clearance: "public".into(),
        }))
        .collect();
    // As `gantry user add` does it: under the directory's lock, each recorded in the audit log.
    let tokens = crate::local::add_users(dir, "gantry demo", &users)?;
    for (name, tenant) in people {
        println!("  user {name} (tenant {tenant}) with a bearer token");
    }
    let nodes = AGENT_NODES
        .iter()
        .zip(&tokens[people.len()..])
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();

    let server = gantry_daemon::Background::start(gantry_daemon::DaemonConfig {
        agent_lease: Some(std::time::Duration::from_secs(5)),
        ..crate::local::daemon_config(dir, super::cluster(None)?, ctx.cache_dir.clone())
    })?;
    let addr = server.addr;
    println!(
        "  gantry up: listening on http://{addr} (binpack scheduler, gantry.authz policy, audit log, node agents)"
    );
    let client = |i: usize| Client {
        url: format!("http://{addr}"),
        token: tokens[i].clone(),
        ca_cert: None,
        insecure: false,
        client_cert: None,
        client_key: None,
        timeout: None,
    };
    let (ada, lee) = (client(0), client(1));
    Ok((server, ada, lee, nodes))
}

/// `gantry agent` processes, one per node, killed when dropped.
struct Agents(Vec<std::process::Child>);

impl Agents {
    /// Starts an agent for each of `nodes` (name, token) with [`AGENT_GPUS`] emulated GPUs, and
    /// waits until all of their GPUs serve.
    fn start(addr: SocketAddr, nodes: &[(String, String)], ada: &Client) -> anyhow::Result<Agents> {
        let exe = std::env::current_exe().context("finding the gantry binary")?;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let mut agents = Agents(Vec::new());
        for (node, token) in nodes {
            let mut agent = std::process::Command::new(&exe);
            agent
                .args(["agent", "--node", node, "--heartbeat-s", "0.5"])
                .args(["--emulate-gpus", &AGENT_GPUS.to_string()])
                .args(["--url", &format!("http://{addr}")])
                .env("GANTRY_TOKEN", token)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            // The demo's own machine and throwaway directory: as this user, unless root.
            if root {
                agent.args(["--job-user", "nobody"]);
            } else {
                agent.arg("--jobs-as-own-user");
            }
            agents
                .0
                .push(agent.spawn().context("starting `gantry agent`")?);
        }
        let want = AGENT_GPUS as usize * nodes.len();
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let serving = call(ada, "GET", "/v1/gpus", None)?["healthy"]
                .as_u64()
                .unwrap_or(0) as usize;
            if serving >= want {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!("the node agents did not report within 30 s ({serving} GPUs serve)");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        println!(
            "  gantry agent on {}: {AGENT_GPUS} emulated GPUs each (run on the CPU, bound like real ones), {want} GPUs in service",
            nodes
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(agents)
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for agent in &mut self.0 {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }
}

/// `PUT /v1/datasets/{name}` in tenant vision, classified internal, as `who` (`what` names the
/// upload when it cannot be sent); the answer.
fn upload(
    addr: SocketAddr,
    who: &Client,
    name: &str,
    bytes: &[u8],
    what: &'static str,
) -> anyhow::Result<serde_json::Value> {
    let answer = ureq::put(&format!(
        "http://{addr}/v1/datasets/{name}?tenant=vision&classification=internal"
    ))
    .header("Authorization", &format!("Bearer {}", who.token))
    .send(bytes)
    .context(what)?
    .into_body()
    .read_json::<serde_json::Value>()?;
    Ok(answer)
}

/// Three interleaved spirals as CSV, in units far from standardised, the class in column 1.
fn upload_spirals(addr: SocketAddr, ada: &Client) -> anyhow::Result<()> {
    let set = gantry_kernels::synthetic::spirals(3, 1000, 0.15, 11);
    let mut spirals = String::new();
    for r in 0..set.rows() {
        let (x, y) = (set.features[2 * r], set.features[2 * r + 1]);
        spirals += &format!(
            "{},{},{}\n",
            1000.0 + 50.0 * x,
            set.targets[r],
            -300.0 + 20.0 * y
        );
    }
    let uploaded = upload(
        addr,
        ada,
        "spirals.csv",
        spirals.as_bytes(),
        "uploading the dataset",
    )?;
    println!(
        "  ada -> dataset spirals.csv ({} bytes, internal): stored encrypted as object {}…",
        uploaded["bytes"],
        &uploaded["object"].as_str().unwrap_or_default()[..16]
    );
    Ok(())
}

/// What a demo job runs: nothing (it holds its GPUs), a training run, or a program.
enum Job {
    Train,
    Command,
}

/// vision-eval's program: it says which GPUs it was given and as whom it runs.
const EVAL_SCRIPT: &str = "echo \"vision-eval sees CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES \
                           ($GANTRY_GPU_IDS) as user $(id -un 2>/dev/null || id -u)\"";

/// The first line of job `id`'s log that starts with `prefix`.
fn log_line(who: &Client, id: &str, prefix: &str) -> anyhow::Result<Option<String>> {
    let logs = call(who, "GET", &format!("/v1/jobs/{id}/logs"), None)?;
    Ok(logs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["message"].as_str())
        .find(|m| m.starts_with(prefix))
        .map(str::to_string))
}

/// Step 4, continued: vision-eval, a program of ada's, run on its placed GPUs; its state and
/// what it printed.
fn command_job(ada: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let job = loop {
        let job = call(ada, "GET", "/v1/jobs/vision-eval", None)?;
        let state = job["state"].as_str().unwrap_or_default();
        if matches!(state, "succeeded" | "failed" | "cancelled") || Instant::now() > deadline {
            break job;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // What the program printed: its lines name their stream in the log.
    let printed = log_line(ada, "vision-eval", "stdout: vision-eval sees")?
        .map(|l| l.trim_start_matches("stdout: ").to_string());
    let handed = log_line(ada, "vision-eval", "handed to node")?;
    println!(
        "  vision-eval (a command job) {}{}: it printed {:?}",
        job["state"].as_str().unwrap_or_default(),
        job["reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        printed.as_deref().unwrap_or("nothing")
    );
    if let Some(handed) = handed {
        println!("    ({handed})");
    }
    Ok(())
}

/// Four submissions, two of them across tenants; each accepted or refused by the policy.
fn submit_jobs(ada: &Client, lee: &Client) {
    let submissions = [
        (ada, "ada", "vision-train", "vision", 8, Some(Job::Train)),
        (ada, "ada", "vision-eval", "vision", 4, Some(Job::Command)),
        (lee, "lee", "lee-in-vision", "vision", 8, None),
        (lee, "lee", "language-big", "language", 16, None),
    ];
    for (who, name, id, tenant, gpus, job) in submissions {
        let mut body = json!({"id": id, "tenant": tenant, "gpus": gpus});
        match job {
            Some(Job::Train) => body["train"] = json!(train_toml()),
            Some(Job::Command) => body["command"] = json!({"argv": ["sh", "-c", EVAL_SCRIPT]}),
            None => {}
        }
        match call(who, "POST", "/v1/jobs", Some(body)) {
            Ok(_) => println!("  {name} -> {id} on {tenant}: accepted"),
            Err(e) => println!("  {name} -> {id} on {tenant}: REFUSED: {e}"),
        }
    }
}

/// Step 3: a generated CSV uploaded through the daemon, then read back beside it through the
/// `standardize` plugin; the preprocessing throughput, MB/s.
fn preprocess(
    ctx: &super::Context,
    dir: &std::path::Path,
    addr: SocketAddr,
    ada: &Client,
) -> anyhow::Result<f64> {
    let csv = gantry::pipeline::synthetic_csv(200_000, 8, 7);
    let stored = upload(
        addr,
        ada,
        "generated.csv",
        &csv[..],
        "uploading the generated dataset",
    )?;
    let object = stored["object"]
        .as_str()
        .context("the upload's answer names no object")?
        .to_string();
    let store = Store::open(dir)?;
    println!(
        "  {:.1} MB of CSV stored as object {}…",
        csv.len() as f64 / 1e6,
        &object[..16]
    );
    let plugin = super::preprocess::load_builtin(ctx, "standardize")?;
    let bar = super::progress(200_000, "preprocessing");
    let (mut rows, mut width) = (0u64, 0usize);
    let t = Instant::now();
    let stats = pipeline::run_object(
        &store,
        &object,
        &plugin,
        PipelineConfig {
            batch_records: 4096,
            ..PipelineConfig::default()
        },
        &mut |tensor| {
            rows += u64::from(tensor.shape[0]);
            width = tensor.shape.get(1).copied().unwrap_or(0) as usize;
            bar.set_position(rows);
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    let preprocess_mb_s = 2.0 * stats.bytes as f64 / 1e6 / t.elapsed().as_secs_f64();
    println!(
        "  standardize: {rows} records -> {rows} x {width} features, two passes, {preprocess_mb_s:.0} MB/s, at most {} batches in memory",
        stats.max_in_flight
    );
    Ok(preprocess_mb_s)
}

/// The value of the first line of the Prometheus text `metrics` that starts with `name`.
fn metric<'a>(metrics: &'a str, name: &str) -> Option<&'a str> {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
}

/// Step 4: follows vision-train (its steps from the daemon's metrics) until it ends; the job.
fn train(addr: SocketAddr, ada: &Client) -> anyhow::Result<serde_json::Value> {
    let devices = gantry::training::device::detect();
    println!(
        "  devices: {} CPU core(s); {}",
        devices.cpu_cores,
        if devices.gpus.is_empty() {
            format!("no GPU ({})", devices.cuda_unavailable.unwrap_or_default())
        } else {
            format!("{} GPU(s)", devices.gpus.len())
        }
    );
    let total_steps = EPOCHS * 2400u64.div_ceil(64);
    let bar = super::progress(total_steps, "training vision-train");
    let job = loop {
        let job = call(ada, "GET", "/v1/jobs/vision-train", None)?;
        let state = job["state"].as_str().unwrap_or_default().to_string();
        if let Ok(metrics) = ureq::get(&format!("http://{addr}/metrics"))
            .call()
            .and_then(|r| r.into_body().read_to_string())
            && let Some(steps) =
                metric(&metrics, "gantry_train_steps_total ").and_then(|v| v.parse::<u64>().ok())
        {
            bar.set_position(steps.min(total_steps));
        }
        bar.set_message(format!("training vision-train ({state})"));
        if matches!(state.as_str(), "succeeded" | "failed" | "cancelled") {
            break job;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    bar.finish_and_clear();
    let result = &job["result"];
    println!(
        "  vision-train {}: test accuracy {:.1} %, {:.0} samples/s on {}",
        job["state"].as_str().unwrap_or_default(),
        100.0 * result["test"]["accuracy"].as_f64().unwrap_or(0.0),
        result["samples_per_s"].as_f64().unwrap_or(0.0),
        result["backend"].as_str().unwrap_or("?")
    );
    if let Some(line) = log_line(ada, "vision-train", "training on node")? {
        println!("    ({line})");
    }
    Ok(job)
}

/// Step 5: every job as its owners see it, and the measures of the run.
fn summary(
    addr: SocketAddr,
    ada: &Client,
    lee: &Client,
    result: &serde_json::Value,
    preprocess_mb_s: f64,
) -> anyhow::Result<()> {
    let jobs = call(ada, "GET", "/v1/jobs", None)?;
    let lee_jobs = call(lee, "GET", "/v1/jobs", None)?;
    let metrics = ureq::get(&format!("http://{addr}/metrics"))
        .call()?
        .into_body()
        .read_to_string()?;
    let mut t = Table::new(&["job", "tenant", "owner", "GPUs", "state", "placed on"]);
    for j in jobs
        .as_array()
        .into_iter()
        .chain(lee_jobs.as_array())
        .flatten()
    {
        let ids: Vec<&str> = j["gpu_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str())
            .collect();
        let mut on: Vec<&str> = ids
            .iter()
            .filter_map(|g| g.rsplit_once('/').map(|(n, _)| n))
            .collect();
        on.dedup();
        t.row(vec![
            j["id"].as_str().unwrap_or_default().into(),
            j["tenant"].as_str().unwrap_or_default().into(),
            j["owner"].as_str().unwrap_or_default().into(),
            j["gpus"].to_string(),
            j["state"].as_str().unwrap_or_default().into(),
            if ids.is_empty() {
                "-".into()
            } else {
                format!("{} GPUs of {}", ids.len(), on.join(", "))
            },
        ]);
    }
    print!("{t}");
    print!("{}", measures(&metrics, result, preprocess_mb_s));
    Ok(())
}

/// The table of measures: the daemon's counters and the training and preprocessing figures.
fn measures(metrics: &str, result: &serde_json::Value, preprocess_mb_s: f64) -> Table {
    let metric = |name: &str| metric(metrics, name).unwrap_or("0").to_string();
    let mut t = Table::new(&["measure", "value"]);
    for (k, v) in [
        ("placements", metric("gantry_placements_total")),
        (
            "scheduling cycles",
            metric("gantry_scheduling_cycles_total"),
        ),
        (
            "policy decisions (allowed / denied)",
            format!(
                "{} / {}",
                metric("gantry_policy_decisions_total{allow=\"true\"}"),
                metric("gantry_policy_decisions_total{allow=\"false\"}")
            ),
        ),
        (
            "test accuracy (vision-train)",
            format!(
                "{:.1} %",
                100.0 * result["test"]["accuracy"].as_f64().unwrap_or(0.0)
            ),
        ),
        (
            "training throughput",
            format!(
                "{:.0} samples/s",
                result["samples_per_s"].as_f64().unwrap_or(0.0)
            ),
        ),
        (
            "preprocessing throughput",
            format!("{preprocess_mb_s:.0} MB/s"),
        ),
    ] {
        t.row(vec![k.into(), v]);
    }
    t
}
