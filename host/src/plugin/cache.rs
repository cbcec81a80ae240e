//! On-disk cache of compiled components, so a restart does not recompile.
//!
//! The key is the SHA-256 of the wasm bytes plus a digest of the engine's compatibility hash
//! (wasmtime version, target, compiler settings): a different engine never loads a stale
//! artifact. Entries are written to a temporary file and renamed into place, so a crash never
//! leaves a torn artifact behind; an unreadable entry is recompiled and overwritten.
//!
//! A compiled artifact is native code that is loaded and run as it is: whoever can write an
//! entry runs code in this process. So an entry is loaded only when it, and the directory it
//! is in, are this user's own and no one else may write them (as `ssh` treats `~/.ssh`); the
//! directory is created private. Otherwise the cache is not used: the plugin is compiled.
//! And an entry carries the SHA-256 of its artifact, checked on the bytes read before they are
//! loaded: a damaged entry (a bad disk, a stray write) passed wasmtime's header checks and ran
//! as code, and the daemon died of it at every start (`SIGTRAP`); it is recompiled instead.

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
        let dir = path.parent().unwrap_or(Path::new("."));
        tighten(dir);
        if let Err(e) = only_ours(dir) {
            tracing::warn!("not using the compiled-plugin cache: {e}");
            return Ok((self.compile(engine, wasm)?, CacheOutcome::Disabled));
        }
        if path.exists() {
            if let Err(e) = only_ours(&path) {
                tracing::warn!("recompiling: {e}");
                return Ok((self.compile(engine, wasm)?, CacheOutcome::Disabled));
            }
            match read_checked(&path) {
                // SAFETY: the bytes are those `store` below wrote, from `serialize` of this
                // engine configuration (the engine key is in the entry's name), as their digest
                // says, read from a file of this user's in a directory of this user's that no one
                // else may write (`only_ours`).
                Ok(bytes) => match unsafe { A::deserialize(engine, &bytes) } {
                    Ok(artifact) => return Ok((artifact, CacheOutcome::Hit)),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "recompiling: cached artifact unusable: {e}")
                    }
                },
                Err(e) => tracing::warn!(path = %path.display(), "recompiling: {e}"),
            }
        }
        let start = Instant::now();
        let artifact: A = self.compile(engine, wasm)?;
        tracing::debug!(
            elapsed_ms = start.elapsed().as_millis() as u64,
            kind = A::KIND,
            "compiled"
        );
        if let Err(e) = store(&path, &with_digest(artifact.serialize()?)) {
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
    /// `bytes` must be the output of [`Artifact::serialize`] for a compatible engine.
    unsafe fn deserialize(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Self>;
    /// The artifact's serialized form.
    fn serialize(&self) -> wasmtime::Result<Vec<u8>>;
}

impl Artifact for Component {
    const KIND: &'static str = "component";
    fn compile(engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Self> {
        Component::new(engine, wasm)
    }
    unsafe fn deserialize(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Self> {
        // SAFETY: forwarded contract.
        unsafe { Component::deserialize(engine, bytes) }
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
    unsafe fn deserialize(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Self> {
        // SAFETY: forwarded contract.
        unsafe { wasmtime::Module::deserialize(engine, bytes) }
    }
    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        wasmtime::Module::serialize(self)
    }
}

/// Whether `path` (a cache entry or its directory) may be trusted: itself, not a link, owned
/// by this process's user, and writable by no one else.
#[cfg(unix)]
fn only_ours(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        // Made private when the first entry is written.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let problem = if meta.file_type().is_symlink() {
        Some("a symbolic link".to_string())
    } else if meta.uid() != me {
        Some(format!("owned by uid {}, not this user ({me})", meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "writable by others (mode {:o})",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    match problem {
        Some(p) => Err(format!(
            "{} is {p}: whoever can write it could run code in this process",
            path.display()
        )),
        None => Ok(()),
    }
}

#[cfg(not(unix))]
fn only_ours(_: &Path) -> Result<(), String> {
    Ok(())
}

/// Takes others' write permission off `dir` when it is this user's own (made under a umask of
/// 002, say): what others may have put in it meanwhile is theirs, and [`only_ours`] refuses
/// each such entry.
#[cfg(unix)]
fn tighten(dir: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.is_dir() && meta.uid() == me && meta.mode() & 0o022 != 0 {
        let mode = meta.mode() & 0o7755;
        match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)) {
            Ok(()) => {
                tracing::warn!(dir = %dir.display(), "the compiled-plugin cache was writable by others; it is not any more")
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot make the compiled-plugin cache private: {e}")
            }
        }
    }
}

#[cfg(not(unix))]
fn tighten(_: &Path) {}

/// How an entry starts: the SHA-256 of the artifact that follows.
const DIGEST: usize = 32;

/// `artifact` as an entry holds it: its digest first.
fn with_digest(artifact: Vec<u8>) -> Vec<u8> {
    let digest = ring::digest::digest(&SHA256, &artifact);
    let mut entry = Vec::with_capacity(DIGEST + artifact.len());
    entry.extend_from_slice(digest.as_ref());
    entry.extend(artifact);
    entry
}

/// The artifact of entry `path`, read once and checked against its digest (never mapped from
/// the file after the check, which another write could change).
fn read_checked(path: &Path) -> Result<Vec<u8>, String> {
    let mut entry = std::fs::read(path).map_err(|e| format!("cached artifact unreadable: {e}"))?;
    if entry.len() < DIGEST
        || ring::digest::digest(&SHA256, &entry[DIGEST..]).as_ref() != &entry[..DIGEST]
    {
        return Err(
            "cached artifact damaged (or written by an earlier version): its digest does not match"
                .into(),
        );
    }
    entry.drain(..DIGEST);
    Ok(entry)
}

fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    // A temporary of this write's own (threads and processes share the cache), renamed whole;
    // this user's alone (see `only_ours`).
    crate::durable::write(path, bytes, crate::durable::Mode::Private)
}

/// Temporaries in a cache directory older than this are what a crash left behind: removed by
/// [`ArtifactCache::sweep`] (younger ones may be another process's write in progress).
pub const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(3600);

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A compiled artifact is native code run as it is: an entry in a cache directory others may
    /// write (a shared `--cache-dir`, a world-writable parent's default) was loaded, so whoever
    /// planted it ran code in the daemon. Such entries are not loaded: the plugin is compiled.
    #[test]
    fn a_cache_entry_others_may_write_is_never_loaded() {
        let engine = Engine::default();
        // The empty module.
        let wasm = b"\0asm\x01\0\0\0".to_vec();
        let sha = sha256_hex(&wasm);
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("cache");
        let cache = ArtifactCache::new(&engine, Some(dir.clone()));
        let load = || {
            cache
                .load_or_compile::<wasmtime::Module>(&engine, &wasm, &sha)
                .unwrap()
                .1
        };
        assert_eq!(load(), CacheOutcome::Miss);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700, "made private");
        assert_eq!(load(), CacheOutcome::Hit);

        let entry = cache.entry(&sha).unwrap();
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(load(), CacheOutcome::Disabled, "an entry others may write");
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load(), CacheOutcome::Hit);
        // This user's own directory, made writable by others: made private again, and what
        // others may have put in it meanwhile is theirs (above).
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(load(), CacheOutcome::Hit);
        assert_eq!(mode(&dir), 0o755);

        // A directory of another user's (where this user may change owners: root).
        if std::os::unix::fs::chown(&dir, Some(65534), None).is_ok() {
            assert_eq!(load(), CacheOutcome::Disabled, "another user's directory");
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            std::os::unix::fs::chown(&dir, Some(me), None).unwrap();
            assert_eq!(load(), CacheOutcome::Hit);
        }

        // A link planted in place of an entry.
        let elsewhere = base.path().join("planted.cwasm");
        std::fs::rename(&entry, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &entry).unwrap();
        assert_eq!(load(), CacheOutcome::Disabled, "a link");
    }

    /// Found by a review: an entry whose code was overwritten (its header intact) was loaded
    /// and run, and the daemon died of it at every start. A damaged entry is recompiled and
    /// replaced.
    #[test]
    fn a_damaged_cache_entry_is_recompiled_not_run() {
        let engine = Engine::default();
        let wasm = b"\0asm\x01\0\0\0".to_vec();
        let sha = sha256_hex(&wasm);
        let base = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(&engine, Some(base.path().join("cache")));
        let load = || {
            cache
                .load_or_compile::<wasmtime::Module>(&engine, &wasm, &sha)
                .unwrap()
                .1
        };
        assert_eq!(load(), CacheOutcome::Miss);
        assert_eq!(load(), CacheOutcome::Hit);
        let entry = cache.entry(&sha).unwrap();
        let mut bytes = std::fs::read(&entry).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xcc;
        std::fs::write(&entry, &bytes).unwrap();
        assert_eq!(load(), CacheOutcome::Miss, "recompiled");
        assert_eq!(load(), CacheOutcome::Hit, "and replaced");
        std::fs::write(&entry, b"short").unwrap();
        assert_eq!(load(), CacheOutcome::Miss);
    }
}
