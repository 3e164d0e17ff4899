//! A write that committed is never reported as failed, and its invalidation is not forgotten
//! (#10): when Redis is down, `invalidate_after` returns the write's value with the cache's
//! error, queues the invalidation, and retries it until it lands; this process does not read
//! the entry from Redis before then. The server here persists every write (AOF, fsync always),
//! so a restart brings the stale entry back, as a real outage would leave it.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cacheobj::{Cache, CacheConfig, CacheKey, Error, Hash, Invalidation, Strategy};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, CacheKey)]
struct K {
    id: u64,
}

const ROW: Strategy<String, K> = Strategy::<String, K>::obj("retry:row:<id>").expire(3600);
const FIELD: Strategy<String, K, Hash> = Strategy::hash("retry:rows", "<id>").expire(3600);

async fn cache_on(server: &support::RedisServer, prefix: &str, opt_in: bool) -> Cache {
    let cache = Cache::connect(
        CacheConfig::builder()
            .url(server.url())
            .prefix(prefix.to_string())
            .response_timeout(Duration::from_millis(300))
            .retry_interval(Duration::from_millis(100))
            .queue_failed_invalidations(opt_in)
            .build(),
    )
    .await
    .expect("connect");
    cache.ping().await.expect("redis answers");
    cache
}

async fn raw_get(url: &str, key: &[u8]) -> Option<Vec<u8>> {
    let mut conn = support::raw_conn_to(url).await;
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET")
}

/// The whole story of the issue: cache a row, stop Redis, update the row, restart Redis with
/// the old entry still in it. The write's value comes back with the error; no read, before
/// or after the restart, returns the old row; the queue lands the invalidation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_write_survives_an_outage_and_its_invalidation_lands_after_it() {
    let mut server = support::RedisServer::start_persistent();
    let prefix = support::unique_prefix("retry_story");
    let cache = cache_on(&server, &prefix, false).await;
    let db = Arc::new(std::sync::Mutex::new(String::from("old")));
    let load = || {
        let db = db.clone();
        move || async move { Ok::<_, Infallible>(db.lock().expect("db").clone()) }
    };
    let key = K { id: 1 };
    assert_eq!(cache.fetch(&ROW, &key, load()).await.unwrap(), "old");
    let entry = support::entry_redis_key(&cache, &ROW, &key);
    assert!(raw_get(&server.url(), &entry).await.is_some(), "cached");

    server.stop();
    let written = {
        let db = db.clone();
        cache
            .invalidate_after(&ROW, &key, || async move {
                *db.lock().expect("db") = String::from("new");
                Ok::<u64, Infallible>(1) // rows affected
            })
            .await
            .expect("the write itself succeeded")
    };
    assert!(!written.is_invalidated());
    assert!(
        matches!(written.invalidation(), Invalidation::Queued(e) if e.is_unavailable()),
        "{:?}",
        written.invalidation()
    );
    assert_eq!(*written.value(), 1, "the write's own value is kept");
    assert_eq!(cache.stats().invalidations_queued, 1);

    // While Redis is down: fail-open, from the database.
    assert_eq!(cache.fetch(&ROW, &key, load()).await.unwrap(), "new");

    server.restart();
    // The old entry is back in Redis (the server persisted it), unless the queue's retry
    // already landed; either way this process never reads it.
    let decoded =
        |b: Option<Vec<u8>>| b.map(|b| rmp_serde::from_slice::<String>(&b).expect("msgpack"));
    let stale = decoded(raw_get(&server.url(), &entry).await);
    assert!(
        stale.as_deref() == Some("old") || cache.stats().invalidations_retried >= 1,
        "the restart did not bring the old entry back ({stale:?}): the test proves nothing"
    );
    for _ in 0..20 {
        assert_eq!(cache.fetch(&ROW, &key, load()).await.unwrap(), "new");
    }
    support::wait_until(
        "the queued invalidation lands",
        Duration::from_secs(20),
        || cache.stats().invalidations_retried >= 1,
    )
    .await;
    let after = decoded(raw_get(&server.url(), &entry).await);
    assert_ne!(
        after.as_deref(),
        Some("old"),
        "the stale entry outlived the retry"
    );
    // Another process (a fresh Cache) now sees the new row too.
    let other = cache_on(&server, &prefix, false).await;
    assert_eq!(other.fetch(&ROW, &key, load()).await.unwrap(), "new");
    let stats = cache.stats();
    assert_eq!(stats.invalidations_dropped, 0, "{stats:?}");
    println!("restart: entry before retry {stale:?}, stats {stats:?}");
}

/// A write that fails is its own error, and nothing is invalidated or queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_its_own_error() {
    let (cache, _) = support::redis_cache("retry_write_fails").await;
    let got = cache
        .invalidate_after(&ROW, &K { id: 2 }, || async {
            Err::<u64, std::io::Error>(std::io::Error::other("constraint violated"))
        })
        .await;
    let err = got.expect_err("the write failed");
    assert_eq!(err.to_string(), "constraint violated");
    assert_eq!(cache.stats().invalidations_queued, 0);
}

/// Opted in, `invalidate`, `invalidate_many` and `hash_del` queue their failures too, and say
/// so in their error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opted_in_invalidations_are_queued_and_land_after_a_restart() {
    let mut server = support::RedisServer::start_persistent();
    let prefix = support::unique_prefix("retry_opt_in");
    let cache = cache_on(&server, &prefix, true).await;
    let value = |v: &'static str| move || async move { Ok::<_, Infallible>(v.to_string()) };
    for id in 1..=3 {
        cache.fetch(&ROW, &K { id }, value("old")).await.unwrap();
    }
    cache
        .fetch(&FIELD, &K { id: 1 }, value("old"))
        .await
        .unwrap();

    server.stop();
    let queued = |r: Result<(), Error>| matches!(r, Err(Error::InvalidationQueued(_)));
    assert!(queued(cache.invalidate(&ROW, &K { id: 1 }).await));
    assert!(queued(
        cache
            .invalidate_many(&ROW, &[K { id: 2 }, K { id: 3 }])
            .await
    ));
    assert!(queued(cache.hash_del(&FIELD, &K { id: 1 }).await));
    assert_eq!(cache.stats().invalidations_queued, 4);

    server.restart();
    support::wait_until(
        "the four queued invalidations land",
        Duration::from_secs(20),
        || cache.stats().invalidations_retried >= 4,
    )
    .await;
    let other = cache_on(&server, &prefix, false).await;
    for id in 1..=3 {
        assert_eq!(
            other.fetch(&ROW, &K { id }, value("new")).await.unwrap(),
            "new"
        );
    }
    assert_eq!(
        other
            .fetch(&FIELD, &K { id: 1 }, value("new"))
            .await
            .unwrap(),
        "new"
    );
}

/// Without the opt-in, `invalidate` returns the plain error and queues nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_opt_in_invalidate_only_reports() {
    let mut server = support::RedisServer::start();
    let cache = cache_on(&server, &support::unique_prefix("retry_no_opt_in"), false).await;
    server.stop();
    let err = cache
        .invalidate(&ROW, &K { id: 1 })
        .await
        .expect_err("redis is down");
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!(cache.stats().invalidations_queued, 0);
}

/// A full queue does not grow: the invalidation is not retried, the result says so, and
/// `stats().invalidations_dropped` counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts() {
    let mut server = support::RedisServer::start();
    let cache = Cache::connect(
        CacheConfig::builder()
            .url(server.url())
            .prefix(support::unique_prefix("retry_full"))
            .response_timeout(Duration::from_millis(300))
            .invalidation_queue(1)
            .build(),
    )
    .await
    .expect("connect");
    server.stop();
    let writes = AtomicU64::new(0);
    let write = || async {
        writes.fetch_add(1, Ordering::SeqCst);
        Ok::<_, Infallible>(())
    };
    let first = cache
        .invalidate_after(&ROW, &K { id: 1 }, write)
        .await
        .unwrap();
    assert!(matches!(first.invalidation(), Invalidation::Queued(_)));
    let second = cache
        .invalidate_after(&ROW, &K { id: 2 }, write)
        .await
        .unwrap();
    assert!(
        matches!(second.invalidation(), Invalidation::NotRetried(_)),
        "{:?}",
        second.invalidation()
    );
    assert_eq!(writes.load(Ordering::SeqCst), 2, "both writes ran once");
    let stats = cache.stats();
    assert_eq!(
        (stats.invalidations_queued, stats.invalidations_dropped),
        (1, 1),
        "{stats:?}"
    );
}
