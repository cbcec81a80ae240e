//! A node agent's GPU health through NVML, the NVIDIA driver's management library, loaded at
//! run time where the driver installed it (a machine without it reports its GPUs by the CUDA
//! driver alone). Before every heartbeat each GPU is read again, found by its PCI address: one
//! with uncorrected ECC errors since the driver loaded, memory pages waiting to be retired, at
//! or above its slowdown temperature, lost from the bus, or with a hardware XID event since
//! the agent started is unfit, and leaves service with that heartbeat (its jobs requeued).

use std::collections::HashMap;

use gantry_daemon::gpu_nodes::pci_address;
use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    EccCounter, MemoryError, TemperatureSensor, TemperatureThreshold,
};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;

/// XID events that say the GPU itself failed and needs a reset or an operator (NVIDIA's XID
/// catalogue): 48 double-bit ECC error, 62 internal micro-controller halt, 64 ECC page
/// retirement or row remapping failure, 74 NVLink error, 79 fallen off the bus, 95 uncontained
/// ECC error, 119 and 120 GSP errors, 140 unrecovered ECC error. Others (13, 31, 43: a
/// program's own fault) are the job's, not the device's.
const HARDWARE_XIDS: [u64; 9] = [48, 62, 64, 74, 79, 95, 119, 120, 140];

/// The most XID events read per heartbeat (a GPU flooding them cannot hold the agent).
const MAX_EVENTS: usize = 1024;

/// What NVML says of one GPU; `None` where the GPU does not tell (not supported on it).
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub(super) struct Readings {
    /// Uncorrected ECC errors since the driver loaded.
    pub uncorrected_ecc: Option<u64>,
    /// Whether memory pages wait to be retired (at the next reset).
    pub pages_pending: Option<bool>,
    /// Its temperature, °C.
    pub temperature_c: Option<u32>,
    /// The temperature at which it slows itself down, °C.
    pub slowdown_c: Option<u32>,
    /// NVML says it is lost (fallen off the bus).
    pub lost: bool,
    /// Hardware XID events seen since the agent started.
    pub xids: Vec<u64>,
}

/// Why a GPU with readings `r` is unfit to run jobs, if it is.
pub(super) fn unfit(r: &Readings) -> Option<String> {
    if r.lost {
        return Some("NVML reports it lost (fallen off the bus)".into());
    }
    if let Some(n) = r.uncorrected_ecc.filter(|n| *n > 0) {
        return Some(format!(
            "{n} uncorrected ECC errors since the driver loaded"
        ));
    }
    if r.pages_pending == Some(true) {
        return Some("memory pages wait to be retired (it needs a reset)".into());
    }
    if !r.xids.is_empty() {
        let xids: Vec<String> = r.xids.iter().map(u64::to_string).collect();
        return Some(format!(
            "hardware XID {} since the agent started",
            xids.join(", ")
        ));
    }
    match (r.temperature_c, r.slowdown_c) {
        (Some(t), Some(limit)) if t >= limit => Some(format!(
            "{t} °C, at or above its slowdown temperature ({limit} °C)"
        )),
        _ => None,
    }
}

/// NVML, once loaded, and the XID events it delivered, by the GPU's PCI address.
pub(super) struct Health {
    /// Loaded once for the agent's life: its event set borrows it.
    nvml: &'static Nvml,
    /// Where hardware XID events arrive, when the GPUs support them.
    events: Option<nvml_wrapper::EventSet<'static>>,
    xids: HashMap<String, Vec<u64>>,
}

impl Health {
    /// NVML, with XID events registered on every GPU that delivers them; `Err` says why not
    /// (no driver library, say).
    pub(super) fn load() -> Result<Health, String> {
        let nvml: &'static Nvml = Box::leak(Box::new(Nvml::init().map_err(|e| match e {
            NvmlError::LibloadingError(_) => {
                "no NVML library (libnvidia-ml.so.1, installed with the NVIDIA driver)".to_string()
            }
            e => format!("NVML does not start: {e}"),
        })?));
        let mut events = nvml.create_event_set().ok();
        for i in 0..nvml.device_count().unwrap_or(0) {
            let (Some(set), Ok(device)) = (events.take(), nvml.device_by_index(i)) else {
                continue;
            };
            let supported = device
                .supported_event_types()
                .is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR));
            events = match supported {
                true => device
                    .register_events(EventTypes::CRITICAL_XID_ERROR, set)
                    .ok(),
                false => Some(set),
            };
        }
        Ok(Health {
            nvml,
            events,
            xids: HashMap::new(),
        })
    }

    /// Reads the GPU at PCI address `bus_id` now.
    pub(super) fn read(&mut self, bus_id: &str) -> Readings {
        self.drain_events();
        let key = pci_address(bus_id);
        let xids = key
            .as_ref()
            .and_then(|k| self.xids.get(k).cloned())
            .unwrap_or_default();
        let device = match self.nvml.device_by_pci_bus_id(bus_id) {
            Ok(device) => device,
            Err(NvmlError::GpuLost) => {
                return Readings {
                    lost: true,
                    xids,
                    ..Readings::default()
                };
            }
            Err(_) => {
                return Readings {
                    xids,
                    ..Readings::default()
                };
            }
        };
        let lost = |e: &NvmlError| matches!(e, NvmlError::GpuLost);
        let ecc = device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile);
        let temperature = device.temperature(TemperatureSensor::Gpu);
        Readings {
            lost: ecc.as_ref().is_err_and(lost) || temperature.as_ref().is_err_and(lost),
            uncorrected_ecc: ecc.ok(),
            pages_pending: device.are_pages_pending_retired().ok(),
            temperature_c: temperature.ok(),
            slowdown_c: device
                .temperature_threshold(TemperatureThreshold::Slowdown)
                .ok(),
            xids,
        }
    }

    /// The GPUs of `others` (ordinal, PCI address) that the GPU at `bus_id` reaches over
    /// NVLink, as NVML's peer-to-peer status says; none where it cannot tell.
    pub(super) fn nvlink_peers(
        &self,
        bus_id: Option<&str>,
        others: &[(u32, Option<String>)],
    ) -> Vec<u32> {
        use nvml_wrapper::enum_wrappers::device::{P2pCapabilitiesIndex, P2pStatus};
        let Some(Ok(device)) = bus_id.map(|b| self.nvml.device_by_pci_bus_id(b)) else {
            return Vec::new();
        };
        others
            .iter()
            .filter(|(_, other)| other.as_deref() != bus_id)
            .filter_map(|(ordinal, other)| {
                let peer = self.nvml.device_by_pci_bus_id(other.as_deref()?).ok()?;
                let status = device
                    .p2p_status(&peer, P2pCapabilitiesIndex::NvLink)
                    .ok()?;
                (status == P2pStatus::Ok).then_some(*ordinal)
            })
            .collect()
    }

    /// Takes the XID events waiting (at most [`MAX_EVENTS`]), keeping the hardware ones by
    /// the PCI address of their GPU.
    fn drain_events(&mut self) {
        let Some(set) = &self.events else {
            return;
        };
        for _ in 0..MAX_EVENTS {
            let Ok(event) = set.wait(0) else {
                return;
            };
            let Some(XidError::Value(xid)) = event.event_data else {
                continue;
            };
            if !HARDWARE_XIDS.contains(&xid) {
                continue;
            }
            let bus = event
                .device
                .pci_info()
                .ok()
                .and_then(|p| pci_address(&p.bus_id));
            if let Some(bus) = bus {
                let seen = self.xids.entry(bus).or_default();
                if seen.len() < 16 {
                    seen.push(xid);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_is_unfit_for_hardware_faults_and_heat_and_fit_when_it_cannot_tell() {
        assert_eq!(unfit(&Readings::default()), None, "nothing known: fit");
        let cool = Readings {
            uncorrected_ecc: Some(0),
            pages_pending: Some(false),
            temperature_c: Some(60),
            slowdown_c: Some(87),
            ..Readings::default()
        };
        assert_eq!(unfit(&cool), None);
        let cases = [
            (
                Readings {
                    uncorrected_ecc: Some(2),
                    ..cool.clone()
                },
                "2 uncorrected ECC errors",
            ),
            (
                Readings {
                    pages_pending: Some(true),
                    ..cool.clone()
                },
                "retired",
            ),
            (
                Readings {
                    temperature_c: Some(87),
                    ..cool.clone()
                },
                "87 °C",
            ),
            (
                Readings {
                    xids: vec![79],
                    ..cool.clone()
                },
                "XID 79",
            ),
            (
                Readings {
                    lost: true,
                    ..Readings::default()
                },
                "lost",
            ),
        ];
        for (readings, why) in cases {
            let verdict = unfit(&readings).unwrap_or_default();
            assert!(verdict.contains(why), "{readings:?}: {verdict:?}");
        }
    }

    /// Where the driver is absent (CI, this build machine), loading says why; on a GPU machine
    /// it loads (the GPU check reads every GPU through it).
    #[test]
    fn nvml_loads_or_says_why_not() {
        match Health::load() {
            Ok(mut health) => {
                let gpus = gantry::training::device::detect().gpus;
                for g in gpus {
                    let bus = g.pci_bus_id.expect("the CUDA driver gives PCI addresses");
                    let readings = health.read(&bus);
                    eprintln!("{bus}: {readings:?}, unfit: {:?}", unfit(&readings));
                }
            }
            Err(why) => {
                eprintln!("no NVML here: {why}");
                assert!(!why.is_empty());
            }
        }
    }
}
