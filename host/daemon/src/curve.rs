//! A training job's metrics as it runs: where it is (step, epoch, loss, throughput) and its loss
//! curve, kept in memory for `GET /v1/jobs/{id}/metrics` and saved with every checkpoint, so a
//! restarted daemon shows the curve up to the step it resumes from.

use serde::{Deserialize, Serialize};

/// Most points a curve keeps; past it, every other point is dropped and the stride doubles, so
/// memory stays bounded however long the job runs while the whole run stays covered.
pub const MAX_POINTS: usize = 256;

/// One point of a loss curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Steps taken.
    pub step: u32,
    /// That step's mean loss.
    pub loss: f64,
    /// Unix seconds.
    pub at: f64,
}

/// A job's training metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// Steps taken in all (a resumed job counts the earlier ones).
    pub step: u32,
    /// Steps the whole run takes.
    pub total_steps: u64,
    /// The epoch (from 0).
    pub epoch: u64,
    /// The latest step's mean loss.
    pub loss: Option<f64>,
    /// Training rows per second in the current run of the job.
    pub samples_per_s: f64,
    /// Unix seconds of the latest step.
    pub updated_at: Option<f64>,
    /// Loss by step: every `stride`-th step, oldest first.
    pub points: Vec<Point>,
    /// Steps between points.
    pub stride: u32,
}

impl Default for Curve {
    fn default() -> Self {
        Self {
            step: 0,
            total_steps: 0,
            epoch: 0,
            loss: None,
            samples_per_s: 0.0,
            updated_at: None,
            points: Vec::new(),
            stride: 1,
        }
    }
}

impl Curve {
    /// Records one step. Steps only go forward (a resumed job [`Self::rewind`]s first): one at
    /// or before the latest is dropped, so a node that repeats or invents steps cannot grow the
    /// curve (1,000 reports of step 0 made it 256,256 points, each report slower than the last).
    pub fn record(&mut self, p: &gantry::training::Progress, at: f64) {
        if p.step <= self.step {
            return;
        }
        self.step = p.step;
        self.total_steps = p.total_steps;
        self.epoch = p.epoch;
        self.loss = Some(p.loss);
        self.samples_per_s = p.samples_per_s;
        self.updated_at = Some(at);
        let last = p.step as u64 == p.total_steps;
        if p.step.is_multiple_of(self.stride.max(1)) || last {
            self.points.push(Point {
                step: p.step,
                loss: p.loss,
                at,
            });
        }
        // Steps increase, so few of them are multiples of a large stride: this ends, at the
        // latest when the stride reaches 2^31, with at most three points left.
        while self.points.len() > MAX_POINTS && self.stride < 1 << 31 {
            self.stride = self.stride.max(1) * 2;
            let stride = self.stride;
            let total = self.total_steps;
            self.points
                .retain(|q| q.step.is_multiple_of(stride) || q.step as u64 == total);
        }
    }

    /// The curve as it stood at `step` (a checkpoint a job resumes from): later points go.
    pub fn rewind(&mut self, step: u32) {
        self.points.retain(|q| q.step <= step);
        self.step = step;
        if let Some(last) = self.points.last() {
            self.loss = Some(last.loss);
        }
    }

    /// The fraction of the run done, 0 to 1.
    pub fn progress(&self) -> f64 {
        if self.total_steps == 0 {
            0.0
        } else {
            (self.step as f64 / self.total_steps as f64).min(1.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry::training::Progress;

    fn step(curve: &mut Curve, step: u32, total: u64) {
        curve.record(
            &Progress {
                epoch: 0,
                step,
                total_steps: total,
                loss: 1.0 / step as f64,
                samples_per_s: 10.0,
            },
            step as f64,
        );
    }

    #[test]
    fn a_long_run_keeps_a_bounded_curve_that_spans_it() {
        let mut c = Curve::default();
        for s in 1..=10_000 {
            step(&mut c, s, 10_000);
        }
        assert!(c.points.len() <= MAX_POINTS, "{} points", c.points.len());
        assert!(c.points.len() > MAX_POINTS / 4, "{} points", c.points.len());
        assert_eq!(c.points.last().unwrap().step, 10_000);
        assert!(
            c.points[0].step <= c.stride,
            "first point {:?}",
            c.points[0]
        );
        assert!(c.points.windows(2).all(|w| w[0].step < w[1].step));
        assert_eq!((c.step, c.progress()), (10_000, 1.0));
    }

    /// Reported by a review: a node's progress reports of step 0 (a multiple of every stride,
    /// so never dropped) grew a curve to 256,256 points, each step O(points) under the lock the
    /// metrics endpoint takes too; and the stride doubled without bound (it wraps at 2^32).
    #[test]
    fn a_node_repeating_or_inventing_steps_cannot_grow_the_curve() {
        let mut c = Curve::default();
        for s in 1..=100 {
            step(&mut c, s, 1000);
        }
        for _ in 0..10_000 {
            step(&mut c, 0, 1000);
            step(&mut c, 50, 1000);
            step(&mut c, 100, 1000);
        }
        assert_eq!(c.points.len(), 100);
        assert_eq!(c.step, 100);
        // Steps spread over the whole `u32` range: the stride stops growing, the curve stays
        // bounded.
        let mut c = Curve::default();
        for k in 1..=u32::MAX / (1 << 22) {
            step(&mut c, k << 22, u64::from(u32::MAX));
        }
        assert!(c.points.len() <= MAX_POINTS, "{} points", c.points.len());
        assert!(c.stride <= 1 << 31);
    }

    #[test]
    fn rewinding_drops_the_steps_a_resumed_job_redoes() {
        let mut c = Curve::default();
        for s in 1..=50 {
            step(&mut c, s, 100);
        }
        c.rewind(30);
        assert_eq!(c.points.last().unwrap().step, 30);
        assert_eq!(c.step, 30);
        assert_eq!(c.loss, Some(1.0 / 30.0));
        step(&mut c, 31, 100);
        assert_eq!(c.points.last().unwrap().step, 31);
    }
}
