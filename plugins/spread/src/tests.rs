use crate::Spread;
use crate::spreading::spread;
use gantry_plugin_sdk::sched::{ConfigEntry, Job, Jobs, Placement, Snapshot, Strategy, Topology};
use gantry_plugin_sdk::testing::{
    Rng, assert_every_usable_gpu_taken, benchmark_case, checked, cluster, edit_gpus, free_gpus,
    job, jobs, mixed_cluster, nodes_of, occupy, priority_queues, random_queue, sorted,
    unhealthy_and_busy,
};

/// Runs the strategy and asserts the host would accept the answer.
fn run(snapshot: &Snapshot, queue: &Jobs) -> Vec<Placement> {
    checked(snapshot, queue, spread(snapshot, queue))
}

fn partial(tenant: u32, gpus: u32) -> Job {
    Job {
        gang: false,
        ..job(tenant, gpus)
    }
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
    let expected: Vec<u32> = (0..8).chain(13..16).collect();
    assert_eq!(
        sorted(&placements[0].gpus),
        expected,
        "node 0 whole, the remaining 3 on node 1"
    );
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
    let snapshot = unhealthy_and_busy();
    let placements = run(&snapshot, &jobs([partial(0, 16), job(1, 1)]));
    assert_every_usable_gpu_taken(&placements);
}

#[test]
fn higher_priority_goes_first() {
    let snapshot = cluster(1, 1, 8);
    for queue in priority_queues() {
        assert_eq!(run(&snapshot, &queue)[0].job, 1, "{queue:?}");
    }
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

#[test]
fn mixed_workload_on_64_nodes_passes_the_host_checks() {
    for seed in 1..=20u64 {
        let mut rng = Rng::seeded(seed);
        let snapshot = mixed_cluster(&mut rng);
        let queue = random_queue(&mut rng, 300, 3, &[Topology::None]);
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
        let free = free_gpus(&snapshot, &taken);
        if free.is_empty() {
            break;
        }
        let gpu = rng.pick(&free);
        taken[gpu as usize] = true;
        state.take(0, &[gpu]);
    }
    assert_eq!(state.index.total_free(), 0);
}

#[test]
fn ten_thousand_jobs_on_4096_gpus_stay_valid() {
    let (snapshot, queue) = benchmark_case(&mut Rng(3), &[Topology::None]);
    assert!(!run(&snapshot, &queue).is_empty());
}
