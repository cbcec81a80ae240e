//! Command jobs through `gantry up` as a real process: a program the user brings runs on the GPUs
//! it was placed on, as the job user, its output in the job's log, its exit status its outcome;
//! a cancel and its wall time stop its whole process group; the policy decides who may.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::daemon::{Daemon, cancel, request, submit, wait_for_state, wait_until_over};
use crate::support::{
    JobPid, PIDNS, add_user, alive, cgroups_here, init_data_dir, job_user_args, log_of, path_after,
    root, shared_cache,
};

/// Waits until job `job`'s log contains `text`; returns the log.
fn wait_for_log(url: &str, token: &str, job: &str, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = log_of(url, token, job);
        if log.contains(text) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{job}'s log never said {text:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many GPUs jobs hold now.
fn busy_gpus(url: &str, token: &str) -> u64 {
    let (status, gpus) = request(&format!("{url}/v1/gpus"), "GET", Some(token), None);
    assert_eq!(status, 200, "{gpus}");
    gpus["busy"].as_u64().unwrap()
}

fn command_job(id: &str, gpus: u32, command: Value) -> Value {
    json!({"id": id, "tenant": "vision", "gpus": gpus, "command": command})
}

#[test]
fn command_jobs_run_on_their_placed_gpus_as_the_job_user_and_end_by_their_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let ada = add_user(&data, "ada", "researcher", "vision", "public");
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let mut extra = vec!["--kill-grace-s", "1"];
    extra.extend(job_user_args());
    let daemon = Daemon::start_with(&data, &shared_cache(), &extra);
    let url = daemon.url.clone();

    // The policy decides who may run programs: not a plain researcher.
    let say = json!({"argv": ["sh", "-c", "echo hi"]});
    let (s, v) = submit(&url, &ada, &command_job("c0", 1, say.clone()));
    assert_eq!(s, 403, "{v}");
    assert!(
        v["reasons"][0].as_str().unwrap().contains("runner role"),
        "{v}"
    );
    // Bad commands are refused by field, and store nothing.
    for (body, field) in [
        (command_job("c0", 1, json!({"argv": []})), "command.argv"),
        (
            command_job("c0", 1, json!({"argv": ["sh"], "cwd": "tmp"})),
            "command.cwd",
        ),
        (
            command_job(
                "c0",
                1,
                json!({"argv": ["sh"], "env": {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}}),
            ),
            "command.env.CUDA_VISIBLE_DEVICES",
        ),
        (
            command_job("c0", 1, json!({"argv": ["sh"], "wall_time_s": -1})),
            "command.wall_time_s",
        ),
    ] {
        let (s, v) = submit(&url, &rae, &body);
        assert_eq!(s, 400, "{v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{field}: {v}");
    }
    let (s, v) = submit(
        &url,
        &rae,
        &json!({"id": "c0", "tenant": "vision", "gpus": 1, "train": "x", "command": say}),
    );
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        request(&format!("{url}/v1/jobs/c0"), "GET", Some(&rae), None).0,
        404
    );

    // A failing program: its exit status fails the job; both streams are in its log, and it saw
    // exactly its placed GPUs, as the job user, with the daemon's environment withheld.
    let script = "echo devices=$CUDA_VISIBLE_DEVICES ids=$GANTRY_GPU_IDS uid=$(id -u) \
                  job=$GANTRY_JOB home=${GANTRY_CACHE_DIR:-unset}; echo to-stderr >&2; exit 3";
    let (s, v) = submit(
        &url,
        &rae,
        &command_job("c1", 2, json!({"argv": ["sh", "-c", script]})),
    );
    assert_eq!(s, 201, "{v}");
    let job = wait_until_over(&format!("{url}/v1/jobs/c1"), &rae, 60);
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap()
            .contains("exited with status 3"),
        "{job}"
    );
    let gpus: Vec<&str> = job["gpu_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert_eq!(gpus.len(), 2, "{job}");
    let ordinals: Vec<&str> = gpus
        .iter()
        .map(|g| g.rsplit_once("/gpu").unwrap().1)
        .collect();
    let log = log_of(&url, &rae, "c1");
    let uid = if root() {
        "65534".to_string()
    } else {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }.to_string()
    };
    let saw = format!(
        "devices={} ids={} uid={uid} job=c1 home=unset",
        ordinals.join(","),
        gpus.join(",")
    );
    assert!(log.contains(&saw), "expected {saw:?} in:\n{log}");
    assert!(log.contains("stderr: to-stderr"), "{log}");

    // A succeeding one, with its own environment and working directory.
    let cwd = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        cwd.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let ok = json!({"argv": ["sh", "-c", "echo color=$COLOR in=$(pwd)"], "env": {"COLOR": "teal"},
                    "cwd": cwd.path().to_str().unwrap()});
    assert_eq!(submit(&url, &rae, &command_job("c2", 1, ok)).0, 201);
    let job = wait_until_over(&format!("{url}/v1/jobs/c2"), &rae, 60);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["exit_code"], 0, "{job}");
    let log = log_of(&url, &rae, "c2");
    assert!(
        log.contains(&format!("color=teal in={}", cwd.path().display())),
        "{log}"
    );
    // Found by a review: every member of the tenant read a job's environment values back (an
    // `HF_TOKEN`); the API shows their names only.
    assert_eq!(job["command"]["env"], json!({"COLOR": "(hidden)"}), "{job}");
}

#[test]
fn a_cancel_or_the_wall_time_stops_the_whole_process_group_and_frees_the_gpus() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let mut extra = vec!["--kill-grace-s", "1"];
    extra.extend(job_user_args());
    let daemon = Daemon::start_with(&data, &shared_cache(), &extra);
    let url = daemon.url.clone();

    // It ignores SIGTERM and leaves a child behind: SIGKILL after the grace takes both.
    let stubborn = format!("trap '' TERM; sleep 300 & echo child=$! {PIDNS}; wait; wait");
    let body = command_job("c3", 2, json!({"argv": ["sh", "-c", stubborn]}));
    assert_eq!(submit(&url, &rae, &body).0, 201);
    wait_for_state(&url, &rae, "c3", "running");
    let log = wait_for_log(&url, &rae, "c3", "child=");
    let pid = |log: &str, key: &str| -> u32 {
        let at = log.find(key).unwrap() + key.len();
        log[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (leader, child) = (pid(&log, "(pid "), JobPid::from_log(&log, "child="));
    assert!(alive(leader) && child.alive(), "{log}");
    assert_eq!(busy_gpus(&url, &rae), 2);
    let (s, v) = cancel(&url, &rae, "c3");
    assert_eq!((s, &v["state"]), (202, &json!("cancelling")), "{v}");
    wait_for_state(&url, &rae, "c3", "cancelled");
    assert!(
        !alive(leader) && !child.alive(),
        "the process group outlived its job"
    );
    crate::support::eventually("its GPUs are free", || busy_gpus(&url, &rae) == 0);

    // Past its wall time it is stopped and fails, saying why.
    let body = command_job(
        "c4",
        1,
        json!({"argv": ["sleep", "300"], "wall_time_s": 0.5}),
    );
    assert_eq!(submit(&url, &rae, &body).0, 201);
    let job = wait_until_over(&format!("{url}/v1/jobs/c4"), &rae, 60);
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap()
            .contains("exceeded its wall time of 0.5 s"),
        "{job}"
    );

    // Output beyond the log's budget is drained and dropped, not kept: the program still ends.
    let loud = "yes 0123456789abcdef | head -c 3000000; echo done";
    let body = command_job("c5", 1, json!({"argv": ["sh", "-c", loud]}));
    assert_eq!(submit(&url, &rae, &body).0, 201);
    let job = wait_until_over(&format!("{url}/v1/jobs/c5"), &rae, 60);
    assert_eq!(job["state"], "succeeded", "{job}");
    let log = log_of(&url, &rae, "c5");
    assert!(
        log.len() < (1 << 20) + 64 * 1024,
        "{} bytes kept",
        log.len()
    );
    assert!(
        log.contains("more bytes of output were dropped"),
        "{}",
        &log[log.len() - 300..]
    );
}

#[test]
fn a_command_job_is_held_to_its_cgroup_and_what_it_leaves_dies_with_it_or_with_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let mut extra = vec!["--kill-grace-s", "1"];
    extra.extend(job_user_args());
    // The kernel's default counts of AIO events and pseudo-terminals for the whole machine,
    // which the daemon's agent lifts below (an earlier daemon may have lifted them here).
    // (Not where `/proc/sys` is read-only, a container's: the agent cannot lift them there.)
    let lowered = cgroups_here()
        && std::fs::write("/proc/sys/fs/aio-max-nr", "65536").is_ok()
        && std::fs::write("/proc/sys/kernel/pty/max", "4096").is_ok();
    let mut daemon = Daemon::start_with(&data, &shared_cache(), &extra);
    let url = daemon.url.clone();

    // Over its memory limit, the kernel kills it and the job fails saying so.
    let hog = json!({"argv": ["sh", "-c", "head -c 400000000 /dev/zero | tail -n 1 > /dev/null"],
                     "memory_mib": 64});
    assert_eq!(submit(&url, &rae, &command_job("c6", 1, hog)).0, 201);
    let job = wait_until_over(&format!("{url}/v1/jobs/c6"), &rae, 60);
    assert_eq!(job["state"], "failed", "{job}");
    let reason = job["reason"].as_str().unwrap();
    if !cgroups_here() {
        // Nothing here could enforce the limit, and the job says so rather than run unlimited.
        assert!(reason.contains("no cgroups"), "{job}");
        return;
    }
    assert!(
        reason.contains("reached its memory limit of 64 MiB"),
        "{job}"
    );
    // Its memory bound is what holds its open files, AIO events and pseudo-terminals: the
    // agent lifted the kernel's counts of them for the whole machine before it ran anything.
    let lifted = [
        ("fs/file-max", i64::MAX as u64),
        ("fs/aio-max-nr", i64::MAX as u64),
        ("kernel/pty/max", 1 << 20),
    ];
    for (sysctl, most) in lifted.into_iter().filter(|_| lowered) {
        let at = std::fs::read_to_string(format!("/proc/sys/{sysctl}")).unwrap();
        assert_eq!(at.trim(), most.to_string(), "{sysctl}");
    }

    // Its limits are its cgroup's, as the program itself reads them.
    let limits = r#"if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
          p=$(sed -n 's/^0:://p' /proc/self/cgroup)
          echo "cpu=$(cut -d' ' -f1 /sys/fs/cgroup$p/cpu.max) mem=$(cat /sys/fs/cgroup$p/memory.max)"
        else
          c=$(grep -E '^[0-9]+:([^:]*,)?cpu(,[^:]*)?:' /proc/self/cgroup | cut -d: -f3)
          m=$(grep -E '^[0-9]+:([^:]*,)?memory(,[^:]*)?:' /proc/self/cgroup | cut -d: -f3)
          echo "cpu=$(cat /sys/fs/cgroup/cpu$c/cpu.cfs_quota_us) mem=$(cat /sys/fs/cgroup/memory$m/memory.limit_in_bytes)"
        fi"#;
    let body = command_job(
        "c9",
        1,
        json!({"argv": ["sh", "-c", limits], "memory_mib": 128, "cpus": 0.5}),
    );
    assert_eq!(submit(&url, &rae, &body).0, 201);
    let job = wait_until_over(&format!("{url}/v1/jobs/c9"), &rae, 60);
    assert_eq!(job["state"], "succeeded", "{job}");
    let log = log_of(&url, &rae, "c9");
    assert!(log.contains("cpu=50000 mem=134217728"), "{log}");

    // What leaves its process group (setsid) is still in its cgroup, and dies with the job.
    let escape = format!("setsid sleep 300 & echo escaped=$! {PIDNS}; sleep 0.2");
    let body = command_job("c7", 1, json!({"argv": ["sh", "-c", escape]}));
    assert_eq!(submit(&url, &rae, &body).0, 201);
    let job = wait_until_over(&format!("{url}/v1/jobs/c7"), &rae, 60);
    assert_eq!(job["state"], "succeeded", "{job}");
    let escaped = JobPid::from_log(&log_of(&url, &rae, "c7"), "escaped=");
    assert!(
        !escaped.alive(),
        "a process that left the group outlived its job"
    );

    // A crash of the daemon (kill -9) kills the program it ran, but not what the program started;
    // the next daemon on this data directory kills that before any job runs again.
    let body = command_job(
        "c8",
        1,
        json!({"argv": ["sh", "-c", format!("setsid sleep 300 & echo escaped=$! {PIDNS}; sleep 300")]}),
    );
    assert_eq!(submit(&url, &rae, &body).0, 201);
    let escaped = JobPid::from_log(&wait_for_log(&url, &rae, "c8", "escaped="), "escaped=");
    assert!(escaped.alive());
    daemon.signal("-9");
    std::thread::sleep(Duration::from_millis(300));
    // In a PID namespace of its own the run's processes die with it, all of them; without one,
    // what left its group outlives the crash until the next daemon starts.
    assert_eq!(
        escaped.alive(),
        !escaped.own_namespace(),
        "a process outside the group dies with the crash only with the run's namespace"
    );
    let daemon = Daemon::start_with(&data, &shared_cache(), &extra);
    assert!(
        !escaped.alive(),
        "the restarted daemon left the crashed run's process alive"
    );
    // The job runs again (its crash counted), once.
    wait_for_state(&daemon.url, &rae, "c8", "running");
    assert_eq!(cancel(&daemon.url, &rae, "c8").0, 202);
    wait_for_state(&daemon.url, &rae, "c8", "cancelled");
}

/// Regression: a command job placed on GPUs of two nodes (the only free ones) failed at once
/// ("placed on GPUs of more than one node"), though it only had to wait. It now waits, queued
/// again, until one node has its GPUs, and runs there.
#[test]
fn a_command_job_placed_across_nodes_waits_for_one_node() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let ops = add_user(&data, "ops", "admin", "vision", "secret");
    let cluster = dir.path().join("cluster.toml");
    std::fs::write(&cluster, crate::support::TWO_NODES).unwrap();
    let mut extra = vec!["--cluster", cluster.to_str().unwrap()];
    extra.extend(job_user_args());
    let daemon = Daemon::start_with(&data, &shared_cache(), &extra);
    let url = daemon.url.clone();
    let mark = |health: &str, gpu: &str| {
        let body = json!({ "gpu": gpu }).to_string();
        let (s, v) = request(
            &format!("{url}/v1/gpus/{health}"),
            "POST",
            Some(&ops),
            Some(&body),
        );
        assert_eq!(s, 200, "{v}");
    };
    // One free GPU on each node: a 2-GPU job can only be placed across them.
    mark("unhealthy", "node-a/gpu0");
    mark("unhealthy", "node-b/gpu0");
    let say = json!({"argv": ["sh", "-c", "echo on $CUDA_VISIBLE_DEVICES of $GANTRY_GPU_IDS"]});
    let (s, v) = submit(&url, &rae, &command_job("c1", 2, say));
    assert_eq!(s, 201, "{v}");
    let log = wait_for_log(&url, &rae, "c1", "waits for 2 GPUs on one node");
    std::thread::sleep(Duration::from_secs(3));
    let (_, job) = request(&format!("{url}/v1/jobs/c1"), "GET", Some(&rae), None);
    assert_eq!(job["state"], "pending", "{job}\n{log}");
    crate::support::eventually("its GPUs are free", || busy_gpus(&url, &rae) == 0);
    // Once one node has two GPUs, it runs there.
    mark("healthy", "node-a/gpu0");
    wait_for_state(&url, &rae, "c1", "succeeded");
    let log = log_of(&url, &rae, "c1");
    assert!(
        log.contains("of node-a/gpu") && !log.contains("node-b/gpu"),
        "{log}"
    );
    assert_eq!(
        log.matches("waits for 2 GPUs on one node").count(),
        1,
        "{log}"
    );
}

/// Regression: a command run's scratch directory (no `cwd` given) was a temporary directory
/// removed when the run ended, so a daemon killed mid-run (kill -9) left it in `/tmp` for good,
/// one more per crash. The next daemon now removes it before any job runs again.
#[test]
fn a_crashed_daemons_run_scratch_directory_is_removed_by_the_next_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let rae = add_user(&data, "rae", "researcher,runner", "vision", "public");
    let mut extra = vec!["--kill-grace-s", "1"];
    extra.extend(job_user_args());
    let mut daemon = Daemon::start_with(&data, &shared_cache(), &extra);
    let work = "echo scratch=$(pwd); echo data > out; sleep 300";
    let body = command_job("s1", 1, json!({"argv": ["sh", "-c", work]}));
    assert_eq!(submit(&daemon.url, &rae, &body).0, 201);
    let log = wait_for_log(&daemon.url, &rae, "s1", "scratch=");
    let scratch = path_after(&log, "scratch=");
    assert!(scratch.is_absolute() && scratch.is_dir(), "{log}");

    // (No check that the crash left it: another test's daemon, starting meanwhile, may sweep it.)
    daemon.signal("-9");
    let daemon = Daemon::start_with(&data, &shared_cache(), &extra);
    assert!(
        !scratch.exists(),
        "{} outlived the daemon that made it",
        scratch.display()
    );
    // The job runs again (its crash counted), in a directory of its own.
    let deadline = Instant::now() + Duration::from_secs(20);
    while log_of(&daemon.url, &rae, "s1").matches("scratch=").count() < 2 {
        assert!(Instant::now() < deadline, "s1 never ran again");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cancel(&daemon.url, &rae, "s1").0, 202);
    wait_for_state(&daemon.url, &rae, "s1", "cancelled");
}
