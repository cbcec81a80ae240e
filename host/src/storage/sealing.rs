//! Master keys sealed at rest by a key kept apart from the data directory.
//!
//! A master key written as it is beside the objects it unwraps protects them from nothing that
//! reads the directory: a stolen disk, a backup, a copied replica. With `GANTRY_KEY_FILE` naming a
//! key file elsewhere (another disk, a secret store's mount, a systemd credential), every master
//! key, and the host's audit signing key, is written sealed under it (AES-256-GCM, what it is
//! bound in), a sealed key opens only with it, and a key left unsealed is refused (a master key
//! planted there, made current, would have every new object wrapped under a key its planter
//! knows; a readable signing key signs a rewritten audit log) until `gantry key seal` seals it.

use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::StoreError;
use crate::durable;

/// The variable naming the key file that seals the master keys.
pub const KEY_FILE_ENV: &str = "GANTRY_KEY_FILE";

/// What a sealed master key file starts with.
const MAGIC: &[u8; 4] = b"GSK1";
/// A sealed master key file's length: magic, nonce, the key and its tag.
#[cfg(test)]
pub(super) const SEALED_LEN: usize = 4 + NONCE_LEN + 32 + 16;

/// The key that seals master keys.
pub(super) struct Sealer {
    key: LessSafeKey,
    path: PathBuf,
    /// A key derived from it (HKDF-SHA256) that authenticates the database's rows (`gantry_daemon`'s `rowmac`).
    pub(super) rows: [u8; 32],
}

impl Sealer {
    /// The sealer `GANTRY_KEY_FILE` names for the data directory at `root`, if it names one: a
    /// file of 32 bytes (or 64 hex digits), only its owner's to read, outside `root`.
    pub(super) fn from_env(root: &Path) -> Result<Option<Sealer>, StoreError> {
        match std::env::var_os(KEY_FILE_ENV).filter(|p| !p.is_empty()) {
            Some(path) => Sealer::from_file(Path::new(&path), root).map(Some),
            None => Ok(None),
        }
    }

    pub(super) fn from_file(path: &Path, root: &Path) -> Result<Sealer, StoreError> {
        let refuse = |message: String| StoreError::Layout {
            path: path.to_path_buf(),
            message: format!("{KEY_FILE_ENV}: {message}"),
        };
        if let (Ok(file), Ok(dir)) = (path.canonicalize(), root.canonicalize())
            && file.starts_with(&dir)
        {
            return Err(refuse(format!(
                "the key file lies inside the data directory it seals ({}): keep it apart",
                dir.display()
            )));
        }
        let bytes =
            durable::read_private(path, 256).map_err(|e| refuse(format!("the key file: {e}")))?;
        let raw = match bytes.len() {
            32 => bytes,
            _ => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|t| {
                    data_encoding::HEXLOWER_PERMISSIVE
                        .decode(t.trim().as_bytes())
                        .ok()
                })
                .filter(|k| k.len() == 32)
                .ok_or_else(|| refuse("a key file holds 32 bytes or 64 hex digits".into()))?,
        };
        let key = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| refuse("not a key".into()))?;
        // A key of its own for another use: the sealing key never authenticates rows itself.
        let mut rows = [0u8; 32];
        ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"gantry-key-file")
            .extract(&raw)
            .expand(&[b"accounts-mac-v1"], ring::hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut rows))
            .map_err(|_| refuse("not a key".into()))?;
        Ok(Sealer {
            key: LessSafeKey::new(key),
            path: path.to_path_buf(),
            rows,
        })
    }

    /// Key `bytes` (what `label` names: [`master_label`], [`HOST_KEY_LABEL`]) sealed, as its
    /// file holds it.
    pub(super) fn seal(
        &self,
        label: &str,
        bytes: &[u8],
        rng: &SystemRandom,
    ) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce)
            .map_err(|_| StoreError::Random("no nonce to seal a master key".into()))?;
        let mut sealed = bytes.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(label)),
                &mut sealed,
            )
            .map_err(|_| StoreError::Random("sealing a key".into()))?;
        let mut file = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&nonce);
        file.extend_from_slice(&sealed);
        Ok(file)
    }

    /// The key sealed in `file` (at `path`, what `label` names).
    fn open(&self, label: &str, file: &[u8], path: &Path) -> Result<Vec<u8>, StoreError> {
        let (nonce, sealed) = file[MAGIC.len()..].split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| truncated(path))?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(label)), &mut sealed)
            .map_err(|_| StoreError::Layout {
                path: path.to_path_buf(),
                message: format!(
                    "does not open with the key in {} ({KEY_FILE_ENV}): another data \
                     directory's key, or the file was altered",
                    self.path.display()
                ),
            })?;
        Ok(plain.to_vec())
    }
}

fn aad(label: &str) -> Vec<u8> {
    format!("gantry-sealed-{label}").into_bytes()
}

/// What master key `id`'s sealing is bound to.
pub(super) fn master_label(id: &str) -> String {
    format!("master:{id}")
}

/// What the host's signing key's sealing is bound to.
pub(super) const HOST_KEY_LABEL: &str = "host-signing-key";

fn truncated(path: &Path) -> StoreError {
    StoreError::Layout {
        path: path.to_path_buf(),
        message: "a sealed key, cut short".into(),
    }
}

/// Whether master key file content `file` is sealed.
pub(super) fn is_sealed(file: &[u8]) -> bool {
    file.starts_with(MAGIC)
}

/// The key in file content `file` at `path` (what `label` names): opened with `sealer` when
/// sealed; an unsealed one is refused while a sealer is given unless `allow_unsealed` (sealing
/// them).
pub(super) fn key_bytes(
    file: &[u8],
    label: &str,
    path: &Path,
    sealer: Option<&Sealer>,
    allow_unsealed: bool,
) -> Result<Vec<u8>, StoreError> {
    let refuse = |message: String| StoreError::Layout {
        path: path.to_path_buf(),
        message,
    };
    match (is_sealed(file), sealer) {
        (true, _) if file.len() < MAGIC.len() + NONCE_LEN + 16 => Err(truncated(path)),
        (true, Some(sealer)) => sealer.open(label, file, path),
        (true, None) => Err(refuse(format!(
            "a sealed key: set {KEY_FILE_ENV} to the file of the key that sealed it"
        ))),
        (false, Some(_)) if !allow_unsealed => Err(refuse(format!(
            "an unsealed key, while {KEY_FILE_ENV} is set: seal it with `gantry key seal` (an \
             unsealed key could have been planted)"
        ))),
        (false, _) => Ok(file.to_vec()),
    }
}
