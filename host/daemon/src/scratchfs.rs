//! A command run's scratch directory as a file system of its own, of the size the run may
//! write (`command.disk_mib`, at most `--max-job-disk-mib`).
//!
//! A run's scratch lay on the machine's disk, bounded by nothing: one tenant's `dd` filled the
//! file system the daemon's database, audit log and datasets live on, and then every tenant's
//! writes failed. Now, where runs get mount namespaces of their own ([`crate::mountns`]), the
//! scratch is an ext4 file system in a sparse file of that size beside it, attached to a loop
//! device and mounted on the scratch directory inside the run's namespace alone: a write past it
//! fails there (`ENOSPC`), and the disk holds no more than that of the run. The file is unlinked
//! once attached, and the device detaches itself when its last user is gone
//! (`LO_FLAGS_AUTOCLEAR`): the daemon's descriptor once the run has started, then the mount,
//! which ends with the run's namespace, with its last process. A daemon that dies leaves
//! nothing on disk.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::OnceLock;

/// `LOOP_CTL_GET_FREE`, `LOOP_CONFIGURE` (Linux 5.8) and `LO_FLAGS_AUTOCLEAR`, from
/// `<linux/loop.h>`.
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// How a scratch file system is mounted: its inode tables never zeroed (it ends with the run;
/// the kernel's background zeroing would write a sizeable part of the disk it stands for).
pub(crate) const MOUNT_OPTIONS: &std::ffi::CStr = c"noinit_itable";

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A run's scratch file system, attached and ready to mount; detached once this is dropped
/// and nothing has it mounted.
#[derive(Debug)]
pub struct ScratchFs {
    /// The loop device, held open so that it stays attached until the run has mounted it.
    _device: File,
    /// Its path, `/dev/loop<N>`.
    path: CString,
}

impl ScratchFs {
    /// A file system of `mib` MiB for the scratch directory `dir`, its root `uid`:`gid`'s, its
    /// file made beside `dir` (on the disk it stands for) and unlinked once attached. Beside,
    /// not in it: `dir` is the run's user's, who could swap the name for a link between its
    /// making and `mkfs` (which opens it by name) and have a file of root's formatted; its
    /// parent is the daemon's alone ([`crate::scratch`]).
    pub fn make(dir: &Path, mib: u64, uid: u32, gid: u32) -> Result<ScratchFs, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let name = dir.file_name().ok_or("a scratch directory has a name")?;
        let image = dir.with_file_name(format!("{}.scratch-fs", name.to_string_lossy()));
        let at = |e: std::io::Error| format!("{}: {e}", image.display());
        let file = (std::fs::OpenOptions::new())
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&image)
            .map_err(at)?;
        let made = file
            .set_len(mib << 20)
            .map_err(at)
            .and_then(|()| mkfs(&image, uid, gid))
            .and_then(|()| attach(&file));
        // Attached or not, the name goes: the device holds the file while it is attached.
        let _ = std::fs::remove_file(&image);
        let (device, path) = made?;
        Ok(ScratchFs {
            _device: device,
            path,
        })
    }

    /// The loop device to mount, `/dev/loop<N>`.
    pub fn device(&self) -> &std::ffi::CStr {
        &self.path
    }
}

/// `mkfs.ext4` on `image`: no journal (the file system ends with the run), no blocks kept for
/// root, its root directory the run's.
fn mkfs(image: &Path, uid: u32, gid: u32) -> Result<(), String> {
    // A daemon started without the system directories in its PATH finds it too.
    let program = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("mkfs.ext4");
    let options = format!("root_owner={uid}:{gid},nodiscard,lazy_itable_init=1");
    let out = std::process::Command::new(program)
        .args(["-q", "-F", "-m", "0", "-O", "^has_journal", "-E", &options])
        .arg(image)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    let said = said.trim();
    Err(format!("{program} ended {}: {said}", out.status))
}

/// Attaches `file` to a free loop device that detaches itself when no one holds it.
fn attach(file: &File) -> Result<(File, CString), String> {
    let control = (std::fs::OpenOptions::new())
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| format!("/dev/loop-control: {e}"))?;
    // Another process may take the free device between asking and attaching: ask again.
    for _ in 0..16 {
        // SAFETY: an ioctl without an argument on a valid descriptor.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!("/dev/loop-control: no free loop device: {e}"));
        }
        let path = format!("/dev/loop{n}");
        let device = (std::fs::OpenOptions::new())
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{path}: {e}"))?;
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut config: LoopConfig = unsafe { std::mem::zeroed() };
        config.fd = file.as_raw_fd() as u32;
        config.info.flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: a valid descriptor and a pointer to a `loop_config` that outlives the call.
        let done = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE as _, &config) };
        if done == 0 {
            let path = CString::new(path).expect("no NUL in a device's path");
            return Ok((device, path));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(format!("{path}: attaching the scratch file system: {e}"));
        }
    }
    Err("no free loop device stayed free long enough to attach".into())
}

/// Whether runs' scratch directories can be file systems of their own here (root, loop
/// devices, `mkfs.ext4`, ext4 mounts in a mount namespace), found once by making and mounting
/// a small one in a child; said once where they cannot, and runs' scratch then lies on the
/// machine's disk, unbounded.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    crate::mountns::found_once(
        &AVAILABLE,
        probe,
        "command runs' scratch directories lie on this machine's disk, bounded by nothing \
         (--max-job-disk-mib unenforced): no file system of their own can be made here",
    )
}

/// Makes a 4 MiB scratch file system and mounts it in a child's mount namespace, as a run's.
fn probe() -> Result<(), String> {
    if !crate::mountns::available() {
        return Err("no mount namespaces for runs here".into());
    }
    // A run's scratch directory, as a run's: in the process's owner directory, which the next
    // start sweeps should this process be killed meanwhile (a directory of its own in /tmp
    // stayed there, CI found).
    let scratch = crate::scratch::Scratch::process()?;
    let dir = (scratch.run_dir(None)).map_err(|e| format!("a directory to probe in: {e}"))?;
    let run = dir.path();
    let fs = ScratchFs::make(run, 4, 0, 0)?;
    // Mounted as a run's is, in a mount namespace of its own.
    let plan = crate::mountns::Plan::new(run, Some(4), Some(&fs)).ok_or("a path with a NUL")?;
    // SAFETY: `enter` makes only async-signal-safe calls.
    let mounted = unsafe { crate::mountns::probe_child(move || plan.enter(0, 0)) };
    drop(fs);
    mounted.map_err(|e| format!("mounting it: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_structs_are_the_kernels_size() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}
