use crate::Spread;
use crate::spreading::spread;
use gantry_plugin_sdk::sched::{ConfigEntry, Job, Jobs, Placement, Snapshot, Strategy, Topology};
use gantry_plugin_sdk::testing::{cluster, edit_gpus, job, jobs, occupy};

/// The host's checks on an answer (`host/src/scheduling/validate.rs`), restated so every test
/// can assert that the plugin's answer would be accepted.
fn validate(snapshot: &Snapshot, queue: &Jobs, placements: &[Placement]) -> Result<(), String> {
    let mut job_seen = vec![false; queue.len()];
    let mut gpu_taken = vec![false; snapshot.gpus.len()];
    let mut tenant_taken = vec![0u64; snapshot.tenants.len()];
    for (i, p) in placements.iter().enumerate() {
        let job = queue
            .get(p.job as usize)
            .ok_or(format!("placement {i}: job {} not in queue", p.job))?;
        if std::mem::replace(&mut job_seen[p.job as usize], true) {
            return Err(format!("placement {i}: job {} placed twice", p.job));
        }
        let n = p.gpus.len() as u32;
        if n == 0 {
            return Err(format!("placement {i}: no GPUs"));
        }
        if job.gang && n != job.gpus {
            return Err(format!("placement {i}: gang of {} got {n}", job.gpus));
        }
        if n > job.gpus {
            return Err(format!("placement {i}: asked {} got {n}", job.gpus));
        }
        for &g in &p.gpus {
            let gpu = snapshot
                .gpus
                .get(g as usize)
                .ok_or(format!("placement {i}: GPU {g} does not exist"))?;
            if !gpu.healthy {
                return Err(format!("placement {i}: GPU {g} unhealthy"));
            }
            if gpu.busy {
                return Err(format!("placement {i}: GPU {g} busy"));
            }
            if std::mem::replace(&mut gpu_taken[g as usize], true) {
                return Err(format!("placement {i}: GPU {g} given twice"));
            }
            if gpu.memory_free_mib < job.memory_per_gpu_mib {
                return Err(format!("placement {i}: GPU {g} lacks memory"));
            }
        }
        let t = job.tenant as usize;
        let tenant = snapshot
            .tenants
            .get(t)
            .ok_or(format!("placement {i}: unknown tenant {t}"))?;
        tenant_taken[t] += n as u64;
        if let Some(quota) = tenant.quota_gpus
            && tenant.used_gpus as u64 + tenant_taken[t] > quota as u64
        {
            return Err(format!("placement {i}: tenant {t} over quota {quota}"));
        }
    }
    Ok(())
}

/// Runs the strategy and asserts the host would accept the answer.
fn run(snapshot: &Snapshot, queue: &Jobs) -> Vec<Placement> {
    let placements = spread(snapshot, queue);
    if let Err(e) = validate(snapshot, queue, &placements) {
        panic!("invalid answer: {e}\n{placements:?}");
    }
    placements
}

fn partial(tenant: u32, gpus: u32) -> Job {
    Job {
        gang: false,
        ..job(tenant, gpus)
    }
}

fn nodes_of(snapshot: &Snapshot, gpus: &[u32]) -> Vec<u32> {
    let mut nodes: Vec<u32> = gpus
        .iter()
        .map(|&g| snapshot.gpus.node[g as usize])
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes
}

#[test]
fn small_jobs_go_to_the_emptiest_node() {
    let mut snapshot = cluster(1, 3, 8);
    occupy(&mut snapshot, 0..6); // node 0: 2 free
    occupy(&mut snapshot, 8..12); // node 1: 4 free; node 2: 8 free
    let placements = run(&snapshot, &jobs([job(0, 2), job(0, 3), job(0, 4)]));
    assert_eq!(placements.len(), 3);
    assert_eq!(placements[0].gpus, vec![16, 17], "node 2 is the emptiest");
    assert_eq!(
        placements[1].gpus,
        vec![18, 19, 20],
        "node 2 still has 6 free"
    );
    assert_eq!(
        placements[2].gpus,
        vec![12, 13, 14, 15],
        "node 1 now has the most"
    );
}

#[test]
fn ties_go_to_the_emptier_rack_then_the_lowest_node() {
    let mut snapshot = cluster(2, 2, 8);
    occupy(&mut snapshot, 28..32); // node 3 (rack 1): 4 free; nodes 0, 1, 2: 8 free
    let placements = run(
        &snapshot,
        &jobs([job(0, 1), job(0, 1), job(0, 1), job(0, 1)]),
    );
    let nodes: Vec<u32> = placements
        .iter()
        .map(|p| snapshot.gpus.node[p.gpus[0] as usize])
        .collect();
    // Rack 0 has 16 free against 12: its nodes first, lowest index first. Then node 2 is the
    // only one with 8 free; then nodes 1 and 2 tie at 7 and rack 0 (14 free) still has more.
    assert_eq!(nodes, vec![0, 1, 2, 0]);
}

#[test]
fn gang_larger_than_any_node_takes_whole_nodes_then_best_fits() {
    let mut snapshot = cluster(1, 3, 8);
    occupy(&mut snapshot, 8..13); // node 1: 3 free
    let placements = run(&snapshot, &jobs([job(0, 11)]));
    assert_eq!(placements.len(), 1);
    let mut gpus = placements[0].gpus.clone();
    gpus.sort_unstable();
    let expected: Vec<u32> = (0..8).chain(13..16).collect();
    assert_eq!(gpus, expected, "node 0 whole, the remaining 3 on node 1");
}

#[test]
fn gang_that_cannot_fit_is_skipped_and_later_jobs_still_run() {
    let snapshot = cluster(1, 2, 8);
    let placements = run(&snapshot, &jobs([job(0, 17), job(1, 16), job(1, 1)]));
    assert_eq!(placements.len(), 1);
    assert_eq!(
        placements[0].job, 1,
        "the 16-GPU gang fits after the 17 is skipped"
    );
}

#[test]
fn non_gang_job_spreads_one_gpu_per_node_round_robin() {
    let mut snapshot = cluster(1, 3, 4);
    occupy(&mut snapshot, [0]); // node 0: 1, 2, 3 free
    occupy(&mut snapshot, [8, 9]); // node 2: 10, 11 free; node 1: 4..8 free
    let placements = run(&snapshot, &jobs([partial(0, 6)]));
    assert_eq!(placements[0].gpus, vec![4, 1, 10, 5, 2, 11]);

    // Capped by what is usable.
    let placements = run(&snapshot, &jobs([partial(0, 20)]));
    assert_eq!(placements[0].gpus.len(), 9);

    // Capped by the quota.
    let mut limited = snapshot.clone();
    limited.tenants[0].quota_gpus = Some(7);
    limited.tenants[0].used_gpus = 2;
    let placements = run(&limited, &jobs([partial(0, 6)]));
    assert_eq!(placements[0].gpus, vec![4, 1, 10, 5, 2]);
}

#[test]
fn non_gang_job_that_fits_on_a_node_stays_on_the_emptiest_node() {
    let mut snapshot = cluster(1, 3, 4);
    occupy(&mut snapshot, [0]);
    let placements = run(&snapshot, &jobs([partial(0, 4)]));
    assert_eq!(nodes_of(&snapshot, &placements[0].gpus), vec![1]);
}

#[test]
fn quota_is_respected() {
    let mut snapshot = cluster(1, 2, 8);
    snapshot.tenants[0].quota_gpus = Some(4);
    snapshot.tenants[0].used_gpus = 1;
    let queue = jobs([job(0, 4), job(0, 3), job(0, 1), partial(0, 2), job(1, 8)]);
    let placements = run(&snapshot, &queue);
    let jobs: Vec<u32> = placements.iter().map(|p| p.job).collect();
    assert_eq!(jobs, vec![1, 4], "only 3 GPUs of quota left, then none");
}

#[test]
fn memory_is_respected() {
    let mut snapshot = cluster(1, 2, 8);
    edit_gpus(&mut snapshot, ..6, |gpu| {
        gpu.memory_free_mib = 20000; // node 0: 8 free, only 6 and 7 hold 40 GiB
    });
    occupy(&mut snapshot, 8..11); // node 1: 5 free
    let mut small = job(1, 8);
    small.memory_per_gpu_mib = 10000;
    let queue = jobs([job(0, 4), job(0, 8), small]);
    let placements = run(&snapshot, &queue);
    assert_eq!(placements.len(), 2, "{placements:?}");
    assert_eq!(placements[0].job, 0);
    assert_eq!(
        nodes_of(&snapshot, &placements[0].gpus),
        vec![1],
        "node 0 has more free GPUs but only 2 usable"
    );
    assert_eq!(
        placements[1].job, 2,
        "the 8-GPU 40 GiB gang has only 3 usable GPUs"
    );
    assert_eq!(placements[1].gpus, (0..8).collect::<Vec<u32>>());
}

#[test]
fn unhealthy_and_busy_gpus_are_never_used() {
    let mut snapshot = cluster(2, 2, 4);
    for g in [1, 5, 9, 13] {
        snapshot.gpus.healthy[g] = 0;
    }
    occupy(&mut snapshot, [2, 6, 10, 14]);
    let placements = run(&snapshot, &jobs([partial(0, 16), job(1, 1)]));
    assert_eq!(
        placements.len(),
        1,
        "the non-gang job takes every usable GPU"
    );
    let mut gpus = placements[0].gpus.clone();
    gpus.sort_unstable();
    assert_eq!(gpus, vec![0, 3, 4, 7, 8, 11, 12, 15]);
}

#[test]
fn higher_priority_goes_first() {
    let snapshot = cluster(1, 1, 8);
    let mut urgent = job(1, 8);
    urgent.priority = 10;
    urgent.submit_s = 50.0;
    let mut early = job(0, 8);
    early.submit_s = 1.0;
    let mut late = job(0, 8);
    late.submit_s = 2.0;
    assert_eq!(run(&snapshot, &jobs([job(0, 8), urgent]))[0].job, 1);
    assert_eq!(
        run(&snapshot, &jobs([late, early]))[0].job,
        1,
        "earlier submission first"
    );
}

#[test]
fn empty_inputs_give_no_placements() {
    assert!(run(&cluster(1, 1, 8), &jobs([])).is_empty());
    assert!(run(&cluster(0, 0, 0), &jobs([job(0, 1)])).is_empty());
    let mut full = cluster(1, 1, 8);
    occupy(&mut full, 0..8);
    assert!(run(&full, &jobs([partial(0, 1)])).is_empty());
}

#[test]
fn configure_accepts_no_keys() {
    assert!(Spread::configure(Vec::new()).is_ok());
    let entry = ConfigEntry {
        key: "mode".into(),
        value: "fast".into(),
    };
    assert!(Spread::configure(vec![entry]).is_err());
}

/// A small deterministic generator (xorshift), so the test needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u32 {
        (self.next() % n) as u32
    }
}

#[test]
fn mixed_workload_on_64_nodes_passes_the_host_checks() {
    for seed in 1..=20u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
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
        let queue: Jobs = (0..300)
            .map(|i| Job {
                tenant: rng.below(3),
                priority: rng.below(3) as i32 - 1,
                gpus: [1, 1, 2, 4, 8, 8, 12, 16, 32, 64][rng.below(10) as usize],
                memory_per_gpu_mib: [10000, 40960, 70000][rng.below(3) as usize],
                gang: rng.below(4) != 0,
                topology: Topology::None,
                est_runtime_s: 60.0,
                submit_s: i as f64,
            })
            .collect();
        let placements = run(&snapshot, &queue);
        assert!(!placements.is_empty(), "seed {seed}");
        assert_eq!(placements, spread(&snapshot, &queue), "deterministic");
    }
}

#[test]
fn emptiest_node_matches_a_brute_force_search_as_gpus_are_taken() {
    let mut rng = Rng(7);
    let mut snapshot = cluster(4, 4, 8);
    edit_gpus(&mut snapshot, .., |gpu| match rng.below(10) {
        0..=2 => gpu.busy = true,
        3..=4 => gpu.memory_free_mib = 30000,
        _ => {}
    });
    let mut state = crate::spreading::State::new(&snapshot);
    let mut taken = vec![false; snapshot.gpus.len()];
    loop {
        for memory in [10000, 40960, 90000] {
            // usable, rack free, node: the documented order.
            let rack_free = |rack: u32| {
                snapshot
                    .gpus
                    .iter()
                    .enumerate()
                    .filter(|(g, gpu)| gpu.rack == rack && !gpu.busy && !taken[*g])
                    .count() as u32
            };
            let expected = (0..16u32)
                .map(|node| {
                    let usable = snapshot
                        .gpus
                        .iter()
                        .enumerate()
                        .filter(|(g, gpu)| {
                            gpu.node == node
                                && !gpu.busy
                                && !taken[*g]
                                && gpu.memory_free_mib >= memory
                        })
                        .count() as u32;
                    (usable, rack_free(node / 4), std::cmp::Reverse(node))
                })
                .filter(|k| k.0 > 0)
                .max()
                .map(|(usable, _, node)| (node.0, usable));
            assert_eq!(state.emptiest_node(memory), expected, "memory {memory}");
        }
        let free: Vec<u32> = (0..snapshot.gpus.len() as u32)
            .filter(|&g| (snapshot.gpus.busy[g as usize] == 0) && !taken[g as usize])
            .collect();
        if free.is_empty() {
            break;
        }
        let gpu = free[rng.below(free.len() as u64) as usize];
        taken[gpu as usize] = true;
        state.take(0, &[gpu]);
    }
    assert_eq!(state.index.total_free(), 0);
}

#[test]
fn ten_thousand_jobs_on_4096_gpus_stay_valid() {
    // The benchmark's shape: 64 racks x 8 nodes x 8 GPUs, 10,000 pending jobs.
    let mut rng = Rng(3);
    let mut snapshot = cluster(64, 8, 8);
    edit_gpus(&mut snapshot, .., |gpu| match rng.below(10) {
        0..=2 => gpu.busy = true,
        3 => gpu.memory_free_mib = 30000,
        _ => {}
    });
    let queue: Jobs = (0..10_000)
        .map(|i| Job {
            tenant: rng.below(2),
            priority: rng.below(3) as i32 - 1,
            gpus: [1, 1, 2, 4, 8, 8, 12, 16, 32, 64][rng.below(10) as usize],
            memory_per_gpu_mib: [10000, 40960, 70000][rng.below(3) as usize],
            gang: rng.below(4) != 0,
            topology: Topology::None,
            est_runtime_s: 60.0,
            submit_s: i as f64,
        })
        .collect();
    let start = std::time::Instant::now();
    let placements = run(&snapshot, &queue);
    let elapsed = start.elapsed();
    eprintln!(
        "10,000 jobs: {} placements in {elapsed:?}",
        placements.len()
    );
    assert!(!placements.is_empty());
    // Generous even for an unoptimised debug build; catches quadratic blow-ups.
    assert!(elapsed.as_secs() < 20, "took {elapsed:?}");
}
