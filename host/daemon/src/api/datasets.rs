//! Datasets: streamed uploads into the encrypted store, listings and streamed downloads.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{
    ApiError, ApiResult, AppState, Caller, MAX_UPLOAD, TRANSFER_SLOTS, TRANSFER_WAIT, TenantQuery,
    authorize, blocking, in_tenant, one_visible, valid_id, within_upload_limit,
};
use crate::body;
use crate::db::User;
use gantry::policy::request::{Action, Resource};

/// `?tenant=...&classification=...` of an upload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UploadQuery {
    tenant: String,
    classification: String,
}

/// Whether `user` may see `dataset`: admins all, others their tenants'.
fn dataset_visible(user: &User, d: &crate::db::DatasetRecord) -> bool {
    user.is_admin() || user.tenants.contains(&d.tenant)
}

/// An upload's `?tenant=..&classification=..`, or why it does not read.
type UploadQueryResult =
    Result<axum::extract::Query<UploadQuery>, axum::extract::rejection::QueryRejection>;

/// `PUT /v1/datasets/{name}?tenant=..&classification=..`: the raw body, streamed into the
/// encrypted store once the caller is known, a member of the tenant and allowed
/// `dataset.write`; nothing is kept unless all of it arrived (within [`MAX_UPLOAD`]).
pub(super) async fn upload(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: UploadQueryResult,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let fits = within_upload_limit(&headers, "a dataset");
    let (user, q) = caller
        .then(&state, {
            let name = name.clone();
            move |state, user| may_upload(state, user, &name, query, fits)
        })
        .await?;
    let (object, bytes) = store_body(&state, body, MAX_UPLOAD).await?;
    // A replicated control plane keeps the bytes in etcd before the record names them.
    let shared = object.clone();
    blocking(&state, move |state| {
        state
            .daemon
            .share_dataset(&shared)
            .map_err(ApiError::internal)
    })
    .await?;
    let record = crate::db::DatasetRecord {
        name: crate::db::key(&q.tenant, &name),
        tenant: q.tenant,
        classification: q.classification,
        object,
        bytes,
        owner: user.name,
        created_at: crate::db::now(),
    };
    let record = blocking(&state, move |state| {
        match state.daemon.datasets.insert_dataset(&record)? {
            true => Ok(record),
            false => Err(taken(crate::db::name_of(&record.name), &record.tenant)),
        }
    })
    .await?;
    Ok((StatusCode::CREATED, Json(record)).into_response())
}

/// Whether `user` may upload dataset `name` as `query` says (blocking): a good name, a member
/// of the tenant, a declared size that `fits`, the policy's `dataset.write`, and the name free.
fn may_upload(
    state: &AppState,
    user: User,
    name: &str,
    query: UploadQueryResult,
    fits: ApiResult<()>,
) -> ApiResult<(User, UploadQuery)> {
    if !valid_id(name) {
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
    fits?;
    let dataset = gantry::policy::request::DatasetRef {
        name: name.to_string(),
        classification: q.classification.clone(),
        tenant: q.tenant.clone(),
    };
    authorize(state, &user, Action::DatasetWrite, dataset)?;
    // A taken name is refused before anything is written (the insert after the body still
    // decides a race between two uploads of one name). Names are per tenant.
    if state
        .daemon
        .datasets
        .dataset(&crate::db::key(&q.tenant, name))?
        .is_some()
    {
        return Err(taken(name, &q.tenant));
    }
    Ok((user, q))
}

/// The answer to an upload of a dataset name `tenant` has already.
fn taken(name: &str, tenant: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!("a dataset `{name}` already exists in tenant {tenant}"),
    )
}

/// Streams `body` (at most `limit` bytes) into the store, once one of the [`TRANSFER_SLOTS`] is
/// free: the object's name and its size.
pub(super) async fn store_body(
    state: &AppState,
    body: Body,
    limit: usize,
) -> ApiResult<(String, u64)> {
    let transfer = transfer_slot(state).await?;
    let (reader, feeder) = body::stream(body, limit);
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
    Ok((object, bytes))
}

/// One of the [`TRANSFER_SLOTS`] (streamed uploads and downloads), waited for at most
/// [`TRANSFER_WAIT`], or a 503: a transfer holds a blocking thread for as long as its client
/// takes. Waiting (a task, no thread) rather than refusing at once matters because the refusal
/// comes before the body is read: a client still sending a large body sees its connection
/// closed under it, not the 503.
pub(super) async fn transfer_slot(
    state: &AppState,
) -> ApiResult<tokio::sync::OwnedSemaphorePermit> {
    match tokio::time::timeout(TRANSFER_WAIT, state.transfers.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{TRANSFER_SLOTS} transfers are under way; try again shortly"),
        )),
    }
}

pub(super) async fn datasets(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<crate::db::DatasetRecord>>> {
    caller
        .may(
            &state,
            Action::DatasetList,
            Resource::Empty {},
            |state, user| {
                let all = state.daemon.datasets.datasets()?;
                Ok(Json(
                    all.into_iter()
                        .filter(|d| dataset_visible(&user, d))
                        .collect(),
                ))
            },
        )
        .await
}

pub(super) fn readable_dataset(
    state: &AppState,
    user: &User,
    name: &str,
    tenant: Option<&str>,
) -> ApiResult<crate::db::DatasetRecord> {
    let found = one_visible(
        state.daemon.datasets.datasets_named(name)?,
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
pub(super) async fn download(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: TenantQuery,
    caller: Caller,
) -> ApiResult<Response> {
    let tenant = in_tenant(query);
    let reader = caller
        .then(&state, move |state, user| {
            let found = readable_dataset(state, &user, &name, tenant?.as_deref())?;
            state
                .daemon
                .dataset_reader(&found.object)
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
