//! Commands, argument parsing and output.

mod agent_devices;
mod agent_health;
mod agent_train;
mod audit;
mod bench;
mod daemon;
mod db;
mod demo;
mod plugin;
mod policy;
mod preprocess;
mod schedule;
mod simulate;
mod store;
pub mod table;
mod train;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gantry::cluster::{Cluster, files};
use gantry::{Host, HostConfig, PluginSource};

/// The default cluster (`host/assets/default-cluster.toml`), built into the binary.
pub const DEFAULT_CLUSTER: &str = include_str!("../../assets/default-cluster.toml");

/// Gantry: a host runtime for AI-training clusters with sandboxed wasm plugins.
#[derive(Debug, Parser)]
#[command(name = "gantry", version, about)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Directory for compiled plugins (default: $GANTRY_CACHE_DIR, $XDG_CACHE_HOME/gantry or
    /// ~/.cache/gantry).
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile plugins on every load instead of caching them.
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// A hex Ed25519 public key whose plugin signatures are trusted (repeatable).
    #[arg(long = "trust", global = true, value_name = "KEY")]
    pub trusted_keys: Vec<String>,
    /// Load plugins from disk without a trusted signature (development; warns on each load).
    #[arg(long, global = true)]
    pub allow_unsigned: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One scheduling cycle: jobs in, placements out.
    Schedule(schedule::Args),
    /// Discrete-event simulation of a cluster over a job trace.
    Simulate(simulate::Args),
    /// Job traces.
    #[command(subcommand)]
    Trace(simulate::TraceCommand),
    /// Benchmarks (JSON with --json).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Access-control policies: build Rego into OPA wasm bundles, evaluate them.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Plugin signatures: keys, signing, verification.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// The audit log: signing key, verification, recovery.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// List the plugins shipped in this binary.
    Plugins,
    /// Train a network on the native kernels (CPU, or CUDA GPUs in a `cuda` build).
    Train(train::Args),
    /// Score a checkpoint's network on new data (loss, accuracy).
    Eval(train::EvalArgs),
    /// Stream a dataset (a CSV file, or an object of the encrypted store) through a
    /// preprocessing plugin into the binary f32 format.
    Preprocess(preprocess::Args),
    /// The whole product in under two minutes on a throwaway data directory: a daemon, two
    /// tenants, policy decisions, encrypted storage, wasm preprocessing, training, audit.
    Demo(demo::Args),
    /// Run the host as a service: the HTTP API over the data directory (loopback by default).
    Up(daemon::UpArgs),
    /// Users of the API and their bearer tokens.
    #[command(subcommand)]
    User(daemon::UserCommand),
    /// Submit a job to a running daemon.
    Submit(daemon::SubmitArgs),
    /// Run a node's agent: holds the node's lease with the control plane (`gantry up
    /// --agent-lease-s`) and reports its GPUs, real or emulated.
    Agent(daemon::AgentArgs),
    /// List the jobs a running daemon shows you.
    Jobs {
        #[command(flatten)]
        client: daemon::Client,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A job's log: submission, placement, checkpoints, resumes, its end.
    Logs {
        /// The job's id.
        id: String,
        #[command(flatten)]
        client: daemon::Client,
    },
    /// A training job's progress: step, epoch, loss, throughput (and its loss curve with --json).
    Metrics {
        /// The job's id.
        id: String,
        #[command(flatten)]
        client: daemon::Client,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A succeeded training job's model: its last checkpoint, written to `--out` (the file
    /// `gantry eval --checkpoint` scores).
    Model {
        /// The job's id.
        id: String,
        /// Where to write it (written beside and renamed: never half-written).
        #[arg(long)]
        out: std::path::PathBuf,
        #[command(flatten)]
        client: daemon::Client,
    },
    /// Cancel a job.
    Cancel {
        /// The job's id.
        id: String,
        #[command(flatten)]
        client: daemon::Client,
    },
    /// Create the host's data directory: object store, master key, signing key.
    Init(store::DataDir),
    /// The master key of the data directory.
    #[command(subcommand)]
    Key(store::KeyCommand),
    /// The encrypted object store (content-addressed, AES-256-GCM envelope encryption).
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// The daemon's database: backup, restore, check.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// The compute devices found, and why CUDA is not used when it is not.
    Devices {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Logs go to stderr; the default shows warnings (plugin faults, fallbacks) only.
pub fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // opa-wasm logs every policy error (with a wasm backtrace) as an error of its own: Gantry
    // reports it once, as the decision's reason, so opa-wasm's events show from -vv on.
    let opa_wasm = if verbose >= 2 { level } else { "off" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},opa_wasm={opa_wasm}"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true)
        .init();
}

impl Cli {
    /// The command line parsed as [`Parser::parse`] does (clap's own errors end the process), and
    /// then refused where it holds a bearer token: see [`tokens_off_the_command_line`].
    pub fn parse_refusing_tokens() -> anyhow::Result<Cli> {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command().get_matches();
        tokens_off_the_command_line(&Cli::command(), &matches)?;
        Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
    }

    /// Whether this runs a long-lived service (`gantry up`, `gantry agent`), which must never
    /// die of a signal such as SIGPIPE (a run's guard gone, a peer hung up).
    pub fn is_daemon(&self) -> bool {
        matches!(self.command, Command::Up(_) | Command::Agent(_))
    }
}

/// The environment variable that carries a bearer token to every command.
const TOKEN_ENV: &str = "GANTRY_TOKEN";

/// Refuses a bearer token written on the command line (`--token`, `--admin-token`: every
/// argument [`TOKEN_ENV`] also sets), for every command: every user of the machine reads a
/// process's arguments (`ps`, `/proc/PID/cmdline`), on a shared login node as on a GPU node
/// whose jobs run beside the agent, and the shell keeps them in its history. The environment is
/// the user's alone to read.
fn tokens_off_the_command_line(
    command: &clap::Command,
    matches: &clap::ArgMatches,
) -> anyhow::Result<()> {
    for arg in command.get_arguments() {
        let from_line = matches.value_source(arg.get_id().as_str())
            == Some(clap::parser::ValueSource::CommandLine);
        if from_line && arg.get_env() == Some(std::ffi::OsStr::new(TOKEN_ENV)) {
            anyhow::bail!(
                "--{}: a token on the command line can be read by every user of this machine \
                 (`ps`); give it in {TOKEN_ENV}",
                arg.get_long().unwrap_or_default()
            );
        }
    }
    match matches.subcommand() {
        Some((name, sub)) => match command.find_subcommand(name) {
            Some(command) => tokens_off_the_command_line(command, sub),
            None => Ok(()),
        },
        None => Ok(()),
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let cache_dir = if cli.no_cache {
        None
    } else {
        cli.cache_dir.clone().or_else(gantry::default_cache_dir)
    };
    let ctx = Context {
        cache_dir,
        trust: gantry::PluginTrust {
            trusted_keys: cli.trusted_keys.clone(),
            allow_unsigned: cli.allow_unsigned,
        },
    };
    match cli.command {
        Command::Schedule(args) => schedule::run(&ctx, args),
        Command::Simulate(args) => simulate::run(&ctx, args),
        Command::Trace(cmd) => simulate::trace(cmd),
        Command::Bench(cmd) => bench::run(&ctx, cmd),
        Command::Policy(cmd) => policy::run(&ctx, cmd),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Plugin(cmd) => plugin::run(&ctx, cmd),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => train::eval(args),
        Command::Preprocess(args) => preprocess::run(&ctx, args),
        Command::Demo(args) => demo::run(&ctx, args),
        Command::Up(args) => daemon::up(&ctx, args),
        Command::User(cmd) => daemon::user(cmd),
        Command::Submit(args) => daemon::submit(args),
        Command::Agent(args) => daemon::run_agent(args),
        Command::Jobs { client, json } => daemon::jobs(client, json),
        Command::Cancel { id, client } => daemon::cancel(client, &id),
        Command::Logs { id, client } => daemon::logs(client, &id),
        Command::Metrics { id, client, json } => daemon::metrics(client, &id, json),
        Command::Model { id, out, client } => daemon::model(client, &id, &out),
        Command::Init(dir) => store::init(&dir),
        Command::Key(cmd) => store::key(cmd),
        Command::Store(cmd) => store::store(cmd),
        Command::Db(cmd) => db::run(cmd),
        Command::Devices { json } => train::devices(json),
        Command::Plugins => {
            let mut t = table::Table::new(&["plugin", "kind", "what it does"]);
            for b in gantry::builtin::SCHEDULERS {
                t.row(vec![b.name.into(), "scheduler".into(), b.summary.into()]);
            }
            for b in gantry::builtin::PREPROCESSORS {
                t.row(vec![b.name.into(), "preprocess".into(), b.summary.into()]);
            }
            print!("{t}");
            Ok(())
        }
    }
}

/// Settings shared by the commands.
pub struct Context {
    cache_dir: Option<PathBuf>,
    trust: gantry::PluginTrust,
}

impl Context {
    /// A host for `cluster` with `plugin` (a shipped name or a path) loaded.
    pub fn host(&self, cluster: Cluster, plugin: &str) -> anyhow::Result<Host> {
        let mut config = HostConfig::new(cluster);
        config.cache_dir = self.cache_dir.clone();
        config.trust = self.trust.clone();
        let mut host = Host::new(config)?;
        let source: PluginSource = plugin.parse()?;
        host.load_scheduler(&source)
            .with_context(|| format!("loading plugin `{plugin}`"))?;
        Ok(host)
    }
}

/// The cluster at `path`, or the built-in default.
pub fn cluster(path: Option<&PathBuf>) -> anyhow::Result<Cluster> {
    Ok(match path {
        Some(p) => files::load_cluster(p)?,
        None => files::parse_cluster(DEFAULT_CLUSTER, "<default-cluster.toml>".as_ref())?,
    })
}

/// The parser of a synthetic trace's `--jobs`: from 1 to
/// [`gantry::simulate::trace::MAX_SYNTHETIC_JOBS`], refused by clap (exit 2, the flag named)
/// before anything is allocated.
pub fn synthetic_jobs() -> clap::builder::RangedU64ValueParser<usize> {
    count(gantry::simulate::trace::MAX_SYNTHETIC_JOBS as u64)
}

/// The parser of `--reserve-after-s`: seconds (finite, not negative) or `never`.
pub fn reserve_after_s(text: &str) -> Result<f64, String> {
    if text.eq_ignore_ascii_case("never") {
        return Ok(f64::INFINITY);
    }
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(s),
        _ => Err(format!(
            "`{text}` is not a number of seconds (0 or more) or `never`"
        )),
    }
}

/// The parser of a count flag from 1 to `max`: every count that sizes what a command
/// allocates is bounded by its flag (`bench preprocess --rows 100000000000` asked for 16 TB at
/// once and aborted).
pub fn count<T>(max: u64) -> clap::builder::RangedU64ValueParser<T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
    <T as TryFrom<u64>>::Error: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    clap::builder::RangedU64ValueParser::new().range(1..=max)
}

/// [`count`] where 0 is allowed (it means none).
pub fn count_or_none<T>(max: u64) -> clap::builder::RangedU64ValueParser<T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
    <T as TryFrom<u64>>::Error: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    clap::builder::RangedU64ValueParser::new().range(0..=max)
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {pos}/{len} ({elapsed}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::{Cli, tokens_off_the_command_line};

    /// The check on `line`, as `gantry` runs it (clap's parse first).
    fn checked(line: &str) -> anyhow::Result<()> {
        let matches = Cli::command()
            .try_get_matches_from(line.split_whitespace())
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        tokens_off_the_command_line(&Cli::command(), &matches)
    }

    /// Found by a review, first for the agent: `gantry agent --token $NODE_TOKEN` put the node's
    /// token where every process of the node reads it, and a job read it and spoke as the node.
    /// The same held for every client command (`gantry submit --token`, `user token
    /// --admin-token`) on a shared login node. A token comes from `GANTRY_TOKEN` alone.
    #[test]
    fn a_bearer_token_on_any_commands_line_is_refused() {
        for line in [
            "gantry agent --node n --token gantry_x",
            "gantry agent --token=gantry_x --node n",
            "gantry jobs --url http://127.0.0.1:7070 --token gantry_x",
            "gantry submit --tenant t --token gantry_x --gpus 1 -- true",
            "gantry user token ada --url http://127.0.0.1:7070 --admin-token gantry_x",
            "gantry key rotate --data-dir /d --token=gantry_x",
        ] {
            let e = checked(line).expect_err(line).to_string();
            assert!(e.contains("GANTRY_TOKEN"), "{line}: {e}");
        }
        // `user revoke --token` names a token by its id, which is no secret.
        checked("gantry user revoke lee --token 0a1b --data-dir /d").unwrap();
        checked("gantry user tokens --data-dir /d").unwrap();
    }
}
