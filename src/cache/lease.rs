//! Fill leases this process may leave behind: the release armed before a lease request (for a
//! cancelled fetch), and the background releases that follow a request that failed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Cache;
use crate::backend::{Entry, Token};
use crate::budget::Budget;
use crate::error::Error;
use crate::flight::{FlightKey, LeaderGuard};
use crate::lock::lock;
use crate::observe::Op;

/// Marks an entry as having an orphaned lease while a background release runs.
struct Orphan {
    set: Arc<Mutex<HashMap<FlightKey, usize>>>,
    key: FlightKey,
}

impl Orphan {
    fn new(set: &Arc<Mutex<HashMap<FlightKey, usize>>>, key: &FlightKey) -> Orphan {
        *lock(set).entry(key.clone()).or_insert(0) += 1;
        Orphan {
            set: set.clone(),
            key: key.clone(),
        }
    }
}

impl Drop for Orphan {
    fn drop(&mut self) {
        let mut set = lock(&self.set);
        if let Some(n) = set.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                set.remove(&self.key);
            }
        }
    }
}

impl Cache {
    /// Tells the flight's guard which lease to hand to a waiter, or release (a compare-and-delete,
    /// harmless if the lease was never granted), should this fetch be dropped.
    pub(super) fn arm_release(&self, guard: &mut LeaderGuard, entry: &Entry, token: Token) {
        let backend = self.inner.backend.clone();
        let entry = entry.clone();
        guard.hold_lease(
            token,
            Box::new(move |token| {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        let _ = backend.release(entry.loc(), &token).await;
                    });
                }
            }),
        );
    }

    /// A lease or fill request failed: counts and logs the fault, and follows the request with
    /// releases of its lease (see [`release_in_background`](Self::release_in_background)).
    pub(super) fn fault_and_release(
        &self,
        op: &Op<'_>,
        error: &Error,
        entry: &Entry,
        token: Token,
        within: Duration,
    ) {
        op.fault(error);
        self.release_in_background(entry, token, within);
    }

    /// The lease request failed, but may still run on the server (a timeout, say): follow it
    /// with releases, so no orphaned lease makes others wait. A reconnect may carry the release
    /// on another connection and so overtake the request: repeat it, backing off, until the
    /// lease would have expired anyway. Each release is a compare-and-delete of our token.
    fn release_in_background(&self, entry: &Entry, token: Token, within: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let backend = self.inner.backend.clone();
        let orphan = Orphan::new(&self.inner.orphans, entry);
        let entry = entry.clone();
        runtime.spawn(async move {
            let _orphan = orphan;
            let loc = entry.loc();
            let deadline = Instant::now() + within;
            let mut pause = Duration::from_millis(25);
            while Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = backend.release_after_failure(loc, &token, left).await;
                tokio::time::sleep(pause.min(left)).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        });
    }

    /// Whether a background release of this entry's lease is under way in this process.
    pub(super) fn is_orphan(&self, entry: &Entry) -> bool {
        lock(&self.inner.orphans).contains_key(entry)
    }

    /// Releases a fetch's lease within what is left of its Redis budget; in the background
    /// when that runs out or the release fails.
    pub(super) async fn release_within(
        &self,
        op: &Op<'_>,
        entry: &Entry,
        lease: Option<Token>,
        budget: &mut Budget,
        within: Duration,
    ) {
        let Some(token) = lease else {
            return;
        };
        if let Err(e) = budget
            .spend(self.inner.backend.release(entry.loc(), &token))
            .await
        {
            self.fault_and_release(op, &e, entry, token, within);
        }
    }

    /// Releases a lease, counting a failure.
    pub(super) async fn release(&self, op: &Op<'_>, entry: &Entry, lease: Option<&Token>) {
        if let Some(token) = lease {
            if let Err(e) = self.inner.backend.release(entry.loc(), token).await {
                op.fault(&e);
            }
        }
    }
}
