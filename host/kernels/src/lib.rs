//! Kernels of the training hot path (dense layers, activations, losses, back-propagation, the
//! optimizer step, the gradient all-reduce), outside any sandbox.
//!
//! - [`backend`]: the [`Backend`] trait over device buffers that training code is written against.
//! - [`cpu`]: [`CpuBackend`], blocked multi-threaded GEMM and fused element-wise loops.
//! - `cuda` (feature `cuda`): `CudaBackend`, cuBLAS GEMM, NVRTC-compiled CUDA C kernels and an
//!   NCCL all-reduce through `cudarc`; `cuda::detect` says whether this machine can run it.
//! - [`mlp`]: a multi-layer perceptron's forward and backward passes and optimizers on any backend.
//! - [`train`]: data-parallel training (replicas, all-reduce), evaluation, resumable state.
//! - [`reference`]: plain loops over row-major `f32` slices, written for clarity; every faster
//!   backend is tested against them ([`agreement`] says how).
//!
//! Row-major throughout: a `rows x cols` matrix is `rows` runs of `cols` values.

pub mod agreement;
pub mod backend;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod mlp;
pub mod reference;
pub mod rng;
pub mod synthetic;
pub mod train;

pub use backend::{Backend, GemmShape, KernelError, Precision};
pub use cpu::CpuBackend;
#[cfg(feature = "cuda")]
pub use cuda::CudaBackend;
pub use mlp::{Activation, Loss, MlpSpec, Optimizer};
pub use reference::{Adam, Op};
pub use train::{Dataset, Evaluation, TrainState, Trainer};
