//! `gantry plugin keygen|sign|verify`: Ed25519 signatures over a plugin's wasm and manifest;
//! `gantry plugin upload|activate`: a scheduler plugin sent to a running daemon.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use gantry::plugin::Manifest;
use gantry::plugin::signature;

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create an Ed25519 signing key (PKCS#8, mode 0600); prints the public key to trust.
    Keygen {
        /// Where to write the private key.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Sign a plugin (a directory with plugin.toml, or the manifest): writes plugin.sig.
    Sign {
        /// The plugin directory or manifest.
        plugin: PathBuf,
        /// The private key.
        #[arg(long)]
        key: PathBuf,
    },
    /// Check a plugin's signature against trusted public keys (exit 1 when it does not hold).
    Verify {
        /// The plugin directory or manifest.
        plugin: PathBuf,
        /// A trusted hex public key (repeatable; also taken from the global --trust).
        #[arg(long = "key")]
        keys: Vec<String>,
    },
    /// Upload a scheduler plugin (manifest, wasm and plugin.sig, if any) to a running daemon,
    /// which keeps it encrypted; the policy decides (shipped: admins, signed by a trusted key).
    Upload {
        /// The plugin directory or manifest.
        plugin: PathBuf,
        /// Make it the active scheduler once stored.
        #[arg(long)]
        activate: bool,
        #[command(flatten)]
        client: super::daemon::Client,
    },
    /// Make a shipped or uploaded scheduler plugin the daemon's active one (`--reload`: load the
    /// active one afresh, lifting a quarantine).
    Activate {
        /// The plugin's name.
        #[arg(required_unless_present = "reload")]
        name: Option<String>,
        /// Reload the active plugin instead.
        #[arg(long, conflicts_with = "name")]
        reload: bool,
        #[command(flatten)]
        client: super::daemon::Client,
    },
}

/// The manifest path and the bytes of the manifest and the wasm it names (regular files inside
/// the plugin's directory, under size limits).
fn plugin_files(plugin: &Path) -> anyhow::Result<(PathBuf, Vec<u8>, Vec<u8>)> {
    let files = gantry::plugin::files::PluginFiles::read(plugin)?;
    Ok((files.manifest_path, files.manifest_bytes, files.wasm))
}

/// Runs `gantry plugin ...`.
pub fn run(ctx: &super::Context, cmd: PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::Keygen { output } => {
            if output.exists() {
                anyhow::bail!("{}: exists; refusing to overwrite a key", output.display());
            }
            let key = gantry::keys::generate(&output)?;
            println!("{}", gantry::keys::public_hex(&key));
            Ok(())
        }
        PluginCommand::Sign { plugin, key } => sign(&plugin, &key),
        PluginCommand::Verify { plugin, keys } => {
            let trusted: Vec<String> = keys
                .into_iter()
                .chain(ctx.trust.trusted_keys.clone())
                .collect();
            verify(&plugin, &trusted)
        }
        PluginCommand::Upload {
            plugin,
            activate,
            client,
        } => upload(&plugin, activate, &client),
        PluginCommand::Activate {
            name,
            reload,
            client,
        } => match (name, reload) {
            (_, true) => activate_plugin(&client, "/v1/plugins/scheduler/reload", None),
            (name, false) => activate_plugin(&client, "/v1/plugins/scheduler", name),
        },
    }
}

/// Writes the plugin's signature file beside its manifest (through a temporary file).
fn sign(plugin: &Path, key: &Path) -> anyhow::Result<()> {
    let key = gantry::keys::load(key)?;
    let (manifest_path, manifest, wasm) = plugin_files(plugin)?;
    let sig = signature::sign(&key, &wasm, &manifest);
    let path = signature::path_for(&manifest_path);
    let tmp = path.with_extension("sig.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&sig)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {} (key {})", path.display(), sig.key);
    Ok(())
}

fn verify(plugin: &Path, trusted: &[String]) -> anyhow::Result<()> {
    let (manifest_path, manifest, wasm) = plugin_files(plugin)?;
    let sig = signature::read(&manifest_path)
        .map_err(anyhow::Error::msg)?
        .ok_or_else(|| anyhow::anyhow!("{}: no {}", manifest_path.display(), signature::FILE))?;
    signature::verify(&sig, &wasm, &manifest, trusted)
        .map_err(|why| anyhow::anyhow!("{}: {why}", manifest_path.display()))?;
    println!(
        "{}: signed by trusted key {}",
        manifest_path.display(),
        sig.key
    );
    Ok(())
}

/// Uploads the plugin (and its signature) to the daemon; activates it when asked.
fn upload(plugin: &Path, activate: bool, client: &super::daemon::Client) -> anyhow::Result<()> {
    let (manifest_path, manifest, wasm) = plugin_files(plugin)?;
    let name = Manifest::parse(&String::from_utf8_lossy(&manifest), &manifest_path)?.name;
    let sig = signature::read(&manifest_path).map_err(anyhow::Error::msg)?;
    let body = serde_json::json!({
        "manifest": String::from_utf8(manifest)
            .with_context(|| format!("{}: not UTF-8", manifest_path.display()))?,
        "wasm": data_encoding::BASE64.encode(&wasm),
        "signature": sig,
    });
    let stored = super::daemon::call(client, "PUT", &format!("/v1/plugins/{name}"), Some(body))?;
    println!(
        "uploaded {name} {} (component {})",
        stored["version"].as_str().unwrap_or_default(),
        stored["object"].as_str().unwrap_or_default()
    );
    if activate {
        activate_plugin(client, "/v1/plugins/scheduler", Some(name))?;
    }
    Ok(())
}

fn activate_plugin(
    client: &super::daemon::Client,
    path: &str,
    name: Option<String>,
) -> anyhow::Result<()> {
    let body = name.map(|n| serde_json::json!({"name": n}));
    let active = super::daemon::call(client, "POST", path, body)?;
    println!(
        "active scheduler: {} {} (sha256 {})",
        active["name"].as_str().unwrap_or_default(),
        active["version"].as_str().unwrap_or_default(),
        active["sha256"].as_str().unwrap_or_default()
    );
    Ok(())
}
