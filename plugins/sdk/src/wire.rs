//! Conversion between the world's columns and the SDK's rows.

use crate::model::{Allocation, Gpu, Job, Node, Placement, Snapshot, Tenant, Topology};
use crate::scheduler::exports::gantry::scheduler::strategy as wit;
use crate::scheduler::gantry::host::types::PluginError;
use crate::scheduler::gantry::scheduler::types as t;

fn same_length(what: &str, expected: usize, lens: &[usize]) -> Result<(), PluginError> {
    match lens.iter().find(|&&l| l != expected) {
        Some(l) => Err(PluginError::InvalidInput(format!(
            "{what} columns differ in length ({l} vs {expected})"
        ))),
        None => Ok(()),
    }
}

/// The snapshot and queue as rows; column lists of unequal length are refused.
pub fn rows(
    snapshot: wit::Snapshot,
    queue: wit::Jobs,
) -> Result<(Snapshot, Vec<Job>), PluginError> {
    let g = snapshot.gpus;
    let n = g.node.len();
    same_length(
        "gpu",
        n,
        &[
            g.nvlink_domain.len(),
            g.rack.len(),
            g.model.len(),
            g.memory_total_mib.len(),
            g.memory_free_mib.len(),
            g.healthy.len(),
            g.busy.len(),
        ],
    )?;
    let gpus = (0..n)
        .map(|i| Gpu {
            node: g.node[i],
            nvlink_domain: g.nvlink_domain[i],
            rack: g.rack[i],
            model: g.model[i],
            memory_total_mib: g.memory_total_mib[i],
            memory_free_mib: g.memory_free_mib[i],
            healthy: g.healthy[i],
            busy: g.busy[i],
        })
        .collect();
    let q = queue;
    let m = q.tenant.len();
    same_length(
        "job",
        m,
        &[
            q.priority.len(),
            q.gpus.len(),
            q.memory_per_gpu_mib.len(),
            q.gang.len(),
            q.topology.len(),
            q.est_runtime_s.len(),
            q.submit_s.len(),
        ],
    )?;
    let jobs = (0..m)
        .map(|i| Job {
            tenant: q.tenant[i],
            priority: q.priority[i],
            gpus: q.gpus[i],
            memory_per_gpu_mib: q.memory_per_gpu_mib[i],
            gang: q.gang[i],
            topology: match q.topology[i] {
                t::Topology::None => Topology::None,
                t::Topology::SameNode => Topology::SameNode,
                t::Topology::SameNvlinkDomain => Topology::SameNvlinkDomain,
                t::Topology::SameRack => Topology::SameRack,
            },
            est_runtime_s: q.est_runtime_s[i],
            submit_s: q.submit_s[i],
        })
        .collect();
    let snapshot = Snapshot {
        now_s: snapshot.now_s,
        gpus,
        nodes: snapshot
            .node_rack
            .into_iter()
            .map(|rack| Node { rack })
            .collect(),
        rack_count: snapshot.rack_count,
        nvlink_domain_count: snapshot.nvlink_domain_count,
        model_count: snapshot.model_count,
        tenants: snapshot
            .tenants
            .into_iter()
            .map(|t| Tenant {
                name: t.name,
                quota_gpus: t.quota_gpus,
                used_gpus: t.used_gpus,
                used_memory_mib: t.used_memory_mib,
                weight: t.weight,
            })
            .collect(),
        running: snapshot
            .running
            .into_iter()
            .map(|a| Allocation {
                tenant: a.tenant,
                priority: a.priority,
                gpus: a.gpus,
                start_s: a.start_s,
                expected_end_s: a.expected_end_s,
            })
            .collect(),
    };
    Ok((snapshot, jobs))
}

/// Placements in the world's type.
pub fn placements(rows: Vec<Placement>) -> Vec<wit::Placement> {
    rows.into_iter()
        .map(|p| wit::Placement {
            job: p.job,
            gpus: p.gpus,
        })
        .collect()
}
