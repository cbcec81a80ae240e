//! `gantry policy test`: runs the `test_` rules of a policy directory's `*_test.rego` modules,
//! like `opa test`: each rule passes when it evaluates to `true`.

use std::time::Instant;

use serde::Serialize;

use super::PolicyError;
use super::source::PolicySource;

/// The outcome of one test rule.
#[derive(Debug, Clone, Serialize)]
pub struct TestOutcome {
    /// `data.<package>.<rule>`.
    pub name: String,
    /// The file that defines it.
    pub file: String,
    /// Whether it evaluated to `true`.
    pub passed: bool,
    /// Why it failed: `false`, undefined, or an evaluation error.
    pub failure: Option<String>,
    /// Evaluation time, microseconds.
    pub duration_us: f64,
}

/// The package and the `test_` rules of one module, in file order (each rule once).
fn tests_of(text: &str) -> (Option<String>, Vec<String>) {
    let mut package = None;
    let mut rules: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("package ") {
            package = Some(rest.trim().to_string());
        }
        if line.starts_with("test_") {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !rules.contains(&name) {
                rules.push(name);
            }
        }
    }
    (package, rules)
}

/// Runs every test rule; an error only when the policy itself does not load.
pub fn run(source: &PolicySource) -> Result<Vec<TestOutcome>, PolicyError> {
    let engine = source.engine(true)?;
    let mut outcomes = Vec::new();
    for (file, text) in &source.tests {
        let (package, rules) = tests_of(text);
        let Some(package) = package else {
            return Err(PolicyError::Source(format!(
                "{file}: no package declaration"
            )));
        };
        for rule in rules {
            let name = format!("data.{package}.{rule}");
            let mut engine = engine.clone();
            let start = Instant::now();
            let result = engine.eval_rule(name.clone());
            let duration_us = start.elapsed().as_secs_f64() * 1e6;
            let failure = match result {
                Ok(regorus::Value::Bool(true)) => None,
                Ok(regorus::Value::Undefined) => {
                    Some("undefined (a condition did not hold)".into())
                }
                Ok(other) => Some(format!("evaluated to {other}")),
                Err(e) => Some(format!(
                    "error: {}",
                    gantry_policy_engine::diagnostic::render(&e.to_string())
                )),
            };
            outcomes.push(TestOutcome {
                name,
                file: file.clone(),
                passed: failure.is_none(),
                failure,
                duration_us,
            });
        }
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_package_and_test_rules_once() {
        let (package, rules) = tests_of(
            "package a.b_test\n\ntest_one if { true }\ntest_one if { false }\nhelper := 1\n  test_indented := 2\ntest_two := true\n",
        );
        assert_eq!(package.as_deref(), Some("a.b_test"));
        assert_eq!(rules, ["test_one", "test_two"]);
    }
}
