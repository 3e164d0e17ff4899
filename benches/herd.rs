//! What the herd protections cost and save, printed (run: `cargo bench --bench herd`).
//!
//! 1. Waiters' latency: 1000 concurrent fetches of a cold key with a 100 ms loader; each
//!    waiter's latency relative to the loader's time, and the loader calls.
//! 2. The cost leases add to a miss: a cacheobj miss (GET, lease script, fill script: three
//!    round trips) against a hand-written miss without a lease (GET, then SET EX: two), with
//!    the same MessagePack value and an instant loader, interleaved over several rounds.
//!
//! Starts its own throwaway redis-server.

#[path = "../tests/support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cacheobj::{Cache, CacheConfig};
use cacheobj_strategies::{Item, ItemKey, ITEM};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn item(id: u64) -> Item {
    Item {
        id,
        name: format!("item number {id}"),
    }
}

async fn waiters(cache: &Cache) {
    const LOADER: Duration = Duration::from_millis(100);
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let cache = cache.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                cache
                    .fetch(&ITEM, &ItemKey { item_id: 7 }, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(LOADER).await;
                        Ok::<_, Infallible>(item(7))
                    })
                    .await
                    .expect("infallible");
                started.elapsed()
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(1000);
    for t in tasks {
        lat.push(t.await.expect("task"));
    }
    lat.sort();
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    println!(
        "herd: 1000 concurrent cold fetches, 100 ms loader: loader calls {}, p50 {:.1} ms, p99 {:.1} ms",
        calls.load(Ordering::SeqCst),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    println!(
        "ratio herd_waiter_p50_vs_loader {:.3}",
        p50.as_secs_f64() / LOADER.as_secs_f64()
    );
    println!(
        "ratio herd_waiter_p99_vs_loader {:.3}",
        p99.as_secs_f64() / LOADER.as_secs_f64()
    );
}

async fn miss_costs(cache: &Cache, raw: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    const N: u64 = 2000;
    const ROUNDS: u64 = 5;
    let mut leased = Vec::new();
    let mut plain = Vec::new();
    let mut next = 1_000_000u64;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..N {
            next += 1;
            cache
                .fetch(&ITEM, &ItemKey { item_id: next }, || async move {
                    Ok::<_, Infallible>(item(next))
                })
                .await
                .expect("infallible");
        }
        leased.push(started.elapsed() / N as u32);

        let started = Instant::now();
        for _ in 0..N {
            next += 1;
            let key = format!("{prefix}plain:{next}");
            let hit: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&key)
                .query_async(raw)
                .await
                .expect("GET");
            assert!(hit.is_none());
            let bytes = rmp_serde::to_vec_named(&item(next)).expect("encode");
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(bytes)
                .arg("EX")
                .arg(86400)
                .query_async(raw)
                .await
                .expect("SET");
        }
        plain.push(started.elapsed() / N as u32);
    }
    leased.sort();
    plain.sort();
    let (l, p) = (leased[leased.len() / 2], plain[plain.len() / 2]);
    println!(
        "miss: cacheobj with lease {:.1} us (3 round trips: GET, lease, fill) vs hand-written GET + SET EX {:.1} us (2 round trips); medians of {ROUNDS} rounds of {N}",
        l.as_secs_f64() * 1e6,
        p.as_secs_f64() * 1e6
    );
    println!(
        "ratio miss_with_lease_vs_plain {:.3}",
        l.as_secs_f64() / p.as_secs_f64()
    );
    let stats = cache.stats();
    println!(
        "stats: misses {} loads {} stale_fills_rejected {}",
        stats.misses, stats.loads, stats.stale_fills_rejected
    );
}

fn main() {
    let server = support::RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let prefix = support::unique_prefix("bench_herd");
        let cache = Cache::connect(
            CacheConfig::builder()
                .url(server.url())
                .prefix(prefix.clone())
                .build(),
        )
        .await
        .expect("connect");
        cache.ping().await.expect("redis answers");
        let mut raw = support::raw_conn_to(&server.url()).await;
        waiters(&cache).await;
        miss_costs(&cache, &mut raw, &prefix).await;
    });
    drop(server);
}
