// Copyright (c) Microsoft Corporation.
// Licensed under the MIT License.
#![allow(clippy::unused_trait_names, clippy::pattern_type_mismatch)]

use crate::ast::{Expr, Ref};
use crate::builtins;
#[cfg(feature = "urlquery")]
use crate::builtins::utils::enforce_limit;
#[allow(unused)]
use crate::builtins::utils::{
    ensure_args_count, ensure_object, ensure_string, ensure_string_collection,
};
use crate::lexer::Span;
use crate::value::Value;
use crate::*;

#[allow(unused)]
use anyhow::{anyhow, bail, Context, Result};

pub fn register(m: &mut builtins::BuiltinsMap<&'static str, builtins::BuiltinFcn>) {
    #[cfg(feature = "base64")]
    {
        m.insert("base64.decode", (base64_decode, 1));
        m.insert("base64.encode", (base64_encode, 1));
        m.insert("base64.is_valid", (base64_is_valid, 1));
    }
    #[cfg(feature = "base64url")]
    {
        m.insert("base64url.decode", (base64url_decode, 1));
        m.insert("base64url.encode", (base64url_encode, 1));
        m.insert("base64url.encode_no_pad", (base64url_encode_no_pad, 1));
    }
    #[cfg(feature = "hex")]
    {
        m.insert("hex.decode", (hex_decode, 1));
        m.insert("hex.encode", (hex_encode, 1));
    }
    #[cfg(feature = "urlquery")]
    {
        m.insert("urlquery.decode", (urlquery_decode, 1));
        m.insert("urlquery.decode_object", (urlquery_decode_object, 1));
        m.insert("urlquery.encode", (urlquery_encode, 1));
        m.insert("urlquery.encode_object", (urlquery_encode_object, 1));
    }
    m.insert("json.is_valid", (json_is_valid, 1));
    m.insert("json.marshal", (json_marshal, 1));
    m.insert("json.marshal_with_options", (json_marshal_with_options, 2));
    m.insert("json.unmarshal", (json_unmarshal, 1));

    #[cfg(feature = "yaml")]
    {
        m.insert("yaml.is_valid", (yaml_is_valid, 1));
        m.insert("yaml.marshal", (yaml_marshal, 1));
        m.insert("yaml.unmarshal", (yaml_unmarshal, 1));
    }
}

#[cfg(feature = "base64")]
fn base64_decode(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    _strict: bool,
) -> Result<Value> {
    let name = "base64.decode";
    ensure_args_count(span, name, params, args, 1)?;

    let encoded_str = ensure_string(name, &params[0], &args[0])?;
    let decoded_bytes = go_base64_decode(encoded_str.as_bytes(), false)
        .map_err(|e| params[0].span().error(&e))?;
    Ok(Value::String(
        String::from_utf8_lossy(&decoded_bytes).into(),
    ))
}

/// Gantry: Go's `base64.StdEncoding.DecodeString` (or `URLEncoding`'s, `url`): padding
/// required, `\r` and `\n` skipped anywhere, unused bits of the last character ignored (Go
/// is not strict there). Upstream's decoder refused those bits (`"J9=="`, Go's `'`) and took
/// padding inside the text (`"PWI=Lw=="`, an error in Go): `base64.is_valid` said true where
/// OPA says false.
#[cfg(any(feature = "base64", feature = "base64url"))]
fn go_base64_decode(s: &[u8], url: bool) -> core::result::Result<Vec<u8>, String> {
    let corrupt = |at: usize| format!("illegal base64 data at input byte {at}");
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' if !url => 62,
            b'/' if !url => 63,
            b'-' if url => 62,
            b'_' if url => 63,
            _ => return None,
        }))
    };
    let newline = |c: &u8| *c == b'\n' || *c == b'\r';
    let skip_newlines = |mut i: usize| {
        while s.get(i).is_some_and(newline) {
            i += 1;
        }
        i
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut i = 0;
    loop {
        let mut quantum = [0u32; 4];
        let mut len = 0;
        while len < 4 {
            let Some(&c) = s.get(i) else {
                return match len {
                    0 => Ok(out),
                    _ => Err(corrupt(i - len)),
                };
            };
            i += 1;
            if let Some(v) = value(c) {
                quantum[len] = v;
                len += 1;
                continue;
            }
            if newline(&c) {
                continue;
            }
            if c != b'=' || len < 2 {
                return Err(corrupt(i - 1));
            }
            if len == 2 {
                // `==`: the second `=` after any newlines.
                i = skip_newlines(i);
                if s.get(i) != Some(&b'=') {
                    return Err(corrupt(i.min(s.len())));
                }
                i += 1;
            }
            i = skip_newlines(i);
            if i < s.len() {
                return Err(corrupt(i));
            }
            break;
        }
        let v = quantum[0] << 18 | quantum[1] << 12 | quantum[2] << 6 | quantum[3];
        let bytes = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        out.extend_from_slice(&bytes[..len - 1]);
        if len < 4 {
            return Ok(out);
        }
    }
}

#[cfg(feature = "base64")]
fn base64_encode(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    _strict: bool,
) -> Result<Value> {
    let name = "base64.encode";
    ensure_args_count(span, name, params, args, 1)?;

    let string = ensure_string(name, &params[0], &args[0])?;
    Ok(Value::String(
        data_encoding::BASE64.encode(string.as_bytes()).into(),
    ))
}

#[cfg(feature = "base64")]
fn base64_is_valid(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    _strict: bool,
) -> Result<Value> {
    let name = "base64.is_valid";
    ensure_args_count(span, name, params, args, 1)?;

    let encoded_str = ensure_string(name, &params[0], &args[0])?;
    Ok(Value::Bool(
        go_base64_decode(encoded_str.as_bytes(), false).is_ok(),
    ))
}

#[cfg(feature = "base64url")]
fn base64url_decode(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    _strict: bool,
) -> Result<Value> {
    let name = "base64url.decode";
    ensure_args_count(span, name, params, args, 1)?;

    let encoded_str = ensure_string(name, &params[0], &args[0])?;
    // Gantry: OPA's: padding added to a string that has none (RFC 7515, appendix C), then Go's
    // `base64.URLEncoding` (upstream's decoders refused what Go reads, see `go_base64_decode`).
    let mut padded = encoded_str.to_string();
    if !padded.ends_with('=') {
        match padded.len() % 4 {
            0 => {}
            2 => padded.push_str("=="),
            3 => padded.push('='),
            _ => bail!(params[0]
                .span()
                .error(&format!("illegal base64url string: {encoded_str}"))),
        }
    }
    let decoded_bytes =
        go_base64_decode(padded.as_bytes(), true).map_err(|e| params[0].span().error(&e))?;

    Ok(Value::String(
        String::from_utf8_lossy(&decoded_bytes).into(),
    ))
}

#[cfg(feature = "base64url")]
fn base64url_encode(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    _strict: bool,
) -> Result<Value> {
    let name = "base64url.encode";
    ensure_args_count(span, name, params, args, 1)?;

    let string = ensure_string(name, &params[0], &args[0])?;
    Ok(Value::String(
        data_encoding::BASE64URL.encode(string.as_bytes()).into(),
    ))
}

#[cfg(feature = "base64url")]
fn base64url_encode_no_pad(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    _strict: bool,
) -> Result<Value> {
    let name = "base64url.encode_no_pad";
    ensure_args_count(span, name, params, args, 1)?;

    let string = ensure_string(name, &params[0], &args[0])?;
    Ok(Value::String(
        data_encoding::BASE64URL_NOPAD
            .encode(string.as_bytes())
            .into(),
    ))
}

#[cfg(feature = "hex")]
fn hex_decode(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "hex.decode";
    ensure_args_count(span, name, params, args, 1)?;

    let encoded_str = ensure_string(name, &params[0], &args[0])?;
    let decoded_bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(encoded_str.as_bytes())
        .map_err(|e| {
            params[0]
                .span()
                .error(&format!("decode failure\nCaused by\n{e}"))
        })?;
    Ok(Value::String(
        String::from_utf8_lossy(&decoded_bytes).into(),
    ))
}

#[cfg(feature = "hex")]
fn hex_encode(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "hex.encode";
    ensure_args_count(span, name, params, args, 1)?;

    let string = ensure_string(name, &params[0], &args[0])?;
    Ok(Value::String(
        data_encoding::HEXLOWER_PERMISSIVE
            .encode(string.as_bytes())
            .into(),
    ))
}

#[cfg(feature = "urlquery")]
fn urlquery_decode(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    _strict: bool,
) -> Result<Value> {
    let name = "urlquery.decode";
    ensure_args_count(span, name, params, args, 1)?;

    let string = ensure_string(name, &params[0], &args[0])?;
    // Gantry: Go's `url.QueryUnescape` (upstream parsed the text as a URL's query, so `&` and
    // spaces at its ends were lost, text after `#` dropped, and a bad escape kept as text).
    let decoded = go_query_unescape(&string).map_err(|e| params[0].span().error(&e))?;
    Ok(Value::String(decoded.into()))
}

#[cfg(feature = "urlquery")]
fn urlquery_decode_object(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    _strict: bool,
) -> Result<Value> {
    let name = "urlquery.decode_object";
    ensure_args_count(span, name, params, args, 1)?;

    let string = ensure_string(name, &params[0], &args[0])?;
    // Gantry: Go's `url.ParseQuery` (OPA fails on its error: a bad escape, a `;`).
    let mut map = alloc::collections::BTreeMap::new();
    for (k, vs) in go_parse_query(&string).map_err(|e| params[0].span().error(&e))? {
        let values = vs.into_iter().map(|v| Value::String(v.into())).collect();
        map.insert(Value::String(k.into()), Value::from_array(values));
        // Guard decoded parameter accumulation while grouping duplicate keys.
        enforce_limit()?;
    }
    Ok(Value::from_map(map))
}

#[cfg(feature = "urlquery")]
fn urlquery_encode(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    _strict: bool,
) -> Result<Value> {
    let name = "urlquery.encode";
    ensure_args_count(span, name, params, args, 1)?;

    let s = ensure_string(name, &params[0], &args[0])?;
    // Gantry: Go's `url.QueryEscape` (upstream's form encoding kept `*` and escaped `~`).
    Ok(Value::String(go_query_escape(&s).into()))
}

#[cfg(feature = "urlquery")]
fn urlquery_encode_object(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    _strict: bool,
) -> Result<Value> {
    let name = "urlquery.encode_object";
    ensure_args_count(span, name, params, args, 1)?;

    let obj = ensure_object(name, &params[0], args[0].clone())?;
    // Gantry: Go's `url.Values.Encode`: keys in order, each value `QueryEscape`d (upstream's
    // form encoding kept `*` and escaped `~`).
    let mut pairs: Vec<String> = Vec::new();
    for (key, value) in obj.iter_sorted() {
        let key = go_query_escape(&ensure_string(name, &params[0], key)?);
        match value {
            Value::String(v) => {
                pairs.push(format!("{key}={}", go_query_escape(v)));
                // Guard encoded parameter growth when serializing string fields.
                enforce_limit()?;
            }
            _ => {
                let values = ensure_string_collection(name, &params[0], value)?;
                for v in values {
                    pairs.push(format!("{key}={}", go_query_escape(v)));
                    // Guard encoded parameter growth when serializing multi-valued fields.
                    enforce_limit()?;
                }
            }
        }
    }
    Ok(Value::String(pairs.join("&").into()))
}

/// Gantry: Go's `url.QueryEscape`: letters, digits and `-_.~` as they are, a space as `+`,
/// every other byte as `%XX`.
#[cfg(feature = "urlquery")]
fn go_query_escape(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
        }
    }
    out
}

/// Gantry: Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte, a `%` without two hex
/// digits after it an error. Bytes that are no UTF-8 read as U+FFFD, as OPA's result string
/// is written out.
#[cfg(feature = "urlquery")]
fn go_query_unescape(s: &str) -> core::result::Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'%' => {
                let hex = |j: usize| b.get(j).and_then(|&c| char::from(c).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                    let bad = b.get(i..(i + 3).min(b.len())).unwrap_or_default();
                    return Err(format!(
                        "invalid URL escape {:?}",
                        String::from_utf8_lossy(bad)
                    ));
                };
                out.push(u8::try_from(hi * 16 + lo).unwrap_or_default());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Gantry: Go's `url.ParseQuery`: `&`-separated `key=value` pairs, each unescaped; an empty
/// pair skipped; a key holding `;` or a bad escape the error (the first one).
#[cfg(feature = "urlquery")]
fn go_parse_query(
    s: &str,
) -> core::result::Result<alloc::collections::BTreeMap<String, Vec<String>>, String> {
    let mut map: alloc::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut error = None;
    for pair in s.split('&') {
        if pair.contains(';') {
            error.get_or_insert_with(|| "invalid semicolon separator in query".to_string());
            continue;
        }
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (go_query_unescape(k), go_query_unescape(v)) {
            (Ok(k), Ok(v)) => map.entry(k).or_default().push(v),
            (Err(e), _) | (_, Err(e)) => {
                error.get_or_insert(e);
            }
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(map),
    }
}

#[cfg(feature = "yaml")]
fn yaml_is_valid(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    _strict: bool,
) -> Result<Value> {
    let name = "yaml.is_valid";
    ensure_args_count(span, name, params, args, 1)?;

    // Gantry: OPA's `yaml.is_valid` of a value that is no string is false, not an error.
    let Value::String(yaml_str) = &args[0] else {
        return Ok(Value::Bool(false));
    };
    Ok(Value::Bool(Value::from_yaml_str(yaml_str).is_ok()))
}

#[cfg(feature = "yaml")]
fn yaml_marshal(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "yaml.marshal";
    ensure_args_count(span, name, params, args, 1)?;

    // Gantry: numbers past what an f64 carries are rounded first (OPA's YAML reads a number's
    // text as a float64), as only serde_json writes them whole (`Number`'s `Serialize`).
    let serialized = yaml_serde::to_string(&rounded_past_f64(&args[0]))
        .map_err(|err| span.error(&format!("could not serialize to yaml: {err}")))?;

    Ok(Value::String(serialized.into()))
}

/// Gantry: `v` with each number [`crate::number::Number::rounded_past_f64`].
#[cfg(feature = "yaml")]
fn rounded_past_f64(v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::Number(n.rounded_past_f64()),
        Value::Array(a) => Value::from(a.iter().map(rounded_past_f64).collect::<Vec<_>>()),
        Value::Set(s) => Value::from(
            s.iter()
                .map(rounded_past_f64)
                .collect::<alloc::collections::BTreeSet<_>>(),
        ),
        Value::Object(o) => Value::from(
            o.iter()
                .map(|(k, v)| (rounded_past_f64(k), rounded_past_f64(v)))
                .collect::<alloc::collections::BTreeMap<_, _>>(),
        ),
        other => other.clone(),
    }
}

#[cfg(feature = "yaml")]
fn yaml_unmarshal(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    _strict: bool,
) -> Result<Value> {
    let name = "yaml.unmarshal";
    ensure_args_count(span, name, params, args, 1)?;
    let yaml_str = ensure_string(name, &params[0], &args[0])?;
    Value::from_yaml_str(&yaml_str).with_context(|| span.error("could not deserialize yaml."))
}

fn json_is_valid(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    _strict: bool,
) -> Result<Value> {
    let name = "json.is_valid";
    ensure_args_count(span, name, params, args, 1)?;

    let json_str = ensure_string(name, &params[0], &args[0])?;
    Ok(Value::Bool(Value::from_json_str(&json_str).is_ok()))
}

/// Gantry: `text` (JSON from serde_json) with the escapes Go's `json.Marshal` (OPA's) writes and
/// serde_json does not: `<`, `>`, `&`, U+2028 and U+2029 as `\u003c`, `\u003e`, `\u0026`,
/// `\u2028`, `\u2029`. serde_json writes them only inside strings, so escaping them anywhere in
/// its output escapes them there (upstream's `json.marshal("<b>")` was not OPA's string, so a
/// policy comparing or hashing one decided on another text).
fn go_json_escapes(text: String) -> String {
    if !text.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return text;
    }
    let mut out = String::with_capacity(text.len().saturating_add(16));
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Gantry: `v` as OPA hands it to Go's `json.Marshal` (`ast.JSON`): an object's key that is no
/// string becomes its JSON text, and the keys then order (and, equal, merge) as the strings
/// they are, as Go orders a map's keys (upstream ordered `{2: "a", 10: "b"}` by number); a
/// set becomes the array of its members in their order. `None` where nothing changes.
fn go_json_value(v: &Value) -> Result<Option<Value>> {
    match v {
        Value::Array(a) => {
            let mut changed: Option<Vec<Value>> = None;
            for (i, item) in a.iter().enumerate() {
                if let Some(new) = go_json_value(item)? {
                    let items = changed.get_or_insert_with(|| a.to_vec());
                    if let Some(slot) = items.get_mut(i) {
                        *slot = new;
                    }
                }
            }
            Ok(changed.map(Value::from_array))
        }
        Value::Set(s) => {
            let mut changed = false;
            let mut items = Vec::with_capacity(s.len());
            for item in s.iter() {
                match go_json_value(item)? {
                    Some(new) => {
                        changed = true;
                        items.push(new);
                    }
                    None => items.push(item.clone()),
                }
            }
            Ok(changed.then(|| Value::from_array(items)))
        }
        Value::Object(o) => {
            let mut changed = false;
            let mut out = alloc::collections::BTreeMap::new();
            for (key, value) in o.iter() {
                let key = match key {
                    Value::String(_) => key.clone(),
                    other => {
                        changed = true;
                        Value::from(go_json_text(other, false)?)
                    }
                };
                let value = match go_json_value(value)? {
                    Some(new) => {
                        changed = true;
                        new
                    }
                    None => value.clone(),
                };
                out.insert(key, value);
            }
            Ok(changed.then(|| Value::from_map(out)))
        }
        _ => Ok(None),
    }
}

/// Gantry: Go's `json.Marshal` (or `MarshalIndent` by two spaces, `pretty`) of `v` as OPA hands
/// it over: [`go_json_value`], then [`go_json_escapes`].
fn go_json_text(v: &Value, pretty: bool) -> Result<String> {
    let converted = go_json_value(v)?;
    let v = converted.as_ref().unwrap_or(v);
    let text = match pretty {
        true => serde_json::to_string_pretty(v)?,
        false => serde_json::to_string(v)?,
    };
    Ok(go_json_escapes(text))
}

fn json_marshal(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "json.marshal";
    ensure_args_count(span, name, params, args, 1)?;
    Ok(Value::from(go_json_text(&args[0], false).map_err(|e| {
        span.error(&format!("could not serialize to json\nCaused by\n{e}"))
    })?))
}

fn json_marshal_with_options(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    _strict: bool,
) -> Result<Value> {
    let name = "json.marshal_with_options";
    ensure_args_count(span, name, params, args, 2)?;

    let options = ensure_object(name, &params[1], args[1].clone())?;
    let (mut pretty, mut indent, mut prefix) = (true, Some("\t".to_owned()), None);
    for (option, option_value) in options.iter() {
        match option {
            Value::String(s) if s.as_ref() == "pretty" && option_value.as_bool().is_ok() => {
                pretty = option_value == &Value::Bool(true);
            }
            Value::String(s) if s.as_ref() == "pretty" => bail!(params[1]
                .span()
                .error("marshaling option `pretty` must be true or false")),
            Value::String(s) if s.as_ref() == "prefix" && option_value.as_string().is_ok() => {
                prefix = Some(option_value.as_string()?.as_ref().to_string());
            }
            Value::String(s) if s.as_ref() == "prefix" => bail!(params[1]
                .span()
                .error("marshaling option `pretty` must be string")),
            Value::String(s) if s.as_ref() == "indent" && option_value.as_string().is_ok() => {
                indent = Some(option_value.as_string()?.as_ref().to_string());
            }
            Value::String(s) if s.as_ref() == "indent" => bail!(params[1]
                .span()
                .error("marshaling option `pretty` must be string")),
            _ => bail!(params[1]
                .span()
                .error("marshaling option must be one of `indent`, `prefix` or `pretty`")),
        }
    }

    let serialize = |pretty| {
        go_json_text(&args[0], pretty)
            .map_err(|e| span.error(&format!("could not serialize to json\nCaused by\n{e}")))
    };
    if !pretty || options.is_empty() {
        return Ok(Value::from(serialize(false)?));
    }

    // Escaped before the indent and prefix, which Go writes as they are.
    let lines: Vec<String> = serialize(true)?
        .split('\n')
        .map(|line| {
            let mut line = line.to_string();

            if let Some(indent) = &indent {
                let start_trimmed = line.trim_start();
                let leading_spaces = line.len() - start_trimmed.len();
                let indentation_level = leading_spaces / 2;
                line = indent.repeat(indentation_level) + start_trimmed;
            }

            if let Some(prefix) = &prefix {
                line = prefix.to_owned() + &line;
            }
            line
        })
        .collect();

    Ok(Value::from(lines.join("\n")))
}

fn json_unmarshal(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    _strict: bool,
) -> Result<Value> {
    let name = "json.unmarshal";
    ensure_args_count(span, name, params, args, 1)?;
    let json_str = ensure_string(name, &params[0], &args[0])?;
    Value::from_json_str(&json_str).with_context(|| span.error("could not deserialize json."))
}
