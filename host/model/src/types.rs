//! The scheduler's data: GPUs and jobs as columns with row views, the rest as rows.
//!
//! The WIT world moves GPUs and jobs as columns, one list per attribute, because lists of numbers
//! cross the sandbox boundary as single copies. [`Gpus`] and [`Jobs`] keep that layout, so the
//! SDK hands the lists to a strategy without converting them, and hot loops can read one column;
//! [`Gpus::row`] and [`Jobs::row`] give a [`Gpu`] or [`Job`] row when that reads better.

/// Where a job wants its GPUs to be, relative to each other.
///
/// It crosses the boundary as a code in `jobs.topology` (`list<u8>`, one copy for the whole
/// queue where a `list<enum>` is converted element by element): the WIT documents the codes
/// there, and a test holds [`Topology::code`] and [`Topology::name`] to that text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum Topology {
    /// Any GPUs will do.
    #[default]
    None = 0,
    /// All GPUs on one node.
    SameNode = 1,
    /// All GPUs in one NVLink domain.
    SameNvlinkDomain = 2,
    /// All GPUs in one rack.
    SameRack = 3,
}

impl Topology {
    /// Every case, in code order.
    pub const ALL: [Topology; 4] = [
        Topology::None,
        Topology::SameNode,
        Topology::SameNvlinkDomain,
        Topology::SameRack,
    ];

    /// The case's code in `jobs.topology`.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The case with that code, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// The case's name in files, traces and requests (`same-node`).
    pub fn name(self) -> &'static str {
        match self {
            Topology::None => "none",
            Topology::SameNode => "same-node",
            Topology::SameNvlinkDomain => "same-nvlink-domain",
            Topology::SameRack => "same-rack",
        }
    }
}

impl std::fmt::Display for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A topology name that is none of [`Topology::ALL`]'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTopology(pub String);

impl std::fmt::Display for UnknownTopology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown topology `{}` (none, same-node, same-nvlink-domain, same-rack)",
            self.0
        )
    }
}

impl std::error::Error for UnknownTopology {}

impl std::str::FromStr for Topology {
    type Err = UnknownTopology;

    /// A name as [`Topology::name`] gives it; the empty string is `none`.
    fn from_str(s: &str) -> Result<Self, UnknownTopology> {
        if s.is_empty() {
            return Ok(Topology::None);
        }
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownTopology(s.to_string()))
    }
}

/// One GPU as a row (see [`Gpus::row`]).
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

impl Gpu {
    /// The GPUs of a uniform cluster, in node order: `racks` racks of `nodes_per_rack` nodes
    /// with `gpus_per_node` healthy, idle H100-80GB GPUs (model 0, 80 GiB free) each; node `n`
    /// is NVLink domain `n`. Benchmarks, examples and tests build their clusters from it.
    pub fn uniform(
        racks: u32,
        nodes_per_rack: u32,
        gpus_per_node: u32,
    ) -> impl Iterator<Item = Gpu> {
        (0..racks).flat_map(move |rack| {
            (0..nodes_per_rack).flat_map(move |n| {
                let node = rack * nodes_per_rack + n;
                (0..gpus_per_node).map(move |_| Gpu {
                    node,
                    nvlink_domain: node,
                    rack,
                    model: 0,
                    memory_total_mib: 81920,
                    memory_free_mib: 81920,
                    healthy: true,
                    busy: false,
                })
            })
        })
    }
}

/// Every GPU, one vector per attribute: entry `i` of each describes GPU `i`. All vectors have
/// the same length (the SDK refuses a snapshot where they do not).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Gpus {
    /// Index of each GPU's node.
    pub node: Vec<u32>,
    /// Index of each GPU's NVLink domain.
    pub nvlink_domain: Vec<u32>,
    /// Index of each GPU's rack.
    pub rack: Vec<u32>,
    /// Index of each GPU's model.
    pub model: Vec<u32>,
    /// Device memory, MiB.
    pub memory_total_mib: Vec<u32>,
    /// Memory available to a job, MiB.
    pub memory_free_mib: Vec<u32>,
    /// 1 while the GPU passes health checks, else 0.
    pub healthy: Vec<u8>,
    /// 1 while a running allocation holds it, else 0.
    pub busy: Vec<u8>,
}

impl Gpus {
    /// Number of GPUs.
    pub fn len(&self) -> usize {
        self.node.len()
    }

    /// True when there are no GPUs.
    pub fn is_empty(&self) -> bool {
        self.node.is_empty()
    }

    /// GPU `i` as a row. Panics when `i` is out of range.
    pub fn row(&self, i: usize) -> Gpu {
        Gpu {
            node: self.node[i],
            nvlink_domain: self.nvlink_domain[i],
            rack: self.rack[i],
            model: self.model[i],
            memory_total_mib: self.memory_total_mib[i],
            memory_free_mib: self.memory_free_mib[i],
            healthy: self.healthy[i] != 0,
            busy: self.busy[i] != 0,
        }
    }

    /// GPU `i` as a row, if it exists.
    pub fn get(&self, i: usize) -> Option<Gpu> {
        (i < self.len()).then(|| self.row(i))
    }

    /// Every GPU as a row, in index order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Gpu> + Clone + '_ {
        (0..self.len()).map(|i| self.row(i))
    }

    /// True when GPU `i` is healthy and not held: a candidate for placement.
    pub fn is_free(&self, i: usize) -> bool {
        self.healthy[i] != 0 && self.busy[i] == 0
    }

    /// Overwrites GPU `i` with `gpu`. Panics when `i` is out of range.
    pub fn set(&mut self, i: usize, gpu: Gpu) {
        self.node[i] = gpu.node;
        self.nvlink_domain[i] = gpu.nvlink_domain;
        self.rack[i] = gpu.rack;
        self.model[i] = gpu.model;
        self.memory_total_mib[i] = gpu.memory_total_mib;
        self.memory_free_mib[i] = gpu.memory_free_mib;
        self.healthy[i] = u8::from(gpu.healthy);
        self.busy[i] = u8::from(gpu.busy);
    }

    /// Appends a GPU.
    pub fn push(&mut self, gpu: Gpu) {
        self.node.push(gpu.node);
        self.nvlink_domain.push(gpu.nvlink_domain);
        self.rack.push(gpu.rack);
        self.model.push(gpu.model);
        self.memory_total_mib.push(gpu.memory_total_mib);
        self.memory_free_mib.push(gpu.memory_free_mib);
        self.healthy.push(u8::from(gpu.healthy));
        self.busy.push(u8::from(gpu.busy));
    }
}

impl FromIterator<Gpu> for Gpus {
    fn from_iter<I: IntoIterator<Item = Gpu>>(rows: I) -> Self {
        let mut gpus = Gpus::default();
        for gpu in rows {
            gpus.push(gpu);
        }
        gpus
    }
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
    pub gpus: Gpus,
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

/// One pending job as a row (see [`Jobs::row`]).
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

/// The pending queue in submission order, one vector per attribute: entry `i` of each describes
/// job `i`, and `i` is the job's index in placements. All vectors have the same length.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Jobs {
    /// Index of each job's tenant.
    pub tenant: Vec<u32>,
    /// Higher runs first.
    pub priority: Vec<i32>,
    /// GPUs still to place.
    pub gpus: Vec<u32>,
    /// Memory each GPU must have free, MiB.
    pub memory_per_gpu_mib: Vec<u32>,
    /// 1: all GPUs in one cycle or none; 0: any part now, the rest later.
    pub gang: Vec<u8>,
    /// Topology preference, as [`Topology::code`].
    pub topology: Vec<u8>,
    /// Estimated runtime, seconds.
    pub est_runtime_s: Vec<f64>,
    /// Submission time, seconds.
    pub submit_s: Vec<f64>,
}

impl Jobs {
    /// Number of jobs.
    pub fn len(&self) -> usize {
        self.tenant.len()
    }

    /// True when the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.tenant.is_empty()
    }

    /// Job `i` as a row. Panics when `i` is out of range.
    pub fn row(&self, i: usize) -> Job {
        Job {
            tenant: self.tenant[i],
            priority: self.priority[i],
            gpus: self.gpus[i],
            memory_per_gpu_mib: self.memory_per_gpu_mib[i],
            gang: self.gang[i] != 0,
            topology: Topology::from_code(self.topology[i]).unwrap_or_default(),
            est_runtime_s: self.est_runtime_s[i],
            submit_s: self.submit_s[i],
        }
    }

    /// Job `i` as a row, if it exists.
    pub fn get(&self, i: usize) -> Option<Job> {
        (i < self.len()).then(|| self.row(i))
    }

    /// Every job as a row, in queue order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Job> + Clone + '_ {
        (0..self.len()).map(|i| self.row(i))
    }

    /// Appends a job.
    pub fn push(&mut self, job: Job) {
        self.tenant.push(job.tenant);
        self.priority.push(job.priority);
        self.gpus.push(job.gpus);
        self.memory_per_gpu_mib.push(job.memory_per_gpu_mib);
        self.gang.push(u8::from(job.gang));
        self.topology.push(job.topology.code());
        self.est_runtime_s.push(job.est_runtime_s);
        self.submit_s.push(job.submit_s);
    }
}

impl FromIterator<Job> for Jobs {
    fn from_iter<I: IntoIterator<Item = Job>>(rows: I) -> Self {
        let mut jobs = Jobs::default();
        for job in rows {
            jobs.push(job);
        }
        jobs
    }
}

impl From<Vec<Job>> for Jobs {
    fn from(rows: Vec<Job>) -> Self {
        rows.into_iter().collect()
    }
}

/// GPUs given to one pending job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Index into the queue.
    pub job: u32,
    /// GPU indices.
    pub gpus: Vec<u32>,
}

#[cfg(test)]
mod tests;
