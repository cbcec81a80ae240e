//! `gantry preprocess`: a CSV file, or an encrypted object, through the standardize plugin.

use crate::support::{gantry, text};

#[test]
fn standardize_a_file_and_a_stored_object_into_f32_features() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::new();
    for i in 0..5000 {
        csv += &format!("{},{},{}\n", i % 10, (i * 7) % 13, 2.5);
    }
    let file = dir.path().join("d.csv");
    std::fs::write(&file, &csv).unwrap();
    let out = dir.path().join("f.f32");
    let o = gantry(
        &[
            "preprocess",
            "--file",
            file.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--batch",
            "300",
            "--json",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let v: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(v["records"], 5000);
    assert_eq!(v["two_passes"], true);
    let features =
        gantry::training::data::read_f32(&out, &gantry::training::TrainLimits::default()).unwrap();
    assert_eq!((features.rows(), features.inputs), (5000, 3));
    // Standardised: every column has mean 0 and (population) deviation 1, except the constant
    // one, which is all zeros.
    for c in 0..2 {
        let col: Vec<f64> = (0..5000)
            .map(|r| f64::from(features.features[r * 3 + c]))
            .collect();
        let mean = col.iter().sum::<f64>() / 5000.0;
        let var = col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 5000.0;
        assert!(
            mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3,
            "column {c}: {mean} {var}"
        );
    }
    assert!((0..5000).all(|r| features.features[r * 3 + 2] == 0.0));

    // The same through the encrypted store: identical features.
    let data = crate::support::init_data_dir(dir.path());
    let d = data.to_str().unwrap();
    let o = gantry(
        &["store", "put", file.to_str().unwrap(), "--data-dir", d],
        dir.path(),
    );
    let id = text(&o).0.trim().to_string();
    let out2 = dir.path().join("g.f32");
    let o = gantry(
        &[
            "preprocess",
            "--object",
            &id,
            "--data-dir",
            d,
            "-o",
            out2.to_str().unwrap(),
            "--batch",
            "300",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&out2).unwrap());

    // A bad record: exit 1 naming the records, nothing written.
    std::fs::write(&file, csv.replacen("3,8,2.5", "3,8,two", 1)).unwrap();
    let bad_out = dir.path().join("bad.f32");
    let o = gantry(
        &[
            "preprocess",
            "--file",
            file.to_str().unwrap(),
            "-o",
            bad_out.to_str().unwrap(),
            "--batch",
            "300",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("`two` is not a finite number"),
        "{}",
        text(&o).1
    );
    assert!(!bad_out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp"))
            .count(),
        0,
        "no temporary files left"
    );
}
