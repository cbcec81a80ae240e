//! Runs a scheduled training job on the native hot path, in a thread of its own: checkpoints go
//! into the encrypted store (recorded in the database), a restarted daemon resumes from the
//! newest one, and a cancelled job stops after its current step.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Daemon;
use super::db::{JobRecord, JobState};
use super::labels::LabelSplit;
use crate::training::checkpoint::{self, Checkpoint};
use crate::training::{self, TrainConfig, TrainError};

/// Starts `job` (whose `train` is set) unless it is already running. A previous run of the same
/// job that is still stopping (its GPU failed, say) is waited for first, so two runs of one job
/// never overlap.
pub fn start(daemon: Arc<Daemon>, job: JobRecord) {
    let id = job.id.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("gantry-job-{id}"))
        .spawn({
            let daemon = daemon.clone();
            move || {
                let span = tracing::info_span!("gantry_daemon.job", job = %job.id);
                let _entered = span.enter();
                let Some(stop) = claim(&daemon, &job.id) else {
                    return;
                };
                let outcome = run(&daemon, &job, &stop);
                finish(&daemon, &job, outcome);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(job = %id, error = %e, "starting a training thread");
    }
}

/// Registers a run of `id`; `None` if one is already running (and not stopping).
fn claim(daemon: &Daemon, id: &str) -> Option<Arc<AtomicBool>> {
    loop {
        {
            let mut running = daemon.running.lock().unwrap_or_else(|e| e.into_inner());
            match running.get(id) {
                None => {
                    let stop = Arc::new(AtomicBool::new(false));
                    running.insert(id.to_string(), stop.clone());
                    return Some(stop);
                }
                Some(flag) if !flag.load(Ordering::SeqCst) => return None,
                Some(_) => {} // stopping: wait for it to finish its step
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn run(
    daemon: &Daemon,
    job: &JobRecord,
    stop: &AtomicBool,
) -> Result<training::Outcome, TrainError> {
    let origin = format!("job {}: train", job.id);
    let text = job.train.as_deref().unwrap_or_default();
    let config = TrainConfig::parse(text, std::path::Path::new(&origin))?;
    let data = match &config.data.dataset {
        Some(name) => load_dataset(daemon, job, &config, name)?,
        None => training::data::load(&config)?,
    };
    let report = training::device::detect();
    let selected = training::device::select(&report, &config.devices)?;
    let resume = match daemon
        .db
        .latest_checkpoint(&job.id)
        .map_err(|e| TrainError::Unavailable(e.to_string()))?
    {
        Some((step, object)) => {
            let bytes = daemon
                .store
                .get(&object)
                .map_err(|e| TrainError::Unavailable(e.to_string()))?;
            tracing::info!(step, object = %object, "resuming from checkpoint");
            let _ = daemon.db.log(
                &job.id,
                &format!("resuming from the checkpoint at step {step}"),
            );
            Some(checkpoint::from_bytes(
                &bytes,
                std::path::Path::new(&format!("checkpoint {object}")),
            )?)
        }
        None => None,
    };
    // The curve continues from the checkpoint: the steps after it are taken again.
    let mut curve = daemon.db.curve(&job.id).ok().flatten().unwrap_or_default();
    curve.rewind(resume.as_ref().map_or(0, |c| c.state.step));
    daemon.set_live_curve(&job.id, Some(curve));
    daemon
        .db
        .set_state(&job.id, JobState::Running, &job.gpu_ids, None)
        .and_then(|()| {
            daemon.db.log(
                &job.id,
                &format!("training on {} ({})", data.source, selected.reason()),
            )
        })
        .map_err(|e| TrainError::Unavailable(e.to_string()))?;
    let batch = config.batch_size as u64;
    let mut on_step = |p: &training::Progress| {
        let m = &daemon.metrics;
        m.train_steps.fetch_add(1, Ordering::Relaxed);
        m.train_samples.fetch_add(batch, Ordering::Relaxed);
        daemon.record_step(&job.id, p);
        !stop.load(Ordering::SeqCst)
    };
    let mut save = |c: &Checkpoint| -> Result<String, TrainError> {
        let object = daemon
            .store
            .put_bytes(&checkpoint::to_bytes(c))
            .map_err(|e| TrainError::Unavailable(e.to_string()))?;
        daemon
            .db
            .add_checkpoint(&job.id, c.state.step, &object)
            .and_then(|()| match daemon.live_curve(&job.id) {
                Some(curve) => daemon.db.set_curve(&job.id, &curve),
                None => Ok(()),
            })
            .and_then(|()| {
                daemon.db.log(
                    &job.id,
                    &format!(
                        "checkpoint at step {} (object {})",
                        c.state.step,
                        &object[..16]
                    ),
                )
            })
            .map_err(|e| TrainError::Unavailable(e.to_string()))?;
        Ok(object)
    };
    training::run::train(
        &config,
        &data,
        &selected,
        resume,
        training::Hooks {
            on_step: &mut on_step,
            save: Some(&mut save),
        },
    )
}

fn finish(daemon: &Daemon, job: &JobRecord, outcome: Result<training::Outcome, TrainError>) {
    if let Some(curve) = daemon.set_live_curve(&job.id, None)
        && let Err(e) = daemon.db.set_curve(&job.id, &curve)
    {
        tracing::error!(job = %job.id, error = %e, "saving a job's metrics");
    }
    daemon
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&job.id);
    let recorded = match outcome {
        Ok(o) => {
            tracing::info!(steps = o.steps, "training job succeeded");
            let result = serde_json::json!({
                "steps": o.steps,
                "resumed_at_step": o.resumed_at_step,
                "train_loss": o.train_loss,
                "test": o.test,
                "samples_per_s": o.samples_per_s,
                "backend": o.backend,
                "checkpoint": o.checkpoint,
            });
            let summary = format!(
                "succeeded after {} steps: train loss {:.4}{}",
                o.steps,
                o.train_loss,
                o.test
                    .and_then(|t| t.accuracy)
                    .map(|a| format!(", test accuracy {:.1} %", 100.0 * a))
                    .unwrap_or_default()
            );
            daemon
                .db
                .set_result(&job.id, &result)
                .and_then(|()| {
                    daemon
                        .db
                        .set_state(&job.id, JobState::Succeeded, &job.gpu_ids, None)
                })
                .and_then(|()| daemon.db.log(&job.id, &summary))
        }
        // Stopped by whoever set its flag (a cancel, a failed GPU), who also owns what happens
        // to the job next: nothing to record, and its place in the host is theirs to change.
        Err(TrainError::Stopped { step }) => {
            tracing::info!(step, "training job stopped");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "training job failed");
            daemon
                .db
                .set_state(
                    &job.id,
                    JobState::Failed,
                    &job.gpu_ids,
                    Some(&e.to_string()),
                )
                .and_then(|()| daemon.db.log(&job.id, &format!("failed: {e}")))
        }
    };
    if let Err(e) = recorded {
        tracing::error!(job = %job.id, error = %e, "recording a job's end");
    }
    daemon.host().cancel(&job.id);
}

/// A job's stored dataset, streamed: decrypted chunk by chunk, the label column split off as it
/// goes, the feature columns parsed or (when the config names a plugin) streamed through the
/// preprocessing plugin in the sandbox. Only the features and labels are ever held whole.
fn load_dataset(
    daemon: &Daemon,
    job: &JobRecord,
    config: &TrainConfig,
    name: &str,
) -> Result<training::data::Loaded, TrainError> {
    use std::io::BufRead;
    let unavailable = |m: String| TrainError::Unavailable(m);
    let record = daemon
        .db
        .dataset(name)
        .map_err(|e| unavailable(e.to_string()))?
        .filter(|d| d.tenant == job.tenant)
        .ok_or_else(|| unavailable(format!("no dataset `{name}` in tenant {}", job.tenant)))?;
    let label = config.data.label_column.unwrap_or(0);
    let labels = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let open = || -> Result<Box<dyn std::io::Read + Send>, crate::storage::StoreError> {
        let reader = daemon.store.reader(&record.object)?;
        Ok(Box::new(LabelSplit::new(reader, label, labels.clone())))
    };
    let (features, width) = match &config.data.preprocess {
        None => {
            let input = open().map_err(|e| unavailable(e.to_string()))?;
            let mut values = Vec::new();
            let mut width = 0;
            for (i, line) in std::io::BufReader::new(input).split(b'\n').enumerate() {
                let line = line.map_err(|e| unavailable(format!("dataset `{name}`: {e}")))?;
                let before = values.len();
                for field in line.split(|&b| b == b',') {
                    let text = std::str::from_utf8(field).unwrap_or("").trim();
                    values.push(
                        text.parse::<f32>()
                            .ok()
                            .filter(|v| v.is_finite())
                            .ok_or_else(|| {
                                unavailable(format!(
                                    "dataset `{name}`: line {}: `{text}` is not a number",
                                    i + 1
                                ))
                            })?,
                    );
                }
                width = values.len() - before;
            }
            (values, width)
        }
        Some(plugin) => {
            let plugin =
                super::preprocess_plugin(&daemon.db, &daemon.store, &daemon.host_read(), plugin)
                    .map_err(unavailable)?;
            let mut values = Vec::new();
            let mut width = 0;
            crate::pipeline::run(
                &open,
                &plugin,
                crate::pipeline::PipelineConfig::default(),
                &mut |t| {
                    width = t.shape.get(1).copied().unwrap_or(1) as usize;
                    values.extend(t.data);
                    Ok(())
                },
            )
            .map_err(|e| unavailable(format!("dataset `{name}`: {e}")))?;
            (values, width)
        }
    };
    let labels = std::mem::take(&mut *labels.lock().unwrap_or_else(|e| e.into_inner()));
    if labels.len() * width != features.len() {
        return Err(unavailable(format!(
            "dataset `{name}`: {} labels for {} feature values of width {width}",
            labels.len(),
            features.len()
        )));
    }
    let dataset = gantry_kernels::Dataset {
        features,
        targets: labels,
        inputs: width,
        targets_per_row: 1,
    };
    training::data::prepare(config, dataset, format!("dataset {name}"))
}
