//! Rego errors as compilers print them: `file:line:col: message`, then the line and a caret.
//!
//! regorus reports a location as a block that starts with a newline (`\n--> file:line:col`, the
//! line, a caret line, `error: message`), and counts a tab as 4 columns. Printed after `error: `
//! that block leaves an empty `error: ` line, and on tab-indented Rego (the usual style) its column
//! is wrong. [`render`] rewrites every such block: the column counts characters, a tab as one (as
//! OPA does), and the caret line repeats the line's own tabs so it lines up in any terminal.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// A location in a Rego file, with the line's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file (the module's id).
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters (a tab is one).
    pub col: u32,
    /// The text of the line.
    pub code: String,
}

/// One error: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where, when the error names a place.
    pub location: Option<Location>,
    /// What went wrong.
    pub message: String,
}

impl Diagnostic {
    /// `file:line:col: message` (or the message alone), without the line's text.
    pub fn headline(&self) -> String {
        match &self.location {
            Some(at) => format!("{}:{}:{}: {}", at.file, at.line, at.col, self.message),
            None => self.message.clone(),
        }
    }
}

impl core::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.headline())?;
        let Some(at) = &self.location else {
            return Ok(());
        };
        if at.code.trim().is_empty() {
            return Ok(());
        }
        // The caret line keeps the tabs before the column, so it lines up whatever a tab's width.
        let pad: String = at
            .code
            .chars()
            .take(at.col.saturating_sub(1) as usize)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(f, "\n  | {}\n  | {pad}^", at.code)
    }
}

/// regorus's column (a tab counts 4) as a character column (a tab counts 1) on `code`.
pub fn char_column(code: &str, regorus_col: u32) -> u32 {
    let mut col = 1u32;
    for (index, c) in code.chars().enumerate() {
        if col >= regorus_col {
            return index as u32 + 1;
        }
        col += if c == '\t' { 4 } else { 1 };
    }
    // Past the end of the line (an error at its end): one past the last character.
    code.chars().count() as u32 + 1
}

/// Parses a regorus error text into diagnostics: one per location block, in order; text with no
/// block becomes one diagnostic without a location.
pub fn parse(text: &str) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("--> ") {
        let before = rest[..start].trim();
        let block = &rest[start + 4..];
        let mut lines = block.lines();
        let header = lines.next().unwrap_or_default();
        let Some(location) = header_location(header) else {
            break;
        };
        // `N | code`, then `  | ^`, then `kind: message` (which may run to the next block).
        let mut code = String::new();
        let mut consumed = header.len() + 1;
        let mut message = String::new();
        for line in lines.by_ref() {
            consumed += line.len() + 1;
            let trimmed = line.trim_start();
            if let Some((num, text)) = trimmed.split_once("| ")
                && num.trim() == location.1.to_string()
            {
                code = text.to_string();
            } else if trimmed.starts_with('|') {
                continue;
            } else {
                message = line.to_string();
                break;
            }
        }
        // `error: message`: the kind is dropped (the CLI prints its own `error: `). A block
        // without a message keeps whatever text came before it.
        let message = match message.split_once(": ") {
            Some((_, m)) => m.to_string(),
            None if message.is_empty() => before.trim_end_matches(':').to_string(),
            None => message,
        };
        out.push(Diagnostic {
            location: Some(Location {
                col: char_column(&code, location.2),
                file: location.0,
                line: location.1,
                code,
            }),
            message,
        });
        rest = block.get(consumed.min(block.len())..).unwrap_or_default();
    }
    if out.is_empty() {
        out.push(Diagnostic {
            location: None,
            message: text.trim().to_string(),
        });
    }
    out
}

/// `file:line:col` (a file name may hold colons: split from the right).
fn header_location(header: &str) -> Option<(String, u32, u32)> {
    let mut parts = header.trim().rsplitn(3, ':');
    let col = parts.next()?.parse().ok()?;
    let line = parts.next()?.parse().ok()?;
    let file = parts.next()?.to_string();
    Some((file, line, col))
}

/// A regorus error text as compilers print errors (see the module documentation).
pub fn render(text: &str) -> String {
    let rendered: Vec<String> = parse(text).iter().map(|d| format!("{d}")).collect();
    rendered.join("\n")
}

/// A regorus error text on one line: its diagnostics' headlines, `; `-separated (for logs and
/// audit records).
pub fn one_line(text: &str) -> String {
    let headlines: Vec<String> = parse(text).iter().map(Diagnostic::headline).collect();
    headlines.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_count_a_tab_as_one_character() {
        // regorus counts the tab as 4: `\tfoo(1)` puts `foo` at its column 5, our column 2.
        assert_eq!(char_column("\tfoo(1)", 5), 2);
        assert_eq!(char_column("\t\tx := 1", 9), 3);
        assert_eq!(char_column("  x", 3), 3);
        assert_eq!(char_column("", 1), 1);
        assert_eq!(char_column("ab", 7), 3);
    }

    #[test]
    fn a_regorus_block_renders_on_one_line_with_its_place() {
        let text =
            "\n--> p.rego:5:5\n  |\n5 | \tfoo(1)\n  |     ^\nerror: could not find function foo";
        let d = parse(text);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].message, "could not find function foo");
        let at = d[0].location.as_ref().unwrap();
        assert_eq!((at.file.as_str(), at.line, at.col), ("p.rego", 5, 2));
        let out = render(text);
        assert!(
            out.starts_with("p.rego:5:2: could not find function foo\n"),
            "{out}"
        );
        // The caret sits under `foo` with the line's own tab before it.
        assert!(out.ends_with("\n  | \tfoo(1)\n  | \t^"), "{out:?}");
    }

    #[test]
    fn text_without_a_block_is_kept() {
        assert_eq!(render("  plain failure "), "plain failure");
    }

    #[test]
    fn a_file_name_with_colons_keeps_them() {
        let d = parse("\n--> c:/x/p.rego:2:1\n  |\n2 | }\n  | ^\nerror: unexpected");
        assert_eq!(d[0].location.as_ref().unwrap().file, "c:/x/p.rego");
    }
}
