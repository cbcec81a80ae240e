use crate::Fairshare;
use crate::backfill::{Release, Reservation, reserve};
use crate::drf::schedule;
use crate::usable::UsableCounts;
use gantry_plugin_sdk::sched::{
    Allocation, ConfigEntry, Job, Jobs, Placement, Snapshot, Strategy, Topology,
};
use gantry_plugin_sdk::testing::{cluster, edit_gpus, job, jobs, occupy};

const GIB: u32 = 1024;

/// Marks `gpus` busy under a running allocation of `tenant` ending at `end_s`, and charges the
/// tenant for them (40 GiB each, like `testing::job`).
fn run(snapshot: &mut Snapshot, tenant: u32, gpus: std::ops::Range<u32>, end_s: f64) {
    occupy(snapshot, gpus.clone());
    let t = &mut snapshot.tenants[tenant as usize];
    t.used_gpus += gpus.len() as u32;
    t.used_memory_mib += gpus.len() as u64 * 40 * GIB as u64;
    snapshot.running.push(Allocation {
        tenant,
        priority: 0,
        gpus: gpus.collect(),
        start_s: 0.0,
        expected_end_s: end_s,
    });
}

fn with_runtime(mut j: Job, est_runtime_s: f64) -> Job {
    j.est_runtime_s = est_runtime_s;
    j
}

fn partial(mut j: Job) -> Job {
    j.gang = false;
    j
}

fn placed_jobs(placements: &[Placement]) -> Vec<u32> {
    placements.iter().map(|p| p.job).collect()
}

/// Every rule the host checks (see `host/src/scheduling/validate.rs`); panics naming the first
/// broken one.
fn validate(snapshot: &Snapshot, queue: &Jobs, placements: &[Placement]) {
    assert!(placements.len() <= queue.len());
    let mut job_seen = vec![false; queue.len()];
    let mut gpu_taken = vec![false; snapshot.gpus.len()];
    let mut tenant_taken = vec![0u64; snapshot.tenants.len()];
    for p in placements {
        let job = queue.get(p.job as usize).expect("job in queue");
        assert!(!job_seen[p.job as usize], "job {} placed twice", p.job);
        job_seen[p.job as usize] = true;
        let n = p.gpus.len() as u32;
        assert!(n > 0, "job {} gets no GPUs", p.job);
        if job.gang {
            assert_eq!(n, job.gpus, "gang job {} incomplete", p.job);
        }
        assert!(n <= job.gpus, "job {} got {n} of {}", p.job, job.gpus);
        for &g in &p.gpus {
            let gpu = snapshot.gpus.get(g as usize).expect("GPU exists");
            assert!(gpu.healthy, "GPU {g} unhealthy");
            assert!(!gpu.busy, "GPU {g} busy");
            assert!(!gpu_taken[g as usize], "GPU {g} given twice");
            gpu_taken[g as usize] = true;
            assert!(
                gpu.memory_free_mib >= job.memory_per_gpu_mib,
                "GPU {g}: {} MiB free, job {} needs {}",
                gpu.memory_free_mib,
                p.job,
                job.memory_per_gpu_mib
            );
        }
        let t = job.tenant as usize;
        let tenant = snapshot.tenants.get(t).expect("tenant exists");
        tenant_taken[t] += n as u64;
        if let Some(quota) = tenant.quota_gpus {
            assert!(
                tenant.used_gpus as u64 + tenant_taken[t] <= quota as u64,
                "tenant {t} over quota {quota}"
            );
        }
    }
}

/// Schedules and checks the answer against the host's rules.
fn checked(snapshot: &Snapshot, queue: &Jobs) -> Vec<Placement> {
    let placements = schedule(snapshot, queue);
    validate(snapshot, queue, &placements);
    placements
}

#[test]
fn configure_accepts_no_keys() {
    assert!(Fairshare::configure(Vec::new()).is_ok());
    let entry = ConfigEntry {
        key: "weight".into(),
        value: "2".into(),
    };
    assert!(Fairshare::configure(vec![entry]).is_err());
}

#[test]
fn empty_queue_or_full_cluster_places_nothing() {
    let mut snapshot = cluster(1, 1, 8);
    assert!(checked(&snapshot, &jobs([])).is_empty());
    occupy(&mut snapshot, 0..8);
    assert!(checked(&snapshot, &jobs([job(0, 1)])).is_empty());
}

#[test]
fn under_served_tenant_goes_first_when_only_one_fits() {
    let mut snapshot = cluster(1, 1, 8);
    run(&mut snapshot, 0, 0..4, 1000.0);
    // Tenant a submitted first and has the same priority, but already holds half the cluster.
    let mut late = job(1, 4);
    late.submit_s = 100.0;
    let placements = checked(&snapshot, &jobs([job(0, 4), late]));
    assert_eq!(placed_jobs(&placements), vec![1]);
    assert_eq!(placements[0].gpus, vec![4, 5, 6, 7]);
}

#[test]
fn tenants_take_turns_as_usage_grows_within_the_cycle() {
    let snapshot = cluster(1, 2, 8);
    // Tenant a's jobs come first in the queue, yet each placement raises its share.
    let queue = jobs([job(0, 4), job(0, 4), job(1, 4), job(1, 4)]);
    let placements = checked(&snapshot, &queue);
    assert_eq!(placed_jobs(&placements), vec![0, 2, 1, 3]);
}

/// Ties of equal shares went to the lowest tenant index: on a cluster one job fills, each job
/// ending before the next cycle, the first tenant took every turn while it had jobs, however
/// long the second's had waited. A tie goes to the tenant whose next job comes first (priority,
/// then submission).
#[test]
fn equal_shares_go_to_the_tenant_whose_job_waited_longest_not_the_first_listed() {
    let snapshot = cluster(1, 1, 8);
    let mut older = job(1, 8);
    older.submit_s = 1.0;
    let mut newer = job(0, 8);
    newer.submit_s = 5.0;
    // Tenant b's job was submitted first: whatever the queue's or the tenants' order, it goes.
    assert_eq!(
        placed_jobs(&checked(&snapshot, &jobs([newer, older]))),
        vec![1]
    );
    assert_eq!(
        placed_jobs(&checked(&snapshot, &jobs([older, newer]))),
        vec![0]
    );
    // Priority comes before waiting, as within a tenant.
    let mut urgent = job(0, 8);
    urgent.submit_s = 9.0;
    urgent.priority = 3;
    let mut waited = job(1, 8);
    waited.submit_s = 1.0;
    assert_eq!(
        placed_jobs(&checked(&snapshot, &jobs([waited, urgent]))),
        vec![1]
    );
}

#[test]
fn weights_change_the_order() {
    let mut snapshot = cluster(1, 2, 8);
    run(&mut snapshot, 0, 0..4, 1000.0);
    run(&mut snapshot, 1, 4..8, 1000.0);
    occupy(&mut snapshot, 8..12); // only 4 free
    let queue = jobs([job(0, 4), job(1, 4)]);
    // Equal shares: the tie goes to the tenant whose next job was submitted first.
    assert_eq!(placed_jobs(&checked(&snapshot, &queue)), vec![0]);
    // Twice the weight halves b's share.
    snapshot.tenants[1].weight = 2.0;
    assert_eq!(placed_jobs(&checked(&snapshot, &queue)), vec![1]);
    // A weight that is not positive counts as 1.0, so the tie is back.
    snapshot.tenants[1].weight = 0.0;
    assert_eq!(placed_jobs(&checked(&snapshot, &queue)), vec![0]);
    snapshot.tenants[1].weight = f64::NAN;
    assert_eq!(placed_jobs(&checked(&snapshot, &queue)), vec![0]);
}

#[test]
fn memory_counts_in_the_dominant_share() {
    let mut snapshot = cluster(1, 2, 8); // 16 GPUs, 1280 GiB
    occupy(&mut snapshot, 0..8);
    // Tenant a holds 2 GPUs (12.5%) but its allocations asked for 60% of the memory.
    snapshot.tenants[0].used_gpus = 2;
    snapshot.tenants[0].used_memory_mib = 768 * GIB as u64;
    // Tenant b holds 4 GPUs (25%) with little memory.
    snapshot.tenants[1].used_gpus = 4;
    snapshot.tenants[1].used_memory_mib = 40 * GIB as u64;
    let queue = jobs([job(0, 8), job(1, 8)]);
    assert_eq!(placed_jobs(&checked(&snapshot, &queue)), vec![1]);
    // Counting GPUs only, a would be the lighter tenant.
    snapshot.tenants[0].used_memory_mib = 20 * GIB as u64;
    assert_eq!(placed_jobs(&checked(&snapshot, &queue)), vec![0]);
}

#[test]
fn memory_share_counts_this_cycles_placements() {
    let mut snapshot = cluster(1, 2, 8);
    edit_gpus(&mut snapshot, 8.., |gpu| {
        gpu.memory_total_mib = 20 * GIB;
        gpu.memory_free_mib = 20 * GIB;
    });
    // 16 GPUs, 800 GiB. a's first job: 2 GPUs (12.5%) but 160 GiB (20%).
    let mut heavy = job(0, 2);
    heavy.memory_per_gpu_mib = 80 * GIB;
    let mut light = job(1, 2);
    light.memory_per_gpu_mib = 10 * GIB;
    let queue = jobs([heavy, job(0, 1), light, job(1, 1)]);
    // After it, b (12.5%, then 18.75%) stays below a (20%) for both of its jobs; counting GPUs
    // only, a's second job would come before b's second.
    let placements = checked(&snapshot, &queue);
    assert_eq!(placed_jobs(&placements), vec![0, 2, 3, 1]);
}

#[test]
fn backfill_lets_short_jobs_run_but_not_long_ones() {
    let mut snapshot = cluster(1, 2, 8);
    run(&mut snapshot, 1, 0..8, 1000.0);
    run(&mut snapshot, 1, 8..12, 5000.0);
    // 4 GPUs free now, 12 at t = 1000. Tenant a has no usage, so its big job goes first, does
    // not fit, and is reserved with a shadow time of 1000 and nothing extra.
    let big = job(0, 12);
    let long = with_runtime(job(1, 2), 3600.0);
    let short = with_runtime(job(1, 2), 500.0);
    let placements = checked(&snapshot, &jobs([big, long, short]));
    assert_eq!(placed_jobs(&placements), vec![2]);
    // Without the big job, the long one would have run.
    let placements = checked(&snapshot, &jobs([long, short]));
    assert_eq!(placed_jobs(&placements), vec![0, 1]);
}

#[test]
fn backfill_ending_exactly_at_the_shadow_time_is_in_time() {
    let mut snapshot = cluster(1, 2, 8);
    snapshot.now_s = 100.0;
    run(&mut snapshot, 1, 0..12, 1000.0);
    let queue = jobs([job(0, 16), with_runtime(job(1, 4), 900.0)]);
    assert_eq!(placed_jobs(&checked(&snapshot, &queue)), vec![1]);
    let queue = jobs([job(0, 16), with_runtime(job(1, 4), 900.5)]);
    assert!(checked(&snapshot, &queue).is_empty());
}

#[test]
fn backfill_may_use_the_extra_gpus() {
    let mut snapshot = cluster(1, 2, 8);
    run(&mut snapshot, 1, 0..8, 1000.0);
    run(&mut snapshot, 1, 8..12, 5000.0);
    // The big job needs 10 of the 12 GPUs free at t = 1000: 2 extra.
    let queue = jobs([
        job(0, 10),
        with_runtime(job(1, 2), 3600.0),
        with_runtime(job(1, 1), 3600.0),
        with_runtime(job(1, 1), 100.0),
    ]);
    let placements = checked(&snapshot, &queue);
    // The first long job takes both extra GPUs; the second would delay the big job; the short
    // one ends in time.
    assert_eq!(placed_jobs(&placements), vec![1, 3]);
}

#[test]
fn non_gang_backfill_takes_at_most_the_extra() {
    let mut snapshot = cluster(1, 2, 8);
    run(&mut snapshot, 1, 0..8, 1000.0);
    run(&mut snapshot, 1, 8..12, 5000.0);
    let queue = jobs([job(0, 9), partial(with_runtime(job(1, 4), 3600.0))]);
    let placements = checked(&snapshot, &queue);
    assert_eq!(placed_jobs(&placements), vec![1]);
    assert_eq!(
        placements[0].gpus.len(),
        3,
        "12 free at the shadow time, 9 reserved"
    );
}

#[test]
fn this_cycles_placements_count_as_releases() {
    let mut snapshot = cluster(1, 2, 8);
    run(&mut snapshot, 1, 0..8, 1e9);
    // Tenant a's first job takes 4 of the 8 free GPUs for 100 s; its 8-GPU job then waits for
    // them (shadow t = 100), so b's 4-GPU job may run only if it ends by then.
    let queue = jobs([
        with_runtime(job(0, 4), 100.0),
        job(0, 8),
        with_runtime(job(1, 4), 3600.0),
        with_runtime(job(1, 2), 50.0),
    ]);
    let placements = checked(&snapshot, &queue);
    assert_eq!(placed_jobs(&placements), vec![0, 3]);
}

#[test]
fn job_larger_than_the_cluster_gets_no_reservation() {
    let mut snapshot = cluster(1, 2, 8);
    run(&mut snapshot, 1, 0..8, 1000.0);
    let queue = jobs([job(0, 17), with_runtime(job(1, 8), 3600.0)]);
    assert_eq!(placed_jobs(&checked(&snapshot, &queue)), vec![1]);
}

#[test]
fn gpus_without_the_memory_do_not_count_for_the_reservation() {
    let mut snapshot = cluster(1, 2, 8);
    run(&mut snapshot, 1, 0..8, 1000.0);
    run(&mut snapshot, 1, 8..12, 2000.0);
    edit_gpus(&mut snapshot, 0..8, |gpu| {
        gpu.memory_free_mib = 20 * GIB; // node 0 too small for 40 GiB jobs
    });
    // The 8-GPU job can only use node 1: 4 free now, 8 at t = 2000, not t = 1000.
    let queue = jobs([job(0, 8), with_runtime(job(1, 4), 1500.0)]);
    assert_eq!(placed_jobs(&checked(&snapshot, &queue)), vec![1]);
    let queue = jobs([job(0, 8), with_runtime(job(1, 4), 2500.0)]);
    assert!(checked(&snapshot, &queue).is_empty());
}

#[test]
fn quota_is_respected_and_a_quota_blocked_job_reserves_nothing() {
    let mut snapshot = cluster(1, 1, 8);
    run(&mut snapshot, 1, 0..4, 1000.0);
    snapshot.tenants[0].quota_gpus = Some(4);
    // a's 6-GPU job is over quota (and too big for what is free). Reserved, it would keep b's
    // long job out; dropped for quota, it does not.
    let queue = jobs([job(0, 6), with_runtime(job(1, 4), 3600.0)]);
    let placements = checked(&snapshot, &queue);
    assert_eq!(placed_jobs(&placements), vec![1]);
}

#[test]
fn quota_caps_gang_and_partial_jobs() {
    let mut snapshot = cluster(1, 2, 8);
    snapshot.tenants[0].quota_gpus = Some(6);
    snapshot.tenants[0].used_gpus = 2;
    let queue = jobs([job(0, 3), job(0, 2), partial(job(0, 3)), job(0, 1)]);
    let placements = checked(&snapshot, &queue);
    // 4 left: the 3-GPU gang, the 2-GPU gang is over, the partial job gets the last one.
    assert_eq!(placed_jobs(&placements), vec![0, 2]);
    assert_eq!(placements[1].gpus.len(), 1);
}

#[test]
fn non_gang_job_takes_what_is_free() {
    let mut snapshot = cluster(1, 2, 8);
    occupy(&mut snapshot, 0..5);
    occupy(&mut snapshot, 8..14);
    let placements = checked(&snapshot, &jobs([partial(job(0, 8))]));
    assert_eq!(placements.len(), 1);
    assert_eq!(placements[0].gpus.len(), 5);
    // A request that fits whole goes to one node by best fit.
    let placements = checked(&snapshot, &jobs([partial(job(0, 2))]));
    assert_eq!(placements[0].gpus, vec![14, 15]);
}

#[test]
fn non_gang_job_blocked_for_capacity_gets_the_reservation() {
    let mut snapshot = cluster(1, 2, 8);
    run(&mut snapshot, 1, 0..8, 1000.0);
    edit_gpus(&mut snapshot, 8.., |gpu| {
        gpu.memory_free_mib = 20 * GIB;
    });
    // Node 1 is free but too small for a's 80 GiB job: it reserves 2 of the 8 GPUs of node 0
    // that free up at t = 1000, leaving 6 extra.
    let mut hungry = partial(job(0, 2));
    hungry.memory_per_gpu_mib = 80 * GIB;
    let small = |gpus, est_runtime_s| {
        let mut j = with_runtime(job(1, gpus), est_runtime_s);
        j.memory_per_gpu_mib = 10 * GIB;
        j
    };
    let queue = jobs([hungry, small(4, 3600.0), small(4, 3600.0), small(2, 100.0)]);
    let placements = checked(&snapshot, &queue);
    // The first long job takes 4 of the 6 extra; the second would need 4 of the 2 left.
    assert_eq!(placed_jobs(&placements), vec![1, 3]);
}

#[test]
fn invalid_jobs_are_ignored() {
    let snapshot = cluster(1, 1, 8);
    let mut huge_memory = job(0, 1);
    huge_memory.memory_per_gpu_mib = 100 * GIB;
    let queue = jobs([job(0, 0), job(7, 1), huge_memory, job(1, 1)]);
    assert_eq!(placed_jobs(&checked(&snapshot, &queue)), vec![3]);
}

#[test]
fn priority_orders_jobs_within_a_tenant() {
    let snapshot = cluster(1, 1, 8);
    let mut urgent = job(0, 8);
    urgent.priority = 5;
    urgent.submit_s = 10.0;
    let placements = checked(&snapshot, &jobs([job(0, 8), urgent]));
    assert_eq!(placed_jobs(&placements), vec![1]);
}

#[test]
fn reserve_finds_the_shadow_time_and_extra() {
    let mut snapshot = cluster(1, 2, 8);
    snapshot.now_s = 10.0;
    run(&mut snapshot, 1, 0..4, 300.0);
    run(&mut snapshot, 1, 4..8, 100.0);
    run(&mut snapshot, 1, 8..10, 100.0);
    run(&mut snapshot, 1, 10..12, f64::INFINITY);
    let free = UsableCounts::free(&snapshot);
    fn releases(s: &Snapshot) -> Vec<Release<'_>> {
        s.running
            .iter()
            .map(|a| Release {
                end_s: a.expected_end_s,
                gpus: &a.gpus,
            })
            .collect()
    }
    let want = |job, shadow_s, extra| {
        Some(Reservation {
            job,
            shadow_s,
            extra,
        })
    };
    // 4 free now; both allocations ending at 100 count together: 10, then 14 at 300.
    assert_eq!(
        reserve(&snapshot, &free, releases(&snapshot), 0, 3, 0),
        want(0, 10.0, 1)
    );
    assert_eq!(
        reserve(&snapshot, &free, releases(&snapshot), 0, 5, 0),
        want(0, 100.0, 5)
    );
    assert_eq!(
        reserve(&snapshot, &free, releases(&snapshot), 0, 12, 0),
        want(0, 300.0, 2)
    );
    // The allocation that never ends is no help.
    assert_eq!(
        reserve(&snapshot, &free, releases(&snapshot), 0, 15, 0),
        None
    );
    // An overdue allocation is expected now, not in the past.
    snapshot.running[1].expected_end_s = 5.0;
    snapshot.running[2].expected_end_s = 5.0;
    assert_eq!(
        reserve(&snapshot, &free, releases(&snapshot), 0, 5, 0),
        want(0, 10.0, 5)
    );
}

#[test]
fn usable_counts_follow_memory_and_removals() {
    let mut snapshot = cluster(1, 2, 4);
    for (g, memory) in [(0, 10), (1, 20), (2, 20), (3, 40)] {
        snapshot.gpus.memory_free_mib[g] = memory * GIB;
    }
    snapshot.gpus.healthy[5] = 0;
    occupy(&mut snapshot, [6]);
    let mut free = UsableCounts::free(&snapshot);
    assert_eq!(free.total(), 6);
    assert_eq!(free.at_least(0), 6);
    assert_eq!(free.at_least(20 * GIB), 5);
    assert_eq!(free.at_least(20 * GIB + 1), 3);
    assert_eq!(free.at_least(80 * GIB), 2);
    assert_eq!(free.at_least(80 * GIB + 1), 0);
    free.remove(&[1, 4, 6, 99]);
    assert!(!free.contains(1) && free.contains(2));
    assert_eq!(free.at_least(20 * GIB), 3);
    assert_eq!(free.at_least(0), 4);
    // Reachable: the free ones plus GPU 6 once an allocation is expected to release it.
    assert_eq!(UsableCounts::reachable(&snapshot).total(), 6);
    snapshot.running.push(Allocation {
        tenant: 0,
        priority: 0,
        gpus: vec![5, 6],
        start_s: 0.0,
        expected_end_s: 50.0,
    });
    assert_eq!(UsableCounts::reachable(&snapshot).total(), 7);
    snapshot.running[0].expected_end_s = f64::INFINITY;
    assert_eq!(UsableCounts::reachable(&snapshot).total(), 6);
}

/// A small deterministic generator (SplitMix64), to keep the crate free of dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u32) -> u32 {
        (self.next() % n as u64) as u32
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < percent
    }
}

/// A cluster of `racks` x `nodes_per_rack` 8-GPU nodes with random occupancy, health, memory,
/// quotas, weights and running allocations, and a queue of `jobs` mixed jobs.
fn random_case(seed: u64, racks: u32, nodes_per_rack: u32, jobs: usize) -> (Snapshot, Jobs) {
    let mut rng = Rng(seed);
    let mut snapshot = cluster(racks, nodes_per_rack, 8);
    snapshot.now_s = rng.below(10_000) as f64;
    let gpus = snapshot.gpus.len() as u32;
    let mut g = 0;
    while g < gpus {
        let run_len = (1 + rng.below(8)).min(gpus - g);
        if rng.chance(50) {
            let tenant = rng.below(2);
            let end = snapshot.now_s + rng.below(5000) as f64 - 500.0;
            run(&mut snapshot, tenant, g..g + run_len, end);
        }
        g += run_len;
    }
    edit_gpus(&mut snapshot, .., |gpu| {
        if rng.chance(3) {
            gpu.healthy = false;
        }
        if rng.chance(20) {
            gpu.memory_free_mib = [10, 30, 45, 70][rng.below(4) as usize] * GIB;
        }
    });
    for tenant in &mut snapshot.tenants {
        tenant.weight = [1.0, 2.0, 0.5, 0.0][rng.below(4) as usize];
        // Some quotas leave room, a few are already exceeded by the running allocations.
        if rng.chance(50) {
            let room = rng.below(gpus / 4);
            tenant.quota_gpus = Some(if rng.chance(20) {
                tenant.used_gpus.saturating_sub(room)
            } else {
                tenant.used_gpus + room
            });
        }
    }
    let queue = (0..jobs)
        .map(|i| Job {
            tenant: rng.below(2),
            priority: rng.below(3) as i32,
            gpus: [1, 1, 2, 4, 8, 8, 16, 24, 64][rng.below(9) as usize],
            memory_per_gpu_mib: [0, 10, 20, 40, 80][rng.below(5) as usize] * GIB,
            gang: rng.chance(70),
            topology: Topology::None,
            est_runtime_s: [30.0, 600.0, 3600.0, 86400.0][rng.below(4) as usize],
            submit_s: i as f64,
        })
        .collect();
    (snapshot, queue)
}

#[test]
fn random_cases_pass_every_host_rule() {
    let mut placed = 0;
    for seed in 0..40 {
        let (snapshot, queue) = random_case(seed, 8, 8, 300);
        let placements = checked(&snapshot, &queue);
        assert_eq!(placements, schedule(&snapshot, &queue), "deterministic");
        placed += placements.len();
    }
    assert!(
        placed > 40,
        "the cases should not all be hopeless: {placed} placements"
    );
}

#[test]
fn large_cycle_is_valid() {
    // The benchmark's size: 4,096 GPUs and 10,000 jobs.
    let (snapshot, queue) = random_case(7, 16, 32, 10_000);
    assert!(!checked(&snapshot, &queue).is_empty());
    // And an empty cluster, where the fair loop places thousands of jobs.
    let mut empty = cluster(16, 32, 8);
    empty.tenants[1].weight = 3.0;
    let placements = checked(&empty, &queue);
    assert!(placements.len() > 100, "{}", placements.len());
}
