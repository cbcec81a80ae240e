//! `gantry db backup|restore|check`: the daemon's SQLite database, and the way back from a
//! damaged one.

use std::path::PathBuf;

/// `gantry db ...`.
#[derive(Debug, clap::Subcommand)]
pub enum DbCommand {
    /// Copy the database to a new file (mode 0600), consistent while the daemon runs, and check
    /// the copy.
    Backup {
        /// The new file.
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        dir: super::store::DataDir,
    },
    /// Replace the database by a backup (checked first); the one it replaces is kept beside it
    /// as evidence. Offline (the directory's lock); recorded in the audit log.
    Restore {
        /// The backup (`gantry db backup`).
        backup: PathBuf,
        /// Under a key file, authenticate the backup's rows that carry no MAC, as `gantry key
        /// seal` does a directory's: for a backup you trust that was made before its rows were
        /// authenticated (by an earlier version, or before the key file). Without it such a
        /// backup is refused.
        #[arg(long)]
        authenticate_rows: bool,
        #[command(flatten)]
        dir: super::store::DataDir,
    },
    /// Check the database as the daemon does at start (SQLite's integrity check, then every
    /// stored value); exit 1 naming the first bad table, row and column.
    Check {
        #[command(flatten)]
        dir: super::store::DataDir,
    },
}

/// Runs `gantry db ...`.
pub fn run(cmd: DbCommand) -> anyhow::Result<()> {
    match cmd {
        DbCommand::Backup { out, dir } => {
            let rows = gantry_daemon::recovery::backup_db(&dir.path()?, &out)?;
            println!("{}: {rows} rows, checked", out.display());
        }
        DbCommand::Restore {
            backup,
            authenticate_rows,
            dir,
        } => {
            use gantry_daemon::recovery::Adopt;
            let adopt = match authenticate_rows {
                true => Adopt::Unmarked,
                false => Adopt::Nothing,
            };
            let r = gantry_daemon::recovery::restore_db(&dir.path()?, &backup, adopt)?;
            if r.authenticated > 0 {
                println!(
                    "{} row(s) of the backup authenticated, as asked",
                    r.authenticated
                );
            }
            println!(
                "restored {} ({} rows; {} change(s) to users and tokens made again from the \
                 audit log); the database it replaced is kept as {}",
                backup.display(),
                r.rows,
                r.replayed,
                r.damaged.display()
            );
            if !r.skipped.is_empty() {
                eprintln!(
                    "left as the backup has them, their last change no longer being a valid \
                     user (look at each with an admin's eye): {}",
                    r.skipped.join(", ")
                );
            }
        }
        DbCommand::Check { dir } => {
            let root = dir.path()?;
            let path = gantry_daemon::db_path(&root);
            let db = gantry_daemon::datadir::open_db(&root)?;
            let rows = db.check().map_err(gantry_daemon::datadir::damaged)?;
            // What the rows name must be in the store: a review deleted an object and every
            // check passed while reading its dataset answered 500.
            let store = gantry::storage::Store::open(&root)?;
            let named = db.named_objects()?;
            let mut missing: Vec<(String, String)> = named
                .iter()
                .filter(|(_, object)| !store.has(object))
                .cloned()
                .collect();
            if !missing.is_empty() {
                // A daemon beside this may have let some go meanwhile (a checkpoint replaced):
                // only what the rows still name counts.
                let still = db.named_objects()?;
                missing.retain(|m| still.contains(m) && !store.has(&m.1));
            }
            // A job whose checkpoint is gone starts over (what a restore of an older backup
            // leaves, by design): said, not a failure.
            let (gone, missing): (Vec<_>, Vec<_>) = missing
                .into_iter()
                .partition(|(what, _)| what.starts_with("checkpoint of job "));
            for (what, object) in &gone {
                eprintln!(
                    "{what} names object {object}, not in the store: the job starts over from \
                     its first step when it runs again"
                );
            }
            let missing: Vec<String> = missing
                .iter()
                .map(|(what, object)| format!("{what} names object {object}, not in the store"))
                .collect();
            if !missing.is_empty() {
                anyhow::bail!(
                    "{}: {} of the {} objects its rows name are missing:\n  {}\n(restore them \
                     from a backup of the data directory's objects/, or remove what names them)",
                    path.display(),
                    missing.len(),
                    named.len(),
                    missing.join("\n  ")
                );
            }
            println!(
                "{}: {rows} rows, all readable; the {} objects they name are in the store",
                path.display(),
                named.len()
            );
        }
    }
    Ok(())
}
