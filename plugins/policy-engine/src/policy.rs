//! A packed policy and its evaluation, independent of the ABI.

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::{Program, RegoVM};
use regorus::{Engine, PolicyModule, Value};
use std::sync::Arc;

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

    /// Compiles every entrypoint against `data` (the data a host loads) into a program for
    /// regorus's register VM, for fast evaluation.
    pub fn compile(&self, data: &Value) -> Result<Vec<Compiled>, PolicyError> {
        self.entrypoints
            .iter()
            .map(|e| {
                let rule = rule_of(e);
                let policy = regorus::compile_policy_with_entrypoint(
                    data.clone(),
                    &self.modules,
                    rule.as_str().into(),
                )
                .map_err(|err| error(e, err))?;
                let program = Compiler::compile_from_policy(&policy, &[rule.as_str()])
                    .map_err(|err| error(e, err))?;
                Ok(Compiled {
                    program,
                    rule,
                    data: data.clone(),
                })
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

/// An entrypoint compiled for regorus's register VM, with the data it was compiled for.
pub struct Compiled {
    program: Arc<Program>,
    rule: String,
    data: Value,
}

/// Evaluates a compiled entrypoint. Each evaluation gets a fresh VM: nothing allocated while
/// evaluating outlives it, which the ABI's heap resets require (and costs about 1 µs).
pub fn evaluate_compiled(compiled: &Compiled, input: Value) -> Result<String, PolicyError> {
    let mut vm = RegoVM::new();
    // No instruction cap of the VM's own (25,000 by default, too few for policies that walk
    // their data): the host bounds every evaluation by its deadline and memory limit instead.
    vm.set_max_instructions(usize::MAX);
    vm.load_program(compiled.program.clone());
    vm.set_data(compiled.data.clone())
        .map_err(|e| error("data", e))?;
    vm.set_input(input);
    let value = vm
        .execute_entry_point_by_name(&compiled.rule)
        .map_err(|e| error(&compiled.rule, e))?;
    result_set(value)
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
        "modules": {"p.rego": "package demo\nimport rego.v1\ndefault allow := false\nallow if input.user in data.admins\nreasons contains \"not an admin\" if not allow\nmaybe if input.x == 1\n"},
        "entrypoints": ["demo/allow", "demo/reasons", "demo/maybe"],
        "data": {"admins": ["ada"]}
    }"#;

    #[test]
    fn evaluates_entrypoints_as_result_sets() {
        let p = Policy::from_json(PACKED).unwrap();
        assert_eq!(
            p.entrypoints(),
            ["demo/allow", "demo/reasons", "demo/maybe"]
        );
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
        // An undefined rule is an empty result set on both paths.
        assert_eq!(evaluate_compiled(&compiled[2], input("bob")).unwrap(), "[]");
        assert_eq!(p.evaluate(2, &data, input("bob")).unwrap(), "[]");
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
