//! Seeded synthetic datasets, built in so training can be tried (and tested) without files.

use crate::rng::Rng;
use crate::train::Dataset;

/// `classes` interleaved spiral arms in the plane, `rows_per_class` points each, with Gaussian
/// noise of `noise` (0.1-0.3 is usual): a classic set no linear model separates.
pub fn spirals(classes: usize, rows_per_class: usize, noise: f32, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed, 0x5B1);
    let rows = classes * rows_per_class;
    let mut features = Vec::with_capacity(rows * 2);
    let mut targets = Vec::with_capacity(rows);
    for i in 0..rows_per_class {
        for c in 0..classes {
            let r = i as f32 / rows_per_class as f32;
            let angle =
                c as f32 * std::f32::consts::TAU / classes as f32 + r * 4.0 + rng.normal() * noise;
            features.push(r * angle.cos());
            features.push(r * angle.sin());
            targets.push(c as f32);
        }
    }
    Dataset {
        features,
        targets,
        inputs: 2,
        targets_per_row: 1,
    }
}

/// A smooth non-linear regression: `inputs` features uniform in [-1, 1] and one target
/// `sin(2 x0) + x1^2 - 0.5 x0 x1 (+ 0.3 x2 ...)` plus Gaussian noise of `noise`.
pub fn regression(rows: usize, inputs: usize, noise: f32, seed: u64) -> Dataset {
    assert!(inputs >= 2, "the regression set needs at least two inputs");
    let mut rng = Rng::new(seed, 0x5B2);
    let mut features = Vec::with_capacity(rows * inputs);
    let mut targets = Vec::with_capacity(rows);
    for _ in 0..rows {
        let x: Vec<f32> = (0..inputs).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let extra: f32 = x[2..].iter().map(|v| 0.3 * v).sum();
        targets.push(
            (2.0 * x[0]).sin() + x[1] * x[1] - 0.5 * x[0] * x[1] + extra + noise * rng.normal(),
        );
        features.extend(x);
    }
    Dataset {
        features,
        targets,
        inputs,
        targets_per_row: 1,
    }
}

/// `rows` rows shaped like a digit-classification set (`inputs` features in [0, 1), `classes`
/// classes whose means differ): a stand-in for MNIST-sized benchmarks, not a learning task.
pub fn dense_classes(rows: usize, inputs: usize, classes: usize, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed, 0x5B3);
    let centres: Vec<f32> = (0..classes * inputs).map(|_| rng.next_f32()).collect();
    let mut features = Vec::with_capacity(rows * inputs);
    let mut targets = Vec::with_capacity(rows);
    for _ in 0..rows {
        let c = rng.below(classes);
        features.extend(
            centres[c * inputs..(c + 1) * inputs]
                .iter()
                .map(|m| (m + 0.3 * rng.normal()).clamp(0.0, 1.0)),
        );
        targets.push(c as f32);
    }
    Dataset {
        features,
        targets,
        inputs,
        targets_per_row: 1,
    }
}
