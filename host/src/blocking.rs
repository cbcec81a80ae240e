//! Where blocking work runs, and the one way synchronous code drives the async core.
//!
//! The core is async: plugin calls and policy decisions are futures, driven by the caller's
//! runtime, and no thread is started for any of them. What blocks a thread (an fsync of the audit
//! log or the object store, SQLite, compiling wasm, a guest computing up to its deadline) goes
//! through [`run`]: tokio's blocking pool, at most [`SLOTS`] tasks at once; more wait their turn
//! without holding a thread. Synchronous callers at the edge (the CLI, benchmarks, tests) enter
//! through [`block_on`].

use std::cell::Cell;
use std::future::Future;
use std::sync::OnceLock;

use tokio::sync::Semaphore;

/// Blocking tasks run at once, process-wide; more wait (asynchronously) for a slot.
pub const SLOTS: usize = 32;

static GATE: Semaphore = Semaphore::const_new(SLOTS);

thread_local! {
    /// Whether this thread runs [`run`]'s work now (tokio reuses pool threads for other work).
    static ON_POOL: Cell<bool> = const { Cell::new(false) };
}

/// Marks the thread as running [`run`]'s work until dropped.
struct OnPool;

impl OnPool {
    fn enter() -> Self {
        ON_POOL.set(true);
        OnPool
    }
}

impl Drop for OnPool {
    fn drop(&mut self) {
        ON_POOL.set(false);
    }
}

/// Runs `work` on the blocking pool of the current tokio runtime, at most [`SLOTS`] at once, and
/// returns what it returns. A panic in `work` resumes in the caller. Called from work already on
/// the pool (a decision's audit sync inside [`run_future`]), it runs `work` right there.
///
/// # Panics
/// Outside a tokio runtime.
pub async fn run<T, F>(work: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if ON_POOL.get() {
        // Already on a pool thread, holding a slot: a second hop would only wait for another.
        return work();
    }
    // The gate is never closed, so acquiring cannot fail.
    let _slot = GATE
        .acquire()
        .await
        .expect("the blocking gate is never closed");
    let span = tracing::Span::current();
    let work = move || {
        let _on_pool = OnPool::enter();
        span.in_scope(work)
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only a runtime shutting down cancels a blocking task before it starts.
            Err(e) => panic!("a blocking task did not run: {e}"),
        },
    }
}

/// Drives `future` to completion on the blocking pool ([`run`]), for futures that compute for
/// long stretches between their awaits (a guest running up to its deadline): the runtime's
/// async workers stay free for everything else. The pool's thread drives it; none is started.
pub async fn run_future<F>(future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    run(move || handle.block_on(future)).await
}

/// The runtime behind [`block_on`]: one current-thread runtime with timers and no worker
/// threads. Several threads may `block_on` it at once; the first one drives the timer for the
/// others.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("building a current-thread tokio runtime with only timers cannot fail")
    })
}

/// Runs `future` to completion from synchronous code: the edge between a synchronous caller (the
/// CLI, a benchmark, a test, a worker thread of the preprocessing pipeline) and the async core.
/// It runs on the calling thread; no thread is started.
///
/// # Panics
/// When called from async code (inside a runtime's task): await the future there instead.
pub fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}
