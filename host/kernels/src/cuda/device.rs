//! Finding CUDA devices without panicking, and the per-device state every backend on a device
//! shares: its context and loaded kernels.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use cudarc::driver::{CudaContext, DriverError, result, sys};

use super::error::{DeviceMessage, OrDevice, device_error};
use super::kernels::Kernels;
use crate::backend::Result;

/// One CUDA device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its ordinal (`CudaBackend::new`'s argument).
    pub ordinal: usize,
    /// The driver's name for it ("NVIDIA H200").
    pub name: String,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Compute capability, major and minor (9.0 for Hopper).
    pub compute_capability: (i32, i32),
    /// Its PCI address, `domain:bus:device.function` in hex ("0000:19:00.0"): how NVML and
    /// operators name it, whatever ordinal `CUDA_VISIBLE_DEVICES` gives it.
    pub pci_bus_id: String,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cuda:{} {} ({:.1} GiB, compute {}.{})",
            self.ordinal,
            self.name,
            self.memory_bytes as f64 / (1u64 << 30) as f64,
            self.compute_capability.0,
            self.compute_capability.1
        )
    }
}

/// The CUDA devices of this machine, in ordinal order; `Ok` and empty when the driver works
/// but sees none. `Err` says why no CUDA backend can run here: no driver library (cudarc would
/// panic on first use without one, so this checks first), or a driver that fails (no kernel
/// module, too old for the CUDA 13 API the bindings were built for). Never panics, and creates
/// no context, so it is cheap and leaves the devices alone.
pub fn detect() -> std::result::Result<Vec<DeviceInfo>, String> {
    // SAFETY: only tries to open the library.
    if !unsafe { sys::is_culib_present() } {
        return Err(
            "no CUDA driver: libcuda.so could not be loaded (no NVIDIA driver \
                    installed, or it is not on the library path)"
                .into(),
        );
    }
    let found = guarded(|| -> std::result::Result<_, DriverError> {
        result::init()?;
        let count = result::device::get_count()?;
        (0..count.max(0)).map(|i| info(i as usize)).collect()
    });
    match found {
        Ok(Ok(devices)) => Ok(devices),
        // cuInit's way of saying "a driver, but no GPU" (a container without devices, say).
        Ok(Err(e)) if e.0 == sys::cudaError_enum::CUDA_ERROR_NO_DEVICE => Ok(Vec::new()),
        Ok(Err(e)) => Err(format!("the CUDA driver failed: {}", e.message())),
        Err(panic) => Err(format!("the CUDA driver failed: {panic}")),
    }
}

/// Name, memory and compute capability of device `ordinal`, straight from the driver.
fn info(ordinal: usize) -> std::result::Result<DeviceInfo, DriverError> {
    let dev = result::device::get(ordinal as i32)?;
    let attribute = |a| {
        // SAFETY: `dev` came from cuDeviceGet.
        unsafe { result::device::get_attribute(dev, a) }
    };
    use sys::CUdevice_attribute::{
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR as MAJOR,
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR as MINOR,
        CU_DEVICE_ATTRIBUTE_PCI_BUS_ID as BUS, CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID as SLOT,
        CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID as DOMAIN,
    };
    Ok(DeviceInfo {
        ordinal,
        name: result::device::get_name(dev)?,
        // SAFETY: `dev` came from cuDeviceGet.
        memory_bytes: unsafe { result::device::total_mem(dev) }? as u64,
        compute_capability: (attribute(MAJOR)?, attribute(MINOR)?),
        pci_bus_id: format!(
            "{:04x}:{:02x}:{:02x}.0",
            attribute(DOMAIN)?,
            attribute(BUS)?,
            attribute(SLOT)?
        ),
    })
}

/// Runs `f`, turning a panic inside the bindings into its message. cudarc panics (rather than
/// erring) when a library or one of its symbols cannot be loaded, e.g. a driver older than the
/// CUDA 13 API it was built for; a backend constructor must report that, not abort.
fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic in the CUDA bindings".into())
    })
}

/// One device's context and kernels, shared by every backend on it.
#[derive(Debug)]
pub(crate) struct Device {
    /// The device's primary context (what the runtime API and NCCL use too).
    pub ctx: Arc<CudaContext>,
    /// What it is.
    pub info: DeviceInfo,
    /// The backend's kernels, loaded into `ctx`.
    pub kernels: Kernels,
}

/// Devices opened so far, by ordinal. Entries live until the process exits: compiling and
/// loading the kernels is the slow part of creating a backend, and a process that trained on
/// a device once is likely to again.
static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<Device>>>> = OnceLock::new();

/// Device `ordinal`, opened (context retained, kernels compiled and loaded) on first use.
pub(crate) fn open(ordinal: usize) -> Result<Arc<Device>> {
    let context = || format!("opening CUDA device {ordinal}");
    let found = detect().map_err(|why| device_error(context(), why))?;
    let Some(info) = found.get(ordinal).cloned() else {
        return Err(device_error(
            context(),
            format!("the CUDA driver sees {} device(s)", found.len()),
        ));
    };
    let devices = DEVICES.get_or_init(Default::default);
    let mut devices = devices.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(device) = devices.get(&ordinal) {
        return Ok(device.clone());
    }
    let ctx = guarded(|| CudaContext::new(ordinal))
        .map_err(|panic| device_error(context(), panic))?
        .or_device(context)?;
    let kernels = Kernels::load(&ctx, info.compute_capability)?;
    let device = Arc::new(Device { ctx, info, kernels });
    devices.insert(ordinal, device.clone());
    Ok(device)
}
