//! Discrete-event simulation of a cluster over a job trace, driving a real [`Host`]: every
//! scheduling decision goes through the loaded plugin (or its fallback) exactly as in production.
//!
//! Events are job arrivals and completions; after each batch of simultaneous events the host runs
//! one scheduling cycle. Runtimes come from the trace; a communication-heavy job (one with a
//! topology preference) whose GPUs end up further apart than one NVLink domain runs slower (see
//! [`slowdown`]), so topology-aware placement shows up in the metrics.

pub mod metrics;
pub mod plot;
pub mod trace;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use serde::Serialize;

pub use metrics::Metrics;
pub use trace::TraceJob;

use crate::Host;
use crate::cluster::{Cluster, JobSpec, TopologyPref};

/// One point of the timeline, taken after each batch of events.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Simulated time, seconds.
    pub t_s: f64,
    /// GPUs held by running allocations.
    pub busy_gpus: u32,
    /// Jobs waiting for GPUs.
    pub queued_jobs: u32,
}

/// What happened to one job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobOutcome {
    /// The job's id (`job-<trace row>`).
    pub id: String,
    /// Tenant name.
    pub tenant: String,
    /// Submission time.
    pub submit_s: f64,
    /// When its first GPUs were given.
    pub first_start_s: Option<f64>,
    /// When its last part finished.
    pub completion_s: Option<f64>,
    /// Runtime on an ideal placement.
    pub duration_s: f64,
}

/// The result of a simulation.
#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    /// Summary metrics.
    pub metrics: Metrics,
    /// Utilisation and queue length over time.
    pub timeline: Vec<Sample>,
    /// Per-job outcomes, in trace order.
    pub jobs: Vec<JobOutcome>,
}

/// Runtime multiplier for a job that asked for `pref` and got `gpus`: 1.0 inside one NVLink
/// domain, 1.1 across domains of one node, 1.2 across nodes of one rack, 1.4 across racks.
/// Jobs without a preference are taken to be communication-light and never slow down.
pub fn slowdown(cluster: &Cluster, pref: TopologyPref, gpus: &[u32]) -> f64 {
    if pref == TopologyPref::None || gpus.len() < 2 {
        return 1.0;
    }
    let first = &cluster.gpus[gpus[0] as usize];
    let all = |f: &dyn Fn(&crate::cluster::GpuInfo) -> bool| {
        gpus.iter().all(|&g| f(&cluster.gpus[g as usize]))
    };
    if all(&|g| g.nvlink_domain == first.nvlink_domain) {
        1.0
    } else if all(&|g| g.node == first.node) {
        1.1
    } else if all(&|g| g.rack == first.rack) {
        1.2
    } else {
        1.4
    }
}

struct Live {
    spec: JobSpec,
    duration_s: f64,
    first_start_s: Option<f64>,
    completion_s: Option<f64>,
    outstanding: u32,
    placed_gpus: u32,
}

/// Replays `trace` on `host` (which must hold the trace's cluster with no jobs). `progress` is
/// called with (jobs finished or given up on, total jobs) as the simulation advances.
pub fn run(host: &mut Host, trace: &[TraceJob], progress: &mut dyn FnMut(u64, u64)) -> SimResult {
    let _span = tracing::info_span!("gantry_simulate.run", jobs = trace.len()).entered();
    let total = trace.len() as u64;
    let mut order: Vec<usize> = (0..trace.len()).collect();
    order.sort_by(|&a, &b| {
        trace[a]
            .submit_s
            .total_cmp(&trace[b].submit_s)
            .then(a.cmp(&b))
    });
    let mut arrivals = order.into_iter().peekable();
    let mut live: Vec<Live> = trace
        .iter()
        .enumerate()
        .map(|(i, t)| Live {
            spec: t.to_spec(format!("job-{i}")),
            duration_s: t.duration_s,
            first_start_s: None,
            completion_s: None,
            outstanding: 0,
            placed_gpus: 0,
        })
        .collect();
    let index_of: HashMap<String, usize> = live
        .iter()
        .enumerate()
        .map(|(i, l)| (l.spec.id.clone(), i))
        .collect();
    // Completion events: (end time in ns, allocation id, job index).
    let mut completions: BinaryHeap<Reverse<(u64, u64, usize)>> = BinaryHeap::new();
    let mut timeline = Vec::new();
    let mut cycles = 0u64;
    let mut fallback_cycles = 0u64;
    let mut faults = 0u64;
    let mut cycle_us = 0.0;
    let mut busy_gpu_s = 0.0;
    let mut last_t = 0.0;
    let mut finished = 0u64;
    let mut rejected = 0u64;

    loop {
        let next_arrival = arrivals.peek().map(|&i| trace[i].submit_s);
        let next_completion = completions.peek().map(|Reverse((t, _, _))| *t as f64 / 1e9);
        let now = match (next_arrival, next_completion) {
            (None, None) => break,
            (Some(a), None) => a,
            (None, Some(c)) => c,
            (Some(a), Some(c)) => a.min(c),
        };
        busy_gpu_s += host.state().busy_gpus() as f64 * (now - last_t).max(0.0);
        last_t = now;
        while let Some(&Reverse((t, alloc, job))) = completions.peek() {
            if t as f64 / 1e9 > now {
                break;
            }
            completions.pop();
            host.complete(alloc);
            let l = &mut live[job];
            l.outstanding -= 1;
            if l.outstanding == 0 && l.placed_gpus == l.spec.gpus {
                l.completion_s = Some(now);
                finished += 1;
            }
        }
        while let Some(&i) = arrivals.peek() {
            if trace[i].submit_s > now {
                break;
            }
            arrivals.next();
            if let Err(e) = host.submit(live[i].spec.clone()) {
                tracing::warn!("trace row {i} not submitted: {e}");
                rejected += 1;
            }
        }
        if !host.state().pending.is_empty() {
            let report = host.schedule_cycle(now);
            cycles += 1;
            cycle_us += report.elapsed_us;
            if report.fallback_reason.is_some() && host.scheduler().is_some() {
                fallback_cycles += 1;
            }
            if report.fault.is_some() {
                faults += 1;
            }
            for a in &report.placements {
                let j = index_of[&a.job_id];
                let alloc = host
                    .state()
                    .running
                    .iter()
                    .find(|r| r.id == a.alloc_id)
                    .map(|r| r.gpus.clone())
                    .unwrap_or_default();
                let l = &mut live[j];
                let factor = slowdown(&host.state().cluster, l.spec.topology, &alloc);
                let end = now + l.duration_s * factor;
                completions.push(Reverse(((end * 1e9) as u64, a.alloc_id, j)));
                l.first_start_s.get_or_insert(now);
                l.outstanding += 1;
                l.placed_gpus += a.gpus.len() as u32;
            }
        }
        timeline.push(Sample {
            t_s: now,
            busy_gpus: host.state().busy_gpus() as u32,
            queued_jobs: host.state().pending.len() as u32,
        });
        progress(finished + rejected, total);
        if completions.is_empty() && arrivals.peek().is_none() {
            // Whatever is still pending can never start (too large, or over quota for good).
            break;
        }
    }
    let jobs: Vec<JobOutcome> = live
        .iter()
        .map(|l| JobOutcome {
            id: l.spec.id.clone(),
            tenant: l.spec.tenant.clone(),
            submit_s: l.spec.submit_time_s,
            first_start_s: l.first_start_s,
            completion_s: l.completion_s,
            duration_s: l.duration_s,
        })
        .collect();
    let stats = metrics::RunStats {
        healthy_gpus: host.state().healthy_gpus(),
        busy_gpu_s,
        cycles,
        fallback_cycles,
        plugin_faults: faults,
        mean_cycle_us: if cycles > 0 {
            cycle_us / cycles as f64
        } else {
            0.0
        },
        quarantined: host
            .scheduler()
            .is_some_and(|p| p.health().is_quarantined()),
    };
    SimResult {
        metrics: metrics::summarize(&jobs, &stats),
        timeline,
        jobs,
    }
}
