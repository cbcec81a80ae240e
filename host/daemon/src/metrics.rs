//! Counters for `GET /metrics`, in Prometheus's text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The daemon's counters (monotonic since start).
#[derive(Debug, Default)]
pub struct Metrics {
    /// HTTP requests answered, by class.
    pub requests_ok: AtomicU64,
    /// Requests answered 4xx.
    pub requests_client_error: AtomicU64,
    /// Requests answered 5xx.
    pub requests_server_error: AtomicU64,
    /// Policy decisions that allowed.
    pub decisions_allowed: AtomicU64,
    /// Policy decisions that denied.
    pub decisions_denied: AtomicU64,
    /// Scheduling cycles run.
    pub cycles: AtomicU64,
    /// Placements applied.
    pub placements: AtomicU64,
    /// Training samples processed by jobs (all jobs, this process).
    pub train_samples: AtomicU64,
    /// Training steps taken by jobs.
    pub train_steps: AtomicU64,
    /// Connections closed at once: over the cap in all or from their source.
    pub connections_refused: AtomicU64,
    /// Idle connections closed to let a new one in at a cap.
    pub connections_evicted: AtomicU64,
    /// Refused requests recorded in the audit log in aggregate (see `rejections`).
    pub rejections: AtomicU64,
}

impl Metrics {
    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// The exposition text.
pub fn render(
    m: &Metrics,
    plugin: Option<(&str, gantry::plugin::HealthReport)>,
    jobs_by_state: &[(&str, u64)],
    running: &[super::curve::Curve],
) -> String {
    let mut out = String::new();
    requests(&mut out, m);
    if let Some((name, h)) = plugin {
        scheduler_plugin(&mut out, name, &h);
    }
    jobs(&mut out, m, jobs_by_state, running);
    out
}

/// A counter's value.
fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The families of requests, connections, decisions and scheduling.
fn requests(out: &mut String, m: &Metrics) {
    family(
        out,
        "gantry_http_requests_total",
        "counter",
        "HTTP requests answered, by status class.",
        &[
            ("class=\"2xx\"", get(&m.requests_ok)),
            ("class=\"4xx\"", get(&m.requests_client_error)),
            ("class=\"5xx\"", get(&m.requests_server_error)),
        ],
    );
    family(
        out,
        "gantry_connections_refused_total",
        "counter",
        "Connections closed at once: over a cap, with every connection in the way in a request.",
        &[("", get(&m.connections_refused))],
    );
    family(
        out,
        "gantry_connections_evicted_total",
        "counter",
        "Idle connections closed to let a new one in: over the cap in all or from its source.",
        &[("", get(&m.connections_evicted))],
    );
    family(
        out,
        "gantry_requests_rejected_total",
        "counter",
        "Refused requests no policy decided, recorded in the audit log in aggregate.",
        &[("", get(&m.rejections))],
    );
    family(
        out,
        "gantry_policy_decisions_total",
        "counter",
        "Access-control decisions, by outcome.",
        &[
            ("allow=\"true\"", get(&m.decisions_allowed)),
            ("allow=\"false\"", get(&m.decisions_denied)),
        ],
    );
    family(
        out,
        "gantry_scheduling_cycles_total",
        "counter",
        "Scheduling cycles run.",
        &[("", get(&m.cycles))],
    );
    family(
        out,
        "gantry_placements_total",
        "counter",
        "Placements applied.",
        &[("", get(&m.placements))],
    );
}

/// The families of the active scheduler plugin `name`'s health.
fn scheduler_plugin(out: &mut String, name: &str, h: &gantry::plugin::HealthReport) {
    let calls = format!("plugin=\"{name}\"");
    family(
        out,
        "gantry_plugin_calls_total",
        "counter",
        "Calls into the scheduler plugin.",
        &[(&calls, h.calls)],
    );
    family(
        out,
        "gantry_plugin_faults_total",
        "counter",
        "Scheduler plugin calls that failed.",
        &[(&calls, h.faults)],
    );
    family(
        out,
        "gantry_plugin_fallbacks_total",
        "counter",
        "Cycles the native fallback decided.",
        &[(&calls, h.fallbacks)],
    );
    family(
        out,
        "gantry_plugin_window_faults",
        "gauge",
        "Scheduler plugin faults among its last calls (the quarantine window).",
        &[(&calls, u64::from(h.window_faults))],
    );
    family(
        out,
        "gantry_plugin_stalled_cycles",
        "gauge",
        "Cycles in a row the plugin placed nothing while the fallback could have.",
        &[(&calls, u64::from(h.stalled_cycles))],
    );
    family(
        out,
        "gantry_plugin_no_progress_faults_total",
        "counter",
        "Answers counted as no-progress faults.",
        &[(&calls, h.no_progress_faults)],
    );
    family(
        out,
        "gantry_plugin_output_dropped_bytes_total",
        "counter",
        "Plugin log and output bytes dropped over its allowance.",
        &[(&calls, h.output_dropped_bytes)],
    );
    family(
        out,
        "gantry_plugin_quarantined",
        "gauge",
        "1 while the scheduler plugin is quarantined.",
        &[(&calls, u64::from(h.quarantined))],
    );
}

/// The families of jobs and training.
fn jobs(
    out: &mut String,
    m: &Metrics,
    jobs_by_state: &[(&str, u64)],
    running: &[super::curve::Curve],
) {
    let labelled: Vec<(String, u64)> = jobs_by_state
        .iter()
        .map(|(s, n)| (format!("state=\"{s}\""), *n))
        .collect();
    let samples: Vec<(&str, u64)> = labelled.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    family(out, "gantry_jobs", "gauge", "Jobs by state.", &samples);
    family(
        out,
        "gantry_train_samples_total",
        "counter",
        "Training samples processed by jobs.",
        &[("", get(&m.train_samples))],
    );
    family(
        out,
        "gantry_train_steps_total",
        "counter",
        "Training steps taken by jobs.",
        &[("", get(&m.train_steps))],
    );
    // Per-job figures stay behind authentication (`/v1/jobs/{id}/metrics`): this endpoint needs
    // no token, so it shows sums only, never job ids.
    let rate: f64 = running.iter().map(|c| c.samples_per_s).sum();
    let _ = writeln!(
        out,
        "# HELP gantry_train_samples_per_second Training rows per second, all running jobs.\n\
         # TYPE gantry_train_samples_per_second gauge\ngantry_train_samples_per_second {rate}"
    );
}
