//! Reading a plugin's files from disk: only regular files inside the plugin's directory, under a
//! size limit, read without blocking.
//!
//! A manifest names its component by a path that the plugin's author chose (`wasm = ...`), and
//! it is read before the signature can be checked, so the path is untrusted: an absolute path,
//! `..`, or a symbolic link could point at any file the host can read (its first bytes then
//! show in a compile error), `/dev/zero` would read forever and a FIFO would block forever. So
//! each path is relative with plain components only; every directory on the way is opened with
//! `O_NOFOLLOW` relative to the one before (`openat`), so no symbolic link is followed below the
//! plugin's directory; the file itself is opened with `O_NOFOLLOW | O_NONBLOCK` (a FIFO opens at
//! once), checked with `fstat` to be a regular file within the limit, and read up to the limit
//! plus one byte (a file that grows meanwhile is refused, not read whole).

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

/// Largest manifest read.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 10;
/// Largest `plugin.sig` read.
pub const MAX_SIGNATURE_BYTES: u64 = 4 << 10;
/// Largest component read from disk or accepted in an upload.
pub const MAX_COMPONENT_BYTES: u64 = 32 << 20;

/// Why a plugin file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The path names something outside the plugin's directory.
    #[error("`{}` must be a relative path inside the plugin's directory (no `..`, no absolute path)", path.display())]
    Outside {
        /// The path as given.
        path: PathBuf,
    },
    /// A symbolic link on the way.
    #[error("{} is or passes through a symbolic link, which plugin files may not", path.display())]
    Symlink {
        /// The full path.
        path: PathBuf,
    },
    /// Not a regular file (a FIFO, a device, a directory, a socket).
    #[error("{} is not a regular file ({kind})", path.display())]
    NotRegular {
        /// The full path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// Over the size limit.
    #[error("{} is larger than the {limit}-byte limit", path.display())]
    TooLarge {
        /// The full path.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// The system refused (missing file, permissions).
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The full path.
        path: PathBuf,
        /// The cause (in the message, so not also a `source`).
        error: std::io::Error,
    },
}

impl FileError {
    /// The reason as an [`std::io::Error`] without the path, for callers that name the file in
    /// their own errors.
    pub fn into_io(self) -> std::io::Error {
        use std::io::{Error, ErrorKind};
        match self {
            FileError::Io { error, .. } => error,
            FileError::NotRegular { kind, .. } => Error::new(
                ErrorKind::InvalidInput,
                format!("not a regular file ({kind}), which is never read"),
            ),
            FileError::TooLarge { limit, .. } => Error::new(
                ErrorKind::InvalidData,
                format!("larger than the {limit}-byte limit"),
            ),
            other => Error::other(other.to_string()),
        }
    }

    /// True when the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound)
    }
}

/// A plugin's files from disk, read as this module requires: the manifest (a directory's
/// `plugin.toml`, or the file named), the component it names and, if there is one, `plugin.sig`.
#[derive(Debug)]
pub struct PluginFiles {
    /// Where the manifest is.
    pub manifest_path: PathBuf,
    /// The manifest's bytes (what a signature covers).
    pub manifest_bytes: Vec<u8>,
    /// The parsed manifest.
    pub manifest: super::Manifest,
    /// The component.
    pub wasm: Vec<u8>,
    /// Where the component is.
    pub wasm_path: PathBuf,
}

impl PluginFiles {
    /// Reads the plugin at `plugin` (a directory holding `plugin.toml`, or a manifest).
    pub fn read(plugin: &Path) -> Result<Self, super::LoadError> {
        let (dir, manifest_bytes, manifest_path) = if plugin.is_dir() {
            let bytes = read_within(plugin, Path::new("plugin.toml"), MAX_MANIFEST_BYTES)?;
            (plugin.to_path_buf(), bytes, plugin.join("plugin.toml"))
        } else {
            let bytes = read_named(plugin, MAX_MANIFEST_BYTES)?;
            let dir = plugin
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            (dir, bytes, plugin.to_path_buf())
        };
        let text =
            std::str::from_utf8(&manifest_bytes).map_err(|e| super::LoadError::Manifest {
                path: manifest_path.clone(),
                message: format!("not UTF-8 ({e})"),
            })?;
        let manifest = super::Manifest::parse(text, &manifest_path)?;
        let relative = manifest.wasm_relative();
        let wasm = read_within(&dir, &relative, MAX_COMPONENT_BYTES)?;
        Ok(Self {
            wasm_path: dir.join(relative),
            manifest_path,
            manifest_bytes,
            manifest,
            wasm,
        })
    }

    /// The `plugin.sig` beside the manifest, `None` when there is none.
    pub fn signature(&self) -> Result<Option<super::signature::PluginSignature>, String> {
        super::signature::read(&self.manifest_path)
    }
}

/// Reads `relative` inside `dir`, as the module documentation says, at most `limit` bytes.
/// `dir` itself is the operator's choice and may be reached through links.
pub fn read_within(dir: &Path, relative: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let full = dir.join(relative);
    let parts: Vec<&std::ffi::OsStr> = relative
        .components()
        .map(|c| match c {
            Component::Normal(part) => Ok(part),
            _ => Err(FileError::Outside {
                path: relative.to_path_buf(),
            }),
        })
        .collect::<Result<_, _>>()?;
    let Some((file, dirs)) = parts.split_last() else {
        return Err(FileError::Outside {
            path: relative.to_path_buf(),
        });
    };
    let io = |error: std::io::Error| classify_open(&full, error);
    let dir_flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    let mut at = open_at(None, dir.as_os_str(), dir_flags).map_err(io)?;
    for part in dirs {
        at = open_at(Some(&at), part, dir_flags | libc::O_NOFOLLOW).map_err(io)?;
    }
    let flags =
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    let fd = open_at(Some(&at), file, flags).map_err(io)?;
    read_regular(File::from(fd), &full, limit)
}

/// Reads the file `path` names (the operator's own path: links are followed), with the same
/// checks as [`read_within`] on what it is and its size.
pub fn read_named(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    read_regular(open_following(path)?, path, limit)
}

/// Opens the file `path` names (links followed) for streaming, if it is a regular file, with
/// its length at the open: the checks of [`read_named`], for readers that bound what they keep
/// as they go (a training CSV or `.f32`).
pub fn open_named(path: &Path) -> Result<(File, u64), FileError> {
    let file = open_following(path)?;
    let len = regular_len(&file, path)?;
    Ok((file, len))
}

/// `path` opened without blocking (a FIFO opens at once) and without becoming a terminal.
fn open_following(path: &Path) -> Result<File, FileError> {
    let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    let fd = open_at(None, path.as_os_str(), flags).map_err(|e| classify_open(path, e))?;
    Ok(File::from(fd))
}

/// Largest text file a command or the daemon reads whole: a config, cluster, job, trace,
/// limits or policy file.
pub const MAX_TEXT_FILE_BYTES: u64 = 64 << 20;

/// [`read_named`] as UTF-8 text of at most [`MAX_TEXT_FILE_BYTES`], its errors as
/// [`std::io::Error`]s without the path (callers name it in their own errors). A config named
/// `/dev/zero` was read until memory ran out; a FIFO blocked the command.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    let bytes = read_named(path, MAX_TEXT_FILE_BYTES).map_err(FileError::into_io)?;
    String::from_utf8(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

fn read_regular(file: File, path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let len = regular_len(&file, path)?;
    let too_large = || FileError::TooLarge {
        path: path.to_path_buf(),
        limit,
    };
    if len > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| FileError::Io {
            path: path.to_path_buf(),
            error,
        })?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// The length of `file` if it is a regular file; a FIFO, a device, a directory or a socket
/// (which could block a reader or never end) is refused, naming what it is.
fn regular_len(file: &File, path: &Path) -> Result<u64, FileError> {
    let meta = file.metadata().map_err(|error| FileError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let kind = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(FileError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok(meta.len())
}

/// `openat(at, name, flags)`, or `open` without `at`.
fn open_at(at: Option<&OwnedFd>, name: &std::ffi::OsStr, flags: i32) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let name = CString::new(name.as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a path"))?;
    let base = at.map_or(libc::AT_FDCWD, |fd| fd.as_raw_fd());
    // SAFETY: `name` is a valid C string; the returned descriptor is owned by us alone.
    let fd = unsafe { libc::openat(base, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is not shared.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `O_NOFOLLOW` refuses a link as `ELOOP` (or `ENOTDIR` with `O_DIRECTORY`): say so plainly.
fn classify_open(path: &Path, error: std::io::Error) -> FileError {
    match error.raw_os_error() {
        Some(libc::ELOOP) => FileError::Symlink {
            path: path.to_path_buf(),
        },
        Some(libc::ENOTDIR) if is_link_on_the_way(path) => FileError::Symlink {
            path: path.to_path_buf(),
        },
        _ => FileError::Io {
            path: path.to_path_buf(),
            error,
        },
    }
}

fn is_link_on_the_way(path: &Path) -> bool {
    path.ancestors().any(|p| {
        p.symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by naming `/dev/zero` as a config, trace or cluster file: it was read until memory
    /// ran out (2 GB under a 4 GB cap, all of the machine without one). Every text file a
    /// command or the daemon reads whole goes through `read_text`: regular files only, bounded.
    #[test]
    fn text_files_are_read_only_when_regular_and_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.toml");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        for (path, want) in [
            (Path::new("/dev/zero"), "not a regular file (a device)"),
            (fifo.as_path(), "not a regular file (a FIFO)"),
            (dir.path(), "not a regular file (a directory)"),
        ] {
            let e = read_text(path).unwrap_err().to_string();
            assert!(e.contains(want), "{}: {e}", path.display());
        }
        let big = dir.path().join("big.toml");
        let file = File::create(&big).unwrap();
        file.set_len(MAX_TEXT_FILE_BYTES + 1).unwrap();
        let e = read_text(&big).unwrap_err().to_string();
        assert!(e.contains("larger than the 67108864-byte limit"), "{e}");
        std::fs::write(&big, "a = 1\n").unwrap();
        assert_eq!(read_text(&big).unwrap(), "a = 1\n");
        // Through a loader: the cluster file names the path and what it is.
        let e = crate::cluster::files::load_cluster(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/dev/zero") && e.contains("a device"), "{e}");
    }

    #[test]
    fn reads_a_regular_file_in_a_subdirectory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/p.wasm"), b"abc").unwrap();
        let bytes = read_within(dir.path(), Path::new("sub/p.wasm"), 3).unwrap();
        assert_eq!(bytes, b"abc");
        let err = read_within(dir.path(), Path::new("sub/p.wasm"), 2).unwrap_err();
        assert!(matches!(err, FileError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn a_directory_on_the_way_that_is_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let err = read_within(dir.path(), Path::new("link/secret"), 10).unwrap_err();
        assert!(matches!(err, FileError::Symlink { .. }), "{err}");
    }
}
