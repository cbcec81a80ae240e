//! `gantry bench ...`.

use std::path::PathBuf;

use crate::bench::{self, ScheduleParams};

use super::table::Table;

/// Benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// One scheduling cycle through the wasm bin-packing plugin vs the native implementation.
    Schedule {
        /// Racks of 8 nodes (64 racks = 512 nodes).
        #[arg(long, default_value_t = 64)]
        racks: u32,
        /// GPUs per node.
        #[arg(long, default_value_t = 8)]
        gpus_per_node: u32,
        /// Pending jobs.
        #[arg(long, default_value_t = 10_000, value_parser = super::synthetic_jobs())]
        jobs: usize,
        /// Timed cycles per side.
        #[arg(long, default_value_t = 30, value_parser = super::count::<usize>(100_000))]
        iterations: usize,
        /// Plugin to measure against native bin packing: a shipped name, a directory or a
        /// manifest.
        #[arg(long, default_value = "binpack")]
        plugin: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Decisions of the shipped authz policy: sandboxed engine module vs native regorus.
    Policy {
        /// Timed decisions per side for the latency percentiles.
        #[arg(long, default_value_t = 20_000, value_parser = super::count::<usize>(10_000_000))]
        decisions: usize,
        /// Threads for the throughput figure (default: every core).
        #[arg(long, value_parser = super::count::<usize>(1024))]
        threads: Option<usize>,
        /// Seconds each side runs for the throughput figure.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The policy author's loop: a new policy through `policy build` and `policy eval` (new
    /// processes), with the module cache warm vs cold, in one run.
    Authoring {
        /// Timed rounds with the cache warm.
        #[arg(long, default_value_t = 10, value_parser = super::count::<usize>(1000))]
        rounds: usize,
        /// Timed rounds with an empty cache (each compiles the engine module).
        #[arg(long, default_value_t = 3, value_parser = super::count::<usize>(100))]
        cold_rounds: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// What a command run's isolation costs: a run of `/bin/true` from asking to its end, and
    /// a system call in a run with the system-call filter vs without, side by side.
    Jobs {
        /// Runs timed per side.
        #[arg(long, default_value_t = 15, value_parser = super::count::<usize>(10_000))]
        runs: usize,
        /// `getppid` calls in each timed run.
        #[arg(long, default_value_t = 2_000_000, value_parser = super::count::<u64>(1_000_000_000))]
        calls: u64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// f32 GEMM and an MLP training step on the CPU backend vs NumPy (OpenBLAS) and PyTorch.
    Kernels(KernelArgs),
    /// A load test of the daemon's API on loopback: concurrent submits and reads, latency
    /// percentiles, errors and lost jobs.
    Api {
        /// Concurrent clients.
        #[arg(long, default_value_t = 8, value_parser = super::count::<usize>(1024))]
        clients: usize,
        /// Submissions per client (each read back once).
        #[arg(long, default_value_t = 250, value_parser = super::count::<usize>(1_000_000))]
        submits: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The control plane's two stores side by side: jobs submitted one at a time to a daemon
    /// keeping them in SQLite and to the leader of a control plane on etcd (started on
    /// loopback; skipped where etcd is not installed): submit and submit-to-scheduled latency.
    Cluster {
        /// Nodes of 8 GPUs in the cluster.
        #[arg(long, default_value_t = 1000, value_parser = super::count::<u32>(131_072))]
        nodes: u32,
        /// Jobs submitted, one at a time.
        #[arg(long, default_value_t = 200, value_parser = super::count::<usize>(1_000_000))]
        jobs: usize,
        /// Seconds between a node agent's heartbeats in the runs with agents (every node
        /// registered by its agent); 0: no runs with agents.
        #[arg(long, default_value_t = 2.0)]
        heartbeat_s: f64,
        /// Leaders of three `gantry up --etcd` replicas killed one after another (SIGKILL),
        /// each new leader timed; 0: none.
        #[arg(long, default_value_t = 20, value_parser = super::count_or_none::<usize>(1000))]
        failovers: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Hostile clients against a real `gantry up` (a child process) on loopback: a slowloris
    /// (health latency during it), unauthenticated 60 MiB uploads (the daemon's peak memory), a
    /// flood of junk requests (what it adds to the audit log).
    Attack {
        /// Slow connections (from 127.0.0.2).
        #[arg(long, default_value_t = 1000, value_parser = super::count::<usize>(100_000))]
        connections: usize,
        /// Seconds the slowloris lasts.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Junk requests.
        #[arg(long, default_value_t = 2000, value_parser = super::count::<usize>(1_000_000))]
        junk: usize,
        /// The `gantry` binary whose daemon is attacked (default: this one), to compare another
        /// build side by side.
        #[arg(long, value_name = "PATH")]
        daemon: Option<std::path::PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// CSV standardisation through the wasm `standardize` plugin vs the same code native.
    Preprocess {
        /// CSV rows in the generated dataset.
        #[arg(long, default_value_t = 400_000, value_parser = super::count::<usize>(10_000_000))]
        rows: usize,
        /// Records per batch.
        #[arg(long, default_value_t = 4096, value_parser = super::count::<usize>(1_000_000))]
        batch: usize,
        /// Worker threads per side (default: every core).
        #[arg(long, value_parser = super::count::<usize>(1024))]
        threads: Option<usize>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `gantry bench kernels`.
#[derive(Debug, clap::Args)]
pub struct KernelArgs {
    /// Threads for every side (default: every core).
    #[arg(long, value_parser = super::count::<usize>(1024))]
    threads: Option<usize>,
    /// Python interpreter with NumPy and PyTorch for the peers.
    #[arg(long, default_value = "python3", value_name = "PYTHON")]
    python: PathBuf,
    /// Measure Gantry only.
    #[arg(long)]
    no_peers: bool,
    /// Timed training steps.
    #[arg(long, default_value_t = 30, value_parser = super::count::<usize>(100_000))]
    steps: usize,
    /// Rounds of (Gantry, peers); each side's best round is reported.
    #[arg(long, default_value_t = 3, value_parser = super::count::<usize>(1000))]
    rounds: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs a benchmark.
pub fn run(ctx: &super::Context, cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Kernels(args) => kernels(args),
        BenchCommand::Api {
            clients,
            submits,
            json,
        } => api(ctx, clients, submits, json),
        BenchCommand::Cluster {
            nodes,
            jobs,
            heartbeat_s,
            failovers,
            json,
        } => cluster(ctx, nodes, jobs, heartbeat_s, failovers.min(1000), json),
        BenchCommand::Attack {
            connections,
            seconds,
            junk,
            daemon,
            json,
        } => {
            let params = bench::attack::AttackParams {
                connections,
                seconds,
                junk,
                daemon,
            };
            attack(ctx, params, json)
        }
        BenchCommand::Preprocess {
            rows,
            batch,
            threads,
            json,
        } => preprocess(rows, batch, threads, json),
        BenchCommand::Schedule {
            racks,
            gpus_per_node,
            jobs,
            iterations,
            plugin,
            json,
        } => {
            // The cluster is built whole before anything runs: bound it as a cluster file is.
            let gpus = u64::from(racks) * 8 * u64::from(gpus_per_node);
            if racks == 0 || gpus_per_node == 0 || gpus > gantry::cluster::files::MAX_GPUS as u64 {
                anyhow::bail!(
                    "--racks {racks} x 8 nodes x --gpus-per-node {gpus_per_node} make {gpus} GPUs: \
                     from 1 to {} GPUs",
                    gantry::cluster::files::MAX_GPUS
                );
            }
            let params = ScheduleParams {
                racks,
                gpus_per_node,
                jobs,
                iterations: iterations.max(1),
                ..Default::default()
            };
            schedule(ctx, params, &plugin, json)
        }
        BenchCommand::Policy {
            decisions,
            threads,
            seconds,
            json,
        } => policy(decisions, threads, seconds, json),
        BenchCommand::Authoring {
            rounds,
            cold_rounds,
            json,
        } => authoring(rounds.max(1), cold_rounds.max(1), json),
        BenchCommand::Jobs { runs, calls, json } => jobs(runs, calls, json),
    }
}

/// Prints one JSON object when asked to; `true` when it did (the table is then not printed).
fn printed_json(json: bool, report: &impl serde::Serialize) -> anyhow::Result<bool> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    }
    Ok(json)
}

/// Prints a two-column table of measures.
fn print_measures(rows: Vec<(&str, String)>) {
    let mut t = Table::new(&["measure", "value"]);
    for (k, v) in rows {
        t.row(vec![k.into(), v]);
    }
    print!("{t}");
}

fn api(ctx: &super::Context, clients: usize, submits: usize, json: bool) -> anyhow::Result<()> {
    let r = bench::api::run(
        bench::api::ApiParams {
            clients: clients.max(1),
            submits_per_client: submits.max(1),
        },
        ctx.cache_dir.clone(),
    )?;
    if printed_json(json, &r)? {
        return Ok(());
    }
    let mut t = Table::new(&["request", "count", "p50 ms", "p95 ms", "p99 ms", "max ms"]);
    for (k, l) in [
        ("POST /v1/jobs", &r.submit),
        ("GET /v1/jobs/{id}", &r.read),
        ("GET /v1/health (under the load)", &r.health),
    ] {
        t.row(vec![
            k.into(),
            l.requests.to_string(),
            format!("{:.2}", l.p50_ms),
            format!("{:.2}", l.p95_ms),
            format!("{:.2}", l.p99_ms),
            format!("{:.2}", l.max_ms),
        ]);
    }
    print!("{t}");
    println!(
        "{} clients, {:.0} requests/s, {} errors, {} lost jobs",
        r.clients, r.requests_per_s, r.errors, r.lost_jobs
    );
    if r.errors > 0 || r.lost_jobs > 0 {
        anyhow::bail!("the load test saw errors or lost jobs");
    }
    Ok(())
}

fn cluster(
    ctx: &super::Context,
    nodes: u32,
    jobs: usize,
    heartbeat_s: f64,
    failovers: usize,
    json: bool,
) -> anyhow::Result<()> {
    if !(heartbeat_s == 0.0 || (0.1..=60.0).contains(&heartbeat_s)) {
        anyhow::bail!("--heartbeat-s: 0 (no agents) or 0.1 to 60 seconds, not {heartbeat_s}");
    }
    let params = bench::cluster::ClusterParams {
        nodes: nodes.clamp(1, 100_000),
        jobs: jobs.clamp(1, 100_000),
        heartbeat_s,
        failovers,
    };
    let r = bench::cluster::run(params, ctx.cache_dir.clone())?;
    if printed_json(json, &r)? {
        return Ok(());
    }
    println!(
        "{} nodes, {} GPUs, {} jobs one at a time, on {}",
        r.nodes, r.gpus, params.jobs, r.cpu
    );
    let mut t = Table::new(&["store", "measure", "p50 ms", "p99 ms", "max ms"]);
    let runs = [
        &Some(r.sqlite.clone()),
        &r.sqlite_agents,
        &r.etcd,
        &r.etcd_agents,
    ];
    for run in runs.into_iter().flatten() {
        let store = match &run.agents {
            Some(a) => format!("{} + {} agents", run.store, a.nodes),
            None => run.store.to_string(),
        };
        let beat = run.agents.as_ref().map(|a| ("heartbeat", &a.heartbeat));
        let measures = [
            Some(("POST /v1/jobs", &run.submit)),
            Some(("submit to scheduled", &run.to_scheduled)),
            beat,
        ];
        for (k, l) in measures.into_iter().flatten() {
            t.row(vec![
                store.clone(),
                k.into(),
                format!("{:.2}", l.p50_ms),
                format!("{:.2}", l.p99_ms),
                format!("{:.2}", l.max_ms),
            ]);
        }
    }
    print!("{t}");
    for a in [&r.sqlite_agents, &r.etcd_agents]
        .into_iter()
        .flatten()
        .filter_map(|run| run.agents.as_ref().map(|a| (run.store, a)))
    {
        println!(
            "{}: {} nodes registered by their agents in {:.1} s; {:.0} heartbeats/s, {} failed",
            a.0, a.1.nodes, a.1.registered_s, a.1.heartbeats_per_s, a.1.failed
        );
    }
    if let Some(f) = &r.failover {
        println!(
            "failover: {} kills of the leader of 3 replicas ({} s lease): a new leader after {:.2} s (median), {:.2} s (max); {} jobs lost",
            f.kills, f.lease_s, f.median_s, f.max_s, f.lost_jobs
        );
    }
    match (&r.to_scheduled_p50_ratio, &r.etcd_skipped) {
        (Some(ratio), _) => println!("etcd / sqlite, median submit to scheduled: {ratio:.2}x"),
        (None, Some(why)) => println!("etcd: skipped, {why}"),
        _ => {}
    }
    let lost = r.sqlite.lost_jobs + r.etcd.as_ref().map_or(0, |e| e.lost_jobs);
    if lost > 0 {
        anyhow::bail!("{lost} accepted jobs were lost");
    }
    Ok(())
}

fn attack(
    ctx: &super::Context,
    params: bench::attack::AttackParams,
    json: bool,
) -> anyhow::Result<()> {
    let r = bench::attack::run(params, ctx.cache_dir.clone())?;
    if printed_json(json, &r)? {
        return Ok(());
    }
    let h = &r.health_under_slowloris;
    println!(
        "slowloris: {} slow connections; /v1/health p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} failed",
        r.slow_connections, h.p50_ms, h.p99_ms, h.max_ms, r.health_failures
    );
    println!(
        "unauthenticated uploads: {} x {} MiB, {} refused before the body; daemon peak memory {:.0} -> {:.0} MiB",
        r.unauthenticated_uploads,
        r.upload_mib,
        r.refused_before_body,
        r.peak_rss_before_mib,
        r.peak_rss_after_mib
    );
    println!(
        "junk flood: {} requests -> {} audit entries, {} bytes",
        r.junk_requests, r.junk_audit_entries, r.junk_audit_bytes
    );
    Ok(())
}

fn preprocess(rows: usize, batch: usize, threads: Option<usize>, json: bool) -> anyhow::Result<()> {
    let mut params = bench::preprocess::PreprocessParams {
        rows: rows.max(1),
        batch: batch.max(1),
        ..Default::default()
    };
    if let Some(t) = threads {
        params.threads = t.max(1);
    }
    let r = bench::preprocess::run(params)?;
    if printed_json(json, &r)? {
        return Ok(());
    }
    print_measures(vec![
        (
            "dataset",
            format!(
                "{:.1} MB of CSV, {} threads, batches of {}",
                r.dataset_mb, r.threads, r.batch
            ),
        ),
        (
            "wasm (standardize plugin)",
            format!("{:.0} MB/s", r.wasm_mb_s),
        ),
        ("native (same source)", format!("{:.0} MB/s", r.native_mb_s)),
        ("ratio native / wasm", format!("{:.2}", r.ratio)),
        (
            "largest output difference",
            format!("{}", r.max_abs_difference),
        ),
        ("machine", r.machine.describe()),
    ]);
    Ok(())
}

fn schedule(
    ctx: &super::Context,
    params: ScheduleParams,
    plugin: &str,
    json: bool,
) -> anyhow::Result<()> {
    let bar = super::progress(params.iterations as u64, "cycles");
    let r = bench::schedule(params, &plugin.parse()?, &ctx.trust, &mut |done, _| {
        bar.set_position(done)
    })?;
    bar.finish_and_clear();
    if printed_json(json, &r)? {
        return Ok(());
    }
    print_measures(vec![
        (
            "workload",
            format!("{} GPUs, {} pending jobs", r.gpus, r.jobs),
        ),
        ("wasm cycle (median)", format!("{:.2} ms", r.wasm_ms)),
        ("native cycle (median)", format!("{:.2} ms", r.native_ms)),
        ("ratio wasm/native", format!("{:.2}", r.ratio)),
        (
            "plugin call inside the wasm cycle",
            format!("{:.2} ms", r.wasm_plugin_call_ms),
        ),
        ("placements per cycle", r.placements.to_string()),
        (
            "fresh instance + configure",
            format!("{:.1} µs", r.fresh_instance_us),
        ),
        ("trivial call", format!("{:.2} µs", r.trivial_call_us)),
        (
            "compile, no cache",
            format!("{:.1} ms", r.compile.no_cache_ms),
        ),
        (
            "load, cache hit",
            format!("{:.1} ms", r.compile.cache_hit_ms),
        ),
        ("machine", r.machine.describe()),
    ]);
    Ok(())
}

fn policy(
    decisions: usize,
    threads: Option<usize>,
    seconds: f64,
    json: bool,
) -> anyhow::Result<()> {
    let mut params = crate::bench::policy::PolicyParams {
        decisions: decisions.max(1),
        throughput_secs: seconds.max(0.01),
        ..Default::default()
    };
    if let Some(t) = threads {
        params.threads = t.max(1);
    }
    let bar = super::progress(4, "phases");
    let r = crate::bench::policy::run(params, &mut |done, _| bar.set_position(done))?;
    bar.finish_and_clear();
    if printed_json(json, &r)? {
        return Ok(());
    }
    let mut t = Table::new(&["side", "p50 µs", "p99 µs", "decisions/s"]);
    for (side, s) in [("wasm (opa-wasm)", &r.wasm), ("native regorus", &r.native)] {
        t.row(vec![
            side.into(),
            format!("{:.1}", s.p50_us),
            format!("{:.1}", s.p99_us),
            format!("{:.0}", s.decisions_per_s),
        ]);
    }
    print!("{t}");
    println!(
        "ratio wasm/native p50: {:.2} ({} decisions per side, {} threads for throughput)",
        r.ratio, r.decisions, r.threads
    );
    Ok(())
}

fn kernels(args: KernelArgs) -> anyhow::Result<()> {
    let mut params = bench::kernels::KernelParams {
        step_reps: args.steps.max(1),
        rounds: args.rounds.max(1),
        python: (!args.no_peers).then_some(args.python),
        ..Default::default()
    };
    if let Some(t) = args.threads {
        params.threads = t.max(1);
    }
    let bar = super::progress(0, "kernels");
    let r = bench::kernels::run(&params, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    if printed_json(args.json, &r)? {
        return Ok(());
    }
    print_kernels(&r)
}

fn print_kernels(r: &bench::kernels::KernelReport) -> anyhow::Result<()> {
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    println!(
        "{} on {} ({} threads); measured f32 FMA peak {:.0} GFLOP/s",
        r.backend, r.cpu, r.threads, r.peak_gflops
    );
    if let (Some(ceiling), Some(of_peak)) = (r.l1_ceiling_gflops, r.ceiling_of_peak) {
        println!(
            "a GEMM's inner loop alone, its operands in L1: {ceiling:.0} GFLOP/s ({:.0} % of \
             the peak): no GEMM reaches more here",
            100.0 * of_peak
        );
    }
    let mut t = Table::new(&[
        "f32 GEMM",
        "gantry GFLOP/s",
        "NumPy GFLOP/s",
        "ratio",
        "of peak",
        "of inner loop",
    ]);
    for g in &r.gemm {
        t.row(vec![
            format!("{0}x{0}x{0}", g.n),
            format!("{:.1}", g.gflops),
            opt(g.peer_gflops, 1),
            opt(g.ratio, 2),
            format!("{:.0} %", 100.0 * g.of_peak),
            g.of_ceiling
                .map_or("-".into(), |c| format!("{:.0} %", 100.0 * c)),
        ]);
    }
    print!("{t}");
    let s = &r.train_step;
    let mut t = Table::new(&["MLP step", "gantry ms", "PyTorch ms", "ratio", "GEMM GFLOP"]);
    t.row(vec![
        "784-1024-1024-10, batch 256, Adam".into(),
        format!("{:.2}", s.ms),
        opt(s.peer_ms, 2),
        opt(s.ratio, 2),
        format!("{:.2}", s.gemm_gflop),
    ]);
    print!("{t}");
    println!(
        "the step is {:.2}x its GEMM floor ({:.2} ms: its GFLOP at the best GEMM rate above); \
         its GEMMs timed alone take {:.2} ms ({:.2}x the floor)",
        s.of_floor, s.floor_ms, s.gemms_ms, s.gemms_of_floor
    );
    let mut t = Table::new(&["step GEMM (m x n x k)", "ms", "GFLOP/s"]);
    for g in &s.gemms {
        t.row(vec![
            g.shape.clone(),
            format!("{:.3}", g.ms),
            format!("{:.1}", g.gflops),
        ]);
    }
    print!("{t}");
    match (&r.bf16, &r.bf16_note) {
        (Some(b), _) => {
            println!("bf16: {}", b.backend);
            let mut t = Table::new(&["bf16 GEMM", "gantry GFLOP/s", "x f32", "PyTorch GFLOP/s"]);
            for g in &b.gemm {
                t.row(vec![
                    format!("{0}x{0}x{0}", g.n),
                    format!("{:.1}", g.gflops),
                    format!("{:.2}", g.speedup),
                    opt(g.peer_gflops, 1),
                ]);
            }
            t.row(vec![
                "MLP step, ms".into(),
                format!("{:.2}", b.step_ms),
                format!("{:.2}", b.step_speedup),
                opt(b.peer_step_ms, 2),
            ]);
            print!("{t}");
        }
        (None, Some(note)) => println!("bf16: not measured: {note}"),
        (None, None) => {}
    }
    if !r.peers.is_empty() {
        println!("peers: {}", r.peers.join(", "));
    }
    if let Some(note) = &r.peer_note {
        println!("note: {note}");
    }
    match (&r.gpu, &r.gpu_note) {
        (Some(gpu), _) => println!("gpu: {}", serde_json::to_string_pretty(gpu)?),
        (None, Some(note)) => println!("gpu: not measured: {note}"),
        (None, None) => {}
    }
    Ok(())
}

fn jobs(runs: usize, calls: u64, json: bool) -> anyhow::Result<()> {
    let bar = super::progress(runs as u64, "runs per side");
    let r = crate::bench::jobs::run_bench(runs, calls, &mut |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    if printed_json(json, &r)? {
        return Ok(());
    }
    println!(
        "{} ({}; medians of {} runs per side)",
        r.cpu,
        if r.isolated {
            "runs with their own cgroup, uid and namespaces"
        } else {
            "runs as this user, without cgroups or namespaces"
        },
        r.runs
    );
    let mut t = Table::new(&["", "filtered", "all system calls", "filtered / all"]);
    t.row(vec![
        "run of /bin/true, ask to end, ms".into(),
        format!("{:.1}", r.start_to_end_ms),
        format!("{:.1}", r.start_to_end_all_ms),
        format!("{:.2}x", r.start_to_end_ms / r.start_to_end_all_ms),
    ]);
    t.row(vec![
        format!(
            "getppid in a run (perl loop, {} calls), ns",
            r.calls_per_run
        ),
        format!("{:.1}", r.getppid.filtered_ns),
        format!("{:.1}", r.getppid.all_ns),
        format!("{:.2}x", r.getppid.filtered_ns / r.getppid.all_ns),
    ]);
    print!("{t}");
    println!("the filter adds {:.1} ns to each call", r.getppid.added_ns);
    Ok(())
}

fn authoring(rounds: usize, cold_rounds: usize, json: bool) -> anyhow::Result<()> {
    let bar = super::progress(rounds.max(cold_rounds) as u64, "rounds");
    let r = crate::bench::authoring::run(rounds, cold_rounds, &mut |done| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    if printed_json(json, &r)? {
        return Ok(());
    }
    let mut t = Table::new(&[
        "cache",
        "rounds",
        "build ms",
        "eval ms",
        "edit to decision ms",
    ]);
    for (name, s) in [("warm", &r.warm), ("cold (empty)", &r.cold)] {
        t.row(vec![
            name.into(),
            s.rounds.to_string(),
            format!("{:.0}", s.build_ms),
            format!("{:.0}", s.eval_ms),
            format!("{:.0}", s.total_ms),
        ]);
    }
    print!("{t}");
    println!(
        "cold / warm: {:.1}x (medians; each step a new process)",
        r.ratio
    );
    Ok(())
}
