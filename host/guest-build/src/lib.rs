//! Builds guest crates (wasm components and modules) from a build script with a nested cargo, so
//! `cargo build` and `cargo test` need no manual step: the core uses it for the shipped plugins
//! and the policy engine, the test fixtures crate for the hostile guests (built for tests only).

// A build-script helper: cargo reads its instructions from stdout.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `guests` (crate name, env suffix) for `target` with the `plugin` profile, copies each
/// artifact into `OUT_DIR` and exports its path as `GANTRY_WASM_<suffix>` to the calling crate.
pub fn build_and_export(target: &str, guests: &[(&str, &str)]) {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = workspace_root(&manifest_dir);
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    // A target dir of their own, shared by every profile and every caller: the outer cargo holds
    // the lock on its own, and guests need not rebuild when the host switches debug/release.
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
        // The vendored regorus the policy engine module is built from (a patch there left
        // the module stale).
        "vendor",
        "Cargo.lock",
        // The guests' own flags (their initial memory, say).
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=GANTRY_GUEST_TARGET_DIR");

    ensure_target(target);
    let crates: Vec<&str> = guests.iter().map(|(k, _)| *k).collect();
    build(&root, &target_dir, target, &crates);
    for (krate, name) in guests {
        let file = format!("{}.wasm", krate.replace('-', "_"));
        let from = target_dir.join(target).join("plugin").join(&file);
        let to = out_dir.join(&file);
        copy(&from, &to);
        println!("cargo:rustc-env=GANTRY_WASM_{name}={}", to.display());
    }
}

/// The nearest ancestor of `dir` whose Cargo.toml declares the workspace.
fn workspace_root(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|d| {
            std::fs::read_to_string(d.join("Cargo.toml"))
                .is_ok_and(|toml| toml.lines().any(|l| l.trim() == "[workspace]"))
        })
        .unwrap_or_else(|| panic!("no workspace Cargo.toml above {}", dir.display()))
        .to_path_buf()
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
