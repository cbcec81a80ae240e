//! `TRAIN.toml` written from code, for programs that submit or run training jobs (the demo, an
//! embedder, tests): one place spells the format, and [`TrainConfig::parse`] reads it back.

use std::fmt;

use gantry_kernels::Loss;

use super::{Synthetic, TrainConfig};
use crate::training::{BackendChoice, TrainError, TrainLimits};

/// A job's `TRAIN.toml`: a multilayer perceptron trained with Adam on [`TrainData`].
/// [`TrainToml::new`] gives the values of a small job; set the fields that differ. Its
/// `Display` is the TOML text (what the daemon's API takes as a job's `train`).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainToml {
    /// Seeds initialisation, shuffling and synthetic data.
    pub seed: u64,
    /// Passes over the training rows.
    pub epochs: u64,
    /// Rows per optimizer step.
    pub batch_size: usize,
    /// Where rows come from.
    pub data: TrainData,
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// The loss.
    pub loss: Loss,
    /// Adam's learning rate.
    pub lr: f32,
    /// `[devices] backend`; none: the default (auto).
    pub backend: Option<BackendChoice>,
    /// `[devices] threads`; none: every core.
    pub threads: Option<usize>,
    /// `[checkpoint] every_steps`; none: no checkpoints.
    pub checkpoint_every_steps: Option<u64>,
}

/// The `[data]` table of a [`TrainToml`].
#[derive(Debug, Clone, PartialEq)]
pub enum TrainData {
    /// A dataset stored in the daemon (its jobs only).
    Dataset {
        /// The dataset's name.
        name: String,
        /// The 0-based column of class ids (or targets).
        label_column: usize,
        /// The shipped plugin the feature columns stream through; none: as they are.
        preprocess: Option<String>,
    },
    /// A built-in generated set.
    Synthetic(Synthetic),
}

impl TrainToml {
    /// Three epochs of batches of 64 on `data`: two hidden layers of 64, softmax cross-entropy,
    /// Adam at 0.01, seed 42, the default devices, no checkpoints.
    pub fn new(data: TrainData) -> Self {
        TrainToml {
            seed: 42,
            epochs: 3,
            batch_size: 64,
            data,
            hidden: vec![64, 64],
            loss: Loss::SoftmaxCrossEntropy,
            lr: 0.01,
            backend: None,
            threads: None,
            checkpoint_every_steps: None,
        }
    }

    /// The text parsed and checked as a file would be ([`TrainConfig::parse_with`]).
    pub fn config(&self, limits: &TrainLimits) -> Result<TrainConfig, TrainError> {
        TrainConfig::parse_with(
            &self.to_string(),
            std::path::Path::new("TRAIN.toml"),
            limits,
        )
    }
}

impl TrainData {
    /// A dataset stored in the daemon, its features through `preprocess` when given.
    pub fn dataset(name: &str, label_column: usize, preprocess: Option<&str>) -> Self {
        TrainData::Dataset {
            name: name.into(),
            label_column,
            preprocess: preprocess.map(Into::into),
        }
    }
}

/// A float as TOML writes it (`1.0`, not `1`, which would read as an integer).
struct Float(f32);

impl fmt::Display for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for TrainData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrainData::Dataset {
                name,
                label_column,
                preprocess,
            } => {
                writeln!(f, "dataset = {name:?}\nlabel_column = {label_column}")?;
                match preprocess {
                    Some(p) => writeln!(f, "preprocess = {p:?}"),
                    None => Ok(()),
                }
            }
            TrainData::Synthetic(Synthetic::Spirals {
                classes,
                rows_per_class,
                noise,
            }) => writeln!(
                f,
                "synthetic = {{ kind = \"spirals\", classes = {classes}, rows_per_class = \
                 {rows_per_class}, noise = {} }}",
                Float(*noise)
            ),
            TrainData::Synthetic(Synthetic::Regression {
                rows,
                inputs,
                noise,
            }) => writeln!(
                f,
                "synthetic = {{ kind = \"regression\", rows = {rows}, inputs = {inputs}, noise \
                 = {} }}",
                Float(*noise)
            ),
            TrainData::Synthetic(Synthetic::Dense {
                rows,
                inputs,
                classes,
            }) => writeln!(
                f,
                "synthetic = {{ kind = \"dense\", rows = {rows}, inputs = {inputs}, classes = \
                 {classes} }}"
            ),
        }
    }
}

impl fmt::Display for TrainToml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let loss = match self.loss {
            Loss::SoftmaxCrossEntropy => "softmax_cross_entropy",
            Loss::Mse => "mse",
        };
        writeln!(
            f,
            "seed = {}\nepochs = {}\nbatch_size = {}",
            self.seed, self.epochs, self.batch_size
        )?;
        write!(f, "[data]\n{}", self.data)?;
        writeln!(f, "[model]\nhidden = {:?}\nloss = {loss:?}", self.hidden)?;
        writeln!(f, "[optimizer]\nkind = \"adam\"\nlr = {}", Float(self.lr))?;
        if self.backend.is_some() || self.threads.is_some() {
            writeln!(f, "[devices]")?;
        }
        if let Some(backend) = self.backend {
            let name = match backend {
                BackendChoice::Auto => "auto",
                BackendChoice::Cpu => "cpu",
                BackendChoice::Cuda => "cuda",
            };
            writeln!(f, "backend = {name:?}")?;
        }
        if let Some(threads) = self.threads {
            writeln!(f, "threads = {threads}")?;
        }
        if let Some(every) = self.checkpoint_every_steps {
            writeln!(f, "[checkpoint]\nevery_steps = {every}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use gantry_kernels::{Adam, Optimizer};

    use super::*;

    /// Every field reaches the parsed config: the text and the format stay in step.
    #[test]
    fn what_a_train_toml_states_is_what_the_config_reads() {
        let synthetic = [
            Synthetic::Spirals {
                classes: 3,
                rows_per_class: 200,
                noise: 0.15,
            },
            Synthetic::Regression {
                rows: 2000,
                inputs: 4,
                noise: 1.0,
            },
            Synthetic::Dense {
                rows: 100,
                inputs: 8,
                classes: 4,
            },
        ];
        for s in synthetic {
            let toml = TrainToml {
                seed: 7,
                epochs: 5,
                batch_size: 32,
                hidden: vec![16],
                loss: Loss::Mse,
                lr: 0.005,
                backend: Some(BackendChoice::Cpu),
                threads: Some(1),
                checkpoint_every_steps: Some(100),
                ..TrainToml::new(TrainData::Synthetic(s.clone()))
            };
            let c = toml.config(&TrainLimits::default()).expect("parses");
            assert_eq!((c.seed, c.epochs, c.batch_size), (7, 5, 32), "{toml}");
            assert_eq!(c.data.synthetic, Some(s), "{toml}");
            assert_eq!((c.model.hidden, c.model.loss), (vec![16], Loss::Mse));
            let Optimizer::Adam(Adam { lr, .. }) = c.optimizer else {
                panic!("{toml}: not Adam")
            };
            assert_eq!(lr, 0.005);
            assert_eq!(
                (c.devices.backend, c.devices.threads),
                (BackendChoice::Cpu, 1)
            );
            assert_eq!(c.checkpoint.map(|c| c.every_steps), Some(100), "{toml}");
        }
    }

    #[test]
    fn a_stored_dataset_and_the_defaults_read_back() {
        let toml = TrainToml::new(TrainData::dataset("s.csv", 1, Some("standardize")));
        let text = toml.to_string();
        let c = toml.config(&TrainLimits::default()).expect("parses");
        assert_eq!(c.data.dataset.as_deref(), Some("s.csv"), "{text}");
        assert_eq!(c.data.label_column, Some(1));
        assert_eq!(c.data.preprocess.as_deref(), Some("standardize"));
        assert_eq!((c.seed, c.epochs, c.batch_size), (42, 3, 64));
        assert_eq!(c.model.loss, Loss::SoftmaxCrossEntropy);
        assert_eq!(c.devices.backend, BackendChoice::Auto);
        assert!(c.checkpoint.is_none(), "{text}");
        let plain =
            TrainToml::new(TrainData::dataset("s.csv", 0, None)).config(&TrainLimits::default());
        assert_eq!(plain.expect("parses").data.preprocess, None);
    }
}
