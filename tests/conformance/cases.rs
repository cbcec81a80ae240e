//! Conformance cases in OPA's schema (`v1/test/cases/cases.go`, `TestCase`), JSON-encoded: a
//! file is `{"cases": [...]}`, as `opa_to_json.py` writes them and as `gantry/` holds ours.

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

/// One case. Unknown fields are refused, so a typo in a hand-written case cannot pass silently.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub note: String,
    pub query: String,
    #[serde(default)]
    pub modules: Vec<String>,
    pub data: Option<serde_json::Value>,
    /// As written: its numbers reach the engine whole.
    pub input: Option<Box<RawValue>>,
    pub input_term: Option<String>,
    /// Each row's bindings as written: numbers read exactly ([`crate::outcome::value`]), not
    /// through serde_json's 64-bit numbers.
    pub want_result: Option<Vec<BTreeMap<String, Box<RawValue>>>>,
    pub want_error: Option<String>,
    pub want_error_code: Option<String>,
    /// Read by OPA's wasm end-to-end runner only; kept so those files load.
    #[allow(dead_code)]
    pub want_defined: Option<bool>,
    #[serde(default)]
    pub sort_bindings: bool,
    #[serde(default)]
    pub ignore_generated_vars: bool,
    #[serde(default)]
    pub strict_error: bool,
    /// Environment variables OPA sets for the case (`opa.runtime`): a sandbox has none.
    pub env: Option<serde_json::Value>,
    /// Where a converted case came from (`opa_to_json.py`); not OPA's.
    #[allow(dead_code)]
    pub source: Option<serde_json::Value>,
}

/// A case file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    cases: Vec<Case>,
    /// Rego v0 syntax (a file converted from OPA's `testdata/v0`).
    rego_version: Option<u8>,
    #[serde(rename = "_notice")]
    #[allow(dead_code)]
    notice: Option<String>,
}

/// A case with its id (`<file, relative, without .json>::<note>`) and its file's Rego version.
#[derive(Debug, Clone)]
pub struct Named {
    pub id: String,
    pub case: Case,
    pub rego_v0: bool,
}

impl Named {
    /// The topic, as OPA names it: the note up to its first `/`.
    pub fn topic(&self) -> &str {
        self.case.note.split('/').next().unwrap_or("")
    }
}

/// Every `*.json` case file under `dir` (`MANIFEST.json` aside), sorted by path.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|x| x == "json")
                && path.file_name().is_some_and(|n| n != "MANIFEST.json")
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The cases of every file under `dir`, ids prefixed with `prefix`; a repeated id gets ` #2`...
pub fn load(dir: &Path, prefix: &str) -> Vec<Named> {
    let mut all: Vec<Named> = Vec::new();
    for path in files(dir) {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let file: CaseFile =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let rel = path
            .strip_prefix(dir)
            .expect("under dir")
            .with_extension("");
        let stem = rel.to_string_lossy().replace('\\', "/");
        for case in file.cases {
            let base = format!("{prefix}{stem}::{}", case.note);
            let mut id = base.clone();
            let mut n = 1;
            while all.iter().any(|c| c.id == id) {
                n += 1;
                id = format!("{base} #{n}");
            }
            let rego_v0 = file.rego_version == Some(0);
            all.push(Named { id, case, rego_v0 });
        }
    }
    all
}
