//! Public keys and signature checks as Go's `crypto/rsa`, `crypto/ecdsa` and `crypto/ed25519`
//! make them, for OPA's `io.jwt.verify_*` (its own verifiers in `tokens.go`) and for
//! `decode_verify` (jwx's `jwsbb.Verify`, through lestrrat-go/dsig). Each check answers whether
//! the signature verifies; Go's errors (a key of another type, a malformed signature) are a
//! `false`, as OPA reads any error of a verifier.

use alloc::vec::Vec;

use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, RsaPublicKey};

use super::Hash;
use super::keys::MAX_RSA_BITS;

/// A key of the certificate argument, as Go holds it.
#[derive(Debug)]
pub(super) enum PublicKey {
    /// `*rsa.PublicKey`: the modulus (within [`MAX_RSA_BITS`]) and the exponent as Go's int.
    Rsa(RsaKey),
    /// `*ecdsa.PublicKey` on P-256, P-384 or P-521, the point on its curve.
    Ec(EcKey),
    /// `ed25519.PublicKey`: 32 bytes, not yet decoded (Go decodes the point as it verifies).
    Ed25519([u8; 32]),
    /// A JWK `oct` key (`[]byte`): a secret for `decode_verify`'s HMACs, nothing for the
    /// `verify_*` builtins.
    Oct(Vec<u8>),
    /// A key Go holds that no JWS algorithm verifies with (X25519, a certificate's key of an
    /// algorithm Go does not know).
    Other,
    /// A key Go verifies with and Gantry cannot (P-224): a hard error where it would be tried.
    Unsupported(alloc::string::String),
}

impl PublicKey {
    /// What checking a signature under the key costs, in units of a 1,024-bit RSA verification
    /// (the modulus's size squared); a curve's check is about one.
    pub(super) fn cost(&self) -> usize {
        match self {
            PublicKey::Rsa(k) => k.n.bits().div_ceil(1024).pow(2),
            _ => 1,
        }
    }
}

#[derive(Debug)]
pub(super) struct RsaKey {
    pub(super) n: BigUint,
    pub(super) e: i64,
}

impl RsaKey {
    /// The key as Go's `crypto/rsa` takes it for verification (Go 1.24): at least 1,024 bits
    /// (`rsa1024min`), an odd modulus, an odd exponent from 3 to 2^31 - 1. Go refuses any
    /// other with an error, which OPA reads as a signature that does not verify.
    fn go_public(&self) -> Option<RsaPublicKey> {
        let n = &self.n;
        if n.bits() < 1024 || n.bits() > MAX_RSA_BITS || n.to_bytes_le()[0] & 1 == 0 {
            return None;
        }
        if self.e < 2 || self.e & 1 == 0 || self.e > (1 << 31) - 1 {
            return None;
        }
        let e = BigUint::from(self.e as u64);
        RsaPublicKey::new_with_max_size(n.clone(), e, MAX_RSA_BITS).ok()
    }

    /// Go's `rsa.VerifyPKCS1v15(key, hash, digest, signature)`.
    pub(super) fn verify_pkcs1v15(&self, hash: Hash, digest: &[u8], signature: &[u8]) -> bool {
        let Some(key) = self.go_public() else {
            return false;
        };
        let scheme = match hash {
            Hash::Sha256 => Pkcs1v15Sign::new::<sha2::Sha256>(),
            Hash::Sha384 => Pkcs1v15Sign::new::<sha2::Sha384>(),
            Hash::Sha512 => Pkcs1v15Sign::new::<sha2::Sha512>(),
            Hash::Md5 | Hash::Sha1 => return false,
        };
        key.verify(scheme, digest, signature).is_ok()
    }

    /// Go's `rsa.VerifyPSS(key, hash, digest, signature, opts)`: with `salt` `None` the salt's
    /// length is read from the encoding (`PSSSaltLengthAuto`, OPA's `verify_ps*`), else it must
    /// be that (`PSSSaltLengthEqualsHash`, jwx's).
    pub(super) fn verify_pss(
        &self,
        hash: Hash,
        digest: &[u8],
        signature: &[u8],
        salt: Option<usize>,
    ) -> bool {
        let Some(key) = self.go_public() else {
            return false;
        };
        if signature.len() != key.size() {
            return false;
        }
        let s = BigUint::from_bytes_be(signature);
        if &s >= key.n() {
            return false;
        }
        let Ok(m) = rsa::hazmat::rsa_encrypt(&key, &s) else {
            return false;
        };
        let m = m.to_bytes_be();
        let mut em = alloc::vec![0u8; key.size()];
        let at = em.len() - m.len();
        em[at..].copy_from_slice(&m);
        let em_bits = key.n().bits() - 1;
        let em_len = em_bits.div_ceil(8);
        // Go keeps the encoding at the modulus's size and strips leading zeros.
        let mut em = &em[..];
        while em.len() > em_len {
            if em[0] != 0 {
                return false;
            }
            em = &em[1..];
        }
        emsa_pss_verify(digest, em, em_bits, salt, hash)
    }
}

/// MGF1 of `seed` over `out`, XORed in (Go's `mgf1XOR`).
fn mgf1_xor(out: &mut [u8], hash: Hash, seed: &[u8]) {
    let mut counter: u32 = 0;
    let mut done = 0;
    while done < out.len() {
        let mut input = Vec::with_capacity(seed.len() + 4);
        input.extend_from_slice(seed);
        input.extend_from_slice(&counter.to_be_bytes());
        let block = hash.digest(&input);
        for (o, b) in out[done..].iter_mut().zip(block.iter()) {
            *o ^= b;
        }
        done += block.len();
        counter += 1;
    }
}

/// Go's `emsaPSSVerify` (RFC 8017, 9.1.2).
fn emsa_pss_verify(
    m_hash: &[u8],
    em: &[u8],
    em_bits: usize,
    salt: Option<usize>,
    hash: Hash,
) -> bool {
    let h_len = hash.digest(b"").len();
    let em_len = em_bits.div_ceil(8);
    if em.len() != em_len || m_hash.len() != h_len {
        return false;
    }
    // Go's auto-detection counts the salt as none here.
    if em_len < h_len + salt.unwrap_or(0) + 2 {
        return false;
    }
    if em[em_len - 1] != 0xbc {
        return false;
    }
    let mut db = em[..em_len - h_len - 1].to_vec();
    let h = &em[em_len - h_len - 1..em_len - 1];
    let bit_mask: u8 = 0xff >> (8 * em_len - em_bits);
    if em[0] & !bit_mask != 0 {
        return false;
    }
    mgf1_xor(&mut db, hash, h);
    db[0] &= bit_mask;
    let s_len = match salt {
        Some(s) => s,
        None => match db.iter().position(|&b| b == 0x01) {
            Some(ps_len) => db.len() - ps_len - 1,
            None => return false,
        },
    };
    let ps_len = em_len - h_len - s_len - 2;
    if db[..ps_len].iter().any(|&b| b != 0) || db[ps_len] != 0x01 {
        return false;
    }
    let salt = &db[db.len() - s_len..];
    let mut prime = Vec::with_capacity(8 + h_len + s_len);
    prime.extend_from_slice(&[0u8; 8]);
    prime.extend_from_slice(m_hash);
    prime.extend_from_slice(salt);
    super::equal(&hash.digest(&prime), h)
}

/// An ECDSA public key, its point checked on the curve.
pub(super) enum EcKey {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    P521(p521::ecdsa::VerifyingKey),
}

impl core::fmt::Debug for EcKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let curve = match self {
            EcKey::P256(_) => "P-256",
            EcKey::P384(_) => "P-384",
            EcKey::P521(_) => "P-521",
        };
        write!(f, "EcKey({curve})")
    }
}

/// `x || y` as the SEC 1 uncompressed point, each left-padded to `size` (Go's `FillBytes`);
/// `None` when one is longer (a coordinate past the field, which Go refuses).
fn uncompressed(x: &[u8], y: &[u8], size: usize) -> Option<Vec<u8>> {
    let strip = |v: &[u8]| -> Vec<u8> {
        let at = v.iter().position(|&b| b != 0).unwrap_or(v.len());
        v[at..].to_vec()
    };
    let (x, y) = (strip(x), strip(y));
    if x.len() > size || y.len() > size {
        return None;
    }
    let mut point = alloc::vec![0u8; 1 + 2 * size];
    point[0] = 0x04;
    point[1 + size - x.len()..1 + size].copy_from_slice(&x);
    point[1 + 2 * size - y.len()..].copy_from_slice(&y);
    Some(point)
}

impl EcKey {
    /// A SEC 1 point (Go's `elliptic.Unmarshal` takes the uncompressed form: the caller checks
    /// its first byte) on P-256.
    pub(super) fn p256_sec1(bytes: &[u8]) -> Option<EcKey> {
        (bytes.len() == 65)
            .then(|| p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes).ok())
            .flatten()
            .map(EcKey::P256)
    }

    pub(super) fn p384_sec1(bytes: &[u8]) -> Option<EcKey> {
        (bytes.len() == 97)
            .then(|| p384::ecdsa::VerifyingKey::from_sec1_bytes(bytes).ok())
            .flatten()
            .map(EcKey::P384)
    }

    pub(super) fn p521_sec1(bytes: &[u8]) -> Option<EcKey> {
        (bytes.len() == 133)
            .then(|| p521::ecdsa::VerifyingKey::from_sec1_bytes(bytes).ok())
            .flatten()
            .map(EcKey::P521)
    }

    /// A JWK's `x` and `y` (big-endian integers of any length, as jwx's `SetBytes`).
    pub(super) fn p256_affine(x: &[u8], y: &[u8]) -> Option<EcKey> {
        Self::p256_sec1(&uncompressed(x, y, 32)?)
    }

    pub(super) fn p384_affine(x: &[u8], y: &[u8]) -> Option<EcKey> {
        Self::p384_sec1(&uncompressed(x, y, 48)?)
    }

    pub(super) fn p521_affine(x: &[u8], y: &[u8]) -> Option<EcKey> {
        Self::p521_sec1(&uncompressed(x, y, 66)?)
    }

    /// The curve's size in bytes (dsig's `CalculateKeySize`).
    pub(super) fn size(&self) -> usize {
        match self {
            EcKey::P256(_) => 32,
            EcKey::P384(_) => 48,
            EcKey::P521(_) => 66,
        }
    }

    /// Go's `ecdsa.Verify(key, digest, r, s)`, `r` and `s` big-endian integers of any length:
    /// each in `1..n`, the digest's leftmost bits as the curve's order is long (shorter
    /// digests are taken whole), any `s` (no low-S rule).
    pub(super) fn verify(&self, digest: &[u8], r: &[u8], s: &[u8]) -> bool {
        let size = self.size();
        let strip = |v: &[u8]| -> Option<Vec<u8>> {
            let at = v.iter().position(|&b| b != 0).unwrap_or(v.len());
            let v = &v[at..];
            if v.len() > size {
                return None;
            }
            let mut out = alloc::vec![0u8; size];
            out[size - v.len()..].copy_from_slice(v);
            Some(out)
        };
        let (Some(r), Some(s)) = (strip(r), strip(s)) else {
            return false;
        };
        // RustCrypto wants at least half the field: a shorter digest, left-padded, is the
        // same integer (Go takes a digest shorter than the order whole).
        let mut prehash = digest.to_vec();
        if prehash.len() < size {
            let mut padded = alloc::vec![0u8; size - prehash.len()];
            padded.extend_from_slice(&prehash);
            prehash = padded;
        }
        use ecdsa_verify::PrehashVerifier;
        match self {
            EcKey::P256(k) => {
                let Ok(sig) = p256::ecdsa::Signature::from_scalars(
                    *p256::FieldBytes::from_slice(&r),
                    *p256::FieldBytes::from_slice(&s),
                ) else {
                    return false;
                };
                k.verify_prehash(&prehash, &sig).is_ok()
            }
            EcKey::P384(k) => {
                let Ok(sig) = p384::ecdsa::Signature::from_scalars(
                    *p384::FieldBytes::from_slice(&r),
                    *p384::FieldBytes::from_slice(&s),
                ) else {
                    return false;
                };
                k.verify_prehash(&prehash, &sig).is_ok()
            }
            EcKey::P521(k) => {
                let Ok(sig) = p521::ecdsa::Signature::from_scalars(
                    *p521::FieldBytes::from_slice(&r),
                    *p521::FieldBytes::from_slice(&s),
                ) else {
                    return false;
                };
                k.verify_prehash(&prehash, &sig).is_ok()
            }
        }
    }
}

mod ecdsa_verify {
    pub(super) use p256::ecdsa::signature::hazmat::PrehashVerifier;
}

/// Go's `ed25519.Verify(key, message, signature)`: 64 bytes, `S` canonical, the key a point
/// (any encoding of one, as Go's `SetBytes`), cofactorless, `R` compared as encoded.
pub(super) fn verify_ed25519(key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    use ed25519_dalek::Verifier;
    let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
        return false;
    };
    if signature.to_bytes()[63] & 0xe0 != 0 {
        return false;
    }
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(key) else {
        return false;
    };
    key.verify(message, &signature).is_ok()
}
