//! Users: adding them, issuing and revoking their tokens, through the daemon (the policy's
//! `user.manage`, admins). With a replicated control plane this is how users are managed: the
//! accounts live in etcd, shared by every replica.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiResult, AppState, Caller, authorize};
use gantry::policy::request::{Action, Resource};

/// `POST /v1/users`: a user to add (or update).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUser {
    name: String,
    roles: Vec<String>,
    #[serde(default)]
    tenants: Vec<String>,
    #[serde(default = "public")]
    clearance: String,
    /// The token's lifetime (`30d`, `12h`, `never`); default: the default lifetime.
    #[serde(default)]
    expires: Option<String>,
}

fn public() -> String {
    "public".into()
}

/// `POST /v1/users/{name}/tokens`: the new token's lifetime.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    #[serde(default)]
    expires: Option<String>,
}

/// A token's lifetime as asked: `None` for the default.
fn lifetime(expires: Option<&str>) -> ApiResult<Option<Option<f64>>> {
    expires
        .map(|e| {
            crate::auth::parse_ttl(e)
                .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, format!("expires: {m}")))
        })
        .transpose()
}

/// Issues `name` a token of `ttl` (`None`: the default) and records `event` with `fields`.
fn issue(
    state: &AppState,
    name: &str,
    ttl: Option<Option<f64>>,
    event: &str,
    mut fields: serde_json::Value,
) -> ApiResult<serde_json::Value> {
    let accounts = &*state.daemon.accounts;
    let ttl = match ttl {
        Some(t) => t,
        None => crate::auth::default_ttl(accounts)?,
    };
    let issued = crate::auth::issue_for(accounts, name, ttl)?;
    fields["token"] = issued.id.clone().into();
    fields["expires_at"] = issued.expires_at.into();
    state
        .daemon
        .decider
        .record(event, fields)
        .map_err(ApiError::internal)?;
    Ok(json!({"user": name, "token": issued.token, "id": issued.id,
              "expires_at": issued.expires_at}))
}

/// `POST /v1/users` (the policy's `user.manage`, admins): adds or updates a user and issues
/// them a token, shown once; audited as `user.add` (the token's id, never the token). What
/// `gantry user add --url` calls.
pub(super) async fn add_user(
    State(state): State<AppState>,
    caller: Caller,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    // Who asks first: a client without a valid token has no body read.
    let by = caller.user(&state).await?;
    let new: NewUser = crate::body::json(body, super::MAX_BODY).await?;
    let user = crate::db::User {
        name: new.name,
        roles: new.roles,
        tenants: new.tenants,
        clearance: new.clearance,
    };
    crate::accounts::check_user(&user).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))?;
    let ttl = lifetime(new.expires.as_deref())?;
    super::blocking(&state, move |state| {
        authorize(state, &by, Action::UserManage, Resource::user(&user.name))?;
        let existing = state.daemon.accounts.user(&user.name)?;
        crate::accounts::check_update(existing.as_ref(), &user)
            .map_err(|m| ApiError::new(StatusCode::CONFLICT, m))?;
        state.daemon.accounts.put_user(&user)?;
        let fields = json!({"user": user.name, "roles": user.roles,
            "tenants": user.tenants, "clearance": user.clearance,
            "by": {"user": by.name}});
        let answer = issue(state, &user.name, ttl, "user.add", fields)?;
        Ok((StatusCode::CREATED, Json(answer)))
    })
    .await
}

/// `POST /v1/users/{name}/tokens` (the policy's `user.manage`, admins): another token for an
/// existing user, shown once; audited as `token.issue`.
pub(super) async fn issue_token(
    State(state): State<AppState>,
    Path(name): Path<String>,
    caller: Caller,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let by = caller.user(&state).await?;
    // No body at all: the defaults.
    let bytes = crate::body::bytes(body, super::MAX_BODY).await?;
    let asked: NewToken = if bytes.is_empty() {
        NewToken::default()
    } else {
        crate::body::parse_json(&bytes)?
    };
    let ttl = lifetime(asked.expires.as_deref())?;
    super::blocking(&state, move |state| {
        authorize(state, &by, Action::UserManage, Resource::user(&name))?;
        if state.daemon.accounts.user(&name)?.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no user `{name}`"),
            ));
        }
        let fields = json!({"user": name, "by": {"user": by.name}});
        let answer = issue(state, &name, ttl, "token.issue", fields)?;
        Ok((StatusCode::CREATED, Json(answer)))
    })
    .await
}

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
            let revoked = crate::auth::revoke(&*daemon.accounts, &name, token.as_deref()).map_err(
                |e| match e {
                    crate::auth::RevokeError::Store(e) => e.into(),
                    refused => ApiError::new(StatusCode::NOT_FOUND, refused.to_string()),
                },
            )?;
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
