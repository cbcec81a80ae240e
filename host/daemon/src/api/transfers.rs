//! Slots for streamed transfers (dataset uploads and downloads, a node's dataset and checkpoint
//! streams): each holds a blocking thread and a store read or write for as long as its peer
//! takes, so they are bounded in number, and no one holder may take more than its share. Node
//! agents have a pool of their own: tenants' transfers never keep a placed run from its data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ApiError, ApiResult};

/// A pool of transfer slots, at most `per_holder` of them held by one holder at once.
pub(crate) struct Transfers {
    slots: Arc<Semaphore>,
    size: usize,
    per_holder: usize,
    /// How long a transfer waits for its turn.
    wait: Duration,
    /// Each holder's own slots, while it holds or waits for one.
    holders: Shares,
}

/// Each holder's own slots, by its kind and name.
type Shares = Arc<Mutex<HashMap<(&'static str, String), Arc<Semaphore>>>>;

/// Who a transfer is counted against: a kind ("tenant", "user", "node") and its name.
pub(crate) type By<'a> = (&'static str, &'a str);

/// A transfer's slot, given back when dropped.
pub(crate) struct Transfer {
    // Dropped in this order: the slots first, then the holders' entries if no one else uses them.
    _slot: OwnedSemaphorePermit,
    _own: Vec<OwnedSemaphorePermit>,
    _holders: Vec<Holder>,
}

/// A holder's use of its entry in [`Transfers::holders`], removed with the last use.
struct Holder {
    key: (&'static str, String),
    holders: Shares,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        // Every holder of a slot or waiter for one keeps a clone: the map's alone means none.
        if holders
            .get(&self.key)
            .is_some_and(|own| Arc::strong_count(own) == 1)
        {
            holders.remove(&self.key);
        }
    }
}

impl Transfers {
    /// `size` slots, at most `per_holder` of them one holder's at once; a transfer waits at
    /// most `wait` for its turn.
    pub(crate) fn new(size: usize, per_holder: usize, wait: Duration) -> Transfers {
        Transfers {
            slots: Arc::new(Semaphore::new(size)),
            size,
            per_holder,
            wait,
            holders: Arc::default(),
        }
    }

    /// A slot counted against each of `by` (a tenant and the user asking: a user of four
    /// tenants, or four users of one, still hold one share), once one of each one's own and
    /// one of the pool are free, waited for at most `wait` in all: then a 429 when a share was
    /// full, a 503 when the pool was. Shares are taken in the order given, the same kinds in
    /// the same order at every call, so two transfers never wait on each other's.
    /// Waiting (a task, no thread) rather than refusing at once matters because the refusal
    /// comes before the body is read: a client still sending a large body sees its connection
    /// closed under it, not the answer.
    pub(crate) async fn slot(&self, by: &[By<'_>]) -> ApiResult<Transfer> {
        let deadline = tokio::time::Instant::now() + self.wait;
        // Entries first: dropped after the permits, so the last use of an entry sees it unused.
        let mut entries = Vec::with_capacity(by.len());
        let mut own = Vec::with_capacity(by.len());
        for &(kind, name) in by {
            let share = {
                let key = (kind, name.to_string());
                let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
                let share = holders
                    .entry(key.clone())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.per_holder)))
                    .clone();
                // Holders and waiters each keep a clone, the map one more. Found by a review:
                // a user's 256 downloads all waited for their own tenant's share, each holding
                // a connection for the wait, and this machine's agent was kept out; past as
                // many waiting as the share holds, a transfer is refused at once.
                if Arc::strong_count(&share) - 2 >= 2 * self.per_holder {
                    return Err(ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "{kind} {name} has {} transfers under way and as many waiting, the \
                             most one {kind} may; try again shortly",
                            self.per_holder
                        ),
                    ));
                }
                entries.push(Holder {
                    key,
                    holders: self.holders.clone(),
                });
                share
            };
            let Ok(Ok(permit)) = tokio::time::timeout_at(deadline, share.acquire_owned()).await
            else {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "{kind} {name} has {} transfers under way, the most one {kind} may at \
                         once; try again shortly",
                        self.per_holder
                    ),
                ));
            };
            own.push(permit);
        }
        match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Ok(Transfer {
                _slot: slot,
                _own: own,
                _holders: entries,
            }),
            _ => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{} transfers are under way; try again shortly", self.size),
            )),
        }
    }

    /// How many holders have an entry (for tests: entries go with their last use).
    #[cfg(test)]
    fn holders(&self) -> usize {
        self.holders.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by a review: 8 transfer slots were shared by every tenant and node, first come
    /// first served, so one tenant's 8 slow downloads held them all, every other tenant's
    /// transfers and the node agents' dataset and checkpoint streams included. One holder gets
    /// its share and no more; another still gets a slot, and one given back is free again.
    #[test]
    fn one_holder_cannot_take_every_transfer_slot() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let pool = Transfers::new(4, 2, Duration::from_millis(100));
            let a1 = pool.slot(&[("tenant", "vision")]).await.unwrap();
            let a2 = pool.slot(&[("tenant", "vision")]).await.unwrap();
            let refused = pool
                .slot(&[("tenant", "vision")])
                .await
                .err()
                .expect("over its share");
            assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
            let error = refused.body["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("tenant vision has 2 transfers under way"),
                "{error}"
            );
            let b = pool
                .slot(&[("tenant", "language")])
                .await
                .expect("another tenant's turn");
            drop(a1);
            let a3 = pool
                .slot(&[("tenant", "vision")])
                .await
                .expect("a slot given back");
            // The pool's own bound: a fourth holder waits for the pool, then gets 503.
            let c = pool
                .slot(&[("tenant", "c")])
                .await
                .expect("the pool's last slot");
            let full = pool
                .slot(&[("tenant", "d")])
                .await
                .err()
                .expect("the pool is full");
            assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
            // A waiter gets the slot given back meanwhile.
            let (waiting, _) = tokio::join!(pool.slot(&[("tenant", "vision")]), async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(a2);
            });
            waiting.expect("a slot given back while it waited");
            drop((a3, b, c));
            assert_eq!(
                pool.holders(),
                0,
                "no entry outlives its holder's transfers"
            );
        });
    }

    /// Found by a review: a user's 256 downloads all waited their turn on the tenant's own
    /// share, each holding a connection meanwhile. As many may wait as the share holds; more
    /// are refused at once.
    #[test]
    fn no_more_transfers_wait_for_a_share_than_it_holds() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let pool = Transfers::new(8, 2, Duration::from_secs(5));
            let held = [
                pool.slot(&[("tenant", "vision")]).await.unwrap(),
                pool.slot(&[("tenant", "vision")]).await.unwrap(),
            ];
            let waiting = [
                pool.slot(&[("tenant", "vision")]),
                pool.slot(&[("tenant", "vision")]),
            ];
            let mut waiting = waiting.map(Box::pin);
            // Both wait (polled once: each takes its place in the queue).
            for w in waiting.iter_mut() {
                assert!(futures_pending(w.as_mut()).await);
            }
            let started = tokio::time::Instant::now();
            let refused = pool.slot(&[("tenant", "vision")]).await.err().unwrap();
            assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "refused at once"
            );
            drop(held);
            for w in waiting {
                w.await.expect("a waiter gets a slot given back");
            }
        });
    }

    /// Whether `f` is still pending after one poll.
    async fn futures_pending<F: std::future::Future + Unpin>(f: F) -> bool {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::pin::Pin::new(&mut f).poll(cx).is_pending())
        })
        .await
    }

    /// Found by a review: shares were a tenant's alone, so a user of four tenants held all 8
    /// slots. A transfer now counts against its tenant and its user: neither a user of many
    /// tenants nor many users of one tenant hold more than one share.
    #[test]
    fn a_user_of_many_tenants_holds_one_share_of_the_transfers() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let pool = Transfers::new(8, 2, Duration::from_millis(100));
            let a = pool.slot(&[("tenant", "vision"), ("user", "ana")]).await;
            let b = pool.slot(&[("tenant", "language"), ("user", "ana")]).await;
            let refused = pool
                .slot(&[("tenant", "speech"), ("user", "ana")])
                .await
                .err()
                .expect("over the user's share in a third tenant");
            assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
            let error = refused.body["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("user ana has 2 transfers under way"),
                "{error}"
            );
            let c = pool.slot(&[("tenant", "vision"), ("user", "bo")]).await;
            let refused = pool
                .slot(&[("tenant", "vision"), ("user", "cy")])
                .await
                .err()
                .expect("over the tenant's share with another user");
            let error = refused.body["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("tenant vision has 2 transfers under way"),
                "{error}"
            );
            drop((a.unwrap(), b.unwrap(), c.unwrap()));
            assert_eq!(
                pool.holders(),
                0,
                "no entry outlives its holder's transfers"
            );
        });
    }
}
