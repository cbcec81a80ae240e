//! Loading plugins: bad components and manifests are refused with errors naming the file and
//! field; compiled artifacts are cached on disk.

use gantry::cluster::Cluster;
use gantry::plugin::{CacheOutcome, LoadError};
use gantry::{Host, HostConfig, PluginSource};

use crate::support::{HOSTILE_WASM, WRONG_WORLD_WASM, host, plugin_dir};

fn load(manifest: std::path::PathBuf) -> Result<String, LoadError> {
    host()
        .load_scheduler(&PluginSource::Path(manifest))
        .map(|p| p.name().to_string())
}

#[test]
fn a_component_of_another_world_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = load(plugin_dir(dir.path(), "identity", WRONG_WORLD_WASM, "")).unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(
            "plugin `identity` does not implement world `gantry:scheduler/scheduler@0.1.0`"
        ),
        "{text}"
    );
}

#[test]
fn malformed_wasm_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.bin");
    std::fs::write(&garbage, b"\0asm\x0d\0\x01\0 this is not a component").unwrap();
    let manifest = plugin_dir(
        &dir.path().join("p"),
        "garbage",
        garbage.to_str().unwrap(),
        "",
    );
    let err = load(manifest).unwrap_err();
    assert!(matches!(err, LoadError::Compile { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("garbage.wasm is not a valid wasm component"),
        "{text}"
    );
}

#[test]
fn manifest_errors_name_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[limits]\nmemory_mib = -3", "memory_mib"),
        ("[limits]\ndeadline_ms = 0", "limits.deadline_ms"),
        ("[limits]\nwarm_pool = 1000", "limits.warm_pool"),
        ("colour = \"blue\"", "colour"),
    ];
    for (i, (extra, field)) in cases.iter().enumerate() {
        let manifest = plugin_dir(&dir.path().join(i.to_string()), "p", HOSTILE_WASM, extra);
        let text = load(manifest.clone()).unwrap_err().to_string();
        assert!(text.contains(&manifest.display().to_string()), "{text}");
        assert!(text.contains(field), "{field}: {text}");
    }
    let text = load(dir.path().join("missing/plugin.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("cannot read") && text.contains("missing/plugin.toml"),
        "{text}"
    );
}

#[test]
fn a_failed_load_keeps_the_previous_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = host();
    host.load_scheduler(&PluginSource::Builtin("binpack".into()))
        .unwrap();
    let bad = plugin_dir(dir.path(), "identity", WRONG_WORLD_WASM, "");
    assert!(host.load_scheduler(&PluginSource::Path(bad)).is_err());
    assert_eq!(host.scheduler().unwrap().name(), "binpack");
}

#[test]
fn compiled_artifacts_are_cached_and_a_corrupt_entry_is_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let mut config = HostConfig::new(Cluster::uniform(1, 1, 8, 1));
    config.cache_dir = Some(cache.path().to_path_buf());
    let binpack = PluginSource::Builtin("binpack".into());
    let outcome = |config: &HostConfig| {
        let mut host = Host::new(config.clone()).unwrap();
        host.load_scheduler(&binpack).unwrap().cache_outcome()
    };
    assert_eq!(outcome(&config), CacheOutcome::Miss);
    assert_eq!(outcome(&config), CacheOutcome::Hit);
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let sha =
        gantry::plugin::cache::sha256_hex(gantry::builtin::scheduler("binpack").unwrap().wasm);
    assert!(
        entries[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(&sha)
    );
    std::fs::write(&entries[0], b"corrupted").unwrap();
    assert_eq!(
        outcome(&config),
        CacheOutcome::Miss,
        "unusable entry recompiled"
    );
    assert_eq!(outcome(&config), CacheOutcome::Hit, "and rewritten");
}
