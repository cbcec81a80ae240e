//! `gantry policy build|test|eval`: Rego to an OPA bundle, its tests, and one decision.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use gantry::cluster::Cluster;
use gantry::plugin::ArtifactCache;
use gantry::policy::bundle::Bundle;
use gantry::policy::decide::{LoadedPolicy, PolicyLimits};
use gantry::policy::source::PolicySource;
use gantry::{Host, HostConfig};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a directory of Rego (and data.json) and pack it into an OPA wasm bundle.
    Build {
        /// The policy directory.
        dir: PathBuf,
        /// An entrypoint to export, as package/path/rule (repeatable).
        #[arg(short = 'e', long = "entrypoint", required = true)]
        entrypoints: Vec<String>,
        /// Where to write the bundle (.tar.gz).
        #[arg(short, long)]
        output: PathBuf,
        /// The bundle revision (default: a digest of the policy and data).
        #[arg(long)]
        revision: Option<String>,
    },
    /// Run the `test_` rules of the directory's *_test.rego files (like `opa test`).
    Test {
        /// The policy directory.
        dir: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate one entrypoint of a bundle on an input and print OPA's result set.
    Eval {
        /// The bundle (built by `gantry policy build` or `opa build -t wasm`).
        #[arg(long)]
        bundle: PathBuf,
        /// The entrypoint, as package/path/rule.
        #[arg(short = 'e', long)]
        entrypoint: String,
        /// The input: JSON text, or @FILE to read it from a file.
        #[arg(long)]
        input: String,
        /// Append the decision to this audit log (created if absent).
        #[arg(long, requires = "audit_key")]
        audit: Option<PathBuf>,
        /// The Ed25519 key (PKCS#8, from `gantry audit keygen`) that signs the log's checkpoints.
        #[arg(long)]
        audit_key: Option<PathBuf>,
    },
}

pub fn run(ctx: &super::Context, cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Build {
            dir,
            entrypoints,
            output,
            revision,
        } => {
            let source = PolicySource::read(&dir)?;
            let bundle = gantry::policy::build(&source, &entrypoints, revision.as_deref())?;
            bundle.write(&output)?;
            eprintln!(
                "wrote {} (revision {}, {} module(s), entrypoints: {})",
                output.display(),
                bundle.revision(),
                source.modules.len(),
                entrypoints.join(", ")
            );
            Ok(())
        }
        PolicyCommand::Test { dir, json } => {
            let source = PolicySource::read(&dir)?;
            let outcomes = gantry::policy::rego_tests::run(&source)?;
            let failed = outcomes.iter().filter(|o| !o.passed).count();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"passed": outcomes.len() - failed, "failed": failed, "tests": outcomes})
                );
            } else {
                for o in &outcomes {
                    match &o.failure {
                        None => println!("PASS {} ({:.0} µs)", o.name, o.duration_us),
                        Some(why) => println!("FAIL {} ({}): {why}", o.name, o.file),
                    }
                }
                println!("{} passed, {failed} failed", outcomes.len() - failed);
            }
            if outcomes.is_empty() {
                anyhow::bail!("{}: no test_ rules in *_test.rego files", dir.display());
            }
            if failed > 0 {
                anyhow::bail!("{failed} test(s) failed");
            }
            Ok(())
        }
        PolicyCommand::Eval {
            bundle,
            entrypoint,
            input,
            audit,
            audit_key,
        } => {
            let text = match input.strip_prefix('@') {
                Some(file) => std::fs::read_to_string(file)
                    .with_context(|| format!("reading the input from {file}"))?,
                None => input,
            };
            let input: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "--input: not JSON (line {}, column {}): {e}",
                    e.line(),
                    e.column()
                )
            })?;
            let read = Bundle::read(&bundle)?;
            let mut config = HostConfig::new(Cluster::uniform(1, 1, 1, 1));
            config.cache_dir = ctx.cache_dir.clone();
            let host = Host::new(config)?;
            let cache = ArtifactCache::new(host.engine(), ctx.cache_dir.clone());
            let policy = LoadedPolicy::load(host.engine(), &cache, read, PolicyLimits::default())
                .with_context(|| format!("loading {}", bundle.display()))?;
            let start = std::time::Instant::now();
            let result = policy.evaluate(&entrypoint, &input);
            let latency_us = start.elapsed().as_secs_f64() * 1e6;
            if let (Some(log), Some(key)) = (audit, audit_key) {
                let mut log = gantry::audit::AuditLog::open(&log, gantry::keys::load(&key)?)?;
                let (allow, reasons) = verdict(&result);
                let id = decision_id();
                let null = serde_json::Value::Null;
                log.decision(&gantry::audit::Decision {
                    decision_id: &id,
                    subject: input.get("subject").unwrap_or(&null),
                    action: input.get("action").unwrap_or(&null),
                    resource: input.get("resource").unwrap_or(&null),
                    entrypoint: &entrypoint,
                    allow,
                    reasons,
                    revision: policy.revision(),
                    latency_us,
                })?;
                log.close()?;
            }
            println!("{}", serde_json::to_string_pretty(&result?)?);
            Ok(())
        }
    }
}

/// Allow and reasons of a result set; any error is a deny (fail closed).
fn verdict(result: &Result<serde_json::Value, gantry::policy::PolicyError>) -> (bool, Vec<String>) {
    match result {
        Err(e) => (false, vec![e.to_string()]),
        Ok(set) => {
            let value = &set[0]["result"];
            let allow = value
                .as_bool()
                .or_else(|| value["allow"].as_bool())
                .unwrap_or(false);
            let reasons = value["reasons"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .map(|x| x.as_str().map_or_else(|| x.to_string(), String::from))
                        .collect()
                })
                .unwrap_or_default();
            (allow, reasons)
        }
    }
}

/// 128 random bits, hex.
fn decision_id() -> String {
    let mut bytes = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    gantry::plugin::cache::hex(&bytes)
}
