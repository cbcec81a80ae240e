// Copyright (c) Microsoft Corporation.
// Licensed under the MIT License.
//
// Gantry's patch (see PATCHES.md): a number that is not an integer is an exact decimal with
// OPA's arithmetic (`gantry-opa-number`), no longer an f64. OPA keeps every number as its decimal
// text and computes through Go's math/big, so `0.1 + 0.7 >= 0.8` holds there and
// `1.0000000000000001 > 1`; with f64 neither did here, and a policy allowed what OPA denies.
// Integers are unchanged: exact at any size. The verification annotations of upstream's file
// described the f64 model and are gone with it.
#![allow(
    clippy::arithmetic_side_effects,
    clippy::float_cmp,
    clippy::unwrap_used,
    clippy::unreachable,
    clippy::option_if_let_else,
    clippy::unseparated_literal_suffix,
    clippy::as_conversions,
    clippy::unused_trait_names,
    clippy::pattern_type_mismatch
)]

use alloc::format;
use alloc::string::{String, ToString};
use core::cmp::Ordering;
use core::fmt::{Debug, Display, Formatter};
use core::str::FromStr;

use anyhow::{anyhow, bail, Result};
use gantry_opa_number::Decimal;
use num_bigint::BigInt as NumBigInt;
use num_traits::{One, Signed, ToPrimitive, Zero};

use serde::ser::Serializer;
use serde::Serialize;

use crate::*;

pub type BigInt = NumBigInt;

#[derive(Debug)]
pub struct NumericOverflowError {
    operation: &'static str,
}

impl NumericOverflowError {
    #[cfg(feature = "rvm")]
    pub const fn operation(&self) -> &'static str {
        self.operation
    }
}

impl Display for NumericOverflowError {
    fn fmt(&self, formatter: &mut Formatter<'_>) -> core::fmt::Result {
        write!(formatter, "numeric overflow in {}", self.operation)
    }
}

impl core::error::Error for NumericOverflowError {}

/// The most decimal digits an integral decimal turns into an integer with: every decimal within
/// `gantry_opa_number`'s bounds fits.
const MAX_INTEGER_DIGITS: usize =
    gantry_opa_number::MAX_DIGITS + gantry_opa_number::MAX_EXP10 as usize;

#[derive(Clone)]
pub enum Number {
    UInt(u64),
    Int(i64),
    /// A number that is not an integer, or one written as none (`1.0`, `1e3`): exact. OPA keeps
    /// a number's text, and text that is no integer literal is no integer to it (`a[1.0]` is
    /// undefined, `substring(s, 1.0, 2)` an error) though it equals one (`1.0 == 1`). Results
    /// of arithmetic that are integral are integers, as OPA prints them so.
    Float(Rc<Decimal>),
    BigInt(Rc<BigInt>),
}

impl Number {
    fn from_bigint_owned(value: BigInt) -> Self {
        if value.is_zero() {
            return Number::Int(0);
        }
        if value.is_negative() {
            if let Some(i) = value.to_i64() {
                return Number::Int(i);
            }
        } else if let Some(u) = value.to_u64() {
            return Number::UInt(u);
        }
        Number::BigInt(Rc::new(value))
    }

    fn from_i128(value: i128) -> Self {
        if let Ok(u) = u64::try_from(value) {
            return Number::UInt(u);
        }
        if let Ok(i) = i64::try_from(value) {
            Number::Int(i)
        } else {
            Number::BigInt(Rc::new(BigInt::from(value)))
        }
    }

    /// The number a decimal is: an integer variant when it is integral.
    pub fn from_decimal(value: Decimal) -> Self {
        if value.is_integer() {
            if let Some(i) = value.to_bigint(MAX_INTEGER_DIGITS) {
                return Number::from_bigint_owned(i);
            }
        }
        Number::Float(Rc::new(value))
    }

    /// Gantry: OPA's `NumberToFloat` then `Float.Int`: the value at a 64-bit mantissa,
    /// truncated toward zero (`format_int`).
    pub fn go_float_trunc(&self) -> Option<BigInt> {
        self.to_decimal().go_float_trunc().ok()
    }

    /// The exact value as a decimal.
    pub fn to_decimal(&self) -> Decimal {
        match self {
            Number::UInt(v) => Decimal::from_u64(*v),
            Number::Int(v) => Decimal::from_i64(*v),
            Number::BigInt(v) => Decimal::from_bigint(v),
            Number::Float(d) => (**d).clone(),
        }
    }

    /// The integer value, also of a number written as no integer (`3.0`): OPA's `NumberToInt`
    /// takes it where it wants an integer value (`numbers.range`, `bits.*`, `%`).
    fn to_bigint_owned(&self) -> Option<BigInt> {
        match self {
            Number::UInt(v) => Some(BigInt::from(*v)),
            Number::Int(v) => Some(BigInt::from(*v)),
            Number::BigInt(v) => Some((**v).clone()),
            Number::Float(d) => d.to_bigint(MAX_INTEGER_DIGITS),
        }
    }

    fn to_bigint_rc(&self) -> Option<Rc<BigInt>> {
        match self {
            Number::BigInt(v) => Some(v.clone()),
            _ => self.to_bigint_owned().map(Rc::new),
        }
    }

    fn to_f64_lossy(&self) -> f64 {
        match self {
            Number::UInt(v) => *v as f64,
            Number::Int(v) => *v as f64,
            Number::Float(d) => d.to_f64(),
            Number::BigInt(v) => {
                if let Some(f) = v.to_f64() {
                    f
                } else if v.is_negative() {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                }
            }
        }
    }

    fn is_zero(&self) -> bool {
        match self {
            Number::UInt(v) => *v == 0,
            Number::Int(v) => *v == 0,
            Number::Float(d) => d.is_zero(),
            Number::BigInt(v) => v.is_zero(),
        }
    }

    fn any_float(a: &Number, b: &Number) -> bool {
        matches!(a, Number::Float(_)) || matches!(b, Number::Float(_))
    }

    /// One of OPA's arithmetic operations on the exact values of `a` and `b`.
    fn decimal_op(
        a: &Number,
        b: &Number,
        op: fn(&Decimal, &Decimal) -> core::result::Result<Decimal, gantry_opa_number::NumberError>,
    ) -> Result<Number> {
        op(&a.to_decimal(), &b.to_decimal())
            .map(Number::from_decimal)
            .map_err(|e| anyhow!("{e}"))
    }
}

impl Debug for Number {
    fn fmt(&self, f: &mut Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.format_decimal())
    }
}

impl Serialize for Number {
    fn serialize<S>(&self, serializer: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
    {
        // Gantry: a number is written exactly, as OPA writes a number's digits whole. One that
        // serde's 64-bit types carry (an integer in 64 bits, a decimal an f64's shortest text
        // reads back as) goes as one, so that every serializer reads it; any other (an integer
        // past 64 bits, a decimal with more digits than an f64 keeps, an exponent past its
        // range) goes as its text through serde_json's `RawValue`, which serde_json's
        // serializers write verbatim. It had gone through an f64: `json.marshal`, the engine's
        // results and a value's text lost digits. Other serializers must round such a number
        // first (`yaml.marshal` does, as OPA's YAML reads numbers through float64).
        match self {
            Number::UInt(v) => return serializer.serialize_u64(*v),
            Number::Int(v) => return serializer.serialize_i64(*v),
            _ => {}
        }
        match self.as_serde() {
            Some(v) => v.serialize(serializer),
            None => serde_json::value::RawValue::from_string(self.format_decimal())
                .map_err(|_| serde::ser::Error::custom("could not serialize number"))?
                .serialize(serializer),
        }
    }
}

impl Number {
    /// Gantry: this number as serde_json's 64-bit `Number` (its text read), if that is this
    /// number.
    fn as_serde(&self) -> Option<serde_json::Number> {
        let v = serde_json::Number::from_str(&self.format_decimal()).ok()?;
        let read = if let Some(u) = v.as_u64() {
            Number::UInt(u)
        } else if let Some(i) = v.as_i64() {
            Number::Int(i)
        } else {
            Number::from(v.as_f64()?)
        };
        (read == *self).then_some(v)
    }

    /// Gantry: this number as serializers other than serde_json's can write it: past what an
    /// f64 carries, the f64 nearest (OPA's YAML reads a number's text as a float64).
    pub fn rounded_past_f64(&self) -> Number {
        match self.as_serde() {
            Some(_) => self.clone(),
            None => Number::from(self.to_f64_lossy()),
        }
    }
}

impl From<BigInt> for Number {
    fn from(value: BigInt) -> Self {
        Number::from_bigint_owned(value)
    }
}

impl From<u64> for Number {
    fn from(value: u64) -> Self {
        Number::UInt(value)
    }
}

impl From<usize> for Number {
    fn from(value: usize) -> Self {
        Number::UInt(value as u64)
    }
}

impl From<u128> for Number {
    fn from(value: u128) -> Self {
        if let Ok(n) = u64::try_from(value) {
            Number::UInt(n)
        } else {
            Number::from_bigint_owned(BigInt::from(value))
        }
    }
}

impl From<i64> for Number {
    fn from(value: i64) -> Self {
        Number::Int(value)
    }
}

impl From<i128> for Number {
    fn from(value: i128) -> Self {
        Number::from_i128(value)
    }
}

impl From<f64> for Number {
    /// The number OPA makes of a Go float64: its shortest decimal text. Rego has no NaN or
    /// infinity (`Value::from(f64)` and the JSON readers refuse them before this); should one
    /// come here, NaN is 0 and an infinity the largest finite f64 of its sign.
    fn from(value: f64) -> Self {
        let finite = if value.is_nan() {
            0.0
        } else if value.is_infinite() {
            f64::MAX.copysign(value)
        } else {
            value
        };
        Decimal::from_f64(finite)
            .map(Number::from_decimal)
            .unwrap_or(Number::Int(0))
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct ParseNumberError;

impl FromStr for Number {
    type Err = ParseNumberError;

    /// Integers exact at any size; other numbers exact decimals within `gantry_opa_number`'s
    /// bounds on digits and exponent (upstream built `10^exponent` for any i32 exponent).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err(ParseNumberError);
        }

        let canonical = trimmed.replace('_', "");
        if canonical.is_empty() {
            return Err(ParseNumberError);
        }

        let normalized = if let Some(rest) = canonical.strip_prefix("-.") {
            format!("-0.{rest}")
        } else if let Some(rest) = canonical.strip_prefix("+.") {
            format!("+0.{rest}")
        } else if let Some(rest) = canonical.strip_prefix('.') {
            format!("0.{rest}")
        } else {
            canonical
        };
        let normalized = normalized.as_str();

        let (negative, digits) = match normalized.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, normalized.strip_prefix('+').unwrap_or(normalized)),
        };
        if !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) {
            if let Some(mut value) = BigInt::parse_bytes(digits.as_bytes(), 10) {
                if negative {
                    value = -value;
                }
                return Ok(Number::from_bigint_owned(value));
            }
        }

        // Not an integer literal: a Float even when integral, as OPA's text is no integer.
        Decimal::parse(normalized)
            .map(|d| Number::Float(Rc::new(d)))
            .map_err(|_| ParseNumberError)
    }
}

impl PartialEq for Number {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Number {}

impl Ord for Number {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Number::UInt(a), Number::UInt(b)) => a.cmp(b),
            (Number::Int(a), Number::Int(b)) => a.cmp(b),
            (Number::UInt(a), Number::Int(b)) => (*a as i128).cmp(&(*b as i128)),
            (Number::Int(a), Number::UInt(b)) => (*a as i128).cmp(&(*b as i128)),
            (Number::BigInt(a), Number::BigInt(b)) => a.cmp(b),
            (Number::BigInt(a), Number::UInt(b)) => (**a).cmp(&BigInt::from(*b)),
            (Number::BigInt(a), Number::Int(b)) => (**a).cmp(&BigInt::from(*b)),
            (Number::UInt(a), Number::BigInt(b)) => BigInt::from(*a).cmp(b),
            (Number::Int(a), Number::BigInt(b)) => BigInt::from(*a).cmp(b),
            (Number::Float(a), Number::Float(b)) => Decimal::cmp(a, b),
            (Number::Float(a), b) => Decimal::cmp(a, &b.to_decimal()),
            (a, Number::Float(b)) => Decimal::cmp(&a.to_decimal(), b),
        }
    }
}

impl PartialOrd for Number {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Number {
    pub fn as_u128(&self) -> Option<u128> {
        match self {
            Number::UInt(v) => Some(*v as u128),
            Number::Int(v) => u128::try_from(*v).ok(),
            Number::BigInt(v) => v.to_u128(),
            Number::Float(_) => None,
        }
    }

    pub fn as_i128(&self) -> Option<i128> {
        match self {
            Number::UInt(v) => Some(*v as i128),
            Number::Int(v) => Some(*v as i128),
            Number::BigInt(v) => v.to_i128(),
            Number::Float(_) => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Number::UInt(v) => Some(*v),
            Number::Int(v) => u64::try_from(*v).ok(),
            Number::BigInt(v) => v.to_u64(),
            Number::Float(_) => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Number::UInt(v) => i64::try_from(*v).ok(),
            Number::Int(v) => Some(*v),
            Number::BigInt(v) => v.to_i64(),
            Number::Float(_) => None,
        }
    }

    /// The value as an f64: integers only where exact (within 2^53), other numbers their nearest.
    pub fn as_f64(&self) -> Option<f64> {
        const F64_SAFE_INTEGER: u64 = 1 << 53;
        match self {
            Number::Float(d) => Some(d.to_f64()).filter(|f| f.is_finite()),
            Number::UInt(v) if *v <= F64_SAFE_INTEGER => Some(*v as f64),
            Number::Int(v) if v.unsigned_abs() <= F64_SAFE_INTEGER => Some(*v as f64),
            Number::BigInt(v) if v.bits() <= 53 => v.to_f64(),
            _ => None,
        }
    }

    /// An integer written as one (`3.0` is none, as OPA's `Number.Int` says).
    pub fn as_big(&self) -> Option<Rc<BigInt>> {
        match self {
            Number::Float(_) => None,
            _ => self.to_bigint_rc(),
        }
    }

    pub fn to_big(&self) -> Result<Rc<BigInt>> {
        self.as_big()
            .ok_or_else(|| anyhow!("Number::to_big failed"))
    }

    pub fn add_assign(&mut self, rhs: &Self) -> Result<()> {
        *self = self.add(rhs)?;
        Ok(())
    }

    pub fn add(&self, rhs: &Self) -> Result<Number> {
        if Self::any_float(self, rhs) {
            return Self::decimal_op(self, rhs, Decimal::opa_add);
        }
        match (self, rhs) {
            (Number::UInt(a), Number::UInt(b)) => Ok(Number::from_i128(*a as i128 + *b as i128)),
            (Number::Int(a), Number::Int(b)) => Ok(Number::from_i128(*a as i128 + *b as i128)),
            (Number::Int(a), Number::UInt(b)) | (Number::UInt(b), Number::Int(a)) => {
                Ok(Number::from_i128(*a as i128 + *b as i128))
            }
            (a, b) => Ok(Number::from_bigint_owned(
                a.to_bigint_owned().unwrap() + b.to_bigint_owned().unwrap(),
            )),
        }
    }

    pub fn sub_assign(&mut self, rhs: &Self) -> Result<()> {
        *self = self.sub(rhs)?;
        Ok(())
    }

    pub fn sub(&self, rhs: &Self) -> Result<Number> {
        if Self::any_float(self, rhs) {
            return Self::decimal_op(self, rhs, Decimal::opa_sub);
        }
        match (self, rhs) {
            (Number::UInt(a), Number::UInt(b)) => Ok(Number::from_i128(*a as i128 - *b as i128)),
            (Number::Int(a), Number::Int(b)) => Ok(Number::from_i128(*a as i128 - *b as i128)),
            (Number::Int(a), Number::UInt(b)) => Ok(Number::from_i128(*a as i128 - *b as i128)),
            (Number::UInt(a), Number::Int(b)) => Ok(Number::from_i128(*a as i128 - *b as i128)),
            (a, b) => Ok(Number::from_bigint_owned(
                a.to_bigint_owned().unwrap() - b.to_bigint_owned().unwrap(),
            )),
        }
    }

    pub fn mul_assign(&mut self, rhs: &Self) -> Result<()> {
        *self = self.mul(rhs)?;
        Ok(())
    }

    pub fn mul(&self, rhs: &Self) -> Result<Number> {
        if Self::any_float(self, rhs) {
            return Self::decimal_op(self, rhs, Decimal::opa_mul);
        }
        match (self.as_i128(), rhs.as_i128()) {
            (Some(a), Some(b)) if a.checked_mul(b).is_some() => Ok(Number::from_i128(a * b)),
            _ => Ok(Number::from_bigint_owned(
                self.to_bigint_owned().unwrap() * rhs.to_bigint_owned().unwrap(),
            )),
        }
    }

    /// OPA's quotient: of ints in the int32 window that divide exactly, that int; of anything
    /// else, big integers included, the big.Float quotient (`opDivide` has no exact path).
    pub fn divide(self, rhs: &Self) -> Result<Number> {
        if rhs.is_zero() {
            bail!("divide by zero");
        }
        let small = |n: &Number| n.as_i64().filter(|v| i32::try_from(*v).is_ok());
        if let (Some(a), Some(b)) = (small(&self), small(rhs)) {
            if a % b == 0 {
                return Ok(Number::Int(a / b));
            }
        }
        Self::decimal_op(&self, rhs, Decimal::opa_div)
    }

    pub fn modulo(self, rhs: &Self) -> Result<Number> {
        // A number written as no integer: OPA's `rem` takes it when its value is one.
        if Self::any_float(&self, rhs) {
            return Self::decimal_op(&self, rhs, Decimal::opa_rem);
        }
        let (a, b) = match (self.to_bigint_owned(), rhs.to_bigint_owned()) {
            (Some(a), Some(b)) => (a, b),
            _ => bail!("modulo on floating-point number"),
        };
        if b.is_zero() {
            bail!("modulo by zero");
        }
        Ok(Number::from_bigint_owned(a % &b))
    }

    /// Whether the value is an integer (`3.0` is): what OPA's `NumberToInt` accepts. An
    /// integer *written* as one is what `as_i64` and the like give.
    pub fn is_integer(&self) -> bool {
        match self {
            Number::Float(d) => d.is_integer(),
            _ => true,
        }
    }

    pub fn is_positive(&self) -> bool {
        match self {
            Number::UInt(_) => true,
            Number::Int(v) => *v >= 0,
            Number::BigInt(v) => !v.is_negative(),
            Number::Float(d) => !d.is_negative(),
        }
    }

    #[allow(clippy::if_then_some_else_none)]
    fn ensure_integers(a: &Number, b: &Number) -> Option<(BigInt, BigInt)> {
        Some((a.to_bigint_owned()?, b.to_bigint_owned()?))
    }

    fn ensure_integer(&self) -> Option<BigInt> {
        self.to_bigint_owned()
    }

    pub fn and(&self, rhs: &Self) -> Option<Number> {
        let (a, b) = Self::ensure_integers(self, rhs)?;
        Some(Number::from_bigint_owned(a & b))
    }

    pub fn or(&self, rhs: &Self) -> Option<Number> {
        let (a, b) = Self::ensure_integers(self, rhs)?;
        Some(Number::from_bigint_owned(a | b))
    }

    pub fn xor(&self, rhs: &Self) -> Option<Number> {
        let (a, b) = Self::ensure_integers(self, rhs)?;
        Some(Number::from_bigint_owned(a ^ b))
    }

    /// Gantry: the most bits a left shift may make (1 MiB of integer): past it an error, before
    /// anything is allocated (`bits.lsh(1, 4294967295)` asked for 512 MiB, a larger shift was
    /// silently undefined).
    pub const MAX_SHIFTED_BITS: u64 = 8 << 20;

    /// Gantry: OPA's shift count, `uint(b.Uint64())`: a non-negative integer's low 64 bits.
    fn shift_count(rhs: &Self) -> Option<u64> {
        let b = rhs.ensure_integer()?;
        if b.is_negative() {
            return None;
        }
        Some(b.to_u64_digits().1.first().copied().unwrap_or(0))
    }

    /// `self << rhs`; `Err` where the result would be past [`Self::MAX_SHIFTED_BITS`].
    pub fn lsh(&self, rhs: &Self) -> Result<Option<Number>> {
        let (Some(value), Some(shift)) = (self.ensure_integer(), Self::shift_count(rhs)) else {
            return Ok(None);
        };
        if value.is_zero() {
            return Ok(Some(Number::from_bigint_owned(value)));
        }
        let bits = shift.saturating_add(value.bits());
        if bits > Self::MAX_SHIFTED_BITS {
            // A limit error, so that a non-strict evaluation fails too (not undefined).
            return Err(anyhow::Error::new(crate::LimitError::MemoryLimitExceeded {
                usage: bits / 8,
                limit: Self::MAX_SHIFTED_BITS / 8,
            })
            .context(format!(
                "the result would be past {} bits, more than Gantry holds",
                Self::MAX_SHIFTED_BITS
            )));
        }
        Ok(Some(Number::from_bigint_owned(value << shift)))
    }

    /// `self >> rhs`, rounding down as Go's `big.Int.Rsh` (a shift past the value's bits makes
    /// 0, or -1 of a negative value: it was undefined past 32 bits).
    pub fn rsh(&self, rhs: &Self) -> Option<Number> {
        let value = self.ensure_integer()?;
        let shift = Self::shift_count(rhs)?;
        if shift >= value.bits() {
            let floor = if value.is_negative() { -1 } else { 0 };
            return Some(Number::from_bigint_owned(BigInt::from(floor)));
        }
        Some(Number::from_bigint_owned(value >> shift))
    }

    pub fn neg(&self) -> Option<Number> {
        let value = self.ensure_integer()?;
        Some(Number::from_bigint_owned(!value))
    }

    pub fn abs(&self) -> Number {
        match self {
            Number::UInt(_) => self.clone(),
            Number::Int(v) => Number::from_i128((*v as i128).abs()),
            Number::BigInt(v) => Number::from_bigint_owned((**v).clone().abs()),
            Number::Float(d) => Number::from_decimal(d.opa_abs()),
        }
    }

    pub fn floor(&self) -> Number {
        match self {
            Number::Float(d) => Number::from_decimal(d.opa_floor()),
            _ => self.clone(),
        }
    }

    pub fn ceil(&self) -> Number {
        match self {
            Number::Float(d) => Number::from_decimal(d.opa_ceil()),
            _ => self.clone(),
        }
    }

    pub fn round(&self) -> Number {
        match self {
            Number::Float(d) => Number::from_decimal(d.opa_round()),
            _ => self.clone(),
        }
    }

    /// 2^e, exact (for a negative `e`, 5^-e * 10^e); |e| at most 4096 (callers pass a unit's
    /// exponent: the bound keeps any other from building a gigabyte integer).
    pub fn two_pow(e: i32) -> Result<Number> {
        if e.unsigned_abs() > 4096 {
            bail!("2^{e} is out of range");
        }
        if e >= 0 {
            let mut value = BigInt::one();
            value <<= e as usize;
            return Ok(Number::from_bigint_owned(value));
        }
        let k = e.unsigned_abs();
        let five_pow = num_traits::pow(BigInt::from(5u8), k as usize);
        Self::scaled(&five_pow, -i64::from(k))
    }

    /// 10^e, exact.
    pub fn ten_pow(e: i32) -> Result<Number> {
        Self::scaled(&BigInt::one(), i64::from(e))
    }

    /// `digits * 10^exp` within the decimal bounds.
    fn scaled(digits: &BigInt, exp: i64) -> Result<Number> {
        Decimal::parse(&format!("{digits}e{exp}"))
            .map(Number::from_decimal)
            .map_err(|e| anyhow!("{e}"))
    }

    pub fn format_bin(&self) -> String {
        self.ensure_integer()
            .map(|v| v.to_str_radix(2))
            .unwrap_or_default()
    }

    pub fn format_octal(&self) -> String {
        self.ensure_integer()
            .map(|v| v.to_str_radix(8))
            .unwrap_or_default()
    }

    pub fn format_scientific(&self) -> String {
        match self {
            Number::Float(d) => format!("{:e}", d.to_f64()),
            _ => self
                .ensure_integer()
                .map(|v| bigint_to_scientific(&v))
                .unwrap_or_else(|| format!("{:e}", self.to_f64_lossy())),
        }
    }

    /// The number's text: integers in full, other numbers as OPA prints a number its arithmetic
    /// made (Go's `big.Float.Text('g', -1)` of the exact value).
    pub fn format_decimal(&self) -> String {
        match self {
            Number::UInt(v) => v.to_string(),
            Number::Int(v) => v.to_string(),
            Number::BigInt(v) => v.to_string(),
            Number::Float(d) => d.to_go_text(),
        }
    }

    pub fn format_decimal_with_width(&self, d: u32) -> String {
        match self {
            Number::Float(_) => {
                let f = self.to_f64_lossy();
                let factor = 10f64.powi(d as i32);
                let rounded = (f * factor).round() / factor;
                format!("{:.*}", d as usize, rounded)
            }
            _ => self.format_decimal(),
        }
    }

    pub fn format_hex(&self) -> String {
        self.ensure_integer()
            .map(|v| v.to_str_radix(16))
            .unwrap_or_default()
    }

    pub fn format_big_hex(&self) -> String {
        self.ensure_integer()
            .map(|v| v.to_str_radix(16).to_ascii_uppercase())
            .unwrap_or_default()
    }
}

fn bigint_to_scientific(value: &BigInt) -> String {
    let s = value.to_string();
    let (sign, digits) = if let Some(rest) = s.strip_prefix('-') {
        ("-", rest)
    } else {
        ("", s.as_str())
    };

    if digits.len() <= 1 {
        return format!("{}{}e0", sign, digits);
    }

    let exponent = digits.len() - 1;
    format!("{}{}.{}e{}", sign, &digits[0..1], &digits[1..], exponent)
}
