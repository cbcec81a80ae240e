//! Ed25519 signing keys (PKCS#8 files, `ring`): the host's key for audit checkpoints, and plugin
//! signing keys.

use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

/// Errors reading, writing or using a key, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The key file.
        path: std::path::PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// The file is not an Ed25519 PKCS#8 key.
    #[error("{path}: not an Ed25519 PKCS#8 private key ({reason})")]
    Format {
        /// The key file.
        path: std::path::PathBuf,
        /// What ring said.
        reason: String,
    },
    /// The system random source failed.
    #[error("generating a key: {0}")]
    Random(String),
}

/// Generates a key and writes it to `path` (mode 0600, atomically); returns it.
pub fn generate(path: &Path) -> Result<Ed25519KeyPair, KeyError> {
    let io = |error| KeyError::Io {
        path: path.to_path_buf(),
        error,
    };
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|e| KeyError::Random(e.to_string()))?;
    write_private(path, pkcs8.as_ref()).map_err(io)?;
    load(path)
}

/// Writes private key material to `path`: readable by its owner only (mode 0600), synced, and
/// renamed into place so no partial key is ever visible.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::durable::write(path, bytes, crate::durable::Mode::Private)
}

/// Loads a PKCS#8 Ed25519 key.
pub fn load(path: &Path) -> Result<Ed25519KeyPair, KeyError> {
    // A PKCS#8 Ed25519 key is 83-85 bytes: anything much larger is not one. Its owner's alone,
    // as every private key Gantry reads ([`crate::durable::read_private`]).
    let bytes = crate::durable::read_private(path, 4096).map_err(|error| KeyError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    Ed25519KeyPair::from_pkcs8(&bytes).map_err(|e| KeyError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The public half of `key`, hex.
pub fn public_hex(key: &Ed25519KeyPair) -> String {
    crate::plugin::cache::hex(key.public_key().as_ref())
}

/// Parses a hex string into bytes.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    /// A signing key (the host's audit key, a plugin signer's) was loaded whatever its mode: on
    /// a node whose command jobs run as other uids, one the umask left 0644 was theirs to sign
    /// with. Refused, naming its mode; its owner's alone, it loads.
    #[cfg(unix)]
    #[test]
    fn a_signing_key_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.pk8");
        super::generate(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = super::load(&path).err().unwrap().to_string();
        assert!(e.contains("mode 644") && e.contains("host.pk8"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        super::load(&path).unwrap();
    }
}
