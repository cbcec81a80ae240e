//! Whole-file writes that never leave a half-written file: a temporary file beside the target,
//! written and synced, renamed over it, and the directory synced so the rename survives a crash.
//!
//! Every write has a temporary of its own (process id, a per-process counter and random bits in
//! its name, created with `O_EXCL`), so threads and processes writing one file never share one.
//! A crash can leave a temporary behind; [`sweep`] removes them, and nothing else reads them.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Who may read the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The process's default (umask).
    Default,
    /// Owner only (0600): keys and other secrets.
    Private,
}

/// How every temporary's name ends (and starts: with a `.`).
pub const TMP_SUFFIX: &str = ".tmp";

/// A fresh temporary name beside `path`: `.{name}.{pid}-{n}-{random}.tmp`.
pub fn temporary_beside(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = parent(path);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let mut random = [0u8; 8];
    // Uniqueness within the process comes from the counter; the random bits only guard against
    // a reused pid meeting a temporary a crash left behind (`create_new` refuses it anyway).
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    dir.join(format!(
        ".{name}.{}-{}-{}{TMP_SUFFIX}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        data_encoding::HEXLOWER.encode(&random)
    ))
}

/// Whether `name` (a file name) is one of [`temporary_beside`]'s.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TMP_SUFFIX)
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Replaces `path` with `bytes` atomically.
pub fn write(path: &Path, bytes: &[u8], mode: Mode) -> std::io::Result<()> {
    let dir = parent(path);
    let tmp = temporary_beside(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if mode == Mode::Private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable only once the directory is.
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads `path` whole if it holds at most `limit` bytes; a longer file is an `InvalidData` error
/// before more than `limit + 1` bytes are read (small files that must stay small: keys, key
/// files, lock files).
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    read_whole(open_file(path)?, limit)
}

/// `path` opened for reading where it names a file: opened without waiting (a FIFO's open
/// waits for a writer, for ever: a certificate path naming one hung `gantry up`) and checked on
/// the file opened, not on the path again.
fn open_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    // Without effect on a file's reads.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file",
        ));
    }
    Ok(file)
}

/// [`read_bounded`] for a secret (a private key, a key file): a file that others than its owner
/// may read (any group or other permission bit) is refused, naming its mode. On a node where
/// command jobs run as other uids, a key others may read is a key every job may read (the
/// daemon's TLS key, an agent's client key, etcd's): refused, as ssh refuses such a key.
/// Checked on the file opened, not on the path again.
pub fn read_private(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let file = open_file(path)?;
    let meta = file.metadata()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("it may be read by others than its owner (mode {mode:o}): make it 0600"),
            ));
        }
    }
    read_whole(file, limit)
}

fn read_whole(file: std::fs::File, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("longer than the {limit} bytes such a file holds"),
        ));
    }
    Ok(bytes)
}

/// Makes the entries of `dir` (a rename, a new or removed file) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Removes the temporaries ([`is_temporary`]) directly in `dir` that were last modified more
/// than `older_than` ago (zero: all of them; use it only while no other process can be writing
/// there); returns what it removed. A missing directory has none.
pub fn sweep(dir: &Path, older_than: std::time::Duration) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_temporary) || !entry.file_type()?.is_file() {
            continue;
        }
        let age = entry
            .metadata()?
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .unwrap_or_default();
        if age >= older_than {
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_keeps_secrets_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write(&p, b"one", Mode::Default).unwrap();
        write(&p, b"two", Mode::Private).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let k = dir.path().join("k");
            write(&k, b"secret", Mode::Private).unwrap();
            assert_eq!(
                std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        // Only the target remains: no temporary files.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        // A missing directory fails without creating anything.
        assert!(write(&dir.path().join("no/such/f"), b"x", Mode::Default).is_err());
    }

    /// A secret others may read is refused, naming its mode; one that is no file (a FIFO,
    /// which an open would wait on for ever) is refused without waiting.
    #[cfg(unix)]
    #[test]
    fn a_private_file_is_its_owners_alone_and_a_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, b"secret").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o610] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_private(&key, 64).unwrap_err();
            assert!(e.to_string().contains(&format!("mode {mode:o}")), "{e}");
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_private(&key, 64).unwrap(), b"secret");
        assert!(read_private(&key, 3).is_err());
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path of this test's.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_private(&fifo, 64).unwrap_err();
        assert!(e.to_string().contains("not a file"), "{e}");
    }

    /// A bounded read of a certificate (`--tls-cert`, `--etcd-ca-cert`) opened what its path
    /// named: a FIFO's open waited for a writer, and `gantry up` hung at its start. Every
    /// bounded read now refuses what is not a file, without waiting.
    #[test]
    fn a_bounded_read_of_a_fifo_or_directory_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path of this test's.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        for path in [&fifo, &dir.path().to_path_buf()] {
            let e = read_bounded(path, 64).unwrap_err();
            assert!(e.to_string().contains("not a file"), "{e}");
        }
        let file = dir.path().join("cert.pem");
        std::fs::write(&file, b"pem").unwrap();
        assert_eq!(read_bounded(&file, 64).unwrap(), b"pem");
    }
}

#[cfg(test)]
mod race_tests {
    use super::*;

    /// Issue 10, section 3: every thread of a process named its temporary `.{name}.{pid}.tmp`,
    /// so two threads writing one file truncated and renamed each other's temporary.
    #[test]
    fn durable_writes_from_many_threads_never_share_a_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared");
        let contents: Vec<Vec<u8>> = (0..8u8).map(|t| vec![t; 64 << 10]).collect();
        std::thread::scope(|s| {
            for c in &contents {
                let (path, contents) = (&path, &contents);
                s.spawn(move || {
                    for _ in 0..40 {
                        write(path, c, Mode::Private).expect("a write of its own");
                        let now = std::fs::read(path).unwrap();
                        assert!(
                            contents.contains(&now),
                            "the file holds a mix of two writes"
                        );
                    }
                });
            }
        });
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

#[cfg(test)]
mod sweep_tests {
    use super::*;

    /// Issue 10, section 3: temporaries a `kill -9` left were never swept.
    #[test]
    fn sweep_removes_only_temporaries_older_than_asked() {
        let dir = tempfile::tempdir().unwrap();
        let old = temporary_beside(&dir.path().join("artifact.cwasm"));
        let young = temporary_beside(&dir.path().join("artifact.cwasm"));
        let kept = dir.path().join("artifact.cwasm");
        for f in [&old, &young, &kept] {
            std::fs::write(f, b"x").unwrap();
        }
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        let removed = sweep(dir.path(), std::time::Duration::from_secs(3600)).unwrap();
        assert_eq!(removed, vec![old.clone()]);
        assert!(young.exists() && kept.exists());
        assert_eq!(
            sweep(dir.path(), std::time::Duration::ZERO).unwrap(),
            vec![young]
        );
        assert!(kept.exists());
    }
}
