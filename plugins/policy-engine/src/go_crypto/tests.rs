use super::*;

use alloc::sync::Arc;

// Expected values computed apart from this code (Python's hashlib, hmac and base64), and the
// published vectors: FIPS 180 / RFC 1321 digests of "abc", RFC 2202 (HMAC-MD5, HMAC-SHA1) and
// RFC 4231 (HMAC-SHA256, HMAC-SHA512).

#[test]
fn digests_are_the_published_ones() {
    let hex_of = |h: Hash, s: &str| hex(&h.digest(s.as_bytes()));
    assert_eq!(hex_of(Hash::Md5, "abc"), "900150983cd24fb0d6963f7d28e17f72");
    assert_eq!(
        hex_of(Hash::Sha1, "abc"),
        "a9993e364706816aba3e25717850c26c9cd0d89d"
    );
    assert_eq!(
        hex_of(Hash::Sha256, "abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(hex_of(Hash::Md5, ""), "d41d8cd98f00b204e9800998ecf8427e");
}

#[test]
fn hmacs_are_the_rfc_vectors() {
    let mac = |h: Hash, key: &[u8], data: &str| hex(&h.hmac(key, data.as_bytes()));
    let jefe = "what do ya want for nothing?";
    // RFC 2202, test cases 1 and 2.
    assert_eq!(
        mac(Hash::Md5, &[0x0b; 16], "Hi There"),
        "9294727a3638bb1c13f48ef8158bfc9d"
    );
    assert_eq!(
        mac(Hash::Md5, b"Jefe", jefe),
        "750c783e6ab0b503eaa86e310a5db738"
    );
    assert_eq!(
        mac(Hash::Sha1, b"Jefe", jefe),
        "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
    );
    // RFC 4231, test cases 2 and 6 (a key longer than the block, hashed first).
    assert_eq!(
        mac(Hash::Sha256, b"Jefe", jefe),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        mac(Hash::Sha512, b"Jefe", jefe),
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
    );
    assert_eq!(
        mac(
            Hash::Sha256,
            &[0xaa; 131],
            "Test Using Larger Than Block-Size Key - Hash Key First"
        ),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
    assert!(equal(b"abc", b"abc"));
    assert!(!equal(b"abc", b"abd") && !equal(b"abc", b"abcd") && !equal(b"", b"a"));
    assert!(equal(b"", b""));
}

/// Go's padded URL decoder after OPA's padding: newlines skipped, trailing bits ignored,
/// a length of 1 mod 4 refused, padding checked.
#[test]
fn base64url_is_read_as_opa_reads_it() {
    assert_eq!(base64url("YWJj").unwrap(), b"abc");
    assert_eq!(base64url("YWI").unwrap(), b"ab");
    assert_eq!(base64url("YWI=").unwrap(), b"ab");
    assert_eq!(base64url("YQ").unwrap(), b"a");
    assert_eq!(base64url("YQ==").unwrap(), b"a");
    assert_eq!(base64url("").unwrap(), b"");
    assert_eq!(base64url("-_-_").unwrap(), [0xfb, 0xff, 0xbf]);
    // Not strict: the unused bits of `YR` are not zero, and Go keeps `a`.
    assert_eq!(base64url("YR").unwrap(), b"a");
    assert_eq!(base64url("YW\nJjZA==").unwrap(), b"abcd");
    // Newlines after the last quantum end the text (Go's decoder skips them there too).
    assert_eq!(go_base64(b"YWJj\r\n", URL_ALPHABET).unwrap(), b"abc");
    assert_eq!(go_base64(b"YWJj\n\n", STD_ALPHABET).unwrap(), b"abc");
    // OPA pads by length, newline counted: one `=` short for Go.
    assert_eq!(
        base64url("YW\nJjZA").unwrap_err(),
        "illegal base64 data at input byte 8"
    );
    // The length counts the newline: 5 is 1 mod 4.
    assert!(base64url("YW\nJj").is_err());
    assert_eq!(
        base64url("YWJjZ").unwrap_err(),
        "illegal base64url string: YWJjZ"
    );
    // `+` and `/` are standard base64's, not the URL alphabet's.
    assert_eq!(
        base64url("a+bc").unwrap_err(),
        "illegal base64 data at input byte 1"
    );
    assert_eq!(
        base64url("YQ=").unwrap_err(),
        "illegal base64 data at input byte 3"
    );
    assert_eq!(
        base64url("YQ==YQ==").unwrap_err(),
        "illegal base64 data at input byte 4"
    );
    assert_eq!(
        base64url("Y===").unwrap_err(),
        "illegal base64 data at input byte 1"
    );
}

/// jwt.io's HS256 example, secret `your-256-bit-secret`.
const JWT_IO: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

fn json(text: &str) -> Value {
    crate::json::parse(text).unwrap()
}

#[test]
fn decode_gives_header_payload_and_hex_signature() {
    assert_eq!(
        jwt_decode(JWT_IO).unwrap(),
        json(
            r#"[{"alg":"HS256","typ":"JWT"},
                {"sub":"1234567890","name":"John Doe","iat":1516239022},
                "49f94ac7044948c78a285d904f87f0a4c7897f7e8f3a4eb2255fda750b2cc397"]"#
        )
    );
    // A nested token: the inner one's, quoted or not.
    let inner = jwt_decode(INNER).unwrap();
    assert_eq!(jwt_decode(NESTED).unwrap(), inner);
    assert_eq!(jwt_decode(NESTED_QUOTED).unwrap(), inner);
    assert_eq!(
        opa_error(jwt_decode("abc")),
        "encoded JWT had no period separators"
    );
    assert_eq!(
        opa_error(jwt_decode("a.b")),
        "encoded JWT must have 3 sections, found 2"
    );
    assert_eq!(
        opa_error(jwt_decode(JWE)),
        "JWT is a JWE object, which is not supported"
    );
    assert_eq!(
        opa_error(jwt_decode(ARRAY_PAYLOAD)),
        "decoded JSON type was not an Object"
    );
    assert!(
        opa_error(jwt_decode("eyJhbGciOiJIUzI1NiJ9x.e30."))
            .starts_with("JWT header had invalid encoding: illegal base64")
    );
    // Not JSON for Go either; a reader's refusal is a hard error whatever the mode.
    assert!(matches!(
        jwt_decode("YWJj.e30."),
        Err(Error::Hard(e)) if e.starts_with("bad JWT header: JSON Gantry cannot read")
    ));
    // An empty signature is an empty string.
    assert_eq!(
        jwt_decode("eyJhbGciOiJub25lIn0.e30.").unwrap(),
        json(r#"[{"alg":"none"},{},""]"#)
    );
}

/// An error OPA has too (the mode's: undefined unless strict).
fn opa_error(got: Result<Value, Error>) -> String {
    match got {
        Err(Error::Builtin(e)) => e,
        other => panic!("expected a builtin error, got {other:?}"),
    }
}

fn run(f: Box<dyn regorus::Extension>, args: &[&str]) -> Value {
    let mut f = f;
    f(args.iter().map(|a| Value::from(*a)).collect()).unwrap()
}

fn strict(message: String) -> anyhow::Result<Value> {
    Err(anyhow::Error::msg(message))
}

#[test]
fn hs_verification_is_an_hmac_of_the_signed_text() {
    assert_eq!(
        run(verify_hs256(strict), &[JWT_IO, "your-256-bit-secret"]),
        Value::from(true)
    );
    assert_eq!(
        run(verify_hs256(strict), &[JWT_IO, "your-256-bit-secreT"]),
        Value::from(false)
    );
    // A payload changed (`John Doe` to `John Doo`) under the same signature.
    let tampered = JWT_IO.replace("IkpvaG4gRG9lIiwi", "IkpvaG4gRG9vIiwi");
    assert_ne!(tampered, JWT_IO);
    assert_eq!(
        run(verify_hs256(strict), &[&tampered, "your-256-bit-secret"]),
        Value::from(false)
    );
    assert_eq!(
        run(verify_hs384(strict), &[HS384, "secret"]),
        Value::from(true)
    );
    assert_eq!(
        run(verify_hs512(strict), &[HS512, "secret"]),
        Value::from(true)
    );
    // The hash is the builtin's, whatever the header says.
    assert_eq!(
        run(verify_hs256(strict), &[HS384, "secret"]),
        Value::from(false)
    );
    let mut f = verify_hs256(strict);
    let e = f(alloc::vec![Value::from(1u64), Value::from("k")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "io.jwt.verify_hs256: operand 1 must be string"
    );
    assert_eq!(
        run(
            crate::go_crypto::hmac_sha256(strict),
            &["what do ya want for nothing?", "Jefe"]
        ),
        Value::from("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    );
}

// Tokens signed with `secret` by Python's hmac (claims as named).
/// `{"iss":"gantry","aud":["api","web"],"exp":2000000000,"nbf":1500000000,"sub":"alice"}`.
const CLAIMS: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJnYW50cnkiLCJhdWQiOlsiYXBpIiwid2ViIl0sImV4cCI6MjAwMDAwMDAwMCwibmJmIjoxNTAwMDAwMDAwLCJzdWIiOiJhbGljZSJ9.UpbacR61fA3-W9xZhTqv7ditCfXOkRBQ3hegFOxlZTA";
const HS384: &str = "eyJhbGciOiJIUzM4NCJ9.eyJzdWIiOiJib2IifQ.-WBozRnAj3UClHjwGph9Byn5sxA1s_2zQOdKtDKP8lsOXxgBio044EtmiLRBMgIx";
const HS512: &str = "eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiJjYXJvbCJ9.5tBS6Lg_IINNMhTxFrzCzbD80edXrLoN9jl-_VUngBKWoWzWsY7JUWUefRMrwBkkNWtgyc4ogab93-t_C8dgKA";
const INNER: &str =
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJpbm5lciJ9.HyDpflH65yCeARd-JrSFifFKQ-envLAjnwiUl1G3F4w";
/// `{"alg":"HS256","cty":"JWT"}` over [`INNER`].
const NESTED: &str = "eyJhbGciOiJIUzI1NiIsImN0eSI6IkpXVCJ9.ZXlKaGJHY2lPaUpJVXpJMU5pSjkuZXlKemRXSWlPaUpwYm01bGNpSjkuSHlEcGZsSDY1eUNlQVJkLUpyU0ZpZkZLUS1lbnZMQWpud2lVbDFHM0Y0dw.p7Vbem-an82XMUg0WEI5xhWOqOowOuNIfjp1x5blgOs";
/// The same over `"` + [`INNER`] + `"`.
const NESTED_QUOTED: &str = "eyJhbGciOiJIUzI1NiIsImN0eSI6IkpXVCJ9.ImV5SmhiR2NpT2lKSVV6STFOaUo5LmV5SnpkV0lpT2lKcGJtNWxjaUo5Lkh5RHBmbEg2NXlDZUFSZC1KclNGaWZGS1EtZW52TEFqbndpVWwxRzNGNHci.kFys2WHzUC_bq7be7bHJqfCFVtswntnKyZdzHxUAEO4";
/// `{"alg":"HS256","crit":["x"],"x":1}`.
const CRIT_UNKNOWN: &str = "eyJhbGciOiJIUzI1NiIsImNyaXQiOlsieCJdLCJ4IjoxfQ.eyJzdWIiOiJkIn0.LWZ_6abueD1gC6UhqbP55I_bv-36TIGKSJRjvf5Hf1Y";
/// `{"typ":"JWT"}`: no `alg`.
const NO_ALG: &str =
    "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJkIn0.HzAd_lsLgh-R1BwlMj80f8BtoKYL-hM0TtJIH8OXBv4";
const JWE: &str = "eyJhbGciOiJkaXIiLCJlbmMiOiJBMTI4R0NNIn0.eyJzdWIiOiJkIn0.RSRb1HGNclKqxhFPICcN_CjiyIxPM8Rnm_5TpOfn360";
/// `{"aud":"api"}`.
const AUD_STRING: &str =
    "eyJhbGciOiJIUzI1NiJ9.eyJhdWQiOiJhcGkifQ.V_zeuFm93SWMjpzPzbgNz8R2Woi4Rhk_HkdmXIMLGNA";
/// `{"exp":"soon"}`.
const EXP_STRING: &str =
    "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOiJzb29uIn0.H_hTOv4NubbIYQf2AtmU433D1MDiPv2vmqrjDkx4pT8";
/// `[1,2]`.
const ARRAY_PAYLOAD: &str =
    "eyJhbGciOiJIUzI1NiJ9.WzEsMl0.ujhiRGknuUjP-U5SU_ON7QSXb4eyN8iMIryJjD-DNAM";
/// `{"exp":1700000000.5}`.
const FRACTION_EXP: &str =
    "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDAuNX0.yF8mWMnftmMdPZWnU3WX_AFN8YOQzJpUj6IP8IVSx3M";

/// The clock of these tests: 2023-11-14T22:13:20Z.
fn clock() -> Clock {
    Arc::new(|| Ok(1_700_000_000_000_000_000))
}

fn verify(jwt: &str, constraints: &str) -> Result<Value, String> {
    match jwt_decode_verify(&Value::from(jwt), &json(constraints), &clock()) {
        Ok(v) => Ok(v),
        Err(Error::Builtin(e) | Error::Hard(e)) => Err(e),
    }
}

fn verified(jwt: &str, constraints: &str) -> bool {
    let v = verify(jwt, constraints).unwrap();
    let flag = v.as_array().unwrap()[0].clone();
    if flag == Value::from(false) {
        assert_eq!(v, json("[false, {}, {}]"));
    }
    flag == Value::from(true)
}

#[test]
fn decode_verify_checks_the_signature_and_the_claims_as_opa_does() {
    assert_eq!(
        verify(CLAIMS, r#"{"secret": "secret", "aud": "api"}"#).unwrap(),
        json(
            r#"[true, {"alg":"HS256","typ":"JWT"},
                {"iss":"gantry","aud":["api","web"],"exp":2000000000,"nbf":1500000000,"sub":"alice"}]"#
        )
    );
    assert!(!verified(CLAIMS, r#"{"secret": "Secret", "aud": "api"}"#));
    // A token with an audience needs the constraint naming one of it.
    assert!(!verified(CLAIMS, r#"{"secret": "secret"}"#));
    assert!(verified(CLAIMS, r#"{"secret": "secret", "aud": "web"}"#));
    assert!(!verified(CLAIMS, r#"{"secret": "secret", "aud": "other"}"#));
    assert!(verified(
        AUD_STRING,
        r#"{"secret": "secret", "aud": "api"}"#
    ));
    assert!(!verified(HS384, r#"{"secret": "secret", "aud": "api"}"#));
    // Issuer, algorithm.
    assert!(verified(
        CLAIMS,
        r#"{"secret": "secret", "aud": "api", "iss": "gantry"}"#
    ));
    assert!(!verified(
        CLAIMS,
        r#"{"secret": "secret", "aud": "api", "iss": "other"}"#
    ));
    assert!(!verified(HS384, r#"{"secret": "secret", "iss": "gantry"}"#));
    assert!(verified(HS384, r#"{"secret": "secret", "alg": "HS384"}"#));
    assert!(!verified(HS384, r#"{"secret": "secret", "alg": "HS256"}"#));
    assert!(verified(HS512, r#"{"secret": "secret"}"#));
    // Time: `exp` strictly after it, `nbf` at or before it (seconds; `time` in nanoseconds).
    let at = |ns: &str| format!(r#"{{"secret": "secret", "aud": "api", "time": {ns}}}"#);
    assert!(verified(CLAIMS, &at("1999999000000000000")));
    // As a float64, 1999999999999999999 ns is 2e18: expired, in OPA too.
    assert!(!verified(CLAIMS, &at("1999999999999999999")));
    assert!(!verified(CLAIMS, &at("2000000000000000000")));
    assert!(verified(CLAIMS, &at("1500000000000000000")));
    assert!(!verified(CLAIMS, &at("1499999000000000000")));
    // Without `time`, the host's clock: 1,700,000,000 s, before a half second more.
    assert!(verified(FRACTION_EXP, r#"{"secret": "secret"}"#));
    assert!(!verified(
        FRACTION_EXP,
        &at("1700000000500000000").replace(r#""aud": "api", "#, "")
    ));
    // Nested tokens are verified through to the innermost, whose header and payload come back.
    assert_eq!(
        verify(NESTED, r#"{"secret": "secret"}"#).unwrap(),
        json(r#"[true, {"alg":"HS256"}, {"sub":"inner"}]"#)
    );
    // Headers: `alg` required, unknown critical parameters refused.
    assert!(!verified(NO_ALG, r#"{"secret": "secret"}"#));
    assert!(!verified(CRIT_UNKNOWN, r#"{"secret": "secret"}"#));
    // A `none` token is never verified by a secret.
    assert!(!verified(
        "eyJhbGciOiJub25lIn0.e30.",
        r#"{"secret": "secret"}"#
    ));
}

#[test]
fn decode_verify_errors_as_opa_does() {
    let e = |jwt: &str, c: &str| verify(jwt, c).unwrap_err();
    // A PEM block without its end is read as a JWK, which it is not; the cert is read first.
    assert!(
        e(CLAIMS, r#"{"cert": "-----BEGIN CERTIFICATE-----"}"#)
            .starts_with("failed to parse a JWK key (set)")
    );
    assert!(
        e(CLAIMS, r#"{"cert": "x", "secret": "secret"}"#)
            .starts_with("failed to parse a JWK key (set)")
    );
    assert_eq!(e(CLAIMS, r#"{}"#), "no key constraint");
    assert_eq!(e(CLAIMS, r#"{"secret": ""}"#), "no key constraint");
    assert_eq!(
        e(CLAIMS, r#"{"secret": 1}"#),
        "secret constraint: must be a string"
    );
    assert_eq!(
        e(CLAIMS, r#"{"secret": "secret", "foo": 1}"#),
        "unknown token validation constraint: foo"
    );
    assert_eq!(
        e(CLAIMS, r#"{"secret": "secret", "time": -1}"#),
        "token time constraint: must not be negative"
    );
    assert_eq!(
        e(CLAIMS, r#"{"secret": "secret", "time": "now"}"#),
        "token time constraint: must be a number"
    );
    assert_eq!(
        e(EXP_STRING, r#"{"secret": "secret"}"#),
        "exp value must be a number"
    );
    assert_eq!(
        e(JWE, r#"{"secret": "secret"}"#),
        "JWT is a JWE object, which is not supported"
    );
    assert_eq!(
        e("abc", r#"{"secret": "secret"}"#),
        "encoded JWT had no period separators"
    );
    let Err(Error::Builtin(msg)) =
        jwt_decode_verify(&Value::from("a.b.c"), &Value::from("x"), &clock())
    else {
        panic!("a constraint that is not an object");
    };
    assert_eq!(msg, "operand 2 must be object");
}

/// Found by a review: a header this reader refuses where Go's reads it (a trailing `null`, a
/// byte that is not UTF-8, an exponent past 1000), and a `cert` constraint, were builtin errors,
/// which a non-strict policy turns into undefined: `deny if { [valid, _, _] :=
/// io.jwt.decode_verify(t, c); not valid }` did not fire and a forged token was allowed (OPA
/// answers `[false, {}, {}]`). What Gantry cannot read or verify fails the evaluation in either
/// mode (here a private JWK as the `cert`); an error OPA has too stays the mode's.
#[test]
fn what_gantry_cannot_read_or_verify_fails_the_evaluation_in_either_mode() {
    let lenient = |_: String| -> anyhow::Result<Value> { Ok(Value::Undefined) };
    let secret = json(r#"{"secret": "s3cret"}"#);
    for header in [
        "eyJhbGciOiJIUzI1NiJ9IG51bGw",
        "eyJhbGciOiJIUzI1NiIsIngiOiL_In0",
        "eyJhbGciOiJIUzI1NiIsIngiOjFlNTAwMH0",
    ] {
        let token = format!("{header}.e30.AAAA");
        let mut dv = decode_verify(lenient, clock());
        let got = dv(alloc::vec![Value::from(token.as_str()), secret.clone()]);
        assert!(got.is_err(), "{token}: {got:?}");
        let mut decode = decode(lenient);
        let got = decode(alloc::vec![Value::from(token.as_str())]);
        assert!(got.is_err(), "{token}: {got:?}");
    }
    let mut dv = decode_verify(lenient, clock());
    // A private JWK: jwx reads it, Gantry does not.
    let cert =
        json(r#"{"cert": "{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\",\"d\":\"AQAB\"}"}"#);
    assert!(dv(alloc::vec![Value::from(CLAIMS), cert]).is_err());
    // OPA's own errors stay undefined when not strict.
    let mut dv = decode_verify(lenient, clock());
    let got = dv(alloc::vec![Value::from("abc"), secret]).unwrap();
    assert_eq!(got, Value::Undefined);
}
