//! The local tier (`Strategy::local`): hits from process memory, kept coherent by Redis's
//! invalidations, on a standalone server and on the cluster.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cacheobj::{Cache, CacheConfig, CacheKey, Counter, Strategy};
use serde::{Deserialize, Serialize};
use support::{cluster_cache, entry_redis_key, raw_conn_for, redis_cache, wait_until, RedisServer};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: u64,
    name: String,
}

#[derive(Debug, Clone, Serialize, CacheKey)]
struct ItemKey {
    item_id: u64,
}

const ITEM: Strategy<Item, ItemKey> = Strategy::obj("item:<item_id>").expire(600).local(1_000);
const SHORT: Strategy<Item, ItemKey> = Strategy::obj("short:<item_id>").expire(1).local(1_000);
const VIEWS: Strategy<i64, ItemKey, Counter> = Strategy::counter("views:<item_id>")
    .expire(600)
    .local(1_000);

const LIVE: Duration = Duration::from_secs(20);

fn item(id: u64, name: &str) -> Item {
    Item {
        id,
        name: name.to_owned(),
    }
}

/// Fetches `ITEM` (or `strategy`), counting loader calls; the loader returns `name`.
async fn fetch(
    cache: &Cache,
    strategy: &Strategy<Item, ItemKey>,
    id: u64,
    calls: &AtomicUsize,
    name: &str,
) -> Item {
    cache
        .fetch(strategy, &ItemKey { item_id: id }, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(item(id, name))
        })
        .await
        .expect("the loader does not fail")
}

/// Fetches until the value is held locally: the first fetch loads and fills, a later one
/// reads it back from Redis and keeps it once the tier is live.
async fn warm(cache: &Cache, strategy: &Strategy<Item, ItemKey>, id: u64, name: &str) {
    let calls = AtomicUsize::new(0);
    let before = cache.stats().local_hits;
    let deadline = std::time::Instant::now() + LIVE;
    loop {
        fetch(cache, strategy, id, &calls, name).await;
        if cache.stats().local_hits > before {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no local hit within {LIVE:?}: {:?}",
            cache.stats()
        );
        tokio::task::yield_now().await;
    }
}

/// `INFO commandstats` calls of every command but the tracking connections' heartbeat.
async fn commands(conn: &mut impl redis::aio::ConnectionLike) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_ping:"))
        .filter(|l| !l.starts_with("cmdstat_info:"))
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|c| c.split(',').next()?.parse::<u64>().ok())
        .sum()
}

async fn private_cache(server: &RedisServer, test: &str) -> Cache {
    let config = CacheConfig::builder()
        .url(server.url())
        .prefix(support::unique_prefix(test))
        .response_timeout(Duration::from_secs(2))
        .build();
    Cache::connect(config).await.expect("connect")
}

#[tokio::test]
async fn a_local_hit_sends_nothing_to_redis() {
    let server = RedisServer::start();
    let cache = private_cache(&server, "local_nothing").await;
    warm(&cache, &ITEM, 1, "lamp").await;
    let mut raw = support::raw_conn_to(&server.url()).await;
    let before = commands(&mut raw).await;
    let calls = AtomicUsize::new(0);
    let (hits, all_hits) = (cache.stats().local_hits, cache.stats().hits);
    let own_hits = cache.strategy_stats(&ITEM).hits;
    for _ in 0..1_000 {
        assert_eq!(
            fetch(&cache, &ITEM, 1, &calls, "other").await,
            item(1, "lamp")
        );
    }
    let after = commands(&mut raw).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(cache.stats().local_hits, hits + 1_000);
    // Local hits are hits, in the totals and in the strategy's own figures.
    assert_eq!(cache.stats().hits, all_hits + 1_000);
    assert_eq!(cache.strategy_stats(&ITEM).hits, own_hits + 1_000);
    assert_eq!(cache.strategy_stats(&ITEM).local_hits, hits + 1_000);
    // The two INFO calls are not counted; nothing else reached the server.
    assert_eq!(
        after, before,
        "commands reached Redis during 1,000 local hits"
    );
}

/// Runs the coherence checks on one deployment: `cache` and `other` share it, `raw` writes
/// behind the library's back.
async fn coherence(label: &str, cache: Cache, other: Cache) {
    let calls = AtomicUsize::new(0);
    let key = ItemKey { item_id: 7 };

    // Invalidation by another Cache.
    warm(&cache, &ITEM, 7, "v1").await;
    other.invalidate(&ITEM, &key).await.expect("invalidate");
    wait_until(
        &format!("{label}: the other Cache's invalidation arrives"),
        LIVE,
        || cache.local_len(&ITEM) == 0,
    )
    .await;
    assert_eq!(
        fetch(&cache, &ITEM, 7, &calls, "v2").await,
        item(7, "v2"),
        "{label}"
    );

    // A write behind the library's back (redis-cli, another language): a DEL.
    warm(&cache, &ITEM, 7, "v2").await;
    let redis_key = entry_redis_key(&cache, &ITEM, &key);
    let mut raw = raw_conn_for(label).await.expect("raw connection");
    redis::cmd("DEL")
        .arg(&redis_key)
        .query_async::<()>(&mut raw)
        .await
        .expect("DEL");
    wait_until(
        &format!("{label}: the DEL's invalidation arrives"),
        LIVE,
        || cache.local_len(&ITEM) == 0,
    )
    .await;
    assert_eq!(
        fetch(&cache, &ITEM, 7, &calls, "v3").await,
        item(7, "v3"),
        "{label}"
    );

    // Read your writes: this process's invalidate drops its copy before it returns.
    warm(&cache, &ITEM, 7, "v3").await;
    cache.invalidate(&ITEM, &key).await.expect("invalidate");
    assert_eq!(
        fetch(&cache, &ITEM, 7, &calls, "v4").await,
        item(7, "v4"),
        "{label}"
    );

    // Counters: this process's incr is read back at once; another Cache's arrives.
    let load_views = || async { Ok::<_, std::io::Error>(10) };
    cache.fetch(&VIEWS, &key, load_views).await.expect("views");
    let deadline = std::time::Instant::now() + LIVE;
    while cache.strategy_stats(&VIEWS).local_hits == 0 {
        cache.fetch(&VIEWS, &key, load_views).await.expect("views");
        assert!(
            std::time::Instant::now() < deadline,
            "{label}: no local counter hit"
        );
    }
    assert_eq!(cache.incr(&VIEWS, &key, 1).await.expect("incr"), Some(11));
    assert_eq!(
        cache.fetch(&VIEWS, &key, load_views).await.expect("views"),
        11,
        "{label}"
    );
    other.incr(&VIEWS, &key, 1).await.expect("incr");
    wait_until(
        &format!("{label}: the other Cache's incr arrives"),
        LIVE,
        || cache.local_len(&VIEWS) == 0,
    )
    .await;
    assert_eq!(
        cache.fetch(&VIEWS, &key, load_views).await.expect("views"),
        12,
        "{label}"
    );
}

#[tokio::test]
async fn coherent_on_a_standalone_server() {
    let (cache, prefix) = redis_cache("local_coherent").await;
    let other = Cache::connect(
        CacheConfig::builder()
            .url(support::redis_url())
            .prefix(prefix)
            .build(),
    )
    .await
    .expect("connect");
    coherence("redis", cache, other).await;
}

#[tokio::test]
async fn coherent_on_the_cluster() {
    let (cache, prefix) = cluster_cache("local_coherent_cluster").await;
    let other = Cache::connect(
        CacheConfig::builder()
            .nodes(support::cluster_nodes())
            .prefix(prefix)
            .build(),
    )
    .await
    .expect("connect");
    coherence("cluster", cache, other).await;
}

#[tokio::test]
async fn a_local_copy_never_outlives_the_redis_entry() {
    let (cache, _) = redis_cache("local_ttl").await;
    warm(&cache, &SHORT, 3, "old").await;
    let redis_key = entry_redis_key(&cache, &SHORT, &ItemKey { item_id: 3 });
    let mut raw = support::raw_conn().await;
    // PTTL of an expired key deletes it and says -2.
    let deadline = std::time::Instant::now() + LIVE;
    while support::raw_pttl(&mut raw, &redis_key).await != -2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the entry never expired"
        );
        tokio::task::yield_now().await;
    }
    let calls = AtomicUsize::new(0);
    assert_eq!(
        fetch(&cache, &SHORT, 3, &calls, "new").await,
        item(3, "new")
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the expired entry was served locally"
    );
}

#[tokio::test]
async fn the_embedded_backend_accepts_local_strategies() {
    let cache = Cache::in_memory();
    let calls = AtomicUsize::new(0);
    for _ in 0..3 {
        assert_eq!(fetch(&cache, &ITEM, 1, &calls, "a").await, item(1, "a"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats().local_hits, 0);
    assert!(!cache.local_live());
}
