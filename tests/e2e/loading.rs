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

/// Runs `f` on a thread and waits at most a minute: a load that hangs fails the test instead of
/// hanging it.
fn within_a_minute<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("loading the plugin hung")
}

/// Loads the plugin in `dir` with a host that trusts `key` (signatures required).
fn load_signed(dir: std::path::PathBuf, key: String) -> Result<String, String> {
    within_a_minute(move || {
        let mut config = HostConfig::new(Cluster::uniform(1, 1, 8, 1));
        config.cache_dir = None;
        config.trust.trusted_keys = vec![key];
        Host::new(config)
            .unwrap()
            .load_scheduler(&PluginSource::Path(dir))
            .map(|p| p.name().to_string())
            .map_err(|e| e.to_string())
    })
}

#[test]
fn plugin_files_must_be_regular_files_inside_the_plugin_directory() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let key = gantry::keys::generate(&dir.path().join("k.pk8")).unwrap();
    let public = gantry::keys::public_hex(&key);
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET-BYTES").unwrap();
    let fifo = |path: &std::path::Path| {
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    };
    // A plugin directory `name` whose manifest says `wasm = "{wasm}"`; `setup` then plants
    // whatever the case needs.
    let case = |name: &str, wasm: &str, setup: &dyn Fn(&std::path::Path)| {
        let p = dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(
            p.join("plugin.toml"),
            format!(
                "name = \"p\"\nversion = \"0.1.0\"\nkind = \"scheduler\"\n\
                 world = \"gantry:scheduler/scheduler@0.1.0\"\nwasm = \"{wasm}\"\n"
            ),
        )
        .unwrap();
        setup(&p);
        let err = load_signed(p, public.clone()).unwrap_err();
        assert!(!err.contains("TOP-SECRET"), "{name}: {err}");
        err
    };

    // A FIFO would block an open for reading forever.
    let err = case("fifo", "p.wasm", &|p| fifo(&p.join("p.wasm")));
    assert!(err.contains("not a regular file (a FIFO)"), "{err}");
    let err = case("fifo-sig", "p.wasm", &|p| {
        std::fs::copy(HOSTILE_WASM, p.join("p.wasm")).unwrap();
        fifo(&p.join("plugin.sig"));
    });
    assert!(err.contains("plugin.sig") && err.contains("FIFO"), "{err}");
    let err = case("fifo-manifest", "p.wasm", &|p| {
        std::fs::remove_file(p.join("plugin.toml")).unwrap();
        fifo(&p.join("plugin.toml"));
    });
    assert!(err.contains("plugin.toml") && err.contains("FIFO"), "{err}");
    // Paths that leave the directory, by name or by link.
    let err = case("absolute", "/dev/zero", &|_| {});
    assert!(
        err.contains("field `wasm`") && err.contains("relative path"),
        "{err}"
    );
    let err = case("dotdot", "../secret.txt", &|_| {});
    assert!(err.contains("field `wasm`"), "{err}");
    let err = case("link-out", "p.wasm", &|p| {
        symlink(&secret, p.join("p.wasm")).unwrap()
    });
    assert!(err.contains("symbolic link"), "{err}");
    let err = case("link-zero", "p.wasm", &|p| {
        symlink("/dev/zero", p.join("p.wasm")).unwrap()
    });
    assert!(err.contains("symbolic link"), "{err}");
    let err = case("link-dir", "sub/p.wasm", &|p| {
        symlink(dir.path(), p.join("sub")).unwrap()
    });
    assert!(err.contains("symbolic link"), "{err}");
    // Too large: refused from its size, nothing read (a sparse file, so the test writes nothing).
    let err = case("large", "p.wasm", &|p| {
        let f = std::fs::File::create(p.join("p.wasm")).unwrap();
        f.set_len(gantry::plugin::files::MAX_COMPONENT_BYTES + 1)
            .unwrap();
    });
    assert!(err.contains("larger than the"), "{err}");
    // A subdirectory inside the plugin's directory is fine (and the signature still matters).
    let err = case("inside", "sub/p.wasm", &|p| {
        std::fs::create_dir(p.join("sub")).unwrap();
        std::fs::copy(HOSTILE_WASM, p.join("sub/p.wasm")).unwrap();
    });
    assert!(err.contains("no plugin.sig"), "{err}");
}

#[test]
fn compilation_is_bounded_by_size_and_time() {
    use gantry::plugin::compile::CompileLimits;
    let dir = tempfile::tempdir().unwrap();
    // About 450 KB of code in 300 functions beside the fixture.
    let wasm = crate::support::wrapped_hostile(
        dir.path(),
        crate::synthetic::Extra {
            functions: 300,
            instructions_each: 400,
            ..Default::default()
        },
    );
    let manifest = crate::support::hostile_from(dir.path(), &wasm, "ok", "");
    let load = |compile: CompileLimits| {
        let mut config = HostConfig::new(Cluster::uniform(1, 1, 8, 1));
        config.cache_dir = None;
        config.trust.allow_unsigned = true;
        config.compile = compile;
        let manifest = manifest.clone();
        within_a_minute(move || {
            let start = std::time::Instant::now();
            let result = Host::new(config)
                .unwrap()
                .load_scheduler(&PluginSource::Path(manifest))
                .map(|p| p.name().to_string())
                .map_err(|e| e.to_string());
            (result, start.elapsed())
        })
    };
    let (err, _) = load(CompileLimits {
        max_code_bytes: 256 << 10,
        ..CompileLimits::default()
    });
    let err = err.unwrap_err();
    assert!(
        err.contains("refused before compiling: code bytes") && err.contains("over the limit"),
        "{err}"
    );
    let (err, waited) = load(CompileLimits {
        timeout: std::time::Duration::from_millis(50),
        ..CompileLimits::default()
    });
    let err = err.unwrap_err();
    assert!(err.contains("compiling took longer than 0.05 s"), "{err}");
    assert!(waited < std::time::Duration::from_secs(10), "{waited:?}");
}
