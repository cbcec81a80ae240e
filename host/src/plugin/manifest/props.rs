//! Property tests: every manifest text, valid or mutated, parses or is refused naming the file;
//! what is accepted keeps every limit in its bounds and the component inside its directory.

use std::path::Path;

use proptest::prelude::*;

use super::*;
use gantry_fuzz::{self as fuzz, Syntax};

/// A valid manifest from its parts.
fn manifest_text(name: &str, kind: PluginKind, limits: &Limits, wasm: Option<&str>) -> String {
    let kind_name = match kind {
        PluginKind::Scheduler => "scheduler",
        PluginKind::Preprocess => "preprocess",
    };
    let wasm = wasm
        .map(|w| format!("wasm = \"{w}\"\n"))
        .unwrap_or_default();
    format!(
        "name = \"{name}\"\nversion = \"0.1.0\"\nkind = \"{kind_name}\"\nworld = \"{}\"\n{wasm}\
         [limits]\nmemory_mib = {}\ndeadline_ms = {}\ntable_elements = {}\ninstances = {}\n\
         memories = {}\ntables = {}\nwarm_pool = {}\n[config]\nmode = \"fast\"\ndepth = 3\n\
         nested = {{ a = [1, 2], b = \"x\" }}\n",
        kind.world(),
        limits.memory_mib,
        limits.deadline_ms,
        limits.table_elements,
        limits.instances,
        limits.memories,
        limits.tables,
        limits.warm_pool,
    )
}

fn valid_limits() -> impl Strategy<Value = Limits> {
    (
        1..=MAX_PLUGIN_MEMORY_MIB,
        1u64..=600_000,
        1..=MAX_PLUGIN_TABLE_ELEMENTS,
        1..=MAX_PLUGIN_INSTANCES,
        1..=MAX_PLUGIN_MEMORIES,
        1..=MAX_PLUGIN_TABLES,
        0u32..=64,
    )
        .prop_map(
            |(memory_mib, deadline_ms, table_elements, instances, memories, tables, warm_pool)| {
                Limits {
                    memory_mib,
                    deadline_ms,
                    table_elements,
                    instances,
                    memories,
                    tables,
                    warm_pool,
                }
            },
        )
}

fn kind() -> impl Strategy<Value = PluginKind> {
    prop_oneof![Just(PluginKind::Scheduler), Just(PluginKind::Preprocess)]
}

/// Valid manifests to mutate: the shipped ones and a few written here.
fn seeds() -> Vec<String> {
    let mut seeds: Vec<String> = crate::builtin::SCHEDULERS
        .iter()
        .chain(crate::builtin::PREPROCESSORS)
        .map(|b| b.manifest.to_string())
        .collect();
    let limits = Limits::default();
    seeds.push(manifest_text(
        "first-fit",
        PluginKind::Scheduler,
        &limits,
        Some("ff.wasm"),
    ));
    seeds.push(manifest_text(
        "zscore",
        PluginKind::Preprocess,
        &limits,
        None,
    ));
    seeds
}

/// What every accepted manifest promises.
fn check_accepted(m: &Manifest) {
    let l = &m.limits;
    assert!((1..=MAX_PLUGIN_MEMORY_MIB).contains(&l.memory_mib), "{l:?}");
    assert!((1..=600_000).contains(&l.deadline_ms), "{l:?}");
    assert!(
        (1..=MAX_PLUGIN_TABLE_ELEMENTS).contains(&l.table_elements),
        "{l:?}"
    );
    assert!((1..=MAX_PLUGIN_INSTANCES).contains(&l.instances), "{l:?}");
    assert!((1..=MAX_PLUGIN_MEMORIES).contains(&l.memories), "{l:?}");
    assert!((1..=MAX_PLUGIN_TABLES).contains(&l.tables), "{l:?}");
    assert!(l.warm_pool <= 64, "{l:?}");
    assert!(!m.name.is_empty(), "{m:?}");
    assert!(
        m.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{m:?}"
    );
    assert_eq!(m.world, m.kind.world());
    let wasm = m.wasm_relative();
    assert!(
        wasm.components()
            .all(|c| matches!(c, std::path::Component::Normal(_))),
        "{wasm:?}"
    );
    assert!(m.wasm_path(Path::new("/p/plugin.toml")).starts_with("/p"));
    // The entries handed to `configure` are built for every accepted manifest.
    assert_eq!(m.config_entries().len(), m.config.len());
}

proptest! {
    #![proptest_config(fuzz::config(256))]

    #[test]
    fn valid_manifests_parse_as_written(
        name in "[A-Za-z0-9_-]{1,40}",
        kind in kind(),
        limits in valid_limits(),
        wasm in proptest::option::of("[a-z]{1,8}(/[a-z]{1,8}){0,2}\\.wasm"),
    ) {
        let text = manifest_text(&name, kind, &limits, wasm.as_deref());
        let m = Manifest::parse(&text, Path::new("plugin.toml")).unwrap();
        check_accepted(&m);
        prop_assert_eq!(&m.name, &name);
        prop_assert_eq!(m.kind, kind);
        prop_assert_eq!(&m.limits, &limits);
    }

    #[test]
    fn mutated_manifests_are_refused_naming_the_file_or_accepted_within_bounds(
        text in fuzz::mutated_text(seeds(), Syntax::Toml),
    ) {
        match Manifest::parse(&text, Path::new("dir/plugin.toml")) {
            Ok(m) => check_accepted(&m),
            Err(e) => {
                let e = e.to_string();
                prop_assert!(e.contains("dir/plugin.toml"), "{}", e);
            }
        }
    }
}
