//! Batch operations: `fetch_many` reads every key in one round trip, calls the loader once with
//! only the missing keys, and fills them; `invalidate_many`.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cacheobj::{BatchError, CacheKey, Counter, Hash, Strategy};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, CacheKey)]
struct K {
    id: u64,
}

const NAME: Strategy<String, K> = Strategy::<String, K>::obj("batch:name:<id>").expire(60);
const MAYBE: Strategy<Option<String>, K> = Strategy::<Option<String>, K>::obj("batch:maybe:<id>")
    .expire(600)
    .negative_expire(30);
const HNAME: Strategy<String, K, Hash> = Strategy::hash("batch:h", "<id>").expire(60);
const COUNT: Strategy<i64, K, Counter> = Strategy::counter("batch:count:<id>").expire(60);

fn keys(ids: &[u64]) -> Vec<K> {
    ids.iter().map(|&id| K { id }).collect()
}

#[tokio::test]
async fn fetch_many_loads_only_the_missing_keys_once_in_order() {
    for (label, cache) in support::backends("batch_order").await {
        cache
            .fetch(&NAME, &K { id: 2 }, || async {
                Ok::<_, cacheobj::Error>("cached 2".to_string())
            })
            .await
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let calls = seen.clone();
        let got = cache
            .fetch_many(&NAME, &keys(&[3, 2, 1, 3]), |missing: Vec<K>| async move {
                calls.lock().unwrap().push(missing.clone());
                Ok::<_, cacheobj::Error>(
                    missing.iter().map(|k| format!("loaded {}", k.id)).collect(),
                )
            })
            .await
            .unwrap();
        assert_eq!(
            got,
            ["loaded 3", "cached 2", "loaded 1", "loaded 3"],
            "{label}"
        );
        assert_eq!(
            *seen.lock().unwrap(),
            vec![keys(&[3, 1])],
            "{label}: one call, missing keys only"
        );
        let again = cache
            .fetch_many(&NAME, &keys(&[1, 2, 3]), |_: Vec<K>| async {
                Err::<Vec<String>, _>(cacheobj::Error::InvalidArgument("must not load"))
            })
            .await
            .unwrap();
        assert_eq!(
            again,
            ["loaded 1", "cached 2", "loaded 3"],
            "{label}: all filled"
        );
    }
}

#[tokio::test]
async fn fetch_many_caches_not_found_with_the_negative_ttl() {
    for (label, cache) in support::backends("batch_negative").await {
        let got = cache
            .fetch_many(&MAYBE, &keys(&[1, 2]), |missing: Vec<K>| async move {
                Ok::<_, cacheobj::Error>(
                    missing
                        .iter()
                        .map(|k| (k.id == 1).then(|| "one".to_string()))
                        .collect(),
                )
            })
            .await
            .unwrap();
        assert_eq!(got, [Some("one".to_string()), None], "{label}");
        assert!(
            cache.exists(&MAYBE, &K { id: 2 }).await.unwrap(),
            "{label}: None is cached"
        );
        // The TTLs in Redis, through a raw connection to the label's server (none for memory).
        if let Some(mut conn) = support::raw_conn_for(label).await {
            let neg = support::raw_pttl(
                &mut conn,
                &support::entry_redis_key(&cache, &MAYBE, &K { id: 2 }),
            )
            .await;
            let pos = support::raw_pttl(
                &mut conn,
                &support::entry_redis_key(&cache, &MAYBE, &K { id: 1 }),
            )
            .await;
            assert!((1..=30_000).contains(&neg), "{label}: negative ttl {neg}");
            assert!(pos > 30_000, "{label}: positive ttl {pos}");
        }
    }
}

#[tokio::test]
async fn a_loader_that_returns_the_wrong_count_is_an_error() {
    for (label, cache) in support::backends("batch_count").await {
        let r = cache
            .fetch_many(&NAME, &keys(&[1, 2]), |_: Vec<K>| async {
                Ok::<_, cacheobj::Error>(vec!["only one".to_string()])
            })
            .await;
        assert!(
            matches!(
                r,
                Err(BatchError::Cache(cacheobj::Error::BatchLength {
                    expected: 2,
                    got: 1
                }))
            ),
            "{label}: {r:?}"
        );
        assert!(
            !cache.exists(&NAME, &K { id: 1 }).await.unwrap(),
            "{label}: nothing cached"
        );
    }
}

#[tokio::test]
async fn fetch_many_works_for_hash_and_counter_strategies() {
    for (label, cache) in support::backends("batch_kinds").await {
        let got = cache
            .fetch_many(&HNAME, &keys(&[1, 2]), |m: Vec<K>| async move {
                Ok::<_, cacheobj::Error>(m.iter().map(|k| k.id.to_string()).collect())
            })
            .await
            .unwrap();
        assert_eq!(got, ["1", "2"], "{label}");
        assert!(cache.exists(&HNAME, &K { id: 2 }).await.unwrap(), "{label}");
        let counts = cache
            .fetch_many(&COUNT, &keys(&[1, 2]), |m: Vec<K>| async move {
                Ok::<_, cacheobj::Error>(m.iter().map(|k| k.id as i64 * 10).collect())
            })
            .await
            .unwrap();
        assert_eq!(counts, [10, 20], "{label}");
        assert_eq!(
            cache.incr(&COUNT, &K { id: 2 }, 1).await.unwrap(),
            Some(21),
            "{label}"
        );
    }
}

#[tokio::test]
async fn invalidate_many_removes_every_entry() {
    for (label, cache) in support::backends("batch_invalidate").await {
        let ks = keys(&[1, 2, 3]);
        cache
            .fetch_many(&NAME, &ks, |m: Vec<K>| async move {
                Ok::<_, cacheobj::Error>(m.iter().map(|k| k.id.to_string()).collect())
            })
            .await
            .unwrap();
        cache.invalidate_many(&NAME, &ks[..2]).await.unwrap();
        assert!(!cache.exists(&NAME, &K { id: 1 }).await.unwrap(), "{label}");
        assert!(!cache.exists(&NAME, &K { id: 2 }).await.unwrap(), "{label}");
        assert!(cache.exists(&NAME, &K { id: 3 }).await.unwrap(), "{label}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_a_batch_load_wins() {
    for (label, cache) in support::backends("batch_stale").await {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let reader = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .fetch_many(&NAME, &keys(&[1, 2]), |m: Vec<K>| async move {
                        let _ = started_tx.send(());
                        let _ = release_rx.await;
                        Ok::<_, cacheobj::Error>(m.iter().map(|_| "old".to_string()).collect())
                    })
                    .await
            })
        };
        started_rx.await.unwrap();
        cache.invalidate(&NAME, &K { id: 1 }).await.unwrap();
        release_tx.send(()).unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), ["old", "old"], "{label}");
        assert!(
            !cache.exists(&NAME, &K { id: 1 }).await.unwrap(),
            "{label}: stale fill rejected"
        );
        assert!(
            cache.exists(&NAME, &K { id: 2 }).await.unwrap(),
            "{label}: the other filled"
        );
        assert_eq!(cache.stats().stale_fills_rejected, 1, "{label}");
    }
}

/// A database error that knows nothing of the cache (as `sqlx::Error` does not): the loader
/// returns it untouched, with no `From<cacheobj::Error>`.
#[derive(Debug, PartialEq)]
struct DbError(&'static str);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for DbError {}

const MAYBE_H: Strategy<Option<String>, K, Hash> = Strategy::hash("batch:mh", "<id>")
    .expire(600)
    .negative_expire(30);

#[tokio::test]
async fn fetch_many_by_key_takes_a_map_and_caches_absent_keys_as_not_found() {
    for (label, cache) in support::backends("batch_by_key").await {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let load = |seen: Arc<Mutex<Vec<Vec<u64>>>>| {
            move |missing: Vec<K>| async move {
                seen.lock()
                    .unwrap()
                    .push(missing.iter().map(|k| k.id).collect());
                // Rows come back in the database's order, and row 2 does not exist.
                let rows: HashMap<K, String> = missing
                    .into_iter()
                    .rev()
                    .filter(|k| k.id != 2)
                    .map(|k| {
                        let name = format!("row {}", k.id);
                        (k, name)
                    })
                    .collect();
                Ok::<_, DbError>(rows)
            }
        };
        let want = [
            Some("row 3".to_string()),
            None,
            Some("row 1".to_string()),
            Some("row 3".to_string()),
        ];
        let got = cache
            .fetch_many_by_key(&MAYBE, &keys(&[3, 2, 1, 3]), load(seen.clone()))
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(got, want, "{label}");
        // Everything is cached now, the absent key as not found.
        let again = cache
            .fetch_many_by_key(&MAYBE, &keys(&[3, 2, 1, 3]), load(seen.clone()))
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(again, want, "{label}");
        assert_eq!(
            *seen.lock().unwrap(),
            [vec![3, 2, 1]],
            "{label}: one load, deduplicated"
        );

        let got = cache
            .fetch_many_by_key(&MAYBE_H, &keys(&[1, 2]), load(seen.clone()))
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(got, [Some("row 1".to_string()), None], "{label}: hash");
    }
}

#[tokio::test]
async fn a_batch_loaders_own_error_comes_back_untouched() {
    for (label, cache) in support::backends("batch_loader_error").await {
        let r = cache
            .fetch_many_by_key(&MAYBE, &keys(&[1]), |_: Vec<K>| async {
                Err::<HashMap<K, String>, _>(DbError("connection reset"))
            })
            .await;
        match r {
            Err(BatchError::Loader(e)) => assert_eq!(e, DbError("connection reset"), "{label}"),
            other => panic!("{label}: {other:?}"),
        }
        let r = cache
            .fetch_many(&NAME, &keys(&[1]), |_: Vec<K>| async {
                Err::<Vec<String>, _>(DbError("timeout"))
            })
            .await;
        let e = r.expect_err("the loader failed");
        assert_eq!(
            e.to_string(),
            "timeout",
            "{label}: reads as the loader's error"
        );
        assert!(!cache.exists(&NAME, &K { id: 1 }).await.unwrap(), "{label}");
    }
}
