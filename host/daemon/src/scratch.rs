//! Scratch directories for command runs that name no working directory, reclaimed after a crash.
//!
//! A run's scratch directory is removed when the run ends, but a process killed outright (kill
//! -9, the OOM killer, a power cut) never gets there, and its runs' directories would stay in
//! `/tmp` for good. So every process that runs commands claims an owner directory under a root
//! of its user, `$TMPDIR/gantry-jobs-<uid>-<random>/<owner>/`, and holds an exclusive `flock` on
//! `<owner>.lock` beside it for its whole life. An owner whose lock can be taken is dead: the
//! next daemon or agent to start (or process to claim) removes its directory, whoever it was.
//!
//! Roots are found by listing, not by a fixed name: in a directory everyone may write to, a fixed
//! name could be taken first by another user, and every run refused. A root counts only when it
//! is a directory of this user that no one else may write to; anything else is passed over.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::command::JobUser;

/// Why no owner directory could be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// What was being made or read.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ScratchError + '_ {
    move |source| ScratchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// This process's owner directory, and the lock that marks it live.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
    /// Held (never read) for the life of the value: while it is, no sweep removes `dir`.
    _lock: File,
}

/// What a claim found and removed of dead owners.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Owner directories of processes that are gone.
    pub owners: usize,
}

impl Scratch {
    /// The process's owner directory under the system's temporary directory, claimed (and dead
    /// owners swept) on first use, the first command run; every daemon, agent and run in the
    /// process shares it. A claim that fails is tried again at the next run: a root an operator
    /// has since fixed, or a transient error, does not refuse commands until a restart.
    pub fn process() -> Result<&'static Scratch, String> {
        static CLAIMED: OnceLock<Scratch> = OnceLock::new();
        static CLAIMING: Mutex<()> = Mutex::new(());
        if let Some(s) = CLAIMED.get() {
            return Ok(s);
        }
        let _one_at_a_time = CLAIMING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = CLAIMED.get() {
            return Ok(s);
        }
        match Scratch::claim_in(&std::env::temp_dir()) {
            Ok((s, swept)) => {
                if swept.owners > 0 {
                    tracing::warn!(
                        owners = swept.owners,
                        "removed the scratch directories of runs whose daemon or agent was killed"
                    );
                }
                Ok(CLAIMED.get_or_init(|| s))
            }
            Err(e) => {
                tracing::warn!(error = %e, "no scratch directory for command runs");
                Err(e.to_string())
            }
        }
    }

    /// Claims a fresh owner directory under `base`'s per-user root, after removing every dead
    /// owner's.
    pub fn claim_in(base: &Path) -> Result<(Scratch, Swept), ScratchError> {
        let swept = sweep_in(base)?;
        let root = match roots(base)?.into_iter().next() {
            Some(root) => root,
            None => new_root(base)?,
        };
        traversable(&root)?;
        let (name, lock) = live_lock(&root)?;
        let dir = root.join(name);
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(&dir)
            .map_err(io_at(&dir))?;
        traversable(&dir)?;
        Ok((Scratch { dir, _lock: lock }, swept))
    }

    /// The owner directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh private directory for one run, owned by `user` when given; removed when dropped.
    pub fn run_dir(&self, user: Option<&JobUser>) -> io::Result<tempfile::TempDir> {
        use std::os::unix::fs::PermissionsExt;
        // Private: tempfile's default follows the umask (0755 here), and a run's files are
        // its own.
        let dir = tempfile::Builder::new()
            .prefix("gantry-job-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&self.dir)?;
        if let Some(u) = user {
            std::os::unix::fs::chown(dir.path(), Some(u.uid), Some(u.gid))?;
        }
        Ok(dir)
    }
}

/// Removes what processes that are gone left under the system's temporary directory, saying so;
/// what a daemon or an agent does when it starts, before any run. It claims nothing: a process
/// makes its own owner directory only when it first runs a command.
pub fn sweep_dead_owners() {
    match sweep_in(&std::env::temp_dir()) {
        Ok(swept) if swept.owners > 0 => tracing::warn!(
            owners = swept.owners,
            "removed the scratch directories of runs whose daemon or agent was killed"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "sweeping the scratch directories of command runs"),
    }
}

/// This user's roots under `base`, oldest name first: directories named
/// `gantry-jobs-<uid>-...`, owned by this user and writable by no one else. What else bears the
/// name (another user's, a link, a file) is passed over, never entered.
fn roots(base: &Path) -> Result<Vec<PathBuf>, ScratchError> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let prefix = format!("gantry-jobs-{uid}-");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(base).map_err(io_at(base))? {
        let entry = entry.map_err(io_at(base))?;
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix))
        {
            continue;
        }
        // `DirEntry::metadata` does not follow a link.
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() && meta.uid() == uid && meta.mode() & 0o022 == 0 {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// A new root under `base`, its name unguessable (so no one can take it first).
fn new_root(base: &Path) -> Result<PathBuf, ScratchError> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let dir = tempfile::Builder::new()
        .prefix(&format!("gantry-jobs-{uid}-"))
        .tempdir_in(base)
        .map_err(io_at(base))?;
    Ok(dir.keep())
}

/// Removes the owner directories of processes that are gone, in every root of this user under
/// `base`.
pub fn sweep_in(base: &Path) -> Result<Swept, ScratchError> {
    let mut swept = Swept::default();
    for root in roots(base)? {
        swept.owners += sweep(&root)?.owners;
    }
    Ok(swept)
}

/// Sets `dir` to 0711, whatever the umask made of it: under a umask of 077 it would be 0700, and
/// a job user could not reach its own run directory inside. (A sticky /tmp keeps others from
/// swapping a checked directory of this user's.)
fn traversable(dir: &Path) -> Result<(), ScratchError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(io_at(dir))
}

/// Removes the directory and lock file of every owner whose lock can be taken (its process is
/// gone), and any directory left without a lock file (a sweep that stopped half-way).
fn sweep(root: &Path) -> Result<Swept, ScratchError> {
    let mut swept = Swept::default();
    let entries = std::fs::read_dir(root).map_err(io_at(root))?;
    for entry in entries {
        let entry = entry.map_err(io_at(root))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(owner) = name.strip_suffix(".lock") {
            let Some(lock) = try_lock(&path) else {
                continue; // live, or not a lock file of ours
            };
            // Directory first, then the lock file, both under the lock: a sweep that stops
            // between the two leaves a lock file alone, which the next one takes and removes.
            let dir = root.join(owner);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => swept.owners += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "sweeping scratch"),
            }
            let _ = std::fs::remove_file(&path);
            drop(lock);
        } else if entry.file_type().is_ok_and(|t| t.is_dir())
            && !root.join(format!("{name}.lock")).exists()
        {
            // An owner makes its lock file before its directory, and only a sweep holding the
            // lock removes it: a directory without one belongs to nobody alive.
            match std::fs::remove_dir_all(&path) {
                Ok(()) => swept.owners += 1,
                Err(e) => tracing::warn!(dir = %path.display(), error = %e, "sweeping scratch"),
            }
        }
    }
    Ok(swept)
}

/// Opens `path` (not following a link) and takes its lock without waiting; `None` when another
/// process holds it or it is no regular file.
fn try_lock(path: &Path) -> Option<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    // SAFETY: the descriptor is open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (rc == 0).then_some(file)
}

/// A new owner name and its lock file, created and locked. A sweep may take a lock file between
/// its creation and its locking, and remove it: the lock then guards nothing, so it is checked to
/// still be the file at its path, and another name tried if not.
fn live_lock(root: &Path) -> Result<(String, File), ScratchError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for attempt in 0..16u32 {
        let name = format!("{}-{nanos:x}-{attempt}", std::process::id());
        let path = root.join(format!("{name}.lock"));
        let file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_at(&path)(e)),
        };
        // SAFETY: the descriptor is open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue; // a sweep holds it, and will remove it
        }
        let ours = file.metadata().map_err(io_at(&path))?;
        match std::fs::symlink_metadata(&path) {
            Ok(there) if there.ino() == ours.ino() && there.dev() == ours.dev() => {
                return Ok((name, file));
            }
            _ => continue,
        }
    }
    Err(io_at(root)(io::Error::other(
        "no owner name could be claimed in 16 tries",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn the_root(base: &Path) -> PathBuf {
        let mut roots = roots(base).unwrap();
        assert_eq!(roots.len(), 1, "{roots:?}");
        roots.remove(0)
    }

    #[test]
    fn a_claim_removes_dead_owners_and_keeps_live_ones() {
        let base = tempfile::tempdir().unwrap();
        let (first, swept) = Scratch::claim_in(base.path()).unwrap();
        assert_eq!(swept, Swept::default());
        let run = first.run_dir(None).unwrap();
        std::fs::write(run.path().join("out"), b"left behind").unwrap();
        let run = run.keep(); // as a killed process would leave it
        let first_dir = first.dir().to_path_buf();

        // Live: a second claim leaves the first owner's directory alone.
        let (second, swept) = Scratch::claim_in(base.path()).unwrap();
        assert_eq!(swept, Swept::default());
        assert!(run.join("out").is_file());
        assert_ne!(second.dir(), first.dir());
        assert_eq!(second.dir().parent(), first.dir().parent(), "one root");

        // Dead (its lock released, as the kernel does for a killed process): swept, lock file
        // too, while the live second owner stays.
        drop(first);
        let (_third, swept) = Scratch::claim_in(base.path()).unwrap();
        assert_eq!(swept.owners, 1);
        assert!(!first_dir.exists());
        assert!(!first_dir.with_extension("lock").exists());
        assert!(second.dir().is_dir());

        // A directory without a lock file (a sweep that stopped half-way) is nobody's.
        let orphan = the_root(base.path()).join("123-abc-0");
        std::fs::create_dir_all(orphan.join("deep")).unwrap();
        let (fourth, swept) = Scratch::claim_in(base.path()).unwrap();
        assert_eq!(swept.owners, 1);
        assert!(!orphan.exists());

        // A sweep alone (a daemon starting) removes the dead and claims nothing.
        drop(fourth);
        let entries = || std::fs::read_dir(the_root(base.path())).unwrap().count();
        let before = entries();
        assert_eq!(sweep_in(base.path()).unwrap().owners, 1);
        assert_eq!(
            entries(),
            before - 2,
            "the dead owner's directory and lock file"
        );
    }

    #[test]
    fn a_root_another_user_could_write_to_or_a_link_is_passed_over() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        // Taken first under the name a root would have: writable by all, and a link to a
        // directory that would pass. Neither blocks a claim, and neither is entered or swept.
        let open = base.path().join(format!("gantry-jobs-{uid}-aaaa"));
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::create_dir(open.join("123-abc-0")).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::create_dir(elsewhere.path().join("123-abc-0")).unwrap();
        let link = base.path().join(format!("gantry-jobs-{uid}-aaab"));
        std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();

        let (scratch, swept) = Scratch::claim_in(base.path()).unwrap();
        assert_eq!(swept, Swept::default());
        let root = scratch.dir().parent().unwrap();
        assert!(root != open && root != link, "{}", root.display());
        assert!(open.join("123-abc-0").is_dir());
        assert!(elsewhere.path().join("123-abc-0").is_dir());
    }

    #[test]
    fn job_users_can_reach_their_run_directory_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // A root made under a umask of 077 (0700): a job user could not pass through it.
        let base = tempfile::tempdir().unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = base
            .path()
            .join(format!("gantry-jobs-{}-x", unsafe { libc::geteuid() }));
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
        let (scratch, _) = Scratch::claim_in(base.path()).unwrap();
        assert_eq!(scratch.dir().parent(), Some(root.as_path()));
        assert_eq!(mode(&root), 0o711);
        assert_eq!(mode(scratch.dir()), 0o711);
    }

    #[test]
    fn a_run_directory_is_private_and_goes_with_the_run() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let (scratch, _) = Scratch::claim_in(base.path()).unwrap();
        let run = scratch.run_dir(None).unwrap();
        let path = run.path().to_path_buf();
        assert!(path.starts_with(scratch.dir()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(run);
        assert!(!path.exists());
    }
}
