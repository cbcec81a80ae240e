//! The CUDA backend (feature `cuda`): GEMM through cuBLAS, everything else in CUDA C kernels
//! (`src/cuda/*.cu`) compiled at run time by NVRTC, the gradient all-reduce through NCCL. All
//! libraries are loaded at run time, so this builds without the CUDA toolkit; [`detect`] says
//! whether this machine can run it, and never panics.
//!
//! Semantics mirror [`crate::CpuBackend`] operation for operation. The element-wise kernels are
//! compiled without multiply-add contraction and agree with it bit for bit; GEMMs, column sums
//! and losses agree to rounding (summation order, `expf`/`logf`).
//!
//! # Streams
//!
//! Compute (kernels, cuBLAS, NCCL) and [`Backend::write`] run on the context's default stream.
//! [`Backend::prefetch`], which the trainer uses to upload batch i + 1 while step i computes,
//! copies through page-locked staging buffers on a second, non-blocking stream, so the copy
//! engine works while the SMs do; cudarc's per-buffer events make a later kernel on the compute
//! stream wait for the copy into its operand, and a staging buffer's next fill wait for its
//! previous copy. Host code waits only in [`Backend::download`] and when a loss is returned.
//!
//! # Precision
//!
//! [`Precision::F32`] is `cublasGemmEx` with compute type `CUBLAS_COMPUTE_32F` (the arithmetic
//! of `cublasSgemm`); [`Precision::Tf32`] is `cublasGemmEx` with compute type
//! `CUBLAS_COMPUTE_32F_FAST_TF32`; [`Precision::Bf16`] converts both operands into bf16
//! scratch buffers (round to nearest even) and runs `cublasGemmEx` on them with f32 output and
//! accumulation. Parameters, gradients and optimizer state stay f32 in every mode.

mod device;
mod error;
mod gemm;
mod kernels;
mod nccl;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PinnedHostSlice, PushKernelArg,
    ValidAsZeroBits,
};

pub use device::{DeviceInfo, detect};
pub use kernels::{
    CompiledSource, KERNEL_SOURCES, KernelSource, compile_kernels, compile_source, nvrtc_version,
};

use self::device::Device;
use self::error::{OrDevice, device_error};
use crate::backend::{
    Backend, GemmShape, KernelError, Precision, Result, check_adam, check_len, check_rows,
};
use crate::reference::Adam;

/// Threads per block of the one-dimensional kernels (and exactly the block size `mse` and
/// `loss_total` are written for: `REDUCE_THREADS` in loss.cu).
const THREADS: u32 = 256;
/// Most blocks a grid-stride kernel is launched with: enough to fill any current GPU several
/// times over, and the length of the `mse` partial-sum buffer.
const MAX_BLOCKS: usize = 4096;
/// Rows per block of the softmax kernel (one warp each).
const SOFTMAX_ROWS_PER_BLOCK: usize = THREADS as usize / 32;

/// A CUDA device (one GPU) as a [`Backend`]: buffers are `CudaSlice<f32>` in its memory.
pub struct CudaBackend {
    /// Distinguishes backends for the NCCL communicator cache.
    id: u64,
    precision: Precision,
    device: Arc<Device>,
    stream: Arc<CudaStream>,
    /// Host-to-device copies of [`Backend::prefetch`], overlapping the compute stream.
    copy_stream: Arc<CudaStream>,
    /// Page-locked buffers prefetches copy from (a copy engine reads only page-locked memory
    /// asynchronously), reused round-robin.
    staging: Mutex<Staging>,
    blas: CudaBlas,
    scratch: Mutex<Scratch>,
    comms: Mutex<Option<nccl::Comms>>,
}

/// Page-locked slots for prefetches. A training step stages inputs then targets, so with an
/// even number of slots each slot keeps one size and is never reallocated.
struct Staging {
    slots: [Option<PinnedHostSlice<f32>>; 4],
    next: usize,
}

/// Device buffers the operations reuse between calls. Only touched with the lock held; the
/// stream orders a reuse after the kernels that read the previous contents.
struct Scratch {
    /// bf16 copies of a GEMM's two operands.
    bf16: Option<CudaSlice<u16>>,
    /// Per-row cross-entropy losses.
    row_loss: Option<CudaSlice<f64>>,
    /// Per-block squared-error sums (`MAX_BLOCKS`).
    partials: CudaSlice<f64>,
    /// The first invalid label's row, encoded as `u32::MAX - row` (0: none).
    bad_row: CudaSlice<u32>,
    /// A loss's sum and the `bad_row` value, read back in one copy.
    result: CudaSlice<f64>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.device.info)
            .field("precision", &self.precision)
            .finish()
    }
}

impl CudaBackend {
    /// A backend on device `ordinal` whose GEMMs use `precision`. The first backend on a device
    /// in a process compiles the kernels (NVRTC, about a tenth of a second) and loads them;
    /// later ones reuse them. Fails with [`KernelError::Device`] where there is no usable
    /// device or library (see [`detect`]), and with [`KernelError::Unsupported`] for tf32 or
    /// bf16 on a GPU older than compute capability 8.0.
    pub fn new(ordinal: usize, precision: Precision) -> Result<Self> {
        let device = device::open(ordinal)?;
        let cc = device.info.compute_capability;
        if precision != Precision::F32 && cc.0 < 8 {
            return Err(KernelError::Unsupported(format!(
                "{precision} GEMMs need compute capability 8.0 or newer; {} is {}.{}",
                device.info.name, cc.0, cc.1
            )));
        }
        // SAFETY: only tries to open the library; cudarc panics on first use without it.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(device_error(
                "loading cuBLAS",
                "libcublas.so.13 could not be loaded: put CUDA 13's cuBLAS on LD_LIBRARY_PATH",
            ));
        }
        let stream = device.ctx.default_stream();
        // A non-blocking stream: it does not wait for the default stream's work, so its copies
        // overlap kernels. cudarc's per-buffer events order each buffer's uses across the two.
        let copy_stream = device.ctx.new_stream().device("creating the copy stream")?;
        let blas = CudaBlas::new(stream.clone()).device("creating a cuBLAS handle")?;
        let alloc = "allocating the CUDA backend's scratch buffers";
        let scratch = Scratch {
            bf16: None,
            row_loss: None,
            partials: stream.alloc_zeros(MAX_BLOCKS).device(alloc)?,
            bad_row: stream.alloc_zeros(1).device(alloc)?,
            result: stream.alloc_zeros(2).device(alloc)?,
        };
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            precision,
            device,
            stream,
            copy_stream,
            staging: Mutex::new(Staging {
                slots: Default::default(),
                next: 0,
            }),
            blas,
            scratch: Mutex::new(scratch),
            comms: Mutex::new(None),
        })
    }

    /// The device this backend runs on.
    pub fn info(&self) -> &DeviceInfo {
        &self.device.info
    }

    /// The GEMM precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Waits until every queued operation has finished (for timing), reporting any error a
    /// deferred operation (a buffer's release, say) recorded.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .or_device(|| format!("waiting for cuda:{}", self.info().ordinal))?;
        self.device
            .ctx
            .check_err()
            .or_device(|| format!("a deferred operation on cuda:{}", self.info().ordinal))
    }

    /// `Err` unless every buffer lives on this backend's device: a kernel handed another
    /// device's pointer would fault and take the whole context down with it.
    fn on_device(&self, op: &'static str, buffers: &[(&str, &CudaSlice<f32>)]) -> Result<()> {
        let ordinal = self.info().ordinal;
        match buffers.iter().find(|(_, b)| b.ordinal() != ordinal) {
            None => Ok(()),
            Some((what, b)) => Err(KernelError::Unsupported(format!(
                "{op}: {what} lives on cuda:{}, this backend is cuda:{ordinal}",
                b.ordinal()
            ))),
        }
    }

    fn scratch(&self) -> std::sync::MutexGuard<'_, Scratch> {
        // The scratch buffers hold no invariant a panic could break.
        self.scratch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sums `values[..n]` on the device (`loss_total`) and reads back that sum with the
    /// invalid-label flag, in one copy, waiting for the stream.
    fn finish_loss(
        &self,
        op: &'static str,
        values: &CudaSlice<f64>,
        n: usize,
        bad_row: &CudaSlice<u32>,
        result: &mut CudaSlice<f64>,
    ) -> Result<(f64, u32)> {
        let k = &self.device.kernels;
        let mut launch = self.stream.launch_builder(&k.loss_total);
        launch.arg(values).arg(&n).arg(bad_row).arg(&mut *result);
        // SAFETY: loss_total(const double*, size_t, const unsigned*, double*): `values` holds at
        // least n doubles, `result` two; one block of REDUCE_THREADS (= THREADS) threads.
        unsafe { launch.launch(single_block()) }.or_device(|| format!("{op}: summing the loss"))?;
        let mut host = [0f64; 2];
        self.stream
            .memcpy_dtoh(result, &mut host)
            .or_device(|| format!("{op}: reading the loss"))?;
        self.synchronize()?;
        Ok((host[0], host[1] as u32))
    }
}

/// Blocks for a grid-stride kernel over `n` values.
fn blocks(n: usize) -> u32 {
    n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32
}

/// A one-dimensional launch over `n` values.
fn linear(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks(n), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn single_block() -> LaunchConfig {
    LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `slot`'s buffer if it holds at least `len` values, else a new zeroed one (rounded up to a
/// power of two, so varying batch sizes settle quickly). The old one is freed in stream order.
fn grown<'a, T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    slot: &'a mut Option<CudaSlice<T>>,
    len: usize,
) -> Result<&'a mut CudaSlice<T>> {
    let buf = match slot.take() {
        Some(buf) if buf.len() >= len => buf,
        old => {
            drop(old);
            let len = len.max(1).next_power_of_two();
            stream
                .alloc_zeros(len)
                .or_device(|| format!("allocating {len} scratch values"))?
        }
    };
    Ok(slot.insert(buf))
}

/// Launch errors of the element-wise kernels, named after the operation.
fn launched<T>(
    op: &'static str,
    r: std::result::Result<T, cudarc::driver::DriverError>,
) -> Result<()> {
    r.map(|_| ())
        .or_device(|| format!("{op}: launching the kernel"))
}

impl Backend for CudaBackend {
    type Buffer = CudaSlice<f32>;

    fn describe(&self) -> String {
        format!("{}, gemm {}", self.info(), self.precision)
    }

    fn alloc(&self, len: usize) -> Result<CudaSlice<f32>> {
        let context = || format!("allocating {len} floats on cuda:{}", self.info().ordinal);
        if len > 0 {
            return self.stream.alloc_zeros(len).or_device(context);
        }
        // Some devices refuse zero-byte allocations (CUDA_ERROR_INVALID_VALUE, cudarc issue
        // #194): back an empty buffer with one value instead.
        let ptr = self.stream.alloc_zeros::<f32>(1).or_device(context)?.leak();
        // SAFETY: `ptr` is a live allocation of one f32 on this stream's device, released by
        // `leak` and owned again by the returned slice, which frees it on drop; a length of 0
        // means it is never read.
        Ok(unsafe { self.stream.upgrade_device_ptr(ptr, 0) })
    }

    fn upload(&self, data: &[f32]) -> Result<CudaSlice<f32>> {
        let mut buf = self.alloc(data.len())?;
        self.write(&mut buf, data)?;
        Ok(buf)
    }

    fn write(&self, dst: &mut CudaSlice<f32>, data: &[f32]) -> Result<()> {
        check_len("write", "data", data.len(), dst.len())?;
        self.on_device("write", &[("dst", dst)])?;
        if data.is_empty() {
            return Ok(());
        }
        self.stream.memcpy_htod(data, dst).or_device(|| {
            format!(
                "copying {} floats to cuda:{}",
                data.len(),
                self.info().ordinal
            )
        })
    }

    fn prefetch(&self, dst: &mut CudaSlice<f32>, data: &[f32]) -> Result<()> {
        check_len("prefetch", "data", data.len(), dst.len())?;
        self.on_device("prefetch", &[("dst", dst)])?;
        if data.is_empty() {
            return Ok(());
        }
        let context = || {
            format!(
                "prefetching {} floats to cuda:{}",
                data.len(),
                self.info().ordinal
            )
        };
        let mut staging = self.staging.lock().unwrap_or_else(PoisonError::into_inner);
        let i = staging.next;
        staging.next = (i + 1) % staging.slots.len();
        let slot = &mut staging.slots[i];
        if slot.as_ref().is_none_or(|p| p.len() != data.len()) {
            // SAFETY: the allocation starts uninitialised; it is filled completely below before
            // any copy reads it.
            *slot = Some(
                unsafe { self.device.ctx.alloc_pinned::<f32>(data.len()) }.or_device(context)?,
            );
        }
        let pinned = slot.as_mut().expect("filled just above");
        // Waits until this slot's previous copy has read it, then fills it.
        pinned
            .as_mut_slice()
            .or_device(context)?
            .copy_from_slice(data);
        self.copy_stream.memcpy_htod(pinned, dst).or_device(context)
    }

    fn download(&self, src: &CudaSlice<f32>, out: &mut [f32]) -> Result<()> {
        check_len("download", "out", out.len(), src.len())?;
        self.on_device("download", &[("src", src)])?;
        if out.is_empty() {
            return Ok(());
        }
        self.stream.memcpy_dtoh(src, out).or_device(|| {
            format!(
                "copying {} floats from cuda:{}",
                out.len(),
                self.info().ordinal
            )
        })?;
        // A copy into pageable memory returns when done; the explicit wait makes the promise
        // independent of that and surfaces errors of earlier asynchronous work.
        self.synchronize()
    }

    fn len(&self, buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }

    fn gemm(
        &self,
        shape: GemmShape,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        c: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.gemm_on_device(shape, a, b, c)
    }

    fn bias_activation(
        &self,
        x: &mut CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        relu: bool,
    ) -> Result<()> {
        let cols = bias.len();
        let rows = check_rows("bias_activation", "x", x.len(), cols)?;
        self.on_device("bias_activation", &[("x", x), ("bias", bias)])?;
        if rows == 0 {
            return Ok(());
        }
        // Threads along a row (a warp's worth at least), the rest of the block's 256 across
        // rows, so narrow layers do not leave most threads idle.
        let tx = cols.next_multiple_of(32).min(THREADS as usize) as u32;
        let ty = THREADS / tx;
        let cfg = LaunchConfig {
            grid_dim: (
                cols.div_ceil(tx as usize).min(1024) as u32,
                rows.div_ceil(ty as usize).min(65_535) as u32,
                1,
            ),
            block_dim: (tx, ty, 1),
            shared_mem_bytes: 0,
        };
        let relu = i32::from(relu);
        let mut launch = self
            .stream
            .launch_builder(&self.device.kernels.bias_activation);
        launch
            .arg(&mut *x)
            .arg(bias)
            .arg(&rows)
            .arg(&cols)
            .arg(&relu);
        // SAFETY: bias_activation(float*, const float*, size_t, size_t, int); x holds rows * cols
        // values and bias cols (checked above).
        launched("bias_activation", unsafe { launch.launch(cfg) })
    }

    fn relu_backward(&self, grad: &mut CudaSlice<f32>, activated: &CudaSlice<f32>) -> Result<()> {
        check_len("relu_backward", "activated", activated.len(), grad.len())?;
        self.on_device("relu_backward", &[("grad", grad), ("activated", activated)])?;
        let n = grad.len();
        if n == 0 {
            return Ok(());
        }
        let mut launch = self
            .stream
            .launch_builder(&self.device.kernels.relu_backward);
        launch.arg(&mut *grad).arg(activated).arg(&n);
        // SAFETY: relu_backward(float*, const float*, size_t); both hold n values.
        launched("relu_backward", unsafe { launch.launch(linear(n)) })
    }

    fn bias_grad(&self, grad: &CudaSlice<f32>, out: &mut CudaSlice<f32>) -> Result<()> {
        let cols = out.len();
        let rows = check_rows("bias_grad", "grad", grad.len(), cols)?;
        self.on_device("bias_grad", &[("grad", grad), ("out", out)])?;
        let tiles = u32::try_from(cols.div_ceil(32)).map_err(|_| {
            KernelError::Unsupported(format!("bias_grad: {cols} columns is too many"))
        })?;
        let cfg = LaunchConfig {
            grid_dim: (tiles, 1, 1),
            block_dim: (32, 32, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.device.kernels.bias_grad);
        launch.arg(grad).arg(&rows).arg(&cols).arg(&mut *out);
        // SAFETY: bias_grad(const float*, size_t, size_t, float*) with 32 x 32 blocks, one per
        // 32 columns; grad holds rows * cols values and out cols.
        launched("bias_grad", unsafe { launch.launch(cfg) })
    }

    fn softmax_cross_entropy(
        &self,
        logits: &CudaSlice<f32>,
        labels: &CudaSlice<f32>,
        classes: usize,
        grad_scale: f32,
        grad: &mut CudaSlice<f32>,
    ) -> Result<f64> {
        const OP: &str = "softmax_cross_entropy";
        let rows = labels.len();
        check_len(OP, "logits", logits.len(), rows * classes)?;
        check_len(OP, "grad", grad.len(), rows * classes)?;
        self.on_device(
            OP,
            &[("logits", logits), ("labels", labels), ("grad", grad)],
        )?;
        if rows == 0 {
            return Ok(0.0);
        }
        if rows >= u32::MAX as usize {
            return Err(KernelError::Unsupported(format!(
                "{OP}: {rows} rows in one call is too many"
            )));
        }
        let mut scratch = self.scratch();
        let scratch = &mut *scratch;
        self.stream
            .memset_zeros(&mut scratch.bad_row)
            .device("softmax_cross_entropy: clearing the label flag")?;
        let row_loss = grown(&self.stream, &mut scratch.row_loss, rows)?;
        let cfg = LaunchConfig {
            grid_dim: (
                rows.div_ceil(SOFTMAX_ROWS_PER_BLOCK).min(MAX_BLOCKS) as u32,
                1,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self
            .stream
            .launch_builder(&self.device.kernels.softmax_cross_entropy);
        launch
            .arg(logits)
            .arg(labels)
            .arg(&rows)
            .arg(&classes)
            .arg(&grad_scale)
            .arg(&mut *grad)
            .arg(&mut *row_loss)
            .arg(&mut scratch.bad_row);
        // SAFETY: softmax_cross_entropy(const float*, const float*, size_t, size_t, float,
        // float*, double*, unsigned*); logits and grad hold rows * classes values, labels and
        // row_loss rows, bad_row one; blocks are whole warps.
        launched(OP, unsafe { launch.launch(cfg) })?;
        let (sum, bad) =
            self.finish_loss(OP, row_loss, rows, &scratch.bad_row, &mut scratch.result)?;
        if bad != 0 {
            // Only now, on the error path, is the offending label worth a copy.
            let row = (u32::MAX - bad) as usize;
            let mut label = [0f32];
            self.stream
                .memcpy_dtoh(&labels.slice(row..row + 1), &mut label)
                .device("softmax_cross_entropy: reading an invalid label")?;
            self.synchronize()?;
            return Err(KernelError::Label {
                op: OP,
                row,
                label: label[0],
                classes,
            });
        }
        Ok(sum)
    }

    fn mse(
        &self,
        prediction: &CudaSlice<f32>,
        target: &CudaSlice<f32>,
        grad_scale: f32,
        grad: &mut CudaSlice<f32>,
    ) -> Result<f64> {
        check_len("mse", "target", target.len(), prediction.len())?;
        check_len("mse", "grad", grad.len(), prediction.len())?;
        self.on_device(
            "mse",
            &[
                ("prediction", prediction),
                ("target", target),
                ("grad", grad),
            ],
        )?;
        let n = prediction.len();
        if n == 0 {
            return Ok(0.0);
        }
        let mut scratch = self.scratch();
        let scratch = &mut *scratch;
        let cfg = linear(n);
        let mut launch = self.stream.launch_builder(&self.device.kernels.mse);
        launch
            .arg(prediction)
            .arg(target)
            .arg(&grad_scale)
            .arg(&mut *grad)
            .arg(&n)
            .arg(&mut scratch.partials);
        // SAFETY: mse(const float*, const float*, float, float*, size_t, double*) with THREADS
        // (= REDUCE_THREADS) threads; the three buffers hold n values, partials MAX_BLOCKS
        // >= the grid.
        launched("mse", unsafe { launch.launch(cfg) })?;
        let blocks = cfg.grid_dim.0 as usize;
        // The invalid-label flag comes back too; it means nothing here.
        let (sum, _) = self.finish_loss(
            "mse",
            &scratch.partials,
            blocks,
            &scratch.bad_row,
            &mut scratch.result,
        )?;
        Ok(sum)
    }

    fn adam_step(
        &self,
        opt: &Adam,
        step: u32,
        params: &mut CudaSlice<f32>,
        grads: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = params.len();
        check_adam(step, n, grads.len(), m.len(), v.len())?;
        self.on_device(
            "adam_step",
            &[("params", params), ("grads", grads), ("m", m), ("v", v)],
        )?;
        if n == 0 {
            return Ok(());
        }
        // The scalars exactly as the CPU backend folds them.
        let c1 = 1.0 - f64::from(opt.beta1).powi(step as i32);
        let c2 = 1.0 - f64::from(opt.beta2).powi(step as i32);
        let step_size = (f64::from(opt.lr) / c1) as f32;
        let inv_sqrt_c2 = (1.0 / c2.sqrt()) as f32;
        let decay = 1.0 - opt.lr * opt.weight_decay;
        let mut launch = self.stream.launch_builder(&self.device.kernels.adam_step);
        launch
            .arg(&mut *params)
            .arg(grads)
            .arg(&mut *m)
            .arg(&mut *v)
            .arg(&n)
            .arg(&opt.beta1)
            .arg(&opt.beta2)
            .arg(&opt.eps)
            .arg(&step_size)
            .arg(&inv_sqrt_c2)
            .arg(&decay);
        // SAFETY: adam_step(float*, const float*, float*, float*, size_t, float x 6); all four
        // buffers hold n values.
        launched("adam_step", unsafe { launch.launch(linear(n)) })
    }

    fn axpy(&self, alpha: f32, x: &CudaSlice<f32>, y: &mut CudaSlice<f32>) -> Result<()> {
        check_len("axpy", "y", y.len(), x.len())?;
        self.on_device("axpy", &[("x", x), ("y", y)])?;
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let mut launch = self.stream.launch_builder(&self.device.kernels.axpy);
        launch.arg(&alpha).arg(x).arg(&mut *y).arg(&n);
        // SAFETY: axpy(float, const float*, float*, size_t); both hold n values.
        launched("axpy", unsafe { launch.launch(linear(n)) })
    }

    fn scale(&self, alpha: f32, x: &mut CudaSlice<f32>) -> Result<()> {
        self.on_device("scale", &[("x", x)])?;
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let mut launch = self.stream.launch_builder(&self.device.kernels.scale);
        launch.arg(&alpha).arg(&mut *x).arg(&n);
        // SAFETY: scale(float, float*, size_t); x holds n values.
        launched("scale", unsafe { launch.launch(linear(n)) })
    }

    fn all_reduce_sum(replicas: &[&Self], bufs: &mut [&mut CudaSlice<f32>]) -> Result<()> {
        nccl::all_reduce_sum(replicas, bufs)
    }
}
