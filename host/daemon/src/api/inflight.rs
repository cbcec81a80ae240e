//! How many requests one credential may have in progress at once, from its headers until its
//! response is written. Found by a review: a tenant user with read access to one dataset held
//! every connection of its source (270 downloads it never read, each waiting a turn or
//! stalled), and this machine's agent, from the same loopback source, lost its lease. A
//! connection in a request keeps its place ([`super::super::serve`]); this bounds how many
//! places one token can keep that way. Counted by the token's SHA-256, before it is looked up:
//! a token that is no one's is answered 401 at once and holds nothing for long.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;

use super::ApiError;

/// Requests in progress per token.
pub(crate) const MAX_IN_FLIGHT: usize = 32;

/// Requests in progress, by token digest.
#[derive(Default)]
pub(crate) struct InFlight(Mutex<HashMap<[u8; 32], usize>>);

/// One request counted against its token until dropped (it travels with the response body).
pub(crate) struct Counted {
    table: Arc<InFlight>,
    key: [u8; 32],
}

impl InFlight {
    /// Counts a request bearing `token`, or refuses it (429) when the token has
    /// [`MAX_IN_FLIGHT`] in progress.
    pub(crate) fn take(table: &Arc<InFlight>, token: &str) -> Result<Counted, ApiError> {
        let key = super::pace::digest(token);
        let mut map = table.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key).or_insert(0);
        if *n >= MAX_IN_FLIGHT {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this token has {MAX_IN_FLIGHT} requests in progress, the most one may have; \
                     try again once one is answered"
                ),
            ));
        }
        *n += 1;
        Ok(Counted {
            table: table.clone(),
            key,
        })
    }

    #[cfg(test)]
    fn tokens(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut map = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_holds_at_most_its_bound_of_requests_and_gets_them_back() {
        let table = Arc::new(InFlight::default());
        let held: Vec<Counted> = (0..MAX_IN_FLIGHT)
            .map(|_| InFlight::take(&table, "gantry_a").unwrap())
            .collect();
        let refused = InFlight::take(&table, "gantry_a").err().unwrap();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        let other = InFlight::take(&table, "gantry_b").expect("another token is not held back");
        drop(held);
        let again = InFlight::take(&table, "gantry_a").expect("given back");
        drop((other, again));
        assert_eq!(table.tokens(), 0);
    }
}
