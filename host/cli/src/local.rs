//! A daemon in this process on a throwaway data directory: what the demo and the API benchmark
//! start.

use std::path::{Path, PathBuf};

use gantry::cluster::Cluster;
use gantry_daemon::datadir::DataDir;
use gantry_daemon::db::User;
use gantry_daemon::{Background, DaemonConfig, DaemonError};

/// Adds `users` to the data directory `dir` as `gantry user add` does (under the directory's
/// lock, held as `holder`, each recorded in the audit log); their bearer tokens, in order.
pub fn add_users(dir: &Path, holder: &str, users: &[User]) -> anyhow::Result<Vec<String>> {
    let admin = DataDir::open(dir, holder)?;
    let mut tokens = Vec::with_capacity(users.len());
    for user in users {
        tokens.push(admin.add_user(user, None)?.token);
    }
    admin.close()?;
    Ok(tokens)
}

/// How a daemon started here runs command jobs: as `nobody` when this process is root (a root
/// daemon refuses command jobs without a job user), else as this process's user (a throwaway
/// directory of the person running it: the demo's, a benchmark's).
pub fn local_commands() -> gantry_daemon::command::CommandLimits {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let max_disk_mib = gantry_daemon::command::default_max_disk_mib();
    gantry_daemon::command::CommandLimits {
        user: root
            .then(|| gantry_daemon::command::JobUser::lookup("nobody").ok())
            .flatten(),
        own_user: !root,
        max_memory_mib: gantry_daemon::command::machine_memory_mib()
            .map(gantry_daemon::command::default_max_memory_mib),
        jobs_memory_mib: gantry_daemon::command::jobs_memory_mib(None, None).unwrap_or_default(),
        max_disk_mib,
        scratch_budget: gantry_daemon::command::scratch_budget(None, max_disk_mib)
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// Starts a daemon on `dir` on a free loopback port, plain HTTP, every limit at its default.
pub fn start_daemon(
    dir: &Path,
    cluster: Cluster,
    cache_dir: Option<PathBuf>,
) -> Result<Background, DaemonError> {
    start_daemon_with(dir, cluster, cache_dir, None)
}

/// [`start_daemon`], as a replica of `control_plane` when given.
pub fn start_daemon_with(
    dir: &Path,
    cluster: Cluster,
    cache_dir: Option<PathBuf>,
    control_plane: Option<gantry_daemon::replicas::ControlPlane>,
) -> Result<Background, DaemonError> {
    Background::start(DaemonConfig {
        control_plane,
        ..daemon_config(dir, cluster, cache_dir)
    })
}

/// What [`start_daemon`] starts: a daemon on `dir` on a free loopback port, plain HTTP, every
/// limit at its default, without agents.
pub fn daemon_config(dir: &Path, cluster: Cluster, cache_dir: Option<PathBuf>) -> DaemonConfig {
    DaemonConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("an address"),
        cluster,
        cache_dir,
        tls: None,
        client_ca: None,
        agent_here: false,
        insecure: false,
        trust: Default::default(),
        train_limits: Default::default(),
        train_memory_mib: None,
        train_budget: None,
        agent_lease: None,
        commands: local_commands(),
        conn_limits: Default::default(),
        shipped_policy: false,
        audit_each_read: false,
        min_free_disk_mib: 0,
        reserve_after_s: gantry::DEFAULT_RESERVE_AFTER_S,
        control_plane: None,
        tenant_limits: Default::default(),
    }
}
