//! One loader per key across processes: four processes of 250 concurrent fetches each of one
//! cold key run the loader once in all, counted in Redis. The test binary spawns itself as the
//! worker processes.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use cacheobj::{Cache, CacheConfig, CacheKey, Strategy};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, CacheKey)]
struct K {
    id: u64,
}

const HOT: Strategy<String, K> = Strategy::<String, K>::obj("herd:<id>").expire(60);

/// Set in worker processes: the key prefix they share.
const WORKER_PREFIX: &str = "CACHEOBJ_HERD_PREFIX";
/// Set in worker processes: how many workers there are. Each starts fetching once all of
/// them are connected (a count in Redis), so all fetch at once.
const WORKER_COUNT: &str = "CACHEOBJ_HERD_WORKERS";

/// Counts this worker as ready in Redis, then waits until all `workers` are.
async fn start_line(prefix: &str, workers: i64) {
    let mut conn = support::raw_conn().await;
    let ready = format!("{prefix}workers_ready");
    let _: i64 = redis::cmd("INCR")
        .arg(&ready)
        .query_async(&mut conn)
        .await
        .expect("INCR workers_ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    loop {
        let n: Option<i64> = redis::cmd("GET")
            .arg(&ready)
            .query_async(&mut conn)
            .await
            .expect("GET workers_ready");
        if n.unwrap_or(0) >= workers {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {n:?} of {workers} worker processes were ready after 30 s"
        );
        tick.tick().await;
    }
}

async fn loader_calls(prefix: &str) -> i64 {
    let mut conn = support::raw_conn().await;
    let n: Option<i64> = redis::cmd("GET")
        .arg(format!("{prefix}loader_calls"))
        .query_async(&mut conn)
        .await
        .expect("GET loader_calls");
    n.unwrap_or(0)
}

/// 250 concurrent fetches of one cold key with a 100 ms loader that counts its calls in Redis.
/// Alone, it checks that they ran one loader; as a worker of
/// `four_processes_share_one_load`, the parent checks the total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_250_fetches() {
    let worker_prefix = std::env::var(WORKER_PREFIX).ok();
    let prefix = worker_prefix
        .clone()
        .unwrap_or_else(|| support::unique_prefix("herd_worker"));
    let cache = Cache::connect(
        CacheConfig::builder()
            .url(support::redis_url())
            .response_timeout(std::time::Duration::from_secs(2))
            .prefix(prefix.clone())
            .build(),
    )
    .await
    .expect("connect");
    cache.ping().await.expect("redis answers");
    if let Some(workers) = std::env::var(WORKER_COUNT)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
    {
        start_line(&prefix, workers).await;
    }
    let counter = format!("{prefix}loader_calls");
    let tasks: Vec<_> = (0..250)
        .map(|_| {
            let cache = cache.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                cache
                    .fetch(&HOT, &K { id: 1 }, || async move {
                        let mut conn = support::raw_conn().await;
                        let _: i64 = redis::cmd("INCR")
                            .arg(&counter)
                            .query_async(&mut conn)
                            .await
                            .expect("INCR");
                        // A 100 ms load on purpose, so the herd piles up (not ordering).
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, std::convert::Infallible>("value".to_string())
                    })
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task").expect("infallible"), "value");
    }
    println!("worker stats: {:?}", cache.stats());
    if worker_prefix.is_none() {
        assert_eq!(loader_calls(&prefix).await, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_one_load() {
    let prefix = support::unique_prefix("herd_procs");
    let exe = std::env::current_exe().expect("test binary path");
    let workers = 4;
    let children: Vec<_> = (0..workers)
        .map(|_| {
            Command::new(&exe)
                .args(["worker_250_fetches", "--exact", "--nocapture"])
                .env(WORKER_PREFIX, &prefix)
                .env(WORKER_COUNT, workers.to_string())
                .spawn()
                .expect("spawn worker process")
        })
        .collect();
    for mut child in children {
        let status = child.wait().expect("worker exit");
        assert!(status.success(), "a worker process failed: {status}");
    }
    let calls = loader_calls(&prefix).await;
    println!("loader calls across 4 processes x 250 fetches: {calls}");
    assert_eq!(calls, 1);
}
