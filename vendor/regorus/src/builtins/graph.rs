// Copyright (c) Microsoft Corporation.
// Licensed under the MIT License.

#![allow(clippy::pattern_type_mismatch)]

use crate::ast::{Expr, Ref};
use crate::builtins;
use crate::builtins::utils::{enforce_limit, ensure_args_count, ensure_object};
use crate::lexer::Span;
use crate::value::Object;
use crate::value::Value;
use crate::*;

use alloc::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};

pub fn register(m: &mut builtins::BuiltinsMap<&'static str, builtins::BuiltinFcn>) {
    m.insert("graph.reachable", (reachable, 2));
    m.insert("graph.reachable_paths", (reachable_paths, 2));
    m.insert("walk", (walk, 1));
}

fn reachable(span: &Span, params: &[Ref<Expr>], args: &[Value], strict: bool) -> Result<Value> {
    let name = "graph.reachable";
    ensure_args_count(span, name, params, args, 2)?;

    let graph = ensure_object(name, &params[0], args[0].clone())?;
    let mut worklist = vec![];

    match &args[1] {
        Value::Array(arr) => {
            for node in arr.iter() {
                worklist.push(node.clone());
                // Guard worklist growth when seeding traversal from an array.
                enforce_limit()?;
            }
        }
        Value::Set(set) => {
            for node in set.iter() {
                worklist.push(node.clone());
                // Guard worklist growth when seeding traversal from a set.
                enforce_limit()?;
            }
        }
        _ if strict => bail!(params[1].span().error("initial vertices must be array/set")),
        _ => return Ok(Value::Undefined),
    }

    let mut reachable = BTreeSet::new();
    while let Some(v) = worklist.pop() {
        if reachable.contains(&v) {
            continue;
        }

        match graph.get(&v) {
            Some(Value::Array(arr)) => {
                for neighbor in arr.iter() {
                    worklist.push(neighbor.clone());
                    // Guard worklist growth when enqueuing array neighbors.
                    enforce_limit()?;
                }
            }
            Some(Value::Set(set)) => {
                for neighbor in set.iter() {
                    worklist.push(neighbor.clone());
                    // Guard worklist growth when enqueuing set neighbors.
                    enforce_limit()?;
                }
            }
            Some(_) => (),
            _ => continue,
        }

        reachable.insert(v);
        // Guard reachable set size as discovered vertices accumulate.
        enforce_limit()?;
    }

    Ok(Value::from_set(reachable))
}

/// Gantry: the most path nodes `graph.reachable_paths` emits, over all its paths (each emitted
/// path counted, kept or a duplicate): a bound on the result and on the work, which is
/// proportional to it (every call below emits at least one node). Beyond it, an error that
/// always propagates (a `LimitError`), not an undefined `deny`.
const MAX_PATH_NODES: usize = 1 << 22;

/// The neighbours of a node, as OPA's `foreachVertex`: an array's in order, a set's sorted;
/// anything else (null, a number, an object) has none (`numberOfEdges` is 0).
fn neighbours(edges: &Value) -> Vec<&Value> {
    match edges {
        Value::Array(arr) => arr.iter().collect(),
        Value::Set(set) => set.iter_sorted().collect(),
        _ => Vec::new(),
    }
}

/// The result set, and the nodes emitted so far.
#[derive(Default)]
struct Paths {
    set: BTreeSet<Value>,
    nodes: usize,
}

impl Paths {
    /// Adds `path`, counting it against [`MAX_PATH_NODES`] before it is built.
    fn add(&mut self, path: &[Value]) -> Result<()> {
        self.nodes = self.nodes.saturating_add(path.len().max(1));
        if self.nodes > MAX_PATH_NODES {
            let size = core::mem::size_of::<Value>() as u64;
            return Err(anyhow::Error::new(crate::LimitError::MemoryLimitExceeded {
                usage: (self.nodes as u64).saturating_mul(size),
                limit: (MAX_PATH_NODES as u64).saturating_mul(size),
            })
            .context(format!(
                "graph.reachable_paths: the paths would hold more than {MAX_PATH_NODES} nodes"
            )));
        }
        self.set.insert(Value::from_array(path.to_vec()));
        enforce_limit()
    }
}

/// One `pathBuilder` call with neighbours left to visit.
struct Frame<'g> {
    edges: Vec<&'g Value>,
    next: usize,
}

/// Gantry: OPA's `pathBuilder` (v1 `topdown/reachable.go`, as fixed by OPA's PR 8510 for its
/// issues 5871 and 6128) from `first`, a neighbour of the initial `node`, with an explicit stack
/// (OPA recurses as deep as the graph is long). Each call's `reached` is its caller's and its own
/// root (OPA copies the set per call): the nodes on the path, so every simple path is listed,
/// and a neighbour already on it ends the path there. OPA 1.0 to 1.15 shared one set and listed
/// fewer paths (a path through a node reached on another branch was lost); upstream regorus
/// listed every simple path too but recursed. Every call emits at least one path, so the bound
/// on emitted nodes bounds the work (2^n paths on a ladder of n diamonds, in OPA too).
fn path_builder<'g>(
    graph: &'g Object,
    node: &'g Value,
    first: &'g Value,
    paths: &mut Paths,
) -> Result<()> {
    // A multiset: the first call's root may be `node` itself (a self loop), which OPA enters.
    let mut reached: BTreeMap<&Value, usize> = BTreeMap::new();
    reached.insert(node, 1);
    let mut path = vec![node.clone()];
    let mut stack: Vec<Frame<'g>> = Vec::new();
    let mut enter = Some(first);
    loop {
        if let Some(root) = enter.take() {
            match graph.get(root) {
                // Not in the graph: the path so far, without it.
                None => paths.add(&path)?,
                Some(edges) => {
                    path.push(root.clone());
                    let edges = neighbours(edges);
                    if edges.is_empty() {
                        paths.add(&path)?;
                        path.pop();
                    } else {
                        let n = reached.entry(root).or_insert(0);
                        *n = n.saturating_add(1);
                        stack.push(Frame { edges, next: 0 });
                    }
                }
            }
        }
        let Some(frame) = stack.last_mut() else {
            return Ok(());
        };
        match frame.edges.get(frame.next) {
            None => {
                stack.pop();
                if let Some(root) = path.pop() {
                    if let Some(n) = reached.get_mut(&root) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            reached.remove(&root);
                        }
                    }
                }
            }
            Some(&neighbour) => {
                frame.next += 1;
                if reached.contains_key(neighbour) {
                    paths.add(&path)?;
                } else {
                    enter = Some(neighbour);
                }
            }
        }
    }
}

fn reachable_paths(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    strict: bool,
) -> Result<Value> {
    let name = "graph.reachable_paths";
    ensure_args_count(span, name, params, args, 2)?;

    let graph = ensure_object(name, &params[0], args[0].clone())?;
    let initial: Vec<&Value> = match &args[1] {
        Value::Array(arr) => arr.iter().collect(),
        Value::Set(set) => set.iter_sorted().collect(),
        _ if strict => bail!(params[1].span().error("initial vertices must be array/set")),
        _ => return Ok(Value::Undefined),
    };

    // Gantry: OPA's `builtinReachablePaths`. Each (initial node, neighbour) starts afresh, so
    // one seen before adds nothing new (a repeated initial node, a repeated edge): skipped.
    let mut paths = Paths::default();
    let mut started: BTreeSet<(&Value, &Value)> = BTreeSet::new();
    for node in initial {
        let Some(edges) = graph.get(node) else {
            continue;
        };
        let edges = neighbours(edges);
        if edges.is_empty() {
            paths.add(core::slice::from_ref(node))?;
        }
        for neighbour in edges {
            if started.insert((node, neighbour)) {
                path_builder(&graph, node, neighbour, &mut paths)?;
            }
        }
    }

    Ok(Value::from_set(paths.set))
}

fn walk_visit(path: &mut Vec<Value>, value: &Value, paths: &mut Vec<Value>) -> Result<()> {
    {
        let path = Value::from_array(path.clone());
        paths.push(Value::from_array([path, value.clone()].into()));
        // Guard walk result growth when emitting a new path/value pair.
        enforce_limit()?;
    }
    match value {
        Value::Array(arr) => {
            for (idx, elem) in arr.iter().enumerate() {
                path.push(Value::from(idx));
                // Guard path stack growth while traversing array members.
                enforce_limit()?;
                walk_visit(path, elem, paths)?;
                path.pop();
            }
        }
        Value::Set(set) => {
            for elem in set.iter() {
                path.push(elem.clone());
                // Guard path stack growth while traversing set members.
                enforce_limit()?;
                walk_visit(path, elem, paths)?;
                path.pop();
            }
        }
        Value::Object(obj) => {
            for (key, value) in obj.iter_sorted() {
                path.push(key.clone());
                // Guard path stack growth while traversing object entries.
                enforce_limit()?;
                walk_visit(path, value, paths)?;
                path.pop();
            }
        }
        _ => (),
    }
    Ok(())
}

fn walk(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "walk";
    ensure_args_count(span, name, params, args, 1)?;
    let mut paths = vec![];
    walk_visit(&mut vec![], &args[0], &mut paths)?;
    Ok(Value::from_array(paths))
}
