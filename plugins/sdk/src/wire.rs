//! The one place where the scheduler world's types become the model and back, on the guest's
//! side. Records are taken apart field by field with exhaustive patterns, so a field added to
//! the WIT fails to compile here instead of being dropped.

use gantry_model::columns;

use crate::model::{Allocation, Gpus, Jobs, Node, Placement, Snapshot, Tenant, Topology};
use crate::scheduler::exports::gantry::scheduler::strategy as wit;
use crate::scheduler::gantry::host::types::PluginError;
use crate::scheduler::gantry::scheduler::types as t;

/// Moves the fields of the WIT record `$value` into the model's struct of the same fields. The
/// pattern names every field, so a field added to the WIT fails to compile here instead of being
/// dropped.
macro_rules! moved {
    ($value:expr, $($from:ident)::+ => $to:ident { $($field:ident),+ $(,)? }) => {{
        let $($from)::+ { $($field),+ } = $value;
        $to { $($field),+ }
    }};
}

/// [`moved!`] for a record of columns, refusing columns of unequal length (`$what` names the
/// row in the error).
macro_rules! columns {
    ($what:literal, $value:expr, $($from:ident)::+ => $to:ident {
        $first:ident $(, $field:ident)* $(,)?
    }) => {{
        let $($from)::+ { $first $(, $field)* } = $value;
        same_length($what, $first.len(), &[$($field.len()),*])?;
        $to { $first $(, $field)* }
    }};
}

fn same_length(what: &str, expected: usize, lens: &[usize]) -> Result<(), PluginError> {
    match lens.iter().find(|&&l| l != expected) {
        Some(l) => Err(PluginError::InvalidInput(format!(
            "{what} columns differ in length ({l} vs {expected})"
        ))),
        None => Ok(()),
    }
}

/// Refuses a flag column holding anything but 0 and 1.
fn check_flags(column: &str, codes: &[u8]) -> Result<(), PluginError> {
    match codes.iter().position(|&c| c > 1) {
        Some(i) => Err(PluginError::InvalidInput(format!(
            "{column}[{i}] is {}; expected 0 or 1",
            codes[i]
        ))),
        None => Ok(()),
    }
}

fn gpus(g: t::Gpus) -> Result<Gpus, PluginError> {
    let gpus = columns!("gpu", g, t::Gpus => Gpus {
        node,
        nvlink_domain,
        rack,
        model,
        memory_total_mib,
        memory_free_mib,
        healthy,
        busy,
    });
    check_flags("gpus.healthy", &gpus.healthy)?;
    check_flags("gpus.busy", &gpus.busy)?;
    Ok(gpus)
}

fn jobs(q: wit::Jobs) -> Result<Jobs, PluginError> {
    let jobs = columns!("job", q, wit::Jobs => Jobs {
        tenant,
        priority,
        gpus,
        memory_per_gpu_mib,
        gang,
        topology,
        est_runtime_s,
        submit_s,
    });
    check_flags("jobs.gang", &jobs.gang)?;
    if let Some(i) = jobs
        .topology
        .iter()
        .position(|&c| Topology::from_code(c).is_none())
    {
        return Err(PluginError::InvalidInput(format!(
            "jobs.topology[{i}] is {}; expected 0 to {}",
            jobs.topology[i],
            Topology::ALL.len() - 1
        )));
    }
    Ok(jobs)
}

fn allocations(r: t::Allocations) -> Result<Vec<Allocation>, PluginError> {
    let t::Allocations {
        tenant,
        priority,
        gpu_count,
        gpus,
        start_s,
        expected_end_s,
    } = r;
    same_length(
        "allocation",
        tenant.len(),
        &[
            priority.len(),
            gpu_count.len(),
            start_s.len(),
            expected_end_s.len(),
        ],
    )?;
    let runs = columns::split("running", &gpu_count, &gpus)
        .map_err(|e| PluginError::InvalidInput(e.to_string()))?;
    Ok(runs
        .enumerate()
        .map(|(i, run)| Allocation {
            tenant: tenant[i],
            priority: priority[i],
            gpus: run.to_vec(),
            start_s: start_s[i],
            expected_end_s: expected_end_s[i],
        })
        .collect())
}

fn tenant(t: t::Tenant) -> Tenant {
    moved!(t, t::Tenant => Tenant {
        name,
        quota_gpus,
        used_gpus,
        used_memory_mib,
        weight,
    })
}

/// The snapshot and queue in the SDK's model. The GPU and job columns are moved, not copied;
/// columns of unequal length and codes out of range are refused.
pub fn model(snapshot: wit::Snapshot, queue: wit::Jobs) -> Result<(Snapshot, Jobs), PluginError> {
    let wit::Snapshot {
        now_s,
        gpus: gpu_columns,
        node_rack,
        rack_count,
        nvlink_domain_count,
        model_count,
        tenants,
        running,
    } = snapshot;
    let snapshot = Snapshot {
        now_s,
        gpus: gpus(gpu_columns)?,
        nodes: node_rack.into_iter().map(|rack| Node { rack }).collect(),
        rack_count,
        nvlink_domain_count,
        model_count,
        tenants: tenants.into_iter().map(tenant).collect(),
        running: allocations(running)?,
    };
    Ok((snapshot, jobs(queue)?))
}

/// Placements in the world's columns.
pub fn placements(rows: Vec<Placement>) -> wit::Placements {
    let (gpu_count, gpus) = columns::flatten(rows.iter().map(|p| p.gpus.as_slice()));
    wit::Placements {
        job: rows.iter().map(|p| p.job).collect(),
        gpu_count,
        gpus,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(gpus: usize) -> wit::Snapshot {
        let n = gpus;
        wit::Snapshot {
            now_s: 5.0,
            gpus: t::Gpus {
                node: vec![0; n],
                nvlink_domain: vec![0; n],
                rack: vec![0; n],
                model: vec![0; n],
                memory_total_mib: vec![80; n],
                memory_free_mib: vec![80; n],
                healthy: vec![1; n],
                busy: vec![0; n],
            },
            node_rack: vec![0],
            rack_count: 1,
            nvlink_domain_count: 1,
            model_count: 1,
            tenants: Vec::new(),
            running: t::Allocations {
                tenant: vec![0, 0],
                priority: vec![1, 2],
                gpu_count: vec![1, 2],
                gpus: vec![0, 1, 2],
                start_s: vec![0.0, 1.0],
                expected_end_s: vec![9.0, 10.0],
            },
        }
    }

    fn jobs(n: usize) -> wit::Jobs {
        wit::Jobs {
            tenant: vec![0; n],
            priority: vec![0; n],
            gpus: vec![1; n],
            memory_per_gpu_mib: vec![1; n],
            gang: vec![1; n],
            topology: vec![2; n],
            est_runtime_s: vec![1.0; n],
            submit_s: vec![0.0; n],
        }
    }

    fn refusal(snapshot: wit::Snapshot, queue: wit::Jobs) -> String {
        match model(snapshot, queue) {
            Err(PluginError::InvalidInput(m)) => m,
            other => panic!("expected invalid-input, got {other:?}"),
        }
    }

    #[test]
    fn columns_become_the_model() {
        let (snap, queue) = model(snapshot(4), jobs(2)).unwrap();
        assert_eq!(snap.gpus.len(), 4);
        assert!(snap.gpus.iter().all(|g| g.healthy && !g.busy));
        assert_eq!(snap.running.len(), 2);
        assert_eq!(snap.running[0].gpus, vec![0]);
        assert_eq!(snap.running[1].gpus, vec![1, 2]);
        assert_eq!(queue.len(), 2);
        assert!(queue.row(0).gang);
        assert_eq!(queue.row(0).topology, Topology::SameNvlinkDomain);
    }

    #[test]
    fn bad_codes_and_ragged_columns_are_refused() {
        let mut s = snapshot(4);
        s.gpus.busy[3] = 2;
        assert!(refusal(s, jobs(1)).contains("gpus.busy[3] is 2; expected 0 or 1"));
        let mut q = jobs(3);
        q.topology[1] = 9;
        assert!(refusal(snapshot(4), q).contains("jobs.topology[1] is 9; expected 0 to 3"));
        let mut q = jobs(3);
        q.submit_s.pop();
        assert!(refusal(snapshot(4), q).contains("job columns differ in length (2 vs 3)"));
        let mut s = snapshot(4);
        s.running.gpus.pop();
        assert!(
            refusal(s, jobs(1))
                .contains("running.gpu-count sums to 3 but running.gpus has 2 entries")
        );
    }

    #[test]
    fn placements_become_flat_columns() {
        let flat = placements(vec![
            Placement {
                job: 3,
                gpus: vec![7, 8],
            },
            Placement {
                job: 0,
                gpus: vec![1],
            },
        ]);
        assert_eq!(flat.job, vec![3, 0]);
        assert_eq!(flat.gpu_count, vec![2, 1]);
        assert_eq!(flat.gpus, vec![7, 8, 1]);
    }
}
