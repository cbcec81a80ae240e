//! Leader election among control-plane replicas: one etcd key, held on a lease.
//!
//! A replica leads while the key is its own, created in one transaction only if absent and
//! attached to a lease it keeps renewing. The key's create revision is the *term*: it only grows,
//! so a write that compares it ([`Candidate::fence`]) fails once another replica has led since,
//! and a deposed leader (paused past its lease, cut off) can change nothing. A leader also stops
//! acting on its own before etcd can expire its lease: it counts from when it *sent* its last
//! renewal, and gives itself [`LEAD_FRACTION`] of the TTL, so two replicas never both believe
//! they lead unless their clocks' rates differ by more than the margin.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Compare, Etcd, EtcdError, Op};

/// The part of the lease's TTL a leader acts for after it sent a renewal that succeeded.
pub const LEAD_FRACTION: f64 = 0.75;

/// What a replica is after a round of the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It leads, in term `term` (the leader key's create revision).
    Leader {
        /// The term.
        term: i64,
    },
    /// Another leads (the leader's address), or none right now.
    Follower {
        /// Who leads, as it advertised itself.
        leader: Option<String>,
    },
}

/// Leadership this replica holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    lease: i64,
    term: i64,
    /// When the last renewal that succeeded was sent.
    renewed: Instant,
}

/// A replica standing for leadership.
#[derive(Debug)]
pub struct Candidate {
    etcd: Arc<Etcd>,
    key: Vec<u8>,
    me: String,
    ttl: Duration,
    held: Option<Held>,
    view: Fencer,
}

/// A shared, cheap view of a candidate's leadership for the writers it fences: what
/// [`Candidate::fence`] says, without waiting for a round of the election in progress.
#[derive(Debug, Clone)]
pub struct Fencer {
    key: Vec<u8>,
    /// The term, and until when this replica may act in it.
    lead: Arc<Mutex<Option<(i64, Instant)>>>,
}

impl Fencer {
    /// The term this replica leads in now, if it does.
    pub fn term(&self) -> Option<i64> {
        let lead = *self.lead.lock().unwrap_or_else(|e| e.into_inner());
        lead.filter(|(_, until)| Instant::now() < *until)
            .map(|(term, _)| term)
    }

    /// Until when this replica may act in its term, if it leads now.
    pub fn until(&self) -> Option<Instant> {
        let lead = *self.lead.lock().unwrap_or_else(|e| e.into_inner());
        lead.map(|(_, until)| until)
            .filter(|until| Instant::now() < *until)
    }

    /// The compare that fences a write ([`Candidate::fence`]).
    pub fn fence(&self) -> Option<Compare> {
        self.term()
            .map(|term| Compare::Created(self.key.clone(), term))
    }

    fn set(&self, lead: Option<(i64, Instant)>) {
        *self.lead.lock().unwrap_or_else(|e| e.into_inner()) = lead;
    }
}

impl Candidate {
    /// A candidate for `key`, advertising itself as `me` (the address followers send writes
    /// to), on leases of `ttl` (whole seconds, at least 2: etcd raises shorter ones).
    pub fn new(etcd: Arc<Etcd>, key: &str, me: &str, ttl: Duration) -> Candidate {
        Candidate {
            etcd,
            key: key.as_bytes().to_vec(),
            me: me.to_string(),
            ttl: Duration::from_secs(ttl.as_secs().max(2)),
            held: None,
            view: Fencer {
                key: key.as_bytes().to_vec(),
                lead: Arc::default(),
            },
        }
    }

    /// The view of this candidate's leadership its writers share.
    pub fn fencer(&self) -> Fencer {
        self.view.clone()
    }

    /// One round: renews the leadership this replica holds, or takes it when nobody holds it;
    /// the shared view ([`Candidate::fencer`]) follows. An error (etcd unreachable) leaves held
    /// leadership to run out by [`Candidate::leads`].
    pub fn step(&mut self) -> Result<Role, EtcdError> {
        let role = self.round();
        let until = self.ttl.mul_f64(LEAD_FRACTION);
        self.view
            .set(self.held.map(|h| (h.term, h.renewed + until)));
        role
    }

    /// The lease's TTL; run [`Candidate::step`] several times within it (a third of it, say).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn round(&mut self) -> Result<Role, EtcdError> {
        if let Some(held) = self.held {
            let sent = Instant::now();
            if self.etcd.keep_alive(held.lease)?.is_some() {
                let key = self.etcd.get(&self.key)?;
                if key.is_some_and(|k| k.lease == held.lease && k.create_revision == held.term) {
                    self.held = Some(Held {
                        renewed: sent,
                        ..held
                    });
                    return Ok(Role::Leader { term: held.term });
                }
            }
            tracing::warn!(term = held.term, "lost the leadership");
            self.held = None;
            let _ = self.etcd.revoke(held.lease);
        }
        if let Some(kv) = self.etcd.get(&self.key)? {
            return Ok(Role::Follower {
                leader: Some(String::from_utf8_lossy(&kv.value).into_owned()),
            });
        }
        let sent = Instant::now();
        let lease = self.etcd.grant(self.ttl.as_secs() as i64)?;
        let outcome = self.etcd.txn(
            &[Compare::Created(self.key.clone(), 0)],
            &[Op::Put(
                self.key.clone(),
                self.me.as_bytes().to_vec(),
                lease,
            )],
            &[Op::Get(self.key.clone())],
        );
        match outcome {
            Ok(o) if o.succeeded => {
                self.held = Some(Held {
                    lease,
                    term: o.revision,
                    renewed: sent,
                });
                tracing::info!(term = o.revision, "leading");
                Ok(Role::Leader { term: o.revision })
            }
            Ok(o) => {
                let _ = self.etcd.revoke(lease);
                let leader = o.gets.into_iter().flatten().next();
                Ok(Role::Follower {
                    leader: leader.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                })
            }
            Err(e) => {
                let _ = self.etcd.revoke(lease);
                Err(e)
            }
        }
    }

    /// The term of the leadership this replica holds, however long ago it was renewed.
    pub fn term(&self) -> Option<i64> {
        self.held.map(|h| h.term)
    }

    /// The term this replica leads in now, if it does: it holds the key, and less than
    /// [`LEAD_FRACTION`] of the TTL has passed since it sent its last renewal that succeeded.
    pub fn leads(&self) -> Option<i64> {
        self.held
            .filter(|h| h.renewed.elapsed() < self.ttl.mul_f64(LEAD_FRACTION))
            .map(|h| h.term)
    }

    /// The compare that fences a leader's write: it holds only while the key is still the one
    /// created in this replica's term. `None` when it does not lead.
    pub fn fence(&self) -> Option<Compare> {
        self.leads()
            .map(|term| Compare::Created(self.key.clone(), term))
    }

    /// Steps down (on shutdown): the lease is revoked, so another replica takes over at its
    /// next round rather than after the TTL.
    pub fn resign(&mut self) {
        self.view.set(None);
        if let Some(held) = self.held.take() {
            let _ = self.etcd.revoke(held.lease);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::EtcdProcess;

    fn candidate(etcd: &EtcdProcess, me: &str) -> Candidate {
        Candidate::new(
            Arc::new(etcd.client()),
            "gantry/leader",
            me,
            Duration::from_secs(2),
        )
    }

    #[test]
    fn one_replica_leads_and_a_resignation_hands_over_in_a_later_term() {
        let Some(etcd) = EtcdProcess::start_or_skip("one_replica_leads") else {
            return;
        };
        let (mut a, mut b) = (
            candidate(&etcd, "http://a:1"),
            candidate(&etcd, "http://b:1"),
        );
        let Role::Leader { term } = a.step().unwrap() else {
            panic!("the first candidate leads")
        };
        let follower = Role::Follower {
            leader: Some("http://a:1".into()),
        };
        assert_eq!(b.step().unwrap(), follower);
        assert_eq!(a.step().unwrap(), Role::Leader { term });
        assert_eq!((a.leads(), b.leads()), (Some(term), None));
        let view = a.fencer();
        assert_eq!((view.term(), b.fencer().term()), (Some(term), None));
        a.resign();
        assert_eq!((a.leads(), view.term()), (None, None));
        let Role::Leader { term: next } = b.step().unwrap() else {
            panic!("b takes over at once")
        };
        assert!(next > term);
        assert_eq!(
            a.step().unwrap(),
            Role::Follower {
                leader: Some("http://b:1".into())
            }
        );
    }

    #[test]
    fn a_leader_that_stops_renewing_is_replaced_and_its_writes_are_fenced() {
        let Some(etcd) = EtcdProcess::start_or_skip("a_leader_that_stops_renewing") else {
            return;
        };
        let (mut a, mut b) = (
            candidate(&etcd, "http://a:1"),
            candidate(&etcd, "http://b:1"),
        );
        assert!(matches!(a.step().unwrap(), Role::Leader { .. }));
        let fence = a.fence().unwrap();
        // A pauses (a SIGSTOP, a partition): it stops renewing. It stops believing it leads
        // before etcd expires its lease, and B leads only after.
        let paused = Instant::now();
        let taken = loop {
            if let Role::Leader { .. } = b.step().unwrap() {
                break paused.elapsed();
            }
            assert!(a.leads().is_none() || paused.elapsed() < a.ttl().mul_f64(LEAD_FRACTION));
            assert!(
                paused.elapsed() < Duration::from_secs(10),
                "nobody took over"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            a.leads().is_none(),
            "A still believes it leads after {taken:?}"
        );
        assert!(taken >= a.ttl().mul_f64(LEAD_FRACTION), "{taken:?}");
        // What A writes with its old term's fence changes nothing.
        let write = [Op::Put(b"gantry/jobs/x".to_vec(), b"stale".to_vec(), 0)];
        let outcome = a.etcd.txn(&[fence], &write, &[]).unwrap();
        assert!(!outcome.succeeded);
        assert_eq!(a.etcd.get(b"gantry/jobs/x").unwrap(), None);
        // When A resumes, it finds it no longer leads.
        assert_eq!(
            a.step().unwrap(),
            Role::Follower {
                leader: Some("http://b:1".into())
            }
        );
        assert!(b.fence().is_some());
    }

    #[test]
    fn on_three_members_leadership_survives_one_member_and_ends_without_a_quorum() {
        use crate::testing::EtcdCluster;
        let Some(mut etcd) = EtcdCluster::start_or_skip("on_three_members", 3) else {
            return;
        };
        // Calls bounded well within the lease (a third of it), as `gantry up --etcd` bounds them.
        let urls: Vec<String> = etcd.members.iter().map(|m| m.url()).collect();
        let client = Etcd::new(&urls, Duration::from_secs(2)).unwrap();
        let mut a = Candidate::new(
            Arc::new(client),
            "gantry/leader",
            "http://a:1",
            Duration::from_secs(6),
        );
        let Role::Leader { term } = a.step().unwrap() else {
            panic!("a leads")
        };
        // One member down: the others hold a quorum, and the leader renews through them. (A
        // renewal may fail while etcd elects a new raft leader, when the member killed led it;
        // regression: the test once asked every renewal to succeed, and failed on CI.)
        etcd.members[0].kill();
        let (mut renewed, start) = (0, Instant::now());
        while start.elapsed() < Duration::from_secs(4) {
            std::thread::sleep(Duration::from_millis(500));
            if let Ok(role) = a.step() {
                assert_eq!(role, Role::Leader { term });
                renewed += 1;
            }
        }
        assert!(renewed >= 2, "renewed {renewed} times with one member down");
        assert_eq!(a.leads(), Some(term), "it kept leading, in its term");
        // Two down: no quorum, no renewal; the leader stops believing it leads, by its own
        // clock, within its lease of the last renewal (a round that waits on etcd included).
        etcd.members[1].kill();
        let lost = Instant::now();
        while a.leads().is_some() {
            assert!(a.step().is_err(), "a renewal without a quorum");
            assert!(
                lost.elapsed() < a.ttl() * 2,
                "still leading without a quorum"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
