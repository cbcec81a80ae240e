use super::pack;
use crate::testing::{cluster, job, jobs, occupy, priority_queues};

#[test]
fn small_job_goes_to_the_fullest_node_that_fits() {
    let mut snapshot = cluster(1, 3, 8);
    occupy(&mut snapshot, 0..6); // node 0: 2 free
    occupy(&mut snapshot, 8..12); // node 1: 4 free; node 2: 8 free
    let placements = pack(&snapshot, &jobs([job(0, 2), job(0, 3)]));
    assert_eq!(placements.len(), 2);
    assert_eq!(
        placements[0].gpus,
        vec![6, 7],
        "2-GPU job fills node 0's hole"
    );
    assert_eq!(
        placements[1].gpus,
        vec![12, 13, 14],
        "3-GPU job goes to node 1"
    );
}

#[test]
fn large_gang_takes_whole_nodes_then_best_fits_the_rest() {
    let mut snapshot = cluster(1, 3, 8);
    occupy(&mut snapshot, 8..13); // node 1: 3 free
    let placements = pack(&snapshot, &jobs([job(0, 11)]));
    assert_eq!(placements.len(), 1);
    let gpus = &placements[0].gpus;
    assert_eq!(gpus.len(), 11);
    // Node 0 whole (8), remainder 3 best-fits node 1 rather than breaking node 2.
    assert!(gpus.iter().all(|&g| g < 16), "{gpus:?}");
}

#[test]
fn gang_that_cannot_fit_is_skipped_and_smaller_jobs_still_run() {
    let snapshot = cluster(1, 2, 8);
    let placements = pack(&snapshot, &jobs([job(0, 17), job(1, 4)]));
    assert_eq!(placements.len(), 1);
    assert_eq!(placements[0].job, 1);
}

#[test]
fn non_gang_job_takes_what_is_free() {
    let mut snapshot = cluster(1, 1, 8);
    occupy(&mut snapshot, 0..5);
    let mut partial = job(0, 6);
    partial.gang = false;
    let placements = pack(&snapshot, &jobs([partial]));
    assert_eq!(placements[0].gpus, vec![5, 6, 7]);
}

#[test]
fn quota_and_memory_are_respected() {
    let mut snapshot = cluster(1, 2, 8);
    snapshot.tenants[0].quota_gpus = Some(4);
    for memory in &mut snapshot.gpus.memory_free_mib[8..] {
        *memory = 20000; // node 1 too small for 40 GiB jobs
    }
    let placements = pack(&snapshot, &jobs([job(0, 6), job(0, 4), job(0, 1)]));
    assert_eq!(placements.len(), 1, "{placements:?}");
    assert_eq!(placements[0].job, 1);
    assert!(placements[0].gpus.iter().all(|&g| g < 8));
}

#[test]
fn higher_priority_goes_first() {
    let snapshot = cluster(1, 1, 8);
    for queue in priority_queues() {
        let placements = pack(&snapshot, &queue);
        assert_eq!(placements.len(), 1);
        assert_eq!(placements[0].job, 1, "{queue:?}");
    }
}
