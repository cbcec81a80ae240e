//! Outputs pinned from Go's `fmt` (its documentation and test table, `fmt_test.go`) for the
//! operand types OPA passes (`int64`, `*big.Int`, `float64`, `string`), and OPA's `sprintf`.

// Go's own cases format 3.14 and 3.14159, which are not meant as pi.
#![allow(clippy::approx_constant)]

use super::*;

fn num(s: &str) -> Value {
    Value::from_numeric_string(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn json(s: &str) -> Value {
    Value::from_json_str(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn st(s: &str) -> Value {
    Value::from(s)
}

/// Go's `fmt.Sprintf` on Go operands.
fn go(format: &str, args: &[Arg]) -> String {
    let mut p = Printer::default();
    p.do_printf(format, args);
    p.buf
}

fn s(v: &str) -> Arg {
    Arg::Str(v.to_string())
}

fn check(cases: &[(&str, Vec<Value>, &str)]) {
    for (format, args, want) in cases {
        assert_eq!(sprintf(format, args), *want, "{format:?} {args:?}");
    }
}

fn check_go(cases: &[(&str, Vec<Arg>, &str)]) {
    for (format, args, want) in cases {
        assert_eq!(go(format, args), *want, "{format:?} {args:?}");
    }
}

/// Found by a review against OPA's sources: regorus's `sprintf` ignored width and precision
/// (`sprintf("%.3s", ["admin-42"]) == "adm"` did not fire where OPA's does), and several verbs
/// and Go's error markers differed.
#[test]
fn sprintf_reads_widths_precisions_and_verbs_as_gos_fmt() {
    check(&[
        ("%.3s", vec![st("admin-42")], "adm"),
        ("%10s|", vec![st("abc")], "       abc|"),
        ("%-4s|", vec![st("ab")], "ab  |"),
        ("%o", vec![num("8")], "10"),
        ("%x", vec![st("xyz")], "78797a"),
        ("%[2]v %[1]v", vec![st("a"), st("b")], "b a"),
        ("%.1f", vec![num("0.25")], "0.2"),
        ("%.1f", vec![num("0.35")], "0.3"),
        ("%.1f", vec![num("0.05")], "0.1"),
        ("%d", vec![num("1.5")], "%!d(float64=1.5)"),
        ("%d %d", vec![num("1")], "1 %!d(MISSING)"),
        ("%d", vec![num("1"), st("x")], "1%!(EXTRA string=x)"),
        (
            "hi",
            vec![st("x"), num("2")],
            "hi%!(EXTRA string=x, int64=2)",
        ),
    ]);
}

#[test]
fn strings() {
    check_go(&[
        ("%s", vec![s("abc")], "abc"),
        ("%v", vec![s("abc")], "abc"),
        ("%5s", vec![s("abc")], "  abc"),
        ("%-5s|", vec![s("abc")], "abc  |"),
        ("%05s", vec![s("abc")], "00abc"),
        ("%-05s|", vec![s("abc")], "abc  |"),
        ("%.0s", vec![s("abc")], ""),
        ("%.5s", vec![s("abc")], "abc"),
        ("%5.1s", vec![s("abc")], "    a"),
        ("%5s", vec![s("日本語")], "  日本語"),
        ("%.2s", vec![s("日本語日本語")], "日本"),
        ("%X", vec![s("xyz")], "78797A"),
        ("% x", vec![s("xyz")], "78 79 7a"),
        ("%#x", vec![s("xyz")], "0x78797a"),
        ("%# x", vec![s("xyz")], "0x78 0x79 0x7a"),
        ("%# X", vec![s("xyz")], "0X78 0X79 0X7A"),
        ("%.1x", vec![s("xyz")], "78"),
        ("%8x|", vec![s("xyz")], "  78797a|"),
        ("%-8x|", vec![s("xyz")], "78797a  |"),
        ("%x", vec![s("")], ""),
        ("%4x|", vec![s("")], "    |"),
        ("%x", vec![s("日")], "e697a5"),
        ("%q", vec![s("abc")], r#""abc""#),
        ("%q", vec![s("\"")], r#""\"""#),
        ("%#q", vec![s("abc")], "`abc`"),
        ("%#q", vec![s("`")], r#""`""#),
        ("%q", vec![s("\n\t\x07\x00")], r#""\n\t\a\x00""#),
        ("%q", vec![s("日本語")], r#""日本語""#),
        ("%+q", vec![s("日本語")], r#""\u65e5\u672c\u8a9e""#),
        ("%#+q", vec![s("日本語")], "`日本語`"),
        ("%q", vec![s("\u{200b}")], r#""\u200b""#),
        ("%+q", vec![s("\u{1F600}")], r#""\U0001f600""#),
        ("%10q", vec![s("abc")], r#"     "abc""#),
        ("%-10q|", vec![s("abc")], r#""abc"     |"#),
        ("%08q", vec![s("abc")], r#"000"abc""#),
        ("%.2q", vec![s("abc")], r#""ab""#),
        ("%d", vec![s("x")], "%!d(string=x)"),
        ("%o", vec![s("x")], "%!o(string=x)"),
        ("%c", vec![s("x")], "%!c(string=x)"),
        ("%t", vec![s("true")], "%!t(string=true)"),
        ("%6d", vec![s("x")], "%!d(string=     x)"),
        ("%T", vec![s("x")], "string"),
        ("%p", vec![s("x")], "%!p(string=x)"),
    ]);
}

#[test]
fn integers() {
    let i = Arg::Int;
    check_go(&[
        ("%d", vec![i(12345)], "12345"),
        ("%v", vec![i(-12345)], "-12345"),
        ("%+d", vec![i(12345)], "+12345"),
        ("%+d", vec![i(-12345)], "-12345"),
        ("% d", vec![i(12345)], " 12345"),
        ("%+v", vec![i(12345)], "12345"),
        ("%8d", vec![i(12345)], "   12345"),
        ("%-8d|", vec![i(12345)], "12345   |"),
        ("%08d", vec![i(12345)], "00012345"),
        ("%08d", vec![i(-12345)], "-0012345"),
        ("%+08d", vec![i(12345)], "+0012345"),
        ("%-08d|", vec![i(-12345)], "-12345  |"),
        ("%.8d", vec![i(-12345)], "-00012345"),
        ("%010.3d", vec![i(-1)], "      -001"),
        ("%+.3d", vec![i(0)], "+000"),
        ("%.0d", vec![i(0)], ""),
        ("%5.0d|", vec![i(0)], "     |"),
        ("%.0d", vec![i(7)], "7"),
        ("%b", vec![i(5)], "101"),
        ("%#b", vec![i(5)], "0b101"),
        ("%b", vec![i(-5)], "-101"),
        ("%o", vec![i(8)], "10"),
        ("%#o", vec![i(8)], "010"),
        ("%#o", vec![i(0)], "0"),
        ("%O", vec![i(8)], "0o10"),
        ("%O", vec![i(-8)], "-0o10"),
        ("%x", vec![i(255)], "ff"),
        ("%X", vec![i(255)], "FF"),
        ("%#x", vec![i(255)], "0xff"),
        ("%#X", vec![i(255)], "0XFF"),
        ("%x", vec![i(-255)], "-ff"),
        ("%#08x", vec![i(255)], "0x000000ff"),
        ("%x", vec![i(i64::MIN)], "-8000000000000000"),
        ("%d", vec![i(i64::MIN)], "-9223372036854775808"),
        ("%c", vec![i(65)], "A"),
        ("%c", vec![i(0x65e5)], "日"),
        ("%3c|", vec![i(0x65e5)], "  日|"),
        ("%c", vec![i(0x110000)], "\u{FFFD}"),
        ("%c", vec![i(-1)], "\u{FFFD}"),
        ("%q", vec![i(65)], "'A'"),
        ("%q", vec![i(0x65e5)], "'日'"),
        ("%+q", vec![i(0x65e5)], r"'\u65e5'"),
        ("%q", vec![i(39)], r"'\''"),
        ("%q", vec![i(34)], "'\"'"),
        ("%q", vec![i(10)], r"'\n'"),
        ("%U", vec![i(65)], "U+0041"),
        ("%U", vec![i(0x1F600)], "U+1F600"),
        ("%#U", vec![i(0x65e5)], "U+65E5 '日'"),
        ("%#U", vec![i(10)], "U+000A"),
        ("%.6U", vec![i(65)], "U+000041"),
        ("%U", vec![i(-1)], "U+FFFFFFFFFFFFFFFF"),
        ("%s", vec![i(5)], "%!s(int64=5)"),
        ("%e", vec![i(5)], "%!e(int64=5)"),
        ("%5s", vec![i(5)], "%!s(int64=    5)"),
        ("%T", vec![i(5)], "int64"),
        ("%p", vec![i(5)], "%!p(int64=5)"),
    ]);
}

#[test]
fn big_integers() {
    let b = || num("12345678901234567890");
    let nb = || num("-12345678901234567890");
    check(&[
        ("%d", vec![b()], "12345678901234567890"),
        ("%v", vec![b()], "12345678901234567890"),
        ("%s", vec![b()], "12345678901234567890"),
        ("%d", vec![nb()], "-12345678901234567890"),
        ("%x", vec![b()], "ab54a98ceb1f0ad2"),
        ("%X", vec![b()], "AB54A98CEB1F0AD2"),
        ("%#x", vec![b()], "0xab54a98ceb1f0ad2"),
        ("%#X", vec![nb()], "-0XAB54A98CEB1F0AD2"),
        ("%o", vec![b()], "1255245230635307605322"),
        ("%O", vec![b()], "0o1255245230635307605322"),
        (
            "%b",
            vec![b()],
            "1010101101010100101010011000110011101011000111110000101011010010",
        ),
        ("%+d", vec![b()], "+12345678901234567890"),
        ("%+v", vec![b()], "+12345678901234567890"),
        ("% d", vec![b()], " 12345678901234567890"),
        ("%24d|", vec![b()], "    12345678901234567890|"),
        ("%-24d|", vec![b()], "12345678901234567890    |"),
        ("%024d", vec![nb()], "-00012345678901234567890"),
        ("%.22d", vec![b()], "0012345678901234567890"),
        ("%q", vec![b()], "%!q(big.Int=12345678901234567890)"),
        ("%e", vec![nb()], "%!e(big.Int=-12345678901234567890)"),
        ("%T", vec![b()], "*big.Int"),
        (
            "%d",
            vec![num("9223372036854775807")],
            "9223372036854775807",
        ),
        ("%T", vec![num("9223372036854775807")], "int64"),
        ("%T", vec![num("9223372036854775808")], "*big.Int"),
        (
            "%v",
            vec![b(), b()],
            "12345678901234567890%!(EXTRA *big.Int=12345678901234567890)",
        ),
    ]);
}

#[test]
fn floats() {
    let f = Arg::Float;
    check_go(&[
        ("%v", vec![f(1.5)], "1.5"),
        ("%v", vec![f(1.0)], "1"),
        ("%v", vec![f(100000.0)], "100000"),
        ("%v", vec![f(1e6)], "1e+06"),
        ("%v", vec![f(1e21)], "1e+21"),
        ("%v", vec![f(123456789.0)], "1.23456789e+08"),
        ("%v", vec![f(0.0001)], "0.0001"),
        ("%v", vec![f(0.00001)], "1e-05"),
        ("%v", vec![f(0.1 + 0.2)], "0.30000000000000004"),
        ("%v", vec![f(-2.5)], "-2.5"),
        ("%+v", vec![f(2.5)], "2.5"),
        ("%g", vec![f(1234.5678e3)], "1.2345678e+06"),
        ("%G", vec![f(1e-10)], "1E-10"),
        ("%e", vec![f(1.0)], "1.000000e+00"),
        ("%e", vec![f(1234.5678e3)], "1.234568e+06"),
        ("%E", vec![f(1234.5678e3)], "1.234568E+06"),
        ("%e", vec![f(1e-100)], "1.000000e-100"),
        ("%e", vec![f(0.0)], "0.000000e+00"),
        ("%.3e", vec![f(1234.5678)], "1.235e+03"),
        ("%.0e", vec![f(2.5)], "2e+00"),
        ("%.0e", vec![f(3.5)], "4e+00"),
        ("%f", vec![f(1234.5678e3)], "1234567.800000"),
        ("%F", vec![f(1.5)], "1.500000"),
        ("%.2f", vec![f(1.0)], "1.00"),
        ("%.2f", vec![f(-1.0)], "-1.00"),
        ("% .2f", vec![f(1.0)], " 1.00"),
        ("%+.2f", vec![f(1.0)], "+1.00"),
        ("%07.2f", vec![f(1.0)], "0001.00"),
        ("%07.2f", vec![f(-1.0)], "-001.00"),
        ("%+07.2f", vec![f(1.0)], "+001.00"),
        ("%-07.2f|", vec![f(1.0)], "1.00   |"),
        ("%+-07.2f|", vec![f(-1.0)], "-1.00  |"),
        ("%+10.2f", vec![f(1.0)], "     +1.00"),
        ("%5.2f", vec![f(3.14159)], " 3.14"),
        ("%08.3f", vec![f(-3.14159)], "-003.142"),
        ("%.0f", vec![f(0.5)], "0"),
        ("%.0f", vec![f(1.5)], "2"),
        ("%.0f", vec![f(2.5)], "2"),
        ("%.2f", vec![f(1.005)], "1.00"),
        ("%.2f", vec![f(0.125)], "0.12"),
        ("%.2f", vec![f(0.375)], "0.38"),
        ("%.1f", vec![f(0.45)], "0.5"),
        ("%.3g", vec![f(1234.5678)], "1.23e+03"),
        ("%.3g", vec![f(100.0)], "100"),
        ("%.3g", vec![f(1000.0)], "1e+03"),
        ("%.3g", vec![f(0.0001234)], "0.000123"),
        ("%.0g", vec![f(2.5)], "2"),
        ("%.5g", vec![f(1.5)], "1.5"),
        ("%#g", vec![f(1.0)], "1.00000"),
        ("%#g", vec![f(123456.0)], "123456."),
        ("%#g", vec![f(1230000.0)], "1.23000e+06"),
        ("%#.4g", vec![f(1.0)], "1.000"),
        ("%#.0f", vec![f(1.0)], "1."),
        ("%#.0e", vec![f(1.0)], "1.e+00"),
        ("%#v", vec![f(1.0)], "1"),
        ("%x", vec![f(1.0)], "0x1p+00"),
        ("%X", vec![f(1.0)], "0X1P+00"),
        ("%x", vec![f(1.5)], "0x1.8p+00"),
        ("%x", vec![f(3.14)], "0x1.91eb851eb851fp+01"),
        ("%.1x", vec![f(3.14)], "0x1.9p+01"),
        ("%.0x", vec![f(1.5)], "0x1p+01"),
        ("%x", vec![f(-0.125)], "-0x1p-03"),
        ("%#.3x", vec![f(1.0)], "0x1.000p+00"),
        ("%b", vec![f(1.0)], "4503599627370496p-52"),
        ("%b", vec![f(0.0)], "0p-1074"),
        ("%d", vec![f(1.5)], "%!d(float64=1.5)"),
        ("%s", vec![f(1.5)], "%!s(float64=1.5)"),
        ("%+d", vec![f(1.5)], "%!d(float64=+1.5)"),
        ("%T", vec![f(1.5)], "float64"),
    ]);
}

#[test]
fn arguments() {
    let i = Arg::Int;
    check_go(&[
        ("%d", vec![], "%!d(MISSING)"),
        ("%", vec![], "%!(NOVERB)"),
        ("%-", vec![i(1)], "%!(NOVERB)%!(EXTRA int64=1)"),
        ("%!", vec![], "%!!(MISSING)"),
        ("%%", vec![], "%"),
        ("%5%", vec![], "%"),
        ("100%% %d", vec![i(3)], "100% 3"),
        ("%d%d", vec![i(1), i(2)], "12"),
        ("%[1]d %[1]d", vec![i(5)], "5 5"),
        ("%[2]d %d", vec![i(1), i(2)], "2 %!d(MISSING)"),
        ("%[1]d", vec![i(1), i(2)], "1"),
        ("%[3]d", vec![i(1), i(2)], "%!d(BADINDEX)"),
        ("%[0]d", vec![i(1)], "%!d(BADINDEX)"),
        ("%[-3]d", vec![i(1)], "%!d(BADINDEX)"),
        ("%[x]d", vec![i(1)], "%!d(BADINDEX)"),
        ("%[d", vec![i(2), i(1)], "%!d(BADINDEX)"),
        ("%]d", vec![i(2), i(1)], "%!](int64=2)d%!(EXTRA int64=1)"),
        ("%[3]", vec![i(1), i(2), i(3)], "%!(NOVERB)"),
        ("%.[2]d", vec![i(7)], "%!d(BADINDEX)"),
        ("%[2]*[1]d", vec![i(2), i(5)], "    2"),
        (
            "%[3]*.[2]*[1]f",
            vec![Arg::Float(12.0), i(2), i(6)],
            " 12.00",
        ),
        (
            "%d %d %d %#[1]o %#o %#o",
            vec![i(11), i(12), i(13)],
            "11 12 13 013 014 015",
        ),
        ("%*d", vec![i(5), i(42)], "   42"),
        ("%-*d|", vec![i(5), i(42)], "42   |"),
        ("%*d|", vec![i(-5), i(42)], "42   |"),
        ("%0*d", vec![i(-5), i(42)], "42   "),
        ("%.*d", vec![i(3), i(7)], "007"),
        ("%*d", vec![s("x"), i(42)], "%!(BADWIDTH)42"),
        ("%*d", vec![Arg::Float(1.5), i(42)], "%!(BADWIDTH)42"),
        ("%*d", vec![i(10_000_000), i(42)], "%!(BADWIDTH)42"),
        ("%.*d", vec![i(-1), i(42)], "%!(BADPREC)42"),
        ("%.*d", vec![s("x"), i(42)], "%!(BADPREC)42"),
        ("%*d", vec![i(5)], "%!d(MISSING)"),
        ("%.d", vec![i(0)], ""),
        ("%.", vec![i(1)], "%!(NOVERB)%!(EXTRA int64=1)"),
        ("%ü", vec![i(1)], "%!ü(int64=1)"),
        ("no verbs", vec![], "no verbs"),
    ]);
}

#[test]
fn rego_terms() {
    let mut set = Value::new_set();
    set.as_set_mut().unwrap().insert(num("2"));
    set.as_set_mut().unwrap().insert(st("a"));
    set.as_set_mut().unwrap().insert(num("1"));
    check(&[
        (
            "%v",
            vec![json(r#"[1, "a", null, true]"#)],
            r#"[1, "a", null, true]"#,
        ),
        (
            "%v",
            vec![json(r#"{"b": 1, "a": [2.5]}"#)],
            r#"{"a": [2.5], "b": 1}"#,
        ),
        ("%v", vec![Value::new_set()], "set()"),
        ("%v", vec![set], r#"{1, 2, "a"}"#),
        ("%s", vec![Value::from(true)], "true"),
        ("%v", vec![Value::Null], "null"),
        ("%d", vec![json("[1]")], "%!d(string=[1])"),
        ("%q", vec![json(r#"["a"]"#)], r#""[\"a\"]""#),
        ("%v", vec![json(r#"["a\nb"]"#)], r#"["a\nb"]"#),
        ("%.2s", vec![json("[1, 2]")], "[1"),
        (
            "%d",
            vec![Value::from(false), num("3")],
            "%!d(string=false)%!(EXTRA int64=3)",
        ),
    ]);
}

#[test]
fn numbers_as_opa_passes_them() {
    check(&[
        ("%d", vec![num("42")], "42"),
        ("%d", vec![num("-7")], "-7"),
        ("%v", vec![num("2.5")], "2.5"),
        ("%.2f", vec![num("2")], "%!f(int64=02)"),
        ("%.2f", vec![num("2.5")], "2.50"),
        ("%s", vec![num("0.1")], "%!s(float64=0.1)"),
    ]);
}
