//! Preprocessing plugins (`gantry:preprocess/preprocess`): record batches in, f32 tensors out.
//!
//! A [`PreprocessPlugin`] is compiled and pre-instantiated once; each [`Worker`] is one
//! configured instance, fed batch after batch (so a transform keeps what `prepare` taught it).
//! Every call runs under the manifest's deadline and memory cap; a worker whose call trapped,
//! overran or answered malformed data is spent and refuses further calls, and the plugin's
//! other workers are unaffected.
//!
//! Deadlines count the engine's epochs, which advance for as long as the engine lives (see
//! [`crate::engine`]).

use std::sync::Arc;

use tracing::Instrument;
use wasmtime::component::Linker;
use wasmtime::{Engine, Store};

use crate::bindings::pre_v0_1::{Batch, Preprocess, PreprocessPre, Tensor};
use crate::bindings::scheduler::gantry::host::types::{ConfigEntry, PluginError as GuestError};
use crate::plugin::{
    self, ArtifactCache, CacheOutcome, Call, CallEnv, Fault, LoadError, Manifest, OutputBudget,
    PluginError, PluginKind, PluginState,
};

/// Packed records, as they cross into a plugin: record `i` is `data[offsets[i]..offsets[i+1]]`.
pub type RecordBatch = Batch;

/// Splits `text` into batches of at most `records` lines each (a trailing newline ends the
/// last line; empty lines are records too, except one at the very end).
pub fn line_batches(text: &[u8], records: usize) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    let mut current = RecordBatch {
        data: Vec::new(),
        offsets: vec![0],
    };
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    if body.is_empty() {
        return batches;
    }
    for line in body.split(|&b| b == b'\n') {
        current.data.extend_from_slice(line);
        current.offsets.push(current.data.len() as u32);
        if current.offsets.len() > records {
            batches.push(std::mem::replace(
                &mut current,
                RecordBatch {
                    data: Vec::new(),
                    offsets: vec![0],
                },
            ));
        }
    }
    if current.offsets.len() > 1 {
        batches.push(current);
    }
    batches
}

/// The records in a batch.
pub fn records(batch: &RecordBatch) -> usize {
    batch.offsets.len().saturating_sub(1)
}

/// A loaded preprocessing plugin.
pub struct PreprocessPlugin {
    name: Arc<str>,
    manifest: Manifest,
    wasm_sha256: String,
    cache: CacheOutcome,
    engine: Engine,
    pre: PreprocessPre<PluginState>,
    config: Vec<ConfigEntry>,
    /// The output allowance all its workers share.
    output: Arc<OutputBudget>,
}

impl std::fmt::Debug for PreprocessPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        plugin::debug(
            f,
            "PreprocessPlugin",
            &self.name,
            &self.manifest,
            &self.wasm_sha256,
        )
    }
}

impl PreprocessPlugin {
    /// Compiles (or loads from cache) and links the component `wasm` described by `manifest`. No
    /// trust check happens here: crate-private, reached through [`crate::Host`]'s loaders (which
    /// check first) and [`Self::builtin`] (shipped plugins, part of the binary).
    pub(crate) fn load(
        engine: &Engine,
        linker: &Linker<PluginState>,
        cache: &ArtifactCache,
        manifest: Manifest,
        wasm: &[u8],
        origin: &std::path::Path,
    ) -> Result<Self, LoadError> {
        let (compiled, pre) = plugin::link(
            engine,
            linker,
            cache,
            manifest,
            wasm,
            origin,
            PluginKind::Preprocess,
            PreprocessPre::new,
        )?;
        let config = compiled
            .manifest
            .config_entries()
            .into_iter()
            .map(|(key, value)| ConfigEntry { key, value })
            .collect();
        Ok(Self {
            name: compiled.name,
            manifest: compiled.manifest,
            wasm_sha256: compiled.wasm_sha256,
            cache: compiled.cache,
            engine: engine.clone(),
            pre,
            config,
            output: Arc::default(),
        })
    }

    /// A shipped plugin (see [`crate::builtin::PREPROCESSORS`]) on `engine`.
    pub fn builtin(
        engine: &Engine,
        linker: &Linker<PluginState>,
        cache: &ArtifactCache,
        name: &str,
    ) -> Result<Self, LoadError> {
        let b = crate::builtin::preprocessor(name).ok_or_else(|| LoadError::Manifest {
            path: name.into(),
            message: format!("no shipped preprocess plugin `{name}`"),
        })?;
        let origin = std::path::PathBuf::from(format!("<builtin {name}>"));
        let manifest = Manifest::parse(b.manifest, &origin)?;
        Self::load(engine, linker, cache, manifest, b.wasm, &origin)
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hex SHA-256 of the component.
    pub fn wasm_sha256(&self) -> &str {
        &self.wasm_sha256
    }

    /// Overrides (or adds) one `[config]` entry for workers started from now on; the plugin
    /// checks it when a worker is configured.
    pub fn set_config(&mut self, key: &str, value: &str) {
        match self.config.iter_mut().find(|e| e.key == key) {
            Some(e) => e.value = value.to_string(),
            None => self.config.push(ConfigEntry {
                key: key.to_string(),
                value: value.to_string(),
            }),
        }
    }

    /// Whether the compiled form came from the on-disk cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }

    /// A new configured instance.
    pub async fn worker(&self) -> Result<Worker<'_>, PluginError> {
        let span = tracing::debug_span!("gantry_preprocess.instantiate", plugin = %self.name);
        let configured = async {
            // A preprocessing call's clock reads the epoch and its randomness is seeded by the
            // plugin's name: a transform's output depends on its input only.
            let env = CallEnv::default();
            env.set(0.0, plugin::env::seed_of(&[self.name.as_bytes()]));
            let limits = &self.manifest.limits;
            let mut store = plugin::new_store(&self.engine, &self.name, limits, &self.output, env);
            let bindings = match self.pre.instantiate_async(&mut store).await {
                Ok(b) => b,
                Err(e) if store.data().limit_exceeded() => {
                    return Err(self.fail(Call::Instantiate, &store, e));
                }
                Err(e) => {
                    return Err(PluginError::new(
                        self.name.as_ref(),
                        Call::Instantiate,
                        Fault::Instantiate {
                            message: Fault::text(format!("{e:#}")),
                        },
                    ));
                }
            };
            plugin::arm_deadline(&mut store, self.manifest.limits.deadline_ms);
            let result = bindings
                .gantry_preprocess_transform()
                .call_configure(&mut store, &self.config)
                .await;
            let result = match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(plugin::guest_error(&self.name, Call::Configure, e)),
                Err(e) => Err(self.fail(Call::Configure, &store, e)),
            };
            store.data_mut().end_call();
            result.map(|()| (store, bindings))
        };
        let limits = &self.manifest.limits;
        let (store, bindings) =
            plugin::driver::within_deadline(&self.name, Call::Configure, limits, configured)
                .instrument(span)
                .await?;
        Ok(Worker {
            plugin: self,
            ready: Some((store, bindings)),
        })
    }

    /// [`Self::worker`] from synchronous code.
    pub fn worker_blocking(&self) -> Result<Worker<'_>, PluginError> {
        crate::blocking::block_on(self.worker())
    }

    fn fail(&self, call: Call, store: &Store<PluginState>, err: wasmtime::Error) -> PluginError {
        plugin::classify(&self.name, call, &self.manifest.limits, store.data(), err)
    }

    /// What its output allowance dropped so far (log events and output lines).
    pub fn output_dropped(&self) -> plugin::output::Dropped {
        self.output.dropped()
    }
}

/// One configured instance of a preprocessing plugin.
pub struct Worker<'p> {
    plugin: &'p PreprocessPlugin,
    /// `None` once a call failed in a way that may have left the instance inconsistent.
    ready: Option<(Store<PluginState>, Preprocess)>,
}

/// What a guest call yields before classification: the timeout's verdict around wasmtime's
/// result around the guest's own.
type Raw<T> = Result<wasmtime::Result<Result<T, GuestError>>, tokio::time::error::Elapsed>;

impl Worker<'_> {
    /// The instance, armed for one call; an error if an earlier call spent it.
    fn take(&mut self) -> Result<(Store<PluginState>, Preprocess), PluginError> {
        let (mut store, bindings) = self.ready.take().ok_or_else(|| {
            PluginError::new(
                self.plugin.name.as_ref(),
                Call::Instantiate,
                Fault::Instantiate {
                    message: "this worker failed earlier; start a new one".into(),
                },
            )
        })?;
        plugin::arm_deadline(&mut store, self.plugin.manifest.limits.deadline_ms);
        Ok((store, bindings))
    }

    fn deadline(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.plugin.manifest.limits.deadline_ms)
    }

    /// Classifies a call's outcome; the instance is kept unless wasm trapped, overran or
    /// answered something the canonical ABI refused.
    fn settle<T>(
        &mut self,
        call: Call,
        mut store: Store<PluginState>,
        bindings: Preprocess,
        raw: Raw<T>,
    ) -> Result<T, PluginError> {
        let plugin = self.plugin;
        let (result, keep) = match raw {
            Ok(Ok(Ok(value))) => (Ok(value), true),
            // The guest said no: its state is its own and consistent.
            Ok(Ok(Err(e))) => (Err(plugin::guest_error(&plugin.name, call, e)), true),
            Ok(Err(e)) => (Err(plugin.fail(call, &store, e)), false),
            Err(_elapsed) => (
                Err(PluginError::new(
                    plugin.name.as_ref(),
                    call,
                    Fault::Deadline {
                        limit_ms: plugin.manifest.limits.deadline_ms,
                    },
                )),
                false,
            ),
        };
        store.data_mut().end_call();
        if keep {
            self.ready = Some((store, bindings));
        }
        result
    }

    /// First-pass statistics of one batch (empty: the plugin learns nothing).
    pub async fn observe(&mut self, batch: &RecordBatch) -> Result<Vec<f64>, PluginError> {
        let (mut store, bindings) = self.take()?;
        let span = tracing::debug_span!("gantry_preprocess.observe", plugin = %self.plugin.name);
        let call = bindings
            .gantry_preprocess_transform()
            .call_observe(&mut store, batch);
        let raw = tokio::time::timeout(self.deadline(), call.instrument(span)).await;
        self.settle(Call::Observe, store, bindings, raw)
    }

    /// Hands the first pass's totals to the instance.
    pub async fn prepare(&mut self, totals: &[f64]) -> Result<(), PluginError> {
        let (mut store, bindings) = self.take()?;
        let span = tracing::debug_span!("gantry_preprocess.prepare", plugin = %self.plugin.name);
        let call = bindings
            .gantry_preprocess_transform()
            .call_prepare(&mut store, totals);
        let raw = tokio::time::timeout(self.deadline(), call.instrument(span)).await;
        self.settle(Call::Prepare, store, bindings, raw)
    }

    /// Transforms one batch; the tensor is checked (shape against data, first dimension against
    /// the record count) before it is returned.
    pub async fn process(&mut self, batch: &RecordBatch) -> Result<Tensor, PluginError> {
        let (mut store, bindings) = self.take()?;
        let span = tracing::debug_span!("gantry_preprocess.process", plugin = %self.plugin.name);
        let call = bindings
            .gantry_preprocess_transform()
            .call_process(&mut store, batch);
        let raw = tokio::time::timeout(self.deadline(), call.instrument(span)).await;
        let tensor = self.settle(Call::Process, store, bindings, raw)?;
        if let Some(reason) = tensor_fault(&tensor.shape, &tensor.data, records(batch)) {
            return Err(PluginError::new(
                self.plugin.name.as_ref(),
                Call::Process,
                Fault::MalformedOutput { reason },
            ));
        }
        Ok(tensor)
    }

    /// [`Self::observe`] from synchronous code.
    pub fn observe_blocking(&mut self, batch: &RecordBatch) -> Result<Vec<f64>, PluginError> {
        crate::blocking::block_on(self.observe(batch))
    }

    /// [`Self::prepare`] from synchronous code.
    pub fn prepare_blocking(&mut self, totals: &[f64]) -> Result<(), PluginError> {
        crate::blocking::block_on(self.prepare(totals))
    }

    /// [`Self::process`] from synchronous code.
    pub fn process_blocking(&mut self, batch: &RecordBatch) -> Result<Tensor, PluginError> {
        crate::blocking::block_on(self.process(batch))
    }
}

/// Why a tensor that `process` returned for `records` records is malformed, if it is: its
/// shape must account for its data exactly, its first dimension must be the record count, and
/// every value must be finite (the CSV path refuses non-finite numbers; a plugin's output may
/// not smuggle them in).
pub fn tensor_fault(shape: &[u32], data: &[f32], records: usize) -> Option<String> {
    let values = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d as usize));
    if values != Some(data.len()) {
        return Some(format!(
            "tensor of shape {shape:?} holds {} values",
            data.len()
        ));
    }
    if shape.first().map(|&d| d as usize) != Some(records) {
        return Some(format!("tensor of shape {shape:?} for {records} records"));
    }
    let i = first_non_finite(data)?;
    Some(format!(
        "tensor value {i} is {}, not a finite number",
        data[i]
    ))
}

/// The index of `data`'s first value that is not finite. Every tensor a plugin returns is read
/// whole here, so it is read in blocks the compiler vectorizes, with no early exit inside a
/// block; a value-by-value search cost 1 % of a preprocessing run's time.
pub(crate) fn first_non_finite(data: &[f32]) -> Option<usize> {
    const BLOCK: usize = 256;
    for (b, block) in data.chunks(BLOCK).enumerate() {
        if block.iter().fold(false, |bad, v| bad | !v.is_finite()) {
            return block
                .iter()
                .position(|v| !v.is_finite())
                .map(|i| b * BLOCK + i);
        }
    }
    None
}

/// Adds `partial` into `totals` element by element (the first pass's reduction); a length
/// mismatch is the plugin's malformed output.
pub fn add_totals(plugin: &str, totals: &mut Vec<f64>, partial: &[f64]) -> Result<(), PluginError> {
    if totals.is_empty() {
        totals.extend_from_slice(partial);
        return Ok(());
    }
    if totals.len() != partial.len() {
        return Err(PluginError::new(
            plugin,
            Call::Observe,
            Fault::MalformedOutput {
                reason: format!(
                    "observe returned {} values after {} before",
                    partial.len(),
                    totals.len()
                ),
            },
        ));
    }
    for (t, p) in totals.iter_mut().zip(partial) {
        *t += p;
    }
    Ok(())
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests;
