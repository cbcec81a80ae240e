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

/// The compiled-artifact cache of one host.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: Option<PathBuf>,
    engine_key: String,
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
        Self { dir, engine_key }
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

    /// Loads the compiled form of `wasm` from the cache, or compiles and stores it.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        wasm_sha256: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let Some(path) = self.entry(wasm_sha256) else {
            return Ok((Component::new(engine, wasm)?, CacheOutcome::Disabled));
        };
        if path.exists() {
            // SAFETY: the cache directory belongs to the host and entries are only written by
            // `store` below from `Component::serialize` of this engine's configuration (the
            // engine key is in the file name); wasmtime also checks the header and version.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "recompiling: cached artifact unusable: {e}")
                }
            }
        }
        let start = Instant::now();
        let component = Component::new(engine, wasm)?;
        tracing::debug!(
            elapsed_ms = start.elapsed().as_millis() as u64,
            "compiled component"
        );
        if let Err(e) = store(&path, &component.serialize()?) {
            tracing::warn!(path = %path.display(), "cannot write compiled artifact: {e}");
        }
        Ok((component, CacheOutcome::Miss))
    }
}

fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("artifact"),
        std::process::id()
    ));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
