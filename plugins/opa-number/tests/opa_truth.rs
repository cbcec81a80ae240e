//! Every line of `opa_truth.tsv` (made by `gotruth/`, OPA's code paths on real Go math/big)
//! against this crate: the result value, its OPA text, and errors by OPA's message.

use core::cmp::Ordering;
use gantry_opa_number::{Decimal, NumberError};

fn d(s: &str) -> Decimal {
    Decimal::parse(s).unwrap_or_else(|e| panic!("operand {s:?}: {e}"))
}

#[test]
fn every_line_matches_go() {
    let table = include_str!("opa_truth.tsv");
    let mut failures = Vec::new();
    let mut n = 0;
    for line in table.lines() {
        n += 1;
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 4, "line {n}: {line}");
        let (op, a, b, want) = (f[0], f[1], f[2], f[3]);
        let got: Result<Decimal, NumberError> = match op {
            "add" => Decimal::opa_add(&d(a), &d(b)),
            "sub" => Decimal::opa_sub(&d(a), &d(b)),
            "mul" => Decimal::opa_mul(&d(a), &d(b)),
            "div" => Decimal::opa_div(&d(a), &d(b)),
            "rem" => Decimal::opa_rem(&d(a), &d(b)),
            "round" => Ok(d(a).opa_round()),
            "ceil" => Ok(d(a).opa_ceil()),
            "floor" => Ok(d(a).opa_floor()),
            "abs" => Ok(d(a).opa_abs()),
            "sum" | "product" => {
                let items: Vec<Decimal> = a.split(',').filter(|s| !s.is_empty()).map(d).collect();
                if op == "sum" {
                    Decimal::opa_sum(&items)
                } else {
                    Decimal::opa_product(&items)
                }
            }
            "cmp" => {
                let c = match d(a).cmp(&d(b)) {
                    Ordering::Less => "-1",
                    Ordering::Equal => "0",
                    Ordering::Greater => "1",
                };
                if c != want {
                    failures.push(format!("{line} => {c}"));
                }
                continue;
            }
            _ => panic!("unknown op in line {n}: {line}"),
        };
        let ok = match (&got, want.strip_prefix("error:")) {
            (Err(e), Some(msg)) => e.to_string() == msg,
            (Ok(v), None) => {
                // OPA's "-0" is plain 0 here.
                let want_text = if want == "-0" { "0" } else { want };
                *v == d(want) && v.to_go_text() == want_text
            }
            _ => false,
        };
        if !ok {
            failures.push(format!("{line} => {:?}", got.map(|v| v.to_go_text())));
        }
    }
    assert!(n >= 5000, "table too small: {n}");
    assert!(
        failures.is_empty(),
        "{} of {n} lines differ:\n{}",
        failures.len(),
        failures[..failures.len().min(40)].join("\n")
    );
}
