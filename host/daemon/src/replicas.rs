//! Several `gantry up` replicas on one etcd (issue 13, `gantry up --etcd`): they elect a leader
//! ([`gantry_etcd::election`]); only the leader opens the daemon (its jobs in etcd, fenced by
//! its term), schedules and answers writes. A follower answers reads of what lives in etcd
//! itself ([`FollowerReads`]: jobs, their logs and metrics, datasets, the policy in force), and
//! everything else with 503 and the leader's address, which the CLI and agents follow. A
//! leader that loses its
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
    /// Authenticate the rows in etcd (users, tokens, jobs, datasets) written before the key
    /// file was in use, as this replica leads
    /// ([`crate::etcdaccounts::EtcdAccounts::authenticate_unmarked`] and the like).
    pub authenticate_rows: bool,
}

impl ControlPlane {
    /// The election's key.
    pub fn leader_key(&self) -> String {
        format!("{}/leader", self.root)
    }
}

/// Who leads, as a follower last saw it.
pub type Leader = Arc<Mutex<Option<String>>>;

/// The API of a follower: its health (with the leader's address), the reads it answers
/// itself (`reads`), and 503 with the leader's address for everything else.
pub fn follower_app(leader: Leader, reads: Arc<FollowerReads>) -> axum::Router {
    let for_health = leader.clone();
    let for_others = leader.clone();
    axum::Router::new()
        .route(
            "/v1/health",
            axum::routing::get(move || async move {
                let leader = current(&for_health);
                Json(json!({"status": "ok", "role": "follower", "leader": leader}))
            }),
        )
        .fallback(move |request: axum::extract::Request| async move {
            let read = request.method() == axum::http::Method::GET
                && crate::api::follower_serves(request.uri().path());
            if !read {
                return leader_only(current(&for_others), None);
            }
            match reads.router(leader).await {
                Ok(mut router) => {
                    use tower_service::Service;
                    match router.call(request).await {
                        Ok(response) => response.into_response(),
                        Err(never) => match never {},
                    }
                }
                Err(e) => leader_only(current(&for_others), Some(e)),
            }
        })
}

fn current(leader: &Leader) -> Option<String> {
    leader.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A follower's answer to what only the leader does: 503 and the leader's address (and why
/// this replica could not read, where it tried).
fn leader_only(leader: Option<String>, unread: Option<String>) -> axum::response::Response {
    let mut error = match &leader {
        Some(url) => format!("this control plane does not lead: ask the leader at {url}"),
        None => "this control plane does not lead, and no leader is elected yet: try again shortly"
            .to_string(),
    };
    if let Some(e) = unread {
        error.push_str(&format!(" (this follower cannot read: {e})"));
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": error, "leader": leader})),
    )
        .into_response()
}

/// What opens a follower's daemon ([`crate::Daemon::open_following`]).
pub type OpenFollower = Box<dyn Fn() -> Result<crate::Daemon, String> + Send + Sync>;

/// A follower's reads: its daemon ([`crate::Daemon::open_following`]), opened by the first read
/// (a replica nobody reads through spends nothing on it) and kept while it follows, then
/// closed before this replica opens its daemon as the leader (one holder of its data
/// directory at a time).
pub struct FollowerReads {
    open: OpenFollower,
    /// The daemon and its routes; `None` before the first read, and once closed.
    opened: tokio::sync::Mutex<Option<(Arc<crate::Daemon>, axum::Router)>>,
    closed: std::sync::atomic::AtomicBool,
    /// When opening last failed, and why: reads are answered with that for
    /// [`REOPEN_AFTER`] rather than each trying again.
    failed: Mutex<Option<(std::time::Instant, String)>>,
}

/// How long a follower whose read side did not open answers reads with why, before trying again.
const REOPEN_AFTER: Duration = Duration::from_secs(5);

impl FollowerReads {
    /// Reads opened by `open` when first asked for.
    pub fn new(open: OpenFollower) -> Arc<FollowerReads> {
        Arc::new(FollowerReads {
            open,
            opened: tokio::sync::Mutex::new(None),
            closed: Default::default(),
            failed: Mutex::new(None),
        })
    }

    /// The routes a follower answers, its 503 for any other (`leader`), opening the follower's
    /// daemon first if no read has yet; the policy in force followed ([`crate::Daemon::follow_policy`]).
    async fn router(self: &Arc<Self>, leader: Leader) -> Result<axum::Router, String> {
        let mut opened = self.opened.lock().await;
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("it is taking over as the leader".into());
        }
        let daemon = match &*opened {
            Some((daemon, _)) => daemon.clone(),
            None => {
                let recent = self
                    .failed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if let Some((_, why)) = recent.filter(|(at, _)| at.elapsed() < REOPEN_AFTER) {
                    return Err(why);
                }
                let this = self.clone();
                let opening = tokio::task::spawn_blocking(move || (this.open)())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|opened| opened);
                let daemon = match opening {
                    Ok(daemon) => daemon,
                    Err(why) => {
                        tracing::warn!(error = %why, "a follower's read side does not open");
                        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some((std::time::Instant::now(), why.clone()));
                        return Err(why);
                    }
                };
                let daemon = Arc::new(daemon);
                let others = move || async move { leader_only(current(&leader), None) };
                let router = crate::api::follower_reads(daemon.clone())
                    .fallback(others.clone())
                    .method_not_allowed_fallback(others);
                *opened = Some((daemon.clone(), router));
                self.keep_audit();
                daemon
            }
        };
        let router = opened.as_ref().map(|(_, r)| r.clone());
        drop(opened);
        let followed = tokio::task::spawn_blocking(move || daemon.follow_policy()).await;
        if let Ok(Err(e)) = followed {
            tracing::warn!(error = %e, "following the leader's policy");
        }
        router.ok_or_else(|| "it is taking over as the leader".into())
    }

    /// Keeps the follower's audit log as the leader keeps its own: sealed at least every
    /// [`gantry::audit::SEAL_INTERVAL`], the refusals no policy decided recorded in aggregate,
    /// until the reads close (a close waits for the work under way).
    fn keep_audit(self: &Arc<Self>) {
        let this = self.clone();
        let every = gantry::audit::SEAL_INTERVAL.min(crate::rejections::FLUSH_EVERY);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let opened = this.opened.lock().await;
                let Some((daemon, _)) = opened.as_ref() else {
                    return;
                };
                let daemon = daemon.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    daemon.record_rejections();
                    daemon.seal_audit();
                })
                .await;
                drop(opened);
            }
        });
    }

    /// Closes the follower's daemon, if a read opened it, and waits up to `wait` for requests
    /// still holding it to let go of its data directory; whether they did.
    pub async fn close(&self, wait: Duration) -> bool {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let Some((daemon, router)) = self.opened.lock().await.take() else {
            return true;
        };
        drop(router);
        let _ = tokio::task::spawn_blocking({
            let daemon = daemon.clone();
            move || daemon.record_rejections()
        })
        .await;
        daemon.close();
        let held = Arc::downgrade(&daemon);
        drop(daemon);
        let deadline = tokio::time::Instant::now() + wait;
        while held.strong_count() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A read side that does not open (its data directory held, say) is not opened again by
    /// every read: reads are answered with why until [`REOPEN_AFTER`] has passed.
    #[tokio::test]
    async fn a_read_side_that_does_not_open_is_not_retried_by_every_read() {
        let tries = Arc::new(AtomicUsize::new(0));
        let counted = tries.clone();
        let reads = FollowerReads::new(Box::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Err("the data directory is held".into())
        }));
        for _ in 0..3 {
            let answer = reads.router(Leader::default()).await;
            assert_eq!(answer.err().as_deref(), Some("the data directory is held"));
        }
        assert_eq!(tries.load(Ordering::SeqCst), 1);
        assert!(
            reads.close(Duration::from_secs(1)).await,
            "nothing to close"
        );
    }
}
