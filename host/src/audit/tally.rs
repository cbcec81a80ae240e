//! Allowed decisions of actions that only read what the control plane keeps about jobs, the
//! cluster, plugins and the policy, recorded in aggregate: each kept one synced line per
//! request, and a script polling a job wrote the log without end (a paced user alone, 45 KB a
//! second). They are counted under who asked, what and on what, and written as one
//! `decision.summary` entry per interval ([`Tallies::take`]) listing each with its count, first
//! and last time and its first decision's id. Refusals and every action that changes anything
//! or hands out data (a dataset's bytes) stay one entry each. The set of keys is bounded: past
//! it, a decision is an entry of its own.

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
    /// Counts one allowed decision; `false`, counting nothing, when it is of a key not counted
    /// yet and the set of keys is full: the caller records it as an entry of its own (merged
    /// into one anonymous key, who read what was lost past a thousand readers or nodes).
    pub fn note(&self, decision: &super::Decision<'_>) -> bool {
        let now = now_ms();
        let (subject_key, subject) = bounded(decision.subject);
        let (resource_key, resource) = bounded(decision.resource);
        let key = Key {
            subject: subject_key,
            action: decision.action.to_string(),
            resource: resource_key,
            revision: decision.revision.to_string(),
        };
        let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        if !tallies.contains_key(&key) && tallies.len() >= MAX_KEYS {
            return false;
        }
        let tally = tallies.entry(key).or_insert_with(|| Tally {
            subject,
            action: decision.action.clone(),
            resource,
            revision: decision.revision.to_string(),
            count: 0,
            first_ms: now,
            last_ms: now,
            first_decision_id: decision.decision_id.to_string(),
        });
        tally.count += 1;
        tally.last_ms = now;
        true
    }

    /// Takes the counts so far, to record as one `decision.summary` entry ([`Taken::record`]);
    /// `None` when nothing was counted.
    pub fn take(&self) -> Option<Taken> {
        let mut map = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        if map.is_empty() {
            return None;
        }
        Some(Taken(std::mem::take(&mut *map)))
    }

    /// Gives back counts taken whose entry could not be written, for the next one: merged with
    /// those counted since.
    pub fn put_back(&self, taken: Taken) {
        let mut map = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        for (key, was) in taken.0 {
            match map.get_mut(&key) {
                Some(now) => {
                    now.count += was.count;
                    now.first_ms = was.first_ms;
                    now.first_decision_id = was.first_decision_id;
                }
                None => {
                    map.insert(key, was);
                }
            }
        }
    }

    /// The counts so far as one `decision.summary` record, taken (tests).
    #[cfg(test)]
    fn drain(&self) -> Option<serde_json::Value> {
        self.take().map(|t| t.record())
    }
}

/// Counts taken from [`Tallies`], not yet written.
#[derive(Debug)]
pub struct Taken(HashMap<Key, Tally>);

impl Taken {
    /// The record of their `decision.summary` entry.
    pub fn record(&self) -> serde_json::Value {
        let mut tallies: Vec<&Tally> = self.0.values().collect();
        tallies.sort_by_key(|t| t.first_ms);
        let total: u64 = tallies.iter().map(|t| t.count).sum();
        serde_json::json!({"allow": true, "total": total, "tallies": tallies})
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
        let ada = serde_json::json!({"user": "ada"});
        let read = serde_json::json!("job.read");
        let job = serde_json::json!({"tenant": "vision", "job": "a"});
        for i in 0..1000 {
            assert!(t.note(&decision(&format!("d{i}"), &ada, &job, &read)));
        }
        let huge = serde_json::json!({"job": "x".repeat(10_000)});
        assert!(t.note(&decision("h", &huge, &huge, &read)));
        let mut counted = 0;
        for i in 0..(2 * MAX_KEYS) {
            let other = serde_json::json!({"job": format!("j{i}")});
            counted += usize::from(t.note(&decision("e", &ada, &other, &read)));
        }
        assert_eq!(
            counted,
            MAX_KEYS - 2,
            "a key past the set is the caller's to record"
        );
        assert!(
            t.note(&decision("d", &ada, &job, &read)),
            "a key counted already"
        );
        let taken = t.take().unwrap();
        // Not written: given back, and counted with what came since.
        assert!(t.note(&decision("d", &ada, &job, &read)));
        t.put_back(taken);
        let record = t.drain().unwrap();
        let tallies = record["tallies"].as_array().unwrap();
        assert_eq!(tallies.len(), MAX_KEYS);
        assert_eq!(record["total"], 1002 + 1 + counted as u64);
        let mine = tallies.iter().find(|t| t["resource"] == job).unwrap();
        assert_eq!(
            (&mine["count"], &mine["first_decision_id"], &mine["subject"]),
            (&serde_json::json!(1002), &serde_json::json!("d0"), &ada)
        );
        assert!(tallies.iter().all(|t| t.to_string().len() < 4 * MAX_TEXT));
        assert!(t.drain().is_none(), "drained");
    }
}
