//! How backends are compared with each other and with [`crate::reference`]: deterministic inputs
//! and a relative tolerance. Public so tests outside this crate (the trainer's, the CUDA ones)
//! judge agreement the same way.

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

/// The stored transpose of a `rows x cols` row-major matrix.
pub fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| x[r * cols + c]))
        .collect()
}
