//! `gantry bench kernels`: the CPU backend's f32 GEMM and one MLP training step, side by side in
//! one run with the peers a user would pick instead (NumPy with OpenBLAS for GEMM, PyTorch CPU
//! for the step), run as a Python subprocess with the same thread count, plus the machine's
//! measured f32 FMA peak for scale.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use gantry_kernels::mlp::step_gemms;
use gantry_kernels::{
    Adam, Backend, CpuBackend, GemmShape, MlpSpec, Op, Optimizer, Precision, Trainer, agreement,
    synthetic,
};
use serde::Serialize;

/// The peers' script, embedded so the binary is self-contained.
const PEERS: &str = include_str!("peers.py");

/// Workload of the kernels benchmark.
#[derive(Debug, Clone)]
pub struct KernelParams {
    /// GEMM sizes (`n x n x n`) and timed repetitions of each.
    pub gemm: Vec<(usize, usize)>,
    /// Layer sizes of the training-step network.
    pub step_sizes: Vec<usize>,
    /// Training-step batch.
    pub step_batch: usize,
    /// Timed training steps.
    pub step_reps: usize,
    /// Threads for every side.
    pub threads: usize,
    /// The Python interpreter for the peers (`None`: skip them).
    pub python: Option<PathBuf>,
    /// Rounds of the FMA peak loop per thread.
    pub peak_iters: u64,
    /// Rounds of (Gantry, peers); each side's best round is reported.
    pub rounds: usize,
}

impl Default for KernelParams {
    fn default() -> Self {
        Self {
            gemm: vec![(256, 200), (1024, 20), (2048, 6)],
            step_sizes: vec![784, 1024, 1024, 10],
            step_batch: 256,
            step_reps: 30,
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            python: Some("python3".into()),
            peak_iters: 60_000_000,
            rounds: 3,
        }
    }
}

/// One GEMM size.
#[derive(Debug, Clone, Serialize)]
pub struct GemmRow {
    /// `n` of `n x n x n`.
    pub n: usize,
    /// Ours: median over the repetitions of the best round.
    pub gflops: f64,
    /// The peer's (NumPy), measured the same way; `null` if it could not run.
    pub peer_gflops: Option<f64>,
    /// `gflops / peer_gflops`.
    pub ratio: Option<f64>,
    /// `gflops` as a fraction of the measured FMA peak.
    pub of_peak: f64,
    /// `gflops` as a fraction of [`KernelReport::l1_ceiling_gflops`].
    pub of_ceiling: Option<f64>,
}

/// The training step.
#[derive(Debug, Clone, Serialize)]
pub struct StepRow {
    /// Ours: forward, loss, backward and Adam on one batch, median milliseconds.
    pub ms: f64,
    /// PyTorch CPU's, the same network, batch and optimizer; `null` if it could not run.
    pub peer_ms: Option<f64>,
    /// `ms / peer_ms` (below 1: faster than the peer).
    pub ratio: Option<f64>,
    /// GEMM work in one step, GFLOP.
    pub gemm_gflop: f64,
    /// The step's GEMM floor: `gemm_gflop` at the best GEMM rate of this run's table.
    pub floor_ms: f64,
    /// `ms / floor_ms`: how far the whole step is from its GEMMs at full speed.
    pub of_floor: f64,
    /// The step's own GEMMs, each timed alone (its operands warm in cache), summed.
    pub gemms_ms: f64,
    /// `gemms_ms / floor_ms`: how much the step's shapes lose against the table's GEMM.
    pub gemms_of_floor: f64,
    /// Each of the step's GEMMs, in the order the step runs them.
    pub gemms: Vec<ProductRow>,
}

/// One of the training step's GEMMs, timed alone.
#[derive(Debug, Clone, Serialize)]
pub struct ProductRow {
    /// `m x n x k`, and how `a` and `b` are used (`N`: as stored, `T`: transposed).
    pub shape: String,
    /// Median milliseconds.
    pub ms: f64,
    /// GFLOP/s.
    pub gflops: f64,
}

/// The CPU's bf16 GEMM (Intel AMX) beside its f32 one: the same sizes and step.
#[derive(Debug, Clone, Serialize)]
pub struct Bf16Report {
    /// The bf16 backend, described.
    pub backend: String,
    /// GEMM at each size of the f32 table.
    pub gemm: Vec<Bf16Gemm>,
    /// The training step with bf16 GEMM inputs, median ms.
    pub step_ms: f64,
    /// The f32 step's time over this one (above 1: bf16 is faster).
    pub step_speedup: f64,
    /// PyTorch CPU's step under `torch.autocast(bfloat16)`; `null` if it could not run.
    pub peer_step_ms: Option<f64>,
    /// `step_ms / peer_step_ms`.
    pub peer_ratio: Option<f64>,
}

/// One bf16 GEMM size.
#[derive(Debug, Clone, Serialize)]
pub struct Bf16Gemm {
    /// `n` of `n x n x n`.
    pub n: usize,
    /// Ours, bf16 inputs, f32 accumulation.
    pub gflops: f64,
    /// Over our f32 GEMM at the same size.
    pub speedup: f64,
    /// PyTorch's `torch.mm` on bf16 tensors (oneDNN); `null` if it could not run.
    pub peer_gflops: Option<f64>,
}

/// What `gantry bench kernels --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct KernelReport {
    /// Our backend, described.
    pub backend: String,
    /// Threads on every side.
    pub threads: usize,
    /// The CPU model.
    pub cpu: String,
    /// Rounds run; every figure is its side's best round.
    pub rounds: usize,
    /// f32 FMA throughput measured on `threads` threads with the widest vector FMA: the
    /// practical peak every GEMM is measured against.
    pub peak_gflops: f64,
    /// f32 GFLOP/s of a GEMM's inner loop alone on `threads` threads: the best of two
    /// register-blocked tiles, their operands in L1, no packing, no cache miss, no edge. What
    /// any GEMM can reach on this machine, at most (`null` without AVX2 or AVX-512).
    pub l1_ceiling_gflops: Option<f64>,
    /// `l1_ceiling_gflops / peak_gflops`.
    pub ceiling_of_peak: Option<f64>,
    /// GEMM at each size.
    pub gemm: Vec<GemmRow>,
    /// The training step.
    pub train_step: StepRow,
    /// The bf16 GEMM and step where the CPU has AMX (`null` elsewhere; `bf16_note` says why).
    pub bf16: Option<Bf16Report>,
    /// Why there is no bf16 half.
    pub bf16_note: Option<String>,
    /// The peers' versions (NumPy and its BLAS, PyTorch and its Adam).
    pub peers: Vec<String>,
    /// Why a peer is missing, when one is.
    pub peer_note: Option<String>,
    /// The GPU half (`null` where it did not run; `gpu_note` says why).
    pub gpu: Option<serde_json::Value>,
    /// Why there is no GPU half.
    pub gpu_note: Option<String>,
}

/// What the peers' script prints.
#[derive(serde::Deserialize)]
pub(crate) struct PeerOutput {
    pub(crate) numpy: Option<String>,
    pub(crate) torch: Option<String>,
    /// GFLOP/s by size on the CPU; TFLOP/s by precision on a GPU.
    pub(crate) gemm: std::collections::BTreeMap<String, f64>,
    pub(crate) train_step_ms: Option<f64>,
    /// PyTorch's bf16 figures on the CPU, where asked for: GFLOP/s by size, and the step.
    #[serde(default)]
    pub(crate) gemm_bf16: std::collections::BTreeMap<String, f64>,
    #[serde(default)]
    pub(crate) train_step_bf16_ms: Option<f64>,
    pub(crate) notes: Vec<String>,
}

/// Median seconds of `reps` runs of `f` after `warmup` untimed ones.
fn median_secs(reps: usize, warmup: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Our side of one round.
struct Ours {
    peak_gflops: f64,
    ceiling_gflops: Option<f64>,
    f32: Measured,
    bf16: Option<Measured>,
}

/// One backend's GEMM rates (by size), step time and the step's GEMMs alone (ms each).
#[derive(Clone)]
struct Measured {
    gemm_gflops: Vec<f64>,
    step_ms: f64,
    product_ms: Vec<f64>,
}

impl Measured {
    /// The best of two rounds, figure by figure.
    fn best_with(self, other: Measured) -> Measured {
        Measured {
            gemm_gflops: pairwise(&self.gemm_gflops, &other.gemm_gflops, f64::max),
            step_ms: self.step_ms.min(other.step_ms),
            product_ms: pairwise(&self.product_ms, &other.product_ms, f64::min),
        }
    }
}

/// `f` of each pair of figures of two rounds.
fn pairwise(x: &[f64], y: &[f64], f: fn(f64, f64) -> f64) -> Vec<f64> {
    x.iter().zip(y).map(|(x, y)| f(*x, *y)).collect()
}

fn measure_ours(
    params: &KernelParams,
    cpu: &CpuBackend,
    bf16: Option<&CpuBackend>,
) -> Result<Ours, gantry_kernels::KernelError> {
    let peak_gflops = fma_peak_gflops(params.threads, params.peak_iters);
    let ceiling_gflops = l1_ceiling_gflops(params.threads, params.peak_iters);
    Ok(Ours {
        peak_gflops,
        ceiling_gflops,
        f32: measure(params, cpu)?,
        bf16: bf16.map(|b| measure(params, b)).transpose()?,
    })
}

/// GEMM at each size, then the training step, on `cpu`.
fn measure(
    params: &KernelParams,
    cpu: &CpuBackend,
) -> Result<Measured, gantry_kernels::KernelError> {
    let gemm_gflops = params
        .gemm
        .iter()
        .map(|&(n, reps)| {
            let shape = GemmShape::new(Op::N, Op::N, n, n, n);
            shape.flops() / gemm_secs(cpu, shape, reps) / 1e9
        })
        .collect();
    let spec = step_spec(params);
    let product_ms = step_gemms(&spec, params.step_batch)
        .into_iter()
        .map(|shape| gemm_secs(cpu, shape, params.step_reps) * 1e3)
        .collect();
    let data = synthetic::dense_classes(params.step_batch, spec.inputs(), spec.outputs(), 1);
    let mut trainer = Trainer::new(
        spec,
        Optimizer::Adam(Adam::default()),
        vec![CpuBackend::with_precision(params.threads, cpu.precision())?],
        1,
    )?;
    let mut failed = None;
    let step_secs = median_secs(params.step_reps, 5, || {
        if let Err(e) = trainer.step(&data.features, &data.targets) {
            failed = Some(e);
        }
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(Measured {
            gemm_gflops,
            step_ms: step_secs * 1e3,
            product_ms,
        }),
    }
}

/// Median seconds of `reps` GEMMs of `shape` on `cpu` (after 2 untimed), fixed operands.
fn gemm_secs(cpu: &CpuBackend, shape: GemmShape, reps: usize) -> f64 {
    let a = agreement::values(shape.m * shape.k, 1);
    let b = agreement::values(shape.k * shape.n, 2);
    let mut c = vec![0.0; shape.m * shape.n];
    median_secs(reps, 2, || {
        cpu.gemm(shape, &a, &b, &mut c).expect("shapes match");
    })
}

pub(crate) fn step_spec(params: &KernelParams) -> MlpSpec {
    MlpSpec {
        sizes: params.step_sizes.clone(),
        activation: gantry_kernels::Activation::Relu,
        loss: gantry_kernels::Loss::SoftmaxCrossEntropy,
    }
}

/// Runs the benchmark: `rounds` rounds, each measuring Gantry and then the peers, keeping each
/// side's best round (shared machines are noisy; the best round is the least disturbed one).
/// `progress(done, total)` after each side of each round.
pub fn run(
    params: &KernelParams,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<KernelReport, gantry_kernels::KernelError> {
    let rounds = params.rounds.max(1);
    let total = 2 * rounds as u64;
    let cpu = CpuBackend::new(params.threads)?;
    let bf16 = CpuBackend::bf16_available()
        .then(|| CpuBackend::with_precision(params.threads, Precision::Bf16))
        .transpose()?;
    let mut best: Option<Ours> = None;
    let mut peer: Option<PeerOutput> = None;
    let mut peer_error = None;
    for round in 0..rounds {
        let ours = measure_ours(params, &cpu, bf16.as_ref())?;
        best = Some(match best {
            None => ours,
            Some(b) => b.best_with(ours),
        });
        progress(2 * round as u64 + 1, total);
        if let Some(python) = &params.python {
            match run_peers(python, params, bf16.is_some()) {
                Ok(p) => {
                    peer = Some(match peer {
                        None => p,
                        Some(b) => b.best_with(p),
                    })
                }
                Err(note) => peer_error = Some(note),
            }
        }
        progress(2 * round as u64 + 2, total);
    }
    let mut report = report_ours(
        params,
        &cpu,
        bf16.as_ref(),
        rounds,
        best.expect("at least one round"),
    );
    match (&params.python, peer) {
        (None, _) => report.peer_note = Some("peers skipped (--no-peers)".into()),
        (Some(_), None) => report.peer_note = peer_error,
        (Some(_), Some(peer)) => report.add_peers(peer),
    }
    #[cfg(feature = "cuda")]
    match super::kernels_gpu::run(params) {
        Ok(gpu) => report.gpu = serde_json::to_value(gpu).ok(),
        Err(why) => report.gpu_note = Some(why),
    }
    #[cfg(not(feature = "cuda"))]
    {
        report.gpu_note =
            Some("this build has no CUDA support (build with `--features cuda`)".into());
    }
    Ok(report)
}

impl Ours {
    /// The best of two rounds, figure by figure.
    fn best_with(self, other: Ours) -> Ours {
        Ours {
            peak_gflops: self.peak_gflops.max(other.peak_gflops),
            ceiling_gflops: match (self.ceiling_gflops, other.ceiling_gflops) {
                (Some(x), Some(y)) => Some(x.max(y)),
                (x, y) => x.or(y),
            },
            f32: self.f32.best_with(other.f32),
            bf16: match (self.bf16, other.bf16) {
                (Some(x), Some(y)) => Some(x.best_with(y)),
                (x, y) => x.or(y),
            },
        }
    }
}

impl PeerOutput {
    /// The best of two rounds, figure by figure (versions and notes of the first).
    fn best_with(mut self, other: PeerOutput) -> PeerOutput {
        for (n, g) in other.gemm {
            let e = self.gemm.entry(n).or_insert(g);
            *e = e.max(g);
        }
        let least = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        self.train_step_ms = least(self.train_step_ms, other.train_step_ms);
        self.train_step_bf16_ms = least(self.train_step_bf16_ms, other.train_step_bf16_ms);
        for (n, g) in other.gemm_bf16 {
            let e = self.gemm_bf16.entry(n).or_insert(g);
            *e = e.max(g);
        }
        self
    }
}

/// The report of our side alone (no peers, no GPU half yet).
fn report_ours(
    params: &KernelParams,
    cpu: &CpuBackend,
    bf16: Option<&CpuBackend>,
    rounds: usize,
    ours: Ours,
) -> KernelReport {
    let spec = step_spec(params);
    let f32 = &ours.f32;
    let bf16_report = bf16.zip(ours.bf16.as_ref()).map(|(backend, b)| Bf16Report {
        backend: backend.describe(),
        gemm: params
            .gemm
            .iter()
            .zip(b.gemm_gflops.iter().zip(&f32.gemm_gflops))
            .map(|(&(n, _), (&gflops, &f32_gflops))| Bf16Gemm {
                n,
                gflops,
                speedup: gflops / f32_gflops,
                peer_gflops: None,
            })
            .collect(),
        step_ms: b.step_ms,
        step_speedup: f32.step_ms / b.step_ms,
        peer_step_ms: None,
        peer_ratio: None,
    });
    KernelReport {
        backend: cpu.describe(),
        threads: params.threads,
        cpu: cpu_model(),
        rounds,
        peak_gflops: ours.peak_gflops,
        l1_ceiling_gflops: ours.ceiling_gflops,
        ceiling_of_peak: ours.ceiling_gflops.map(|c| c / ours.peak_gflops),
        gemm: params
            .gemm
            .iter()
            .zip(&f32.gemm_gflops)
            .map(|(&(n, _), &gflops)| GemmRow {
                n,
                gflops,
                peer_gflops: None,
                ratio: None,
                of_peak: gflops / ours.peak_gflops,
                of_ceiling: ours.ceiling_gflops.map(|c| gflops / c),
            })
            .collect(),
        train_step: step_row(&spec, params.step_batch, f32),
        bf16_note: bf16_report
            .is_none()
            .then(|| "the CPU has no AMX-BF16 (or Linux refused its tile state): f32 only".into()),
        bf16: bf16_report,
        peers: Vec::new(),
        peer_note: None,
        gpu: None,
        gpu_note: None,
    }
}

impl KernelReport {
    /// The peers' figures beside ours, with the ratios.
    fn add_peers(&mut self, peer: PeerOutput) {
        for row in &mut self.gemm {
            row.peer_gflops = peer.gemm.get(&row.n.to_string()).copied();
            row.ratio = row.peer_gflops.map(|p| row.gflops / p);
        }
        self.train_step.peer_ms = peer.train_step_ms;
        self.train_step.ratio = peer.train_step_ms.map(|p| self.train_step.ms / p);
        if let Some(b) = &mut self.bf16 {
            for row in &mut b.gemm {
                row.peer_gflops = peer.gemm_bf16.get(&row.n.to_string()).copied();
            }
            b.peer_step_ms = peer.train_step_bf16_ms;
            b.peer_ratio = peer.train_step_bf16_ms.map(|p| b.step_ms / p);
        }
        self.peers = [
            peer.numpy.map(|v| format!("numpy {v}")),
            peer.torch.map(|v| format!("torch {v}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !peer.notes.is_empty() {
            self.peer_note = Some(peer.notes.join("; "));
        }
    }
}

/// The step's row: its time against its GEMM floor, and its GEMMs alone.
fn step_row(spec: &MlpSpec, batch: usize, f32: &Measured) -> StepRow {
    let gemm_gflop = step_gemm_flops(spec, batch) / 1e9;
    let best_rate = f32.gemm_gflops.iter().copied().fold(0.0, f64::max);
    let floor_ms = gemm_gflop / best_rate * 1e3;
    let gemms_ms = f32.product_ms.iter().sum::<f64>();
    StepRow {
        ms: f32.step_ms,
        peer_ms: None,
        ratio: None,
        gemm_gflop,
        floor_ms,
        of_floor: f32.step_ms / floor_ms,
        gemms_ms,
        gemms_of_floor: gemms_ms / floor_ms,
        gemms: step_gemms(spec, batch)
            .iter()
            .zip(&f32.product_ms)
            .map(|(s, &ms)| ProductRow {
                shape: format!("{}x{}x{} ({:?},{:?})", s.m, s.n, s.k, s.op_a, s.op_b),
                ms,
                gflops: s.flops() / ms / 1e6,
            })
            .collect(),
    }
}

/// GEMM floating-point operations of one training step (see [`step_gemms`]).
pub fn step_gemm_flops(spec: &MlpSpec, batch: usize) -> f64 {
    step_gemms(spec, batch).iter().map(GemmShape::flops).sum()
}

fn run_peers(
    python: &std::path::Path,
    params: &KernelParams,
    bf16: bool,
) -> Result<PeerOutput, String> {
    run_peers_on(python, params, "cpu", 0, bf16)
}

/// Runs the peers' script on `device` (`cpu`, or `cuda` with GEMMs of `gpu_n` cubed).
pub(crate) fn run_peers_on(
    python: &std::path::Path,
    params: &KernelParams,
    device: &str,
    gpu_n: usize,
    bf16: bool,
) -> Result<PeerOutput, String> {
    let args = serde_json::json!({
        "device": device,
        "gpu_n": gpu_n,
        "bf16": bf16,
        "threads": params.threads,
        "gemm": params.gemm,
        "step": {"sizes": params.step_sizes, "batch": params.step_batch, "reps": params.step_reps},
    });
    let threads = params.threads.to_string();
    let out = Command::new(python)
        .arg("-c")
        .arg(PEERS)
        .arg(args.to_string())
        .env("OMP_NUM_THREADS", &threads)
        .env("OPENBLAS_NUM_THREADS", &threads)
        .env("MKL_NUM_THREADS", &threads)
        .output()
        .map_err(|e| format!("could not run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed running the peers: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("unreadable peer output: {e}"))
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// f32 GFLOP/s of independent vector FMAs on `threads` threads: the most any f32 kernel can
/// reach here.
pub fn fma_peak_gflops(threads: usize, iters: u64) -> f64 {
    let start = Instant::now();
    let flops_per_thread: f64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| s.spawn(|| fma_loop(iters)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("FMA thread"))
            .sum::<f64>()
    });
    flops_per_thread / start.elapsed().as_secs_f64() / 1e9
}

/// f32 GFLOP/s of a GEMM's inner loop on `threads` threads, its operands in L1 (see
/// [`KernelReport::l1_ceiling_gflops`]): the better of two tiles, each run for about as many
/// flops as the peak loop's `iters` rounds.
pub fn l1_ceiling_gflops(threads: usize, iters: u64) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use gantry_kernels::cpu::{Vectors, vectors};
        let flops = iters as f64 * fma::CHAINS as f64 * 32.0;
        let rate = |run: fn(f64) -> (f64, f32)| {
            let start = Instant::now();
            let done: f64 = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads.max(1))
                    .map(|_| s.spawn(move || std::hint::black_box(run(flops)).0))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("tile thread"))
                    .sum()
            });
            done / start.elapsed().as_secs_f64() / 1e9
        };
        // SAFETY (each closure): the CPU has the instructions its level says it has.
        match vectors() {
            Vectors::Avx512 => {
                return Some(
                    rate(|f| unsafe { fma::tile_avx512::<12, 2>(f) })
                        .max(rate(|f| unsafe { fma::tile_avx512::<14, 2>(f) })),
                );
            }
            Vectors::Avx2Fma => {
                return Some(
                    rate(|f| unsafe { fma::tile_avx2::<6, 2>(f) })
                        .max(rate(|f| unsafe { fma::tile_avx2::<4, 3>(f) })),
                );
            }
            _ => {}
        }
    }
    let _ = (threads, iters);
    None
}

/// Runs `iters` rounds of independent FMAs; returns the flops done.
fn fma_loop(iters: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        use gantry_kernels::cpu::{Vectors, vectors};
        if vectors() == Vectors::Avx512 {
            // SAFETY: the CPU has AVX-512 F: its level says so.
            let sink = unsafe { fma::avx512(iters) };
            std::hint::black_box(sink);
            return iters as f64 * fma::CHAINS as f64 * 16.0 * 2.0;
        }
        if vectors() == Vectors::Avx2Fma {
            // SAFETY: the CPU has FMA and AVX2: its level says so.
            let sink = unsafe { fma::avx2(iters) };
            std::hint::black_box(sink);
            return iters as f64 * fma::CHAINS as f64 * 8.0 * 2.0;
        }
    }
    // Scalar fallback: the compiler's FMA over independent chains.
    let mut acc = [1.0f32; 16];
    for _ in 0..iters {
        for a in &mut acc {
            *a = a.mul_add(0.999_999, 1e-7);
        }
    }
    std::hint::black_box(acc);
    iters as f64 * 16.0 * 2.0
}

#[cfg(target_arch = "x86_64")]
mod fma {
    use std::arch::x86_64::*;

    /// Independent accumulators: enough to cover FMA latency times issue width.
    pub const CHAINS: usize = 12;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512(iters: u64) -> f32 {
        let mul = _mm512_set1_ps(0.999_999);
        let add = _mm512_set1_ps(1e-7);
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for a in &mut acc {
                *a = _mm512_fmadd_ps(*a, mul, add);
            }
        }
        let mut sum = _mm512_setzero_ps();
        for a in acc {
            sum = _mm512_add_ps(sum, a);
        }
        _mm512_reduce_add_ps(sum)
    }

    /// Depth of the tiles' operands: A (MR x 256) and B (256 x up to 48) stay in L1.
    const DEPTH: usize = 256;

    /// Operands of a tile: A packed depth-major (MR values per step), B row by row.
    fn operands(mr: usize, nr: usize) -> (Vec<f32>, Vec<f32>) {
        let a = (0..DEPTH * mr).map(|i| (i % 7) as f32 * 0.01).collect();
        let b = (0..DEPTH * nr).map(|i| (i % 5) as f32 * 0.01).collect();
        (a, b)
    }

    /// A GEMM microkernel's loop, C (MR x 16 NV) += A (MR x 256) B (256 x 16 NV), its C in
    /// registers, repeated for at least `flops`; returns the flops done and the sum of C.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile_avx512<const MR: usize, const NV: usize>(flops: f64) -> (f64, f32) {
        let (a, b) = operands(MR, 16 * NV);
        let per_pass = (2 * MR * 16 * NV * DEPTH) as f64;
        let passes = (flops / per_pass).ceil() as usize;
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        for _ in 0..passes {
            for (pa, pb) in a.chunks_exact(MR).zip(b.chunks_exact(16 * NV)) {
                let mut bv = [_mm512_setzero_ps(); NV];
                for (j, v) in bv.iter_mut().enumerate() {
                    // SAFETY: `pb` holds 16 NV floats.
                    *v = unsafe { _mm512_loadu_ps(pb.as_ptr().add(16 * j)) };
                }
                for (row, &x) in acc.iter_mut().zip(pa) {
                    let av = _mm512_set1_ps(x);
                    for (c, v) in row.iter_mut().zip(&bv) {
                        *c = _mm512_fmadd_ps(av, *v, *c);
                    }
                }
            }
        }
        let mut sum = _mm512_setzero_ps();
        for c in acc.iter().flatten() {
            sum = _mm512_add_ps(sum, *c);
        }
        (passes as f64 * per_pass, _mm512_reduce_add_ps(sum))
    }

    /// [`tile_avx512`] with 8-wide vectors: C (MR x 8 NV).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_avx2<const MR: usize, const NV: usize>(flops: f64) -> (f64, f32) {
        let (a, b) = operands(MR, 8 * NV);
        let per_pass = (2 * MR * 8 * NV * DEPTH) as f64;
        let passes = (flops / per_pass).ceil() as usize;
        let mut acc = [[_mm256_setzero_ps(); NV]; MR];
        for _ in 0..passes {
            for (pa, pb) in a.chunks_exact(MR).zip(b.chunks_exact(8 * NV)) {
                let mut bv = [_mm256_setzero_ps(); NV];
                for (j, v) in bv.iter_mut().enumerate() {
                    // SAFETY: `pb` holds 8 NV floats.
                    *v = unsafe { _mm256_loadu_ps(pb.as_ptr().add(8 * j)) };
                }
                for (row, &x) in acc.iter_mut().zip(pa) {
                    let av = _mm256_set1_ps(x);
                    for (c, v) in row.iter_mut().zip(&bv) {
                        *c = _mm256_fmadd_ps(av, *v, *c);
                    }
                }
            }
        }
        let mut sum = _mm256_setzero_ps();
        for c in acc.iter().flatten() {
            sum = _mm256_add_ps(sum, *c);
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        (passes as f64 * per_pass, lanes.iter().sum())
    }

    /// The sum of C after one pass of an MR x NR tile, computed plainly: what the tiles must
    /// give (their work is real, not optimised away).
    #[cfg(test)]
    pub fn tile_sum(mr: usize, nr: usize) -> f32 {
        let (a, b) = operands(mr, nr);
        a.chunks_exact(mr)
            .zip(b.chunks_exact(nr))
            .map(|(pa, pb)| pa.iter().sum::<f32>() * pb.iter().sum::<f32>())
            .sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(iters: u64) -> f32 {
        let mul = _mm256_set1_ps(0.999_999);
        let add = _mm256_set1_ps(1e-7);
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for a in &mut acc {
                *a = _mm256_fmadd_ps(*a, mul, add);
            }
        }
        let mut out = [0.0f32; 8];
        let mut sum = _mm256_setzero_ps();
        for a in acc {
            sum = _mm256_add_ps(sum, a);
        }
        // SAFETY: `out` holds 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
        out.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_flops_of_the_benchmark_network() {
        let spec = MlpSpec {
            sizes: vec![784, 1024, 1024, 10],
            activation: gantry_kernels::Activation::Relu,
            loss: gantry_kernels::Loss::SoftmaxCrossEntropy,
        };
        // 2 * 256 * (784*1024*2 + 1024*1024*3 + 1024*10*3) = 2.4479 GFLOP
        let f = step_gemm_flops(&spec, 256) / 1e9;
        assert!((f - 2.4479).abs() < 1e-3, "{f}");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_inner_loop_tiles_compute_what_they_claim() {
        use gantry_kernels::cpu::{Vectors, vectors};
        let close = |got: f32, want: f32| (got - want).abs() <= 1e-3 * want.abs();
        // One pass each (a tiny flop count): its flops, and C's sum against plain arithmetic.
        if vectors() >= Vectors::Avx2Fma {
            // SAFETY: the CPU has AVX2 and FMA.
            let (flops, sum) = unsafe { fma::tile_avx2::<6, 2>(1.0) };
            assert_eq!(flops, (2 * 6 * 16 * 256) as f64);
            assert!(close(sum, fma::tile_sum(6, 16)), "{sum}");
            // SAFETY: as above.
            let (_, sum) = unsafe { fma::tile_avx2::<4, 3>(1.0) };
            assert!(close(sum, fma::tile_sum(4, 24)), "{sum}");
        }
        if vectors() == Vectors::Avx512 {
            // SAFETY: the CPU has AVX-512 F.
            let (flops, sum) = unsafe { fma::tile_avx512::<12, 2>(1.0) };
            assert_eq!(flops, (2 * 12 * 32 * 256) as f64);
            assert!(close(sum, fma::tile_sum(12, 32)), "{sum}");
            // SAFETY: as above.
            let (_, sum) = unsafe { fma::tile_avx512::<14, 2>(1.0) };
            assert!(close(sum, fma::tile_sum(14, 32)), "{sum}");
        }
    }

    #[test]
    fn a_tiny_run_without_peers_reports_every_field() {
        let params = KernelParams {
            gemm: vec![(32, 2)],
            step_sizes: vec![8, 16, 4],
            step_batch: 8,
            step_reps: 2,
            threads: 1,
            python: None,
            peak_iters: 1000,
            rounds: 2,
        };
        let r = run(&params, &mut |_, _| {}).unwrap();
        assert_eq!(r.gemm.len(), 1);
        assert!(r.gemm[0].gflops > 0.0 && r.gemm[0].peer_gflops.is_none());
        assert!(r.train_step.ms > 0.0 && r.peak_gflops > 0.0);
        // The step's five GEMMs (two forward, two weight gradients, one delta), each timed.
        let shapes: Vec<&str> = r.train_step.gemms.iter().map(|g| &g.shape[..]).collect();
        assert_eq!(
            shapes,
            [
                "8x16x8 (N,N)",
                "8x4x16 (N,N)",
                "16x4x8 (T,N)",
                "8x16x4 (N,T)",
                "8x16x8 (T,N)"
            ]
        );
        assert!(
            r.train_step
                .gemms
                .iter()
                .all(|g| g.ms > 0.0 && g.gflops > 0.0)
        );
        let s = &r.train_step;
        assert!((s.gemms_ms - s.gemms.iter().map(|g| g.ms).sum::<f64>()).abs() < 1e-9);
        assert!((s.floor_ms - s.gemm_gflop / r.gemm[0].gflops * 1e3).abs() < 1e-9);
        assert!((s.of_floor - s.ms / s.floor_ms).abs() < 1e-9);
        #[cfg(target_arch = "x86_64")]
        if gantry_kernels::cpu::vectors() >= gantry_kernels::cpu::Vectors::Avx2Fma {
            let ceiling = r.l1_ceiling_gflops.expect("a vector FMA here");
            assert!(ceiling > 0.0 && r.gemm[0].of_ceiling.is_some());
        }
        assert_eq!(r.peer_note.as_deref(), Some("peers skipped (--no-peers)"));
    }
}
