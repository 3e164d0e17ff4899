//! Counters that make fail-open and the herd protections visible.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a [`Cache`](crate::Cache)'s counters, shared by all its clones: of all its
/// strategies ([`Cache::stats`](crate::Cache::stats)) or of one
/// ([`Cache::strategy_stats`](crate::Cache::strategy_stats)). Serializes as a map of its
/// fields, for a status page or a log line.
///
/// # Examples
///
/// ```
/// let stats = cacheobj::Cache::in_memory().stats();
/// assert_eq!(stats.hits, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Fetches answered from the cache.
    pub hits: u64,
    /// Fetches that did not find a usable value in the cache.
    pub misses: u64,
    /// Loader calls made by fetches.
    pub loads: u64,
    /// Time spent in those loader calls, summed, in microseconds.
    pub load_micros: u64,
    /// Cache operations that failed (Redis down, slow, refusing; a key that did not render; a
    /// value that did not encode). `fetch` ran the loader instead.
    pub errors: u64,
    /// Values read from the cache that could not be decoded (garbage, another type, an old
    /// version); each was treated as a miss and overwritten.
    pub undecodable: u64,
    /// Fetches that waited for another fetch of the same key in this process instead of loading.
    pub coalesced_waits: u64,
    /// Fetches that waited for a fill lease held by another process or `Cache`.
    pub lease_waits: u64,
    /// Lease waits that gave up after the lease time and loaded themselves.
    pub lease_timeouts: u64,
    /// Fills that did not land because the key was invalidated or changed during the load, or
    /// the lease expired: each would have cached a possibly stale value.
    pub stale_fills_rejected: u64,
    /// Early refreshes of hot keys (XFetch) that were started.
    pub early_refreshes: u64,
    /// Fetches that joined a load in this process which an invalidation then voided (its
    /// fill was rejected), and so started over rather than return a value that may predate
    /// the invalidation. Each costs at most one extra load per key, and only when an
    /// invalidation actually raced a load.
    pub voided_joins: u64,
    /// Invalidations that failed (Redis down or slow) and were queued for retry (process-wide:
    /// 0 in a [`Cache::strategy_stats`](crate::Cache::strategy_stats)): by
    /// [`Cache::invalidate_after`](crate::Cache::invalidate_after), and by `invalidate`,
    /// `invalidate_many` and `hash_del` when
    /// [`CacheConfig::queue_failed_invalidations`](crate::CacheConfig::queue_failed_invalidations)
    /// is set.
    pub invalidations_queued: u64,
    /// Queued invalidations that have since landed.
    pub invalidations_retried: u64,
    /// Failed invalidations that were not queued because the queue was full: their entries may
    /// be served until their TTL.
    pub invalidations_dropped: u64,
    /// Fetches answered from the local tier ([`Strategy::local`](crate::Strategy::local)),
    /// without a round trip; they count in `hits` too.
    pub local_hits: u64,
    /// Fetches of a strategy with a local tier that the tier did not answer (not held, or
    /// not live): they went to Redis.
    pub local_misses: u64,
    /// Invalidations Redis announced to the local tier: one per key, and one per flush of
    /// the whole database (process-wide, as the next two).
    pub local_invalidations: u64,
    /// Times the local tier dropped every copy: a tracking connection was lost or did not
    /// answer, a strategy's prefix was added, or Redis was flushed.
    pub local_flushes: u64,
    /// The local tier is off: the server cannot track keys for it (no RESP3, `CLIENT
    /// TRACKING` refused) or the cache was built on a connection. Reads go to Redis, as
    /// without `local`; a warning says why, once.
    pub local_fallback: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Hits answered by the backend. A local hit counts in `local_hits` only, and a snapshot's
    /// `hits` adds the two: a local hit, which costs no round trip, pays one shared counter
    /// here rather than two.
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) load_micros: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) undecodable: AtomicU64,
    pub(crate) coalesced_waits: AtomicU64,
    pub(crate) lease_waits: AtomicU64,
    pub(crate) lease_timeouts: AtomicU64,
    pub(crate) stale_fills_rejected: AtomicU64,
    pub(crate) early_refreshes: AtomicU64,
    pub(crate) voided_joins: AtomicU64,
    pub(crate) local_hits: AtomicU64,
    pub(crate) local_misses: AtomicU64,
}

/// What a fetch counts: one of [`Counters`]' fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    Hit,
    Miss,
    Load,
    Error,
    Undecodable,
    CoalescedWait,
    LeaseWait,
    LeaseTimeout,
    StaleFillRejected,
    EarlyRefresh,
    VoidedJoin,
    LocalHit,
    LocalMiss,
}

impl Counters {
    pub(crate) fn add(&self, event: Event, n: u64) {
        let counter = match event {
            Event::Hit => &self.hits,
            Event::Miss => &self.misses,
            Event::Load => &self.loads,
            Event::Error => &self.errors,
            Event::Undecodable => &self.undecodable,
            Event::CoalescedWait => &self.coalesced_waits,
            Event::LeaseWait => &self.lease_waits,
            Event::LeaseTimeout => &self.lease_timeouts,
            Event::StaleFillRejected => &self.stale_fills_rejected,
            Event::EarlyRefresh => &self.early_refreshes,
            Event::VoidedJoin => &self.voided_joins,
            Event::LocalHit => &self.local_hits,
            Event::LocalMiss => &self.local_misses,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_load_micros(&self, micros: u64) {
        self.load_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            hits: get(&self.hits).saturating_add(get(&self.local_hits)),
            misses: get(&self.misses),
            loads: get(&self.loads),
            load_micros: get(&self.load_micros),
            errors: get(&self.errors),
            undecodable: get(&self.undecodable),
            coalesced_waits: get(&self.coalesced_waits),
            lease_waits: get(&self.lease_waits),
            lease_timeouts: get(&self.lease_timeouts),
            stale_fills_rejected: get(&self.stale_fills_rejected),
            early_refreshes: get(&self.early_refreshes),
            voided_joins: get(&self.voided_joins),
            // Kept by the retry queue; `Cache::stats` fills them in.
            invalidations_queued: 0,
            invalidations_retried: 0,
            invalidations_dropped: 0,
            local_hits: get(&self.local_hits),
            local_misses: get(&self.local_misses),
            // Kept by the local tier; `Cache::stats` fills them in.
            local_invalidations: 0,
            local_flushes: 0,
            local_fallback: false,
        }
    }
}
