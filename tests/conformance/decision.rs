//! The decision path, the real one: the case as a policy directory ([`PolicySource`]) →
//! `gantry::policy::build` → `PolicyLoader::load` (the engine module in the sandbox, through
//! opa-wasm) → `LoadedPolicy::evaluate`, the case's query mapped to an entrypoint (§1.5):
//!
//! - Tier R: `data.a.b.r = x` where `data.a.b.r` is a rule: entrypoint `a/b/r`;
//! - Tier P: the same where the path is a package (or a prefix of packages): entrypoint `a/b`,
//!   OPA's package entrypoint;
//! - Tier Q: anything else, compiled as a rule, as OPA's own wasm target does:
//!   `package gantry_conformance`, `rows contains {"x": x, ..} if { <query> }`, the variables
//!   those of OPA's expected rows.

use gantry::policy::decide::{PolicyLimits, PolicyLoader, ResultSet};
use gantry::policy::source::PolicySource;
use regorus::Value;
use serde_json::value::RawValue;

use crate::cases::Named;
use crate::oracle;
use crate::outcome::{Got, Rows, row, value};

/// The package of Tier Q's wrapper and its rule.
const WRAPPER: &str = "gantry_conformance";

/// How the case's query reaches an entrypoint.
#[derive(Debug)]
enum Form {
    /// An entrypoint whose value binds `var` (Tiers R and P).
    Entrypoint { entrypoint: String, var: String },
    /// The wrapper rule, with the variables of a row.
    Query { vars: Vec<String> },
}

/// `data.a.b = x` or `x = data.a.b` (also `:=`): the path below `data` and the variable.
fn path_and_var(query: &str) -> Option<(String, String)> {
    let (lhs, rhs) = query.split_once('=')?;
    let (lhs, rhs) = (lhs.trim().trim_end_matches(':').trim(), rhs.trim());
    let ident = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    // A variable, not a constant or a root document (`data.x.p = input` compares).
    let var = |s: &str| ident(s) && !["true", "false", "null", "input", "data"].contains(&s);
    let path = |s: &str| {
        let rest = s.strip_prefix("data.")?;
        rest.split('.').all(ident).then(|| rest.to_string())
    };
    match (path(lhs), path(rhs)) {
        (Some(p), None) if var(rhs) && !query.contains(":=") => Some((p, rhs.to_string())),
        (None, Some(p)) if var(lhs) => Some((p, lhs.to_string())),
        _ => None,
    }
}

/// The form of the case (see the module documentation).
fn form(named: &Named) -> Form {
    let case = &named.case;
    let vars = match case.want_result.as_deref() {
        Some([first, ..]) => row_vars(named, first),
        _ => Vec::new(),
    };
    let Some((path, var)) = path_and_var(&case.query) else {
        return Form::Query { vars };
    };
    if vars.iter().any(|v| *v != var) {
        return Form::Query { vars };
    }
    let Ok(mut engine) = oracle::engine(named) else {
        return Form::Query { vars };
    };
    let full = format!("data.{path}");
    let packages = engine.get_packages().unwrap_or_default();
    let entrypoint = path.replace('.', "/");
    if packages
        .iter()
        .any(|p| *p == full || p.starts_with(&format!("{full}.")))
    {
        return Form::Entrypoint { entrypoint, var };
    }
    match engine.compile_with_entrypoint(&full.as_str().into()) {
        Err(e) if e.to_string().contains("not a valid rule path") => Form::Query { vars },
        _ => Form::Entrypoint { entrypoint, var },
    }
}

/// The variables of an expected row, generated ones aside when the case ignores them.
fn row_vars(
    named: &Named,
    first: &std::collections::BTreeMap<String, Box<serde_json::value::RawValue>>,
) -> Vec<String> {
    let generated = |k: &String| named.case.ignore_generated_vars && k.starts_with("__localq");
    first.keys().filter(|k| !generated(k)).cloned().collect()
}

/// Tier Q's wrapper module.
fn wrapper(query: &str, vars: &[String]) -> String {
    let fields: Vec<String> = vars.iter().map(|v| format!("{v:?}: {v}")).collect();
    format!(
        "package {WRAPPER}\n\nrows contains {{{}}} if {{\n{query}\n}}\n",
        fields.join(", ")
    )
}

/// The case's input as JSON, or `None` when it has none: the engine module then evaluates the
/// entrypoint without an input (`input` undefined, as in OPA), which no value, `null` included,
/// stands for.
fn input(named: &Named) -> Result<Option<Box<RawValue>>, String> {
    // JSON as the case writes it: through a regorus value `1.0` would become `1`, where OPA
    // (and the engine) keep a number written as no integer.
    if let Some(input) = &named.case.input {
        return Ok(Some(input.clone()));
    }
    let Some(v) = oracle::input(named)? else {
        return Ok(None);
    };
    let json = v.to_json_str().map_err(|e| e.to_string())?;
    if value(&json) != v {
        return Err("the input is not JSON (a set, or a key that is not a string)".into());
    }
    RawValue::from_string(json)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Runs the case through the decision path.
pub fn run(loader: &PolicyLoader, named: &Named) -> Got {
    if named.case.env.is_some() {
        return Got::Unmappable("the case sets environment variables".into());
    }
    let input = match input(named) {
        Ok(input) => input,
        Err(e) => return Got::Unmappable(e),
    };
    let form = form(named);
    let mut modules: Vec<(String, String)> = named
        .case
        .modules
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("test-{i}.rego"), m.clone()))
        .collect();
    let entrypoint = match &form {
        Form::Entrypoint { entrypoint, .. } => entrypoint.clone(),
        Form::Query { vars } => {
            modules.push((format!("{WRAPPER}.rego"), wrapper(&named.case.query, vars)));
            format!("{WRAPPER}/rows")
        }
    };
    let source = PolicySource {
        modules,
        tests: Vec::new(),
        data: named
            .case
            .data
            .clone()
            .unwrap_or_else(|| serde_json::json!({})),
        // The case's strictness, as `gantry policy build --strict` sets it.
        strict: named.case.strict_error,
    };
    let entrypoints = [entrypoint.clone()];
    let bundle = match gantry::policy::build(&source, &entrypoints, Some("conformance")) {
        Ok(bundle) => bundle,
        Err(e) => return Got::Refused(e.to_string()),
    };
    // A debug-built host on a loaded machine: a generous deadline, still bounded.
    let limits = PolicyLimits {
        deadline_ms: 10_000,
        ..PolicyLimits::default()
    };
    let loaded = match gantry::blocking::block_on(loader.load(bundle, limits)) {
        Ok(loaded) => loaded,
        Err(e) => return Got::LoadFailed(e.to_string()),
    };
    let decided = match &input {
        Some(input) => gantry::blocking::block_on(loaded.evaluate(&entrypoint, &**input)),
        None => gantry::blocking::block_on(loaded.evaluate_without_input(&entrypoint)).0,
    };
    match decided {
        Ok(set) => rows(named, &form, &set),
        Err(e) => Got::Error(e.to_string()),
    }
}

/// OPA's result set of the entrypoint (`[]` or `[{"result": v}]`) as the case's rows, its
/// numbers exact.
fn rows(named: &Named, form: &Form, set: &ResultSet) -> Got {
    let Ok(parsed) = gantry_policy_engine::json::parse(set.text()) else {
        return Got::Error(format!("a result set the harness cannot read: {set}"));
    };
    let result = match parsed.as_array().map(|a| (a.len(), a.first())) {
        Ok((0, _)) => None,
        Ok((1, Some(one))) => Some(&one[&Value::from("result")]),
        _ => return Got::Error(format!("a result set that is not one result: {set}")),
    };
    let bad = || Got::Error(format!("the wrapper returned {set}"));
    let rows: Rows = match (form, result) {
        (_, None) => Rows::new(),
        (Form::Entrypoint { var, .. }, Some(v)) => {
            let bindings = Value::from(std::collections::BTreeMap::from([(
                Value::from(var.as_str()),
                v.clone(),
            )]));
            Rows::from([row(&named.case, &bindings)])
        }
        (Form::Query { .. }, Some(v)) => {
            let Ok(all) = v.as_array() else {
                return bad();
            };
            let mut rows = Rows::new();
            for r in all.iter() {
                if r.as_object().is_err() {
                    return bad();
                }
                rows.insert(row(&named.case, r));
            }
            rows
        }
    };
    Got::Rows(rows)
}

#[test]
fn queries_that_bind_one_path_are_told_apart_from_the_rest() {
    let some = |p: &str, v: &str| Some((p.to_string(), v.to_string()));
    assert_eq!(path_and_var("data.a.b = x"), some("a.b", "x"));
    assert_eq!(path_and_var("x = data.a.b"), some("a.b", "x"));
    assert_eq!(path_and_var("x := data.a.b"), some("a.b", "x"));
    for other in [
        "data.a.b := x",
        "data.a.b = input",
        "data.a.b = true",
        "data.a.b == x",
        "data.a.b[0] = x",
        "data.a.b = x with input as 1",
        "data.a.b = x; data.c = y",
        "1 / 0",
    ] {
        assert_eq!(path_and_var(other), None, "{other}");
    }
}

#[test]
fn a_case_without_input_is_evaluated_without_one_not_with_null() {
    let named = |query: &str, modules: &[&str], input: Option<serde_json::Value>| {
        let mut case = serde_json::json!({"note": "t", "query": query, "modules": modules});
        if let Some(input) = input {
            case["input"] = input;
        }
        Named {
            id: "t".into(),
            case: serde_json::from_value(case).expect("a case"),
            rego_v0: false,
        }
    };
    // OPA's withkeyword/builtin-value (arity-1): the rule reads `input`, which is undefined.
    // Sending `null` made it defined, and the rule allowed where OPA's is undefined; then such
    // cases were left unmappable. Now they are evaluated without an input.
    let reads = named(
        "data.test.p = x",
        &["package test\nf(_) := 1\np if { input; f(1) == 1 }"],
        None,
    );
    assert!(matches!(input(&reads), Ok(None)));
    let given = named("input.x = 1", &[], Some(serde_json::json!({"x": 1})));
    let text = input(&given).unwrap().map(|i| i.get().to_string());
    assert_eq!(text.as_deref(), Some(r#"{"x":1}"#));
}
