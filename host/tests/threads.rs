//! The async core starts no thread per policy decision or plugin call: inside a tokio runtime,
//! decisions and scheduling cycles (the shipped policy, the shipped `binpack` plugin, a synced
//! audit log) run on the runtime's threads and its bounded blocking pool.
//!
//! Its own test binary: the threads of other tests would be counted too.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use gantry::audit::AuditLog;
use gantry::cluster::{Cluster, JobSpec};
use gantry::policy::request::{Action, Request, Resource, Subject};
use gantry::{Host, HostConfig, PluginSource};

/// The process's threads, by id.
fn threads() -> BTreeSet<u64> {
    std::fs::read_dir("/proc/self/task")
        .expect("listing /proc/self/task")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// This thread's id.
fn this_thread() -> u64 {
    let link = std::fs::read_link("/proc/thread-self").expect("reading /proc/thread-self");
    let name = link.file_name().and_then(|n| n.to_str()).unwrap_or("0");
    name.parse().expect("a thread id")
}

/// How many threads started while `work` ran: a sampler lists the process's threads over and
/// over until `work` returns (a thread started and joined per call shows up in its lists).
fn threads_started_during(work: impl FnOnce()) -> usize {
    let stop = AtomicBool::new(false);
    let before = threads();
    let (seen, sampler) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut seen = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                seen.extend(threads());
                // Leaves the cores to the work on a small machine; a thread per call still
                // lives across many samples.
                std::thread::yield_now();
            }
            (seen, this_thread())
        });
        work();
        stop.store(true, Ordering::Relaxed);
        sampler.join().expect("the sampler panicked")
    });
    seen.iter()
        .filter(|t| !before.contains(t) && **t != sampler)
        .count()
}

fn job(id: String) -> JobSpec {
    JobSpec::new(id, "tenant-0", 1, 1_000, 60.0)
}

/// A host with the shipped policy, the shipped `binpack` scheduler and an audit log in `dir`.
async fn host(dir: &Path) -> Host {
    let mut config = HostConfig::new(Cluster::uniform(1, 1, 8, 2));
    // The e2e tests' cache: the policy engine module compiles once (slow in a debug build).
    config.cache_dir = Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-plugin-cache"));
    let mut host = Host::new(config).unwrap();
    let (name, rego, data) = gantry::builtin::AUTHZ_POLICY;
    let source = gantry::policy::source::PolicySource::from_parts(&[(name, rego)], data).unwrap();
    let entrypoints = vec![gantry::DECISION_ENTRYPOINT.to_string()];
    let bundle = gantry::policy::build(&source, &entrypoints, None).unwrap();
    host.install_policy(bundle).await.unwrap();
    let key = gantry::keys::generate(&dir.join("audit.key")).unwrap();
    host.set_audit_log(AuditLog::open(&dir.join("audit.log"), key).unwrap());
    host.load_scheduler(&PluginSource::Builtin("binpack".into()))
        .unwrap();
    host
}

/// Submits a job, lets a cycle place it (the plugin decides, the policy allows the placement)
/// and ends its allocation.
async fn one_cycle(host: &mut Host, i: usize) {
    host.submit(job(format!("j{i}"))).unwrap();
    let report = host.schedule_cycle(i as f64).await;
    assert_eq!(report.decided_by, "binpack", "{report:?}");
    let placed = &report.placements[0];
    host.complete(placed.alloc_id).unwrap();
}

#[test]
fn no_thread_is_started_per_policy_decision_or_plugin_call() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut host = runtime.block_on(host(dir.path()));
    let decider = host.decider();
    let request = Request::new(
        Subject::new("root", ["admin"]),
        Action::ClusterRead,
        Resource::Empty {},
    );
    let decide = |n: usize| {
        runtime.block_on(async {
            for _ in 0..n {
                let verdict = decider.authorize(&request).await.unwrap();
                assert!(verdict.allow, "{verdict:?}");
            }
        })
    };
    // Warm: the policy's ready instances, the blocking pool's threads for the audit log's syncs.
    decide(50);
    let started = threads_started_during(|| decide(1_000));
    assert!(
        started < 8,
        "{started} threads started during 1,000 policy decisions"
    );

    runtime.block_on(async {
        for i in 0..20 {
            one_cycle(&mut host, i).await;
        }
    });
    let started = threads_started_during(|| {
        runtime.block_on(async {
            for i in 20..1_020 {
                one_cycle(&mut host, i).await;
            }
        })
    });
    assert!(
        started < 8,
        "{started} threads started during 1,000 scheduling cycles calling the plugin"
    );
}
