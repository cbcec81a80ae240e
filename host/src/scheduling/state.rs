//! What runs where: the live state of a cluster.

use serde::Serialize;

use crate::cluster::{Cluster, JobSpec};

/// A job waiting for (some of) its GPUs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingJob {
    /// The job as submitted.
    pub spec: JobSpec,
    /// Index of its tenant.
    pub tenant: u32,
    /// GPUs still to place (a non-gang job may be placed in parts).
    pub remaining: u32,
    /// Unique among the jobs this state ever queued: how a scheduling cycle finds its jobs again
    /// after the queue changed under it, without copying their ids.
    #[serde(skip)]
    pub key: u64,
}

/// GPUs held by (part of) a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunningAlloc {
    /// Unique id of this allocation.
    pub id: u64,
    /// The job it belongs to.
    pub job_id: String,
    /// Index of the job's tenant.
    pub tenant: u32,
    /// The job's priority.
    pub priority: i32,
    /// GPU indices.
    pub gpus: Vec<u32>,
    /// Memory each GPU was asked for, MiB.
    pub memory_per_gpu_mib: u32,
    /// Start, seconds.
    pub start_s: f64,
    /// Start plus the job's estimated runtime.
    pub expected_end_s: f64,
}

/// The cluster, the queue and the running allocations.
#[derive(Debug, Clone)]
pub struct ClusterState {
    /// The static cluster.
    pub cluster: Cluster,
    /// Pending jobs in submission order.
    pub pending: Vec<PendingJob>,
    /// Running allocations.
    pub running: Vec<RunningAlloc>,
    /// Allocation holding each GPU.
    pub holder: Vec<Option<u64>>,
    /// GPUs held per tenant.
    pub used_gpus: Vec<u32>,
    /// GPU memory asked for per tenant, MiB.
    pub used_memory_mib: Vec<u64>,
    next_alloc: u64,
    next_key: u64,
}

impl ClusterState {
    /// Adds a node and its GPUs, out of service and free: see [`Cluster::add_node`].
    pub fn add_node(
        &mut self,
        name: &str,
        rack: &str,
        gpus: &[(String, String, u32)],
    ) -> Result<(), String> {
        self.cluster.add_node(name, rack, gpus)?;
        self.holder.resize(self.cluster.gpus.len(), None);
        Ok(())
    }

    /// Changes a node to what it has now: see [`Cluster::update_node`].
    pub fn update_node(
        &mut self,
        name: &str,
        rack: &str,
        gpus: &[(String, String, u32)],
    ) -> Result<Vec<usize>, String> {
        let missing = self.cluster.update_node(name, rack, gpus)?;
        self.holder.resize(self.cluster.gpus.len(), None);
        Ok(missing)
    }

    /// An idle cluster.
    pub fn new(cluster: Cluster) -> Self {
        let tenants = cluster.tenants.len();
        Self {
            holder: vec![None; cluster.gpus.len()],
            cluster,
            pending: Vec::new(),
            running: Vec::new(),
            used_gpus: vec![0; tenants],
            used_memory_mib: vec![0; tenants],
            next_alloc: 1,
            next_key: 1,
        }
    }

    /// Queues a job whose tenant is `tenant`.
    pub fn enqueue(&mut self, spec: JobSpec, tenant: u32) {
        self.pending.push(PendingJob {
            remaining: spec.gpus,
            spec,
            tenant,
            key: self.next_key,
        });
        self.next_key += 1;
    }

    /// Gives `gpus` to the pending job at `position`; returns the new allocation. The caller has
    /// validated the placement.
    pub fn allocate(&mut self, position: usize, gpus: Vec<u32>, now_s: f64) -> RunningAlloc {
        let job = &mut self.pending[position];
        job.remaining -= gpus.len() as u32;
        let alloc = RunningAlloc {
            id: self.next_alloc,
            job_id: job.spec.id.clone(),
            tenant: job.tenant,
            priority: job.spec.priority,
            memory_per_gpu_mib: job.spec.memory_per_gpu_mib,
            start_s: now_s,
            expected_end_s: now_s + job.spec.est_runtime_s,
            gpus,
        };
        self.next_alloc += 1;
        for &g in &alloc.gpus {
            self.holder[g as usize] = Some(alloc.id);
        }
        let t = alloc.tenant as usize;
        self.used_gpus[t] += alloc.gpus.len() as u32;
        self.used_memory_mib[t] += alloc.gpus.len() as u64 * alloc.memory_per_gpu_mib as u64;
        self.running.push(alloc.clone());
        alloc
    }

    /// Drops pending jobs that have nothing left to place.
    pub fn prune_pending(&mut self) {
        self.pending.retain(|j| j.remaining > 0);
    }

    /// Ends the allocation `id`, freeing its GPUs; returns it.
    pub fn release(&mut self, id: u64) -> Option<RunningAlloc> {
        let pos = self.running.iter().position(|a| a.id == id)?;
        let alloc = self.running.swap_remove(pos);
        for &g in &alloc.gpus {
            self.holder[g as usize] = None;
        }
        let t = alloc.tenant as usize;
        self.used_gpus[t] -= alloc.gpus.len() as u32;
        self.used_memory_mib[t] -= alloc.gpus.len() as u64 * alloc.memory_per_gpu_mib as u64;
        Some(alloc)
    }

    /// Healthy GPUs in the cluster.
    pub fn healthy_gpus(&self) -> usize {
        self.cluster.gpus.iter().filter(|g| g.gpu.healthy).count()
    }

    /// GPUs held by running allocations.
    pub fn busy_gpus(&self) -> usize {
        self.holder.iter().filter(|h| h.is_some()).count()
    }
}
