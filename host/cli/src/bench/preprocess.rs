//! `gantry bench preprocess`: the shipped `standardize` plugin in the sandbox against the same
//! crate compiled natively (`gantry_plugin_standardize::zscore`), on the same batches, in the
//! same run, both sides with one worker per thread: the first pass (`observe`, summed), then
//! `prepare`, then the `process` pass. MB/s counts the dataset's bytes once per full run.

use std::time::Instant;

use serde::Serialize;

use gantry::plugin::{self, ArtifactCache, Call, Fault, PluginError};
use gantry::preprocess::{PreprocessPlugin, RecordBatch, add_totals, line_batches};

use gantry_plugin_standardize::zscore;

/// Workload of the preprocessing benchmark.
#[derive(Debug, Clone, Copy)]
pub struct PreprocessParams {
    /// CSV rows in the generated dataset.
    pub rows: usize,
    /// Numeric columns per row.
    pub columns: usize,
    /// Records per batch.
    pub batch: usize,
    /// Worker threads per side.
    pub threads: usize,
    /// Timed runs per side (the median is reported).
    pub runs: usize,
}

impl Default for PreprocessParams {
    fn default() -> Self {
        Self {
            rows: 400_000,
            columns: 16,
            batch: 4096,
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            runs: 5,
        }
    }
}

/// What `gantry bench preprocess --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct PreprocessReport {
    /// Through the wasm plugin, MB/s (10^6 bytes of CSV per second, both passes).
    pub wasm_mb_s: f64,
    /// The same source compiled natively, MB/s.
    pub native_mb_s: f64,
    /// `native_mb_s / wasm_mb_s`.
    pub ratio: f64,
    /// Dataset size, MB.
    pub dataset_mb: f64,
    /// Worker threads per side.
    pub threads: usize,
    /// Records per batch.
    pub batch: usize,
    /// Largest difference between the two sides' outputs (they should be identical).
    pub max_abs_difference: f32,
    /// Where it ran.
    pub machine: super::Machine,
}

/// Splits `batches` over `threads` workers (batch `i` to worker `i % threads`).
fn shares(batches: &[RecordBatch], threads: usize) -> Vec<Vec<&RecordBatch>> {
    let mut shares = vec![Vec::new(); threads];
    for (i, b) in batches.iter().enumerate() {
        shares[i % threads].push(b);
    }
    shares
}

/// Runs the benchmark.
pub fn run(params: PreprocessParams) -> Result<PreprocessReport, PluginError> {
    let text = gantry::pipeline::synthetic_csv(params.rows, params.columns, 1);
    let batches = line_batches(&text, params.batch);
    let threads = params.threads.max(1);
    let setup = |message: String| {
        PluginError::new(
            "standardize",
            Call::Instantiate,
            Fault::Instantiate { message },
        )
    };
    let engine = gantry::engine::build().map_err(|e| setup(format!("{e:#}")))?;
    let linker = plugin::base_linker(&engine).map_err(|e| setup(format!("{e:#}")))?;
    let cache = ArtifactCache::new(&engine, None);
    let plugin = PreprocessPlugin::builtin(&engine, &linker, &cache, "standardize")
        .map_err(|e| setup(e.to_string()))?;

    let (mut wasm_times, mut native_times) = (Vec::new(), Vec::new());
    let (mut wasm_out, mut native_out) = (Vec::new(), Vec::new());
    // Alternate the sides so drift on a shared machine hits both alike.
    for _ in 0..params.runs.max(1) {
        let t = Instant::now();
        wasm_out = wasm_pass(&plugin, &batches, threads)?;
        wasm_times.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        native_out = native_pass(&batches, threads).map_err(|message| {
            PluginError::new(
                "standardize (native)",
                Call::Process,
                Fault::Guest {
                    kind: "invalid-input",
                    message,
                },
            )
        })?;
        native_times.push(t.elapsed().as_secs_f64());
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mb = text.len() as f64 / 1e6;
    let (wasm_mb_s, native_mb_s) = (mb / median(wasm_times), mb / median(native_times));
    let max_abs_difference = wasm_out
        .iter()
        .zip(&native_out)
        .map(|(a, b)| (a - b).abs())
        .fold(
            if wasm_out.len() == native_out.len() {
                0.0
            } else {
                f32::INFINITY
            },
            f32::max,
        );
    Ok(PreprocessReport {
        wasm_mb_s,
        native_mb_s,
        ratio: native_mb_s / wasm_mb_s,
        dataset_mb: mb,
        threads,
        batch: params.batch,
        max_abs_difference,
        machine: super::Machine::measure(threads),
    })
}

/// What one side does per worker: the three calls of a two-pass transform.
trait Side: Send {
    type Error: Send;
    fn observe(&mut self, batch: &RecordBatch) -> Result<Vec<f64>, Self::Error>;
    fn prepare(&mut self, totals: &[f64]) -> Result<(), Self::Error>;
    fn process(&mut self, batch: &RecordBatch) -> Result<Vec<f32>, Self::Error>;
}

impl Side for gantry::preprocess::Worker<'_> {
    type Error = PluginError;
    fn observe(&mut self, batch: &RecordBatch) -> Result<Vec<f64>, PluginError> {
        self.observe_blocking(batch)
    }
    fn prepare(&mut self, totals: &[f64]) -> Result<(), PluginError> {
        self.prepare_blocking(totals)
    }
    fn process(&mut self, batch: &RecordBatch) -> Result<Vec<f32>, PluginError> {
        self.process_blocking(batch).map(|t| t.data)
    }
}

/// The same source, natively.
#[derive(Default)]
struct Native {
    columns: usize,
    stats: zscore::Stats,
}

impl Side for Native {
    type Error = String;
    fn observe(&mut self, b: &RecordBatch) -> Result<Vec<f64>, String> {
        zscore::observe(&b.data, &b.offsets, b',', &mut self.columns)
    }
    fn prepare(&mut self, totals: &[f64]) -> Result<(), String> {
        self.stats = zscore::prepare(totals)?;
        Ok(())
    }
    fn process(&mut self, b: &RecordBatch) -> Result<Vec<f32>, String> {
        let mut out = Vec::new();
        zscore::process(&b.data, &b.offsets, b',', &self.stats, &mut out)?;
        Ok(out)
    }
}

/// Both passes with one worker per thread (batch `i` to worker `i % workers`), partial sums
/// added in batch order; returns every output value in batch order.
fn two_passes<S: Side>(
    workers: &mut [S],
    batches: &[RecordBatch],
    wrong_length: impl Fn(String) -> S::Error,
) -> Result<Vec<f32>, S::Error> {
    let threads = workers.len();
    let shares = shares(batches, threads);
    let partials: Vec<Result<Vec<Vec<f64>>, S::Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .iter_mut()
            .zip(&shares)
            .map(|(w, share)| s.spawn(move || share.iter().map(|b| w.observe(b)).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker thread"))
            .collect()
    });
    let partials = partials.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut totals = Vec::new();
    for i in 0..batches.len() {
        add_totals(
            "standardize",
            &mut totals,
            &partials[i % threads][i / threads],
        )
        .map_err(|e| wrong_length(e.to_string()))?;
    }
    let outputs: Vec<Result<Vec<Vec<f32>>, S::Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .iter_mut()
            .zip(&shares)
            .map(|(w, share)| {
                let totals = &totals;
                s.spawn(move || {
                    w.prepare(totals)?;
                    share.iter().map(|b| w.process(b)).collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker thread"))
            .collect()
    });
    let outputs = outputs.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok((0..batches.len())
        .flat_map(|i| outputs[i % threads][i / threads].iter().copied())
        .collect())
}

/// Both passes through the sandbox.
fn wasm_pass(
    plugin: &PreprocessPlugin,
    batches: &[RecordBatch],
    threads: usize,
) -> Result<Vec<f32>, PluginError> {
    let mut workers = (0..threads)
        .map(|_| plugin.worker_blocking())
        .collect::<Result<Vec<_>, _>>()?;
    two_passes(&mut workers, batches, |reason| {
        PluginError::new(
            plugin.name(),
            Call::Process,
            Fault::MalformedOutput { reason },
        )
    })
}

/// Both passes natively, with the same split.
fn native_pass(batches: &[RecordBatch], threads: usize) -> Result<Vec<f32>, String> {
    let mut workers: Vec<Native> = (0..threads).map(|_| Native::default()).collect();
    two_passes(&mut workers, batches, |m| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_agree_on_a_small_dataset() {
        let r = run(PreprocessParams {
            rows: 3000,
            columns: 4,
            batch: 256,
            threads: 2,
            runs: 1,
        })
        .unwrap();
        assert_eq!(r.max_abs_difference, 0.0, "{r:?}");
        assert!(r.wasm_mb_s > 0.0 && r.native_mb_s > 0.0);
    }
}
