//! What of the kernel a command run's program may reach: all of it but the system calls that
//! open the kernel's most attacked code to a process with no privilege, which no training job
//! needs (`--job-syscalls filtered`, the default; `all` leaves them, for jobs that make
//! containers of their own).
//!
//! A run has no capability (an unprivileged uid, `no_new_privs`), and the namespaces Gantry
//! makes for it stay Gantry's. But any process could make a user namespace of its own, and in it
//! holds every capability over the namespaces it makes there: it mounts file systems, programs
//! a firewall, makes network devices, and reaches the kernel's code behind those, where many
//! local privilege escalations of recent years were (`fsconfig`, CVE-2022-0185; nf_tables,
//! CVE-2024-1086); it could also mount a devpts with no bound and take every pseudo-terminal
//! runs share. A review's run did (`unshare -Ur` as `nobody`). So, as Docker's default profile
//! does for a container without `CAP_SYS_ADMIN`, a run makes no namespace (`clone` and
//! `unshare` with a namespace's flag, `setns`) and no `clone3` (its flags lie in memory a
//! filter cannot read; the C library falls back to `clone`), sets up no io_uring (a kernel
//! interface of its own, off in Docker's and ChromeOS's defaults: `ENOSYS`, so programs fall
//! back to plain reads), loads no BPF, opens no perf event or userfaultfd, touches no kernel
//! keyring (they are the uid's, shared by runs of one `--job-user`), and takes no page of the
//! machine's huge page pool (`MAP_HUGETLB`, `SHM_HUGETLB`, `MFD_HUGETLB`: those pages are
//! reserved by the operator and counted in no run's memory, and a process as `nobody` took all
//! eight reserved for the check). A system call of another ABI (32-bit ones on x86-64, whose
//! numbers differ) is refused whole, so none of these is reached by another number.

/// Whether a run's system calls are filtered (`--job-syscalls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobSyscalls {
    /// All but those this module names.
    #[default]
    Filtered,
    /// All: for jobs that make containers of their own (user namespaces).
    All,
}

impl std::str::FromStr for JobSyscalls {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "filtered" => Ok(JobSyscalls::Filtered),
            "all" => Ok(JobSyscalls::All),
            other => Err(format!("{other:?}: `filtered` or `all`")),
        }
    }
}

// The classic BPF a seccomp filter is written in (linux/filter.h, linux/seccomp.h).
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
// Where `struct seccomp_data` holds the call's number, its ABI, and its first argument's
// lower half (little-endian).
const NR: u32 = 0;
const ARCH: u32 = 4;
/// Argument `n`'s lower half.
const fn arg(n: u32) -> u32 {
    16 + 8 * n
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
/// The x32 ABI's calls: x86-64's numbers with this bit set.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The flags of `clone` that make a namespace (`CLONE_NEWTIME`'s bit is the exit signal's
/// there).
const CLONE_NAMESPACES: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;
/// Those of `unshare`.
const UNSHARE_NAMESPACES: u32 = CLONE_NAMESPACES | 0x80;
/// `mmap`'s, `shmget`'s and `memfd_create`'s flags for a page of the huge page pool.
const MAP_HUGETLB: u32 = libc::MAP_HUGETLB as u32;
const SHM_HUGETLB: u32 = libc::SHM_HUGETLB as u32;
const MFD_HUGETLB: u32 = libc::MFD_HUGETLB;

fn statement(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn errno(errno: i32) -> u32 {
    RET_ERRNO | (errno as u32 & 0xffff)
}

/// The system calls refused whatever their arguments, and the error each returns.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn refused() -> [(libc::c_long, i32); 11] {
    [
        (libc::SYS_setns, libc::EPERM),
        (libc::SYS_clone3, libc::ENOSYS),
        (libc::SYS_io_uring_setup, libc::ENOSYS),
        (libc::SYS_io_uring_enter, libc::ENOSYS),
        (libc::SYS_io_uring_register, libc::ENOSYS),
        (libc::SYS_bpf, libc::EPERM),
        (libc::SYS_perf_event_open, libc::EPERM),
        (libc::SYS_userfaultfd, libc::EPERM),
        (libc::SYS_keyctl, libc::EPERM),
        (libc::SYS_add_key, libc::EPERM),
        (libc::SYS_request_key, libc::EPERM),
    ]
}

/// The filter a run's program is held to; `None` on a processor whose filter Gantry does not
/// write (there the run goes unfiltered, and says so).
pub fn program() -> Option<Vec<libc::sock_filter>> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let mut p = vec![
            statement(LD_W_ABS, ARCH),
            jump(JEQ_K, AUDIT_ARCH, 1, 0),
            statement(RET_K, errno(libc::ENOSYS)),
            statement(LD_W_ABS, NR),
        ];
        #[cfg(target_arch = "x86_64")]
        p.extend([
            jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
            statement(RET_K, errno(libc::ENOSYS)),
        ]);
        for (nr, error) in refused() {
            p.push(jump(JEQ_K, nr as u32, 0, 1));
            p.push(statement(RET_K, errno(error)));
        }
        // Those refused by a flag of an argument. Each ends in a return, as the argument
        // loaded replaces the number.
        for (nr, n, flags) in [
            (libc::SYS_clone, 0, CLONE_NAMESPACES),
            (libc::SYS_unshare, 0, UNSHARE_NAMESPACES),
            (libc::SYS_mmap, 3, MAP_HUGETLB),
            (libc::SYS_shmget, 2, SHM_HUGETLB),
            (libc::SYS_memfd_create, 1, MFD_HUGETLB),
        ] {
            p.extend([
                jump(JEQ_K, nr as u32, 0, 4),
                statement(LD_W_ABS, arg(n)),
                jump(JSET_K, flags, 0, 1),
                statement(RET_K, errno(libc::EPERM)),
                statement(RET_K, RET_ALLOW),
            ]);
        }
        p.push(statement(RET_K, RET_ALLOW));
        Some(p)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    None
}

/// Whether this machine's kernel takes [`program`] (a kernel built without seccomp filters
/// does not), found once by a child that takes it; where it does not, runs go unfiltered and
/// the first says so.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let Some(p) = program() else {
            return false;
        };
        // SAFETY: the child makes only async-signal-safe calls before `_exit`.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                let taken = libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
                    && enter(&p).is_ok()
                    && libc::unshare(libc::CLONE_NEWUSER) != 0;
                libc::_exit(if taken { 0 } else { 1 });
            }
            let mut status = 0;
            pid > 0
                && libc::waitpid(pid, &mut status, 0) == pid
                && libc::WIFEXITED(status)
                && libc::WEXITSTATUS(status) == 0
        }
    })
}

/// Holds this process, and what it starts, to `program`. Async-signal-safe: for the child of a
/// fork, after `no_new_privs` (which an unprivileged process needs for it) and last before exec.
///
/// # Safety
/// Only async-signal-safe calls; `program` is a valid filter ([`program`]'s).
pub unsafe fn enter(program: &[libc::sock_filter]) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `program`, alive for the call; the kernel copies it.
    let set = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every jump of the filter lands inside it, and it ends in a return: the kernel refuses a
    /// filter otherwise, and every run would fail to start.
    #[test]
    fn the_filter_is_one_the_kernel_takes() {
        let Some(p) = program() else {
            return;
        };
        assert!(p.len() < 4096);
        assert_eq!(p.last().map(|s| s.code), Some(RET_K));
        for (i, s) in p.iter().enumerate() {
            if s.code & 0x07 == 0x05 {
                assert!(i + 1 + (s.jt.max(s.jf) as usize) < p.len(), "jump at {i}");
            }
        }
        // And a process held to it still runs, refused a user namespace.
        assert!(available());
    }
}
