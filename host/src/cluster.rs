//! The cluster model: nodes with GPUs, tenants with quotas, and jobs, loaded from TOML or JSON.

pub mod files;

use serde::{Deserialize, Serialize};

pub use files::ModelError;
pub use gantry_model::{Gpu, Topology};

/// One GPU: its name and the row the scheduler model describes it by.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    /// Unique id, such as `node-003/gpu5`.
    pub id: String,
    /// Its node, NVLink domain, rack and model (indices into [`Cluster`]'s lists), memory and
    /// health. `gpu.busy` is always false here: which GPUs are held is live state
    /// ([`crate::scheduling::ClusterState::holder`]), the one authority for it.
    pub gpu: Gpu,
}

/// One node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    /// Unique name.
    pub name: String,
    /// Index into [`Cluster::racks`].
    pub rack: u32,
}

/// One tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantInfo {
    /// Unique name.
    pub name: String,
    /// Most GPUs held at once; `None` is unlimited.
    pub quota_gpus: Option<u32>,
    /// Fair-share weight.
    pub weight: f64,
}

/// The static shape of a cluster: what exists, not what runs on it.
#[derive(Debug, Clone, PartialEq, Default)]
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

    /// Whether [`Cluster::add_node`] would add node `name` with `gpus`: no node of that name
    /// and none of its GPU ids taken.
    pub fn can_add_node(&self, name: &str, gpus: &[(String, String, u32)]) -> Result<(), String> {
        if self.nodes.iter().any(|n| n.name == name) {
            return Err(format!("a node `{name}` exists"));
        }
        // One pass over the GPUs there are (a node registers under the host's write lock, and
        // comparing each new id with every GPU was O(new x all)).
        let new: std::collections::HashSet<&str> =
            gpus.iter().map(|(id, ..)| id.as_str()).collect();
        if let Some(g) = self.gpus.iter().find(|g| new.contains(g.id.as_str())) {
            return Err(format!("a GPU `{}` exists", g.id));
        }
        Ok(())
    }

    /// Adds node `name` in rack `rack` (a new rack if there is none of that name) with `gpus`
    /// (each: its id, its model and its memory in MiB), as a node that registers itself does;
    /// its GPUs are out of service (`healthy` false) until told otherwise. Refused when a node
    /// of that name exists, or a GPU id is taken.
    pub fn add_node(
        &mut self,
        name: &str,
        rack: &str,
        gpus: &[(String, String, u32)],
    ) -> Result<(), String> {
        self.can_add_node(name, gpus)?;
        let rack = index_of(&mut self.racks, rack);
        let node = self.nodes.len() as u32;
        self.nodes.push(NodeInfo {
            name: name.to_string(),
            rack,
        });
        self.nvlink_domains.push(name.to_string());
        let nvlink_domain = self.nvlink_domains.len() as u32 - 1;
        for gpu in gpus {
            self.push_out_of_service(node, nvlink_domain, rack, gpu);
        }
        Ok(())
    }

    /// Adds GPU `(id, model, memory in MiB)` of node `node` (its NVLink domain and rack), out of
    /// service.
    fn push_out_of_service(
        &mut self,
        node: u32,
        nvlink_domain: u32,
        rack: u32,
        (id, model, memory_mib): &(String, String, u32),
    ) {
        let model = index_of(&mut self.models, model);
        self.gpus.push(GpuInfo {
            id: id.clone(),
            gpu: Gpu {
                node,
                nvlink_domain,
                rack,
                model,
                memory_total_mib: *memory_mib,
                memory_free_mib: *memory_mib,
                healthy: false,
                busy: false,
            },
        });
    }

    /// Changes node `name` to what it has now, as a node that registers again does: its rack,
    /// each of `gpus` (id, model, memory in MiB) kept at its index and updated, or added out of
    /// service (`healthy` false). GPUs of the node missing from `gpus` stay at their indices
    /// (allocations and the scheduler's rows refer to GPUs by index): returns theirs, for the
    /// caller to retire. Refused when there is no such node or a GPU id is another node's.
    pub fn update_node(
        &mut self,
        name: &str,
        rack: &str,
        gpus: &[(String, String, u32)],
    ) -> Result<Vec<usize>, String> {
        let node = (self.nodes.iter().position(|n| n.name == name))
            .ok_or_else(|| format!("no node `{name}`"))?;
        let given: std::collections::HashMap<&str, usize> = (gpus.iter().enumerate())
            .map(|(i, (id, ..))| (id.as_str(), i))
            .collect();
        if let Some(g) = (self.gpus.iter())
            .find(|g| g.gpu.node as usize != node && given.contains_key(g.id.as_str()))
        {
            return Err(format!("a GPU `{}` exists on another node", g.id));
        }
        let rack = index_of(&mut self.racks, rack);
        self.nodes[node].rack = rack;
        let mut kept = vec![false; gpus.len()];
        let mut missing = Vec::new();
        for (i, g) in self.gpus.iter_mut().enumerate() {
            if g.gpu.node as usize != node {
                continue;
            }
            g.gpu.rack = rack;
            match given.get(g.id.as_str()) {
                Some(&k) => {
                    let (_, model, memory_mib) = &gpus[k];
                    g.gpu.model = index_of(&mut self.models, model);
                    g.gpu.memory_total_mib = *memory_mib;
                    g.gpu.memory_free_mib = *memory_mib;
                    kept[k] = true;
                }
                None => missing.push(i),
            }
        }
        let nvlink_domain = (self.gpus.iter())
            .find(|g| g.gpu.node as usize == node)
            .map(|g| g.gpu.nvlink_domain);
        let nvlink_domain = match nvlink_domain {
            Some(d) => d,
            None => index_of(&mut self.nvlink_domains, name),
        };
        for (gpu, _) in gpus.iter().zip(&kept).filter(|(_, kept)| !**kept) {
            self.push_out_of_service(node as u32, nvlink_domain, rack, gpu);
        }
        Ok(missing)
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
        for node in 0..racks * nodes_per_rack {
            let name = format!("node-{node:04}");
            cluster.nvlink_domains.push(name.clone());
            let rack = node / nodes_per_rack;
            cluster.nodes.push(NodeInfo { name, rack });
        }
        let gpus = Gpu::uniform(racks, nodes_per_rack, gpus_per_node).enumerate();
        cluster.gpus = gpus
            .map(|(i, gpu)| GpuInfo {
                id: format!("node-{:04}/gpu{}", gpu.node, i as u32 % gpus_per_node),
                gpu,
            })
            .collect();
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

impl JobSpec {
    /// A job as a job file without its optional fields gives it: `gpus` GPUs with
    /// `memory_per_gpu_mib` free each, all at once, for about `est_runtime_s` seconds; priority 0,
    /// no topology preference, submitted at 0. The `with_` methods set the others.
    pub fn new(
        id: impl Into<String>,
        tenant: impl Into<String>,
        gpus: u32,
        memory_per_gpu_mib: u32,
        est_runtime_s: f64,
    ) -> Self {
        Self {
            id: id.into(),
            tenant: tenant.into(),
            priority: 0,
            gpus,
            memory_per_gpu_mib,
            gang: default_true(),
            topology: Topology::default(),
            est_runtime_s,
            submit_time_s: 0.0,
        }
    }

    /// The job with topology preference `topology`.
    pub fn with_topology(self, topology: Topology) -> Self {
        Self { topology, ..self }
    }

    /// The job with priority `priority` (higher runs first).
    pub fn with_priority(self, priority: i32) -> Self {
        Self { priority, ..self }
    }

    /// The job, all-or-nothing (`gang`, the default) or placeable in parts.
    pub fn with_gang(self, gang: bool) -> Self {
        Self { gang, ..self }
    }
}

/// The index of `value` in `list`, added at the end when it is not there.
fn index_of(list: &mut Vec<String>, value: &str) -> u32 {
    match list.iter().position(|v| v == value) {
        Some(i) => i as u32,
        None => {
            list.push(value.to_string());
            list.len() as u32 - 1
        }
    }
}

fn default_true() -> bool {
    true
}
