//! `gantry init`, `gantry key rotate` and `gantry store ...`: the host's data directory and its
//! encrypted object store.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use gantry::storage::Store;

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
    /// rewritten); the old master key is then removed.
    Rotate {
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
    println!(
        "initialised {} (master key {}, host signing key {})",
        path.display(),
        store.master_id(),
        path.join("keys/host.pk8").display()
    );
    Ok(())
}

/// Runs `gantry key ...`.
pub fn key(cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Rotate { dir } => {
            let mut store = Store::open(&dir.path()?)?;
            let r = store.rotate()?;
            println!(
                "master key {} now current; {} data key(s) re-wrapped; retired {}",
                r.new_master,
                r.rewrapped,
                r.retired.join(", ")
            );
            Ok(())
        }
    }
}

/// Runs `gantry store ...`.
pub fn store(cmd: StoreCommand) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Put { file, dir } => {
            let store = Store::open(&dir.path()?)?;
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
    let store = Store::open(path)?;
    let ids = store.list()?;
    let mut bad = 0;
    for id in &ids {
        let mut reader = match store.reader(id) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                bad += 1;
                continue;
            }
        };
        if let Err(e) = std::io::copy(&mut reader, &mut std::io::sink()) {
            eprintln!("{e}");
            bad += 1;
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} of {} object(s) failed authentication", ids.len());
    }
    println!("{} object(s) authenticated", ids.len());
    Ok(())
}
