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
    let (body, _slot) = large_body(&state, &user, &headers, body, "a policy bundle").await?;
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
    if !policy.entrypoints().contains(&gantry::DECISION_ENTRYPOINT) {
        return Err(bad(format!(
            "the bundle has no `{}` entrypoint (it has {:?}); it would deny every request",
            gantry::DECISION_ENTRYPOINT,
            policy.entrypoints()
        )));
    }
    if daemon.nodes.is_some() {
        let nodes: Vec<User> = (daemon.accounts.users()?.into_iter())
            .filter(crate::accounts::is_node)
            .collect();
        crate::persisted::lets_nodes_work(&policy, &nodes).map_err(bad)?;
    }
    let revision = policy.revision().to_string();
    // The bundle is kept and named as the policy to start with, before it decides: a restart
    // (or the next leader) never silently goes back to an older policy. Kept and swapped in one
    // turn, so concurrent installs leave the policy in force, the one a restart reads and the
    // log agreeing; the swap and its record take no lock of the host's, so cycles and requests
    // go on meanwhile.
    let _turn = daemon.installs.lock().unwrap_or_else(|e| e.into_inner());
    daemon
        .policies
        .install(body, &revision)
        .map_err(ApiError::internal)?;
    let previous = here(daemon.decider.swap_policy(policy))
        .map_err(ApiError::internal)?
        .revision()
        .to_string();
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
                crate::persisted::policy_in_force(&daemon.host_read(), &*daemon.policies)
                    .map(Json)
                    .map_err(ApiError::internal)
            },
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::super::tests::logged_while_the_host_is_read;
    use crate::testing::TestDaemon;

    /// Issue 11: replacing the policy recorded the swap (an fsync) under the host's write lock,
    /// so every cycle and request needing the host waited on the disk. Now the swap and its
    /// record take no lock of the host's: both happen while another holds the host.
    #[test]
    fn a_policy_is_recorded_and_swapped_while_another_holds_the_host() {
        let t = TestDaemon::new();
        let bundle = shipped_bundle("replaced-in-a-test");
        let swapped = logged_while_the_host_is_read(&t, "policy.swap", move |state, admin| {
            super::install(state, admin, &bundle)
        });
        let revision = swapped["revision"].as_str().expect("a revision");
        assert_ne!(Some(revision), swapped["previous"].as_str());
        let in_force = t.daemon.host_read().policy().expect("a policy").current();
        assert_eq!(in_force.revision(), revision);
    }

    /// The shipped policy as a bundle's bytes (`gantry policy build`), under `revision`.
    fn shipped_bundle(revision: &str) -> Vec<u8> {
        let (name, rego, data) = gantry::builtin::AUTHZ_POLICY;
        let source = gantry::policy::source::PolicySource::from_parts(&[(name, rego)], data)
            .expect("the shipped policy reads");
        let entrypoints = [gantry::DECISION_ENTRYPOINT.to_string()];
        let bundle = gantry::policy::build(&source, &entrypoints, Some(revision)).expect("built");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("bundle.tar.gz");
        bundle.write(&path).expect("written");
        std::fs::read(&path).expect("read back")
    }
}
