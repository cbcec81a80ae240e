//! Account rows authenticated under the key file.
//!
//! With `GANTRY_KEY_FILE`, master keys are sealed, but `gantry.db` lay open to whoever could
//! write the data directory: a changed `roles` column made anyone an admin, and a row added to
//! `tokens` (a salt and hash of the writer's choosing) was a token. Every `users` and `tokens`
//! row now carries a MAC (HMAC-SHA256 under a key derived from the key file) over every column
//! that decides access, and one that does not verify is refused, naming its row. What a MAC
//! cannot tell is a row put back as it was before (a revoked token's older row): the audit log
//! records every revocation.

use ring::hmac;

use super::{BadValue, User};

/// The key rows are authenticated with.
pub(crate) struct RowMac(hmac::Key);

impl std::fmt::Debug for RowMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowMac")
    }
}

/// What a token's MAC covers: every column that decides whether it lets someone in.
pub(crate) struct TokenRow<'a> {
    pub id: &'a str,
    pub user: &'a str,
    pub salt: &'a [u8],
    pub hash: &'a [u8],
    pub expires_at: Option<f64>,
    pub revoked_at: Option<f64>,
}

impl RowMac {
    /// Rows authenticated under `key` ([`gantry::storage::accounts_key`]).
    pub(crate) fn new(key: &[u8; 32]) -> RowMac {
        RowMac(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    /// User `u`'s MAC, as its row keeps it.
    pub(crate) fn user(&self, u: &User) -> String {
        self.sign(&user_message(u))
    }

    /// Token `t`'s MAC, as its row keeps it.
    pub(crate) fn token(&self, t: &TokenRow<'_>) -> String {
        self.sign(&token_message(t))
    }

    /// Checks user `u`'s row's MAC `mac`.
    pub(crate) fn check_user(&self, u: &User, mac: Option<&str>) -> Result<(), BadValue> {
        self.check(&user_message(u), mac, "users", &u.name)
    }

    /// Checks token `t`'s row's MAC `mac`.
    pub(crate) fn check_token(&self, t: &TokenRow<'_>, mac: Option<&str>) -> Result<(), BadValue> {
        self.check(&token_message(t), mac, "tokens", t.id)
    }

    fn sign(&self, message: &[u8]) -> String {
        data_encoding::HEXLOWER.encode(hmac::sign(&self.0, message).as_ref())
    }

    fn check(
        &self,
        message: &[u8],
        mac: Option<&str>,
        table: &'static str,
        row: &str,
    ) -> Result<(), BadValue> {
        let bad = |problem: &str| BadValue {
            table,
            row: row.to_string(),
            column: "mac",
            problem: problem.to_string(),
        };
        let Some(mac) = mac else {
            return Err(bad(
                "not authenticated by the key file (GANTRY_KEY_FILE): written outside Gantry, \
                 or before the key file was in use (`gantry key seal` authenticates a data \
                 directory's rows, `gantry up --authenticate-etcd-accounts` those in etcd)",
            ));
        };
        let tag = data_encoding::HEXLOWER
            .decode(mac.as_bytes())
            .map_err(|_| bad("not a MAC"))?;
        hmac::verify(&self.0, message, &tag).map_err(|_| {
            bad(
                "does not verify under the key file (GANTRY_KEY_FILE): the row was changed \
                 outside Gantry",
            )
        })
    }
}

/// What a user's MAC covers: the name binds the row to its user, so that no row is moved to
/// another.
fn user_message(u: &User) -> Vec<u8> {
    let value = serde_json::json!(["user", u.name, u.roles, u.tenants, u.clearance]);
    serde_json::to_vec(&value).expect("JSON serialises")
}

fn token_message(t: &TokenRow<'_>) -> Vec<u8> {
    let hex = |b: &[u8]| data_encoding::HEXLOWER.encode(b);
    let value = serde_json::json!([
        "token",
        t.id,
        t.user,
        hex(t.salt),
        hex(t.hash),
        t.expires_at,
        t.revoked_at
    ]);
    serde_json::to_vec(&value).expect("JSON serialises")
}
