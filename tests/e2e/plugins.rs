//! The shipped plugins, run as wasm components through the host.

use gantry::cluster::{Cluster, files};
use gantry::scheduling::{native, snapshot, validate};
use gantry::simulate::trace::{self, Synthetic};
use gantry::{Host, HostConfig, PluginSource};

fn default_cluster() -> Cluster {
    files::load_cluster(&crate::support::repo().join("host/assets/default-cluster.toml")).unwrap()
}

fn queued_host(cluster: &Cluster, plugin: Option<&str>, jobs: usize) -> Host {
    let mut config = HostConfig::new(cluster.clone());
    config.cache_dir = None;
    let mut host = Host::new(config).unwrap();
    if let Some(p) = plugin {
        host.load_scheduler(&PluginSource::Builtin(p.into()))
            .unwrap();
    }
    let trace = trace::synthetic(
        cluster,
        Synthetic {
            jobs,
            seed: 3,
            load: 1.0,
        },
    );
    for (i, j) in trace.iter().enumerate() {
        host.submit(j.to_spec(format!("job-{i}"))).unwrap();
    }
    host
}

#[test]
fn every_shipped_plugin_gives_valid_answers() {
    let cluster = default_cluster();
    for b in gantry::builtin::SCHEDULERS {
        let mut host = queued_host(&cluster, Some(b.name), 400);
        let mut placed = 0;
        for cycle in 0..5 {
            let report = gantry::blocking::block_on(host.schedule_cycle(cycle as f64 * 600.0));
            assert_eq!(report.decided_by, b.name, "{:?}", report.fallback_reason);
            placed += report.placements.len();
            // Finish the oldest allocations so later cycles have room.
            let done: Vec<u64> = host.state().running.iter().take(10).map(|a| a.id).collect();
            for id in done {
                host.complete(id);
            }
        }
        assert!(placed > 20, "{} placed only {placed}", b.name);
    }
}

#[test]
fn the_native_fallback_decides_exactly_like_the_binpack_plugin() {
    let cluster = Cluster::uniform(8, 8, 8, 4);
    let host = queued_host(&cluster, Some("binpack"), 3000);
    let (snap, queue) = snapshot::build(host.state(), 0.0);
    let wasm =
        gantry::blocking::block_on(host.scheduler().unwrap().schedule(&snap, &queue)).unwrap();
    let native = native::schedule(&snap, &queue);
    validate::validate(&snap, &queue, &wasm).unwrap();
    assert!(!wasm.is_empty());
    assert_eq!(wasm, native);
}
