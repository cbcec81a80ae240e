use crate::placement::{Scope, State, place, relax_steps};
use crate::{DEFAULT_RELAX_AFTER_S, TopologyAware, relax_after_s};
use gantry_plugin_sdk::sched::{ConfigEntry, Job, Jobs, Placement, Snapshot, Strategy, Topology};
use gantry_plugin_sdk::testing::{
    Rng, assert_every_usable_gpu_taken, benchmark_case, checked, cluster, distinct, edit_gpus,
    free_gpus, job, jobs, mixed_cluster, nodes_of, occupy, priority_queues, random_queue, sorted,
    unhealthy_and_busy,
};

const NEVER: f64 = f64::INFINITY;

/// Runs the strategy and asserts the host would accept the answer.
fn run(snapshot: &Snapshot, queue: &Jobs, relax_after_s: f64) -> Vec<Placement> {
    checked(snapshot, queue, place(snapshot, queue, relax_after_s))
}

/// A gang job of `gpus` GPUs asking for `topology`.
fn gang(gpus: u32, topology: Topology) -> Job {
    Job {
        topology,
        ..job(0, gpus)
    }
}

/// A non-gang job of `gpus` GPUs asking for `topology`.
fn partial(gpus: u32, topology: Topology) -> Job {
    Job {
        gang: false,
        topology,
        ..job(0, gpus)
    }
}

/// Gives GPU `g` the NVLink domain `domain_of(g)`, registering domain names as needed.
fn set_domains(snapshot: &mut Snapshot, domain_of: impl Fn(u32) -> u32) {
    for (g, domain) in snapshot.gpus.nvlink_domain.iter_mut().enumerate() {
        *domain = domain_of(g as u32);
    }
    let domains = snapshot
        .gpus
        .iter()
        .map(|g| g.nvlink_domain + 1)
        .max()
        .unwrap_or(0);
    snapshot.nvlink_domain_count = domains;
}

fn racks_of(snapshot: &Snapshot, gpus: &[u32]) -> Vec<u32> {
    distinct(gpus, |g| snapshot.gpus.rack[g as usize])
}

fn domains_of(snapshot: &Snapshot, gpus: &[u32]) -> Vec<u32> {
    distinct(gpus, |g| snapshot.gpus.nvlink_domain[g as usize])
}

/// One rack of two 8-GPU nodes, each split into two NVLink domains of 4 (0-3, 4-7, 8-11, 12-15).
fn split_domains() -> Snapshot {
    let mut snapshot = cluster(1, 2, 8);
    set_domains(&mut snapshot, |g| g / 4);
    snapshot
}

#[test]
fn jobs_go_to_the_tightest_nvlink_domain() {
    let mut snapshot = split_domains();
    occupy(&mut snapshot, [0, 1, 2]); // domain 0: 1 free; domain 1: 4 free
    occupy(&mut snapshot, [8, 9]); // domain 2: 2 free; domain 3: 4 free
    let queue = jobs([job(0, 2), job(0, 1), job(0, 4), job(0, 3)]);
    let placements = run(&snapshot, &queue, NEVER);
    let gpus: Vec<Vec<u32>> = placements.iter().map(|p| sorted(&p.gpus)).collect();
    assert_eq!(gpus[0], vec![10, 11], "2 GPUs fill domain 2's hole");
    assert_eq!(gpus[1], vec![3], "1 GPU fills domain 0's hole");
    assert_eq!(
        gpus[2],
        vec![4, 5, 6, 7],
        "tie between domains 1 and 3: lowest first"
    );
    assert_eq!(gpus[3], vec![12, 13, 14], "the last whole domain");
}

#[test]
fn job_larger_than_a_domain_goes_to_the_tightest_node_and_fewest_domains() {
    let mut snapshot = split_domains();
    occupy(&mut snapshot, [0, 1, 2]); // node 0: 5 free (1 + 4)
    occupy(&mut snapshot, [8, 9]); // node 1: 6 free (2 + 4)
    let placements = run(&snapshot, &jobs([gang(6, Topology::SameNode)]), NEVER);
    assert_eq!(sorted(&placements[0].gpus), vec![10, 11, 12, 13, 14, 15]);

    let placements = run(&snapshot, &jobs([gang(5, Topology::None)]), NEVER);
    assert_eq!(
        sorted(&placements[0].gpus),
        vec![3, 4, 5, 6, 7],
        "node 0 is the best fit for 5"
    );
}

#[test]
fn job_larger_than_a_node_stays_in_one_rack_when_it_can() {
    let mut snapshot = cluster(2, 2, 8);
    occupy(&mut snapshot, 0..6); // rack 0: 10 free; rack 1: 16 free
    let placements = run(&snapshot, &jobs([gang(16, Topology::None)]), NEVER);
    assert_eq!(racks_of(&snapshot, &placements[0].gpus), vec![1]);

    let placements = run(&snapshot, &jobs([gang(10, Topology::None)]), NEVER);
    assert_eq!(
        racks_of(&snapshot, &placements[0].gpus),
        vec![0],
        "rack 0 is the tightest rack that holds 10"
    );
}

#[test]
fn job_larger_than_a_rack_uses_the_fewest_racks() {
    let mut snapshot = cluster(3, 2, 8);
    occupy(&mut snapshot, 0..6); // rack 0: 10 free
    occupy(&mut snapshot, 16..20); // rack 1: 12 free; rack 2: 16 free
    let placements = run(&snapshot, &jobs([gang(20, Topology::None)]), NEVER);
    let gpus = sorted(&placements[0].gpus);
    assert_eq!(
        racks_of(&snapshot, &gpus),
        vec![0, 2],
        "rack 2 whole, 4 in rack 0"
    );
    assert_eq!(gpus.iter().filter(|&&g| g >= 32).count(), 16);
    // Inside rack 0 the remainder of 4 best-fits node 1 (8 free) rather than splitting over
    // node 0's 2 GPUs and node 1.
    assert_eq!(nodes_of(&snapshot, &gpus[..4]), vec![1]);
}

#[test]
fn same_rack_job_never_crosses_racks() {
    let mut snapshot = cluster(2, 2, 8);
    occupy(&mut snapshot, 0..4); // rack 0: 12 free
    occupy(&mut snapshot, 16..20); // rack 1: 12 free
    let mut waiting = gang(16, Topology::SameRack);
    waiting.submit_s = 0.0;
    snapshot.now_s = 1e9;
    assert!(run(&snapshot, &jobs([waiting]), NEVER).is_empty());
    snapshot.now_s = 100.0;
    assert!(run(&snapshot, &jobs([waiting]), 600.0).is_empty());

    let placements = run(&snapshot, &jobs([gang(12, Topology::SameRack)]), NEVER);
    assert_eq!(racks_of(&snapshot, &placements[0].gpus), vec![0]);

    // Only once it has waited relax_after_s may it cross racks.
    snapshot.now_s = 600.0;
    let placements = run(&snapshot, &jobs([waiting]), 600.0);
    assert_eq!(racks_of(&snapshot, &placements[0].gpus), vec![0, 1]);
}

#[test]
fn same_node_job_waits_until_relax_after_s_then_crosses_nodes_within_a_rack() {
    let mut snapshot = cluster(2, 2, 8);
    occupy(&mut snapshot, 0..4); // node 0: 4 free
    occupy(&mut snapshot, 12..16); // node 1: 4 free
    occupy(&mut snapshot, 16..32); // rack 1 full
    let mut waiting = gang(8, Topology::SameNode);
    waiting.submit_s = 1000.0;

    snapshot.now_s = 1599.0;
    assert!(
        run(&snapshot, &jobs([waiting]), 600.0).is_empty(),
        "8 GPUs are free in rack 0, but on two nodes"
    );
    let small = gang(4, Topology::SameNode);
    let placements = run(&snapshot, &jobs([waiting, small]), 600.0);
    assert_eq!(placements.len(), 1, "the smaller job behind it still runs");
    assert_eq!(placements[0].job, 1);

    snapshot.now_s = 1600.0;
    let placements = run(&snapshot, &jobs([waiting]), 600.0);
    assert_eq!(nodes_of(&snapshot, &placements[0].gpus), vec![0, 1]);

    snapshot.now_s = 1e12;
    assert!(
        run(&snapshot, &jobs([waiting]), NEVER).is_empty(),
        "never relaxes"
    );
}

#[test]
fn relaxing_goes_one_scope_at_a_time() {
    let mut snapshot = cluster(2, 1, 8);
    occupy(&mut snapshot, 0..4); // node 0 (rack 0): 4 free
    occupy(&mut snapshot, 8..12); // node 1 (rack 1): 4 free
    // Relaxed once, a same-node job may use a rack, but no rack has 8 free: it still waits.
    snapshot.now_s = 1199.0;
    assert!(run(&snapshot, &jobs([gang(8, Topology::SameNode)]), 600.0).is_empty());
    // Relaxed once, a same-rack job may go anywhere.
    let placements = run(&snapshot, &jobs([gang(8, Topology::SameRack)]), 600.0);
    assert_eq!(racks_of(&snapshot, &placements[0].gpus), vec![0, 1]);
    // Relaxed twice, the same-node job may go anywhere too.
    snapshot.now_s = 1200.0;
    let placements = run(&snapshot, &jobs([gang(8, Topology::SameNode)]), 600.0);
    assert_eq!(racks_of(&snapshot, &placements[0].gpus), vec![0, 1]);
    // relax_after_s = 0 relaxes all the way at once.
    snapshot.now_s = 0.0;
    let placements = run(&snapshot, &jobs([gang(8, Topology::SameNvlinkDomain)]), 0.0);
    assert_eq!(racks_of(&snapshot, &placements[0].gpus), vec![0, 1]);
}

#[test]
fn same_nvlink_domain_job_uses_a_domain_spanning_two_nodes() {
    // Nodes 0 and 1 share NVLink domain 0 (GPUs 0-7); node 2 is domain 2 (GPUs 8-11).
    let mut snapshot = cluster(1, 3, 4);
    set_domains(&mut snapshot, |g| if g < 8 { 0 } else { 2 });

    let placements = run(
        &snapshot,
        &jobs([gang(8, Topology::SameNvlinkDomain)]),
        NEVER,
    );
    assert_eq!(sorted(&placements[0].gpus), (0..8).collect::<Vec<u32>>());
    // No node has 8 GPUs, so a same-node job of 8 may use the rack: the spanning domain is the
    // tightest group there.
    let placements = run(&snapshot, &jobs([gang(8, Topology::SameNode)]), NEVER);
    assert_eq!(sorted(&placements[0].gpus), (0..8).collect::<Vec<u32>>());
    assert!(
        run(
            &snapshot,
            &jobs([
                gang(5, Topology::SameNvlinkDomain),
                gang(5, Topology::SameNvlinkDomain)
            ]),
            NEVER
        )
        .len()
            == 1,
        "the second 5 would need domain 0's last 3 plus node 2"
    );

    // 4 GPUs: domain 2 (4 free) is tighter than domain 0 (8 free).
    let placements = run(
        &snapshot,
        &jobs([gang(4, Topology::SameNvlinkDomain)]),
        NEVER,
    );
    assert_eq!(sorted(&placements[0].gpus), vec![8, 9, 10, 11]);
}

#[test]
fn same_node_job_takes_a_spanning_domain_only_on_one_node() {
    let mut snapshot = cluster(1, 3, 4);
    set_domains(&mut snapshot, |g| if g < 8 { 0 } else { 2 });
    occupy(&mut snapshot, [0, 1, 4, 5]); // domain 0: 2 free on node 0, 2 on node 1
    // Domains 0 and 2 both have 4 free; domain 0 is tried first but its 3 GPUs would span two
    // nodes, so a same-node job goes to node 2 while a same-domain job stays in domain 0.
    let placements = run(&snapshot, &jobs([gang(3, Topology::SameNode)]), NEVER);
    assert_eq!(nodes_of(&snapshot, &placements[0].gpus), vec![2]);
    let placements = run(
        &snapshot,
        &jobs([gang(3, Topology::SameNvlinkDomain)]),
        NEVER,
    );
    assert_eq!(domains_of(&snapshot, &placements[0].gpus), vec![0]);
    assert_eq!(nodes_of(&snapshot, &placements[0].gpus), vec![0, 1]);
    // 2 GPUs on one node of the shared domain fit a same-node job.
    let placements = run(&snapshot, &jobs([gang(2, Topology::SameNode)]), NEVER);
    assert_eq!(sorted(&placements[0].gpus), vec![2, 3]);
}

#[test]
fn same_nvlink_domain_job_relaxes_to_one_node() {
    let mut snapshot = split_domains();
    // Domains 0-3 have 2, 3, 1 and 3 free; nodes 0 and 1 have 5 and 4.
    occupy(&mut snapshot, [0, 1, 4, 8, 9, 10, 12]);
    let mut waiting = gang(4, Topology::SameNvlinkDomain);
    waiting.submit_s = 0.0;
    snapshot.now_s = 10.0;
    assert!(run(&snapshot, &jobs([waiting]), 60.0).is_empty());
    snapshot.now_s = 60.0;
    let placements = run(&snapshot, &jobs([waiting]), 60.0);
    assert_eq!(
        sorted(&placements[0].gpus),
        vec![11, 13, 14, 15],
        "the tightest node"
    );
    // A job that no domain could ever hold starts out allowed one node.
    snapshot.now_s = 10.0;
    let placements = run(
        &snapshot,
        &jobs([gang(5, Topology::SameNvlinkDomain)]),
        60.0,
    );
    assert_eq!(sorted(&placements[0].gpus), vec![2, 3, 5, 6, 7]);
}

#[test]
fn non_gang_job_takes_what_its_scope_allows() {
    let mut snapshot = cluster(2, 2, 8);
    occupy(&mut snapshot, 0..3); // node 0: 5 free
    occupy(&mut snapshot, 8..13); // node 1: 3 free
    occupy(&mut snapshot, 16..32); // rack 1 full

    // Whole when it fits.
    let placements = run(&snapshot, &jobs([partial(5, Topology::SameNode)]), NEVER);
    assert_eq!(sorted(&placements[0].gpus), vec![3, 4, 5, 6, 7]);
    // Else the largest node's GPUs.
    let placements = run(&snapshot, &jobs([partial(8, Topology::SameNode)]), NEVER);
    assert_eq!(sorted(&placements[0].gpus), vec![3, 4, 5, 6, 7]);
    // The largest domain (each node is one domain here).
    let placements = run(
        &snapshot,
        &jobs([partial(8, Topology::SameNvlinkDomain)]),
        NEVER,
    );
    assert_eq!(placements[0].gpus.len(), 5);
    // A rack: both nodes of rack 0.
    let placements = run(&snapshot, &jobs([partial(20, Topology::SameRack)]), NEVER);
    assert_eq!(placements[0].gpus.len(), 8);
    // Anywhere, and capped by the quota.
    snapshot.tenants[0].quota_gpus = Some(6);
    let placements = run(&snapshot, &jobs([partial(20, Topology::None)]), NEVER);
    assert_eq!(placements[0].gpus.len(), 6);
    assert_eq!(nodes_of(&snapshot, &placements[0].gpus), vec![0, 1]);
    // A gang job is never split.
    snapshot.tenants[0].quota_gpus = None;
    assert!(run(&snapshot, &jobs([gang(9, Topology::None)]), NEVER).is_empty());
}

#[test]
fn quota_is_respected() {
    let mut snapshot = cluster(1, 2, 8);
    snapshot.tenants[0].quota_gpus = Some(4);
    snapshot.tenants[0].used_gpus = 1;
    let queue = jobs([
        job(0, 4),
        job(0, 3),
        job(0, 1),
        partial(2, Topology::None),
        job(1, 8),
    ]);
    let placements = run(&snapshot, &queue, NEVER);
    let placed: Vec<u32> = placements.iter().map(|p| p.job).collect();
    assert_eq!(placed, vec![1, 4], "only 3 GPUs of quota left, then none");

    // A non-gang job gets what the quota leaves.
    let placements = run(&snapshot, &jobs([partial(8, Topology::None)]), NEVER);
    assert_eq!(placements[0].gpus.len(), 3);
}

#[test]
fn memory_is_respected() {
    let mut snapshot = cluster(1, 2, 8);
    edit_gpus(&mut snapshot, ..5, |gpu| {
        gpu.memory_free_mib = 20000; // node 0: 8 free, only 5, 6 and 7 hold 40 GiB
    });
    occupy(&mut snapshot, 8..12); // node 1: 4 free
    let mut small = job(1, 4);
    small.memory_per_gpu_mib = 10000;
    let queue = jobs([job(0, 3), small, job(0, 6)]);
    let placements = run(&snapshot, &queue, NEVER);
    assert_eq!(placements.len(), 2, "{placements:?}");
    assert_eq!(
        sorted(&placements[0].gpus),
        vec![5, 6, 7],
        "node 0 has more free GPUs but exactly 3 usable: the tightest fit"
    );
    assert_eq!(
        sorted(&placements[1].gpus),
        vec![12, 13, 14, 15],
        "a 10 GiB job can use any GPU: node 1 (4 free) beats node 0 (5 free)"
    );
}

#[test]
fn unhealthy_and_busy_gpus_are_never_used() {
    let snapshot = unhealthy_and_busy();
    let placements = run(
        &snapshot,
        &jobs([partial(16, Topology::None), job(1, 1)]),
        NEVER,
    );
    assert_every_usable_gpu_taken(&placements);
}

#[test]
fn higher_priority_goes_first() {
    let snapshot = cluster(1, 1, 8);
    for queue in priority_queues() {
        assert_eq!(run(&snapshot, &queue, NEVER)[0].job, 1, "{queue:?}");
    }
}

#[test]
fn a_failed_large_job_does_not_block_smaller_ones() {
    let snapshot = cluster(1, 2, 8);
    let queue = jobs([
        gang(17, Topology::None),
        gang(9, Topology::SameNode),
        gang(12, Topology::SameNode),
        gang(8, Topology::SameNode),
        gang(8, Topology::SameNode),
        gang(1, Topology::SameNode),
    ]);
    let placements = run(&snapshot, &queue, NEVER);
    let jobs: Vec<u32> = placements.iter().map(|p| p.job).collect();
    // 17 can never fit; 9 cannot fit one node, so it takes the tightest scope that holds it
    // (the rack); 12 and both 8s then find too few GPUs; 1 still runs.
    assert_eq!(jobs, vec![1, 5]);
}

#[test]
fn empty_inputs_give_no_placements() {
    assert!(run(&cluster(1, 1, 8), &jobs([]), NEVER).is_empty());
    assert!(run(&cluster(0, 0, 0), &jobs([job(0, 1)]), NEVER).is_empty());
    let mut full = cluster(1, 1, 8);
    occupy(&mut full, 0..8);
    assert!(run(&full, &jobs([partial(1, Topology::None)]), NEVER).is_empty());
}

#[test]
fn scopes_relax_one_step() {
    assert_eq!(
        Scope::asked(Topology::SameNvlinkDomain).relaxed(),
        Scope::Node
    );
    assert_eq!(Scope::asked(Topology::SameNode).relaxed(), Scope::Rack);
    assert_eq!(Scope::asked(Topology::SameRack).relaxed(), Scope::Any);
    assert_eq!(Scope::asked(Topology::None).relaxed(), Scope::Any);
}

fn entry(key: &str, value: &str) -> ConfigEntry {
    ConfigEntry {
        key: key.into(),
        value: value.into(),
    }
}

// The only test that touches the configured value, which is process-wide.
#[test]
fn configure_stores_relax_after_s_for_schedule() {
    assert!(TopologyAware::configure(vec![entry("relax_after", "5")]).is_err());
    assert!(TopologyAware::configure(vec![entry("relax_after_s", "soon")]).is_err());
    assert!(TopologyAware::configure(vec![entry("relax_after_s", "-1")]).is_err());
    assert!(TopologyAware::configure(vec![entry("relax_after_s", "NaN")]).is_err());

    TopologyAware::configure(vec![entry("relax_after_s", "\"never\"")]).unwrap();
    assert_eq!(relax_after_s(), f64::INFINITY);
    TopologyAware::configure(vec![entry("relax_after_s", "30.5")]).unwrap();
    assert_eq!(relax_after_s(), 30.5);
    TopologyAware::configure(Vec::new()).unwrap();
    assert_eq!(relax_after_s(), DEFAULT_RELAX_AFTER_S);

    // schedule uses what configure stored.
    let mut snapshot = cluster(1, 2, 8);
    occupy(&mut snapshot, 0..4);
    occupy(&mut snapshot, 12..16);
    snapshot.now_s = 100.0;
    let queue = jobs([gang(8, Topology::SameNode)]);
    TopologyAware::configure(vec![entry("relax_after_s", "100")]).unwrap();
    let placements = TopologyAware::schedule(snapshot.clone(), queue.clone()).unwrap();
    assert_eq!(placements.len(), 1);
    TopologyAware::configure(vec![entry("relax_after_s", "never")]).unwrap();
    assert!(TopologyAware::schedule(snapshot, queue).unwrap().is_empty());
    TopologyAware::configure(Vec::new()).unwrap();
}

/// [`mixed_cluster`] at 10,000 s with three domain layouts: racks 0-1 split each node into two
/// 4-GPU domains, racks 2-3 pair nodes into 16-GPU domains, the rest have one domain per node.
fn random_cluster(rng: &mut Rng) -> Snapshot {
    let mut snapshot = mixed_cluster(rng);
    set_domains(&mut snapshot, |g| match g / 128 {
        0 => g / 4,
        1 => 64 + (g - 128) / 16,
        _ => 128 + g / 8,
    });
    snapshot.now_s = 10_000.0;
    snapshot
}

/// Every topology a job may ask for.
const TOPOLOGIES: [Topology; 4] = [
    Topology::None,
    Topology::SameNode,
    Topology::SameNvlinkDomain,
    Topology::SameRack,
];

/// Whether all `gpus` share one group of `scope`.
fn within(snapshot: &Snapshot, scope: Scope, gpus: &[u32]) -> bool {
    match scope {
        Scope::Domain => domains_of(snapshot, gpus).len() == 1,
        Scope::Node => nodes_of(snapshot, gpus).len() == 1,
        Scope::Rack => racks_of(snapshot, gpus).len() == 1,
        Scope::Any => true,
    }
}

#[test]
fn mixed_workload_on_64_nodes_passes_the_host_checks_and_keeps_scopes() {
    for seed in 1..=20u64 {
        let mut rng = Rng::seeded(seed);
        let snapshot = random_cluster(&mut rng);
        let queue = random_queue(&mut rng, 300, 3, &TOPOLOGIES);
        let relax = 600.0;
        let placements = run(&snapshot, &queue, relax);
        assert!(placements.len() > 10, "seed {seed}: {}", placements.len());
        assert_eq!(placements, place(&snapshot, &queue, relax), "deterministic");
        for p in &placements {
            let job = queue.row(p.job as usize);
            let needed = if job.gang { job.gpus } else { 1 };
            let asked = Scope::ALL
                .into_iter()
                .filter(|&s| s >= Scope::asked(job.topology))
                .find(|&s| largest_group(&snapshot, s, job.memory_per_gpu_mib) >= needed)
                .expect("placed, so some scope holds it");
            let allowed = asked.relaxed_by(relax_steps(snapshot.now_s - job.submit_s, relax));
            assert!(
                within(&snapshot, asked, &p.gpus) || within(&snapshot, allowed, &p.gpus),
                "seed {seed}: job {} asked {asked:?} (allowed {allowed:?}) got {:?}",
                p.job,
                p.gpus
            );
        }
    }
}

#[test]
fn tightest_domain_matches_a_brute_force_search_as_gpus_are_taken() {
    let mut rng = Rng(11);
    let snapshot = random_cluster(&mut rng);
    let mut state = State::new(&snapshot);
    let mut taken = vec![false; snapshot.gpus.len()];
    let domains = snapshot.nvlink_domain_count;
    loop {
        for memory in [10000, 40960, 90000] {
            for count in [1, 3, 4, 8, 12] {
                // Fewest usable, then fewest free, then lowest index.
                let expected = (0..domains)
                    .filter_map(|d| {
                        let free = |g: &(usize, gantry_plugin_sdk::sched::Gpu)| {
                            g.1.nvlink_domain == d && g.1.healthy && !g.1.busy && !taken[g.0]
                        };
                        let gpus = snapshot.gpus.iter().enumerate().filter(free);
                        let free_count = gpus.clone().count() as u32;
                        let usable = gpus.filter(|g| g.1.memory_free_mib >= memory).count() as u32;
                        (usable >= count).then_some((usable, free_count, d))
                    })
                    .min()
                    .map(|(_, _, d)| d);
                assert_eq!(
                    state.tightest_domain(count, memory),
                    expected,
                    "count {count}, memory {memory}"
                );
            }
        }
        let free = free_gpus(&snapshot, &taken);
        if free.is_empty() {
            break;
        }
        // Take a few at a time to keep the test quick.
        for _ in 0..4.min(free.len()) {
            let gpu = rng.pick(&free);
            if !taken[gpu as usize] {
                taken[gpu as usize] = true;
                state.take(0, &[gpu]);
            }
        }
    }
    assert_eq!(state.index.total_free(), 0);
}

#[test]
fn ten_thousand_jobs_on_4096_gpus_stay_valid() {
    let (snapshot, queue) = benchmark_case(&mut Rng(3), &TOPOLOGIES);
    assert!(!run(&snapshot, &queue, 600.0).is_empty());
}

#[test]
fn topology_never_starves_jobs_larger_than_their_preferred_scope() {
    let mut snapshot = cluster(2, 4, 8);
    snapshot.now_s = 1e6;
    for topology in [
        Topology::SameNvlinkDomain,
        Topology::SameNode,
        Topology::SameRack,
    ] {
        for relax in [NEVER, 600.0, 0.0] {
            let placements = run(&snapshot, &jobs([gang(16, topology)]), relax);
            assert_eq!(placements.len(), 1, "{topology:?}, relax {relax}");
            assert_eq!(
                racks_of(&snapshot, &placements[0].gpus).len(),
                1,
                "{topology:?}, relax {relax}: one rack is the tightest scope that holds 16"
            );
        }
        // Larger than a rack: the whole cluster is the only scope that holds it.
        let placements = run(&snapshot, &jobs([gang(48, topology)]), NEVER);
        assert_eq!(placements.len(), 1, "{topology:?}: 48 GPUs");
    }
    // Memory counts too: only 4 GPUs per node hold 70 GiB, so an 8-GPU same-node job of 70 GiB
    // can only ever run across nodes.
    edit_gpus(&mut snapshot, .., |gpu| {
        if gpu.model == 0 {
            gpu.memory_free_mib = 40960;
        }
    });
    for g in (0..snapshot.gpus.len()).filter(|g| g % 8 >= 4) {
        snapshot.gpus.memory_free_mib[g] = 81920;
    }
    let mut big = gang(8, Topology::SameNode);
    big.memory_per_gpu_mib = 70000;
    let placements = run(&snapshot, &jobs([big]), NEVER);
    assert_eq!(placements.len(), 1);
    assert_eq!(nodes_of(&snapshot, &placements[0].gpus).len(), 2);
}

/// A generated cluster for the property tests: 1-3 racks of 1-4 nodes of 1-8 GPUs, NVLink
/// domains per node, per half node or spanning node pairs, mixed memory, some GPUs unhealthy,
/// two tenants of which the second may have a quota.
fn generated_cluster(rng: &mut Rng) -> Snapshot {
    let racks = 1 + rng.below(3);
    let nodes_per_rack = 1 + rng.below(4);
    let gpus_per_node = [1, 2, 4, 8][rng.below(4) as usize];
    let mut snapshot = cluster(racks, nodes_per_rack, gpus_per_node);
    let per_node = gpus_per_node;
    let shape = rng.below(3);
    set_domains(&mut snapshot, |g| match shape {
        0 => g / per_node,              // one per node
        1 => g / (per_node / 2).max(1), // halves of nodes
        _ => g / (2 * per_node),        // spanning two nodes
    });
    edit_gpus(&mut snapshot, .., |gpu| {
        gpu.memory_free_mib = [40960, 81920, 81920][rng.below(3) as usize];
        gpu.healthy = rng.below(10) != 0;
    });
    if rng.below(2) == 0 {
        snapshot.tenants[1].quota_gpus = Some(1 + rng.below(24));
    }
    snapshot
}

fn generated_jobs(rng: &mut Rng, n: usize) -> Vec<Job> {
    (0..n)
        .map(|_| Job {
            tenant: rng.below(2),
            priority: rng.below(3) as i32 - 1,
            gpus: [1, 2, 3, 4, 6, 8, 12, 16, 24, 32][rng.below(10) as usize],
            memory_per_gpu_mib: [10000, 40960, 70000, 90000][rng.below(4) as usize],
            gang: rng.below(4) != 0,
            topology: rng.pick(&TOPOLOGIES),
            est_runtime_s: 60.0,
            submit_s: 0.0,
        })
        .collect()
}

/// Healthy GPUs on which `job` could run, by group of `scope` (busy or not).
fn largest_group(snapshot: &Snapshot, scope: Scope, memory_mib: u32) -> u32 {
    let mut counts = std::collections::BTreeMap::new();
    for gpu in snapshot.gpus.iter() {
        if gpu.healthy && gpu.memory_free_mib >= memory_mib {
            let key = match scope {
                Scope::Domain => gpu.nvlink_domain,
                Scope::Node => gpu.node,
                Scope::Rack => gpu.rack,
                Scope::Any => 0,
            };
            *counts.entry(key).or_insert(0u32) += 1;
        }
    }
    counts.into_values().max().unwrap_or(0)
}

/// Whether `job` could ever run on `snapshot`: enough healthy GPUs with its memory, and a quota
/// that admits its gang.
fn could_ever_run(snapshot: &Snapshot, job: &Job) -> bool {
    let needed = if job.gang { job.gpus } else { 1 };
    let quota = snapshot.tenants[job.tenant as usize]
        .quota_gpus
        .unwrap_or(u32::MAX);
    largest_group(snapshot, Scope::Any, job.memory_per_gpu_mib) >= needed && quota >= needed
}

/// Runs cycles of the strategy until the queue drains or `max_cycles` pass: placed GPUs stay
/// busy for 1-3 cycles, each cycle is 300 s later. Returns the placements of each job (by its
/// index in `queue`) and the cycle of each.
fn drain(
    mut snapshot: Snapshot,
    queue: &[Job],
    relax: f64,
    rng: &mut Rng,
) -> Vec<Vec<(u32, Vec<u32>)>> {
    let mut remaining: Vec<u32> = queue.iter().map(|j| j.gpus).collect();
    let mut placed: Vec<Vec<(u32, Vec<u32>)>> = vec![Vec::new(); queue.len()];
    let mut busy_until: Vec<Option<(u32, u32)>> = vec![None; snapshot.gpus.len()];
    let max_cycles = 20 * queue.len() as u32 + 20;
    for cycle in 0..max_cycles {
        let pending: Vec<usize> = (0..queue.len()).filter(|&j| remaining[j] > 0).collect();
        if pending.is_empty() {
            break;
        }
        snapshot.now_s = f64::from(cycle) * 300.0;
        let rows: Jobs = pending
            .iter()
            .map(|&j| Job {
                gpus: remaining[j],
                ..queue[j]
            })
            .collect();
        for p in run(&snapshot, &rows, relax) {
            let j = pending[p.job as usize];
            remaining[j] -= p.gpus.len() as u32;
            let tenant = queue[j].tenant;
            snapshot.tenants[tenant as usize].used_gpus += p.gpus.len() as u32;
            let until = cycle + 1 + rng.below(3);
            for &g in &p.gpus {
                snapshot.gpus.busy[g as usize] = 1;
                busy_until[g as usize] = Some((until, tenant));
            }
            placed[j].push((cycle, p.gpus));
        }
        for (g, slot) in busy_until.iter_mut().enumerate() {
            if let Some((until, tenant)) = *slot
                && until <= cycle + 1
            {
                snapshot.gpus.busy[g] = 0;
                snapshot.tenants[tenant as usize].used_gpus -= 1;
                *slot = None;
            }
        }
    }
    placed
}

/// Every preference x every cluster shape (domains, nodes and racks smaller than the job):
/// whatever a job asked for, it runs once the cluster could hold it at all; and a job whose
/// preference some group could satisfy is not moved beyond it while `relax_after_s` has not
/// passed.
#[test]
fn every_job_that_fits_the_cluster_is_eventually_placed() {
    for seed in 1..=150u64 {
        let mut rng = Rng::seeded(seed);
        let snapshot = generated_cluster(&mut rng);
        let n = 1 + rng.below(24) as usize;
        let queue = generated_jobs(&mut rng, n);
        for relax in [NEVER, 600.0, 0.0] {
            let placed = drain(snapshot.clone(), &queue, relax, &mut rng);
            for (j, job) in queue.iter().enumerate() {
                let got: u32 = placed[j].iter().map(|(_, g)| g.len() as u32).sum();
                let what = format!(
                    "seed {seed}, relax {relax}, job {j} {job:?}: {:?}",
                    placed[j]
                );
                if !could_ever_run(&snapshot, job) {
                    assert_eq!(got, 0, "{what}");
                    continue;
                }
                assert_eq!(got, job.gpus, "never placed in full: {what}");
                let asked = Scope::asked(job.topology);
                let needed = if job.gang { job.gpus } else { 1 };
                if relax == NEVER
                    && job.gang
                    && largest_group(&snapshot, asked, job.memory_per_gpu_mib) >= needed
                {
                    assert!(within(&snapshot, asked, &placed[j][0].1), "{what}");
                }
            }
        }
    }
}
