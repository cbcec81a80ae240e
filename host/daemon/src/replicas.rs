//! Several `gantry up` replicas on one etcd (issue 13, `gantry up --etcd`): they elect a leader
//! ([`gantry_etcd::election`]); only the leader opens the daemon (its jobs in etcd, fenced by
//! its term), schedules and answers the API. A follower answers every request but its health
//! with 503 and the leader's address, which the CLI and agents follow. A leader that loses its
//! lease (paused, cut off from etcd) stops: its writes are refused from that moment, and it
//! exits so that a supervisor starts it again as a follower.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use gantry_etcd::Etcd;
use gantry_etcd::election::{Candidate, Role};
use serde_json::json;

/// The settings of a replicated control plane.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// The etcd cluster.
    pub etcd: Arc<Etcd>,
    /// The prefix of every key this control plane keeps (one etcd may hold several).
    pub root: String,
    /// This replica's URL for clients, as followers name it; `None`: its listening address.
    pub advertise: Option<String>,
    /// The leader's lease: a dead leader is replaced within about this long.
    pub lease: Duration,
}

impl ControlPlane {
    /// The election's key.
    pub fn leader_key(&self) -> String {
        format!("{}/leader", self.root)
    }
}

/// Who leads, as a follower last saw it.
pub type Leader = Arc<Mutex<Option<String>>>;

/// The API of a follower: its health (with the leader's address), and 503 with the leader's
/// address for everything else.
pub fn follower_app(leader: Leader) -> axum::Router {
    let current = move || leader.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let for_health = current.clone();
    axum::Router::new()
        .route(
            "/v1/health",
            axum::routing::get(move || async move {
                Json(json!({"status": "ok", "role": "follower", "leader": for_health()}))
            }),
        )
        .fallback(move || async move {
            let leader = current();
            let error = match &leader {
                Some(url) => format!("this control plane does not lead: ask the leader at {url}"),
                None => "this control plane does not lead, and no leader is elected yet: try again shortly".to_string(),
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": error, "leader": leader})),
            )
                .into_response()
        })
}

/// Runs the election until this replica leads (`Some`, leading) or `stop` is set (`None`);
/// meanwhile `leader` says who does. A failing etcd is retried.
pub async fn campaign(
    mut candidate: Candidate,
    leader: Leader,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Option<Candidate> {
    let period = candidate.ttl() / 3;
    loop {
        if *stop.borrow() {
            return None;
        }
        let (c, role) = tokio::task::spawn_blocking(move || {
            let role = candidate.step();
            (candidate, role)
        })
        .await
        .ok()?;
        candidate = c;
        match role {
            Ok(Role::Leader { term }) => {
                tracing::info!(term, "this control plane leads");
                return Some(candidate);
            }
            Ok(Role::Follower { leader: now }) => {
                *leader.lock().unwrap_or_else(|e| e.into_inner()) = now;
            }
            Err(e) => tracing::warn!(error = %e, "standing for leadership"),
        }
        let mut stop = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            // The sender gone is a stop too (never a loop without its pause).
            changed = stop.changed() => if changed.is_err() { return None },
        }
    }
}

/// Keeps renewing the leadership until it is lost (`None`) or `stop` is set (the candidate,
/// still leading: it resigns once its runs have stopped, so another replica takes over at once).
/// Leading again in another term is a loss too: others may have led in between, and what this
/// replica holds in memory (placements, runs) is of its own term.
pub async fn hold(
    mut candidate: Candidate,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Option<Candidate> {
    let period = candidate.ttl() / 3;
    let term = candidate.term();
    loop {
        let gone = tokio::select! {
            _ = tokio::time::sleep(period) => false,
            changed = stop.changed() => changed.is_err(),
        };
        if gone || *stop.borrow() {
            return Some(candidate);
        }
        let Ok((c, role)) = tokio::task::spawn_blocking(move || {
            let role = candidate.step();
            (candidate, role)
        })
        .await
        else {
            return None;
        };
        candidate = c;
        match role {
            Ok(Role::Leader { term: now }) if Some(now) == term => {}
            Ok(Role::Leader { term: now }) => {
                tracing::error!(
                    ?term,
                    now,
                    "this control plane lost its term (it leads again, in a new one)"
                );
                let _ = tokio::task::spawn_blocking(move || candidate.resign()).await;
                return None;
            }
            Ok(Role::Follower { leader }) => {
                tracing::error!(?leader, "this control plane lost the leadership");
                return None;
            }
            Err(e) if candidate.leads().is_some() => {
                tracing::warn!(error = %e, "renewing the leadership")
            }
            Err(e) => {
                tracing::error!(error = %e, "this control plane lost the leadership (etcd unreachable for its lease)");
                return None;
            }
        }
    }
}
