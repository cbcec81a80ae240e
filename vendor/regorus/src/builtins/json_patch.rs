// Copyright (c) Microsoft Corporation.
// Licensed under the MIT License.

//! OPA-compatible edit tree used by `json.patch`.
//!
//! The design follows OPA's `internal/edittree`: patch operations update an
//! intermediate tree and the final `Value` is rendered once. Arrays use a
//! `VecDeque`, making repeated edits at either end cheap instead of cloning
//! and shifting the complete source array for every operation.

#![allow(clippy::pattern_type_mismatch)]

use super::utils::enforce_limit;
use crate::number::Number;
use crate::value::Object;
use crate::Value;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::ToString as _;
use alloc::vec;
use alloc::vec::Vec;
use anyhow::{anyhow, bail, Result};

/// Gantry: the most weight (a value or key 1, a string its bytes more) the `copy` operations of
/// one patch may add, together. A copy is shared (an `Rc` clone), but each doubles the
/// document's logical size: 26 copies of 1 KB are 64 GB to anything that walks the result (its
/// JSON text, `walk`, an equality). OPA builds them; here, beyond the bound, an error.
const MAX_COPIED_WEIGHT: u64 = 1 << 24;

/// Gantry: how deep a patch may place a value (its path's length plus its own nesting). Moves,
/// copies and adds can build a document deeper than any reader gives (Gantry's JSON reader
/// and serde_json stop at 128), and a `Value` is dropped, cloned, compared and written out
/// recursively: past a few thousand levels that exhausts the stack (1 MiB in the sandbox).
const MAX_PATCH_DEPTH: usize = 256;

/// An error that always propagates (`json.patch` and a non-strict call turn others into
/// undefined, which would let a bounded patch look like a failed one).
fn limit_error(usage: u64, limit: u64, what: alloc::string::String) -> anyhow::Error {
    anyhow::Error::new(crate::LimitError::MemoryLimitExceeded { usage, limit }).context(what)
}

#[derive(Debug)]
enum EditNode {
    /// Gantry: a value no edit has reached into, kept whole (and shared: an `Rc` clone, as OPA's
    /// edit tree keeps its terms), opened one level when one does. Upstream turned every value
    /// into nodes on the way in and rebuilt it on the way out: a `copy` copied deeply.
    Value(Value),
    Object(BTreeMap<Value, EditNode>),
    Array(VecDeque<EditNode>),
    // Sets are content-addressed. The rendered member is kept as the key and
    // refreshed whenever a nested edit changes that member.
    Set(BTreeMap<Value, EditNode>),
}

impl EditNode {
    fn from_value(value: &Value) -> Self {
        Self::Value(value.clone())
    }

    /// Opens a whole composite value one level (its members stay whole).
    fn open(&mut self) -> Result<()> {
        let Self::Value(value) = self else {
            return Ok(());
        };
        let opened = match value {
            Value::Object(object) => Self::Object(
                object
                    .iter()
                    .map(|(key, value)| (key.clone(), Self::Value(value.clone())))
                    .collect(),
            ),
            Value::Array(array) => Self::Array(
                array
                    .iter()
                    .map(|value| Self::Value(value.clone()))
                    .collect(),
            ),
            Value::Set(set) => Self::Set(
                set.iter()
                    .map(|value| (value.clone(), Self::Value(value.clone())))
                    .collect(),
            ),
            _ => return Ok(()),
        };
        *self = opened;
        enforce_limit()
    }

    fn render(&self) -> Result<Value> {
        enforce_limit()?;
        Ok(match self {
            Self::Value(value) => value.clone(),
            Self::Object(fields) => {
                let mut object = Object::new();
                for (key, value) in fields {
                    object.insert(key.clone(), value.render()?);
                    enforce_limit()?;
                }
                Value::Object(crate::Rc::new(object))
            }
            Self::Array(items) => {
                let mut array = Vec::with_capacity(items.len());
                for value in items {
                    array.push(value.render()?);
                    enforce_limit()?;
                }
                Value::Array(crate::Rc::new(crate::value::Array::from(array)))
            }
            Self::Set(members) => {
                let mut set = BTreeSet::new();
                for value in members.values() {
                    set.insert(value.render()?);
                    enforce_limit()?;
                }
                Value::from_set(set)
            }
        })
    }

    /// The value at `path` (a loop: a path's length is the patch's to choose).
    fn get(&self, path: &[Value]) -> Result<Value> {
        let mut node = self;
        for (at, head) in path.iter().enumerate() {
            node = match node {
                Self::Value(value) => return value_at(value, &path[at..]),
                Self::Object(fields) => fields
                    .get(head)
                    .ok_or_else(|| anyhow!("path {head} does not exist in object"))?,
                Self::Array(items) => {
                    let index = array_index(items.len(), head, false)?;
                    items
                        .get(index)
                        .ok_or_else(|| anyhow!("array index disappeared"))?
                }
                Self::Set(members) => members
                    .get(head)
                    .ok_or_else(|| anyhow!("path {head} does not exist in set"))?,
            };
        }
        node.render()
    }

    fn insert(&mut self, path: &[Value], value: EditNode) -> Result<()> {
        enforce_limit()?;
        let Some((head, rest)) = path.split_first() else {
            *self = value;
            return Ok(());
        };
        self.open()?;
        match self {
            Self::Object(fields) => {
                if rest.is_empty() {
                    fields.insert(head.clone(), value);
                } else {
                    fields
                        .get_mut(head)
                        .ok_or_else(|| anyhow!("path {head} does not exist in object"))?
                        .insert(rest, value)?;
                }
            }
            Self::Array(items) => {
                let index = array_index(items.len(), head, rest.is_empty())?;
                if rest.is_empty() {
                    items.insert(index, value);
                } else {
                    items
                        .get_mut(index)
                        .ok_or_else(|| anyhow!("array index disappeared"))?
                        .insert(rest, value)?;
                }
            }
            Self::Set(members) => {
                if rest.is_empty() {
                    let rendered = value.render()?;
                    if head != &rendered {
                        bail!("set key {head} does not equal value to be inserted {rendered}");
                    }
                    members.insert(rendered, value);
                } else {
                    let mut member = members
                        .remove(head)
                        .ok_or_else(|| anyhow!("path {head} does not exist in set"))?;
                    member.insert(rest, value)?;
                    let new_key = member.render()?;
                    members.insert(new_key, member);
                }
            }
            Self::Value(current) => {
                bail!("expected composite type, found value: {current}")
            }
        }
        enforce_limit()?;
        Ok(())
    }

    fn remove(&mut self, path: &[Value]) -> Result<EditNode> {
        enforce_limit()?;
        let (head, rest) = path
            .split_first()
            .ok_or_else(|| anyhow!("cannot remove node without a path"))?;
        self.open()?;
        let removed = match self {
            Self::Object(fields) => {
                if rest.is_empty() {
                    fields
                        .remove(head)
                        .ok_or_else(|| anyhow!("path {head} does not exist in object"))?
                } else {
                    fields
                        .get_mut(head)
                        .ok_or_else(|| anyhow!("path {head} does not exist in object"))?
                        .remove(rest)?
                }
            }
            Self::Array(items) => {
                let index = array_index(items.len(), head, false)?;
                if rest.is_empty() {
                    items
                        .remove(index)
                        .ok_or_else(|| anyhow!("array index disappeared"))?
                } else {
                    items
                        .get_mut(index)
                        .ok_or_else(|| anyhow!("array index disappeared"))?
                        .remove(rest)?
                }
            }
            Self::Set(members) => {
                if rest.is_empty() {
                    members
                        .remove(head)
                        .ok_or_else(|| anyhow!("path {head} does not exist in set"))?
                } else {
                    let mut member = members
                        .remove(head)
                        .ok_or_else(|| anyhow!("path {head} does not exist in set"))?;
                    let removed = member.remove(rest)?;
                    let new_key = member.render()?;
                    members.insert(new_key, member);
                    removed
                }
            }
            Self::Value(current) => {
                bail!("expected composite type, found value: {current}")
            }
        };
        enforce_limit()?;
        Ok(removed)
    }

    #[cfg(test)]
    fn replace(&mut self, path: &[Value], value: EditNode) -> Result<()> {
        enforce_limit()?;
        let Some((head, rest)) = path.split_first() else {
            *self = value;
            return Ok(());
        };
        self.open()?;
        match self {
            Self::Object(fields) => {
                if rest.is_empty() {
                    let slot = fields
                        .get_mut(head)
                        .ok_or_else(|| anyhow!("path {head} does not exist in object"))?;
                    *slot = value;
                } else {
                    fields
                        .get_mut(head)
                        .ok_or_else(|| anyhow!("path {head} does not exist in object"))?
                        .replace(rest, value)?;
                }
            }
            Self::Array(items) => {
                let index = array_index(items.len(), head, false)?;
                let slot = items
                    .get_mut(index)
                    .ok_or_else(|| anyhow!("array index disappeared"))?;
                if rest.is_empty() {
                    *slot = value;
                } else {
                    slot.replace(rest, value)?;
                }
            }
            Self::Set(members) => {
                let mut member = members
                    .remove(head)
                    .ok_or_else(|| anyhow!("path {head} does not exist in set"))?;
                if rest.is_empty() {
                    member = value;
                } else {
                    member.replace(rest, value)?;
                }
                let new_key = member.render()?;
                members.insert(new_key, member);
            }
            Self::Value(current) => {
                bail!("expected composite type, found value: {current}")
            }
        }
        enforce_limit()?;
        Ok(())
    }
}

struct EditTree {
    root: Option<EditNode>,
}

impl EditTree {
    fn new(value: &Value) -> Self {
        Self {
            root: Some(EditNode::from_value(value)),
        }
    }

    fn root(&self) -> Result<&EditNode> {
        self.root
            .as_ref()
            .ok_or_else(|| anyhow!("path does not exist in deleted document"))
    }

    fn root_mut(&mut self) -> Result<&mut EditNode> {
        self.root
            .as_mut()
            .ok_or_else(|| anyhow!("path does not exist in deleted document"))
    }

    fn insert_value(&mut self, path: &[Value], value: &Value) -> Result<()> {
        let node = EditNode::from_value(value);
        if path.is_empty() {
            self.root = Some(node);
        } else {
            self.root_mut()?.insert(path, node)?;
        }
        Ok(())
    }

    fn remove(&mut self, path: &[Value]) -> Result<EditNode> {
        if path.is_empty() {
            self.root
                .take()
                .ok_or_else(|| anyhow!("root is already deleted"))
        } else {
            self.root_mut()?.remove(path)
        }
    }

    #[cfg(test)]
    fn replace_value(&mut self, path: &[Value], value: &Value) -> Result<()> {
        let node = EditNode::from_value(value);
        if path.is_empty() {
            self.root = Some(node);
        } else {
            self.root_mut()?.replace(path, node)?;
        }
        Ok(())
    }

    fn render(self) -> Result<Value> {
        match self.root {
            Some(root) => root.render(),
            None => Ok(Value::Undefined),
        }
    }
}

/// Gantry: the weight and nesting of values placed by a patch, each shared subtree measured
/// once (by its `Rc`; a clone is kept so no address is reused): the work is the values'
/// memory, not their logical size, which copies double.
#[derive(Default)]
struct Measure {
    seen: BTreeMap<usize, (Value, u64, usize)>,
}

impl Measure {
    fn shared(value: &Value) -> Option<usize> {
        match value {
            Value::Array(rc) => Some(crate::Rc::as_ptr(rc) as *const () as usize),
            Value::Object(rc) => Some(crate::Rc::as_ptr(rc) as *const () as usize),
            Value::Set(rc) => Some(crate::Rc::as_ptr(rc) as *const () as usize),
            _ => None,
        }
    }

    /// A value's (weight, nesting), or a scalar's straight away.
    fn known(&self, value: &Value) -> Option<(u64, usize)> {
        match Self::shared(value) {
            Some(at) => self.seen.get(&at).map(|(_, w, d)| (*w, *d)),
            None => Some((Self::scalar(value), 0)),
        }
    }

    fn scalar(value: &Value) -> u64 {
        match value {
            Value::String(s) => 1 + s.len() as u64,
            _ => 1,
        }
    }

    /// Weight (1 a value, a string its bytes more, keys alike) and nesting (a scalar 0, a
    /// composite one more than its deepest member), post-order over an explicit stack.
    fn measure(&mut self, value: &Value) -> Result<(u64, usize)> {
        let mut stack = vec![(value.clone(), false)];
        while let Some((value, done)) = stack.pop() {
            let Some(at) = Self::shared(&value) else {
                continue;
            };
            if self.seen.contains_key(&at) {
                continue;
            }
            if !done {
                stack.push((value.clone(), true));
                let mut open = |member: &Value| {
                    if self.known(member).is_none() {
                        stack.push((member.clone(), false));
                    }
                };
                match &value {
                    Value::Array(array) => array.iter().for_each(&mut open),
                    Value::Set(set) => set.iter().for_each(&mut open),
                    Value::Object(object) => object.iter().for_each(|(k, v)| {
                        open(k);
                        open(v);
                    }),
                    _ => (),
                }
                continue;
            }
            let (mut weight, mut depth) = (1u64, 0usize);
            let mut add = |member: &Value| -> Result<()> {
                let (w, d) = self
                    .known(member)
                    .ok_or_else(|| anyhow!("member measured out of order"))?;
                weight = weight.saturating_add(w);
                depth = depth.max(d);
                Ok(())
            };
            match &value {
                Value::Array(array) => array.iter().try_for_each(&mut add)?,
                Value::Set(set) => set.iter().try_for_each(&mut add)?,
                Value::Object(object) => object.iter().try_for_each(|(k, v)| {
                    add(k)?;
                    add(v)
                })?,
                _ => (),
            }
            self.seen.insert(at, (value, weight, depth + 1));
            enforce_limit()?;
        }
        self.known(value)
            .ok_or_else(|| anyhow!("value measured out of order"))
    }

    /// Refuses `value` placed at `path` deeper than [`MAX_PATCH_DEPTH`].
    fn check_depth(&mut self, path: &[Value], value: &Value) -> Result<u64> {
        let (weight, nesting) = self.measure(value)?;
        let depth = path.len().saturating_add(nesting);
        if depth > MAX_PATCH_DEPTH {
            return Err(limit_error(
                depth as u64,
                MAX_PATCH_DEPTH as u64,
                format!(
                    "json.patch: a value would lie {depth} levels deep (at most {MAX_PATCH_DEPTH})"
                ),
            ));
        }
        Ok(weight)
    }
}

pub(super) fn apply(target: &Value, operations: &[Value]) -> Result<Value> {
    let mut tree = EditTree::new(target);
    // Gantry: what each operation places is measured once placed (an operation OPA fails
    // fails here first, the same way): its depth bounded, and the copies' weight.
    let mut measure = Measure::default();
    let mut copied = 0u64;
    for operation in operations {
        enforce_limit()?;
        let object = match operation {
            Value::Object(object) => object,
            _ => bail!(
                "must be an array of JSON-Patch objects, but at least one element is not an object"
            ),
        };
        let field = |name: &str| -> Result<&Value> {
            object
                .get(&Value::from(name))
                .ok_or_else(|| anyhow!("missing '{name}' attribute"))
        };
        let operation_name = match field("op")? {
            Value::String(name) => name.as_ref(),
            _ => bail!("attribute 'op' must be a string"),
        };

        match operation_name {
            "add" => {
                let path = parse_path(field("path")?)?;
                let value = field("value")?;
                tree.insert_value(&path, value)?;
                measure.check_depth(&path, value)?;
            }
            "remove" => {
                let path = parse_path(field("path")?)?;
                tree.remove(&path)?;
            }
            "replace" => {
                let path = parse_path(field("path")?)?;
                // OPA composes replace from delete + insert. This distinction
                // is observable for sets, whose keys must equal their values:
                // replacing member "a" at path ["a"] with "b" must fail
                // rather than silently changing the set's membership key.
                tree.remove(&path)?;
                let value = field("value")?;
                tree.insert_value(&path, value)?;
                measure.check_depth(&path, value)?;
            }
            "move" => {
                let from = parse_path(field("from")?)?;
                let path = parse_path(field("path")?)?;
                let value = tree.remove(&from)?.render()?;
                tree.insert_value(&path, &value)?;
                measure.check_depth(&path, &value)?;
            }
            "copy" => {
                let from = parse_path(field("from")?)?;
                let path = parse_path(field("path")?)?;
                let value = tree.root()?.get(&from)?;
                tree.insert_value(&path, &value)?;
                copied = copied.saturating_add(measure.check_depth(&path, &value)?);
                if copied > MAX_COPIED_WEIGHT {
                    return Err(limit_error(
                        copied,
                        MAX_COPIED_WEIGHT,
                        format!("json.patch: copies would add more than {MAX_COPIED_WEIGHT} bytes"),
                    ));
                }
            }
            "test" => {
                let path = parse_path(field("path")?)?;
                let actual = tree.root()?.get(&path)?;
                let expected = field("value")?;
                if &actual != expected {
                    bail!(
                        "value from patch != expected value.\n\nExpected: {expected}\n\nFound: {actual}"
                    );
                }
            }
            other => bail!("unrecognized op '{other}'"),
        }
    }
    tree.render()
}

/// The member of a whole value at `path`, as [`EditNode::get`] finds it once opened.
fn value_at(value: &Value, path: &[Value]) -> Result<Value> {
    let mut value = value;
    for head in path {
        value = match value {
            Value::Object(fields) => fields
                .get(head)
                .ok_or_else(|| anyhow!("path {head} does not exist in object"))?,
            Value::Array(items) => {
                let index = array_index(items.len(), head, false)?;
                items
                    .get(index)
                    .ok_or_else(|| anyhow!("array index disappeared"))?
            }
            Value::Set(members) => members
                .get(head)
                .ok_or_else(|| anyhow!("path {head} does not exist in set"))?,
            scalar => bail!("expected composite type, found value: {scalar}"),
        };
    }
    Ok(value.clone())
}

fn parse_path(path: &Value) -> Result<Vec<Value>> {
    match path {
        Value::String(path) if path.is_empty() => Ok(Vec::new()),
        Value::String(path) => Ok(path
            .trim_start_matches('/')
            .split('/')
            .map(|part| Value::from(part.replace("~1", "/").replace("~0", "~")))
            .collect()),
        Value::Array(parts) => Ok(parts.iter().cloned().collect()),
        _ => bail!("path must be a string or an array of path segments"),
    }
}

fn array_index(length: usize, segment: &Value, append_ok: bool) -> Result<usize> {
    let raw = match segment {
        Value::Number(Number::UInt(value)) => {
            i64::try_from(*value).map_err(|_| anyhow!("array index is too large"))?
        }
        Value::Number(Number::Int(value)) => *value,
        Value::Number(Number::BigInt(value)) => value
            .to_string()
            .parse::<i64>()
            .map_err(|_| anyhow!("array index is too large"))?,
        Value::Number(Number::Float(_)) => bail!("array index must be an integer"),
        Value::String(value) if value.as_ref() == "-" => {
            if !append_ok {
                bail!("'-' index is not valid here");
            }
            i64::try_from(length).map_err(|_| anyhow!("array too large to index"))?
        }
        Value::String(value) => {
            if value.as_ref() != "0" && value.starts_with('0') {
                bail!("leading zeros are not allowed in JSON paths");
            }
            value
                .parse::<i64>()
                .map_err(|_| anyhow!("invalid string for indexing"))?
        }
        _ => bail!("invalid type for indexing"),
    };
    let index = usize::try_from(raw).map_err(|_| anyhow!("negative index: {raw}"))?;
    let in_bounds = if append_ok {
        index <= length
    } else {
        index < length
    };
    if !in_bounds {
        bail!("index {index} out of bounds for length {length}");
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operation(json: &str) -> Value {
        Value::from_json_str(json).expect("valid patch operation")
    }

    #[test]
    fn repeated_front_removals_do_not_rebuild_the_array() {
        const LENGTH: usize = 4096;
        const REMOVALS: usize = 2048;

        let target = Value::from_array((0..LENGTH).map(Value::from).collect());
        let remove_front = operation(r#"{"op":"remove","path":"/0"}"#);
        let operations = alloc::vec![remove_front; REMOVALS];

        let result = apply(&target, &operations).expect("patch must succeed");
        let array = result.as_array().expect("result must be an array");
        assert_eq!(array.len(), LENGTH - REMOVALS);
        assert_eq!(array.first(), Some(&Value::from(REMOVALS)));
        // The immutable input is not modified if applying a patch succeeds or
        // fails; the edit tree owns all intermediate state.
        assert_eq!(
            target.as_array().expect("input must be an array").len(),
            LENGTH
        );
    }

    #[test]
    fn failed_patch_does_not_modify_the_input() {
        let target = Value::from_json_str(r#"{"a":[1,2,3]}"#).expect("valid target");
        let original = target.clone();
        let operations = [
            operation(r#"{"op":"remove","path":"/a/0"}"#),
            operation(r#"{"op":"remove","path":"/missing"}"#),
        ];

        apply(&target, &operations).expect_err("patch must fail");
        assert_eq!(target, original);
    }

    #[test]
    fn move_uses_post_removal_array_indexes() {
        let target = Value::from_json_str(r#"["a","b","c","d"]"#).expect("valid target");
        let operations = [operation(r#"{"op":"move","from":"/1","path":"/3"}"#)];
        let expected = Value::from_json_str(r#"["a","c","d","b"]"#).expect("valid expected value");

        assert_eq!(
            apply(&target, &operations).expect("patch must succeed"),
            expected
        );
    }

    #[test]
    fn deep_paths_survive_edit_and_render() {
        const DEPTH: usize = 128;
        let key = Value::from("k");
        let mut target = Value::from(0);
        for _ in 0..DEPTH {
            let mut object = Object::new();
            object.insert(key.clone(), target);
            target = Value::Object(crate::Rc::new(object));
        }
        let path = alloc::vec![key; DEPTH];

        let mut tree = EditTree::new(&target);
        tree.replace_value(&path, &Value::from(9))
            .expect("replace must succeed");
        let rendered = tree.render().expect("render must succeed");

        let mut leaf = &rendered;
        for segment in &path {
            leaf = match leaf {
                Value::Object(object) => {
                    object.get(segment).expect("deep path must survive render")
                }
                other => panic!("expected object on deep path, found {other}"),
            };
        }
        assert_eq!(leaf, &Value::from(9));
    }
}
