//! Datasets for training: CSV files with a header, a binary `f32` format, and the built-in
//! synthetic sets. Malformed input is refused with its file, line (or row) and column.
//!
//! The binary format (`.f32`), little-endian: the 8 bytes `GNTRYF32`, a `u32` version (1), a
//! `u64` row count, a `u32` feature count and a `u32` target count per row, then each row's
//! features followed by its targets as `f32`.

use std::io::{Read as _, Write as _};
use std::path::Path;

use gantry_kernels::{Dataset, Loss, synthetic};
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::config::{Synthetic, TrainConfig};
use super::csv::{CsvReader, Targets};
use super::limits::TrainLimits;

const MAGIC: &[u8; 8] = b"GNTRYF32";
const HEADER: usize = 8 + 4 + 8 + 4 + 4;

/// A job's data, split and described.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Rows trained on.
    pub train: Dataset,
    /// Rows held out for evaluation.
    pub test: Dataset,
    /// The network's output width: classes, or target columns.
    pub outputs: usize,
    /// Where the rows came from, for summaries.
    pub source: String,
    /// The CSV columns the network reads and predicts, when the data came from a CSV file.
    pub columns: Option<Columns>,
    /// `[data] test_file`, read and checked against the training data.
    pub test_file: Option<TestSet>,
}

/// The named columns of a CSV dataset: what a model trained on it reads and predicts, kept in
/// its checkpoints so that new data can be checked and scored by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Columns {
    /// Feature columns, in the order the network reads them.
    pub features: Vec<String>,
    /// The class column (classification) or the target columns (regression).
    pub targets: Vec<String>,
}

/// Rows to score a model on, and where they came from.
#[derive(Debug, Clone)]
pub struct TestSet {
    /// The file, for summaries.
    pub source: String,
    /// The rows.
    pub data: Dataset,
}

/// Loads (or generates) `config`'s data and holds out its test fraction after a seeded shuffle;
/// every size the data implies is bounded by `limits` first.
pub fn load(config: &TrainConfig, limits: &TrainLimits) -> Result<Loaded, TrainError> {
    let d = &config.data;
    let mut columns = None;
    let (data, source, first_line) = match (&d.synthetic, &d.file) {
        (Some(s), _) => (
            generate(s, config.seed),
            format!("synthetic {}", name(s)),
            None,
        ),
        (None, Some(path)) => {
            let (data, first_line) = match path.extension().and_then(|e| e.to_str()) {
                Some("f32") => (read_f32(path, limits)?, None),
                // Row 0 is on line 2, under the header.
                Some("csv") => {
                    let (label, targets) = (d.label.as_deref(), d.targets.as_deref());
                    let (data, named) = read_csv_with(path, label, targets, None, limits)?;
                    columns = Some(named);
                    (data, Some(2))
                }
                _ => {
                    return Err(TrainError::invalid(
                        path,
                        None,
                        "unknown data format: name the file `.csv` or `.f32`",
                    ));
                }
            };
            (data, path.display().to_string(), first_line)
        }
        (None, None) => {
            return Err(TrainError::Unavailable(format!(
                "dataset `{}` lives in a daemon's store: submit the job to `gantry up`",
                d.dataset.as_deref().unwrap_or("?")
            )));
        }
    };
    let mut loaded = prepare(config, data, source, limits, first_line)?;
    loaded.columns = columns;
    if let Some(path) = &d.test_file {
        let data = super::score::read_for(
            path,
            &super::score::Expected {
                inputs: loaded.train.inputs,
                targets_per_row: loaded.train.targets_per_row,
                classes: (config.model.loss == Loss::SoftmaxCrossEntropy).then_some(loaded.outputs),
                columns: loaded.columns.as_ref(),
                limits: limits.clone(),
            },
            d.label.as_deref(),
            d.targets.as_deref(),
        )?;
        loaded.test_file = Some(TestSet {
            source: path.display().to_string(),
            data,
        });
    }
    Ok(loaded)
}

/// Holds out `config`'s test fraction of `data` after a seeded shuffle, and works out the
/// network's output width; `source` names the data in messages, and `first_line` is the line
/// of its first row, where it has lines. Its sizes, its class ids and what they imply are
/// checked against `limits` before anything more is allocated.
pub fn prepare(
    config: &TrainConfig,
    data: Dataset,
    source: String,
    limits: &TrainLimits,
    first_line: Option<u64>,
) -> Result<Loaded, TrainError> {
    let d = &config.data;
    let classification = config.model.loss == Loss::SoftmaxCrossEntropy;
    if data.rows() == 0 {
        return Err(TrainError::Unavailable(format!("{source} has no rows")));
    }
    let outputs = if classification {
        if data.targets_per_row != 1 {
            return Err(TrainError::Unavailable(format!(
                "softmax cross-entropy needs one class id per row; {source} has {} targets per row",
                data.targets_per_row
            )));
        }
        classes(config, &data.targets, &source, limits, first_line)?
    } else {
        data.targets_per_row
    };
    config.check_size(
        limits,
        Path::new(&source),
        data.rows() as u64,
        data.inputs as u64,
        data.targets_per_row as u64,
        outputs as u64,
    )?;
    // A seeded shuffle before the split, so files sorted by class still give a fair test set:
    // gathered straight into the two parts, the data held twice at most (a shuffled copy, then
    // the parts copied from it, held it three times: 1.8 times what a job reserved).
    let order = gantry_kernels::rng::Rng::new(config.seed, 0x7E57).permutation(data.rows());
    let test_rows = (data.rows() as f64 * d.test_fraction).round() as usize;
    let (test_order, train_order) = order.split_at(test_rows.min(order.len()));
    let part = |rows: &[usize]| {
        let mut part = Dataset {
            features: Vec::with_capacity(rows.len() * data.inputs),
            targets: Vec::with_capacity(rows.len() * data.targets_per_row),
            ..data
        };
        data.gather(rows, &mut part.features, &mut part.targets);
        part
    };
    let (test, train) = (part(test_order), part(train_order));
    drop(data);
    if train.rows() == 0 {
        return Err(TrainError::Unavailable(format!(
            "{source}: no rows left to train on after holding out {test_rows} for testing"
        )));
    }
    Ok(Loaded {
        train,
        test,
        outputs,
        source,
        columns: None,
        test_file: None,
    })
}

/// The class count of a classification: `[model] classes` when named (every label must be
/// below it), else the largest label + 1, bounded by `limits`. A label that is not a class id
/// (negative, fractional) or is outside the classes is refused with its row (and line).
fn classes(
    config: &TrainConfig,
    labels: &[f32],
    source: &str,
    limits: &TrainLimits,
    first_line: Option<u64>,
) -> Result<usize, TrainError> {
    let bound = config
        .model
        .classes
        .map_or(limits.max_classes, |c| c as u64);
    let at = |row: usize| match first_line {
        Some(line) => format!("line {} (row {row})", line + row as u64),
        None => format!("row {row}"),
    };
    let mut most = 0u64;
    for (row, &label) in labels.iter().enumerate() {
        if !(label >= 0.0 && label.fract() == 0.0) {
            return Err(TrainError::Unavailable(format!(
                "{source}: {}: `{label}` is not a class id (an integer from 0)",
                at(row)
            )));
        }
        // Labels are f32 in memory: beyond 2^24 they are not exact, and far beyond any limit.
        let class = label as u64;
        if class >= bound {
            let why = match config.model.classes {
                Some(c) => format!("outside the {c} classes of `model.classes`"),
                None => format!(
                    "it would make {} classes, above the limit of {bound} (name the class count in `model.classes`)",
                    u128::from(class) + 1
                ),
            };
            return Err(TrainError::Unavailable(format!(
                "{source}: {}: class id {label}: {why}",
                at(row)
            )));
        }
        most = most.max(class);
    }
    Ok(config.model.classes.unwrap_or((most as usize + 1).max(2)))
}

fn name(s: &Synthetic) -> &'static str {
    match s {
        Synthetic::Spirals { .. } => "spirals",
        Synthetic::Regression { .. } => "regression",
        Synthetic::Dense { .. } => "dense",
    }
}

/// The rows of a synthetic set.
pub fn generate(s: &Synthetic, seed: u64) -> Dataset {
    match *s {
        Synthetic::Spirals {
            classes,
            rows_per_class,
            noise,
        } => synthetic::spirals(classes, rows_per_class, noise, seed),
        Synthetic::Regression {
            rows,
            inputs,
            noise,
        } => synthetic::regression(rows, inputs.max(2), noise, seed),
        Synthetic::Dense {
            rows,
            inputs,
            classes,
        } => synthetic::dense_classes(rows, inputs, classes, seed),
    }
}

/// Reads a CSV file with a header under the default [`TrainLimits`]: `label` names an integer
/// class column (classification) or `targets` the target columns (regression); every other
/// column is a feature.
pub fn read_csv(
    path: &Path,
    label: Option<&str>,
    targets: Option<&[String]>,
) -> Result<Dataset, TrainError> {
    read_csv_with(path, label, targets, None, &TrainLimits::default()).map(|(data, _)| data)
}

/// [`read_csv`] under `limits`, also returning the columns; with `classes`, a class id that is
/// not below it is refused with its line.
pub fn read_csv_with(
    path: &Path,
    label: Option<&str>,
    targets: Option<&[String]>,
    classes: Option<usize>,
    limits: &TrainLimits,
) -> Result<(Dataset, Columns), TrainError> {
    let targets = csv_targets(path, label, targets)?;
    let reader = CsvReader::new(open_regular(path)?.0, path, targets, classes, limits)?;
    let columns = reader.columns().expect("a CSV file has a header");
    Ok((reader.read()?, columns))
}

/// The target columns `[data]` names: `label` or `targets`, one of them.
pub(super) fn csv_targets<'a>(
    path: &Path,
    label: Option<&'a str>,
    targets: Option<&'a [String]>,
) -> Result<Targets<'a>, TrainError> {
    match (label, targets) {
        (Some(l), None) => Ok(Targets::Label(l)),
        (None, Some(t)) if !t.is_empty() => Ok(Targets::Named(t)),
        _ => Err(TrainError::invalid(
            path,
            None,
            "name the class column (`label = \"...\"`) or the target columns \
             (`targets = [...]`) in [data]",
        )),
    }
}

/// Opens `path` for streaming if it is a regular file, with its length (see
/// [`crate::plugin::files::open_named`]: a FIFO, a device such as `/dev/zero` or a directory
/// could hang the reader or never end).
pub fn open_regular(path: &Path) -> Result<(std::fs::File, u64), TrainError> {
    crate::plugin::files::open_named(path).map_err(|e| TrainError::io(path, e.into_io()))
}

/// The bytes of the regular file `path`, refused unless it holds at most `max` bytes.
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, TrainError> {
    crate::plugin::files::read_named(path, max).map_err(|e| TrainError::io(path, e.into_io()))
}

/// Reads the binary `f32` format. The sizes its header promises are checked against the file's
/// length and against `limits` (rows, features, the job's memory) before anything is allocated
/// for them, and the rows are converted as they stream: a 16 GB file within its header's promise
/// was read whole, then copied, before its row count was ever compared with a limit.
pub fn read_f32(path: &Path, limits: &TrainLimits) -> Result<Dataset, TrainError> {
    let (file, len) = open_regular(path)?;
    let invalid = |m: String| TrainError::invalid(path, None, m);
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file.take(len));
    let mut header = [0u8; HEADER];
    if len < HEADER as u64 || reader.read_exact(&mut header).is_err() || &header[..8] != MAGIC {
        return Err(invalid(
            "not a Gantry f32 dataset (no `GNTRYF32` header)".into(),
        ));
    }
    let u32_at = |o: usize| u32::from_le_bytes(header[o..o + 4].try_into().expect("4 bytes"));
    let version = u32_at(8);
    if version != 1 {
        return Err(invalid(format!(
            "format version {version}; this build reads 1"
        )));
    }
    let rows = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    let (inputs, targets) = (u32_at(20) as usize, u32_at(24) as usize);
    let width = inputs + targets;
    let want = (rows as u128) * (width as u128) * 4 + HEADER as u128;
    if inputs == 0 || want != u128::from(len) {
        return Err(invalid(format!(
            "the header promises {rows} rows of {inputs} features and {targets} targets \
             ({want} bytes), the file has {len} bytes"
        )));
    }
    super::limits::RowBudget::new(limits)
        .take(rows, inputs, targets)
        .map_err(|m| invalid(format!("the header promises {m}")))?;
    // Within the budget, so these sizes fit in memory and in `usize`.
    let rows = rows as usize;
    let mut data = Dataset {
        inputs,
        targets_per_row: targets,
        features: Vec::with_capacity(rows * inputs),
        targets: Vec::with_capacity(rows * targets),
    };
    let mut row_bytes = vec![0u8; width * 4];
    for row in 0..rows {
        reader
            .read_exact(&mut row_bytes)
            .map_err(|e| TrainError::io(path, e))?;
        for (j, v) in row_bytes.chunks_exact(4).enumerate() {
            let v = f32::from_le_bytes(v.try_into().expect("4 bytes"));
            if !v.is_finite() {
                return Err(invalid(format!(
                    "row {row}, value {j}: not a finite number"
                )));
            }
            if j < inputs {
                data.features.push(v);
            } else {
                data.targets.push(v);
            }
        }
    }
    Ok(data)
}

/// Writes the binary `f32` format incrementally (the row count is filled in at the end), through
/// a temporary file renamed into place by [`F32Writer::finish`]: memory stays bounded by one
/// chunk whatever the dataset's size, and a failed run leaves nothing behind.
pub struct F32Writer {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    rows: u64,
    inputs: usize,
}

impl F32Writer {
    /// Starts `path` for rows of `inputs` features and no targets.
    pub fn create(path: &Path, inputs: usize) -> Result<Self, TrainError> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        let mut w = Self {
            path: path.to_path_buf(),
            tmp,
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            rows: 0,
            inputs,
        };
        w.write(&[0u8; HEADER])?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), TrainError> {
        self.out
            .write_all(bytes)
            .map_err(|e| TrainError::io(&self.tmp, e))
    }

    /// Appends rows (`values.len()` a multiple of the feature count).
    pub fn push(&mut self, values: &[f32]) -> Result<(), TrainError> {
        if self.inputs == 0 || !values.len().is_multiple_of(self.inputs) {
            return Err(TrainError::invalid(
                &self.path,
                None,
                format!("{} values are not rows of {}", values.len(), self.inputs),
            ));
        }
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.write(&bytes)?;
        self.rows += (values.len() / self.inputs) as u64;
        Ok(())
    }

    /// Writes the header, syncs and renames into place; returns the row count.
    pub fn finish(mut self) -> Result<u64, TrainError> {
        use std::io::{Seek, SeekFrom};
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&1u32.to_le_bytes());
        header.extend_from_slice(&self.rows.to_le_bytes());
        header.extend_from_slice(&(self.inputs as u32).to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        let tmp = self.tmp.clone();
        let io = |e| TrainError::io(&tmp, e);
        self.out.flush().map_err(io)?;
        let file = self.out.get_mut();
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(|e| TrainError::io(&self.path, e))?;
        Ok(self.rows)
    }

    /// Abandons the file.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Writes `data` in the binary `f32` format, atomically.
pub fn write_f32(path: &Path, data: &Dataset) -> Result<(), TrainError> {
    let mut out = Vec::with_capacity(HEADER + 4 * (data.features.len() + data.targets.len()));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(data.rows() as u64).to_le_bytes());
    out.extend_from_slice(&(data.inputs as u32).to_le_bytes());
    out.extend_from_slice(&(data.targets_per_row as u32).to_le_bytes());
    for r in 0..data.rows() {
        let f = &data.features[r * data.inputs..(r + 1) * data.inputs];
        let t = &data.targets[r * data.targets_per_row..(r + 1) * data.targets_per_row];
        for v in f.iter().chain(t) {
            out.write_all(&v.to_le_bytes()).expect("writing to a Vec");
        }
    }
    super::checkpoint::write_atomically(path, &out)
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by a review: a job held its data three times at once while loading it (as read,
    /// shuffled, then split into parts), 1.8 times what it reserved from the training budget,
    /// and several at once took the daemon past the budget. What loading holds at once, for
    /// shapes of data of each kind, stays within the estimate its reservation is made from.
    #[test]
    fn loading_a_jobs_data_holds_no_more_than_its_memory_estimate() {
        for (synthetic, hidden) in [
            (
                r#"{ kind = "regression", rows = 400000, inputs = 2 }"#,
                "[1]",
            ),
            (
                r#"{ kind = "regression", rows = 20000, inputs = 64 }"#,
                "[4]",
            ),
            (
                r#"{ kind = "spirals", classes = 3, rows_per_class = 100000 }"#,
                "[1]",
            ),
        ] {
            let loss = if synthetic.contains("spirals") {
                "softmax_cross_entropy"
            } else {
                "mse"
            };
            let text = format!(
                "seed = 1\nepochs = 1\nbatch_size = 64\n\
                 data.synthetic = {synthetic}\n\
                 model = {{ hidden = {hidden}, loss = \"{loss}\" }}\n\
                 optimizer = {{ kind = \"sgd\", lr = 0.01 }}\n"
            );
            let config = TrainConfig::parse(&text, "t.toml".as_ref()).unwrap();
            let limits = TrainLimits::default();
            let (loaded, held) = crate::test_alloc::peak_during(|| load(&config, &limits));
            loaded.unwrap();
            let reserved = config.memory_bound_mib(&limits) << 20;
            assert!(
                held <= reserved,
                "{synthetic}: loading held {held} bytes, the estimate reserves {reserved}"
            );
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn csv_with_a_label_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "d.csv", "x,class,y\n0.5,1,2\n-1,0,3e-1\n");
        let d = read_csv(&p, Some("class"), None).unwrap();
        assert_eq!((d.inputs, d.targets_per_row, d.rows()), (2, 1, 2));
        assert_eq!(d.features, [0.5, 2.0, -1.0, 0.3]);
        assert_eq!(d.targets, [1.0, 0.0]);
        let r = read_csv(&p, None, Some(&["y".into(), "x".into()])).unwrap();
        assert_eq!((r.inputs, r.targets_per_row), (1, 2));
        assert_eq!(r.targets, [2.0, 0.5, 0.3, -1.0]);
    }

    #[test]
    fn malformed_csv_names_the_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let err = |text: &str, label: &str| {
            let p = write(dir.path(), "bad.csv", text);
            read_csv(&p, Some(label), None).unwrap_err().to_string()
        };
        let e = err("a,b\n1,0\n2,x\n", "b");
        assert!(
            e.ends_with("bad.csv:3: column `b`: `x` is not a finite number"),
            "{e}"
        );
        let e = err("a,b\n1,0\n2,1.5\n", "b");
        assert!(
            e.contains("bad.csv:3: column `b`: class ids are integers"),
            "{e}"
        );
        let e = err("a,b\n1,0,7\n", "b");
        assert!(e.contains("bad.csv:2:"), "{e}");
        let e = err("a,b\n1,0\n", "c");
        assert!(e.contains("bad.csv:1: no column `c`"), "{e}");
        let e = err("a,b\nnan,0\n", "b");
        assert!(e.contains("column `a`: `nan`"), "{e}");
    }

    #[test]
    fn binary_round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let data = synthetic::regression(10, 3, 0.1, 1);
        let p = dir.path().join("d.f32");
        write_f32(&p, &data).unwrap();
        let limits = TrainLimits::default();
        assert_eq!(read_f32(&p, &limits).unwrap(), data);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 2]).unwrap();
        let e = read_f32(&p, &limits).unwrap_err().to_string();
        assert!(e.contains("promises 10 rows") && e.contains("d.f32"), "{e}");
        std::fs::write(&p, b"hello world, not data at all").unwrap();
        let e = read_f32(&p, &limits).unwrap_err().to_string();
        assert!(e.contains("GNTRYF32"), "{e}");
    }

    /// An `.f32` file as large as its header says, but beyond the operator's limits, was read
    /// whole and then copied before its rows were counted against them: a 64 GiB file asked for
    /// 64 GiB at once and aborted the process (the daemon with it). Its header is checked
    /// against the limits first now, and nothing is allocated for it.
    #[test]
    fn an_f32_file_beyond_the_limits_is_refused_from_its_header_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let header = |rows: u64, inputs: u32, targets: u32| {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&1u32.to_le_bytes());
            bytes.extend_from_slice(&rows.to_le_bytes());
            bytes.extend_from_slice(&inputs.to_le_bytes());
            bytes.extend_from_slice(&targets.to_le_bytes());
            bytes
        };
        // Sparse: 64 GiB of zero rows (valid, finite values) that take no disk.
        let p = dir.path().join("huge.f32");
        std::fs::write(&p, header(1 << 28, 63, 1)).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        file.set_len(HEADER as u64 + (1u64 << 28) * 64 * 4).unwrap();
        let limits = TrainLimits::default();
        let e = read_f32(&p, &limits).unwrap_err().to_string();
        assert!(
            e.contains("huge.f32") && e.contains("more than 20000000 rows"),
            "{e}"
        );
        // Within the rows but not the memory, and no rows but 2^32 - 1 targets each.
        let small = TrainLimits {
            max_memory_mib: 1,
            ..TrainLimits::default()
        };
        let p = write(dir.path(), "wide.f32", "");
        std::fs::write(&p, header(1 << 12, 127, 1)).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        file.set_len(HEADER as u64 + (1u64 << 12) * 128 * 4)
            .unwrap();
        let e = read_f32(&p, &small).unwrap_err().to_string();
        assert!(e.contains("job memory limit of 1 MiB"), "{e}");
        std::fs::write(&p, header(0, 1, u32::MAX)).unwrap();
        let e = read_f32(&p, &limits).unwrap_err().to_string();
        assert!(e.contains("4294967295 targets per row"), "{e}");
    }
}
