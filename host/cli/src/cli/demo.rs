//! `gantry demo`: the whole product in under two minutes, on a throwaway data directory.

use std::time::Instant;

use anyhow::Context as _;
use gantry::pipeline::{self, PipelineConfig};
use gantry::plugin::{ArtifactCache, base_linker};
use gantry::preprocess::PreprocessPlugin;
use gantry::storage::Store;
use gantry_daemon::db::User;
use gantry_daemon::{self as daemon, DaemonConfig};
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
const TRAIN: &str = r#"seed = 11
epochs = 60
batch_size = 64
[data]
dataset = "spirals.csv"
label_column = 1
preprocess = "standardize"
[model]
hidden = [64, 64]
loss = "softmax_cross_entropy"
[optimizer]
kind = "adam"
lr = 0.005
[checkpoint]
every_steps = 500
"#;

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
    step(1, "a host on a fresh data directory");
    let master = Store::init(dir)?.master_id();
    println!(
        "  {}: encrypted store (master key {master}), host signing key",
        dir.display(),
    );
    // As `gantry user add` does it: under the directory's lock, each recorded in the audit log.
    let admin = daemon::datadir::DataDir::open(dir, "gantry demo")?;
    let mut tokens = Vec::new();
    for (name, tenant) in [("ada", "vision"), ("lee", "language")] {
        let user = User {
            name: name.into(),
            roles: vec!["researcher".into(), "writer".into()],
            tenants: vec![tenant.into()],
            clearance: "internal".into(),
        };
        tokens.push(admin.add_user(&user, None)?.token);
        println!("  user {name} (tenant {tenant}) with a bearer token");
    }
    admin.close()?;

    // The daemon, in this process, on a free loopback port.
    let server = daemon::Background::start(DaemonConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("an address"),
        cluster: super::cluster(None)?,
        cache_dir: ctx.cache_dir.clone(),
        tls: None,
        trust: Default::default(),
        train_limits: Default::default(),
        conn_limits: Default::default(),
        shipped_policy: false,
    })?;
    let addr = server.addr;
    println!(
        "  gantry up: listening on http://{addr} (binpack scheduler, gantry.authz policy, audit log)"
    );
    let client = |i: usize| Client {
        url: format!("http://{addr}"),
        token: tokens[i].clone(),
        ca_cert: None,
    };
    let (ada, lee) = (client(0), client(1));

    step(
        2,
        "ada uploads a dataset; two tenants submit jobs; the policy decides each one",
    );
    // Three interleaved spirals as CSV, in units far from standardised, the class in column 1.
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
    let uploaded = ureq::put(&format!(
        "http://{addr}/v1/datasets/spirals.csv?tenant=vision&classification=internal"
    ))
    .header("Authorization", &format!("Bearer {}", ada.token))
    .send(spirals.as_bytes())
    .context("uploading the dataset")?
    .into_body()
    .read_json::<serde_json::Value>()?;
    println!(
        "  ada -> dataset spirals.csv ({} bytes, internal): stored encrypted as object {}…",
        uploaded["bytes"],
        &uploaded["object"].as_str().unwrap_or_default()[..16]
    );
    let submissions = [
        (
            &ada,
            "ada",
            json!({"id": "vision-train", "tenant": "vision", "gpus": 8, "train": TRAIN}),
        ),
        (
            &ada,
            "ada",
            json!({"id": "vision-eval", "tenant": "vision", "gpus": 4}),
        ),
        (
            &lee,
            "lee",
            json!({"id": "lee-in-vision", "tenant": "vision", "gpus": 8}),
        ),
        (
            &lee,
            "lee",
            json!({"id": "language-big", "tenant": "language", "gpus": 16}),
        ),
    ];
    for (who, name, body) in submissions {
        let id = body["id"].as_str().unwrap_or_default().to_string();
        let tenant = body["tenant"].as_str().unwrap_or_default().to_string();
        match call(who, "POST", "/v1/jobs", Some(body)) {
            Ok(_) => println!("  {name} -> {id} on {tenant}: accepted"),
            Err(e) => println!("  {name} -> {id} on {tenant}: REFUSED: {e}"),
        }
    }

    step(
        3,
        "a generated dataset, encrypted at rest, through the wasm preprocessing plugin",
    );
    let csv = gantry::pipeline::synthetic_csv(200_000, 8, 7);
    // Through the daemon, which holds the data directory; read back beside it.
    let stored = ureq::put(&format!(
        "http://{addr}/v1/datasets/generated.csv?tenant=vision&classification=internal"
    ))
    .header("Authorization", &format!("Bearer {}", ada.token))
    .send(&csv[..])
    .context("uploading the generated dataset")?
    .into_body()
    .read_json::<serde_json::Value>()?;
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
    let engine = gantry::engine::build().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let _ticker = gantry::engine::EpochTicker::start(&engine);
    let linker = base_linker(&engine).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let cache = ArtifactCache::new(&engine, ctx.cache_dir.clone());
    let plugin = PreprocessPlugin::builtin(&engine, &linker, &cache, "standardize")?;
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

    step(
        4,
        "vision-train: spirals.csv decrypted, standardised in the sandbox, trained natively",
    );
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
    let total_steps = 60 * 2400u64.div_ceil(64);
    let bar = super::progress(total_steps, "training vision-train");
    let job = loop {
        let job = call(&ada, "GET", "/v1/jobs/vision-train", None)?;
        let state = job["state"].as_str().unwrap_or_default().to_string();
        if let Ok(metrics) = ureq::get(&format!("http://{addr}/metrics"))
            .call()
            .and_then(|r| r.into_body().read_to_string())
            && let Some(steps) = metrics
                .lines()
                .find(|l| l.starts_with("gantry_train_steps_total "))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<u64>().ok())
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

    step(5, "what the host did");
    let jobs = call(&ada, "GET", "/v1/jobs", None)?;
    let lee_jobs = call(&lee, "GET", "/v1/jobs", None)?;
    let metrics = ureq::get(&format!("http://{addr}/metrics"))
        .call()?
        .into_body()
        .read_to_string()?;
    let metric = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("0")
            .to_string()
    };
    let mut t = Table::new(&["job", "tenant", "owner", "GPUs", "state", "placed on"]);
    for j in jobs
        .as_array()
        .into_iter()
        .chain(lee_jobs.as_array())
        .flatten()
    {
        let gpus = j["gpu_ids"].as_array().map(Vec::len).unwrap_or(0);
        t.row(vec![
            j["id"].as_str().unwrap_or_default().into(),
            j["tenant"].as_str().unwrap_or_default().into(),
            j["owner"].as_str().unwrap_or_default().into(),
            j["gpus"].to_string(),
            j["state"].as_str().unwrap_or_default().into(),
            if gpus > 0 {
                format!("{gpus} GPUs")
            } else {
                "-".into()
            },
        ]);
    }
    print!("{t}");
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
    print!("{t}");

    step(6, "stop, and verify the audit log");
    server.stop()?;
    let key = gantry::keys::load(&dir.join("keys/host.pk8"))?;
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
