//! The data directory's lock: one process writes to a data directory at a time.
//!
//! An exclusive `flock` on `<data dir>/lock`, taken without waiting and held for the life of the
//! [`DirLock`] (the daemon's life, or one offline command's). The kernel drops it when the process
//! dies, `kill -9` included, so a crash never leaves the directory locked. The file's content says
//! who holds it (pid, command, and the daemon's URL once it listens), for the error another
//! process gets and for commands that then go through the running daemon instead. The content is
//! rewritten in place, never replaced by a rename: the lock belongs to the file's inode.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::StoreError;

/// Who holds a data directory, as its lock file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The holding process.
    pub pid: u32,
    /// What it runs (`gantry up`, `gantry key rotate`, ...).
    pub command: String,
    /// The daemon's API, once it listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` (pid {}", self.command, self.pid)?;
        if let Some(url) = &self.url {
            write!(f, ", serving {url}")?;
        }
        f.write_str(")")
    }
}

/// The exclusive lock on a data directory; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DirLock {
    root: PathBuf,
    file: Mutex<File>,
    holder: Mutex<Holder>,
}

/// The lock file of data directory `root`.
pub fn lock_path(root: &Path) -> PathBuf {
    root.join("lock")
}

impl DirLock {
    /// Takes the lock of data directory `root` for `command`, or fails at once naming the
    /// process that holds it.
    pub fn acquire(root: &Path, command: &str) -> Result<DirLock, StoreError> {
        let path = lock_path(root);
        let io = |error| StoreError::Io {
            path: path.clone(),
            error,
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: root.to_path_buf(),
                    holder: Self::holder(root).unwrap_or(Holder {
                        pid: 0,
                        command: "another process (its lock file does not say which)".into(),
                        url: None,
                    }),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let lock = DirLock {
            root: root.to_path_buf(),
            file: Mutex::new(file),
            holder: Mutex::new(Holder {
                pid: std::process::id(),
                command: command.to_string(),
                url: None,
            }),
        };
        lock.write_holder()?;
        Ok(lock)
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Records the URL the holder (a daemon) serves, for commands that go through it.
    pub fn set_url(&self, url: &str) -> Result<(), StoreError> {
        self.holder.lock().unwrap_or_else(|e| e.into_inner()).url = Some(url.to_string());
        self.write_holder()
    }

    fn write_holder(&self) -> Result<(), StoreError> {
        let holder = self
            .holder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let text = serde_json::to_vec(&holder).expect("a holder serialises");
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let path = lock_path(&self.root);
        (|| {
            file.set_len(0)?;
            file.rewind()?;
            file.write_all(&text)?;
            file.sync_data()
        })()
        .map_err(|error| StoreError::Io { path, error })
    }

    /// Who holds data directory `root` now, if anyone does (and its lock file says so).
    pub fn holder(root: &Path) -> Option<Holder> {
        let file = File::open(lock_path(root)).ok()?;
        // Free: nobody holds it, whatever the file says (its last holder may have crashed).
        if file.try_lock_shared().is_ok() {
            return None;
        }
        let mut text = Vec::new();
        file.take(4096).read_to_end(&mut text).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_first_and_a_released_lock_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path(), "gantry up").unwrap();
        first.set_url("http://127.0.0.1:7070").unwrap();
        let err = DirLock::acquire(dir.path(), "gantry key rotate").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("`gantry up`")
                && text.contains(&format!("pid {}", std::process::id()))
                && text.contains("http://127.0.0.1:7070"),
            "{text}"
        );
        let holder = DirLock::holder(dir.path()).unwrap();
        assert_eq!(holder.url.as_deref(), Some("http://127.0.0.1:7070"));
        drop(first);
        assert_eq!(DirLock::holder(dir.path()), None);
        DirLock::acquire(dir.path(), "gantry key rotate").unwrap();
    }
}
