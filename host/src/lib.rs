//! Gantry: a host runtime for AI-training clusters.
//!
//! Gantry owns the GPUs and loads sandboxed WebAssembly plugins for the decisions every platform
//! wants to customise. This crate, the core, is what platforms embed (see `examples/embedder`):
//! the engine, plugins, policy, scheduling, storage, the audit log, the preprocessing pipeline
//! and training jobs. It has no HTTP server, database or command line: those are
//! `gantry-daemon` and `gantry-cli`, built on it.
//!
//! - [`Host`]: one wasmtime engine, the loaded plugins and the cluster state.
//! - [`audit`]: the tamper-evident audit log (hash chain, signed checkpoints).
//! - [`keys`]: Ed25519 signing keys.
//! - [`plugin`]: the plugin runtime (manifests, cached compilation, limits, failures, quarantine).
//! - [`policy`]: Rego policies packed into OPA-ABI wasm, bundles, and sandboxed decisions.
//! - [`scheduling`]: snapshots, validation, plugin calls and the native fallback.
//! - [`cluster`]: the cluster model and its files.
//! - [`simulate`]: discrete-event simulation of a cluster over a job trace.
//! - [`training`]: training jobs on the native kernels (`gantry-kernels`): configs, data, devices,
//!   checkpoints.
//! - [`storage`]: the encrypted, content-addressed object store.
//! - [`preprocess`], [`pipeline`]: preprocessing plugins and the streaming data path.
//! - [`builtin`]: the shipped plugins and policy, compiled in.
//! - [`engine`], [`bindings`]: the one wasmtime engine; the host side of the WIT worlds.
//! - [`chart`], [`durable`]: SVG line charts; crash-safe whole-file writes.

pub mod audit;
pub mod bindings;
pub mod blocking;
pub mod builtin;
pub mod chart;
pub mod cluster;
pub mod durable;
pub mod engine;
mod host;
pub mod keys;
pub mod pipeline;
pub mod plugin;
pub mod policy;
pub mod preprocess;
pub mod scheduling;
pub mod simulate;
pub mod storage;
pub mod training;

pub use host::{
    Assignment, CheckedJob, CyclePlan, CycleReport, DECISION_ENTRYPOINT, DEFAULT_RESERVE_AFTER_S,
    DecidedCycle, Decider, Host, HostConfig, HostError, PluginSource, PluginTrust,
    PreparedScheduler, RecordedScheduler, Reserved, UploadedPlugin, Verdict, default_cache_dir,
};

/// The tests' allocator: the system's, counting what each thread holds, so that a test can
/// measure the most a piece of work held at once ([`test_alloc::peak_during`]) and hold an
/// estimate to it (a job's memory reservation was 1.8 times under what loading it held).
#[cfg(test)]
pub(crate) mod test_alloc {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    thread_local! {
        static HELD: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn add(bytes: isize) {
        // Never allocates (const thread-locals): safe inside the allocator.
        let _ = HELD.try_with(|held| {
            let now = held.get() + bytes;
            held.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    // SAFETY: every call is passed on to the system allocator unchanged; only counted.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as isize);
            // SAFETY: the caller's contract, passed on.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            add(-(layout.size() as isize));
            // SAFETY: the caller's contract, passed on.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            add(new_size as isize - layout.size() as isize);
            // SAFETY: the caller's contract, passed on.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    /// The most bytes this thread held at once during `work`, beyond what it held before.
    pub(crate) fn peak_during<T>(work: impl FnOnce() -> T) -> (T, u64) {
        let before = HELD.with(Cell::get);
        PEAK.with(|p| p.set(before));
        let out = work();
        let peak = PEAK.with(Cell::get);
        (out, (peak - before).max(0) as u64)
    }
}

// The README's Rust examples compile and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
