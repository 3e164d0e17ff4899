//! Invalidation, and whether an entry is cached. Every mutation detaches in-process loads of
//! its key that may predate it.

use std::future::Future;

use super::Cache;
use crate::backend::{Entry, Lookup};
use crate::error::Error;
use crate::key::CacheKey;
use crate::kind::{Hash, Kind};
use crate::strategy::Strategy;

impl Cache {
    /// Runs a mutation, then detaches in-process loads of the key that may predate it.
    pub(super) async fn mutate<T>(
        &self,
        entry: &Entry,
        op: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        self.inner.flights.forget(entry);
        let result = op.await;
        self.inner.flights.forget(entry);
        result
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
        let entry = self.render(strategy, key)?;
        self.mutate(&entry, self.inner.backend.invalidate(entry.loc()))
            .await
    }

    /// Runs `write` (say, a database update), then invalidates the entry: Flask-CacheOBJ's
    /// `delete_obj`. Nothing is invalidated when `write` fails.
    ///
    /// # Errors
    ///
    /// `write`'s error, or the invalidation's, converted into `E`.
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
    /// let rows = cache
    ///     .invalidate_after(&ITEM, &ItemKey { item_id: 1 }, || async {
    ///         Ok::<u64, cacheobj::Error>(1) // UPDATE items SET ... WHERE id = 1
    ///     })
    ///     .await?;
    /// assert_eq!(rows, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate_after<V, K, Kd, F, Fut, T, E>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
        write: F,
    ) -> Result<T, E>
    where
        K: CacheKey,
        Kd: Kind,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let out = write().await?;
        self.invalidate(strategy, key).await?;
        Ok(out)
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
        self.invalidate(strategy, key).await
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
        Ok(matches!(
            self.inner.backend.read(entry.loc()).await?,
            Lookup::Hit(_)
        ))
    }
}
