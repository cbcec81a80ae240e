//! The transpose of a row-major matrix, for `A * B^T` products (see `TRANSPOSE_B_MIN`).
//!
//! Tiles of 16 x 16: each tile reads 16 whole cache lines and writes 16 whole lines, so no line
//! has to stay cached between tiles. That matters at power-of-two widths (the MLP's 1024 x 1024
//! weights): there every row of a column band falls in the same cache set, and the earlier 8 x 8
//! tiles, which used half of each line read and came back for the other half 1,024 rows later,
//! found it evicted (1.3 ms for 1024 x 1024 on the Intel Xeon, against 0.4 ms for 1024 x 784).

use rayon::prelude::*;

/// Side of a tile.
const T: usize = 16;

/// Writes the transpose of `src` (`rows x cols`) into `dst` (`cols x rows`), the current rayon
/// pool's threads taking 16 output rows at a time.
pub(super) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    let dst = &mut dst[..rows * cols];
    if rows == 0 || cols == 0 {
        return;
    }
    dst.par_chunks_mut(T * rows)
        .enumerate()
        .for_each(|(band, out)| transpose_band(src, rows, cols, band * T, out));
}

/// How tiles are transposed here.
pub(super) fn level() -> &'static str {
    if avx() {
        return "16 x 16 tiles, avx";
    }
    "16 x 16 tiles, scalar"
}

/// Whether the AVX tiles can run here.
fn avx() -> bool {
    cfg!(target_arch = "x86_64") && super::vectors() >= super::Vectors::Avx
}

/// Output rows `c0..c0 + out.len() / rows` (input columns).
fn transpose_band(src: &[f32], rows: usize, cols: usize, c0: usize, out: &mut [f32]) {
    let width = out.len() / rows;
    let mut r0 = 0;
    #[cfg(target_arch = "x86_64")]
    if width == T && avx() {
        while r0 + T <= rows {
            for (dr, dc) in [(0, 0), (0, 8), (8, 0), (8, 8)] {
                let from = (r0 + dr) * cols + c0 + dc;
                let to = dc * rows + r0 + dr;
                // SAFETY: AVX is available (checked); the 8 x 8 block read, rows r0 + dr.. of
                // 8 columns from c0 + dc, and the one written, output rows dc.. of 8 values
                // from r0 + dr, are inside `src` and `out` (r0 + 16 <= rows, width is 16).
                unsafe {
                    avx::t8x8(src.as_ptr().add(from), cols, out.as_mut_ptr().add(to), rows);
                }
            }
            r0 += T;
        }
    }
    for r in r0..rows {
        for dc in 0..width {
            out[dc * rows + r] = src[r * cols + c0 + dc];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// Transposes the 8 x 8 block at `src` (row stride `lds`) into `dst` (row stride `ldd`).
    ///
    /// # Safety
    /// AVX is available; 8 rows of 8 floats are readable at `src` and writable at `dst`.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn t8x8(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
        // SAFETY: the caller's.
        let r: [__m256; 8] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.add(i * lds)) });
        // Pairs of rows interleaved, then quadruples, then the 128-bit halves swapped.
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let out = [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ];
        for (i, v) in out.into_iter().enumerate() {
            // SAFETY: the caller's.
            unsafe { _mm256_storeu_ps(dst.add(i * ldd), v) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::transpose;

    /// Every element lands where the definition says, for whole and ragged tiles, one row or
    /// column, and a power-of-two square.
    #[test]
    fn transpose_matches_its_definition() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for (rows, cols) in [
            (1, 1),
            (1, 37),
            (37, 1),
            (16, 16),
            (17, 33),
            (64, 1024),
            (300, 250),
        ] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let mut dst = vec![f32::NAN; rows * cols];
            pool.install(|| transpose(&src, rows, cols, &mut dst));
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        dst[c * rows + r],
                        src[r * cols + c],
                        "{rows}x{cols} at ({r}, {c})"
                    );
                }
            }
        }
    }
}
