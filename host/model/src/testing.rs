//! Builders for snapshots and queues in plugin unit tests.

use crate::{Gpu, Gpus, Job, Jobs, Node, Snapshot, Tenant, Topology};

/// A cluster of `racks` racks, each with `nodes_per_rack` nodes of `gpus_per_node` free 80 GiB
/// GPUs; each node is one NVLink domain. Two tenants, `a` and `b`, without quotas.
pub fn cluster(racks: u32, nodes_per_rack: u32, gpus_per_node: u32) -> Snapshot {
    let mut snapshot = Snapshot {
        now_s: 0.0,
        gpus: Gpus::default(),
        nodes: Vec::new(),
        rack_count: racks,
        nvlink_domain_count: 0,
        model_count: 1,
        tenants: ["a", "b"]
            .iter()
            .map(|name| Tenant {
                name: name.to_string(),
                quota_gpus: None,
                used_gpus: 0,
                used_memory_mib: 0,
                weight: 1.0,
            })
            .collect(),
        running: Vec::new(),
    };
    for rack in 0..racks {
        for _ in 0..nodes_per_rack {
            let node = snapshot.nodes.len() as u32;
            snapshot.nodes.push(Node { rack });
            snapshot.nvlink_domain_count += 1;
            for _ in 0..gpus_per_node {
                snapshot.gpus.push(Gpu {
                    node,
                    nvlink_domain: node,
                    rack,
                    model: 0,
                    memory_total_mib: 81920,
                    memory_free_mib: 81920,
                    healthy: true,
                    busy: false,
                });
            }
        }
    }
    snapshot
}

/// Marks the GPUs `gpus` busy.
pub fn occupy(snapshot: &mut Snapshot, gpus: impl IntoIterator<Item = u32>) {
    for g in gpus {
        snapshot.gpus.busy[g as usize] = 1;
    }
}

/// A gang job of tenant `tenant` asking for `gpus` GPUs of 40 GiB, priority 0, one hour.
pub fn job(tenant: u32, gpus: u32) -> Job {
    Job {
        tenant,
        priority: 0,
        gpus,
        memory_per_gpu_mib: 40960,
        gang: true,
        topology: Topology::None,
        est_runtime_s: 3600.0,
        submit_s: 0.0,
    }
}

/// A queue of `jobs`, in order.
pub fn jobs(rows: impl IntoIterator<Item = Job>) -> Jobs {
    rows.into_iter().collect()
}

/// Edits the GPUs of `snapshot` whose indices fall in `range`, as rows.
pub fn edit_gpus(
    snapshot: &mut Snapshot,
    range: impl std::ops::RangeBounds<usize>,
    mut edit: impl FnMut(&mut Gpu),
) {
    use std::ops::Bound;
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e + 1,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => snapshot.gpus.len(),
    };
    for i in start..end {
        let mut gpu = snapshot.gpus.row(i);
        edit(&mut gpu);
        snapshot.gpus.set(i, gpu);
    }
}
