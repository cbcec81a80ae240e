//! What a case expects, what an engine gave, and how the two compare (OPA's runner, the design's
//! §4.3): result sets as sets of binding rows, numbers compared numerically.

use std::collections::{BTreeMap, BTreeSet};

use regorus::Value;

use crate::cases::Case;

/// A result set: one object of bindings per row.
pub type Rows = BTreeSet<Value>;

/// What an engine did with a case.
#[derive(Debug, Clone)]
pub enum Got {
    Rows(Rows),
    /// Evaluation failed (any error; a denial on the decision path).
    Error(String),
    /// `gantry::policy::build` refused the policy.
    Refused(String),
    /// The bundle did not load.
    LoadFailed(String),
    /// The case cannot be put to this engine at all (why).
    Unmappable(String),
}

/// The outcome of one case on one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Pass,
    /// An error or nothing where OPA has a value, or the wrong error: it denies more.
    FailSafe,
    /// A value where OPA errors or is undefined.
    FailOpen,
    /// A value other than OPA's.
    WrongValue,
    BuildRefused,
    LoadFailed,
    Unmappable,
}

impl Outcome {
    /// Every outcome, in the order of the columns of the reports.
    pub const ALL: [Outcome; 7] = [
        Outcome::Pass,
        Outcome::FailSafe,
        Outcome::FailOpen,
        Outcome::WrongValue,
        Outcome::BuildRefused,
        Outcome::LoadFailed,
        Outcome::Unmappable,
    ];

    /// The outcome's name in the lists and tables.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::FailSafe => "fail-safe",
            Outcome::FailOpen => "fail-open",
            Outcome::WrongValue => "wrong-value",
            Outcome::BuildRefused => "build-refused",
            Outcome::LoadFailed => "load-failed",
            Outcome::Unmappable => "unmappable",
        }
    }
}

/// A JSON text as regorus compares values (1 == 1.0; sets are written as arrays by then), its
/// numbers exact: read by the engine's reader, not through serde_json's 64-bit numbers (an
/// integer past 64 bits came out rounded on both sides of a comparison).
pub fn value(json: &str) -> Value {
    gantry_policy_engine::json::parse(json).expect("JSON text reads as a regorus value")
}

/// One row as OPA's runner keeps it from `bindings` (an object of variables): generated
/// variables dropped when the case says so, array bindings sorted under `sort_bindings`.
pub fn row(case: &Case, bindings: &Value) -> Value {
    let mut kept = BTreeMap::new();
    for (name, v) in bindings.as_object().into_iter().flat_map(|o| o.iter()) {
        if case.ignore_generated_vars
            && let Value::String(name) = name
            && name.starts_with("__localq")
        {
            continue;
        }
        let mut v = v.clone();
        if case.sort_bindings
            && let Ok(items) = v.as_array_mut()
        {
            items.sort();
        }
        kept.insert(name.clone(), v);
    }
    Value::from(kept)
}

/// What OPA gives for the case.
#[derive(Debug)]
pub enum Expected {
    /// An error; `conflict` when OPA's code is `eval_conflict_error`.
    Error {
        conflict: bool,
    },
    Rows(Rows),
}

/// The case's expectation (no `want_result` and no error: an empty result set).
pub fn expected(case: &Case) -> Expected {
    if case.want_error.is_some() || case.want_error_code.is_some() {
        let conflict = case.want_error_code.as_deref() == Some("eval_conflict_error");
        return Expected::Error { conflict };
    }
    let rows = case.want_result.iter().flatten();
    let bindings = |r: &BTreeMap<String, Box<serde_json::value::RawValue>>| {
        let r = r
            .iter()
            .map(|(k, v)| (Value::from(k.as_str()), value(v.get())));
        Value::from(r.collect::<BTreeMap<_, _>>())
    };
    Expected::Rows(rows.map(|r| row(case, &bindings(r))).collect())
}

/// regorus's wording of a conflict OPA reports as `eval_conflict_error` (the last one is an
/// object comprehension's).
fn is_conflict(message: &str) -> bool {
    let words = [
        "multiple outputs",
        "conflict",
        "must be unique",
        "generated multiple times",
    ];
    words.iter().any(|w| message.contains(w))
}

/// The function an error says is missing, when that is all it says: regorus's `could not find
/// function f`, or an output variable found unsafe because the call binding it (on the line the
/// error quotes) is to a dotted name that is no builtin of this build (`net.cidr_merge(a, x)`:
/// `var x is unsafe`). Bare names are left alone: they may be the case's own functions.
pub fn missing_function(message: &str) -> Option<String> {
    if let Some((_, rest)) = message.split_once("could not find function ") {
        return Some(
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
        );
    }
    if !message.contains(" is unsafe (path ") {
        return None;
    }
    let mut calls = message.match_indices('(').filter_map(|(at, _)| {
        let head = &message[..at];
        let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
        let start = head.rfind(|c| !name_char(c)).map_or(0, |i| i + 1);
        Some(&head[start..]).filter(|name| name.contains('.') && !name.starts_with('.'))
    });
    calls
        .find(|name| !name.starts_with("data.") && !regorus::unstable::BUILTINS.contains_key(*name))
        .map(str::to_string)
}

/// How `got` compares with what OPA gives.
pub fn classify(expected: &Expected, got: &Got) -> Outcome {
    match (expected, got) {
        (_, Got::Refused(_)) => Outcome::BuildRefused,
        (_, Got::LoadFailed(_)) => Outcome::LoadFailed,
        (_, Got::Unmappable(_)) => Outcome::Unmappable,
        (Expected::Error { conflict }, Got::Error(message)) => {
            if missing_function(message).is_some() {
                // OPA errs for what the builtin does, not for its absence.
                Outcome::FailSafe
            } else if !conflict || is_conflict(message) {
                Outcome::Pass
            } else {
                Outcome::FailSafe
            }
        }
        (Expected::Error { .. }, Got::Rows(rows)) if rows.is_empty() => Outcome::FailSafe,
        (Expected::Error { .. }, Got::Rows(_)) => Outcome::FailOpen,
        (Expected::Rows(_), Got::Error(_)) => Outcome::FailSafe,
        (Expected::Rows(want), Got::Rows(rows)) if want == rows => Outcome::Pass,
        (Expected::Rows(want), Got::Rows(_)) if want.is_empty() => Outcome::FailOpen,
        (Expected::Rows(_), Got::Rows(rows)) if rows.is_empty() => Outcome::FailSafe,
        (Expected::Rows(_), Got::Rows(_)) => Outcome::WrongValue,
    }
}

/// Whether a result set is an allow, as a decision reads it: exactly one row, with exactly one
/// binding, the boolean `true`.
pub fn allows(rows: &Rows) -> bool {
    let [only] = rows.iter().collect::<Vec<_>>()[..] else {
        return false;
    };
    only.as_object()
        .is_ok_and(|o| o.len() == 1 && o.values().all(|v| *v == Value::Bool(true)))
}

/// Whether the engine allows where OPA does not (an error or anything but a lone `true`).
pub fn allows_where_opa_denies(expected: &Expected, got: &Got) -> bool {
    let opa_allows = matches!(expected, Expected::Rows(rows) if allows(rows));
    matches!(got, Got::Rows(rows) if allows(rows)) && !opa_allows
}

/// A short account of what an engine gave, for reports (one line).
pub fn describe(got: &Got) -> String {
    let text = match got {
        Got::Rows(rows) => {
            let all: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
            format!("rows [{}]", all.join(", "))
        }
        Got::Error(e) => format!("error: {e}"),
        Got::Refused(e) => format!("refused: {e}"),
        Got::LoadFailed(e) => format!("load failed: {e}"),
        Got::Unmappable(e) => format!("unmappable: {e}"),
    };
    let line = text.replace(['\n', '\t'], " ");
    match line.char_indices().nth(300) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line,
    }
}

#[test]
fn outcomes_and_allows_read_result_sets_as_opa_does() {
    let rows = |json: serde_json::Value| -> Rows {
        json.as_array()
            .unwrap()
            .iter()
            .map(|v| value(&v.to_string()))
            .collect()
    };
    let want = |json| Expected::Rows(rows(json));
    let got = |json| Got::Rows(rows(json));
    let conflict = Expected::Error { conflict: true };
    use serde_json::json;
    // Numbers by value, rows as a set.
    assert_eq!(
        classify(
            &want(json!([{"x": 1}, {"x": 2}])),
            &got(json!([{"x": 2.0}, {"x": 1}]))
        ),
        Outcome::Pass
    );
    assert_eq!(
        classify(&want(json!([{"x": 1}])), &got(json!([]))),
        Outcome::FailSafe
    );
    assert_eq!(
        classify(&want(json!([{"x": 1}])), &Got::Error("e".into())),
        Outcome::FailSafe
    );
    assert_eq!(
        classify(&want(json!([])), &got(json!([{"x": 1}]))),
        Outcome::FailOpen
    );
    assert_eq!(
        classify(&want(json!([{"x": 1}])), &got(json!([{"x": 2}]))),
        Outcome::WrongValue
    );
    assert_eq!(
        classify(
            &conflict,
            &Got::Error("rule conflicts with rule at p.rego:1:1".into())
        ),
        Outcome::Pass
    );
    assert_eq!(
        classify(&conflict, &Got::Error("divide by zero".into())),
        Outcome::FailSafe
    );
    assert_eq!(
        classify(&conflict, &got(json!([{"x": true}]))),
        Outcome::FailOpen
    );
    assert!(allows_where_opa_denies(
        &conflict,
        &got(json!([{"x": true}]))
    ));
    assert!(allows_where_opa_denies(
        &want(json!([{"x": false}])),
        &got(json!([{"x": true}]))
    ));
    assert!(!allows_where_opa_denies(
        &want(json!([{"x": true}])),
        &got(json!([{"x": true}]))
    ));
    assert!(!allows_where_opa_denies(
        &want(json!([])),
        &got(json!([{"x": true}, {"x": 1}]))
    ));
    assert!(!allows_where_opa_denies(
        &want(json!([])),
        &got(json!([{"x": "true"}]))
    ));
}

#[test]
fn an_expected_error_is_not_passed_by_a_missing_builtin() {
    let error = Expected::Error { conflict: false };
    let got = |m: &str| classify(&error, &Got::Error(m.into()));
    // As regorus words them (OPA's cases json_match_schema/invalid schema, netcidrmerge/cidr
    // ipv6 without prefix): the builtin is not in the build, so OPA's error was never reached.
    let not_found = " --> test-0.rego:10:23\n   |\n10 | p := json.match_schema(document, schema)\n   \
                     |                       ^\nerror: could not find function json.match_schema";
    assert_eq!(
        missing_function(not_found).as_deref(),
        Some("json.match_schema")
    );
    assert_eq!(got(not_found), Outcome::FailSafe);
    let unsafe_output = " --> test-0.rego:4:64\n  |\n4 |  net.cidr_merge([\"2601::1\"], x)\n  \
                         |   ^\nerror: var x is unsafe (path [\"generated\", \"x\"], scopes [{}])";
    assert_eq!(
        missing_function(unsafe_output).as_deref(),
        Some("net.cidr_merge")
    );
    assert_eq!(got(unsafe_output), Outcome::FailSafe);
    // A builtin the build has, a rule of the case, or no call at all: a real error.
    for real in [
        "4 |  semver.compare(\"1\", \"1.0.0\", x)\nerror: var x is unsafe (path [], scopes [])",
        "4 |  data.lib.f(1, x)\nerror: var x is unsafe (path [], scopes [])",
        "4 |  f(1, x)\nerror: var x is unsafe (path [], scopes [])",
        "4 |  p := x\nerror: var x is unsafe (path [], scopes [])",
        "error: `bits.and` expects integer arguments. Got `7.2`",
    ] {
        assert_eq!(missing_function(real), None, "{real}");
        assert_eq!(got(real), Outcome::Pass, "{real}");
    }
}
