//! Plugin signatures: a plugin from disk loads only when a trusted key signed its exact wasm and
//! manifest; `allow_unsigned` is the development escape hatch.

use std::path::Path;

use gantry::plugin::{LoadError, signature};
use gantry::{Host, HostConfig, PluginSource, PluginTrust};

use crate::support::{gantry, hostile, text};

fn host(trust: PluginTrust) -> Host {
    let mut config = HostConfig::new(gantry::cluster::Cluster::uniform(1, 1, 8, 1));
    config.cache_dir = None;
    config.trust = trust;
    Host::new(config).unwrap()
}

fn trusting(key: &str) -> PluginTrust {
    PluginTrust {
        trusted_keys: vec![key.to_string()],
        allow_unsigned: false,
    }
}

fn sign(manifest: &Path, key: &ring::signature::Ed25519KeyPair) {
    let text = std::fs::read(manifest).unwrap();
    let wasm = std::fs::read(manifest.with_file_name("hostile-ok.wasm")).unwrap();
    let sig = signature::sign(key, &wasm, &text);
    std::fs::write(
        signature::path_for(manifest),
        serde_json::to_vec(&sig).unwrap(),
    )
    .unwrap();
}

fn refusal(host: &mut Host, manifest: &Path) -> String {
    match host.load_scheduler(&PluginSource::Path(manifest.to_path_buf())) {
        Err(e @ LoadError::Signature { .. }) => e.to_string(),
        Err(other) => panic!("expected a signature refusal, got {other}"),
        Ok(_) => panic!("an untrusted plugin loaded"),
    }
}

#[test]
fn only_plugins_signed_by_a_trusted_key_load() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = hostile(dir.path(), "ok", "");
    let key = gantry::keys::generate(&dir.path().join("team.pk8")).unwrap();
    let public = gantry::keys::public_hex(&key);

    // Unsigned: refused, saying how to fix it.
    let mut h = host(trusting(&public));
    assert!(refusal(&mut h, &manifest).contains("no plugin.sig"));

    // Signed by the trusted key: loads.
    sign(&manifest, &key);
    h.load_scheduler(&PluginSource::Path(manifest.clone()))
        .unwrap();

    // Signed, but by a key the host does not trust.
    let stranger = gantry::keys::generate(&dir.path().join("other.pk8")).unwrap();
    let mut h2 = host(trusting(&gantry::keys::public_hex(&stranger)));
    assert!(refusal(&mut h2, &manifest).contains("not trusted"));

    // The manifest edited after signing (a raised memory limit, say).
    let original = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("{original}\n# edited\n")).unwrap();
    assert!(refusal(&mut h, &manifest).contains("the manifest changed after signing"));
    std::fs::write(&manifest, &original).unwrap();

    // The wasm swapped after signing.
    let wasm = manifest.with_file_name("hostile-ok.wasm");
    let mut bytes = std::fs::read(&wasm).unwrap();
    bytes.extend_from_slice(b"\0");
    std::fs::write(&wasm, &bytes).unwrap();
    assert!(refusal(&mut h, &manifest).contains("the wasm file changed after signing"));

    // A forged signature with the right hashes.
    bytes.pop();
    std::fs::write(&wasm, &bytes).unwrap();
    let mut sig: signature::PluginSignature =
        serde_json::from_slice(&std::fs::read(signature::path_for(&manifest)).unwrap()).unwrap();
    let flipped = if sig.signature.starts_with('0') {
        "1"
    } else {
        "0"
    };
    sig.signature.replace_range(..1, flipped);
    std::fs::write(
        signature::path_for(&manifest),
        serde_json::to_vec(&sig).unwrap(),
    )
    .unwrap();
    assert!(refusal(&mut h, &manifest).contains("does not verify"));

    // Development: unsigned plugins allowed.
    let mut dev = host(PluginTrust {
        trusted_keys: Vec::new(),
        allow_unsigned: true,
    });
    dev.load_scheduler(&PluginSource::Path(manifest.clone()))
        .unwrap();
}

#[test]
fn plugin_cli_signs_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = hostile(dir.path(), "ok", "");
    let key = dir.path().join("team.pk8");
    let out = gantry(
        &["plugin", "keygen", "-o", key.to_str().unwrap()],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out).1);
    let public = text(&out).0.trim().to_string();
    let plugin_dir = manifest.parent().unwrap().to_str().unwrap().to_string();

    let out = gantry(
        &["plugin", "verify", &plugin_dir, "--key", &public],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("no plugin.sig"), "{}", text(&out).1);

    let out = gantry(
        &[
            "plugin",
            "sign",
            &plugin_dir,
            "--key",
            key.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out).1);
    let out = gantry(
        &["plugin", "verify", &plugin_dir, "--key", &public],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("signed by trusted key"));

    // The refusal reaches the user as an error naming the plugin, exit 1; --allow-unsigned
    // loads it (with a warning).
    let args = |extra: &[&str]| {
        let mut a = vec![
            "schedule",
            "--jobs",
            "host/assets/example-jobs.toml",
            "--plugin",
            manifest.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        gantry(&a, dir.path())
    };
    let out = args(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("not trusted"), "{}", text(&out).1);
    let out = args(&["--trust", &public]);
    assert!(out.status.success(), "{}", text(&out).1);
    let out = args(&["--allow-unsigned"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(
        text(&out).1.contains("without a trusted signature"),
        "{}",
        text(&out).1
    );
}

/// Every public way a host loads a plugin from outside the binary checks its signature: a plugin
/// on disk or uploaded, unsigned or signed by a key the host does not trust, loads through none
/// of them (the loaders that take a component's bytes directly are private to the crate; the
/// doctests on `PluginTrust` show that they do not compile from outside). Signed by the trusted
/// key, the same plugins load: the refusals are the trust check's.
#[test]
fn no_public_host_method_loads_an_untrusted_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let on_disk = hostile(dir.path(), "ok", "");
    let team = gantry::keys::generate(&dir.path().join("team.pk8")).unwrap();
    let stranger = gantry::keys::generate(&dir.path().join("other.pk8")).unwrap();
    let upload = |b: &gantry::builtin::Builtin, by: Option<&ring::signature::Ed25519KeyPair>| {
        gantry::UploadedPlugin {
            name: format!("{}-upload", b.name),
            manifest: b.manifest.to_string(),
            wasm: b.wasm.to_vec(),
            signature: by.map(|k| signature::sign(k, b.wasm, b.manifest.as_bytes())),
        }
    };
    let binpack = gantry::builtin::scheduler("binpack").unwrap();
    let standardize = gantry::builtin::preprocessor("standardize").unwrap();
    let uploaded = |up| PluginSource::Uploaded(Box::new(up));
    let schedulers = [
        PluginSource::Path(on_disk.clone()),
        uploaded(upload(binpack, None)),
        uploaded(upload(binpack, Some(&stranger))),
    ];
    let preprocessors = [
        upload(standardize, None),
        upload(standardize, Some(&stranger)),
    ];
    let refused = |what: &str, result: Result<(), LoadError>| match result {
        Err(LoadError::Signature { .. }) => {}
        Err(other) => panic!("{what}: expected a signature refusal, got {other}"),
        Ok(()) => panic!("{what}: an untrusted plugin loaded"),
    };
    let admin = gantry::policy::Subject::new("root", ["admin"]);
    let mut h = host(trusting(&gantry::keys::public_hex(&team)));
    let kinds = [
        "unsigned, on disk",
        "unsigned, uploaded",
        "uploaded, a stranger's",
    ];
    for (source, what) in schedulers.iter().zip(kinds) {
        refused(what, h.load_scheduler_plugin(source).map(drop));
        refused(what, h.loader().load_scheduler_plugin(source).map(drop));
        refused(what, h.load_scheduler(source).map(drop));
        match gantry::blocking::block_on(h.load_scheduler_as(&admin, source)) {
            Err(gantry::HostError::Load(e)) => refused(what, Err(e)),
            other => panic!("{what}: load_scheduler_as gave {:?}", other.map(drop)),
        }
    }
    assert!(h.scheduler().is_none(), "a refused plugin became active");
    for up in &preprocessors {
        refused(
            &up.name,
            h.load_preprocess_plugin(&up.name, Some(up)).map(drop),
        );
        refused(
            &up.name,
            h.loader()
                .load_preprocess_plugin(&up.name, Some(up))
                .map(drop),
        );
    }

    sign(&on_disk, &team);
    for source in [
        PluginSource::Path(on_disk),
        uploaded(upload(binpack, Some(&team))),
    ] {
        h.load_scheduler_plugin(&source).unwrap();
        gantry::blocking::block_on(h.load_scheduler_as(&admin, &source)).unwrap();
    }
    let signed = upload(standardize, Some(&team));
    h.load_preprocess_plugin(&signed.name, Some(&signed))
        .unwrap();
}
