use super::*;
use crate::testing::{cluster, job, jobs};
use crate::{Allocation, Job};

/// One node of 8 GPUs at t = 1000 s: GPUs 0-6 held by 1-GPU runs ending at 1010 + g, GPU 7
/// free; an 8-GPU gang submitted at 0 waits; a 1-GPU job submitted now would take GPU 7.
fn gang_behind_small_runs() -> (Snapshot, Jobs) {
    let mut snapshot = cluster(1, 1, 8);
    snapshot.now_s = 1000.0;
    for g in 0..7u32 {
        snapshot.gpus.busy[g as usize] = 1;
        snapshot.running.push(Allocation {
            tenant: 1,
            priority: 0,
            gpus: vec![g],
            start_s: 990.0,
            expected_end_s: 1010.0 + f64::from(g),
        });
    }
    snapshot.tenants[1].used_gpus = 7;
    let gang = job(0, 8);
    let small = Job {
        submit_s: 1000.0,
        est_runtime_s: 60.0,
        ..job(1, 1)
    };
    (snapshot, jobs([gang, small]))
}

fn small_on_gpu_7() -> Vec<Placement> {
    vec![Placement {
        job: 1,
        gpus: vec![7],
    }]
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

/// The guard holds back, it never reorders: when the waiting job fits in what is free now, the
/// strategy chose another (fair share's order, say) and that stands; so do placements of jobs
/// ahead of it in priority order.
#[test]
fn the_strategys_choice_stands_when_the_waiting_job_fits_now_or_others_come_first() {
    let (mut snapshot, queue) = gang_behind_small_runs();
    let mut fits = snapshot.clone();
    fits.gpus.busy = vec![0; 8];
    fits.running.clear();
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

    // A gang over its tenant's quota could not start anyway: nothing is held for it.
    snapshot.tenants[0].quota_gpus = Some(4);
    let mut over = queue.clone();
    over.gpus[0] = 8;
    let (kept, reservation) = guard(&snapshot, &over, small_on_gpu_7(), 300.0);
    assert_eq!((kept, reservation), (small_on_gpu_7(), None));
}

/// GPUs a waiting job could never use (too little memory, unhealthy) are not held for it, and
/// a job no healthy GPUs could hold gets no reservation.
#[test]
fn only_gpus_the_waiting_job_can_use_are_held() {
    let (mut snapshot, mut queue) = gang_behind_small_runs();
    queue.gpus[0] = 7;
    snapshot.gpus.memory_free_mib[7] = 1000;
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
    let placements = vec![Placement {
        job: 2,
        gpus: vec![7],
    }];
    let (kept, reservation) = guard(&snapshot, &queue, placements.clone(), 300.0);
    assert_eq!(kept, placements);
    assert_eq!(reservation.map(|r| r.shadow_s), Some(1100.0));

    // Overdue runs end "now", not in the past; NaN estimates never end in time.
    for a in &mut snapshot.running {
        a.expected_end_s = 0.0;
    }
    queue.est_runtime_s[1] = f64::NAN;
    let (kept, reservation) = guard(&snapshot, &queue, small_on_gpu_7(), 300.0);
    assert!(kept.is_empty());
    assert_eq!(reservation.map(|r| r.shadow_s), Some(1000.0));
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
    let placed = backfill
        .placements(vec![Placement {
            job: 0,
            gpus: vec![7],
        }])
        .unwrap();
    assert_eq!(
        placed,
        vec![Placement {
            job: 2,
            gpus: vec![7]
        }]
    );
    // Checked against the backfill's own snapshot: a busy GPU is refused.
    let busy = backfill.placements(vec![Placement {
        job: 0,
        gpus: vec![0],
    }]);
    assert!(busy.unwrap_err().contains("already allocated"));

    // What stands is running in the backfill's snapshot, and its job is not offered again.
    let mut two = queue.clone();
    two.est_runtime_s[1] = 1.0;
    two.est_runtime_s[2] = 1.0;
    let placements = vec![Placement {
        job: 1,
        gpus: vec![7],
    }];
    let reservation = Reservation {
        job: 0,
        shadow_s: 1016.0,
        held_back: vec![],
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
