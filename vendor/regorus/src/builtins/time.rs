// Copyright (c) Microsoft Corporation.
// Licensed under the MIT License.
#![allow(
    clippy::as_conversions,
    clippy::unused_trait_names,
    clippy::pattern_type_mismatch
)]
use crate::ast::{Expr, Ref};
use crate::builtins;
use crate::builtins::utils::{ensure_args_count, ensure_numeric, ensure_string};
use crate::lexer::Span;
use crate::value::Value;
use crate::*;

use anyhow::{bail, Result};

use chrono::{
    DateTime, Datelike, FixedOffset, Local, TimeZone, Timelike, Utc, Weekday,
};
use chrono_tz::Tz;

pub(in crate::builtins) mod compat;
mod diff;
mod go_time;

pub fn register(m: &mut builtins::BuiltinsMap<&'static str, builtins::BuiltinFcn>) {
    m.insert("time.add_date", (add_date, 4));
    m.insert("time.clock", (clock, 1));
    m.insert("time.date", (date, 1));
    m.insert("time.diff", (diff, 2));
    m.insert("time.format", (format, 1));
    m.insert("time.now_ns", (now_ns, 0));
    m.insert("time.parse_duration_ns", (parse_duration_ns, 1));
    m.insert("time.parse_ns", (parse_ns, 2));
    m.insert("time.parse_rfc3339_ns", (parse_rfc3339_ns, 1));
    m.insert("time.weekday", (weekday, 1));
}

fn add_date(span: &Span, params: &[Ref<Expr>], args: &[Value], strict: bool) -> Result<Value> {
    let name = "time.add_date";
    ensure_args_count(span, name, params, args, 4)?;

    let (ns, zone, _) = parse_zoned(name, &params[0], &args[0])?;
    let int = |i: usize| {
        ensure_numeric(name, &params[i], &args[i])?
            .as_i64()
            .ok_or_else(|| params[i].span().error("could not convert to int64"))
    };
    let (years, months, days) = (int(1)?, int(2)?, int(3)?);
    // Gantry: Go's `AddDate` in the instant's zone (OPA's): a day past a month's end overflows
    // into the next month (chrono clamped: March 31 less a month was February's last day, where
    // Go's is March 2), and the local clock is kept across a DST change (chrono added to the
    // instant's fixed offset at the start, so the clock moved by the change).
    let nanos = go_time::add_date(ns, |second| zone.offset(second), years, months, days);
    safe_timestamp_nanos(span, strict, nanos)
}

fn clock(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "time.clock";
    ensure_args_count(span, name, params, args, 1)?;

    let (datetime, _) = parse_epoch(name, &params[0], &args[0])?;

    Ok(Vec::from([
        (datetime.hour() as u64).into(),
        (datetime.minute() as u64).into(),
        (datetime.second() as u64).into(),
    ])
    .into())
}

fn date(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "time.date";
    ensure_args_count(span, name, params, args, 1)?;

    let (datetime, _) = parse_epoch(name, &params[0], &args[0])?;

    Ok(Vec::from([
        (datetime.year() as u64).into(),
        (datetime.month() as u64).into(),
        (datetime.day() as u64).into(),
    ])
    .into())
}

fn diff(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "time.diff";
    ensure_args_count(span, name, params, args, 2)?;

    // Gantry: as OPA, the second instant is read in the first one's zone, with the offset that
    // zone has at that instant (upstream gave it the first one's offset, an hour off across a
    // daylight saving change).
    let (ns1, zone, _) = parse_zoned(name, &params[0], &args[0])?;
    let (ns2, _, _) = parse_zoned(name, &params[1], &args[1])?;
    let (datetime1, _) = zone.local(ns1);
    let (datetime2, _) = zone.local(ns2);

    let (year, month, day, hour, min, sec) = diff::diff_between_datetimes(datetime1, datetime2)?;

    Ok(Vec::from([
        (year as i64).into(),
        (month as i64).into(),
        (day as i64).into(),
        (hour as i64).into(),
        (min as i64).into(),
        (sec as i64).into(),
    ])
    .into())
}

fn format(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "time.format";
    ensure_args_count(span, name, params, args, 1)?;

    // Gantry: Go's `Time.Format` (go_time.rs), the zone's abbreviation for `MST`; no layout,
    // or an empty one, is RFC 3339 with nanoseconds, as OPA's.
    let (ns, zone, layout) = parse_zoned(name, &params[0], &args[0])?;
    let (t, abbreviation) = zone.local(ns);
    let local = go_time::Fields {
        year: i64::from(t.year()),
        month: t.month(),
        day: t.day(),
        yday: t.ordinal(),
        weekday: t.weekday().num_days_from_sunday(),
        hour: t.hour(),
        minute: t.minute(),
        second: t.second(),
        nanosecond: t.nanosecond(),
        offset: i64::from(t.offset().local_minus_utc()),
        zone: &abbreviation,
    };
    let layout = match layout.as_deref() {
        None | Some("") => "2006-01-02T15:04:05.999999999Z07:00",
        Some(layout) => layout_with_predefined_formats(layout),
    };
    Ok(Value::String(go_time::format(&local, layout).into()))
}

fn now_ns(span: &Span, params: &[Ref<Expr>], args: &[Value], strict: bool) -> Result<Value> {
    let name = "time.now_ns";
    ensure_args_count(span, name, params, args, 0)?;

    safe_timestamp_nanos(span, strict, Utc::now().timestamp_nanos_opt())
}

fn parse_duration_ns(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    strict: bool,
) -> Result<Value> {
    let name = "time.parse_duration_ns";
    ensure_args_count(span, name, params, args, 1)?;

    let value = ensure_string(name, &params[0], &args[0])?;
    let dur = compat::parse_duration(value.as_ref()).map_err(anyhow::Error::msg)?;
    safe_timestamp_nanos(span, strict, dur.num_nanoseconds())
}

fn parse_ns(span: &Span, params: &[Ref<Expr>], args: &[Value], strict: bool) -> Result<Value> {
    let name = "time.parse_ns";
    ensure_args_count(span, name, params, args, 2)?;

    let layout = ensure_string(name, &params[0], &args[0])?;
    let value = ensure_string(name, &params[1], &args[1])?;

    // Gantry: Go's time.Parse, ported (go_time.rs); an instant past i64 nanoseconds is the
    // range error below.
    go_nanos(span, strict, layout_with_predefined_formats(&layout), &value)
}

/// Gantry: `value` read as Go's `time.Parse` reads it with `layout`, in nanoseconds.
fn go_nanos(span: &Span, strict: bool, layout: &str, value: &str) -> Result<Value> {
    match go_time::parse_ns(layout, value) {
        Ok(ns) => safe_timestamp_nanos(span, strict, Some(ns)),
        Err(e) if e == go_time::OUT_OF_RANGE => safe_timestamp_nanos(span, strict, None),
        Err(e) => Err(anyhow::anyhow!(e)),
    }
}

fn parse_rfc3339_ns(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    strict: bool,
) -> Result<Value> {
    let name = "time.parse_rfc3339_ns";
    ensure_args_count(span, name, params, args, 1)?;

    let value = ensure_string(name, &params[0], &args[0])?;

    // Gantry: as OPA, Go's time.Parse with the RFC 3339 layout (chrono's RFC 3339 reader took
    // what Go refuses: a space or a lower-case `t` for `T`, a lower-case `z`).
    go_nanos(span, strict, "2006-01-02T15:04:05Z07:00", &value)
}

fn weekday(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "time.weekday";
    ensure_args_count(span, name, params, args, 1)?;

    let (datetime, _) = parse_epoch(name, &params[0], &args[0])?;

    let weekday = match datetime.weekday() {
        Weekday::Mon => "Monday",
        Weekday::Tue => "Tuesday",
        Weekday::Wed => "Wednesday",
        Weekday::Thu => "Thursday",
        Weekday::Fri => "Friday",
        Weekday::Sat => "Saturday",
        Weekday::Sun => "Sunday",
    };

    Ok(Value::String(weekday.into()))
}

fn safe_timestamp_nanos(span: &Span, strict: bool, nanos: Option<i64>) -> Result<Value> {
    match nanos {
        Some(ns) => Ok(Value::Number(ns.into())),
        None if strict => {
            bail!(span.error("time outside of valid range"))
        }
        None => Ok(Value::Undefined),
    }
}

/// Gantry: where an instant is read, as Go's `time.Location`.
#[derive(Debug, Clone, Copy)]
enum Zone {
    Utc,
    /// The machine's zone (`"Local"`).
    Local,
    Named(Tz),
}

impl Zone {
    /// The zone's offset at `utc`, and its name there where it has one: the tz database's
    /// abbreviation; for Go's local zone, named where chrono's is not, `UTC` where the offset is
    /// zero (a machine in UTC, OPA's usual).
    fn at(self, utc: chrono::NaiveDateTime) -> (FixedOffset, Option<String>) {
        use chrono::Offset;
        match self {
            Zone::Utc => (Utc.fix(), Some("UTC".into())),
            Zone::Local => {
                let offset = Local.offset_from_utc_datetime(&utc).fix();
                let name = (offset.local_minus_utc() == 0).then(|| "UTC".to_string());
                (offset, name)
            }
            Zone::Named(tz) => {
                let offset = tz_offset(tz, utc);
                let name = chrono_tz::OffsetName::abbreviation(&offset).map(String::from);
                (offset.fix(), name)
            }
        }
    }

    /// The zone's offset, seconds east, at Unix second `second`; `None` past chrono's range.
    fn offset(self, second: i64) -> Option<i64> {
        let utc = DateTime::from_timestamp(second, 0)?.naive_utc();
        Some(i64::from(self.at(utc).0.local_minus_utc()))
    }

    /// Instant `ns` in this zone, and the zone's abbreviation there (Go's `MST`): the tz
    /// database's, or, where it writes the offset as the abbreviation (`+0545`), that offset as
    /// it writes it, hours alone when the minutes are zero.
    fn local(self, ns: i64) -> (DateTime<FixedOffset>, String) {
        let utc = Utc.timestamp_nanos(ns);
        let (offset, name) = self.at(utc.naive_utc());
        let name = name.unwrap_or_else(|| {
            let east = offset.local_minus_utc();
            let (h, m) = (east.abs() / 3600, east.abs() / 60 % 60);
            let sign = if east < 0 { '-' } else { '+' };
            match m {
                0 => format!("{sign}{h:02}"),
                _ => format!("{sign}{h:02}{m:02}"),
            }
        });
        (utc.with_timezone(&offset), name)
    }
}

/// Gantry: `tz`'s offset at `utc`. chrono-tz tabulates a zone's changes up to 2099 and keeps
/// its last offset past them, where Go follows the zone's rule (its tz file's footer): a zone
/// still changing its clocks in 2099 is read, past 2099, at the same moment of the latest year
/// before 2100 with the same calendar (weekday of January 1, leap or not), on whose days the
/// rule puts the same changes.
fn tz_offset(tz: Tz, utc: chrono::NaiveDateTime) -> chrono_tz::TzOffset {
    use chrono::{NaiveDate, Offset};
    let offset = tz.offset_from_utc_datetime(&utc);
    let year = utc.year();
    let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d);
    let in_2099 = |m| day(2099, m, 15).map(|d| tz.offset_from_utc_datetime(&d.into()).fix());
    if year < 2100 || in_2099(1) == in_2099(7) {
        return offset;
    }
    let calendar = |y| (day(y, 1, 1).map(|d| d.weekday()), day(y, 2, 29).is_some());
    let shifted = (2072..2100)
        .rev()
        .find(|&y| calendar(y) == calendar(year))
        .and_then(|same| Some(day(same, 1, 1)?.signed_duration_since(day(year, 1, 1)?)))
        .and_then(|shift| utc.checked_add_signed(shift));
    shifted.map_or(offset, |at| tz.offset_from_utc_datetime(&at))
}

/// The local time of an epoch argument (`ns`, or `[ns, zone, layout]`) and its layout.
fn parse_epoch(
    fcn: &str,
    arg: &Expr,
    val: &Value,
) -> Result<(DateTime<FixedOffset>, Option<String>)> {
    let (ns, zone, layout) = parse_zoned(fcn, arg, val)?;
    Ok((zone.local(ns).0, layout))
}

/// An epoch argument (`ns`, or `[ns, zone, layout]`): the instant, its zone and its layout.
fn parse_zoned(fcn: &str, arg: &Expr, val: &Value) -> Result<(i64, Zone, Option<String>)> {
    let nanos = |num: &crate::number::Number| {
        num.as_i64().ok_or_else(|| {
            arg.span()
                .error("could not convert numeric value of `ns` to int64")
        })
    };
    match val {
        Value::Number(num) => return Ok((nanos(num)?, Zone::Utc, None)),

        Value::Array(arr) => match arr.as_slice() {
            [Value::Number(num)] => return Ok((nanos(num)?, Zone::Utc, None)),
            [Value::Number(num), Value::String(tz), rest @ ..] => {
                let ns = nanos(num)?;
                let zone = match tz.as_ref() {
                    "UTC" | "" => Zone::Utc,
                    "Local" => Zone::Local,
                    _ => match tz.parse() {
                        Ok(tz) => Zone::Named(tz),
                        Err(e) => bail!(e),
                    },
                };

                let format = match rest.first() {
                    Some(Value::String(format)) => Some(format.to_string()),
                    Some(other) => {
                        bail!(arg.span().error(&format!(
                            "`{fcn}` expects 3rd element of `ns` to be a `string`. Got `{other}` instead"
                        )))
                    }
                    None => None,
                };

                return Ok((ns, zone, format));
            }
            _ => {}
        },

        _ => {}
    }

    bail!(arg.span().error(&format!(
        "`{fcn}` expects `ns` to be a `number` or `array[number, string]`. Got `{val}` instead"
    )))
}

fn layout_with_predefined_formats(format: &str) -> &str {
    match format {
        "ANSIC" => "Mon Jan _2 15:04:05 2006",
        "UnixDate" => "Mon Jan _2 15:04:05 MST 2006",
        "RubyDate" => "Mon Jan 02 15:04:05 -0700 2006",
        "RFC822" => "02 Jan 06 15:04 MST",
        // RFC822 with numeric zone
        "RFC822Z" => "02 Jan 06 15:04 -0700",
        "RFC850" => "Monday, 02-Jan-06 15:04:05 MST",
        "RFC1123" => "Mon, 02 Jan 2006 15:04:05 MST",
        // RFC1123 with numeric zone
        "RFC1123Z" => "Mon, 02 Jan 2006 15:04:05 -0700",
        "RFC3339" => "2006-01-02T15:04:05Z07:00",
        "RFC3339Nano" => "2006-01-02T15:04:05.999999999Z07:00",
        other => other,
    }
}
