//! The rules every answer must pass (no GPU given twice, none busy or unhealthy, gangs whole,
//! memory and quotas respected). They live in `gantry-model` beside the model they read, so the
//! plugins' unit tests hold their strategies to the very checks the host applies.

use crate::{Jobs, Placement, Snapshot};

/// Checks `placements` against the snapshot and queue they answer. The error names the first
/// offending placement, GPU and rule.
pub fn validate(snapshot: &Snapshot, queue: &Jobs, placements: &[Placement]) -> Result<(), String> {
    if placements.len() > queue.len() {
        return Err(format!(
            "{} placements for a queue of {} jobs",
            placements.len(),
            queue.len()
        ));
    }
    let mut job_seen = vec![false; queue.len()];
    let mut gpu_taken = vec![false; snapshot.gpus.len()];
    let mut tenant_taken = vec![0u64; snapshot.tenants.len()];
    for (i, p) in placements.iter().enumerate() {
        let job = queue.get(p.job as usize).ok_or_else(|| {
            format!(
                "placement {i}: job {} is not in the queue of {}",
                p.job,
                queue.len()
            )
        })?;
        if std::mem::replace(&mut job_seen[p.job as usize], true) {
            return Err(format!("placement {i}: job {} is placed twice", p.job));
        }
        let n = p.gpus.len() as u32;
        if n == 0 {
            return Err(format!("placement {i}: job {} gets no GPUs", p.job));
        }
        if job.gang && n != job.gpus {
            return Err(format!(
                "placement {i}: gang job {} needs all {} GPUs at once, got {n}",
                p.job, job.gpus
            ));
        }
        if n > job.gpus {
            return Err(format!(
                "placement {i}: job {} asked for {} GPUs, got {n}",
                p.job, job.gpus
            ));
        }
        for &g in &p.gpus {
            let gpu = snapshot.gpus.get(g as usize).ok_or_else(|| {
                format!(
                    "placement {i}: GPU {g} does not exist ({} GPUs)",
                    snapshot.gpus.len()
                )
            })?;
            if !gpu.healthy {
                return Err(format!("placement {i}: GPU {g} is unhealthy"));
            }
            if gpu.busy {
                return Err(format!("placement {i}: GPU {g} is already allocated"));
            }
            if std::mem::replace(&mut gpu_taken[g as usize], true) {
                return Err(format!("placement {i}: GPU {g} is given twice"));
            }
            if gpu.memory_free_mib < job.memory_per_gpu_mib {
                return Err(format!(
                    "placement {i}: GPU {g} has {} MiB free, job {} needs {}",
                    gpu.memory_free_mib, p.job, job.memory_per_gpu_mib
                ));
            }
        }
        let t = job.tenant as usize;
        let tenant = snapshot
            .tenants
            .get(t)
            .ok_or_else(|| format!("placement {i}: job {} has unknown tenant {t}", p.job))?;
        tenant_taken[t] += n as u64;
        if let Some(quota) = tenant.quota_gpus
            && tenant.used_gpus as u64 + tenant_taken[t] > quota as u64
        {
            return Err(format!(
                "placement {i}: tenant `{}` would hold {} GPUs, over its quota of {quota}",
                tenant.name,
                tenant.used_gpus as u64 + tenant_taken[t]
            ));
        }
    }
    Ok(())
}
