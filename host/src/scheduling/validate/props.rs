//! Property tests over a scheduler plugin's answer as it comes back across the boundary:
//! arbitrary placement columns (and mutations of a valid answer) are refused as malformed
//! (`wire::placements`) or invalid (`validate`), or applied to the cluster state without a GPU
//! held twice, an unhealthy or busy GPU given, a quota passed, or a job given more than it asked.

use proptest::prelude::*;

use super::*;
use crate::bindings::sched_v0_1 as wit;
use crate::cluster::{Cluster, JobSpec, Topology};
use crate::scheduling::model::{Jobs, Snapshot};
use crate::scheduling::{ClusterState, native, snapshot, wire};
use gantry_fuzz as fuzz;

/// A cluster with some GPUs unhealthy or short of memory, tenants with and without quotas,
/// some GPUs already held, and a queue.
#[derive(Debug, Clone)]
struct Setup {
    nodes: u32,
    gpus_per_node: u32,
    unhealthy: Vec<prop::sample::Index>,
    low_memory: Vec<prop::sample::Index>,
    quota: Option<u32>,
    jobs: Vec<(u32, u32, bool, u32)>,
    held: usize,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        1u32..4,
        1u32..9,
        prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        prop::option::of(0u32..12),
        prop::collection::vec((0u32..2, 1u32..10, any::<bool>(), 1u32..90_000), 0..8),
        0usize..3,
    )
        .prop_map(
            |(nodes, gpus_per_node, unhealthy, low_memory, quota, jobs, held)| Setup {
                nodes,
                gpus_per_node,
                unhealthy,
                low_memory,
                quota,
                jobs,
                held,
            },
        )
}

fn state(s: &Setup) -> ClusterState {
    let mut cluster = Cluster::uniform(1, s.nodes, s.gpus_per_node, 2);
    let n = cluster.gpus.len();
    for i in &s.unhealthy {
        cluster.gpus[i.index(n)].gpu.healthy = false;
    }
    for i in &s.low_memory {
        cluster.gpus[i.index(n)].gpu.memory_free_mib = 1000;
    }
    cluster.tenants[1].quota_gpus = s.quota;
    let mut state = ClusterState::new(cluster);
    for (i, &(tenant, gpus, gang, memory)) in s.jobs.iter().enumerate() {
        let spec = JobSpec {
            id: format!("j{i}"),
            tenant: format!("tenant-{tenant}"),
            priority: i as i32 % 3,
            gpus,
            memory_per_gpu_mib: memory,
            gang,
            topology: Topology::None,
            est_runtime_s: 60.0,
            submit_time_s: 0.0,
        };
        state.enqueue(spec, tenant);
    }
    // Some GPUs held by a job outside the queue (a healthy one each).
    let held: Vec<usize> = (0..n)
        .filter(|&g| state.cluster.gpus[g].gpu.healthy)
        .take(s.held)
        .collect();
    for g in held {
        state.holder[g] = Some(1000 + g as u64);
    }
    state
}

/// Columns: random, or a valid answer (the native strategy's) with edits.
#[derive(Debug, Clone)]
enum Columns {
    Random(Vec<u32>, Vec<u32>, Vec<u32>),
    Edited(Vec<(u8, prop::sample::Index, u32)>),
}

fn small() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 0u32..40, 1 => Just(u32::MAX), 1 => any::<u32>()]
}

fn columns() -> impl Strategy<Value = Columns> {
    prop_oneof![
        (
            prop::collection::vec(small(), 0..10),
            prop::collection::vec(small(), 0..10),
            prop::collection::vec(small(), 0..40),
        )
            .prop_map(|(j, c, g)| Columns::Random(j, c, g)),
        prop::collection::vec((0u8..6, any::<prop::sample::Index>(), small()), 0..4)
            .prop_map(Columns::Edited),
    ]
}

fn answer(columns: &Columns, snap: &Snapshot, queue: &Jobs) -> wit::Placements {
    match columns {
        Columns::Random(job, gpu_count, gpus) => wit::Placements {
            job: job.clone(),
            gpu_count: gpu_count.clone(),
            gpus: gpus.clone(),
        },
        Columns::Edited(edits) => {
            let valid = native::schedule(snap, queue);
            let mut p = wit::Placements {
                job: valid.iter().map(|p| p.job).collect(),
                gpu_count: valid.iter().map(|p| p.gpus.len() as u32).collect(),
                gpus: valid.iter().flat_map(|p| p.gpus.iter().copied()).collect(),
            };
            for &(what, at, value) in edits {
                let column = match what % 3 {
                    0 => &mut p.job,
                    1 => &mut p.gpu_count,
                    _ => &mut p.gpus,
                };
                match (what / 3, column.is_empty()) {
                    (0, false) => {
                        let i = at.index(column.len());
                        column[i] = value;
                    }
                    (_, false) if value % 2 == 0 => {
                        let i = at.index(column.len());
                        column.remove(i);
                    }
                    _ => column.push(value),
                }
            }
            p
        }
    }
}

proptest! {
    #![proptest_config(fuzz::config(512))]

    #[test]
    fn any_answer_is_refused_or_applied_without_breaking_the_cluster_state(
        setup in setup(),
        columns in columns(),
    ) {
        let mut state = state(&setup);
        let (snap, queue) = snapshot::build(&state, 0.0);
        let Ok(placements) = wire::placements(answer(&columns, &snap, &queue)) else {
            return Ok(());
        };
        if validate(&snap, &queue, &placements).is_err() {
            return Ok(());
        }
        // Applied as the host applies a valid answer.
        let before: Vec<Option<u64>> = state.holder.clone();
        for p in &placements {
            let job = state.pending[p.job as usize].clone();
            prop_assert!(p.gpus.len() as u32 <= job.remaining);
            if job.spec.gang {
                prop_assert_eq!(p.gpus.len() as u32, job.remaining);
            }
            for &g in &p.gpus {
                let gpu = &state.cluster.gpus[g as usize].gpu;
                prop_assert!(gpu.healthy && gpu.memory_free_mib >= job.spec.memory_per_gpu_mib);
                prop_assert!(state.holder[g as usize].is_none(), "GPU {} given twice", g);
            }
            state.allocate(p.job as usize, p.gpus.clone(), 0.0);
        }
        state.prune_pending();
        for (g, h) in before.iter().enumerate() {
            if h.is_some() {
                prop_assert_eq!(state.holder[g], *h, "a held GPU changed hands");
            }
        }
        for a in &state.running {
            for &g in &a.gpus {
                prop_assert_eq!(state.holder[g as usize], Some(a.id));
            }
        }
        for (t, tenant) in state.cluster.tenants.iter().enumerate() {
            if let Some(q) = tenant.quota_gpus {
                prop_assert!(state.used_gpus[t] <= q);
            }
        }
    }

    /// The host re-checks an answer against a state that changed by keeping what passes one
    /// placement at a time. It checked the whole kept answer again per placement (quadratic
    /// under the host's lock); `Checker` checks each once and leaves nothing of a refused one:
    /// it keeps exactly what the whole-answer check would.
    #[test]
    fn checking_one_at_a_time_keeps_what_checking_the_whole_answer_keeps(
        setup in setup(),
        columns in columns(),
    ) {
        let state = state(&setup);
        let (snap, queue) = snapshot::build(&state, 0.0);
        let Ok(placements) = wire::placements(answer(&columns, &snap, &queue)) else {
            return Ok(());
        };
        let (mut whole, mut one) = (Vec::new(), Vec::new());
        let mut checker = gantry_model::Checker::new(&snap, &queue);
        for p in placements {
            whole.push(p.clone());
            let by_whole = validate(&snap, &queue, &whole);
            if by_whole.is_err() {
                whole.pop();
            }
            let by_one = checker.add(one.len(), &p);
            if by_one.is_ok() {
                one.push(p);
            }
            prop_assert_eq!(by_whole.is_ok(), by_one.is_ok(), "{:?} {:?}", by_whole, by_one);
        }
        prop_assert_eq!(whole, one);
    }
}
