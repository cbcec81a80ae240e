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
}

impl Bundle {
    /// The manifest's revision, or "" when it has none.
    pub fn revision(&self) -> &str {
        self.manifest["revision"].as_str().unwrap_or("")
    }

    /// Writes the bundle to `path` atomically: a temporary file in the same directory, synced,
    /// then renamed over `path`, so a failure leaves no half-written bundle.
    pub fn write(&self, path: &Path) -> Result<(), PolicyError> {
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
            let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
            let mut tar = tar::Builder::new(gz);
            let data = serde_json::to_vec(&self.data).expect("a JSON value serializes");
            let manifest = serde_json::to_vec(&self.manifest).expect("a JSON value serializes");
            for (name, bytes) in [
                ("/.manifest", &manifest[..]),
                ("/data.json", &data[..]),
                ("/policy.wasm", &self.wasm[..]),
            ] {
                let mut header = tar::Header::new_gnu();
                header.set_size(bytes.len() as u64);
                header.set_mode(0o644);
                header.set_mtime(0);
                // `set_path` would strip the leading slash that OPA's bundle names carry.
                let raw = &mut header.as_old_mut().name;
                raw[..name.len()].copy_from_slice(name.as_bytes());
                header.set_cksum();
                tar.append(&header, bytes)?;
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

    /// Reads a bundle; errors name the bundle and what is missing or malformed.
    pub fn read(path: &Path) -> Result<Self, PolicyError> {
        let bad = |message: String| PolicyError::Bundle {
            path: path.to_path_buf(),
            message,
        };
        let file = std::fs::File::open(path).map_err(|error| PolicyError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let (mut wasm, mut data, mut manifest) = (None, None, None);
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("not a gzipped tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(format!("not a gzipped tar archive: {e}")))?;
            let name: PathBuf = entry
                .path()
                .map_err(|e| bad(format!("bad member name: {e}")))?
                .into_owned();
            let name = name.to_string_lossy().trim_start_matches('/').to_string();
            let slot = match name.as_str() {
                "policy.wasm" => &mut wasm,
                "data.json" => &mut data,
                ".manifest" => &mut manifest,
                _ => continue,
            };
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| bad(format!("{name}: {e}")))?;
            *slot = Some(bytes);
        }
        let wasm = wasm.ok_or_else(|| bad("no /policy.wasm member".into()))?;
        let json = |name: &str, bytes: Option<Vec<u8>>| -> Result<serde_json::Value, PolicyError> {
            match bytes {
                None => Ok(serde_json::json!({})),
                Some(b) => serde_json::from_slice(&b)
                    .map_err(|e| bad(format!("/{name}:{}:{}: {e}", e.line(), e.column()))),
            }
        };
        Ok(Self {
            wasm,
            data: json("data.json", data)?,
            manifest: json(".manifest", manifest)?,
        })
    }
}
