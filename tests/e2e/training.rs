//! `gantry train`: configs, data files, checkpoints and resume, through the binary.

use std::path::Path;

use gantry::training::BackendChoice;
use gantry::training::config::{Synthetic, TrainData, TrainToml};

use crate::support::{gantry, text};

/// A small spirals job; `extra` is appended (a `[checkpoint]` table, say).
fn config(dir: &Path, epochs: u64, extra: &str) -> std::path::PathBuf {
    let p = dir.join("train.toml");
    std::fs::write(&p, format!("{}{extra}", small_spirals(epochs))).unwrap();
    p
}

/// The small spirals job's `TRAIN.toml` on the CPU, one thread.
fn small_spirals(epochs: u64) -> TrainToml {
    TrainToml {
        seed: 3,
        epochs,
        batch_size: 32,
        backend: Some(BackendChoice::Cpu),
        threads: Some(1),
        ..TrainToml::new(TrainData::Synthetic(Synthetic::Spirals {
            classes: 3,
            rows_per_class: 200,
            noise: 0.15,
        }))
    }
}

fn train(args: &[&str], dir: &Path) -> (serde_json::Value, String) {
    let mut all = vec!["train", "--json"];
    all.extend_from_slice(args);
    let out = gantry(&all, dir);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    (serde_json::from_str(&stdout).unwrap(), stderr)
}

#[test]
fn trains_spirals_to_high_accuracy_and_plots_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 40, "");
    let svg = dir.path().join("loss.svg");
    let (v, stderr) = train(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(
        stderr.contains("backend: the CPU was asked for"),
        "{stderr}"
    );
    assert!(stderr.contains("devices: "), "{stderr}");
    let acc = v["test"]["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.95, "test accuracy {acc}: {v}");
    assert_eq!(v["train_rows"], 480);
    assert_eq!(v["test_rows"], 120);
    assert_eq!(v["steps"], 40 * 15);
    assert!(v["samples_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["backend"].as_str().unwrap().starts_with("cpu (1 thread"));
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("training loss"));
}

#[test]
fn resume_latest_continues_to_the_same_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let table = format!(
        "[checkpoint]\ndir = \"{}\"\nevery_steps = 20\n",
        ckpt.display()
    );
    // A straight run of 4 epochs (60 steps)...
    let straight = dir.path().join("straight");
    std::fs::create_dir(&straight).unwrap();
    let cfg = config(&straight, 4, &table.replace("ckpt", "straight/ckpt"));
    let (full, _) = train(&["--config", cfg.to_str().unwrap()], dir.path());
    // ...against 2 epochs, then the same config raised to 4 epochs resumed from the newest
    // checkpoint (step 30: the end of epoch 2, written at the end of that run).
    let cfg = config(dir.path(), 2, &table);
    let (first, _) = train(&["--config", cfg.to_str().unwrap()], dir.path());
    assert_eq!(first["steps"], 30);
    let cfg = config(dir.path(), 4, &table);
    let (resumed, stderr) = train(
        &["--config", cfg.to_str().unwrap(), "--resume-latest"],
        dir.path(),
    );
    assert!(
        stderr.contains("resuming from") && stderr.contains("step-00000030.ckpt"),
        "{stderr}"
    );
    assert_eq!(resumed["resumed_at_step"], 30);
    assert_eq!(resumed["steps"], 60);
    // One thread, one replica: the continuation is bit-for-bit the uninterrupted run.
    let a = std::fs::read(straight.join("ckpt/step-00000060.ckpt")).unwrap();
    let b = std::fs::read(ckpt.join("step-00000060.ckpt")).unwrap();
    assert!(a == b, "resumed checkpoint differs from the straight run's");
    assert_eq!(full["test"], resumed["test"]);

    // A checkpoint from another run (other seed) is refused, naming why.
    let other = config(dir.path(), 4, &table).to_str().unwrap().to_string();
    std::fs::write(
        &other,
        std::fs::read_to_string(&other)
            .unwrap()
            .replace("seed = 3", "seed = 4"),
    )
    .unwrap();
    let out = gantry(
        &["train", "--config", &other, "--resume-latest"],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("made with seed 3, the config says 4"),
        "{}",
        text(&out).1
    );
}

#[test]
fn a_csv_file_beside_the_config_and_its_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("x,y,class\n");
    for i in 0..200 {
        let x = i as f32 / 100.0 - 1.0;
        csv += &format!("{x},{},{}\n", x * x, usize::from(x * x > 0.25));
    }
    std::fs::write(dir.path().join("d.csv"), &csv).unwrap();
    let cfg = dir.path().join("csv.toml");
    let text_cfg = r#"epochs = 30
batch_size = 20
[data]
file = "d.csv"
label = "class"
[model]
hidden = [16]
loss = "softmax_cross_entropy"
[optimizer]
kind = "sgd"
lr = 0.1
momentum = 0.9
"#;
    std::fs::write(&cfg, text_cfg).unwrap();
    let (v, _) = train(&["--config", cfg.to_str().unwrap()], dir.path());
    assert!(v["test"]["accuracy"].as_f64().unwrap() > 0.8, "{v}");

    // Row 4 of the file (line 5) is malformed: refused with file, line and column.
    let bad = csv.replacen("-0.97,", "-0.97x,", 1);
    std::fs::write(dir.path().join("d.csv"), bad).unwrap();
    let out = gantry(&["train", "--config", cfg.to_str().unwrap()], dir.path());
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("d.csv:5: column `x`: `-0.97x` is not a finite number"),
        "{stderr}"
    );
}

#[test]
fn bad_configs_exit_1_naming_the_line_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let good = std::fs::read_to_string(config(
        dir.path(),
        2,
        &format!("[checkpoint]\ndir = \"{}\"\n", ckpt.display()),
    ))
    .unwrap();
    for (from, to, want) in [
        (
            "batch_size = 32",
            "batch_size = 0",
            "train.toml:3: `batch_size` must be at least 1",
        ),
        ("hidden = [64, 64]", "hidden = [64, -1]", "train.toml:7:"),
        (
            "lr = 0.01",
            "lr = 0.01\nmomentum = 2",
            "unknown field `momentum`",
        ),
        (
            "backend = \"cpu\"",
            "backend = \"tpu\"",
            "train.toml:13: unknown variant `tpu`",
        ),
        (
            "backend = \"cpu\"",
            "backend = \"cuda\"",
            "the CUDA backend was asked for, but",
        ),
    ] {
        std::fs::write(dir.path().join("train.toml"), good.replace(from, to)).unwrap();
        let out = gantry(
            &[
                "train",
                "--config",
                dir.path().join("train.toml").to_str().unwrap(),
            ],
            dir.path(),
        );
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{to}: {stderr}");
        assert!(stderr.contains(want), "{to}: want `{want}` in {stderr}");
        assert!(!ckpt.exists(), "{to}: nothing may be written");
    }
    let out = gantry(&["train", "--config", "/no/such/train.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("/no/such/train.toml"));
}

/// Found by a hostile config: with `lr = 1e30` the loss was NaN from step 2 on, and `gantry
/// train` went on to its last epoch, wrote NaN checkpoints and exited 0.
#[test]
fn a_run_that_diverges_exits_1_keeping_only_the_checkpoints_from_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let table = format!(
        "[checkpoint]\ndir = \"{}\"\nevery_steps = 1\n",
        ckpt.display()
    );
    let path = config(dir.path(), 2, &table);
    let toml = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, toml.replace("lr = 0.01", "lr = 1e30")).unwrap();
    let out = gantry(&["train", "--config", path.to_str().unwrap()], dir.path());
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("training diverged at step 2 (epoch 1): its batch's loss was NaN"),
        "{stderr}"
    );
    let mut kept: Vec<String> = std::fs::read_dir(&ckpt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept, ["step-00000001.ckpt"]);
}

/// Three classes of points around three centres as CSV (`x,y,class`): `rows` rows, spread by
/// `seed`; `mangle` edits each line (1-based line number, text) before it is written.
fn blobs(path: &Path, rows: usize, seed: u64, mangle: impl Fn(usize, String) -> String) {
    let mut state = seed;
    let mut noise = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let centres = [(0.0f32, 0.0f32), (3.0, 0.0), (0.0, 3.0)];
    let mut csv = mangle(1, "x,y,class".into()) + "\n";
    for i in 0..rows {
        let (cx, cy) = centres[i % 3];
        let line = format!("{},{},{}", cx + noise(), cy + noise(), i % 3);
        csv += &(mangle(i + 2, line) + "\n");
    }
    std::fs::write(path, csv).unwrap();
}

/// A classification of `train.csv` beside the config; `data` and `extra` are appended to the
/// `[data]` table and to the file.
fn blobs_config(dir: &Path, data: &str, extra: &str) -> std::path::PathBuf {
    let p = dir.join("blobs.toml");
    std::fs::write(
        &p,
        format!(
            "epochs = 20\nbatch_size = 30\n[data]\nfile = \"train.csv\"\nlabel = \"class\"\n{data}\n\
             [model]\nhidden = [16]\nloss = \"softmax_cross_entropy\"\n\
             [optimizer]\nkind = \"adam\"\nlr = 0.02\n[devices]\nbackend = \"cpu\"\nthreads = 1\n{extra}"
        ),
    )
    .unwrap();
    p
}

/// The review's finding: `gantry train` could not score a separate test file. `[data]
/// test_file` is scored after training and reported beside the held-out split.
#[test]
fn train_scores_a_separate_test_file() {
    let dir = tempfile::tempdir().unwrap();
    blobs(&dir.path().join("train.csv"), 300, 1, |_, l| l);
    blobs(&dir.path().join("test.csv"), 60, 2, |_, l| l);
    let cfg = blobs_config(dir.path(), "test_file = \"test.csv\"", "");
    let (v, _) = train(&["--config", cfg.to_str().unwrap()], dir.path());
    assert_eq!(v["test_rows"], 60, "the held-out split stays: {v}");
    assert!(v["test"]["accuracy"].as_f64().unwrap() > 0.9, "{v}");
    let file = &v["test_file"];
    assert_eq!(file["rows"], 60, "{v}");
    assert!(
        file["source"].as_str().unwrap().ends_with("test.csv"),
        "{v}"
    );
    assert!(file["accuracy"].as_f64().unwrap() > 0.9, "{v}");
    assert!(file["loss"].as_f64().unwrap() > 0.0, "{v}");

    // The table shows both.
    let out = gantry(&["train", "--config", cfg.to_str().unwrap()], dir.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("test accuracy") && stdout.contains("test file accuracy"),
        "{stdout}"
    );
}

/// The review's finding: nothing scored a checkpoint on new data. `gantry eval` does, and on
/// the final checkpoint and the same file it agrees with the training run's own score.
#[test]
fn eval_scores_a_checkpoint_on_new_data() {
    let dir = tempfile::tempdir().unwrap();
    blobs(&dir.path().join("train.csv"), 300, 1, |_, l| l);
    let test = dir.path().join("test.csv");
    blobs(&test, 60, 2, |_, l| l);
    let ckpt = dir.path().join("ckpt");
    let cfg = blobs_config(
        dir.path(),
        "test_file = \"test.csv\"",
        &format!("[checkpoint]\ndir = \"{}\"\n", ckpt.display()),
    );
    let (v, _) = train(&["--config", cfg.to_str().unwrap()], dir.path());
    let checkpoint = v["checkpoint"].as_str().unwrap().to_string();

    let eval = |args: &[&str]| {
        let out = gantry(
            &[&["eval", "--checkpoint", &checkpoint][..], args].concat(),
            dir.path(),
        );
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        stdout
    };
    let json: serde_json::Value =
        serde_json::from_str(&eval(&["--data", test.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(json["rows"], 60, "{json}");
    assert_eq!(
        json["accuracy"], v["test_file"]["accuracy"],
        "{json} vs {v}"
    );
    assert_eq!(json["loss"], v["test_file"]["loss"], "{json} vs {v}");
    let table = eval(&["--data", test.to_str().unwrap()]);
    assert!(
        table.contains("accuracy") && table.contains("loss"),
        "{table}"
    );

    // A checkpoint trained on synthetic data names no columns: say which is the label.
    let spirals = config(
        dir.path(),
        1,
        &format!(
            "[checkpoint]\ndir = \"{}\"\n",
            dir.path().join("sp").display()
        ),
    );
    let (s, _) = train(&["--config", spirals.to_str().unwrap()], dir.path());
    let sp = s["checkpoint"].as_str().unwrap();
    let out = gantry(
        &["eval", "--checkpoint", sp, "--data", test.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("--label"), "{}", text(&out).1);
    let out = gantry(
        &[
            "eval",
            "--checkpoint",
            sp,
            "--data",
            test.to_str().unwrap(),
            "--label",
            "class",
            "--json",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out).1);
}

/// An edit of a CSV line: (1-based line number, text) -> text.
type Mangle = dyn Fn(usize, String) -> String;

/// Test data must fit the model: the same feature columns, class ids among its classes. Both
/// `[data] test_file` and `gantry eval` refuse other data with its file and line.
#[test]
fn test_data_of_another_width_or_with_labels_outside_the_classes_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    blobs(&dir.path().join("train.csv"), 300, 1, |_, l| l);
    let ckpt = dir.path().join("ckpt");
    let cfg = blobs_config(
        dir.path(),
        "",
        &format!("[checkpoint]\ndir = \"{}\"\n", ckpt.display()),
    );
    let (v, _) = train(&["--config", cfg.to_str().unwrap()], dir.path());
    let checkpoint = v["checkpoint"].as_str().unwrap().to_string();
    let with_test = blobs_config(dir.path(), "test_file = \"test.csv\"", "");
    let test = dir.path().join("test.csv");
    let cases: [(&Mangle, &str); 3] = [
        // Another width: an extra column.
        (
            &|_, l: String| format!("{l},{}", if l.starts_with('x') { "z" } else { "1" }),
            "test.csv:1: feature columns x, y, z; the model takes x, y",
        ),
        // Same width, other columns.
        (
            &|n, l: String| if n == 1 { "x,w,class".into() } else { l },
            "test.csv:1: feature columns x, w; the model takes x, y",
        ),
        // Class 7 on line 5, the model knows 3.
        (
            &|n, l: String| {
                if n == 5 {
                    l[..l.rfind(',').unwrap()].to_string() + ",7"
                } else {
                    l
                }
            },
            "test.csv:5: column `class`: class 7 is not one of the model's 3 classes",
        ),
    ];
    for (mangle, want) in cases {
        blobs(&test, 30, 2, mangle);
        for args in [
            vec!["train", "--config", with_test.to_str().unwrap()],
            vec![
                "eval",
                "--checkpoint",
                &checkpoint,
                "--data",
                test.to_str().unwrap(),
            ],
        ] {
            let out = gantry(&args, dir.path());
            let (_, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(stderr.contains(want), "{args:?}: want `{want}` in {stderr}");
        }
    }
}

/// `[data] test_file` names a file on the machine that trains: through the daemon's API that
/// would be the host's disk (a FIFO or `/dev/zero` to hang or exhaust it, any file to read), so
/// a daemon job may not name one, as it may not name `file`.
#[test]
fn a_daemon_job_cannot_name_a_test_file_on_the_host() {
    use crate::daemon::{Daemon, request};
    use crate::support::{add_user, init_data_dir, shared_cache};
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let daemon = Daemon::start(&data, &shared_cache());
    let train = std::fs::read_to_string(config(dir.path(), 1, ""))
        .unwrap()
        .replace("[data]", "[data]\ntest_file = \"/dev/zero\"");
    let body = serde_json::json!({"id": "t", "tenant": "vision", "gpus": 1, "train": train});
    let (status, v) = request(
        &format!("{}/v1/jobs", daemon.url),
        "POST",
        Some(&ada),
        Some(&body.to_string()),
    );
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("test_file"), "{v}");
}
