//! Users: revoking their tokens.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiResult, AppState, Caller, authorize};
use gantry::policy::request::{Action, Resource};

/// `?token=ID` of a revocation: only that token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokeQuery {
    #[serde(default)]
    token: Option<String>,
}

/// `POST /v1/users/{name}/revoke[?token=ID]` (the policy's `user.manage`, admins): every live
/// token of the user (or the one named) is refused from now on; audited as `user.revoke`. What
/// `gantry user revoke` calls when a daemon holds the data directory: a leaked token is revoked
/// without a restart.
pub(super) async fn revoke_tokens(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<axum::extract::Query<RevokeQuery>, axum::extract::rejection::QueryRejection>,
    caller: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    let query = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()));
    caller
        .then(&state, move |state, user| {
            let axum::extract::Query(RevokeQuery { token }) = query?;
            authorize(state, &user, Action::UserManage, Resource::user(&name))?;
            let daemon = &state.daemon;
            let revoked =
                crate::auth::revoke(&daemon.db, &name, token.as_deref()).map_err(|e| match e {
                    crate::auth::RevokeError::Db(e) => ApiError::internal(e),
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
