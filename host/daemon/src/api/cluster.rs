//! The cluster: health, GPUs and nodes, taking GPUs out of service and back, `/metrics`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{
    ApiError, ApiResult, AppState, Caller, MAX_BODY, authorize, authorize_request, blocking,
};
use crate::body;
use crate::db::User;
use gantry::policy::request::{Action, Request, Resource};

/// How long a rendering of `/metrics` is served again: it needs no token, and its counts read
/// every job (in etcd, every record), so a client asking in a loop made each request a scan of
/// the whole store. Rendered at most this often, one rendering at a time, the waiters holding
/// no blocking thread.
pub(super) const METRICS_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let mut last = state.metrics_text.clone().lock_owned().await;
    let fresh =
        (last.as_ref()).and_then(|(at, text)| (at.elapsed() < METRICS_FRESH).then(|| text.clone()));
    let text = match fresh {
        Some(text) => text,
        // Rendered by a task of its own, holding the lock: a client that hangs up does not
        // let another rendering start beside its own.
        None => tokio::spawn(async move {
            let text = render_metrics(&state).await?;
            *last = Some((std::time::Instant::now(), text.clone()));
            Ok::<_, ApiError>(text)
        })
        .await
        .map_err(ApiError::internal)??,
    };
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response())
}

async fn render_metrics(state: &AppState) -> ApiResult<String> {
    blocking(state, |state| {
        let daemon = &state.daemon;
        let counts = daemon.jobs.counts_by_state()?;
        let counts: Vec<(&str, u64)> = counts.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        let host = daemon.host_read();
        let plugin = host
            .scheduler()
            .map(|p| (p.name().to_string(), p.health().report()));
        drop(host);
        let running = daemon.live_curves();
        Ok(crate::metrics::render(
            &daemon.metrics,
            plugin.as_ref().map(|(n, h)| (n.as_str(), h.clone())),
            &counts,
            &running,
        ))
    })
    .await
}

pub(super) async fn health(State(state): State<AppState>) -> Response {
    // An audit log that cannot be written fails every request that must be recorded (most):
    // said here (503), not "ok", so a health check takes the daemon out and its operator learns.
    if let Some(why) = state.daemon.audit.failing() {
        let body = json!({"status": "failing", "audit_log": why});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    if let Err((free, reserve)) = state.daemon.disk_room() {
        let body = json!({"status": "low_disk", "free_bytes": free, "reserve_bytes": reserve});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    // A cluster with GPUs none of which serves (its agents are gone, their leases lapsed, or
    // every GPU reported faults) takes jobs it cannot run: said, without failing the check (a
    // daemon waiting for its agents is up).
    // Read without waiting: while a writer holds the host, it says ok (the next check reads).
    let status = match state.daemon.no_gpu_serves() {
        Some(true) => "degraded: no GPU serves",
        Some(false) | None => "ok",
    };
    match &state.daemon.leadership {
        // The leader of a replicated control plane (followers answer with their own app).
        Some(lead) => Json(json!({"status": status, "role": "leader", "term": lead.term()})),
        None => Json(json!({"status": status})),
    }
    .into_response()
}

/// `GET /v1/gpus`: every GPU, its node and health, and the job holding it.
pub(super) async fn gpus(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    read_cluster(&state, caller, gpus_for).await
}

/// `read`'s answer for the caller, if the policy lets them read the cluster (`cluster.read`).
async fn read_cluster(
    state: &AppState,
    caller: Caller,
    read: fn(&AppState, User) -> ApiResult<Json<serde_json::Value>>,
) -> ApiResult<Json<serde_json::Value>> {
    caller
        .may(state, Action::ClusterRead, Resource::Empty {}, read)
        .await
}

/// Every GPU as `user` may see it.
fn gpus_for(state: &AppState, user: User) -> ApiResult<Json<serde_json::Value>> {
    let missing = (state.daemon.nodes.as_ref())
        .map(|n| n.missing_gpus())
        .unwrap_or_default();
    let host = state.daemon.host_read();
    let s = host.state();
    // Which job holds a GPU is shown for the user's own tenants only (others see it busy).
    let holder_job = |i: usize| {
        s.holder[i].and_then(|alloc| {
            s.running
                .iter()
                .find(|a| a.id == alloc)
                .filter(|a| {
                    let tenant = &s.cluster.tenants[a.tenant as usize].name;
                    user.is_admin() || user.tenants.contains(tenant)
                })
                .map(|a| crate::db::name_of(&a.job_id).to_string())
        })
    };
    let gpus: Vec<serde_json::Value> = s
        .cluster
        .gpus
        .iter()
        .enumerate()
        .map(|(i, g)| {
            json!({
                "id": g.id,
                "node": s.cluster.nodes[g.gpu.node as usize].name,
                "healthy": g.gpu.healthy,
                "busy": s.holder[i].is_some(),
                "job": holder_job(i),
                "retired": host.is_retired(&g.id),
                "missing": missing.contains(&g.id),
            })
        })
        .collect();
    Ok(Json(
        json!({"gpus": gpus, "healthy": s.healthy_gpus(), "busy": s.busy_gpus()}),
    ))
}

/// `GET /v1/nodes`: every node with its rack and its GPUs (total, healthy, busy).
pub(super) async fn nodes(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    read_cluster(&state, caller, nodes_now).await
}

/// Every node with its GPUs' counts.
fn nodes_now(state: &AppState, _: User) -> ApiResult<Json<serde_json::Value>> {
    let host = state.daemon.host_read();
    let s = host.state();
    let mut counts = vec![(0u32, 0u32, 0u32); s.cluster.nodes.len()];
    // A retired GPU (its node was removed) is no longer the node's; a node whose every GPU is
    // retired was removed.
    let mut retired = vec![0u32; s.cluster.nodes.len()];
    for (i, g) in s.cluster.gpus.iter().enumerate() {
        if host.is_retired(&g.id) {
            retired[g.gpu.node as usize] += 1;
            continue;
        }
        let c = &mut counts[g.gpu.node as usize];
        c.0 += 1;
        c.1 += u32::from(g.gpu.healthy);
        c.2 += u32::from(s.holder[i].is_some());
    }
    let nodes: Vec<serde_json::Value> = s
        .cluster
        .nodes
        .iter()
        .zip(&counts)
        .zip(&retired)
        .filter(|((_, (total, ..)), retired)| *total > 0 || **retired == 0)
        .map(|((n, (total, healthy, busy)), _)| {
            json!({"name": n.name, "rack": s.cluster.racks[n.rack as usize],
                   "gpus": total, "healthy_gpus": healthy, "busy_gpus": busy})
        })
        .collect();
    Ok(Json(json!({ "nodes": nodes })))
}

/// `DELETE /v1/nodes/{node}`: an admin (the policy's `node.remove`) removes a node that
/// registered through its agent, once its agent is gone: its GPUs are retired (its jobs back in
/// the queue) and no longer count when jobs are admitted. Answers the GPUs retired.
pub(super) async fn remove_node(
    State(state): State<AppState>,
    axum::extract::Path(node): axum::extract::Path<String>,
    caller: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    use crate::nodes::NodeRemoval;
    let user = caller.user(&state).await?;
    let answer = blocking(&state, move |state| {
        authorize(state, &user, Action::NodeRemove, Resource::node(&node))?;
        let daemon = &state.daemon;
        let retired = daemon.remove_node(agents(daemon)?, &node).map_err(|e| {
            let status = match &e {
                NodeRemoval::Unknown(_) => StatusCode::NOT_FOUND,
                NodeRemoval::InFile(_) | NodeRemoval::Leased(_) => StatusCode::CONFLICT,
                NodeRemoval::Store(_) | NodeRemoval::Host(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            ApiError::new(status, e.to_string())
        })?;
        Ok(json!({"node": node, "retired": retired}))
    })
    .await?;
    state.wake.notify_one();
    Ok(Json(answer))
}

/// `POST /v1/nodes/{node}/heartbeat`: a node's agent renews its lease and reports its GPUs (see
/// [`crate::nodes`]); decided by the policy as `node.heartbeat`. Answers the node's GPUs in
/// service, the reported ordinals the cluster does not have, and the lease's length.
pub(super) async fn heartbeat(
    State(state): State<AppState>,
    axum::extract::Path(node): axum::extract::Path<String>,
    caller: Caller,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let user = caller.user(&state).await?;
    let beat: crate::nodes::Heartbeat = body::json(body, MAX_BODY).await?;
    beat.check()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let answer = blocking(&state, move |state| {
        authorize(state, &user, Action::NodeHeartbeat, Resource::node(&node))?;
        let daemon = &state.daemon;
        let nodes = agents(daemon)?;
        let (serving, unknown, runs) = daemon
            .heartbeat(&node, nodes, &beat)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
        Ok(json!({
            "node": node,
            "lease_s": nodes.lease().as_secs_f64(),
            "serving": serving,
            "not_in_cluster": unknown,
            "runs": runs,
        }))
    })
    .await?;
    state.wake.notify_one();
    Ok(Json(answer))
}

/// `POST /v1/nodes/{node}/runs`: a node's agent reports on a run it was handed (started, a log
/// entry, its end); decided as `node.report`. A report of any but the job's current attempt
/// on this node is refused (409): a run the control plane gave up on changes nothing. Answers
/// whether the run should stop.
pub(super) async fn run_report(
    State(state): State<AppState>,
    axum::extract::Path(node): axum::extract::Path<String>,
    caller: Caller,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let user = caller.user(&state).await?;
    let mut report: crate::nodes::RunReport = body::json_exact(body, MAX_BODY).await?;
    report
        .check()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    report.show_text();
    // A run's output and progress are routine, counted in the audit log's summary; its start
    // and end are an entry each.
    let routine = matches!(
        report.event,
        crate::nodes::RunEvent::Log { .. } | crate::nodes::RunEvent::Progress { .. }
    );
    let stop = blocking(&state, move |state| {
        let request = Request::new(user.subject(), Action::NodeReport, Resource::node(&node));
        let request = if routine { request.routine() } else { request };
        authorize_request(state, &request)?;
        let daemon = &state.daemon;
        let nodes = agents(daemon)?;
        daemon
            .run_report(nodes, &node, report)
            .map_err(|e| refusal(daemon, e))
    })
    .await?;
    state.wake.notify_one();
    Ok(Json(json!({ "stop": stop })))
}

/// The answer to a refused request about a run handed to an agent: 409 for a stale run's; for
/// a failure of the control plane's state, 503 where the agent should ask again (the job store
/// unavailable, or this replica no longer leads: the next leader has the run), else 500.
pub(super) fn refusal(daemon: &crate::Daemon, e: crate::nodes::RunRefusal) -> ApiError {
    use crate::nodes::RunRefusal;
    match e {
        RunRefusal::Stale(e) => ApiError::new(StatusCode::CONFLICT, e),
        _ if !daemon.leads() => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this control plane no longer leads: {e}"),
        ),
        RunRefusal::Store(e) => e.into(),
        RunRefusal::State(e) => ApiError::internal(e),
    }
}

/// The daemon's node agents; 409 when it runs without them.
pub(super) fn agents(daemon: &crate::Daemon) -> ApiResult<&crate::nodes::Nodes> {
    daemon.nodes.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "this daemon runs without node agents (start it with --agent-lease-s)",
        )
    })
}

/// The body of `POST /v1/gpus/unhealthy` (GPU ids hold `/`, so not a path segment).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuRef {
    gpu: String,
}

/// `POST /v1/gpus/unhealthy` `{"gpu": id}` (admins): the GPU leaves service; its jobs go back to
/// the queue (training jobs resume from their newest checkpoint when placed again).
pub(super) async fn mark_unhealthy(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let lost = set_gpu_health(&state, caller, body, false).await?;
    let requeued: Vec<&str> = lost.iter().map(|key| crate::db::name_of(key)).collect();
    Ok(Json(json!({ "requeued": requeued })))
}

/// `POST /v1/gpus/healthy` `{"gpu": id}` (the policy's `gpu.health`, admins): the GPU is back in
/// service (and stays so across restarts).
pub(super) async fn mark_healthy(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    set_gpu_health(&state, caller, body, true).await?;
    Ok(Json(json!({"healthy": true})))
}

/// Marks the GPU the body names healthy or not, if the policy allows `gpu.health`, and keeps
/// it so across restarts; an unhealthy GPU's jobs go back to the queue (returned).
async fn set_gpu_health(
    state: &AppState,
    caller: Caller,
    body: Body,
    healthy: bool,
) -> ApiResult<Vec<String>> {
    let user = caller.user(state).await?;
    let GpuRef { gpu: id } = body::json(body, MAX_BODY).await?;
    let lost = blocking(state, move |state| {
        authorize(state, &user, Action::GpuHealth, Resource::gpu(&id))?;
        let daemon = &state.daemon;
        if !daemon
            .host()
            .state()
            .cluster
            .gpus
            .iter()
            .any(|g| g.id == id)
        {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no GPU `{id}`"),
            ));
        }
        // Out of service (or back) until an admin says otherwise, restarts included; back in
        // service only where its node's agent (when agents are on) serves it too. The whole
        // gang of a job on it starts over elsewhere; a job with a run under way keeps its GPUs
        // until the run has stopped, at its next step.
        daemon.marks.set_gpu_health(&id, healthy, &user.name)?;
        Ok(daemon.apply_gpu_health(&[id], "its GPU became unhealthy"))
    })
    .await?;
    state.wake.notify_one();
    Ok(lost)
}
