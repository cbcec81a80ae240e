//! Checkpoint files: everything a training job needs to continue exactly where it stopped.
//!
//! Layout: the line `GANTRY-CHECKPOINT 1\n`, a little-endian `u64` header length, the header as
//! JSON ([`Header`]: network, optimizer, position, loss curve, tensor lengths), the parameter,
//! first-moment and second-moment tensors as little-endian `f32`, and a SHA-256 digest of all
//! of that. A file that does not hash to its digest is refused, never half-loaded.

use std::path::{Path, PathBuf};

use gantry_kernels::{MlpSpec, Optimizer, TrainState};
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::data::Columns;

const MAGIC: &[u8] = b"GANTRY-CHECKPOINT 1\n";
const DIGEST: usize = 32;

/// The largest checkpoint file [`load`] reads: four times the memory a job may use under the
/// default limits (a checkpoint holds three copies of the parameters), so a file that no such
/// job could have written is refused before it is read.
pub fn max_file_bytes() -> u64 {
    4 * (super::TrainLimits::default().max_memory_mib << 20)
}

/// Where in the run a checkpoint was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The epoch being trained (from 0).
    pub epoch: u64,
    /// Batches of that epoch already trained.
    pub batch: u64,
}

/// A checkpoint's description, stored as JSON ahead of the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Header {
    spec: MlpSpec,
    optimizer: Optimizer,
    step: u32,
    position: Position,
    seed: u64,
    batch_size: usize,
    /// `(step, mean loss)` since the start of the run.
    curve: Vec<(u32, f64)>,
    tensors: Vec<usize>,
    /// The CSV columns the network reads and predicts (absent in older checkpoints and for
    /// data without names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    columns: Option<Columns>,
}

/// A loaded checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Parameters and optimizer state.
    pub state: TrainState,
    /// Where to continue.
    pub position: Position,
    /// The run's seed (shuffles depend on it).
    pub seed: u64,
    /// The run's batch size (batches depend on it).
    pub batch_size: usize,
    /// The loss curve so far.
    pub curve: Vec<(u32, f64)>,
    /// The CSV columns the network reads and predicts, when it was trained on a CSV file.
    pub columns: Option<Columns>,
}

/// The file name of the checkpoint after `step` steps.
pub fn file_name(step: u32) -> String {
    format!("step-{step:08}.ckpt")
}

/// The newest checkpoint in `dir` (by step), if any.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>, TrainError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrainError::io(dir, e)),
    };
    let mut best = None;
    for entry in entries {
        let path = entry.map_err(|e| TrainError::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.strip_suffix(".ckpt"))
            .and_then(|s| s.parse::<u32>().ok())
            && best.as_ref().is_none_or(|(s, _)| step > *s)
        {
            best = Some((step, path));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Writes `checkpoint` to `path` atomically.
pub fn save(path: &Path, checkpoint: &Checkpoint) -> Result<(), TrainError> {
    write_atomically(path, &to_bytes(checkpoint))
}

/// The checkpoint file's bytes.
pub fn to_bytes(checkpoint: &Checkpoint) -> Vec<u8> {
    let s = &checkpoint.state;
    let header = Header {
        spec: s.spec.clone(),
        optimizer: s.optimizer,
        step: s.step,
        position: checkpoint.position,
        seed: checkpoint.seed,
        batch_size: checkpoint.batch_size,
        curve: checkpoint.curve.clone(),
        tensors: s.params.iter().map(Vec::len).collect(),
        columns: checkpoint.columns.clone(),
    };
    let json = serde_json::to_vec(&header).expect("a checkpoint header serialises");
    let values: usize = 3 * header.tensors.iter().sum::<usize>();
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + json.len() + 4 * values + DIGEST);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for tensor in s.params.iter().chain(&s.m).chain(&s.v) {
        for v in tensor {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &out);
    out.extend_from_slice(digest.as_ref());
    out
}

/// Reads and verifies a checkpoint.
pub fn load(path: &Path) -> Result<Checkpoint, TrainError> {
    let bytes = super::data::read_regular(path, max_file_bytes())?;
    from_bytes(&bytes, path)
}

/// Verifies and decodes a checkpoint's bytes; `path` names it in errors.
pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint, TrainError> {
    let bad = |m: &str| TrainError::invalid(path, None, m.to_string());
    if bytes.len() < MAGIC.len() + 8 + DIGEST || !bytes.starts_with(MAGIC) {
        return Err(bad("not a Gantry checkpoint"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - DIGEST);
    if ring::digest::digest(&ring::digest::SHA256, body).as_ref() != digest {
        return Err(bad(
            "checkpoint is corrupt or truncated (its SHA-256 digest does not match)",
        ));
    }
    // The digest is not a secret: every length below is checked, never trusted.
    let at = MAGIC.len() + 8;
    let len = u64::from_le_bytes(body[at - 8..at].try_into().expect("8 bytes"));
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| at.checked_add(len))
        .filter(|&end| end <= body.len())
        .ok_or_else(|| bad("header runs past the end"))?;
    let header: Header = serde_json::from_slice(&body[at..end])
        .map_err(|e| bad(&format!("unreadable header: {e}")))?;
    if tensor_lengths(&header.spec).as_ref() != Some(&header.tensors) {
        return Err(bad("tensor sizes do not match the network"));
    }
    let mut values = body[end..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")));
    let total = header
        .tensors
        .iter()
        .try_fold(0usize, |sum, &n| sum.checked_add(n))
        .and_then(|total| total.checked_mul(12));
    if total != Some(body.len() - end) {
        return Err(bad("tensor data has the wrong length"));
    }
    let mut take = || -> Vec<Vec<f32>> {
        header
            .tensors
            .iter()
            .map(|&n| values.by_ref().take(n).collect())
            .collect()
    };
    let (params, m, v) = (take(), take(), take());
    Ok(Checkpoint {
        state: TrainState {
            spec: header.spec,
            optimizer: header.optimizer,
            step: header.step,
            params,
            m,
            v,
        },
        position: header.position,
        seed: header.seed,
        batch_size: header.batch_size,
        curve: header.curve,
        columns: header.columns,
    })
}

/// The tensor lengths of `spec` (see [`MlpSpec::tensor_lengths`]), or `None` for a network that
/// cannot exist: fewer than two layers, an empty one, or sizes whose products overflow.
fn tensor_lengths(spec: &MlpSpec) -> Option<Vec<usize>> {
    if spec.sizes.len() < 2 || spec.sizes.contains(&0) {
        return None;
    }
    let mut lengths = Vec::with_capacity(2 * spec.sizes.len());
    for w in spec.sizes.windows(2) {
        lengths.push(w[0].checked_mul(w[1])?);
        lengths.push(w[1]);
    }
    Some(lengths)
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    crate::durable::write(path, bytes, crate::durable::Mode::Default)
        .map_err(|e| TrainError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_kernels::{Activation, Adam, Loss};

    fn checkpoint() -> Checkpoint {
        let spec = MlpSpec {
            sizes: vec![2, 3, 2],
            activation: Activation::Relu,
            loss: Loss::SoftmaxCrossEntropy,
        };
        let params = spec.initial_parameters(1);
        let m: Vec<Vec<f32>> = params
            .iter()
            .map(|t| t.iter().map(|v| v * 0.5).collect())
            .collect();
        let v: Vec<Vec<f32>> = params
            .iter()
            .map(|t| t.iter().map(|v| v * v).collect())
            .collect();
        Checkpoint {
            state: TrainState {
                spec,
                optimizer: Optimizer::Adam(Adam::default()),
                step: 17,
                params,
                m,
                v,
            },
            position: Position { epoch: 2, batch: 5 },
            seed: 9,
            batch_size: 32,
            curve: vec![(1, 1.5), (17, 0.25)],
            columns: Some(Columns {
                features: vec!["a".into(), "b".into()],
                targets: vec!["class".into()],
            }),
        }
    }

    #[test]
    fn round_trip_and_latest() {
        let dir = tempfile::tempdir().unwrap();
        let c = checkpoint();
        save(&dir.path().join(file_name(17)), &c).unwrap();
        save(&dir.path().join(file_name(9)), &c).unwrap();
        let newest = latest(dir.path()).unwrap().unwrap();
        assert!(newest.ends_with("step-00000017.ckpt"));
        assert_eq!(load(&newest).unwrap(), c);
        // A checkpoint without column names (synthetic data, or one written before they were
        // kept) loads without them.
        let unnamed = Checkpoint {
            columns: None,
            ..c.clone()
        };
        save(&dir.path().join(file_name(20)), &unnamed).unwrap();
        assert_eq!(
            load(&latest(dir.path()).unwrap().unwrap()).unwrap(),
            unnamed
        );
        assert_eq!(latest(&dir.path().join("none")).unwrap(), None);
    }

    #[test]
    fn every_flipped_byte_and_truncation_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.ckpt");
        save(&p, &checkpoint()).unwrap();
        let good = std::fs::read(&p).unwrap();
        for i in (0..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&p, &bad).unwrap();
            let e = load(&p).unwrap_err().to_string();
            assert!(e.contains("c.ckpt"), "byte {i}: {e}");
        }
        std::fs::write(&p, &good[..good.len() - 5]).unwrap();
        assert!(
            load(&p)
                .unwrap_err()
                .to_string()
                .contains("corrupt or truncated")
        );
    }

    /// The digest is plain SHA-256, so anyone can seal a file: a crafted header's lengths and
    /// network must be refused as errors, never trusted (an overflow would panic or wrap).
    #[test]
    fn crafted_lengths_and_networks_are_refused_not_trusted() {
        let seal = |body: Vec<u8>| {
            let mut out = body;
            let digest = ring::digest::digest(&ring::digest::SHA256, &out);
            out.extend_from_slice(digest.as_ref());
            out
        };
        let with_header = |len: u64, json: &[u8], tail: &[u8]| {
            let mut body = MAGIC.to_vec();
            body.extend_from_slice(&len.to_le_bytes());
            body.extend_from_slice(json);
            body.extend_from_slice(tail);
            seal(body)
        };
        let path = Path::new("c.ckpt");
        let err = |bytes: Vec<u8>| from_bytes(&bytes, path).unwrap_err().to_string();
        assert!(err(with_header(u64::MAX - 8, b"{}", b"")).contains("runs past the end"));
        assert!(err(with_header(1 << 40, b"{}", b"")).contains("runs past the end"));
        let good = to_bytes(&checkpoint());
        let json_len = u64::from_le_bytes(good[MAGIC.len()..MAGIC.len() + 8].try_into().unwrap());
        let json_at = MAGIC.len() + 8;
        let header: serde_json::Value =
            serde_json::from_slice(&good[json_at..json_at + json_len as usize]).unwrap();
        for sizes in [
            serde_json::json!([]),
            serde_json::json!([3]),
            serde_json::json!([2, 0, 2]),
            serde_json::json!([1u64 << 40, 1u64 << 40]),
        ] {
            let mut h = header.clone();
            h["spec"]["sizes"] = sizes.clone();
            let json = serde_json::to_vec(&h).unwrap();
            let bytes = with_header(
                json.len() as u64,
                &json,
                &good[json_at + json_len as usize..good.len() - DIGEST],
            );
            assert!(err(bytes).contains("tensor sizes do not match"), "{sizes}");
        }
        // Tensor lengths whose total overflows.
        let mut h = header.clone();
        h["spec"]["sizes"] = serde_json::json!([1u64 << 62, 2]);
        h["tensors"] = serde_json::json!([1u64 << 63, 2]);
        let json = serde_json::to_vec(&h).unwrap();
        assert!(err(with_header(json.len() as u64, &json, b"")).contains("c.ckpt"));
    }

    /// A path that is not a regular file (`/dev/zero` never ends) is refused before reading.
    #[test]
    fn a_checkpoint_that_is_not_a_regular_file_is_refused() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(load(Path::new("/dev/zero")).map(|_| ())));
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("refused within a minute, not read forever");
        assert!(
            result
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
    }
}
