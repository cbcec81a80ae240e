//! A command run's own network: a network namespace per run, its loopback alone, up.
//!
//! Runs shared the machine's network namespace whatever their uid (under `--job-uids` too): one
//! tenant's program connected to what another's listened on at the loopback address (a
//! `torchrun` rendezvous store at 127.0.0.1:29500, say) and to its abstract Unix sockets, which
//! have no permissions at all. In a namespace of its own a run reaches its own loopback and
//! nothing else, and nothing of another run's reaches it. `--job-network host` gives every run
//! of the machine the machine's network instead (what a run that downloads from outside needs).

use std::sync::OnceLock;

/// Whom runs' network is: their own (the default), or the machine's (`--job-network host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobNetwork {
    /// A network namespace per run, its loopback alone.
    #[default]
    Own,
    /// The machine's network, shared by every run.
    Host,
}

impl std::str::FromStr for JobNetwork {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "own" => Ok(JobNetwork::Own),
            "host" => Ok(JobNetwork::Host),
            _ => Err(format!(
                "--job-network {text}: `own` (a network of each run's own, its loopback alone) \
                 or `host` (the machine's, shared by every run)"
            )),
        }
    }
}

/// In the child between fork and exec, as root: a network namespace of its own, its loopback
/// up (a namespace's starts down, and a program listening on 127.0.0.1 would find it
/// unreachable).
///
/// # Safety
/// Only between fork and exec, in a single-threaded child.
pub unsafe fn enter() -> std::io::Result<()> {
    let fail = || Err(std::io::Error::last_os_error());
    // SAFETY (for the block): raw system calls on a request of this function's stack.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            return fail();
        }
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket < 0 {
            return fail();
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        for (to, from) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *to = *from as libc::c_char;
        }
        request.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as _;
        let up = libc::ioctl(socket, libc::SIOCSIFFLAGS as _, &request);
        let said = std::io::Error::last_os_error();
        libc::close(socket);
        if up != 0 {
            return Err(said);
        }
    }
    Ok(())
}

/// Whether runs can have networks of their own here (root's `CAP_SYS_ADMIN`), found once by
/// trying it in a child; said once where they cannot, and runs then share the machine's.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    // SAFETY: `enter` makes only async-signal-safe calls.
    let probe = || unsafe { crate::mountns::probe_child(|| enter()) };
    crate::mountns::found_once(
        &AVAILABLE,
        probe,
        "command runs share this machine's network (one tenant's program reaches what another's \
         listens on at the loopback address): the daemon can make no network namespace here \
         (root's CAP_SYS_ADMIN)",
    )
}
