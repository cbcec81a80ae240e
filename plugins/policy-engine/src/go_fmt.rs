//! OPA's `sprintf(format, values)`: Go's `fmt.Sprintf` over the values as OPA hands them to it
//! (`v1/topdown/strings.go`, `builtinSprintf`).
//!
//! regorus formatted with its own reading of the verbs, ignoring width and precision
//! (`sprintf("%.3s", ["admin-42"])` gave `admin-42` where OPA gives `adm`). Here each element of
//! the array becomes the Go value OPA makes of it, and the format is read as Go's `fmt` reads it
//! (`print.go`'s `doPrintf`, `format.go`, `strconv`'s float formatting, `math/big`'s `Format`):
//!
//! - a number: an `int64` if it is an integer that fits, else a `*big.Int` if it is an integer,
//!   else a `float64`. OPA decides on the number's text (`1.0` and `1e3` are `float64` there);
//!   regorus keeps no text, so an integral value is an integer here.
//! - a string: a Go `string`.
//! - anything else: a `string`, the element's Rego text (`[1, "a"]`, `{"k": true}`, `set()`,
//!   `null`), as OPA's `Term.String` writes it.
//!
//! Go's `fmt` never fails: a verb that does not fit its operand prints `%!d(string=x)`, a
//! missing operand `%!d(MISSING)`, operands left over `%!(EXTRA string=x)`, a bad index
//! `%!d(BADINDEX)`, a `*` operand that is not an integer `%!(BADWIDTH)` / `%!(BADPREC)`, and a
//! format ending after `%` `%!(NOVERB)`. Floats are formatted with correct rounding of the
//! exact binary value, ties to even, and the shortest representation where no precision is
//! given, as `strconv.FormatFloat` does. `%p` of a `*big.Int` (an address in Go) prints as a
//! bad verb.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use regorus::Value;

#[cfg(test)]
mod tests;

/// A Go operand: what OPA passes to `fmt.Sprintf` for one element.
#[derive(Debug, Clone)]
enum Arg {
    Int(i64),
    /// A `*big.Int`: its sign and its magnitude in bases 2, 8, 10 and 16.
    Big {
        neg: bool,
        bin: String,
        oct: String,
        dec: String,
        hex: String,
    },
    Float(f64),
    Str(String),
}

impl Arg {
    fn type_name(&self) -> &'static str {
        match self {
            Arg::Int(_) => "int64",
            Arg::Big { .. } => "*big.Int",
            Arg::Float(_) => "float64",
            Arg::Str(_) => "string",
        }
    }
}

/// OPA's `sprintf(format, values)` builtin: operand 1 a string, operand 2 an array.
pub fn builtin(fail: impl crate::go_builtins::Fail) -> Box<dyn regorus::Extension> {
    Box::new(move |args: Vec<Value>| {
        let Ok(format) = args[0].as_string() else {
            return fail("sprintf: operand 1 must be string".into());
        };
        let Ok(items) = args[1].as_array() else {
            return fail("sprintf: operand 2 must be array".into());
        };
        let items: Vec<Value> = items.iter().cloned().collect();
        Ok(Value::from(sprintf(format, &items)))
    })
}

/// `fmt.Sprintf(format, args...)` with the arguments OPA makes of `args`.
pub fn sprintf(format: &str, args: &[Value]) -> String {
    let args: Vec<Arg> = args.iter().map(to_arg).collect();
    let mut p = Printer::default();
    p.do_printf(format, &args);
    p.buf
}

fn to_arg(v: &Value) -> Arg {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Arg::Int(i);
            }
            if let Some(b) = n.as_big() {
                let m = b.magnitude();
                return Arg::Big {
                    neg: b.to_string().starts_with('-'),
                    bin: m.to_str_radix(2),
                    oct: m.to_str_radix(8),
                    dec: m.to_str_radix(10),
                    hex: m.to_str_radix(16),
                };
            }
            match n.as_f64() {
                Some(f) => Arg::Float(f),
                None => Arg::Str(n.format_decimal()),
            }
        }
        Value::String(s) => Arg::Str(s.to_string()),
        other => {
            let mut out = String::new();
            rego_text(other, &mut out);
            Arg::Str(out)
        }
    }
}

/// A value's Rego text as OPA's `Term.String` writes it.
fn rego_text(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            // Integers in full; other numbers as OPA writes those its arithmetic makes.
            out.push_str(&n.format_decimal());
        }
        Value::String(s) => out.push_str(&quote(s, '"', false)),
        Value::Array(items) => {
            out.push('[');
            items_text(items.iter(), out);
            out.push(']');
        }
        Value::Set(items) => {
            if items.is_empty() {
                out.push_str("set()");
                return;
            }
            out.push('{');
            items_text(items.iter_sorted(), out);
            out.push('}');
        }
        Value::Object(fields) => {
            out.push('{');
            for (i, (k, v)) in fields.iter_sorted().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                rego_text(k, out);
                out.push_str(": ");
                rego_text(v, out);
            }
            out.push('}');
        }
        Value::Undefined => out.push_str("undefined"),
    }
}

/// `items` as Rego writes a collection's, separated by `, `.
fn items_text<'a>(items: impl Iterator<Item = &'a Value>, out: &mut String) {
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        rego_text(item, out);
    }
}

/// Go's `strconv.IsPrint`: letters, marks, numbers, punctuation, symbols and U+0020; not
/// controls, separators, format characters or private use. Unassigned code points count as
/// printable here (Go escapes them): no tables are kept for them, and a class compiled per
/// string made a long set of non-Latin strings cost a compilation each (a reading).
fn is_print(c: char) -> bool {
    let r = c as u32;
    if r <= 0xFF {
        return (0x20..=0x7E).contains(&r) || ((0xA1..=0xFF).contains(&r) && r != 0xAD);
    }
    let format = matches!(
        r,
        0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    );
    let private = matches!(r, 0xE000..=0xF8FF | 0xF0000..=0xFFFFD | 0x100000..=0x10FFFD);
    !(c.is_control() || c.is_whitespace() || format || private)
}

/// `strconv.Quote` (`"`), `QuoteRune` (`'`), and their `ToASCII` forms.
fn quote(s: &str, q: char, ascii: bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push(q);
    for c in s.chars() {
        push_escaped(&mut out, c, q, ascii);
    }
    out.push(q);
    out
}

fn push_escaped(out: &mut String, c: char, q: char, ascii: bool) {
    if c == q || c == '\\' {
        out.push('\\');
        out.push(c);
        return;
    }
    if ascii {
        if (c as u32) < 0x80 && is_print(c) {
            out.push(c);
            return;
        }
    } else if is_print(c) {
        out.push(c);
        return;
    }
    match c {
        '\x07' => out.push_str(r"\a"),
        '\x08' => out.push_str(r"\b"),
        '\x0c' => out.push_str(r"\f"),
        '\n' => out.push_str(r"\n"),
        '\r' => out.push_str(r"\r"),
        '\t' => out.push_str(r"\t"),
        '\x0b' => out.push_str(r"\v"),
        _ => {
            let r = c as u32;
            if r < 0x20 || r == 0x7F {
                out.push_str(&format!("\\x{r:02x}"));
            } else if r < 0x10000 {
                out.push_str(&format!("\\u{r:04x}"));
            } else {
                out.push_str(&format!("\\U{r:08x}"));
            }
        }
    }
}

/// `strconv.CanBackquote`.
fn can_backquote(s: &str) -> bool {
    s.chars().all(|c| {
        if c.len_utf8() > 1 {
            return c != '\u{FEFF}';
        }
        !((c < ' ' && c != '\t') || c == '`' || c == '\x7F')
    })
}

/// The rune Go's `rune(c)` formats: invalid code points are U+FFFD.
fn rune_of(c: u64) -> char {
    u32::try_from(c)
        .ok()
        .and_then(char::from_u32)
        .unwrap_or('\u{FFFD}')
}

#[derive(Debug, Default, Clone, Copy)]
struct Flags {
    wid_present: bool,
    prec_present: bool,
    minus: bool,
    plus: bool,
    sharp: bool,
    space: bool,
    zero: bool,
    plus_v: bool,
    sharp_v: bool,
    wid: i64,
    prec: i64,
}

#[derive(Debug, Default)]
struct Printer {
    buf: String,
    f: Flags,
    reordered: bool,
    good_arg_num: bool,
}

const LDIGITS: &[u8] = b"0123456789abcdefx";
const UDIGITS: &[u8] = b"0123456789ABCDEFX";

fn too_large(x: i64) -> bool {
    !(-1_000_000..=1_000_000).contains(&x)
}

/// Go's `parsenum`: the number at `s[start..end]`, whether there was one, and where it ends.
fn parsenum(s: &[u8], start: usize, end: usize) -> (i64, bool, usize) {
    if start >= end {
        return (0, false, end);
    }
    let mut num = 0i64;
    let mut isnum = false;
    let mut i = start;
    while i < end && s[i].is_ascii_digit() {
        if too_large(num) {
            return (0, false, end);
        }
        num = num * 10 + i64::from(s[i] - b'0');
        isnum = true;
        i += 1;
    }
    (num, isnum, i)
}

/// Go's `parseArgNumber` on `s` (which starts with `[`): index, bytes consumed, ok.
fn parse_arg_number(s: &[u8]) -> (i64, usize, bool) {
    if s.len() < 3 {
        return (0, 1, false);
    }
    for i in 1..s.len() {
        if s[i] == b']' {
            let (width, ok, newi) = parsenum(s, 1, i);
            if !ok || newi != i {
                return (0, i + 1, false);
            }
            return (width - 1, i + 1, true);
        }
    }
    (0, 1, false)
}

/// Go's `intFromArg`: the `*` operand as a width or precision.
fn int_from_arg(a: &[Arg], arg_num: usize) -> (i64, bool, usize) {
    if arg_num >= a.len() {
        return (0, false, arg_num);
    }
    let (mut num, mut is_int) = match a[arg_num] {
        Arg::Int(n) => (n, true),
        _ => (0, false),
    };
    if too_large(num) {
        num = 0;
        is_int = false;
    }
    (num, is_int, arg_num + 1)
}

impl Printer {
    fn do_printf(&mut self, format: &str, a: &[Arg]) {
        let s = format.as_bytes();
        let end = s.len();
        let mut arg_num = 0usize;
        let mut after_index;
        self.reordered = false;
        let mut i = 0;
        while i < end {
            self.good_arg_num = true;
            let lasti = i;
            while i < end && s[i] != b'%' {
                i += 1;
            }
            if i > lasti {
                self.buf.push_str(&format[lasti..i]);
            }
            if i >= end {
                break;
            }
            i += 1;
            self.f = Flags::default();
            while i < end {
                match s[i] {
                    b'#' => self.f.sharp = true,
                    b'0' => self.f.zero = true,
                    b'+' => self.f.plus = true,
                    b'-' => self.f.minus = true,
                    b' ' => self.f.space = true,
                    _ => break,
                }
                i += 1;
            }

            (arg_num, i, after_index) = self.arg_number(arg_num, s, i, a.len());

            if i < end && s[i] == b'*' {
                i += 1;
                (self.f.wid, self.f.wid_present, arg_num) = int_from_arg(a, arg_num);
                if !self.f.wid_present {
                    self.buf.push_str("%!(BADWIDTH)");
                }
                if self.f.wid < 0 {
                    self.f.wid = -self.f.wid;
                    self.f.minus = true;
                    self.f.zero = false;
                }
                after_index = false;
            } else {
                (self.f.wid, self.f.wid_present, i) = parsenum(s, i, end);
                if after_index && self.f.wid_present {
                    self.good_arg_num = false;
                }
            }

            if i < end && s[i] == b'.' {
                i += 1;
                if after_index {
                    self.good_arg_num = false;
                }
                (arg_num, i, after_index) = self.arg_number(arg_num, s, i, a.len());
                if i < end && s[i] == b'*' {
                    i += 1;
                    (self.f.prec, self.f.prec_present, arg_num) = int_from_arg(a, arg_num);
                    if self.f.prec < 0 {
                        self.f.prec = 0;
                        self.f.prec_present = false;
                    }
                    if !self.f.prec_present {
                        self.buf.push_str("%!(BADPREC)");
                    }
                    after_index = false;
                } else {
                    (self.f.prec, self.f.prec_present, i) = parsenum(s, i, end);
                    if !self.f.prec_present {
                        self.f.prec = 0;
                        self.f.prec_present = true;
                    }
                }
            }

            if !after_index {
                (arg_num, i, _) = self.arg_number(arg_num, s, i, a.len());
            }

            if i >= end {
                self.buf.push_str("%!(NOVERB)");
                break;
            }

            let verb = format[i..].chars().next().unwrap_or('\u{FFFD}');
            i += verb.len_utf8();

            if verb == '%' {
                self.buf.push('%');
            } else if !self.good_arg_num {
                self.buf.push_str("%!");
                self.buf.push(verb);
                self.buf.push_str("(BADINDEX)");
            } else if arg_num >= a.len() {
                self.buf.push_str("%!");
                self.buf.push(verb);
                self.buf.push_str("(MISSING)");
            } else {
                if verb == 'v' {
                    self.f.sharp_v = self.f.sharp;
                    self.f.sharp = false;
                    self.f.plus_v = self.f.plus;
                    self.f.plus = false;
                }
                self.print_arg(&a[arg_num], verb);
                arg_num += 1;
            }
        }

        if !self.reordered && arg_num < a.len() {
            self.f = Flags::default();
            self.buf.push_str("%!(EXTRA ");
            for (k, arg) in a[arg_num..].iter().enumerate() {
                if k > 0 {
                    self.buf.push_str(", ");
                }
                self.buf.push_str(arg.type_name());
                self.buf.push('=');
                self.print_arg(arg, 'v');
            }
            self.buf.push(')');
        }
    }

    fn arg_number(
        &mut self,
        arg_num: usize,
        s: &[u8],
        i: usize,
        num_args: usize,
    ) -> (usize, usize, bool) {
        if s.len() <= i || s[i] != b'[' {
            return (arg_num, i, false);
        }
        self.reordered = true;
        let (index, wid, ok) = parse_arg_number(&s[i..]);
        if ok && 0 <= index && (index as usize) < num_args {
            return (index as usize, i + wid, true);
        }
        self.good_arg_num = false;
        (arg_num, i + wid, ok)
    }

    fn print_arg(&mut self, arg: &Arg, verb: char) {
        match verb {
            'T' => return self.fmt_s(arg.type_name()),
            'p' => return self.bad_verb(arg, verb),
            _ => {}
        }
        match arg {
            Arg::Int(n) => self.fmt_integer_verb(arg, *n as u64, true, verb),
            Arg::Float(v) => self.fmt_float_verb(arg, *v, verb),
            Arg::Str(s) => self.fmt_string(arg, s, verb),
            Arg::Big {
                neg,
                bin,
                oct,
                dec,
                hex,
            } => self.fmt_big(*neg, bin, oct, dec, hex, verb),
        }
    }

    fn bad_verb(&mut self, arg: &Arg, verb: char) {
        self.buf.push_str("%!");
        self.buf.push(verb);
        self.buf.push('(');
        self.buf.push_str(arg.type_name());
        self.buf.push('=');
        self.print_arg(arg, 'v');
        self.buf.push(')');
    }

    // ---- padding (format.go) ----

    fn write_padding(&mut self, n: i64) {
        if n <= 0 {
            return;
        }
        let pad = if self.f.zero && !self.f.minus {
            '0'
        } else {
            ' '
        };
        for _ in 0..n {
            self.buf.push(pad);
        }
    }

    fn pad(&mut self, s: &str) {
        if !self.f.wid_present || self.f.wid == 0 {
            self.buf.push_str(s);
            return;
        }
        let width = self.f.wid - s.chars().count() as i64;
        if !self.f.minus {
            self.write_padding(width);
            self.buf.push_str(s);
        } else {
            self.buf.push_str(s);
            self.write_padding(width);
        }
    }

    fn truncate<'a>(&self, s: &'a str) -> &'a str {
        if self.f.prec_present {
            let mut n = self.f.prec;
            for (i, _) in s.char_indices() {
                n -= 1;
                if n < 0 {
                    return &s[..i];
                }
            }
        }
        s
    }

    fn fmt_s(&mut self, s: &str) {
        let s = self.truncate(s);
        self.pad(s);
    }

    // ---- strings ----

    fn fmt_string(&mut self, arg: &Arg, s: &str, verb: char) {
        match verb {
            'v' if self.f.sharp_v => self.fmt_q(s),
            'v' | 's' => self.fmt_s(s),
            'x' => self.fmt_sx(s, LDIGITS),
            'X' => self.fmt_sx(s, UDIGITS),
            'q' => self.fmt_q(s),
            _ => self.bad_verb(arg, verb),
        }
    }

    fn fmt_sx(&mut self, s: &str, digits: &[u8]) {
        let b = s.as_bytes();
        let mut length = b.len() as i64;
        if self.f.prec_present && self.f.prec < length {
            length = self.f.prec;
        }
        let mut width = 2 * length;
        if width > 0 {
            if self.f.space {
                if self.f.sharp {
                    width *= 2;
                }
                width += length - 1;
            } else if self.f.sharp {
                width += 2;
            }
        } else {
            if self.f.wid_present {
                self.write_padding(self.f.wid);
            }
            return;
        }
        if self.f.wid_present && self.f.wid > width && !self.f.minus {
            self.write_padding(self.f.wid - width);
        }
        if self.f.sharp {
            self.buf.push('0');
            self.buf.push(digits[16] as char);
        }
        for (i, &c) in b[..length as usize].iter().enumerate() {
            if self.f.space && i > 0 {
                self.buf.push(' ');
                if self.f.sharp {
                    self.buf.push('0');
                    self.buf.push(digits[16] as char);
                }
            }
            self.buf.push(digits[(c >> 4) as usize] as char);
            self.buf.push(digits[(c & 0xF) as usize] as char);
        }
        if self.f.wid_present && self.f.wid > width && self.f.minus {
            self.write_padding(self.f.wid - width);
        }
    }

    fn fmt_q(&mut self, s: &str) {
        let s = self.truncate(s);
        if self.f.sharp && can_backquote(s) {
            let q = format!("`{s}`");
            self.pad(&q);
            return;
        }
        let q = quote(s, '"', self.f.plus);
        self.pad(&q);
    }

    // ---- integers ----

    fn fmt_integer_verb(&mut self, arg: &Arg, v: u64, signed: bool, verb: char) {
        match verb {
            'v' | 'd' => self.fmt_integer(v, 10, signed, verb, LDIGITS),
            'b' => self.fmt_integer(v, 2, signed, verb, LDIGITS),
            'o' | 'O' => self.fmt_integer(v, 8, signed, verb, LDIGITS),
            'x' => self.fmt_integer(v, 16, signed, verb, LDIGITS),
            'X' => self.fmt_integer(v, 16, signed, verb, UDIGITS),
            'c' => {
                let c = rune_of(v).to_string();
                self.pad(&c);
            }
            'q' => {
                let mut q = String::from('\'');
                push_escaped(&mut q, rune_of(v), '\'', self.f.plus);
                q.push('\'');
                self.pad(&q);
            }
            'U' => self.fmt_unicode(v),
            _ => self.bad_verb(arg, verb),
        }
    }

    fn fmt_integer(&mut self, u: u64, base: u64, signed: bool, verb: char, digits: &[u8]) {
        let negative = signed && (u as i64) < 0;
        let mut u = if negative { u.wrapping_neg() } else { u };
        let mut prec = 0i64;
        if self.f.prec_present {
            prec = self.f.prec;
            if prec == 0 && u == 0 {
                let old = self.f.zero;
                self.f.zero = false;
                self.write_padding(self.f.wid);
                self.f.zero = old;
                return;
            }
        } else if self.f.zero && !self.f.minus && self.f.wid_present {
            prec = self.f.wid;
            if negative || self.f.plus || self.f.space {
                prec -= 1;
            }
        }
        // Built right to left, then reversed.
        let mut rev: Vec<u8> = Vec::new();
        while u >= base {
            rev.push(digits[(u % base) as usize]);
            u /= base;
        }
        rev.push(digits[u as usize]);
        while prec > rev.len() as i64 {
            rev.push(b'0');
        }
        if self.f.sharp {
            match base {
                2 => rev.extend_from_slice(b"b0"),
                8 if rev.last() != Some(&b'0') => rev.push(b'0'),
                16 => {
                    rev.push(digits[16]);
                    rev.push(b'0');
                }
                _ => {}
            }
        }
        if verb == 'O' {
            rev.extend_from_slice(b"o0");
        }
        if negative {
            rev.push(b'-');
        } else if self.f.plus {
            rev.push(b'+');
        } else if self.f.space {
            rev.push(b' ');
        }
        rev.reverse();
        let s = String::from_utf8(rev).unwrap_or_default();
        let old = self.f.zero;
        self.f.zero = false;
        self.pad(&s);
        self.f.zero = old;
    }

    fn fmt_unicode(&mut self, u: u64) {
        let mut prec = 4i64;
        if self.f.prec_present && self.f.prec > 4 {
            prec = self.f.prec;
        }
        let hex = format!("{u:X}");
        let mut s = String::from("U+");
        for _ in hex.len() as i64..prec {
            s.push('0');
        }
        s.push_str(&hex);
        let quoted = u32::try_from(u)
            .ok()
            .and_then(char::from_u32)
            .filter(|&c| self.f.sharp && is_print(c));
        if let Some(c) = quoted {
            s.push_str(" '");
            s.push(c);
            s.push('\'');
        }
        let old = self.f.zero;
        self.f.zero = false;
        self.pad(&s);
        self.f.zero = old;
    }

    // ---- *big.Int (math/big's Format) ----

    fn fmt_big(&mut self, neg: bool, bin: &str, oct: &str, dec: &str, hex: &str, verb: char) {
        let digits: String = match verb {
            'b' => bin.to_string(),
            'o' | 'O' => oct.to_string(),
            'd' | 's' | 'v' => dec.to_string(),
            'x' => hex.to_string(),
            'X' => hex.to_ascii_uppercase(),
            _ => {
                self.buf.push_str("%!");
                self.buf.push(verb);
                self.buf.push_str("(big.Int=");
                if neg {
                    self.buf.push('-');
                }
                self.buf.push_str(dec);
                self.buf.push(')');
                return;
            }
        };
        let plus = self.f.plus || self.f.plus_v;
        let sharp = self.f.sharp || self.f.sharp_v;
        let sign = if neg {
            "-"
        } else if plus {
            "+"
        } else if self.f.space {
            " "
        } else {
            ""
        };
        let mut prefix = "";
        if sharp {
            prefix = match verb {
                'b' => "0b",
                'o' => "0",
                'x' => "0x",
                'X' => "0X",
                _ => "",
            };
        }
        if verb == 'O' {
            prefix = "0o";
        }
        let (mut left, mut zeros, mut right) = (0i64, 0i64, 0i64);
        let n = digits.len() as i64;
        if self.f.prec_present {
            if n < self.f.prec {
                zeros = self.f.prec - n;
            } else if digits == "0" && self.f.prec == 0 {
                return;
            }
        }
        let length = sign.len() as i64 + prefix.len() as i64 + zeros + n;
        if self.f.wid_present && length < self.f.wid {
            let d = self.f.wid - length;
            if self.f.minus {
                right = d;
            } else if self.f.zero && !self.f.prec_present {
                zeros = d;
            } else {
                left = d;
            }
        }
        let push_n = |buf: &mut String, c: char, k: i64| {
            for _ in 0..k {
                buf.push(c);
            }
        };
        push_n(&mut self.buf, ' ', left);
        self.buf.push_str(sign);
        self.buf.push_str(prefix);
        push_n(&mut self.buf, '0', zeros);
        self.buf.push_str(&digits);
        push_n(&mut self.buf, ' ', right);
    }

    // ---- floats ----

    fn fmt_float_verb(&mut self, arg: &Arg, v: f64, verb: char) {
        match verb {
            'v' => self.fmt_float(v, 'g', -1),
            'b' | 'g' | 'G' | 'x' | 'X' => self.fmt_float(v, verb, -1),
            'f' | 'e' | 'E' => self.fmt_float(v, verb, 6),
            'F' => self.fmt_float(v, 'f', 6),
            _ => self.bad_verb(arg, verb),
        }
    }

    fn fmt_float(&mut self, v: f64, verb: char, prec: i64) {
        let prec = if self.f.prec_present {
            self.f.prec
        } else {
            prec
        };
        let formatted = format_float(v, verb as u8, prec);
        let mut num: Vec<u8> = Vec::with_capacity(formatted.len() + 1);
        if formatted.starts_with('-') || formatted.starts_with('+') {
            num.extend_from_slice(formatted.as_bytes());
        } else {
            num.push(b'+');
            num.extend_from_slice(formatted.as_bytes());
        }
        if self.f.space && num[0] == b'+' && !self.f.plus {
            num[0] = b' ';
        }
        if num[1] == b'I' || num[1] == b'N' {
            let old = self.f.zero;
            self.f.zero = false;
            if num[1] == b'N' && !self.f.space && !self.f.plus {
                num.remove(0);
            }
            let s = String::from_utf8(num).unwrap_or_default();
            self.pad(&s);
            self.f.zero = old;
            return;
        }
        if self.f.sharp && verb != 'b' {
            let mut digits = 0i64;
            if matches!(verb, 'v' | 'g' | 'G' | 'x') {
                digits = prec;
                if digits == -1 {
                    digits = 6;
                }
            }
            let mut tail: Vec<u8> = Vec::new();
            let mut has_point = false;
            let mut saw_nonzero = false;
            let mut i = 1;
            while i < num.len() {
                match num[i] {
                    b'.' => has_point = true,
                    b'p' | b'P' => {
                        tail.extend_from_slice(&num[i..]);
                        num.truncate(i);
                        break;
                    }
                    b'e' | b'E' if verb != 'x' && verb != 'X' => {
                        tail.extend_from_slice(&num[i..]);
                        num.truncate(i);
                        break;
                    }
                    c => {
                        if c != b'0' {
                            saw_nonzero = true;
                        }
                        if saw_nonzero {
                            digits -= 1;
                        }
                    }
                }
                i += 1;
            }
            if !has_point {
                if num.len() == 2 && num[1] == b'0' {
                    digits -= 1;
                }
                num.push(b'.');
            }
            while digits > 0 {
                num.push(b'0');
                digits -= 1;
            }
            num.extend_from_slice(&tail);
        }
        let s = String::from_utf8(num).unwrap_or_default();
        if self.f.plus || !s.starts_with('+') {
            let len = s.len() as i64;
            if self.f.zero && !self.f.minus && self.f.wid_present && self.f.wid > len {
                self.buf.push_str(&s[..1]);
                self.write_padding(self.f.wid - len);
                self.buf.push_str(&s[1..]);
                return;
            }
            self.pad(&s);
            return;
        }
        self.pad(&s[1..]);
    }
}

/// Decimal digits of a float (no sign) and the decimal point's position: the value is
/// `0.d[0]d[1]... * 10^dp`. No trailing zeros; zero has no digits.
struct Digits {
    d: Vec<u8>,
    dp: i64,
}

/// Parses Rust's `{:e}` form (`1.2345e-7`) into digits.
fn digits_from_exp(s: &str) -> Digits {
    let (mant, exp) = s.split_once('e').unwrap_or((s, "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let mut d: Vec<u8> = mant.bytes().filter(u8::is_ascii_digit).collect();
    while d.last() == Some(&b'0') {
        d.pop();
    }
    if d.is_empty() {
        return Digits { d, dp: 0 };
    }
    Digits { d, dp: exp + 1 }
}

/// The shortest digits that read back as `v` (`v` not negative).
fn shortest(v: f64) -> Digits {
    digits_from_exp(&format!("{v:e}"))
}

/// `v` rounded to `n` (at least 1) significant digits, ties to even on the exact value.
fn significant(v: f64, n: i64) -> Digits {
    let n = n.max(1) as usize;
    digits_from_exp(&format!("{:.*e}", n - 1, v))
}

/// `strconv.FormatFloat(v, fmt, prec, 64)`.
fn format_float(v: f64, fmt: u8, prec: i64) -> String {
    let neg = v.is_sign_negative();
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if neg { "-Inf" } else { "+Inf" }.into();
    }
    let bits = v.to_bits();
    let mut exp = ((bits >> 52) & 0x7FF) as i64;
    let mut mant = bits & ((1u64 << 52) - 1);
    if exp == 0 {
        exp += 1;
    } else {
        mant |= 1u64 << 52;
    }
    exp -= 1023;
    match fmt {
        b'b' => {
            let e = exp - 52;
            let mut out = String::new();
            if neg {
                out.push('-');
            }
            out.push_str(&mant.to_string());
            out.push('p');
            if e >= 0 {
                out.push('+');
            }
            out.push_str(&e.to_string());
            return out;
        }
        b'x' | b'X' => return fmt_x(prec, fmt, neg, mant, exp),
        _ => {}
    }
    let a = v.abs();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if prec < 0 {
        let digs = shortest(a);
        let nd = digs.d.len() as i64;
        match fmt {
            b'e' | b'E' => fmt_e(&mut out, &digs, nd - 1, fmt),
            b'f' => fmt_f(&mut out, &digs, (nd - digs.dp).max(0)),
            _ => fmt_g(&mut out, &digs, nd, fmt, true),
        }
        return out;
    }
    match fmt {
        b'e' | b'E' => {
            let digs = significant(a, prec + 1);
            fmt_e(&mut out, &digs, prec, fmt);
        }
        b'f' => out.push_str(&format!("{:.*}", prec as usize, a)),
        _ => {
            let p = prec.max(1);
            let digs = significant(a, p);
            fmt_g(&mut out, &digs, p, fmt, false);
        }
    }
    out
}

fn fmt_g(out: &mut String, digs: &Digits, mut prec: i64, fmt: u8, shortest: bool) {
    let nd = digs.d.len() as i64;
    let mut eprec = prec;
    if eprec > nd && nd >= digs.dp {
        eprec = nd;
    }
    if shortest {
        eprec = 6;
    }
    let exp = digs.dp - 1;
    if exp < -4 || exp >= eprec {
        if prec > nd {
            prec = nd;
        }
        fmt_e(out, digs, prec - 1, fmt + b'e' - b'g');
        return;
    }
    if prec > digs.dp {
        prec = nd;
    }
    fmt_f(out, digs, (prec - digs.dp).max(0));
}

fn fmt_e(out: &mut String, digs: &Digits, prec: i64, fmt: u8) {
    let nd = digs.d.len() as i64;
    out.push(if nd == 0 { '0' } else { digs.d[0] as char });
    if prec > 0 {
        out.push('.');
        let mut i = 1;
        let m = nd.min(prec + 1);
        while i < m {
            out.push(digs.d[i as usize] as char);
            i += 1;
        }
        while i <= prec {
            out.push('0');
            i += 1;
        }
    }
    out.push(fmt as char);
    let mut exp = digs.dp - 1;
    if nd == 0 {
        exp = 0;
    }
    if exp < 0 {
        out.push('-');
        exp = -exp;
    } else {
        out.push('+');
    }
    if exp < 10 {
        out.push('0');
    }
    out.push_str(&exp.to_string());
}

fn fmt_f(out: &mut String, digs: &Digits, prec: i64) {
    let nd = digs.d.len() as i64;
    if digs.dp > 0 {
        let m = nd.min(digs.dp);
        for i in 0..m {
            out.push(digs.d[i as usize] as char);
        }
        for _ in m..digs.dp {
            out.push('0');
        }
    } else {
        out.push('0');
    }
    if prec > 0 {
        out.push('.');
        for i in 1..=prec {
            let j = digs.dp + i - 1;
            out.push(if 0 <= j && j < nd {
                digs.d[j as usize] as char
            } else {
                '0'
            });
        }
    }
}

/// strconv's `%x` of a float64: `mant` with its leading bit at 2^52 (or a denormal), `exp` the
/// power of two of that bit.
fn fmt_x(prec: i64, fmt: u8, neg: bool, mut mant: u64, mut exp: i64) -> String {
    if mant == 0 {
        exp = 0;
    }
    mant <<= 60 - 52;
    while mant != 0 && mant & (1 << 60) == 0 {
        mant <<= 1;
        exp -= 1;
    }
    if (0..15).contains(&prec) {
        let shift = (prec * 4) as u32;
        let extra = (mant << shift) & ((1u64 << 60) - 1);
        mant >>= 60 - shift;
        if extra | (mant & 1) > 1 << 59 {
            mant += 1;
        }
        mant <<= 60 - shift;
        if mant & (1 << 61) != 0 {
            mant >>= 1;
            exp += 1;
        }
    }
    let hex = if fmt == b'X' { UDIGITS } else { LDIGITS };
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    out.push('0');
    out.push(fmt as char);
    out.push((b'0' + ((mant >> 60) & 1) as u8) as char);
    mant <<= 4;
    if prec < 0 && mant != 0 {
        out.push('.');
        while mant != 0 {
            out.push(hex[((mant >> 60) & 15) as usize] as char);
            mant <<= 4;
        }
    } else if prec > 0 {
        out.push('.');
        for _ in 0..prec {
            out.push(hex[((mant >> 60) & 15) as usize] as char);
            mant <<= 4;
        }
    }
    out.push(if fmt == b'X' { 'P' } else { 'p' });
    if exp < 0 {
        out.push('-');
        exp = -exp;
    } else {
        out.push('+');
    }
    if exp < 10 {
        out.push('0');
    }
    out.push_str(&exp.to_string());
    out
}
