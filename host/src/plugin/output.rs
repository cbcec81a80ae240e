//! How much a plugin may write to the host's log: a token bucket per plugin, shared by all of its
//! stores and calls, so a plugin that logs on every call cannot write more over time than the
//! bucket's rate, however many calls it gets. What is dropped is counted (reported in the
//! plugin's health and on `/metrics`), and a warning says so at most every
//! [`DROP_WARNING_EVERY`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bytes per second a plugin may write to the log over time (log events and stdout/stderr).
pub const OUTPUT_RATE: f64 = 16.0 * 1024.0;
/// Bytes a plugin may write at once when it has been quiet.
pub const OUTPUT_BURST: f64 = 128.0 * 1024.0;
/// What one event costs beside its text (the fields and the line the host writes around it).
pub const EVENT_OVERHEAD: usize = 64;
/// Least time between two warnings about dropped output of one plugin.
pub const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    warned: Option<Instant>,
}

/// The output allowance of one plugin.
#[derive(Debug)]
pub struct OutputBudget {
    bucket: Mutex<Bucket>,
    dropped_events: AtomicU64,
    dropped_bytes: AtomicU64,
}

/// What a plugin's output allowance dropped so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Dropped {
    /// Log events and output lines dropped.
    pub events: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Default for OutputBudget {
    fn default() -> Self {
        Self {
            bucket: Mutex::new(Bucket {
                tokens: OUTPUT_BURST,
                refilled: Instant::now(),
                warned: None,
            }),
            dropped_events: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
        }
    }
}

impl OutputBudget {
    /// Takes room for one event of `bytes` of text; false (and counted as dropped) when the
    /// plugin has written its share.
    pub fn admit(&self, bytes: usize) -> bool {
        let cost = (bytes + EVENT_OVERHEAD) as f64;
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let earned = now.duration_since(b.refilled).as_secs_f64() * OUTPUT_RATE;
        b.tokens = (b.tokens + earned).min(OUTPUT_BURST);
        b.refilled = now;
        if b.tokens >= cost {
            b.tokens -= cost;
            return true;
        }
        drop(b);
        self.drop_event(bytes);
        false
    }

    /// Counts an event dropped for another reason (a per-call cap).
    pub fn drop_event(&self, bytes: usize) {
        self.dropped_events.fetch_add(1, Ordering::Relaxed);
        self.dropped_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// What was dropped so far.
    pub fn dropped(&self) -> Dropped {
        Dropped {
            events: self.dropped_events.load(Ordering::Relaxed),
            bytes: self.dropped_bytes.load(Ordering::Relaxed),
        }
    }

    /// True when a warning about dropped output is due (at most one per
    /// [`DROP_WARNING_EVERY`]), recording that it is given.
    pub fn warning_due(&self) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if b.warned
            .is_some_and(|t| now.duration_since(t) < DROP_WARNING_EVERY)
        {
            return false;
        }
        b.warned = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_admits_a_burst_then_drops_and_counts() {
        let budget = OutputBudget::default();
        let event = 4096;
        let admitted = (0..1000).filter(|_| budget.admit(event)).count();
        let burst = (OUTPUT_BURST / (event + EVENT_OVERHEAD) as f64) as usize;
        // Refill while the loop ran can admit a few more; never the thousand.
        assert!(admitted >= burst && admitted < burst + 8, "{admitted}");
        let dropped = budget.dropped();
        assert_eq!(dropped.events, (1000 - admitted) as u64);
        assert_eq!(dropped.bytes, dropped.events * event as u64);
        assert!(budget.warning_due());
        assert!(!budget.warning_due(), "one warning per interval");
    }
}
