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

    /// Adds the coverable lines of every module, those no test reached among them: regorus
    /// reports each module of a prepared engine (Gantry's patch), its lines read from the AST, and
    /// a query of `true` prepares the engine and evaluates no rule. Nothing of the policy runs
    /// here, where nothing would bound it.
    fn add_unreached(&mut self, engine: &regorus::Engine) -> Result<(), PolicyError> {
        let mut engine = engine.clone();
        engine.set_enable_coverage(true);
        engine
            .eval_query("true".into(), false)
            .map_err(|e| PolicyError::Source(format!("coverage: {e}")))?;
        self.add(&engine)
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

/// Runs every test rule natively (the interpreter); an error only when the policy itself does not
/// load.
pub fn run(source: &PolicySource) -> Result<Vec<TestOutcome>, PolicyError> {
    run_tests(&source.engine(true)?, &test_rules(source)?, None, &|_| None)
}

/// Runs every test rule in the sandbox, decided by the engine that decides requests (the policy
/// and its tests built into a bundle as `gantry policy build` builds one, each test rule an
/// entrypoint, each decided without an input), and then natively, the interpreter as its
/// oracle, each rule the sandbox finished: one whose evaluation the sandbox stopped (its memory
/// cap, its deadline) is not run natively, where nothing bounds it (regorus's own guards bound
/// nothing in this build) and it would take the process down. A test passes only when both
/// engines say `true`; where they disagree the outcome fails and names both answers. With
/// `coverage`, the lines of the policy the native runs evaluated.
pub async fn run_checked(
    source: &PolicySource,
    loader: &super::decide::PolicyLoader,
    coverage: bool,
) -> Result<(Vec<TestOutcome>, Option<Coverage>), PolicyError> {
    // The policy's own load errors first, as the interpreter words them.
    let engine = source.engine(true)?;
    let tests = test_rules(source)?;
    let decided = decide_in_sandbox(source, loader, &tests).await?;
    let stopped = |name: &str| match decided.get(name) {
        Some(Err(e)) => Some(format!("error in the sandbox (not run natively): {e}")),
        _ => None,
    };
    let mut lines = coverage.then(Lines::default);
    let mut outcomes = run_tests(&engine, &tests, lines.as_mut(), &stopped)?;
    for outcome in &mut outcomes {
        let Some(Ok(set)) = decided.get(&outcome.name) else {
            continue;
        };
        let passed = set.is_true();
        if passed != outcome.passed {
            let interpreter = outcome.failure.take().unwrap_or_else(|| "true".into());
            outcome.passed = false;
            outcome.failure = Some(format!(
                "the engines disagree: the sandbox decided {set}, the interpreter {interpreter}"
            ));
        }
    }
    let coverage = match lines {
        Some(mut lines) => {
            lines.add_unreached(&engine)?;
            Some(lines.report(source))
        }
        None => None,
    };
    Ok((outcomes, coverage))
}

/// Each test rule (`data.<package>.<rule>`) decided in the sandbox: its result set, or why none.
async fn decide_in_sandbox(
    source: &PolicySource,
    loader: &super::decide::PolicyLoader,
    tests: &[(String, String)],
) -> Result<BTreeMap<String, Result<super::decide::ResultSet, String>>, PolicyError> {
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
    let names: Vec<&String> = tests
        .iter()
        .map(|(_, name)| name)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut decided = BTreeMap::new();
    for chunk in names.chunks(gantry_policy_engine::policy::MAX_ENTRYPOINTS) {
        let entrypoints: Vec<String> = chunk
            .iter()
            .map(|name| name.trim_start_matches("data.").replace('.', "/"))
            .collect();
        let bundle = super::build(&combined, &entrypoints, Some("policy-test"))?;
        // A test may take longer than a request's decision is given; the machine may be busy.
        let limits = super::decide::PolicyLimits {
            deadline_ms: 10_000,
            ..Default::default()
        };
        let loaded = loader.load(bundle, limits).await?;
        for (name, entrypoint) in chunk.iter().zip(&entrypoints) {
            // As the interpreter runs a test: with no input at all.
            let (result, _) = loaded.evaluate_without_input(entrypoint).await;
            decided.insert((*name).clone(), result.map_err(|e| e.to_string()));
        }
    }
    Ok(decided)
}

/// The test rules of the policy's test modules, in file order: (file, `data.<package>.<rule>`).
fn test_rules(source: &PolicySource) -> Result<Vec<(String, String)>, PolicyError> {
    let mut rules = Vec::new();
    for (file, text) in &source.tests {
        let (package, names) = tests_of(text);
        let Some(package) = package else {
            return Err(PolicyError::Source(format!(
                "{file}: no package declaration"
            )));
        };
        for rule in names {
            rules.push((file.clone(), format!("data.{package}.{rule}")));
        }
    }
    Ok(rules)
}

/// Runs `tests` natively, each but those `skip` gives a failure for (that failure is theirs).
fn run_tests(
    engine: &regorus::Engine,
    tests: &[(String, String)],
    mut coverage: Option<&mut Lines>,
    skip: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<TestOutcome>, PolicyError> {
    let mut engine = engine.clone();
    engine.set_enable_coverage(coverage.is_some());
    let mut outcomes = Vec::new();
    for (file, name) in tests {
        if let Some(failure) = skip(name) {
            outcomes.push(TestOutcome {
                name: name.clone(),
                file: file.clone(),
                passed: false,
                failure: Some(failure),
                duration_us: 0.0,
            });
            continue;
        }
        let mut engine = engine.clone();
        let start = Instant::now();
        let result = engine.eval_rule(name.clone());
        let duration_us = start.elapsed().as_secs_f64() * 1e6;
        if let Some(lines) = coverage.as_deref_mut() {
            lines.add(&engine)?;
        }
        let failure = match result {
            Ok(regorus::Value::Bool(true)) => None,
            Ok(regorus::Value::Undefined) => Some("undefined (a condition did not hold)".into()),
            Ok(other) => Some(format!("evaluated to {other}")),
            Err(e) => Some(format!(
                "error: {}",
                gantry_policy_engine::diagnostic::render(&e.to_string())
            )),
        };
        outcomes.push(TestOutcome {
            name: name.clone(),
            file: file.clone(),
            passed: failure.is_none(),
            failure,
            duration_us,
        });
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

    /// `--coverage` lists the lines of a module no test reached without evaluating it: it
    /// evaluated the module's package natively, where nothing bounds a rule (this one iterates
    /// 10^15 times), so the command never ended.
    #[test]
    fn coverage_lists_an_untested_modules_lines_without_evaluating_it() {
        let source = PolicySource {
            modules: vec![
                ("p.rego".into(), "package p\nallow := true\n".into()),
                (
                    "q.rego".into(),
                    "package q\nforever if {\n\tsome a in numbers.range(1, 100000)\n\
                     \tsome b in numbers.range(1, 100000)\n\
                     \tsome c in numbers.range(1, 100000)\n\ta + b + c < 0\n}\n"
                        .into(),
                ),
            ],
            tests: vec![(
                "p_test.rego".into(),
                "package p_test\ntest_allow if data.p.allow\n".into(),
            )],
            data: serde_json::json!({}),
            strict: true,
        };
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let engine = source.engine(true).unwrap();
            let mut lines = Lines::default();
            let tests = test_rules(&source).unwrap();
            let outcomes = run_tests(&engine, &tests, Some(&mut lines), &|_| None).unwrap();
            lines.add_unreached(&engine).unwrap();
            let _ = done.send((outcomes, lines.report(&source)));
        });
        // A guard against the hang, not a timing: the report takes milliseconds.
        let (outcomes, report) = finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("coverage evaluated the untested module");
        assert!(outcomes[0].passed, "{outcomes:?}");
        let q = &report.files[1];
        assert_eq!(q.file, "q.rego");
        assert_eq!((q.covered, q.coverable), (0, 4), "{report:?}");
        assert_eq!(q.not_covered, [3, 4, 5, 6]);
        assert_eq!(report.files[0].not_covered, Vec::<u32>::new());
    }
}
