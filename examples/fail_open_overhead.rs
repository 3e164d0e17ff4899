//! Measures what failing open costs: per-fetch latency with Redis up (all misses), stopped and
//! frozen (SIGSTOP), against calling the loader directly. Starts its own throwaway
//! `redis-server` (never the machine's); needs `redis-server` on PATH or `CACHEOBJ_REDIS_SERVER`.
//!
//! ```text
//! cargo run --release --example fail_open_overhead
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use cacheobj::{Cache, CacheConfig};
use cacheobj_strategies::{Item, ItemKey, ITEM};
use support::RedisServer;

/// Fetches per phase.
const N: u64 = 500;
/// What the loader costs.
const LOADER: Duration = Duration::from_millis(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(100);
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Stands in for a 1 ms database query.
async fn load(id: u64) -> Result<Item, Infallible> {
    tokio::time::sleep(LOADER).await;
    Ok(Item {
        id,
        name: format!("item #{id}"),
    })
}

struct Summary {
    p50: Duration,
    p99: Duration,
    max: Duration,
    mean: Duration,
    over_50ms: usize,
}

fn summarize(mut samples: Vec<Duration>) -> Summary {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let total: Duration = samples.iter().sum();
    Summary {
        p50: at(0.50),
        p99: at(0.99),
        max: *samples.last().expect("no samples"),
        mean: total / samples.len() as u32,
        over_50ms: samples
            .iter()
            .filter(|d| **d > Duration::from_millis(50))
            .count(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}ms", d.as_secs_f64() * 1e3)
}

fn print_phase(name: &str, s: &Summary) {
    println!(
        "phase {name:<16} n={N} p50={} p99={} max={} mean={} over_50ms={}",
        ms(s.p50),
        ms(s.p99),
        ms(s.max),
        ms(s.mean),
        s.over_50ms
    );
}

fn print_ratio(name: &str, s: &Summary, base: &Summary) {
    println!(
        "ratio {name} p50={:.3} mean={:.3}",
        s.p50.as_secs_f64() / base.p50.as_secs_f64(),
        s.mean.as_secs_f64() / base.mean.as_secs_f64()
    );
}

/// `N` fetches of distinct keys starting at `first`; every one must return the loader's value.
async fn fetch_phase(cache: &Cache, first: u64) -> Summary {
    let mut samples = Vec::with_capacity(N as usize);
    for id in first..first + N {
        let start = Instant::now();
        let item = match cache
            .fetch(&ITEM, &ItemKey { item_id: id }, || load(id))
            .await
        {
            Ok(item) => item,
            Err(never) => match never {},
        };
        samples.push(start.elapsed());
        assert_eq!(item.id, id);
    }
    summarize(samples)
}

async fn loader_phase() -> Summary {
    let mut samples = Vec::with_capacity(N as usize);
    for id in 0..N {
        let start = Instant::now();
        let item = match load(id).await {
            Ok(item) => item,
            Err(never) => match never {},
        };
        samples.push(start.elapsed());
        assert_eq!(item.id, id);
    }
    summarize(samples)
}

/// Waits until a fetch fills and the next one is a hit.
async fn wait_for_caching(cache: &Cache, id: u64) -> Duration {
    let start = Instant::now();
    loop {
        let hits = cache.stats().hits;
        let _ = cache
            .fetch(&ITEM, &ItemKey { item_id: id }, || load(id))
            .await;
        let _ = cache
            .fetch(&ITEM, &ItemKey { item_id: id }, || load(id))
            .await;
        if cache.stats().hits > hits {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "caching did not resume within 10 s: {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut server = RedisServer::start();
    let config = CacheConfig::builder()
        .url(server.url())
        .prefix("fail_open_overhead:")
        .response_timeout(RESPONSE_TIMEOUT)
        .retry_interval(RETRY_INTERVAL)
        .build();
    let cache = Cache::connect(config).await?;
    println!(
        "fail_open_overhead: redis-server on {}, response_timeout={RESPONSE_TIMEOUT:?}, retry_interval={RETRY_INTERVAL:?}, loader={LOADER:?}, {N} fetches per phase",
        server.url()
    );
    cache.ping().await?;
    wait_for_caching(&cache, u64::MAX).await;

    // (a) Redis up, every fetch a miss: GET, lease, loader, fill.
    let up = fetch_phase(&cache, 0).await;
    // (b) The loader alone.
    let base = loader_phase().await;

    // (c) Redis stopped (SIGKILL): refused connections, breaker open most of the time.
    tokio::task::block_in_place(|| server.stop());
    let errors = cache.stats().errors;
    let stopped = fetch_phase(&cache, 10_000).await;
    let stopped_errors = cache.stats().errors - errors;

    tokio::task::block_in_place(|| server.restart());
    let resumed = wait_for_caching(&cache, u64::MAX - 1).await;

    // (d) Redis frozen (SIGSTOP): requests time out after the response timeout.
    server.pause();
    let errors = cache.stats().errors;
    let paused = fetch_phase(&cache, 20_000).await;
    let paused_errors = cache.stats().errors - errors;
    server.resume();

    print_phase("redis_up_miss", &up);
    print_phase("loader_only", &base);
    print_phase("redis_stopped", &stopped);
    print_phase("redis_paused", &paused);
    print_ratio("up_miss_vs_loader", &up, &base);
    print_ratio("stopped_vs_loader", &stopped, &base);
    print_ratio("paused_vs_loader", &paused, &base);
    println!(
        "worst_case paused={} (bound: response_timeout {} + loader); stopped={}",
        ms(paused.max),
        ms(RESPONSE_TIMEOUT),
        ms(stopped.max)
    );
    println!(
        "errors stopped={stopped_errors} paused={paused_errors}; caching resumed {} after restart",
        ms(resumed)
    );
    println!("stats {:?}", cache.stats());
    Ok(())
}
