//! `gantry schedule`: one scheduling cycle.

use std::path::PathBuf;

use gantry::cluster::files;

use super::table::Table;

/// Arguments of `gantry schedule`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cluster file (TOML, or JSON by extension); default: the built-in cluster.
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// Jobs file (TOML, or JSON by extension).
    #[arg(long, value_name = "FILE")]
    jobs: PathBuf,
    /// A shipped plugin (see `gantry plugins`), a plugin directory or a manifest.
    #[arg(long, default_value = "binpack")]
    plugin: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    policy: super::policy::PolicyArgs,
}

/// Runs the command.
pub fn run(ctx: &super::Context, args: Args) -> anyhow::Result<()> {
    let cluster = super::cluster(args.cluster.as_ref())?;
    let jobs = files::load_jobs(&args.jobs, &cluster)?;
    let mut host = ctx.host(cluster, &args.plugin)?;
    args.policy.install(&mut host)?;
    let now = jobs.iter().map(|j| j.submit_time_s).fold(0.0, f64::max);
    for job in jobs {
        host.submit(job)?;
    }
    let report = gantry::blocking::block_on(host.schedule_cycle(now));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let mut t = Table::new(&["job", "tenant", "gpus", "placed on"]);
    for a in &report.placements {
        t.row(vec![
            a.job_id.clone(),
            a.tenant.clone(),
            a.gpus.len().to_string(),
            compact(&a.gpus),
        ]);
    }
    print!("{t}");
    println!(
        "\ndecided by {}; {} placed, {} still pending; {:.0} µs",
        report.decided_by,
        report.placements.len(),
        report.pending,
        report.elapsed_us
    );
    if let Some(reason) = &report.fallback_reason {
        println!("fallback: {reason}");
    }
    for (job, reasons) in &report.policy_refused {
        println!("refused by policy: {job}: {}", reasons.join("; "));
    }
    Ok(())
}

/// `node-001/gpu0, node-001/gpu1` -> `node-001/gpu{0,1}`.
fn compact(gpus: &[String]) -> String {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for g in gpus {
        let (node, dev) = g.rsplit_once('/').unwrap_or((g.as_str(), ""));
        match groups.last_mut() {
            Some((n, devs)) if n == node => devs.push(dev.to_string()),
            _ => groups.push((node.to_string(), vec![dev.to_string()])),
        }
    }
    groups
        .into_iter()
        .map(|(node, devs)| {
            if devs.len() == 1 {
                format!("{node}/{}", devs[0])
            } else {
                let ids: Vec<&str> = devs.iter().map(|d| d.trim_start_matches("gpu")).collect();
                format!("{node}/gpu{{{}}}", ids.join(","))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
