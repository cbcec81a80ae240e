//! A policy's result set as its module wrote it. OPA's numbers have any number of digits; a
//! 64-bit reader (serde_json's `Value`) would round an integer past 64 bits, or a decimal with
//! more digits than an f64 keeps, on the way out. The text is kept, and read only where a
//! decision needs it (`allow`, `reasons`), never through a number type.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

/// OPA's result set of one evaluation (`[{"result": ..}]`, or `[]` when the rule is undefined),
/// as the module wrote it: every number exact.
#[derive(Debug, Clone)]
pub struct ResultSet(Box<RawValue>);

impl ResultSet {
    pub(crate) fn new(text: Box<RawValue>) -> Self {
        Self(text)
    }

    /// A result set from its JSON text (one recorded, or a module's read elsewhere).
    pub fn from_text(text: String) -> serde_json::Result<Self> {
        RawValue::from_string(text).map(Self)
    }

    /// The JSON text, as the module wrote it.
    pub fn text(&self) -> &str {
        self.0.get()
    }

    /// The text on one line (whitespace between tokens dropped).
    pub fn compact(&self) -> String {
        layout(self.text(), None)
    }

    /// The text indented as `serde_json::to_string_pretty` indents (two spaces), each token as
    /// the module wrote it.
    pub fn pretty(&self) -> String {
        layout(self.text(), Some("  "))
    }

    /// The result set as serde_json's values, whose numbers are 64-bit: one past an f64's
    /// precision is rounded, past its range an error. [`ResultSet::text`] is exact.
    pub fn to_json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_str(self.text())
    }

    /// Whether the result set is exactly `[{"result": true}]` (a passing test).
    pub fn is_true(&self) -> bool {
        let set: Vec<&RawValue> = serde_json::from_str(self.text()).unwrap_or_default();
        let [one] = set.as_slice() else {
            return false;
        };
        fields(one).is_some_and(|f| {
            f.len() == 1
                && f.get("result")
                    .is_some_and(|r| read::<bool>(r) == Some(true))
        })
    }

    /// Allow and reasons, read as [`super::decide::verdict`] describes.
    pub(crate) fn verdict(&self) -> (bool, Vec<String>) {
        let set: Vec<&RawValue> = match serde_json::from_str(self.text()) {
            Ok(set) => set,
            Err(_) => return (false, vec![NOT_ONE.into()]),
        };
        let value = match set.as_slice() {
            [] => return (false, vec!["the policy's decision is undefined".into()]),
            [one] => fields(one).and_then(|mut f| f.remove("result")),
            _ => return (false, vec![NOT_ONE.into()]),
        };
        let members = value.and_then(fields);
        let member = |name: &str| members.as_ref().and_then(|m| m.get(name).copied());
        let mut reasons: Vec<String> = member("reasons")
            .and_then(read::<Vec<&RawValue>>)
            .unwrap_or_default()
            .into_iter()
            .map(|r| read::<String>(r).unwrap_or_else(|| r.get().to_string()))
            .collect();
        let allow = value
            .and_then(read::<bool>)
            .or_else(|| member("allow").and_then(read::<bool>));
        match allow {
            Some(allow) => (allow, reasons),
            None => {
                reasons.push("the policy's decision has no boolean `allow`".into());
                (false, reasons)
            }
        }
    }
}

const NOT_ONE: &str = "the policy returned a result set that is not one result";

/// `value` read as a `T` (a bool, a string, a list), if it is one.
fn read<'a, T: serde::Deserialize<'a>>(value: &'a RawValue) -> Option<T> {
    serde_json::from_str(value.get()).ok()
}

impl std::fmt::Display for ResultSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}

impl serde::Serialize for ResultSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// The members of `value` when it is an object (a repeated key: the last, as serde_json reads).
fn fields(value: &RawValue) -> Option<BTreeMap<String, &RawValue>> {
    read(value)
}

/// `text` (valid JSON) with the whitespace between its tokens replaced: none, or a line per
/// member indented by `indent` per level, as serde_json's pretty printer lays values out
/// (`[]` and `{}` when empty, `": "` after a key). Strings and numbers are copied as written.
fn layout(text: &str, indent: Option<&str>) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut depth = 0usize;
    let newline = |out: &mut String, depth: usize| {
        if let Some(indent) = indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(indent);
            }
        }
    };
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'"' => {
                let start = i;
                i += 1;
                while bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                out.push_str(&text[start..=i]);
            }
            b'[' | b'{' => {
                let close = if b == b'[' { b']' } else { b'}' };
                let next = bytes[i + 1..]
                    .iter()
                    .position(|c| !c.is_ascii_whitespace())
                    .map(|at| i + 1 + at);
                out.push(b as char);
                match next {
                    Some(at) if bytes[at] == close => {
                        out.push(close as char);
                        i = at;
                    }
                    _ => {
                        depth += 1;
                        newline(&mut out, depth);
                    }
                }
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(b as char);
            }
            b',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            b':' => out.push_str(if indent.is_some() { ": " } else { ":" }),
            b if b.is_ascii_whitespace() => {}
            _ => {
                // A number or literal: copied up to the next structural byte or whitespace.
                let start = i;
                while i + 1 < bytes.len()
                    && !matches!(bytes[i + 1], b',' | b']' | b'}' | b':')
                    && !bytes[i + 1].is_ascii_whitespace()
                {
                    i += 1;
                }
                out.push_str(&text[start..=i]);
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str) -> ResultSet {
        ResultSet::new(RawValue::from_string(text.into()).unwrap())
    }

    /// Reported by the conformance suite's Go-answered cases: `units.parse_bytes("1e30Ti")` as
    /// a result came out as `1.0995116277759999e+42`, the host having read the module's result
    /// set into serde_json's 64-bit numbers. The text is what is handed out now.
    #[test]
    fn results_past_64_bits_leave_the_host_exact() {
        let exact = r#"[{"result":{"n":1099511627776000000000000000000000000000000,"d":3.14159265358979323846,"e":1e400}}]"#;
        let s = set(exact);
        assert_eq!(s.text(), exact);
        assert_eq!(s.compact(), exact);
        assert_eq!(
            s.pretty(),
            "[\n  {\n    \"result\": {\n      \"n\": 1099511627776000000000000000000000000000000,\n      \
             \"d\": 3.14159265358979323846,\n      \"e\": 1e400\n    }\n  }\n]"
        );
        assert_eq!(serde_json::to_string(&s).unwrap(), exact);
        // A number no f64 holds does not stop a decision being read.
        let allowed = set(r#"[{"result":{"allow":true,"reasons":[1e400,"ok"]}}]"#);
        assert_eq!(allowed.verdict(), (true, vec!["1e400".into(), "ok".into()]));
    }

    #[test]
    fn layout_matches_serde_jsons_and_keeps_strings_as_written() {
        for text in [
            r#"[]"#,
            r#"[{"result":[]}]"#,
            r#"[{"result":{}}]"#,
            r#"[{"result":{"a":[1,2,{"b":null}],"c":"x\"],{:y","d":[[],{}],"e":true,"f":-5e-8}}]"#,
        ] {
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                set(text).pretty(),
                serde_json::to_string_pretty(&value).unwrap()
            );
            assert_eq!(set(text).compact(), serde_json::to_string(&value).unwrap());
        }
        let spaced = set("[ { \"result\" :\n [ 1 , \"a b\" ] } ]");
        assert_eq!(spaced.compact(), r#"[{"result":[1,"a b"]}]"#);
        assert_eq!(set(r#"["\u00e9\\"]"#).compact(), r#"["\u00e9\\"]"#);
    }

    #[test]
    fn only_a_set_of_one_true_result_is_true() {
        assert!(set(r#"[{"result":true}]"#).is_true());
        for other in [
            r#"[]"#,
            r#"[{"result":false}]"#,
            r#"[{"result":"true"}]"#,
            r#"[{"result":true},{"result":true}]"#,
            r#"[{"result":true,"x":1}]"#,
            r#"{"result":true}"#,
        ] {
            assert!(!set(other).is_true(), "{other}");
        }
    }
}
