//! The one place where the model becomes the scheduler world's types and back, on the host's
//! side, for calls into scheduler plugins. The world's records are built and taken apart whole,
//! so a field added to the WIT fails to compile here instead of being dropped.

use gantry_model::columns;

use super::model::{Jobs, Placement, Snapshot};
use crate::bindings::sched_v0_1 as wit;

/// The snapshot and queue as the world passes them.
pub fn columns(snapshot: &Snapshot, queue: &Jobs) -> (wit::Snapshot, wit::Jobs) {
    let g = &snapshot.gpus;
    let gpus = wit::Gpus {
        node: g.node.clone(),
        nvlink_domain: g.nvlink_domain.clone(),
        rack: g.rack.clone(),
        model: g.model.clone(),
        memory_total_mib: g.memory_total_mib.clone(),
        memory_free_mib: g.memory_free_mib.clone(),
        healthy: g.healthy.clone(),
        busy: g.busy.clone(),
    };
    let r = &snapshot.running;
    let (gpu_count, running_gpus) = columns::flatten(r.iter().map(|a| a.gpus.as_slice()));
    let running = wit::Allocations {
        tenant: r.iter().map(|a| a.tenant).collect(),
        priority: r.iter().map(|a| a.priority).collect(),
        gpu_count,
        gpus: running_gpus,
        start_s: r.iter().map(|a| a.start_s).collect(),
        expected_end_s: r.iter().map(|a| a.expected_end_s).collect(),
    };
    let snap = wit::Snapshot {
        now_s: snapshot.now_s,
        gpus,
        node_rack: snapshot.nodes.iter().map(|n| n.rack).collect(),
        rack_count: snapshot.rack_count,
        nvlink_domain_count: snapshot.nvlink_domain_count,
        model_count: snapshot.model_count,
        tenants: snapshot
            .tenants
            .iter()
            .map(|t| wit::Tenant {
                name: t.name.clone(),
                quota_gpus: t.quota_gpus,
                used_gpus: t.used_gpus,
                used_memory_mib: t.used_memory_mib,
                weight: t.weight,
            })
            .collect(),
        running,
    };
    let jobs = wit::Jobs {
        tenant: queue.tenant.clone(),
        priority: queue.priority.clone(),
        gpus: queue.gpus.clone(),
        memory_per_gpu_mib: queue.memory_per_gpu_mib.clone(),
        gang: queue.gang.clone(),
        topology: queue.topology.clone(),
        est_runtime_s: queue.est_runtime_s.clone(),
        submit_s: queue.submit_s.clone(),
    };
    (snap, jobs)
}

/// The plugin's placements as rows, or why its columns do not fit together.
pub fn placements(answer: wit::Placements) -> Result<Vec<Placement>, String> {
    let wit::Placements {
        job,
        gpu_count,
        gpus,
    } = answer;
    if job.len() != gpu_count.len() {
        return Err(format!(
            "placements.job has {} entries but placements.gpu-count has {}",
            job.len(),
            gpu_count.len()
        ));
    }
    let runs = columns::split("placements", &gpu_count, &gpus).map_err(|e| e.to_string())?;
    Ok(job
        .into_iter()
        .zip(runs)
        .map(|(job, run)| Placement {
            job,
            gpus: run.to_vec(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(job: &[u32], gpu_count: &[u32], gpus: &[u32]) -> wit::Placements {
        wit::Placements {
            job: job.to_vec(),
            gpu_count: gpu_count.to_vec(),
            gpus: gpus.to_vec(),
        }
    }

    #[test]
    fn flat_placements_split_in_order() {
        let rows = placements(answer(&[4, 1, 7], &[2, 0, 3], &[10, 11, 20, 21, 22])).unwrap();
        let pairs: Vec<(u32, Vec<u32>)> = rows.into_iter().map(|p| (p.job, p.gpus)).collect();
        assert_eq!(
            pairs,
            vec![(4, vec![10, 11]), (1, vec![]), (7, vec![20, 21, 22])]
        );
    }

    #[test]
    fn columns_that_disagree_are_refused() {
        let e = placements(answer(&[1, 2], &[1], &[5])).unwrap_err();
        assert!(
            e.contains("placements.job has 2 entries but placements.gpu-count has 1"),
            "{e}"
        );
        let e = placements(answer(&[1], &[3], &[5, 6])).unwrap_err();
        assert!(
            e.contains("gpu-count sums to 3 but placements.gpus has 2"),
            "{e}"
        );
        // Counts whose sum overflows u32 must not wrap around to a plausible total.
        let e = placements(answer(&[1, 2], &[u32::MAX, 3], &[5, 6])).unwrap_err();
        assert!(e.contains("sums to 4294967298"), "{e}");
    }
}
