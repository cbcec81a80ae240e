//! The store's master key: rotating it.

use axum::Json;
use axum::extract::State;
use serde_json::json;

use super::{ApiError, ApiResult, AppState, Caller};
use gantry::policy::request::{Action, Resource};

/// `POST /v1/keys/rotate` (the policy's `key.rotate`, admins): a new master key, every data key
/// re-wrapped under it while puts and reads go on, the old one removed once nothing needs it
/// ([`gantry::storage::Store::rotate`]); audited as `key.rotate`. What `gantry key rotate` calls
/// when a daemon holds the data directory.
pub(super) async fn rotate_key(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    caller.may(&state, Action::KeyRotate, Resource::Empty {}, move |state, user| {
        let daemon = &state.daemon;
        let r = daemon.store.rotate().map_err(ApiError::internal)?;
        let by = json!({"user": user.name});
        daemon
            .decider
            .record("key.rotate", crate::datadir::rotation_record(&r, by))
            .map_err(ApiError::internal)?;
        tracing::info!(master = %r.new_master, rewrapped = r.rewrapped, "master key rotated");
        Ok(Json(serde_json::to_value(r).map_err(ApiError::internal)?))
    })
    .await
}
