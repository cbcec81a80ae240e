use super::*;
use crate::agreement::{assert_close, close, values};
use crate::cpu::CpuBackend;

fn cpu() -> CpuBackend {
    CpuBackend::new(1).unwrap()
}

/// Mean loss of `spec` with parameters `host` on one batch.
fn loss_at(spec: &MlpSpec, host: &[Vec<f32>], x: &[f32], t: &[f32]) -> f32 {
    let b = cpu();
    let rows = x.len() / spec.inputs();
    let params = Params::upload(&b, host).unwrap();
    let mut ws = Workspace::new(&b, spec, rows).unwrap();
    forward(&b, spec, &params, &mut ws, x).unwrap();
    let sum = loss(&b, spec, &mut ws, t, rows).unwrap();
    let per = match spec.loss {
        Loss::Mse => rows * spec.outputs(),
        Loss::SoftmaxCrossEntropy => rows,
    };
    (sum / per as f64) as f32
}

#[test]
fn every_layer_gradient_matches_finite_differences() {
    let rows = 6;
    for (loss_kind, activation) in [
        (Loss::SoftmaxCrossEntropy, Activation::Relu),
        (Loss::Mse, Activation::Relu),
        (Loss::Mse, Activation::Identity),
    ] {
        let spec = MlpSpec {
            sizes: vec![3, 5, 4, 3],
            activation,
            loss: loss_kind,
        };
        let x = values(rows * 3, 40);
        let t: Vec<f32> = match loss_kind {
            Loss::SoftmaxCrossEntropy => (0..rows).map(|r| (r % 3) as f32).collect(),
            Loss::Mse => values(rows * 3, 41),
        };
        let host = spec.initial_parameters(9);
        let b = cpu();
        let params = Params::upload(&b, &host).unwrap();
        let mut grads = Params::zeros(&b, &spec).unwrap();
        let mut ws = Workspace::new(&b, &spec, rows).unwrap();
        forward(&b, &spec, &params, &mut ws, &x).unwrap();
        loss(&b, &spec, &mut ws, &t, rows).unwrap();
        backward(&b, &spec, &params, &mut ws, &mut grads).unwrap();
        let analytic = grads.download(&b).unwrap();

        let h = 1e-2;
        for (tensor, grad) in analytic.iter().enumerate() {
            for i in 0..grad.len() {
                let mut up = host.clone();
                up[tensor][i] += h;
                let mut down = host.clone();
                down[tensor][i] -= h;
                let numeric =
                    (loss_at(&spec, &up, &x, &t) - loss_at(&spec, &down, &x, &t)) / (2.0 * h);
                assert!(
                    close(grad[i], numeric, 2e-2),
                    "{loss_kind:?}/{activation:?}: layer {} {} [{i}]: backprop {}, finite difference {numeric}",
                    tensor / 2,
                    if tensor % 2 == 0 { "weight" } else { "bias" },
                    grad[i]
                );
            }
        }
    }
}

#[test]
fn one_two_one_relu_network_by_hand_through_the_backend() {
    // x = 2; hidden = relu(x * [0.5, -1] + [0.1, 0.2]) = [1.1, 0]; y = 1.1 * 0.3 + 0.05 = 0.38.
    // MSE against 1: loss 0.3844, dy = 2 (0.38 - 1) = -1.24; dW2 = h * dy = [-1.364, 0];
    // dh = dy * W2 = [-0.372, -0.868], masked by the ReLU to [-0.372, 0]; dW1 = x * dh.
    let spec = MlpSpec {
        sizes: vec![1, 2, 1],
        activation: Activation::Relu,
        loss: Loss::Mse,
    };
    let b = cpu();
    let host = vec![vec![0.5, -1.0], vec![0.1, 0.2], vec![0.3, 0.7], vec![0.05]];
    let params = Params::upload(&b, &host).unwrap();
    let mut grads = Params::zeros(&b, &spec).unwrap();
    let mut ws = Workspace::new(&b, &spec, 1).unwrap();
    forward(&b, &spec, &params, &mut ws, &[2.0]).unwrap();
    let hidden = ws.acts[0].clone();
    assert_close(&hidden, &[1.1, 0.0], 1e-6);
    assert_close(ws.output(), &[0.38], 1e-6);
    let sum = loss(&b, &spec, &mut ws, &[1.0], 1).unwrap();
    assert!(close(sum as f32, 0.3844, 1e-5), "{sum}");
    backward(&b, &spec, &params, &mut ws, &mut grads).unwrap();
    let g = grads.download(&b).unwrap();
    assert_close(&g[0], &[-0.744, 0.0], 1e-5);
    assert_close(&g[1], &[-0.372, 0.0], 1e-5);
    assert_close(&g[2], &[-1.364, 0.0], 1e-5);
    assert_close(&g[3], &[-1.24], 1e-5);

    // One SGD step of lr 0.1 moves each parameter by -0.1 * its gradient.
    let mut params = params;
    let mut state = OptimizerState::new(&b, &spec).unwrap();
    let sgd = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.0,
    };
    optimizer_step(&b, &sgd, &mut state, &mut params, &mut grads).unwrap();
    let p = params.download(&b).unwrap();
    assert_close(&p[0], &[0.5744, -1.0], 1e-6);
    assert_close(&p[3], &[0.174], 1e-6);
}

#[test]
fn sgd_momentum_accumulates_velocity() {
    let spec = MlpSpec {
        sizes: vec![1, 1],
        activation: Activation::Identity,
        loss: Loss::Mse,
    };
    let b = cpu();
    let mut params = Params::upload(&b, &[vec![1.0], vec![0.0]]).unwrap();
    let mut state = OptimizerState::new(&b, &spec).unwrap();
    let opt = Optimizer::Sgd {
        lr: 0.5,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    // A constant gradient of 1: velocity 1, then 1.9; the weight moves 0.5 then 0.95.
    for want in [0.5, -0.45] {
        let mut grads = Params::upload(&b, &[vec![1.0], vec![0.0]]).unwrap();
        optimizer_step(&b, &opt, &mut state, &mut params, &mut grads).unwrap();
        assert_close(&params.download(&b).unwrap()[0], &[want], 1e-6);
    }
}

#[test]
fn bad_specs_are_refused() {
    for sizes in [vec![3], vec![3, 0, 2]] {
        let spec = MlpSpec {
            sizes,
            activation: Activation::Relu,
            loss: Loss::Mse,
        };
        assert!(spec.validate().is_err());
    }
    let one_class = MlpSpec {
        sizes: vec![2, 1],
        activation: Activation::Relu,
        loss: Loss::SoftmaxCrossEntropy,
    };
    assert!(
        one_class
            .validate()
            .unwrap_err()
            .to_string()
            .contains("two outputs")
    );
}
