//! OPA's digest, HMAC and JSON Web Token builtins, which regorus lacks (a policy calling one was
//! refused at build): `crypto.md5`/`sha1`/`sha256`, `crypto.hmac.*`, `io.jwt.decode`,
//! `io.jwt.verify_hs256`/`384`/`512`, `io.jwt.verify_rs*`/`ps*`/`es*` (256, 384, 512) and
//! `verify_eddsa`, and `io.jwt.decode_verify` with a `secret` or a `cert`, as OPA's
//! `v1/topdown/crypto.go` and `v1/topdown/tokens.go` compute them: base64url read as
//! `encoding.go`'s `base64.url_decode` reads it (padding added where missing, then Go's padded
//! decoder, which skips `\r` and `\n`), header and payload as `json.unmarshal` reads them, MACs
//! compared as Go's `hmac.Equal` does (in constant time).
//!
//! A certificate argument (`verify_*`'s second, `decode_verify`'s `cert`) is read as OPA's
//! `getKeysFromCertOrJWK` reads it (`keys`): one PEM `CERTIFICATE` or `PUBLIC KEY` and nothing
//! after it (a chain is OPA's error), else a JWK or JWK set, its keys chosen by the token's `kid`
//! and `alg` as OPA chooses them. Signatures are checked as Go's `crypto/rsa`, `crypto/ecdsa` and
//! `crypto/ed25519` check them (`signatures`): OPA's own verifiers for `verify_*` (the
//! builtin's hash whatever the header says, a PSS salt of any length, ECDSA halves of any length),
//! jwx's `jwsbb.Verify` for `decode_verify` (the header's `alg`, salts as long as the hash, ECDSA
//! signatures exactly twice the curve's size, a JWK `oct` key as an HMAC secret).
//!
//! Not here: `io.jwt.encode_sign*` and `crypto.x509.*`. Where OPA's Go panics (a header `cty` or
//! a payload `iss` that is not a string) the call is an error; so is a header or payload that is
//! not UTF-8 (Go reads it with replacement characters). What Gantry cannot read or verify where
//! OPA might (a P-224 or DSA key, a private JWK, an RSA modulus past 16,384 bits, a certificate
//! the `x509-cert` crate refuses, JWK forms jwx's versions read differently) fails the evaluation
//! in either mode: the engine may deny more than OPA, never allow more.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cmp::Ordering;

use hmac::{Hmac, Mac};
use regorus::Value;
use subtle::ConstantTimeEq;

use crate::go_builtins::{Fail, GoError as Error};
use crate::host_builtins::Clock;

mod keys;
mod signatures;

use keys::VerificationKey;
use signatures::PublicKey;

/// The hashes OPA's builtins name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Md5,
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            Hash::Md5 => md5::Md5::digest(data).to_vec(),
            Hash::Sha1 => sha1::Sha1::digest(data).to_vec(),
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Hash::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    /// Go's `hmac.New(hash, key)` over `data`: any key length (a long key is hashed first).
    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
            match <M as hmac::digest::KeyInit>::new_from_slice(key) {
                Ok(mut m) => {
                    m.update(data);
                    m.finalize().into_bytes().to_vec()
                }
                // HMAC takes keys of every length; no key reaches here.
                Err(_) => Vec::new(),
            }
        }
        match self {
            Hash::Md5 => mac::<Hmac<md5::Md5>>(key, data),
            Hash::Sha1 => mac::<Hmac<sha1::Sha1>>(key, data),
            Hash::Sha256 => mac::<Hmac<sha2::Sha256>>(key, data),
            Hash::Sha384 => mac::<Hmac<sha2::Sha384>>(key, data),
            Hash::Sha512 => mac::<Hmac<sha2::Sha512>>(key, data),
        }
    }

    /// The HMAC a JWS `alg` names (the only signatures a secret verifies).
    fn of_alg(alg: &str) -> Option<Hash> {
        match alg {
            "HS256" => Some(Hash::Sha256),
            "HS384" => Some(Hash::Sha384),
            "HS512" => Some(Hash::Sha512),
            _ => None,
        }
    }
}

/// Go's `hmac.Equal`: false for different lengths, else a comparison in constant time.
fn equal(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// The string operands of `name`, or its error (`operand i must be string`).
fn strings<'a>(name: &str, args: &'a [Value]) -> Result<Vec<&'a str>, String> {
    args.iter()
        .enumerate()
        .map(|(i, a)| match a.as_string() {
            Ok(s) => Ok(&**s),
            Err(_) => Err(format!("{name}: operand {} must be string", i + 1)),
        })
        .collect()
}

fn digest_builtin(name: &'static str, hash: Hash, fail: impl Fail) -> Box<dyn regorus::Extension> {
    Box::new(move |args: Vec<Value>| match strings(name, &args) {
        Ok(s) => Ok(Value::from(hex(&hash.digest(s[0].as_bytes())))),
        Err(e) => fail(e),
    })
}

fn hmac_builtin(name: &'static str, hash: Hash, fail: impl Fail) -> Box<dyn regorus::Extension> {
    Box::new(move |args: Vec<Value>| match strings(name, &args) {
        Ok(s) => Ok(Value::from(hex(
            &hash.hmac(s[1].as_bytes(), s[0].as_bytes())
        ))),
        Err(e) => fail(e),
    })
}

/// `crypto.md5(x)`: the hex MD5 digest of the string's bytes.
pub fn md5(fail: impl Fail) -> Box<dyn regorus::Extension> {
    digest_builtin("crypto.md5", Hash::Md5, fail)
}

/// `crypto.sha1(x)`.
pub fn sha1(fail: impl Fail) -> Box<dyn regorus::Extension> {
    digest_builtin("crypto.sha1", Hash::Sha1, fail)
}

/// `crypto.sha256(x)`.
pub fn sha256(fail: impl Fail) -> Box<dyn regorus::Extension> {
    digest_builtin("crypto.sha256", Hash::Sha256, fail)
}

/// `crypto.hmac.md5(x, key)`: the hex HMAC of `x` under `key`.
pub fn hmac_md5(fail: impl Fail) -> Box<dyn regorus::Extension> {
    hmac_builtin("crypto.hmac.md5", Hash::Md5, fail)
}

/// `crypto.hmac.sha1(x, key)`.
pub fn hmac_sha1(fail: impl Fail) -> Box<dyn regorus::Extension> {
    hmac_builtin("crypto.hmac.sha1", Hash::Sha1, fail)
}

/// `crypto.hmac.sha256(x, key)`.
pub fn hmac_sha256(fail: impl Fail) -> Box<dyn regorus::Extension> {
    hmac_builtin("crypto.hmac.sha256", Hash::Sha256, fail)
}

/// `crypto.hmac.sha512(x, key)`.
pub fn hmac_sha512(fail: impl Fail) -> Box<dyn regorus::Extension> {
    hmac_builtin("crypto.hmac.sha512", Hash::Sha512, fail)
}

/// `crypto.hmac.equal(mac1, mac2)`: the two strings' bytes compared in constant time (OPA
/// compares the text as given, hex or not).
pub fn hmac_equal(fail: impl Fail) -> Box<dyn regorus::Extension> {
    Box::new(
        move |args: Vec<Value>| match strings("crypto.hmac.equal", &args) {
            Ok(s) => Ok(Value::from(equal(s[0].as_bytes(), s[1].as_bytes()))),
            Err(e) => fail(e),
        },
    )
}

/// `io.jwt.decode(jwt)`: `[header, payload, signature]`, the signature in hex; nothing verified.
pub fn decode(fail: impl Fail) -> Box<dyn regorus::Extension> {
    Box::new(move |args: Vec<Value>| {
        let name = "io.jwt.decode";
        match strings(name, &args) {
            Ok(s) => jwt_decode(s[0]).or_else(|e| e.context(name).answer(fail)),
            Err(e) => fail(e),
        }
    })
}

fn verify_hs(name: &'static str, hash: Hash, fail: impl Fail) -> Box<dyn regorus::Extension> {
    Box::new(move |args: Vec<Value>| {
        let verified = strings(name, &args).and_then(|s| {
            let token = Token::split(s[0]).map_err(|e| format!("{name}: {e}"))?;
            let mac = hash.hmac(s[1].as_bytes(), token.signed().as_bytes());
            let signature = base64url(token.signature).map_err(|e| format!("{name}: {e}"))?;
            Ok(equal(&signature, &mac))
        });
        match verified {
            Ok(b) => Ok(Value::from(b)),
            Err(e) => fail(e),
        }
    })
}

/// `io.jwt.verify_hs256(jwt, secret)`: whether the signature is the HMAC-SHA256 of the signed
/// text under the secret (the header is not read: its `alg` may say otherwise).
pub fn verify_hs256(fail: impl Fail) -> Box<dyn regorus::Extension> {
    verify_hs("io.jwt.verify_hs256", Hash::Sha256, fail)
}

/// `io.jwt.verify_hs384(jwt, secret)`.
pub fn verify_hs384(fail: impl Fail) -> Box<dyn regorus::Extension> {
    verify_hs("io.jwt.verify_hs384", Hash::Sha384, fail)
}

/// `io.jwt.verify_hs512(jwt, secret)`.
pub fn verify_hs512(fail: impl Fail) -> Box<dyn regorus::Extension> {
    verify_hs("io.jwt.verify_hs512", Hash::Sha512, fail)
}

/// The signature families of OPA's `io.jwt.verify_*` with a certificate argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// RSASSA-PKCS1-v1_5 (`RS*`).
    Rs,
    /// RSASSA-PSS, the salt's length read from the signature (`PS*`).
    Ps,
    /// ECDSA, the signature's two halves `r` and `s` (`ES*`).
    Es,
    /// Ed25519 over the signed text itself (`EdDSA`).
    EdDsa,
}

/// OPA's verifier of `family` (`verifyES`, `verifyEd25519`, `builtinJWTVerifyRSA`'s) with the
/// builtin's hash, whatever the header's `alg`: a key of another type does not verify.
fn builtin_verifier(
    family: Family,
    hash: Hash,
    key: &PublicKey,
    signed: &[u8],
    signature: &[u8],
) -> Result<bool, Error> {
    Ok(match (family, key) {
        (Family::Rs, PublicKey::Rsa(k)) => k.verify_pkcs1v15(hash, &hash.digest(signed), signature),
        (Family::Ps, PublicKey::Rsa(k)) => {
            k.verify_pss(hash, &hash.digest(signed), signature, None)
        }
        (Family::Es, PublicKey::Ec(k)) => {
            let n = signature.len() / 2;
            k.verify(&hash.digest(signed), &signature[..n], &signature[n..])
        }
        (Family::Es, PublicKey::Unsupported(e)) => return Err(Error::Hard(e.clone())),
        (Family::EdDsa, PublicKey::Ed25519(k)) => signatures::verify_ed25519(k, signed, signature),
        _ => false,
    })
}

/// jwx's `jwsbb.Verify(key, alg, signed, signature)` (lestrrat-go/dsig underneath), as
/// `decode_verify` calls it: the hash and scheme are the header's `alg`'s; PSS salts are as long
/// as the hash; an ECDSA signature is exactly twice the key's curve size; an HMAC key is a JWK
/// `oct` key, not empty. Any other `alg`, or a key of another type, does not verify.
fn jws_verify(key: &PublicKey, alg: &str, signed: &[u8], signature: &[u8]) -> Result<bool, Error> {
    let hash = match alg.get(2..) {
        Some("256") => Hash::Sha256,
        Some("384") => Hash::Sha384,
        Some("512") => Hash::Sha512,
        _ => Hash::Md5,
    };
    Ok(match (alg, key) {
        ("HS256" | "HS384" | "HS512", PublicKey::Oct(k)) => {
            !k.is_empty() && equal(signature, &hash.hmac(k, signed))
        }
        ("RS256" | "RS384" | "RS512", PublicKey::Rsa(k)) => {
            k.verify_pkcs1v15(hash, &hash.digest(signed), signature)
        }
        ("PS256" | "PS384" | "PS512", PublicKey::Rsa(k)) => {
            let salt = hash.digest(b"").len();
            k.verify_pss(hash, &hash.digest(signed), signature, Some(salt))
        }
        ("ES256" | "ES384" | "ES512", PublicKey::Ec(k)) => {
            let size = k.size();
            signature.len() == 2 * size
                && k.verify(&hash.digest(signed), &signature[..size], &signature[size..])
        }
        ("ES256" | "ES384" | "ES512", PublicKey::Unsupported(e)) => {
            return Err(Error::Hard(e.clone()));
        }
        ("EdDSA", PublicKey::Ed25519(k)) => signatures::verify_ed25519(k, signed, signature),
        // RFC 9864's `Ed25519`, which the newest jwx verifies as `EdDSA` and older ones refuse.
        ("Ed25519", PublicKey::Ed25519(_)) => {
            return Err(Error::Hard(
                "the JWS algorithm Ed25519 is verified by some versions of OPA's jwx and not by \
                 others; Gantry does not verify it"
                    .into(),
            ));
        }
        _ => false,
    })
}

/// OPA's choice of keys (`builtinJWTVerify`, `constraints.verify`): the key whose `kid` is the
/// header's, alone, when there is one; else each key in turn whose `alg`, if it has one, is the
/// header's, until one verifies.
///
/// The work of one call is bounded: keys tried past [`VERIFICATION_BUDGET`] (in units of a
/// 1,024-bit RSA check) are a hard error, as OPA would have tried them.
fn verify_with_keys(
    keys: &[VerificationKey],
    header: &Header,
    mut verify: impl FnMut(&PublicKey) -> Result<bool, Error>,
) -> Result<bool, Error> {
    let mut spent = 0;
    let mut tried = |key: &PublicKey| {
        spent += key.cost();
        if spent > VERIFICATION_BUDGET {
            return Err(Error::Hard(format!(
                "the keys tried exceed Gantry's bound on one call's verification work ({} \
                 checks of a 4,096-bit RSA key, 4 of a 16,384-bit one)",
                VERIFICATION_BUDGET / 16
            )));
        }
        verify(key)
    };
    if !header.kid.is_empty()
        && let Some(key) = keys.iter().find(|k| k.kid == header.kid)
    {
        return tried(&key.key);
    }
    for key in keys {
        if !key.alg.is_empty() && key.alg != header.alg {
            continue;
        }
        if tried(&key.key)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One call's verification work, in units of a 1,024-bit RSA check (64 keys of 4,096 bits, 4 of
/// 16,384: the latter about 1.3 s unoptimized natively, a fraction of it optimized).
const VERIFICATION_BUDGET: usize = 1024;

/// OPA's `builtinJWTVerify`: the token split, the certificate argument read, the signature and
/// header decoded (the header's `alg`, `kid`, `cty`, `typ` and `crit` checked for their types,
/// not for validity), then the keys tried.
fn jwt_verify(args: &[Value], family: Family, hash: Hash) -> Result<bool, Error> {
    let Ok(jwt) = args[0].as_string() else {
        return Err("operand 1 must be string".into());
    };
    let token = Token::split(jwt)?;
    let Ok(certificate) = args[1].as_string() else {
        return Err("operand 2 must be string".into());
    };
    let keys = keys::keys_of(certificate)?;
    let signature = base64url(token.signature)?;
    let header = Header::parse(&token.decoded_header()?)?;
    let signed = token.signed();
    verify_with_keys(&keys, &header, |key| {
        builtin_verifier(family, hash, key, signed.as_bytes(), &signature)
    })
}

fn verify_asymmetric(
    name: &'static str,
    family: Family,
    hash: Hash,
    fail: impl Fail,
) -> Box<dyn regorus::Extension> {
    Box::new(
        move |args: Vec<Value>| match jwt_verify(&args, family, hash) {
            Ok(b) => Ok(Value::from(b)),
            Err(e) => e.context(name).answer(fail),
        },
    )
}

/// `io.jwt.verify_rs256(jwt, certificate)`: whether an RSASSA-PKCS1-v1_5 SHA-256 signature
/// verifies under a key of the certificate argument (a PEM certificate or public key, a JWK or
/// a JWK set).
pub fn verify_rs256(fail: impl Fail) -> Box<dyn regorus::Extension> {
    verify_asymmetric("io.jwt.verify_rs256", Family::Rs, Hash::Sha256, fail)
}

/// `io.jwt.verify_rs384(jwt, certificate)`.
pub fn verify_rs384(fail: impl Fail) -> Box<dyn regorus::Extension> {
    verify_asymmetric("io.jwt.verify_rs384", Family::Rs, Hash::Sha384, fail)
}

/// `io.jwt.verify_rs512(jwt, certificate)`.
pub fn verify_rs512(fail: impl Fail) -> Box<dyn regorus::Extension> {
    verify_asymmetric("io.jwt.verify_rs512", Family::Rs, Hash::Sha512, fail)
}

/// `io.jwt.verify_ps256(jwt, certificate)`: RSASSA-PSS, a salt of any length.
pub fn verify_ps256(fail: impl Fail) -> Box<dyn regorus::Extension> {
    verify_asymmetric("io.jwt.verify_ps256", Family::Ps, Hash::Sha256, fail)
}

/// `io.jwt.verify_ps384(jwt, certificate)`.
pub fn verify_ps384(fail: impl Fail) -> Box<dyn regorus::Extension> {
    verify_asymmetric("io.jwt.verify_ps384", Family::Ps, Hash::Sha384, fail)
}

/// `io.jwt.verify_ps512(jwt, certificate)`.
pub fn verify_ps512(fail: impl Fail) -> Box<dyn regorus::Extension> {
    verify_asymmetric("io.jwt.verify_ps512", Family::Ps, Hash::Sha512, fail)
}

/// `io.jwt.verify_es256(jwt, certificate)`: ECDSA with SHA-256 on the key's curve.
pub fn verify_es256(fail: impl Fail) -> Box<dyn regorus::Extension> {
    verify_asymmetric("io.jwt.verify_es256", Family::Es, Hash::Sha256, fail)
}

/// `io.jwt.verify_es384(jwt, certificate)`.
pub fn verify_es384(fail: impl Fail) -> Box<dyn regorus::Extension> {
    verify_asymmetric("io.jwt.verify_es384", Family::Es, Hash::Sha384, fail)
}

/// `io.jwt.verify_es512(jwt, certificate)`.
pub fn verify_es512(fail: impl Fail) -> Box<dyn regorus::Extension> {
    verify_asymmetric("io.jwt.verify_es512", Family::Es, Hash::Sha512, fail)
}

/// `io.jwt.verify_eddsa(jwt, certificate)`: Ed25519.
pub fn verify_eddsa(fail: impl Fail) -> Box<dyn regorus::Extension> {
    // The hash is unused: Ed25519 signs the text itself.
    verify_asymmetric("io.jwt.verify_eddsa", Family::EdDsa, Hash::Sha512, fail)
}

/// `io.jwt.decode_verify(jwt, constraints)`: `[true, header, payload]` when the signature
/// verifies under the `secret` and the claims meet the constraints, else `[false, {}, {}]`. The
/// time compared with `exp` and `nbf` is the `time` constraint (nanoseconds) or, as OPA's is the
/// query's, the host's clock (`now_ns`, the value `time.now_ns()` has in the evaluation).
pub fn decode_verify(fail: impl Fail, now_ns: Clock) -> Box<dyn regorus::Extension> {
    Box::new(move |args: Vec<Value>| {
        let name = "io.jwt.decode_verify";
        match jwt_decode_verify(&args[0], &args[1], &now_ns) {
            Ok(v) => Ok(v),
            Err(e) => e.context(name).answer(fail),
        }
    })
}

/// A compact JWS's three sections, as written.
struct Token<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
}

impl<'a> Token<'a> {
    /// OPA's `decodeJWT`: three sections separated by periods.
    fn split(jwt: &'a str) -> Result<Self, String> {
        if !jwt.contains('.') {
            return Err("encoded JWT had no period separators".into());
        }
        let parts: Vec<&str> = jwt.split('.').collect();
        match parts[..] {
            [header, payload, signature] => Ok(Token {
                header,
                payload,
                signature,
            }),
            _ => Err(format!(
                "encoded JWT must have 3 sections, found {}",
                parts.len()
            )),
        }
    }

    /// The text the signature covers.
    fn signed(&self) -> String {
        format!("{}.{}", self.header, self.payload)
    }

    /// The header, a JSON object; a JWE's (with `enc`) is refused.
    fn decoded_header(&self) -> Result<Value, Error> {
        let text =
            base64url(self.header).map_err(|e| format!("JWT header had invalid encoding: {e}"))?;
        let header = json_object(&text).map_err(|e| e.context("bad JWT header"))?;
        if field(&header, "enc").is_some() {
            return Err("JWT is a JWE object, which is not supported".into());
        }
        Ok(header)
    }

    fn decoded_payload(&self) -> Result<Vec<u8>, String> {
        base64url(self.payload).map_err(|e| format!("JWT payload had invalid encoding: {e}"))
    }
}

fn field<'v>(object: &'v Value, key: &str) -> Option<&'v Value> {
    object.as_object().ok()?.get(&Value::from(key))
}

/// OPA's `extractJSONObject`: `json.unmarshal`'s reading, an object. What this reader refuses
/// Go's may read (invalid UTF-8 and lone surrogates replaced, a trailing `null`, exponents past
/// 1000, nesting past 128): a hard error, never an undefined OPA would not have.
fn json_object(bytes: &[u8]) -> Result<Value, Error> {
    let unread = |e: &str| Error::Hard(format!("JSON Gantry cannot read: {e}"));
    let text = core::str::from_utf8(bytes).map_err(|_| unread("not UTF-8"))?;
    match crate::json::parse(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("decoded JSON type was not an Object".into()),
        Err(e) => Err(unread(&e)),
    }
}

fn utf8(bytes: Vec<u8>) -> Result<String, Error> {
    String::from_utf8(bytes).map_err(|_| Error::Hard("a nested JWT that is not UTF-8".into()))
}

/// OPA's `builtinJWTDecode`.
fn jwt_decode(jwt: &str) -> Result<Value, Error> {
    let token = Token::split(jwt)?;
    let header = token.decoded_header()?;
    let payload = token.decoded_payload()?;
    if let Some(cty) = field(&header, "cty") {
        let Ok(cty) = cty.as_string() else {
            return Err("cty: must be a string".into());
        };
        // A nested token (exactly `JWT` here, any case in `decode_verify`), which jwt.io
        // writes quoted: OPA strips quotes of either kind from both ends and decodes it alone.
        if &**cty == "JWT" {
            let inner = utf8(payload)?;
            return jwt_decode(inner.trim_matches(|c| c == '"' || c == '\''));
        }
    }
    let payload = json_object(&payload)?;
    let signature = base64url(token.signature)
        .map_err(|e| format!("JWT signature had invalid encoding: {e}"))?;
    Ok(Value::from(alloc::vec![
        header,
        payload,
        Value::from(hex(&signature))
    ]))
}

/// OPA's `base64.url_decode`: RFC 7515's padding added to an unpadded text (a length of 1 mod 4
/// is refused), then Go's `base64.URLEncoding`.
fn base64url(text: &str) -> Result<Vec<u8>, String> {
    let mut s = String::from(text);
    if !s.ends_with('=') {
        match s.len() % 4 {
            0 => {}
            2 => s.push_str("=="),
            3 => s.push('='),
            _ => return Err(format!("illegal base64url string: {s}")),
        }
    }
    go_base64(s.as_bytes(), URL_ALPHABET)
}

/// The 62nd and 63rd digits of Go's `base64.URLEncoding` and `StdEncoding`.
const URL_ALPHABET: [u8; 2] = [b'-', b'_'];
const STD_ALPHABET: [u8; 2] = [b'+', b'/'];

/// Go's padded `base64.Encoding.DecodeString` (not strict) with the alphabet ending in
/// `alphabet`: `\r` and `\n` skipped anywhere, unused trailing bits ignored, an unfinished
/// quantum or bad padding an error at the offset Go names.
fn go_base64(src: &[u8], alphabet: [u8; 2]) -> Result<Vec<u8>, String> {
    let corrupt = |at: usize| Err(format!("illegal base64 data at input byte {at}"));
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        _ if c == alphabet[0] => Some(62),
        _ if c == alphabet[1] => Some(63),
        _ => None,
    };
    let newline = |c: u8| c == b'\n' || c == b'\r';
    let mut out = Vec::with_capacity(src.len() / 4 * 3);
    let mut si = 0;
    while si < src.len() {
        let mut quantum = [0u8; 4];
        let mut j = 0;
        let mut last = false;
        while j < 4 {
            if si == src.len() {
                // Only newlines since the last quantum: the end (Go's `j == 0`).
                if j == 0 {
                    return Ok(out);
                }
                // Go's `si - j`: the quantum's start, newlines aside. Padding is required.
                return corrupt(si - j);
            }
            let c = src[si];
            si += 1;
            if let Some(v) = value(c) {
                quantum[j] = v;
                j += 1;
                continue;
            }
            if newline(c) {
                continue;
            }
            if c != b'=' || j < 2 {
                return corrupt(si - 1);
            }
            if j == 2 {
                // `==` expected; the first is read.
                while si < src.len() && newline(src[si]) {
                    si += 1;
                }
                if si == src.len() {
                    return corrupt(src.len());
                }
                if src[si] != b'=' {
                    return corrupt(si - 1);
                }
                si += 1;
            }
            while si < src.len() && newline(src[si]) {
                si += 1;
            }
            if si < src.len() {
                return corrupt(si);
            }
            last = true;
            break;
        }
        let bits = quantum
            .iter()
            .fold(0u32, |acc, &v| (acc << 6) | u32::from(v));
        let bytes = bits.to_be_bytes();
        // `j` sextets give `j - 1` bytes (4 → 3, 3 → 2, 2 → 1).
        out.extend_from_slice(&bytes[1..j]);
        if last {
            break;
        }
    }
    Ok(out)
}

/// The constraints of `decode_verify`, as OPA's `parseTokenConstraints` reads them.
#[derive(Default)]
struct Constraints {
    secret: String,
    /// The `cert` constraint's keys (`Some` even when a JWK set gave none).
    keys: Option<Vec<VerificationKey>>,
    alg: String,
    iss: String,
    aud: String,
    /// Nanoseconds since the epoch, as a float64 (OPA's).
    time: Option<f64>,
}

/// OPA's `timeFromValue`: a number, within a float64, not negative.
fn time_of(v: &Value) -> Result<f64, String> {
    let Ok(n) = v.as_number() else {
        return Err("token time constraint: must be a number".into());
    };
    // Go's `ParseFloat` of the number's text: the nearest float64, out of range an error.
    let t = n
        .format_decimal()
        .parse::<f64>()
        .ok()
        .filter(|t| t.is_finite());
    match t {
        None => Err("token time constraint: unvalid float64".into()),
        Some(t) if t < 0.0 => Err("token time constraint: must not be negative".into()),
        Some(t) => Ok(t),
    }
}

impl Constraints {
    fn parse(operand: &Value, now_ns: &Clock) -> Result<Self, Error> {
        let Ok(object) = operand.as_object() else {
            return Err("operand 2 must be object".into());
        };
        let mut c = Constraints::default();
        for (k, v) in object.iter() {
            let Ok(key) = k.as_string() else {
                return Err("constraint names must be strings".into());
            };
            let text = |slot: &mut String| match v.as_string() {
                Ok(s) => {
                    *slot = s.to_string();
                    Ok(())
                }
                Err(_) => Err(Error::Builtin(format!(
                    "{key} constraint: must be a string"
                ))),
            };
            match &**key {
                // OPA's error of a key it cannot read comes without the constraint's name.
                "cert" => match v.as_string() {
                    Ok(text) => c.keys = Some(keys::keys_of(text)?),
                    Err(_) => return Err("cert constraint: must be a string".into()),
                },
                "secret" => text(&mut c.secret)?,
                "alg" => text(&mut c.alg)?,
                "iss" => text(&mut c.iss)?,
                "aud" => text(&mut c.aud)?,
                "time" => c.time = Some(time_of(v)?),
                other => {
                    return Err(Error::Builtin(format!(
                        "unknown token validation constraint: {other}"
                    )));
                }
            }
        }
        if c.time.is_none() {
            // A failing host is an error whatever the mode, as for `time.now_ns`.
            let now = (now_ns)().map_err(Error::Hard)?;
            c.time = Some(time_of(&Value::from(now))?);
        }
        // OPA's `validate`: one key; an empty secret is none, a `cert` with no keys is one.
        match (c.keys.is_some(), !c.secret.is_empty()) {
            (true, true) => Err("duplicate key constraints".into()),
            (false, false) => Err("no key constraint".into()),
            _ => Ok(c),
        }
    }

    /// OPA's `validAudience`: the claim, or one string of it, is the `aud` constraint.
    fn audience(&self, aud: &Value) -> bool {
        match aud {
            Value::String(s) => **s == *self.aud,
            Value::Array(items) => items
                .iter()
                .any(|v| v.as_string().is_ok_and(|s| **s == *self.aud)),
            _ => false,
        }
    }
}

/// The header parameters OPA's `parseTokenHeader` reads.
#[derive(Default)]
struct Header {
    alg: String,
    kid: String,
    cty: String,
    crit: Vec<String>,
    unknown: Vec<String>,
}

impl Header {
    fn parse(header: &Value) -> Result<Self, String> {
        let mut h = Header::default();
        let Ok(fields) = header.as_object() else {
            return Ok(h);
        };
        for (k, v) in fields.iter() {
            let Ok(key) = k.as_string() else { continue };
            let text = |slot: &mut String| match v.as_string() {
                Ok(s) => {
                    *slot = s.to_string();
                    Ok(())
                }
                Err(_) => Err(format!("{key}: must be a string")),
            };
            let mut ignored = String::new();
            match &**key {
                "alg" => text(&mut h.alg)?,
                "cty" => text(&mut h.cty)?,
                "kid" => text(&mut h.kid)?,
                "typ" => text(&mut ignored)?,
                "crit" => {
                    let Value::Array(items) = v else {
                        return Err("crit: must be a list".into());
                    };
                    // OPA stops at the first item that is not a string, keeping those before.
                    h.crit = items
                        .iter()
                        .map_while(|i| i.as_string().ok().map(|s| s.to_string()))
                        .collect();
                    if h.crit.is_empty() {
                        return Err("crit: must be a nonempty list".into());
                    }
                }
                other => h.unknown.push(other.to_string()),
            }
        }
        Ok(h)
    }

    /// RFC 7515: `alg` present, and no critical parameter unknown.
    fn valid(&self) -> bool {
        !self.alg.is_empty() && !self.unknown.iter().any(|u| self.crit.contains(u))
    }
}

/// OPA's `builtinJWTDecodeVerify` with a secret.
fn jwt_decode_verify(jwt: &Value, constraints: &Value, now_ns: &Clock) -> Result<Value, Error> {
    let unverified = || {
        Ok(Value::from(alloc::vec![
            Value::from(false),
            Value::new_object(),
            Value::new_object(),
        ]))
    };
    let c = Constraints::parse(constraints, now_ns)?;
    let Ok(jwt) = jwt.as_string() else {
        return Err("operand 1 must be string".into());
    };
    let mut text = jwt.to_string();
    let (header, payload) = loop {
        let token = Token::split(&text)?;
        let header = token.decoded_header()?;
        let parsed = Header::parse(&header)?;
        if !parsed.valid() || (!c.alg.is_empty() && c.alg != parsed.alg) {
            return unverified();
        }
        let signature = base64url(token.signature)?;
        let signed = token.signed();
        let verified = match &c.keys {
            // OPA's `constraints.verify` with keys: the one whose `kid` is the header's, else
            // each whose `alg` (if any) is the header's, by jwx's `jwsbb.Verify`.
            Some(keys) => verify_with_keys(keys, &parsed, |key| {
                jws_verify(key, &parsed.alg, signed.as_bytes(), &signature)
            })?,
            // The signature under the secret: an HMAC, by the header's `alg`; any other `alg`
            // is not verified by a secret.
            None => Hash::of_alg(&parsed.alg).is_some_and(|hash| {
                equal(
                    &signature,
                    &hash.hmac(c.secret.as_bytes(), signed.as_bytes()),
                )
            }),
        };
        if !verified {
            return unverified();
        }
        let payload = token.decoded_payload()?;
        // A nested token (`cty` `JWT` in any case) is verified in turn, unquoted.
        if parsed.cty.eq_ignore_ascii_case("JWT") {
            text = utf8(payload)?;
            continue;
        }
        break (header, payload);
    };
    let payload = json_object(&payload)?;
    if !c.iss.is_empty() {
        match field(&payload, "iss") {
            Some(Value::String(iss)) if **iss == *c.iss => {}
            Some(Value::String(_)) | None => return unverified(),
            Some(_) => return Err("iss claim: must be a string".into()),
        }
    }
    match field(&payload, "aud") {
        Some(aud) if !c.audience(aud) => return unverified(),
        None if !c.aud.is_empty() => return unverified(),
        _ => {}
    }
    // `exp` and `nbf` are seconds; the time, nanoseconds, as OPA divides and writes it (the
    // float64's shortest text), compared exactly: valid while `now < exp` and `nbf <= now`.
    let seconds = || Value::from(c.time.unwrap_or(0.0) / 1e9);
    match field(&payload, "exp") {
        Some(exp @ Value::Number(_)) if seconds().cmp(exp) != Ordering::Less => {
            return unverified();
        }
        Some(Value::Number(_)) | None => {}
        Some(_) => return Err("exp value must be a number".into()),
    }
    match field(&payload, "nbf") {
        Some(nbf @ Value::Number(_)) if seconds().cmp(nbf) == Ordering::Less => {
            return unverified();
        }
        Some(Value::Number(_)) | None => {}
        Some(_) => return Err("nbf value must be a number".into()),
    }
    Ok(Value::from(alloc::vec![Value::from(true), header, payload]))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod asymmetric_tests;
