//! The summary of a simulation.

use serde::Serialize;

use super::fairness::Fairness;
use super::{JobOutcome, JobState};

/// Counters gathered while simulating.
#[derive(Debug, Clone, Copy)]
pub struct RunStats {
    /// Healthy GPUs of the cluster.
    pub healthy_gpus: usize,
    /// When the run ended (its last arrival or completion), seconds.
    pub end_s: f64,
    /// Integral of busy GPUs over time, GPU-seconds.
    pub busy_gpu_s: f64,
    /// GPU-time the placed jobs asked for (GPUs x ideal runtime), GPU-seconds: busy time
    /// without the slowdown of placements that spread a job out.
    pub useful_gpu_s: f64,
    /// Tenants' shares of the GPU-time against their fair shares.
    pub fairness: Fairness,
    /// What the cycles and the plugin did.
    pub scheduling: CycleStats,
}

/// What the scheduling cycles and the plugin did during a run (in the JSON of [`Metrics`], its
/// keys stand beside the others).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct CycleStats {
    /// Scheduling cycles run.
    pub cycles: u64,
    /// Cycles decided by the native fallback while a plugin was loaded.
    pub fallback_cycles: u64,
    /// Cycles in which the plugin faulted.
    pub plugin_faults: u64,
    /// Mean wall time of one scheduling cycle, microseconds.
    pub mean_cycle_us: f64,
    /// True when the plugin ended in quarantine.
    pub quarantined: bool,
    /// Plugin answers that placed nothing for too long while the fallback could place
    /// (`no-progress` faults, counted in `plugin_faults` too).
    pub plugin_no_progress_faults: u64,
    /// Plugin log and output bytes dropped over its allowance.
    pub plugin_output_dropped_bytes: u64,
}

/// The metrics of `gantry simulate` (the JSON keys are part of the CLI's contract).
///
/// Wait and JCT figures cover every job that was queued: an unfinished job counts with its wait
/// and JCT cut at the end of the run (right-censored, so they are lower bounds).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Metrics {
    /// Mean job completion time (completion minus submission), seconds.
    pub jct_mean_s: f64,
    /// 99th percentile of job completion time, seconds.
    pub jct_p99_s: f64,
    /// Mean queueing delay (first start minus submission), seconds.
    pub wait_mean_s: f64,
    /// 99th percentile of queueing delay, seconds.
    pub wait_p99_s: f64,
    /// Busy GPU-seconds over healthy GPUs times the makespan, 0..1. Time a job runs slower
    /// because its GPUs are far apart counts as busy.
    pub utilization: f64,
    /// GPU-time the jobs asked for (GPUs x ideal runtime) over healthy GPUs times the makespan,
    /// 0..1: utilisation without the slowed-down time.
    pub goodput: f64,
    /// End of the run (last completion or arrival) minus first submission, seconds.
    pub makespan_s: f64,
    /// Jain's index, per window, of each tenant's share of the GPU-time over its weighted
    /// max-min fair share (see [`super::fairness`]), 1/n..1 (1: fair).
    pub fairness: f64,
    /// Fraction of the GPU-time that went to tenants beyond their fair share, per window, 0..1
    /// (0: fair; see [`super::fairness`]).
    pub fair_share_deficit: f64,
    /// Jobs that finished.
    pub jobs_completed: u64,
    /// Jobs queued that never finished although they could have run (their wait and JCT are
    /// counted up to the end of the run).
    pub jobs_unfinished: u64,
    /// Jobs refused at submission (see [`crate::Host::submit`]).
    pub jobs_rejected: u64,
    /// What the cycles and the plugin did (last in the JSON, as before they were grouped).
    #[serde(flatten)]
    pub scheduling: CycleStats,
}

/// Nearest-rank percentile of `values` (sorted in place); 0 for an empty set.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// Computes the metrics from per-job outcomes and run counters.
pub fn summarize(jobs: &[JobOutcome], stats: &RunStats) -> Metrics {
    let queued: Vec<&JobOutcome> = jobs
        .iter()
        .filter(|j| j.state != JobState::Rejected)
        .collect();
    let count = |state| jobs.iter().filter(|j| j.state == state).count() as u64;
    let mut jct: Vec<f64> = queued.iter().map(|j| j.jct_s).collect();
    let mut wait: Vec<f64> = queued.iter().map(|j| j.wait_s).collect();
    let first_submit = queued
        .iter()
        .map(|j| j.submit_s)
        .fold(f64::INFINITY, f64::min);
    let makespan = if queued.is_empty() {
        0.0
    } else {
        (stats.end_s - first_submit).max(0.0)
    };
    let capacity = stats.healthy_gpus as f64 * makespan;
    let fraction = |gpu_s: f64| {
        if capacity > 0.0 {
            (gpu_s / capacity).min(1.0)
        } else {
            0.0
        }
    };
    Metrics {
        jct_mean_s: mean(&jct),
        jct_p99_s: percentile(&mut jct, 99.0),
        wait_mean_s: mean(&wait),
        wait_p99_s: percentile(&mut wait, 99.0),
        utilization: fraction(stats.busy_gpu_s),
        goodput: fraction(stats.useful_gpu_s),
        makespan_s: makespan,
        fairness: stats.fairness.jain,
        fair_share_deficit: stats.fairness.deficit,
        jobs_completed: count(JobState::Completed),
        jobs_unfinished: count(JobState::Unfinished),
        jobs_rejected: count(JobState::Rejected),
        scheduling: stats.scheduling,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut [7.0], 99.0), 7.0);
        assert_eq!(percentile(&mut [], 99.0), 0.0);
    }

    #[test]
    fn summary_by_hand() {
        use crate::cluster::Topology;
        let job = |state, submit: f64, start: Option<f64>, end: Option<f64>| {
            let until = |t: Option<f64>| t.unwrap_or(20.0) - submit;
            JobOutcome {
                id: String::new(),
                tenant: "a".into(),
                gpus: 1,
                gang: true,
                topology: Topology::None,
                priority: 0,
                state,
                submit_s: submit,
                first_start_s: start,
                completion_s: end,
                duration_s: 10.0,
                slowdown: 1.0,
                wait_s: until(start),
                jct_s: until(end),
                censored: end.is_none(),
            }
        };
        let jobs = [
            job(JobState::Completed, 0.0, Some(0.0), Some(10.0)),
            job(JobState::Completed, 0.0, Some(10.0), Some(20.0)),
            job(JobState::Unfinished, 2.0, None, None),
            job(JobState::Rejected, 0.0, None, None),
        ];
        let stats = RunStats {
            healthy_gpus: 2,
            end_s: 20.0,
            busy_gpu_s: 24.0,
            useful_gpu_s: 20.0,
            fairness: Fairness {
                deficit: 0.1,
                jain: 0.9,
                contended_windows: 1,
            },
            scheduling: CycleStats {
                cycles: 3,
                mean_cycle_us: 1.0,
                ..CycleStats::default()
            },
        };
        let m = summarize(&jobs, &stats);
        assert_eq!(
            (m.jobs_completed, m.jobs_unfinished, m.jobs_rejected),
            (2, 1, 1)
        );
        // The unfinished job counts, censored at 20 s: JCTs 10, 20, 18; waits 0, 10, 18. The
        // rejected one never queued.
        assert_eq!(m.jct_mean_s, 16.0);
        assert_eq!(m.jct_p99_s, 20.0);
        assert_eq!(m.wait_mean_s, 28.0 / 3.0);
        assert_eq!(m.wait_p99_s, 18.0);
        assert_eq!(m.makespan_s, 20.0);
        assert_eq!(m.utilization, 0.6);
        assert_eq!(m.goodput, 0.5);
        assert_eq!((m.fairness, m.fair_share_deficit), (0.9, 0.1));
    }
}
