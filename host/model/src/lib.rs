//! The scheduler's data model and placement helpers, shared by the Gantry host and its guest SDK.
//!
//! This crate owns what a scheduling decision reads and writes, written once:
//!
//! - the model ([`Snapshot`], [`Gpus`], [`Jobs`], [`Placement`], [`Topology`], ...): GPUs and
//!   jobs as columns with row views, the layout in which they cross the sandbox boundary;
//! - [`columns`]: the runs-of-GPUs layout (`gpu-count` plus concatenated `gpus`) both sides of
//!   the boundary write and read;
//! - [`fit`]: the free-GPU index with best-fit and worst-fit pickers that strategies build on;
//! - [`binpack`]: least-fragmentation bin packing, run in the sandbox by the `binpack` plugin and
//!   natively by the host as its fallback strategy and benchmark baseline;
//! - [`reserve`]: the host's guard against starvation by backfill, applied to every answer;
//! - [`validate`]: the host's checks on a strategy's answer, which the plugins' tests apply too;
//! - [`world`]: the names of the WIT worlds plugins implement;
//! - [`testing`]: builders of snapshots and queues for strategies' unit tests.
//!
//! The WIT files (`wit/`) are the contract; the conversions between their generated types and
//! this model live in one place on each side (the host's `scheduling::wire`, the SDK's `wire`).
//! No wasmtime, wit-bindgen or tokio here: the crate builds for the host and for
//! `wasm32-wasip2` alike.

pub mod binpack;
mod check;
pub mod columns;
pub mod fit;
pub mod reserve;
pub mod testing;
mod types;
pub mod world;

pub use check::{Checker, validate};
pub use types::{
    Allocation, Gpu, Gpus, Job, Jobs, Node, Placement, Snapshot, Tenant, Topology, UnknownTopology,
};
