//! The GPU half of `gantry bench kernels` (builds with `--features cuda`, runs where a GPU is
//! found): cuBLAS GEMM at 8192 cubed in bf16, TF32 and f32 against the device's dense peak, and
//! the same MLP step as the CPU half on the CUDA backend, beside PyTorch CUDA on the same GPU.

use std::time::Instant;

use gantry_kernels::cuda::{CudaBackend, detect};
use gantry_kernels::{Adam, Backend, GemmShape, Op, Optimizer, Precision, Trainer, synthetic};
use serde::Serialize;

use super::kernels::{KernelParams, PeerOutput, run_peers_on, step_spec};

/// One GPU GEMM figure.
#[derive(Debug, Clone, Serialize)]
pub struct GpuGemmRow {
    /// Input precision (accumulation is f32 in every mode).
    pub precision: Precision,
    /// `n` of `n x n x n`.
    pub n: usize,
    /// Ours (cuBLAS through the backend), TFLOP/s.
    pub tflops: f64,
    /// PyTorch's `matmul` at the same precision, TFLOP/s.
    pub peer_tflops: Option<f64>,
    /// `tflops / peer_tflops`.
    pub ratio: Option<f64>,
    /// `tflops` over the device's dense peak for this precision, where known.
    pub of_peak: Option<f64>,
}

/// The GPU report.
#[derive(Debug, Clone, Serialize)]
pub struct GpuReport {
    /// The device.
    pub device: String,
    /// GEMM figures.
    pub gemm: Vec<GpuGemmRow>,
    /// The MLP step on the CUDA backend (f32), milliseconds, and PyTorch CUDA's.
    pub train_step: GpuStep,
    /// Why a peer figure is missing.
    pub peer_note: Option<String>,
}

/// The MLP step on the GPU.
#[derive(Debug, Clone, Serialize)]
pub struct GpuStep {
    /// Ours, median milliseconds.
    pub ms: f64,
    /// PyTorch CUDA's; `null` if it could not run.
    pub peer_ms: Option<f64>,
    /// `ms / peer_ms`.
    pub ratio: Option<f64>,
    /// GEMM work in one step, GFLOP.
    pub gemm_gflop: f64,
}

/// Dense (no sparsity) peak TFLOP/s by device name and precision, from the vendors' data sheets.
fn dense_peak_tflops(name: &str, precision: Precision) -> Option<f64> {
    let (bf16, tf32, f32) = if name.contains("H100") || name.contains("H200") {
        (989.4, 494.7, 66.9)
    } else if name.contains("A100") {
        (312.0, 156.0, 19.5)
    } else {
        return None;
    };
    Some(match precision {
        Precision::Bf16 => bf16,
        Precision::Tf32 => tf32,
        Precision::F32 => f32,
    })
}

/// Runs the GPU half on device 0; `Err` says why it could not (no GPU, no CUDA).
pub fn run(params: &KernelParams) -> Result<GpuReport, String> {
    let devices = detect()?;
    let info = devices
        .first()
        .ok_or("the CUDA driver found no GPU")?
        .clone();
    let n = 8192;
    let peer = params
        .python
        .as_ref()
        .map(|python| run_peers_on(python, params, "cuda", n, false));
    let (peer, mut peer_note): (Option<PeerOutput>, Option<String>) = match peer {
        None => (None, Some("peers skipped (--no-peers)".into())),
        Some(Ok(p)) => {
            let note = (!p.notes.is_empty()).then(|| p.notes.join("; "));
            (Some(p), note)
        }
        Some(Err(e)) => (None, Some(e)),
    };
    let mut gemm = Vec::new();
    for precision in [Precision::Bf16, Precision::Tf32, Precision::F32] {
        let tflops = gemm_tflops(info.ordinal, precision, n)?;
        let peer_tflops = peer
            .as_ref()
            .and_then(|p| p.gemm.get(&format!("{precision}")).copied());
        gemm.push(GpuGemmRow {
            precision,
            n,
            tflops,
            peer_tflops,
            ratio: peer_tflops.map(|p| tflops / p),
            of_peak: dense_peak_tflops(&info.name, precision).map(|p| tflops / p),
        });
    }
    let ms = step_ms(params, info.ordinal)?;
    let peer_ms = peer.as_ref().and_then(|p| p.train_step_ms);
    if peer.is_some() && peer_ms.is_none() && peer_note.is_none() {
        peer_note = Some("PyTorch did not report a CUDA step".into());
    }
    Ok(GpuReport {
        device: info.to_string(),
        gemm,
        train_step: GpuStep {
            ms,
            peer_ms,
            ratio: peer_ms.map(|p| ms / p),
            gemm_gflop: super::kernels::step_gemm_flops(&step_spec(params), params.step_batch)
                / 1e9,
        },
        peer_note,
    })
}

fn err(e: gantry_kernels::KernelError) -> String {
    e.to_string()
}

/// cuBLAS GEMM of `n` cubed at `precision` on GPU `ordinal`: 20 timed after 3 untimed, TFLOP/s.
fn gemm_tflops(ordinal: usize, precision: Precision, n: usize) -> Result<f64, String> {
    let gpu = CudaBackend::new(ordinal, precision).map_err(err)?;
    let a = gpu
        .upload(&gantry_kernels::agreement::values(n * n, 1))
        .map_err(err)?;
    let b = gpu
        .upload(&gantry_kernels::agreement::values(n * n, 2))
        .map_err(err)?;
    let mut c = gpu.alloc(n * n).map_err(err)?;
    let shape = GemmShape::new(Op::N, Op::N, n, n, n);
    for _ in 0..3 {
        gpu.gemm(shape, &a, &b, &mut c).map_err(err)?;
    }
    gpu.synchronize().map_err(err)?;
    let reps = 20;
    let t = Instant::now();
    for _ in 0..reps {
        gpu.gemm(shape, &a, &b, &mut c).map_err(err)?;
    }
    gpu.synchronize().map_err(err)?;
    Ok(shape.flops() * reps as f64 / t.elapsed().as_secs_f64() / 1e12)
}

/// The median MLP training step on the CUDA backend (f32) of GPU `ordinal`, ms.
fn step_ms(params: &KernelParams, ordinal: usize) -> Result<f64, String> {
    let spec = step_spec(params);
    let data = synthetic::dense_classes(params.step_batch, spec.inputs(), spec.outputs(), 1);
    let gpu = CudaBackend::new(ordinal, Precision::F32).map_err(err)?;
    let mut trainer =
        Trainer::new(spec, Optimizer::Adam(Adam::default()), vec![gpu], 1).map_err(err)?;
    // Each step returns its loss, which waits for the step: the time is the whole step's.
    for _ in 0..5 {
        trainer.step(&data.features, &data.targets).map_err(err)?;
    }
    let mut times = Vec::new();
    for _ in 0..params.step_reps.max(1) {
        let t = Instant::now();
        trainer.step(&data.features, &data.targets).map_err(err)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
