//! Products with a narrow side, where blocked GEMM spends its time packing and padding for
//! little work: c at most 16 columns wide (a classifier's last layer: `x * W` and
//! `x^T * delta`), or a shared dimension of at most 16 (the delta below that layer,
//! `delta * W^T`). With AVX-512 one row of c, or one row of b, is one vector: the product is a
//! stream of broadcast FMAs with nothing packed but b. Each value of c is one walk over k in
//! order, on one thread, so results do not depend on the thread count.

use rayon::prelude::*;

use super::{Shared, Vectors, transpose, vectors};
use crate::backend::GemmShape;
use crate::reference::Op;

/// The narrow side's limit: one AVX-512 vector of f32.
const WIDE: usize = 16;

/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_FMAS: usize = 1 << 16;

/// Whether narrow products run here (AVX-512), for the backend's description.
pub(super) fn available() -> bool {
    cfg!(target_arch = "x86_64") && vectors() == Vectors::Avx512
}

/// Whether `s` is a narrow product this module runs here.
pub(super) fn applies(s: &GemmShape) -> bool {
    available() && (s.n <= WIDE || s.k <= WIDE)
}

/// `c = alpha * op_a(a) * op_b(b) + beta * c` for a product that [`applies`], on `pool` when
/// large; `scratch` holds b rearranged. Lengths are the caller's to check.
pub(super) fn gemm(
    pool: &rayon::ThreadPool,
    threads: usize,
    s: GemmShape,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    debug_assert!(applies(&s));
    // b as k rows the kernels read whole: `WIDE` values per row (zero beyond n) when c is
    // narrow, else n values per row (b itself when stored so).
    let (bp, ldb): (&[f32], usize) = if s.n <= WIDE {
        scratch.clear();
        scratch.resize(s.k * WIDE, 0.0);
        for (p, row) in scratch.chunks_exact_mut(WIDE).enumerate() {
            for (j, v) in row[..s.n].iter_mut().enumerate() {
                *v = b_at(&s, b, p, j);
            }
        }
        (scratch, WIDE)
    } else if s.op_b == Op::T {
        // b is stored n x k; its transpose, k x n, in the backend's tiles.
        scratch.resize(s.k * s.n, 0.0);
        pool.install(|| transpose(b, s.n, s.k, scratch));
        (scratch, s.n)
    } else {
        (b, s.n)
    };
    let (a_rs, a_cs) = match s.op_a {
        Op::N => (s.k, 1),
        Op::T => (1, s.m),
    };
    let c_ptr = Shared(c.as_mut_ptr());
    let rows = |i0: usize, i1: usize| {
        // SAFETY: AVX-512 F is here (`applies`); every row i < m and p < k read of a is inside
        // it (a holds m * k values, its strides those of its op), b's rows are `ldb` long and
        // k of them are in `bp`, and rows i0..i1 of c are inside c and written by this call
        // alone (callers split c in disjoint row ranges).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            let at = Rows {
                k: s.k,
                n: s.n,
                a: a.as_ptr(),
                a_rs,
                a_cs,
                b: bp.as_ptr(),
                ldb,
                c: c_ptr,
                alpha: s.alpha,
                beta: s.beta,
            };
            if s.n <= WIDE {
                avx512::narrow_c(&at, i0, i1);
            } else {
                avx512::short_k(&at, i0, i1);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (i0, i1, a_rs, a_cs, ldb, c_ptr);
    };
    let fmas = s.m.saturating_mul(s.n.max(WIDE)).saturating_mul(s.k);
    if threads == 1 || fmas < PARALLEL_MIN_FMAS {
        rows(0, s.m);
        return;
    }
    // Rows in fixed blocks of about PARALLEL_MIN_FMAS each; which thread runs a block does not
    // change what it computes.
    let per_row = s.n.max(WIDE) * s.k;
    let block = (PARALLEL_MIN_FMAS / per_row)
        .max(8)
        .min(s.m.div_ceil(threads));
    let blocks = s.m.div_ceil(block);
    pool.install(|| {
        (0..blocks)
            .into_par_iter()
            .for_each(|i| rows(i * block, ((i + 1) * block).min(s.m)));
    });
}

/// `op_b(b)` at row `p`, column `j`.
fn b_at(s: &GemmShape, b: &[f32], p: usize, j: usize) -> f32 {
    match s.op_b {
        Op::N => b[p * s.n + j],
        Op::T => b[j * s.k + p],
    }
}

/// One product as the kernels see it.
struct Rows {
    k: usize,
    n: usize,
    /// `op_a(a)` at (i, p) is `a[i * a_rs + p * a_cs]`.
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    /// `op_b(b)` at (p, j) is `b[p * ldb + j]`.
    b: *const f32,
    ldb: usize,
    c: Shared,
    alpha: f32,
    beta: f32,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Rows, WIDE};

    /// Rows of c this wide are computed together: eight chains of FMAs cover their latency.
    const R: usize = 8;

    /// Rows `i0..i1` of a c at most 16 wide: one vector per row, b's rows padded to 16.
    ///
    /// # Safety
    /// AVX-512 F is available, and `at` describes operands that hold every value read and
    /// rows `i0..i1` of c.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn narrow_c(at: &Rows, i0: usize, i1: usize) {
        let mask = lanes(at.n);
        let mut i = i0;
        while i + R <= i1 {
            // SAFETY: the caller's, rows i..i + R inside i0..i1.
            unsafe { narrow_block::<R>(at, i, mask) };
            i += R;
        }
        for i in i..i1 {
            // SAFETY: as above, row i.
            unsafe { narrow_block::<1>(at, i, mask) };
        }
    }

    /// Rows `i..i + RB` of a narrow c, their accumulators in registers (`RB` is a constant, so
    /// the loops over it unroll).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn narrow_block<const RB: usize>(at: &Rows, i: usize, mask: __mmask16) {
        let mut acc = [_mm512_setzero_ps(); RB];
        for p in 0..at.k {
            // SAFETY: (the caller's) b has k rows of 16.
            let brow = unsafe { _mm512_loadu_ps(at.b.add(p * WIDE)) };
            for (dr, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row i + dr < m, p < k.
                let x = unsafe { *at.a.add((i + dr) * at.a_rs + p * at.a_cs) };
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(x), brow, *acc);
            }
        }
        for (dr, acc) in acc.iter().enumerate() {
            // SAFETY: row i + dr of c, its n values.
            unsafe { store(at, at.c.at((i + dr) * at.n), mask, *acc) };
        }
    }

    /// Rows `i0..i1` of c for a shared dimension of at most 16: c's row in vectors of 16, each
    /// the sum of k rows of b scaled by a's values.
    ///
    /// # Safety
    /// As for [`narrow_c`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn short_k(at: &Rows, i0: usize, i1: usize) {
        const V: usize = 4;
        for i in i0..i1 {
            let mut j = 0;
            while j + V * WIDE <= at.n {
                // SAFETY: the caller's; columns j..j + 64 of row i.
                unsafe { short_block::<V>(at, i, j, u16::MAX) };
                j += V * WIDE;
            }
            while j < at.n {
                // SAFETY: as above, the columns of `lanes` from j.
                unsafe { short_block::<1>(at, i, j, lanes(at.n - j)) };
                j += WIDE;
            }
        }
    }

    /// Columns `j..` of row i of c, `VB` vectors of them (the last one's lanes `last`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn short_block<const VB: usize>(at: &Rows, i: usize, j: usize, last: __mmask16) {
        let mask = |v: usize| if v + 1 == VB { last } else { u16::MAX };
        let mut acc = [_mm512_setzero_ps(); VB];
        for p in 0..at.k {
            // SAFETY: i < m, p < k.
            let x = _mm512_set1_ps(unsafe { *at.a.add(i * at.a_rs + p * at.a_cs) });
            let row = unsafe { at.b.add(p * at.ldb + j) };
            for (v, acc) in acc.iter_mut().enumerate() {
                // SAFETY: the lanes of b's row p read are columns of c's row (< n).
                let bv = unsafe { _mm512_maskz_loadu_ps(mask(v), row.add(v * WIDE)) };
                *acc = _mm512_fmadd_ps(x, bv, *acc);
            }
        }
        for (v, acc) in acc.iter().enumerate() {
            // SAFETY: columns j + 16 v.. of row i of c, as many as the mask has.
            unsafe { store(at, at.c.at(i * at.n + j + v * WIDE), mask(v), *acc) };
        }
    }

    /// A mask of the first `n.min(16)` lanes.
    #[inline]
    fn lanes(n: usize) -> __mmask16 {
        if n >= WIDE { u16::MAX } else { (1u16 << n) - 1 }
    }

    /// `c = alpha * product + beta * c` on the lanes of `mask`; `beta == 0` ignores c.
    ///
    /// # Safety
    /// The lanes of `mask` at `c` are writable.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(at: &Rows, c: *mut f32, mask: __mmask16, product: __m512) {
        let mut v = _mm512_mul_ps(_mm512_set1_ps(at.alpha), product);
        if at.beta != 0.0 {
            // SAFETY: the caller's.
            let old = unsafe { _mm512_maskz_loadu_ps(mask, c) };
            v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_set1_ps(at.beta), old));
        }
        // SAFETY: the caller's.
        unsafe { _mm512_mask_storeu_ps(c, mask, v) };
    }
}
