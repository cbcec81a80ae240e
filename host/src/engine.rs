//! The one wasmtime `Engine` of a host: configured here and nowhere else.
//!
//! Component model on, epoch interruption for deadlines, the pooling allocator so a fresh
//! instance per call costs microseconds, wasm backtraces for trap reports, and a bounded wasm
//! stack so unbounded recursion traps instead of taking the host down.
//!
//! Every engine [`build`] makes has its epoch advanced for as long as it lives, by one
//! process-wide thread: deadlines hold for whatever holds the engine (a host, a loader that
//! outlived it, a loaded policy, a CLI that built an engine alone), with nothing to start or keep.

use std::num::NonZeroUsize;
use std::sync::{Mutex, Once};
use std::time::Duration;

use wasmtime::{Config, Engine, EngineWeak, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; plugin deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Largest total of linear memory (all its memories together) a plugin may ask for in its
/// manifest; also the largest single memory the pool holds.
pub const MAX_PLUGIN_MEMORY_MIB: u32 = 1024;

/// Largest total of table elements a plugin may ask for; also the largest single table.
pub const MAX_PLUGIN_TABLE_ELEMENTS: u32 = 100_000;

/// Most core module instances one plugin instance may hold. Components made by
/// componentize-py or componentize-js hold 10-14; a Rust guest holds 3.
pub const MAX_PLUGIN_INSTANCES: u32 = 64;

/// Most linear memories one plugin instance may hold.
pub const MAX_PLUGIN_MEMORIES: u32 = 16;

/// Most tables one plugin instance may hold.
pub const MAX_PLUGIN_TABLES: u32 = 32;

/// Bytes of each pooled linear memory kept resident between instances.
pub const MEMORY_KEEP_RESIDENT: usize = 4 << 20;

/// Largest wasm stack; deeper recursion traps with "call stack exhausted".
pub const MAX_WASM_STACK: usize = 1 << 20;

/// Builds the host's engine, its epoch ticking until it is dropped.
///
/// Async support needs no switch in wasmtime 48: it is chosen per call, so opa-wasm (which only
/// makes async calls) shares this engine with the synchronous scheduler calls.
pub fn build() -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(256)
        .total_core_instances(512)
        .total_memories(256)
        .total_tables(256)
        .total_stacks(128)
        // What no component may exceed whatever its manifest says, checked when it is compiled:
        // the manifest's own (lower) totals are enforced per store by `plugin::PluginLimiter`.
        .max_core_instances_per_component(MAX_PLUGIN_INSTANCES)
        .max_memories_per_component(MAX_PLUGIN_MEMORIES)
        .max_tables_per_component(MAX_PLUGIN_TABLES)
        .max_memories_per_module(1)
        .max_memory_size((MAX_PLUGIN_MEMORY_MIB as usize) << 20)
        .table_elements(MAX_PLUGIN_TABLE_ELEMENTS as usize)
        // Keep the first pages of each memory slot mapped and zero them with memset on reuse:
        // a scheduler call touches ~1-2 MiB, and page-faulting that in on every fresh instance
        // costs more than the call's own work.
        .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
        .table_keep_resident(64 << 10)
        // Where the kernel has PAGEMAP_SCAN (Linux 6.7+), reset only the pages a call dirtied
        // instead of memset-ing the whole resident prefix: plugins link with a large initial
        // memory (see `.cargo/config.toml`) and touch a fraction of it.
        .pagemap_scan(wasmtime::Enabled::Auto);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .wasm_backtrace_max_frames(NonZeroUsize::new(64))
        .max_wasm_stack(MAX_WASM_STACK)
        // Component-model async is unused; turning it off makes every export call ~3x cheaper.
        .concurrency_support(false)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // `GANTRY_PERFMAP=1` names compiled plugin functions for `perf` (/tmp/perf-PID.map).
    if std::env::var_os("GANTRY_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let engine = Engine::new(&config)?;
    tick_while_alive(&engine);
    Ok(engine)
}

/// The engines whose epochs advance, held weakly: a dropped engine leaves the list.
static TICKED: Mutex<Vec<EngineWeak>> = Mutex::new(Vec::new());

/// Advances `engine`'s epoch every [`EPOCH_TICK`] until the last clone of it is dropped.
fn tick_while_alive(engine: &Engine) {
    TICKED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(engine.weak());
    static TICKER: Once = Once::new();
    TICKER.call_once(|| {
        std::thread::Builder::new()
            .name("gantry-epoch".into())
            .spawn(tick_forever)
            .expect("spawning the epoch thread");
    });
}

fn tick_forever() {
    loop {
        std::thread::sleep(EPOCH_TICK);
        // Upgrade under the lock, tick and drop outside it: dropping the last clone of an
        // engine frees its pool, which must not hold up the list.
        let live: Vec<Engine> = {
            let mut ticked = TICKED.lock().unwrap_or_else(|e| e.into_inner());
            let live: Vec<Engine> = ticked.iter().filter_map(EngineWeak::upgrade).collect();
            if live.len() < ticked.len() {
                ticked.retain(|weak| weak.upgrade().is_some());
            }
            live
        };
        for engine in &live {
            engine.increment_epoch();
        }
    }
}
