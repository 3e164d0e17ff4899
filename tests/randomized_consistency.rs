//! A randomized run of reads, writes and invalidations over a few keys with random delays:
//! at the end no key holds a value older than its last write.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cacheobj::{Cache, CacheKey, Strategy};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, CacheKey)]
struct K {
    id: u64,
}

const ROW: Strategy<u64, K> = Strategy::<u64, K>::obj("row:<id>").expire(60);

const KEYS: u64 = 4;
const TASKS: usize = 16;
const OPS_PER_TASK: usize = 700; // 11,200 operations in all

type Db = Arc<Mutex<HashMap<u64, u64>>>;

fn db_get(db: &Db, id: u64) -> u64 {
    *db.lock().expect("db lock").get(&id).unwrap_or(&0)
}

async fn random_delay() {
    let micros = fastrand::u64(0..1500);
    if micros > 200 {
        tokio::time::sleep(Duration::from_micros(micros)).await;
    } else {
        tokio::task::yield_now().await;
    }
}

async fn run(label: &str, cache: Cache) {
    let db: Db = Arc::new(Mutex::new(HashMap::new()));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let cache = cache.clone();
            let db = db.clone();
            tokio::spawn(async move {
                for _ in 0..OPS_PER_TASK {
                    let id = fastrand::u64(0..KEYS);
                    let key = K { id };
                    match fastrand::u8(0..10) {
                        // Read: the loader reads the row, then takes a while to return it.
                        0..=5 => {
                            let db = db.clone();
                            cache
                                .fetch(&ROW, &key, || async move {
                                    let v = db_get(&db, id);
                                    random_delay().await;
                                    Ok::<_, Infallible>(v)
                                })
                                .await
                                .expect("infallible");
                        }
                        // Write: update the row, then invalidate.
                        6..=8 => {
                            *db.lock().expect("db lock").entry(id).or_insert(0) += 1;
                            random_delay().await;
                            cache.invalidate(&ROW, &key).await.expect("invalidate");
                        }
                        // A bare invalidation.
                        _ => cache.invalidate(&ROW, &key).await.expect("invalidate"),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let mut stale = 0;
    for id in 0..KEYS {
        let last = db_get(&db, id);
        let cached = cache
            .fetch(&ROW, &K { id }, || async { Ok::<_, Infallible>(u64::MAX) })
            .await
            .expect("infallible");
        if cached != u64::MAX && cached != last {
            stale += 1;
            eprintln!("{label}: key {id} holds {cached}, last write made it {last}");
        }
    }
    let stats = cache.stats();
    println!(
        "{label}: {} operations, stale values at the end: {stale}, rejected stale fills: {}, stats: {stats:?}",
        TASKS * OPS_PER_TASK,
        stats.stale_fills_rejected
    );
    assert_eq!(stale, 0, "{label}: stale values at the end");
    assert_eq!(stats.errors, 0, "{label}: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_operations_leave_nothing_stale() {
    for (label, cache) in support::backends("randomized").await {
        run(label, cache).await;
    }
}
