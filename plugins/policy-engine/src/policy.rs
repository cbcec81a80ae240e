//! A packed policy and its evaluation, independent of the ABI.
//!
//! Every entrypoint is evaluated by regorus's interpreter, the engine `gantry policy test` runs
//! and `gantry policy build` checks with: what a policy's tests see is what the sandbox decides.
//! In particular an evaluation error (a complete rule or a function with several values, a
//! builtin error, ...) is an error here too, never a value, so the host denies. regorus's
//! register VM is faster but decides some of those cases differently (a conflicting complete rule
//! keeps one of its values, errors inside a rule body make the body fail instead of the
//! evaluation): see README.md, "Access-control policies".

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use alloc::collections::BTreeMap;

use regorus::unstable::{Module, Ref, Rule, Span};
use regorus::utils::get_path_string;
use regorus::{Engine, PolicyModule, Value};

use crate::diagnostic;
use crate::host_builtins;
pub use crate::host_builtins::Host;

/// The key of a bundle's `data.json` that carries the policy to the module: the module's code is
/// the same for every policy (so hosts compile it once), and the policy arrives with the data.
/// A `$` key cannot be reached with Rego's dot syntax, and the module removes it from the data
/// the policy sees.
pub const POLICY_KEY: &str = "$gantry";

/// The most entrypoints a policy may have. The module declares the ids `"0"`..`"255"` before
/// it sees the policy (OPA's ABI asks for the entrypoints before the data), and the host maps
/// each entrypoint's name to its position.
pub const MAX_ENTRYPOINTS: usize = 256;

/// The policy a bundle carries under [`POLICY_KEY`]: the Rego modules and the entrypoints in ABI
/// order.
///
/// As JSON: `{"modules": {"authz.rego": "package ..."}, "entrypoints": ["gantry/authz/allow"],
/// "strict": true}`. An entrypoint `a/b/c` evaluates the rule `data.a.b.c`, as with
/// `opa build -e`. `strict` (default `true`): a builtin error is an evaluation error, as OPA's
/// `--strict-builtin-errors`; `false` makes the expression undefined, as OPA's default.
pub struct Policy {
    /// The modules, parsed once; each entrypoint is compiled from a copy.
    engine: Engine,
    entrypoints: Vec<String>,
    strict: bool,
}

/// Why a policy could not be loaded or evaluated; the ABI turns it into `opa_abort`.
#[derive(Debug)]
pub struct PolicyError(pub String);

impl core::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `context: cause` on one line, regorus's location blocks as `file:line:col: message`.
fn error(context: &str, e: impl core::fmt::Display) -> PolicyError {
    PolicyError(alloc::format!(
        "{context}: {}",
        diagnostic::one_line(&e.to_string())
    ))
}

/// A regorus engine set up as every Gantry path uses one (the module, `policy test`, `policy
/// build`'s checks): builtin errors as `strict` says, lines as long as OPA accepts them
/// (regorus stops at 1,024 columns by default; policies inline certificates and tokens), and the
/// clock and entropy from `host` ([`host_builtins`]).
pub fn engine(strict: bool, host: &Host) -> Engine {
    let mut engine = Engine::new();
    if let Err(e) = host_builtins::register(&mut engine, host, strict) {
        // Only a name registered twice fails, and each is registered once on a new engine.
        unreachable!("host builtins: {e}");
    }
    if let Err(e) = crate::go_builtins::register(&mut engine, strict, &host.now_ns) {
        unreachable!("Go's builtins: {e}");
    }
    engine.set_strict_builtin_errors(strict);
    engine.set_policy_length_config(regorus::utils::limits::PolicyLengthConfig {
        max_col: core::num::NonZeroU32::new(1 << 20).unwrap_or(core::num::NonZeroU32::MIN),
        ..Default::default()
    });
    engine
}

/// The name a module gives entrypoint `id` evaluated without an input; its id is
/// `id + MAX_ENTRYPOINTS`.
pub fn without_input_name(id: usize) -> String {
    alloc::format!("{id} without input")
}

/// The entrypoint an id of the second set names (evaluated without an input), or `None` for an
/// id of the first set.
pub fn without_input(id: usize) -> Option<usize> {
    (MAX_ENTRYPOINTS..2 * MAX_ENTRYPOINTS)
        .contains(&id)
        .then(|| id - MAX_ENTRYPOINTS)
}

/// The rule an entrypoint evaluates: `gantry/authz/allow` -> `data.gantry.authz.allow`.
pub fn rule_of(entrypoint: &str) -> String {
    alloc::format!("data.{}", entrypoint.trim_matches('/').replace('/', "."))
}

impl Policy {
    /// Parses the description and the Rego it holds; the policy's clock and entropy come from
    /// `host`.
    pub fn from_json(packed: &str, host: &Host) -> Result<Self, PolicyError> {
        let doc: serde_json::Value = serde_json::from_str(packed)
            .map_err(|e| error("the bundle's policy (`$gantry`)", e))?;
        let modules: Vec<PolicyModule> = doc["modules"]
            .as_object()
            .ok_or_else(|| PolicyError("the bundle's policy: `modules` is not an object".into()))?
            .iter()
            .map(|(id, content)| {
                content
                    .as_str()
                    .map(|c| PolicyModule {
                        id: id.as_str().into(),
                        content: c.into(),
                    })
                    .ok_or_else(|| {
                        PolicyError(alloc::format!(
                            "the bundle's policy: module `{id}` is not text"
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        let entrypoints: Vec<String> = doc["entrypoints"]
            .as_array()
            .ok_or_else(|| PolicyError("the bundle's policy: `entrypoints` is not a list".into()))?
            .iter()
            .map(|e| e.as_str().map(String::from))
            .collect::<Option<_>>()
            .ok_or_else(|| PolicyError("the bundle's policy: an entrypoint is not text".into()))?;
        let strict = match &doc["strict"] {
            serde_json::Value::Null => true,
            serde_json::Value::Bool(b) => *b,
            _ => {
                return Err(PolicyError(
                    "the bundle's policy: `strict` is not a boolean".into(),
                ));
            }
        };
        if entrypoints.len() > MAX_ENTRYPOINTS {
            return Err(PolicyError(alloc::format!(
                "the bundle's policy: {} entrypoints, over the most a module declares ({MAX_ENTRYPOINTS})",
                entrypoints.len()
            )));
        }
        // Every module must parse, whichever entrypoints reach it. Set up as
        // `regorus::compile_policy_with_entrypoint` does, but parsed once for every entrypoint.
        let mut engine = engine(strict, host);
        engine.set_gather_prints(true);
        for m in &modules {
            engine
                .add_policy(m.id.to_string(), m.content.to_string())
                .map_err(|e| error(&m.id, e))?;
        }
        check_modules(engine.get_modules())?;
        Ok(Self {
            engine,
            entrypoints,
            strict,
        })
    }

    /// Whether builtin errors are evaluation errors (see [`Policy`]).
    pub fn strict(&self) -> bool {
        self.strict
    }

    /// The entrypoints, in ABI order (their position is their id).
    pub fn entrypoints(&self) -> &[String] {
        &self.entrypoints
    }

    /// Compiles every entrypoint against `data` (the data a host loads), as `gantry policy build`
    /// does to check a policy before packing it.
    pub fn compile(&self, data: &Value) -> Result<Vec<Compiled>, PolicyError> {
        self.entrypoints
            .iter()
            .map(|e| self.compile_entrypoint(e, data))
            .collect()
    }

    /// Compiles one entrypoint against `data`; an error names the entrypoint.
    pub fn compile_entrypoint(
        &self,
        entrypoint: &str,
        data: &Value,
    ) -> Result<Compiled, PolicyError> {
        let fail = |err| error(&alloc::format!("entrypoint `{entrypoint}`"), err);
        let rule = rule_of(entrypoint);
        let mut engine = self.engine.clone();
        engine.add_data(data.clone()).map_err(fail)?;
        if self.is_package(&rule) {
            return Ok(Compiled {
                engine,
                rule,
                package: true,
            });
        }
        // Checks that the rule exists and prepares the engine (analysis, schedule) once, so each
        // evaluation's copy starts prepared.
        engine
            .compile_with_entrypoint(&rule.as_str().into())
            .map_err(fail)?;
        // Compiling may start the interpreter's settings afresh: the policy's setting stands.
        engine.set_strict_builtin_errors(self.strict);
        Ok(Compiled {
            engine,
            rule,
            package: false,
        })
    }

    /// Whether `path` (`data.a.b`) is a package of the policy or a prefix of packages.
    fn is_package(&self, path: &str) -> bool {
        let packages = self.engine.get_packages().unwrap_or_default();
        packages.iter().any(|p| {
            p == path
                || p.strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    }

    /// Evaluates entrypoint `entry` with `data` and `input`, compiling it for that data first.
    pub fn evaluate(
        &self,
        entry: usize,
        data: &Value,
        input: Value,
    ) -> Result<String, PolicyError> {
        let name = self
            .entrypoints
            .get(entry)
            .ok_or_else(|| PolicyError(alloc::format!("no entrypoint {entry}")))?;
        evaluate_compiled(&self.compile_entrypoint(name, data)?, input)
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

/// What the module refuses at load beyond parsing (`policy build` and `policy test` too): two
/// defaults for one rule ([`one_default_per_rule`]), a constant pattern Go would not compile
/// ([`constant_patterns_compile`]).
pub fn check_modules(modules: &[Ref<Module>]) -> Result<(), PolicyError> {
    one_default_per_rule(modules)?;
    constant_patterns_compile(modules)
}

/// `file:line:col` of `span`.
fn location(span: &Span) -> String {
    let here = diagnostic::parse(&span.message("error", "here"))
        .into_iter()
        .next()
        .map(|d| d.headline())
        .unwrap_or_default();
    here.strip_suffix(": here").unwrap_or(&here).to_string()
}

/// Refuses a `regex.*` call whose pattern is a string literal Go would not compile: every
/// evaluation of it would be an error (undefined under non-strict builtin errors, so a deny rule
/// using it would never fire), a mistake better named at build than found in production. The
/// patterns are found by token, as written: `regex.match("...", ...)`, and the second operand of
/// `regex.replace`.
pub fn constant_patterns_compile(modules: &[Ref<Module>]) -> Result<(), PolicyError> {
    use regorus::unstable::{Lexer, Token, TokenKind};
    for module in modules {
        let source = &module.package.span.source;
        let mut lexer = Lexer::new(source);
        lexer
            .set_max_col(core::num::NonZeroU32::new(1 << 20).unwrap_or(core::num::NonZeroU32::MIN));
        let mut tokens: Vec<Token> = Vec::new();
        while let Ok(t) = lexer.next_token() {
            if matches!(t.0, TokenKind::Eof) {
                break;
            }
            tokens.push(t);
        }
        let is = |t: Option<&Token>, kind: fn(&TokenKind) -> bool, text: &str| {
            t.is_some_and(|t| kind(&t.0) && t.1.text() == text)
        };
        let symbol = |k: &TokenKind| matches!(k, TokenKind::Symbol);
        let ident = |k: &TokenKind| matches!(k, TokenKind::Ident);
        for i in 0..tokens.len() {
            if !(is(tokens.get(i), ident, "regex") && is(tokens.get(i + 1), symbol, ".")) {
                continue;
            }
            let Some(f) = tokens.get(i + 2).filter(|t| ident(&t.0)) else {
                continue;
            };
            let operand = match f.1.text() {
                "match" | "find_n" | "find_all_string_submatch_n" | "split" => 0,
                "replace" => 1,
                _ => continue,
            };
            if !is(tokens.get(i + 3), symbol, "(") {
                continue;
            }
            // The operand's tokens: from the `(` to the `,` or `)` that ends it at depth 0.
            let mut depth = 0usize;
            let mut n = 0;
            let mut range = Vec::new();
            for (j, t) in tokens.iter().enumerate().skip(i + 4) {
                let text = if symbol(&t.0) { t.1.text() } else { "" };
                match text {
                    "(" | "[" | "{" => depth += 1,
                    ")" | "]" | "}" if depth == 0 => break,
                    ")" | "]" | "}" => depth -= 1,
                    "," if depth == 0 => {
                        n += 1;
                        continue;
                    }
                    _ => {}
                }
                if n == operand {
                    range.push(j);
                } else if n > operand {
                    break;
                }
            }
            let [at] = range[..] else {
                continue;
            };
            let literal = &tokens[at];
            let pattern = match literal.0 {
                TokenKind::String => {
                    match serde_json::from_str::<String>(&alloc::format!(
                        "\"{}\"",
                        literal.1.text()
                    )) {
                        Ok(p) => p,
                        Err(_) => continue,
                    }
                }
                TokenKind::RawString => literal.1.text().to_string(),
                _ => continue,
            };
            if let Err(e) = crate::go_regex::compile(&pattern) {
                return Err(PolicyError(alloc::format!(
                    "{}: regex.{}: pattern {pattern:?}: {e}",
                    location(&literal.1),
                    f.1.text()
                )));
            }
        }
    }
    Ok(())
}

/// Refuses a rule or function with more than one `default` (in one module or across the
/// modules of its package), as OPA's compiler does: regorus would keep the first, so the policy
/// would have two values and decide one without an error.
pub fn one_default_per_rule(modules: &[Ref<Module>]) -> Result<(), PolicyError> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for module in modules {
        let Ok(package) = get_path_string(&module.package.refr, Some("data")) else {
            continue;
        };
        for rule in &module.policy {
            let Rule::Default { span, refr, .. } = rule.as_ref() else {
                continue;
            };
            let Ok(path) = get_path_string(refr, Some(&package)) else {
                continue;
            };
            let here = location(span);
            if let Some(first) = seen.get(&path) {
                return Err(PolicyError(alloc::format!(
                    "{here}: multiple default rules for {path} (the first at {first})"
                )));
            }
            seen.insert(path, here);
        }
    }
    Ok(())
}

/// An entrypoint ready to evaluate: an engine holding the policy and the data, prepared.
pub struct Compiled {
    engine: Engine,
    rule: String,
    /// The entrypoint names a package (or a prefix of packages), not a rule: it evaluates to the
    /// package's document, as OPA's `-e package`.
    package: bool,
}

/// Evaluates a compiled entrypoint on a copy of its engine, as `gantry policy test` evaluates
/// each test (`Engine::eval_rule` on a copy): nothing allocated while evaluating outlives it,
/// which the ABI's heap resets require. An error is the Rego error on one line (the host names
/// the entrypoint).
///
/// Not regorus's `CompiledPolicy::eval_with_input`: it starts the interpreter without the
/// document `with` modifies, so a `with` in the policy fails there and works in `policy test`.
pub fn evaluate_compiled(compiled: &Compiled, input: Value) -> Result<String, PolicyError> {
    let mut engine = compiled.engine.clone();
    engine.set_input(input);
    let value = if compiled.package {
        let results = engine
            .eval_query(compiled.rule.clone(), false)
            .map_err(eval_error)?;
        results
            .result
            .into_iter()
            .next()
            .and_then(|r| r.expressions.into_iter().next())
            .map_or(Value::Undefined, |e| e.value)
    } else {
        engine
            .eval_rule(compiled.rule.clone())
            .map_err(eval_error)?
    };
    result_set(value)
}

/// An evaluation error on one line (the host names the entrypoint).
fn eval_error(e: impl core::fmt::Display) -> PolicyError {
    PolicyError(diagnostic::one_line(&e.to_string()))
}

/// OPA's result set: `[{"result": value}]`, or `[]` when the rule is undefined.
fn result_set(value: Value) -> Result<String, PolicyError> {
    Ok(match value {
        Value::Undefined => "[]".into(),
        v => alloc::format!(
            "[{{\"result\":{}}}]",
            serde_json::to_string(&v).map_err(|e| error("result", e))?
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host whose clock stands still and whose draws are the key's length modulo the bound.
    fn fixed_host() -> Host {
        Host {
            now_ns: alloc::sync::Arc::new(|| Ok(1_700_000_000_000_000_000)),
            intn: alloc::sync::Arc::new(|key: &str, n: i64| Ok(key.len() as i64 % n)),
        }
    }

    const PACKED: &str = r#"{
        "modules": {"p.rego": "package demo\nimport rego.v1\ndefault allow := false\nallow if input.user in data.admins\nreasons contains \"not an admin\" if not allow\nmaybe if input.x == 1\n"},
        "entrypoints": ["demo/allow", "demo/reasons", "demo/maybe"],
        "data": {"admins": ["ada"]}
    }"#;

    #[test]
    fn evaluates_entrypoints_as_result_sets() {
        let p = Policy::from_json(PACKED, &fixed_host()).unwrap();
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

    /// `strict` decides what a builtin error is: an evaluation error (the default, so the host
    /// denies) or an undefined expression (OPA's default), and the rule's `default` then applies.
    #[test]
    fn strict_decides_whether_a_builtin_error_fails_the_evaluation() {
        let packed = |strict: Option<bool>| {
            let mut doc = serde_json::json!({
                "modules": {"p.rego": "package p\ndefault allow := false\nallow if to_number(input.n) > 1\n"},
                "entrypoints": ["p/allow"],
            });
            if let Some(b) = strict {
                doc["strict"] = serde_json::Value::Bool(b);
            }
            doc.to_string()
        };
        let input = Value::from_json_str(r#"{"n": "not a number"}"#).unwrap();
        let data = Value::new_object();
        for strict in [None, Some(true)] {
            let p = Policy::from_json(&packed(strict), &fixed_host()).unwrap();
            assert!(p.strict());
            let e = p.evaluate(0, &data, input.clone()).unwrap_err();
            assert!(e.0.contains("could not parse string as number"), "{e}");
        }
        let lax = Policy::from_json(&packed(Some(false)), &fixed_host()).unwrap();
        assert_eq!(
            lax.evaluate(0, &data, input).unwrap(),
            r#"[{"result":false}]"#
        );
        assert!(
            Policy::from_json(
                &packed(None).replace("\"entrypoints\"", "\"strict\": 1, \"entrypoints\""),
                &fixed_host()
            )
            .is_err()
        );
    }

    /// An entrypoint may name a package, or a prefix of packages, as OPA's `-e`: it evaluates
    /// to the document below it (rules with values; undefined ones absent), and a conflict in
    /// it is an error, as for a rule.
    #[test]
    fn a_package_entrypoint_evaluates_to_the_package_document() {
        let packed = serde_json::json!({
            "modules": {
                "a.rego": "package t.a\np := 1\nq contains x if some x in [1, 2]\nr if false\n",
                "b.rego": "package t.b\nc := input.c\n",
            },
            "entrypoints": ["t/a", "t", "t/b"],
        })
        .to_string();
        let p = Policy::from_json(&packed, &fixed_host()).unwrap();
        let data = Value::new_object();
        let c = p.compile(&data).unwrap();
        let input = |c: &str| Value::from_json_str(c).unwrap();
        assert_eq!(
            evaluate_compiled(&c[0], input("{}")).unwrap(),
            r#"[{"result":{"p":1,"q":[1,2]}}]"#
        );
        assert_eq!(
            evaluate_compiled(&c[1], input(r#"{"c": 3}"#)).unwrap(),
            r#"[{"result":{"a":{"p":1,"q":[1,2]},"b":{"c":3}}}]"#
        );
        assert!(p.compile_entrypoint("t/zz", &data).is_err());
        let conflict = serde_json::json!({
            "modules": {"a.rego": "package t\nx := y if some y in [1, 2]\n"},
            "entrypoints": ["t"],
        })
        .to_string();
        let p = Policy::from_json(&conflict, &fixed_host()).unwrap();
        let c = p.compile(&data).unwrap();
        assert!(evaluate_compiled(&c[0], input("{}")).is_err());
    }

    /// The clock and the draws come from the host; their arguments are checked here, as OPA
    /// checks them (a bound of 0 draws nothing, a negative one counts as its magnitude).
    #[test]
    fn host_builtins_take_the_hosts_clock_and_draws() {
        let eval = |rego: &str, strict: bool| {
            let packed = serde_json::json!({
                "modules": {"p.rego": rego}, "entrypoints": ["p/x"], "strict": strict,
            })
            .to_string();
            Policy::from_json(&packed, &fixed_host())
                .unwrap()
                .evaluate(0, &Value::new_object(), Value::new_object())
                .map_err(|e| e.0)
        };
        let ok = |rego: &str| eval(rego, true).unwrap();
        assert_eq!(
            ok("package p\nx := time.now_ns()\n"),
            r#"[{"result":1700000000000000000}]"#
        );
        // The fixed host draws the key's length modulo the bound: "abc" -> 3.
        assert_eq!(
            ok(
                "package p\nx := [rand.intn(\"abc\", 10), rand.intn(\"abc\", -10), rand.intn(\"abc\", 0)]\n"
            ),
            r#"[{"result":[3,3,0]}]"#
        );
        let bad = "package p\nx := rand.intn(\"abc\", 1.5)\n";
        assert!(eval(bad, true).unwrap_err().contains("operand 2"));
        assert_eq!(eval(bad, false).unwrap(), "[]");
        // Two draws of 61 bits, keyed by the uuid's key: "uuid.rfc4122(k)/0" is 17 long.
        let want = crate::host_builtins::uuid_v4((17 << 61) | 17);
        assert_eq!(
            ok("package p\nx := uuid.rfc4122(\"k\")\n"),
            format!(r#"[{{"result":"{want}"}}]"#)
        );
    }

    /// Without an input, `input` is undefined (as in `opa test` and `opa eval` without `-i`),
    /// which no input value, `null` included, is.
    #[test]
    fn an_entrypoint_without_input_sees_an_undefined_input() {
        let packed = serde_json::json!({
            "modules": {"p.rego": "package p\nnone if not input\n"},
            "entrypoints": ["p/none"],
        })
        .to_string();
        let p = Policy::from_json(&packed, &fixed_host()).unwrap();
        let data = Value::new_object();
        assert_eq!(
            p.evaluate(0, &data, Value::Undefined).unwrap(),
            r#"[{"result":true}]"#
        );
        assert_eq!(p.evaluate(0, &data, Value::Null).unwrap(), "[]");
        assert_eq!(without_input(MAX_ENTRYPOINTS + 3), Some(3));
        assert_eq!(without_input(3), None);
        assert_eq!(without_input(2 * MAX_ENTRYPOINTS), None);
    }

    /// OPA's cases inline certificates and tokens on one line; regorus's default lexer stops at
    /// 1,024 columns, which refused them at build.
    #[test]
    fn a_line_of_thousands_of_columns_parses() {
        let long = "a".repeat(5000);
        let packed = serde_json::json!({
            "modules": {"p.rego": alloc::format!("package p\nx := \"{long}\"\n")},
            "entrypoints": ["p/x"],
        })
        .to_string();
        let p = Policy::from_json(&packed, &fixed_host()).unwrap();
        let out = p
            .evaluate(0, &Value::new_object(), Value::new_object())
            .unwrap();
        assert_eq!(out.len(), long.len() + 15, "{}", &out[..20]);
    }

    #[test]
    fn bad_rego_names_the_module() {
        let e = Policy::from_json(
            r#"{"modules": {"bad.rego": "package x\nallow if {"}, "entrypoints": [], "data": {}}"#,
            &fixed_host(),
        )
        .err()
        .unwrap();
        assert!(e.0.contains("bad.rego"), "{e}");
    }

    /// A policy of one module `p.rego` with entrypoint `p/allow`, evaluated on `input` through
    /// the sandbox's path (compiled, then evaluated) and through a plain regorus engine, as
    /// `gantry policy test` runs it.
    fn both_ways(rego: &str, input: &str) -> (Result<String, String>, Result<String, String>) {
        let packed = serde_json::json!({
            "modules": {"p.rego": rego},
            "entrypoints": ["p/allow"],
            "data": {},
        })
        .to_string();
        let p = Policy::from_json(&packed, &fixed_host()).unwrap();
        let input = Value::from_json_str(input).unwrap();
        let sandbox = p
            .compile(&Value::new_object())
            .and_then(|c| evaluate_compiled(&c[0], input.clone()))
            .map_err(|e| e.0);
        let mut engine = Engine::new();
        engine.add_policy("p.rego".into(), rego.into()).unwrap();
        engine.set_input(input);
        let native = engine
            .eval_rule("data.p.allow".into())
            .map_err(|e| e.to_string())
            .and_then(|v| result_set(v).map_err(|e| e.0));
        (sandbox, native)
    }

    /// Every way a complete rule, a function or a default can end up with more than one value,
    /// and errors inside rule bodies: each must be an evaluation error (which the host turns into
    /// a deny), as `gantry policy test` reports it, never one of the values.
    #[test]
    fn conflicting_values_and_errors_fail_the_evaluation_instead_of_deciding() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "the issue's example: a complete rule whose body iterates",
                "package p\nallow := x if { x := [false, true][_] }\n",
                "{}",
            ),
            (
                "iteration over the input, a default beside it",
                "package p\ndefault allow := false\nallow := x if { x := input.a[_] }\n",
                r#"{"a": [false, true]}"#,
            ),
            (
                "two definitions with different values",
                "package p\nallow := true if input.a\nallow := false if input.a\n",
                r#"{"a": true}"#,
            ),
            (
                "a conflict in a rule the decision negates (`not deny`)",
                "package p\ndeny := true if input.a\ndeny := false if input.a\nallow if not deny\n",
                r#"{"a": true}"#,
            ),
            (
                "an else branch that iterates",
                "package p\nallow := false if { input.no } else := x if { x := [true, false][_] }\n",
                "{}",
            ),
            (
                "a function whose body iterates",
                "package p\nf(a) := x if { x := [a, true][_] }\nallow := f(false)\n",
                "{}",
            ),
            (
                "a function with two definitions for the same argument",
                "package p\nf(_) := true\nf(_) := false\nallow := f(1)\n",
                "{}",
            ),
            (
                "an object value built per iteration",
                "package p\nallow := {\"allow\": x} if { x := [false, true][_] }\n",
                "{}",
            ),
            (
                "a partial object with one key given two values",
                "package p\nobj[k] := 1 if { k := \"a\" }\nobj[k] := 2 if { k := \"a\" }\nallow := obj.a == 1\n",
                "{}",
            ),
            (
                "an arithmetic error in a body that would add a reason",
                "package p\nreasons contains \"over quota\" if input.used + input.gpus > 10\nallow if count(reasons) == 0\n",
                r#"{"used": 5, "gpus": "many"}"#,
            ),
            (
                "a builtin error in a body that would deny",
                "package p\ndeny if to_number(input.n) > 5\nallow if not deny\n",
                r#"{"n": "lots"}"#,
            ),
            (
                "a division by zero",
                "package p\ndeny if 10 / input.n > 1\nallow if not deny\n",
                r#"{"n": 0}"#,
            ),
        ];
        let mut decided = Vec::new();
        for (what, rego, input) in cases {
            let (sandbox, native) = both_ways(rego, input);
            assert!(
                native.is_err(),
                "{what}: the native engine decided {native:?}"
            );
            if let Ok(value) = sandbox {
                decided.push(format!("{what}: {value}"));
            }
        }
        assert!(
            decided.is_empty(),
            "the sandbox decided instead of failing:\n{}",
            decided.join("\n")
        );
    }

    /// A rule (or function) with two `default`s has two values when nothing else defines it:
    /// regorus kept the first one, OPA's compiler refuses the policy. Refused at load, so at
    /// build too, wherever the two defaults are (one module or two of the same package).
    #[test]
    fn two_defaults_for_one_rule_are_refused_at_load() {
        let load = |modules: serde_json::Value| {
            let packed = serde_json::json!({
                "modules": modules, "entrypoints": ["x/allow"], "data": {},
            });
            Policy::from_json(&packed.to_string(), &fixed_host())
                .map(|_| ())
                .map_err(|e| e.0)
        };
        let e = load(serde_json::json!({
            "p.rego": "package x\ndefault allow := false\n\tdefault allow := true\nallow if input.a\n",
        }))
        .unwrap_err();
        assert!(e.contains("p.rego:3:2: "), "{e}");
        assert!(
            e.contains("data.x.allow") && e.contains("p.rego:2:1"),
            "{e}"
        );
        let e = load(serde_json::json!({
            "a.rego": "package x\ndefault allow := false\n",
            "b.rego": "package x\ndefault allow := false\nallow if input.a\n",
        }))
        .unwrap_err();
        assert!(
            e.contains("b.rego:2:1: ") && e.contains("a.rego:2:1"),
            "{e}"
        );
        let e = load(serde_json::json!({
            "p.rego": "package x\ndefault f(_) := 1\ndefault f(_) := 2\nallow if f(1) == 1\n",
        }))
        .unwrap_err();
        assert!(e.contains("p.rego:3:1: ") && e.contains("data.x.f"), "{e}");
        // One default per rule, in as many packages as wanted, loads.
        load(serde_json::json!({
            "p.rego": "package x\ndefault allow := false\ndefault other := 1\n",
            "q.rego": "package y\ndefault allow := false\n",
        }))
        .unwrap();
    }

    /// Found by a review: `\d`, `\w`, `(?i)` and `\pL` made every `regex.*` call an "invalid
    /// regex" error, so under non-strict builtin errors (OPA's default) a deny rule using them
    /// never fired and the request was allowed. They now decide as in OPA, strict or not.
    #[test]
    fn a_deny_rule_with_perl_classes_fires_under_non_strict_builtin_errors() {
        let rego = r#"package p
import rego.v1
default allow := false
allow if not deny
deny if regex.match(`^\d+$`, input.uid)
deny if regex.match(`(?i)^root$`, input.user)
deny if regex.match(`\pL`, input.tag)
"#;
        for strict in [false, true] {
            let packed = serde_json::json!({
                "modules": {"p.rego": rego}, "entrypoints": ["p/allow"], "strict": strict,
            })
            .to_string();
            let p = Policy::from_json(&packed, &fixed_host()).unwrap();
            let decide = |input: &str| {
                p.evaluate(
                    0,
                    &Value::new_object(),
                    Value::from_json_str(input).unwrap(),
                )
                .unwrap()
            };
            let ok = r#"{"uid": "u-1", "user": "ada", "tag": "1-2"}"#;
            assert_eq!(decide(ok), r#"[{"result":true}]"#, "strict {strict}");
            for bad in [
                r#"{"uid": "0", "user": "ada", "tag": "1"}"#,
                r#"{"uid": "u", "user": "ROOT", "tag": "1"}"#,
                r#"{"uid": "u", "user": "ada", "tag": "é"}"#,
            ] {
                assert_eq!(
                    decide(bad),
                    r#"[{"result":false}]"#,
                    "strict {strict}: {bad}"
                );
            }
        }
    }

    /// Found by a review against OPA's sources: deny rules that fire in OPA and did not here, each
    /// a builtin read otherwise than Go reads it: `json.unmarshal` and `to_number` made a 25-digit
    /// serial its f64 neighbour, `to_number` of a long decimal errs on the JSON reader's bound,
    /// `lower("ADMİN")` was not `"admin"`, `time.add_date` clamped March 31 less a month.
    #[test]
    fn deny_rules_on_builtins_go_defines_fire_as_in_opa() {
        let rego = r#"package p
import rego.v1
deny contains "serial" if json.unmarshal(input.cert).serial == 1208925819614629174706175
deny contains "number" if to_number(input.n) == 1208925819614629174706175
deny contains "long" if to_number(input.long) > 5
deny contains "lower" if lower(input.user) == "admin"
deny contains "date" if input.rotated < time.add_date(input.now, 0, -1, 0)
"#;
        let p = packed(rego, &["p/deny"], false);
        let day = 86_400_000_000_000i64;
        let input = serde_json::json!({
            "cert": "{\"serial\": 1208925819614629174706175}",
            "n": "1208925819614629174706175",
            "long": format!("9.{}", "0".repeat(1200)),
            "user": "ADMİN",
            "rotated": 19_783 * day,
            "now": 19_813 * day,
        });
        let decided = p
            .evaluate(
                0,
                &Value::new_object(),
                crate::json::parse(&input.to_string()).unwrap(),
            )
            .unwrap();
        assert_eq!(
            decided,
            r#"[{"result":["date","long","lower","number","serial"]}]"#
        );
    }

    /// `time.add_date` is Go's `AddDate` in the instant's zone, as OPA's (answers from Go 1.19):
    /// a month's overflow rolls into the next, and with a zone the local clock is kept across a
    /// DST change, a local time the change skips read as Go's `Date` reads it. The engine's own
    /// version added in UTC and refused `[ns, zone]`; regorus's clamped and added in UTC.
    #[test]
    fn add_date_moves_the_local_date_in_the_instants_zone_as_gos() {
        let rego = r#"package p
r := [
    time.add_date(1711886400000000000, 0, -1, 0),
    time.add_date([1710003600000000000, "America/New_York"], 0, 0, 1),
    time.add_date(1710003600000000000, 0, 0, 1),
    time.add_date([1709969400000000000, "America/New_York"], 0, 0, 1),
]
far := time.add_date(0, 1000, 0, 0)
"#;
        let p = packed(rego, &["p/r", "p/far"], true);
        let decide = |entrypoint| p.evaluate(entrypoint, &Value::new_object(), Value::Null);
        assert_eq!(
            decide(0).unwrap(),
            r#"[{"result":[1709380800000000000,1710086400000000000,1710090000000000000,1710052200000000000]}]"#
        );
        let far = decide(1).unwrap_err().to_string();
        assert!(far.contains("time outside of valid range"), "{far}");
    }

    /// Past 2099 chrono-tz keeps a zone's last tabulated offset, where Go follows the zone's
    /// rule: New York in July 2150 was EST (Go: EDT), Lord Howe in March 2261 +10:30 (Go: +11).
    /// Answers from Go 1.19 with tzdata 2025b, chrono-tz's.
    #[test]
    fn zones_past_2099_follow_their_rule_as_gos() {
        let rego = r#"package p
r := [
    time.format([5695963200000000000, "America/New_York", "15:04 MST"]),
    time.format([9189072000000000000, "Australia/Lord_Howe", "15:04 MST"]),
]
"#;
        let p = packed(rego, &["p/r"], true);
        assert_eq!(
            p.evaluate(0, &Value::new_object(), Value::Null).unwrap(),
            r#"[{"result":["08:00 EDT","11:00 +11"]}]"#
        );
    }

    /// Found by asking which of the engine's refusals a policy could turn into an allow: what
    /// OPA decides and this engine cannot (a YAML scalar OPA reads as YAML 1.1, `on` being
    /// true; more CIDRs than it takes; braces nested past its bound; JSON nested deeper than
    /// its reader's 128 levels, which `json.is_valid` called invalid) was a builtin error, so,
    /// builtin errors not strict, the call was undefined, `deny` did not fire and `allow if not
    /// deny` allowed where OPA denies. Each now fails the evaluation (the host denies), as the
    /// engine's other bounds (a regex past its size, a number past its digits) do.
    #[test]
    fn what_opa_decides_and_the_engine_cannot_fails_the_evaluation_even_when_not_strict() {
        let rego = r#"package p
default allow := false
allow if not deny
deny if {
    doc := yaml.unmarshal(input.doc)
    doc.privileged == true
}
deny if count(net.cidr_contains_matches(input.nets, input.ips)) > 0
deny if count(net.cidr_merge(input.merge)) > 0
deny if glob.match(input.glob, [], "a")
deny if json.unmarshal(input.json).admin == true
deny if json.is_valid(input.valid)
"#;
        let p = packed(rego, &["p/allow"], false);
        let decide = |input: serde_json::Value| {
            let input = Value::from_json_str(&input.to_string()).unwrap();
            p.evaluate(0, &Value::new_object(), input)
        };
        let many = |item: &str, n: usize| serde_json::json!(vec![item; n]);
        let nested = format!("{}a{}", "{".repeat(300), "}".repeat(300));
        let deep = format!(
            r#"{{"admin": true, "x": {}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        for (input, why) in [
            (serde_json::json!({"doc": "privileged: on"}), "YAML 1.1"),
            (
                serde_json::json!({"nets": many("10.0.0.0/8", 400), "ips": many("10.0.0.1", 400)}),
                "pairs to try",
            ),
            (
                serde_json::json!({"merge": many("10.0.0.1", 100_001)}),
                "more than Gantry holds",
            ),
            (
                serde_json::json!({ "glob": nested }),
                "refused by this engine",
            ),
            (
                serde_json::json!({ "json": deep }),
                "past this engine's bounds",
            ),
            (
                serde_json::json!({ "valid": deep }),
                "past this engine's bounds",
            ),
        ] {
            let refused = decide(input).unwrap_err().to_string();
            assert!(refused.contains(why), "{why}: {refused}");
        }
        let decided = |doc: &str| decide(serde_json::json!({ "doc": doc })).unwrap();
        assert_eq!(decided("privileged: true"), r#"[{"result":false}]"#);
        assert_eq!(decided("privileged: false"), r#"[{"result":true}]"#);
        let valid = |text: &str| decide(serde_json::json!({ "valid": text })).unwrap();
        assert_eq!(valid("[1"), r#"[{"result":true}]"#);
        assert_eq!(valid("[1]"), r#"[{"result":false}]"#);
    }

    /// `semver.*` read versions with the `semver` crate (SemVer 2.0), where OPA's own package
    /// takes a leading `v` and leading zeros: `semver.compare("v1.3.0", "1.2.0") >= 0` failed
    /// where OPA allows. Two versions OPA cannot order (its comparison does not end) are an
    /// error, and `is_valid` of no string is false, in strict mode too.
    #[test]
    fn semver_reads_versions_as_opa_does() {
        let rego = r#"package p
r := [
    semver.compare("v1.3.0", "1.2.0"),
    semver.compare("01.2.3-rc.10", "1.2.3-rc.9+build"),
    semver.is_valid("1.2.3-01"),
    semver.is_valid("1.2"),
    semver.is_valid(5),
]
loops := semver.compare("1.2.3-01", "1.2.3-1")
"#;
        let p = packed(rego, &["p/r", "p/loops"], true);
        let decide = |entrypoint| p.evaluate(entrypoint, &Value::new_object(), Value::Null);
        assert_eq!(decide(0).unwrap(), r#"[{"result":[1,1,true,false,false]}]"#);
        let loops = decide(1).unwrap_err().to_string();
        assert!(loops.contains("OPA cannot order"), "{loops}");
    }

    /// The policy `rego` (module `p.rego`) packed with `entrypoints`.
    fn packed(rego: &str, entrypoints: &[&str], strict: bool) -> Policy {
        let packed = serde_json::json!({
            "modules": {"p.rego": rego}, "entrypoints": entrypoints, "strict": strict,
        })
        .to_string();
        Policy::from_json(&packed, &fixed_host()).unwrap()
    }

    /// `data.p.deny` of the policy `rego` with builtin errors not strict, decided on an input
    /// (JSON text).
    fn non_strict_deny(rego: &str) -> impl Fn(&str) -> Result<String, PolicyError> {
        let p = packed(rego, &["p/deny"], false);
        move |input| p.evaluate(0, &Value::new_object(), crate::json::parse(input).unwrap())
    }

    /// Found by a differential against Go's `encoding/base64` and `net/url`: `base64.is_valid`
    /// said true of `"PWI=Lw=="` (padding inside the text; Go refuses it), so a deny of invalid
    /// tokens did not fire where OPA's does; `"J9=="` (unused bits set, which Go ignores) was
    /// refused; `urlquery.decode` parsed its text as a URL's query and lost `&`.
    #[test]
    fn encodings_read_as_gos_so_a_deny_on_invalid_base64_fires() {
        let deny = non_strict_deny(
            "package p\nimport rego.v1\ndeny contains \"bad\" if not base64.is_valid(input.t)\n\
             deny contains d if d := base64.decode(input.t)\n\
             deny contains q if q := urlquery.decode(input.q)\n",
        );
        let decide =
            |t: &str, q: &str| deny(&serde_json::json!({"t": t, "q": q}).to_string()).unwrap();
        assert_eq!(decide("PWI=Lw==", "a&b"), r#"[{"result":["a&b","bad"]}]"#);
        assert_eq!(decide("J9==", "%zz"), r#"[{"result":["'"]}]"#);
    }

    /// Found by a differential against Go's answers: `replace(s, "", x)` put `x` between
    /// characters, where Go's replacer (OPA's) steps over bytes: of `"é"` it made `"-é-"` where
    /// OPA writes bytes that are no UTF-8, so `contains(replace(s, "", "-"), "é")` held here and
    /// not in OPA. Go's replacer now: ASCII as Go, an insertion inside a character an error
    /// (Gantry's strings hold UTF-8 only), whatever the mode.
    #[test]
    fn replace_with_an_empty_old_steps_over_bytes_as_gos_replacer() {
        let deny = non_strict_deny(
            "package p\nimport rego.v1\ndeny contains r if r := replace(input.s, \"\", \"-\")\n",
        );
        assert_eq!(deny(r#"{"s": "ab"}"#).unwrap(), r#"[{"result":["-a-b-"]}]"#);
        let e = deny(r#"{"s": "é"}"#).unwrap_err().to_string();
        assert!(e.contains("replace"), "{e}");
    }

    /// A YAML stream reads as its first document, as OPA's go-yaml v2 reads it; a later document
    /// that does not read fails the evaluation, strict or not: go-yaml finds some such errors
    /// (what it scans past the first document's end) and not others, so Gantry cannot say
    /// whether OPA would have decided on the first document or refused the stream.
    #[test]
    fn a_yaml_stream_is_its_first_document_and_a_broken_later_one_fails_the_evaluation() {
        let rego =
            "package p\nimport rego.v1\ndeny contains \"root\" if yaml.unmarshal(input.y).root\n";
        let deny = non_strict_deny(rego);
        let decide = |y: &str| deny(&serde_json::json!({ "y": y }).to_string());
        assert_eq!(
            decide("root: true\n---\nb: 2\n").unwrap(),
            r#"[{"result":["root"]}]"#
        );
        let e = decide("root: true\n---\nb: [2\n").unwrap_err().to_string();
        assert!(e.contains("document 2 of the stream"), "{e}");
        // Found by a review: `yaml.is_valid` said false of that stream, so a deny guarded by it
        // was skipped where OPA may deny; it is refused as `yaml.unmarshal` refuses it.
        let guarded = non_strict_deny(
            "package p\nimport rego.v1\ndeny contains \"root\" if { yaml.is_valid(input.y); yaml.unmarshal(input.y).root }\n",
        );
        let e = guarded(r#"{"y": "root: true\n---\n["}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("yaml.is_valid"), "{e}");
        assert_eq!(
            guarded(r#"{"y": "root: true\n---\nb: 1"}"#).unwrap(),
            r#"[{"result":["root"]}]"#
        );
        assert_eq!(
            guarded(r#"{"y": "root: ["}"#).unwrap(),
            r#"[{"result":[]}]"#
        );
        // A first document that does not read is OPA's builtin error: undefined when not strict.
        assert_eq!(decide("root: [\n").unwrap(), r#"[{"result":[]}]"#);
    }

    /// Found by a helper: regorus's memory guard (`enforce_limit`) bounds nothing in Gantry's
    /// build (no allocator limits), so `numbers.range(0, 1e12)` grew until the module's memory
    /// cap trapped, natively until the process died. The count is bounded before anything is
    /// built, and past the bound the evaluation fails, strict or not (a `not` cannot turn it).
    #[test]
    fn a_range_past_the_bound_fails_even_a_non_strict_evaluation() {
        let rego = "package p\nimport rego.v1\ndeny contains \"short\" if not count(numbers.range_step(0, input.n, input.step)) > 3\n";
        let deny = non_strict_deny(rego);
        let decide = |n: &str, step: u64| deny(&alloc::format!(r#"{{"n": {n}, "step": {step}}}"#));
        let e30 = "1000000000000000000000000000000";
        for (n, step) in [
            ("1000000000000", 1),
            ("-16777216", 1),
            (e30, 1000),
            (e30, u64::MAX),
        ] {
            let e = decide(n, step).unwrap_err().to_string();
            assert!(e.contains("more than Gantry holds"), "{n}: {e}");
        }
        assert_eq!(decide("2", 1).unwrap(), r#"[{"result":["short"]}]"#);
        assert_eq!(decide("16777215", 1).unwrap(), r#"[{"result":[]}]"#);
        assert_eq!(
            decide("100000000000000000000000", u64::MAX).unwrap(),
            r#"[{"result":[]}]"#
        );
    }

    /// Found by reading regorus's lexer: an error past column 65,535 of a line (Gantry reads lines
    /// up to 1 Mi columns) panicked writing its caret (a format width past `u16`), so a policy
    /// with a long line ended `gantry policy test` instead of naming the place.
    #[test]
    fn an_error_past_column_65535_is_named_not_a_panic() {
        let rego = alloc::format!("package p\n\np := [{}@]\n", "1, ".repeat(25_000));
        let packed = serde_json::json!({
            "modules": {"p.rego": rego}, "entrypoints": ["p/p"],
        })
        .to_string();
        let Err(e) = Policy::from_json(&packed, &fixed_host()) else {
            panic!("a policy with a syntax error built");
        };
        let e = e.to_string();
        assert!(e.contains("p.rego:3:75007"), "{}", &e[..e.len().min(300)]);
    }

    /// Found by reading regorus's builtins: `bits.lsh(1, 4294967295)` asked for 512 MiB before any
    /// bound, and a shift past 32 bits was undefined (a non-strict `deny if not ...` skipped). A
    /// shift past Gantry's bound fails the evaluation, strict or not; below it, OPA's value.
    #[test]
    fn a_left_shift_past_the_bound_fails_even_a_non_strict_evaluation() {
        let rego =
            "package p\nimport rego.v1\ndeny contains \"small\" if bits.lsh(1, input.n) < 1024\n";
        let deny = non_strict_deny(rego);
        let decide = |n: u64| deny(&serde_json::json!({ "n": n }).to_string());
        for past in [(8 << 20) + 1, 4_294_967_295, u64::MAX] {
            let e = decide(past).unwrap_err().to_string();
            assert!(e.contains("more than Gantry holds"), "{past}: {e}");
        }
        assert_eq!(decide(3).unwrap(), r#"[{"result":["small"]}]"#);
        assert_eq!(decide(100_000).unwrap(), r#"[{"result":[]}]"#);
    }

    /// Found by a review: what Go reads and Gantry cannot hold (`to_number` of `1e-100001`, of a
    /// hexadecimal float) was a builtin error, which a non-strict policy makes undefined: a
    /// `deny` OPA fires did not. It fails the evaluation whatever the mode; an error OPA has
    /// too stays undefined when not strict.
    #[test]
    fn what_gantry_cannot_hold_fails_even_a_non_strict_evaluation() {
        let rego = "package p\nimport rego.v1\ndeny contains \"small\" if to_number(input.n) < 1\n";
        let deny = non_strict_deny(rego);
        let decide = |n: &str| deny(&serde_json::json!({ "n": n }).to_string());
        for held in ["1e-100001", "0x1p-2", "1_000"] {
            assert!(decide(held).is_err(), "{held}");
        }
        assert_eq!(decide("0.5").unwrap(), r#"[{"result":["small"]}]"#);
        assert_eq!(decide("x").unwrap(), r#"[{"result":[]}]"#);
    }

    /// A `regex.*` call on a constant pattern Go refuses is refused at load, naming the place;
    /// a pattern from the input is the evaluation's business.
    #[test]
    fn a_constant_pattern_go_refuses_is_refused_at_load() {
        let load = |rego: &str| {
            let packed = serde_json::json!({
                "modules": {"p.rego": rego}, "entrypoints": ["p/allow"],
            });
            Policy::from_json(&packed.to_string(), &fixed_host())
                .map(|_| ())
                .map_err(|e| e.0)
        };
        let e = load("package p\nallow if regex.match(\"[a-\", input.x)\n").unwrap_err();
        assert!(
            e.contains("p.rego:2:23") && e.contains("missing closing ]"),
            "{e}"
        );
        let e = load(
            "package p\nallow if {\n  x := regex.replace(input.s, `a**`, \"b\")\n  x == \"\"\n}\n",
        )
        .unwrap_err();
        assert!(
            e.contains("p.rego:3:") && e.contains("regex.replace"),
            "{e}"
        );
        let e =
            load("package p\nallow if count(regex.split(\"\\\\e\", input.x)) > 1\n").unwrap_err();
        assert!(e.contains("invalid escape"), "{e}");
        load("package p\nallow if regex.match(input.p, input.x)\nok if regex.is_valid(\"[\")\n")
            .unwrap();
        load("package p\nallow if regex.match(`^\\d{2,}$`, input.x)\n").unwrap();
    }

    /// The same shapes where every value agrees decide, on both paths, alike.
    #[test]
    fn agreeing_values_decide_alike_on_both_paths() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "package p\nallow := x if { x := [true, true][_] }\n",
                "{}",
                r#"[{"result":true}]"#,
            ),
            (
                "package p\nf(a) := 1 if a > 0\nf(a) := 2 if a < 0\nallow := f(input.n)\n",
                r#"{"n": -3}"#,
                r#"[{"result":2}]"#,
            ),
            (
                "package p\ndefault allow := false\nallow := x if { x := input.a[_] }\n",
                r#"{"a": []}"#,
                r#"[{"result":false}]"#,
            ),
            (
                "package p\nallow := true if input.a\nallow := true if input.b\n",
                r#"{"a": true, "b": true}"#,
                r#"[{"result":true}]"#,
            ),
            (
                "package p\nallow if { x := [1, 2][_]; x > 1 }\n",
                "{}",
                r#"[{"result":true}]"#,
            ),
        ];
        for (rego, input, want) in cases {
            let (sandbox, native) = both_ways(rego, input);
            assert_eq!(sandbox.as_deref(), Ok(*want), "{rego}");
            assert_eq!(native.as_deref(), Ok(*want), "{rego}");
        }
    }

    #[test]
    fn errors_name_the_place_as_file_line_col() {
        let (sandbox, _) = both_ways(
            "package p\nimport rego.v1\n\nallow if {\n\tto_number(input.n) > 1\n}\n",
            r#"{"n": "x"}"#,
        );
        let e = sandbox.unwrap_err();
        // The tab counts as one column: `to_number` starts at column 2 (its `(` at 11).
        assert!(e.starts_with("p.rego:5:"), "{e}");
        assert!(!e.contains("-->"), "{e}");
    }

    /// What regorus's register VM refuses to compile (`with` in the policy, ref heads,
    /// partial objects with constant keys) loads and decides as `gantry policy test` decides it.
    #[test]
    fn constructs_the_register_vm_refuses_decide_as_policy_test_does() {
        let cases: &[(&str, &str)] = &[
            (
                "package p\nsmall if input.gpus <= 8\nallow if small with input.gpus as 1\n",
                r#"[{"result":true}]"#,
            ),
            (
                "package p\nlimits.gpus := 8\nallow := limits.gpus\n",
                r#"[{"result":8}]"#,
            ),
            (
                "package p\nobj[\"a\"] := 1\nobj[\"b\"] := 2\nallow := obj\n",
                r#"[{"result":{"a":1,"b":2}}]"#,
            ),
        ];
        for (rego, want) in cases {
            let (sandbox, native) = both_ways(rego, "{}");
            assert_eq!(sandbox, native, "{rego}");
            assert_eq!(sandbox.as_deref(), Ok(*want), "{rego}");
        }
    }
}
