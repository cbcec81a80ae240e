//! Globs as OPA's `glob.match` reads them: `github.com/gobwas/glob` v0.2.3 (`glob.Compile(pattern,
//! delimiters...)`, then `Match`), run on Rust's `regex` crate.
//!
//! regorus matched with `globset` on bytes, so `?` was one byte (`admin?` refused `adminé`). Here
//! the pattern is read by gobwas's lexer and parser (`syntax/lexer`, `syntax/ast`), quirks
//! included, and the tree is written out as a regular expression with the meaning gobwas's
//! grammar gives it:
//!
//! - `*`: any run of characters that are not delimiters; `**`: any run at all (so `***` is `**`
//!   then `*`); `?`: one character (a Unicode scalar, not a byte) that is not a delimiter.
//! - `[abc]`, `[a-z]`, `[!abc]`, `[!a-z]`: one character, in (or not in) the list or range;
//!   delimiters are not excluded. A range is exactly `[lo-hi]` (after an optional `!`), with
//!   no escapes; `[a-cx]` is an error, and where the second character is not `-` (`[xa-c]`)
//!   `-` is a listed character. Inside brackets only `\` escapes
//!   (the list, not a range's ends) and `]` ends the list; `]` right after `[` or `[!` ends
//!   an empty class, which is an error, as are an unclosed class, `hi < lo`, and anything
//!   but `]` after a range.
//! - `{a,b}`: alternatives, nesting; `,` and `}` are plain text outside braces; braces left open
//!   at the end are closed there (`{a,b` is `{a,b}`).
//! - `\c`: the character `c`; a trailing `\` is dropped.
//! - A NUL character reads as the end of the pattern where a term starts (the rest is
//!   ignored), is dropped inside text, and is an error inside brackets: gobwas's lexer takes
//!   rune 0 for its end-of-input marker.
//!
//! The regular expression runs in time linear in the input, where gobwas's matcher tree
//! backtracks. Where gobwas's optimised matchers give an answer its grammar does not (`?` and
//! a class on the empty string, where OPA's own cases say false; an empty alternative glued
//! into a fixed-length run, `a{}b`; several delimiters glued into one `Contains` needle, `??`
//! with `[".", "/"]`), this follows the grammar.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write;

use crate::go_builtins::GoError;
use regex::{Regex, RegexBuilder};
use regorus::Value;

#[cfg(test)]
mod tests;

/// The compiled program's size limit: a pattern is at most as large as the policy holding it.
const SIZE_LIMIT: usize = 1 << 24;

/// A compiled glob.
#[derive(Debug, Clone)]
pub struct Glob {
    re: Regex,
}

impl Glob {
    /// Whether `s` matches the whole glob.
    pub fn matches(&self, s: &str) -> bool {
        self.re.is_match(s)
    }
}

/// Compiles `pattern` with `delimiters` (the characters `*` and `?` do not match) as
/// `glob.Compile(pattern, delimiters...)` does; the error is gobwas's message, or (`Hard`) a
/// bound of this engine's that gobwas does not have: braces nested past [`MAX_BRACES`], a
/// pattern whose regex is past the `regex` crate's bounds.
pub(crate) fn compile(pattern: &str, delimiters: &[char]) -> Result<Glob, GoError> {
    let tokens = lex(pattern);
    let tree = parse(&tokens)?;
    let mut re = String::from(r"\A(?:");
    write_nodes(&mut re, &tree, delimiters);
    re.push_str(r")\z");
    RegexBuilder::new(&re)
        .size_limit(SIZE_LIMIT)
        .build()
        .map(|re| Glob { re })
        .map_err(|e| {
            let why = match e {
                regex::Error::CompiledTooBig(_) => "too large".to_string(),
                e => e.to_string(),
            };
            GoError::Hard(format!("the pattern is beyond this engine's bounds: {why}"))
        })
}

/// OPA's `glob.match(pattern, delimiters, match)`: `delimiters` is `null` (none) or an array of
/// one-character strings, the empty array meaning `["."]`.
pub fn builtin(fail: impl crate::go_builtins::Fail) -> Box<dyn regorus::Extension> {
    Box::new(move |args: Vec<Value>| {
        let Ok(pattern) = args[0].as_string() else {
            return fail("glob.match: operand 1 must be string".into());
        };
        let delimiters: Vec<char> = match &args[1] {
            Value::Null => Vec::new(),
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items.iter() {
                    let mut chars = match item.as_string() {
                        Ok(s) => s.chars(),
                        Err(_) => {
                            return fail(
                                "glob.match: operand 2 must be array of strings (or null)".into(),
                            );
                        }
                    };
                    match (chars.next(), chars.next()) {
                        (Some(c), None) => out.push(c),
                        _ => {
                            return fail(
                                "glob.match: operand 2 must be an array of one-character \
                                 strings (or null)"
                                    .into(),
                            );
                        }
                    }
                }
                if out.is_empty() {
                    out.push('.');
                }
                out
            }
            _ => return fail("glob.match: operand 2 must be one of {array, null}".into()),
        };
        let Ok(subject) = args[2].as_string() else {
            return fail("glob.match: operand 3 must be string".into());
        };
        match compile(pattern, &delimiters) {
            Ok(glob) => Ok(Value::from(glob.matches(subject))),
            Err(e) => e.context(&format!("glob.match: {pattern:?}")).answer(fail),
        }
    })
}

/// gobwas's tokens (`syntax/lexer/token.go`), an error ending the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Eof,
    Error(&'static str),
    Text(String),
    Any,
    Super,
    Single,
    Not,
    Separator,
    RangeOpen,
    RangeClose,
    RangeLo(char),
    RangeBetween,
    RangeHi(char),
    TermsOpen,
    TermsClose,
}

/// gobwas's lexer over the pattern's characters. `read` gives `None` at the end and at a NUL
/// (rune 0 is gobwas's end marker); `size` is what the last read consumed, for `unread`.
struct Lexer {
    chars: Vec<char>,
    pos: usize,
    last: usize,
    terms: usize,
    tokens: Vec<Token>,
}

impl Lexer {
    fn read(&mut self) -> Option<char> {
        match self.chars.get(self.pos) {
            Some(&c) => {
                self.pos += 1;
                self.last = 1;
                (c != '\0').then_some(c)
            }
            None => {
                self.last = 0;
                None
            }
        }
    }

    fn unread(&mut self) {
        self.pos -= self.last;
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied().filter(|&c| c != '\0')
    }

    /// One item (`fetchItem`); false once the stream has ended (end of input or an error).
    fn item(&mut self) -> bool {
        let Some(c) = self.read() else {
            self.tokens.push(Token::Eof);
            return false;
        };
        match c {
            '{' => {
                self.terms += 1;
                self.tokens.push(Token::TermsOpen);
            }
            ',' if self.terms > 0 => self.tokens.push(Token::Separator),
            '}' if self.terms > 0 => {
                self.tokens.push(Token::TermsClose);
                self.terms -= 1;
            }
            '[' => {
                let start = self.tokens.len();
                self.tokens.push(Token::RangeOpen);
                if let Err(e) = self.range() {
                    // gobwas's `Next` reports the error before any token still queued.
                    self.tokens.truncate(start);
                    self.tokens.push(Token::Error(e));
                    return false;
                }
            }
            '?' => self.tokens.push(Token::Single),
            '*' => {
                if self.read() == Some('*') {
                    self.tokens.push(Token::Super);
                } else {
                    self.unread();
                    self.tokens.push(Token::Any);
                }
            }
            _ => {
                self.unread();
                let in_terms = self.terms > 0;
                self.text(|c| {
                    matches!(c, '?' | '*' | '[' | '{') || (in_terms && matches!(c, '}' | ','))
                });
            }
        }
        true
    }

    /// After `[` (`fetchRange`).
    fn range(&mut self) -> Result<(), &'static str> {
        let (mut want_hi, mut want_close, mut seen_not) = (false, false, false);
        loop {
            let Some(c) = self.read() else {
                return Err("unexpected end of input");
            };
            if want_close {
                if c != ']' {
                    return Err("expected close range character");
                }
                self.tokens.push(Token::RangeClose);
                return Ok(());
            }
            if want_hi {
                self.tokens.push(Token::RangeHi(c));
                want_close = true;
                continue;
            }
            if !seen_not && c == '!' {
                self.tokens.push(Token::Not);
                seen_not = true;
                continue;
            }
            if self.peek() == Some('-') {
                self.pos += 1;
                self.tokens.push(Token::RangeLo(c));
                self.tokens.push(Token::RangeBetween);
                want_hi = true;
                continue;
            }
            self.unread();
            self.text(|c| c == ']');
            want_close = true;
        }
    }

    /// Text up to an unescaped breaker (`fetchText`); a `\` escapes the next character.
    fn text(&mut self, breaker: impl Fn(char) -> bool) {
        let mut data = String::new();
        let mut escaped = false;
        while let Some(c) = self.read() {
            if !escaped {
                if c == '\\' {
                    escaped = true;
                    continue;
                }
                if breaker(c) {
                    self.unread();
                    break;
                }
            }
            escaped = false;
            data.push(c);
        }
        if !data.is_empty() {
            self.tokens.push(Token::Text(data));
        }
    }
}

fn lex(pattern: &str) -> Vec<Token> {
    let mut lexer = Lexer {
        chars: pattern.chars().collect(),
        pos: 0,
        last: 0,
        terms: 0,
        tokens: Vec::new(),
    };
    while lexer.item() {}
    lexer.tokens
}

/// gobwas's tree (`syntax/ast`): a pattern is a sequence of nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Text(String),
    Any,
    Super,
    Single,
    List { chars: Vec<char>, not: bool },
    Range { lo: char, hi: char, not: bool },
    AnyOf(Vec<Vec<Node>>),
}

/// gobwas's parser (`syntax/ast/parser.go`); braces open at the end are closed there.
/// How deep braces may nest (`{{{a}}}`): the `regex` crate refuses deeper patterns anyway.
const MAX_BRACES: usize = 200;

fn parse(tokens: &[Token]) -> Result<Vec<Node>, GoError> {
    // The root pattern, then for each open brace its alternatives so far.
    let mut root: Vec<Node> = Vec::new();
    let mut open: Vec<Vec<Vec<Node>>> = Vec::new();
    fn current<'a>(root: &'a mut Vec<Node>, open: &'a mut [Vec<Vec<Node>>]) -> &'a mut Vec<Node> {
        match open.last_mut() {
            Some(alternatives) => alternatives.last_mut().expect("an alternative"),
            None => root,
        }
    }
    let mut it = tokens.iter();
    loop {
        let token = it.next().unwrap_or(&Token::Eof);
        let node = match token {
            Token::Eof => break,
            Token::Error(e) => return Err(e.to_string().into()),
            Token::Text(t) => Node::Text(t.clone()),
            Token::Any => Node::Any,
            Token::Super => Node::Super,
            Token::Single => Node::Single,
            Token::RangeOpen => parse_range(&mut it)?,
            Token::TermsOpen => {
                // The tree is written out (and dropped) recursively: its depth is bounded
                // here, below the `regex` crate's own nesting bound, which refuses it anyway.
                if open.len() >= MAX_BRACES {
                    return Err(GoError::Hard(format!(
                        "glob nests braces deeper than {MAX_BRACES}: refused by this engine"
                    )));
                }
                open.push(alloc::vec![Vec::new()]);
                continue;
            }
            Token::Separator => {
                open.last_mut().expect("inside braces").push(Vec::new());
                continue;
            }
            Token::TermsClose => {
                let alternatives = open.pop().expect("inside braces");
                Node::AnyOf(alternatives)
            }
            t => return Err(format!("unexpected token: {t:?}").into()),
        };
        current(&mut root, &mut open).push(node);
    }
    while let Some(alternatives) = open.pop() {
        current(&mut root, &mut open).push(Node::AnyOf(alternatives));
    }
    Ok(root)
}

/// The tokens after `[` up to `]` (`parserRange`).
fn parse_range<'a>(it: &mut impl Iterator<Item = &'a Token>) -> Result<Node, String> {
    let (mut not, mut lo, mut hi, mut chars) = (false, None, None, Vec::new());
    loop {
        match it.next().unwrap_or(&Token::Eof) {
            Token::Eof => return Err("unexpected end".into()),
            Token::Error(e) => return Err(e.to_string()),
            Token::Not => not = true,
            Token::RangeLo(c) => lo = Some(*c),
            Token::RangeBetween => {}
            Token::RangeHi(c) => {
                if lo.is_some_and(|lo| *c < lo) {
                    return Err(format!(
                        "hi character '{c}' should be greater than lo '{}'",
                        lo.unwrap_or_default()
                    ));
                }
                hi = Some(*c);
            }
            Token::Text(t) => chars = t.chars().collect(),
            Token::RangeClose => {
                return match (lo, hi, chars.is_empty()) {
                    (Some(lo), Some(hi), true) => Ok(Node::Range { lo, hi, not }),
                    (None, None, false) => Ok(Node::List { chars, not }),
                    _ => Err("could not parse range".into()),
                };
            }
            _ => {}
        }
    }
}

/// A character in a regular expression, whatever it is.
fn write_char(re: &mut String, c: char) {
    let _ = write!(re, r"\x{{{:X}}}", u32::from(c));
}

/// One character not among `excluded` (any character if none).
fn write_not(re: &mut String, excluded: &[char]) {
    if excluded.is_empty() {
        re.push_str("(?s:.)");
        return;
    }
    re.push_str("[^");
    for &c in excluded {
        write_char(re, c);
    }
    re.push(']');
}

fn write_nodes(re: &mut String, nodes: &[Node], delimiters: &[char]) {
    for node in nodes {
        match node {
            Node::Text(t) => t.chars().for_each(|c| write_char(re, c)),
            Node::Any => {
                write_not(re, delimiters);
                re.push('*');
            }
            Node::Super => re.push_str("(?s:.)*"),
            Node::Single => write_not(re, delimiters),
            Node::List { chars, not } => {
                re.push_str(if *not { "[^" } else { "[" });
                chars.iter().for_each(|&c| write_char(re, c));
                re.push(']');
            }
            Node::Range { lo, hi, not } => {
                re.push_str(if *not { "[^" } else { "[" });
                write_char(re, *lo);
                re.push('-');
                write_char(re, *hi);
                re.push(']');
            }
            Node::AnyOf(alternatives) => {
                re.push_str("(?:");
                for (i, alternative) in alternatives.iter().enumerate() {
                    if i > 0 {
                        re.push('|');
                    }
                    write_nodes(re, alternative, delimiters);
                }
                re.push(')');
            }
        }
    }
}
