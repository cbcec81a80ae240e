//! The GPU device nodes a command run may open: those of the GPUs it was placed on, and no
//! other. `CUDA_VISIBLE_DEVICES` only asks the CUDA runtime to hide the rest; a program that
//! unsets it, or opens `/dev/nvidia<N>` itself, reached every GPU of the node, other tenants'
//! included. The run's cgroup closes the other GPUs' nodes in the kernel, by device number
//! (wherever the node is, whatever its name): cgroup v1's `devices` controller, or on cgroup v2
//! a device program (eBPF, `BPF_CGROUP_DEVICE`) attached to the run's cgroup.
//!
//! An NVIDIA GPU's node is character device 195:`minor`, `minor` below 254 (254 is
//! `nvidia-modeset`, 255 `nvidiactl`: shared by every CUDA process, like `nvidia-uvm`, and left
//! open); the driver names each GPU's minor in `/proc/driver/nvidia/gpus/<PCI address>/information`.

use std::path::Path;

/// The NVIDIA driver's character-device major number.
pub const NVIDIA_MAJOR: u32 = 195;
/// GPU nodes are minors `0..=LAST_GPU_MINOR`.
pub const LAST_GPU_MINOR: u32 = 253;
/// Where the driver describes its GPUs, one directory per PCI address.
pub const DRIVER_GPUS: &str = "/proc/driver/nvidia/gpus";

/// The GPU device nodes one run may open: the minors of its placed GPUs (none for emulated or
/// modeled GPUs, which run on the CPU); every other NVIDIA GPU node is closed to it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuNodes {
    minors: Vec<u32>,
}

impl GpuNodes {
    /// No GPU node open.
    pub fn none() -> Self {
        Self::default()
    }

    /// Nodes of minors `minors` open (a minor past [`LAST_GPU_MINOR`] is no GPU's, and refused).
    pub fn only(mut minors: Vec<u32>) -> Result<Self, String> {
        if let Some(m) = minors.iter().find(|&&m| m > LAST_GPU_MINOR) {
            return Err(format!(
                "device minor {m} is not an NVIDIA GPU's (0 to {LAST_GPU_MINOR})"
            ));
        }
        minors.sort_unstable();
        minors.dedup();
        Ok(Self { minors })
    }

    /// The minors open, ascending.
    pub fn minors(&self) -> &[u32] {
        &self.minors
    }

    /// The minors closed, ascending: every GPU minor but the open ones.
    pub fn closed(&self) -> impl Iterator<Item = u32> + '_ {
        (0..=LAST_GPU_MINOR).filter(|m| self.minors.binary_search(m).is_err())
    }

    /// For a job's log: which nodes it may open.
    pub fn describe(&self) -> String {
        if self.minors.is_empty() {
            return "no NVIDIA GPU device node".to_string();
        }
        let nodes: Vec<String> = self.minors.iter().map(|m| format!("nvidia{m}")).collect();
        format!("only GPU device nodes {}", nodes.join(", "))
    }
}

/// PCI address `id` as one spelling: lowercase hex, the domain in 4 digits (the CUDA driver's
/// "0000:19:00.0", NVML's "00000000:19:00.0" and the driver's directory names are one GPU);
/// `None` when it does not read.
pub fn pci_address(id: &str) -> Option<String> {
    let (domain, rest) = id.trim().split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (device, function) = rest.split_once('.')?;
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    Some(format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        hex(domain)?,
        hex(bus)?,
        hex(device)?,
        hex(function)?
    ))
}

/// The device minor of the GPU at PCI address `bus`, as the driver describing its GPUs under
/// `driver` ([`DRIVER_GPUS`]) names it (`Device Minor:` of its `information`).
pub fn minor_of(driver: &Path, bus: &str) -> Result<u32, String> {
    let address = pci_address(bus).ok_or_else(|| format!("`{bus}` is not a PCI address"))?;
    let file = driver.join(&address).join("information");
    let text = std::fs::read_to_string(&file).map_err(|e| {
        format!(
            "the NVIDIA driver describes no GPU at PCI {address} ({}: {e})",
            file.display()
        )
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("Device Minor:"))
        .and_then(|m| m.trim().parse::<u32>().ok())
        .filter(|&m| m <= LAST_GPU_MINOR)
        .ok_or_else(|| format!("{} names no GPU device minor", file.display()))
}

/// Whether this machine's NVIDIA driver has GPUs (so a run could open nodes of GPUs it was
/// not given): a directory under [`DRIVER_GPUS`], or a `/dev/nvidia<N>` node.
pub fn driver_has_gpus() -> bool {
    let listed = std::fs::read_dir(DRIVER_GPUS).is_ok_and(|mut d| d.next().is_some());
    listed
        || std::fs::read_dir("/dev").is_ok_and(|d| {
            d.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.strip_prefix("nvidia")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
}

/// Attaches to cgroup v2 directory `dir` a device program that refuses every NVIDIA GPU node
/// but those `nodes` opens (cgroup v2 has no `devices` file: its device control is eBPF). The
/// program stays with the cgroup and goes when the cgroup is removed.
pub fn attach_program(dir: &Path, nodes: &GpuNodes) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let insns = device_program(nodes.minors());
    let cgroup = std::fs::File::open(dir)?;
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let load = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..ProgLoad::default()
    };
    // SAFETY: `load` is a valid `bpf_attr` prefix for BPF_PROG_LOAD of its size; the pointers it
    // holds (instructions, license, log) outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &load as *const ProgLoad,
            std::mem::size_of::<ProgLoad>() as u32,
        )
    };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let verifier = String::from_utf8_lossy(&log[..end]);
        return Err(std::io::Error::new(
            error.kind(),
            format!("loading the device program: {error} {}", verifier.trim()),
        ));
    }
    // SAFETY: a descriptor the kernel just returned, owned here alone.
    let program = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attach = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        // Beside any program above (systemd's `DevicePolicy`): a device opens only when every
        // one allows it.
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attach` is a valid `bpf_attr` prefix for BPF_PROG_ATTACH of its size.
    let attached = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attach as *const ProgAttach,
            std::mem::size_of::<ProgAttach>() as u32,
        )
    };
    if attached != 0 {
        let error = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            error.kind(),
            format!("attaching the device program to {}: {error}", dir.display()),
        ));
    }
    Ok(())
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
/// `bpf_cgroup_dev_ctx.access_type`'s low half: a character device.
const BPF_DEVCG_DEV_CHAR: i32 = 2;

/// The head of `union bpf_attr` for BPF_PROG_LOAD (the kernel zero-fills what it is not given).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The head of `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
struct Insn {
    code: u8,
    /// Destination register in the low nibble, source in the high.
    regs: u8,
    off: i16,
    imm: i32,
}

/// The device program: 1 (allow) for anything but an NVIDIA GPU node whose minor is not in
/// `open`, 0 (refuse) for those. Its context is `bpf_cgroup_dev_ctx`: `access_type` (type in
/// the low 16 bits), `major`, `minor`, each a u32.
fn device_program(open: &[u32]) -> Vec<Insn> {
    const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
    const AND_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
    const MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
    const JGT_K: u8 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
    const JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
    let insn = |code, dst: u8, src: u8, off, imm| Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    };
    // Jumps to "allow" get their offsets once its place is known.
    let mut program = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND_K, 2, 0, 0, 0xffff),
        insn(JNE_K, 2, 0, 0, BPF_DEVCG_DEV_CHAR),
        insn(LDX_W, 3, 1, 4, 0),
        insn(JNE_K, 3, 0, 0, NVIDIA_MAJOR as i32),
        insn(LDX_W, 4, 1, 8, 0),
        insn(JGT_K, 4, 0, 0, LAST_GPU_MINOR as i32),
    ];
    program.extend(open.iter().map(|&m| insn(JEQ_K, 4, 0, 0, m as i32)));
    program.extend([insn(MOV_K, 0, 0, 0, 0), insn(EXIT, 0, 0, 0, 0)]);
    let allow = program.len();
    for (i, step) in program.iter_mut().enumerate() {
        if matches!(step.code, JNE_K | JGT_K | JEQ_K) {
            step.off = (allow - i - 1) as i16;
        }
    }
    program.extend([insn(MOV_K, 0, 0, 0, 1), insn(EXIT, 0, 0, 0, 0)]);
    program
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_of_one_gpu_read_as_one() {
        assert_eq!(
            pci_address("00000000:19:00.0").as_deref(),
            Some("0000:19:00.0")
        );
        assert_eq!(pci_address("0000:19:00.0").as_deref(), Some("0000:19:00.0"));
        assert_eq!(pci_address("0000:AB:1F.0").as_deref(), Some("0000:ab:1f.0"));
        assert_eq!(pci_address("19:00.0"), None);
        assert_eq!(pci_address("zz:19:00.0"), None);
        assert_eq!(pci_address("0000:19:00.0/../../x"), None);
    }

    /// The driver's own description names each GPU's minor (its `information` file, as the
    /// driver writes it).
    #[test]
    fn a_gpus_device_minor_is_read_from_the_drivers_description() {
        let driver = tempfile::tempdir().unwrap();
        let gpu = driver.path().join("0000:3b:00.0");
        std::fs::create_dir(&gpu).unwrap();
        std::fs::write(
            gpu.join("information"),
            "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 316\nGPU UUID: \t GPU-5c1e\n\
             Video BIOS: \t 96.00.99.00.01\nBus Type: \t PCIe\nDMA Size: \t 52 bits\n\
             Bus Location: \t 0000:3b:00.0\nDevice Minor: \t 5\nGPU Excluded:\t No\n",
        )
        .unwrap();
        assert_eq!(minor_of(driver.path(), "00000000:3B:00.0"), Ok(5));
        let missing = minor_of(driver.path(), "0000:3c:00.0").unwrap_err();
        assert!(missing.contains("no GPU at PCI 0000:3c:00.0"), "{missing}");
        std::fs::write(gpu.join("information"), "Device Minor: \t 255\n").unwrap();
        assert!(
            minor_of(driver.path(), "0000:3b:00.0").is_err(),
            "nvidiactl"
        );
        assert!(minor_of(driver.path(), "../../etc").is_err());
    }

    #[test]
    fn only_the_placed_gpus_minors_are_open() {
        let nodes = GpuNodes::only(vec![5, 2, 5]).unwrap();
        assert_eq!(nodes.minors(), &[2, 5]);
        let closed: Vec<u32> = nodes.closed().collect();
        assert_eq!(closed.len(), 252);
        assert!(!closed.contains(&2) && !closed.contains(&5) && closed.contains(&0));
        assert_eq!(GpuNodes::none().closed().count(), 254);
        assert!(GpuNodes::only(vec![255]).is_err());
    }
}
