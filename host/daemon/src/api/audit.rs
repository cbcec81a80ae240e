//! The audit log: verifying it, and its sealed head.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;

use super::{ApiError, ApiResult, AppState, Caller};
use crate::Daemon;
use gantry::policy::request::{Action, Resource};

/// `GET /v1/audit/verify`: verifies the audit log (chain and signed checkpoints) if the policy
/// allows `audit.read`.
pub(super) async fn verify_audit(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    read_audit(&state, caller, verify).await
}

/// `GET /v1/audit/head` (the policy's `audit.read`): the audit log sealed now, and its latest
/// sealed position `{seq, hash, head: "SEQ:HASH", key}`, to anchor outside the host (a later
/// `gantry audit verify --head SEQ:HASH` fails on a log cut back before it).
pub(super) async fn audit_head(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    read_audit(&state, caller, sealed_head).await
}

/// `read`'s answer, if the policy lets the caller read the audit log (`audit.read`).
async fn read_audit(
    state: &AppState,
    caller: Caller,
    read: fn(&Daemon) -> ApiResult<serde_json::Value>,
) -> ApiResult<Json<serde_json::Value>> {
    let read = move |state: &AppState, _| read(&state.daemon).map(Json);
    caller
        .may(state, Action::AuditRead, Resource::audit_log(), read)
        .await
}

/// The audit log sealed now, then verified up to that seal (entries keep arriving behind it),
/// with the daemon's own key pinned and the sealed position the database holds.
fn verify(daemon: &Daemon) -> ApiResult<serde_json::Value> {
    let sealed = daemon.audit.seal().map_err(ApiError::internal)?;
    let up_to = sealed.or_else(|| daemon.audit.head());
    let (recorded, _) = daemon.db.audit_head()?;
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
    serde_json::to_value(report).map_err(ApiError::internal)
}

/// The audit log sealed now, and its latest sealed position.
fn sealed_head(daemon: &Daemon) -> ApiResult<serde_json::Value> {
    let audit = &daemon.audit;
    audit.seal().map_err(ApiError::internal)?;
    let key = audit.public_key();
    Ok(match audit.head() {
        Some(h) => json!({"seq": h.seq, "hash": h.hash, "head": h.to_string(), "key": key}),
        None => json!({"seq": 0, "hash": null, "head": null, "key": key}),
    })
}
