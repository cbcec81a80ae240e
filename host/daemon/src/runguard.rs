//! A command run's lease guard: a small process of its own that kills the run's process group
//! once the lease its holder runs it under has lapsed, unless the holder renews it first.
//!
//! A run is a child process: it goes on while its holder cannot act. An agent or a leading
//! control plane that is frozen (`SIGSTOP`, a stalled machine, swap) past its lease kills
//! nothing, however carefully it watches the lease, while the control plane starts the job
//! elsewhere: the job ran twice at once for as long as the freeze lasted. The guard counts the
//! lease on its own, from deadlines the holder sends it as it renews (absolute
//! `CLOCK_MONOTONIC` times, the same clock in every process of the machine), and a holder that
//! is gone (its end of the pipe closed) leaves the run to the guard too.
//!
//! The guard is the running binary started again (`/proc/self/exe`, as runc does for its
//! init): a program embedding this crate calls [`main_if_asked`] first thing in `main`.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The first argument that makes the binary a guard.
pub const GUARD_ARG: &str = "__gantry-run-guard";

/// A run's guard, stopped (never the run) when dropped.
pub struct RunGuard {
    child: Child,
    /// Where renewals go; `None` once a write failed (the guard is gone: it killed the run).
    renewals: Option<std::fs::File>,
    /// The last deadline sent, so an unchanged lease costs no write.
    sent: u64,
}

impl RunGuard {
    /// Starts the guard of process group `pgid`, whose lease lapses at `until`.
    pub fn start(pgid: i32, until: Instant) -> std::io::Result<RunGuard> {
        let (read, write) = pipe()?;
        let first = monotonic_ns_at(until);
        use std::os::unix::process::CommandExt;
        let child = Command::new("/proc/self/exe")
            .arg(GUARD_ARG)
            .arg(pgid.to_string())
            .arg(first.to_string())
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Out of its holder's process group: a Ctrl-C or a service manager's stop of the
            // holder's group does not take the guard away from the runs it guards.
            .process_group(0)
            .spawn()?;
        Ok(RunGuard {
            child,
            renewals: Some(std::fs::File::from(write)),
            sent: first,
        })
    }

    /// Whether the deadline the guard holds has passed: it killed the run (or is about to),
    /// whatever its holder's lease says by now (renewed after the guard last heard of it).
    pub fn lapsed(&self) -> bool {
        monotonic_ns() >= self.sent
    }

    /// The lease now lapses at `until`. A guard that cannot take it (gone, or not reading)
    /// keeps the deadline it has: the run then dies early, never late.
    pub fn renew(&mut self, until: Instant) {
        let deadline = monotonic_ns_at(until);
        if deadline.abs_diff(self.sent) < 1_000_000 {
            return;
        }
        let Some(renewals) = &mut self.renewals else {
            return;
        };
        match renewals.write_all(&deadline.to_ne_bytes()) {
            Ok(()) => self.sent = deadline,
            // Full (the guard stopped reading): the deadline it has stands. Anything else (it
            // is gone: it killed the run) is for good.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => self.renewals = None,
        }
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        // Killed, not told: a guard that was itself stopped could not be waited for.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pipe whose write end does not block (a guard that stopped reading never holds up its
/// holder) and neither end of which a run inherits.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: `write` is an open descriptor.
    let flags = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above; setting O_NONBLOCK on a pipe's end.
    if flags < 0
        || unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok((read, write))
}

/// Now on `CLOCK_MONOTONIC`, in nanoseconds.
fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// `until` on `CLOCK_MONOTONIC` (`Instant` is that clock, but does not say its value).
fn monotonic_ns_at(until: Instant) -> u64 {
    let (now, at) = (Instant::now(), monotonic_ns());
    let left = until.saturating_duration_since(now).as_nanos();
    at.saturating_add(u64::try_from(left).unwrap_or(u64::MAX))
}

/// When this process was started as a guard (its first argument [`GUARD_ARG`]), guards and
/// exits; otherwise returns at once. Call it first thing in `main`.
pub fn main_if_asked() {
    // `args_os`: any other command's arguments may be bytes that are not UTF-8.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).take(4).collect();
    if args.first().map(|a| a.as_os_str()) != Some(std::ffi::OsStr::new(GUARD_ARG)) {
        return;
    }
    // Stopped only by its holder (a kill) or its deadline: not by signals meant for the
    // holder's terminal or service.
    for signal in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGPIPE,
    ] {
        // SAFETY: setting a signal's disposition to ignored, before any thread starts.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    let number = |i: usize| args.get(i).and_then(|a| a.to_str());
    let parsed = match (number(1), number(2)) {
        (Some(pgid), Some(first)) => pgid.parse::<i32>().ok().zip(first.parse::<u64>().ok()),
        _ => None,
    };
    let Some((pgid, first)) = parsed.filter(|(pgid, _)| *pgid > 1) else {
        eprintln!("{GUARD_ARG}: expected a process group id (above 1) and a deadline");
        std::process::exit(2);
    };
    guard(pgid, first, std::io::stdin());
    std::process::exit(0);
}

/// Kills process group `pgid` at `deadline` (`CLOCK_MONOTONIC` ns), or at a later one read from
/// `renewals` (8 bytes each) first, or at once when `renewals` ends (its holder is gone).
fn guard(pgid: i32, deadline: u64, mut renewals: impl Read + Send + 'static) {
    let (tx, rx) = mpsc::channel::<u64>();
    // The reader alone blocks; the guard waits on the channel with a timeout.
    let reader = std::thread::Builder::new()
        .name("gantry-run-guard-reader".into())
        .spawn(move || {
            let mut deadline = [0u8; 8];
            while renewals.read_exact(&mut deadline).is_ok() {
                if tx.send(u64::from_ne_bytes(deadline)).is_err() {
                    return;
                }
            }
        });
    if reader.is_err() {
        kill_group(pgid);
        return;
    }
    let mut deadline = deadline;
    loop {
        let now = monotonic_ns();
        if now >= deadline {
            break;
        }
        match rx.recv_timeout(Duration::from_nanos(deadline - now)) {
            Ok(later) => deadline = later,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Its holder is gone without stopping the guard: the run must not outlive it.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    kill_group(pgid);
}

fn kill_group(pgid: i32) {
    // SAFETY: kill with a negative id signals that process group; no memory is involved.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard kills at the deadline, later when renewed, and at once when its holder is
    /// gone. (The whole, a frozen holder and its run, is tested end to end, where the binary
    /// can start itself as a guard.)
    #[test]
    fn the_guard_kills_the_group_at_its_deadline_unless_renewed() {
        let sleeper = || {
            use std::os::unix::process::CommandExt;
            Command::new("sleep")
                .arg("30")
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let alive = |c: &mut Child| c.try_wait().unwrap().is_none();
        // Renewed once, then left to lapse.
        let mut run = sleeper();
        let (read, write) = pipe().unwrap();
        let start = Instant::now();
        let pgid = run.id() as i32;
        let first = monotonic_ns_at(start + Duration::from_millis(300));
        let guard_thread =
            std::thread::spawn(move || guard(pgid, first, std::fs::File::from(read)));
        let mut write = std::fs::File::from(write);
        write
            .write_all(&monotonic_ns_at(start + Duration::from_millis(800)).to_ne_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert!(alive(&mut run), "renewed past its first deadline");
        guard_thread.join().unwrap();
        let waited = start.elapsed();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(run.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(waited >= Duration::from_millis(800), "{waited:?}");
        // The holder gone: killed at once.
        let mut run = sleeper();
        let (read, write) = pipe().unwrap();
        let pgid = run.id() as i32;
        let far = monotonic_ns_at(Instant::now() + Duration::from_secs(60));
        let guard_thread = std::thread::spawn(move || guard(pgid, far, std::fs::File::from(read)));
        drop(write);
        guard_thread.join().unwrap();
        assert_eq!(run.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
}
