//! Data-parallel training of an [`MlpSpec`] network: one replica per backend (a GPU, or a group
//! of CPU worker threads), each taking a contiguous slice of every batch; gradients are summed
//! by the backend's all-reduce, so every replica takes the same optimizer step and the
//! parameters stay identical everywhere, equal to single-replica training on the whole batch up
//! to floating-point rounding.

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, KernelError, Result};
use crate::mlp::{self, Loss, MlpSpec, Optimizer, OptimizerState, Params, Workspace};
use crate::rng::Rng;

/// Rows of features and their targets, in host memory.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dataset {
    /// `rows x inputs` features.
    pub features: Vec<f32>,
    /// `rows x targets_per_row` targets (class ids as `f32` for classification).
    pub targets: Vec<f32>,
    /// Features per row.
    pub inputs: usize,
    /// Targets per row.
    pub targets_per_row: usize,
}

impl Dataset {
    /// The number of rows.
    pub fn rows(&self) -> usize {
        self.features.len().checked_div(self.inputs).unwrap_or(0)
    }

    /// Checks that the data fits `spec`: widths, and class ids in range for classification.
    pub fn check(&self, spec: &MlpSpec) -> Result<()> {
        let unsupported = |m: String| Err(KernelError::Unsupported(m));
        if self.inputs != spec.inputs() {
            return unsupported(format!(
                "the data has {} features per row, the model takes {}",
                self.inputs,
                spec.inputs()
            ));
        }
        if self.targets_per_row != spec.targets_per_row() {
            return unsupported(format!(
                "the data has {} targets per row, the model's loss needs {}",
                self.targets_per_row,
                spec.targets_per_row()
            ));
        }
        if self.features.len() != self.rows() * self.inputs
            || self.targets.len() != self.rows() * self.targets_per_row
        {
            return unsupported("features and targets disagree on the number of rows".into());
        }
        if spec.loss == Loss::SoftmaxCrossEntropy {
            let classes = spec.outputs();
            if let Some((row, label)) = self
                .targets
                .iter()
                .enumerate()
                .find(|(_, l)| !(**l >= 0.0 && l.fract() == 0.0 && (**l as usize) < classes))
            {
                return Err(KernelError::Label {
                    op: "dataset",
                    row,
                    label: *label,
                    classes,
                });
            }
        }
        Ok(())
    }

    /// Copies the rows `order[range]` into `features` and `targets` (cleared first).
    pub fn gather(&self, rows: &[usize], features: &mut Vec<f32>, targets: &mut Vec<f32>) {
        features.clear();
        targets.clear();
        for &r in rows {
            features.extend_from_slice(&self.features[r * self.inputs..(r + 1) * self.inputs]);
            targets.extend_from_slice(
                &self.targets[r * self.targets_per_row..(r + 1) * self.targets_per_row],
            );
        }
    }

    /// The first `rows` rows and the rest.
    pub fn split_at(&self, rows: usize) -> (Dataset, Dataset) {
        let rows = rows.min(self.rows());
        let (fa, fb) = self.features.split_at(rows * self.inputs);
        let (ta, tb) = self.targets.split_at(rows * self.targets_per_row);
        let part = |f: &[f32], t: &[f32]| Dataset {
            features: f.to_vec(),
            targets: t.to_vec(),
            ..*self
        };
        (part(fa, ta), part(fb, tb))
    }
}

/// The order rows are visited in `epoch`: a permutation drawn from `(seed, epoch)` alone, so a
/// resumed run visits the same rows as an uninterrupted one.
pub fn epoch_order(seed: u64, epoch: u64, rows: usize) -> Vec<usize> {
    Rng::new(seed, 0x5_0000 + epoch).permutation(rows)
}

/// Loss and accuracy over a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Mean loss (per row for cross-entropy, per value for MSE).
    pub loss: f64,
    /// Fraction of rows whose largest output is their class (classification only).
    pub accuracy: Option<f64>,
}

/// Everything training needs to continue exactly: parameters, optimizer state, step count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The network.
    pub spec: MlpSpec,
    /// The optimizer.
    pub optimizer: Optimizer,
    /// Optimizer steps taken.
    pub step: u32,
    /// Parameter tensors (see [`MlpSpec::tensor_lengths`]).
    pub params: Vec<Vec<f32>>,
    /// First moments / velocity.
    pub m: Vec<Vec<f32>>,
    /// Second moments.
    pub v: Vec<Vec<f32>>,
}

impl TrainState {
    /// Refuses a state training cannot continue from: an optimizer setting outside its range,
    /// a parameter or moment that is NaN or infinite, or a negative second moment (a run that
    /// diverged, or a state made by hand).
    pub fn check(&self) -> Result<()> {
        self.optimizer.check()?;
        for (what, tensors) in [("parameter", &self.params), ("first moment", &self.m)] {
            if let Some((t, i, v)) = first(tensors, |v| !v.is_finite()) {
                return Err(KernelError::Invalid(format!(
                    "{what} {i} of tensor {t} is {v}"
                )));
            }
        }
        if let Some((t, i, v)) = first(&self.v, |v| !(v >= 0.0 && v.is_finite())) {
            return Err(KernelError::Invalid(format!(
                "second moment {i} of tensor {t} is {v}, not a finite value of at least 0"
            )));
        }
        Ok(())
    }
}

/// The first value of `tensors` for which `bad` holds: `(tensor, index, value)`.
fn first(tensors: &[Vec<f32>], bad: impl Fn(f32) -> bool) -> Option<(usize, usize, f32)> {
    tensors.iter().enumerate().find_map(|(t, values)| {
        values
            .iter()
            .position(|&v| bad(v))
            .map(|i| (t, i, values[i]))
    })
}

struct Replica<B: Backend> {
    backend: B,
    params: Params<B>,
    grads: Params<B>,
    state: OptimizerState<B>,
    /// One per batch size seen (the full batch, an epoch's tail, evaluation batches).
    workspaces: Vec<Workspace<B>>,
    /// Rows of this replica's staged slice, once one is staged.
    staged_rows: Option<usize>,
}

impl<B: Backend> Replica<B> {
    fn workspace(&mut self, spec: &MlpSpec, rows: usize) -> Result<usize> {
        if let Some(i) = self.workspaces.iter().position(|w| w.rows() == rows) {
            return Ok(i);
        }
        self.workspaces
            .push(Workspace::new(&self.backend, spec, rows)?);
        Ok(self.workspaces.len() - 1)
    }

    /// Starts uploading this replica's slice of the next batch ([`Backend::prefetch`]).
    fn stage(&mut self, spec: &MlpSpec, features: &[f32], targets: &[f32]) -> Result<()> {
        let rows = features.len() / spec.inputs();
        if rows > 0 {
            let w = self.workspace(spec, rows)?;
            self.workspaces[w].prefetch(&self.backend, features, targets)?;
        }
        self.staged_rows = Some(rows);
        Ok(())
    }

    /// Forward, loss and backward on the staged slice, staging `next` once the forward pass is
    /// queued (so its upload overlaps this step's compute); returns the loss sum.
    fn gradients(
        &mut self,
        spec: &MlpSpec,
        batch: usize,
        next: Option<(&[f32], &[f32])>,
    ) -> Result<f64> {
        let rows = self
            .staged_rows
            .take()
            .ok_or_else(|| KernelError::Unsupported("no batch staged".into()))?;
        if rows == 0 {
            // More replicas than rows: contribute nothing to the sum.
            for g in &mut self.grads.tensors {
                self.backend.scale(0.0, g)?;
            }
            if let Some((f, t)) = next {
                self.stage(spec, f, t)?;
            }
            return Ok(0.0);
        }
        let w = self.workspace(spec, rows)?;
        let ws = &mut self.workspaces[w];
        if !ws.take_staged() {
            return Err(KernelError::Unsupported("no batch staged".into()));
        }
        mlp::forward_loaded(&self.backend, spec, &self.params, ws)?;
        if let Some((f, t)) = next {
            // Into the spare buffers (or another batch size's workspace): the current batch's
            // buffers stay untouched.
            self.stage(spec, f, t)?;
        }
        let ws = &mut self.workspaces[w];
        let loss = mlp::loss_loaded(&self.backend, spec, ws, batch)?;
        mlp::backward(&self.backend, spec, &self.params, ws, &mut self.grads)?;
        Ok(loss)
    }
}

/// Replica `r`'s rows are `bounds[r]..bounds[r + 1]`: contiguous, the first `rows % n` one row
/// longer.
fn slice_bounds(rows: usize, n: usize) -> Vec<usize> {
    let mut bounds = Vec::with_capacity(n + 1);
    bounds.push(0);
    for r in 0..n {
        bounds.push(bounds[r] + rows / n + usize::from(r < rows % n));
    }
    bounds
}

/// Replica `r`'s features and targets of a batch.
fn slice<'a>(
    spec: &MlpSpec,
    features: &'a [f32],
    targets: &'a [f32],
    bounds: &[usize],
    r: usize,
) -> (&'a [f32], &'a [f32]) {
    let (a, b) = (bounds[r], bounds[r + 1]);
    (
        &features[a * spec.inputs()..b * spec.inputs()],
        &targets[a * spec.targets_per_row()..b * spec.targets_per_row()],
    )
}

/// Sums every gradient tensor over the replicas, in place on each.
fn all_reduce_gradients<B: Backend>(spec: &MlpSpec, replicas: &mut [Replica<B>]) -> Result<()> {
    let (backends, mut grads): (Vec<&B>, Vec<&mut Params<B>>) = replicas
        .iter_mut()
        .map(|r| (&r.backend, &mut r.grads))
        .unzip();
    for t in 0..spec.tensor_lengths().len() {
        let mut bufs: Vec<&mut B::Buffer> = grads.iter_mut().map(|g| &mut g.tensors[t]).collect();
        B::all_reduce_sum(&backends, &mut bufs)?;
    }
    Ok(())
}

/// Trains one network on one or more replicas.
pub struct Trainer<B: Backend> {
    spec: MlpSpec,
    optimizer: Optimizer,
    replicas: Vec<Replica<B>>,
    /// Rows of the staged batch, once one is staged.
    staged: Option<usize>,
}

impl<B: Backend> Trainer<B> {
    /// A trainer with seeded initial parameters on every backend in `backends` (one replica
    /// each).
    pub fn new(spec: MlpSpec, optimizer: Optimizer, backends: Vec<B>, seed: u64) -> Result<Self> {
        spec.validate()?;
        optimizer.check()?;
        let initial = spec.initial_parameters(seed);
        Self::with_parameters(spec, optimizer, backends, &initial)
    }

    fn with_parameters(
        spec: MlpSpec,
        optimizer: Optimizer,
        backends: Vec<B>,
        params: &[Vec<f32>],
    ) -> Result<Self> {
        if backends.is_empty() {
            return Err(KernelError::Unsupported(
                "training needs at least one replica".into(),
            ));
        }
        let replicas = backends
            .into_iter()
            .map(|backend| {
                Ok(Replica {
                    params: Params::upload(&backend, params)?,
                    grads: Params::zeros(&backend, &spec)?,
                    state: OptimizerState::new(&backend, &spec)?,
                    workspaces: Vec::new(),
                    staged_rows: None,
                    backend,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            spec,
            optimizer,
            replicas,
            staged: None,
        })
    }

    /// A trainer continuing from `state` on `backends`.
    pub fn resume(state: &TrainState, backends: Vec<B>) -> Result<Self> {
        state.spec.validate()?;
        let mut trainer =
            Self::with_parameters(state.spec.clone(), state.optimizer, backends, &state.params)?;
        trainer.restore(state)?;
        Ok(trainer)
    }

    /// The network.
    pub fn spec(&self) -> &MlpSpec {
        &self.spec
    }

    /// Number of replicas.
    pub fn replicas(&self) -> usize {
        self.replicas.len()
    }

    /// The first replica's backend.
    pub fn backend(&self) -> &B {
        &self.replicas[0].backend
    }

    /// Optimizer steps taken.
    pub fn step_count(&self) -> u32 {
        self.replicas[0].state.step
    }

    /// One optimizer step on a batch (`rows x inputs` features, `rows x targets_per_row`
    /// targets), split across the replicas. Returns the batch's mean loss.
    pub fn step(&mut self, features: &[f32], targets: &[f32]) -> Result<f64> {
        self.stage(features, targets)?;
        self.step_staged(None)
    }

    /// Starts uploading a batch for the next [`Trainer::step_staged`] (replacing any staged one).
    pub fn stage(&mut self, features: &[f32], targets: &[f32]) -> Result<()> {
        let rows = self.batch_rows(features, targets)?;
        let bounds = slice_bounds(rows, self.replicas.len());
        let spec = &self.spec;
        for (r, replica) in self.replicas.iter_mut().enumerate() {
            let (f, t) = slice(spec, features, targets, &bounds, r);
            replica.stage(spec, f, t)?;
        }
        self.staged = Some(rows);
        Ok(())
    }

    /// One optimizer step on the staged batch; `next`, if given, is staged during the step, its
    /// upload overlapping the step's compute on backends that can (a GPU's copy engine).
    /// Returns the batch's mean loss.
    pub fn step_staged(&mut self, next: Option<(&[f32], &[f32])>) -> Result<f64> {
        let rows = self
            .staged
            .take()
            .ok_or_else(|| KernelError::Unsupported("step_staged: no batch staged".into()))?;
        let next_rows = next.map(|(f, t)| self.batch_rows(f, t)).transpose()?;
        let n = self.replicas.len();
        let next_bounds = next_rows.map(|r| slice_bounds(r, n));
        let spec = &self.spec;
        let next_slice = |r: usize| {
            next.zip(next_bounds.as_ref())
                .map(|((f, t), b)| slice(spec, f, t, b, r))
        };
        let loss_sum = if n == 1 {
            self.replicas[0].gradients(spec, rows, next_slice(0))?
        } else {
            let sums: Vec<Result<f64>> = std::thread::scope(|scope| {
                let handles: Vec<_> = self
                    .replicas
                    .iter_mut()
                    .enumerate()
                    .map(|(r, replica)| {
                        let next = next_slice(r);
                        scope.spawn(move || replica.gradients(spec, rows, next))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("replica thread panicked"))
                    .collect()
            });
            let mut total = 0.0;
            for s in sums {
                total += s?;
            }
            all_reduce_gradients(spec, &mut self.replicas)?;
            total
        };
        self.staged = next_rows;
        for replica in &mut self.replicas {
            mlp::optimizer_step(
                &replica.backend,
                &self.optimizer,
                &mut replica.state,
                &mut replica.params,
                &mut replica.grads,
            )?;
        }
        Ok(match spec.loss {
            Loss::SoftmaxCrossEntropy => loss_sum / rows as f64,
            Loss::Mse => loss_sum / (rows * spec.outputs()) as f64,
        })
    }

    /// Rows of a batch, checking both parts' lengths.
    fn batch_rows(&self, features: &[f32], targets: &[f32]) -> Result<usize> {
        let spec = &self.spec;
        let rows = features.len() / spec.inputs();
        crate::backend::check_len("step", "features", features.len(), rows * spec.inputs())?;
        crate::backend::check_len(
            "step",
            "targets",
            targets.len(),
            rows * spec.targets_per_row(),
        )?;
        if rows == 0 {
            return Err(KernelError::Unsupported("an empty batch".into()));
        }
        Ok(rows)
    }

    /// Loss (and accuracy, for classification) over `data`, in batches of `batch` rows on the
    /// first replica. Parameters are not changed.
    pub fn evaluate(&mut self, data: &Dataset, batch: usize) -> Result<Evaluation> {
        data.check(&self.spec)?;
        let spec = &self.spec;
        let replica = &mut self.replicas[0];
        let rows = data.rows();
        let (mut loss, mut correct) = (0.0, 0usize);
        let mut output = Vec::new();
        let order: Vec<usize> = (0..rows).collect();
        let (mut f, mut t) = (Vec::new(), Vec::new());
        for chunk in order.chunks(batch.max(1)) {
            data.gather(chunk, &mut f, &mut t);
            let w = replica.workspace(spec, chunk.len())?;
            let ws = &mut replica.workspaces[w];
            mlp::forward(&replica.backend, spec, &replica.params, ws, &f)?;
            loss += mlp::loss(&replica.backend, spec, ws, &t, 1)?;
            if spec.loss == Loss::SoftmaxCrossEntropy {
                output.resize(chunk.len() * spec.outputs(), 0.0);
                replica.backend.download(ws.output(), &mut output)?;
                for (row, label) in output.chunks_exact(spec.outputs()).zip(&t) {
                    let best = row
                        .iter()
                        .enumerate()
                        .fold(
                            (0, f32::NEG_INFINITY),
                            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                        )
                        .0;
                    correct += usize::from(best == *label as usize);
                }
            }
        }
        let rows = rows.max(1) as f64;
        Ok(match spec.loss {
            Loss::SoftmaxCrossEntropy => Evaluation {
                loss: loss / rows,
                accuracy: Some(correct as f64 / rows),
            },
            Loss::Mse => Evaluation {
                loss: loss / (rows * spec.outputs() as f64),
                accuracy: None,
            },
        })
    }

    /// A host copy of everything needed to continue (from the first replica: all are equal).
    pub fn snapshot(&self) -> Result<TrainState> {
        let r = &self.replicas[0];
        Ok(TrainState {
            spec: self.spec.clone(),
            optimizer: self.optimizer,
            step: r.state.step,
            params: r.params.download(&r.backend)?,
            m: r.state.m.download(&r.backend)?,
            v: r.state.v.download(&r.backend)?,
        })
    }

    /// Overwrites parameters and optimizer state on every replica from `state`.
    pub fn restore(&mut self, state: &TrainState) -> Result<()> {
        if state.spec != self.spec {
            return Err(KernelError::Unsupported(format!(
                "the saved network {:?} is not this trainer's {:?}",
                state.spec.sizes, self.spec.sizes
            )));
        }
        let lengths = self.spec.tensor_lengths();
        for (what, tensors) in [("params", &state.params), ("m", &state.m), ("v", &state.v)] {
            crate::backend::check_len("restore", what, tensors.len(), lengths.len())?;
            for (t, want) in tensors.iter().zip(&lengths) {
                crate::backend::check_len("restore", what, t.len(), *want)?;
            }
        }
        if let Err(e) = state.check() {
            return Err(KernelError::Invalid(format!(
                "cannot continue from the saved state: {e}"
            )));
        }
        self.optimizer = state.optimizer;
        for r in &mut self.replicas {
            r.params.write(&r.backend, &state.params)?;
            r.state.m.write(&r.backend, &state.m)?;
            r.state.v.write(&r.backend, &state.v)?;
            r.state.step = state.step;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
