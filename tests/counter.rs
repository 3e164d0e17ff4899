//! Counter strategies: integers stored as decimal text, changed in place.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cacheobj::{Cache, Counter, Strategy};
use cacheobj_strategies::{ItemKey, ITEM_STAT};
use support::{backends, entry_redis_key, raw_conn, raw_pttl, redis_cache, wait_until_gone};

const DAY_MS: i64 = 86_400_000;

async fn fetch_count(
    cache: &Cache,
    strategy: &Strategy<i64, ItemKey, Counter>,
    key: &ItemKey,
    calls: &AtomicUsize,
    value: i64,
) -> i64 {
    cache
        .fetch(strategy, key, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(value)
        })
        .await
        .unwrap()
}

async fn raw_get(key: &[u8]) -> Option<Vec<u8>> {
    let mut conn = raw_conn().await;
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn fetch_caches_the_count() {
    for (name, cache) in backends("counter_fetch").await {
        let key = ItemKey { item_id: 1 };
        let calls = AtomicUsize::new(0);
        assert_eq!(
            fetch_count(&cache, &ITEM_STAT, &key, &calls, 41).await,
            41,
            "{name}"
        );
        assert_eq!(
            fetch_count(&cache, &ITEM_STAT, &key, &calls, 0).await,
            41,
            "{name}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
        assert_eq!(
            cache.get_counter(&ITEM_STAT, &key).await.unwrap(),
            Some(41),
            "{name}"
        );
    }
}

#[tokio::test]
async fn fetch_stores_decimal_text_in_redis() {
    let (cache, prefix) = redis_cache("counter_text").await;
    let calls = AtomicUsize::new(0);
    for (id, value, text) in [
        (1, 41i64, &b"41"[..]),
        (2, -7, b"-7"),
        (3, 0, b"0"),
        (4, i64::MAX, b"9223372036854775807"),
    ] {
        let key = ItemKey { item_id: id };
        fetch_count(&cache, &ITEM_STAT, &key, &calls, value).await;
        let raw_key = entry_redis_key(&cache, &ITEM_STAT, &key);
        assert_eq!(raw_key, format!("{prefix}item_stat:{id}").into_bytes());
        assert_eq!(
            raw_get(&raw_key).await.as_deref(),
            Some(text),
            "value {value}"
        );
    }
    // Redis can INCRBY it, and the cache reads what Redis computed.
    let key = ItemKey { item_id: 1 };
    let mut conn = raw_conn().await;
    let n: i64 = redis::cmd("INCRBY")
        .arg(entry_redis_key(&cache, &ITEM_STAT, &key))
        .arg(9)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 50);
    assert_eq!(fetch_count(&cache, &ITEM_STAT, &key, &calls, 0).await, 50);
}

#[tokio::test]
async fn incr_and_decr_change_a_cached_count() {
    for (name, cache) in backends("counter_incr").await {
        let key = ItemKey { item_id: 2 };
        let calls = AtomicUsize::new(0);
        fetch_count(&cache, &ITEM_STAT, &key, &calls, 41).await;
        assert_eq!(
            cache.incr(&ITEM_STAT, &key, 1).await.unwrap(),
            Some(42),
            "{name}"
        );
        assert_eq!(
            cache.incr(&ITEM_STAT, &key, 10).await.unwrap(),
            Some(52),
            "{name}"
        );
        assert_eq!(
            cache.decr(&ITEM_STAT, &key, 60).await.unwrap(),
            Some(-8),
            "{name}"
        );
        assert_eq!(
            cache.incr(&ITEM_STAT, &key, -2).await.unwrap(),
            Some(-10),
            "{name}"
        );
        assert_eq!(
            cache.get_counter(&ITEM_STAT, &key).await.unwrap(),
            Some(-10),
            "{name}"
        );
        assert_eq!(
            fetch_count(&cache, &ITEM_STAT, &key, &calls, 0).await,
            -10,
            "{name}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
    }
}

#[tokio::test]
async fn incr_and_decr_on_an_uncached_count_return_none_and_leave_it_uncached() {
    for (name, cache) in backends("counter_uncached").await {
        let key = ItemKey { item_id: 3 };
        assert_eq!(
            cache.incr(&ITEM_STAT, &key, 1).await.unwrap(),
            None,
            "{name}"
        );
        assert_eq!(
            cache.decr(&ITEM_STAT, &key, 1).await.unwrap(),
            None,
            "{name}"
        );
        assert_eq!(
            cache.get_counter(&ITEM_STAT, &key).await.unwrap(),
            None,
            "{name}"
        );
        assert!(!cache.exists(&ITEM_STAT, &key).await.unwrap(), "{name}");
        // The loader's count is what a fetch then caches, not an invented delta.
        let calls = AtomicUsize::new(0);
        assert_eq!(
            fetch_count(&cache, &ITEM_STAT, &key, &calls, 100).await,
            100,
            "{name}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
    }
    let (cache, _) = redis_cache("counter_uncached_raw").await;
    let key = ItemKey { item_id: 3 };
    assert_eq!(cache.incr(&ITEM_STAT, &key, 5).await.unwrap(), None);
    assert_eq!(
        raw_get(&entry_redis_key(&cache, &ITEM_STAT, &key)).await,
        None
    );
}

#[tokio::test]
async fn set_counter_and_get_counter() {
    for (name, cache) in backends("counter_set_get").await {
        let key = ItemKey { item_id: 4 };
        assert_eq!(
            cache.get_counter(&ITEM_STAT, &key).await.unwrap(),
            None,
            "{name}"
        );
        cache.set_counter(&ITEM_STAT, &key, 5).await.unwrap();
        assert_eq!(
            cache.get_counter(&ITEM_STAT, &key).await.unwrap(),
            Some(5),
            "{name}"
        );
        cache.set_counter(&ITEM_STAT, &key, -3).await.unwrap();
        assert_eq!(
            cache.get_counter(&ITEM_STAT, &key).await.unwrap(),
            Some(-3),
            "{name}"
        );
        let calls = AtomicUsize::new(0);
        assert_eq!(
            fetch_count(&cache, &ITEM_STAT, &key, &calls, 0).await,
            -3,
            "{name}"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "{name}: set_counter made it a hit"
        );
        assert_eq!(
            cache.incr(&ITEM_STAT, &key, 4).await.unwrap(),
            Some(1),
            "{name}"
        );
        cache.invalidate(&ITEM_STAT, &key).await.unwrap();
        assert_eq!(
            cache.get_counter(&ITEM_STAT, &key).await.unwrap(),
            None,
            "{name}"
        );
    }
}

#[tokio::test]
async fn set_counter_writes_text_with_the_strategy_ttl() {
    let (cache, _) = redis_cache("counter_set_raw").await;
    let key = ItemKey { item_id: 5 };
    cache.set_counter(&ITEM_STAT, &key, 1234).await.unwrap();
    let raw_key = entry_redis_key(&cache, &ITEM_STAT, &key);
    assert_eq!(raw_get(&raw_key).await.as_deref(), Some(&b"1234"[..]));
    let ttl = raw_pttl(&mut raw_conn().await, &raw_key).await;
    assert!(ttl > DAY_MS - 5_000 && ttl <= DAY_MS, "PTTL {ttl}");
}

const SHORT_STAT: Strategy<i64, ItemKey, Counter> =
    Strategy::counter("short_stat:<item_id>").expire(1);

#[tokio::test]
async fn incr_or_create_creates_with_a_ttl_then_increments() {
    // All backends at once, so the wait for the TTL is paid once.
    let mut tasks = Vec::new();
    for (name, cache) in backends("counter_incr_or_create").await {
        tasks.push(tokio::spawn(async move {
            let key = ItemKey { item_id: 6 };
            assert_eq!(
                cache.incr_or_create(&ITEM_STAT, &key, 3).await.unwrap(),
                3,
                "{name}"
            );
            assert_eq!(
                cache.incr_or_create(&ITEM_STAT, &key, 2).await.unwrap(),
                5,
                "{name}"
            );
            assert_eq!(
                cache.incr_or_create(&ITEM_STAT, &key, -6).await.unwrap(),
                -1,
                "{name}"
            );
            assert_eq!(
                cache.get_counter(&ITEM_STAT, &key).await.unwrap(),
                Some(-1),
                "{name}"
            );
            // Once created, plain incr works too.
            assert_eq!(
                cache.incr(&ITEM_STAT, &key, 1).await.unwrap(),
                Some(0),
                "{name}"
            );

            // The created counter expires with the strategy's TTL.
            let short = ItemKey { item_id: 7 };
            assert_eq!(
                cache.incr_or_create(&SHORT_STAT, &short, 1).await.unwrap(),
                1,
                "{name}"
            );
            assert_eq!(
                cache.incr_or_create(&SHORT_STAT, &short, 1).await.unwrap(),
                2,
                "{name}"
            );
            let incremented = Instant::now();
            // The 1 s TTL passes (incr keeps the TTL set at creation): gone within 1.2 s.
            wait_until_gone(
                &format!("{name}: the created counter"),
                incremented,
                Duration::from_millis(1200),
                || async { cache.exists(&SHORT_STAT, &short).await.unwrap() },
            )
            .await;
            assert_eq!(
                cache.get_counter(&SHORT_STAT, &short).await.unwrap(),
                None,
                "{name}: expired"
            );
            assert_eq!(
                cache.incr_or_create(&SHORT_STAT, &short, 1).await.unwrap(),
                1,
                "{name}: recreated"
            );
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn incr_or_create_sets_and_keeps_the_ttl_in_redis() {
    let (cache, _) = redis_cache("counter_incr_or_create_raw").await;
    let mut conn = raw_conn().await;
    let key = ItemKey { item_id: 8 };
    cache.incr_or_create(&ITEM_STAT, &key, 1).await.unwrap();
    let raw_key = entry_redis_key(&cache, &ITEM_STAT, &key);
    let ttl = raw_pttl(&mut conn, &raw_key).await;
    assert!(
        ttl > DAY_MS - 5_000 && ttl <= DAY_MS,
        "PTTL after create {ttl}"
    );
    cache.incr_or_create(&ITEM_STAT, &key, 1).await.unwrap();
    let ttl = raw_pttl(&mut conn, &raw_key).await;
    assert!(
        ttl > DAY_MS - 5_000 && ttl <= DAY_MS,
        "PTTL after incr {ttl}"
    );
    assert_eq!(raw_get(&raw_key).await.as_deref(), Some(&b"2"[..]));
}

#[tokio::test]
async fn decr_of_i64_min_is_an_invalid_argument() {
    for (name, cache) in backends("counter_decr_min").await {
        let key = ItemKey { item_id: 9 };
        cache.set_counter(&ITEM_STAT, &key, 1).await.unwrap();
        let err = cache.decr(&ITEM_STAT, &key, i64::MIN).await.unwrap_err();
        assert!(
            matches!(err, cacheobj::Error::InvalidArgument(_)),
            "{name}: {err:?}"
        );
        assert_eq!(
            cache.get_counter(&ITEM_STAT, &key).await.unwrap(),
            Some(1),
            "{name}"
        );
    }
}

#[tokio::test]
async fn an_overflowing_incr_drops_the_counter_on_both_backends() {
    for (name, cache) in backends("counter_overflow").await {
        let key = ItemKey { item_id: 10 };
        cache.set_counter(&ITEM_STAT, &key, i64::MAX).await.unwrap();
        let got = cache.incr(&ITEM_STAT, &key, 1).await;
        assert!(matches!(got, Ok(None)), "{name}: {got:?}");
        assert_eq!(
            cache.get_counter(&ITEM_STAT, &key).await.unwrap(),
            None,
            "{name}"
        );
    }
}
