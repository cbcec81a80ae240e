//! Property tests: arbitrary bytes and mutated bundles (hostile member kinds, names and
//! claimed sizes, bit flips, truncation, then gzipped or not) are read or refused, never past
//! the bounds: what is accepted has at most [`MAX_MEMBERS`] members of distinct names and
//! [`MAX_UNPACKED`] bytes in all.

use std::path::Path;

use proptest::prelude::*;

use super::*;
use gantry_fuzz::{self as fuzz, Mutation, Syntax, gzip, tar_header};

/// One tar member as written: its kind, name, claimed size and actual bytes.
#[derive(Debug, Clone)]
struct Member {
    kind: u8,
    name: String,
    claimed: Option<u64>,
    bytes: Vec<u8>,
}

fn member() -> impl Strategy<Value = Member> {
    let kind = prop_oneof![
        8 => Just(b'0'),
        1 => prop::sample::select(&b"125LKxgS7\0"[..]),
    ];
    let name = prop_oneof![
        prop::sample::select(
            &[
                "/policy.wasm",
                "/data.json",
                "/.manifest",
                "/.signatures.json",
                "policy.wasm",
                "/x/data.json",
                "../../etc/passwd",
                "/",
                "",
            ][..]
        )
        .prop_map(str::to_string),
        "[a-z./]{1,120}",
    ];
    let claimed = prop_oneof![
        4 => Just(None),
        1 => prop_oneof![Just(0u64), Just(1 << 40), Just(u64::MAX >> 2), 0u64..4096].prop_map(Some),
    ];
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        prop::sample::select(&["{}", "{\"a\": [1, 2]}", "[", "{\"revision\": 7}"][..])
            .prop_map(|s| s.as_bytes().to_vec()),
    ];
    (kind, name, claimed, bytes).prop_map(|(kind, name, claimed, bytes)| Member {
        kind,
        name,
        claimed,
        bytes,
    })
}

fn tar(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        let size = m.claimed.unwrap_or(m.bytes.len() as u64);
        out.extend(tar_header(m.kind, &m.name, size));
        out.extend_from_slice(&m.bytes);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// What every accepted bundle promises.
fn check_files(files: &[(String, Vec<u8>)]) {
    assert!(files.len() <= MAX_MEMBERS);
    let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    assert!(total <= MAX_UNPACKED, "{total}");
    let mut names = std::collections::HashSet::new();
    assert!(
        files.iter().all(|(n, _)| names.insert(n)),
        "duplicate names"
    );
    if let Ok(b) = Bundle::from_files(Path::new("b"), files.to_vec()) {
        assert!(
            files
                .iter()
                .any(|(n, w)| n == "policy.wasm" && *w == b.wasm)
        );
    }
}

fn read(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    read_files_from(bytes, Path::new("in/b.tar.gz")).map_err(|e| {
        let e = e.to_string();
        assert!(e.contains("in/b.tar.gz"), "{e}");
        e
    })
}

proptest! {
    #![proptest_config(fuzz::config(256))]

    #[test]
    fn arbitrary_bytes_are_refused_or_read_within_bounds(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        gzipped in any::<bool>(),
    ) {
        let bytes = if gzipped { gzip(&bytes) } else { bytes };
        if let Ok(files) = read(&bytes) {
            check_files(&files);
        }
    }

    #[test]
    fn mutated_bundles_are_refused_or_read_within_bounds(
        members in prop::collection::vec(member(), 0..8),
        mutations in prop::collection::vec(fuzz::mutation(Syntax::Json), 0..3),
        after_gzip in any::<bool>(),
    ) {
        let tar = tar(&members);
        let bytes = if after_gzip {
            fuzz::apply(&gzip(&tar), Syntax::Json, &mutations)
        } else {
            // Mutations that only make sense on text are left out of the binary.
            let binary: Vec<Mutation> = mutations
                .into_iter()
                .filter(|m| matches!(m, Mutation::FlipBit(..) | Mutation::Truncate(_) | Mutation::Insert(..)))
                .collect();
            gzip(&fuzz::apply(&tar, Syntax::Json, &binary))
        };
        if let Ok(files) = read(&bytes) {
            check_files(&files);
        }
    }
}
