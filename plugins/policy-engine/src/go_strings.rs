//! OPA's `strings.replace_n`, after its `v1/topdown/strings.go`: the pattern object's keys in
//! order (`ast.Compare`: bytewise), handed to Go's `strings.NewReplacer`, whose `Replace` scans
//! the string once. Found by running OPA's own cases: regorus replaced one key after another
//! over the whole string, so a replacement was replaced again (`{"a": "b", "b": "a"}` made
//! `"abba"` `"aaaa"`, where OPA gives `"baab"`) and a longer key lost to a shorter one applied
//! first; a policy normalising a name before comparing it decided on another string than OPA's.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
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

/// Go's `strings.NewReplacer(old1, new1, old2, new2, ...).Replace(s)` for `pairs` in that order:
/// at each byte, of the keys that start there the first in `pairs` wins (the empty key too, but
/// not twice in a row at one place); what was written is never scanned again. Every kind of
/// replacer Go picks (one key, single bytes, generic) has this meaning; Go steps over bytes, so
/// an empty key can land inside a character, which a Rust string cannot hold: an error here,
/// never another string.
pub(crate) fn replace(pairs: &[(&str, &str)], s: &str) -> Result<String, GoError> {
    let bytes = s.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let (mut i, mut last, mut previous_empty) = (0, 0, false);
    while i <= bytes.len() {
        let rest = &bytes[i..];
        let found = pairs
            .iter()
            .find(|(k, _)| rest.starts_with(k.as_bytes()) && !(previous_empty && k.is_empty()));
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

#[cfg(test)]
mod tests;
