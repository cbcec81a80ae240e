//! The epoch loop: shuffled batches through a [`Trainer`], progress callbacks, periodic
//! checkpoints, resume, and the final evaluation.

use std::time::Instant;

use gantry_kernels::train::epoch_order;
use gantry_kernels::{Backend, CpuBackend, Evaluation, MlpSpec, Trainer};
use serde::Serialize;

use super::TrainError;
use super::checkpoint::{self, Checkpoint, Position};
use super::config::TrainConfig;
use super::data::Loaded;
use super::device::Selected;

/// Reported after every step.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The epoch (from 0).
    pub epoch: u64,
    /// Steps taken in all (a resumed run counts the earlier ones).
    pub step: u32,
    /// Steps the whole run takes.
    pub total_steps: u64,
    /// This step's mean loss.
    pub loss: f64,
    /// Training rows per second so far in this process.
    pub samples_per_s: f64,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The backend, described.
    pub backend: String,
    /// Why that backend.
    pub backend_reason: String,
    /// Data-parallel replicas.
    pub replicas: usize,
    /// Trainable parameters.
    pub parameters: usize,
    /// Training and test rows.
    pub train_rows: usize,
    /// Held-out rows.
    pub test_rows: usize,
    /// Epochs in the run.
    pub epochs: u64,
    /// Optimizer steps in all.
    pub steps: u32,
    /// The step this process resumed after, if it resumed.
    pub resumed_at_step: Option<u32>,
    /// Mean loss over the last epoch's steps.
    pub train_loss: f64,
    /// Loss and accuracy on the held-out rows.
    pub test: Option<Evaluation>,
    /// Loss and accuracy on `[data] test_file`.
    pub test_file: Option<super::score::Score>,
    /// Training rows per second in this process.
    pub samples_per_s: f64,
    /// Seconds spent training in this process.
    pub seconds: f64,
    /// The last checkpoint written: its file, or where the hook put it.
    pub checkpoint: Option<String>,
    /// `(step, loss)` for every step of the run (for plots; left out of JSON).
    #[serde(skip)]
    pub curve: Vec<(u32, f64)>,
}

/// The network `config` describes for `data`.
pub fn spec(config: &TrainConfig, data: &Loaded) -> MlpSpec {
    let mut sizes = vec![data.train.inputs];
    sizes.extend(&config.model.hidden);
    sizes.push(data.outputs);
    MlpSpec {
        sizes,
        activation: config.model.activation,
        loss: config.model.loss,
    }
}

/// Stores a checkpoint somewhere; returns where.
pub type SaveCheckpoint<'a> = &'a mut dyn FnMut(&Checkpoint) -> Result<String, TrainError>;

/// How a caller follows and steers a run.
pub struct Hooks<'a> {
    /// Called after every step; `false` stops the run ([`TrainError::Stopped`]).
    pub on_step: &'a mut dyn FnMut(&Progress) -> bool,
    /// Where checkpoints go (returns where it put one); `None`: files in the config's
    /// `[checkpoint] dir`.
    pub save: Option<SaveCheckpoint<'a>>,
}

/// Trains `config` on `data` with the `selected` backend, continuing from `resume` if given.
pub fn train(
    config: &TrainConfig,
    data: &Loaded,
    selected: &Selected,
    resume: Option<Checkpoint>,
    hooks: Hooks<'_>,
) -> Result<Outcome, TrainError> {
    match selected {
        Selected::Cpu {
            replicas,
            threads_each,
            reason,
        } => {
            let backends = (0..*replicas)
                .map(|_| CpuBackend::new(*threads_each))
                .collect::<Result<Vec<_>, _>>()?;
            run(config, data, backends, reason, resume, hooks)
        }
        #[cfg(feature = "cuda")]
        Selected::Cuda {
            ordinals,
            precision,
            reason,
        } => {
            let backends = ordinals
                .iter()
                .map(|&o| gantry_kernels::cuda::CudaBackend::new(o, *precision))
                .collect::<Result<Vec<_>, _>>()?;
            run(config, data, backends, reason, resume, hooks)
        }
        #[cfg(not(feature = "cuda"))]
        Selected::Cuda { .. } => Err(TrainError::Unavailable(
            "this build has no CUDA support (build with `--features cuda`)".into(),
        )),
    }
}

fn run<B: Backend>(
    config: &TrainConfig,
    data: &Loaded,
    backends: Vec<B>,
    reason: &str,
    resume: Option<Checkpoint>,
    hooks: Hooks<'_>,
) -> Result<Outcome, TrainError> {
    let Hooks { on_step, mut save } = hooks;
    let spec = spec(config, data);
    data.train.check(&spec)?;
    let replicas = backends.len();
    let (mut trainer, mut position, mut curve, resumed_at_step) = match resume {
        Some(c) => {
            let mismatch = |what: &str, saved: String, now: String| {
                Err(TrainError::Unavailable(format!(
                    "the checkpoint was made with {what} {saved}, the config says {now}: \
                     resuming would not continue the same run"
                )))
            };
            if c.state.spec != spec {
                return mismatch(
                    "network",
                    format!("{:?}", c.state.spec.sizes),
                    format!("{:?}", spec.sizes),
                );
            }
            if c.seed != config.seed {
                return mismatch("seed", c.seed.to_string(), config.seed.to_string());
            }
            if c.batch_size != config.batch_size {
                return mismatch(
                    "batch size",
                    c.batch_size.to_string(),
                    config.batch_size.to_string(),
                );
            }
            if c.state.optimizer != config.optimizer {
                return mismatch(
                    "optimizer",
                    format!("{:?}", c.state.optimizer),
                    format!("{:?}", config.optimizer),
                );
            }
            let at = c.state.step;
            (
                Trainer::resume(&c.state, backends)?,
                c.position,
                c.curve,
                Some(at),
            )
        }
        None => (
            Trainer::new(spec.clone(), config.optimizer, backends, config.seed)?,
            Position { epoch: 0, batch: 0 },
            Vec::new(),
            None,
        ),
    };
    let rows = data.train.rows();
    let batches_per_epoch = rows.div_ceil(config.batch_size) as u64;
    let total_steps = batches_per_epoch * config.epochs;
    let mut save = |trainer: &Trainer<B>, position: Position, curve: &[(u32, f64)]| {
        let Some(c) = &config.checkpoint else {
            return Ok(None);
        };
        let snapshot = Checkpoint {
            state: trainer.snapshot()?,
            position,
            seed: config.seed,
            batch_size: config.batch_size,
            curve: curve.to_vec(),
            columns: data.columns.clone(),
        };
        let at = match save.as_mut() {
            Some(hook) => hook(&snapshot)?,
            None => {
                std::fs::create_dir_all(&c.dir).map_err(|e| TrainError::io(&c.dir, e))?;
                let path = c.dir.join(checkpoint::file_name(trainer.step_count()));
                checkpoint::save(&path, &snapshot)?;
                path.display().to_string()
            }
        };
        tracing::debug!(at = %at, step = trainer.step_count(), "checkpoint written");
        Ok::<_, TrainError>(Some(at))
    };
    let started = Instant::now();
    let (mut trained_rows, mut last_checkpoint) = (0usize, None);
    // Two host buffers: batch i + 1 is gathered and staged (uploaded, overlapping compute on a
    // GPU) while step i runs.
    let mut current = (Vec::new(), Vec::new());
    let mut upcoming = (Vec::new(), Vec::new());
    let mut epoch_losses = Vec::new();
    while position.epoch < config.epochs {
        let span = tracing::info_span!("epoch", epoch = position.epoch);
        let _entered = span.enter();
        let order = epoch_order(config.seed, position.epoch, rows);
        epoch_losses.clear();
        let batches: Vec<&[usize]> = order
            .chunks(config.batch_size)
            .skip(position.batch as usize)
            .collect();
        if let Some(first) = batches.first() {
            data.train.gather(first, &mut current.0, &mut current.1);
            trainer.stage(&current.0, &current.1)?;
        }
        for (i, batch) in batches.iter().enumerate() {
            let next = match batches.get(i + 1) {
                Some(rows) => {
                    data.train.gather(rows, &mut upcoming.0, &mut upcoming.1);
                    Some((upcoming.0.as_slice(), upcoming.1.as_slice()))
                }
                None => None,
            };
            let loss = trainer.step_staged(next)?;
            std::mem::swap(&mut current, &mut upcoming);
            trained_rows += batch.len();
            epoch_losses.push(loss);
            position.batch += 1;
            let step = trainer.step_count();
            curve.push((step, loss));
            let go_on = on_step(&Progress {
                epoch: position.epoch,
                step,
                total_steps,
                loss,
                samples_per_s: trained_rows as f64 / started.elapsed().as_secs_f64().max(1e-9),
            });
            if !go_on {
                return Err(TrainError::Stopped { step });
            }
            if let Some(c) = &config.checkpoint
                && c.every_steps > 0
                && u64::from(step).is_multiple_of(c.every_steps)
            {
                let at = if position.batch == batches_per_epoch {
                    Position {
                        epoch: position.epoch + 1,
                        batch: 0,
                    }
                } else {
                    position
                };
                last_checkpoint = save(&trainer, at, &curve)?;
            }
        }
        position = Position {
            epoch: position.epoch + 1,
            batch: 0,
        };
    }
    let seconds = started.elapsed().as_secs_f64();
    if config.checkpoint.is_some() && resumed_at_step != Some(trainer.step_count()) {
        last_checkpoint = save(&trainer, position, &curve)?;
    }
    let test = if data.test.rows() > 0 {
        Some(trainer.evaluate(&data.test, 1024)?)
    } else {
        None
    };
    let test_file = match &data.test_file {
        Some(t) => Some(super::score::Score::new(
            t.source.clone(),
            t.data.rows(),
            trainer.evaluate(&t.data, 1024)?,
        )),
        None => None,
    };
    let train_loss = if epoch_losses.is_empty() {
        curve.last().map_or(f64::NAN, |c| c.1)
    } else {
        epoch_losses.iter().sum::<f64>() / epoch_losses.len() as f64
    };
    Ok(Outcome {
        backend: trainer.backend().describe(),
        backend_reason: reason.to_string(),
        replicas,
        parameters: spec.parameters(),
        train_rows: rows,
        test_rows: data.test.rows(),
        epochs: config.epochs,
        steps: trainer.step_count(),
        resumed_at_step,
        train_loss,
        test,
        test_file,
        samples_per_s: trained_rows as f64 / seconds.max(1e-9),
        seconds,
        checkpoint: last_checkpoint,
        curve,
    })
}
