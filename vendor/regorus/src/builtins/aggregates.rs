// Copyright (c) Microsoft Corporation.
// Licensed under the MIT License.

#![allow(clippy::pattern_type_mismatch)]

use crate::ast::{Expr, Ref};
use crate::builtins;
use crate::builtins::utils::{enforce_limit, ensure_args_count, ensure_numeric};
use crate::lexer::Span;
use crate::number::Number;
use crate::value::Value;
use crate::*;

use alloc::vec::Vec;
use anyhow::{bail, Result};

pub fn register(m: &mut builtins::BuiltinsMap<&'static str, builtins::BuiltinFcn>) {
    m.insert("count", (count, 1));
    m.insert("max", (max, 1));
    m.insert("min", (min, 1));
    m.insert("product", (product, 1));
    m.insert("sort", (sort, 1));
    m.insert("sum", (sum, 1));
}

fn count(span: &Span, params: &[Ref<Expr>], args: &[Value], strict: bool) -> Result<Value> {
    ensure_args_count(span, "count", params, args, 1)?;

    Ok(Value::from(Number::from(match &args[0] {
        Value::Array(a) => a.len(),
        Value::Set(a) => a.len(),
        Value::Object(a) => a.len(),
        Value::String(a) => a.encode_utf16().count(),
        a if strict => {
            let span = params[0].span();
            bail!(span.error(
                format!("`count` requires array/object/set/string argument. Got `{a}`.").as_str()
            ))
        }
        _ => return Ok(Value::Undefined),
    })))
}

fn max(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    ensure_args_count(span, "max", params, args, 1)?;

    Ok(match &args[0] {
        Value::Array(a) if a.is_empty() => Value::Undefined,
        Value::Array(a) => a.iter().max().unwrap().clone(),
        Value::Set(a) if a.is_empty() => Value::Undefined,
        Value::Set(a) => a.iter().max().unwrap().clone(),
        a => {
            let span = params[0].span();
            bail!(span.error(format!("`max` requires array/set argument. Got `{a}`.").as_str()))
        }
    })
}

fn min(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    ensure_args_count(span, "min", params, args, 1)?;

    Ok(match &args[0] {
        Value::Array(a) if a.is_empty() => Value::Undefined,
        Value::Array(a) => a.iter().min().unwrap().clone(),
        Value::Set(a) if a.is_empty() => Value::Undefined,
        Value::Set(a) => a.iter().min().unwrap().clone(),
        a => {
            let span = params[0].span();
            bail!(span.error(format!("`min` requires array/set argument. Got `{a}`.").as_str()))
        }
    })
}

fn product(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    ensure_args_count(span, "product", params, args, 1)?;
    let items = numbers("product", params, &args[0])?;
    Ok(Value::from(aggregate(
        &items,
        Number::from(1_u64),
        Number::mul_assign,
        |d| gantry_opa_number::Decimal::opa_product(d.iter()),
    )?))
}

/// The numbers of an array or set (Gantry's patch: `sum` and `product` of integers stay exact,
/// any other number makes the whole aggregate OPA's, through big.Float).
fn numbers(name: &str, params: &[Ref<Expr>], collection: &Value) -> Result<Vec<Number>> {
    let items: Vec<&Value> = match collection {
        Value::Array(a) => a.iter().collect(),
        Value::Set(s) => s.iter().collect(),
        a => {
            let span = params[0].span();
            bail!(span.error(format!("`{name}` requires array/set argument. Got `{a}`.").as_str()))
        }
    };
    items
        .into_iter()
        .map(|e| ensure_numeric(name, &params[0], e))
        .collect()
}

fn aggregate(
    items: &[Number],
    start: Number,
    exact: fn(&mut Number, &Number) -> Result<()>,
    opa: fn(
        Vec<gantry_opa_number::Decimal>,
    ) -> core::result::Result<gantry_opa_number::Decimal, gantry_opa_number::NumberError>,
) -> Result<Number> {
    if items.iter().all(Number::is_integer) {
        let mut v = start;
        for n in items {
            exact(&mut v, n)?;
        }
        return Ok(v);
    }
    opa(items.iter().map(Number::to_decimal).collect())
        .map(Number::from_decimal)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn sort(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    ensure_args_count(span, "sort", params, args, 1)?;
    Ok(match &args[0] {
        Value::Array(a) => {
            let mut ac = (**a).clone();
            ac.sort();
            Value::from(ac)
        }
        // Sorting a set produces array.
        Value::Set(a) => {
            let mut items = Vec::with_capacity(a.len());
            for value in a.iter() {
                items.push(value.clone());
                // Guard array growth while materializing the sorted set.
                enforce_limit()?;
            }
            Value::from(items)
        }
        a => {
            let span = params[0].span();
            bail!(span.error(format!("`sort` requires array/set argument. Got `{a}`.").as_str()))
        }
    })
}

fn sum(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    ensure_args_count(span, "sum", params, args, 1)?;
    let items = numbers("sum", params, &args[0])?;
    Ok(Value::from(aggregate(
        &items,
        Number::from(0_u64),
        Number::add_assign,
        |d| gantry_opa_number::Decimal::opa_sum(d.iter()),
    )?))
}
