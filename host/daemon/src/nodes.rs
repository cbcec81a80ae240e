//! Node agents (`gantry agent`): with `gantry up --agent-lease-s S`, a node of the cluster is in
//! service only while its agent holds a lease. An agent renews it with every heartbeat
//! (`POST /v1/nodes/{node}/heartbeat`, decided by the policy as `node.heartbeat`), reporting the
//! node's GPUs and their health; a GPU it does not report, or reports unhealthy, stays out of
//! service. A node whose lease ends (its agent stopped, crashed or lost the network) leaves
//! service, and its jobs go back to the queue.
//!
//! Whether a GPU is in service has three sources: the cluster file, an admin's mark
//! (`gpu.health`), and its node's agent. [`crate::Daemon::apply_gpu_health`] is the one place
//! that combines them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::db::JobRecord;
use crate::lifecycle::{RunControl, RunEnd, StopReason};

/// The most GPUs a heartbeat may report.
pub const MAX_REPORTED_GPUS: usize = 1024;
/// The longest text field of a heartbeat, bytes.
pub const MAX_FIELD: usize = 256;

/// The body of `POST /v1/nodes/{node}/heartbeat`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The node's GPUs as the agent found them.
    pub gpus: Vec<ReportedGpu>,
    /// Whether they are emulated (`gantry agent --emulate-gpus`): run on the CPU, bound alike.
    #[serde(default)]
    pub emulated: bool,
    /// The node's rack, for a node that registers (one not in the cluster file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
}

/// What a heartbeat is answered: the node's GPUs in service, the ordinals it reported that the
/// cluster lacks, and the runs handed to it.
pub(crate) type HeartbeatAnswer = (Vec<String>, Vec<u32>, Vec<HandedRun>);

/// The most GPUs a node may register with (a cluster file may declare more).
pub const MAX_REGISTERED_GPUS: usize = 256;
/// The most memory a registering node's GPU may have, MiB (1 TiB).
pub const MAX_REGISTERED_GPU_MEMORY_MIB: u64 = 1 << 20;

/// The most GPUs the control plane keeps of one registered node, its missing ones and those of
/// an earlier removal since it last started included ([`crate::Daemon::heartbeat`]).
pub const MAX_KEPT_GPUS: usize = 2 * MAX_REGISTERED_GPUS;

/// The most nodes a cluster may have, registered ones included.
pub const MAX_NODES: usize = 100_000;

/// One GPU an agent reports.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReportedGpu {
    /// Its ordinal on the node (`CUDA_VISIBLE_DEVICES`): the `k` of the cluster's `<node>/gpu<k>`.
    pub ordinal: u32,
    /// Its model, as the driver names it.
    #[serde(default)]
    pub name: String,
    /// Its memory, MiB.
    #[serde(default)]
    pub memory_mib: u64,
    /// Its PCI bus id, where the driver gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_bus_id: Option<String>,
    /// Whether the agent finds it fit to run jobs.
    pub healthy: bool,
    /// The node's other GPUs (ordinals) it reaches over NVLink, where NVML says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nvlink_peers: Vec<u32>,
}

impl Heartbeat {
    /// Checks every size; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.gpus.len() > MAX_REPORTED_GPUS {
            return Err(format!(
                "field `gpus`: {} GPUs, over the most ({MAX_REPORTED_GPUS})",
                self.gpus.len()
            ));
        }
        if let Some(rack) = &self.rack
            && (rack.is_empty()
                || rack.len() > 64
                || !rack
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            return Err("field `rack`: 1-64 letters, digits, '-', '_' or '.'".to_string());
        }
        let mut seen = BTreeSet::new();
        for (i, g) in self.gpus.iter().enumerate() {
            for (name, value) in [
                ("name", Some(&g.name)),
                ("pci_bus_id", g.pci_bus_id.as_ref()),
            ] {
                if value.is_some_and(|v| v.len() > MAX_FIELD) {
                    return Err(format!("field `gpus[{i}].{name}`: over {MAX_FIELD} bytes"));
                }
                // Shown to users (`GET /v1/gpus`, terminals): text, never terminal commands.
                if value.is_some_and(|v| v.chars().any(char::is_control)) {
                    return Err(format!(
                        "field `gpus[{i}].{name}`: holds control characters"
                    ));
                }
            }
            // As the cluster keeps it (`u32` MiB, 4 PiB): a larger value was cut to fit, and
            // a job asking for more memory than any GPU could have was admitted against it.
            if u32::try_from(g.memory_mib).is_err() {
                return Err(format!(
                    "field `gpus[{i}].memory_mib`: {} MiB, over the most a GPU may report ({})",
                    g.memory_mib,
                    u32::MAX
                ));
            }
            if !seen.insert(g.ordinal) {
                return Err(format!(
                    "field `gpus[{i}].ordinal`: ordinal {} reported twice",
                    g.ordinal
                ));
            }
        }
        for (i, g) in self.gpus.iter().enumerate() {
            let stranger = g
                .nvlink_peers
                .iter()
                .find(|p| **p == g.ordinal || !seen.contains(*p));
            let mut peers = std::collections::HashSet::new();
            let repeated = g.nvlink_peers.iter().any(|p| !peers.insert(*p));
            if g.nvlink_peers.len() > MAX_REPORTED_GPUS || stranger.is_some() || repeated {
                return Err(format!(
                    "field `gpus[{i}].nvlink_peers`: the ordinals of the node's other reported \
                     GPUs, each once"
                ));
            }
        }
        Ok(())
    }
}

/// A node that registered through its agent (it is not in the cluster file), as its agent
/// first reported it: kept, so that a restart or a new leader knows its GPUs (and the jobs on
/// them) before its agent's next heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredNode {
    /// Its name: its node identity's.
    pub name: String,
    /// Its rack.
    pub rack: String,
    /// Its GPUs.
    pub gpus: Vec<RegisteredGpu>,
    /// When it registered, Unix seconds.
    pub at: f64,
}

/// A GPU of a registered node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredGpu {
    /// Its ordinal on the node: its id is `<node>/gpu<ordinal>`.
    pub ordinal: u32,
    /// Its model, as the driver names it.
    pub model: String,
    /// Its memory, MiB.
    pub memory_mib: u32,
    /// Its agent no longer reports it: out of service, still counted when jobs are admitted
    /// (it may come back) until the node is removed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
}

impl RegisteredNode {
    /// Its GPUs as the cluster model takes them: id, model, memory.
    pub fn gpus(&self) -> Vec<(String, String, u32)> {
        self.gpus
            .iter()
            .map(|g| {
                let model = if g.model.is_empty() {
                    "unknown"
                } else {
                    &g.model
                };
                (
                    format!("{}/gpu{}", self.name, g.ordinal),
                    model.to_string(),
                    g.memory_mib,
                )
            })
            .collect()
    }
}

/// What the daemon knows of one node's agent.
#[derive(Debug, Clone)]
struct Lease {
    expires: Instant,
    /// The node's GPUs (ids) the agent reported fit.
    fit: BTreeSet<String>,
}

/// Refuses a cluster whose GPUs agents could never bring into service: an agent reports its
/// node's GPUs by ordinal, and GPU `N` of node `n` is `n/gpuN`; a GPU of the cluster file named
/// otherwise (`n4-a`) would stay out of service for ever, unsaid.
pub fn agents_can_name(cluster: &gantry::cluster::Cluster) -> Result<(), String> {
    for g in &cluster.gpus {
        let node = &cluster.nodes[g.gpu.node as usize].name;
        let ordinal = (g.id.strip_prefix(node.as_str()))
            .and_then(|rest| rest.strip_prefix("/gpu"))
            .filter(|n| !n.starts_with('+') && (n.len() == 1 || !n.starts_with('0')))
            .and_then(|n| n.parse::<u32>().ok());
        if ordinal.is_none() {
            return Err(format!(
                "the cluster's GPU `{}` of node `{node}`: with node agents a GPU's id is \
                 `{node}/gpu<ordinal>`, the name its agent reports it by (as the cluster file's \
                 `gpus = {{ count = ... }}` names them)",
                g.id
            ));
        }
    }
    Ok(())
}

/// The agents' leases, by node name, and the runs handed to them.
#[derive(Debug)]
pub struct Nodes {
    lease: Duration,
    leases: Mutex<HashMap<String, Lease>>,
    /// Command runs handed to agents, by job key: one current attempt per job.
    remote: Mutex<HashMap<String, Remote>>,
    /// The last attempt number given; starts from the clock, so a restarted control plane never
    /// gives again a number an agent may still hold.
    attempts: std::sync::atomic::AtomicU64,
    /// The nodes that registered through their agents, as they last did, by name (the cluster
    /// file's nodes are not here: the file holds for them).
    registered: Mutex<HashMap<String, RegisteredNode>>,
    /// When each node last registered again, and the least time between two of its
    /// registrations, in milliseconds (a lease): a node whose report flaps writes the store
    /// and the audit log at most that often, not at its heartbeats' pace.
    registered_again: Mutex<HashMap<String, Instant>>,
    reregister_ms: std::sync::atomic::AtomicU64,
}

/// A command run handed to a node's agent.
#[derive(Debug, Clone)]
struct Remote {
    node: String,
    attempt: u64,
    job: JobRecord,
    control: Arc<RunControl>,
    started: bool,
    /// What its log entries have cost so far ([`crate::command::log_cost`]).
    logged: u64,
    /// Rows per step of a training run (0 for a command), for the daemon's metrics.
    batch: u64,
    /// By when it must have reported its end ([`crate::Daemon::run_deadline`]).
    deadline: Option<Instant>,
    /// How often its agent fetched its dataset ([`Nodes::count_fetch`]).
    fetches: u32,
}

/// Beyond its limit or a stop, what a run handed to an agent may take to end before the control
/// plane gives it up: a training run's step under way and last checkpoint, or an agent's own
/// kill grace (`gantry agent --kill-grace-s`), which may be longer than the control plane's.
pub const STOP_SLACK: Duration = Duration::from_secs(300);

/// The most times one run may fetch its dataset: each fetch decrypts it, and one that goes
/// through a preprocessing plugin runs the plugin over all of it, in the control plane; an agent
/// asks once per run, and again only after a failure on the way.
pub const MAX_DATASET_FETCHES: u32 = 8;

/// Why a node could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum NodeRemoval {
    /// No such node registered.
    #[error("no registered node `{0}`")]
    Unknown(String),
    /// The node is the cluster file's.
    #[error("node `{0}` is in the cluster file: it is removed there")]
    InFile(String),
    /// Its agent holds a lease.
    #[error(
        "node `{0}`'s agent holds its lease: stop its agent (and revoke the node's tokens) \
         first, or it registers again at its next heartbeat"
    )]
    Leased(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::jobstore::StateError),
    /// The host refused the change.
    #[error("{0}")]
    Host(String),
}

/// Why a request about a run handed to an agent was refused.
#[derive(Debug, thiserror::Error)]
pub enum RunRefusal {
    /// The run is not the job's current one on that node.
    #[error("{0}")]
    Stale(String),
    /// The control plane's state could not be written.
    #[error("{0}")]
    State(String),
    /// The job store failed (on a leader deposed meanwhile: its writes are fenced).
    #[error(transparent)]
    Store(#[from] crate::jobstore::StateError),
}

/// What an agent reports about a run it was handed (`POST /v1/nodes/{node}/runs`). Only the
/// current attempt of a job on the node it was handed to is heard: anything else is a stale
/// run's, refused (409), so a run the control plane gave up on can change nothing.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RunReport {
    /// The job's key (`tenant/name`).
    pub job: String,
    /// The attempt it was handed as.
    pub attempt: u64,
    /// The report's id, unique among its attempt's (the agent's run instance and the report's
    /// number in it): a report sent again (its answer lost) keeps it, so what it carries is
    /// kept once. Absent from an agent of an earlier version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub event: RunEvent,
}

/// An event of a run on a node.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    /// The agent is starting it: the job becomes `running` (or the answer says stop).
    Started,
    /// An entry for the job's log.
    Log {
        /// The entry.
        entry: String,
    },
    /// Steps a training run took since its last report.
    Progress {
        /// Each step, in order.
        steps: Vec<gantry::training::Progress>,
    },
    /// It ended.
    Ended(WireEnd),
}

/// How a run ended, as an agent reports it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum WireEnd {
    /// Exit status 0.
    Succeeded {
        /// The job's result.
        result: serde_json::Value,
        /// The log's line for it.
        summary: String,
    },
    /// Any other end.
    Failed {
        /// Why.
        reason: String,
    },
    /// Stopped because it was asked to.
    Stopped,
}

impl From<RunEnd> for WireEnd {
    fn from(end: RunEnd) -> Self {
        match end {
            RunEnd::Finished(result, summary) => WireEnd::Succeeded { result, summary },
            RunEnd::Failed(reason) => WireEnd::Failed { reason },
            RunEnd::Stopped => WireEnd::Stopped,
        }
    }
}

impl From<WireEnd> for RunEnd {
    fn from(end: WireEnd) -> Self {
        match end {
            WireEnd::Succeeded { result, summary } => RunEnd::Finished(result, summary),
            WireEnd::Failed { reason } => RunEnd::Failed(reason),
            WireEnd::Stopped => RunEnd::Stopped,
        }
    }
}

/// The longest log entry or reason a report may carry, bytes.
pub const MAX_REPORT_TEXT: usize = 256 << 10;
/// The longest id a report may carry (it becomes part of a store key).
pub const MAX_REPORT_ID: usize = 64;
/// The most training steps one report may carry (an agent reports about twice a second; a
/// report's JSON stays within the API's body limit).
pub const MAX_REPORTED_STEPS: usize = 256;

impl RunReport {
    /// Its text (a log entry, a reason, a summary) with control characters shown as escapes
    /// ([`crate::command::shown`]), as a run here keeps its output: a node's report is kept and
    /// shown to users as it says, and a node's text went around the agent's own escaping.
    pub fn show_text(&mut self) {
        let text = match &mut self.event {
            RunEvent::Log { entry } => entry,
            RunEvent::Ended(WireEnd::Failed { reason }) => reason,
            RunEvent::Ended(WireEnd::Succeeded { summary, .. }) => summary,
            _ => return,
        };
        // Lines stay lines: a log entry is a batch of them.
        let shown: Vec<String> = text.split('\n').map(crate::command::shown).collect();
        *text = shown.join("\n");
    }

    /// Checks every size; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if let Some(id) = &self.id
            && (id.is_empty()
                || id.len() > MAX_REPORT_ID
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(format!(
                "field `id`: {id:?} is not 1 to {MAX_REPORT_ID} letters, digits or `-`"
            ));
        }
        if let RunEvent::Progress { steps } = &self.event
            && steps.len() > MAX_REPORTED_STEPS
        {
            return Err(format!(
                "field `steps`: {} steps, over the most ({MAX_REPORTED_STEPS})",
                steps.len()
            ));
        }
        let text = match &self.event {
            RunEvent::Log { entry } => Some(("entry", entry)),
            RunEvent::Ended(WireEnd::Failed { reason }) => Some(("reason", reason)),
            RunEvent::Ended(WireEnd::Succeeded { summary, .. }) => Some(("summary", summary)),
            _ => None,
        };
        match text {
            Some((field, t)) if t.len() > MAX_REPORT_TEXT => Err(format!(
                "field `{field}`: {} bytes, over the most ({MAX_REPORT_TEXT})",
                t.len()
            )),
            _ => Ok(()),
        }
    }
}

/// A run as a heartbeat's answer hands it to an agent.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HandedRun {
    /// The job's key.
    pub job: String,
    /// Its attempt: every report about it names it.
    pub attempt: u64,
    /// The job's tenant.
    pub tenant: String,
    /// The GPUs it was placed on.
    pub gpu_ids: Vec<String>,
    /// The program to run, for a command job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<crate::command::CommandSpec>,
    /// The training configuration (TOML) to run, for a training job: its dataset and its
    /// checkpoints go through the control plane (`/v1/nodes/{node}/runs/...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<String>,
    /// Whether to stop it (a cancel, its GPUs lost).
    pub stop: bool,
}

impl Nodes {
    /// Leases of `lease` each.
    pub fn new(lease: Duration) -> Self {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Self {
            lease,
            leases: Mutex::new(HashMap::new()),
            remote: Mutex::new(HashMap::new()),
            attempts: std::sync::atomic::AtomicU64::new(clock),
            registered: Mutex::new(HashMap::new()),
            registered_again: Mutex::new(HashMap::new()),
            reregister_ms: (lease.as_millis() as u64).into(),
        }
    }

    /// Whether node `node` may register again now (a lease after its last time); if so, it is
    /// counted as doing so.
    fn may_register_again(&self, node: &str) -> bool {
        let least = Duration::from_millis(
            self.reregister_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let mut last = self
            .registered_again
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.get(node).is_some_and(|at| at.elapsed() < least) {
            return false;
        }
        last.insert(node.to_string(), Instant::now());
        true
    }

    /// Lets a node register again as often as its reports change (tests).
    #[cfg(test)]
    fn reregister_at_once(&self) {
        self.reregister_ms
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Leases of `lease` each, knowing `registered`, the nodes registered through their agents
    /// that the cluster took.
    pub fn with_registered(lease: Duration, registered: Vec<RegisteredNode>) -> Self {
        let nodes = Self::new(lease);
        *nodes.registered() = (registered.into_iter())
            .map(|n| (n.name.clone(), n))
            .collect();
        nodes
    }

    fn registered(&self) -> std::sync::MutexGuard<'_, HashMap<String, RegisteredNode>> {
        self.registered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `record` (as a heartbeat reports the node) differs from what node `record.name`
    /// registered with last, when it registered through its agent (false for a node of the
    /// cluster file).
    fn changed(&self, record: &RegisteredNode) -> bool {
        (self.registered().get(&record.name)).is_some_and(|last| {
            let reported = (last.gpus.iter()).filter(|g| !g.missing);
            last.rack != record.rack || !reported.eq(record.gpus.iter())
        })
    }

    /// The GPUs (ids) of registered nodes that their agents no longer report.
    pub fn missing_gpus(&self) -> HashSet<String> {
        (self.registered().values())
            .flat_map(|n| {
                (n.gpus.iter())
                    .filter(|g| g.missing)
                    .map(|g| format!("{}/gpu{}", n.name, g.ordinal))
            })
            .collect()
    }

    fn remote(&self) -> std::sync::MutexGuard<'_, HashMap<String, Remote>> {
        self.remote.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The runs handed to node `node`'s agent.
    pub fn handed(&self, node: &str) -> Vec<HandedRun> {
        self.remote()
            .values()
            .filter(|r| r.node == node)
            .map(|r| HandedRun {
                job: r.job.id.clone(),
                attempt: r.attempt,
                tenant: r.job.tenant.clone(),
                gpu_ids: r.job.gpu_ids.clone(),
                command: r.job.command.clone(),
                train: r.job.train.clone(),
                stop: r.control.stopping(),
            })
            .collect()
    }

    /// Whether job `job`'s current run was handed to node `node`.
    pub fn placed_on(&self, job: &str, node: &str) -> bool {
        self.remote().get(job).is_some_and(|r| r.node == node)
    }

    /// Job `job`'s current run, if it is attempt `attempt` on node `node`; else why not (a
    /// stale run's request, refused).
    fn current(&self, node: &str, job: &str, attempt: u64) -> Result<Remote, String> {
        self.holding_current(node, job, attempt)
            .map(|runs| runs[job].clone())
    }

    /// The runs, locked (none given up or handed while it is held), if job `job`'s current run
    /// is attempt `attempt` on node `node`; else why not.
    fn holding_current(
        &self,
        node: &str,
        job: &str,
        attempt: u64,
    ) -> Result<std::sync::MutexGuard<'_, HashMap<String, Remote>>, String> {
        let runs = self.remote();
        match runs.get(job) {
            Some(r) if r.node == node && r.attempt == attempt => Ok(runs),
            Some(r) => Err(format!(
                "stale run: job {}'s current attempt is {} on node {}",
                crate::db::name_of(job),
                r.attempt,
                r.node
            )),
            None => Err(format!(
                "stale run: job {} has no run handed to an agent",
                crate::db::name_of(job)
            )),
        }
    }

    /// Counts a fetch of the dataset of job `job`'s run `attempt` on `node`; an error (the run is
    /// not current, or has fetched [`MAX_DATASET_FETCHES`] times) refuses it.
    pub(crate) fn count_fetch(&self, node: &str, job: &str, attempt: u64) -> Result<(), String> {
        let mut remote = self.remote();
        let Some(run) = remote
            .get_mut(job)
            .filter(|r| r.node == node && r.attempt == attempt)
        else {
            return Err(format!(
                "stale run: job {} has no such run",
                crate::db::name_of(job)
            ));
        };
        if run.fetches >= MAX_DATASET_FETCHES {
            return Err(format!(
                "run {attempt} of job {} fetched its dataset {MAX_DATASET_FETCHES} times, the \
                 most one run may",
                crate::db::name_of(job)
            ));
        }
        run.fetches += 1;
        Ok(())
    }

    /// A new attempt number, above every one given or adopted so far.
    fn next_attempt(&self) -> u64 {
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1
    }

    /// Attempt `attempt`, handed out by an earlier control plane, is running: the attempts this
    /// one gives come after it. Numbered from this machine's clock alone, a control plane whose
    /// clock was behind its predecessor's could give a requeued job the number of its adopted
    /// run, and that stale run's reports would pass for the new one's.
    fn adopted(&self, attempt: u64) {
        self.attempts
            .fetch_max(attempt, std::sync::atomic::Ordering::SeqCst);
    }

    /// Gives node `node` one lease to send a heartbeat, serving nothing meanwhile (unless it
    /// holds one already): a run adopted on it is given up if its agent does not come back.
    fn await_agent(&self, node: &str) {
        self.leases()
            .entry(node.to_string())
            .or_insert_with(|| Lease {
                expires: Instant::now() + self.lease,
                fit: BTreeSet::new(),
            });
    }

    /// How long a heartbeat's lease lasts.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether node `node`'s agent holds a live lease.
    pub fn leased(&self, node: &str) -> bool {
        (self.leases().get(node)).is_some_and(|l| l.expires > Instant::now())
    }

    /// Whether node `node`'s agent keeps GPU `gpu` in service now: a live lease, and the GPU
    /// reported fit.
    pub fn serves(&self, node: &str, gpu: &str) -> bool {
        self.leases()
            .get(node)
            .is_some_and(|l| l.expires > Instant::now() && l.fit.contains(gpu))
    }

    /// Renews node `node`'s lease with the GPUs (ids) its agent reported fit; returns the GPUs
    /// whose service changed (to be applied).
    pub fn renew(&self, node: &str, fit: BTreeSet<String>, declared: &[String]) -> Vec<String> {
        let now = Instant::now();
        let mut leases = self.leases();
        let before: BTreeSet<String> = leases
            .get(node)
            .filter(|l| l.expires > now)
            .map(|l| l.fit.clone())
            .unwrap_or_default();
        let changed = declared
            .iter()
            .filter(|g| before.contains(*g) != fit.contains(*g))
            .cloned()
            .collect();
        leases.insert(
            node.to_string(),
            Lease {
                expires: now + self.lease,
                fit,
            },
        );
        changed
    }

    /// The nodes whose lease ended since the last call, with the GPUs they served: each is
    /// returned once.
    pub fn expire(&self) -> Vec<(String, Vec<String>)> {
        let now = Instant::now();
        let mut leases = self.leases();
        let ended: Vec<String> = leases
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(n, _)| n.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|n| leases.remove(&n).map(|l| (n, l.fit.into_iter().collect())))
            .collect()
    }
}

impl crate::Daemon {
    /// The GPU ids of node `node` in the cluster, in order; `None` when it has no such node.
    pub(crate) fn node_gpus(&self, node: &str) -> Option<Vec<String>> {
        let host = self.host();
        let cluster = &host.state().cluster;
        let index = cluster.nodes.iter().position(|n| n.name == node)?;
        Some(
            cluster
                .gpus
                .iter()
                .filter(|g| g.gpu.node as usize == index)
                .map(|g| g.id.clone())
                .collect(),
        )
    }

    /// Brings GPUs `ids` in or out of service as their three sources say together (the cluster
    /// file, an admin's mark, the node's agent when agents are on): the one place that decides.
    /// Jobs that lose a GPU go back to the queue for `reason`; returns their ids.
    pub(crate) fn apply_gpu_health(&self, ids: &[String], reason: &str) -> Vec<String> {
        if ids.is_empty() {
            return Vec::new();
        }
        let marked: HashMap<String, bool> = match self.marks.gpu_health() {
            Ok(marks) => marks.into_iter().map(|g| (g.gpu, g.healthy)).collect(),
            Err(e) => {
                // Unknown marks: keep the GPUs out rather than serve one an admin took out.
                tracing::error!(error = %e, "reading GPU health; keeping the GPUs out of service");
                ids.iter().map(|id| (id.clone(), false)).collect()
            }
        };
        let mut lost = Vec::new();
        {
            let mut host = self.host();
            for id in ids {
                let node = id.rsplit_once('/').map_or("", |(n, _)| n);
                let serves = !self.file_unhealthy.contains(id)
                    && marked.get(id).copied().unwrap_or(true)
                    && self.nodes.as_ref().is_none_or(|n| n.serves(node, id));
                // A GPU coming into service keeps its jobs (a run adopted at start holds
                // GPUs its agent has yet to report).
                if let Some(jobs) = host.set_gpu_health(id, serves)
                    && !serves
                {
                    lost.extend(jobs);
                }
            }
        }
        lost.sort();
        lost.dedup();
        self.requeue_lost(&lost, reason);
        lost
    }

    /// Takes the GPUs of nodes whose agent's lease ended out of service, and gives up the runs
    /// handed to them (their jobs go back to the queue; the stale runs' reports are refused from
    /// then on); whether any lease ended.
    pub(crate) fn expire_leases(&self) -> bool {
        let Some(nodes) = &self.nodes else {
            return false;
        };
        let ended = nodes.expire();
        for (node, gpus) in &ended {
            tracing::warn!(%node, gpus = gpus.len(), "a node's agent lease ended; its GPUs leave service");
            self.give_up_node(
                nodes,
                node,
                gpus,
                "its node's agent stopped renewing its lease",
            );
        }
        !ended.is_empty()
    }

    /// Takes GPUs `gpus` of node `node` out of service and gives up the runs handed to it: their
    /// jobs go back to the queue for `reason`, and the stale runs' reports are refused.
    fn give_up_node(&self, nodes: &Nodes, node: &str, gpus: &[String], reason: &str) {
        let lost = self.apply_gpu_health(gpus, reason);
        if !lost.is_empty() {
            tracing::warn!(%node, jobs = ?lost, "jobs requeued from a lost node");
        }
        let given_up: Vec<Remote> = {
            let mut remote = nodes.remote();
            let keys: Vec<String> = remote
                .iter()
                .filter(|(_, r)| r.node == node)
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| remote.remove(k)).collect()
        };
        for r in given_up {
            r.control.request(StopReason::Requeue(reason.to_string()));
            self.remote_ended(r, RunEnd::Stopped);
        }
    }

    /// Removes node `node`, which registered through its agent and whose agent is gone (no
    /// lease): its record is forgotten, its GPUs retired (out of service and of what jobs are
    /// admitted against), the runs handed to it given up. Its agent heartbeating again
    /// registers it again: revoking the node's tokens keeps it out. Returns its GPUs retired.
    pub(crate) fn remove_node(
        &self,
        nodes: &Nodes,
        node: &str,
    ) -> Result<Vec<String>, NodeRemoval> {
        let record = nodes.registered().get(node).cloned();
        let record = match record {
            Some(record) if !record.gpus.is_empty() => record,
            Some(_) => return Err(NodeRemoval::Unknown(node.to_string())),
            None if self.node_gpus(node).is_some() => {
                return Err(NodeRemoval::InFile(node.to_string()));
            }
            None => return Err(NodeRemoval::Unknown(node.to_string())),
        };
        if nodes.leased(node) {
            return Err(NodeRemoval::Leased(node.to_string()));
        }
        self.marks.forget_node(node)?;
        let retired = (self.host().update_node(node, &record.rack, &[]))
            .map_err(|e| NodeRemoval::Host(e.to_string()))?;
        // Kept with no GPUs: any heartbeat of its agent differs, and registers it again.
        let removed = RegisteredNode {
            gpus: Vec::new(),
            ..record
        };
        nodes.registered().insert(node.to_string(), removed);
        tracing::warn!(%node, gpus = retired.len(), "a node was removed; its GPUs are retired");
        self.give_up_node(nodes, node, &retired, "its node was removed");
        self.fail_beyond_capacity();
        Ok(retired)
    }

    /// A run handed to an agent is over (reported, given up, never started): its placement is
    /// forgotten first, so that a control plane starting over never adopts it, then the run
    /// ends as [`crate::Daemon::run_ended`] records.
    fn remote_ended(&self, r: Remote, end: RunEnd) {
        if let Err(e) = self.jobs.set_placement(&r.job.id, None) {
            tracing::error!(job = %r.job.id, error = %e, "forgetting a placement");
        }
        self.keep_curve(&r.job.id);
        self.run_ended(&r.job, &r.control, r.started, end);
    }

    /// Takes back runs that agents were running when this control plane started (`adopted`:
    /// the job and where its run was handed; the host holds their GPUs already): each is
    /// listed to its agent again under its attempt, and its node has one lease to send a
    /// heartbeat, or the run is given up and the job requeued.
    pub(crate) fn adopt_runs(&self, adopted: Vec<(JobRecord, crate::jobstore::Placement)>) {
        let Some(nodes) = &self.nodes else {
            return;
        };
        for (job, placement) in adopted {
            let Some(control) = self.claim_run(&job.id) else {
                continue;
            };
            tracing::info!(job = %job.id, node = %placement.node, attempt = placement.attempt,
                "adopted a run its node's agent is running");
            let _ = self.jobs.log(
                &job.id,
                &format!(
                    "adopted: still running on node {}'s agent (attempt {}) as the control \
                     plane started",
                    placement.node, placement.attempt
                ),
            );
            nodes.adopted(placement.attempt);
            nodes.await_agent(&placement.node);
            if job.train.is_some() && job.state == crate::db::JobState::Running {
                // Its steps go on arriving: they continue the curve from its newest checkpoint
                // (those reported to the control plane before this one are not known).
                self.continue_curve(&job.id, self.resumes_at(&job.id));
            }
            nodes.remote().insert(
                job.id.clone(),
                Remote {
                    node: placement.node,
                    attempt: placement.attempt,
                    started: job.state == crate::db::JobState::Running,
                    batch: self.batch_of(&job),
                    // Counted from now: when it started is not known.
                    deadline: self.run_deadline(&job, nodes.lease()),
                    job,
                    control,
                    logged: 0,
                    fetches: 0,
                },
            );
        }
    }

    /// The step of job `id`'s newest checkpoint (0 without one).
    fn resumes_at(&self, id: &str) -> u32 {
        self.jobs
            .latest_checkpoint(id)
            .ok()
            .flatten()
            .map_or(0, |(step, _)| step)
    }

    /// Rows per step of training job `job` (0 for any other, or a configuration that no longer
    /// reads: its run fails on the agent, saying why).
    fn batch_of(&self, job: &JobRecord) -> u64 {
        job.train
            .as_deref()
            .and_then(|text| crate::runner::train_config(&self.train_limits, &job.id, text).ok())
            .map_or(0, |c| c.batch_size as u64)
    }

    /// Records checkpoint `object` at `step` that the current run of job `id`, attempt
    /// `attempt` on node `node`, wrote; `Err` (refused) when that run is stale, checked after
    /// the upload as well as before, so a run given up meanwhile records nothing.
    pub(crate) fn remote_checkpoint(
        &self,
        nodes: &Nodes,
        node: &str,
        id: &str,
        attempt: u64,
        step: u32,
        object: &str,
    ) -> Result<(), RunRefusal> {
        let current = nodes
            .current(node, id, attempt)
            .map_err(RunRefusal::Stale)?;
        if current.job.train.is_none() {
            return Err(RunRefusal::Stale(format!(
                "job {} is not a training job",
                crate::db::name_of(id)
            )));
        }
        // Recorded only while it is still current: given up during the upload, or while its
        // copy went into etcd, it records nothing.
        self.record_checkpoint(id, step, object, || {
            nodes.holding_current(node, id, attempt)
        })
        .map_err(|e| match e {
            crate::runner::Unrecorded::Stale(e) => RunRefusal::Stale(e),
            crate::runner::Unrecorded::Failed(e) => RunRefusal::State(e),
        })
    }

    /// Job `id`'s current run, if it is attempt `attempt` on node `node` (else why not), and
    /// whether its current run is on `node` at all (what the policy is told).
    pub(crate) fn handed_job(
        &self,
        nodes: &Nodes,
        node: &str,
        id: &str,
        attempt: u64,
    ) -> (Result<JobRecord, String>, bool) {
        (
            nodes.current(node, id, attempt).map(|r| r.job),
            nodes.placed_on(id, node),
        )
    }

    /// Hands command job `job`, just placed, to its node's agent as a new attempt.
    pub(crate) fn hand_to_agent(&self, nodes: &Nodes, job: JobRecord) {
        let Some(control) = self.claim_run(&job.id) else {
            return;
        };
        let node = job
            .gpu_ids
            .first()
            .and_then(|g| g.rsplit_once('/'))
            .map_or_else(String::new, |(n, _)| n.to_string());
        let attempt = nodes.next_attempt();
        let _ = self.jobs.log(
            &job.id,
            &format!("handed to node {node}'s agent (attempt {attempt})"),
        );
        // Kept before the agent can hear of it, so that a control plane starting over adopts
        // this run rather than starting the job again.
        let placement = crate::jobstore::Placement {
            node: node.clone(),
            attempt,
        };
        if let Err(e) = self.jobs.set_placement(&job.id, Some(&placement)) {
            tracing::error!(job = %job.id, error = %e, "recording a placement");
        }
        nodes.remote().insert(
            job.id.clone(),
            Remote {
                node,
                attempt,
                batch: self.batch_of(&job),
                deadline: self.run_deadline(&job, nodes.lease()),
                job,
                control,
                started: false,
                logged: 0,
                fetches: 0,
            },
        );
    }

    /// By when a run handed (or adopted) now must have reported its end: a command's wall time
    /// (at most this control plane's `--max-wall-time-s`) or a training run's time limit (the
    /// training limits' `max_run_time_s`; none when 0), and the time to stop
    /// ([`Self::stop_bound`]) (to start, and for its end to arrive).
    /// An agent enforces these limits itself; this bound is the control plane's own, so that an
    /// agent that keeps its lease but never reports a run's end (stuck, or hostile) cannot hold
    /// the run's GPUs for ever (a review's held a training job's for ever, cancelled or not).
    fn run_deadline(&self, job: &JobRecord, lease: Duration) -> Option<Instant> {
        let limit = match &job.command {
            Some(spec) => {
                let most = self.commands.max_wall_time_s;
                let wall = spec.wall_time_s.unwrap_or(most).min(most);
                Duration::try_from_secs_f64(wall).unwrap_or(Duration::MAX)
            }
            // 0: no time limit (as the runners read it), so no deadline either.
            None if self.train_limits.max_run_time_s == 0 => return None,
            None => Duration::from_secs(self.train_limits.max_run_time_s),
        };
        Instant::now().checked_add(limit.saturating_add(self.stop_bound(lease)))
    }

    /// How long a run asked to stop (or past its limit) has to report its end: the kill grace,
    /// [`crate::Daemon::stop_slack`] (a training run's step under way and last checkpoint; an
    /// agent's own kill grace, which may be longer than this control plane's) and two leases.
    fn stop_bound(&self, lease: Duration) -> Duration {
        self.commands.kill_grace + self.stop_slack + lease * 2
    }

    /// Gives up the runs whose end their agents did not report in time
    /// ([`crate::Daemon::run_deadline`]; or, asked to stop, within its stop bound): a run
    /// past its limits fails, saying so, one asked to stop ends as the stop asked (a cancel:
    /// cancelled), and their GPUs are free; the runs are no longer listed to their agents,
    /// which kill them.
    pub(crate) fn give_up_overdue_runs(&self) {
        let Some(nodes) = &self.nodes else {
            return;
        };
        let now = Instant::now();
        let lease = nodes.lease();
        let overdue: Vec<(Remote, bool)> = {
            let mut remote = nodes.remote();
            let keys: Vec<(String, bool)> = remote
                .iter()
                .filter_map(|(k, r)| {
                    let stopped = r
                        .control
                        .stop_asked_at()
                        .is_some_and(|at| at + self.stop_bound(lease) <= now);
                    let late = r.deadline.is_some_and(|d| d <= now);
                    (stopped || late).then(|| (k.clone(), stopped))
                })
                .collect();
            keys.iter()
                .filter_map(|(k, stopped)| remote.remove(k).map(|r| (r, *stopped)))
                .collect()
        };
        for (r, stopped) in overdue {
            let message = match stopped {
                true => format!(
                    "node {}'s agent did not report the end of its run (attempt {}) within the \
                     time to stop and two leases of being asked to stop: given up",
                    r.node, r.attempt
                ),
                false => format!(
                    "node {}'s agent did not report the end of its run (attempt {}) within its \
                     time limit, the time to stop and two leases: given up",
                    r.node, r.attempt
                ),
            };
            tracing::warn!(job = %r.job.id, node = %r.node, "{message}");
            let _ = self.jobs.log(&r.job.id, &message);
            let end = match stopped {
                true => RunEnd::Stopped,
                false => RunEnd::Failed(message),
            };
            self.remote_ended(r, end);
        }
    }

    /// A report of node `node`'s agent about a run it was handed: `Err` (a stale run's report,
    /// refused) unless it names the job's current attempt on that node. Answers whether the run
    /// should stop.
    pub(crate) fn run_report(
        &self,
        nodes: &Nodes,
        node: &str,
        report: RunReport,
    ) -> Result<bool, RunRefusal> {
        let current = nodes
            .current(node, &report.job, report.attempt)
            .map_err(RunRefusal::Stale)?;
        match report.event {
            // Sent again (its answer was lost, or a new leader adopted the run the old one
            // had started): it is running, and the answer is as for any report.
            RunEvent::Started if current.started => Ok(current.control.stopping()),
            RunEvent::Started => {
                // A store that fails (this leader deposed, say) is the agent's to ask again,
                // of the next leader: the run is neither started nor given up here.
                let started = self.run_starting(&report.job)?;
                if !started {
                    // The agent will not run it, so no end will be reported: the next
                    // heartbeat ends it (a cancel's stop, else back to the queue).
                    current
                        .control
                        .request(StopReason::Requeue("its run could not start".into()));
                }
                if started && current.job.train.is_some() {
                    // The agent resumes from the newest checkpoint (only this attempt may add
                    // one), so the curve continues from its step.
                    self.continue_curve(&report.job, self.resumes_at(&report.job));
                }
                if let Some(r) = nodes.remote().get_mut(&report.job) {
                    r.started = started;
                }
                Ok(current.control.stopping())
            }
            RunEvent::Log { ref entry } => {
                self.remote_log(nodes, node, &report, entry)?;
                Ok(current.control.stopping())
            }
            RunEvent::Progress { ref steps } => {
                use std::sync::atomic::Ordering::Relaxed;
                for p in steps {
                    self.record_step(&report.job, p);
                }
                let m = &self.metrics;
                m.train_steps.fetch_add(steps.len() as u64, Relaxed);
                m.train_samples
                    .fetch_add(steps.len() as u64 * current.batch, Relaxed);
                Ok(current.control.stopping())
            }
            RunEvent::Ended(end) => {
                // Its placement is forgotten first (see `remote_ended`): a store that refuses
                // that (this leader deposed) leaves the run as it was, listed to its agent,
                // which reports the end again, here or to the next leader, who adopted it.
                self.jobs.set_placement(&report.job, None)?;
                // Once, however often it is reported at once.
                if nodes.remote().remove(&report.job).is_some() {
                    self.remote_ended(current, end.into());
                }
                Ok(true)
            }
        }
    }

    /// Keeps a log entry of a node's run while the run's log is within what a run on the daemon
    /// itself keeps (its output budget and the runner's own notes); past it, says once that the
    /// rest is dropped. A node's token alone must not be able to grow a job's log without bound.
    /// `Err` when the store failed: the entry is not counted, and the agent sends it again.
    fn remote_log(
        &self,
        nodes: &Nodes,
        node: &str,
        report: &RunReport,
        entry: &str,
    ) -> Result<(), crate::jobstore::StateError> {
        use crate::command::{RUNNER_NOTES, log_cost};
        let budget = self.commands.max_output_bytes + RUNNER_NOTES;
        let cost = log_cost(entry);
        let Some(before) = nodes.remote().get(&report.job).map(|r| r.logged) else {
            return Ok(());
        };
        if before > budget {
            return Ok(());
        }
        // The entry, or once past the budget the note that the rest is dropped: either is kept
        // under the report's id, so a report sent again neither adds a line nor counts twice.
        let dropped;
        let line = match before.saturating_add(cost) <= budget {
            true => entry,
            false => {
                dropped = format!(
                    "node {node}'s agent reported more log for attempt {} than a run keeps \
                     ({budget} bytes); the rest is dropped",
                    report.attempt
                );
                &dropped
            }
        };
        let added = match &report.id {
            Some(id) => {
                let key = format!("{}-{id}", report.attempt);
                self.jobs.log_once(&report.job, &key, line)?
            }
            None => {
                self.jobs.log(&report.job, line)?;
                true
            }
        };
        if added && let Some(r) = nodes.remote().get_mut(&report.job) {
            r.logged = r.logged.saturating_add(cost);
        }
        Ok(())
    }

    /// Node `node`'s agent reported `beat`: its lease renewed, and its GPUs in or out of service
    /// as reported. A node the cluster does not have registers (see [`Daemon::register`]).
    /// Returns the node's GPUs in service, the ordinals not in the cluster and its runs; `Err`
    /// when the node could not register.
    pub(crate) fn heartbeat(
        &self,
        node: &str,
        nodes: &Nodes,
        beat: &Heartbeat,
    ) -> Result<HeartbeatAnswer, String> {
        let declared = match self.node_gpus(node) {
            Some(declared) => match record_of(node, beat) {
                Ok(record) if nodes.changed(&record) && nodes.may_register_again(node) => {
                    self.register_again(nodes, record)?
                }
                // A registration the node could not make is refused when it changes, and one
                // made too soon after the last waits: until then, what it had serves.
                _ => declared,
            },
            None => self.register(node, nodes, beat)?,
        };
        let id_of = |ordinal: u32| format!("{node}/gpu{ordinal}");
        let fit: BTreeSet<String> = beat
            .gpus
            .iter()
            .filter(|g| g.healthy)
            .map(|g| id_of(g.ordinal))
            .filter(|id| declared.contains(id))
            .collect();
        let unknown: Vec<u32> = beat
            .gpus
            .iter()
            .map(|g| g.ordinal)
            .filter(|o| !declared.contains(&id_of(*o)))
            .collect();
        let changed = nodes.renew(node, fit.clone(), &declared);
        // A run asked to stop before its agent started it (a cancel, its GPUs lost) ends here:
        // its agent will not start it, so nobody else would ever report its end.
        let unstarted: Vec<Remote> = {
            let mut remote = nodes.remote();
            let keys: Vec<String> = remote
                .iter()
                .filter(|(_, r)| r.node == node && !r.started && r.control.stopping())
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| remote.remove(k)).collect()
        };
        for r in unstarted {
            self.remote_ended(r, RunEnd::Stopped);
        }
        if !changed.is_empty() {
            tracing::info!(%node, changed = ?changed, "a node's agent changed which of its GPUs serve");
            self.apply_gpu_health(&changed, "its node's agent reported its GPU unfit");
        }
        Ok((fit.into_iter().collect(), unknown, nodes.handed(node)))
    }

    /// Registers node `node`, which the cluster does not have, with the GPUs its agent reports
    /// in `beat` (at least one; its rack as reported): kept in the store of cluster changes (a
    /// restart or a new leader knows it), recorded in the audit log, and added to the cluster,
    /// its GPUs out of service until the heartbeat brings them in. Who may register is the
    /// policy's: only node `node`'s own identity sends its heartbeat. Returns its GPUs' ids.
    fn register(&self, node: &str, nodes: &Nodes, beat: &Heartbeat) -> Result<Vec<String>, String> {
        if self.host_read().state().cluster.nodes.len() >= MAX_NODES {
            return Err(format!(
                "node `{node}` cannot register: the cluster has {MAX_NODES} nodes, the most"
            ));
        }
        let record = record_of(node, beat)?;
        // Checked before it is kept: a registration the host would refuse was kept before (a
        // GPU id of the cluster file's), and then every start of the daemon failed on it. Kept
        // without the host's lock (with etcd, a round trip every decision would wait for); one
        // that a racing registration made unfit meanwhile is refused below, and left out, said,
        // at the next start.
        let gpus = record.gpus();
        let fits = self.host_read().can_add_node(node, &gpus);
        match fits {
            Ok(()) => {}
            // Another heartbeat of the same node registered it meanwhile.
            Err(_) if let Some(serving) = self.node_gpus(node) => return Ok(serving),
            Err(e) => return Err(e.to_string()),
        }
        self.marks
            .register_node(&record)
            .map_err(|e| format!("registering node `{node}`: {e}"))?;
        let added = self.host().add_node(node, &record.rack, &gpus);
        match added {
            Ok(()) => {
                tracing::info!(%node, rack = %record.rack, gpus = record.gpus.len(), "a node registered");
                let entry = serde_json::json!({"node": node, "rack": record.rack,
                                               "gpus": record.gpus.len()});
                if let Err(e) = self.decider.record("node.registered", entry) {
                    tracing::error!(error = %e, "recording a node's registration in the audit log");
                }
            }
            // Another heartbeat of the same node registered it meanwhile.
            Err(_) if self.node_gpus(node).is_some() => {}
            Err(e) => return Err(e.to_string()),
        }
        nodes.registered().insert(node.to_string(), record);
        Ok(self.node_gpus(node).unwrap_or_default())
    }

    /// Registers again a node that registered through its agent and now reports other GPUs or
    /// another rack (a GPU added, gone or changed, the node moved): its record is replaced. A GPU
    /// it no longer reports is kept as missing: out of service (its jobs back in the queue), but
    /// still counted when jobs are admitted, since a GPU fallen off the bus or out for repair
    /// comes back (queued jobs wait for it rather than fail); an admin removes a node gone for
    /// good ([`crate::Daemon::remove_node`]). New GPUs join, out of service until the heartbeat
    /// brings them in. Recorded in the audit log. Returns the node's GPUs' ids.
    fn register_again(&self, nodes: &Nodes, record: RegisteredNode) -> Result<Vec<String>, String> {
        let node = record.name.clone();
        let last = nodes.registered().get(&node).cloned();
        let reported: BTreeSet<u32> = record.gpus.iter().map(|g| g.ordinal).collect();
        let missing: Vec<RegisteredGpu> = (last.iter().flat_map(|l| &l.gpus))
            .filter(|g| !reported.contains(&g.ordinal))
            .map(|g| RegisteredGpu {
                missing: true,
                ..g.clone()
            })
            .collect();
        let mut kept = record;
        kept.gpus.extend(missing.iter().cloned());
        kept.gpus.sort_by_key(|g| g.ordinal);
        let gpus = kept.gpus();
        // GPUs stay at their indices until the control plane restarts (those of a removed node
        // too): bounded, so that a node naming new ordinals again and again cannot grow the
        // cluster for ever.
        let before = self.node_gpus(&node).unwrap_or_default();
        let known: BTreeSet<&str> = before.iter().map(String::as_str).collect();
        let added: Vec<&str> = (gpus.iter())
            .map(|(id, ..)| id.as_str())
            .filter(|id| !known.contains(id))
            .collect();
        if known.len() + added.len() > MAX_KEPT_GPUS {
            return Err(format!(
                "node `{node}` cannot register again with these GPUs: with those it had, the \
                 control plane would keep {} of its GPUs, over the most ({MAX_KEPT_GPUS}); an \
                 admin removes the node (DELETE /v1/nodes/{node}) once its agent is stopped",
                known.len() + added.len()
            ));
        }
        self.marks
            .register_node_again(&kept)
            .map_err(|e| format!("registering node `{node}` again: {e}"))?;
        (self.host().update_node(&node, &kept.rack, &gpus))
            .map_err(|e| format!("registering node `{node}` again: {e}"))?;
        let missing: Vec<String> = (missing.iter())
            .map(|g| format!("{node}/gpu{}", g.ordinal))
            .collect();
        tracing::warn!(%node, rack = %kept.rack, gpus = gpus.len(), ?missing, ?added,
                       "a node registered again with other GPUs or rack");
        let entry = serde_json::json!({"node": node, "rack": kept.rack, "gpus": gpus.len(),
                                       "missing": missing, "added": added});
        if let Err(e) = self.decider.record("node.registered_again", entry) {
            tracing::error!(error = %e, "recording a node's new registration in the audit log");
        }
        // A GPU with less memory than before (a MIG layout changed) may leave queued jobs that
        // no GPU can hold.
        let smaller = (last.iter().flat_map(|l| &l.gpus)).any(|was| {
            (kept.gpus.iter()).any(|g| g.ordinal == was.ordinal && g.memory_mib < was.memory_mib)
        });
        nodes.registered().insert(node.clone(), kept);
        if smaller {
            self.fail_beyond_capacity();
        }
        Ok(self.node_gpus(&node).unwrap_or_default())
    }
}

/// The record node `node` registers with, as its heartbeat `beat` reports it (at least one GPU;
/// each bounded); the error names the field.
fn record_of(node: &str, beat: &Heartbeat) -> Result<RegisteredNode, String> {
    if beat.gpus.is_empty() {
        return Err(format!(
            "node `{node}` is not in the cluster; it registers with at least one GPU"
        ));
    }
    // What a node says of itself when it registers counts as the cluster's capacity from
    // then on (jobs are admitted against it): a review's registered 600 GPUs of 4 PiB
    // each, and jobs no GPU could hold were accepted to wait for ever.
    if beat.gpus.len() > MAX_REGISTERED_GPUS {
        return Err(format!(
            "node `{node}` registers with {} GPUs, over the most a node may have \
             ({MAX_REGISTERED_GPUS})",
            beat.gpus.len()
        ));
    }
    if let Some((i, g)) =
        (beat.gpus.iter().enumerate()).find(|(_, g)| g.memory_mib > MAX_REGISTERED_GPU_MEMORY_MIB)
    {
        return Err(format!(
            "field `gpus[{i}].memory_mib`: node `{node}` registers a GPU of {} MiB, over the \
             most a GPU may have ({MAX_REGISTERED_GPU_MEMORY_MIB} MiB, 1 TiB)",
            g.memory_mib
        ));
    }
    let mut gpus: Vec<RegisteredGpu> = (beat.gpus.iter())
        .map(|g| RegisteredGpu {
            ordinal: g.ordinal,
            model: g.name.clone(),
            // Bounded by the heartbeat's check.
            memory_mib: u32::try_from(g.memory_mib).unwrap_or(u32::MAX),
            missing: false,
        })
        .collect();
    // By ordinal: an agent listing the same GPUs in another order has not changed.
    gpus.sort_by_key(|g| g.ordinal);
    Ok(RegisteredNode {
        name: node.to_string(),
        rack: beat.rack.clone().unwrap_or_else(|| "default".into()),
        gpus,
        at: crate::db::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_serves_its_fit_gpus_until_it_ends_and_ends_once() {
        let nodes = Nodes::new(Duration::from_millis(100));
        let declared = vec!["n/gpu0".to_string(), "n/gpu1".to_string()];
        let fit: BTreeSet<String> = ["n/gpu0".to_string()].into();
        assert_eq!(nodes.renew("n", fit.clone(), &declared), vec!["n/gpu0"]);
        assert!(nodes.serves("n", "n/gpu0") && !nodes.serves("n", "n/gpu1"));
        assert!(nodes.renew("n", fit, &declared).is_empty());
        std::thread::sleep(Duration::from_millis(150));
        assert!(!nodes.serves("n", "n/gpu0"));
        assert_eq!(
            nodes.expire(),
            vec![("n".to_string(), vec!["n/gpu0".to_string()])]
        );
        assert!(nodes.expire().is_empty());
    }

    /// Found by a review: a cluster file may name a GPU `n4-a`; with agents, which report GPUs
    /// by ordinal (`n4/gpu0`), it never came into service and nothing said why. A daemon with
    /// agents refuses such a cluster, naming the GPU.
    #[test]
    fn with_agents_a_cluster_gpu_no_agent_could_report_is_refused() {
        let text = |id: &str| {
            format!(
                "[[nodes]]\nname = \"n4\"\nrack = \"r\"\n[[nodes.gpu]]\nid = \"{id}\"\n\
                 model = \"m\"\nmemory_total_mib = 1\n"
            )
        };
        for ok in ["n4/gpu0", "n4/gpu17"] {
            let cluster = gantry::cluster::files::parse_cluster(&text(ok), "c.toml".as_ref());
            agents_can_name(&cluster.unwrap()).unwrap();
        }
        for bad in ["n4-a", "n4/gpu", "n4/gpu01", "n5/gpu0", "n4/gpu0/x"] {
            let cluster = gantry::cluster::files::parse_cluster(&text(bad), "c.toml".as_ref());
            let err = agents_can_name(&cluster.unwrap()).unwrap_err();
            assert!(
                err.contains(&format!("`{bad}`")) && err.contains("n4/gpu<ordinal>"),
                "{err}"
            );
        }
        let uniform = gantry::cluster::Cluster::uniform(1, 2, 4, 1);
        agents_can_name(&uniform).unwrap();
    }

    /// The node of the test daemon's cluster.
    const NODE: &str = "node-0000";

    /// Job `name`, placed on a GPU of [`NODE`] and handed to its agent.
    fn handed(td: &crate::testing::TestDaemon, name: &str) -> JobRecord {
        handed_running(td, name, None)
    }

    /// [`handed`], running `command` when given.
    fn handed_running(
        td: &crate::testing::TestDaemon,
        name: &str,
        command: Option<crate::command::CommandSpec>,
    ) -> JobRecord {
        let d = &td.daemon;
        let job = td.submit(name);
        let gpus = vec![format!("{NODE}/gpu0")];
        let pending = Some(crate::db::JobState::Pending);
        d.jobs
            .transition(
                &job.id,
                pending,
                crate::db::JobState::Scheduled,
                &gpus,
                None,
            )
            .unwrap();
        let mut job = d.jobs.job(&job.id).unwrap().unwrap();
        job.command = command;
        d.hand_to_agent(d.nodes.as_ref().unwrap(), job.clone());
        job
    }

    /// A run's `started` report sent again (its answer lost in a failover, or heard first by
    /// a leader that went down after recording it) once left the run stopped on its agent and
    /// its job running forever: the agent took the second answer's "stop", and never reported
    /// an end.
    /// Reported by a review: attempt numbers started from this machine's clock, so a control
    /// plane whose clock was behind its predecessor's could give a requeued job the number of
    /// the run it adopted. They now come after every adopted one.
    #[test]
    fn attempts_come_after_every_adopted_one_whatever_the_clock() {
        let nodes = Nodes::new(Duration::from_secs(1));
        let first = nodes.next_attempt();
        let ahead = first + (1 << 40);
        nodes.adopted(ahead);
        nodes.adopted(first);
        assert!(nodes.next_attempt() > ahead);
    }

    #[test]
    fn a_started_report_sent_again_keeps_the_run_going_and_its_job_ends() {
        let td = crate::testing::TestDaemon::with_agents(Duration::from_secs(60));
        let d = &td.daemon;
        let nodes = d.nodes.as_ref().expect("agents on");
        let job = handed(&td, "twice");
        let attempt = nodes.handed(NODE)[0].attempt;
        let report = |event| RunReport {
            job: job.id.clone(),
            attempt,
            id: None,
            event,
        };
        for _ in 0..2 {
            let stop = d.run_report(nodes, NODE, report(RunEvent::Started));
            assert!(!stop.unwrap(), "the run goes on");
        }
        let end = WireEnd::Succeeded {
            result: serde_json::json!({}),
            summary: "done".into(),
        };
        let ended = d.run_report(nodes, NODE, report(RunEvent::Ended(end)));
        assert!(ended.unwrap());
        let stored = d.jobs.job(&job.id).unwrap().unwrap();
        assert_eq!(stored.state, crate::db::JobState::Succeeded);
        assert!(nodes.handed(NODE).is_empty());
    }

    /// Found by CI (the control plane's kill loop): a job's output line was lost, reported once
    /// to a leader that failed or died before answering. Agents now send such a report again
    /// with its id: it is kept once, and counted once against the run's log budget.
    #[test]
    fn a_log_report_sent_again_is_kept_once() {
        let td = crate::testing::TestDaemon::with_agents(Duration::from_secs(60));
        let d = &td.daemon;
        let nodes = d.nodes.as_ref().expect("agents on");
        let job = handed(&td, "again");
        let attempt = nodes.handed(NODE)[0].attempt;
        let report = |id: &str, entry: &str| RunReport {
            job: job.id.clone(),
            attempt,
            id: Some(id.into()),
            event: RunEvent::Log {
                entry: entry.into(),
            },
        };
        for (id, entry) in [
            ("a-1", "once"),
            ("a-1", "once"),
            ("a-2", "twice"),
            ("a-3", "twice"),
        ] {
            assert!(!d.run_report(nodes, NODE, report(id, entry)).unwrap());
        }
        let lines: Vec<String> = d
            .jobs
            .logs(&job.id)
            .unwrap()
            .into_iter()
            .map(|(_, l)| l)
            .filter(|l| l == "once" || l == "twice")
            .collect();
        assert_eq!(lines, ["once", "twice", "twice"]);
        // An id becomes part of a store key: only letters, digits and `-`, and not many.
        for bad in ["", "a/../b", "a b", &"x".repeat(MAX_REPORT_ID + 1)] {
            let e = report(bad, "x").check().unwrap_err();
            assert!(e.starts_with("field `id`"), "{e}");
        }
        report(&"x".repeat(MAX_REPORT_ID), "x").check().unwrap();
        let logged = nodes.remote().get(&job.id).map(|r| r.logged);
        let log_cost = crate::command::log_cost;
        assert_eq!(
            logged,
            Some(log_cost("once") + 2 * log_cost("twice")),
            "counted once"
        );

        // At the budget's edge: the entry that fills it, sent again, neither says the rest is
        // dropped nor counts twice; the next one past it does, once.
        let budget = d.commands.max_output_bytes + crate::command::RUNNER_NOTES;
        let fill = "f".repeat((budget - logged.unwrap() - log_cost("")) as usize);
        let dropped = || {
            let log = d.jobs.logs(&job.id).unwrap();
            assert_eq!(log.iter().filter(|(_, l)| *l == fill).count(), 1);
            let notes = log
                .iter()
                .filter(|(_, l)| l.contains("the rest is dropped"));
            notes.count()
        };
        for id in ["a-4", "a-4"] {
            assert!(!d.run_report(nodes, NODE, report(id, &fill)).unwrap());
        }
        assert_eq!(dropped(), 0, "nothing was dropped");
        for id in ["a-5", "a-5", "a-6"] {
            assert!(!d.run_report(nodes, NODE, report(id, &fill)).unwrap());
        }
        assert_eq!(dropped(), 1);
    }

    /// A run's end that the store refused (a leader deposed under the report) was answered as
    /// recorded and the run forgotten: its agent sent it no more, and the job stayed running
    /// (or, its placement forgotten, was run again by the next leader). A refused report is
    /// refused now (503 for the agent), the run still listed, and the report sent again ends it.
    #[test]
    fn a_report_the_store_refuses_is_refused_and_counts_when_sent_again() {
        let mut td = crate::testing::TestDaemon::with_agents(Duration::from_secs(60));
        let store = crate::testing::Deposable::over(Arc::get_mut(&mut td.daemon).unwrap());
        let d = &td.daemon;
        let nodes = d.nodes.as_ref().expect("agents on");
        let job = handed(&td, "refused");
        let attempt = nodes.handed(NODE)[0].attempt;
        let report = |event| RunReport {
            job: job.id.clone(),
            attempt,
            id: None,
            event,
        };
        let end = || {
            RunEvent::Ended(WireEnd::Succeeded {
                result: serde_json::json!({}),
                summary: "done".into(),
            })
        };
        store.depose();
        let refused = d.run_report(nodes, NODE, report(RunEvent::Started));
        assert!(matches!(refused, Err(RunRefusal::Store(_))), "{refused:?}");
        store.restore();
        assert!(
            !d.run_report(nodes, NODE, report(RunEvent::Started))
                .unwrap()
        );
        store.depose();
        let refused = d.run_report(nodes, NODE, report(end()));
        assert!(matches!(refused, Err(RunRefusal::Store(_))), "{refused:?}");
        assert_eq!(nodes.handed(NODE).len(), 1, "still its agent's to report");
        assert!(d.jobs.placement(&job.id).unwrap().is_some());
        store.restore();
        assert!(d.run_report(nodes, NODE, report(end())).unwrap());
        let stored = d.jobs.job(&job.id).unwrap().unwrap();
        assert_eq!(stored.state, crate::db::JobState::Succeeded);
        assert!(nodes.handed(NODE).is_empty() && d.jobs.placement(&job.id).unwrap().is_none());
        let again = d.run_report(nodes, NODE, report(end()));
        assert!(matches!(again, Err(RunRefusal::Stale(_))), "{again:?}");
    }

    /// A run that cannot start (its job cancelled before its agent started it) is told to
    /// stop, and its agent's next heartbeat ends it: nothing else would report its end.
    #[test]
    fn a_run_that_cannot_start_is_ended_by_the_next_heartbeat() {
        let td = crate::testing::TestDaemon::with_agents(Duration::from_secs(60));
        let d = &td.daemon;
        let nodes = d.nodes.as_ref().expect("agents on");
        let job = handed(&td, "late");
        let attempt = nodes.handed(NODE)[0].attempt;
        // Moved under the run, as a write that raced it would: the start is refused.
        d.jobs
            .transition(&job.id, None, crate::db::JobState::Pending, &[], None)
            .unwrap();
        let started = RunReport {
            job: job.id.clone(),
            attempt,
            id: None,
            event: RunEvent::Started,
        };
        assert!(d.run_report(nodes, NODE, started).unwrap());
        let beat = Heartbeat {
            gpus: Vec::new(),
            emulated: true,
            rack: None,
        };
        d.heartbeat(NODE, nodes, &beat).unwrap();
        assert!(nodes.handed(NODE).is_empty(), "the run is over");
        assert!(!d.has_run(&job.id));
    }

    /// Found by a review: every fetch of a run's dataset decrypted it and ran its preprocessing
    /// plugin over all of it in the control plane, so a node (its token) fetching in a loop
    /// kept the control plane's plugin sandbox and blocking threads busy for every tenant. A
    /// run may fetch its dataset a few times (an agent asks once, and again after a failure),
    /// no more; a stale run not at all.
    #[test]
    fn a_run_fetches_its_dataset_a_bounded_number_of_times() {
        let td = crate::testing::TestDaemon::with_agents(Duration::from_secs(60));
        let d = &td.daemon;
        let nodes = d.nodes.as_ref().expect("agents on");
        let job = handed(&td, "fetching");
        let attempt = nodes.handed(NODE)[0].attempt;
        for _ in 0..MAX_DATASET_FETCHES {
            nodes.count_fetch(NODE, &job.id, attempt).unwrap();
        }
        let refused = nodes.count_fetch(NODE, &job.id, attempt).unwrap_err();
        assert!(refused.contains("fetched its dataset 8 times"), "{refused}");
        let stale = nodes.count_fetch(NODE, &job.id, attempt + 1).unwrap_err();
        assert!(stale.starts_with("stale run"), "{stale}");
    }

    /// Found by a review: a command run handed to an agent ended only when its agent said so
    /// (or lost its lease), so an agent that kept heartbeating but never reported a run's end,
    /// stuck or hostile, held the run's GPUs for ever. The control plane gives a run up once its
    /// wall time, the kill grace and two leases have passed: its job fails, saying why.
    #[test]
    fn a_command_run_whose_end_never_arrives_is_given_up_after_its_wall_time() {
        let lease = Duration::from_millis(100);
        let mut td = crate::testing::TestDaemon::with_agents(lease);
        {
            let d = Arc::get_mut(&mut td.daemon).unwrap();
            d.commands.kill_grace = Duration::from_millis(10);
            d.stop_slack = Duration::from_millis(10);
        }
        let d = &td.daemon;
        let nodes = d.nodes.as_ref().expect("agents on");
        let sleep = crate::command::CommandSpec {
            argv: vec!["sleep".into(), "1000".into()],
            env: Default::default(),
            cwd: None,
            wall_time_s: Some(0.3),
            memory_mib: None,
            cpus: None,
            disk_mib: None,
        };
        let job = handed_running(&td, "silent", Some(sleep));
        let attempt = nodes.handed(NODE)[0].attempt;
        let started = RunReport {
            job: job.id.clone(),
            attempt,
            id: None,
            event: RunEvent::Started,
        };
        assert!(!d.run_report(nodes, NODE, started).unwrap());
        d.give_up_overdue_runs();
        assert_eq!(nodes.handed(NODE).len(), 1, "within its wall time");
        // 0.3 s + 10 ms + 10 ms + two leases of 100 ms.
        std::thread::sleep(Duration::from_millis(600));
        d.give_up_overdue_runs();
        assert!(nodes.handed(NODE).is_empty(), "given up");
        assert!(!d.has_run(&job.id));
        let stored = d.jobs.job(&job.id).unwrap().unwrap();
        assert_eq!(stored.state, crate::db::JobState::Failed);
        let reason = stored.reason.unwrap_or_default();
        assert!(
            reason.contains("did not report the end of its run"),
            "{reason}"
        );
        assert!(d.jobs.placement(&job.id).unwrap().is_none());
    }

    /// Found by a review: a training run handed to an agent had no deadline at the control
    /// plane, and a cancelled run none either, so an agent that kept its lease but never
    /// reported the end held the job's GPUs for ever, `cancelling`. A training run is given up
    /// past its time limit, and any run asked to stop past its stop bound: cancelled, its GPUs
    /// free.
    #[test]
    fn a_run_whose_end_never_arrives_is_given_up_past_its_time_limit_or_its_stop() {
        let lease = Duration::from_millis(100);
        let mut td = crate::testing::TestDaemon::with_agents(lease);
        {
            let d = Arc::get_mut(&mut td.daemon).unwrap();
            d.commands.kill_grace = Duration::from_millis(10);
            d.train_limits.max_run_time_s = 1;
            d.stop_slack = Duration::from_millis(10);
        }
        let d = &td.daemon;
        let nodes = d.nodes.as_ref().expect("agents on");
        let start = |job: &JobRecord| {
            let attempt = nodes
                .handed(NODE)
                .iter()
                .find(|r| r.job == job.id)
                .unwrap()
                .attempt;
            let started = RunReport {
                job: job.id.clone(),
                attempt,
                id: None,
                event: RunEvent::Started,
            };
            assert!(!d.run_report(nodes, NODE, started).unwrap());
        };
        // A training run: given up past its time limit (1 s here), the slack and two leases.
        let job = handed_running(&td, "trains", None);
        start(&job);
        d.give_up_overdue_runs();
        assert_eq!(nodes.handed(NODE).len(), 1, "within its time limit");
        std::thread::sleep(Duration::from_millis(1400));
        d.give_up_overdue_runs();
        assert!(nodes.handed(NODE).is_empty(), "given up");
        let stored = d.jobs.job(&job.id).unwrap().unwrap();
        assert_eq!(stored.state, crate::db::JobState::Failed, "{stored:?}");
        assert!(d.jobs.placement(&job.id).unwrap().is_none());

        // A command run with a week of wall time, cancelled: given up once the kill grace and
        // two leases have passed since the cancel, cancelled.
        let week = crate::command::CommandSpec {
            argv: vec!["sleep".into(), "1000".into()],
            env: Default::default(),
            cwd: None,
            wall_time_s: None,
            memory_mib: None,
            cpus: None,
            disk_mib: None,
        };
        let job = handed_running(&td, "cancelled", Some(week));
        start(&job);
        let running = d.jobs.job(&job.id).unwrap().unwrap();
        let left = d.cancel_job(&running, "ada").unwrap().unwrap();
        assert_eq!(left.state, crate::db::JobState::Cancelling);
        d.give_up_overdue_runs();
        assert_eq!(nodes.handed(NODE).len(), 1, "within its stop bound");
        std::thread::sleep(Duration::from_millis(400));
        d.give_up_overdue_runs();
        assert!(nodes.handed(NODE).is_empty(), "given up");
        assert!(!d.has_run(&job.id));
        let stored = d.jobs.job(&job.id).unwrap().unwrap();
        assert_eq!(stored.state, crate::db::JobState::Cancelled, "{stored:?}");
        assert!(d.jobs.placement(&job.id).unwrap().is_none());
        let logs = d.jobs.logs(&job.id).unwrap();
        assert!(
            logs.iter()
                .any(|(_, l)| l.contains("of being asked to stop")),
            "{logs:?}"
        );
    }

    /// Found by a review: a node registered 600 GPUs of 4 PiB each, counted as the cluster's
    /// capacity for ever, and a job asking 4 PiB a GPU was accepted. A registration is bounded.
    #[test]
    fn a_registration_is_bounded_in_gpus_and_their_memory() {
        let td = crate::testing::TestDaemon::with_agents(Duration::from_secs(10));
        let d = &td.daemon;
        let nodes = d.nodes.as_ref().expect("agents on");
        let beat = |count: u32, memory_mib: u64| Heartbeat {
            gpus: (0..count)
                .map(|ordinal| ReportedGpu {
                    ordinal,
                    name: "H200".into(),
                    memory_mib,
                    pci_bus_id: None,
                    healthy: true,
                    nvlink_peers: Vec::new(),
                })
                .collect(),
            emulated: false,
            rack: None,
        };
        let many = d.heartbeat("stray", nodes, &beat(257, 1024)).unwrap_err();
        assert!(
            many.contains("257 GPUs") && many.contains("(256)"),
            "{many}"
        );
        let huge = d
            .heartbeat("stray", nodes, &beat(2, u64::from(u32::MAX)))
            .unwrap_err();
        assert!(huge.contains("gpus[0].memory_mib"), "{huge}");
        assert!(d.node_gpus("stray").is_none(), "nothing registered");
        d.heartbeat("stray", nodes, &beat(8, 143_771)).unwrap();
        assert!(d.node_gpus("stray").is_some());
    }

    /// A heartbeat reporting healthy H200s of `ordinals`, in `rack`.
    fn h200s(ordinals: &[u32], rack: Option<&str>) -> Heartbeat {
        Heartbeat {
            gpus: (ordinals.iter())
                .map(|&ordinal| ReportedGpu {
                    ordinal,
                    name: "H200".into(),
                    memory_mib: 143_771,
                    pci_bus_id: None,
                    healthy: true,
                    nvlink_peers: Vec::new(),
                })
                .collect(),
            emulated: false,
            rack: rack.map(str::to_string),
        }
    }

    /// Found by a review of issue 13: a node that registered through its agent kept its first
    /// registration for ever: GPUs it gained were "not in the cluster", a rack it moved to or
    /// a GPU's new memory never counted. Its record now follows what its agent reports; a GPU
    /// it no longer reports is kept as missing (out of service, still counted for admission:
    /// it may come back), both kept in the store.
    #[test]
    fn a_node_registered_again_with_other_gpus_is_admitted_against_what_it_has_now() {
        let td = crate::testing::TestDaemon::with_agents(Duration::from_secs(10));
        let d = &td.daemon;
        let nodes = d.nodes.as_ref().expect("agents on");
        nodes.reregister_at_once();
        let ids = |ordinals: &[u32]| -> Vec<String> {
            ordinals.iter().map(|o| format!("node-z/gpu{o}")).collect()
        };
        // Admitted against the cluster: the file's node has 2 GPUs.
        let fits = |gpus: u32| {
            let job = gantry::cluster::JobSpec::new("j", "vision", gpus, 1, 1.0);
            d.host_read().check(job).is_ok()
        };
        let serving = |beat: &Heartbeat| d.heartbeat("node-z", nodes, beat).unwrap().0;
        serving(&h200s(&[0, 1, 2, 3], None));
        assert_eq!(serving(&h200s(&[3, 2, 1, 0], None)), ids(&[0, 1, 2, 3]));
        assert!(fits(6) && !fits(7));

        // Two GPUs gone, the node moved: they leave service, and are missing, still counted.
        assert_eq!(serving(&h200s(&[0, 1], Some("r8"))), ids(&[0, 1]));
        assert!(fits(6) && !fits(7), "a GPU gone may come back");
        assert_eq!(nodes.missing_gpus(), ids(&[2, 3]).into_iter().collect());
        let host = d.host_read();
        for id in ids(&[2, 3]) {
            let gpu = host
                .state()
                .cluster
                .gpus
                .iter()
                .find(|g| g.id == id)
                .unwrap();
            assert!(!gpu.gpu.healthy, "{id} out of service");
        }
        let c = &host.state().cluster;
        let z = c.nodes.iter().find(|n| n.name == "node-z").unwrap();
        assert_eq!(c.racks[z.rack as usize], "r8");
        drop(host);
        let kept = |present: &[u32], missing: &[u32]| {
            let stored = d.marks.registered_nodes().unwrap();
            let z = stored.iter().find(|n| n.name == "node-z").unwrap();
            assert_eq!(z.rack, "r8");
            let with = |m: bool| -> Vec<u32> {
                (z.gpus.iter().filter(|g| g.missing == m))
                    .map(|g| g.ordinal)
                    .collect()
            };
            assert_eq!(
                (with(false), with(true)),
                (present.to_vec(), missing.to_vec()),
                "what a restart or a new leader takes"
            );
        };
        kept(&[0, 1], &[2, 3]);

        // One comes back, one is new, with more memory: they serve and count.
        let mut beat = h200s(&[0, 1, 2, 5], Some("r8"));
        beat.gpus[3].memory_mib = 200_000;
        assert_eq!(serving(&beat), ids(&[0, 1, 2, 5]));
        assert!(fits(7) && !fits(8));
        assert_eq!(nodes.missing_gpus(), ids(&[3]).into_iter().collect());
        kept(&[0, 1, 2, 5], &[3]);
        // Queued for that memory; the GPU made smaller (a MIG layout changed), no GPU can hold
        // it: it fails, saying why, rather than wait for ever.
        let big = JobRecord {
            id: crate::db::key("vision", "big"),
            memory_per_gpu_mib: 190_000,
            ..td.submit("small")
        };
        assert!(d.jobs.insert_job(&big).unwrap());
        d.host().submit(crate::api::spec(&big)).unwrap();
        beat.gpus[3].memory_mib = 100_000;
        serving(&beat);
        let big = d.jobs.job(&big.id).unwrap().unwrap();
        assert_eq!(big.state, crate::db::JobState::Failed);
        assert!(
            big.reason
                .unwrap_or_default()
                .contains("memory_per_gpu_mib")
        );

        // Kept GPUs are bounded: a node naming new ordinals again and again is refused, and
        // what it had stands.
        let many = |from: u32| (from..from + 256).collect::<Vec<u32>>();
        serving(&h200s(&many(1000), Some("r8")));
        let refused = d
            .heartbeat("node-z", nodes, &h200s(&many(2000), Some("r8")))
            .unwrap_err();
        assert!(refused.contains(&format!("({MAX_KEPT_GPUS})")), "{refused}");
        assert_eq!(d.node_gpus("node-z").unwrap().len(), 261);
    }

    /// A node whose report flaps (a failing GPU seen and lost by turns, or a hostile node)
    /// registers again at most once a lease: not a store write and an audit entry at its
    /// heartbeats' pace. Which of its GPUs serve follows each heartbeat; the record waits, and
    /// is made once the lease has passed.
    #[test]
    fn a_node_whose_report_flaps_registers_again_at_most_once_a_lease() {
        let td = crate::testing::TestDaemon::with_agents(Duration::from_millis(300));
        let d = &td.daemon;
        let nodes = d.nodes.as_ref().expect("agents on");
        let serving = |ordinals: &[u32]| {
            let answer = d.heartbeat("node-z", nodes, &h200s(ordinals, None));
            answer.unwrap().0.len()
        };
        let missing = || {
            let stored = d.marks.registered_nodes().unwrap();
            (stored[0].gpus.iter().filter(|g| g.missing))
                .map(|g| g.ordinal)
                .collect::<Vec<_>>()
        };
        assert_eq!(serving(&[0, 1, 2, 3]), 4);
        assert_eq!(serving(&[0, 1]), 2, "the first change is made at once");
        assert_eq!(missing(), [2, 3]);
        for _ in 0..20 {
            assert_eq!(serving(&[0, 1, 2]), 3);
            assert_eq!(serving(&[0, 1]), 2);
        }
        assert_eq!(serving(&[0, 1, 2]), 3);
        assert_eq!(missing(), [2, 3], "the record waits");
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(serving(&[0, 1, 2]), 3);
        assert_eq!(missing(), [3], "made once the lease has passed");
    }

    /// Found by a review of issue 13: a registered node whose agent was gone for good could not
    /// be removed, and its GPUs counted for admission for ever (jobs only they could hold waited
    /// for ever). An admin removes it once its agent's lease has ended.
    #[test]
    fn a_node_whose_agent_is_gone_is_removed_and_no_longer_admits_jobs() {
        let td = crate::testing::TestDaemon::with_agents(Duration::from_millis(200));
        let d = &td.daemon;
        let nodes = d.nodes.as_ref().expect("agents on");
        let beat = h200s(&[0, 1, 2, 3], None);
        let fits = |gpus: u32| {
            let job = gantry::cluster::JobSpec::new("j", "vision", gpus, 1, 1.0);
            d.host_read().check(job).is_ok()
        };
        d.heartbeat("node-z", nodes, &beat).unwrap();
        assert!(fits(6));
        // Queued, and only node-z's GPUs could hold it.
        let big = JobRecord {
            id: crate::db::key("vision", "big"),
            gpus: 5,
            ..td.submit("small")
        };
        assert!(d.jobs.insert_job(&big).unwrap());
        d.host().submit(crate::api::spec(&big)).unwrap();
        let leased = d.remove_node(nodes, "node-z").unwrap_err();
        assert!(matches!(leased, NodeRemoval::Leased(_)), "{leased}");
        let file = d.remove_node(nodes, NODE).unwrap_err();
        assert!(matches!(file, NodeRemoval::InFile(_)), "{file}");
        let none = d.remove_node(nodes, "node-y").unwrap_err();
        assert!(matches!(none, NodeRemoval::Unknown(_)), "{none}");

        std::thread::sleep(Duration::from_millis(300));
        d.expire_leases();
        let retired = d.remove_node(nodes, "node-z").unwrap();
        assert_eq!(retired.len(), 4, "{retired:?}");
        assert!(fits(2) && !fits(3), "its GPUs no longer count");
        let big = d.jobs.job(&big.id).unwrap().unwrap();
        assert_eq!(
            big.state,
            crate::db::JobState::Failed,
            "not left to wait for ever"
        );
        let why = big.reason.unwrap_or_default();
        assert!(why.contains("can no longer be queued"), "{why}");
        assert!(!d.host_read().holds(&big.id));
        assert!(d.marks.registered_nodes().unwrap().is_empty());
        let again = d.remove_node(nodes, "node-z").unwrap_err();
        assert!(matches!(again, NodeRemoval::Unknown(_)), "{again}");

        // Its agent back, it registers again.
        d.heartbeat("node-z", nodes, &beat).unwrap();
        assert!(fits(6));
        assert_eq!(d.marks.registered_nodes().unwrap().len(), 1);
    }

    #[test]
    fn a_heartbeat_is_bounded_and_its_errors_name_the_field() {
        let gpu = |ordinal| ReportedGpu {
            ordinal,
            name: "H200".into(),
            memory_mib: 1,
            pci_bus_id: None,
            healthy: true,
            nvlink_peers: Vec::new(),
        };
        let ok = Heartbeat {
            gpus: vec![gpu(0), gpu(1)],
            emulated: false,
            rack: None,
        };
        assert!(ok.check().is_ok());
        let twice = Heartbeat {
            gpus: vec![gpu(0), gpu(0)],
            emulated: false,
            rack: None,
        };
        assert!(twice.check().unwrap_err().contains("gpus[1].ordinal"));
        let linked = |peers: Vec<u32>| Heartbeat {
            gpus: vec![
                ReportedGpu {
                    nvlink_peers: peers,
                    ..gpu(0)
                },
                gpu(1),
            ],
            emulated: false,
            rack: None,
        };
        assert!(linked(vec![1]).check().is_ok());
        // A peer named twice, as the message says, is refused too (it was accepted).
        for bad in [vec![0], vec![7], vec![1, 1], vec![1; MAX_REPORTED_GPUS + 1]] {
            let refused = linked(bad).check().unwrap_err();
            assert!(refused.contains("gpus[0].nvlink_peers"), "{refused}");
        }
        let long = Heartbeat {
            gpus: vec![ReportedGpu {
                name: "x".repeat(MAX_FIELD + 1),
                ..gpu(0)
            }],
            emulated: false,
            rack: None,
        };
        assert!(long.check().unwrap_err().contains("gpus[0].name"));
        // Found by a review: a GPU of 2^64-1 MiB was kept cut to 2^32-1, and a job asking for
        // 2^63 MiB a GPU admitted against it; names with terminal escapes reached users.
        let beyond = |g: ReportedGpu| Heartbeat {
            gpus: vec![g],
            emulated: false,
            rack: None,
        };
        let huge = beyond(ReportedGpu {
            memory_mib: u64::from(u32::MAX) + 1,
            ..gpu(0)
        });
        assert!(huge.check().unwrap_err().contains("gpus[0].memory_mib"));
        let mut report = RunReport {
            job: "vision/a".into(),
            attempt: 1,
            id: None,
            event: RunEvent::Log {
                entry: "ok\n\u{0}\u{1b}[2J\u{202e} x".into(),
            },
        };
        report.show_text();
        let RunEvent::Log { entry } = report.event else {
            unreachable!()
        };
        assert_eq!(entry, "ok\n\\x00\\x1b[2J\\u{202e} x");
        let escape = beyond(ReportedGpu {
            name: "H200\u{1b}[2J".into(),
            ..gpu(0)
        });
        assert!(escape.check().unwrap_err().contains("gpus[0].name"));
        let many = Heartbeat {
            gpus: (0..=MAX_REPORTED_GPUS as u32).map(gpu).collect(),
            emulated: false,
            rack: None,
        };
        assert!(many.check().unwrap_err().contains("field `gpus`"));
    }
}
