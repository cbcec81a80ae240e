//! `gantry policy build|test|eval`: Rego to an OPA bundle, its tests, and one decision.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use gantry::cluster::Cluster;
use gantry::policy::bundle::{Bundle, read_files, write_files};
use gantry::policy::bundle_signature::{self, SigningKey, VerificationKey};
use gantry::policy::decide::PolicyLimits;
use gantry::policy::source::PolicySource;
use gantry::{Host, HostConfig};

/// How to check a bundle's signature (`opa sign`'s format).
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Verify the bundle's signature with this key (PEM public key, or the HS256 secret);
    /// without it a bundle loads unverified, with a warning.
    #[arg(long, requires = "key_id")]
    verification_key: Option<PathBuf>,
    /// The id of the verification key.
    #[arg(long)]
    key_id: Option<String>,
    /// The verification key's algorithm.
    #[arg(long, default_value = "RS256")]
    alg: String,
    /// The scope the signature must carry.
    #[arg(long)]
    scope: Option<String>,
}

impl VerifyArgs {
    /// Reads `bundle`, checking its signature when a key was given.
    pub fn read(&self, bundle: &std::path::Path) -> anyhow::Result<Bundle> {
        Ok(match (&self.verification_key, &self.key_id) {
            (Some(path), Some(id)) => {
                let alg = self.alg.parse().map_err(anyhow::Error::msg)?;
                let key = VerificationKey {
                    id: id.clone(),
                    alg,
                    key: read_key(path, alg == bundle_signature::Alg::Hs256)?,
                    scope: self.scope.clone(),
                };
                Bundle::read_verified(bundle, &[key])?
            }
            _ => {
                let read = Bundle::read(bundle)?;
                tracing::warn!(
                    bundle = %bundle.display(),
                    signed = read.signatures.is_some(),
                    "loading a bundle without verifying a signature (no --verification-key)"
                );
                read
            }
        })
    }
}

/// The `--policy` option of the commands that schedule: an OPA bundle every placement must pass.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// An OPA bundle (from `gantry policy build`) asked about every placement
    /// (`placement.apply`); refused placements stay pending.
    #[arg(long, value_name = "BUNDLE")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    verify: VerifyArgs,
}

impl PolicyArgs {
    /// Loads the bundle, if one was given, as `host`'s policy.
    pub fn install(&self, host: &mut Host) -> anyhow::Result<()> {
        let Some(path) = &self.policy else {
            return Ok(());
        };
        let bundle = self.verify.read(path)?;
        gantry::blocking::block_on(host.install_policy(bundle))
            .with_context(|| format!("loading {}", path.display()))?;
        Ok(())
    }
}

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
        /// Builtin errors fail the evaluation (`true`, the decision denies) or make the
        /// expression undefined (`false`, OPA's default); the bundle carries the setting.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
        strict: bool,
    },
    /// Sign a bundle the way `opa sign` does: writes /.signatures.json into it.
    Sign {
        /// The bundle (.tar.gz), rewritten in place.
        bundle: PathBuf,
        /// RS256, ES256 or HS256.
        #[arg(long, default_value = "RS256")]
        alg: String,
        /// The private key (PKCS#8 PEM) or, for HS256, the file holding the secret.
        #[arg(long)]
        signing_key: PathBuf,
        /// The key id written into the signature (what verifiers look the key up by).
        #[arg(long)]
        key_id: String,
        /// An optional scope claim.
        #[arg(long)]
        scope: Option<String>,
    },
    /// Create an ES256 signing key pair (KEY and KEY.pub, PEM).
    Keygen {
        /// Where to write the private key; the public key goes to the same path plus `.pub`.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Run the `test_` rules of the directory's *_test.rego files (like `opa test`).
    Test {
        /// The policy directory.
        dir: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Builtin errors fail the evaluation (`true`) or make the expression undefined
        /// (`false`), as `policy build --strict`.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
        strict: bool,
        #[command(flatten)]
        coverage: CoverageArgs,
    },
    /// Evaluate one entrypoint of a bundle on an input and print OPA's result set; with
    /// `--inputs`, on many (JSON lines in, one result set per line out), loading the bundle once.
    Eval {
        /// The bundle (built by `gantry policy build` or `opa build -t wasm`).
        #[arg(long)]
        bundle: PathBuf,
        /// The entrypoint, as package/path/rule.
        #[arg(short = 'e', long)]
        entrypoint: String,
        /// The input: JSON text, or @FILE to read it from a file. Without `--input` and
        /// `--inputs` the entrypoint is evaluated with no input at all (`input` is undefined), as
        /// `opa eval` without `-i`.
        #[arg(long, conflicts_with = "inputs")]
        input: Option<String>,
        /// Many inputs, one JSON document per line (blank lines skipped), from FILE or `-`
        /// (standard input). Every line is read and checked before the first decision.
        #[arg(long, value_name = "FILE")]
        inputs: Option<PathBuf>,
        #[command(flatten)]
        verify: VerifyArgs,
        /// Append the decision to this audit log (created if absent).
        #[arg(long, requires = "audit_key")]
        audit: Option<PathBuf>,
        /// The Ed25519 key (PKCS#8, from `gantry audit keygen`) that signs the log's checkpoints.
        #[arg(long)]
        audit_key: Option<PathBuf>,
    },
}

/// Runs `gantry policy ...`.
pub fn run(ctx: &super::Context, cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Build {
            dir,
            entrypoints,
            output,
            revision,
            strict,
        } => build(
            ctx,
            &dir,
            &entrypoints,
            &output,
            revision.as_deref(),
            strict,
        ),
        PolicyCommand::Test {
            dir,
            json,
            strict,
            coverage,
        } => test(ctx, &dir, json, strict, &coverage),
        PolicyCommand::Sign {
            bundle,
            alg,
            signing_key,
            key_id,
            scope,
        } => {
            let key = SigningKey {
                id: key_id,
                alg: alg.parse().map_err(anyhow::Error::msg)?,
                key: read_key(&signing_key, true)?,
            };
            sign(&bundle, &key, &signing_key, scope.as_deref())
        }
        PolicyCommand::Keygen { output } => keygen(&output),
        PolicyCommand::Eval {
            bundle,
            entrypoint,
            input,
            inputs,
            verify,
            audit,
            audit_key,
        } => {
            // The spelling is checked first, so that `a.b.allow` gets the hint `build` gives.
            gantry::policy::check::entrypoint_syntax(&entrypoint)?;
            let (inputs, pretty) = match (input, inputs) {
                (Some(input), _) => (vec![(None, Some(eval_input(input)?))], true),
                (None, Some(file)) => {
                    let lines = eval_inputs(&file)?;
                    (
                        lines.into_iter().map(|(at, v)| (at, Some(v))).collect(),
                        false,
                    )
                }
                (None, None) => (vec![(None, None)], true),
            };
            let audit = audit.zip(audit_key);
            eval(ctx, &bundle, &verify, &entrypoint, &inputs, pretty, audit)
        }
    }
}

/// Builds the bundle, loads it once through the decision path (opa-wasm, the sandbox) before
/// writing it, so a bundle that builds also loads, and the engine module is compiled into the
/// cache by the build rather than by the first decision.
fn build(
    ctx: &super::Context,
    dir: &std::path::Path,
    entrypoints: &[String],
    output: &std::path::Path,
    revision: Option<&str>,
    strict: bool,
) -> anyhow::Result<()> {
    let source = PolicySource {
        strict,
        ..PolicySource::read(dir)?
    };
    let bundle = gantry::policy::build(&source, entrypoints, revision)?;
    let mut config = HostConfig::new(Cluster::uniform(1, 1, 1, 1));
    config.cache_dir = ctx.cache_dir.clone();
    let host = Host::new(config)?;
    gantry::blocking::block_on(
        host.policy_loader()
            .load(bundle.clone(), PolicyLimits::default()),
    )
    .context("the bundle does not load in the sandbox")?;
    bundle.write(output)?;
    eprintln!(
        "wrote {} (revision {}, {} module(s), entrypoints: {}, strict: {})",
        output.display(),
        bundle.revision(),
        source.modules.len(),
        entrypoints.join(", "),
        source.strict
    );
    Ok(())
}

/// `--coverage` and `--threshold` of `policy test`.
#[derive(Debug, clap::Args)]
pub struct CoverageArgs {
    /// Report the lines of the policy's modules (its tests left out) that the tests evaluated,
    /// as `opa test --coverage`.
    #[arg(long)]
    coverage: bool,
    /// Fail (exit 1) when that coverage is below PERCENT (implies --coverage).
    #[arg(long, value_name = "PERCENT", value_parser = percentage)]
    threshold: Option<f64>,
}

fn percentage(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("`{text}` is not a percentage from 0 to 100")),
    }
}

fn test(
    ctx: &super::Context,
    dir: &std::path::Path,
    json: bool,
    strict: bool,
    cov: &CoverageArgs,
) -> anyhow::Result<()> {
    let source = PolicySource {
        strict,
        ..PolicySource::read(dir)?
    };
    // The tests through the engine that decides, the interpreter as its oracle.
    let mut config = HostConfig::new(Cluster::uniform(1, 1, 1, 1));
    config.cache_dir = ctx.cache_dir.clone();
    let host = Host::new(config)?;
    let (outcomes, coverage) =
        gantry::blocking::block_on(gantry::policy::rego_tests::run_checked(
            &source,
            &host.policy_loader(),
            cov.coverage || cov.threshold.is_some(),
        ))?;
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    if json {
        println!(
            "{}",
            serde_json::json!({"passed": outcomes.len() - failed, "failed": failed, "tests": outcomes, "coverage": coverage})
        );
    } else {
        for o in &outcomes {
            match &o.failure {
                None => println!("PASS {} ({:.0} µs)", o.name, o.duration_us),
                Some(why) => println!("FAIL {} ({}): {why}", o.name, o.file),
            }
        }
        println!("{} passed, {failed} failed", outcomes.len() - failed);
        if let Some(c) = &coverage {
            print_coverage(c);
        }
    }
    if outcomes.is_empty() {
        anyhow::bail!("{}: no test_ rules in *_test.rego files", dir.display());
    }
    if failed > 0 {
        anyhow::bail!("{failed} test(s) failed");
    }
    if let (Some(c), Some(threshold)) = (&coverage, cov.threshold)
        && c.percent < threshold
    {
        anyhow::bail!(
            "coverage {:.1}% is below the threshold of {threshold}%",
            c.percent
        );
    }
    Ok(())
}

fn print_coverage(c: &gantry::policy::rego_tests::Coverage) {
    for f in &c.files {
        let missed = if f.not_covered.is_empty() {
            String::new()
        } else {
            format!(", not covered: lines {}", ranges(&f.not_covered))
        };
        println!(
            "coverage {}: {:.1}% ({}/{} lines){missed}",
            f.file, f.percent, f.covered, f.coverable
        );
    }
    println!(
        "coverage: {:.1}% ({}/{} lines)",
        c.percent, c.covered, c.coverable
    );
}

/// `1, 3-5, 9` for `[1, 3, 4, 5, 9]` (sorted).
fn ranges(lines: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let mut j = i;
        while j + 1 < lines.len() && lines[j + 1] == lines[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            lines[i].to_string()
        } else {
            format!("{}-{}", lines[i], lines[j])
        });
        i = j + 1;
    }
    parts.join(", ")
}

/// Signs `bundle` in place with `key` (read from `key_path`).
fn sign(
    bundle: &std::path::Path,
    key: &SigningKey,
    key_path: &std::path::Path,
    scope: Option<&str>,
) -> anyhow::Result<()> {
    let mut files = read_files(bundle)?;
    files.retain(|(name, _)| name != bundle_signature::FILE);
    let sig = bundle_signature::sign(&files, key, scope)
        .map_err(|e| anyhow::anyhow!("{}: {e}", key_path.display()))?;
    files.push((bundle_signature::FILE.to_string(), sig));
    write_files(bundle, &files)?;
    eprintln!(
        "signed {} ({}, key `{}`, {} files)",
        bundle.display(),
        key.alg.name(),
        key.id,
        files.len() - 1
    );
    Ok(())
}

fn keygen(output: &std::path::Path) -> anyhow::Result<()> {
    let public = PathBuf::from(format!("{}.pub", output.display()));
    for p in [output, public.as_path()] {
        if p.exists() {
            anyhow::bail!("{}: exists; refusing to overwrite a key", p.display());
        }
    }
    let (private, public_pem) = bundle_signature::generate_es256().map_err(anyhow::Error::msg)?;
    gantry::keys::write_private(output, private.as_bytes())
        .with_context(|| format!("writing {}", output.display()))?;
    std::fs::write(&public, public_pem)?;
    eprintln!("wrote {} and {}", output.display(), public.display());
    Ok(())
}

/// An input as the module reads it: JSON text, kept as written (a number past 64 bits reaches
/// the policy whole), within the engine's bounds (nesting, a number's length), which are
/// checked here, by line and column, before any decision.
type Input = Box<serde_json::value::RawValue>;

/// The `--input` of `eval`: JSON text, or `@FILE`.
fn eval_input(input: String) -> anyhow::Result<Input> {
    let text = match input.strip_prefix('@') {
        Some(file) => gantry::plugin::files::read_text(file.as_ref())
            .with_context(|| format!("reading the input from {file}"))?,
        None => input,
    };
    let input = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "--input: not JSON (line {}, column {}): {e}",
            e.line(),
            e.column()
        )
    })?;
    gantry_policy_engine::json::parse(&text).map_err(|e| anyhow::anyhow!("--input: {e}"))?;
    Ok(input)
}

/// Most bytes `--inputs` reads: inputs are held in memory, all checked before the first decision.
const MAX_INPUTS_BYTES: u64 = 256 << 20;

/// The `--inputs` of `eval`: one JSON document per non-blank line of `file` (`-`: standard
/// input), each with where it stands (`FILE:LINE`, for errors). A line that is not JSON is
/// refused by its number, before anything is decided.
fn eval_inputs(file: &std::path::Path) -> anyhow::Result<Vec<(Option<String>, Input)>> {
    use std::io::Read;
    let name = file.display().to_string();
    let reader: Box<dyn Read> = if name == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(file).with_context(|| format!("reading the inputs from {name}"))?,
        )
    };
    let mut text = String::new();
    reader
        .take(MAX_INPUTS_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading the inputs from {name}"))?;
    if text.len() as u64 > MAX_INPUTS_BYTES {
        anyhow::bail!("--inputs {name}: more than {MAX_INPUTS_BYTES} bytes");
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let at = format!("{name}:{}", i + 1);
            match serde_json::from_str(line) {
                Ok(input) => {
                    gantry_policy_engine::json::parse(line)
                        .map_err(|e| anyhow::anyhow!("--inputs {at}: {e}"))?;
                    Ok((Some(at), input))
                }
                Err(e) => Err(anyhow::anyhow!(
                    "--inputs {at}: not JSON (column {}): {e}",
                    e.column()
                )),
            }
        })
        .collect()
}

/// The decisions of `bundle`'s `entrypoint` on `inputs` (`None`: no input at all), printed in
/// order (one input: pretty JSON; `--inputs`: one line each), each recorded in the audit log
/// `(log, key)` when one is
/// given. The bundle is loaded once.
fn eval(
    ctx: &super::Context,
    bundle: &std::path::Path,
    verify: &VerifyArgs,
    entrypoint: &str,
    inputs: &[(Option<String>, Option<Input>)],
    pretty: bool,
    audit: Option<(PathBuf, PathBuf)>,
) -> anyhow::Result<()> {
    let read = verify.read(bundle)?;
    let mut config = HostConfig::new(Cluster::uniform(1, 1, 1, 1));
    config.cache_dir = ctx.cache_dir.clone();
    let host = Host::new(config)?;
    let policy =
        gantry::blocking::block_on(host.policy_loader().load(read, PolicyLimits::default()))
            .with_context(|| format!("loading {}", bundle.display()))?;
    let log = match audit {
        Some((log, key)) => Some(gantry::audit::AuditLog::open(
            &log,
            gantry::keys::load(&key)?,
        )?),
        None => None,
    };
    // The log is closed (a signed checkpoint) even when a decision fails, as for one input.
    let decided = inputs.iter().try_for_each(|(at, input)| {
        let start = std::time::Instant::now();
        let (result, given) = gantry::blocking::block_on(async {
            match input {
                Some(input) => policy.evaluate_given(entrypoint, &**input).await,
                None => policy.evaluate_without_input(entrypoint).await,
            }
        });
        let latency_us = start.elapsed().as_secs_f64() * 1e6;
        if let Some(log) = &log {
            record(
                log,
                input.as_deref(),
                entrypoint,
                (&result, &given),
                policy.revision(),
                latency_us,
            )?;
        }
        // A failed decision of `--inputs` names its line.
        let result = match (result, at) {
            (Ok(result), _) => result,
            (Err(e), Some(at)) => {
                return Err(anyhow::Error::new(e).context(format!("--inputs {at}")));
            }
            (Err(e), None) => return Err(e.into()),
        };
        // As the module wrote it: its numbers exact, whatever their size.
        let text = if pretty {
            result.pretty()
        } else {
            result.compact()
        };
        println!("{text}");
        anyhow::Ok(())
    });
    if let Some(log) = log {
        log.close()?;
    }
    decided
}

/// Appends one decision of `eval` to the audit log.
fn record(
    log: &gantry::audit::AuditLog,
    input: Option<&serde_json::value::RawValue>,
    entrypoint: &str,
    (result, given): (
        &Result<gantry::policy::decide::ResultSet, gantry::policy::PolicyError>,
        &[gantry::policy::decide::HostValue],
    ),
    revision: &str,
    latency_us: f64,
) -> anyhow::Result<()> {
    let (allow, reasons) = gantry::policy::decide::verdict(result);
    let id = gantry::audit::new_decision_id();
    let members = input.and_then(|i| serde_json::from_str(i.get()).ok());
    let [subject, action, resource] =
        ["subject", "action", "resource"].map(|f| field(members.as_ref(), f));
    log.decision(&gantry::audit::Decision {
        decision_id: &id,
        subject: &subject,
        action: &action,
        resource: &resource,
        entrypoint,
        allow,
        reasons,
        revision,
        latency_us,
        given,
    })?;
    Ok(())
}

/// Member `name` of an input object's `members` as the audit log records it (null when absent).
/// The record's values are serde_json's, 64-bit: a member holding a number none carries
/// (`1e400`) is recorded as its text, a string, rather than as another number.
fn field(
    members: Option<&std::collections::BTreeMap<String, &serde_json::value::RawValue>>,
    name: &str,
) -> serde_json::Value {
    match members.and_then(|m| m.get(name)) {
        None => serde_json::Value::Null,
        Some(raw) => serde_json::from_str(raw.get())
            .unwrap_or_else(|_| serde_json::Value::String(raw.get().into())),
    }
}

/// A key file's bytes (a trailing newline dropped, so `echo secret > f` works for HS256),
/// bounded; a `secret` (a private key, an HS256 secret, which signs as well as it verifies) its
/// owner's alone ([`gantry::durable::read_private`]), as every private key Gantry reads.
fn read_key(path: &std::path::Path, secret: bool) -> anyhow::Result<Vec<u8>> {
    const MOST: u64 = 1 << 20;
    let read = match secret {
        true => gantry::durable::read_private,
        false => gantry::durable::read_bounded,
    };
    let mut bytes =
        read(path, MOST).with_context(|| format!("reading the key {}", path.display()))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(bytes)
}
