//! Access-control policies: Rego run by the policy engine module (OPA's Wasm ABI), OPA bundles,
//! and decisions evaluated in the sandbox through `opa-wasm`.
//!
//! - [`source`]: reading a directory of Rego and `data.json`, and the description of the policy
//!   a bundle carries to the module.
//! - [`check`]: what `gantry policy build` refuses (what the module could not load or run).
//! - [`pack`]: finishing the engine module for the ABI, once: every bundle carries the same
//!   module, so a host compiles it once whatever the policy.
//! - [`bundle`]: OPA bundles (`/policy.wasm`, `/data.json`, `/.manifest`), written and read.
//! - [`bundle_signature`]: OPA's bundle signatures (`/.signatures.json`), made and checked.
//! - [`decide`]: loading a bundle on the host's engine and evaluating entrypoints in it.
//! - [`rego_tests`]: running a policy's `test_` rules, like `opa test`.
//! - [`request`]: the host's questions, typed ([`Request`]: subject, action, resource), as the
//!   input `policies/authz.rego` reads.

pub mod bundle;
pub mod bundle_signature;
pub mod check;
pub mod decide;
pub mod pack;
pub mod rego_tests;
pub mod request;
mod result_set;
pub mod source;

pub use request::{Action, Request, Resource, Subject};

use std::path::PathBuf;

/// The policy engine module as built (by `host/build.rs`), before [`engine_module`] finishes it.
pub const ENGINE_WASM: &[u8] = include_bytes!(env!("GANTRY_WASM_POLICY_ENGINE"));

/// The engine module every bundle carries, finished for the ABI once per process.
pub fn engine_module() -> Result<&'static [u8], PolicyError> {
    static FINISHED: std::sync::OnceLock<Result<Vec<u8>, String>> = std::sync::OnceLock::new();
    FINISHED
        .get_or_init(|| pack::finish(ENGINE_WASM).map_err(|e| e.to_string()))
        .as_deref()
        .map_err(|e| PolicyError::Module(e.clone()))
}

/// Whether `wasm` is the engine module of [`engine_module`], byte for byte.
pub fn is_engine_module(wasm: &[u8]) -> bool {
    engine_module().is_ok_and(|engine| engine == wasm)
}

/// What can go wrong with a policy, named after the file or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// Rego that does not parse or check, or data that is not a JSON object.
    #[error("{0}")]
    Source(String),
    /// Rego that `gantry policy build` refuses, each problem with its file, line and column.
    #[error("{}", render(.0))]
    Refused(Vec<gantry_policy_engine::diagnostic::Diagnostic>),
    /// A bundle that is not a valid OPA wasm bundle.
    #[error("bundle {path}: {message}")]
    Bundle {
        /// The bundle.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The bundle's module could not be compiled or instantiated as an OPA-ABI policy.
    #[error("policy module: {0}")]
    Module(String),
    /// Evaluation failed (trap, deadline, memory, unknown entrypoint, bad input); the decision
    /// is a deny.
    #[error("evaluation of `{entrypoint}` failed: {message}")]
    Eval {
        /// The entrypoint.
        entrypoint: String,
        /// The cause.
        message: String,
    },
}

/// The diagnostics of a refusal, one after the other.
fn render(diagnostics: &[gantry_policy_engine::diagnostic::Diagnostic]) -> String {
    let all: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    all.join("\n")
}

/// Builds a bundle from a policy directory's source: refuses what the engine module could not
/// load or run ([`check`]), writes the policy beside the data (`data.json`'s
/// [`gantry_policy_engine::policy::POLICY_KEY`]), and OPA's manifest (the revision is a digest of
/// the data and the policy unless `revision` is given). The module is the engine's, the same for
/// every policy.
pub fn build(
    source: &source::PolicySource,
    entrypoints: &[String],
    revision: Option<&str>,
) -> Result<bundle::Bundle, PolicyError> {
    check::check(source, entrypoints)?;
    let data = source.bundle_data(entrypoints);
    let revision = revision.map(String::from).unwrap_or_else(|| {
        let bytes = serde_json::to_vec(&data).expect("a JSON value serializes");
        crate::plugin::cache::sha256_hex(&bytes)[..16].to_string()
    });
    let mut roots: Vec<&str> = entrypoints
        .iter()
        .filter_map(|e| e.trim_matches('/').split('/').next())
        .collect();
    roots.sort_unstable();
    roots.dedup();
    let manifest = serde_json::json!({
        "revision": revision,
        "roots": roots,
        "metadata": {"gantry": {"strict": source.strict}},
        "wasm": entrypoints
            .iter()
            .map(|e| serde_json::json!({"entrypoint": e, "module": "/policy.wasm"}))
            .collect::<Vec<_>>(),
    });
    Ok(bundle::Bundle {
        wasm: engine_module()?.to_vec(),
        data,
        manifest,
        signatures: None,
    })
}
