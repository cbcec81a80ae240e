// Copyright (c) Microsoft Corporation.
// Licensed under the MIT License.
//
// Gantry: OPA's reading and ordering of versions (its `internal/semver`), not the `semver`
// crate's SemVer 2.0: OPA takes a leading `v`, leading zeros (`01.2.3`, `1.2.3-01`) and reads
// `1.2.3-01` and `1.2.3-1` as no order at all (its comparison does not end; here an error).
// The crate refused the first three, so `semver.compare(input.version, "1.2.0") >= 0` failed
// where OPA allows, and `semver.is_valid` was false. `semver.is_valid` of a value that is no
// string is false, as OPA's, in strict mode too.
#![allow(clippy::as_conversions, clippy::pattern_type_mismatch)]

use crate::ast::{Expr, Ref};
use crate::builtins;
use crate::builtins::utils::{ensure_args_count, ensure_string};
use crate::lexer::Span;
use crate::value::Value;

use alloc::format;

use anyhow::{bail, Result};

pub fn register(m: &mut builtins::BuiltinsMap<&'static str, builtins::BuiltinFcn>) {
    m.insert("semver.compare", (compare, 2));
    m.insert("semver.is_valid", (is_valid, 1));
}

fn compare(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "semver.compare";
    ensure_args_count(span, name, params, args, 2)?;

    let v1 = ensure_string(name, &params[0], &args[0])?;
    let v2 = ensure_string(name, &params[1], &args[1])?;
    let Some(version1) = Version::parse(&v1) else {
        bail!(params[0]
            .span()
            .error(&format!("operand 1: string {v1} is not a valid SemVer")));
    };
    let Some(version2) = Version::parse(&v2) else {
        bail!(params[1]
            .span()
            .error(&format!("operand 2: string {v2} is not a valid SemVer")));
    };
    match version1.compare(&version2) {
        Some(order) => Ok(Value::from(order)),
        None => bail!(span.error(&format!(
            "{v1} and {v2} differ only in how they write equal numeric pre-release identifiers, \
             which OPA cannot order"
        ))),
    }
}

fn is_valid(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "semver.is_valid";
    ensure_args_count(span, name, params, args, 1)?;
    Ok(Value::Bool(match &args[0] {
        Value::String(s) => Version::parse(s).is_some(),
        _ => false,
    }))
}

/// A version as OPA's `semver.Parse` reads one: an optional `v`, `MAJOR.MINOR.PATCH` as Go's
/// `ParseInt` reads them (leading zeros taken), then `-` pre-release and `+` metadata, each
/// dot-separated identifiers of `[0-9A-Za-z-]`.
struct Version<'a> {
    core: (i64, i64, i64),
    pre: &'a str,
}

impl<'a> Version<'a> {
    fn parse(version: &'a str) -> Option<Self> {
        let version = version.strip_prefix('v').unwrap_or(version);
        let (version, metadata) = cut(version, '+');
        let (version, pre) = cut(version, '-');
        if !identifiers(metadata) || !identifiers(pre) || version.matches('.').count() != 2 {
            return None;
        }
        let (major, rest) = cut(version, '.');
        let (minor, patch) = cut(rest, '.');
        Some(Self {
            core: (int(major)?, int(minor)?, int(patch)?),
            pre,
        })
    }

    /// OPA's `Version.Compare`: -1, 0 or 1; `None` where OPA's loop does not end (identifiers
    /// all equal, the texts not: `01` and `1`).
    fn compare(&self, other: &Self) -> Option<i64> {
        let sign = |o: core::cmp::Ordering| o as i64;
        if self.core != other.core {
            return Some(sign(self.core.cmp(&other.core)));
        }
        match (self.pre, other.pre) {
            (a, b) if a == b => return Some(0),
            ("", _) => return Some(1),
            (_, "") => return Some(-1),
            _ => {}
        }
        let (mut a, mut b) = (self.pre.split('.'), other.pre.split('.'));
        loop {
            let (x, y) = match (a.next(), b.next()) {
                (None, None) => return None,
                (None, Some(_)) => return Some(-1),
                (Some(_), None) => return Some(1),
                (Some(x), Some(y)) => (x, y),
            };
            let order = match (decimals(x), decimals(y)) {
                (true, false) => return Some(-1),
                (false, true) => return Some(1),
                (true, true) => atoi(x).cmp(&atoi(y)),
                (false, false) => x.cmp(y),
            };
            if order.is_ne() {
                return Some(sign(order));
            }
        }
    }
}

/// Go's `strings.Cut` at the first `sep`.
fn cut(s: &str, sep: char) -> (&str, &str) {
    s.split_once(sep).unwrap_or((s, ""))
}

/// Empty, or OPA's `^[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*$`.
fn identifiers(s: &str) -> bool {
    s.is_empty()
        || s.split('.').all(|id| {
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn decimals(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Go's `strconv.ParseInt(s, 10, 64)` of what is left between the dots (no sign can be: `+`
/// and `-` were cut off before).
fn int(s: &str) -> Option<i64> {
    if !decimals(s) {
        return None;
    }
    s.parse().ok()
}

/// Go's `strconv.Atoi` of decimals, its error ignored as OPA does: past an int64, the largest.
fn atoi(s: &str) -> i64 {
    s.parse().unwrap_or(i64::MAX)
}
