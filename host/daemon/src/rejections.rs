//! Refused requests that no policy decided (a missing or wrong token, a malformed body, an
//! unknown route, a body too large), recorded in the audit log in aggregate.
//!
//! Each such refusal is counted under its source address, method, route and status; the counts
//! go into the log as one `request.rejected` entry per interval, listing every key with its
//! count, first and last time and a sample error. Refusals stay accountable (who, how many,
//! when) without anyone being able to grow the log, or make it sync, once per junk request. The
//! set of keys is bounded: past it, refusals are counted under one overflow key.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// How often the counts are written to the audit log.
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// Keys counted between two flushes before further ones share the overflow key.
pub const MAX_KEYS: usize = 1024;

/// Longest sample error kept per key.
const SAMPLE: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
struct Key {
    source: Option<IpAddr>,
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Serialize)]
struct Tally {
    #[serde(flatten)]
    key: Key,
    count: u64,
    first_ms: u64,
    last_ms: u64,
    error: String,
}

/// The counts since the last flush.
#[derive(Debug, Default)]
pub struct Rejections {
    tallies: Mutex<HashMap<Key, Tally>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A standard method's name; anything else counts as `OTHER` (methods are client text).
fn method_name(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

impl Rejections {
    /// Counts one refusal. `route` is the matched route's pattern (a bounded set), not the path.
    pub fn note(
        &self,
        source: Option<IpAddr>,
        method: &str,
        route: &str,
        status: u16,
        error: &str,
    ) {
        let now = now_ms();
        let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = Key {
            source,
            method: method_name(method).to_string(),
            route: route.chars().take(64).collect(),
            status,
        };
        if !tallies.contains_key(&key) && tallies.len() >= MAX_KEYS {
            key = Key {
                source: None,
                method: "OTHER".into(),
                route: "(overflow: too many sources or routes in one interval)".into(),
                status: 0,
            };
        }
        let tally = tallies.entry(key.clone()).or_insert_with(|| Tally {
            key,
            count: 0,
            first_ms: now,
            last_ms: now,
            error: cap(error),
        });
        tally.count += 1;
        tally.last_ms = now;
    }

    /// Takes the counts so far: the record of one `request.rejected` audit entry, or `None`
    /// when nothing was refused.
    pub fn drain(&self) -> Option<serde_json::Value> {
        let tallies: Vec<Tally> = {
            let mut map = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
            map.drain().map(|(_, t)| t).collect()
        };
        if tallies.is_empty() {
            return None;
        }
        let mut tallies = tallies;
        tallies.sort_by_key(|t| std::cmp::Reverse(t.count));
        let total: u64 = tallies.iter().map(|t| t.count).sum();
        Some(serde_json::json!({"total": total, "tallies": tallies}))
    }
}

fn cap(error: &str) -> String {
    let mut end = error.len().min(SAMPLE);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    error[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_aggregate_per_source_route_and_status_with_a_bounded_key_set() {
        let r = Rejections::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..1000 {
            r.note(
                Some(a),
                "GET",
                "/v1/jobs",
                401,
                "a valid bearer token is required",
            );
        }
        r.note(Some(a), "BREW", "/v1/jobs", 401, "x");
        for i in 0..(2 * MAX_KEYS) {
            let ip = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
            r.note(Some(ip), "GET", "/v1/jobs", 401, &"e".repeat(10_000));
        }
        let record = r.drain().unwrap();
        let tallies = record["tallies"].as_array().unwrap();
        assert!(tallies.len() <= MAX_KEYS + 1, "{}", tallies.len());
        assert_eq!(record["total"], 1001 + 2 * MAX_KEYS as u64);
        let mine = tallies
            .iter()
            .find(|t| t["source"] == "10.0.0.1" && t["method"] == "GET")
            .unwrap();
        assert_eq!(mine["count"], 1000);
        assert!(
            tallies
                .iter()
                .any(|t| t["route"].as_str().unwrap().contains("overflow"))
        );
        assert!(
            tallies
                .iter()
                .all(|t| t["error"].as_str().unwrap().len() <= SAMPLE)
        );
        assert!(tallies.iter().any(|t| t["method"] == "OTHER"));
        assert!(r.drain().is_none(), "drained");
    }
}
