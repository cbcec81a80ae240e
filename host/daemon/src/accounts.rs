//! Who may act: users, their tokens (salted hashes only) and the default lifetime of new
//! tokens, as a trait. One daemon keeps them in its data directory's SQLite ([`Db`]); a
//! replicated control plane keeps them in etcd ([`crate::etcdaccounts`]), so that a user added
//! or a token revoked through one leader holds for the next. [`crate::auth`] issues and checks
//! tokens through it.

use crate::db::{Db, GpuHealth, StoredToken, TokenInfo, User};
use crate::jobstore::StateError;

/// The daemon's accounts, in whichever store keeps them.
pub type Accounts = std::sync::Arc<dyn AccountStore>;

/// The admins' GPU marks, in whichever store keeps them.
pub type Marks = std::sync::Arc<dyn GpuMarks>;

/// What changes the cluster at run time, kept where the accounts are so that a new leader
/// (or a restart) keeps it: GPUs an admin took out of service or put back
/// (`POST /v1/gpus/unhealthy|healthy`), and nodes that registered through their agents.
pub trait GpuMarks: Send + Sync {
    /// Records GPU `gpu`'s health, as set by `by`.
    fn set_gpu_health(&self, gpu: &str, healthy: bool, by: &str) -> Result<(), StateError>;

    /// Every GPU health an admin set, by GPU id.
    fn gpu_health(&self) -> Result<Vec<GpuHealth>, StateError>;

    /// Registers `node` (not in the cluster file; as its agent first reported it), unless a
    /// node of its name is registered already: the first registration holds.
    fn register_node(&self, node: &crate::nodes::RegisteredNode) -> Result<(), StateError>;

    /// Replaces the record of registered node `node.name`: its agent registered it again with
    /// other GPUs or another rack.
    fn register_node_again(&self, node: &crate::nodes::RegisteredNode) -> Result<(), StateError>;

    /// Forgets registered node `name` (an admin removed it); nothing when it is not registered.
    fn forget_node(&self, name: &str) -> Result<(), StateError>;

    /// The registered nodes, by name.
    fn registered_nodes(&self) -> Result<Vec<crate::nodes::RegisteredNode>, StateError>;
}

impl GpuMarks for Db {
    fn set_gpu_health(&self, gpu: &str, healthy: bool, by: &str) -> Result<(), StateError> {
        Ok(Db::set_gpu_health(self, gpu, healthy, by)?)
    }
    fn gpu_health(&self) -> Result<Vec<GpuHealth>, StateError> {
        Ok(Db::gpu_health(self)?)
    }
    fn register_node(&self, node: &crate::nodes::RegisteredNode) -> Result<(), StateError> {
        Ok(Db::register_node(self, node)?)
    }
    fn register_node_again(&self, node: &crate::nodes::RegisteredNode) -> Result<(), StateError> {
        Ok(Db::register_node_again(self, node)?)
    }
    fn forget_node(&self, name: &str) -> Result<(), StateError> {
        Db::forget_node(self, name)?;
        Ok(())
    }
    fn registered_nodes(&self) -> Result<Vec<crate::nodes::RegisteredNode>, StateError> {
        Ok(Db::registered_nodes(self)?)
    }
}

/// A store of users and tokens.
pub trait AccountStore: Send + Sync {
    /// Every user, by name.
    fn users(&self) -> Result<Vec<User>, StateError>;

    /// The user called `name`.
    fn user(&self, name: &str) -> Result<Option<User>, StateError>;

    /// Adds (or replaces) a user.
    fn put_user(&self, user: &User) -> Result<(), StateError>;

    /// Stores a new token's salted hash for `user` (who must exist), refused after
    /// `expires_at` (Unix seconds).
    fn put_token(
        &self,
        id: &str,
        user: &str,
        salt: &[u8],
        hash: &[u8],
        expires_at: Option<f64>,
    ) -> Result<(), StateError>;

    /// A token's salt, hash, user, expiry and revocation; `None` for an unknown id (or a
    /// token whose user is gone).
    fn token(&self, id: &str) -> Result<Option<StoredToken>, StateError>;

    /// The tokens of `user` (every user's with `None`), oldest first.
    fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenInfo>, StateError>;

    /// Revokes every live token of `user` (or, with `token`, that one of theirs); returns the
    /// ids revoked.
    fn revoke_tokens(&self, user: &str, token: Option<&str>) -> Result<Vec<String>, StateError>;

    /// The default lifetime of new tokens as stored (seconds, or `never`); `None` when unset.
    fn token_ttl(&self) -> Result<Option<String>, StateError>;

    /// Stores the default lifetime of new tokens (seconds, or `never`).
    fn set_token_ttl(&self, value: &str) -> Result<(), StateError>;
}

impl AccountStore for Db {
    fn users(&self) -> Result<Vec<User>, StateError> {
        Ok(Db::users(self)?)
    }
    fn user(&self, name: &str) -> Result<Option<User>, StateError> {
        Ok(Db::user(self, name)?)
    }
    fn put_user(&self, user: &User) -> Result<(), StateError> {
        Ok(Db::put_user(self, user)?)
    }
    fn put_token(
        &self,
        id: &str,
        user: &str,
        salt: &[u8],
        hash: &[u8],
        expires_at: Option<f64>,
    ) -> Result<(), StateError> {
        Ok(Db::put_token(self, id, user, salt, hash, expires_at)?)
    }
    fn token(&self, id: &str) -> Result<Option<StoredToken>, StateError> {
        Ok(Db::token(self, id)?)
    }
    fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenInfo>, StateError> {
        Ok(Db::tokens(self, user)?)
    }
    fn revoke_tokens(&self, user: &str, token: Option<&str>) -> Result<Vec<String>, StateError> {
        Ok(Db::revoke_tokens(self, user, token)?)
    }
    fn token_ttl(&self) -> Result<Option<String>, StateError> {
        Ok(self.setting(crate::auth::TTL_SETTING)?)
    }
    fn set_token_ttl(&self, value: &str) -> Result<(), StateError> {
        Ok(self.set_setting(crate::auth::TTL_SETTING, value)?)
    }
}

/// The most roles or tenants a user may have.
pub const MAX_LIST: usize = 64;

/// Whether `user` is a node's identity (the `node` role).
pub fn is_node(user: &User) -> bool {
    user.roles.iter().any(|r| r == "node")
}

/// Whether `user` may replace `existing` (the user of that name, if any): a node identity
/// stays one, and no person becomes one by an update (replacing the roles of `gantry up`'s own
/// node identity took its GPUs out of service and the daemon then refused to start; a person
/// made a node kept their token, which then spoke for a node). Every path that stores a user
/// checks it: the API, and `gantry user add` on a stopped daemon's directory.
pub fn check_update(existing: Option<&User>, user: &User) -> Result<(), String> {
    match existing {
        Some(existing) if is_node(existing) != is_node(user) => Err(format!(
            "user `{}` {} a node identity: an update keeps it so (a node's roles are `node` \
             alone; give a person or a node a name of its own)",
            user.name,
            if is_node(existing) { "is" } else { "is not" }
        )),
        _ => Ok(()),
    }
}

/// Whether `user` may be stored: a name of 1-64 letters, digits, `-`, `_` and `.` (not
/// starting with `.`), and roles, tenants and clearance of the same kind, at most
/// [`MAX_LIST`] of each; a node identity's roles are `node` alone (`gantry up` refuses its
/// own node identity with any other role: `node` and `admin` together stopped the next
/// start). The error names the field.
pub fn check_user(user: &User) -> Result<(), String> {
    if is_node(user) && user.roles != ["node"] {
        return Err(format!(
            "field `roles`: a node identity's roles are `node` alone, not {:?}",
            user.roles
        ));
    }
    fn word(field: &str, w: &str) -> Result<(), String> {
        let valid = (1..=64).contains(&w.len())
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !w.starts_with('.');
        if valid {
            Ok(())
        } else {
            Err(format!(
                "{field} `{w}`: 1-64 characters of letters, digits, '-', '_' and '.', not \
                 starting with '.'"
            ))
        }
    }
    word("user name", &user.name)?;
    for (field, list) in [("roles", &user.roles), ("tenants", &user.tenants)] {
        if list.len() > MAX_LIST {
            return Err(format!("{field}: at most {MAX_LIST}, not {}", list.len()));
        }
        for w in list {
            word(field, w)?;
        }
    }
    word("clearance", &user.clearance)
}

/// What [`seed`] copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seeded {
    /// Users copied.
    pub users: usize,
    /// Tokens copied (revoked and expired ones too, as they are).
    pub tokens: usize,
}

/// Checks that every store keeps the same contract (run against SQLite and etcd).
#[cfg(test)]
pub(crate) mod contract {
    use super::*;

    pub(crate) fn user(name: &str, roles: &[&str]) -> User {
        User {
            name: name.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            tenants: vec!["vision".into()],
            clearance: "internal".into(),
        }
    }

    /// Users by name, replaced in place; tokens for existing users only, listed oldest first,
    /// revoked one at a time or all at once, never twice; the default lifetime.
    pub(crate) fn users_tokens_and_revocations(s: &dyn AccountStore) {
        assert_eq!(s.users().unwrap(), vec![]);
        s.put_user(&user("grace", &["admin"])).unwrap();
        s.put_user(&user("ada", &["researcher"])).unwrap();
        s.put_user(&user("ada", &["researcher", "runner"])).unwrap();
        let names: Vec<String> = s.users().unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["ada", "grace"]);
        assert_eq!(
            s.user("ada").unwrap(),
            Some(user("ada", &["researcher", "runner"]))
        );
        assert_eq!(s.user("nobody").unwrap(), None);

        s.put_token("t1", "ada", b"salt1", b"hash1", None).unwrap();
        s.put_token("t2", "ada", b"salt2", b"hash2", Some(4e9))
            .unwrap();
        s.put_token("t3", "grace", b"salt3", b"hash3", None)
            .unwrap();
        assert!(
            s.put_token("t4", "nobody", b"s", b"h", None).is_err(),
            "a token needs a user"
        );
        let t1 = s.token("t1").unwrap().unwrap();
        assert_eq!(
            (
                t1.salt.as_slice(),
                t1.hash.as_slice(),
                t1.user.name.as_str()
            ),
            (&b"salt1"[..], &b"hash1"[..], "ada")
        );
        assert_eq!(t1.user.roles, ["researcher", "runner"]);
        assert_eq!((t1.expires_at, t1.revoked_at), (None, None));
        assert_eq!(s.token("t2").unwrap().unwrap().expires_at, Some(4e9));
        assert!(s.token("t9").unwrap().is_none());
        let ids =
            |user| -> Vec<String> { s.tokens(user).unwrap().into_iter().map(|t| t.id).collect() };
        assert_eq!(ids(Some("ada")), ["t1", "t2"]);
        assert_eq!(ids(None), ["t1", "t2", "t3"]);

        assert_eq!(s.revoke_tokens("ada", Some("t2")).unwrap(), ["t2"]);
        assert!(s.revoke_tokens("ada", Some("t2")).unwrap().is_empty());
        assert!(
            s.revoke_tokens("ada", Some("t3")).unwrap().is_empty(),
            "not hers"
        );
        assert!(s.token("t2").unwrap().unwrap().revoked_at.is_some());
        assert_eq!(s.revoke_tokens("ada", None).unwrap(), ["t1"]);
        assert!(s.token("t1").unwrap().unwrap().revoked_at.is_some());
        assert_eq!(s.token("t3").unwrap().unwrap().revoked_at, None);
        let infos = s.tokens(Some("ada")).unwrap();
        assert!(infos.iter().all(|t| t.revoked_at.is_some()), "{infos:?}");

        assert_eq!(s.token_ttl().unwrap(), None);
        s.set_token_ttl("3600").unwrap();
        s.set_token_ttl("never").unwrap();
        assert_eq!(s.token_ttl().unwrap().as_deref(), Some("never"));
    }

    /// Marks by GPU id, the last one of a GPU kept, with who set it.
    pub(crate) fn gpu_marks(s: &dyn GpuMarks) {
        use crate::nodes::{RegisteredGpu, RegisteredNode};
        assert!(s.registered_nodes().unwrap().is_empty());
        let node = |name: &str, gpus: u32| RegisteredNode {
            name: name.into(),
            rack: "r9".into(),
            gpus: (0..gpus)
                .map(|ordinal| RegisteredGpu {
                    ordinal,
                    model: "H200".into(),
                    memory_mib: 141_000,
                    missing: ordinal == 2,
                })
                .collect(),
            at: 1.0,
        };
        s.register_node(&node("node-z", 2)).unwrap();
        s.register_node(&node("node-y", 1)).unwrap();
        s.register_node(&node("node-z", 8)).unwrap();
        assert_eq!(
            s.registered_nodes().unwrap(),
            [node("node-y", 1), node("node-z", 2)],
            "by name; the first registration holds"
        );
        s.register_node_again(&node("node-z", 3)).unwrap();
        assert_eq!(
            s.registered_nodes().unwrap(),
            [node("node-y", 1), node("node-z", 3)],
            "registered again, the record is replaced"
        );
        s.forget_node("node-z").unwrap();
        s.forget_node("node-x").unwrap();
        assert_eq!(s.registered_nodes().unwrap(), [node("node-y", 1)]);
        assert!(s.gpu_health().unwrap().is_empty());
        s.set_gpu_health("n/gpu1", false, "grace").unwrap();
        s.set_gpu_health("n/gpu0", false, "grace").unwrap();
        s.set_gpu_health("n/gpu0", true, "ops").unwrap();
        let marks: Vec<(String, bool, String)> = s
            .gpu_health()
            .unwrap()
            .into_iter()
            .map(|g| (g.gpu, g.healthy, g.by))
            .collect();
        assert_eq!(
            marks,
            [
                ("n/gpu0".into(), true, "ops".into()),
                ("n/gpu1".into(), false, "grace".into())
            ]
        );
    }

    #[test]
    fn sqlite_keeps_users_tokens_and_revocations() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("g.db")).unwrap();
        users_tokens_and_revocations(&db);
        gpu_marks(&db);
    }

    /// The same, its rows authenticated as under a key file.
    #[test]
    fn sqlite_with_authenticated_rows_keeps_users_tokens_and_revocations() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("g.db")).unwrap();
        db.authenticate_rows(&[3; 32]);
        users_tokens_and_revocations(&db);
        db.check().unwrap();
    }
}
