//! Regular expressions as OPA's `regex.*` builtins read them: Go's `regexp` (RE2 syntax, Perl
//! flags), run on Rust's `regex` crate.
//!
//! The two syntaxes look alike and differ where a policy can turn the difference into a
//! decision: Rust reads `\d`, `\w`, `\s` and `\b` as Unicode (Go: ASCII), `[a&&b]`, `[a--b]` and
//! `[[x]]` as set operations (Go: literal characters), `\<` and `\b{start}` as word assertions
//! (Go: `<`, and `{start}` as text), and regorus builds `regex` without its Unicode tables, so
//! `(?i)`, `\pL` and every Perl class were "invalid regex" (undefined under non-strict
//! builtin errors: a deny rule that never fires). So a pattern is parsed here by Go's grammar
//! (`regexp/syntax/parse.go`) and written out as the Rust pattern with the same meaning: every
//! literal escaped, every class spelled out, anything Go refuses refused. The builtins then
//! iterate matches as Go does (an empty match right after a match is skipped), which Rust's
//! iterators do not.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write;

use regex::{Regex, RegexBuilder};

/// The most a compiled pattern may take (bytes of the NFA, the `regex` crate's own default):
/// bounds the memory and the time a pattern from the input can cost. A Unicode class is tens of
/// kilobytes, so `^[\pL\pN ._-]{1,64}$` needs megabytes; Go's own bound is about 3.3 million
/// instructions, larger still, so a pattern between the two is refused here alone. So is one
/// nested deeper than the `regex` crate's 250 (Go's bound is 1,000): its compiler recurses, and
/// 1,000 levels overflow a thread's stack.
pub const SIZE_LIMIT: usize = 10 << 20;

/// The largest product of nested counted repetitions (`(a{10}){100}`), Go's `repeatIsValid`.
const MAX_REPEAT: u64 = 1000;

/// The deepest groups may nest: Go refuses a pattern whose syntax tree is deeper than 1,000.
const MAX_NESTING: usize = 1000;

/// Why a pattern cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Go refuses it (`regexp.Compile` fails): a builtin error, as in OPA.
    Syntax(String),
    /// It compiles to more than [`SIZE_LIMIT`] or nests too deep: refused whatever the
    /// builtin-error mode, as a resource limit (an evaluation error: the host denies).
    TooBig,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Syntax(m) => f.write_str(m),
            Error::TooBig => write!(
                f,
                "the pattern compiles to more than {SIZE_LIMIT} bytes or nests deeper than 250"
            ),
        }
    }
}

/// Compiles a Go pattern.
pub fn compile(pattern: &str) -> Result<Regex, Error> {
    let rust = translate(pattern)?;
    RegexBuilder::new(&rust)
        .size_limit(SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => Error::TooBig,
            // Nested deeper than the crate's compiler may recurse: a limit of this engine's.
            e if e.to_string().contains("nested parentheses") => Error::TooBig,
            e => Error::Syntax(format!(
                "error parsing regexp: {}",
                last_line(&e.to_string())
            )),
        })
}

/// The `error: ...` line of the `regex` crate's multi-line message.
fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or(s).trim()
}

/// The Rust pattern that means what the Go pattern `pattern` means, or Go's refusal.
pub fn translate(pattern: &str) -> Result<String, Error> {
    let mut t = Translator {
        rest: pattern,
        out: String::with_capacity(pattern.len() + 16),
        groups: Vec::new(),
        last_weight: 1,
        weight: 1,
        named: 0,
        item_start: 0,
        repeatable: false,
        repeats: 0,
        flags_at: None,
        ungreedy: false,
    };
    t.run()
        .map_err(|m| Error::Syntax(format!("error parsing regexp: {m}")))?;
    Ok(t.out)
}

struct Translator<'a> {
    rest: &'a str,
    out: String,
    /// For each open group, the heaviest item before it ([`Translator::weight`] of the
    /// enclosing level, saved), where the group starts in `out`, and `ungreedy` before it.
    groups: Vec<(u64, usize, bool)>,
    /// The product of the counted repetitions in the last item (1: none): Go refuses one whose
    /// nested counts multiply past [`MAX_REPEAT`].
    last_weight: u64,
    /// The heaviest item so far at this level of groups.
    weight: u64,
    /// Named groups written so far.
    named: usize,
    /// Where the last item starts in `out` (a group's `(` for a group).
    item_start: usize,
    /// Whether the last item can be repeated: not at the start, nor after `|` or `(` (Go:
    /// "missing argument to repetition operator").
    repeatable: bool,
    /// How many repetitions the last item carries: more than one where something that is no
    /// item came between (`a*(?i)*` repeats `a*` again), each a level of nesting.
    repeats: usize,
    /// Where flag changes written after the last item start in `out`, and `ungreedy` before
    /// them: Go repeats the item before them (`a(?i)*` is `a*`), so they move past a repetition.
    flags_at: Option<(usize, bool)>,
    /// Whether `U` is in effect (repetitions lazy unless followed by `?`).
    ungreedy: bool,
}

/// What [`Translator::item`] read.
#[derive(PartialEq)]
enum Read {
    /// An item, or a group's opening or closing.
    Item,
    /// Nothing Go puts on its stack: a flag change, `(?)`, `\Q\E`. The item before stays
    /// the last.
    NoItem,
}

/// What [`Translator::group`] read after `(`, with the `U` flag it sets or clears, if any.
enum Group {
    Open(Option<bool>),
    Flags(Option<bool>),
    Nothing,
}

type Step = Result<(), String>;

const PERL_CLASSES: [(char, &str, bool); 6] = [
    ('d', "0-9", false),
    ('D', "0-9", true),
    ('s', r"\t\n\x0C\r ", false),
    ('S', r"\t\n\x0C\r ", true),
    ('w', "0-9A-Za-z_", false),
    ('W', "0-9A-Za-z_", true),
];

const POSIX_CLASSES: [&str; 14] = [
    "alnum", "alpha", "ascii", "blank", "cntrl", "digit", "graph", "lower", "print", "punct",
    "space", "upper", "word", "xdigit",
];

/// General categories by their loose names (lower case, no `_`, `-` or space), as Go 1.25 reads
/// them (Unicode's aliases), with the name the `regex` crate knows.
const CATEGORIES: [(&str, &str); 80] = [
    ("c", "Other"),
    ("casedletter", "Cased_Letter"),
    ("cc", "Control"),
    ("cf", "Format"),
    ("closepunctuation", "Close_Punctuation"),
    ("cn", "Unassigned"),
    ("cntrl", "Control"),
    ("co", "Private_Use"),
    ("combiningmark", "Mark"),
    ("connectorpunctuation", "Connector_Punctuation"),
    ("control", "Control"),
    ("cs", "Surrogate"),
    ("currencysymbol", "Currency_Symbol"),
    ("dashpunctuation", "Dash_Punctuation"),
    ("decimalnumber", "Decimal_Number"),
    ("digit", "Decimal_Number"),
    ("enclosingmark", "Enclosing_Mark"),
    ("finalpunctuation", "Final_Punctuation"),
    ("format", "Format"),
    ("initialpunctuation", "Initial_Punctuation"),
    ("l", "Letter"),
    ("lc", "Cased_Letter"),
    ("letter", "Letter"),
    ("letternumber", "Letter_Number"),
    ("lineseparator", "Line_Separator"),
    ("ll", "Lowercase_Letter"),
    ("lm", "Modifier_Letter"),
    ("lo", "Other_Letter"),
    ("lowercaseletter", "Lowercase_Letter"),
    ("lt", "Titlecase_Letter"),
    ("lu", "Uppercase_Letter"),
    ("m", "Mark"),
    ("mark", "Mark"),
    ("mathsymbol", "Math_Symbol"),
    ("mc", "Spacing_Mark"),
    ("me", "Enclosing_Mark"),
    ("mn", "Nonspacing_Mark"),
    ("modifierletter", "Modifier_Letter"),
    ("modifiersymbol", "Modifier_Symbol"),
    ("n", "Number"),
    ("nd", "Decimal_Number"),
    ("nl", "Letter_Number"),
    ("no", "Other_Number"),
    ("nonspacingmark", "Nonspacing_Mark"),
    ("number", "Number"),
    ("openpunctuation", "Open_Punctuation"),
    ("other", "Other"),
    ("otherletter", "Other_Letter"),
    ("othernumber", "Other_Number"),
    ("otherpunctuation", "Other_Punctuation"),
    ("othersymbol", "Other_Symbol"),
    ("p", "Punctuation"),
    ("paragraphseparator", "Paragraph_Separator"),
    ("pc", "Connector_Punctuation"),
    ("pd", "Dash_Punctuation"),
    ("pe", "Close_Punctuation"),
    ("pf", "Final_Punctuation"),
    ("pi", "Initial_Punctuation"),
    ("po", "Other_Punctuation"),
    ("privateuse", "Private_Use"),
    ("ps", "Open_Punctuation"),
    ("punct", "Punctuation"),
    ("punctuation", "Punctuation"),
    ("s", "Symbol"),
    ("sc", "Currency_Symbol"),
    ("separator", "Separator"),
    ("sk", "Modifier_Symbol"),
    ("sm", "Math_Symbol"),
    ("so", "Other_Symbol"),
    ("spaceseparator", "Space_Separator"),
    ("spacingmark", "Spacing_Mark"),
    ("surrogate", "Surrogate"),
    ("symbol", "Symbol"),
    ("titlecaseletter", "Titlecase_Letter"),
    ("unassigned", "Unassigned"),
    ("uppercaseletter", "Uppercase_Letter"),
    ("z", "Separator"),
    ("zl", "Line_Separator"),
    ("zp", "Paragraph_Separator"),
    ("zs", "Space_Separator"),
];

/// Scripts of Unicode 15.0 (Go's tables), by their long names only: Go reads no script codes
/// (`Latn`) and no `Is` prefix, where the `regex` crate would.
const SCRIPTS: [&str; 163] = [
    "Adlam",
    "Ahom",
    "Anatolian_Hieroglyphs",
    "Arabic",
    "Armenian",
    "Avestan",
    "Balinese",
    "Bamum",
    "Bassa_Vah",
    "Batak",
    "Bengali",
    "Bhaiksuki",
    "Bopomofo",
    "Brahmi",
    "Braille",
    "Buginese",
    "Buhid",
    "Canadian_Aboriginal",
    "Carian",
    "Caucasian_Albanian",
    "Chakma",
    "Cham",
    "Cherokee",
    "Chorasmian",
    "Common",
    "Coptic",
    "Cuneiform",
    "Cypriot",
    "Cypro_Minoan",
    "Cyrillic",
    "Deseret",
    "Devanagari",
    "Dives_Akuru",
    "Dogra",
    "Duployan",
    "Egyptian_Hieroglyphs",
    "Elbasan",
    "Elymaic",
    "Ethiopic",
    "Georgian",
    "Glagolitic",
    "Gothic",
    "Grantha",
    "Greek",
    "Gujarati",
    "Gunjala_Gondi",
    "Gurmukhi",
    "Han",
    "Hangul",
    "Hanifi_Rohingya",
    "Hanunoo",
    "Hatran",
    "Hebrew",
    "Hiragana",
    "Imperial_Aramaic",
    "Inherited",
    "Inscriptional_Pahlavi",
    "Inscriptional_Parthian",
    "Javanese",
    "Kaithi",
    "Kannada",
    "Katakana",
    "Kawi",
    "Kayah_Li",
    "Kharoshthi",
    "Khitan_Small_Script",
    "Khmer",
    "Khojki",
    "Khudawadi",
    "Lao",
    "Latin",
    "Lepcha",
    "Limbu",
    "Linear_A",
    "Linear_B",
    "Lisu",
    "Lycian",
    "Lydian",
    "Mahajani",
    "Makasar",
    "Malayalam",
    "Mandaic",
    "Manichaean",
    "Marchen",
    "Masaram_Gondi",
    "Medefaidrin",
    "Meetei_Mayek",
    "Mende_Kikakui",
    "Meroitic_Cursive",
    "Meroitic_Hieroglyphs",
    "Miao",
    "Modi",
    "Mongolian",
    "Mro",
    "Multani",
    "Myanmar",
    "Nabataean",
    "Nag_Mundari",
    "Nandinagari",
    "New_Tai_Lue",
    "Newa",
    "Nko",
    "Nushu",
    "Nyiakeng_Puachue_Hmong",
    "Ogham",
    "Ol_Chiki",
    "Old_Hungarian",
    "Old_Italic",
    "Old_North_Arabian",
    "Old_Permic",
    "Old_Persian",
    "Old_Sogdian",
    "Old_South_Arabian",
    "Old_Turkic",
    "Old_Uyghur",
    "Oriya",
    "Osage",
    "Osmanya",
    "Pahawh_Hmong",
    "Palmyrene",
    "Pau_Cin_Hau",
    "Phags_Pa",
    "Phoenician",
    "Psalter_Pahlavi",
    "Rejang",
    "Runic",
    "Samaritan",
    "Saurashtra",
    "Sharada",
    "Shavian",
    "Siddham",
    "SignWriting",
    "Sinhala",
    "Sogdian",
    "Sora_Sompeng",
    "Soyombo",
    "Sundanese",
    "Syloti_Nagri",
    "Syriac",
    "Tagalog",
    "Tagbanwa",
    "Tai_Le",
    "Tai_Tham",
    "Tai_Viet",
    "Takri",
    "Tamil",
    "Tangsa",
    "Tangut",
    "Telugu",
    "Thaana",
    "Thai",
    "Tibetan",
    "Tifinagh",
    "Tirhuta",
    "Toto",
    "Ugaritic",
    "Vai",
    "Vithkuqi",
    "Wancho",
    "Warang_Citi",
    "Yezidi",
    "Yi",
    "Zanabazar_Square",
];

impl Translator<'_> {
    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.rest = &self.rest[c.len_utf8()..];
        Some(c)
    }

    fn eat(&mut self, prefix: &str) -> bool {
        match self.rest.strip_prefix(prefix) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn run(&mut self) -> Step {
        // Whether the last token was a repetition: Perl mode refuses `a**`, `a{2}{3}`.
        let mut last_repeat = false;
        while let Some(c) = self.peek() {
            let (len, count) = match c {
                '*' | '+' | '?' => (1, 0),
                // `{` that starts no repetition is itself, an item.
                '{' => repeat_braces(self.rest)?.unwrap_or((0, 0)),
                _ => (0, 0),
            };
            if len == 0 {
                self.next_item()?;
                last_repeat = false;
                continue;
            }
            let op = &self.rest[..len];
            if !self.repeatable && !last_repeat {
                return Err(format!("missing argument to repetition operator: `{op}`"));
            }
            if last_repeat {
                return Err(format!("invalid nested repetition operator: `{c}`"));
            }
            // Go's `repeatIsValid`: counts nested in counts multiply.
            if count > 0 {
                let weight = self.last_weight.saturating_mul(count);
                if weight > MAX_REPEAT {
                    return Err(format!("invalid repeat count: `{op}`"));
                }
                self.last_weight = weight;
                self.weight = self.weight.max(weight);
            }
            self.rest = &self.rest[len..];
            let lazy = self.eat("?");
            self.repeat(op, lazy)?;
            last_repeat = true;
        }
        Ok(())
    }

    /// The next item; one that is no item ([`Read::NoItem`]) leaves the last one the last.
    fn next_item(&mut self) -> Step {
        let last = (self.item_start, self.repeatable, self.last_weight);
        let (at, ungreedy) = (self.out.len(), self.ungreedy);
        self.last_weight = 1;
        self.item_start = at;
        if self.item()? == Read::Item {
            (self.repeats, self.flags_at) = (0, None);
        } else {
            (self.item_start, self.repeatable, self.last_weight) = last;
            if self.out.len() > at && self.flags_at.is_none() {
                self.flags_at = Some((at, ungreedy));
            }
        }
        self.weight = self.weight.max(self.last_weight);
        Ok(())
    }

    /// Writes the repetition `op` of the last item (`lazy`: `op` was followed by `?`).
    fn repeat(&mut self, op: &str, lazy: bool) -> Step {
        // Flag changes between the item and `op` (`a(?i)*`) go after the repetition. Its
        // laziness is Go's, of the flags at `op`; the `regex` crate reads the flags before them.
        let (moved, ungreedy) = match self.flags_at.take() {
            Some((at, ungreedy)) => (self.out.split_off(at), ungreedy),
            None => (String::new(), self.ungreedy),
        };
        if self.repeats > 0 {
            // Each a level deeper (and each insertion moves the item): Go's bound, as groups'.
            if self.repeats + self.groups.len() > MAX_NESTING {
                return Err("expression nests too deeply".into());
            }
            self.out.insert_str(self.item_start, "(?:");
            self.out.push(')');
        }
        if matches!(op, "{0}" | "{0,0}") {
            // `x{0}`: Go keeps the groups in `x` (they never take part); the `regex` crate
            // drops them, and every later group's number moved. Written as `x` followed by a
            // class of no character, optional: the same empty match, the groups kept.
            self.out.insert_str(self.item_start, "(?:");
            self.out.push_str(r"[^\x00-\x{10FFFF}])?");
        } else {
            self.out.push_str(op);
        }
        if lazy != (ungreedy != self.ungreedy) {
            self.out.push('?');
        }
        self.out.push_str(&moved);
        self.repeats += 1;
        Ok(())
    }

    /// One item that is not a repetition.
    fn item(&mut self) -> Result<Read, String> {
        let Some(c) = self.bump() else {
            return Ok(Read::NoItem);
        };
        match c {
            '(' => {
                let before = self.out.len();
                match self.group()? {
                    Group::Open(ungreedy) => {
                        self.repeatable = false;
                        // Its items weigh in at its close.
                        self.groups.push((self.weight, before, self.ungreedy));
                        self.weight = 1;
                        self.ungreedy = ungreedy.unwrap_or(self.ungreedy);
                        // Go's bound (its syntax tree is at least this deep). It also bounds
                        // the `{0}` rewrite, which inserts at a group's start: each insertion
                        // moves at most the text of the groups open around it.
                        if self.groups.len() > MAX_NESTING {
                            return Err("expression nests too deeply".into());
                        }
                        Ok(Read::Item)
                    }
                    Group::Flags(ungreedy) => {
                        self.ungreedy = ungreedy.unwrap_or(self.ungreedy);
                        Ok(Read::NoItem)
                    }
                    Group::Nothing => Ok(Read::NoItem),
                }
            }
            ')' => {
                self.out.push(')');
                self.repeatable = true;
                self.last_weight = self.weight;
                let (weight, start, ungreedy) =
                    self.groups
                        .pop()
                        .unwrap_or((1, self.item_start, self.ungreedy));
                (self.weight, self.item_start, self.ungreedy) = (weight, start, ungreedy);
                Ok(Read::Item)
            }
            '|' | '^' | '$' | '.' => {
                self.out.push(c);
                self.repeatable = c != '|';
                Ok(Read::Item)
            }
            '[' => {
                self.repeatable = true;
                self.class().map(|()| Read::Item)
            }
            '\\' => {
                let before = self.out.len();
                self.repeatable = true;
                self.escape_outside()?;
                Ok(match self.out.len() > before {
                    true => Read::Item,
                    false => Read::NoItem,
                })
            }
            c => {
                self.repeatable = true;
                literal(&mut self.out, c);
                Ok(Read::Item)
            }
        }
    }

    fn group(&mut self) -> Result<Group, String> {
        if !self.eat("?") {
            self.out.push('(');
            return Ok(Group::Open(None));
        }
        if self.eat("P<") || self.eat("<") {
            let end = self
                .rest
                .find('>')
                .ok_or_else(|| format!("invalid named capture: `{}`", self.rest))?;
            let name = &self.rest[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid named capture: `(?P<{name}>`"));
            }
            // Go takes a name twice (`(?P<n>a)|(?P<n>b)`) and one that starts with a digit;
            // the `regex` crate takes neither. Each is written as `_<k>.<name>`, unique, which
            // no Go name can be (Go's have no `.`), read back by [`go_group_name`].
            let _ = write!(self.out, "(?P<_{}.{name}>", self.named);
            self.named += 1;
            self.rest = &self.rest[end + 1..];
            return Ok(Group::Open(None));
        }
        // Flags: `(?i)`, `(?i-s:...)`; Go knows i, m, s and U.
        let mut flags = String::new();
        let mut negated = false;
        let mut after_minus = false;
        // What it does to `U`: the last mention wins, as in Go.
        let mut ungreedy = None;
        loop {
            match self.bump() {
                Some(f @ ('i' | 'm' | 's' | 'U')) => {
                    flags.push(f);
                    after_minus = false;
                    if f == 'U' {
                        ungreedy = Some(!negated);
                    }
                }
                Some('-') if !negated => {
                    flags.push('-');
                    negated = true;
                    after_minus = true;
                }
                // `(?:` is a group without a capture, `(?)` changes nothing.
                Some(')') if flags.is_empty() => return Ok(Group::Nothing),
                Some(end @ (':' | ')')) if !after_minus => {
                    self.out.push_str("(?");
                    self.out.push_str(&flags);
                    self.out.push(end);
                    return Ok(match end {
                        ':' => Group::Open(ungreedy),
                        _ => Group::Flags(ungreedy),
                    });
                }
                _ => return Err("missing argument to repetition operator or invalid or unsupported Perl syntax: `(?`".into()),
            }
        }
    }

    fn escape_outside(&mut self) -> Step {
        let Some(c) = self.peek() else {
            return Err("trailing backslash at end of expression".into());
        };
        match c {
            'A' | 'z' => {
                self.bump();
                self.out.push('\\');
                self.out.push(c);
            }
            // Go's word boundary is ASCII.
            'b' | 'B' => {
                self.bump();
                self.out.push_str("(?-u:\\");
                self.out.push(c);
                self.out.push(')');
            }
            'C' => return Err("invalid escape sequence: `\\C`".into()),
            'Q' => {
                self.bump();
                let (lit, rest) = match self.rest.find("\\E") {
                    Some(i) => (&self.rest[..i], &self.rest[i + 2..]),
                    None => (self.rest, ""),
                };
                for ch in lit.chars() {
                    // Each character its own item: a repetition after `\E` takes the last.
                    self.item_start = self.out.len();
                    literal(&mut self.out, ch);
                }
                self.rest = rest;
            }
            'p' | 'P' => {
                let class = self.unicode_class()?;
                self.out.push_str(&class);
            }
            _ => {
                if let Some((negated, ranges)) = perl_class(c) {
                    self.bump();
                    self.out.push_str(if negated { "[^" } else { "[" });
                    self.out.push_str(ranges);
                    self.out.push(']');
                } else {
                    let ch = self.char_escape()?;
                    literal(&mut self.out, ch);
                }
            }
        }
        Ok(())
    }

    /// After the backslash: Go's `parseEscape` (octal, hex, `\a\f\n\r\t\v`, punctuation).
    fn char_escape(&mut self) -> Result<char, String> {
        let start = self.rest;
        let c = self
            .bump()
            .ok_or("trailing backslash at end of expression")?;
        let invalid = |rest: &str| {
            let used = &start[..start.len() - rest.len()];
            format!("invalid escape sequence: `\\{used}`")
        };
        if c.is_ascii() && !c.is_ascii_alphanumeric() {
            return Ok(c);
        }
        match c {
            '1'..='7' if !self.peek().is_some_and(|d| ('0'..='7').contains(&d)) => {
                Err(invalid(self.rest))
            }
            '0'..='7' => {
                let mut v = c as u32 - '0' as u32;
                for _ in 0..2 {
                    match self.peek() {
                        Some(d @ '0'..='7') => {
                            self.bump();
                            v = v * 8 + (d as u32 - '0' as u32);
                        }
                        _ => break,
                    }
                }
                char::from_u32(v).ok_or_else(|| invalid(self.rest))
            }
            'x' => {
                let digits = if self.eat("{") {
                    let end = self.rest.find('}').ok_or_else(|| invalid(""))?;
                    let d = &self.rest[..end];
                    self.rest = &self.rest[end + 1..];
                    d
                } else {
                    let two = self.rest.get(..2).ok_or_else(|| invalid(""))?;
                    self.rest = &self.rest[2..];
                    two
                };
                if digits.is_empty() || !digits.chars().all(|d| d.is_ascii_hexdigit()) {
                    return Err(invalid(self.rest));
                }
                u32::from_str_radix(digits, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| invalid(self.rest))
            }
            'a' => Ok('\x07'),
            'f' => Ok('\x0C'),
            'n' => Ok('\n'),
            'r' => Ok('\r'),
            't' => Ok('\t'),
            'v' => Ok('\x0B'),
            _ => Err(invalid(self.rest)),
        }
    }

    /// `\pL`, `\p{Greek}`, `\P{L}`, `\p{^Greek}` (at the backslash's `p`), as Rust's class.
    /// Names are Go's (1.25: loose, Unicode's aliases): general categories, scripts by their
    /// long names, `Any`, `ASCII`, `Assigned`; a script is Go's Script, not the `regex` crate's
    /// default Script_Extensions. Looked up in tables, never by compiling a class.
    fn unicode_class(&mut self) -> Result<String, String> {
        let mut negated = self.bump() == Some('P');
        let name = if self.eat("{") {
            let end = self
                .rest
                .find('}')
                .ok_or_else(|| "invalid character class range: `\\p{`".to_string())?;
            let n = &self.rest[..end];
            self.rest = &self.rest[end + 1..];
            n
        } else {
            let n = self
                .rest
                .get(..self.peek().map_or(0, char::len_utf8))
                .filter(|n| !n.is_empty())
                .ok_or_else(|| "invalid character class range: `\\p`".to_string())?;
            self.rest = &self.rest[n.len()..];
            n
        };
        let name = match name.strip_prefix('^') {
            Some(n) => {
                negated = !negated;
                n
            }
            None => name,
        };
        let bad = || format!("invalid character class range: `\\p{{{name}}}`");
        let p = if negated { 'P' } else { 'p' };
        let loose: String = name
            .chars()
            .filter(|c| !matches!(c, '_' | '-' | ' '))
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if !name.is_ascii() || loose.is_empty() {
            return Err(bad());
        }
        let special = ["any", "ascii", "assigned"]
            .iter()
            .zip(["Any", "ASCII", "Assigned"])
            .find(|(l, _)| **l == loose)
            .map(|(_, n)| n);
        if let Some(n) = special {
            return Ok(format!("\\{p}{{{n}}}"));
        }
        if let Some((_, n)) = CATEGORIES.iter().find(|(l, _)| *l == loose) {
            return Ok(format!("\\{p}{{gc={n}}}"));
        }
        let script = SCRIPTS.iter().find(|n| {
            n.chars()
                .filter(|c| *c != '_')
                .map(|c| c.to_ascii_lowercase())
                .eq(loose.chars())
        });
        match script {
            Some(n) => Ok(format!("\\{p}{{sc={n}}}")),
            None => Err(bad()),
        }
    }

    /// A bracketed class, after its `[`, by Go's `parseClass`.
    fn class(&mut self) -> Step {
        let whole_start = self.rest;
        let mut out = String::from("[");
        if self.eat("^") {
            out.push('^');
        }
        let mut first = true;
        loop {
            let missing = || format!("missing closing ]: `[{whole_start}`");
            match self.peek() {
                None => return Err(missing()),
                Some(']') if !first => {
                    self.bump();
                    break;
                }
                _ => {}
            }
            first = false;
            // `[:alpha:]`: a POSIX class where `:]` closes it; a bad name is an error.
            if self.rest.starts_with("[:")
                && let Some(end) = self.rest[2..].find(":]")
            {
                let name = &self.rest[2..2 + end];
                let bare = name.strip_prefix('^').unwrap_or(name);
                if !POSIX_CLASSES.contains(&bare) {
                    return Err(format!("invalid character class range: `[:{name}:]`"));
                }
                out.push_str("[:");
                out.push_str(name);
                out.push_str(":]");
                self.rest = &self.rest[2 + end + 2..];
                continue;
            }
            if self.rest.starts_with("\\p") || self.rest.starts_with("\\P") {
                self.bump();
                out.push_str(&self.unicode_class()?);
                continue;
            }
            if let Some((negated, ranges)) = self
                .rest
                .strip_prefix('\\')
                .and_then(|r| r.chars().next())
                .and_then(perl_class)
            {
                self.rest = &self.rest[2..];
                // A negated class inside a class: Rust's nested class is a union.
                out.push_str(if negated { "[^" } else { "" });
                out.push_str(ranges);
                out.push_str(if negated { "]" } else { "" });
                continue;
            }
            let lo = self.class_char().ok_or_else(missing)??;
            let mut hi = lo;
            if self.rest.len() >= 2
                && self.rest.starts_with('-')
                && !self.rest[1..].starts_with(']')
            {
                self.bump();
                hi = self.class_char().ok_or_else(missing)??;
                if hi < lo {
                    return Err(format!("invalid character class range: `{lo}-{hi}`"));
                }
            }
            literal(&mut out, lo);
            if hi != lo {
                out.push('-');
                literal(&mut out, hi);
            }
        }
        out.push(']');
        self.out.push_str(&out);
        Ok(())
    }

    fn class_char(&mut self) -> Option<Result<char, String>> {
        match self.bump()? {
            '\\' => Some(self.char_escape()),
            c => Some(Ok(c)),
        }
    }
}

/// `\d`'s and its kin's ASCII ranges (Go's Perl classes), and whether it is negated.
fn perl_class(c: char) -> Option<(bool, &'static str)> {
    PERL_CLASSES
        .iter()
        .find(|(name, ..)| *name == c)
        .map(|(_, ranges, negated)| (*negated, *ranges))
}

/// The length of a repetition `{n}`, `{n,}` or `{n,m}` at the start of `s` and the count Go
/// weighs it by (`m`, or `n` when unbounded), `None` where Go reads the `{` as itself; an error
/// for counts over 1,000 (Go's limit).
fn repeat_braces(s: &str) -> Result<Option<(usize, u64)>, String> {
    // Forward over what a repetition may hold only: a `}` further on is no business of this `{`
    // (a pattern of many `{` stays linear).
    let Some(end) = s
        .bytes()
        .skip(1)
        .position(|b| !(b.is_ascii_digit() || b == b','))
        .map(|i| i + 1)
        .filter(|&i| s.as_bytes()[i] == b'}')
    else {
        return Ok(None);
    };
    let inner = &s[1..end];
    let (min, max) = match inner.split_once(',') {
        Some((min, max)) => (min, Some(max)),
        None => (inner, None),
    };
    // Go's parseInt: digits, no leading zero; too long is too large.
    let number = |n: &str| -> Option<u64> {
        let digits = !n.is_empty() && n.chars().all(|c| c.is_ascii_digit());
        match digits && !(n.len() > 1 && n.starts_with('0')) {
            true if n.len() > 9 => Some(u64::MAX),
            true => n.parse().ok(),
            false => None,
        }
    };
    let Some(lo) = number(min) else {
        return Ok(None);
    };
    let hi = match max {
        None => Some(lo),
        Some("") => None,
        Some(m) => match number(m) {
            Some(v) => Some(v),
            None => return Ok(None),
        },
    };
    if lo > 1000 || hi.is_some_and(|h| h > 1000 || h < lo) {
        return Err(format!("invalid repeat count: `{}`", &s[..=end]));
    }
    Ok(Some((end + 1, hi.unwrap_or(lo))))
}

/// `c` as a literal, inside a class or outside: letters and digits as themselves, anything else
/// by its code point, so no character means to Rust what Go would not mean by it.
fn literal(out: &mut String, c: char) {
    if c.is_alphanumeric() || c == '_' || c == ' ' {
        out.push(c);
    } else {
        let _ = write!(out, "\\x{{{:X}}}", c as u32);
    }
}

/// Where Go's `FindAll*` finds its matches: leftmost-first, non-overlapping, an empty match
/// right after the previous match skipped; at most `n` (all when `n` is negative).
pub fn all_matches<'h>(re: &Regex, haystack: &'h str, n: i64) -> Vec<regex::Captures<'h>> {
    let mut found = Vec::new();
    let mut pos = 0;
    let mut prev_end: Option<usize> = None;
    while (n < 0 || (found.len() as i64) < n) && pos <= haystack.len() {
        let Some(caps) = re.captures_at(haystack, pos) else {
            break;
        };
        let m = caps.get(0).expect("group 0 is the match");
        let accept = !(m.end() == pos && Some(m.start()) == prev_end);
        if m.end() == pos {
            pos += haystack[pos..].chars().next().map_or(1, char::len_utf8);
        } else {
            pos = m.end();
        }
        prev_end = Some(m.end());
        if accept {
            found.push(caps);
        }
    }
    found
}

/// Go's `Regexp.Split(s, -1)`; `pattern` is the Go pattern `re` was compiled from (whether it is
/// empty decides an empty `s`'s split).
pub fn split<'h>(re: &Regex, pattern: &str, s: &'h str) -> Vec<&'h str> {
    if s.is_empty() && !pattern.is_empty() {
        return alloc::vec![""];
    }
    let mut parts = Vec::new();
    let mut beg = 0;
    let mut end = 0;
    for caps in all_matches(re, s, -1) {
        let m = caps.get(0).expect("group 0 is the match");
        end = m.start();
        if m.end() != 0 {
            parts.push(&s[beg..end]);
        }
        beg = m.end();
    }
    if end != s.len() {
        parts.push(&s[beg..]);
    }
    parts
}

/// Go's `Regexp.ReplaceAllString`: `$1`, `${name}`, `$name` (the longest run of letters, digits
/// and `_`), `$$`.
pub fn replace_all(re: &Regex, src: &str, template: &str) -> String {
    // Compiled per call: nothing allocated during an evaluation may outlive it (the module's
    // heap is reset after each).
    let letter_or_digit = template
        .contains('$')
        .then(|| Regex::new(r"^[\pL\p{Nd}]$").expect("a valid pattern"));
    let mut out = String::with_capacity(src.len());
    let mut last_end = 0;
    let mut search = 0;
    while search <= src.len() {
        let Some(caps) = re.captures_at(src, search) else {
            break;
        };
        let m = caps.get(0).expect("group 0 is the match");
        out.push_str(&src[last_end..m.start()]);
        if m.end() > last_end || m.start() == 0 {
            expand(re, &caps, template, letter_or_digit.as_ref(), &mut out);
        }
        last_end = m.end();
        let width = src[search..].chars().next().map_or(1, char::len_utf8);
        if search + width > m.end() {
            search += width;
        } else if search + 1 > m.end() {
            search += 1;
        } else {
            search = m.end();
        }
    }
    out.push_str(&src[last_end..]);
    out
}

/// The Go name of a group the translator named (`_<k>.<name>`).
fn go_group_name(rust: &str) -> Option<&str> {
    Some(rust.strip_prefix('_')?.split_once('.')?.1)
}

/// Go's `Regexp.expand` for one match; `letter_or_digit` matches a character of `\pL` or `\p{Nd}`.
fn expand(
    re: &Regex,
    caps: &regex::Captures<'_>,
    mut template: &str,
    letter_or_digit: Option<&Regex>,
    out: &mut String,
) {
    while let Some(i) = template.find('$') {
        out.push_str(&template[..i]);
        template = &template[i + 1..];
        if let Some(rest) = template.strip_prefix('$') {
            out.push('$');
            template = rest;
            continue;
        }
        // Go's: letters (L) and decimal digits (Nd), `_`.
        let name_char = |c: char| {
            c == '_'
                || c.is_ascii_alphanumeric()
                || (!c.is_ascii()
                    && letter_or_digit.is_some_and(|r| r.is_match(c.encode_utf8(&mut [0; 4]))))
        };
        let (name, rest) = match template.strip_prefix('{') {
            Some(braced) => match braced.find('}') {
                Some(e) if e > 0 && braced[..e].chars().all(name_char) => {
                    (&braced[..e], &braced[e + 1..])
                }
                _ => ("", template),
            },
            None => {
                let e = template
                    .char_indices()
                    .find(|(_, c)| !name_char(*c))
                    .map_or(template.len(), |(e, _)| e);
                (&template[..e], &template[e..])
            }
        };
        if name.is_empty() {
            // Malformed: the `$` is itself.
            out.push('$');
            continue;
        }
        template = rest;
        // A number without a leading zero is a group's index, anything else a name.
        let index = (name.chars().all(|c| c.is_ascii_digit())
            && !(name.len() > 1 && name.starts_with('0')))
        .then(|| name.parse::<usize>().ok())
        .flatten();
        let group = match index {
            Some(n) => caps.get(n),
            // Go's: the first group of that name that took part in the match.
            None => re
                .capture_names()
                .enumerate()
                .filter(|(_, n)| n.and_then(go_group_name) == Some(name))
                .find_map(|(i, _)| caps.get(i)),
        };
        if let Some(g) = group {
            out.push_str(g.as_str());
        }
    }
    out.push_str(template);
}

/// OPA's `regex.template_match`: `template` with patterns between the one-byte delimiters
/// (balanced), the rest literal, matching the whole of `value`.
pub fn template_match(template: &str, value: &str, start: &str, end: &str) -> Result<bool, Error> {
    let one = |d: &str, which: &str| -> Result<u8, Error> {
        match d.as_bytes() {
            [b] => Ok(*b),
            _ => Err(Error::Syntax(format!(
                "{which} delimiter has to be exactly one character long but is {} long",
                d.len()
            ))),
        }
    };
    let (open, close) = (one(start, "start")?, one(end, "end")?);
    let unbalanced = || Error::Syntax(format!("unbalanced braces in {template:?}"));
    let mut level = 0i64;
    let mut spans = Vec::new();
    let mut at = 0;
    for (i, b) in template.bytes().enumerate() {
        if b == open {
            level += 1;
            if level == 1 {
                at = i;
            }
        } else if b == close {
            level -= 1;
            if level == 0 {
                spans.push((at, i + 1));
            } else if level < 0 {
                return Err(unbalanced());
            }
        }
    }
    if level != 0 {
        return Err(unbalanced());
    }
    let mut pattern = String::from("^");
    let mut last = 0;
    for (s, e) in spans {
        let inner = template.get(s + 1..e - 1).ok_or_else(unbalanced)?;
        // Each variable's pattern must compile on its own, as OPA checks.
        compile(&format!("^{inner}$"))?;
        pattern.push_str(&quote_meta(template.get(last..s).ok_or_else(unbalanced)?));
        pattern.push('(');
        pattern.push_str(inner);
        pattern.push(')');
        last = e;
    }
    pattern.push_str(&quote_meta(template.get(last..).ok_or_else(unbalanced)?));
    pattern.push('$');
    Ok(compile(&pattern)?.is_match(value))
}

/// Go's `regexp.QuoteMeta`.
fn quote_meta(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;
