//! The keys of a JWT builtin's certificate argument, read as OPA's `getKeysFromCertOrJWK` reads
//! them: one PEM block (Go's `pem.Decode`), a `CERTIFICATE` (Go's `x509.ParseCertificate`) or a
//! `PUBLIC KEY` (`x509.ParsePKIXPublicKey`), nothing after it; otherwise a JWK or a JWK set
//! (lestrrat-go/jwx's `jwk.ParseString`, each key `jwk.Export`ed), keys whose `alg` is no JWS
//! algorithm OPA knows left out.
//!
//! What Go reads and this reader cannot, or reads where Gantry cannot tell what Go would make of
//! it (a P-224 or DSA key, a private JWK, a key past the bounds below, a certificate the
//! `x509-cert` crate refuses, a JWK member of a form jwx's versions read differently), is a hard
//! error, never a key that verifies nothing: OPA might have verified with it.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use regorus::Value;
use rsa::BigUint;

use super::signatures::{EcKey, PublicKey, RsaKey};
use crate::go_builtins::GoError as Error;

/// The longest certificate argument read (PEM or JWK text). A set of 64 keys, each with a chain
/// of certificates in `x5c`, fits.
pub(super) const MAX_TEXT: usize = 512 * 1024;

/// The most keys a JWK set may hold (each may be tried against every token).
pub(super) const MAX_KEYS: usize = 64;

/// The largest RSA modulus, in bits. Go's `crypto/rsa` sets no upper bound (only 1,024 bits
/// below); 16,384 is OpenSSL's `OPENSSL_RSA_MAX_MODULUS_BITS`, past every key in use. A larger
/// one is a hard error (Go would verify with it).
pub(super) const MAX_RSA_BITS: usize = 16_384;

/// A key of the argument, with the JWK's `alg` and `kid` (empty when none, or from PEM).
#[derive(Debug)]
pub(super) struct VerificationKey {
    pub(super) key: PublicKey,
    pub(super) alg: String,
    pub(super) kid: String,
}

impl VerificationKey {
    fn bare(key: PublicKey) -> Self {
        VerificationKey {
            key,
            alg: String::new(),
            kid: String::new(),
        }
    }
}

/// The JWS algorithms OPA knows (`tokenAlgorithms`): a JWK naming another is left out.
pub(super) const TOKEN_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "HS256",
    "HS384", "HS512", "EdDSA",
];

/// The other `alg` values jwx reads (its signature, key encryption and content encryption
/// algorithms): such a key is read, then left out by OPA. An `alg` jwx refuses is an error; one
/// of neither list (`Ed25519`, which newer jwx reads) is a hard error here.
const OTHER_JWA_ALGORITHMS: &[&str] = &[
    "ES256K",
    "none",
    "A128GCMKW",
    "A128KW",
    "A192GCMKW",
    "A192KW",
    "A256GCMKW",
    "A256KW",
    "dir",
    "PBES2-HS256+A128KW",
    "PBES2-HS384+A192KW",
    "PBES2-HS512+A256KW",
    "ECDH-ES",
    "ECDH-ES+A128KW",
    "ECDH-ES+A192KW",
    "ECDH-ES+A256KW",
    "RSA1_5",
    "RSA-OAEP",
    "RSA-OAEP-256",
    "RSA-OAEP-384",
    "RSA-OAEP-512",
    "A128CBC-HS256",
    "A128GCM",
    "A192CBC-HS384",
    "A192GCM",
    "A256CBC-HS512",
    "A256GCM",
];

fn hard(what: &str) -> Error {
    Error::Hard(format!("{what} (Gantry cannot read it where OPA might)"))
}

/// OPA's `getKeysFromCertOrJWK`.
pub(super) fn keys_of(certificate: &str) -> Result<Vec<VerificationKey>, Error> {
    if certificate.len() > MAX_TEXT {
        return Err(Error::Hard(format!(
            "a certificate or JWK text of more than {} KiB is not read in Gantry",
            MAX_TEXT / 1024
        )));
    }
    match pem_decode(certificate.as_bytes()) {
        Pem::Block { kind, bytes, rest } => {
            if !rest.is_empty() {
                return Err("extra data after a PEM certificate block".into());
            }
            match kind.as_str() {
                "CERTIFICATE" => certificate_key(&bytes)
                    .map(|k| alloc::vec![VerificationKey::bare(k)])
                    .map_err(|e| e.context("failed to parse a PEM certificate")),
                "PUBLIC KEY" => pkix_key(&bytes)
                    .map(|k| alloc::vec![VerificationKey::bare(k)])
                    .map_err(|e| e.context("failed to parse a PEM public key")),
                _ => Err("failed to extract a Key from the PEM certificate".into()),
            }
        }
        Pem::Unsure => Err(hard("PEM text whose first block Go skips for a later one")),
        Pem::None => jwk_set(certificate),
    }
}

// --- PEM ---

enum Pem<'a> {
    Block {
        kind: String,
        bytes: Vec<u8>,
        rest: &'a [u8],
    },
    /// Go would have skipped a block that did not parse for a later one: the versions of Go's
    /// decoder differ there (its search was rewritten in 2025), so it is not read here.
    Unsure,
    None,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Go's `getLine`: the line without its `\n` or `\r\n` and trailing spaces and tabs, and the rest.
fn get_line(data: &[u8]) -> (&[u8], &[u8]) {
    let (line, rest) = match data.iter().position(|&b| b == b'\n') {
        None => (data, &data[data.len()..]),
        Some(i) => {
            let end = if i > 0 && data[i - 1] == b'\r' {
                i - 1
            } else {
                i
            };
            (&data[..end], &data[i + 1..])
        }
    };
    let kept = line
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    (&line[..kept], rest)
}

const PEM_START: &[u8] = b"\n-----BEGIN ";
const PEM_END: &[u8] = b"\n-----END ";
const PEM_END_OF_LINE: &[u8] = b"-----";

/// Go's `pem.Decode` (the search of Go 1.24's `encoding/pem`), on text with one `-----BEGIN `;
/// with more, only a first block that parses is taken (then the rest is not empty, OPA's error).
fn pem_decode(data: &[u8]) -> Pem<'_> {
    let begins = data
        .windows(PEM_START.len() - 1)
        .filter(|w| *w == &PEM_START[1..])
        .count();
    let mut rest = data;
    let mut attempts = 0;
    loop {
        if rest.starts_with(&PEM_START[1..]) {
            rest = &rest[PEM_START.len() - 1..];
        } else if let Some(i) = find(rest, PEM_START) {
            rest = &rest[i + PEM_START.len()..];
        } else {
            return Pem::None;
        }
        attempts += 1;
        if attempts > 1 && begins > 1 {
            return Pem::Unsure;
        }
        let type_line;
        (type_line, rest) = get_line(rest);
        let Some(kind) = type_line.strip_suffix(PEM_END_OF_LINE) else {
            continue;
        };
        let mut headers = 0usize;
        loop {
            if rest.is_empty() {
                return Pem::None;
            }
            let (line, next) = get_line(rest);
            if !line.contains(&b':') {
                break;
            }
            headers += 1;
            rest = next;
        }
        let (end_index, end_trailer_index) = if headers == 0 && rest.starts_with(&PEM_END[1..]) {
            (0, PEM_END.len() - 1)
        } else {
            match find(rest, PEM_END) {
                Some(i) => (i, i + PEM_END.len()),
                None => continue,
            }
        };
        let end_trailer = &rest[end_trailer_index..];
        let end_trailer_len = kind.len() + PEM_END_OF_LINE.len();
        if end_trailer.len() < end_trailer_len {
            continue;
        }
        let (end_trailer, rest_of_end_line) = end_trailer.split_at(end_trailer_len);
        if !end_trailer.starts_with(kind) || !end_trailer.ends_with(PEM_END_OF_LINE) {
            continue;
        }
        if !get_line(rest_of_end_line).0.is_empty() {
            continue;
        }
        let body: Vec<u8> = rest[..end_index]
            .iter()
            .copied()
            .filter(|&b| b != b' ' && b != b'\t')
            .collect();
        let Ok(bytes) = super::go_base64(&body, super::STD_ALPHABET) else {
            continue;
        };
        let (_, after) = get_line(&rest[end_index + PEM_END.len() - 1..]);
        // Go's block type is the text as written (any bytes); a type that is not UTF-8 is
        // neither `CERTIFICATE` nor `PUBLIC KEY`.
        let kind = String::from_utf8_lossy(kind).to_string();
        return Pem::Block {
            kind,
            bytes,
            rest: after,
        };
    }
}

// --- DER, as Go's cryptobyte reads it ---

/// An ASN.1 element's tag and contents, read as cryptobyte's `ReadASN1`: one-byte tags, lengths
/// in their shortest form, at most four length bytes.
fn read_element<'a>(der: &mut &'a [u8]) -> Option<(u8, &'a [u8])> {
    let (&tag, rest) = der.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first & 0x80 == 0 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        if rest[0] == 0 || len < 128 {
            return None;
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    let (contents, after) = rest.split_at(len);
    *der = after;
    Some((tag, contents))
}

const TAG_INTEGER: u8 = 0x02;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

/// cryptobyte's `checkASN1Integer`: not empty, in its shortest two's complement form.
fn minimal_integer(bytes: &[u8]) -> bool {
    match bytes {
        [] => false,
        [_] => true,
        [0, b, ..] if b & 0x80 == 0 => false,
        [0xff, b, ..] if b & 0x80 == 0x80 => false,
        _ => true,
    }
}

// Object identifiers, as their DER contents.
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_DSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_X25519: &[u8] = &[0x2b, 0x65, 0x6e];
const OID_P224: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x21];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];

/// The public key algorithms Go's x509 knows (`getPublicKeyAlgorithmFromOID`).
fn known_algorithm(oid: &[u8]) -> bool {
    [OID_RSA, OID_EC, OID_DSA, OID_ED25519, OID_X25519].contains(&oid)
}

/// Go's `parsePublicKey` for a SubjectPublicKeyInfo's algorithm (its OID's contents and the
/// parameters' whole element, empty when absent) and key bits.
fn parse_public_key(oid: &[u8], params: &[u8], key: &[u8]) -> Result<PublicKey, Error> {
    match oid {
        OID_RSA => {
            if params != [0x05, 0x00] {
                return Err("x509: RSA key missing NULL parameters".into());
            }
            let mut der = key;
            let Some((TAG_SEQUENCE, mut seq)) = read_element(&mut der) else {
                return Err("x509: invalid RSA public key".into());
            };
            let n = match read_element(&mut seq) {
                Some((TAG_INTEGER, n)) if minimal_integer(n) => n,
                _ => return Err("x509: invalid RSA modulus".into()),
            };
            let e = match read_element(&mut seq) {
                Some((TAG_INTEGER, e)) if minimal_integer(e) && e.len() <= 8 => {
                    // Sign-extended into Go's int.
                    let fill = if e[0] & 0x80 != 0 { 0xff } else { 0 };
                    let mut b = [fill; 8];
                    b[8 - e.len()..].copy_from_slice(e);
                    i64::from_be_bytes(b)
                }
                _ => return Err("x509: invalid RSA public exponent".into()),
            };
            if n[0] & 0x80 != 0 || n.iter().all(|&b| b == 0) {
                return Err("x509: RSA modulus is not a positive number".into());
            }
            if e <= 0 {
                return Err("x509: RSA public exponent is not a positive number".into());
            }
            rsa_key(n, e)
        }
        OID_EC => {
            let mut p = params;
            let curve = match read_element(&mut p) {
                Some((TAG_OID, curve)) => curve,
                _ => return Err("x509: invalid ECDSA parameters".into()),
            };
            let point = |ok: Option<EcKey>| {
                ok.map(PublicKey::Ec)
                    .ok_or_else(|| "x509: failed to unmarshal elliptic curve point".into())
            };
            // Go's `elliptic.Unmarshal`: the uncompressed form only, on the curve.
            let uncompressed = key.first() == Some(&0x04);
            match curve {
                OID_P256 => point(uncompressed.then(|| EcKey::p256_sec1(key)).flatten()),
                OID_P384 => point(uncompressed.then(|| EcKey::p384_sec1(key)).flatten()),
                OID_P521 => point(uncompressed.then(|| EcKey::p521_sec1(key)).flatten()),
                OID_P224 => Ok(PublicKey::Unsupported(
                    "a P-224 key is not verified in Gantry (OPA verifies ES signatures with one)"
                        .into(),
                )),
                _ => Err("x509: unsupported elliptic curve".into()),
            }
        }
        OID_ED25519 => {
            if !params.is_empty() {
                return Err("x509: Ed25519 key encoded with illegal parameters".into());
            }
            match <[u8; 32]>::try_from(key) {
                Ok(k) => Ok(PublicKey::Ed25519(k)),
                Err(_) => Err("x509: wrong Ed25519 public key size".into()),
            }
        }
        OID_X25519 if params.is_empty() && key.len() == 32 => Ok(PublicKey::Other),
        OID_X25519 => Err(hard("an X25519 key with parameters or of another size")),
        OID_DSA => Err(hard("a DSA key")),
        _ => Err("x509: unknown public key algorithm".into()),
    }
}

/// An RSA key within the bounds (Go's checks of the exponent come at verification).
fn rsa_key(n: &[u8], e: i64) -> Result<PublicKey, Error> {
    let n = BigUint::from_bytes_be(n);
    if n.bits() > MAX_RSA_BITS {
        return Err(Error::Hard(format!(
            "an RSA key of {} bits: Gantry verifies with keys of at most {MAX_RSA_BITS} bits",
            n.bits()
        )));
    }
    Ok(PublicKey::Rsa(RsaKey { n, e }))
}

/// A SubjectPublicKeyInfo's parts: the algorithm's OID contents, the parameters' element (empty
/// when absent) and the key's bits (a whole number of bytes).
fn spki_parts(info: &spki::SubjectPublicKeyInfoRef<'_>) -> Result<(Vec<u8>, Vec<u8>), Error> {
    use der::Encode;
    let params = match &info.algorithm.parameters {
        Some(p) => p
            .to_der()
            .map_err(|_| hard("key parameters that do not encode"))?,
        None => Vec::new(),
    };
    let key = info
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| hard("a key whose bit string is not whole bytes"))?;
    Ok((params, key.to_vec()))
}

/// Go's `x509.ParsePKIXPublicKey`.
fn pkix_key(der_bytes: &[u8]) -> Result<PublicKey, Error> {
    use der::Decode;
    let info = spki::SubjectPublicKeyInfoRef::from_der(der_bytes)
        .map_err(|e| hard(&format!("a public key the spki crate refuses ({e})")))?;
    let oid = info.algorithm.oid.as_bytes();
    if !known_algorithm(oid) {
        return Err("x509: unknown public key algorithm".into());
    }
    let (params, key) = spki_parts(&info)?;
    parse_public_key(oid, &params, &key)
}

/// Go's `x509.ParseCertificate`, as far as the key: the certificate's structure (the x509-cert
/// crate's reading, a hard error where it refuses), Go's refusal of negative serial numbers
/// (since Go 1.23) and repeated extensions, the checks of `go_certificate_checks` (signature
/// algorithms, names) and `go_extension_checks` (alternative names, name constraints): a
/// certificate Gantry is unsure Go would parse yields no key. Then the key as Go's `parsePublicKey` reads it (a key
/// of an algorithm Go does not know is none: it verifies nothing).
fn certificate_key(der_bytes: &[u8]) -> Result<PublicKey, Error> {
    use der::{Decode, Encode};
    use x509_cert::certificate::{CertificateInner, Raw};
    let cert = CertificateInner::<Raw>::from_der(der_bytes)
        .map_err(|e| hard(&format!("a certificate the x509-cert crate refuses ({e})")))?;
    let tbs = &cert.tbs_certificate;
    if tbs
        .serial_number
        .as_bytes()
        .first()
        .is_some_and(|b| b & 0x80 != 0)
    {
        return Err("x509: negative serial number".into());
    }
    go_certificate_checks(der_bytes)?;
    if let Some(extensions) = &tbs.extensions {
        for e in extensions.iter() {
            go_extension_checks(e)?;
        }
        for (i, e) in extensions.iter().enumerate() {
            if extensions[..i].iter().any(|o| o.extn_id == e.extn_id) {
                return Err("x509: certificate contains duplicate extensions".into());
            }
        }
        // Go parses these extensions and refuses the certificate when one does not parse.
        if let Some(e) = extensions.iter().find(|e| !extension_readable(e)) {
            return Err(hard(&format!(
                "a certificate extension {} that the x509-cert crate refuses",
                e.extn_id
            )));
        }
    }
    let info = &tbs.subject_public_key_info;
    let oid = info.algorithm.oid.as_bytes();
    if !known_algorithm(oid) {
        return Ok(PublicKey::Other);
    }
    // Through the borrowed form, as a PUBLIC KEY's.
    let encoded = info
        .to_der()
        .map_err(|_| hard("a certificate key that does not encode"))?;
    let info = spki::SubjectPublicKeyInfoRef::from_der(&encoded)
        .map_err(|e| hard(&format!("a certificate key the spki crate refuses ({e})")))?;
    let (params, key) = spki_parts(&info)?;
    parse_public_key(oid, &params, &key)
}

/// What Go's `parseCertificate` refuses in the certificate's frame and names, read as its
/// cryptobyte reads them (the certificate already read by the x509-cert crate: a frame it reads
/// otherwise is a hard error): the TBS signature algorithm identifier must be the outer one, byte
/// for byte; each issuer and subject attribute value a string `parseASN1String` takes.
fn go_certificate_checks(der_bytes: &[u8]) -> Result<(), Error> {
    let unread = || hard("a certificate Go's parser reads otherwise than the x509-cert crate");
    let mut der = der_bytes;
    let Some((TAG_SEQUENCE, mut cert)) = read_element(&mut der) else {
        return Err(unread());
    };
    let Some((TAG_SEQUENCE, mut tbs)) = read_element(&mut cert) else {
        return Err(unread());
    };
    let Some((TAG_SEQUENCE, outer_algorithm)) = read_element(&mut cert) else {
        return Err(unread());
    };
    if tbs.first() == Some(&0xa0) {
        read_element(&mut tbs).ok_or_else(unread)?;
    }
    let Some((TAG_INTEGER, _)) = read_element(&mut tbs) else {
        return Err(unread());
    };
    let Some((TAG_SEQUENCE, inner_algorithm)) = read_element(&mut tbs) else {
        return Err(unread());
    };
    if inner_algorithm != outer_algorithm {
        return Err("x509: inner and outer signature algorithm identifiers don't match".into());
    }
    let Some((TAG_SEQUENCE, issuer)) = read_element(&mut tbs) else {
        return Err(unread());
    };
    go_name_checks(issuer).ok_or_else(unread)??;
    let Some((TAG_SEQUENCE, _validity)) = read_element(&mut tbs) else {
        return Err(unread());
    };
    let Some((TAG_SEQUENCE, subject)) = read_element(&mut tbs) else {
        return Err(unread());
    };
    go_name_checks(subject).ok_or_else(unread)??;
    Ok(())
}

/// Go's `parseName` over an RDNSequence's contents: `None` where its frame does not read.
fn go_name_checks(mut name: &[u8]) -> Option<Result<(), Error>> {
    const TAG_SET: u8 = 0x31;
    while !name.is_empty() {
        let Some((TAG_SET, mut set)) = read_element(&mut name) else {
            return None;
        };
        while !set.is_empty() {
            let Some((TAG_SEQUENCE, mut attribute)) = read_element(&mut set) else {
                return None;
            };
            let Some((TAG_OID, _)) = read_element(&mut attribute) else {
                return None;
            };
            let (tag, value) = read_element(&mut attribute)?;
            if let Err(e) = go_asn1_string(tag, value) {
                return Some(Err(
                    e.context("x509: invalid RDNSequence: invalid attribute value")
                ));
            }
        }
    }
    Some(Ok(()))
}

/// Go's `isPrintable`: PrintableString's characters, with `*` and `&`, which Go allows.
fn go_printable(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b" '()+,-./:=?*&".contains(&b)
}

/// Go's `parseASN1String`: the string types Go takes in a name, and their contents.
fn go_asn1_string(tag: u8, value: &[u8]) -> Result<(), Error> {
    match tag {
        // T61String: any bytes.
        0x14 => Ok(()),
        0x13 if value.iter().all(|&b| go_printable(b)) => Ok(()),
        0x13 => Err("invalid PrintableString".into()),
        0x0c if core::str::from_utf8(value).is_ok() => Ok(()),
        0x0c => Err("invalid UTF-8 string".into()),
        0x1e if !value.len().is_multiple_of(2) => Err("invalid BMPString".into()),
        0x1e => {
            // Newer Go refuses surrogates and noncharacters, older Go decodes them: not read.
            let unsure = value.chunks(2).any(|c| {
                let point = u16::from_be_bytes([c[0], c[1]]);
                point == 0xfffe
                    || point == 0xffff
                    || (0xfdd0..=0xfdef).contains(&point)
                    || (0xd800..=0xdfff).contains(&point)
            });
            if unsure {
                Err(hard("a BMPString of surrogates or noncharacters"))
            } else {
                Ok(())
            }
        }
        0x16 if value.is_ascii() => Ok(()),
        0x16 => Err("invalid IA5String".into()),
        0x12 if value.iter().all(|&b| b.is_ascii_digit() || b == b' ') => Ok(()),
        0x12 => Err("invalid NumericString".into()),
        _ => Err(format!("unsupported string type: {tag}").into()),
    }
}

const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const OID_NAME_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x1e];

/// Go's checks of a subject alternative name (`parseSANExtension`) or name constraints
/// (`parseNameConstraintsExtension`) extension past their structure: an IP address of 4 or 16
/// bytes, a URI Go's `url.Parse` surely takes (one it might refuse is a hard error), constraints
/// not empty, an IP constraint of 8 or 32 bytes with a valid mask, and constraint names as Go
/// reads them (hard where Gantry is unsure).
fn go_extension_checks(e: &x509_cert::ext::Extension) -> Result<(), Error> {
    let unread = || {
        hard(&format!(
            "a certificate extension {} Go's parser reads otherwise than the x509-cert crate",
            e.extn_id
        ))
    };
    let mut value = e.extn_value.as_bytes();
    match e.extn_id.as_bytes() {
        OID_SUBJECT_ALT_NAME => {
            let Some((TAG_SEQUENCE, mut names)) = read_element(&mut value) else {
                return Err(unread());
            };
            while !names.is_empty() {
                let (tag, data) = read_element(&mut names).ok_or_else(unread)?;
                match tag {
                    0x81 | 0x82 if !data.is_ascii() => {
                        return Err(if tag == 0x81 {
                            "x509: SAN rfc822Name is malformed".into()
                        } else {
                            "x509: SAN dNSName is malformed".into()
                        });
                    }
                    0x86 if !data.is_ascii() => {
                        return Err("x509: SAN uniformResourceIdentifier is malformed".into());
                    }
                    0x86 => {
                        // Printable ASCII: checked by `is_ascii` above.
                        let uri = core::str::from_utf8(data).map_err(|_| unread())?;
                        if !go_surely_parses_uri(uri) {
                            return Err(hard(&format!(
                                "a certificate URI {uri:?} Go's url.Parse might refuse"
                            )));
                        }
                    }
                    0x87 if data.len() != 4 && data.len() != 16 => {
                        return Err(format!(
                            "x509: cannot parse IP address of length {}",
                            data.len()
                        )
                        .into());
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        OID_NAME_CONSTRAINTS => {
            let Some((TAG_SEQUENCE, mut top)) = read_element(&mut value) else {
                return Err(unread());
            };
            if !value.is_empty() {
                return Err(unread());
            }
            let mut permitted = None;
            let mut excluded = None;
            if top.first() == Some(&0xa0) {
                permitted = Some(read_element(&mut top).ok_or_else(unread)?.1);
            }
            if top.first() == Some(&0xa1) {
                excluded = Some(read_element(&mut top).ok_or_else(unread)?.1);
            }
            if !top.is_empty() {
                return Err(unread());
            }
            if permitted.unwrap_or_default().is_empty() && excluded.unwrap_or_default().is_empty() {
                return Err("x509: empty name constraints extension".into());
            }
            for subtrees in [permitted, excluded].into_iter().flatten() {
                go_subtrees_checks(subtrees).ok_or_else(unread)??;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `parseNameConstraintsExtension`'s `getValues`: `None` where its frame does not read.
fn go_subtrees_checks(mut subtrees: &[u8]) -> Option<Result<(), Error>> {
    while !subtrees.is_empty() {
        let Some((TAG_SEQUENCE, mut subtree)) = read_element(&mut subtrees) else {
            return None;
        };
        let (tag, value) = read_element(&mut subtree)?;
        let checked = match tag {
            0x81 | 0x82 | 0x86 if !value.is_ascii() => Err(
                "x509: invalid constraint value: a name that cannot be encoded as an IA5String"
                    .into(),
            ),
            0x87 if value.len() != 8 && value.len() != 32 => Err(format!(
                "x509: IP constraint contained value of length {}",
                value.len()
            )
            .into()),
            0x87 if !go_valid_ip_mask(&value[value.len() / 2..]) => {
                Err("x509: IP constraint contained invalid mask".into())
            }
            // A domain (DNS or URI constraint, a leading `.` allowed), or a mailbox or domain
            // (email): Go's `domainToReverseLabels`, `parseRFC2821Mailbox` and `net.ParseIP`,
            // read conservatively.
            0x81 | 0x82 | 0x86 => {
                let text = core::str::from_utf8(value).ok()?;
                let sure = match tag {
                    0x81 => match text.rsplit_once('@') {
                        Some((local, domain)) => {
                            simple_mailbox_local(local) && go_domain_labels(domain)
                        }
                        None => go_domain_labels(text.strip_prefix('.').unwrap_or(text)),
                    },
                    0x82 => go_domain_labels(text.strip_prefix('.').unwrap_or(text)),
                    _ => {
                        !text
                            .bytes()
                            .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b':')
                            && go_domain_labels(text.strip_prefix('.').unwrap_or(text))
                    }
                };
                if sure {
                    Ok(())
                } else {
                    Err(hard(&format!("a name constraint {text:?} Go might refuse")))
                }
            }
            _ => Ok(()),
        };
        if checked.is_err() {
            return Some(checked);
        }
    }
    Some(Ok(()))
}

/// Go's `isValidIPMask`: ones, then zeros.
fn go_valid_ip_mask(mask: &[u8]) -> bool {
    let mut seen_zero = false;
    for &b in mask {
        if seen_zero {
            if b != 0 {
                return false;
            }
        } else if b != 0xff {
            if !matches!(b, 0x00 | 0x80 | 0xc0 | 0xe0 | 0xf0 | 0xf8 | 0xfc | 0xfe) {
                return false;
            }
            seen_zero = true;
        }
    }
    true
}

/// Go's `domainToReverseLabels` succeeds: no empty label (none at the end either), each of
/// characters 33 to 126. The empty domain passes.
fn go_domain_labels(domain: &str) -> bool {
    domain.is_empty()
        || domain
            .split('.')
            .all(|label| !label.is_empty() && label.bytes().all(|b| (33..=126).contains(&b)))
}

/// A mailbox's local part Go's `parseRFC2821Mailbox` surely takes: dot-separated atoms.
fn simple_mailbox_local(local: &str) -> bool {
    const ATEXT: &[u8] = b"!#$%&'*+-/=?^_`{|}~";
    local.split('.').all(|atom| {
        !atom.is_empty()
            && atom
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || ATEXT.contains(&b))
    })
}

/// A SAN URI that Go's `url.Parse` (and x509's check of its host) surely takes, read
/// conservatively: a scheme, then only unreserved and reserved characters other than `[`, `]`
/// and `#` after the first, no `%`; an authority's host of non-empty labels with at most one `:`,
/// followed by a port of digits.
fn go_surely_parses_uri(uri: &str) -> bool {
    const OTHER: &[u8] = b"-._~!$&'()*+,;=:@/?#";
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok
        || !uri
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || OTHER.contains(&b))
    {
        return false;
    }
    let (rest, fragment) = rest.split_once('#').unwrap_or((rest, ""));
    if fragment.contains('#') {
        return false;
    }
    let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
    let Some(authority) = rest.strip_prefix("//") else {
        return true;
    };
    let authority = authority.split_once('/').map_or(authority, |(a, _)| a);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = host.split_once(':').map_or("0", |(_, p)| p);
    !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && go_domain_labels(host)
}

/// Whether an extension Go's `processExtensions` reads decodes (by the x509-cert crate's types):
/// where one does not, Go may refuse the certificate, so Gantry does not use its key.
fn extension_readable(e: &x509_cert::ext::Extension) -> bool {
    use der::Decode;
    use der::oid::AssociatedOid;
    use x509_cert::ext::pkix::{
        AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints, CertificatePolicies,
        CrlDistributionPoints, ExtendedKeyUsage, InhibitAnyPolicy, KeyUsage, NameConstraints,
        PolicyConstraints, PolicyMappings, SubjectAltName, SubjectKeyIdentifier,
    };
    let value = e.extn_value.as_bytes();
    macro_rules! decodes {
        ($($t:ty),*) => {
            $(if e.extn_id == <$t>::OID {
                return <$t>::from_der(value).is_ok();
            })*
        };
    }
    decodes!(
        KeyUsage,
        BasicConstraints,
        SubjectAltName,
        NameConstraints,
        CrlDistributionPoints,
        AuthorityKeyIdentifier,
        ExtendedKeyUsage,
        SubjectKeyIdentifier,
        CertificatePolicies,
        AuthorityInfoAccessSyntax,
        PolicyConstraints,
        PolicyMappings,
        InhibitAnyPolicy
    );
    true
}

// --- JWK ---

/// jwx's base64 reading of a JWK member (`base64.DecodeString`, which guesses the encoding):
/// the unpadded or padded URL-safe alphabet; the standard alphabet is refused here.
fn jwk_bytes(text: &str, member: &str) -> Result<Vec<u8>, Error> {
    let url_safe = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if url_safe {
        if text.len() % 4 == 1 {
            return Err(format!("failed to decode value for key {member}: not base64").into());
        }
        let mut padded = String::from(text);
        while padded.len() % 4 != 0 {
            padded.push('=');
        }
        return super::go_base64(padded.as_bytes(), super::URL_ALPHABET)
            .map_err(|e| format!("failed to decode value for key {member}: {e}").into());
    }
    let body = text.trim_end_matches('=');
    if text.ends_with('=')
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return super::go_base64(text.as_bytes(), super::URL_ALPHABET)
            .map_err(|e| format!("failed to decode value for key {member}: {e}").into());
    }
    Err(hard(&format!(
        "a JWK member {member} not in the URL-safe base64 alphabet"
    )))
}

fn member<'v>(key: &'v Value, name: &str) -> Option<&'v Value> {
    key.as_object().ok()?.get(&Value::from(name))
}

fn text_member<'v>(key: &'v Value, name: &str) -> Result<Option<&'v str>, Error> {
    match member(key, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("failed to decode value for key {name}: not a string").into()),
    }
}

fn required<'v>(key: &'v Value, name: &str) -> Result<&'v str, Error> {
    text_member(key, name)?.ok_or_else(|| format!("required field {name} is missing").into())
}

/// jwx's `ParseKey` and `Export` of one JWK, then OPA's `alg` filter (`None`: left out).
fn jwk_key(key: &Value) -> Result<Option<VerificationKey>, Error> {
    let Ok(fields) = key.as_object() else {
        return Err("a key is not a JSON object".into());
    };
    for (name, value) in fields.iter() {
        let Ok(name) = name.as_string() else { continue };
        match (&**name, value) {
            ("d", _) => return Err(hard("a private JWK (with `d`)")),
            ("alg" | "kid" | "use" | "kty" | "crv" | "n" | "e" | "x" | "y" | "k", _) => {}
            ("x5t" | "x5t#S256" | "x5u", Value::String(_)) => {}
            ("x5c", Value::Array(items)) if items.iter().all(|i| i.as_string().is_ok()) => {}
            ("key_ops", Value::Array(ops))
                if ops.iter().all(|o| {
                    o.as_string().is_ok_and(|o| {
                        [
                            "sign",
                            "verify",
                            "encrypt",
                            "decrypt",
                            "wrapKey",
                            "unwrapKey",
                            "deriveKey",
                            "deriveBits",
                        ]
                        .contains(&&**o)
                    })
                }) => {}
            ("x5t" | "x5t#S256" | "x5u" | "x5c" | "key_ops", _) => {
                return Err(hard(&format!("a JWK `{name}` of this form")));
            }
            _ => {}
        }
    }
    let kty = match member(key, "kty") {
        Some(Value::String(s)) => s.to_string(),
        Some(_) => return Err("failed to get \"kty\" hint: not a string".into()),
        None => String::new(),
    };
    let alg = text_member(key, "alg")?.unwrap_or("").to_string();
    let kid = text_member(key, "kid")?.unwrap_or("").to_string();
    text_member(key, "use")?;
    let public = match kty.as_str() {
        "RSA" => {
            let e = jwk_bytes(required(key, "e")?, "e")?;
            let n = jwk_bytes(required(key, "n")?, "n")?;
            // jwx's `int(big.Int.Int64())`: the low 64 bits, as Go's int.
            let mut low = [0u8; 8];
            let tail = &e[e.len().saturating_sub(8)..];
            low[8 - tail.len()..].copy_from_slice(tail);
            rsa_key(&n, i64::from_be_bytes(low))?
        }
        "EC" => {
            let crv = required(key, "crv")?;
            let x = jwk_bytes(required(key, "x")?, "x")?;
            let y = jwk_bytes(required(key, "y")?, "y")?;
            let ec = match crv {
                "P-256" => EcKey::p256_affine(&x, &y),
                "P-384" => EcKey::p384_affine(&x, &y),
                "P-521" => EcKey::p521_affine(&x, &y),
                _ => return Err(hard(&format!("a JWK EC key on the curve {crv:?}"))),
            };
            // jwx's versions differ on a point off the curve (an error, or a key that
            // verifies nothing).
            PublicKey::Ec(ec.ok_or_else(|| hard("a JWK EC point that is not on its curve"))?)
        }
        "OKP" => {
            let crv = required(key, "crv")?;
            let x = jwk_bytes(required(key, "x")?, "x")?;
            match (crv, <[u8; 32]>::try_from(x.as_slice())) {
                ("Ed25519", Ok(x)) => PublicKey::Ed25519(x),
                ("X25519", Ok(_)) => PublicKey::Other,
                _ => {
                    return Err(hard(&format!(
                        "a JWK OKP key on {crv:?} of {} bytes",
                        x.len()
                    )));
                }
            }
        }
        "oct" => PublicKey::Oct(jwk_bytes(required(key, "k")?, "k")?),
        "" => return Err("invalid key type from JSON ()".into()),
        other => return Err(hard(&format!("a JWK of key type {other:?}"))),
    };
    if !alg.is_empty() && !TOKEN_ALGORITHMS.contains(&alg.as_str()) {
        if OTHER_JWA_ALGORITHMS.contains(&alg.as_str()) {
            return Ok(None);
        }
        return Err(hard(&format!("a JWK `alg` of {alg:?}")));
    }
    Ok(Some(VerificationKey {
        key: public,
        alg,
        kid,
    }))
}

/// jwx's `jwk.ParseString` (a set with `keys`, else one key) and OPA's reading of its keys.
fn jwk_set(text: &str) -> Result<Vec<VerificationKey>, Error> {
    let parsed = jwk_value(text).map_err(|e| e.context("failed to parse a JWK key (set)"))?;
    let keys: Vec<&Value> = match member(&parsed, "keys") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(Value::Null) => Vec::new(),
        Some(_) => {
            return Err("failed to parse a JWK key (set): failed to decode \"keys\"".into());
        }
        None => alloc::vec![&parsed],
    };
    if keys.len() > MAX_KEYS {
        return Err(Error::Hard(format!(
            "a JWK set of {} keys: Gantry reads at most {MAX_KEYS}",
            keys.len()
        )));
    }
    let mut out = Vec::with_capacity(keys.len());
    for (i, key) in keys.into_iter().enumerate() {
        match jwk_key(key) {
            Ok(Some(k)) => out.push(k),
            Ok(None) => {}
            Err(e) => {
                return Err(e.context(&format!(
                    "failed to parse a JWK key (set): failed to decode key #{i}"
                )));
            }
        }
    }
    Ok(out)
}

/// The JWK text as a JSON object. Text that is no object is jwx's error; what this reader
/// refuses of an object (a repeated member, which jwx's versions read differently; what
/// `crate::json` cannot hold) is a hard error.
fn jwk_value(text: &str) -> Result<Value, Error> {
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err("not a JSON object".into());
    }
    match crate::json::parse_unique(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(Error::Hard(format!("a JWK Gantry cannot read: {e}"))),
    }
}
