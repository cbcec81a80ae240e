//! Checks of the free-GPU index.

use super::*;
use crate::testing::{cluster, job, occupy};
use crate::{Job, Jobs};

/// SplitMix64, enough randomness for these checks.
fn rng(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn bucket_walk_chooses_exactly_like_the_scan() {
    let mut state = 7;
    for _ in 0..200 {
        let mut snapshot = cluster(3, 6, 8);
        let busy: Vec<u32> = (0..snapshot.gpus.len() as u32)
            .filter(|_| rng(&mut state).is_multiple_of(3))
            .collect();
        occupy(&mut snapshot, busy);
        let index = FreeIndex::new(&snapshot);
        for count in 1..=index.total_free() + 1 {
            assert_eq!(
                index.choose_across_buckets(count),
                index.choose_across_scan(count, 0, None),
                "count {count}"
            );
        }
    }
}

/// The same after GPUs were taken one placement at a time (buckets reordered by `take`).
#[test]
fn bucket_walk_chooses_exactly_like_the_scan_after_takes() {
    let mut state = 11;
    for _ in 0..100 {
        let snapshot = cluster(3, 6, 8);
        let mut index = FreeIndex::new(&snapshot);
        while index.total_free() > 0 {
            for count in 1..=index.total_free() + 1 {
                assert_eq!(
                    index.choose_across_buckets(count),
                    index.choose_across_scan(count, 0, None),
                    "count {count}"
                );
            }
            let want = 1 + (rng(&mut state) % u64::from(index.total_free().min(20))) as u32;
            let gpus = index.choose_across_buckets(want).expect("enough free GPUs");
            let gpus: Vec<u32> = gpus
                .into_iter()
                .filter(|_| !rng(&mut state).is_multiple_of(4))
                .collect();
            let gpus = if gpus.is_empty() {
                let node = (0..index.node_count() as u32).find(|&n| !index.node_free(n).is_empty());
                vec![index.node_free(node.expect("a free GPU"))[0]]
            } else {
                gpus
            };
            index.take(0, &gpus);
        }
    }
}

#[test]
fn priority_order_is_priority_then_submission_then_position() {
    let mut state = 3;
    // Sorted submissions with a narrow priority range (counting sort) and a wide one (keys
    // sorted), and unsorted submissions.
    for (sorted, levels, extremes) in [
        (true, 5, false),
        (true, 5000, false),
        (true, 5, true),
        (false, 5, true),
    ] {
        let mut queue: Vec<Job> = (0..500)
            .map(|i| {
                let mut j = job(0, 1);
                j.priority = (rng(&mut state) % levels) as i32 - 2;
                j.submit_s = if sorted {
                    i as f64 / 3.0
                } else {
                    (rng(&mut state) % 50) as f64
                };
                j
            })
            .collect();
        if extremes {
            queue[7].priority = i32::MIN;
            queue[9].priority = i32::MAX;
        }
        let order = priority_order(&Jobs::from(queue.clone()));
        let mut want: Vec<u32> = (0..queue.len() as u32).collect();
        want.sort_by(|&a, &b| {
            let (x, y) = (&queue[a as usize], &queue[b as usize]);
            y.priority
                .cmp(&x.priority)
                .then(x.submit_s.total_cmp(&y.submit_s))
                .then(a.cmp(&b))
        });
        assert_eq!(
            order, want,
            "sorted {sorted}, {levels} levels, extremes {extremes}"
        );
    }
}
