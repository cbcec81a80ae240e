//! The CPU backend's bf16 GEMM on Intel AMX tiles (`precision = "bf16"`): operands rounded to
//! bfloat16 (nearest, ties to even) as they are packed into tiles, products accumulated in f32
//! tiles, the same arithmetic as the CUDA backend's bf16 GEMM.
//!
//! `c` is cut into blocks of 32 x 32 (two by two C tiles of 16 x 16 f32); each block is one
//! walk over k in steps of 32, so every value of `c` is summed in the same order whatever the
//! thread count. Both operands are packed first, in parallel: `a` into tiles of 16 rows x 32 k
//! values, `b` into AMX's pair-interleaved layout (16 pairs of k x 16 columns). The tile
//! instructions are written in `asm!` (their intrinsics are not stable Rust). `tdpbf16ps`
//! treats subnormal bf16 inputs as zero and flushes subnormal results (Intel's definition of
//! the instruction): values below 1.2e-38 in magnitude count as zero here.

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::backend::GemmShape;
use crate::reference::Op;

/// Rows of every tile, and columns of a C tile.
const ROWS: usize = 16;
/// k values per step: one A tile row (32 bf16 = 64 bytes) and one B tile (16 pairs of rows).
const K_STEP: usize = 32;
/// Words (bf16 pairs) in one packed A or B tile: 16 rows of 16 (1 KiB).
const TILE: usize = ROWS * ROWS;
/// Rows and columns of the `c` block one walk over k computes (two tiles each way).
const BLOCK: usize = 2 * ROWS;

/// This CPU's L2 data cache per core, in bytes (Linux's sysfs; 2 MiB, Sapphire Rapids', where
/// it says nothing).
pub(super) fn l2_bytes() -> usize {
    static L2: OnceLock<usize> = OnceLock::new();
    *L2.get_or_init(|| {
        (0..8)
            .find_map(|i| {
                let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
                let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).ok();
                if read("level")?.trim() != "2" || read("type")?.trim() == "Instruction" {
                    return None;
                }
                let size = read("size")?;
                let kib: usize = size.trim().strip_suffix('K')?.parse().ok()?;
                Some(kib << 10)
            })
            .unwrap_or(2 << 20)
    })
}

/// Whether bf16 GEMM on AMX can run in this process: the CPU has AMX-TILE, AMX-BF16 and
/// AVX-512 (BW), and Linux granted it the tile state. Checked once.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::is_x86_feature_detected as has;
    use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};
    if !(has!("avx512f") && has!("avx512bw")) {
        return false;
    }
    // Leaf 7 is read only where the CPU has it. AMX-BF16 is bit 22 of its EDX, AMX-TILE 24.
    let amx = __get_cpuid_max(0).0 >= 7 && {
        let edx = __cpuid_count(7, 0).edx;
        edx & (1 << 22) != 0 && edx & (1 << 24) != 0
    };
    amx && request_tile_state()
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Asks Linux for the AMX tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`),
/// once per process: without it the first tile instruction raises SIGILL. False where the
/// kernel or the hypervisor refuses.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a plain system call; it reads no memory and the kernel clobbers rcx and r11.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

/// Rounds `x` to bfloat16, nearest with ties to even; NaNs stay (quiet) NaNs.
#[inline(always)]
pub fn bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        (bits >> 16) as u16 | 0x40
    } else {
        rounded
    }
}

/// Two consecutive k values as AMX reads them: one 32-bit word, the lower k in the low half.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(bf16(lo)) | (u32::from(bf16(hi)) << 16)
}

/// An operand as stored: element `(i, p)` of the matrix it stands for at `i * rs + p * cs`.
#[derive(Clone, Copy)]
struct Strided<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Strided<'a> {
    /// Operand `data` used through `op`, `rows x cols` once used.
    fn new(data: &'a [f32], op: Op, rows: usize, cols: usize) -> Self {
        let (rs, cs) = match op {
            Op::N => (cols, 1),
            Op::T => (1, rows),
        };
        Self {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// The 32 x 32 elements from `(i0, p0)`, zero outside the matrix (the padding of edge
    /// tiles), read along whichever direction is contiguous.
    #[inline(always)]
    fn square(&self, i0: usize, p0: usize) -> [[f32; BLOCK]; BLOCK] {
        let mut square = [[0.0; BLOCK]; BLOCK];
        let rows = self.rows.saturating_sub(i0).min(BLOCK);
        let cols = self.cols.saturating_sub(p0).min(BLOCK);
        if self.cs == 1 {
            for (r, dst) in square.iter_mut().enumerate().take(rows) {
                let at = (i0 + r) * self.rs + p0;
                dst[..cols].copy_from_slice(&self.data[at..at + cols]);
            }
        } else {
            debug_assert_eq!(self.rs, 1, "one direction of an operand is contiguous");
            for p in 0..cols {
                let at = (p0 + p) * self.cs + i0;
                for (dst, &x) in square.iter_mut().zip(&self.data[at..at + rows]) {
                    dst[p] = x;
                }
            }
        }
        square
    }
}

/// Packed sizes: rows of `a` and columns of `b` rounded up to a block, k to a step.
#[derive(Clone, Copy)]
struct Padded {
    m: usize,
    n: usize,
    /// k steps.
    steps: usize,
}

impl Padded {
    fn of(s: &GemmShape) -> Self {
        Self {
            m: s.m.next_multiple_of(BLOCK),
            n: s.n.next_multiple_of(BLOCK),
            steps: s.k.div_ceil(K_STEP),
        }
    }

    /// Words of one packed block row of `a` (or block column of `b`).
    fn block_len(self) -> usize {
        2 * self.steps * TILE
    }
}

/// Where word `q` of row `r` of step `step`'s tile lies in a packed block of `steps` steps.
#[inline(always)]
fn word(steps: usize, step: usize, r: usize, q: usize) -> usize {
    ((r / ROWS) * steps + step) * TILE + (r % ROWS) * ROWS + q
}

/// The 16 words of 32 consecutive k values: bf16 of each, in order (the words' halves are
/// little-endian, low k first).
#[inline(always)]
fn narrow(src: &[f32; K_STEP]) -> [u32; ROWS] {
    let mut halves = [0u16; K_STEP];
    for (h, &x) in halves.iter_mut().zip(src) {
        *h = bf16(x);
    }
    std::array::from_fn(|q| u32::from(halves[2 * q]) | (u32::from(halves[2 * q + 1]) << 16))
}

/// 16 words, word `c` holding `lo[c]` and `hi[c]`.
#[inline(always)]
fn zip(lo: &[f32; ROWS], hi: &[f32; ROWS]) -> [u32; ROWS] {
    std::array::from_fn(|c| pair(lo[c], hi[c]))
}

/// Writes `columns` (16 columns of 16 words) as a tile's 16 rows.
#[inline(always)]
fn transposed(columns: &[[u32; ROWS]; ROWS], tile: &mut [u32]) {
    for (r, row) in tile.chunks_exact_mut(ROWS).enumerate() {
        for (c, w) in row.iter_mut().enumerate() {
            *w = columns[c][r];
        }
    }
}

/// `N` values of `data` from `at`, as an array reference.
#[inline(always)]
fn run<const N: usize>(data: &[f32], at: usize) -> &[f32; N] {
    data[at..at + N].try_into().expect("N values")
}

/// Packs rows `i0..i0 + 32` of `a` (`m x k`): for each k step, two tiles of 16 rows x 16
/// pairs of k; zero past `m` and `k`.
///
/// # Safety
/// The CPU has AVX-512 F and BW (every CPU with AMX does).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bw"))]
unsafe fn pack_a(a: Strided, steps: usize, i0: usize, out: &mut [u32]) {
    // Whole steps of whole blocks go the fast way, the edges one value at a time.
    let fast = if i0 + BLOCK <= a.rows {
        a.cols / K_STEP
    } else {
        0
    };
    for step in 0..fast {
        if a.cs == 1 {
            for r in 0..BLOCK {
                let src = run::<K_STEP>(a.data, (i0 + r) * a.rs + step * K_STEP);
                out[word(steps, step, r, 0)..][..ROWS].copy_from_slice(&narrow(src));
            }
        } else {
            // Stored transposed: a stored row is one k value across the block's rows.
            for t in 0..2 {
                let columns: [[u32; ROWS]; ROWS] = std::array::from_fn(|q| {
                    let p = step * K_STEP + 2 * q;
                    let rows = i0 + t * ROWS;
                    zip(
                        run(a.data, p * a.cs + rows),
                        run(a.data, (p + 1) * a.cs + rows),
                    )
                });
                transposed(&columns, &mut out[word(steps, step, t * ROWS, 0)..][..TILE]);
            }
        }
    }
    // The edges (a ragged block, the last k step): through a zero-padded copy.
    for step in fast..steps {
        let square = a.square(i0, step * K_STEP);
        for (r, row) in square.iter().enumerate() {
            out[word(steps, step, r, 0)..][..ROWS].copy_from_slice(&narrow(row));
        }
    }
}

/// Packs columns `j0..j0 + 32` of `b` (`k x n`) in AMX's B layout: for each k step, two tiles
/// of 16 pairs of k x 16 columns; zero past `n` and `k`.
///
/// # Safety
/// The CPU has AVX-512 F and BW (every CPU with AMX does).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bw"))]
unsafe fn pack_b(b: Strided, steps: usize, j0: usize, out: &mut [u32]) {
    let fast = if j0 + BLOCK <= b.cols {
        b.rows / K_STEP
    } else {
        0
    };
    for step in 0..fast {
        for t in 0..2 {
            let cols = j0 + t * ROWS;
            let tile = &mut out[word(steps, step, t * ROWS, 0)..][..TILE];
            if b.cs == 1 {
                for (pr, row) in tile.chunks_exact_mut(ROWS).enumerate() {
                    let p = step * K_STEP + 2 * pr;
                    let lo = run(b.data, p * b.rs + cols);
                    let hi = run(b.data, (p + 1) * b.rs + cols);
                    row.copy_from_slice(&zip(lo, hi));
                }
            } else {
                // Stored transposed: a stored row is one column of b, contiguous in k.
                let columns: [[u32; ROWS]; ROWS] =
                    std::array::from_fn(|c| narrow(run(b.data, (cols + c) * b.cs + step * K_STEP)));
                transposed(&columns, tile);
            }
        }
    }
    // The edges (a ragged block, the last k step): through a zero-padded copy.
    for step in fast..steps {
        let square = b.square(step * K_STEP, j0);
        for t in 0..2 {
            for pr in 0..ROWS {
                let half = |p: usize| run::<ROWS>(&square[p], t * ROWS);
                out[word(steps, step, t * ROWS + pr, 0)..][..ROWS]
                    .copy_from_slice(&zip(half(2 * pr), half(2 * pr + 1)));
            }
        }
    }
}

/// The tile configuration every block uses: palette 1, all eight tiles 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut bytes = [0u8; 64];
    bytes[0] = 1;
    let mut t = 0;
    while t < 8 {
        bytes[16 + 2 * t] = 64;
        bytes[48 + t] = ROWS as u8;
        t += 1;
    }
    TileConfig(bytes)
};

/// The tiles configured on this thread for as long as it lives; released when dropped, so the
/// thread carries no tile state into other work.
struct Tiles;

impl Tiles {
    /// # Safety
    /// AMX is [`available`].
    #[cfg(target_arch = "x86_64")]
    unsafe fn configure() -> Self {
        // SAFETY: the caller's; ldtilecfg reads the 64-byte configuration.
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack));
        }
        Tiles
    }

    /// One 32 x 32 block of the product, written 32 f32 a row `out_row` bytes apart from
    /// `out`: `a` and `b` are a packed block row and block column of `steps` k steps each.
    ///
    /// # Safety
    /// `a` and `b` hold `2 * steps` tiles each, `steps > 0`, and `out` is valid for 32 rows of
    /// 32 f32 `out_row` bytes apart.
    #[cfg(target_arch = "x86_64")]
    unsafe fn block(&self, a: &[u32], b: &[u32], steps: usize, out: *mut f32, out_row: usize) {
        debug_assert!(a.len() >= 2 * steps * TILE && b.len() >= 2 * steps * TILE && steps > 0);
        let half = steps * TILE;
        // SAFETY: the caller's; the loads read `steps` tiles from each of the four starts,
        // inside the slices, and the stores write the four 16 x 16 quarters of the block.
        // Tile registers are used by no other code, so clobbering them is invisible to the
        // compiler.
        unsafe {
            std::arch::asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "2:",
                "tileloadd tmm4, [{a0} + {row}*1]",
                "tileloadd tmm5, [{a1} + {row}*1]",
                "tileloadd tmm6, [{b0} + {row}*1]",
                "tileloadd tmm7, [{b1} + {row}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a0}, 1024",
                "add {a1}, 1024",
                "add {b0}, 1024",
                "add {b1}, 1024",
                "dec {steps}",
                "jnz 2b",
                "tilestored [{out} + {out_row}*1], tmm0",
                "tilestored [{out} + {out_row}*1 + 64], tmm1",
                "tilestored [{out_low} + {out_row}*1], tmm2",
                "tilestored [{out_low} + {out_row}*1 + 64], tmm3",
                a0 = inout(reg) a.as_ptr() => _,
                a1 = inout(reg) a.as_ptr().add(half) => _,
                b0 = inout(reg) b.as_ptr() => _,
                b1 = inout(reg) b.as_ptr().add(half) => _,
                steps = inout(reg) steps => _,
                row = in(reg) 4 * ROWS,
                out = in(reg) out,
                out_low = in(reg) out.byte_add(ROWS * out_row),
                out_row = in(reg) out_row,
                options(nostack),
            );
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn configure() -> Self {
        unreachable!("AMX is x86-64 only, and `available` says so")
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn block(&self, _: &[u32], _: &[u32], _: usize, _: *mut f32, _: usize) {
        unreachable!("AMX is x86-64 only, and `available` says so")
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: tiles were configured (`configure` is the only constructor); tilerelease
        // only returns them to their initial state.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("tilerelease", options(nostack, nomem));
        }
    }
}

/// A pointer into `c` that the block-column tasks share: each writes only its own columns.
#[derive(Clone, Copy)]
struct Shared(*mut f32);

// SAFETY: the columns written through it are disjoint (see `gemm`).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the bare pointer).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `c = alpha * op_a(a) * op_b(b) + beta * c` with bf16 operands, on `pool`. Lengths checked
/// by the caller, `m` and `n` non-zero; `scratch` holds the packed operands between calls.
///
/// # Panics
/// Where AMX is not [`available`] (the backend only takes this path where it is).
pub fn gemm(
    pool: &rayon::ThreadPool,
    s: GemmShape,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    scratch: &mut Vec<u32>,
) {
    assert!(available(), "bf16 GEMM needs AMX");
    let padded = Padded::of(&s);
    if padded.steps == 0 {
        // k = 0: the product is zero.
        let zero = s.alpha * 0.0;
        for v in c.iter_mut() {
            *v = if s.beta == 0.0 {
                zero
            } else {
                zero + s.beta * *v
            };
        }
        return;
    }
    let a_op = Strided::new(a, s.op_a, s.m, s.k);
    let b_op = Strided::new(b, s.op_b, s.k, s.n);
    let len = padded.block_len();
    let a_len = padded.m / BLOCK * len;
    let total = a_len + padded.n / BLOCK * len;
    // Tiles start on cache lines: a tile row split across two lines loads slower.
    scratch.resize(total + 16, 0);
    let start = scratch.as_ptr().align_offset(64);
    let (a_packed, b_packed) = scratch[start..start + total].split_at_mut(a_len);
    let c_ptr = Shared(c.as_mut_ptr());
    // The product goes straight into c where nothing scales it and the block is whole.
    let direct = s.alpha == 1.0 && s.beta == 0.0;
    pool.install(|| {
        rayon::join(
            || {
                a_packed
                    .par_chunks_mut(len)
                    .enumerate()
                    .for_each(|(i, out)| {
                        // SAFETY: `available` (asserted) implies AVX-512 F and BW.
                        unsafe { pack_a(a_op, padded.steps, i * BLOCK, out) };
                    });
            },
            || {
                b_packed
                    .par_chunks_mut(len)
                    .enumerate()
                    .for_each(|(j, out)| {
                        // SAFETY: as above.
                        unsafe { pack_b(b_op, padded.steps, j * BLOCK, out) };
                    });
            },
        );
        let (a_packed, b_packed) = (&*a_packed, &*b_packed);
        // Where packed a fits in L2, each task takes one block column of b (which then stays
        // close while all of a passes by, from L2). Where it does not, a task takes a panel of
        // block columns filling a quarter of L2, so a is read from memory once per panel rather
        // than once per block column. Measured on a Xeon with 2 MiB of L2: 1,024 cubed (2 MiB
        // of packed a) runs at 1.2-1.3 TFLOP/s one column a task, 0.75-1.0 in panels; 2,048
        // cubed (8 MiB) at 1.15 one column a task, 1.6 in panels of 512 KiB.
        let l2 = l2_bytes();
        let per_task = if a_len * 4 <= l2 {
            1
        } else {
            let blocks = padded.n / BLOCK;
            (l2 / 4 / (len * 4))
                .max(1)
                .min(blocks.div_ceil(pool.current_num_threads()))
        };
        b_packed
            .par_chunks(per_task * len)
            .enumerate()
            .for_each(|(panel, b_panel)| {
                // SAFETY: `gemm` asserted AMX.
                let tiles = unsafe { Tiles::configure() };
                let mut out = [0f32; BLOCK * BLOCK];
                for (i, a_block) in a_packed.chunks(len).enumerate() {
                    let i0 = i * BLOCK;
                    for (j, b_block) in b_panel.chunks(len).enumerate() {
                        let j0 = (panel * per_task + j) * BLOCK;
                        if direct && i0 + BLOCK <= s.m && j0 + BLOCK <= s.n {
                            // SAFETY: each packed block holds `2 * steps` tiles; the block's 32
                            // rows of 32 columns lie inside c (`m x n`, checked by the caller),
                            // in the panel's columns, which only this task writes.
                            unsafe {
                                let at = c_ptr.get().add(i0 * s.n + j0);
                                tiles.block(a_block, b_block, padded.steps, at, 4 * s.n);
                            }
                            continue;
                        }
                        // SAFETY: as above, into `out` (32 rows of 32 f32).
                        unsafe {
                            let at = out.as_mut_ptr();
                            tiles.block(a_block, b_block, padded.steps, at, 4 * BLOCK);
                        }
                        // SAFETY: c is `m x n` (checked by the caller); this task alone touches
                        // the panel's columns.
                        unsafe { finish(&s, c_ptr, i0, j0, &out) };
                    }
                }
                drop(tiles);
            });
    });
}

/// Writes `alpha * product + beta * c` for the block at `(i0, j0)`, what of it lies inside
/// `c` (`i0 < m`, `j0 < n`).
///
/// # Safety
/// `c` points to `m x n` values, of which nothing else touches the block's while this runs.
unsafe fn finish(s: &GemmShape, c: Shared, i0: usize, j0: usize, product: &[f32; BLOCK * BLOCK]) {
    let rows = (s.m - i0).min(BLOCK);
    let cols = (s.n - j0).min(BLOCK);
    for r in 0..rows {
        // SAFETY: the caller's; row `i0 + r` holds columns `j0..j0 + cols` inside c.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.get().add((i0 + r) * s.n + j0), cols) };
        let src = &product[r * BLOCK..][..cols];
        if s.beta == 0.0 {
            for (d, p) in dst.iter_mut().zip(src) {
                *d = s.alpha * p;
            }
        } else {
            for (d, p) in dst.iter_mut().zip(src) {
                *d = s.alpha * p + s.beta * *d;
            }
        }
    }
}
