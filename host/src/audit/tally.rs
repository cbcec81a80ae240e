//! Allowed decisions of actions that only read what the control plane keeps about jobs, the
//! cluster, plugins and the policy (and nodes' heartbeats), recorded in aggregate: each kept
//! one synced line per request, and a script polling a job, or an agent heartbeating, wrote
//! the log without end (a paced user alone, 45 KB a second). They are counted under who
//! asked, what and on what, and written as one `decision.summary` entry per interval ([`Tallies::drain`])
//! listing each with its count, first and last time and its first decision's id. Refusals and
//! every action that changes anything or hands out data (a dataset's bytes) stay one entry
//! each. The set of keys is bounded: past it, decisions are counted under one overflow key.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

/// Keys counted between two drains before further ones share the overflow key.
pub const MAX_KEYS: usize = 1024;

/// The longest subject or resource kept per key (their JSON text; longer is cut).
const MAX_TEXT: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    subject: String,
    action: String,
    resource: String,
    revision: String,
}

#[derive(Debug, Serialize)]
struct Tally {
    subject: serde_json::Value,
    action: serde_json::Value,
    resource: serde_json::Value,
    revision: String,
    count: u64,
    first_ms: u64,
    last_ms: u64,
    first_decision_id: String,
}

/// Allowed decisions counted since the last drain.
#[derive(Debug, Default)]
pub struct Tallies {
    tallies: Mutex<HashMap<Key, Tally>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `value`'s JSON text, and the value to show: itself, or its text cut to [`MAX_TEXT`].
fn bounded(value: &serde_json::Value) -> (String, serde_json::Value) {
    let text = value.to_string();
    if text.len() <= MAX_TEXT {
        return (text, value.clone());
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = format!("{}…", &text[..end]);
    (cut.clone(), serde_json::Value::String(cut))
}

impl Tallies {
    /// Counts one allowed decision.
    pub fn note(&self, decision: &super::Decision<'_>) {
        let now = now_ms();
        let (subject_key, subject) = bounded(decision.subject);
        let (resource_key, resource) = bounded(decision.resource);
        let mut key = Key {
            subject: subject_key,
            action: decision.action.to_string(),
            resource: resource_key,
            revision: decision.revision.to_string(),
        };
        let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        let overflow = !tallies.contains_key(&key) && tallies.len() >= MAX_KEYS;
        if overflow {
            key = Key {
                subject: String::new(),
                action: String::new(),
                resource: String::new(),
                revision: String::new(),
            };
        }
        let tally = tallies.entry(key).or_insert_with(|| match overflow {
            false => Tally {
                subject,
                action: decision.action.clone(),
                resource,
                revision: decision.revision.to_string(),
                count: 0,
                first_ms: now,
                last_ms: now,
                first_decision_id: decision.decision_id.to_string(),
            },
            true => Tally {
                subject: serde_json::Value::Null,
                action: "(overflow: too many subjects or resources in one interval)".into(),
                resource: serde_json::Value::Null,
                revision: String::new(),
                count: 0,
                first_ms: now,
                last_ms: now,
                first_decision_id: decision.decision_id.to_string(),
            },
        });
        tally.count += 1;
        tally.last_ms = now;
    }

    /// Takes the counts so far: the record of one `decision.summary` entry, or `None` when
    /// nothing was counted.
    pub fn drain(&self) -> Option<serde_json::Value> {
        let mut tallies: Vec<Tally> = {
            let mut map = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
            map.drain().map(|(_, t)| t).collect()
        };
        if tallies.is_empty() {
            return None;
        }
        tallies.sort_by_key(|t| t.first_ms);
        let total: u64 = tallies.iter().map(|t| t.count).sum();
        Some(serde_json::json!({"allow": true, "total": total, "tallies": tallies}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision<'a>(
        id: &'a str,
        subject: &'a serde_json::Value,
        resource: &'a serde_json::Value,
        action: &'a serde_json::Value,
    ) -> super::super::Decision<'a> {
        super::super::Decision {
            decision_id: id,
            subject,
            action,
            resource,
            entrypoint: "gantry/authz/decision",
            allow: true,
            reasons: Vec::new(),
            revision: "r1",
            latency_us: 1.0,
            given: &[],
        }
    }

    #[test]
    fn allowed_reads_are_counted_per_subject_action_and_resource_with_a_bounded_key_set() {
        let t = Tallies::default();
        let ada = serde_json::json!({"name": "ada"});
        let read = serde_json::json!("job.read");
        let job = serde_json::json!({"tenant": "vision", "job": "a"});
        for i in 0..1000 {
            t.note(&decision(&format!("d{i}"), &ada, &job, &read));
        }
        let huge = serde_json::json!({"job": "x".repeat(10_000)});
        t.note(&decision("h", &huge, &huge, &read));
        for i in 0..(2 * MAX_KEYS) {
            let other = serde_json::json!({"job": format!("j{i}")});
            t.note(&decision("e", &ada, &other, &read));
        }
        let record = t.drain().unwrap();
        assert_eq!(record["total"], 1001 + 2 * MAX_KEYS as u64);
        let tallies = record["tallies"].as_array().unwrap();
        assert!(tallies.len() <= MAX_KEYS + 1, "{}", tallies.len());
        let mine = tallies.iter().find(|t| t["resource"] == job).unwrap();
        assert_eq!(
            (&mine["count"], &mine["first_decision_id"], &mine["subject"]),
            (&serde_json::json!(1000), &serde_json::json!("d0"), &ada)
        );
        let overflow = tallies
            .iter()
            .find(|t| t["action"].as_str().unwrap().contains("overflow"))
            .unwrap();
        assert!(overflow["count"].as_u64().unwrap() > MAX_KEYS as u64);
        assert!(tallies.iter().all(|t| t.to_string().len() < 4 * MAX_TEXT));
        assert!(t.drain().is_none(), "drained");
    }
}
