//! Fairness between tenants: the GPU-time each tenant got against its fair share, window by
//! window.
//!
//! A tenant's fair share at an instant is its weighted max-min share of the healthy GPUs given
//! what every tenant wants then (its running GPUs plus its queued jobs' GPUs, capped by its
//! quota): tenants wanting less than an equal weighted split get all they want, the rest split
//! what is left by weight (water-filling, as in DRF with one resource). Over each window
//! ([`WINDOW_S`]) the tenants' GPU-seconds are compared with their fair GPU-seconds:
//!
//! - the **fair-share deficit** is the fraction of the window's GPU-time that would have to
//!   change hands for every tenant to get its fair proportion (half the L1 distance between the
//!   two distributions): 0 is perfectly fair, 0.2 means a fifth of the GPU-time went to tenants
//!   beyond their share;
//! - **Jain's index** over each tenant's got/fair ratio, as Jain et al. define it (over throughput
//!   normalised by the fair allocation): 1 is perfectly fair, 1/n is one tenant taking it all.
//!
//! Only windows where at least two tenants had a fair share and some GPU-time was used count,
//! weighted by the fair GPU-time at stake: with one tenant wanting GPUs there is nobody to be
//! unfair to. Both figures compare proportions, so a scheduler that leaves GPUs idle is not
//! called unfair for it (utilisation and goodput show that).
//!
//! Why not Jain's index over per-tenant mean service rates (ideal runtime over JCT), as before:
//! every job waits in the same queue whoever submitted it, so under strict FIFO each tenant's
//! mean rate is nearly the same, and the index, 1 / (1 + CV²), rounds a 10 % spread to 0.99.
//! FIFO is fair to jobs; fair share is about tenants' shares of the cluster.

use serde::Serialize;

/// Length of a fairness window, seconds of simulated time.
pub const WINDOW_S: f64 = 3600.0;

/// Fairness figures of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fairness {
    /// Mean fair-share deficit over contended windows, 0..1 (0: fair).
    pub deficit: f64,
    /// Mean Jain's index over contended windows of got/fair per tenant, 1/n..1 (1: fair).
    pub jain: f64,
    /// Windows where at least two tenants had a fair share.
    pub contended_windows: u64,
}

/// Accumulates tenants' GPU-seconds and fair GPU-seconds over time, window by window.
#[derive(Debug, Clone)]
pub struct Tracker {
    capacity: f64,
    weights: Vec<f64>,
    quotas: Vec<Option<u32>>,
    window: u64,
    got: Vec<f64>,
    fair: Vec<f64>,
    // Sums over finished contended windows, weighted by their fair GPU-time.
    weight: f64,
    deficit: f64,
    jain: f64,
    contended: u64,
}

impl Tracker {
    /// A tracker for `capacity` healthy GPUs and tenants with these weights and quotas.
    pub fn new(capacity: usize, weights: Vec<f64>, quotas: Vec<Option<u32>>) -> Self {
        let n = weights.len();
        Self {
            capacity: capacity as f64,
            weights,
            quotas,
            window: 0,
            got: vec![0.0; n],
            fair: vec![0.0; n],
            weight: 0.0,
            deficit: 0.0,
            jain: 0.0,
            contended: 0,
        }
    }

    /// Records that from `from_s` to `to_s` each tenant held `used[t]` GPUs and wanted
    /// `wanted[t]` (held plus queued). Calls must come in time order.
    pub fn advance(&mut self, from_s: f64, to_s: f64, used: &[u32], wanted: &[u32]) {
        let forward = to_s.partial_cmp(&from_s) == Some(std::cmp::Ordering::Greater);
        if !forward || wanted.iter().all(|&w| w == 0) {
            self.roll_to(window_of(to_s.max(from_s)));
            return;
        }
        let fair = fair_shares(self.capacity, &self.weights, &self.capped(wanted));
        let mut t = from_s;
        while t < to_s {
            let w = window_of(t);
            self.roll_to(w);
            let end = ((w + 1) as f64 * WINDOW_S).min(to_s);
            // Windows wholly inside the interval are alike: finish all but the last at once.
            let whole = ((to_s - t) / WINDOW_S).floor() as u64;
            if t == w as f64 * WINDOW_S && whole > 1 {
                self.add(WINDOW_S, used, &fair);
                self.finish_window(whole - 1);
                self.window = w + whole - 1;
                t = (w + whole - 1) as f64 * WINDOW_S;
                continue;
            }
            self.add(end - t, used, &fair);
            t = end;
        }
    }

    /// The figures over every window so far (the current one included).
    pub fn result(&self) -> Fairness {
        let mut done = self.clone();
        done.finish_window(1);
        Fairness {
            deficit: if done.weight > 0.0 {
                done.deficit / done.weight
            } else {
                0.0
            },
            jain: if done.weight > 0.0 {
                done.jain / done.weight
            } else {
                1.0
            },
            contended_windows: done.contended,
        }
    }

    fn capped(&self, wanted: &[u32]) -> Vec<f64> {
        wanted
            .iter()
            .zip(&self.quotas)
            .map(|(&w, q)| f64::from(q.map_or(w, |q| w.min(q))))
            .collect()
    }

    fn add(&mut self, seconds: f64, used: &[u32], fair: &[f64]) {
        for (t, (&u, &f)) in used.iter().zip(fair).enumerate() {
            self.got[t] += f64::from(u) * seconds;
            self.fair[t] += f * seconds;
        }
    }

    /// Moves on to window `w`, finishing the current one if `w` is later.
    fn roll_to(&mut self, w: u64) {
        if w > self.window {
            self.finish_window(1);
            self.window = w;
        }
    }

    /// Adds the current window's figures `times` times over, then clears it.
    fn finish_window(&mut self, times: u64) {
        let fair_total: f64 = self.fair.iter().sum();
        let got_total: f64 = self.got.iter().sum();
        let contenders = self.fair.iter().filter(|&&f| f > 0.0).count();
        if contenders >= 2 && got_total > 0.0 {
            let (mut distance, mut sum, mut squares) = (0.0, 0.0, 0.0);
            for (&g, &f) in self.got.iter().zip(&self.fair) {
                let (share, fair_share) = (g / got_total, f / fair_total);
                distance += (share - fair_share).abs();
                if f > 0.0 {
                    let x = share / fair_share;
                    sum += x;
                    squares += x * x;
                }
            }
            let weight = fair_total * times as f64;
            self.weight += weight;
            self.deficit += weight * distance / 2.0;
            self.jain += weight * sum * sum / (contenders as f64 * squares);
            self.contended += times;
        }
        self.got.iter_mut().for_each(|g| *g = 0.0);
        self.fair.iter_mut().for_each(|f| *f = 0.0);
    }
}

fn window_of(t: f64) -> u64 {
    (t.max(0.0) / WINDOW_S) as u64
}

/// Weighted max-min fair shares of `capacity` among tenants wanting `wanted` (water-filling):
/// whoever wants less than its weighted split gets what it wants, the rest split the remainder
/// by weight.
pub fn fair_shares(capacity: f64, weights: &[f64], wanted: &[f64]) -> Vec<f64> {
    let mut share = vec![0.0; wanted.len()];
    let mut open: Vec<usize> = (0..wanted.len()).filter(|&t| wanted[t] > 0.0).collect();
    let mut left = capacity;
    while !open.is_empty() && left > 0.0 {
        let weight: f64 = open.iter().map(|&t| weights[t]).sum();
        let per_weight = left / weight;
        let (sated, hungry): (Vec<usize>, Vec<usize>) = open
            .iter()
            .partition(|&&t| wanted[t] <= weights[t] * per_weight);
        if sated.is_empty() {
            for &t in &hungry {
                share[t] = weights[t] * per_weight;
            }
            break;
        }
        for &t in &sated {
            share[t] = wanted[t];
            left -= wanted[t];
        }
        open = hungry;
    }
    share
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn water_filling_gives_the_small_their_demand_and_splits_the_rest_by_weight() {
        let s = fair_shares(12.0, &[1.0, 1.0, 1.0], &[2.0, 10.0, 10.0]);
        assert_eq!(s, [2.0, 5.0, 5.0]);
        let s = fair_shares(12.0, &[1.0, 2.0, 1.0], &[100.0, 100.0, 0.0]);
        assert_eq!(s, [4.0, 8.0, 0.0]);
        let s = fair_shares(12.0, &[1.0, 1.0], &[3.0, 4.0]);
        assert_eq!(s, [3.0, 4.0], "enough for everyone");
    }

    #[test]
    fn fifo_like_shares_score_worse_than_fair_ones() {
        // Two tenants both wanting the whole 8-GPU cluster for 10 windows.
        let run = |split: [u32; 2]| {
            let mut t = Tracker::new(8, vec![1.0, 1.0], vec![None, None]);
            t.advance(0.0, 10.0 * WINDOW_S, &split, &[8, 8]);
            t.result()
        };
        let fair = run([4, 4]);
        assert_eq!(
            (fair.deficit, fair.jain, fair.contended_windows),
            (0.0, 1.0, 10)
        );
        let skewed = run([6, 2]);
        assert!((skewed.deficit - 0.25).abs() < 1e-12, "{skewed:?}");
        // Ratios 1.5 and 0.5: Jain = 4 / (2 * 2.5) = 0.8.
        assert!((skewed.jain - 0.8).abs() < 1e-12, "{skewed:?}");
    }

    #[test]
    fn windows_without_contention_or_use_do_not_count() {
        let mut t = Tracker::new(8, vec![1.0, 1.0], vec![None, None]);
        // One tenant alone for a long time: nobody to be unfair to.
        t.advance(0.0, 5.0 * WINDOW_S, &[8, 0], &[20, 0]);
        // Both want GPUs but nothing runs: no shares to compare.
        t.advance(5.0 * WINDOW_S, 6.0 * WINDOW_S, &[0, 0], &[20, 20]);
        let r = t.result();
        assert_eq!((r.deficit, r.jain, r.contended_windows), (0.0, 1.0, 0));
        // Half a window shared unfairly, starting mid-window, counts once.
        t.advance(6.5 * WINDOW_S, 7.0 * WINDOW_S, &[8, 0], &[8, 8]);
        let r = t.result();
        assert_eq!(r.contended_windows, 1);
        assert!((r.deficit - 0.5).abs() < 1e-12, "{r:?}");
    }

    #[test]
    fn quotas_cap_what_a_tenant_may_claim() {
        let mut t = Tracker::new(8, vec![1.0, 1.0], vec![Some(2), None]);
        // Tenant 0 wants 8 but may hold 2: its fair share is 2, tenant 1's 6.
        t.advance(0.0, WINDOW_S, &[2, 6], &[8, 8]);
        assert_eq!(t.result().deficit, 0.0);
    }
}
