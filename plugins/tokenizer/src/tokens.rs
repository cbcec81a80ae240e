//! Byte-level tokenisation into fixed-length id sequences (the plugin's whole algorithm).
//!
//! Ids: 0 pads, 1 starts every sequence, and byte `b` is `b + 2` (so 258 ids in all): no
//! vocabulary file, nothing unknown, any text (UTF-8 or not) encodes.

/// Padding.
pub const PAD: f32 = 0.0;
/// Start of sequence.
pub const BOS: f32 = 1.0;
/// Size of the id space.
pub const VOCABULARY: usize = 258;

/// Appends `length` ids for `text`: BOS, then the bytes, cut or padded.
pub fn tokenize(text: &[u8], length: usize, lowercase: bool, out: &mut Vec<f32>) {
    let start = out.len();
    if length > 0 {
        out.push(BOS);
    }
    for &b in text.iter().take(length.saturating_sub(1)) {
        let b = if lowercase { b.to_ascii_lowercase() } else { b };
        out.push(f32::from(b) + 2.0);
    }
    out.resize(start + length, PAD);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_length_sequences() {
        let mut out = Vec::new();
        tokenize(b"Hi", 5, false, &mut out);
        assert_eq!(out, [1.0, 74.0, 107.0, 0.0, 0.0]);
        out.clear();
        tokenize(b"Hello", 3, true, &mut out);
        assert_eq!(out, [1.0, 106.0, 103.0]);
        out.clear();
        tokenize("é".as_bytes(), 4, false, &mut out);
        assert_eq!(out, [1.0, 197.0, 171.0, 0.0]);
    }
}
