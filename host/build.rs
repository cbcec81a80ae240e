//! Builds the shipped guest components (the plugins, for `wasm32-wasip2`) and the policy engine
//! module (for `wasm32-unknown-unknown`: OPA's Wasm ABI is a core-module ABI), so `cargo build`
//! needs no manual step. Each artifact's path is exported as `GANTRY_WASM_<NAME>` for
//! `include_bytes!`. The hostile test fixtures are built by `tests/fixtures` for tests only.

/// (crate, env suffix) of every shipped guest component.
const GUESTS: &[(&str, &str)] = &[
    ("gantry-plugin-binpack", "BINPACK"),
    ("gantry-plugin-spread", "SPREAD"),
    ("gantry-plugin-topology", "TOPOLOGY"),
    ("gantry-plugin-fairshare", "FAIRSHARE"),
    ("gantry-plugin-standardize", "STANDARDIZE"),
    ("gantry-plugin-onehot", "ONEHOT"),
    ("gantry-plugin-tokenizer", "TOKENIZER"),
];

fn main() {
    gantry_guest_build::build_and_export("wasm32-wasip2", GUESTS);
    gantry_guest_build::build_and_export(
        "wasm32-unknown-unknown",
        &[("gantry-policy-engine", "POLICY_ENGINE")],
    );
}
