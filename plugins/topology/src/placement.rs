//! Topology-aware placement: fill NVLink domains before crossing nodes, and nodes before crossing
//! racks.
//!
//! Jobs are taken by priority, then submission time. Each job is tried against ever larger
//! groups of GPUs, stopping at the first that can hold it, and never beyond the scope it is
//! allowed ([`Scope`]):
//!
//! 1. one NVLink domain: the one with the fewest usable GPUs that still holds the job (inside a
//!    domain that spans nodes, as few nodes as possible);
//! 2. one node: the best-fitting node ([`FreeIndex::best_fit_node`]), as few domains as possible
//!    inside it ([`FreeIndex::choose_on_node`]);
//! 3. one rack: the one with the fewest usable GPUs that still holds the job, whole nodes first
//!    inside it ([`FreeIndex::choose_across_nodes`]);
//! 4. the whole cluster: as few racks as possible, the racks with the most usable GPUs whole,
//!    then the best-fitting rack for the remainder.
//!
//! An NVLink domain may span nodes (GB200 NVL72 style), so "domain" and "node" are not nested:
//! a job that asked for one node only takes a domain's GPUs when they lie on one node, and a job
//! that asked for one domain only takes GPUs of one domain.
//!
//! A preference is a preference, never a reason to wait forever (as in Kueue's "preferred"
//! topology levels): a job is first allowed the tightest scope, from the one it asked for
//! outwards, whose largest group could ever hold it (healthy GPUs with its memory, busy or not),
//! so a 16-GPU job asking for one 8-GPU NVLink domain starts out allowed one rack. Each
//! `relax_after_s` it then waits allows one scope more, up to the whole cluster, so every
//! placement that exists is eventually reachable. A non-gang job takes all its GPUs at once
//! where the scope allows, else what the largest group of its scope can give now. Jobs that do
//! not fit are skipped (no reservation): smaller jobs behind them still run.

use std::collections::{BTreeMap, BTreeSet};

use gantry_plugin_sdk::fit::{FreeIndex, choose_by_group, priority_order};
use gantry_plugin_sdk::sched::{Jobs, Placement, Snapshot, Topology};

/// How far apart a job's GPUs may be, tightest first. The order is the order groups are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// One NVLink domain.
    Domain,
    /// One node.
    Node,
    /// One rack.
    Rack,
    /// Anywhere in the cluster.
    Any,
}

impl Scope {
    /// Every scope, tightest first.
    pub const ALL: [Scope; 4] = [Scope::Domain, Scope::Node, Scope::Rack, Scope::Any];

    /// The scope a job's topology preference asks for.
    pub fn asked(topology: Topology) -> Self {
        match topology {
            Topology::SameNvlinkDomain => Scope::Domain,
            Topology::SameNode => Scope::Node,
            Topology::SameRack => Scope::Rack,
            Topology::None => Scope::Any,
        }
    }

    /// The next larger scope, for a job that has waited long enough.
    pub fn relaxed(self) -> Self {
        match self {
            Scope::Domain => Scope::Node,
            Scope::Node => Scope::Rack,
            Scope::Rack | Scope::Any => Scope::Any,
        }
    }

    /// This scope relaxed `steps` times.
    pub fn relaxed_by(self, steps: u32) -> Self {
        (0..steps.min(3)).fold(self, |scope, _| scope.relaxed())
    }
}

/// How many scopes a job that has waited `waited_s` may go beyond the first one it was allowed:
/// one per `relax_after_s` (0 relaxes at once, infinity never).
pub fn relax_steps(waited_s: f64, relax_after_s: f64) -> u32 {
    if relax_after_s.is_infinite() || waited_s.is_nan() || waited_s < relax_after_s {
        0
    } else if relax_after_s <= 0.0 {
        3
    } else {
        (waited_s / relax_after_s).min(3.0) as u32
    }
}

/// One scheduling cycle of the topology-aware strategy. A job starts out allowed the tightest
/// scope, from the one it asked for outwards, that could ever hold it; each `relax_after_s`
/// seconds it has waited (`snapshot.now_s - job.submit_s`) allow one scope more
/// ([`relax_steps`]); `f64::INFINITY` never relaxes beyond the first.
pub fn place(snapshot: &Snapshot, queue: &Jobs, relax_after_s: f64) -> Vec<Placement> {
    let mut state = State::new(snapshot);
    let mut reach = Reach::new(snapshot, &state.index);
    // (memory need, asked scope, allowed scope) -> smallest GPU count that could not be placed
    // this cycle. GPUs are only taken during a cycle and every scope's test is "some group has
    // enough usable GPUs", so a later job with the same key and at least that many GPUs cannot
    // fit either: skipping it keeps a long queue of waiting jobs cheap.
    // A BTreeMap, not a HashMap: its random seed would import `wasi:random` into the component.
    let mut failed: BTreeMap<(u32, Scope, Scope), u32> = BTreeMap::new();
    let mut placements = Vec::new();
    for position in priority_order(queue) {
        if state.index.total_free() == 0 {
            break;
        }
        let job = queue.row(position as usize);
        let count = job.gpus.min(state.index.quota_left(job.tenant));
        if count == 0 || (job.gang && count < job.gpus) {
            continue;
        }
        let memory = job.memory_per_gpu_mib;
        // A non-gang job can run in parts, so any group with one usable GPU could serve it.
        let needed = if job.gang { count } else { 1 };
        let Some(asked) = reach.tightest(Scope::asked(job.topology), needed, memory) else {
            continue; // no group of the whole cluster could ever hold it
        };
        let allowed = asked.relaxed_by(relax_steps(snapshot.now_s - job.submit_s, relax_after_s));
        let key = (memory, asked, allowed);
        let fails_from = failed.get(&key).copied().unwrap_or(u32::MAX);
        let mut chosen = None;
        if count < fails_from && count <= state.index.total_free() {
            chosen = state.place_whole(count, memory, asked, allowed);
            if chosen.is_none() {
                record_failure(&mut failed, key, count);
            }
        }
        if chosen.is_none() && !job.gang && fails_from > 1 {
            chosen = state.place_part(count, memory, allowed);
            if chosen.is_none() {
                record_failure(&mut failed, key, 1);
            }
        }
        if let Some(gpus) = chosen.filter(|g| !g.is_empty()) {
            state.take(job.tenant, &gpus);
            placements.push(Placement {
                job: position,
                gpus,
            });
        }
    }
    placements
}

fn record_failure(
    failed: &mut BTreeMap<(u32, Scope, Scope), u32>,
    key: (u32, Scope, Scope),
    n: u32,
) {
    let k = failed.entry(key).or_insert(n);
    *k = (*k).min(n);
}

/// What each scope could ever hold, whatever runs now: for a memory need, the most healthy GPUs
/// with that much memory in one group of each scope. Computed once per memory need and cycle.
pub(crate) struct Reach {
    /// Healthy GPUs on known nodes: (free memory, NVLink domain, node, rack).
    healthy: Vec<(u32, u32, u32, u32)>,
    /// Groups of each scope: domains, nodes, racks.
    groups: [usize; 3],
    /// Memory need -> the largest group of each scope, in [`Scope::ALL`] order.
    largest: BTreeMap<u32, [u32; 4]>,
}

impl Reach {
    pub(crate) fn new(snapshot: &Snapshot, index: &FreeIndex) -> Self {
        let gpus = &snapshot.gpus;
        let nodes = index.node_count();
        let healthy: Vec<(u32, u32, u32, u32)> = (0..gpus.len())
            .filter(|&g| gpus.healthy[g] != 0 && (gpus.node[g] as usize) < nodes)
            .map(|g| {
                let node = gpus.node[g];
                let rack = index.node_rack(node);
                (gpus.memory_free_mib[g], gpus.nvlink_domain[g], node, rack)
            })
            .collect();
        let most = |f: fn(&(u32, u32, u32, u32)) -> u32| {
            healthy.iter().map(|g| f(g) as usize + 1).max().unwrap_or(0)
        };
        Self {
            groups: [most(|g| g.1), most(|g| g.2), most(|g| g.3)],
            healthy,
            largest: BTreeMap::new(),
        }
    }

    /// The largest group of each scope for a job needing `memory_mib` per GPU.
    fn largest(&mut self, memory_mib: u32) -> [u32; 4] {
        if let Some(&largest) = self.largest.get(&memory_mib) {
            return largest;
        }
        let mut counts = self.groups.map(|n| vec![0u32; n]);
        let mut total = 0;
        for &(memory, domain, node, rack) in &self.healthy {
            if memory >= memory_mib {
                counts[0][domain as usize] += 1;
                counts[1][node as usize] += 1;
                counts[2][rack as usize] += 1;
                total += 1;
            }
        }
        let max = |c: &Vec<u32>| c.iter().copied().max().unwrap_or(0);
        let largest = [max(&counts[0]), max(&counts[1]), max(&counts[2]), total];
        self.largest.insert(memory_mib, largest);
        largest
    }

    /// The tightest scope, from `asked` outwards, with a group that could ever hold `count` GPUs
    /// of `memory_mib`; `None` when not even the whole cluster could.
    pub(crate) fn tightest(&mut self, asked: Scope, count: u32, memory_mib: u32) -> Option<Scope> {
        let largest = self.largest(memory_mib);
        Scope::ALL
            .into_iter()
            .zip(largest)
            .find(|&(scope, most)| scope >= asked && most >= count)
            .map(|(scope, _)| scope)
    }
}

/// How many GPUs at the front of `gpus` (sorted by descending free memory) have `memory_mib`.
fn usable_len(gpus: &[u32], memory: &[u32], memory_mib: u32) -> usize {
    gpus.partition_point(|&g| memory[g as usize] >= memory_mib)
}

/// The free-GPU index plus free GPUs by NVLink domain and by rack, kept up to date as GPUs are
/// taken.
pub(crate) struct State {
    /// Free GPUs by node, best and worst fit, and the tenants' remaining quotas.
    pub(crate) index: FreeIndex,
    /// Free memory of each GPU, in MiB.
    memory: Vec<u32>,
    /// Free healthy GPUs of each NVLink domain, by descending memory then ascending index, so
    /// the GPUs usable for a memory need are a prefix found by binary search.
    domain_free: Vec<Vec<u32>>,
    /// (free GPUs, domain) of every domain, for best fit.
    domain_order: BTreeSet<(u32, u32)>,
    /// Free healthy GPUs of each node, ordered like `domain_free`.
    node_free: Vec<Vec<u32>>,
    /// Rack of each node, as an index into `rack_free`.
    node_rack: Vec<usize>,
    /// Free healthy GPUs of each rack.
    rack_free: Vec<u32>,
    /// Nodes of each rack.
    rack_nodes: Vec<Vec<u32>>,
    /// No free GPU had less memory than this when the cycle began, so a job needing at most
    /// this much can use every free GPU and free counts stand for usable counts.
    min_memory: u32,
}

impl State {
    pub(crate) fn new(snapshot: &Snapshot) -> Self {
        let index = FreeIndex::new(snapshot);
        let memory: Vec<u32> = snapshot.gpus.memory_free_mib.clone();
        let nodes = index.node_count();
        let (node_rack, racks) = index.rack_layout(snapshot.rack_count);
        let domains = snapshot
            .gpus
            .iter()
            .map(|g| g.nvlink_domain as usize + 1)
            .max()
            .unwrap_or(0)
            .max(snapshot.nvlink_domain_count as usize);
        let mut domain_free = vec![Vec::new(); domains];
        let mut node_free = vec![Vec::new(); nodes];
        let mut rack_free = vec![0u32; racks];
        let mut rack_nodes = vec![Vec::new(); racks];
        let mut min_memory = u32::MAX;
        for node in 0..nodes as u32 {
            rack_nodes[node_rack[node as usize]].push(node);
            // The index decides what is free (healthy, not busy, on a known node).
            for &g in index.node_free(node) {
                domain_free[index.gpu_domain(g) as usize].push(g);
                node_free[node as usize].push(g);
                rack_free[node_rack[node as usize]] += 1;
                min_memory = min_memory.min(memory[g as usize]);
            }
        }
        let by_memory =
            |a: &u32, b: &u32| memory[*b as usize].cmp(&memory[*a as usize]).then(a.cmp(b));
        for gpus in domain_free.iter_mut().chain(node_free.iter_mut()) {
            gpus.sort_by(by_memory);
        }
        let domain_order = domain_free
            .iter()
            .enumerate()
            .map(|(d, gpus)| (gpus.len() as u32, d as u32))
            .collect();
        Self {
            index,
            memory,
            domain_free,
            domain_order,
            node_free,
            node_rack,
            rack_free,
            rack_nodes,
            min_memory,
        }
    }

    fn domain_usable(&self, domain: u32, memory_mib: u32) -> u32 {
        usable_len(&self.domain_free[domain as usize], &self.memory, memory_mib) as u32
    }

    fn node_usable(&self, node: u32, memory_mib: u32) -> u32 {
        usable_len(&self.node_free[node as usize], &self.memory, memory_mib) as u32
    }

    fn rack_usable(&self, rack: usize, memory_mib: u32) -> u32 {
        if memory_mib <= self.min_memory {
            return self.rack_free[rack];
        }
        self.rack_nodes[rack]
            .iter()
            .map(|&n| self.node_usable(n, memory_mib))
            .sum()
    }

    /// The domain with the fewest usable GPUs that still has `count`; ties go to the fewest
    /// free GPUs, then the lowest index.
    pub(crate) fn tightest_domain(&self, count: u32, memory_mib: u32) -> Option<u32> {
        let mut candidates = self.domain_order.range((count, 0)..);
        if memory_mib <= self.min_memory {
            // Usable equals free: the first domain with enough free GPUs is the tightest.
            return candidates.next().map(|&(_, d)| d);
        }
        let mut best: Option<(u32, u32, u32)> = None;
        for &(free, d) in candidates {
            let usable = self.domain_usable(d, memory_mib);
            if usable >= count && best.is_none_or(|b| (usable, free, d) < b) {
                best = Some((usable, free, d));
                if usable == count {
                    break; // a perfect fit; later entries only tie or lose
                }
            }
        }
        best.map(|(_, _, d)| d)
    }

    /// `count` usable GPUs of `domain`, on as few nodes as possible.
    fn domain_gpus(&self, domain: u32, count: u32, memory_mib: u32) -> Vec<u32> {
        let gpus = &self.domain_free[domain as usize];
        let mut usable = gpus[..usable_len(gpus, &self.memory, memory_mib)].to_vec();
        usable.sort_unstable();
        choose_by_group(&usable, count, |g| self.index.gpu_node(g))
    }

    /// The rack with the fewest usable GPUs that still has `count`; ties to the lowest index.
    fn tightest_rack(&self, count: u32, memory_mib: u32) -> Option<usize> {
        (0..self.rack_free.len())
            .filter(|&r| self.rack_free[r] >= count)
            .map(|r| (self.rack_usable(r, memory_mib), r))
            .filter(|&(usable, _)| usable >= count)
            .min()
            .map(|(_, r)| r)
    }

    /// The candidate GPUs for `count` GPUs in one group of `level`, if some group is big enough.
    fn candidate(&self, level: Scope, count: u32, memory_mib: u32) -> Option<Vec<u32>> {
        match level {
            Scope::Domain => self
                .tightest_domain(count, memory_mib)
                .map(|d| self.domain_gpus(d, count, memory_mib)),
            Scope::Node => self
                .index
                .best_fit_node(count, memory_mib)
                .map(|n| self.index.choose_on_node(n, count, memory_mib)),
            Scope::Rack => self.tightest_rack(count, memory_mib).and_then(|r| {
                self.index
                    .choose_across_nodes(count, memory_mib, Some(r as u32))
            }),
            Scope::Any => self.across_racks(count, memory_mib),
        }
    }

    /// Whether `gpus` all lie in one group of `scope`.
    fn within(&self, scope: Scope, gpus: &[u32]) -> bool {
        let same = |key: &dyn Fn(u32) -> usize| {
            gpus.first()
                .is_none_or(|&first| gpus.iter().all(|&g| key(g) == key(first)))
        };
        match scope {
            Scope::Domain => same(&|g| self.index.gpu_domain(g) as usize),
            Scope::Node => same(&|g| self.index.gpu_node(g) as usize),
            Scope::Rack => same(&|g| self.node_rack[self.index.gpu_node(g) as usize]),
            Scope::Any => true,
        }
    }

    /// All `count` GPUs in the tightest group that holds them, trying groups up to `allowed`.
    /// The GPUs must lie within the scope the job `asked` for or the one it is `allowed`.
    pub(crate) fn place_whole(
        &self,
        count: u32,
        memory_mib: u32,
        asked: Scope,
        allowed: Scope,
    ) -> Option<Vec<u32>> {
        Scope::ALL
            .into_iter()
            .filter(|&level| level <= allowed)
            .filter_map(|level| self.candidate(level, count, memory_mib))
            .find(|gpus| self.within(asked, gpus) || self.within(allowed, gpus))
    }

    /// Up to `count` GPUs from the group of scope `allowed` with the most usable GPUs (for a job
    /// that cannot have all of them now); `None` when nothing is usable.
    pub(crate) fn place_part(
        &self,
        count: u32,
        memory_mib: u32,
        allowed: Scope,
    ) -> Option<Vec<u32>> {
        let gpus = match allowed {
            Scope::Domain => {
                // Most usable, then lowest index.
                let (usable, d) = (0..self.domain_free.len() as u32)
                    .map(|d| (self.domain_usable(d, memory_mib), d))
                    .max_by_key(|&(u, d)| (u, std::cmp::Reverse(d)))?;
                self.domain_gpus(d, count.min(usable), memory_mib)
            }
            Scope::Node => {
                let (usable, n) = (0..self.node_free.len() as u32)
                    .map(|n| (self.node_usable(n, memory_mib), n))
                    .max_by_key(|&(u, n)| (u, std::cmp::Reverse(n)))?;
                self.index.choose_on_node(n, count.min(usable), memory_mib)
            }
            Scope::Rack => {
                let (usable, r) = (0..self.rack_free.len())
                    .map(|r| (self.rack_usable(r, memory_mib), r))
                    .max_by_key(|&(u, r)| (u, std::cmp::Reverse(r)))?;
                if usable == 0 {
                    return None;
                }
                self.index
                    .choose_across_nodes(count.min(usable), memory_mib, Some(r as u32))?
            }
            Scope::Any => {
                let usable: u32 = (0..self.rack_free.len())
                    .map(|r| self.rack_usable(r, memory_mib))
                    .sum();
                if usable == 0 {
                    return None;
                }
                self.across_racks(count.min(usable), memory_mib)?
            }
        };
        (!gpus.is_empty()).then_some(gpus)
    }

    /// `count` GPUs on as few racks as possible: the racks with the most usable GPUs whole, then
    /// the best-fitting rack for the remainder. `None` when the cluster has too few.
    fn across_racks(&self, count: u32, memory_mib: u32) -> Option<Vec<u32>> {
        let mut racks: Vec<(usize, u32)> = (0..self.rack_free.len())
            .map(|r| (r, self.rack_usable(r, memory_mib)))
            .filter(|&(_, u)| u > 0)
            .collect();
        if racks.iter().map(|&(_, u)| u).sum::<u32>() < count {
            return None;
        }
        racks.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut chosen = Vec::with_capacity(count as usize);
        let mut left = count;
        for (i, &(rack, usable)) in racks.iter().enumerate() {
            if left == 0 {
                break;
            }
            let (rack, take) = if usable <= left {
                (rack, usable)
            } else {
                // The remainder fits in one rack: the tightest one that holds it.
                let best = racks[i..]
                    .iter()
                    .filter(|&&(_, u)| u >= left)
                    .min_by_key(|&&(r, u)| (u, r))
                    .map_or(rack, |&(r, _)| r);
                (best, left)
            };
            chosen.extend(
                self.index
                    .choose_across_nodes(take, memory_mib, Some(rack as u32))?,
            );
            left -= take;
        }
        (left == 0).then_some(chosen)
    }

    /// Takes `gpus` for `tenant`: out of the index (which charges the quota) and out of the
    /// per-domain, per-node and per-rack counts.
    pub(crate) fn take(&mut self, tenant: u32, gpus: &[u32]) {
        self.index.take(tenant, gpus);
        for &g in gpus {
            let domain = self.index.gpu_domain(g);
            let list = &mut self.domain_free[domain as usize];
            if let Some(pos) = list.iter().position(|&x| x == g) {
                let before = list.len() as u32;
                list.remove(pos);
                self.domain_order.remove(&(before, domain));
                self.domain_order.insert((before - 1, domain));
            }
            let node = self.index.gpu_node(g) as usize;
            let list = &mut self.node_free[node];
            if let Some(pos) = list.iter().position(|&x| x == g) {
                list.remove(pos);
                let rack = self.node_rack[node];
                self.rack_free[rack] -= 1;
            }
        }
    }
}
