//! The [`Cache`] handle: runs strategies against a backend. Its public methods live with
//! their mechanism:
//!
//! - `connect`: the constructors (standalone, cluster, TLS, in-memory);
//! - `fetch`: reading a value, and XFetch's decision to refresh it early;
//! - `load`: loading it once per key (in-process coalescing, the fill lease, the fill) and
//!   early refreshes; `lease`: releasing a lease that a failure or a cancellation left behind;
//! - `many`: `fetch_many` and `invalidate_many`, one round trip for many keys;
//! - `mutate`: invalidation and `exists`; `counter`: counters; `collection`: lists and sets;
//! - `local`: what the local tier shows of itself (`local_live`, `local_len`).

mod collection;
mod connect;
mod counter;
mod fetch;
mod lease;
mod load;
mod local;
mod many;
mod mutate;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::backend::{Backend, Entry};
use crate::codec::Codec;
use crate::config::CacheConfig;
use crate::error::{Error, KeyError};
use crate::flight::{FlightKey, Flights};
use crate::key::CacheKey;
use crate::kind::{Kind, Shape};
use crate::local::{LocalTier, Source, Timing};
use crate::observe::{ByStrategy, Op};
use crate::pending::Pending;
use crate::stats::{Counters, Stats};
use crate::strategy::Strategy;
use crate::value::{CacheValue, Payload};

/// Runs [`Strategy`]s against Redis or the embedded in-memory backend.
///
/// Cheap to clone (an `Arc`), `Send + Sync`; clones share one multiplexed, auto-reconnecting
/// connection, the in-process coalescing of loads, and the [`Stats`].
///
/// # Examples
///
/// ```
/// use cacheobj::{Cache, CacheKey, Strategy};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// struct Item { id: u64, name: String }
/// #[derive(Debug, Clone, Serialize, CacheKey)]
/// struct ItemKey { item_id: u64 }
/// const ITEM: Strategy<Item, ItemKey> = Strategy::<Item, ItemKey>::obj("item:<item_id>").expire(60);
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let cache = Cache::in_memory();
/// let key = ItemKey { item_id: 1 };
/// let item = cache
///     .fetch(&ITEM, &key, || async { Ok::<_, std::io::Error>(Item { id: 1, name: "a".into() }) })
///     .await?;
/// assert_eq!(item.name, "a");
/// cache.invalidate(&ITEM, &key).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

// `Cache` is shared across tasks and threads: keep it so.
const _: fn() = || {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<Cache>();
};

struct Inner {
    backend: Backend,
    prefix: Vec<u8>,
    max_key_len: usize,
    counters: Counters,
    /// The same counters for each strategy name.
    by_strategy: ByStrategy,
    flights: Flights,
    refreshing: Mutex<HashSet<FlightKey>>,
    /// Entries whose lease this process may have left behind (a lease or fill request that
    /// failed), with how many background releases follow it. A fetch that finds such an entry
    /// leased does not wait for a fill that is likely never to come.
    orphans: Arc<Mutex<HashMap<FlightKey, usize>>>,
    /// Invalidations that failed after their write committed, retried until they land.
    pending: Arc<Pending>,
    /// Whether `invalidate`, `invalidate_many` and `hash_del` queue their failures too.
    queue_failed: bool,
    /// Decoded values of the strategies with a local tier; `None` on the embedded backend.
    local: Option<LocalTier>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("backend", &self.inner.backend)
            .field("prefix", &String::from_utf8_lossy(&self.inner.prefix))
            .field("stats", &self.stats())
            .finish()
    }
}

/// Where an entry lives in Redis; see [`Cache::entry_key`].
///
/// # Examples
///
/// ```
/// # use cacheobj::{Cache, CacheKey, Hash, Strategy};
/// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
/// const ITEMS: Strategy<String, ItemKey, Hash> = Strategy::hash("item", "<item_id>");
/// let entry = Cache::in_memory().entry_key(&ITEMS, &ItemKey { item_id: 3 })?;
/// assert_eq!(entry.key, b"item");
/// assert_eq!(entry.field.as_deref(), Some(&b"3"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct EntryKey {
    /// The Redis key, prefix included.
    pub key: Vec<u8>,
    /// The hash field, for [`Hash`](struct@crate::Hash) strategies.
    pub field: Option<Vec<u8>>,
}

impl Inner {
    /// Counts one fetch's events in the totals and under the strategy's name.
    fn op(&self, strategy: &'static str) -> Op<'_> {
        Op::new(&self.counters, &self.by_strategy, strategy)
    }

    /// Decodes a value read from the cache. One that does not decode is counted and logged,
    /// and `None` tells the caller to load it again and replace it.
    fn decode<V: CacheValue<Kd>, Kd: Kind>(
        &self,
        op: &Op<'_>,
        entry: &Entry,
        payload: &Payload,
        codec: Codec,
    ) -> Option<V> {
        match V::decode(payload, codec) {
            Ok(value) => Some(value),
            Err(e) => {
                op.undecodable(&entry.key, &e);
                None
            }
        }
    }
}

impl Cache {
    /// A cache on `backend`; `tracking` says where a local tier receives invalidations from
    /// (`None` on the embedded backend, which has no local tier).
    fn with_backend(backend: Backend, config: &CacheConfig, tracking: Option<Source>) -> Cache {
        let timing = Timing {
            connect: config.connect_timeout,
            response: config.response_timeout,
            heartbeat: config.local_heartbeat,
            retry: config.retry_interval,
        };
        Cache {
            inner: Arc::new(Inner {
                backend,
                prefix: config.prefix.as_bytes().to_vec(),
                max_key_len: config.max_key_len,
                counters: Counters::default(),
                by_strategy: ByStrategy::default(),
                flights: Flights::default(),
                refreshing: Mutex::new(HashSet::new()),
                orphans: Arc::new(Mutex::new(HashMap::new())),
                pending: Pending::new(config.invalidation_queue),
                queue_failed: config.queue_failed_invalidations,
                local: tracking.map(|source| LocalTier::new(source, timing)),
            }),
        }
    }

    /// The counters of this cache and its clones, all strategies together. See
    /// [`strategy_stats`](Self::strategy_stats) for one strategy's.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = cacheobj::Cache::in_memory();
    /// assert_eq!(cache.stats(), cacheobj::Stats::default());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn stats(&self) -> Stats {
        let mut stats = self.inner.counters.snapshot();
        let pending = &self.inner.pending;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        stats.invalidations_queued = get(&pending.queued);
        stats.invalidations_retried = get(&pending.retried);
        stats.invalidations_dropped = get(&pending.dropped);
        if let Some(local) = &self.inner.local {
            let tier = local.stats();
            stats.local_invalidations = tier.invalidations;
            stats.local_flushes = tier.flushes;
            stats.local_fallback = tier.fallback;
        }
        stats
    }

    /// The counters of one strategy's fetches, on this cache and its clones: those of every
    /// strategy with the same [`name`](Strategy::name) (by default, its template). The
    /// invalidation queue's counters are process-wide and stay 0 here; `errors` counts only
    /// fetches that failed open, as in [`stats`](Self::stats).
    ///
    /// # Examples
    ///
    /// ```
    /// use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::obj("item:<item_id>").name("item");
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// for _ in 0..3 {
    ///     cache.fetch(&ITEM, &ItemKey { item_id: 1 }, || async { Ok::<_, std::io::Error>("lamp".to_string()) }).await?;
    /// }
    /// let item = cache.strategy_stats(&ITEM);
    /// assert_eq!((item.misses, item.loads, item.hits), (1, 1, 2));
    /// assert_eq!(cache.stats().hits, 2);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn strategy_stats<V, K, Kd>(&self, strategy: &Strategy<V, K, Kd>) -> Stats {
        self.inner
            .by_strategy
            .get(strategy.strategy_name())
            .unwrap_or_default()
    }

    /// The counters of every strategy fetched so far, by [`name`](Strategy::name), sorted by
    /// name: for a status page, or to export to a metrics system without the `metrics`
    /// feature. As many entries as strategy names, never more.
    ///
    /// # Examples
    ///
    /// ```
    /// use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::obj("item:<item_id>").name("item");
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// cache.fetch(&ITEM, &ItemKey { item_id: 1 }, || async { Ok::<_, std::io::Error>("lamp".to_string()) }).await?;
    /// let all = cache.stats_by_strategy();
    /// assert_eq!(all.len(), 1);
    /// assert_eq!((all[0].0, all[0].1.misses), ("item", 1));
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn stats_by_strategy(&self) -> Vec<(&'static str, Stats)> {
        self.inner.by_strategy.all()
    }

    /// Checks that Redis answers.
    ///
    /// # Errors
    ///
    /// The Redis error, or [`Error::Timeout`] after the response timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// cacheobj::Cache::in_memory().ping().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ping(&self) -> Result<(), Error> {
        self.inner.backend.ping().await
    }

    fn render<V, K: CacheKey, Kd: Kind>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
    ) -> Result<Entry, KeyError> {
        let mut out = Vec::new();
        strategy.render_key(&mut out, &self.inner.prefix, key)?;
        self.render_with(strategy, key, out)
    }

    /// [`render`](Self::render) for a Redis key `out` already rendered from `key`.
    fn render_with<V, K: CacheKey, Kd: Kind>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
        out: Vec<u8>,
    ) -> Result<Entry, KeyError> {
        let mut field = Vec::new();
        strategy.render_field(&mut field, key)?;
        let max = self.inner.max_key_len;
        for len in [out.len(), field.len()] {
            if len > max {
                return Err(KeyError::TooLong { len, max });
            }
        }
        Ok(Entry {
            key: out,
            field,
            shape: Kd::SHAPE,
        })
    }

    /// Where an entry lives: the Redis key (prefix included) and, for [`Hash`](struct@crate::Hash) strategies, the
    /// hash field. For debugging, and for tools that inspect Redis directly.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the key does not render or is longer than
    /// [`CacheConfig::max_key_len`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>").version(2);
    /// let cache = Cache::in_memory_with(cacheobj::CacheConfig::builder().prefix("app:").build())?;
    /// let entry = cache.entry_key(&ITEM, &ItemKey { item_id: 5 })?;
    /// assert_eq!(entry.key, b"app:item:5#v2");
    /// assert_eq!(entry.field, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn entry_key<V, K: CacheKey, Kd: Kind>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
    ) -> Result<EntryKey, KeyError> {
        let entry = self.render(strategy, key)?;
        Ok(EntryKey {
            key: entry.key,
            field: (Kd::SHAPE == Shape::Hash).then_some(entry.field),
        })
    }
}
