//! OPA's `units.parse` and `units.parse_bytes`, after its `v1/topdown/parse_units.go` and
//! `parse_bytes.go`, over regorus's. Found by a review: regorus rounded `units.parse_bytes("1.9")`
//! to 2 (OPA truncates: 1), took units OPA refuses (`1zb`, `1n`, `5h`) and made an unknown unit
//! undefined where OPA errs, so `deny if units.parse_bytes(input.size) < 2` or `deny if
//! units.parse(input.mem) > units.parse("4G")` let through what OPA denies.
//!
//! The amount is Go's: `units.parse_bytes` multiplies a 64-bit `big.Float` and truncates,
//! `units.parse` multiplies exactly (`big.Rat`) and rounds a fraction to 10 decimals. An amount
//! Go reads and Gantry cannot hold (past 1,000 digits or an exponent of ±10,000) fails the
//! evaluation in either mode.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use gantry_opa_number::Decimal;
use regorus::Value;

use crate::go_builtins::{Fail, GoError as Error};

/// Digits an exponent may have (OPA's `maxExponentDigits`).
const MAX_EXPONENT_DIGITS: usize = 6;

/// The exact value of the float64 nearest 0.001: OPA's milli is `big.Rat.SetFloat64(0.001)`.
const MILLI: &str = "0.001000000000000000020816681711721685132943093776702880859375";

/// `units.parse_bytes(s)`.
pub fn parse_bytes(fail: impl Fail) -> Box<dyn regorus::Extension> {
    Box::new(move |args: Vec<Value>| match args[0].as_string() {
        Ok(s) => bytes(s).or_else(|e| e.answer(fail)),
        Err(_) => fail("units.parse_bytes: operand 1 must be string".into()),
    })
}

/// `units.parse(s)`.
pub fn parse(fail: impl Fail) -> Box<dyn regorus::Extension> {
    Box::new(move |args: Vec<Value>| match args[0].as_string() {
        Ok(s) => units(s).or_else(|e| e.answer(fail)),
        Err(_) => fail("units.parse: operand 1 must be string".into()),
    })
}

fn bytes(raw: &str) -> Result<Value, Error> {
    let err = |m: &str| Error::Builtin(format!("units.parse_bytes: {m}"));
    let s = raw.to_lowercase().replace('"', "");
    if s.contains(' ') {
        return Err(err("spaces not allowed in resource strings"));
    }
    let (num, unit) = split(&s).ok_or_else(|| err("exponent too large"))?;
    if num.is_empty() {
        return Err(err("no byte amount provided"));
    }
    let (k, ki): (u64, u64) = (1000, 1024);
    let m = match unit {
        "" => 1,
        "kb" | "k" => k,
        "kib" | "ki" => ki,
        "mb" | "m" => k.pow(2),
        "mib" | "mi" => ki.pow(2),
        "gb" | "g" => k.pow(3),
        "gib" | "gi" => ki.pow(3),
        "tb" | "t" => k.pow(4),
        "tib" | "ti" => ki.pow(4),
        "pb" | "p" => k.pow(5),
        "pib" | "pi" => ki.pow(5),
        "eb" | "e" => k.pow(6),
        "eib" | "ei" => ki.pow(6),
        other => return Err(err(&format!("byte unit {other} not recognized"))),
    };
    let amount = amount(num, "units.parse_bytes", "byte amount")?;
    let total = Decimal::go_float_mul_trunc(&amount, &Decimal::from_u64(m))
        .map_err(|e| beyond("units.parse_bytes", raw, e))?;
    number(&total.to_string(), raw, "units.parse_bytes")
}

fn units(raw: &str) -> Result<Value, Error> {
    let err = |m: &str| Error::Builtin(format!("units.parse: {m}"));
    let s = raw.replace('"', "");
    if s.contains(' ') {
        return Err(err("spaces not allowed in resource strings"));
    }
    let (num, unit) = split(&s).ok_or_else(|| err("exponent too large"))?;
    if num.is_empty() {
        return Err(err("no amount provided"));
    }
    // Lower case after the first letter only: `m` (milli) is not `M` (mega).
    let mut chars = unit.chars();
    let unit = match chars.next() {
        Some(first) => format!("{first}{}", chars.as_str().to_lowercase()),
        None => String::new(),
    };
    let (k, ki): (u64, u64) = (1000, 1024);
    let x = match unit.as_str() {
        "m" => Decimal::parse(MILLI).map_err(|e| beyond("units.parse", raw, e))?,
        "" => Decimal::from_u64(1),
        "k" | "K" => Decimal::from_u64(k),
        "ki" | "Ki" => Decimal::from_u64(ki),
        "M" => Decimal::from_u64(k.pow(2)),
        "mi" | "Mi" => Decimal::from_u64(ki.pow(2)),
        "g" | "G" => Decimal::from_u64(k.pow(3)),
        "gi" | "Gi" => Decimal::from_u64(ki.pow(3)),
        "t" | "T" => Decimal::from_u64(k.pow(4)),
        "ti" | "Ti" => Decimal::from_u64(ki.pow(4)),
        "p" | "P" => Decimal::from_u64(k.pow(5)),
        "pi" | "Pi" => Decimal::from_u64(ki.pow(5)),
        "e" | "E" => Decimal::from_u64(k.pow(6)),
        "ei" | "Ei" => Decimal::from_u64(ki.pow(6)),
        other => return Err(err(&format!("unit {other} not recognized"))),
    };
    let amount = amount(num, "units.parse", "amount")?;
    let product = Decimal::exact_mul(&amount, &x).map_err(|e| beyond("units.parse", raw, e))?;
    // An integer in full; a fraction as `FloatString(10)` writes it.
    let value = match product.is_integer() {
        true => product,
        false => product.round_places(10),
    };
    number(&value.to_go_text(), raw, "units.parse")
}

/// The amount's text read as Go's `SetString` reads it; what Go refuses is OPA's error.
fn amount(num: &str, name: &str, what: &str) -> Result<Decimal, Error> {
    Decimal::parse(num).map_err(|e| match e {
        gantry_opa_number::NumberError::OutOfRange => beyond(name, num, e),
        _ => Error::Builtin(format!("{name}: could not parse {what} to a number")),
    })
}

fn beyond(name: &str, raw: &str, e: gantry_opa_number::NumberError) -> Error {
    Error::Hard(format!(
        "{name}: {raw:?}: {e}: beyond the numbers Gantry holds (1,000 digits, an exponent \
         within ±10,000)"
    ))
}

fn number(text: &str, raw: &str, name: &str) -> Result<Value, Error> {
    Value::from_numeric_string(text).map_err(|_| {
        Error::Hard(format!(
            "{name}: {raw:?}: {text} is not a number Gantry holds"
        ))
    })
}

/// OPA's `extractNumAndUnit`: the amount (digits, `.`, a sign, an exponent of at most six
/// digits) and the unit after it; `None` for a longer exponent.
fn split(s: &str) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    let mut first_unit = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if !(c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-')) {
            first_unit = Some(i);
            break;
        }
        if matches!(c, b'e' | b'E') {
            let next = b.get(i + 1);
            if !next.is_some_and(|n| n.is_ascii_digit() || matches!(n, b'+' | b'-')) {
                first_unit = Some(i);
                break;
            }
            if matches!(next, Some(b'+' | b'-')) {
                i += 1;
            }
            let digits = b[i + 1..].iter().take_while(|d| d.is_ascii_digit()).count();
            if digits > MAX_EXPONENT_DIGITS {
                return None;
            }
        }
        i += 1;
    }
    Some(match first_unit {
        None => (s, ""),
        Some(i) => (&s[..i], &s[i..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(text: &str) -> Value {
        Value::from_numeric_string(text).unwrap()
    }

    fn opa_error(r: Result<Value, Error>) -> String {
        match r {
            Err(Error::Builtin(e)) => e,
            Err(Error::Hard(e)) => panic!("a hard error: {e}"),
            Ok(v) => panic!("a value: {v}"),
        }
    }

    /// Values from OPA's code read by hand: `Float.Int` truncates toward zero, `big.Rat`'s
    /// product is exact, `FloatString(10)` rounds a half away from zero.
    #[test]
    fn amounts_are_truncated_and_units_are_opas() {
        assert_eq!(bytes("1.9").ok(), Some(n("1")));
        assert_eq!(bytes("-1.5").ok(), Some(n("-1")));
        assert_eq!(bytes("1.5KiB").ok(), Some(n("1536")));
        assert_eq!(bytes("\"2MB\"").ok(), Some(n("2000000")));
        assert_eq!(bytes("1e3").ok(), Some(n("1000")));
        assert_eq!(bytes("0.5e").ok(), Some(n("500000000000000000")));
        for unknown in ["1zb", "1yb", "1q", "1xyz"] {
            assert!(
                opa_error(bytes(unknown)).contains("not recognized"),
                "{unknown}"
            );
        }
        assert!(opa_error(bytes("1 kb")).contains("spaces"));
        assert!(opa_error(bytes("kb")).contains("no byte amount"));
        assert!(opa_error(bytes("1e1234567")).contains("exponent too large"));
        assert!(opa_error(bytes("1+2")).contains("could not parse"));

        assert_eq!(units("4G").ok(), Some(n("4000000000")));
        assert_eq!(units("1m").ok(), Some(n("0.001")));
        assert_eq!(units("1.5Ki").ok(), Some(n("1536")));
        assert_eq!(units("0.00000000004").ok(), Some(n("0")));
        assert_eq!(units("0.00000000005").ok(), Some(n("0.0000000001")));
        assert_eq!(units("1.23456789012345K").ok(), Some(n("1234.5678901235")));
        assert_eq!(units("2MI").ok(), Some(n("2097152")));
        for unknown in ["20GB", "1n", "5h", "1d", "1c", "1μ", "1Mb"] {
            assert!(
                opa_error(units(unknown)).contains("not recognized"),
                "{unknown}"
            );
        }
    }

    /// What Go reads and Gantry cannot hold fails the evaluation, not the mode's undefined.
    #[test]
    fn an_amount_past_gantrys_bounds_is_a_hard_error() {
        assert!(matches!(bytes("1e999999"), Err(Error::Hard(_))));
        assert!(matches!(units("1e-999999"), Err(Error::Hard(_))));
        assert_eq!(split("10.2gb"), Some(("10.2", "gb")));
        assert_eq!(split("1e5e"), Some(("1e5", "e")));
        assert_eq!(split("e"), Some(("", "e")));
    }
}
