//! A platform embedding the Gantry core, with no daemon and no CLI: a scheduler plugin places
//! jobs that the shipped access-control policy admitted, a preprocessing plugin standardises a
//! dataset in the sandbox, and a small training job runs on the native kernels.
//!
//! Run it with `cargo run -p gantry-example-embedder`; CI runs it and checks its dependency tree.

// An example program: it reports to stdout.
#![allow(clippy::print_stdout)]

use std::sync::Arc;

use anyhow::Context as _;
use gantry::cluster::{Cluster, JobSpec, Topology};
use gantry::policy::Subject;
use gantry::policy::source::PolicySource;
use gantry::{Host, HostConfig, HostError, PluginSource};

fn main() -> anyhow::Result<()> {
    // Two nodes of 8 GPUs, for two of the tenants the shipped policy gives quotas to.
    let mut cluster = Cluster::uniform(1, 2, 8, 2);
    for (tenant, name) in cluster.tenants.iter_mut().zip(["vision", "language"]) {
        tenant.name = name.into();
    }
    let mut host = Host::new(HostConfig::new(cluster))?;
    schedule_under_policy(&mut host)?;
    preprocess(&host)?;
    train()?;
    Ok(())
}

/// The shipped policy admits a researcher's job in her tenant and refuses one in another; the
/// `binpack` plugin places what was admitted.
fn schedule_under_policy(host: &mut Host) -> anyhow::Result<()> {
    use gantry::blocking::block_on;
    host.load_scheduler(&PluginSource::Builtin("binpack".into()))?;
    let (name, rego, data) = gantry::builtin::AUTHZ_POLICY;
    let source = PolicySource::from_parts(&[(name, rego)], data)?;
    let bundle = gantry::policy::build(&source, &[gantry::DECISION_ENTRYPOINT.into()], None)?;
    // The core is async; a synchronous program drives it through `gantry::blocking::block_on`.
    block_on(host.install_policy(bundle))?;

    let ada = Subject {
        user: "ada".into(),
        roles: vec!["researcher".into()],
        tenants: Some(vec!["vision".into()]),
        clearance: None,
    };
    block_on(host.submit_as(&ada, job("ada-train", "vision", 8)))?;
    match block_on(host.submit_as(&ada, job("ada-elsewhere", "language", 8))) {
        Err(HostError::Denied { reasons, .. }) => {
            println!("policy: ada-elsewhere refused: {}", reasons.join("; "));
        }
        other => anyhow::bail!("the policy should refuse ada in language, got {other:?}"),
    }
    let cycle = block_on(host.schedule_cycle(0.0));
    anyhow::ensure!(
        cycle.placements.len() == 1,
        "one admitted job, placed: {cycle:?}"
    );
    for a in &cycle.placements {
        println!(
            "scheduler {}: {} -> {:?}",
            cycle.decided_by, a.job_id, a.gpus
        );
    }
    Ok(())
}

fn job(id: &str, tenant: &str, gpus: u32) -> JobSpec {
    JobSpec::new(id, tenant, gpus, 40_000, 3600.0).with_topology(Topology::SameNode)
}

/// A generated CSV through the `standardize` plugin, in a pool of sandboxed instances.
fn preprocess(host: &Host) -> anyhow::Result<()> {
    let plugin = host.load_preprocess_plugin("standardize", None)?;
    let csv = Arc::new(gantry::pipeline::synthetic_csv(10_000, 4, 1));
    let open = move || -> Result<Box<dyn std::io::Read + Send>, gantry::storage::StoreError> {
        Ok(Box::new(std::io::Cursor::new(Arc::clone(&csv).to_vec())))
    };
    let (mut rows, mut sum) = (0usize, 0f64);
    let mut sink = |t: gantry::bindings::pre_v0_1::Tensor| -> Result<(), String> {
        rows += t.shape.first().copied().unwrap_or(0) as usize;
        sum += t.data.iter().map(|&v| f64::from(v)).sum::<f64>();
        Ok(())
    };
    let config = gantry::pipeline::PipelineConfig::default();
    let stats = gantry::pipeline::run(&open, &plugin, config, &mut sink)?;
    // Standardised columns have mean about 0 within each batch.
    println!(
        "preprocess standardize: {} records in {} batches, mean of the output {:.4}",
        stats.records,
        stats.batches,
        sum / (rows * 4) as f64
    );
    anyhow::ensure!(rows == 10_000, "every row comes out once, got {rows}");
    Ok(())
}

/// A small regression job on the CPU backend, through the same entry point as `gantry train`.
fn train() -> anyhow::Result<()> {
    const CONFIG: &str = r#"
        seed = 7
        epochs = 3
        batch_size = 64
        [data]
        synthetic = { kind = "regression", rows = 2000, inputs = 4, noise = 0.05 }
        [model]
        hidden = [16]
        loss = "mse"
        [optimizer]
        kind = "adam"
        lr = 0.01
        [devices]
        backend = "cpu"
    "#;
    use gantry::training::{Hooks, Job, TrainConfig, TrainLimits};
    let limits = TrainLimits::default();
    let config = TrainConfig::parse_with(CONFIG, std::path::Path::new("embedded.toml"), &limits)?;
    let outcome = Job::load(config, &limits)?
        .run(Hooks::new())
        .context("training the embedded job")?;
    println!(
        "train: {} steps on {} ({}), train loss {:.4}",
        outcome.steps, outcome.backend, outcome.backend_reason, outcome.train_loss
    );
    Ok(())
}
