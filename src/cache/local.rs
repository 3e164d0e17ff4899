//! What the local tier ([`Strategy::local`]) shows of itself.

use super::Cache;
use crate::strategy::Strategy;

impl Cache {
    /// Whether the local tier serves and keeps values now: tracking is confirmed on every
    /// node. It starts with the first fetch of a strategy with [`Strategy::local`]; until
    /// then, while a tracking connection is lost, on the embedded backend, and when the
    /// server cannot track ([`Stats::local_fallback`](crate::Stats::local_fallback)),
    /// fetches go to the backend as without a local tier.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!cacheobj::Cache::in_memory().local_live());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn local_live(&self) -> bool {
        self.inner.local.as_ref().is_some_and(|l| l.is_live())
    }

    /// How many values of `strategy` the local tier holds (after pending evictions ran): for
    /// a status page, and to check its bound.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::obj("item:<item_id>").local(100);
    /// assert_eq!(Cache::in_memory().local_len(&ITEM), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn local_len<V, K, Kd>(&self, strategy: &Strategy<V, K, Kd>) -> u64 {
        self.inner
            .local
            .as_ref()
            .map_or(0, |l| l.entries(strategy.local_id()))
    }
}
