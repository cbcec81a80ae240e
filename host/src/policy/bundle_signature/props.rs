//! Property tests: a signed bundle whose signature file, files or keys were mutated verifies
//! only if every file still hashes as signed and none was added or removed; nothing panics.

use proptest::prelude::*;

use super::*;
use gantry_fuzz::{self as fuzz, Syntax};

fn files() -> Vec<(String, Vec<u8>)> {
    vec![
        ("policy.wasm".into(), b"\0asm module bytes".to_vec()),
        (
            "data.json".into(),
            br#"{"roles": {"ada": ["admin"]}}"#.to_vec(),
        ),
        (
            ".manifest".into(),
            br#"{"revision": "7", "roots": [""]}"#.to_vec(),
        ),
    ]
}

fn hashes(files: &[(String, Vec<u8>)]) -> Vec<(String, Result<String, String>)> {
    let mut h: Vec<_> = files
        .iter()
        .filter(|(n, _)| n != FILE)
        .map(|(n, b)| (n.clone(), file_hash(n, b)))
        .collect();
    h.sort();
    h
}

/// An ES256 key pair and the HS256 secret, signed once for the run.
fn keys() -> (SigningKey, VerificationKey, SigningKey, VerificationKey) {
    let (private, public) = generate_es256().unwrap();
    (
        SigningKey {
            id: "es".into(),
            alg: Alg::Es256,
            key: private.into_bytes(),
        },
        VerificationKey {
            id: "es".into(),
            alg: Alg::Es256,
            key: public.into_bytes(),
            scope: None,
        },
        SigningKey {
            id: "hs".into(),
            alg: Alg::Hs256,
            key: b"secret".to_vec(),
        },
        VerificationKey {
            id: "hs".into(),
            alg: Alg::Hs256,
            key: b"secret".to_vec(),
            scope: Some("write".into()),
        },
    )
}

#[derive(Debug, Clone)]
enum Edit {
    Signature(Vec<fuzz::Mutation>),
    File(usize, Vec<fuzz::Mutation>),
    Drop(usize),
    Add(String),
    Key(Vec<fuzz::Mutation>),
}

fn edit() -> impl Strategy<Value = Edit> {
    let mutations = || prop::collection::vec(fuzz::mutation(Syntax::Json), 1..4);
    prop_oneof![
        4 => mutations().prop_map(Edit::Signature),
        3 => (0usize..3, mutations()).prop_map(|(i, m)| Edit::File(i, m)),
        1 => (0usize..4).prop_map(Edit::Drop),
        1 => prop::sample::select(&["extra.rego", "x/data.json", "policy.wasm"][..])
            .prop_map(|s| Edit::Add(s.to_string())),
        1 => mutations().prop_map(Edit::Key),
    ]
}

proptest! {
    #![proptest_config(fuzz::config(192))]

    #[test]
    fn a_mutated_signed_bundle_verifies_only_if_its_files_are_as_signed(
        es in any::<bool>(),
        edits in prop::collection::vec(edit(), 0..3),
    ) {
        thread_local!(static KEYS: (SigningKey, VerificationKey, SigningKey, VerificationKey) = keys());
        let (sign_key, mut verify_key) = KEYS.with(|k| if es {
            (k.0.clone(), k.1.clone())
        } else {
            (k.2.clone(), k.3.clone())
        });
        let mut files = files();
        let signed = hashes(&files);
        let sig = sign(&files, &sign_key, verify_key.scope.as_deref()).unwrap();
        files.push((FILE.to_string(), sig));
        for e in &edits {
            match e {
                Edit::Signature(m) => {
                    let last = files.len() - 1;
                    files[last].1 = fuzz::apply(&files[last].1, Syntax::Json, m);
                }
                Edit::File(i, m) => files[*i].1 = fuzz::apply(&files[*i].1, Syntax::Json, m),
                Edit::Drop(i) if *i < files.len() => {
                    files.remove(*i);
                }
                Edit::Drop(_) => {}
                Edit::Add(name) => files.push((name.clone(), b"{}".to_vec())),
                Edit::Key(m) => verify_key.key = fuzz::apply(&verify_key.key, Syntax::Json, m),
            }
        }
        if let Ok(kid) = verify(&files, std::slice::from_ref(&verify_key)) {
            prop_assert_eq!(kid, verify_key.id.clone());
            // A name appearing twice is refused when the bundle is read; here, the first counts.
            let mut first = Vec::new();
            for f in &files {
                if !first.iter().any(|(n, _): &(String, Vec<u8>)| *n == f.0) {
                    first.push(f.clone());
                }
            }
            prop_assert_eq!(hashes(&first), signed.clone(), "{:?}", edits);
        }
    }
}
