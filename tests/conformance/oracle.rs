//! The oracle: regorus's interpreter, natively, on the raw query (`Engine::eval_query`), set up as
//! regorus's own OPA driver does (`tests/opa.rs`): modules `test-<i>.rego`, the case's data, its
//! input (or `input_term` evaluated), strict builtin errors as the case says.

use regorus::{Engine, Value};

use crate::cases::Named;
use crate::outcome::{Got, Rows, row, value};

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// An interpreter with the case's modules and data (no input).
pub fn engine(named: &Named) -> Result<Engine, String> {
    let case = &named.case;
    let mut engine = Engine::new();
    engine.set_rego_v0(named.rego_v0);
    engine.set_strict_builtin_errors(case.strict_error);
    for (i, module) in case.modules.iter().enumerate() {
        engine
            .add_policy(format!("test-{i}.rego"), module.clone())
            .map_err(text)?;
    }
    if let Some(data) = &case.data {
        engine.add_data(value(&data.to_string())).map_err(text)?;
    }
    Ok(engine)
}

/// The case's input: `input`, or `input_term` evaluated (it may hold sets), or none.
pub fn input(named: &Named) -> Result<Option<Value>, String> {
    if let Some(input) = &named.case.input {
        return Ok(Some(value(input.get())));
    }
    let Some(term) = &named.case.input_term else {
        return Ok(None);
    };
    let results = Engine::new()
        .eval_query(term.clone(), false)
        .map_err(|e| format!("input_term: {e}"))?;
    let last = results.result.last().and_then(|r| r.expressions.last());
    match last {
        Some(expression) => Ok(Some(expression.value.clone())),
        None => Err("input_term: no value".into()),
    }
}

/// Runs the case on the interpreter.
pub fn run(named: &Named) -> Got {
    if named.case.env.is_some() {
        return Got::Unmappable("the case sets environment variables".into());
    }
    match evaluate(named) {
        Ok(rows) => Got::Rows(rows),
        Err(e) => Got::Error(e),
    }
}

fn evaluate(named: &Named) -> Result<Rows, String> {
    let mut engine = engine(named)?;
    if let Some(input) = input(named)? {
        engine.set_input(input);
    }
    let results = engine
        .eval_query(named.case.query.clone(), false)
        .map_err(text)?;
    let mut rows = Rows::new();
    for result in results.result {
        // regorus reports a query whose expressions are not all true as a result with a `false`
        // expression; in OPA that query has no solution.
        if result
            .expressions
            .iter()
            .any(|e| e.value == Value::Bool(false))
        {
            continue;
        }
        // Sets become arrays, as they do in OPA's JSON results.
        let bindings = value(&result.bindings.to_json_str().map_err(text)?);
        rows.insert(row(&named.case, &bindings));
    }
    Ok(rows)
}
