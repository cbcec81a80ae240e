//! The interface every backend implements: buffers that live on the backend's device, and the
//! operations a dense network's training step needs on them.

use crate::reference::{Adam, Op};

/// Errors from a backend. Shape errors are a caller's bug; device errors come from the driver.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A buffer's length does not match the dimensions given.
    #[error("{op}: {what} has {got} values, expected {want}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// Which operand.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The length the dimensions imply.
        want: usize,
    },
    /// A class label outside `0..classes`.
    #[error("{op}: label {label} of row {row} is not below {classes}")]
    Label {
        /// The operation.
        op: &'static str,
        /// The row.
        row: usize,
        /// The label, as stored.
        label: f32,
        /// The number of classes.
        classes: usize,
    },
    /// The backend cannot do this (a precision it lacks, say).
    #[error("{0}")]
    Unsupported(String),
    /// A value outside the domain where training is defined: an optimizer setting (see
    /// [`crate::Optimizer::invalid_setting`]), or a saved state holding NaN or infinity.
    #[error("{0}")]
    Invalid(String),
    /// The device, its driver or a library on it failed.
    #[error("{context}: {message}")]
    Device {
        /// What was being done.
        context: String,
        /// The driver's or library's message.
        message: String,
    },
}

/// Result of a backend operation.
pub type Result<T> = std::result::Result<T, KernelError>;

/// The arithmetic a backend's GEMM uses. Parameters, gradients and optimizer state stay `f32`
/// whatever the choice ("master weights"); only the GEMM's inputs are rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// IEEE single precision throughout.
    #[default]
    F32,
    /// Tensor-core TF32 inputs (10-bit mantissa), f32 accumulation. CUDA only.
    Tf32,
    /// bfloat16 inputs, f32 accumulation and output: CUDA, or a CPU with Intel AMX.
    Bf16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// Dimensions and scalars of one GEMM: `c = alpha * op_a(a) * op_b(b) + beta * c`, with
/// `op_a(a)` `m x k`, `op_b(b)` `k x n`, all row-major.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmShape {
    /// How `a` is used.
    pub op_a: Op,
    /// How `b` is used.
    pub op_b: Op,
    /// Rows of `c`.
    pub m: usize,
    /// Columns of `c`.
    pub n: usize,
    /// The shared dimension.
    pub k: usize,
    /// Scales the product.
    pub alpha: f32,
    /// Scales the prior `c` (0 ignores it, NaNs included).
    pub beta: f32,
}

impl GemmShape {
    /// `c = op_a(a) * op_b(b)`, overwriting `c`.
    pub fn new(op_a: Op, op_b: Op, m: usize, n: usize, k: usize) -> Self {
        Self {
            op_a,
            op_b,
            m,
            n,
            k,
            alpha: 1.0,
            beta: 0.0,
        }
    }

    /// Checks the operands' lengths.
    pub fn check(&self, a: usize, b: usize, c: usize) -> Result<()> {
        check_len("gemm", "a", a, self.m * self.k)?;
        check_len("gemm", "b", b, self.k * self.n)?;
        check_len("gemm", "c", c, self.m * self.n)
    }

    /// Floating-point operations in one call (a multiply-add counts two).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// `Err(Shape)` unless `got == want`.
pub fn check_len(op: &'static str, what: &'static str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(KernelError::Shape {
            op,
            what,
            got,
            want,
        })
    }
}

/// The rows of a `rows x cols` matrix of `len` values: `Err(Shape)` unless `cols` divides it.
pub fn check_rows(op: &'static str, what: &'static str, len: usize, cols: usize) -> Result<usize> {
    if cols == 0 || !len.is_multiple_of(cols) {
        return Err(KernelError::Shape {
            op,
            what,
            got: len,
            want: len.div_ceil(cols.max(1)) * cols,
        });
    }
    Ok(len / cols)
}

/// Checks an Adam step's operands: every tensor as long as the parameters, steps from 1.
pub fn check_adam(step: u32, params: usize, grads: usize, m: usize, v: usize) -> Result<()> {
    check_len("adam_step", "grads", grads, params)?;
    check_len("adam_step", "m", m, params)?;
    check_len("adam_step", "v", v, params)?;
    if step == 0 {
        return Err(KernelError::Unsupported(
            "adam_step: steps count from 1".into(),
        ));
    }
    Ok(())
}

/// A compute device and the training step's operations on buffers that live on it.
///
/// Matrices are row-major `f32`. Operations may run asynchronously (a CUDA stream): results are
/// guaranteed visible only through [`Backend::download`] or a returned loss, which wait.
pub trait Backend: Send + Sync + Sized {
    /// A buffer of `f32` on this backend's device.
    type Buffer: Send + Sync;

    /// One line naming the device and its settings, for logs and summaries.
    fn describe(&self) -> String;

    /// A zeroed buffer of `len` values.
    fn alloc(&self, len: usize) -> Result<Self::Buffer>;

    /// A buffer holding `data`.
    fn upload(&self, data: &[f32]) -> Result<Self::Buffer>;

    /// Overwrites `dst` with `data` (same length), reusing its memory.
    fn write(&self, dst: &mut Self::Buffer, data: &[f32]) -> Result<()>;

    /// Like [`Backend::write`], but the copy may overlap with work already queued (a GPU backend
    /// runs it on a copy stream from page-locked memory): operations issued after this call see
    /// `data` in `dst`. The trainer uses it to upload the next batch during the current step.
    fn prefetch(&self, dst: &mut Self::Buffer, data: &[f32]) -> Result<()> {
        self.write(dst, data)
    }

    /// Copies `src` into `out` (same length), waiting for pending work on it.
    fn download(&self, src: &Self::Buffer, out: &mut [f32]) -> Result<()>;

    /// The number of values in `buf`.
    fn len(&self, buf: &Self::Buffer) -> usize;

    /// `c = alpha * op_a(a) * op_b(b) + beta * c`.
    fn gemm(
        &self,
        shape: GemmShape,
        a: &Self::Buffer,
        b: &Self::Buffer,
        c: &mut Self::Buffer,
    ) -> Result<()>;

    /// `x[i][j] += bias[j]`, then `max(0, .)` when `relu`: a dense layer's epilogue, fused.
    fn bias_activation(&self, x: &mut Self::Buffer, bias: &Self::Buffer, relu: bool) -> Result<()>;

    /// `grad[i] = 0` where the ReLU's output `activated[i]` is 0.
    fn relu_backward(&self, grad: &mut Self::Buffer, activated: &Self::Buffer) -> Result<()>;

    /// A dense layer's forward pass: [`Backend::gemm`] into `c`, then
    /// [`Backend::bias_activation`] on it. A backend may apply the epilogue to each part of c
    /// as it is computed, while that part is still in cache; the result is the same.
    fn gemm_bias_activation(
        &self,
        shape: GemmShape,
        a: &Self::Buffer,
        b: &Self::Buffer,
        c: &mut Self::Buffer,
        bias: &Self::Buffer,
        relu: bool,
    ) -> Result<()> {
        self.gemm(shape, a, b, c)?;
        self.bias_activation(c, bias, relu)
    }

    /// The delta below a ReLU layer, and that layer's bias gradient: [`Backend::gemm`] into
    /// `c`, [`Backend::relu_backward`] on it against `activated`, then [`Backend::bias_grad`]
    /// of it into `bias_grad`. Fused like [`Backend::gemm_bias_activation`], same result.
    fn gemm_relu_backward(
        &self,
        shape: GemmShape,
        a: &Self::Buffer,
        b: &Self::Buffer,
        c: &mut Self::Buffer,
        activated: &Self::Buffer,
        bias_grad: &mut Self::Buffer,
    ) -> Result<()> {
        self.gemm(shape, a, b, c)?;
        self.relu_backward(c, activated)?;
        self.bias_grad(c, bias_grad)
    }

    /// `out[j] = sum_i grad[i][j]`: the bias gradient (column sums), overwriting `out`.
    fn bias_grad(&self, grad: &Self::Buffer, out: &mut Self::Buffer) -> Result<()>;

    /// Softmax cross-entropy of `rows x classes` logits against class ids stored as `f32` in
    /// `labels`: writes `(softmax - onehot) * grad_scale` to `grad` and returns the loss summed
    /// over rows. `grad_scale` is `1 / batch` for a mean over the (global) batch.
    fn softmax_cross_entropy(
        &self,
        logits: &Self::Buffer,
        labels: &Self::Buffer,
        classes: usize,
        grad_scale: f32,
        grad: &mut Self::Buffer,
    ) -> Result<f64>;

    /// Squared error of `prediction` against `target`: writes `2 (prediction - target) *
    /// grad_scale` to `grad` and returns the sum of squared errors.
    fn mse(
        &self,
        prediction: &Self::Buffer,
        target: &Self::Buffer,
        grad_scale: f32,
        grad: &mut Self::Buffer,
    ) -> Result<f64>;

    /// One fused Adam(W) step at `step` (from 1) on `params` with moments `m` and `v`.
    fn adam_step(
        &self,
        opt: &Adam,
        step: u32,
        params: &mut Self::Buffer,
        grads: &Self::Buffer,
        m: &mut Self::Buffer,
        v: &mut Self::Buffer,
    ) -> Result<()>;

    /// `y += alpha * x`.
    fn axpy(&self, alpha: f32, x: &Self::Buffer, y: &mut Self::Buffer) -> Result<()>;

    /// `x *= alpha`.
    fn scale(&self, alpha: f32, x: &mut Self::Buffer) -> Result<()>;

    /// Sums `bufs[r]` over the replicas `r` and leaves the sum in every one of them: the
    /// gradient all-reduce of data-parallel training. `replicas[r]` owns `bufs[r]`.
    fn all_reduce_sum(replicas: &[&Self], bufs: &mut [&mut Self::Buffer]) -> Result<()>;
}
