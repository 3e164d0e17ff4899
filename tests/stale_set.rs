//! No stale set: a fill whose load began before an invalidation (or any other write to the
//! entry) never lands. Deterministic interleavings: the reader's loader blocks on a signal
//! while the writer changes the database and invalidates, then the reader's fill arrives last.

mod support;

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;

use cacheobj::{Cache, CacheKey, CacheValue, Counter, Hash, Kind, List, Set, Strategy};
use serde::Serialize;
use tokio::sync::oneshot;

#[derive(Debug, Clone, Serialize, CacheKey)]
struct K {
    id: u64,
}

const OBJ: Strategy<String, K> = Strategy::<String, K>::obj("stale:obj:<id>").expire(60);
const COUNT: Strategy<i64, K, Counter> = Strategy::counter("stale:count:<id>").expire(60);
const LIST: Strategy<Vec<u64>, K, List> = Strategy::list("stale:list:<id>").expire(60);
const SET: Strategy<Vec<String>, K, Set> = Strategy::set("stale:set:<id>").expire(60);
const HASH: Strategy<String, K, Hash> = Strategy::hash("stale:hash", "<id>").expire(60);

/// Reader misses and loads `v1` (blocked); meanwhile `write` runs (the database now says `v2`,
/// and the cache is told); then the reader's fill arrives. The cache must not hold `v1`.
async fn race<V, Kd, W, WF>(
    label: &str,
    cache: &Cache,
    s: Strategy<V, K, Kd>,
    v1: V,
    v2: V,
    write: W,
) where
    V: CacheValue<Kd> + Clone + PartialEq + Debug + Send + 'static,
    Kd: Kind,
    W: FnOnce() -> WF,
    WF: Future<Output = ()>,
{
    let key = K { id: 1 };
    let before = cache.stats().stale_fills_rejected;
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let reader = {
        let cache = cache.clone();
        let key = key.clone();
        let v1 = v1.clone();
        tokio::spawn(async move {
            cache
                .fetch(&s, &key, move || async move {
                    let _ = started_tx.send(());
                    let _ = release_rx.await;
                    Ok::<_, Infallible>(v1)
                })
                .await
        })
    };
    started_rx.await.expect("reader started loading");
    write().await;
    release_tx.send(()).expect("reader waits for the signal");
    let loaded = reader.await.expect("reader task").expect("infallible");
    assert_eq!(loaded, v1, "{label}: the reader returns what it loaded");

    let after = cache
        .fetch(&s, &key, || async { Ok::<_, Infallible>(v2.clone()) })
        .await
        .expect("infallible");
    assert_eq!(after, v2, "{label}: the stale fill must not have landed");
    assert_eq!(
        cache.stats().stale_fills_rejected,
        before + 1,
        "{label}: the rejected fill is counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_beats_a_slow_obj_fill() {
    for (label, cache) in support::backends("stale_obj").await {
        let c = cache.clone();
        race(
            label,
            &cache,
            OBJ,
            "v1".to_string(),
            "v2".to_string(),
            || async move {
                c.invalidate(&OBJ, &K { id: 1 }).await.expect("invalidate");
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_after_beats_a_slow_obj_fill() {
    for (label, cache) in support::backends("stale_obj_after").await {
        let c = cache.clone();
        race(
            label,
            &cache,
            OBJ,
            "v1".to_string(),
            "v2".to_string(),
            || async move {
                let written = c
                    .invalidate_after(&OBJ, &K { id: 1 }, || async {
                        Ok::<_, cacheobj::Error>(())
                    })
                    .await
                    .expect("write");
                assert!(written.is_invalidated(), "{:?}", written.invalidation());
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incr_beats_a_slow_counter_fill() {
    for (label, cache) in support::backends("stale_counter").await {
        let c = cache.clone();
        race(label, &cache, COUNT, 10, 11, || async move {
            // The count is being loaded: not cached, so incr says None, and kills the load's fill.
            let n = c.incr(&COUNT, &K { id: 1 }, 1).await.expect("incr");
            assert_eq!(n, None, "{label}: a counter being loaded is not cached");
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_counter_beats_a_slow_counter_fill() {
    for (label, cache) in support::backends("stale_set_counter").await {
        let c = cache.clone();
        // set_counter writes 11 itself; the stale fill of 10 must not replace it.
        let key = K { id: 1 };
        let (started_tx, started_rx) = oneshot::channel::<()>();
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let reader = {
            let cache = cache.clone();
            let key = key.clone();
            tokio::spawn(async move {
                cache
                    .fetch(&COUNT, &key, move || async move {
                        let _ = started_tx.send(());
                        let _ = release_rx.await;
                        Ok::<_, Infallible>(10)
                    })
                    .await
            })
        };
        started_rx.await.expect("reader started");
        c.set_counter(&COUNT, &key, 11).await.expect("set_counter");
        release_tx.send(()).expect("reader waits");
        assert_eq!(reader.await.expect("task").expect("infallible"), 10);
        assert_eq!(
            cache.get_counter(&COUNT, &key).await.expect("get_counter"),
            Some(11),
            "{label}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_push_beats_a_slow_list_fill() {
    for (label, cache) in support::backends("stale_list").await {
        let c = cache.clone();
        race(
            label,
            &cache,
            LIST,
            vec![1, 2],
            vec![1, 2, 3],
            || async move {
                let n = c.list_push(&LIST, &K { id: 1 }, &[3]).await.expect("push");
                assert_eq!(n, None, "{label}: a list being loaded is not cached");
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_add_beats_a_slow_set_fill() {
    for (label, cache) in support::backends("stale_set").await {
        let c = cache.clone();
        race(
            label,
            &cache,
            SET,
            vec!["a".to_string()],
            vec!["b".to_string()],
            || async move {
                let n = c
                    .set_add(&SET, &K { id: 1 }, &["b".to_string()])
                    .await
                    .expect("add");
                assert_eq!(n, None, "{label}: a set being loaded is not cached");
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_del_beats_a_slow_hash_fill() {
    for (label, cache) in support::backends("stale_hash").await {
        let c = cache.clone();
        race(
            label,
            &cache,
            HASH,
            "v1".to_string(),
            "v2".to_string(),
            || async move {
                c.hash_del(&HASH, &K { id: 1 }).await.expect("hash_del");
            },
        )
        .await;
    }
}

/// The writer is another process: a second `Cache` on the same Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_from_another_cache_beats_a_slow_fill() {
    let (reader_cache, prefix) = support::redis_cache("stale_other_cache").await;
    let writer = Cache::connect(
        cacheobj::CacheConfig::builder()
            .url(support::redis_url())
            .response_timeout(std::time::Duration::from_secs(2))
            .prefix(prefix)
            .build(),
    )
    .await
    .expect("connect");
    race(
        "redis",
        &reader_cache,
        OBJ,
        "v1".to_string(),
        "v2".to_string(),
        || async move {
            writer
                .invalidate(&OBJ, &K { id: 1 })
                .await
                .expect("invalidate");
        },
    )
    .await;
}
