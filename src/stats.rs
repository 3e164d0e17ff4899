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

/// One thread's share of a [`Counters`]: a cache line of its own (two, for the adjacent-line
/// prefetcher), so that threads counting at once do not pass one line back and forth.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    /// Hits answered by the backend. A local hit counts in `local_hits` only, and a snapshot's
    /// `hits` adds the two: a local hit, which costs no round trip, pays one counter here
    /// rather than two.
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    load_micros: AtomicU64,
    errors: AtomicU64,
    undecodable: AtomicU64,
    coalesced_waits: AtomicU64,
    lease_waits: AtomicU64,
    lease_timeouts: AtomicU64,
    stale_fills_rejected: AtomicU64,
    early_refreshes: AtomicU64,
    voided_joins: AtomicU64,
    local_hits: AtomicU64,
    local_misses: AtomicU64,
}

/// Shards per [`Counters`]: threads beyond this many share them.
const SHARDS: usize = 16;

/// The shard this thread counts in: threads take them in turn as they first count.
fn shard_index() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

/// A cache's or a strategy's event counts, summed over per-thread shards when read: with one
/// shared counter per event, every fetch on every thread wrote the same cache lines. Sharding
/// them (and finding a strategy's without a lock, `observe::ByStrategy`) took 64-task local
/// hits from 0.72-0.74x moka's throughput to 0.80x in `benches/local`.
#[derive(Debug)]
pub(crate) struct Counters {
    shards: Box<[Shard]>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
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
    fn shard(&self) -> &Shard {
        &self.shards[shard_index() % self.shards.len()]
    }

    pub(crate) fn add(&self, event: Event, n: u64) {
        let shard = self.shard();
        let counter = match event {
            Event::Hit => &shard.hits,
            Event::Miss => &shard.misses,
            Event::Load => &shard.loads,
            Event::Error => &shard.errors,
            Event::Undecodable => &shard.undecodable,
            Event::CoalescedWait => &shard.coalesced_waits,
            Event::LeaseWait => &shard.lease_waits,
            Event::LeaseTimeout => &shard.lease_timeouts,
            Event::StaleFillRejected => &shard.stale_fills_rejected,
            Event::EarlyRefresh => &shard.early_refreshes,
            Event::VoidedJoin => &shard.voided_joins,
            Event::LocalHit => &shard.local_hits,
            Event::LocalMiss => &shard.local_misses,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_load_micros(&self, micros: u64) {
        self.shard()
            .load_micros
            .fetch_add(micros, Ordering::Relaxed);
    }

    /// The sums over every shard. Each figure is read on its own, as before sharding: a
    /// snapshot taken while fetches count may see one event's counts and not another's.
    pub(crate) fn snapshot(&self) -> Stats {
        let sum = |field: fn(&Shard) -> &AtomicU64| -> u64 {
            self.shards
                .iter()
                .map(|s| field(s).load(Ordering::Relaxed))
                .fold(0, u64::wrapping_add)
        };
        let local_hits = sum(|s| &s.local_hits);
        Stats {
            hits: sum(|s| &s.hits).saturating_add(local_hits),
            misses: sum(|s| &s.misses),
            loads: sum(|s| &s.loads),
            load_micros: sum(|s| &s.load_micros),
            errors: sum(|s| &s.errors),
            undecodable: sum(|s| &s.undecodable),
            coalesced_waits: sum(|s| &s.coalesced_waits),
            lease_waits: sum(|s| &s.lease_waits),
            lease_timeouts: sum(|s| &s.lease_timeouts),
            stale_fills_rejected: sum(|s| &s.stale_fills_rejected),
            early_refreshes: sum(|s| &s.early_refreshes),
            voided_joins: sum(|s| &s.voided_joins),
            // Kept by the retry queue; `Cache::stats` fills them in.
            invalidations_queued: 0,
            invalidations_retried: 0,
            invalidations_dropped: 0,
            local_hits,
            local_misses: sum(|s| &s.local_misses),
            // Kept by the local tier; `Cache::stats` fills them in.
            local_invalidations: 0,
            local_flushes: 0,
            local_fallback: false,
        }
    }
}
