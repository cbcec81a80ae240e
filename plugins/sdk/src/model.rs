//! The scheduler's data as rows: one struct per GPU, job and allocation.
//!
//! The WIT world moves GPUs and jobs as columns (fast to copy across the boundary); strategies
//! are easier to write over rows. The SDK converts on entry, and the host compiles this same file
//! for its native strategy and its validation, so both sides share one definition.

/// Where a job wants its GPUs to be, relative to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Topology {
    /// Any GPUs will do.
    #[default]
    None,
    /// All GPUs on one node.
    SameNode,
    /// All GPUs in one NVLink domain.
    SameNvlinkDomain,
    /// All GPUs in one rack.
    SameRack,
}

impl Topology {
    /// The case's position in the WIT `topology` enum: its code in `jobs.topology`.
    pub fn code(self) -> u8 {
        match self {
            Topology::None => 0,
            Topology::SameNode => 1,
            Topology::SameNvlinkDomain => 2,
            Topology::SameRack => 3,
        }
    }

    /// The case with that code, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Topology::None,
            1 => Topology::SameNode,
            2 => Topology::SameNvlinkDomain,
            3 => Topology::SameRack,
            _ => return None,
        })
    }
}

/// One GPU; its position in [`Snapshot::gpus`] is its index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gpu {
    /// Index of its node.
    pub node: u32,
    /// Index of its NVLink domain.
    pub nvlink_domain: u32,
    /// Index of its rack.
    pub rack: u32,
    /// Index of its model.
    pub model: u32,
    /// Device memory, MiB.
    pub memory_total_mib: u32,
    /// Memory available to a job, MiB.
    pub memory_free_mib: u32,
    /// False once health checks fail.
    pub healthy: bool,
    /// True while a running allocation holds it.
    pub busy: bool,
}

/// A machine holding GPUs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node {
    /// Index of its rack.
    pub rack: u32,
}

/// A tenant with its usage and quota.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// Name.
    pub name: String,
    /// Most GPUs held at once; `None` is unlimited.
    pub quota_gpus: Option<u32>,
    /// GPUs held now.
    pub used_gpus: u32,
    /// GPU memory (MiB) asked for by its running allocations.
    pub used_memory_mib: u64,
    /// Fair-share weight.
    pub weight: f64,
}

/// GPUs held by a running job.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    /// Index of its tenant.
    pub tenant: u32,
    /// The job's priority.
    pub priority: i32,
    /// GPU indices.
    pub gpus: Vec<u32>,
    /// Start, seconds.
    pub start_s: f64,
    /// Expected end, seconds.
    pub expected_end_s: f64,
}

/// The cluster at one scheduling cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The host's clock, seconds.
    pub now_s: f64,
    /// Every GPU.
    pub gpus: Vec<Gpu>,
    /// Every node.
    pub nodes: Vec<Node>,
    /// Number of racks.
    pub rack_count: u32,
    /// Number of NVLink domains.
    pub nvlink_domain_count: u32,
    /// Number of GPU models.
    pub model_count: u32,
    /// Every tenant.
    pub tenants: Vec<Tenant>,
    /// Running allocations.
    pub running: Vec<Allocation>,
}

/// A pending job; its position in the queue is its index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Job {
    /// Index of its tenant.
    pub tenant: u32,
    /// Higher runs first.
    pub priority: i32,
    /// GPUs still to place.
    pub gpus: u32,
    /// Memory each GPU must have free, MiB.
    pub memory_per_gpu_mib: u32,
    /// All GPUs in one cycle or none.
    pub gang: bool,
    /// Topology preference.
    pub topology: Topology,
    /// Estimated runtime, seconds.
    pub est_runtime_s: f64,
    /// Submission time, seconds.
    pub submit_s: f64,
}

/// GPUs given to one pending job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Index into the queue.
    pub job: u32,
    /// GPU indices.
    pub gpus: Vec<u32>,
}
