//! The plugins shipped inside the `gantry` binary, built from `plugins/` by `build.rs`.

/// A shipped plugin: its manifest text and component bytes.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// Name, as given to `--plugin`.
    pub name: &'static str,
    /// One line on what it does.
    pub summary: &'static str,
    /// The manifest (`plugins/<name>/plugin.toml`).
    pub manifest: &'static str,
    /// The component.
    pub wasm: &'static [u8],
}

/// The shipped plugin built from `plugins/<name>/`; `$env` is the build script's variable holding
/// its component's path.
macro_rules! builtin {
    ($name:literal, $env:literal, $summary:literal) => {
        Builtin {
            name: $name,
            summary: $summary,
            manifest: include_str!(concat!("../../plugins/", $name, "/plugin.toml")),
            wasm: include_bytes!(env!($env)),
        }
    };
}

/// Every shipped scheduler plugin; the first is the default.
pub const SCHEDULERS: &[Builtin] = &[
    builtin!(
        "binpack",
        "GANTRY_WASM_BINPACK",
        "least-fragmentation bin packing (best fit by node)"
    ),
    builtin!(
        "spread",
        "GANTRY_WASM_SPREAD",
        "spread load across nodes and racks (worst fit)"
    ),
    builtin!(
        "topology",
        "GANTRY_WASM_TOPOLOGY",
        "topology-aware gang placement (NVLink domain, node, rack)"
    ),
    builtin!(
        "fairshare",
        "GANTRY_WASM_FAIRSHARE",
        "dominant-resource fair share across tenants with backfill"
    ),
];

/// Every shipped preprocessing plugin.
pub const PREPROCESSORS: &[Builtin] = &[
    builtin!(
        "standardize",
        "GANTRY_WASM_STANDARDIZE",
        "z-score standardisation of numeric CSV columns (two passes)"
    ),
    builtin!(
        "onehot",
        "GANTRY_WASM_ONEHOT",
        "one-hot encoding of categorical CSV columns, numbers passed through"
    ),
    builtin!(
        "tokenizer",
        "GANTRY_WASM_TOKENIZER",
        "texts to fixed-length byte-level token id sequences"
    ),
];

/// The shipped preprocessing plugin called `name`.
pub fn preprocessor(name: &str) -> Option<&'static Builtin> {
    PREPROCESSORS.iter().find(|b| b.name == name)
}

/// The shipped scheduler called `name`.
pub fn scheduler(name: &str) -> Option<&'static Builtin> {
    SCHEDULERS.iter().find(|b| b.name == name)
}

/// The shipped access-control policy (`policies/`): its Rego and its data.
pub const AUTHZ_POLICY: (&str, &str, &str) = (
    "authz.rego",
    include_str!("../../policies/authz.rego"),
    include_str!("../../policies/data.json"),
);
