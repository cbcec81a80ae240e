//! A multi-layer perceptron on any [`Backend`]: parameters, the forward and backward passes, and
//! the optimizer step. Layer `l` maps `sizes[l]` inputs to `sizes[l + 1]` outputs with a weight
//! matrix stored `in x out` (so the forward pass is `x * W`, no transpose) and a bias.

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, GemmShape, KernelError, Result};
use crate::reference::{Adam, Op};
use crate::rng::Rng;

/// The activation after every hidden layer (never after the last).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `max(0, x)`.
    #[default]
    Relu,
    /// None: the network is linear.
    Identity,
}

/// What the network is trained to minimise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Mean squared error over every output of every row; targets are values.
    Mse,
    /// Softmax cross-entropy averaged over rows; targets are class ids (`0..outputs`).
    SoftmaxCrossEntropy,
}

/// The shape of a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlpSpec {
    /// Layer widths, input first, output last (at least two).
    pub sizes: Vec<usize>,
    /// The hidden layers' activation.
    pub activation: Activation,
    /// The loss.
    pub loss: Loss,
}

impl MlpSpec {
    /// Checks the sizes.
    pub fn validate(&self) -> Result<()> {
        if self.sizes.len() < 2 || self.sizes.contains(&0) {
            return Err(KernelError::Unsupported(format!(
                "an MLP needs at least two layer sizes, none zero; got {:?}",
                self.sizes
            )));
        }
        if self.loss == Loss::SoftmaxCrossEntropy && self.outputs() < 2 {
            return Err(KernelError::Unsupported(
                "softmax cross-entropy needs at least two outputs (classes)".into(),
            ));
        }
        Ok(())
    }

    /// Number of layers with weights.
    pub fn layers(&self) -> usize {
        self.sizes.len() - 1
    }

    /// Inputs per row.
    pub fn inputs(&self) -> usize {
        self.sizes[0]
    }

    /// Outputs per row.
    pub fn outputs(&self) -> usize {
        *self.sizes.last().expect("validated")
    }

    /// Target values per row: one class id, or one value per output.
    pub fn targets_per_row(&self) -> usize {
        match self.loss {
            Loss::Mse => self.outputs(),
            Loss::SoftmaxCrossEntropy => 1,
        }
    }

    /// The length of each parameter tensor, in the order [`Params`] holds them: for each
    /// layer, its weights then its bias.
    pub fn tensor_lengths(&self) -> Vec<usize> {
        self.sizes
            .windows(2)
            .flat_map(|w| [w[0] * w[1], w[1]])
            .collect()
    }

    /// Total parameter count.
    pub fn parameters(&self) -> usize {
        self.tensor_lengths().iter().sum()
    }

    /// Seeded initial parameters on the host: He-uniform weights (`U(±sqrt(6 / fan_in))`, the
    /// ReLU choice) and zero biases.
    pub fn initial_parameters(&self, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = Rng::new(seed, 0x1417);
        self.sizes
            .windows(2)
            .flat_map(|w| {
                let bound = (6.0 / w[0] as f32).sqrt();
                let weights = (0..w[0] * w[1])
                    .map(|_| rng.uniform(-bound, bound))
                    .collect();
                [weights, vec![0.0; w[1]]]
            })
            .collect()
    }
}

/// One buffer per parameter tensor (weights and bias of each layer, in order): parameters,
/// their gradients, or an optimizer's per-parameter state.
pub struct Params<B: Backend> {
    /// The tensors.
    pub tensors: Vec<B::Buffer>,
}

impl<B: Backend> Params<B> {
    /// Uploads host tensors.
    pub fn upload(backend: &B, host: &[Vec<f32>]) -> Result<Self> {
        let tensors = host
            .iter()
            .map(|t| backend.upload(t))
            .collect::<Result<_>>()?;
        Ok(Self { tensors })
    }

    /// Zeroed tensors shaped as `spec`'s.
    pub fn zeros(backend: &B, spec: &MlpSpec) -> Result<Self> {
        let tensors = spec
            .tensor_lengths()
            .into_iter()
            .map(|n| backend.alloc(n))
            .collect::<Result<_>>()?;
        Ok(Self { tensors })
    }

    /// Copies every tensor to the host.
    pub fn download(&self, backend: &B) -> Result<Vec<Vec<f32>>> {
        self.tensors
            .iter()
            .map(|t| {
                let mut host = vec![0.0; backend.len(t)];
                backend.download(t, &mut host)?;
                Ok(host)
            })
            .collect()
    }

    /// Overwrites every tensor from host copies of the same shapes.
    pub fn write(&mut self, backend: &B, host: &[Vec<f32>]) -> Result<()> {
        crate::backend::check_len("params.write", "tensors", host.len(), self.tensors.len())?;
        for (t, h) in self.tensors.iter_mut().zip(host) {
            backend.write(t, h)?;
        }
        Ok(())
    }
}

/// Activations and deltas for one batch size, kept between steps so a step allocates nothing.
/// Inputs and targets are double-buffered: the next batch can be prefetched into the spare pair
/// while the current one is in use.
pub struct Workspace<B: Backend> {
    rows: usize,
    input: B::Buffer,
    target: B::Buffer,
    spare_input: B::Buffer,
    spare_target: B::Buffer,
    /// Whether the spare pair holds a prefetched batch.
    staged: bool,
    /// `acts[l]`: layer `l`'s output, `rows x sizes[l + 1]` (the last is the network's output).
    acts: Vec<B::Buffer>,
    /// `deltas[l]`: the loss's gradient with respect to `acts[l]`'s pre-activation.
    deltas: Vec<B::Buffer>,
}

impl<B: Backend> Workspace<B> {
    /// Buffers for batches of `rows` rows.
    pub fn new(backend: &B, spec: &MlpSpec, rows: usize) -> Result<Self> {
        let per_layer = |_: ()| -> Result<Vec<B::Buffer>> {
            spec.sizes[1..]
                .iter()
                .map(|&n| backend.alloc(rows * n))
                .collect()
        };
        Ok(Self {
            rows,
            input: backend.alloc(rows * spec.inputs())?,
            target: backend.alloc(rows * spec.targets_per_row())?,
            spare_input: backend.alloc(rows * spec.inputs())?,
            spare_target: backend.alloc(rows * spec.targets_per_row())?,
            staged: false,
            acts: per_layer(())?,
            deltas: per_layer(())?,
        })
    }

    /// The batch size these buffers hold.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Copies a batch in as the current one.
    pub fn load(&mut self, backend: &B, inputs: &[f32], targets: &[f32]) -> Result<()> {
        backend.write(&mut self.input, inputs)?;
        backend.write(&mut self.target, targets)?;
        self.staged = false;
        Ok(())
    }

    /// Starts copying a batch into the spare pair ([`Backend::prefetch`]); [`Self::take_staged`]
    /// makes it current.
    pub fn prefetch(&mut self, backend: &B, inputs: &[f32], targets: &[f32]) -> Result<()> {
        backend.prefetch(&mut self.spare_input, inputs)?;
        backend.prefetch(&mut self.spare_target, targets)?;
        self.staged = true;
        Ok(())
    }

    /// Makes the prefetched batch current; false (and nothing changes) if none is staged.
    pub fn take_staged(&mut self) -> bool {
        if !self.staged {
            return false;
        }
        std::mem::swap(&mut self.input, &mut self.spare_input);
        std::mem::swap(&mut self.target, &mut self.spare_target);
        self.staged = false;
        true
    }

    /// The network's output for the last forward pass (`rows x outputs`).
    pub fn output(&self) -> &B::Buffer {
        self.acts.last().expect("at least one layer")
    }
}

/// Copies a batch's inputs into the workspace and runs the forward pass; the output is
/// [`Workspace::output`].
pub fn forward<B: Backend>(
    backend: &B,
    spec: &MlpSpec,
    params: &Params<B>,
    ws: &mut Workspace<B>,
    inputs: &[f32],
) -> Result<()> {
    backend.write(&mut ws.input, inputs)?;
    forward_loaded(backend, spec, params, ws)
}

/// The forward pass on the workspace's current inputs.
pub fn forward_loaded<B: Backend>(
    backend: &B,
    spec: &MlpSpec,
    params: &Params<B>,
    ws: &mut Workspace<B>,
) -> Result<()> {
    let layers = spec.layers();
    for l in 0..layers {
        let (done, rest) = ws.acts.split_at_mut(l);
        let x = if l == 0 { &ws.input } else { &done[l - 1] };
        let out = &mut rest[0];
        let relu = l + 1 < layers && spec.activation == Activation::Relu;
        let (w, bias) = (&params.tensors[2 * l], &params.tensors[2 * l + 1]);
        backend.gemm_bias_activation(forward_gemm(spec, ws.rows, l), x, w, out, bias, relu)?;
    }
    Ok(())
}

/// The loss of the last forward pass against `targets`, and its gradient into the last delta.
/// `batch` is the global batch's row count (several replicas may share it): gradients are
/// scaled so that summing them over replicas gives the mean over the whole batch. Returns the
/// loss summed over this workspace's rows (cross-entropy) or over its values (MSE).
pub fn loss<B: Backend>(
    backend: &B,
    spec: &MlpSpec,
    ws: &mut Workspace<B>,
    targets: &[f32],
    batch: usize,
) -> Result<f64> {
    backend.write(&mut ws.target, targets)?;
    loss_loaded(backend, spec, ws, batch)
}

/// [`loss`] against the workspace's current targets.
pub fn loss_loaded<B: Backend>(
    backend: &B,
    spec: &MlpSpec,
    ws: &mut Workspace<B>,
    batch: usize,
) -> Result<f64> {
    let last = spec.layers() - 1;
    let out = &ws.acts[last];
    let grad = &mut ws.deltas[last];
    match spec.loss {
        Loss::SoftmaxCrossEntropy => {
            backend.softmax_cross_entropy(out, &ws.target, spec.outputs(), 1.0 / batch as f32, grad)
        }
        Loss::Mse => backend.mse(out, &ws.target, 1.0 / (batch * spec.outputs()) as f32, grad),
    }
}

/// Back-propagates the last delta (set by [`loss`]) through the network, overwriting `grads`.
pub fn backward<B: Backend>(
    backend: &B,
    spec: &MlpSpec,
    params: &Params<B>,
    ws: &mut Workspace<B>,
    grads: &mut Params<B>,
) -> Result<()> {
    let rows = ws.rows;
    let top = spec.layers() - 1;
    // db of the top layer: column sums of the loss gradient. Every layer below gets its db
    // with its delta, in the same call.
    backend.bias_grad(&ws.deltas[top], &mut grads.tensors[2 * top + 1])?;
    for l in (0..=top).rev() {
        let (lower, upper) = ws.deltas.split_at_mut(l);
        let delta = &upper[0];
        let x = if l == 0 { &ws.input } else { &ws.acts[l - 1] };
        // dW = x^T * delta
        let (below_grads, grads_l) = grads.tensors.split_at_mut(2 * l);
        backend.gemm(weight_grad_gemm(spec, rows, l), x, delta, &mut grads_l[0])?;
        if l > 0 {
            // delta_below = delta * W^T, then through the activation; db below = its column sums
            let (below, db_below) = (&mut lower[l - 1], &mut below_grads[2 * l - 1]);
            let (shape, w) = (input_grad_gemm(spec, rows, l), &params.tensors[2 * l]);
            if spec.activation == Activation::Relu {
                let activated = &ws.acts[l - 1];
                backend.gemm_relu_backward(shape, delta, w, below, activated, db_below)?;
            } else {
                backend.gemm(shape, delta, w, below)?;
                backend.bias_grad(below, db_below)?;
            }
        }
    }
    Ok(())
}

/// Layer `l`'s forward product on `rows` rows: `x * W`.
fn forward_gemm(spec: &MlpSpec, rows: usize, l: usize) -> GemmShape {
    GemmShape::new(Op::N, Op::N, rows, spec.sizes[l + 1], spec.sizes[l])
}

/// Layer `l`'s weight gradient: `x^T * delta`.
fn weight_grad_gemm(spec: &MlpSpec, rows: usize, l: usize) -> GemmShape {
    GemmShape::new(Op::T, Op::N, spec.sizes[l], spec.sizes[l + 1], rows)
}

/// The delta below layer `l` (`l > 0`): `delta * W^T`.
fn input_grad_gemm(spec: &MlpSpec, rows: usize, l: usize) -> GemmShape {
    GemmShape::new(Op::N, Op::T, rows, spec.sizes[l], spec.sizes[l + 1])
}

/// Every GEMM of one training step on `rows` rows, in the order the step runs them: each
/// layer's forward product, then from the last layer down its weight gradient and (but for the
/// first layer) the delta below it.
pub fn step_gemms(spec: &MlpSpec, rows: usize) -> Vec<GemmShape> {
    let layers = spec.layers();
    let forward = (0..layers).map(|l| forward_gemm(spec, rows, l));
    let backward = (0..layers).rev().flat_map(|l| {
        std::iter::once(weight_grad_gemm(spec, rows, l))
            .chain((l > 0).then(|| input_grad_gemm(spec, rows, l)))
    });
    forward.chain(backward).collect()
}

/// An optimizer and its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Optimizer {
    /// Stochastic gradient descent with optional momentum and (coupled) weight decay.
    Sgd {
        /// Learning rate.
        lr: f32,
        /// Momentum (0: none).
        #[serde(default)]
        momentum: f32,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f32,
    },
    /// Adam, or AdamW when `weight_decay > 0`.
    Adam(Adam),
}

impl Optimizer {
    /// The learning rate.
    pub fn lr(&self) -> f32 {
        match *self {
            Optimizer::Sgd { lr, .. } => lr,
            Optimizer::Adam(a) => a.lr,
        }
    }

    /// The first setting outside the range where its update is defined, as `(field, message)`;
    /// `None` when all are inside. PyTorch's ranges, closed where an end point breaks the
    /// update: a beta of 1 makes Adam's bias correction divide by zero and above 1 its moments
    /// grow without bound, a zero `eps` divides zero by zero for a parameter with no gradient
    /// yet, a momentum of 1 or more never forgets, and AdamW's decay `1 - lr * weight_decay`
    /// must stay a decay.
    pub fn invalid_setting(&self) -> Option<(&'static str, String)> {
        let positive = |field, v: f32| {
            (!(v > 0.0 && v.is_finite())).then_some((field, "a positive finite number", v))
        };
        let non_negative = |field, v: f32| {
            (!(v >= 0.0 && v.is_finite())).then_some((field, "a finite number of at least 0", v))
        };
        let below_one =
            |field, v: f32| (!(0.0..1.0).contains(&v)).then_some((field, "in [0, 1)", v));
        let bad = match *self {
            Optimizer::Sgd {
                lr,
                momentum,
                weight_decay,
            } => positive("lr", lr)
                .or(below_one("momentum", momentum))
                .or(non_negative("weight_decay", weight_decay)),
            Optimizer::Adam(a) => positive("lr", a.lr)
                .or(below_one("beta1", a.beta1))
                .or(below_one("beta2", a.beta2))
                .or(positive("eps", a.eps))
                .or(non_negative("weight_decay", a.weight_decay))
                .or_else(|| {
                    (a.lr * a.weight_decay >= 1.0).then_some((
                        "weight_decay",
                        "such that lr * weight_decay is below 1",
                        a.weight_decay,
                    ))
                }),
        };
        bad.map(|(field, range, v)| {
            (
                field,
                format!("`optimizer.{field}` must be {range}, not {v}"),
            )
        })
    }

    /// [`Optimizer::invalid_setting`] as an error.
    pub fn check(&self) -> Result<()> {
        match self.invalid_setting() {
            Some((_, message)) => Err(KernelError::Invalid(message)),
            None => Ok(()),
        }
    }
}

/// An optimizer's per-parameter state: the step count and up to two moment tensors per
/// parameter tensor (SGD momentum uses `m` as its velocity).
pub struct OptimizerState<B: Backend> {
    /// Steps taken so far.
    pub step: u32,
    /// First moments (or velocity).
    pub m: Params<B>,
    /// Second moments (Adam only; zero-length use otherwise).
    pub v: Params<B>,
}

impl<B: Backend> OptimizerState<B> {
    /// Fresh state for `spec`.
    pub fn new(backend: &B, spec: &MlpSpec) -> Result<Self> {
        Ok(Self {
            step: 0,
            m: Params::zeros(backend, spec)?,
            v: Params::zeros(backend, spec)?,
        })
    }
}

/// One optimizer step on every parameter tensor.
pub fn optimizer_step<B: Backend>(
    backend: &B,
    opt: &Optimizer,
    state: &mut OptimizerState<B>,
    params: &mut Params<B>,
    grads: &mut Params<B>,
) -> Result<()> {
    state.step += 1;
    let tensors = params
        .tensors
        .iter_mut()
        .zip(grads.tensors.iter_mut())
        .zip(state.m.tensors.iter_mut().zip(state.v.tensors.iter_mut()));
    for ((p, g), (m, v)) in tensors {
        match *opt {
            Optimizer::Adam(adam) => backend.adam_step(&adam, state.step, p, g, m, v)?,
            Optimizer::Sgd {
                lr,
                momentum,
                weight_decay,
            } => {
                if weight_decay != 0.0 {
                    backend.axpy(weight_decay, p, g)?;
                }
                if momentum != 0.0 {
                    backend.scale(momentum, m)?;
                    backend.axpy(1.0, g, m)?;
                    backend.axpy(-lr, m, p)?;
                } else {
                    backend.axpy(-lr, g, p)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
