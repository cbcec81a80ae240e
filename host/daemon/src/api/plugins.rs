//! Plugins: the active scheduler plugin, activating and reloading one, uploads.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{
    ApiError, ApiResult, AppState, Caller, MAX_BODY, authorize, blocking, here, large_body,
    refused, valid_id,
};
use crate::body;
use crate::db::User;
use gantry::policy::request::{Action, PluginRef, Resource};

/// `GET /v1/plugins`: the active scheduler plugin and the shipped ones of every kind.
pub(super) async fn plugins(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    caller
        .may(&state, Action::PluginRead, Resource::Empty {}, plugins_now)
        .await
}

/// The active scheduler plugin, the shipped plugins and the uploaded ones.
fn plugins_now(state: &AppState, _: User) -> ApiResult<Json<serde_json::Value>> {
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
    let uploaded = state
        .daemon
        .plugins
        .plugins(None)
        .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "scheduler": active,
        "schedulers": shipped(gantry::builtin::SCHEDULERS),
        "preprocessors": shipped(gantry::builtin::PREPROCESSORS),
        "uploaded": uploaded,
    })))
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
    caller: Caller,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let user = caller.user(&state).await?;
    let SchedulerRef { name } = body::json(body, MAX_BODY).await?;
    let loaded = blocking(&state, move |state| activate(state, &user, Some(name))).await?;
    state.wake.notify_one();
    Ok(Json(loaded))
}

/// `POST /v1/plugins/scheduler/reload`: loads the active scheduler plugin afresh from its source
/// (a new instance: fault counts reset, a quarantine lifted), if the policy allows `plugin.load`.
pub(super) async fn reload_scheduler(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    let loaded = caller
        .then(&state, |state, user| activate(state, &user, None))
        .await?;
    state.wake.notify_one();
    Ok(Json(loaded))
}

/// Makes scheduler plugin `name` (none: the active one, afresh) active for `user` (blocking).
fn activate(state: &AppState, user: &User, name: Option<String>) -> ApiResult<serde_json::Value> {
    let daemon = &state.daemon;
    let name = match name {
        Some(name) => name,
        None => daemon
            .plugins
            .active_scheduler()
            .map_err(ApiError::internal)?
            .unwrap_or_else(|| crate::DEFAULT_SCHEDULER.to_string()),
    };
    let source = crate::plugin_source(&*daemon.plugins, &name)
        .map_err(|m| ApiError::new(StatusCode::NOT_FOUND, m))?;
    // Decided and compiled (seconds, for a new component) without the host's lock: cycles and
    // requests go on meanwhile; only the swap takes it.
    let loader = daemon.host_read().loader().clone();
    let subject = user.subject();
    let prepared = here(loader.prepare_scheduler_as(&daemon.decider, &subject, &source))
        .map_err(|e| load_refused(daemon, e))?;
    // Recorded, swapped and remembered in one turn: with loads at once, the last one installed
    // is the active one, the last `plugin.load` in the log and the one a restart loads.
    let _turn = daemon.installs.lock().unwrap_or_else(|e| e.into_inner());
    let recorded = here(prepared.record(&daemon.decider)).map_err(|e| refused(daemon, e))?;
    let loaded = {
        let mut host = daemon.host();
        let p = host.install_scheduler(recorded);
        json!({"name": p.name(), "version": p.manifest().version, "sha256": p.wasm_sha256()})
    };
    crate::metrics::Metrics::inc(&daemon.metrics.decisions_allowed);
    daemon
        .plugins
        .set_active_scheduler(&name)
        .map_err(ApiError::internal)?;
    Ok(loaded)
}

/// A plugin load's refusal: one that does not load is unprocessable (422), a denial refused.
fn load_refused(daemon: &crate::Daemon, error: gantry::HostError) -> ApiError {
    match error {
        gantry::HostError::Load(e) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        e => refused(daemon, e),
    }
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
    Path(name): Path<String>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let user = caller
        .then(&state, {
            let name = name.clone();
            move |state, user| may_send_plugin(state, user, &name)
        })
        .await?;
    let (body, _slot) = large_body(&state, &user, &headers, body, "a plugin upload").await?;
    let upload: PluginUpload = body::parse_json(&body)?;
    blocking(&state, move |state| store_plugin(state, user, name, upload)).await
}

/// Whether `user` may send plugin `name` (blocking): a good name, not a shipped plugin's, and
/// decided before the body is read, as far as it can be: only a caller the policy would let
/// upload a signed plugin may send one (the decision on the plugin itself follows).
fn may_send_plugin(state: &AppState, user: User, name: &str) -> ApiResult<User> {
    if !valid_id(name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "plugin name: 1-64 characters of letters, digits, '-', '_' and '.', not starting with '.'",
        ));
    }
    if gantry::builtin::scheduler(name).is_some() || gantry::builtin::preprocessor(name).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("`{name}` is a shipped plugin; upload under another name"),
        ));
    }
    let before_body = PluginRef::before_body(name);
    authorize(state, &user, Action::PluginUpload, before_body)?;
    Ok(user)
}

/// Checks, decides, compiles and stores an uploaded plugin (blocking).
fn store_plugin(
    state: &AppState,
    user: User,
    name: String,
    upload: PluginUpload,
) -> ApiResult<Response> {
    let (plugin, manifest) = read_upload(name, upload)?;
    let signed = {
        let host = state.daemon.host_read();
        plugin.verify(&host.trust().trusted_keys).is_ok()
    };
    let decided = PluginRef::new(&plugin.name, signed);
    authorize(state, &user, Action::PluginUpload, decided)?;
    let daemon = &state.daemon;
    let (sha256, kind) = check_plugin(daemon, &plugin, manifest.kind)?;
    let record = crate::db::PluginRecord {
        name: plugin.name,
        kind: kind.to_string(),
        version: manifest.version.clone(),
        manifest: plugin.manifest,
        object: String::new(),
        signature: plugin.signature,
        owner: user.name,
        created_at: crate::db::now(),
    };
    let record = daemon
        .plugins
        .put_plugin(record, &plugin.wasm)
        .map_err(ApiError::internal)?;
    daemon
        .decider
        .record(
            "plugin.upload",
            json!({"plugin": record.name, "version": record.version, "sha256": sha256,
                   "by": record.owner}),
        )
        .map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(record)).into_response())
}

/// The uploaded plugin `name` and its manifest, which must name it.
fn read_upload(
    name: String,
    upload: PluginUpload,
) -> ApiResult<(gantry::UploadedPlugin, gantry::plugin::manifest::Manifest)> {
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
    Ok((plugin, manifest))
}

/// Compiles and instantiates `plugin` as its manifest's `kind` says (which also fills the
/// artifact cache) before it is kept: its component's digest and the kind as stored.
fn check_plugin(
    daemon: &crate::Daemon,
    plugin: &gantry::UploadedPlugin,
    kind: gantry::plugin::manifest::PluginKind,
) -> ApiResult<(String, &'static str)> {
    let unusable =
        |e: &dyn std::fmt::Display| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
    // A clone of the loader: the compile holds no lock of the host's, so scheduling and the
    // API go on meanwhile.
    let host = daemon.host_read().loader().clone();
    match kind {
        gantry::plugin::manifest::PluginKind::Scheduler => {
            let source = gantry::PluginSource::Uploaded(Box::new(plugin.clone()));
            let checked = host
                .load_scheduler_plugin(&source)
                .map_err(|e| unusable(&e))?;
            // Instantiated and configured once: a plugin over its limits is refused here
            // rather than faulting on every cycle once active.
            here(checked.probe()).map_err(|e| unusable(&e))?;
            Ok((checked.wasm_sha256().to_string(), crate::KIND_SCHEDULER))
        }
        gantry::plugin::manifest::PluginKind::Preprocess => {
            let checked = host
                .load_preprocess_plugin(&plugin.name, Some(plugin))
                .map_err(|e| unusable(&e))?;
            // One worker: instantiated and configured with the manifest's [config].
            checked.worker_blocking().map_err(|e| unusable(&e))?;
            Ok((checked.wasm_sha256().to_string(), crate::KIND_PREPROCESS))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{logged, logged_while_the_host_is_read, spawn};
    use crate::testing::TestDaemon;

    /// The active scheduler plugin's name.
    fn active(t: &TestDaemon) -> Option<String> {
        let host = t.daemon.host_read();
        host.scheduler().map(|p| p.name().to_string())
    }

    /// Issue 11: activating a scheduler plugin decided and compiled it under the host's write
    /// lock (seconds, for a new component), so every cycle and request needing the host waited
    /// behind the compile. Now only the swap takes it: the load is decided, compiled and
    /// recorded while another holds the host, and swapped in once it lets go.
    #[test]
    fn a_plugin_is_decided_compiled_and_recorded_while_another_holds_the_host() {
        let t = TestDaemon::new();
        assert_eq!(active(&t).as_deref(), Some("binpack"));
        let loaded = logged_while_the_host_is_read(&t, "plugin.load", |state, admin| {
            super::activate(state, admin, Some("spread".into()))
        });
        assert_eq!(loaded["name"], "spread");
        assert_eq!(active(&t).as_deref(), Some("spread"));
        let setting = t.daemon.db.setting(crate::ACTIVE_SCHEDULER).expect("read");
        assert_eq!(setting.as_deref(), Some("spread"), "a restart loads it too");
    }

    /// Loads at once (compiled side by side) leave the active plugin, the last `plugin.load` in
    /// the audit log and the plugin a restart loads agreeing: the last one installed wins.
    #[test]
    fn loads_at_once_leave_the_active_plugin_the_log_and_the_setting_agreeing() {
        let t = TestDaemon::new();
        let loads: Vec<_> = ["spread", "topology", "fairshare", "binpack"]
            .iter()
            .cycle()
            .take(8)
            .map(|name| {
                spawn(&t, |state, admin| {
                    super::activate(state, admin, Some(name.to_string()))
                })
            })
            .collect();
        for load in loads {
            t.runtime.block_on(load);
        }
        let recorded = logged(&t, "plugin.load");
        assert_eq!(recorded.len(), 8);
        let active = active(&t).expect("a plugin is active");
        assert_eq!(recorded[7]["plugin"], active.as_str());
        let setting = t.daemon.db.setting(crate::ACTIVE_SCHEDULER).expect("read");
        assert_eq!(setting, Some(active));
    }
}
