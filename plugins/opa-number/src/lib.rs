//! Exact decimal numbers with Open Policy Agent's number semantics.
//!
//! OPA keeps every Rego number as decimal text (`ast.Number`, a `json.Number`). Its builtins
//! (`v1/topdown/arithmetic.go`, `v1/topdown/aggregates.go`) pick a representation per call:
//!
//! * an int in the int32 window (`smallInt`, via `Number.Int64`) computed on `int64`;
//! * else, for `+ - * %`, exact `big.Int`s when both operands are integers (`NumberToInt`);
//! * else a `big.Float` made by `builtins.NumberToFloat` (`new(big.Float).SetString`, which
//!   rounds to 64 bits), the operation rounded to nearest-even at the receiver's precision,
//!   and the result turned back into text by `builtins.FloatToNumber`
//!   (`Text('f', -1)` for integers, else `Text('g', -1)`, the shortest text that reads back
//!   to the same float at its precision).
//!
//! [`Decimal`] holds the exact value; the `opa_*` functions emulate those steps exactly
//! (Go's `Float.scan`/`pow5` rounding of decimal text, `Float.Add`/`Mul`/`Quo`,
//! `roundShortest` and the `'g'` layout of `Float.Append`), and read the Go result text back
//! as an exact value.
//!
//! OPA keeps text, we keep values: a value is treated as if written in its canonical text
//! (integers in full digits, as `FloatToNumber` and `IntToNumber` print them; other values
//! as digits without trailing zeros and a decimal exponent, as `Text('g', -1)` prints them).
//! A literal written otherwise (`1e60`, `0.10`) may round differently in Go's `SetString`
//! in rare double-rounding cases, and OPA's `-0` results are plain `0` here.

#![no_std]
extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cmp::Ordering;
use core::fmt;
use num_bigint::{BigInt, BigUint, Sign};
use num_traits::{One, ToPrimitive, Zero};

/// Most significant digits accepted in a number's text.
pub const MAX_DIGITS: usize = 1000;
/// Largest decimal exponent (after normalization) accepted in a number's text.
/// (A review measured an operation near 10^-100000 at 0.7 s and 200 MB in the sandbox; at
/// 10^-10000 the digits Go's shortest-text search builds are a tenth as many.)
pub const MAX_EXP10: i64 = 10_000;
/// Results may grow past the text bounds by this much before `OutOfRange`.
const MAX_RESULT_DIGITS: i64 = MAX_DIGITS as i64 + MAX_EXP10;

/// An exact decimal: value = (-1)^negative * digits * 10^exp, normalized: `digits` has no
/// trailing decimal zeros (zero is digits 0, exp 0, negative false), so derived equality is
/// value equality.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Decimal {
    negative: bool,
    digits: BigUint,
    exp: i64,
}

/// Errors of parsing and of OPA's arithmetic (messages are OPA's where it has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumberError {
    /// Not number text.
    Syntax,
    /// Beyond [`MAX_DIGITS`]/[`MAX_EXP10`] (or a result beyond the result bounds).
    OutOfRange,
    /// OPA: "divide by zero".
    DivideByZero,
    /// OPA: "modulo by zero".
    ModuloByZero,
    /// OPA: "modulo on floating-point number".
    ModuloOnFloat,
}

impl fmt::Display for NumberError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NumberError::Syntax => "invalid number",
            NumberError::OutOfRange => "number out of range",
            NumberError::DivideByZero => "divide by zero",
            NumberError::ModuloByZero => "modulo by zero",
            NumberError::ModuloOnFloat => "modulo on floating-point number",
        })
    }
}

// ---------------------------------------------------------------------------------------
// big.Float emulation: value = (-1)^neg * mant * 2^exp (exp of the least significant bit).

#[derive(Clone, Debug)]
struct BigFloat {
    neg: bool,
    mant: BigUint,
    exp: i64,
    prec: u64,
}

fn bitlen(m: &BigUint) -> u64 {
    m.bits()
}

/// Rounds `mant * 2^exp` (plus a sticky bit below it) to `prec` bits, nearest-even, as
/// Go's `Float.round` does.
fn round_bits(mant: BigUint, exp: i64, sticky: bool, prec: u64) -> (BigUint, i64) {
    let n = bitlen(&mant);
    if n <= prec {
        // Only an exact value fits without a shift here; callers give enough bits otherwise.
        return (mant, exp);
    }
    let s = n - prec;
    let mut r = &mant >> s;
    let half = mant.bit(s - 1);
    let rest = sticky || mant.trailing_zeros().is_some_and(|tz| tz < s - 1);
    let mut e = exp + s as i64;
    if half && (rest || r.bit(0)) {
        r += 1u32;
        if bitlen(&r) > prec {
            r >>= 1u32;
            e += 1;
        }
    }
    (r, e)
}

impl BigFloat {
    fn zero(prec: u64) -> Self {
        BigFloat {
            neg: false,
            mant: BigUint::zero(),
            exp: 0,
            prec,
        }
    }
    fn new(neg: bool, mant: BigUint, exp: i64, sticky: bool, prec: u64) -> Self {
        if mant.is_zero() {
            return BigFloat {
                neg,
                mant,
                exp: 0,
                prec,
            };
        }
        let (mut m, mut e) = round_bits(mant, exp, sticky, prec);
        // Keep the mantissa odd so the representation is canonical.
        if let Some(tz) = m.trailing_zeros()
            && tz > 0
        {
            m >>= tz;
            e += tz as i64;
        }
        BigFloat {
            neg,
            mant: m,
            exp: e,
            prec,
        }
    }
    fn is_zero(&self) -> bool {
        self.mant.is_zero()
    }
    /// `Float.Mul` with receiver precision `prec`.
    fn mul(&self, o: &BigFloat, prec: u64) -> BigFloat {
        BigFloat::new(
            self.neg != o.neg,
            &self.mant * &o.mant,
            self.exp + o.exp,
            false,
            prec,
        )
    }
    /// `Float.Quo` (correctly rounded, as `uquo` with its sticky bit).
    fn quo(&self, o: &BigFloat, prec: u64) -> BigFloat {
        let neg = self.neg != o.neg;
        if self.is_zero() {
            return BigFloat {
                neg,
                ..BigFloat::zero(prec)
            };
        }
        let shift = (prec + 2 + bitlen(&o.mant)).saturating_sub(bitlen(&self.mant));
        let num = &self.mant << shift;
        let q = &num / &o.mant;
        let sticky = !(&num % &o.mant).is_zero();
        BigFloat::new(neg, q, self.exp - o.exp - shift as i64, sticky, prec)
    }
    /// `Float.Add` (or `Sub` with `negate_o`): exact sum, then one rounding.
    fn add(&self, o: &BigFloat, negate_o: bool, prec: u64) -> BigFloat {
        let oneg = o.neg != negate_o;
        if o.is_zero() {
            return BigFloat::new(self.neg, self.mant.clone(), self.exp, false, prec);
        }
        if self.is_zero() {
            return BigFloat::new(oneg, o.mant.clone(), o.exp, false, prec);
        }
        let e = self.exp.min(o.exp);
        let a = &self.mant << (self.exp - e) as u64;
        let b = &o.mant << (o.exp - e) as u64;
        if self.neg == oneg {
            BigFloat::new(self.neg, a + b, e, false, prec)
        } else {
            match a.cmp(&b) {
                Ordering::Equal => BigFloat::zero(prec),
                Ordering::Greater => BigFloat::new(self.neg, a - b, e, false, prec),
                Ordering::Less => BigFloat::new(oneg, b - a, e, false, prec),
            }
        }
    }
    /// `new(big.Float).SetInt(i)`: exact, precision max(bit length, 64).
    fn from_int(neg: bool, m: BigUint) -> BigFloat {
        let prec = bitlen(&m).max(64);
        BigFloat::new(neg, m, 0, false, prec)
    }
    /// `Float.Int`: truncation toward zero.
    fn trunc(&self) -> (bool, BigUint) {
        if self.exp >= 0 {
            (self.neg, &self.mant << self.exp as u64)
        } else {
            (self.neg, &self.mant >> (-self.exp) as u64)
        }
    }
    fn cmp_value(&self, o: &BigFloat) -> Ordering {
        let d = self.add(o, true, bitlen(&self.mant) + bitlen(&o.mant) + 2);
        if d.is_zero() {
            Ordering::Equal
        } else if d.neg {
            Ordering::Less
        } else {
            Ordering::Greater
        }
    }
}

/// `Float.pow5` as `Float.scan` calls it: receiver precision 128, squarings at 192.
fn go_pow5(n: u64) -> BigFloat {
    const M: u64 = 27; // largest power of 5 in Go's pow5tab (fits a uint64)
    if n <= M {
        return BigFloat::new(false, BigUint::from(5u32).pow(n as u32), 0, false, 128);
    }
    let mut z = BigFloat::new(false, BigUint::from(5u32).pow(M as u32), 0, false, 128);
    let mut f = BigFloat::new(false, BigUint::from(5u32), 0, false, 192);
    let mut n = n - M;
    while n > 0 {
        if n & 1 != 0 {
            z = z.mul(&f, 128);
        }
        f = f.mul(&f, 192);
        n >>= 1;
    }
    z
}

fn pow10(e: u64) -> BigUint {
    BigUint::from(10u32).pow(e as u32)
}

/// Decimal digit count (0 for zero).
fn ndigits(m: &BigUint) -> i64 {
    if m.is_zero() {
        0
    } else {
        m.to_str_radix(10).len() as i64
    }
}

impl Decimal {
    fn make(negative: bool, digits: BigUint, exp: i64) -> Decimal {
        if digits.is_zero() {
            return Decimal::zero();
        }
        // Strip trailing zeros through the text: one conversion, not a division per zero.
        let text = digits.to_str_radix(10);
        let t = text.trim_end_matches('0');
        let e = exp + (text.len() - t.len()) as i64;
        let d = if t.len() == text.len() {
            digits
        } else {
            BigUint::parse_bytes(t.as_bytes(), 10).unwrap_or_default()
        };
        Decimal {
            negative,
            digits: d,
            exp: e,
        }
    }

    fn zero() -> Decimal {
        Decimal {
            negative: false,
            digits: BigUint::zero(),
            exp: 0,
        }
    }

    /// Rego/JSON number text (`-`/`+`, digits, `.digits`, `e±digits`; `.5` and `5.` as Go's
    /// `big.Float` accepts them). At most [`MAX_DIGITS`] significant digits and a normalized
    /// exponent within ±[`MAX_EXP10`], checked before any big number is built.
    pub fn parse(text: &str) -> Result<Decimal, NumberError> {
        let b = text.as_bytes();
        let mut i = 0;
        let mut negative = false;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            negative = b[i] == b'-';
            i += 1;
        }
        let int_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let int_part = &b[int_start..i];
        let mut frac_part: &[u8] = &[];
        if i < b.len() && b[i] == b'.' {
            i += 1;
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            frac_part = &b[s..i];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(NumberError::Syntax);
        }
        let mut exp_val: i64 = 0;
        if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            i += 1;
            let mut eneg = false;
            if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
                eneg = b[i] == b'-';
                i += 1;
            }
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() {
                // Saturate: anything this large is out of range (or a zero) anyway.
                exp_val = exp_val
                    .saturating_mul(10)
                    .saturating_add((b[i] - b'0') as i64);
                i += 1;
            }
            if s == i {
                return Err(NumberError::Syntax);
            }
            if eneg {
                exp_val = -exp_val;
            }
        }
        if i != b.len() {
            return Err(NumberError::Syntax);
        }
        // Significant digits: all digits without leading and trailing zeros.
        let all: Vec<u8> = int_part.iter().chain(frac_part.iter()).copied().collect();
        let Some(first) = all.iter().position(|&c| c != b'0') else {
            return Ok(Decimal::zero());
        };
        let last = all.iter().rposition(|&c| c != b'0').unwrap_or(first);
        let sig = &all[first..=last];
        if sig.len() > MAX_DIGITS {
            return Err(NumberError::OutOfRange);
        }
        let trailing = (all.len() - 1 - last) as i64;
        let exp = exp_val
            .saturating_sub(frac_part.len() as i64)
            .saturating_add(trailing);
        if !(-MAX_EXP10..=MAX_EXP10).contains(&exp) {
            return Err(NumberError::OutOfRange);
        }
        let digits = BigUint::parse_bytes(sig, 10).ok_or(NumberError::Syntax)?;
        Ok(Decimal {
            negative,
            digits,
            exp,
        })
    }

    pub fn from_bigint(n: &BigInt) -> Decimal {
        Decimal::make(n.sign() == Sign::Minus, n.magnitude().clone(), 0)
    }
    pub fn from_i64(n: i64) -> Decimal {
        Decimal::make(n < 0, BigUint::from(n.unsigned_abs()), 0)
    }
    pub fn from_u64(n: u64) -> Decimal {
        Decimal::make(false, BigUint::from(n), 0)
    }

    /// The value of an f64 as OPA makes a Number of one (`strconv.FormatFloat(f, 'g', -1,
    /// 64)`, shortest round-trip digits, read back exactly). `None` for NaN and infinities.
    pub fn from_f64(f: f64) -> Option<Decimal> {
        if !f.is_finite() {
            return None;
        }
        // Rust's `{:e}` prints the same shortest round-trip digits as Go's FormatFloat.
        Decimal::parse(&alloc::format!("{:e}", f)).ok()
    }

    /// Nearest f64 (correctly rounded by core's parser; ±inf beyond range, ±0 below).
    pub fn to_f64(&self) -> f64 {
        if self.is_zero() {
            return 0.0;
        }
        // Far beyond f64's range: skip building the text.
        let mag = ndigits(&self.digits) + self.exp;
        if mag > 400 {
            return if self.negative {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            };
        }
        if mag < -400 {
            return if self.negative { -0.0 } else { 0.0 };
        }
        let s = alloc::format!(
            "{}{}e{}",
            if self.negative { "-" } else { "" },
            self.digits,
            self.exp
        );
        s.parse::<f64>().unwrap_or(f64::NAN)
    }

    pub fn is_integer(&self) -> bool {
        self.exp >= 0
    }

    /// The integer value when it is an integer of at most `max_digits` decimal digits.
    pub fn to_bigint(&self, max_digits: usize) -> Option<BigInt> {
        if !self.is_integer() {
            return None;
        }
        if self.is_zero() {
            return Some(BigInt::zero());
        }
        if ndigits(&self.digits) + self.exp > max_digits as i64 {
            return None;
        }
        let m = &self.digits * pow10(self.exp as u64);
        let sign = if self.negative {
            Sign::Minus
        } else {
            Sign::Plus
        };
        Some(BigInt::from_biguint(sign, m))
    }

    pub fn is_zero(&self) -> bool {
        self.digits.is_zero()
    }
    pub fn is_negative(&self) -> bool {
        self.negative
    }
    pub fn neg(&self) -> Decimal {
        if self.is_zero() {
            return self.clone();
        }
        Decimal {
            negative: !self.negative,
            ..self.clone()
        }
    }

    /// Exact comparison of values. OPA's `ast.NumberCompare` deviates from it in places (it
    /// compares text trimmed of ".0" characters and calls two non-integers equal when they
    /// round to the same f64); this is the exact order. Magnitudes are compared by digit
    /// count and exponent first; digits are only aligned when those tie.
    #[allow(clippy::should_implement_trait)] // the API names it `cmp`; no `Ord` on purpose
    pub fn cmp(&self, other: &Decimal) -> Ordering {
        let sa = if self.is_zero() {
            0
        } else if self.negative {
            -1
        } else {
            1
        };
        let sb = if other.is_zero() {
            0
        } else if other.negative {
            -1
        } else {
            1
        };
        if sa != sb || sa == 0 {
            return sa.cmp(&sb);
        }
        let mag = Decimal::cmp_abs(self, other);
        if sa < 0 { mag.reverse() } else { mag }
    }

    fn cmp_abs(a: &Decimal, b: &Decimal) -> Ordering {
        let (la, lb) = (ndigits(&a.digits), ndigits(&b.digits));
        let (ma, mb) = (la + a.exp, lb + b.exp);
        if ma != mb {
            return ma.cmp(&mb);
        }
        // Same leading position: align by the digit-count difference only.
        match la.cmp(&lb) {
            Ordering::Equal => a.digits.cmp(&b.digits),
            Ordering::Less => (&a.digits * pow10((lb - la) as u64)).cmp(&b.digits),
            Ordering::Greater => a.digits.cmp(&(&b.digits * pow10((la - lb) as u64))),
        }
    }

    /// Text as OPA prints a number result of this value (`builtins.FloatToNumber`,
    /// `IntToNumber`): integers in full digits (`Text('f', -1)`), other values in Go's
    /// `Text('g', -1)` layout (`%e` form when the decimal exponent is < -4 or >= 6,
    /// e.g. `1.5e-05`, `1.2345675e+06`) with exactly this value's digits. For a literal
    /// written `0.10` this prints `0.1` (OPA would keep the literal's text); OPA's `-0`
    /// cannot arise here and zero prints `0`.
    pub fn to_go_text(&self) -> String {
        let mut out = String::new();
        if self.negative {
            out.push('-');
        }
        let digits = self.digits.to_str_radix(10);
        if self.is_integer() {
            out.push_str(&digits);
            if !self.is_zero() {
                for _ in 0..self.exp {
                    out.push('0');
                }
            }
            return out;
        }
        let n = digits.len() as i64;
        let dexp = n + self.exp; // value = 0.DIGITS * 10^dexp
        let e = dexp - 1;
        if !(-4..6).contains(&e) {
            out.push_str(&digits[..1]);
            if n > 1 {
                out.push('.');
                out.push_str(&digits[1..]);
            }
            out.push('e');
            out.push(if e < 0 { '-' } else { '+' });
            let ea = e.unsigned_abs();
            if ea < 10 {
                out.push('0');
            }
            out.push_str(&ea.to_string());
        } else if dexp > 0 {
            out.push_str(&digits[..dexp as usize]);
            out.push('.');
            out.push_str(&digits[dexp as usize..]);
        } else {
            out.push_str("0.");
            for _ in 0..(-dexp) {
                out.push('0');
            }
            out.push_str(&digits);
        }
        out
    }

    // -- OPA's representations -------------------------------------------------------------

    /// `smallInt`: an int in the int32 window. Values stand for their canonical text, so an
    /// integer value counts as integer text (`json.Number.Int64` succeeds).
    fn small_int(&self) -> Option<i64> {
        if !self.is_integer() || self.exp > 10 {
            return None;
        }
        let v = (&self.digits * pow10(self.exp as u64)).to_i64()?;
        let v = if self.negative { -v } else { v };
        (i64::from(i32::MIN)..=i64::from(i32::MAX))
            .contains(&v)
            .then_some(v)
    }

    /// `builtins.NumberToInt`: the exact integer of an integer value (bounded by the result
    /// bounds, so 1e10000 builds at most ~11k digits).
    fn opa_int(&self) -> Option<BigInt> {
        if !self.is_integer() {
            return None;
        }
        self.to_bigint(MAX_RESULT_DIGITS as usize)
    }

    /// `builtins.NumberToFloat`: `new(big.Float).SetString(text)` at 64 bits, following
    /// `Float.scan`: the mantissa digits as an exact integer times 2^exp5 and 5^exp5, the
    /// power of five from `pow5` at 128 bits, one final rounding (of the exact product or
    /// correctly rounded quotient).
    fn to_big_float(&self) -> BigFloat {
        const PREC: u64 = 64;
        if self.is_zero() {
            return BigFloat::zero(PREC);
        }
        if self.exp >= 0 {
            // Canonical integer text has no exponent: exp5 == 0, a plain `round`.
            let m = &self.digits * pow10(self.exp as u64);
            return BigFloat::new(self.negative, m, 0, false, PREC);
        }
        let n = (-self.exp) as u64;
        let p = go_pow5(n);
        let x = BigFloat {
            neg: self.negative,
            mant: self.digits.clone(),
            exp: -(n as i64),
            prec: PREC,
        };
        x.quo(&p, PREC)
    }

    /// `builtins.FloatToNumber` read back exactly: the shortest decimal of `roundShortest`
    /// (for an integer float too: Go's `Text('f', -1)` of 2^70 is `1180591620717411303400`).
    fn from_big_float(f: &BigFloat) -> Result<Decimal, NumberError> {
        if f.is_zero() {
            return Ok(Decimal::zero());
        }
        // `Text('f', -1)` and `Text('g', -1)` both print the shortest digits (`'f'` pads an
        // integer with zeros), so the value is the shortest decimal either way.
        let (digits, dexp) = round_shortest(f);
        let exp = dexp - digits.len() as i64;
        if !(-MAX_RESULT_DIGITS..=MAX_RESULT_DIGITS).contains(&exp) {
            return Err(NumberError::OutOfRange);
        }
        let m = BigUint::parse_bytes(&digits, 10).unwrap_or_default();
        let d = Decimal::make(f.neg, m, exp);
        check(d)
    }

    fn from_signed(v: BigInt) -> Result<Decimal, NumberError> {
        check(Decimal::from_bigint(&v))
    }

    fn float_op(
        a: &Decimal,
        b: &Decimal,
        f: impl Fn(&BigFloat, &BigFloat) -> BigFloat,
    ) -> Result<Decimal, NumberError> {
        Decimal::from_big_float(&f(&a.to_big_float(), &b.to_big_float()))
    }

    /// Integer digits of a value (how many digits its exact integer would have).
    fn int_size(&self) -> i64 {
        if self.is_zero() {
            0
        } else {
            ndigits(&self.digits) + self.exp
        }
    }

    /// OPA's `plus`.
    pub fn opa_add(a: &Decimal, b: &Decimal) -> Result<Decimal, NumberError> {
        Decimal::add_sub(a, b, false)
    }
    /// OPA's `minus` on numbers.
    pub fn opa_sub(a: &Decimal, b: &Decimal) -> Result<Decimal, NumberError> {
        Decimal::add_sub(a, b, true)
    }

    fn add_sub(a: &Decimal, b: &Decimal, sub: bool) -> Result<Decimal, NumberError> {
        if let (Some(x), Some(y)) = (a.small_int(), b.small_int()) {
            return Ok(Decimal::from_i64(if sub { x - y } else { x + y }));
        }
        if let (Some(x), Some(y)) = (a.opa_int(), b.opa_int()) {
            return Decimal::from_signed(if sub { x - y } else { x + y });
        }
        Decimal::float_op(a, b, |x, y| x.add(y, sub, 64))
    }

    /// OPA's `mul`.
    pub fn opa_mul(a: &Decimal, b: &Decimal) -> Result<Decimal, NumberError> {
        if let (Some(x), Some(y)) = (a.small_int(), b.small_int()) {
            return Ok(Decimal::from_i64(x * y));
        }
        if a.is_integer() && b.is_integer() {
            // Refuse before building a product past the bounds.
            if a.int_size() + b.int_size() > MAX_RESULT_DIGITS + 1 {
                return Err(NumberError::OutOfRange);
            }
            if let (Some(x), Some(y)) = (a.opa_int(), b.opa_int()) {
                return Decimal::from_signed(x * y);
            }
        }
        Decimal::float_op(a, b, |x, y| x.mul(y, 64))
    }

    /// OPA's `div`: an exact int quotient in the int32 window, else a float quotient;
    /// "divide by zero" for a zero divisor of any form.
    pub fn opa_div(a: &Decimal, b: &Decimal) -> Result<Decimal, NumberError> {
        if let (Some(x), Some(y)) = (a.small_int(), b.small_int()) {
            if y == 0 {
                return Err(NumberError::DivideByZero);
            }
            if x != 0 && x % y == 0 {
                return Ok(Decimal::from_i64(x / y));
            }
        }
        if b.is_zero() {
            return Err(NumberError::DivideByZero);
        }
        Decimal::float_op(a, b, |x, y| x.quo(y, 64))
    }

    /// OPA's `rem`: integers only (truncated remainder, sign of the dividend).
    pub fn opa_rem(a: &Decimal, b: &Decimal) -> Result<Decimal, NumberError> {
        if let (Some(x), Some(y)) = (a.small_int(), b.small_int()) {
            if y == 0 {
                return Err(NumberError::ModuloByZero);
            }
            return Ok(Decimal::from_i64(x % y));
        }
        match (a.opa_int(), b.opa_int()) {
            (Some(x), Some(y)) => {
                if y.is_zero() {
                    return Err(NumberError::ModuloByZero);
                }
                Decimal::from_signed(x % y)
            }
            _ if a.is_integer() && b.is_integer() => Err(NumberError::OutOfRange),
            _ => Err(NumberError::ModuloOnFloat),
        }
    }

    fn unary(&self, f: impl Fn(&BigFloat) -> BigFloat) -> Decimal {
        // Inputs within bounds give results within bounds (64-bit floats of them).
        Decimal::from_big_float(&f(&self.to_big_float())).unwrap_or_else(|_| self.clone())
    }

    /// OPA's `round`: half away from zero, computed as `(a ± 0.5)` at 64 bits, truncated.
    pub fn opa_round(&self) -> Decimal {
        if self.small_int().is_some() {
            return self.clone();
        }
        self.unary(|a| {
            let half = BigFloat::new(a.neg, BigUint::one(), -1, false, 53);
            let s = a.add(&half, false, 64);
            let (neg, i) = s.trunc();
            BigFloat::from_int(neg, i)
        })
    }

    /// OPA's `ceil`. Quirk followed: OPA's `arithCeil` tests the sign of the truncated
    /// integer, so `ceil(x)` for -1 < x < 0 is 1.
    pub fn opa_ceil(&self) -> Decimal {
        if self.small_int().is_some() {
            return self.clone();
        }
        self.unary(|a| {
            let (neg, i) = a.trunc();
            let f = BigFloat::from_int(neg && !i.is_zero(), i);
            if f.neg || a.cmp_value(&f) == Ordering::Equal {
                f
            } else {
                f.add(
                    &BigFloat::new(false, BigUint::one(), 0, false, 53),
                    false,
                    f.prec,
                )
            }
        })
    }

    /// OPA's `floor`. Quirk followed: for -1 < x < 0 OPA's `arithFloor` returns 0.
    pub fn opa_floor(&self) -> Decimal {
        if self.small_int().is_some() {
            return self.clone();
        }
        self.unary(|a| {
            let (neg, i) = a.trunc();
            let f = BigFloat::from_int(neg && !i.is_zero(), i);
            if !f.neg || a.cmp_value(&f) == Ordering::Equal {
                f
            } else {
                f.add(
                    &BigFloat::new(false, BigUint::one(), 0, false, 53),
                    true,
                    f.prec,
                )
            }
        })
    }

    /// OPA's `abs` (non-int32 values go through a 64-bit float, so long integers round).
    pub fn opa_abs(&self) -> Decimal {
        if let Some(x) = self.small_int() {
            return Decimal::from_i64(x.abs());
        }
        self.unary(|a| BigFloat {
            neg: false,
            ..a.clone()
        })
    }

    /// OPA's `sum`: exact when every item is an integer, else a `big.Float` accumulator
    /// (`new(big.Float)`, which takes its operands' 64 bits) in iteration order.
    pub fn opa_sum<'a>(
        items: impl IntoIterator<Item = &'a Decimal>,
    ) -> Result<Decimal, NumberError> {
        let items: Vec<&Decimal> = items.into_iter().collect();
        if items.iter().all(|d| d.is_integer()) {
            let mut acc = BigInt::zero();
            for d in &items {
                acc += d.opa_int().ok_or(NumberError::OutOfRange)?;
            }
            return Decimal::from_signed(acc);
        }
        let mut sum = BigFloat::zero(0);
        for d in &items {
            sum = sum.add(&d.to_big_float(), false, 64);
        }
        Decimal::from_big_float(&sum)
    }

    /// OPA's `product`: exact when every item is an integer, else a `big.NewFloat(1)`
    /// accumulator, which rounds every step to 53 bits.
    pub fn opa_product<'a>(
        items: impl IntoIterator<Item = &'a Decimal>,
    ) -> Result<Decimal, NumberError> {
        let items: Vec<&Decimal> = items.into_iter().collect();
        if items.iter().all(|d| d.is_integer()) {
            let size: i64 = items.iter().map(|d| d.int_size()).sum();
            if items.iter().any(|d| d.is_zero()) {
                return Ok(Decimal::zero());
            }
            if size > MAX_RESULT_DIGITS + items.len() as i64 {
                return Err(NumberError::OutOfRange);
            }
            let mut acc = BigInt::one();
            for d in &items {
                acc *= d.opa_int().ok_or(NumberError::OutOfRange)?;
            }
            return Decimal::from_signed(acc);
        }
        let mut p = BigFloat::new(false, BigUint::one(), 0, false, 53);
        for d in &items {
            let x = d.to_big_float();
            // A float exponent past the bounds cannot come back as a number.
            if (p.exp + bitlen(&p.mant) as i64).abs() > MAX_RESULT_DIGITS * 8 {
                return Err(NumberError::OutOfRange);
            }
            p = p.mul(&x, 53);
        }
        Decimal::from_big_float(&p)
    }
}

impl Decimal {
    /// The exact product (Go's `big.Rat.Mul`), within the result bounds.
    pub fn exact_mul(a: &Decimal, b: &Decimal) -> Result<Decimal, NumberError> {
        if a.is_zero() || b.is_zero() {
            return Ok(Decimal::zero());
        }
        if ndigits(&a.digits) + ndigits(&b.digits) > 2 * MAX_DIGITS as i64 + 1 {
            return Err(NumberError::OutOfRange);
        }
        check(Decimal::make(
            a.negative != b.negative,
            &a.digits * &b.digits,
            a.exp + b.exp,
        ))
    }

    /// Go's `big.Rat.FloatString(places)` read back: rounded to `places` decimals, a half away
    /// from zero.
    pub fn round_places(&self, places: u32) -> Decimal {
        let keep = -i64::from(places);
        if self.exp >= keep {
            return self.clone();
        }
        // digits * 10^exp = (digits / 10^(keep - exp)) * 10^keep, the quotient rounded.
        let shift = (keep - self.exp) as u64;
        if shift > ndigits(&self.digits) as u64 + 1 {
            return Decimal::zero();
        }
        let div = pow10(shift);
        let q = &self.digits / &div;
        let r = &self.digits % &div;
        let q = if r * 2u32 >= div { q + 1u32 } else { q };
        Decimal::make(self.negative, q, keep)
    }

    /// OPA's `units.parse_bytes` product: `new(big.Float).SetString(a)` (64 bits) times `b`
    /// (an integer below 2^64, exact at 64 bits), rounded to 64 bits, truncated toward zero
    /// (`Float.Int`).
    pub fn go_float_mul_trunc(a: &Decimal, b: &Decimal) -> Result<BigInt, NumberError> {
        truncated(&a.to_big_float().mul(&b.to_big_float(), 64))
    }

    /// `builtins.NumberToFloat(n)` then `Float.Int`: the value at a 64-bit mantissa, truncated
    /// toward zero (OPA's `format_int`: `-0.5` is 0, never `-0`; an integer past 64 bits
    /// rounds as OPA's does).
    pub fn go_float_trunc(&self) -> Result<BigInt, NumberError> {
        truncated(&self.to_big_float())
    }
}

/// `Float.Int` of `f`, bounded by the result bounds.
fn truncated(f: &BigFloat) -> Result<BigInt, NumberError> {
    let (negative, magnitude) = f.trunc();
    if ndigits(&magnitude) > MAX_RESULT_DIGITS {
        return Err(NumberError::OutOfRange);
    }
    let sign = if negative && !magnitude.is_zero() {
        Sign::Minus
    } else {
        Sign::Plus
    };
    Ok(BigInt::from_biguint(sign, magnitude))
}

/// Refuses results past the result bounds.
fn check(d: Decimal) -> Result<Decimal, NumberError> {
    if d.is_zero() {
        return Ok(d);
    }
    let size = ndigits(&d.digits);
    if size + d.exp.max(0) > MAX_RESULT_DIGITS || d.exp < -MAX_RESULT_DIGITS {
        return Err(NumberError::OutOfRange);
    }
    Ok(d)
}

// ---------------------------------------------------------------------------------------
// Go's `roundShortest` (math/big/ftoa.go) on exact decimal digit strings.

/// Exact decimal of `mant * 2^exp` as Go's `decimal.init`: digits without trailing zeros and
/// the point position (`value = 0.DIGITS * 10^dexp`).
fn exact_decimal(mant: &BigUint, exp: i64) -> (Vec<u8>, i64) {
    if mant.is_zero() {
        return (Vec::new(), 0);
    }
    let (mut m, mut e) = (mant.clone(), exp);
    if e < 0 {
        let tz = m.trailing_zeros().unwrap_or(0).min((-e) as u64);
        m >>= tz;
        e += tz as i64;
    }
    let (n, scale) = if e >= 0 {
        (m << e as u64, 0i64)
    } else {
        (m * BigUint::from(5u32).pow((-e) as u32), e)
    };
    let mut s = n.to_str_radix(10).into_bytes();
    let dexp = s.len() as i64 + scale;
    while s.last() == Some(&b'0') {
        s.pop();
    }
    (s, dexp)
}

fn at(d: &[u8], i: usize) -> u8 {
    d.get(i).copied().unwrap_or(b'0')
}

fn round_down(d: &mut Vec<u8>, n: usize) {
    if n < d.len() {
        d.truncate(n);
        while d.last() == Some(&b'0') {
            d.pop();
        }
    }
}

fn round_up(d: &mut Vec<u8>, dexp: &mut i64, n: usize) {
    if n >= d.len() {
        return;
    }
    let mut i = n;
    while i > 0 && d[i - 1] >= b'9' {
        i -= 1;
    }
    if i == 0 {
        d.clear();
        d.push(b'1');
        *dexp += 1;
    } else {
        d[i - 1] += 1;
        d.truncate(i);
    }
}

fn should_round_up(d: &[u8], n: usize) -> bool {
    if d[n] == b'5' && n + 1 == d.len() {
        return n > 0 && (d[n - 1] - b'0') & 1 != 0;
    }
    d[n] >= b'5'
}

/// Shortest digits that read back to `f` at its precision, as Go's `roundShortest`
/// (symmetric half-ulp bounds, inclusive for an even mantissa).
fn round_shortest(f: &BigFloat) -> (Vec<u8>, i64) {
    let (mut d, mut dexp) = exact_decimal(&f.mant, f.exp);
    let prec = f.prec.max(1);
    let s = bitlen(&f.mant) as i64 - (prec as i64 + 1);
    let (mant, exp) = if s < 0 {
        (&f.mant << (-s) as u64, f.exp + s)
    } else {
        (&f.mant >> s as u64, f.exp + s)
    };
    let (lower, _) = exact_decimal(&(&mant - 1u32), exp);
    let (upper, _) = exact_decimal(&(&mant + 1u32), exp);
    let inclusive = !mant.bit(1);
    for i in 0..d.len() {
        let m = d[i];
        let l = at(&lower, i);
        let u = at(&upper, i);
        let okdown = l != m || inclusive && i + 1 == lower.len();
        let okup = m != u && (inclusive || m + 1 < u || i + 1 < upper.len());
        if okdown && okup {
            if i + 1 < d.len() && should_round_up(&d, i + 1) {
                round_up(&mut d, &mut dexp, i + 1);
            } else {
                round_down(&mut d, i + 1);
            }
            break;
        } else if okdown {
            round_down(&mut d, i + 1);
            break;
        } else if okup {
            round_up(&mut d, &mut dexp, i + 1);
            break;
        }
    }
    (d, dexp)
}
