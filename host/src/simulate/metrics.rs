//! The summary of a simulation.

use serde::Serialize;

use super::JobOutcome;

/// Counters gathered while simulating.
#[derive(Debug, Clone, Copy)]
pub struct RunStats {
    /// Healthy GPUs of the cluster.
    pub healthy_gpus: usize,
    /// Integral of busy GPUs over time, GPU-seconds.
    pub busy_gpu_s: f64,
    /// Scheduling cycles run.
    pub cycles: u64,
    /// Cycles decided by the fallback although a plugin was loaded.
    pub fallback_cycles: u64,
    /// Cycles in which the plugin faulted.
    pub plugin_faults: u64,
    /// Mean wall time of a cycle, microseconds.
    pub mean_cycle_us: f64,
    /// Whether the plugin ended quarantined.
    pub quarantined: bool,
}

/// The metrics of `gantry simulate` (the JSON keys are part of the CLI's contract).
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
    /// Busy GPU-seconds over healthy GPUs times the makespan, 0..1.
    pub utilization: f64,
    /// Last completion minus first submission, seconds.
    pub makespan_s: f64,
    /// Jain's index over tenants of their mean service rate (ideal runtime / JCT), 1/n..1.
    pub fairness: f64,
    /// Jobs that finished.
    pub jobs_completed: u64,
    /// Jobs that never finished (too large for the healthy cluster or their quota).
    pub jobs_unfinished: u64,
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

/// Jain's fairness index of `x`: (sum x)^2 / (n * sum x^2); 1 when all are equal.
pub fn jain(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let squares: f64 = x.iter().map(|v| v * v).sum();
    if x.is_empty() || squares == 0.0 {
        return 1.0;
    }
    sum * sum / (x.len() as f64 * squares)
}

/// Computes the metrics from per-job outcomes and run counters.
pub fn summarize(jobs: &[JobOutcome], stats: &RunStats) -> Metrics {
    let done: Vec<&JobOutcome> = jobs.iter().filter(|j| j.completion_s.is_some()).collect();
    let mut jct: Vec<f64> = done
        .iter()
        .map(|j| j.completion_s.unwrap_or(0.0) - j.submit_s)
        .collect();
    let mut wait: Vec<f64> = done
        .iter()
        .map(|j| j.first_start_s.unwrap_or(j.submit_s) - j.submit_s)
        .collect();
    let first_submit = jobs
        .iter()
        .map(|j| j.submit_s)
        .fold(f64::INFINITY, f64::min);
    let last_end = done
        .iter()
        .filter_map(|j| j.completion_s)
        .fold(f64::NEG_INFINITY, f64::max);
    let makespan = if done.is_empty() {
        0.0
    } else {
        last_end - first_submit
    };
    let utilization = if makespan > 0.0 && stats.healthy_gpus > 0 {
        (stats.busy_gpu_s / (stats.healthy_gpus as f64 * makespan)).min(1.0)
    } else {
        0.0
    };
    let mut tenants: Vec<&str> = done.iter().map(|j| j.tenant.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let rates: Vec<f64> = tenants
        .iter()
        .map(|t| {
            let r: Vec<f64> = done
                .iter()
                .filter(|j| j.tenant == *t)
                .map(|j| {
                    let jct = j.completion_s.unwrap_or(0.0) - j.submit_s;
                    if jct > 0.0 {
                        (j.duration_s / jct).min(1.0)
                    } else {
                        1.0
                    }
                })
                .collect();
            mean(&r)
        })
        .collect();
    Metrics {
        jct_mean_s: mean(&jct),
        jct_p99_s: percentile(&mut jct, 99.0),
        wait_mean_s: mean(&wait),
        wait_p99_s: percentile(&mut wait, 99.0),
        utilization,
        makespan_s: makespan,
        fairness: jain(&rates),
        jobs_completed: done.len() as u64,
        jobs_unfinished: (jobs.len() - done.len()) as u64,
        cycles: stats.cycles,
        fallback_cycles: stats.fallback_cycles,
        plugin_faults: stats.plugin_faults,
        mean_cycle_us: stats.mean_cycle_us,
        quarantined: stats.quarantined,
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
    fn jain_index_bounds() {
        assert!((jain(&[1.0, 1.0, 1.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
        assert!((jain(&[1.0, 0.5]) - 0.9).abs() < 1e-12);
    }

    #[test]
    fn summary_by_hand() {
        let job = |tenant: &str, submit: f64, start: f64, end: Option<f64>, d: f64| JobOutcome {
            id: String::new(),
            tenant: tenant.into(),
            submit_s: submit,
            first_start_s: Some(start),
            completion_s: end,
            duration_s: d,
        };
        let jobs = [
            job("a", 0.0, 0.0, Some(10.0), 10.0),
            job("b", 0.0, 10.0, Some(20.0), 10.0),
            job("b", 5.0, 5.0, None, 10.0),
        ];
        let stats = RunStats {
            healthy_gpus: 2,
            busy_gpu_s: 20.0,
            cycles: 3,
            fallback_cycles: 0,
            plugin_faults: 0,
            mean_cycle_us: 1.0,
            quarantined: false,
        };
        let m = summarize(&jobs, &stats);
        assert_eq!(m.jobs_completed, 2);
        assert_eq!(m.jobs_unfinished, 1);
        assert_eq!(m.jct_mean_s, 15.0);
        assert_eq!(m.jct_p99_s, 20.0);
        assert_eq!(m.wait_mean_s, 5.0);
        assert_eq!(m.makespan_s, 20.0);
        assert_eq!(m.utilization, 0.5);
        // Service rates: a = 1.0, b = 0.5 -> Jain 0.9.
        assert!((m.fairness - 0.9).abs() < 1e-12);
    }
}
