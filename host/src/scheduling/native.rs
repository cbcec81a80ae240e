//! The native bin-packing strategy: the fallback when a plugin faults or is quarantined, and the
//! baseline of `gantry bench schedule`.
//!
//! It is the code the `binpack` plugin runs in the sandbox (`gantry_model::binpack`): both sides
//! decide the same way, and the benchmark compares the sandbox against native code, not two
//! algorithms.

use crate::scheduling::model::{Jobs, Placement, Snapshot, binpack};

/// Name under which fallback decisions are reported.
pub const NAME: &str = "native-binpack";

/// One cycle of native bin packing.
pub fn schedule(snapshot: &Snapshot, queue: &Jobs) -> Vec<Placement> {
    binpack::pack(snapshot, queue)
}
