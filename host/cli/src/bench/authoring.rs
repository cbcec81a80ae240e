//! `gantry bench authoring`: the policy author's loop as a user runs it. Each round writes a new
//! policy (the shipped `authz` with a different quota), then runs `gantry policy build` and
//! `gantry policy eval` on one request, each a new process of this binary, and times them.
//!
//! Side by side, in one run: with the module cache warm (every policy after the first one a
//! machine ever builds) and cold (a fresh, empty cache each round). Cold is also what every new
//! policy cost before bundles carried the same engine module: each policy was then a new module
//! to compile.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use gantry::builtin::AUTHZ_POLICY;

/// The entrypoint built and evaluated.
const ENTRYPOINT: &str = "gantry/authz/decision";

/// One request, allowed by the shipped data.
const INPUT: &str = r#"{"subject": {"user": "ada", "roles": ["researcher"], "tenants": ["vision"]},
 "action": "job.submit", "resource": {"tenant": "vision", "gpus": 64}}"#;

/// Medians of one side, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// Rounds timed.
    pub rounds: usize,
    /// `gantry policy build` (check, bundle, load once in the sandbox).
    pub build_ms: f64,
    /// `gantry policy eval` of one input (a new process: start, load, decide).
    pub eval_ms: f64,
    /// Build and eval, edit to decision.
    pub total_ms: f64,
}

/// What `gantry bench authoring --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct AuthoringReport {
    /// The module cache holds the engine module.
    pub warm: Side,
    /// An empty cache each round.
    pub cold: Side,
    /// `cold.total_ms / warm.total_ms`.
    pub ratio: f64,
}

/// Runs `rounds` warm rounds and `cold_rounds` cold ones, alternating, after one untimed build
/// that fills the warm cache; `progress(done)` after each round.
pub fn run(
    rounds: usize,
    cold_rounds: usize,
    progress: &mut dyn FnMut(usize),
) -> anyhow::Result<AuthoringReport> {
    let (warm, cold) = super::in_scratch_dir("authoring", |work| {
        let warm_cache = work.join("warm-cache");
        round(work, 0, &warm_cache)?;
        let (mut warm, mut cold) = (Vec::new(), Vec::new());
        for i in 1..=rounds.max(cold_rounds) {
            if i <= rounds {
                warm.push(round(work, i, &warm_cache)?);
            }
            if i <= cold_rounds {
                let cache = work.join(format!("cold-cache-{i}"));
                cold.push(round(work, rounds + i, &cache)?);
                std::fs::remove_dir_all(&cache)?;
            }
            progress(i);
        }
        Ok((side(&warm), side(&cold)))
    })?;
    Ok(AuthoringReport {
        ratio: cold.total_ms / warm.total_ms,
        warm,
        cold,
    })
}

/// `(build_ms, eval_ms)` of policy variant `i`, with the module cache in `cache`.
fn round(work: &Path, i: usize, cache: &Path) -> anyhow::Result<(f64, f64)> {
    let dir = work.join(format!("policy-{i}"));
    std::fs::create_dir_all(&dir)?;
    let (file, rego, data) = AUTHZ_POLICY;
    std::fs::write(dir.join(file), format!("{rego}\n# round {i}\n"))?;
    let mut data: serde_json::Value = serde_json::from_str(data)?;
    data["round"] = i.into();
    std::fs::write(dir.join("data.json"), data.to_string())?;
    let bundle = work.join(format!("bundle-{i}.tar.gz"));
    let (d, b) = (path(&dir)?, path(&bundle)?);
    let build = timed(&["policy", "build", d, "-e", ENTRYPOINT, "-o", b], cache)?;
    let eval = timed(
        &[
            "policy", "eval", "--bundle", b, "-e", ENTRYPOINT, "--input", INPUT,
        ],
        cache,
    )?;
    Ok((build, eval))
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow::anyhow!("{}: not UTF-8", p.display()))
}

/// Milliseconds `gantry <args>` took, failing when it failed.
fn timed(args: &[&str], cache: &Path) -> anyhow::Result<f64> {
    let exe: PathBuf = std::env::current_exe()?;
    let start = Instant::now();
    let out = Command::new(exe)
        .args(args)
        .env("GANTRY_CACHE_DIR", cache)
        .env_remove("RUST_LOG")
        .output()?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        anyhow::bail!(
            "gantry {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(ms)
}

fn side(rounds: &[(f64, f64)]) -> Side {
    Side {
        rounds: rounds.len(),
        build_ms: super::median(&mut rounds.iter().map(|r| r.0).collect::<Vec<_>>()),
        eval_ms: super::median(&mut rounds.iter().map(|r| r.1).collect::<Vec<_>>()),
        total_ms: super::median(&mut rounds.iter().map(|r| r.0 + r.1).collect::<Vec<_>>()),
    }
}
