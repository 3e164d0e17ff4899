//! What [`Cache::invalidate_after`](crate::Cache::invalidate_after) returns: the write's value,
//! and whether its invalidation landed.

use crate::error::Error;

/// The outcome of a write that succeeded: its value, and what became of its invalidation.
///
/// A write that failed is the `Err` of `invalidate_after`, with the write's own error; a
/// `Written` always means the write was made, so never answer it with a failure (a caller that
/// retries would write twice).
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
///         Ok::<u64, std::io::Error>(1) // UPDATE items SET ... WHERE id = 1: rows affected
///     })
///     .await?;
/// if let Some(error) = written.cache_error() {
///     // The row changed; the cache entry goes once Redis answers again.
///     eprintln!("invalidation deferred: {error}");
/// }
/// assert_eq!(written.into_value(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "the write was made: use its value, and log the invalidation's error if any"]
pub struct Written<T> {
    value: T,
    invalidation: Invalidation,
}

/// What became of an invalidation that followed a successful write.
#[derive(Debug)]
#[non_exhaustive]
pub enum Invalidation {
    /// It landed: the entry is gone.
    Done,
    /// It failed (Redis down or slow) and is queued: retried in the background until it lands,
    /// and before this process reads the key from Redis again. Other processes may read the
    /// old entry until it lands.
    Queued(Error),
    /// It failed and is not retried: the retry queue was full (see
    /// [`CacheConfig::invalidation_queue`](crate::CacheConfig::invalidation_queue)), or the key
    /// did not render. The entry may be served until its TTL.
    NotRetried(Error),
}

impl Invalidation {
    /// The cache's error, unless the invalidation landed.
    pub fn error(&self) -> Option<&Error> {
        match self {
            Invalidation::Done => None,
            Invalidation::Queued(e) | Invalidation::NotRetried(e) => Some(e),
        }
    }
}

impl<T> Written<T> {
    pub(crate) fn new(value: T, invalidation: Invalidation) -> Written<T> {
        Written {
            value,
            invalidation,
        }
    }

    /// The write's value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The write's value, whatever became of the invalidation.
    pub fn into_value(self) -> T {
        self.value
    }

    /// What became of the invalidation.
    pub fn invalidation(&self) -> &Invalidation {
        &self.invalidation
    }

    /// Whether the invalidation landed.
    pub fn is_invalidated(&self) -> bool {
        matches!(self.invalidation, Invalidation::Done)
    }

    /// The cache's error, unless the invalidation landed.
    pub fn cache_error(&self) -> Option<&Error> {
        self.invalidation.error()
    }

    /// The write's value and what became of the invalidation.
    pub fn into_parts(self) -> (T, Invalidation) {
        (self.value, self.invalidation)
    }
}
