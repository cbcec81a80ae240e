//! OPA's Wasm ABI, version 1.2, over [`crate::policy`].
//!
//! Values crossing the ABI are addresses of boxed [`regorus::Value`]s in linear memory. The ABI
//! lets the host save and restore the heap pointer (`opa_heap_ptr_get`/`_set`) and write each
//! input straight at the saved pointer (`opa_eval`), so the allocator is a bump allocator over
//! that pointer: one evaluation's garbage is dropped wholesale by the next one. Everything that
//! must outlive evaluations (the parsed policy, its compiled entrypoints) is therefore built
//! before the host first reads the heap pointer after loading its data.
//!
//! The module's bytes are the same for every policy: the policy comes with the data, under
//! [`POLICY_KEY`], and is taken from the first data value the host loads. It is fixed from then
//! on, so nothing parsed later (an input, with the ABI 1.0 path) can replace it.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

use regorus::Value;

use crate::policy::{self, Compiled, MAX_ENTRYPOINTS, POLICY_KEY, Policy};

unsafe extern "C" {
    static __heap_base: u8;
}

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn opa_abort(message: *const u8);
    fn opa_builtin0(builtin: i32, ctx: i32) -> i32;
    fn opa_builtin2(builtin: i32, ctx: i32, a: i32, b: i32) -> i32;
}

/// The builtins the host provides, by the ids [`builtins`] gives them.
const TIME_NOW_NS: i32 = 0;
const RAND_INTN: i32 = 1;

/// Set while the host runs a builtin: the value it hands back through `opa_json_parse` is a
/// result, not data to compile the policy for.
static IN_BUILTIN: Global<bool> = Global(UnsafeCell::new(false));

/// Calls host builtin `id` with the values at `args` (addresses of boxed values); its result
/// as an integer.
fn call_host(id: i32, name: &str, args: &[i32]) -> Result<i64, String> {
    *IN_BUILTIN.get() = true;
    // SAFETY: the imports of OPA's ABI; the arguments are boxed values, which the host reads
    // back through `opa_json_dump`.
    let addr = unsafe {
        match args {
            [] => opa_builtin0(id, 0),
            [a, b] => opa_builtin2(id, 0, *a, *b),
            _ => 0,
        }
    };
    *IN_BUILTIN.get() = false;
    if addr == 0 {
        return Err(alloc::format!("{name}: the host gave no value"));
    }
    // SAFETY: a nonzero address from the host came from `opa_json_parse`.
    unsafe { value(addr) }
        .as_i64()
        .map_err(|_| alloc::format!("{name}: the host gave a value that is not an integer"))
}

/// The host builtins, through the imports.
fn host() -> policy::Host {
    use alloc::sync::Arc;
    policy::Host {
        now_ns: Arc::new(|| call_host(TIME_NOW_NS, "time.now_ns", &[])),
        intn: Arc::new(|key: &str, n: i64| {
            let args = [boxed(Value::from(key)), boxed(Value::from(n))];
            call_host(RAND_INTN, "rand.intn", &args)
        }),
    }
}

/// Reports `message` to the host through `env.opa_abort` (which traps); never returns.
fn abort(message: &str) -> ! {
    let mut bytes: Vec<u8> = message.as_bytes().to_vec();
    bytes.push(0);
    // SAFETY: a NUL-terminated string in linear memory, as the import expects.
    unsafe { opa_abort(bytes.as_ptr()) };
    core::arch::wasm32::unreachable()
}

/// State of a single-threaded module. Wasm instances here never share memory between threads.
struct Global<T>(UnsafeCell<T>);
// SAFETY: `wasm32-unknown-unknown` without the atomics feature has one thread.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    #[allow(clippy::mut_from_ref)]
    fn get(&self) -> &mut T {
        // SAFETY: one thread, and no function below holds two of these borrows at once.
        unsafe { &mut *self.0.get() }
    }
}

/// The bump pointer; 0 until first used.
static HEAP: Global<usize> = Global(UnsafeCell::new(0));

fn heap() -> &'static mut usize {
    let heap = HEAP.get();
    if *heap == 0 {
        *heap = &raw const __heap_base as usize;
    }
    heap
}

struct Bump;

unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let heap = heap();
        let start = (*heap + layout.align() - 1) & !(layout.align() - 1);
        let end = start + layout.size();
        let have = core::arch::wasm32::memory_size(0) * 65536;
        if end > have {
            // Past the memory's maximum this fails, the allocation fails and the module aborts:
            // the host sees a trap and denies.
            if core::arch::wasm32::memory_grow(0, (end - have).div_ceil(65536)) == usize::MAX {
                return core::ptr::null_mut();
            }
        }
        *heap = end;
        start as *mut u8
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static ALLOCATOR: Bump = Bump;

/// The loaded policy and the entrypoints compiled for the data last parsed.
struct State {
    policy: Option<Policy>,
    last_parsed: i32,
    compiled_for: i32,
    compiled: Vec<Compiled>,
}

static STATE: Global<State> = Global(UnsafeCell::new(State {
    policy: None,
    last_parsed: 0,
    compiled_for: 0,
    compiled: Vec::new(),
}));

fn policy() -> &'static Policy {
    STATE.get().policy.as_ref().unwrap_or_else(|| {
        abort(&alloc::format!(
            "gantry policy engine: no policy loaded (the bundle's data.json has no `{POLICY_KEY}`)"
        ))
    })
}

/// `data` without the policy's key, and the policy's description when the key is there.
fn split(data: &Value) -> (Value, Option<Value>) {
    let mut data = data.clone();
    let blob = data
        .as_object_mut()
        .ok()
        .and_then(|fields| fields.remove(&Value::from(POLICY_KEY)));
    (data, blob)
}

/// Loads the policy from its description, once; later descriptions are ignored.
fn load_policy(blob: &Value) {
    let state = STATE.get();
    if state.policy.is_some() {
        return;
    }
    let text = serde_json::to_string(blob)
        .unwrap_or_else(|_| abort("gantry policy engine: the policy is not JSON"));
    match Policy::from_json(&text, &host()) {
        Ok(p) => state.policy = Some(p),
        Err(e) => abort(&alloc::format!("gantry policy engine: {e}")),
    }
}

fn boxed(value: Value) -> i32 {
    Box::into_raw(Box::new(value)) as i32
}

/// # Safety
/// `addr` is an address returned by [`boxed`].
unsafe fn value<'a>(addr: i32) -> &'a Value {
    // SAFETY: see above.
    unsafe { &*(addr as *const Value) }
}

fn c_string(text: String) -> i32 {
    let mut bytes = text.into_bytes();
    bytes.push(0);
    let addr = bytes.as_ptr() as i32;
    core::mem::forget(bytes);
    addr
}

/// Compiles the entrypoints for the data value parsed last, once: called where the host reads
/// the heap pointer after loading data, so the compiled form lies below every later reset.
fn compile_for_last_data() {
    let state = STATE.get();
    if state.last_parsed == 0 || state.last_parsed == state.compiled_for {
        return;
    }
    // SAFETY: `last_parsed` came from `opa_json_parse`.
    let parsed = unsafe { value(state.last_parsed) };
    if parsed.as_object().is_err() {
        return;
    }
    let (data, blob) = split(parsed);
    if let Some(blob) = blob {
        load_policy(&blob);
    }
    let compiled = match policy().compile(&data) {
        Ok(c) => c,
        Err(e) => abort(&alloc::format!("gantry policy engine: {e}")),
    };
    // Initialise regorus's lazily built tables (builtins, ...) now, below the heap snapshot: a
    // table first built during an evaluation would sit above it and be overwritten by the next.
    // A fixed query, not the policy's own rules, which may be arbitrarily expensive.
    policy::warm_up();
    let state = STATE.get();
    state.compiled = compiled;
    state.compiled_for = state.last_parsed;
}

fn evaluate(entry: i32, data: i32, input: Value) -> String {
    // The second set of ids evaluates the same entrypoints without an input (see `entrypoints`).
    let (entry, input) = match policy::without_input(entry as usize) {
        Some(entry) => (entry as i32, Value::Undefined),
        None => (entry, input),
    };
    let state = STATE.get();
    let result = if data != 0 && data == state.compiled_for {
        match state.compiled.get(entry as usize) {
            Some(c) => policy::evaluate_compiled(c, input),
            None => abort(&alloc::format!("no entrypoint {entry}")),
        }
    } else {
        // SAFETY: a nonzero `data` came from `opa_json_parse`.
        let (data, _) = if data == 0 {
            (Value::new_object(), None)
        } else {
            split(unsafe { value(data) })
        };
        policy().evaluate(entry as usize, &data, input)
    };
    result.unwrap_or_else(|e| abort(&alloc::format!("gantry policy engine: {e}")))
}

#[unsafe(no_mangle)]
pub extern "C" fn opa_malloc(size: i32) -> i32 {
    let bytes: Vec<u8> = Vec::with_capacity(size.max(1) as usize);
    let addr = bytes.as_ptr() as i32;
    core::mem::forget(bytes);
    addr
}

#[unsafe(no_mangle)]
pub extern "C" fn opa_free(_addr: i32) {}

#[unsafe(no_mangle)]
pub extern "C" fn opa_heap_ptr_get() -> i32 {
    compile_for_last_data();
    *heap() as i32
}

#[unsafe(no_mangle)]
pub extern "C" fn opa_heap_ptr_set(addr: i32) {
    *heap() = addr as usize;
}

/// # Safety
/// `ptr..ptr + len` lies in linear memory.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn opa_json_parse(ptr: i32, len: i32) -> i32 {
    // SAFETY: see above.
    let mut bytes = unsafe { core::slice::from_raw_parts(ptr as *const u8, len as usize) };
    // Hosts may pass the terminating NUL of a C string along.
    while let [rest @ .., 0] = bytes {
        bytes = rest;
    }
    let Ok(text) = core::str::from_utf8(bytes) else {
        return 0;
    };
    match crate::json::parse(text) {
        Ok(v) => {
            let addr = boxed(v);
            if !*IN_BUILTIN.get() {
                STATE.get().last_parsed = addr;
            }
            addr
        }
        Err(_) => 0,
    }
}

/// # Safety
/// As [`opa_json_parse`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn opa_value_parse(ptr: i32, len: i32) -> i32 {
    // SAFETY: same contract.
    unsafe { opa_json_parse(ptr, len) }
}

/// # Safety
/// `addr` came from this module's parse or eval functions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn opa_json_dump(addr: i32) -> i32 {
    // SAFETY: see above.
    let v = unsafe { value(addr) };
    c_string(serde_json::to_string(v).unwrap_or_else(|_| abort("json dump")))
}

/// # Safety
/// As [`opa_json_dump`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn opa_value_dump(addr: i32) -> i32 {
    // SAFETY: same contract.
    unsafe { opa_json_dump(addr) }
}

/// The builtins the host must provide: the clock and entropy (see [`crate::host_builtins`];
/// `uuid.rfc4122` is built here from two draws).
#[unsafe(no_mangle)]
pub extern "C" fn builtins() -> i32 {
    let mut map = alloc::collections::BTreeMap::new();
    map.insert(Value::from("time.now_ns"), Value::from(TIME_NOW_NS as i64));
    map.insert(Value::from("rand.intn"), Value::from(RAND_INTN as i64));
    boxed(Value::from(map))
}

/// `{"0": 0, "1": 1, ...}`: the ids of every entrypoint a policy may have, declared before the
/// policy is loaded; the host maps names to ids from the bundle's `$gantry.entrypoints`. And
/// `{"0 without input": 256, ...}`: the same entrypoints evaluated with no input at all (as
/// `opa eval` without `-i`, or `opa test`), which OPA's ABI cannot say otherwise: a host always
/// passes an input value, and an undefined input decides apart from any value, `null` included.
#[unsafe(no_mangle)]
pub extern "C" fn entrypoints() -> i32 {
    let mut map = alloc::collections::BTreeMap::new();
    for id in 0..MAX_ENTRYPOINTS {
        map.insert(Value::from(alloc::format!("{id}")), Value::from(id as u64));
        let without = policy::without_input_name(id);
        map.insert(
            Value::from(without),
            Value::from((id + MAX_ENTRYPOINTS) as u64),
        );
    }
    boxed(Value::from(map))
}

#[repr(C)]
struct EvalContext {
    input: i32,
    data: i32,
    entrypoint: i32,
    result: i32,
}

#[unsafe(no_mangle)]
pub extern "C" fn opa_eval_ctx_new() -> i32 {
    Box::into_raw(Box::new(EvalContext {
        input: 0,
        data: 0,
        entrypoint: 0,
        result: 0,
    })) as i32
}

/// # Safety
/// `ctx` came from [`opa_eval_ctx_new`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn opa_eval_ctx_set_input(ctx: i32, input: i32) {
    // SAFETY: see above.
    unsafe { (*(ctx as *mut EvalContext)).input = input }
}

/// # Safety
/// `ctx` came from [`opa_eval_ctx_new`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn opa_eval_ctx_set_data(ctx: i32, data: i32) {
    // SAFETY: see above.
    unsafe { (*(ctx as *mut EvalContext)).data = data }
}

/// # Safety
/// `ctx` came from [`opa_eval_ctx_new`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn opa_eval_ctx_set_entrypoint(ctx: i32, entrypoint: i32) {
    // SAFETY: see above.
    unsafe { (*(ctx as *mut EvalContext)).entrypoint = entrypoint }
}

/// # Safety
/// `ctx` came from [`opa_eval_ctx_new`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn opa_eval_ctx_get_result(ctx: i32) -> i32 {
    // SAFETY: see above.
    unsafe { (*(ctx as *mut EvalContext)).result }
}

/// Evaluates the context's entrypoint (the ABI 1.0 path).
///
/// # Safety
/// `ctx` came from [`opa_eval_ctx_new`], its input and data from the parse functions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eval(ctx: i32) -> i32 {
    // SAFETY: see above.
    let ctx = unsafe { &mut *(ctx as *mut EvalContext) };
    let input = if ctx.input == 0 {
        Value::Undefined
    } else {
        // SAFETY: parsed by this module.
        unsafe { value(ctx.input) }.clone()
    };
    let out = evaluate(ctx.entrypoint, ctx.data, input);
    ctx.result = boxed(crate::json::parse(&out).unwrap_or_else(|_| abort("result")));
    0
}

/// The one-call evaluation of ABI 1.2: the input JSON is at `input_ptr`, the heap continues at
/// `heap_ptr`; returns the address of the result set as a NUL-terminated JSON string.
///
/// # Safety
/// `input_ptr..input_ptr + input_len` lies in linear memory; `data` came from the parse functions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn opa_eval(
    _reserved: i32,
    entrypoint: i32,
    data: i32,
    input_ptr: i32,
    input_len: i32,
    heap_ptr: i32,
    _format: i32,
) -> i32 {
    *heap() = heap_ptr as usize;
    // SAFETY: see above.
    let bytes = unsafe { core::slice::from_raw_parts(input_ptr as *const u8, input_len as usize) };
    let input = core::str::from_utf8(bytes)
        .ok()
        .and_then(|text| crate::json::parse(text).ok())
        .unwrap_or_else(|| abort("gantry policy engine: input is not JSON"));
    c_string(evaluate(entrypoint, data, input))
}
