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

/// Every shipped scheduler plugin; the first is the default.
pub const SCHEDULERS: &[Builtin] = &[
    Builtin {
        name: "binpack",
        summary: "least-fragmentation bin packing (best fit by node)",
        manifest: include_str!("../../plugins/binpack/plugin.toml"),
        wasm: include_bytes!(env!("GANTRY_WASM_BINPACK")),
    },
    Builtin {
        name: "spread",
        summary: "spread load across nodes and racks (worst fit)",
        manifest: include_str!("../../plugins/spread/plugin.toml"),
        wasm: include_bytes!(env!("GANTRY_WASM_SPREAD")),
    },
    Builtin {
        name: "topology",
        summary: "topology-aware gang placement (NVLink domain, node, rack)",
        manifest: include_str!("../../plugins/topology/plugin.toml"),
        wasm: include_bytes!(env!("GANTRY_WASM_TOPOLOGY")),
    },
    Builtin {
        name: "fairshare",
        summary: "dominant-resource fair share across tenants with backfill",
        manifest: include_str!("../../plugins/fairshare/plugin.toml"),
        wasm: include_bytes!(env!("GANTRY_WASM_FAIRSHARE")),
    },
];

/// Every shipped preprocessing plugin.
pub const PREPROCESSORS: &[Builtin] = &[
    Builtin {
        name: "standardize",
        summary: "z-score standardisation of numeric CSV columns (two passes)",
        manifest: include_str!("../../plugins/standardize/plugin.toml"),
        wasm: include_bytes!(env!("GANTRY_WASM_STANDARDIZE")),
    },
    Builtin {
        name: "onehot",
        summary: "one-hot encoding of categorical CSV columns, numbers passed through",
        manifest: include_str!("../../plugins/onehot/plugin.toml"),
        wasm: include_bytes!(env!("GANTRY_WASM_ONEHOT")),
    },
    Builtin {
        name: "tokenizer",
        summary: "texts to fixed-length byte-level token id sequences",
        manifest: include_str!("../../plugins/tokenizer/plugin.toml"),
        wasm: include_bytes!(env!("GANTRY_WASM_TOKENIZER")),
    },
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
