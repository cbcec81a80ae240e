//! `gantry audit keygen|verify|recover`: the host's signing key, checking an audit log, and
//! replacing one that no longer verifies.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use gantry::audit::{Head, VerifyOptions};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Create an Ed25519 key (PKCS#8, mode 0600) for signing audit checkpoints; prints the
    /// public key to pin with `audit verify --key`.
    Keygen {
        /// Where to write the private key.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Check an audit log: chain, order, checkpoint signatures, runs between checkpoints, and a
    /// signed checkpoint at the end. Names the first bad line; exit 1. With `--data-dir`, the
    /// data directory's log, pinned to its host key and to the sealed position its database
    /// records (a live daemon's log: `GET /v1/audit/verify`).
    Verify {
        /// The log (default with --data-dir: its audit.log).
        #[arg(required_unless_present = "data_dir")]
        log: Option<PathBuf>,
        /// The hex public key the checkpoints must be signed with (default: the data
        /// directory's host key, else the first checkpoint's key, printed so it can be compared).
        #[arg(long)]
        key: Option<String>,
        /// A sealed position anchored elsewhere (`GET /v1/audit/head`), SEQ:HASH: the log must
        /// hold that exact checkpoint (a log cut back before it fails).
        #[arg(long, value_name = "SEQ:HASH")]
        head: Option<Head>,
        /// A data directory: its log, its host key and its database's sealed position.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Replace a data directory's audit log that no longer verifies (or is not where its
    /// database says it was sealed) by a new log whose first, signed entry names the damaged one
    /// (kept beside it as evidence) and its last verified position. Offline (the directory's
    /// lock); refused when the log is fine.
    Recover {
        #[command(flatten)]
        dir: super::store::DataDir,
        /// Why, in the operator's words (recorded in the new log).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Keygen { output } => {
            if output.exists() {
                anyhow::bail!("{}: exists; refusing to overwrite a key", output.display());
            }
            let key = gantry::keys::generate(&output)?;
            println!("{}", gantry::keys::public_hex(&key));
            Ok(())
        }
        AuditCommand::Verify {
            log,
            key,
            head,
            data_dir,
            json,
        } => verify(log, key, head, data_dir, json),
        AuditCommand::Recover { dir, reason } => {
            let r = gantry_daemon::recovery::recover_audit_log(&dir.path()?, &reason)?;
            println!(
                "the damaged log is kept as {} ({}; {} entries verified, last verified position {}); \
                 a new log starts at {}",
                r.damaged
                    .as_ref()
                    .map_or("(none: it was missing)".into(), |d| d.display().to_string()),
                r.problem,
                r.verified_entries,
                r.last_verified
                    .as_ref()
                    .map_or("none".to_string(), Head::to_string),
                r.head
            );
            Ok(())
        }
    }
}

fn verify(
    log: Option<PathBuf>,
    mut key: Option<String>,
    mut head: Option<Head>,
    data_dir: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let mut path = log;
    let mut closed = false;
    if let Some(root) = &data_dir {
        path.get_or_insert_with(|| gantry_daemon::datadir::audit_path(root));
        // Its settings checked under the key file: the recorded key is one of them.
        let db = gantry_daemon::datadir::open_db(root)?;
        if key.is_none() {
            // The key recorded when the log was first written, else the host key's.
            key = match db.setting(gantry_daemon::datadir::AUDIT_KEY)? {
                Some(k) => Some(k),
                None => {
                    let host = gantry::keys::load(&root.join("keys/host.pk8"))?;
                    Some(gantry::keys::public_hex(&host))
                }
            };
        }
        if head.is_none() {
            (head, closed) = db.audit_head()?;
        }
    }
    let log = path.context("no log given")?;
    if let (Some(_), Some(key)) = (&data_dir, &key) {
        // What a daemon's start checks too (a review's rolled-back database passed here and
        // stopped the daemon): nothing follows a clean close, unless the log's own key sealed it.
        let expected = gantry::audit::Expected {
            head: head.clone(),
            closed,
        };
        gantry::audit::examine(&log, key, &expected)?;
    }
    let options = VerifyOptions {
        key: key.as_deref(),
        head: head.as_ref(),
        ..VerifyOptions::default()
    };
    let report = gantry::audit::verify_with(&log, &options)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{}: {} entries verified, {} signed checkpoints, ending sealed at {}; key {}{}",
            log.display(),
            report.entries,
            report.checkpoints,
            report
                .head
                .as_ref()
                .map_or("(empty)".to_string(), Head::to_string),
            report.key.as_deref().unwrap_or("(none)"),
            head.map(|h| format!("; holds the sealed position {h}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
