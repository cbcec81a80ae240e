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
    let mut checker = Checker::new(snapshot, queue);
    for (i, p) in placements.iter().enumerate() {
        checker.add(i, p)?;
    }
    Ok(())
}

/// The rules applied one placement at a time, each against those accepted before it: a caller
/// keeping what passes (the host, re-checking an answer against a state that changed) checks
/// each once, not the whole answer again per placement (quadratic under the host's lock).
pub struct Checker<'a> {
    snapshot: &'a Snapshot,
    queue: &'a Jobs,
    job_seen: Vec<bool>,
    gpu_taken: Vec<bool>,
    tenant_taken: Vec<u64>,
}

impl<'a> Checker<'a> {
    /// Nothing accepted yet.
    pub fn new(snapshot: &'a Snapshot, queue: &'a Jobs) -> Checker<'a> {
        Checker {
            snapshot,
            queue,
            job_seen: vec![false; queue.len()],
            gpu_taken: vec![false; snapshot.gpus.len()],
            tenant_taken: vec![0; snapshot.tenants.len()],
        }
    }

    /// Accepts placement `p` (number `i`, for errors) if it passes beside those accepted; a
    /// refused one leaves nothing behind.
    pub fn add(&mut self, i: usize, p: &Placement) -> Result<(), String> {
        let job = self.queue.get(p.job as usize).ok_or_else(|| {
            format!(
                "placement {i}: job {} is not in the queue of {}",
                p.job,
                self.queue.len()
            )
        })?;
        if self.job_seen[p.job as usize] {
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
        let t = job.tenant as usize;
        let tenant = self
            .snapshot
            .tenants
            .get(t)
            .ok_or_else(|| format!("placement {i}: job {} has unknown tenant {t}", p.job))?;
        let taken = self.tenant_taken[t] + n as u64;
        let gpus = self.take_gpus(i, p, job.memory_per_gpu_mib)?;
        if let Some(quota) = tenant.quota_gpus
            && tenant.used_gpus as u64 + taken > quota as u64
        {
            self.give_back(&p.gpus[..gpus]);
            return Err(format!(
                "placement {i}: tenant `{}` would hold {} GPUs, over its quota of {quota}",
                tenant.name,
                tenant.used_gpus as u64 + taken
            ));
        }
        self.tenant_taken[t] = taken;
        self.job_seen[p.job as usize] = true;
        Ok(())
    }

    /// Marks `p`'s GPUs taken, each checked first; on the first that fails, those marked are
    /// given back. The count marked on success.
    fn take_gpus(&mut self, i: usize, p: &Placement, memory_mib: u32) -> Result<usize, String> {
        for (k, &g) in p.gpus.iter().enumerate() {
            if let Err(e) = self.gpu_free(i, p.job, g, memory_mib) {
                self.give_back(&p.gpus[..k]);
                return Err(e);
            }
            self.gpu_taken[g as usize] = true;
        }
        Ok(p.gpus.len())
    }

    fn gpu_free(&self, i: usize, job: u32, g: u32, memory_mib: u32) -> Result<(), String> {
        let snapshot = self.snapshot;
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
        if self.gpu_taken[g as usize] {
            return Err(format!("placement {i}: GPU {g} is given twice"));
        }
        if gpu.memory_free_mib < memory_mib {
            return Err(format!(
                "placement {i}: GPU {g} has {} MiB free, job {job} needs {memory_mib}",
                gpu.memory_free_mib
            ));
        }
        Ok(())
    }

    fn give_back(&mut self, gpus: &[u32]) {
        for &g in gpus {
            self.gpu_taken[g as usize] = false;
        }
    }
}
