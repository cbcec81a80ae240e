//! Fault counting and quarantine of one plugin.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Counters of one plugin, shared by every call.
#[derive(Debug)]
pub struct Health {
    threshold: u32,
    calls: AtomicU64,
    faults: AtomicU64,
    fallbacks: AtomicU64,
    consecutive: AtomicU32,
    quarantined: AtomicBool,
}

/// A copy of the counters, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HealthReport {
    /// Calls made into the plugin.
    pub calls: u64,
    /// Calls that failed (trap, deadline, limits, guest error, malformed or invalid output).
    pub faults: u64,
    /// Decisions the native fallback made instead of the plugin.
    pub fallbacks: u64,
    /// Faults since the last success.
    pub consecutive_faults: u32,
    /// True once `consecutive_faults` reached the threshold.
    pub quarantined: bool,
}

impl Health {
    /// Quarantine after `threshold` consecutive faults (0 never quarantines).
    pub fn new(threshold: u32) -> Self {
        Self {
            threshold,
            calls: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            quarantined: AtomicBool::new(false),
        }
    }

    /// True when calls should go to the fallback.
    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Records a successful call.
    pub fn success(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
    }

    /// Records a failed call; returns true when this fault put the plugin in quarantine.
    pub fn fault(&self) -> bool {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.faults.fetch_add(1, Ordering::Relaxed);
        let consecutive = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        self.threshold > 0
            && consecutive >= self.threshold
            && !self.quarantined.swap(true, Ordering::Relaxed)
    }

    /// Records a decision made by the fallback instead.
    pub fn fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// Consecutive faults so far.
    pub fn consecutive_faults(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }

    /// Lifts the quarantine (for example after an operator reloads the plugin).
    pub fn reinstate(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
        self.quarantined.store(false, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn report(&self) -> HealthReport {
        HealthReport {
            calls: self.calls.load(Ordering::Relaxed),
            faults: self.faults.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            consecutive_faults: self.consecutive.load(Ordering::Relaxed),
            quarantined: self.is_quarantined(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Health;

    #[test]
    fn quarantines_after_threshold_consecutive_faults_only() {
        let h = Health::new(3);
        assert!(!h.fault());
        assert!(!h.fault());
        h.success();
        assert!(!h.fault());
        assert!(!h.fault());
        assert!(h.fault(), "third consecutive fault quarantines");
        assert!(!h.fault(), "reported once");
        assert!(h.is_quarantined());
        let r = h.report();
        assert_eq!((r.calls, r.faults, r.consecutive_faults), (7, 6, 4));
        h.reinstate();
        assert!(!h.is_quarantined());
    }
}
