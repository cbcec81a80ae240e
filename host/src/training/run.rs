//! The epoch loop: shuffled batches through a [`Trainer`], the caller's hooks (progress, stop,
//! where checkpoints go), periodic checkpoints, resume, and the final evaluation. A job enters
//! it through [`super::Job::run`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use gantry_kernels::train::epoch_order;
use gantry_kernels::{Backend, CpuBackend, Evaluation, MlpSpec, TrainState, Trainer};
use serde::Serialize;

use super::TrainError;
use super::checkpoint::{self, Checkpoint, Position};
use super::config::TrainConfig;
use super::data::Loaded;
use super::device::Selected;
use super::score::Score;

/// Reported after every step (a node's agent sends them to its control plane).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
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
    pub test_file: Option<Score>,
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

/// Where a job's checkpoints go, and where a resumed job finds the newest one: files in a
/// directory for `gantry train` ([`CheckpointDir`]), the encrypted store for a daemon's jobs.
pub trait CheckpointSink {
    /// Stores `checkpoint`; returns where it went (a file, an object), for summaries.
    fn save(&mut self, checkpoint: &Checkpoint) -> Result<String, TrainError>;

    /// The newest checkpoint stored, and where it is; `None` when there is none yet.
    fn latest(&mut self) -> Result<Option<(String, Checkpoint)>, TrainError>;
}

/// Checkpoint files in a directory (created when the first is written), one per step:
/// [`checkpoint::file_name`].
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    dir: PathBuf,
}

impl CheckpointDir {
    /// The files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl CheckpointSink for CheckpointDir {
    fn save(&mut self, checkpoint: &Checkpoint) -> Result<String, TrainError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| TrainError::io(&self.dir, e))?;
        let path = self.dir.join(checkpoint::file_name(checkpoint.state.step));
        checkpoint::save(&path, checkpoint)?;
        Ok(path.display().to_string())
    }

    fn latest(&mut self) -> Result<Option<(String, Checkpoint)>, TrainError> {
        match checkpoint::latest(&self.dir)? {
            Some(path) => Ok(Some((path.display().to_string(), checkpoint::load(&path)?))),
            None => Ok(None),
        }
    }
}

/// How a caller follows and steers a run; every hook is optional.
#[derive(Default)]
pub struct Hooks<'a> {
    progress: Option<&'a mut dyn FnMut(&Progress)>,
    stop: Option<&'a dyn Fn() -> bool>,
    checkpoints: Option<&'a mut dyn CheckpointSink>,
    /// The most seconds the run may take, from its start.
    time_limit_s: Option<u64>,
}

impl<'a> Hooks<'a> {
    /// No hooks: no progress, never stopped, checkpoints (if the config asks for them) as files
    /// in its `[checkpoint] dir`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Called after every step with the step's metrics (its epoch among them).
    pub fn progress(mut self, hook: &'a mut dyn FnMut(&Progress)) -> Self {
        self.progress = Some(hook);
        self
    }

    /// Asked after every step (after `progress`); `true` stops the run before its next step,
    /// with [`TrainError::Stopped`].
    pub fn stop(mut self, hook: &'a dyn Fn() -> bool) -> Self {
        self.stop = Some(hook);
        self
    }

    /// The most the run may take, from when it starts (`max_run_time_s` of the training
    /// limits; 0: no limit): past it, it ends with [`TrainError::RanTooLong`] after the step
    /// going on. A run's steps are bounded in number, not in cost, so a few slow ones held
    /// their memory and cores for weeks.
    pub fn time_limit_s(mut self, seconds: u64) -> Self {
        self.time_limit_s = (seconds > 0).then_some(seconds);
        self
    }

    /// Where checkpoints go (when the config has a `[checkpoint]` table), instead of files in
    /// its `dir`.
    pub fn checkpoints(mut self, sink: &'a mut dyn CheckpointSink) -> Self {
        self.checkpoints = Some(sink);
        self
    }
}

/// Trains `config` on `data` with the `selected` backend, continuing from `resume` if given.
pub(super) fn train(
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
            precision,
            reason,
        } => {
            let backends = (0..*replicas)
                .map(|_| CpuBackend::with_precision(*threads_each, *precision))
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
    let spec = spec(config, data);
    data.train.check(&spec)?;
    let replicas = backends.len();
    let start = Start::new(config, &spec, backends, resume)?;
    let resumed_at_step = start.resumed_at_step;
    // Without a sink of the caller's, checkpoints are files in the config's directory.
    let mut files = config
        .checkpoint
        .as_ref()
        .map(|c| CheckpointDir::new(&c.dir));
    let Hooks {
        progress,
        stop,
        checkpoints,
        time_limit_s,
    } = hooks;
    let sink: Option<&mut dyn CheckpointSink> = match checkpoints {
        Some(sink) => Some(sink),
        None => files.as_mut().map(|f| f as &mut dyn CheckpointSink),
    };
    let mut run = Run::new(config, data, start, progress, stop, sink);
    run.time_limit_s = time_limit_s;
    while run.position.epoch < config.epochs {
        run.epoch()?;
    }
    let seconds = run.started.elapsed().as_secs_f64();
    // A run whose checkpoints go somewhere ends with one, the trained model: a daemon's job
    // keeps it (its checkpoints go to the store, `[checkpoint]` or not) for its owners to take.
    // One that resumed at its last step has it already.
    if run.sink.is_some() && resumed_at_step != Some(run.trainer.step_count()) {
        run.checkpoint(run.position)?;
    } else {
        run.finite_state()?;
    }
    let evaluated = run.evaluate()?;
    Ok(Outcome {
        backend: run.trainer.backend().describe(),
        backend_reason: reason.to_string(),
        replicas,
        parameters: spec.parameters(),
        train_rows: data.train.rows(),
        test_rows: data.test.rows(),
        epochs: config.epochs,
        steps: run.trainer.step_count(),
        resumed_at_step,
        train_loss: run.train_loss(),
        test: evaluated.0,
        test_file: evaluated.1,
        samples_per_s: run.trained_rows as f64 / seconds.max(1e-9),
        seconds,
        checkpoint: run.last_checkpoint,
        curve: run.curve.points,
    })
}

/// The most points a run's loss curve keeps (it goes into every checkpoint and the outcome).
pub const MAX_CURVE_POINTS: usize = 1024;

/// A run's loss curve, at most [`MAX_CURVE_POINTS`] points spanning it: when full, every other
/// point goes and only every second step as many as before is kept. One point a step grew
/// without end (16 bytes a step: a 20 M-step run's checkpoint was 626 MB).
struct LossCurve {
    points: Vec<(u32, f64)>,
    /// Steps between kept points.
    stride: u32,
}

impl LossCurve {
    /// A curve continuing `points` (a checkpoint's, thinned if it holds more than the most).
    fn from(points: Vec<(u32, f64)>) -> Self {
        let mut curve = LossCurve { points, stride: 1 };
        while curve.points.len() >= MAX_CURVE_POINTS {
            curve.thin();
        }
        curve
    }

    fn thin(&mut self) {
        let kept: Vec<(u32, f64)> = self.points.iter().copied().step_by(2).collect();
        self.points = kept;
        self.stride = self.stride.saturating_mul(2);
    }

    fn push(&mut self, step: u32, loss: f64) {
        if !step.is_multiple_of(self.stride) {
            return;
        }
        if self.points.len() >= MAX_CURVE_POINTS {
            self.thin();
            if !step.is_multiple_of(self.stride) {
                return;
            }
        }
        self.points.push((step, loss));
    }
}

/// Where a run starts: a new trainer, or one restored from a checkpoint of the same run.
struct Start<B: Backend> {
    trainer: Trainer<B>,
    position: Position,
    curve: Vec<(u32, f64)>,
    resumed_at_step: Option<u32>,
}

impl<B: Backend> Start<B> {
    fn new(
        config: &TrainConfig,
        spec: &MlpSpec,
        backends: Vec<B>,
        resume: Option<Checkpoint>,
    ) -> Result<Self, TrainError> {
        let Some(c) = resume else {
            return Ok(Self {
                trainer: Trainer::new(spec.clone(), config.optimizer, backends, config.seed)?,
                position: Position { epoch: 0, batch: 0 },
                curve: Vec::new(),
                resumed_at_step: None,
            });
        };
        same_run(&c, config, spec)?;
        Ok(Self {
            trainer: Trainer::resume(&c.state, backends)?,
            position: c.position,
            curve: c.curve,
            resumed_at_step: Some(c.state.step),
        })
    }
}

/// Refuses a checkpoint that another network, seed, batch size or optimizer made: resuming
/// from it would not continue the same run.
fn same_run(c: &Checkpoint, config: &TrainConfig, spec: &MlpSpec) -> Result<(), TrainError> {
    let differs = [
        (
            "network",
            c.state.spec != *spec,
            format!("{:?}", c.state.spec.sizes),
            format!("{:?}", spec.sizes),
        ),
        (
            "seed",
            c.seed != config.seed,
            c.seed.to_string(),
            config.seed.to_string(),
        ),
        (
            "batch size",
            c.batch_size != config.batch_size,
            c.batch_size.to_string(),
            config.batch_size.to_string(),
        ),
        (
            "optimizer",
            c.state.optimizer != config.optimizer,
            format!("{:?}", c.state.optimizer),
            format!("{:?}", config.optimizer),
        ),
    ];
    match differs.into_iter().find(|d| d.1) {
        Some((what, _, saved, now)) => Err(TrainError::Unavailable(format!(
            "the checkpoint was made with {what} {saved}, the config says {now}: \
             resuming would not continue the same run"
        ))),
        None => Ok(()),
    }
}

/// Host buffers for a batch's features and targets.
type Batch = (Vec<f32>, Vec<f32>);

/// A run in progress: the trainer, where it is, and the caller's hooks.
struct Run<'a, 'h, B: Backend> {
    config: &'a TrainConfig,
    data: &'a Loaded,
    trainer: Trainer<B>,
    position: Position,
    curve: LossCurve,
    progress: Option<&'h mut (dyn FnMut(&Progress) + 'h)>,
    stop: Option<&'h (dyn Fn() -> bool + 'h)>,
    sink: Option<&'a mut (dyn CheckpointSink + 'h)>,
    batches_per_epoch: u64,
    total_steps: u64,
    started: Instant,
    time_limit_s: Option<u64>,
    trained_rows: usize,
    last_checkpoint: Option<String>,
    /// The sum and count of this epoch's losses (this process's steps).
    epoch_losses: (f64, u64),
    // Two host buffers: batch i + 1 is gathered and staged (uploaded, overlapping compute on
    // a GPU) while step i runs.
    current: Batch,
    upcoming: Batch,
}

impl<'a, 'h, B: Backend> Run<'a, 'h, B> {
    fn new(
        config: &'a TrainConfig,
        data: &'a Loaded,
        start: Start<B>,
        progress: Option<&'h mut (dyn FnMut(&Progress) + 'h)>,
        stop: Option<&'h (dyn Fn() -> bool + 'h)>,
        sink: Option<&'a mut (dyn CheckpointSink + 'h)>,
    ) -> Self {
        let batches_per_epoch = data.train.rows().div_ceil(config.batch_size) as u64;
        Self {
            config,
            data,
            trainer: start.trainer,
            position: start.position,
            curve: LossCurve::from(start.curve),
            progress,
            stop,
            sink,
            batches_per_epoch,
            total_steps: batches_per_epoch * config.epochs,
            started: Instant::now(),
            time_limit_s: None,
            trained_rows: 0,
            last_checkpoint: None,
            epoch_losses: (0.0, 0),
            current: (Vec::new(), Vec::new()),
            upcoming: (Vec::new(), Vec::new()),
        }
    }

    /// Trains the rest of the current epoch and moves to the next.
    fn epoch(&mut self) -> Result<(), TrainError> {
        let span = tracing::info_span!("epoch", epoch = self.position.epoch);
        let _entered = span.enter();
        let (config, train) = (self.config, &self.data.train);
        let order = epoch_order(config.seed, self.position.epoch, train.rows());
        self.epoch_losses = (0.0, 0);
        let batches: Vec<&[usize]> = order
            .chunks(config.batch_size)
            .skip(self.position.batch as usize)
            .collect();
        if let Some(first) = batches.first() {
            train.gather(first, &mut self.current.0, &mut self.current.1);
            self.trainer.stage(&self.current.0, &self.current.1)?;
        }
        for (i, batch) in batches.iter().enumerate() {
            let next = match batches.get(i + 1) {
                Some(rows) => {
                    train.gather(rows, &mut self.upcoming.0, &mut self.upcoming.1);
                    Some((self.upcoming.0.as_slice(), self.upcoming.1.as_slice()))
                }
                None => None,
            };
            let loss = self.trainer.step_staged(next)?;
            std::mem::swap(&mut self.current, &mut self.upcoming);
            self.stepped(batch.len(), loss)?;
        }
        self.position = Position {
            epoch: self.position.epoch + 1,
            batch: 0,
        };
        Ok(())
    }

    /// After a step of `rows` rows: the curve, the hooks, and a checkpoint when one is due.
    fn stepped(&mut self, rows: usize, loss: f64) -> Result<(), TrainError> {
        if !loss.is_finite() {
            // Every later step would train on it, and every later checkpoint keep it.
            return Err(self.diverged(format!("its batch's loss was {loss}")));
        }
        self.trained_rows += rows;
        self.epoch_losses.0 += loss;
        self.epoch_losses.1 += 1;
        self.position.batch += 1;
        let step = self.trainer.step_count();
        self.curve.push(step, loss);
        if let Some(progress) = self.progress.as_mut() {
            let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
            progress(&Progress {
                epoch: self.position.epoch,
                step,
                total_steps: self.total_steps,
                loss,
                samples_per_s: self.trained_rows as f64 / elapsed,
            });
        }
        if self.stop.is_some_and(|stop| stop()) {
            return Err(TrainError::Stopped { step });
        }
        if let Some(limit_s) = self.time_limit_s
            && self.started.elapsed().as_secs_f64() > limit_s as f64
        {
            return Err(TrainError::RanTooLong { step, limit_s });
        }
        if let Some(c) = &self.config.checkpoint
            && c.every_steps > 0
            && u64::from(step).is_multiple_of(c.every_steps)
        {
            let at = if self.position.batch == self.batches_per_epoch {
                Position {
                    epoch: self.position.epoch + 1,
                    batch: 0,
                }
            } else {
                self.position
            };
            self.checkpoint(at)?;
        }
        Ok(())
    }

    /// Hands a checkpoint continuing at `position` to the sink.
    fn checkpoint(&mut self, position: Position) -> Result<(), TrainError> {
        if self.sink.is_none() {
            return Ok(());
        }
        let snapshot = Checkpoint {
            state: self.finite_state()?,
            position,
            seed: self.config.seed,
            batch_size: self.config.batch_size,
            curve: self.curve.points.clone(),
            columns: self.data.columns.clone(),
        };
        let sink = self.sink.as_mut().expect("checked above");
        let at = sink.save(&snapshot)?;
        tracing::debug!(at = %at, step = self.trainer.step_count(), "checkpoint written");
        self.last_checkpoint = Some(at);
        Ok(())
    }

    /// The trainer's state, refused when a parameter or moment is no longer finite: a NaN
    /// parameter can leave the loss finite (a ReLU unit it silences), so a run is not trusted
    /// on its losses alone before its state is kept or reported.
    fn finite_state(&self) -> Result<TrainState, TrainError> {
        let state = self.trainer.snapshot()?;
        match state.check() {
            Ok(()) => Ok(state),
            Err(e) => Err(self.diverged(e.to_string())),
        }
    }

    /// The error for a run that diverged at the current step, `what` saying how.
    fn diverged(&self, what: String) -> TrainError {
        let lr = self.config.optimizer.lr();
        let kept = self
            .last_checkpoint
            .as_ref()
            .map_or("nothing from it was kept".to_string(), |c| {
                format!("nothing from it was kept: the newest checkpoint, {c}, is from before it")
            });
        TrainError::Diverged {
            step: self.trainer.step_count(),
            // Past the last epoch once the run has ended: then the last one.
            epoch: (self.position.epoch + 1).min(self.config.epochs),
            reason: format!(
                "{what}; {kept}. A lower `optimizer.lr` (now {lr:?}), or inputs of a smaller scale, may help"
            ),
        }
    }

    /// Scores the held-out rows and `[data] test_file`.
    fn evaluate(&mut self) -> Result<(Option<Evaluation>, Option<Score>), TrainError> {
        let data = self.data;
        let test = if data.test.rows() > 0 {
            Some(
                self.trainer
                    .evaluate(&data.test, super::limits::EVAL_BATCH as usize)?,
            )
        } else {
            None
        };
        let test_file = match &data.test_file {
            Some(t) => Some(Score::new(
                t.source.clone(),
                t.data.rows(),
                self.trainer
                    .evaluate(&t.data, super::limits::EVAL_BATCH as usize)?,
            )),
            None => None,
        };
        Ok((test, test_file))
    }

    /// Mean loss over the last epoch's steps (the last step's, when this process took none).
    fn train_loss(&self) -> f64 {
        match self.epoch_losses {
            (_, 0) => self.curve.points.last().map_or(f64::NAN, |c| c.1),
            (sum, n) => sum / n as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{LossCurve, MAX_CURVE_POINTS};

    /// Found by a review: a run kept one point of its loss curve a step, in memory and in every
    /// checkpoint (1.35 GB of RSS after 80 s of a tiny model; a 626 MB checkpoint at step 20 M,
    /// past what a replicated control plane keeps). The curve keeps at most
    /// [`MAX_CURVE_POINTS`], spanning the run, and a checkpoint's longer one is thinned.
    #[test]
    fn a_runs_loss_curve_is_bounded_and_spans_the_run() {
        let mut curve = LossCurve::from(Vec::new());
        for step in 1..=1_000_000u32 {
            curve.push(step, f64::from(step));
        }
        let points = &curve.points;
        assert!(points.len() <= MAX_CURVE_POINTS, "{}", points.len());
        assert!(points.len() >= MAX_CURVE_POINTS / 2, "{}", points.len());
        assert!(points.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(points.last().unwrap().0 > 990_000, "{:?}", points.last());
        assert!(points[0].0 <= curve.stride);
        let old: Vec<(u32, f64)> = (1..=20_000u32).map(|s| (s, 0.5)).collect();
        let resumed = LossCurve::from(old);
        assert!(resumed.points.len() < MAX_CURVE_POINTS);
    }
}
