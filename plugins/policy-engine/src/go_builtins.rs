//! Builtins whose meaning in OPA is Go's standard library, where regorus's differ in a way a
//! policy can turn into an allow that OPA denies (found by a review running OPA's sources
//! against the engine): `to_number` (Go's `strconv.ParseFloat`: no padding), `net.cidr_contains`
//! (Go's `net.IPNet.Contains`: an IPv4-mapped IPv6 address is the IPv4 one),
//! `strings.count` (Go's `strings.Count`: matches that do not overlap), `replace` (Go's
//! `strings.Replacer`, as `strings.replace_n`), `lower`/`upper` (Go's
//! simple case mappings, one character for one), the network builtins regorus lacks
//! (`go_net`), the digest, HMAC and JWT builtins it lacks (`go_crypto`), `units.parse` and
//! `units.parse_bytes` (`go_units`: Go's arithmetic and OPA's units),
//! `json.unmarshal`/`json.is_valid` (numbers exact) and `yaml.unmarshal`
//! (go-yaml v2 reads YAML 1.1, where `yes`, `on`, `017` and `12:30` are a boolean and numbers;
//! regorus reads YAML 1.2, where they are strings: a document holding such a plain scalar
//! fails the evaluation here, whatever the mode, until the engine reads YAML 1.1). Registered over regorus's own, on every engine
//! Gantry makes.
//!
//! Where Go accepts more than is written here (hexadecimal floats, say), the call is an error:
//! the engine may deny more than OPA, never allow more.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::IpAddr;

use regorus::{Engine, Value};

use crate::go_crypto;
use crate::host_builtins::Clock;

/// The builtins registered here that regorus does not know, with their arities: the one list
/// the host's build-time check (`gantry policy build`) reads beside regorus's own.
pub const ADDED: &[(&str, u8)] = &[
    ("net.cidr_intersects", 2),
    ("net.cidr_contains_matches", 2),
    ("net.cidr_merge", 1),
    ("crypto.md5", 1),
    ("crypto.sha1", 1),
    ("crypto.sha256", 1),
    ("crypto.hmac.md5", 2),
    ("crypto.hmac.sha1", 2),
    ("crypto.hmac.sha256", 2),
    ("crypto.hmac.sha512", 2),
    ("crypto.hmac.equal", 2),
    ("io.jwt.decode", 1),
    ("io.jwt.verify_hs256", 2),
    ("io.jwt.verify_hs384", 2),
    ("io.jwt.verify_hs512", 2),
    ("io.jwt.verify_rs256", 2),
    ("io.jwt.verify_rs384", 2),
    ("io.jwt.verify_rs512", 2),
    ("io.jwt.verify_ps256", 2),
    ("io.jwt.verify_ps384", 2),
    ("io.jwt.verify_ps512", 2),
    ("io.jwt.verify_es256", 2),
    ("io.jwt.verify_es384", 2),
    ("io.jwt.verify_es512", 2),
    ("io.jwt.verify_eddsa", 2),
    ("io.jwt.decode_verify", 2),
    ("strings.split_n", 3),
    ("array.flatten", 1),
];

/// The arity of `name` when it is one of [`ADDED`].
pub fn added_arity(name: &str) -> Option<u8> {
    ADDED.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

/// What a builtin does with its error: an error when builtin errors are strict, else an undefined
/// value (see [`register`]).
pub trait Fail: Fn(String) -> anyhow::Result<Value> + Copy + Send + Sync + 'static {}
impl<F: Fn(String) -> anyhow::Result<Value> + Copy + Send + Sync + 'static> Fail for F {}

/// A failure of a builtin written here: OPA's error (undefined unless strict), or one that fails
/// the evaluation whatever the mode (`Hard`): the host's clock, and what Gantry cannot read, hold
/// or verify where OPA's Go might (a JWT `cert`, JSON Go reads and this reader refuses, an amount
/// past the number bounds). Found by reviews: as undefined, such an error skipped `deny if { [valid,
/// _, _] := io.jwt.decode_verify(...); not valid }` in a non-strict policy, and a forged token was
/// allowed.
#[derive(Debug)]
pub(crate) enum GoError {
    Builtin(String),
    Hard(String),
}

impl GoError {
    /// The builtin's answer for this failure.
    pub(crate) fn answer(self, fail: impl Fail) -> anyhow::Result<Value> {
        match self {
            GoError::Builtin(e) => fail(e),
            GoError::Hard(e) => Err(anyhow::Error::msg(e)),
        }
    }

    /// The same failure, its message after `what`.
    pub(crate) fn context(self, what: &str) -> GoError {
        match self {
            GoError::Builtin(e) => GoError::Builtin(format!("{what}: {e}")),
            GoError::Hard(e) => GoError::Hard(format!("{what}: {e}")),
        }
    }
}

impl From<String> for GoError {
    fn from(e: String) -> Self {
        GoError::Builtin(e)
    }
}

impl From<&str> for GoError {
    fn from(e: &str) -> Self {
        GoError::Builtin(e.into())
    }
}

/// Registers the builtins on `engine`. With `strict` off an error makes the call undefined, as
/// any builtin error is then. `now_ns` is the host's clock (`io.jwt.decode_verify` without a
/// `time` constraint reads it, as OPA reads the query's time).
pub fn register(engine: &mut Engine, strict: bool, now_ns: &Clock) -> Result<(), String> {
    let fail = move |message: String| -> anyhow::Result<Value> {
        match strict {
            true => Err(anyhow::Error::msg(message)),
            false => Ok(Value::Undefined),
        }
    };
    let to_number = move |args: Vec<Value>| match &args[0] {
        Value::Null => Ok(Value::from(0u64)),
        Value::Bool(b) => Ok(Value::from(u64::from(*b))),
        Value::Number(_) => Ok(args[0].clone()),
        // Go's `strconv.ParseFloat` decides (syntax, and range: `1e400` is an error); the value
        // is the text's, exact (OPA keeps the string as its number). What Go reads and Gantry
        // cannot hold (hexadecimal floats, underscores, beyond 1,000 digits or an exponent of
        // ±10,000) fails the evaluation in either mode: found by a review, as undefined in a
        // non-strict policy it skipped a `deny` OPA would fire.
        Value::String(s) => {
            match go_decimal(s).filter(|j| j.parse::<f64>().is_ok_and(f64::is_finite)) {
                Some(j) => match exact_number(&j) {
                    Some(n @ Value::Number(_)) => Ok(n),
                    _ => Err(anyhow::Error::msg(format!(
                        "to_number: {s:?} is beyond the numbers Gantry holds (1,000 digits, an \
                     exponent within ±10,000)"
                    ))),
                },
                None if go_reads_more(s) => Err(anyhow::Error::msg(format!(
                    "to_number: {s:?}: hexadecimal floats and underscores are not read in Gantry"
                ))),
                None => fail(format!(
                    "to_number: could not parse string as number: {s:?}"
                )),
            }
        }
        _ => fail("to_number: operand 1 must be one of {boolean, null, number, string}".into()),
    };
    let cidr_contains = move |args: Vec<Value>| match (args[0].as_string(), args[1].as_string()) {
        (Ok(cidr), Ok(other)) => match cidr_contains(cidr, other) {
            Ok(b) => Ok(Value::from(b)),
            Err(e) => fail(format!("net.cidr_contains: {e}")),
        },
        _ => fail("net.cidr_contains: operands must be strings".into()),
    };
    let count = move |args: Vec<Value>| match (args[0].as_string(), args[1].as_string()) {
        (Ok(s), Ok(sub)) => Ok(Value::from(go_count(s, sub) as u64)),
        _ => fail("strings.count: operands must be strings".into()),
    };
    let add = |engine: &mut Engine, name: &str, n: u8, f: Box<dyn regorus::Extension>| {
        engine
            .add_extension(name.into(), n, f)
            .map_err(|e| format!("{name}: {e}"))
    };
    add(engine, "to_number", 1, Box::new(to_number))?;
    add(engine, "net.cidr_contains", 2, Box::new(cidr_contains))?;
    let unmarshal = move |args: Vec<Value>| match args[0].as_string() {
        // What OPA reads and this engine cannot fails the evaluation whatever the mode: as
        // undefined, `allow if not deny` allowed where OPA's `deny` fired on `privileged: on`.
        Ok(text) => match yaml_11_ambiguous(text) {
            Some(token) => GoError::Hard(format!(
                "yaml.unmarshal: the plain scalar `{token}` reads differently in YAML 1.1 \
                 (OPA) and 1.2: quote it"
            ))
            .answer(fail),
            // The first document, as go-yaml v2 reads it; a later one that does not read is
            // an error whatever the mode: go-yaml sees some of those and not others.
            None => match Value::from_yaml_stream(text) {
                Ok((v, None)) => Ok(v),
                Ok((_, Some(e))) => GoError::Hard(format!(
                    "yaml.unmarshal: {e:#}: OPA reads the first document, and may refuse the \
                     stream; Gantry refuses it"
                ))
                .answer(fail),
                Err(e) => fail(format!("yaml.unmarshal: could not deserialize yaml: {e}")),
            },
        },
        Err(_) => fail("yaml.unmarshal: operand 1 must be string".into()),
    };
    add(engine, "strings.count", 2, Box::new(count))?;
    add(
        engine,
        "strings.replace_n",
        2,
        crate::go_strings::replace_n(fail),
    )?;
    add(engine, "replace", 3, crate::go_strings::replace_one(fail))?;
    add(engine, "yaml.unmarshal", 1, Box::new(unmarshal))?;
    // As `yaml.unmarshal` reads: a stream whose later document does not read is refused whatever
    // the mode (false skipped a `deny if { yaml.is_valid(y); yaml.unmarshal(y).privileged }`
    // where OPA, reading the first document only, may deny).
    let yaml_is_valid = move |args: Vec<Value>| match args[0].as_string() {
        Ok(text) => match Value::from_yaml_stream(text) {
            Ok((_, None)) => Ok(Value::from(true)),
            Ok((_, Some(e))) => GoError::Hard(format!(
                "yaml.is_valid: {e:#}: OPA reads the first document, and may refuse the stream; \
                 Gantry refuses it"
            ))
            .answer(fail),
            Err(_) => Ok(Value::from(false)),
        },
        Err(_) => Ok(Value::from(false)),
    };
    add(engine, "yaml.is_valid", 1, Box::new(yaml_is_valid))?;
    // JSON text read as the engine reads inputs: integers exact (regorus's reader made a
    // 25-digit serial its f64 neighbour), `1e400` a number as in Go.
    // JSON past the reader's bounds, which Go reads, fails the evaluation whatever the mode.
    let json_unmarshal = move |args: Vec<Value>| match args[0].as_string() {
        Ok(text) => match crate::json::parse_go(text) {
            Ok(v) => Ok(v),
            Err(e) => e.context("json.unmarshal").answer(fail),
        },
        Err(_) => fail("json.unmarshal: operand 1 must be string".into()),
    };
    add(engine, "json.unmarshal", 1, Box::new(json_unmarshal))?;
    let json_is_valid = move |args: Vec<Value>| match args[0].as_string() {
        Ok(text) => match crate::json::parse_go(text) {
            Ok(_) => Ok(Value::from(true)),
            Err(GoError::Builtin(_)) => Ok(Value::from(false)),
            Err(hard) => hard.context("json.is_valid").answer(fail),
        },
        Err(_) => Ok(Value::from(false)),
    };
    add(engine, "json.is_valid", 1, Box::new(json_is_valid))?;
    // Go's `strings.ToLower`/`ToUpper`: one character for one, by Unicode's simple mappings.
    let lower = move |args: Vec<Value>| match args[0].as_string() {
        Ok(s) => Ok(Value::from(s.chars().map(simple_lower).collect::<String>())),
        Err(_) => fail("lower: operand 1 must be string".into()),
    };
    let upper = move |args: Vec<Value>| match args[0].as_string() {
        Ok(s) => Ok(Value::from(s.chars().map(simple_upper).collect::<String>())),
        Err(_) => fail("upper: operand 1 must be string".into()),
    };
    add(engine, "lower", 1, Box::new(lower))?;
    add(engine, "upper", 1, Box::new(upper))?;
    for (name, n, f) in regex_builtins(fail) {
        add(engine, name, n, f)?;
    }
    add(engine, "glob.match", 3, crate::go_glob::builtin(fail))?;
    add(engine, "units.parse", 1, crate::go_units::parse(fail))?;
    add(
        engine,
        "units.parse_bytes",
        1,
        crate::go_units::parse_bytes(fail),
    )?;
    for (name, n) in ADDED {
        let f = match *name {
            "net.cidr_intersects" => crate::go_net::intersects(fail),
            "net.cidr_contains_matches" => crate::go_net::contains_matches(fail),
            "net.cidr_merge" => crate::go_net::merge(fail),
            "crypto.md5" => go_crypto::md5(fail),
            "crypto.sha1" => go_crypto::sha1(fail),
            "crypto.sha256" => go_crypto::sha256(fail),
            "crypto.hmac.md5" => go_crypto::hmac_md5(fail),
            "crypto.hmac.sha1" => go_crypto::hmac_sha1(fail),
            "crypto.hmac.sha256" => go_crypto::hmac_sha256(fail),
            "crypto.hmac.sha512" => go_crypto::hmac_sha512(fail),
            "crypto.hmac.equal" => go_crypto::hmac_equal(fail),
            "io.jwt.decode" => go_crypto::decode(fail),
            "io.jwt.verify_hs256" => go_crypto::verify_hs256(fail),
            "io.jwt.verify_hs384" => go_crypto::verify_hs384(fail),
            "io.jwt.verify_hs512" => go_crypto::verify_hs512(fail),
            "io.jwt.verify_rs256" => go_crypto::verify_rs256(fail),
            "io.jwt.verify_rs384" => go_crypto::verify_rs384(fail),
            "io.jwt.verify_rs512" => go_crypto::verify_rs512(fail),
            "io.jwt.verify_ps256" => go_crypto::verify_ps256(fail),
            "io.jwt.verify_ps384" => go_crypto::verify_ps384(fail),
            "io.jwt.verify_ps512" => go_crypto::verify_ps512(fail),
            "io.jwt.verify_es256" => go_crypto::verify_es256(fail),
            "io.jwt.verify_es384" => go_crypto::verify_es384(fail),
            "io.jwt.verify_es512" => go_crypto::verify_es512(fail),
            "io.jwt.verify_eddsa" => go_crypto::verify_eddsa(fail),
            "io.jwt.decode_verify" => go_crypto::decode_verify(fail, now_ns.clone()),
            "strings.split_n" => crate::go_strings::split_n(fail),
            "array.flatten" => crate::go_strings::flatten(fail),
            _ => return Err(format!("{name}: listed as added, and not written")),
        };
        add(engine, name, *n, f)?;
    }
    add(engine, "sprintf", 2, crate::go_fmt::builtin(fail))?;
    Ok(())
}

/// OPA's `regex.*` builtins on Go's syntax and match iteration ([`crate::go_regex`]). A pattern Go
/// refuses is a builtin error; one too large to compile is an evaluation error whatever the mode.
#[allow(clippy::type_complexity)]
fn regex_builtins(fail: impl Fail) -> Vec<(&'static str, u8, Box<dyn regorus::Extension>)> {
    use crate::go_regex::{self, Error};
    let compile = move |name: &str, pattern: &str| match go_regex::compile(pattern) {
        Ok(re) => Ok(re),
        Err(Error::TooBig) => Err(Err(anyhow::Error::msg(format!(
            "{name}: {pattern:?}: {}",
            Error::TooBig
        )))),
        Err(e) => Err(fail(format!("{name}: {e}"))),
    };
    let strings = move |name: &str, args: &[Value]| -> Result<Vec<String>, anyhow::Result<Value>> {
        args.iter()
            .enumerate()
            .map(|(i, a)| match a.as_string() {
                Ok(s) => Ok(s.to_string()),
                Err(_) => Err(fail(format!("{name}: operand {} must be string", i + 1))),
            })
            .collect()
    };
    let count = move |name: &str, v: &Value| match v.as_i64() {
        Ok(n) => Ok(n),
        Err(_) => Err(fail(format!("{name}: operand 3 must be an integer"))),
    };
    let strings_of = |v: Vec<&str>| Value::from(v.into_iter().map(Value::from).collect::<Vec<_>>());

    let matches = move |args: Vec<Value>| {
        let name = "regex.match";
        let [pattern, value] = match strings(name, &args) {
            Ok(s) => <[String; 2]>::try_from(s).expect("two operands"),
            Err(e) => return e,
        };
        match compile(name, &pattern) {
            Ok(re) => Ok(Value::from(re.is_match(&value))),
            Err(e) => e,
        }
    };
    let is_valid = move |args: Vec<Value>| match args[0].as_string() {
        Ok(pattern) => match go_regex::compile(pattern) {
            Ok(_) => Ok(Value::from(true)),
            Err(Error::TooBig) => Err(anyhow::Error::msg(format!(
                "regex.is_valid: {pattern:?}: {}",
                Error::TooBig
            ))),
            Err(Error::Syntax(_)) => Ok(Value::from(false)),
        },
        Err(_) => Ok(Value::from(false)),
    };
    // `(pattern, value, n)` of the `_n` builtins.
    let counted = move |name: &str, args: &[Value]| match (
        strings(name, &args[..2]),
        count(name, &args[2]),
    ) {
        (Ok(s), Ok(n)) => Ok((s, n)),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let find_n = move |args: Vec<Value>| {
        let name = "regex.find_n";
        let (strs, n) = match counted(name, &args) {
            Ok(found) => found,
            Err(e) => return e,
        };
        match compile(name, &strs[0]) {
            Ok(re) => Ok(strings_of(
                go_regex::all_matches(&re, &strs[1], n)
                    .iter()
                    .map(|c| c.get(0).map_or("", |m| m.as_str()))
                    .collect(),
            )),
            Err(e) => e,
        }
    };
    let submatches = move |args: Vec<Value>| {
        let name = "regex.find_all_string_submatch_n";
        let (strs, n) = match counted(name, &args) {
            Ok(found) => found,
            Err(e) => return e,
        };
        match compile(name, &strs[0]) {
            Ok(re) => Ok(Value::from(
                go_regex::all_matches(&re, &strs[1], n)
                    .iter()
                    .map(|c| strings_of(c.iter().map(|g| g.map_or("", |m| m.as_str())).collect()))
                    .collect::<Vec<_>>(),
            )),
            Err(e) => e,
        }
    };
    let split = move |args: Vec<Value>| {
        let name = "regex.split";
        let [pattern, value] = match strings(name, &args) {
            Ok(s) => <[String; 2]>::try_from(s).expect("two operands"),
            Err(e) => return e,
        };
        match compile(name, &pattern) {
            Ok(re) => Ok(strings_of(go_regex::split(&re, &pattern, &value))),
            Err(e) => e,
        }
    };
    let replace = move |args: Vec<Value>| {
        let name = "regex.replace";
        let [base, pattern, value] = match strings(name, &args) {
            Ok(s) => <[String; 3]>::try_from(s).expect("three operands"),
            Err(e) => return e,
        };
        match compile(name, &pattern) {
            Ok(re) => Ok(Value::from(go_regex::replace_all(&re, &base, &value))),
            Err(e) => e,
        }
    };
    let template_match = move |args: Vec<Value>| {
        let name = "regex.template_match";
        let [template, value, start, end] = match strings(name, &args) {
            Ok(s) => <[String; 4]>::try_from(s).expect("four operands"),
            Err(e) => return e,
        };
        match go_regex::template_match(&template, &value, &start, &end) {
            Ok(b) => Ok(Value::from(b)),
            Err(Error::TooBig) => Err(anyhow::Error::msg(format!(
                "{name}: {template:?}: {}",
                Error::TooBig
            ))),
            Err(e) => fail(format!("{name}: {e}")),
        }
    };
    alloc::vec![
        (
            "regex.match",
            2,
            Box::new(matches) as Box<dyn regorus::Extension>
        ),
        ("regex.is_valid", 1, Box::new(is_valid)),
        ("regex.find_n", 3, Box::new(find_n)),
        ("regex.find_all_string_submatch_n", 3, Box::new(submatches)),
        ("regex.split", 2, Box::new(split)),
        ("regex.replace", 3, Box::new(replace)),
        ("regex.template_match", 4, Box::new(template_match)),
    ]
}

/// The first plain (unquoted) scalar of `text` that YAML 1.1 (go-yaml v2, OPA's) resolves to a
/// boolean or a number where YAML 1.2 (regorus's) reads a string, or another number: `y`, `yes`,
/// `on`, `off`, `no` in their cases; integers with a leading zero, `0b`/`0o`, underscores;
/// sexagesimal `12:30`. Text inside quotes that splits into such a word (`'a yes b'`) counts too:
/// an error where OPA has a value, never a different value.
fn yaml_11_ambiguous(text: &str) -> Option<&str> {
    const WORDS: [&str; 16] = [
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
        "OFF",
    ];
    let number = |t: &str| {
        let t = t.strip_prefix(['-', '+']).unwrap_or(t);
        let digits = |t: &str, ok: fn(char) -> bool| !t.is_empty() && t.chars().all(ok);
        let octal = |c: char| matches!(c, '0'..='7' | '_');
        (t.len() > 1 && t.starts_with('0') && digits(&t[1..], octal))
            || t.strip_prefix("0b")
                .is_some_and(|b| digits(b, |c| matches!(c, '0' | '1' | '_')))
            || t.strip_prefix("0o").is_some_and(|o| digits(o, octal))
            || (t.contains('_')
                && t.starts_with(|c: char| c.is_ascii_digit())
                && t.chars()
                    .all(|c| c.is_ascii_hexdigit() || matches!(c, '_' | '.' | 'x')))
            || (t.contains(':')
                && t.split(':')
                    .all(|p| digits(p, |c| c.is_ascii_digit() || c == '_'))
                && t.starts_with(|c: char| c.is_ascii_digit()))
    };
    text.split(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | ']' | '{' | '}'))
        .map(|t| t.strip_suffix(':').unwrap_or(t))
        .find(|t| WORDS.contains(t) || number(t))
}

/// Go's `strings.Count`: non-overlapping matches; an empty `sub` counts the characters, plus 1.
fn go_count(s: &str, sub: &str) -> usize {
    match sub.is_empty() {
        true => s.chars().count() + 1,
        false => s.matches(sub).count(),
    }
}

/// Whether `s` may be one of the numbers Go's `ParseFloat` reads that [`go_decimal`] does not: a
/// hexadecimal float (`0x1p-2`), digits with underscores.
fn go_reads_more(s: &str) -> bool {
    let unsigned = s.trim_start_matches(['+', '-']);
    let hex = unsigned.starts_with("0x") || unsigned.starts_with("0X");
    let underscored = s.contains('_')
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() || "_.+-xXpP".contains(c));
    hex || underscored
}

/// A decimal number as Go's `strconv.ParseFloat` reads it (`+1`, `.5`, `1.`, `007`, `1e5`; no
/// spaces), as JSON; `None` for anything else (hexadecimal floats and underscores included,
/// which Go reads and this refuses; `inf` and `nan`, which OPA refuses).
fn go_decimal(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let digits = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut i = 0;
    let negative = matches!(b.first(), Some(b'-'));
    if matches!(b.first(), Some(b'+' | b'-')) {
        i = 1;
    }
    let end = digits(i);
    let int = &s[i..end];
    i = end;
    let mut frac = "";
    if b.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        frac = &s[i + 1..end];
        i = end;
    }
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut exponent = "";
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let start = i + 1;
        let sign = usize::from(matches!(b.get(start), Some(b'+' | b'-')));
        let end = digits(start + sign);
        if end == start + sign {
            return None;
        }
        exponent = &s[start..end];
        i = end;
    }
    if i != b.len() {
        return None;
    }
    let int = match int.trim_start_matches('0') {
        "" => "0",
        int => int,
    };
    let mut json = String::new();
    if negative {
        json.push('-');
    }
    json.push_str(int);
    if !frac.is_empty() {
        json.push('.');
        json.push_str(frac);
    }
    if !exponent.is_empty() {
        json.push('e');
        json.push_str(exponent);
    }
    Some(json)
}

/// The number decimal text `j` (from [`go_decimal`], within an f64's range) means, exact. A zero
/// mantissa is 0 whatever its exponent: regorus would build `10^2147483647` for `0e2147483647`
/// (a reading: any finite text reached it).
fn exact_number(j: &str) -> Option<Value> {
    let mantissa = j.split(['e', 'E']).next().unwrap_or(j);
    if mantissa
        .bytes()
        .all(|b| matches!(b, b'0' | b'.' | b'-' | b'+'))
    {
        return Some(Value::from(0u64));
    }
    Value::from_numeric_string(j).ok()
}

/// Go's `unicode.ToLower` of `c`: the simple mapping (Rust's is the full one, where `İ` becomes
/// two characters; Go's gives `i`).
fn simple_lower(c: char) -> char {
    let mut l = c.to_lowercase();
    match (l.next(), l.next()) {
        (Some(one), None) => one,
        _ if c == '\u{130}' => 'i',
        _ => c,
    }
}

/// Go's `unicode.ToUpper` of `c`: the simple mapping. Where Unicode's full mapping is several
/// characters (`ß`, the ligatures `ﬁ` and `ﬆ`) the simple one keeps the character, except the
/// Greek letters with a subscript iota, which map to their capitals with it.
fn simple_upper(c: char) -> char {
    let mut u = c.to_uppercase();
    match (u.next(), u.next()) {
        (Some(one), None) => one,
        _ => {
            let iota = match c as u32 {
                n @ (0x1F80..=0x1F87 | 0x1F90..=0x1F97 | 0x1FA0..=0x1FA7) => n + 8,
                0x1FB3 => 0x1FBC,
                0x1FC3 => 0x1FCC,
                0x1FF3 => 0x1FFC,
                _ => c as u32,
            };
            char::from_u32(iota).unwrap_or(c)
        }
    }
}

/// An address or network: an IPv4-mapped IPv6 one is the IPv4 one, as Go compares them.
pub(crate) fn network(s: &str, cidr: bool) -> Result<(IpAddr, u32), String> {
    let (address, prefix) = match (cidr, s.split_once('/')) {
        (true, Some((a, p))) if !p.is_empty() && p.bytes().all(|d| d.is_ascii_digit()) => {
            (a, p.parse::<u32>().map_err(|e| e.to_string())?)
        }
        (true, _) => return Err(format!("invalid CIDR address: {s}")),
        (false, _) => (s, u32::MAX),
    };
    let ip: IpAddr = address
        .parse()
        .map_err(|_| format!("invalid IP address: {s}"))?;
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = if prefix == u32::MAX { bits } else { prefix };
    if prefix > bits {
        return Err(format!("invalid CIDR address: {s}"));
    }
    Ok(match ip {
        IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), prefix - 96),
            None => (ip, prefix),
        },
        _ => (ip, prefix),
    })
}

/// OPA's `net.cidr_contains(cidr, cidr_or_ip)`.
pub(crate) fn cidr_contains(cidr: &str, other: &str) -> Result<bool, String> {
    let (net, prefix) = network(cidr, true)?;
    let (ip, other_prefix) = network(other, other.contains('/'))?;
    let bits = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
        IpAddr::V6(v6) => u128::from(v6),
    };
    if net.is_ipv4() != ip.is_ipv4() || other_prefix < prefix {
        return Ok(false);
    }
    // Both families sit in the top bits: a prefix is the top bits of either.
    let mask = match prefix {
        0 => 0,
        w => u128::MAX << (128 - w),
    };
    Ok(bits(net) & mask == bits(ip) & mask)
}

#[cfg(test)]
mod tests;
