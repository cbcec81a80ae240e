use super::*;
use crate::agreement::{assert_close, close, transpose, values};

#[test]
fn gemm_by_hand() {
    // [1 2 3; 4 5 6] * [7 8; 9 10; 11 12] = [58 64; 139 154]
    let a = [1., 2., 3., 4., 5., 6.];
    let b = [7., 8., 9., 10., 11., 12.];
    let mut c = [1.0; 4];
    gemm(Op::N, Op::N, 2, 2, 3, 1.0, &a, &b, 0.0, &mut c);
    assert_eq!(c, [58., 64., 139., 154.]);
    // alpha and beta: 2 * a*b + 0.5 * c
    gemm(Op::N, Op::N, 2, 2, 3, 2.0, &a, &b, 0.5, &mut c);
    assert_eq!(c, [145., 160., 347.5, 385.]);
}

#[test]
fn gemm_transposes_agree_with_explicit_transposes() {
    let (m, n, k) = (5, 4, 3);
    let a = values(m * k, 1);
    let b = values(k * n, 2);
    let mut want = vec![0.0; m * n];
    gemm(Op::N, Op::N, m, n, k, 1.0, &a, &b, 0.0, &mut want);
    let at = transpose(&a, m, k);
    let bt = transpose(&b, k, n);
    for (op_a, op_b, a, b) in [
        (Op::T, Op::N, &at, &b),
        (Op::N, Op::T, &a, &bt),
        (Op::T, Op::T, &at, &bt),
    ] {
        let mut c = vec![0.0; m * n];
        gemm(op_a, op_b, m, n, k, 1.0, a, b, 0.0, &mut c);
        assert_close(&c, &want, 1e-6);
    }
}

#[test]
fn bias_relu_and_its_backward_by_hand() {
    let mut x = [1.0, -2.0, 0.5, -0.5];
    bias_relu_forward(&mut x, &[0.5, 1.0]);
    assert_eq!(x, [1.5, 0.0, 1.0, 0.5]);
    let mut grad = [1.0, 2.0, 3.0, 4.0];
    relu_backward(&mut grad, &x);
    assert_eq!(grad, [1.0, 0.0, 3.0, 4.0]);
    assert_eq!(bias_grad(&grad, 2), [4.0, 4.0]);
}

/// Central differences of `loss` at `x`, one coordinate at a time.
fn numeric_grad(x: &[f32], loss: impl Fn(&[f32]) -> f32) -> Vec<f32> {
    let h = 1e-3;
    (0..x.len())
        .map(|i| {
            let mut up = x.to_vec();
            let mut down = x.to_vec();
            up[i] += h;
            down[i] -= h;
            (loss(&up) - loss(&down)) / (2.0 * h)
        })
        .collect()
}

#[test]
fn softmax_cross_entropy_gradient_matches_finite_differences() {
    let (rows, classes) = (3, 4);
    let logits = values(rows * classes, 3);
    let labels = [0, 3, 1];
    let (_, grad) = softmax_cross_entropy(&logits, &labels, classes);
    let numeric = numeric_grad(&logits, |z| softmax_cross_entropy(z, &labels, classes).0);
    assert_close(&grad, &numeric, 2e-3);
    // Uniform logits: the loss is ln(classes), whatever the labels.
    let (loss, _) = softmax_cross_entropy(&[7.0; 8], &[1, 2], 4);
    assert!(close(loss, 4f32.ln(), 1e-6), "{loss}");
    // Large logits do not overflow.
    let (loss, grad) = softmax_cross_entropy(&[1000.0, 0.0], &[0], 2);
    assert!(loss.is_finite() && grad.iter().all(|g| g.is_finite()));
}

#[test]
fn mse_and_its_gradient() {
    let p = values(6, 4);
    let t = values(6, 5);
    let (_, grad) = mse(&p, &t);
    assert_close(&grad, &numeric_grad(&p, |x| mse(x, &t).0), 2e-3);
    assert_eq!(mse(&[1.0, 3.0], &[0.0, 1.0]).0, 2.5);
}

#[test]
fn adam_first_step_moves_each_parameter_by_the_learning_rate() {
    // After one step m_hat = g and v_hat = g^2, so the update is lr * sign(g) (eps aside).
    let opt = Adam {
        lr: 0.1,
        ..Adam::default()
    };
    let mut p = [1.0, 1.0, 1.0];
    let (mut m, mut v) = ([0.0; 3], [0.0; 3]);
    adam_step(&opt, 1, &mut p, &[0.5, -2.0, 1e-3], &mut m, &mut v);
    assert_close(&p, &[0.9, 1.1, 0.9], 1e-4);
    // AdamW also shrinks the weights by lr * weight_decay * w.
    let decay = Adam {
        weight_decay: 0.5,
        ..opt
    };
    let mut p = [2.0];
    let (mut m, mut v) = ([0.0], [0.0]);
    adam_step(&decay, 1, &mut p, &[1.0], &mut m, &mut v);
    assert_close(&p, &[2.0 - 0.1 * (1.0 + 0.5 * 2.0)], 1e-5);
}

#[test]
fn axpy_and_scale() {
    let mut y = [1.0, 2.0];
    axpy(2.0, &[3.0, -1.0], &mut y);
    assert_eq!(y, [7.0, 0.0]);
    scale(0.5, &mut y);
    assert_eq!(y, [3.5, 0.0]);
}

/// A 1-2-1 network with a ReLU hidden layer and MSE, forward and backward, against values
/// worked out by hand:
/// x = 2; W1 = [0.5, -1.0], b1 = [0.1, 0.2] -> pre = [1.1, -1.8], h = [1.1, 0];
/// W2 = [0.3, 0.7], b2 = 0.05 -> y = 0.38; target 1 -> loss 0.3844, dL/dy = -1.24;
/// dW2 = h * dy = [-1.364, 0], db2 = -1.24; dh = dy * W2 = [-0.372, -0.868] -> ReLU -> [-0.372, 0];
/// dW1 = x * dh = [-0.744, 0], db1 = [-0.372, 0].
#[test]
fn one_two_one_relu_network_by_hand() {
    let x = [2.0];
    let w1 = [0.5, -1.0]; // 1 x 2
    let b1 = [0.1, 0.2];
    let w2 = [0.3, 0.7]; // 2 x 1
    let b2 = [0.05];

    let mut h = [0.0; 2];
    gemm(Op::N, Op::N, 1, 2, 1, 1.0, &x, &w1, 0.0, &mut h);
    bias_relu_forward(&mut h, &b1);
    assert_close(&h, &[1.1, 0.0], 1e-6);
    let mut y = [0.0];
    gemm(Op::N, Op::N, 1, 1, 2, 1.0, &h, &w2, 0.0, &mut y);
    axpy(1.0, &b2, &mut y);
    assert_close(&y, &[0.38], 1e-6);
    let (loss, dy) = mse(&y, &[1.0]);
    assert!(close(loss, 0.3844, 1e-5), "{loss}");
    assert_close(&dy, &[-1.24], 1e-5);

    let mut dw2 = [0.0; 2];
    gemm(Op::T, Op::N, 2, 1, 1, 1.0, &h, &dy, 0.0, &mut dw2);
    assert_close(&dw2, &[-1.364, 0.0], 1e-5);
    assert_close(&bias_grad(&dy, 1), &[-1.24], 1e-5);
    let mut dh = [0.0; 2];
    gemm(Op::N, Op::T, 1, 2, 1, 1.0, &dy, &w2, 0.0, &mut dh);
    assert_close(&dh, &[-0.372, -0.868], 1e-5);
    relu_backward(&mut dh, &h);
    assert_close(&dh, &[-0.372, 0.0], 1e-5);
    let mut dw1 = [0.0; 2];
    gemm(Op::T, Op::N, 1, 2, 1, 1.0, &x, &dh, 0.0, &mut dw1);
    assert_close(&dw1, &[-0.744, 0.0], 1e-5);
    assert_close(&bias_grad(&dh, 2), &[-0.372, 0.0], 1e-5);
}
