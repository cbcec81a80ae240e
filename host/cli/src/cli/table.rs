//! Plain-text tables for terminal output.

use std::fmt;

/// A table with a header row; columns are sized to fit.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: &[String]| -> fmt::Result {
            // Padded by hand: a formatting width over 65,535 panics, and a cell may be wider
            // (a job placed on 17,600 GPUs lists them all).
            let text: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| {
                    let pad = w.saturating_sub(c.chars().count());
                    format!("{c}{}", " ".repeat(pad))
                })
                .collect();
            writeln!(f, "{}", text.join("  ").trim_end())
        };
        line(f, &self.header)?;
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        writeln!(f, "{}", rule.join("  "))?;
        for row in &self.rows {
            line(f, row)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Table;

    /// Found by a review: `gantry schedule` exited 101 ("Formatting argument out of range")
    /// for a job placed on 17,600 GPUs: its cell was padded with a formatting width, which
    /// may not pass 65,535. Cells of any width are padded.
    #[test]
    fn a_cell_wider_than_a_formatting_width_may_be_is_printed() {
        let mut t = Table::new(&["job", "placed on"]);
        let wide = "n/gpu0,".repeat(20_000);
        t.row(vec!["big".into(), wide.clone()]);
        t.row(vec!["a-longer-name".into(), "x".into()]);
        let text = t.to_string();
        assert!(text.contains(&wide));
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[2].starts_with("big            n/gpu0"),
            "{}",
            &lines[2][..40]
        );
        assert_eq!(lines[3], "a-longer-name  x");
    }
}
