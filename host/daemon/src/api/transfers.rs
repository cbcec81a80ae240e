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
    /// Who holds these slots, for messages: "tenant", "node".
    kind: &'static str,
    slots: Arc<Semaphore>,
    size: usize,
    per_holder: usize,
    /// How long a transfer waits for its turn.
    wait: Duration,
    /// Each holder's own slots, while it holds or waits for one.
    holders: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

/// A transfer's slot, given back when dropped.
pub(crate) struct Transfer {
    // Dropped in this order: the slots first, then the holder's entry if no one else uses it.
    _slot: OwnedSemaphorePermit,
    _own: OwnedSemaphorePermit,
    _holder: Holder,
}

/// A holder's use of its entry in [`Transfers::holders`], removed with the last use.
struct Holder {
    name: String,
    holders: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        // Every holder of a slot or waiter for one keeps a clone: the map's alone means none.
        if holders
            .get(&self.name)
            .is_some_and(|own| Arc::strong_count(own) == 1)
        {
            holders.remove(&self.name);
        }
    }
}

impl Transfers {
    /// `size` slots, at most `per_holder` of them one `kind`'s (a tenant, a node) at once; a
    /// transfer waits at most `wait` for its turn.
    pub(crate) fn new(
        kind: &'static str,
        size: usize,
        per_holder: usize,
        wait: Duration,
    ) -> Transfers {
        Transfers {
            kind,
            slots: Arc::new(Semaphore::new(size)),
            size,
            per_holder,
            wait,
            holders: Arc::default(),
        }
    }

    /// A slot for `holder`, once one of its own and one of the pool are free, waited for at
    /// most `wait` in all: then a 429 when its own share was full, a 503 when the pool was.
    /// Waiting (a task, no thread) rather than refusing at once matters because the refusal
    /// comes before the body is read: a client still sending a large body sees its connection
    /// closed under it, not the answer.
    pub(crate) async fn slot(&self, holder: &str) -> ApiResult<Transfer> {
        let (own, entry) = {
            let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
            let own = holders
                .entry(holder.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_holder)))
                .clone();
            let entry = Holder {
                name: holder.to_string(),
                holders: self.holders.clone(),
            };
            (own, entry)
        };
        let deadline = tokio::time::Instant::now() + self.wait;
        let Ok(Ok(own)) = tokio::time::timeout_at(deadline, own.acquire_owned()).await else {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{} {holder} has {} transfers under way, the most one {} may at once; \
                     try again shortly",
                    self.kind, self.per_holder, self.kind
                ),
            ));
        };
        match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Ok(Transfer {
                _slot: slot,
                _own: own,
                _holder: entry,
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
            let pool = Transfers::new("tenant", 4, 2, Duration::from_millis(100));
            let a1 = pool.slot("vision").await.unwrap();
            let a2 = pool.slot("vision").await.unwrap();
            let refused = pool.slot("vision").await.err().expect("over its share");
            assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
            let error = refused.body["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("tenant vision has 2 transfers under way"),
                "{error}"
            );
            let b = pool.slot("language").await.expect("another tenant's turn");
            drop(a1);
            let a3 = pool.slot("vision").await.expect("a slot given back");
            // The pool's own bound: a fourth holder waits for the pool, then gets 503.
            let c = pool.slot("c").await.expect("the pool's last slot");
            let full = pool.slot("d").await.err().expect("the pool is full");
            assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
            // A waiter gets the slot given back meanwhile.
            let (waiting, _) = tokio::join!(pool.slot("vision"), async move {
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
}
