//! What `gantry policy build` refuses before it writes anything: whatever the engine module would
//! refuse when a host loads the bundle, or fail on at every evaluation that reaches it.
//!
//! - entrypoints that are not slash-separated paths below `data` (`a/b/allow`, as with
//!   `opa build -e`), with the spelling to use;
//! - Rego that does not parse;
//! - calls to functions that do not exist (neither a builtin of the engine nor a function of the
//!   policy, directly, by package path or through an import) or that get the wrong number of
//!   arguments: the interpreter fails on them only when it reaches them, so, as OPA's compiler
//!   does, they are refused in every module, reached or not;
//! - and then the load itself: the engine module's own code (`gantry_policy_engine::policy`), run
//!   natively on the policy the bundle would carry, compiles every entrypoint for the bundle's data exactly as
//!   the module does when a host loads it.
//!
//! Every refusal names its file, line and column (a tab counts as one column).

use std::collections::{BTreeMap, BTreeSet};

use gantry_policy_engine::diagnostic::{self, Diagnostic};
use regorus::unstable::{Expr, Literal, Module, Query, Ref, Rule, RuleHead, Span};
use regorus::utils::get_path_string;

use super::PolicyError;
use super::source::{PolicySource, rule_of};

/// Checks `entrypoints` and the policy as described in the module documentation.
pub fn check(source: &PolicySource, entrypoints: &[String]) -> Result<(), PolicyError> {
    if entrypoints.is_empty() {
        return Err(PolicyError::Source(
            "no entrypoint given (-e package/path/rule)".into(),
        ));
    }
    for e in entrypoints {
        entrypoint_syntax(e)?;
    }
    super::source::check_data(&source.data, "data.json")?;
    let mut engine = source.engine(false)?;
    let refused = calls(engine.get_modules());
    if !refused.is_empty() {
        return Err(PolicyError::Refused(refused));
    }
    load(source, entrypoints, &mut engine)
}

/// Entrypoints are `a/b/rule` (below `data`); a dotted or `data/`-prefixed one gets the spelling
/// to use instead.
pub fn entrypoint_syntax(entrypoint: &str) -> Result<(), PolicyError> {
    let path = entrypoint.trim_matches('/');
    let refuse = |why: &str, hint: Option<String>| {
        let hint = hint.map_or(String::new(), |h| format!(": use `-e {h}`"));
        Err(PolicyError::Source(format!(
            "entrypoint `{entrypoint}`: {why}{hint}"
        )))
    };
    let below_data = |p: &str| {
        p.strip_prefix("data.")
            .or_else(|| p.strip_prefix("data/"))
            .unwrap_or(p)
            .replace('.', "/")
    };
    if path.contains('.') {
        return refuse(
            "an entrypoint is a slash-separated path below `data`, as with `opa build -e`",
            Some(below_data(path)),
        );
    }
    if path == "data" || path.starts_with("data/") {
        return refuse(
            "an entrypoint is a path below `data`, without it",
            (path != "data").then(|| below_data(path)),
        );
    }
    if path.is_empty() || path.split('/').any(str::is_empty) {
        return refuse(
            "an entrypoint is a non-empty path like `package/path/rule`",
            None,
        );
    }
    Ok(())
}

/// The load path of the engine module, run natively: parse the policy's description, compile
/// every entrypoint for the data. An entrypoint that names no rule says so, with the packages
/// the policy has.
fn load(
    source: &PolicySource,
    entrypoints: &[String],
    engine: &mut regorus::Engine,
) -> Result<(), PolicyError> {
    let description = source.policy_description(entrypoints).to_string();
    let policy = gantry_policy_engine::policy::Policy::from_json(
        &description,
        &super::source::native_host(),
    )
    .map_err(|e| PolicyError::Source(e.to_string()))?;
    let data = source.data_value()?;
    let rules = rule_paths(engine.get_modules());
    for e in entrypoints {
        if let Err(err) = policy.compile_entrypoint(e, &data) {
            let rule = rule_of(e);
            if rules.contains(&rule) {
                return Err(PolicyError::Source(err.to_string()));
            }
            let packages = engine.get_packages().unwrap_or_default();
            return Err(PolicyError::Source(format!(
                "entrypoint `{e}`: {rule} is neither a rule nor a package of the policy (packages: {})",
                packages.join(", ")
            )));
        }
    }
    Ok(())
}

/// The path of every rule the modules define (`data.pkg.rule`).
fn rule_paths(modules: &[Ref<Module>]) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for module in modules {
        let Ok(package) = get_path_string(&module.package.refr, Some("data")) else {
            continue;
        };
        for rule in &module.policy {
            let refr = match rule.as_ref() {
                Rule::Spec { head, .. } => match head {
                    RuleHead::Compr { refr, .. }
                    | RuleHead::Set { refr, .. }
                    | RuleHead::Func { refr, .. } => refr,
                },
                Rule::Default { refr, .. } => refr,
            };
            if let Ok(path) = get_path_string(refr, Some(&package)) {
                paths.insert(path);
            }
        }
    }
    paths
}

/// Every function of the policy (`data.pkg.f` -> arity) and every default rule's path.
struct Functions {
    arity: BTreeMap<String, usize>,
    defaults: BTreeSet<String>,
}

impl Functions {
    fn of(modules: &[Ref<Module>]) -> Self {
        let mut arity = BTreeMap::new();
        let mut defaults = BTreeSet::new();
        for module in modules {
            let Ok(package) = get_path_string(&module.package.refr, Some("data")) else {
                continue;
            };
            for rule in &module.policy {
                match rule.as_ref() {
                    Rule::Spec {
                        head: RuleHead::Func { refr, args, .. },
                        ..
                    } => {
                        if let Ok(path) = get_path_string(refr, Some(&package)) {
                            arity.insert(path, args.len());
                        }
                    }
                    Rule::Default { refr, .. } => {
                        if let Ok(path) = get_path_string(refr, Some(&package)) {
                            defaults.insert(path);
                        }
                    }
                    Rule::Spec { .. } => {}
                }
            }
        }
        Self { arity, defaults }
    }

    fn known(&self, path: &str) -> bool {
        self.arity.contains_key(path) || self.defaults.contains(path)
    }
}

/// One module's view: its package path and its imports of `data` (alias -> path).
struct Scope {
    package: String,
    imports: BTreeMap<String, String>,
}

impl Scope {
    fn of(module: &Module) -> Option<Self> {
        let package = get_path_string(&module.package.refr, Some("data")).ok()?;
        let imports = module
            .imports
            .iter()
            .filter_map(|i| {
                let path = get_path_string(&i.refr, None).ok()?;
                if !path.starts_with("data.") {
                    return None;
                }
                let alias = match &i.r#as {
                    Some(alias) => alias.text().to_string(),
                    None => path.rsplit('.').next()?.to_string(),
                };
                Some((alias, path))
            })
            .collect();
        Some(Self { package, imports })
    }

    /// The arity a call to `path` must have (plus one: Rego's output argument), `None` for any
    /// (`print`), or an error when nothing by that name exists. Mirrors the interpreter's lookup:
    /// an import alias first, then the function by its path (relative to the package unless it
    /// starts with `data.`), a default function, `print`, then the builtins.
    fn resolve(&self, path: &str, functions: &Functions) -> Result<Option<usize>, String> {
        let through_import = path.split_once('.').map_or((path, ""), |(a, r)| (a, r));
        if let Some(target) = self.imports.get(through_import.0) {
            let candidate = if through_import.1.is_empty() {
                target.clone()
            } else {
                format!("{target}.{}", through_import.1)
            };
            if functions.known(&candidate) {
                return Ok(functions.arity.get(&candidate).copied());
            }
        }
        let full = if path.starts_with("data.") {
            path.to_string()
        } else {
            format!("{}.{path}", self.package)
        };
        if let Some(n) = functions.arity.get(&full) {
            return Ok(Some(*n));
        }
        if functions.defaults.contains(&full) || functions.defaults.contains(path) {
            return Ok(None);
        }
        if path == "print" {
            return Ok(None);
        }
        match regorus::unstable::BUILTINS.get(path) {
            Some((_, n)) => Ok(Some(usize::from(*n))),
            // And those the policy engine adds (OPA's that regorus lacks).
            None => match gantry_policy_engine::go_builtins::added_arity(path) {
                Some(n) => Ok(Some(usize::from(n))),
                None => Err(format!("undefined function {path}")),
            },
        }
    }
}

/// Calls to undefined functions, or with the wrong number of arguments, in every module.
fn calls(modules: &[Ref<Module>]) -> Vec<Diagnostic> {
    let functions = Functions::of(modules);
    let mut refused = Vec::new();
    for module in modules {
        let Some(scope) = Scope::of(module) else {
            continue;
        };
        visit_module(module, &mut |span, fcn, args| {
            let Ok(path) = get_path_string(fcn, None) else {
                return;
            };
            let problem = match scope.resolve(&path, &functions) {
                Err(e) => Some(e),
                Ok(Some(n)) if args != n && args != n + 1 => Some(format!(
                    "{path} takes {n} argument{} (or {} with an output), got {args}",
                    if n == 1 { "" } else { "s" },
                    n + 1
                )),
                Ok(_) => None,
            };
            if let Some(message) = problem {
                let at = leftmost(fcn).unwrap_or(span);
                refused.extend(diagnostic::parse(&at.message("error", &message)));
            }
        });
    }
    refused.sort_by(|a, b| {
        let key = |d: &Diagnostic| d.location.as_ref().map(|l| (l.file.clone(), l.line, l.col));
        key(a).cmp(&key(b))
    });
    refused
}

/// Where a function reference starts (its root name: `lib` in `lib.f`); regorus places a call
/// at its parenthesis.
fn leftmost(mut fcn: &Expr) -> Option<&Span> {
    loop {
        match fcn {
            Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => fcn = refr,
            Expr::Var { span, .. } => return Some(span),
            _ => return None,
        }
    }
}

/// A node still to visit.
enum Node<'a> {
    Expr(&'a Expr),
    Query(&'a Query),
}

/// Calls `on_call(span, function, number of arguments)` for every call in `module`, heads and
/// bodies, `else` branches, comprehensions, `with` modifiers, `every` and `some ... in`. An
/// explicit stack, not recursion: nesting depth is up to the policy's author.
fn visit_module(module: &Module, on_call: &mut dyn FnMut(&Span, &Expr, usize)) {
    let mut stack: Vec<Node<'_>> = Vec::new();
    for rule in &module.policy {
        match rule.as_ref() {
            Rule::Spec { head, bodies, .. } => {
                match head {
                    RuleHead::Compr { refr, assign, .. } => {
                        stack.push(Node::Expr(refr));
                        stack.extend(assign.iter().map(|a| Node::Expr(&a.value)));
                    }
                    RuleHead::Set { refr, key, .. } => {
                        stack.push(Node::Expr(refr));
                        stack.extend(key.iter().map(|k| Node::Expr(k)));
                    }
                    RuleHead::Func {
                        refr, args, assign, ..
                    } => {
                        stack.push(Node::Expr(refr));
                        stack.extend(args.iter().map(|a| Node::Expr(a)));
                        stack.extend(assign.iter().map(|a| Node::Expr(&a.value)));
                    }
                }
                for body in bodies {
                    stack.extend(body.assign.iter().map(|a| Node::Expr(&a.value)));
                    stack.push(Node::Query(&body.query));
                }
            }
            Rule::Default {
                refr, args, value, ..
            } => {
                stack.push(Node::Expr(refr));
                stack.extend(args.iter().map(|a| Node::Expr(a)));
                stack.push(Node::Expr(value));
            }
        }
    }
    while let Some(node) = stack.pop() {
        match node {
            Node::Query(query) => {
                for stmt in &query.stmts {
                    for with in &stmt.with_mods {
                        stack.push(Node::Expr(&with.refr));
                        stack.push(Node::Expr(&with.r#as));
                    }
                    match &stmt.literal {
                        Literal::SomeVars { .. } => {}
                        Literal::SomeIn {
                            key,
                            value,
                            collection,
                            ..
                        } => push_membership(&mut stack, key, value, collection),
                        Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => {
                            stack.push(Node::Expr(expr));
                        }
                        Literal::Every { domain, query, .. } => {
                            stack.push(Node::Expr(domain));
                            stack.push(Node::Query(query));
                        }
                    }
                }
            }
            Node::Expr(expr) => push_children(expr, &mut stack, on_call),
        }
    }
}

/// Pushes the parts of `key, value in collection` (a `some ... in` or a membership test).
fn push_membership<'a>(
    stack: &mut Vec<Node<'a>>,
    key: &'a Option<Ref<Expr>>,
    value: &'a Ref<Expr>,
    collection: &'a Ref<Expr>,
) {
    stack.extend(key.iter().map(|k| Node::Expr(k)));
    stack.push(Node::Expr(value));
    stack.push(Node::Expr(collection));
}

/// Pushes the sub-expressions and queries of `expr`, reporting it first when it is a call.
fn push_children<'a>(
    expr: &'a Expr,
    stack: &mut Vec<Node<'a>>,
    on_call: &mut dyn FnMut(&Span, &Expr, usize),
) {
    match expr {
        Expr::String { .. }
        | Expr::RawString { .. }
        | Expr::Number { .. }
        | Expr::Bool { .. }
        | Expr::Null { .. }
        | Expr::Var { .. } => {}
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            stack.extend(items.iter().map(|i| Node::Expr(i)));
        }
        Expr::Object { fields, .. } => {
            for (_, k, v) in fields {
                stack.push(Node::Expr(k));
                stack.push(Node::Expr(v));
            }
        }
        Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
            stack.push(Node::Expr(term));
            stack.push(Node::Query(query));
        }
        Expr::ObjectCompr {
            key, value, query, ..
        } => {
            stack.push(Node::Expr(key));
            stack.push(Node::Expr(value));
            stack.push(Node::Query(query));
        }
        Expr::Call {
            span, fcn, params, ..
        } => {
            on_call(span, fcn, params.len());
            stack.extend(params.iter().map(|p| Node::Expr(p)));
        }
        Expr::UnaryExpr { expr, .. } => stack.push(Node::Expr(expr)),
        Expr::RefDot { refr, .. } => stack.push(Node::Expr(refr)),
        Expr::RefBrack { refr, index, .. } => {
            stack.push(Node::Expr(refr));
            stack.push(Node::Expr(index));
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            stack.push(Node::Expr(lhs));
            stack.push(Node::Expr(rhs));
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => push_membership(stack, key, value, collection),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by a review: `data.json` (and `--input`) numbers went through serde_json's 64-bit
    /// numbers, so a revoked serial `1208925819614629174706175` reached the sandbox as its
    /// neighbour and `policy test` (exact Rego literals) passed while the bundle allowed. A number
    /// the host cannot carry exactly is refused by file, line and column.
    #[test]
    fn a_number_the_host_cannot_carry_exactly_is_refused_with_its_place() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.rego"),
            "package x
allow := true
",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("data.json"),
            "{\"revoked\": [\n  1208925819614629174706175\n]}",
        )
        .unwrap();
        let e = PolicySource::read(dir.path()).err().unwrap().to_string();
        assert!(
            e.contains("data.json: the number 1208925819614629174706175 cannot be carried exactly")
                && e.contains("line 2 column 3"),
            "{e}"
        );
        std::fs::write(
            dir.path().join("data.json"),
            "{\"revoked\": [\"1208925819614629174706175\", 7]}",
        )
        .unwrap();
        PolicySource::read(dir.path()).unwrap();
    }

    /// The builtins the policy engine adds (`go_builtins::ADDED`) are known to the build check:
    /// a policy using OPA's digests and HS-signed tokens builds.
    #[test]
    fn build_accepts_the_engines_added_crypto_builtins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.rego"),
            "package x\nimport rego.v1\n\nallow if {\n\tcrypto.hmac.equal(crypto.sha256(input.a), input.h)\n\t[true, _, _] := io.jwt.decode_verify(input.t, {\"secret\": \"s\"})\n}\n",
        )
        .unwrap();
        let source = PolicySource::read(dir.path()).unwrap();
        check(&source, &["x/allow".into()]).unwrap();
    }

    /// Two `default`s give a rule two values; the engine module refuses such a policy at load
    /// (see `gantry_policy_engine::policy::one_default_per_rule`), so `policy build` refuses it,
    /// and `policy test`, which ran the tests on the first default, refuses it too.
    #[test]
    fn build_and_test_refuse_two_defaults_for_one_rule() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.rego"),
            "package x\nimport rego.v1\n\ndefault allow := false\n\ndefault allow := true\n\nallow if input.a\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("p_test.rego"),
            "package x\nimport rego.v1\n\ntest_closed if not allow\n",
        )
        .unwrap();
        let source = PolicySource::read(dir.path()).unwrap();
        let refused = |e: &str| {
            e.contains("p.rego:6:1: multiple default rules for data.x.allow (the first at ")
                && e.ends_with("p.rego:4:1)")
        };
        let built = check(&source, &["x/allow".into()]).unwrap_err().to_string();
        assert!(refused(&built), "{built}");
        let tested = super::super::rego_tests::run(&source)
            .map(|outcomes| outcomes.len())
            .unwrap_err()
            .to_string();
        assert!(refused(&tested), "{tested}");
    }
}
