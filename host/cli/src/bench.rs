//! `gantry bench schedule`: one full scheduling cycle (snapshot, decision, validation, apply)
//! through the wasm bin-packing plugin and through the native implementation of the same
//! source, side by side in one run, plus the plugin runtime's fixed costs.

pub mod api;
pub mod attack;
pub mod authoring;
pub mod cluster;
pub mod failover;
pub mod jobs;
pub mod kernels;
#[cfg(feature = "cuda")]
pub mod kernels_gpu;
pub mod policy;
pub mod preprocess;

use std::time::Instant;

use serde::Serialize;

use gantry::blocking::block_on;
use gantry::cluster::Cluster;
use gantry::scheduling::ClusterState;
use gantry::simulate::trace::{self, Synthetic};
use gantry::{Host, HostConfig, HostError, PluginSource, PluginTrust};

/// Workload of the scheduling benchmark.
#[derive(Debug, Clone, Copy)]
pub struct ScheduleParams {
    /// Racks of 8 nodes.
    pub racks: u32,
    /// GPUs per node.
    pub gpus_per_node: u32,
    /// Pending jobs.
    pub jobs: usize,
    /// Timed cycles per side (after one warm-up each).
    pub iterations: usize,
    /// Workload seed.
    pub seed: u64,
}

/// The plugin measured against the native strategy (default: the shipped `binpack`).
pub fn default_plugin() -> PluginSource {
    PluginSource::Builtin("binpack".into())
}

impl Default for ScheduleParams {
    fn default() -> Self {
        Self {
            racks: 64,
            gpus_per_node: 8,
            jobs: 10_000,
            iterations: 30,
            seed: 1,
        }
    }
}

/// Compile-time figures.
#[derive(Debug, Clone, Serialize)]
pub struct CompileTimes {
    /// Cranelift compilation with no cache.
    pub no_cache_ms: f64,
    /// Loading the cached artifact instead.
    pub cache_hit_ms: f64,
}

/// The machine a benchmark ran on, printed beside its figures: machines differ between runs
/// (AMD and Intel, 2 to many cores), and a ratio means little without them.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// The CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// Threads the FMA peak was measured on.
    pub threads: usize,
    /// f32 FMA throughput measured on `threads` threads with the widest vectors, GFLOP/s.
    pub f32_peak_gflops: f64,
}

impl Machine {
    /// This machine, its peak measured now on `threads` threads (about 0.1 s).
    pub fn measure(threads: usize) -> Machine {
        let threads = threads.max(1);
        let iters = kernels::KernelParams::default().peak_iters;
        Machine {
            cpu: kernels::cpu_model(),
            threads,
            f32_peak_gflops: kernels::fma_peak_gflops(threads, iters),
        }
    }

    /// One line for a human reader.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} thread{}; f32 FMA peak {:.0} GFLOP/s)",
            self.cpu,
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.f32_peak_gflops
        )
    }
}

/// What `gantry bench schedule --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleReport {
    /// Median cycle through the wasm plugin, ms.
    pub wasm_ms: f64,
    /// Median cycle through the native implementation, ms.
    pub native_ms: f64,
    /// `wasm_ms / native_ms`.
    pub ratio: f64,
    /// Placements made by one cycle (the same on both sides).
    pub placements: usize,
    /// Best wasm cycle, ms.
    pub wasm_min_ms: f64,
    /// Best native cycle, ms.
    pub native_min_ms: f64,
    /// The plugin's part of a wasm cycle: instantiate, lower the snapshot, run, lift the answer
    /// (median, ms).
    pub wasm_plugin_call_ms: f64,
    /// GPUs in the cluster.
    pub gpus: usize,
    /// Pending jobs.
    pub jobs: usize,
    /// Timed cycles per side.
    pub iterations: usize,
    /// Fresh instance (pooling allocator) plus `configure`, per call, µs (median).
    pub fresh_instance_us: f64,
    /// A trivial export call on a ready instance, µs (median).
    pub trivial_call_us: f64,
    /// Compile times of the plugin.
    pub compile: CompileTimes,
    /// Where it ran (a cycle runs on one thread).
    pub machine: Machine,
}

/// Runs `f` in a throwaway directory, `gantry-bench-<name>-<pid>` under the temporary one,
/// removed before (a crashed run's leftovers) and after.
fn in_scratch_dir<T>(
    name: &str,
    f: impl FnOnce(&std::path::Path) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let dir = std::env::temp_dir().join(format!("gantry-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = f(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// Runs the scheduling benchmark; `progress(done, total)` reports timed cycles.
pub fn schedule(
    params: ScheduleParams,
    plugin: &PluginSource,
    trust: &PluginTrust,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ScheduleReport, HostError> {
    let cluster = Cluster::uniform(params.racks, 8, params.gpus_per_node, 8);
    let start_state = workload(&cluster, &params);
    let mut no_cache = HostConfig::new(cluster.clone());
    no_cache.cache_dir = None;
    no_cache.trust = trust.clone();
    let (mut wasm_host, compile) = compile_times(&no_cache, plugin)?;
    let mut native_host = Host::new(no_cache)?;
    let mut sides = Sides::default();
    // Warm-up, then alternate sides so machine noise hits both alike.
    for i in 0..=params.iterations {
        sides.time_one(&mut wasm_host, &mut native_host, &start_state, i > 0)?;
        if i > 0 {
            progress(i as u64, params.iterations as u64);
        }
    }
    if *plugin == default_plugin() && sides.placements.0 != sides.placements.1 {
        return Err(HostError::Engine(format!(
            "wasm and native placed differently ({} vs {})",
            sides.placements.0, sides.placements.1
        )));
    }
    let (mut fresh, mut trivial) = fixed_costs(&wasm_host)?;
    let Sides {
        mut wasm,
        mut native,
        mut call,
        placements,
    } = sides;
    let wasm_min_ms = wasm.iter().copied().fold(f64::INFINITY, f64::min);
    let native_min_ms = native.iter().copied().fold(f64::INFINITY, f64::min);
    let wasm_ms = median(&mut wasm);
    let native_ms = median(&mut native);
    Ok(ScheduleReport {
        wasm_ms,
        native_ms,
        ratio: wasm_ms / native_ms,
        placements: placements.0,
        wasm_min_ms,
        native_min_ms,
        wasm_plugin_call_ms: median(&mut call),
        gpus: cluster.gpus.len(),
        jobs: params.jobs,
        iterations: params.iterations,
        fresh_instance_us: median(&mut fresh),
        trivial_call_us: median(&mut trivial),
        compile,
        machine: Machine::measure(1),
    })
}

/// The cluster's state with the synthetic queue of `params` enqueued.
fn workload(cluster: &Cluster, params: &ScheduleParams) -> ClusterState {
    let jobs = trace::synthetic(
        cluster,
        Synthetic {
            jobs: params.jobs,
            seed: params.seed,
            load: 0.9,
        },
    );
    let mut state = ClusterState::new(cluster.clone());
    for (i, j) in jobs.iter().enumerate() {
        let spec = j.to_spec(format!("job-{i}"));
        let tenant = cluster.tenant_index(&spec.tenant).unwrap_or(0);
        state.enqueue(spec, tenant);
    }
    state
}

/// Compile times: no cache, then a cold cache (miss), then a warm one (hit). Returns the host
/// loaded without a cache, which the timed cycles use.
fn compile_times(
    no_cache: &HostConfig,
    plugin: &PluginSource,
) -> Result<(Host, CompileTimes), HostError> {
    let mut wasm_host = Host::new(no_cache.clone())?;
    let t = Instant::now();
    wasm_host.load_scheduler(plugin)?;
    let no_cache_ms = t.elapsed().as_secs_f64() * 1e3;
    let dir = std::env::temp_dir().join(format!("gantry-bench-cache-{}", std::process::id()));
    let mut cached = no_cache.clone();
    cached.cache_dir = Some(dir.clone());
    Host::new(cached.clone())?.load_scheduler(plugin)?;
    let t = Instant::now();
    Host::new(cached)?.load_scheduler(plugin)?;
    let cache_hit_ms = t.elapsed().as_secs_f64() * 1e3;
    let _ = std::fs::remove_dir_all(&dir);
    let compile = CompileTimes {
        no_cache_ms,
        cache_hit_ms,
    };
    Ok((wasm_host, compile))
}

/// The timed cycles of both sides, ms, and the placements of the last cycle (wasm, native).
#[derive(Default)]
struct Sides {
    wasm: Vec<f64>,
    native: Vec<f64>,
    call: Vec<f64>,
    placements: (usize, usize),
}

impl Sides {
    /// One plugin call and one cycle on each side from `start`; kept when `keep` (not warm-up).
    fn time_one(
        &mut self,
        wasm_host: &mut Host,
        native_host: &mut Host,
        start: &ClusterState,
        keep: bool,
    ) -> Result<(), HostError> {
        wasm_host.replace_state(start.clone());
        let (snap, queue) = gantry::scheduling::snapshot::build(wasm_host.state(), 0.0);
        let plugin = wasm_host.scheduler().expect("loaded above");
        let t = Instant::now();
        let _ = block_on(plugin.schedule(&snap, &queue));
        let call_ms = t.elapsed().as_secs_f64() * 1e3;

        wasm_host.replace_state(start.clone());
        let t = Instant::now();
        let w = block_on(wasm_host.schedule_cycle(0.0));
        let wasm_ms = t.elapsed().as_secs_f64() * 1e3;
        native_host.replace_state(start.clone());
        let t = Instant::now();
        let n = block_on(native_host.schedule_cycle(0.0));
        let native_ms = t.elapsed().as_secs_f64() * 1e3;
        if let Some(reason) = w.fallback_reason {
            return Err(HostError::Engine(format!(
                "the wasm plugin did not decide: {reason}"
            )));
        }
        self.placements = (w.placements.len(), n.placements.len());
        if keep {
            self.wasm.push(wasm_ms);
            self.native.push(native_ms);
            self.call.push(call_ms);
        }
        Ok(())
    }
}

/// Fixed costs of the runtime: a fresh instance plus `configure`, and a trivial call (µs each).
fn fixed_costs(wasm_host: &Host) -> Result<(Vec<f64>, Vec<f64>), HostError> {
    let plugin = wasm_host.scheduler().expect("loaded above");
    let mut fresh = Vec::new();
    let mut trivial = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let mut ready =
            block_on(plugin.instantiate()).map_err(|e| HostError::Engine(e.to_string()))?;
        fresh.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        for _ in 0..100 {
            block_on(plugin.trivial_call(&mut ready))
                .map_err(|e| HostError::Engine(e.to_string()))?;
        }
        trivial.push(t.elapsed().as_secs_f64() * 1e6 / 100.0);
    }
    Ok((fresh, trivial))
}
