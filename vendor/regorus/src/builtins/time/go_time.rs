// Gantry: Go's `time.Parse` and `Time.Format`, which OPA's `time.parse_ns`,
// `time.parse_rfc3339_ns` and `time.format` call, ported whole from Go's src/time/format.go
// (`nextStdChunk`, `parse`, `appendFormat` and their helpers; Go's license is in compat.rs).
// Formatting was chrono's with Go's layout mapped onto it: `.999` wrote nine digits whatever its
// length and kept trailing zeros, `,000` wrote a point, `MST` wrote an offset where Go writes the
// zone's abbreviation (`UTC`, `EST`). Upstream mapped Go's layout onto chrono's parser, which reads
// another grammar: a layout without a month or a day (`2006`, `Jan 2006`) was refused where Go
// takes January and 1, a weekday that does not match the date was refused where Go ignores it,
// an hour of a 12-hour clock without AM/PM, a fraction after `5`, a `Z` for `Z07`, ... Each
// element here reads exactly what Go's reads, and the errors are Go's words.
//
// Value and layout are read as bytes, as Go reads them: a multi-byte character is never cut in
// a way that could panic, since nothing here slices a `str`.

#![allow(clippy::arithmetic_side_effects, clippy::as_conversions)] // bounded by the checks below

use crate::*;

/// A layout element, as Go's `nextStdChunk` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Std {
    LongMonth,
    Month,
    NumMonth,
    ZeroMonth,
    LongWeekDay,
    WeekDay,
    Day,
    UnderDay,
    ZeroDay,
    UnderYearDay,
    ZeroYearDay,
    Hour,
    Hour12,
    ZeroHour12,
    Minute,
    ZeroMinute,
    Second,
    ZeroSecond,
    LongYear,
    Year,
    Pm,
    LowerPm,
    Tz,
    Iso8601Tz,
    Iso8601SecondsTz,
    Iso8601ShortTz,
    Iso8601ColonTz,
    Iso8601ColonSecondsTz,
    NumTz,
    NumSecondsTz,
    NumShortTz,
    NumColonTz,
    NumColonSecondsTz,
    /// `.000`: exactly this many digits, after this separator (`.` or `,`).
    FracSecond0(usize, u8),
    /// `.999`: when parsing, any digits or none; when formatting, at most this many, trailing
    /// zeros left out.
    FracSecond9(usize, u8),
}

fn at(s: &[u8], i: usize) -> Option<u8> {
    s.get(i).copied()
}

fn from(s: &[u8], i: usize) -> &[u8] {
    s.get(i..).unwrap_or_default()
}

fn is_digit(s: &[u8], i: usize) -> bool {
    at(s, i).is_some_and(|c| c.is_ascii_digit())
}

fn starts_with_lower(s: &[u8]) -> bool {
    at(s, 0).is_some_and(|c| c.is_ascii_lowercase())
}

/// Go's `nextStdChunk`: the text before the first element of `layout`, the element, and what
/// follows it (`None` and the whole layout as text when there is none).
fn next_std_chunk(layout: &[u8]) -> (&[u8], Option<Std>, &[u8]) {
    use Std::*;
    let starts = |i: usize, token: &[u8]| from(layout, i).starts_with(token);
    for (i, &c) in layout.iter().enumerate() {
        let found = |std: Std, len: usize| (&layout[..i], Some(std), from(layout, i + len));
        match c {
            b'J' if starts(i, b"Jan") => {
                if starts(i, b"January") {
                    return found(LongMonth, 7);
                }
                if !starts_with_lower(from(layout, i + 3)) {
                    return found(Month, 3);
                }
            }
            b'M' => {
                if starts(i, b"Mon") {
                    if starts(i, b"Monday") {
                        return found(LongWeekDay, 6);
                    }
                    if !starts_with_lower(from(layout, i + 3)) {
                        return found(WeekDay, 3);
                    }
                }
                if starts(i, b"MST") {
                    return found(Tz, 3);
                }
            }
            b'0' => {
                let zero_x = [ZeroMonth, ZeroDay, ZeroHour12, ZeroMinute, ZeroSecond, Year];
                if let Some(d @ b'1'..=b'6') = at(layout, i + 1) {
                    return found(zero_x[usize::from(d - b'1')], 2);
                }
                if starts(i, b"002") {
                    return found(ZeroYearDay, 3);
                }
            }
            b'1' => {
                if at(layout, i + 1) == Some(b'5') {
                    return found(Hour, 2);
                }
                return found(NumMonth, 1);
            }
            b'2' => {
                if starts(i, b"2006") {
                    return found(LongYear, 4);
                }
                return found(Day, 1);
            }
            b'_' => {
                if at(layout, i + 1) == Some(b'2') {
                    // `_2006` is a literal `_` and a year.
                    if starts(i + 1, b"2006") {
                        return (&layout[..=i], Some(LongYear), from(layout, i + 5));
                    }
                    return found(UnderDay, 2);
                }
                if starts(i, b"__2") {
                    return found(UnderYearDay, 3);
                }
            }
            b'3' => return found(Hour12, 1),
            b'4' => return found(Minute, 1),
            b'5' => return found(Second, 1),
            b'P' if at(layout, i + 1) == Some(b'M') => return found(Pm, 2),
            b'p' if at(layout, i + 1) == Some(b'm') => return found(LowerPm, 2),
            b'-' => {
                for (token, std) in [
                    (&b"-070000"[..], NumSecondsTz),
                    (b"-07:00:00", NumColonSecondsTz),
                    (b"-0700", NumTz),
                    (b"-07:00", NumColonTz),
                    (b"-07", NumShortTz),
                ] {
                    if starts(i, token) {
                        return found(std, token.len());
                    }
                }
            }
            b'Z' => {
                for (token, std) in [
                    (&b"Z070000"[..], Iso8601SecondsTz),
                    (b"Z07:00:00", Iso8601ColonSecondsTz),
                    (b"Z0700", Iso8601Tz),
                    (b"Z07:00", Iso8601ColonTz),
                    (b"Z07", Iso8601ShortTz),
                ] {
                    if starts(i, token) {
                        return found(std, token.len());
                    }
                }
            }
            b'.' | b',' => {
                if let Some(ch @ (b'0' | b'9')) = at(layout, i + 1) {
                    let digits = from(layout, i + 1).iter().take_while(|&&d| d == ch).count();
                    let j = i + 1 + digits;
                    // Only a fractional second if the digits end here.
                    if !is_digit(layout, j) {
                        let std = if ch == b'0' {
                            FracSecond0(digits, c)
                        } else {
                            FracSecond9(digits, c)
                        };
                        return (&layout[..i], Some(std), from(layout, j));
                    }
                }
            }
            _ => {}
        }
    }
    (layout, None, &[])
}

/// Go's `leadingInt`: the leading digits' value (an error past 2^63) and the rest.
pub(super) fn leading_int(s: &[u8]) -> Option<(u64, &[u8])> {
    let mut x: u64 = 0;
    let mut i = 0;
    while let Some(c @ b'0'..=b'9') = at(s, i) {
        if x > (1 << 63) / 10 {
            return None;
        }
        x = x * 10 + u64::from(c - b'0');
        if x > 1 << 63 {
            return None;
        }
        i += 1;
    }
    Some((x, from(s, i)))
}

/// Go's `atoi`: an optional sign, then digits only (none reads as 0, as in Go).
fn atoi(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match at(s, 0) {
        Some(b'-') => (true, from(s, 1)),
        Some(b'+') => (false, from(s, 1)),
        _ => (false, s),
    };
    let (q, rem) = leading_int(digits)?;
    if !rem.is_empty() {
        return None;
    }
    // Go's int(q) of 2^63 wraps; no element here reads more than 10 digits.
    let x = i64::try_from(q).ok()?;
    Some(if neg { -x } else { x })
}

/// Go's `getnum`: one or two digits (`fixed`: exactly two).
fn getnum(s: &[u8], fixed: bool) -> Option<(i64, &[u8])> {
    let d0 = i64::from(at(s, 0).filter(u8::is_ascii_digit)? - b'0');
    match at(s, 1).filter(u8::is_ascii_digit) {
        Some(d1) => Some((d0 * 10 + i64::from(d1 - b'0'), from(s, 2))),
        None if fixed => None,
        None => Some((d0, from(s, 1))),
    }
}

/// Go's `getnum3`: one to three digits (`fixed`: exactly three).
fn getnum3(s: &[u8], fixed: bool) -> Option<(i64, &[u8])> {
    let n = s.iter().take(3).take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || (fixed && n != 3) {
        return None;
    }
    let value = s[..n].iter().fold(0, |v, d| v * 10 + i64::from(d - b'0'));
    Some((value, from(s, n)))
}

/// Go's `skip`: `prefix` off `value`, a run of spaces matching a run of spaces. On a mismatch,
/// the value where it was found.
fn skip<'a>(mut value: &'a [u8], mut prefix: &[u8]) -> Result<&'a [u8], &'a [u8]> {
    fn cut_space(s: &[u8]) -> &[u8] {
        from(s, s.iter().take_while(|&&c| c == b' ').count())
    }
    while let Some(&p) = prefix.first() {
        if p == b' ' {
            if value.first().is_some_and(|&c| c != b' ') {
                return Err(value);
            }
            prefix = cut_space(prefix);
            value = cut_space(value);
            continue;
        }
        if value.first() != Some(&p) {
            return Err(value);
        }
        prefix = &prefix[1..];
        value = &value[1..];
    }
    Ok(value)
}

/// Go's `lookup`: the index of the first name of `table` that `value` starts with, ignoring
/// ASCII case, and the rest.
fn lookup<'a>(table: &[&str], value: &'a [u8]) -> Option<(usize, &'a [u8])> {
    table.iter().enumerate().find_map(|(i, name)| {
        let head = value.get(..name.len())?;
        head.eq_ignore_ascii_case(name.as_bytes())
            .then(|| (i, from(value, name.len())))
    })
}

const SHORT_DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const LONG_DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const SHORT_MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const LONG_MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Go's `parseNanoseconds`: `value` starts with `.` or `,` and `n` bytes hold the fraction
/// (at most nine digits are read); an error, or a range error's element name.
fn parse_nanoseconds(value: &[u8], n: usize) -> Result<i64, Option<&'static str>> {
    if !matches!(at(value, 0), Some(b'.' | b',')) {
        return Err(None);
    }
    let n = n.min(10);
    let ns = atoi(value.get(1..n).unwrap_or_default()).ok_or(None)?;
    if ns < 0 {
        return Err(Some("fractional second"));
    }
    Ok(ns * 10_i64.pow((10 - n) as u32))
}

/// Go's `parseSignedOffset`: a sign and an integer up to 23, its length.
fn parse_signed_offset(value: &[u8]) -> Option<usize> {
    if !matches!(at(value, 0), Some(b'+' | b'-')) {
        return None;
    }
    let (x, rem) = leading_int(from(value, 1))?;
    let digits = value.len() - 1 - rem.len();
    (digits > 0 && x <= 23).then_some(1 + digits)
}

/// Go's `parseTimeZone`: the length of the zone name at the start of `value`.
pub(super) fn parse_time_zone(value: &[u8]) -> Option<usize> {
    if value.len() < 3 {
        return None;
    }
    if value.starts_with(b"ChST") || value.starts_with(b"MeST") {
        return Some(4);
    }
    if value.starts_with(b"GMT") {
        return Some(3 + parse_signed_offset(from(value, 3)).unwrap_or(0));
    }
    if matches!(value[0], b'+' | b'-') {
        return parse_signed_offset(value);
    }
    let upper = value.iter().take(6).take_while(|c| c.is_ascii_uppercase()).count();
    match upper {
        3 => Some(3),
        4 if value[3] == b'T' || value.starts_with(b"WITA") => Some(4),
        5 if value[4] == b'T' => Some(5),
        _ => None,
    }
}

/// Go's `time.quote`: in double quotes, `"` and `\` escaped, every byte of a character that is
/// no printable ASCII as `\xNN`.
fn quote(s: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in s {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    out
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in(month: i64, year: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days before month `month` (1-based) in a year that is not a leap year; 365 for 13.
fn days_before(month: i64) -> i64 {
    (1..month).map(|m| days_in(m, 1)).sum()
}

/// Days from 1970-01-01 to the proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Go's `Time.AddDate` of instant `ns` in a zone whose offset (seconds east) at a Unix second
/// is `offset(second)`: the local date moved by `years`, `months` and `days`, each overflowing
/// into the next (March 31 less a month is March 2), the local clock kept, and that local time
/// read back in the zone as Go's `Date` reads one. `None` outside what an int64 of nanoseconds
/// holds (OPA's range error).
pub fn add_date(
    ns: i64,
    offset: impl Fn(i64) -> Option<i64>,
    years: i64,
    months: i64,
    days: i64,
) -> Option<i64> {
    // Far past the range already; keeps the arithmetic below in an i64.
    const BOUND: u64 = 1 << 40;
    if [years, months, days].iter().any(|v| v.unsigned_abs() > BOUND) {
        return None;
    }
    let (seconds, nanos) = (ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000));
    let local = seconds + offset(seconds)?;
    let (day, clock) = (local.div_euclid(86_400), local.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(day);
    let m0 = m - 1 + months;
    let (y, m) = (y + years + m0.div_euclid(12), m0.rem_euclid(12) + 1);
    let unix = (days_from_civil(y, m, 1) + d - 1 + days)
        .checked_mul(86_400)?
        .checked_add(clock)?;
    // Go's `Date`: the offset at the local time taken as UTC, unless the instant that gives
    // lies past that offset's period, then the offset there. Either way, the offset at it.
    let utc = unix.checked_sub(offset(unix)?)?;
    unix.checked_sub(offset(utc)?)?
        .checked_mul(1_000_000_000)?
        .checked_add(nanos)
}

/// OPA's error for an instant outside `i64` nanoseconds.
pub const OUT_OF_RANGE: &str = "time outside of valid range";

/// `value` read with Go's `layout`, as Go's `time.Parse` in a process whose local zone is UTC
/// (OPA's usual): the instant in nanoseconds since the Unix epoch, or the error Go gives. A
/// zone name other than `UTC` does not move the instant, as Go's (it makes a zone of zero
/// offset, `GMT+3` included); an instant outside `i64` nanoseconds is OPA's range error.
pub fn parse_ns(layout: &str, value: &str) -> Result<i64, String> {
    let (alayout, avalue) = (layout.as_bytes(), value.as_bytes());
    let parse_error = |layout_elem: &[u8], value_elem: &[u8]| {
        format!(
            "parsing time {} as {}: cannot parse {} as {}",
            quote(avalue),
            quote(alayout),
            quote(value_elem),
            quote(layout_elem)
        )
    };
    let message = |m: &str| format!("parsing time {}{m}", quote(avalue));

    let (mut layout, mut value) = (alayout, avalue);
    let (mut am, mut pm) = (false, false);
    let (mut year, mut month, mut day, mut yday) = (0_i64, -1_i64, -1_i64, -1_i64);
    let (mut hour, mut min, mut sec, mut nsec) = (0_i64, 0_i64, 0_i64, 0_i64);
    // `Z` or `UTC` seen; a numeric offset, seconds east.
    let mut utc = false;
    let mut offset: Option<i64> = None;

    loop {
        let (prefix, std, suffix) = next_std_chunk(layout);
        let std_str = &layout[prefix.len()..layout.len() - suffix.len()];
        value = skip(value, prefix).map_err(|at| parse_error(prefix, at))?;
        let Some(std) = std else {
            if !value.is_empty() {
                return Err(message(&format!(": extra text: {}", quote(value))));
            }
            break;
        };
        layout = suffix;
        let hold = value;
        let mut range: Option<&str> = None;
        // Each element: what it reads (`None`: Go's `errBad`), `value` moved past it.
        let ok: Option<()> = (|| {
            use Std::*;
            match std {
                Year => {
                    let p = value.get(..2)?;
                    value = from(value, 2);
                    let y = atoi(p)?;
                    year = if y >= 69 { y + 1900 } else { y + 2000 };
                }
                LongYear => {
                    if !is_digit(value, 0) {
                        return None;
                    }
                    let p = value.get(..4)?;
                    value = from(value, 4);
                    year = atoi(p)?;
                }
                Month | LongMonth => {
                    let table: &[&str] = if std == Month {
                        &SHORT_MONTHS
                    } else {
                        &LONG_MONTHS
                    };
                    let (m, rest) = lookup(table, value)?;
                    (month, value) = (m as i64 + 1, rest);
                }
                NumMonth | ZeroMonth => {
                    (month, value) = getnum(value, std == ZeroMonth)?;
                    if !(1..=12).contains(&month) {
                        range = Some("month");
                    }
                }
                // A weekday is checked for its syntax and otherwise ignored.
                WeekDay => value = lookup(&SHORT_DAYS, value)?.1,
                LongWeekDay => value = lookup(&LONG_DAYS, value)?.1,
                Day | UnderDay | ZeroDay => {
                    if std == UnderDay && at(value, 0) == Some(b' ') {
                        value = from(value, 1);
                    }
                    // Any one or two digits; the date is checked at the end.
                    (day, value) = getnum(value, std == ZeroDay)?;
                }
                UnderYearDay | ZeroYearDay => {
                    for _ in 0..2 {
                        if std == UnderYearDay && at(value, 0) == Some(b' ') {
                            value = from(value, 1);
                        }
                    }
                    (yday, value) = getnum3(value, std == ZeroYearDay)?;
                }
                Hour => {
                    (hour, value) = getnum(value, false)?;
                    if !(0..24).contains(&hour) {
                        range = Some("hour");
                    }
                }
                Hour12 | ZeroHour12 => {
                    (hour, value) = getnum(value, std == ZeroHour12)?;
                    if !(0..=12).contains(&hour) {
                        range = Some("hour");
                    }
                }
                Minute | ZeroMinute => {
                    (min, value) = getnum(value, std == ZeroMinute)?;
                    if !(0..60).contains(&min) {
                        range = Some("minute");
                    }
                }
                Second | ZeroSecond => {
                    (sec, value) = getnum(value, std == ZeroSecond)?;
                    if !(0..60).contains(&sec) {
                        range = Some("second");
                        return Some(());
                    }
                    // A fraction after the seconds where the layout has none next.
                    if matches!(at(value, 0), Some(b'.' | b',')) && is_digit(value, 1) {
                        let next = next_std_chunk(layout).1;
                        if matches!(next, Some(FracSecond0(..) | FracSecond9(..))) {
                            return Some(());
                        }
                        let n = 2 + from(value, 2).iter().take_while(|c| c.is_ascii_digit()).count();
                        let parsed = parse_nanoseconds(value, n);
                        value = from(value, n);
                        match parsed {
                            Ok(ns) => nsec = ns,
                            Err(Some(r)) => range = Some(r),
                            Err(None) => return None,
                        }
                    }
                }
                Pm | LowerPm => {
                    let p = value.get(..2)?;
                    value = from(value, 2);
                    let (am_text, pm_text) = if std == Pm {
                        (b"AM", b"PM")
                    } else {
                        (b"am", b"pm")
                    };
                    if p == pm_text {
                        pm = true;
                    } else if p == am_text {
                        am = true;
                    } else {
                        return None;
                    }
                }
                Iso8601Tz | Iso8601ShortTz | Iso8601ColonTz | Iso8601SecondsTz
                | Iso8601ColonSecondsTz
                    if at(value, 0) == Some(b'Z') =>
                {
                    value = from(value, 1);
                    utc = true;
                }
                Iso8601Tz | Iso8601ShortTz | Iso8601ColonTz | Iso8601SecondsTz
                | Iso8601ColonSecondsTz | NumTz | NumShortTz | NumColonTz | NumSecondsTz
                | NumColonSecondsTz => {
                    // Sign, hours, minutes and seconds, and the length they take.
                    let (hh, mm, ss, len): (&[u8], &[u8], &[u8], usize) = match std {
                        Iso8601ColonTz | NumColonTz => {
                            if value.len() < 6 || value[3] != b':' {
                                return None;
                            }
                            (&value[1..3], &value[4..6], b"00", 6)
                        }
                        Iso8601ShortTz | NumShortTz => {
                            if value.len() < 3 {
                                return None;
                            }
                            (&value[1..3], b"00", b"00", 3)
                        }
                        Iso8601ColonSecondsTz | NumColonSecondsTz => {
                            if value.len() < 9 || value[3] != b':' || value[6] != b':' {
                                return None;
                            }
                            (&value[1..3], &value[4..6], &value[7..9], 9)
                        }
                        Iso8601SecondsTz | NumSecondsTz => {
                            if value.len() < 7 {
                                return None;
                            }
                            (&value[1..3], &value[3..5], &value[5..7], 7)
                        }
                        _ => {
                            if value.len() < 5 {
                                return None;
                            }
                            (&value[1..3], &value[3..5], b"00", 5)
                        }
                    };
                    let sign = value[0];
                    value = from(value, len);
                    // As Go: a part that does not read is 0 and stops the rest; a range error
                    // is said before it.
                    let hr = getnum(hh, true).map(|(n, _)| n);
                    let mi = hr.and_then(|_| getnum(mm, true).map(|(n, _)| n));
                    let se = mi.and_then(|_| getnum(ss, true).map(|(n, _)| n));
                    let (h, m, s) = (hr.unwrap_or(0), mi.unwrap_or(0), se.unwrap_or(0));
                    // `>`, not `>=`: some write offsets of 24 hours or 60 minutes.
                    if h > 24 {
                        range = Some("time zone offset hour");
                    }
                    if m > 60 {
                        range = Some("time zone offset minute");
                    }
                    if s > 60 {
                        range = Some("time zone offset second");
                    }
                    se?;
                    let east = (h * 60 + m) * 60 + s;
                    offset = Some(match sign {
                        b'+' => east,
                        b'-' => -east,
                        _ => return None,
                    });
                }
                Tz => {
                    if value.starts_with(b"UTC") {
                        utc = true;
                        value = from(value, 3);
                        return Some(());
                    }
                    value = from(value, parse_time_zone(value)?);
                }
                FracSecond0(digits, _) => {
                    let n = 1 + digits;
                    if value.len() < n {
                        return None;
                    }
                    let parsed = parse_nanoseconds(value, n);
                    value = from(value, n);
                    match parsed {
                        Ok(ns) => nsec = ns,
                        Err(Some(r)) => range = Some(r),
                        Err(None) => return None,
                    }
                }
                FracSecond9(..) => {
                    if !(matches!(at(value, 0), Some(b'.' | b',')) && is_digit(value, 1)) {
                        // The fraction left out.
                        return Some(());
                    }
                    // Any number of digits, as after the seconds.
                    let n = 1 + from(value, 1).iter().take_while(|c| c.is_ascii_digit()).count();
                    let parsed = parse_nanoseconds(value, n);
                    value = from(value, n);
                    match parsed {
                        Ok(ns) => nsec = ns,
                        Err(Some(r)) => range = Some(r),
                        Err(None) => return None,
                    }
                }
            }
            Some(())
        })();
        if let Some(r) = range {
            return Err(message(&format!(": {r} out of range")));
        }
        if ok.is_none() {
            return Err(parse_error(std_str, hold));
        }
    }
    if pm && hour < 12 {
        hour += 12;
    } else if am && hour == 12 {
        hour = 0;
    }

    if yday >= 0 {
        let (mut m, mut d) = (0, 0);
        if is_leap(year) {
            if yday == 31 + 29 {
                (m, d) = (2, 29);
            } else if yday > 31 + 29 {
                yday -= 1;
            }
        }
        if !(1..=365).contains(&yday) {
            return Err(message(": day-of-year out of range"));
        }
        if m == 0 {
            m = (yday - 1) / 31 + 1;
            if days_before(m + 1) < yday {
                m += 1;
            }
            d = yday - days_before(m);
        }
        if month >= 0 && month != m {
            return Err(message(": day-of-year does not match month"));
        }
        month = m;
        if day >= 0 && day != d {
            return Err(message(": day-of-year does not match day"));
        }
        day = d;
    } else {
        if month < 0 {
            month = 1;
        }
        if day < 0 {
            day = 1;
        }
    }
    if day < 1 || day > days_in(month, year) {
        return Err(message(": day out of range"));
    }

    let local = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + min * 60 + sec;
    let seconds = match (utc, offset) {
        (false, Some(east)) => local - east,
        _ => local,
    };
    let nanos = i128::from(seconds) * 1_000_000_000 + i128::from(nsec);
    i64::try_from(nanos).map_err(|_| OUT_OF_RANGE.into())
}

/// Go's `appendInt`: `x` in decimal, zero-padded to `width` digits.
fn append_int(out: &mut String, x: i64, width: usize) {
    if x < 0 {
        out.push('-');
    }
    let digits = x.unsigned_abs().to_string();
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(&digits);
}

/// An offset, seconds east, as Go writes `-07:00:00`'s parts (the sign is that of the whole
/// minutes, as Go's).
fn append_offset(out: &mut String, offset: i64, colon: bool, minutes: bool, seconds: bool) {
    let (mut zone, mut abs) = (offset / 60, offset);
    if zone < 0 {
        out.push('-');
        (zone, abs) = (-zone, -abs);
    } else {
        out.push('+');
    }
    append_int(out, zone / 60, 2);
    if colon {
        out.push(':');
    }
    if minutes {
        append_int(out, zone % 60, 2);
    }
    if seconds {
        if colon {
            out.push(':');
        }
        append_int(out, abs % 60, 2);
    }
}

/// A local time as Go's `Time.Format` reads it: the fields in its zone, the zone's offset
/// (seconds east) and abbreviation.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    /// Day of the year, from 1.
    pub yday: u32,
    /// 0 for Sunday.
    pub weekday: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub nanosecond: u32,
    pub offset: i64,
    pub zone: &'a str,
}

/// Go's `Time.Format(layout)` of `t`.
pub fn format(t: &Fields<'_>, layout: &str) -> String {
    use Std::*;
    let mut out = String::new();
    let mut layout = layout.as_bytes();
    loop {
        let (prefix, std, suffix) = next_std_chunk(layout);
        // `prefix` ends where `layout` does or before an ASCII element: whole characters.
        out.push_str(core::str::from_utf8(prefix).unwrap_or_default());
        let Some(std) = std else {
            break;
        };
        layout = suffix;
        let hour12 = match t.hour % 12 {
            0 => 12,
            h => h,
        };
        let z = |std: Std| {
            matches!(
                std,
                Iso8601Tz | Iso8601ColonTz | Iso8601SecondsTz | Iso8601ShortTz | Iso8601ColonSecondsTz
            )
        };
        match std {
            Year => append_int(&mut out, t.year.abs() % 100, 2),
            LongYear => append_int(&mut out, t.year, 4),
            Month => out.push_str(&LONG_MONTHS[(t.month - 1) as usize][..3]),
            LongMonth => out.push_str(LONG_MONTHS[(t.month - 1) as usize]),
            NumMonth => append_int(&mut out, i64::from(t.month), 0),
            ZeroMonth => append_int(&mut out, i64::from(t.month), 2),
            WeekDay => out.push_str(SHORT_DAYS[t.weekday as usize]),
            LongWeekDay => out.push_str(LONG_DAYS[t.weekday as usize]),
            Day => append_int(&mut out, i64::from(t.day), 0),
            UnderDay => {
                if t.day < 10 {
                    out.push(' ');
                }
                append_int(&mut out, i64::from(t.day), 0);
            }
            ZeroDay => append_int(&mut out, i64::from(t.day), 2),
            UnderYearDay => {
                if t.yday < 100 {
                    out.push(' ');
                    if t.yday < 10 {
                        out.push(' ');
                    }
                }
                append_int(&mut out, i64::from(t.yday), 0);
            }
            ZeroYearDay => append_int(&mut out, i64::from(t.yday), 3),
            Hour => append_int(&mut out, i64::from(t.hour), 2),
            Hour12 => append_int(&mut out, i64::from(hour12), 0),
            ZeroHour12 => append_int(&mut out, i64::from(hour12), 2),
            Minute => append_int(&mut out, i64::from(t.minute), 0),
            ZeroMinute => append_int(&mut out, i64::from(t.minute), 2),
            Second => append_int(&mut out, i64::from(t.second), 0),
            ZeroSecond => append_int(&mut out, i64::from(t.second), 2),
            Pm => out.push_str(if t.hour >= 12 { "PM" } else { "AM" }),
            LowerPm => out.push_str(if t.hour >= 12 { "pm" } else { "am" }),
            // The `Z` forms write `Z` at offset zero, as ISO 8601.
            std if z(std) && t.offset == 0 => out.push('Z'),
            Iso8601Tz | NumTz => append_offset(&mut out, t.offset, false, true, false),
            Iso8601ColonTz | NumColonTz => append_offset(&mut out, t.offset, true, true, false),
            Iso8601ShortTz | NumShortTz => append_offset(&mut out, t.offset, false, false, false),
            Iso8601SecondsTz | NumSecondsTz => {
                append_offset(&mut out, t.offset, false, true, true);
            }
            Iso8601ColonSecondsTz | NumColonSecondsTz => {
                append_offset(&mut out, t.offset, true, true, true);
            }
            Tz if !t.zone.is_empty() => out.push_str(t.zone),
            // No zone name: Go writes the offset as `-0700`.
            Tz => append_offset(&mut out, t.offset, false, true, false),
            FracSecond0(digits, separator) | FracSecond9(digits, separator) => {
                let nanos = format!("{:09}", t.nanosecond.min(999_999_999));
                let mut n = digits.min(9);
                if matches!(std, FracSecond9(..)) {
                    n = nanos[..n].trim_end_matches('0').len();
                    if n == 0 {
                        continue;
                    }
                }
                out.push(char::from(separator));
                out.push_str(&nanos[..n]);
            }
        }
    }
    out
}
