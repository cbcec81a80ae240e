//! An index of free GPUs for placement decisions, rebuilt at the start of every cycle; the
//! plugins and the host's native strategy use the same one, so both sides decide identically.

use crate::{Jobs, Snapshot};

/// Free, healthy GPUs grouped by node, with buckets by free count for O(1)-ish best fit.
#[derive(Debug, Clone)]
pub struct FreeIndex {
    /// Free healthy GPUs of all nodes, grouped by node and ascending within a node: node `n`
    /// owns `free[start[n]..start[n] + len[n]]`. One flat list rather than a list per node, as
    /// the index is rebuilt every cycle and hundreds of small allocations cost more than the
    /// lookups (most of all inside the sandbox).
    free: Vec<u32>,
    /// Where each node's free GPUs start in `free`.
    start: Vec<u32>,
    /// How many free GPUs each node has.
    len: Vec<u32>,
    /// Rack of each node.
    node_rack: Vec<u32>,
    /// Node of each GPU.
    gpu_node: Vec<u32>,
    /// NVLink domain of each GPU.
    gpu_domain: Vec<u32>,
    /// Free memory of each GPU, in MiB.
    gpu_memory: Vec<u32>,
    /// `buckets[c]` holds the nodes with exactly `c` free GPUs.
    buckets: Vec<Vec<u32>>,
    /// Position of each node inside its bucket.
    bucket_pos: Vec<u32>,
    /// GPUs each tenant may still take (`u32::MAX` when it has no quota).
    quota_left: Vec<u32>,
    total_free: u32,
    /// Smallest free memory among the free GPUs when the index was built. Jobs needing at most
    /// this can use every free GPU, which lets multi-node placement walk the buckets instead of
    /// scanning every node.
    min_free_memory: u32,
}

impl FreeIndex {
    /// Indexes the free healthy GPUs and the tenants' remaining quotas of `snapshot`.
    pub fn new(snapshot: &Snapshot) -> Self {
        let nodes = snapshot.nodes.len();
        let gpus = &snapshot.gpus;
        let mut node_capacity = vec![0u32; nodes];
        let mut len = vec![0u32; nodes];
        for (i, &node) in gpus.node.iter().enumerate() {
            let node = node as usize;
            if node < nodes {
                node_capacity[node] += 1;
                if gpus.is_free(i) {
                    len[node] += 1;
                }
            }
        }
        let mut start = Vec::with_capacity(nodes);
        let mut total_free = 0u32;
        for &l in &len {
            start.push(total_free);
            total_free += l;
        }
        // Fill each node's slice in GPU order, so every slice comes out ascending.
        let mut free = vec![0u32; total_free as usize];
        let mut fill = start.clone();
        for (i, &node) in gpus.node.iter().enumerate() {
            let node = node as usize;
            if node < nodes && gpus.is_free(i) {
                free[fill[node] as usize] = i as u32;
                fill[node] += 1;
            }
        }
        let gpu_node = gpus.node.clone();
        let gpu_domain = gpus.nvlink_domain.clone();
        let gpu_memory = gpus.memory_free_mib.clone();
        let max_capacity = node_capacity.iter().copied().max().unwrap_or(0) as usize;
        let mut buckets = vec![Vec::new(); max_capacity + 1];
        let mut bucket_pos = vec![0u32; nodes];
        for (node, &c) in len.iter().enumerate() {
            let c = c as usize;
            bucket_pos[node] = buckets[c].len() as u32;
            buckets[c].push(node as u32);
        }
        let min_free_memory = free
            .iter()
            .map(|&g| gpu_memory[g as usize])
            .min()
            .unwrap_or(0);
        let quota_left = snapshot
            .tenants
            .iter()
            .map(|t| match t.quota_gpus {
                Some(q) => q.saturating_sub(t.used_gpus),
                None => u32::MAX,
            })
            .collect();
        Self {
            free,
            start,
            len,
            node_rack: snapshot.nodes.iter().map(|n| n.rack).collect(),
            gpu_node,
            gpu_domain,
            gpu_memory,
            buckets,
            bucket_pos,
            quota_left,
            total_free,
            min_free_memory,
        }
    }

    /// Free healthy GPUs in the whole cluster.
    pub fn total_free(&self) -> u32 {
        self.total_free
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.len.len()
    }

    /// Free healthy GPUs of `node`, ascending.
    pub fn node_free(&self, node: u32) -> &[u32] {
        let start = self.start[node as usize] as usize;
        &self.free[start..start + self.len[node as usize] as usize]
    }

    /// Rack of `node`.
    pub fn node_rack(&self, node: u32) -> u32 {
        self.node_rack[node as usize]
    }

    /// The rack of each node as an index, and how many racks per-rack tallies need: one past
    /// the highest rack a node names, and at least `declared_racks` (the snapshot's
    /// `rack_count`), so a rack without nodes still has its slot.
    pub fn rack_layout(&self, declared_racks: u32) -> (Vec<usize>, usize) {
        let node_rack: Vec<usize> = self.node_rack.iter().map(|&r| r as usize).collect();
        let racks = node_rack
            .iter()
            .map(|&r| r + 1)
            .max()
            .unwrap_or(0)
            .max(declared_racks as usize);
        (node_rack, racks)
    }

    /// Node of `gpu`.
    pub fn gpu_node(&self, gpu: u32) -> u32 {
        self.gpu_node[gpu as usize]
    }

    /// NVLink domain of `gpu`.
    pub fn gpu_domain(&self, gpu: u32) -> u32 {
        self.gpu_domain[gpu as usize]
    }

    /// GPUs `tenant` may still take this cycle.
    pub fn quota_left(&self, tenant: u32) -> u32 {
        self.quota_left.get(tenant as usize).copied().unwrap_or(0)
    }

    /// Free GPUs of `node` with at least `memory_mib` free.
    pub fn usable(&self, node: u32, memory_mib: u32) -> impl Iterator<Item = u32> + '_ {
        self.node_free(node)
            .iter()
            .copied()
            .filter(move |&g| self.gpu_memory[g as usize] >= memory_mib)
    }

    /// How many GPUs of `node` could host a GPU of a job needing `memory_mib`.
    pub fn usable_count(&self, node: u32, memory_mib: u32) -> u32 {
        self.usable(node, memory_mib).count() as u32
    }

    /// Free GPUs in the whole cluster with at least `memory_mib` free.
    pub fn usable_total(&self, memory_mib: u32) -> u32 {
        if memory_mib <= self.min_free_memory {
            return self.total_free;
        }
        (0..self.node_count() as u32)
            .map(|n| self.usable_count(n, memory_mib))
            .sum()
    }

    /// The node with the fewest free GPUs that still has `count` usable ones (best fit: it leaves
    /// the least fragmentation behind).
    pub fn best_fit_node(&self, count: u32, memory_mib: u32) -> Option<u32> {
        let start = count.max(1) as usize;
        self.buckets.iter().skip(start).find_map(|bucket| {
            bucket
                .iter()
                .copied()
                .find(|&n| self.usable_count(n, memory_mib) >= count)
        })
    }

    /// The node with the most free GPUs that has `count` usable ones (worst fit: it spreads load).
    pub fn worst_fit_node(&self, count: u32, memory_mib: u32) -> Option<u32> {
        let start = count.max(1) as usize;
        self.buckets
            .iter()
            .enumerate()
            .rev()
            .take_while(|(c, _)| *c >= start)
            .find_map(|(_, bucket)| {
                bucket
                    .iter()
                    .copied()
                    .find(|&n| self.usable_count(n, memory_mib) >= count)
            })
    }

    /// Chooses `count` usable GPUs on `node`, keeping them inside as few NVLink domains as
    /// possible: the best-fitting single domain when one is large enough, else the largest
    /// domains first. Does not take them; see [`FreeIndex::take`].
    pub fn choose_on_node(&self, node: u32, count: u32, memory_mib: u32) -> Vec<u32> {
        let free = self.node_free(node);
        let one_domain = free.first().is_some_and(|&f| {
            free.iter()
                .all(|&g| self.gpu_domain(g) == self.gpu_domain(f))
        });
        if one_domain && memory_mib <= self.min_free_memory {
            // Every free GPU qualifies and they share a domain: the general path below would
            // pick the same first `count`, with a few allocations more per placement.
            return free[..(count as usize).min(free.len())].to_vec();
        }
        let usable: Vec<u32> = self.usable(node, memory_mib).collect();
        choose_by_group(&usable, count, |g| self.gpu_domain(g))
    }

    /// Chooses `count` GPUs across several nodes for a job that no single node can hold: whole
    /// nodes with the most usable GPUs first, then the best-fitting node for the remainder. With
    /// `rack` set, only nodes of that rack are used. Returns `None` when they do not suffice.
    pub fn choose_across_nodes(
        &self,
        count: u32,
        memory_mib: u32,
        rack: Option<u32>,
    ) -> Option<Vec<u32>> {
        if rack.is_none() && memory_mib <= self.min_free_memory {
            self.choose_across_buckets(count)
        } else {
            self.choose_across_scan(count, memory_mib, rack)
        }
    }

    /// [`FreeIndex::choose_across_nodes`] when every free GPU is usable: the same choice, read
    /// off the free-count buckets, touching only the nodes it takes or compares.
    pub(crate) fn choose_across_buckets(&self, count: u32) -> Option<Vec<u32>> {
        if self.total_free < count {
            return None;
        }
        let mut chosen = Vec::with_capacity(count as usize);
        let mut left = count;
        for c in (1..self.buckets.len()).rev() {
            // Nodes are visited in index order, and at most `left / c + 1` of this bucket are
            // reached (whole nodes, then one that holds the remainder): select those, sort them.
            let mut nodes = self.buckets[c].clone();
            let reach = left as usize / c + 1;
            if reach < nodes.len() {
                nodes.select_nth_unstable(reach);
                nodes.truncate(reach);
            }
            nodes.sort_unstable();
            for node in nodes {
                if left == 0 {
                    return Some(chosen);
                }
                if c as u32 <= left {
                    chosen.extend_from_slice(self.node_free(node));
                    left -= c as u32;
                    continue;
                }
                // The remainder fits in one node: the tightest untaken node that holds it. The
                // nodes taken so far are all in buckets `c` and above, and in bucket `c` they are
                // the ones below `node`: so a tighter bucket's lowest node, else `node` itself,
                // without reading the (largest, early in a cycle) bucket `c` again.
                let best = (left as usize..c)
                    .find_map(|b| self.buckets[b].iter().copied().min())
                    .unwrap_or(node);
                chosen.extend(self.choose_on_node(best, left, 0));
                return Some(chosen);
            }
        }
        (left == 0).then_some(chosen)
    }

    /// [`FreeIndex::choose_across_nodes`] by scanning every node.
    pub(crate) fn choose_across_scan(
        &self,
        count: u32,
        memory_mib: u32,
        rack: Option<u32>,
    ) -> Option<Vec<u32>> {
        let mut candidates: Vec<(u32, u32)> = (0..self.node_count() as u32)
            .filter(|&n| rack.is_none_or(|r| self.node_rack(n) == r))
            .map(|n| (n, self.usable_count(n, memory_mib)))
            .filter(|&(_, c)| c > 0)
            .collect();
        let available: u32 = candidates.iter().map(|&(_, c)| c).sum();
        if available < count {
            return None;
        }
        // Most usable first; ties by node index so every host decides the same way.
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut chosen = Vec::with_capacity(count as usize);
        let mut left = count;
        let mut i = 0;
        while left > 0 && i < candidates.len() {
            let (node, usable) = candidates[i];
            if usable <= left {
                chosen.extend(self.usable(node, memory_mib));
                left -= usable;
                i += 1;
            } else {
                // The remainder fits in one node: take the tightest one that holds it.
                let rest = &candidates[i..];
                let best = rest
                    .iter()
                    .filter(|&&(_, c)| c >= left)
                    .min_by_key(|&&(n, c)| (c, n))
                    .map(|&(n, _)| n)
                    .unwrap_or(node);
                chosen.extend(self.choose_on_node(best, left, memory_mib));
                left = 0;
            }
        }
        (left == 0).then_some(chosen)
    }

    /// Removes `gpus` from the free index and charges them to `tenant`'s quota.
    pub fn take(&mut self, tenant: u32, gpus: &[u32]) {
        for &gpu in gpus {
            let node = self.gpu_node[gpu as usize];
            let start = self.start[node as usize] as usize;
            let before = self.len[node as usize] as usize;
            let free = &mut self.free[start..start + before];
            if let Some(pos) = free.iter().position(|&g| g == gpu) {
                // Close the gap inside the node's slice; the slot at its end goes unused.
                free.copy_within(pos + 1.., pos);
                self.len[node as usize] -= 1;
                self.move_bucket(node, before, before - 1);
                self.total_free -= 1;
            }
        }
        if let Some(q) = self.quota_left.get_mut(tenant as usize)
            && *q != u32::MAX
        {
            *q = q.saturating_sub(gpus.len() as u32);
        }
    }

    fn move_bucket(&mut self, node: u32, from: usize, to: usize) {
        let pos = self.bucket_pos[node as usize] as usize;
        let bucket = &mut self.buckets[from];
        bucket.swap_remove(pos);
        if let Some(&moved) = bucket.get(pos) {
            self.bucket_pos[moved as usize] = pos as u32;
        }
        self.bucket_pos[node as usize] = self.buckets[to].len() as u32;
        self.buckets[to].push(node);
    }
}

/// Chooses `count` of `gpus` keeping them in as few groups (NVLink domains, nodes, racks) as
/// possible: the best-fitting single group when one is large enough, else the largest groups
/// first. `gpus` must hold at least `count` entries.
pub fn choose_by_group(gpus: &[u32], count: u32, group_of: impl Fn(u32) -> u32) -> Vec<u32> {
    let mut groups: Vec<(u32, Vec<u32>)> = Vec::new();
    for &g in gpus {
        let key = group_of(g);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(g),
            None => groups.push((key, vec![g])),
        }
    }
    let count = count as usize;
    if let Some((_, members)) = groups
        .iter()
        .filter(|(_, m)| m.len() >= count)
        .min_by_key(|(k, m)| (m.len(), *k))
    {
        return members[..count].to_vec();
    }
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    groups
        .into_iter()
        .flat_map(|(_, m)| m)
        .take(count)
        .collect()
}

/// Queue positions in the order jobs should be considered: higher priority first, then earlier
/// submission, then queue position.
pub fn priority_order(queue: &Jobs) -> Vec<u32> {
    // Integer keys sorted unstably: keys are unique (they end in the position), so the order is
    // deterministic, and plain integer compares are several times faster than a comparator
    // reaching back into the queue, which matters inside the sandbox.
    let priority = &queue.priority;
    if priority.is_empty() {
        return Vec::new();
    }
    if queue.submit_s.windows(2).all(|w| w[0] <= w[1]) {
        // The host's contract: the queue comes in submission order, so position already orders
        // by submission time, and only priority is left to sort by. Priorities span a narrow
        // range in practice: a stable counting sort over that range is two linear passes; with
        // a wide range, one u64 key per job instead.
        let (lo, hi) = priority
            .iter()
            .fold((i32::MAX, i32::MIN), |(lo, hi), &p| (lo.min(p), hi.max(p)));
        let span = i64::from(hi) - i64::from(lo) + 1;
        if span <= 4096 {
            let rank = |p: i32| (i64::from(hi) - i64::from(p)) as usize;
            let mut next = vec![0u32; span as usize + 1];
            for &p in priority {
                next[rank(p) + 1] += 1;
            }
            for r in 1..next.len() {
                next[r] += next[r - 1];
            }
            let mut order = vec![0u32; priority.len()];
            for (i, &p) in priority.iter().enumerate() {
                let slot = &mut next[rank(p)];
                order[*slot as usize] = i as u32;
                *slot += 1;
            }
            return order;
        }
        let mut keys: Vec<u64> = priority
            .iter()
            .enumerate()
            .map(|(i, &p)| ((!((p as u32) ^ (1 << 31)) as u64) << 32) | i as u64)
            .collect();
        keys.sort_unstable();
        return keys.into_iter().map(|k| k as u32).collect();
    }
    let mut keys: Vec<(i64, u64, u32)> = priority
        .iter()
        .zip(&queue.submit_s)
        .enumerate()
        .map(|(i, (&p, &submit))| (-(p as i64), order_bits(submit), i as u32))
        .collect();
    keys.sort_unstable();
    keys.into_iter().map(|(_, _, i)| i).collect()
}

/// Maps an `f64` to a `u64` with the same order as `f64::total_cmp`.
fn order_bits(x: f64) -> u64 {
    let bits = x.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

#[cfg(test)]
mod tests;
