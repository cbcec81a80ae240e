//! `gantry policy test`: runs the `test_` rules of a policy directory's `*_test.rego` modules,
//! like `opa test`: each rule passes when it evaluates to `true`.

use std::collections::{BTreeMap, BTreeSet};
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

/// Lines of one module of the policy that the tests evaluated.
#[derive(Debug, Clone, Serialize)]
pub struct FileCoverage {
    /// The module's file.
    pub file: String,
    /// Lines evaluated by at least one test.
    pub covered: usize,
    /// Lines that hold something to evaluate.
    pub coverable: usize,
    /// `covered / coverable`, in percent (100 when nothing is coverable).
    pub percent: f64,
    /// The lines no test evaluated.
    pub not_covered: Vec<u32>,
}

/// What `gantry policy test --coverage` reports: the lines of the policy's modules (its tests
/// left out) that its tests evaluated, as `opa test --coverage`.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    /// Each module, in file order.
    pub files: Vec<FileCoverage>,
    /// Lines covered in all modules.
    pub covered: usize,
    /// Coverable lines in all modules.
    pub coverable: usize,
    /// `covered / coverable`, in percent.
    pub percent: f64,
}

fn percent(covered: usize, coverable: usize) -> f64 {
    if coverable == 0 {
        100.0
    } else {
        covered as f64 * 100.0 / coverable as f64
    }
}

/// Coverage gathered test by test: lines covered by any, and every coverable line.
#[derive(Default)]
struct Lines(BTreeMap<String, (BTreeSet<u32>, BTreeSet<u32>)>);

impl Lines {
    fn add(&mut self, engine: &regorus::Engine) -> Result<(), PolicyError> {
        let report = engine
            .get_coverage_report()
            .map_err(|e| PolicyError::Source(format!("coverage: {e}")))?;
        for f in report.files {
            let (covered, coverable) = self.0.entry(f.path).or_default();
            coverable.extend(f.covered.iter().chain(&f.not_covered));
            covered.extend(f.covered);
        }
        Ok(())
    }

    /// Adds the coverable lines of the modules no test reached (regorus reports only modules an
    /// evaluation touched): each such module's package evaluated once without input, errors
    /// ignored, as only which lines hold something to evaluate matters.
    fn add_unreached(&mut self, source: &PolicySource) -> Result<(), PolicyError> {
        let mut engine = source.engine(false)?;
        engine.set_enable_coverage(true);
        let packages = engine.get_packages().unwrap_or_default();
        for ((file, _), package) in source.modules.iter().zip(packages) {
            if self.0.contains_key(file) {
                continue;
            }
            let mut engine = engine.clone();
            let _ = engine.eval_query(package, false);
            let report = engine
                .get_coverage_report()
                .map_err(|e| PolicyError::Source(format!("coverage: {e}")))?;
            let lines: BTreeSet<u32> = report
                .files
                .into_iter()
                .filter(|f| f.path == *file)
                .flat_map(|f| f.covered.into_iter().chain(f.not_covered))
                .collect();
            self.0.insert(file.clone(), (BTreeSet::new(), lines));
        }
        Ok(())
    }

    fn report(self, source: &PolicySource) -> Coverage {
        let files: Vec<FileCoverage> = source
            .modules
            .iter()
            .map(|(file, _)| {
                let (covered, coverable) = self.0.get(file).cloned().unwrap_or_default();
                FileCoverage {
                    file: file.clone(),
                    covered: covered.len(),
                    coverable: coverable.len(),
                    percent: percent(covered.len(), coverable.len()),
                    not_covered: coverable.difference(&covered).copied().collect(),
                }
            })
            .collect();
        let covered = files.iter().map(|f| f.covered).sum();
        let coverable = files.iter().map(|f| f.coverable).sum();
        Coverage {
            files,
            covered,
            coverable,
            percent: percent(covered, coverable),
        }
    }
}

/// Runs every test rule; an error only when the policy itself does not load.
pub fn run(source: &PolicySource) -> Result<Vec<TestOutcome>, PolicyError> {
    run_tests(source, None)
}

/// Runs every test rule as [`run`], and reports which lines of the policy they evaluated.
pub fn run_with_coverage(
    source: &PolicySource,
) -> Result<(Vec<TestOutcome>, Coverage), PolicyError> {
    let mut lines = Lines::default();
    let outcomes = run_tests(source, Some(&mut lines))?;
    lines.add_unreached(source)?;
    Ok((outcomes, lines.report(source)))
}

/// Runs the test rules of `outcomes` (from [`run`]) again through the decision engine: the
/// policy and its tests built into a bundle as `gantry policy build` builds one (each test rule
/// an entrypoint), loaded in the sandbox by `loader`, each rule decided there without an input.
/// A test passes only when both engines say `true`; where they disagree the outcome fails and
/// names both answers. The interpreter run natively is the oracle of the engine that decides.
pub async fn check_in_sandbox(
    source: &PolicySource,
    loader: &super::decide::PolicyLoader,
    outcomes: &mut [TestOutcome],
) -> Result<(), PolicyError> {
    let combined = PolicySource {
        modules: source
            .modules
            .iter()
            .chain(&source.tests)
            .cloned()
            .collect(),
        tests: Vec::new(),
        ..source.clone()
    };
    let max = gantry_policy_engine::policy::MAX_ENTRYPOINTS;
    for chunk in outcomes.chunks_mut(max) {
        let entrypoints: Vec<String> = chunk
            .iter()
            .map(|o| o.name.trim_start_matches("data.").replace('.', "/"))
            .collect();
        let bundle = super::build(&combined, &entrypoints, Some("policy-test"))?;
        // A test may take longer than a request's decision is given; the machine may be busy.
        let limits = super::decide::PolicyLimits {
            deadline_ms: 10_000,
            ..Default::default()
        };
        let loaded = loader.load(bundle, limits).await?;
        for (outcome, entrypoint) in chunk.iter_mut().zip(&entrypoints) {
            // As the interpreter runs a test: with no input at all.
            let (decided, _) = loaded.evaluate_without_input(entrypoint).await;
            let passed =
                matches!(&decided, Ok(set) if *set == serde_json::json!([{"result": true}]));
            if passed != outcome.passed {
                let sandbox = decided.map_or_else(|e| e.to_string(), |set| set.to_string());
                let interpreter = outcome.failure.take().unwrap_or_else(|| "true".into());
                outcome.passed = false;
                outcome.failure = Some(format!(
                    "the engines disagree: the sandbox decided {sandbox}, the interpreter {interpreter}"
                ));
            }
        }
    }
    Ok(())
}

fn run_tests(
    source: &PolicySource,
    mut coverage: Option<&mut Lines>,
) -> Result<Vec<TestOutcome>, PolicyError> {
    let mut engine = source.engine(true)?;
    engine.set_enable_coverage(coverage.is_some());
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
            if let Some(lines) = coverage.as_deref_mut() {
                lines.add(&engine)?;
            }
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
