//! Counters: integers stored as decimal text, so that Redis can `INCRBY` them.

use super::Cache;
use crate::backend::Lookup;
use crate::error::Error;
use crate::key::CacheKey;
use crate::kind::Counter;
use crate::strategy::Strategy;
use crate::value::Payload;

impl Cache {
    /// Adds `delta` to a cached counter. A counter that is not cached stays uncached and this
    /// returns `None`: inventing a count from `delta` would be wrong (Flask-CacheOBJ's INCR
    /// does). Use [`incr_or_create`](Self::incr_or_create) for counters that live only in Redis.
    ///
    /// # Errors
    ///
    /// The key did not render, or Redis failed: the counter may not have changed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Counter, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const VIEWS: Strategy<i64, ItemKey, Counter> = Strategy::counter("views:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let key = ItemKey { item_id: 1 };
    /// assert_eq!(cache.incr(&VIEWS, &key, 1).await?, None);
    /// cache.fetch(&VIEWS, &key, || async { Ok::<_, std::io::Error>(41) }).await?;
    /// assert_eq!(cache.incr(&VIEWS, &key, 1).await?, Some(42));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn incr<V, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Counter>,
        key: &K,
        delta: i64,
    ) -> Result<Option<i64>, Error> {
        let entry = self.render(strategy, key)?;
        self.mutate(
            "incr",
            strategy.strategy_name(),
            &entry,
            self.inner.backend.incr(entry.loc(), delta),
        )
        .await
    }

    /// Subtracts `delta` from a cached counter; see [`incr`](Self::incr).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for `i64::MIN`; otherwise as [`incr`](Self::incr).
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Counter, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const VIEWS: Strategy<i64, ItemKey, Counter> = Strategy::counter("views:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let key = ItemKey { item_id: 1 };
    /// cache.set_counter(&VIEWS, &key, 10).await?;
    /// assert_eq!(cache.decr(&VIEWS, &key, 3).await?, Some(7));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn decr<V, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Counter>,
        key: &K,
        delta: i64,
    ) -> Result<Option<i64>, Error> {
        let delta = delta.checked_neg().ok_or(Error::InvalidArgument(
            "decr delta must be greater than i64::MIN",
        ))?;
        self.incr(strategy, key, delta).await
    }

    /// Adds `delta` to a counter, creating it at `delta` (with the strategy's TTL) when it is
    /// not there: for counters that live only in Redis, with no loader.
    ///
    /// # Errors
    ///
    /// The key did not render, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Counter, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const VIEWS: Strategy<i64, ItemKey, Counter> = Strategy::counter("views:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let key = ItemKey { item_id: 1 };
    /// assert_eq!(cache.incr_or_create(&VIEWS, &key, 1).await?, 1);
    /// assert_eq!(cache.incr_or_create(&VIEWS, &key, 1).await?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn incr_or_create<V, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Counter>,
        key: &K,
        delta: i64,
    ) -> Result<i64, Error> {
        let entry = self.render(strategy, key)?;
        let ttl = strategy.fill_ttl_ms(false);
        self.mutate(
            "incr_or_create",
            strategy.strategy_name(),
            &entry,
            self.inner.backend.incr_or_create(entry.loc(), delta, ttl),
        )
        .await
    }

    /// The cached count, or `None` when it is not cached.
    ///
    /// # Errors
    ///
    /// The key did not render, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Counter, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const VIEWS: Strategy<i64, ItemKey, Counter> = Strategy::counter("views:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// assert_eq!(cache.get_counter(&VIEWS, &ItemKey { item_id: 1 }).await?, None);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_counter<V, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Counter>,
        key: &K,
    ) -> Result<Option<i64>, Error> {
        let entry = self.render(strategy, key)?;
        self.settled(&entry).await?;
        Ok(match self.inner.backend.read(entry.loc()).await? {
            Lookup::Hit(Payload::Bytes(b)) => {
                std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok())
            }
            _ => None,
        })
    }

    /// Sets a counter to `value`, with the strategy's TTL; a load in flight will not fill.
    ///
    /// # Errors
    ///
    /// The key did not render, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Counter, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const VIEWS: Strategy<i64, ItemKey, Counter> = Strategy::counter("views:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// cache.set_counter(&VIEWS, &ItemKey { item_id: 1 }, 5).await?;
    /// assert_eq!(cache.get_counter(&VIEWS, &ItemKey { item_id: 1 }).await?, Some(5));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_counter<V, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Counter>,
        key: &K,
        value: i64,
    ) -> Result<(), Error> {
        let entry = self.render(strategy, key)?;
        let ttl = strategy.fill_ttl_ms(false);
        let text = value.to_string();
        self.mutate(
            "set_counter",
            strategy.strategy_name(),
            &entry,
            self.inner
                .backend
                .set_string(entry.loc(), text.as_bytes(), ttl),
        )
        .await
    }
}
