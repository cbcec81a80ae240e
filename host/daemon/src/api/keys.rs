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
        refuse_when_replicated(daemon.leadership.is_some())?;
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

/// A replicated control plane's replicas share their master keys (copies of one data
/// directory), and the objects kept in etcd are sealed under them: a rotation makes a new
/// master key in this replica's directory alone, so what it seals next no other replica can
/// read, and the key it retires still seals copies in etcd (a review: a dataset uploaded after
/// a rotation answered 500 under the next leader). Refused until master keys are distributed.
fn refuse_when_replicated(replicated: bool) -> ApiResult<()> {
    match replicated {
        false => Ok(()),
        true => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "a replicated control plane cannot rotate its master key: the new key would be in \
             this replica's data directory alone, and what it seals the other replicas could \
             not read",
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_replicated_control_plane_refuses_to_rotate_its_master_key() {
        assert!(super::refuse_when_replicated(false).is_ok());
        let refused = super::refuse_when_replicated(true).expect_err("refused");
        assert_eq!(refused.status, axum::http::StatusCode::CONFLICT);
    }
}
