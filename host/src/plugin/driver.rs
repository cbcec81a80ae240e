//! Drives guest calls to completion or to their deadline.
//!
//! Guest exports run on wasmtime fibers (`call_async`), and WASI is linked in its async form, so
//! a guest parked in a host call (a sleep, a poll on a clock) suspends its fiber instead of
//! blocking the thread. Two clocks then bound every call: the epoch deadline traps running wasm,
//! and a tokio timeout abandons a call parked in the host. An abandoned call's store is dropped,
//! never reused.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use super::manifest::Limits;
use super::{Call, Fault, PluginError};

/// The runtime behind the blocking API: one thread-less, current-thread runtime with timers.
/// Several threads may `block_on` it at once; the first one drives the timer for the others.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("building a current-thread tokio runtime with only timers cannot fail")
    })
}

/// Runs `call` to completion from synchronous code.
///
/// Inside a tokio runtime (a daemon's `spawn_blocking`, say) a nested `block_on` would panic, so
/// there the call is driven from a scoped helper thread instead; async callers should prefer the
/// `*_async` methods and skip this hop.
pub fn block_on<F>(call: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return runtime().block_on(call);
    }
    std::thread::scope(|scope| {
        let driver = std::thread::Builder::new()
            .name("gantry-plugin-call".into())
            .spawn_scoped(scope, || runtime().block_on(call))
            .expect("spawning a plugin-call thread");
        driver
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Awaits `call` (guest call `which` into `plugin`), or gives up with a deadline fault once
/// `limits.deadline_ms` has passed while it was parked in a host call.
pub async fn within_deadline<T>(
    plugin: &str,
    which: Call,
    limits: &Limits,
    call: impl Future<Output = Result<T, PluginError>>,
) -> Result<T, PluginError> {
    match tokio::time::timeout(Duration::from_millis(limits.deadline_ms), call).await {
        Ok(result) => result,
        Err(_elapsed) => Err(PluginError::new(
            plugin,
            which,
            Fault::Deadline {
                limit_ms: limits.deadline_ms,
            },
        )),
    }
}
