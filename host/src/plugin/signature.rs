//! Plugin signatures: Ed25519 (`ring`) over the SHA-256 of the wasm and of the manifest, kept in
//! `plugin.sig` next to the manifest. The host loads a plugin from disk only when a key in its
//! trust list signed exactly these two files.

use std::path::{Path, PathBuf};

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use super::cache::{hex, sha256_hex};
use crate::keys;

/// The signature file's name, next to the manifest.
pub const FILE: &str = "plugin.sig";

/// Contents of `plugin.sig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginSignature {
    /// Hex Ed25519 public key of the signer.
    pub key: String,
    /// Hex SHA-256 of the wasm file.
    pub wasm_sha256: String,
    /// Hex SHA-256 of the manifest file.
    pub manifest_sha256: String,
    /// Hex Ed25519 signature of [`message`].
    pub signature: String,
}

/// What is signed.
pub fn message(wasm_sha256: &str, manifest_sha256: &str) -> Vec<u8> {
    format!("gantry-plugin-signature\n{wasm_sha256}\n{manifest_sha256}").into_bytes()
}

/// Where the signature of the plugin whose manifest is at `manifest` lives.
pub fn path_for(manifest: &Path) -> PathBuf {
    manifest.with_file_name(FILE)
}

/// Signs a plugin's wasm and manifest bytes.
pub fn sign(key: &Ed25519KeyPair, wasm: &[u8], manifest: &[u8]) -> PluginSignature {
    let (w, m) = (sha256_hex(wasm), sha256_hex(manifest));
    PluginSignature {
        key: hex(key.public_key().as_ref()),
        signature: hex(key.sign(&message(&w, &m)).as_ref()),
        wasm_sha256: w,
        manifest_sha256: m,
    }
}

/// Checks `sig` against the plugin's bytes and the trusted keys (hex). The error says which
/// part failed.
pub fn verify(
    sig: &PluginSignature,
    wasm: &[u8],
    manifest: &[u8],
    trusted: &[String],
) -> Result<(), String> {
    if !trusted.iter().any(|k| k.eq_ignore_ascii_case(&sig.key)) {
        return Err(format!("signed by key {}, which is not trusted", sig.key));
    }
    let (w, m) = (sha256_hex(wasm), sha256_hex(manifest));
    if w != sig.wasm_sha256 {
        return Err("the wasm file changed after signing".into());
    }
    if m != sig.manifest_sha256 {
        return Err("the manifest changed after signing".into());
    }
    let (Some(key), Some(signature)) = (keys::from_hex(&sig.key), keys::from_hex(&sig.signature))
    else {
        return Err("key or signature is not hex".into());
    };
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&message(&w, &m), &signature)
        .map_err(|_| "the signature does not verify".to_string())
}

/// Checks the `plugin.sig` next to the manifest at `manifest_path` (whose bytes are
/// `manifest`) over `wasm` and the trusted keys; the error says what is missing or wrong.
pub fn check(
    manifest_path: &Path,
    manifest: &[u8],
    wasm: &[u8],
    trusted: &[String],
) -> Result<(), String> {
    match read(manifest_path)? {
        Some(sig) => verify(&sig, wasm, manifest, trusted),
        None => Err(format!(
            "no {FILE} next to the manifest (sign it with `gantry plugin sign`)"
        )),
    }
}

/// Reads `plugin.sig` next to `manifest` (a regular file in the manifest's directory, under
/// [`super::files::MAX_SIGNATURE_BYTES`]); `Ok(None)` when there is none.
pub fn read(manifest: &Path) -> Result<Option<PluginSignature>, String> {
    let path = path_for(manifest);
    let dir = manifest.parent().unwrap_or(Path::new("."));
    match super::files::read_within(dir, Path::new(FILE), super::files::MAX_SIGNATURE_BYTES) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod props;
