//! The GPUs a node's agent reports, and their health: emulated ones (`--emulate-gpus N`), the
//! ones a devices file lists (`--devices FILE`, read again before every heartbeat, so that a
//! GPU leaves service when the file says it is unfit: what a health checker beside the agent
//! writes), or the ones the CUDA driver finds, their health read through NVML where the driver
//! installed it ([`super::agent_health`]).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use gantry_daemon::nodes::{Heartbeat, ReportedGpu};

/// The largest devices file read, bytes.
const MAX_FILE: u64 = 1 << 20;

/// Where an agent's GPUs come from.
pub(super) enum Devices {
    /// `--emulate-gpus N`: healthy, run on the CPU.
    Emulated(Vec<ReportedGpu>),
    /// `--devices FILE` (emulated too: run on the CPU, bound like real ones); the last report
    /// that read, kept while the file does not.
    File {
        path: PathBuf,
        last: Vec<ReportedGpu>,
    },
    /// The CUDA driver's, their health NVML's where it loads.
    Driver {
        gpus: Vec<ReportedGpu>,
        health: Option<super::agent_health::Health>,
        /// Why each unfit GPU (by ordinal) is, as last reported: a change is said once.
        unfit: std::collections::HashMap<u32, String>,
    },
}

/// A devices file: `[[gpus]]` tables of `ordinal`, `name`, `memory_mib`, `pci_bus_id` and
/// `healthy`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicesFile {
    gpus: Vec<ReportedGpu>,
}

impl Devices {
    /// The agent's devices; a devices file that does not read is an error naming it.
    pub(super) fn new(emulate: Option<u32>, file: Option<PathBuf>) -> anyhow::Result<Devices> {
        if let Some(path) = file {
            let last = read(&path)?;
            return Ok(Devices::File { path, last });
        }
        if let Some(n) = emulate {
            let gpu = |ordinal| ReportedGpu {
                ordinal,
                name: "emulated (CPU)".into(),
                memory_mib: 81920,
                pci_bus_id: None,
                healthy: true,
                nvlink_peers: Vec::new(),
            };
            return Ok(Devices::Emulated((0..n).map(gpu).collect()));
        }
        Devices::found(gantry::training::device::detect())
    }

    /// The GPUs the CUDA driver found (`report`), their health NVML's where it loads; none
    /// found is an error saying why.
    pub(super) fn found(report: gantry::training::device::DeviceReport) -> anyhow::Result<Devices> {
        if report.gpus.is_empty() {
            anyhow::bail!(
                "no GPUs found ({}); give --emulate-gpus N or --devices FILE to advertise emulated ones",
                report
                    .cuda_unavailable
                    .as_deref()
                    .unwrap_or("none reported")
            );
        }
        let gpus = report.gpus.iter().map(|g| ReportedGpu {
            ordinal: g.ordinal as u32,
            name: g.name.clone(),
            memory_mib: g.memory_bytes >> 20,
            pci_bus_id: g.pci_bus_id.clone(),
            healthy: true,
            nvlink_peers: Vec::new(),
        });
        let mut gpus: Vec<ReportedGpu> = gpus.collect();
        let health = super::agent_health::Health::load()
            .inspect_err(|why| eprintln!("GPU health from the CUDA driver only: {why}"))
            .ok();
        if let Some(health) = &health {
            // The topology does not change while the agent runs: read once.
            let buses: Vec<(u32, Option<String>)> = gpus
                .iter()
                .map(|g| (g.ordinal, g.pci_bus_id.clone()))
                .collect();
            for g in &mut gpus {
                g.nvlink_peers = health.nvlink_peers(g.pci_bus_id.as_deref(), &buses);
            }
        }
        Ok(Devices::Driver {
            gpus,
            health,
            unfit: Default::default(),
        })
    }

    /// Whether the GPUs are emulated (run on the CPU).
    pub(super) fn emulated(&self) -> bool {
        !matches!(self, Devices::Driver { .. })
    }

    /// The GPUs to report now: a devices file is read again (one that no longer reads is
    /// reported on standard error, and the last report that read stands).
    pub(super) fn report(&mut self) -> &[ReportedGpu] {
        match self {
            Devices::Emulated(gpus) => gpus,
            Devices::Driver {
                gpus,
                health,
                unfit,
            } => {
                if let Some(health) = health {
                    for g in gpus.iter_mut() {
                        let Some(bus) = &g.pci_bus_id else { continue };
                        let why = super::agent_health::unfit(&health.read(bus));
                        g.healthy = why.is_none();
                        match why {
                            Some(why) if unfit.get(&g.ordinal) != Some(&why) => {
                                eprintln!("GPU {} ({bus}) is unfit: {why}", g.ordinal);
                                unfit.insert(g.ordinal, why);
                            }
                            None if unfit.remove(&g.ordinal).is_some() => {
                                eprintln!("GPU {} ({bus}) is fit again", g.ordinal);
                            }
                            _ => {}
                        }
                    }
                }
                gpus
            }
            Devices::File { path, last } => {
                match read(path) {
                    Ok(gpus) => *last = gpus,
                    Err(e) => eprintln!("{e:#}; reporting what it said before"),
                }
                last
            }
        }
    }
}

/// Reads and checks devices file `path` (bounded; every error names the file, and the line or
/// the field).
fn read(path: &Path) -> anyhow::Result<Vec<ReportedGpu>> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("--devices {}", path.display()))?
        .len();
    if size > MAX_FILE {
        anyhow::bail!(
            "--devices {}: {size} bytes, over the most ({MAX_FILE})",
            path.display()
        );
    }
    let text = gantry::plugin::files::read_text(path)
        .with_context(|| format!("--devices {}", path.display()))?;
    let file: DevicesFile =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("--devices {}: {e}", path.display()))?;
    let beat = Heartbeat {
        gpus: file.gpus,
        emulated: true,
        rack: None,
    };
    beat.check()
        .map_err(|e| anyhow::anyhow!("--devices {}: {e}", path.display()))?;
    Ok(beat.gpus)
}
