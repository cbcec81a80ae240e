//! The reference kernels: straightforward loops, no blocking, no threads, `f64` accumulation
//! where a sum runs long. Slow on purpose; the backends are checked against them.

/// Whether an operand of [`gemm`] is used as stored or transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// As stored.
    N,
    /// Transposed.
    T,
}

/// `c = alpha * op(a) * op(b) + beta * c`, with `op(a)` `m x k`, `op(b)` `k x n` and `c` `m x n`.
///
/// `a` is stored `m x k` (or `k x m` when transposed), `b` `k x n` (or `n x k`).
#[allow(clippy::too_many_arguments)] // the BLAS signature, kept so backends map onto it 1:1
pub fn gemm(
    op_a: Op,
    op_b: Op,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) {
    assert_eq!(a.len(), m * k, "a is not {m}x{k}");
    assert_eq!(b.len(), k * n, "b is not {k}x{n}");
    assert_eq!(c.len(), m * n, "c is not {m}x{n}");
    let at = |i: usize, p: usize| match op_a {
        Op::N => a[i * k + p],
        Op::T => a[p * m + i],
    };
    let bt = |p: usize, j: usize| match op_b {
        Op::N => b[p * n + j],
        Op::T => b[j * k + p],
    };
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k)
                .map(|p| f64::from(at(i, p)) * f64::from(bt(p, j)))
                .sum();
            let prior = if beta == 0.0 {
                0.0
            } else {
                beta * c[i * n + j]
            };
            c[i * n + j] = alpha * dot as f32 + prior;
        }
    }
}

/// `x[i][j] = max(0, x[i][j] + bias[j])` in place: the forward pass of a dense layer's bias and
/// ReLU, fused.
pub fn bias_relu_forward(x: &mut [f32], bias: &[f32]) {
    let cols = bias.len();
    assert!(
        cols > 0 && x.len().is_multiple_of(cols),
        "x is not rows x {cols}"
    );
    for row in x.chunks_mut(cols) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v = (*v + b).max(0.0);
        }
    }
}

/// `grad[i] = 0` wherever the ReLU's output `activated[i]` is 0: its backward pass, in place.
pub fn relu_backward(grad: &mut [f32], activated: &[f32]) {
    assert_eq!(grad.len(), activated.len());
    for (g, a) in grad.iter_mut().zip(activated) {
        if *a <= 0.0 {
            *g = 0.0;
        }
    }
}

/// The bias gradient: column sums of a `rows x cols` gradient.
pub fn bias_grad(grad: &[f32], cols: usize) -> Vec<f32> {
    assert!(
        cols > 0 && grad.len().is_multiple_of(cols),
        "grad is not rows x {cols}"
    );
    let mut sums = vec![0f64; cols];
    for row in grad.chunks(cols) {
        for (s, g) in sums.iter_mut().zip(row) {
            *s += f64::from(*g);
        }
    }
    sums.into_iter().map(|s| s as f32).collect()
}

/// Softmax cross-entropy over a `rows x classes` batch of logits with one label per row: the
/// mean loss, and its gradient with respect to the logits (`(softmax - onehot) / rows`).
pub fn softmax_cross_entropy(logits: &[f32], labels: &[u32], classes: usize) -> (f32, Vec<f32>) {
    let rows = labels.len();
    assert_eq!(
        logits.len(),
        rows * classes,
        "logits are not {rows}x{classes}"
    );
    let mut grad = vec![0f32; logits.len()];
    let mut loss = 0f64;
    for (r, (row, &label)) in logits.chunks(classes).zip(labels).enumerate() {
        let label = label as usize;
        assert!(
            label < classes,
            "label {label} of row {r} is not below {classes}"
        );
        // Shift by the row's maximum so exp cannot overflow.
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f64> = row.iter().map(|&z| f64::from(z - max).exp()).collect();
        let total: f64 = exps.iter().sum();
        loss += total.ln() - f64::from(row[label] - max);
        for (c, e) in exps.iter().enumerate() {
            let p = e / total;
            let y = if c == label { 1.0 } else { 0.0 };
            grad[r * classes + c] = ((p - y) / rows as f64) as f32;
        }
    }
    ((loss / rows as f64) as f32, grad)
}

/// Mean squared error over all elements, and its gradient with respect to the prediction
/// (`2 (prediction - target) / n`).
pub fn mse(prediction: &[f32], target: &[f32]) -> (f32, Vec<f32>) {
    assert_eq!(prediction.len(), target.len());
    let n = prediction.len() as f64;
    let loss: f64 = prediction
        .iter()
        .zip(target)
        .map(|(p, t)| f64::from(p - t).powi(2))
        .sum::<f64>()
        / n;
    let grad = prediction
        .iter()
        .zip(target)
        .map(|(p, t)| (2.0 * f64::from(p - t) / n) as f32)
        .collect();
    (loss as f32, grad)
}

/// Adam's hyper-parameters; `weight_decay > 0` gives AdamW (decoupled decay).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adam {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to the denominator.
    pub eps: f32,
    /// Decoupled weight decay (AdamW); 0 for Adam.
    pub weight_decay: f32,
}

impl Default for Adam {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// One Adam(W) step at `step` (1 for the first) on `params`, updating the moments `m` and `v`.
pub fn adam_step(
    opt: &Adam,
    step: u32,
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    assert!(step >= 1, "steps count from 1");
    assert!(params.len() == grads.len() && m.len() == grads.len() && v.len() == grads.len());
    let correct1 = 1.0 - f64::from(opt.beta1).powi(step as i32);
    let correct2 = 1.0 - f64::from(opt.beta2).powi(step as i32);
    for i in 0..params.len() {
        m[i] = opt.beta1 * m[i] + (1.0 - opt.beta1) * grads[i];
        v[i] = opt.beta2 * v[i] + (1.0 - opt.beta2) * grads[i] * grads[i];
        let m_hat = f64::from(m[i]) / correct1;
        let v_hat = f64::from(v[i]) / correct2;
        let update = m_hat / (v_hat.sqrt() + f64::from(opt.eps));
        params[i] -= opt.lr * (update as f32 + opt.weight_decay * params[i]);
    }
}

/// `y += alpha * x`.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// `x *= alpha`.
pub fn scale(alpha: f32, x: &mut [f32]) {
    for v in x {
        *v *= alpha;
    }
}

#[cfg(test)]
mod tests;
