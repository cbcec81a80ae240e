//! Which backend a training job runs on, and why: CUDA devices when the build has CUDA
//! support and the driver finds GPUs, else the CPU (its GEMM in bf16 where asked and the CPU has
//! Intel AMX).

use serde::Deserialize;

use super::TrainError;
use super::config::DevicesConfig;
use gantry_kernels::Precision;

/// The `[devices] backend` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// CUDA when GPUs are found, else the CPU.
    #[default]
    Auto,
    /// The CPU, even where GPUs are present.
    Cpu,
    /// CUDA, or fail.
    Cuda,
}

/// One GPU.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GpuInfo {
    /// CUDA ordinal.
    pub ordinal: usize,
    /// The device's name.
    pub name: String,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Its PCI address ("0000:19:00.0"), where the driver gives one.
    pub pci_bus_id: Option<String>,
}

/// What this machine offers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceReport {
    /// CPU cores available to this process.
    pub cpu_cores: usize,
    /// GPUs found (empty without CUDA).
    pub gpus: Vec<GpuInfo>,
    /// Why there are no GPUs, when there are none.
    pub cuda_unavailable: Option<String>,
    /// Whether the CPU can run the bf16 GEMM (Intel AMX, granted by Linux).
    pub cpu_bf16: bool,
}

/// Looks for devices. Never panics: missing CUDA libraries are a reason, not a crash.
pub fn detect() -> DeviceReport {
    let cpu_cores = std::thread::available_parallelism().map_or(1, usize::from);
    let (gpus, cuda_unavailable) = detect_gpus();
    DeviceReport {
        cpu_cores,
        gpus,
        cuda_unavailable,
        cpu_bf16: gantry_kernels::CpuBackend::bf16_available(),
    }
}

#[cfg(not(feature = "cuda"))]
fn detect_gpus() -> (Vec<GpuInfo>, Option<String>) {
    (
        Vec::new(),
        Some("this build has no CUDA support (build with `--features cuda`)".into()),
    )
}

#[cfg(feature = "cuda")]
fn detect_gpus() -> (Vec<GpuInfo>, Option<String>) {
    match gantry_kernels::cuda::detect() {
        Ok(devices) if devices.is_empty() => {
            (Vec::new(), Some("the CUDA driver found no GPU".into()))
        }
        Ok(devices) => (
            devices
                .into_iter()
                .map(|d| GpuInfo {
                    ordinal: d.ordinal,
                    name: d.name,
                    memory_bytes: d.memory_bytes,
                    pci_bus_id: Some(d.pci_bus_id),
                })
                .collect(),
            None,
        ),
        Err(reason) => (Vec::new(), Some(reason)),
    }
}

/// The backend a job will use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selected {
    /// CPU replicas, each with its own thread pool.
    Cpu {
        /// Replicas.
        replicas: usize,
        /// Threads per replica.
        threads_each: usize,
        /// GEMM input precision: f32, or bf16 on AMX.
        precision: Precision,
        /// Why the CPU.
        reason: String,
    },
    /// One replica per listed GPU.
    Cuda {
        /// The GPUs' ordinals.
        ordinals: Vec<usize>,
        /// GEMM input precision.
        precision: Precision,
        /// Why CUDA.
        reason: String,
    },
}

impl Selected {
    /// Why this backend was chosen, in one line.
    pub fn reason(&self) -> &str {
        match self {
            Selected::Cpu { reason, .. } | Selected::Cuda { reason, .. } => reason,
        }
    }
}

/// `replicas` CPU replicas sharing the threads `devices` gives (every core for 0), their GEMM
/// in `precision`.
fn cpu_replicas(
    report: &DeviceReport,
    devices: &DevicesConfig,
    replicas: usize,
    precision: Precision,
    reason: String,
) -> Selected {
    let threads = match devices.threads {
        0 => report.cpu_cores,
        n => n,
    };
    Selected::Cpu {
        replicas,
        threads_each: (threads / replicas).max(1),
        precision,
        reason,
    }
}

/// The precision the CPU runs `devices`' GEMM in, or why it cannot run the one asked for.
fn cpu_precision(report: &DeviceReport, devices: &DevicesConfig) -> Result<Precision, String> {
    match devices.precision {
        Precision::F32 => Ok(Precision::F32),
        Precision::Bf16 if report.cpu_bf16 => Ok(Precision::Bf16),
        Precision::Bf16 => {
            Err("bf16 GEMM needs CUDA or a CPU with Intel AMX, which this one lacks".into())
        }
        Precision::Tf32 => Err("tf32 GEMM is CUDA-only".into()),
    }
}

/// CPU replicas in the precision asked for where the CPU has it, else in f32 with the reason
/// added to `reason`.
fn cpu_or_f32(
    report: &DeviceReport,
    devices: &DevicesConfig,
    replicas: usize,
    reason: String,
) -> Selected {
    match cpu_precision(report, devices) {
        Ok(precision) => cpu_replicas(report, devices, replicas, precision, reason),
        Err(why) => cpu_replicas(
            report,
            devices,
            replicas,
            Precision::F32,
            format!("{reason}; {why}, so f32"),
        ),
    }
}

/// Picks the backend for `devices` on a machine described by `report`.
pub fn select(report: &DeviceReport, devices: &DevicesConfig) -> Result<Selected, TrainError> {
    let replicas = devices.replicas;
    let cuda = |reason: String| -> Result<Selected, TrainError> {
        if replicas > report.gpus.len() {
            return Err(TrainError::Unavailable(format!(
                "{replicas} replicas asked for, {} GPU(s) found",
                report.gpus.len()
            )));
        }
        Ok(Selected::Cuda {
            ordinals: report.gpus[..replicas].iter().map(|g| g.ordinal).collect(),
            precision: devices.precision,
            reason,
        })
    };
    let no_gpu = report
        .cuda_unavailable
        .clone()
        .unwrap_or_else(|| "no GPU found".into());
    match devices.backend {
        BackendChoice::Cpu => match cpu_precision(report, devices) {
            Ok(precision) => Ok(cpu_replicas(
                report,
                devices,
                replicas,
                precision,
                "the CPU was asked for ([devices] backend = \"cpu\")".into(),
            )),
            Err(why) => Err(TrainError::Unavailable(format!(
                "precision = \"{}\" on the CPU: {why}; use precision = \"f32\"",
                devices.precision
            ))),
        },
        BackendChoice::Cuda if report.gpus.is_empty() => Err(TrainError::Unavailable(format!(
            "the CUDA backend was asked for, but {no_gpu}"
        ))),
        BackendChoice::Cuda => cuda("the CUDA backend was asked for".into()),
        BackendChoice::Auto if report.gpus.is_empty() => Ok(cpu_or_f32(
            report,
            devices,
            replicas,
            format!("CPU, since {no_gpu}"),
        )),
        BackendChoice::Auto => cuda(format!("{} GPU(s) found", report.gpus.len())),
    }
}

/// The GPUs a job was placed on: their CUDA ordinals on this machine, and whether they are
/// emulated (a node agent's `--emulate-gpus`: bound like real ones, computed on the CPU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The ordinals, in the placement's order.
    pub ordinals: Vec<usize>,
    /// Whether they are emulated.
    pub emulated: bool,
}

/// Picks the backend for a job placed on `placed`: its data-parallel replicas are exactly those
/// GPUs, one each, whatever `[devices] replicas` says (the placement is the scheduler's, the
/// policy's and the quota's decision). Real GPUs must all be found, or the job fails rather
/// than run on a GPU it was not given; emulated ones run as CPU replicas, one per GPU.
pub fn select_placed(
    report: &DeviceReport,
    devices: &DevicesConfig,
    placed: &Placed,
) -> Result<Selected, TrainError> {
    let replicas = placed.ordinals.len();
    if replicas == 0 {
        return Err(TrainError::Unavailable(
            "the job was placed on no GPU".into(),
        ));
    }
    let list = placed
        .ordinals
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let cpu = |reason: String| cpu_or_f32(report, devices, replicas, reason);
    if placed.emulated {
        return Ok(cpu(format!("emulated GPUs {list}: one CPU replica each")));
    }
    if devices.backend == BackendChoice::Cpu {
        return Ok(cpu(format!(
            "the CPU was asked for ([devices] backend = \"cpu\"), one replica per placed GPU ({list})"
        )));
    }
    if let Some(missing) = placed
        .ordinals
        .iter()
        .find(|o| !report.gpus.iter().any(|g| g.ordinal == **o))
    {
        let why = report
            .cuda_unavailable
            .clone()
            .unwrap_or_else(|| format!("the driver lists {} GPU(s)", report.gpus.len()));
        return Err(TrainError::Unavailable(format!(
            "placed on GPU ordinal {missing}, which this machine does not have ({why})"
        )));
    }
    Ok(Selected::Cuda {
        ordinals: placed.ordinals.clone(),
        precision: devices.precision,
        reason: format!("placed on GPUs {list}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(gpus: usize) -> DeviceReport {
        DeviceReport {
            cpu_cores: 4,
            gpus: (0..gpus)
                .map(|ordinal| GpuInfo {
                    ordinal,
                    name: "H200".into(),
                    memory_bytes: 141 << 30,
                    pci_bus_id: None,
                })
                .collect(),
            cuda_unavailable: (gpus == 0).then(|| "no libcuda".into()),
            cpu_bf16: false,
        }
    }

    fn devices(backend: BackendChoice, replicas: usize) -> DevicesConfig {
        DevicesConfig {
            backend,
            replicas,
            ..DevicesConfig::default()
        }
    }

    #[test]
    fn auto_prefers_gpus_and_says_why_not() {
        let s = select(&report(0), &devices(BackendChoice::Auto, 2)).unwrap();
        assert_eq!(
            s,
            Selected::Cpu {
                replicas: 2,
                threads_each: 2,
                precision: Precision::F32,
                reason: "CPU, since no libcuda".into()
            }
        );
        let s = select(&report(2), &devices(BackendChoice::Auto, 2)).unwrap();
        assert!(matches!(s, Selected::Cuda { ref ordinals, .. } if ordinals == &[0, 1]));
        let e = select(&report(1), &devices(BackendChoice::Auto, 2)).unwrap_err();
        assert!(
            e.to_string()
                .contains("2 replicas asked for, 1 GPU(s) found")
        );
        let e = select(&report(0), &devices(BackendChoice::Cuda, 1)).unwrap_err();
        assert!(e.to_string().contains("no libcuda"), "{e}");
        let bf16 = DevicesConfig {
            precision: Precision::Bf16,
            ..devices(BackendChoice::Cpu, 1)
        };
        assert!(select(&report(0), &bf16).is_err());
        assert!(detect().cpu_cores >= 1);
    }

    #[test]
    fn bf16_runs_on_a_cpu_with_amx_and_falls_back_or_fails_clearly_elsewhere() {
        let bf16 = |backend| DevicesConfig {
            precision: Precision::Bf16,
            ..devices(backend, 1)
        };
        let amx = DeviceReport {
            cpu_bf16: true,
            ..report(0)
        };
        for backend in [BackendChoice::Cpu, BackendChoice::Auto] {
            match select(&amx, &bf16(backend)).unwrap() {
                Selected::Cpu { precision, .. } => assert_eq!(precision, Precision::Bf16),
                other => panic!("{other:?}"),
            }
        }
        // Without AMX: asked for the CPU, a clear error; left to choose, f32 and the reason.
        let e = select(&report(0), &bf16(BackendChoice::Cpu)).unwrap_err();
        assert!(
            e.to_string().contains(
                "precision = \"bf16\" on the CPU: bf16 GEMM needs CUDA or a CPU with Intel AMX"
            ),
            "{e}"
        );
        match select(&report(0), &bf16(BackendChoice::Auto)).unwrap() {
            Selected::Cpu {
                precision, reason, ..
            } => {
                assert_eq!(precision, Precision::F32);
                assert!(reason.ends_with("lacks, so f32"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // tf32 is CUDA's alone, AMX or not.
        let tf32 = DevicesConfig {
            precision: Precision::Tf32,
            ..devices(BackendChoice::Cpu, 1)
        };
        let e = select(&amx, &tf32).unwrap_err();
        assert!(e.to_string().contains("tf32 GEMM is CUDA-only"), "{e}");
    }

    fn placed(ordinals: &[usize], emulated: bool) -> Placed {
        Placed {
            ordinals: ordinals.to_vec(),
            emulated,
        }
    }

    #[test]
    fn a_placed_job_runs_one_replica_on_each_of_its_gpus_and_no_other() {
        let auto = devices(BackendChoice::Auto, 1);
        match select_placed(&report(4), &auto, &placed(&[2, 3], false)).unwrap() {
            Selected::Cuda { ordinals, .. } => assert_eq!(ordinals, vec![2, 3]),
            other => panic!("{other:?}"),
        }
        let e = select_placed(&report(2), &auto, &placed(&[1, 5], false)).unwrap_err();
        assert!(e.to_string().contains("GPU ordinal 5"), "{e}");
        let e = select_placed(&report(0), &auto, &placed(&[0], false)).unwrap_err();
        assert!(e.to_string().contains("no libcuda"), "{e}");
        match select_placed(&report(0), &auto, &placed(&[0, 1, 2], true)).unwrap() {
            Selected::Cpu {
                replicas, reason, ..
            } => {
                assert_eq!(replicas, 3);
                assert!(reason.contains("emulated GPUs 0,1,2"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(select_placed(&report(4), &auto, &placed(&[], false)).is_err());
    }
}
