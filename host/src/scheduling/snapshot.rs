//! Builds what a strategy sees from the live state.

use super::model::{Allocation, Gpu, Job, Node, Snapshot, Tenant, Topology};
use super::state::ClusterState;
use crate::cluster::TopologyPref;

/// The snapshot and the queue (pending jobs in submission order) for one cycle.
pub fn build(state: &ClusterState, now_s: f64) -> (Snapshot, Vec<Job>) {
    let c = &state.cluster;
    let snapshot = Snapshot {
        now_s,
        gpus: c
            .gpus
            .iter()
            .zip(&state.holder)
            .map(|(g, holder)| Gpu {
                node: g.node,
                nvlink_domain: g.nvlink_domain,
                rack: g.rack,
                model: g.model,
                memory_total_mib: g.memory_total_mib,
                memory_free_mib: g.memory_free_mib,
                healthy: g.healthy,
                busy: holder.is_some(),
            })
            .collect(),
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
    let queue = state
        .pending
        .iter()
        .map(|p| Job {
            tenant: p.tenant,
            priority: p.spec.priority,
            gpus: p.remaining,
            memory_per_gpu_mib: p.spec.memory_per_gpu_mib,
            gang: p.spec.gang,
            topology: match p.spec.topology {
                TopologyPref::None => Topology::None,
                TopologyPref::SameNode => Topology::SameNode,
                TopologyPref::SameNvlinkDomain => Topology::SameNvlinkDomain,
                TopologyPref::SameRack => Topology::SameRack,
            },
            est_runtime_s: p.spec.est_runtime_s,
            submit_s: p.spec.submit_time_s,
        })
        .collect();
    (snapshot, queue)
}
