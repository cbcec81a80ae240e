//! Command jobs: a program the user brings (`argv`, environment, working directory), run on this
//! machine in a process group of its own, under the unprivileged user the operator names, and
//! seeing only the GPUs it was placed on (`CUDA_VISIBLE_DEVICES`). Its output goes into the job's
//! log while it runs (bounded); its exit status decides `succeeded` or `failed`; its wall-time
//! limit and a cancel stop it with SIGTERM, then SIGKILL after a grace period. However it ends,
//! its whole process group is killed then, so nothing it started keeps the GPUs.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Daemon;
use super::db::JobRecord;
use super::lifecycle::{RunControl, RunEnd};
use crate::runguard::RunGuard;

/// What a command job runs (the `command` field of `POST /v1/jobs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// The program and its arguments; the program is looked up in `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// Environment variables, on top of a minimal `PATH` and `HOME`; the daemon's own
    /// environment is never passed on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute); default: a fresh scratch directory, removed after the run (or,
    /// after a crash, by the next daemon or agent: see [`crate::scratch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Seconds it may run before it is stopped and fails; default and most: the daemon's
    /// `--max-wall-time-s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_time_s: Option<f64>,
    /// Memory it may use, MiB (its cgroup's limit; the kernel's OOM killer acts beyond).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// CPUs it may use (its cgroup's CPU quota; 0.5 is half of one core's time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// What its scratch directory may hold, MiB (a file system of that size of its own, see
    /// [`crate::scratchfs`]); default and most: the daemon's `--max-job-disk-mib`. Not with
    /// `cwd`: a directory the job names is not its scratch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
}

/// The most memory a command may ask for, MiB (16 TiB).
pub const MAX_MEMORY_MIB: u64 = 16 << 20;
/// The most a command's scratch directory may hold, MiB (16 TiB less 1 MiB: ext4's largest
/// file, which holds it, on the disk it stands for).
pub const MAX_DISK_MIB: u64 = (16 << 20) - 1;
/// The most CPUs a command may ask for.
pub const MAX_CPUS: f64 = 4096.0;

/// The most arguments (program included) a command may have.
pub const MAX_ARGS: usize = 256;
/// The most environment variables a command may set.
pub const MAX_ENV: usize = 128;
/// The longest argument, variable value or working directory, in bytes.
pub const MAX_STRING: usize = 4096;
/// The most bytes of arguments, variables and working directory together.
pub const MAX_TOTAL: usize = 64 << 10;
/// The longest output line kept; the rest of a longer line is dropped (and marked).
pub const MAX_LINE: usize = 4096;
/// Variables the daemon sets and a command may not: what it is given is decided by its placement.
const RESERVED_ENV: &[&str] = &["CUDA_VISIBLE_DEVICES", "PATH", "HOME"];
/// The prefix of the variables the daemon sets about the job.
const GANTRY_ENV: &str = "GANTRY_";

/// How the daemon runs command jobs (`gantry up --job-user`, `--kill-grace-s`, ...).
#[derive(Debug, Clone)]
pub struct CommandLimits {
    /// Whom commands run as; `None`: a uid of [`Self::uids`], or the daemon's own user, only
    /// where [`Self::own_user`] says so and never root.
    pub user: Option<JobUser>,
    /// Run each command as a uid of its own from this range (`--job-uids FIRST-LAST`, root):
    /// no two runs alive on the machine share one, so no run can signal another tenant's or read
    /// its memory or environment, as runs sharing one `--job-user` could.
    pub uids: Option<UidRange>,
    /// Without a job user, run commands as the daemon's own user (`--jobs-as-own-user`): for a
    /// machine one person uses. A program running as that user can read the daemon's keys,
    /// database and token, and signal the daemon, so it is never the default.
    pub own_user: bool,
    /// How long a stopped command has between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// The longest wall time a command may ask for, and what it gets when it asks for none.
    pub max_wall_time_s: f64,
    /// The most bytes of a run's output kept in its log; the rest is read and dropped.
    pub max_output_bytes: u64,
    /// The most tasks (processes and threads) a run may have at once, where the machine's
    /// cgroups can bound them (see [`crate::cgroup::DEFAULT_MAX_PIDS`]).
    pub max_pids: u64,
    /// The most memory one run may use, MiB (`--max-job-memory-mib`; by default the machine's
    /// memory less what its daemon and system keep, [`default_max_memory_mib`]): a command
    /// naming none gets it as its cgroup's limit where the machine has the memory controller,
    /// and one asking for more is refused. `None`: no bound (a control plane whose jobs run on
    /// other machines, which each hold runs to their own).
    pub max_memory_mib: Option<u64>,
    /// What all runs together may use, MiB (`--jobs-memory-mib`; by default the same share of
    /// the machine, [`jobs_memory_mib`]), where the machine has the memory controller: each
    /// within its own bound, two runs together could take more than the machine has, and its
    /// reclaim would stall the daemon as one run past it did. `None`: no bound of the whole.
    pub jobs_memory_mib: Option<u64>,
    /// The most one run's scratch directory may hold, MiB (`--max-job-disk-mib`; by default a
    /// tenth of the file system it lies on, [`default_max_disk_mib`]): a command naming none
    /// gets it as its scratch file system's size where runs have mount namespaces, and one
    /// asking for more is refused. `None`: no bound.
    pub max_disk_mib: Option<u64>,
    /// What all runs' scratch file systems hold together, MiB (`--jobs-disk-mib`; by default
    /// three quarters of what the temporary directory's file system has free at start,
    /// [`default_jobs_disk_mib`]): a run reserves its scratch's size before it starts, and
    /// waits while the runs going on leave no room. `None`: no bound of the whole.
    pub scratch_budget: Option<std::sync::Arc<crate::budget::Budget>>,
    /// Whose network runs have: their own, the loopback alone, where the daemon can make it
    /// (root), or the machine's (`--job-network host`); see [`crate::netns`].
    pub network: crate::netns::JobNetwork,
    /// Leave the kernel's counts (the machine's, a user's) of what runs' memory pays for as
    /// they are (`--protect-kernel-defaults`), rather than lift them ([`crate::kernelcounts`]).
    pub protect_kernel_defaults: bool,
    /// Which system calls a run's program may make (`--job-syscalls`; [`crate::seccomp`]).
    pub syscalls: crate::seccomp::JobSyscalls,
}

impl Default for CommandLimits {
    fn default() -> Self {
        Self {
            user: None,
            uids: None,
            own_user: false,
            kill_grace: Duration::from_secs(10),
            max_wall_time_s: 7.0 * 24.0 * 3600.0,
            max_output_bytes: 1 << 20,
            max_pids: crate::cgroup::DEFAULT_MAX_PIDS,
            max_memory_mib: None,
            jobs_memory_mib: None,
            max_disk_mib: None,
            scratch_budget: None,
            network: crate::netns::JobNetwork::Own,
            protect_kernel_defaults: false,
            syscalls: crate::seccomp::JobSyscalls::Filtered,
        }
    }
}

/// The default of [`CommandLimits::max_disk_mib`]: a tenth of the file system runs' scratch
/// directories lie on (the temporary directory's), at least 1 GiB and at most half of it. One
/// run that fills the disk fails the daemon's database, audit log and uploads, every tenant's;
/// at a tenth, ten runs at once filling theirs are needed to reach it.
pub fn default_max_disk_mib() -> Option<u64> {
    let (total_mib, _) = temp_fs_mib()?;
    Some(
        (total_mib / 10)
            .max(1024)
            .min(total_mib / 2)
            .min(MAX_DISK_MIB),
    )
}

/// The default of [`CommandLimits::scratch_budget`]: three quarters of what the file system
/// of the temporary directory (where runs' scratch file systems lie) has free now. Each run
/// is held to [`default_max_disk_mib`], a tenth of it, but runs are placed on GPUs (a cluster
/// model of 256 on one machine): ten runs filling theirs at once filled the disk the
/// daemon's database, audit log and datasets live on.
pub fn default_jobs_disk_mib() -> Option<u64> {
    let (_, free_mib) = temp_fs_mib()?;
    Some(free_mib / 4 * 3)
}

/// The size of the temporary directory's file system and what of it is free to this user, MiB.
fn temp_fs_mib() -> Option<(u64, u64)> {
    let dir = std::ffi::CString::new(std::env::temp_dir().into_os_string().into_encoded_bytes());
    let dir = dir.ok()?;
    // SAFETY: all-zero is a valid statvfs, filled by the call from a valid C string.
    let mut fs: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(dir.as_ptr(), &mut fs) } != 0 {
        return None;
    }
    let mib = |blocks: u64| blocks.saturating_mul(fs.f_frsize as u64) >> 20;
    Some((mib(fs.f_blocks as u64), mib(fs.f_bavail as u64)))
}

/// The budget all runs' scratch file systems share ([`CommandLimits::scratch_budget`]):
/// `asked` MiB (`--jobs-disk-mib`), refused below `max_disk_mib` (a run asking for the most could
/// never start), or [`default_jobs_disk_mib`], at least `max_disk_mib`.
pub fn scratch_budget(
    asked: Option<u64>,
    max_disk_mib: Option<u64>,
) -> Result<Option<std::sync::Arc<crate::budget::Budget>>, String> {
    let total = match (asked, max_disk_mib) {
        (Some(all), Some(one)) if all < one => {
            return Err(format!(
                "--jobs-disk-mib {all} is below the {one} MiB one command's scratch may hold \
                 (--max-job-disk-mib): such a job could never run"
            ));
        }
        (Some(all), _) => Some(all),
        (None, one) => default_jobs_disk_mib().map(|all| all.max(one.unwrap_or(0))),
    };
    Ok(total.map(|mib| std::sync::Arc::new(crate::budget::Budget::new(mib))))
}

/// What all command runs together may use ([`CommandLimits::jobs_memory_mib`]): `asked` MiB
/// (`--jobs-memory-mib`), refused below `max_memory_mib` (a run asking for the most could never
/// have it), or, by default, what one run may use where the machine's memory is known (the
/// machine's less what the daemon and system keep), at least `max_memory_mib`.
pub fn jobs_memory_mib(
    asked: Option<u64>,
    max_memory_mib: Option<u64>,
) -> Result<Option<u64>, String> {
    match (asked, max_memory_mib) {
        (Some(all), Some(one)) if all < one => Err(format!(
            "--jobs-memory-mib {all} is below the {one} MiB one command may use \
             (--max-job-memory-mib): such a job could never have it"
        )),
        (Some(all), _) => Ok(Some(all)),
        (None, one) => Ok(machine_memory_mib()
            .map(default_max_memory_mib)
            .map(|all| all.max(one.unwrap_or(0)))),
    }
}

/// The default of [`CommandLimits::max_memory_mib`] on a machine of `total_mib` MiB: all but a
/// tenth of it (at least 1 GiB, at most 8 GiB, never more than half) for the daemon or agent,
/// the page cache and the system. Without a bound, one run that grows past the machine's
/// memory drives the whole node into reclaim and then its OOM killer: its heartbeats stall, the
/// node is declared lost and every tenant's runs on it are requeued. Within its cgroup's limit
/// the kernel stops that run alone, at once.
pub fn default_max_memory_mib(total_mib: u64) -> u64 {
    let kept = (total_mib / 10).clamp(1024, 8 << 10).min(total_mib / 2);
    total_mib - kept
}

/// The memory this process may use, MiB: the machine's (`MemTotal` in `/proc/meminfo`), or less
/// where the cgroup it runs in, or one above it, is limited. Found by a review: in a container
/// limited to a few GiB on a large host, the defaults were reckoned from the host's memory, and
/// a run allowed the host's 90% took the container (daemon, agent and all) to its OOM killer.
/// The one reading of it: command runs' default bound and training runs' budget both start here.
pub fn machine_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    let total = kib / 1024;
    let limit = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|own| cgroup_memory_limit_mib(std::path::Path::new("/sys/fs/cgroup"), &own));
    Some(limit.map_or(total, |l| l.min(total)))
}

/// The least memory limit, MiB, of the cgroups that `own` (the text of `/proc/self/cgroup`)
/// names and of those above them, read under `root`: cgroup v2's `memory.max`, v1's
/// `memory/.../memory.limit_in_bytes` ("max" and v1's near-2^63 are no limit).
fn cgroup_memory_limit_mib(root: &std::path::Path, own: &str) -> Option<u64> {
    let mut least: Option<u64> = None;
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (base, file) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut dir = base.join(path.trim_start_matches('/'));
        loop {
            let bytes = std::fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok());
            if let Some(bytes) = bytes {
                let mib = bytes >> 20;
                least = Some(least.map_or(mib, |l| l.min(mib)));
            }
            if dir == base || !dir.pop() || !dir.starts_with(&base) {
                break;
            }
        }
    }
    least
}

/// An unprivileged user commands run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUser {
    /// The name the operator gave.
    pub name: String,
    /// Its user id.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
}

impl JobUser {
    /// Looks `name` up in the user database; root (uid 0) is refused: it is not unprivileged.
    pub fn lookup(name: &str) -> Result<Self, String> {
        let c_name = std::ffi::CString::new(name)
            .map_err(|_| format!("--job-user {name:?}: a user name has no NUL byte"))?;
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; 16 << 10];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buf` outlives `pwd`'s use below.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        if rc != 0 || found.is_null() {
            return Err(format!("--job-user {name}: no such user on this machine"));
        }
        if pwd.pw_uid == 0 {
            return Err(format!(
                "--job-user {name}: is root (uid 0); commands run as an unprivileged user"
            ));
        }
        Ok(Self {
            name: name.to_string(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }
}

/// Numeric uids to run commands as, one per run (see [`CommandLimits::uids`]); each run's group
/// is the same number. They need no entry in the user database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    /// The first uid.
    pub first: u32,
    /// The last uid (included).
    pub last: u32,
}

/// Where the leases on uids are held: one lock file per uid, shared by every daemon and agent
/// of the machine (tests run several agents on one), held with `flock` for the life of the run,
/// so a process that dies gives its uids back with it.
const UID_LEASES: &str = "/run/gantry-job-uids";

/// How many times a range whose uids all seem in use is tried again, and how long apart
/// ([`UidRange::lease`]).
const LEASE_RETRIES: u32 = 10;
const LEASE_PAUSE: Duration = Duration::from_millis(100);

impl UidRange {
    /// Parses `FIRST-LAST`: at most 1,000,000 uids above 0, without 65534 (`nobody`, which
    /// other programs run as) and below 2^32 - 2 (`(uid_t)-1` and `-2` mean "none"). The range
    /// should be one no user of the machine has: its runs may be signalled by nothing else.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("--job-uids {text}: expected FIRST-LAST, e.g. 200000-200999");
        let (first, last) = text.split_once('-').ok_or_else(bad)?;
        let first: u32 = first.trim().parse().map_err(|_| bad())?;
        let last: u32 = last.trim().parse().map_err(|_| bad())?;
        if first == 0 || last < first || last - first >= 1_000_000 || last >= u32::MAX - 1 {
            return Err(format!(
                "--job-uids {text}: a range of 1 to 1,000,000 uids, above 0 and below {}",
                u32::MAX - 1
            ));
        }
        if (first..=last).contains(&65534) {
            return Err(format!(
                "--job-uids {text}: holds 65534 (nobody), which other programs run as"
            ));
        }
        Ok(Self { first, last })
    }

    /// A uid of the range no other run on this machine holds, held until the lease is dropped.
    ///
    /// A uid whose run just ended may stay locked a moment: every process the daemon forked
    /// meanwhile holds a copy of its lease's descriptor until it executes its program (or, for
    /// a run's own processes, closes what it inherited), and flock's lock is the descriptor's.
    /// Seen as "in use", a one-uid range refused the next run; the range is tried again for a
    /// while ([`LEASE_RETRIES`] x [`LEASE_PAUSE`]) before it is called full.
    pub fn lease(&self) -> Result<UidLease, String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::path::Path::new(UID_LEASES);
        std::fs::create_dir_all(dir).map_err(|e| format!("making {}: {e}", dir.display()))?;
        // Root's alone: a job that could open a lease file could hold its lock, and with all
        // of them every other tenant's command jobs.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("making {} private: {e}", dir.display()))?;
        for pass in 0..=LEASE_RETRIES {
            if pass > 0 {
                std::thread::sleep(LEASE_PAUSE);
            }
            if let Some(lease) = self.try_lease(dir)? {
                return Ok(lease);
            }
        }
        Err(format!(
            "all {} uids of --job-uids {}-{} are in use by runs on this machine",
            self.len(),
            self.first,
            self.last
        ))
    }

    /// How many uids the range holds.
    fn len(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }

    /// One pass over the range in `dir`: a uid no run holds, or `None`.
    fn try_lease(&self, dir: &std::path::Path) -> Result<Option<UidLease>, String> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let count = self.len();
        // From a random place: runs rarely take a uid another just left.
        let mut start = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut start);
        let start = u64::from_le_bytes(start) % count;
        for i in 0..count {
            let uid = self.first + ((start + i) % count) as u32;
            let path = dir.join(uid.to_string());
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("making {} private: {e}", path.display()))?;
            // SAFETY: a valid descriptor; flock has no memory preconditions.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Some(UidLease {
                    user: JobUser {
                        name: format!("uid {uid}"),
                        uid,
                        gid: uid,
                    },
                    _held: file,
                }));
            }
        }
        Ok(None)
    }
}

/// Marks every descriptor from `first` on close-on-exec, so that none the process holds
/// reaches a program it executes. Async-signal-safe: called between fork and exec.
fn close_on_exec_from(first: libc::c_int) {
    // close_range(2), Linux 5.11 (the same number on x86-64 and arm64).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        const SYS_CLOSE_RANGE: libc::c_long = 436;
        // SAFETY: a plain system call on descriptor numbers.
        let done = unsafe {
            libc::syscall(
                SYS_CLOSE_RANGE,
                first as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if done == 0 {
            return;
        }
    }
    // Older kernels: each possible descriptor in turn.
    // SAFETY: getrlimit and fcntl are async-signal-safe; an unused number fails harmlessly.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        let most = match libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) {
            0 => limit.rlim_cur.min(1 << 20) as libc::c_int,
            _ => 1024,
        };
        for fd in first..most {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// A uid held for one run ([`UidRange::lease`]); given back when dropped, once every process
/// left running as it is killed.
#[derive(Debug)]
pub struct UidLease {
    /// The uid (and group) as a job user.
    pub user: JobUser,
    _held: std::fs::File,
}

impl Drop for UidLease {
    /// Whatever of the run is left (a process that left its group, on a machine without
    /// cgroups to gather it) dies before the uid can go to another run: a child that takes the
    /// uid signals every process of it (`kill(-1)` spares the caller alone).
    fn drop(&mut self) {
        let (uid, gid) = (self.user.uid, self.user.gid);
        // SAFETY: between fork and _exit the child makes only async-signal-safe calls.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                if libc::setgroups(0, std::ptr::null()) == 0
                    && libc::setgid(gid) == 0
                    && libc::setuid(uid) == 0
                {
                    libc::kill(-1, libc::SIGKILL);
                }
                libc::_exit(0);
            }
            if pid > 0 {
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
            }
        }
        remove_files_of(uid);
        remove_ipc_of(uid);
    }
}

/// Removes the System V shared memory segments, message queues and semaphore sets `uid` made
/// or owns, its processes gone: they outlive their makers, and the next run given the uid,
/// another tenant's, could read or hold them.
fn remove_ipc_of(uid: u32) {
    // (the table, its id column, its owner and creator uid columns, how to remove one)
    type Remove = fn(libc::c_int) -> libc::c_int;
    let tables: [(&str, usize, usize, usize, Remove); 3] = [
        ("/proc/sysvipc/shm", 1, 7, 9, |id| {
            // SAFETY: IPC_RMID takes no buffer.
            unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) }
        }),
        ("/proc/sysvipc/msg", 1, 7, 9, |id| {
            // SAFETY: IPC_RMID takes no buffer.
            unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) }
        }),
        ("/proc/sysvipc/sem", 1, 4, 6, |id| {
            // SAFETY: IPC_RMID takes no further argument.
            unsafe { libc::semctl(id, 0, libc::IPC_RMID) }
        }),
    ];
    for (table, id_at, uid_at, cuid_at, remove) in tables {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let number = |at: usize| fields.get(at).and_then(|f| f.parse::<u64>().ok());
            let theirs = [uid_at, cuid_at]
                .into_iter()
                .any(|at| number(at) == Some(u64::from(uid)));
            if let (true, Some(id)) = (theirs, number(id_at)) {
                let id = libc::c_int::try_from(id).unwrap_or(-1);
                if remove(id) != 0 {
                    let e = std::io::Error::last_os_error();
                    tracing::warn!(table, id, uid, error = %e, "keeping a run's IPC object");
                }
            }
        }
    }
}

/// Removes what `uid` left in the directories every uid may write in
/// ([`crate::mountns::shared_dirs`]), its
/// processes gone: the next run given the uid, another tenant's, would own and read it.
fn remove_files_of(uid: u32) {
    use std::os::unix::fs::MetadataExt;
    for dir in crate::mountns::shared_dirs() {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // Not followed: a link is removed, never what it names.
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.uid() != uid {
                continue;
            }
            let removed = match meta.is_dir() {
                true => std::fs::remove_dir_all(&path),
                false => std::fs::remove_file(&path),
            };
            if let Err(e) = removed {
                tracing::warn!(path = %path.display(), uid, error = %e, "keeping a run's file");
            }
        }
    }
}

/// Whom commands run as under `limits`: the named user, or the daemon's own where the operator
/// said so (`--jobs-as-own-user`) and it is not root. Otherwise command jobs are refused: a
/// user's program never runs as root, nor as the user that owns the daemon's keys, database
/// and token (it could read them, and signal the daemon) unless the operator chose that.
pub fn runs_as(limits: &CommandLimits) -> Result<Option<&JobUser>, String> {
    match &limits.user {
        Some(user) => Ok(Some(user)),
        // SAFETY: geteuid has no preconditions.
        None if limits.uids.is_some() && unsafe { libc::geteuid() } != 0 => Err(
            "--job-uids needs the daemon (or agent) to run as root, to switch to them".to_string(),
        ),
        // A uid of the range, chosen when the run starts.
        None if limits.uids.is_some() => Ok(None),
        // SAFETY: geteuid has no preconditions.
        None if unsafe { libc::geteuid() } == 0 => Err(
            "this daemon runs as root and was started without --job-user: command jobs are \
             refused (a user's program never runs as root)"
                .to_string(),
        ),
        None if limits.own_user => Ok(None),
        None => Err(
            "this daemon was started without --job-user or --job-uids: command jobs are refused \
             (a user's program never runs as the daemon's own user, which owns its keys and \
             database, unless the operator says so with --jobs-as-own-user, for a machine one \
             person uses)"
                .to_string(),
        ),
    }
}

/// Whether `spec` asks for no more memory than runs on this machine may use
/// ([`CommandLimits::max_memory_mib`]): checked at submission where this daemon (or its own
/// agent) runs commands, and by whatever runs it, before anything starts.
pub fn fits_here(spec: &CommandSpec, limits: &CommandLimits) -> Result<(), String> {
    match (spec.memory_mib, limits.max_memory_mib) {
        (Some(asked), Some(most)) if asked > most => Err(format!(
            "field `command.memory_mib`: {asked} MiB is more than a command may use on this \
             machine ({most} MiB, its --max-job-memory-mib)"
        )),
        _ => match (spec.disk_mib, limits.max_disk_mib) {
            (Some(asked), Some(most)) if asked > most => Err(format!(
                "field `command.disk_mib`: {asked} MiB is more than a command's scratch may hold \
                 on this machine ({most} MiB, its --max-job-disk-mib)"
            )),
            _ => Ok(()),
        },
    }
}

/// Checks `spec` against `limits`: every size bounded, names and paths well formed. The error
/// names the field (`command.argv[2]`, `command.env.NAME`, ...).
pub fn check(spec: &CommandSpec, limits: &CommandLimits) -> Result<(), String> {
    let field = |name: &str, problem: &str| format!("field `command.{name}`: {problem}");
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return Err(field("argv", "names no program"));
    }
    if spec.argv.len() > MAX_ARGS {
        return Err(field(
            "argv",
            &format!("{} arguments, over the most ({MAX_ARGS})", spec.argv.len()),
        ));
    }
    if spec.env.len() > MAX_ENV {
        return Err(field(
            "env",
            &format!("{} variables, over the most ({MAX_ENV})", spec.env.len()),
        ));
    }
    let text = |name: &str, value: &str| -> Result<(), String> {
        if value.len() > MAX_STRING {
            return Err(field(
                name,
                &format!("{} bytes, over the most ({MAX_STRING})", value.len()),
            ));
        }
        if value.contains('\0') {
            return Err(field(name, "contains a NUL byte"));
        }
        Ok(())
    };
    for (i, arg) in spec.argv.iter().enumerate() {
        text(&format!("argv[{i}]"), arg)?;
    }
    for (name, value) in &spec.env {
        let valid = !name.is_empty()
            && name.len() <= 128
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(field(
                &format!("env.{name}"),
                "a variable's name is 1-128 of letters, digits and '_', not starting with a digit",
            ));
        }
        if RESERVED_ENV.contains(&name.as_str()) || name.starts_with(GANTRY_ENV) {
            return Err(field(
                &format!("env.{name}"),
                "set by the daemon (CUDA_VISIBLE_DEVICES from the placement, PATH, HOME, GANTRY_*)",
            ));
        }
        text(&format!("env.{name}"), value)?;
    }
    if let Some(cwd) = &spec.cwd {
        text("cwd", cwd)?;
        if !cwd.starts_with('/') {
            return Err(field("cwd", "must be an absolute path"));
        }
    }
    let total: usize = spec.argv.iter().map(String::len).sum::<usize>()
        + spec
            .env
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + spec.cwd.as_ref().map_or(0, String::len);
    if total > MAX_TOTAL {
        return Err(field(
            "argv",
            &format!(
                "arguments, variables and directory take {total} bytes, over the most ({MAX_TOTAL})"
            ),
        ));
    }
    if let Some(w) = spec.wall_time_s
        && !(w.is_finite() && w > 0.0 && w <= limits.max_wall_time_s)
    {
        return Err(field(
            "wall_time_s",
            &format!(
                "must be a number of seconds above 0 and at most {} (the daemon's --max-wall-time-s)",
                limits.max_wall_time_s
            ),
        ));
    }
    if let Some(m) = spec.memory_mib
        && !(1..=MAX_MEMORY_MIB).contains(&m)
    {
        return Err(field(
            "memory_mib",
            &format!("must be 1 to {MAX_MEMORY_MIB} MiB"),
        ));
    }
    if let Some(c) = spec.cpus
        && !(0.01..=MAX_CPUS).contains(&c)
    {
        return Err(field("cpus", &format!("must be 0.01 to {MAX_CPUS}")));
    }
    match (spec.disk_mib, &spec.cwd) {
        (Some(d), _) if !(1..=MAX_DISK_MIB).contains(&d) => Err(field(
            "disk_mib",
            &format!("must be 1 to {MAX_DISK_MIB} MiB"),
        )),
        (Some(_), Some(_)) => Err(field(
            "disk_mib",
            "bounds the scratch directory, and a job naming `command.cwd` has none",
        )),
        _ => Ok(()),
    }
}

/// Whether GPUs `gpu_ids` (`<node>/gpu<k>`) are on more than one node, where a command job
/// cannot run: it runs as one process group.
pub fn spans_nodes(gpu_ids: &[String]) -> bool {
    let mut nodes = gpu_ids
        .iter()
        .filter_map(|id| id.rsplit_once("/gpu").map(|(node, _)| node));
    let first = nodes.next();
    nodes.any(|n| Some(n) != first)
}

/// `CUDA_VISIBLE_DEVICES` for GPUs `gpu_ids` (`<node>/gpu<k>`): the ordinals `k`, in the
/// placement's order. A placement on several nodes cannot run as one process here.
pub fn visible_devices(gpu_ids: &[String]) -> Result<String, String> {
    let mut node = None;
    let mut ordinals = Vec::with_capacity(gpu_ids.len());
    for id in gpu_ids {
        let Some((n, k)) = id
            .rsplit_once("/gpu")
            .and_then(|(n, k)| k.parse::<u32>().ok().map(|k| (n, k)))
        else {
            return Err(format!("GPU id `{id}` is not `<node>/gpu<ordinal>`"));
        };
        match node {
            None => node = Some(n),
            Some(first) if first != n => {
                return Err(format!(
                    "placed on GPUs of more than one node ({first}, {n}): a command job runs as one \
                     process group on one node"
                ));
            }
            Some(_) => {}
        }
        ordinals.push(k.to_string());
    }
    Ok(ordinals.join(","))
}

/// Which of the program's streams a line came from.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Out,
    Err,
}

impl Stream {
    /// What every line of the stream starts with in the log. Found by a review: stdout lines
    /// had none, so a program printed `stderr: ...` that read as its stderr, or a line that read
    /// as the runner's own (`succeeded: ... exited with status 0`); now every line a program
    /// prints names its stream, and a line without one is the runner's.
    fn prefix(self) -> &'static str {
        match self {
            Stream::Out => "stdout: ",
            Stream::Err => "stderr: ",
        }
    }
}

/// Output in flight between a run's readers and its supervisor, in chunks of at most
/// [`CHUNK`] bytes: a program that writes faster than its log takes output blocks on its pipe,
/// rather than growing the daemon's memory.
const CHUNKS_IN_FLIGHT: usize = 256;

/// The most one read of a run's pipe takes.
const CHUNK: usize = 8192;

/// The most lines one log entry gathers (beside [`MAX_ENTRY`]'s bound on its bytes).
const LINES_IN_FLIGHT: usize = 1024;

/// How long a reader waits between reads once the run's log budget is spent (or more was read
/// than it holds): what the run prints then is mostly read to be dropped, at most [`CHUNK`]
/// bytes per pause (found by a review: a run printing as fast as it could cost the daemon most
/// of a core, whatever the run's own CPU bound).
const SPENT_PAUSE: Duration = Duration::from_millis(20);

/// Reads `from` in chunks and sends them, until end of file: cut into lines by the supervisor
/// ([`LineCutter`]), which keeps the time (a line left unfinished is shown after a while). Once
/// `spent` (the log budget), it reads slowly ([`SPENT_PAUSE`]).
fn pump(
    stream: Stream,
    mut from: impl Read,
    to: mpsc::SyncSender<(Stream, Vec<u8>)>,
    spent: Arc<AtomicBool>,
) {
    let mut buf = [0u8; CHUNK];
    loop {
        if spent.load(Ordering::Relaxed) {
            std::thread::sleep(SPENT_PAUSE);
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.send((stream, buf[..n].to_vec())).is_err() {
            return;
        }
    }
}

/// How long a line may stay unfinished (no newline yet) before it is written as it stands.
/// Found by a review: a program that printed `Loading...` and worked on, or drew a progress bar
/// with carriage returns (tqdm), showed nothing of it until it exited.
pub const PARTIAL_AFTER: Duration = Duration::from_secs(2);

/// How often a line redrawn in place (`\r`) is written, its latest state each time: a progress
/// bar redrawn ten times a second would otherwise spend the run's log budget on itself.
pub const REDRAWN_EVERY: Duration = Duration::from_secs(30);

/// One stream's output cut into lines of at most [`MAX_LINE`] bytes: `\n` ends a line (a `\r`
/// before it dropped), a lone `\r` starts it over as a terminal does (a redrawn progress bar:
/// only its latest state is kept), and a line unfinished for [`PARTIAL_AFTER`] is written as it
/// stands (a redrawn one at most every [`REDRAWN_EVERY`]).
#[derive(Debug, Default)]
struct LineCutter {
    line: Vec<u8>,
    /// Bytes past [`MAX_LINE`] were dropped from `line`.
    cut: bool,
    /// The last byte was a `\r` (a `\n` next makes it a line end, anything else a redraw).
    cr: bool,
    /// `line` was started over by a `\r` since the line began.
    redrawn: bool,
    /// Since when the line has been unfinished and unwritten.
    held_since: Option<Instant>,
    /// When a redrawn line's state was last written.
    redrawn_written: Option<Instant>,
    /// Where a terminal control sequence being read stands ([`Escape`]).
    escape: Escape,
}

/// A terminal control sequence being read: `ESC [` parameters and a final byte. The ones that
/// start a line over as a carriage return does (`ESC [ G`, `ESC [ 1 G`, `ESC [ 2 K`: how rich,
/// npm and cargo redraw a progress bar) count as one; found by a review: such a bar was written
/// every 2 s, not every 30. Others stay in the line, shown as text.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    /// After `ESC`.
    Started,
    /// After `ESC [`, with the parameter bytes so far (a few, or `Other`).
    Params(u8, u8),
}

impl LineCutter {
    /// Cuts `bytes` into the lines they end, appended to `out`.
    fn push(&mut self, bytes: &[u8], now: Instant, out: &mut Vec<String>) {
        for &b in bytes {
            match b {
                b'\n' => {
                    out.push(self.take());
                    self.cr = false;
                    self.redrawn = false;
                    self.redrawn_written = None;
                }
                b'\r' => self.cr = true,
                _ => {
                    if std::mem::take(&mut self.cr) {
                        self.start_over();
                    }
                    if self.redraws(b) {
                        self.held_since.get_or_insert(now);
                        continue;
                    }
                    if self.line.len() < MAX_LINE {
                        self.line.push(b);
                    } else {
                        self.cut = true;
                    }
                    self.held_since.get_or_insert(now);
                }
            }
        }
    }

    /// The line started over: a redraw.
    fn start_over(&mut self) {
        self.line.clear();
        self.cut = false;
        self.redrawn = true;
    }

    /// Follows `b` through a control sequence; true when it ended one that starts the line
    /// over (the sequence's bytes are then gone with the line).
    fn redraws(&mut self, b: u8) -> bool {
        self.escape = match (self.escape, b) {
            (_, 0x1b) => Escape::Started,
            (Escape::Started, b'[') => Escape::Params(0, 0),
            (Escape::Params(n, first), 0x30..=0x3f) => {
                Escape::Params(n.saturating_add(1), if n == 0 { b } else { first })
            }
            (Escape::Params(n, first), b'G')
                if n == 0 || (n == 1 && matches!(first, b'0' | b'1')) =>
            {
                self.escape = Escape::None;
                self.start_over();
                return true;
            }
            (Escape::Params(1, b'2'), b'K') => {
                self.escape = Escape::None;
                self.start_over();
                return true;
            }
            _ => Escape::None,
        };
        false
    }

    /// The unfinished line, when it is due to be written now.
    fn due(&mut self, now: Instant) -> Option<String> {
        let held = now.duration_since(self.held_since?);
        let paced = !self.redrawn
            || self
                .redrawn_written
                .is_none_or(|at| now.duration_since(at) >= REDRAWN_EVERY);
        if self.line.is_empty() || held < PARTIAL_AFTER || !paced {
            return None;
        }
        if self.redrawn {
            self.redrawn_written = Some(now);
        }
        Some(self.take())
    }

    /// What is left unfinished at the end.
    fn finish(&mut self) -> Option<String> {
        (!self.line.is_empty() || self.cut).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let mut text = shown(&String::from_utf8_lossy(&self.line));
        if std::mem::take(&mut self.cut) {
            text.push_str(" [line cut]");
        }
        self.line.clear();
        self.held_since = None;
        text
    }
}

/// A run's two streams, cut into lines in the order their output arrived.
#[derive(Debug, Default)]
struct Cutters {
    out: LineCutter,
    err: LineCutter,
    /// Bytes read of both streams.
    received: u64,
    /// Told once more was read than the log could keep ([`SPENT_PAUSE`]).
    spent: Option<(u64, Arc<AtomicBool>)>,
}

impl Cutters {
    fn push(&mut self, (stream, bytes): (Stream, Vec<u8>), batch: &mut Vec<(Stream, String)>) {
        self.received += bytes.len() as u64;
        if let Some((max, spent)) = &self.spent
            && self.received > *max
        {
            // Lines past 4 KiB are cut as they come: a run printing one endless line spends
            // no budget, and is read slowly from here all the same.
            spent.store(true, Ordering::Relaxed);
        }
        let mut lines = Vec::new();
        self.of(stream).push(&bytes, Instant::now(), &mut lines);
        batch.extend(lines.into_iter().map(|l| (stream, l)));
    }

    fn of(&mut self, stream: Stream) -> &mut LineCutter {
        match stream {
            Stream::Out => &mut self.out,
            Stream::Err => &mut self.err,
        }
    }

    /// Unfinished lines due now (`end`: all that is left).
    fn held(&mut self, end: bool, batch: &mut Vec<(Stream, String)>) {
        let now = Instant::now();
        for stream in [Stream::Out, Stream::Err] {
            let cutter = self.of(stream);
            let line = if end {
                cutter.finish()
            } else {
                cutter.due(now)
            };
            batch.extend(line.map(|l| (stream, l)));
        }
    }
}

/// `text` with its control characters (but tabs) and bidirectional marks shown as escapes
/// (`\x1b`, `\u{9b}`, `\u{202e}`): what a program printed is kept as text, never as terminal
/// commands for whoever reads the log.
pub fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push(c),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out += &format!("\\x{:02x}", c as u32);
            }
            // And the marks that reorder what a terminal shows (a line that reads otherwise).
            c if c.is_control()
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out += &format!("\\u{{{:x}}}", c as u32)
            }
            c => out.push(c),
        }
    }
    out
}

/// Signals process group `pgid`; a group that is gone already is fine.
fn signal_group(pgid: i32, signal: libc::c_int) {
    // SAFETY: kill has no memory preconditions; a negative pid names a process group.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// How long a run's output gathers into one log entry from its first line. Found by a review: a
/// run printing a line every few milliseconds made an entry of each (a durable commit, and on a
/// node a report the control plane decides and audits), some 370 a second; now at most a few.
pub const GATHER: Duration = Duration::from_millis(200);

/// Adds to `batch` the lines that the output coming until `until` (or the readers' end) ends,
/// at most about [`LINES_IN_FLIGHT`].
fn gather(
    output: &mpsc::Receiver<(Stream, Vec<u8>)>,
    cutters: &mut Cutters,
    batch: &mut Vec<(Stream, String)>,
    until: Instant,
) {
    while batch.len() < LINES_IN_FLIGHT {
        let Some(left) = until.checked_duration_since(Instant::now()) else {
            break;
        };
        match output.recv_timeout(left) {
            Ok(chunk) => cutters.push(chunk, batch),
            Err(_) => break,
        }
    }
}

/// What one log entry costs a run's log budget beyond its bytes (each entry is a row and a
/// durable commit), so that many tiny entries cannot outrun the budget either.
pub const LOG_ENTRY_COST: u64 = 64;

/// Room in a run's log budget for what its runner says itself (how it ended, what it dropped),
/// beyond the output it keeps.
pub const RUNNER_NOTES: u64 = 16 << 10;

/// What entry `entry` costs a run's log budget.
pub fn log_cost(entry: &str) -> u64 {
    entry.len() as u64 + LOG_ENTRY_COST
}

/// The most bytes of output one log entry holds: escaped as JSON (at most twice as long, with
/// control characters already shown as text: [`shown`]) it fits an agent's report.
const MAX_ENTRY: usize = 16 << 10;

/// A run's output on its way into the job's log: lines of a tick are written as one entry (each
/// entry is a durable commit) of at most [`MAX_ENTRY`] bytes, up to the byte budget.
struct Output {
    max: u64,
    left: u64,
    dropped: u64,
}

impl Output {
    fn write(&mut self, sink: &mut dyn RunSink, lines: Vec<(Stream, String)>) {
        let mut entry = String::new();
        for (stream, line) in lines {
            // Counted as `log_cost` counts the entry, so a control plane holding a node's
            // runs to that budget keeps all an honest agent sends.
            let prefix = stream.prefix().len() as u64;
            if !entry.is_empty() && entry.len() + 1 + prefix as usize + line.len() > MAX_ENTRY {
                // An entry travels whole in one request of an agent's (64 KiB at most): a
                // batch of long lines in one entry was refused whole, and lost.
                sink.log(&std::mem::take(&mut entry));
            }
            let own = if entry.is_empty() { LOG_ENTRY_COST } else { 0 };
            let cost = line.len() as u64 + 1 + prefix + own;
            if cost > self.left {
                self.dropped += cost;
                self.left = 0;
                continue;
            }
            self.left -= cost;
            if !entry.is_empty() {
                entry.push('\n');
            }
            entry.push_str(stream.prefix());
            entry.push_str(&line);
        }
        if !entry.is_empty() {
            sink.log(&entry);
        }
    }

    fn finish(&self, sink: &mut dyn RunSink) {
        if self.dropped > 0 {
            sink.log(&format!(
                "{} more bytes of output were dropped (the log keeps at most {} per run)",
                self.dropped, self.max
            ));
        }
    }
}

/// Where a run reports: the job's log and whether to stop. In the daemon, its job log and run
/// control; on a node, its agent's control plane.
pub trait RunSink {
    /// Appends an entry to the job's log.
    fn log(&mut self, entry: &str);
    /// Whether the run is asked to stop (a cancel, a lost GPU, the daemon or agent stopping).
    fn stopping(&self) -> bool;
    /// Whether the run was fenced off (its agent's lease lapsed: the control plane may run the
    /// job elsewhere now): its program is killed at once, without the grace of a stop.
    fn fenced(&self) -> bool {
        false
    }
    /// When the lease the run holds lapses (an agent's, a replicated control plane's
    /// leadership), past which the job may run elsewhere; `None` when it holds none. The run's
    /// [`crate::runguard::RunGuard`] kills it then, whatever its holder is doing.
    fn lease_until(&self) -> Option<Instant> {
        None
    }
}

/// What a run needs of its job.
#[derive(Debug, Clone, Copy)]
pub struct RunJob<'a> {
    /// The job's key (`tenant/name`).
    pub key: &'a str,
    /// Its tenant.
    pub tenant: &'a str,
    /// The GPUs it was placed on.
    pub gpu_ids: &'a [String],
    /// The device nodes of those GPUs, the only NVIDIA GPU nodes it may open.
    pub gpu_nodes: &'a crate::gpu_nodes::GpuNodes,
    /// Its program.
    pub spec: &'a CommandSpec,
}

/// The daemon running a command itself: its job log and run control.
struct DaemonSink<'a> {
    daemon: &'a Daemon,
    job: &'a str,
    control: &'a RunControl,
}

impl RunSink for DaemonSink<'_> {
    fn log(&mut self, entry: &str) {
        let _ = self.daemon.jobs.log(self.job, entry);
    }

    fn stopping(&self) -> bool {
        self.control.stopping()
    }

    /// A replica that no longer leads kills its runs at once: the next leader starts them
    /// again (it waited out the lease this one acted under).
    fn fenced(&self) -> bool {
        (self.daemon.leadership.as_ref()).is_some_and(|lead| lead.term().is_none())
    }

    fn lease_until(&self) -> Option<Instant> {
        let lead = self.daemon.leadership.as_ref()?;
        Some(lead.until().unwrap_or_else(Instant::now))
    }
}

/// Why the daemon stopped a run before it exited, if it did.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stopped {
    /// The run control asked (a cancel, a lost GPU, the daemon stopping).
    Asked,
    /// Its wall time ran out.
    WallTime,
}

/// Runs command job `job` to its end, in the daemon.
pub fn run(daemon: &Daemon, job: &JobRecord, control: &RunControl) -> RunEnd {
    let Some(spec) = &job.command else {
        return RunEnd::Failed("the job has no command".to_string());
    };
    let run = RunJob {
        key: &job.id,
        tenant: &job.tenant,
        gpu_ids: &job.gpu_ids,
        // Run by the daemon, a job is placed on the model cluster's GPUs, none of this machine's
        // (a machine with GPUs runs its jobs through its agent): it opens no GPU node.
        gpu_nodes: &crate::gpu_nodes::GpuNodes::none(),
        spec,
    };
    let mut sink = DaemonSink {
        daemon,
        job: &job.id,
        control,
    };
    execute(
        run,
        &daemon.commands,
        daemon.cgroups.as_ref(),
        &mut sink,
        "the daemon's user",
    )
}

/// Runs `job`'s program to its end under `limits`, in a cgroup of `cgroups` where there are
/// any, reporting to `sink`; `own_user` names whom it runs as without a job user.
pub fn execute(
    job: RunJob<'_>,
    limits: &CommandLimits,
    cgroups: Option<&crate::cgroup::Cgroups>,
    sink: &mut dyn RunSink,
    own_user: &str,
) -> RunEnd {
    // Declared before the run, so dropped after it: held until its scratch is gone.
    let mut _disk = None;
    let run = match Prepared::new(&job, limits, cgroups) {
        Ok(run) => run,
        Err(e) => return RunEnd::Failed(e),
    };
    if let (Some(budget), Some(mib)) = (&limits.scratch_budget, run.scratch_fs_mib(&job, limits)) {
        match reserve_scratch(budget, job.tenant, mib, sink) {
            Ok(Some(reserved)) => _disk = Some(reserved),
            Ok(None) => return RunEnd::Stopped,
            Err(e) => return RunEnd::Failed(e),
        }
    }
    let mut child = match run.start(&job, limits, own_user) {
        Ok(child) => child,
        Err(e) => return RunEnd::Failed(e),
    };
    let pgid = child.id() as i32;
    // Started before anything else can wait: the run must not outlive its lease even when
    // this holder stops being scheduled.
    let mut guard = match sink.lease_until().map(|until| RunGuard::start(pgid, until)) {
        None => None,
        Some(Ok(guard)) => Some(guard),
        Some(Err(e)) => {
            signal_group(pgid, libc::SIGKILL);
            let _ = child.wait();
            return RunEnd::Failed(format!(
                "could not start the guard that ends it with its lease: {e}"
            ));
        }
    };
    let nodes = match &run.group {
        Some(g) if g.gpus_closed() => format!("{} open to it", job.gpu_nodes.describe()),
        _ if !crate::gpu_nodes::driver_has_gpus() => "no NVIDIA GPU on this machine".into(),
        _ => "every GPU device node open to it (no cgroups to close them)".into(),
    };
    sink.log(&format!(
        "started `{}` (pid {pgid}, as {}) with CUDA_VISIBLE_DEVICES={} ({}; {nodes}), \
         wall time {} s",
        job.spec.argv[0],
        run.user.as_ref().map_or(own_user, |u| u.name.as_str()),
        run.devices,
        job.gpu_ids.join(", "),
        run.wall,
    ));
    let mut streams = Streams::read(&mut child, pgid, limits.max_output_bytes);
    let deadline = Instant::now() + Duration::from_secs_f64(run.wall);
    let waited = wait_for_end(&mut child, &mut guard, &mut streams, sink, limits, deadline);
    let Waited {
        status,
        mut stopped,
        mut guard_lapsed,
    } = match waited {
        Ok(waited) => waited,
        Err(e) => {
            tracing::error!(error = %e, "waiting for a command");
            signal_group(pgid, libc::SIGKILL);
            let _ = child.wait();
            streams.out.finish(sink);
            return RunEnd::Failed(format!("waiting for the command: {e}"));
        }
    };
    // Ended past its lease: its guard killed it (or would have), the job may be running
    // elsewhere now, and the end is its holder's stop, not the program's failure (reported as
    // "killed by signal 9", a job that a leader's failover had stopped ended failed).
    // Killed, not ended by itself: a program that exits on its own as the lease lapses keeps
    // its status (stopped, its job would run again).
    // The guard's own deadline counts too: found by the kill loop, a run's supervisor blocked
    // in a report through a failover did not pass the renewed lease on to the guard, which
    // killed the run at the old deadline; by the time its end was read the lease was renewed,
    // and the job ended failed ("killed by signal 9") instead of going back to the queue.
    guard_lapsed |= guard.as_ref().is_some_and(RunGuard::lapsed);
    let lapsed =
        guard_lapsed || sink.fenced() || sink.lease_until().is_some_and(|u| Instant::now() >= u);
    if lapsed && stopped.is_none() && status.signal() == Some(libc::SIGKILL) {
        stopped = Some(Stopped::Asked);
    }
    // Whatever it left behind in its group goes too: nothing it started keeps the GPUs.
    signal_group(pgid, libc::SIGKILL);
    drop(guard);
    streams.drain(sink);
    let oom_kills = run
        .group
        .as_ref()
        .map_or(0, crate::cgroup::RunGroup::oom_kills);
    let memory_mib = run
        .group
        .as_ref()
        .and_then(crate::cgroup::RunGroup::memory_mib);
    let reached = (run.group.as_ref()).map(crate::cgroup::RunGroup::memory_reached);
    let wall = run.wall;
    // Everything left in its cgroup goes too (what left its process group), and the cgroup,
    // its scratch, then its uid.
    drop(run);
    let end = end(&job.spec.argv[0], status, stopped, wall);
    let why = match (reached, limits.jobs_memory_mib) {
        (Some(crate::cgroup::MemoryReached::AllRuns), Some(all)) => Some(format!(
            "all command runs on this machine together reached their memory bound of {all} MiB \
             (--jobs-memory-mib)"
        )),
        (Some(crate::cgroup::MemoryReached::Neither), _) => Some(
            "the machine ran short of memory (the run was within its own limit, and runs \
             are the first the kernel's OOM killer takes)"
                .to_string(),
        ),
        _ => None,
    };
    match (end, oom_kills, memory_mib) {
        (RunEnd::Failed(reason), 1.., _) if let Some(why) = &why => RunEnd::Failed(format!(
            "{reason}: {why}, and the kernel's OOM killer took {oom_kills} of its process(es)"
        )),
        (end, 1.., _) if let Some(why) = &why => {
            sink.log(&format!(
                "{oom_kills} of its processes were killed by the kernel's OOM killer: {why}"
            ));
            end
        }
        (RunEnd::Failed(reason), 1.., Some(mib)) => RunEnd::Failed(format!(
            "{reason}: it reached its memory limit of {mib} MiB ({oom_kills} process(es) killed by \
             the kernel's OOM killer)"
        )),
        (end, 1.., Some(mib)) => {
            sink.log(&format!(
                "{oom_kills} of its processes reached the memory limit of {mib} MiB and were \
                 killed by the kernel's OOM killer"
            ));
            end
        }
        (end, ..) => end,
    }
}

/// What a run holds from before its program starts until it has ended. Dropped in this order:
/// its cgroup (everything left in it killed), its scratch directory, then its uid (given back
/// once no process of it is left).
struct Prepared {
    group: Option<crate::cgroup::RunGroup>,
    scratch: Option<tempfile::TempDir>,
    /// Held, not read: its uid, given back when dropped.
    _lease: Option<UidLease>,
    /// Whom it runs as, where not the daemon's own user.
    user: Option<JobUser>,
    /// Its `CUDA_VISIBLE_DEVICES`.
    devices: String,
    /// Its directory: its `cwd`, or its scratch.
    cwd: std::path::PathBuf,
    /// Its wall time, in seconds.
    wall: f64,
}

impl Prepared {
    /// What `job` needs before its program starts, under `limits`, in a cgroup of `cgroups`
    /// where there are any; why not, where it cannot be.
    fn new(
        job: &RunJob<'_>,
        limits: &CommandLimits,
        cgroups: Option<&crate::cgroup::Cgroups>,
    ) -> Result<Prepared, String> {
        let spec = job.spec;
        // Checked again at run time, against the limits the daemon runs with now (see
        // `runner::train_config` for why a stored job is not trusted to have passed submission).
        check(spec, limits).and_then(|()| fits_here(spec, limits))?;
        let devices = visible_devices(job.gpu_ids)?;
        let user = runs_as(limits)?;
        // Held until the run's last process is gone (the cgroup and scratch go first).
        let lease = match (user, &limits.uids) {
            (None, Some(range)) => Some(range.lease()?),
            _ => None,
        };
        let user = user.or(lease.as_ref().map(|l| &l.user)).cloned();
        let scratch = match &spec.cwd {
            Some(_) => None,
            None => Some(
                (crate::scratch::Scratch::process())
                    .and_then(|s| s.run_dir(user.as_ref()).map_err(|e| e.to_string()))
                    .map_err(|e| format!("making its scratch directory: {e}"))?,
            ),
        };
        let cwd = match (&spec.cwd, &scratch) {
            (Some(cwd), _) => std::path::PathBuf::from(cwd),
            (None, Some(dir)) => dir.path().to_path_buf(),
            (None, None) => unreachable!("a scratch directory is made when no cwd is given"),
        };
        let asked = crate::cgroup::Resources {
            memory_mib: spec.memory_mib,
            cpus: spec.cpus,
        };
        // A command naming no memory is held to the machine's bound, wherever it can be: a
        // machine without the controller runs it unbounded, as it runs it without a task bound.
        let bounds = crate::cgroup::Bounds {
            max_pids: limits.max_pids,
            memory_mib: limits.max_memory_mib,
            all_memory_mib: limits.jobs_memory_mib,
        };
        let group = match cgroups {
            Some(cgroups) => Some(
                (cgroups.create(&run_name(job.key), asked, bounds, job.gpu_nodes))
                    .map_err(|e| format!("making its cgroup: {e}"))?,
            ),
            None if asked != crate::cgroup::Resources::default() => {
                return Err(
                    "it asks for memory or CPU limits, and this machine gives the \
                            daemon no cgroups to enforce them"
                        .to_string(),
                );
            }
            None => None,
        };
        Ok(Prepared {
            group,
            scratch,
            _lease: lease,
            user,
            devices,
            cwd,
            wall: spec.wall_time_s.unwrap_or(limits.max_wall_time_s),
        })
    }

    /// The size of the file system of its own its scratch is, MiB, where it is one: a scratch
    /// directory, a job user, mount namespaces and loop devices ([`crate::scratchfs`]).
    fn scratch_fs_mib(&self, job: &RunJob<'_>, limits: &CommandLimits) -> Option<u64> {
        let private = self.user.is_some() && crate::mountns::available();
        match (
            private,
            &self.scratch,
            job.spec.disk_mib.or(limits.max_disk_mib),
        ) {
            (true, Some(_), Some(mib)) if crate::scratchfs::available() => Some(mib),
            _ => None,
        }
    }

    /// `job`'s program, its arguments and environment (nothing of the daemon's), its output
    /// piped.
    fn command(&self, job: &RunJob<'_>) -> Command {
        let spec = job.spec;
        let mut command = Command::new(&spec.argv[0]);
        command
            .args(&spec.argv[1..])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &self.cwd)
            .envs(&spec.env)
            .env("CUDA_VISIBLE_DEVICES", &self.devices)
            .env("GANTRY_JOB", super::db::name_of(job.key))
            .env("GANTRY_TENANT", job.tenant)
            .env("GANTRY_GPU_IDS", job.gpu_ids.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.scratch.is_some() {
            // Its temporary files in its own scratch, not in the /tmp every run shares.
            command.env("TMPDIR", &self.cwd);
        }
        command
    }

    /// Starts `job`'s program, its process group's leader, as prepared; why not, where it
    /// cannot be; `own_user` names whom it runs as without a job user.
    fn start(
        &self,
        job: &RunJob<'_>,
        limits: &CommandLimits,
        own_user: &str,
    ) -> Result<std::process::Child, String> {
        let spec = job.spec;
        let (cwd, user) = (&self.cwd, self.user.as_ref());
        let mut command = self.command(job);
        let join = self.group.as_ref().map(crate::cgroup::RunGroup::joiner);
        let ids = user.map(|u| (u.uid, u.gid));
        let Ok(directory) = std::ffi::CString::new(cwd.as_os_str().as_encoded_bytes()) else {
            return Err(format!("its directory {} holds a NUL byte", cwd.display()));
        };
        // Its own /tmp, /dev/shm, /var/tmp, ..., where the daemon can make them (root, switching
        // ids), and its scratch a file system of its own, of the size it may write.
        let private = ids.filter(|_| crate::mountns::available());
        let fs = match (private, self.scratch_fs_mib(job, limits)) {
            (Some((uid, gid)), Some(mib)) => {
                match crate::scratchfs::ScratchFs::make(cwd, mib, uid, gid) {
                    Ok(fs) => Some(fs),
                    Err(e) => return Err(format!("making its scratch file system: {e}")),
                }
            }
            _ => None,
        };
        let memory_mib = spec.memory_mib.or(limits.max_memory_mib);
        let groups = (self.group.as_ref()).map_or(&[][..], crate::cgroup::RunGroup::dirs);
        // And a network of its own, its loopback alone, unless the operator chose the machine's.
        let own_network = ids.is_some()
            && limits.network == crate::netns::JobNetwork::Own
            && crate::netns::available();
        let private = private
            .and_then(|_| crate::mountns::Plan::new(cwd, memory_mib, fs.as_ref()))
            .and_then(|plan| plan.showing_own_groups(groups))
            .map(|plan| match crate::mountns::own_ptys_available() {
                true => plan.with_own_ptys(),
                false => plan,
            })
            .map(
                |plan| match own_network && crate::mountns::own_sysfs_available() {
                    true => plan.in_own_network(),
                    false => plan,
                },
            );
        // Made here: between fork and exec nothing may allocate.
        let filter = match limits.syscalls {
            crate::seccomp::JobSyscalls::Filtered if crate::seccomp::available() => {
                crate::seccomp::program()
            }
            crate::seccomp::JobSyscalls::Filtered => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::warn!(
                        "command runs' system calls are not filtered: this machine's kernel \
                         (or processor) takes no filter of Gantry's"
                    )
                });
                None
            }
            crate::seccomp::JobSyscalls::All => None,
        };
        // SAFETY: only async-signal-safe calls between fork and exec. First a session of its own,
        // without the daemon's terminal (in the daemon's session, a job started from an operator's
        // shell opened `/dev/tty` and typed commands into it as root, `TIOCSTI`), whose process
        // group is the run's: a stop signals everything it started, and only that. The cgroup's
        // file written, then the ids given up (after joining: an unprivileged user may not move
        // itself), and no privilege to gain again (a set-uid file, planted by an earlier run of the
        // same uid, ran as that uid inside another tenant's run). Files it makes are its own (umask
        // 077), and no descriptor of the daemon's beyond its three crosses the exec (the daemon's
        // launcher's pipes did). Its own /tmp and /dev/shm ([`crate::mountns`]) mounted before
        // the ids change, and a PID namespace of its own ([`crate::pidns`]: from there on this is
        // the program's process, the daemon's child waiting outside). Then the directory entered,
        // as the user: entered before (`current_dir`), a `cwd` under a directory only root may pass
        // let the program read what lay below it. Then the death signal set (changing ids clears
        // it), and last its system calls filtered ([`crate::seccomp`]). The program dies with
        // this thread (the run's supervisor), so a daemon that dies does not leave it running;
        // what it started stays in its cgroup (in its PID namespace it dies too), which the next
        // daemon's start empties.
        unsafe {
            command.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some((uid, gid)) = ids {
                    if libc::setgroups(0, std::ptr::null()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if own_network {
                        crate::netns::enter()?;
                    }
                    if let Some(private) = &private {
                        private.enter(uid, gid)?;
                        // From here on this is the program's process, pid 2 of its own namespace
                        // (the process the daemon waits for stays outside).
                        crate::pidns::enter()?;
                    }
                }
                // The program's process alone joins the run's cgroup and is first in line for the
                // OOM killer: the two around it in its PID namespace are copies of the daemon (its
                // memory counted as theirs), and one of them, taken by the run's OOM killer, ended
                // a run whose program it should have stopped (a root run without the namespace
                // has no such processes).
                if let Some(join) = &join {
                    join()?;
                }
                // The first the kernel kills when the machine runs out of memory, before the
                // daemon, its agent or anything else of the node's (set before the ids change:
                // after, the file is no longer the process's to write).
                let adj = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
                if adj >= 0 {
                    libc::write(adj, b"1000".as_ptr().cast(), 4);
                    libc::close(adj);
                }
                if let Some((uid, gid)) = ids
                    && (libc::setgid(gid) != 0 || libc::setuid(uid) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::umask(0o077);
                close_on_exec_from(3);
                if libc::chdir(directory.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(filter) = &filter {
                    crate::seccomp::enter(filter)?;
                }
                Ok(())
            });
        }
        let spawned = command.spawn();
        // Mounted in the run's namespace by now (or never): its device detaches with that mount.
        drop(fs);
        spawned.map_err(|e| {
            format!(
                "could not start `{}` in {} as {}: {e}",
                spec.argv[0],
                cwd.display(),
                user.map_or(own_user, |u| u.name.as_str()),
            )
        })
    }
}

/// Reserves `mib` of `budget` for a run of `tenant`'s scratch file system, waiting (and saying
/// so in its log) while the runs going on leave no room; `Ok(None)`: it was stopped first.
fn reserve_scratch<'b>(
    budget: &'b crate::budget::Budget,
    tenant: &str,
    mib: u64,
    sink: &mut dyn RunSink,
) -> Result<Option<crate::budget::Reserved<'b>>, String> {
    if mib > budget.total_mib() {
        return Err(format!(
            "its scratch of {mib} MiB is more than all runs' scratch may take together ({} MiB, \
             --jobs-disk-mib)",
            budget.total_mib()
        ));
    }
    if let Some(reserved) = budget.try_reserve(tenant, mib) {
        return Ok(Some(reserved));
    }
    sink.log(&format!(
        "waiting for {mib} MiB of scratch: the runs going on hold the {} MiB all runs' scratch \
         may take together (--jobs-disk-mib)",
        budget.total_mib()
    ));
    let sink = &*sink;
    budget.reserve(tenant, mib, || sink.stopping() || sink.fenced(), |_| {})
}

/// A run's output on its way from the readers of its pipes into its log.
struct Streams {
    output: mpsc::Receiver<(Stream, Vec<u8>)>,
    cutters: Cutters,
    out: Output,
    /// Set once the log budget is spent: the readers read slowly from then.
    spent: Arc<AtomicBool>,
}

impl Streams {
    /// A reader started for each of `child`'s pipes (run `pgid`), at most `max` bytes kept.
    fn read(child: &mut std::process::Child, pgid: i32, max: u64) -> Streams {
        let (lines, output) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
        let spent = Arc::new(AtomicBool::new(false));
        let pipes: [(Stream, Option<Box<dyn Read + Send>>); 2] = [
            (Stream::Out, child.stdout.take().map(|p| Box::new(p) as _)),
            (Stream::Err, child.stderr.take().map(|p| Box::new(p) as _)),
        ];
        for (stream, pipe) in pipes {
            let Some(pipe) = pipe else { continue };
            let (lines, spent) = (lines.clone(), spent.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("gantry-job-output-{pgid}"))
                .spawn(move || pump(stream, pipe, lines, spent));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "starting a reader of a command's output");
            }
        }
        Streams {
            output,
            cutters: Cutters {
                spent: Some((max, spent.clone())),
                ..Cutters::default()
            },
            out: Output {
                max,
                left: max,
                dropped: 0,
            },
            spent,
        }
    }

    /// Waits for output for a tick; from its first, gathers what comes for a while, and
    /// writes it with the unfinished lines due.
    fn tick(&mut self, sink: &mut dyn RunSink) {
        let mut batch: Vec<(Stream, String)> = Vec::new();
        if let Ok(first) = self.output.recv_timeout(Duration::from_millis(50)) {
            self.cutters.push(first, &mut batch);
            gather(
                &self.output,
                &mut self.cutters,
                &mut batch,
                Instant::now() + GATHER,
            );
        }
        self.cutters.held(false, &mut batch);
        self.out.write(sink, batch);
        if self.out.left == 0 {
            self.spent.store(true, Ordering::Relaxed);
        }
    }

    /// The rest of the output, once the run has ended: readers end when the last writer of
    /// each pipe is gone, which killing the run's group makes prompt; a process that left the
    /// group may hold a pipe, so this waits a little only.
    fn drain(mut self, sink: &mut dyn RunSink) {
        let drain_until = Instant::now() + Duration::from_secs(1);
        while let Some(left) = drain_until.checked_duration_since(Instant::now()) {
            match self.output.recv_timeout(left) {
                Ok(chunk) => {
                    let mut batch = Vec::new();
                    self.cutters.push(chunk, &mut batch);
                    for chunk in self.output.try_iter().take(CHUNKS_IN_FLIGHT) {
                        self.cutters.push(chunk, &mut batch);
                    }
                    self.out.write(sink, batch);
                }
                Err(_) => break,
            }
        }
        let mut rest = Vec::new();
        self.cutters.held(true, &mut rest);
        self.out.write(sink, rest);
        self.out.finish(sink);
    }
}

/// How a run's program ended, as its supervisor saw it.
struct Waited {
    status: ExitStatus,
    /// Why it was stopped, where it was.
    stopped: Option<Stopped>,
    /// Whether its guard's deadline passed before the guard went.
    guard_lapsed: bool,
}

/// Supervises `child` (its process group's leader) until it ends: its output passed on
/// (`streams`), its guard renewed with the lease, and it stopped (SIGTERM, then SIGKILL after
/// the grace) when the holder asks, when its wall time (`deadline`) passes, or at once when
/// fenced; why waiting failed, where it did.
fn wait_for_end(
    child: &mut std::process::Child,
    guard: &mut Option<RunGuard>,
    streams: &mut Streams,
    sink: &mut dyn RunSink,
    limits: &CommandLimits,
    deadline: Instant,
) -> Result<Waited, std::io::Error> {
    let pgid = child.id() as i32;
    let mut stopped: Option<(Stopped, Instant)> = None;
    let mut guard_lapsed = false;
    loop {
        streams.tick(sink);
        if let (Some(guard), Some(until)) = (guard.as_mut(), sink.lease_until()) {
            guard.renew(until);
        }
        // Its guard goes before it is reaped: once reaped, its group's id may be another's, and
        // a guard whose deadline passed would kill that.
        if guard.is_some() && exited(pgid) {
            guard_lapsed = guard.as_ref().is_some_and(RunGuard::lapsed);
            drop(guard.take());
        }
        if let Some(status) = child.try_wait()? {
            return Ok(Waited {
                status,
                stopped: stopped.map(|(why, _)| why),
                guard_lapsed,
            });
        }
        let now = Instant::now();
        if sink.fenced() {
            signal_group(pgid, libc::SIGKILL);
            stopped.get_or_insert((Stopped::Asked, now));
            continue;
        }
        match stopped {
            None => {
                let why = if sink.stopping() {
                    Some(Stopped::Asked)
                } else if now >= deadline {
                    Some(Stopped::WallTime)
                } else {
                    None
                };
                if let Some(why) = why {
                    signal_group(pgid, libc::SIGTERM);
                    stopped = Some((why, now));
                }
            }
            Some((_, at)) if now.duration_since(at) >= limits.kill_grace => {
                signal_group(pgid, libc::SIGKILL);
            }
            Some(_) => {}
        }
    }
}

/// Whether child `pid` has exited, without reaping it (it stays a zombie, its id its own).
fn exited(pid: i32) -> bool {
    // SAFETY: `info` is a valid siginfo for waitid to fill; WNOWAIT leaves the child waitable.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) == 0 && info.si_pid() == pid
    }
}

/// A run's cgroup name: the job's key made a file name, and the time, so a run that starts while
/// a previous one's cgroup is still being removed gets its own.
fn run_name(job: &str) -> String {
    let safe: String = job
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{safe}-{nanos}")
}

/// How a run ended, from its exit status and whether the daemon stopped it.
fn end(program: &str, status: ExitStatus, stopped: Option<Stopped>, wall: f64) -> RunEnd {
    match stopped {
        Some(Stopped::Asked) => return RunEnd::Stopped,
        Some(Stopped::WallTime) => {
            return RunEnd::Failed(format!(
                "`{program}` exceeded its wall time of {wall} s and was stopped"
            ));
        }
        None => {}
    }
    match (status.code(), status.signal()) {
        (Some(0), _) => RunEnd::Finished(
            serde_json::json!({"exit_code": 0}),
            format!("succeeded: `{program}` exited with status 0"),
        ),
        (Some(code), _) => RunEnd::Failed(format!("`{program}` exited with status {code}")),
        (None, Some(signal)) => {
            RunEnd::Failed(format!("`{program}` was killed by signal {signal}"))
        }
        (None, None) => RunEnd::Failed(format!("`{program}` ended without a status")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str]) -> CommandSpec {
        CommandSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            cwd: None,
            wall_time_s: None,
            memory_mib: None,
            cpus: None,
            disk_mib: None,
        }
    }

    /// Runs `spec` as job `key` (`<tenant>/<name>`) on one GPU under `limits`: how it ended,
    /// and its log.
    fn run_job(key: &str, spec: &CommandSpec, limits: &CommandLimits) -> (RunEnd, Lines) {
        run_job_in(key, spec, limits, None)
    }

    /// [`run_job`] in `cgroups` where given.
    fn run_job_in(
        key: &str,
        spec: &CommandSpec,
        limits: &CommandLimits,
        cgroups: Option<&crate::cgroup::Cgroups>,
    ) -> (RunEnd, Lines) {
        let gpus = ["node-0001/gpu0".to_string()];
        let job = RunJob {
            key,
            tenant: key.split('/').next().unwrap_or(key),
            gpu_ids: &gpus,
            gpu_nodes: &crate::gpu_nodes::GpuNodes::none(),
            spec,
        };
        let mut lines = Lines::default();
        let end = execute(job, limits, cgroups, &mut lines, "root");
        (end, lines)
    }

    /// Cgroups of the scope named `name` with a memory controller, where these tests run as root
    /// with `needs` (programs) there; `None`, saying why, elsewhere.
    fn memory_cgroups(name: &[u8], needs: &[&str]) -> Option<crate::cgroup::Cgroups> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root || !needs.iter().all(|p| std::path::Path::new(p).exists()) {
            eprintln!("skipped: needs root and {needs:?}");
            return None;
        }
        let cgroups = crate::cgroup::Cgroups::detect(&crate::cgroup::scope_for(name))
            .filter(|c| c.limits_available().0);
        if cgroups.is_none() {
            eprintln!("skipped: this machine gives no cgroups with a memory controller");
        }
        cgroups
    }

    /// Lifts this machine's kernel counts as an agent does ([`crate::kernelcounts`]); false,
    /// saying so, where they cannot be (a container's read-only `/proc/sys`).
    fn lift_kernel_counts() -> bool {
        let lifted = crate::kernelcounts::lift(std::path::Path::new("/proc/sys"), false);
        let failed = lifted
            .iter()
            .find(|(_, outcome)| matches!(outcome, crate::kernelcounts::Outcome::Failed { .. }));
        if let Some((count, outcome)) = failed {
            eprintln!(
                "skipped: {} cannot be lifted here: {outcome:?}",
                count.sysctl
            );
        }
        failed.is_none()
    }

    /// Limits that run commands as `nobody` where the tests run as root, else as this user.
    fn job_user_limits() -> CommandLimits {
        // SAFETY: geteuid has no preconditions.
        match unsafe { libc::geteuid() } {
            0 => CommandLimits {
                user: Some(JobUser::lookup("nobody").unwrap()),
                ..CommandLimits::default()
            },
            _ => CommandLimits {
                own_user: true,
                ..CommandLimits::default()
            },
        }
    }

    fn limits() -> CommandLimits {
        CommandLimits {
            user: Some(JobUser {
                name: "nobody".into(),
                uid: 65534,
                gid: 65534,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_command_is_bounded_and_its_errors_name_the_field() {
        let l = limits();
        assert!(check(&spec(&["sh", "-c", "true"]), &l).is_ok());
        let cases: Vec<(CommandSpec, &str)> = vec![
            (spec(&[]), "command.argv"),
            (spec(&[""]), "command.argv"),
            (spec(&vec!["x"; MAX_ARGS + 1]), "command.argv"),
            (
                spec(&["sh", &"a".repeat(MAX_STRING + 1)]),
                "command.argv[1]",
            ),
            (spec(&["sh", "a\0b"]), "command.argv[1]"),
            (
                CommandSpec {
                    env: [("CUDA_VISIBLE_DEVICES".to_string(), "0".to_string())].into(),
                    ..spec(&["sh"])
                },
                "command.env.CUDA_VISIBLE_DEVICES",
            ),
            (
                CommandSpec {
                    env: [("GANTRY_JOB".to_string(), "x".to_string())].into(),
                    ..spec(&["sh"])
                },
                "command.env.GANTRY_JOB",
            ),
            (
                CommandSpec {
                    env: [("1A".to_string(), "x".to_string())].into(),
                    ..spec(&["sh"])
                },
                "command.env.1A",
            ),
            (
                CommandSpec {
                    env: (0..=MAX_ENV)
                        .map(|i| (format!("V{i}"), String::new()))
                        .collect(),
                    ..spec(&["sh"])
                },
                "command.env",
            ),
            (
                CommandSpec {
                    cwd: Some("relative".into()),
                    ..spec(&["sh"])
                },
                "command.cwd",
            ),
            (
                CommandSpec {
                    argv: vec!["a".repeat(MAX_STRING); 17],
                    ..spec(&[])
                },
                "command.argv",
            ),
            (
                CommandSpec {
                    disk_mib: Some(0),
                    ..spec(&["sh"])
                },
                "command.disk_mib",
            ),
            (
                CommandSpec {
                    disk_mib: Some(MAX_DISK_MIB + 1),
                    ..spec(&["sh"])
                },
                "command.disk_mib",
            ),
            // Its scratch's bound, and a job naming its directory has no scratch.
            (
                CommandSpec {
                    disk_mib: Some(64),
                    cwd: Some("/srv/work".into()),
                    ..spec(&["sh"])
                },
                "command.disk_mib",
            ),
        ];
        for (s, field) in cases {
            let e = check(&s, &l).unwrap_err();
            assert!(e.starts_with(&format!("field `{field}`")), "{field}: {e}");
        }
        for (m, c, field) in [
            (Some(0), None, "command.memory_mib"),
            (Some(MAX_MEMORY_MIB + 1), None, "command.memory_mib"),
            (None, Some(0.0), "command.cpus"),
            (None, Some(f64::NAN), "command.cpus"),
            (None, Some(MAX_CPUS * 2.0), "command.cpus"),
        ] {
            let s = CommandSpec {
                memory_mib: m,
                cpus: c,
                ..spec(&["sh"])
            };
            assert!(check(&s, &l).unwrap_err().contains(field), "{field}");
        }
        for w in [0.0, -1.0, f64::NAN, f64::INFINITY, l.max_wall_time_s * 2.0] {
            let s = CommandSpec {
                wall_time_s: Some(w),
                ..spec(&["sh"])
            };
            assert!(check(&s, &l).unwrap_err().contains("command.wall_time_s"));
        }
    }

    /// Reported by a review: without `--job-user`, a daemon that is not root ran every
    /// tenant's program as itself, and a program could read the keys (forging the audit log,
    /// decrypting every dataset) and kill other tenants' jobs. It runs as the daemon's user
    /// only where the operator says so; as root, never.
    #[test]
    fn without_a_job_user_commands_are_refused_unless_the_operator_chose_the_own_user() {
        let none = CommandLimits::default();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(runs_as(&none).unwrap_err().contains("--job-user"));
        let own = CommandLimits {
            own_user: true,
            ..CommandLimits::default()
        };
        assert_eq!(runs_as(&own).is_err(), root);
        assert!(JobUser::lookup("root").unwrap_err().contains("uid 0"));
        assert!(JobUser::lookup("no-such-user-here").is_err());
    }

    /// A log kept in memory.
    #[derive(Default)]
    struct Lines(Vec<String>);

    impl RunSink for Lines {
        fn log(&mut self, entry: &str) {
            self.0.push(entry.to_string());
        }
        fn stopping(&self) -> bool {
            false
        }
    }

    /// Found by a review: a line without its newline (`Loading...` and then work, or a
    /// progress bar redrawn with `\r`) showed nothing until the run exited, and a bar's every
    /// state would have been a line. An unfinished line is written after [`PARTIAL_AFTER`], a
    /// redrawn one's latest state at most every [`REDRAWN_EVERY`].
    #[test]
    fn an_unfinished_line_and_a_redrawn_progress_bar_are_shown_while_the_run_goes_on() {
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut c = LineCutter::default();
        let mut lines = Vec::new();
        c.push(b"Loading...", at(0.0), &mut lines);
        assert!(lines.is_empty() && c.due(at(1.9)).is_none());
        assert_eq!(c.due(at(2.0)).as_deref(), Some("Loading..."));
        c.push(b" done\r\nnext\n", at(3.0), &mut lines);
        assert_eq!(lines, [" done", "next"]);
        lines.clear();
        // A bar redrawn in place: its latest state, then no more often than REDRAWN_EVERY.
        c.push(b"\r 10%", at(10.0), &mut lines);
        c.push(b"\r 20%", at(11.0), &mut lines);
        assert_eq!(c.due(at(12.0)).as_deref(), Some(" 20%"));
        c.push(b"\r 30%", at(13.0), &mut lines);
        c.push(b"\r 90%", at(30.0), &mut lines);
        assert!(c.due(at(41.0)).is_none());
        assert_eq!(c.due(at(42.0)).as_deref(), Some(" 90%"));
        c.push(b"\r100%\n", at(43.0), &mut lines);
        assert_eq!(lines, ["100%"]);
        // Redrawn with terminal sequences rather than `\r`: the same.
        lines.clear();
        c.push(b"\x1b[2K\x1b[1G 10%", at(44.0), &mut lines);
        c.push(b"\x1b[2K\x1b[1G 20%", at(45.0), &mut lines);
        assert_eq!(c.due(at(46.0)).as_deref(), Some(" 20%"));
        c.push(b"\x1b[2K\x1b[G 30%", at(47.0), &mut lines);
        assert!(c.due(at(60.0)).is_none(), "paced as a redraw");
        c.push(b"\n\x1b[1mbold\x1b[0m\n", at(61.0), &mut lines);
        assert_eq!(
            lines,
            [" 30%", "\\x1b[1mbold\\x1b[0m"],
            "other sequences stay, as text"
        );
        // Long lines are cut; what is left at the end is written.
        lines.clear();
        c.push(&[b'x'; MAX_LINE + 10], at(50.0), &mut lines);
        c.push(b"\ntail", at(50.0), &mut lines);
        assert_eq!(lines, [format!("{} [line cut]", "x".repeat(MAX_LINE))]);
        assert_eq!(c.finish().as_deref(), Some("tail"));
        assert_eq!(c.finish(), None);
    }

    /// Found by a review: a run printing as fast as it could cost the daemon most of a core
    /// reading what it then dropped. Past the budget its output is read slowly; it still ends,
    /// and the log says how much was dropped.
    #[test]
    fn a_run_past_its_log_budget_is_read_slowly_and_still_ends() {
        let spec = spec(&[
            "/bin/sh",
            "-c",
            "head -c 200000 /dev/zero | tr '\\0' x; echo",
        ]);
        let limits = CommandLimits {
            max_output_bytes: 1000,
            ..job_user_limits()
        };
        let (end, lines) = run_job("vision/loud", &spec, &limits);
        let log = lines.0.join("\n");
        assert!(matches!(end, RunEnd::Finished(..)), "{end:?} {log}");
        assert!(log.contains("more bytes of output were dropped"), "{log}");
    }

    /// The same through a real run: `Loading...` is its own entry before `done` is printed.
    #[test]
    fn a_runs_unfinished_line_is_in_its_log_before_the_line_ends() {
        let spec = spec(&["/bin/sh", "-c", "printf Loading...; sleep 3; echo done"]);
        let (end, lines) = run_job("vision/partial", &spec, &job_user_limits());
        assert!(matches!(end, RunEnd::Finished(..)), "{:?}", lines.0);
        let loading = lines.0.iter().position(|e| e == "stdout: Loading...");
        let done = lines.0.iter().position(|e| e == "stdout: done");
        assert!(
            matches!((loading, done), (Some(l), Some(d)) if l < d),
            "{:?}",
            lines.0
        );
    }

    /// Found by a review: a run printing a line every few milliseconds made a log entry of
    /// each (on a node, a report decided and audited: 370 a second). Its lines gather for
    /// [`GATHER`] into one entry, every line kept in order.
    #[test]
    fn a_run_printing_line_by_line_makes_few_log_entries() {
        let spec = spec(&[
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 100 ]; do echo line $i; sleep 0.01; i=$((i+1)); done",
        ]);
        let started = Instant::now();
        let (end, lines) = run_job("vision/chatty", &spec, &job_user_limits());
        let windows = started.elapsed().as_millis() / GATHER.as_millis();
        let log = lines.0.join("\n");
        assert!(matches!(end, RunEnd::Finished(..)), "{end:?} {log}");
        let kept: Vec<String> = (0..100).map(|i| format!("stdout: line {i}")).collect();
        let got: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with("stdout: line "))
            .collect();
        assert_eq!(got, kept);
        // An entry per line would be 100; one per window of its run now (and the runner's own).
        let entries = lines.0.len() as u128;
        assert!(
            entries <= windows + 3,
            "{entries} entries in {windows} windows"
        );
    }

    /// Found by a review: a tick's lines went into one log entry however long, and an agent
    /// sends each entry in one report of at most 64 KiB: 1,024 lines of 5,000 bytes were
    /// refused whole and lost, while the budget counted them kept. Entries are cut at
    /// [`MAX_ENTRY`], every line kept in order, and control characters are shown as text.
    #[test]
    fn a_ticks_long_lines_go_into_entries_an_agent_can_send() {
        let mut out = Output {
            max: 8 << 20,
            left: 8 << 20,
            dropped: 0,
        };
        let mut sink = Lines::default();
        let lines: Vec<(Stream, String)> = (0..1024)
            .map(|i| (Stream::Out, format!("{i:05}{}", "x".repeat(4000))))
            .collect();
        out.write(&mut sink, lines);
        assert!(sink.0.len() > 1);
        assert!(
            sink.0.iter().all(|e| e.len() <= MAX_ENTRY),
            "an entry is bounded"
        );
        let kept: Vec<&str> = sink.0.iter().flat_map(|e| e.split('\n')).collect();
        assert_eq!(kept.len(), 1024);
        assert!(
            kept.iter()
                .enumerate()
                .all(|(i, l)| l.starts_with(&format!("stdout: {i:05}")))
        );
        assert_eq!(out.dropped, 0);
        let body = serde_json::json!({"event": "log", "entry": sink.0[0]}).to_string();
        assert!(body.len() < 64 << 10);
        assert_eq!(
            shown("a\u{1b}[2Jb\u{0}\u{9b}\tc"),
            "a\\x1b[2Jb\\x00\\u{9b}\tc"
        );
        // Found by a review: U+2028 and U+2029 end a line for a Unicode reader, and the text
        // after one passed for a line of the runner's.
        assert_eq!(
            shown("u\u{2028}succeeded\u{2029}x"),
            "u\\u{2028}succeeded\\u{2029}x"
        );
    }

    /// Runs job `key`, a program that kills itself (SIGKILL, as its guard would) after `seconds`,
    /// reporting to `sink`.
    fn killed_by_itself_after(seconds: &str, key: &str, sink: &mut dyn RunSink) -> RunEnd {
        let script = format!("sleep {seconds}; kill -9 $$");
        let spec = spec(&["/bin/sh", "-c", &script]);
        let gpus = ["node-0001/gpu0".to_string()];
        let job = RunJob {
            key,
            tenant: "vision",
            gpu_ids: &gpus,
            gpu_nodes: &crate::gpu_nodes::GpuNodes::none(),
            spec: &spec,
        };
        // SAFETY: geteuid has no preconditions.
        let limits = match unsafe { libc::geteuid() } {
            0 => limits(),
            _ => CommandLimits {
                own_user: true,
                ..CommandLimits::default()
            },
        };
        execute(job, &limits, None, sink, "root")
    }

    /// A sink holding a lease that lapses at a fixed time and is never renewed.
    struct Lapsing(Instant);

    impl RunSink for Lapsing {
        fn log(&mut self, _: &str) {}
        fn stopping(&self) -> bool {
            false
        }
        fn lease_until(&self) -> Option<Instant> {
            Some(self.0)
        }
    }

    /// Found by the kill loop: a run that ended past its holder's lease (its guard's SIGKILL, a
    /// leader's failover) was reported failed, "killed by signal 9", though it was stopped and
    /// its job may be running elsewhere already. A run that ends past its lease ends stopped.
    #[test]
    fn a_run_that_ends_past_its_lease_is_stopped_not_failed() {
        let mut sink = Lapsing(Instant::now() + Duration::from_millis(200));
        let end = killed_by_itself_after("1", "vision/lapsed", &mut sink);
        assert!(matches!(end, RunEnd::Stopped), "{end:?}");
    }

    /// A sink whose first report blocks for `block` (a report retried through a failover)
    /// while its lease lapses at `lapses`, renewed far ahead once the report went through.
    struct Blocked {
        block: Duration,
        lapses: Instant,
        renewed: bool,
    }

    impl RunSink for Blocked {
        fn log(&mut self, _: &str) {
            if !self.renewed {
                std::thread::sleep(self.block);
                self.renewed = true;
            }
        }
        fn stopping(&self) -> bool {
            false
        }
        fn lease_until(&self) -> Option<Instant> {
            Some(match self.renewed {
                true => Instant::now() + Duration::from_secs(60),
                false => self.lapses,
            })
        }
    }

    /// Found by the kill loop (CI): a run's supervisor blocked in a report through a failover
    /// did not pass the renewed lease on to the run's guard, which killed the run at the old
    /// deadline; when the end was read the lease had been renewed, and the job ended failed
    /// ("killed by signal 9") instead of going back to the queue. The guard's own deadline
    /// counts: here the program's own SIGKILL stands for the guard's (a guard cannot run in
    /// this test binary), past the deadline the guard last heard.
    #[test]
    fn a_run_its_guard_killed_at_a_deadline_since_renewed_is_stopped_not_failed() {
        let mut sink = Blocked {
            block: Duration::from_millis(600),
            lapses: Instant::now() + Duration::from_millis(200),
            renewed: false,
        };
        let end = killed_by_itself_after("1.5", "vision/renewed", &mut sink);
        assert!(matches!(end, RunEnd::Stopped), "{end:?}");
    }

    /// Reported by a review: the job's `cwd` was entered by the daemon (root) before the ids
    /// were given up, so a `cwd` below a directory only root may pass (`/x/priv/pub`, `priv`
    /// 0700) let the job user read what lay there. The directory is entered as the job user
    /// now, and the run fails saying it could not. Root only (it needs another user).
    #[test]
    fn a_cwd_the_job_user_may_not_reach_is_refused_not_entered_as_root() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to run a job as another user");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let private = dir.path().join("priv");
        let public = private.join("pub");
        std::fs::create_dir_all(&public).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(public.join("key.txt"), "TOP-SECRET").unwrap();
        let limits = CommandLimits {
            user: Some(JobUser::lookup("nobody").unwrap()),
            ..CommandLimits::default()
        };
        let run = |cwd: &std::path::Path| {
            let spec = CommandSpec {
                cwd: Some(cwd.to_str().unwrap().to_string()),
                ..spec(&["/bin/cat", "key.txt"])
            };
            let (end, lines) = run_job("vision/peek", &spec, &limits);
            (end, lines.0.join("\n"))
        };
        let (end, log) = run(&public);
        assert!(!log.contains("TOP-SECRET"), "{log}");
        match end {
            RunEnd::Failed(e) => assert!(
                e.contains("could not start `/bin/cat` in") && e.contains("as nobody"),
                "{e}"
            ),
            _ => panic!("the run was not refused: {log}"),
        }
        // Where the user may go, it runs there.
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (end, log) = run(&public);
        assert!(matches!(end, RunEnd::Finished(..)), "{log}");
        assert!(log.contains("TOP-SECRET"), "{log}");
    }

    /// Reported by a review: a run's cgroup bounded its memory and CPU but not its tasks, so a
    /// fork bomb took the node (and every other tenant's runs on it) down. Runs are held to
    /// `max_pids` where the machine has the `pids` controller. Root with cgroups only.
    #[test]
    fn a_fork_bomb_stops_at_the_runs_task_bound() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to make cgroups");
            return;
        }
        let scope = crate::cgroup::scope_for(b"command tests: a fork bomb");
        let Some(cgroups) = crate::cgroup::Cgroups::detect(&scope) else {
            eprintln!("skipped: this machine gives no cgroups");
            return;
        };
        if !std::path::Path::new("/sys/fs/cgroup/pids").is_dir()
            && !std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "pids"))
        {
            eprintln!("skipped: no pids controller");
            return;
        }
        let limits = CommandLimits {
            user: Some(JobUser::lookup("nobody").unwrap()),
            max_pids: 16,
            ..CommandLimits::default()
        };
        let spec = CommandSpec {
            wall_time_s: Some(10.0),
            ..spec(&[
                "/bin/sh",
                "-c",
                "i=0; while [ $i -lt 64 ]; do sleep 30 & i=$((i+1)); done; echo started $i; wait",
            ])
        };
        let gpus = ["node-0001/gpu0".to_string()];
        let job = RunJob {
            key: "vision/bomb",
            tenant: "vision",
            gpu_ids: &gpus,
            gpu_nodes: &crate::gpu_nodes::GpuNodes::none(),
            spec: &spec,
        };
        let mut lines = Lines::default();
        let started = std::time::Instant::now();
        let end = execute(job, &limits, Some(&cgroups), &mut lines, "root");
        let log = lines.0.join("\n");
        assert!(matches!(end, RunEnd::Failed(_)), "{log}");
        assert!(!log.contains("started 64"), "{log}");
        assert!(log.to_lowercase().contains("fork"), "{log}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(9),
            "{log}"
        );
    }

    /// A command that named no memory had no limit: one run growing past the machine's memory
    /// drove the node into reclaim and its OOM killer, its heartbeats stalled and every
    /// tenant's runs on it were requeued. It is held to the machine's bound
    /// (`--max-job-memory-mib`) now, and stops there alone. Root with a memory cgroup only.
    #[test]
    fn a_command_naming_no_memory_is_held_to_the_machines_bound() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to make cgroups");
            return;
        }
        let scope = crate::cgroup::scope_for(b"command tests: the machine's memory bound");
        let Some(cgroups) = crate::cgroup::Cgroups::detect(&scope) else {
            eprintln!("skipped: this machine gives no cgroups");
            return;
        };
        if !cgroups.limits_available().0 {
            eprintln!("skipped: no memory controller");
            return;
        }
        let limits = CommandLimits {
            user: Some(JobUser::lookup("nobody").unwrap()),
            max_memory_mib: Some(64),
            // Far from reached: the run is stopped at its own bound, and says so.
            jobs_memory_mib: Some(1024),
            ..CommandLimits::default()
        };
        // `tail` keeps the one 300 MB line it is given whole.
        let spec = CommandSpec {
            wall_time_s: Some(60.0),
            ..spec(&[
                "/bin/sh",
                "-c",
                "head -c 300000000 /dev/zero | tail | wc -c; exit 0",
            ])
        };
        let gpus = ["node-0001/gpu0".to_string()];
        let job = RunJob {
            key: "vision/hog",
            tenant: "vision",
            gpu_ids: &gpus,
            gpu_nodes: &crate::gpu_nodes::GpuNodes::none(),
            spec: &spec,
        };
        let mut lines = Lines::default();
        let end = execute(job, &limits, Some(&cgroups), &mut lines, "root");
        let log = lines.0.join("\n");
        assert!(!log.contains("300000000"), "{end:?} {log}");
        assert!(log.contains("memory limit of 64 MiB"), "{end:?} {log}");

        // Asking for more than the bound is refused before anything runs, naming the field.
        let greedy = CommandSpec {
            memory_mib: Some(65),
            ..spec.clone()
        };
        let job = RunJob {
            spec: &greedy,
            ..job
        };
        let mut lines = Lines::default();
        match execute(job, &limits, Some(&cgroups), &mut lines, "root") {
            RunEnd::Failed(e) => assert!(
                e.contains("command.memory_mib") && e.contains("--max-job-memory-mib"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(lines.0.is_empty(), "{:?}", lines.0);
    }

    /// Found by asking what a run can use up of the machine's that no cgroup divides: the
    /// kernel counts asynchronous-I/O events (and open files) for the whole machine, and one run
    /// took all 65,536 events for about 2 MiB of its memory, so no other process could make an
    /// AIO context. A node lifts those counts before it runs commands
    /// ([`crate::kernelcounts`]); each run's memory bound is the one that holds now. Root with a
    /// memory cgroup only; lifts this machine's counts, as the agent does.
    #[test]
    fn a_run_cannot_take_every_aio_event_of_the_machine() {
        let Some(cgroups) = memory_cgroups(
            b"command tests: the machine's AIO events",
            &["/usr/bin/perl"],
        ) else {
            return;
        };
        if !lift_kernel_counts() {
            return;
        }
        let limits = CommandLimits {
            user: Some(JobUser::lookup("nobody").unwrap()),
            max_memory_mib: Some(64),
            ..CommandLimits::default()
        };
        // Contexts of 4,096 events each, until `most` or a refusal; then what the machine has
        // left for everyone else.
        let take = |most: u32| {
            let script = format!(
                "my ($n, $why) = (0, 'none'); \
                 while ($n < {most}) {{ my $ctx = pack('Q', 0); \
                   if (syscall({io_setup}, 4096, $ctx) != 0) {{ $why = \"$!\"; last }} $n++ }} \
                 open(my $f, '<', '/proc/sys/fs/aio-nr') or die; my $nr = <$f>; \
                 open($f, '<', '/proc/sys/fs/aio-max-nr') or die; my $max = <$f>; \
                 print 'contexts=', $n, ' why=', $why, ' left=', ($max - $nr > 0 ? 'some' : 'none'), \"\\n\";",
                io_setup = libc::SYS_io_setup
            );
            let spec = CommandSpec {
                wall_time_s: Some(60.0),
                ..spec(&["/usr/bin/perl", "-e", &script])
            };
            let (end, lines) = run_job_in("vision/aio", &spec, &limits, Some(&cgroups));
            (end, lines.0.join("\n"))
        };
        // Twice the kernel's default count, for 8 MiB or so: taken, and some left over.
        let (end, log) = take(32);
        assert!(matches!(end, RunEnd::Finished(..)), "{end:?}: {log}");
        assert!(log.contains("contexts=32 why=none left=some"), "{log}");
        // Its memory bound holds: 25 GiB of rings are never made.
        let (end, log) = take(100_000);
        assert!(!log.contains("contexts=100000"), "{end:?}: {log}");
        let memory = format!("{end:?} {log}");
        assert!(
            memory.contains("memory limit of 64 MiB") || memory.contains("Cannot allocate"),
            "{memory}"
        );
    }

    /// Found by asking the same of what the kernel counts per uid: runs under one `--job-user`
    /// share its 128 inotify instances, and one run took them all for 128 KiB of its memory, so
    /// no other tenant's run could watch a file. The count is lifted with the others
    /// ([`crate::kernelcounts`]), and the run's memory bound holds what it makes. Root with a
    /// memory cgroup only; lifts this machine's counts, as the agent does.
    #[test]
    fn a_run_cannot_take_every_inotify_instance_of_its_user() {
        let Some(cgroups) = memory_cgroups(b"command tests: a user's inotify", &["/usr/bin/perl"])
        else {
            return;
        };
        if !lift_kernel_counts() {
            return;
        }
        let limits = CommandLimits {
            user: Some(JobUser::lookup("nobody").unwrap()),
            max_memory_mib: Some(64),
            ..CommandLimits::default()
        };
        let script = format!(
            "my ($n, $why) = (0, 'none'); \
             while ($n < 300) {{ if (syscall({inotify}, 0) < 0) {{ $why = \"$!\"; last }} $n++ }} \
             print 'instances=', $n, ' why=', $why, \"\\n\";",
            inotify = libc::SYS_inotify_init1
        );
        let spec = CommandSpec {
            wall_time_s: Some(60.0),
            ..spec(&["/usr/bin/perl", "-e", &script])
        };
        let (end, lines) = run_job_in("vision/inotify", &spec, &limits, Some(&cgroups));
        let log = lines.0.join("\n");
        assert!(matches!(end, RunEnd::Finished(..)), "{end:?}: {log}");
        assert!(log.contains("instances=300 why=none"), "{log}");
    }

    /// Found by asking the same of sockets: cgroup v1 counts no run's socket buffers unless its
    /// cgroup is given a limit of them, and the kernel's one for the machine's TCP is shared by
    /// every network namespace, so a run bounded at 64 MiB held 257 MiB of them on its own
    /// loopback (and could every byte the machine's TCP may hold, where every socket on it,
    /// the daemon's among them, fails). A run's socket buffers are held to its memory bound now
    /// (on cgroup v2 the kernel counts them in it), and all runs' to half the machine's. Root
    /// with a memory cgroup only.
    #[test]
    fn a_runs_socket_buffers_are_held_to_its_memory_bound() {
        let Some(cgroups) = memory_cgroups(
            b"command tests: the runs' socket buffers",
            &["/usr/bin/perl"],
        ) else {
            return;
        };
        let limits = CommandLimits {
            user: Some(JobUser::lookup("nobody").unwrap()),
            max_memory_mib: Some(64),
            ..CommandLimits::default()
        };
        // 48 loopback connections, each written to until the kernel takes no more (about 10
        // MiB apiece where nothing bounds them), none read.
        let script = "use IO::Socket::INET; \
            my $l = IO::Socket::INET->new(Listen => 64, LocalAddr => '127.0.0.1', \
              LocalPort => 0, Proto => 'tcp') or die \"listen: $!\"; \
            my ($sent, @keep) = (0); my $chunk = 'x' x 65536; \
            for (1 .. 48) { \
              my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1', \
                PeerPort => $l->sockport, Proto => 'tcp') or last; \
              my $a = $l->accept or last; $c->blocking(0); \
              while (1) { my $n = syswrite($c, $chunk); last unless $n; $sent += $n } \
              push @keep, $c, $a } \
            print 'connections=', @keep / 2, ' sent_mib=', int($sent / 1048576), \"\\n\";";
        let spec = CommandSpec {
            wall_time_s: Some(60.0),
            ..spec(&["/usr/bin/perl", "-e", script])
        };
        let (end, lines) = run_job_in("vision/sockets", &spec, &limits, Some(&cgroups));
        let log = lines.0.join("\n");
        assert!(matches!(end, RunEnd::Finished(..)), "{end:?}: {log}");
        assert!(log.contains("connections=48 "), "{log}");
        let sent: u64 = log
            .split("sent_mib=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{log}"));
        assert!(sent <= 64, "{sent} MiB of socket buffers held: {log}");
    }

    /// Found by asking what of the kernel a run reaches: as `nobody`, with no capability, a
    /// run made a user namespace of its own (`unshare -Ur`) and held every capability over the
    /// namespaces it made there, the door to much of the kernel's attacked code; and a process
    /// as `nobody` took every page of the machine's huge page pool, which no memory bound
    /// counts. Its system calls are filtered now ([`crate::seccomp`]): no namespace, io_uring,
    /// kernel keyring or huge page, while it still forks, maps memory and runs threads.
    /// `--job-syscalls all` leaves them. Root only.
    #[test]
    fn a_run_makes_no_namespace_io_uring_keyring_or_huge_page_of_its_own() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0
            || !std::path::Path::new("/usr/bin/perl").exists()
            || !std::path::Path::new("/usr/bin/unshare").exists()
            || !std::path::Path::new("/usr/bin/python3").exists()
            || !crate::seccomp::available()
        {
            eprintln!("skipped: needs root, perl, python3, unshare and this processor's filter");
            return;
        }
        let script = format!(
            "/usr/bin/unshare -Ur true && echo userns-made || echo userns-refused; \
             /usr/bin/unshare -n true 2>/dev/null || echo netns-refused; \
             /usr/bin/perl -e 'my $p = \"\\0\" x 120; syscall({io_uring}, 1, $p); \
               print \"io_uring: $!\\n\"; \
               my ($t, $d, $v) = (\"user\", \"k\", \"v\"); syscall({add_key}, $t, $d, $v, 1, -2); \
               print \"keyring: $!\\n\"; \
               my $pid = fork; if ($pid == 0) {{ exit 7 }} waitpid($pid, 0); \
               print \"forked: \", $? >> 8, \"\\n\"'; \
             /usr/bin/python3 -c 'import threading; \
               t = threading.Thread(target=print, args=(\"threaded\",)); t.start(); t.join()'; \
             /usr/bin/python3 -c 'import multiprocessing, subprocess; \
               print(\"spawned:\", subprocess.run([\"/bin/true\"]).returncode); \
               print(\"pooled:\", multiprocessing.Pool(2).map(abs, [-1, -2]))'; \
             /usr/bin/python3 -c 'import ctypes, os; \
               libc = ctypes.CDLL(None, use_errno=True); libc.mmap.restype = ctypes.c_void_p; \
               p = libc.mmap(None, 2097152, 3, 0x22 | 0x40000, -1, 0); \
               print(\"huge page:\", os.strerror(ctypes.get_errno()) if p in (None, 2**64 - 1) \
                 else \"mapped\"); \
               f = libc.memfd_create(b\"h\", 4); \
               print(\"huge memfd:\", os.strerror(ctypes.get_errno()) if f < 0 else \"made\")'",
            io_uring = libc::SYS_io_uring_setup,
            add_key = libc::SYS_add_key,
        );
        let limits = CommandLimits {
            uids: Some(UidRange::parse("231900-231900").unwrap()),
            ..CommandLimits::default()
        };
        let asked = CommandSpec {
            wall_time_s: Some(20.0),
            ..spec(&["/bin/sh", "-c", &script])
        };
        let (end, lines) = run_job("vision/kernel", &asked, &limits);
        let log = lines.0.join("\n");
        assert!(matches!(end, RunEnd::Finished(..)), "{end:?}: {log}");
        for said in [
            "userns-refused",
            "netns-refused",
            "io_uring: Function not implemented",
            "keyring: Operation not permitted",
            "forked: 7",
            "threaded",
            "spawned: 0",
            "pooled: [1, 2]",
            "huge page: Operation not permitted",
            "huge memfd: Operation not permitted",
        ] {
            assert!(log.contains(said), "{said}: {log}");
        }
        // The operator's choice: all of them.
        let all = CommandLimits {
            syscalls: crate::seccomp::JobSyscalls::All,
            ..limits
        };
        let (end, lines) = run_job("vision/kernel-all", &asked, &all);
        let log = lines.0.join("\n");
        assert!(matches!(end, RunEnd::Finished(..)), "{end:?}: {log}");
        assert!(
            log.contains("forked: 7") && log.contains("threaded"),
            "{log}"
        );
        assert!(
            !log.contains("huge memfd: Operation not permitted"),
            "{log}"
        );
    }

    /// Found by asking what bounds runs' memory together once each run had a bound: the
    /// machine's less a tenth each, so two runs, each within its own, could take more than the
    /// machine has, and its reclaim would stall the daemon and its heartbeats as one run past
    /// it did (here, at test scale, both ran). All runs together are held to
    /// `--jobs-memory-mib` now (the limit of their cgroups' directory), and a run the kernel
    /// stops there says so. Root with a memory cgroup and python3 only.
    #[test]
    fn all_runs_together_are_held_to_the_memory_of_all_runs() {
        let Some(cgroups) =
            memory_cgroups(b"command tests: all runs' memory", &["/usr/bin/python3"])
        else {
            return;
        };
        let limits = CommandLimits {
            user: Some(JobUser::lookup("nobody").unwrap()),
            max_memory_mib: Some(64),
            jobs_memory_mib: Some(80),
            ..CommandLimits::default()
        };
        // 40 MB apiece, held a while: each within its own 64 MiB, both past the 80 of all.
        let spec = CommandSpec {
            wall_time_s: Some(60.0),
            ..spec(&[
                "/usr/bin/python3",
                "-c",
                "import time; held = b'x' * 40_000_000; time.sleep(3); print('held', len(held))",
            ])
        };
        let ends: Vec<(RunEnd, String)> = std::thread::scope(|s| {
            let runs: Vec<_> = ["vision/big-1", "vision/big-2"]
                .into_iter()
                .map(|key| {
                    let (spec, limits, cgroups) = (&spec, &limits, &cgroups);
                    s.spawn(move || {
                        let (end, lines) = run_job_in(key, spec, limits, Some(cgroups));
                        (end, lines.0.join("\n"))
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let stopped = ends.iter().filter(|(end, _)| match end {
            RunEnd::Failed(why) => why.contains("together reached their memory bound of 80 MiB"),
            _ => false,
        });
        assert!(stopped.count() >= 1, "{ends:?}");
        for (end, log) in &ends {
            assert!(
                !format!("{end:?}").contains("limit of 64 MiB"),
                "{end:?}: {log}"
            );
        }
    }

    /// Runs a victim (a secret in its environment) and an attacker at once under `limits`: the
    /// attacker is handed the victim's pid as the machine numbers it (found by this test, root,
    /// through the machine's `/proc`), signals it, signals every process it may (`kill -9 -1`),
    /// and looks for the secret in every environment its `/proc` shows. Returns both runs' ends
    /// and logs.
    fn victim_and_attacker(limits: &CommandLimits) -> ((RunEnd, String), (RunEnd, String)) {
        use std::os::unix::fs::PermissionsExt;
        // Where both runs meet: not /tmp or /var/tmp, each run's own, but a directory of this
        // test's below one only root may write in.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let at = dir.path().display().to_string();
        let run = |key: &str, script: String, env: &[(&str, &str)]| {
            let spec = CommandSpec {
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                wall_time_s: Some(20.0),
                ..spec(&["/bin/sh", "-c", &script])
            };
            let (end, lines) = run_job(key, &spec, limits);
            (end, lines.0.join("\n"))
        };
        let victim = format!(
            "echo uid=$(id -u); while [ ! -e {at}/done ]; do sleep 0.1; done; echo survived"
        );
        let attacker = format!(
            "echo uid=$(id -u); while [ ! -s {at}/victim.pid ]; do sleep 0.1; done; \
             v=$(cat {at}/victim.pid); \
             kill -9 $v 2>/dev/null && echo killed || echo kill-refused; \
             cat /proc/$v/environ 2>/dev/null | tr '\\0' '\\n' | grep SECRET || echo read-refused; \
             kill -9 -1 2>/dev/null; \
             for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ 2>/dev/null | grep SECRET; done; \
             touch {at}/done"
        );
        // The victim's processes, found by their environment.
        let find_victim = || {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
                    let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                    let env = std::fs::read(e.path().join("environ")).ok()?;
                    env.split(|&b| b == 0)
                        .any(|v| v == b"SECRET=hunter2")
                        .then_some(pid)
                });
                if let Some(pid) = found {
                    std::fs::write(dir.path().join("victim.pid"), pid.to_string()).unwrap();
                    return;
                }
                assert!(Instant::now() < deadline, "the victim never started");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        std::thread::scope(|s| {
            let v = s.spawn(|| run("language/victim", victim, &[("SECRET", "hunter2")]));
            find_victim();
            let a = s.spawn(|| run("vision/attacker", attacker, &[]));
            (v.join().unwrap(), a.join().unwrap())
        })
    }

    /// Found running the runs' tests together (the network test's second run, refused): a uid
    /// given back was still locked while a process the daemon had forked for another run held a
    /// copy of its lease's descriptor, before executing its program, and a one-uid range refused
    /// the next run as full. It is leased again once that copy is gone. Root only (the leases
    /// are root's).
    #[test]
    fn a_uid_given_back_is_leased_again_though_a_forked_process_still_holds_its_lock() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root for uid leases");
            return;
        }
        let range = UidRange::parse("231600-231600").unwrap();
        let lease = range.lease().unwrap();
        // Another run's start, forked while the lease is held: it says so through `forked`,
        // then executes its program 300 ms later (spawn returns only then).
        let mut forked = [0; 2];
        // SAFETY: a pipe of this test's own.
        assert_eq!(
            unsafe { libc::pipe2(forked.as_mut_ptr(), libc::O_CLOEXEC) },
            0
        );
        let [read, write] = forked;
        let mut child = std::process::Command::new("/bin/true");
        // SAFETY: write and usleep are async-signal-safe.
        unsafe {
            child.pre_exec(move || {
                libc::write(write, b"f".as_ptr().cast(), 1);
                libc::usleep(300_000);
                Ok(())
            });
        }
        let starting = std::thread::spawn(move || child.spawn().unwrap().wait().unwrap());
        let mut byte = 0u8;
        // SAFETY: reading one byte into a byte of this test's.
        assert_eq!(unsafe { libc::read(read, (&raw mut byte).cast(), 1) }, 1);
        drop(lease);
        let again = range.lease();
        starting.join().unwrap();
        // SAFETY: closing the pipe this test made.
        unsafe {
            libc::close(read);
            libc::close(write);
        }
        assert_eq!(again.unwrap().user.uid, 231_600);
    }

    /// Reported by a review: every tenant's command jobs ran as the one `--job-user`, so a job
    /// of one tenant killed another's (`pkill -9 -u nobody`) and read its environment from
    /// `/proc` (an `HF_TOKEN`). With `--job-uids` each run has a uid of its own: two runs at once
    /// get two uids, and neither can signal the other or read its environment. Root only.
    #[test]
    fn runs_with_uids_of_their_own_cannot_signal_or_read_each_other() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to run jobs as other uids");
            return;
        }
        let limits = CommandLimits {
            uids: Some(UidRange::parse("231000-231009").unwrap()),
            ..CommandLimits::default()
        };
        let (victim, attacker) = victim_and_attacker(&limits);
        let uid = |log: &str| {
            log.lines()
                .find_map(|l| l.strip_prefix("stdout: uid="))
                .map(str::to_string)
        };
        assert!(matches!(victim.0, RunEnd::Finished(..)), "{}", victim.1);
        assert!(victim.1.contains("survived"), "{}", victim.1);
        assert!(attacker.1.contains("kill-refused"), "{}", attacker.1);
        assert!(attacker.1.contains("read-refused"), "{}", attacker.1);
        assert!(!attacker.1.contains("hunter2"), "{}", attacker.1);
        let (a, b) = (uid(&victim.1).unwrap(), uid(&attacker.1).unwrap());
        assert_ne!(a, b);
        assert!((231000..=231009).contains(&a.parse::<u32>().unwrap()));
        // The range is checked: no root, no nobody, bounded.
        assert!(UidRange::parse("0-10").is_err());
        assert!(UidRange::parse("65000-66000").is_err());
        assert!(UidRange::parse("1000-99999999").is_err());
        assert!(UidRange::parse("2000-1000").is_err());
    }

    /// Found by reading the README's caveat as an attacker would: runs under one `--job-user`
    /// share a uid, so one tenant's `kill -9 -1` ended every other tenant's run, and a scan of
    /// `/proc` read their environments. Each run now has a PID namespace of its own, its `/proc`
    /// the namespace's: handed another run's pid, it finds no such process; `kill -9 -1` reaches
    /// its own processes alone. Root with namespaces only.
    #[test]
    fn runs_under_one_job_user_cannot_signal_or_read_each_other() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !crate::mountns::available() {
            eprintln!("skipped: needs root and namespaces (else the attack is real)");
            return;
        }
        let limits = CommandLimits {
            user: Some(JobUser::lookup("nobody").unwrap()),
            ..CommandLimits::default()
        };
        let (victim, attacker) = victim_and_attacker(&limits);
        assert!(matches!(victim.0, RunEnd::Finished(..)), "{}", victim.1);
        assert!(victim.1.contains("survived"), "{}", victim.1);
        assert!(attacker.1.contains("kill-refused"), "{}", attacker.1);
        assert!(attacker.1.contains("read-refused"), "{}", attacker.1);
        assert!(!attacker.1.contains("hunter2"), "{}", attacker.1);
        assert!(
            matches!(attacker.0, RunEnd::Finished(..)),
            "its own kill -9 -1 spared its init: {}",
            attacker.1
        );
    }

    /// Found by asking what two runs still shared once each had its own files, processes and
    /// IPC: the network. One tenant's program connected to what another's listened on at the
    /// loopback address (a `torchrun` rendezvous store, say), whatever their uids
    /// (`--job-uids` too), and to its abstract Unix sockets, which have no permissions. A run now
    /// has a network of its own, its loopback alone and up: what listens outside it (here, this
    /// test, on 127.0.0.1 and an abstract socket) is out of its reach. Root only.
    #[test]
    fn a_run_reaches_nothing_listening_outside_its_own_network() {
        use std::os::linux::net::SocketAddrExt;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root || !crate::netns::available() || !std::path::Path::new("/bin/bash").exists() {
            eprintln!("skipped: needs root, network namespaces and bash");
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let name = format!("gantry-test-{}", std::process::id());
        let at = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let _abstract = std::os::unix::net::UnixListener::bind_addr(&at).unwrap();
        let script = format!(
            "(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>&1 && echo reached-outside; \
             grep -q '@{name}' /proc/net/unix && echo sees-outside-socket || echo own-sockets"
        );
        let limits = CommandLimits {
            uids: Some(UidRange::parse("231500-231500").unwrap()),
            ..CommandLimits::default()
        };
        let asked = CommandSpec {
            wall_time_s: Some(20.0),
            ..spec(&["/bin/bash", "-c", &script])
        };
        let (end, lines) = run_job("vision/prober", &asked, &limits);
        let log = lines.0.join("\n");
        assert!(matches!(end, RunEnd::Finished(..)), "{log}");
        // Refused by its own loopback (up: a loopback down says the network is unreachable).
        assert!(log.contains("Connection refused"), "{log}");
        assert!(
            !log.contains("reached-outside") && log.contains("own-sockets"),
            "{log}"
        );
        let accepted = listener.accept();
        assert!(accepted.is_err(), "{accepted:?}");
        // The operator's choice: the machine's network, shared.
        let host = CommandLimits {
            network: crate::netns::JobNetwork::Host,
            ..limits
        };
        // A job of its own: the first one's cgroup may still be going (CI, loaded: refused).
        let (end, lines) = run_job("vision/prober-on-host", &asked, &host);
        let log = lines.0.join("\n");
        assert!(matches!(end, RunEnd::Finished(..)), "{end:?}: {log}");
        assert!(log.contains("reached-outside"), "{log}");
    }

    /// Found by asking what of the machine a run in a network of its own still saw: `/sys`
    /// was the machine's, every network interface of the machine listed in `/sys/class/net`
    /// with its counters. It is now a sysfs of the run's network namespace (its loopback
    /// alone), the cgroup hierarchies shown below it as before. Its pseudo-terminals are its
    /// own too ([`crate::mountns::Plan::with_own_ptys`]). Root only.
    #[test]
    fn a_run_in_its_own_network_sees_its_own_interfaces_in_sys() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root || !crate::netns::available() || !crate::mountns::own_sysfs_available() {
            eprintln!("skipped: needs root, network and mount namespaces");
            return;
        }
        let machines: Vec<String> = (std::fs::read_dir("/sys/class/net").unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != "lo")
            .collect();
        let groups = std::fs::read_dir("/sys/fs/cgroup").is_ok_and(|mut d| d.next().is_some());
        let script = "echo interfaces: $(ls /sys/class/net) end; \
                      echo terminals: $(ls /dev/pts) end; \
                      ls /sys/fs/cgroup | grep -q . && echo cgroups-shown; echo looked";
        let limits = CommandLimits {
            uids: Some(UidRange::parse("231700-231700").unwrap()),
            ..CommandLimits::default()
        };
        let asked = CommandSpec {
            wall_time_s: Some(20.0),
            ..spec(&["/bin/sh", "-c", script])
        };
        let (end, lines) = run_job("vision/interfaces", &asked, &limits);
        let log = lines.0.join("\n");
        assert!(matches!(end, RunEnd::Finished(..)), "{log}");
        assert!(log.contains("interfaces: lo end"), "{machines:?}: {log}");
        if crate::mountns::own_ptys_available() {
            assert!(log.contains("terminals: ptmx end"), "{log}");
        }
        assert_eq!(log.contains("cgroups-shown"), groups, "{log}");
        // The operator's choice: the machine's network, and its interfaces.
        let host = CommandLimits {
            network: crate::netns::JobNetwork::Host,
            ..limits
        };
        let (end, lines) = run_job("vision/interfaces-on-host", &asked, &host);
        let log = lines.0.join("\n");
        assert!(matches!(end, RunEnd::Finished(..)), "{end:?}: {log}");
        for name in &machines {
            assert!(log.contains(name.as_str()), "{name}: {log}");
        }
    }

    /// Found by asking what bounds runs' writes together once each run's scratch was a file
    /// system of its own: each held a tenth of the disk, and runs are placed on GPUs (a cluster
    /// model of 256 on one machine), so ten at once filling theirs filled the disk the daemon's
    /// database and audit log live on. A run now reserves its scratch's size of what all runs
    /// may take together (`--jobs-disk-mib`), and waits, saying so, while there is no room.
    /// Root only (loop devices).
    #[test]
    fn a_run_waits_while_the_runs_going_on_hold_the_scratch_of_all_runs() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !crate::scratchfs::available() {
            eprintln!("skipped: needs root, loop devices and mkfs.ext4");
            return;
        }
        let budget = std::sync::Arc::new(crate::budget::Budget::new(100));
        let limits = CommandLimits {
            uids: Some(UidRange::parse("231800-231800").unwrap()),
            max_disk_mib: Some(64),
            scratch_budget: Some(budget.clone()),
            ..CommandLimits::default()
        };
        // Another run's scratch, held meanwhile.
        let held = budget.try_reserve("other", 64).unwrap();
        let asked = CommandSpec {
            disk_mib: Some(64),
            wall_time_s: Some(20.0),
            ..spec(&["/bin/sh", "-c", "df -m . | tail -n 1"])
        };
        let waiter = std::thread::spawn(move || run_job("vision/waiter", &asked, &limits));
        std::thread::sleep(Duration::from_secs(1));
        assert!(!waiter.is_finished(), "it started without room");
        drop(held);
        let (end, lines) = waiter.join().unwrap();
        let log = lines.0.join("\n");
        assert!(matches!(end, RunEnd::Finished(..)), "{log}");
        assert!(log.contains("waiting for 64 MiB of scratch"), "{log}");
        assert!(log.contains("/dev/loop"), "{log}");
        // And given back once it ended.
        assert!(budget.try_reserve("other", 100).is_some());
        // All runs' scratch may not be less than one run's.
        let refused = scratch_budget(Some(63), Some(64)).unwrap_err();
        assert!(refused.contains("--max-job-disk-mib"), "{refused}");
    }

    /// Found by asking what bounds a run's writes once every world-writable directory was its
    /// own tmpfs: its scratch directory lay on the machine's disk, bounded by nothing, so one
    /// tenant's program filled the file system the daemon's database, audit log and datasets
    /// live on. Its scratch is now a file system of its own of `disk_mib` (or
    /// `--max-job-disk-mib`), so a write past it fails in the run alone; one asking for more
    /// than the machine allows is refused before it starts; and its loop device is gone once
    /// it ends. Root only.
    #[test]
    fn a_runs_scratch_holds_no_more_than_its_disk_mib() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !crate::scratchfs::available() {
            eprintln!("skipped: needs root, loop devices and mkfs.ext4");
            return;
        }
        let limits = CommandLimits {
            uids: Some(UidRange::parse("231400-231400").unwrap()),
            max_disk_mib: Some(64),
            ..CommandLimits::default()
        };
        let attached = || {
            let loops = std::fs::read_dir("/sys/block").unwrap().flatten();
            (loops.filter_map(|d| std::fs::read_to_string(d.path().join("loop/backing_file")).ok()))
                .filter(|f| f.contains(".scratch-fs"))
                .count()
        };
        let before = attached();
        // Past its bound: the write fails in the run, which goes on and says so.
        let asked = CommandSpec {
            disk_mib: Some(16),
            wall_time_s: Some(20.0),
            ..spec(&[
                "/bin/sh",
                "-c",
                "dd if=/dev/zero of=big bs=1M count=64 2>&1; \
                 echo wrote=$(( $(stat -c %s big) >> 20 )) owner=$(stat -c %u .) \
                 tmpdir=$( [ \"$TMPDIR\" = \"$PWD\" ] && echo scratch)",
            ])
        };
        let (end, lines) = run_job("vision/filler", &asked, &limits);
        let log = lines.0.join("\n");
        assert!(matches!(end, RunEnd::Finished(..)), "{log}");
        assert!(log.contains("No space left on device"), "{log}");
        let wrote: u64 = (log.split("wrote=").nth(1))
            .and_then(|w| w.split_whitespace().next()?.parse().ok())
            .unwrap_or(u64::MAX);
        assert!(wrote < 16, "{log}");
        assert!(log.contains("owner=231400 tmpdir=scratch"), "{log}");
        // Naming none, it gets the machine's bound; asking past it, it is refused.
        let asked = CommandSpec {
            wall_time_s: Some(20.0),
            ..spec(&["/bin/sh", "-c", "df -m . | tail -n 1"])
        };
        let (end, lines) = run_job("vision/bounded", &asked, &limits);
        let log = lines.0.join("\n");
        assert!(matches!(end, RunEnd::Finished(..)), "{log}");
        // `stdout: /dev/loop<N> <size> <used> ...`: a file system of its own, of the bound.
        let size: u64 = (log.lines().find(|l| l.contains("/dev/loop")))
            .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
            .unwrap_or(0);
        assert!((48..=64).contains(&size), "{log}");
        let asked = CommandSpec {
            disk_mib: Some(65),
            ..spec(&["true"])
        };
        match run_job("vision/greedy", &asked, &limits).0 {
            RunEnd::Failed(e) => assert!(e.contains("--max-job-disk-mib"), "{e}"),
            other => panic!("{other:?}"),
        }
        // Detached with the run's end (the kernel lets go of it a moment after).
        let deadline = Instant::now() + Duration::from_secs(10);
        while attached() > before {
            assert!(Instant::now() < deadline, "a loop device stayed attached");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Found by reading the mount namespace against the sweep: each run had its own `/tmp` and
    /// `/dev/shm`, but two runs of one uid at once (one `--job-user`, or a uid handed on) still
    /// shared `/var/tmp`, `/run/lock` and every other directory each uid may write in, so one
    /// tenant's program read what another's was writing there (the sweep comes only after).
    /// What another run of the uid keeps in any of them is out of a run's sight. Root only.
    #[test]
    fn a_run_sees_nothing_another_run_of_its_uid_keeps_in_any_world_writable_directory() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !crate::mountns::available() {
            eprintln!("skipped: needs root and mount namespaces to run jobs as other uids");
            return;
        }
        let uid = 231_300;
        // As another run of the uid would leave them while this one runs.
        let tag = format!("gantry-kept-{}", std::process::id());
        let kept: Vec<std::path::PathBuf> = (crate::mountns::shared_dirs().iter())
            .map(|dir| dir.join(&tag))
            .filter(|path| std::fs::write(path, "secret\n").is_ok())
            .collect();
        for path in &kept {
            std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let names: Vec<&str> = ["/var/tmp", "/run/lock"]
            .into_iter()
            .filter(|d| kept.iter().any(|k| k.starts_with(d)))
            .collect();
        assert!(!names.is_empty(), "no shared directory here: {kept:?}");
        let reads: String = kept
            .iter()
            .map(|path| format!("cat {} 2>/dev/null; ", path.display()))
            .collect();
        let limits = CommandLimits {
            uids: Some(UidRange::parse(&format!("{uid}-{uid}")).unwrap()),
            ..CommandLimits::default()
        };
        let spec = CommandSpec {
            wall_time_s: Some(20.0),
            ..spec(&["/bin/sh", "-c", &format!("{reads}echo read")])
        };
        let (end, lines) = run_job("vision/reader", &spec, &limits);
        for path in &kept {
            let _ = std::fs::remove_file(path);
        }
        let log = lines.0.join("\n");
        assert!(matches!(end, RunEnd::Finished(..)), "{log}");
        assert!(
            log.contains("read") && !log.contains("secret"),
            "{names:?}: {log}"
        );
    }

    /// Every run's cgroup lay in the daemon's directory of runs, readable by every uid: a run
    /// listed the others, named after their tenants and jobs, and read their memory, CPU and
    /// processes. A run now sees its own cgroup alone there. Root with cgroups only.
    #[test]
    fn a_run_sees_no_other_runs_cgroup() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !crate::mountns::available() {
            eprintln!("skipped: needs root and mount namespaces");
            return;
        }
        let scope = crate::cgroup::scope_for(b"command tests: other runs' cgroups");
        let Some(cgroups) = crate::cgroup::Cgroups::detect(&scope) else {
            eprintln!("skipped: this machine gives no cgroups");
            return;
        };
        // Another tenant's run, under way.
        let nodes = crate::gpu_nodes::GpuNodes::none();
        let bounds = crate::cgroup::Bounds {
            max_pids: 64,
            memory_mib: None,
            all_memory_mib: None,
        };
        let other = (cgroups.create(
            &run_name("other/secret-job"),
            Default::default(),
            bounds,
            &nodes,
        ))
        .unwrap();
        let script = "find /sys/fs/cgroup -type d -name 'other_secret-job*' 2>/dev/null; \
             find /sys/fs/cgroup -type d -name 'vision_looker*' 2>/dev/null | grep -q . && echo own-seen; \
             echo looked";
        let spec = CommandSpec {
            wall_time_s: Some(20.0),
            ..spec(&["/bin/sh", "-c", script])
        };
        let (end, lines) = run_job_in("vision/looker", &spec, &job_user_limits(), Some(&cgroups));
        let seen = other.dirs().iter().any(|d| d.is_dir());
        drop(other);
        let log = lines.0.join("\n");
        assert!(seen, "the other run's cgroup was not made");
        assert!(matches!(end, RunEnd::Finished(..)), "{log}");
        assert!(log.contains("own-seen") && log.contains("looked"), "{log}");
        assert!(!log.contains("other_secret-job"), "{log}");
    }

    /// Found by a review: a job stayed in the daemon's session, so one started from an
    /// operator's shell typed commands into its terminal as root (`TIOCSTI`); it inherited the
    /// descriptors the daemon's launcher left open (a writable pipe); a set-uid copy of a shell
    /// that one run left in /tmp ran as its uid inside a later run of another tenant given the
    /// same uid, and read that run's secrets; and the lease files were anyone's to lock. A run
    /// now has a session of its own, the daemon's three descriptors alone, no privilege to gain
    /// (`no_new_privs`), umask 077, its scratch as `TMPDIR`, and is the first the kernel kills
    /// when memory runs out; what its uid left in the shared temporary directories, and its
    /// System V IPC objects, go with the lease. Root only.
    #[test]
    fn a_run_has_its_own_session_no_inherited_descriptor_no_privilege_to_gain_and_leaves_nothing_behind()
     {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to run jobs as other uids");
            return;
        }
        // A descriptor the launcher left open, not close-on-exec.
        let null = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: duplicating a valid descriptor onto a free high number.
        let leaked = unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 251) };
        assert_eq!(leaked, 251);
        let limits = CommandLimits {
            uids: Some(UidRange::parse("231100-231100").unwrap()),
            ..CommandLimits::default()
        };
        let script = "read -r pid comm state ppid pgrp sid tty rest < /proc/$$/stat; \
             [ \"$tty\" = 0 ] && echo no-terminal; \
             [ -e /proc/$$/fd/251 ] && echo fd-leaked || echo fd-closed; \
             grep NoNewPrivs /proc/$$/status; echo umask=$(umask); \
             echo oom=$(cat /proc/$$/oom_score_adj); \
             [ \"$TMPDIR\" = \"$PWD\" ] && echo tmpdir-is-scratch; \
             u=$(id -u); touch /tmp/gantry-left-$u /dev/shm/gantry-left-$u; \
             touch /run/lock/gantry-left-$u 2>/dev/null; \
             mkdir /var/tmp/gantry-left-$u && touch /var/tmp/gantry-left-$u/f; \
             ipcmk -M 4096 >/dev/null && ipcmk -Q >/dev/null && ipcmk -S 1 >/dev/null && echo made-ipc; \
             echo uid=$u";
        let spec = CommandSpec {
            wall_time_s: Some(20.0),
            ..spec(&["/bin/sh", "-c", script])
        };
        let (end, lines) = run_job("vision/left", &spec, &limits);
        // SAFETY: closing the descriptor this test made.
        unsafe { libc::close(251) };
        let log = lines.0.join("\n");
        assert!(matches!(end, RunEnd::Finished(..)), "{log}");
        for said in [
            "no-terminal",
            "fd-closed",
            "NoNewPrivs:\t1",
            "umask=0077",
            "oom=1000",
            "tmpdir-is-scratch",
            "made-ipc",
            "uid=231100",
        ] {
            assert!(log.contains(said), "{said}: {log}");
        }
        // Found by a review: `/run/lock` was not swept, and the next tenant given the uid read
        // what the last one left there.
        for left in [
            "/tmp/gantry-left-231100",
            "/dev/shm/gantry-left-231100",
            "/var/tmp/gantry-left-231100",
            "/run/lock/gantry-left-231100",
        ] {
            assert!(!std::path::Path::new(left).exists(), "{left} stayed");
        }
        // Nor its System V IPC objects (where `ipcmk` made them).
        for table in [
            "/proc/sysvipc/shm",
            "/proc/sysvipc/msg",
            "/proc/sysvipc/sem",
        ] {
            let text = std::fs::read_to_string(table).unwrap_or_default();
            let theirs = text
                .lines()
                .skip(1)
                .filter(|l| l.split_whitespace().any(|f| f == "231100"))
                .count();
            assert_eq!(theirs, 0, "{table}:\n{text}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(UID_LEASES), 0o700);
        assert_eq!(mode(&format!("{UID_LEASES}/231100")), 0o600);
    }

    /// Found by a review: runs under one `--job-user` shared `/tmp` and `/dev/shm`, so one
    /// tenant's run read what another's left there, and what a run wrote to `/dev/shm`
    /// (memory) outlived it. Each run now has its own, gone with it; its scratch directory and
    /// a `cwd` under `/tmp` are still where they were, and a `cwd` below a directory the user
    /// may not pass is still refused. Root only (and a machine that gives mount namespaces).
    #[test]
    fn runs_under_one_job_user_have_their_own_tmp_and_shm_and_leave_nothing_there() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !crate::mountns::available() {
            eprintln!("skipped: needs root and mount namespaces");
            return;
        }
        let limits = CommandLimits {
            user: Some(JobUser::lookup("nobody").unwrap()),
            ..CommandLimits::default()
        };
        let run = |argv: &[&str], cwd: Option<&std::path::Path>| {
            let spec = CommandSpec {
                wall_time_s: Some(20.0),
                cwd: cwd.map(|c| c.to_str().unwrap().to_string()),
                ..spec(argv)
            };
            let (end, lines) = run_job("vision/tmp", &spec, &limits);
            (end, lines.0.join("\n"))
        };
        let tag = format!("gantry-private-{}", std::process::id());
        let writes = format!(
            "echo secret > /tmp/{tag} && echo secret > /dev/shm/{tag} && echo wrote; \
             [ -w \"$TMPDIR\" ] && [ \"$TMPDIR\" = \"$PWD\" ] && echo scratch-ok"
        );
        let (end, log) = run(&["/bin/sh", "-c", &writes], None);
        assert!(matches!(end, RunEnd::Finished(..)), "{log}");
        assert!(log.contains("wrote") && log.contains("scratch-ok"), "{log}");
        for left in [format!("/tmp/{tag}"), format!("/dev/shm/{tag}")] {
            assert!(
                !std::path::Path::new(&left).exists(),
                "{left} is the machine's"
            );
        }
        // Planted on the machine: a later run does not see it.
        std::fs::write(format!("/dev/shm/{tag}"), "planted").unwrap();
        let reads = format!("cat /tmp/{tag} /dev/shm/{tag} 2>/dev/null; ls /tmp /dev/shm | wc -l");
        let (_, log) = run(&["/bin/sh", "-c", &reads], None);
        std::fs::remove_file(format!("/dev/shm/{tag}")).unwrap();
        assert!(!log.contains("secret") && !log.contains("planted"), "{log}");
        // A cwd under /tmp the user may enter is there; one below a directory only root may
        // pass is refused as before.
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        let shut = dir.path().join("shut");
        std::fs::create_dir_all(open.join("inner")).unwrap();
        std::fs::create_dir_all(shut.join("inner")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for (d, mode) in [(dir.path(), 0o755), (&open, 0o777), (&shut, 0o700)] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::set_permissions(open.join("inner"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        std::fs::set_permissions(shut.join("inner"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let (end, log) = run(
            &["/bin/sh", "-c", "pwd; echo made > here"],
            Some(&open.join("inner")),
        );
        assert!(matches!(end, RunEnd::Finished(..)), "{log}");
        assert!(log.contains(open.join("inner").to_str().unwrap()), "{log}");
        assert!(
            open.join("inner/here").exists(),
            "written where the job said"
        );
        let (end, log) = run(&["/bin/sh", "-c", "echo in"], Some(&shut.join("inner")));
        assert!(matches!(end, RunEnd::Failed(_)), "{log}");
        // Found by the review of this: a `cwd` through a symbolic link (one a run made in its
        // scratch) bound the machine's /dev/shm, and what the run wrote there stayed. A link
        // on the way is refused.
        std::os::unix::fs::symlink("/dev/shm", open.join("shm")).unwrap();
        let (end, log) = run(
            &["/bin/sh", "-c", &format!("echo in > {tag}-linked")],
            Some(&open.join("shm")),
        );
        assert!(matches!(end, RunEnd::Failed(_)), "{log}");
        assert!(!std::path::Path::new(&format!("/dev/shm/{tag}-linked")).exists());
        // Its System V objects are its own, and go with it.
        let nobodys = || {
            std::fs::read_to_string("/proc/sysvipc/shm")
                .unwrap_or_default()
                .lines()
                .filter(|l| l.split_whitespace().nth(7) == Some("65534"))
                .count()
        };
        let before = nobodys();
        let (end, log) = run(&["/bin/sh", "-c", "ipcmk -M 4096 && echo made"], None);
        assert!(matches!(end, RunEnd::Finished(..)), "{log}");
        assert!(log.contains("made"), "{log}");
        assert_eq!(nobodys(), before, "a segment outlived its run");
    }

    /// Found by a review: the memory defaults were reckoned from the host's memory, whatever
    /// the limit of the container the daemon runs in. The least limit of its cgroup and those
    /// above it bounds them, on cgroup v1 and v2.
    #[test]
    fn the_memory_this_process_may_use_is_bounded_by_its_cgroups_limit() {
        let root = tempfile::tempdir().unwrap();
        let put = |path: &str, text: &str| {
            let p = root.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        // v1: the container's own cgroup is limited, the one above it is not.
        put("memory/docker/abc/memory.limit_in_bytes", "8589934592\n");
        put(
            "memory/docker/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        put("memory/memory.limit_in_bytes", "9223372036854771712\n");
        let v1 = "9:pids:/docker/abc\n4:memory:/docker/abc\n0::/\n";
        assert_eq!(cgroup_memory_limit_mib(root.path(), v1), Some(8192));
        // v2: unlimited itself ("max"), limited above.
        put("kube/pod/app/memory.max", "max\n");
        put("kube/pod/memory.max", "17179869184\n");
        assert_eq!(
            cgroup_memory_limit_mib(root.path(), "0::/kube/pod/app\n"),
            Some(16384)
        );
        // No limit anywhere, or nothing to read: none.
        assert_eq!(cgroup_memory_limit_mib(root.path(), "0::/\n"), None);
        assert_eq!(cgroup_memory_limit_mib(root.path(), "garbage"), None);
    }

    #[test]
    fn visible_devices_are_the_placed_ordinals_on_one_node() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            visible_devices(&ids(&["node-0001/gpu3", "node-0001/gpu5"])).unwrap(),
            "3,5"
        );
        assert!(
            visible_devices(&ids(&["node-0001/gpu3", "node-0002/gpu3"]))
                .unwrap_err()
                .contains("more than one node")
        );
        assert!(visible_devices(&ids(&["gpu-0"])).is_err());
    }
}
