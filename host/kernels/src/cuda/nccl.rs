//! The gradient all-reduce across replicas on different GPUs, through NCCL.
//!
//! Communicators are created once per set of replicas (`ncclCommInitAll`, tens of
//! milliseconds) and cached in the first replica; every call then queues one in-place sum per
//! replica on that replica's stream inside one NCCL group, so the reductions overlap and
//! nothing waits on the host.

use cudarc::driver::CudaSlice;
use cudarc::nccl::{Comm, ReduceOp, group_end, group_start};

use super::CudaBackend;
use super::error::{OrDevice, device_error};
use crate::backend::{KernelError, Result, check_len};

/// One communicator per replica, for the replicas whose ids are `key`, in order.
pub(super) struct Comms {
    key: Vec<u64>,
    comms: Vec<Comm>,
}

// SAFETY: an NCCL communicator is a handle that may be used from any thread as long as calls
// on it do not overlap; `Comms` is only reached through the owning backend's `Mutex`, which
// serialises them. (cudarc leaves `Comm` !Send only because it holds a raw pointer.)
unsafe impl Send for Comms {}

/// [`crate::Backend::all_reduce_sum`] for CUDA: NCCL sums `bufs[r]` across the replicas, in
/// place. One replica is a no-op. Replicas must be on distinct devices (NCCL refuses two ranks
/// on one GPU).
pub(super) fn all_reduce_sum(
    replicas: &[&CudaBackend],
    bufs: &mut [&mut CudaSlice<f32>],
) -> Result<()> {
    const OP: &str = "all_reduce_sum";
    check_len(OP, "buffers", bufs.len(), replicas.len())?;
    let Some(len) = bufs.first().map(|b| b.len()) else {
        return Ok(());
    };
    for (replica, buf) in replicas.iter().zip(bufs.iter()) {
        check_len(OP, "buffer", buf.len(), len)?;
        replica.on_device(OP, &[("buffer", buf)])?;
    }
    if replicas.len() == 1 || len == 0 {
        return Ok(());
    }
    let ordinals: Vec<usize> = replicas.iter().map(|r| r.info().ordinal).collect();
    if let Some(dup) = ordinals
        .iter()
        .enumerate()
        .find(|(i, o)| ordinals[..*i].contains(o))
    {
        return Err(KernelError::Unsupported(format!(
            "{OP}: two replicas on cuda:{}; NCCL needs one device per replica",
            dup.1
        )));
    }
    let mut cached = replicas[0]
        .comms
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let key: Vec<u64> = replicas.iter().map(|r| r.id).collect();
    if cached.as_ref().is_none_or(|c| c.key != key) {
        // SAFETY: only tries to open the library; cudarc panics on first use without it.
        if !unsafe { cudarc::nccl::sys::is_culib_present() } {
            return Err(device_error(
                "loading NCCL",
                "libnccl could not be loaded: NCCL installs libnccl.so.2, which is found only \
                 through a libnccl.so symlink on LD_LIBRARY_PATH",
            ));
        }
        // Release the old communicators before creating new ones on the same devices.
        *cached = None;
        let streams = replicas.iter().map(|r| r.stream.clone()).collect();
        let comms = Comm::from_devices(streams)
            .or_device(|| format!("creating NCCL communicators for cuda:{ordinals:?}"))?;
        *cached = Some(Comms { key, comms });
    }
    let Some(Comms { comms, .. }) = cached.as_ref() else {
        return Err(device_error(OP, "no NCCL communicators"));
    };
    group_start().device("all_reduce_sum: ncclGroupStart")?;
    // Every rank's call must be queued before the group ends, or NCCL waits forever: keep
    // going past a failure, end the group, then report the first one.
    let mut first_error = None;
    for (comm, buf) in comms.iter().zip(bufs.iter_mut()) {
        if let Err(e) = comm.all_reduce_in_place(&mut **buf, &ReduceOp::Sum) {
            first_error.get_or_insert(e);
        }
    }
    let ended = group_end();
    if let Some(e) = first_error {
        return Err(e).device("all_reduce_sum: ncclAllReduce");
    }
    ended.map(|_| ()).device("all_reduce_sum: ncclGroupEnd")
}
