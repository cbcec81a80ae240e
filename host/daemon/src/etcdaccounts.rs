//! Accounts in etcd (issue 13): the [`AccountStore`] the replicas of a control plane share, so
//! that a token revoked through one leader is refused by the next, and a user added through
//! one is known to all; and the admins' [`GpuMarks`], so that a GPU taken out through one
//! leader stays out under the next. The same contracts as SQLite's
//! ([`crate::accounts::contract`]).
//!
//! Layout under a root prefix: `accounts/users/<name>` (a user as JSON), `accounts/tokens/<id>`
//! (a token's salted hash, never the token), `accounts/token_ttl`, `gpu_health/<gpu>` (an
//! admin's mark), and `accounts/seeded`, written once the first leader has copied its data
//! directory's in ([`seed`]).
//! Writes are not fenced by leadership: a revocation must land whoever sends it, and every
//! write is a compare-and-set on what it changes.

use std::sync::Arc;

use data_encoding::BASE64;
use gantry_etcd::{Compare, Etcd, Kv, Op};
use serde::{Deserialize, Serialize};

use crate::accounts::{AccountStore, GpuMarks, Seeded};
use crate::db::rowmac::{RowMac, TokenRow};
use crate::db::{GpuHealth, StoredToken, TokenInfo, User, now};
use crate::etcdstore::{
    EtcdStoreError, checked_value, corrupt, decode, rewrite_each, sign_unmarked, signed_value,
};
use crate::jobstore::StateError;
use crate::nodes::RegisteredNode;

/// How often a token's revocation is retried against other writers.
const MAX_RETRIES: u32 = 64;

/// A token as etcd keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenValue {
    user: String,
    /// Base64.
    salt: String,
    /// Base64 of SHA-256(salt, secret).
    hash: String,
    created_at: f64,
    expires_at: Option<f64>,
    revoked_at: Option<f64>,
    /// Its MAC under the key file, where one is in use ([`crate::db::rowmac`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

/// A user as etcd keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserValue {
    #[serde(flatten)]
    user: User,
    /// Its MAC under the key file, where one is in use ([`crate::db::rowmac`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

/// How long a read of a user or a token is kept.
const CACHE_FOR: std::time::Duration = std::time::Duration::from_secs(2);
/// The most reads kept (unknown token ids too): past it, the cache starts over.
const MAX_CACHED: usize = 4096;

/// Users and tokens kept in etcd under a root prefix.
///
/// Every API request reads its token and the token's user; those reads are kept for
/// [`CACHE_FOR`] (about 1 ms of each request, measured). That is safe because only the leader
/// writes accounts, and its own writes empty the cache: another leader exists only once this
/// one lost its lease (and exits), and the age bound covers a leader paused past its lease that
/// serves a read before it finds out.
#[derive(Debug)]
pub struct EtcdAccounts {
    etcd: Arc<Etcd>,
    root: String,
    cache: std::sync::Mutex<Cache>,
    /// Set where a key file is in use, as [`crate::db::Db::authenticate_rows`].
    rows: std::sync::OnceLock<RowMac>,
}

/// Reads kept, by etcd key, and a count of writes (a read that began before a write is not
/// kept: it may hold what the write replaced).
#[derive(Debug, Default)]
struct Cache {
    reads: std::collections::HashMap<Vec<u8>, (std::time::Instant, Option<Kv>)>,
    writes: u64,
}

impl EtcdAccounts {
    /// Accounts under `root` (`gantry`, say) in `etcd`.
    pub fn new(etcd: Arc<Etcd>, root: &str) -> EtcdAccounts {
        EtcdAccounts {
            etcd,
            root: root.trim_end_matches('/').to_string(),
            cache: Default::default(),
            rows: Default::default(),
        }
    }

    /// From now on, authenticates users and tokens under `key`, as
    /// [`crate::db::Db::authenticate_rows`] does: the replicas share their key file (their
    /// master keys are sealed under it), so each verifies what another wrote.
    pub fn authenticate_rows(&self, key: &[u8; 32]) {
        let _ = self.rows.set(RowMac::new(key));
    }

    /// These accounts, authenticated under the key file of the data directory at `data_dir`
    /// where one is in use ([`EtcdAccounts::authenticate_rows`]).
    pub fn authenticated_as(self, data_dir: &std::path::Path) -> Result<EtcdAccounts, String> {
        let key = gantry::storage::rows_key(data_dir).map_err(|e| e.to_string())?;
        if let Some(key) = key {
            self.authenticate_rows(&key);
        }
        Ok(self)
    }

    /// Gives every user, token, GPU mark and registered node in etcd without a MAC its MAC (rows are authenticated: see
    /// [`EtcdAccounts::authenticate_rows`]): those written before the key file was in use, as
    /// `gantry key seal` does a data directory's. One changed meanwhile is left to the next
    /// call; one whose MAC does not verify stays refused. Returns how many it authenticated.
    pub fn authenticate_unmarked(&self) -> Result<usize, String> {
        let Some(rows) = self.rows.get() else {
            return Err("no key file (GANTRY_KEY_FILE) to authenticate them with".into());
        };
        (self.writing(|| self.sign_unmarked(rows))).map_err(|e| e.to_string())
    }

    fn sign_unmarked(&self, rows: &RowMac) -> Result<usize, EtcdStoreError> {
        let put = |compare: &[Compare], ops: &[Op]| Ok(self.etcd.txn(compare, ops, &[])?.succeeded);
        let users = rewrite_each(
            &self.etcd,
            &self.key("users/"),
            |kv| {
                let value: UserValue = decode(&kv.key, &kv.value)?;
                Ok(value.mac.is_none().then(|| self.user_value(value.user)))
            },
            put,
        )?;
        let tokens_prefix = self.key("tokens/");
        let tokens = rewrite_each(
            &self.etcd,
            &tokens_prefix,
            |kv| {
                let token: TokenValue = decode(&kv.key, &kv.value)?;
                if token.mac.is_some() {
                    return Ok(None);
                }
                let id = String::from_utf8_lossy(&kv.key[tokens_prefix.len()..]);
                self.sign_token(&id, token).map(Some)
            },
            put,
        )?;
        // And the GPU marks and registered nodes kept beside the accounts.
        let marks = sign_unmarked::<GpuHealth>(&self.etcd, rows, &self.mark_key(""))?;
        let nodes = sign_unmarked::<RegisteredNode>(&self.etcd, rows, &self.node_key(""))?;
        Ok(users + tokens + marks + nodes)
    }

    /// `user` as etcd keeps it, with its MAC where rows are authenticated.
    fn user_value(&self, user: User) -> Vec<u8> {
        let mac = self.rows.get().map(|rows| rows.sign(&user));
        serde_json::to_vec(&UserValue { user, mac }).expect("a user serialises")
    }

    /// The user in `kv`, checked where rows are authenticated.
    fn user_of(&self, kv: &Kv) -> Result<User, EtcdStoreError> {
        let value: UserValue = decode(&kv.key, &kv.value)?;
        if let Some(rows) = self.rows.get() {
            (rows.verify(&value.user, value.mac.as_deref()))
                .map_err(|bad| corrupt(&kv.key, bad.problem))?;
        }
        Ok(value.user)
    }

    /// `token` (id `id`) with its MAC where rows are authenticated.
    fn sign_token(&self, id: &str, mut token: TokenValue) -> Result<Vec<u8>, EtcdStoreError> {
        token.mac = None;
        if let Some(rows) = self.rows.get() {
            let key = self.key(&format!("tokens/{id}"));
            token.mac = Some(on_row(&key, id, &token, |row| rows.sign(row))?);
        }
        Ok(serde_json::to_vec(&token).expect("a token serialises"))
    }

    /// The token in `kv` (id `id`), checked where rows are authenticated.
    fn token_of(&self, id: &str, kv: &Kv) -> Result<TokenValue, EtcdStoreError> {
        let token: TokenValue = decode(&kv.key, &kv.value)?;
        if let Some(rows) = self.rows.get() {
            on_row(&kv.key, id, &token, |row| {
                rows.verify(row, token.mac.as_deref())
            })?
            .map_err(|bad| corrupt(&kv.key, bad.problem))?;
        }
        Ok(token)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `key`'s value, read within the last [`CACHE_FOR`] or from etcd.
    fn cached_get(&self, key: &[u8]) -> Result<Option<Kv>, EtcdStoreError> {
        let writes = {
            let cache = self.cache();
            if let Some((at, kv)) = cache.reads.get(key)
                && at.elapsed() < CACHE_FOR
            {
                return Ok(kv.clone());
            }
            cache.writes
        };
        let kv = self.etcd.get(key)?;
        let mut cache = self.cache();
        if cache.writes == writes {
            if cache.reads.len() >= MAX_CACHED {
                cache.reads.clear();
            }
            let read = (std::time::Instant::now(), kv.clone());
            cache.reads.insert(key.to_vec(), read);
        }
        Ok(kv)
    }

    /// Runs `write`, forgetting every read before and after it: no read from before the write
    /// ends is kept.
    fn writing<T>(&self, write: impl FnOnce() -> T) -> T {
        let forget = || {
            let mut cache = self.cache();
            cache.reads.clear();
            cache.writes += 1;
        };
        forget();
        let done = write();
        forget();
        done
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}/accounts/{rest}", self.root).into_bytes()
    }

    fn mark_key(&self, gpu: &str) -> Vec<u8> {
        format!("{}/gpu_health/{gpu}", self.root).into_bytes()
    }

    fn node_key(&self, node: &str) -> Vec<u8> {
        format!("{}/nodes/{node}", self.root).into_bytes()
    }

    fn read_token(&self, id: &str) -> Result<Option<(TokenValue, Kv)>, EtcdStoreError> {
        match self.etcd.get(&self.key(&format!("tokens/{id}")))? {
            Some(kv) => Ok(Some((self.token_of(id, &kv)?, kv))),
            None => Ok(None),
        }
    }

    /// Adds token `id` of `user`, unless the id is taken or the user gone.
    fn add_token(
        &self,
        id: &str,
        user: &str,
        salt: &[u8],
        hash: &[u8],
        expires_at: Option<f64>,
    ) -> Result<(), StateError> {
        let user_key = self.key(&format!("users/{user}"));
        let Some(owner) = self.etcd.get(&user_key).map_err(EtcdStoreError::from)? else {
            return Err(corrupt(&user_key, "a token for a user that does not exist").into());
        };
        let key = self.key(&format!("tokens/{id}"));
        let value = TokenValue {
            user: user.to_string(),
            salt: BASE64.encode(salt),
            hash: BASE64.encode(hash),
            created_at: now(),
            expires_at,
            revoked_at: None,
            mac: None,
        };
        let value = self.sign_token(id, value)?;
        // Only while the user still exists, and never over another token.
        let outcome = self
            .etcd
            .txn(
                &[
                    Compare::Created(user_key.clone(), owner.create_revision),
                    Compare::Created(key.clone(), 0),
                ],
                &[Op::Put(key.clone(), value, 0)],
                &[],
            )
            .map_err(EtcdStoreError::from)?;
        if !outcome.succeeded {
            return Err(corrupt(&key, "taken, or its user was removed meanwhile").into());
        }
        Ok(())
    }

    /// Revokes `user`'s tokens (only `token`, when given) that are not revoked yet; their ids.
    fn revoke(&self, user: &str, token: Option<&str>) -> Result<Vec<String>, StateError> {
        let mut revoked = Vec::new();
        let mut live: Vec<(String, TokenValue, Kv)> = self
            .all_tokens()?
            .into_iter()
            .filter(|(id, t, _)| {
                t.user == user && t.revoked_at.is_none() && token.is_none_or(|want| want == id)
            })
            .collect();
        let mut tries = 0;
        while let Some((id, mut value, kv)) = live.pop() {
            value.revoked_at = Some(now());
            let value = self.sign_token(&id, value)?;
            let outcome = self
                .etcd
                .txn(
                    &[Compare::Modified(kv.key.clone(), kv.mod_revision)],
                    &[Op::Put(kv.key.clone(), value, 0)],
                    &[],
                )
                .map_err(EtcdStoreError::from)?;
            if outcome.succeeded {
                revoked.push(id);
                continue;
            }
            // Changed meanwhile (revoked by another writer, say): look again.
            tries += 1;
            if tries > MAX_RETRIES {
                return Err(EtcdStoreError::Contended(id).into());
            }
            if let Some((now, kv)) = self.read_token(&id)?
                && now.revoked_at.is_none()
            {
                live.push((id, now, kv));
            }
        }
        revoked.sort();
        Ok(revoked)
    }

    /// Every token with its id, in no particular order, each checked where rows are
    /// authenticated.
    fn all_tokens(&self) -> Result<Vec<(String, TokenValue, Kv)>, EtcdStoreError> {
        let prefix = self.key("tokens/");
        (self.etcd.prefix(&prefix, 0)?.into_iter())
            .map(|kv| {
                let id = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
                Ok((id.clone(), self.token_of(&id, &kv)?, kv))
            })
            .collect()
    }

    /// Creates `key` with `value` unless it exists; returns whether it did.
    fn create(&self, key: Vec<u8>, value: Vec<u8>) -> Result<bool, EtcdStoreError> {
        let outcome = self.etcd.txn(
            &[Compare::Created(key.clone(), 0)],
            &[Op::Put(key, value, 0)],
            &[],
        )?;
        Ok(outcome.succeeded)
    }
}

/// `f` of the columns token `t`'s MAC covers (its id `id`, at etcd key `key`).
fn on_row<T>(
    key: &[u8],
    id: &str,
    t: &TokenValue,
    f: impl FnOnce(&TokenRow<'_>) -> T,
) -> Result<T, EtcdStoreError> {
    let (salt, hash) = (bytes(key, "salt", &t.salt)?, bytes(key, "hash", &t.hash)?);
    Ok(f(&TokenRow {
        id,
        user: &t.user,
        salt: &salt,
        hash: &hash,
        expires_at: t.expires_at,
        revoked_at: t.revoked_at,
    }))
}

fn bytes(key: &[u8], field: &str, text: &str) -> Result<Vec<u8>, EtcdStoreError> {
    BASE64
        .decode(text.as_bytes())
        .map_err(|e| corrupt(key, format!("{field}: {e}")))
}

impl AccountStore for EtcdAccounts {
    fn users(&self) -> Result<Vec<User>, StateError> {
        // Keys are in name order.
        let users = self.etcd.prefix(&self.key("users/"), 0);
        let users = users.map_err(EtcdStoreError::from)?;
        Ok(users
            .iter()
            .map(|kv| self.user_of(kv))
            .collect::<Result<_, _>>()?)
    }

    fn user(&self, name: &str) -> Result<Option<User>, StateError> {
        let key = self.key(&format!("users/{name}"));
        match self.cached_get(&key)? {
            Some(kv) => Ok(Some(self.user_of(&kv)?)),
            None => Ok(None),
        }
    }

    fn put_user(&self, user: &User) -> Result<(), StateError> {
        let value = self.user_value(user.clone());
        let key = self.key(&format!("users/{}", user.name));
        self.writing(|| self.etcd.put(&key, &value, 0))
            .map_err(EtcdStoreError::from)?;
        Ok(())
    }

    fn put_token(
        &self,
        id: &str,
        user: &str,
        salt: &[u8],
        hash: &[u8],
        expires_at: Option<f64>,
    ) -> Result<(), StateError> {
        self.writing(|| self.add_token(id, user, salt, hash, expires_at))
    }

    fn token(&self, id: &str) -> Result<Option<StoredToken>, StateError> {
        let Some(kv) = self.cached_get(&self.key(&format!("tokens/{id}")))? else {
            return Ok(None);
        };
        let token = self.token_of(id, &kv)?;
        let Some(user) = self.user(&token.user)? else {
            return Ok(None);
        };
        Ok(Some(StoredToken {
            salt: bytes(&kv.key, "salt", &token.salt)?,
            hash: bytes(&kv.key, "hash", &token.hash)?,
            user,
            expires_at: token.expires_at,
            revoked_at: token.revoked_at,
        }))
    }

    fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenInfo>, StateError> {
        let mut infos: Vec<TokenInfo> = self
            .all_tokens()?
            .into_iter()
            .filter(|(_, t, _)| user.is_none_or(|u| t.user == u))
            .map(|(id, t, _)| TokenInfo {
                id,
                user: t.user,
                created_at: t.created_at,
                expires_at: t.expires_at,
                revoked_at: t.revoked_at,
            })
            .collect();
        infos.sort_by(|a, b| {
            a.created_at
                .total_cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(infos)
    }

    fn revoke_tokens(&self, user: &str, token: Option<&str>) -> Result<Vec<String>, StateError> {
        self.writing(|| self.revoke(user, token))
    }

    fn token_ttl(&self) -> Result<Option<String>, StateError> {
        let key = self.key("token_ttl");
        match self.etcd.get(&key).map_err(EtcdStoreError::from)? {
            Some(kv) => Ok(Some(
                String::from_utf8(kv.value).map_err(|e| corrupt(&key, e.to_string()))?,
            )),
            None => Ok(None),
        }
    }

    fn set_token_ttl(&self, value: &str) -> Result<(), StateError> {
        self.etcd
            .put(&self.key("token_ttl"), value.as_bytes(), 0)
            .map_err(EtcdStoreError::from)?;
        Ok(())
    }
}

impl GpuMarks for EtcdAccounts {
    fn set_gpu_health(&self, gpu: &str, healthy: bool, by: &str) -> Result<(), StateError> {
        let mark = GpuHealth {
            gpu: gpu.to_string(),
            healthy,
            by: by.to_string(),
            at: now(),
        };
        let value = signed_value(self.rows.get(), &mark);
        self.etcd
            .put(&self.mark_key(gpu), &value, 0)
            .map_err(EtcdStoreError::from)?;
        Ok(())
    }

    fn gpu_health(&self) -> Result<Vec<GpuHealth>, StateError> {
        // Keys are in GPU id order.
        let kvs = (self.etcd.prefix(&self.mark_key(""), 0)).map_err(EtcdStoreError::from)?;
        Ok((kvs.iter().map(|kv| checked_value(self.rows.get(), kv))).collect::<Result<_, _>>()?)
    }

    fn register_node(&self, node: &crate::nodes::RegisteredNode) -> Result<(), StateError> {
        let value = signed_value(self.rows.get(), node);
        self.create(self.node_key(&node.name), value)?;
        Ok(())
    }

    fn register_node_again(&self, node: &crate::nodes::RegisteredNode) -> Result<(), StateError> {
        let value = signed_value(self.rows.get(), node);
        self.etcd
            .put(&self.node_key(&node.name), &value, 0)
            .map_err(EtcdStoreError::from)?;
        Ok(())
    }

    fn forget_node(&self, name: &str) -> Result<(), StateError> {
        self.etcd
            .delete(&self.node_key(name))
            .map_err(EtcdStoreError::from)?;
        Ok(())
    }

    fn registered_nodes(&self) -> Result<Vec<crate::nodes::RegisteredNode>, StateError> {
        // Keys are in name order.
        let kvs = (self.etcd.prefix(&self.node_key(""), 0)).map_err(EtcdStoreError::from)?;
        Ok((kvs.iter().map(|kv| checked_value(self.rows.get(), kv))).collect::<Result<_, _>>()?)
    }
}

/// Copies `from`'s users, tokens (as they are: revoked ones stay revoked), default token
/// lifetime and GPU marks into `to`, once ([`crate::etcdstore::seed_once`]: a token revoked
/// in etcd is never brought back by a replica's older copy). Each copy is a create that never
/// overwrites.
pub fn seed<S: AccountStore + GpuMarks>(
    from: &S,
    to: &EtcdAccounts,
) -> Result<Option<Seeded>, String> {
    crate::etcdstore::seed_once(&to.etcd, &to.key("seeded"), || copy(from, to))
}

fn copy<S: AccountStore + GpuMarks>(from: &S, to: &EtcdAccounts) -> Result<Seeded, StateError> {
    let mut copied = Seeded {
        users: 0,
        tokens: 0,
    };
    for user in from.users()? {
        let value = to.user_value(user.clone());
        copied.users += usize::from(to.create(to.key(&format!("users/{}", user.name)), value)?);
    }
    for info in from.tokens(None)? {
        let Some(stored) = from.token(&info.id)? else {
            continue;
        };
        let value = TokenValue {
            user: info.user,
            salt: BASE64.encode(&stored.salt),
            hash: BASE64.encode(&stored.hash),
            created_at: info.created_at,
            expires_at: info.expires_at,
            revoked_at: info.revoked_at,
            mac: None,
        };
        let value = to.sign_token(&info.id, value)?;
        copied.tokens += usize::from(to.create(to.key(&format!("tokens/{}", info.id)), value)?);
    }
    if let Some(ttl) = from.token_ttl()? {
        to.create(to.key("token_ttl"), ttl.into_bytes())?;
    }
    for mark in from.gpu_health()? {
        let value = signed_value(to.rows.get(), &mark);
        to.create(to.mark_key(&mark.gpu), value)?;
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::contract;
    use crate::db::Db;
    use gantry_etcd::testing::EtcdProcess;

    #[test]
    fn etcd_keeps_users_tokens_and_revocations() {
        let Some(etcd) = EtcdProcess::start_or_skip("etcd_keeps_users_tokens") else {
            return;
        };
        let s = EtcdAccounts::new(Arc::new(etcd.client()), "gantry");
        contract::users_tokens_and_revocations(&s);
        contract::gpu_marks(&s);
    }

    /// The same, its rows authenticated as under a key file.
    #[test]
    fn etcd_with_authenticated_rows_keeps_users_tokens_and_revocations() {
        let Some(etcd) = EtcdProcess::start_or_skip("etcd_with_authenticated_rows") else {
            return;
        };
        let s = EtcdAccounts::new(Arc::new(etcd.client()), "gantry");
        s.authenticate_rows(&[5; 32]);
        contract::users_tokens_and_revocations(&s);
    }

    /// Under a key file the accounts in etcd are authenticated too: a user or token changed
    /// there by a writer of etcd without the key file (roles raised, a revocation taken back)
    /// is refused, naming its key; those written before the key file was in use are refused
    /// until authenticated, as asked (`gantry up --authenticate-etcd-rows`).
    #[test]
    fn accounts_in_etcd_changed_outside_gantry_are_refused_under_a_key_file() {
        let Some(etcd) = EtcdProcess::start_or_skip("accounts_in_etcd_changed") else {
            return;
        };
        let client = Arc::new(etcd.client());
        // Fresh stores: no read kept from before a change made behind their back.
        let keyed = |key: u8| {
            let s = EtcdAccounts::new(client.clone(), "gantry");
            s.authenticate_rows(&[key; 32]);
            s
        };
        let refused = |e: StateError, key: &str| {
            let e = e.to_string();
            assert!(e.contains(key) && e.contains("key file"), "{e}");
        };
        let ada = User {
            name: "ada".into(),
            roles: vec!["researcher".into()],
            tenants: vec!["vision".into()],
            clearance: "public".into(),
        };
        let before = EtcdAccounts::new(client.clone(), "gantry");
        before.put_user(&ada).unwrap();
        before
            .put_token("t1", "ada", b"salt", b"hash", None)
            .unwrap();
        refused(keyed(5).token("t1").unwrap_err(), "accounts/tokens/t1");
        assert!(keyed(5).authenticate_unmarked().unwrap() == 2);
        assert_eq!(keyed(5).token("t1").unwrap().unwrap().user, ada);
        assert_eq!(keyed(5).revoke_tokens("ada", None).unwrap(), ["t1"]);
        assert!(keyed(5).token("t1").unwrap().unwrap().revoked_at.is_some());
        assert!(
            before.authenticate_unmarked().is_err(),
            "no key, nothing signed"
        );

        let change = |key: &str, field: &str, to: serde_json::Value| {
            crate::testing::change_in_etcd(&client, &format!("gantry/accounts/{key}"), field, to)
        };
        let roles = change("users/ada", "roles", serde_json::json!(["admin"]));
        refused(keyed(5).user("ada").unwrap_err(), "accounts/users/ada");
        refused(keyed(5).users().unwrap_err(), "accounts/users/ada");
        change("users/ada", "roles", roles);
        keyed(5).user("ada").unwrap();
        change("tokens/t1", "revoked_at", serde_json::Value::Null);
        refused(keyed(5).token("t1").unwrap_err(), "accounts/tokens/t1");
        refused(keyed(5).tokens(None).unwrap_err(), "accounts/tokens/t1");
        // Another key file's replica verifies nothing of this one's.
        refused(keyed(6).users().unwrap_err(), "accounts/users/ada");

        // GPU marks and registered nodes, kept beside the accounts.
        before.set_gpu_health("n1/gpu0", false, "ada").unwrap();
        let node = crate::nodes::RegisteredNode {
            name: "n1".into(),
            rack: "r1".into(),
            gpus: Vec::new(),
            at: 1.5,
        };
        before.register_node(&node).unwrap();
        refused(
            keyed(5).gpu_health().unwrap_err(),
            "gantry/gpu_health/n1/gpu0",
        );
        refused(keyed(5).registered_nodes().unwrap_err(), "gantry/nodes/n1");
        assert_eq!(keyed(5).authenticate_unmarked().unwrap(), 2);
        assert_eq!(keyed(5).registered_nodes().unwrap(), [node]);
        assert!(!keyed(5).gpu_health().unwrap()[0].healthy);
        crate::testing::change_in_etcd(
            &client,
            "gantry/gpu_health/n1/gpu0",
            "healthy",
            true.into(),
        );
        refused(
            keyed(5).gpu_health().unwrap_err(),
            "gantry/gpu_health/n1/gpu0",
        );
        crate::testing::change_in_etcd(&client, "gantry/nodes/n1", "rack", "r9".into());
        refused(keyed(5).registered_nodes().unwrap_err(), "gantry/nodes/n1");
    }

    /// Reads are kept a while, but never past this store's own writes: a token just read (so
    /// kept) and then revoked is refused at once, and a user's new roles hold at once.
    #[test]
    fn a_kept_read_never_outlives_a_write() {
        let Some(etcd) = EtcdProcess::start_or_skip("a_kept_read_never_outlives_a_write") else {
            return;
        };
        let s = EtcdAccounts::new(Arc::new(etcd.client()), "gantry");
        s.put_user(&contract::user("ada", &["researcher"])).unwrap();
        s.put_token("t1", "ada", b"salt", b"hash", None).unwrap();
        for _ in 0..2 {
            assert_eq!(s.token("t1").unwrap().unwrap().revoked_at, None);
        }
        assert_eq!(s.cache().reads.len(), 2, "the token and its user are kept");
        assert_eq!(s.revoke_tokens("ada", None).unwrap(), vec!["t1"]);
        assert!(s.token("t1").unwrap().unwrap().revoked_at.is_some());
        s.put_user(&contract::user("ada", &["researcher", "runner"]))
            .unwrap();
        assert_eq!(s.user("ada").unwrap().unwrap().roles.len(), 2);
        // Reads of unknown tokens fill the cache no further than its bound.
        for i in 0..MAX_CACHED + 10 {
            assert!(s.token(&format!("x{i}")).unwrap().is_none());
        }
        assert!(s.cache().reads.len() <= MAX_CACHED);
    }

    /// The first leader copies its data directory's accounts in once; a revocation made in
    /// etcd afterwards is never undone by a replica's older copy.
    #[test]
    fn accounts_are_seeded_once_and_a_revocation_is_never_undone() {
        let Some(etcd) = EtcdProcess::start_or_skip("accounts_are_seeded_once") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("g.db")).unwrap();
        db.put_user(&contract::user("ada", &["researcher"]))
            .unwrap();
        let issued = crate::auth::issue_for(&db, "ada", None).unwrap();
        db.set_setting(crate::auth::TTL_SETTING, "7200").unwrap();
        db.set_gpu_health("n/gpu3", false, "grace").unwrap();
        let s = EtcdAccounts::new(Arc::new(etcd.client()), "gantry");
        assert_eq!(
            seed(&db, &s).unwrap(),
            Some(Seeded {
                users: 1,
                tokens: 1
            })
        );
        let ada = crate::auth::check(&s, &issued.token).unwrap().unwrap();
        assert_eq!(ada.name, "ada");
        assert_eq!(s.token_ttl().unwrap().as_deref(), Some("7200"));
        let marks = GpuMarks::gpu_health(&s).unwrap();
        assert_eq!((marks[0].gpu.as_str(), marks[0].healthy), ("n/gpu3", false));
        s.revoke_tokens("ada", None).unwrap();
        assert_eq!(seed(&db, &s).unwrap(), None, "seeded once");
        assert_eq!(crate::auth::check(&s, &issued.token).unwrap(), None);
        assert!(crate::auth::check(&db, &issued.token).unwrap().is_some());
    }

    #[test]
    fn a_token_that_does_not_read_is_an_error_naming_its_key() {
        let Some(etcd) = EtcdProcess::start_or_skip("a_token_that_does_not_read") else {
            return;
        };
        let client = Arc::new(etcd.client());
        let s = EtcdAccounts::new(client.clone(), "gantry");
        s.put_user(&contract::user("ada", &[])).unwrap();
        client
            .put(b"gantry/accounts/tokens/t1", b"{\"user\": 7}", 0)
            .unwrap();
        let e = s.token("t1").unwrap_err().to_string();
        assert!(e.contains("gantry/accounts/tokens/t1"), "{e}");
    }
}
