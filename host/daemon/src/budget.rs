//! A fair ledger of MiB that runs reserve from before they start: the memory the daemon's own
//! training runs may take together, and the disk all command runs' scratch file systems may
//! (`--jobs-disk-mib`, [`crate::command::CommandLimits::scratch_budget`]). For training: each
//! run is held to the
//! training limits by itself (`max_memory_mib`), but runs are placed on GPUs of a cluster model
//! (the built-in one has 256), so without a bound of the whole a tenant's few large jobs, all
//! placed at once, took more memory than the machine has and the daemon down with them. A run
//! reserves what its configuration may need before it starts, and waits (still `scheduled`)
//! while the reservations of the runs going on leave no room for it. Waiters are served one at
//! a time, never passed by smaller ones that fit before them (a large run would wait for ever
//! behind a stream of them), and in turn by tenant: the next is the first waiter of the tenant
//! holding least now, and of those the one served least lately, so one tenant's queue of runs
//! does not keep another's behind all of it. And no tenant holds more than its share (half the
//! budget by default, at least one run's most): a tenant's two long runs, placed first, held
//! every MiB for days while every other tenant's training waited.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// What runs may take together, in MiB: in all, and reserved now.
#[derive(Debug)]
pub struct Budget {
    total_mib: u64,
    /// The most one tenant's runs may hold together.
    share_mib: u64,
    used_mib: Mutex<Ledger>,
    freed: Condvar,
}

/// What is reserved, by whom, and who waits, in the order they came.
#[derive(Debug, Default)]
struct Ledger {
    used: u64,
    /// Each tenant's reservations, MiB (tenants holding none have no entry).
    held: HashMap<String, u64>,
    /// When each tenant holding or waiting was last given room (a count of reservations);
    /// gone with its last reservation and waiter.
    served: HashMap<String, u64>,
    next: u64,
    /// Tickets, tenants and the MiB each asks for.
    waiting: VecDeque<(u64, String, u64)>,
    /// The waiter whose turn it is, kept until it is served or stops waiting: chosen again at
    /// every wake-up, a tenant's large run could be passed for ever by others' small ones, each
    /// ranking first when it came back.
    head: Option<u64>,
}

impl Ledger {
    /// Whose turn it is: the waiter chosen before, while it waits; else, of the tenants whose
    /// first waiter fits their `share` (when it is less than the whole: a tenant past it must
    /// not hold the line), the first waiter of the tenant holding least, of equals the one
    /// served least lately, then the earliest.
    fn turn(&mut self, share: Option<u64>) -> Option<u64> {
        if let Some(head) = self.head
            && self.waiting.iter().any(|(t, _, _)| *t == head)
        {
            return Some(head);
        }
        let mut seen = HashSet::new();
        let of = |map: &HashMap<String, u64>, tenant: &str| map.get(tenant).copied().unwrap_or(0);
        self.head = self
            .waiting
            .iter()
            .filter(|(_, tenant, _)| seen.insert(tenant.as_str()))
            .filter(|(_, tenant, mib)| share.is_none_or(|s| of(&self.held, tenant) + mib <= s))
            .min_by_key(|(ticket, t, _)| (of(&self.held, t), of(&self.served, t), *ticket))
            .map(|(ticket, _, _)| *ticket);
        self.head
    }

    fn take(&mut self, tenant: &str, mib: u64) {
        self.used += mib;
        self.next += 1;
        *self.held.entry(tenant.to_string()).or_default() += mib;
        self.served.insert(tenant.to_string(), self.next);
    }

    /// Forgets `tenant`'s turn once it neither holds nor waits.
    fn forget_idle(&mut self, tenant: &str) {
        if !self.held.contains_key(tenant) && !self.waiting.iter().any(|(_, t, _)| t == tenant) {
            self.served.remove(tenant);
        }
    }
}

/// A run's reservation, given back when dropped.
#[derive(Debug)]
pub struct Reserved<'a> {
    budget: &'a Budget,
    tenant: String,
    mib: u64,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        let mut ledger = self.budget.ledger();
        ledger.used = ledger.used.saturating_sub(self.mib);
        if let Some(held) = ledger.held.get_mut(&self.tenant) {
            *held = held.saturating_sub(self.mib);
            if *held == 0 {
                ledger.held.remove(&self.tenant);
            }
        }
        ledger.forget_idle(&self.tenant);
        drop(ledger);
        self.budget.freed.notify_all();
    }
}

/// How often a waiting run looks whether it was asked to stop.
const LOOK: Duration = Duration::from_millis(200);

impl Budget {
    /// A budget of `total_mib`, any of it one tenant's.
    pub fn new(total_mib: u64) -> Budget {
        Budget::with_share(total_mib, total_mib)
    }

    /// A budget of `total_mib`, of which one tenant's runs hold at most `share_mib` together.
    pub fn with_share(total_mib: u64, share_mib: u64) -> Budget {
        Budget {
            total_mib,
            share_mib: share_mib.min(total_mib),
            used_mib: Mutex::new(Ledger::default()),
            freed: Condvar::new(),
        }
    }

    /// The share an operator asked for (`None`: half of `total_mib`), at least `job_mib`, the
    /// most one run may need (a run within the limits must be able to start), at most all.
    pub fn share_for(asked: Option<u64>, total_mib: u64, job_mib: u64) -> Result<u64, String> {
        match asked {
            None => Ok((total_mib / 2).max(job_mib).min(total_mib)),
            Some(mib) if mib >= job_mib => Ok(mib.min(total_mib)),
            Some(mib) => Err(format!(
                "--train-memory-mib-per-tenant {mib} is below the {job_mib} MiB one training job \
                 may need (the training limits' max_memory_mib): such a job could never run"
            )),
        }
    }

    /// The budget an operator asked for (`None`: three quarters of this machine's memory, at
    /// least `job_mib`), refused when below `job_mib`, the most one job may need: a job within
    /// the limits could never run.
    pub fn total_for(asked: Option<u64>, job_mib: u64) -> Result<u64, String> {
        match asked {
            None => Ok(crate::command::machine_memory_mib()
                .map_or(job_mib, |m| m / 4 * 3)
                .max(job_mib)),
            Some(mib) if mib >= job_mib => Ok(mib),
            Some(mib) => Err(format!(
                "--train-memory-mib {mib} is below the {job_mib} MiB one training job may need \
                 (the training limits' max_memory_mib): such a job could never run"
            )),
        }
    }

    /// The budget in all, MiB.
    pub fn total_mib(&self) -> u64 {
        self.total_mib
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.used_mib.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `mib` for a run of `tenant`, waiting for its turn and for room (`waiting` is
    /// told once, with the MiB taken, when it must wait); `Ok(None)` when `stopping` says so
    /// first, an error when `mib` is more than the whole budget (it would never fit).
    pub fn reserve(
        &self,
        tenant: &str,
        mib: u64,
        stopping: impl Fn() -> bool,
        waiting: impl FnOnce(u64),
    ) -> Result<Option<Reserved<'_>>, String> {
        if mib > self.share_mib {
            return Err(format!(
                "this job may need {mib} MiB, more than the {} MiB one tenant's training runs \
                 may take together (--train-memory-mib-per-tenant, of the {} MiB of \
                 --train-memory-mib)",
                self.share_mib, self.total_mib
            ));
        }
        let mut waiting = Some(waiting);
        let mut ledger = self.ledger();
        let ticket = ledger.next;
        ledger.next += 1;
        ledger.waiting.push_back((ticket, tenant.to_string(), mib));
        // Its turn (within its tenant's share), and room for it.
        let share = (self.share_mib < self.total_mib).then_some(self.share_mib);
        while ledger.turn(share) != Some(ticket) || ledger.used + mib > self.total_mib {
            if stopping() {
                ledger.waiting.retain(|(t, _, _)| *t != ticket);
                ledger.forget_idle(tenant);
                drop(ledger);
                self.freed.notify_all();
                return Ok(None);
            }
            if let Some(tell) = waiting.take() {
                tell(ledger.used);
            }
            ledger = self
                .freed
                .wait_timeout(ledger, LOOK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        ledger.waiting.retain(|(t, _, _)| *t != ticket);
        ledger.take(tenant, mib);
        drop(ledger);
        // The next in line may fit too.
        self.freed.notify_all();
        Ok(Some(Reserved {
            budget: self,
            tenant: tenant.to_string(),
            mib,
        }))
    }
}

impl Budget {
    /// Reserves `mib` for `tenant` if there is room now; `None` if not.
    pub fn try_reserve(&self, tenant: &str, mib: u64) -> Option<Reserved<'_>> {
        let mut ledger = self.ledger();
        // Not ahead of those waiting in line.
        let held = ledger.held.get(tenant).copied().unwrap_or(0);
        if !ledger.waiting.is_empty()
            || ledger.used.saturating_add(mib) > self.total_mib
            || held.saturating_add(mib) > self.share_mib
        {
            return None;
        }
        ledger.take(tenant, mib);
        Some(Reserved {
            budget: self,
            tenant: tenant.to_string(),
            mib,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The budget is never overdrawn: a run waits for room, is told once that it waits, gets
    /// its turn when another gives room back, and stops waiting when asked to.
    #[test]
    fn runs_wait_for_room_in_the_training_budget() {
        let budget = Budget::new(10);
        let a = budget
            .reserve("t", 6, || false, |_| panic!("room"))
            .unwrap()
            .unwrap();
        assert!(
            budget.reserve("t", 11, || false, |_| {}).is_err(),
            "never fits"
        );
        let stop = AtomicBool::new(false);
        let told = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                budget
                    .reserve("t", 5, || false, |used| told.lock().unwrap().push(used))
                    .unwrap()
                    .map(|r| r.mib)
            });
            let stopped = s.spawn(|| {
                budget
                    .reserve("t", 9, || stop.load(Ordering::SeqCst), |_| {})
                    .unwrap()
                    .is_none()
            });
            std::thread::sleep(Duration::from_millis(300));
            assert!(!waiter.is_finished(), "6 + 5 > 10");
            stop.store(true, Ordering::SeqCst);
            assert!(stopped.join().unwrap(), "a stopped waiter gives up");
            drop(a);
            assert_eq!(waiter.join().unwrap(), Some(5));
        });
        assert_eq!(*told.lock().unwrap(), [6]);
        assert_eq!(budget.ledger().used, 0, "every reservation given back");
        assert!(budget.ledger().held.is_empty());
        assert!(budget.ledger().waiting.is_empty());
        let held = budget.try_reserve("t", 7).expect("room");
        assert!(budget.try_reserve("t", 4).is_none(), "no room now");
        drop(held);
        assert!(budget.try_reserve("t", 10).is_some());
        assert!(Budget::total_for(None, 8192).unwrap() >= 8192);
        assert_eq!(Budget::total_for(Some(9000), 8192), Ok(9000));
        let refused = Budget::total_for(Some(10), 8192).unwrap_err();
        assert!(
            refused.contains("--train-memory-mib 10 is below"),
            "{refused}"
        );
    }

    /// Waiters are served in the order they came: a large run first in line is not passed by
    /// small ones that would fit before it (it would wait for ever behind a stream of them).
    #[test]
    fn a_large_run_first_in_line_is_not_passed_by_small_ones() {
        let budget = Budget::new(10);
        let held = budget.reserve("t", 6, || false, |_| {}).unwrap().unwrap();
        let order = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            let large = s.spawn(|| {
                let r = budget.reserve("t", 8, || false, |_| {}).unwrap().unwrap();
                order.lock().unwrap().push("large");
                std::thread::sleep(Duration::from_millis(100));
                drop(r);
            });
            // In line first (a fixed sleep let a loaded machine start the small one first).
            until_waiting(&budget, 1);
            let small = s.spawn(|| {
                // 6 + 3 fit now, but not beside the large one's 8 once it is in.
                let r = budget.reserve("t", 3, || false, |_| {}).unwrap().unwrap();
                order.lock().unwrap().push("small");
                drop(r);
            });
            until_waiting(&budget, 2);
            assert!(
                order.lock().unwrap().is_empty(),
                "the small one fits, but waits its turn"
            );
            assert!(
                budget.try_reserve("t", 1).is_none(),
                "nor does anyone jump the line"
            );
            drop(held);
            large.join().unwrap();
            small.join().unwrap();
        });
        assert_eq!(*order.lock().unwrap(), ["large", "small"]);
    }

    /// Waits until `n` runs wait in line.
    fn until_waiting(budget: &Budget, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while budget.ledger().waiting.len() < n {
            assert!(std::time::Instant::now() < deadline, "never {n} waiting");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Found by a review: waiters were served in the order they came, whoever they were, so
    /// a tenant's queue of runs, each taking most of the budget, kept every other tenant's
    /// run behind all of it. The next waiter is now the first of the tenant holding least.
    #[test]
    fn a_tenants_queue_of_runs_does_not_keep_another_tenants_run_behind_all_of_it() {
        let budget = Budget::new(10);
        let held = budget.reserve("a", 6, || false, |_| {}).unwrap().unwrap();
        let order = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            let run = |tenant: &'static str, name: &'static str| {
                let (budget, order) = (&budget, &order);
                move || {
                    let r = budget
                        .reserve(tenant, 6, || false, |_| {})
                        .unwrap()
                        .unwrap();
                    order.lock().unwrap().push(name);
                    std::thread::sleep(Duration::from_millis(20));
                    drop(r);
                }
            };
            let mut runs = Vec::new();
            for (n, (tenant, name)) in [("a", "a2"), ("a", "a3"), ("a", "a4"), ("b", "b1")]
                .into_iter()
                .enumerate()
            {
                runs.push(s.spawn(run(tenant, name)));
                // Each in line before the next.
                until_waiting(&budget, n + 1);
            }
            drop(held);
            for r in runs {
                r.join().unwrap();
            }
        });
        // The first in line keeps its turn; then b, served least lately, before a's next.
        assert_eq!(*order.lock().unwrap(), ["a2", "b1", "a3", "a4"]);
        assert!(budget.ledger().held.is_empty() && budget.ledger().served.is_empty());
    }

    /// Found by a review of the turns by tenant: chosen again at every wake-up, a tenant's large
    /// run waiting for room was passed by other tenants' small ones, each ranking first (holding
    /// nothing) when it came: the large one waited for ever. A waiter keeps its turn.
    #[test]
    fn a_waiter_keeps_its_turn_whoever_comes_after_it() {
        let budget = Budget::new(10);
        let held = budget.reserve("a", 2, || false, |_| {}).unwrap().unwrap();
        let order = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            let large = s.spawn(|| {
                let r = budget.reserve("a", 9, || false, |_| {}).unwrap().unwrap();
                order.lock().unwrap().push("large");
                drop(r);
            });
            until_waiting(&budget, 1);
            let small = s.spawn(|| {
                // 2 + 2 fit now, and b holds less than a: still after a's waiting run. (It
                // cannot fit beside the large one, 9 + 2 > 10, so the order recorded is the
                // order served: with 1 it started beside the large one and raced its push.)
                let r = budget.reserve("b", 2, || false, |_| {}).unwrap().unwrap();
                order.lock().unwrap().push("small");
                drop(r);
            });
            until_waiting(&budget, 2);
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                order.lock().unwrap().is_empty(),
                "the small one waits its turn"
            );
            drop(held);
            large.join().unwrap();
            small.join().unwrap();
        });
        assert_eq!(*order.lock().unwrap(), ["large", "small"]);
    }

    /// Found by a review: one tenant's two long runs, placed first, reserved the whole budget
    /// and every other tenant's training waited for days. A tenant holds at most its share:
    /// its next run waits while another tenant's starts at once in the room left, and it is
    /// served once its own runs give room back.
    #[test]
    fn a_tenant_holds_at_most_its_share_and_another_tenants_run_starts_meanwhile() {
        assert_eq!(Budget::share_for(None, 10, 3), Ok(5));
        assert_eq!(Budget::share_for(None, 10, 8), Ok(8), "one run's most fits");
        assert!(Budget::share_for(Some(2), 10, 3).is_err());
        let budget = Budget::with_share(10, 5);
        let first = budget
            .reserve("mal", 5, || false, |_| panic!("room"))
            .unwrap()
            .unwrap();
        assert!(budget.try_reserve("mal", 1).is_none(), "past its share");
        assert!(
            budget.reserve("mal", 6, || false, |_| {}).is_err(),
            "more than a share never fits"
        );
        std::thread::scope(|s| {
            let second = s.spawn(|| {
                budget
                    .reserve("mal", 4, || false, |_| {})
                    .unwrap()
                    .map(|r| r.mib)
            });
            std::thread::sleep(Duration::from_millis(300));
            assert!(!second.is_finished(), "5 + 4 is past mal's share of 5");
            let good = budget
                .reserve("good", 4, || false, |_| panic!("good's run starts at once"))
                .unwrap()
                .unwrap();
            assert_eq!(budget.ledger().used, 9);
            drop(good);
            drop(first);
            assert_eq!(second.join().unwrap(), Some(4));
        });
    }
}
