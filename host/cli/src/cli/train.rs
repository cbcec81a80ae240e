//! `gantry train` and `gantry devices`.

use std::path::PathBuf;

use anyhow::Context as _;
use gantry::chart::{self, Line, Panel, XAxis};
use gantry::training::{
    self, CheckpointDir, CheckpointSink as _, Hooks, Job, TrainConfig, checkpoint, device, score,
};

use super::table::Table;

/// Arguments of `gantry train`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job: data, model, optimizer, epochs, batch size, devices, seed.
    #[arg(long, value_name = "TRAIN.toml")]
    config: PathBuf,
    /// Continue from this checkpoint file.
    #[arg(long, value_name = "FILE.ckpt", conflicts_with = "resume_latest")]
    resume: Option<PathBuf>,
    /// Continue from the newest checkpoint in the config's checkpoint directory, if any.
    #[arg(long)]
    resume_latest: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Draw the loss curve into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Size limits (TOML: `max_rows`, `max_classes`, `max_memory_mib`, ...; see
    /// `training::limits`); default: the built-in ones.
    #[arg(long, value_name = "LIMITS.toml")]
    limits: Option<PathBuf>,
}

/// Arguments of `gantry eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The checkpoint whose network is scored (a file `gantry train` wrote).
    #[arg(long, value_name = "FILE.ckpt")]
    checkpoint: PathBuf,
    /// The data: CSV with a header holding the model's feature columns, or the binary `.f32`
    /// format.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// The class column of the CSV (default: the one the model was trained on).
    #[arg(long, conflicts_with = "targets")]
    label: Option<String>,
    /// The target columns of the CSV, comma-separated (default: the model's).
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    /// CPU threads (0: every core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `gantry eval`.
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let checkpoint = checkpoint::load(&args.checkpoint)?;
    let expected = score::Expected::of(&checkpoint.state.spec, checkpoint.columns.as_ref());
    let data = score::read_for(
        &args.data,
        &expected,
        args.label.as_deref(),
        args.targets.as_deref(),
    )?;
    let evaluation = score::evaluate(&checkpoint, &data, args.threads)?;
    let result = score::Score::new(args.data.display().to_string(), data.rows(), evaluation);
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    let mut t = Table::new(&["metric", "value"]);
    t.row(vec!["data".into(), result.source.clone()]);
    t.row(vec!["rows".into(), result.rows.to_string()]);
    t.row(vec!["loss".into(), format!("{:.4}", result.loss)]);
    if let Some(a) = result.accuracy {
        t.row(vec!["accuracy".into(), format!("{:.1} %", 100.0 * a)]);
    }
    print!("{t}");
    Ok(())
}

/// Runs `gantry train`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let limits = match &args.limits {
        Some(path) => training::TrainLimits::load(path)?,
        None => training::TrainLimits::default(),
    };
    let config = TrainConfig::load_with(&args.config, &limits)?;
    let (resume_from, resume) = resume(&args, &config)?;
    let job = Job::load(config, &limits)?.resume_from(resume);
    eprintln!("devices: {}", describe_devices(job.devices(), None));
    eprintln!("backend: {}", job.selected().reason());
    if let Some(p) = &resume_from {
        eprintln!("resuming from {p}");
    }
    let (epochs, source) = (job.config().epochs, job.data().source.clone());
    let bar = super::progress(0, "training");
    let mut progress = |p: &training::Progress| {
        if bar.length() != Some(p.total_steps) {
            bar.set_length(p.total_steps);
        }
        bar.set_position(u64::from(p.step));
        bar.set_message(format!(
            "epoch {}/{epochs} loss {:.4} {:.0} samples/s",
            p.epoch + 1,
            p.loss,
            p.samples_per_s
        ));
    };
    let outcome = job.run(Hooks::new().progress(&mut progress))?;
    bar.finish_and_clear();
    if let Some(path) = &args.plot {
        plot(path, &args.config, &source, &outcome)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&outcome)?);
        return Ok(());
    }
    print!("{}", summary(&outcome, &source, args.plot.as_deref()));
    Ok(())
}

/// The checkpoint `--resume` or `--resume-latest` names (where it is, and the checkpoint).
fn resume(
    args: &Args,
    config: &TrainConfig,
) -> anyhow::Result<(Option<String>, Option<checkpoint::Checkpoint>)> {
    match (&args.resume, args.resume_latest) {
        (Some(p), _) => Ok((Some(p.display().to_string()), Some(checkpoint::load(p)?))),
        (None, true) => {
            let dir = &config
                .checkpoint
                .as_ref()
                .context("--resume-latest needs a [checkpoint] table in the config")?
                .dir;
            let latest = CheckpointDir::new(dir).latest()?;
            Ok(latest.map_or((None, None), |(at, c)| (Some(at), Some(c))))
        }
        (None, false) => Ok((None, None)),
    }
}

/// Draws the loss curve of a run of `config` on `source` into `path`.
fn plot(
    path: &std::path::Path,
    config: &std::path::Path,
    source: &str,
    outcome: &training::Outcome,
) -> anyhow::Result<()> {
    let title = format!(
        "gantry train {} ({} parameters, {source})",
        config.display(),
        outcome.parameters,
    );
    let svg = chart::svg(
        &title,
        XAxis {
            label: "step",
            scale: 1.0,
        },
        &[Panel {
            label: "training loss (per step)",
            points: outcome
                .curve
                .iter()
                .map(|&(s, l)| (f64::from(s), l))
                .collect(),
            y_max: None,
            colour: "#1f77b4",
            line: Line::Straight,
        }],
    );
    super::simulate::write_atomically(path, svg.as_bytes())
}

/// The table `gantry train` prints for a run on `source`.
fn summary(outcome: &training::Outcome, source: &str, plot: Option<&std::path::Path>) -> Table {
    let mut t = Table::new(&["metric", "value"]);
    let mut row = |k: &str, v: String| t.row(vec![k.into(), v]);
    row(
        "data",
        format!(
            "{source} ({} train, {} test rows)",
            outcome.train_rows, outcome.test_rows
        ),
    );
    row("backend", outcome.backend.clone());
    row("replicas", outcome.replicas.to_string());
    row("parameters", outcome.parameters.to_string());
    row("epochs", outcome.epochs.to_string());
    row("steps", outcome.steps.to_string());
    if let Some(at) = outcome.resumed_at_step {
        row("resumed at step", at.to_string());
    }
    row(
        "train loss (last epoch)",
        format!("{:.4}", outcome.train_loss),
    );
    if let Some(test) = outcome.test {
        row("test loss", format!("{:.4}", test.loss));
        if let Some(a) = test.accuracy {
            row("test accuracy", format!("{:.1} %", 100.0 * a));
        }
    }
    if let Some(file) = &outcome.test_file {
        row("test file", format!("{} ({} rows)", file.source, file.rows));
        row("test file loss", format!("{:.4}", file.loss));
        if let Some(a) = file.accuracy {
            row("test file accuracy", format!("{:.1} %", 100.0 * a));
        }
    }
    row(
        "throughput",
        format!("{:.0} samples/s", outcome.samples_per_s),
    );
    row("time", format!("{:.2} s", outcome.seconds));
    if let Some(c) = &outcome.checkpoint {
        row("checkpoint", c.clone());
    }
    if let Some(p) = plot {
        row("plot", p.display().to_string());
    }
    t
}

/// `r` in one line, with each GPU's health where `health` is given.
fn describe_devices(r: &device::DeviceReport, health: Option<&GpuHealth>) -> String {
    let mut s = format!("{} CPU core(s)", r.cpu_cores);
    if r.cpu_bf16 {
        s += " with AMX (bf16 GEMM)";
    }
    if r.gpus.is_empty() {
        s += &format!(
            "; no GPU ({})",
            r.cuda_unavailable.as_deref().unwrap_or("none found")
        );
    }
    for g in &r.gpus {
        s += &format!(
            "; GPU {}: {} ({:.1} GiB",
            g.ordinal,
            g.name,
            g.memory_bytes as f64 / (1u64 << 30) as f64
        );
        if let Some(bus) = &g.pci_bus_id {
            s += &format!(", PCI {bus}");
        }
        let known = health.and_then(|h| h.as_ref().ok()?.get(&g.ordinal));
        if let Some((_, _, peers)) = known.filter(|(_, _, p)| !p.is_empty()) {
            let peers: Vec<String> = peers.iter().map(u32::to_string).collect();
            s += &format!(", NVLink to GPU {}", peers.join(", "));
        }
        match known {
            Some((_, Some(why), _)) => s += &format!(", unfit: {why})"),
            Some((_, None, _)) => s += ", fit)",
            None => s += ")",
        }
    }
    if let (false, Some(Err(why))) = (r.gpus.is_empty(), health) {
        s += &format!("; GPU health unknown: {why}");
    }
    s
}

/// Each GPU's NVML readings, why it is unfit (if it is) and the GPUs it reaches over NVLink,
/// by ordinal; or why NVML cannot tell.
type GpuHealth = Result<
    std::collections::BTreeMap<usize, (super::agent_health::Readings, Option<String>, Vec<u32>)>,
    String,
>;

/// What NVML says of `report`'s GPUs, as a node's agent reads them before a heartbeat.
fn gpu_health(report: &device::DeviceReport) -> GpuHealth {
    if report.gpus.is_empty() {
        return Ok(Default::default());
    }
    let mut health = super::agent_health::Health::load()?;
    let buses: Vec<(u32, Option<String>)> = report
        .gpus
        .iter()
        .map(|g| (g.ordinal as u32, g.pci_bus_id.clone()))
        .collect();
    Ok(report
        .gpus
        .iter()
        .filter_map(|g| {
            let bus = g.pci_bus_id.as_deref()?;
            let readings = health.read(bus);
            let unfit = super::agent_health::unfit(&readings);
            let peers = health.nvlink_peers(Some(bus), &buses);
            Some((g.ordinal, (readings, unfit, peers)))
        })
        .collect())
}

/// Runs `gantry devices`.
pub fn devices(json: bool) -> anyhow::Result<()> {
    let report = device::detect();
    let health = gpu_health(&report);
    if json {
        let mut value = serde_json::to_value(&report)?;
        value["health"] = match &health {
            Ok(gpus) => serde_json::json!(
                gpus.iter()
                    .map(|(ordinal, (readings, unfit, peers))| serde_json::json!(
                        {"ordinal": ordinal, "readings": readings, "unfit": unfit,
                         "nvlink_peers": peers}))
                    .collect::<Vec<_>>()
            ),
            Err(why) => serde_json::json!({ "unknown": why }),
        };
        println!("{}", serde_json::to_string(&value)?);
    } else {
        println!("{}", describe_devices(&report, Some(&health)));
    }
    Ok(())
}
