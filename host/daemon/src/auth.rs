//! Bearer tokens: `gantry_<id>_<secret>`. Only a salted SHA-256 of the secret is stored; the id
//! finds the row, and the hash is compared in constant time. Every token expires (after the data
//! directory's default lifetime unless issued with its own) and can be revoked; an expired or
//! revoked token is refused like a wrong one.

use ring::rand::{SecureRandom, SystemRandom};

use super::accounts::AccountStore;
use super::db::User;
use super::jobstore::StateError;

/// How long a token lives unless the operator says otherwise (`gantry user ttl`).
pub const DEFAULT_TTL_S: f64 = 90.0 * 86400.0;

/// The settings key holding the default token lifetime (seconds, or `never`).
pub const TTL_SETTING: &str = "token_ttl";

/// A token just issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The bearer token: shown once, never stored.
    pub token: String,
    /// Its id (the part after `gantry_`), which names it in listings and revocations.
    pub id: String,
    /// Unix seconds after which it is refused (none: never).
    pub expires_at: Option<f64>,
}

/// A token lifetime: `30d`, `12h`, `45m`, `90s`, or `never`; `None` for never.
pub fn parse_ttl(text: &str) -> Result<Option<f64>, String> {
    let text = text.trim();
    if text == "never" {
        return Ok(None);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u32 = number.parse().map_err(|_| {
        format!("`{text}`: a lifetime is a number and a unit (30d, 12h, 45m, 90s) or `never`")
    })?;
    let scale = match unit {
        "d" => 86400.0,
        "h" => 3600.0,
        "m" => 60.0,
        "s" | "" => 1.0,
        _ => return Err(format!("`{text}`: the unit is d, h, m or s")),
    };
    if n == 0 {
        return Err(format!("`{text}`: a lifetime is at least a second"));
    }
    Ok(Some(f64::from(n) * scale))
}

/// The default token lifetime in seconds (`None`: tokens do not expire).
pub fn default_ttl(db: &dyn AccountStore) -> Result<Option<f64>, StateError> {
    Ok(match db.token_ttl()? {
        None => Some(DEFAULT_TTL_S),
        Some(v) if v == "never" => None,
        // Written only by `set_default_ttl`; anything else is a corrupt value, refused.
        Some(v) => Some(v.parse::<f64>().map_err(|_| StateError::Corrupt {
            what: format!("the default token lifetime (setting `{TTL_SETTING}`)"),
            problem: format!("`{v}` is not a number of seconds"),
        })?),
    })
}

/// Sets the default token lifetime (`None`: tokens do not expire).
pub fn set_default_ttl(db: &dyn AccountStore, ttl_s: Option<f64>) -> Result<(), StateError> {
    let value = ttl_s.map_or_else(|| "never".to_string(), |s| s.to_string());
    db.set_token_ttl(&value)
}

/// Why tokens could not be revoked.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// No such user.
    #[error("no user `{0}`")]
    NoUser(String),
    /// The user has no live token of that id.
    #[error("user `{user}` has no live token `{token}`")]
    NoToken {
        /// The user.
        user: String,
        /// The token id asked for.
        token: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StateError),
}

/// Revokes every live token of user `name` (or only `token`, by id); returns the ids revoked.
pub fn revoke(
    db: &dyn AccountStore,
    name: &str,
    token: Option<&str>,
) -> Result<Vec<String>, RevokeError> {
    if db.user(name)?.is_none() {
        return Err(RevokeError::NoUser(name.to_string()));
    }
    let revoked = db.revoke_tokens(name, token)?;
    if let (Some(t), true) = (token, revoked.is_empty()) {
        return Err(RevokeError::NoToken {
            user: name.to_string(),
            token: t.to_string(),
        });
    }
    Ok(revoked)
}

/// Issues a token for `user` (who must exist) with the default lifetime.
pub fn issue(db: &dyn AccountStore, user: &str) -> Result<String, StateError> {
    let ttl = default_ttl(db)?;
    Ok(issue_for(db, user, ttl)?.token)
}

/// Issues a token for `user` (who must exist) that lives `ttl_s` seconds (`None`: forever).
pub fn issue_for(
    db: &dyn AccountStore,
    user: &str,
    ttl_s: Option<f64>,
) -> Result<Issued, StateError> {
    let rng = SystemRandom::new();
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    let mut salt = [0u8; 16];
    for buf in [&mut id[..], &mut secret[..], &mut salt[..]] {
        rng.fill(buf).expect("the system random source");
    }
    let id = data_encoding::HEXLOWER.encode(&id);
    let secret = data_encoding::BASE64URL_NOPAD.encode(&secret);
    let expires_at = ttl_s.map(|t| super::db::now() + t);
    db.put_token(&id, user, &salt, &hash(&salt, &secret), expires_at)?;
    Ok(Issued {
        token: format!("gantry_{id}_{secret}"),
        id,
        expires_at,
    })
}

fn hash(salt: &[u8], secret: &str) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(salt);
    ctx.update(secret.as_bytes());
    ctx.finish().as_ref().to_vec()
}

/// The user a bearer token belongs to, or `None` for a malformed, unknown, wrong, expired or
/// revoked token.
pub fn check(db: &dyn AccountStore, token: &str) -> Result<Option<User>, StateError> {
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
    let now = super::db::now();
    let live = stored.revoked_at.is_none() && stored.expires_at.is_none_or(|t| now < t);
    Ok((same && live).then_some(stored.user))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    /// A fresh database holding user `ada` (a researcher of `vision`) with `clearance`.
    fn db_with_ada(clearance: &str) -> (tempfile::TempDir, Db, User) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("g.db")).unwrap();
        let ada = User {
            name: "ada".into(),
            roles: vec!["researcher".into()],
            tenants: vec!["vision".into()],
            clearance: clearance.into(),
        };
        db.put_user(&ada).unwrap();
        (dir, db, ada)
    }

    #[test]
    fn tokens_verify_and_nothing_else_does() {
        let (dir, db, ada) = db_with_ada("internal");
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

    /// Issue 10, section 3: tokens never expired and could not be revoked.
    #[test]
    fn expired_and_revoked_tokens_get_no_user() {
        let (_dir, db, ada) = db_with_ada("public");
        // The default lifetime applies, and the operator can change it.
        let t = issue_for(&db, "ada", default_ttl(&db).unwrap()).unwrap();
        let left = t.expires_at.unwrap() - super::super::db::now();
        assert!(
            (DEFAULT_TTL_S - 60.0..=DEFAULT_TTL_S).contains(&left),
            "{left}"
        );
        set_default_ttl(&db, parse_ttl("12h").unwrap()).unwrap();
        assert_eq!(default_ttl(&db).unwrap(), Some(12.0 * 3600.0));
        set_default_ttl(&db, parse_ttl("never").unwrap()).unwrap();
        assert_eq!(default_ttl(&db).unwrap(), None);
        assert!(parse_ttl("0d").is_err() && parse_ttl("3w").is_err() && parse_ttl("").is_err());
        // Expired a second ago: refused.
        let expired = issue_for(&db, "ada", Some(-1.0)).unwrap();
        assert_eq!(check(&db, &expired.token).unwrap(), None);
        // Revoking one token leaves the others; revoking the user's ends them all.
        let (a, b) = (
            issue_for(&db, "ada", Some(3600.0)).unwrap(),
            issue_for(&db, "ada", None).unwrap(),
        );
        assert_eq!(
            db.revoke_tokens("ada", Some(&a.id)).unwrap(),
            vec![a.id.clone()]
        );
        assert_eq!(check(&db, &a.token).unwrap(), None);
        assert_eq!(check(&db, &b.token).unwrap(), Some(ada.clone()));
        let revoked = db.revoke_tokens("ada", None).unwrap();
        assert!(
            revoked.contains(&b.id) && !revoked.contains(&a.id),
            "{revoked:?}"
        );
        assert_eq!(check(&db, &b.token).unwrap(), None);
        assert!(
            db.tokens(Some("ada"))
                .unwrap()
                .iter()
                .all(|t| t.revoked_at.is_some()
                    || t.expires_at.is_some_and(|e| e < super::super::db::now()))
        );
    }
}
