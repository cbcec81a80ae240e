//! `gantry audit keygen|verify`: the host's signing key, and checking an audit log.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Create an Ed25519 key (PKCS#8, mode 0600) for signing audit checkpoints; prints the
    /// public key to pin with `audit verify --key`.
    Keygen {
        /// Where to write the private key.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Check an audit log: chain, order and checkpoint signatures. Names the first bad line.
    Verify {
        /// The log.
        log: PathBuf,
        /// The hex public key the checkpoints must be signed with (default: the first
        /// checkpoint's key, printed so it can be compared).
        #[arg(long)]
        key: Option<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
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
        AuditCommand::Verify { log, key, json } => {
            let report = gantry::audit::verify(&log, key.as_deref())?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{}: {} entries verified, {} signed checkpoints, {} after the last one; key {}{}",
                    log.display(),
                    report.entries,
                    report.checkpoints,
                    report.unsigned_tail,
                    report.key.as_deref().unwrap_or("(none)"),
                    if report.torn_tail {
                        "; a partial last line (a crash during a write) was ignored"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
    }
}
