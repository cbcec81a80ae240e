//! The CPU backend: cache-blocked GEMM from the `gemm` crate (AVX-512/AVX2/NEON kernels picked
//! at run time), split in bands of columns over the backend's own threads where the product is
//! wide enough, and products with a side of at most 16 on kernels of our own (`narrow`);
//! element-wise loops fused per operation, Adam's compiled for the widest vectors
//! the CPU has, and all split over the pool in fixed-size chunks, so results are bit-for-bit
//! repeatable for a given thread count.

use rayon::prelude::*;

use crate::backend::{
    Backend, GemmShape, KernelError, Precision, Result, check_adam, check_len, check_rows,
};
use crate::reference::{Adam, Op};

/// Below this many values an element-wise loop runs on the calling thread: a pool dispatch
/// costs more than the work.
const PARALLEL_MIN: usize = 1 << 15;
/// The same for loops of a flop or two per value (bias and ReLU, their gradients, `axpy`):
/// they are bound by memory, which a second thread does not widen, and the data a GEMM's bands
/// just wrote is spread over both cores' caches. On the Intel Xeon (2 vCPUs), 256 x 1024
/// values: bias and ReLU 19 us on the calling thread against 60 on 2 threads, the bias gradient
/// 14 against 38, the ReLU gradient 36 against 86; at 4096 x 1024 the ReLU gradient is the
/// only one a second thread speeds up (1.13 ms -> 0.70).
const LIGHT_PARALLEL_MIN: usize = 1 << 20;
/// Values per parallel chunk: fixed, so the split (and so every result) does not depend on
/// scheduling.
const CHUNK: usize = 1 << 13;

/// `b` operands used transposed with at least this many values are transposed into scratch
/// memory first when the `gemm` crate's own threads run the product: so run, it takes
/// `A * B^T` at about half the speed of `A * B`. Measured on the MLP step's 256x1024x1024
/// backward product on the AMD Zen 5: 2.3-2.4 ms as `A * B^T`, 1.45-1.5 ms as a 0.3 ms
/// transpose and `A * B`. On one thread per part (see `BAND_MIN`) the crate does not lose so
/// much, and the transpose costs more than it saves: on the Intel Xeon, 2 threads, 1.76 ms as
/// `A * B^T` in bands against 0.45 + 1.60 ms; on one thread 3.5 ms against about 0.8 + 3.1.
const TRANSPOSE_B_MIN: usize = 1 << 16;

/// Columns of c each thread must get at least for the GEMM to be split in bands of columns,
/// one per thread; narrower products use the `gemm` crate's own threads. Measured on the MLP
/// step's products (256 x 1024 x 1024 and the like) on the 2-core Intel Xeon: bands of 512
/// columns take 0.95x the time of the crate's threads (7.0 ms against 7.4 for the step's GEMMs),
/// and 1024 and 2048 cubed gain 2-3 %.
const BAND_MIN: usize = 256;

/// What runs on each band of a GEMM's c once computed: `(c, j0, width)`.
type Epilogue<'a> = dyn Fn(Shared, usize, usize) + Sync + 'a;

/// A pointer into `c` that the band threads share: each writes only its own columns.
#[derive(Clone, Copy)]
struct Shared(*mut f32);

// SAFETY: the bands written through it are disjoint (see `gemm_strided`).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The element `at` values in.
    ///
    /// # Safety
    /// `at` is inside the slice the pointer came from.
    unsafe fn at(self, at: usize) -> *mut f32 {
        // SAFETY: the caller's.
        unsafe { self.0.add(at) }
    }
}

/// A CPU backend with its own pool of `threads` worker threads.
pub struct CpuBackend {
    threads: usize,
    pool: rayon::ThreadPool,
    /// Scratch for transposed GEMM operands, kept between calls.
    scratch: std::sync::Mutex<Vec<f32>>,
    /// The GEMM's inputs: f32, or bf16 on AMX tiles.
    precision: Precision,
    /// Scratch for the bf16 GEMM's packed operands, kept between calls.
    packed: std::sync::Mutex<Vec<u32>>,
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBackend")
            .field("threads", &self.threads)
            .field("precision", &self.precision)
            .finish()
    }
}

impl CpuBackend {
    /// A backend with `threads` worker threads (0: one per available core), f32 throughout.
    pub fn new(threads: usize) -> Result<Self> {
        Self::with_precision(threads, Precision::F32)
    }

    /// A backend whose GEMM takes its inputs in `precision`: f32, or bf16 where the CPU has
    /// AMX ([`Self::bf16_available`]); parameters, gradients and everything else stay f32.
    pub fn with_precision(threads: usize, precision: Precision) -> Result<Self> {
        match precision {
            Precision::F32 => {}
            Precision::Bf16 if amx::available() => {}
            Precision::Bf16 => {
                return Err(KernelError::Unsupported(
                    "bf16 GEMM on the CPU needs Intel AMX (AMX-BF16 and AMX-TILE, Linux), \
                     which this machine does not offer; use precision = \"f32\""
                        .into(),
                ));
            }
            Precision::Tf32 => {
                return Err(KernelError::Unsupported(
                    "tf32 is a GPU tensor-core format; the CPU computes in f32 or bf16".into(),
                ));
            }
        }
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("gantry-cpu-{i}"))
            .build()
            .map_err(|e| KernelError::Device {
                context: format!("starting {threads} CPU worker threads"),
                message: e.to_string(),
            })?;
        Ok(Self {
            threads,
            pool,
            scratch: std::sync::Mutex::new(Vec::new()),
            precision,
            packed: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Whether this machine can run the bf16 GEMM (Intel AMX, granted by Linux).
    pub fn bf16_available() -> bool {
        amx::available()
    }

    /// The GEMM's input precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Whether a GEMM whose c has `n` columns runs on one thread per part: all of it on the one
    /// thread, or a band of columns on each (rather than on the `gemm` crate's own threads).
    fn in_single_threaded_parts(&self, n: usize) -> bool {
        self.threads == 1 || n / self.threads >= BAND_MIN
    }

    /// Whether [`Backend::gemm`] runs `s` in bands of columns on [`Self::gemm_strided`] (f32,
    /// neither narrow nor transposed into scratch first): then an epilogue can run on each band
    /// as soon as it is computed, on the thread that computed it.
    fn fuses_epilogues(&self, s: &GemmShape) -> bool {
        self.precision == Precision::F32
            && !narrow::applies(s)
            && self.in_single_threaded_parts(s.n)
            && s.m > 0
            && s.n > 0
    }

    /// The GEMM on the operands as stored, transposes expressed as strides. Lengths checked.
    /// `epilogue(c, j0, width)`, if given, runs on columns `j0..j0 + width` of c (a pointer to
    /// c's first value) right after they are computed, on the same thread.
    fn gemm_strided(
        &self,
        s: GemmShape,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        epilogue: Option<&Epilogue>,
    ) -> Result<()> {
        let a_cols = if s.op_a == Op::N { s.k } else { s.m };
        let b_cols = if s.op_b == Op::N { s.n } else { s.k };
        let (a_rs, a_cs) = strides(s.op_a, a_cols, s.m);
        let (b_rs, b_cs) = strides(s.op_b, b_cols, s.k);
        let c_ptr = Shared(c.as_mut_ptr());
        // One band of columns `j0..j0 + width` of c, on the calling thread unless `parallelism`.
        let band = |j0: usize, width: usize, parallelism: gemm::Parallelism| {
            // SAFETY: the caller checked the lengths against m, n, k, so every strided access
            // stays inside its slice, and the band's columns are inside c; bands are disjoint,
            // and `c` is borrowed mutably, so it aliases neither input. The crate's `alpha`
            // scales the destination and its `beta` the product (the reverse of BLAS), and
            // `read_dst = false` ignores c's prior contents entirely.
            unsafe {
                gemm::gemm(
                    s.m,
                    width,
                    s.k,
                    c_ptr.at(j0),
                    1,
                    s.n as isize,
                    s.beta != 0.0,
                    a.as_ptr(),
                    a_cs,
                    a_rs,
                    b.as_ptr().offset(j0 as isize * b_cs),
                    b_cs,
                    b_rs,
                    s.beta,
                    s.alpha,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
            if let Some(epilogue) = epilogue {
                epilogue(c_ptr, j0, width);
            }
        };
        if self.threads == 1 {
            band(0, s.n, gemm::Parallelism::None);
        } else if self.in_single_threaded_parts(s.n) {
            // A band of columns per thread, each one single-threaded: no barrier between the
            // crate's blocks, and each thread packs only its part of b.
            let width = s.n.div_ceil(self.threads).next_multiple_of(16);
            self.pool.install(|| {
                rayon::scope(|scope| {
                    for j0 in (0..s.n).step_by(width) {
                        let band = &band;
                        scope
                            .spawn(move |_| band(j0, width.min(s.n - j0), gemm::Parallelism::None));
                    }
                });
            });
        } else {
            self.pool
                .install(|| band(0, s.n, gemm::Parallelism::Rayon(self.threads)));
        }
        Ok(())
    }

    /// Runs `f` over matching chunks of `a` (mutable) and `b`, on the pool when large.
    fn zip_chunks(&self, a: &mut [f32], b: &[f32], f: impl Fn(&mut [f32], &[f32]) + Sync + Send) {
        if a.len() < LIGHT_PARALLEL_MIN || self.threads == 1 {
            f(a, b);
        } else {
            self.pool.install(|| {
                a.par_chunks_mut(CHUNK)
                    .zip(b.par_chunks(CHUNK))
                    .for_each(|(a, b)| f(a, b));
            });
        }
    }
}

/// Row and column strides of an operand stored row-major as `rows x cols` before `op`.
fn strides(op: Op, stored_cols: usize, used_rows: usize) -> (isize, isize) {
    match op {
        // (i, p) at i * cols + p
        Op::N => (stored_cols as isize, 1),
        // used (i, p) is stored (p, i), stored row length = used rows
        Op::T => (1, used_rows as isize),
    }
}

impl Backend for CpuBackend {
    type Buffer = Vec<f32>;

    fn describe(&self) -> String {
        // The `gemm` crate picks the same width as Adam's loops (see `wide::level`).
        let wide = wide::level();
        let gemm = match self.precision {
            Precision::Bf16 => "bf16 on AMX tiles".to_string(),
            _ if narrow::available() => {
                format!("the gemm crate's {wide} kernels, ours where a side is at most 16 wide")
            }
            _ => format!("the gemm crate's {wide} kernels"),
        };
        format!(
            "cpu ({} thread{}; GEMM: {gemm}; Adam: {wide}; transposes: {})",
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            transpose::level(),
        )
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }

    fn write(&self, dst: &mut Vec<f32>, data: &[f32]) -> Result<()> {
        check_len("write", "data", data.len(), dst.len())?;
        dst.copy_from_slice(data);
        Ok(())
    }

    fn download(&self, src: &Vec<f32>, out: &mut [f32]) -> Result<()> {
        check_len("download", "out", out.len(), src.len())?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn gemm(&self, s: GemmShape, a: &Vec<f32>, b: &Vec<f32>, c: &mut Vec<f32>) -> Result<()> {
        s.check(a.len(), b.len(), c.len())?;
        if s.m == 0 || s.n == 0 {
            return Ok(());
        }
        if self.precision == Precision::Bf16 {
            let mut packed = self
                .packed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            amx::gemm(&self.pool, s, a, b, c, &mut packed);
            return Ok(());
        }
        if narrow::applies(&s) {
            let mut scratch = self
                .scratch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            narrow::gemm(&self.pool, self.threads, s, a, b, c, &mut scratch);
            return Ok(());
        }
        if s.op_a == Op::N
            && s.op_b == Op::T
            && b.len() >= TRANSPOSE_B_MIN
            && !self.in_single_threaded_parts(s.n)
        {
            let mut scratch = self
                .scratch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            scratch.resize(b.len(), 0.0);
            // b is stored n x k; its transpose, k x n, makes this an N x N product.
            let scratch: &mut Vec<f32> = &mut scratch;
            self.pool.install(|| transpose(b, s.n, s.k, scratch));
            let shape = GemmShape { op_b: Op::N, ..s };
            return self.gemm_strided(shape, a, scratch, c, None);
        }
        self.gemm_strided(s, a, b, c, None)
    }

    fn gemm_bias_activation(
        &self,
        s: GemmShape,
        a: &Vec<f32>,
        b: &Vec<f32>,
        c: &mut Vec<f32>,
        bias: &Vec<f32>,
        relu: bool,
    ) -> Result<()> {
        if !self.fuses_epilogues(&s) {
            self.gemm(s, a, b, c)?;
            return self.bias_activation(c, bias, relu);
        }
        s.check(a.len(), b.len(), c.len())?;
        check_len("gemm_bias_activation", "bias", bias.len(), s.n)?;
        let (m, n) = (s.m, s.n);
        let epilogue = |c: Shared, j0: usize, width: usize| {
            for i in 0..m {
                // SAFETY: columns j0..j0 + width of row i are inside c, and only this band's
                // thread touches them now (see `gemm_strided`).
                let row = unsafe { std::slice::from_raw_parts_mut(c.at(i * n + j0), width) };
                wide::add_bias(row, &bias[j0..j0 + width], relu);
            }
        };
        self.gemm_strided(s, a, b, c, Some(&epilogue))
    }

    fn gemm_relu_backward(
        &self,
        s: GemmShape,
        a: &Vec<f32>,
        b: &Vec<f32>,
        c: &mut Vec<f32>,
        activated: &Vec<f32>,
        bias_grad: &mut Vec<f32>,
    ) -> Result<()> {
        if !self.fuses_epilogues(&s) {
            self.gemm(s, a, b, c)?;
            self.relu_backward(c, activated)?;
            return self.bias_grad(c, bias_grad);
        }
        s.check(a.len(), b.len(), c.len())?;
        check_len("gemm_relu_backward", "activated", activated.len(), c.len())?;
        check_len("gemm_relu_backward", "bias_grad", bias_grad.len(), s.n)?;
        let (m, n) = (s.m, s.n);
        let sums = Shared(bias_grad.as_mut_ptr());
        // The same values as `relu_backward` then `bias_grad`: each column summed over the rows
        // in order, from zero.
        let epilogue = |c: Shared, j0: usize, width: usize| {
            // SAFETY: columns j0..j0 + width of the bias gradient, this band's alone.
            let sums = unsafe { std::slice::from_raw_parts_mut(sums.at(j0), width) };
            sums.fill(0.0);
            for i in 0..m {
                // SAFETY: as in `gemm_bias_activation`.
                let row = unsafe { std::slice::from_raw_parts_mut(c.at(i * n + j0), width) };
                wide::mask_and_sum(row, &activated[i * n + j0..][..width], sums);
            }
        };
        self.gemm_strided(s, a, b, c, Some(&epilogue))
    }

    fn bias_activation(&self, x: &mut Vec<f32>, bias: &Vec<f32>, relu: bool) -> Result<()> {
        let cols = bias.len();
        check_rows("bias_activation", "x", x.len(), cols)?;
        let rows_per_chunk = (CHUNK / cols).max(1);
        let epilogue = |rows: &mut [f32]| wide::add_bias(rows, bias, relu);
        if x.len() < LIGHT_PARALLEL_MIN || self.threads == 1 {
            epilogue(x);
        } else {
            self.pool.install(|| {
                x.par_chunks_mut(rows_per_chunk * cols).for_each(epilogue);
            });
        }
        Ok(())
    }

    fn relu_backward(&self, grad: &mut Vec<f32>, activated: &Vec<f32>) -> Result<()> {
        check_len("relu_backward", "activated", activated.len(), grad.len())?;
        self.zip_chunks(grad, activated, wide::mask_inactive);
        Ok(())
    }

    fn bias_grad(&self, grad: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        let cols = out.len();
        check_rows("bias_grad", "grad", grad.len(), cols)?;
        // Each worker owns a band of columns and walks every row: rows are added in order, so
        // the sums depend neither on the thread count nor on the bands. One band per thread:
        // narrower bands read each row in pieces too small for the prefetcher (bands of 64
        // took 0.13 ms for 256 x 1024 on the Intel Xeon).
        let sum_band = |first: usize, sums: &mut [f32]| wide::sum_columns(grad, cols, first, sums);
        if grad.len() < LIGHT_PARALLEL_MIN || self.threads == 1 || cols < 2 * BIAS_BAND_MIN {
            sum_band(0, out);
        } else {
            let band = cols.div_ceil(self.threads).next_multiple_of(16);
            self.pool.install(|| {
                out.par_chunks_mut(band)
                    .enumerate()
                    .for_each(|(i, sums)| sum_band(i * band, sums));
            });
        }
        Ok(())
    }

    fn softmax_cross_entropy(
        &self,
        logits: &Vec<f32>,
        labels: &Vec<f32>,
        classes: usize,
        grad_scale: f32,
        grad: &mut Vec<f32>,
    ) -> Result<f64> {
        let rows = labels.len();
        check_len(
            "softmax_cross_entropy",
            "logits",
            logits.len(),
            rows * classes,
        )?;
        check_len("softmax_cross_entropy", "grad", grad.len(), rows * classes)?;
        for (row, &label) in labels.iter().enumerate() {
            if !(label >= 0.0 && (label as usize) < classes && label.fract() == 0.0) {
                return Err(KernelError::Label {
                    op: "softmax_cross_entropy",
                    row,
                    label,
                    classes,
                });
            }
        }
        // One row at a time: max-shifted exponentials, the row's loss, then the gradient
        // written over the exponentials. Rows are independent, losses summed in order.
        let mut losses = vec![0f64; rows];
        let per_row = |z: &[f32], g: &mut [f32], label: f32, loss: &mut f64| {
            let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0f32;
            for (g, &z) in g.iter_mut().zip(z) {
                *g = normal_or_zero((z - max).exp());
                total += *g;
            }
            let label = label as usize;
            *loss = f64::from(total.ln() - (z[label] - max));
            let inv = grad_scale / total;
            for g in g.iter_mut() {
                *g = at_least(*g * inv, NEGLIGIBLE_GRADIENT);
            }
            g[label] -= grad_scale;
        };
        if rows * classes < PARALLEL_MIN || self.threads == 1 {
            logits
                .chunks_exact(classes)
                .zip(grad.chunks_exact_mut(classes))
                .zip(labels.iter())
                .zip(losses.iter_mut())
                .for_each(|(((z, g), l), loss)| per_row(z, g, *l, loss));
        } else {
            self.pool.install(|| {
                logits
                    .par_chunks_exact(classes)
                    .zip(grad.par_chunks_exact_mut(classes))
                    .zip(labels.par_iter())
                    .zip(losses.par_iter_mut())
                    .for_each(|(((z, g), l), loss)| per_row(z, g, *l, loss));
            });
        }
        Ok(losses.iter().sum())
    }

    fn mse(
        &self,
        prediction: &Vec<f32>,
        target: &Vec<f32>,
        grad_scale: f32,
        grad: &mut Vec<f32>,
    ) -> Result<f64> {
        check_len("mse", "target", target.len(), prediction.len())?;
        check_len("mse", "grad", grad.len(), prediction.len())?;
        let mut total = 0f64;
        for ((g, p), t) in grad.iter_mut().zip(prediction).zip(target) {
            let d = p - t;
            total += f64::from(d) * f64::from(d);
            *g = at_least(2.0 * d * grad_scale, NEGLIGIBLE_GRADIENT);
        }
        Ok(total)
    }

    fn adam_step(
        &self,
        opt: &Adam,
        step: u32,
        params: &mut Vec<f32>,
        grads: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
    ) -> Result<()> {
        let n = params.len();
        check_adam(step, n, grads.len(), m.len(), v.len())?;
        // Bias corrections folded into two scalars, as fused optimizers do:
        // p -= lr * (m / c1) / (sqrt(v / c2) + eps) + lr * wd * p
        let c1 = 1.0 - f64::from(opt.beta1).powi(step as i32);
        let c2 = 1.0 - f64::from(opt.beta2).powi(step as i32);
        let step_size = (f64::from(opt.lr) / c1) as f32;
        let inv_sqrt_c2 = (1.0 / c2.sqrt()) as f32;
        let (b1, b2, eps) = (opt.beta1, opt.beta2, opt.eps);
        let decay = 1.0 - opt.lr * opt.weight_decay;
        let k = AdamScalars {
            b1,
            b2,
            eps,
            decay,
            step_size,
            inv_sqrt_c2,
            g_min: AdamScalars::least_gradient(b1, b2),
            u_min: AdamScalars::least_update(step_size),
        };
        let update = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
            wide::adam(&k, p, g, m, v);
        };
        if n < PARALLEL_MIN || self.threads == 1 {
            update(params, grads, m, v);
        } else {
            self.pool.install(|| {
                params
                    .par_chunks_mut(CHUNK)
                    .zip(grads.par_chunks(CHUNK))
                    .zip(m.par_chunks_mut(CHUNK))
                    .zip(v.par_chunks_mut(CHUNK))
                    .for_each(|(((p, g), m), v)| update(p, g, m, v));
            });
        }
        Ok(())
    }

    fn axpy(&self, alpha: f32, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        check_len("axpy", "y", y.len(), x.len())?;
        self.zip_chunks(y, x, |y, x| wide::add_scaled(alpha, x, y));
        Ok(())
    }

    fn scale(&self, alpha: f32, x: &mut Vec<f32>) -> Result<()> {
        let scale = |x: &mut [f32]| wide::scale_by(alpha, x);
        if x.len() < LIGHT_PARALLEL_MIN || self.threads == 1 {
            scale(x);
        } else {
            self.pool
                .install(|| x.par_chunks_mut(CHUNK).for_each(scale));
        }
        Ok(())
    }

    fn all_reduce_sum(replicas: &[&Self], bufs: &mut [&mut Vec<f32>]) -> Result<()> {
        check_len("all_reduce_sum", "buffers", bufs.len(), replicas.len())?;
        let Some(len) = bufs.first().map(|b| b.len()) else {
            return Ok(());
        };
        for b in bufs.iter() {
            check_len("all_reduce_sum", "buffer", b.len(), len)?;
        }
        // Reduce-scatter and all-gather in shared memory: worker w sums band w over the
        // replicas in replica order, then writes the sum back into every replica's band.
        let workers = replicas.iter().map(|r| r.threads).sum::<usize>().max(1);
        let band = len.div_ceil(workers).max(CHUNK);
        let mut bands: Vec<Vec<&mut [f32]>> = Vec::new();
        for buf in bufs.iter_mut() {
            for (w, chunk) in buf.chunks_mut(band).enumerate() {
                if bands.len() <= w {
                    bands.push(Vec::new());
                }
                bands[w].push(chunk);
            }
        }
        let reduce = |band: &mut Vec<&mut [f32]>| {
            let (first, rest) = band.split_first_mut().expect("at least one replica");
            for other in rest.iter() {
                for (s, x) in first.iter_mut().zip(other.iter()) {
                    *s += x;
                }
            }
            for other in rest.iter_mut() {
                other.copy_from_slice(first);
            }
        };
        if bands.len() == 1 {
            reduce(&mut bands[0]);
        } else {
            std::thread::scope(|scope| {
                for band in bands.iter_mut() {
                    scope.spawn(|| reduce(band));
                }
            });
        }
        Ok(())
    }
}

/// Loss gradients smaller than this count as zero. A confident network's far-off classes give
/// gradients of 1e-37 and less, and their products with weights and activations in the backward
/// pass turn subnormal, which x86 CPUs compute on in microcode (training `dense` on the Intel
/// Xeon: the two backward products below the last layer 1.4x slower in the steps where they
/// did). 2^-100 leaves 26 binary orders of magnitude of products above the smallest normal
/// f32, and drops only what f32 cannot carry anyway: a class probability that small is lost in
/// the label's own gradient, `p - 1`, below 2^-24.
const NEGLIGIBLE_GRADIENT: f32 = 1.0 / (1u128 << 100) as f32;

/// Columns of c a bias-gradient band must have at least for the sums to be split over threads.
const BIAS_BAND_MIN: usize = 64;

// The element-wise loops, `#[inline(always)]` so that `wide` compiles them at each width.

/// Adds `bias` to each row of `rows`, then ReLU if asked.
#[inline(always)]
fn add_bias(rows: &mut [f32], bias: &[f32], relu: bool) {
    for row in rows.chunks_exact_mut(bias.len()) {
        if relu {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = (*v + b).max(0.0);
            }
        } else {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

/// Zeroes `g` where the unit was inactive (`a <= 0`).
#[inline(always)]
fn mask_inactive(g: &mut [f32], a: &[f32]) {
    for (g, a) in g.iter_mut().zip(a) {
        // Branch-free so it vectorises: keep g where the unit was active.
        *g = if *a > 0.0 { *g } else { 0.0 };
    }
}

/// [`mask_inactive`] on one row of the gradient, then its values added to `sums`.
#[inline(always)]
fn mask_and_sum(g: &mut [f32], a: &[f32], sums: &mut [f32]) {
    for ((g, a), s) in g.iter_mut().zip(a).zip(sums.iter_mut()) {
        *g = if *a > 0.0 { *g } else { 0.0 };
        *s += *g;
    }
}

/// `sums[j] = sum over rows of grad[row][first + j]`, rows in order.
#[inline(always)]
fn sum_columns(grad: &[f32], cols: usize, first: usize, sums: &mut [f32]) {
    sums.fill(0.0);
    let width = sums.len();
    for row in grad.chunks_exact(cols) {
        for (s, g) in sums.iter_mut().zip(&row[first..first + width]) {
            *s += g;
        }
    }
}

/// `y += alpha * x`.
#[inline(always)]
fn add_scaled(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// `x *= alpha`.
#[inline(always)]
fn scale_by(alpha: f32, x: &mut [f32]) {
    for v in x {
        *v *= alpha;
    }
}

/// Adam's per-step scalars, bias corrections folded in.
struct AdamScalars {
    b1: f32,
    b2: f32,
    eps: f32,
    decay: f32,
    step_size: f32,
    inv_sqrt_c2: f32,
    /// Smaller gradients count as zero: `(1 - b1) g` or `(1 - b2) g^2` would be subnormal.
    g_min: f32,
    /// Smaller `m / (sqrt(v) + eps)` count as zero: `step_size` times it would be subnormal.
    u_min: f32,
}

impl AdamScalars {
    /// The least gradient that counts: below it `(1 - b1) g` or `(1 - b2) g^2` is subnormal.
    fn least_gradient(b1: f32, b2: f32) -> f32 {
        let min = f64::from(f32::MIN_POSITIVE);
        let below = |scale: f64| if scale == 0.0 { 0.0 } else { min / scale };
        let (s1, s2) = (f64::from(1.0 - b1).abs(), f64::from(1.0 - b2).abs());
        below(s1).max(below(s2).sqrt()).max(min) as f32
    }

    /// The least `m / (sqrt(v) + eps)` that counts: below it `step_size` times it is subnormal.
    fn least_update(step_size: f32) -> f32 {
        if step_size == 0.0 {
            return 0.0;
        }
        (f64::from(f32::MIN_POSITIVE) / f64::from(step_size).abs()) as f32
    }

    /// One Adam update of `p` by gradient `g`, moments `m` and `v`.
    ///
    /// No step computes on or makes a subnormal: gradients, moments and updates that would be
    /// count as zero. Where a parameter's gradient stays zero (a unit no input activates), its
    /// first moment decays by `beta1` a step, and its update `step_size * m / ...` turns
    /// subnormal some 600 steps in; x86 CPUs compute on subnormals in microcode. Training
    /// `dense` went from 11.4 to 17-23 ms a step on the Intel Xeon from step 700 on, with half a
    /// million of its 1.86 M first moments subnormal. What is dropped would move a parameter by
    /// less than the smallest normal f32.
    #[inline(always)]
    fn update(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let n = p.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            let g = at_least(g[i], self.g_min);
            let mi = normal_or_zero(self.b1 * m[i] + (1.0 - self.b1) * g);
            let vi = normal_or_zero(self.b2 * v[i] + (1.0 - self.b2) * g * g);
            m[i] = mi;
            v[i] = vi;
            let u = at_least(mi / (vi.sqrt() * self.inv_sqrt_c2 + self.eps), self.u_min);
            p[i] = p[i] * self.decay - self.step_size * u;
        }
    }
}

/// `x`, or zero where `|x| < min` (branch-free, so loops around it vectorise).
#[inline(always)]
fn at_least(x: f32, min: f32) -> f32 {
    if x.abs() < min { 0.0 } else { x }
}

/// `x`, or zero where it is subnormal (branch-free, so loops around it vectorise).
#[inline(always)]
fn normal_or_zero(x: f32) -> f32 {
    at_least(x, f32::MIN_POSITIVE)
}

/// Element-wise loops compiled again for the widest vectors the CPU has, picked at run time
/// (the crate is built for baseline x86-64, whose SSE vectors are 4 floats). Rust never fuses
/// a multiply and an add on its own, so every width computes the same bits.
mod wide {
    use super::{AdamScalars, Vectors, vectors};

    /// The width picked here; the `gemm` crate picks the same (it needs FMA beyond the
    /// baseline).
    pub(super) fn level() -> &'static str {
        match vectors() {
            v @ (Vectors::Avx512 | Vectors::Avx2Fma) => v.name(),
            _ => Vectors::Baseline.name(),
        }
    }

    /// Defines `fn $name(args)` running `$body(args)` compiled for the widest vectors here:
    /// `$body` is `#[inline(always)]`, so each width's copy of it vectorises at that width.
    macro_rules! widened {
        ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) = $body:path;) => {
            $(#[$doc])*
            pub(super) fn $name($($arg: $ty),*) {
                #[cfg(target_arch = "x86_64")]
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[cfg(target_arch = "x86_64")]
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                match vectors() {
                    // SAFETY: the CPU has AVX-512 F: its level says so.
                    #[cfg(target_arch = "x86_64")]
                    Vectors::Avx512 => unsafe { avx512($($arg),*) },
                    // SAFETY: the CPU has AVX2: its level says so.
                    #[cfg(target_arch = "x86_64")]
                    Vectors::Avx2Fma => unsafe { avx2($($arg),*) },
                    _ => $body($($arg),*),
                }
            }
        };
    }

    widened! {
        /// [`AdamScalars::update`] at the widest width here.
        fn adam(k: &AdamScalars, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) =
            AdamScalars::update;
    }
    widened! {
        /// [`super::add_bias`] at the widest width here.
        fn add_bias(rows: &mut [f32], bias: &[f32], relu: bool) = super::add_bias;
    }
    widened! {
        /// [`super::mask_inactive`] at the widest width here.
        fn mask_inactive(g: &mut [f32], a: &[f32]) = super::mask_inactive;
    }
    widened! {
        /// [`super::mask_and_sum`] at the widest width here.
        fn mask_and_sum(g: &mut [f32], a: &[f32], sums: &mut [f32]) = super::mask_and_sum;
    }
    widened! {
        /// [`super::sum_columns`] at the widest width here.
        fn sum_columns(grad: &[f32], cols: usize, first: usize, sums: &mut [f32]) =
            super::sum_columns;
    }
    widened! {
        /// [`super::add_scaled`] at the widest width here.
        fn add_scaled(alpha: f32, x: &[f32], y: &mut [f32]) = super::add_scaled;
    }
    widened! {
        /// [`super::scale_by`] at the widest width here.
        fn scale_by(alpha: f32, x: &mut [f32]) = super::scale_by;
    }
}

#[cfg(test)]
mod tests;

mod amx;
mod narrow;
mod transpose;
mod vectors;

use transpose::transpose;
pub use vectors::{Vectors, vectors};
