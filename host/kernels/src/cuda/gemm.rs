//! GEMM through cuBLAS in the backend's [`Precision`].
//!
//! cuBLAS is column-major and our matrices are row-major. A row-major `r x c` matrix read
//! column-major is its `c x r` transpose, so row-major `C = op_a(A) op_b(B)` is computed as
//! column-major `C^T = op_b(B)^T op_a(A)^T`: hand cuBLAS `B` first and `A` second, each with its
//! own transpose flag, and `n x m` dimensions. No data moves.

use std::ffi::c_void;

use cudarc::cublas::{result, sys};
use cudarc::driver::{CudaSlice, CudaViewMut, DevicePtr, DevicePtrMut, PushKernelArg};

use super::error::OrDevice;
use super::{CudaBackend, grown, launched, linear};
use crate::backend::{GemmShape, KernelError, Precision, Result};
use crate::reference::Op;

/// bf16 operand copies start on this many elements (128 bytes), the alignment cuBLAS's
/// tensor-core kernels want.
const BF16_ALIGN: usize = 64;

fn cublas_op(op: Op) -> sys::cublasOperation_t {
    match op {
        Op::N => sys::cublasOperation_t::CUBLAS_OP_N,
        Op::T => sys::cublasOperation_t::CUBLAS_OP_T,
    }
}

/// cuBLAS's 32-bit dimension, or `Unsupported`.
fn dim(value: usize, what: &str) -> Result<i32> {
    i32::try_from(value).map_err(|_| {
        KernelError::Unsupported(format!(
            "gemm: {what} = {value} exceeds cuBLAS's 32-bit dimensions"
        ))
    })
}

/// One row-major GEMM expressed for cuBLAS (see the module docs for the operand swap).
struct GemmEx {
    handle: sys::cublasHandle_t,
    op_a: sys::cublasOperation_t,
    op_b: sys::cublasOperation_t,
    m: i32,
    n: i32,
    k: i32,
    ld_a: i32,
    ld_b: i32,
    alpha: f32,
    beta: f32,
}

impl GemmEx {
    /// `cublasGemmEx` with `a` and `b` of type `input`, f32 `c`, scalars f32.
    ///
    /// # Safety
    /// `a`, `b` and `c` must be device pointers of the handle's device holding at least the
    /// values the dimensions and leading dimensions imply, `a` and `b` of type `input`.
    unsafe fn run(
        &self,
        a: cudarc::driver::sys::CUdeviceptr,
        b: cudarc::driver::sys::CUdeviceptr,
        input: sys::cudaDataType,
        c: cudarc::driver::sys::CUdeviceptr,
        compute: sys::cublasComputeType_t,
    ) -> std::result::Result<(), cudarc::cublas::result::CublasError> {
        // SAFETY: the caller's contract; alpha and beta are f32 as the f32 compute types need.
        unsafe {
            result::gemm_ex(
                self.handle,
                self.op_b,
                self.op_a,
                self.n,
                self.m,
                self.k,
                &self.alpha as *const f32 as *const c_void,
                b as *const c_void,
                input,
                self.ld_b,
                a as *const c_void,
                input,
                self.ld_a,
                &self.beta as *const f32 as *const c_void,
                c as *mut c_void,
                sys::cudaDataType::CUDA_R_32F,
                self.n,
                compute,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
    }
}

impl GemmEx {
    /// Shape `s` (m, n and k not 0) for cuBLAS on `handle`.
    fn new(handle: sys::cublasHandle_t, s: &GemmShape) -> Result<Self> {
        let (m, n, k) = (dim(s.m, "m")?, dim(s.n, "n")?, dim(s.k, "k")?);
        // Leading dimensions of the row-major operands as stored (their row lengths).
        let ld_b = if s.op_b == Op::N { n } else { k };
        let ld_a = if s.op_a == Op::N { k } else { m };
        Ok(GemmEx {
            handle,
            op_a: cublas_op(s.op_a),
            op_b: cublas_op(s.op_b),
            m,
            n,
            k,
            ld_a,
            ld_b,
            alpha: s.alpha,
            beta: s.beta,
        })
    }
}

impl CudaBackend {
    /// [`crate::Backend::gemm`] on this device.
    pub(super) fn gemm_on_device(
        &self,
        s: GemmShape,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        c: &mut CudaSlice<f32>,
    ) -> Result<()> {
        s.check(a.len(), b.len(), c.len())?;
        self.on_device("gemm", &[("a", a), ("b", b), ("c", c)])?;
        if s.m == 0 || s.n == 0 {
            return Ok(());
        }
        if s.k == 0 {
            // An empty product: c = beta * c, and beta = 0 ignores c (NaNs included) as cuBLAS
            // and the CPU backend do. Done here because cuBLAS rejects leading dimensions of 0.
            return if s.beta == 0.0 {
                self.stream.memset_zeros(c).device("gemm: zeroing c")
            } else {
                crate::Backend::scale(self, s.beta, c)
            };
        }
        let call = GemmEx::new(*self.blas.handle(), &s)?;
        // The lock also serialises this handle's use between threads sharing the backend.
        let mut scratch = self.scratch();
        let (c_ptr, _c_done) = c.device_ptr_mut(&self.stream);
        match self.precision {
            Precision::F32 | Precision::Tf32 => self.gemm_f32(&call, a, b, c_ptr),
            Precision::Bf16 => self.gemm_bf16(&call, a, b, c_ptr, &mut scratch.bf16),
        }
    }

    /// `call` on the f32 operands as they are, computed in f32 or (in [`Precision::Tf32`])
    /// through tf32 tensor cores.
    fn gemm_f32(
        &self,
        call: &GemmEx,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        c_ptr: cudarc::driver::sys::CUdeviceptr,
    ) -> Result<()> {
        let (a_ptr, _a_done) = a.device_ptr(&self.stream);
        let (b_ptr, _b_done) = b.device_ptr(&self.stream);
        let (compute, what) = if self.precision == Precision::F32 {
            (
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                "gemm (f32, cublasGemmEx)",
            )
        } else {
            (
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
                "gemm (tf32, cublasGemmEx)",
            )
        };
        let f32_type = sys::cudaDataType::CUDA_R_32F;
        // SAFETY: the lengths were checked against m, n, k, so with these leading dimensions
        // every access stays inside a, b and c (`c_ptr`, of the caller's c), all f32 as
        // declared; the pointers are this device's and the handle runs on the backend's stream.
        unsafe { call.run(a_ptr, b_ptr, f32_type, c_ptr, compute) }.device(what)
    }

    /// `call` on bf16 copies of `a` and `b` (in the scratch buffer `bf16`, grown as needed),
    /// accumulated in f32.
    fn gemm_bf16(
        &self,
        call: &GemmEx,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        c_ptr: cudarc::driver::sys::CUdeviceptr,
        bf16: &mut Option<CudaSlice<u16>>,
    ) -> Result<()> {
        let a_region = a.len().next_multiple_of(BF16_ALIGN);
        let both = grown(&self.stream, bf16, a_region + b.len())?;
        let (mut a16, mut b16) = both.split_at_mut(a_region);
        self.to_bf16(a, &mut a16)?;
        self.to_bf16(b, &mut b16)?;
        let (a_ptr, _a_done) = a16.device_ptr(&self.stream);
        let (b_ptr, _b_done) = b16.device_ptr(&self.stream);
        // SAFETY: as in `gemm_f32`; a16 and b16 hold a's and b's values as bf16 (converted
        // above, in stream order), c is f32, accumulation is f32.
        unsafe {
            call.run(
                a_ptr,
                b_ptr,
                sys::cudaDataType::CUDA_R_16BF,
                c_ptr,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            )
        }
        .device("gemm (bf16, cublasGemmEx)")
    }

    /// Rounds `src` to bf16 into the first `src.len()` values of `dst`.
    fn to_bf16(&self, src: &CudaSlice<f32>, dst: &mut CudaViewMut<'_, u16>) -> Result<()> {
        let n = src.len();
        let mut launch = self.stream.launch_builder(&self.device.kernels.f32_to_bf16);
        launch.arg(src).arg(dst).arg(&n);
        // SAFETY: f32_to_bf16(const float*, unsigned short*, size_t); dst holds at least n
        // values (the caller sized it), src n.
        launched("gemm: converting operands to bf16", unsafe {
            launch.launch(linear(n))
        })
    }
}
