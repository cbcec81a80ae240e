//! Property tests: every cluster and job file (TOML or JSON), valid or mutated, loads or is
//! refused naming the file; what loads is a consistent cluster within its bounds, and every job
//! accepted could run on it.

use std::path::Path;

use proptest::prelude::*;

use super::*;
use gantry_fuzz::{self as fuzz, Syntax};

const DEFAULT_CLUSTER: &str = include_str!("../../../assets/default-cluster.toml");
const EXAMPLE_JOBS: &str = include_str!("../../../assets/example-jobs.toml");

/// The same small cluster as JSON.
const JSON_CLUSTER: &str = r#"{
"tenants": [{"name": "vision", "quota_gpus": 8}, {"name": "language", "weight": 2.5}],
"nodes": [
  {"name": "n0", "rack": "r0", "gpus": {"count": 4, "model": "H100", "memory_mib": 81920, "unhealthy": [3]}},
  {"name": "n1", "rack": "r1", "gpu": [
    {"id": "n1/a", "model": "A100", "memory_total_mib": 40960, "memory_free_mib": 30000, "nvlink_domain": "n0"},
    {"id": "n1/b", "model": "A100", "memory_total_mib": 40960, "healthy": false}
  ]}
]
}"#;

const JSON_JOBS: &str = r#"{"jobs": [
  {"id": "a", "tenant": "vision", "gpus": 2, "memory_per_gpu_mib": 1000, "est_runtime_s": 60},
  {"id": "b", "tenant": "language", "gpus": 3, "memory_per_gpu_mib": 30000, "gang": false,
   "topology": "same-rack", "priority": -5, "est_runtime_s": 1.5, "submit_time_s": 10}
]}"#;

/// What every loaded cluster promises.
fn check_cluster(c: &Cluster) {
    assert!(!c.nodes.is_empty());
    assert!(
        !c.gpus.is_empty() && c.gpus.len() <= MAX_GPUS,
        "{} GPUs",
        c.gpus.len()
    );
    let mut ids = HashSet::new();
    for g in &c.gpus {
        assert!(ids.insert(&g.id), "duplicate {}", g.id);
        assert!((g.gpu.node as usize) < c.nodes.len());
        assert!((g.gpu.rack as usize) < c.racks.len());
        assert!((g.gpu.nvlink_domain as usize) < c.nvlink_domains.len());
        assert!((g.gpu.model as usize) < c.models.len());
        assert!(g.gpu.memory_free_mib > 0 || g.gpu.memory_total_mib > 0);
        assert!(g.gpu.memory_total_mib > 0 && g.gpu.memory_free_mib <= g.gpu.memory_total_mib);
        assert_eq!(g.gpu.rack, c.nodes[g.gpu.node as usize].rack);
    }
    let mut names = HashSet::new();
    assert!(c.nodes.iter().all(|n| names.insert(&n.name)));
    let mut tenants = HashSet::new();
    for t in &c.tenants {
        assert!(tenants.insert(&t.name));
        assert!(t.weight > 0.0 && t.weight.is_finite());
    }
}

/// What every accepted job promises, against the cluster it was checked with.
fn check_jobs(jobs: &[JobSpec], c: &Cluster) {
    let mut ids = HashSet::new();
    for j in jobs {
        assert!(ids.insert(&j.id), "duplicate {}", j.id);
        check_job(j, c).unwrap();
        assert!(j.gpus >= 1 && j.gpus as usize <= c.gpus.len());
        assert!(j.est_runtime_s > 0.0 && j.est_runtime_s.is_finite());
        assert!(j.submit_time_s >= 0.0 && j.submit_time_s.is_finite());
    }
}

fn clusters() -> Vec<(Cluster, &'static str)> {
    vec![
        (
            parse_cluster(DEFAULT_CLUSTER, Path::new("c.toml")).unwrap(),
            EXAMPLE_JOBS,
        ),
        (
            parse_cluster(JSON_CLUSTER, Path::new("c.json")).unwrap(),
            JSON_JOBS,
        ),
    ]
}

proptest! {
    #![proptest_config(fuzz::config(128))]

    #[test]
    fn mutated_cluster_files_are_refused_naming_the_file_or_load_consistent(
        toml in fuzz::mutated_text(vec![DEFAULT_CLUSTER.to_string()], Syntax::Toml),
        json in fuzz::mutated_text(vec![JSON_CLUSTER.to_string()], Syntax::Json),
    ) {
        for (text, path) in [(toml, "in/c.toml"), (json, "in/c.json")] {
            match parse_cluster(&text, Path::new(path)) {
                Ok(c) => check_cluster(&c),
                Err(e) => {
                    let e = e.to_string();
                    prop_assert!(e.starts_with(path), "{}", e);
                }
            }
        }
    }

    #[test]
    fn mutated_job_files_are_refused_naming_the_file_or_could_all_run(
        toml in fuzz::mutated_text(vec![EXAMPLE_JOBS.to_string()], Syntax::Toml),
        json in fuzz::mutated_text(vec![JSON_JOBS.to_string()], Syntax::Json),
    ) {
        let clusters = clusters();
        for (text, path, cluster) in [(toml, "in/j.toml", &clusters[0].0), (json, "in/j.json", &clusters[1].0)] {
            match parse_jobs(&text, Path::new(path), cluster) {
                Ok(jobs) => check_jobs(&jobs, cluster),
                Err(e) => {
                    let e = e.to_string();
                    prop_assert!(e.starts_with(path), "{}", e);
                }
            }
        }
    }

    /// Valid clusters from parts (group counts and GPU lists from 1 to beyond the bound), and
    /// the traces that run on them.
    #[test]
    fn generated_clusters_load_within_the_bound(
        nodes in prop::collection::vec(
            (0u32..4, prop_oneof![8 => 1u32..16, 1 => any::<u32>()], 0usize..3, any::<bool>()),
            1..12,
        ),
    ) {
        let mut text = String::from("[[tenants]]\nname = \"t\"\n");
        let mut total = 0u64;
        for (i, (rack, count, singles, unhealthy)) in nodes.iter().enumerate() {
            text.push_str(&format!("[[nodes]]\nname = \"n{i}\"\nrack = \"r{rack}\"\n"));
            let unhealthy = if *unhealthy { "[0]" } else { "[]" };
            text.push_str(&format!(
                "gpus = {{ count = {count}, model = \"m\", memory_mib = 1000, unhealthy = {unhealthy} }}\n"
            ));
            for s in 0..*singles {
                text.push_str(&format!(
                    "[[nodes.gpu]]\nid = \"n{i}/s{s}\"\nmodel = \"m2\"\nmemory_total_mib = 10\n"
                ));
            }
            total += u64::from(*count) + *singles as u64;
        }
        match parse_cluster(&text, Path::new("c.toml")) {
            Ok(c) => {
                check_cluster(&c);
                prop_assert_eq!(c.gpus.len() as u64, total);
            }
            Err(e) => {
                prop_assert!(total > MAX_GPUS as u64, "{}", e);
                prop_assert!(e.to_string().contains("GPUs"), "{}", e);
            }
        }
    }
}
