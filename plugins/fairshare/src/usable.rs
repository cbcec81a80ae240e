//! Counts of GPUs by free memory, answering "how many GPUs have at least `m` MiB free" in
//! O(log n).
//!
//! `FreeIndex::usable_total` walks every free GPU; asking it once per pending job would cost
//! O(jobs x GPUs) on a long queue. A Fenwick tree over the distinct memory sizes keeps the
//! capacity check of a job, and its updates after each placement, logarithmic.

use super::sched::{Gpu, Snapshot};

/// Marks a GPU outside the counted set.
const NOT_COUNTED: u32 = u32::MAX;

/// A set of GPUs counted by their `memory_free_mib`.
#[derive(Debug, Clone)]
pub struct UsableCounts {
    /// Distinct `memory_free_mib` values of the GPUs ever counted, ascending.
    levels: Vec<u32>,
    /// Fenwick tree (1-based) over `levels`: GPUs currently counted at each level.
    tree: Vec<u32>,
    /// Level of each GPU of the snapshot while it is counted, else [`NOT_COUNTED`].
    gpu_level: Vec<u32>,
    /// GPUs currently counted.
    total: u32,
}

impl UsableCounts {
    /// The free GPUs of `snapshot`: exactly those that `FreeIndex::new` indexes (healthy, not
    /// busy, on an existing node), so both agree on what can be placed.
    pub fn free(snapshot: &Snapshot) -> Self {
        let nodes = snapshot.nodes.len();
        Self::build(snapshot, |_, g| {
            g.healthy && !g.busy && (g.node as usize) < nodes
        })
    }

    /// The GPUs a job could ever get by the running allocations' expected ends: the free ones
    /// and those of allocations with a finite expected end (healthy, on an existing node).
    pub fn reachable(snapshot: &Snapshot) -> Self {
        let mut released = vec![false; snapshot.gpus.len()];
        for allocation in &snapshot.running {
            if allocation.expected_end_s.is_finite() {
                for &g in &allocation.gpus {
                    if let Some(r) = released.get_mut(g as usize) {
                        *r = true;
                    }
                }
            }
        }
        let nodes = snapshot.nodes.len();
        Self::build(snapshot, |i, g| {
            g.healthy && (g.node as usize) < nodes && (!g.busy || released[i])
        })
    }

    fn build(snapshot: &Snapshot, counted: impl Fn(usize, &Gpu) -> bool) -> Self {
        let mut levels: Vec<u32> = snapshot
            .gpus
            .iter()
            .enumerate()
            .filter(|(i, g)| counted(*i, g))
            .map(|(_, g)| g.memory_free_mib)
            .collect();
        levels.sort_unstable();
        levels.dedup();
        let mut counts = Self {
            tree: vec![0; levels.len() + 1],
            gpu_level: vec![NOT_COUNTED; snapshot.gpus.len()],
            levels,
            total: 0,
        };
        for (index, gpu) in snapshot.gpus.iter().enumerate() {
            if counted(index, &gpu)
                && let Ok(level) = counts.levels.binary_search(&gpu.memory_free_mib)
            {
                counts.gpu_level[index] = level as u32;
                counts.total += 1;
                let mut i = level + 1;
                while i < counts.tree.len() {
                    counts.tree[i] += 1;
                    i += i & i.wrapping_neg();
                }
            }
        }
        counts
    }

    /// GPUs counted.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Whether `gpu` is counted.
    pub fn contains(&self, gpu: u32) -> bool {
        self.gpu_level
            .get(gpu as usize)
            .is_some_and(|&l| l != NOT_COUNTED)
    }

    /// GPUs counted with at least `memory_mib` free.
    pub fn at_least(&self, memory_mib: u32) -> u32 {
        let below = self.levels.partition_point(|&l| l < memory_mib);
        self.total - self.prefix(below)
    }

    /// Stops counting `gpus` (they were placed); GPUs not counted are ignored.
    pub fn remove(&mut self, gpus: &[u32]) {
        for &gpu in gpus {
            let Some(slot) = self.gpu_level.get_mut(gpu as usize) else {
                continue;
            };
            if *slot == NOT_COUNTED {
                continue;
            }
            let mut i = *slot as usize + 1;
            *slot = NOT_COUNTED;
            self.total -= 1;
            // Every tree cell on the path covers this GPU's level, so none drops below zero.
            while i < self.tree.len() {
                self.tree[i] -= 1;
                i += i & i.wrapping_neg();
            }
        }
    }

    /// GPUs counted on the first `levels` levels.
    fn prefix(&self, levels: usize) -> u32 {
        let mut sum = 0;
        let mut i = levels;
        while i > 0 {
            sum += self.tree[i];
            i &= i - 1;
        }
        sum
    }
}
