use alloc::string::String;
use alloc::vec::Vec;

use super::replace;
use crate::go_builtins::GoError;

fn replaced(pairs: &[(&str, &str)], s: &str) -> Option<String> {
    match replace(pairs, s) {
        Ok(out) => Some(out),
        Err(GoError::Hard(_)) => None,
        Err(GoError::Builtin(e)) => panic!("a builtin error: {e}"),
    }
}

/// The bug OPA's own cases found: regorus replaced one key after another over the whole string.
#[test]
fn replace_n_never_replaces_what_it_wrote() {
    assert_eq!(
        replaced(&[("a", "b"), ("b", "a")], "abba").as_deref(),
        Some("baab")
    );
    assert_eq!(
        replaced(&[("ab", "b"), ("b", "Y")], "baaabbbba").as_deref(),
        Some("YaabYYYa")
    );
    // The first key in order that starts at a place wins, not the longest.
    assert_eq!(
        replaced(&[("a", "YY"), ("bba", "bX")], "bbab").as_deref(),
        Some("bXb")
    );
    assert_eq!(
        replaced(
            &[("a", "Xa"), ("aaa", "X"), ("ab", "X"), ("ba", "bYa")],
            "aaaaab"
        )
        .as_deref(),
        Some("XaXaXaXaXab")
    );
}

#[test]
fn an_empty_key_inserts_between_characters_and_not_twice_in_one_place() {
    assert_eq!(replaced(&[("", "X")], "").as_deref(), Some("X"));
    assert_eq!(replaced(&[("", "X")], "ab").as_deref(), Some("XaXbX"));
    assert_eq!(
        replaced(&[("", "X"), ("a", "Y")], "ab").as_deref(),
        Some("XYXbX")
    );
    assert_eq!(
        replaced(&[("", "-"), ("é", "e")], "aéb").as_deref(),
        Some("-a-e-b-")
    );
    // Go steps over bytes: inside `é` its bytes are no UTF-8 any more.
    assert_eq!(replaced(&[("", "-")], "é"), None);
}

#[test]
fn a_result_past_the_bound_fails_the_evaluation() {
    let s = "a".repeat(1 << 16);
    let value = "v".repeat(1 << 10);
    assert!(replaced(&[("", value.as_str())], &s).is_none());
}

/// `gotruth/replacer` (Go's `strings.NewReplacer`) wrote the table: 600 patterns and strings
/// from a fixed seed, keys that share prefixes, empty keys and values, multi-byte characters.
#[test]
fn replace_n_is_gos_replacer_on_a_table_go_wrote() {
    let table = include_str!("replacer_truth.tsv");
    let mut checked = 0;
    for (n, line) in table.lines().enumerate() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [pairs, s, want] = fields[..] else {
            panic!("line {}: three fields", n + 1)
        };
        let pairs: Vec<(String, String)> = serde_json::from_str(pairs).expect("pairs");
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let s: String = serde_json::from_str(s).expect("a string");
        let want: Option<String> = match want {
            "invalid" => None,
            json => Some(serde_json::from_str(json).expect("a string")),
        };
        assert_eq!(
            replaced(&pairs, &s),
            want,
            "line {}: {pairs:?} on {s:?}",
            n + 1
        );
        checked += 1;
    }
    assert_eq!(checked, 600);
}

/// The first key in order that starts at a place, by trying every key there: the definition
/// the index's lookup must keep (it replaced this scan, which tried every key at every place).
fn first_by_scan(pairs: &[(&str, &str)], text: &[u8], empty_allowed: bool) -> Option<usize> {
    pairs
        .iter()
        .position(|(k, _)| text.starts_with(k.as_bytes()) && (empty_allowed || !k.is_empty()))
}

#[test]
fn the_key_index_finds_the_key_a_scan_of_every_key_finds() {
    // Keys over a 3-letter alphabet (many share prefixes), texts over the same letters.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) % n
    };
    let word = |len: u64, next: &mut dyn FnMut(u64) -> u64| -> String {
        (0..len)
            .map(|_| ["a", "b", "c"][next(3) as usize])
            .collect()
    };
    for _ in 0..500 {
        let mut keys: Vec<String> = (0..next(6) + 1).map(|_| word(next(4), &mut next)).collect();
        keys.sort();
        keys.dedup();
        let pairs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "x")).collect();
        let index = super::KeyIndex::new(&pairs);
        let text = word(next(8), &mut next);
        for at in 0..=text.len() {
            for empty_allowed in [true, false] {
                let rest = &text.as_bytes()[at..];
                assert_eq!(
                    index.first_match(rest, empty_allowed),
                    first_by_scan(&pairs, rest, empty_allowed),
                    "keys {keys:?}, text {text:?} at {at}"
                );
            }
        }
    }
}
