//! `gantry init`, `gantry key rotate` and `gantry store ...`: the host's data directory and its
//! encrypted object store.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use gantry::storage::{Rotation, Store, StoreError};
use gantry_daemon::datadir::{DataDir as DataDirHandle, DataDirError};

/// Where the data directory is: `--data-dir`, else `$GANTRY_DATA_DIR`, else
/// `$XDG_DATA_HOME/gantry` or `~/.local/share/gantry`.
#[derive(Debug, clap::Args)]
pub struct DataDir {
    /// The host's data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl DataDir {
    /// The directory.
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.data_dir {
            return Ok(d.clone());
        }
        if let Some(d) = std::env::var_os("GANTRY_DATA_DIR") {
            return Ok(d.into());
        }
        if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
            return Ok(PathBuf::from(d).join("gantry"));
        }
        let home = std::env::var_os("HOME").context("no --data-dir, $GANTRY_DATA_DIR or $HOME")?;
        Ok(PathBuf::from(home).join(".local/share/gantry"))
    }
}

/// `gantry key ...`.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Make a new master key current and re-wrap every data key under it (objects are not
    /// rewritten); an old master key is removed once no key file names it. Audited. When a
    /// daemon holds the data directory, the rotation goes through it (an admin's token).
    Rotate {
        #[command(flatten)]
        dir: DataDir,
        /// An admin's bearer token, to rotate through the daemon that holds the directory; in
        /// GANTRY_TOKEN only (refused on the command line, where every user reads it).
        #[arg(long, env = "GANTRY_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Trust this PEM certificate when the daemon serves HTTPS.
        #[arg(long, env = "GANTRY_CA_CERT", value_name = "CERT.pem")]
        ca_cert: Option<PathBuf>,
    },
    /// Seal every master key of the data directory under the key file GANTRY_KEY_FILE names
    /// (32 bytes, or 64 hex digits; mode 0600; outside the data directory), and authenticate its
    /// users and tokens: from then on the directory opens only with that file, an unsealed
    /// master key is refused, and so is a user or token row changed outside Gantry.
    Seal {
        #[command(flatten)]
        dir: DataDir,
    },
}

/// `gantry store ...`.
#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Encrypt a file into the store; prints its id (the SHA-256 of its content).
    Put {
        /// The file.
        file: PathBuf,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Decrypt an object into a file (written only if the whole object authenticates).
    Get {
        /// The object's id.
        id: String,
        /// Output file.
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        dir: DataDir,
    },
    /// List the stored objects.
    Ls {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Read and authenticate every object; exit 1 naming each one that fails.
    Verify {
        #[command(flatten)]
        dir: DataDir,
    },
}

/// Runs `gantry init`.
pub fn init(dir: &DataDir) -> anyhow::Result<()> {
    let path = dir.path()?;
    let store = Store::init(&path)?;
    let sealed = match std::env::var_os(gantry::storage::KEY_FILE_ENV) {
        Some(f) if !f.is_empty() => format!(", sealed under {}", Path::new(&f).display()),
        _ => String::new(),
    };
    println!(
        "initialised {} (master key {}{sealed}, host signing key {})",
        path.display(),
        store.master_id(),
        path.join("keys/host.pk8").display()
    );
    Ok(())
}

/// Runs `gantry key ...`.
pub fn key(cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Seal { dir } => {
            let root = dir.path()?;
            let (sealed, rows) = gantry_daemon::datadir::seal(&root, "gantry key seal")?;
            println!(
                "{}: {sealed} key(s) sealed (master keys, audit signing key), {rows} \
                 row(s) authenticated (users, tokens, jobs, datasets, placements, plugins...); \
                 the directory now opens only with {}",
                root.display(),
                gantry::storage::KEY_FILE_ENV
            );
            Ok(())
        }
        KeyCommand::Rotate {
            dir,
            token,
            ca_cert,
        } => {
            let root = dir.path()?;
            let r: Rotation = match DataDirHandle::open(&root, "gantry key rotate") {
                Ok(d) => {
                    let r = d.rotate_key()?;
                    d.close()?;
                    r
                }
                Err(DataDirError::Store(StoreError::Locked { holder, .. }))
                    if holder.url.is_some() =>
                {
                    let url = holder.url.clone().unwrap_or_default();
                    let Some(token) = token else {
                        anyhow::bail!(
                            "{}: held by {holder}; to rotate through it, give an admin's token \
                             (in GANTRY_TOKEN), or stop it first",
                            root.display()
                        );
                    };
                    let client = super::daemon::Client {
                        url,
                        token,
                        ca_cert,
                        // The daemon that holds this directory, on this machine.
                        insecure: true,
                        client_cert: None,
                        client_key: None,
                        timeout: None,
                    };
                    let v = super::daemon::call(&client, "POST", "/v1/keys/rotate", None)?;
                    serde_json::from_value(v).context("the daemon's answer")?
                }
                Err(e) => return Err(e.into()),
            };
            println!(
                "master key {} now current; {} data key(s) re-wrapped; retired {}",
                r.new_master,
                r.rewrapped,
                if r.retired.is_empty() {
                    "none".to_string()
                } else {
                    r.retired.join(", ")
                }
            );
            for (id, why) in &r.unreadable {
                eprintln!("not re-wrapped (its key file does not read): {id}: {why}");
            }
            if !r.unreadable.is_empty() {
                anyhow::bail!(
                    "{} key file(s) do not read; no master key was removed (run `gantry store verify`)",
                    r.unreadable.len()
                );
            }
            Ok(())
        }
    }
}

/// Runs `gantry store ...`.
pub fn store(cmd: StoreCommand) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Put { file, dir } => {
            let store = Store::open_exclusive(&dir.path()?, "gantry store put")?;
            let input = std::fs::File::open(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            println!("{}", store.put(input)?);
            Ok(())
        }
        StoreCommand::Get { id, out, dir } => {
            let store = Store::open(&dir.path()?)?;
            let bytes = store.get(&id)?;
            super::simulate::write_atomically(&out, &bytes)
        }
        StoreCommand::Ls { dir } => {
            let store = Store::open(&dir.path()?)?;
            for id in store.list()? {
                println!("{id}");
            }
            Ok(())
        }
        StoreCommand::Verify { dir } => verify(&dir.path()?),
    }
}

fn verify(path: &Path) -> anyhow::Result<()> {
    // Read-only: it runs beside a daemon (and reads keys a rotation adds meanwhile).
    let report = Store::open(path)?.verify()?;
    for (_, why) in &report.failed {
        eprintln!("{why}");
    }
    if !report.failed.is_empty() {
        anyhow::bail!(
            "{} of {} object(s) failed authentication",
            report.failed.len(),
            report.objects
        );
    }
    println!("{} object(s) authenticated", report.objects);
    Ok(())
}
