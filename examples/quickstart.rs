//! Fetches, hits, misses and invalidations of every kind of strategy. Runs on Redis when
//! `CACHE_URL` or `CACHE_HOST` is set, on the embedded in-memory backend otherwise.
//!
//! ```text
//! cargo run --example quickstart
//! CACHE_URL=redis://127.0.0.1:6379/ cargo run --example quickstart
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;

use cacheobj::{Cache, CacheConfig};
use cacheobj_strategies::{
    Item, ItemKey, ITEM, ITEM_HASH, ITEM_MEMBERS, ITEM_STAT, ITEM_TAGS, MAYBE_ITEM,
};

/// Stands in for a database table: item id -> name.
struct Db(Mutex<HashMap<u64, String>>);

impl Db {
    /// Stands in for a `SELECT`.
    async fn load_item(&self, id: u64) -> Result<Item, Infallible> {
        println!("  (database) loading item {id}");
        let table = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let name = table
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("item #{id}"));
        Ok(Item { id, name })
    }

    /// Stands in for an `UPDATE`.
    async fn rename(&self, id: u64, name: &str) -> Result<(), cacheobj::Error> {
        println!("  (database) renaming item {id} to {name:?}");
        let mut table = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        table.insert(id, name.to_owned());
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let use_redis =
        std::env::var_os("CACHE_URL").is_some() || std::env::var_os("CACHE_HOST").is_some();
    let cache = if use_redis {
        let mut config = CacheConfig::from_env()?;
        if config.prefix.is_empty() {
            config.prefix = "quickstart:".into();
        }
        println!("backend: redis ({config:?})");
        let cache = Cache::connect(config).await?;
        cache.ping().await?;
        cache
    } else {
        println!("backend: embedded in-memory (set CACHE_URL to use Redis)");
        Cache::in_memory()
    };

    let db = Db(Mutex::new(HashMap::from([(1, "lamp".to_string())])));
    let key = ItemKey { item_id: 1 };
    cache.invalidate(&ITEM, &key).await?;

    println!("fetch item 1 (miss):");
    let item = cache.fetch(&ITEM, &key, || db.load_item(1)).await?;
    println!("  -> {item:?}");
    println!("fetch item 1 again (hit):");
    let item = cache.fetch(&ITEM, &key, || db.load_item(1)).await?;
    println!("  -> {item:?}");

    println!("rename item 1, then invalidate:");
    let written = cache
        .invalidate_after(&ITEM, &key, || db.rename(1, "desk lamp"))
        .await?;
    if let Some(error) = written.cache_error() {
        println!("  (the row changed; the invalidation is queued for retry: {error})");
    }
    println!("fetch item 1 (miss after the invalidation, loads the new name):");
    let item = cache.fetch(&ITEM, &key, || db.load_item(1)).await?;
    println!("  -> {item:?}");

    let missing = ItemKey { item_id: 404 };
    cache.invalidate(&MAYBE_ITEM, &missing).await?;
    let none = cache
        .fetch(&MAYBE_ITEM, &missing, || async {
            Ok::<_, Infallible>(None)
        })
        .await?;
    println!("fetch missing item 404: {none:?} (cached as not-found for 30 s)");

    cache.invalidate(&ITEM_STAT, &key).await?;
    let views = cache
        .fetch(&ITEM_STAT, &key, || async { Ok::<_, Infallible>(41) })
        .await?;
    let views_after = cache.incr(&ITEM_STAT, &key, 1).await?;
    println!("counter: loaded {views}, after incr {views_after:?}");

    cache.invalidate(&ITEM_MEMBERS, &key).await?;
    let members = cache
        .fetch(&ITEM_MEMBERS, &key, || async {
            Ok::<_, Infallible>(vec![7, 8])
        })
        .await?;
    let len = cache.list_push(&ITEM_MEMBERS, &key, &[9]).await?;
    println!("list: loaded {members:?}, length after push {len:?}");

    cache.invalidate(&ITEM_TAGS, &key).await?;
    let tags = cache
        .fetch(&ITEM_TAGS, &key, || async {
            Ok::<_, Infallible>(vec!["new".to_string()])
        })
        .await?;
    let has = cache
        .set_contains(&ITEM_TAGS, &key, &"new".to_string())
        .await?;
    println!("set: loaded {tags:?}, contains \"new\": {has:?}");

    cache.hash_del(&ITEM_HASH, &key).await?;
    let from_hash = cache.fetch(&ITEM_HASH, &key, || db.load_item(1)).await?;
    let again = cache.fetch(&ITEM_HASH, &key, || db.load_item(1)).await?;
    println!("hash: {from_hash:?} then {again:?}");

    let stats = cache.stats();
    println!(
        "stats: hits={} misses={} loads={} errors={}",
        stats.hits, stats.misses, stats.loads, stats.errors
    );
    Ok(())
}
