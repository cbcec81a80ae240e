//! JSON text to a regorus value, numbers exact.
//!
//! regorus reads JSON through serde_json, which (without `arbitrary_precision`, a feature that
//! would change every crate of the host build) turns an integer beyond 64 bits into the nearest
//! f64: `1208925819614629174706175` in an input compared equal to its neighbour, where the same
//! number written in Rego (and in OPA, whose numbers are decimal text) is exact. Its reader also
//! turns `{"$serde_json::private::Number": "5"}` into the number 5. Here every number token
//! becomes the number regorus makes of the same text in a policy (`Value::from_numeric_string`:
//! integers exact at any size), and objects are objects.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use regorus::Value;

/// How deep arrays and objects may nest (serde_json's limit, so nothing it read is refused).
pub const MAX_DEPTH: usize = 128;

/// The longest number token, and the largest exponent, read: a bound on the integer `1e999`
/// would otherwise build.
const MAX_NUMBER_LEN: usize = 1_000;
const MAX_EXPONENT: u32 = 1_000;

/// Parses one JSON value (RFC 8259), surrounded by whitespace only.
pub fn parse(text: &str) -> Result<Value, String> {
    read(text, false, false).map_err(|(e, _)| e)
}

/// [`parse`] for a builtin OPA answers with Go's `encoding/json`: text that is no JSON is
/// OPA's error too (`Builtin`); JSON past this reader's bounds (nested deeper than
/// [`MAX_DEPTH`], a number past [`MAX_NUMBER_LEN`] or [`MAX_EXPONENT`]), which Go reads, is
/// this engine's refusal, and fails the evaluation whatever the mode (`Hard`).
pub(crate) fn parse_go(text: &str) -> Result<Value, crate::go_builtins::GoError> {
    use crate::go_builtins::GoError;
    read(text, false, false).map_err(|(e, past_bound)| match past_bound {
        true => GoError::Hard(format!(
            "{e}: JSON past this engine's bounds, which OPA reads"
        )),
        false => GoError::Builtin(e),
    })
}

/// Refuses JSON holding a number a 64-bit reader cannot carry exactly: an integer beyond 64 bits,
/// a decimal with more digits than an f64 keeps. The host reads `data.json` with serde_json,
/// whose numbers are 64-bit; rather than hand the policy a neighbouring value (where OPA and
/// `policy test` see the written one), it names the number: write it as a string. (Inputs go
/// to the engine as written.)
pub fn check_carried_exactly(text: &str) -> Result<(), String> {
    read(text, true, false).map(|_| ()).map_err(|(e, _)| e)
}

/// [`parse`], refusing an object that repeats a key (JWKs, which jwx's versions read
/// differently when a member repeats).
pub fn parse_unique(text: &str) -> Result<Value, String> {
    read(text, false, true).map_err(|(e, _)| e)
}

/// The value of `text`, or why not and whether it was a bound of this reader's.
fn read(text: &str, only_64_bit: bool, unique_keys: bool) -> Result<Value, (String, bool)> {
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
        depth: 0,
        only_64_bit,
        unique_keys,
        past_bound: false,
    };
    let read = |p: &mut Parser<'_>| {
        p.ws();
        let v = p.value()?;
        p.ws();
        if p.pos != p.s.len() {
            return Err(p.error("trailing characters"));
        }
        Ok(v)
    };
    read(&mut p).map_err(|e| (e, p.past_bound))
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
    /// Refuse numbers a 64-bit reader would change ([`check_carried_exactly`]).
    only_64_bit: bool,
    /// Refuse a key repeated in an object ([`parse_unique`]).
    unique_keys: bool,
    /// Whether the error is a bound of this reader's, not the text's ([`parse_go`]).
    past_bound: bool,
}

impl Parser<'_> {
    /// An error at a bound of this reader's that JSON does not have.
    fn bound(&mut self, what: &str) -> String {
        self.past_bound = true;
        self.error(what)
    }

    fn error(&self, what: &str) -> String {
        let before = &self.s[..self.pos.min(self.s.len())];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        format!("{what} at line {line} column {column}")
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn expect(&mut self, word: &str, v: Value) -> Result<Value, String> {
        if self.s[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(v)
        } else {
            Err(self.error("expected value"))
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.peek() {
            None => Err(self.error("EOF while parsing a value")),
            Some(b'n') => self.expect("null", Value::Null),
            Some(b't') => self.expect("true", Value::Bool(true)),
            Some(b'f') => self.expect("false", Value::Bool(false)),
            Some(b'"') => Ok(Value::from(self.string()?)),
            Some(b'[' | b'{') => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(self.bound("recursion limit exceeded"));
                }
                let v = if self.peek() == Some(b'[') {
                    self.array()
                } else {
                    self.object()
                };
                self.depth -= 1;
                v
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("expected value")),
        }
    }

    fn array(&mut self) -> Result<Value, String> {
        self.pos += 1;
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::from(items));
        }
        loop {
            self.ws();
            items.push(self.value()?);
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::from(items));
                }
                _ => return Err(self.error("expected `,` or `]`")),
            }
        }
    }

    fn object(&mut self) -> Result<Value, String> {
        self.pos += 1;
        let mut fields = BTreeMap::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::from(fields));
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("key must be a string"));
            }
            let key = self.string()?;
            self.ws();
            if self.peek() != Some(b':') {
                return Err(self.error("expected `:`"));
            }
            self.pos += 1;
            self.ws();
            let value = self.value()?;
            // A repeated key keeps its last value, as serde_json and Go's encoding/json do.
            if fields.insert(Value::from(key), value).is_some() && self.unique_keys {
                return Err(self.error("a repeated key"));
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::from(fields));
                }
                _ => return Err(self.error("expected `,` or `}`")),
            }
        }
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.pos;
        let digits = |p: &mut Self| {
            let from = p.pos;
            while let Some(b'0'..=b'9') = p.peek() {
                p.pos += 1;
            }
            p.pos - from
        };
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let int_start = self.pos;
        let n = digits(self);
        if n == 0 || (n > 1 && self.s[int_start] == b'0') {
            return Err(self.error("invalid number"));
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if digits(self) == 0 {
                return Err(self.error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            let exp_start = self.pos;
            if digits(self) == 0 {
                return Err(self.error("invalid number"));
            }
            let exp = &self.s[exp_start..self.pos];
            let exp = core::str::from_utf8(exp).unwrap_or("");
            if exp.trim_start_matches('0').len() > 4
                || exp.parse::<u32>().unwrap_or(u32::MAX) > MAX_EXPONENT
            {
                return Err(self.bound("number out of range"));
            }
        }
        if self.pos - start > MAX_NUMBER_LEN {
            return Err(self.bound("number too long"));
        }
        let token = core::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
        if self.only_64_bit && !fits_64_bits(token) {
            let end = self.pos;
            self.pos = start;
            let e = self.error(&format!(
                "the number {} cannot be carried exactly (an integer beyond 64 bits or more \
                 digits than a 64-bit float keeps): write it as a string",
                &token[..token.len().min(40)]
            ));
            self.pos = end;
            return Err(e);
        }
        Value::from_numeric_string(token).map_err(|_| self.bound("number out of range"))
    }

    fn string(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let run = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // The input is a `str` and the run stops at ASCII bytes: a whole UTF-8 sequence.
            out.push_str(core::str::from_utf8(&self.s[run..self.pos]).unwrap_or(""));
            match self.peek() {
                None => return Err(self.error("EOF while parsing a string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = self.escape()?;
                    out.push(c);
                }
                Some(_) => return Err(self.error("control character in a string")),
            }
        }
    }

    fn escape(&mut self) -> Result<char, String> {
        let b = self
            .peek()
            .ok_or_else(|| self.error("EOF while parsing a string"))?;
        self.pos += 1;
        Ok(match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\x08',
            b'f' => '\x0C',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4()?;
                match hi {
                    0xD800..=0xDBFF => {
                        if !self.s[self.pos..].starts_with(b"\\u") {
                            return Err(self.error("lone leading surrogate in hex escape"));
                        }
                        self.pos += 2;
                        let lo = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return Err(self.error("invalid surrogate pair in hex escape"));
                        }
                        let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        char::from_u32(c).ok_or_else(|| self.error("invalid escape"))?
                    }
                    0xDC00..=0xDFFF => {
                        return Err(self.error("lone trailing surrogate in hex escape"));
                    }
                    c => char::from_u32(c).ok_or_else(|| self.error("invalid escape"))?,
                }
            }
            _ => return Err(self.error("invalid escape")),
        })
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .s
            .get(self.pos..self.pos + 4)
            .and_then(|d| core::str::from_utf8(d).ok())
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.error("invalid hex escape"))?;
        self.pos += 4;
        u32::from_str_radix(digits, 16).map_err(|_| self.error("invalid hex escape"))
    }
}

/// Whether serde_json reads the number token `t` as exactly the value written: an integer within
/// i64 or u64, or a decimal whose nearest f64 prints back as the same decimal.
fn fits_64_bits(t: &str) -> bool {
    if !t.contains(['.', 'e', 'E']) {
        return t.parse::<i64>().is_ok() || t.parse::<u64>().is_ok();
    }
    match t.parse::<f64>() {
        Ok(f) if f.is_finite() => decimal(t) == decimal(&format!("{f:e}")),
        _ => false,
    }
}

/// A decimal as (negative, significant digits, exponent) with `value = 0.digits * 10^exponent`;
/// zero as `(false, "", 0)`.
fn decimal(t: &str) -> (bool, String, i64) {
    let (negative, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let (mantissa, exponent) = match t.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().unwrap_or(0)),
        None => (t, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all = format!("{int}{frac}");
    let leading = all.len() - all.trim_start_matches('0').len();
    let digits = all.trim_matches('0');
    if digits.is_empty() {
        return (false, String::new(), 0);
    }
    let exponent = exponent + int.len() as i64 - leading as i64;
    (negative, digits.into(), exponent)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by a review: `1208925819614629174706175` in an input became the nearest f64, so a
    /// policy denying that serial allowed its neighbour; the same text as a Rego literal is exact.
    #[test]
    fn integers_of_any_size_are_exact_and_equal_their_rego_literal() {
        let v = parse(r#"{"serial": 1208925819614629174706175}"#).unwrap();
        let serial = &v["serial"];
        let literal = Value::from_numeric_string("1208925819614629174706175").unwrap();
        let neighbour = Value::from_numeric_string("1208925819614629174706176").unwrap();
        assert_eq!(*serial, literal);
        assert_ne!(*serial, neighbour);
        assert_eq!(
            parse("-9223372036854775809").unwrap(),
            Value::from_numeric_string("-9223372036854775809").unwrap()
        );
        assert_eq!(parse("1e3").unwrap(), Value::from(1000u64));
        assert_eq!(parse("0.5").unwrap(), Value::from(0.5));
        assert_eq!(parse("-0").unwrap(), Value::from(0u64));
    }

    /// The host's 64-bit reader would change these: they are refused by place, the rest pass.
    #[test]
    fn numbers_a_64_bit_reader_would_change_are_named() {
        for exact in [
            "0",
            "-0",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            "0.1",
            "1.50",
            "1e3",
            "1E+3",
            "2.5e-7",
            "123456789012345.6",
            "-0.000",
            "[1, {\"a\": 0.25}]",
        ] {
            assert_eq!(check_carried_exactly(exact), Ok(()), "{exact}");
        }
        for (lossy, at) in [
            ("1208925819614629174706175", "line 1 column 1"),
            ("-9223372036854775809", "line 1 column 1"),
            ("18446744073709551616", "line 1 column 1"),
            ("{\"x\": 0.30000000000000001}", "line 1 column 7"),
            ("[1,\n 12345678901234567891.5]", "line 2 column 2"),
        ] {
            let e = check_carried_exactly(lossy).unwrap_err();
            assert!(
                e.contains("cannot be carried exactly") && e.contains(at),
                "{lossy}: {e}"
            );
        }
    }

    #[test]
    fn the_serde_json_number_marker_is_an_object_here() {
        let v = parse(r#"{"$serde_json::private::Number": "5"}"#).unwrap();
        assert!(v.as_object().is_ok(), "{v}");
    }

    #[test]
    fn json_values_parse_as_serde_json_parses_them() {
        for text in [
            "null",
            "true",
            "false",
            "\"a\\u00e9\\ud83d\\ude00\\n\"",
            "[]",
            "{}",
            "[1, [2, {}]]",
            r#"{"a": {"b": [true, null, "x"]}, "c": -1.5e-3}"#,
            " \t\n 7 ",
            r#"{"k": 1, "k": 2}"#,
        ] {
            assert_eq!(
                parse(text).unwrap(),
                Value::from_json_str(text).unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn what_is_not_json_is_refused_with_its_place() {
        for bad in [
            "",
            "nul",
            "[1,]",
            "{\"a\" 1}",
            "{1: 2}",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "NaN",
            "\"a",
            "\"\\x\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\u{1}\"",
            "[1] x",
            "1e1001",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&"1".repeat(MAX_NUMBER_LEN + 1)).is_err());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(parse(&deep).unwrap_err().contains("recursion"));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        parse(&ok).unwrap();
        assert_eq!(
            parse("{\n  \"a\": x}").unwrap_err(),
            "expected value at line 2 column 8"
        );
    }
}
