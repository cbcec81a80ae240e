use super::cycle::tests::job;
use crate::audit::{AuditLog, Entry};
use crate::cluster::Cluster;
use crate::policy::Subject;
use crate::policy::decide::LoadedPolicy;
use crate::{Host, HostConfig, HostError};

/// A job is checked once on its way in: a checked job is queued as it is, and checked again
/// only when the host's state changed in between (here: every GPU lost).
#[test]
fn a_checked_job_is_checked_again_only_when_the_state_changed_since() {
    let mut host = Host::new(HostConfig::new(Cluster::uniform(1, 2, 8, 1))).unwrap();
    let e = host.check(job("", 1)).unwrap_err();
    assert!(matches!(e, HostError::Job { ref message, .. } if message.starts_with("id:")));
    let subject = Subject::new("ada", ["researcher"]).in_tenants(["tenant-0"]);
    let submit =
        |host: &mut Host, job| crate::blocking::block_on(host.submit_checked_as(&subject, job));
    let fits = host.check(job("a", 2)).unwrap();
    assert_eq!(fits.spec().id, "a");
    submit(&mut host, fits).unwrap();
    let late = host.check(job("b", 2)).unwrap();
    let gpus: Vec<String> = (host.state().cluster.gpus.iter())
        .map(|g| g.id.clone())
        .collect();
    for gpu in &gpus {
        host.set_gpu_health(gpu, false).unwrap();
    }
    let e = submit(&mut host, late).unwrap_err();
    assert!(
        matches!(e, HostError::Job { ref message, .. } if message.starts_with("memory_per_gpu_mib:")),
        "{e}"
    );
    let queued: Vec<&str> = (host.state().pending.iter())
        .map(|p| p.spec.id.as_str())
        .collect();
    assert_eq!(queued, ["a"]);
}

/// A submission decided off the host's lock is queued only against the quota the policy saw:
/// once the tenant's GPUs in use changed between the decision and the queueing, nothing is
/// queued and the caller decides again.
#[test]
fn a_job_admitted_off_the_lock_is_queued_only_if_its_tenants_gpus_are_as_decided() {
    let mut host = Host::new(HostConfig::new(Cluster::uniform(1, 1, 4, 1))).unwrap();
    let decided = host.admission(&job("b", 1));
    let checked = host.check(job("b", 1)).unwrap();
    let gpus: Vec<String> = (host.state().cluster.gpus.iter())
        .map(|g| g.id.clone())
        .collect();
    // Meanwhile the tenant took two GPUs.
    host.adopt(job("a", 2), &gpus[0..2], 10.0).unwrap();
    assert_ne!(host.admission(&job("b", 1)), decided);
    assert!(!host.enqueue_admitted(checked, &decided).unwrap());
    assert!(host.state().pending.is_empty(), "nothing queued");
    let decided = host.admission(&job("b", 1));
    assert_eq!(decided.tenant_used_gpus, 2);
    let checked = host.check(job("b", 1)).unwrap();
    assert!(host.enqueue_admitted(checked, &decided).unwrap());
    assert_eq!(host.state().pending.len(), 1);
}

/// A job taken back after a restart holds exactly the GPUs it held, and only free GPUs of the
/// cluster, as many as it asks for.
#[test]
fn an_adopted_job_holds_the_gpus_it_held_and_nothing_else() {
    let mut host = Host::new(HostConfig::new(Cluster::uniform(1, 1, 4, 1))).unwrap();
    let gpus: Vec<String> = (host.state().cluster.gpus.iter())
        .map(|g| g.id.clone())
        .collect();
    host.adopt(job("a", 2), &gpus[1..3], 10.0).unwrap();
    let state = host.state();
    assert!(state.pending.is_empty());
    assert_eq!(state.running.len(), 1);
    assert_eq!(state.running[0].gpus, [1, 2]);
    assert_eq!(state.busy_gpus(), 2);
    for (id, held, why) in [
        ("b", &gpus[2..4], "held by another job"),
        ("c", &gpus[3..4], "held 1 GPUs and asks for 2"),
    ] {
        let e = host.adopt(job(id, 2), held, 10.0).unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
    }
    let e = host
        .adopt(job("d", 1), &["elsewhere/gpu0".to_string()], 10.0)
        .unwrap_err();
    assert!(e.to_string().contains("not in the cluster"), "{e}");
    assert_eq!(
        host.state().running.len(),
        1,
        "a refused adoption holds nothing"
    );
    assert!(host.state().pending.is_empty());
}

#[test]
fn a_registered_node_is_placed_on_once_in_service_and_admits_jobs_at_once() {
    let mut host = Host::new(HostConfig::new(Cluster::uniform(1, 1, 2, 1))).unwrap();
    host.admit_against(host.state().cluster.clone());
    let gpu = |k: u32| (format!("node-z/gpu{k}"), "H200".to_string(), 141_000);
    // Four GPUs: more than the cluster had, so admitted only once the node is there.
    assert!(host.check(job("big", 4)).is_err());
    host.add_node("node-z", "rack-9", &[gpu(0), gpu(1), gpu(2), gpu(3)])
        .unwrap();
    let c = &host.state().cluster;
    assert_eq!(
        (c.nodes.len(), c.gpus.len(), host.state().holder.len()),
        (2, 6, 6)
    );
    assert_eq!(c.racks[c.nodes[1].rack as usize], "rack-9");
    assert_eq!(c.models[c.gpus[5].gpu.model as usize], "H200");
    assert!(
        c.gpus[2..].iter().all(|g| !g.gpu.healthy),
        "out of service until its agent says"
    );
    host.check(job("big", 4)).unwrap();
    for e in [
        host.add_node("node-z", "rack-9", &[]).unwrap_err(),
        host.add_node("node-y", "rack-9", &[gpu(0)]).unwrap_err(),
    ] {
        assert!(e.to_string().contains("exists"), "{e}");
    }
    assert_eq!(
        host.state().cluster.nodes.len(),
        2,
        "a refused node adds nothing"
    );
    for k in 0..4 {
        host.set_gpu_health(&format!("node-z/gpu{k}"), true);
    }
    host.submit(job("big", 4)).unwrap();
    let report = crate::blocking::block_on(host.schedule_cycle(10.0));
    assert_eq!(report.placements.len(), 1, "{report:?}");
    let gpus = &report.placements[0].gpus;
    assert!(gpus.iter().all(|g| g.starts_with("node-z/")), "{gpus:?}");
}

/// The shipped policy built under `revision` (one module for every revision: compiled once).
fn shipped_policy(host: &Host, revision: &str) -> std::sync::Arc<LoadedPolicy> {
    let (name, rego, data) = crate::builtin::AUTHZ_POLICY;
    let source = crate::policy::source::PolicySource::from_parts(&[(name, rego)], data).unwrap();
    let entrypoints = [crate::DECISION_ENTRYPOINT.to_string()];
    let bundle = crate::policy::build(&source, &entrypoints, Some(revision)).unwrap();
    let limits = crate::policy::decide::PolicyLimits::default();
    crate::blocking::block_on(host.policy_loader().load(bundle, limits)).unwrap()
}

/// Issue 11: a policy swap is recorded before it takes effect, swaps take turns (each record's
/// `from` is the previous record's `to`, even with swaps at once from many threads, and the last
/// record names the policy in force), and a swap whose record fails changes nothing.
#[test]
fn policy_swaps_are_recorded_in_the_order_they_take_effect_and_an_unrecorded_one_never_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = HostConfig::new(Cluster::uniform(1, 1, 1, 1));
    config.cache_dir = Some(std::env::temp_dir().join("gantry-core-unit-tests-cache"));
    let mut host = Host::new(config).unwrap();
    let key = crate::keys::generate(&dir.path().join("host.pk8")).unwrap();
    let log = std::sync::Arc::new(AuditLog::open(&dir.path().join("audit.log"), key).unwrap());
    host.set_shared_audit_log(log.clone());
    let (a, b) = (shipped_policy(&host, "a"), shipped_policy(&host, "b"));
    let e = crate::blocking::block_on(host.decider().swap_policy(a.clone())).unwrap_err();
    assert!(matches!(e, HostError::NoPolicy), "{e}");
    assert!(
        crate::blocking::block_on(host.set_policy(a.clone()))
            .unwrap()
            .is_none()
    );
    let decider = host.decider();
    std::thread::scope(|s| {
        for i in 0..8 {
            let (decider, next) = (&decider, [&a, &b][i % 2].clone());
            s.spawn(move || crate::blocking::block_on(decider.swap_policy(next)).unwrap());
        }
    });
    let in_force = host.policy().unwrap().current().revision().to_string();
    let swaps = swaps(log.path());
    assert_eq!(swaps.len(), 9);
    assert_eq!(swaps[0], (None, "a".to_string()));
    for pair in swaps.windows(2) {
        assert_eq!(pair[1].0.as_ref(), Some(&pair[0].1), "{swaps:?}");
    }
    assert_eq!(swaps[8].1, in_force);
    log.close().unwrap();
    let other = [&a, &b][usize::from(in_force == "a")].clone();
    let e = crate::blocking::block_on(decider.swap_policy(other)).unwrap_err();
    assert!(matches!(e, HostError::Audit(_)), "{e}");
    assert_eq!(host.policy().unwrap().current().revision(), in_force);
}

/// The `policy.swap` records of the log at `path`: (from, to).
fn swaps(path: &std::path::Path) -> Vec<(Option<String>, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let entries = text
        .lines()
        .map(|l| serde_json::from_str::<Entry>(l).unwrap());
    let record = |e: Entry| e.record.unwrap();
    (entries.filter(|e| e.kind == "policy.swap").map(record))
        .map(|r| {
            (
                r["from"].as_str().map(String::from),
                r["to"].as_str().unwrap().into(),
            )
        })
        .collect()
}

/// Reported by a review: a plugin from disk was read once for the policy's question (is it
/// signed?) and again to load, so files swapped between the two reads loaded unsigned code that
/// the decision had recorded as signed. It is read once now: the bytes the policy was asked about
/// are the bytes that load.
#[test]
fn a_plugin_from_disk_loads_the_bytes_the_policy_decided_on() {
    let dir = tempfile::tempdir().unwrap();
    let binpack = crate::builtin::scheduler("binpack").unwrap();
    let manifest = dir.path().join("plugin.toml");
    let wasm = dir.path().join("gantry_plugin_binpack.wasm");
    std::fs::write(&manifest, binpack.manifest).unwrap();
    std::fs::write(&wasm, binpack.wasm).unwrap();
    let key = crate::keys::generate(&dir.path().join("team.pk8")).unwrap();
    let sig = crate::plugin::signature::sign(&key, binpack.wasm, binpack.manifest.as_bytes());
    std::fs::write(
        crate::plugin::signature::path_for(&manifest),
        serde_json::to_vec(&sig).unwrap(),
    )
    .unwrap();
    let mut config = HostConfig::new(Cluster::uniform(1, 1, 8, 1));
    config.cache_dir = None;
    config.trust = crate::PluginTrust {
        trusted_keys: vec![crate::keys::public_hex(&key)],
        allow_unsigned: false,
    };
    let host = Host::new(config).unwrap();
    let loader = host.loader();
    let source = crate::PluginSource::Path(dir.path().to_path_buf());
    let read = loader.read_scheduler(&source).unwrap();
    assert_eq!(loader.plugin_ref(&read).signed, Some(true));
    // Swapped once the policy was asked: another component, signed by no one.
    let spread = crate::builtin::scheduler("spread").unwrap();
    std::fs::write(&wasm, spread.wasm).unwrap();
    let loaded = loader.load_read(read).unwrap();
    assert_eq!(
        loaded.wasm_sha256(),
        crate::plugin::cache::sha256_hex(binpack.wasm)
    );
    // Read afresh, the swapped files are what they are: unsigned, refused.
    let e = loader.load_scheduler_plugin(&source).err().unwrap();
    assert!(e.to_string().contains("changed after signing"), "{e}");
}
