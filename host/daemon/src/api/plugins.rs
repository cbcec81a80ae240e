//! Plugins: the active scheduler plugin, activating and reloading one, uploads.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{
    ApiError, ApiResult, AppState, MAX_BODY, MAX_UPLOAD, authorize, blocking, caller,
    declared_length, here, refused, valid_id,
};
use crate::body;
use crate::db::User;
use gantry::policy::request::{Action, PluginRef, Resource};

/// `GET /v1/plugins`: the active scheduler plugin and the shipped ones of every kind.
pub(super) async fn plugins(
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
pub(super) async fn load_scheduler(
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
pub(super) async fn reload_scheduler(
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
                .setting(crate::ACTIVE_SCHEDULER)
                .map_err(ApiError::internal)?
                .unwrap_or_else(|| crate::DEFAULT_SCHEDULER.to_string()),
        };
        let source = crate::plugin_source(&daemon.db, &daemon.store, &name)
            .map_err(|m| ApiError::new(StatusCode::NOT_FOUND, m))?;
        let mut host = daemon.host();
        let loaded = match here(host.load_scheduler_as(&user.subject(), &source)) {
            Ok(p) => {
                crate::metrics::Metrics::inc(&daemon.metrics.decisions_allowed);
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
            .set_setting(crate::ACTIVE_SCHEDULER, &name)
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
pub(super) async fn upload_plugin(
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
                    (checked.wasm_sha256().to_string(), crate::KIND_SCHEDULER)
                }
                gantry::plugin::manifest::PluginKind::Preprocess => {
                    let checked = host
                        .load_preprocess_plugin(&plugin.name, Some(&plugin))
                        .map_err(|e| unusable(e.to_string()))?;
                    // One worker: instantiated and configured with the manifest's [config].
                    checked
                        .worker_blocking()
                        .map_err(|e| unusable(e.to_string()))?;
                    (checked.wasm_sha256().to_string(), crate::KIND_PREPROCESS)
                }
            }
        };
        let object = daemon
            .store
            .put_bytes(&plugin.wasm)
            .map_err(ApiError::internal)?;
        let record = crate::db::PluginRecord {
            name: plugin.name,
            kind: kind.to_string(),
            version: manifest.version.clone(),
            manifest: plugin.manifest,
            object,
            signature: plugin.signature,
            owner: user.name,
            created_at: crate::db::now(),
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
