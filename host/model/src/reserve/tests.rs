use super::*;
use crate::testing::{cluster, job, jobs};
use crate::{Allocation, Job};

/// Marks each `(gpu, end)` busy with a 1-GPU run of tenant 1 started at 990 s.
fn run_small(snapshot: &mut Snapshot, runs: impl IntoIterator<Item = (u32, f64)>) {
    for (g, end) in runs {
        snapshot.gpus.busy[g as usize] = 1;
        snapshot.running.push(Allocation {
            tenant: 1,
            priority: 0,
            gpus: vec![g],
            start_s: 990.0,
            expected_end_s: end,
        });
    }
}

/// A 1-GPU job of `tenant` submitted at 1000 s, for 60 s.
fn small(tenant: u32) -> Job {
    Job {
        submit_s: 1000.0,
        est_runtime_s: 60.0,
        ..job(tenant, 1)
    }
}

/// Job `job` on GPU `gpu`.
fn on(job: u32, gpu: u32) -> Placement {
    Placement {
        job,
        gpus: vec![gpu],
    }
}

/// One node of 8 GPUs at t = 1000 s: GPUs 0-6 held by 1-GPU runs ending at 1010 + g, GPU 7
/// free; an 8-GPU gang submitted at 0 waits; a 1-GPU job submitted now would take GPU 7.
fn gang_behind_small_runs() -> (Snapshot, Jobs) {
    let mut snapshot = cluster(1, 1, 8);
    snapshot.now_s = 1000.0;
    run_small(&mut snapshot, (0..7u32).map(|g| (g, 1010.0 + f64::from(g))));
    snapshot.tenants[1].used_gpus = 7;
    let gang = job(0, 8);
    let small = small(1);
    (snapshot, jobs([gang, small]))
}

fn small_on_gpu_7() -> Vec<Placement> {
    vec![on(1, 7)]
}

/// The review's finding: a stream of 1-GPU jobs kept an 8-GPU gang waiting for as long as it
/// lasted, under every strategy; each freed GPU was taken again at once. Past the wait, a job
/// that would outlive the gang's shadow time is held back.
#[test]
fn a_small_job_that_would_delay_a_gang_waiting_past_the_threshold_is_held_back() {
    let (snapshot, queue) = gang_behind_small_runs();
    let (kept, reservation) = guard(&snapshot, &queue, small_on_gpu_7(), 300.0);
    assert!(kept.is_empty(), "{kept:?}");
    assert_eq!(
        reservation,
        Some(Reservation {
            job: 0,
            shadow_s: 1016.0,
            held_back: vec![1],
            fits_now: false,
        })
    );
}

/// Before the threshold every placement stands (the strategy's own order); after it, one that
/// ends by the shadow time, or takes only GPUs spare then, stands too.
#[test]
fn placements_that_cannot_delay_the_waiting_job_stand() {
    let (snapshot, queue) = gang_behind_small_runs();
    let (kept, reservation) = guard(&snapshot, &queue, small_on_gpu_7(), 2000.0);
    assert_eq!((kept, reservation), (small_on_gpu_7(), None));

    // Ends at 1010, before the shadow time (1016).
    let mut short = queue.clone();
    short.est_runtime_s[1] = 10.0;
    let (kept, reservation) = guard(&snapshot, &short, small_on_gpu_7(), 300.0);
    assert_eq!(kept, small_on_gpu_7());
    assert_eq!(reservation.map(|r| r.held_back), Some(vec![]));

    // One run holding GPUs 0-6 to 1010: a 4-GPU gang leaves 4 spare at its shadow time.
    let mut together = snapshot.clone();
    together.running = vec![Allocation {
        gpus: (0..7).collect(),
        expected_end_s: 1010.0,
        ..snapshot.running[0].clone()
    }];
    let mut smaller = queue.clone();
    smaller.gpus[0] = 4;
    let (kept, reservation) = guard(&together, &smaller, small_on_gpu_7(), 300.0);
    assert_eq!(kept, small_on_gpu_7());
    let reservation = reservation.unwrap();
    assert_eq!(
        (reservation.shadow_s, reservation.held_back),
        (1010.0, vec![])
    );
    // Without spare GPUs it is held back.
    let (kept, _) = guard(&snapshot, &smaller, small_on_gpu_7(), 300.0);
    assert!(kept.is_empty());
}

/// When the waiting job fits in what is free now, the strategy's choice of a job of a tenant
/// holding less (fair share's order) stands; so do placements of jobs ahead of it in priority
/// order. A gang over its tenant's quota is not held for: it could never start.
#[test]
fn the_strategys_choice_stands_when_it_serves_a_less_served_tenant_or_others_come_first() {
    let (mut snapshot, queue) = gang_behind_small_runs();
    let mut fits = snapshot.clone();
    fits.gpus.busy = vec![0; 8];
    fits.running.clear();
    fits.tenants[0].used_gpus = 8;
    fits.tenants[1].used_gpus = 2;
    let (kept, reservation) = guard(&fits, &queue, small_on_gpu_7(), 300.0);
    assert_eq!((kept, reservation), (small_on_gpu_7(), None));

    let mut first = queue.clone();
    first.priority[1] = 1;
    let (kept, reservation) = guard(&snapshot, &first, small_on_gpu_7(), 300.0);
    assert_eq!(kept, small_on_gpu_7());
    let reservation = reservation.unwrap();
    // GPU 7 comes back at the small job's end.
    assert_eq!(
        (reservation.shadow_s, reservation.held_back),
        (1060.0, vec![])
    );

    snapshot.tenants[0].quota_gpus = Some(4);
    let (kept, reservation) = guard(&snapshot, &queue, small_on_gpu_7(), 300.0);
    assert_eq!((kept, reservation), (small_on_gpu_7(), None));
}

/// Found by a reading of the guard: when the waiting gang fit in what was free, whatever the
/// strategy placed instead stood, and `fairshare`, breaking a tie between tenants holding
/// nothing by their index, gave the GPUs to the first tenant's stream each time: the second
/// tenant's gang waited as long as the stream lasted. Placements of tenants holding no less
/// are held back, and the backfill offers the waiting job alone.
#[test]
fn a_job_that_fits_now_is_not_passed_over_for_a_tenant_holding_as_much() {
    let (snapshot, queue) = gang_behind_small_runs();
    let mut fits = snapshot.clone();
    fits.gpus.busy = vec![0; 8];
    fits.running.clear();
    fits.tenants[1].used_gpus = 0;
    let (kept, reservation) = guard(&fits, &queue, small_on_gpu_7(), 300.0);
    assert!(kept.is_empty());
    let reservation = reservation.unwrap();
    assert_eq!(
        reservation,
        Reservation {
            job: 0,
            shadow_s: 1000.0,
            held_back: vec![1],
            fits_now: true,
        }
    );
    let backfill = Backfill::after(&fits, &queue, &kept, &reservation).unwrap();
    assert_eq!(backfill.queue.gpus, vec![8], "the gang alone");
    let gang = vec![Placement {
        job: 0,
        gpus: (0..8).collect(),
    }];
    assert_eq!(backfill.placements(gang.clone()).unwrap(), gang);
}

/// GPUs a waiting job could never use (too little memory, unhealthy) are not held for it, and
/// a job no healthy GPUs could hold gets no reservation.
#[test]
fn only_gpus_the_waiting_job_can_use_are_held() {
    let (mut snapshot, mut queue) = gang_behind_small_runs();
    queue.gpus[0] = 7;
    snapshot.gpus.memory_free_mib[7] = 1000;
    queue.memory_per_gpu_mib[1] = 1000;
    let (kept, reservation) = guard(&snapshot, &queue, small_on_gpu_7(), 300.0);
    assert_eq!(kept, small_on_gpu_7(), "GPU 7 is no use to the gang");
    assert_eq!(reservation.map(|r| r.shadow_s), Some(1016.0));

    snapshot.gpus.healthy[0] = 0;
    let (kept, reservation) = guard(&snapshot, &queue, small_on_gpu_7(), 300.0);
    assert_eq!((kept, reservation), (small_on_gpu_7(), None));
}

/// Placements ahead of the waiting job this cycle take GPUs until their expected end; the
/// shadow time counts them, and a NaN or overdue estimate neither panics nor frees GPUs early.
#[test]
fn placements_ahead_count_until_their_end_and_odd_estimates_are_safe() {
    let (mut snapshot, mut queue) = gang_behind_small_runs();
    // A 1-GPU job ahead of the gang (a higher priority) takes GPU 7 until 1100.
    let ahead = Job {
        priority: 5,
        est_runtime_s: 100.0,
        submit_s: 1000.0,
        ..job(1, 1)
    };
    queue.push(ahead);
    let placements = vec![on(2, 7)];
    let (kept, reservation) = guard(&snapshot, &queue, placements.clone(), 300.0);
    assert_eq!(kept, placements);
    assert_eq!(reservation.map(|r| r.shadow_s), Some(1100.0));

    // Found by a reading of the guard: a run past its expected end was taken to end now, and
    // every later job was held back for as long as it ran on (days, past a default estimate).
    // It is expected to run as long again as it has: these started at 990, so 1010. NaN
    // estimates never end in time.
    for a in &mut snapshot.running {
        a.expected_end_s = 0.0;
    }
    queue.est_runtime_s[1] = f64::NAN;
    let (kept, reservation) = guard(&snapshot, &queue, small_on_gpu_7(), 300.0);
    assert!(kept.is_empty());
    assert_eq!(reservation.map(|r| r.shadow_s), Some(1010.0));
    let (kept, _) = guard(&snapshot, &queue, small_on_gpu_7(), f64::NAN);
    assert_eq!(kept, small_on_gpu_7());
}

/// Found measuring the guard: the GPUs a held-back placement would have taken stayed idle until
/// the next cycle (a tenth of an overloaded cluster). The backfill offers them to the jobs after
/// the waiting one that end by its shadow time, beside what stands.
#[test]
fn the_backfill_offers_what_was_held_back_to_jobs_that_end_in_time() {
    let (snapshot, mut queue) = gang_behind_small_runs();
    queue.push(Job {
        est_runtime_s: 5.0,
        submit_s: 1000.0,
        ..job(1, 1)
    });
    queue.push(Job {
        est_runtime_s: f64::NAN,
        submit_s: 1000.0,
        ..job(1, 1)
    });
    let (kept, reservation) = guard(&snapshot, &queue, small_on_gpu_7(), 300.0);
    let reservation = reservation.unwrap();
    assert_eq!(reservation.held_back, vec![1]);
    let backfill = Backfill::after(&snapshot, &queue, &kept, &reservation).unwrap();
    assert_eq!(backfill.queue.len(), 1, "only the 5 s job ends in time");
    assert_eq!(backfill.queue.est_runtime_s, vec![5.0]);
    let placed = backfill.placements(vec![on(0, 7)]).unwrap();
    assert_eq!(placed, vec![on(2, 7)]);
    // Checked against the backfill's own snapshot: a busy GPU is refused.
    let busy = backfill.placements(vec![on(0, 0)]);
    assert!(busy.unwrap_err().contains("already allocated"));

    // What stands is running in the backfill's snapshot, and its job is not offered again.
    let mut two = queue.clone();
    two.est_runtime_s[1] = 1.0;
    two.est_runtime_s[2] = 1.0;
    let placements = vec![on(1, 7)];
    let reservation = Reservation {
        job: 0,
        shadow_s: 1016.0,
        held_back: vec![],
        fits_now: false,
    };
    let backfill = Backfill::after(&snapshot, &two, &placements, &reservation).unwrap();
    assert_eq!(backfill.queue.len(), 1);
    assert_eq!(backfill.snapshot.gpus.busy[7], 1);
    assert_eq!(backfill.snapshot.tenants[1].used_gpus, 8);
    assert_eq!(
        backfill.snapshot.running.last().unwrap().expected_end_s,
        1001.0
    );
}

/// Found by a review of the guard: a gang whose tenant's own 1-GPU jobs kept its quota busy
/// was never held for (its quota had no room *now*), and waited as long as the stream lasted.
/// The quota is held like the GPUs: placements of the tenant that outlive the shadow time wait.
#[test]
fn a_gang_blocked_by_its_tenants_own_small_jobs_is_held_for_by_quota() {
    // Two nodes of 8; tenant b (quota 8) holds 7 with 1-GPU runs ending at 1010..1016.
    let mut snapshot = cluster(1, 2, 8);
    snapshot.now_s = 1000.0;
    snapshot.tenants[1].quota_gpus = Some(8);
    run_small(&mut snapshot, (0..7u32).map(|g| (g, 1010.0 + f64::from(g))));
    snapshot.tenants[1].used_gpus = 7;
    let small = small(1);
    let queue = jobs([job(1, 8), small, Job { tenant: 0, ..small }]);
    let placements = vec![on(1, 8), on(2, 9)];
    let (kept, reservation) = guard(&snapshot, &queue, placements, 300.0);
    // b's small job would take the last of its quota past 1016; a's takes none of it.
    assert_eq!(kept, vec![on(2, 9)]);
    let reservation = reservation.unwrap();
    assert_eq!(
        (reservation.shadow_s, reservation.held_back),
        (1016.0, vec![1])
    );
}

/// Found by a review of the guard: a same-node gang was held for by count across the cluster;
/// at its shadow time enough GPUs were free, but on different nodes, so a strategy keeping it to
/// a node did not place it and small jobs took them again. GPUs are held in the group of the
/// tightest scope that could hold it, the one that frees first.
#[test]
fn a_gang_that_wants_one_node_is_held_for_on_the_node_that_frees_first() {
    // Two nodes of 4: node 0 has GPU 3 free and runs ending at 1010..1012 on 0-2; node 1 has
    // GPUs 6 and 7 free and runs on 4-5 ending at 1100.
    let mut snapshot = cluster(1, 2, 4);
    snapshot.now_s = 1000.0;
    let ends = [
        (0, 1010.0),
        (1, 1011.0),
        (2, 1012.0),
        (4, 1100.0),
        (5, 1100.0),
    ];
    run_small(&mut snapshot, ends);
    let gang = Job {
        topology: Topology::SameNode,
        ..job(0, 4)
    };
    let small = small(1);
    let queue = jobs([gang, small, small]);
    let placements = vec![on(1, 3), on(2, 6)];
    let (kept, reservation) = guard(&snapshot, &queue, placements, 300.0);
    // Node 0 is whole at 1012: the small job on it waits; the one on node 1 stands.
    assert_eq!(kept, vec![on(2, 6)]);
    let reservation = reservation.unwrap();
    assert_eq!(
        (reservation.shadow_s, reservation.held_back),
        (1012.0, vec![1])
    );

    // Without the preference, count across the cluster: 3 free now, a fourth at 1010.
    let mut anywhere = queue.clone();
    anywhere.topology[0] = Topology::None.code();
    let (_, reservation) = guard(&snapshot, &anywhere, vec![], 300.0);
    assert!(reservation.is_none(), "nothing to hold back");
    let one = vec![on(1, 3)];
    let (kept, reservation) = guard(&snapshot, &anywhere, one, 300.0);
    assert!(kept.is_empty());
    assert_eq!(reservation.unwrap().shadow_s, 1010.0);
}
