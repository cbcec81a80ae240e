//! A command run's own `/tmp`, `/dev/shm` and every other directory each uid may write in: a
//! mount namespace per run, with one fresh tmpfs shown at each, gone with the run's last process.
//!
//! Without it, runs under one `--job-user` shared them: one tenant's program read what another's
//! left there (same uid), and what a run wrote to `/dev/shm` (memory) outlived it, its memory
//! limit and its cgroup, until the machine restarted. `/tmp` and `/dev/shm` alone were not the
//! class: two runs of one uid at once still met in `/var/tmp` and `/run/lock`, so every
//! world-writable directory ([`shared_dirs`]) gets one. They are one tmpfs, a directory of it
//! bound on each: a tmpfs apiece, each as large as the run's memory, let a run without a memory
//! controller (which counts tmpfs pages as the run's) hold that much in every one of them, four
//! times its bound on a usual machine. Where the run's working directory lies
//! under one of them (its scratch directory, or a `cwd` the job names), that one directory is
//! bound back at its path, opened as the run's user first so that binding it shows nothing the
//! user could not reach before. The daemon's cgroup directory of runs shows the run its own
//! cgroup alone: it listed every run's, named after its tenant and job, with their memory, CPU
//! and processes, readable by every uid. Needs root's `CAP_SYS_ADMIN`; a machine without it (a container
//! that drops it) runs commands with the shared directories, and says so once.

use std::ffi::CString;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

/// Everything [`Plan::enter`] needs, made before the fork (after it only async-signal-safe calls
/// may run: no allocation).
#[derive(Debug)]
pub struct Plan {
    /// tmpfs options: mode, and size where the run's memory is bounded.
    options: CString,
    /// The directories given a directory of the run's tmpfs ([`covered_dirs`]).
    covered: Vec<CString>,
    /// That directory for each of `covered`, in the tmpfs as it is first mounted (on the first
    /// of them): `<first>/<i>`.
    staged: Vec<CString>,
    /// The run's directory and the directories above it inside the covered directory it lies
    /// in, to be made in the new tmpfs and the directory bound back at the last of them.
    bind: Option<Bind>,
    /// Its scratch file system ([`crate::scratchfs`]), mounted on the run's directory in place
    /// of the bind.
    fs: Option<FsMount>,
    /// Its cgroups, each shown alone in its directory of runs.
    groups: Vec<OwnGroup>,
    /// Whether `/sys` is a sysfs of the run's own network namespace ([`Plan::in_own_network`]).
    own_sysfs: bool,
    /// Whether `/dev/pts` is a devpts of the run's own ([`Plan::with_own_ptys`]).
    own_ptys: bool,
}

/// A run's cgroup directory, shown where the daemon's directory of runs would list every run's.
#[derive(Debug)]
struct OwnGroup {
    /// The directory of runs (`gantry-<scope>`), hidden under a tmpfs of root's.
    runs: CString,
    /// The run's own, in it, bound back there.
    run: CString,
}

#[derive(Debug)]
struct FsMount {
    /// `/dev/loop<N>`.
    device: CString,
    /// The run's directory.
    target: CString,
    /// `lost+found` in it, which the run has no use for.
    lost_found: CString,
}

#[derive(Debug)]
struct Bind {
    /// The directory's path, a part at a time from `/` (`tmp`, `a`, `b`): walked one part at a
    /// time without following a symbolic link.
    parts: Vec<CString>,
    /// `/tmp/a`, `/tmp/a/b`, ... down to the directory itself.
    chain: Vec<CString>,
}

/// A run's tmpfs holds at most one file for each page of its size.
const INODES_PER_MIB: u64 = 256;

/// Where world-writable directories are looked for: the usual ones, the top of the file
/// system's usual parents, and every mount point.
const SHARED_TMP: [&str; 4] = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"];

/// The directories every uid may write in on this machine, where a run's files would outlive
/// it: those of [`SHARED_TMP`], the children of `/`, `/var`, `/run` and `/dev` and the mount
/// points that are world-writable, each once (links resolved). Found once, by class: a fixed
/// list missed `/run/lock`, and a review's second tenant read the first one's file there.
pub(crate) fn shared_dirs() -> &'static [PathBuf] {
    use std::os::unix::fs::PermissionsExt;
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let children = ["/", "/var", "/run", "/dev"]
            .into_iter()
            .flat_map(|parent| {
                (std::fs::read_dir(parent).into_iter().flatten().flatten()).map(|e| e.path())
            });
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mounted = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(PathBuf::from)
            .collect::<Vec<_>>();
        let mut dirs: Vec<PathBuf> = (SHARED_TMP.iter().map(PathBuf::from))
            .chain(children)
            .chain(mounted)
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .filter(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o002 != 0)
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    })
}

/// The directories a run gets a tmpfs of its own on: `/tmp`, `/dev/shm` (where it is a
/// directory) and [`shared_dirs`], none below another (the tmpfs above hides it, and a mount
/// on it would find no directory there), never `/`.
fn covered_dirs() -> &'static [PathBuf] {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let usual = ["/tmp", "/dev/shm"].into_iter().map(PathBuf::from);
        let mut dirs: Vec<PathBuf> = (usual.filter(|p| p.is_dir()))
            .chain(shared_dirs().iter().cloned())
            .filter(|p| p.parent().is_some())
            .collect();
        dirs.sort();
        dirs.dedup();
        let mut outermost: Vec<PathBuf> = Vec::new();
        for dir in dirs {
            // Sorted, so a directory's covered ancestor, where it has one, came just before.
            if !outermost.last().is_some_and(|above| dir.starts_with(above)) {
                outermost.push(dir);
            }
        }
        outermost
    })
}

/// Whether runs get their own `/tmp`, `/dev/shm` (and the rest of [`covered_dirs`]) and PID
/// namespace ([`crate::pidns`]) here, found once by trying it in a child.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    let probe = || {
        let plan =
            Plan::new(Path::new("/"), Some(1), None).ok_or(std::io::ErrorKind::InvalidInput)?;
        // SAFETY: `enter` and `pidns::enter` make only async-signal-safe calls.
        unsafe {
            probe_child(move || {
                plan.enter(0, 0)?;
                crate::pidns::enter()
            })
        }
    };
    found_once(
        &AVAILABLE,
        probe,
        "command runs under one --job-user share /tmp, /dev/shm, /var/tmp and see each other's \
         processes: this machine gives the daemon no mount or PID namespaces (root's \
         CAP_SYS_ADMIN)",
    )
}

/// Whether a run in a network namespace of its own can be shown that namespace's sysfs
/// ([`Plan::in_own_network`]) here, found once by trying it in a child.
pub fn own_sysfs_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    found_once(
        &AVAILABLE,
        || probe_plan(Plan::in_own_network, true),
        "command runs in networks of their own see the machine's network interfaces in /sys: \
         the daemon can mount no sysfs in a run's network namespace here",
    )
}

/// Whether a run can be given pseudo-terminals of its own ([`Plan::with_own_ptys`]) here,
/// found once by trying it in a child.
pub fn own_ptys_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    found_once(
        &AVAILABLE,
        || probe_plan(Plan::with_own_ptys, false),
        "command runs take pseudo-terminals from the machine's (one run may hold every one): \
         the daemon can mount no devpts of a run's own here",
    )
}

/// Whether a child entering the plan `shaped` makes of a run's (in a network namespace of its
/// own first, with `own_network`) starts here.
fn probe_plan(shaped: fn(Plan) -> Plan, own_network: bool) -> std::io::Result<()> {
    let plan = Plan::new(Path::new("/"), Some(1), None).ok_or(std::io::ErrorKind::InvalidInput)?;
    let plan = shaped(plan);
    // SAFETY: both `enter`s make only async-signal-safe calls.
    unsafe {
        probe_child(move || {
            if own_network {
                crate::netns::enter()?;
            }
            plan.enter(0, 0)
        })
    }
}

/// The most pseudo-terminals one run holds at once.
pub const MAX_PTYS: u32 = 256;

/// A run's devpts: its own instance, of [`MAX_PTYS`]; its terminals its user's alone, and its
/// `ptmx` anyone's (where `/dev/ptmx` is a link to it).
const DEVPTS: &std::ffi::CStr = c"newinstance,ptmxmode=0666,mode=0600,max=256";

/// Whether what `probe` tries (what a run's start does) works here, found once (`cell`); said
/// once, with `warning`, where it does not.
pub(crate) fn found_once<E: std::fmt::Display>(
    cell: &OnceLock<bool>,
    probe: impl FnOnce() -> Result<(), E>,
    warning: &str,
) -> bool {
    *cell.get_or_init(|| match probe() {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "{warning}");
            false
        }
    })
}

/// Starts `/bin/sh -c true` as root, `enter` run in it between fork and exec, as a run's start
/// runs it: whether that works here.
///
/// # Safety
/// `enter` makes only async-signal-safe calls.
pub(crate) unsafe fn probe_child(
    enter: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
    }
    let mut command = std::process::Command::new("/bin/sh");
    command
        .args(["-c", "true"])
        .stdin(std::process::Stdio::null());
    // SAFETY: the caller's promise.
    unsafe {
        command.pre_exec(enter);
    }
    let status = command.status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("the probe ended {status}")))
    }
}

impl Plan {
    /// The plan for a run working in `cwd` whose memory is bounded at `memory_mib` (the tmpfs
    /// is that size: what it holds counts against the run's memory where cgroups exist, and is
    /// bounded where they do not), `fs` mounted on `cwd` where it is given (its scratch
    /// directory's file system); `None` when `cwd` cannot be written as a C string.
    pub fn new(
        cwd: &Path,
        memory_mib: Option<u64>,
        fs: Option<&crate::scratchfs::ScratchFs>,
    ) -> Option<Plan> {
        let options = match memory_mib {
            // Files too, one per page of its size (tmpfs's own ratio, but to the machine's
            // memory): each file's inode is kernel memory that no page count holds, and a run
            // bounded at 4 MiB made millions of empty files, gigabytes of it.
            Some(mib) => format!(
                "mode=1777,size={mib}m,nr_inodes={}",
                mib.max(1).saturating_mul(INODES_PER_MIB),
                mib = mib.max(1)
            ),
            None => "mode=1777".to_string(),
        };
        let covered = covered_dirs();
        let bind = match covered.iter().find(|root| cwd.starts_with(root)) {
            Some(root) => bind_back(root, cwd).ok()?,
            None => None,
        };
        let fs = match fs {
            Some(fs) => Some(FsMount {
                device: fs.device().to_owned(),
                target: c_path(cwd).ok()?,
                lost_found: c_path(&cwd.join("lost+found")).ok()?,
            }),
            None => None,
        };
        let staged = (0..covered.len()).map(|i| c_path(&covered[0].join(i.to_string())));
        let covered = covered.iter().map(|d| c_path(d));
        Some(Plan {
            options: CString::new(options).ok()?,
            covered: covered.collect::<Result<_, _>>().ok()?,
            staged: staged.collect::<Result<_, _>>().ok()?,
            bind,
            fs,
            groups: Vec::new(),
            own_sysfs: false,
            own_ptys: false,
        })
    }

    /// The plan that shows the run, in each of the daemon's cgroup directories of runs (the
    /// parents of `dirs`, its cgroups), its own cgroup alone (`None`: a path with a NUL).
    pub fn showing_own_groups(mut self, dirs: &[PathBuf]) -> Option<Plan> {
        let mut dirs = dirs.to_vec();
        // Controllers mounted together share a directory: shown once.
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            self.groups.push(OwnGroup {
                runs: c_path(dir.parent()?).ok()?,
                run: c_path(&dir).ok()?,
            });
        }
        Some(self)
    }

    /// The plan for a run in a network namespace of its own, entered before [`Plan::enter`]:
    /// `/sys` is a sysfs of that namespace (the machine's showed every network interface of
    /// the machine, its name and counters), the cgroup hierarchies mounted below it shown again
    /// there (nothing else: the machine's debugfs, tracefs, securityfs, ... stay out).
    pub fn in_own_network(mut self) -> Plan {
        self.own_sysfs = true;
        self
    }

    /// The plan that gives the run pseudo-terminals of its own: `/dev/pts` a devpts instance
    /// of its own, of at most [`MAX_PTYS`] (`/dev/ptmx` opens the instance at `pts` beside it).
    /// Every run allocated from the machine's instance, which may use every pseudo-terminal of
    /// the kernel's (`kernel.pty.max`, 4,096 here): one run took them all, and no operator's
    /// `ssh` had a terminal, nor another run. Other instances share what the machine's keeps
    /// for itself (`kernel.pty.reserve`) with none of them.
    pub fn with_own_ptys(mut self) -> Plan {
        self.own_ptys = true;
        self
    }

    /// In the child, as root, before it takes the run's ids (`uid`, `gid`; its supplementary
    /// groups already dropped): a mount namespace of its own whose mounts the machine's never
    /// see (and whose unmounts it follows), and an IPC namespace of its own (System V objects
    /// and POSIX queues, gone with it); the directory opened as the run's user, a part at a
    /// time, no symbolic link followed (found by a review: a `cwd` through a link the run had
    /// made in its scratch bound the machine's `/dev/shm`, `/tmp` or `/`, and what the run wrote
    /// there stayed); one tmpfs, a directory of it bound on each covered directory (the first
    /// last, over the tmpfs's root, which no path then reaches); the directory bound back with
    /// what is mounted below it (a bind of it alone showed what those mounts cover); each
    /// directory of runs hidden under a tmpfs of root's, the run's own cgroup bound back in it;
    /// where the plan says so, a sysfs of its network ([`Plan::in_own_network`]) and a devpts
    /// of its own ([`Plan::with_own_ptys`]).
    ///
    /// # Safety
    /// Only between fork and exec, in a single-threaded child: it changes the process's
    /// effective ids and namespace.
    pub unsafe fn enter(&self, uid: libc::uid_t, gid: libc::gid_t) -> std::io::Result<()> {
        // SAFETY (for the block): each step's promise is this function's.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC) != 0
                || libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            self.show_own_groups()?;
            if self.own_sysfs {
                show_own_sysfs()?;
            }
            if self.own_ptys {
                let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
                let pts = c"devpts".as_ptr();
                if libc::mount(
                    pts,
                    c"/dev/pts".as_ptr(),
                    pts,
                    flags,
                    DEVPTS.as_ptr().cast(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Opened in the new namespace (a mount of another cannot be bound here) and before
            // the tmpfs hides it; a file system of its own is mounted there instead.
            let dir = match (&self.bind, &self.fs) {
                (Some(bind), None) => Some(Fd(open_as(bind, uid, gid)?)),
                _ => None,
            };
            self.mount_tmpfs()?;
            if let Some(bind) = &self.bind {
                for part in &bind.chain {
                    if libc::mkdir(part.as_ptr(), 0o755) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            match (&self.fs, &self.bind, dir) {
                (Some(fs), ..) => fs.mount(),
                (None, Some(bind), Some(dir)) => {
                    let target = bind.chain.last().map_or(c"/tmp".as_ptr(), |c| c.as_ptr());
                    bind_fd(dir.0, target, libc::MS_REC)
                }
                _ => Ok(()),
            }
        }
    }

    /// Each directory of runs hidden under a tmpfs of root's, the run's own cgroup bound back.
    ///
    /// # Safety
    /// As [`Plan::enter`], in its mount namespace.
    unsafe fn show_own_groups(&self) -> std::io::Result<()> {
        for group in &self.groups {
            // SAFETY (for the block): raw system calls on valid C strings made before the fork.
            unsafe {
                let run = Fd(libc::open(
                    group.run.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                ));
                if run.0 < 0
                    || libc::mount(
                        c"tmpfs".as_ptr(),
                        group.runs.as_ptr(),
                        c"tmpfs".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        c"mode=755,size=4k".as_ptr().cast(),
                    ) != 0
                    || libc::mkdir(group.run.as_ptr(), 0o755) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                bind_fd(run.0, group.run.as_ptr(), 0)?;
            }
        }
        Ok(())
    }

    /// One tmpfs on the first covered directory, a directory of it bound on each (the first's
    /// last, over the tmpfs's root, which no path then reaches).
    ///
    /// # Safety
    /// As [`Plan::enter`], in its mount namespace.
    unsafe fn mount_tmpfs(&self) -> std::io::Result<()> {
        let (Some(first), Some(first_staged)) = (self.covered.first(), self.staged.first()) else {
            return Ok(());
        };
        let fail = || Err(std::io::Error::last_os_error());
        // SAFETY (for the block): raw system calls on valid C strings made before the fork.
        unsafe {
            let mounted = libc::mount(
                c"tmpfs".as_ptr(),
                first.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                self.options.as_ptr().cast(),
            );
            if mounted != 0 {
                return fail();
            }
            for staged in &self.staged {
                // Made with the mode the directories have (the umask would take the rest).
                if libc::mkdir(staged.as_ptr(), 0o700) != 0
                    || libc::chmod(staged.as_ptr(), 0o1777) != 0
                {
                    return fail();
                }
            }
            // A bind keeps the tmpfs mount's flags (no set-uid, no devices).
            let bind = |from: &std::ffi::CStr, to: &std::ffi::CStr| {
                let (from, to, none) = (from.as_ptr(), to.as_ptr(), std::ptr::null());
                libc::mount(from, to, none, libc::MS_BIND, std::ptr::null()) == 0
            };
            for (dir, staged) in self.covered.iter().zip(&self.staged).skip(1) {
                if !bind(staged, dir) {
                    return fail();
                }
            }
            if !bind(first_staged, first) {
                return fail();
            }
        }
        Ok(())
    }
}

impl FsMount {
    /// Mounts the run's scratch file system on its directory, the directory the run's alone.
    ///
    /// # Safety
    /// As [`Plan::enter`], in its mount namespace.
    unsafe fn mount(&self) -> std::io::Result<()> {
        // SAFETY (for the block): raw system calls on valid C strings made before the fork.
        unsafe {
            let mounted = libc::mount(
                self.device.as_ptr(),
                self.target.as_ptr(),
                c"ext4".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                crate::scratchfs::MOUNT_OPTIONS.as_ptr().cast(),
            );
            if mounted != 0 || libc::chmod(self.target.as_ptr(), 0o700) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::rmdir(self.lost_found.as_ptr());
        }
        Ok(())
    }
}

/// A descriptor closed when dropped (a negative one is none).
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        if self.0 >= 0 {
            // SAFETY: the descriptor is this value's own.
            unsafe { libc::close(self.0) };
        }
    }
}

/// Binds what descriptor `fd` names on `target`, with `flags` (`MS_REC`: what is mounted
/// below it too).
///
/// # Safety
/// As [`Plan::enter`]; `target` a valid C string.
unsafe fn bind_fd(
    fd: libc::c_int,
    target: *const libc::c_char,
    flags: libc::c_ulong,
) -> std::io::Result<()> {
    // SAFETY: a path of the stack and a valid C string.
    let bound = unsafe {
        libc::mount(
            fd_path(fd).as_ptr().cast(),
            target,
            std::ptr::null(),
            libc::MS_BIND | flags,
            std::ptr::null(),
        )
    };
    match bound {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// `/sys` a sysfs of the run's network namespace (entered before), the cgroup hierarchies
/// (and the run's own group shown there) bound back below it.
///
/// # Safety
/// As [`Plan::enter`], in its mount namespace.
unsafe fn show_own_sysfs() -> std::io::Result<()> {
    // SAFETY (for the block): raw system calls on constant C strings.
    unsafe {
        // Kept by a descriptor while the new sysfs covers it.
        let groups = Fd(libc::open(
            c"/sys/fs/cgroup".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        ));
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;
        let sys = c"sysfs".as_ptr();
        if libc::mount(sys, c"/sys".as_ptr(), sys, flags, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if groups.0 >= 0 {
            bind_fd(groups.0, c"/sys/fs/cgroup".as_ptr(), libc::MS_REC)?;
        }
    }
    Ok(())
}

/// The run's directory opened as its user (`uid`, `gid`: the effective ids switched for the
/// open and back; the real and saved ids stay root's, so root's may be taken again), a part
/// at a time from `/`, no symbolic link followed.
///
/// # Safety
/// As [`Plan::enter`].
unsafe fn open_as(bind: &Bind, uid: libc::uid_t, gid: libc::gid_t) -> std::io::Result<libc::c_int> {
    // SAFETY (for the block): raw system calls on valid C strings made before the fork.
    unsafe {
        if libc::setegid(gid) != 0 || libc::seteuid(uid) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut dir = libc::open(
            c"/".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        for part in &bind.parts {
            if dir < 0 {
                break;
            }
            let next = libc::openat(
                dir,
                part.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            );
            libc::close(dir);
            dir = next;
        }
        let opened = std::io::Error::last_os_error();
        if libc::seteuid(0) != 0 || libc::setegid(0) != 0 {
            if dir >= 0 {
                libc::close(dir);
            }
            return Err(std::io::Error::last_os_error());
        }
        match dir {
            ..0 => Err(opened),
            dir => Ok(dir),
        }
    }
}

/// How `cwd`, below the covered directory `root`, is bound back in the run's tmpfs there:
/// none where it is `root` itself, or where a part of it is not a name (a `..` would have the
/// chain climb out of the tmpfs).
fn bind_back(root: &Path, cwd: &Path) -> Result<Option<Bind>, std::ffi::NulError> {
    let rest = cwd.strip_prefix(root).unwrap_or(cwd);
    let named = rest.components().all(|c| matches!(c, Component::Normal(_)));
    if rest.as_os_str().is_empty() || !named {
        return Ok(None);
    }
    let (mut parts, mut chain) = (Vec::new(), Vec::new());
    for part in root.components().chain(rest.components()) {
        if let Component::Normal(name) = part {
            parts.push(CString::new(name.as_encoded_bytes())?);
        }
    }
    let mut at = root.to_path_buf();
    for part in rest.components() {
        at.push(part);
        chain.push(c_path(&at)?);
    }
    Ok(Some(Bind { parts, chain }))
}

fn c_path(path: &Path) -> Result<CString, std::ffi::NulError> {
    CString::new(path.as_os_str().as_encoded_bytes())
}

/// The descriptor `fd`'s own link in /proc, which names what it opened, NUL-terminated, made
/// without allocating.
fn fd_path(fd: i32) -> [u8; 25] {
    let mut link = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0";
    write_decimal(&mut link[14..], fd);
    link
}

/// Writes `n` (a descriptor: not negative) in decimal into `out`, NUL-terminated, without
/// allocating.
fn write_decimal(out: &mut [u8], n: i32) {
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (n.max(0) as u32, 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (i, d) in digits[..len].iter().rev().enumerate() {
        out[i] = *d;
    }
    out[len] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each covered directory had a tmpfs of its own, as large as the run's memory: without a
    /// memory controller (which counts tmpfs pages as the run's) a run held its memory bound in
    /// each, four times it here. Now one tmpfs shown at all of them: what they hold together is
    /// bounded once. Root only (mount namespaces).
    #[test]
    fn a_runs_world_writable_directories_together_hold_no_more_than_its_memory() {
        if !available() {
            eprintln!("skipped: needs root and mount namespaces");
            return;
        }
        let covered = covered_dirs();
        let plan = Plan::new(Path::new("/"), Some(4), None).unwrap();
        // 3 MiB in each: the first fits, the next does not.
        let writes: String = (covered.iter())
            .map(|d| {
                format!(
                    "dd if=/dev/zero of={}/f bs=1M count=3 2>/dev/null && echo wrote {}; ",
                    d.display(),
                    d.display()
                )
            })
            .collect();
        let mounts = covered
            .iter()
            .map(|d| format!("ls -A {}; ", d.display()))
            .collect::<String>();
        let script = format!(
            "{mounts}{writes}grep -E ' ({}) ' /proc/self/mountinfo",
            (covered.iter())
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join("|")
        );
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new("/bin/sh");
        command.args(["-c", &script]);
        // SAFETY: `enter` makes only async-signal-safe calls.
        unsafe { command.pre_exec(move || plan.enter(0, 0)) };
        let out = command.output().unwrap();
        let out = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.matches("wrote").count(), 1, "{covered:?}: {out}");
        // Each shows nothing but what the run puts there, and no set-uid program or device.
        let (listed, mounted) = out.split_at(out.find("wrote").unwrap());
        assert!(listed.trim().is_empty(), "{out}");
        for dir in covered {
            let line = (mounted.lines())
                .rfind(|l| l.split(' ').nth(4) == dir.to_str())
                .unwrap_or_else(|| panic!("{} not mounted: {out}", dir.display()));
            assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
        }
    }

    /// The run's tmpfs held tmpfs's default count of files (half the machine's pages), whatever
    /// its size: a run bounded at 4 MiB of memory made millions of empty files in `/tmp`, each
    /// file kernel memory that no bound counted. Now one file per page of its size. Root only.
    #[test]
    fn a_runs_tmpfs_holds_no_more_files_than_pages_of_its_size() {
        if !available() {
            eprintln!("skipped: needs root and mount namespaces");
            return;
        }
        let plan = Plan::new(Path::new("/"), Some(4), None).unwrap();
        // 4 MiB: 1,024 files at most (the directories made in it count too).
        let script = "i=0; while [ $i -lt 5000 ] && printf '' 2>/dev/null > /tmp/f$i; do i=$((i+1)); done; \
                      echo made $i";
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new("/bin/sh");
        command.args(["-c", script]);
        // SAFETY: `enter` makes only async-signal-safe calls.
        unsafe { command.pre_exec(move || plan.enter(0, 0)) };
        let out = command.output().unwrap();
        let out = String::from_utf8_lossy(&out.stdout).to_string();
        let made: u64 = out.trim().strip_prefix("made ").unwrap().parse().unwrap();
        assert!((900..=1024).contains(&made), "{out}");
    }

    /// Found by asking what of the machine's a run could still use up: pseudo-terminals. A
    /// run's came from the machine's devpts, which may hand out every one the kernel has
    /// (4,096 here): a run opening `/dev/ptmx` in a loop took them all, and no `ssh` session of
    /// an operator's had a terminal. A run has a devpts of its own now, of at most
    /// [`MAX_PTYS`], and sees none of the machine's terminals. Root only.
    #[test]
    fn a_run_holds_no_more_than_its_own_pseudo_terminals() {
        if !available() || !own_ptys_available() || !Path::new("/usr/bin/perl").exists() {
            eprintln!("skipped: needs root, mount namespaces, devpts and perl");
            return;
        }
        // One of the machine's, held meanwhile: not the run's to see.
        let machines = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/ptmx")
            .unwrap();
        let plan = Plan::new(Path::new("/"), Some(16), None)
            .unwrap()
            .with_own_ptys();
        let script = "echo terminals: $(ls /dev/pts) end; /usr/bin/perl -e \
            'my @h; while (@h < 5000 && open(my $f, \"+<\", \"/dev/ptmx\")) { push @h, $f } \
             print \"made \", scalar(@h), \"\\n\"'";
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new("/bin/sh");
        command.args(["-c", script]);
        // SAFETY: `enter` makes only async-signal-safe calls.
        unsafe { command.pre_exec(move || plan.enter(0, 0)) };
        let out = command.output().unwrap();
        drop(machines);
        let out = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.contains("terminals: ptmx end"), "{out}");
        assert!(out.contains(&format!("made {MAX_PTYS}\n")), "{out}");
    }

    #[test]
    fn a_plan_binds_back_only_a_directory_below_tmp_named_part_by_part() {
        let chain = |p: &str| {
            Plan::new(Path::new(p), None, None).unwrap().bind.map(|b| {
                b.chain
                    .iter()
                    .map(|c| c.to_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            chain("/tmp/a/b"),
            Some(vec!["/tmp/a".to_string(), "/tmp/a/b".to_string()])
        );
        assert_eq!(chain("/tmp"), None);
        // Below another directory each uid may write in, bound back there.
        if covered_dirs().iter().any(|d| d == Path::new("/var/tmp")) {
            assert_eq!(chain("/var/tmp/a"), Some(vec!["/var/tmp/a".to_string()]));
            let plan = Plan::new(Path::new("/var/tmp/a"), None, None).unwrap();
            let parts = plan.bind.unwrap().parts;
            assert_eq!(parts, [c"var", c"tmp", c"a"].map(|p| p.to_owned()));
        }
        assert_eq!(chain("/tmp/../etc"), None);
        assert_eq!(chain("/tmpfoo/x"), None);
        assert_eq!(chain("/home/x"), None);
        // None covered twice: a mount below another's tmpfs would find no directory there.
        let covered = covered_dirs();
        assert!(
            covered.iter().any(|d| d == Path::new("/tmp")),
            "{covered:?}"
        );
        for (i, d) in covered.iter().enumerate() {
            assert!(
                covered[i + 1..].iter().all(|e| !e.starts_with(d)),
                "{covered:?}"
            );
            assert_ne!(d, Path::new("/"));
        }
        let sized = Plan::new(Path::new("/"), Some(512), None).unwrap();
        assert_eq!(
            sized.options.to_str().unwrap(),
            "mode=1777,size=512m,nr_inodes=131072"
        );
        let mut out = [0xffu8; 11];
        write_decimal(&mut out, 1234567890);
        assert_eq!(&out, b"1234567890\0");
        write_decimal(&mut out, 0);
        assert_eq!(&out[..2], b"0\0");
    }
}
