//! Job traces: CSV files and a seeded synthetic generator.
//!
//! CSV columns (header required, any order):
//! `submit_time_s,duration_s,gpus,memory_mib,tenant,priority,gang,topology`.
//! `priority`, `gang` (true/false/1/0, default true) and `topology` (none, same-node,
//! same-nvlink-domain, same-rack) may be empty.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cluster::{Cluster, JobSpec, Topology};

/// One job of a trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceJob {
    /// Arrival, seconds.
    pub submit_s: f64,
    /// Runtime on an ideal placement, seconds (also given to schedulers as the estimate).
    pub duration_s: f64,
    /// GPUs.
    pub gpus: u32,
    /// Memory per GPU, MiB.
    pub memory_mib: u32,
    /// Tenant name.
    pub tenant: String,
    /// Priority.
    pub priority: i32,
    /// All-or-nothing.
    pub gang: bool,
    /// Topology preference.
    pub topology: Topology,
}

impl TraceJob {
    /// The job as submitted to a host.
    pub fn to_spec(&self, id: String) -> JobSpec {
        JobSpec {
            id,
            tenant: self.tenant.clone(),
            priority: self.priority,
            gpus: self.gpus,
            memory_per_gpu_mib: self.memory_mib,
            gang: self.gang,
            topology: self.topology,
            est_runtime_s: self.duration_s,
            submit_time_s: self.submit_s,
        }
    }
}

/// A trace file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Unreadable file.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, so not also a `source`).
        error: std::io::Error,
    },
    /// A malformed line.
    #[error("{}:{line}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// What is wrong, naming the column.
        message: String,
    },
}

const COLUMNS: [&str; 8] = [
    "submit_time_s",
    "duration_s",
    "gpus",
    "memory_mib",
    "tenant",
    "priority",
    "gang",
    "topology",
];

/// Reads a CSV trace and checks it against `cluster` (tenants exist, jobs fit in it).
pub fn load(path: &Path, cluster: &Cluster) -> Result<Vec<TraceJob>, TraceError> {
    let text = crate::plugin::files::read_text(path).map_err(|error| TraceError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    parse(&text, path, cluster)
}

/// Parses CSV trace text; `path` names it in errors.
pub fn parse(text: &str, path: &Path, cluster: &Cluster) -> Result<Vec<TraceJob>, TraceError> {
    let invalid = |line: u64, message: String| TraceError::Invalid {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| invalid(1, format!("header: {e}")))?;
    let col = columns(headers).map_err(|m| invalid(1, m))?;
    let mut jobs = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            invalid(line, e.to_string())
        })?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let field = |i: usize| -> &str {
            if col[i] == usize::MAX {
                ""
            } else {
                record.get(col[i]).unwrap_or("")
            }
        };
        let job = row(field).map_err(|m| invalid(line, m))?;
        crate::cluster::files::check_job(&job.to_spec("row".into()), cluster)
            .map_err(|m| invalid(line, as_column(&m)))?;
        jobs.push(job);
    }
    Ok(jobs)
}

/// Where each of [`COLUMNS`] is in the header (`usize::MAX` for an optional one left out); an
/// error for a required column missing or an unknown one.
fn columns(headers: &csv::StringRecord) -> Result<[usize; 8], String> {
    let mut col = [usize::MAX; 8];
    for (i, name) in COLUMNS.iter().enumerate() {
        match headers.iter().position(|h| h == *name) {
            Some(p) => col[i] = p,
            None if i >= 5 => {}
            None => return Err(format!("header: missing column `{name}`")),
        }
    }
    if let Some(h) = headers.iter().find(|h| !COLUMNS.contains(h)) {
        return Err(format!(
            "header: unknown column `{h}` (expected {})",
            COLUMNS.join(",")
        ));
    }
    Ok(col)
}

fn num<T: std::str::FromStr>(text: &str, name: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("column `{name}`: cannot parse `{text}`"))
}

/// One row, `field(i)` giving the text of column `COLUMNS[i]` ("" when absent).
fn row<'r>(field: impl Fn(usize) -> &'r str) -> Result<TraceJob, String> {
    let submit_s: f64 = num(field(0), COLUMNS[0])?;
    let duration_s: f64 = num(field(1), COLUMNS[1])?;
    let gpus: u32 = num(field(2), COLUMNS[2])?;
    let memory_mib: u32 = num(field(3), COLUMNS[3])?;
    let tenant = field(4).to_string();
    let priority: i32 = match field(5) {
        "" => 0,
        p => num(p, COLUMNS[5])?,
    };
    let gang = match field(6) {
        "" | "true" | "1" => true,
        "false" | "0" => false,
        other => return Err(format!("column `gang`: `{other}` is not true/false/1/0")),
    };
    let topology: Topology = field(7)
        .parse()
        .map_err(|e| format!("column `topology`: {e}"))?;
    Ok(TraceJob {
        submit_s,
        duration_s,
        gpus,
        memory_mib,
        tenant,
        priority,
        gang,
        topology,
    })
}

/// `check_job` names job fields (`gpus: ...`); a trace's reader wants the CSV column.
fn as_column(message: &str) -> String {
    let (field, rest) = message.split_once(": ").unwrap_or(("", message));
    let column = match field {
        "memory_per_gpu_mib" => "memory_mib",
        "est_runtime_s" => "duration_s",
        other => other,
    };
    format!("column `{column}`: {rest}")
}

/// Writes `jobs` as CSV.
pub fn to_csv(jobs: &[TraceJob]) -> String {
    let mut out = COLUMNS.join(",");
    out.push('\n');
    for j in jobs {
        let topology = j.topology.name();
        out.push_str(&format!(
            "{:.3},{:.1},{},{},{},{},{},{}\n",
            j.submit_s, j.duration_s, j.gpus, j.memory_mib, j.tenant, j.priority, j.gang, topology
        ));
    }
    out
}

/// SplitMix64: tiny, fast, and stable forever, so a seed names the same trace in every release
/// (general-purpose RNG crates do not promise that).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponential with mean `mean`.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Index drawn with probability proportional to `weights`.
    pub fn pick(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
}

/// Most jobs a synthetic trace may hold (about 560 MB of them): `--jobs 1000000000` asked for
/// 56 GB at once and aborted the command.
pub const MAX_SYNTHETIC_JOBS: usize = 10_000_000;

/// Parameters of a synthetic trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Synthetic {
    /// Jobs to generate.
    pub jobs: usize,
    /// Seed.
    pub seed: u64,
    /// Offered load: mean GPU demand over the cluster's healthy GPUs (0.9 keeps a queue).
    pub load: f64,
}

impl Default for Synthetic {
    fn default() -> Self {
        Self {
            jobs: 2000,
            seed: 42,
            load: 0.9,
        }
    }
}

/// GPU counts of generated jobs and their weights: mostly small, a long tail of large gangs.
const SIZES: [(u32, f64); 7] = [
    (1, 0.40),
    (2, 0.15),
    (4, 0.15),
    (8, 0.20),
    (16, 0.06),
    (32, 0.03),
    (64, 0.01),
];

/// Generates a trace for `cluster`: Poisson arrivals sized to `load`, log-normal (heavy-tailed)
/// runtimes with a 30-minute median clipped to [1 min, 24 h], mixed job sizes, memory needs,
/// gangs and topology preferences, tenants drawn Zipf-like.
pub fn synthetic(cluster: &Cluster, params: Synthetic) -> Vec<TraceJob> {
    let mut rng = Rng::new(params.seed);
    let healthy = cluster.gpus.iter().filter(|g| g.gpu.healthy).count().max(1) as u32;
    let max_mem = cluster
        .gpus
        .iter()
        .map(|g| g.gpu.memory_free_mib)
        .max()
        .unwrap_or(0);
    let sizes: Vec<(u32, f64)> = SIZES
        .iter()
        .copied()
        .filter(|&(s, _)| s <= healthy)
        .collect();
    let weights: Vec<f64> = sizes.iter().map(|s| s.1).collect();
    let tenant_weights: Vec<f64> = (0..cluster.tenants.len().max(1))
        .map(|i| 1.0 / (i as f64 + 1.0))
        .collect();
    let (median_s, sigma) = (1800.0f64, 1.4f64);
    // E[lognormal] = median * exp(sigma^2 / 2), before clipping.
    let mean_duration = median_s * (sigma * sigma / 2.0).exp();
    let mean_gpus: f64 =
        sizes.iter().map(|(s, w)| *s as f64 * w).sum::<f64>() / weights.iter().sum::<f64>();
    let mean_gap = mean_gpus * mean_duration / (params.load.max(0.01) * healthy as f64);
    let memories: Vec<u32> = [10_000, 20_000, 40_000, 70_000]
        .into_iter()
        .filter(|&m| m <= max_mem)
        .collect();
    let memories = if memories.is_empty() {
        vec![max_mem.max(1)]
    } else {
        memories
    };
    let mut t = 0.0;
    (0..params.jobs)
        .map(|_| {
            t += rng.exponential(mean_gap);
            let gpus = sizes[rng.pick(&weights)].0;
            let duration_s = (median_s * (sigma * rng.normal()).exp()).clamp(60.0, 86_400.0);
            let gang = gpus > 1 && rng.unit() < 0.8;
            let topology = match (gang, gpus) {
                (false, _) => Topology::None,
                (true, g) if g <= 4 && rng.unit() < 0.3 => Topology::SameNvlinkDomain,
                (true, g) if g <= 8 && rng.unit() < 0.5 => Topology::SameNode,
                (true, g) if g > 8 && rng.unit() < 0.4 => Topology::SameRack,
                _ => Topology::None,
            };
            let priority = match rng.unit() {
                x if x < 0.1 => 10,
                x if x < 0.2 => -5,
                _ => 0,
            };
            let tenant = cluster
                .tenants
                .get(rng.pick(&tenant_weights))
                .map(|t| t.name.clone())
                .unwrap_or_default();
            TraceJob {
                submit_s: (t * 1000.0).round() / 1000.0,
                duration_s: duration_s.round(),
                gpus,
                memory_mib: memories[(rng.next_u64() % memories.len() as u64) as usize],
                tenant,
                priority,
                gang,
                topology,
            }
        })
        .collect()
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        Cluster::uniform(2, 4, 8, 3)
    }

    #[test]
    fn csv_roundtrip_and_defaults() {
        let c = cluster();
        let jobs = synthetic(
            &c,
            Synthetic {
                jobs: 50,
                ..Default::default()
            },
        );
        let parsed = parse(&to_csv(&jobs), Path::new("t.csv"), &c).unwrap();
        assert_eq!(parsed.len(), 50);
        for (a, b) in jobs.iter().zip(&parsed) {
            assert_eq!(
                (a.gpus, &a.tenant, a.gang, a.topology),
                (b.gpus, &b.tenant, b.gang, b.topology)
            );
        }
        let text = "submit_time_s,duration_s,gpus,memory_mib,tenant\n0,10,2,100,tenant-1\n";
        let j = parse(text, Path::new("t.csv"), &c).unwrap();
        assert!(j[0].gang);
        assert_eq!(j[0].topology, Topology::None);
    }

    #[test]
    fn errors_name_line_and_column() {
        let c = cluster();
        let head = "submit_time_s,duration_s,gpus,memory_mib,tenant,gang\n";
        let cases = [
            (
                format!("{head}0,10,2,100,tenant-0,true\n1,ten,2,100,tenant-0,true\n"),
                "t.csv:3: column `duration_s`",
            ),
            (
                format!("{head}0,10,2,100,nobody,true\n"),
                "t.csv:2: column `tenant`",
            ),
            (
                format!("{head}0,10,2,100,tenant-0,maybe\n"),
                "t.csv:2: column `gang`",
            ),
            (
                format!("{head}0,10,0,100,tenant-0,true\n"),
                "t.csv:2: column `gpus`",
            ),
            (
                "submit_time_s,gpus\n".to_string(),
                "t.csv:1: header: missing column `duration_s`",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text, Path::new("t.csv"), &c)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(want), "{err}");
        }
    }

    /// The review's finding, for traces: a job that no GPU could ever hold is refused with its
    /// line and column, not left to wait forever.
    #[test]
    fn trace_jobs_no_gpu_could_ever_hold_are_refused_with_their_line() {
        let mut c = Cluster::uniform(1, 2, 8, 2);
        c.gpus[15].gpu.healthy = false;
        c.tenants[1].quota_gpus = Some(4);
        let head =
            "submit_time_s,duration_s,gpus,memory_mib,tenant,gang\n0,10,1,100,tenant-0,true\n";
        for (row, want) in [
            (
                "0,10,1,90000,tenant-0,false",
                "t.csv:3: column `memory_mib`: 90000 MiB",
            ),
            (
                "0,10,16,100,tenant-0,true",
                "t.csv:3: column `gpus`: a gang of 16",
            ),
            ("0,10,5,100,tenant-1,true", "t.csv:3: column `gpus`"),
        ] {
            let err = parse(&format!("{head}{row}\n"), Path::new("t.csv"), &c)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(want), "{err}");
        }
        parse(
            &format!("{head}0,10,15,100,tenant-0,true\n"),
            Path::new("t.csv"),
            &c,
        )
        .unwrap();
    }

    #[test]
    fn synthetic_traces_are_seeded_and_shaped() {
        let c = cluster();
        let a = synthetic(
            &c,
            Synthetic {
                jobs: 500,
                seed: 7,
                load: 0.9,
            },
        );
        let b = synthetic(
            &c,
            Synthetic {
                jobs: 500,
                seed: 7,
                load: 0.9,
            },
        );
        let other = synthetic(
            &c,
            Synthetic {
                jobs: 500,
                seed: 8,
                load: 0.9,
            },
        );
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert!(a.windows(2).all(|w| w[0].submit_s <= w[1].submit_s));
        assert!(
            a.iter()
                .all(|j| j.gpus <= 64 && j.duration_s >= 60.0 && j.duration_s <= 86_400.0)
        );
        let singles = a.iter().filter(|j| j.gpus == 1).count();
        assert!(
            (150..250).contains(&singles),
            "{singles} single-GPU jobs of 500"
        );
        // Heavy tail: the longest job is far above the median.
        let mut d: Vec<f64> = a.iter().map(|j| j.duration_s).collect();
        d.sort_by(f64::total_cmp);
        assert!(d[499] > 10.0 * d[250]);
    }
}
