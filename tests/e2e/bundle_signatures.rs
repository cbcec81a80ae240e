//! OPA bundle signatures (`/.signatures.json`, a JWT over the files' hashes): RS256, ES256 and
//! HS256 made and checked; every kind of tampering refused with a reason.

use gantry::policy::bundle::{Bundle, read_files, write_files};
use gantry::policy::bundle_signature::{self, Alg, SigningKey, VerificationKey};

use crate::support::{gantry, policy_eval, shipped_bundle, text};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        crate::support::repo()
            .join("tests/fixtures/keys")
            .join(name),
    )
    .unwrap()
}

fn files() -> Vec<(String, Vec<u8>)> {
    vec![
        (
            ".manifest".into(),
            br#"{"revision": "7", "roots": ["gantry"]}"#.to_vec(),
        ),
        (
            "data.json".into(),
            br#"{"quotas": {"vision": 512}, "roles": ["a", "b"]}"#.to_vec(),
        ),
        (
            "policy.wasm".into(),
            b"\0asm\x01\0\0\0 not really a policy".to_vec(),
        ),
    ]
}

/// (signing key, verification key) pairs for each algorithm.
fn keys() -> Vec<(SigningKey, VerificationKey)> {
    let (es_private, es_public) = bundle_signature::generate_es256().unwrap();
    let pair = |id: &str, alg, sign: Vec<u8>, verify: Vec<u8>| {
        (
            SigningKey {
                id: id.into(),
                alg,
                key: sign,
            },
            VerificationKey {
                id: id.into(),
                alg,
                key: verify,
                scope: None,
            },
        )
    };
    vec![
        pair(
            "rsa",
            Alg::Rs256,
            fixture("rsa-test-only.pem"),
            fixture("rsa-test-only.pub.pem"),
        ),
        pair(
            "ec",
            Alg::Es256,
            es_private.into_bytes(),
            es_public.into_bytes(),
        ),
        pair(
            "hmac",
            Alg::Hs256,
            b"shared secret".to_vec(),
            b"shared secret".to_vec(),
        ),
    ]
}

fn signed(key: &SigningKey) -> Vec<(String, Vec<u8>)> {
    let mut f = files();
    let sig = bundle_signature::sign(&f, key, None).unwrap();
    f.push((bundle_signature::FILE.into(), sig));
    f
}

fn refusal(files: &[(String, Vec<u8>)], keys: &[VerificationKey]) -> String {
    bundle_signature::verify(files, keys).expect_err("tampering went unnoticed")
}

#[test]
fn every_algorithm_signs_and_verifies() {
    for (sign, verify) in keys() {
        let f = signed(&sign);
        assert_eq!(
            bundle_signature::verify(&f, std::slice::from_ref(&verify)).unwrap(),
            sign.id
        );
        // The JWT is OPA's: a header naming alg and kid, a payload listing the files.
        let sigs: serde_json::Value = serde_json::from_slice(&f[3].1).unwrap();
        let jwt = sigs["signatures"][0].as_str().unwrap();
        let header = data_encoding::BASE64URL_NOPAD
            .decode(jwt.split('.').next().unwrap().as_bytes())
            .unwrap();
        let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
        assert_eq!(header["alg"], sign.alg.name());
        assert_eq!(header["kid"], sign.id.as_str());
    }
}

#[test]
fn tampered_unsigned_and_foreign_bundles_are_refused() {
    let all = keys();
    let (sign, verify) = &all[0];
    let trusted = [verify.clone()];
    let good = signed(sign);

    // Reformatting JSON keeps the signature (OPA hashes canonical JSON)...
    let mut t = good.clone();
    t[1].1 = b"{ \"roles\": [\"a\",\"b\"],\n  \"quotas\": {\"vision\": 512} }\n".to_vec();
    bundle_signature::verify(&t, &trusted).unwrap();
    // ...changing it does not.
    t[1].1 = br#"{"quotas": {"vision": 9999}, "roles": ["a", "b"]}"#.to_vec();
    assert!(refusal(&t, &trusted).contains("data.json: digest mismatch"));

    let mut t = good.clone();
    t[2].1.push(0);
    assert!(refusal(&t, &trusted).contains("policy.wasm: digest mismatch"));

    let mut t = good.clone();
    t.push(("extra.rego".into(), b"package x".to_vec()));
    assert!(refusal(&t, &trusted).contains("extra.rego: in the bundle but not covered"));

    let mut t = good.clone();
    t.remove(0);
    assert!(
        refusal(&t, &trusted).contains(".manifest: listed in the signature but not in the bundle")
    );

    assert!(refusal(&files(), &trusted).contains("unsigned"));

    // Signed by a key the verifier does not know, or by another key under the same id.
    let (other_sign, other_verify) = &all[1];
    assert!(refusal(&signed(other_sign), &trusted).contains("unknown key `ec`"));
    let impostor = VerificationKey {
        id: "ec".into(),
        ..other_verify.clone()
    };
    let (es_private, _) = bundle_signature::generate_es256().unwrap();
    let forged = signed(&SigningKey {
        id: "ec".into(),
        alg: Alg::Es256,
        key: es_private.into_bytes(),
    });
    assert!(refusal(&forged, &[impostor]).contains("does not verify"));

    // An HS256 token against an RS256 key of the same id: refused, not confused.
    let hs = signed(&SigningKey {
        id: "rsa".into(),
        alg: Alg::Hs256,
        key: b"guess".to_vec(),
    });
    assert!(refusal(&hs, &trusted).contains("algorithm"));

    // A key that demands a scope refuses a signature without it.
    let scoped = VerificationKey {
        scope: Some("write".into()),
        ..verify.clone()
    };
    assert!(refusal(&good, &[scoped]).contains("scope"));
}

#[test]
fn policy_sign_cli_and_verified_loading() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = shipped_bundle(dir.path(), "gantry/authz/allow");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let sign = || {
        gantry(
            &[
                "policy",
                "sign",
                bundle.to_str().unwrap(),
                "--alg",
                "HS256",
                "--signing-key",
                secret.to_str().unwrap(),
                "--key-id",
                "ops",
            ],
            dir.path(),
        )
    };
    // A secret others may read (as the umask left it) signs nothing: refused, naming it.
    let out = sign();
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out).1;
    assert!(
        said.contains("read by others") && said.contains("secret"),
        "{said}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = sign();
    assert!(out.status.success(), "{}", text(&out).1);
    let key = VerificationKey {
        id: "ops".into(),
        alg: Alg::Hs256,
        key: b"s3cret".to_vec(),
        scope: None,
    };
    let read = Bundle::read_verified(&bundle, std::slice::from_ref(&key)).unwrap();
    assert!(read.signatures.is_some());

    // Tamper with data.json inside the signed bundle: the CLI refuses it before loading.
    let mut members = read_files(&bundle).unwrap();
    let data = members.iter_mut().find(|(n, _)| n == "data.json").unwrap();
    data.1 = br#"{"quotas": {}}"#.to_vec();
    write_files(&bundle, &members).unwrap();
    let out = policy_eval(
        &bundle,
        "gantry/authz/allow",
        "{}",
        &[
            "--verification-key",
            secret.to_str().unwrap(),
            "--key-id",
            "ops",
            "--alg",
            "HS256",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out).1;
    assert!(
        stderr.contains("signature refused: data.json: digest mismatch"),
        "{stderr}"
    );
    let err = Bundle::read_verified(&bundle, &[key])
        .unwrap_err()
        .to_string();
    assert!(err.contains("digest mismatch"), "{err}");
}
