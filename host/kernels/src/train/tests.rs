use super::*;
use crate::agreement::{assert_close, assert_staging_changes_nothing, fit};
use crate::cpu::CpuBackend;
use crate::mlp::Activation;
use crate::reference::Adam;
use crate::synthetic;

fn cpus(replicas: usize, threads: usize) -> Vec<CpuBackend> {
    (0..replicas)
        .map(|_| CpuBackend::new(threads).unwrap())
        .collect()
}

fn classifier(sizes: Vec<usize>) -> MlpSpec {
    MlpSpec {
        sizes,
        activation: Activation::Relu,
        loss: Loss::SoftmaxCrossEntropy,
    }
}

fn adam(lr: f32) -> Optimizer {
    Optimizer::Adam(Adam {
        lr,
        ..Adam::default()
    })
}

#[test]
fn spirals_are_learned_to_at_least_95_percent() {
    let data = synthetic::spirals(3, 300, 0.15, 1);
    let (test, train) = data.split_at(0);
    assert_eq!(test.rows(), 0);
    let mut trainer =
        Trainer::new(classifier(vec![2, 64, 64, 3]), adam(0.01), cpus(1, 1), 7).unwrap();
    let before = trainer.evaluate(&train, 256).unwrap();
    fit(&mut trainer, &train, 150, 64, 7);
    let after = trainer.evaluate(&train, 256).unwrap();
    let held_out = synthetic::spirals(3, 100, 0.15, 2);
    let generalises = trainer.evaluate(&held_out, 256).unwrap();
    assert!(before.accuracy.unwrap() < 0.6, "{before:?}");
    assert!(
        after.accuracy.unwrap() >= 0.95,
        "training accuracy {after:?}"
    );
    assert!(
        generalises.accuracy.unwrap() >= 0.9,
        "held-out accuracy {generalises:?}"
    );
}

#[test]
fn regression_reaches_a_low_loss() {
    let data = synthetic::regression(2000, 3, 0.05, 3);
    let spec = MlpSpec {
        sizes: vec![3, 64, 64, 1],
        activation: Activation::Relu,
        loss: Loss::Mse,
    };
    let mut trainer = Trainer::new(spec, adam(0.005), cpus(1, 1), 5).unwrap();
    let before = trainer.evaluate(&data, 500).unwrap().loss;
    fit(&mut trainer, &data, 60, 50, 5);
    let after = trainer.evaluate(&data, 500).unwrap().loss;
    // The noise alone is 0.05^2 = 0.0025; the target's variance is about 0.9.
    assert!(before > 0.3, "{before}");
    assert!(after < 0.01, "MSE after training {after}");
}

#[test]
fn data_parallel_equals_single_replica_on_the_whole_batch() {
    let data = synthetic::spirals(3, 100, 0.2, 4);
    let spec = classifier(vec![2, 32, 16, 3]);
    let mut single = Trainer::new(spec.clone(), adam(0.01), cpus(1, 1), 11).unwrap();
    // 3 replicas over batches of 40 rows: uneven slices (14, 13, 13), and a 20-row tail.
    let mut parallel = Trainer::new(spec, adam(0.01), cpus(3, 1), 11).unwrap();
    let single_loss = fit(&mut single, &data, 3, 40, 11);
    let parallel_loss = fit(&mut parallel, &data, 3, 40, 11);
    assert!(
        (single_loss - parallel_loss).abs() < 1e-4,
        "{single_loss} vs {parallel_loss}"
    );
    let (a, b) = (single.snapshot().unwrap(), parallel.snapshot().unwrap());
    assert_eq!(a.step, b.step);
    for (x, y) in a.params.iter().zip(&b.params) {
        assert_close(x, y, 1e-4);
    }
}

#[test]
fn more_replicas_than_rows_still_trains() {
    let data = synthetic::spirals(2, 2, 0.1, 5);
    let mut t = Trainer::new(classifier(vec![2, 4, 2]), adam(0.01), cpus(6, 1), 1).unwrap();
    let loss = t.step(&data.features, &data.targets).unwrap();
    assert!(loss.is_finite());
}

#[test]
fn the_same_seed_and_threads_give_bit_identical_training() {
    let data = synthetic::spirals(3, 200, 0.2, 6);
    let run = |threads| {
        let mut t = Trainer::new(
            classifier(vec![2, 512, 256, 3]),
            adam(0.01),
            cpus(2, threads),
            3,
        )
        .unwrap();
        fit(&mut t, &data, 2, 300, 3);
        t.snapshot().unwrap()
    };
    assert!(run(2) == run(2), "two runs with one seed differ");
}

#[test]
fn resume_from_a_snapshot_continues_exactly() {
    let data = synthetic::spirals(3, 120, 0.2, 8);
    let (seed, batch) = (21, 32);
    let spec = classifier(vec![2, 16, 3]);
    let mut straight = Trainer::new(spec.clone(), adam(0.02), cpus(1, 1), seed).unwrap();
    fit(&mut straight, &data, 2, batch, seed);

    // Stop mid-way through epoch 1 (after 5 of its batches), save, restore elsewhere, continue.
    let mut first = Trainer::new(spec, adam(0.02), cpus(1, 1), seed).unwrap();
    fit(&mut first, &data, 1, batch, seed);
    let order = epoch_order(seed, 1, data.rows());
    let (mut f, mut t) = (Vec::new(), Vec::new());
    let batches: Vec<&[usize]> = order.chunks(batch).collect();
    for rows in &batches[..5] {
        data.gather(rows, &mut f, &mut t);
        first.step(&f, &t).unwrap();
    }
    let saved = first.snapshot().unwrap();
    drop(first);
    let mut resumed = Trainer::resume(&saved, cpus(2, 1)).unwrap();
    for rows in &batches[5..] {
        data.gather(rows, &mut f, &mut t);
        resumed.step(&f, &t).unwrap();
    }
    let (a, b) = (straight.snapshot().unwrap(), resumed.snapshot().unwrap());
    assert_eq!(a.step, b.step);
    // Two replicas after the resume change summation order only.
    for (x, y) in a.params.iter().zip(&b.params) {
        assert_close(x, y, 1e-5);
    }
    // On one replica the continuation is exact.
    let mut exact = Trainer::resume(&saved, cpus(1, 1)).unwrap();
    for rows in &batches[5..] {
        data.gather(rows, &mut f, &mut t);
        exact.step(&f, &t).unwrap();
    }
    assert!(
        exact.snapshot().unwrap() == a,
        "a one-replica resume is not bit-identical"
    );
}

#[test]
fn bad_data_is_refused_with_the_row() {
    let spec = classifier(vec![2, 4, 3]);
    let mut data = synthetic::spirals(3, 4, 0.1, 9);
    data.targets[5] = 3.0;
    let err = data.check(&spec).unwrap_err().to_string();
    assert!(err.contains("row 5") && err.contains("below 3"), "{err}");
    let narrow = Dataset {
        inputs: 1,
        ..synthetic::spirals(3, 4, 0.1, 9)
    };
    assert!(
        narrow
            .check(&spec)
            .unwrap_err()
            .to_string()
            .contains("features per row")
    );
}

#[test]
fn prefetching_the_next_batch_changes_nothing() {
    // The staged path (upload batch i + 1 during step i) against plain steps: bit-identical,
    // across a ragged last batch, with two replicas.
    let data = synthetic::spirals(3, 70, 0.2, 12);
    let spec = classifier(vec![2, 16, 3]);
    let mut plain = Trainer::new(spec.clone(), adam(0.01), cpus(2, 1), 4).unwrap();
    let mut staged = Trainer::new(spec, adam(0.01), cpus(2, 1), 4).unwrap();
    assert_ne!(data.rows() % 32, 0, "the last batch is ragged");
    assert_staging_changes_nothing(&mut plain, &mut staged, &data, 32, 4);
    // Nothing staged any more: a clear error, not a silent re-run.
    let err = staged.step_staged(None).unwrap_err().to_string();
    assert!(err.contains("no batch staged"), "{err}");
}

#[test]
fn bf16_training_learns_what_f32_training_learns() {
    if !CpuBackend::bf16_available() {
        eprintln!("bf16_training_learns_what_f32_training_learns: skipped, this CPU has no AMX");
        return;
    }
    let data = synthetic::spirals(3, 300, 0.15, 1);
    let held_out = synthetic::spirals(3, 100, 0.15, 2);
    let train = |precision| {
        let cpus = vec![CpuBackend::with_precision(1, precision).unwrap()];
        let mut t = Trainer::new(classifier(vec![2, 64, 64, 3]), adam(0.01), cpus, 7).unwrap();
        let loss = fit(&mut t, &data, 150, 64, 7);
        (loss, t.evaluate(&held_out, 256).unwrap().accuracy.unwrap())
    };
    let (f32_loss, f32_accuracy) = train(crate::Precision::F32);
    let (bf16_loss, bf16_accuracy) = train(crate::Precision::Bf16);
    assert!(
        bf16_accuracy >= 0.9,
        "bf16 held-out accuracy {bf16_accuracy}"
    );
    assert!(
        (bf16_accuracy - f32_accuracy).abs() <= 0.03,
        "held-out accuracy: bf16 {bf16_accuracy}, f32 {f32_accuracy}"
    );
    assert!(
        bf16_loss <= 1.5 * f32_loss + 0.02,
        "last epoch's loss: bf16 {bf16_loss}, f32 {f32_loss}"
    );
}

/// Found by a hostile config: `beta1 = 1`, `beta2 = 1.5` and `eps = 0` were accepted (only
/// finiteness was checked) and trained to a NaN loss, which the run then reported as a
/// success. Every setting is now held to the range where its update is defined.
#[test]
fn optimizer_settings_that_trained_to_nan_are_refused_naming_the_setting() {
    let adam_with = |f: fn(&mut Adam)| {
        let mut a = Adam::default();
        f(&mut a);
        Optimizer::Adam(a)
    };
    let sgd = |lr, momentum, weight_decay| Optimizer::Sgd {
        lr,
        momentum,
        weight_decay,
    };
    for (optimizer, field) in [
        (adam_with(|a| a.beta1 = 1.0), "beta1"),
        (adam_with(|a| a.beta1 = -0.1), "beta1"),
        (adam_with(|a| a.beta2 = 1.5), "beta2"),
        (adam_with(|a| a.beta2 = f32::NAN), "beta2"),
        (adam_with(|a| a.eps = 0.0), "eps"),
        (adam_with(|a| a.lr = 0.0), "lr"),
        (adam_with(|a| a.weight_decay = -1e-4), "weight_decay"),
        // AdamW scales every parameter by 1 - lr * weight_decay a step: 0 or below is no decay.
        (
            adam_with(|a| {
                a.lr = 0.1;
                a.weight_decay = 10.0;
            }),
            "weight_decay",
        ),
        (sgd(0.1, 1.0, 0.0), "momentum"),
        (sgd(0.1, 0.9, -1.0), "weight_decay"),
        (sgd(f32::INFINITY, 0.0, 0.0), "lr"),
    ] {
        let e = match Trainer::new(classifier(vec![2, 4, 3]), optimizer, cpus(1, 1), 1) {
            Ok(_) => panic!("{optimizer:?} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(&format!("`optimizer.{field}`")),
            "{optimizer:?}: {e}"
        );
        assert_eq!(optimizer.invalid_setting().map(|(f, _)| f), Some(field));
    }
    // The ends that are inside: no momentum, no decay, betas of 0.
    for optimizer in [
        sgd(0.1, 0.0, 0.0),
        adam_with(|a| {
            a.beta1 = 0.0;
            a.beta2 = 0.0;
        }),
    ] {
        assert!(optimizer.invalid_setting().is_none(), "{optimizer:?}");
    }
}

/// A saved state with a NaN parameter (a run that diverged) or a negative second moment
/// cannot be continued from: refused on resume and on restore, naming the value.
#[test]
fn a_saved_state_holding_nan_or_a_negative_second_moment_is_refused() {
    let spec = classifier(vec![2, 4, 3]);
    let trainer = Trainer::new(spec, adam(0.01), cpus(1, 1), 1).unwrap();
    let good = trainer.snapshot().unwrap();
    assert!(good.check().is_ok());
    for (poke, want) in [
        (
            (|s: &mut TrainState| s.params[2][5] = f32::NAN) as fn(&mut TrainState),
            "parameter 5 of tensor 2 is NaN",
        ),
        (
            |s| s.m[0][1] = f32::INFINITY,
            "first moment 1 of tensor 0 is inf",
        ),
        (|s| s.v[1][0] = -1.0, "second moment 0 of tensor 1 is -1"),
        (|s| s.optimizer = adam(-1.0), "`optimizer.lr`"),
    ] {
        let mut bad = good.clone();
        poke(&mut bad);
        let e = Trainer::resume(&bad, cpus(1, 1)).err().expect("resumed");
        assert!(e.to_string().contains(want), "{e}");
        let mut other = Trainer::resume(&good, cpus(1, 1)).unwrap();
        let e = other.restore(&bad).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
}
