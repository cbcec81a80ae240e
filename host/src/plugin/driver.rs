//! Drives guest calls to completion or to their deadline.
//!
//! Guest exports run on wasmtime fibers (`call_async`), and WASI is linked in its async form, so
//! a guest parked in a host call (a sleep, a poll on a clock) suspends its fiber instead of
//! blocking the thread. Two clocks then bound every call: the epoch deadline traps running wasm,
//! and a tokio timeout abandons a call parked in the host. An abandoned call's store is dropped,
//! never reused. Synchronous callers drive these futures through [`crate::blocking::block_on`].

use std::future::Future;
use std::time::Duration;

use super::manifest::Limits;
use super::{Call, Fault, PluginError};

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
