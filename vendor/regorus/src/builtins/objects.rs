// Copyright (c) Microsoft Corporation.
// Licensed under the MIT License.

#![allow(clippy::pattern_type_mismatch)]

use crate::ast::{Expr, Ref};
use crate::builtins;
use crate::builtins::utils::{enforce_limit, ensure_args_count, ensure_array, ensure_object};
use crate::lexer::Span;
use crate::Rc;
use crate::Value;
use crate::*;

use alloc::collections::{BTreeMap, BTreeSet};
use core::iter::Iterator;

use anyhow::{bail, Result};

pub fn register(m: &mut builtins::BuiltinsMap<&'static str, builtins::BuiltinFcn>) {
    m.insert("json.filter", (json_filter, 2));
    m.insert("json.remove", (json_remove, 2));
    m.insert("object.filter", (filter, 2));
    m.insert("object.get", (get, 3));
    m.insert("object.keys", (keys, 1));
    m.insert("object.remove", (remove, 2));
    m.insert("object.subset", (subset, 2));
    m.insert("object.union", (object_union, 2));
    m.insert("object.union_n", (object_union_n, 1));

    #[cfg(feature = "jsonschema")]
    {
        m.insert("json.match_schema", (json_match_schema, 2));
        m.insert("json.verify_schema", (json_verify_schema, 1));
    }

    #[cfg(feature = "jsonpatch")]
    {
        m.insert("json.patch", (json_patch, 2));
    }
}

// Gantry: `json.filter` and `json.remove` are OPA's (v1/topdown/json.go: `parsePath`,
// `pathsToObject`, `jsonRemove`; v1/ast/term.go: `filterObject`); PATCHES.md lists where
// upstream differed. No path nor document sets a depth of recursion: the merged paths are a
// flat arena that ends where the document does, and the walk keeps its own stack (upstream's
// filter tree was as deep as the path: a trap in the module, natively an abort).

/// The merged paths, OPA's `pathsToObject` (a leaf is its `null`).
struct PathTree {
    nodes: Vec<PathNode>,
}

#[derive(Default)]
struct PathNode {
    /// A path ends here: the value goes (json.remove) or stays (json.filter) whole.
    leaf: bool,
    children: BTreeMap<Value, usize>,
}

/// `i` where `seg` is `strconv.Itoa(i)`: OPA looks array elements up by that string only.
fn array_index(seg: &Value) -> Option<usize> {
    let Value::String(s) = seg else {
        return None;
    };
    let canonical = !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s.len() == 1 || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

/// What the walk finds under `seg` in `doc` (an object's key, an array's index, a set's member).
fn path_child(doc: &Value, seg: &Value) -> Option<Value> {
    match doc {
        Value::Object(o) => o.get(seg).cloned(),
        Value::Array(a) => array_index(seg).and_then(|i| a.get(i)).cloned(),
        Value::Set(s) => s.get(seg).cloned(),
        _ => None,
    }
}

const fn is_collection(v: &Value) -> bool {
    matches!(v, Value::Array(_) | Value::Object(_) | Value::Set(_))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PathOp {
    Filter,
    Remove,
}

/// A collection being rebuilt: the members left, each with its node if a path goes there.
struct Frame {
    members: alloc::vec::IntoIter<(Value, Value, Option<usize>)>,
    out: Built,
    /// The key of the member being rebuilt in the frame above.
    pending: Value,
}

enum Built {
    Array(Vec<Value>),
    Object(BTreeMap<Value, Value>),
    Set(BTreeSet<Value>),
}

impl Built {
    fn put(&mut self, key: Value, value: Value) -> Result<()> {
        match self {
            Built::Array(a) => a.push(value),
            Built::Object(o) => {
                o.insert(key, value);
            }
            Built::Set(s) => {
                s.insert(value);
            }
        }
        enforce_limit()
    }

    fn into_value(self) -> Value {
        match self {
            Built::Array(a) => Value::from_array(a),
            Built::Object(o) => Value::from_map(o),
            Built::Set(s) => Value::from_set(s),
        }
    }
}

impl PathTree {
    fn new() -> Self {
        Self {
            nodes: vec![PathNode::default()],
        }
    }

    /// Adds a path, as `pathsToObject` does: an empty one adds nothing, a path through a leaf
    /// nothing, a path ending at a node makes it a leaf. A segment past where `doc` ends (a
    /// scalar, a missing member) cannot change either result and is not added.
    fn add(&mut self, doc: &Value, path: impl Iterator<Item = Value>) -> Result<()> {
        let mut path = path.peekable();
        let mut node = 0;
        let mut doc = doc.clone();
        while let Some(seg) = path.next() {
            let child_doc = path_child(&doc, &seg);
            let fresh = self.nodes.len();
            let Some(current) = self.nodes.get_mut(node) else {
                break;
            };
            if current.leaf {
                break;
            }
            let child = *current.children.entry(seg).or_insert(fresh);
            if child == fresh {
                self.nodes.push(PathNode::default());
                enforce_limit()?;
            }
            if path.peek().is_none() {
                if let Some(last) = self.nodes.get_mut(child) {
                    last.leaf = true;
                    last.children.clear();
                }
                break;
            }
            match child_doc {
                Some(d) if is_collection(&d) => {
                    doc = d;
                    node = child;
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// The frame rebuilding `doc` below interior `node`; `None` for a scalar (kept whole).
    fn open(&self, doc: &Value, node: usize, op: PathOp) -> Result<Option<Frame>> {
        let Some(PathNode { children, .. }) = self.nodes.get(node) else {
            return Ok(None);
        };
        let remove = op == PathOp::Remove;
        let mut members = Vec::new();
        let out = match doc {
            Value::Object(o) if remove => {
                for (k, v) in o.iter() {
                    members.push((k.clone(), v.clone(), children.get(k).copied()));
                }
                Built::Object(BTreeMap::new())
            }
            Value::Object(o) => {
                for (k, &c) in children {
                    if let Some(v) = o.get(k) {
                        members.push((k.clone(), v.clone(), Some(c)));
                    }
                }
                Built::Object(BTreeMap::new())
            }
            Value::Array(a) => {
                let by_index: BTreeMap<usize, usize> = children
                    .iter()
                    .filter_map(|(k, &c)| Some((array_index(k)?, c)))
                    .collect();
                if remove {
                    for (i, v) in a.iter().enumerate() {
                        members.push((Value::Null, v.clone(), by_index.get(&i).copied()));
                    }
                } else {
                    // In the array's order, as `filterObject` walks it.
                    for (i, c) in by_index {
                        if let Some(v) = a.get(i) {
                            members.push((Value::Null, v.clone(), Some(c)));
                        }
                    }
                }
                Built::Array(Vec::new())
            }
            Value::Set(s) if remove => {
                for v in s.iter() {
                    members.push((Value::Null, v.clone(), children.get(v).copied()));
                }
                Built::Set(BTreeSet::new())
            }
            Value::Set(s) => {
                for (k, &c) in children {
                    if let Some(v) = s.get(k) {
                        members.push((Value::Null, v.clone(), Some(c)));
                    }
                }
                Built::Set(BTreeSet::new())
            }
            _ => return Ok(None),
        };
        enforce_limit()?;
        Ok(Some(Frame {
            members: members.into_iter(),
            out,
            pending: Value::Null,
        }))
    }

    /// `jsonRemove` / `filterObject` of `doc` (an object), without recursion.
    fn apply(&self, doc: &Value, op: PathOp) -> Result<Value> {
        let Some(root) = self.open(doc, 0, op)? else {
            return Ok(doc.clone());
        };
        let mut stack = vec![root];
        while let Some(top) = stack.last_mut() {
            if let Some((key, value, node)) = top.members.next() {
                let frame = match node.and_then(|n| Some((n, self.nodes.get(n)?.leaf))) {
                    // A leaf: json.remove drops it, json.filter keeps it whole.
                    Some((_, true)) if op == PathOp::Remove => continue,
                    Some((n, false)) => self.open(&value, n, op)?,
                    _ => None,
                };
                match frame {
                    Some(frame) => {
                        top.pending = key;
                        stack.push(frame);
                    }
                    None => top.out.put(key, value)?,
                }
            } else {
                let Some(done) = stack.pop() else {
                    break;
                };
                let built = done.out.into_value();
                let Some(parent) = stack.last_mut() else {
                    return Ok(built);
                };
                let key = core::mem::replace(&mut parent.pending, Value::Null);
                parent.out.put(key, built)?;
            }
        }
        Ok(doc.clone())
    }
}

/// OPA's `getJSONPaths` and `parsePath`, merged into a tree over `doc`.
fn json_paths(name: &str, param: &Expr, doc: &Value, paths: &Value) -> Result<PathTree> {
    let paths: Box<dyn Iterator<Item = &Value>> = match paths {
        Value::Array(a) => Box::new(a.iter()),
        Value::Set(s) => Box::new(s.iter()),
        other => bail!(param.span().error(&format!(
            "{name}: operand 2 must be one of {{set, array}} but got {}",
            builtins::types::get_type(other)
        ))),
    };
    let mut tree = PathTree::new();
    for path in paths {
        match path {
            // OPA: "" is the empty path, which names nothing.
            Value::String(s) if s.is_empty() => {}
            Value::String(s) => {
                let parts = s.trim_start_matches('/').split('/');
                let segs = parts.map(|p| Value::String(p.replace("~1", "/").replace("~0", "~").into()));
                tree.add(doc, segs)?;
            }
            Value::Array(a) => tree.add(doc, a.iter().cloned())?,
            other => bail!(param.span().error(&format!(
                "{name}: operand 2 must be one of {{set, array}} containing string paths or array of path segments but got {}",
                builtins::types::get_type(other)
            ))),
        }
    }
    Ok(tree)
}

fn json_filter(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "json.filter";
    ensure_args_count(span, name, params, args, 2)?;
    ensure_object(name, &params[0], args[0].clone())?;
    let tree = json_paths(name, &params[1], &args[0], &args[1])?;
    tree.apply(&args[0], PathOp::Filter)
}

fn json_remove(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "json.remove";
    ensure_args_count(span, name, params, args, 2)?;
    ensure_object(name, &params[0], args[0].clone())?;
    let tree = json_paths(name, &params[1], &args[0], &args[1])?;
    tree.apply(&args[0], PathOp::Remove)
}

fn filter(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "object.filter";
    ensure_args_count(span, name, params, args, 2)?;
    let mut obj = ensure_object(name, &params[0], args[0].clone())?;
    let obj_ref = Rc::make_mut(&mut obj);
    match &args[1] {
        Value::Array(a) => {
            let keys: BTreeSet<&Value> = a.iter().collect();
            obj_ref.retain(|k, _| keys.contains(k))
        }
        Value::Set(s) => obj_ref.retain(|k, _| s.contains(k)),
        Value::Object(o) => obj_ref.retain(|k, _| o.contains_key(k)),
        _ => bail!(span.error(format!("`{name}` requires array/object/set argument").as_str())),
    };

    Ok(Value::Object(obj))
}

fn get(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "object.get";
    ensure_args_count(span, name, params, args, 3)?;
    let obj = ensure_object(name, &params[0], args[0].clone())?;
    let default = &args[2];

    Ok(match &args[1] {
        Value::Array(keys) => {
            let mut v = &args[0];
            for a in keys.iter() {
                v = &v[a];
                if v == &Value::Undefined {
                    v = default;
                    break;
                }
            }
            v.clone()
        }
        key => match obj.get(key) {
            Some(v) => v.clone(),
            _ => default.clone(),
        },
    })
}

fn keys(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "object.keys";
    ensure_args_count(span, name, params, args, 1)?;
    let obj = ensure_object(name, &params[0], args[0].clone())?;
    Ok(Value::from_set(obj.keys().cloned().collect()))
}

fn remove(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "object.remove";
    ensure_args_count(span, name, params, args, 2)?;
    let mut obj = ensure_object(name, &params[0], args[0].clone())?;
    let obj_ref = Rc::make_mut(&mut obj);
    match &args[1] {
        Value::Array(a) => {
            let keys: BTreeSet<&Value> = a.iter().collect();
            obj_ref.retain(|k, _| !keys.contains(k))
        }
        Value::Set(s) => obj_ref.retain(|k, _| !s.contains(k)),
        Value::Object(o) => obj_ref.retain(|k, _| !o.contains_key(k)),
        _ => bail!(span.error(format!("`{name}` requires array/object/set argument").as_str())),
    };

    Ok(Value::Object(obj))
}

fn is_subset(sup: &Value, sub: &Value) -> bool {
    match (sup, sub) {
        (Value::Object(sup), Value::Object(sub)) => {
            sub.iter().all(|(k, vsub)| {
                match sup.get(k) {
                    //		    Some(vsup @ Value::Object(_)) => is_subset(vsup, vsub),
                    Some(vsup) => is_subset(vsup, vsub),
                    _ => false,
                }
            })
        }
        (Value::Set(sup), Value::Set(sub)) => sub.is_subset(sup),
        // Gantry: an empty array is in every array (`windows(0)` panicked).
        (Value::Array(_), Value::Array(sub)) if sub.is_empty() => true,
        (Value::Array(sup), Value::Array(sub)) => sup
            .as_slice()
            .windows(sub.len())
            .any(|w| w == sub.as_slice()),
        (Value::Array(sup), Value::Set(_)) => {
            let sup = Value::from_set(sup.iter().cloned().collect());
            is_subset(&sup, sub)
        }
        (sup, sub) => sup == sub,
    }
}

fn subset(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "object.subset";
    ensure_args_count(span, name, params, args, 2)?;

    Ok(Value::Bool(is_subset(&args[0], &args[1])))
}

fn union(obj1: &Value, obj2: &Value) -> Result<Value> {
    match (obj1, obj2) {
        (Value::Object(m1), Value::Object(m2)) => {
            let mut u = obj1.clone();
            let um = u.as_object_mut()?;

            for (key2, value2) in m2.iter() {
                let vm = match m1.get(key2) {
                    Some(value1) => union(value1, value2)?,
                    _ => value2.clone(),
                };
                um.insert(key2.clone(), vm);
            }
            Ok(u)
        }
        _ => Ok(obj2.clone()),
    }
}

fn object_union(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "object.union";
    ensure_args_count(span, name, params, args, 2)?;

    let _ = ensure_object(name, &params[0], args[0].clone())?;
    let _ = ensure_object(name, &params[1], args[1].clone())?;

    let result = union(&args[0], &args[1])?;
    Ok(result)
}

fn object_union_n(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    strict: bool,
) -> Result<Value> {
    let name = "object.union_n";
    ensure_args_count(span, name, params, args, 1)?;

    let arr = ensure_array(name, &params[0], args[0].clone())?;

    let mut u = Value::new_object();
    for (idx, a) in arr.iter().enumerate() {
        if a.as_object().is_err() {
            if strict {
                bail!(params[0]
                    .span()
                    .error(&format!("item at index {idx} is not an object")));
            }
            return Ok(Value::Undefined);
        }
        u = union(&u, a)?;
    }

    Ok(u)
}

#[cfg(feature = "jsonschema")]
fn compile_json_schema(param: &Ref<Expr>, arg: &Value) -> Result<jsonschema::Validator> {
    let schema_str = match arg {
        Value::String(schema_str) => schema_str.as_ref().to_string(),
        _ => arg.to_json_str()?,
    };

    if let Ok(schema) = serde_json::from_str(&schema_str) {
        match jsonschema::validator_for(&schema) {
            Ok(schema) => return Ok(schema),
            Err(e) => bail!(e.to_string()),
        }
    }
    bail!(param.span().error("not a valid json schema"))
}

#[cfg(feature = "jsonschema")]
fn json_verify_schema(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    strict: bool,
) -> Result<Value> {
    let name = "json.verify_schema";
    ensure_args_count(span, name, params, args, 1)?;

    Ok(Value::from_array(
        match compile_json_schema(&params[0], &args[0]) {
            Ok(_) => [Value::Bool(true), Value::Null],
            Err(e) if strict => bail!(params[0]
                .span()
                .error(format!("invalid schema: {e}").as_str())),
            Err(e) => [Value::Bool(false), Value::String(e.to_string().into())],
        }
        .to_vec(),
    ))
}

#[cfg(feature = "jsonschema")]
fn json_match_schema(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    strict: bool,
) -> Result<Value> {
    let name = "json.match_schema";
    ensure_args_count(span, name, params, args, 2)?;

    let document: serde_json::Value = serde_json::from_str(&args[0].to_json_str()?)
        .map_err(|err| span.error(&format!("Failed to parse JSON: {err}")))?;

    Ok(Value::from_array(
        match compile_json_schema(&params[1], &args[1]) {
            Ok(schema) => match schema.validate(&document) {
                Ok(_) => [Value::Bool(true), Value::Null],
                Err(e) => [Value::Bool(false), Value::from(e.to_string())],
            },
            Err(e) if strict => bail!(params[1]
                .span()
                .error(format!("invalid schema: {e}").as_str())),
            Err(e) => [Value::Bool(false), Value::String(e.to_string().into())],
        }
        .to_vec(),
    ))
}

// Note: matching OPA's own `builtinJSONPatch`, any failure while applying the
// patch (bad path, missing attribute, failed `test`, ...) yields Undefined
// rather than a hard error -- this builtin never errors on a malformed patch,
// regardless of the `strict-builtin-errors` setting.
#[cfg(feature = "jsonpatch")]
fn json_patch(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "json.patch";
    ensure_args_count(span, name, params, args, 2)?;
    ensure_array(name, &params[1], args[1].clone())?;

    let ops = args[1].as_array()?;

    let patched = super::json_patch::apply(&args[0], ops.as_slice());
    match patched {
        Ok(patched) => Ok(patched),
        // Resource-limit errors must propagate rather than look like an
        // invalid patch, so callers cannot bypass configured limits.
        Err(err)
            if err
                .downcast_ref::<crate::utils::limits::LimitError>()
                .is_some() =>
        {
            Err(err)
        }
        Err(_) => Ok(Value::Undefined),
    }
}
