//! Fault counting, progress tracking and quarantine of one plugin.
//!
//! A plugin is quarantined (the fallback decides until an operator reloads it) after
//! `consecutive` faults in a row, or after `window_faults` faults among its last `window_calls`
//! calls: a plugin that fails every other call never has two faults in a row, yet fails half
//! the time. A scheduler that answers validly but places nothing while the native strategy could
//! place jobs of the same queue makes no progress; once that has lasted both
//! `no_progress_cycles` cycles and `no_progress_s` seconds of the cycles' clock, each further such
//! answer is a `no-progress` fault (the fallback decides that cycle). Both conditions, so a
//! plugin that waits on purpose for a better placement (`topology` relaxes a job's preference
//! every `relax_after_s`, 600 s by default, three times) is not flagged while it waits, and a burst
//! of quick cycles does not count as a long time. A deadline fault also makes the plugin back off:
//! the fallback decides the next 2, 4, 8... cycles, so a plugin that overruns cannot take every
//! cycle's full deadline.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::OutputBudget;
use super::error::Fault;

/// When a plugin is quarantined and when it makes no progress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthRules {
    /// Faults in a row that quarantine (0: never).
    pub consecutive: u32,
    /// Faults among the last `window_calls` calls that quarantine (0: never).
    pub window_faults: u32,
    /// The calls the window spans.
    pub window_calls: u32,
    /// Cycles in a row with nothing placed (while the fallback could place) before the plugin
    /// is said to make no progress (0: never).
    pub no_progress_cycles: u32,
    /// ... and seconds of the cycles' clock since the first of them.
    pub no_progress_s: f64,
}

impl Default for HealthRules {
    fn default() -> Self {
        Self {
            consecutive: 3,
            window_faults: 5,
            window_calls: 10,
            no_progress_cycles: 10,
            no_progress_s: 3600.0,
        }
    }
}

#[derive(Debug, Default)]
struct Recent {
    consecutive: u32,
    /// Outcomes of the last calls, true for a fault.
    window: VecDeque<bool>,
    why: Option<String>,
    stalled_cycles: u32,
    stalled_since_s: Option<f64>,
    backoff_cycles: u32,
    deadline_streak: u32,
}

/// Counters of one plugin, shared by every call.
#[derive(Debug)]
pub struct Health {
    rules: HealthRules,
    calls: AtomicU64,
    faults: AtomicU64,
    fallbacks: AtomicU64,
    no_progress: AtomicU64,
    quarantined: AtomicBool,
    recent: Mutex<Recent>,
    output: Arc<OutputBudget>,
}

/// A copy of the counters, for reports.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HealthReport {
    /// Calls made into the plugin.
    pub calls: u64,
    /// Calls that failed (trap, deadline, limits, guest error, malformed or invalid output, no
    /// progress).
    pub faults: u64,
    /// Decisions the native fallback made instead of the plugin.
    pub fallbacks: u64,
    /// Faults since the last success.
    pub consecutive_faults: u32,
    /// Faults among the last calls (the quarantine window).
    pub window_faults: u32,
    /// Cycles in a row the plugin placed nothing while the fallback could have.
    pub stalled_cycles: u32,
    /// Answers counted as `no-progress` faults.
    pub no_progress_faults: u64,
    /// Log events and output lines dropped over the plugin's output allowance.
    pub output_dropped_events: u64,
    /// Their bytes.
    pub output_dropped_bytes: u64,
    /// True once a quarantine rule held.
    pub quarantined: bool,
    /// Which rule quarantined it.
    pub quarantine_reason: Option<String>,
}

impl Health {
    /// Counters under `rules`, with the plugin's output allowance.
    pub fn new(rules: HealthRules, output: Arc<OutputBudget>) -> Self {
        Self {
            rules,
            calls: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            no_progress: AtomicU64::new(0),
            quarantined: AtomicBool::new(false),
            recent: Mutex::new(Recent::default()),
            output,
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The plugin's output allowance.
    pub fn output(&self) -> &Arc<OutputBudget> {
        &self.output
    }

    /// True when calls should go to the fallback.
    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Relaxed)
    }

    fn record(&self, r: &mut Recent, fault: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        r.window.push_back(fault);
        while r.window.len() > self.rules.window_calls.max(1) as usize {
            r.window.pop_front();
        }
    }

    /// Records a successful call.
    pub fn success(&self) {
        let mut r = self.recent();
        self.record(&mut r, false);
        r.consecutive = 0;
        r.deadline_streak = 0;
    }

    /// Records a failed call; returns true when this fault put the plugin in quarantine.
    pub fn fault(&self, fault: &Fault) -> bool {
        let mut r = self.recent();
        self.record(&mut r, true);
        self.faults.fetch_add(1, Ordering::Relaxed);
        if matches!(fault, Fault::NoProgress { .. }) {
            self.no_progress.fetch_add(1, Ordering::Relaxed);
        }
        if matches!(fault, Fault::Deadline { .. }) {
            r.deadline_streak += 1;
            r.backoff_cycles = 1 << r.deadline_streak.min(6);
        }
        r.consecutive += 1;
        let in_window = r.window.iter().filter(|&&f| f).count() as u32;
        let rules = &self.rules;
        let why = if rules.consecutive > 0 && r.consecutive >= rules.consecutive {
            format!("{} in a row", r.consecutive)
        } else if rules.window_faults > 0 && in_window >= rules.window_faults {
            format!("{in_window} of the last {} calls", r.window.len())
        } else {
            return false;
        };
        if self.quarantined.swap(true, Ordering::Relaxed) {
            return false;
        }
        r.why = Some(why);
        true
    }

    /// Records a decision made by the fallback instead.
    pub fn fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether this cycle goes to the fallback because the plugin overran its deadline
    /// recently; counts the cycle off the back-off.
    pub fn backing_off(&self) -> Option<u32> {
        let mut r = self.recent();
        if r.backoff_cycles == 0 {
            return None;
        }
        r.backoff_cycles -= 1;
        Some(r.backoff_cycles + 1)
    }

    /// Records whether a valid answer at `now_s` made progress: `placed` jobs, while the
    /// fallback could have placed some (`placeable`). Returns the `no-progress` fault once the
    /// plugin has placed nothing for long enough (see [`HealthRules`]).
    pub fn progress(&self, now_s: f64, placed: usize, placeable: bool) -> Option<Fault> {
        let mut r = self.recent();
        if placed > 0 || !placeable {
            r.stalled_cycles = 0;
            r.stalled_since_s = None;
            return None;
        }
        r.stalled_cycles += 1;
        let since = *r.stalled_since_s.get_or_insert(now_s);
        let waited_s = now_s - since;
        let rules = &self.rules;
        (rules.no_progress_cycles > 0
            && r.stalled_cycles >= rules.no_progress_cycles
            && waited_s >= rules.no_progress_s)
            .then_some(Fault::NoProgress {
                cycles: r.stalled_cycles,
                waited_s,
            })
    }

    /// Consecutive faults so far.
    pub fn consecutive_faults(&self) -> u32 {
        self.recent().consecutive
    }

    /// Which rule quarantined the plugin (with the fault count), if one did.
    pub fn quarantine(&self) -> Option<(u32, String)> {
        let r = self.recent();
        let faults = r.window.iter().filter(|&&f| f).count() as u32;
        r.why.clone().map(|why| (r.consecutive.max(faults), why))
    }

    /// Lifts the quarantine (for example after an operator reloads the plugin).
    pub fn reinstate(&self) {
        *self.recent() = Recent::default();
        self.quarantined.store(false, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn report(&self) -> HealthReport {
        let r = self.recent();
        let dropped = self.output.dropped();
        HealthReport {
            calls: self.calls.load(Ordering::Relaxed),
            faults: self.faults.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            consecutive_faults: r.consecutive,
            window_faults: r.window.iter().filter(|&&f| f).count() as u32,
            stalled_cycles: r.stalled_cycles,
            no_progress_faults: self.no_progress.load(Ordering::Relaxed),
            output_dropped_events: dropped.events,
            output_dropped_bytes: dropped.bytes,
            quarantined: self.is_quarantined(),
            quarantine_reason: r.why.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health::new(HealthRules::default(), Arc::default())
    }

    fn trap() -> Fault {
        Fault::Trap {
            message: "unreachable".into(),
            frame: None,
        }
    }

    #[test]
    fn quarantines_after_threshold_consecutive_faults() {
        let h = health();
        assert!(!h.fault(&trap()));
        assert!(!h.fault(&trap()));
        h.success();
        assert!(!h.fault(&trap()));
        assert!(!h.fault(&trap()));
        assert!(h.fault(&trap()), "third consecutive fault quarantines");
        assert!(!h.fault(&trap()), "reported once");
        assert!(h.is_quarantined());
        let r = h.report();
        assert_eq!((r.calls, r.faults, r.consecutive_faults), (7, 6, 4));
        assert_eq!(r.quarantine_reason.as_deref(), Some("3 in a row"));
        h.reinstate();
        assert!(!h.is_quarantined());
    }

    #[test]
    fn faults_every_other_call_quarantine_within_the_window() {
        let h = health();
        let mut calls = 0;
        loop {
            calls += 1;
            let quarantined = if calls % 2 == 1 {
                h.fault(&trap())
            } else {
                h.success();
                false
            };
            if quarantined {
                break;
            }
            assert!(calls < 12, "never quarantined");
        }
        assert_eq!(calls, 9, "the fifth fault among the last ten calls");
        assert_eq!(
            h.report().quarantine_reason.as_deref(),
            Some("5 of the last 9 calls")
        );
    }

    #[test]
    fn no_progress_needs_both_cycles_and_time() {
        let h = health();
        // Ten quick cycles: not yet (no time has passed).
        for i in 0..20 {
            assert_eq!(h.progress(i as f64, 0, true), None);
        }
        // Time passes with cycles: flagged.
        let fault = h.progress(4000.0, 0, true).expect("no progress");
        assert_eq!(fault.class(), "no-progress");
        // Nothing placeable, or something placed: the streak ends.
        assert_eq!(h.progress(4001.0, 0, false), None);
        assert_eq!(h.report().stalled_cycles, 0);
        for i in 0..9 {
            assert_eq!(h.progress(5000.0 + 1000.0 * i as f64, 0, true), None);
        }
        assert_eq!(h.progress(20_000.0, 1, true), None);
    }

    #[test]
    fn a_deadline_fault_backs_off_doubling() {
        let h = health();
        h.fault(&Fault::Deadline { limit_ms: 10 });
        assert_eq!(h.backing_off(), Some(2));
        assert_eq!(h.backing_off(), Some(1));
        assert_eq!(h.backing_off(), None);
        h.fault(&Fault::Deadline { limit_ms: 10 });
        assert_eq!((0..10).filter_map(|_| h.backing_off()).count(), 4);
    }
}
