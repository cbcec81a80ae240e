//! The cases that motivated the crate, and the bounds.

use core::cmp::Ordering;
use gantry_opa_number::{Decimal, NumberError};

fn d(s: &str) -> Decimal {
    Decimal::parse(s).unwrap()
}

#[test]
fn point_one_plus_point_seven_reaches_point_eight() {
    let s = Decimal::opa_add(&d("0.1"), &d("0.7")).unwrap();
    assert_eq!(s.to_go_text(), "0.8");
    assert_ne!(s.cmp(&d("0.8")), Ordering::Less);
}

#[test]
fn floor_of_435_hundredths() {
    let p = Decimal::opa_mul(&d("4.35"), &d("100")).unwrap();
    assert_eq!(p.opa_floor(), d("435"));
}

#[test]
fn one_plus_tiny_is_greater_than_one() {
    assert_eq!(d("1.0000000000000001").cmp(&d("1")), Ordering::Greater);
}

#[test]
fn divide_by_zero_errors() {
    for z in ["0", "0.0", "-0", "0e5"] {
        assert_eq!(
            Decimal::opa_div(&d("1"), &d(z)),
            Err(NumberError::DivideByZero)
        );
        assert_eq!(
            Decimal::opa_div(&d("1.5"), &d(z)),
            Err(NumberError::DivideByZero)
        );
    }
    assert_eq!(NumberError::DivideByZero.to_string(), "divide by zero");
    assert_eq!(
        Decimal::opa_rem(&d("7"), &d("0")),
        Err(NumberError::ModuloByZero)
    );
    assert_eq!(
        Decimal::opa_rem(&d("7.5"), &d("2")),
        Err(NumberError::ModuloOnFloat)
    );
}

#[test]
fn bounds_refuse_huge_text() {
    assert_eq!(Decimal::parse("1e1000000"), Err(NumberError::OutOfRange));
    assert_eq!(Decimal::parse("1e-1000000"), Err(NumberError::OutOfRange));
    assert_eq!(Decimal::parse("1e10001"), Err(NumberError::OutOfRange));
    assert_eq!(
        Decimal::parse("1e99999999999999999999999"),
        Err(NumberError::OutOfRange)
    );
    let long = "7".repeat(2000);
    assert_eq!(Decimal::parse(&long), Err(NumberError::OutOfRange));
    // Trailing zeros are not significant digits.
    assert!(Decimal::parse(&format!("1{}", "0".repeat(5000))).is_ok());
    assert_eq!(Decimal::parse("0e99999999"), Ok(d("0")));
}

#[test]
fn syntax() {
    for bad in [
        "", "-", ".", "e5", "1e", "1e+", "0x10", "inf", "NaN", "1_000", "1.2.3", " 1", "--1",
    ] {
        assert_eq!(Decimal::parse(bad), Err(NumberError::Syntax), "{bad:?}");
    }
    assert_eq!(d(".5"), d("0.5"));
    assert_eq!(d("5."), d("5"));
    assert_eq!(d("+3"), d("3"));
    assert_eq!(d("1.50E+1"), d("15"));
}

#[test]
fn huge_operands_stay_bounded() {
    let big = d("1e10000");
    assert_eq!(Decimal::opa_mul(&big, &big), Err(NumberError::OutOfRange));
    let s = Decimal::opa_add(&big, &d("1")).unwrap();
    assert!(s.is_integer() && s.cmp(&big) == Ordering::Greater);
    let f = Decimal::opa_add(&big, &d("0.5")).unwrap();
    // The float path: 10^10000 rounded to 64 bits, read back in shortest digits (the 0.5 is lost).
    assert_eq!(f, big);
    assert_eq!(
        Decimal::opa_mul(&d("1e-10000"), &d("1e-10000")),
        Err(NumberError::OutOfRange)
    );
    assert_eq!(d("1e10000").cmp(&d("9e9999")), Ordering::Greater);
    assert_eq!(d("1e-10000").cmp(&d("-1e10000")), Ordering::Greater);
    assert!(d("1e10000").to_f64().is_infinite());
    assert!(Decimal::opa_product(&[big.clone(), big.clone()]).is_err());
}

#[test]
fn f64_round_trips() {
    for f in [
        0.1,
        1e21,
        1e-7,
        5e-324,
        1.7976931348623157e308,
        -2.5,
        0.0,
        123456789.125,
    ] {
        let v = Decimal::from_f64(f).unwrap();
        assert_eq!(v.to_f64(), f);
    }
    assert_eq!(Decimal::from_f64(0.1).unwrap(), d("0.1"));
    assert_eq!(Decimal::from_f64(f64::NAN), None);
    assert_eq!(d("1.0000000000000001").to_f64(), 1.0);
}

#[test]
fn go_text_layout() {
    assert_eq!(d("0.00001").to_go_text(), "1e-05");
    assert_eq!(d("0.0001").to_go_text(), "0.0001");
    assert_eq!(d("1234567.5").to_go_text(), "1.2345675e+06");
    assert_eq!(d("123456.5").to_go_text(), "123456.5");
    assert_eq!(d("1e6").to_go_text(), "1000000");
    assert_eq!(d("0.10").to_go_text(), "0.1");
    assert_eq!(d("-0").to_go_text(), "0");
}

#[test]
fn opa_quirks_followed() {
    // arithCeil/arithFloor test the sign of the truncated integer, which is 0 here.
    assert_eq!(d("-0.5").opa_ceil(), d("1"));
    assert_eq!(d("-0.5").opa_floor(), d("0"));
    assert_eq!(d("-1.5").opa_floor(), d("-2"));
    // Non-int32 values go through a 64-bit float in abs/round.
    assert_eq!(
        d("123456789012345678901234567890").opa_abs().to_go_text(),
        "123456789012345678900000000000"
    );
}
