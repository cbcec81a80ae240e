//! The outcome list (`expected.txt`), the summary line and the per-topic table of
//! `CONFORMANCE.md`, each computed from a run.

use std::collections::BTreeMap;

use crate::outcome::{Got, Outcome, describe};

/// One case's outcome on both engines.
#[derive(Debug)]
pub struct CaseRun {
    pub id: String,
    pub topic: String,
    pub interpreter: Outcome,
    pub decision: Outcome,
    pub interpreter_got: Got,
    pub decision_got: Got,
    /// The decision path allows (a lone `true`) where OPA does not.
    pub allows_where_opa_denies: bool,
}

/// The header of `expected.txt`.
pub const LIST_HEADER: &str = "\
# Outcome of every checked-in conformance case: interpreter (the oracle), decision path, id.
# Rewritten by GANTRY_CONFORMANCE_BLESS=1 cargo test -p gantry --test conformance
";

/// One line of `expected.txt`.
pub fn line(run: &CaseRun) -> String {
    format!(
        "{:<13} {:<13} {}",
        run.interpreter.name(),
        run.decision.name(),
        run.id
    )
}

/// The list's lines for `runs` (sorted by id), without the header.
pub fn lines(runs: &[CaseRun]) -> Vec<String> {
    let mut sorted: Vec<&CaseRun> = runs.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    sorted.into_iter().map(line).collect()
}

/// The lines of a list file, comments and blank lines aside.
pub fn parse(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// `conformance: interpreter N/M pass, decision N/M pass, K allow-where-OPA-denies`.
pub fn summary(runs: &[CaseRun]) -> String {
    let pass = |f: fn(&CaseRun) -> Outcome| runs.iter().filter(|r| f(r) == Outcome::Pass).count();
    let open = runs.iter().filter(|r| r.allows_where_opa_denies).count();
    format!(
        "conformance: interpreter {}/{n} pass, decision {}/{n} pass, {open} allow-where-OPA-denies",
        pass(|r| r.interpreter),
        pass(|r| r.decision),
        n = runs.len()
    )
}

/// The generated block of `CONFORMANCE.md`: the summary and a table per topic.
pub fn block(runs: &[CaseRun]) -> String {
    let mut topics: BTreeMap<&str, Vec<&CaseRun>> = BTreeMap::new();
    for run in runs {
        topics.entry(run.topic.as_str()).or_default().push(run);
    }
    let mut out = format!("{}\n\n", summary(runs));
    out.push_str("| topic | cases | interpreter pass | decision pass |");
    for outcome in &Outcome::ALL[1..] {
        out.push_str(&format!(" decision {} |", outcome.name()));
    }
    out.push_str("\n|---|---:|---:|---:|");
    out.push_str(&"---:|".repeat(Outcome::ALL.len() - 1));
    out.push('\n');
    for (topic, runs) in topics {
        let count = |f: &dyn Fn(&CaseRun) -> bool| runs.iter().filter(|r| f(r)).count();
        out.push_str(&format!(
            "| {topic} | {} | {} |",
            runs.len(),
            count(&|r| r.interpreter == Outcome::Pass)
        ));
        for outcome in Outcome::ALL {
            out.push_str(&format!(" {} |", count(&|r| r.decision == outcome)));
        }
        out.push('\n');
    }
    out
}

/// The table `GANTRY_CONFORMANCE_OUT` receives: one tab-separated line per case, the outcomes,
/// the id, and what each engine gave.
pub fn table(runs: &[CaseRun]) -> String {
    let mut sorted: Vec<&CaseRun> = runs.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = format!(
        "{}\ninterpreter\tdecision\tid\tinterpreter gave\tdecision gave\n",
        summary(runs)
    );
    for run in sorted {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\n",
            run.interpreter.name(),
            run.decision.name(),
            run.id,
            describe(&run.interpreter_got),
            describe(&run.decision_got)
        ));
    }
    out
}

/// What differs between the checked-in lines and the computed ones: `-` checked in only, `+`
/// computed only.
pub fn diff(checked_in: &[String], computed: &[String]) -> Vec<String> {
    let old: std::collections::BTreeSet<&String> = checked_in.iter().collect();
    let new: std::collections::BTreeSet<&String> = computed.iter().collect();
    let mut out: Vec<String> = old.difference(&new).map(|l| format!("-{l}")).collect();
    out.extend(new.difference(&old).map(|l| format!("+{l}")));
    // By id: after the sign and the two 13-wide outcome columns.
    out.sort_by_key(|l| l.get(29..).unwrap_or_default().to_string());
    out
}
