//! OPA's `strings.split_n` and `array.flatten` (newer than regorus 0.14.1: a policy calling them
//! was refused at build), and `strings.replace_n`, after OPA's `v1/topdown/strings.go` and
//! `array.go`.
//!
//! `strings.replace_n`: the pattern object's keys in
//! order (`ast.Compare`: bytewise), handed to Go's `strings.NewReplacer`, whose `Replace` scans
//! the string once. Found by running OPA's own cases: regorus replaced one key after another
//! over the whole string, so a replacement was replaced again (`{"a": "b", "b": "a"}` made
//! `"abba"` `"aaaa"`, where OPA gives `"baab"`) and a longer key lost to a shorter one applied
//! first; a policy normalising a name before comparing it decided on another string than OPA's.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use regorus::Value;

use crate::go_builtins::{Fail, GoError};

/// The most bytes a replacement may write: past it the evaluation fails (an empty key inserts
/// its value between every two bytes, so a short pattern can ask for gigabytes).
const MAX_OUTPUT: usize = 64 << 20;

/// `strings.replace_n(patterns, value)`.
pub fn replace_n(fail: impl Fail) -> Box<dyn regorus::Extension> {
    Box::new(move |args: Vec<Value>| {
        let name = "strings.replace_n";
        let Value::Object(patterns) = &args[0] else {
            return fail(format!("{name}: operand 1 must be object"));
        };
        let Ok(s) = args[1].as_string() else {
            return fail(format!("{name}: operand 2 must be string"));
        };
        let mut pairs = Vec::with_capacity(patterns.len());
        for (k, v) in patterns.iter() {
            match (k, v) {
                (Value::String(k), Value::String(v)) => pairs.push((k.as_ref(), v.as_ref())),
                (Value::String(_), _) => {
                    return fail(format!(
                        "{name}: operand 1 non-string value found in pattern object"
                    ));
                }
                _ => {
                    return fail(format!(
                        "{name}: operand 1 non-string key found in pattern object"
                    ));
                }
            }
        }
        match replace(&pairs, s) {
            Ok(out) => Ok(Value::from(out)),
            Err(e) => e.context(name).answer(fail),
        }
    })
}

/// `replace(s, old, new)`: Go's `strings.NewReplacer(old, new).Replace(s)`, as OPA's, through
/// the one replacer `strings.replace_n` uses. regorus's (Rust's `str::replace`) put an empty
/// `old`'s value between characters, where Go's replacer steps over bytes: on a string that is
/// not ASCII it gave another string than OPA's (`contains(replace(s, "", "-"), "é")` held);
/// here that is an error, as for `strings.replace_n`. The output is bounded there too.
pub fn replace_one(fail: impl Fail) -> Box<dyn regorus::Extension> {
    Box::new(move |args: Vec<Value>| {
        let name = "replace";
        let (Ok(s), Ok(old), Ok(new)) = (
            args[0].as_string(),
            args[1].as_string(),
            args[2].as_string(),
        ) else {
            let (i, _) = (args.iter().enumerate())
                .find(|(_, a)| a.as_string().is_err())
                .unwrap_or((0, &args[0]));
            return fail(format!("{name}: operand {} must be string", i + 1));
        };
        match replace(&[(old.as_ref(), new.as_ref())], s) {
            Ok(out) => Ok(Value::from(out)),
            Err(e) => e.context(name).answer(fail),
        }
    })
}

/// `strings.split_n(text, delimiter, n)`: the first `n` parts of Go's `strings.Split` (`n` >=
/// 0), or the last `-n` (`n` < 0); `n` must be an integer written as one.
pub fn split_n(fail: impl Fail) -> Box<dyn regorus::Extension> {
    Box::new(move |args: Vec<Value>| {
        let name = "strings.split_n";
        let (Ok(text), Ok(delimiter)) = (args[0].as_string(), args[1].as_string()) else {
            return fail(format!("{name}: operands 1 and 2 must be strings"));
        };
        let Ok(n) = args[2].as_i64() else {
            return fail(format!(
                "{name}: operand 3 must be integer number but got {}",
                type_name(&args[2])
            ));
        };
        let parts = go_split(text, delimiter);
        let kept: Vec<Value> = if n >= 0 {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            parts.into_iter().take(n).map(Value::from).collect()
        } else {
            let n = usize::try_from(n.unsigned_abs()).unwrap_or(usize::MAX);
            let start = parts.len().saturating_sub(n);
            parts.into_iter().skip(start).map(Value::from).collect()
        };
        Ok(Value::from(kept))
    })
}

/// Go's `strings.Split(s, sep)`: an empty separator splits after each character (and an empty
/// string into no parts).
fn go_split<'a>(s: &'a str, sep: &str) -> Vec<&'a str> {
    if sep.is_empty() {
        return s
            .char_indices()
            .map(|(i, c)| &s[i..i + c.len_utf8()])
            .collect();
    }
    s.split(sep).collect()
}

/// `array.flatten(arr)`: the array with each element that is an array replaced by its elements
/// (one level).
pub fn flatten(fail: impl Fail) -> Box<dyn regorus::Extension> {
    Box::new(move |args: Vec<Value>| {
        let Value::Array(items) = &args[0] else {
            return fail(format!(
                "array.flatten: operand 1 must be array but got {}",
                type_name(&args[0])
            ));
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items.iter() {
            match item {
                Value::Array(inner) => out.extend(inner.iter().cloned()),
                other => out.push(other.clone()),
            }
        }
        Ok(Value::from(out))
    })
}

/// OPA's name for a value's type in an operand error.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Number(n) if n.as_i64().is_none() => "floating-point number",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Bool(_) => "boolean",
        Value::Null => "null",
        Value::Array(_) => "array",
        Value::Set(_) => "set",
        Value::Object(_) => "object",
        Value::Undefined => "undefined",
    }
}

/// Go's `strings.NewReplacer(old1, new1, old2, new2, ...).Replace(s)` for `pairs` in that order:
/// at each byte, of the keys that start there the first in `pairs` wins (the empty key too, but
/// not twice in a row at one place); what was written is never scanned again. Every kind of
/// replacer Go picks (one key, single bytes, generic) has this meaning; Go steps over bytes, so
/// an empty key can land inside a character, which a Rust string cannot hold: an error here,
/// never another string.
pub(crate) fn replace(pairs: &[(&str, &str)], s: &str) -> Result<String, GoError> {
    let keys = KeyIndex::new(pairs);
    let bytes = s.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let (mut i, mut last, mut previous_empty) = (0, 0, false);
    while i <= bytes.len() {
        let found = keys
            .first_match(&bytes[i..], !previous_empty)
            .map(|p| pairs[p]);
        previous_empty = found.is_some_and(|(k, _)| k.is_empty());
        match found {
            Some((k, v)) => {
                out.extend_from_slice(&bytes[last..i]);
                out.extend_from_slice(v.as_bytes());
                if out.len() > MAX_OUTPUT {
                    return Err(GoError::Hard(format!(
                        "the result is past {MAX_OUTPUT} bytes, more than Gantry holds"
                    )));
                }
                i += k.len();
                last = i;
            }
            None => i += 1,
        }
    }
    out.extend_from_slice(&bytes[last.min(bytes.len())..]);
    String::from_utf8(out).map_err(|_| {
        GoError::Hard(
            "an empty key's value lands inside a multi-byte character (Go writes bytes that are \
             no UTF-8; Gantry's strings cannot hold them)"
                .into(),
        )
    })
}

/// The keys indexed by their first byte (in `pairs`' order), and the first empty key: at each
/// place only the keys that can start there are tried, each by a length check and one compare,
/// as Go's generic replacer compares a node's prefix (`HasPrefix`). Memory is one index per key.
/// (A trie of every key byte, tried first, cost 170 bytes per key byte and a map lookup per
/// byte of a long key at every place: a 3 MiB key filled a decision's memory.)
struct KeyIndex<'p> {
    pairs: &'p [(&'p str, &'p str)],
    by_first: Vec<Vec<usize>>,
    empty: Option<usize>,
}

impl<'p> KeyIndex<'p> {
    fn new(pairs: &'p [(&'p str, &'p str)]) -> KeyIndex<'p> {
        let mut by_first = vec![Vec::new(); 256];
        let mut empty = None;
        for (p, (k, _)) in pairs.iter().enumerate() {
            match k.as_bytes().first() {
                Some(&b) => by_first[usize::from(b)].push(p),
                None => {
                    empty.get_or_insert(p);
                }
            }
        }
        KeyIndex {
            pairs,
            by_first,
            empty,
        }
    }

    /// The first pair (in `pairs`' order) whose key starts `text`; the empty key only where
    /// `empty_allowed`.
    fn first_match(&self, text: &[u8], empty_allowed: bool) -> Option<usize> {
        let empty = self.empty.filter(|_| empty_allowed);
        let starting = text
            .first()
            .and_then(|&b| self.by_first.get(usize::from(b)))
            .and_then(|keys| {
                keys.iter()
                    .take_while(|&&p| empty.is_none_or(|e| p < e))
                    .find(|&&p| text.starts_with(self.pairs[p].0.as_bytes()))
            });
        starting.copied().or(empty)
    }
}

#[cfg(test)]
mod tests;
