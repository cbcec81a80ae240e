//! Rows to the world's columns and back, for calls into scheduler plugins.

use super::model::{Job, Placement, Snapshot, Topology};
use crate::bindings::sched_v0_1 as wit;

/// The snapshot and queue as the world passes them.
pub fn columns(snapshot: &Snapshot, queue: &[Job]) -> (wit::Snapshot, wit::Jobs) {
    let g = &snapshot.gpus;
    let col = |f: fn(&super::model::Gpu) -> u32| g.iter().map(f).collect::<Vec<u32>>();
    let gpus = wit::Gpus {
        node: col(|g| g.node),
        nvlink_domain: col(|g| g.nvlink_domain),
        rack: col(|g| g.rack),
        model: col(|g| g.model),
        memory_total_mib: col(|g| g.memory_total_mib),
        memory_free_mib: col(|g| g.memory_free_mib),
        healthy: g.iter().map(|g| g.healthy).collect(),
        busy: g.iter().map(|g| g.busy).collect(),
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
        running: snapshot
            .running
            .iter()
            .map(|a| wit::Allocation {
                tenant: a.tenant,
                priority: a.priority,
                gpus: a.gpus.clone(),
                start_s: a.start_s,
                expected_end_s: a.expected_end_s,
            })
            .collect(),
    };
    let jobs = wit::Jobs {
        tenant: queue.iter().map(|j| j.tenant).collect(),
        priority: queue.iter().map(|j| j.priority).collect(),
        gpus: queue.iter().map(|j| j.gpus).collect(),
        memory_per_gpu_mib: queue.iter().map(|j| j.memory_per_gpu_mib).collect(),
        gang: queue.iter().map(|j| j.gang).collect(),
        topology: queue
            .iter()
            .map(|j| match j.topology {
                Topology::None => wit::Topology::None,
                Topology::SameNode => wit::Topology::SameNode,
                Topology::SameNvlinkDomain => wit::Topology::SameNvlinkDomain,
                Topology::SameRack => wit::Topology::SameRack,
            })
            .collect(),
        est_runtime_s: queue.iter().map(|j| j.est_runtime_s).collect(),
        submit_s: queue.iter().map(|j| j.submit_s).collect(),
    };
    (snap, jobs)
}

/// The plugin's placements as rows.
pub fn placements(answer: Vec<wit::Placement>) -> Vec<Placement> {
    answer
        .into_iter()
        .map(|p| Placement {
            job: p.job,
            gpus: p.gpus,
        })
        .collect()
}
