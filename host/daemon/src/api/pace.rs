//! How fast one user's requests are served: a token bucket per user, checked once the caller
//! is known and before anything is decided, recorded or read for them. Every request costs the
//! daemon work for all (a policy decision, an audit entry synced to disk, a read of the store):
//! one user with any token, 48 threads asking to list jobs, wrote 0.75 MB a second of audit log
//! and filled the disk in 20 s, after which every tenant's request failed. Past their rate a
//! user is answered 429 (counted in the aggregate of refusals, not one audit entry each).
//! Admins and node identities are not paced: the operators and the machines the work runs on.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use super::ApiError;
use crate::db::User;

/// Users' buckets kept at most; past it, full ones (idle users') are forgotten.
const MAX_BUCKETS: usize = 4096;

/// Each user's requests: at most `rate` a second, `2 × rate` at once after a pause.
#[derive(Debug)]
pub(crate) struct Pace {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Paced users' tokens seen, by their SHA-256: whose they are, so that a user past their
    /// rate is answered before their token is looked up ([`Pace::before_lookup`]).
    tokens: Mutex<HashMap<[u8; 32], String>>,
}

/// A token's SHA-256: how tokens are told apart without being kept.
pub(super) fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Pace {
    /// `rate` requests a second per user; 0: not paced.
    pub(crate) fn new(rate: u32) -> Pace {
        Pace {
            rate: f64::from(rate),
            burst: 2.0 * f64::from(rate),
            buckets: Mutex::default(),
            tokens: Mutex::default(),
        }
    }

    /// Answers 429 for `token`, before it is looked up, when it is a paced user's token seen
    /// before and their bucket is empty: a user past their rate then costs no lookup in the
    /// store and no slot of the blocking pool that every request shares (the pacing itself, in
    /// [`Pace::take`], came after both). Refuses only: a token not seen, or a user with room,
    /// goes on to the lookup, and [`Pace::take`] decides.
    pub(crate) fn before_lookup(&self, token: &str) -> Result<(), ApiError> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let name = {
            let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            match tokens.get(&digest(token)) {
                Some(name) => name.clone(),
                None => return Ok(()),
            }
        };
        let now = Instant::now();
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        match buckets.get(&name) {
            Some(b) if refilled(b, now, self.rate, self.burst) < 1.0 => {
                let wait = Duration::from_secs_f64(
                    (1.0 - refilled(b, now, self.rate, self.burst)) / self.rate,
                );
                Err(self.refusal(&name, wait))
            }
            _ => Ok(()),
        }
    }

    /// [`Pace::take`] for `user`, whose token `token` is, remembered for
    /// [`Pace::before_lookup`].
    pub(crate) fn take_for(&self, token: &str, user: &User) -> Result<(), ApiError> {
        if self.paced(user) {
            let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            if tokens.len() >= MAX_BUCKETS {
                // Forgetting only costs a lookup before the next refusal.
                tokens.clear();
            }
            tokens.insert(digest(token), user.name.clone());
        }
        self.take(user)
    }

    fn paced(&self, user: &User) -> bool {
        self.rate != 0.0 && !user.is_admin() && !user.roles.iter().any(|r| r == "node")
    }

    fn refusal(&self, name: &str, wait: Duration) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "user {name} sends more than {} requests a second (--max-requests-per-user-per-s); \
                 try again in {} ms",
                self.rate,
                wait.as_millis().max(1)
            ),
        )
    }

    /// Takes a request of `user`'s, or says how long until they may send one.
    pub(crate) fn take(&self, user: &User) -> Result<(), ApiError> {
        if !self.paced(user) {
            return Ok(());
        }
        self.take_at(&user.name, Instant::now())
            .map_err(|wait| self.refusal(&user.name, wait))
    }

    fn take_at(&self, name: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(name) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| refilled(b, now, rate, burst) < burst);
        }
        let bucket = buckets.entry(name.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let tokens = refilled(bucket, now, self.rate, self.burst);
        *bucket = Bucket { tokens, at: now };
        if tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }
}

/// `bucket`'s tokens at `now`.
fn refilled(bucket: &Bucket, now: Instant, rate: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * rate).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, roles: &[&str]) -> User {
        User {
            name: name.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            tenants: vec!["vision".into()],
            clearance: "public".into(),
        }
    }

    /// Found by a review: one user's requests, as fast as they came, filled the disk with audit
    /// entries and every tenant's requests failed. A user gets a burst, then their rate; others
    /// are not held back by them; admins and nodes are not paced.
    #[test]
    fn one_users_requests_are_paced_without_holding_back_others() {
        let pace = Pace::new(10);
        let t0 = Instant::now();
        for _ in 0..20 {
            pace.take_at("eve", t0).unwrap();
        }
        let wait = pace.take_at("eve", t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        pace.take_at("ada", t0).expect("another user's own bucket");
        // A tenth of a second later: one more of eve's.
        let later = t0 + Duration::from_millis(100);
        pace.take_at("eve", later).unwrap();
        assert!(pace.take_at("eve", later).is_err());
        // Through the clock: one a second, two at once.
        let eve = user("eve", &["researcher"]);
        let slow = Pace::new(1);
        slow.take(&eve).unwrap();
        slow.take(&eve).unwrap();
        assert_eq!(
            slow.take(&eve).unwrap_err().status,
            StatusCode::TOO_MANY_REQUESTS
        );
        for exempt in [user("root", &["admin"]), user("node-a", &["node"])] {
            for _ in 0..100 {
                pace.take(&exempt).unwrap();
            }
        }
        for _ in 0..1000 {
            Pace::new(0).take(&eve).unwrap();
        }
    }

    /// Found by a review: the pacing came after the caller's token was looked up in the store,
    /// inside the blocking pool's slots that every request shares, so a user past their rate
    /// still cost a lookup and a slot per request. Their known token is refused before.
    #[test]
    fn a_paced_users_known_token_is_refused_before_its_lookup() {
        let pace = Pace::new(1);
        let eve = user("eve", &["researcher"]);
        pace.before_lookup("eve-token").expect("not seen yet");
        pace.take_for("eve-token", &eve).unwrap();
        pace.before_lookup("eve-token").expect("room for one more");
        pace.take_for("eve-token", &eve).unwrap();
        let early = pace.before_lookup("eve-token").unwrap_err();
        assert_eq!(early.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(pace.take_for("eve-token", &eve).is_err());
        pace.before_lookup("ada-token").expect("another token");
        let root = user("root", &["admin"]);
        for _ in 0..10 {
            pace.take_for("root-token", &root).unwrap();
            pace.before_lookup("root-token")
                .expect("admins are not paced");
        }
    }
}
