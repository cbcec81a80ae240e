//! Property tests: generated traces round-trip through CSV, and mutated ones are refused naming
//! the file and line, or hold only jobs that could run on the cluster.

use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::cluster::files::{check_job, parse_cluster};
use gantry_fuzz::{self as fuzz, Mutation, Syntax};

fn cluster() -> Cluster {
    parse_cluster(
        include_str!("../../../assets/default-cluster.toml"),
        Path::new("c.toml"),
    )
    .unwrap()
}

/// Hostile CSV fields for any column.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(
            &[
                "", "nan", "inf", "-inf", "-1", "0", "4294967296", "-2147483649", "1e308",
                "same-node", "everywhere", "vision", "nobody", "true", "maybe", "\"a,b\"", "#",
            ][..]
        )
        .prop_map(str::to_string),
        1 => any::<i64>().prop_map(|v| v.to_string()),
        1 => any::<f64>().prop_map(|v| v.to_string()),
    ]
}

proptest! {
    #![proptest_config(fuzz::config(128))]

    #[test]
    fn generated_traces_round_trip(seed in any::<u64>(), jobs in 1usize..40) {
        let c = cluster();
        let trace = synthetic(&c, Synthetic { jobs, seed, load: 0.9 });
        let back = parse(&to_csv(&trace), Path::new("t.csv"), &c).unwrap();
        prop_assert_eq!(back.len(), trace.len());
        for (a, b) in back.iter().zip(&trace) {
            prop_assert_eq!((a.gpus, a.memory_mib, &a.tenant, a.gang, a.topology), (b.gpus, b.memory_mib, &b.tenant, b.gang, b.topology));
        }
    }

    #[test]
    fn mutated_traces_are_refused_naming_the_line_or_could_all_run(
        seed in any::<u64>(),
        edits in prop::collection::vec(
            prop_oneof![
                2 => (any::<prop::sample::Index>(), any::<prop::sample::Index>(), field())
                    .prop_map(|(l, c, v)| (Some((l, c, v)), None)),
                1 => fuzz::mutation(Syntax::Json)
                    .prop_filter("line and byte edits", |m| !matches!(m, Mutation::Replace(..)))
                    .prop_map(|m| (None, Some(m))),
            ],
            0..4,
        ),
    ) {
        let c = cluster();
        let mut text = to_csv(&synthetic(&c, Synthetic { jobs: 8, seed, load: 0.9 })).into_bytes();
        for edit in &edits {
            match edit {
                (Some((l, col, value)), _) => {
                    let mut lines: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
                    let i = l.index(lines.len());
                    let mut fields: Vec<Vec<u8>> = lines[i].split(|&b| b == b',').map(<[u8]>::to_vec).collect();
                    let j = col.index(fields.len());
                    fields[j] = value.clone().into_bytes();
                    lines[i] = fields.join(&b',');
                    text = lines.join(&b'\n');
                }
                (_, Some(m)) => text = fuzz::apply(&text, Syntax::Json, std::slice::from_ref(m)),
                _ => {}
            }
        }
        let text = String::from_utf8_lossy(&text);
        match parse(&text, Path::new("in/t.csv"), &c) {
            Ok(jobs) => {
                for j in &jobs {
                    check_job(&j.to_spec("row".into()), &c).unwrap();
                }
            }
            Err(e) => {
                let e = e.to_string();
                prop_assert!(e.starts_with("in/t.csv:"), "{}", e);
            }
        }
    }
}
