//! The cluster model: nodes with GPUs, tenants with quotas, and jobs, loaded from TOML or JSON.

pub mod files;

use serde::{Deserialize, Serialize};

pub use files::ModelError;
pub use gantry_model::Topology;

/// One GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuInfo {
    /// Unique id, such as `node-003/gpu5`.
    pub id: String,
    /// Index into [`Cluster::nodes`].
    pub node: u32,
    /// Index into [`Cluster::nvlink_domains`].
    pub nvlink_domain: u32,
    /// Index into [`Cluster::racks`].
    pub rack: u32,
    /// Index into [`Cluster::models`].
    pub model: u32,
    /// Device memory, MiB.
    pub memory_total_mib: u32,
    /// Memory available to jobs, MiB.
    pub memory_free_mib: u32,
    /// False once health checks fail.
    pub healthy: bool,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeInfo {
    /// Unique name.
    pub name: String,
    /// Index into [`Cluster::racks`].
    pub rack: u32,
}

/// One tenant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantInfo {
    /// Unique name.
    pub name: String,
    /// Most GPUs held at once; `None` is unlimited.
    pub quota_gpus: Option<u32>,
    /// Fair-share weight.
    pub weight: f64,
}

/// The static shape of a cluster: what exists, not what runs on it.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Cluster {
    /// Every GPU.
    pub gpus: Vec<GpuInfo>,
    /// Every node.
    pub nodes: Vec<NodeInfo>,
    /// Rack names.
    pub racks: Vec<String>,
    /// NVLink domain names.
    pub nvlink_domains: Vec<String>,
    /// GPU model names.
    pub models: Vec<String>,
    /// Tenants.
    pub tenants: Vec<TenantInfo>,
}

impl Cluster {
    /// Index of the tenant called `name`.
    pub fn tenant_index(&self, name: &str) -> Option<u32> {
        self.tenants
            .iter()
            .position(|t| t.name == name)
            .map(|i| i as u32)
    }

    /// A uniform cluster for benchmarks and examples: `racks` racks of `nodes_per_rack` nodes with
    /// `gpus_per_node` H100-80GB GPUs each (one NVLink domain per node), and `tenants` tenants
    /// named `tenant-0`.. without quotas.
    pub fn uniform(racks: u32, nodes_per_rack: u32, gpus_per_node: u32, tenants: u32) -> Self {
        let mut cluster = Cluster {
            models: vec!["H100-80GB".into()],
            racks: (0..racks).map(|r| format!("rack-{r}")).collect(),
            tenants: (0..tenants)
                .map(|t| TenantInfo {
                    name: format!("tenant-{t}"),
                    quota_gpus: None,
                    weight: 1.0,
                })
                .collect(),
            ..Default::default()
        };
        for rack in 0..racks {
            for _ in 0..nodes_per_rack {
                let node = cluster.nodes.len() as u32;
                let name = format!("node-{node:04}");
                for g in 0..gpus_per_node {
                    cluster.gpus.push(GpuInfo {
                        id: format!("{name}/gpu{g}"),
                        node,
                        nvlink_domain: node,
                        rack,
                        model: 0,
                        memory_total_mib: 81920,
                        memory_free_mib: 81920,
                        healthy: true,
                    });
                }
                cluster.nvlink_domains.push(name.clone());
                cluster.nodes.push(NodeInfo { name, rack });
            }
        }
        cluster
    }
}

/// A job as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Unique id.
    pub id: String,
    /// Tenant name; must exist in the cluster.
    pub tenant: String,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// GPUs wanted.
    pub gpus: u32,
    /// Memory each GPU must have free, MiB.
    pub memory_per_gpu_mib: u32,
    /// All GPUs at once or none.
    #[serde(default = "default_true")]
    pub gang: bool,
    /// Topology preference.
    #[serde(default)]
    pub topology: Topology,
    /// Estimated runtime, seconds.
    pub est_runtime_s: f64,
    /// Submission time, seconds.
    #[serde(default)]
    pub submit_time_s: f64,
}

fn default_true() -> bool {
    true
}
