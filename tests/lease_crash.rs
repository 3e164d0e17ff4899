//! A lease holder that dies mid-load delays others by at most the lease time. The test binary
//! spawns itself as the holder process, then kills it.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use cacheobj::{Cache, CacheConfig, CacheKey, Strategy};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, CacheKey)]
struct K {
    id: u64,
}

const ENTRY: Strategy<String, K> = Strategy::<String, K>::obj("crash:<id>")
    .expire(60)
    .lease(Duration::from_secs(1));

const HOLDER_PREFIX: &str = "CACHEOBJ_LEASE_HOLDER_PREFIX";

async fn cache(prefix: &str) -> Cache {
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

async fn holds_lease(cache: &Cache) -> bool {
    let key = support::entry_redis_key(cache, &ENTRY, &K { id: 1 });
    support::lease_under(&support::redis_url(), &key).await.0
}

/// As a child of the crash test: takes the lease with a load that never ends, and waits to be
/// killed. Alone: checks that a cancelled load with no one waiting releases its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_lease_until_killed() {
    let as_holder = std::env::var(HOLDER_PREFIX).ok();
    let prefix = as_holder
        .clone()
        .unwrap_or_else(|| support::unique_prefix("lease_holder"));
    let cache = cache(&prefix).await;
    let load = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .fetch(&ENTRY, &K { id: 1 }, || async {
                    std::future::pending::<()>().await;
                    Ok::<_, std::convert::Infallible>("never".to_string())
                })
                .await
        })
    };
    if as_holder.is_some() {
        let _ = load.await;
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !holds_lease(&cache).await {
        assert!(Instant::now() < deadline, "the load never took the lease");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    load.abort();
    let deadline = Instant::now() + Duration::from_millis(500);
    while holds_lease(&cache).await {
        assert!(
            Instant::now() < deadline,
            "a cancelled load with no waiters must release its lease"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_delays_others_by_at_most_the_lease_time() {
    let prefix = support::unique_prefix("lease_crash");
    let exe = std::env::current_exe().expect("test binary path");
    let mut holder = Command::new(exe)
        .args(["hold_lease_until_killed", "--exact", "--nocapture"])
        .env(HOLDER_PREFIX, &prefix)
        .spawn()
        .expect("spawn holder");
    let cache = cache(&prefix).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !holds_lease(&cache).await {
        assert!(Instant::now() < deadline, "the holder never took the lease");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    holder.kill().expect("kill holder");
    holder.wait().expect("reap holder");

    let started = Instant::now();
    let v = cache
        .fetch(&ENTRY, &K { id: 1 }, || async {
            Ok::<_, std::convert::Infallible>("survivor".to_string())
        })
        .await
        .expect("infallible");
    let waited = started.elapsed();
    println!("waited {waited:?} for a dead holder's 1 s lease");
    assert_eq!(v, "survivor");
    assert!(waited <= Duration::from_millis(1300), "waited {waited:?}");
    assert_eq!(cache.stats().lease_waits, 1);
    let hit = cache
        .fetch(&ENTRY, &K { id: 1 }, || async {
            Ok::<_, std::convert::Infallible>("miss".to_string())
        })
        .await
        .expect("infallible");
    assert_eq!(hit, "survivor", "the survivor's fill landed");
}
