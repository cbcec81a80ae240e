//! Kernels of the training hot path (dense layers, activations, losses, back-propagation, the
//! optimizer step), outside any sandbox.
//!
//! - [`reference`]: plain loops over row-major `f32` slices, written for clarity; every faster
//!   backend is tested against them.
//!
//! Row-major throughout: a `rows x cols` matrix is `rows` runs of `cols` values.

pub mod reference;
