//! OPA bundles: a gzipped tar with `/policy.wasm`, `/data.json` and `/.manifest`, as
//! `opa build -t wasm` writes them (member names keep their leading slash, which `opa-wasm`'s own
//! loader and OPA expect).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::PolicyError;

/// The parts of a bundle Gantry uses.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The OPA-ABI module.
    pub wasm: Vec<u8>,
    /// `data.json` (an empty object when the bundle has none).
    pub data: serde_json::Value,
    /// `.manifest` (an empty object when the bundle has none).
    pub manifest: serde_json::Value,
    /// `.signatures.json`, when the bundle is signed.
    pub signatures: Option<Vec<u8>>,
}

/// Writes `files` (names without the leading slash) as a gzipped tar at `path`, atomically.
pub fn write_files(path: &Path, files: &[(String, Vec<u8>)]) -> Result<(), PolicyError> {
    let io = |error| PolicyError::Io {
        path: path.to_path_buf(),
        error,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("bundle"),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        // The fastest level: the engine module (2.6 MB) dominates, and level 6 spends about
        // 100 ms more of every `policy build` (the author's loop) to save 15% of its size.
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, bytes) in files {
            let name = format!("/{name}");
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            // `set_path` would strip the leading slash that OPA's bundle names carry.
            let raw = &mut header.as_old_mut().name;
            if name.len() > raw.len() {
                return Err(std::io::Error::other(format!(
                    "member name too long: {name}"
                )));
            }
            raw[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            tar.append(&header, &bytes[..])?;
        }
        let file = tar.into_inner()?.finish()?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(error) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(error));
    }
    Ok(())
}

/// Most bytes a bundle may unpack to, all members together: a gzip bomb is refused when it
/// passes this, not when the machine runs out of memory.
pub const MAX_UNPACKED: u64 = 64 << 20;

/// Most members a bundle may have.
pub const MAX_MEMBERS: usize = 1024;

/// Most bytes the tar stream inside a bundle may have: the members' bytes plus, for each member,
/// room for its header, padding and extension headers (a long name, PAX records). The tar
/// reader reads extension headers whole and inflates skipped members to skip them, so bounding
/// only the members' bytes would leave those unbounded.
pub const MAX_ARCHIVE: u64 = MAX_UNPACKED + MAX_MEMBERS as u64 * (8 << 10);

/// A reader that fails once more than `left` bytes were asked of it, and says so in `over`.
struct Bounded<R> {
    inner: R,
    left: u64,
    over: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // Past the bound only if there is more to read.
            let n = self.inner.read(&mut [0u8][..])?;
            if n > 0 {
                self.over.set(true);
                return Err(std::io::Error::other("the archive is too large"));
            }
            return Ok(0);
        }
        let room = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..room])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Every member of the bundle at `path`: (name without the leading slash, bytes).
pub fn read_files(path: &Path) -> Result<Vec<(String, Vec<u8>)>, PolicyError> {
    let file = std::fs::File::open(path).map_err(|error| PolicyError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    read_files_from(file, path)
}

/// Every member of the gzipped tar `input` (named `origin` in errors), unpacking at most
/// [`MAX_UNPACKED`] bytes and [`MAX_MEMBERS`] members.
pub fn read_files_from(
    input: impl Read,
    origin: &Path,
) -> Result<Vec<(String, Vec<u8>)>, PolicyError> {
    let bad = |message: String| PolicyError::Bundle {
        path: origin.to_path_buf(),
        message,
    };
    let over = std::rc::Rc::new(std::cell::Cell::new(false));
    let mut archive = tar::Archive::new(Bounded {
        inner: flate2::read::GzDecoder::new(input),
        left: MAX_ARCHIVE,
        over: over.clone(),
    });
    let malformed = |e: std::io::Error| {
        if over.get() {
            bad(format!(
                "the archive unpacks to more than {} MiB (members, headers and extensions)",
                MAX_ARCHIVE >> 20
            ))
        } else {
            bad(format!("not a gzipped tar archive: {e}"))
        }
    };
    let entries = archive.entries().map_err(malformed)?;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut unpacked = 0u64;
    for (i, entry) in entries.enumerate() {
        if i >= MAX_MEMBERS {
            return Err(bad(format!("more than {MAX_MEMBERS} members")));
        }
        let entry = entry.map_err(malformed)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name: PathBuf = entry
            .path()
            .map_err(|e| bad(format!("bad member name: {e}")))?
            .into_owned();
        let name = name.to_string_lossy().trim_start_matches('/').to_string();
        // One name, one member: a signature covers the first of a name, so a second (say an
        // unsigned `/policy.wasm` appended to a signed bundle) must never be what is loaded.
        if files.iter().any(|(n, _)| *n == name) {
            return Err(bad(format!("/{name} appears twice")));
        }
        // The header's size is the sender's word: bound what is read, not what is promised.
        let room = MAX_UNPACKED - unpacked;
        let mut bytes = Vec::new();
        entry.take(room + 1).read_to_end(&mut bytes).map_err(|e| {
            if over.get() {
                malformed(e)
            } else {
                bad(format!("{name}: {e}"))
            }
        })?;
        unpacked += bytes.len() as u64;
        if unpacked > MAX_UNPACKED {
            return Err(bad(format!(
                "it unpacks to more than {} MiB (at /{name})",
                MAX_UNPACKED >> 20
            )));
        }
        files.push((name, bytes));
    }
    Ok(files)
}

/// A bundle from the gzipped tar `bytes` (named `origin` in errors), bounded as
/// [`read_files_from`] is.
pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Bundle, PolicyError> {
    Bundle::from_files(origin, read_files_from(bytes, origin)?)
}

impl Bundle {
    /// The manifest's revision, or "" when it has none.
    pub fn revision(&self) -> &str {
        self.manifest["revision"].as_str().unwrap_or("")
    }

    /// The bundle's files as `opa build` lays them out (names without the leading slash).
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        let json = |v: &serde_json::Value| serde_json::to_vec(v).expect("a JSON value serializes");
        let mut files = vec![
            (".manifest".to_string(), json(&self.manifest)),
            ("data.json".to_string(), json(&self.data)),
            ("policy.wasm".to_string(), self.wasm.clone()),
        ];
        if let Some(sig) = &self.signatures {
            files.push((super::bundle_signature::FILE.to_string(), sig.clone()));
        }
        files
    }

    /// Writes the bundle to `path` atomically: a temporary file in the same directory, synced,
    /// then renamed over `path`, so a failure leaves no half-written bundle.
    pub fn write(&self, path: &Path) -> Result<(), PolicyError> {
        write_files(path, &self.files())
    }

    /// Reads a bundle; errors name the bundle and what is missing or malformed.
    pub fn read(path: &Path) -> Result<Self, PolicyError> {
        Self::from_files(path, read_files(path)?)
    }

    /// Reads a bundle and checks its signature against `keys` (see [`bundle_signature`]);
    /// refuses it, saying why, when the signature is missing, unknown or does not cover exactly
    /// these files.
    ///
    /// [`bundle_signature`]: super::bundle_signature
    pub fn read_verified(
        path: &Path,
        keys: &[super::bundle_signature::VerificationKey],
    ) -> Result<Self, PolicyError> {
        let files = read_files(path)?;
        let kid = super::bundle_signature::verify(&files, keys).map_err(|message| {
            PolicyError::Bundle {
                path: path.to_path_buf(),
                message: format!("signature refused: {message}"),
            }
        })?;
        tracing::info!(bundle = %path.display(), key = %kid, "bundle signature verified");
        Self::from_files(path, files)
    }

    /// A bundle from its members.
    pub fn from_files(path: &Path, files: Vec<(String, Vec<u8>)>) -> Result<Self, PolicyError> {
        let bad = |message: String| PolicyError::Bundle {
            path: path.to_path_buf(),
            message,
        };
        let (mut wasm, mut data, mut manifest, mut signatures) = (None, None, None, None);
        for (name, bytes) in files {
            match name.as_str() {
                "policy.wasm" => wasm = Some(bytes),
                "data.json" => data = Some(bytes),
                ".manifest" => manifest = Some(bytes),
                super::bundle_signature::FILE => signatures = Some(bytes),
                _ => {}
            }
        }
        let wasm = wasm.ok_or_else(|| bad("no /policy.wasm member".into()))?;
        let json = |name: &str, bytes: Option<Vec<u8>>| -> Result<serde_json::Value, PolicyError> {
            match bytes {
                None => Ok(serde_json::json!({})),
                Some(b) => {
                    let value = serde_json::from_slice(&b)
                        .map_err(|e| bad(format!("/{name}:{}:{}: {e}", e.line(), e.column())))?;
                    // serde_json read the bytes, so they are UTF-8.
                    let text = std::str::from_utf8(&b).unwrap_or_default();
                    gantry_policy_engine::json::check_carried_exactly(text)
                        .map_err(|e| bad(format!("/{name}: {e}")))?;
                    Ok(value)
                }
            }
        };
        Ok(Self {
            wasm,
            data: json("data.json", data)?,
            manifest: json(".manifest", manifest)?,
            signatures,
        })
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests;
