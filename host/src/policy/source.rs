//! A policy directory: `*.rego` modules (tests, `*_test.rego`, are kept apart) and an optional
//! `data.json`, read and parsed natively with `regorus` (see [`super::check`] for what a build
//! refuses).

use std::path::{Path, PathBuf};

use gantry_policy_engine::diagnostic::render;
use gantry_policy_engine::policy::POLICY_KEY;
use regorus::{Engine, Value};

use super::PolicyError;

/// The Rego and data of a policy directory.
#[derive(Debug, Clone)]
pub struct PolicySource {
    /// `(file name, text)` of each module, sorted by name.
    pub modules: Vec<(String, String)>,
    /// `(file name, text)` of each `*_test.rego` module.
    pub tests: Vec<(String, String)>,
    /// The contents of `data.json` (an empty object when absent).
    pub data: serde_json::Value,
    /// Whether a builtin error is an evaluation error (`true`, the default: the decision denies),
    /// or makes the expression undefined (`false`, OPA's default). `gantry policy test` and
    /// `build` take it from `--strict`; the bundle carries it to the module.
    pub strict: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PolicyError + '_ {
    move |error| PolicyError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Every number of `data.json` survives the host's 64-bit JSON reader unchanged (see
/// `gantry_policy_engine::json::check_carried_exactly`): the data a policy sees in the sandbox is
/// the data written, as `policy test` and OPA see it.
pub(crate) fn check_numbers(text: &str, file: &str) -> Result<(), PolicyError> {
    gantry_policy_engine::json::check_carried_exactly(text)
        .map_err(|e| PolicyError::Source(format!("{file}: {e}")))
}

/// The top level of `data.json` is an object without the key the bundle's policy travels under.
pub(crate) fn check_data(data: &serde_json::Value, file: &str) -> Result<(), PolicyError> {
    match data.as_object() {
        None => Err(PolicyError::Source(format!(
            "{file}: the top level must be a JSON object"
        ))),
        Some(fields) if fields.contains_key(POLICY_KEY) => Err(PolicyError::Source(format!(
            "{file}: the key `{POLICY_KEY}` is reserved (a bundle carries its policy under it)"
        ))),
        Some(_) => Ok(()),
    }
}

impl PolicySource {
    /// Reads `dir`.
    pub fn read(dir: &Path) -> Result<Self, PolicyError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rego"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(PolicyError::Source(format!(
                "{}: no .rego files",
                dir.display()
            )));
        }
        let mut modules = Vec::new();
        let mut tests = Vec::new();
        for path in files {
            let text = crate::plugin::files::read_text(&path).map_err(io(&path))?;
            let name = path.display().to_string();
            if name.ends_with("_test.rego") {
                tests.push((name, text));
            } else {
                modules.push((name, text));
            }
        }
        let data_path = dir.join("data.json");
        let data = if data_path.exists() {
            let text = crate::plugin::files::read_text(&data_path).map_err(io(&data_path))?;
            let data: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                PolicyError::Source(format!(
                    "{}:{}:{}: {e}",
                    data_path.display(),
                    e.line(),
                    e.column()
                ))
            })?;
            check_data(&data, &data_path.display().to_string())?;
            check_numbers(&text, &data_path.display().to_string())?;
            data
        } else {
            serde_json::json!({})
        };
        Ok(Self {
            modules,
            tests,
            data,
            strict: true,
        })
    }

    /// A source from text already in memory (the shipped policy, for example).
    pub fn from_parts(modules: &[(&str, &str)], data_json: &str) -> Result<Self, PolicyError> {
        let data: serde_json::Value = serde_json::from_str(data_json).map_err(|e| {
            PolicyError::Source(format!("data.json:{}:{}: {e}", e.line(), e.column()))
        })?;
        check_data(&data, "data.json")?;
        check_numbers(data_json, "data.json")?;
        Ok(Self {
            modules: modules
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
            tests: Vec::new(),
            data,
            strict: true,
        })
    }

    /// `data.json` as a regorus value.
    pub fn data_value(&self) -> Result<Value, PolicyError> {
        Value::from_json_str(&self.data.to_string())
            .map_err(|e| PolicyError::Source(format!("data.json: {e}")))
    }

    /// The (non-test) modules as regorus compiles them.
    pub fn policy_modules(&self) -> Vec<regorus::PolicyModule> {
        self.modules
            .iter()
            .map(|(n, t)| regorus::PolicyModule {
                id: n.as_str().into(),
                content: t.as_str().into(),
            })
            .collect()
    }

    /// A native `regorus` engine with the modules (and, with `tests`, the test modules) and the
    /// data loaded; Rego errors name the file, line and column.
    pub fn engine(&self, tests: bool) -> Result<Engine, PolicyError> {
        let mut engine = gantry_policy_engine::policy::engine(self.strict, &native_host());
        let extra = if tests { &self.tests[..] } else { &[] };
        for (name, text) in self.modules.iter().chain(extra) {
            engine
                .add_policy(name.clone(), text.clone())
                .map_err(|e| PolicyError::Source(render(&e.to_string())))?;
        }
        // What the engine module refuses at load beyond parsing, refused by `policy test` too.
        gantry_policy_engine::policy::check_modules(engine.get_modules())
            .map_err(|e| PolicyError::Source(e.to_string()))?;
        engine
            .add_data(self.data_value()?)
            .map_err(|e| PolicyError::Source(format!("data.json: {e}")))?;
        Ok(engine)
    }

    /// The policy as the engine module reads it (see `plugins/policy-engine/src/policy.rs`):
    /// `{"modules": {..}, "entrypoints": [..], "strict": bool}`.
    pub fn policy_description(&self, entrypoints: &[String]) -> serde_json::Value {
        let modules: serde_json::Map<String, serde_json::Value> = self
            .modules
            .iter()
            .map(|(n, t)| (n.clone(), serde_json::Value::from(t.as_str())))
            .collect();
        serde_json::json!({ "modules": modules, "entrypoints": entrypoints, "strict": self.strict })
    }

    /// A bundle's `data.json`: the data, and the policy under its reserved key.
    pub fn bundle_data(&self, entrypoints: &[String]) -> serde_json::Value {
        let mut data = self.data.clone();
        if let Some(fields) = data.as_object_mut() {
            fields.insert(POLICY_KEY.into(), self.policy_description(entrypoints));
        }
        data
    }
}

pub use gantry_policy_engine::policy::rule_of;

/// The host builtins for a policy run natively (`policy test`, `policy build`'s load): the clock
/// read once, when this is called (so one value for a whole test run), and draws from the
/// operating system's generator, one per key and bound for as long as this host lives.
pub fn native_host() -> gantry_policy_engine::policy::Host {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let drawn: Arc<Mutex<HashMap<(String, i64), i64>>> = Arc::default();
    gantry_policy_engine::policy::Host {
        now_ns: Arc::new(move || Ok(now)),
        intn: Arc::new(move |key: &str, n: i64| {
            let mut drawn = drawn.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = drawn.get(&(key.to_string(), n)) {
                return Ok(*v);
            }
            if drawn.len() >= gantry_policy_engine::host_builtins::MAX_DRAWS {
                return Err(format!(
                    "rand.intn: over {} distinct draws",
                    gantry_policy_engine::host_builtins::MAX_DRAWS
                ));
            }
            let v = draw_below(n)?;
            drawn.insert((key.to_string(), n), v);
            Ok(v)
        }),
    }
}

/// A uniform draw from `0..n` (`n > 0`) from the operating system's generator, by rejection.
fn draw_below(n: i64) -> Result<i64, String> {
    let n = u64::try_from(n).map_err(|_| format!("rand.intn: bound {n} is not positive"))?;
    let zone = u64::MAX - u64::MAX % n;
    loop {
        let mut bytes = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| "rand.intn: the operating system gave no random bytes".to_string())?;
        let x = u64::from_le_bytes(bytes);
        if x < zone {
            return Ok(i64::try_from(x % n).unwrap_or(0));
        }
    }
}
