//! Every cache call of the service, in small functions: handlers call these, never `Cache`
//! directly. The library's batch and invalidation signatures may still change; adapting to
//! that is a change here only. Each function honours `CACHE_BYPASS` (the load script's
//! cache-off run) by going straight to the database.

use std::collections::HashMap;
use std::future::Future;

use cacheobj::BatchError;

use crate::error::AppError;
use crate::strategies::{Item, ItemKey, ITEM, ITEM_HASH, ITEM_MEMBERS, ITEM_TAGS, ITEM_VIEWS};
use crate::AppState;

fn key(id: u64) -> ItemKey {
    ItemKey { item_id: id }
}

/// One item through the obj strategy; `None` (cached briefly) when there is no such row.
///
/// # Errors
///
/// The database's, when the item is not cached.
pub async fn item(state: &AppState, id: u64) -> Result<Option<Item>, AppError> {
    let load = || async { Ok::<_, AppError>(state.db.item(id).await?) };
    if state.bypass {
        return load().await;
    }
    state.cache.fetch(&ITEM, &key(id), load).await
}

/// One item through the hash strategy.
///
/// # Errors
///
/// The database's, when the item is not cached.
pub async fn item_in_hash(state: &AppState, id: u64) -> Result<Option<Item>, AppError> {
    let load = || async { Ok::<_, AppError>(state.db.item(id).await?) };
    if state.bypass {
        return load().await;
    }
    state.cache.fetch(&ITEM_HASH, &key(id), load).await
}

/// Many items in one cache round trip and at most one database query (for the misses), in
/// the order of `ids`; a missing row is `None`, cached briefly.
///
/// # Errors
///
/// The database's, when some item is not cached.
pub async fn items(state: &AppState, ids: &[u64]) -> Result<Vec<Option<Item>>, AppError> {
    if state.bypass {
        let found = rows_by_id(state, ids).await?;
        return Ok(ids.iter().map(|id| found.get(id).cloned()).collect());
    }
    let keys: Vec<ItemKey> = ids.iter().map(|&id| key(id)).collect();
    // The loader returns what the query found, keyed: no reordering, and a row it did not
    // find is a cached "not found".
    let loaded = state
        .cache
        .fetch_many_by_key(&ITEM, &keys, |missing: Vec<ItemKey>| async move {
            let ids: Vec<u64> = missing.iter().map(|k| k.item_id).collect();
            let found = rows_by_id(state, &ids).await?;
            Ok::<_, AppError>(
                found
                    .into_iter()
                    .map(|(id, item)| (key(id), item))
                    .collect::<HashMap<_, _>>(),
            )
        })
        .await;
    loaded.map_err(|e| match e {
        BatchError::Loader(e) => e,
        BatchError::Cache(e) => AppError::Cache(e),
        // BatchError is non-exhaustive: a failure added later is the cache's too.
        _ => AppError::Cache(cacheobj::Error::InvalidArgument("fetch_many failed")),
    })
}

async fn rows_by_id(state: &AppState, ids: &[u64]) -> Result<HashMap<u64, Item>, AppError> {
    Ok(state
        .db
        .items(ids)
        .await?
        .into_iter()
        .map(|item| (item.id, item))
        .collect())
}

/// Runs `write` (a database change to item `id`), then invalidates the item's entries in both
/// strategies. A write that fails invalidates nothing and is the request's error. A write that
/// succeeded is never answered as a failure: if Redis is down its invalidations are queued and
/// retried by the library until they land (this process reads neither entry from Redis until
/// then), and the failure is logged and counted (`service_invalidation_failures_total`).
///
/// # Errors
///
/// `write`'s.
pub async fn write_item<T, F, Fut>(state: &AppState, id: u64, write: F) -> Result<T, AppError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, AppError>>,
{
    if state.bypass {
        return write().await;
    }
    let written = state.cache.invalidate_after(&ITEM, &key(id), write).await?;
    if let Some(e) = written.cache_error() {
        invalidation_failed(id, e);
    }
    // The config queues a failed hash_del too (`queue_failed_invalidations`).
    if let Err(e) = state.cache.hash_del(&ITEM_HASH, &key(id)).await {
        invalidation_failed(id, &e);
    }
    Ok(written.into_value())
}

fn invalidation_failed(id: u64, e: &cacheobj::Error) {
    metrics::counter!("service_invalidation_failures_total").increment(1);
    tracing::error!(item_id = id, error = %e, "write landed but its cache entry is not invalidated yet; the library retries it");
}

/// An item's view count (the counter strategy).
///
/// # Errors
///
/// The database's, when the count is not cached; `NotFound` for a missing item.
pub async fn views(state: &AppState, id: u64) -> Result<i64, AppError> {
    let load = || async {
        state
            .db
            .views(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("no item {id}")))
    };
    if state.bypass {
        return load().await;
    }
    state.cache.fetch(&ITEM_VIEWS, &key(id), load).await
}

/// Adds one view in the database, then to the cached count if there is one (a count that is
/// not cached stays uncached and is loaded on its next read).
///
/// # Errors
///
/// The database's; `NotFound` for a missing item.
pub async fn add_view(state: &AppState, id: u64) -> Result<i64, AppError> {
    let views = state
        .db
        .add_view(id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no item {id}")))?;
    if !state.bypass {
        if let Err(e) = state.cache.incr(&ITEM_VIEWS, &key(id), 1).await {
            // The cached count may now be one short: drop it so the next read reloads it.
            if state.cache.invalidate(&ITEM_VIEWS, &key(id)).await.is_err() {
                invalidation_failed(id, &e);
            }
        }
    }
    Ok(views)
}

/// An item's list of members (the list strategy).
///
/// # Errors
///
/// The database's, when the list is not cached.
pub async fn members(state: &AppState, id: u64) -> Result<Vec<u64>, AppError> {
    let load = || async { Ok::<_, AppError>(state.db.members(id).await?) };
    if state.bypass {
        return load().await;
    }
    state.cache.fetch(&ITEM_MEMBERS, &key(id), load).await
}

/// Appends to an item's list in the database, then to the cached list if there is one.
///
/// # Errors
///
/// The database's.
pub async fn add_member(state: &AppState, id: u64, member: u64) -> Result<(), AppError> {
    state.db.add_member(id, member).await?;
    if !state.bypass {
        if let Err(e) = state
            .cache
            .list_push(&ITEM_MEMBERS, &key(id), &[member])
            .await
        {
            if state
                .cache
                .invalidate(&ITEM_MEMBERS, &key(id))
                .await
                .is_err()
            {
                invalidation_failed(id, &e);
            }
        }
    }
    Ok(())
}

/// An item's tags (the set strategy).
///
/// # Errors
///
/// The database's, when the tags are not cached.
pub async fn tags(state: &AppState, id: u64) -> Result<Vec<String>, AppError> {
    let load = || async { Ok::<_, AppError>(state.db.tags(id).await?) };
    if state.bypass {
        return load().await;
    }
    state.cache.fetch(&ITEM_TAGS, &key(id), load).await
}

/// Adds a tag in the database, then to the cached set if there is one.
///
/// # Errors
///
/// The database's.
pub async fn add_tag(state: &AppState, id: u64, tag: String) -> Result<(), AppError> {
    state.db.add_tag(id, &tag).await?;
    if !state.bypass {
        if let Err(e) = state.cache.set_add(&ITEM_TAGS, &key(id), &[tag]).await {
            if state.cache.invalidate(&ITEM_TAGS, &key(id)).await.is_err() {
                invalidation_failed(id, &e);
            }
        }
    }
    Ok(())
}
