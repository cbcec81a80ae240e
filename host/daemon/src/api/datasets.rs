//! Datasets: streamed uploads into the encrypted store, listings and streamed downloads.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{
    ApiError, ApiResult, AppState, Caller, MAX_UPLOAD, TenantQuery, authorize, blocking, in_tenant,
    one_visible, valid_id, within_upload_limit,
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
/// `dataset.write`, and the tenant has room for it ([`crate::TenantLimits`]); nothing is kept
/// unless all of it arrived (within [`MAX_UPLOAD`]) and its record was made.
pub(super) async fn upload(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: UploadQueryResult,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let fits = within_upload_limit(&headers, "a dataset");
    let declared = declared_length(&headers);
    let (user, q, room) = caller
        .then(&state, {
            let name = name.clone();
            move |state, user| may_upload(state, user, &name, query, fits, declared)
        })
        .await?;
    let limit = usize::try_from(room).unwrap_or(usize::MAX).min(MAX_UPLOAD);
    let transfer = (state.transfers)
        .slot(&[("tenant", &q.tenant), ("user", &user.name)])
        .await?;
    let record = to_the_end(&state, move |state| async move {
        let (pinned, bytes) = store_body(&state, transfer, body, limit).await?;
        let record = crate::db::DatasetRecord {
            name: crate::db::key(&q.tenant, &name),
            tenant: q.tenant,
            classification: q.classification,
            object: pinned.id().to_string(),
            bytes,
            owner: user.name,
            created_at: crate::db::now(),
        };
        blocking(&state, move |state| {
            let daemon = &state.daemon;
            let kept = keep_dataset(daemon, &record);
            // Unpinned once recorded; an upload that is not kept leaves nothing behind.
            match kept {
                Ok(()) => drop(pinned),
                Err(_) => daemon.let_go_unrecorded(pinned),
            }
            kept.map(|()| record)
        })
        .await
    })
    .await?;
    Ok((StatusCode::CREATED, Json(record)).into_response())
}

/// Runs `work` (storing a body, then recording what names the object or letting it go) on a
/// task of its own, to its end: a client that hangs up once its body is sent drops its
/// handler, and with it whatever the handler was awaiting; the object stored by then was left
/// named by nothing, outside every quota (30 such uploads: 27 MB kept, no dataset listed).
pub(super) async fn to_the_end<T, F>(
    state: &AppState,
    work: impl FnOnce(AppState) -> F,
) -> ApiResult<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = ApiResult<T>> + Send + 'static,
{
    tokio::spawn(work(state.clone()))
        .await
        .map_err(ApiError::internal)?
}

/// Records dataset `record`, just stored, if its tenant still has room for it and its name is
/// free: on a replicated control plane its bytes kept in etcd first, then its record.
fn keep_dataset(daemon: &crate::Daemon, record: &crate::db::DatasetRecord) -> ApiResult<()> {
    let _one = daemon
        .dataset_inserts
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    room_for_dataset(daemon, &record.tenant, record.bytes)?;
    if daemon.datasets.dataset(&record.name)?.is_some() {
        return Err(taken(crate::db::name_of(&record.name), &record.tenant));
    }
    // Into etcd only once it is to be kept: a refused upload writes nothing there.
    daemon
        .share_dataset(&record.object)
        .map_err(ApiError::internal)?;
    match daemon.datasets.insert_dataset(record)? {
        true => Ok(()),
        false => Err(taken(crate::db::name_of(&record.name), &record.tenant)),
    }
}

/// A body's declared length (`Content-Length`), if it has one that reads.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The bytes `tenant` may still store in datasets once one of `adding` bytes is added, or a
/// 429 naming the bound it would pass ([`crate::TenantLimits`]).
fn room_for_dataset(daemon: &crate::Daemon, tenant: &str, adding: u64) -> ApiResult<u64> {
    let limits = daemon.tenant_limits;
    let (count, bytes) = daemon.datasets.tenant_usage(tenant)?;
    if count >= limits.datasets {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "tenant {tenant} has {count} datasets, the most one tenant may \
                 (--max-datasets-per-tenant)"
            ),
        ));
    }
    let after = bytes.saturating_add(adding);
    if after > limits.dataset_bytes {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "tenant {tenant}'s datasets hold {bytes} bytes; {adding} more would pass the \
                 {} one tenant may store (--max-dataset-bytes-per-tenant)",
                limits.dataset_bytes
            ),
        ));
    }
    Ok(limits.dataset_bytes - after)
}

/// Whether `user` may upload dataset `name` as `query` says (blocking): a good name, a member
/// of the tenant, a declared size that `fits`, the policy's `dataset.write`, the name free and
/// room in the tenant for the `declared` bytes; with the bytes the tenant may still store.
fn may_upload(
    state: &AppState,
    user: User,
    name: &str,
    query: UploadQueryResult,
    fits: ApiResult<()>,
    declared: Option<u64>,
) -> ApiResult<(User, UploadQuery, u64)> {
    ApiError::disk_room(&state.daemon)?;
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
    // A tenant of the cluster, whoever asks: an admin's upload to `a/b`, `` or `../..` was
    // stored under a name no read could reach again, holding quota for ever.
    if state
        .daemon
        .host_read()
        .state()
        .cluster
        .tenant_index(&q.tenant)
        .is_none()
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "field `tenant`: unknown tenant `{}`",
                q.tenant.escape_debug()
            ),
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
    let room = room_for_dataset(&state.daemon, &q.tenant, declared.unwrap_or(0))?;
    Ok((user, q, room + declared.unwrap_or(0)))
}

/// The answer to an upload of a dataset name `tenant` has already.
fn taken(name: &str, tenant: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!("a dataset `{name}` already exists in tenant {tenant}"),
    )
}

/// Streams `body` (at most `limit` bytes) into the store, holding `transfer` (a slot of
/// [`super::transfers`]) meanwhile: the object, pinned until whatever names it is recorded,
/// and its size.
pub(super) async fn store_body(
    state: &AppState,
    transfer: super::transfers::Transfer,
    body: Body,
    limit: usize,
) -> ApiResult<(gantry::storage::Pinned, u64)> {
    let (reader, feeder) = body::stream(body, limit);
    let daemon = state.daemon.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let _transfer = transfer;
        daemon.store.put_pinned(reader)
    })
    .await
    .map_err(ApiError::internal)?;
    // The body's own failure (too large, too slow, cut off) explains a failed write best.
    let bytes = feeder.await.map_err(ApiError::internal)??;
    let object = stored.map_err(ApiError::internal)?;
    Ok((object, bytes))
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
                        .map(|mut d| {
                            // Its content's hash, to the one who knows the content.
                            if d.owner != user.name {
                                d.object.clear();
                            }
                            d
                        })
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
    let (tenant, user, reader) = caller
        .then(&state, move |state, user| {
            let found = readable_dataset(state, &user, &name, tenant?.as_deref())?;
            let reader = state
                .daemon
                .dataset_reader(&found.object)
                .map_err(ApiError::internal)?;
            Ok((found.tenant, user.name, reader))
        })
        .await?;
    let transfer = (state.transfers)
        .slot(&[("tenant", &tenant), ("user", &user)])
        .await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        body::from_reader(reader, transfer),
    )
        .into_response())
}
