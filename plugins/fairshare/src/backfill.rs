//! EASY backfill: the first job blocked for lack of GPUs gets a reservation, and later jobs may
//! only jump ahead of it when they cannot delay it.
//!
//! The reservation's *shadow time* is the earliest moment, by the running allocations' expected
//! ends, at which enough usable GPUs are free for the reserved job. A later job may start now if
//! it is expected to end by then, or if it only takes GPUs that will still be spare at the shadow
//! time (the reservation's `extra`).

use super::sched::Snapshot;
use super::usable::UsableCounts;

/// GPUs expected to be released at `end_s`: a running allocation, or a placement of this cycle.
#[derive(Debug, Clone, Copy)]
pub struct Release<'a> {
    /// When the GPUs are expected to be free again, in seconds on the host's clock.
    pub end_s: f64,
    /// Indices into `snapshot.gpus`.
    pub gpus: &'a [u32],
}

/// The one reservation of a cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// Queue position of the reserved job.
    pub job: u32,
    /// When enough usable GPUs for the reserved job are expected to be free.
    pub shadow_s: f64,
    /// Usable GPUs free at the shadow time beyond the reserved job's need, not yet promised to
    /// a backfilled job that runs past the shadow time.
    pub extra: u32,
}

impl Reservation {
    /// Whether a job starting at `now_s` is expected to end by the shadow time. A NaN estimate
    /// is never in time.
    pub fn ends_in_time(&self, now_s: f64, est_runtime_s: f64) -> bool {
        now_s + est_runtime_s <= self.shadow_s
    }

    /// How many of `want` GPUs a job may take now without delaying the reserved job.
    pub fn allowance(&self, now_s: f64, est_runtime_s: f64, want: u32) -> u32 {
        if self.ends_in_time(now_s, est_runtime_s) {
            want
        } else {
            want.min(self.extra)
        }
    }

    /// Records that a job took `gpus` GPUs; those of a job that outlives the shadow time are
    /// taken from `extra`.
    pub fn charge(&mut self, now_s: f64, est_runtime_s: f64, gpus: u32) {
        if !self.ends_in_time(now_s, est_runtime_s) {
            self.extra = self.extra.saturating_sub(gpus);
        }
    }
}

/// The reservation of queue position `job`, needing `need` GPUs with `memory_mib` free each,
/// when `free` GPUs are free now and `releases` free more later. `None` when the expected
/// releases never free enough (the job is larger than what the cluster will ever have free).
///
/// A released GPU counts only when it is healthy, on an existing node and has the memory; a
/// release with a non-finite end never happens.
pub fn reserve<'a>(
    snapshot: &Snapshot,
    free: &UsableCounts,
    releases: impl IntoIterator<Item = Release<'a>>,
    job: u32,
    need: u32,
    memory_mib: u32,
) -> Option<Reservation> {
    let now_s = snapshot.now_s;
    let mut available = free.at_least(memory_mib);
    if available >= need {
        return Some(Reservation {
            job,
            shadow_s: now_s,
            extra: available - need,
        });
    }
    let mut releases: Vec<Release<'a>> = releases
        .into_iter()
        .filter(|r| r.end_s.is_finite())
        .collect();
    releases.sort_by(|a, b| a.end_s.total_cmp(&b.end_s));
    let nodes = snapshot.nodes.len();
    // A GPU listed twice (or already free) must not be counted twice.
    let mut seen = vec![false; snapshot.gpus.len()];
    let mut i = 0;
    while i < releases.len() {
        let end_s = releases[i].end_s;
        // Everything released at the same instant is free at once.
        while i < releases.len() && releases[i].end_s <= end_s {
            for &g in releases[i].gpus {
                let (Some(gpu), Some(seen)) =
                    (snapshot.gpus.get(g as usize), seen.get_mut(g as usize))
                else {
                    continue;
                };
                if gpu.healthy
                    && (gpu.node as usize) < nodes
                    && gpu.memory_free_mib >= memory_mib
                    && !free.contains(g)
                    && !std::mem::replace(seen, true)
                {
                    available += 1;
                }
            }
            i += 1;
        }
        if available >= need {
            return Some(Reservation {
                job,
                // An overdue allocation is expected to end any moment, not in the past.
                shadow_s: end_s.max(now_s),
                extra: available - need,
            });
        }
    }
    None
}
