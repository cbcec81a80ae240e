//! One-hot encoding of categorical CSV columns (the plugin's whole algorithm, testable natively).

/// Which columns are categorical, and their categories in output order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema {
    /// `(column, categories)`, sorted by column.
    pub columns: Vec<(usize, Vec<Vec<u8>>)>,
    /// Unknown categories become all zeros instead of an error.
    pub unknown_as_zero: bool,
}

impl Schema {
    /// Parses `column=a|b|c;column=...` (empty: no categorical columns).
    pub fn parse(spec: &str, unknown: &str) -> Result<Self, String> {
        let mut columns = Vec::new();
        for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (col, cats) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected `column=a|b|c`"))?;
            let col: usize = col
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: `{}` is not a column number", col.trim()))?;
            let cats: Vec<Vec<u8>> = cats
                .split('|')
                .map(|c| c.trim().as_bytes().to_vec())
                .collect();
            if cats.iter().any(Vec::is_empty) {
                return Err(format!("`{part}`: an empty category"));
            }
            if columns.iter().any(|(c, _)| *c == col) {
                return Err(format!("column {col} is listed twice"));
            }
            columns.push((col, cats));
        }
        columns.sort_by_key(|(c, _)| *c);
        let unknown_as_zero = match unknown {
            "error" => false,
            "zero" => true,
            other => return Err(format!("`unknown`: `error` or `zero`, not `{other}`")),
        };
        Ok(Self {
            columns,
            unknown_as_zero,
        })
    }

    fn categories(&self, column: usize) -> Option<&[Vec<u8>]> {
        self.columns
            .iter()
            .find(|(c, _)| *c == column)
            .map(|(_, cats)| cats.as_slice())
    }
}

/// Encodes one record, appending to `out`; returns the values written.
pub fn encode_record(
    line: &[u8],
    delimiter: u8,
    schema: &Schema,
    out: &mut Vec<f32>,
) -> Result<usize, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let start = out.len();
    for (i, field) in line.split(|&b| b == delimiter).enumerate() {
        match schema.categories(i) {
            Some(cats) => {
                let value = field.trim_ascii();
                let hit = cats.iter().position(|c| c.as_slice() == value);
                if hit.is_none() && !schema.unknown_as_zero {
                    return Err(format!(
                        "field {}: `{}` is not one of its {} categories",
                        i + 1,
                        String::from_utf8_lossy(value),
                        cats.len()
                    ));
                }
                out.extend((0..cats.len()).map(|k| if Some(k) == hit { 1.0 } else { 0.0 }));
            }
            None => {
                let text = std::str::from_utf8(field).unwrap_or("").trim();
                match text.parse::<f32>() {
                    Ok(v) if v.is_finite() => out.push(v),
                    _ => {
                        return Err(format!(
                            "field {}: `{}` is not a finite number",
                            i + 1,
                            String::from_utf8_lossy(field)
                        ));
                    }
                }
            }
        }
    }
    Ok(out.len() - start)
}

/// Encodes a packed batch; returns `(rows, width)`.
pub fn encode(
    data: &[u8],
    offsets: &[u32],
    delimiter: u8,
    schema: &Schema,
    out: &mut Vec<f32>,
) -> Result<(usize, usize), String> {
    let rows = offsets.len().saturating_sub(1);
    out.clear();
    let mut width = None;
    for r in 0..rows {
        let line = &data[offsets[r] as usize..offsets[r + 1] as usize];
        let n = encode_record(line, delimiter, schema, out)
            .map_err(|m| format!("record {}: {m}", r + 1))?;
        match width {
            None => width = Some(n),
            Some(w) if w != n => {
                return Err(format!(
                    "record {}: {n} values, earlier records had {w}",
                    r + 1
                ));
            }
            _ => {}
        }
    }
    Ok((rows, width.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categorical_columns_become_one_hot_and_numbers_pass_through() {
        let schema = Schema::parse("1=red|green|blue; 3=S|L", "error").unwrap();
        let data = b"1.5,green,7,L2,red,8,S";
        let offsets = [0, 13, 22];
        let mut out = Vec::new();
        assert_eq!(
            encode(data, &offsets, b',', &schema, &mut out).unwrap(),
            (2, 7)
        );
        assert_eq!(
            out,
            [
                1.5, 0.0, 1.0, 0.0, 7.0, 0.0, 1.0, 2.0, 1.0, 0.0, 0.0, 8.0, 1.0, 0.0
            ]
        );
        let e = encode(b"1,pink,2,S", &[0, 10], b',', &schema, &mut out).unwrap_err();
        assert_eq!(
            e,
            "record 1: field 2: `pink` is not one of its 3 categories"
        );
        let lenient = Schema::parse("1=red|green|blue;3=S|L", "zero").unwrap();
        encode(b"1,pink,2,S", &[0, 10], b',', &lenient, &mut out).unwrap();
        assert_eq!(out, [1.0, 0.0, 0.0, 0.0, 2.0, 1.0, 0.0]);
        assert!(Schema::parse("x=a", "error").is_err());
        assert!(Schema::parse("1=a;1=b", "error").is_err());
        assert!(Schema::parse("1=a", "maybe").is_err());
    }
}
