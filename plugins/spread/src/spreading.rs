//! Worst-fit spreading.
//!
//! Jobs are taken by priority, then submission time. Where bin packing fills the fullest node
//! that fits, spreading does the opposite, to even out heat, power draw and the blast radius of
//! a node or rack failure:
//!
//! - A job whose GPUs fit on one node goes to the node with the most usable free GPUs; ties go
//!   to the node whose rack has the most free GPUs, then to the lowest node index, so every run
//!   decides the same way.
//! - A gang job larger than any node takes whole nodes, emptiest first, and best-fits the rest
//!   ([`FreeIndex::choose_across_nodes`]).
//! - A non-gang job larger than any node gets one GPU per node, round robin over the nodes from
//!   the emptiest down, up to what its quota and the usable GPUs allow.
//!
//! Jobs that do not fit are skipped (no reservation): smaller jobs behind them still run.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use gantry_plugin_sdk::fit::{FreeIndex, priority_order};
use gantry_plugin_sdk::sched::{Jobs, Placement, Snapshot};

/// One scheduling cycle of the spreading strategy.
pub fn spread(snapshot: &Snapshot, queue: &Jobs) -> Vec<Placement> {
    let mut state = State::new(snapshot);
    // Memory need -> smallest GPU count that found too few usable GPUs this cycle. GPUs are only
    // taken during a cycle, so a later job with the same need and at least that many GPUs
    // cannot fit either: skipping it keeps a long queue of unplaceable jobs cheap.
    // A BTreeMap, not a HashMap: its random seed would import `wasi:random` into the component.
    let mut failed: BTreeMap<u32, u32> = BTreeMap::new();
    let mut placements = Vec::new();
    for position in priority_order(queue) {
        if state.index.total_free() == 0 {
            break;
        }
        let job = queue.row(position as usize);
        let allowed = job.gpus.min(state.index.quota_left(job.tenant));
        if allowed == 0 || (job.gang && allowed < job.gpus) {
            continue;
        }
        if job.gang && allowed > state.index.total_free() {
            continue;
        }
        let memory = job.memory_per_gpu_mib;
        // A partial job fails only when not even one GPU is usable.
        let needed = if job.gang { allowed } else { 1 };
        if failed.get(&memory).is_some_and(|&k| needed >= k) {
            continue;
        }
        let chosen = match state.emptiest_node(memory) {
            None => None,
            Some((node, usable)) if usable >= allowed => {
                Some(state.index.choose_on_node(node, allowed, memory))
            }
            Some(_) if job.gang => state.index.choose_across_nodes(allowed, memory, None),
            Some(_) => Some(state.round_robin(allowed, memory)),
        };
        match chosen.filter(|g| !g.is_empty()) {
            Some(gpus) => {
                state.take(job.tenant, &gpus);
                placements.push(Placement {
                    job: position,
                    gpus,
                });
            }
            None => {
                let k = failed.entry(memory).or_insert(needed);
                *k = (*k).min(needed);
            }
        }
    }
    placements
}

/// Order of nodes for spreading: most free GPUs first, then the rack with the most free GPUs,
/// then the lowest node index.
type NodeKey = (Reverse<u32>, Reverse<u32>, u32);

/// The free-GPU index plus what worst fit needs on top of it: nodes ordered by emptiness and
/// free GPUs per rack, kept up to date as GPUs are taken.
pub(crate) struct State {
    pub(crate) index: FreeIndex,
    /// Rack of each node, as an index into `rack_free` and `rack_nodes`.
    node_rack: Vec<usize>,
    /// Nodes of each rack.
    rack_nodes: Vec<Vec<u32>>,
    /// Free healthy GPUs of each rack.
    rack_free: Vec<u32>,
    /// Current key of each node in `order`.
    keys: Vec<NodeKey>,
    /// Every node, emptiest first.
    order: BTreeSet<NodeKey>,
    /// No free GPU had less memory than this when the cycle began; jobs needing at most this
    /// much can use every free GPU, which lets them skip the per-GPU memory filter.
    min_memory: u32,
}

impl State {
    pub(crate) fn new(snapshot: &Snapshot) -> Self {
        let index = FreeIndex::new(snapshot);
        let nodes = index.node_count();
        let (node_rack, racks) = index.rack_layout(snapshot.rack_count);
        let mut rack_nodes = vec![Vec::new(); racks];
        let mut rack_free = vec![0u32; racks];
        let mut min_memory = u32::MAX;
        for node in 0..nodes as u32 {
            let rack = node_rack[node as usize];
            rack_nodes[rack].push(node);
            let free = index.node_free(node);
            rack_free[rack] += free.len() as u32;
            for &g in free {
                min_memory = min_memory.min(snapshot.gpus.memory_free_mib[g as usize]);
            }
        }
        let keys: Vec<NodeKey> = (0..nodes as u32)
            .map(|n| {
                (
                    Reverse(index.node_free(n).len() as u32),
                    Reverse(rack_free[node_rack[n as usize]]),
                    n,
                )
            })
            .collect();
        let order = keys.iter().copied().collect();
        Self {
            index,
            node_rack,
            rack_nodes,
            rack_free,
            keys,
            order,
            min_memory,
        }
    }

    fn key(&self, node: u32) -> NodeKey {
        (
            Reverse(self.index.node_free(node).len() as u32),
            Reverse(self.rack_free[self.node_rack[node as usize]]),
            node,
        )
    }

    /// The node with the most GPUs usable by a job needing `memory` MiB each, and that count;
    /// `None` when no GPU is usable. Ties: rack with the most free GPUs, then lowest index.
    pub(crate) fn emptiest_node(&self, memory: u32) -> Option<(u32, u32)> {
        if memory <= self.min_memory {
            // Every free GPU is usable, so the first node in `order` is the answer.
            return self
                .order
                .first()
                .filter(|k| k.0.0 > 0)
                .map(|&(Reverse(free), _, node)| (node, free));
        }
        // (usable, rack free, node) of the best node so far.
        let mut best: Option<(u32, u32, u32)> = None;
        for &(Reverse(free), Reverse(rack_free), node) in &self.order {
            // Nodes come by descending free count and usable <= free: none further can win.
            if free == 0 || best.is_some_and(|b| free < b.0) {
                break;
            }
            let usable = self.index.usable_count(node, memory);
            let better = match best {
                None => usable > 0,
                Some((u, rf, n)) => (usable, rack_free, Reverse(node)) > (u, rf, Reverse(n)),
            };
            if better {
                best = Some((usable, rack_free, node));
            }
        }
        best.map(|(usable, _, node)| (node, usable))
    }

    /// Up to `count` GPUs, one per node per round, over the nodes in descending usable count
    /// (ties as in [`State::emptiest_node`]). Fewer when fewer are usable.
    fn round_robin(&self, count: u32, memory: u32) -> Vec<u32> {
        let mut nodes: Vec<(u32, Vec<u32>)> = (0..self.index.node_count() as u32)
            .map(|n| (n, self.index.usable(n, memory).collect::<Vec<u32>>()))
            .filter(|(_, usable)| !usable.is_empty())
            .collect();
        nodes.sort_by_key(|(n, usable)| {
            (
                Reverse(usable.len()),
                Reverse(self.rack_free[self.node_rack[*n as usize]]),
                *n,
            )
        });
        let usable: usize = nodes.iter().map(|(_, u)| u.len()).sum();
        let count = (count as usize).min(usable);
        let mut chosen = Vec::with_capacity(count);
        let mut round = 0;
        while chosen.len() < count {
            for (_, gpus) in &nodes {
                // Sorted by length, so once a node is exhausted so are all after it.
                let Some(&gpu) = gpus.get(round) else { break };
                chosen.push(gpu);
                if chosen.len() == count {
                    break;
                }
            }
            round += 1;
        }
        chosen
    }

    /// Takes `gpus` for `tenant` and re-sorts the nodes whose key changed: the nodes that lost
    /// GPUs, and every node of their racks (the rack's free count is a tie-breaker).
    pub(crate) fn take(&mut self, tenant: u32, gpus: &[u32]) {
        self.index.take(tenant, gpus);
        let mut racks: Vec<usize> = Vec::new();
        for &g in gpus {
            let rack = self.node_rack[self.index.gpu_node(g) as usize];
            self.rack_free[rack] = self.rack_free[rack].saturating_sub(1);
            if !racks.contains(&rack) {
                racks.push(rack);
            }
        }
        for rack in racks {
            for i in 0..self.rack_nodes[rack].len() {
                let node = self.rack_nodes[rack][i];
                let key = self.key(node);
                let old = std::mem::replace(&mut self.keys[node as usize], key);
                if old != key {
                    self.order.remove(&old);
                    self.order.insert(key);
                }
            }
        }
        debug_assert_eq!(
            self.rack_free.iter().sum::<u32>(),
            self.index.total_free(),
            "rack counts drifted from the index"
        );
    }
}
