//! Bearer tokens: `gantry_<id>_<secret>`. Only a salted SHA-256 of the secret is stored; the id
//! finds the row, and the hash is compared in constant time.

use ring::rand::{SecureRandom, SystemRandom};

use super::db::{Db, DbError, User};

/// Issues a token for `user` (who must exist); returns it. It is shown once and never stored.
pub fn issue(db: &Db, user: &str) -> Result<String, DbError> {
    let rng = SystemRandom::new();
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    let mut salt = [0u8; 16];
    for buf in [&mut id[..], &mut secret[..], &mut salt[..]] {
        rng.fill(buf).expect("the system random source");
    }
    let id = data_encoding::HEXLOWER.encode(&id);
    let secret = data_encoding::BASE64URL_NOPAD.encode(&secret);
    db.put_token(&id, user, &salt, &hash(&salt, &secret))?;
    Ok(format!("gantry_{id}_{secret}"))
}

fn hash(salt: &[u8], secret: &str) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(salt);
    ctx.update(secret.as_bytes());
    ctx.finish().as_ref().to_vec()
}

/// The user a bearer token belongs to, or `None` for a malformed, unknown or wrong token.
pub fn check(db: &Db, token: &str) -> Result<Option<User>, DbError> {
    let Some((id, secret)) = token
        .strip_prefix("gantry_")
        .and_then(|rest| rest.split_once('_'))
    else {
        return Ok(None);
    };
    let Some(stored) = db.token(id)? else {
        return Ok(None);
    };
    let candidate = hash(&stored.salt, secret);
    // Constant time: a mismatch position must not show in the timing.
    let same = candidate.len() == stored.hash.len()
        && candidate
            .iter()
            .zip(&stored.hash)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    Ok(same.then_some(stored.user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("g.db")).unwrap();
        let ada = User {
            name: "ada".into(),
            roles: vec!["researcher".into()],
            tenants: vec!["vision".into()],
            clearance: "internal".into(),
        };
        db.put_user(&ada).unwrap();
        let token = issue(&db, "ada").unwrap();
        assert_eq!(check(&db, &token).unwrap(), Some(ada));
        // `gantry_` + 12 hex digits of id + `_` + the secret (base64url, which may hold `_`).
        let (head, secret) = token.split_at("gantry_".len() + 12 + 1);
        let mut wrong = secret.to_string().into_bytes();
        wrong[3] ^= 1;
        let wrong = format!("{head}{}", String::from_utf8(wrong).unwrap());
        assert_eq!(check(&db, &wrong).unwrap(), None);
        for bad in [
            "",
            "gantry_",
            "gantry_nosuch_x",
            "Bearer x",
            &token[..token.len() - 1],
        ] {
            assert_eq!(check(&db, bad).unwrap(), None, "{bad}");
        }
        // Only the salted hash is stored.
        let raw = std::fs::read(dir.path().join("g.db")).unwrap();
        assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()));
        assert!(issue(&db, "nobody").is_err(), "tokens need a user");
    }
}
