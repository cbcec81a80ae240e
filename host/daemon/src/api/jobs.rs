//! Jobs: submission, listing, reading, cancelling, and a job's logs and training metrics.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::datasets::readable_dataset;
use super::{
    ApiError, ApiResult, AppState, Caller, MAX_BODY, TenantQuery, authorize, blocking, here,
    in_tenant, one_visible, refused, valid_id,
};
use crate::body;
use crate::db::{JobRecord, JobState, User};
use gantry::cluster::{JobSpec, Topology};
use gantry::policy::request::{Action, CommandRef, JobRef, ModelRef, Resource};

/// The body of `POST /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// Unique id (default: generated).
    #[serde(default)]
    pub id: Option<String>,
    /// The tenant whose queue and quota it uses.
    pub tenant: String,
    /// GPUs.
    pub gpus: u32,
    /// Memory per GPU, MiB: at most `u32::MAX` (4 PiB), as the scheduler counts it (a larger
    /// value, cut to fit for the scheduler, was stored wrapped and broke every listing and the
    /// daemon's next start).
    #[serde(default = "default_memory")]
    pub memory_per_gpu_mib: u32,
    /// Estimated runtime, seconds.
    #[serde(default = "default_runtime")]
    pub est_runtime_s: f64,
    /// A training job: `TRAIN.toml` text (synthetic data; checkpoints go to the encrypted
    /// store).
    #[serde(default)]
    pub train: Option<String>,
    /// A command job: the program to run on the placed GPUs (see [`crate::command`]); asked of
    /// the policy as `job.exec`.
    #[serde(default)]
    pub command: Option<crate::command::CommandSpec>,
}

fn default_memory() -> u32 {
    16_000
}

fn default_runtime() -> f64 {
    3600.0
}

/// The scheduler's view of a stored job.
pub fn spec(job: &JobRecord) -> JobSpec {
    JobSpec {
        id: job.id.clone(),
        tenant: job.tenant.clone(),
        priority: 0,
        gpus: job.gpus,
        // A stored job's is at most `u32::MAX` (the submission's type).
        memory_per_gpu_mib: u32::try_from(job.memory_per_gpu_mib).unwrap_or(u32::MAX),
        gang: true,
        // A command job runs as one process group: on one node.
        topology: if job.command.is_some() {
            Topology::SameNode
        } else {
            Topology::None
        },
        est_runtime_s: job.est_runtime_s,
        submit_time_s: job.submitted_at,
    }
}

pub(super) async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> ApiResult<Response> {
    let user = caller.user(&state).await?;
    let req: SubmitRequest = body::json(body, MAX_BODY).await?;
    let outcome = blocking(&state, move |state| submit_job(state, user, req)).await?;
    state.wake.notify_one();
    Ok((StatusCode::CREATED, Json(shown(outcome))).into_response())
}

/// Checks, decides and stores a submission (blocking).
fn submit_job(state: &AppState, user: User, req: SubmitRequest) -> ApiResult<JobRecord> {
    ApiError::disk_room(&state.daemon)?;
    let id = req
        .id
        .clone()
        .unwrap_or_else(|| format!("job-{}", &gantry::audit::new_decision_id()[..12]));
    if !valid_id(&id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "field `id`: 1-64 characters of letters, digits, '-', '_' and '.', not starting with '.'",
        ));
    }
    if req.train.is_some() && req.command.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a job trains (`train`) or runs a command (`command`), not both",
        ));
    }
    let most = state.daemon.commands.max_wall_time_s;
    if req.train.is_none() && req.command.is_none() && req.est_runtime_s > most {
        // A reservation holds its GPUs for its estimated runtime: a review's held a tenant's
        // GPUs for 1e9 s (31 years), past any wall time a command may have.
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "field `est_runtime_s`: a job with neither `train` nor `command` holds its GPUs \
                 for its estimated runtime, at most {most} s (the daemon's --max-wall-time-s)"
            ),
        ));
    }
    if let Some(command) = &req.command {
        let limits = &state.daemon.commands;
        // Where the program would run as whom: here (or by the agent inside this process,
        // under these limits), unless agents elsewhere run it (each decides).
        let elsewhere = state.daemon.nodes.is_some() && !state.daemon.agent_here;
        crate::command::check(command, limits)
            .and_then(|()| match elsewhere {
                true => Ok(()),
                false => crate::command::runs_as(limits)
                    .and_then(|_| crate::command::fits_here(command, limits)),
            })
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("job {id}: {e}")))?;
        authorize(
            state,
            &user,
            Action::JobExec,
            CommandRef {
                tenant: req.tenant.clone(),
                job: id.clone(),
                program: command.argv[0].clone(),
            },
        )?;
    }
    if let Some(text) = &req.train {
        let origin = format!("job {id}: train");
        let limits = &state.daemon.train_limits;
        let config = crate::runner::train_config(limits, &id, text)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        if state.daemon.nodes.is_some() {
            // On a node's agent it trains with one replica per GPU it is placed on, whatever
            // `[devices] replicas` says: its sizes are checked as it will run, not at run time.
            let mut placed = config.clone();
            placed.devices.replicas = usize::try_from(req.gpus).unwrap_or(usize::MAX).max(1);
            let what = format!("{origin} on {} GPU(s), a replica each", req.gpus);
            placed
                .check_limits(limits, std::path::Path::new(&what), None)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        }
        if let Some(plugin) = &config.data.preprocess
            && gantry::builtin::preprocessor(plugin).is_none()
            && !state
                .daemon
                .plugins
                .plugins(Some(plugin))
                .map_err(ApiError::internal)?
                .iter()
                .any(|p| p.kind == crate::KIND_PREPROCESS)
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{origin}: no preprocessing plugin `{plugin}` (shipped or uploaded)"),
            ));
        }
        if let Some(name) = &config.data.dataset {
            // The job reads the dataset as its submitter: same tenant, and the policy's
            // dataset.read (clearance) now, not only when it runs.
            readable_dataset(state, &user, name, Some(&req.tenant)).map_err(|e| {
                // Name the job in a not-found; a policy refusal speaks for itself.
                if e.status == StatusCode::NOT_FOUND {
                    e.context(&origin)
                } else {
                    e
                }
            })?;
        }
    }
    let job = admit(state, &user, new_job(&user, &id, req))?;
    // Where a tenant's stored jobs grow, its oldest finished ones go.
    state.daemon.forget_finished(&job.tenant);
    Ok(job)
}

/// A new job `id` of `user`'s, pending.
fn new_job(user: &User, id: &str, req: SubmitRequest) -> JobRecord {
    JobRecord {
        id: crate::db::key(&req.tenant, id),
        tenant: req.tenant,
        owner: user.name.clone(),
        gpus: req.gpus,
        memory_per_gpu_mib: u64::from(req.memory_per_gpu_mib),
        est_runtime_s: req.est_runtime_s,
        state: JobState::Pending,
        gpu_ids: Vec::new(),
        reason: None,
        submitted_at: crate::db::now(),
        train: req.train,
        command: req.command,
        result: None,
        crashes: 0,
        not_before: 0.0,
    }
}

/// Checks `job` against the cluster, asks the policy to admit it for `user` and stores it.
/// Decided off the host's lock (the decision's record is synced to disk), then queued and
/// stored under it only if what the policy saw, the GPUs the tenant holds, is what it holds
/// still; decided again if not, a few times, then under the lock: so the quota the policy saw
/// is the quota the job is admitted against, and no other request waits on the host for a
/// submission's sync (every submission held the host's write lock across the decision's audit
/// sync and two database commits).
fn admit(state: &AppState, user: &User, job: JobRecord) -> ApiResult<JobRecord> {
    /// Decisions off the lock before one under it.
    const TRIES: usize = 3;
    let daemon = &state.daemon;
    let spec = spec(&job);
    for attempt in 0..=TRIES {
        let (checked, admission) = {
            let host = daemon.host_read();
            let checked = checked_job(&host, spec.clone())?;
            queue_room(daemon, &host, &job.tenant)?;
            (checked, host.admission(&spec))
        };
        // The last try holds the lock across its decision.
        let held = (attempt == TRIES).then(|| daemon.host());
        let decided = match &held {
            Some(host) => host.admission(&spec),
            None => admission,
        };
        let request =
            gantry::policy::Request::new(user.subject(), Action::JobSubmit, decided.clone());
        here(daemon.decider.require(&request)).map_err(|e| refused(daemon, e))?;
        crate::metrics::Metrics::inc(&daemon.metrics.decisions_allowed);
        let mut host = held.unwrap_or_else(|| daemon.host());
        queue_room(daemon, &host, &job.tenant)?;
        match host.enqueue_admitted(checked, &decided) {
            Ok(true) => {}
            // The tenant's GPUs changed while it was decided: again.
            Ok(false) => continue,
            Err(gantry::HostError::Job { message, .. }) => {
                return Err(ApiError::new(StatusCode::CONFLICT, message));
            }
            Err(e) => return Err(ApiError::internal(e)),
        }
        let stored = daemon.jobs.insert_job(&job);
        if !matches!(stored, Ok(true)) {
            host.cancel(&job.id);
        }
        drop(host);
        return match stored {
            Ok(true) => {
                let _ = daemon
                    .jobs
                    .log(&job.id, &format!("submitted by {}", job.owner));
                Ok(job)
            }
            Ok(false) => Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "a job `{}` already exists in tenant {}",
                    crate::db::name_of(&job.id),
                    job.tenant
                ),
            )),
            Err(e) => Err(e.into()),
        };
    }
    unreachable!("the last try decides under the lock, where nothing changes")
}

/// `spec` checked against the cluster, or a 400 saying why not.
fn checked_job(host: &gantry::Host, spec: JobSpec) -> ApiResult<gantry::CheckedJob> {
    match host.check(spec) {
        Ok(checked) => Ok(checked),
        Err(gantry::HostError::Job { message, .. }) => {
            // The cluster's tenants are not every caller's to list (the check names them, for
            // an operator's cluster and job files).
            let message = match message.split_once(" (known: ") {
                Some((unknown, _)) if message.starts_with("tenant: ") => unknown.to_string(),
                _ => message,
            };
            Err(ApiError::new(StatusCode::BAD_REQUEST, message))
        }
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// A 429 when `tenant` has as many jobs waiting as one tenant may.
fn queue_room(daemon: &crate::Daemon, host: &gantry::Host, tenant: &str) -> ApiResult<()> {
    let queued = host
        .state()
        .pending
        .iter()
        .filter(|p| p.spec.tenant == tenant)
        .count();
    if queued >= daemon.tenant_limits.queued_jobs {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "tenant {tenant} has {queued} jobs waiting to be placed, the most one tenant may \
                 (--max-queued-jobs-per-tenant): submit more as these are placed or cancelled"
            ),
        ));
    }
    Ok(())
}

/// Whether a listing shows `job` to `user`: admins all, others their tenants' jobs (the shipped
/// policy's rule for `job.read`, applied here so a listing is one decision, not one per job).
fn visible(user: &User, job: &JobRecord) -> bool {
    user.is_admin() || user.tenants.contains(&job.tenant)
}

/// The most jobs one listing returns.
pub(super) const MAX_PAGE: usize = 1000;

/// `?limit=N&after=TENANT/NAME` of a listing: a page of at most `limit` jobs (default and at most
/// [`MAX_PAGE`]) submitted after job `after`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Page {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<String>,
}

/// `GET /v1/jobs`: the caller's tenants' jobs (an admin's: all), in submission order, a page at
/// a time: a full page means there may be more, asked for with `?after=` the last one's
/// `tenant/id`. Only the page is read: a listing once read every job, train configurations
/// included, under the database's one lock (2,483 jobs of one tenant made another's listing of
/// none take seconds).
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    page: Result<axum::extract::Query<Page>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<crate::jobstore::Listed>>> {
    let axum::extract::Query(page) =
        page.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let limit = match page.limit {
        None => MAX_PAGE,
        Some(n) if (1..=MAX_PAGE).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`limit` = {n}: a page holds 1 to {MAX_PAGE} jobs"),
            ));
        }
    };
    caller
        .may(
            &state,
            Action::JobList,
            Resource::Empty {},
            move |state, user| {
                let tenants = (!user.is_admin()).then_some(user.tenants.as_slice());
                // Another tenant's job answers as a missing one: a page after it said whether
                // it existed, and when it was submitted.
                let hidden = |after: &str| {
                    let tenant = after.split_once('/').map_or("", |(t, _)| t);
                    tenants.is_some_and(|t| !t.iter().any(|t| t == tenant))
                };
                let after = page.after.as_deref().filter(|a| !hidden(a));
                let jobs = match (page.after.as_deref(), after) {
                    (Some(_), None) => Vec::new(),
                    _ => state.daemon.jobs.jobs_page(tenants, after, limit)?,
                };
                if let Some(after) = page.after.as_deref()
                    && jobs.is_empty()
                    && (hidden(after) || state.daemon.jobs.job(after)?.is_none())
                {
                    // Never an empty page that reads as the listing's end.
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!(
                            "`after` = {after}: no such job (finished jobs beyond the newest \
                             {} of a tenant are forgotten): list again from the start",
                            state.daemon.tenant_limits.finished_jobs
                        ),
                    ));
                }
                debug_assert!(jobs.iter().all(|j| visible(&user, &j.job)));
                Ok(Json(jobs))
            },
        )
        .await
}

fn find(state: &AppState, user: &User, id: &str, tenant: Option<&str>) -> ApiResult<JobRecord> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, format!("no job `{id}`"));
    let job = one_visible(
        state.daemon.jobs.jobs_named(id)?,
        |j| visible(user, j),
        |j| &j.tenant,
        tenant,
        "job",
        id,
    )?
    .ok_or_else(not_found)?;
    match authorize(
        state,
        user,
        Action::JobRead,
        JobRef {
            tenant: job.tenant.clone(),
            job: crate::db::name_of(&job.id).to_string(),
        },
    ) {
        Ok(()) => Ok(job),
        Err(e) if e.status == StatusCode::FORBIDDEN => Err(not_found()),
        Err(e) => Err(e),
    }
}

pub(super) async fn job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: TenantQuery,
    caller: Caller,
) -> ApiResult<Json<JobRecord>> {
    let tenant = in_tenant(query);
    caller
        .then(&state, move |state, user| {
            Ok(Json(shown(find(state, &user, &id, tenant?.as_deref())?)))
        })
        .await
}

/// Job `job` as the API shows it: a command's environment by its names, each value hidden.
/// Values are what a job is given to run (an `HF_TOKEN`, say), and every member of its tenant
/// reads its jobs: a review read another user's token back from `GET /v1/jobs/{id}`.
fn shown(mut job: JobRecord) -> JobRecord {
    if let Some(command) = &mut job.command {
        for value in command.env.values_mut() {
            *value = HIDDEN.to_string();
        }
    }
    job
}

/// What the API shows for a command's environment value.
pub const HIDDEN: &str = "(hidden)";

/// `POST /v1/jobs/{id}/cancel`: 200 with the job `cancelled`, or 202 with it `cancelling` when
/// its run is under way (it stops at its next step and keeps its GPUs until then).
pub(super) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: TenantQuery,
    caller: Caller,
) -> ApiResult<Response> {
    let tenant = in_tenant(query);
    let (status, job) = caller
        .then(&state, move |state, user| {
            cancel_as(state, &user, &id, tenant?.as_deref())
        })
        .await?;
    state.wake.notify_one();
    Ok((status, Json(shown(job))).into_response())
}

/// Cancels job `id` (in `tenant`) for `user`, if the policy allows `job.cancel`: the answer's
/// status and the job.
fn cancel_as(
    state: &AppState,
    user: &User,
    id: &str,
    tenant: Option<&str>,
) -> ApiResult<(StatusCode, JobRecord)> {
    let job = find(state, user, id, tenant)?;
    let tenant = Some(job.tenant.as_str());
    let resource = JobRef {
        tenant: job.tenant.clone(),
        job: id.to_string(),
    };
    authorize(state, user, Action::JobCancel, resource)?;
    // Answered with the job as the cancel left it, not as read again: its run may have
    // stopped (and the job become `cancelled`) meanwhile.
    match state.daemon.cancel_job(&job, &user.name)? {
        Some(job) if job.state == JobState::Cancelling => Ok((StatusCode::ACCEPTED, job)),
        Some(job) => Ok((StatusCode::OK, job)),
        None => {
            let now = find(state, user, id, tenant)?.state;
            Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("job `{id}` is already {}", now.as_str()),
            ))
        }
    }
}

/// `GET /v1/jobs/{id}/logs`: what happened to the job, oldest first.
pub(super) async fn job_logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: TenantQuery,
    caller: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    let tenant = in_tenant(query);
    caller
        .then(&state, move |state, user| {
            let job = find(state, &user, &id, tenant?.as_deref())?;
            let lines = state.daemon.jobs.logs(&job.id)?;
            Ok(Json(json!(
                lines
                    .into_iter()
                    .map(|(at, message)| json!({"at": at, "message": message}))
                    .collect::<Vec<_>>()
            )))
        })
        .await
}

/// `GET /v1/jobs/{id}/model`: a succeeded training job's model, its last checkpoint (the file
/// `gantry eval --checkpoint` scores), streamed out of the store, each chunk decrypted and
/// authenticated before it is sent, its step in [`super::STEP_HEADER`]. Decided as
/// `job.model`, given the classification of the data it learned from (a model can give back
/// what it was trained on). Kept while the job is, among its tenant's newest.
pub(super) async fn model(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: TenantQuery,
    caller: Caller,
) -> ApiResult<Response> {
    let tenant = in_tenant(query);
    let (tenant, user, step, reader) = caller
        .then(&state, move |state, user| {
            let job = find(state, &user, &id, tenant?.as_deref())?;
            let resource = ModelRef {
                tenant: job.tenant.clone(),
                job: crate::db::name_of(&job.id).to_string(),
                classification: learned_from(&state.daemon, &job)?,
            };
            authorize(state, &user, Action::JobModel, resource)?;
            let (step, object) = kept_model(&state.daemon, &job)?;
            let reader = state
                .daemon
                .checkpoint_reader(&job.id, &object)
                .map_err(ApiError::internal)?;
            Ok((job.tenant, user.name, step, reader))
        })
        .await?;
    let transfer = (state.transfers)
        .slot(&[("tenant", &tenant), ("user", &user)])
        .await?;
    Ok(super::noderuns::checkpoint_response(step, reader, transfer))
}

/// The classification of the data training job `job` learned from: its stored dataset's,
/// `public` for synthetic rows; empty (no level the policy knows) when its configuration or
/// its dataset can no longer be read.
fn learned_from(daemon: &crate::Daemon, job: &JobRecord) -> ApiResult<String> {
    let Some(text) = &job.train else {
        return Ok("public".into());
    };
    let Ok(config) = crate::runner::train_config(&daemon.train_limits, &job.id, text) else {
        return Ok(String::new());
    };
    let Some(name) = &config.data.dataset else {
        return Ok("public".into());
    };
    let record = daemon
        .datasets
        .dataset(&crate::db::key(&job.tenant, name))?;
    Ok(record.map(|d| d.classification).unwrap_or_default())
}

/// Job `job`'s model: the step and object of the checkpoint it kept when it succeeded.
fn kept_model(daemon: &crate::Daemon, job: &JobRecord) -> ApiResult<(u32, String)> {
    let id = crate::db::name_of(&job.id);
    if job.train.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("job `{id}` runs a command, not training: it has no model"),
        ));
    }
    if job.state != JobState::Succeeded {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job `{id}` is {}: a training job's model is kept once it succeeds",
                job.state.as_str()
            ),
        ));
    }
    daemon.jobs.latest_checkpoint(&job.id)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "job `{id}` keeps no model: its tenant keeps those of its newest succeeded jobs \
                 (its log says when it let this one go)"
            ),
        )
    })
}

/// `GET /v1/jobs/{id}/metrics`: a training job's progress (step of total, epoch, loss,
/// throughput) and loss curve; live while it runs, as saved once it ended; zeros before it ran.
pub(super) async fn job_metrics(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: TenantQuery,
    caller: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    let tenant = in_tenant(query);
    caller
        .then(&state, move |state, user| {
            let job = find(state, &user, &id, tenant?.as_deref())?;
            let curve = state.daemon.curve(&job.id)?.unwrap_or_default();
            let mut body = serde_json::to_value(&curve).map_err(ApiError::internal)?;
            body["job"] = json!(id);
            body["tenant"] = json!(job.tenant);
            body["state"] = json!(job.state);
            body["progress"] = json!(curve.progress());
            if let Some(result) = job.result {
                body["result"] = result;
            }
            Ok(Json(body))
        })
        .await
}
