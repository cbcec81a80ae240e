//! The native bin-packing strategy: the fallback when a plugin faults or is quarantined, and the
//! baseline of `gantry bench schedule`.
//!
//! It is the `binpack` plugin's own source compiled into the host: both sides decide the same
//! way, and the benchmark compares the sandbox against native code, not two algorithms.

/// The scheduler world's types under the names the shared sources expect.
mod sched {
    pub use crate::scheduling::model::{Jobs, Placement, Snapshot};
}

#[path = "../../../plugins/sdk/src/fit.rs"]
#[allow(dead_code)]
mod fit;

#[path = "../../../plugins/binpack/src/packing.rs"]
mod packing;

use crate::scheduling::model::{Jobs, Placement, Snapshot};

/// Name under which fallback decisions are reported.
pub const NAME: &str = "native-binpack";

/// One cycle of native bin packing.
pub fn schedule(snapshot: &Snapshot, queue: &Jobs) -> Vec<Placement> {
    packing::pack(snapshot, queue)
}
