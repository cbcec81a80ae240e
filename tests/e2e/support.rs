//! Shared helpers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gantry::cluster::{Cluster, JobSpec};
use gantry::{Host, HostConfig, PluginSource};

pub use gantry_fixtures::{HOSTILE_WASM, WRONG_WORLD_WASM};

/// The repository root.
pub fn repo() -> PathBuf {
    // These tests belong to `gantry-cli`, at `host/cli`.
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .canonicalize()
        .unwrap()
}

/// One compiled-plugin cache shared by the tests that start daemons: the policy engine module
/// compiles once (slow in a debug build), not once per test.
pub fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-plugin-cache")
}

/// `gantry init` of a data directory `data` under `dir`; returns its path.
pub fn init_data_dir(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let out = gantry(&["init", "--data-dir", data.to_str().unwrap()], dir);
    assert!(out.status.success(), "{}", text(&out).1);
    data
}

/// `gantry user add` in `data`; returns the user's bearer token.
pub fn add_user(data: &Path, name: &str, roles: &str, tenant: &str, clearance: &str) -> String {
    let d = data.to_str().unwrap();
    let out = gantry(
        &[
            "user",
            "add",
            name,
            "--roles",
            roles,
            "--tenants",
            tenant,
            "--clearance",
            clearance,
            "--data-dir",
            d,
        ],
        data.parent().unwrap_or(data),
    );
    assert!(out.status.success(), "{}", text(&out).1);
    text(&out).0.trim().to_string()
}

/// Waits (at most 30 s) until `check` holds; fails saying `what` never did. For what follows a
/// job's end in its own time (its GPUs freed in the scheduler's view, its checkpoints let go):
/// the end is recorded first.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs the `gantry` binary with an isolated cache.
pub fn gantry(args: &[&str], cache: &Path) -> Output {
    gantry_command(args, cache)
        .output()
        .expect("running gantry")
}

/// [`gantry`] as the holder of `token`, given as a person gives it: in `GANTRY_TOKEN` (one on
/// the command line is refused).
pub fn gantry_as(token: &str, args: &[&str], cache: &Path) -> Output {
    gantry_command(args, cache)
        .env("GANTRY_TOKEN", token)
        .output()
        .expect("running gantry")
}

/// [`gantry`] with variables `env` set.
pub fn gantry_with(args: &[&str], cache: &Path, env: &[(&str, &Path)]) -> Output {
    let mut command = gantry_command(args, cache);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("running gantry")
}

fn gantry_command(args: &[&str], cache: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gantry"));
    command
        .args(args)
        .env("GANTRY_CACHE_DIR", cache)
        .env_remove("RUST_LOG")
        .current_dir(repo());
    command
}

/// stdout and stderr as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes a scheduler manifest for `wasm` into `dir` and returns the manifest's path.
pub fn plugin_dir(dir: &Path, name: &str, wasm: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(wasm, dir.join(format!("{name}.wasm"))).unwrap();
    let manifest = dir.join("plugin.toml");
    std::fs::write(
        &manifest,
        format!(
            "name = \"{name}\"\nversion = \"0.1.0\"\nkind = \"scheduler\"\n\
             world = \"gantry:scheduler/scheduler@0.1.0\"\n{extra}\n"
        ),
    )
    .unwrap();
    manifest
}

/// A hostile plugin in `mode`, with manifest `limits` lines.
pub fn hostile(dir: &Path, mode: &str, limits: &str) -> PathBuf {
    hostile_from(dir, HOSTILE_WASM, mode, limits)
}

/// [`hostile`] with the component at `wasm` (the fixture wrapped by [`crate::synthetic`], say).
pub fn hostile_from(dir: &Path, wasm: &str, mode: &str, limits: &str) -> PathBuf {
    plugin_dir(
        &dir.join(mode),
        &format!("hostile-{mode}"),
        wasm,
        &format!("[limits]\n{limits}\n[config]\nmode = \"{mode}\"\n"),
    )
}

/// The hostile fixture wrapped with `extra` core instances (see [`crate::synthetic::wrap`]),
/// written under `dir`; returns the file's path.
pub fn wrapped_hostile(dir: &Path, extra: crate::synthetic::Extra) -> String {
    let inner = std::fs::read(HOSTILE_WASM).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("wrapped.wasm");
    std::fs::write(&path, crate::synthetic::wrap(&inner, extra)).unwrap();
    path.to_str().unwrap().to_string()
}

/// A 4-node, 32-GPU cluster with two tenants and no cache.
pub fn host() -> Host {
    let mut config = HostConfig::new(Cluster::uniform(2, 2, 8, 2));
    config.cache_dir = None;
    // The fault tests load unsigned fixtures; signatures have their own tests.
    config.trust.allow_unsigned = true;
    Host::new(config).unwrap()
}

/// A gang job.
pub fn job(id: &str, tenant: u32, gpus: u32) -> JobSpec {
    JobSpec::new(id, format!("tenant-{tenant}"), gpus, 40_000, 3600.0)
}

/// A host with the hostile plugin in `mode` and three jobs queued.
pub fn hostile_host(dir: &Path, mode: &str, limits: &str) -> Host {
    queued_host(hostile(dir, mode, limits))
}

/// A host with the scheduler plugin whose manifest is `manifest`, and three jobs queued.
pub fn queued_host(manifest: PathBuf) -> Host {
    let mut host = host();
    host.load_scheduler(&PluginSource::Path(manifest)).unwrap();
    for (i, gpus) in [8, 4, 2].into_iter().enumerate() {
        host.submit(job(&format!("j{i}"), i as u32 % 2, gpus))
            .unwrap();
    }
    host
}

/// A plugin signing key made by `gantry plugin keygen` in `dir`: (its path, its hex public key).
pub fn plugin_key(dir: &Path, cache: &Path) -> (PathBuf, String) {
    let key = dir.join("signer.pk8");
    let out = gantry(&["plugin", "keygen", "-o", key.to_str().unwrap()], cache);
    assert!(out.status.success(), "{}", text(&out).1);
    (key, text(&out).0.trim().to_string())
}

/// Signs the plugin whose manifest is `manifest` with `gantry plugin sign`.
pub fn sign_plugin(manifest: &Path, key: &Path, cache: &Path) {
    let out = gantry(
        &[
            "plugin",
            "sign",
            manifest.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        cache,
    );
    assert!(out.status.success(), "{}", text(&out).1);
}

/// Sends `body` to `url` by `method` (`PUT` or `POST`) with `token`: the status and the body as
/// JSON (as a JSON string when it is not JSON); status 0 with the error when the connection
/// failed, as when the server answers 413 and closes before the client has sent everything.
/// Every wait ends within 5 minutes: bounded, yet long enough for a policy bundle to compile on a
/// loaded machine (over a minute has been seen).
pub fn send_raw(method: &str, url: &str, token: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(300)))
        .build()
        .new_agent();
    let request = match method {
        "PUT" => agent.put(url),
        _ => agent.post(url),
    };
    match request
        .header("Authorization", &format!("Bearer {token}"))
        .send(body)
    {
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.into_body().read_to_string().unwrap_or_default();
            let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
            (status, value)
        }
        Err(e) => (0, serde_json::Value::String(e.to_string())),
    }
}

/// `gantry policy build` of the policy in `source` for `entrypoint` into `bundle`, which must
/// succeed.
pub fn build_policy(source: &Path, entrypoint: &str, bundle: &Path, cache: &Path) {
    let out = gantry(
        &[
            "policy",
            "build",
            source.to_str().unwrap(),
            "-e",
            entrypoint,
            "-o",
            bundle.to_str().unwrap(),
        ],
        cache,
    );
    assert!(out.status.success(), "{}", text(&out).1);
}

/// A policy directory `dir/p` holding `files` (`(name, text)`: modules, tests, `data.json`);
/// returns its path.
pub fn policy_dir(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let p = dir.join("p");
    std::fs::create_dir(&p).unwrap();
    for (name, text) in files {
        std::fs::write(p.join(name), text).unwrap();
    }
    p
}

/// A copy of the shipped policy in `dir/name`, its `data.json` with `from` replaced by `to`;
/// returns the copy's directory.
pub fn shipped_policy_with(dir: &Path, name: &str, from: &str, to: &str) -> PathBuf {
    let shipped = repo().join("policies");
    let copy = dir.join(name);
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(shipped.join("authz.rego"), copy.join("authz.rego")).unwrap();
    let data = std::fs::read_to_string(shipped.join("data.json")).unwrap();
    let changed = data.replace(from, to);
    assert_ne!(changed, data, "the shipped data.json changed shape");
    std::fs::write(copy.join("data.json"), changed).unwrap();
    copy
}

/// A policy bundle like the shipped one, with tenant `language` capped at 16 GPUs (so its larger
/// jobs are refused), built in `dir`; returns its path.
pub fn language_capped_policy(dir: &Path) -> PathBuf {
    let tight = shipped_policy_with(dir, "tight", "\"language\": 1024", "\"language\": 16");
    let bundle = dir.join("tight.tar.gz");
    build_policy(&tight, "gantry/authz/decision", &bundle, dir);
    bundle
}

/// A copy of the shipped policy in `dir/policy` under which researchers may ask for at most 2
/// GPUs; returns its directory.
pub fn strict_policy(dir: &Path) -> PathBuf {
    shipped_policy_with(
        dir,
        "policy",
        r#""researcher": {"max_job_gpus": 256}"#,
        r#""researcher": {"max_job_gpus": 2}"#,
    )
}

/// The shipped policy built for `entrypoint` into `dir/authz.tar.gz`; returns the bundle's path.
pub fn shipped_bundle(dir: &Path, entrypoint: &str) -> PathBuf {
    let bundle = dir.join("authz.tar.gz");
    build_policy(Path::new("policies"), entrypoint, &bundle, dir);
    bundle
}

/// The `request.rejected` entries (refusals no policy decided) of the audit log `log`.
pub fn rejected_entries(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["kind"] == "request.rejected")
        .collect()
}

/// The tallies (source, route, status, count) that `entries` of `request.rejected` hold.
pub fn rejected_tallies(entries: &[serde_json::Value]) -> Vec<serde_json::Value> {
    entries
        .iter()
        .flat_map(|e| {
            e["record"]["tallies"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// `gantry policy eval` of `bundle`'s `entrypoint` on `input`, with `extra` arguments after those.
pub fn policy_eval(
    bundle: &Path,
    entrypoint: &str,
    input: &str,
    extra: &[&str],
    cache: &Path,
) -> Output {
    let b = bundle.to_str().unwrap();
    let args = [
        "policy", "eval", "--bundle", b, "-e", entrypoint, "--input", input,
    ];
    gantry(&[&args[..], extra].concat(), cache)
}

/// Whether these tests run as root: then daemons and agents are given `--job-user nobody`.
pub fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a daemon run by these tests can make cgroups here (root, and a cgroup v2 file system
/// or v1's memory controller).
pub fn cgroups_here() -> bool {
    let root_dir = std::path::Path::new("/sys/fs/cgroup");
    root()
        && (root_dir.join("cgroup.controllers").is_file()
            || root_dir.join("memory/cgroup.procs").is_file())
}

/// NVIDIA GPU device nodes (character devices 195:0 and 195:1, no driver behind them) made in
/// `dir`, which every user may pass, for a job to try: where it is closed, opening one says
/// "Operation not permitted", where it is open "No such device or address". Root only (none
/// made otherwise).
pub fn gpu_device_nodes(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    if !root() {
        return Vec::new();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    (0..2)
        .map(|minor| {
            let path = dir.join(format!("nvidia{minor}"));
            let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
            // SAFETY: a valid C string.
            let made = unsafe {
                libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(195, minor))
            };
            assert_eq!(made, 0, "{}", std::io::Error::last_os_error());
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
            path
        })
        .collect()
}

/// The flags that say whom command jobs run as: `nobody` when these tests run as root, else
/// the test's own user (a throwaway directory; without either, command jobs are refused).
pub fn job_user_args() -> Vec<&'static str> {
    if root() {
        vec!["--job-user", "nobody"]
    } else {
        vec!["--jobs-as-own-user"]
    }
}

/// Whether process `pid` is still alive (a zombie counts as gone).
/// A process a job printed the pid of (`child=$!`, with `pidns=$(readlink /proc/self/ns/pid)`
/// beside): the number is its PID namespace's, and a run has a namespace of its own wherever the
/// daemon can make one, so it is found through the machine's `/proc` (`NSpid`).
#[derive(Debug)]
pub struct JobPid {
    ns: String,
    pid: u32,
}

/// What a job prints for [`JobPid`]: its PID namespace.
pub const PIDNS: &str = "pidns=$(readlink /proc/self/ns/pid)";

impl JobPid {
    /// The pid printed after `key` in `log`, in the namespace printed after `pidns=`.
    pub fn from_log(log: &str, key: &str) -> JobPid {
        let ns = log
            .split("pidns=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no pidns= in {log}"));
        JobPid {
            ns: ns.to_string(),
            pid: number_after(log, key) as u32,
        }
    }

    /// Whether the job runs in a PID namespace of its own.
    pub fn own_namespace(&self) -> bool {
        std::fs::read_link("/proc/self/ns/pid").map_or(true, |own| own.to_str() != Some(&self.ns))
    }

    /// Whether it is alive (not a zombie).
    pub fn alive(&self) -> bool {
        if !self.own_namespace() {
            return alive(self.pid);
        }
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return false;
        };
        entries.flatten().any(|e| {
            let Some(host) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                return false;
            };
            let in_ns = std::fs::read_link(e.path().join("ns/pid"))
                .is_ok_and(|l| l.to_str() == Some(&self.ns));
            let numbered = std::fs::read_to_string(e.path().join("status")).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .and_then(|ids| ids.split_whitespace().last()?.parse::<u32>().ok())
                    == Some(self.pid)
            });
            in_ns && numbered && alive(host)
        })
    }
}

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The path printed after `key` on a line of `text` (to the line's end).
pub fn path_after(text: &str, key: &str) -> std::path::PathBuf {
    text.lines()
        .find_map(|l| l.split(key).nth(1))
        .map(|p| std::path::PathBuf::from(p.trim()))
        .unwrap_or_else(|| panic!("no {key:?} in {text}"))
}

/// The number after `key` in `text`.
pub fn number_after(text: &str, key: &str) -> u64 {
    let at = text
        .find(key)
        .unwrap_or_else(|| panic!("no {key:?} in {text}"))
        + key.len();
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Job `job` at `url` once it is over (succeeded or failed), asked every 100 ms for at most
/// `within`; the test fails naming the job, its state and its log if it is not.
pub fn until_over(
    url: &str,
    token: &str,
    job: &str,
    within: std::time::Duration,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let (_, v) =
            crate::daemon::request(&format!("{url}/v1/jobs/{job}"), "GET", Some(token), None);
        if v["state"] == "succeeded" || v["state"] == "failed" {
            return v;
        }
        if std::time::Instant::now() >= deadline {
            panic!("{job} never ended: {v}\n{}", log_of(url, token, job));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Job `job`'s log messages, joined by newlines.
pub fn log_of(url: &str, token: &str, job: &str) -> String {
    let (status, lines) = crate::daemon::request(
        &format!("{url}/v1/jobs/{job}/logs"),
        "GET",
        Some(token),
        None,
    );
    assert_eq!(status, 200, "{lines}");
    lines
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A cluster of two nodes (`node-a`, `node-b`) of two GPUs each, one tenant (`vision`).
pub const TWO_NODES: &str = r#"
[[tenants]]
name = "vision"

[[nodes]]
name = "node-a"
rack = "r0"
gpus = { count = 2, model = "H100-80GB", memory_mib = 81920 }

[[nodes]]
name = "node-b"
rack = "r0"
gpus = { count = 2, model = "H100-80GB", memory_mib = 81920 }
"#;

/// Makes `path` readable by its owner alone, as the daemon and agents ask of a private key.
pub fn owner_only(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
