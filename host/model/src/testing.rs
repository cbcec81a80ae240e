//! Builders for snapshots and queues in plugin unit tests.

use crate::{Gpu, Gpus, Job, Jobs, Node, Placement, Snapshot, Tenant, Topology};

/// A cluster of `racks` racks, each with `nodes_per_rack` nodes of `gpus_per_node` free 80 GiB
/// GPUs; each node is one NVLink domain. Two tenants, `a` and `b`, without quotas.
pub fn cluster(racks: u32, nodes_per_rack: u32, gpus_per_node: u32) -> Snapshot {
    let mut gpus = Gpus::default();
    for gpu in Gpu::uniform(racks, nodes_per_rack, gpus_per_node) {
        gpus.push(gpu);
    }
    Snapshot {
        now_s: 0.0,
        gpus,
        nodes: (0..racks)
            .flat_map(|rack| (0..nodes_per_rack).map(move |_| Node { rack }))
            .collect(),
        rack_count: racks,
        nvlink_domain_count: racks * nodes_per_rack,
        model_count: 1,
        tenants: ["a", "b"]
            .iter()
            .map(|name| Tenant {
                name: name.to_string(),
                quota_gpus: None,
                used_gpus: 0,
                used_memory_mib: 0,
                weight: 1.0,
            })
            .collect(),
        running: Vec::new(),
    }
}

/// Marks the GPUs `gpus` busy.
pub fn occupy(snapshot: &mut Snapshot, gpus: impl IntoIterator<Item = u32>) {
    for g in gpus {
        snapshot.gpus.busy[g as usize] = 1;
    }
}

/// A gang job of tenant `tenant` asking for `gpus` GPUs of 40 GiB, priority 0, one hour.
pub fn job(tenant: u32, gpus: u32) -> Job {
    Job {
        tenant,
        priority: 0,
        gpus,
        memory_per_gpu_mib: 40960,
        gang: true,
        topology: Topology::None,
        est_runtime_s: 3600.0,
        submit_s: 0.0,
    }
}

/// A queue of `jobs`, in order.
pub fn jobs(rows: impl IntoIterator<Item = Job>) -> Jobs {
    rows.into_iter().collect()
}

/// Edits the GPUs of `snapshot` whose indices fall in `range`, as rows.
pub fn edit_gpus(
    snapshot: &mut Snapshot,
    range: impl std::ops::RangeBounds<usize>,
    mut edit: impl FnMut(&mut Gpu),
) {
    use std::ops::Bound;
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e + 1,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => snapshot.gpus.len(),
    };
    for i in start..end {
        let mut gpu = snapshot.gpus.row(i);
        edit(&mut gpu);
        snapshot.gpus.set(i, gpu);
    }
}

/// Panics, naming the broken rule, unless the host would accept `placements` as the answer to
/// `snapshot` and `queue` ([`crate::validate`]); returns them.
#[track_caller]
pub fn checked(snapshot: &Snapshot, queue: &Jobs, placements: Vec<Placement>) -> Vec<Placement> {
    if let Err(e) = crate::validate(snapshot, queue, &placements) {
        panic!("invalid answer: {e}\n{placements:?}");
    }
    placements
}

/// `gpus`, sorted.
pub fn sorted(gpus: &[u32]) -> Vec<u32> {
    let mut gpus = gpus.to_vec();
    gpus.sort_unstable();
    gpus
}

/// 2 racks x 2 nodes x 4 GPUs of which GPUs 1, 5, 9 and 13 are unhealthy and 2, 6, 10 and 14
/// busy: only 0, 3, 4, 7, 8, 11, 12 and 15 may be given.
pub fn unhealthy_and_busy() -> Snapshot {
    let mut snapshot = cluster(2, 2, 4);
    for g in [1, 5, 9, 13] {
        snapshot.gpus.healthy[g] = 0;
    }
    occupy(&mut snapshot, [2, 6, 10, 14]);
    snapshot
}

/// Asserts that `placements`, the answer on [`unhealthy_and_busy`] to a non-gang job asking for
/// more than it holds, is one placement of every GPU there that may be given.
#[track_caller]
pub fn assert_every_usable_gpu_taken(placements: &[Placement]) {
    assert_eq!(
        placements.len(),
        1,
        "the non-gang job takes every usable GPU"
    );
    assert_eq!(sorted(&placements[0].gpus), vec![0, 3, 4, 7, 8, 11, 12, 15]);
}

/// Two queues of 8-GPU jobs in which job 1 must be placed first (on one 8-GPU node, only one
/// runs): an urgent job (priority 10, submitted later) behind a normal one, and an earlier
/// submission behind a later one of the same priority.
pub fn priority_queues() -> [Jobs; 2] {
    let urgent = Job {
        priority: 10,
        submit_s: 50.0,
        ..job(1, 8)
    };
    let at = |submit_s| Job {
        submit_s,
        ..job(0, 8)
    };
    [jobs([job(0, 8), urgent]), jobs([at(2.0), at(1.0)])]
}

/// The sorted, distinct `key`s of `gpus` (their nodes, racks or domains).
pub fn distinct(gpus: &[u32], key: impl Fn(u32) -> u32) -> Vec<u32> {
    let mut keys: Vec<u32> = gpus.iter().map(|&g| key(g)).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The nodes `gpus` sit on, sorted.
pub fn nodes_of(snapshot: &Snapshot, gpus: &[u32]) -> Vec<u32> {
    distinct(gpus, |g| snapshot.gpus.node[g as usize])
}

/// The GPUs free for a placement: healthy, not busy, not `taken` during the test.
pub fn free_gpus(snapshot: &Snapshot, taken: &[bool]) -> Vec<u32> {
    (0..snapshot.gpus.len())
        .filter(|&g| snapshot.gpus.is_free(g) && !taken[g])
        .map(|g| g as u32)
        .collect()
}

/// 8 racks x 8 nodes x 8 GPUs with random occupancy (40% busy), failures (5%) and GPUs short of
/// memory (10% with 30000 MiB free); one NVLink domain per node. Three tenants: `a` without a
/// quota, the second with 20 of its 64 GPUs in use, the third with all 5 of its 5 in use.
pub fn mixed_cluster(rng: &mut Rng) -> Snapshot {
    let mut snapshot = cluster(8, 8, 8);
    snapshot.tenants.push(snapshot.tenants[0].clone());
    snapshot.tenants[1].quota_gpus = Some(64);
    snapshot.tenants[1].used_gpus = 20;
    snapshot.tenants[2].quota_gpus = Some(5);
    snapshot.tenants[2].used_gpus = 5;
    edit_gpus(&mut snapshot, .., |gpu| match rng.below(20) {
        0..=7 => gpu.busy = true,
        8 => gpu.healthy = false,
        9..=10 => gpu.memory_free_mib = 30000,
        _ => {}
    });
    snapshot
}

/// `jobs` random jobs of tenants `0..tenants`: 1 to 64 GPUs, 10 GiB to 70 GiB each, three in
/// four gangs, a topology drawn from `topologies`, submitted in the 20 minutes before 10,000 s.
pub fn random_queue(rng: &mut Rng, jobs: usize, tenants: u32, topologies: &[Topology]) -> Jobs {
    (0..jobs)
        .map(|_| Job {
            tenant: rng.below(tenants.into()),
            priority: rng.below(3) as i32 - 1,
            gpus: rng.pick(&[1, 1, 2, 3, 4, 8, 8, 12, 16, 32, 64]),
            memory_per_gpu_mib: rng.pick(&[10000, 40960, 70000]),
            gang: rng.below(4) != 0,
            topology: rng.pick(topologies),
            est_runtime_s: 60.0,
            submit_s: 10_000.0 - rng.below(1200) as f64,
        })
        .collect()
}

/// The benchmark's shape: 64 racks x 8 nodes x 8 GPUs (30% busy, 10% with 30000 MiB free), two
/// tenants, 10,000 queued jobs with topologies drawn from `topologies`, at 10,000 s. Tests check
/// that strategies place validly on it; how fast they do is measured by `gantry bench schedule
/// --plugin <strategy>` (the same cluster and queue size), never asserted in a test.
pub fn benchmark_case(rng: &mut Rng, topologies: &[Topology]) -> (Snapshot, Jobs) {
    let mut snapshot = cluster(64, 8, 8);
    snapshot.now_s = 10_000.0;
    edit_gpus(&mut snapshot, .., |gpu| match rng.below(10) {
        0..=2 => gpu.busy = true,
        3 => gpu.memory_free_mib = 30000,
        _ => {}
    });
    let queue = random_queue(rng, 10_000, 2, topologies);
    (snapshot, queue)
}

/// A small deterministic generator (xorshift64): tests need no dependency, and a seed names the
/// same sequence on every machine.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator for `seed`, spread over the whole word first (never zero).
    pub fn seeded(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u32 {
        (self.next_u64() % n.max(1)) as u32
    }

    /// One of `items`, which must not be empty.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// `n` bytes, the low byte of each next word.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
