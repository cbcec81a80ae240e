use super::*;

/// Found by a review against OPA's sources: `to_number("4 ")` was 4 (JSON's reading, padding
/// allowed), so `to_number(input.gpus) <= 8` allowed what OPA refuses; Go's forms regorus
/// refused (`+1`, `.5`, `1.`, `007`) read as Go reads them.
#[test]
fn to_number_reads_strings_as_go_does() {
    for (text, json) in [
        ("4", "4"),
        ("+1", "1"),
        ("-0.5", "-0.5"),
        (".5", "0.5"),
        ("1.", "1"),
        ("00012", "12"),
        ("+.5e1", "0.5e1"),
        ("1E-3", "1e-3"),
    ] {
        assert_eq!(go_decimal(text).as_deref(), Some(json), "{text}");
    }
    for bad in [
        "4 ", " 1", "\t1", "\n1", "", "+", ".", "1e", "1e+", "0x1p4", "1_000", "inf", "NaN",
        "1.2.3", "--1",
    ] {
        assert_eq!(go_decimal(bad), None, "{bad:?}");
    }
}

/// Found by a review: `net.cidr_contains("10.0.0.0/8", "::ffff:10.1.2.3")` was false (OPA: true,
/// Go compares an IPv4-mapped address as IPv4), so a deny-list of networks let it through.
#[test]
fn cidr_contains_compares_ipv4_mapped_addresses_as_ipv4() {
    let yes = |a: &str, b: &str| cidr_contains(a, b).unwrap();
    assert!(yes("10.0.0.0/8", "10.1.2.3"));
    assert!(yes("10.0.0.0/8", "::ffff:10.1.2.3"));
    assert!(yes("::ffff:10.0.0.0/104", "10.1.2.3"));
    assert!(yes("10.0.0.0/8", "10.1.0.0/16"));
    assert!(
        !yes("10.0.0.0/16", "10.0.0.0/8"),
        "a wider network is not within"
    );
    assert!(!yes("10.0.0.0/8", "11.0.0.1"));
    assert!(yes("0.0.0.0/0", "192.168.1.1"));
    assert!(yes("2001:db8::/32", "2001:db8:1::1"));
    assert!(!yes("2001:db8::/32", "10.1.2.3"));
    assert!(yes("10.1.2.3/32", "10.1.2.3"));
    for (a, b) in [
        ("10.0.0.0", "10.0.0.1"),
        ("10.0.0.0/33", "10.0.0.1"),
        ("10.0.0.0/8", "10.0.0"),
        ("10.0.0.0/x", "10.0.0.1"),
        ("10.0.0.0/8", "010.0.0.1"),
    ] {
        assert!(cidr_contains(a, b).is_err(), "{a} {b}");
    }
}

/// Found by a review: `strings.count("aaaa", "aa")` was 3 (overlapping); Go's is 2.
#[test]
fn strings_count_counts_matches_that_do_not_overlap() {
    assert_eq!(go_count("aaaa", "aa"), 2);
    assert_eq!(go_count("cheese", "e"), 3);
    assert_eq!(go_count("five", ""), 5);
    assert_eq!(go_count("héé", "é"), 2);
}

/// Found by a review: `yaml.unmarshal("privileged: yes")` gave the string `yes` (YAML 1.2) where
/// OPA (go-yaml v2, YAML 1.1) gives `true`, so `not doc.privileged == true` allowed it. A plain
/// scalar the two read differently is an error until the engine reads YAML 1.1.
#[test]
fn yaml_scalars_yaml_1_1_reads_otherwise_are_refused() {
    for ambiguous in [
        "privileged: yes",
        "a: on",
        "- NO",
        "[y, 1]",
        "{k: Off}",
        "mode: 017",
        "count: 1_000",
        "t: 12:30",
        "b: 0b101",
        "o: 0o17",
        "yes: 1",
    ] {
        assert!(yaml_11_ambiguous(ambiguous).is_some(), "{ambiguous}");
    }
    for plain in [
        "privileged: true",
        "privileged: \"yes\"",
        "a: 'on'",
        "count: 1000",
        "x: 0",
        "h: 0x1F",
        "f: 1.5",
        "t: \"12:30\"",
        "name: nobody",
        "url: http://x",
        "k: -1",
    ] {
        assert_eq!(yaml_11_ambiguous(plain), None, "{plain}");
    }
}

/// Found by a review: `lower("ADMİN")` was `"admi̇n"` (Rust's full mapping: `İ` became `i` and a
/// combining dot), so `lower(input.user) in {"admin"}` did not fire where OPA's (Go's
/// `strings.ToLower`) does; `upper("ﬆaff")` was `"STAFF"` where Go keeps the ligature.
#[test]
fn case_mappings_are_gos_simple_ones() {
    let lower = |s: &str| s.chars().map(simple_lower).collect::<String>();
    let upper = |s: &str| s.chars().map(simple_upper).collect::<String>();
    assert_eq!(lower("ADMİN"), "admin");
    assert_eq!(
        lower("ΣΑΣ"),
        "σασ",
        "no final sigma: Go maps each letter alone"
    );
    assert_eq!(upper("ﬆaff"), "ﬆAFF");
    assert_eq!(upper("straße"), "STRAßE");
    assert_eq!(upper("ᾳ"), "ᾼ");
    assert_eq!(upper("héllo"), "HÉLLO");
    assert_eq!(lower("Kelvin K"), "kelvin k");
}

/// Found by a reading: `to_number("0e2147483647")` is finite (0), and regorus's reader built
/// `10^2147483647` for it, past the memory cap. A zero mantissa is 0, and the value of any other
/// finite text is bounded by its length.
#[test]
fn a_zero_with_a_huge_exponent_is_zero() {
    for zero in ["0e2147483647", "-0.0e+2000000000", "0.000e-99999999"] {
        assert_eq!(exact_number(zero), Some(Value::from(0u64)), "{zero}");
    }
    assert_eq!(exact_number("1e3"), Some(Value::from(1000u64)));
}
