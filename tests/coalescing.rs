//! One loader per key: concurrent fetches in one process share a load; across `Cache`s on one
//! Redis, a fill lease makes the others wait for the filled value.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cacheobj::{Cache, CacheConfig, CacheKey, Strategy};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, CacheKey)]
struct K {
    id: u64,
}

const HOT: Strategy<String, K> = Strategy::<String, K>::obj("hot:<id>").expire(60);
const SHORT_LEASE: Strategy<String, K> = Strategy::<String, K>::obj("hot:short:<id>")
    .expire(60)
    .lease(Duration::from_millis(300));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cold_fetches_run_one_loader() {
    for (label, cache) in support::backends("coalesce_1000").await {
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let cache = cache.clone();
                let calls = calls.clone();
                tokio::spawn(async move {
                    let stats_of = cache.clone();
                    cache
                        .fetch(&HOT, &K { id: 1 }, || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            // Load until every other fetch has joined this one.
                            support::wait_until(
                                "999 fetches wait for this load",
                                Duration::from_secs(20),
                                || stats_of.stats().coalesced_waits >= 999,
                            )
                            .await;
                            Ok::<_, Infallible>("value".to_string())
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.expect("task").expect("infallible"), "value");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{label}: loader calls");
        let stats = cache.stats();
        assert_eq!(stats.loads, 1, "{label}");
        assert_eq!(stats.coalesced_waits, 999, "{label}: {stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_leader_is_replaced_by_a_waiter() {
    for (label, cache) in support::backends("coalesce_drop").await {
        let (loading_tx, loading_rx) = tokio::sync::oneshot::channel::<()>();
        let leader = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .fetch(&HOT, &K { id: 2 }, || async move {
                        let _ = loading_tx.send(());
                        std::future::pending::<()>().await;
                        Ok::<_, Infallible>("never".to_string())
                    })
                    .await
            })
        };
        loading_rx.await.expect("the leader loads");
        let waits = cache.stats().coalesced_waits;
        let calls = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = (0..10)
            .map(|_| {
                let cache = cache.clone();
                let calls = calls.clone();
                tokio::spawn(async move {
                    cache
                        .fetch(&HOT, &K { id: 2 }, || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            // The successor's load takes a while on purpose (not ordering).
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok::<_, Infallible>("taken over".to_string())
                        })
                        .await
                })
            })
            .collect();
        // Every waiter has joined the leader's load before the leader goes.
        support::wait_until(
            "10 fetches wait for the leader's load",
            Duration::from_secs(20),
            || cache.stats().coalesced_waits >= waits + 10,
        )
        .await;
        leader.abort();
        let started = Instant::now();
        for w in waiters {
            let v = tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("waiters must not hang")
                .expect("task")
                .expect("infallible");
            assert_eq!(v, "taken over", "{label}");
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "{label}: one waiter took over"
        );
        // It inherited the lease: no waiting out the dead leader's lease (3 s).
        assert!(started.elapsed() < Duration::from_secs(2), "{label}");
        let hit = cache
            .fetch(&HOT, &K { id: 2 }, || async {
                Ok::<_, Infallible>("miss".to_string())
            })
            .await
            .expect("infallible");
        assert_eq!(hit, "taken over", "{label}: the successor's fill landed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_loader_releases_every_waiter() {
    for (label, cache) in support::backends("coalesce_fail").await {
        let (loading_tx, loading_rx) = tokio::sync::oneshot::channel::<()>();
        let leader = {
            let cache = cache.clone();
            tokio::spawn(async move {
                let stats_of = cache.clone();
                cache
                    .fetch(&HOT, &K { id: 3 }, || async move {
                        let _ = loading_tx.send(());
                        // Fail only once all ten waiters have joined this load.
                        support::wait_until(
                            "ten fetches wait for this load",
                            Duration::from_secs(10),
                            || stats_of.stats().coalesced_waits >= 10,
                        )
                        .await;
                        Err::<String, _>("database down")
                    })
                    .await
            })
        };
        loading_rx.await.expect("the leader loads");
        let waiters: Vec<_> = (0..10)
            .map(|i| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    cache
                        .fetch(&HOT, &K { id: 3 }, || async move {
                            Ok::<_, &str>(format!("own {i}"))
                        })
                        .await
                })
            })
            .collect();
        assert_eq!(leader.await.expect("task"), Err("database down"), "{label}");
        for (i, w) in waiters.into_iter().enumerate() {
            let v = tokio::time::timeout(Duration::from_secs(2), w)
                .await
                .expect("no waiter hangs")
                .expect("task");
            assert_eq!(
                v,
                Ok(format!("own {i}")),
                "{label}: a waiter runs its own loader"
            );
        }
        // The lease was released: the next fetch loads at once instead of waiting 3 s.
        let started = Instant::now();
        let v = cache
            .fetch(&HOT, &K { id: 3 }, || async {
                Ok::<_, &str>("fresh".to_string())
            })
            .await;
        assert_eq!(v, Ok("fresh".to_string()), "{label}");
        assert!(started.elapsed() < Duration::from_secs(1), "{label}");
    }
}

async fn second_cache(prefix: &str) -> Cache {
    Cache::connect(
        CacheConfig::builder()
            .url(support::redis_url())
            .response_timeout(std::time::Duration::from_secs(2))
            .prefix(prefix)
            .build(),
    )
    .await
    .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_cache_waits_for_the_lease_holders_fill() {
    let (a, prefix) = support::redis_cache("lease_wait").await;
    let b = second_cache(&prefix).await;
    let (loading_tx, loading_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = {
        let a = a.clone();
        let b = b.clone();
        tokio::spawn(async move {
            a.fetch(&HOT, &K { id: 4 }, || async move {
                let _ = loading_tx.send(());
                // Fill only once b has found the lease and waits on it.
                support::wait_until("b waits on the lease", Duration::from_secs(10), || {
                    b.stats().lease_waits >= 1
                })
                .await;
                Ok::<_, Infallible>("from a".to_string())
            })
            .await
        })
    };
    loading_rx.await.expect("a loads under its lease");
    let got = b
        .fetch(&HOT, &K { id: 4 }, || async {
            Ok::<_, Infallible>("from b".to_string())
        })
        .await
        .expect("infallible");
    assert_eq!(got, "from a", "b waits for a's fill instead of loading");
    assert_eq!(holder.await.expect("task").expect("infallible"), "from a");
    let stats = b.stats();
    assert_eq!(stats.loads, 0, "{stats:?}");
    assert_eq!(stats.lease_waits, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_wait_is_bounded_by_the_lease_time() {
    let (a, prefix) = support::redis_cache("lease_timeout").await;
    let b = second_cache(&prefix).await;
    let (loading_tx, loading_rx) = tokio::sync::oneshot::channel::<()>();
    // The lease is set after this instant, so it cannot expire before 300 ms from here.
    let before_lease = Instant::now();
    let _holder = {
        let a = a.clone();
        tokio::spawn(async move {
            a.fetch(&SHORT_LEASE, &K { id: 5 }, || async move {
                let _ = loading_tx.send(());
                // A slow load on purpose, holding the lease past its 300 ms (not ordering).
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok::<_, Infallible>("slow".to_string())
            })
            .await
        })
    };
    loading_rx.await.expect("a loads under its lease");
    let started = Instant::now();
    let got = b
        .fetch(&SHORT_LEASE, &K { id: 5 }, || async {
            Ok::<_, Infallible>("from b".to_string())
        })
        .await
        .expect("infallible");
    let waited = started.elapsed();
    assert_eq!(got, "from b");
    // Redis expires at millisecond precision: allow 2 ms of rounding.
    let since_lease = before_lease.elapsed();
    assert!(
        since_lease >= Duration::from_millis(298),
        "b took over {since_lease:?} after the lease, before it expired"
    );
    assert!(waited < Duration::from_millis(2000), "waited {waited:?}");
    // The holder's lease expired after 300 ms: b took it over, loaded and filled.
    let stats = b.stats();
    assert_eq!((stats.lease_waits, stats.loads), (1, 1), "{stats:?}");
    let cached = b
        .fetch(&SHORT_LEASE, &K { id: 5 }, || async {
            Ok::<_, Infallible>("miss".to_string())
        })
        .await
        .expect("infallible");
    assert_eq!(cached, "from b");
}

/// Waiters get the loaded value as soon as the leader's loader returns: the leader's fill (a
/// round trip, held up here by `CLIENT PAUSE WRITE` on a server of the test's own) does not
/// delay them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_do_not_wait_for_the_leaders_fill() {
    let server = support::RedisServer::start();
    let cache = Cache::connect(
        CacheConfig::builder()
            .url(server.url())
            .prefix(support::unique_prefix("publish"))
            .response_timeout(Duration::from_secs(2))
            .build(),
    )
    .await
    .expect("connect");
    cache.ping().await.expect("redis answers");

    let (loading_tx, loading_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            let v = cache
                .fetch(&HOT, &K { id: 7 }, || async move {
                    let _ = loading_tx.send(());
                    let _ = go_rx.await;
                    Ok::<_, Infallible>("loaded".to_string())
                })
                .await;
            (v, Instant::now())
        })
    };
    loading_rx.await.expect("the leader loads");
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let v = cache
                    .fetch(&HOT, &K { id: 7 }, || async {
                        Ok::<_, Infallible>("own".to_string())
                    })
                    .await;
                (v, Instant::now())
            })
        })
        .collect();
    support::wait_until(
        "ten fetches wait for the load",
        Duration::from_secs(10),
        || cache.stats().coalesced_waits >= 10,
    )
    .await;

    // The fill is a script: a write, held for 500 ms. Reads go on.
    let mut raw = support::raw_conn_to(&server.url()).await;
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(500)
        .arg("WRITE")
        .query_async(&mut raw)
        .await
        .expect("CLIENT PAUSE");
    let loaded = Instant::now();
    go_tx.send(()).expect("the loader waits");

    for w in waiters {
        let (v, at) = w.await.expect("task");
        assert_eq!(v.expect("infallible"), "loaded");
        let after = at - loaded;
        assert!(
            after < Duration::from_millis(250),
            "a waiter got the value {after:?} after the load, i.e. after the leader's fill"
        );
    }
    let (v, at) = leader.await.expect("task");
    assert_eq!(v.expect("infallible"), "loaded");
    assert!(
        at - loaded >= Duration::from_millis(400),
        "the leader's fill was not held up by the pause ({:?}): the test proves nothing",
        at - loaded
    );
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.coalesced_waits), (1, 10), "{stats:?}");
}

/// Fetches that join this process's leader while it polls another `Cache`'s lease share the
/// value its poll finds, however late they join: one that joined after the poll that found it
/// was sent reads again (its lease request finds the filled value) rather than load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_that_join_while_the_leader_polls_another_lease_do_not_load() {
    let (a, prefix) = support::redis_cache("poll_join").await;
    let b = second_cache(&prefix).await;
    let (loading_tx, loading_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = {
        let a = a.clone();
        tokio::spawn(async move {
            a.fetch(&HOT, &K { id: 9 }, || async move {
                let _ = loading_tx.send(());
                let _ = go_rx.await;
                Ok::<_, Infallible>("from a".to_string())
            })
            .await
        })
    };
    loading_rx.await.expect("a loads under its lease");
    let spawn_fetch = |b: &Cache| {
        let b = b.clone();
        tokio::spawn(async move {
            b.fetch(&HOT, &K { id: 9 }, || async {
                Ok::<_, Infallible>("from b".to_string())
            })
            .await
        })
    };
    let mut fetches = vec![spawn_fetch(&b)];
    support::wait_until(
        "b's leader polls a's lease",
        Duration::from_secs(10),
        || b.stats().lease_waits >= 1,
    )
    .await;
    // Join one by one while the leader polls, each after the one before has joined.
    for n in 1..=40 {
        fetches.push(spawn_fetch(&b));
        support::wait_until("the fetch joins", Duration::from_secs(10), || {
            b.stats().coalesced_waits >= n
        })
        .await;
    }
    go_tx.send(()).expect("a's loader waits");
    for f in fetches {
        assert_eq!(f.await.expect("task").expect("infallible"), "from a");
    }
    assert_eq!(holder.await.expect("task").expect("infallible"), "from a");
    let stats = b.stats();
    assert_eq!(stats.loads, 0, "b waited for a's fill: {stats:?}");
}
