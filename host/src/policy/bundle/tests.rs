use std::cell::Cell;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use super::*;
use crate::policy::bundle_signature::{self, Alg, SigningKey, VerificationKey};
use gantry_fuzz::{gzip, gzip_bomb, tar_header, tar_of};

/// A reader that counts what is taken from it.
struct Counted<R> {
    inner: R,
    read: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// (the error, compressed bytes read) of reading `bytes` as a bundle.
fn read_counted(bytes: &[u8]) -> (String, u64) {
    let read = Rc::new(Cell::new(0));
    let input = Counted {
        inner: bytes,
        read: read.clone(),
    };
    let err = read_files_from(input, Path::new("b.tar.gz"))
        .map(|files| format!("accepted {} members", files.len()))
        .unwrap_or_else(|e| e.to_string());
    (err, read.get())
}

/// Found by the property tests: only file members were bounded. A GNU long-name or PAX header
/// (`L`, `K`, `x`) is read whole by the tar reader before the member it describes, whatever
/// size it claims, and a member that is skipped (a directory with a size) is inflated to be
/// skipped: a small gzip bomb made the reader allocate (or inflate) without limit. Now the
/// archive stream itself is bounded, so the reader stops at the bound, having taken a few
/// hundred KiB of the bomb.
#[test]
fn extension_headers_and_skipped_members_cannot_unpack_past_the_bound() {
    for kind in [b'L', b'K', b'x', b'5'] {
        let bomb = gzip_bomb(&tar_header(kind, "x", 1 << 40), 256 << 20);
        let (err, read) = read_counted(&bomb);
        assert!(
            err.contains("b.tar.gz") && err.contains("unpacks to more than"),
            "{}: {err}",
            kind as char
        );
        assert!(
            read < bomb.len() as u64 / 2,
            "{}: read {read} of {} compressed bytes",
            kind as char,
            bomb.len()
        );
    }
}

/// A file member's bytes are bounded as they were: a bomb in `/policy.wasm` stops at 64 MiB.
#[test]
fn a_file_member_bomb_stops_at_the_bound() {
    let bomb = gzip_bomb(&tar_header(b'0', "/policy.wasm", 1 << 40), 256 << 20);
    let (err, read) = read_counted(&bomb);
    assert!(err.contains("unpacks to more than 64 MiB"), "{err}");
    assert!(read < bomb.len() as u64 / 2, "{read} of {}", bomb.len());
}

fn signed(files: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, b)| (n.to_string(), b.to_vec()))
        .collect();
    let key = SigningKey {
        id: "k".into(),
        alg: Alg::Hs256,
        key: b"secret".to_vec(),
    };
    let sig = bundle_signature::sign(&files, &key, None).unwrap();
    files.push((bundle_signature::FILE.to_string(), sig));
    files
}

fn hs256() -> VerificationKey {
    VerificationKey {
        id: "k".into(),
        alg: Alg::Hs256,
        key: b"secret".to_vec(),
        scope: None,
    }
}

/// Found by the property tests (a duplicated member): the signature check hashed the first
/// member of a name and the bundle kept the last, so a second `/policy.wasm` appended to a
/// signed bundle was loaded as verified. A bundle with two members of one name (leading slash
/// or not) is refused.
#[test]
fn a_duplicate_member_cannot_smuggle_unsigned_bytes_past_the_signature() {
    let files = signed(&[
        ("policy.wasm", b"signed module"),
        ("data.json", b"{}"),
        (".manifest", b"{\"revision\": \"1\"}"),
    ]);
    let members: Vec<(String, &[u8])> = files
        .iter()
        .map(|(n, b)| (format!("/{n}"), b.as_slice()))
        .collect();
    for evil in ["/policy.wasm", "policy.wasm", "//policy.wasm"] {
        let mut with_evil: Vec<(&str, &[u8])> =
            members.iter().map(|(n, b)| (n.as_str(), *b)).collect();
        with_evil.push((evil, b"unsigned module"));
        let bytes = gzip(&tar_of(&with_evil));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.tar.gz");
        std::fs::write(&path, &bytes).unwrap();
        match Bundle::read_verified(&path, &[hs256()]) {
            Ok(b) => panic!(
                "{evil}: accepted, loading {:?}",
                String::from_utf8_lossy(&b.wasm)
            ),
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains("policy.wasm") && e.contains("twice"),
                    "{evil}: {e}"
                );
            }
        }
    }
    // The bundle as signed still verifies.
    let members: Vec<(&str, &[u8])> = members.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.tar.gz");
    std::fs::write(&path, gzip(&tar_of(&members))).unwrap();
    let b = Bundle::read_verified(&path, &[hs256()]).unwrap();
    assert_eq!(b.wasm, b"signed module");
}

/// A bundle's `data.json` holding a number the host's 64-bit reader would change is refused,
/// whoever built the bundle (see `check::tests::a_number_the_host_cannot_carry_exactly_...`).
#[test]
fn a_bundle_whose_data_holds_a_number_the_host_cannot_carry_is_refused() {
    let members: [(&str, &[u8]); 2] = [
        ("/policy.wasm", b"module"),
        ("/data.json", b"{\"serial\": 18446744073709551616}"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.tar.gz");
    std::fs::write(&path, gzip(&tar_of(&members))).unwrap();
    let e = Bundle::read(&path).err().unwrap().to_string();
    assert!(
        e.contains("/data.json") && e.contains("18446744073709551616 cannot be carried exactly"),
        "{e}"
    );
}
