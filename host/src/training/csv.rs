//! The one CSV reader of training data: a file with a header (`gantry train`, `[data]
//! test_file`, `gantry eval`) and a daemon's stored dataset (records without a header, streamed
//! from the store). Every row is counted against the limits before it is kept, and a malformed
//! one is refused naming its source, line and column.

use std::io::Read;
use std::path::Path;

use gantry_kernels::Dataset;

use super::TrainError;
use super::data::Columns;
use super::limits::{RowBudget, TrainLimits};

/// Which columns hold the targets; every other column is a feature.
#[derive(Debug, Clone, Copy)]
pub enum Targets<'a> {
    /// The header's class column: its values must be class ids (integers from 0).
    Label(&'a str),
    /// The header's target columns (a regression).
    Named(&'a [String]),
    /// The 0-based column of records without a header (class ids or targets, checked later).
    Index(usize),
}

/// CSV records being read into a [`Dataset`].
pub struct CsvReader<'a, R: Read> {
    source: &'a Path,
    records: ::csv::Reader<Bounded<R>>,
    /// The trimmed header, when the input has one.
    header: Option<Vec<String>>,
    targets: Targets<'a>,
    /// Feature and target column indices; for records without a header, known at the first.
    at: Option<(Vec<usize>, Vec<usize>)>,
    classes: Option<usize>,
    budget: RowBudget,
}

impl<'a, R: Read> CsvReader<'a, R> {
    /// Starts reading `input` (named `source` in errors): a header first unless `targets` is
    /// an [`Targets::Index`]. With `classes`, a class id that is not below it is refused;
    /// rows, features and memory are bounded by `limits` as the rows arrive.
    pub fn new(
        input: R,
        source: &'a Path,
        targets: Targets<'a>,
        classes: Option<usize>,
        limits: &TrainLimits,
    ) -> Result<Self, TrainError> {
        let has_header = !matches!(targets, Targets::Index(_));
        let records = ::csv::ReaderBuilder::new()
            .has_headers(has_header)
            .buffer_capacity(READ_AHEAD)
            .from_reader(Bounded::new(input));
        let mut reader = Self {
            source,
            records,
            header: None,
            targets,
            at: None,
            classes,
            budget: RowBudget::new(limits),
        };
        if has_header {
            reader.read_header()?;
        }
        Ok(reader)
    }

    fn invalid(&self, line: Option<u64>, message: String) -> TrainError {
        TrainError::invalid(self.source, line, message)
    }

    /// Reads the header and finds the target columns in it.
    fn read_header(&mut self) -> Result<(), TrainError> {
        let named: Vec<&str> = match self.targets {
            Targets::Label(l) => vec![l],
            Targets::Named(t) => t.iter().map(String::as_str).collect(),
            Targets::Index(_) => unreachable!("records without a header have no names"),
        };
        let most = self.budget.max_features() + named.len() as u64;
        let max_features = self.budget.max_features();
        let header = match self.records.headers() {
            // Counted before a name is copied: a header of 200 million one-letter columns
            // took 16 GB.
            Ok(h) if h.len() as u64 > most => Err(format!(
                "the header has {} columns, more than the limit of {max_features} features and \
                 {} target(s)",
                h.len(),
                named.len()
            )),
            Ok(h) => Ok(h.iter().map(|h| h.trim().to_string()).collect::<Vec<_>>()),
            Err(e) => Err(format!("unreadable header: {e}")),
        };
        let next = self.records.position().clone();
        let header = (self.records.get_mut().next_record_at(&next))
            .map_err(|line| format!("unreadable header: {}", too_long(line)))
            .and(header)
            .map_err(|m| self.invalid(Some(1), m))?;
        // By a map: a search of the header per target name took quadratic time (200,000
        // columns, half of them targets, ran for minutes).
        let mut columns = std::collections::HashMap::with_capacity(header.len());
        for (i, h) in header.iter().enumerate() {
            columns.entry(h.as_str()).or_insert(i);
        }
        let mut target_at = Vec::with_capacity(named.len());
        let mut taken = std::collections::HashSet::with_capacity(named.len());
        for t in named {
            let Some(&i) = columns.get(t) else {
                return Err(self.invalid(Some(1), format!("no column `{t}` in the header")));
            };
            if !taken.insert(i) {
                return Err(self.invalid(Some(1), format!("target `{t}` is named twice")));
            }
            target_at.push(i);
        }
        self.at = Some(split_columns(header.len(), target_at));
        self.header = Some(header);
        if self.at.as_ref().is_some_and(|(f, _)| f.is_empty()) {
            return Err(self.invalid(Some(1), "no feature columns left".into()));
        }
        Ok(())
    }

    /// The named feature and target columns, when the input has a header.
    pub fn columns(&self) -> Option<Columns> {
        let (header, (features, targets)) = (self.header.as_ref()?, self.at.as_ref()?);
        let names = |at: &[usize]| at.iter().map(|&i| header[i].clone()).collect();
        Some(Columns {
            features: names(features),
            targets: names(targets),
        })
    }

    /// Reads every record.
    pub fn read(mut self) -> Result<Dataset, TrainError> {
        let mut data = Dataset::default();
        let mut record = ::csv::StringRecord::new();
        loop {
            let read = self.records.read_record(&mut record);
            let next = self.records.position().clone();
            if let Err(line) = self.records.get_mut().next_record_at(&next) {
                return Err(self.invalid(Some(line), too_long(line)));
            }
            match read {
                Ok(true) => self.row(&record, &mut data)?,
                Ok(false) => break,
                Err(e) => {
                    let line = e.position().map(|p| p.line());
                    return Err(self.invalid(line, format!("malformed row: {e}")));
                }
            }
        }
        if let Some((features, targets)) = &self.at {
            data.inputs = features.len();
            data.targets_per_row = targets.len();
        }
        Ok(data)
    }

    /// Checks and keeps one record.
    fn row(&mut self, record: &::csv::StringRecord, data: &mut Dataset) -> Result<(), TrainError> {
        let line = record.position().map(|p| p.line());
        if let Some(header) = &self.header
            && record.len() != header.len()
        {
            let m = format!("{} fields, the header has {}", record.len(), header.len());
            return Err(self.invalid(line, m));
        }
        if self.at.is_none() {
            self.at = Some(self.index_columns(record.len(), line)?);
        }
        let (features, targets) = self.at.as_ref().expect("columns are known");
        self.budget
            .take(1, features.len(), targets.len())
            .map_err(|m| self.invalid(line, m))?;
        for &i in features {
            data.features.push(self.value(record, i, line)?);
        }
        for &i in targets {
            let v = self.value(record, i, line)?;
            self.check_class(record, i, v, line)?;
            data.targets.push(v);
        }
        Ok(())
    }

    /// The columns of records without a header, from the first one's width.
    fn index_columns(
        &self,
        width: usize,
        line: Option<u64>,
    ) -> Result<(Vec<usize>, Vec<usize>), TrainError> {
        let Targets::Index(label) = self.targets else {
            unreachable!("a header fixes the columns")
        };
        if label >= width {
            return Err(self.invalid(line, format!("no column {label}")));
        }
        Ok(split_columns(width, vec![label]))
    }

    /// Column `i` of `record`, a finite number.
    fn value(
        &self,
        record: &::csv::StringRecord,
        i: usize,
        line: Option<u64>,
    ) -> Result<f32, TrainError> {
        let text = record[i].trim();
        match text.parse::<f32>() {
            Ok(v) if v.is_finite() => Ok(v),
            // The field cut: it may be megabytes, and the message is kept as a job's reason.
            _ => Err(self.invalid(
                line,
                format!(
                    "{}: `{}` is not a finite number",
                    self.column(i),
                    crate::plugin::error::cap_line(text, 64)
                ),
            )),
        }
    }

    /// Refuses a value of a named class column that is not a class id of the model.
    fn check_class(
        &self,
        record: &::csv::StringRecord,
        i: usize,
        v: f32,
        line: Option<u64>,
    ) -> Result<(), TrainError> {
        if !matches!(self.targets, Targets::Label(_)) {
            return Ok(());
        }
        let column = self.column(i);
        if !(v >= 0.0 && v.fract() == 0.0) {
            let text = record[i].trim();
            let m = format!("{column}: class ids are integers from 0, not `{text}`");
            return Err(self.invalid(line, m));
        }
        match self.classes {
            Some(classes) if v >= classes as f32 => Err(self.invalid(
                line,
                format!(
                    "{column}: class {v} is not one of the model's {classes} classes (0-{})",
                    classes - 1
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Column `i`, named for errors: by the header's name, else by its index.
    fn column(&self, i: usize) -> String {
        match &self.header {
            Some(h) => format!("column `{}`", h[i]),
            None => format!("column {i}"),
        }
    }
}

/// How much the parser reads ahead of the record it is parsing (its buffer's capacity).
const READ_AHEAD: usize = 64 << 10;

/// The input of the CSV parser, failing once the record being parsed is longer than
/// [`crate::pipeline::MAX_RECORD_BYTES`]: the parser keeps a record whole, so one line without
/// a newline was read into memory entire (a 400 MB line took 2.4 GB). Where a record starts is
/// the parser's own answer ([`CsvReader`] tells this after each record), never a second reading
/// of quotes and newlines: one that read them differently (a stray quote in an unquoted field
/// toggled it) let the parser read a 200 MB quoted field while the count restarted at every
/// newline.
pub(crate) struct Bounded<R> {
    inner: R,
    /// Bytes read from `inner` so far.
    read: u64,
    /// Where the record being parsed starts (a byte offset) and its line, as the parser said.
    start: u64,
    line: u64,
}

impl<R> Bounded<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            read: 0,
            start: 0,
            line: 1,
        }
    }

    /// The parser has finished a record: the next starts at `position`. An error (the line it
    /// started on) when the one finished was longer than the bound: the read-ahead let it
    /// through whole.
    fn next_record_at(&mut self, position: &::csv::Position) -> Result<(), u64> {
        let (length, line) = (position.byte().saturating_sub(self.start), self.line);
        self.start = position.byte();
        self.line = position.line();
        match length > crate::pipeline::MAX_RECORD_BYTES as u64 {
            true => Err(line),
            false => Ok(()),
        }
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        // The parser holds at most its record and what it read ahead: past both, the record
        // itself is longer than the bound.
        if self.read - self.start > (crate::pipeline::MAX_RECORD_BYTES + READ_AHEAD) as u64 {
            let message = too_long(self.line);
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                message,
            ));
        }
        Ok(n)
    }
}

fn too_long(line: u64) -> String {
    format!(
        "the record from line {line} is longer than {} bytes, the most a record may hold",
        crate::pipeline::MAX_RECORD_BYTES
    )
}

/// The feature columns (every one but the targets, in order) and the target columns.
fn split_columns(width: usize, target_at: Vec<usize>) -> (Vec<usize>, Vec<usize>) {
    let mut target = vec![false; width];
    for &i in &target_at {
        if let Some(t) = target.get_mut(i) {
            *t = true;
        }
    }
    let features = (0..width).filter(|&i| !target[i]).collect();
    (features, target_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, targets: Targets<'_>, limits: &TrainLimits) -> Result<Dataset, String> {
        CsvReader::new(text.as_bytes(), Path::new("d.csv"), targets, None, limits)
            .and_then(CsvReader::read)
            .map_err(|e| e.to_string())
    }

    /// Found by a review: each target name was searched for along the header, and each column
    /// along the targets: 40,000 columns, half of them targets, took 12 s, and 200,000 ran
    /// for minutes. Looked up by map now; a target named twice is refused.
    #[test]
    fn a_wide_header_with_many_targets_is_read_in_linear_time() {
        let n = 200_000;
        let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
        let text = format!("{}\n{}\n", names.join(","), vec!["1"; n].join(","));
        let targets: Vec<String> = names.iter().step_by(2).cloned().collect();
        let limits = TrainLimits {
            max_features: n as u64,
            ..TrainLimits::default()
        };
        let reader = CsvReader::new(
            text.as_bytes(),
            Path::new("d.csv"),
            Targets::Named(&targets),
            None,
            &limits,
        )
        .unwrap();
        let columns = reader.columns().unwrap();
        assert_eq!(
            (columns.features.len(), columns.targets.len()),
            (n / 2, n / 2)
        );
        let twice = vec!["c1".to_string(), "c1".to_string()];
        let e = CsvReader::new(
            text.as_bytes(),
            Path::new("d.csv"),
            Targets::Named(&twice),
            None,
            &limits,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("named twice"), "{e}");
    }

    #[test]
    fn records_without_a_header_are_read_by_column_index() {
        let limits = TrainLimits::default();
        let d = read("1,0.5,2\n0,1.5,3\r\n\n1,2.5,4", Targets::Index(0), &limits).unwrap();
        assert_eq!((d.inputs, d.targets_per_row, d.rows()), (2, 1, 3));
        assert_eq!(d.features, [0.5, 2.0, 1.5, 3.0, 2.5, 4.0]);
        assert_eq!(d.targets, [1.0, 0.0, 1.0]);
        let e = read("1,2\n3,4\nx,5\n", Targets::Index(1), &limits).unwrap_err();
        assert_eq!(e, "d.csv:3: column 0: `x` is not a finite number");
        let e = read("1,2\n", Targets::Index(2), &limits).unwrap_err();
        assert_eq!(e, "d.csv:1: no column 2");
        let e = read("1,2\n3\n", Targets::Index(0), &limits).unwrap_err();
        assert!(e.starts_with("d.csv:2: malformed row"), "{e}");
    }

    /// Rows past a limit are refused as they arrive, naming the line, before more are kept.
    #[test]
    fn rows_past_the_limits_are_refused_at_their_line() {
        let limits = TrainLimits {
            max_rows: 2,
            ..TrainLimits::default()
        };
        let text = "a,y\n1,2\n3,4\n5,6\n7,8\n";
        let e = read(text, Targets::Label("y"), &limits).unwrap_err();
        assert_eq!(e, "d.csv:4: more than 2 rows (the operator's limit)");
        let limits = TrainLimits {
            max_features: 1,
            ..TrainLimits::default()
        };
        let e = read("1,2,3\n", Targets::Index(0), &limits).unwrap_err();
        assert_eq!(e, "d.csv:1: 2 features, more than 1 (the operator's limit)");
        let limits = TrainLimits {
            max_memory_mib: 1,
            ..TrainLimits::default()
        };
        // 2^16 rows of 4 values are exactly 1 MiB; one more row is over.
        let text = "0,0,0,0\n".repeat((1 << 16) + 1);
        let e = read(&text, Targets::Index(0), &limits).unwrap_err();
        assert!(e.starts_with("d.csv:65537: the features outgrow"), "{e}");
    }

    /// Found by a hostile file: the parser keeps a record whole, so a 400 MB line took 2.4 GB
    /// and a header of 200 million one-letter columns 16 GB. A record is now refused at the
    /// byte bound as it streams, and a header's width is counted before its names are kept.
    #[test]
    fn a_record_or_header_past_the_bounds_is_refused_before_it_is_kept() {
        let limits = TrainLimits::default();
        let over = crate::pipeline::MAX_RECORD_BYTES as u64 + 100;
        let read_from = |input: Box<dyn Read>, targets| {
            CsvReader::new(input, Path::new("d.csv"), targets, None, &limits)
                .and_then(CsvReader::read)
                .unwrap_err()
                .to_string()
        };
        let endless = |head: &'static [u8]| Box::new(head.chain(std::io::repeat(b'1').take(over)));
        let e = read_from(endless(b"x,y\n1,2\n3,4\n"), Targets::Label("y"));
        assert!(e.contains("the record from line 4 is longer than"), "{e}");
        let e = read_from(endless(b"1,2\n"), Targets::Index(0));
        assert!(e.contains("the record from line 2 is longer than"), "{e}");
        let e = read_from(endless(b"x,"), Targets::Label("y"));
        assert!(
            e.starts_with("d.csv:1: unreadable header") && e.contains("line 1"),
            "{e}"
        );
        // A newline inside quotes does not end a record, so it does not reset the count.
        let quoted = Box::new(b"x,y\n\"".chain(std::io::repeat(b'\n').take(over)));
        let e = read_from(quoted, Targets::Label("y"));
        assert!(e.contains("the record from line 2 is longer than"), "{e}");

        let narrow = TrainLimits {
            max_features: 3,
            ..TrainLimits::default()
        };
        let e = read("a,b,c,d,e,y\n1,2,3,4,5,6\n", Targets::Label("y"), &narrow).unwrap_err();
        assert_eq!(
            e,
            "d.csv:1: the header has 6 columns, more than the limit of 3 features and 1 target(s)"
        );
        assert!(read("a,b,c,y\n1,2,3,4\n", Targets::Label("y"), &narrow).is_ok());
    }

    /// Found by a hostile file: the bound kept its own reading of quotes, toggled by any quote,
    /// where the parser opens a quoted field only at a field's start. A stray quote in an
    /// unquoted field put the two out of step, and the parser then read a quoted field of any
    /// size while the bound restarted at every newline.
    #[test]
    fn a_stray_quote_cannot_put_the_record_bound_out_of_step_with_the_parser() {
        let limits = TrainLimits::default();
        let over = 2 * crate::pipeline::MAX_RECORD_BYTES as u64;
        let read_from = |input: Box<dyn Read>, targets| {
            CsvReader::new(input, Path::new("d.csv"), targets, None, &limits)
                .and_then(CsvReader::read)
                .unwrap_err()
                .to_string()
        };
        let field = |head: &'static [u8]| Box::new(head.chain(std::io::repeat(b'\n').take(over)));
        let e = read_from(field(b"x\"z,y\n\""), Targets::Label("y"));
        assert!(e.contains("the record from line 2 is longer than"), "{e}");
        let e = read_from(field(b"x,y,q\"\n1,2,3\n\""), Targets::Label("y"));
        assert!(e.contains("the record from line 3 is longer than"), "{e}");
    }

    /// The parser ends a record at a lone carriage return too: a file with such line ends is
    /// not one long record.
    #[test]
    fn records_ended_by_carriage_returns_are_each_bounded_not_the_file() {
        let rows = crate::pipeline::MAX_RECORD_BYTES / 8 + 1;
        let text = format!("x,y\r{}", "1.5,1\r".repeat(rows));
        let d = read(&text, Targets::Label("y"), &TrainLimits::default()).unwrap();
        assert_eq!(d.rows(), rows);
    }
}
