//! TTLs: what Redis holds for every kind, expiry on both backends, and jitter.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cacheobj::{Cache, Counter, Hash, List, Set, Strategy};
use cacheobj_strategies::{Item, ItemKey, ITEM, ITEM_HASH, ITEM_MEMBERS, ITEM_STAT, ITEM_TAGS};
use support::{backends, entry_redis_key, raw_conn, raw_pttl, redis_cache, wait_until_gone};

const DAY_MS: i64 = 86_400_000;
const MIN_MS: i64 = 60_000;

fn item(id: u64) -> Item {
    Item {
        id,
        name: format!("i{id}"),
    }
}

fn ok<T>(v: T) -> std::future::Ready<Result<T, std::io::Error>> {
    std::future::ready(Ok(v))
}

/// Asserts `ttl` is within 5 s below `full`.
fn assert_about(what: &str, ttl: i64, full: i64) {
    assert!(
        ttl > full - 5_000 && ttl <= full,
        "{what}: PTTL {ttl}, expected about {full}"
    );
}

#[tokio::test]
async fn every_kind_gets_the_strategy_ttl_in_redis() {
    let (cache, _) = redis_cache("ttl_kinds").await;
    let mut conn = raw_conn().await;
    let key = ItemKey { item_id: 1 };
    let empty = ItemKey { item_id: 2 };

    cache.fetch(&ITEM, &key, || ok(item(1))).await.unwrap();
    assert_about(
        "obj",
        raw_pttl(&mut conn, &entry_redis_key(&cache, &ITEM, &key)).await,
        DAY_MS,
    );

    cache.fetch(&ITEM_STAT, &key, || ok(5i64)).await.unwrap();
    let stat_key = entry_redis_key(&cache, &ITEM_STAT, &key);
    assert_about("counter", raw_pttl(&mut conn, &stat_key).await, DAY_MS);
    cache.incr(&ITEM_STAT, &key, 1).await.unwrap();
    assert_about(
        "counter after incr",
        raw_pttl(&mut conn, &stat_key).await,
        DAY_MS,
    );

    cache
        .fetch(&ITEM_MEMBERS, &key, || ok(vec![1u64, 2]))
        .await
        .unwrap();
    let list_key = entry_redis_key(&cache, &ITEM_MEMBERS, &key);
    assert_about("list", raw_pttl(&mut conn, &list_key).await, MIN_MS);
    cache.list_push(&ITEM_MEMBERS, &key, &[3]).await.unwrap();
    assert_about(
        "list after push",
        raw_pttl(&mut conn, &list_key).await,
        MIN_MS,
    );
    cache
        .list_remove(&ITEM_MEMBERS, &key, &[1, 2, 3])
        .await
        .unwrap();
    assert_about(
        "list emptied by remove",
        raw_pttl(&mut conn, &list_key).await,
        MIN_MS,
    );

    cache
        .fetch(&ITEM_TAGS, &key, || ok(vec!["a".to_string()]))
        .await
        .unwrap();
    let set_key = entry_redis_key(&cache, &ITEM_TAGS, &key);
    assert_about("set", raw_pttl(&mut conn, &set_key).await, MIN_MS);
    cache
        .set_add(&ITEM_TAGS, &key, &["b".to_string()])
        .await
        .unwrap();
    assert_about("set after add", raw_pttl(&mut conn, &set_key).await, MIN_MS);

    cache.fetch(&ITEM_HASH, &key, || ok(item(1))).await.unwrap();
    assert_about(
        "hash",
        raw_pttl(&mut conn, &entry_redis_key(&cache, &ITEM_HASH, &key)).await,
        DAY_MS,
    );

    cache
        .fetch(&ITEM_MEMBERS, &empty, || ok(Vec::<u64>::new()))
        .await
        .unwrap();
    let empty_list = entry_redis_key(&cache, &ITEM_MEMBERS, &empty);
    assert_about("empty list", raw_pttl(&mut conn, &empty_list).await, MIN_MS);
    cache.list_push(&ITEM_MEMBERS, &empty, &[9]).await.unwrap();
    assert_about(
        "empty list after push",
        raw_pttl(&mut conn, &empty_list).await,
        MIN_MS,
    );

    cache
        .fetch(&ITEM_TAGS, &empty, || ok(Vec::<String>::new()))
        .await
        .unwrap();
    let empty_set = entry_redis_key(&cache, &ITEM_TAGS, &empty);
    assert_about("empty set", raw_pttl(&mut conn, &empty_set).await, MIN_MS);
    cache
        .set_add(&ITEM_TAGS, &empty, &["x".to_string()])
        .await
        .unwrap();
    assert_about(
        "empty set after add",
        raw_pttl(&mut conn, &empty_set).await,
        MIN_MS,
    );
}

const FOREVER: Strategy<Item, ItemKey> = Strategy::<Item, ItemKey>::obj("forever:<item_id>");
const FOREVER_LIST: Strategy<Vec<u64>, ItemKey, List> = Strategy::list("forever_list:<item_id>");
const FOREVER_HASH: Strategy<Item, ItemKey, Hash> = Strategy::hash("forever_hash", "<item_id>");

#[tokio::test]
async fn without_expire_entries_have_no_ttl_in_redis() {
    let (cache, _) = redis_cache("ttl_forever").await;
    let mut conn = raw_conn().await;
    let key = ItemKey { item_id: 1 };
    cache.fetch(&FOREVER, &key, || ok(item(1))).await.unwrap();
    assert_eq!(
        raw_pttl(&mut conn, &entry_redis_key(&cache, &FOREVER, &key)).await,
        -1
    );
    cache
        .fetch(&FOREVER_LIST, &key, || ok(vec![1u64]))
        .await
        .unwrap();
    assert_eq!(
        raw_pttl(&mut conn, &entry_redis_key(&cache, &FOREVER_LIST, &key)).await,
        -1
    );
    cache
        .fetch(&FOREVER_HASH, &key, || ok(item(1)))
        .await
        .unwrap();
    assert_eq!(
        raw_pttl(&mut conn, &entry_redis_key(&cache, &FOREVER_HASH, &key)).await,
        -1
    );
}

const S_OBJ: Strategy<Item, ItemKey> = Strategy::<Item, ItemKey>::obj("s_obj:<item_id>").expire(1);
const S_COUNTER: Strategy<i64, ItemKey, Counter> = Strategy::counter("s_cnt:<item_id>").expire(1);
const S_LIST: Strategy<Vec<u64>, ItemKey, List> = Strategy::list("s_list:<item_id>").expire(1);
const S_SET: Strategy<Vec<String>, ItemKey, Set> = Strategy::set("s_set:<item_id>").expire(1);
// The hash lives at least as long as a fill lease; a short lease lets it expire after 1 s.
const S_HASH: Strategy<Item, ItemKey, Hash> = Strategy::hash("s_hash", "<item_id>")
    .expire(1)
    .lease(Duration::from_millis(200));

/// Whether each kind's entry is cached: obj, counter, list, set, hash, empty list.
async fn cached(cache: &Cache, key: &ItemKey, empty: &ItemKey) -> [bool; 6] {
    [
        cache.exists(&S_OBJ, key).await.unwrap(),
        cache.exists(&S_COUNTER, key).await.unwrap(),
        cache.exists(&S_LIST, key).await.unwrap(),
        cache.exists(&S_SET, key).await.unwrap(),
        cache.exists(&S_HASH, key).await.unwrap(),
        cache.exists(&S_LIST, empty).await.unwrap(),
    ]
}

#[tokio::test]
async fn entries_of_every_kind_expire_on_both_backends() {
    let mut tasks = Vec::new();
    for (name, cache) in backends("ttl_expiry").await {
        tasks.push(tokio::spawn(async move {
            let (key, empty) = (ItemKey { item_id: 1 }, ItemKey { item_id: 2 });
            cache.fetch(&S_OBJ, &key, || ok(item(1))).await.unwrap();
            cache.fetch(&S_COUNTER, &key, || ok(7i64)).await.unwrap();
            cache.fetch(&S_LIST, &key, || ok(vec![1u64])).await.unwrap();
            cache
                .fetch(&S_SET, &key, || ok(vec!["a".to_string()]))
                .await
                .unwrap();
            cache.fetch(&S_HASH, &key, || ok(item(1))).await.unwrap();
            cache
                .fetch(&S_LIST, &empty, || ok(Vec::<u64>::new()))
                .await
                .unwrap();
            let filled = Instant::now();
            assert_eq!(
                cached(&cache, &key, &empty).await,
                [true; 6],
                "{name}: right after the fills"
            );

            // The 1 s TTLs pass: every entry is gone, none still there 1.25 s after the fills.
            wait_until_gone(
                &format!("{name}: an entry"),
                filled,
                Duration::from_millis(1250),
                || async { cached(&cache, &key, &empty).await != [false; 6] },
            )
            .await;
            assert_eq!(
                cached(&cache, &key, &empty).await,
                [false; 6],
                "{name}: after the TTL"
            );
            assert_eq!(
                cache.get_counter(&S_COUNTER, &key).await.unwrap(),
                None,
                "{name}"
            );
            assert_eq!(cache.list_len(&S_LIST, &key).await.unwrap(), None, "{name}");
            assert_eq!(cache.set_len(&S_SET, &key).await.unwrap(), None, "{name}");

            let calls = AtomicUsize::new(0);
            let v = cache
                .fetch(&S_OBJ, &key, || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(item(2))
                })
                .await
                .unwrap();
            assert_eq!(v, item(2), "{name}: reloaded after expiry");
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

const JITTERED: Strategy<Item, ItemKey> = Strategy::<Item, ItemKey>::obj("jit:<item_id>")
    .expire(100)
    .jitter(20);
const FULL_JITTER: Strategy<Item, ItemKey> = Strategy::<Item, ItemKey>::obj("fjit:<item_id>")
    .expire(100)
    .jitter(100);

#[tokio::test]
async fn jitter_keeps_the_ttl_within_its_bounds_in_redis() {
    let (cache, _) = redis_cache("ttl_jitter").await;
    let mut conn = raw_conn().await;
    let mut ttls = Vec::new();
    for id in 0..40 {
        let key = ItemKey { item_id: id };
        cache.fetch(&JITTERED, &key, || ok(item(id))).await.unwrap();
        let ttl = raw_pttl(&mut conn, &entry_redis_key(&cache, &JITTERED, &key)).await;
        // [100 s * (1 - 20 %), 100 s], with 1 s of slack below for the time the checks take.
        assert!(
            (79_000..=100_000).contains(&ttl),
            "PTTL {ttl} outside [80 s, 100 s]"
        );
        ttls.push(ttl);
    }
    let (min, max) = (ttls.iter().min().unwrap(), ttls.iter().max().unwrap());
    assert!(max - min > 1_000, "jitter had no visible effect: {ttls:?}");

    for id in 0..20 {
        let key = ItemKey { item_id: id };
        cache
            .fetch(&FULL_JITTER, &key, || ok(item(id)))
            .await
            .unwrap();
        let ttl = raw_pttl(&mut conn, &entry_redis_key(&cache, &FULL_JITTER, &key)).await;
        assert!((1..=100_000).contains(&ttl), "100 % jitter: PTTL {ttl}");
    }
}

const JITTER_2S: Strategy<Item, ItemKey> = Strategy::<Item, ItemKey>::obj("jit2:<item_id>")
    .expire(2)
    .jitter(50);

#[tokio::test]
async fn jittered_entries_live_between_the_bounds_on_both_backends() {
    let mut tasks = Vec::new();
    for (name, cache) in backends("ttl_jitter_expiry").await {
        tasks.push(tokio::spawn(async move {
            let keys: Vec<ItemKey> = (0..10).map(|id| ItemKey { item_id: id }).collect();
            // When each fill began and ended: its TTL started in between.
            let mut written = Vec::new();
            for k in &keys {
                let before = Instant::now();
                cache
                    .fetch(&JITTER_2S, k, || ok(item(k.item_id)))
                    .await
                    .unwrap();
                written.push((before, Instant::now()));
            }
            // Every TTL is in [1 s, 2 s]: poll each entry until it is gone. Seen gone less than
            // 1 s after its fill began, it expired early; seen there more than 2 s (plus 150 ms
            // of slack) after its fill ended, it outlived its TTL. A stalled poll only sees
            // less, it cannot fail either check.
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut left: Vec<usize> = (0..keys.len()).collect();
            while !left.is_empty() {
                tick.tick().await;
                let mut still = Vec::new();
                for i in left {
                    let (k, (fill_began, fill_ended)) = (&keys[i], written[i]);
                    let asked = Instant::now();
                    let exists = cache.exists(&JITTER_2S, k).await.unwrap();
                    let answered = Instant::now();
                    if exists {
                        let age = asked.duration_since(fill_ended);
                        assert!(
                            age <= Duration::from_millis(2150),
                            "{name}: {k:?} outlived 2 s (still there {age:?} after its fill)"
                        );
                        still.push(i);
                    } else {
                        // Redis keeps expiry times in whole milliseconds: 10 ms of rounding.
                        let age = answered.duration_since(fill_began);
                        assert!(
                            age >= Duration::from_millis(990),
                            "{name}: {k:?} gone before 1 s (gone {age:?} after its fill began)"
                        );
                    }
                }
                left = still;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

// The const builders accept these: `expire` only rejects 0, and `lease` saturates to u64::MAX ms.
const EXPIRE_MAX: Strategy<Item, ItemKey> =
    Strategy::<Item, ItemKey>::obj("expire_max:<item_id>").expire(u64::MAX);
const LEASE_MAX: Strategy<Item, ItemKey> = Strategy::<Item, ItemKey>::obj("lease_max:<item_id>")
    .expire(60)
    .lease(Duration::MAX);

#[tokio::test]
async fn extreme_expire_and_lease_values_cache_like_any_other() {
    // The memory backend's clock starts at its first use: make sure it is past 0 ms.
    Cache::in_memory()
        .fetch(&ITEM, &ItemKey { item_id: 0 }, || ok(item(0)))
        .await
        .unwrap();
    // The clock started during that fetch, so before this instant.
    let clock_started = Instant::now();
    support::wait_until(
        "the memory backend's clock is past 0 ms",
        Duration::from_secs(10),
        || clock_started.elapsed() >= Duration::from_millis(5),
    )
    .await;

    let mut failures = Vec::new();
    for (name, cache) in backends("ttl_extreme").await {
        for (what, strategy) in [
            ("expire(u64::MAX)", EXPIRE_MAX),
            ("lease(Duration::MAX)", LEASE_MAX),
        ] {
            let cache = cache.clone();
            // In a task, so that a panic is reported as a failure of this case, not of the test.
            let outcome = tokio::spawn(async move {
                let key = ItemKey { item_id: 1 };
                let first = cache.fetch(&strategy, &key, || ok(item(1))).await.unwrap();
                let second = cache.fetch(&strategy, &key, || ok(item(2))).await.unwrap();
                (first, second, cache.stats().errors)
            })
            .await;
            match outcome {
                Err(e) => failures.push(format!("{name} {what}: panicked: {e}")),
                Ok((first, second, errors)) => {
                    assert_eq!(first, item(1), "{name} {what}");
                    if second != item(1) {
                        failures.push(format!(
                            "{name} {what}: not cached (second fetch loaded again)"
                        ));
                    }
                    if errors != 0 {
                        failures.push(format!("{name} {what}: {errors} cache errors counted"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
