//! Cluster and job files (TOML, or JSON by extension), with errors that name the file, the line
//! and the field.
//!
//! ```toml
//! [[tenants]]
//! name = "vision"
//! quota_gpus = 96          # optional
//! weight = 1.0             # optional
//!
//! [[nodes]]
//! name = "node-000"
//! rack = "rack-0"
//! gpus = { count = 8, model = "H100-80GB", memory_mib = 81920 }   # a uniform group, or:
//! [[nodes.gpu]]                                                     # GPUs one by one
//! id = "node-000/gpu0"
//! model = "H100-80GB"
//! memory_total_mib = 81920
//! memory_free_mib = 79000   # optional, defaults to total
//! nvlink_domain = "nvl-a"   # optional, defaults to the node
//! healthy = true            # optional
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Cluster, Gpu, GpuInfo, JobSpec, NodeInfo, TenantInfo};

/// A cluster or job file was rejected. Nothing of it is applied.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, so not also a `source`).
        error: std::io::Error,
    },
    /// The file is malformed or inconsistent.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line, where known.
        line: Option<usize>,
        /// What is wrong, naming the field.
        message: String,
    },
}

/// Most GPUs a cluster may have, all nodes together: ten times the largest training clusters
/// built so far, and far below what would exhaust memory (a GPU record is ~100 bytes).
pub const MAX_GPUS: usize = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    #[serde(default)]
    tenants: Vec<TenantFile>,
    nodes: Vec<NodeFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    name: String,
    #[serde(default)]
    quota_gpus: Option<u32>,
    #[serde(default = "one")]
    weight: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    name: String,
    rack: String,
    #[serde(default)]
    gpus: Option<GpuGroupFile>,
    #[serde(default)]
    gpu: Vec<GpuFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuGroupFile {
    count: u32,
    model: String,
    memory_mib: u32,
    /// NVLink domain shared by the group (for domains that span nodes); defaults to the node.
    #[serde(default)]
    nvlink_domain: Option<String>,
    /// Indices of GPUs in the group that are unhealthy.
    #[serde(default)]
    unhealthy: Vec<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuFile {
    id: String,
    model: String,
    memory_total_mib: u32,
    #[serde(default)]
    memory_free_mib: Option<u32>,
    #[serde(default)]
    nvlink_domain: Option<String>,
    #[serde(default = "yes")]
    healthy: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsFile {
    jobs: Vec<JobSpec>,
}

fn read(path: &Path) -> Result<String, ModelError> {
    crate::plugin::files::read_text(path).map_err(|error| ModelError::Io {
        path: path.to_path_buf(),
        error,
    })
}

fn is_json(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("json")
}

/// Parses `text` as TOML or JSON; syntax and type errors carry the parser's line.
fn parse<T: for<'de> Deserialize<'de>>(text: &str, path: &Path) -> Result<T, ModelError> {
    if is_json(path) {
        serde_json::from_str(text).map_err(|e| ModelError::Invalid {
            path: path.to_path_buf(),
            line: Some(e.line()),
            message: e.to_string(),
        })
    } else {
        toml::from_str(text).map_err(|e| ModelError::Invalid {
            path: path.to_path_buf(),
            line: e.span().map(|s| text[..s.start].lines().count().max(1)),
            message: e.message().to_string(),
        })
    }
}

/// The 1-based line where `name` first appears as a quoted string, to point semantic errors at
/// the entry they are about.
fn line_of(text: &str, name: &str) -> Option<usize> {
    let quoted = format!("\"{name}\"");
    text.lines()
        .position(|l| l.contains(&quoted))
        .map(|i| i + 1)
}

/// Names to indices, in the order first seen: looked up by hash, since a cluster file may name
/// hundreds of thousands of nodes (a search per name made loading quadratic: 100,000 nodes,
/// each its own NVLink domain, took 25 s).
#[derive(Default)]
struct Interner(Vec<String>, std::collections::HashMap<String, u32>);

impl Interner {
    fn get(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.1.get(name) {
            return i;
        }
        let i = self.0.len() as u32;
        self.0.push(name.to_string());
        self.1.insert(name.to_string(), i);
        i
    }
}

/// Reads a cluster file.
pub fn load_cluster(path: &Path) -> Result<Cluster, ModelError> {
    parse_cluster(&read(path)?, path)
}

/// Parses cluster text; `path` names the source in errors and picks the format.
pub fn parse_cluster(text: &str, path: &Path) -> Result<Cluster, ModelError> {
    let file: ClusterFile = parse(text, path)?;
    let src = Source { text, path };
    let mut cluster = Cluster {
        tenants: tenants(src, &file.tenants)?,
        ..Cluster::default()
    };
    if file.nodes.is_empty() {
        return Err(ModelError::Invalid {
            path: path.to_path_buf(),
            line: None,
            message: "nodes: the cluster has no nodes".into(),
        });
    }
    check_gpu_count(src, &file.nodes)?;
    let mut names = Names::default();
    for (n, node) in file.nodes.iter().enumerate() {
        add_node(src, &mut cluster, &mut names, n, node)?;
    }
    cluster.racks = names.racks.0;
    cluster.nvlink_domains = names.domains.0;
    cluster.models = names.models.0;
    Ok(cluster)
}

/// The text of a cluster file and its path, to point errors at an entry.
#[derive(Clone, Copy)]
struct Source<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Source<'_> {
    /// The line of `name` in entry `index` of `[[table]]` (a TOML file): where it is written
    /// there, else the entry's header (a name with escapes is not written as it reads); else
    /// where it first appears in the file.
    fn line_in_table(&self, table: &str, index: usize, name: &str) -> Option<usize> {
        let header = format!("[[{table}]]");
        let lines: Vec<&str> = self.text.lines().collect();
        let start = (lines.iter().enumerate())
            .filter(|(_, l)| l.trim() == header)
            .nth(index)
            .map(|(i, _)| i);
        let Some(start) = start else {
            return line_of(self.text, name);
        };
        let quoted = format!("\"{name}\"");
        let end = (lines.iter().enumerate().skip(start + 1))
            .find(|(_, l)| l.trim() == header)
            .map_or(lines.len(), |(i, _)| i);
        let within = (start..end).find(|&i| lines[i].contains(&quoted));
        Some(within.unwrap_or(start) + 1)
    }

    /// `message` about the entry named `name`, at the line where the name first appears.
    fn invalid(&self, name: &str, message: String) -> ModelError {
        ModelError::Invalid {
            path: self.path.to_path_buf(),
            line: line_of(self.text, name),
            message,
        }
    }
}

/// The names a cluster file gives, interned (racks, domains, models) or checked unique.
#[derive(Default)]
struct Names<'f> {
    racks: Interner,
    domains: Interner,
    models: Interner,
    nodes: HashSet<&'f str>,
    gpu_ids: HashSet<String>,
}

/// The tenants, each name unique and each weight positive.
fn tenants(src: Source, files: &[TenantFile]) -> Result<Vec<TenantInfo>, ModelError> {
    let mut seen = HashSet::new();
    let mut tenants = Vec::with_capacity(files.len());
    for (i, t) in files.iter().enumerate() {
        let table = ("tenants", i);
        check_name(
            src,
            table,
            &format!("tenants[{i}].name"),
            &t.name,
            Name::Word,
        )?;
        if !seen.insert(t.name.as_str()) {
            return Err(src.invalid(
                &t.name,
                format!("tenants[{i}].name: duplicate tenant `{}`", t.name),
            ));
        }
        if !(MIN_WEIGHT..=MAX_WEIGHT).contains(&t.weight) {
            return Err(src.invalid(
                &t.name,
                format!(
                    "tenants[{i}].weight: must be from {MIN_WEIGHT:e} to {MAX_WEIGHT:e} (a share \
                     relative to the other tenants'), got {}",
                    t.weight
                ),
            ));
        }
        tenants.push(TenantInfo {
            name: t.name.clone(),
            quota_gpus: t.quota_gpus,
            weight: t.weight,
        });
    }
    Ok(tenants)
}

/// What a name in a cluster file may hold.
#[derive(Clone, Copy)]
enum Name {
    /// A tenant, node, rack or NVLink domain: 1-64 letters, digits, '-', '_' or '.', not
    /// starting with '.', as users' tenants and node identities are named.
    Word,
    /// A GPU id: words joined by '/' (`node-000/gpu0`), at most 128 bytes.
    Path,
    /// A GPU model as a driver names it (`NVIDIA H100 80GB HBM3`): 1-128 printable ASCII
    /// characters.
    Text,
}

/// Refuses a name that could not be carried where names go (tokens' identities, agents'
/// reports, logs, keys in etcd): a NUL, a control character, a path of its own.
fn check_name(
    src: Source,
    (table, index): (&str, usize),
    field: &str,
    name: &str,
    kind: Name,
) -> Result<(), ModelError> {
    let word = |w: &str| {
        (1..=64).contains(&w.len())
            && !w.starts_with('.')
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    let (valid, rule) = match kind {
        Name::Word => (
            word(name),
            "1-64 letters, digits, '-', '_' or '.', not starting with '.'",
        ),
        Name::Path => (
            name.len() <= 128 && name.split('/').all(word),
            "words of letters, digits, '-', '_' or '.' (not starting with '.') joined by '/', \
             at most 128 bytes",
        ),
        Name::Text => (
            (1..=128).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
                && name.trim() == name,
            "1-128 printable ASCII characters, not starting or ending with a space",
        ),
    };
    if valid {
        return Ok(());
    }
    Err(ModelError::Invalid {
        path: src.path.to_path_buf(),
        line: src.line_in_table(table, index, name),
        message: format!(
            "{field}: `{}` is not a valid name ({rule})",
            name.escape_debug()
        ),
    })
}

/// The counts are the file's word: all of them bounded before a GPU record is built.
fn check_gpu_count(src: Source, nodes: &[NodeFile]) -> Result<(), ModelError> {
    let mut total = 0u64;
    for (n, node) in nodes.iter().enumerate() {
        let count = node.gpus.as_ref().map_or(0, |g| g.count);
        total += u64::from(count) + node.gpu.len() as u64;
        if total > MAX_GPUS as u64 {
            return Err(src.invalid(
                &node.name,
                format!(
                    "nodes[{n}] (`{}`).gpus: {total} GPUs up to here, more than a cluster's \
                     {MAX_GPUS}",
                    node.name
                ),
            ));
        }
    }
    Ok(())
}

/// Node `n` of the file and its GPUs, checked, into `cluster`.
fn add_node<'f>(
    src: Source,
    cluster: &mut Cluster,
    names: &mut Names<'f>,
    n: usize,
    node: &'f NodeFile,
) -> Result<(), ModelError> {
    let at = |field: &str| format!("nodes[{n}] (`{}`).{field}", node.name);
    let table = ("nodes", n);
    check_name(
        src,
        table,
        &format!("nodes[{n}].name"),
        &node.name,
        Name::Word,
    )?;
    check_name(src, table, &at("rack"), &node.rack, Name::Word)?;
    if !names.nodes.insert(node.name.as_str()) {
        return Err(src.invalid(&node.name, format!("{}: duplicate node name", at("name"))));
    }
    let node_index = cluster.nodes.len() as u32;
    let rack = names.racks.get(&node.rack);
    cluster.nodes.push(NodeInfo {
        name: node.name.clone(),
        rack,
    });
    for g in node_gpus(src, node, &at)? {
        check_name(src, table, &at("gpu.id"), &g.id, Name::Path)?;
        check_name(src, table, &at("gpu.model"), &g.model, Name::Text)?;
        if let Some(domain) = &g.nvlink_domain {
            check_name(src, table, &at("gpu.nvlink_domain"), domain, Name::Word)?;
        }
        if !names.gpu_ids.insert(g.id.clone()) {
            return Err(src.invalid(
                &g.id,
                format!("{}: duplicate GPU id `{}`", at("gpu.id"), g.id),
            ));
        }
        let free = g.memory_free_mib.unwrap_or(g.memory_total_mib);
        if g.memory_total_mib == 0 || free > g.memory_total_mib {
            return Err(src.invalid(
                &g.id,
                format!(
                    "{}: GPU `{}` has memory_free_mib {free} and memory_total_mib {} (need 0 < free <= total)",
                    at("gpu.memory_free_mib"),
                    g.id,
                    g.memory_total_mib
                ),
            ));
        }
        let domain = g.nvlink_domain.unwrap_or_else(|| node.name.clone());
        let gpu = Gpu {
            node: node_index,
            nvlink_domain: names.domains.get(&domain),
            rack,
            model: names.models.get(&g.model),
            memory_total_mib: g.memory_total_mib,
            memory_free_mib: free,
            healthy: g.healthy,
            busy: false,
        };
        cluster.gpus.push(GpuInfo { id: g.id, gpu });
    }
    Ok(())
}

/// A node's GPUs, its group's then those listed one by one; at least one (`at` names a field of
/// the node in errors).
fn node_gpus(
    src: Source,
    node: &NodeFile,
    at: &dyn Fn(&str) -> String,
) -> Result<Vec<GpuFile>, ModelError> {
    let mut gpus = match &node.gpus {
        Some(group) => group_gpus(src, node, group, at)?,
        None => Vec::new(),
    };
    gpus.extend(node.gpu.iter().map(|g| GpuFile {
        id: g.id.clone(),
        model: g.model.clone(),
        memory_total_mib: g.memory_total_mib,
        memory_free_mib: g.memory_free_mib,
        nvlink_domain: g.nvlink_domain.clone(),
        healthy: g.healthy,
    }));
    if gpus.is_empty() {
        return Err(src.invalid(
            &node.name,
            format!(
                "{}: node has no GPUs (give `gpus` or `[[nodes.gpu]]`)",
                at("gpus")
            ),
        ));
    }
    Ok(gpus)
}

/// A node's uniform group of GPUs, one by one (`at` names a field of the node in errors).
fn group_gpus(
    src: Source,
    node: &NodeFile,
    group: &GpuGroupFile,
    at: &dyn Fn(&str) -> String,
) -> Result<Vec<GpuFile>, ModelError> {
    if group.count == 0 || group.memory_mib == 0 {
        return Err(src.invalid(
            &node.name,
            format!("{}: count and memory_mib must be positive", at("gpus")),
        ));
    }
    if let Some(bad) = group.unhealthy.iter().find(|&&u| u >= group.count) {
        return Err(src.invalid(
            &node.name,
            format!(
                "{}: index {bad} is not below count {}",
                at("gpus.unhealthy"),
                group.count
            ),
        ));
    }
    let domain = group
        .nvlink_domain
        .clone()
        .unwrap_or_else(|| node.name.clone());
    let unhealthy: HashSet<u32> = group.unhealthy.iter().copied().collect();
    Ok((0..group.count)
        .map(|g| GpuFile {
            id: format!("{}/gpu{g}", node.name),
            model: group.model.clone(),
            memory_total_mib: group.memory_mib,
            memory_free_mib: None,
            nvlink_domain: Some(domain.clone()),
            healthy: !unhealthy.contains(&g),
        })
        .collect())
}

/// Reads a job file and checks it against `cluster` (tenants must exist).
pub fn load_jobs(path: &Path, cluster: &Cluster) -> Result<Vec<JobSpec>, ModelError> {
    parse_jobs(&read(path)?, path, cluster)
}

/// Parses job text; see [`load_jobs`].
pub fn parse_jobs(text: &str, path: &Path, cluster: &Cluster) -> Result<Vec<JobSpec>, ModelError> {
    let file: JobsFile = parse(text, path)?;
    let mut ids = HashSet::new();
    for (i, job) in file.jobs.iter().enumerate() {
        check_job(job, cluster).map_err(|message| ModelError::Invalid {
            path: path.to_path_buf(),
            line: line_of(text, &job.id),
            message: format!("jobs[{i}] (`{}`).{message}", job.id),
        })?;
        if !ids.insert(job.id.as_str()) {
            return Err(ModelError::Invalid {
                path: path.to_path_buf(),
                line: line_of(text, &job.id),
                message: format!("jobs[{i}].id: duplicate job id `{}`", job.id),
            });
        }
    }
    Ok(file.jobs)
}

/// Checks one job; the error starts with the field name.
pub fn check_job(job: &JobSpec, cluster: &Cluster) -> Result<(), String> {
    if job.id.is_empty() {
        return Err("id: must not be empty".into());
    }
    if cluster.tenant_index(&job.tenant).is_none() {
        let known: Vec<&str> = cluster.tenants.iter().map(|t| t.name.as_str()).collect();
        return Err(format!(
            "tenant: unknown tenant `{}` (known: {})",
            job.tenant,
            known.join(", ")
        ));
    }
    if job.gpus == 0 {
        return Err("gpus: must be at least 1".into());
    }
    if job.gpus as usize > cluster.gpus.len() {
        return Err(format!(
            "gpus: {} is more than the cluster's {} GPUs",
            job.gpus,
            cluster.gpus.len()
        ));
    }
    if job.memory_per_gpu_mib == 0 {
        return Err("memory_per_gpu_mib: must be positive".into());
    }
    check_fits(job, cluster)?;
    if !(job.est_runtime_s > 0.0 && job.est_runtime_s <= MAX_RUNTIME_S) {
        return Err(format!(
            "est_runtime_s: must be positive and at most {MAX_RUNTIME_S:e} (about 31 years), got {:?}",
            job.est_runtime_s
        ));
    }
    if !(job.submit_time_s >= 0.0 && job.submit_time_s <= MAX_SUBMIT_TIME_S) {
        return Err(format!(
            "submit_time_s: must be >= 0 and at most {MAX_SUBMIT_TIME_S:e} (a Unix time in 2286), got {:?}",
            job.submit_time_s
        ));
    }
    Ok(())
}

/// The range of a tenant's weight. Weights are shares relative to each other, and every
/// strategy and metric divides by their sum: three weights of 1e308 summed to infinity and
/// the simulator reported perfect fairness (1.0) for a run that was not.
pub const MIN_WEIGHT: f64 = 1e-6;
/// See [`MIN_WEIGHT`].
pub const MAX_WEIGHT: f64 = 1e6;

/// Largest runtime a job may state, seconds (about 31.7 years). With [`MAX_SUBMIT_TIME_S`] a
/// job's end stays inside the simulator's clock of u64 nanoseconds (1.8e10 s): beyond it ends
/// saturated to one instant and the metrics were nonsense.
pub const MAX_RUNTIME_S: f64 = 1e9;

/// Latest submit time a job may state, seconds: a trace's offset from its start, or the
/// daemon's Unix time (1.8e9 in 2026), up to the year 2286.
pub const MAX_SUBMIT_TIME_S: f64 = 1e10;

/// Checks that `job` could ever run on `cluster`, whatever else runs: enough healthy GPUs with
/// its memory free (all of its GPUs for a gang, one for a job that may run in parts), and a
/// tenant quota that admits as many. A job that fails this would wait forever, so loaders and
/// [`crate::Host::submit`] refuse it. Topology preferences are not checked: they relax.
pub fn check_fits(job: &JobSpec, cluster: &Cluster) -> Result<(), String> {
    let need = job.memory_per_gpu_mib;
    let healthy = cluster.gpus.iter().filter(|g| g.gpu.healthy);
    let usable = healthy
        .clone()
        .filter(|g| g.gpu.memory_free_mib >= need)
        .count() as u32;
    if usable == 0 {
        let most = healthy.map(|g| g.gpu.memory_free_mib).max().unwrap_or(0);
        return Err(format!(
            "memory_per_gpu_mib: {need} MiB is more than any healthy GPU of the cluster has free \
             ({most} MiB at most)"
        ));
    }
    if job.gang && job.gpus > usable {
        return Err(format!(
            "gpus: a gang of {} GPUs with {need} MiB each can never run: the cluster has {usable} \
             healthy GPUs with that much memory free",
            job.gpus
        ));
    }
    let least = if job.gang { job.gpus } else { 1 };
    if let Some(t) = cluster.tenants.iter().find(|t| t.name == job.tenant)
        && let Some(quota) = t.quota_gpus
        && quota < least
    {
        return Err(format!(
            "gpus: tenant `{}` has a quota of {quota} GPUs, so a {} of {} can never run",
            t.name,
            if job.gang { "gang" } else { "job" },
            job.gpus
        ));
    }
    Ok(())
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"
[[tenants]]
name = "vision"
quota_gpus = 8

[[nodes]]
name = "n0"
rack = "r0"
gpus = { count = 4, model = "H100", memory_mib = 81920, unhealthy = [3] }

[[nodes]]
name = "n1"
rack = "r0"
[[nodes.gpu]]
id = "n1/a"
model = "A100"
memory_total_mib = 40960
memory_free_mib = 30000
nvlink_domain = "n0"
"#;

    fn cluster() -> Cluster {
        parse_cluster(CLUSTER, Path::new("c.toml")).unwrap()
    }

    #[test]
    fn loads_groups_and_single_gpus() {
        let c = cluster();
        assert_eq!(c.gpus.len(), 5);
        assert_eq!(c.racks, vec!["r0"]);
        assert_eq!(c.models, vec!["H100", "A100"]);
        assert!(!c.gpus[3].gpu.healthy);
        assert_eq!(c.gpus[4].gpu.memory_free_mib, 30000);
        assert_eq!(
            c.gpus[4].gpu.nvlink_domain, c.gpus[0].gpu.nvlink_domain,
            "domains can span nodes"
        );
        assert_eq!(c.tenants[0].quota_gpus, Some(8));
    }

    #[test]
    fn syntax_and_type_errors_name_line_and_field() {
        let bad = CLUSTER.replace("memory_total_mib = 40960", "memory_total_mib = \"big\"");
        let err = parse_cluster(&bad, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.toml:17:"), "{err}");
        let bad = CLUSTER.replace("rack = \"r0\"\n[[nodes.gpu]]", "[[nodes.gpu]]");
        let err = parse_cluster(&bad, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("rack"), "{err}");
        let err = parse_cluster("{\"nodes\": [{\"name\": 3}]}", Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.json:1:"), "{err}");
    }

    #[test]
    fn semantic_errors_name_line_and_field() {
        let bad = CLUSTER.replace("memory_free_mib = 30000", "memory_free_mib = 50000");
        let err = parse_cluster(&bad, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.toml:15:"), "{err}");
        assert!(err.contains("memory_free_mib"), "{err}");
        let bad = CLUSTER.replace("name = \"n1\"", "name = \"n0\"");
        let err = parse_cluster(&bad, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("duplicate node name"), "{err}");
    }

    /// Found by a review: a cluster file's names were taken as they came, a NUL, a bare `/`
    /// or a control character included, and carried into logs, tokens' identities and etcd
    /// keys. Each is refused naming its field and line.
    #[test]
    fn names_that_could_not_be_carried_are_refused_naming_the_field() {
        for (from, to, field) in [
            ("name = \"n1\"", "name = \"n1\\u0000\"", "nodes[1].name"),
            ("name = \"vision\"", "name = \"a b\"", "tenants[0].name"),
            ("rack = \"r0\"\n[[", "rack = \".r\"\n[[", ".rack"),
            ("id = \"n1/a\"", "id = \"/\"", ".gpu.id"),
            ("id = \"n1/a\"", "id = \"n1//a\"", ".gpu.id"),
            ("model = \"A100\"", "model = \"A100\\n\"", ".gpu.model"),
            (
                "nvlink_domain = \"n0\"",
                "nvlink_domain = \"\"",
                ".gpu.nvlink_domain",
            ),
        ] {
            assert!(CLUSTER.contains(from), "{from}");
            let bad = CLUSTER.replacen(from, to, 1);
            let err = parse_cluster(&bad, Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(field) && err.contains("not a valid name"),
                "{to}: {err}"
            );
            // A line, even for a name written with escapes (it names its entry's).
            assert!(err.starts_with("c.toml:"), "{to}: {err}");
        }
        // The line of the entry the name is in, not where the same text came first.
        let twice = (CLUSTER.replace("rack = \"r0\"\n[[", "rack = \"H 1\"\n[["))
            .replace("model = \"H100\"", "model = \"H 1\"");
        let err = parse_cluster(&twice, Path::new("c.toml"));
        let err = err.unwrap_err().to_string();
        assert!(
            err.starts_with("c.toml:13:") && err.contains(".rack"),
            "{err}"
        );
        // Drivers' model names have spaces.
        let spaced = CLUSTER.replace("model = \"A100\"", "model = \"NVIDIA A100 40GB\"");
        parse_cluster(&spaced, Path::new("c.toml")).unwrap();
    }

    /// Found by the property tests: a GPU group's `count` was trusted, so `count = 4294967295`
    /// (or many nodes of large groups) made the loader build billions of GPU records until the
    /// process ran out of memory. The cluster's GPUs are bounded before any is built.
    #[test]
    fn a_gpu_count_far_beyond_memory_is_refused_before_allocation() {
        let huge = CLUSTER.replace("count = 4,", "count = 4294967295,");
        let err = parse_cluster(&huge, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.toml:7:"), "{err}");
        assert!(err.contains("4294967295") && err.contains("GPUs"), "{err}");
        // Groups each within the bound that add up beyond it.
        let node = |i: usize| {
            format!(
                "[[nodes]]\nname = \"n{i}\"\nrack = \"r\"\n\
                 gpus = {{ count = 1000000, model = \"m\", memory_mib = 1 }}\n"
            )
        };
        let many: String = (0..4096).map(node).collect();
        let err = parse_cluster(&many, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("n1") && err.contains("GPUs"), "{err}");
    }

    #[test]
    fn jobs_are_checked_against_the_cluster() {
        let c = cluster();
        let text = r#"
[[jobs]]
id = "j1"
tenant = "vision"
gpus = 2
memory_per_gpu_mib = 1000
est_runtime_s = 60

[[jobs]]
id = "j2"
tenant = "nobody"
gpus = 1
memory_per_gpu_mib = 1000
est_runtime_s = 60
"#;
        let err = parse_jobs(text, Path::new("j.toml"), &c)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("j.toml:10:"), "{err}");
        assert!(
            err.contains("jobs[1] (`j2`).tenant: unknown tenant `nobody`"),
            "{err}"
        );
        let ok = parse_jobs(&text.replace("nobody", "vision"), Path::new("j.toml"), &c).unwrap();
        assert_eq!(ok.len(), 2);
        assert!(ok[0].gang, "gang defaults to true");
    }

    /// Found by a hostile cluster file: three tenants of weight 1e308 (finite, so accepted)
    /// summed to infinity, and `simulate` reported a fairness of 1.0 and no deficit for a run
    /// whose fairness with any equal finite weights is 0.994.
    #[test]
    fn tenant_weights_whose_sum_could_overflow_are_refused_with_their_line() {
        let text = |w: &str| {
            format!(
                "[[tenants]]\nname = \"a\"\nweight = {w}\n\n[[nodes]]\nname = \"n\"\n\
                 rack = \"r\"\ngpus = {{ count = 1, model = \"m\", memory_mib = 1000 }}\n"
            )
        };
        for w in ["1e308", "1e-320", "0", "-1", "1000001"] {
            let err = parse_cluster(&text(w), Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("c.toml:")
                    && err.contains("tenants[0].weight: must be from 1e-6 to 1e6"),
                "{w}: {err}"
            );
        }
        for w in ["1e-6", "0.5", "1e6"] {
            parse_cluster(&text(w), Path::new("c.toml")).unwrap();
        }
    }

    /// Found by a hostile trace: a duration or submit time of 1e300 s was accepted, the
    /// simulator's nanosecond clock saturated, and `simulate` reported a makespan of 584 years
    /// (2^64 ns) with exit 0.
    #[test]
    fn times_beyond_what_the_simulator_clock_holds_are_refused_with_their_line() {
        let c = cluster();
        let job = |field: &str, value: &str| {
            format!(
                "[[jobs]]\nid = \"j\"\ntenant = \"vision\"\ngpus = 1\nmemory_per_gpu_mib = 1000\n\
                 est_runtime_s = 60\n{field} = {value}\n"
            )
        };
        for (field, value, most) in [
            ("est_runtime_s", "1e300", "at most 1e9"),
            ("est_runtime_s", "1.0000001e9", "at most 1e9"),
            ("submit_time_s", "1e300", "at most 1e10"),
            ("submit_time_s", "1.0000001e10", "at most 1e10"),
            ("submit_time_s", "inf", "at most 1e10"),
        ] {
            let text =
                job(field, value).replace("est_runtime_s = 60\nest_runtime_s", "est_runtime_s");
            let err = parse_jobs(&text, Path::new("j.toml"), &c)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("{field}: must be")) && err.contains(most),
                "{field} = {value}: {err}"
            );
        }
        // The daemon's submit times are Unix times: 1.8e9 today.
        for (field, value) in [("est_runtime_s", "1e9"), ("submit_time_s", "1.8e9")] {
            let text =
                job(field, value).replace("est_runtime_s = 60\nest_runtime_s", "est_runtime_s");
            assert!(
                parse_jobs(&text, Path::new("j.toml"), &c).is_ok(),
                "{field}"
            );
        }
    }

    /// The review's finding: jobs that no GPU of the cluster could ever hold were accepted and
    /// then waited forever, unseen. The cluster: n0 has 3 healthy 80 GiB GPUs (a fourth is
    /// unhealthy), n1 one GPU with 30,000 MiB free; tenant `vision` may hold 8 GPUs.
    #[test]
    fn jobs_no_gpu_could_ever_hold_are_refused_with_their_line() {
        let c = cluster();
        let job = |gpus: u32, memory: u32, gang: bool| {
            format!(
                "[[jobs]]\nid = \"ok\"\ntenant = \"vision\"\ngpus = 1\nmemory_per_gpu_mib = 1\n\
                 est_runtime_s = 1\n\n[[jobs]]\nid = \"big\"\ntenant = \"vision\"\n\
                 gpus = {gpus}\nmemory_per_gpu_mib = {memory}\ngang = {gang}\nest_runtime_s = 60\n"
            )
        };
        let refused = |text: String, want: &str| {
            let err = parse_jobs(&text, Path::new("j.toml"), &c)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("j.toml:9: jobs[1] (`big`)."), "{err}");
            assert!(err.contains(want), "{err}");
        };
        // More memory than any healthy GPU has free.
        refused(job(1, 90_000, true), "memory_per_gpu_mib: 90000 MiB");
        refused(job(2, 90_000, false), "memory_per_gpu_mib: 90000 MiB");
        // A gang larger than the healthy GPUs with its memory (4 with 30,000; 3 with 40,000).
        refused(job(5, 30_000, true), "gpus: a gang of 5");
        refused(job(4, 40_000, true), "gpus: a gang of 4");
        // A gang over its tenant's quota.
        let more = CLUSTER.replace("count = 4,", "count = 12,");
        let big = parse_cluster(&more, Path::new("c.toml")).unwrap();
        let err = parse_jobs(&job(9, 1000, true), Path::new("j.toml"), &big)
            .unwrap_err()
            .to_string();
        assert!(err.contains("quota"), "{err}");
        // What could run is accepted: a non-gang job runs in parts, a gang that fits.
        for (gpus, memory, gang) in [(5, 30_000, false), (4, 30_000, true), (3, 80_000, true)] {
            parse_jobs(&job(gpus, memory, gang), Path::new("j.toml"), &c).unwrap();
        }
        parse_jobs(&job(9, 1000, false), Path::new("j.toml"), &big).unwrap();
    }
}
