//! How backends are compared with each other and with [`crate::reference`]: deterministic inputs
//! and a relative tolerance. Public so tests outside this crate (the trainer's, the CUDA ones)
//! judge agreement the same way.

use crate::train::epoch_order;
use crate::{Backend, Dataset, GemmShape, Op, Trainer, reference};

/// `|a - b| <= tol * (1 + max(|a|, |b|))`: relative for large values, absolute near zero.
pub fn close(a: f32, b: f32, tol: f32) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

/// Panics naming the first element where `got` and `want` are not [`close`].
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            close(*g, *w, tol),
            "element {i}: got {g}, want {w} (tol {tol})"
        );
    }
}

/// `n` deterministic values in [-1, 1) from `seed` (xorshift), the same on every machine.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// `x` rounded to bf16 (nearest, ties to even) and widened back, NaNs left as they are: what a
/// bf16 GEMM's inputs become, written apart from any backend's conversion it checks.
pub fn bf16_round(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let bits = x.to_bits();
    f32::from_bits(bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000)
}

/// The stored transpose of a `rows x cols` row-major matrix.
pub fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| x[r * cols + c]))
        .collect()
}

/// One GEMM to check: its shape, its operands from [`values`] and the reference's answer.
#[derive(Debug, Clone)]
pub struct GemmCase {
    /// Transposes, sizes, `alpha` and `beta`.
    pub shape: GemmShape,
    /// `a`, as stored.
    pub a: Vec<f32>,
    /// `b`, as stored.
    pub b: Vec<f32>,
    /// `c` before the call.
    pub c: Vec<f32>,
    /// `c` after the call, by [`reference::gemm`].
    pub want: Vec<f32>,
}

/// For each `(m, n, k)` of `sizes`, every pair of transposes with `(alpha, beta)` of `(1, 0)`
/// and `(0.5, 2)`: what every backend's GEMM must agree with the reference on.
pub fn gemm_cases(sizes: &[(usize, usize, usize)]) -> impl Iterator<Item = GemmCase> + '_ {
    let ops = [
        (Op::N, Op::N),
        (Op::N, Op::T),
        (Op::T, Op::N),
        (Op::T, Op::T),
    ];
    sizes.iter().flat_map(move |&(m, n, k)| {
        ops.into_iter().flat_map(move |(op_a, op_b)| {
            [(1.0, 0.0), (0.5, 2.0)].map(|(alpha, beta)| {
                let (a, b, c) = (values(m * k, 1), values(k * n, 2), values(m * n, 3));
                let mut want = c.clone();
                reference::gemm(op_a, op_b, m, n, k, alpha, &a, &b, beta, &mut want);
                let shape = GemmShape {
                    alpha,
                    beta,
                    ..GemmShape::new(op_a, op_b, m, n, k)
                };
                GemmCase {
                    shape,
                    a,
                    b,
                    c,
                    want,
                }
            })
        })
    })
}

/// Trains `epochs` epochs of mini-batches of `batch` rows, shuffled by [`epoch_order`] from
/// `seed`, as the trainer's and the CUDA tests do on every backend; the last epoch's mean loss.
pub fn fit<B: Backend>(
    trainer: &mut Trainer<B>,
    data: &Dataset,
    epochs: u64,
    batch: usize,
    seed: u64,
) -> f64 {
    let (mut f, mut t) = (Vec::new(), Vec::new());
    let mut last = 0.0;
    for epoch in 0..epochs {
        let (mut sum, mut n) = (0.0, 0);
        for rows in epoch_order(seed, epoch, data.rows()).chunks(batch) {
            data.gather(rows, &mut f, &mut t);
            sum += trainer.step(&f, &t).unwrap();
            n += 1;
        }
        last = sum / f64::from(n);
    }
    last
}

/// Trains `plain` by plain steps and `staged` with each next batch staged during the step, over
/// one epoch of batches of `batch` rows in [`epoch_order`] from `seed`, and panics unless every
/// step's loss is bit-identical and both end in the same state: staging must change nothing,
/// on every backend.
#[track_caller]
pub fn assert_staging_changes_nothing<B: Backend>(
    plain: &mut Trainer<B>,
    staged: &mut Trainer<B>,
    data: &Dataset,
    batch: usize,
    seed: u64,
) {
    let batches: Vec<(Vec<f32>, Vec<f32>)> = epoch_order(seed, 0, data.rows())
        .chunks(batch)
        .map(|rows| {
            let (mut f, mut t) = (Vec::new(), Vec::new());
            data.gather(rows, &mut f, &mut t);
            (f, t)
        })
        .collect();
    staged.stage(&batches[0].0, &batches[0].1).unwrap();
    for (i, (f, t)) in batches.iter().enumerate() {
        let a = plain.step(f, t).unwrap();
        let next = batches
            .get(i + 1)
            .map(|(f, t)| (f.as_slice(), t.as_slice()));
        let b = staged.step_staged(next).unwrap();
        assert_eq!(a.to_bits(), b.to_bits(), "batch {i}");
    }
    assert!(plain.snapshot().unwrap() == staged.snapshot().unwrap());
}

/// The Adam cases backends are compared on, as `(parameters, optimizer)`: 10 and 100,000
/// parameters, each without and with weight decay.
pub fn adam_cases() -> impl Iterator<Item = (usize, reference::Adam)> {
    [10, 100_000].into_iter().flat_map(|n| {
        [0.0, 0.01].map(move |weight_decay| {
            let adam = reference::Adam {
                lr: 0.01,
                weight_decay,
                ..reference::Adam::default()
            };
            (n, adam)
        })
    })
}
