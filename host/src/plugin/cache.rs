//! On-disk cache of compiled components, so a restart does not recompile.
//!
//! The key is the SHA-256 of the wasm bytes plus a digest of the engine's compatibility hash
//! (wasmtime version, target, compiler settings): a different engine never loads a stale
//! artifact. Entries are written to a temporary file and renamed into place, so a crash never
//! leaves a torn artifact behind; an unreadable entry is recompiled and overwritten.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;

use ring::digest::{Context, SHA256};

use super::compile::CompileLimits;
use wasmtime::Engine;
use wasmtime::component::Component;

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheOutcome {
    /// Loaded from a cached artifact.
    Hit,
    /// Compiled and written to the cache.
    Miss,
    /// Compiled; caching is off.
    Disabled,
}

/// The compiled-artifact cache of one host; what is not cached yet is compiled within its
/// [`CompileLimits`] (see [`super::compile`]).
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: Option<PathBuf>,
    engine_key: String,
    limits: CompileLimits,
}

/// Feeds `Hash` output into SHA-256 so the key is stable across processes.
struct DigestHasher(Context);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&SHA256, bytes).as_ref())
}

impl ArtifactCache {
    /// A cache in `dir` (created on first write), or none.
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> Self {
        let mut hasher = DigestHasher(Context::new(&SHA256));
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex(&hasher.0.finish().as_ref()[..8]);
        Self {
            dir,
            engine_key,
            limits: CompileLimits::trusted(),
        }
    }

    /// The same cache, compiling within `limits` (the default: [`CompileLimits::trusted`]).
    pub fn with_compile_limits(mut self, limits: CompileLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Compiles `wasm` within the limits: measured first, then compiled behind the process's
    /// compile slot, waited for at most the timeout.
    fn compile<A: Artifact>(&self, engine: &Engine, wasm: &[u8]) -> wasmtime::Result<A> {
        super::compile::check(wasm, &self.limits)
            .map_err(|e| wasmtime::format_err!("refused before compiling: {e}"))?;
        let (engine, wasm) = (engine.clone(), wasm.to_vec());
        super::compile::bounded(self.limits.timeout, move || A::compile(&engine, &wasm))
    }

    /// Removes temporaries a crashed write left in the cache directory (those older than
    /// [`STALE_TEMPORARY`]); returns how many.
    pub fn sweep(&self) -> std::io::Result<usize> {
        match &self.dir {
            Some(d) => Ok(crate::durable::sweep(d, STALE_TEMPORARY)?.len()),
            None => Ok(0),
        }
    }

    /// The directory, when caching is on.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn entry(&self, wasm_sha256: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{wasm_sha256}-{}.cwasm", self.engine_key)))
    }

    /// Loads the compiled form of `wasm` from the cache, or compiles it (and caches the result).
    /// A cached entry that cannot be loaded is recompiled and replaced.
    pub fn load_or_compile<A: Artifact>(
        &self,
        engine: &Engine,
        wasm: &[u8],
        wasm_sha256: &str,
    ) -> wasmtime::Result<(A, CacheOutcome)> {
        let Some(path) = self.entry(wasm_sha256) else {
            return Ok((self.compile(engine, wasm)?, CacheOutcome::Disabled));
        };
        if path.exists() {
            // SAFETY: the file was written by `store` below from `serialize` of this engine
            // configuration (the engine key is in its name); a truncated or foreign file fails
            // the header checks and is recompiled.
            match unsafe { A::deserialize_file(engine, &path) } {
                Ok(artifact) => return Ok((artifact, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "recompiling: cached artifact unusable: {e}")
                }
            }
        }
        let start = Instant::now();
        let artifact: A = self.compile(engine, wasm)?;
        tracing::debug!(
            elapsed_ms = start.elapsed().as_millis() as u64,
            kind = A::KIND,
            "compiled"
        );
        if let Err(e) = store(&path, &artifact.serialize()?) {
            tracing::warn!(path = %path.display(), "cannot write compiled artifact: {e}");
        }
        Ok((artifact, CacheOutcome::Miss))
    }
}

/// What the cache holds: a compiled component (plugins) or core module (policies).
pub trait Artifact: Sized + Send + 'static {
    /// Short name for logs.
    const KIND: &'static str;
    /// Compiles `wasm`.
    fn compile(engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Self>;
    /// Loads a serialized artifact.
    ///
    /// # Safety
    /// `path` must hold the output of [`Artifact::serialize`] for a compatible engine.
    unsafe fn deserialize_file(engine: &Engine, path: &Path) -> wasmtime::Result<Self>;
    /// The artifact's serialized form.
    fn serialize(&self) -> wasmtime::Result<Vec<u8>>;
}

impl Artifact for Component {
    const KIND: &'static str = "component";
    fn compile(engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Self> {
        Component::new(engine, wasm)
    }
    unsafe fn deserialize_file(engine: &Engine, path: &Path) -> wasmtime::Result<Self> {
        // SAFETY: forwarded contract.
        unsafe { Component::deserialize_file(engine, path) }
    }
    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        Component::serialize(self)
    }
}

impl Artifact for wasmtime::Module {
    const KIND: &'static str = "module";
    fn compile(engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Self> {
        wasmtime::Module::new(engine, wasm)
    }
    unsafe fn deserialize_file(engine: &Engine, path: &Path) -> wasmtime::Result<Self> {
        // SAFETY: forwarded contract.
        unsafe { wasmtime::Module::deserialize_file(engine, path) }
    }
    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        wasmtime::Module::serialize(self)
    }
}

fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // A temporary of this write's own (threads and processes share the cache), renamed whole.
    crate::durable::write(path, bytes, crate::durable::Mode::Default)
}

/// Temporaries in a cache directory older than this are what a crash left behind: removed by
/// [`ArtifactCache::sweep`] (younger ones may be another process's write in progress).
pub const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(3600);
