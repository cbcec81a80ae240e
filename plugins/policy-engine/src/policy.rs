//! A packed policy and its evaluation, independent of the ABI.

use regorus::{CompiledPolicy, Engine, PolicyModule, Value};

/// What the packer writes into the module: the Rego modules, the entrypoints in ABI order, and the
/// data the policy was built with.
///
/// As JSON: `{"modules": {"authz.rego": "package ..."}, "entrypoints": ["gantry/authz/allow"],
/// "data": {...}}`. An entrypoint `a/b/c` evaluates the rule `data.a.b.c`, as with `opa build -e`.
pub struct Policy {
    modules: Vec<PolicyModule>,
    entrypoints: Vec<String>,
    engine: Engine,
}

/// Why a policy could not be loaded or evaluated; the ABI turns it into `opa_abort`.
#[derive(Debug)]
pub struct PolicyError(pub String);

impl core::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

fn error(context: &str, e: impl core::fmt::Display) -> PolicyError {
    PolicyError(format!("{context}: {e}"))
}

/// The rule an entrypoint evaluates: `gantry/authz/allow` -> `data.gantry.authz.allow`.
pub fn rule_of(entrypoint: &str) -> String {
    format!("data.{}", entrypoint.trim_matches('/').replace('/', "."))
}

impl Policy {
    /// Parses the packed description and the Rego it holds.
    pub fn from_json(packed: &str) -> Result<Self, PolicyError> {
        let doc: serde_json::Value =
            serde_json::from_str(packed).map_err(|e| error("packed policy", e))?;
        let modules: Vec<PolicyModule> = doc["modules"]
            .as_object()
            .ok_or_else(|| PolicyError("packed policy: `modules` is not an object".into()))?
            .iter()
            .map(|(id, content)| {
                content
                    .as_str()
                    .map(|c| PolicyModule {
                        id: id.as_str().into(),
                        content: c.into(),
                    })
                    .ok_or_else(|| PolicyError(format!("packed policy: module `{id}` is not text")))
            })
            .collect::<Result<_, _>>()?;
        let entrypoints: Vec<String> = doc["entrypoints"]
            .as_array()
            .ok_or_else(|| PolicyError("packed policy: `entrypoints` is not a list".into()))?
            .iter()
            .map(|e| e.as_str().map(String::from))
            .collect::<Option<_>>()
            .ok_or_else(|| PolicyError("packed policy: an entrypoint is not text".into()))?;
        let mut engine = Engine::new();
        for m in &modules {
            engine
                .add_policy(m.id.to_string(), m.content.to_string())
                .map_err(|e| error(&m.id, e))?;
        }
        let data = Value::from_json_str(&doc["data"].to_string()).map_err(|e| error("data", e))?;
        if data.as_object().is_ok_and(|o| !o.is_empty()) {
            engine.add_data(data).map_err(|e| error("data", e))?;
        }
        Ok(Self {
            modules,
            entrypoints,
            engine,
        })
    }

    /// The entrypoints, in ABI order (their position is their id).
    pub fn entrypoints(&self) -> &[String] {
        &self.entrypoints
    }

    /// Compiles every entrypoint against `data` (the data a host loads), for fast evaluation.
    pub fn compile(&self, data: &Value) -> Result<Vec<CompiledPolicy>, PolicyError> {
        self.entrypoints
            .iter()
            .map(|e| {
                regorus::compile_policy_with_entrypoint(
                    data.clone(),
                    &self.modules,
                    rule_of(e).into(),
                )
                .map_err(|err| error(e, err))
            })
            .collect()
    }

    /// Evaluates entrypoint `entry` with `data` and `input` without a compiled form.
    pub fn evaluate(
        &self,
        entry: usize,
        data: &Value,
        input: Value,
    ) -> Result<String, PolicyError> {
        let name = self
            .entrypoints
            .get(entry)
            .ok_or_else(|| PolicyError(format!("no entrypoint {entry}")))?;
        let mut engine = self.engine.clone();
        if data.as_object().is_ok_and(|o| !o.is_empty()) {
            engine
                .add_data(data.clone())
                .map_err(|e| error("data", e))?;
        }
        engine.set_input(input);
        result_set(
            engine
                .eval_rule(rule_of(name))
                .map_err(|e| error(name, e))?,
        )
    }
}

/// Runs a small fixed policy through the interpreter and a few builtins, so that state regorus
/// builds on first use exists before the host snapshots the heap.
pub fn warm_up() {
    const WARM_UP: &str = "package gantry_warm_up\nx := sprintf(\"%v\", [count(sort([2, 1]))])\n";
    let mut engine = Engine::new();
    if engine
        .add_policy("warm_up.rego".into(), WARM_UP.into())
        .is_ok()
    {
        let _ = engine.eval_rule("data.gantry_warm_up.x".into());
    }
}

/// Evaluates a compiled entrypoint.
pub fn evaluate_compiled(compiled: &CompiledPolicy, input: Value) -> Result<String, PolicyError> {
    result_set(
        compiled
            .eval_with_input(input)
            .map_err(|e| error("eval", e))?,
    )
}

/// OPA's result set: `[{"result": value}]`, or `[]` when the rule is undefined.
fn result_set(value: Value) -> Result<String, PolicyError> {
    Ok(match value {
        Value::Undefined => "[]".into(),
        v => format!(
            "[{{\"result\":{}}}]",
            serde_json::to_string(&v).map_err(|e| error("result", e))?
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKED: &str = r#"{
        "modules": {"p.rego": "package demo\nimport rego.v1\ndefault allow := false\nallow if input.user in data.admins\nreasons contains \"not an admin\" if not allow\n"},
        "entrypoints": ["demo/allow", "demo/reasons"],
        "data": {"admins": ["ada"]}
    }"#;

    #[test]
    fn evaluates_entrypoints_as_result_sets() {
        let p = Policy::from_json(PACKED).unwrap();
        assert_eq!(p.entrypoints(), ["demo/allow", "demo/reasons"]);
        let data = Value::from_json_str(r#"{"admins": ["ada"]}"#).unwrap();
        let input = |u: &str| Value::from_json_str(&format!(r#"{{"user": "{u}"}}"#)).unwrap();
        assert_eq!(
            p.evaluate(0, &data, input("ada")).unwrap(),
            r#"[{"result":true}]"#
        );
        assert_eq!(
            p.evaluate(0, &data, input("bob")).unwrap(),
            r#"[{"result":false}]"#
        );
        let compiled = p.compile(&data).unwrap();
        assert_eq!(
            evaluate_compiled(&compiled[1], input("bob")).unwrap(),
            r#"[{"result":["not an admin"]}]"#
        );
        assert!(p.evaluate(7, &data, input("x")).is_err());
    }

    #[test]
    fn bad_rego_names_the_module() {
        let e = Policy::from_json(
            r#"{"modules": {"bad.rego": "package x\nallow if {"}, "entrypoints": [], "data": {}}"#,
        )
        .err()
        .unwrap();
        assert!(e.0.contains("bad.rego"), "{e}");
    }
}
