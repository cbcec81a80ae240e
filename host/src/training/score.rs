//! Scoring a model on new data: `[data] test_file` after training, and `gantry eval` on a
//! checkpoint.
//!
//! The data must fit the model: the same feature columns (by name, in order, when both the model
//! and the file name them; else as many), as many targets, and class ids among the model's
//! classes. Other data is refused with its file and line (or row), before any row is scored.

use std::path::Path;

use gantry_kernels::{CpuBackend, Dataset, Evaluation, Loss, MlpSpec, Trainer};
use serde::Serialize;

use super::TrainError;
use super::checkpoint::Checkpoint;
use super::csv::{CsvReader, Targets};
use super::data::{self, Columns};

/// What a model takes, to check data against.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// Features per row.
    pub inputs: usize,
    /// Targets per row (1 for a class id).
    pub targets_per_row: usize,
    /// For a classification, the number of classes.
    pub classes: Option<usize>,
    /// The CSV columns it was trained on, if known.
    pub columns: Option<&'a Columns>,
    /// The operator's limits on what may be read (rows, features, memory).
    pub limits: super::TrainLimits,
}

impl<'a> Expected<'a> {
    /// What the network `spec` takes, trained on `columns` if known.
    pub fn of(spec: &MlpSpec, columns: Option<&'a Columns>) -> Self {
        Self {
            inputs: spec.inputs(),
            targets_per_row: spec.targets_per_row(),
            classes: (spec.loss == Loss::SoftmaxCrossEntropy).then(|| spec.outputs()),
            columns,
            limits: super::TrainLimits::default(),
        }
    }
}

/// A model's score on a dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    /// The data, named for summaries.
    pub source: String,
    /// Rows scored.
    pub rows: usize,
    /// Mean loss (per row for cross-entropy, per value for MSE).
    pub loss: f64,
    /// Fraction of rows whose largest output is their class (classification only).
    pub accuracy: Option<f64>,
}

impl Score {
    /// `evaluation` of the `rows` of `source`.
    pub fn new(source: String, rows: usize, evaluation: Evaluation) -> Self {
        Self {
            source,
            rows,
            loss: evaluation.loss,
            accuracy: evaluation.accuracy,
        }
    }
}

/// Reads `path` (`.csv` with a header, or `.f32`) as data for a model that takes `expected`.
/// In a CSV, `label` names the class column or `targets` the target columns; without either,
/// the model's own column names are used.
pub fn read_for(
    path: &Path,
    expected: &Expected<'_>,
    label: Option<&str>,
    targets: Option<&[String]>,
) -> Result<Dataset, TrainError> {
    let data = match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => read_csv_for(path, expected, label, targets)?,
        Some("f32") => {
            let data = data::read_f32(path, &expected.limits)?;
            check_f32(path, &data, expected)?;
            data
        }
        _ => {
            return Err(TrainError::invalid(
                path,
                None,
                "unknown data format: name the file `.csv` or `.f32`",
            ));
        }
    };
    if data.rows() == 0 {
        return Err(TrainError::invalid(path, None, "no rows to score"));
    }
    if data.rows() as u64 > expected.limits.max_rows {
        return Err(TrainError::invalid(
            path,
            None,
            format!(
                "{} rows, above the limit of {} rows",
                data.rows(),
                expected.limits.max_rows
            ),
        ));
    }
    Ok(data)
}

fn read_csv_for(
    path: &Path,
    expected: &Expected<'_>,
    label: Option<&str>,
    targets: Option<&[String]>,
) -> Result<Dataset, TrainError> {
    let named = target_columns(path, expected, label, targets)?;
    let targets = match expected.classes {
        Some(_) if named.len() != 1 => {
            return Err(TrainError::invalid(
                path,
                None,
                format!(
                    "the model is a classification: name one class column, not {}",
                    named.join(", ")
                ),
            ));
        }
        Some(_) => Targets::Label(&named[0]),
        None => Targets::Named(&named),
    };
    let file = data::open_regular(path)?.0;
    let reader = CsvReader::new(file, path, targets, expected.classes, &expected.limits)?;
    // The columns first, from the header alone, so a wrong file is named before its rows.
    let columns = reader.columns().expect("a CSV file has a header");
    check_columns(path, expected, &columns)?;
    reader.read()
}

/// The target columns to score: `label` or `targets` as given, else the model's own.
fn target_columns(
    path: &Path,
    expected: &Expected<'_>,
    label: Option<&str>,
    targets: Option<&[String]>,
) -> Result<Vec<String>, TrainError> {
    match (label, targets, expected.columns) {
        (Some(l), _, _) => Ok(vec![l.to_string()]),
        (None, Some(t), _) => Ok(t.to_vec()),
        (None, None, Some(c)) => Ok(c.targets.clone()),
        (None, None, None) => Err(TrainError::invalid(
            path,
            None,
            "the model names no columns (it was not trained on a CSV file): say which column \
             holds the class ids or the targets (`gantry eval --label` / `--targets`, or \
             `label` / `targets` in [data])",
        )),
    }
}

/// Refuses a file whose feature or target columns are not the model's.
fn check_columns(
    path: &Path,
    expected: &Expected<'_>,
    columns: &Columns,
) -> Result<(), TrainError> {
    let fits = match expected.columns {
        Some(c) => columns.features == c.features,
        None => columns.features.len() == expected.inputs,
    };
    if !fits {
        let takes = match expected.columns {
            Some(c) => c.features.join(", "),
            None => format!("{} features", expected.inputs),
        };
        return Err(TrainError::invalid(
            path,
            Some(1),
            format!(
                "feature columns {}; the model takes {takes}",
                columns.features.join(", ")
            ),
        ));
    }
    if columns.targets.len() != expected.targets_per_row {
        return Err(TrainError::invalid(
            path,
            Some(1),
            format!(
                "{} target columns; the model predicts {}",
                columns.targets.len(),
                expected.targets_per_row
            ),
        ));
    }
    Ok(())
}

fn check_f32(path: &Path, data: &Dataset, expected: &Expected<'_>) -> Result<(), TrainError> {
    if (data.inputs, data.targets_per_row) != (expected.inputs, expected.targets_per_row) {
        return Err(TrainError::invalid(
            path,
            None,
            format!(
                "rows of {} features and {} targets; the model takes {} features and {} targets",
                data.inputs, data.targets_per_row, expected.inputs, expected.targets_per_row
            ),
        ));
    }
    if let Some(classes) = expected.classes {
        let bad = data
            .targets
            .iter()
            .position(|&v| !(v >= 0.0 && v.fract() == 0.0 && v < classes as f32));
        if let Some(row) = bad {
            return Err(TrainError::invalid(
                path,
                None,
                format!(
                    "row {row}: class {} is not one of the model's {classes} classes (0-{})",
                    data.targets[row],
                    classes - 1
                ),
            ));
        }
    }
    Ok(())
}

/// Scores the network of `checkpoint` on `data` (checked with [`read_for`]) on the CPU with
/// `threads` threads (0: every core).
pub fn evaluate(
    checkpoint: &Checkpoint,
    data: &Dataset,
    threads: usize,
) -> Result<Evaluation, TrainError> {
    let backend = CpuBackend::new(threads)?;
    let mut trainer = Trainer::resume(&checkpoint.state, vec![backend])?;
    Ok(trainer.evaluate(data, 1024)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_kernels::Activation;

    fn spec(loss: Loss, outputs: usize) -> MlpSpec {
        MlpSpec {
            sizes: vec![2, 4, outputs],
            activation: Activation::Relu,
            loss,
        }
    }

    #[test]
    fn binary_data_of_another_width_or_class_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.f32");
        let write = |inputs: usize, targets: Vec<f32>| {
            let data = Dataset {
                inputs,
                targets_per_row: 1,
                features: vec![0.5; inputs * targets.len()],
                targets,
            };
            data::write_f32(&path, &data).unwrap();
        };
        let classes = spec(Loss::SoftmaxCrossEntropy, 3);
        let expected = Expected::of(&classes, None);
        write(2, vec![0.0, 2.0, 1.0]);
        assert_eq!(read_for(&path, &expected, None, None).unwrap().rows(), 3);
        write(3, vec![0.0]);
        let e = read_for(&path, &expected, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("d.f32: rows of 3 features"), "{e}");
        write(2, vec![0.0, 1.0, 3.0]);
        let e = read_for(&path, &expected, None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("d.f32: row 2: class 3 is not one of the model's 3 classes"),
            "{e}"
        );
        // A regression takes any finite target.
        let regression = Expected::of(&spec(Loss::Mse, 1), None);
        assert_eq!(read_for(&path, &regression, None, None).unwrap().rows(), 3);
        write(2, vec![]);
        let e = read_for(&path, &regression, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no rows"), "{e}");
    }

    #[test]
    fn csv_columns_are_matched_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        let columns = Columns {
            features: vec!["a".into(), "b".into()],
            targets: vec!["y".into()],
        };
        let expected = Expected::of(&spec(Loss::Mse, 1), Some(&columns));
        // Columns in another order are found by name; the features must keep theirs.
        std::fs::write(&path, "y,a,b\n1,2,3\n").unwrap();
        let d = read_for(&path, &expected, None, None).unwrap();
        assert_eq!(
            (d.features.clone(), d.targets.clone()),
            (vec![2.0, 3.0], vec![1.0])
        );
        std::fs::write(&path, "y,b,a\n1,2,3\n").unwrap();
        let e = read_for(&path, &expected, None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("d.csv:1: feature columns b, a; the model takes a, b"),
            "{e}"
        );
        std::fs::write(&path, "a,b\n1,2\n").unwrap();
        let e = read_for(&path, &expected, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("d.csv:1: no column `y`"), "{e}");
        // Another target column named on the command line.
        std::fs::write(&path, "a,b,z\n1,2,3\n").unwrap();
        let z = ["z".to_string()];
        assert_eq!(
            read_for(&path, &expected, None, Some(&z)).unwrap().targets,
            [3.0]
        );
    }

    /// Data to score that is not a regular file (a device that never ends, a FIFO that blocks)
    /// is refused at once, never read.
    #[test]
    fn data_that_is_not_a_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.csv");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let columns = Columns {
            features: vec!["a".into()],
            targets: vec!["y".into()],
        };
        let model = spec(Loss::Mse, 1);
        // A device behind a name that looks like data, and a directory.
        let zero = dir.path().join("zero.f32");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let folder = dir.path().join("folder.csv");
        std::fs::create_dir(&folder).unwrap();
        for path in [fifo, zero, folder] {
            let (tx, rx) = std::sync::mpsc::channel();
            let (p, m, c) = (path.clone(), model.clone(), columns.clone());
            std::thread::spawn(move || {
                let _ = tx.send(read_for(&p, &Expected::of(&m, Some(&c)), None, None).map(|_| ()));
            });
            let result = rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("{}: refused within a minute", path.display()));
            let e = result.unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{}: {e}", path.display());
        }
        let e = data::read_f32(
            Path::new("/dev/zero"),
            &crate::training::TrainLimits::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = data::read_csv(Path::new("/dev/zero"), Some("y"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
