//! One object on disk: a header, then authenticated chunks (1 MiB of plaintext each, nonce =
//! chunk index, associated data = format version, chunk index and a last-chunk flag), sealed by
//! the object's own data key. Written in one pass ([`seal_into`]) and read as a stream
//! ([`ObjectReader`]) that checks every chunk before handing out a byte and the SHA-256 of the
//! whole at the end.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest::{Context, SHA256};

use super::{FORMAT, StoreError, io};

/// Plaintext bytes per chunk.
pub const CHUNK: usize = 1 << 20;
/// Bytes of an AES-GCM tag.
pub(super) const TAG: usize = 16;
const OBJECT_MAGIC: &[u8; 16] = b"GANTRY-OBJECT 1\n";

/// The size on disk (sealed) of an object of `plain` bytes: the magic and chunk size, then each
/// chunk (at least one) with its length and tag.
pub const fn sealed_len(plain: u64) -> u64 {
    let chunks = if plain == 0 {
        1
    } else {
        plain.div_ceil(CHUNK as u64)
    };
    (OBJECT_MAGIC.len() + 4) as u64 + chunks * (4 + TAG as u64) + plain
}

/// Encrypts everything `reader` yields into a new file `tmp` under `key_bytes`, synced; returns
/// the plaintext's SHA-256 (the object's id).
pub(super) fn seal_into(
    tmp: &Path,
    mut reader: impl Read,
    key_bytes: &[u8; 32],
) -> Result<String, StoreError> {
    let data_key = aead_key(key_bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(tmp).map_err(io(tmp))?;
    let mut out = BufWriter::new(file);
    out.write_all(OBJECT_MAGIC).map_err(io(tmp))?;
    out.write_all(&(CHUNK as u32).to_le_bytes())
        .map_err(io(tmp))?;
    let mut digest = Context::new(&SHA256);
    let mut chunk = Vec::with_capacity(CHUNK + TAG);
    let mut index = 0u64;
    // Read one chunk ahead so the last chunk is known to be last when sealed.
    let mut pending = read_chunk(&mut reader, tmp)?;
    loop {
        let next = if pending.len() == CHUNK {
            read_chunk(&mut reader, tmp)?
        } else {
            Vec::new()
        };
        let last = next.is_empty();
        digest.update(&pending);
        chunk.clear();
        chunk.extend_from_slice(&pending);
        data_key
            .seal_in_place_append_tag(
                chunk_nonce(index),
                Aad::from(chunk_aad(index, last)),
                &mut chunk,
            )
            .map_err(|_| StoreError::Random("sealing a chunk".into()))?;
        // The top bit of the length says "last"; the AAD authenticates it.
        let len = chunk.len() as u32 | (u32::from(last) << 31);
        out.write_all(&len.to_le_bytes()).map_err(io(tmp))?;
        out.write_all(&chunk).map_err(io(tmp))?;
        if last {
            break;
        }
        pending = next;
        index += 1;
    }
    let file = out.into_inner().map_err(|e| io(tmp)(e.into_error()))?;
    file.sync_all().map_err(io(tmp))?;
    Ok(data_encoding::HEXLOWER.encode(digest.finish().as_ref()))
}

/// Streams an object's plaintext, chunk by authenticated chunk.
pub struct ObjectReader {
    id: String,
    key: LessSafeKey,
    input: BufReader<File>,
    index: u64,
    plain: Vec<u8>,
    at: usize,
    done: bool,
    digest: Option<Context>,
}

impl ObjectReader {
    /// A reader over object `id`'s `file`, whose chunks `key` opens; the header is checked here.
    pub(super) fn open(id: &str, key: LessSafeKey, file: File) -> Result<ObjectReader, StoreError> {
        let mut input = BufReader::with_capacity(CHUNK + TAG + 4, file);
        let mut header = [0u8; 20];
        input
            .read_exact(&mut header)
            .map_err(|_| StoreError::Corrupt {
                id: id.to_string(),
                message: "truncated header".into(),
            })?;
        if &header[..16] != OBJECT_MAGIC
            || u32::from_le_bytes(header[16..].try_into().expect("4")) as usize != CHUNK
        {
            return Err(StoreError::Corrupt {
                id: id.to_string(),
                message: "not a Gantry object header".into(),
            });
        }
        Ok(ObjectReader {
            id: id.to_string(),
            key,
            input,
            index: 0,
            plain: Vec::new(),
            at: 0,
            done: false,
            digest: Some(Context::new(&SHA256)),
        })
    }

    fn corrupt(&self, message: &str) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("object {}: {message}", self.id),
        )
    }

    /// Reads, authenticates and decrypts the next chunk into `plain`.
    fn next_chunk(&mut self) -> std::io::Result<()> {
        let mut len = [0u8; 4];
        if let Err(e) = self.input.read_exact(&mut len) {
            return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.corrupt("truncated: it ends before its last chunk")
            } else {
                e
            });
        }
        let len = u32::from_le_bytes(len);
        let last = len >> 31 == 1;
        let len = (len & 0x7fff_ffff) as usize;
        if !(TAG..=CHUNK + TAG).contains(&len) {
            return Err(self.corrupt(&format!("chunk {} has an impossible length", self.index)));
        }
        let mut sealed = std::mem::take(&mut self.plain);
        sealed.resize(len, 0);
        if self.input.read_exact(&mut sealed).is_err() {
            return Err(self.corrupt("truncated inside a chunk"));
        }
        let opened = self
            .key
            .open_in_place(
                chunk_nonce(self.index),
                Aad::from(chunk_aad(self.index, last)),
                &mut sealed,
            )
            .map(|p| p.len());
        let Ok(n) = opened else {
            return Err(self.corrupt(&format!(
                "chunk {} does not authenticate (changed, reordered or from another object)",
                self.index
            )));
        };
        sealed.truncate(n);
        let plain = sealed;
        self.plain = plain;
        self.at = 0;
        self.index += 1;
        if let Some(d) = &mut self.digest {
            d.update(&self.plain);
        }
        if last {
            let mut extra = [0u8; 1];
            if self.input.read(&mut extra)? != 0 {
                return Err(self.corrupt("data after its last chunk"));
            }
            let digest = self
                .digest
                .take()
                .expect("digest until the last chunk")
                .finish();
            if data_encoding::HEXLOWER.encode(digest.as_ref()) != self.id {
                return Err(self.corrupt("content does not hash to its id"));
            }
            self.done = true;
        }
        Ok(())
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        // The last chunk's bytes are released only after the whole object's digest checked.
        let n = buf.len().min(self.plain.len() - self.at);
        buf[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

pub(super) fn read_error(id: &str, e: std::io::Error) -> StoreError {
    StoreError::Corrupt {
        id: id.to_string(),
        message: e
            .to_string()
            .trim_start_matches(&format!("object {id}: "))
            .to_string(),
    }
}

fn read_chunk(reader: &mut impl Read, tmp: &Path) -> Result<Vec<u8>, StoreError> {
    let mut chunk = Vec::with_capacity(CHUNK);
    reader
        .take(CHUNK as u64)
        .read_to_end(&mut chunk)
        .map_err(io(tmp))?;
    Ok(chunk)
}

pub(super) fn aead_key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key"))
}

/// A data key encrypts one object once, so chunk indexes are unique nonces.
fn chunk_nonce(index: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn chunk_aad(index: u64, last: bool) -> [u8; 17] {
    let mut aad = [0u8; 17];
    aad[..4].copy_from_slice(&FORMAT.to_be_bytes());
    aad[4..12].copy_from_slice(&index.to_be_bytes());
    aad[12] = u8::from(last);
    aad[13..].copy_from_slice(b"gchk");
    aad
}
