//! The HTTP handlers: authentication, policy decisions, and the job endpoints.
//!
//! Every handler learns who is asking from the headers alone, before any body is read, and
//! decides what it can decide then; bodies are read afterwards, bounded ([`super::body`]).
//! Work that blocks (SQLite, policy evaluation, the audit log's syncs, the store) runs on the
//! blocking pool behind one bounded gate ([`blocking`]), never on the async workers, so the
//! health endpoint and every other request keep answering under load.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};

use super::Daemon;
use super::body;
use super::db::{JobRecord, JobState, User};
use gantry::cluster::{JobSpec, Topology};
use gantry::policy::request::{Action, JobRef, PluginRef, Request, Resource};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 << 10;

/// Largest dataset upload.
pub const MAX_UPLOAD: usize = 64 << 20;

/// Longest error message in a response (and in the audit log): the rest is cut, saying how much.
pub const MAX_ERROR: usize = 4 << 10;

/// Requests with a large body (an upload of a plugin or a policy bundle, read whole) handled at
/// once; more wait their turn before their body is read. Dataset uploads stream and are not
/// counted.
pub const LARGE_BODY_SLOTS: usize = 2;

/// Streamed transfers (dataset uploads and downloads) at once; more wait up to
/// [`TRANSFER_WAIT`] for a turn, then are answered 503.
pub const TRANSFER_SLOTS: usize = 8;

/// How long a transfer waits for one of the [`TRANSFER_SLOTS`].
pub const TRANSFER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone)]
struct AppState {
    daemon: Arc<Daemon>,
    wake: Arc<Notify>,
    large_bodies: Arc<Semaphore>,
    transfers: Arc<Semaphore>,
}

/// The API's routes.
pub fn router(daemon: Arc<Daemon>, wake: Arc<Notify>) -> Router {
    let state = AppState {
        daemon: daemon.clone(),
        wake,
        large_bodies: Arc::new(Semaphore::new(LARGE_BODY_SLOTS)),
        transfers: Arc::new(Semaphore::new(TRANSFER_SLOTS)),
    };
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/logs", get(job_logs))
        .route("/v1/jobs/{id}/metrics", get(job_metrics))
        .route("/metrics", get(metrics))
        .route("/v1/datasets", get(datasets))
        .route("/v1/datasets/{name}", axum::routing::put(upload))
        .route("/v1/datasets/{name}/content", get(download))
        .route("/v1/nodes", get(nodes))
        .route("/v1/gpus", get(gpus))
        .route("/v1/gpus/unhealthy", post(mark_unhealthy))
        .route("/v1/gpus/healthy", post(mark_healthy))
        .route("/v1/keys/rotate", post(rotate_key))
        .route("/v1/users/{name}/revoke", post(revoke_tokens))
        .route("/v1/audit/head", get(audit_head))
        .route("/v1/plugins", get(plugins))
        .route("/v1/plugins/scheduler", post(load_scheduler))
        .route("/v1/plugins/scheduler/reload", post(reload_scheduler))
        .route("/v1/plugins/{name}", axum::routing::put(upload_plugin))
        .route("/v1/audit/verify", get(verify_audit))
        .route("/v1/policy", post(reload_policy).get(policy_info))
        // Handlers read bodies themselves, after authentication (`body`); nothing else may.
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            daemon,
            count_responses,
        ))
        .with_state(state)
}

/// Counts every response by status class, and counts every refused request (4xx) that no
/// policy decided (policy denials are in the audit log as decisions already) for the audit
/// log's aggregate of refusals (see `rejections`): a missing or wrong token, a malformed body,
/// an oversized upload, a bad name, another tenant's job, an unknown route.
async fn count_responses(
    State(daemon): State<Arc<Daemon>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("(no such route)", |p| p.as_str())
        .to_string();
    let source = request
        .extensions()
        .get::<super::serve::Peer>()
        .map(|p| p.0.ip());
    let response = next.run(request).await;
    let m = &daemon.metrics;
    let status = response.status();
    let counter = match status.as_u16() {
        500.. => &m.requests_server_error,
        400..=499 => &m.requests_client_error,
        _ => &m.requests_ok,
    };
    super::metrics::Metrics::inc(counter);
    if status.is_client_error() {
        let refusal = response.extensions().get::<Refusal>();
        if !refusal.is_some_and(|r| r.decided) {
            let error = refusal.map_or_else(
                || status.canonical_reason().unwrap_or("").to_string(),
                |r| r.error.clone(),
            );
            daemon
                .rejections
                .note(source, &method, &route, status.as_u16(), &error);
            super::metrics::Metrics::inc(&m.rejections);
        }
    }
    response
}

async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let text = blocking(&state, |state| {
        let daemon = &state.daemon;
        let counts = daemon.db.counts_by_state().map_err(ApiError::internal)?;
        let counts: Vec<(&str, u64)> = counts.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        let host = daemon.host_read();
        let plugin = host
            .scheduler()
            .map(|p| (p.name().to_string(), p.health().report()));
        drop(host);
        let running = daemon.live_curves();
        Ok(super::metrics::render(
            &daemon.metrics,
            plugin.as_ref().map(|(n, h)| (n.as_str(), h.clone())),
            &counts,
            &running,
        ))
    })
    .await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response())
}

/// An error response: a status and `{"error", "reasons"?, "decision_id"?}`.
pub(crate) struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

/// What a refusal said, for the count of refusals (a response extension: the body is not read
/// back).
#[derive(Debug, Clone)]
struct Refusal {
    error: String,
    /// A policy decided it (and the audit log has it already).
    decided: bool,
}

/// `message`, cut to [`MAX_ERROR`] bytes (at a character boundary), saying how much was cut.
pub fn cap_message(message: String) -> String {
    if message.len() <= MAX_ERROR {
        return message;
    }
    let mut end = MAX_ERROR;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}... ({} more bytes)",
        &message[..end],
        message.len() - end
    )
}

impl ApiError {
    /// Prefixes the message with where it arose (`job x: train`).
    fn context(mut self, origin: &str) -> Self {
        if let Some(m) = self.body["error"].as_str() {
            self.body["error"] = cap_message(format!("{origin}: {m}")).into();
        }
        self
    }

    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({"error": cap_message(message.into())}),
        }
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let refusal = Refusal {
            error: self.body["error"].as_str().unwrap_or_default().to_string(),
            decided: self.body.get("decision_id").is_some(),
        };
        let mut response = (self.status, Json(self.body)).into_response();
        response.extensions_mut().insert(refusal);
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Runs `work` on the core's bounded blocking pool ([`gantry::blocking::run`]): SQLite, audit
/// syncs and the store never run on the async workers.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&AppState) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let state = state.clone();
    gantry::blocking::run(move || work(&state)).await
}

/// Drives a call into the async core (a policy decision, a plugin probe, a policy's load) from
/// work on the blocking pool ([`blocking`]) or the daemon's start, on the calling thread: no
/// thread is started, and its own blocking steps run right there.
pub(crate) fn here<F: std::future::Future>(call: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(call)
}

/// The user behind the request's bearer token, looked up before anything else of the request
/// is read.
async fn caller(state: &AppState, headers: &HeaderMap) -> ApiResult<User> {
    let unauthorized =
        || ApiError::new(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?
        .trim()
        .to_string();
    // A token is short: a long one is junk, refused without a lookup.
    if token.len() > 256 {
        return Err(unauthorized());
    }
    blocking(state, move |state| {
        super::auth::check(&state.daemon.db, &token)
            .map_err(ApiError::internal)?
            .ok_or_else(unauthorized)
    })
    .await
}

/// Asks the policy whether `user` may do `action` to `resource` (and records the decision); a
/// denial is answered by [`refused`]. Blocks: call it inside [`blocking`].
fn authorize(
    state: &AppState,
    user: &User,
    action: Action,
    resource: impl Into<Resource>,
) -> ApiResult<()> {
    let request = Request::new(user.subject(), action, resource);
    let daemon = &state.daemon;
    here(daemon.decider.require(&request)).map_err(|e| refused(daemon, e))?;
    super::metrics::Metrics::inc(&daemon.metrics.decisions_allowed);
    Ok(())
}

/// The one place a host's refusal becomes an HTTP answer: a policy's denial (an evaluation
/// failure denies too, its error the reason) is counted and answered 403 with its reasons and
/// decision id; anything else (a decision the audit log could not record) is a 500.
fn refused(daemon: &Daemon, error: gantry::HostError) -> ApiError {
    let gantry::HostError::Denied {
        action,
        decision_id,
        reasons,
    } = error
    else {
        return ApiError::internal(error);
    };
    super::metrics::Metrics::inc(&daemon.metrics.decisions_denied);
    ApiError {
        status: StatusCode::FORBIDDEN,
        body: json!({
            "error": format!("{action} denied by policy"),
            "reasons": reasons.into_iter().map(cap_message).collect::<Vec<_>>(),
            "decision_id": decision_id,
        }),
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

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
    /// Memory per GPU, MiB.
    #[serde(default = "default_memory")]
    pub memory_per_gpu_mib: u64,
    /// Estimated runtime, seconds.
    #[serde(default = "default_runtime")]
    pub est_runtime_s: f64,
    /// A training job: `TRAIN.toml` text (synthetic data; checkpoints go to the encrypted
    /// store).
    #[serde(default)]
    pub train: Option<String>,
}

fn default_memory() -> u64 {
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
        memory_per_gpu_mib: job.memory_per_gpu_mib.min(u64::from(u32::MAX)) as u32,
        gang: true,
        topology: Topology::None,
        est_runtime_s: job.est_runtime_s,
        submit_time_s: job.submitted_at,
    }
}

/// Job ids and dataset names: 1-64 of `[A-Za-z0-9._-]`, not starting with `.` (so never a
/// path).
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.starts_with('.')
}

async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let user = caller(&state, &headers).await?;
    let req: SubmitRequest = body::json(body, MAX_BODY).await?;
    let outcome = blocking(&state, move |state| submit_job(state, user, req)).await?;
    state.wake.notify_one();
    Ok((StatusCode::CREATED, Json(outcome)).into_response())
}

/// Checks, decides and stores a submission (blocking).
fn submit_job(state: &AppState, user: User, req: SubmitRequest) -> ApiResult<JobRecord> {
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
    if let Some(text) = &req.train {
        let origin = format!("job {id}: train");
        let config = gantry::training::TrainConfig::parse_with(
            text,
            std::path::Path::new(&origin),
            &state.daemon.train_limits,
        )
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        if config.data.file.is_some() || config.data.test_file.is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "{origin}: a daemon job's [data] is `synthetic` or a `dataset`, with no `test_file` (files on the host's disk are not reachable through the API)"
                ),
            ));
        }
        if let Some(plugin) = &config.data.preprocess
            && gantry::builtin::preprocessor(plugin).is_none()
            && !state
                .daemon
                .db
                .plugins(Some(plugin))
                .map_err(ApiError::internal)?
                .iter()
                .any(|p| p.kind == super::KIND_PREPROCESS)
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
    let job = JobRecord {
        id: super::db::key(&req.tenant, &id),
        tenant: req.tenant.clone(),
        owner: user.name.clone(),
        gpus: req.gpus,
        memory_per_gpu_mib: req.memory_per_gpu_mib,
        est_runtime_s: req.est_runtime_s,
        state: JobState::Pending,
        gpu_ids: Vec::new(),
        reason: None,
        submitted_at: super::db::now(),
        train: req.train.clone(),
        result: None,
        crashes: 0,
        not_before: 0.0,
    };
    let daemon = &state.daemon;
    let spec = spec(&job);
    let subject = user.subject();
    // Decide, check and store under the host's lock, so the quota the policy saw is the quota
    // the job is admitted against.
    {
        let mut host = daemon.host();
        if let Err(e) = gantry::cluster::files::check_job(&spec, &host.state().cluster) {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, e));
        }
        let m = &daemon.metrics;
        match here(host.submit_as(&subject, spec)) {
            Ok(()) => super::metrics::Metrics::inc(&m.decisions_allowed),
            Err(gantry::HostError::Job { message, .. }) => {
                // Decided and allowed, then refused as a duplicate.
                super::metrics::Metrics::inc(&m.decisions_allowed);
                return Err(ApiError::new(StatusCode::CONFLICT, message));
            }
            Err(e) => return Err(refused(daemon, e)),
        }
        match daemon.db.insert_job(&job) {
            Ok(true) => {
                let _ = daemon
                    .db
                    .log(&job.id, &format!("submitted by {}", job.owner));
                Ok(job)
            }
            Ok(false) => {
                host.cancel(&job.id);
                Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("a job `{id}` already exists in tenant {}", job.tenant),
                ))
            }
            Err(e) => {
                host.cancel(&job.id);
                Err(ApiError::internal(e))
            }
        }
    }
}

/// Whether a listing shows `job` to `user`: admins all, others their tenants' jobs (the shipped
/// policy's rule for `job.read`, applied here so a listing is one decision, not one per job).
fn visible(user: &User, job: &JobRecord) -> bool {
    user.is_admin() || user.tenants.contains(&job.tenant)
}

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<JobRecord>>> {
    let user = caller(&state, &headers).await?;
    blocking(&state, move |state| {
        authorize(state, &user, Action::JobList, Resource::Empty {})?;
        let jobs = state.daemon.db.jobs().map_err(ApiError::internal)?;
        Ok(Json(
            jobs.into_iter().filter(|j| visible(&user, j)).collect(),
        ))
    })
    .await
}

fn find(state: &AppState, user: &User, id: &str, tenant: Option<&str>) -> ApiResult<JobRecord> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, format!("no job `{id}`"));
    let job = one_visible(
        state.daemon.db.jobs_named(id).map_err(ApiError::internal)?,
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
            job: super::db::name_of(&job.id).to_string(),
        },
    ) {
        Ok(()) => Ok(job),
        Err(e) if e.status == StatusCode::FORBIDDEN => Err(not_found()),
        Err(e) => Err(e),
    }
}

/// The one record of `candidates` (a name's records in every tenant) that `visible` lets the
/// caller see, in `tenant` when given. Names are per tenant: another tenant's record of the same
/// name is as absent as a missing one. When the caller sees it in several tenants, the request
/// must say which (`?tenant=`).
fn one_visible<T>(
    candidates: Vec<T>,
    visible: impl Fn(&T) -> bool,
    tenant_of: impl Fn(&T) -> &String,
    tenant: Option<&str>,
    what: &str,
    name: &str,
) -> ApiResult<Option<T>> {
    let mut seen: Vec<T> = candidates
        .into_iter()
        .filter(|c| visible(c) && tenant.is_none_or(|t| t == tenant_of(c)))
        .collect();
    if seen.len() > 1 {
        let tenants: Vec<&str> = seen.iter().map(|c| tenant_of(c).as_str()).collect();
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "there is a {what} `{name}` in several of your tenants ({}); name one with ?tenant=",
                tenants.join(", ")
            ),
        ));
    }
    Ok(seen.pop())
}

/// `?tenant=` on a job's or dataset's endpoints: which tenant's, when the caller sees the name
/// in several.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InTenant {
    tenant: Option<String>,
}

type TenantQuery = Result<axum::extract::Query<InTenant>, axum::extract::rejection::QueryRejection>;

/// The `?tenant=` of a request, or a 400 for a malformed query.
fn in_tenant(query: TenantQuery) -> ApiResult<Option<String>> {
    query
        .map(|q| q.0.tenant)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))
}

async fn job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: TenantQuery,
) -> ApiResult<Json<JobRecord>> {
    let user = caller(&state, &headers).await?;
    let tenant = in_tenant(query)?;
    blocking(&state, move |state| {
        Ok(Json(find(state, &user, &id, tenant.as_deref())?))
    })
    .await
}

/// `POST /v1/jobs/{id}/cancel`: 200 with the job `cancelled`, or 202 with it `cancelling` when
/// its run is under way (it stops at its next step and keeps its GPUs until then).
async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: TenantQuery,
) -> ApiResult<Response> {
    let user = caller(&state, &headers).await?;
    let tenant = in_tenant(query)?;
    let response = blocking(&state, move |state| {
        let job = find(state, &user, &id, tenant.as_deref())?;
        let tenant = Some(job.tenant.as_str());
        authorize(
            state,
            &user,
            Action::JobCancel,
            JobRef {
                tenant: job.tenant.clone(),
                job: id.clone(),
            },
        )?;
        let moved = state
            .daemon
            .cancel_job(&job, &user.name)
            .map_err(ApiError::internal)?;
        let status = match moved {
            Some(JobState::Cancelling) => StatusCode::ACCEPTED,
            Some(_) => StatusCode::OK,
            None => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "job `{id}` is already {}",
                        find(state, &user, &id, tenant)?.state.as_str()
                    ),
                ));
            }
        };
        Ok((status, Json(find(state, &user, &id, tenant)?)).into_response())
    })
    .await?;
    state.wake.notify_one();
    Ok(response)
}

/// `?tenant=...&classification=...` of an upload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    tenant: String,
    classification: String,
}

/// Whether `user` may see `dataset`: admins all, others their tenants'.
fn dataset_visible(user: &User, d: &super::db::DatasetRecord) -> bool {
    user.is_admin() || user.tenants.contains(&d.tenant)
}

/// `PUT /v1/datasets/{name}?tenant=..&classification=..`: the raw body, streamed into the
/// encrypted store once the caller is known, a member of the tenant and allowed
/// `dataset.write`; nothing is kept unless all of it arrived (within [`MAX_UPLOAD`]).
async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<axum::extract::Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> ApiResult<Response> {
    let user = caller(&state, &headers).await?;
    if !valid_id(&name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "dataset name: 1-64 characters of letters, digits, '-', '_' and '.', not starting with '.'",
        ));
    }
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    if !user.is_admin() && !user.tenants.contains(&q.tenant) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("user {} is not a member of tenant {}", user.name, q.tenant),
        ));
    }
    if declared_length(&headers).is_some_and(|n| n > MAX_UPLOAD as u64) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a dataset is at most {MAX_UPLOAD} bytes"),
        ));
    }
    let (user, name, q) = blocking(&state, move |state| {
        authorize(
            state,
            &user,
            Action::DatasetWrite,
            gantry::policy::request::DatasetRef {
                name: name.clone(),
                classification: q.classification.clone(),
                tenant: q.tenant.clone(),
            },
        )?;
        // A taken name is refused before anything is written (the insert below still decides
        // a race between two uploads of one name). Names are per tenant.
        if state
            .daemon
            .db
            .dataset(&super::db::key(&q.tenant, &name))
            .map_err(ApiError::internal)?
            .is_some()
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("a dataset `{name}` already exists in tenant {}", q.tenant),
            ));
        }
        Ok((user, name, q))
    })
    .await?;
    let transfer = transfer_slot(&state).await?;
    let (reader, feeder) = body::stream(body, MAX_UPLOAD);
    let daemon = state.daemon.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let _transfer = transfer;
        daemon.store.put(reader)
    })
    .await
    .map_err(ApiError::internal)?;
    // The body's own failure (too large, too slow, cut off) explains a failed write best.
    let bytes = feeder.await.map_err(ApiError::internal)??;
    let object = stored.map_err(ApiError::internal)?;
    let record = blocking(&state, move |state| {
        let record = super::db::DatasetRecord {
            name: super::db::key(&q.tenant, &name),
            tenant: q.tenant,
            classification: q.classification,
            object,
            bytes,
            owner: user.name,
            created_at: super::db::now(),
        };
        match state.daemon.db.insert_dataset(&record) {
            Ok(true) => Ok(record),
            Ok(false) => Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "a dataset `{}` already exists in tenant {}",
                    super::db::name_of(&record.name),
                    record.tenant
                ),
            )),
            Err(e) => Err(ApiError::internal(e)),
        }
    })
    .await?;
    Ok((StatusCode::CREATED, Json(record)).into_response())
}

/// The request's `Content-Length`, when it declares one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// One of the [`TRANSFER_SLOTS`] (streamed uploads and downloads), waited for at most
/// [`TRANSFER_WAIT`], or a 503: a transfer holds a blocking thread for as long as its client
/// takes. Waiting (a task, no thread) rather than refusing at once matters because the refusal
/// comes before the body is read: a client still sending a large body sees its connection
/// closed under it, not the 503.
async fn transfer_slot(state: &AppState) -> ApiResult<tokio::sync::OwnedSemaphorePermit> {
    match tokio::time::timeout(TRANSFER_WAIT, state.transfers.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{TRANSFER_SLOTS} transfers are under way; try again shortly"),
        )),
    }
}

async fn datasets(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<super::db::DatasetRecord>>> {
    let user = caller(&state, &headers).await?;
    blocking(&state, move |state| {
        authorize(state, &user, Action::DatasetList, Resource::Empty {})?;
        let all = state.daemon.db.datasets().map_err(ApiError::internal)?;
        Ok(Json(
            all.into_iter()
                .filter(|d| dataset_visible(&user, d))
                .collect(),
        ))
    })
    .await
}

fn readable_dataset(
    state: &AppState,
    user: &User,
    name: &str,
    tenant: Option<&str>,
) -> ApiResult<super::db::DatasetRecord> {
    let found = one_visible(
        state
            .daemon
            .db
            .datasets_named(name)
            .map_err(ApiError::internal)?,
        |d| dataset_visible(user, d),
        |d| &d.tenant,
        tenant,
        "dataset",
        name,
    )?
    .ok_or_else(|| {
        let within = tenant
            .map(|t| format!(" in tenant {t}"))
            .unwrap_or_default();
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no dataset `{name}`{within}"),
        )
    })?;
    authorize(state, user, Action::DatasetRead, found.resource())?;
    Ok(found)
}

/// `GET /v1/datasets/{name}/content`: streamed out of the store, each chunk decrypted and
/// authenticated before it is sent (and the whole object's digest before its last bytes): a
/// corrupt object aborts the response, never passes for data.
async fn download(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: TenantQuery,
) -> ApiResult<Response> {
    let user = caller(&state, &headers).await?;
    let tenant = in_tenant(query)?;
    let reader = blocking(&state, move |state| {
        let found = readable_dataset(state, &user, &name, tenant.as_deref())?;
        state
            .daemon
            .store
            .reader(&found.object)
            .map_err(ApiError::internal)
    })
    .await?;
    let transfer = transfer_slot(&state).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        body::from_reader(reader, transfer),
    )
        .into_response())
}

/// `GET /v1/gpus`: every GPU, its node and health, and the job holding it.
async fn gpus(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let user = caller(&state, &headers).await?;
    blocking(&state, move |state| {
        authorize(state, &user, Action::ClusterRead, Resource::Empty {})?;
        let host = state.daemon.host_read();
        let s = host.state();
        // Which job holds a GPU is shown for the user's own tenants only (others see it busy).
        let holder_job = |i: usize| {
            s.holder[i].and_then(|alloc| {
                s.running
                    .iter()
                    .find(|a| a.id == alloc)
                    .filter(|a| {
                        let tenant = &s.cluster.tenants[a.tenant as usize].name;
                        user.is_admin() || user.tenants.contains(tenant)
                    })
                    .map(|a| super::db::name_of(&a.job_id).to_string())
            })
        };
        let gpus: Vec<serde_json::Value> = s
            .cluster
            .gpus
            .iter()
            .enumerate()
            .map(|(i, g)| {
                json!({
                    "id": g.id,
                    "node": s.cluster.nodes[g.node as usize].name,
                    "healthy": g.healthy,
                    "busy": s.holder[i].is_some(),
                    "job": holder_job(i),
                })
            })
            .collect();
        Ok(Json(
            json!({"gpus": gpus, "healthy": s.healthy_gpus(), "busy": s.busy_gpus()}),
        ))
    })
    .await
}

/// `GET /v1/nodes`: every node with its rack and its GPUs (total, healthy, busy).
async fn nodes(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let user = caller(&state, &headers).await?;
    blocking(&state, move |state| {
        authorize(state, &user, Action::ClusterRead, Resource::Empty {})?;
        let host = state.daemon.host_read();
        let s = host.state();
        let mut counts = vec![(0u32, 0u32, 0u32); s.cluster.nodes.len()];
        for (i, g) in s.cluster.gpus.iter().enumerate() {
            let c = &mut counts[g.node as usize];
            c.0 += 1;
            c.1 += u32::from(g.healthy);
            c.2 += u32::from(s.holder[i].is_some());
        }
        let nodes: Vec<serde_json::Value> = s
            .cluster
            .nodes
            .iter()
            .zip(&counts)
            .map(|(n, (total, healthy, busy))| {
                json!({"name": n.name, "rack": s.cluster.racks[n.rack as usize],
                       "gpus": total, "healthy_gpus": healthy, "busy_gpus": busy})
            })
            .collect();
        Ok(Json(json!({ "nodes": nodes })))
    })
    .await
}

/// The body of `POST /v1/gpus/unhealthy` (GPU ids hold `/`, so not a path segment).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuRef {
    gpu: String,
}

/// `POST /v1/gpus/unhealthy` `{"gpu": id}` (admins): the GPU leaves service; its jobs go back to
/// the queue (training jobs resume from their newest checkpoint when placed again).
async fn mark_unhealthy(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let user = caller(&state, &headers).await?;
    let GpuRef { gpu: id } = body::json(body, MAX_BODY).await?;
    let requeued = blocking(&state, move |state| {
        authorize(state, &user, Action::GpuHealth, Resource::gpu(&id))?;
        let daemon = &state.daemon;
        let lost = daemon
            .host()
            .set_gpu_health(&id, false)
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no GPU `{id}`")))?;
        // Out of service until an admin says otherwise, restarts included.
        daemon
            .db
            .set_gpu_health(&id, false, &user.name)
            .map_err(ApiError::internal)?;
        // The whole gang starts over elsewhere; a job with a run under way keeps its GPUs
        // until the run has stopped, at its next step.
        daemon.requeue_lost(&lost, "its GPU became unhealthy");
        Ok(lost
            .iter()
            .map(|key| super::db::name_of(key).to_string())
            .collect::<Vec<_>>())
    })
    .await?;
    state.wake.notify_one();
    Ok(Json(json!({"requeued": requeued})))
}

/// `GET /v1/plugins`: the active scheduler plugin and the shipped ones of every kind.
async fn plugins(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let user = caller(&state, &headers).await?;
    blocking(&state, move |state| {
        authorize(state, &user, Action::PluginRead, Resource::Empty {})?;
        let host = state.daemon.host_read();
        let active = host.scheduler().map(|p| {
            json!({"name": p.name(), "version": p.manifest().version, "sha256": p.wasm_sha256(),
                   "health": p.health().report()})
        });
        let shipped = |list: &[gantry::builtin::Builtin]| -> Vec<serde_json::Value> {
            list.iter()
                .map(|b| json!({"name": b.name, "summary": b.summary}))
                .collect()
        };
        drop(host);
        let uploaded = state.daemon.db.plugins(None).map_err(ApiError::internal)?;
        Ok(Json(json!({
            "scheduler": active,
            "schedulers": shipped(gantry::builtin::SCHEDULERS),
            "preprocessors": shipped(gantry::builtin::PREPROCESSORS),
            "uploaded": uploaded,
        })))
    })
    .await
}

/// The body of `POST /v1/plugins/scheduler`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchedulerRef {
    /// A shipped or uploaded scheduler plugin.
    name: String,
}

/// `POST /v1/plugins/scheduler` `{"name": ...}`: makes a shipped or uploaded scheduler plugin
/// the active one (and the one a restarted daemon starts with), if the policy allows
/// `plugin.load`; recorded in the audit log.
async fn load_scheduler(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let user = caller(&state, &headers).await?;
    let SchedulerRef { name } = body::json(body, MAX_BODY).await?;
    activate_scheduler(&state, user, Some(name)).await
}

/// `POST /v1/plugins/scheduler/reload`: loads the active scheduler plugin afresh from its source
/// (a new instance: fault counts reset, a quarantine lifted), if the policy allows `plugin.load`.
async fn reload_scheduler(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let user = caller(&state, &headers).await?;
    activate_scheduler(&state, user, None).await
}

/// Makes scheduler plugin `name` (none: the active one, afresh) active for `user`.
async fn activate_scheduler(
    state: &AppState,
    user: User,
    name: Option<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let loaded = blocking(state, move |state| {
        let daemon = &state.daemon;
        let name = match name {
            Some(name) => name,
            None => daemon
                .db
                .setting(super::ACTIVE_SCHEDULER)
                .map_err(ApiError::internal)?
                .unwrap_or_else(|| super::DEFAULT_SCHEDULER.to_string()),
        };
        let source = super::plugin_source(&daemon.db, &daemon.store, &name)
            .map_err(|m| ApiError::new(StatusCode::NOT_FOUND, m))?;
        let mut host = daemon.host();
        let loaded = match here(host.load_scheduler_as(&user.subject(), &source)) {
            Ok(p) => {
                super::metrics::Metrics::inc(&daemon.metrics.decisions_allowed);
                json!({"name": p.name(), "version": p.manifest().version,
                       "sha256": p.wasm_sha256()})
            }
            Err(gantry::HostError::Load(e)) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    e.to_string(),
                ));
            }
            Err(e) => return Err(refused(daemon, e)),
        };
        daemon
            .db
            .set_setting(super::ACTIVE_SCHEDULER, &name)
            .map_err(ApiError::internal)?;
        Ok(loaded)
    })
    .await?;
    state.wake.notify_one();
    Ok(Json(loaded))
}

/// The body of `PUT /v1/plugins/{name}`: a scheduler plugin's files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginUpload {
    /// `plugin.toml`'s text; its `name` must be the one in the path.
    manifest: String,
    /// The component, base64.
    wasm: String,
    /// `plugin.sig` (from `gantry plugin sign`), over exactly these two files.
    #[serde(default)]
    signature: Option<gantry::plugin::signature::PluginSignature>,
}

/// `PUT /v1/plugins/{name}`: stores a scheduler plugin (manifest, component, signature) for
/// loading by name. The policy decides `plugin.upload` (admins; signed by a trusted key); the
/// component must compile and instantiate as a scheduler before anything is stored; the component
/// goes into the encrypted store, the rest into the database; recorded in the audit log. A
/// plugin of the same name is replaced (the active one keeps running until reloaded).
async fn upload_plugin(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let user = caller(&state, &headers).await?;
    if !valid_id(&name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "plugin name: 1-64 characters of letters, digits, '-', '_' and '.', not starting with '.'",
        ));
    }
    if gantry::builtin::scheduler(&name).is_some() || gantry::builtin::preprocessor(&name).is_some()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("`{name}` is a shipped plugin; upload under another name"),
        ));
    }
    // Decided before the body is read, as far as it can be: only a caller the policy would let
    // upload a signed plugin may send one (the decision on the plugin itself follows).
    let user = blocking(&state, {
        let name = name.clone();
        move |state| {
            authorize(
                state,
                &user,
                Action::PluginUpload,
                PluginRef::before_body(&name),
            )?;
            Ok(user)
        }
    })
    .await?;
    if declared_length(&headers).is_some_and(|n| n > MAX_UPLOAD as u64) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a plugin upload is at most {MAX_UPLOAD} bytes"),
        ));
    }
    let _slot = state
        .large_bodies
        .clone()
        .acquire_owned()
        .await
        .map_err(ApiError::internal)?;
    let upload: PluginUpload = body::json(body, MAX_UPLOAD).await?;
    blocking(&state, move |state| store_plugin(state, user, name, upload)).await
}

/// Checks, decides, compiles and stores an uploaded plugin (blocking).
fn store_plugin(
    state: &AppState,
    user: User,
    name: String,
    upload: PluginUpload,
) -> ApiResult<Response> {
    let wasm = data_encoding::BASE64
        .decode(upload.wasm.as_bytes())
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("field `wasm`: not base64 ({e})"),
            )
        })?;
    let plugin = gantry::UploadedPlugin {
        name: name.clone(),
        manifest: upload.manifest,
        wasm,
        signature: upload.signature,
    };
    let manifest = gantry::plugin::manifest::Manifest::parse(&plugin.manifest, &plugin.origin())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    if manifest.name != name {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{}: field `name`: `{}` differs from the name uploaded under, `{name}`",
                plugin.origin().display(),
                manifest.name
            ),
        ));
    }
    let signed = {
        let host = state.daemon.host_read();
        plugin.verify(&host.trust().trusted_keys).is_ok()
    };
    authorize(
        state,
        &user,
        Action::PluginUpload,
        PluginRef::new(&name, signed),
    )?;
    let daemon = &state.daemon;
    let record = {
        // Compiled and instantiated (which also fills the artifact cache) before it is kept.
        let unusable = |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m);
        let (sha256, kind) = {
            // A clone of the loader: the compile holds no lock of the host's, so scheduling and
            // the API go on meanwhile.
            let host = daemon.host_read().loader().clone();
            match manifest.kind {
                gantry::plugin::manifest::PluginKind::Scheduler => {
                    let source = gantry::PluginSource::Uploaded(Box::new(plugin.clone()));
                    let checked = host
                        .load_scheduler_plugin(&source)
                        .map_err(|e| unusable(e.to_string()))?;
                    // Instantiated and configured once: a plugin over its limits is refused
                    // here rather than faulting on every cycle once active.
                    here(checked.probe()).map_err(|e| unusable(e.to_string()))?;
                    (checked.wasm_sha256().to_string(), super::KIND_SCHEDULER)
                }
                gantry::plugin::manifest::PluginKind::Preprocess => {
                    let checked = host
                        .load_preprocess_plugin(&plugin.name, Some(&plugin))
                        .map_err(|e| unusable(e.to_string()))?;
                    // One worker: instantiated and configured with the manifest's [config].
                    checked
                        .worker_blocking()
                        .map_err(|e| unusable(e.to_string()))?;
                    (checked.wasm_sha256().to_string(), super::KIND_PREPROCESS)
                }
            }
        };
        let object = daemon
            .store
            .put_bytes(&plugin.wasm)
            .map_err(ApiError::internal)?;
        let record = super::db::PluginRecord {
            name: plugin.name,
            kind: kind.to_string(),
            version: manifest.version.clone(),
            manifest: plugin.manifest,
            object,
            signature: plugin.signature,
            owner: user.name,
            created_at: super::db::now(),
        };
        daemon.db.put_plugin(&record).map_err(ApiError::internal)?;
        daemon
            .host_read()
            .record(
                "plugin.upload",
                json!({"plugin": record.name, "version": record.version, "sha256": sha256,
                       "by": record.owner}),
            )
            .map_err(ApiError::internal)?;
        record
    };
    Ok((StatusCode::CREATED, Json(record)).into_response())
}

/// `GET /v1/audit/verify`: verifies the audit log (chain and signed checkpoints) if the policy
/// allows `audit.read`.
async fn verify_audit(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let user = caller(&state, &headers).await?;
    blocking(&state, move |state| {
        authorize(state, &user, Action::AuditRead, Resource::audit_log())?;
        let daemon = &state.daemon;
        // Sealed now, then verified up to that seal (entries keep arriving behind it), with the
        // daemon's own key pinned and the sealed position the database holds.
        let sealed = daemon.audit.seal().map_err(ApiError::internal)?;
        let up_to = sealed.or_else(|| daemon.audit.head());
        let (recorded, _) = daemon.db.audit_head().map_err(ApiError::internal)?;
        let key = daemon.audit.public_key();
        let options = gantry::audit::VerifyOptions {
            key: Some(&key),
            head: recorded.as_ref(),
            sealed_end: true,
            up_to: up_to.as_ref(),
        };
        let report = gantry::audit::verify_with(daemon.audit.path(), &options).map_err(|e| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("the audit log does not verify: {e}"),
            )
        })?;
        Ok(Json(
            serde_json::to_value(report).map_err(ApiError::internal)?,
        ))
    })
    .await
}

/// `POST /v1/policy` (admins): replaces the access-control policy with the OPA bundle in the
/// body (`gantry policy build`), atomically and audited. A bundle without the decision
/// entrypoint is refused: installing it would deny every request, the admin's own included.
async fn reload_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let user = caller(&state, &headers).await?;
    let user = blocking(&state, move |state| {
        authorize(state, &user, Action::PolicyReplace, Resource::Empty {})?;
        Ok(user)
    })
    .await?;
    if declared_length(&headers).is_some_and(|n| n > MAX_UPLOAD as u64) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a policy bundle is at most {MAX_UPLOAD} bytes"),
        ));
    }
    let _slot = state
        .large_bodies
        .clone()
        .acquire_owned()
        .await
        .map_err(ApiError::internal)?;
    let body = body::bytes(body, MAX_UPLOAD).await?;
    let swapped = blocking(&state, move |state| {
        let daemon = &state.daemon;
        let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
        let bundle =
            gantry::policy::bundle::from_bytes(&body, std::path::Path::new("<uploaded bundle>"))
                .map_err(|e| bad(format!("not a policy bundle: {e}")))?;
        // Compiled without the host's lock (seconds, for a new module): scheduling and reads
        // go on meanwhile; only the swap takes it.
        let loader = daemon.host_read().policy_loader();
        let policy = here(loader.load(bundle, gantry::policy::decide::PolicyLimits::default()))
            .map_err(|e| bad(format!("the bundle does not load: {e}")))?;
        if !policy
            .entrypoints()
            .iter()
            .any(|e| e == gantry::DECISION_ENTRYPOINT)
        {
            return Err(bad(format!(
                "the bundle has no `{}` entrypoint (it has {:?}); it would deny every request",
                gantry::DECISION_ENTRYPOINT,
                policy.entrypoints()
            )));
        }
        let revision = policy.revision().to_string();
        // The bundle is kept (encrypted) and named as the policy to start with, before it
        // decides: a restart never silently goes back to the shipped policy.
        let object = daemon.store.put_bytes(&body).map_err(ApiError::internal)?;
        super::persisted::remember_policy(&daemon.db, &object, &revision)
            .map_err(ApiError::internal)?;
        let previous = daemon
            .host()
            .set_policy(policy)
            .map_err(ApiError::internal)?
            .map(|p| p.revision().to_string());
        tracing::info!(by = %user.name, revision = %revision, "policy replaced");
        Ok(json!({"revision": revision, "previous": previous}))
    })
    .await?;
    Ok(Json(swapped))
}

/// `GET /v1/jobs/{id}/logs`: what happened to the job, oldest first.
async fn job_logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: TenantQuery,
) -> ApiResult<Json<serde_json::Value>> {
    let user = caller(&state, &headers).await?;
    let tenant = in_tenant(query)?;
    blocking(&state, move |state| {
        let job = find(state, &user, &id, tenant.as_deref())?;
        let lines = state.daemon.db.logs(&job.id).map_err(ApiError::internal)?;
        Ok(Json(json!(
            lines
                .into_iter()
                .map(|(at, message)| json!({"at": at, "message": message}))
                .collect::<Vec<_>>()
        )))
    })
    .await
}

/// `GET /v1/jobs/{id}/metrics`: a training job's progress (step of total, epoch, loss,
/// throughput) and loss curve; live while it runs, as saved once it ended; zeros before it ran.
async fn job_metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: TenantQuery,
) -> ApiResult<Json<serde_json::Value>> {
    let user = caller(&state, &headers).await?;
    let tenant = in_tenant(query)?;
    blocking(&state, move |state| {
        let job = find(state, &user, &id, tenant.as_deref())?;
        let curve = state
            .daemon
            .curve(&job.id)
            .map_err(ApiError::internal)?
            .unwrap_or_default();
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

/// `POST /v1/gpus/healthy` `{"gpu": id}` (the policy's `gpu.health`, admins): the GPU is back in
/// service (and stays so across restarts).
async fn mark_healthy(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let user = caller(&state, &headers).await?;
    let GpuRef { gpu: id } = body::json(body, MAX_BODY).await?;
    blocking(&state, move |state| {
        authorize(state, &user, Action::GpuHealth, Resource::gpu(&id))?;
        let daemon = &state.daemon;
        daemon
            .host()
            .set_gpu_health(&id, true)
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no GPU `{id}`")))?;
        daemon
            .db
            .set_gpu_health(&id, true, &user.name)
            .map_err(ApiError::internal)
    })
    .await?;
    state.wake.notify_one();
    Ok(Json(json!({"healthy": true})))
}

/// `POST /v1/keys/rotate` (the policy's `key.rotate`, admins): a new master key, every data key
/// re-wrapped under it while puts and reads go on, the old one removed once nothing needs it
/// ([`gantry::storage::Store::rotate`]); audited as `key.rotate`. What `gantry key rotate` calls
/// when a daemon holds the data directory.
async fn rotate_key(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let user = caller(&state, &headers).await?;
    blocking(&state, move |state| {
        authorize(state, &user, Action::KeyRotate, Resource::Empty {})?;
        let daemon = &state.daemon;
        let r = daemon.store.rotate().map_err(ApiError::internal)?;
        let by = json!({"user": user.name});
        daemon
            .decider
            .record("key.rotate", super::datadir::rotation_record(&r, by))
            .map_err(ApiError::internal)?;
        tracing::info!(master = %r.new_master, rewrapped = r.rewrapped, "master key rotated");
        Ok(Json(serde_json::to_value(r).map_err(ApiError::internal)?))
    })
    .await
}

/// `GET /v1/audit/head` (the policy's `audit.read`): the audit log sealed now, and its latest
/// sealed position `{seq, hash, head: "SEQ:HASH", key}`, to anchor outside the host (a later
/// `gantry audit verify --head SEQ:HASH` fails on a log cut back before it).
async fn audit_head(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let user = caller(&state, &headers).await?;
    blocking(&state, move |state| {
        authorize(state, &user, Action::AuditRead, Resource::audit_log())?;
        let audit = &state.daemon.audit;
        audit.seal().map_err(ApiError::internal)?;
        let key = audit.public_key();
        Ok(Json(match audit.head() {
            Some(h) => json!({"seq": h.seq, "hash": h.hash, "head": h.to_string(), "key": key}),
            None => json!({"seq": 0, "hash": null, "head": null, "key": key}),
        }))
    })
    .await
}

/// `GET /v1/policy` (the policy's `policy.read`): the revision in force, and whether it is the
/// shipped policy or one an admin installed.
async fn policy_info(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<super::persisted::PolicyInForce>> {
    let user = caller(&state, &headers).await?;
    blocking(&state, move |state| {
        authorize(state, &user, Action::PolicyRead, Resource::Empty {})?;
        let daemon = &state.daemon;
        super::persisted::policy_in_force(&daemon.host_read(), &daemon.db)
            .map(Json)
            .map_err(ApiError::internal)
    })
    .await
}

/// `?token=ID` of a revocation: only that token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeQuery {
    #[serde(default)]
    token: Option<String>,
}

/// `POST /v1/users/{name}/revoke[?token=ID]` (the policy's `user.manage`, admins): every live
/// token of the user (or the one named) is refused from now on; audited as `user.revoke`. What
/// `gantry user revoke` calls when a daemon holds the data directory: a leaked token is revoked
/// without a restart.
async fn revoke_tokens(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<axum::extract::Query<RevokeQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let user = caller(&state, &headers).await?;
    let axum::extract::Query(RevokeQuery { token }) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    blocking(&state, move |state| {
        authorize(state, &user, Action::UserManage, Resource::user(&name))?;
        let daemon = &state.daemon;
        let revoked =
            super::auth::revoke(&daemon.db, &name, token.as_deref()).map_err(|e| match e {
                super::auth::RevokeError::Db(e) => ApiError::internal(e),
                refused => ApiError::new(StatusCode::NOT_FOUND, refused.to_string()),
            })?;
        daemon
            .decider
            .record(
                "user.revoke",
                json!({"user": name, "tokens": revoked, "by": {"user": user.name}}),
            )
            .map_err(ApiError::internal)?;
        Ok(Json(json!({"user": name, "revoked": revoked})))
    })
    .await
}
