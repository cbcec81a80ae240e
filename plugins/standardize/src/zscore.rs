//! Z-score standardisation of numeric CSV records: the plugin's whole algorithm, with no
//! dependency on the SDK; `gantry bench preprocess` links this crate natively to measure the
//! sandbox's cost on the same code.

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
/// The common field (`-12.345`: a sign, then at most eight characters of digits around one
/// point) takes one eight-byte word: the point is squeezed out and the digits converted at once
/// with a few word operations. Longer ones (at most 15 digits) are read a digit run (up to eight
/// bytes) at a time. Anything else (an exponent, spaces, a long mantissa, garbage) sends that
/// field to [`parse_f32`]. Few loop iterations matter doubly in the sandbox, where every
/// iteration also checks the call's deadline.
pub fn parse_record(
    line: &[u8],
    delimiter: u8,
    out: &mut Vec<f32>,
) -> Result<usize, (usize, String)> {
    parse_fields(line, delimiter, |_, v| out.push(v))
}

/// Parses one record into `row` (fields past its end are counted, not kept); returns the field
/// count. Not inlined on purpose: a parser of its own, with few live values, is what the
/// sandbox's compiler (Cranelift) allocates registers well for; inlined into a pass's loop it
/// spilled most of its state to the stack.
#[inline(never)]
pub fn parse_row(line: &[u8], delimiter: u8, row: &mut [f32]) -> Result<usize, (usize, String)> {
    parse_fields(line, delimiter, |c, v| {
        if let Some(x) = row.get_mut(c) {
            *x = v;
        }
    })
}

/// [`parse_record`], handing each field's value and index to `emit` as it is parsed.
#[inline(always)]
pub fn parse_fields(
    line: &[u8],
    delimiter: u8,
    mut emit: impl FnMut(usize, f32),
) -> Result<usize, (usize, String)> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut field = 0;
    let mut i = 0;
    loop {
        let start = i;
        let value = match fast_field(line, &mut i, delimiter) {
            Some(v) => Some(v),
            None => {
                // The slow path: this field alone, whatever it holds.
                i = start
                    + line[start..]
                        .iter()
                        .position(|&b| b == delimiter)
                        .unwrap_or(line.len() - start);
                parse_f32(&line[start..i])
            }
        };
        let Some(v) = value else {
            return Err((
                field,
                format!(
                    "field {}: `{}` is not a finite number",
                    field + 1,
                    String::from_utf8_lossy(&line[start..i])
                ),
            ));
        };
        emit(field, v);
        field += 1;
        if i >= line.len() {
            return Ok(field);
        }
        i += 1; // the delimiter
    }
}

/// Eight bytes from `at` as a little-endian word, zero bytes past the end.
#[inline(always)]
fn load8(line: &[u8], at: usize) -> u64 {
    match line.get(at..at + 8) {
        Some(b) => u64::from_le_bytes(b.try_into().expect("8 bytes")),
        None => {
            let mut buf = [0u8; 8];
            let tail = line.get(at..).unwrap_or(&[]);
            buf[..tail.len()].copy_from_slice(tail);
            u64::from_le_bytes(buf)
        }
    }
}

/// How many of the word's leading bytes (in memory order) are ASCII digits.
#[inline(always)]
fn digit_run(word: u64) -> u32 {
    // A byte is a digit iff it is 0x30..=0x39: (b - 0x30) has no high nibble set and
    // (b + 0x06) keeps the 0x3 high nibble.
    let ok_low = (word & 0xF0F0_F0F0_F0F0_F0F0) ^ 0x3030_3030_3030_3030;
    let ok_high =
        (word.wrapping_add(0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0) ^ 0x3030_3030_3030_3030;
    let bad = ok_low | ok_high; // non-zero bytes mark non-digits (carries only move upwards)
    if bad == 0 {
        8
    } else {
        bad.trailing_zeros() / 8
    }
}

/// The value of the first `n` (1..=8) digits of `word`.
#[inline(always)]
fn digits_value(word: u64, n: u32) -> u64 {
    // Keep the n digits and shift them to the top: the zero bytes below read as leading zeros.
    let v = (word & 0x0F0F_0F0F_0F0F_0F0F) << (8 * (8 - n));
    let v = (v.wrapping_mul(10) + (v >> 8)) & 0x00FF_00FF_00FF_00FF;
    let v = (v.wrapping_mul(100) + (v >> 16)) & 0x0000_FFFF_0000_FFFF;
    (v.wrapping_mul(10_000) + (v >> 32)) & 0xFFFF_FFFF
}

/// The fast path for the field at `*at`: `Some` and `*at` on its delimiter (or the end) when the
/// field is `[+-]digits[.digits]` with at most 15 digits; `None` otherwise.
#[inline(always)]
fn fast_field(line: &[u8], at: &mut usize, delimiter: u8) -> Option<f32> {
    // The sign without a branch: signs are as good as random, and a mispredicted branch per
    // field costs more than the arithmetic.
    let first = line.get(*at).copied().unwrap_or(0);
    let negative = first == b'-';
    let mut i = *at + usize::from(negative | (first == b'+'));
    if let Some((v, len)) = one_word(line, i, delimiter) {
        *at = i + len;
        // v >= 0: flipping the sign bit negates it (and "-0" stays -0.0).
        return Some(f32::from_bits(v.to_bits() ^ (u32::from(negative) << 31)));
    }
    // Integer digits, then (after one point) fraction digits. Written out rather than as a loop
    // over the two parts: fewer live values and back-edges, which Cranelift turns into fewer
    // spills and deadline checks in the sandbox.
    let (mut mantissa, mut digits) = (0u64, 0u32);
    digit_runs(line, &mut i, &mut mantissa, &mut digits)?;
    let mut scale = 0usize;
    if line.get(i) == Some(&b'.') {
        i += 1;
        let before = digits;
        digit_runs(line, &mut i, &mut mantissa, &mut digits)?;
        scale = (digits - before) as usize;
    }
    let ends = i == line.len() || line[i] == delimiter;
    if !ends || digits == 0 {
        return None;
    }
    *at = i;
    // Exact: mantissa < 10^15 < 2^53 (so the signed conversion, one instruction, is exact too)
    // and scale <= 15: one correctly rounded division.
    let v = mantissa as i64 as f64 / POW10[scale];
    Some(if negative { -v } else { v } as f32)
}

/// The common field, `digits[.digits]` of at most eight characters, from the one word at `i`:
/// the point is squeezed out and all digits are converted at once. `Some((value, length))` when
/// the field ends there (the line's end or the delimiter follows); `None` sends it to the
/// general path.
#[inline(always)]
fn one_word(line: &[u8], i: usize, delimiter: u8) -> Option<(f32, usize)> {
    // The low `k` (at most 7) bytes of a word.
    let low = |k: usize| (1u64 << (8 * k)) - 1;
    let word = load8(line, i);
    let n = digit_run(word) as usize;
    if n == 8 {
        return None;
    }
    let point = (word >> (8 * n)) & 0xFF == u64::from(b'.');
    let (digits, scale, len) = if point {
        let fraction = if n < 7 { word >> (8 * (n + 1)) } else { 0 };
        // At most 7 - n: the word ends there.
        let f = digit_run(fraction) as usize;
        (
            (word & low(n)) | ((fraction & low(f)) << (8 * n)),
            f,
            n + 1 + f,
        )
    } else {
        (word & low(n), 0, n)
    };
    let count = n + scale;
    if count == 0 {
        return None;
    }
    let end = i + len;
    if end != line.len() && line.get(end) != Some(&delimiter) {
        return None;
    }
    // At most seven digits: the mantissa (< 2^24) and the power of ten are exact in f32, so one
    // correctly rounded f32 division. It equals the f64 route (divide, then round to f32): an
    // exact quotient of a 7-digit mantissa lies at least 2^-48 (relative) from any f32 halfway
    // point it is not on, farther than the f64 division's error, so the second rounding cannot
    // go another way.
    let mantissa = digits_value(digits, count as u32);
    Some((mantissa as i32 as f32 / POW10_F32[scale], len))
}

/// Powers of ten exact in f32 (10^7 < 2^24).
const POW10_F32: [f32; 8] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7];

/// Reads the run of digits at `*i` into `mantissa`, eight bytes per step; `None` past 15
/// digits in all.
#[inline(always)]
fn digit_runs(line: &[u8], i: &mut usize, mantissa: &mut u64, digits: &mut u32) -> Option<()> {
    loop {
        let word = load8(line, *i);
        let n = digit_run(word);
        if n > 0 {
            *digits += n;
            if *digits > 15 {
                return None;
            }
            *mantissa = *mantissa * POW10_U64[n as usize] + digits_value(word, n);
            *i += n as usize;
        }
        if n < 8 {
            return Some(());
        }
    }
}

/// Powers of ten for shifting a mantissa by up to eight digits.
const POW10_U64: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// The first pass over one batch: `[rows, sum per column..., sum of squares per column...]`,
/// sums the host can add across batches. `columns` is learned from the first record when 0.
pub fn observe(
    data: &[u8],
    offsets: &[u32],
    delimiter: u8,
    columns: &mut usize,
) -> Result<Vec<f64>, String> {
    let rows = offsets.len().saturating_sub(1);
    let mut sums: Vec<f64> = Vec::new();
    let mut squares: Vec<f64> = Vec::new();
    let mut row: Vec<f32> = Vec::new();
    for r in 0..rows {
        let line = record(data, offsets, r);
        if *columns == 0 {
            *columns = parse_fields(line, delimiter, |_, _| {})
                .map_err(|(_, m)| format!("record {}: {m}", r + 1))?;
        }
        if sums.is_empty() {
            sums = vec![0.0; *columns];
            squares = vec![0.0; *columns];
        }
        // Parse the record into a row of its own, then sum: two simple loops keep fewer values
        // live than one, which the sandbox's compiler turns into fewer spills.
        row.resize(*columns, 0.0);
        let n = parse_row(line, delimiter, &mut row)
            .map_err(|(_, m)| format!("record {}: {m}", r + 1))?;
        for ((s, q), &v) in sums.iter_mut().zip(squares.iter_mut()).zip(row.iter()) {
            let v = f64::from(v);
            *s += v;
            *q += v * v;
        }
        if n != *columns {
            return Err(format!(
                "record {}: {n} fields, expected {}",
                r + 1,
                *columns
            ));
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
    out.resize(rows * columns, 0.0);
    // Each record writes its own row of the pre-sized output (no per-value capacity checks).
    for (r, row) in out.chunks_exact_mut(columns).enumerate() {
        let n = parse_row(record(data, offsets, r), delimiter, row)
            .map_err(|(_, m)| format!("record {}: {m}", r + 1))?;
        for ((x, m), s) in row.iter_mut().zip(&stats.mean).zip(&stats.inv_std) {
            *x = (*x - m) * s;
        }
        if n != columns {
            return Err(format!("record {}: {n} fields, expected {columns}", r + 1));
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

    /// Numbers in the shapes both parsers must read: signs, a missing integer or fraction part,
    /// exponents.
    const NUMBERS: [&str; 9] = ["0", "-0", "1", "-1.5", "+2.25", ".5", "5.", "3e4", "1E-3"];

    #[test]
    fn parses_like_the_standard_library() {
        for text in NUMBERS.into_iter().chain([
            "-2.5e+2",
            " 7 ",
            "123456789.123456789",
            "1e-30",
            "0.000001",
            "340282346638528859811704183484516925440",
            "9007199254740993",
            "1.00000005960464477539",
        ]) {
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
        let fields: Vec<&str> = NUMBERS
            .into_iter()
            .chain([
                " 7 ",
                "0.000001",
                "123456789.123456789",
                "00012.50",
                "-0.00000000000000000001",
                "9007199254740993",
                "1234567890.12345",
                "12345678901234567",
                "0.000000000000000000000000001",
            ])
            .collect();
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
    fn records_agree_with_fieldwise_parsing_on_generated_fields() {
        // Deterministic fields from an alphabet that hits every branch: digit runs of any
        // length, signs, points, exponents, spaces, garbage.
        let alphabet = b"0123456789012345678901234567890123456789.-+e ";
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |n: u64| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % n
        };
        let mut out = Vec::new();
        for _ in 0..20_000 {
            let fields: Vec<Vec<u8>> = (0..1 + next(4))
                .map(|_| {
                    (0..next(30))
                        .map(|_| alphabet[next(alphabet.len() as u64) as usize])
                        .collect()
                })
                .collect();
            let line = fields.join(&b',');
            out.clear();
            let got = parse_record(&line, b',', &mut out);
            let want: Vec<Option<f32>> = fields.iter().map(|f| parse_f32(f)).collect();
            match want.iter().position(Option::is_none) {
                Some(bad) => assert_eq!(
                    got.map_err(|e| e.0),
                    Err(bad),
                    "{}",
                    String::from_utf8_lossy(&line)
                ),
                None => {
                    assert_eq!(got, Ok(fields.len()), "{}", String::from_utf8_lossy(&line));
                    let want: Vec<f32> = want.into_iter().flatten().collect();
                    assert_eq!(out, want, "{}", String::from_utf8_lossy(&line));
                }
            }
        }
    }

    #[test]
    fn the_f32_division_of_short_fields_equals_the_f64_route_for_every_mantissa() {
        // Exhaustive over what `one_word` divides: mantissas below 10^7, scales 1 to 7.
        for scale in 1..8 {
            for m in 0..10_000_000i32 {
                let f32_route = m as f32 / POW10_F32[scale];
                let f64_route = (f64::from(m) / POW10[scale]) as f32;
                assert_eq!(f32_route.to_bits(), f64_route.to_bits(), "{m} / 10^{scale}");
            }
        }
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
