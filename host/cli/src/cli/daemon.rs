//! `gantry up`, `gantry user add`, and the API's clients: `gantry submit`, `gantry jobs`,
//! `gantry cancel`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use gantry_daemon::datadir::DataDir;
use gantry_daemon::db::User;
use gantry_daemon::{self as daemon, DaemonConfig};

use super::table::Table;

/// Arguments of `gantry up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    dir: super::store::DataDir,
    /// Address to listen on (port 0: any free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Cluster file; default: the built-in cluster.
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "CERT.pem", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key, readable by its owner alone (0600).
    #[arg(long, value_name = "KEY.pem", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Ask TLS clients for a certificate of this CA (PEM): a node's requests (its agent's)
    /// then need one naming the node (a DNS name of the certificate), besides its token.
    #[arg(
        long,
        value_name = "CA.pem",
        requires = "tls_cert",
        conflicts_with = "emulate_gpus"
    )]
    client_ca: Option<PathBuf>,
    /// Serve plain HTTP on an address beyond loopback (refused without it: bearer tokens would
    /// cross the network in the clear).
    #[arg(long)]
    insecure: bool,
    /// A replicated control plane: keep jobs in this etcd cluster (its client URLs, comma
    /// separated) and elect a leader among the replicas started with the same URLs.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    etcd: Vec<String>,
    /// This replica's URL for clients, as followers name the leader (default: its listening
    /// address).
    #[arg(long, value_name = "URL", requires = "etcd")]
    advertise: Option<String>,
    /// The leader's lease in seconds (whole, 2 to 3600): a leader that dies is replaced
    /// within about this long.
    #[arg(long, default_value_t = 5, requires = "etcd")]
    leader_lease_s: u64,
    /// The prefix of this control plane's keys in etcd (several may share one etcd).
    #[arg(long, default_value = "gantry", requires = "etcd")]
    etcd_prefix: String,
    /// Under a key file (GANTRY_KEY_FILE) taken into use after this control plane kept its
    /// rows in etcd (users, tokens, jobs, placements, checkpoints, datasets, GPU marks, nodes,
    /// the policy, plugins, the active scheduler): authenticate those written before (as
    /// `gantry key seal` does a data directory's), once, as this replica leads. Run it where
    /// etcd is trusted.
    #[arg(long, requires = "etcd", alias = "authenticate-etcd-accounts")]
    authenticate_etcd_rows: bool,
    /// Reach etcd over TLS (`https://` URLs in --etcd), trusting this CA's certificate (PEM).
    #[arg(long, value_name = "CA.pem", requires = "etcd")]
    etcd_ca_cert: Option<PathBuf>,
    /// This replica's client certificate for etcd (PEM; for an etcd started with
    /// `--client-cert-auth`), with --etcd-key.
    #[arg(long, value_name = "CERT.pem", requires_all = ["etcd_ca_cert", "etcd_key"])]
    etcd_cert: Option<PathBuf>,
    /// The private key of --etcd-cert (PEM), readable by its owner alone (0600).
    #[arg(long, value_name = "KEY.pem", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// What training runs may use.
    #[command(flatten)]
    train: TrainArgs,
    /// Connections open at once, in all (lowered to fit the descriptor limit).
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Connections open at once from one source address.
    #[arg(long, default_value_t = 256)]
    max_connections_per_source: usize,
    /// Seconds a client has to send a request's headers (and to start its next request on a
    /// kept-alive connection).
    #[arg(long, default_value_t = 10)]
    header_timeout_s: u64,
    /// Start with the shipped policy, replacing the one an admin installed (when that no longer
    /// loads, say); recorded in the audit log.
    #[arg(long)]
    shipped_policy: bool,
    /// Seconds a job that could run waits before GPUs are held for it: later jobs are then
    /// placed only where they cannot delay it, so a large gang is not starved by a stream of
    /// small jobs, whichever scheduler plugin decides (0: at once; `never`: no holding).
    #[arg(long, value_name = "SECS|never", default_value_t = gantry::DEFAULT_RESERVE_AFTER_S,
          value_parser = super::reserve_after_s)]
    reserve_after_s: f64,
    /// Record every allowed read (a job, a listing, the cluster, plugins, the policy) in the audit log
    /// as an entry of its own; by default they are counted, per user, action and resource, into
    /// one `decision.summary` entry every 10 s. Refusals and changes are always an entry each.
    #[arg(long)]
    audit_each_read: bool,
    /// Space the data directory's disk keeps free for recording the work under way, MiB: below
    /// it, submissions and uploads get 507 and /v1/health answers 503 "low_disk", before a full
    /// disk fails every tenant's writes (jobs' scratch and /tmp often share that disk).
    #[arg(long, default_value_t = 512)]
    min_free_disk_mib: u64,
    /// Whom command jobs run as and what each may use.
    #[command(flatten)]
    jobs: JobArgs,
    /// The most jobs one tenant may have waiting to be placed (a submission past it: 429).
    #[arg(long, default_value_t = gantry_daemon::DEFAULT_MAX_QUEUED_PER_TENANT as u64,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    max_queued_jobs_per_tenant: u64,
    /// Finished jobs kept per tenant: beyond these, the oldest to end are forgotten (record,
    /// log, metrics and checkpoint) as the tenant submits more.
    #[arg(long, default_value_t = gantry_daemon::DEFAULT_KEPT_FINISHED_PER_TENANT as u64,
          value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    keep_finished_jobs_per_tenant: u64,
    /// Succeeded training jobs whose model is kept per tenant (`GET /v1/jobs/{id}/model`):
    /// beyond these, the oldest to end let theirs go as more succeed. Default: 16; with
    /// --etcd, 4 (every model is kept in etcd too, up to 64 MiB each).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    keep_models_per_tenant: Option<u64>,
    /// Requests a second one user may send (twice as many at once after a pause; past it: 429);
    /// 0: not paced. Admins and node identities are not paced.
    #[arg(long, default_value_t = gantry_daemon::DEFAULT_MAX_REQUESTS_PER_USER_PER_S,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    max_requests_per_user_per_s: u32,
    /// The most datasets one tenant may have (an upload past it: 429).
    #[arg(long, default_value_t = gantry_daemon::DEFAULT_MAX_DATASETS_PER_TENANT as u64,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    max_datasets_per_tenant: u64,
    /// The most bytes one tenant's datasets may hold together (an upload past it: 429).
    /// Default: 64 GiB; with --etcd, 1 GiB (every dataset is kept in etcd too, whose whole
    /// database is at most 8 GiB).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_dataset_bytes_per_tenant: Option<u64>,
    /// The longest wall time a command job may ask for, and what it gets when it asks for none.
    #[arg(long, default_value_t = 7.0 * 24.0 * 3600.0)]
    max_wall_time_s: f64,
    /// Node agents: a node serves only while its agent (`gantry agent`) holds a lease, renewed
    /// by each heartbeat, of this many seconds.
    #[arg(long, value_name = "SECONDS")]
    agent_lease_s: Option<f64>,
    /// This machine as a one-node cluster of this many emulated GPUs (run on the CPU, bound
    /// like real ones), served by an agent inside `gantry up`. Without it, on a machine whose
    /// CUDA driver finds GPUs, `gantry up` with no --cluster does this with the real ones.
    #[arg(long, value_name = "N", conflicts_with_all = ["cluster", "etcd"])]
    emulate_gpus: Option<u32>,
    /// This machine's node name (and its agent's identity, a user with the `node` role), when
    /// `gantry up` runs its own agent.
    #[arg(long, default_value = "local")]
    node: String,
}

/// This machine as a one-node cluster, run by an agent inside `gantry up` (issue 13: the
/// single-machine default needs no setup): its GPUs as the agent reports them.
struct LocalNode {
    name: String,
    emulate: Option<u32>,
    gpus: Vec<gantry_daemon::nodes::ReportedGpu>,
    /// The agent's devices, found once here and handed to it.
    devices: super::agent_devices::Devices,
}

impl LocalNode {
    /// The node `gantry up` runs itself, if it does: with --emulate-gpus, or where the CUDA
    /// driver finds GPUs and neither a cluster file, etcd nor outside agents are asked for.
    fn of(args: &UpArgs) -> anyhow::Result<Option<LocalNode>> {
        let outside = args.cluster.is_some()
            || !args.etcd.is_empty()
            || args.agent_lease_s.is_some()
            || args.client_ca.is_some();
        let mut devices = match args.emulate_gpus {
            Some(n) => super::agent_devices::Devices::new(Some(n), None)?,
            None if outside => return Ok(None),
            None => {
                let found = gantry::training::device::detect();
                if found.gpus.is_empty() {
                    return Ok(None);
                }
                super::agent_devices::Devices::found(found)?
            }
        };
        Ok(Some(LocalNode {
            name: args.node.clone(),
            emulate: args.emulate_gpus,
            gpus: devices.report().to_vec(),
            devices,
        }))
    }

    /// The cluster: the default cluster's tenants, and this node with its GPUs.
    fn cluster(&self) -> anyhow::Result<gantry::cluster::Cluster> {
        let tenants = super::cluster(None)?.tenants;
        let mut cluster = gantry::cluster::Cluster {
            tenants,
            ..Default::default()
        };
        let gpus: Vec<(String, String, u32)> = self
            .gpus
            .iter()
            .map(|g| {
                let memory = u32::try_from(g.memory_mib).unwrap_or(u32::MAX);
                (
                    format!("{}/gpu{}", self.name, g.ordinal),
                    g.name.clone(),
                    memory,
                )
            })
            .collect();
        cluster
            .add_node(&self.name, "local", &gpus)
            .map_err(|e| anyhow::anyhow!("--node {}: {e}", self.name))?;
        for g in &mut cluster.gpus {
            g.gpu.healthy = true;
        }
        Ok(cluster)
    }

    /// A token for the node's identity (a user of that name with the `node` role, made if
    /// missing), issued for this run of `gantry up`: the ones earlier runs issued are revoked.
    /// Both audited in the data directory.
    fn identity(&self, dir: &super::store::DataDir) -> anyhow::Result<String> {
        let d = open_offline(dir, "gantry up (this machine's agent)")?;
        let issued = match d.db.user(&self.name)? {
            Some(u) if u.roles != ["node"] => anyhow::bail!(
                "--node {}: a user of that name exists with roles {:?}; this machine's agent \
                 needs a node identity of its own: name another with --node",
                self.name,
                u.roles
            ),
            Some(_) => {
                d.revoke(&self.name, None)?;
                d.issue_token(&self.name, Some(None))?
            }
            None => {
                let user = User {
                    name: self.name.clone(),
                    roles: vec!["node".into()],
                    tenants: Vec::new(),
                    clearance: "public".into(),
                };
                d.add_user(&user, Some(None))?
            }
        };
        d.close()?;
        Ok(issued.token)
    }

    /// The agent's arguments, reaching the daemon at `addr` with `token`.
    fn agent_args(&self, args: &UpArgs, addr: SocketAddr, token: String) -> AgentArgs {
        let scheme = if args.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        };
        AgentArgs {
            node: self.name.clone(),
            rack: None,
            emulate_gpus: self.emulate,
            devices: None,
            heartbeat_s: 1.0,
            jobs: args.jobs.clone(),
            train: args.train.clone(),
            training: None,
            client: Client {
                url: format!("{scheme}://{host}:{}", addr.port()),
                token,
                ca_cert: args.tls_cert.clone(),
                insecure: false,
                client_cert: None,
                client_key: None,
                timeout: None,
            },
        }
    }
}

/// Arguments of `gantry agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The node this agent speaks for: its name in the control plane's cluster, or, for a node
    /// the cluster file does not list, the name it registers under (its node identity's).
    #[arg(long)]
    node: String,
    /// The node's rack, reported when it registers (a node not in the cluster file).
    #[arg(long)]
    rack: Option<String>,
    /// Advertise this many emulated GPUs (run on the CPU, bound like real ones) instead of the
    /// GPUs the CUDA driver finds.
    #[arg(long, value_name = "N", conflicts_with = "devices")]
    emulate_gpus: Option<u32>,
    /// Advertise the emulated GPUs this TOML file lists (`[[gpus]]` of `ordinal`, `name`,
    /// `memory_mib`, `pci_bus_id`, `healthy`), read again before every heartbeat: a GPU the file
    /// says is unfit leaves service, and its jobs are requeued.
    #[arg(long, value_name = "FILE")]
    devices: Option<PathBuf>,
    /// Seconds between heartbeats (keep it well under the control plane's lease).
    #[arg(long, default_value_t = 1.0)]
    heartbeat_s: f64,
    /// Whom command jobs run as and what each may use.
    #[command(flatten)]
    jobs: JobArgs,
    /// What the training runs this agent is handed may use.
    #[command(flatten)]
    train: TrainArgs,
    /// Given by `gantry up` to its own agent: the daemon's limits and budget.
    #[arg(skip)]
    training: Option<Training>,
    #[command(flatten)]
    client: Client,
}

/// How command jobs run, on `gantry up` (its own agent's) and `gantry agent` alike.
#[derive(clap::Args, Debug, Clone)]
pub(super) struct JobArgs {
    /// Run command jobs as this unprivileged user (without it, or --jobs-as-own-user, command
    /// jobs are refused).
    #[arg(long, value_name = "USER")]
    pub(super) job_user: Option<String>,
    /// Without --job-user, run command jobs as this process's own user (never root): for a
    /// machine one person uses, as a program running as it can read the daemon's keys (the
    /// agent's node token).
    #[arg(long, conflicts_with = "job_user")]
    pub(super) jobs_as_own_user: bool,
    /// Run each command job as a uid of its own from FIRST-LAST (root; no user entries
    /// needed): runs never share a uid, so none can signal or read another tenant's.
    #[arg(long, value_name = "FIRST-LAST", conflicts_with_all = ["job_user", "jobs_as_own_user"],
          value_parser = gantry_daemon::command::UidRange::parse)]
    pub(super) job_uids: Option<gantry_daemon::command::UidRange>,
    /// Seconds a stopped command job has between SIGTERM and SIGKILL.
    #[arg(long, default_value_t = 10.0)]
    pub(super) kill_grace_s: f64,
    /// The most tasks (processes and threads) one command job may have at once, where the
    /// machine has the cgroup `pids` controller: a fork bomb stops there.
    #[arg(long, default_value_t = gantry_daemon::cgroup::DEFAULT_MAX_PIDS,
          value_parser = clap::value_parser!(u64).range(1..=4_194_304))]
    pub(super) max_job_pids: u64,
    /// The most memory one command job may use, MiB: the limit of its cgroup when it names none
    /// (where the machine has the memory controller), and the most it may ask for. Default:
    /// this machine's memory less a tenth (1 to 8 GiB), kept for the daemon and the system.
    #[arg(long, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(1..=gantry_daemon::command::MAX_MEMORY_MIB))]
    pub(super) max_job_memory_mib: Option<u64>,
    /// The most memory all command jobs together may use, MiB: the limit of their cgroups'
    /// directory (where the machine has the memory controller), at whose reach the kernel's OOM
    /// killer takes a job's process before the machine runs short. At least
    /// `--max-job-memory-mib`. Default: this machine's memory less a tenth (1 to 8 GiB).
    #[arg(long, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(1..=gantry_daemon::command::MAX_MEMORY_MIB))]
    pub(super) jobs_memory_mib: Option<u64>,
    /// The most one command job's scratch directory may hold, MiB: the size of the file system
    /// of its own it gets (where runs have mount namespaces: root) when it names none, and the
    /// most it may ask for (`command.disk_mib`). Default: a tenth of the file system of the
    /// temporary directory (at least 1 GiB).
    #[arg(long, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(1..=gantry_daemon::command::MAX_DISK_MIB))]
    pub(super) max_job_disk_mib: Option<u64>,
    /// The most all command runs' scratch file systems hold together, MiB: a run reserves its
    /// scratch's size before it starts and waits while the runs going on leave no room. At
    /// least `--max-job-disk-mib`. Default: three quarters of what the temporary directory's
    /// file system has free at start (at least `--max-job-disk-mib`).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub(super) jobs_disk_mib: Option<u64>,
    /// Whose network command jobs have: `own` (a network namespace of each run's own, its
    /// loopback alone: no run reaches what another listens on, on the loopback address or an
    /// abstract socket, nor anything outside) or `host` (the machine's, shared by every run:
    /// for jobs that download from outside).
    #[arg(long, value_name = "own|host", default_value = "own")]
    pub(super) job_network: gantry_daemon::netns::JobNetwork,
    /// Leave the kernel's counts of open files, AIO events and pseudo-terminals (the machine's:
    /// `fs.file-max`, `fs.aio-max-nr`, `kernel.pty.max`) and of inotify and epoll watches (a
    /// user's: `fs.inotify.max_user_instances`, `fs.inotify.max_user_watches`,
    /// `fs.epoll.max_user_watches`) as they are, warning that a command job can take every one.
    /// Without it, a node that runs command jobs under memory bounds (root) lifts them to the
    /// kernel's most, as systemd does for files: each run's memory cgroup pays for what it
    /// opens, so its memory bound holds it.
    #[arg(long)]
    pub(super) protect_kernel_defaults: bool,
    /// Which system calls command jobs may make: `filtered` (all but those that make
    /// namespaces, set up io_uring, load BPF, open perf events or userfaultfds, or use kernel
    /// keyrings: the kernel's most attacked code, which no training job needs) or `all` (for
    /// jobs that make containers of their own with user namespaces, such as enroot).
    #[arg(long, value_name = "filtered|all", default_value = "filtered")]
    pub(super) job_syscalls: gantry_daemon::seccomp::JobSyscalls,
}

impl JobArgs {
    /// The limits on command runs these say: who runs them (`--job-user`), how long a stopped
    /// run has before SIGKILL (`--kill-grace-s`), what it may use (`--max-job-pids`,
    /// `--max-job-memory-mib`, `--max-job-disk-mib`) and whose network it has.
    fn limits(&self) -> anyhow::Result<gantry_daemon::command::CommandLimits> {
        use gantry_daemon::command::{
            CommandLimits, JobUser, default_max_disk_mib, default_max_memory_mib, jobs_memory_mib,
            machine_memory_mib, scratch_budget,
        };
        let max_disk_mib = self.max_job_disk_mib.or_else(default_max_disk_mib);
        let max_memory_mib =
            (self.max_job_memory_mib).or(machine_memory_mib().map(default_max_memory_mib));
        Ok(CommandLimits {
            max_pids: self.max_job_pids,
            max_memory_mib,
            jobs_memory_mib: jobs_memory_mib(self.jobs_memory_mib, max_memory_mib)
                .map_err(anyhow::Error::msg)?,
            max_disk_mib,
            scratch_budget: scratch_budget(self.jobs_disk_mib, max_disk_mib)
                .map_err(anyhow::Error::msg)?,
            network: self.job_network,
            protect_kernel_defaults: self.protect_kernel_defaults,
            syscalls: self.job_syscalls,
            uids: self.job_uids,
            own_user: self.jobs_as_own_user,
            user: (self.job_user.as_deref().map(JobUser::lookup))
                .transpose()
                .map_err(anyhow::Error::msg)?,
            kill_grace: std::time::Duration::try_from_secs_f64(self.kill_grace_s)
                .context("--kill-grace-s: a number of seconds, 0 or more")?,
            ..Default::default()
        })
    }
}

/// What training runs may use, on `gantry up` (its own and its own agent's, together) and
/// `gantry agent` alike.
#[derive(clap::Args, Debug, Clone)]
pub(super) struct TrainArgs {
    /// Size limits of each training run (TOML: `max_rows`, `max_classes`, `max_memory_mib`,
    /// ...); default: the built-in ones.
    #[arg(long, value_name = "LIMITS.toml")]
    train_limits: Option<PathBuf>,
    /// The memory this process's training runs may take together, MiB (a run waits, still
    /// `scheduled`, while the others leave no room); at least one run's `max_memory_mib`.
    /// Default: three quarters of this machine's memory.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    train_memory_mib: Option<u64>,
    /// The most of it one tenant's training runs may hold together, MiB; at least one run's
    /// `max_memory_mib`. Default: half of --train-memory-mib (all of it suits a machine one
    /// tenant uses).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    train_memory_mib_per_tenant: Option<u64>,
}

impl TrainArgs {
    /// The limits and the budget these say.
    fn training(&self) -> anyhow::Result<Training> {
        Training::of(
            self.train_limits.as_deref(),
            self.train_memory_mib,
            self.train_memory_mib_per_tenant,
        )
    }
}

/// What training runs in one process are held to: the limits of each, and one memory budget
/// for them all ([`gantry_daemon::budget`]).
#[derive(Debug, Clone)]
pub(super) struct Training {
    pub(super) limits: gantry::training::TrainLimits,
    pub(super) budget: std::sync::Arc<gantry_daemon::budget::Budget>,
}

impl Training {
    /// From `--train-limits`, `--train-memory-mib` and `--train-memory-mib-per-tenant`.
    pub(super) fn of(
        limits: Option<&std::path::Path>,
        memory_mib: Option<u64>,
        per_tenant_mib: Option<u64>,
    ) -> anyhow::Result<Training> {
        use gantry_daemon::budget::Budget;
        let limits = match limits {
            Some(path) => gantry::training::TrainLimits::load(path)?,
            None => Default::default(),
        };
        let job_mib = limits.max_memory_mib;
        let total = Budget::total_for(memory_mib, job_mib).map_err(anyhow::Error::msg)?;
        let share =
            Budget::share_for(per_tenant_mib, total, job_mib).map_err(anyhow::Error::msg)?;
        Ok(Training {
            limits,
            budget: std::sync::Arc::new(Budget::with_share(total, share)),
        })
    }
}

/// `gantry user ...`: offline commands on the data directory (refused while a daemon holds it),
/// or, with `--url`, through a running daemon or replicated control plane (an admin's token);
/// each recorded in the audit log.
#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Add (or update) a user and print a new bearer token for them (shown once).
    Add {
        /// The user's name.
        name: String,
        /// Roles, comma-separated (`researcher`, `admin`, ...).
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// Tenants, comma-separated.
        #[arg(long, value_delimiter = ',')]
        tenants: Vec<String>,
        /// The highest dataset classification the user may read or write.
        #[arg(long, default_value = "public")]
        clearance: String,
        /// How long the token lives: 30d, 12h, 45m, 90s or `never` (default: the data
        /// directory's, `gantry user ttl`).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        #[command(flatten)]
        via: ViaDaemon,
        #[command(flatten)]
        dir: super::store::DataDir,
    },
    /// Print another bearer token for an existing user (shown once).
    Token {
        /// The user's name.
        name: String,
        /// How long the token lives (as for `user add`).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        #[command(flatten)]
        via: ViaDaemon,
        #[command(flatten)]
        dir: super::store::DataDir,
    },
    /// Revoke every token of a user (or one, by its id): they get 401 from then on. While a
    /// daemon holds the data directory, the revocation goes through it (an admin's token), so a
    /// leaked token is revoked without a restart.
    Revoke {
        /// The user's name.
        name: String,
        /// Only this token (its id: the hex digits after `gantry_`).
        #[arg(long, value_name = "ID")]
        token: Option<String>,
        #[command(flatten)]
        via: ViaDaemon,
        #[command(flatten)]
        dir: super::store::DataDir,
    },
    /// List tokens (ids, creation, expiry, revocation; never the tokens themselves).
    Tokens {
        /// Only this user's.
        name: Option<String>,
        #[command(flatten)]
        dir: super::store::DataDir,
    },
    /// Set how long new tokens live unless told otherwise (default 90d): 30d, 12h, ... or `never`.
    Ttl {
        /// The lifetime.
        duration: String,
        #[command(flatten)]
        dir: super::store::DataDir,
    },
}

/// A user command sent through a daemon rather than done on the data directory.
#[derive(Debug, Clone, clap::Args)]
pub struct ViaDaemon {
    /// Do it through this daemon (for a replicated control plane, its replicas' URLs, comma
    /// separated: the accounts live in etcd), as an admin.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// An admin's bearer token, for `--url` (or the daemon that holds the directory); in
    /// GANTRY_TOKEN only (refused on the command line, where every user reads it).
    #[arg(long, env = "GANTRY_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Trust this PEM certificate when the daemon serves HTTPS.
    #[arg(long, env = "GANTRY_CA_CERT", value_name = "CERT.pem")]
    ca_cert: Option<PathBuf>,
    /// Send the token over plain `http://` beyond loopback (as for `gantry submit`).
    #[arg(long, env = "GANTRY_INSECURE")]
    insecure: bool,
}

impl ViaDaemon {
    /// The client for `url`, with the admin's token.
    fn client(&self, url: &str) -> anyhow::Result<Client> {
        let Some(token) = self.admin_token.clone() else {
            anyhow::bail!("an admin's bearer token is needed (in GANTRY_TOKEN)");
        };
        Ok(Client {
            url: url.to_string(),
            token,
            ca_cert: self.ca_cert.clone(),
            insecure: self.insecure,
            client_cert: None,
            client_key: None,
            timeout: None,
        })
    }
}

/// Where the API is and who is asking.
#[derive(Debug, Clone, clap::Args)]
pub struct Client {
    /// The daemon's URL; for a replicated control plane, its replicas' URLs, comma separated
    /// (tried in turn while one cannot be reached; a follower's answer leads to the leader).
    #[arg(long, env = "GANTRY_URL", default_value = "http://127.0.0.1:7070")]
    pub(super) url: String,
    /// A bearer token (`gantry user add`), in GANTRY_TOKEN only (refused on the command line,
    /// where every user reads it).
    #[arg(long, env = "GANTRY_TOKEN", hide_env_values = true)]
    pub(super) token: String,
    /// Trust this PEM certificate for an `https://` URL (a self-signed daemon's, say).
    #[arg(long, env = "GANTRY_CA_CERT", value_name = "CERT.pem")]
    pub(super) ca_cert: Option<PathBuf>,
    /// Send the token over plain `http://` to an address beyond loopback (refused without it:
    /// it would cross the network in the clear).
    #[arg(long, env = "GANTRY_INSECURE")]
    pub(super) insecure: bool,
    /// Present this PEM client certificate over `https://` (a node's agent, where the control
    /// plane asks nodes for one: `gantry up --client-ca`), with --client-key.
    #[arg(
        long,
        env = "GANTRY_CLIENT_CERT",
        value_name = "CERT.pem",
        requires = "client_key"
    )]
    pub(super) client_cert: Option<PathBuf>,
    /// The private key of --client-cert (PEM), readable by its owner alone (0600).
    #[arg(
        long,
        env = "GANTRY_CLIENT_KEY",
        value_name = "KEY.pem",
        requires = "client_cert"
    )]
    pub(super) client_key: Option<PathBuf>,
    /// The longest a JSON request may take, its answer read (`None`: no bound). An agent's
    /// heartbeats and run reports are bounded well under its lease: one left waiting on a
    /// control plane that accepted the connection and never answered kept the agent from
    /// noticing that its lease had lapsed, and its runs ran on beside their requeued attempts.
    #[arg(skip)]
    pub(super) timeout: Option<std::time::Duration>,
}

impl Client {
    /// Refuses to send the bearer token in the clear beyond this machine: an `http://` URL must
    /// name a loopback host unless `--insecure` is given.
    fn check_transport(&self) -> anyhow::Result<()> {
        let url = self.url.trim();
        let plain = url
            .get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"));
        if !plain || self.insecure || loopback_host(&url[7..]) {
            return Ok(());
        }
        anyhow::bail!(
            "--url {url}: plain HTTP beyond loopback would send the token in the clear; use \
             https:// (with --ca-cert for a self-signed daemon), or give --insecure"
        )
    }
}

/// Whether the authority at the start of `rest` (what follows `http://`) names this machine:
/// `localhost` or a loopback address.
fn loopback_host(rest: &str) -> bool {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Arguments of `gantry submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The tenant whose queue and quota the job uses.
    #[arg(long)]
    tenant: String,
    /// GPUs.
    #[arg(long)]
    gpus: u32,
    /// Job id (default: generated).
    #[arg(long)]
    id: Option<String>,
    /// Memory per GPU, MiB.
    #[arg(long)]
    memory_per_gpu_mib: Option<u64>,
    /// Train: this `TRAIN.toml` (its data a synthetic set, or a dataset uploaded to the daemon).
    #[arg(long, value_name = "TRAIN.toml", conflicts_with = "command")]
    train: Option<std::path::PathBuf>,
    /// A variable of the command's environment (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE", requires = "command")]
    env: Vec<String>,
    /// The command's working directory (default: a fresh scratch directory).
    #[arg(long, value_name = "DIR", requires = "command")]
    cwd: Option<String>,
    /// Seconds the command may run (default and most: the daemon's --max-wall-time-s).
    #[arg(long, value_name = "SECONDS", requires = "command")]
    wall_time_s: Option<f64>,
    /// Memory the command may use, MiB (its cgroup's limit).
    #[arg(long, value_name = "MiB", requires = "command")]
    memory_mib: Option<u64>,
    /// CPUs the command may use (its cgroup's quota).
    #[arg(long, value_name = "N", requires = "command")]
    cpus: Option<f64>,
    /// What the command's scratch directory may hold, MiB (a file system of its own; default
    /// and most: the daemon's --max-job-disk-mib).
    #[arg(long, value_name = "MiB", requires = "command", conflicts_with = "cwd")]
    disk_mib: Option<u64>,
    /// Run this program on the placed GPUs (after `--`): a command job, decided as `job.exec`.
    #[arg(last = true, value_name = "PROGRAM [ARGS]")]
    command: Vec<String>,
    #[command(flatten)]
    client: Client,
}

/// Runs `gantry up`.
pub fn up(ctx: &super::Context, args: UpArgs) -> anyhow::Result<()> {
    let control_plane = control_plane(&args)?;
    let local = LocalNode::of(&args)?;
    let cluster = match &local {
        Some(node) => node.cluster()?,
        None => super::cluster(args.cluster.as_ref())?,
    };
    // A node identity of no tenant: it needs none (the policy decides a node's reads by where
    // runs were placed), and one of every tenant was every tenant's member.
    let token = match &local {
        Some(node) => Some(node.identity(&args.dir)?),
        None => None,
    };
    // The daemon's training runs and its own agent's (on this machine's GPUs) share one
    // budget and one set of limits.
    let training = args.train.training()?;
    let config = DaemonConfig {
        data_dir: args.dir.path()?,
        listen: args.listen,
        cluster,
        cache_dir: ctx.cache_dir.clone(),
        tls: args.tls_cert.clone().zip(args.tls_key.clone()),
        client_ca: args.client_ca.clone(),
        insecure: args.insecure,
        trust: ctx.trust.clone(),
        train_limits: training.limits.clone(),
        train_memory_mib: args.train.train_memory_mib,
        train_budget: Some(training.budget.clone()),
        conn_limits: gantry_daemon::serve::ConnLimits {
            max_connections: args.max_connections,
            max_connections_per_source: args.max_connections_per_source,
            header_timeout: std::time::Duration::from_secs(args.header_timeout_s.max(1)),
            ..Default::default()
        },
        shipped_policy: args.shipped_policy,
        audit_each_read: args.audit_each_read,
        min_free_disk_mib: args.min_free_disk_mib,
        reserve_after_s: args.reserve_after_s,
        control_plane,
        tenant_limits: gantry_daemon::TenantLimits {
            queued_jobs: usize::try_from(args.max_queued_jobs_per_tenant).unwrap_or(usize::MAX),
            datasets: usize::try_from(args.max_datasets_per_tenant).unwrap_or(usize::MAX),
            user_requests_per_s: args.max_requests_per_user_per_s,
            finished_jobs: usize::try_from(args.keep_finished_jobs_per_tenant)
                .unwrap_or(usize::MAX),
            models: match (args.keep_models_per_tenant, args.etcd.is_empty()) {
                (Some(n), _) => usize::try_from(n).unwrap_or(usize::MAX),
                (None, true) => gantry_daemon::DEFAULT_KEPT_MODELS_PER_TENANT,
                (None, false) => gantry_daemon::DEFAULT_KEPT_MODELS_PER_TENANT_ON_ETCD,
            },
            dataset_bytes: args.max_dataset_bytes_per_tenant.unwrap_or(
                match args.etcd.is_empty() {
                    true => gantry_daemon::DEFAULT_MAX_DATASET_BYTES_PER_TENANT,
                    false => gantry_daemon::DEFAULT_MAX_DATASET_BYTES_PER_TENANT_ON_ETCD,
                },
            ),
        },
        agent_here: local.is_some(),
        agent_lease: match (args.agent_lease_s, &local) {
            (Some(s), _) => Some(seconds_above_zero(s, "--agent-lease-s")?),
            (None, Some(_)) => Some(std::time::Duration::from_secs(10)),
            (None, None) => None,
        },
        commands: gantry_daemon::command::CommandLimits {
            max_wall_time_s: seconds_above_zero(args.max_wall_time_s, "--max-wall-time-s")?
                .as_secs_f64(),
            ..args.jobs.limits()?
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gantry-daemon")
        .build()
        .context("starting the daemon's runtime")?;
    let (Some(node), Some(token)) = (local, token) else {
        runtime.block_on(daemon::serve(config))?;
        return Ok(());
    };
    // This machine's agent runs beside the daemon once it listens, and stops its runs (their
    // ends reported) before the daemon stops.
    let quit = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let thread = std::sync::Arc::new(std::sync::Mutex::new(None));
    let start = {
        let (quit, thread) = (quit.clone(), thread.clone());
        move |addr: SocketAddr| {
            let mut agent = node.agent_args(&args, addr, token);
            agent.training = Some(training.clone());
            eprintln!(
                "this machine's agent: node {}, {} GPU(s) ({})",
                node.name,
                node.gpus.len(),
                if node.emulate.is_some() {
                    "emulated"
                } else {
                    "the CUDA driver's"
                }
            );
            let mut devices = node.devices;
            let spawned = std::thread::Builder::new()
                .name("gantry-agent".into())
                .spawn(move || supervise_agent(&agent, &mut devices, &quit));
            match spawned {
                Ok(handle) => *thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle),
                Err(e) => eprintln!("this machine's agent did not start: {e}"),
            }
        }
    };
    let stopping = async move {
        quit.store(true, std::sync::atomic::Ordering::SeqCst);
        let handle = thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    };
    runtime.block_on(gantry_daemon::serve_then(config, start, stopping))?;
    Ok(())
}

/// The replicated control plane `gantry up --etcd` asks for, if it does.
fn control_plane(args: &UpArgs) -> anyhow::Result<Option<gantry_daemon::replicas::ControlPlane>> {
    if args.etcd.is_empty() {
        return Ok(None);
    }
    if !(2..=3600).contains(&args.leader_lease_s) {
        anyhow::bail!(
            "--leader-lease-s {}: 2 to 3600 seconds (etcd raises shorter leases; a longer one \
             leaves the cluster without a leader for as long when one dies)",
            args.leader_lease_s
        );
    }
    let prefix = args.etcd_prefix.trim_matches('/');
    if prefix.is_empty() {
        anyhow::bail!("--etcd-prefix: a non-empty key prefix");
    }
    let tls = etcd_tls(args)?;
    // Over plain HTTP, jobs and accounts would cross the network in the clear.
    if let Some(far) = args.etcd.iter().find(|u| {
        u.trim()
            .strip_prefix("http://")
            .is_some_and(|rest| !loopback_host(rest))
    }) && !args.insecure
    {
        anyhow::bail!(
            "--etcd {far}: plain HTTP beyond loopback crosses the network in the clear; reach \
             etcd over TLS (https:// and --etcd-ca-cert), or give --insecure on a trusted network"
        );
    }
    let lease = std::time::Duration::from_secs(args.leader_lease_s);
    // Each call to etcd is bounded well within the lease.
    let etcd = gantry_etcd::Etcd::new_tls(&args.etcd, lease / 3, tls.as_ref()).map_err(|e| {
        let flags = match (&e, &tls) {
            (gantry_etcd::EtcdError::BadTls(_), _) => "--etcd-ca-cert/--etcd-cert/--etcd-key",
            (_, Some(_)) => "--etcd (with --etcd-ca-cert, every URL is https://)",
            (_, None) => "--etcd (an https:// URL needs --etcd-ca-cert)",
        };
        anyhow::Error::new(e).context(flags)
    })?;
    Ok(Some(gantry_daemon::replicas::ControlPlane {
        etcd: std::sync::Arc::new(etcd),
        root: prefix.to_string(),
        advertise: args.advertise.clone(),
        lease,
        authenticate_rows: args.authenticate_etcd_rows,
    }))
}

/// TLS to etcd as `--etcd-ca-cert`, `--etcd-cert` and `--etcd-key` say; `None` without them.
fn etcd_tls(args: &UpArgs) -> anyhow::Result<Option<gantry_etcd::EtcdTls>> {
    type Read = fn(&std::path::Path, u64) -> std::io::Result<Vec<u8>>;
    let read = |path: &PathBuf, flag: &str, read: Read| {
        read(path, gantry_daemon::tls::MAX_PEM)
            .with_context(|| format!("{flag} {}", path.display()))
    };
    // Certificates are public; the key is its owner's alone.
    let public: Read = gantry::durable::read_bounded;
    let Some(ca) = &args.etcd_ca_cert else {
        return Ok(None);
    };
    let client = match (&args.etcd_cert, &args.etcd_key) {
        (Some(cert), Some(key)) => Some((
            read(cert, "--etcd-cert", public)?,
            read(key, "--etcd-key", gantry::durable::read_private)?,
        )),
        _ => None,
    };
    Ok(Some(gantry_etcd::EtcdTls {
        ca_pem: read(ca, "--etcd-ca-cert", public)?,
        client,
    }))
}

/// A duration flag that must be a number of seconds above 0.
fn seconds_above_zero(secs: f64, flag: &str) -> anyhow::Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag}: a number of seconds above 0"))
}

/// A lifetime option: `None` for the directory's default.
fn ttl(expires: Option<&str>) -> anyhow::Result<Option<Option<f64>>> {
    expires
        .map(|e| daemon::auth::parse_ttl(e).map_err(|m| anyhow::anyhow!("--expires {m}")))
        .transpose()
}

fn expiry(at: Option<f64>) -> String {
    match at {
        None => "never expires".into(),
        Some(t) => format!("expires in {:.1} days", (t - daemon::db::now()) / 86400.0),
    }
}

/// Runs `gantry user ...`.
pub fn user(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            name,
            roles,
            tenants,
            clearance,
            expires,
            via,
            dir,
        } => {
            let user = User {
                name,
                roles,
                tenants,
                clearance,
            };
            match &via.url {
                Some(url) => {
                    let body = serde_json::json!({"name": user.name, "roles": user.roles,
                        "tenants": user.tenants, "clearance": user.clearance, "expires": expires});
                    let v = call(&via.client(url)?, "POST", "/v1/users", Some(body))?;
                    print_issued(&v)
                }
                None => user_add(&user, expires.as_deref(), &dir),
            }
        }
        UserCommand::Token {
            name,
            expires,
            via,
            dir,
        } => {
            if let Some(url) = &via.url {
                let body = serde_json::json!({ "expires": expires });
                let path = format!("/v1/users/{name}/tokens");
                let v = call(&via.client(url)?, "POST", &path, Some(body))?;
                return print_issued(&v);
            }
            let ttl = ttl(expires.as_deref())?;
            let d = open_offline(&dir, "gantry user token")?;
            let issued = d.issue_token(&name, ttl)?;
            d.close()?;
            eprintln!(
                "token {} for {name} ({})",
                issued.id,
                expiry(issued.expires_at)
            );
            println!("{}", issued.token);
            Ok(())
        }
        UserCommand::Revoke {
            name,
            token,
            via,
            dir,
        } => user_revoke(&name, token, &via, &dir),
        UserCommand::Tokens { name, dir } => user_tokens(name.as_deref(), &dir),
        UserCommand::Ttl { duration, dir } => {
            let ttl = daemon::auth::parse_ttl(&duration).map_err(|m| anyhow::anyhow!(m))?;
            let d = open_offline(&dir, "gantry user ttl")?;
            d.set_token_ttl(ttl)?;
            d.close()?;
            println!("new tokens {}", expiry(ttl.map(|t| daemon::db::now() + t)));
            Ok(())
        }
    }
}

/// Opens the data directory to change users and tokens, saying what to do when a daemon holds
/// it.
fn open_offline(dir: &super::store::DataDir, what: &str) -> anyhow::Result<DataDir> {
    let root = dir.path()?;
    DataDir::open(&root, what).map_err(|e| match e {
        gantry_daemon::datadir::DataDirError::Store(gantry::storage::StoreError::Locked {
            holder,
            ..
        }) => anyhow::anyhow!(
            "{}: held by {holder}; users and tokens are changed offline: stop it \
             (`kill -TERM {}`), run this again, and start it",
            root.display(),
            holder.pid
        ),
        e => e.into(),
    })
}

fn user_add(user: &User, expires: Option<&str>, dir: &super::store::DataDir) -> anyhow::Result<()> {
    let ttl = ttl(expires)?;
    let d = open_offline(dir, "gantry user add")?;
    let issued = d.add_user(user, ttl)?;
    d.close()?;
    eprintln!(
        "token {} for {} ({})",
        issued.id,
        user.name,
        expiry(issued.expires_at)
    );
    println!("{}", issued.token);
    Ok(())
}

/// `gantry user revoke`: offline, or through the daemon that holds the directory.
fn user_revoke(
    name: &str,
    token: Option<String>,
    via: &ViaDaemon,
    dir: &super::store::DataDir,
) -> anyhow::Result<()> {
    let query = token
        .as_ref()
        .map(|t| format!("?token={t}"))
        .unwrap_or_default();
    let path = format!("/v1/users/{name}/revoke{query}");
    let through = |client: &Client| -> anyhow::Result<Vec<String>> {
        let v = call(client, "POST", &path, None)?;
        serde_json::from_value(v["revoked"].clone()).context("the daemon's answer")
    };
    let revoked: Vec<String> = if let Some(url) = &via.url {
        through(&via.client(url)?)?
    } else {
        revoke_here(name, token.as_deref(), via, dir, through)?
    };
    println!(
        "revoked {} token(s) of {name}: {}",
        revoked.len(),
        revoked.join(", ")
    );
    Ok(())
}

/// The answer of `POST /v1/users` or `.../tokens`: the token on stdout, the rest on stderr.
fn print_issued(v: &serde_json::Value) -> anyhow::Result<()> {
    let (Some(token), Some(id), Some(user)) =
        (v["token"].as_str(), v["id"].as_str(), v["user"].as_str())
    else {
        anyhow::bail!("the daemon's answer has no token: {v}");
    };
    eprintln!(
        "token {id} for {user} ({})",
        expiry(v["expires_at"].as_f64())
    );
    println!("{token}");
    Ok(())
}

/// A revocation in the data directory, or through the daemon that holds it.
fn revoke_here(
    name: &str,
    token: Option<&str>,
    via: &ViaDaemon,
    dir: &super::store::DataDir,
    through: impl Fn(&Client) -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<Vec<String>> {
    let root = dir.path()?;
    Ok(match DataDir::open(&root, "gantry user revoke") {
        Ok(d) => {
            let revoked = d.revoke(name, token)?;
            d.close()?;
            revoked
        }
        Err(gantry_daemon::datadir::DataDirError::Store(gantry::storage::StoreError::Locked {
            holder,
            ..
        })) if holder.url.is_some() => {
            if via.admin_token.is_none() {
                anyhow::bail!(
                    "{}: held by {holder}; to revoke through it, give an admin's token \
                     (in GANTRY_TOKEN)",
                    root.display()
                );
            }
            // The daemon that holds this directory, on this machine.
            let here = ViaDaemon {
                insecure: true,
                ..via.clone()
            };
            let url = holder.url.clone().unwrap_or_default();
            through(&here.client(&url)?)?
        }
        Err(e) => return Err(e.into()),
    })
}

/// `gantry user tokens`: ids, age and state, never the tokens.
fn user_tokens(name: Option<&str>, dir: &super::store::DataDir) -> anyhow::Result<()> {
    let db = daemon::datadir::open_db(&dir.path()?)?;
    let mut t = Table::new(&["id", "user", "created", "state"]);
    let now = daemon::db::now();
    for token in db.tokens(name)? {
        let state = match (token.revoked_at, token.expires_at) {
            (Some(_), _) => "revoked".to_string(),
            (None, Some(e)) if e <= now => "expired".to_string(),
            (None, e) => expiry(e),
        };
        let age = (now - token.created_at) / 86400.0;
        t.row(vec![
            token.id,
            token.user,
            format!("{age:.1} days ago"),
            state,
        ]);
    }
    print!("{t}");
    Ok(())
}

pub(super) fn call(
    client: &Client,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    across(client, |one| call_once(one, method, path, body.clone()))
}

/// A request whose body and answer are bytes (a dataset, a checkpoint), to the control plane as
/// [`call`] finds it: the response of a success, its body unread; else the daemon's message.
pub(super) fn call_bytes(
    client: &Client,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
    across(client, |one| {
        let response = send_once(one, method, path, body.map(Payload::Bytes), None)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let url = format!("{}{path}", one.url.trim_end_matches('/'));
        let value: serde_json::Value = response
            .into_body()
            .read_json()
            .with_context(|| format!("{url}: the response is not JSON"))?;
        Err(failure(status, &value))
    })
}

/// Runs `once` against each of `client`'s URLs in turn while one cannot be reached; a
/// follower's answer naming its leader is asked of the leader, once.
fn across<T>(client: &Client, once: impl Fn(&Client) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let urls: Vec<&str> = client
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let mut last = None;
    for url in &urls {
        let one = Client {
            url: url.to_string(),
            ..client.clone()
        };
        match once(&one) {
            // A follower of a replicated control plane names its leader: ask it, once.
            Err(e) => match e.downcast_ref::<Follower>() {
                Some(f) if f.leader != one.url => {
                    let leader = Client {
                        url: f.leader.clone(),
                        ..client.clone()
                    };
                    match once(&leader) {
                        // A leader that died: the lease names it a while longer.
                        Err(e) if e.is::<Unreachable>() => last = Some(e),
                        answer => return answer,
                    }
                }
                // A replica that cannot be reached: the next one may be.
                _ if e.is::<Unreachable>() => last = Some(e),
                _ => return Err(e),
            },
            answer => return answer,
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("--url: no URL given")))
}

/// Nothing answered at a URL (refused, timed out, a broken connection).
#[derive(Debug)]
struct Unreachable(String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot reach {}", self.0)
    }
}

impl std::error::Error for Unreachable {}

/// A follower's answer: it does not lead, `leader` does.
#[derive(Debug)]
struct Follower {
    leader: String,
    message: String,
}

impl std::fmt::Display for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Follower {}

/// One request: its JSON answer, or an error with the daemon's message ([`Follower`] when a
/// follower named its leader).
fn call_once(
    client: &Client,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let url = format!("{}{path}", client.url.trim_end_matches('/'));
    let response = send_once(
        client,
        method,
        path,
        body.map(Payload::Json),
        client.timeout,
    )?;
    let status = response.status();
    let value: serde_json::Value = response
        .into_body()
        .read_json()
        .with_context(|| format!("{url}: the response is not JSON"))?;
    if !status.is_success() {
        return Err(failure(status, &value));
    }
    Ok(value)
}

/// A request's body.
enum Payload<'a> {
    Json(serde_json::Value),
    Bytes(&'a [u8]),
}

/// One request to one URL: its response, whatever its status ([`Unreachable`] when none came);
/// the whole of it, answer read, within `within` when given.
fn send_once(
    client: &Client,
    method: &str,
    path: &str,
    body: Option<Payload<'_>>,
    within: Option<std::time::Duration>,
) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
    client.check_transport()?;
    let url = format!("{}{path}", client.url.trim_end_matches('/'));
    let agent = agent(client, within)?;
    let auth = format!("Bearer {}", client.token);
    let octets = "application/octet-stream";
    // The HTTP client starts a thread to resolve a name and panics when it cannot (a machine
    // out of tasks): a failed request, not a dead agent (found by a review: a tenant's fork
    // bomb stopped this machine's agent, and every tenant's GPUs left service).
    let send = std::panic::AssertUnwindSafe(|| match (method, body) {
        ("POST", Some(Payload::Json(b))) => {
            agent.post(&url).header("Authorization", &auth).send_json(b)
        }
        ("POST", _) => agent.post(&url).header("Authorization", &auth).send_empty(),
        ("PUT", Some(Payload::Json(b))) => {
            agent.put(&url).header("Authorization", &auth).send_json(b)
        }
        ("PUT", Some(Payload::Bytes(b))) => agent
            .put(&url)
            .header("Authorization", &auth)
            .header("Content-Type", octets)
            .send(b),
        _ => agent.get(&url).header("Authorization", &auth).call(),
    });
    match std::panic::catch_unwind(send) {
        Ok(sent) => sent.map_err(|e| anyhow::Error::new(e).context(Unreachable(url.clone()))),
        Err(_) => Err(anyhow::anyhow!(
            "the request to {url} failed: the HTTP client panicked (out of threads?)"
        )
        .context(Unreachable(url.clone()))),
    }
}

/// The error of a failed request: the daemon's message and reasons ([`Follower`] when a
/// follower named its leader).
fn failure(status: ureq::http::StatusCode, value: &serde_json::Value) -> anyhow::Error {
    let mut message = format!(
        "{} {}: {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        value["error"].as_str().unwrap_or("error")
    );
    if let Some(reasons) = value["reasons"].as_array() {
        for r in reasons {
            message += &format!("\n  - {}", r.as_str().unwrap_or_default());
        }
    }
    if let (503, Some(leader)) = (status.as_u16(), value["leader"].as_str()) {
        let leader = leader.to_string();
        return Follower { leader, message }.into();
    }
    Answered {
        status: status.as_u16(),
        message,
    }
    .into()
}

/// The control plane's answer to a request it did not carry out: its status and message.
#[derive(Debug)]
struct Answered {
    status: u16,
    message: String,
}

impl std::fmt::Display for Answered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Answered {}

/// The HTTP status a control plane answered a failed request with, if one answered.
fn answered(e: &anyhow::Error) -> Option<u16> {
    match e.downcast_ref::<Answered>() {
        Some(a) => Some(a.status),
        None => e.downcast_ref::<Follower>().map(|_| 503),
    }
}

/// A client, trusting `ca_cert` (PEM) for HTTPS when given, presenting the client certificate
/// when given. Built for each request on purpose: an agent runs for months while its
/// certificates are rotated under it (cert-manager and the like renew them in place), and
/// reading three small files a heartbeat costs far less than an agent shut out by an expired one.
/// Each request, answer included, takes at most `within` when given.
fn agent(client: &Client, within: Option<std::time::Duration>) -> anyhow::Result<ureq::Agent> {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(within);
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(path) = &client.ca_cert {
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&pem_certs(path)?));
    }
    if let (Some(cert), Some(key)) = (&client.client_cert, &client.client_key) {
        let pem = gantry::durable::read_private(key, gantry_daemon::tls::MAX_PEM)
            .with_context(|| format!("--client-key {}", key.display()))?;
        let private = ureq::tls::parse_pem(&pem)
            .find_map(|item| match item {
                Ok(ureq::tls::PemItem::PrivateKey(k)) => Some(k),
                _ => None,
            })
            .with_context(|| format!("{}: no PEM private key", key.display()))?;
        let chain = pem_certs(cert)?;
        tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, private)));
    }
    if client.ca_cert.is_some() || client.client_cert.is_some() {
        config = config.tls_config(tls.build());
    }
    Ok(config.build().new_agent())
}

/// The certificates of PEM file `path` (at least one).
fn pem_certs(path: &std::path::Path) -> anyhow::Result<Vec<ureq::tls::Certificate<'static>>> {
    let pem = gantry::durable::read_bounded(path, gantry_daemon::tls::MAX_PEM)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c.to_owned()),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        anyhow::bail!("{}: no PEM certificate", path.display());
    }
    Ok(certs)
}

/// Runs `gantry submit`.
pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let mut body = serde_json::json!({"tenant": args.tenant, "gpus": args.gpus});
    if let Some(id) = args.id {
        body["id"] = id.into();
    }
    if let Some(m) = args.memory_per_gpu_mib {
        body["memory_per_gpu_mib"] = m.into();
    }
    if let Some(path) = &args.train {
        let text = gantry::plugin::files::read_text(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        body["train"] = text.into();
    }
    if !args.command.is_empty() {
        let mut env = serde_json::Map::new();
        for pair in &args.env {
            let (name, value) = pair
                .split_once('=')
                .with_context(|| format!("--env {pair}: expected NAME=VALUE"))?;
            env.insert(name.to_string(), value.into());
        }
        body["command"] = serde_json::json!({"argv": args.command, "env": env});
        if let Some(cwd) = args.cwd {
            body["command"]["cwd"] = cwd.into();
        }
        if let Some(w) = args.wall_time_s {
            body["command"]["wall_time_s"] = w.into();
        }
        if let Some(m) = args.memory_mib {
            body["command"]["memory_mib"] = m.into();
        }
        if let Some(c) = args.cpus {
            body["command"]["cpus"] = c.into();
        }
        if let Some(d) = args.disk_mib {
            body["command"]["disk_mib"] = d.into();
        }
    }
    let job = call(&args.client, "POST", "/v1/jobs", Some(body))?;
    println!("{}", job["id"].as_str().unwrap_or_default());
    Ok(())
}

/// Runs `gantry agent`: heartbeats until stopped, and runs the command jobs the control plane
/// hands it. A failed heartbeat is reported and retried; once no heartbeat has succeeded for a
/// whole lease, the control plane has given its runs up, so it stops them itself. A run the
/// control plane no longer lists (it gave the job to another attempt) is stopped too.
pub fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let on_stdout = |line: &str| {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{line}");
    };
    let mut devices = super::agent_devices::Devices::new(args.emulate_gpus, args.devices.clone())?;
    let quit = std::sync::atomic::AtomicBool::new(false);
    run_agent_until(&args, &mut devices, &quit, &on_stdout)
}

/// The longest this machine's agent waits before it starts again after it stopped.
const AGENT_RESTART_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs this machine's agent inside `gantry up` until `quit` is set, starting it again whenever
/// it stops otherwise (an error, a panic): found by a review, one panic of its loop stopped it
/// for good while the daemon served on, every GPU of the machine out of service at its lease's
/// end and no job run again until a restart. A life started again kills what the last one's
/// runs left (their attempts are fenced).
fn supervise_agent(
    args: &AgentArgs,
    devices: &mut super::agent_devices::Devices,
    quit: &std::sync::atomic::AtomicBool,
) {
    let on_stderr = |line: &str| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{line}");
    };
    let first = std::time::Duration::from_secs(1);
    supervise(quit, &on_stderr, first, || {
        run_agent_until(args, devices, quit, &on_stderr)
    });
}

/// Runs `life` until it returns with `quit` set, again after each other end (an error, a
/// panic, a return before `quit`), said through `say`: `first` after a stop, twice as long after
/// each stop that came within a minute of its start, at most [`AGENT_RESTART_MAX`].
fn supervise(
    quit: &std::sync::atomic::AtomicBool,
    say: &dyn Fn(&str),
    first: std::time::Duration,
    mut life: impl FnMut() -> anyhow::Result<()>,
) {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let mut wait = first;
    loop {
        let started = Instant::now();
        let why = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut life)) {
            Ok(Ok(())) if quit.load(Ordering::SeqCst) => return,
            Ok(Ok(())) => "it returned".to_string(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "it panicked".to_string(),
        };
        if started.elapsed() > Duration::from_secs(60) {
            wait = first;
        }
        say(&format!(
            "this machine's agent stopped ({why}); starting it again in {:.1} s",
            wait.as_secs_f64()
        ));
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if quit.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10).min(wait));
        }
        wait = (wait * 2).min(AGENT_RESTART_MAX);
    }
}

/// Runs a node's agent, reporting `devices`, until `quit` is set; then its runs are stopped (their ends reported,
/// the control plane still serving) and it returns. What it serves is said through `say`
/// (never a panic: a closed output must not end the agent).
fn run_agent_until(
    args: &AgentArgs,
    devices: &mut super::agent_devices::Devices,
    quit: &std::sync::atomic::AtomicBool,
    say: &dyn Fn(&str),
) -> anyhow::Result<()> {
    use gantry_daemon::nodes::HandedRun;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    let period = seconds_above_zero(args.heartbeat_s, "--heartbeat-s")?;
    let training = match args.training.clone() {
        Some(shared) => shared,
        None => args.train.training()?,
    };
    let limits = args.jobs.limits()?;
    // The agent's cgroups are its node's at its control plane: a restarted agent kills what
    // its previous life left running, and never another agent's.
    let identity = format!("agent\n{}\n{}", args.client.url, args.node);
    let cgroups = gantry_daemon::cgroup::Cgroups::detect(&gantry_daemon::cgroup::scope_for(
        identity.as_bytes(),
    ));
    if let Some(c) = cgroups.as_ref() {
        let killed = c.reap_leftovers();
        if killed > 0 {
            eprintln!(
                "node {}: killed {killed} processes an earlier agent's runs left",
                args.node
            );
        }
        c.sweep_dead_scopes();
    }
    // Likewise the scratch directories of runs whose agent (or daemon) was killed.
    gantry_daemon::scratch::sweep_dead_owners();
    // Each run's memory bound, not one count for the whole machine, holds its files.
    gantry_daemon::kernelcounts::lift_for_runs(cgroups.as_ref(), &limits);
    let path = format!("/v1/nodes/{}/heartbeat", args.node);
    let mut serving: Option<serde_json::Value> = None;
    let mut runs: std::collections::HashMap<(String, u64), Arc<RunFlags>> = Default::default();
    // Attempts that ran here and ended: never started again, whatever a heartbeat lists.
    let mut done: std::collections::HashSet<(String, u64)> = Default::default();
    let ends: Arc<Ends> = Default::default();
    let node = Arc::new(AgentNode {
        client: args.client.clone(),
        name: args.node.clone(),
        limits,
        training,
        cgroups,
        emulated: devices.emulated(),
        ends: ends.clone(),
        pci: Default::default(),
        lease: Lease::new(std::time::Duration::from_secs(10)),
    });
    loop {
        if quit.load(Ordering::SeqCst) {
            for flags in runs.values() {
                flags.stop.store(true, Ordering::SeqCst);
            }
            // A command gets its grace after SIGTERM; a training run stops after its step.
            let deadline = std::time::Instant::now()
                + std::time::Duration::from_secs_f64(args.jobs.kill_grace_s.max(0.0) + 10.0);
            while runs.values().any(|s| Arc::strong_count(s) > 1)
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            return Ok(());
        }
        let gpus = devices.report();
        *node.pci.lock().unwrap_or_else(|e| e.into_inner()) = gpus
            .iter()
            .filter_map(|g| Some((g.ordinal, g.pci_bus_id.clone()?)))
            .collect();
        let mut body = serde_json::json!({"gpus": gpus, "emulated": devices.emulated()});
        if let Some(rack) = &args.rack {
            body["rack"] = rack.as_str().into();
        }
        let bounded = Client {
            timeout: Some(node.lease.call_bound()),
            ..args.client.clone()
        };
        let sent = std::time::Instant::now();
        match call(&bounded, "POST", &path, Some(body)) {
            Ok(answer) => {
                if let Some(s) = answer["lease_s"].as_f64().filter(|s| s.is_finite()) {
                    let lease = std::time::Duration::from_secs_f64(s.clamp(0.0, 86_400.0));
                    node.lease.renew(sent, lease);
                }
                if serving.as_ref() != Some(&answer["serving"]) {
                    say(&format!(
                        "node {}: serving {} (lease {} s)",
                        args.node, answer["serving"], answer["lease_s"]
                    ));
                    serving = Some(answer["serving"].clone());
                }
                let handed: Vec<HandedRun> =
                    serde_json::from_value(answer["runs"].clone()).unwrap_or_default();
                let listed: std::collections::HashSet<(String, u64)> =
                    handed.iter().map(|r| (r.job.clone(), r.attempt)).collect();
                // A run it no longer lists was given up (requeued, perhaps running elsewhere
                // already): killed at once, not stopped with a grace.
                for (key, flags) in &runs {
                    if !listed.contains(key) {
                        flags.fence.store(true, Ordering::SeqCst);
                        flags.stop.store(true, Ordering::SeqCst);
                    }
                }
                done.retain(|key| listed.contains(key));
                resend_ends(&args.client, &args.node, &ends, &listed);
                for run in handed {
                    let key = (run.job.clone(), run.attempt);
                    if done.contains(&key) {
                        continue;
                    }
                    if let Some(flags) = runs.get(&key) {
                        if run.stop {
                            flags.stop.store(true, Ordering::SeqCst);
                        }
                        continue;
                    }
                    if run.stop {
                        continue;
                    }
                    // A run still ending here keeps its GPUs until it has: the new one starts
                    // at a later heartbeat (it stays listed), never beside it.
                    let busy = runs.values().any(|other| {
                        Arc::strong_count(other) > 1
                            && other.gpus.iter().any(|g| run.gpu_ids.contains(g))
                    });
                    if busy {
                        continue;
                    }
                    let flags = Arc::new(RunFlags {
                        gpus: run.gpu_ids.clone(),
                        ..RunFlags::default()
                    });
                    runs.insert(key.clone(), flags.clone());
                    let node = node.clone();
                    let attempt = run.attempt;
                    let spawned = std::thread::Builder::new()
                        .name(format!("gantry-agent-run-{attempt}"))
                        .spawn(move || agent_run(&node, &run, &flags));
                    // A machine out of tasks: the run starts at a later heartbeat; the agent
                    // (and every other run) goes on.
                    if let Err(e) = spawned {
                        eprintln!("run {} (attempt {attempt}): not started now: {e}", key.0);
                        runs.remove(&key);
                    }
                }
            }
            Err(e) => {
                eprintln!("node {}: heartbeat failed: {e:#}", args.node);
                serving = None;
            }
        }
        // Past its lease the control plane may have given these runs up: each run kills itself
        // when it sees the lease lapse (`AgentSink::fenced`); this marks the ones between
        // checks, so that none is started again.
        if node.lease.lapsed() {
            for flags in runs.values() {
                flags.fence.store(true, Ordering::SeqCst);
                flags.stop.store(true, Ordering::SeqCst);
            }
        }
        // Runs that ended (their thread dropped its share of the flags) are forgotten.
        runs.retain(|key, flags| {
            let going = Arc::strong_count(flags) > 1;
            if !going {
                done.insert(key.clone());
            }
            going
        });
        std::thread::sleep(period);
    }
}

/// The reports of runs' ends, by (job, attempt), kept while the control plane lists the
/// attempt: a report can be lost on the way, and a leader can answer one and go down before
/// its successor reads what it recorded. An end is over for the control plane only once it
/// stops listing the run.
type Ends = std::sync::Mutex<std::collections::HashMap<(String, u64), serde_json::Value>>;

/// Sends again the ends of the attempts the control plane still lists (`listed`); the others
/// it recorded or gave up, and their ends are dropped, as are those it refuses (409: an end it
/// has, or a run it gave up).
fn resend_ends(
    client: &Client,
    node: &str,
    ends: &Ends,
    listed: &std::collections::HashSet<(String, u64)>,
) {
    let mut ends = ends.lock().unwrap_or_else(|e| e.into_inner());
    ends.retain(|key, _| listed.contains(key));
    let path = format!("/v1/nodes/{node}/runs");
    ends.retain(
        |_, body| match call(client, "POST", &path, Some(body.clone())) {
            Ok(_) => true,
            Err(e) => !refused(&e),
        },
    );
}

/// Whether a failed report was refused as a stale run's (409), not lost on the way.
fn refused(e: &anyhow::Error) -> bool {
    answered(e) == Some(409)
}

/// Whether the control plane did not judge a request: no answer came, or not all of it (the
/// connection cut off mid-answer), or it failed itself (5xx). Such a request may or may not
/// have been carried out; a 4xx says it was not, and why.
fn unjudged(e: &anyhow::Error) -> bool {
    !matches!(answered(e), Some(400..=499))
}

/// Whether a request failed for want of a control plane to answer it (none reachable, a
/// follower whose leader is gone, a 502, 503 or 504 on the way): worth asking again shortly,
/// as while a replicated control plane elects a new leader. A 500 is the control plane's own
/// failure, and asking again would not mend it.
pub(super) fn transient(e: &anyhow::Error) -> bool {
    e.is::<Unreachable>() || matches!(answered(e), Some(502..=504))
}

/// Where an agent's run reports: the control plane, as the run's attempt. A refused report
/// (the attempt is stale) stops the run.
pub(super) struct AgentSink<'a> {
    client: &'a Client,
    path: String,
    job: &'a str,
    attempt: u64,
    stop: &'a std::sync::atomic::AtomicBool,
    /// The run's fence and its agent's lease, for a run of an agent's loop.
    fence: Option<(&'a std::sync::atomic::AtomicBool, &'a Lease)>,
    /// Until when a fenced run's reports are sent again while no control plane answers: see
    /// [`AgentSink::may_retry`].
    fenced_retries: std::sync::Mutex<Option<std::time::Instant>>,
    /// This run's reports' ids: this instance of the run, and a report's number in it.
    instance: String,
    reports: std::sync::atomic::AtomicU64,
}

/// Until when an agent's runs may go on: its lease as the agent counts it, from when it *sent*
/// its last answered heartbeat (the control plane counts from when that arrived, later), less a
/// margin for killing them. Past it the control plane may give their jobs to other nodes, so
/// they are killed at once, however their heartbeats or reports are stuck meanwhile.
#[derive(Debug)]
pub(super) struct Lease(std::sync::Mutex<(std::time::Instant, std::time::Duration)>);

impl Lease {
    /// A lease of `lease` from now.
    pub(super) fn new(lease: std::time::Duration) -> Self {
        let lease_start = std::time::Instant::now();
        Self(std::sync::Mutex::new((
            lease_start + lease.saturating_sub(Self::margin(lease)),
            lease,
        )))
    }

    /// The control plane answered a heartbeat sent at `sent` with a lease of `lease`.
    pub(super) fn renew(&self, sent: std::time::Instant, lease: std::time::Duration) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) =
            (sent + lease.saturating_sub(Self::margin(lease)), lease);
    }

    /// The lease's length, as the control plane last gave it.
    fn length(&self) -> std::time::Duration {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    /// When the runs must be dead.
    pub(super) fn lapses_at(&self) -> std::time::Instant {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Whether the runs must be dead by now.
    pub(super) fn lapsed(&self) -> bool {
        std::time::Instant::now() >= self.0.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// How long one request to the control plane may take: well inside the margin, so a run
    /// whose report is stuck still sees its lease lapse in time.
    pub(super) fn call_bound(&self) -> std::time::Duration {
        Self::margin(self.0.lock().unwrap_or_else(|e| e.into_inner()).1)
    }

    /// As long as one request may take ([`Self::call_bound`]): a run stuck in a report sees the
    /// lapse no later than the control plane's lease ends. No more: past its lapse a run stops
    /// reporting (its output then is lost), and a failover of the control plane near a lease
    /// long would cost more runs than it must.
    fn margin(lease: std::time::Duration) -> std::time::Duration {
        (lease / 8).max(std::time::Duration::from_millis(100))
    }
}

impl<'a> AgentSink<'a> {
    /// The sink of `run` on `node`, stopped through `stop`.
    pub(super) fn new(
        client: &'a Client,
        node: &str,
        run: &'a gantry_daemon::nodes::HandedRun,
        stop: &'a std::sync::atomic::AtomicBool,
    ) -> Self {
        Self {
            client,
            path: format!("/v1/nodes/{node}/runs"),
            job: &run.job,
            attempt: run.attempt,
            stop,
            fence: None,
            fenced_retries: Default::default(),
            // Unique however often the attempt runs here (an agent started again): 64 random bits.
            instance: gantry::audit::new_decision_id()[..16].to_string(),
            reports: Default::default(),
        }
    }

    /// The sink, its run killed at once when `fence` is set or `lease` lapses.
    pub(super) fn fenced_by(
        mut self,
        fence: &'a std::sync::atomic::AtomicBool,
        lease: &'a Lease,
    ) -> Self {
        self.fence = Some((fence, lease));
        self
    }

    /// Whether the run was fenced off: the control plane stopped listing it, or the agent's
    /// lease lapsed (then it stays fenced, whatever later heartbeats say).
    pub(super) fn fenced(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let Some((fence, lease)) = self.fence else {
            return false;
        };
        if !fence.load(SeqCst) && lease.lapsed() {
            fence.store(true, SeqCst);
        }
        fence.load(SeqCst)
    }

    /// The control plane client, each request bounded by the lease.
    fn client(&self) -> std::borrow::Cow<'a, Client> {
        match self.fence {
            Some((_, lease)) => std::borrow::Cow::Owned(Client {
                timeout: Some(lease.call_bound()),
                ..self.client.clone()
            }),
            None => std::borrow::Cow::Borrowed(self.client),
        }
    }

    /// A report of `event`, with its id: sent again, it counts once.
    fn body(&self, event: serde_json::Value) -> serde_json::Value {
        let n = 1 + self
            .reports
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut body = event;
        body["job"] = self.job.into();
        body["attempt"] = self.attempt.into();
        body["id"] = format!("{}-{n}", self.instance).into();
        body
    }

    /// Reports `event`, and stops the run if the answer says so.
    pub(super) fn report_stop(&self, event: serde_json::Value) {
        if self.report(event) {
            self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Adds `entry` to the job's log.
    pub(super) fn log_line(&self, entry: &str) {
        self.report_stop(serde_json::json!({"event": "log", "entry": entry}));
    }

    /// Whether the run should stop.
    pub(super) fn stopping(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::SeqCst) || self.fenced()
    }

    /// Reports `event`; whether the run should stop (asked to, or its reports are refused).
    /// While no control plane answers (a replicated one electing a new leader, say), it is
    /// sent again until the run is stopped (the agent stops its runs once its heartbeats have
    /// failed for a whole lease), so a run's output outlives a failover. One the control plane
    /// failed at or whose answer was cut off (its leader killed, say) may have counted or not:
    /// it is sent again too, for one lease at most, and its id keeps it once. Found by CI (the
    /// kill loop): a succeeded job's output line was lost, sent once to a dying leader.
    fn report(&self, event: serde_json::Value) -> bool {
        let body = self.body(event);
        let client = self.client();
        let mut failing_until = None;
        loop {
            match call(&client, "POST", &self.path, Some(body.clone())) {
                Ok(answer) => return answer["stop"].as_bool().unwrap_or(false),
                // No control plane to answer: as [`AgentSink::retrying`]; one that failed at
                // it: for one lease from the first such failure.
                Err(e)
                    if unjudged(&e)
                        && self.may_retry()
                        && (transient(&e) || self.within(&mut failing_until)) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) => {
                    eprintln!(
                        "run {} (attempt {}): report failed: {e:#}",
                        self.job, self.attempt
                    );
                    return refused(&e);
                }
            }
        }
    }

    /// Whether a report the control plane keeps failing at is still worth sending: for one
    /// lease (or a minute, unfenced) from the first failure, kept in `until`.
    fn within(&self, until: &mut Option<std::time::Instant>) -> bool {
        let bound = match self.fence {
            Some((_, lease)) => lease.length(),
            None => std::time::Duration::from_secs(60),
        };
        std::time::Instant::now() < *until.get_or_insert_with(|| std::time::Instant::now() + bound)
    }

    /// Runs `request` again, shortly after, while it fails for want of a control plane to
    /// answer ([`transient`]) and [`AgentSink::may_retry`] says so.
    pub(super) fn retrying<T>(&self, request: impl Fn() -> anyhow::Result<T>) -> anyhow::Result<T> {
        loop {
            match request() {
                Err(e) if transient(&e) && self.may_retry() => {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                done => return done,
            }
        }
    }

    /// Whether a report no control plane answered is worth sending again: not once the run was
    /// told to stop (or its reports refused); while it runs, yes (the agent fences its runs
    /// once its heartbeats have failed for its lease); once fenced, for one lease more in all,
    /// no longer. A fenced run was killed, but what it wrote before and its end are still
    /// wanted when the control plane, counting its lease from later than the agent does, still
    /// holds the attempt current (a failover near the lease's end): the control plane decides,
    /// refusing a stale attempt's reports. Giving up at once lost a succeeded job's last lines
    /// (CI, the control plane's kill loop).
    ///
    /// Fenced first: its agent's loop stops a run whose lease lapsed as it fences it, and a
    /// stop checked first gave up on a fenced run's reports at once after all (CI, the kill loop
    /// again: a succeeded job's first line lost, its end kept).
    fn may_retry(&self) -> bool {
        let Some((_, lease)) = self.fence.filter(|_| self.fenced()) else {
            return !self.stop.load(std::sync::atomic::Ordering::SeqCst);
        };
        let mut until = self
            .fenced_retries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let until = *until.get_or_insert_with(|| std::time::Instant::now() + lease.length());
        std::time::Instant::now() < until
    }
}

impl gantry_daemon::command::RunSink for AgentSink<'_> {
    fn log(&mut self, entry: &str) {
        self.log_line(entry);
    }

    fn stopping(&self) -> bool {
        AgentSink::stopping(self)
    }

    fn fenced(&self) -> bool {
        AgentSink::fenced(self)
    }

    fn lease_until(&self) -> Option<std::time::Instant> {
        let (_, lease) = self.fence?;
        Some(match self.fenced() {
            true => std::time::Instant::now(),
            false => lease.lapses_at(),
        })
    }
}

/// What every run on an agent's node shares.
struct AgentNode {
    client: Client,
    /// The node's name.
    name: String,
    limits: gantry_daemon::command::CommandLimits,
    /// What its training runs are held to.
    training: Training,
    cgroups: Option<gantry_daemon::cgroup::Cgroups>,
    /// Whether its GPUs are emulated.
    emulated: bool,
    /// Its runs' ends, sent again while the control plane lists their runs.
    ends: std::sync::Arc<Ends>,
    /// Its GPUs' PCI addresses, by ordinal, as last reported.
    pci: std::sync::Mutex<std::collections::HashMap<u32, String>>,
    /// Its lease, as it counts it.
    lease: Lease,
}

/// What an agent's loop tells one of its runs.
#[derive(Debug, Default)]
struct RunFlags {
    /// Stop (a cancel, a lost GPU, the agent stopping): a command gets its grace.
    stop: std::sync::atomic::AtomicBool,
    /// Fenced off: killed at once.
    fence: std::sync::atomic::AtomicBool,
    /// The GPUs it holds until its thread ends.
    gpus: Vec<String>,
}

impl AgentNode {
    /// The device nodes of run `run`'s GPUs, the only GPU nodes it may open: none for emulated
    /// GPUs (they run on the CPU); for real ones, each GPU's minor as the driver names it for
    /// its PCI address (a GPU whose node cannot be named fails the run: it could not open it).
    fn gpu_nodes(
        &self,
        run: &gantry_daemon::nodes::HandedRun,
    ) -> Result<gantry_daemon::gpu_nodes::GpuNodes, String> {
        use gantry_daemon::gpu_nodes::{DRIVER_GPUS, GpuNodes, minor_of};
        if self.emulated {
            return Ok(GpuNodes::none());
        }
        let pci = self.pci.lock().unwrap_or_else(|e| e.into_inner());
        let minors = run.gpu_ids.iter().map(|id| {
            let bus = id
                .rsplit_once("/gpu")
                .and_then(|(_, k)| pci.get(&k.parse::<u32>().ok()?))
                .ok_or_else(|| format!("GPU {id}: this node reports no PCI address for it"))?;
            minor_of(std::path::Path::new(DRIVER_GPUS), bus)
                .map_err(|e| format!("GPU {id}'s device node: {e}"))
        });
        GpuNodes::only(minors.collect::<Result<_, _>>()?)
    }

    /// The job log's line naming the devices run `run` has: its GPUs, and their PCI addresses
    /// where the node knows them.
    fn devices_line(&self, run: &gantry_daemon::nodes::HandedRun) -> String {
        let pci = self.pci.lock().unwrap_or_else(|e| e.into_inner());
        let addresses: Vec<&str> = run
            .gpu_ids
            .iter()
            .filter_map(|g| g.rsplit_once("/gpu")?.1.parse::<u32>().ok())
            .filter_map(|ordinal| pci.get(&ordinal).map(String::as_str))
            .collect();
        let at = match addresses.len() {
            0 if self.emulated => "emulated, run on the CPU".to_string(),
            0 => "no PCI address known".to_string(),
            _ => format!("PCI {}", addresses.join(", ")),
        };
        format!(
            "runs on node {}: GPUs {} ({at})",
            self.name,
            run.gpu_ids.join(", ")
        )
    }
}

/// Runs one handed run to its end and reports it.
fn agent_run(agent: &AgentNode, run: &gantry_daemon::nodes::HandedRun, flags: &RunFlags) {
    let (client, node, ends) = (&agent.client, agent.name.as_str(), &*agent.ends);
    let mut sink =
        AgentSink::new(client, node, run, &flags.stop).fenced_by(&flags.fence, &agent.lease);
    if sink.report(serde_json::json!({"event": "started"})) {
        return;
    }
    // A run whose thread panics ends failed, its GPUs freed: it stayed `running`, holding them,
    // until its wall time (a week by default) when a review's fork bomb made it panic.
    let body = std::panic::AssertUnwindSafe(|| run_body(agent, run, &mut sink));
    let end = std::panic::catch_unwind(body).unwrap_or_else(|_| {
        gantry_daemon::lifecycle::RunEnd::Failed("the agent's run of it panicked".into())
    });
    let end = gantry_daemon::nodes::WireEnd::from(end);
    let mut event = serde_json::to_value(&end).unwrap_or_default();
    event["event"] = "ended".into();
    let body = sink.body(event);
    // Kept first: the job would stay running with its GPUs held if this end were lost, so it
    // goes again with every heartbeat that still lists this attempt ([`Ends`]).
    let key = (run.job.clone(), run.attempt);
    let kept = || ends.lock().unwrap_or_else(|e| e.into_inner());
    kept().insert(key.clone(), body.clone());
    match call(&sink.client(), "POST", &sink.path, Some(body)) {
        Ok(_) => {}
        Err(e) if refused(&e) => {
            kept().remove(&key);
        }
        Err(e) => eprintln!(
            "run {} (attempt {}): its end is kept to be sent again: {e:#}",
            run.job, run.attempt
        ),
    }
}

/// What a run does once started, to its end.
fn run_body(
    agent: &AgentNode,
    run: &gantry_daemon::nodes::HandedRun,
    sink: &mut AgentSink,
) -> gantry_daemon::lifecycle::RunEnd {
    let (client, node) = (&agent.client, agent.name.as_str());
    let (limits, cgroups) = (&agent.limits, agent.cgroups.as_ref());
    sink.log_line(&agent.devices_line(run));
    match (&run.command, &run.train) {
        (Some(spec), _) => {
            let gpu_nodes = match agent.gpu_nodes(run) {
                Ok(nodes) => nodes,
                Err(e) => return gantry_daemon::lifecycle::RunEnd::Failed(e),
            };
            let job = gantry_daemon::command::RunJob {
                key: &run.job,
                tenant: &run.tenant,
                gpu_ids: &run.gpu_ids,
                gpu_nodes: &gpu_nodes,
                spec,
            };
            gantry_daemon::command::execute(job, limits, cgroups, sink, "the agent's user")
        }
        (None, Some(text)) => {
            let emulated = agent.emulated;
            super::agent_train::train(client, node, run, text, emulated, &agent.training, sink)
        }
        (None, None) => gantry_daemon::lifecycle::RunEnd::Failed(
            "the control plane handed a run with nothing to run".into(),
        ),
    }
}

/// Runs `gantry jobs`.
pub fn jobs(client: Client, json: bool) -> anyhow::Result<()> {
    // Page by page: a full page means there may be more after its last job.
    const PAGE: usize = 1000;
    let mut all: Vec<serde_json::Value> = Vec::new();
    // A page's last job forgotten before the next page was asked for (a finished job beyond
    // those its tenant keeps): the listing starts again, a few times at most.
    let mut restarts = 0;
    loop {
        let path = match all.last() {
            None => format!("/v1/jobs?limit={PAGE}"),
            Some(last) => format!(
                "/v1/jobs?limit={PAGE}&after={}/{}",
                last["tenant"].as_str().unwrap_or_default(),
                last["id"].as_str().unwrap_or_default()
            ),
        };
        let page = match call(&client, "GET", &path, None) {
            Err(e) if !all.is_empty() && restarts < 3 && e.to_string().starts_with("404") => {
                restarts += 1;
                all.clear();
                continue;
            }
            answer => answer?,
        };
        let page = page.as_array().cloned().unwrap_or_default();
        // Until an empty page: a page may come back short with more after it (a job of it
        // forgotten between the store's reads of its keys and of their values).
        if page.is_empty() {
            break;
        }
        all.extend(page);
    }
    let jobs = serde_json::Value::Array(all);
    if json {
        println!("{jobs}");
        return Ok(());
    }
    let mut t = Table::new(&["id", "tenant", "owner", "gpus", "state", "placed on"]);
    for j in jobs.as_array().into_iter().flatten() {
        let text = |k: &str| j[k].as_str().unwrap_or_default().to_string();
        let gpus = j["gpu_ids"]
            .as_array()
            .map(|g| g.len().to_string())
            .unwrap_or_default();
        t.row(vec![
            text("id"),
            text("tenant"),
            text("owner"),
            j["gpus"].to_string(),
            text("state"),
            gpus,
        ]);
    }
    print!("{t}");
    Ok(())
}

/// Runs `gantry cancel`.
pub fn cancel(client: Client, id: &str) -> anyhow::Result<()> {
    let job = call(&client, "POST", &format!("/v1/jobs/{id}/cancel"), None)?;
    println!(
        "{} {}",
        job["id"].as_str().unwrap_or(id),
        job["state"].as_str().unwrap_or("")
    );
    Ok(())
}

/// Runs `gantry logs`.
pub fn logs(client: Client, id: &str) -> anyhow::Result<()> {
    let lines = call(&client, "GET", &format!("/v1/jobs/{id}/logs"), None)?;
    for l in lines.as_array().into_iter().flatten() {
        let at = l["at"].as_f64().unwrap_or_default();
        print!(
            "{}",
            log_entry(at, l["message"].as_str().unwrap_or_default())
        );
    }
    Ok(())
}

/// A log entry as `gantry logs` prints it: each of its lines after the entry's time, control
/// characters shown escaped. A job's output is its own text: printed raw, it wrote terminal
/// escapes to whoever read the log (an admin's clipboard, `OSC 52`), and a line of a batch,
/// printed without a time, passed for an entry of the runner's with a time of the job's.
fn log_entry(at: f64, message: &str) -> String {
    let mut out = String::new();
    for line in message.split('\n') {
        out += &format!("{at:.3}  {}\n", gantry_daemon::command::shown(line));
    }
    out
}

/// Runs `gantry model`: job `id`'s model, read whole (no larger than a checkpoint may be) and
/// checked as a checkpoint (its digest, its network) before it is written to `out`, through a
/// synced temporary file and a rename.
pub fn model(client: Client, id: &str, out: &std::path::Path) -> anyhow::Result<()> {
    println!("{}", fetch_model(&client, id, out)?);
    Ok(())
}

/// Job `id`'s model written to `out` ([`model`]); what was written, in words.
pub(super) fn fetch_model(
    client: &Client,
    id: &str,
    out: &std::path::Path,
) -> anyhow::Result<String> {
    use gantry::training::checkpoint;
    let response = call_bytes(client, "GET", &format!("/v1/jobs/{id}/model"), None)?;
    let bytes = response
        .into_body()
        .into_with_config()
        .limit(checkpoint::max_file_bytes())
        .read_to_vec()
        .with_context(|| format!("reading job {id}'s model"))?;
    let name = format!("job {id}'s model");
    let c = checkpoint::from_bytes(&bytes, std::path::Path::new(&name))?;
    checkpoint::write_atomically(out, &bytes)?;
    Ok(format!(
        "wrote job {id}'s model (step {}, {} bytes) to {}",
        c.state.step,
        bytes.len(),
        out.display()
    ))
}

/// Runs `gantry metrics`.
pub fn metrics(client: Client, id: &str, json: bool) -> anyhow::Result<()> {
    let m = call(&client, "GET", &format!("/v1/jobs/{id}/metrics"), None)?;
    if json {
        println!("{m}");
        return Ok(());
    }
    let loss = m["loss"]
        .as_f64()
        .map(|l| format!("{l:.4}"))
        .unwrap_or_else(|| "-".into());
    println!(
        "{} {}: step {} of {} ({:.0} %), epoch {}, loss {loss}, {:.0} samples/s",
        m["job"].as_str().unwrap_or(id),
        m["state"].as_str().unwrap_or_default(),
        m["step"],
        m["total_steps"],
        100.0 * m["progress"].as_f64().unwrap_or_default(),
        m["epoch"],
        m["samples_per_s"].as_f64().unwrap_or_default(),
    );
    if let Some(a) = m["result"]["test"]["accuracy"].as_f64() {
        println!("test accuracy {:.1} %", 100.0 * a);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::loopback_host;

    /// Found by a review: a job's output reached `gantry logs` raw (a clipboard write, `OSC
    /// 52`, in an admin's terminal), and a line of a batch printed without a time passed for
    /// an entry of the runner's.
    #[test]
    fn a_logs_control_characters_are_shown_escaped_and_every_line_has_its_entrys_time() {
        let printed = super::log_entry(
            7.0,
            "ok\n1796487909.909  succeeded: fake\n\u{1b}]52;c;aGk=\u{7}\tx\u{9b}",
        );
        assert_eq!(
            printed,
            "7.000  ok\n7.000  1796487909.909  succeeded: fake\n7.000  \\x1b]52;c;aGk=\\x07\tx\\u{9b}\n"
        );
    }

    /// Found by a review: one panic of the agent inside `gantry up` stopped it for good while
    /// the daemon served on (the machine's GPUs out of service at its lease's end, no job run
    /// again). Its life is started again after a panic, an error or an early return, each said,
    /// until it ends asked to.
    #[test]
    fn this_machines_agent_is_started_again_after_it_panics_or_fails() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let quit = AtomicBool::new(false);
        let said = std::sync::Mutex::new(Vec::new());
        let say = |line: &str| said.lock().unwrap().push(line.to_string());
        let mut lives = 0;
        super::supervise(&quit, &say, std::time::Duration::from_millis(5), || {
            lives += 1;
            match lives {
                1 => panic!("a bug in the agent's loop"),
                2 => anyhow::bail!("the node's cgroup went away"),
                3 => Ok(()),
                _ => {
                    quit.store(true, Ordering::SeqCst);
                    Ok(())
                }
            }
        });
        assert_eq!(lives, 4);
        let said = said.into_inner().unwrap();
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(said[0].contains("it panicked") && said[0].contains("again in 0.0 s"));
        assert!(said[1].contains("the node's cgroup went away"), "{said:?}");
        assert!(said[2].contains("it returned"), "{said:?}");
    }

    #[test]
    fn only_loopback_hosts_count_as_this_machine() {
        for rest in [
            "127.0.0.1:7070",
            "127.3.2.1",
            "localhost:1/v1",
            "LOCALHOST",
            "[::1]:7070/x",
            "user:pw@127.0.0.1:1",
        ] {
            assert!(loopback_host(rest), "{rest}");
        }
        for rest in [
            "10.0.0.1:7070",
            "localhost.example.com",
            "127.0.0.1.example.com:1",
            "[2001:db8::1]:80",
            "127.0.0.1@evil.example:1",
            "",
        ] {
            assert!(!loopback_host(rest), "{rest}");
        }
    }

    /// A loopback control plane answering 503 (no leader yet) to the first `unavailable`
    /// requests, then 200 `{"stop": false}` (never, for `None`); the bodies it accepted.
    fn electing(
        unavailable: Option<usize>,
    ) -> (String, std::sync::mpsc::Receiver<serde_json::Value>) {
        let (url, asked) = scripted(move |n| match unavailable {
            Some(k) if n >= k => Answer::Ok,
            _ => Answer::Status(
                "503 Service Unavailable",
                r#"{"error": "electing a leader"}"#,
            ),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for (n, body) in asked {
                if unavailable.is_some_and(|k| n >= k) {
                    let _ = tx.send(body);
                }
            }
        });
        (url, rx)
    }

    /// What [`scripted`] answers a request.
    enum Answer {
        /// 200 `{"stop": false}`.
        Ok,
        /// This status line and JSON body.
        Status(&'static str, &'static str),
        /// The start of an answer, then the connection closed (a control plane killed).
        Cut,
    }

    /// A loopback control plane answering its `n`th request (from 0) as `answer(n)` says;
    /// every request's number and body, as they come.
    fn scripted(
        answer: impl Fn(usize) -> Answer + Send + 'static,
    ) -> (
        String,
        std::sync::mpsc::Receiver<(usize, serde_json::Value)>,
    ) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let _ = tx.send((n, serde_json::from_slice(&body).unwrap_or_default()));
                let (status, answer, cut) = match answer(n) {
                    Answer::Ok => ("200 OK", r#"{"stop": false}"#, false),
                    Answer::Status(status, answer) => (status, answer, false),
                    Answer::Cut => ("200 OK", r#"{"stop": false}"#, true),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = match cut {
                    true => stream.write_all(&answer.as_bytes()[..3]),
                    false => stream.write_all(answer.as_bytes()),
                };
            }
        });
        (url, rx)
    }

    fn test_client(url: String) -> super::Client {
        super::Client {
            url,
            token: "t".into(),
            ca_cert: None,
            insecure: false,
            client_cert: None,
            client_key: None,
            timeout: None,
        }
    }

    fn test_run() -> gantry_daemon::nodes::HandedRun {
        gantry_daemon::nodes::HandedRun {
            job: "vision/j".into(),
            attempt: 7,
            tenant: "vision".into(),
            gpu_ids: Vec::new(),
            command: None,
            train: None,
            stop: false,
        }
    }

    /// Found by CI (the control plane's kill loop): a succeeded job's output line was missing
    /// from its log. Its agent sent the report once: a failure of the control plane (a 500 of
    /// a leader whose store write failed) or an answer cut off (a leader killed mid-answer)
    /// dropped it. Such a report is sent again now, with the id it had (the control plane keeps
    /// it once); a 4xx, the control plane's judgement, is not.
    #[test]
    fn a_report_a_control_plane_failed_at_or_cut_off_is_sent_again_and_kept_once() {
        use std::sync::atomic::AtomicBool;
        use std::time::Duration;
        let run = test_run();
        let stop = AtomicBool::new(false);
        let lease = super::Lease::new(Duration::from_secs(30));
        let fenced = AtomicBool::new(false);
        let (url, asked) = scripted(|n| match n {
            0 => Answer::Status(
                "500 Internal Server Error",
                r#"{"error": "internal error"}"#,
            ),
            1 => Answer::Cut,
            3 => Answer::Status("409 Conflict", r#"{"error": "not the current attempt"}"#),
            _ => Answer::Ok,
        });
        let client = test_client(url);
        let sink = super::AgentSink::new(&client, "n1", &run, &stop).fenced_by(&fenced, &lease);
        sink.log_line("the last line");
        let sent: Vec<serde_json::Value> = asked.try_iter().map(|(_, b)| b).collect();
        assert_eq!(sent.len(), 3, "sent until answered: {sent:?}");
        assert!(sent.iter().all(|b| b["entry"] == "the last line"));
        let id = sent[0]["id"].as_str().expect("a report carries its id");
        assert!(sent.iter().all(|b| b["id"] == id), "{sent:?}");
        assert!(!sink.stopping());

        // Refused: sent once, and the run stops.
        sink.log_line("a stale attempt's");
        let sent: Vec<serde_json::Value> = asked.try_iter().map(|(_, b)| b).collect();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_ne!(sent[0]["id"].as_str(), Some(id), "each report its own id");
        assert!(sink.stopping());
    }

    /// CI (the control plane's kill loop) lost a succeeded job's last log line: its agent had
    /// fenced the run (its lease, counted from earlier than the control plane counts it, had
    /// lapsed during a failover) and then sent its reports once, giving up on the 503 of the
    /// election, though the new leader still held the attempt current. A fenced run's reports
    /// are sent again while no control plane answers, for one lease, no longer; the control
    /// plane decides whether they still count. CI then lost a first line again: the agent's loop
    /// had stopped the run as it fenced it, and the stop gave up first; a run here is both.
    #[test]
    fn a_fenced_runs_reports_outlive_a_failover_for_a_lease_and_no_longer() {
        use std::sync::atomic::AtomicBool;
        use std::time::{Duration, Instant};
        let run = test_run();
        let client = test_client;
        // As its agent's loop marks a run whose lease lapsed: fenced, and stopped.
        let (stop, fenced) = (AtomicBool::new(true), AtomicBool::new(true));
        let lease = super::Lease::new(Duration::from_secs(3));

        let (url, accepted) = electing(Some(3));
        let client_a = client(url);
        let sink = super::AgentSink::new(&client_a, "n1", &run, &stop).fenced_by(&fenced, &lease);
        sink.log_line("the last line");
        // Relayed by `electing`'s own thread, which may not have run yet (CI, loaded: Empty).
        let got = accepted
            .recv_timeout(Duration::from_secs(10))
            .expect("the report arrived after the election");
        assert_eq!(
            (got["entry"].as_str(), got["attempt"].as_u64()),
            (Some("the last line"), Some(7))
        );

        // A control plane that stays away: the run's reports end within about its lease.
        let (url, _) = electing(None);
        let client_b = client(url);
        let sink = super::AgentSink::new(&client_b, "n1", &run, &stop).fenced_by(&fenced, &lease);
        let started = Instant::now();
        sink.log_line("unheard");
        sink.log_line("unheard either");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}
