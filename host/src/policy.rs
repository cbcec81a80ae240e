//! Access-control policies: Rego packed into the policy engine module (OPA's Wasm ABI), OPA
//! bundles, and decisions evaluated in the sandbox through `opa-wasm`.
//!
//! - [`source`]: reading a directory of Rego and `data.json`, the description packed into the
//!   module.
//! - [`check`]: what `gantry policy build` refuses (what the module could not load or run).
//! - [`pack`]: writing that description into a copy of the engine module.
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
pub mod source;

pub use request::{Action, Request, Resource, Subject};

use std::path::PathBuf;

/// The policy engine module every policy is packed into (built by `host/build.rs`).
pub const ENGINE_WASM: &[u8] = include_bytes!(env!("GANTRY_WASM_POLICY_ENGINE"));

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
    /// The module could not be packed.
    #[error(transparent)]
    Pack(#[from] pack::PackError),
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
/// load or run ([`check`]), packs the Rego and the data into the module, and writes OPA's
/// manifest (the revision is a digest of what was packed unless `revision` is given).
pub fn build(
    source: &source::PolicySource,
    entrypoints: &[String],
    revision: Option<&str>,
) -> Result<bundle::Bundle, PolicyError> {
    check::check(source, entrypoints)?;
    let packed = source.packed(entrypoints);
    let wasm = pack::pack(ENGINE_WASM, &packed)?;
    let revision = revision
        .map(String::from)
        .unwrap_or_else(|| crate::plugin::cache::sha256_hex(&packed)[..16].to_string());
    let mut roots: Vec<&str> = entrypoints
        .iter()
        .filter_map(|e| e.trim_matches('/').split('/').next())
        .collect();
    roots.sort_unstable();
    roots.dedup();
    let manifest = serde_json::json!({
        "revision": revision,
        "roots": roots,
        "wasm": entrypoints
            .iter()
            .map(|e| serde_json::json!({"entrypoint": e, "module": "/policy.wasm"}))
            .collect::<Vec<_>>(),
    });
    Ok(bundle::Bundle {
        wasm,
        data: source.data.clone(),
        manifest,
        signatures: None,
    })
}
