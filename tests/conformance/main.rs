//! OPA conformance as a test suite (issue 12): every case runs on two engines and each outcome
//! is checked against `tests/conformance/expected.txt`.
//!
//! - The oracle: regorus's interpreter on the raw query ([`oracle`]).
//! - The decision path, the real one: build, load in the sandbox, decide ([`decision`]).
//!
//! Cases: `opa/` (OPA's own, vendored: see `opa/NOTICE.md`) and `gantry/` (ours, in OPA's
//! schema). `CONFORMANCE.md` (repository root) says what they are and how to run the suite on a
//! whole OPA checkout. Environment:
//! - `GANTRY_CONFORMANCE_BLESS=1`: rewrite `expected.txt` and the table of `CONFORMANCE.md`;
//! - `GANTRY_CONFORMANCE_FILTER=<substring>[|<substring>...]`: only the cases whose id contains
//!   one of them;
//! - `GANTRY_CONFORMANCE_CASES=<dir>`: the cases of every `*.json` under `<dir>` instead of the
//!   checked-in ones (no list to check them against), their outcomes written as a table to
//!   `GANTRY_CONFORMANCE_OUT=<file>`.
//!
//! A case where the decision path allows and OPA does not fails whatever the list says.

// The summary line is the suite's report (`-- --nocapture`).
#![allow(clippy::print_stdout)]

mod cases;
mod decision;
mod oracle;
mod outcome;
mod report;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use gantry::cluster::Cluster;
use gantry::{Host, HostConfig};

use cases::Named;
use report::CaseRun;

/// Worker threads (the CI machine has two cores).
const THREADS: usize = 2;

fn dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/conformance"))
}

fn conformance_md() -> PathBuf {
    dir().join("../../CONFORMANCE.md")
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Whether the cases are an external directory's rather than the checked-in ones.
fn external() -> Option<PathBuf> {
    env("GANTRY_CONFORMANCE_CASES").map(PathBuf::from)
}

/// Whether only some cases run.
fn filtered() -> bool {
    env("GANTRY_CONFORMANCE_FILTER").is_some()
}

/// The cases to run: the checked-in ones or an external directory's, filtered.
fn selected() -> Vec<Named> {
    let mut all = match external() {
        Some(dir) => cases::load(&dir, ""),
        None => {
            let mut all = cases::load(&dir().join("opa"), "opa/");
            all.extend(cases::load(&dir().join("gantry"), "gantry/"));
            all
        }
    };
    if let Some(filter) = env("GANTRY_CONFORMANCE_FILTER") {
        all.retain(|c| filter.split('|').any(|f| c.id.contains(f)));
    }
    all
}

/// Runs one case on both engines.
fn run_case(loader: &gantry::policy::decide::PolicyLoader, named: &Named) -> CaseRun {
    let expected = outcome::expected(&named.case);
    let interpreter_got = unpanicked(|| oracle::run(named));
    let decision_got = unpanicked(|| decision::run(loader, named));
    CaseRun {
        id: named.id.clone(),
        topic: named.topic().to_string(),
        interpreter: outcome::classify(&expected, &interpreter_got),
        decision: outcome::classify(&expected, &decision_got),
        allows_where_opa_denies: outcome::allows_where_opa_denies(&expected, &decision_got),
        interpreter_got,
        decision_got,
    }
}

/// `run`'s outcome, or an error naming the panic that ended it: one case's panic (regorus's
/// `strings.count` with an empty substring panicked) must not end the run of every other case.
fn unpanicked(run: impl FnOnce() -> outcome::Got) -> outcome::Got {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        outcome::Got::Error(format!("panicked: {what}"))
    })
}

/// Every selected case on both engines, on [`THREADS`] threads sharing one host's loader (the
/// first case alone, before them).
fn run_all(all: &[Named]) -> Vec<CaseRun> {
    let mut config = HostConfig::new(Cluster::uniform(1, 1, 1, 1));
    config.cache_dir = None;
    let host = Host::new(config).expect("a host without a cache directory");
    let loader = host.policy_loader();
    // The first case compiles the engine module that every bundle carries; the workers then find
    // it compiled instead of both compiling it at once.
    let Some(first) = all.first() else {
        return Vec::new();
    };
    let next = AtomicUsize::new(1);
    let done = Mutex::new(vec![run_case(&loader, first)]);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                while let Some(named) = all.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let run = run_case(&loader, named);
                    done.lock().unwrap_or_else(|e| e.into_inner()).push(run);
                }
            });
        }
    });
    done.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// The one run every test reads; its summary is printed, and written out as a table when
/// `GANTRY_CONFORMANCE_OUT` says where.
fn runs() -> &'static [CaseRun] {
    static RUNS: OnceLock<Vec<CaseRun>> = OnceLock::new();
    RUNS.get_or_init(|| {
        let started = std::time::Instant::now();
        let runs = run_all(&selected());
        println!("{} ({:.0?})", report::summary(&runs), started.elapsed());
        if let Some(out) = env("GANTRY_CONFORMANCE_OUT") {
            std::fs::write(&out, report::table(&runs)).unwrap_or_else(|e| panic!("{out}: {e}"));
        }
        runs
    })
}

/// The generated block of `CONFORMANCE.md` sits between these lines.
const BEGIN: &str = "<!-- conformance:begin (GANTRY_CONFORMANCE_BLESS=1 rewrites this block) -->\n";
const END: &str = "<!-- conformance:end -->\n";

/// `CONFORMANCE.md`'s text and the byte range of its generated block's contents.
fn md_block() -> (String, std::ops::Range<usize>) {
    let path = conformance_md();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let start = text
        .find(BEGIN)
        .expect("CONFORMANCE.md has the generated block's start")
        + BEGIN.len();
    let end = start
        + text[start..]
            .find(END)
            .expect("CONFORMANCE.md has the block's end");
    (text, start..end)
}

fn bless(runs: &[CaseRun]) {
    assert!(
        !filtered() && external().is_none(),
        "bless the whole checked-in suite only"
    );
    let list = format!(
        "{}{}\n",
        report::LIST_HEADER,
        report::lines(runs).join("\n")
    );
    std::fs::write(dir().join("expected.txt"), list).expect("expected.txt written");
    let (mut text, range) = md_block();
    text.replace_range(range, &report::block(runs));
    std::fs::write(conformance_md(), text).expect("CONFORMANCE.md written");
}

#[test]
fn outcomes_match_the_checked_in_list() {
    let runs = runs();
    if env("GANTRY_CONFORMANCE_BLESS").is_some() {
        return bless(runs);
    }
    if external().is_some() {
        println!("external cases: no checked-in list to compare with");
        return;
    }
    let text = std::fs::read_to_string(dir().join("expected.txt")).expect("expected.txt");
    let mut checked_in = report::parse(&text);
    let computed = report::lines(runs);
    if filtered() {
        let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        checked_in.retain(|l| ids.iter().any(|id| l.get(28..) == Some(*id)));
    }
    let diff = report::diff(&checked_in, &computed);
    assert!(
        diff.is_empty(),
        "conformance outcomes moved (- checked in, + now; an improvement is re-blessed with \
         GANTRY_CONFORMANCE_BLESS=1):\n{}",
        diff.join("\n")
    );
}

#[test]
fn the_decision_path_never_allows_where_opa_denies() {
    let open: Vec<String> = runs()
        .iter()
        .filter(|r| r.allows_where_opa_denies)
        .map(|r| format!("{}: {}", r.id, outcome::describe(&r.decision_got)))
        .collect();
    assert!(
        open.is_empty(),
        "the decision path allows where OPA denies:\n{}",
        open.join("\n")
    );
}

#[test]
fn conformance_md_states_the_computed_rates() {
    if filtered() || external().is_some() || env("GANTRY_CONFORMANCE_BLESS").is_some() {
        // Blessing rewrites the file (in another test); the others describe other cases.
        println!("filtered, external or blessing: CONFORMANCE.md is not checked");
        return;
    }
    let runs = runs();
    let (text, range) = md_block();
    assert_eq!(
        text[range].to_string(),
        report::block(runs),
        "CONFORMANCE.md's table is stale: GANTRY_CONFORMANCE_BLESS=1 rewrites it"
    );
}
