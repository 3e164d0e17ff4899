//! Invalidations that failed after their write committed, retried until they land (#10): a
//! committed write's invalidation is not forgotten because Redis was away. Until one lands,
//! this process does not read that entry from Redis: a fetch first tries the invalidation
//! itself, and loads without the cache if it still fails.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::backend::{Backend, Entry};
use crate::error::Error;

/// The queue's first pause between retries; it doubles up to [`MAX_PAUSE`] while Redis fails.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// Entries retried in one pipelined round trip.
const BATCH: usize = 256;

#[derive(Debug, Default)]
struct State {
    /// Each queued entry, with the sequence number of its latest queueing: a retry that began
    /// before a later failure of the same entry does not settle it.
    entries: HashMap<Entry, u64>,
    next_seq: u64,
    worker: bool,
}

/// The retry queue; shared by a `Cache`'s clones and its background worker.
#[derive(Debug)]
pub(crate) struct Pending {
    state: Mutex<State>,
    /// Entries queued: the fast path of every read is one load of this.
    len: AtomicUsize,
    capacity: usize,
    pub(crate) queued: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// Whether an invalidation that failed was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queued {
    Yes,
    /// The queue is full (or has no room at all).
    Full,
}

impl Pending {
    pub(crate) fn new(capacity: usize) -> Arc<Pending> {
        Arc::new(Pending {
            state: Mutex::new(State::default()),
            len: AtomicUsize::new(0),
            capacity,
            queued: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change to the state is a single insert or remove: a panic cannot leave it torn.
        crate::lock::lock(&self.state)
    }

    /// Whether no invalidation is waiting to be retried.
    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// Queues the invalidation of `entry` and makes sure a worker retries it.
    pub(crate) fn push(self: &Arc<Self>, entry: &Entry, backend: &Backend) -> Queued {
        let mut state = self.lock();
        state.next_seq += 1;
        let seq = state.next_seq;
        if let Some(queued) = state.entries.get_mut(entry) {
            *queued = seq;
        } else {
            if state.entries.len() >= self.capacity {
                drop(state);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "metrics")]
                crate::observe::invalidation_metric("cacheobj_invalidations_dropped_total");
                return Queued::Full;
            }
            state.entries.insert(entry.clone(), seq);
            self.len.store(state.entries.len(), Ordering::Release);
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        crate::observe::invalidation_metric("cacheobj_invalidations_queued_total");
        if !state.worker {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                state.worker = true;
                runtime.spawn(retry(Arc::downgrade(self), backend.clone()));
            }
        }
        Queued::Yes
    }

    fn snapshot(&self) -> Vec<(Entry, u64)> {
        self.lock()
            .entries
            .iter()
            .take(BATCH)
            .map(|(entry, seq)| (entry.clone(), *seq))
            .collect()
    }

    /// Removes the entries whose retry landed, unless they were queued again since.
    fn settled(&self, done: &[(Entry, u64)]) {
        let mut state = self.lock();
        for (entry, seq) in done {
            if state.entries.get(entry) == Some(seq) {
                state.entries.remove(entry);
                self.retried.fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "metrics")]
                crate::observe::invalidation_metric("cacheobj_invalidations_retried_total");
            }
        }
        self.len.store(state.entries.len(), Ordering::Release);
    }

    /// Tries `entry`'s queued invalidation now, if it has one: `Ok` when none is queued or it
    /// landed, so the entry may be read from Redis again.
    ///
    /// # Errors
    ///
    /// The retry failed: the entry must not be read from Redis.
    pub(crate) async fn settle(&self, backend: &Backend, entry: &Entry) -> Result<(), Error> {
        if self.is_empty() {
            return Ok(());
        }
        let Some(seq) = self.lock().entries.get(entry).copied() else {
            return Ok(());
        };
        backend.invalidate(entry.loc()).await?;
        self.settled(&[(entry.clone(), seq)]);
        Ok(())
    }

    /// Whether `entry` has a queued invalidation.
    #[cfg(test)]
    pub(crate) fn contains(&self, entry: &Entry) -> bool {
        !self.is_empty() && self.lock().entries.contains_key(entry)
    }
}

/// The background worker: retries the queue, backing off while Redis fails, until it is empty
/// or every handle of the cache is gone.
async fn retry(pending: Weak<Pending>, backend: Backend) {
    let mut pause = FIRST_PAUSE;
    loop {
        let Some(queue) = pending.upgrade() else {
            return;
        };
        let batch = queue.snapshot();
        if batch.is_empty() {
            let mut state = queue.lock();
            if state.entries.is_empty() {
                state.worker = false;
                return;
            }
            continue;
        }
        let locs: Vec<_> = batch.iter().map(|(entry, _)| entry.loc()).collect();
        match backend.invalidate_many(&locs).await {
            Ok(()) => {
                queue.settled(&batch);
                pause = FIRST_PAUSE;
            }
            Err(error) => {
                tracing::debug!(%error, queued = batch.len(), "cacheobj: queued invalidations still fail; retrying");
                drop(queue);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;

    fn key(k: &[u8]) -> Entry {
        Entry {
            key: k.to_vec(),
            field: Vec::new(),
            shape: crate::kind::Shape::Str,
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_counts() {
        let backend = Backend::Memory(MemoryBackend::new());
        let pending = Pending::new(1);
        assert_eq!(pending.push(&key(b"a"), &backend), Queued::Yes);
        // The same entry again takes no room.
        assert_eq!(pending.push(&key(b"a"), &backend), Queued::Yes);
        assert_eq!(pending.push(&key(b"b"), &backend), Queued::Full);
        assert_eq!(pending.dropped.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn settle_retries_and_clears() {
        let backend = Backend::Memory(MemoryBackend::new());
        let pending = Pending::new(8);
        let _ = pending.push(&key(b"a"), &backend);
        assert!(pending.contains(&key(b"a")));
        pending.settle(&backend, &key(b"a")).await.expect("memory");
        assert!(!pending.contains(&key(b"a")));
        assert!(pending.is_empty());
    }

    #[test]
    fn a_retry_that_began_before_a_requeue_does_not_settle_it() {
        let backend = Backend::Memory(MemoryBackend::new());
        let pending = Pending::new(8);
        let _ = pending.push(&key(b"a"), &backend);
        let before = pending.snapshot();
        let _ = pending.push(&key(b"a"), &backend);
        pending.settled(&before);
        assert!(pending.contains(&key(b"a")));
    }
}
