//! Invalidation, and whether an entry is cached. Every mutation detaches in-process loads of
//! its key that may predate it.

use std::future::Future;

use tracing::Instrument;

use super::Cache;
use crate::backend::{Entry, Lookup};
use crate::error::Error;
use crate::key::CacheKey;
use crate::kind::{Hash, Kind};
use crate::observe;
use crate::pending::Queued;
use crate::strategy::Strategy;
use crate::written::{Invalidation, Written};

impl Cache {
    /// Runs a mutation (`what`, of `strategy`'s entry) in its span, then detaches in-process
    /// loads of the key that may predate it.
    pub(super) async fn mutate<T>(
        &self,
        what: &'static str,
        strategy: &'static str,
        entry: &Entry,
        op: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let span = observe::mutation_span(what, strategy);
        let started = observe::clock(&span);
        let result = async {
            self.inner.flights.forget(entry);
            // A queued invalidation of this entry lands first: a counter or list mutation
            // must not change what it removes.
            self.settled(entry).await?;
            let result = op.await;
            self.inner.flights.forget(entry);
            // Whatever the result: a request that failed may still have landed.
            self.forget_local(entry);
            result
        }
        .instrument(span.clone())
        .await;
        observe::finish(&span, started, observe::result_outcome(&result));
        result
    }

    /// Drops this process's local copy of the entry and voids reads of it in flight, so a
    /// read that starts after a change returns never serves what it replaced.
    pub(super) fn forget_local(&self, entry: &Entry) {
        if let Some(local) = &self.inner.local {
            local.forget(&entry.key);
        }
    }

    /// Lands this entry's queued invalidation, if it has one, so the entry may be read.
    ///
    /// # Errors
    ///
    /// The invalidation still fails: do not read the entry from Redis.
    pub(super) async fn settled(&self, entry: &Entry) -> Result<(), Error> {
        let inner = &*self.inner;
        if inner.pending.is_empty() {
            return Ok(());
        }
        inner.pending.settle(&inner.backend, entry).await
    }

    /// Queues a failed invalidation for retry, if its error is one a retry can cure.
    pub(super) fn queue(&self, entry: &Entry, error: Error) -> Invalidation {
        let inner = &*self.inner;
        if !error.is_unavailable() {
            return Invalidation::NotRetried(error);
        }
        match inner.pending.push(entry, &inner.backend) {
            Queued::Yes => {
                tracing::warn!(%error, "cacheobj: invalidation failed; queued and retried until it lands");
                Invalidation::Queued(error)
            }
            Queued::Full => {
                tracing::error!(%error, "cacheobj: invalidation failed and the retry queue is full: the entry may be served until its TTL");
                Invalidation::NotRetried(error)
            }
        }
    }

    /// Invalidates one entry; a failure is queued when `queue` says so.
    async fn invalidate_entry(
        &self,
        what: &'static str,
        strategy: &'static str,
        entry: &Entry,
        queue: bool,
    ) -> Invalidation {
        match self
            .mutate(
                what,
                strategy,
                entry,
                self.inner.backend.invalidate(entry.loc()),
            )
            .await
        {
            Ok(()) => Invalidation::Done,
            Err(e) if queue => self.queue(entry, e),
            Err(e) => Invalidation::NotRetried(e),
        }
    }

    /// Removes the entry: exactly what [`fetch`](Self::fetch) would read. A fill whose load
    /// began before this call will not land.
    ///
    /// # Errors
    ///
    /// The key did not render, or Redis failed: the entry may still be there.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// cache.invalidate(&ITEM, &ItemKey { item_id: 1 }).await?;
    /// assert!(!cache.exists(&ITEM, &ItemKey { item_id: 1 }).await?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate<V, K, Kd>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
    ) -> Result<(), Error>
    where
        K: CacheKey,
        Kd: Kind,
    {
        self.invalidate_as("invalidate", strategy, key).await
    }

    /// [`invalidate`](Self::invalidate), in a span that says which method ran.
    async fn invalidate_as<V, K, Kd>(
        &self,
        what: &'static str,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
    ) -> Result<(), Error>
    where
        K: CacheKey,
        Kd: Kind,
    {
        let entry = self.render(strategy, key)?;
        let queue = self.inner.queue_failed;
        match self
            .invalidate_entry(what, strategy.strategy_name(), &entry, queue)
            .await
        {
            Invalidation::Done => Ok(()),
            Invalidation::Queued(e) => Err(Error::InvalidationQueued(Box::new(e))),
            Invalidation::NotRetried(e) => Err(e),
        }
    }

    /// Runs `write` (say, a database update), then invalidates the entry: Flask-CacheOBJ's
    /// `delete_obj`. Nothing is invalidated when `write` fails.
    ///
    /// A write that succeeded is never reported as failed: the result is [`Written`], with
    /// the write's value and what became of the invalidation. One that failed because Redis is
    /// down or slow is queued and retried in the background until it lands (bounded by
    /// [`CacheConfig::invalidation_queue`](crate::CacheConfig::invalidation_queue); [`Stats::invalidations_queued`](crate::Stats::invalidations_queued),
    /// [`Stats::invalidations_retried`](crate::Stats::invalidations_retried) and [`Stats::invalidations_dropped`](crate::Stats::invalidations_dropped) count it), and
    /// this process does not read the entry from Redis until it has: its fetches load
    /// instead. Other processes may read the old entry until the retry lands.
    ///
    /// # Errors
    ///
    /// Only `write`'s own error, untouched.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let written = cache
    ///     .invalidate_after(&ITEM, &ItemKey { item_id: 1 }, || async {
    ///         Ok::<u64, std::io::Error>(1) // UPDATE items SET ... WHERE id = 1
    ///     })
    ///     .await?;
    /// assert!(written.is_invalidated());
    /// assert_eq!(written.into_value(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate_after<V, K, Kd, F, Fut, T, E>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
        write: F,
    ) -> Result<Written<T>, E>
    where
        K: CacheKey,
        Kd: Kind,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let value = write().await?;
        let invalidation = match self.render(strategy, key) {
            Ok(entry) => {
                self.invalidate_entry("invalidate_after", strategy.strategy_name(), &entry, true)
                    .await
            }
            // Nothing can be cached under a key that does not render.
            Err(e) => Invalidation::NotRetried(Error::Key(e)),
        };
        Ok(Written::new(value, invalidation))
    }

    /// Deletes the hash field of a [`Hash`](struct@crate::Hash) strategy (Flask-CacheOBJ's `hash_del`).
    ///
    /// # Errors
    ///
    /// The key did not render, or Redis failed: the field may still be there.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Hash, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEMS: Strategy<String, ItemKey, Hash> = Strategy::hash("item", "<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// Cache::in_memory().hash_del(&ITEMS, &ItemKey { item_id: 1 }).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn hash_del<V, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Hash>,
        key: &K,
    ) -> Result<(), Error> {
        self.invalidate_as("hash_del", strategy, key).await
    }

    /// Whether a value is cached (a fill in progress does not count).
    ///
    /// # Errors
    ///
    /// The key did not render, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// assert!(!Cache::in_memory().exists(&ITEM, &ItemKey { item_id: 1 }).await?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn exists<V, K, Kd>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
    ) -> Result<bool, Error>
    where
        K: CacheKey,
        Kd: Kind,
    {
        let entry = self.render(strategy, key)?;
        self.settled(&entry).await?;
        Ok(matches!(
            self.inner.backend.read(entry.loc()).await?,
            Lookup::Hit(_)
        ))
    }
}
