//! Property tests: every `TRAIN.toml`, valid or mutated, parses or is refused naming the file;
//! no accepted configuration implies more than its limits, and the data of an accepted synthetic
//! set is generated within the memory the limits allow.

use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::training::limits::memory_estimate;
use gantry_fuzz::{self as fuzz, Syntax};

/// The shipped examples and a few more, to mutate.
fn seeds() -> Vec<String> {
    let mut seeds = vec![
        include_str!("../../../assets/train/spirals.toml").to_string(),
        include_str!("../../../assets/train/regression.toml").to_string(),
        include_str!("../../../assets/train/dense.toml").to_string(),
    ];
    let tail = "[model]\nhidden = [16, 8]\nloss = \"softmax_cross_entropy\"\nclasses = 4\n\
                [optimizer]\nkind = \"sgd\"\nlr = 0.1\nmomentum = 0.9\n\
                [devices]\nreplicas = 2\nthreads = 1\n";
    seeds.push(format!(
        "epochs = 2\nbatch_size = 8\n[data]\ndataset = \"d.csv\"\nlabel_column = 0\n\
         preprocess = \"standardize\"\n{tail}"
    ));
    seeds.push(format!(
        "epochs = 2\nbatch_size = 8\n[data]\nfile = \"d.csv\"\nlabel = \"class\"\n\
         test_fraction = 0.5\n{tail}"
    ));
    seeds.push(format!(
        "epochs = 2\nbatch_size = 8\n[data]\nsynthetic = {{ kind = \"dense\", rows = 64, \
         inputs = 16, classes = 4 }}\n{tail}"
    ));
    seeds
}

/// Checks, independently of the parser, that `c` implies nothing above `limits`.
fn check_within(c: &TrainConfig, limits: &TrainLimits) {
    let m = &c.model;
    assert!(c.epochs >= 1 && c.epochs <= limits.max_epochs, "{c:?}");
    assert!(
        c.batch_size >= 1 && c.batch_size as u64 <= limits.max_batch_size,
        "{c:?}"
    );
    assert!(m.hidden.len() as u64 <= limits.max_hidden_layers, "{c:?}");
    assert!(
        m.hidden
            .iter()
            .all(|&w| w >= 1 && w as u64 <= limits.max_hidden_width),
        "{c:?}"
    );
    assert!(
        m.classes
            .is_none_or(|n| n >= 2 && n as u64 <= limits.max_classes),
        "{c:?}"
    );
    let d = &c.devices;
    assert!(
        d.replicas >= 1 && d.replicas as u64 <= limits.max_replicas,
        "{c:?}"
    );
    assert!(d.threads as u64 <= limits.threads(), "{c:?}");
    assert!((0.0..1.0).contains(&c.data.test_fraction), "{c:?}");
    let hyper = match c.optimizer {
        Optimizer::Sgd {
            lr,
            momentum,
            weight_decay,
        } => vec![lr, momentum, weight_decay],
        Optimizer::Adam(a) => vec![a.lr, a.beta1, a.beta2, a.eps, a.weight_decay],
    };
    assert!(hyper.iter().all(|v| v.is_finite()), "{c:?}");
    let Some(s) = &c.data.synthetic else {
        return;
    };
    // The shape is held to what the generator makes by
    // `accepted_synthetic_sets_are_generated_within_the_limits`.
    let (rows, features, classes) = s.shape();
    let (features, classes) = (u128::from(features), classes.map(u128::from));
    if let Synthetic::Spirals { noise, .. } | Synthetic::Regression { noise, .. } = s {
        assert!(noise.is_finite(), "{c:?}");
    }
    // What the generator itself holds: the rows, and for `dense` a centre per class and feature.
    let centres =
        classes.unwrap_or(0) * features * u128::from(matches!(s, Synthetic::Dense { .. }));
    let generating = (rows * (features + 1) + centres) * 4;
    assert!(
        generating.div_ceil(1 << 20) <= limits.max_memory_mib.into(),
        "{c:?}"
    );
    assert!(rows >= 1 && rows <= limits.max_rows.into(), "{c:?}");
    assert!(features <= limits.max_features.into(), "{c:?}");
    assert!(
        classes.is_none_or(|n| n <= limits.max_classes.into()),
        "{c:?}"
    );
    let steps = u128::from(c.epochs) * rows.div_ceil(c.batch_size as u128);
    assert!(
        steps <= limits.max_steps.min(u32::MAX.into()).into(),
        "{c:?}"
    );
    let outputs = m.classes.map(|n| n as u128).or(classes).unwrap_or(1);
    let hidden: Vec<u64> = m.hidden.iter().map(|&w| w as u64).collect();
    let bytes = memory_estimate(
        rows as u64,
        features as u64,
        1,
        &hidden,
        outputs as u64,
        c.batch_size as u64,
        d.replicas as u64,
    );
    assert!(
        bytes.div_ceil(1 << 20) <= limits.max_memory_mib.into(),
        "{c:?}"
    );
}

/// Limits small enough that an accepted synthetic set can be generated in a test.
fn tight() -> TrainLimits {
    TrainLimits {
        max_rows: 4096,
        max_memory_mib: 4,
        max_threads: 4,
        ..TrainLimits::default()
    }
}

/// A size: mostly a plausible one (1 to 4096, about evenly across orders of magnitude), else
/// zero or anything up to 2^40.
fn size() -> impl Strategy<Value = u64> {
    let log_uniform = |top: u32| (1u32..=top, any::<u64>()).prop_map(|(bits, r)| r >> (64 - bits));
    prop_oneof![
        6 => log_uniform(12).prop_map(|n| n.max(1)),
        1 => Just(0),
        2 => log_uniform(40),
    ]
}

proptest! {
    #![proptest_config(fuzz::config(256))]

    #[test]
    fn mutated_train_configs_are_refused_naming_the_file_or_stay_within_the_limits(
        text in fuzz::mutated_text(seeds(), Syntax::Toml),
    ) {
        for limits in [TrainLimits::default(), tight()] {
            match TrainConfig::parse_with(&text, Path::new("jobs/TRAIN.toml"), &limits) {
                Ok(c) => check_within(&c, &limits),
                Err(e) => {
                    let e = e.to_string();
                    prop_assert!(e.starts_with("jobs/TRAIN.toml"), "{}", e);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(fuzz::config(96))]

    /// Sizes from zero to far beyond memory: whatever is accepted is generated (and split)
    /// within the limits' memory, so nothing a config implies can abort the process.
    #[test]
    fn accepted_synthetic_sets_are_generated_within_the_limits(
        kind in 0u8..3,
        (a, b, c) in (size(), size(), size()),
        (epochs, batch) in (size(), size()),
        hidden in prop::collection::vec(size(), 0..3),
        noise in prop_oneof![Just("0.2".to_string()), Just("nan".to_string()), Just("inf".to_string())],
    ) {
        let synthetic = match kind {
            0 => format!("{{ kind = \"spirals\", classes = {a}, rows_per_class = {b}, noise = {noise} }}"),
            1 => format!("{{ kind = \"regression\", rows = {a}, inputs = {b}, noise = {noise} }}"),
            _ => format!("{{ kind = \"dense\", rows = {a}, inputs = {b}, classes = {c} }}"),
        };
        let loss = if kind == 1 { "mse" } else { "softmax_cross_entropy" };
        let hidden: Vec<String> = hidden.iter().map(u64::to_string).collect();
        let text = format!(
            "epochs = {epochs}\nbatch_size = {batch}\n[data]\nsynthetic = {synthetic}\n\
             [model]\nhidden = [{}]\nloss = \"{loss}\"\n[optimizer]\nkind = \"adam\"\nlr = 0.01\n",
            hidden.join(", ")
        );
        let limits = tight();
        let Ok(config) = TrainConfig::parse_with(&text, Path::new("TRAIN.toml"), &limits) else {
            return Ok(());
        };
        check_within(&config, &limits);
        let s = config.data.synthetic.as_ref().unwrap();
        let data = crate::training::data::generate(s, config.seed);
        let (rows, features, _) = s.shape();
        prop_assert_eq!((data.rows() as u128, data.inputs as u64), (rows, features));
        let bytes = (data.features.len() + data.targets.len()) * 4;
        prop_assert!(bytes <= (limits.max_memory_mib as usize) << 20, "{} bytes", bytes);
        prop_assert!(data.features.iter().all(|v| v.is_finite()), "{}", text);
        let loaded = crate::training::data::prepare(&config, data, "synthetic".into(), &limits, None);
        if let Ok(l) = loaded {
            prop_assert!(l.train.rows() >= 1);
        }
    }
}
