//! A data directory opened by its one writer (the daemon, or an offline command such as
//! `gantry user add`): locked, swept, made private, its database checked, and its audit log
//! verified against the position sealed in the database before anything is appended.
//!
//! Opening refuses, with what to do, a directory another process holds, a database that fails
//! its integrity check or holds a value this version cannot read, and an audit log that does not
//! verify with the host's own key, is behind the sealed position recorded in the database, or
//! has entries after the position where it was last closed cleanly. A log left unsealed by a
//! crash is sealed (and the sealing recorded in it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gantry::audit::{AuditError, AuditLog, Expected};
use gantry::keys::KeyError;
use gantry::storage::{Store, StoreError};

use super::auth::{self, Issued};
use super::db::{Db, DbError, User};

/// Where the README says how to recover from each refusal.
const RECOVERY: &str = "README.md, \"Recovering a data directory\"";

/// Opening or changing a data directory failed; a refusal at open says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The store: not a data directory, locked by another process, unreadable keys.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database fails its check.
    #[error(
        "{source}\n(a damaged database is not used: restore a backup with `gantry db restore`, or repair the value; see {RECOVERY})"
    )]
    DamagedDb {
        /// The cause.
        source: DbError,
    },
    /// A user or token row does not verify under the key file ([`Db::authenticate_rows`]).
    #[error(
        "{source}\n(under a key file every user, token, job, dataset and settings row carries a MAC: a directory sealed by an earlier version, or whose rows were written before its key file, is authenticated once with `gantry key seal`, run where the directory is trusted; a row changed outside Gantry is put back as it was, or the database restored from a backup with `gantry db restore`; see {RECOVERY})"
    )]
    UnauthenticatedRows {
        /// The cause.
        source: DbError,
    },
    /// A database operation failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Reading or changing users and tokens failed.
    #[error(transparent)]
    State(#[from] crate::jobstore::StateError),
    /// The host's signing key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The audit log does not verify, or is not where the database says it was sealed.
    #[error(
        "{source}\n(an audit log that cannot be vouched for is not continued: keep it as evidence and start a new one with `gantry audit recover`; see {RECOVERY})"
    )]
    DamagedAudit {
        /// The cause.
        source: AuditError,
    },
    /// The database is older than the audit log ([`AuditError::RecordBehind`]): the log is
    /// the one to keep.
    #[error("{source}\n(see {RECOVERY})")]
    OlderDb {
        /// The cause.
        source: AuditError,
    },
    /// Appending to the audit log failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A file's permissions could not be made private.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// The change asked for makes no sense here (an unknown user, say).
    #[error("{0}")]
    Refused(String),
}

/// A data directory held by this process.
pub struct DataDir {
    /// The encrypted store (holding the directory's lock).
    pub store: Store,
    /// Users, tokens, jobs, settings, the audit head.
    pub db: Db,
    /// The audit log, sealing into the database's audit head.
    pub audit: Arc<AuditLog>,
    /// The command holding the directory.
    holder: String,
}

/// What the audit log records of a rotation, made `by` someone.
pub fn rotation_record(r: &gantry::storage::Rotation, by: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"new_master": r.new_master, "rewrapped": r.rewrapped,
                       "retired": r.retired, "unreadable": r.unreadable.len(), "by": by})
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDir")
            .field("root", &self.store.root())
            .finish()
    }
}

/// The setting that marks a data directory as a replica's of a control plane on etcd.
pub const REPLICATED: &str = "control_plane.replicated";

/// Marks the data directory of `db` as a replica's ([`REPLICATED`]), once: for good.
pub fn mark_replicated(db: &Db) -> Result<(), DbError> {
    if db.setting(REPLICATED)?.is_none() {
        db.set_setting(REPLICATED, "1")?;
    }
    Ok(())
}

/// The audit log of a data directory.
pub fn audit_path(root: &Path) -> PathBuf {
    root.join("audit.log")
}

impl DataDir {
    /// Opens the data directory at `root` for `holder` (a command, named in the lock file).
    pub fn open(root: &Path, holder: &str) -> Result<DataDir, DataDirError> {
        Self::open_with(Store::open_exclusive(root, holder)?, holder)
    }

    /// [`DataDir::open`] with the store (and so the lock) already taken.
    pub fn open_with(store: Store, holder: &str) -> Result<DataDir, DataDirError> {
        let root = &store.root().to_path_buf();
        make_private(root)?;
        let db_path = super::db_path(root);
        // Created at a data directory's first opening, never again: one without its database
        // that was used (its audit log is there) lost it (an interrupted restore, a mistake),
        // and an empty database in its place would silently drop every user, job and dataset.
        if !db_path.exists() && audit_path(root).exists() {
            return Err(DbError::Missing {
                path: db_path,
                why: ", but this data directory was used (its audit log is there)".into(),
            }
            .into());
        }
        let db = Db::open(&db_path)?;
        authenticate_rows(&db, root)?;
        let rows = db.check().map_err(damaged)?;
        let key = gantry::storage::host_key(root)?;
        pin_host_key(&db, &gantry::keys::public_hex(&key))?;
        let (head, closed) = db.audit_head()?;
        let audit = AuditLog::open_expecting(&audit_path(root), key, &Expected { head, closed })
            .map_err(|source| match source {
                AuditError::RecordBehind { .. } => DataDirError::OlderDb { source },
                source => DataDirError::DamagedAudit { source },
            })?;
        let opened = audit.opened();
        tracing::info!(
            root = %root.display(),
            rows,
            audit_entries = opened.entries,
            sealed_tail = opened.sealed_tail,
            "data directory checked"
        );
        // The log is open now: not closed cleanly until it is.
        if let Some(head) = audit.head() {
            db.set_audit_head(&head, false)?;
        }
        // A connection of its own: the log seals from whichever thread appends.
        let heads = Db::open_existing(&super::db_path(root))?;
        audit.set_on_seal(Box::new(move |head, closed| {
            if let Err(e) = heads.set_audit_head(head, closed) {
                tracing::error!(error = %e, head = %head, "recording the audit log's sealed position");
            }
        }));
        Ok(DataDir {
            store,
            db,
            audit: Arc::new(audit),
            holder: holder.to_string(),
        })
    }

    /// Who makes this change, as the audit log records an offline one: the command, its
    /// process and the operating-system user.
    pub fn actor(&self) -> serde_json::Value {
        #[cfg(unix)]
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = Some(unsafe { libc::getuid() });
        #[cfg(not(unix))]
        let uid: Option<u32> = None;
        serde_json::json!({"command": self.holder, "pid": std::process::id(), "uid": uid})
    }

    /// Adds (or updates) `user` and issues them a token living `ttl_s` seconds (`None`: the
    /// directory's default); audited as `user.add` (the token's id, never the token).
    pub fn add_user(
        &self,
        user: &User,
        ttl_s: Option<Option<f64>>,
    ) -> Result<Issued, DataDirError> {
        crate::accounts::check_user(user).map_err(DataDirError::Refused)?;
        crate::accounts::check_update(self.db.user(&user.name)?.as_ref(), user)
            .map_err(DataDirError::Refused)?;
        self.db.put_user(user)?;
        let ttl = match ttl_s {
            Some(t) => t,
            None => auth::default_ttl(&self.db)?,
        };
        let issued = auth::issue_for(&self.db, &user.name, ttl)?;
        self.record(
            "user.add",
            serde_json::json!({"user": user.name, "roles": user.roles, "tenants": user.tenants,
                               "clearance": user.clearance, "token": issued.id,
                               "expires_at": issued.expires_at, "by": self.actor()}),
        )?;
        Ok(issued)
    }

    /// Issues another token for existing user `name`; audited as `token.issue`.
    pub fn issue_token(
        &self,
        name: &str,
        ttl_s: Option<Option<f64>>,
    ) -> Result<Issued, DataDirError> {
        if self.db.user(name)?.is_none() {
            return Err(DataDirError::Refused(format!("no user `{name}`")));
        }
        let ttl = match ttl_s {
            Some(t) => t,
            None => auth::default_ttl(&self.db)?,
        };
        let issued = auth::issue_for(&self.db, name, ttl)?;
        self.record(
            "token.issue",
            serde_json::json!({"user": name, "token": issued.id,
                               "expires_at": issued.expires_at, "by": self.actor()}),
        )?;
        Ok(issued)
    }

    /// Revokes every live token of user `name` (or only `token`); audited as `user.revoke`.
    /// Returns the ids revoked.
    pub fn revoke(&self, name: &str, token: Option<&str>) -> Result<Vec<String>, DataDirError> {
        let revoked = auth::revoke(&self.db, name, token).map_err(|e| match e {
            auth::RevokeError::Store(e) => DataDirError::State(e),
            refused => DataDirError::Refused(refused.to_string()),
        })?;
        self.record(
            "user.revoke",
            serde_json::json!({"user": name, "tokens": revoked, "by": self.actor()}),
        )?;
        Ok(revoked)
    }

    /// Sets the default lifetime of new tokens (`None`: they do not expire); audited.
    pub fn set_token_ttl(&self, ttl_s: Option<f64>) -> Result<(), DataDirError> {
        auth::set_default_ttl(&self.db, ttl_s)?;
        self.record(
            "token.ttl",
            serde_json::json!({"seconds": ttl_s, "by": self.actor()}),
        )?;
        Ok(())
    }

    /// Rotates the master key ([`Store::rotate`]); audited as `key.rotate`.
    pub fn rotate_key(&self) -> Result<gantry::storage::Rotation, DataDirError> {
        // Offline too, not only through the API: what the replicas keep in etcd is wrapped by
        // this key, which rotation retires (a rotated copy of a replica's directory could no
        // longer read a dataset another replica had uploaded).
        if self.db.setting(REPLICATED)?.is_some() {
            return Err(DataDirError::Refused(
                "this data directory is a replica's of a control plane on etcd: its master key \
                 is shared with the other replicas' and seals what they keep in etcd, so it is \
                 not rotated (a new key would be in this directory alone)"
                    .into(),
            ));
        }
        let r = self.store.rotate()?;
        self.record("key.rotate", rotation_record(&r, self.actor()))?;
        Ok(r)
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        self.store.root()
    }

    /// Appends an event to the audit log.
    pub fn record(&self, kind: &str, record: serde_json::Value) -> Result<u64, AuditError> {
        self.audit.append(kind, record)
    }

    /// Seals and closes the audit log (recording the clean close in the database) and releases
    /// the directory.
    pub fn close(self) -> Result<(), AuditError> {
        self.audit.close()
    }
}

/// The refusal of a database whose check failed with `source`: one whose rows do not verify
/// under the key file says how to authenticate them.
pub fn damaged(source: DbError) -> DataDirError {
    match source.unauthenticated() {
        true => DataDirError::UnauthenticatedRows { source },
        false => DataDirError::DamagedDb { source },
    }
}

/// Authenticates `db`'s rows under the key file, where one is in use for the data
/// directory at `root` ([`Db::authenticate_rows`]).
fn authenticate_rows(db: &Db, root: &Path) -> Result<(), DataDirError> {
    if let Some(key) = gantry::storage::rows_key(root)? {
        db.authenticate_rows(&key);
    }
    Ok(())
}

/// The database of the data directory at `root`, which must exist, opened to be read (by
/// `gantry db check`, `gantry user tokens`): its rows checked where a key file is in use.
pub fn open_db(root: &Path) -> Result<Db, DataDirError> {
    let db = Db::open_existing(&super::db_path(root))?;
    authenticate_rows(&db, root)?;
    Ok(db)
}

/// Seals the data directory at `root` under the key file `GANTRY_KEY_FILE` names, as `holder`:
/// its master keys and signing key ([`gantry::storage::seal_master_keys`]), then its rows
/// (users, tokens, jobs, datasets, settings), each given its MAC (those there are are taken as they are: run it where the directory
/// is trusted). Audited as `key.seal`. Returns the keys sealed and the rows authenticated.
pub fn seal(root: &Path, holder: &str) -> Result<(usize, usize), DataDirError> {
    let keys = gantry::storage::seal_master_keys(root, holder)?;
    let store = Store::open_exclusive(root, holder)?;
    let rows = match super::db_path(root).exists() {
        true => open_db(root)?.authenticate_unmarked_rows()?,
        false => 0,
    };
    let dir = DataDir::open_with(store, holder)?;
    let by = dir.actor();
    dir.record(
        "key.seal",
        serde_json::json!({"keys": keys, "rows": rows, "by": by}),
    )?;
    dir.close()?;
    Ok((keys, rows))
}

/// The settings key holding the public key that signs this directory's audit log, recorded the
/// first time a writer opens it.
pub const AUDIT_KEY: &str = "audit.key";

/// Records `public` (hex) as the key that signs the audit log, or checks it is the one recorded:
/// a replaced `keys/host.pk8` cannot sign over the log.
fn pin_host_key(db: &Db, public: &str) -> Result<(), DataDirError> {
    match db.setting(AUDIT_KEY)? {
        None => db.set_setting(AUDIT_KEY, public)?,
        Some(recorded) if recorded == public => {}
        Some(recorded) => {
            return Err(DataDirError::Refused(format!(
                "keys/host.pk8 holds the public key {public}, but this directory's audit log is \
                 signed by {recorded} (recorded in its database): the host key was replaced; put \
                 the original keys/host.pk8 back"
            )));
        }
    }
    Ok(())
}

/// Makes the directory owner-only (0700), and its database and audit log files 0600 (created so
/// by this version; tightened here for directories made before).
pub fn make_private(root: &Path) -> Result<(), DataDirError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let set = |path: &Path, mode: u32| -> Result<(), DataDirError> {
            match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(error) => Err(DataDirError::Io {
                    path: path.to_path_buf(),
                    error,
                }),
            }
        };
        set(root, 0o700)?;
        for dir in ["keys", "objects"] {
            set(&root.join(dir), 0o700)?;
        }
        let db = super::db_path(root);
        for file in [
            db.clone(),
            db.with_extension("db-wal"),
            db.with_extension("db-shm"),
            audit_path(root),
        ] {
            set(&file, 0o600)?;
        }
        // Every key file too (master keys, the host's signing key, which key is current): a
        // copy or an editor may have left one readable by others.
        let keys = root.join("keys");
        let entries = match std::fs::read_dir(&keys) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(DataDirError::Io { path: keys, error }),
        };
        for entry in entries {
            let entry = entry.map_err(|error| DataDirError::Io {
                path: keys.clone(),
                error,
            })?;
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                set(&entry.path(), 0o600)?;
            }
        }
    }
    Ok(())
}

/// The bytes an unprivileged writer may still use on the file system holding `dir`, where the
/// system says.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `stat` is a valid statvfs for the call to fill; `path` is NUL-terminated.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stat) != 0 {
            return None;
        }
        Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
    }
}
