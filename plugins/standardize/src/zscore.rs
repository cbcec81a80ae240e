//! Z-score standardisation of numeric CSV records: the plugin's whole algorithm, with no
//! dependency on the SDK, so the host compiles this same file natively to measure the sandbox's
//! cost (`gantry bench preprocess`).

/// Per-column statistics, learned in the first pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Column means.
    pub mean: Vec<f32>,
    /// `1 / standard deviation` per column (1 where a column is constant).
    pub inv_std: Vec<f32>,
}

/// Record `i` of a packed batch.
fn record<'a>(data: &'a [u8], offsets: &[u32], i: usize) -> &'a [u8] {
    &data[offsets[i] as usize..offsets[i + 1] as usize]
}

/// Parses one record's fields into `out` (appending); returns the field count.
///
/// One pass over the bytes with one loop: the common field (`-12.345`: sign, digits, one
/// point, at most 15 significant digits) is accumulated as it is scanned; anything else (an
/// exponent, spaces, a long mantissa, garbage) sends that field to [`parse_f32`]. Fewer loops
/// matter in the sandbox, where every loop iteration also checks the call's deadline.
pub fn parse_record(
    line: &[u8],
    delimiter: u8,
    out: &mut Vec<f32>,
) -> Result<usize, (usize, String)> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut field = 0;
    let mut start = 0;
    let mut mantissa: u64 = 0;
    let mut digits = 0u32;
    let mut scale = 0usize; // digits after the point
    let mut point = false;
    let mut negative = false;
    let mut simple = true;
    let mut i = 0;
    loop {
        let b = if i < line.len() { line[i] } else { delimiter };
        if b == delimiter {
            let value = if simple && digits > 0 && digits <= 15 && scale < POW10.len() {
                let v = mantissa as f64 / POW10[scale];
                Some(if negative { -v } else { v } as f32)
            } else {
                parse_f32(&line[start..i.min(line.len())])
            };
            match value {
                Some(v) => out.push(v),
                None => {
                    let text = &line[start..i.min(line.len())];
                    return Err((
                        field,
                        format!(
                            "field {}: `{}` is not a finite number",
                            field + 1,
                            String::from_utf8_lossy(text)
                        ),
                    ));
                }
            }
            field += 1;
            if i >= line.len() {
                return Ok(field);
            }
            start = i + 1;
            (mantissa, digits, scale, point, negative, simple) = (0, 0, 0, false, false, true);
        } else if b.is_ascii_digit() {
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
            // Leading zeros are not significant; 15 significant digits keep the fast path exact.
            digits += u32::from(mantissa != 0);
            scale += usize::from(point);
        } else if b == b'.' && !point {
            point = true;
        } else if b == b'-' && i == start {
            negative = true;
        } else if !(b == b'+' && i == start) {
            simple = false;
        }
        i += 1;
    }
}

/// The first pass over one batch: `[rows, sum per column..., sum of squares per column...]`,
/// sums the host can add across batches. `columns` is learned from the first record when 0.
pub fn observe(
    data: &[u8],
    offsets: &[u32],
    delimiter: u8,
    columns: &mut usize,
) -> Result<Vec<f64>, String> {
    let rows = offsets.len().saturating_sub(1);
    let mut values = Vec::new();
    let mut sums: Vec<f64> = Vec::new();
    let mut squares: Vec<f64> = Vec::new();
    for r in 0..rows {
        values.clear();
        let n = parse_record(record(data, offsets, r), delimiter, &mut values)
            .map_err(|(_, m)| format!("record {}: {m}", r + 1))?;
        if *columns == 0 {
            *columns = n;
        }
        if n != *columns {
            return Err(format!(
                "record {}: {n} fields, expected {}",
                r + 1,
                *columns
            ));
        }
        if sums.is_empty() {
            sums = vec![0.0; n];
            squares = vec![0.0; n];
        }
        for ((s, q), v) in sums.iter_mut().zip(&mut squares).zip(&values) {
            let v = f64::from(*v);
            *s += v;
            *q += v * v;
        }
    }
    let mut out = Vec::with_capacity(1 + 2 * sums.len());
    out.push(rows as f64);
    out.extend(sums);
    out.extend(squares);
    Ok(out)
}

/// Means and inverse deviations from the totals of [`observe`] over the whole dataset.
pub fn prepare(totals: &[f64]) -> Result<Stats, String> {
    let Some((&rows, rest)) = totals.split_first() else {
        return Err("no statistics: the first pass saw no data".into());
    };
    if rows < 1.0 || rest.len() % 2 != 0 {
        return Err(format!("malformed statistics ({} values)", totals.len()));
    }
    let (sums, squares) = rest.split_at(rest.len() / 2);
    let mut stats = Stats::default();
    for (s, q) in sums.iter().zip(squares) {
        let mean = s / rows;
        let var = (q / rows - mean * mean).max(0.0);
        let std = var.sqrt();
        stats.mean.push(mean as f32);
        stats
            .inv_std
            .push(if std > 1e-12 { (1.0 / std) as f32 } else { 1.0 });
    }
    Ok(stats)
}

/// The second pass: `(x - mean) / std` of every field; returns `(rows, columns, values)`.
pub fn process(
    data: &[u8],
    offsets: &[u32],
    delimiter: u8,
    stats: &Stats,
    out: &mut Vec<f32>,
) -> Result<(usize, usize), String> {
    let rows = offsets.len().saturating_sub(1);
    let columns = stats.mean.len();
    if columns == 0 {
        return Err("`prepare` has not run: no statistics".into());
    }
    out.clear();
    out.reserve(rows * columns);
    for r in 0..rows {
        let start = out.len();
        let n = parse_record(record(data, offsets, r), delimiter, out)
            .map_err(|(_, m)| format!("record {}: {m}", r + 1))?;
        if n != columns {
            return Err(format!("record {}: {n} fields, expected {columns}", r + 1));
        }
        for ((v, m), s) in out[start..].iter_mut().zip(&stats.mean).zip(&stats.inv_std) {
            *v = (*v - m) * s;
        }
    }
    Ok((rows, columns))
}

/// Exact powers of ten an f64 holds (10^22 is the largest).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// A decimal number (`-1.5`, `2`, `.25`, `3e-4`, surrounding spaces allowed) as f32; `None`
/// for anything else, infinities and NaN included. Most fields take the exact fast path
/// (at most 15 significant digits and a small exponent: one multiply or divide by an exact
/// power of ten); the rest go through the standard library.
pub fn parse_f32(field: &[u8]) -> Option<f32> {
    let s = field.trim_ascii();
    let (negative, digits) = match s.first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let mut mantissa: u64 = 0;
    let mut significant = 0u32;
    let mut exponent: i32 = 0;
    let mut seen_digit = false;
    let mut i = 0;
    while i < digits.len() && digits[i].is_ascii_digit() {
        if significant < 19 {
            mantissa = mantissa * 10 + u64::from(digits[i] - b'0');
            if mantissa > 0 {
                significant += 1;
            }
        } else {
            exponent += 1;
        }
        seen_digit = true;
        i += 1;
    }
    if i < digits.len() && digits[i] == b'.' {
        i += 1;
        while i < digits.len() && digits[i].is_ascii_digit() {
            if significant < 19 {
                mantissa = mantissa * 10 + u64::from(digits[i] - b'0');
                if mantissa > 0 {
                    significant += 1;
                }
                exponent -= 1;
            }
            seen_digit = true;
            i += 1;
        }
    }
    if !seen_digit {
        return None;
    }
    if i < digits.len() && (digits[i] == b'e' || digits[i] == b'E') {
        i += 1;
        let (neg_exp, rest) = match digits.get(i) {
            Some(b'-') => (true, i + 1),
            Some(b'+') => (false, i + 1),
            _ => (false, i),
        };
        i = rest;
        let start = i;
        let mut e: i32 = 0;
        while i < digits.len() && digits[i].is_ascii_digit() {
            e = e
                .saturating_mul(10)
                .saturating_add(i32::from(digits[i] - b'0'));
            i += 1;
        }
        if i == start {
            return None;
        }
        exponent = exponent.saturating_add(if neg_exp { -e } else { e });
    }
    if i != digits.len() {
        return None;
    }
    let value = if significant <= 15 && (-22..=22).contains(&exponent) {
        // Clinger's fast path: both operands exact, so one correctly rounded operation.
        let m = mantissa as f64;
        if exponent >= 0 {
            m * POW10[exponent as usize]
        } else {
            m / POW10[(-exponent) as usize]
        }
    } else {
        std::str::from_utf8(s).ok()?.parse::<f64>().ok()?.abs()
    };
    let value = if negative { -value } else { value } as f32;
    value.is_finite().then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(lines: &[&str]) -> (Vec<u8>, Vec<u32>) {
        let mut data = Vec::new();
        let mut offsets = vec![0];
        for l in lines {
            data.extend_from_slice(l.as_bytes());
            offsets.push(data.len() as u32);
        }
        (data, offsets)
    }

    #[test]
    fn parses_like_the_standard_library() {
        for text in [
            "0",
            "-0",
            "1",
            "-1.5",
            "+2.25",
            ".5",
            "5.",
            "3e4",
            "1E-3",
            "-2.5e+2",
            " 7 ",
            "123456789.123456789",
            "1e-30",
            "0.000001",
            "340282346638528859811704183484516925440",
            "9007199254740993",
            "1.00000005960464477539",
        ] {
            let want: f32 = text.trim().parse::<f64>().unwrap() as f32;
            assert_eq!(parse_f32(text.as_bytes()), Some(want), "{text}");
        }
        for bad in [
            "", "-", ".", "e5", "1e", "1.2.3", "abc", "1,2", "nan", "inf", "1e400",
        ] {
            assert_eq!(parse_f32(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn records_parse_like_fields_one_by_one() {
        let fields = [
            "0",
            "-0",
            "1",
            "-1.5",
            "+2.25",
            ".5",
            "5.",
            "3e4",
            "1E-3",
            " 7 ",
            "0.000001",
            "123456789.123456789",
            "00012.50",
            "-0.00000000000000000001",
            "9007199254740993",
            "1234567890.12345",
            "12345678901234567",
            "0.000000000000000000000000001",
        ];
        let line = fields.join(",");
        let mut out = Vec::new();
        assert_eq!(
            parse_record(line.as_bytes(), b',', &mut out),
            Ok(fields.len())
        );
        for (f, v) in fields.iter().zip(&out) {
            assert_eq!(Some(*v), parse_f32(f.as_bytes()), "{f}");
        }
        for (bad, at) in [
            ("1,,2", 1),
            ("1,2,", 2),
            ("x", 0),
            ("1.2.3", 0),
            ("1,-", 1),
            ("1,2-3", 1),
        ] {
            let e = parse_record(bad.as_bytes(), b',', &mut out).unwrap_err();
            assert_eq!(e.0, at, "{bad}: {}", e.1);
        }
        assert_eq!(parse_record(b"1;2\r", b';', &mut out), Ok(2));
    }

    #[test]
    fn two_passes_standardise_every_column() {
        let (data, offsets) = pack(&["1,10,5", "2,20,5", "3,30,5"]);
        let mut columns = 0;
        let totals = observe(&data, &offsets, b',', &mut columns).unwrap();
        assert_eq!(columns, 3);
        assert_eq!(totals, [3.0, 6.0, 60.0, 15.0, 14.0, 1400.0, 75.0]);
        let stats = prepare(&totals).unwrap();
        assert_eq!(stats.mean, [2.0, 20.0, 5.0]);
        let mut out = Vec::new();
        assert_eq!(
            process(&data, &offsets, b',', &stats, &mut out).unwrap(),
            (3, 3)
        );
        let s = 1.5f32.sqrt(); // population std of 1,2,3 is sqrt(2/3)
        let want = [-s, -s, 0.0, 0.0, 0.0, 0.0, s, s, 0.0];
        for (g, w) in out.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{out:?}");
        }
    }

    #[test]
    fn bad_records_are_named() {
        let (data, offsets) = pack(&["1,2", "3,x"]);
        let e = observe(&data, &offsets, b',', &mut 0).unwrap_err();
        assert_eq!(e, "record 2: field 2: `x` is not a finite number");
        let (data, offsets) = pack(&["1,2", "3"]);
        let e = observe(&data, &offsets, b',', &mut 0).unwrap_err();
        assert_eq!(e, "record 2: 1 fields, expected 2");
        assert!(prepare(&[]).is_err());
    }
}
