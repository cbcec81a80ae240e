//! Builds the guest components (the shipped plugins and the hostile test fixtures) for
//! `wasm32-wasip2`, and the policy engine module for `wasm32-unknown-unknown` (OPA's Wasm ABI is a
//! core-module ABI), so `cargo build` and `cargo test` need no manual step. Each artifact's path
//! is exported as `GANTRY_WASM_<NAME>` for `include_bytes!` and the tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (crate, env suffix) of every guest.
const GUESTS: &[(&str, &str)] = &[
    ("gantry-plugin-binpack", "BINPACK"),
    ("gantry-plugin-spread", "SPREAD"),
    ("gantry-plugin-topology", "TOPOLOGY"),
    ("gantry-plugin-fairshare", "FAIRSHARE"),
    ("gantry-plugin-standardize", "STANDARDIZE"),
    ("gantry-plugin-onehot", "ONEHOT"),
    ("gantry-plugin-tokenizer", "TOKENIZER"),
    ("gantry-fixture-hostile", "FIXTURE_HOSTILE"),
    ("gantry-fixture-wrong-world", "FIXTURE_WRONG_WORLD"),
];

/// The policy engine, a core module for OPA's Wasm ABI.
const POLICY_ENGINE: (&str, &str) = ("gantry-policy-engine", "POLICY_ENGINE");

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    // A target dir of their own, shared by every profile of the host: the outer cargo holds the
    // lock on its own, and guests need not rebuild when the host switches debug/release.
    let target_dir = match std::env::var_os("GANTRY_GUEST_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => out_dir
            .ancestors()
            .nth(4)
            .map(|t| t.join("guests"))
            .unwrap_or_else(|| out_dir.join("guests")),
    };
    for dir in [
        "plugins",
        "host/model",
        "wit",
        "tests/fixtures",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=GANTRY_GUEST_TARGET_DIR");

    for target in ["wasm32-wasip2", "wasm32-unknown-unknown"] {
        ensure_target(target);
    }
    let guests: Vec<&str> = GUESTS.iter().map(|(k, _)| *k).collect();
    build(&root, &target_dir, "wasm32-wasip2", &guests);
    build(
        &root,
        &target_dir,
        "wasm32-unknown-unknown",
        &[POLICY_ENGINE.0],
    );
    for (target, (krate, name)) in GUESTS
        .iter()
        .map(|g| ("wasm32-wasip2", g))
        .chain([("wasm32-unknown-unknown", &POLICY_ENGINE)])
    {
        let file = format!("{}.wasm", krate.replace('-', "_"));
        let from = target_dir.join(target).join("plugin").join(&file);
        let to = out_dir.join(&file);
        copy(&from, &to);
        println!("cargo:rustc-env=GANTRY_WASM_{name}={}", to.display());
    }
}

/// Makes sure the toolchain that builds the host can build for `target`.
///
/// `rust-toolchain.toml` lists the wasm targets, but rustup installs them only together with a
/// toolchain it installs itself: a machine that already had the pinned toolchain without them
/// would otherwise fail deep inside the guest build with "can't find crate for `core`". So add
/// the target through rustup where rustup manages this toolchain, or stop with the remedy.
fn ensure_target(target: &str) {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = |sysroot: &Option<PathBuf>| {
        sysroot
            .as_ref()
            .is_some_and(|s| s.join("lib/rustlib").join(target).join("lib").is_dir())
    };
    if installed(&sysroot) {
        return;
    }
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok();
    let remedy = match &toolchain {
        Some(t) => format!("rustup target add {target} --toolchain {t}"),
        None => format!("rustup target add {target}"),
    };
    println!("cargo:warning=the wasm target {target} is missing; running `{remedy}`");
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", target]);
    if let Some(t) = &toolchain {
        cmd.args(["--toolchain", t]);
    }
    let added = cmd.status().map(|s| s.success()).unwrap_or(false);
    if !added || !installed(&sysroot) {
        panic!(
            "the Rust target {target} is not installed for this toolchain and could not be \
             added; run `{remedy}` and build again"
        );
    }
}

/// Runs cargo for `crates` on `target`, with the `plugin` profile.
fn build(root: &Path, target_dir: &Path, target: &str, crates: &[&str]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--profile", "plugin", "--target", target])
        .arg("--target-dir")
        .arg(target_dir);
    for krate in crates {
        cmd.args(["-p", krate]);
    }
    // The outer build's flags and wrappers (clippy, coverage) are for the host, not the guests;
    // the guests' own flags live in `.cargo/config.toml`.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("running cargo to build the guest components");
    if !status.success() {
        panic!("building the guests for {target} failed ({status}); see the output above");
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
}
