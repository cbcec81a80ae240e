//! OPA bundle signatures: `/.signatures.json` holds one JWT (JWS compact serialization) whose
//! payload lists every file of the bundle with its SHA-256, as `opa sign` writes them and OPA
//! verifies them. RS256, ES256 and HS256, through `ring`.
//!
//! As in OPA, `data.json` and `.manifest` are hashed as canonical JSON (keys sorted, no
//! whitespace), so reformatting them does not break a signature; other files by their bytes.
//! Every file of the bundle must be listed, and every listed file present.

use data_encoding::{BASE64, BASE64URL_NOPAD};
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair};

use crate::plugin::cache::sha256_hex;

/// The signatures file, at the bundle's root.
pub const FILE: &str = ".signatures.json";

/// A JWS algorithm Gantry signs and verifies bundles with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (OPA's default).
    Rs256,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// HMAC with SHA-256 (a shared secret).
    Hs256,
}

impl std::str::FromStr for Alg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "RS256" => Ok(Alg::Rs256),
            "ES256" => Ok(Alg::Es256),
            "HS256" => Ok(Alg::Hs256),
            other => Err(format!(
                "unsupported signing algorithm `{other}` (RS256, ES256 or HS256)"
            )),
        }
    }
}

impl Alg {
    /// The JWS `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::Hs256 => "HS256",
        }
    }
}

/// A key that verifies bundle signatures.
#[derive(Debug, Clone)]
pub struct VerificationKey {
    /// The key id (`kid` in the JWT header, or `keyid` in its payload).
    pub id: String,
    /// Its algorithm.
    pub alg: Alg,
    /// RS256/ES256: a PEM `PUBLIC KEY` (SPKI); HS256: the shared secret.
    pub key: Vec<u8>,
    /// The scope the signature must carry, if any.
    pub scope: Option<String>,
}

/// A key that signs bundles.
#[derive(Debug, Clone)]
pub struct SigningKey {
    /// The key id written into the signature.
    pub id: String,
    /// Its algorithm.
    pub alg: Alg,
    /// RS256/ES256: a PEM `PRIVATE KEY` (PKCS#8); HS256: the shared secret.
    pub key: Vec<u8>,
}

/// The hash OPA records for a bundle file.
pub fn file_hash(name: &str, bytes: &[u8]) -> Result<String, String> {
    let structured = name == "data.json"
        || name.ends_with("/data.json")
        || name == ".manifest"
        || name.ends_with(".json");
    if structured {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("{name}: not JSON: {e}"))?;
        // serde_json's map is sorted by key and `to_string` is compact: OPA's canonical form.
        Ok(sha256_hex(value.to_string().as_bytes()))
    } else {
        Ok(sha256_hex(bytes))
    }
}

fn pem_der(pem: &[u8], label: &str) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "the key is not PEM text".to_string())?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text
        .find(&begin)
        .ok_or_else(|| format!("the key is not a PEM `{label}`"))?
        + begin.len();
    let stop = text[start..]
        .find(&end)
        .ok_or_else(|| format!("the PEM `{label}` is not terminated"))?
        + start;
    let b64: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    BASE64
        .decode(b64.as_bytes())
        .map_err(|e| format!("the PEM `{label}` is not base64: {e}"))
}

/// One DER element at the front of `der`: (tag, contents, rest).
fn der_element(der: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let bad = || "malformed DER in the public key".to_string();
    let (&tag, rest) = der.split_first().ok_or_else(bad)?;
    let (&first, rest) = rest.split_first().ok_or_else(bad)?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(bad());
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(bad());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// The algorithm OID and the key bits of a SubjectPublicKeyInfo.
fn spki(der: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let (tag, body, _) = der_element(der)?;
    let (alg_tag, alg, rest) = der_element(body)?;
    let (bits_tag, bits, _) = der_element(rest)?;
    let (oid_tag, oid, _) = der_element(alg)?;
    if tag != 0x30 || alg_tag != 0x30 || oid_tag != 0x06 || bits_tag != 0x03 {
        return Err("the public key is not a SubjectPublicKeyInfo".into());
    }
    match bits.split_first() {
        Some((0, key)) => Ok((oid, key)),
        _ => Err("the public key's bit string is malformed".into()),
    }
}

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// The DER SubjectPublicKeyInfo prefix of a P-256 key, before its 65-byte point.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A new ES256 key: (private PKCS#8 PEM, public SPKI PEM). (`ring` cannot generate RSA keys;
/// use `openssl genpkey -algorithm RSA` for RS256.)
pub fn generate_es256() -> Result<(String, String), String> {
    let rng = SystemRandom::new();
    let pkcs8 =
        signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| e.to_string())?;
    let pair = signature::EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .map_err(|e| e.to_string())?;
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref());
    Ok((pem("PRIVATE KEY", pkcs8.as_ref()), pem("PUBLIC KEY", &spki)))
}

fn sign_bytes(key: &SigningKey, message: &[u8]) -> Result<Vec<u8>, String> {
    let rng = SystemRandom::new();
    match key.alg {
        Alg::Hs256 => {
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key.key);
            Ok(ring::hmac::sign(&k, message).as_ref().to_vec())
        }
        Alg::Rs256 => {
            let der = pem_der(&key.key, "PRIVATE KEY")?;
            let pair = signature::RsaKeyPair::from_pkcs8(&der)
                .map_err(|e| format!("not an RSA PKCS#8 key: {e}"))?;
            let mut sig = vec![0; pair.public().modulus_len()];
            pair.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                .map_err(|e| e.to_string())?;
            Ok(sig)
        }
        Alg::Es256 => {
            let der = pem_der(&key.key, "PRIVATE KEY")?;
            let pair = signature::EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &der,
                &rng,
            )
            .map_err(|e| format!("not a P-256 PKCS#8 key: {e}"))?;
            Ok(pair
                .sign(&rng, message)
                .map_err(|e| e.to_string())?
                .as_ref()
                .to_vec())
        }
    }
}

fn verify_bytes(key: &VerificationKey, message: &[u8], sig: &[u8]) -> Result<(), String> {
    let fail = || "the signature does not verify".to_string();
    match key.alg {
        Alg::Hs256 => {
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key.key);
            ring::hmac::verify(&k, message, sig).map_err(|_| fail())
        }
        Alg::Rs256 | Alg::Es256 => {
            let der = pem_der(&key.key, "PUBLIC KEY")?;
            let (oid, bits) = spki(&der)?;
            let alg: &dyn signature::VerificationAlgorithm = match (key.alg, oid) {
                (Alg::Rs256, OID_RSA) => &signature::RSA_PKCS1_2048_8192_SHA256,
                (Alg::Es256, OID_EC) => &signature::ECDSA_P256_SHA256_FIXED,
                _ => return Err(format!("key `{}` is not a {} key", key.id, key.alg.name())),
            };
            signature::UnparsedPublicKey::new(alg, bits)
                .verify(message, sig)
                .map_err(|_| fail())
        }
    }
}

/// The `.signatures.json` contents signing `files` (name without leading slash, bytes).
pub fn sign(
    files: &[(String, Vec<u8>)],
    key: &SigningKey,
    scope: Option<&str>,
) -> Result<Vec<u8>, String> {
    let listed: Vec<serde_json::Value> = files
        .iter()
        .filter(|(name, _)| name != FILE)
        .map(|(name, bytes)| {
            Ok(serde_json::json!({
                "name": name,
                "hash": file_hash(name, bytes)?,
                "algorithm": "SHA-256",
            }))
        })
        .collect::<Result<_, String>>()?;
    let header = serde_json::json!({"alg": key.alg.name(), "kid": key.id});
    let mut payload = serde_json::json!({"files": listed, "keyid": key.id});
    if let Some(scope) = scope {
        payload["scope"] = serde_json::Value::from(scope);
    }
    let signing_input = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(header.to_string().as_bytes()),
        BASE64URL_NOPAD.encode(payload.to_string().as_bytes())
    );
    let sig = sign_bytes(key, signing_input.as_bytes())?;
    let jwt = format!("{signing_input}.{}", BASE64URL_NOPAD.encode(&sig));
    Ok(serde_json::to_vec(&serde_json::json!({ "signatures": [jwt] })).expect("JSON serializes"))
}

/// Verifies a bundle's files (name without leading slash, bytes; `.signatures.json` among them)
/// against `keys`. The error says what failed: a missing or malformed signature, an unknown key,
/// a bad signature, a file changed, added or removed.
pub fn verify(files: &[(String, Vec<u8>)], keys: &[VerificationKey]) -> Result<String, String> {
    let sigs = files
        .iter()
        .find(|(name, _)| name == FILE)
        .map(|(_, b)| b)
        .ok_or_else(|| format!("unsigned: no /{FILE}"))?;
    let sigs: serde_json::Value =
        serde_json::from_slice(sigs).map_err(|e| format!("/{FILE}: not JSON: {e}"))?;
    let jwt = Jwt::parse(the_one_token(&sigs)?)?;
    let kid = jwt.verified_by(keys)?;
    jwt.covers_exactly(files)?;
    Ok(kid.to_string())
}

/// The one JWT of a `.signatures.json` document.
fn the_one_token(sigs: &serde_json::Value) -> Result<&str, String> {
    let tokens = sigs["signatures"]
        .as_array()
        .ok_or_else(|| format!("/{FILE}: no `signatures` list"))?;
    let [token] = tokens.as_slice() else {
        return Err(format!(
            "/{FILE}: expected exactly one JWT, found {}",
            tokens.len()
        ));
    };
    token
        .as_str()
        .ok_or_else(|| format!("/{FILE}: the JWT is not a string"))
}

/// A signature's JWT: its header and payload decoded, its parts as signed.
struct Jwt<'a> {
    header_b64: &'a str,
    payload_b64: &'a str,
    sig_b64: &'a str,
    header: serde_json::Value,
    payload: serde_json::Value,
}

/// A part of a JWT, base64url-decoded; `what` names it in the error.
fn decode_part(part: &str, what: &str) -> Result<Vec<u8>, String> {
    BASE64URL_NOPAD
        .decode(part.as_bytes())
        .map_err(|e| format!("JWT {what}: not base64url: {e}"))
}

impl<'a> Jwt<'a> {
    /// Splits `token` into its three parts and decodes the header and the payload (JSON).
    fn parse(token: &'a str) -> Result<Self, String> {
        let parts: Vec<&str> = token.split('.').collect();
        let [header_b64, payload_b64, sig_b64] = parts.as_slice() else {
            return Err("the JWT does not have three parts".into());
        };
        let header = serde_json::from_slice(&decode_part(header_b64, "header")?)
            .map_err(|e| format!("JWT header: {e}"))?;
        let payload = serde_json::from_slice(&decode_part(payload_b64, "payload")?)
            .map_err(|e| format!("JWT payload: {e}"))?;
        Ok(Self {
            header_b64,
            payload_b64,
            sig_b64,
            header,
            payload,
        })
    }

    /// The id of the key among `keys` whose signature this is, checked: the key the JWT names,
    /// its algorithm, the signature over header and payload, and the key's scope.
    fn verified_by(&self, keys: &[VerificationKey]) -> Result<&str, String> {
        let (header, payload) = (&self.header, &self.payload);
        let kid = header["kid"]
            .as_str()
            .or_else(|| payload["keyid"].as_str())
            .ok_or("the JWT names no key (kid or keyid)")?;
        let key = keys
            .iter()
            .find(|k| k.id == kid)
            .ok_or_else(|| format!("signed with unknown key `{kid}`"))?;
        if header["alg"].as_str() != Some(key.alg.name()) {
            return Err(format!(
                "the JWT's algorithm {} is not the {} of key `{kid}`",
                header["alg"],
                key.alg.name()
            ));
        }
        verify_bytes(
            key,
            format!("{}.{}", self.header_b64, self.payload_b64).as_bytes(),
            &decode_part(self.sig_b64, "signature")?,
        )?;
        if payload["scope"].as_str() != key.scope.as_deref() {
            return Err("the signature's scope does not match the key's".into());
        }
        Ok(kid)
    }

    /// Checks that the payload's `files` list is exactly `files` (less `.signatures.json`),
    /// each with its digest.
    fn covers_exactly(&self, files: &[(String, Vec<u8>)]) -> Result<(), String> {
        let listed = self.payload["files"]
            .as_array()
            .ok_or("the JWT payload has no `files` list")?;
        let mut unverified: Vec<&str> = files
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| *n != FILE)
            .collect();
        for entry in listed {
            let name = entry["name"].as_str().ok_or("a listed file has no name")?;
            if entry["algorithm"].as_str() != Some("SHA-256") {
                return Err(format!(
                    "{name}: unsupported hash algorithm {}",
                    entry["algorithm"]
                ));
            }
            let (_, bytes) = files
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| format!("{name}: listed in the signature but not in the bundle"))?;
            if entry["hash"].as_str() != Some(file_hash(name, bytes)?.as_str()) {
                return Err(format!("{name}: digest mismatch (the file was changed)"));
            }
            unverified.retain(|n| *n != name);
        }
        match unverified.first() {
            Some(extra) => Err(format!(
                "{extra}: in the bundle but not covered by the signature"
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod props;
