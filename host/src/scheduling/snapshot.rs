//! Builds what a strategy sees from the live state.

use super::model::{Allocation, Gpus, Jobs, Node, Snapshot, Tenant};
use super::state::ClusterState;

/// The snapshot and the queue (pending jobs in submission order) for one cycle.
pub fn build(state: &ClusterState, now_s: f64) -> (Snapshot, Jobs) {
    let c = &state.cluster;
    let snapshot = Snapshot {
        now_s,
        gpus: Gpus {
            node: c.gpus.iter().map(|g| g.gpu.node).collect(),
            nvlink_domain: c.gpus.iter().map(|g| g.gpu.nvlink_domain).collect(),
            rack: c.gpus.iter().map(|g| g.gpu.rack).collect(),
            model: c.gpus.iter().map(|g| g.gpu.model).collect(),
            memory_total_mib: c.gpus.iter().map(|g| g.gpu.memory_total_mib).collect(),
            memory_free_mib: c.gpus.iter().map(|g| g.gpu.memory_free_mib).collect(),
            healthy: c.gpus.iter().map(|g| u8::from(g.gpu.healthy)).collect(),
            busy: state.holder.iter().map(|h| u8::from(h.is_some())).collect(),
        },
        nodes: c.nodes.iter().map(|n| Node { rack: n.rack }).collect(),
        rack_count: c.racks.len() as u32,
        nvlink_domain_count: c.nvlink_domains.len() as u32,
        model_count: c.models.len() as u32,
        tenants: c
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| Tenant {
                name: t.name.clone(),
                quota_gpus: t.quota_gpus,
                used_gpus: state.used_gpus[i],
                used_memory_mib: state.used_memory_mib[i],
                weight: t.weight,
            })
            .collect(),
        running: state
            .running
            .iter()
            .map(|a| Allocation {
                tenant: a.tenant,
                priority: a.priority,
                gpus: a.gpus.clone(),
                start_s: a.start_s,
                expected_end_s: a.expected_end_s,
            })
            .collect(),
    };
    let p = &state.pending;
    let queue = Jobs {
        tenant: p.iter().map(|p| p.tenant).collect(),
        priority: p.iter().map(|p| p.spec.priority).collect(),
        gpus: p.iter().map(|p| p.remaining).collect(),
        memory_per_gpu_mib: p.iter().map(|p| p.spec.memory_per_gpu_mib).collect(),
        gang: p.iter().map(|p| u8::from(p.spec.gang)).collect(),
        topology: p.iter().map(|p| p.spec.topology.code()).collect(),
        est_runtime_s: p.iter().map(|p| p.spec.est_runtime_s).collect(),
        submit_s: p.iter().map(|p| p.spec.submit_time_s).collect(),
    };
    (snapshot, queue)
}
