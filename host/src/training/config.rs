//! `TRAIN.toml`: what to train, on what, for how long.
//!
//! ```toml
//! seed = 42
//! epochs = 30
//! batch_size = 64
//!
//! [data]
//! synthetic = { kind = "spirals", classes = 3, rows_per_class = 500, noise = 0.2 }
//! # or: file = "train.csv", label = "class"   (classification: an integer class column)
//! # or: file = "train.csv", targets = ["y"]   (regression: the target columns)
//! # or: file = "train.f32"                    (the binary format, see `training::data`)
//! test_fraction = 0.2
//! # test_file = "test.csv"                    (also scored after training: same columns)
//!
//! [model]
//! hidden = [64, 64]
//! activation = "relu"
//! loss = "softmax_cross_entropy"      # or "mse"
//!
//! [optimizer]
//! kind = "adam"                       # or "sgd" (lr, momentum, weight_decay)
//! lr = 0.01                           # > 0
//! # beta1 = 0.9, beta2 = 0.999          (each in [0, 1)); eps = 1e-8 (> 0)
//! # weight_decay = 0.0                  (>= 0; AdamW's lr * weight_decay below 1)
//!
//! [devices]
//! backend = "auto"                    # auto | cpu | cuda
//! replicas = 1                        # data-parallel replicas (GPUs, or CPU thread groups)
//! threads = 0                         # CPU threads in all (0: every core)
//! precision = "f32"                   # GEMM inputs: f32 | tf32 (CUDA) | bf16 (CUDA or AMX)
//!
//! [checkpoint]
//! dir = "checkpoints"
//! every_steps = 100                   # also one at the end
//! ```
//!
//! A run whose loss or parameters turn NaN or infinite stops there with an error (see
//! [`super::TrainError::Diverged`]); no checkpoint is written from that step on.

use std::path::{Path, PathBuf};

use gantry_kernels::{Activation, Loss, Optimizer, Precision};
use serde::Deserialize;

use super::TrainError;
use super::limits::TrainLimits;

mod text;
pub use text::{TrainData, TrainToml};

/// A parsed, checked `TRAIN.toml`. A relative data file is found beside the config (data ships
/// with it); a relative checkpoint directory is under the working directory (outputs go where
/// the job runs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Seeds initialisation, shuffling and synthetic data.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Passes over the training rows.
    pub epochs: u64,
    /// Rows per optimizer step (split across replicas).
    pub batch_size: usize,
    /// The data.
    pub data: DataConfig,
    /// The network.
    pub model: ModelConfig,
    /// The optimizer.
    pub optimizer: Optimizer,
    /// Where to run.
    #[serde(default)]
    pub devices: DevicesConfig,
    /// Where and how often to checkpoint; none without this table.
    #[serde(default)]
    pub checkpoint: Option<CheckpointConfig>,
}

fn default_seed() -> u64 {
    42
}

/// Where rows come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A data file: `.csv` (with a header) or `.f32` (binary).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// CSV classification: the integer class-id column.
    #[serde(default)]
    pub label: Option<String>,
    /// CSV regression: the target columns.
    #[serde(default)]
    pub targets: Option<Vec<String>>,
    /// A built-in generated set instead of a file.
    #[serde(default)]
    pub synthetic: Option<Synthetic>,
    /// A dataset stored in the daemon (its jobs only): CSV records without a header.
    #[serde(default)]
    pub dataset: Option<String>,
    /// With `dataset`: the 0-based column of class ids (or targets, for MSE); every other
    /// column is a feature.
    #[serde(default)]
    pub label_column: Option<usize>,
    /// With `dataset`: the shipped preprocessing plugin the feature columns stream through
    /// (`standardize`, `onehot`, ...), in the sandbox; none: the numbers as they are.
    #[serde(default)]
    pub preprocess: Option<String>,
    /// Fraction of rows held out for evaluation (after a seeded shuffle).
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// A separate test set (`.csv` with the training file's columns, or `.f32` of the same
    /// width), scored after training beside the held-out rows; found beside the config.
    #[serde(default)]
    pub test_file: Option<PathBuf>,
}

fn default_test_fraction() -> f64 {
    0.2
}

/// Built-in generated datasets.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Synthetic {
    /// Interleaved spiral arms in the plane (classification).
    Spirals {
        /// Arms (classes).
        classes: usize,
        /// Points per arm.
        rows_per_class: usize,
        /// Angular noise.
        #[serde(default = "default_noise")]
        noise: f32,
    },
    /// A smooth non-linear function of `inputs` features (regression, one target).
    Regression {
        /// Rows.
        rows: usize,
        /// Features (at least 2).
        inputs: usize,
        /// Target noise.
        #[serde(default = "default_noise")]
        noise: f32,
    },
    /// Noisy class centroids in `inputs` dimensions (classification; MNIST-shaped benchmarks).
    Dense {
        /// Rows.
        rows: usize,
        /// Features.
        inputs: usize,
        /// Classes.
        classes: usize,
    },
}

fn default_noise() -> f32 {
    0.2
}

/// The network between the data's inputs and outputs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Hidden activation.
    #[serde(default)]
    pub activation: Activation,
    /// The loss; it also fixes the output width (classes, or target columns).
    pub loss: Loss,
    /// Classification: the number of classes (labels are `0..classes`; a label outside is
    /// refused with its line). Without it, the labels imply it (the largest label + 1),
    /// bounded by the limits.
    #[serde(default)]
    pub classes: Option<usize>,
}

/// Device choice and data parallelism.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesConfig {
    /// Which backend.
    #[serde(default)]
    pub backend: super::BackendChoice,
    /// Data-parallel replicas.
    #[serde(default = "one")]
    pub replicas: usize,
    /// CPU threads in all, shared among replicas (0: every core).
    #[serde(default)]
    pub threads: usize,
    /// GEMM input precision: tf32 on CUDA only, bf16 on CUDA or a CPU with Intel AMX.
    #[serde(default)]
    pub precision: Precision,
}

fn one() -> usize {
    1
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self {
            backend: super::BackendChoice::Auto,
            replicas: 1,
            threads: 0,
            precision: Precision::F32,
        }
    }
}

/// Checkpointing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Directory for checkpoint files (created if missing), relative to the working directory.
    /// A daemon's jobs checkpoint into the encrypted store instead.
    #[serde(default = "default_checkpoint_dir")]
    pub dir: PathBuf,
    /// Steps between checkpoints (0: only at the end).
    #[serde(default)]
    pub every_steps: u64,
}

fn default_checkpoint_dir() -> PathBuf {
    PathBuf::from("checkpoints")
}

impl TrainConfig {
    /// Reads and checks `path` under the default [`TrainLimits`].
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        Self::load_with(path, &TrainLimits::default())
    }

    /// Reads and checks `path`, every size it implies bounded by `limits`.
    pub fn load_with(path: &Path, limits: &TrainLimits) -> Result<Self, TrainError> {
        let text = crate::plugin::files::read_text(path).map_err(|e| TrainError::io(path, e))?;
        let mut config = Self::parse_with(&text, path, limits)?;
        let base = path.parent().unwrap_or(Path::new(""));
        for file in [&mut config.data.file, &mut config.data.test_file]
            .into_iter()
            .flatten()
        {
            *file = base.join(&*file);
        }
        Ok(config)
    }

    /// Parses and checks `text` (named `path` in errors) under the default
    /// [`TrainLimits`]; paths stay as written.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TrainError> {
        Self::parse_with(text, path, &TrainLimits::default())
    }

    /// Parses and checks `text` (named `path` in errors), every size it implies bounded by
    /// `limits`; paths stay as written.
    pub fn parse_with(text: &str, path: &Path, limits: &TrainLimits) -> Result<Self, TrainError> {
        let config: TrainConfig = parse_toml(text, path)?;
        let bad = |(name, message): Bad| TrainError::invalid(path, field_line(text, name), message);
        config.check_run().map_err(bad)?;
        config.check_data().map_err(bad)?;
        config.check_optimizer().map_err(bad)?;
        let synthetic = config.data.synthetic.as_ref();
        synthetic
            .map_or(Ok(()), Synthetic::check_noise)
            .map_err(bad)?;
        config.check_model().map_err(bad)?;
        synthetic
            .map_or(Ok(()), Synthetic::check_size)
            .map_err(bad)?;
        config.check_limits(limits, path, Some(text))?;
        Ok(config)
    }

    /// Epochs, batches, replicas and layer widths: at least one each; a test fraction below 1.
    fn check_run(&self) -> Result<(), Bad> {
        let at_least_one = [
            ("epochs", self.epochs == 0, "`epochs`"),
            ("batch_size", self.batch_size == 0, "`batch_size`"),
            ("replicas", self.devices.replicas == 0, "`devices.replicas`"),
        ];
        if let Some((name, _, field)) = at_least_one.into_iter().find(|c| c.1) {
            return Err((name, format!("{field} must be at least 1")));
        }
        let test_fraction = self.data.test_fraction;
        if !(0.0..1.0).contains(&test_fraction) {
            return Err((
                "test_fraction",
                format!("`data.test_fraction` must be in [0, 1), not {test_fraction}"),
            ));
        }
        if self.model.hidden.contains(&0) {
            return Err(("hidden", "`model.hidden` widths must be at least 1".into()));
        }
        Ok(())
    }

    /// Exactly one source of rows, and the fields that go with it.
    fn check_data(&self) -> Result<(), Bad> {
        let d = &self.data;
        let sources = [d.file.is_some(), d.synthetic.is_some(), d.dataset.is_some()];
        let fault = if sources.iter().filter(|s| **s).count() != 1 {
            Some("`[data]` needs exactly one of `file`, `synthetic` and `dataset`")
        } else if d.dataset.is_some() != d.label_column.is_some()
            || (d.preprocess.is_some() && d.dataset.is_none())
        {
            Some(
                "`dataset` goes with `label_column` (and optionally `preprocess`), and only with them",
            )
        } else if d.test_file.is_some() && d.dataset.is_some() {
            return Err((
                "test_file",
                "`test_file` goes with `file` or `synthetic`: a daemon's job scores its held-out rows".into(),
            ));
        } else if d.file.is_none()
            && d.synthetic.is_some()
            && (d.label.is_some() || d.targets.is_some())
            && d.test_file.is_none()
        {
            Some(
                "`label` and `targets` name CSV columns; a synthetic set has none (they may \
                 name a CSV `test_file`'s)",
            )
        } else {
            None
        };
        fault.map_or(Ok(()), |m| Err(("[data]", m.into())))
    }

    /// Every optimizer setting inside its range (the kernels' [`Optimizer::invalid_setting`],
    /// the one place the ranges are written).
    fn check_optimizer(&self) -> Result<(), Bad> {
        self.optimizer.invalid_setting().map_or(Ok(()), Err)
    }

    /// `model.classes`: for a classification only, and at least 2.
    fn check_model(&self) -> Result<(), Bad> {
        let classification = self.model.loss == Loss::SoftmaxCrossEntropy;
        match self.model.classes {
            Some(_) if !classification => Err((
                "classes",
                "`model.classes` is for softmax cross-entropy; a regression's outputs are its target columns".into(),
            )),
            Some(c) if c < 2 => Err((
                "classes",
                format!("`model.classes` must be at least 2, not {c}"),
            )),
            _ => Ok(()),
        }
    }
}

impl Synthetic {
    /// The rows, features and classes (for a classification) its generator makes.
    pub fn shape(&self) -> (u128, u64, Option<u64>) {
        match *self {
            Synthetic::Spirals {
                classes,
                rows_per_class,
                ..
            } => (
                classes as u128 * rows_per_class as u128,
                2,
                Some(classes as u64),
            ),
            Synthetic::Regression { rows, inputs, .. } => {
                (rows as u128, inputs.max(2) as u64, None)
            }
            Synthetic::Dense {
                rows,
                inputs,
                classes,
            } => (rows as u128, inputs as u64, Some(classes as u64)),
        }
    }

    /// A finite noise.
    fn check_noise(&self) -> Result<(), Bad> {
        match self {
            Synthetic::Spirals { noise, .. } | Synthetic::Regression { noise, .. }
                if !noise.is_finite() =>
            {
                Err((
                    "synthetic",
                    format!("`data.synthetic` noise must be a finite number, not {noise}"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// No empty set.
    fn check_size(&self) -> Result<(), Bad> {
        let empty = match *self {
            Synthetic::Spirals {
                classes,
                rows_per_class,
                ..
            } => (classes < 2)
                .then_some("`classes` must be at least 2")
                .or((rows_per_class == 0).then_some("`rows_per_class` must be at least 1")),
            Synthetic::Regression { rows, inputs, .. } => (rows == 0)
                .then_some("`rows` must be at least 1")
                .or((inputs < 2).then_some("`inputs` must be at least 2")),
            Synthetic::Dense {
                rows,
                inputs,
                classes,
            } => (classes < 2)
                .then_some("`classes` must be at least 2")
                .or((rows == 0).then_some("`rows` must be at least 1"))
                .or((inputs == 0).then_some("`inputs` must be at least 1")),
        };
        match empty {
            Some(message) => Err(("synthetic", format!("`data.synthetic`: {message}"))),
            None => Ok(()),
        }
    }
}

/// A field that is wrong: the name its line starts with, and what is wrong.
pub(super) type Bad = (&'static str, String);

/// The 1-based line of `text` on which field `name` is set, if any.
pub(super) fn field_line(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .position(|l| l.trim_start().starts_with(name))
        .map(|i| i as u64 + 1)
}

/// Deserialises TOML `text` (named `path` in errors, with the line of the fault).
pub(super) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, TrainError> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start].lines().count().max(1) as u64);
        TrainError::invalid(path, line, e.message().trim().to_string())
    })
}

#[cfg(test)]
mod props;

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::training) const GOOD: &str = r#"
seed = 7
epochs = 3
batch_size = 32
[data]
synthetic = { kind = "spirals", classes = 3, rows_per_class = 100 }
[model]
hidden = [16]
loss = "softmax_cross_entropy"
[optimizer]
kind = "adam"
lr = 0.01
"#;

    #[test]
    fn a_good_file_parses_with_defaults() {
        let c = TrainConfig::parse(GOOD, "t.toml".as_ref()).unwrap();
        assert_eq!(c.seed, 7);
        assert_eq!(c.devices, DevicesConfig::default());
        assert_eq!(c.data.test_fraction, 0.2);
        assert_eq!(c.model.activation, Activation::Relu);
        let Optimizer::Adam(a) = c.optimizer else {
            panic!("adam")
        };
        assert_eq!((a.lr, a.beta1), (0.01, 0.9));
    }

    /// Found by the property tests: NaN and infinite hyper-parameters were accepted (only `lr`
    /// was checked), and a job then trained on NaN data or with NaN updates to a NaN loss.
    #[test]
    fn non_finite_hyperparameters_are_refused_naming_the_field() {
        let spirals = "synthetic = { kind = \"spirals\", classes = 3, rows_per_class = 100 }";
        for (from, to, field) in [
            (
                spirals,
                "synthetic = { kind = \"spirals\", classes = 3, rows_per_class = 100, noise = nan }",
                "noise",
            ),
            (
                spirals,
                "synthetic = { kind = \"regression\", rows = 10, inputs = 3, noise = -inf }",
                "noise",
            ),
            ("lr = 0.01", "lr = 0.01\nbeta1 = nan", "beta1"),
            ("lr = 0.01", "lr = 0.01\nbeta2 = inf", "beta2"),
            ("lr = 0.01", "lr = 0.01\neps = nan", "eps"),
            (
                "lr = 0.01",
                "lr = 0.01\nweight_decay = -inf",
                "weight_decay",
            ),
            (
                "kind = \"adam\"",
                "kind = \"sgd\"\nmomentum = nan",
                "momentum",
            ),
            (
                "kind = \"adam\"",
                "kind = \"sgd\"\nweight_decay = inf",
                "weight_decay",
            ),
        ] {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD);
            let e = TrainConfig::parse(&text, "t.toml".as_ref())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("t.toml:") && e.contains(field), "{to}: {e}");
            assert!(["NaN", "inf"].iter().any(|v| e.contains(v)), "{to}: {e}");
        }
    }

    /// Found by a hostile config: `beta1 = 1`, `beta2 = 1.5` and `eps = 0` were accepted and
    /// trained to a NaN loss that `gantry train` reported as a success.
    #[test]
    fn optimizer_settings_outside_their_range_are_refused_naming_the_line() {
        for (to, want) in [
            (
                "lr = 0.01\nbeta1 = 1.0",
                "t.toml:13: `optimizer.beta1` must be in [0, 1), not 1",
            ),
            (
                "lr = 0.01\nbeta2 = 1.5",
                "t.toml:13: `optimizer.beta2` must be in [0, 1), not 1.5",
            ),
            (
                "lr = 0.01\neps = 0.0",
                "t.toml:13: `optimizer.eps` must be a positive",
            ),
            (
                "lr = 0.01\nweight_decay = 200.0",
                "t.toml:13: `optimizer.weight_decay`",
            ),
        ] {
            let e = TrainConfig::parse(&GOOD.replace("lr = 0.01", to), "t.toml".as_ref())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{to}: {e}");
        }
    }

    /// Found by the property tests: `inputs` of a regression set below 2 was accepted and
    /// silently generated with 2 features, so the limits checked a width the data did not have.
    #[test]
    fn regression_synthetic_with_fewer_than_two_inputs_is_refused() {
        for inputs in [0, 1] {
            let text = GOOD
                .replace(
                    "kind = \"spirals\", classes = 3, rows_per_class = 100",
                    &format!("kind = \"regression\", rows = 10, inputs = {inputs}"),
                )
                .replace("softmax_cross_entropy", "mse");
            let e = TrainConfig::parse(&text, "t.toml".as_ref())
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("t.toml:6:") && e.contains("`inputs` must be at least 2"),
                "{e}"
            );
        }
    }

    #[test]
    fn errors_name_the_file_line_and_field() {
        let err = |text: &str| {
            TrainConfig::parse(text, "t.toml".as_ref())
                .unwrap_err()
                .to_string()
        };
        let e = err(&GOOD.replace("batch_size = 32", "batch_size = \"x\""));
        assert!(
            e.starts_with("t.toml:4:") && e.contains("invalid type"),
            "{e}"
        );
        let e = err(&GOOD.replace("hidden = [16]", "hidden = [16]\nwidth = 3"));
        assert!(
            e.starts_with("t.toml:") && e.contains("unknown field `width`"),
            "{e}"
        );
        let e = err(&GOOD.replace("epochs = 3", "epochs = 0"));
        assert!(e.starts_with("t.toml:3:") && e.contains("epochs"), "{e}");
        let e = err(&GOOD.replace("lr = 0.01", "lr = -1"));
        assert!(e.contains("optimizer.lr"), "{e}");
        let e = err(&GOOD.replace("synthetic = {", "file = \"x.csv\"\nsynthetic = {"));
        assert!(
            e.contains("exactly one of `file`, `synthetic` and `dataset`"),
            "{e}"
        );
        let e = err(&GOOD.replace("kind = \"adam\"", "kind = \"lbfgs\""));
        assert!(e.contains("lbfgs"), "{e}");
    }

    #[test]
    fn test_file_is_found_beside_the_config_and_not_with_a_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        let text = GOOD.replace(
            "synthetic = {",
            "test_file = \"held/test.f32\"\nsynthetic = {",
        );
        std::fs::write(&path, &text).unwrap();
        let c = TrainConfig::load(&path).unwrap();
        assert_eq!(c.data.test_file, Some(dir.path().join("held/test.f32")));
        // A CSV test file of a synthetic set names its label.
        let named = text.replace("[model]", "label = \"class\"\n[model]");
        TrainConfig::parse(&named, "t.toml".as_ref()).unwrap();
        let stored = GOOD.replace(
            "synthetic = { kind = \"spirals\", classes = 3, rows_per_class = 100 }",
            "dataset = \"d\"\nlabel_column = 0\ntest_file = \"t.csv\"",
        );
        let e = TrainConfig::parse(&stored, "t.toml".as_ref())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.toml:") && e.contains("`test_file` goes with"),
            "{e}"
        );
    }
}
