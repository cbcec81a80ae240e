//! The HTTP API: the routes, authentication, policy decisions and errors shared by the handlers,
//! which live by resource in the submodules (jobs, datasets, plugins, policy, cluster, audit,
//! users, keys).
//!
//! Every handler learns who is asking from the headers alone, before any body is read, and
//! decides what it can decide then; bodies are read afterwards, bounded ([`super::body`]).
//! Work that blocks (SQLite, policy evaluation, the audit log's syncs, the store) runs on the
//! blocking pool behind one bounded gate ([`blocking`]), never on the async workers, so the
//! health endpoint and every other request keep answering under load.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Notify;

use super::Daemon;
use super::db::User;
use gantry::policy::request::{Action, Request, Resource};

mod audit;
mod cluster;
mod datasets;
mod inflight;
mod jobs;
mod keys;
mod noderuns;
mod pace;

pub use noderuns::STEP_HEADER;
mod plugins;
mod policy;
mod transfers;
mod users;

pub use jobs::{SubmitRequest, spec};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 << 10;

/// Largest dataset upload.
pub const MAX_UPLOAD: usize = 64 << 20;

/// Longest error message in a response (and in the audit log): the rest is cut, saying how much.
pub const MAX_ERROR: usize = 4 << 10;

/// Requests with a large body (an upload of a plugin or a policy bundle, read whole) handled at
/// once; more wait their turn, up to [`TRANSFER_WAIT`], before their body is read: one of each
/// user at a time, and one more waiting (more are answered 429 at once). Dataset uploads stream
/// and are counted with the [`transfers`].
pub const LARGE_BODY_SLOTS: usize = 2;

/// Streamed transfers of tenants (dataset uploads and downloads) at once, and of node agents
/// (their runs' datasets and checkpoints) in a pool of their own; more wait up to
/// [`TRANSFER_WAIT`] for a turn, then are answered 503 ([`transfers`]).
pub const TRANSFER_SLOTS: usize = 8;

/// The most of the [`TRANSFER_SLOTS`] one tenant, or one user, may hold at once (more wait,
/// then 429).
pub const TRANSFER_SLOTS_PER_TENANT: usize = 2;

/// The most of the node agents' [`TRANSFER_SLOTS`] one node may hold at once (more wait, then
/// 429).
pub const TRANSFER_SLOTS_PER_NODE: usize = 4;

/// How long a transfer waits for one of the [`TRANSFER_SLOTS`].
pub const TRANSFER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone)]
struct AppState {
    daemon: Arc<Daemon>,
    wake: Arc<Notify>,
    large_bodies: Arc<transfers::Transfers>,
    /// How fast each user's requests are served.
    pace: Arc<pace::Pace>,
    /// `/metrics` as last rendered, and when ([`cluster::METRICS_FRESH`]).
    metrics_text: Arc<tokio::sync::Mutex<Option<(std::time::Instant, String)>>>,
    /// Tenants' streamed transfers.
    transfers: Arc<transfers::Transfers>,
    /// Node agents' streamed transfers.
    node_transfers: Arc<transfers::Transfers>,
}

impl AppState {
    fn new(daemon: Arc<Daemon>, wake: Arc<Notify>) -> AppState {
        AppState {
            pace: Arc::new(pace::Pace::new(daemon.tenant_limits.user_requests_per_s)),
            daemon,
            wake,
            large_bodies: Arc::new(transfers::Transfers::new(
                LARGE_BODY_SLOTS,
                1,
                TRANSFER_WAIT,
            )),
            metrics_text: Arc::default(),
            transfers: Arc::new(transfers::Transfers::new(
                TRANSFER_SLOTS,
                TRANSFER_SLOTS_PER_TENANT,
                TRANSFER_WAIT,
            )),
            node_transfers: Arc::new(transfers::Transfers::new(
                TRANSFER_SLOTS,
                TRANSFER_SLOTS_PER_NODE,
                TRANSFER_WAIT,
            )),
        }
    }
}

/// The routes (`GET`) a follower of a replicated control plane answers itself: reads of what
/// every replica finds in etcd. What the leader alone knows (its GPUs, nodes, runs, audit log)
/// is the leader's to answer.
const FOLLOWER_READS: [&str; 6] = [
    "/v1/jobs",
    "/v1/jobs/{id}",
    "/v1/jobs/{id}/logs",
    "/v1/jobs/{id}/metrics",
    "/v1/datasets",
    "/v1/policy",
];

/// Whether a follower answers `GET path` itself ([`follower_reads`]).
pub fn follower_serves(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    FOLLOWER_READS.iter().any(|route| {
        let pattern: Vec<&str> = route.split('/').collect();
        pattern.len() == segments.len()
            && pattern
                .iter()
                .zip(&segments)
                .all(|(p, s)| p == s || (p.starts_with('{') && !s.is_empty()))
    })
}

/// The routes of [`FOLLOWER_READS`] over a follower's daemon ([`Daemon::open_following`]),
/// decided and answered as the leader's are.
pub fn follower_reads(daemon: Arc<Daemon>) -> Router {
    let state = AppState::new(daemon.clone(), Arc::new(Notify::new()));
    let [
        all_jobs,
        one_job,
        job_logs,
        job_metrics,
        all_datasets,
        policy_info,
    ] = FOLLOWER_READS;
    Router::new()
        .route(all_jobs, get(jobs::list))
        .route(one_job, get(jobs::job))
        .route(job_logs, get(jobs::job_logs))
        .route(job_metrics, get(jobs::job_metrics))
        .route(all_datasets, get(datasets::datasets))
        .route(policy_info, get(policy::policy_info))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            daemon,
            count_responses,
        ))
        .with_state(state)
}

/// The API's routes.
pub fn router(daemon: Arc<Daemon>, wake: Arc<Notify>) -> Router {
    let state = AppState::new(daemon.clone(), wake);
    Router::new()
        .route("/v1/health", get(cluster::health))
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::job))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/logs", get(jobs::job_logs))
        .route("/v1/jobs/{id}/metrics", get(jobs::job_metrics))
        .route("/v1/jobs/{id}/model", get(jobs::model))
        .route("/metrics", get(cluster::metrics))
        .route("/v1/datasets", get(datasets::datasets))
        .route("/v1/datasets/{name}", axum::routing::put(datasets::upload))
        .route("/v1/datasets/{name}/content", get(datasets::download))
        .route("/v1/nodes", get(cluster::nodes))
        .route("/v1/gpus", get(cluster::gpus))
        .route("/v1/gpus/unhealthy", post(cluster::mark_unhealthy))
        .route("/v1/gpus/healthy", post(cluster::mark_healthy))
        .route("/v1/nodes/{node}", delete(cluster::remove_node))
        .route("/v1/nodes/{node}/heartbeat", post(cluster::heartbeat))
        .route("/v1/nodes/{node}/runs", post(cluster::run_report))
        .route("/v1/nodes/{node}/runs/dataset", get(noderuns::dataset))
        .route(
            "/v1/nodes/{node}/runs/checkpoint",
            get(noderuns::latest_checkpoint).put(noderuns::put_checkpoint),
        )
        .route("/v1/keys/rotate", post(keys::rotate_key))
        .route("/v1/users", post(users::add_user))
        .route("/v1/users/{name}/tokens", post(users::issue_token))
        .route("/v1/users/{name}/revoke", post(users::revoke_tokens))
        .route("/v1/audit/head", get(audit::audit_head))
        .route("/v1/plugins", get(plugins::plugins))
        .route("/v1/plugins/scheduler", post(plugins::load_scheduler))
        .route(
            "/v1/plugins/scheduler/reload",
            post(plugins::reload_scheduler),
        )
        .route(
            "/v1/plugins/{name}",
            axum::routing::put(plugins::upload_plugin),
        )
        .route("/v1/audit/verify", get(audit::verify_audit))
        .route(
            "/v1/policy",
            post(policy::reload_policy).get(policy::policy_info),
        )
        // Handlers read bodies themselves, after authentication (`body`); nothing else may.
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(inflight::InFlight::default()),
            bounded_in_flight,
        ))
        .layer(axum::middleware::from_fn_with_state(
            daemon.clone(),
            node_certificate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            daemon,
            count_responses,
        ))
        .with_state(state)
}

/// At most [`inflight::MAX_IN_FLIGHT`] requests of one bearer token in progress, each counted
/// until its response is written (a successful one: until flushed, and its connection kept
/// as in a request until then, [`super::serve::UntilWritten`]); more are answered 429 at once.
async fn bounded_in_flight(
    State(table): State<Arc<inflight::InFlight>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(bearer)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return next.run(request).await;
    };
    let counted = match inflight::InFlight::take(&table, token) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let mut response = next.run(request).await;
    if response.status().is_success() {
        // Counted until written out: a body handed over whole may still be in the buffers.
        response
            .extensions_mut()
            .insert(super::serve::UntilWritten(Box::new(counted)));
        return response;
    }
    response.map(|body| {
        axum::body::Body::new(http_body_util::BodyExt::map_err(body, move |e| {
            let _held = &counted;
            e
        }))
    })
}

/// With `gantry up --client-ca`, a request of node `n` (`/v1/nodes/{n}/...`: its heartbeat,
/// reports, its runs' data) must come over a connection whose client certificate, verified
/// against that CA in the handshake, names the node (a DNS name among its subject alternative
/// names): a node's token alone no longer speaks for it. Refused with 403 before any handler.
async fn node_certificate(
    State(daemon): State<Arc<Daemon>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let node = request
        .uri()
        .path()
        .strip_prefix("/v1/nodes/")
        .and_then(|rest| rest.split('/').next())
        .filter(|n| !n.is_empty());
    if let (true, Some(node)) = (daemon.node_certs, node) {
        let cert = request.extensions().get::<super::serve::PeerCert>();
        if let Err(why) = names_node(cert, node) {
            return ApiError::new(StatusCode::FORBIDDEN, format!("node {node}: {why}"))
                .into_response();
        }
    }
    next.run(request).await
}

/// Whether client certificate `cert` (DER, verified in the handshake) names node `node`.
fn names_node(cert: Option<&super::serve::PeerCert>, node: &str) -> Result<(), String> {
    let cert = cert.ok_or(
        "this control plane asks nodes for a client certificate (--client-ca), and none was \
         presented",
    )?;
    // Certificates name DNS names, matched without regard to case or a final dot; node names
    // are matched exactly everywhere else (tokens, placements), so only the one spelling is
    // taken: `NODE-000` passed a certificate of node-000.
    if node != node.to_ascii_lowercase() || node.ends_with('.') {
        return Err(format!(
            "node `{node}`: under --client-ca a node's name is lowercase, without a final dot"
        ));
    }
    let der = tokio_rustls::rustls::pki_types::CertificateDer::from(cert.0.as_slice());
    let parsed = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| format!("its client certificate does not read: {e}"))?;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(node)
        .map_err(|_| "not a name a certificate can hold".to_string())?;
    parsed
        .verify_is_valid_for_subject_name(&name)
        .map_err(|_| "its client certificate names another node".to_string())
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

/// An error response: a status and `{"error", "reasons"?, "decision_id"?}`.
#[derive(Debug)]
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

    /// A 507 for new work while the daemon's disk is below its reserve
    /// ([`crate::Daemon::disk_room`]): what is under way keeps the room to be recorded.
    fn disk_room(daemon: &crate::Daemon) -> Result<(), Self> {
        daemon.disk_room().map_err(|(free, reserve)| {
            Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!(
                    "the daemon's disk has {} MiB free, below the {} MiB it keeps for the work \
                     under way (--min-free-disk-mib): try again once its operator has made room",
                    free >> 20,
                    reserve >> 20
                ),
            )
        })
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "request failed");
        // A full disk is the operator's to mend, not a fault of the request: said so (507),
        // so a client and a load balancer can tell it from a bug. Every failure reaches here as
        // text (the store's, SQLite's, the audit log's), so it is told by its text.
        let text = e.to_string();
        let full = [
            "(os error 28)",
            "(os error 122)",
            "database or disk is full",
        ];
        if full.iter().any(|f| text.contains(f)) {
            return Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "the daemon's disk is full; try again once its operator has made room",
            );
        }
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

/// A database failure answers 500 (and is logged): the client can do nothing about it.
impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        Self::internal(e)
    }
}

/// A failure of the job store answers 500, but 503 where trying again is the answer: a
/// control plane that no longer leads (its writes are fenced; ask the leader), or an etcd that
/// cannot be reached or is between leaders.
impl From<crate::jobstore::StateError> for ApiError {
    fn from(e: crate::jobstore::StateError) -> Self {
        use crate::etcdstore::EtcdStoreError;
        use gantry_etcd::EtcdError;
        match &e {
            crate::jobstore::StateError::Etcd(
                EtcdStoreError::NotLeader
                | EtcdStoreError::Etcd(
                    EtcdError::Unreachable { .. } | EtcdError::Server { code: 14, .. },
                ),
            ) => {
                tracing::warn!(error = %e, "the job store is unavailable");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            _ => Self::internal(e),
        }
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

/// The request's bearer token, read from its headers alone: a request without one is refused
/// (401) before anything else of it is read. Whose token it is is looked up in the same hop of
/// the blocking pool as the handler's work ([`Caller::then`], [`Caller::may`]): one hop per
/// request; a handler that must know its caller before it reads a body looks them up alone
/// first ([`Caller::user`]), so an unauthenticated client makes the daemon read no body.
pub(super) struct Caller(String);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> ApiResult<Self> {
        let mut given = parts
            .headers
            .get_all(axum::http::header::AUTHORIZATION)
            .iter();
        let first = given.next();
        if given.next().is_some() {
            // Two credentials: a proxy in front may check one and this daemon act on the other.
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "a request carries one Authorization header, not several",
            ));
        }
        let token = first.and_then(bearer).ok_or_else(unauthorized)?;
        Ok(Caller(token.to_string()))
    }
}

/// The token of an `Authorization: Bearer` header; `None` for any other header, or one longer
/// than a token is (junk, refused without a lookup).
fn bearer(value: &axum::http::HeaderValue) -> Option<&str> {
    value
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| t.len() <= 256)
}

/// The answer to a request without a valid token.
fn unauthorized() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "a valid bearer token is required")
}

impl Caller {
    /// Looks the caller up and runs `work` for them, in one hop of the blocking pool.
    async fn then<T: Send + 'static>(
        self,
        state: &AppState,
        work: impl FnOnce(&AppState, User) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        // A user past their rate is answered before their token is looked up.
        state.pace.before_lookup(&self.0)?;
        blocking(state, move |state| {
            let user =
                super::auth::check(&*state.daemon.accounts, &self.0)?.ok_or_else(unauthorized)?;
            // Before anything is decided, recorded or read for them.
            state.pace.take_for(&self.0, &user)?;
            work(state, user)
        })
        .await
    }

    /// Looks the caller up, asks the policy whether they may do `action` to `resource`
    /// ([`authorize`]) and runs `work` for them: one hop of the blocking pool.
    async fn may<T: Send + 'static>(
        self,
        state: &AppState,
        action: Action,
        resource: impl Into<Resource> + Send + 'static,
        work: impl FnOnce(&AppState, User) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        self.then(state, move |state, user| {
            authorize(state, &user, action, resource)?;
            work(state, user)
        })
        .await
    }

    /// The caller alone: for a handler that reads a body, which it reads only once it knows
    /// who sent it (its work takes a second hop, after the body).
    async fn user(self, state: &AppState) -> ApiResult<User> {
        self.then(state, |_, user| Ok(user)).await
    }
}

/// Asks the policy whether `user` may do `action` to `resource` (and records the decision); a
/// denial is answered by [`refused`]. Blocks: call it inside [`blocking`].
fn authorize(
    state: &AppState,
    user: &User,
    action: Action,
    resource: impl Into<Resource>,
) -> ApiResult<()> {
    authorize_request(state, &Request::new(user.subject(), action, resource))
}

/// [`authorize`] of a request already made (one marked [`Request::routine`], say).
fn authorize_request(state: &AppState, request: &Request) -> ApiResult<()> {
    let daemon = &state.daemon;
    here(daemon.decider.require(request)).map_err(|e| refused(daemon, e))?;
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

/// A large body (a plugin or a policy bundle, `what`) sent by `user`, read whole once its
/// declared size is within [`MAX_UPLOAD`] and one of the [`LARGE_BODY_SLOTS`] is free: the slot
/// is held while the request is handled. Found by reading: waiters were unbounded, each holding
/// a connection that counts as in a request; now one user has one upload under way and one
/// waiting, and a wait ends after [`TRANSFER_WAIT`].
async fn large_body(
    state: &AppState,
    user: &User,
    headers: &HeaderMap,
    body: axum::body::Body,
    what: &str,
) -> ApiResult<(axum::body::Bytes, transfers::Transfer)> {
    within_upload_limit(headers, what)?;
    let slot = state.large_bodies.slot(&[("user", &user.name)]).await?;
    Ok((super::body::bytes(body, MAX_UPLOAD).await?, slot))
}

/// A 413 for a request whose `Content-Length` declares more than [`MAX_UPLOAD`] bytes, before
/// any of its body is read; `what` names what it carries (`a dataset`).
fn within_upload_limit(headers: &HeaderMap, what: &str) -> ApiResult<()> {
    within_limit(headers, what, MAX_UPLOAD as u64)
}

/// Whether a body's declared size is within `limit` bytes (the body itself is bounded as it is
/// read; this refuses a declared oversize before anything is read).
fn within_limit(headers: &HeaderMap, what: &str, limit: u64) -> ApiResult<()> {
    let declared: Option<u64> = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what} is at most {limit} bytes"),
        ));
    }
    Ok(())
}

/// What the handlers' tests share.
#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{ApiResult, AppState};
    use crate::db::User;
    use crate::testing::TestDaemon;

    /// The routes' state over `t`'s daemon.
    pub(super) fn app_state(t: &TestDaemon) -> AppState {
        AppState::new(t.daemon.clone(), Default::default())
    }

    /// Found by a review: a full disk was answered 500 "internal error", the same as a bug,
    /// and only the daemon's log said why. 507, saying the disk is full.
    #[test]
    fn a_full_disk_is_answered_insufficient_storage_not_internal_error() {
        use axum::http::StatusCode;
        let full = [
            super::ApiError::internal(std::io::Error::from_raw_os_error(28)),
            super::ApiError::internal("database recording x: database or disk is full"),
        ];
        for e in full {
            assert_eq!(e.status, StatusCode::INSUFFICIENT_STORAGE, "{}", e.body);
        }
        let bug = super::ApiError::internal("something else");
        assert_eq!(bug.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// Left by a review: with two Authorization headers the daemon used the first, whichever
    /// a proxy in front of it had checked. A request with several is refused.
    #[test]
    fn a_request_with_two_authorization_headers_is_refused() {
        use axum::extract::FromRequestParts;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let caller = |tokens: &[&str]| {
            let mut request = axum::http::Request::builder().uri("/v1/jobs");
            for t in tokens {
                request = request.header("Authorization", format!("Bearer {t}"));
            }
            let (mut parts, ()) = request.body(()).unwrap().into_parts();
            runtime.block_on(super::Caller::from_request_parts(&mut parts, &()))
        };
        assert_eq!(
            caller(&["gantry_a"]).map(|c| c.0).ok().as_deref(),
            Some("gantry_a")
        );
        let e = caller(&["gantry_a", "gantry_b"]).err().unwrap();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{}", e.body);
        assert!(
            e.body.to_string().contains("one Authorization header"),
            "{}",
            e.body
        );
        assert_eq!(
            caller(&[]).err().unwrap().status,
            axum::http::StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn a_follower_answers_only_reads_of_what_etcd_holds() {
        use super::follower_serves;
        for path in [
            "/v1/jobs",
            "/v1/jobs/",
            "/v1/jobs/a",
            "/v1/jobs/a/logs",
            "/v1/jobs/a/metrics",
            "/v1/datasets",
            "/v1/policy",
        ] {
            assert!(follower_serves(path), "{path}");
        }
        for path in [
            "/v1/gpus",
            "/v1/nodes",
            "/v1/jobs//logs",
            "/v1/jobs/a/cancel",
            "/v1/datasets/d/content",
            "/v1/audit/head",
            "/v1/nodes/n/runs/dataset",
            "/metrics",
        ] {
            assert!(!follower_serves(path), "{path}");
        }
    }

    /// Found by reading: uploads of plugins and policy bundles waited for a slot with no bound
    /// on how many, each holding a connection counted as in a request. One user has one under
    /// way and one waiting; a third is answered 429 at once, and another user still gets a turn.
    #[test]
    fn a_users_large_uploads_wait_in_a_bounded_line() {
        let t = TestDaemon::new();
        let state = app_state(&t);
        let upload = |user: User| {
            let state = state.clone();
            async move {
                let body = axum::body::Body::from("{}");
                super::large_body(&state, &user, &Default::default(), body, "a plugin upload")
                    .await
                    .map(|(_, slot)| slot)
            }
        };
        t.runtime.block_on(async {
            let held = upload(admin()).await.expect("a free slot");
            let waiting = tokio::spawn(upload(admin()));
            tokio::time::sleep(Duration::from_millis(50)).await;
            let third = tokio::time::timeout(Duration::from_secs(5), upload(admin()))
                .await
                .expect("a third is answered at once, not kept waiting")
                .err()
                .expect("a third is refused");
            assert_eq!(third.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
            let other = User {
                name: "ops".into(),
                ..admin()
            };
            let _theirs = upload(other).await.expect("another user's turn");
            drop(held);
            waiting
                .await
                .unwrap()
                .expect("the waiting one gets the slot given back");
        });
    }

    /// An admin (the shipped policy lets admins load plugins and replace the policy).
    pub(super) fn admin() -> User {
        User {
            name: "root".into(),
            roles: vec!["admin".into()],
            tenants: Vec::new(),
            clearance: "public".into(),
        }
    }

    /// Runs `work` (a handler's blocking step) on the blocking pool, for `admin`, and answers a
    /// future of its answer (an error fails the test).
    pub(super) fn spawn<T: Send + 'static>(
        t: &TestDaemon,
        work: impl FnOnce(&AppState, &User) -> ApiResult<T> + Send + 'static,
    ) -> impl Future<Output = T> + Send + 'static {
        let state = app_state(t);
        let answer = t.runtime.spawn(async move {
            super::blocking(&state, move |state| work(state, &admin())).await
        });
        async move {
            let answer = answer.await.expect("the work ran");
            answer.unwrap_or_else(|e| panic!("answered {}: {}", e.status, e.body))
        }
    }

    /// Runs `work` like [`spawn`] while this thread holds the host for reading, and waits (at
    /// most 2 minutes) until the audit log holds one more entry of `kind` than before: all that
    /// happens while the host is held, so none of it waits for the host's write lock. Then lets
    /// the host go and returns what `work` answered.
    pub(super) fn logged_while_the_host_is_read<T: Send + 'static>(
        t: &TestDaemon,
        kind: &str,
        work: impl FnOnce(&AppState, &User) -> ApiResult<T> + Send + 'static,
    ) -> T {
        let before = logged(t, kind).len();
        let reader = t.daemon.host_read();
        let answer = spawn(t, work);
        let deadline = Instant::now() + Duration::from_secs(120);
        while logged(t, kind).len() == before {
            assert!(
                Instant::now() < deadline,
                "no `{kind}` was logged in 2 minutes while the host was held for reading"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(reader);
        t.runtime.block_on(answer)
    }

    /// The records of the daemon's audit log's entries of `kind`, in order.
    pub(super) fn logged(t: &TestDaemon, kind: &str) -> Vec<serde_json::Value> {
        let log = std::fs::read_to_string(t.daemon.audit.path()).expect("the audit log reads");
        log.lines()
            // A line being written meanwhile is read at the next look.
            .filter_map(|l| serde_json::from_str::<gantry::audit::Entry>(l).ok())
            .filter(|e| e.kind == kind)
            .filter_map(|e| e.record)
            .collect()
    }
}
