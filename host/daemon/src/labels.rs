//! Splits the label column off a CSV stream as it is read, so a training job's dataset goes from
//! the store (decrypted chunk by chunk) into preprocessing without ever being held whole: the
//! reader yields the other columns' text and collects the labels.

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};

/// A reader over CSV records that yields each record without column `label` and appends that
/// column's value to a shared list. A label that is missing or not a finite number is an
/// `InvalidData` error naming its line.
pub struct LabelSplit<R> {
    input: BufReader<R>,
    label: usize,
    labels: Arc<Mutex<Vec<f32>>>,
    line: Vec<u8>,
    pending: Vec<u8>,
    at: usize,
    number: u64,
}

impl<R: Read> LabelSplit<R> {
    /// Splits `input`; labels go to `labels`, which is cleared first (a re-read starts over).
    pub fn new(input: R, label: usize, labels: Arc<Mutex<Vec<f32>>>) -> Self {
        labels.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Self {
            input: BufReader::with_capacity(1 << 16, input),
            label,
            labels,
            line: Vec::new(),
            pending: Vec::new(),
            at: 0,
            number: 0,
        }
    }

    /// Reads records until some output is pending or the input ends.
    fn refill(&mut self) -> std::io::Result<()> {
        self.pending.clear();
        self.at = 0;
        let mut labels = Vec::new();
        // A few records at a time: one lock per refill, not per record.
        while self.pending.len() < 1 << 15 {
            self.line.clear();
            if self.input.read_until(b'\n', &mut self.line)? == 0 {
                break;
            }
            self.number += 1;
            let line = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let mut found = None;
            let mut first = true;
            for (c, field) in line.split(|&b| b == b',').enumerate() {
                if c == self.label {
                    found = Some(field);
                    continue;
                }
                if !first {
                    self.pending.push(b',');
                }
                self.pending.extend_from_slice(field);
                first = false;
            }
            let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
            let field = found.ok_or_else(|| {
                invalid(format!("line {}: no column {}", self.number, self.label))
            })?;
            let text = std::str::from_utf8(field).unwrap_or("").trim();
            let value = text
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    invalid(format!(
                        "line {}: label `{}` is not a number",
                        self.number,
                        gantry::plugin::error::cap_line(text, 64)
                    ))
                })?;
            labels.push(value);
            self.pending.push(b'\n');
        }
        self.labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(labels);
        Ok(())
    }
}

impl<R: Read> Read for LabelSplit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.pending.len() {
            self.refill()?;
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str, label: usize) -> (std::io::Result<String>, Vec<f32>) {
        let labels = Arc::new(Mutex::new(vec![99.0]));
        let mut out = String::new();
        let r = LabelSplit::new(text.as_bytes(), label, labels.clone())
            .read_to_string(&mut out)
            .map(|_| out);
        let labels = labels.lock().unwrap().clone();
        (r, labels)
    }

    #[test]
    fn the_label_column_goes_to_the_list_and_the_rest_streams_on() {
        let (text, labels) = split("1,0.5,2\n0,1.5,3\r\n\n1,2.5,4", 0);
        assert_eq!(text.unwrap(), "0.5,2\n1.5,3\n2.5,4\n");
        assert_eq!(labels, [1.0, 0.0, 1.0]);
        let (text, labels) = split("a,b,7\nc,d,8\n", 2);
        assert_eq!(text.unwrap(), "a,b\nc,d\n");
        assert_eq!(labels, [7.0, 8.0]);
    }

    #[test]
    fn a_bad_label_names_its_line() {
        let (r, _) = split("1,2\n3,4\nx,5\n", 0);
        let e = r.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(e.to_string(), "line 3: label `x` is not a number");
        let (r, _) = split("1,2\n3\n", 1);
        assert_eq!(r.unwrap_err().to_string(), "line 2: no column 1");
    }

    #[test]
    fn a_large_input_streams_in_small_pieces() {
        let text: String = (0..20_000).map(|i| format!("{},{i}.5\n", i % 3)).collect();
        let labels = Arc::new(Mutex::new(Vec::new()));
        let mut reader = LabelSplit::new(text.as_bytes(), 0, labels.clone());
        let mut buf = [0u8; 4096];
        let (mut total, mut largest) = (0, 0);
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n;
            largest = largest.max(reader.pending.capacity());
        }
        assert_eq!(labels.lock().unwrap().len(), 20_000);
        assert!(total > 100_000);
        // What it holds is bounded by its refill size, not the input's.
        assert!(largest < 1 << 17, "{largest}");
    }
}
