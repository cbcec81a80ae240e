//! Property tests: CSV files and the binary `.f32` format, valid or mutated (hostile fields,
//! ragged rows, headers promising more rows than memory holds), are read consistently or
//! refused naming the file; no header makes the reader allocate what the file does not hold.

use std::path::Path;

use proptest::prelude::*;

use super::*;
use gantry_fuzz::{self as fuzz, Mutation, Syntax};

/// Fields that break CSV readers of numbers.
fn hostile_field() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(
            &[
                "", "nan", "NaN", "inf", "-inf", "1e39", "-1e39", "1e-50", "-0", "0x10", "1_000",
                "\"1\"", "\"1,2\"", "\"", "-1", "0.5", "4294967296", "1e300", " 7 ", "\u{0}",
                "\u{feff}1", "١",
            ][..]
        )
        .prop_map(str::to_string),
        1 => (1usize..10_000).prop_map(|n| "9".repeat(n)),
        1 => any::<f32>().prop_map(|f| f.to_string()),
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    /// Replaces field `column` of line `line`.
    Field(prop::sample::Index, prop::sample::Index, String),
    /// A byte-level or line-level mutation.
    Bytes(Mutation),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<prop::sample::Index>(), any::<prop::sample::Index>(), hostile_field())
            .prop_map(|(l, c, v)| Edit::Field(l, c, v)),
        2 => fuzz::mutation(Syntax::Json)
            .prop_filter("text-only edits", |m| !matches!(m, Mutation::Replace(..) | Mutation::InsertLine(..)))
            .prop_map(Edit::Bytes),
    ]
}

fn apply(text: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = text.to_vec();
    for e in edits {
        match e {
            Edit::Field(line, column, value) => {
                let mut lines: Vec<Vec<u8>> =
                    out.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
                let l = line.index(lines.len());
                let mut fields: Vec<Vec<u8>> =
                    lines[l].split(|&b| b == b',').map(<[u8]>::to_vec).collect();
                let c = column.index(fields.len());
                fields[c] = value.as_bytes().to_vec();
                lines[l] = fields.join(&b',');
                out = lines.join(&b'\n');
            }
            Edit::Bytes(m) => out = fuzz::apply(&out, Syntax::Json, std::slice::from_ref(m)),
        }
    }
    out
}

/// A valid CSV: a header of `columns` names (`class` first), `rows` rows of small numbers.
fn csv(columns: usize, rows: &[Vec<i8>]) -> String {
    let mut out = String::from("class");
    for c in 1..columns {
        out.push_str(&format!(",x{c}"));
    }
    out.push('\n');
    for row in rows {
        let fields: Vec<String> = (0..columns)
            .map(|c| {
                let v = row.get(c).copied().unwrap_or(0);
                if c == 0 {
                    (v.unsigned_abs() % 4).to_string()
                } else {
                    format!("{}.5", v)
                }
            })
            .collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// What a dataset read from a file promises.
fn check_dataset(d: &Dataset, classes: bool) {
    assert!(d.inputs >= 1);
    let rows = d.rows();
    assert_eq!(d.features.len(), rows * d.inputs);
    assert_eq!(d.targets.len(), rows * d.targets_per_row);
    assert!(d.features.iter().chain(&d.targets).all(|v| v.is_finite()));
    if classes {
        assert!(d.targets.iter().all(|&v| v >= 0.0 && v.fract() == 0.0));
    }
}

fn classifier() -> TrainConfig {
    TrainConfig::parse(
        "epochs = 1\nbatch_size = 4\n[data]\nfile = \"d.csv\"\nlabel = \"class\"\n\
         [model]\nhidden = [4]\nloss = \"softmax_cross_entropy\"\n[optimizer]\nkind = \"adam\"\n",
        Path::new("t.toml"),
    )
    .unwrap()
}

thread_local!(static DIR: tempfile::TempDir = tempfile::tempdir().unwrap());

/// Writes `bytes` to a scratch file named `name` and returns its path.
fn scratch(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    DIR.with(|d| {
        let p = d.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    })
}

proptest! {
    #![proptest_config(fuzz::config(192))]

    #[test]
    fn mutated_csv_is_refused_naming_the_file_or_read_consistently(
        columns in 1usize..6,
        rows in prop::collection::vec(prop::collection::vec(any::<i8>(), 0..6), 0..12),
        edits in prop::collection::vec(edit(), 0..4),
        label in any::<bool>(),
    ) {
        let text = apply(csv(columns, &rows).as_bytes(), &edits);
        let path = scratch("d.csv", &text);
        let targets = ["x1".to_string()];
        let read = if label {
            read_csv(&path, Some("class"), None)
        } else {
            read_csv(&path, None, Some(&targets))
        };
        match read {
            Ok(d) => {
                check_dataset(&d, label);
                if label {
                    let limits = TrainLimits { max_classes: 8, ..TrainLimits::default() };
                    if let Ok(l) = prepare(&classifier(), d, "d.csv".into(), &limits, Some(2)) {
                        prop_assert!(l.outputs >= 2 && l.outputs <= 8);
                        prop_assert!(l.train.targets.iter().all(|&c| (c as usize) < l.outputs));
                    }
                }
            }
            Err(e) => {
                let e = e.to_string();
                prop_assert!(e.contains("d.csv"), "{}", e);
            }
        }
    }

    #[test]
    fn mutated_f32_files_are_refused_or_read_consistently(
        rows in 0usize..16,
        inputs in 1usize..5,
        targets in 0usize..3,
        header in prop::option::of((0usize..3, prop_oneof![
            Just(0u64), Just(1), Just(u32::MAX as u64), Just(1u64 << 61), Just(u64::MAX), any::<u64>(),
        ])),
        edits in prop::collection::vec(fuzz::mutation(Syntax::Json)
            .prop_filter("binary edits", |m| matches!(m, Mutation::FlipBit(..) | Mutation::Truncate(_) | Mutation::Insert(..))), 0..3),
    ) {
        let data = Dataset {
            features: (0..rows * inputs).map(|i| i as f32 * 0.5).collect(),
            targets: (0..rows * targets).map(|i| i as f32).collect(),
            inputs,
            targets_per_row: targets,
        };
        let path = scratch("d.f32", b"");
        write_f32(&path, &data).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some((field, value)) = header {
            // rows (u64), inputs (u32) or targets (u32) of the header.
            match field {
                0 => bytes[12..20].copy_from_slice(&value.to_le_bytes()),
                1 => bytes[20..24].copy_from_slice(&(value as u32).to_le_bytes()),
                _ => bytes[24..28].copy_from_slice(&(value as u32).to_le_bytes()),
            }
        }
        let bytes = fuzz::apply(&bytes, Syntax::Json, &edits);
        let path = scratch("d.f32", &bytes);
        match read_f32(&path, &TrainLimits::default()) {
            Ok(d) => {
                check_dataset(&d, false);
                prop_assert!((d.features.len() + d.targets.len()) * 4 + HEADER == bytes.len());
            }
            Err(e) => {
                let e = e.to_string();
                prop_assert!(e.contains("d.f32"), "{}", e);
            }
        }
    }
}

/// A header promising rows far beyond memory is refused from the file's length, before the
/// reader allocates for them (it would abort otherwise).
#[test]
fn an_f32_header_promising_more_than_memory_is_refused_before_allocation() {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    bytes.extend_from_slice(&[0; 64]);
    let e = read_f32(&scratch("huge.f32", &bytes), &TrainLimits::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("huge.f32") && e.contains("promises 4611686018427387904 rows"),
        "{e}"
    );
}
