//! Issue 12's promise, end to end: a policy that passes `gantry policy test` decides the same
//! through `gantry policy eval` and through the daemon.
//!
//! For the shipped policy (`policies/`) and every sample (`policies/samples/*`), through the real
//! `gantry` binary: `gantry policy test` passes, `gantry policy build` makes the bundle, and a few
//! hundred seeded inputs shaped like the policy's own (missing fields, unknown names and wrong
//! types among them) are decided by `gantry policy eval --inputs` and by the interpreter
//! `policy test` runs (`PolicySource::engine` and `eval_rule`), in both strict settings
//! (`--strict true`, the default, and `false`). Every input must get the same result set from
//! both, or an error from both, at the same place in the Rego.
//!
//! The daemon leg runs the shipped policy only: the daemon asks the questions of `gantry.authz`
//! (`{"subject", "action", "resource"}` of its own requests), so no API request reaches the
//! samples' rules (tenant quotas, container admission, dataset attributes read other inputs). What
//! the daemon adds to `policy eval` is how it builds, loads and records its decisions; that is
//! checked on the shipped policy by replaying every decision of its audit log.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gantry::policy::decide::{ResultSet, verdict};
use gantry::policy::source::PolicySource;
use gantry::scheduling::model::testing::Rng;
use serde_json::{Value, json};

use crate::daemon::{Daemon, request};
use crate::policy::native_result_set;
use crate::support::{
    add_user, build_policy, gantry, init_data_dir, repo, send_raw, shared_cache, text,
};

/// Inputs per policy: enough for every rule to decide both ways, and to fail.
const INPUTS: usize = 300;

/// A policy directory (from the repository root), the entrypoint its host asks, and a generator
/// of inputs shaped like the ones it reads.
struct Policy {
    dir: &'static str,
    entrypoint: &'static str,
    seed: u64,
    input: fn(&mut Rng) -> Value,
}

const SHIPPED: Policy = Policy {
    dir: "policies",
    entrypoint: "gantry/authz/decision",
    seed: 0xA17F_0001,
    input: shipped_input,
};

/// The samples of `policies/samples/`, each tested below.
const SAMPLES: [Policy; 3] = [
    Policy {
        dir: "policies/samples/quotas",
        entrypoint: "samples/quotas/decision",
        seed: 0xA17F_0002,
        input: quotas_input,
    },
    Policy {
        dir: "policies/samples/images",
        entrypoint: "samples/images/decision",
        seed: 0xA17F_0003,
        input: images_input,
    },
    Policy {
        dir: "policies/samples/datasets",
        entrypoint: "samples/datasets/decision",
        seed: 0xA17F_0004,
        input: datasets_input,
    },
];

#[test]
fn the_shipped_policy_decides_in_policy_eval_as_in_policy_test() {
    differential(&SHIPPED);
}

#[test]
fn the_quotas_sample_decides_in_policy_eval_as_in_policy_test() {
    differential(&SAMPLES[0]);
}

#[test]
fn the_images_sample_decides_in_policy_eval_as_in_policy_test() {
    differential(&SAMPLES[1]);
}

#[test]
fn the_datasets_sample_decides_in_policy_eval_as_in_policy_test() {
    differential(&SAMPLES[2]);
}

/// A sample added without a differential test, or not listed in `policies/README.md`, fails here.
#[test]
fn every_sample_is_tested_and_listed() {
    let mut found: Vec<String> = std::fs::read_dir(repo().join("policies/samples"))
        .unwrap()
        .map(|e| {
            format!(
                "policies/samples/{}",
                e.unwrap().file_name().to_string_lossy()
            )
        })
        .collect();
    found.sort();
    let mut tested: Vec<&str> = SAMPLES.iter().map(|p| p.dir).collect();
    tested.sort();
    assert_eq!(found, tested);
    let readme = std::fs::read_to_string(repo().join("policies/README.md")).unwrap();
    for dir in tested {
        let listed = format!("`{}/`", dir.trim_start_matches("policies/"));
        assert!(
            readme.contains(&listed),
            "policies/README.md lists no {listed}"
        );
    }
}

/// For each strict setting (`--strict true`, the default: a builtin error fails the decision;
/// `false`: it is undefined, as OPA's default), [`decide_alike`]; the inputs must reach allows,
/// denials and, in strict mode, errors, or the comparison proves little.
fn differential(policy: &Policy) {
    let mut rng = Rng(policy.seed);
    let inputs: Vec<Value> = (0..INPUTS).map(|_| (policy.input)(&mut rng)).collect();
    for strict in [true, false] {
        let (allowed, denied, errors) = decide_alike(policy, strict, &inputs);
        assert!(
            allowed >= 20 && denied >= 50 && (errors >= 3 || !strict),
            "{} (strict {strict}): allowed {allowed}, denied {denied}, errors {errors}",
            policy.dir
        );
    }
}

/// `policy test --strict` passes; then every input decides alike in `policy eval` (the bundle
/// built with the same `--strict`, in the sandbox) and natively: how many were allowed, denied
/// and failed.
fn decide_alike(policy: &Policy, strict: bool, inputs: &[Value]) -> (usize, usize, usize) {
    let work = tempfile::tempdir().unwrap();
    let cache = warm_cache();
    let dir = repo().join(policy.dir);
    let (d, s) = (dir.to_str().unwrap(), strict.to_string());
    let out = gantry(&["policy", "test", d, "--strict", &s], work.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");

    let bundle = work.path().join("bundle.tar.gz");
    let b = bundle.to_str().unwrap();
    let build = ["policy", "build", d, "-e", policy.entrypoint, "-o", b];
    let out = gantry(&[&build[..], &["--strict", &s]].concat(), &cache);
    assert!(out.status.success(), "{}", text(&out).1);
    let decided = eval_lines(&bundle, policy.entrypoint, inputs, work.path());
    // The same file names as the build's, so that errors name the same place.
    let source = PolicySource {
        strict,
        ..PolicySource::read(&dir).unwrap()
    };
    let mut native = source.engine(false).unwrap();
    let mut counts = (0, 0, 0);
    for (i, (input, got)) in inputs.iter().zip(&decided).enumerate() {
        let want = native_result_set(&mut native, policy.entrypoint, input);
        let at = format!("{} (strict {strict}): input {i}: {input}", policy.dir);
        match (&want, got) {
            (Ok(want), Ok(got)) => {
                assert_eq!(got, want, "{at}");
                match verdict(&Ok(ResultSet::from_text(got.to_string()).unwrap())).0 {
                    true => counts.0 += 1,
                    false => counts.1 += 1,
                }
            }
            (Err(want), Err(got)) => {
                let rendered = gantry_policy_engine::diagnostic::render(want);
                // FILE.rego:LINE:COL: what failed.
                let first = rendered.lines().next().unwrap_or_default();
                assert!(
                    first.contains(".rego:") && got.contains(first),
                    "{at}\nnative: {rendered}\npolicy eval: {got}"
                );
                counts.2 += 1;
            }
            _ => panic!("{at}\nnative: {want:?}\npolicy eval: {got:?}"),
        }
    }
    counts
}

/// The shared cache, holding the compiled engine module: the first test here to ask compiles it
/// (one `gantry policy build`) while the others wait, rather than each of the processes they
/// start in parallel compiling it (a minute each in a debug build) while the cache is cold.
/// Every bundle carries the same module, the daemon's too.
fn warm_cache() -> PathBuf {
    static WARM: OnceLock<()> = OnceLock::new();
    WARM.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("warm.tar.gz");
        build_policy(
            &repo().join(SHIPPED.dir),
            SHIPPED.entrypoint,
            &bundle,
            &shared_cache(),
        );
    });
    shared_cache()
}

/// `gantry policy eval --inputs` of `inputs` on `bundle` (files written in `dir`): each input's
/// result set, or the error that ended its run. A run stops at the first decision that fails,
/// naming its line, so the next run starts after that line; the compiled module is in the shared
/// cache, so a run after the first costs a process start and a load.
fn eval_lines(
    bundle: &Path,
    entrypoint: &str,
    inputs: &[Value],
    dir: &Path,
) -> Vec<Result<Value, String>> {
    let mut decided: Vec<Result<Value, String>> = Vec::new();
    while decided.len() < inputs.len() {
        let file = dir.join(format!("inputs-{}.jsonl", decided.len()));
        let lines: Vec<String> = inputs[decided.len()..]
            .iter()
            .map(Value::to_string)
            .collect();
        std::fs::write(&file, lines.join("\n") + "\n").unwrap();
        let args = [
            "policy",
            "eval",
            "--bundle",
            bundle.to_str().unwrap(),
            "-e",
            entrypoint,
            "--inputs",
            file.to_str().unwrap(),
        ];
        let out = gantry(&args, &shared_cache());
        let (stdout, stderr) = text(&out);
        let printed = stdout.lines().count();
        decided.extend(stdout.lines().map(|l| Ok(serde_json::from_str(l).unwrap())));
        if out.status.success() {
            assert_eq!(printed, lines.len(), "{stderr}");
            continue;
        }
        let failed = format!("--inputs {}:{}: ", file.display(), printed + 1);
        assert!(stderr.contains(&failed), "want `{failed}` in: {stderr}");
        decided.push(Err(stderr));
    }
    decided
}

/// Picks one element of the JSON array `values`.
fn pick(rng: &mut Rng, values: Value) -> Value {
    let Value::Array(mut values) = values else {
        panic!("pick from an array")
    };
    let i = rng.below(values.len() as u64) as usize;
    values.swap_remove(i)
}

/// Up to `most` elements drawn from the JSON array `values` (repeats possible).
fn some_of(rng: &mut Rng, values: Value, most: u64) -> Value {
    let n = rng.below(most + 1);
    Value::Array((0..n).map(|_| pick(rng, values.clone())).collect())
}

/// Removes the field at `path` from `input`, one time in `one_in`.
fn sometimes_drop(rng: &mut Rng, input: &mut Value, path: &[&str], one_in: u64) {
    if rng.below(one_in) != 0 {
        return;
    }
    let (last, parents) = path.split_last().unwrap();
    let mut at = &mut *input;
    for key in parents {
        at = &mut at[*key];
    }
    if let Some(object) = at.as_object_mut() {
        object.remove(*last);
    }
}

/// A request as the host sends it ([`crate::policy::request`]), now and then broken the ways a
/// hand-written client breaks one: a number as a string, a role list as a string, no resource.
fn shipped_input(rng: &mut Rng) -> Value {
    let mut input = crate::policy::request(rng);
    match rng.below(30) {
        0 => input["resource"]["gpus"] = json!("8"),
        // A used count given as a string on a submission that reaches the quota rule: `+` on a
        // string, a builtin error (the strict setting decides it). Roles given as a string
        // (below) erred too until `some r in` a string iterated nothing, as OPA's does.
        1 => {
            input["action"] = json!("job.submit");
            input["subject"]["tenants"] = json!(["vision"]);
            input["resource"]["tenant"] = json!("vision");
            input["resource"]["tenant_used_gpus"] = json!("100");
        }
        2 => input["subject"]["roles"] = json!("admin"),
        3 => input["action"] = json!(7),
        4 => input["resource"] = json!(null),
        5 => input["action"] = json!("job.submit"),
        _ => {}
    }
    input
}

/// An input of `samples.quotas`: tenants with and without their own limits, sizes around every
/// limit, priorities, usage near the quotas; fields dropped (their defaults apply) and, rarely,
/// numbers given as strings.
fn quotas_input(rng: &mut Rng) -> Value {
    let gpus = json!([1, 1, 4, 8, 8, 9, 16, 64, 65, 256, 300, 600, 0, -2, 2.5]);
    let mut input = json!({
        "user": {
            "name": pick(rng, json!(["ada", "lee", "ivy"])),
            "tenant": pick(rng, json!(["vision", "vision", "language", "robotics", "robotics", "ghost", 7])),
        },
        "job": {
            "gpus": pick(rng, gpus),
            "hours": pick(rng, json!([1, 1, 6, 12, 24, 25, 72, 168, 200])),
            "priority": pick(rng, json!(["normal", "normal", "low", "high", "urgent", "asap"])),
        },
        "usage": {
            "gpus": pick(rng, json!([0, 0, 10, 60, 100, 500, 511, 1000, 1024])),
            "gpu_hours": pick(rng, json!([0, 0, 900, 4900, 99000, 249000])),
        },
    });
    for path in [
        &["user", "tenant"][..],
        &["job", "gpus"],
        &["job", "hours"],
        &["job", "priority"],
        &["usage", "gpu_hours"],
        &["usage"],
    ] {
        sometimes_drop(rng, &mut input, path, 12);
    }
    // Rarely, a count given as a string: the policy fails on it (and so denies).
    if rng.below(40) == 0 {
        input["job"]["gpus"] = json!("8");
    }
    input
}

/// Images of `samples.images`'s inputs: trusted ones more often than each way of being refused.
const IMAGES: [&str; 12] = [
    "registry.internal/vision/trainer:1.4",
    "registry.internal/vision/trainer:1.4",
    "registry.internal/language/tokenize:0.9",
    "ghcr.io/gantry-ai/llm:2.0",
    "ghcr.io/gantry-ai/llm:2.0",
    "ghcr.io/gantry-ai/llm:2.0",
    "registry.internal/legacy/old:1",
    "ghcr.io/gantry-ai/eval-debug:3",
    "docker.io/someone/miner:1.0",
    "registry.internal/vision/trainer",
    "registry.internal/vision/trainer:latest",
    "",
];

/// Digests of `samples.images`'s inputs: the last is denied.
const DIGESTS: [&str; 4] = [
    "sha256:0000000000000000000000000000000000000000000000000000000000000001",
    "sha256:0000000000000000000000000000000000000000000000000000000000000001",
    "sha256:0000000000000000000000000000000000000000000000000000000000000002",
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
];

/// An input of `samples.images`: images from trusted and untrusted registries, denied patterns,
/// tags missing or `latest`, denied users, digests and capabilities, mounts in and out of the
/// allowed prefixes, egress ranges in and out (rarely not a CIDR at all), secrets in env.
fn images_input(rng: &mut Rng) -> Value {
    let mounts = json!([
        {"path": "/data/vision", "read_only": true},
        {"path": "/data/language", "read_only": true},
        {"path": "/scratch/ada", "read_only": false},
        {"path": "/scratch/ada"},
        {"path": "/models/llm", "read_only": true},
        {"path": "/models/llm"},
        {"path": "/etc", "read_only": true},
    ]);
    let env = json!([
        {"name": "EPOCHS", "value": "3"},
        {"name": "SEED", "value": "7"},
        {"name": "HF_TOKEN", "value": ""},
        {"name": "HF_TOKEN", "value": "hf_x"},
        {"name": "WANDB_API_KEY", "value": "k"},
    ]);
    let egress = json!([
        [],
        [],
        ["10.1.0.0/16"],
        ["10.0.0.0/8", "192.168.1.0/24"],
        ["0.0.0.0/0"],
        ["8.8.8.8/32"],
        ["192.168.0.0/16", "10.2.3.4/32"],
        ["10.0.0.0/8"],
        ["10.1.0.0/16"],
    ]);
    let mut input = json!({
        "user": pick(rng, json!(["ada", "ada", "lee", "lee", "mallory", "build-bot-legacy"])),
        "image": pick(rng, json!(IMAGES)),
        "digest": pick(rng, json!(DIGESTS)),
        "mounts": some_of(rng, mounts, 2),
        "env": some_of(rng, env, 2),
        "egress": pick(rng, egress),
        "capabilities": some_of(rng, json!(["CHOWN", "NET_BIND_SERVICE", "SYS_ADMIN", "NET_ADMIN"]), 1),
    });
    for field in ["image", "mounts", "env", "egress", "capabilities", "digest"] {
        sometimes_drop(rng, &mut input, &[field], 15);
    }
    // Rarely, a range that is not a CIDR: the policy fails on it (and so denies).
    if rng.below(40) == 0 {
        input["egress"] = json!(["10.0.0.0/8", "not-a-range"]);
    }
    sometimes_malformed(rng, &mut input);
    input
}

/// Rarely, a list of a `samples.images` input that is not one, or an entry its rules cannot read.
fn sometimes_malformed(rng: &mut Rng, input: &mut Value) {
    // [field, value]
    let malformed = pick(
        rng,
        json!([
            ["mounts", ["/etc"]],
            ["mounts", {"path": "/etc"}],
            ["env", ["HF_TOKEN=x"]],
            ["egress", "0.0.0.0/0"],
            ["capabilities", "SYS_ADMIN"],
        ]),
    );
    if rng.below(15) == 0 {
        input[malformed[0].as_str().unwrap()] = malformed[1].clone();
    }
}

/// An input of `samples.datasets`: subjects of every group (and none), datasets owned, shared
/// and public, labels granted or not, purposes and regions matching or not, every operation.
fn datasets_input(rng: &mut Rng) -> Value {
    let groups = json!([
        "vision-team",
        "language-team",
        "health-research",
        "contractors",
        "nobody"
    ]);
    let labels = json!([
        "internal", "internal", "images", "text", "pii", "medical", "public", "public"
    ]);
    let mut input = json!({
        "subject": {
            "user": pick(rng, json!(["ada", "lee", "doc", "ivy"])),
            "groups": some_of(rng, groups.clone(), 2),
            "purpose": pick(rng, json!(["training", "training", "evaluation", "research", "marketing"])),
            "region": pick(rng, json!(["eu", "eu", "us"])),
        },
        "dataset": {
            "name": pick(rng, json!(["chats", "scans", "photos", "mnist"])),
            "owner_group": pick(rng, groups.clone()),
            "shared_with": some_of(rng, groups, 2),
            "labels": some_of(rng, labels, 3),
            "region": pick(rng, json!(["eu", "eu", "us"])),
        },
        "operation": pick(rng, json!(["read", "read", "read", "write", "share", "delete"])),
    });
    for path in [
        &["subject", "user"][..],
        &["subject", "purpose"],
        &["subject", "region"],
        &["dataset", "region"],
    ] {
        sometimes_drop(rng, &mut input, path, 10);
    }
    // Rarely, a subject that is not an object: the policy fails on it (and so denies).
    if rng.below(12) == 0 {
        input["subject"] = json!("ada");
    }
    input
}

/// The daemon leg: `gantry up` with the shipped policy on loopback; users of every role ask for
/// what it allows and denies through the API; then every decision its audit log recorded is
/// replayed through `gantry policy eval --inputs` on the policy built from `policies/` (the
/// daemon's built-in copy is the same files): each must allow or deny the same, with the same
/// reasons.
#[test]
fn every_decision_the_daemon_recorded_replays_the_same_through_policy_eval() {
    let dir = tempfile::tempdir().unwrap();
    warm_cache();
    let data = run_a_daemon(dir.path());
    let records = recorded_decisions(&data, dir.path());
    let inputs: Vec<Value> = records
        .iter()
        .map(|r| json!({"subject": r["subject"], "action": r["action"], "resource": r["resource"]}))
        .collect();
    let bundle = dir.path().join("authz.tar.gz");
    build_policy(
        &repo().join(SHIPPED.dir),
        SHIPPED.entrypoint,
        &bundle,
        &shared_cache(),
    );
    let replayed = eval_lines(&bundle, SHIPPED.entrypoint, &inputs, dir.path());
    for ((record, input), replay) in records.iter().zip(&inputs).zip(&replayed) {
        assert_eq!(record["entrypoint"], SHIPPED.entrypoint, "{record}");
        assert_eq!(
            record["revision"], records[0]["revision"],
            "one policy decided"
        );
        let replay = replay
            .as_ref()
            .unwrap_or_else(|e| panic!("input {input}: {e}"));
        let (allow, reasons) = verdict(&Ok(ResultSet::from_text(replay.to_string()).unwrap()));
        assert_eq!(
            (json!(allow), json!(reasons)),
            (record["allow"].clone(), record["reasons"].clone()),
            "input {input}\nreplayed: {replay:?}"
        );
    }
    assert_replay_covers(&records);
}

/// `gantry up` with the shipped policy on a fresh data directory under `dir`, asked by users of
/// every role ([`drive`]), then stopped cleanly (every decision in the log, under a checkpoint);
/// returns the data directory.
fn run_a_daemon(dir: &Path) -> PathBuf {
    let data = init_data_dir(dir);
    let users = [
        ("root", "admin", "vision", "secret"),
        ("ada", "researcher", "vision", "internal"),
        ("lee", "researcher,writer", "language", "secret"),
        ("ivy", "intern", "vision", "public"),
        ("aud", "auditor", "language", "confidential"),
        ("wes", "writer", "vision", "confidential"),
    ];
    let tokens: Vec<(&str, &str, String)> = users
        .iter()
        .map(|(name, roles, tenant, clearance)| {
            (
                *name,
                *tenant,
                add_user(&data, name, roles, tenant, clearance),
            )
        })
        .collect();
    // Every decision an entry of its own, allowed reads too, for each to be replayed.
    let mut daemon = Daemon::start_with(&data, &shared_cache(), &["--audit-each-read"]);
    for (name, tenant, token) in &tokens {
        drive(&daemon.url, name, tenant, token);
    }
    daemon.signal("-TERM");
    data
}

/// The records of the `decision` entries of `data`'s audit log, once `gantry audit verify` has
/// checked it (chain, signed checkpoints, the position its database sealed): what is replayed
/// is what the daemon recorded.
fn recorded_decisions(data: &Path, cache: &Path) -> Vec<Value> {
    let out = gantry(
        &["audit", "verify", "--data-dir", data.to_str().unwrap()],
        cache,
    );
    assert!(out.status.success(), "{}", text(&out).1);
    std::fs::read_to_string(data.join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["kind"] == "decision")
        .map(|e| e["record"].clone())
        .collect()
}

/// The recorded decisions cover every role and most actions, both ways.
fn assert_replay_covers(records: &[Value]) {
    let allowed = records.iter().filter(|r| r["allow"] == true).count();
    let denied = records.len() - allowed;
    let actions: std::collections::BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    let users: std::collections::BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r["subject"]["user"].as_str())
        .collect();
    assert!(
        allowed >= 20 && denied >= 20 && actions.len() >= 15 && users.len() >= 6,
        "allowed {allowed}, denied {denied}, actions {actions:?}, users {users:?}"
    );
}

/// What `name` (a member of `tenant`) asks the daemon at `url`, allowed or not by the policy:
/// jobs of two sizes in two tenants, reading and cancelling its own, datasets of two
/// classifications, the listings, and the admin-only actions (except those that would change
/// what the others can do: an admin revokes no one real and loads no plugin).
fn drive(url: &str, name: &str, tenant: &str, token: &str) {
    let t = Some(token);
    for path in [
        "jobs",
        "nodes",
        "gpus",
        "plugins",
        "policy",
        "datasets",
        "audit/head",
    ] {
        request(&format!("{url}/v1/{path}"), "GET", t, None);
    }
    for (job_tenant, gpus) in [(tenant, 2), (tenant, 12), ("language", 4), ("vision", 600)] {
        let id = format!("{name}-{job_tenant}-{gpus}");
        let body = json!({"id": id, "tenant": job_tenant, "gpus": gpus}).to_string();
        let (status, _) = request(&format!("{url}/v1/jobs"), "POST", t, Some(&body));
        if status == 201 {
            request(&format!("{url}/v1/jobs/{id}"), "GET", t, None);
        }
    }
    request(
        &format!("{url}/v1/jobs/{name}-{tenant}-2/cancel"),
        "POST",
        t,
        None,
    );
    for class in ["public", "secret"] {
        let dataset = format!("{url}/v1/datasets/{name}-{class}.csv");
        send_raw(
            "PUT",
            &format!("{dataset}?tenant={tenant}&classification={class}"),
            token,
            b"1,2\n",
        );
        request(
            &format!("{url}/v1/datasets/root-{class}.csv/content"),
            "GET",
            t,
            None,
        );
    }
    let gpu = json!({"gpu": "no-such-gpu"}).to_string();
    request(&format!("{url}/v1/gpus/unhealthy"), "POST", t, Some(&gpu));
    request(&format!("{url}/v1/users/nobody/revoke"), "POST", t, None);
    if name != "root" {
        request(&format!("{url}/v1/keys/rotate"), "POST", t, None);
        let binpack = json!({"name": "binpack"}).to_string();
        request(
            &format!("{url}/v1/plugins/scheduler"),
            "POST",
            t,
            Some(&binpack),
        );
        send_raw("POST", &format!("{url}/v1/policy"), token, b"not a bundle");
    }
}
