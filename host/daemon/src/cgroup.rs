//! Control groups for command jobs: each run gets a cgroup of its own, with its memory and CPU
//! limits where the machine has those controllers (cgroup v2, or v1's `memory` and `cpu`), and
//! a bound on its tasks (processes and threads) where it has `pids`, so a fork bomb stops at
//! it instead of taking the node with it; its
//! program joins it before it execs, so everything it starts is in it, including what leaves its
//! process group (`setsid`). When the run ends everything in the cgroup is killed, and a daemon
//! that starts again kills what its previous life left running (a crash, `kill -9`): a command
//! job never runs twice at once on this machine.
//!
//! The cgroups of one daemon live under `gantry-<scope>` (the scope names its data directory) in
//! the daemon's own cgroup, so daemons of different data directories never touch each other's.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::gpu_nodes::GpuNodes;

/// The hierarchy this daemon puts runs in.
#[derive(Debug, Clone)]
pub struct Cgroups {
    /// Directories holding the runs' cgroups, one per hierarchy used (v2: one).
    scopes: Vec<Scope>,
    /// The scope's lock, held while any copy lives ([`LOCKS`]).
    _lock: Option<Arc<std::fs::File>>,
}

#[derive(Debug, Clone)]
struct Scope {
    dir: PathBuf,
    controller: Controller,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Controller {
    /// cgroup v2: memory and CPU in one directory.
    Unified,
    /// cgroup v1 `memory`.
    Memory,
    /// cgroup v1 `cpu`.
    Cpu,
    /// cgroup v1 `pids`.
    Pids,
    /// cgroup v1 `devices`: which device nodes a run may open ([`crate::gpu_nodes`]).
    Devices,
}

/// What a run may use; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    /// Memory, MiB.
    pub memory_mib: Option<u64>,
    /// CPUs (a fraction is a share of one core's time).
    pub cpus: Option<f64>,
}

/// Which memory limit a run reached ([`RunGroup::memory_reached`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryReached {
    /// Its own.
    Own,
    /// All runs' together (the runs' directory's).
    AllRuns,
    /// Neither: the machine ran short of memory.
    Neither,
}

/// What the operator holds every run to, wherever the machine's controllers can (a machine
/// without one runs jobs without that bound), whatever the job asks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// The most tasks at once (`pids`).
    pub max_pids: u64,
    /// The memory limit of a run that asks for none, MiB.
    pub memory_mib: Option<u64>,
    /// What all runs together may use, MiB: the limit of the runs' directory, as the kubelet
    /// sets one on the directory of its pods.
    pub all_memory_mib: Option<u64>,
}

/// The most tasks (processes and threads) one run may have at once, where the machine has the
/// `pids` controller: the operator's bound on every run (`--max-job-pids`), not a job's ask,
/// and set wherever it can be (a machine without the controller runs jobs without it).
pub const DEFAULT_MAX_PIDS: u64 = 16_384;

const ROOT: &str = "/sys/fs/cgroup";

/// Of the tasks the daemon may have (its cgroup's `pids.max` and those above it, the kernel's
/// `pid_max` and `threads-max`), what all its runs together may hold: the rest, a quarter and at
/// least 512, is the daemon's own. Found by a review: under systemd's default `TasksMax` (4,915
/// here), one tenant's run within its own bound (16,384) took every task the daemon's cgroup
/// had; the daemon's agent could not start a thread, stopped, and every tenant's GPUs left
/// service.
pub fn runs_task_budget(limits: impl IntoIterator<Item = u64>) -> Option<u64> {
    let available = limits.into_iter().min()?;
    Some(available.saturating_sub((available / 4).max(512)).max(1))
}

/// cgroup v1's limit of a cgroup's socket buffers (TCP, UDP and the other protocols the kernel
/// counts in `net.ipv4.tcp_mem` and the like).
const TCP_LIMIT: &str = "memory.kmem.tcp.limit_in_bytes";

/// Of the socket buffers the kernel lets the whole machine's TCP hold (`net.ipv4.tcp_mem`'s
/// hard limit, counted across every network namespace), what all runs together may hold, in
/// bytes: half (by default the low mark, below which the kernel does not regulate TCP). The
/// rest is the daemon's, its agent's and the node's. Found by a review: cgroup v1 counts no
/// run's socket buffers unless given a limit, so a run bounded at 64 MiB held 257 MiB of them
/// on its own loopback, and a few more connections would have taken the machine's TCP to its
/// hard limit, where every socket's allocations fail: the daemon's API, its agent's heartbeats
/// and etcd's with them.
pub fn runs_socket_budget() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem").ok()?;
    let hard: u64 = text.split_whitespace().nth(2)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    Some(hard.saturating_mul(page) / 2)
}

/// The task limits above a runs' directory whose parent is `own` in the hierarchy mounted at
/// `mount` (each `pids.max` up to the mount, `max` being none), and the kernel's.
fn task_limits(mount: &Path, own: &Path) -> Vec<u64> {
    let number = |p: &Path| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    let mut limits: Vec<u64> = ["/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max"]
        .iter()
        .filter_map(|p| number(Path::new(p)))
        .collect();
    let mut dir = Some(own);
    while let Some(d) = dir.filter(|d| d.starts_with(mount) && *d != mount) {
        limits.extend(number(&d.join("pids.max")));
        dir = d.parent();
    }
    limits
}

/// A scope name for `identity` (a data directory's path, an agent's control plane and node): a
/// hash, the same across restarts and versions, so a restarted daemon or agent finds (and kills)
/// what its previous life left, and never another's.
pub fn scope_for(identity: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, identity);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The daemon's own cgroup path in the hierarchy whose `/proc/self/cgroup` line is `wanted`
/// (`""` for v2, a controller name for v1).
fn own_path(wanted: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = if wanted.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == wanted)
        };
        hit.then(|| path.to_string())
    })
}

/// `mount/own/gantry-<scope>` where the daemon may create it (made with the first run, removed
/// with the last, so a daemon that runs no command leaves nothing); falls back to the mount's
/// root when the daemon's own cgroup is not visible there (a cgroup namespace).
fn scope_dir(mount: &Path, own: Option<String>, scope: &str) -> Option<PathBuf> {
    let own = own
        .map(|p| mount.join(p.trim_start_matches('/')))
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| mount.to_path_buf());
    let c_own = CString::new(own.as_os_str().as_bytes()).ok()?;
    // SAFETY: a valid C string; access has no other preconditions.
    let writable = unsafe { libc::access(c_own.as_ptr(), libc::W_OK) } == 0;
    writable.then(|| own.join(format!("gantry-{scope}")))
}

/// Where each scope's lock lives: a process holding a scope's cgroups holds a shared `flock` on
/// `<LOCKS>/gantry-<scope>.lock` for its life, so a scope whose lock another can take exclusively
/// belongs to a process that is gone ([`Cgroups::sweep_dead_scopes`]). A fixed, root-only place:
/// not the temporary directory, which differs between processes (`PrivateTmp`, a shell's
/// `TMPDIR`), and a scope found without a lock there is never taken for a dead one.
const LOCKS: &str = "/run/gantry/cgroups";

/// Whether `name` is a scope directory's name: `gantry-` and [`scope_for`]'s 16 hex digits.
fn is_scope_name(name: &str) -> bool {
    name.strip_prefix("gantry-")
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Opens `path` (not following a link, creating it when `create`) and takes `operation`'s
/// `flock`; `None` when it cannot.
fn lock(path: &Path, create: bool, operation: libc::c_int) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    // SAFETY: the descriptor is open for the call.
    (unsafe { libc::flock(file.as_raw_fd(), operation) } == 0).then_some(file)
}

/// This process's shared lock on scope directory `name` ([`LOCKS`]), held for its life; `None`
/// where there is no root-only place for it (the scope then is never swept by another).
fn hold(name: &str) -> Option<Arc<std::fs::File>> {
    use std::os::unix::fs::DirBuilderExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let dir = Path::new(LOCKS);
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir);
    if !locks_dir_safe() {
        tracing::warn!(dir = LOCKS, "no safe place for this process's cgroup lock");
        return None;
    }
    let path = dir.join(format!("{name}.lock"));
    // A sweep removes a dead scope's lock file holding it exclusively: the shared lock waits
    // for that, and is taken again on a fresh file when its file went meanwhile. A lock file
    // that cannot be made (a read-only /run) may still be there: held read-only then.
    for _ in 0..8 {
        let Some(file) =
            lock(&path, true, libc::LOCK_SH).or_else(|| lock(&path, false, libc::LOCK_SH))
        else {
            tracing::error!(
                lock = %path.display(),
                "cannot hold this process's cgroup lock: another start may take its empty \
                 cgroups for a dead process's"
            );
            return None;
        };
        if is_at(&file, &path) {
            return Some(Arc::new(file));
        }
    }
    None
}

/// Whether `file` is still the file at `path` (not one a sweep removed from there meanwhile).
fn is_at(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(ours), Ok(there)) => there.ino() == ours.ino() && there.dev() == ours.dev(),
        _ => false,
    }
}

/// Whether [`LOCKS`] and its parent are root's directories no one else may write to: only then
/// do its lock files say who lives.
fn locks_dir_safe() -> bool {
    use std::os::unix::fs::MetadataExt;
    let dir = Path::new(LOCKS);
    [Some(dir), dir.parent()].into_iter().flatten().all(|d| {
        std::fs::symlink_metadata(d)
            .is_ok_and(|m| m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0)
    })
}

/// Takes the lock of a scope whose process is gone: exclusively, on the file still at `path`,
/// root's; `None` while a process holds it (or it is not such a file).
fn take_dead(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let file = lock(path, false, libc::LOCK_EX | libc::LOCK_NB)?;
    let root_owned = file.metadata().is_ok_and(|m| m.uid() == 0 && m.is_file());
    (root_owned && is_at(&file, path)).then_some(file)
}

impl Cgroups {
    /// The cgroups this daemon can make for runs on this machine, under a directory named for
    /// `scope`; `None` where it can make none (no cgroup file system, or not writable). The
    /// scope's lock is taken first ([`LOCKS`]), so no other start takes it for a dead one.
    pub fn detect(scope: &str) -> Option<Self> {
        let lock = hold(&format!("gantry-{scope}"));
        let found = Self::detect_unmarked(scope)?;
        Some(Self {
            _lock: lock,
            ..found
        })
    }

    fn detect_unmarked(scope: &str) -> Option<Self> {
        let root = Path::new(ROOT);
        if root.join("cgroup.controllers").is_file() {
            let dir = scope_dir(root, own_path(""), scope)?;
            return Some(Self {
                scopes: vec![Scope {
                    dir,
                    controller: Controller::Unified,
                }],
                _lock: None,
            });
        }
        let scopes: Vec<Scope> = [
            ("memory", Controller::Memory),
            ("cpu", Controller::Cpu),
            ("pids", Controller::Pids),
            ("devices", Controller::Devices),
        ]
        .into_iter()
        .filter_map(|(name, controller)| {
            let mount = root.join(name);
            mount.join("cgroup.procs").is_file().then_some(())?;
            let dir = scope_dir(&mount, own_path(name), scope)?;
            Some(Scope { dir, controller })
        })
        .collect();
        scopes
            .iter()
            .any(|s| s.controller == Controller::Memory)
            .then_some(Self {
                scopes,
                _lock: None,
            })
    }

    /// What the runs' cgroups can limit: (memory, CPU).
    pub fn limits_available(&self) -> (bool, bool) {
        let has = |file: &str| {
            self.scopes.iter().any(|s| match s.controller {
                Controller::Unified => {
                    std::fs::read_to_string(s.dir.join("cgroup.subtree_control"))
                        .is_ok_and(|c| c.split_whitespace().any(|x| x == file))
                }
                Controller::Memory => file == "memory",
                Controller::Cpu => file == "cpu",
                Controller::Pids => file == "pids",
                Controller::Devices => false,
            })
        };
        (has("memory"), has("cpu"))
    }

    /// Kills everything in the runs' cgroups a previous daemon of this scope left behind and
    /// removes them; returns how many processes were killed.
    pub fn reap_leftovers(&self) -> usize {
        let mut killed = 0;
        for scope in &self.scopes {
            let Ok(entries) = std::fs::read_dir(&scope.dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let dir = entry.path();
                if dir.is_dir() {
                    killed += kill_all(&dir);
                    remove(&dir);
                }
            }
            let _ = std::fs::remove_dir(&scope.dir);
        }
        killed
    }

    /// Removes the scopes beside this one (in the same parents, of this user) whose process is
    /// gone (their lock free, [`LOCKS`]) and that hold nothing: daemons and agents killed
    /// outright whose data directory or node never started again (a day of tests left 118 such
    /// directories here). A scope with a process in it stays, for its own next start to reap;
    /// one without a lock file is nobody's to judge. Returns how many scopes it removed.
    pub fn sweep_dead_scopes(&self) -> usize {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let mut found: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
        for scope in &self.scopes {
            let Some(Ok(entries)) = scope.dir.parent().map(std::fs::read_dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let dir = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                let ours = std::fs::symlink_metadata(&dir)
                    .is_ok_and(|m| m.is_dir() && std::os::unix::fs::MetadataExt::uid(&m) == uid);
                if is_scope_name(&name) && dir != scope.dir && ours {
                    found.entry(name).or_default().push(dir);
                }
            }
        }
        if !locks_dir_safe() {
            return 0;
        }
        let mut swept = 0;
        for (name, dirs) in found {
            let path = Path::new(LOCKS).join(format!("{name}.lock"));
            // Held exclusively while its directories go: a start of that scope waits for it.
            let Some(_dead) = take_dead(&path) else {
                continue;
            };
            let mut left = false;
            for dir in &dirs {
                if let Ok(runs) = std::fs::read_dir(dir) {
                    for run in runs.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
                        // Only an empty cgroup can be removed: a busy one stays.
                        let _ = std::fs::remove_dir(&run);
                    }
                }
                left |= std::fs::remove_dir(dir).is_err();
            }
            if !left {
                let _ = std::fs::remove_file(&path);
                swept += 1;
            }
        }
        // The lock files of processes that are gone and made no cgroups (most daemons run no
        // command): removed too, held while they go.
        let parents: Vec<&Path> = self.scopes.iter().filter_map(|s| s.dir.parent()).collect();
        if let Ok(entries) = std::fs::read_dir(LOCKS) {
            for path in entries.flatten().map(|e| e.path()) {
                let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".lock"))
                    .filter(|n| is_scope_name(n))
                else {
                    continue;
                };
                if parents.iter().any(|p| p.join(name).exists()) {
                    continue;
                }
                if let Some(_dead) = take_dead(&path) {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        swept
    }

    /// A new cgroup for run `run` with `resources` set, held to `bounds` where the machine has
    /// their controllers, and opening no NVIDIA GPU node but `gpus`'s; a limit of `resources`
    /// the machine cannot enforce is an error, and so are GPU nodes it cannot close on a machine
    /// whose driver has GPUs.
    pub fn create(
        &self,
        run: &str,
        resources: Resources,
        bounds: Bounds,
        gpus: &GpuNodes,
    ) -> std::io::Result<RunGroup> {
        for scope in &self.scopes {
            std::fs::create_dir_all(&scope.dir)?;
            if matches!(scope.controller, Controller::Unified | Controller::Pids) {
                // All runs together, below the daemon's own bound (where the controller is on).
                let mount = Path::new(ROOT);
                let own = scope.dir.parent().unwrap_or(mount);
                if let Some(budget) = runs_task_budget(task_limits(mount, own)) {
                    let _ = std::fs::write(scope.dir.join("pids.max"), budget.to_string());
                }
            }
            if let Some(mib) = bounds.all_memory_mib {
                // All runs together: at their bound the kernel's OOM killer takes one of theirs,
                // before the machine runs short and stalls the daemon (a limit below what the
                // runs hold now is refused: set again at the next run).
                let bytes = (mib << 20).to_string();
                match scope.controller {
                    Controller::Unified => {
                        let _ = std::fs::write(scope.dir.join("memory.max"), &bytes);
                    }
                    Controller::Memory => {
                        let _ = std::fs::write(scope.dir.join("memory.limit_in_bytes"), &bytes);
                    }
                    _ => {}
                }
            }
            if scope.controller == Controller::Memory
                && let Some(bytes) = runs_socket_budget()
            {
                // All runs' socket buffers together, below the machine's (cgroup v1 counts them
                // apart from memory, and only in a cgroup given this limit: each run's, below).
                let _ = std::fs::write(scope.dir.join(TCP_LIMIT), bytes.to_string());
            }
            if scope.controller == Controller::Unified {
                // Limits need the controllers enabled for the runs' directories; without them
                // the cgroup still gathers and kills everything a run starts.
                let _ = std::fs::write(
                    scope.dir.join("cgroup.subtree_control"),
                    "+memory +cpu +pids",
                );
            }
        }
        let (memory, cpu) = self.limits_available();
        let refuse = |what: &str| {
            Err(std::io::Error::other(format!(
                "this machine's cgroups have no {what} controller for jobs"
            )))
        };
        if resources.memory_mib.is_some() && !memory {
            return refuse("memory");
        }
        if resources.cpus.is_some() && !cpu {
            return refuse("cpu");
        }
        let resources = Resources {
            memory_mib: resources
                .memory_mib
                .or(bounds.memory_mib.filter(|_| memory)),
            ..resources
        };
        let mut group = RunGroup {
            dirs: Vec::new(),
            procs: Vec::new(),
            memory: None,
            memory_mib: resources.memory_mib,
            gpus_closed: false,
        };
        for scope in &self.scopes {
            let dir = scope.dir.join(run);
            make_run_dir(&scope.dir, &dir)?;
            group.dirs.push(dir.clone());
            set_limits(&dir, scope.controller, resources)?;
            if matches!(scope.controller, Controller::Unified | Controller::Devices) {
                match close_gpu_nodes(&dir, scope.controller, gpus) {
                    Ok(()) => group.gpus_closed = true,
                    // Without the driver's GPUs there is nothing to close (and on cgroup v2
                    // a machine may refuse device programs): the run goes on.
                    Err(e) if !crate::gpu_nodes::driver_has_gpus() => {
                        tracing::debug!(error = %e, "GPU device nodes not closed (no GPUs here)");
                    }
                    Err(e) => {
                        return Err(std::io::Error::new(
                            e.kind(),
                            format!("closing the nodes of GPUs it was not given: {e}"),
                        ));
                    }
                }
            }
            if matches!(scope.controller, Controller::Unified | Controller::Pids) {
                // Where v2 has no `pids` enabled the file is missing: no bound to set there.
                let _ = std::fs::write(dir.join("pids.max"), bounds.max_pids.to_string());
            }
            if matches!(scope.controller, Controller::Unified | Controller::Memory) {
                group.memory = Some((dir.clone(), scope.controller));
            }
            let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
                .map_err(std::io::Error::other)?;
            group.procs.push(procs);
        }
        if !group.gpus_closed && crate::gpu_nodes::driver_has_gpus() {
            return Err(std::io::Error::other(
                "this machine's cgroups have no device control (cgroup v2, or v1's `devices`) to \
                 close the nodes of GPUs a run was not given",
            ));
        }
        Ok(group)
    }
}

/// Closes every NVIDIA GPU node but `gpus`'s to cgroup `dir`: v1 refuses each closed minor
/// (`devices.deny`, one rule a write; the default stays allow, so other devices are untouched),
/// v2 runs a device program ([`crate::gpu_nodes::attach_program`]).
fn close_gpu_nodes(dir: &Path, controller: Controller, gpus: &GpuNodes) -> std::io::Result<()> {
    use std::io::Write;
    match controller {
        Controller::Unified => crate::gpu_nodes::attach_program(dir, gpus),
        _ => {
            let mut deny = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("devices.deny"))?;
            for minor in gpus.closed() {
                let rule = format!("c {}:{minor} rwm", crate::gpu_nodes::NVIDIA_MAJOR);
                deny.write_all(rule.as_bytes())?;
            }
            Ok(())
        }
    }
}

/// Creates run directory `dir` in `scope`, which the last run of another may be removing: made
/// again when it vanished in between.
fn make_run_dir(scope: &Path, dir: &Path) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 8 => {
                tries += 1;
                std::fs::create_dir_all(scope)?;
            }
            other => return other,
        }
    }
}

fn set_limits(dir: &Path, controller: Controller, r: Resources) -> std::io::Result<()> {
    let write = |file: &str, value: String| std::fs::write(dir.join(file), value);
    const PERIOD_US: u64 = 100_000;
    let quota = |cpus: f64| ((cpus * PERIOD_US as f64).round() as u64).max(1_000);
    match controller {
        Controller::Unified => {
            if let Some(mib) = r.memory_mib {
                write("memory.max", (mib << 20).to_string())?;
                // Held to its memory, not spilling into swap.
                let _ = write("memory.swap.max", "0".into());
            }
            if let Some(cpus) = r.cpus {
                write("cpu.max", format!("{} {PERIOD_US}", quota(cpus)))?;
            }
        }
        Controller::Memory => {
            if let Some(mib) = r.memory_mib {
                write("memory.limit_in_bytes", (mib << 20).to_string())?;
                // Memory and swap together, where swap is accounted: no spilling into swap.
                let _ = write("memory.memsw.limit_in_bytes", (mib << 20).to_string());
            }
            // Its socket buffers, which v1 counts apart from its memory and nowhere at all
            // without this limit: held to its memory bound (v2 counts them in `memory.max`),
            // and to all runs' share.
            let budget = runs_socket_budget();
            let bound = r.memory_mib.map(|mib| mib << 20);
            if let Some(bytes) = bound.into_iter().chain(budget).min() {
                // A kernel without it (v1's socket limits are deprecated, or kernel memory
                // accounting is off) runs them as before, said once.
                if let Err(e) = write(TCP_LIMIT, bytes.to_string()) {
                    static SAID: std::sync::Once = std::sync::Once::new();
                    SAID.call_once(|| {
                        tracing::warn!(
                            error = %e,
                            "{TCP_LIMIT} could not be set: command runs' socket buffers are not \
                             bounded, and one run can take every one the machine's TCP may hold"
                        )
                    });
                }
            }
        }
        Controller::Cpu => {
            if let Some(cpus) = r.cpus {
                write("cpu.cfs_period_us", PERIOD_US.to_string())?;
                write("cpu.cfs_quota_us", quota(cpus).to_string())?;
            }
        }
        Controller::Pids | Controller::Devices => {}
    }
    Ok(())
}

/// The pids in cgroup `dir`.
fn pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills everything in cgroup `dir` (also what forks meanwhile) and returns how many it killed.
fn kill_all(dir: &Path) -> usize {
    // cgroup v2 kills the whole cgroup atomically where the kernel has `cgroup.kill` (5.14+).
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let mut killed = 0;
    for _ in 0..200 {
        let pids = pids(dir);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill has no memory preconditions.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    killed
}

/// Removes cgroup `dir` once its processes are gone (they leave it as they are reaped).
fn remove(dir: &Path) {
    for _ in 0..200 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    tracing::warn!(cgroup = %dir.display(), "a run's cgroup could not be removed");
}

/// Moves the calling process into the cgroups whose `cgroup.procs` are `procs` (async-signal-safe).
fn join(procs: &[CString]) -> std::io::Result<()> {
    for procs in procs {
        // SAFETY: `procs` is a valid C string; open, write and close are async-signal-safe.
        unsafe {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(error);
            }
        }
    }
    Ok(())
}

/// One run's cgroup (a directory per hierarchy): everything in it is killed, and it is removed,
/// when dropped.
#[derive(Debug)]
pub struct RunGroup {
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each, ready for the child between fork and exec.
    procs: Vec<CString>,
    /// Where its memory is accounted.
    memory: Option<(PathBuf, Controller)>,
    /// Its memory limit, MiB, where it has one.
    memory_mib: Option<u64>,
    /// Whether the nodes of GPUs it was not given are closed to it.
    gpus_closed: bool,
}

impl RunGroup {
    /// Its memory limit, MiB: what it asked for, or the operator's bound; `None`: unbounded.
    pub fn memory_mib(&self) -> Option<u64> {
        self.memory_mib
    }

    /// Whether the nodes of GPUs the run was not given are closed to it (only where the machine
    /// has no NVIDIA GPUs may they not be).
    pub fn gpus_closed(&self) -> bool {
        self.gpus_closed
    }

    /// What moves the calling process into the run's cgroups: for the child between fork and
    /// exec (before it gives up root), so only async-signal-safe calls.
    /// Its directories, one per hierarchy.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    pub fn joiner(&self) -> impl Fn() -> std::io::Result<()> + Send + Sync + 'static {
        let procs = self.procs.clone();
        move || join(&procs)
    }

    /// Kills everything in the run's cgroups.
    pub fn kill_all(&self) {
        for dir in &self.dirs {
            kill_all(dir);
        }
    }

    /// Which memory limit the run reached, if any: its own, else all runs' (its directory's),
    /// else neither (the machine ran short); its own where the kernel does not say. v2 counts
    /// each time a cgroup's use reaches its own `memory.max` (`memory.events.local`'s `max`);
    /// v1 keeps no such count (its `failcnt` stays 0 here), so a peak within a huge page of the
    /// limit says it.
    pub fn memory_reached(&self) -> MemoryReached {
        let Some((dir, controller)) = &self.memory else {
            return MemoryReached::Own;
        };
        let reached = |dir: &Path| {
            let read = |file: &str, key: &str| {
                std::fs::read_to_string(dir.join(file)).ok().and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
                })
            };
            match controller {
                Controller::Unified => read("memory.events.local", "max ").map(|hits| hits > 0),
                _ => Some(
                    read("memory.max_usage_in_bytes", "")?.saturating_add(2 << 20)
                        >= read("memory.limit_in_bytes", "")?,
                ),
            }
        };
        match reached(dir) {
            Some(true) | None => MemoryReached::Own,
            Some(false) => match dir.parent().and_then(reached) {
                Some(true) => MemoryReached::AllRuns,
                _ => MemoryReached::Neither,
            },
        }
    }

    /// How many times the kernel's OOM killer killed a process of the run for its memory limit.
    pub fn oom_kills(&self) -> u64 {
        let Some((dir, controller)) = &self.memory else {
            return 0;
        };
        let file = match controller {
            Controller::Unified => "memory.events",
            _ => "memory.oom_control",
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for RunGroup {
    fn drop(&mut self) {
        self.kill_all();
        for dir in &self.dirs {
            remove(dir);
            // The daemon's directory goes with its last run (another run keeps it).
            if let Some(scope) = dir.parent() {
                let _ = std::fs::remove_dir(scope);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found at a cleanup: 118 empty `gantry-<scope>` directories (each with an empty run
    /// cgroup inside) left by daemons killed in tests, whose data directories never started
    /// again to reap them. A start removes the scopes beside its own whose process is gone (its
    /// lock free) and that hold nothing. Never killed by another's start (a review: with marks
    /// under `$TMPDIR`, a start with another `TMPDIR` killed every live daemon's jobs): a busy
    /// dead scope, a live one, one without a lock file all stay. Root with cgroups only.
    #[test]
    fn a_start_sweeps_empty_scopes_of_dead_daemons_and_never_a_live_or_busy_one() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to make cgroups");
            return;
        }
        let own = scope_for(b"cgroup tests: the sweeping daemon");
        let Some(cgroups) = Cgroups::detect(&own) else {
            eprintln!("skipped: this machine gives no cgroups");
            return;
        };
        let run = cgroups
            .create(
                "vision-run",
                Resources::default(),
                Bounds {
                    max_pids: 64,
                    memory_mib: None,
                    all_memory_mib: None,
                },
                &GpuNodes::none(),
            )
            .unwrap();
        let name = |who: &str| format!("gantry-{}", scope_for(who.as_bytes()));
        let (dead, busy, live, unknown) = (
            name("cgroup tests: a killed daemon"),
            name("cgroup tests: a killed daemon whose run lives on"),
            name("cgroup tests: a live daemon"),
            name("cgroup tests: a daemon of another kind"),
        );
        let parents: Vec<PathBuf> = cgroups
            .scopes
            .iter()
            .filter_map(|s| s.dir.parent().map(Path::to_path_buf))
            .collect();
        for parent in &parents {
            for scope in [&dead, &busy, &live, &unknown] {
                std::fs::create_dir_all(parent.join(scope).join("run")).unwrap();
            }
        }
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(
            parents[0].join(&busy).join("run/cgroup.procs"),
            child.id().to_string(),
        )
        .unwrap();
        let lock_of = |scope: &str| Path::new(LOCKS).join(format!("{scope}.lock"));
        // Dead: lock files no process holds (made last: a sweep between sees no lock file).
        std::fs::write(lock_of(&dead), b"").unwrap();
        std::fs::write(lock_of(&busy), b"").unwrap();
        let held = hold(&live).unwrap();

        cgroups.sweep_dead_scopes();
        for parent in &parents {
            assert!(!parent.join(&dead).exists(), "{}", parent.display());
            assert!(parent.join(&live).join("run").is_dir());
            assert!(parent.join(&unknown).join("run").is_dir());
        }
        assert!(!lock_of(&dead).exists());
        assert!(
            parents[0].join(&busy).join("run").is_dir(),
            "a busy scope stays"
        );
        assert!(child.try_wait().unwrap().is_none(), "and its process lives");
        assert!(
            cgroups
                .scopes
                .iter()
                .all(|s| s.dir.join("vision-run").is_dir()),
            "its own stays"
        );
        // Once its process is gone, it goes too.
        child.kill().unwrap();
        child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        cgroups.sweep_dead_scopes();
        assert!(!parents[0].join(&busy).exists());
        drop(run);
        drop(held);
        for parent in &parents {
            for scope in [&live, &unknown] {
                let _ = std::fs::remove_dir(parent.join(scope).join("run"));
                let _ = std::fs::remove_dir(parent.join(scope));
            }
        }
        let _ = std::fs::remove_file(lock_of(&live));
    }

    /// What `cat` says of each of `nodes` when run in the cgroups whose `cgroup.procs` are
    /// `procs`: one line per node.
    fn opened_in(procs: Vec<CString>, nodes: &[PathBuf]) -> String {
        use std::os::unix::process::CommandExt;
        let mut cat = std::process::Command::new("sh");
        cat.arg("-c")
            .arg("for n in \"$@\"; do cat \"$n\" 2>&1 && echo \"$n: opened\"; done")
            .arg("sh")
            .args(nodes);
        // SAFETY: `join` makes only async-signal-safe calls.
        unsafe { cat.pre_exec(move || join(&procs)) };
        let out = cat.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Found by reading issue 13's binding against a hostile job: `CUDA_VISIBLE_DEVICES` only
    /// asks the CUDA runtime to hide GPUs; a program that unset it, or opened `/dev/nvidia<N>`
    /// itself, reached every GPU of the node, other tenants' included. A run's cgroup now
    /// closes every NVIDIA GPU node but its own GPUs', by device number, wherever the node is:
    /// nodes made here (195:2, 195:3, and `nvidiactl`, 195:255), no driver behind them, so an
    /// open node answers "No such device or address" and a closed one "Operation not
    /// permitted". Through the machine's cgroups (v1 `devices` here), and through the cgroup v2
    /// device program wherever a v2 hierarchy is mounted. Root with cgroups only.
    #[test]
    fn a_run_opens_the_device_nodes_of_its_own_gpus_and_no_other() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to make cgroups and device nodes");
            return;
        }
        let dev = tempfile::tempdir().unwrap();
        let nodes: Vec<PathBuf> = [("nvidia2", 2), ("nvidia3", 3), ("nvidiactl", 255)]
            .iter()
            .map(|(name, minor)| {
                let path = dev.path().join(name);
                let c = CString::new(path.as_os_str().as_bytes()).unwrap();
                let number = libc::makedev(crate::gpu_nodes::NVIDIA_MAJOR, *minor);
                // SAFETY: a valid C string.
                let made = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, number) };
                assert_eq!(made, 0, "{}", std::io::Error::last_os_error());
                path
            })
            .collect();
        let expect = |said: &str, how: &str| {
            let line = |n: usize| {
                said.lines()
                    .find(|l| l.contains(nodes[n].to_str().unwrap()))
            };
            assert!(
                line(0).is_some_and(|l| l.contains("Operation not permitted")),
                "{how}: another GPU's node is closed: {said}"
            );
            assert!(
                line(1).is_some_and(|l| l.contains("No such device")),
                "{how}: its own GPU's node is open: {said}"
            );
            assert!(
                line(2).is_some_and(|l| l.contains("No such device")),
                "{how}: nvidiactl is open: {said}"
            );
        };
        let open = GpuNodes::only(vec![3]).unwrap();
        let bounds = Bounds {
            max_pids: 64,
            memory_mib: None,
            all_memory_mib: None,
        };
        let mut unified_done = false;
        match Cgroups::detect(&scope_for(b"cgroup tests: GPU nodes")) {
            Some(cgroups)
                if cgroups
                    .scopes
                    .iter()
                    .any(|s| s.controller != Controller::Cpu) =>
            {
                let run = cgroups
                    .create("gpu-run", Resources::default(), bounds, &open)
                    .unwrap();
                if run.gpus_closed() {
                    expect(&opened_in(run.procs.clone(), &nodes), "the run's cgroups");
                    unified_done = cgroups.scopes[0].controller == Controller::Unified;
                } else {
                    eprintln!("this machine's cgroups have no device control");
                }
            }
            _ => eprintln!("this machine gives no cgroups"),
        }
        // The v2 device program, where a v2 hierarchy is mounted beside v1 (as here).
        let unified = Path::new(ROOT).join("unified");
        if !unified_done && unified.join("cgroup.procs").is_file() {
            let dir = unified.join(format!("gantry-test-gpu-nodes-{}", std::process::id()));
            std::fs::create_dir(&dir).unwrap();
            crate::gpu_nodes::attach_program(&dir, &open).unwrap();
            let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
            let said = opened_in(vec![procs], &nodes);
            std::fs::remove_dir(&dir).unwrap();
            expect(&said, "the cgroup v2 device program");
        }
    }

    /// Found by a review: one tenant's run, within its own task bound, took every task the
    /// daemon's cgroup had (systemd's `TasksMax`), and the daemon's agent, unable to start a
    /// thread, stopped: every tenant's GPUs left service. All runs together are held below the
    /// daemon's own bound, a quarter of it (at least 512 tasks) kept for the daemon.
    #[test]
    fn all_runs_together_leave_the_daemon_tasks_of_its_own() {
        assert_eq!(runs_task_budget([4915, 32768, 190_000]), Some(3687));
        assert_eq!(runs_task_budget([1000]), Some(488));
        assert_eq!(
            runs_task_budget([100]),
            Some(1),
            "never 0: a run could not start"
        );
        assert_eq!(runs_task_budget([]), None);
        // The limits above a runs' directory: each cgroup's up to the mount, and the kernel's.
        let mount = tempfile::tempdir().unwrap();
        let own = mount.path().join("system.slice/gantry.service");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(own.join("pids.max"), "4915\n").unwrap();
        std::fs::write(mount.path().join("system.slice/pids.max"), "max\n").unwrap();
        std::fs::write(mount.path().join("pids.max"), "7\n").unwrap();
        let limits = task_limits(mount.path(), &own);
        assert!(limits.contains(&4915), "{limits:?}");
        assert!(
            !limits.contains(&7),
            "the mount's own is not a cgroup's: {limits:?}"
        );
        assert!(runs_task_budget(limits) <= Some(3687));
    }
}
