//! `gantry simulate` and `gantry trace generate`.

use std::path::PathBuf;

use anyhow::Context as _;
use gantry::simulate::{self, Metrics, trace};

use super::table::Table;

/// Arguments of `gantry simulate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cluster file; default: the built-in cluster (256 GPUs, 3 tenants).
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// Trace CSV; default: a synthetic trace (see --jobs, --seed, --load).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// A shipped plugin (see `gantry plugins`), a plugin directory or a manifest.
    #[arg(long, default_value = "binpack")]
    plugin: String,
    #[command(flatten)]
    synthetic: SyntheticArgs,
    /// Seconds a job that could run waits before GPUs are held for it: later jobs are then
    /// placed only where they cannot delay it (0: at once; `never`: no holding). As `gantry up`.
    #[arg(long, value_name = "SECS|never", default_value_t = gantry::DEFAULT_RESERVE_AFTER_S,
          value_parser = super::reserve_after_s)]
    reserve_after_s: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Draw utilisation and queue length over time into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Write one row per job (state, wait, JCT, slowdown, ...) into this file: JSON when it
    /// ends in `.json`, else CSV.
    #[arg(long, value_name = "FILE")]
    jobs_out: Option<PathBuf>,
    /// Exit 0 even when jobs that could run never finished (by default that is an error).
    #[arg(long)]
    allow_unfinished: bool,
    #[command(flatten)]
    policy: super::policy::PolicyArgs,
}

/// The synthetic trace's options, of `gantry simulate` and `gantry trace generate`.
#[derive(Debug, clap::Args)]
pub struct SyntheticArgs {
    /// Jobs in the synthetic trace.
    #[arg(long, default_value_t = 2000, value_parser = super::synthetic_jobs())]
    jobs: usize,
    /// Seed of the synthetic trace.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Offered load of the synthetic trace (GPU demand / healthy GPUs).
    #[arg(long, default_value_t = 0.9)]
    load: f64,
}

impl SyntheticArgs {
    fn trace(&self, cluster: &gantry::cluster::Cluster) -> Vec<trace::TraceJob> {
        trace::synthetic(
            cluster,
            trace::Synthetic {
                jobs: self.jobs,
                seed: self.seed,
                load: self.load,
            },
        )
    }
}

/// `gantry trace ...`.
#[derive(Debug, clap::Subcommand)]
pub enum TraceCommand {
    /// Write a seeded synthetic trace as CSV.
    Generate {
        /// Cluster file the trace is sized for; default: the built-in cluster.
        #[arg(long, value_name = "FILE")]
        cluster: Option<PathBuf>,
        #[command(flatten)]
        synthetic: SyntheticArgs,
        /// Output file.
        #[arg(short, long, value_name = "FILE.csv")]
        out: PathBuf,
    },
}

/// Runs `gantry simulate`.
pub fn run(ctx: &super::Context, args: Args) -> anyhow::Result<()> {
    let cluster = super::cluster(args.cluster.as_ref())?;
    let jobs = match &args.trace {
        Some(path) => trace::load(path, &cluster)?,
        None => args.synthetic.trace(&cluster),
    };
    let healthy = cluster.gpus.iter().filter(|g| g.gpu.healthy).count();
    let mut host = ctx.host(cluster, &args.plugin)?;
    host.set_reserve_after_s(args.reserve_after_s);
    args.policy.install(&mut host)?;
    let bar = super::progress(jobs.len() as u64, "simulating");
    let result = simulate::run(&mut host, &jobs, &mut |done, _| bar.set_position(done));
    bar.finish_and_clear();
    if let Some(path) = &args.plot {
        let title = format!(
            "gantry simulate --plugin {} ({} jobs)",
            args.plugin,
            jobs.len()
        );
        let svg = simulate::plot::svg(&title, &result.timeline, healthy);
        write_atomically(path, svg.as_bytes())?;
    }
    if let Some(path) = &args.jobs_out {
        write_atomically(path, &jobs_file(path, &result.jobs)?)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&result.metrics)?);
    } else {
        print!("{}", metrics_table(&args.plugin, &result.metrics));
        if result.metrics.jobs_unfinished > 0 {
            println!(
                "wait and JCT include the {} unfinished job(s), counted up to the end of the run",
                result.metrics.jobs_unfinished
            );
        }
        for (what, path) in [("plot", &args.plot), ("per-job results", &args.jobs_out)] {
            if let Some(path) = path {
                println!("{what} written to {}", path.display());
            }
        }
    }
    check_finished(&result.jobs, args.allow_unfinished)
}

/// An error naming the jobs that could run but never finished, unless they are allowed.
fn check_finished(jobs: &[simulate::JobOutcome], allowed: bool) -> anyhow::Result<()> {
    let unfinished: Vec<&str> = jobs
        .iter()
        .filter(|j| j.state == simulate::JobState::Unfinished)
        .map(|j| j.id.as_str())
        .collect();
    if unfinished.is_empty() || allowed {
        return Ok(());
    }
    let n = unfinished.len();
    let shown = unfinished[..n.min(5)].join(", ");
    anyhow::bail!(
        "{n} job{} that could run never finished ({shown}{}): the plugin or the policy left {} \
         queued; pass --allow-unfinished to accept such a run",
        if n == 1 { "" } else { "s" },
        if n > 5 { ", ..." } else { "" },
        if n == 1 { "it" } else { "them" },
    )
}

/// The per-job results as JSON (for a `.json` path) or CSV.
fn jobs_file(path: &std::path::Path, jobs: &[simulate::JobOutcome]) -> anyhow::Result<Vec<u8>> {
    if path.extension().is_some_and(|e| e == "json") {
        return Ok(serde_json::to_vec_pretty(jobs)?);
    }
    let mut out = csv::Writer::from_writer(Vec::new());
    for job in jobs {
        out.serialize(job)?;
    }
    out.into_inner().map_err(|e| anyhow::anyhow!("{e}"))
}

fn metrics_table(plugin: &str, m: &Metrics) -> Table {
    let mut t = Table::new(&["metric", plugin]);
    let hours = |s: f64| format!("{:.2} h", s / 3600.0);
    let minutes = |s: f64| format!("{:.1} min", s / 60.0);
    let percent = |x: f64| format!("{:.1} %", 100.0 * x);
    let c = &m.scheduling;
    for (name, value) in [
        ("jobs completed", m.jobs_completed.to_string()),
        ("jobs unfinished", m.jobs_unfinished.to_string()),
        ("mean JCT", hours(m.jct_mean_s)),
        ("p99 JCT", hours(m.jct_p99_s)),
        ("mean queueing delay", minutes(m.wait_mean_s)),
        ("p99 queueing delay", minutes(m.wait_p99_s)),
        ("GPU utilisation", percent(m.utilization)),
        ("goodput", percent(m.goodput)),
        ("makespan", hours(m.makespan_s)),
        ("fair-share deficit", percent(m.fair_share_deficit)),
        ("Jain's index (share/fair)", format!("{:.3}", m.fairness)),
        ("scheduling cycles", c.cycles.to_string()),
        ("mean cycle time", format!("{:.0} µs", c.mean_cycle_us)),
        ("plugin faults", c.plugin_faults.to_string()),
        ("fallback cycles", c.fallback_cycles.to_string()),
        (
            "plugin no-progress faults",
            c.plugin_no_progress_faults.to_string(),
        ),
        (
            "plugin output dropped",
            format!("{} B", c.plugin_output_dropped_bytes),
        ),
        ("plugin quarantined", c.quarantined.to_string()),
    ] {
        t.row(vec![name.to_string(), value]);
    }
    t
}

/// Runs `gantry trace ...`.
pub fn trace(cmd: TraceCommand) -> anyhow::Result<()> {
    match cmd {
        TraceCommand::Generate {
            cluster,
            synthetic,
            out,
        } => {
            let cluster = super::cluster(cluster.as_ref())?;
            let trace = synthetic.trace(&cluster);
            write_atomically(&out, trace::to_csv(&trace).as_bytes())?;
            eprintln!("wrote {} jobs to {}", trace.len(), out.display());
            Ok(())
        }
    }
}

/// Writes through a temporary file and a rename, so a failure leaves no half-written output.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    gantry::durable::write(path, bytes, gantry::durable::Mode::Default)
        .with_context(|| format!("writing {}", path.display()))
}
