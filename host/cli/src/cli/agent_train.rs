//! A training run a node's agent was handed: it trains on the GPUs it was placed on and no
//! others (one data-parallel replica each; emulated GPUs as CPU replicas), its stored dataset
//! and its checkpoints streamed through the control plane as this run's attempt (a stale
//! attempt reads nothing and writes no checkpoint), its steps reported for the job's metrics.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use gantry::training::checkpoint::{self, Checkpoint};
use gantry::training::device::Placed;
use gantry::training::{self, CheckpointSink, Hooks, Job, Progress, TrainError};
use gantry_daemon::lifecycle::RunEnd;
use gantry_daemon::nodes::{HandedRun, MAX_REPORTED_STEPS};

use super::daemon::{AgentSink, Client, Training, call_bytes};

/// How often steps are reported (and a stop asked for is heard).
const REPORT_EVERY: Duration = Duration::from_millis(500);

/// Runs training configuration `text` of `run` to its end: how it ended.
pub(super) fn train(
    client: &Client,
    node: &str,
    run: &HandedRun,
    text: &str,
    emulated: bool,
    training: &Training,
    sink: &AgentSink<'_>,
) -> RunEnd {
    match train_run(client, node, run, text, emulated, training, sink) {
        Ok(o) => {
            let mut result = gantry_daemon::runner::result_json(&o);
            result["ran_on"] = serde_json::json!({"node": node, "gpus": run.gpu_ids,
                                                 "emulated": emulated});
            RunEnd::Finished(result, gantry_daemon::runner::summary(&o))
        }
        Err(TrainError::Stopped { .. }) => RunEnd::Stopped,
        // Asked to stop (its agent's lease lapsed while the leader changed, say), a run stops
        // asking an unreachable control plane; that is its stop, not a failure of the job. The
        // kill loop once failed a job so: "writing the checkpoint at step 60: cannot reach".
        Err(TrainError::Unavailable(_)) if sink.stopping() => RunEnd::Stopped,
        Err(e) => RunEnd::Failed(e.to_string()),
    }
}

fn train_run(
    client: &Client,
    node: &str,
    run: &HandedRun,
    text: &str,
    emulated: bool,
    training: &Training,
    sink: &AgentSink<'_>,
) -> Result<training::Outcome, TrainError> {
    let limits = &training.limits;
    // Checked here too, against this agent's limits: the run trusts no one's parse.
    let mut config = gantry_daemon::runner::train_config(limits, &run.job, text)?;
    // It trains with a replica per GPU it was placed on ([`Job::placed`]), whatever its text
    // says: what it reserves counts them (one replica's need was reserved for eight).
    config.devices.replicas = run.gpu_ids.len().max(1);
    let what = format!(
        "job {}: train on {} GPU(s), a replica each",
        run.job,
        run.gpu_ids.len()
    );
    config.check_limits(limits, std::path::Path::new(&what), None)?;
    // What it may need, from the memory this agent's runs share (its daemon's too, for the
    // agent `gantry up` runs): held until the run ends.
    let mib = config.memory_bound_mib(limits);
    let budget = &training.budget;
    let reserved = budget.reserve(
        gantry_daemon::db::tenant_of(&run.job),
        mib,
        || sink.stopping(),
        |used| {
            sink.log_line(&format!(
                "waiting for memory: it may need {mib} MiB, and node {node}'s training runs \
                 have {used} of their {} MiB (--train-memory-mib)",
                budget.total_mib()
            ))
        },
    );
    let _reserved = match reserved {
        Ok(Some(reserved)) => reserved,
        Ok(None) => return Err(TrainError::Stopped { step: 0 }),
        Err(e) => {
            return Err(TrainError::Invalid {
                path: std::path::PathBuf::from(format!("job {}: train", run.job)),
                line: None,
                message: e,
            });
        }
    };
    let at = RunAt {
        client,
        query: format!("job={}&attempt={}", run.job, run.attempt),
        node,
        sink,
    };
    let data = match &config.data.dataset {
        Some(name) => {
            let input = at.get("dataset")?.into_body().into_reader();
            // Through a plugin, the control plane sends the plugin's records, the label first.
            let label = match config.data.preprocess {
                Some(_) => 0,
                None => config.data.label_column.unwrap_or(0),
            };
            gantry_daemon::runner::stored_rows(input, name, label, &config, limits)?
        }
        None => training::data::load(&config, limits)?,
    };
    let ordinals = gantry_daemon::command::visible_devices(&run.gpu_ids)
        .map_err(TrainError::Unavailable)?
        .split(',')
        .map(|o| o.parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TrainError::Unavailable(format!("the placement's ordinals: {e}")))?;
    let placed = Placed { ordinals, emulated };
    let steps = RefCell::new(Steps::default());
    let mut checkpoints = NodeCheckpoints {
        at: &at,
        sink,
        steps: &steps,
    };
    let job = Job::placed(config, data, &placed, limits)?.resume_from(checkpoints.newest()?);
    sink.log_line(&format!(
        "training on node {node}, GPUs {} ({}), data: {}",
        run.gpu_ids.join(", "),
        job.selected().reason(),
        job.data().source
    ));
    let stop = || sink.stopping();
    let mut progress = |p: &Progress| {
        let due = {
            let mut s = steps.borrow_mut();
            s.pending.push(*p);
            s.pending.len() >= MAX_REPORTED_STEPS || s.sent.elapsed() >= REPORT_EVERY
        };
        if due {
            flush(&steps, sink);
        }
    };
    let hooks = Hooks::new()
        .progress(&mut progress)
        .stop(&stop)
        .time_limit_s(limits.max_run_time_s)
        .checkpoints(&mut checkpoints);
    let outcome = job.run(hooks);
    flush(&steps, sink);
    outcome
}

/// Steps not yet reported, and when steps were last sent.
struct Steps {
    pending: Vec<Progress>,
    sent: Instant,
}

impl Default for Steps {
    fn default() -> Self {
        Self {
            pending: Vec::new(),
            sent: Instant::now(),
        }
    }
}

/// Reports the steps not yet reported (in reports of at most [`MAX_REPORTED_STEPS`]); a stop
/// in the answer stops the run.
fn flush(steps: &RefCell<Steps>, sink: &AgentSink<'_>) {
    let pending = {
        let mut s = steps.borrow_mut();
        s.sent = Instant::now();
        std::mem::take(&mut s.pending)
    };
    for chunk in pending.chunks(MAX_REPORTED_STEPS) {
        sink.report_stop(serde_json::json!({"event": "progress", "steps": chunk}));
    }
}

/// A run's requests about itself: `/v1/nodes/{node}/runs/{what}?job=..&attempt=..`.
struct RunAt<'a> {
    client: &'a Client,
    query: String,
    node: &'a str,
    sink: &'a AgentSink<'a>,
}

impl RunAt<'_> {
    fn path(&self, what: &str, extra: &str) -> String {
        format!("/v1/nodes/{}/runs/{what}?{}{extra}", self.node, self.query)
    }

    fn get(&self, what: &str) -> Result<ureq::http::Response<ureq::Body>, TrainError> {
        self.send("GET", &self.path(what, ""), None)
    }

    /// A request, asked again while no control plane answers it (a replicated one electing a
    /// new leader, say): see [`AgentSink::retrying`].
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<ureq::http::Response<ureq::Body>, TrainError> {
        self.sink
            .retrying(|| call_bytes(self.client, method, path, body))
            .map_err(|e| TrainError::Unavailable(format!("{e:#}")))
    }
}

/// The job's checkpoints, in the control plane's store. The steps taken before a checkpoint
/// are reported before it is written, so the job's metrics saved with it hold them.
struct NodeCheckpoints<'a> {
    at: &'a RunAt<'a>,
    sink: &'a AgentSink<'a>,
    steps: &'a RefCell<Steps>,
}

impl NodeCheckpoints<'_> {
    /// The newest checkpoint, verified (its digest, its network), or none.
    fn newest(&mut self) -> Result<Option<Checkpoint>, TrainError> {
        Ok(self.latest()?.map(|(_, c)| c))
    }
}

impl CheckpointSink for NodeCheckpoints<'_> {
    fn save(&mut self, c: &Checkpoint) -> Result<String, TrainError> {
        flush(self.steps, self.sink);
        let step = c.state.step;
        let path = self.at.path("checkpoint", &format!("&step={step}"));
        let bytes = checkpoint::to_bytes(c);
        self.at.send("PUT", &path, Some(&bytes)).map_err(|e| {
            TrainError::Unavailable(format!("writing the checkpoint at step {step}: {e}"))
        })?;
        Ok(format!("step {step}"))
    }

    fn latest(&mut self) -> Result<Option<(String, Checkpoint)>, TrainError> {
        let response = match self.at.get("checkpoint") {
            Err(TrainError::Unavailable(e)) if e.starts_with("404") => return Ok(None),
            other => other?,
        };
        let step: Option<u32> = response
            .headers()
            .get(gantry_daemon::api::STEP_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let bytes = response
            .into_body()
            .into_with_config()
            .limit(checkpoint::max_file_bytes())
            .read_to_vec()
            .map_err(|e| TrainError::Unavailable(format!("reading the checkpoint: {e}")))?;
        let name = format!("the checkpoint at step {}", step.unwrap_or(0));
        let c = checkpoint::from_bytes(&bytes, std::path::Path::new(&name))?;
        if step != Some(c.state.step) {
            return Err(TrainError::Unavailable(format!(
                "{name} holds step {}",
                c.state.step
            )));
        }
        self.sink.log_line(&format!(
            "resuming from the checkpoint at step {}",
            c.state.step
        ));
        Ok(Some((format!("step {}", c.state.step), c)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// A control plane nobody answers on: a loopback port just closed.
    fn unreachable() -> Client {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a loopback port")
            .port();
        Client {
            url: format!("http://127.0.0.1:{port}"),
            token: "node-token".into(),
            ca_cert: None,
            insecure: false,
            client_cert: None,
            client_key: None,
            timeout: None,
        }
    }

    /// Trains spirals as attempt 3 of `job-1` on `node-a` against an unreachable control
    /// plane; `stop` is set `after` the run starts (`None`: before it).
    fn end_with_stop(after: Option<Duration>) -> RunEnd {
        let client = unreachable();
        let run = HandedRun {
            job: "job-1".into(),
            attempt: 3,
            tenant: "team-a".into(),
            gpu_ids: vec!["node-a/gpu0".into()],
            command: None,
            train: None,
            stop: false,
        };
        let stop = AtomicBool::new(after.is_none());
        let sink = AgentSink::new(&client, "node-a", &run, &stop);
        let text = include_str!("../../../assets/train/spirals.toml");
        std::thread::scope(|s| {
            if let Some(after) = after {
                let stop = &stop;
                s.spawn(move || {
                    std::thread::sleep(after);
                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                });
            }
            let training = Training::of(None, None, None).unwrap();
            train(&client, "node-a", &run, text, true, &training, &sink)
        })
    }

    /// The kill loop once failed a job so ("writing the checkpoint at step 60: cannot reach"):
    /// its agent had been told to stop, then lost the control plane.
    #[test]
    fn a_run_asked_to_stop_that_cannot_reach_the_control_plane_ends_stopped_not_failed() {
        let end = end_with_stop(None);
        assert!(matches!(end, RunEnd::Stopped), "{end:?}");
    }

    /// A run waits for an unreachable control plane (a leader changing) until its agent stops
    /// it, its lease lapsed: that too is a stop, not a failure of the job.
    #[test]
    fn a_run_waiting_for_the_control_plane_ends_stopped_when_its_agent_stops_it() {
        let end = end_with_stop(Some(Duration::from_millis(300)));
        assert!(matches!(end, RunEnd::Stopped), "{end:?}");
    }
}
