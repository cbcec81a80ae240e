//! A command run's own PID namespace: its program sees, signals and reads only its own
//! processes.
//!
//! Runs under one `--job-user` share a uid, and a uid may signal and read (`/proc/<pid>/environ`,
//! `/proc/<pid>/root`, `ptrace`) every process of that uid: one tenant's `kill -9 -1` ended every
//! other tenant's run, and a scan of `/proc` read their secrets. In a namespace of its own, with
//! the namespace's `/proc` mounted in its mount namespace ([`crate::mountns`]), a run reaches no
//! process but its own.
//!
//! Three processes carry a run: the one the daemon started (outside the namespace: the run's
//! pid and process group for the daemon, which it signals and waits for), the namespace's init
//! (pid 1: reaps what is orphaned, and when the program ends, ends the namespace and with it
//! everything the program left) and the program (pid 2). Signals the daemon sends the group reach
//! the program directly (the outer process ignores them, and an init ignores what it has no
//! handler for); the outer process ends as the program did, its exit status or its signal.

/// In the child between fork and exec, as root, after [`crate::mountns::Plan::enter`]: returns
/// in the program's process (pid 2 of a new PID namespace, the namespace's `/proc` mounted);
/// the two processes around it never return. They are copies of the daemon until they end (its
/// memory counted as theirs): the caller puts the program alone in the run's cgroup and first
/// in line for the OOM killer, after this returns.
///
/// # Safety
/// Only between fork and exec, in a single-threaded child: it forks, and only async-signal-safe
/// calls follow.
pub unsafe fn enter() -> std::io::Result<()> {
    let fail = || Err(std::io::Error::last_os_error());
    // SAFETY (for the block): raw system calls on descriptors and C strings of this function.
    unsafe {
        // How the program ended, from init to the outer process: [0, code] or [1, signal].
        let mut fate = [0; 2];
        if libc::pipe2(fate.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return fail();
        }
        let [read, write] = fate;
        if libc::unshare(libc::CLONE_NEWPID) != 0 {
            return fail();
        }
        match libc::fork() {
            -1 => return fail(),
            0 => {}
            init => {
                libc::close(write);
                outside(init, read)
            }
        }
        // Pid 1 of the new namespace.
        libc::close(read);
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return fail();
        }
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) != 0
        {
            return fail();
        }
        match libc::fork() {
            -1 => fail(),
            0 => {
                libc::close(write);
                Ok(())
            }
            program => init(program, write),
        }
    }
}

/// The namespace's init: reaps every child until the program's end, which it passes on through
/// `write` before it ends (taking every process left in the namespace with it).
unsafe fn init(program: libc::pid_t, write: libc::c_int) -> ! {
    // SAFETY (for the block): async-signal-safe calls on this process's own descriptors.
    unsafe {
        quiet(write);
        loop {
            let mut status = 0;
            let reaped = libc::waitpid(-1, &mut status, 0);
            if reaped == program {
                let fate: [u8; 2] = if libc::WIFSIGNALED(status) {
                    [1, libc::WTERMSIG(status) as u8]
                } else {
                    [0, libc::WEXITSTATUS(status) as u8]
                };
                libc::write(write, fate.as_ptr().cast(), 2);
                libc::_exit(0);
            }
            if reaped < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
    }
}

/// The run's process for the daemon: ignores the signals the daemon sends the group (the
/// program gets them itself; SIGKILL still ends it), dies with the daemon's run thread, waits
/// for `init` and ends as the program did (`read` says how).
unsafe fn outside(init: libc::pid_t, read: libc::c_int) -> ! {
    // SAFETY (for the block): async-signal-safe calls on this process's own state.
    unsafe {
        for signal in 1..32 {
            if ![libc::SIGKILL, libc::SIGSTOP, libc::SIGCHLD, libc::SIGCONT].contains(&signal) {
                libc::signal(signal, libc::SIG_IGN);
            }
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        quiet(read);
        let mut status = 0;
        loop {
            let reaped = libc::waitpid(init, &mut status, 0);
            if reaped == init {
                break;
            }
            if reaped < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
        let mut fate = [0u8; 2];
        let (signaled, value) = match libc::read(read, fate.as_mut_ptr().cast(), 2) {
            2 => (fate[0] == 1, i32::from(fate[1])),
            // Init itself was killed (SIGKILL to the group, the OOM killer) or failed.
            _ if libc::WIFSIGNALED(status) => (true, libc::WTERMSIG(status)),
            _ => (false, libc::WEXITSTATUS(status)),
        };
        if signaled {
            // Ends by that signal, as the program did, leaving no core of its own.
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            libc::signal(value, libc::SIG_DFL);
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, value);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), value);
            libc::_exit(128 + value);
        }
        libc::_exit(value)
    }
}

/// Points this process's standard streams at `/dev/null` (the run's output pipes stay the
/// program's alone, so they close when it ends) and closes every other descriptor but `keep`
/// (the daemon's exec-error pipe among them: its launch returns once the program is running).
unsafe fn quiet(keep: libc::c_int) {
    // SAFETY (for the block): open, dup2, close and getrlimit are async-signal-safe.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        }
        // close_range(2), Linux 5.9 (the same number on x86-64 and arm64).
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        {
            const SYS_CLOSE_RANGE: libc::c_long = 436;
            let below = match keep {
                ..=3 => 0,
                _ => libc::syscall(SYS_CLOSE_RANGE, 3u32, (keep - 1) as u32, 0u32),
            };
            let above = libc::syscall(SYS_CLOSE_RANGE, (keep + 1) as u32, u32::MAX, 0u32);
            if below == 0 && above == 0 {
                return;
            }
        }
        // Older kernels: each possible descriptor in turn.
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        let most = match libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) {
            0 => limit.rlim_cur.min(1 << 20) as libc::c_int,
            _ => 1024,
        };
        for fd in (3..most).filter(|&fd| fd != keep) {
            libc::close(fd);
        }
    }
}
