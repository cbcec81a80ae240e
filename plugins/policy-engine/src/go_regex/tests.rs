use super::*;

fn is_match(pattern: &str, s: &str) -> bool {
    compile(pattern)
        .unwrap_or_else(|e| panic!("{pattern:?}: {e}"))
        .is_match(s)
}

fn refused(pattern: &str) -> bool {
    matches!(compile(pattern), Err(Error::Syntax(_)))
}

/// Found by a review: `\d`, `\w`, `\s`, `\b`, `(?i)` and `\pL` were "invalid regex" (regorus
/// builds `regex` without Unicode tables), so under non-strict builtin errors a deny rule using
/// them never fired. Go reads the Perl classes and the word boundary as ASCII.
#[test]
fn perl_classes_and_unicode_classes_compile_and_read_as_go_reads_them() {
    assert!(is_match(r"^\d+$", "0123456789"));
    assert!(
        !is_match(r"^\d+$", "١٢٣"),
        "Arabic-Indic digits are not Go's \\d"
    );
    assert!(is_match(r"^\w+$", "a_Z9"));
    assert!(!is_match(r"^\w+$", "é"));
    assert!(is_match(r"^\s+$", " \t\n\r\x0C"));
    assert!(!is_match(r"^\s$", "\x0B"), "Go's \\s has no vertical tab");
    assert!(!is_match(r"^\s$", "\u{a0}"));
    assert!(is_match(r"^\D\W\S$", "éé\u{a0}"));
    assert!(is_match(r"\bcat\b", "a cat!"));
    assert!(
        is_match(r"\bcat", "écat"),
        "é is not a word character to Go's \\b"
    );
    assert!(!is_match(r"\Bcat", "écat"));
    assert!(is_match(r"(?i)^straße$", "STRAßE"));
    assert!(is_match(r"(?i)^é$", "É"));
    assert!(is_match(r"^\pL+$", "héllo"));
    assert!(is_match(r"^\p{Greek}+$", "αβγ"));
    assert!(!is_match(r"^\P{Greek}$", "α"));
    assert!(!is_match(r"^\p{^Greek}$", "α"));
    assert!(is_match(r"^\p{Lu}\p{Ll}$", "Ab"));
    assert!(is_match(r"^[\pL\d]+$", "a1é"));
    assert!(is_match(r"^[^\d]$", "x"));
    assert!(!is_match(r"^[^\d]$", "5"));
    assert!(is_match(r"^[\D5]+$", "x5"));
    assert!(!is_match(r"^[^\D]$", "x"));
    assert!(is_match(r"^[[:alpha:]]+$", "abc"));
    assert!(!is_match(r"^[[:^digit:]]$", "7"));
    assert!(refused(r"\p{NoSuchScript}"));
    // Go 1.25's names: loose, Unicode's aliases for categories, scripts by their long names;
    // never a script code or an `Is` prefix (a review: `\p{Latn}` allowed where OPA errs).
    for good in [
        r"\p{greek}",
        r"\p{Old_Italic}",
        r"\p{old italic}",
        r"\p{Letter}",
        r"\p{Cased_Letter}",
        r"\p{digit}",
        r"\p{Any}",
        r"\p{ASCII}",
        r"\p{Assigned}",
        r"\p{LC}",
        r"\p{Cn}",
    ] {
        assert!(compile(good).is_ok(), "{good}: {:?}", compile(good));
    }
    for bad in [
        r"\p{Latn}",
        r"\p{Grek}",
        r"\p{isGreek}",
        r"\p{Alphabetic}",
        r"\p{Garay}",
        r"\p{Zyyy}",
        r"\p{White_Space}",
        r"\p{Greek.}",
    ] {
        assert!(refused(bad), "{bad} should be refused");
    }
    assert!(is_match(r"^\p{Letter}+$", "Zoë"));
    assert!(!is_match(r"^\p{digit}$", "x"));
    assert!(refused(r"[[:nosuch:]]"));
}

/// What Rust's syntax reads as an operator and Go's as text: set operations and nested classes,
/// `\<`, `\>`, `\b{start}`; a `{` that is no repetition.
#[test]
fn what_go_reads_as_text_stays_text() {
    assert!(is_match(r"^[a&&b]$", "&"));
    assert!(is_match(r"^[a~~b]$", "~"));
    assert!(is_match(r"^[a-]$", "-"));
    assert!(is_match(r"^[-a]$", "-"));
    assert!(is_match(r"^[--a]$", "0"), "a range from `-`");
    assert!(is_match(r"^[[x]$", "["));
    assert!(is_match(r"^[[:alpha]+$", ":"), "no `:]`: the `[` is itself");
    assert!(is_match(r"^[]a]+$", "]a"));
    assert!(is_match(r"^\<a\>$", "<a>"));
    assert!(is_match(r"a\b{start}", "a{start}"));
    assert!(is_match(r"^a{,2}$", "a{,2}"));
    assert!(is_match(r"^a{x}$", "a{x}"));
    assert!(is_match(r"^a{2}}$", "aa}"));
    assert!(is_match(r"^{{{{$", "{{{{"));
    assert!(is_match(r"^a{01}$", "a{01}"), "a leading zero is no count");
    assert!(is_match(r"^}$", "}"));
    assert!(is_match(r"^\Q.*+?\E$", ".*+?"));
    assert!(is_match(r"^\Qa.b", "a.b"));
    assert!(!is_match(r"^\Qa.b", "axb"));
    assert!(is_match(r"^\101\x41\x{41}\_$", "AAA_"));
    assert!(is_match(r"^\0$", "\0"));
    assert!(is_match(r"^ # x$", " # x"), "no verbose mode");
}

/// Go refuses what Rust would take, and the other way round.
#[test]
fn what_go_refuses_is_refused() {
    for bad in [
        r"a**",
        r"a*+",
        r"a{2}{3}",
        r"a{2}*",
        r"a*??",
        r"a{1001}",
        r"a{2,1}",
        r"(?x)a",
        r"(?u)a",
        r"(?i-)a",
        r"(?-)a",
        r"(?P=n)",
        r"(?P<>a)",
        r"(?P<a.b>a)",
        r"\1",
        r"\8",
        r"\e",
        r"\Z",
        r"\C",
        r"\G",
        r"\h",
        r"[a",
        r"[z-a]",
        r"[a--]",
        r"\",
        r"\x",
        r"\xZZ",
        r"\x{110000}",
        r"\pé",
        r"\p{sc=Greek}",
        r"[\b]",
        r"(",
        r"a)",
    ] {
        assert!(refused(bad), "{bad:?} should be refused");
    }
    for good in [
        r"a*?",
        r"a+?",
        r"a??",
        r"a{2}?",
        r"a{2,}",
        r"a{2,1000}",
        r"(?:a)",
        r"(?)a",
        r"(?i)a",
        r"(?i-s:a)",
        r"(?-i)a",
        r"(?P<n>a)",
        r"(?<n>a)",
        r"(?U)a+",
        r"\Aa\z",
        r"",
        r"x|",
        r"(|a)",
    ] {
        assert!(compile(good).is_ok(), "{good:?}: {:?}", compile(good));
    }
}

#[test]
fn a_pattern_too_large_to_compile_is_a_limit_not_a_syntax_error() {
    assert_eq!(compile(r"\pL{1000}").unwrap_err(), Error::TooBig);
}

/// From a reading against Go's sources: a 1 MiB bound refused an ordinary Unicode pattern Go
/// accepts, and nested counts, deep nesting were read otherwise than Go reads them.
#[test]
fn limits_are_gos() {
    assert!(is_match(r"^[\p{L}\p{N} ._-]{1,64}$", "Zoë 42"));
    assert!(is_match(r"^(\w+\s?){1,16}$", "a b c"));
    // Counts nested in counts multiply, at most to 1,000 (Go's `repeatIsValid`).
    assert!(refused(r"(a{100}){20}"));
    assert!(refused(r"(?:\d{2}){600}"));
    assert!(refused(r"((a{1000}){1}){2}"));
    assert!(compile(r"(a{10}){100}").is_ok());
    assert!(compile(r"(a{10}|b{100}){10}").is_ok());
    assert!(refused(r"(a{10}|b{101}){10}"));
    assert!(
        compile(r"(a{500})(b{500}){2}").is_ok(),
        "siblings do not multiply"
    );
    // Go nests groups to 1,000; the `regex` crate's compiler recurses, so here 250 (a deeper
    // pattern is refused, never a stack overflow).
    let nested = |n: usize| format!("{}a{}", "(".repeat(n), ")".repeat(n));
    assert!(is_match(&nested(200), "a"));
    assert_eq!(
        compile(&nested(990)).unwrap_err(),
        Error::TooBig,
        "a limit, not Go's refusal"
    );
}

fn found(pattern: &str, s: &str, n: i64) -> Vec<String> {
    let re = compile(pattern).unwrap();
    all_matches(&re, s, n)
        .iter()
        .map(|c| c[0].to_string())
        .collect()
}

/// Go's `FindAll`: an empty match right after a match is skipped (Go's own test case).
#[test]
fn matches_are_iterated_as_go_iterates_them() {
    assert_eq!(found("a*", "baaab", -1), ["", "aaa", ""]);
    assert_eq!(found("a*", "baaab", 2), ["", "aaa"]);
    assert_eq!(found("a*", "baaab", 0), Vec::<String>::new());
    assert_eq!(found("", "é", -1), ["", ""]);
    assert_eq!(found(r"\d", "a1b22", -1), ["1", "2", "2"]);
}

#[test]
fn split_is_gos_split() {
    fn split_of<'h>(p: &str, s: &'h str) -> Vec<&'h str> {
        split(&compile(p).unwrap(), p, s)
    }
    assert_eq!(split_of("a", "banana"), ["b", "n", "n", ""]);
    assert_eq!(split_of("", "abc"), ["a", "b", "c"]);
    assert_eq!(split_of("x", ""), [""]);
    assert_eq!(split_of("", ""), Vec::<&str>::new());
    assert_eq!(
        split_of("(?)", ""),
        [""],
        "Go asks whether its own pattern is empty"
    );
    assert_eq!(split_of("x*", "axbc"), ["a", "b", "c"]);
}

/// Found by a differential against Go's `regexp`: Go takes a group name twice and a name that
/// starts with a digit, the `regex` crate neither, so such a pattern was an error (a deny rule
/// using it never fired, non-strict). `${n}` is the first group named `n` that took part.
#[test]
fn group_names_go_takes_twice_or_with_a_leading_digit_compile() {
    let replace = |p: &str, s: &str, t: &str| replace_all(&compile(p).unwrap(), s, t);
    assert_eq!(replace("(?P<n>a)|(?P<n>b)", "ab", "[${n}${1}]"), "[aa][b]");
    assert_eq!(replace("(?P<1>a)", "ab", "[${n}${1}]"), "[a]b");
    assert_eq!(replace("(?P<_x>a)", "ab", "[$_x]"), "[a]b");
}

/// Found by a differential against Go's `regexp`: the `regex` crate drops the groups of an item
/// repeated `{0}` times, so `find_all_string_submatch_n` gave fewer groups than OPA, and every
/// later group's number moved (`$2` named another group than in Go).
#[test]
fn groups_repeated_zero_times_keep_their_numbers() {
    let replace = |p: &str, s: &str, t: &str| replace_all(&compile(p).unwrap(), s, t);
    assert_eq!(replace("(a){0}(b)", "ab", "[$1|$2]"), "a[|b]");
    assert_eq!(replace("(?:(a)|c){0,0}(b)", "ab", "[$1|$2]"), "a[|b]");
    assert_eq!(replace("(a(b)){0}?(c)", "abc", "[$3]"), "ab[c]");
    // A repetition after `\Q...\E` takes its last character; after an empty one, the item
    // before it.
    assert_eq!(replace(r"\Qab\E{0}", "aab", "<$0>"), "<a><a>b");
    assert_eq!(replace(r"(x)\Q\E{0}(y)", "xy", "[$1|$2]"), "x[|y]");
    assert!(compile(r"\Q\E*").is_err());
    let re = compile("x(a){0}").unwrap();
    let found = all_matches(&re, "xax", -1);
    assert_eq!(found.len(), 2);
    assert!(found.iter().all(|c| c.len() == 2 && c.get(1).is_none()));
}

/// Go repeats the item before a flag change (`a(?i)*` is `a*`, the flags applying after it),
/// lazily where the flags at the repetition say `U`; the `regex` crate reads a repetition of
/// the flag change and refused the pattern. Each answer below is Go's (`regexp`, Go 1.19).
#[test]
fn a_repetition_after_a_flag_change_repeats_the_item_before_it() {
    let find = |p: &str, s: &str| -> Option<(usize, usize)> {
        compile(p).unwrap().find(s).map(|m| (m.start(), m.end()))
    };
    assert_eq!(find("^a(?i)*$", "aaa"), Some((0, 3)));
    assert_eq!(find("^a(?i)*$", "AAA"), None);
    assert_eq!(find("^a(?U)*", "aaa"), Some((0, 0)));
    assert_eq!(find("(?U)a(?-U)*", "aaa"), Some((0, 3)));
    assert_eq!(find("a(?U)+?", "aaa"), Some((0, 3)));
    // An item repeated already is repeated again (Go reads no nested repetition here).
    assert_eq!(find("^a*(?i)*$", "aaa"), Some((0, 3)));
    let replace = |p: &str, s: &str, t: &str| replace_all(&compile(p).unwrap(), s, t);
    assert_eq!(replace("(a)(?i){0}(b)", "ab", "[$1|$2]"), "a[|b]");
    // Repeated again past Go's nesting bound: refused before the square of the pattern is spent.
    assert!(translate(&format!("a{}", "*(?)".repeat(1000))).is_ok());
    assert!(matches!(
        translate(&format!("a{}", "*(?)".repeat(100_000))),
        Err(Error::Syntax(m)) if m.contains("nests too deeply")
    ));
    // With nothing to repeat, still Go's error.
    for p in ["(?i)*", "a|(?i)*", "((?i)*)"] {
        assert!(compile(p).is_err(), "{p}");
    }
}

/// A `{` that starts no repetition is an item itself: a repetition after it takes it (the
/// `{0}` rewrite took the item before, so `^a{{0}$` did not match `a`).
#[test]
fn a_repetition_after_a_literal_brace_takes_the_brace() {
    let re = compile("^a{{0}$").unwrap();
    assert!(re.is_match("a"));
    assert!(!re.is_match("a{"));
}

/// Found by the closing review: the `{0}` rewrite inserts at a group's start, so groups nested
/// 100,000 deep, each repeated `{0}` times, cost the square of the pattern (a `policy build`
/// checking it natively did not end). Go refuses nesting past 1,000; so does the translator.
#[test]
fn groups_nested_past_gos_bound_are_refused_before_any_rewrite() {
    let deep = |n: usize| format!("{}a{}", "(".repeat(n), "){0}".repeat(n));
    assert!(matches!(
        translate(&deep(100_000)),
        Err(Error::Syntax(m)) if m.contains("nests too deeply")
    ));
    assert!(translate(&deep(1000)).is_ok());
}

#[test]
fn replace_is_gos_replace_all() {
    let replace = |p: &str, s: &str, t: &str| replace_all(&compile(p).unwrap(), s, t);
    assert_eq!(replace("a*", "baaab", "-"), "-b-b-");
    assert_eq!(replace(r"(\w+)@(\w+)", "ada@x", "$2 at $1"), "x at ada");
    assert_eq!(replace(r"(\w+)", "ab", "$1x"), "", "`$1x` names group `1x`");
    assert_eq!(replace(r"(\w+)", "ab", "${1}x"), "abx");
    assert_eq!(replace(r"(?P<u>\w+)", "ab", "<$u>"), "<ab>");
    assert_eq!(replace(r"(\w+)", "ab", "$$1"), "$1");
    assert_eq!(
        replace(r"(\w+)", "ab", "$01"),
        "",
        "`$01` is a name, not group 1"
    );
    assert_eq!(replace(r"(\w+)", "ab", "${"), "${");
    assert_eq!(replace(r"(\w+)", "ab", "$"), "$");
    assert_eq!(
        replace("(a)", "ab", "$1²"),
        "a²b",
        "² is no decimal digit (Nd)"
    );
    assert_eq!(
        replace("(a)", "ab", "$1é"),
        "b",
        "é is a letter: group `1é`"
    );
}

#[test]
fn template_match_is_opas() {
    let t = |tpl: &str, v: &str| template_match(tpl, v, "{", "}");
    assert_eq!(t("urn:foo:{.*}", "urn:foo:bar:baz"), Ok(true));
    assert_eq!(t("urn:foo.bar:{[a-z]+}", "urn:foo.bar:baz"), Ok(true));
    assert_eq!(t("urn:foo.bar:{[a-z]+}", "urn:fooxbar:baz"), Ok(false));
    assert_eq!(t("urn:{\\d+}", "urn:12"), Ok(true));
    assert_eq!(t("urn:{\\d+}", "urn:12x"), Ok(false));
    assert!(t("urn:{.*", "urn:x").is_err());
    assert!(t("urn:{[}", "urn:x").is_err());
    assert!(template_match("a", "a", "{{", "}").is_err());
}
