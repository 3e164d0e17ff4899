//! Hot keys need never miss: early refresh (XFetch) reloads a value before it expires while
//! readers keep getting the current one; TTL jitter spreads expiries.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cacheobj::{CacheKey, Strategy};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, CacheKey)]
struct K {
    id: u64,
}

const HOT: Strategy<u64, K> = Strategy::<u64, K>::obj("xfetch:<id>")
    .expire(1)
    .early_refresh(Duration::from_millis(300));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_is_refreshed_before_it_expires() {
    for (label, cache) in support::backends("early_refresh").await {
        let version = Arc::new(AtomicU64::new(1));
        let loads = Arc::new(AtomicU64::new(0));
        let load = || {
            let version = version.clone();
            let loads = loads.clone();
            move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(version.load(Ordering::SeqCst))
            }
        };
        assert_eq!(cache.fetch(&HOT, &K { id: 1 }, load()).await.unwrap(), 1);
        version.store(2, Ordering::SeqCst);
        // Read the hot key every 10 ms for 2.5 s: past two expiries of the 1 s TTL.
        let started = Instant::now();
        let mut saw_new = false;
        while started.elapsed() < Duration::from_millis(2500) {
            let v = cache.fetch(&HOT, &K { id: 1 }, load()).await.unwrap();
            saw_new |= v == 2;
            // The read rate of a hot key, not ordering: the loop runs by the clock (2.5 s).
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stats = cache.stats();
        assert!(saw_new, "{label}: the refresh brought the new value");
        assert!(stats.early_refreshes >= 2, "{label}: {stats:?}");
        // Every load was an early refresh, apart from the first fill: the key never missed.
        assert_eq!(stats.misses, 1, "{label}: {stats:?}");
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1 + stats.early_refreshes,
            "{label}"
        );
    }
}
