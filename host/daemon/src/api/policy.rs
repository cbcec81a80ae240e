//! The access-control policy: replacing it with an uploaded bundle, and the one in force.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::json;

use super::{ApiError, ApiResult, AppState, Caller, blocking, here, large_body};
use crate::db::User;
use gantry::policy::request::{Action, Resource};

/// `POST /v1/policy` (admins): replaces the access-control policy with the OPA bundle in the
/// body (`gantry policy build`), atomically and audited. A bundle without the decision
/// entrypoint is refused: installing it would deny every request, the admin's own included.
pub(super) async fn reload_policy(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let user = caller
        .may(
            &state,
            Action::PolicyReplace,
            Resource::Empty {},
            |_, user| Ok(user),
        )
        .await?;
    let (body, _slot) = large_body(&state, &headers, body, "a policy bundle").await?;
    let swapped = blocking(&state, move |state| install(state, &user, &body)).await?;
    Ok(Json(swapped))
}

/// Loads the OPA bundle `body` and makes it the policy in force (and the one a restart starts
/// with), for `user`; refused (400) when it does not load or has no decision entrypoint.
fn install(state: &AppState, user: &User, body: &[u8]) -> ApiResult<serde_json::Value> {
    let daemon = &state.daemon;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let bundle =
        gantry::policy::bundle::from_bytes(body, std::path::Path::new("<uploaded bundle>"))
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
    let object = daemon.store.put_bytes(body).map_err(ApiError::internal)?;
    crate::persisted::remember_policy(&daemon.db, &object, &revision)
        .map_err(ApiError::internal)?;
    let previous = daemon
        .host()
        .set_policy(policy)
        .map_err(ApiError::internal)?
        .map(|p| p.revision().to_string());
    tracing::info!(by = %user.name, revision = %revision, "policy replaced");
    Ok(json!({"revision": revision, "previous": previous}))
}

/// `GET /v1/policy` (the policy's `policy.read`): the revision in force, and whether it is the
/// shipped policy or one an admin installed.
pub(super) async fn policy_info(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<crate::persisted::PolicyInForce>> {
    caller
        .may(
            &state,
            Action::PolicyRead,
            Resource::Empty {},
            |state, _| {
                let daemon = &state.daemon;
                crate::persisted::policy_in_force(&daemon.host_read(), &daemon.db)
                    .map(Json)
                    .map_err(ApiError::internal)
            },
        )
        .await
}
