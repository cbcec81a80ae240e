//! Property tests: any bytes (ragged rows, CR, non-UTF-8, missing columns, hostile labels) are
//! split into one output line per finite label, or refused naming the line.

use std::io::Read;

use proptest::prelude::*;

use super::*;
use gantry_fuzz::{self as fuzz, Syntax};

fn valid() -> Vec<String> {
    vec![
        "1,0.5,2\n0,1.5,3\r\n\n1,2.5,4".to_string(),
        "a,b,7\nc,d,8\n".to_string(),
        (0..50)
            .map(|i| format!("{},{i}.5,{}\n", i % 3, -i))
            .collect(),
    ]
}

proptest! {
    #![proptest_config(fuzz::config(256))]

    #[test]
    fn any_input_splits_into_one_line_per_label_or_names_the_bad_line(
        input in prop_oneof![
            3 => fuzz::mutated(valid(), Syntax::Json),
            1 => prop::collection::vec(any::<u8>(), 0..4096),
        ],
        label in 0usize..4,
        chunk in 1usize..5000,
    ) {
        let labels = Arc::new(Mutex::new(vec![99.0]));
        let mut reader = LabelSplit::new(&input[..], label, labels.clone());
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        let result = loop {
            match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
        };
        let labels = labels.lock().unwrap().clone();
        match result {
            Ok(()) => {
                let lines = out.iter().filter(|&&b| b == b'\n').count();
                prop_assert_eq!(lines, labels.len());
                prop_assert!(labels.iter().all(|v| v.is_finite()));
                // Every non-empty input line is one record, its label column removed.
                let records = input
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.strip_suffix(b"\r").unwrap_or(l).is_empty())
                    .count();
                prop_assert_eq!(records, labels.len());
            }
            Err(e) => {
                prop_assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
                prop_assert!(e.to_string().starts_with("line "), "{}", e);
            }
        }
    }
}
