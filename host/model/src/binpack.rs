//! Bin packing with the least fragmentation.
//!
//! Jobs are taken by priority, then submission time. A job that fits on one node goes to the
//! node with the fewest free GPUs that can hold it, so large holes stay open for large jobs; a
//! job larger than any node takes the emptiest nodes whole and best-fits the remainder. Jobs
//! that do not fit are skipped (no reservation): smaller jobs behind them still run.
//!
//! The `binpack` plugin runs this in the sandbox; the host runs it natively as its fallback
//! strategy and benchmark baseline, so both decide the same way.

use crate::fit::{FreeIndex, priority_order};
use crate::{Jobs, Placement, Snapshot};

/// One scheduling cycle of the bin-packing strategy.
pub fn pack(snapshot: &Snapshot, queue: &Jobs) -> Vec<Placement> {
    let mut index = FreeIndex::new(snapshot);
    let mut placements = Vec::new();
    for position in priority_order(queue) {
        if index.total_free() == 0 {
            break;
        }
        let job = queue.row(position as usize);
        let allowed = job.gpus.min(index.quota_left(job.tenant));
        if allowed == 0 || (job.gang && allowed < job.gpus) {
            continue;
        }
        let chosen = if job.gang {
            place_whole(&index, job.gpus, job.memory_per_gpu_mib)
        } else {
            place_part(&index, allowed, job.memory_per_gpu_mib)
        };
        if let Some(gpus) = chosen.filter(|g| !g.is_empty()) {
            index.take(job.tenant, &gpus);
            placements.push(Placement {
                job: position,
                gpus,
            });
        }
    }
    placements
}

/// All `count` GPUs or nothing.
fn place_whole(index: &FreeIndex, count: u32, memory_mib: u32) -> Option<Vec<u32>> {
    if index.total_free() < count {
        return None;
    }
    match index.best_fit_node(count, memory_mib) {
        Some(node) => Some(index.choose_on_node(node, count, memory_mib)),
        None => index.choose_across_nodes(count, memory_mib, None),
    }
}

/// Up to `count` GPUs: the whole request where it fits, else what is usable now.
fn place_part(index: &FreeIndex, count: u32, memory_mib: u32) -> Option<Vec<u32>> {
    if let Some(gpus) = place_whole(index, count, memory_mib) {
        return Some(gpus);
    }
    let usable = index.usable_total(memory_mib).min(count);
    if usable == 0 {
        return None;
    }
    index.choose_across_nodes(usable, memory_mib, None)
}

#[cfg(test)]
mod tests;
