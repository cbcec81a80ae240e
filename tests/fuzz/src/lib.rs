//! Generators for the property tests over every parser reachable from a request or a plugin
//! (issue 10, "hostile input"): valid documents, and structured mutations of them (bit flips,
//! truncation, inserted bytes and non-UTF-8, huge, negative and non-finite numbers, wrong types,
//! deep nesting, long strings, unknown fields, duplicate keys and lines).
//!
//! The property tests live beside their parsers (a `props` module each) and run with
//! `cargo test`. Runs are bounded and reproducible: [`config`] fixes the case count and the
//! seed; `PROPTEST_CASES=N` and `PROPTEST_RNG_SEED=S` override them (proptest prints the
//! smallest failing input it found).

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed};

/// The seed every property test starts from unless `PROPTEST_RNG_SEED` names another.
pub const SEED: u64 = 0x6a17_0010;

/// A run of `cases` cases (or `PROPTEST_CASES`) from [`SEED`] (or `PROPTEST_RNG_SEED`). A
/// failure reproduces from the seed alone, so nothing is persisted.
pub fn config(cases: u32) -> Config {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    Config {
        cases: env("PROPTEST_CASES").map_or(cases, |c: u64| c as u32),
        rng_seed: RngSeed::Fixed(env("PROPTEST_RNG_SEED").unwrap_or(SEED)),
        failure_persistence: None,
        // Shrinking a slow case can take long on a loaded machine; the seed reproduces it anyway.
        max_shrink_iters: 256,
        ..Config::default()
    }
}

/// A value that breaks parsers in `syntax`: extreme, negative and non-finite numbers, wrong
/// types, deep nesting, long strings and arrays, control characters and path tricks.
pub fn hostile_value(syntax: Syntax) -> impl Strategy<Value = String> {
    let fixed: &'static [&'static str] = match syntax {
        Syntax::Toml => &[
            "0",
            "-1",
            "1",
            "2",
            "-9223372036854775808",
            "9223372036854775807",
            "4294967295",
            "4294967296",
            "1048577",
            "1e308",
            "-1e308",
            "1e-320",
            "nan",
            "+inf",
            "-inf",
            "-0.0",
            "0.5",
            "\"text\"",
            "\"\"",
            "true",
            "[]",
            "{}",
            "[1, 2, 3]",
            "[0]",
            "{ a = 1 }",
            "1979-05-27T07:32:00Z",
            "\"\\u0000\"",
            "\"../../etc/passwd\"",
            "\"/dev/zero\"",
            "\"\u{202e}é\"",
        ],
        Syntax::Json => &[
            "0",
            "-1",
            "1",
            "2",
            "-9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999999999",
            "4294967295",
            "4294967296",
            "1e308",
            "1e400",
            "-1e308",
            "1e-320",
            "-0.0",
            "0.5",
            "\"text\"",
            "\"\"",
            "true",
            "null",
            "[]",
            "{}",
            "[1, 2, 3]",
            "{\"a\": 1}",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "\"../../etc/passwd\"",
            "\"/dev/zero\"",
            "\"\u{202e}é\"",
        ],
    };
    let nest = move |d: usize| match syntax {
        Syntax::Toml if d.is_multiple_of(2) => format!("{}1{}", "{ a = ".repeat(d), " }".repeat(d)),
        Syntax::Json if d.is_multiple_of(2) => {
            format!("{}1{}", "{\"a\": ".repeat(d), "}".repeat(d))
        }
        _ => format!("{}{}", "[".repeat(d), "]".repeat(d)),
    };
    prop_oneof![
        12 => prop::sample::select(fixed).prop_map(str::to_string),
        1 => (1usize..65_536).prop_map(|n| format!("\"{}\"", "a".repeat(n))),
        1 => (1usize..4_096).prop_map(nest),
        1 => (1usize..10_000).prop_map(|n| format!("[{}1]", "1, ".repeat(n))),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(move |f| match syntax {
            // TOML spells the non-finite values out; JSON has none (they stay refused).
            Syntax::Toml if f.is_nan() => "nan".to_string(),
            Syntax::Toml if f.is_infinite() => format!("{}inf", if f > 0.0 { "+" } else { "-" }),
            _ => format!("{f:e}"),
        }),
    ]
}

/// The syntax of the document being mutated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// TOML: `key = value` lines, `[tables]`.
    Toml,
    /// JSON.
    Json,
}

/// One edit of a document.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flips one bit of one byte.
    FlipBit(Index, u8),
    /// Cuts the document short.
    Truncate(Index),
    /// Inserts raw bytes (often not UTF-8).
    Insert(Index, Vec<u8>),
    /// Replaces one value (what follows a `=` or `:`) with a hostile one.
    Replace(Index, String),
    /// Repeats one line (a duplicate key, table or entry).
    DuplicateLine(Index),
    /// Drops one line (a missing field).
    DeleteLine(Index),
    /// Inserts a line: an unknown field, or a table header.
    InsertLine(Index, String),
}

/// A strategy for one edit of a `syntax` document.
pub fn mutation(syntax: Syntax) -> impl Strategy<Value = Mutation> {
    let line = match syntax {
        Syntax::Toml => prop::sample::select(
            &[
                "zzz_unknown = 1",
                "[zzz]",
                "[[zzz]]",
                "name = \"again\"",
                "[limits]",
                "[config]",
                "[data]",
                "[model]",
                "[[nodes]]",
                "[[jobs]]",
                "a.b.c.d.e.f = 1",
            ][..],
        )
        .prop_map(str::to_string)
        .boxed(),
        Syntax::Json => prop::sample::select(
            &[
                "\"zzz_unknown\": 1,",
                "\"id\": \"again\",",
                "\"gpus\": 1,",
                "{",
                "}",
                "[",
                ",",
            ][..],
        )
        .prop_map(str::to_string)
        .boxed(),
    };
    prop_oneof![
        2 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        6 => (any::<Index>(), hostile_value(syntax)).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => any::<Index>().prop_map(Mutation::DuplicateLine),
        1 => any::<Index>().prop_map(Mutation::DeleteLine),
        1 => (any::<Index>(), line).prop_map(|(i, l)| Mutation::InsertLine(i, l)),
    ]
}

/// Where values start and end in `text`: after each `=` (TOML) or `:` (JSON), up to the next
/// `,`, `}` or line end, or the matching `]` of an array.
fn value_spans(text: &[u8], syntax: Syntax) -> Vec<(usize, usize)> {
    let sep = match syntax {
        Syntax::Toml => b'=',
        Syntax::Json => b':',
    };
    let mut spans = Vec::new();
    for (i, &b) in text.iter().enumerate() {
        if b != sep {
            continue;
        }
        let mut start = i + 1;
        while text.get(start) == Some(&b' ') {
            start += 1;
        }
        let mut end = start;
        let mut depth = 0i32;
        let mut quoted = false;
        while let Some(&c) = text.get(end) {
            match c {
                b'"' => quoted = !quoted,
                b'[' | b'{' if !quoted => depth += 1,
                b']' | b'}' if !quoted => {
                    if depth == 0 {
                        break;
                    }
                    depth -= 1;
                    if depth == 0 {
                        end += 1;
                        break;
                    }
                }
                b',' if !quoted && depth == 0 => break,
                b'\n' if depth == 0 => break,
                _ => {}
            }
            end += 1;
        }
        while end > start && text[end - 1] == b' ' {
            end -= 1;
        }
        if end > start {
            spans.push((start, end));
        }
    }
    spans
}

/// `text` with `mutations` applied in order.
pub fn apply(text: &[u8], syntax: Syntax, mutations: &[Mutation]) -> Vec<u8> {
    let mut out = text.to_vec();
    for m in mutations {
        match m {
            Mutation::FlipBit(at, bit) if !out.is_empty() => {
                let i = at.index(out.len());
                out[i] ^= 1 << bit;
            }
            Mutation::Truncate(at) => out.truncate(at.index(out.len() + 1)),
            Mutation::Insert(at, bytes) => {
                let i = at.index(out.len() + 1);
                out.splice(i..i, bytes.iter().copied());
            }
            Mutation::Replace(at, value) => {
                let spans = value_spans(&out, syntax);
                if !spans.is_empty() {
                    let (start, end) = spans[at.index(spans.len())];
                    out.splice(start..end, value.bytes());
                }
            }
            Mutation::DuplicateLine(at)
            | Mutation::DeleteLine(at)
            | Mutation::InsertLine(at, _) => {
                let mut lines: Vec<Vec<u8>> =
                    out.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
                let i = at.index(lines.len());
                match m {
                    Mutation::DuplicateLine(_) => {
                        let line = lines[i].clone();
                        lines.insert(i, line);
                    }
                    Mutation::DeleteLine(_) => {
                        lines.remove(i);
                    }
                    Mutation::InsertLine(_, line) => lines.insert(i, line.as_bytes().to_vec()),
                    _ => unreachable!("matched above"),
                }
                out = lines.join(&b'\n');
            }
            Mutation::FlipBit(..) => {}
        }
    }
    out
}

/// One of `valid`, possibly with up to four mutations: about one case in eight is left valid.
pub fn mutated(valid: Vec<String>, syntax: Syntax) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(valid),
        prop::collection::vec(mutation(syntax), 0..5),
        0u8..8,
    )
        .prop_map(move |(text, mutations, keep)| {
            let mutations = if keep == 0 { &[][..] } else { &mutations[..] };
            apply(text.as_bytes(), syntax, mutations)
        })
}

/// A strategy over `valid` documents and their mutations, as text (invalid UTF-8 replaced):
/// for parsers that take `&str`.
pub fn mutated_text(valid: Vec<String>, syntax: Syntax) -> impl Strategy<Value = String> {
    mutated(valid, syntax).prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The low `bits` bits of `code` in reverse order.
fn reversed(code: u64, bits: u32) -> u64 {
    (0..bits).fold(0, |r, i| (r << 1) | ((code >> i) & 1))
}

/// Bits into bytes, least significant first, as DEFLATE packs them.
#[derive(Default)]
struct Bits {
    bytes: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u64, bits: u32) {
        self.acc |= value << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code: its bits go most significant first.
    fn code(&mut self, code: u64, bits: u32) {
        self.put(reversed(code, bits), bits);
    }

    fn align(&mut self) {
        if self.n > 0 {
            self.put(0, 8 - self.n);
        }
    }
}

/// A gzip bomb: a stream that inflates to `prefix` followed by about `zeros` zero bytes at
/// about 160:1 (`prefix` in stored blocks, then one zero and back-references of 258 bytes at
/// distance 1 in a fixed-Huffman block). It has no trailer: whoever reads it whole gets an
/// error at its end, after inflating all of it.
pub fn gzip_bomb(prefix: &[u8], zeros: u64) -> Vec<u8> {
    let mut b = Bits {
        bytes: vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff],
        ..Bits::default()
    };
    for chunk in prefix.chunks(0xffff) {
        b.put(0, 3); // not final, stored
        b.align();
        let len = chunk.len() as u16;
        b.bytes.extend_from_slice(&len.to_le_bytes());
        b.bytes.extend_from_slice(&(!len).to_le_bytes());
        b.bytes.extend_from_slice(chunk);
    }
    b.put(0, 1); // not final
    b.put(1, 2); // fixed Huffman codes
    b.code(0x30, 8); // literal 0
    // Length 258 (code 285, 8 bits) then distance 1 (code 0, 5 bits), packed once.
    let rep = reversed(0b1100_0101, 8) | reversed(0, 5) << 8;
    for _ in 0..zeros / 258 {
        b.put(rep, 13);
    }
    b.code(0, 7); // end of block
    b.put(1, 1); // final
    b.put(1, 2);
    b.code(0, 7);
    b.align();
    b.bytes
}

/// A tar header block of `kind` (`b'0'` a file, `b'L'` a GNU long name, `b'x'` PAX
/// extensions, `b'5'` a directory, ...) named `name` and claiming `size` bytes.
pub fn tar_header(kind: u8, name: &str, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_size(size);
    h.set_mode(0o644);
    let raw = &mut h.as_old_mut().name;
    let n = name.len().min(raw.len());
    raw[..n].copy_from_slice(&name.as_bytes()[..n]);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// A tar archive of `members` (names as given, leading slash kept), uncompressed.
pub fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, bytes) in members {
        out.extend(tar_header(b'0', name, bytes.len() as u64));
        out.extend_from_slice(bytes);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// `bytes` gzipped.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).expect("writing to a Vec");
    gz.finish().expect("writing to a Vec")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    #[test]
    fn values_are_found_and_replaced() {
        let text = b"a = 1\nb = [1, [2]]\nc = { d = \"x,y\", e = 3 }\n";
        let spans: Vec<&[u8]> = value_spans(text, Syntax::Toml)
            .into_iter()
            .map(|(s, e)| &text[s..e])
            .collect();
        assert_eq!(
            spans,
            [
                &b"1"[..],
                b"[1, [2]]",
                b"{ d = \"x,y\", e = 3 }",
                b"\"x,y\"",
                b"3"
            ]
        );
        let json = br#"{"a": 1, "b": [true], "c": {"d": null}}"#;
        let spans: Vec<&[u8]> = value_spans(json, Syntax::Json)
            .into_iter()
            .map(|(s, e)| &json[s..e])
            .collect();
        assert_eq!(spans, [&b"1"[..], b"[true]", b"{\"d\": null}", b"null"]);
    }

    #[test]
    fn a_gzip_bomb_inflates_to_its_prefix_and_zeros() {
        use std::io::Read as _;
        let bomb = gzip_bomb(b"prefix", 10 * 258 + 1);
        let mut out = Vec::new();
        let err = flate2::read::GzDecoder::new(&bomb[..])
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "no trailer");
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(out.len(), 6 + 1 + 10 * 258);
        assert!(out[6..].iter().all(|&b| b == 0));
        let big = gzip_bomb(&[], 1 << 24);
        assert!(big.len() < (1 << 24) / 150, "{}", big.len());
    }

    #[test]
    fn mutations_change_documents_and_runs_repeat() {
        let valid = vec!["a = 1\nb = \"two\"\n[t]\nc = [3]\n".to_string()];
        let draw = || {
            let mut runner = TestRunner::new(config(1));
            (0..64)
                .map(|_| {
                    mutated(valid.clone(), Syntax::Toml)
                        .new_tree(&mut runner)
                        .unwrap()
                        .current()
                })
                .collect::<Vec<_>>()
        };
        let first = draw();
        assert_eq!(first, draw(), "a fixed seed draws the same cases");
        let changed = first
            .iter()
            .filter(|d| d.as_slice() != valid[0].as_bytes())
            .count();
        assert!(changed > 32, "most cases are mutated: {changed} of 64");
    }
}
