//! Policies: Rego packed into the OPA-ABI engine module, evaluated in the sandbox through
//! opa-wasm, and compared with native regorus on the same inputs.

use std::path::Path;
use std::sync::OnceLock;

use gantry::cluster::Cluster;
use gantry::plugin::ArtifactCache;
use gantry::policy::bundle::Bundle;
use gantry::policy::decide::{LoadedPolicy, PolicyLimits};
use gantry::policy::source::PolicySource;
use gantry::{Host, HostConfig, policy};

const ENTRYPOINTS: [&str; 3] = [
    "gantry/authz/allow",
    "gantry/authz/decision",
    "gantry/authz/reasons",
];

fn policies_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"))
}

fn host() -> Host {
    let mut config = HostConfig::new(Cluster::uniform(1, 1, 1, 1));
    config.cache_dir = None;
    Host::new(config).unwrap()
}

fn entrypoints() -> Vec<String> {
    ENTRYPOINTS.iter().map(|e| e.to_string()).collect()
}

/// A small deterministic generator (xorshift) so the inputs are the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// A request as the host would send it, with values drawn from the policy's vocabulary and a few
/// outside it (unknown actions, tenants, labels, missing fields).
fn request(rng: &mut Rng) -> serde_json::Value {
    let roles = [
        "admin",
        "researcher",
        "writer",
        "auditor",
        "intern",
        "visitor",
    ];
    let tenants = ["vision", "language", "robotics", "unknown"];
    let labels = ["public", "internal", "confidential", "secret", "bogus"];
    let actions = [
        "job.submit",
        "job.cancel",
        "dataset.read",
        "dataset.write",
        "plugin.load",
        "plugin.unload",
        "audit.read",
        "cluster.delete",
    ];
    let n_roles = (rng.next() % 3) as usize;
    let subject_roles: Vec<&str> = (0..n_roles).map(|_| rng.pick(&roles)).collect();
    let subject_tenants: Vec<&str> = (0..(rng.next() % 3) as usize)
        .map(|_| rng.pick(&tenants))
        .collect();
    let mut subject = serde_json::json!({
        "user": format!("user{}", rng.next() % 5),
        "roles": subject_roles,
        "tenants": subject_tenants,
        "clearance": rng.pick(&labels),
    });
    if rng.next().is_multiple_of(20) {
        subject.as_object_mut().unwrap().remove("user");
    }
    let gpus = [1, 8, 64, 256, 300, 1000, 5000][(rng.next() % 7) as usize];
    let resource = serde_json::json!({
        "tenant": rng.pick(&tenants),
        "gpus": gpus,
        "tenant_used_gpus": (rng.next() % 600),
        "name": format!("thing{}", rng.next() % 4),
        "classification": rng.pick(&labels),
        "signed": rng.next().is_multiple_of(2),
    });
    serde_json::json!({"subject": subject, "action": rng.pick(&actions), "resource": resource})
}

/// The shipped policy built into a bundle, written, read back and loaded: once per test run, as
/// compiling the 2.5 MB module dominates (debug builds of Cranelift are slow).
fn loaded() -> &'static (Host, PolicySource, std::sync::Arc<LoadedPolicy>) {
    static LOADED: OnceLock<(Host, PolicySource, std::sync::Arc<LoadedPolicy>)> = OnceLock::new();
    LOADED.get_or_init(|| {
        let host = host();
        let dir = tempfile::tempdir().unwrap();
        let source = PolicySource::read(policies_dir()).unwrap();
        let bundle = policy::build(&source, &entrypoints(), Some("test-1")).unwrap();
        let path = dir.path().join("bundle.tar.gz");
        bundle.write(&path).unwrap();
        let read = Bundle::read(&path).unwrap();
        assert_eq!(read.revision(), "test-1");
        assert_eq!(read.wasm, bundle.wasm);
        assert_eq!(read.data, source.data);
        let cache = ArtifactCache::new(host.engine(), None);
        let loaded =
            LoadedPolicy::load(host.engine(), &cache, read, PolicyLimits::default()).unwrap();
        (host, source, loaded)
    })
}

#[test]
fn the_packed_module_decides_like_native_regorus() {
    let (_, source, loaded) = loaded();
    assert_eq!(loaded.entrypoints(), ENTRYPOINTS);
    let mut native = source.engine(false).unwrap();
    let mut rng = Rng(0x5EED_CAFE);
    let (mut allowed, mut denied) = (0, 0);
    for i in 0..300 {
        let input = request(&mut rng);
        for entrypoint in ENTRYPOINTS {
            let wasm = loaded.evaluate(entrypoint, &input).unwrap();
            native.set_input(regorus::Value::from_json_str(&input.to_string()).unwrap());
            let value = native
                .eval_rule(policy::source::rule_of(entrypoint))
                .unwrap();
            let expected = if value == regorus::Value::Undefined {
                serde_json::json!([])
            } else {
                serde_json::json!([{ "result": serde_json::to_value(&value).unwrap() }])
            };
            assert_eq!(
                wasm, expected,
                "input {i}: {input}\nentrypoint {entrypoint}"
            );
        }
        match loaded.evaluate("gantry/authz/allow", &input).unwrap()[0]["result"].as_bool() {
            Some(true) => allowed += 1,
            _ => denied += 1,
        }
    }
    // The generator must exercise both outcomes, or the comparison proves little.
    assert!(
        allowed > 10 && denied > 10,
        "allowed {allowed}, denied {denied}"
    );
}

#[test]
fn decisions_carry_reasons() {
    let (_, _, loaded) = loaded();
    let input = serde_json::json!({
        "subject": {"user": "ada", "roles": ["intern"], "tenants": ["vision"], "clearance": "internal"},
        "action": "job.submit",
        "resource": {"tenant": "vision", "gpus": 64, "tenant_used_gpus": 500}
    });
    let out = loaded.evaluate("gantry/authz/decision", &input).unwrap();
    assert_eq!(
        out[0]["result"],
        serde_json::json!({"allow": false, "reasons": [
            "tenant vision would hold 564 GPUs, over its quota of 512",
            "the job asks for 64 GPUs; the subject's roles allow at most 8",
        ]})
    );
    let ok = serde_json::json!({
        "subject": {"user": "ada", "roles": ["researcher"], "tenants": ["vision"], "clearance": "internal"},
        "action": "job.submit",
        "resource": {"tenant": "vision", "gpus": 64, "tenant_used_gpus": 100}
    });
    let out = loaded.evaluate("gantry/authz/decision", &ok).unwrap();
    assert_eq!(
        out[0]["result"],
        serde_json::json!({"allow": true, "reasons": []})
    );
    let err = loaded.evaluate("gantry/authz/nope", &ok).unwrap_err();
    assert!(err.to_string().contains("no such entrypoint"), "{err}");
}
