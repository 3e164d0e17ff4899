//! Obj strategies: one value under one key, on every backend.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cacheobj::{Cache, Codec, Strategy};
use cacheobj_strategies::{Item, ItemKey, ITEM};
use support::{backends, entry_redis_key, raw_conn, redis_cache};

fn item(id: u64, name: &str) -> Item {
    Item {
        id,
        name: name.to_owned(),
    }
}

/// Fetches `strategy`/`key`, counting loader calls in `calls`; the loader returns `value`.
async fn fetch_counted(
    cache: &Cache,
    strategy: &Strategy<Item, ItemKey>,
    key: &ItemKey,
    calls: &AtomicUsize,
    value: Item,
) -> Item {
    cache
        .fetch(strategy, key, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(value)
        })
        .await
        .expect("the loader does not fail")
}

async fn raw_exists(key: &[u8]) -> bool {
    let mut conn = raw_conn().await;
    let n: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    n == 1
}

#[tokio::test]
async fn miss_then_hit_calls_the_loader_once() {
    for (name, cache) in backends("obj_miss_hit").await {
        let key = ItemKey { item_id: 1 };
        let calls = AtomicUsize::new(0);
        let first = fetch_counted(&cache, &ITEM, &key, &calls, item(1, "first")).await;
        assert_eq!(first, item(1, "first"), "{name}");
        // The second loader would return something else: a hit must not call it.
        let second = fetch_counted(&cache, &ITEM, &key, &calls, item(1, "second")).await;
        assert_eq!(second, item(1, "first"), "{name}: second fetch is a hit");
        let third = fetch_counted(&cache, &ITEM, &key, &calls, item(1, "third")).await;
        assert_eq!(third, item(1, "first"), "{name}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}: loader calls");
    }
}

#[tokio::test]
async fn invalidate_removes_exactly_what_fetch_reads() {
    for (name, cache) in backends("obj_invalidate").await {
        let (k1, k2) = (ItemKey { item_id: 1 }, ItemKey { item_id: 2 });
        let calls = AtomicUsize::new(0);
        fetch_counted(&cache, &ITEM, &k1, &calls, item(1, "a")).await;
        fetch_counted(&cache, &ITEM, &k2, &calls, item(2, "b")).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{name}");

        cache.invalidate(&ITEM, &k1).await.unwrap();
        assert!(!cache.exists(&ITEM, &k1).await.unwrap(), "{name}: k1 gone");
        assert!(cache.exists(&ITEM, &k2).await.unwrap(), "{name}: k2 kept");

        let again = fetch_counted(&cache, &ITEM, &k1, &calls, item(1, "a2")).await;
        assert_eq!(again, item(1, "a2"), "{name}: reloaded after invalidate");
        let other = fetch_counted(&cache, &ITEM, &k2, &calls, item(2, "b2")).await;
        assert_eq!(other, item(2, "b"), "{name}: k2 still a hit");
        assert_eq!(calls.load(Ordering::SeqCst), 3, "{name}");

        // Invalidating what is not cached is fine.
        cache
            .invalidate(&ITEM, &ItemKey { item_id: 99 })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn invalidate_deletes_the_redis_key_that_fetch_fills() {
    let (cache, prefix) = redis_cache("obj_invalidate_raw").await;
    let key = ItemKey { item_id: 7 };
    let raw = entry_redis_key(&cache, &ITEM, &key);
    assert_eq!(raw, format!("{prefix}item:7").into_bytes());
    let calls = AtomicUsize::new(0);
    fetch_counted(&cache, &ITEM, &key, &calls, item(7, "x")).await;
    assert!(raw_exists(&raw).await);
    cache.invalidate(&ITEM, &key).await.unwrap();
    assert!(!raw_exists(&raw).await);
}

/// A database error that knows nothing of the cache: `invalidate_after` hands it back
/// untouched, with no `From<cacheobj::Error>` needed.
#[derive(Debug)]
enum WriteError {
    Db(&'static str),
}

#[tokio::test]
async fn invalidate_after_runs_the_write_then_invalidates() {
    for (name, cache) in backends("obj_invalidate_after").await {
        let key = ItemKey { item_id: 3 };
        let calls = AtomicUsize::new(0);
        fetch_counted(&cache, &ITEM, &key, &calls, item(3, "old")).await;

        let still_cached_during_write = std::sync::atomic::AtomicBool::new(false);
        let out = cache
            .invalidate_after(&ITEM, &key, || async {
                let cached = cache.exists(&ITEM, &key).await.unwrap();
                still_cached_during_write.store(cached, Ordering::SeqCst);
                Ok::<u64, WriteError>(1)
            })
            .await
            .unwrap();
        assert!(out.is_invalidated(), "{name}: {:?}", out.invalidation());
        assert_eq!(
            out.into_value(),
            1,
            "{name}: the write's result is returned"
        );
        assert!(
            still_cached_during_write.load(Ordering::SeqCst),
            "{name}: the write runs before the invalidation"
        );
        assert!(!cache.exists(&ITEM, &key).await.unwrap(), "{name}");
        let v = fetch_counted(&cache, &ITEM, &key, &calls, item(3, "new")).await;
        assert_eq!(v, item(3, "new"), "{name}");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{name}");
    }
}

#[tokio::test]
async fn invalidate_after_does_not_invalidate_when_the_write_fails() {
    for (name, cache) in backends("obj_invalidate_after_fail").await {
        let key = ItemKey { item_id: 4 };
        let calls = AtomicUsize::new(0);
        fetch_counted(&cache, &ITEM, &key, &calls, item(4, "kept")).await;

        let result = cache
            .invalidate_after(&ITEM, &key, || async {
                Err::<u64, WriteError>(WriteError::Db("constraint violated"))
            })
            .await;
        match result {
            Err(WriteError::Db(msg)) => assert_eq!(msg, "constraint violated", "{name}"),
            Ok(v) => panic!("{name}: expected the write's error, got Ok({v:?})"),
        }
        assert!(cache.exists(&ITEM, &key).await.unwrap(), "{name}");
        let v = fetch_counted(&cache, &ITEM, &key, &calls, item(4, "reloaded")).await;
        assert_eq!(v, item(4, "kept"), "{name}: still a hit");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
    }
}

#[tokio::test]
async fn exists_reports_cached_values_only() {
    for (name, cache) in backends("obj_exists").await {
        let key = ItemKey { item_id: 5 };
        assert!(!cache.exists(&ITEM, &key).await.unwrap(), "{name}: before");
        let calls = AtomicUsize::new(0);
        fetch_counted(&cache, &ITEM, &key, &calls, item(5, "e")).await;
        assert!(
            cache.exists(&ITEM, &key).await.unwrap(),
            "{name}: after fetch"
        );
        assert!(
            !cache.exists(&ITEM, &ItemKey { item_id: 6 }).await.unwrap(),
            "{name}: another key"
        );
        cache.invalidate(&ITEM, &key).await.unwrap();
        assert!(
            !cache.exists(&ITEM, &key).await.unwrap(),
            "{name}: after invalidate"
        );
        // exists does not load or count as a fetch.
        assert_eq!(cache.stats().loads, 1, "{name}");
    }
}

const ITEM_V1: Strategy<Item, ItemKey> = Strategy::<Item, ItemKey>::obj("vitem:<item_id>")
    .expire(600)
    .version(1);
const ITEM_V2: Strategy<Item, ItemKey> = Strategy::<Item, ItemKey>::obj("vitem:<item_id>")
    .expire(600)
    .version(2);
const ITEM_V0: Strategy<Item, ItemKey> =
    Strategy::<Item, ItemKey>::obj("vitem:<item_id>").expire(600);

#[tokio::test]
async fn a_new_version_does_not_read_old_entries() {
    for (name, cache) in backends("obj_version").await {
        let key = ItemKey { item_id: 8 };
        let calls = AtomicUsize::new(0);
        fetch_counted(&cache, &ITEM_V1, &key, &calls, item(8, "v1")).await;
        let v2 = fetch_counted(&cache, &ITEM_V2, &key, &calls, item(8, "v2")).await;
        assert_eq!(v2, item(8, "v2"), "{name}: v2 must not read the v1 entry");
        let v0 = fetch_counted(&cache, &ITEM_V0, &key, &calls, item(8, "v0")).await;
        assert_eq!(v0, item(8, "v0"), "{name}: v0 must not read v1/v2 entries");
        assert_eq!(calls.load(Ordering::SeqCst), 3, "{name}");
        // Each version keeps its own entry.
        let v1 = fetch_counted(&cache, &ITEM_V1, &key, &calls, item(8, "x")).await;
        assert_eq!(v1, item(8, "v1"), "{name}");
        assert_eq!(calls.load(Ordering::SeqCst), 3, "{name}");
        // Invalidating one version leaves the others.
        cache.invalidate(&ITEM_V2, &key).await.unwrap();
        assert!(cache.exists(&ITEM_V1, &key).await.unwrap(), "{name}");
        assert!(!cache.exists(&ITEM_V2, &key).await.unwrap(), "{name}");

        let k1 = cache.entry_key(&ITEM_V1, &key).unwrap().key;
        let k2 = cache.entry_key(&ITEM_V2, &key).unwrap().key;
        let k0 = cache.entry_key(&ITEM_V0, &key).unwrap().key;
        assert!(k1.ends_with(b"vitem:8#v1"), "{name}: {k1:?}");
        assert!(k2.ends_with(b"vitem:8#v2"), "{name}: {k2:?}");
        assert!(k0.ends_with(b"vitem:8"), "{name}: {k0:?}");
    }
}

const ITEM_POSTCARD: Strategy<Item, ItemKey> = Strategy::<Item, ItemKey>::obj("pitem:<item_id>")
    .expire(600)
    .codec(Codec::Postcard);

#[tokio::test]
async fn postcard_codec_roundtrips() {
    for (name, cache) in backends("obj_postcard").await {
        let key = ItemKey { item_id: 9 };
        let calls = AtomicUsize::new(0);
        let value = item(9, "päckchen ✓");
        let a = fetch_counted(&cache, &ITEM_POSTCARD, &key, &calls, value.clone()).await;
        let b = fetch_counted(&cache, &ITEM_POSTCARD, &key, &calls, item(9, "other")).await;
        assert_eq!(a, value, "{name}");
        assert_eq!(b, value, "{name}: decoded from the postcard entry");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
    }
}

#[tokio::test]
async fn stored_bytes_are_the_codec_encoding() {
    let (cache, _) = redis_cache("obj_codec_bytes").await;
    let mut conn = raw_conn().await;
    let key = ItemKey { item_id: 10 };
    let value = item(10, "bytes");
    let calls = AtomicUsize::new(0);

    fetch_counted(&cache, &ITEM_POSTCARD, &key, &calls, value.clone()).await;
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(entry_redis_key(&cache, &ITEM_POSTCARD, &key))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(raw, postcard::to_stdvec(&value).unwrap());

    fetch_counted(&cache, &ITEM, &key, &calls, value.clone()).await;
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(entry_redis_key(&cache, &ITEM, &key))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(raw, rmp_serde::to_vec_named(&value).unwrap());
}

#[tokio::test]
async fn loader_error_is_returned_and_nothing_is_cached() {
    for (name, cache) in backends("obj_loader_error").await {
        let key = ItemKey { item_id: 11 };
        let err = cache
            .fetch(&ITEM, &key, || async {
                Err::<Item, _>(std::io::Error::other("db down"))
            })
            .await
            .expect_err("the loader's error is returned");
        assert_eq!(err.to_string(), "db down", "{name}");
        assert!(!cache.exists(&ITEM, &key).await.unwrap(), "{name}");

        // The lease was released: the next fetch loads at once instead of waiting for it.
        let calls = AtomicUsize::new(0);
        let started = Instant::now();
        let v = fetch_counted(&cache, &ITEM, &key, &calls, item(11, "ok")).await;
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{name}: next fetch waited {:?} (a lease was left behind?)",
            started.elapsed()
        );
        assert_eq!(v, item(11, "ok"), "{name}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
        let stats = cache.stats();
        assert_eq!(stats.loads, 2, "{name}: {stats:?}");
        assert_eq!(stats.lease_waits, 0, "{name}: {stats:?}");
    }
}

#[tokio::test]
async fn loader_error_leaves_no_key_in_redis() {
    let (cache, _) = redis_cache("obj_loader_error_raw").await;
    let key = ItemKey { item_id: 12 };
    let _ = cache
        .fetch(&ITEM, &key, || async {
            Err::<Item, _>(std::io::Error::other("nope"))
        })
        .await;
    assert!(!raw_exists(&entry_redis_key(&cache, &ITEM, &key)).await);
}

#[tokio::test]
async fn stats_count_hits_misses_and_loads() {
    for (name, cache) in backends("obj_stats").await {
        assert_eq!(cache.stats(), cacheobj::Stats::default(), "{name}");
        let calls = AtomicUsize::new(0);
        let (k1, k2) = (ItemKey { item_id: 1 }, ItemKey { item_id: 2 });
        fetch_counted(&cache, &ITEM, &k1, &calls, item(1, "a")).await; // miss + load
        fetch_counted(&cache, &ITEM, &k1, &calls, item(1, "a")).await; // hit
        fetch_counted(&cache, &ITEM, &k1, &calls, item(1, "a")).await; // hit
        fetch_counted(&cache, &ITEM, &k2, &calls, item(2, "b")).await; // miss + load
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.loads), (2, 2, 2), "{name}: {s:?}");
        assert_eq!(s.errors, 0, "{name}: {s:?}");
        assert_eq!(s.undecodable, 0, "{name}: {s:?}");
        assert_eq!(s.stale_fills_rejected, 0, "{name}: {s:?}");

        // A failing loader is a miss and a load too.
        let _ = cache
            .fetch(&ITEM, &ItemKey { item_id: 3 }, || async {
                Err::<Item, _>(std::io::Error::other("x"))
            })
            .await;
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.loads), (2, 3, 3), "{name}: {s:?}");
        // Clones share the counters.
        assert_eq!(cache.clone().stats(), s, "{name}");
    }
}
