//! Decisions: a bundle's OPA-ABI module loaded on the host's engine and evaluated through
//! `opa-wasm`, each evaluation bounded in time and memory, with a pool of ready instances.
//!
//! Any module that follows OPA's Wasm ABI loads here: the ones `gantry policy build` packs, and
//! the ones `opa build -t wasm` writes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opa_wasm::{EvaluationContext, Policy, Runtime};
use wasmtime::{Engine, Module, Store, Trap};

use super::PolicyError;
use super::bundle::Bundle;
pub use super::result_set::ResultSet;
use crate::plugin::limits::PluginLimiter;
use crate::plugin::{ArtifactCache, CacheOutcome, Limits};
use gantry_policy_engine::host_builtins::MAX_DRAWS;
use gantry_policy_engine::policy::POLICY_KEY;

/// Limits of one policy evaluation.
#[derive(Debug, Clone, Copy)]
pub struct PolicyLimits {
    /// Cap on the module's linear memory, in MiB.
    pub memory_mib: u32,
    /// Wall-clock deadline of one evaluation (and of loading an instance), in milliseconds.
    pub deadline_ms: u64,
    /// Ready instances kept for reuse; more are created under concurrent load.
    pub pool: usize,
    /// Longest result set, as the JSON text the module writes, that is parsed into values:
    /// parsed, a result costs many times its text (256 MiB of `[0,0,...]` took 4.7 GB).
    pub max_result_bytes: usize,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        Self {
            memory_mib: 256,
            deadline_ms: 1000,
            pool: 8,
            max_result_bytes: 4 << 20,
        }
    }
}

struct Ready {
    store: Store<PluginLimiter>,
    policy: Policy<HostContext>,
    /// What the host gave the instance's last evaluation (shared with its context).
    given: Arc<Mutex<Vec<HostValue>>>,
}

/// A value the host gave a policy during one evaluation: the clock or a random draw, which the
/// sandbox cannot produce itself (`gantry_policy_engine::host_builtins`). A decision's audit
/// entry records them, so that it can be explained (and replayed) later.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HostValue {
    /// The builtin: `time.now_ns` or `rand.intn` (a uuid is two draws keyed
    /// `uuid.rfc4122(<key>)/0` and `/1`).
    pub builtin: String,
    /// Its arguments (`rand.intn`: the key and the bound).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<serde_json::Value>,
    /// What the host answered.
    pub value: serde_json::Value,
}

/// The host's side of the builtins a module imports (`opa_builtin*`, dispatched by `opa-wasm`):
/// one clock reading per evaluation, draws from the thread's generator (a CSPRNG seeded by the
/// operating system), each draw kept for the evaluation (OPA: one value per key and bound in a
/// query). Every value given is recorded in `given`.
struct HostContext {
    cache: std::collections::HashMap<String, serde_json::Value>,
    now: chrono::DateTime<chrono::Utc>,
    given: Arc<Mutex<Vec<HostValue>>>,
}

impl HostContext {
    fn give(&self, value: HostValue) {
        self.given
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(value);
    }
}

impl EvaluationContext for HostContext {
    type Rng = rand::rngs::ThreadRng;

    fn get_rng(&mut self) -> Self::Rng {
        rand::rng()
    }

    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        let ns = self.now.timestamp_nanos_opt();
        let given = self.given.lock().unwrap_or_else(|e| e.into_inner());
        let read = given.iter().any(|v| v.builtin == "time.now_ns");
        drop(given);
        if !read {
            self.give(HostValue {
                builtin: "time.now_ns".into(),
                args: Vec::new(),
                value: ns.into(),
            });
        }
        self.now
    }

    fn evaluation_start(&mut self) {
        self.cache.clear();
        self.now = chrono::Utc::now();
        self.given.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn cache_get<K: serde::Serialize, C: serde::de::DeserializeOwned>(
        &mut self,
        key: &K,
    ) -> anyhow::Result<Option<C>> {
        let key = serde_json::to_string(key)?;
        self.cache
            .get(&key)
            .map(|v| serde_json::from_value(v.clone()))
            .transpose()
            .map_err(Into::into)
    }

    /// Only `rand.intn` keeps values (keyed `["rand", key, bound]`): each is a draw given.
    fn cache_set<K: serde::Serialize, C: serde::Serialize>(
        &mut self,
        key: &K,
        content: &C,
    ) -> anyhow::Result<()> {
        let key = serde_json::to_value(key)?;
        let content = serde_json::to_value(content)?;
        let (kind, args) = match key.as_array().map(Vec::as_slice) {
            Some([kind, args @ ..]) => (kind.as_str().unwrap_or_default(), args.to_vec()),
            _ => ("", Vec::new()),
        };
        let builtin = if kind == "rand" { "rand.intn" } else { kind };
        if self.cache.len() >= MAX_DRAWS {
            anyhow::bail!("{builtin}: over {MAX_DRAWS} distinct draws in one decision");
        }
        self.give(HostValue {
            builtin: builtin.into(),
            args,
            value: content.clone(),
        });
        self.cache.insert(key.to_string(), content);
        Ok(())
    }
}

/// Compiled policy modules kept in memory by the sha256 of their bytes, so that a host compiles
/// a module once however many bundles carry it: every bundle `gantry policy build` writes
/// carries the same engine module.
#[derive(Clone, Default)]
pub(crate) struct CompiledModules {
    kept: Arc<Mutex<Vec<(String, Module)>>>,
    /// Held while a module compiles, so loads that miss at once compile it once: the others wait
    /// and find it kept. Policy loads are rare; serialising their compiles costs nothing.
    compiling: Arc<tokio::sync::Mutex<()>>,
}

impl CompiledModules {
    /// Modules kept: the engine's, and a few foreign ones (`opa build -t wasm`).
    const KEPT: usize = 4;

    fn get(&self, sha: &str) -> Option<Module> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter().find(|(s, _)| s == sha).map(|(_, m)| m.clone())
    }

    fn put(&self, sha: String, module: Module) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.retain(|(s, _)| *s != sha);
        if kept.len() == Self::KEPT {
            kept.remove(0);
        }
        kept.push((sha, module));
    }
}

/// A loaded policy bundle.
pub struct LoadedPolicy {
    engine: Engine,
    module: Module,
    data: serde_json::Value,
    revision: String,
    /// Each entrypoint's name and the name the module knows it by, sorted by name.
    entrypoints: Vec<(String, String)>,
    /// Whether the module declares each entrypoint again, evaluated without an input.
    without_input: bool,
    limits: PolicyLimits,
    cache: CacheOutcome,
    ready: Mutex<Vec<Ready>>,
}

impl std::fmt::Debug for LoadedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPolicy")
            .field("revision", &self.revision)
            .field("entrypoints", &self.entrypoints())
            .finish()
    }
}

fn module_error(e: impl std::fmt::Display) -> PolicyError {
    PolicyError::Module(crate::plugin::Fault::text(format!("{e:#}")))
}

/// Runs a call into `opa-wasm`, whose code panics on what a module or a builtin's arguments can
/// make it see (a heap pointer near `i32::MAX`, `time.add_date` with a year chrono cannot hold):
/// the panic ends this call alone, as its error (a denial), and never the thread serving the
/// request (which took the daemon's connection with it, every request after a bad policy's
/// install, restarts included).
async fn unwinding<T>(
    call: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let mut call = Box::pin(call);
    std::future::poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| call.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                std::task::Poll::Ready(Err(anyhow::anyhow!(
                    "the policy engine failed on what the module gave it: {what}"
                )))
            }
        },
    )
    .await
}

/// What loading a policy bundle takes: a host's engine and its compiled-artifact cache
/// ([`crate::Host::policy_loader`]). Cheap to clone, so a bundle compiles without holding a lock
/// on the host; the policy it loads can be installed on that host ([`crate::Host::set_policy`])
/// or evaluated on its own.
#[derive(Clone)]
pub struct PolicyLoader {
    engine: Engine,
    cache: ArtifactCache,
    compiled: CompiledModules,
    /// Bounds on compiling a module other than the engine the binary ships.
    compile: crate::plugin::compile::CompileLimits,
}

impl std::fmt::Debug for PolicyLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyLoader").finish_non_exhaustive()
    }
}

impl PolicyLoader {
    /// A loader compiling on `engine` through `cache`, keeping what it compiled in `compiled`;
    /// a module other than the shipped engine is compiled only within `compile`.
    pub(crate) fn new(
        engine: Engine,
        cache: ArtifactCache,
        compiled: CompiledModules,
        compile: crate::plugin::compile::CompileLimits,
    ) -> Self {
        Self {
            engine,
            cache,
            compiled,
            compile,
        }
    }

    /// Compiles (or loads from the cache) the bundle's module and checks that it follows OPA's
    /// Wasm ABI by instantiating it once with the bundle's data; every evaluation of it is
    /// bounded by `limits`.
    pub async fn load(
        &self,
        bundle: Bundle,
        limits: PolicyLimits,
    ) -> Result<Arc<LoadedPolicy>, PolicyError> {
        let (module, outcome) = self.module(&bundle.wasm).await?;
        LoadedPolicy::load(&self.engine, module, outcome, bundle, limits).await
    }

    /// The bounds on compiling `wasm`: none for the engine module the binary ships (ours, and
    /// large), the host's bounds for plugins for any other.
    fn compile_limits(&self, wasm: &[u8]) -> crate::plugin::compile::CompileLimits {
        if super::is_engine_module(wasm) {
            crate::plugin::compile::CompileLimits::trusted()
        } else {
            self.compile
        }
    }

    /// The compiled module of `wasm`: kept in memory, else from the cache or compiled on the
    /// blocking pool.
    async fn module(&self, wasm: &[u8]) -> Result<(Module, CacheOutcome), PolicyError> {
        let sha = crate::plugin::cache::sha256_hex(wasm);
        if let Some(module) = self.compiled.get(&sha) {
            return Ok((module, CacheOutcome::Hit));
        }
        let _turn = self.compiled.compiling.lock().await;
        if let Some(module) = self.compiled.get(&sha) {
            return Ok((module, CacheOutcome::Hit));
        }
        // An uploaded module is as untrusted as a plugin: Cranelift's time and memory grow with
        // it (a 60 MB module compiled for minutes at 3.5 GB, holding the compile slot), so it is
        // measured and bounded first. The engine the binary ships is ours, and large.
        let cache = self
            .cache
            .clone()
            .with_compile_limits(self.compile_limits(wasm));
        let (engine, wasm_bytes) = (self.engine.clone(), wasm.to_vec());
        let key = sha.clone();
        let (module, outcome) = crate::blocking::run(move || {
            cache.load_or_compile::<Module>(&engine, &wasm_bytes, &key)
        })
        .await
        .map_err(module_error)?;
        self.compiled.put(sha, module.clone());
        Ok((module, outcome))
    }
}

/// Each entrypoint's name and the name the module knows it by. A bundle `gantry policy build`
/// wrote names its entrypoints in its policy (`data.json`'s `$gantry.entrypoints`), and the
/// module knows each by its position; any other OPA-ABI module names its own.
fn entrypoint_names(
    data: &serde_json::Value,
    module_names: std::collections::HashSet<&str>,
) -> Result<Vec<(String, String)>, PolicyError> {
    let listed = &data[POLICY_KEY]["entrypoints"];
    let mut names: Vec<(String, String)> = if listed.is_null() {
        module_names
            .into_iter()
            .map(|n| (n.to_string(), n.to_string()))
            .collect()
    } else {
        let list = listed
            .as_array()
            .filter(|list| list.iter().all(serde_json::Value::is_string))
            .ok_or_else(|| {
                module_error(format!(
                    "data.json: `{POLICY_KEY}.entrypoints` is not a list of names"
                ))
            })?;
        let names: Vec<(String, String)> = list
            .iter()
            .enumerate()
            .map(|(id, name)| (name.as_str().unwrap_or_default().into(), id.to_string()))
            .collect();
        if let Some((name, id)) = names
            .iter()
            .find(|(_, id)| !module_names.contains(id.as_str()))
        {
            return Err(module_error(format!(
                "entrypoint `{name}`: the module declares no entrypoint {id} (not the engine module \
                 the bundle's policy was built for)"
            )));
        }
        names
    };
    names.sort();
    Ok(names)
}

impl LoadedPolicy {
    /// Checks that `module` follows the ABI by instantiating it once with the bundle's data.
    async fn load(
        engine: &Engine,
        module: Module,
        outcome: CacheOutcome,
        bundle: Bundle,
        limits: PolicyLimits,
    ) -> Result<Arc<Self>, PolicyError> {
        let mut policy = Self {
            engine: engine.clone(),
            module,
            revision: bundle.revision().to_string(),
            data: bundle.data,
            entrypoints: Vec::new(),
            without_input: false,
            limits,
            cache: outcome,
            ready: Mutex::new(Vec::new()),
        };
        let ready = policy.instantiate().await?;
        let module_names = ready.policy.entrypoints();
        policy.without_input = !policy.data[POLICY_KEY].is_null()
            && module_names.contains(gantry_policy_engine::policy::without_input_name(0).as_str());
        policy.entrypoints = entrypoint_names(&policy.data, module_names)?;
        policy
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ready);
        Ok(Arc::new(policy))
    }

    /// The bundle's revision.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The bundle's entrypoints, sorted.
    pub fn entrypoints(&self) -> Vec<&str> {
        self.entrypoints.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Whether the compiled module came from the cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }

    fn store(&self) -> Store<PluginLimiter> {
        let limits = Limits {
            memory_mib: self.limits.memory_mib,
            ..Limits::default()
        };
        let mut store = Store::new(&self.engine, PluginLimiter::new(&limits));
        store.limiter(|l| l);
        self.arm(&mut store);
        store
    }

    fn arm(&self, store: &mut Store<PluginLimiter>) {
        crate::plugin::arm_deadline(store, self.limits.deadline_ms);
    }

    async fn instantiate(&self) -> Result<Ready, PolicyError> {
        let mut store = self.store();
        let deadline = Duration::from_millis(self.limits.deadline_ms);
        let given = Arc::new(Mutex::new(Vec::new()));
        let context = HostContext {
            cache: std::collections::HashMap::new(),
            now: chrono::Utc::now(),
            given: given.clone(),
        };
        let load = async {
            let runtime = unwinding(Runtime::new_with_evaluation_context(
                &mut store,
                &self.module,
                context,
            ))
            .await
            .map_err(module_error)?;
            unwinding(runtime.with_data(&mut store, &self.data))
                .await
                .map_err(module_error)
        };
        let policy = tokio::time::timeout(deadline, load)
            .await
            .map_err(|_| PolicyError::Module("loading exceeded the deadline".into()))??;
        Ok(Ready {
            store,
            policy,
            given,
        })
    }

    /// Evaluates `entrypoint` on `input` and returns OPA's result set (`[{"result": ..}]`, or
    /// `[]` when the rule is undefined), its numbers exact. Any failure is an error, which
    /// callers treat as deny. `input` is written as JSON for the module: a
    /// `serde_json::value::RawValue` goes as its text, so a number past 64 bits arrives whole.
    pub async fn evaluate<I: serde::Serialize + Sync + ?Sized>(
        &self,
        entrypoint: &str,
        input: &I,
    ) -> Result<ResultSet, PolicyError> {
        self.evaluate_given(entrypoint, input).await.0
    }

    /// [`LoadedPolicy::evaluate`], and what the host gave the evaluation (its clock reading and
    /// random draws, in the order given), also when it failed.
    pub async fn evaluate_given<I: serde::Serialize + Sync + ?Sized>(
        &self,
        entrypoint: &str,
        input: &I,
    ) -> (Result<ResultSet, PolicyError>, Vec<HostValue>) {
        self.decide(entrypoint, Input::Given(input)).await
    }

    /// [`LoadedPolicy::evaluate_given`] with no input at all, as `opa test` runs a test and
    /// `opa eval` evaluates without `-i`: `input` is undefined, which no input value is. Only
    /// the engine module `gantry policy build` packs can (OPA's ABI always passes an input; the
    /// engine declares a second id for each entrypoint that ignores it).
    pub async fn evaluate_without_input(
        &self,
        entrypoint: &str,
    ) -> (Result<ResultSet, PolicyError>, Vec<HostValue>) {
        self.decide::<()>(entrypoint, Input::Undefined).await
    }

    async fn decide<I: serde::Serialize + Sync + ?Sized>(
        &self,
        entrypoint: &str,
        input: Input<'_, I>,
    ) -> (Result<ResultSet, PolicyError>, Vec<HostValue>) {
        let Ok(at) = self
            .entrypoints
            .binary_search_by(|(name, _)| name.as_str().cmp(entrypoint))
        else {
            let message = format!(
                "no such entrypoint (the bundle has: {})",
                self.entrypoints().join(", ")
            );
            return (Err(self.eval_error(entrypoint, message)), Vec::new());
        };
        let named = self.entrypoints[at].1.as_str();
        let id = match input {
            Input::Given(_) => std::borrow::Cow::Borrowed(named),
            Input::Undefined => match named.parse::<usize>() {
                Ok(position) if self.without_input => std::borrow::Cow::Owned(
                    gantry_policy_engine::policy::without_input_name(position),
                ),
                _ => {
                    let message = "this module cannot evaluate without an input (only the engine \
                                   module `gantry policy build` packs can)";
                    return (Err(self.eval_error(entrypoint, message.into())), Vec::new());
                }
            },
        };
        let id: &str = &id;
        let pooled = self.ready.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut ready = match pooled {
            Some(r) => r,
            None => match self.instantiate().await {
                Ok(r) => r,
                Err(e) => return (Err(e), Vec::new()),
            },
        };
        self.arm(&mut ready.store);
        let deadline = Duration::from_millis(self.limits.deadline_ms);
        // The result is taken as text first: its length is checked before it is parsed.
        let call = unwinding(
            ready
                .policy
                .evaluate::<_, Box<serde_json::value::RawValue>, _>(&mut ready.store, id, &input),
        );
        let outcome = tokio::time::timeout(deadline, call).await;
        let given = std::mem::take(&mut *ready.given.lock().unwrap_or_else(|e| e.into_inner()));
        let result = match outcome {
            Ok(Ok(text)) => {
                let mut pool = self.ready.lock().unwrap_or_else(|e| e.into_inner());
                if pool.len() < self.limits.pool {
                    pool.push(ready);
                }
                self.parse_result(entrypoint, text)
            }
            // The instance is dropped: its state after a failure is not trusted.
            Ok(Err(e)) => Err(self.eval_error(entrypoint, self.failure(&ready, &e))),
            Err(_) => Err(self.eval_error(
                entrypoint,
                format!("deadline of {} ms exceeded", self.limits.deadline_ms),
            )),
        };
        (result, given)
    }

    /// Module-chosen text (an `opa_abort` message, say) is cut to one bounded line.
    fn eval_error(&self, entrypoint: &str, message: String) -> PolicyError {
        PolicyError::Eval {
            entrypoint: entrypoint.to_string(),
            message: crate::plugin::Fault::text(message),
        }
    }

    /// The result set of `text`, refused when longer than the limit.
    fn parse_result(
        &self,
        entrypoint: &str,
        text: Box<serde_json::value::RawValue>,
    ) -> Result<ResultSet, PolicyError> {
        let len = text.get().len();
        if len > self.limits.max_result_bytes {
            return Err(self.eval_error(
                entrypoint,
                format!(
                    "the result is {len} bytes of JSON, over the limit of {}",
                    self.limits.max_result_bytes
                ),
            ));
        }
        Ok(ResultSet::new(text))
    }

    /// Why an evaluation failed, in the policy author's terms.
    fn failure(&self, ready: &Ready, e: &anyhow::Error) -> String {
        if ready.store.data().exceeded {
            return format!("memory limit of {} MiB hit", self.limits.memory_mib);
        }
        if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return format!("deadline of {} ms exceeded", self.limits.deadline_ms);
        }
        // The module reports a Rego error through `opa_abort`; the wasm backtrace wrapped around
        // it says nothing to a policy's author (it goes to the debug log).
        if let Some(backtrace) = e.downcast_ref::<wasmtime::WasmBacktrace>() {
            tracing::debug!(%backtrace, "policy evaluation failed");
            if trapped_in_a_javascript_stand_in(backtrace) {
                return "the policy asked for the machine's local time zone (`\"Local\"`), which \
                        the sandbox does not have: name a zone, e.g. `\"UTC\"`"
                    .into();
            }
            return e.root_cause().to_string();
        }
        format!("{e:#}")
    }
}

/// The input of one evaluation: a value, or none at all (the module is handed `null`, which the
/// engine's entrypoint without an input does not read).
enum Input<'a, I: ?Sized> {
    Given(&'a I),
    Undefined,
}

impl<I: serde::Serialize + ?Sized> serde::Serialize for Input<'_, I> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Input::Given(input) => input.serialize(serializer),
            Input::Undefined => serializer.serialize_unit(),
        }
    }
}

/// Whether the evaluation trapped in one of the functions that stand in for the JavaScript
/// imports of regorus's date library (`pack`): they keep the imports' names, all wasm-bindgen's
/// (`wasm_bindgen::__wbindgen_describe`, `__wbg_getTimezoneOffset_...`), and only the machine's
/// local time zone reaches them.
fn trapped_in_a_javascript_stand_in(backtrace: &wasmtime::WasmBacktrace) -> bool {
    backtrace
        .frames()
        .first()
        .and_then(|frame| frame.func_name())
        .is_some_and(|name| name.contains("wbindgen") || name.contains("__wbg"))
}

/// The active policy of a host, swapped atomically on reload: a decision takes the current
/// policy when it starts and finishes on it, whatever is swapped in meanwhile.
#[derive(Debug)]
pub struct PolicySlot {
    current: std::sync::RwLock<Arc<LoadedPolicy>>,
    /// Held across a swap's record and the swap: swaps take turns, decisions never wait on it.
    swaps: std::sync::Mutex<()>,
}

impl PolicySlot {
    /// A slot holding `policy`.
    pub fn new(policy: Arc<LoadedPolicy>) -> Self {
        Self {
            current: std::sync::RwLock::new(policy),
            swaps: std::sync::Mutex::new(()),
        }
    }

    /// The policy decisions should use now.
    pub fn current(&self) -> Arc<LoadedPolicy> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Installs `next` once `record` (shown the policy it replaces) succeeded, and returns the
    /// one replaced (still usable by decisions in flight); when `record` fails nothing changes.
    /// Swaps take turns, each recorded and made before the next is recorded, so records of
    /// swaps come in the order the swaps took effect.
    pub fn swap_after<E>(
        &self,
        next: Arc<LoadedPolicy>,
        record: impl FnOnce(&LoadedPolicy) -> Result<(), E>,
    ) -> Result<Arc<LoadedPolicy>, E> {
        let _turn = self.swaps.lock().unwrap_or_else(|e| e.into_inner());
        record(&self.current())?;
        let mut slot = self.current.write().unwrap_or_else(|e| e.into_inner());
        tracing::info!(
            from = slot.revision(),
            to = next.revision(),
            "policy swapped"
        );
        Ok(std::mem::replace(&mut *slot, next))
    }
}

/// Allow and reasons of a result set (a boolean rule, or an object with `allow` and `reasons`).
/// Only a boolean `true` allows: an error (fail closed, its text the reason), an undefined
/// decision, a result set that is not exactly one result, or an `allow` that is not a boolean
/// all deny, each with a reason saying so. Read from the result set's text, never through a
/// number type.
pub fn verdict(result: &Result<ResultSet, PolicyError>) -> (bool, Vec<String>) {
    match result {
        Err(e) => (false, vec![e.to_string()]),
        Ok(set) => set.verdict(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reported by the conformance suite's two workers: loads that missed the kept modules at
    /// once each compiled the engine module (a minute each in a debug build). Now the second
    /// waits for the first and finds the module kept. Before the fix both came back `Disabled`
    /// (compiled, with no disk cache).
    #[test]
    fn loads_that_miss_at_once_compile_the_module_once() {
        let mut config = crate::HostConfig::new(crate::cluster::Cluster::uniform(1, 1, 1, 1));
        config.cache_dir = None;
        let host = crate::Host::new(config).unwrap();
        let loader = host.policy_loader();
        // The smallest module: what is compiled does not matter, only how often.
        let wasm = b"\0asm\x01\0\0\0".to_vec();
        let (a, b) = crate::blocking::block_on(async {
            tokio::join!(loader.module(&wasm), loader.module(&wasm))
        });
        let mut outcomes = [a.unwrap().1, b.unwrap().1];
        outcomes.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(outcomes, [CacheOutcome::Disabled, CacheOutcome::Hit]);
    }

    /// What a hand-made OPA-ABI module (ABI 1.2, with the `opa_eval` fast path) does.
    struct Abi<'a> {
        /// What `opa_heap_ptr_get` answers.
        heap: i32,
        /// The result set `opa_eval` returns, as JSON text.
        result: &'a str,
        /// Whether `opa_eval` first calls the host's `time.add_date(0, 2^31 - 1, 0, 0)`.
        add_date: bool,
    }

    /// A module following OPA's Wasm ABI with one entrypoint, `main`, that answers `abi.result`
    /// whatever it is asked: what `opa build -t wasm` writes, reduced to constants.
    fn opa_abi_module(abi: &Abi) -> Vec<u8> {
        use wasm_encoder::{
            CodeSection, ConstExpr, DataSection, EntityType, ExportKind, ExportSection, Function,
            FunctionSection, GlobalSection, GlobalType, ImportSection, Instruction as I,
            MemoryType, Module, TypeSection, ValType::I32,
        };
        const RESULT: i32 = 1024;
        let mut types = TypeSection::new();
        for (params, results) in [
            (0, 1), // 0: () -> i32
            (1, 1), // 1: (i32) -> i32
            (2, 0), // 2: (i32, i32)
            (1, 0), // 3: (i32)
            (2, 1), // 4: (i32, i32) -> i32
            (7, 1), // 5: opa_eval
            (6, 1), // 6: opa_builtin4
        ] {
            types.ty().function(vec![I32; params], vec![I32; results]);
        }
        let mut imports = ImportSection::new();
        let memory = MemoryType {
            minimum: 4,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        };
        imports.import("env", "memory", EntityType::Memory(memory));
        imports.import("env", "opa_builtin4", EntityType::Function(6));
        let constant = |v: i32| vec![I::I32Const(v)];
        let builtin_call = if abi.add_date {
            vec![
                I::I32Const(0),
                I::I32Const(0),
                I::I32Const(128),
                I::I32Const(136),
                I::I32Const(128),
                I::I32Const(128),
                I::Call(0),
                I::Drop,
                I::I32Const(RESULT),
            ]
        } else {
            constant(RESULT)
        };
        let bodies: Vec<(&str, u32, Vec<I>)> = vec![
            ("builtins", 0, constant(0)),
            ("entrypoints", 0, constant(64)),
            ("opa_eval_ctx_new", 0, constant(0)),
            ("eval", 1, constant(0)),
            ("opa_eval_ctx_set_input", 2, vec![]),
            ("opa_eval_ctx_set_data", 2, vec![]),
            ("opa_eval_ctx_set_entrypoint", 2, vec![]),
            ("opa_eval_ctx_get_result", 1, constant(RESULT)),
            ("opa_malloc", 1, constant(4096)),
            ("opa_free", 3, vec![]),
            ("opa_json_parse", 4, constant(0)),
            ("opa_json_dump", 1, vec![I::LocalGet(0)]),
            ("opa_heap_ptr_set", 3, vec![]),
            ("opa_heap_ptr_get", 0, constant(abi.heap)),
            ("opa_eval", 5, builtin_call),
        ];
        let (mut functions, mut code, mut exports) = (
            FunctionSection::new(),
            CodeSection::new(),
            ExportSection::new(),
        );
        for (index, (name, ty, body)) in bodies.iter().enumerate() {
            functions.function(*ty);
            let mut f = Function::new([]);
            for instruction in body {
                f.instruction(instruction);
            }
            f.instruction(&I::End);
            code.function(&f);
            exports.export(name, ExportKind::Func, index as u32 + 1);
        }
        let mut globals = GlobalSection::new();
        for (index, (name, value)) in [
            ("opa_wasm_abi_version", 1),
            ("opa_wasm_abi_minor_version", 2),
        ]
        .into_iter()
        .enumerate()
        {
            let ty = GlobalType {
                val_type: I32,
                mutable: false,
                shared: false,
            };
            globals.global(ty, &ConstExpr::i32_const(value));
            exports.export(name, ExportKind::Global, index as u32);
        }
        let builtins: &[u8] = if abi.add_date {
            b"{\"time.add_date\":0}\0"
        } else {
            b"{}\0"
        };
        let mut data = DataSection::new();
        for (at, bytes) in [
            (0, builtins.to_vec()),
            (64, b"{\"main\":0}\0".to_vec()),
            (128, b"0\0".to_vec()),
            (136, b"2147483647\0".to_vec()),
            (RESULT, [abi.result.as_bytes(), b"\0"].concat()),
        ] {
            data.active(0, &ConstExpr::i32_const(at), bytes);
        }
        let mut module = Module::new();
        module
            .section(&types)
            .section(&imports)
            .section(&functions)
            .section(&globals)
            .section(&exports)
            .section(&code)
            .section(&data);
        module.finish()
    }

    /// Loads `wasm` as a bundle with empty data on a fresh host, within `limits`.
    fn load(
        wasm: Vec<u8>,
        limits: PolicyLimits,
        compile: Option<crate::plugin::compile::CompileLimits>,
    ) -> Result<Arc<LoadedPolicy>, PolicyError> {
        let mut config = crate::HostConfig::new(crate::cluster::Cluster::uniform(1, 1, 1, 1));
        config.cache_dir = None;
        if let Some(compile) = compile {
            config.compile = compile;
        }
        let host = crate::Host::new(config).unwrap();
        let bundle = Bundle {
            wasm,
            data: serde_json::json!({}),
            manifest: serde_json::json!({}),
            signatures: None,
        };
        crate::blocking::block_on(host.policy_loader().load(bundle, limits))
    }

    fn evaluate(policy: &LoadedPolicy) -> Result<serde_json::Value, PolicyError> {
        crate::blocking::block_on(policy.evaluate("main", &serde_json::json!({"a": 1})))
            .map(|set| set.to_json().unwrap())
    }

    /// The module this test builds answers as OPA's do: the fixtures below differ from it in
    /// one thing each.
    #[test]
    fn a_hand_made_opa_abi_module_decides() {
        let abi = Abi {
            heap: 8192,
            result: r#"[{"result":true}]"#,
            add_date: false,
        };
        let policy = load(opa_abi_module(&abi), PolicyLimits::default(), None).unwrap();
        assert_eq!(
            evaluate(&policy).unwrap(),
            serde_json::json!([{"result": true}])
        );
    }

    /// Reported by a review: opa-wasm panics on what a module gives it (a heap pointer near
    /// `i32::MAX`; `time.add_date` with a year past chrono's range, which any request field
    /// passed to it reaches), and the panic took the thread serving the request: every request
    /// to a daemon with such a policy lost its connection, restarts included. Each is now that
    /// evaluation's error, a denial, and the policy goes on deciding.
    #[test]
    fn a_module_that_makes_the_policy_runtime_panic_fails_that_decision_alone() {
        for (abi, what) in [
            (
                Abi {
                    heap: i32::MAX,
                    result: r#"[{"result":true}]"#,
                    add_date: false,
                },
                "heap pointer",
            ),
            (
                Abi {
                    heap: 8192,
                    result: r#"[{"result":true}]"#,
                    add_date: true,
                },
                "time.add_date",
            ),
        ] {
            let policy = load(opa_abi_module(&abi), PolicyLimits::default(), None).unwrap();
            for _ in 0..2 {
                let e = evaluate(&policy).unwrap_err().to_string();
                assert!(e.contains("the policy engine failed"), "{what}: {e}");
                assert!(!verdict(&Err(PolicyError::Module(e))).0);
            }
        }
    }

    /// Reported by a review: a result set was parsed into values whatever its size (256 MiB of
    /// `[0,0,...]` took 4.7 GB and 10 s, outside the module's memory cap and deadline). Its
    /// text is measured first now.
    #[test]
    fn a_result_set_over_the_limit_is_refused_before_it_is_parsed() {
        let abi = Abi {
            heap: 8192,
            result: r#"[{"result":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}]"#,
            add_date: false,
        };
        let limits = PolicyLimits {
            max_result_bytes: 32,
            ..PolicyLimits::default()
        };
        let policy = load(opa_abi_module(&abi), limits, None).unwrap();
        let e = evaluate(&policy).unwrap_err().to_string();
        assert!(
            e.contains("the result is 46 bytes of JSON, over the limit of 32"),
            "{e}"
        );
        let roomy = PolicyLimits {
            max_result_bytes: 46,
            ..PolicyLimits::default()
        };
        let policy = load(opa_abi_module(&abi), roomy, None).unwrap();
        assert!(evaluate(&policy).is_ok());
    }

    /// Reported by a review: uploaded policy modules were compiled with no bounds (a 60 MB
    /// module compiled for minutes at 3.5 GB, holding the compile slot every plugin upload
    /// waits for). They are measured first now, like plugins; the engine the binary ships
    /// still loads whatever the bounds.
    #[test]
    fn policy_modules_are_bounded_before_compiling_except_the_shipped_engine() {
        let tight = crate::plugin::compile::CompileLimits {
            max_function_bytes: 8,
            ..crate::plugin::compile::CompileLimits::default()
        };
        let abi = Abi {
            heap: 8192,
            result: r#"[{"result":true}]"#,
            add_date: true,
        };
        let e = load(opa_abi_module(&abi), PolicyLimits::default(), Some(tight))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("refused before compiling: bytes in one function"),
            "{e}"
        );
        // Compiling the engine takes a minute in a debug build: the choice of bounds is checked.
        let mut config = crate::HostConfig::new(crate::cluster::Cluster::uniform(1, 1, 1, 1));
        config.compile = tight;
        config.cache_dir = None;
        let loader = crate::Host::new(config).unwrap().policy_loader();
        let engine = crate::policy::engine_module().unwrap();
        assert_eq!(
            loader.compile_limits(engine),
            crate::plugin::compile::CompileLimits::trusted()
        );
        assert_eq!(loader.compile_limits(&engine[1..]), tight);
    }

    fn of(set: serde_json::Value) -> (bool, Vec<String>) {
        verdict(&Ok(ResultSet::new(
            serde_json::value::to_raw_value(&set).unwrap(),
        )))
    }

    #[test]
    fn only_a_boolean_true_allows() {
        use serde_json::json;
        assert_eq!(of(json!([{"result": true}])), (true, vec![]));
        assert_eq!(
            of(json!([{"result": {"allow": true, "reasons": []}}])),
            (true, vec![])
        );
        let denied = [
            json!([{"result": false}]),
            json!([{"result": {"allow": false, "reasons": ["no"]}}]),
            json!([]),
            json!([{"result": "true"}]),
            json!([{"result": {"allow": "true"}}]),
            json!([{"result": {"allow": 1}}]),
            json!([{"result": [true]}]),
            json!([{"result": null}]),
            json!([{"result": true}, {"result": true}]),
            json!({"result": true}),
            json!(true),
        ];
        for set in denied {
            let (allow, reasons) = of(set.clone());
            assert!(!allow, "{set} allowed");
            if set != json!([{"result": false}]) {
                assert!(!reasons.is_empty(), "{set}: a denial without a reason");
            }
        }
        let err = PolicyError::Eval {
            entrypoint: "a/b".into(),
            message: "p.rego:3:1: complete rules must not produce multiple outputs".into(),
        };
        let (allow, reasons) = verdict(&Err(err));
        assert!(!allow);
        assert!(reasons[0].contains("multiple outputs"), "{reasons:?}");
    }
}
