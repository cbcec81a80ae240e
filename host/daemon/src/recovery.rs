//! The way back from a detected corruption: an online backup of the database and its restore,
//! and the replacement of an audit log that no longer verifies by a new one that names it.
//!
//! Both keep the damaged file as evidence (renamed `<name>.damaged-<unix ms>`, never deleted),
//! run under the data directory's lock, and are recorded in the audit log. The procedures are in
//! README.md, "Recovering a data directory".

use std::path::{Path, PathBuf};

use serde::Serialize;

use gantry::audit::{AuditLog, Head};
use gantry::storage::Store;

use super::datadir::{DataDir, DataDirError, audit_path};
use super::db::Db;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |error| DataDirError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// `name.damaged-<unix ms>` beside `path`.
fn aside(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    path.with_file_name(format!(
        "{name}.damaged-{}",
        (super::db::now() * 1000.0) as u64
    ))
}

/// Copies the database of data directory `root` to `out` (a new file, mode 0600) with SQLite's
/// `VACUUM INTO`: a consistent snapshot, taken while the daemon runs (it only reads). The copy is
/// checked before this returns. Returns the rows it holds.
pub fn backup_db(root: &Path, out: &Path) -> Result<u64, DataDirError> {
    if out.exists() {
        return Err(DataDirError::Refused(format!(
            "{}: exists; a backup is written to a new file",
            out.display()
        )));
    }
    let db = Db::open_existing(&super::db_path(root))?;
    // Created empty and private first: SQLite writes into an empty file, keeping its mode.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(out).map_err(io(out))?;
    let done = db.vacuum_into(out).and_then(|()| Db::open(out)?.check());
    match done {
        Ok(rows) => Ok(rows),
        Err(e) => {
            let _ = std::fs::remove_file(out);
            Err(e.into())
        }
    }
}

/// What [`restore_db`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    /// Where the database it replaced now is.
    pub damaged: PathBuf,
    /// Rows in the restored database.
    pub rows: u64,
    /// Changes to users and tokens the audit log holds, made again ([`replay_accounts`]).
    pub replayed: u64,
    /// Users the log records that no longer pass the checks of a user (a node identity with
    /// another role, say), left as the backup has them: each needs an admin's look.
    pub skipped: Vec<String>,
    /// The backup's rows without a MAC that were authenticated, as asked ([`Adopt::Unmarked`]).
    pub authenticated: usize,
}

/// What a restore under a key file does with a backup's rows that carry no MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopt {
    /// Refuses the backup (a row without a MAC may have been written by anyone).
    Nothing,
    /// Authenticates them, as `gantry key seal` does a directory's: for a backup the operator
    /// trusts that was made before its rows were authenticated (an earlier version, or before
    /// the key file). A row whose MAC does not verify is refused all the same.
    Unmarked,
}

/// Replaces the database of data directory `root` by the backup `from` (checked first), keeping
/// the one it replaces (with its WAL and shared-memory files) beside it as evidence. Jobs,
/// users and tokens written after the backup are lost; objects are not, but for the checkpoints
/// a job replaced since (a job keeps its newest alone): a job whose recorded checkpoint is gone
/// starts from the beginning, its log saying so. The audit log's sealed position is taken from the log itself (verified with the host's
/// key), since the backup's is older. Recorded in the audit log as `db.restored`.
pub fn restore_db(root: &Path, from: &Path, adopt: Adopt) -> Result<Restored, DataDirError> {
    let store = Store::open_exclusive(root, "gantry db restore")?;
    let target = super::db_path(root);
    let incoming = gantry::durable::temporary_beside(&target);
    std::fs::copy(from, &incoming).map_err(io(from))?;
    // On disk before it is renamed into place: a power loss must not leave a torn database.
    std::fs::File::open(&incoming)
        .and_then(|f| f.sync_all())
        .map_err(io(&incoming))?;
    // Its rows authenticated as the directory's are: under a key file, a backup's users,
    // tokens, jobs and datasets must carry their MACs (what replaying the audit log writes does).
    let rows_key = gantry::storage::rows_key(root)?;
    let checked = Db::open(&incoming).and_then(|db| {
        let mut authenticated = 0;
        if let Some(key) = &rows_key {
            db.authenticate_rows(key);
            if adopt == Adopt::Unmarked {
                authenticated = db.authenticate_unmarked_rows()?;
            }
        }
        let rows = db.check()?;
        Ok((db, rows, authenticated))
    });
    let (db, rows, authenticated) = match checked {
        Ok(c) => c,
        Err(source) => {
            let _ = std::fs::remove_file(&incoming);
            let hint = match source.unauthenticated() {
                true => {
                    "\n(a backup made before its rows were authenticated, by an earlier version or \
                     before the key file, and trusted: `gantry db restore --authenticate-rows` \
                     authenticates its rows without a MAC, as `gantry key seal` does)"
                }
                false => "",
            };
            return Err(DataDirError::Refused(format!(
                "{}: not a usable backup: {source}{hint}",
                from.display()
            )));
        }
    };
    // The log is ahead of any backup: take its sealed position (it must verify, with our key),
    // and make again what it says was done to users and tokens since the backup's position.
    let key = gantry::storage::host_key(root)?;
    let public = gantry::keys::public_hex(&key);
    let log = audit_path(root);
    let mut replayed = (0, Vec::new());
    if log.exists() {
        let replay = gantry::audit::examine(&log, &public, &Default::default())
            .map_err(|source| DataDirError::DamagedAudit { source })
            .and_then(|report| {
                replayed = replay_accounts(&db, &log)?;
                if let Some(head) = report.head {
                    db.reset_audit_head(&head, false)?;
                }
                Ok(())
            });
        if let Err(e) = replay {
            drop(db);
            let _ = std::fs::remove_file(&incoming);
            return Err(e);
        }
    }
    let (replayed, skipped) = replayed;
    drop(db);
    let damaged = aside(&target);
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", target.display()));
        let to = PathBuf::from(format!("{}{suffix}", damaged.display()));
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&from)(e)),
        }
    }
    std::fs::rename(&incoming, &target).map_err(io(&target))?;
    gantry::durable::sync_dir(root).map_err(io(root))?;
    let dir = DataDir::open_with(store, "gantry db restore")?;
    dir.record(
        "db.restored",
        serde_json::json!({"backup": from.display().to_string(),
                           "damaged": damaged.display().to_string(), "rows": rows,
                           "replayed": replayed, "skipped": skipped,
                           "authenticated": authenticated, "by": dir.actor()}),
    )?;
    dir.close()?;
    Ok(Restored {
        damaged,
        rows,
        replayed,
        skipped,
        authenticated,
    })
}

/// Makes again in `db` (a restored backup) the changes to users and tokens that the verified
/// audit log at `log` records, all of them, in order: a revocation (`user.revoke`), a user's
/// roles, tenants and clearance (`user.add`), the tokens' default lifetime (`token.ttl`). Each
/// sets a value, so making again those the backup already holds changes nothing, and the
/// whole log is read rather than what follows the backup's position, which may not be in this
/// log (one started by `gantry audit recover` counts from 1 again). A restore went back on
/// every such change made since the backup: a revoked token worked again (found by a review).
/// Tokens issued since are not brought back (the log keeps their ids, never the tokens): their
/// users need new ones. Returns how many changes were made again, and the users whose record
/// no longer passes [`crate::accounts::check_user`] (left as the backup has them).
fn replay_accounts(db: &Db, log: &Path) -> Result<(u64, Vec<String>), DataDirError> {
    use std::io::BufRead;
    let file = std::fs::File::open(log).map_err(io(log))?;
    let (mut replayed, mut skipped) = (0, Vec::new());
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(io(log))?;
        // Verified just before: a line that does not parse is none of these changes.
        let Ok(entry) = serde_json::from_str::<gantry::audit::Entry>(&line) else {
            continue;
        };
        let Some(record) = entry.record else {
            continue;
        };
        let text = |field: &str| record[field].as_str().map(str::to_string);
        let list = |field: &str| -> Vec<String> {
            record[field]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        match entry.kind.as_str() {
            "user.revoke" => {
                let Some(user) = text("user") else { continue };
                for token in list("tokens") {
                    db.revoke_tokens(&user, Some(&token))?;
                }
            }
            "user.add" => {
                let (Some(name), Some(clearance)) = (text("user"), text("clearance")) else {
                    continue;
                };
                let user = crate::db::User {
                    name,
                    roles: list("roles"),
                    tenants: list("tenants"),
                    clearance,
                };
                if crate::accounts::check_user(&user).is_err() {
                    if !skipped.contains(&user.name) {
                        skipped.push(user.name);
                    }
                    continue;
                }
                db.put_user(&user)?;
            }
            "token.ttl" => {
                let seconds = record["seconds"].as_f64();
                crate::auth::set_default_ttl(db, seconds)?;
            }
            _ => continue,
        }
        replayed += 1;
    }
    Ok((replayed, skipped))
}

/// What [`recover_audit_log`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Recovered {
    /// Where the damaged log now is (none when the log was missing).
    pub damaged: Option<PathBuf>,
    /// The last position of the damaged log that verified (a signed checkpoint), if any.
    pub last_verified: Option<Head>,
    /// Entries of it that verified.
    pub verified_entries: u64,
    /// What was wrong with it.
    pub problem: String,
    /// The new log's sealed position (also recorded in the database).
    pub head: Head,
}

/// Replaces the audit log of data directory `root`, which does not verify or is not where the
/// database says it was sealed, by a new log whose first entry (`audit.recovered`, signed by the
/// next checkpoint) names the damaged log, its SHA-256, its last verified position and what was
/// wrong; the damaged log is kept beside it. Refused when the log is fine.
pub fn recover_audit_log(root: &Path, reason: &str) -> Result<Recovered, DataDirError> {
    let store = Store::open_exclusive(root, "gantry audit recover")?;
    let db = super::datadir::open_db(root)?;
    db.check().map_err(super::datadir::damaged)?;
    let key = gantry::storage::host_key(root)?;
    let public = gantry::keys::public_hex(&key);
    let log = audit_path(root);
    let (head, closed) = db.audit_head()?;
    let expected = gantry::audit::Expected {
        head: head.clone(),
        closed,
    };
    let problem = match gantry::audit::examine(&log, &public, &expected) {
        Ok(_) => {
            return Err(DataDirError::Refused(format!(
                "{}: verifies with the host's key and holds the sealed position the database \
                 records; nothing to recover",
                log.display()
            )));
        }
        // The log is the newer of the two: setting it aside would run on the older database.
        Err(e @ gantry::audit::AuditError::RecordBehind { .. }) => {
            return Err(DataDirError::Refused(format!(
                "{e}; nothing of the log's to recover"
            )));
        }
        Err(e) => e.to_string(),
    };
    let (prefix, _) = if log.exists() {
        gantry::audit::last_verified(&log, &public)
    } else {
        (Default::default(), None)
    };
    let damaged = aside(&log);
    let (digest, kept) = if log.exists() {
        let d = sha256_file(&log)?;
        std::fs::rename(&log, &damaged).map_err(io(&log))?;
        gantry::durable::sync_dir(root).map_err(io(root))?;
        let name = damaged
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        (Some(d), name)
    } else {
        (None, None)
    };
    let fresh = AuditLog::open(&log, key)?;
    fresh.append(
        "audit.recovered",
        serde_json::json!({
            "damaged_log": kept,
            "damaged_sha256": digest,
            "last_verified": prefix.head.as_ref().map(Head::to_string),
            "verified_entries": prefix.entries,
            "recorded_head": head.as_ref().map(Head::to_string),
            "problem": problem,
            "reason": reason,
            "by": {"command": "gantry audit recover", "pid": std::process::id()},
        }),
    )?;
    fresh.close()?;
    let new_head = fresh.head().expect("closed with a checkpoint");
    db.reset_audit_head(&new_head, true)?;
    drop(store);
    Ok(Recovered {
        damaged: kept.map(|_| damaged),
        last_verified: prefix.head,
        verified_entries: prefix.entries,
        problem,
        head: new_head,
    })
}

fn sha256_file(path: &Path) -> Result<String, DataDirError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(gantry::plugin::cache::hex(ctx.finish().as_ref()))
}
