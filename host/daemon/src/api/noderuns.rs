//! What a node's agent needs for a training run it was handed: the job's dataset and its
//! checkpoints, through the control plane (agents never reach its store). Each request names the
//! run (`?job=tenant/name&attempt=N`); the policy decides it as `node.data` (the node's own
//! identity, for a job whose current run is on that node), and a run that is not the job's
//! current attempt on that node is refused (409): a stale run reads nothing and writes no
//! checkpoint.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiResult, AppState, Caller, authorize, within_limit};
use crate::db::{JobRecord, User};
use gantry::policy::request::{Action, NodeJobRef, Resource};

/// The answer header that says a checkpoint's step.
pub const STEP_HEADER: &str = "x-gantry-checkpoint-step";

/// `?job=tenant/name&attempt=N` (and `&step=S` for a checkpoint written).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunQuery {
    job: String,
    attempt: u64,
    #[serde(default)]
    step: Option<u32>,
}

type RunQueryResult = Result<Query<RunQuery>, axum::extract::rejection::QueryRejection>;

/// The run `query` names, if it is the job's current attempt on `node` and the policy lets
/// `user` act for it (blocking).
fn handed(
    state: &AppState,
    user: &User,
    node: &str,
    query: &RunQuery,
) -> ApiResult<(JobRecord, gantry::training::TrainConfig)> {
    let daemon = &state.daemon;
    let nodes = super::cluster::agents(daemon)?;
    let (tenant, name) = query.job.split_once('/').ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "field `job`: a job's key, `tenant/name`",
        )
    })?;
    let (current, placed) = daemon.handed_job(nodes, node, &query.job, query.attempt);
    let resource = NodeJobRef {
        node: node.to_string(),
        tenant: tenant.to_string(),
        job: name.to_string(),
        placed,
    };
    authorize(state, user, Action::NodeData, Resource::NodeJob(resource))?;
    let job = current.map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
    let Some(text) = job.train.as_deref() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("job {} is not a training job", query.job),
        ));
    };
    let config = crate::runner::train_config(&daemon.train_limits, &job.id, text)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e.to_string()))?;
    Ok((job, config))
}

fn query_of(query: RunQueryResult) -> ApiResult<RunQuery> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))
}

/// `GET /v1/nodes/{node}/runs/dataset?job=..&attempt=..`: the stored dataset the run's
/// configuration names, streamed (decrypted and authenticated chunk by chunk); when it goes
/// through a preprocessing plugin, the plugin's records instead, the label first (plugins run
/// in this daemon's sandbox; see [`crate::runner::preprocessed_records`]).
pub(super) async fn dataset(
    State(state): State<AppState>,
    Path(node): Path<String>,
    query: RunQueryResult,
    caller: Caller,
) -> ApiResult<Response> {
    // The caller and the run checked first (a node's slot is never held for anyone else, a
    // review found tokenless requests queueing ahead of its agent), then the slot: the
    // preprocessing below is as costly as the transfer.
    let holder = node.clone();
    let (job, config, query) = caller
        .then(&state, move |state, user| {
            let query = query_of(query)?;
            let (job, config) = handed(state, &user, &holder, &query)?;
            Ok((job, config, query))
        })
        .await?;
    let transfer = state.node_transfers.slot(&[("node", &node)]).await?;
    let reader = super::blocking(&state, move |state| {
        // Counted once it is served (a fetch told to try again is not).
        let count = || {
            super::cluster::agents(&state.daemon)?
                .count_fetch(&node, &job.id, query.attempt)
                .map_err(|e| ApiError::new(StatusCode::TOO_MANY_REQUESTS, e))
        };
        let name = config.data.dataset.clone().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("job {} trains on no stored dataset", query.job),
            )
        })?;
        let daemon = &state.daemon;
        if let Some(plugin) = &config.data.preprocess {
            // What the plugin makes of the dataset is known once it has run: the most a job
            // may take, from the daemon's training memory, or try again later (no waiting
            // here, on a blocking thread every request shares).
            let budget = &daemon.train_budget;
            let _reserved = budget
                .try_reserve(&job.tenant, daemon.train_limits.max_memory_mib)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the control plane's training memory is taken (--train-memory-mib): \
                         try again shortly",
                    )
                })?;
            count()?;
            let records = crate::runner::preprocessed_records(daemon, &job, &config, &name, plugin)
                .map_err(|e| ApiError::new(StatusCode::CONFLICT, e.to_string()))?;
            let reader: Box<dyn std::io::Read + Send> = Box::new(std::io::Cursor::new(records));
            return Ok(reader);
        }
        count()?;
        let record = daemon
            .datasets
            .dataset(&crate::db::key(&job.tenant, &name))?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no dataset `{name}` in tenant {}", job.tenant),
                )
            })?;
        let reader = daemon
            .dataset_reader(&record.object)
            .map_err(ApiError::internal)?;
        Ok(Box::new(reader) as Box<dyn std::io::Read + Send>)
    })
    .await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        crate::body::from_reader(reader, transfer),
    )
        .into_response())
}

/// `GET /v1/nodes/{node}/runs/checkpoint?job=..&attempt=..`: the job's newest checkpoint,
/// streamed, its step in [`STEP_HEADER`]; 404 when it has none.
pub(super) async fn latest_checkpoint(
    State(state): State<AppState>,
    Path(node): Path<String>,
    query: RunQueryResult,
    caller: Caller,
) -> ApiResult<Response> {
    let holder = node.clone();
    let (step, reader) = caller
        .then(&state, move |state, user| {
            let query = query_of(query)?;
            let (job, _) = handed(state, &user, &node, &query)?;
            let (step, object) =
                state
                    .daemon
                    .jobs
                    .latest_checkpoint(&job.id)?
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            format!("job {} has no checkpoint", query.job),
                        )
                    })?;
            let daemon = &state.daemon;
            let reader = match daemon.checkpoint_reader(&job.id, &object) {
                Ok(reader) => reader,
                // The agent's run starts from the beginning, as one on this daemon would.
                Err(_) if daemon.checkpoint_gone(&job.id, step, &object) => {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("job {}'s checkpoint is no longer stored", query.job),
                    ));
                }
                Err(e) => return Err(ApiError::internal(e)),
            };
            Ok((step, reader))
        })
        .await?;
    let transfer = state.node_transfers.slot(&[("node", &holder)]).await?;
    Ok(checkpoint_response(step, reader, transfer))
}

/// A checkpoint at `step` streamed out of `reader`, holding `transfer` while it is sent.
pub(super) fn checkpoint_response(
    step: u32,
    reader: gantry::storage::ObjectReader,
    transfer: impl Send + 'static,
) -> Response {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_string(),
            ),
            (
                axum::http::HeaderName::from_static(STEP_HEADER),
                step.to_string(),
            ),
        ],
        crate::body::from_reader(reader, transfer),
    )
        .into_response()
}

/// The most bytes a checkpoint's upload may have: the largest checkpoint a job may write
/// (`largest`), and on a replicated control plane (`replicated`) no more than it keeps in etcd
/// for the next leader ([`crate::sealedobjects::MAX_SHARED`], sealed), refused before any byte
/// is read rather than after the upload.
fn checkpoint_limit(largest: u64, replicated: bool) -> u64 {
    match replicated {
        true => largest.min(super::MAX_UPLOAD as u64),
        false => largest,
    }
}

/// `PUT /v1/nodes/{node}/runs/checkpoint?job=..&attempt=..&step=..`: a checkpoint the run
/// wrote, streamed into the encrypted store (at most the largest checkpoint a job may write)
/// and recorded as the job's newest, unless the run stopped being current meanwhile. The agent
/// checks a checkpoint's digest and network when it resumes from it.
pub(super) async fn put_checkpoint(
    State(state): State<AppState>,
    Path(node): Path<String>,
    query: RunQueryResult,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = checkpoint_limit(
        gantry::training::checkpoint::max_file_bytes(),
        state.daemon.leadership.is_some(),
    );
    let fits = within_limit(&headers, "a checkpoint", limit);
    let (query, step) = caller
        .then(&state, {
            let node = node.clone();
            move |state, user| {
                let query = query_of(query)?;
                handed(state, &user, &node, &query)?;
                fits?;
                let step = query.step.ok_or_else(|| {
                    ApiError::new(StatusCode::BAD_REQUEST, "field `step`: missing")
                })?;
                Ok((query, step))
            }
        })
        .await?;
    let transfer = state.node_transfers.slot(&[("node", &node)]).await?;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let bytes = super::datasets::to_the_end(&state, move |state| async move {
        let (pinned, bytes) = super::datasets::store_body(&state, transfer, body, limit).await?;
        super::blocking(&state, move |state| {
            let daemon = &state.daemon;
            let object = pinned.id().to_string();
            let recorded = super::cluster::agents(daemon).and_then(|nodes| {
                daemon
                    .remote_checkpoint(nodes, &node, &query.job, query.attempt, step, &object)
                    .map_err(|e| super::cluster::refusal(daemon, e))
            });
            // A refused checkpoint (a stale run's) leaves nothing behind.
            match recorded {
                Ok(()) => drop(pinned),
                Err(_) => daemon.let_go_unrecorded(pinned),
            }
            recorded
        })
        .await?;
        Ok(bytes)
    })
    .await?;
    Ok(Json(json!({ "step": step, "bytes": bytes })))
}

#[cfg(test)]
mod tests {
    /// A replicated control plane once read a checkpoint of up to 32 GiB, then failed to keep
    /// it in etcd (64 MiB): the upload is bounded by what etcd keeps, before it is read.
    #[test]
    fn a_replicated_control_plane_bounds_a_checkpoint_by_what_it_keeps_in_etcd() {
        let largest = 32u64 << 30;
        assert_eq!(super::checkpoint_limit(largest, false), largest);
        let replicated = super::checkpoint_limit(largest, true);
        assert!(replicated < largest);
        let sealed = gantry::storage::sealed_len(replicated);
        assert!(
            sealed <= crate::sealedobjects::MAX_SHARED as u64,
            "{sealed}"
        );
    }
}
