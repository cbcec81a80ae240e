//! Hostile JSON bodies against a real `gantry up` on loopback (issue 10, hostile input): valid
//! bodies of every JSON endpoint and structured mutations of them (the generators of the
//! parsers' property tests) are POSTed and PUT as an admin and as a researcher. Every answer is
//! a success or a 4xx with a JSON error; never a 5xx, never a dropped connection; the daemon is
//! alive and serving after, and counted no server error.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{Value, json};

use crate::daemon::{Daemon, request, train_toml};
use crate::support::{add_user, init_data_dir, plugin_key, shared_cache, sign_plugin};

// The generators the parsers' property tests use (valid documents and their mutations).
use gantry_fuzz as fuzz;

/// One JSON endpoint and valid bodies for it, pretty-printed (one field a line, so that line
/// mutations drop, repeat and insert fields).
struct Target {
    method: &'static str,
    path: String,
    valid: Vec<String>,
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap()
}

/// Sends `body` raw (it may not be UTF-8); an error when the connection failed or dropped.
fn send(url: &str, method: &str, token: &str, body: &[u8]) -> Result<(u16, String), ureq::Error> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .new_agent();
    let auth = format!("Bearer {token}");
    let response = match method {
        "PUT" => agent
            .put(url)
            .header("content-type", "application/json")
            .header("Authorization", &auth)
            .send(body),
        _ => agent
            .post(url)
            .header("content-type", "application/json")
            .header("Authorization", &auth)
            .send(body),
    }?;
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string()?;
    Ok((status, text))
}

/// `bytes` with every `from` replaced by `to`.
fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// The daemon's count of 5xx answers, from `/metrics`.
fn server_errors(url: &str) -> u64 {
    let (_, v) = request(&format!("{url}/metrics"), "GET", None, None);
    let text = v.as_str().unwrap_or_default().to_string();
    text.lines()
        .find(|l| l.contains("class=\"5xx\""))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 5xx count in /metrics: {text}"))
}

/// The plugin upload's body: the shipped standardize component under another name, signed by
/// a key the daemon trusts (so a body left valid is compiled and stored).
fn signed_upload(dir: &std::path::Path, cache: &std::path::Path) -> (String, String) {
    let (key, public) = plugin_key(dir, cache);
    let plugin = dir.join("zfz");
    std::fs::create_dir(&plugin).unwrap();
    let wasm = gantry::builtin::preprocessor("standardize").unwrap().wasm;
    std::fs::write(plugin.join("zfz.wasm"), wasm).unwrap();
    let manifest = "name = \"zfz\"\nversion = \"0.1.0\"\nkind = \"preprocess\"\n\
                    world = \"gantry:preprocess/preprocess@0.1.0\"\n";
    std::fs::write(plugin.join("plugin.toml"), manifest).unwrap();
    sign_plugin(&plugin.join("plugin.toml"), &key, cache);
    let signature: Value =
        serde_json::from_slice(&std::fs::read(plugin.join("plugin.sig")).unwrap()).unwrap();
    let body = json!({
        "manifest": manifest,
        "wasm": data_encoding::BASE64.encode(wasm),
        "signature": signature,
    });
    (pretty(&body), public)
}

#[test]
fn mutated_json_bodies_get_a_json_4xx_or_success_and_the_daemon_lives() {
    let dir = tempfile::tempdir().unwrap();
    let cache = shared_cache();
    let data = init_data_dir(dir.path());
    let root = add_user(&data, "root", "admin", "vision", "secret");
    let ada = add_user(&data, "ada", "researcher,writer", "vision", "internal");
    let (upload, public) = signed_upload(dir.path(), &cache);
    let mut daemon = Daemon::start_with(&data, &cache, &["--trust", &public]);
    let url = daemon.url.clone();
    let (s, gpus) = request(&format!("{url}/v1/gpus"), "GET", Some(&root), None);
    assert_eq!(s, 200, "{gpus}");
    let gpu = gpus["gpus"][0]["id"].as_str().unwrap().to_string();

    let jobs = Target {
        method: "POST",
        path: "/v1/jobs".into(),
        valid: vec![
            pretty(&json!({"id": "fz-ID", "tenant": "vision", "gpus": 1,
                           "memory_per_gpu_mib": 16000, "est_runtime_s": 60.0})),
            pretty(&json!({"id": "fzt-ID", "tenant": "vision", "gpus": 1, "train": train_toml(1)})),
        ],
    };
    let targets = [
        jobs,
        Target {
            method: "POST",
            path: "/v1/gpus/unhealthy".into(),
            valid: vec![pretty(&json!({ "gpu": gpu }))],
        },
        Target {
            method: "POST",
            path: "/v1/gpus/healthy".into(),
            valid: vec![pretty(&json!({ "gpu": gpu }))],
        },
        Target {
            method: "POST",
            path: "/v1/plugins/scheduler".into(),
            valid: vec![
                pretty(&json!({"name": "binpack"})),
                pretty(&json!({"name": "spread"})),
            ],
        },
        Target {
            method: "PUT",
            path: "/v1/plugins/zfz".into(),
            valid: vec![upload],
        },
    ];
    let cases = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                Just(i),
                fuzz::mutated(t.valid.clone(), fuzz::Syntax::Json),
                any::<bool>(),
            )
        })
        .map(Strategy::boxed)
        .collect::<Vec<_>>();
    let strategy = proptest::strategy::Union::new(cases);

    let config = fuzz::config(300);
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    // Answers by target and status, so that the run is seen to reach past the parsers.
    let tally = std::sync::Mutex::new(std::collections::BTreeMap::<(usize, u16), u32>::new());
    let sent = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&strategy, |(t, body, as_admin)| {
        // A job id of its own, so that a valid submission is stored rather than a duplicate.
        let n = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = replace(&body, b"-ID\"", format!("-{n}\"").as_bytes());
        let target = &targets[t];
        // A researcher's upload is refused before its body is read (so no parser sees it; the
        // daemon's lingering close lets the client still sending read the 403).
        let token = if as_admin { &root } else { &ada };
        let shown = String::from_utf8_lossy(&body[..body.len().min(400)]).into_owned();
        let (status, answer) = send(
            &format!("{url}{}", target.path),
            target.method,
            token,
            &body,
        )
        .map_err(|e| {
            TestCaseError::fail(format!(
                "{} {}: no answer ({e}) to {shown:?}",
                target.method, target.path
            ))
        })?;
        *tally.lock().unwrap().entry((t, status)).or_default() += 1;
        let what = format!(
            "{} {} -> {status} {answer:.400} for {shown:?}",
            target.method, target.path
        );
        prop_assert!(status < 500, "a server error: {what}");
        let answer: Value = serde_json::from_str(&answer)
            .map_err(|_| TestCaseError::fail(format!("not JSON: {what}")))?;
        if (400..500).contains(&status) {
            prop_assert!(
                answer["error"].as_str().is_some_and(|e| !e.is_empty()),
                "a refusal without an error message: {what}"
            );
        } else {
            prop_assert!(
                (200..300).contains(&status),
                "neither a success nor a 4xx: {what}"
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let tally = tally.into_inner().unwrap();
    eprintln!("answers by (target, status): {tally:?}");
    if cases >= 100 {
        for (t, target) in targets.iter().enumerate() {
            let answered = |ok: bool| {
                tally
                    .iter()
                    .any(|(&(i, s), _)| i == t && (200..300).contains(&s) == ok)
            };
            assert!(
                answered(true) && answered(false),
                "{} {} was never both accepted and refused: {tally:?}",
                target.method,
                target.path
            );
        }
    }

    // Alive, serving, and no server error counted.
    assert_eq!(
        request(&format!("{url}/v1/health"), "GET", None, None).0,
        200
    );
    let (s, listed) = request(&format!("{url}/v1/jobs"), "GET", Some(&root), None);
    assert_eq!(s, 200, "{listed}");
    assert_eq!(server_errors(&url), 0);
    // What the refusals and successes wrote to the audit log still verifies.
    let (s, verified) = request(&format!("{url}/v1/audit/verify"), "GET", Some(&root), None);
    assert_eq!(s, 200, "{verified}");
    // Nothing accepted breaks the data directory for later: a review's job of 2^64-1 MiB a GPU
    // was stored wrapped, and `gantry db check` and the next start failed on it.
    let huge = json!({"id": "huge", "tenant": "vision", "gpus": 1, "memory_per_gpu_mib": u64::MAX});
    let (s, v) = request(
        &format!("{url}/v1/jobs"),
        "POST",
        Some(&ada),
        Some(&huge.to_string()),
    );
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("memory_per_gpu_mib"),
        "{v}"
    );
    daemon.signal("-TERM");
    let out = crate::support::gantry(
        &["db", "check", "--data-dir", data.to_str().unwrap()],
        &cache,
    );
    assert!(out.status.success(), "{}", crate::support::text(&out).1);
    let daemon = Daemon::start_with(&data, &cache, &["--trust", &public]);
    let (s, listed) = request(&format!("{}/v1/jobs", daemon.url), "GET", Some(&root), None);
    assert_eq!(s, 200, "{listed}");
}
