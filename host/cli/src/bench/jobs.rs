//! `gantry bench jobs`: what a command run's isolation costs, side by side in one run. A run of
//! a program that does nothing, from asking to its end (its cgroup, uid, namespaces, scratch
//! file system, as a daemon here runs it), and a system call's cost in a run with the
//! system-call filter (`--job-syscalls filtered`, the default) and without (`all`), the two
//! sides alternating.

use std::time::Instant;

use serde::Serialize;

use gantry_daemon::command::{CommandLimits, CommandSpec, RunJob, RunSink, execute};
use gantry_daemon::lifecycle::RunEnd;
use gantry_daemon::seccomp::JobSyscalls;

/// A system call's cost in a run, nanoseconds (median of the rounds).
#[derive(Debug, Clone, Serialize)]
pub struct Calls {
    /// With the filter.
    pub filtered_ns: f64,
    /// Without it.
    pub all_ns: f64,
    /// `filtered_ns - all_ns`: what the filter adds to each call.
    pub added_ns: f64,
}

/// What `gantry bench jobs --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct JobsReport {
    /// The CPU model.
    pub cpu: String,
    /// Runs timed per side.
    pub runs: usize,
    /// `getppid` calls per run.
    pub calls_per_run: u64,
    /// A run of `/bin/true` from asking to its end, filtered, milliseconds (median).
    pub start_to_end_ms: f64,
    /// The same without the filter.
    pub start_to_end_all_ms: f64,
    /// `getppid` (the cheapest call: the filter's share of it is the largest) in a run.
    pub getppid: Calls,
    /// Whether the runs had cgroups, a uid of their own and namespaces (root) or ran as this
    /// user (the filter applies either way).
    pub isolated: bool,
}

/// A run's log, kept to read the program's figure.
#[derive(Default)]
struct Log(Vec<String>);

impl RunSink for Log {
    fn log(&mut self, entry: &str) {
        self.0.push(entry.to_string());
    }
    fn stopping(&self) -> bool {
        false
    }
}

/// Runs `argv` under `limits` to its end; its log, and the wall time in milliseconds.
fn run(
    argv: &[&str],
    limits: &CommandLimits,
    cgroups: Option<&gantry_daemon::cgroup::Cgroups>,
) -> anyhow::Result<(String, f64)> {
    let spec = CommandSpec {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        env: Default::default(),
        cwd: None,
        wall_time_s: Some(120.0),
        memory_mib: None,
        cpus: None,
        disk_mib: None,
    };
    let gpus = ["bench/gpu0".to_string()];
    let job = RunJob {
        key: "bench/jobs",
        tenant: "bench",
        gpu_ids: &gpus,
        gpu_nodes: &gantry_daemon::gpu_nodes::GpuNodes::none(),
        spec: &spec,
    };
    let mut log = Log::default();
    let started = Instant::now();
    let end = execute(job, limits, cgroups, &mut log, "bench");
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let log = log.0.join("\n");
    match end {
        RunEnd::Finished(..) => Ok((log, ms)),
        other => anyhow::bail!("the benchmark's run ended {other:?}: {log}"),
    }
}

/// Times `runs` runs per side of `calls` `getppid` calls each and of `/bin/true`;
/// `progress(done)` after each pair.
pub fn run_bench(
    runs: usize,
    calls: u64,
    progress: &mut dyn FnMut(usize),
) -> anyhow::Result<JobsReport> {
    if !std::path::Path::new("/usr/bin/perl").exists() {
        anyhow::bail!("gantry bench jobs needs /usr/bin/perl (the program it runs)");
    }
    let filtered = crate::local::local_commands();
    let all = CommandLimits {
        syscalls: JobSyscalls::All,
        ..crate::local::local_commands()
    };
    let cgroups =
        gantry_daemon::cgroup::Cgroups::detect(&gantry_daemon::cgroup::scope_for(b"gantry bench"));
    // Perl's own loop is in both sides; the filter's share is the difference.
    let script = format!(
        "use Time::HiRes qw(time); my $t = time; \
         syscall({nr}) for 1 .. {calls}; \
         printf \"ns=%.2f\\n\", (time - $t) / {calls} * 1e9;",
        nr = libc::SYS_getppid
    );
    let ns = |log: &str| -> anyhow::Result<f64> {
        let text = log
            .split("ns=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next());
        text.and_then(|t| t.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no figure in the run's log: {log}"))
    };
    let mut sides: [[Vec<f64>; 2]; 2] = Default::default();
    for done in 1..=runs {
        for (side, limits) in [&filtered, &all].into_iter().enumerate() {
            let (log, _) = run(&["/usr/bin/perl", "-e", &script], limits, cgroups.as_ref())?;
            sides[side][0].push(ns(&log)?);
            let (_, ms) = run(&["/bin/true"], limits, cgroups.as_ref())?;
            sides[side][1].push(ms);
        }
        progress(done);
    }
    let [[mut f_ns, mut f_ms], [mut a_ns, mut a_ms]] = sides;
    let (filtered_ns, all_ns) = (super::median(&mut f_ns), super::median(&mut a_ns));
    Ok(JobsReport {
        cpu: super::kernels::cpu_model(),
        runs,
        calls_per_run: calls,
        start_to_end_ms: super::median(&mut f_ms),
        start_to_end_all_ms: super::median(&mut a_ms),
        getppid: Calls {
            filtered_ns,
            all_ns,
            added_ns: filtered_ns - all_ns,
        },
        // SAFETY: geteuid has no preconditions.
        isolated: cgroups.is_some() && unsafe { libc::geteuid() } == 0,
    })
}
