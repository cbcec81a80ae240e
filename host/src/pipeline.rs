//! The data path: an object in the encrypted store, decrypted as it streams, cut into record
//! batches, transformed by a pool of preprocessing workers in parallel, and handed on in order.
//!
//! ```text
//! store --decrypt--> reader --batches--> [bounded] --> worker 1..k --tensors--> [bounded] --> sink
//! ```
//!
//! Every hop is a bounded channel (tokio's, used from threads), so a slow sink stops the workers
//! and the workers stop the reader: at most `depth` batches wait per channel, whatever the
//! dataset's size. Transforms with a first pass (`observe`) get the whole stream twice.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::plugin::PluginError;
use crate::preprocess::{PreprocessPlugin, RecordBatch, Worker, add_totals, records};
use crate::storage::{Store, StoreError};

/// How the pipeline runs.
#[derive(Debug, Clone, Copy)]
pub struct PipelineConfig {
    /// Records per batch.
    pub batch_records: usize,
    /// Preprocessing workers (instances) in parallel.
    pub workers: usize,
    /// Batches each channel holds at most.
    pub depth: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            batch_records: 4096,
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            depth: 2,
        }
    }
}

/// A pipeline failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Reading the object.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A plugin call; `first_record` locates the batch (records count from 1).
    #[error("records {first_record}-{last_record}: {error}")]
    Plugin {
        /// The batch's first record.
        first_record: usize,
        /// Its last record.
        last_record: usize,
        /// What the plugin or the sandbox said.
        error: PluginError,
    },
    /// Reading or authenticating the dataset as it streamed.
    #[error("reading the dataset: {0}")]
    Read(std::io::Error),
    /// Starting a worker.
    #[error(transparent)]
    Worker(PluginError),
    /// The sink refused a tensor.
    #[error("{0}")]
    Sink(String),
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PipelineStats {
    /// Records transformed.
    pub records: usize,
    /// Batches transformed.
    pub batches: usize,
    /// Bytes of records read (per pass).
    pub bytes: usize,
    /// Whether the plugin asked for a first pass.
    pub two_passes: bool,
    /// Most batches alive at once (read but not yet consumed by the sink): bounded by the
    /// channel depths and the worker count, never by the dataset.
    pub max_in_flight: usize,
}

/// Longest record a dataset may hold, in bytes (its newline not counted). A record is read
/// whole before it goes to a plugin, so without a bound one line without a newline (a 20 GB
/// object, or a stream that never ends) was read into the host's memory entire.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// Most record bytes in one batch: a batch is cut before it grows past this (a record alone
/// may reach [`MAX_RECORD_BYTES`]), so the reader's memory is bounded whatever the records'
/// sizes and the batch's record count, and offsets stay far inside `u32`.
pub const MAX_BATCH_BYTES: usize = 16 << 20;

/// Reads the next record into `line` (its newline stripped): `Ok(false)` at the end of the
/// stream, an `InvalidData` error naming record `number` (counted from 1) when it is longer
/// than [`MAX_RECORD_BYTES`]. Reads at most one byte past the limit.
fn read_record(
    input: &mut impl BufRead,
    line: &mut Vec<u8>,
    number: usize,
    bytes: &mut usize,
) -> std::io::Result<bool> {
    line.clear();
    let n = input
        .by_ref()
        .take(MAX_RECORD_BYTES as u64 + 1)
        .read_until(b'\n', line)?;
    *bytes += n;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    if line.len() > MAX_RECORD_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "record {number} is longer than {MAX_RECORD_BYTES} bytes, the most a record may \
                 hold (is the file newline-separated?)"
            ),
        ));
    }
    Ok(n > 0)
}

/// Cuts a stream of newline-separated records into batches of at most `batch_records`
/// records and [`MAX_BATCH_BYTES`] bytes and sends them numbered, stopping (without error)
/// when the receivers are gone.
fn read_batches(
    input: impl Read,
    batch_records: usize,
    senders: &[mpsc::Sender<(usize, RecordBatch)>],
    in_flight: &InFlight,
) -> std::io::Result<(usize, usize)> {
    let mut input = BufReader::with_capacity(1 << 20, input);
    let (mut seq, mut bytes, mut records) = (0usize, 0usize, 0usize);
    let mut line = Vec::new();
    // Whether `line` holds a record read but left for the next batch.
    let mut held = false;
    loop {
        let mut batch = RecordBatch {
            data: Vec::new(),
            offsets: vec![0],
        };
        while batch.offsets.len() <= batch_records {
            if !held {
                if !read_record(&mut input, &mut line, records + 1, &mut bytes)? {
                    break;
                }
                records += 1;
            }
            held = batch.offsets.len() > 1 && batch.data.len() + line.len() > MAX_BATCH_BYTES;
            if held {
                break;
            }
            batch.data.extend_from_slice(&line);
            batch.offsets.push(batch.data.len() as u32);
        }
        if batch.offsets.len() == 1 {
            return Ok((seq, bytes));
        }
        in_flight.enter();
        if senders[seq % senders.len()]
            .blocking_send((seq, batch))
            .is_err()
        {
            // A worker failed and the run is ending; its error is reported by the caller.
            return Ok((seq, bytes));
        }
        seq += 1;
    }
}

/// Counts batches between the reader and the sink.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl InFlight {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One pass: batches from `open()` through `call` on every worker, results to `sink` in batch
/// order. Returns (batches, records, bytes).
fn pass<T: Send>(
    open: &(dyn Fn() -> Result<Box<dyn Read + Send>, StoreError> + Sync),
    config: PipelineConfig,
    workers: &mut [Worker<'_>],
    call: &(dyn Fn(&mut Worker<'_>, &RecordBatch) -> Result<T, PluginError> + Sync),
    sink: &mut dyn FnMut(usize, T) -> Result<(), String>,
    in_flight: &InFlight,
) -> Result<(usize, usize, usize), PipelineError> {
    let input = open()?;
    let depth = config.depth.max(1);
    let mut to_workers = Vec::new();
    let mut from_reader = Vec::new();
    for _ in 0..workers.len() {
        let (tx, rx) = mpsc::channel::<(usize, RecordBatch)>(depth);
        to_workers.push(tx);
        from_reader.push(rx);
    }
    let (done_tx, mut done_rx) = mpsc::channel::<(usize, Result<(usize, T), PipelineError>)>(depth);
    std::thread::scope(|s| {
        let reader =
            s.spawn(move || read_batches(input, config.batch_records, &to_workers, in_flight));
        for (worker, mut rx) in workers.iter_mut().zip(from_reader) {
            let done = done_tx.clone();
            s.spawn(move || {
                while let Some((seq, batch)) = rx.blocking_recv() {
                    let n = records(&batch);
                    let result = call(worker, &batch).map(|t| (n, t)).map_err(|error| {
                        PipelineError::Plugin {
                            first_record: seq * config.batch_records + 1,
                            last_record: seq * config.batch_records + n,
                            error,
                        }
                    });
                    let failed = result.is_err();
                    if done.blocking_send((seq, result)).is_err() || failed {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        // The sink: results back in batch order, holding at most what the workers have done
        // ahead of the next expected batch.
        let mut pending = BTreeMap::new();
        let (mut next, mut records_done) = (0usize, 0usize);
        let mut failure = None;
        while let Some((seq, result)) = done_rx.blocking_recv() {
            match result {
                Ok(r) => {
                    pending.insert(seq, r);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            while let Some((n, t)) = pending.remove(&next) {
                in_flight.leave();
                records_done += n;
                if let Err(m) = sink(next, t) {
                    failure = Some(PipelineError::Sink(m));
                    break;
                }
                next += 1;
            }
            if failure.is_some() {
                break;
            }
        }
        // Unblock everyone before joining: dropping the receiver ends the workers' sends, which
        // ends their receives, which ends the reader's sends.
        drop(done_rx);
        let read = reader.join().expect("reader thread");
        if let Some(e) = failure {
            return Err(e);
        }
        let (batches, bytes) = read.map_err(PipelineError::Read)?;
        Ok((batches, records_done, bytes))
    })
}

/// Streams object `id` of `store` through `plugin` (first pass if it asks for one), handing
/// each batch's tensor to `sink` in order.
pub fn run_object(
    store: &Store,
    id: &str,
    plugin: &PreprocessPlugin,
    config: PipelineConfig,
    sink: &mut dyn FnMut(crate::bindings::pre_v0_1::Tensor) -> Result<(), String>,
) -> Result<PipelineStats, PipelineError> {
    let open = || -> Result<Box<dyn Read + Send>, StoreError> { Ok(Box::new(store.reader(id)?)) };
    run(&open, plugin, config, sink)
}

/// [`run_object`] over any re-openable byte stream.
pub fn run(
    open: &(dyn Fn() -> Result<Box<dyn Read + Send>, StoreError> + Sync),
    plugin: &PreprocessPlugin,
    config: PipelineConfig,
    sink: &mut dyn FnMut(crate::bindings::pre_v0_1::Tensor) -> Result<(), String>,
) -> Result<PipelineStats, PipelineError> {
    let span = tracing::info_span!("gantry_pipeline.run", plugin = plugin.name());
    let _entered = span.enter();
    let mut workers = (0..config.workers.max(1))
        .map(|_| plugin.worker_blocking())
        .collect::<Result<Vec<_>, _>>()
        .map_err(PipelineError::Worker)?;
    let in_flight = InFlight::default();

    // The first pass, if the plugin learns from the data: partial sums added in batch order
    // (so the totals do not depend on which worker finished first).
    let mut totals: Vec<f64> = Vec::new();
    let mut two_passes = false;
    let probe = {
        let mut first = Vec::new();
        let read = read_record(&mut BufReader::new(open()?), &mut first, 1, &mut 0)
            .map_err(PipelineError::Read)?;
        if read {
            let batch = RecordBatch {
                offsets: vec![0, first.len() as u32],
                data: first,
            };
            workers[0]
                .observe_blocking(&batch)
                .map_err(PipelineError::Worker)?
        } else {
            Vec::new()
        }
    };
    if !probe.is_empty() {
        two_passes = true;
        let mut sum_error = None;
        pass(
            open,
            config,
            &mut workers,
            &|w, b| w.observe_blocking(b),
            &mut |_, partial: Vec<f64>| {
                add_totals(plugin.name(), &mut totals, &partial).map_err(|e| {
                    let m = e.to_string();
                    sum_error = Some(e);
                    m
                })
            },
            &in_flight,
        )?;
        if let Some(e) = sum_error {
            return Err(PipelineError::Worker(e));
        }
    }
    for w in &mut workers {
        w.prepare_blocking(&totals).map_err(PipelineError::Worker)?;
    }
    let (batches, records, bytes) = pass(
        open,
        config,
        &mut workers,
        &|w, b| w.process_blocking(b),
        &mut |_, t| sink(t),
        &in_flight,
    )?;
    Ok(PipelineStats {
        records,
        batches,
        bytes,
        two_passes,
        max_in_flight: in_flight.max.load(Ordering::SeqCst),
    })
}

/// A seeded CSV dataset: `rows` lines of `columns` decimal numbers with 4-6 decimals.
pub fn synthetic_csv(rows: usize, columns: usize, seed: u64) -> Vec<u8> {
    use std::io::Write;
    let mut rng = gantry_kernels::rng::Rng::new(seed, 0xC5F);
    let mut out = Vec::with_capacity(rows * columns * 10);
    for _ in 0..rows {
        for c in 0..columns {
            if c > 0 {
                out.push(b',');
            }
            let v = rng.normal() * (c as f32 + 1.0) + c as f32;
            let _ = write!(out, "{v:.5}");
        }
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests;
