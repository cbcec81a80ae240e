//! Training jobs on the native hot path: `TRAIN.toml` files, datasets (CSV, a binary `f32`
//! format, built-in synthetic sets), device selection, the epoch loop with checkpoints, and
//! resume. The kernels and the model live in `gantry-kernels`; this module owns files and
//! policy (which backend, where checkpoints go). Every caller runs a job through [`Job`].

pub mod checkpoint;
pub mod config;
pub mod csv;
pub mod data;
pub mod device;
mod job;
pub mod limits;
pub mod run;
pub mod score;

pub use config::TrainConfig;
pub use device::{BackendChoice, DeviceReport};
pub use job::Job;
pub use limits::TrainLimits;
pub use run::{CheckpointDir, CheckpointSink, Hooks, Outcome, Progress};

/// A training job failed; the message names the file, line or field where there is one.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// A file is malformed.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// 1-based line, where known.
        line: Option<u64>,
        /// What is wrong, naming the field or column.
        message: String,
    },
    /// The configuration asks for something this machine or build cannot do.
    #[error("{0}")]
    Unavailable(String),
    /// The caller stopped the run (a cancelled job, say) after `step` steps.
    #[error("stopped after step {step}")]
    Stopped {
        /// Steps taken.
        step: u32,
    },
    /// The run took longer than it may (`max_run_time_s` of the training limits): stopped
    /// after `step`.
    #[error(
        "ran past the {limit_s} s a training run may take (max_run_time_s of the training \
         limits); stopped after step {step}"
    )]
    RanTooLong {
        /// Steps taken.
        step: u32,
        /// The limit, seconds.
        limit_s: u64,
    },
    /// The run diverged at `step`: its loss, or a parameter, turned NaN or infinite. Nothing
    /// from that step on was kept: the newest checkpoint, if any, is from before it.
    #[error("training diverged at step {step} (epoch {epoch}): {reason}")]
    Diverged {
        /// The step whose loss or parameters were not finite.
        step: u32,
        /// Its epoch, counted from 1.
        epoch: u64,
        /// What was not finite, and what may help.
        reason: String,
    },
    /// A kernel or device failed.
    #[error(transparent)]
    Kernel(#[from] gantry_kernels::KernelError),
}

impl TrainError {
    fn io(path: &std::path::Path, error: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            error,
        }
    }

    fn invalid(path: &std::path::Path, line: Option<u64>, message: impl Into<String>) -> Self {
        TrainError::Invalid {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }
}
