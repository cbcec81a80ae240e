//! Compiling untrusted components in one bounded place.
//!
//! Cranelift's time and memory grow with the code it is given (an 8 MB component took 5.6 s and
//! 402 MB), so before anything is compiled the component is measured with `wasmparser`, which
//! only walks the bytes: its size, its functions and their code are bounded. Then it is compiled
//! on a thread of its own behind one process-wide slot (one compile at a time, so uploads cannot
//! multiply the cost) while the caller waits at most `timeout`. A compile still running then is
//! abandoned: it finishes in the background, still holding the slot, and its result is dropped.
//!
//! Why a thread and not a child process with rlimits: a library embedding the host has no
//! binary of its own to re-exec, the pooling allocator's address-space reservations rule out
//! `RLIMIT_AS`, and with the input bounded first the work of one compile is bounded too; the
//! slot makes sure at most one such compile runs, so the API, scheduling (which never compiles)
//! and cached loads go on meanwhile.

use std::sync::Mutex;
use std::time::Duration;

/// What a component may be before it is compiled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompileLimits {
    /// Bytes of the whole component.
    pub max_wasm_bytes: u64,
    /// Functions defined in all its core modules.
    pub max_functions: u64,
    /// Bytes of function bodies in all its core modules.
    pub max_code_bytes: u64,
    /// Bytes of the largest function body (compile time grows faster than linearly in it).
    pub max_function_bytes: u64,
    /// Longest wait for a compile, slot included.
    pub timeout: Duration,
}

impl Default for CompileLimits {
    /// Room for what componentize-py and componentize-js produce (CPython or SpiderMonkey
    /// compiled to wasm: 12-18 MB components) and for a slow shared machine.
    fn default() -> Self {
        Self {
            max_wasm_bytes: super::files::MAX_COMPONENT_BYTES,
            max_functions: 100_000,
            max_code_bytes: 24 << 20,
            max_function_bytes: 2 << 20,
            timeout: Duration::from_secs(120),
        }
    }
}

impl CompileLimits {
    /// No bounds worth the name: for what ships in the binary (the plugins, the policy engine),
    /// which a debug build compiles slowly but which is ours.
    pub fn trusted() -> Self {
        Self {
            max_wasm_bytes: u64::MAX,
            max_functions: u64::MAX,
            max_code_bytes: u64::MAX,
            max_function_bytes: u64::MAX,
            timeout: Duration::from_secs(24 * 3600),
        }
    }
}

/// What [`measure`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Functions defined.
    pub functions: u64,
    /// Bytes of function bodies.
    pub code_bytes: u64,
    /// Bytes of the largest body.
    pub largest_function: u64,
}

/// Walks `wasm` (a component or a core module, nested modules included) and counts its code.
pub fn measure(wasm: &[u8]) -> Result<Shape, String> {
    let mut shape = Shape::default();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| format!("{e}"))? {
            wasmparser::Payload::CodeSectionStart { count, size, .. } => {
                shape.functions += u64::from(count);
                shape.code_bytes += u64::from(size);
            }
            wasmparser::Payload::CodeSectionEntry(body) => {
                shape.largest_function = shape.largest_function.max(body.range().len() as u64);
            }
            _ => {}
        }
    }
    Ok(shape)
}

/// Refuses `wasm` when it is over `limits`, saying which bound and by how much.
pub fn check(wasm: &[u8], limits: &CompileLimits) -> Result<Shape, String> {
    let over = |what: &str, n: u64, max: u64| {
        (n > max).then(|| format!("{what}: {n}, over the limit of {max}"))
    };
    if let Some(e) = over(
        "component size in bytes",
        wasm.len() as u64,
        limits.max_wasm_bytes,
    ) {
        return Err(e);
    }
    let shape = measure(wasm)?;
    let checks = [
        over("functions", shape.functions, limits.max_functions),
        over("code bytes", shape.code_bytes, limits.max_code_bytes),
        over(
            "bytes in one function",
            shape.largest_function,
            limits.max_function_bytes,
        ),
    ];
    match checks.into_iter().flatten().next() {
        Some(e) => Err(e),
        None => Ok(shape),
    }
}

/// The one compile slot of the process.
static SLOT: Mutex<()> = Mutex::new(());

/// Runs `compile` on a thread of its own behind the process's compile slot, waiting at most
/// `timeout` (see the module documentation).
pub fn bounded<T: Send + 'static>(
    timeout: Duration,
    compile: impl FnOnce() -> wasmtime::Result<T> + Send + 'static,
) -> wasmtime::Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("gantry-compile".into())
        .spawn(move || {
            let _slot = SLOT.lock().unwrap_or_else(|e| e.into_inner());
            let _ = tx.send(compile());
        })
        .map_err(|e| wasmtime::format_err!("starting a compile thread: {e}"))?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(_) => Err(wasmtime::format_err!(
            "compiling took longer than {} s and was abandoned (one compile runs at a time)",
            timeout.as_secs_f64()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{CodeSection, Function, FunctionSection, Instruction, Module, TypeSection};

    /// A core module of `functions` functions, each `ops` constant drops long.
    fn module(functions: u32, ops: u32) -> Vec<u8> {
        let mut m = Module::new();
        let mut types = TypeSection::new();
        types.ty().function([], []);
        m.section(&types);
        let mut decls = FunctionSection::new();
        let mut code = CodeSection::new();
        for _ in 0..functions {
            decls.function(0);
            let mut f = Function::new([]);
            for _ in 0..ops {
                f.instruction(&Instruction::I32Const(1));
                f.instruction(&Instruction::Drop);
            }
            f.instruction(&Instruction::End);
            code.function(&f);
        }
        m.section(&decls);
        m.section(&code);
        m.finish()
    }

    #[test]
    fn compile_size_is_bounded_before_compiling() {
        let limits = CompileLimits {
            max_wasm_bytes: 1 << 20,
            max_functions: 100,
            max_code_bytes: 64 << 10,
            max_function_bytes: 4 << 10,
            timeout: Duration::from_secs(60),
        };
        let shape = check(&module(10, 10), &limits).unwrap();
        assert_eq!(shape.functions, 10);
        let refused = |wasm: Vec<u8>| check(&wasm, &limits).unwrap_err();
        assert!(refused(module(101, 1)).starts_with("functions: 101"));
        assert!(refused(module(1, 3000)).starts_with("bytes in one function"));
        assert!(refused(module(100, 300)).starts_with("code bytes"));
        assert!(refused(vec![0; (1 << 20) + 1]).starts_with("component size"));
    }

    #[test]
    fn an_overlong_compile_is_abandoned_and_holds_the_slot() {
        let slow = || {
            std::thread::sleep(Duration::from_millis(1500));
            Ok(1)
        };
        let err = bounded(Duration::from_millis(100), slow).unwrap_err();
        assert!(err.to_string().contains("abandoned"), "{err}");
        // The abandoned compile still holds the slot: the next waits behind it.
        let next = bounded(Duration::from_millis(100), || Ok(2));
        assert!(next.is_err());
        assert_eq!(bounded(Duration::from_secs(30), || Ok(3)).unwrap(), 3);
    }
}
