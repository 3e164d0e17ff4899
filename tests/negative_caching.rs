//! Negative caching: "not found" (`None`, an empty collection) is cached with `negative_expire`.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cacheobj::{Cache, List, Set, Strategy};
use cacheobj_strategies::{Item, ItemKey, MAYBE_ITEM};
use support::{backends, entry_redis_key, raw_conn, raw_pttl, redis_cache, wait_until_gone};

async fn fetch_maybe(
    cache: &Cache,
    strategy: &Strategy<Option<Item>, ItemKey>,
    key: &ItemKey,
    calls: &AtomicUsize,
    value: Option<Item>,
) -> Option<Item> {
    cache
        .fetch(strategy, key, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(value)
        })
        .await
        .unwrap()
}

fn item(id: u64) -> Item {
    Item {
        id,
        name: format!("i{id}"),
    }
}

#[tokio::test]
async fn none_is_cached() {
    for (name, cache) in backends("neg_none_cached").await {
        let key = ItemKey { item_id: 1 };
        let calls = AtomicUsize::new(0);
        assert_eq!(
            fetch_maybe(&cache, &MAYBE_ITEM, &key, &calls, None).await,
            None,
            "{name}"
        );
        assert_eq!(
            fetch_maybe(&cache, &MAYBE_ITEM, &key, &calls, Some(item(1))).await,
            None,
            "{name}: the cached None is a hit"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
        assert!(cache.exists(&MAYBE_ITEM, &key).await.unwrap(), "{name}");
    }
}

#[tokio::test]
async fn none_gets_the_negative_ttl_and_some_the_normal_one_in_redis() {
    let (cache, _) = redis_cache("neg_pttl").await;
    let mut conn = raw_conn().await;
    let calls = AtomicUsize::new(0);

    let missing = ItemKey { item_id: 1 };
    fetch_maybe(&cache, &MAYBE_ITEM, &missing, &calls, None).await;
    let ttl = raw_pttl(&mut conn, &entry_redis_key(&cache, &MAYBE_ITEM, &missing)).await;
    assert!(
        ttl > 25_000 && ttl <= 30_000,
        "None: PTTL {ttl}, expected about 30 s"
    );

    let present = ItemKey { item_id: 2 };
    fetch_maybe(&cache, &MAYBE_ITEM, &present, &calls, Some(item(2))).await;
    let ttl = raw_pttl(&mut conn, &entry_redis_key(&cache, &MAYBE_ITEM, &present)).await;
    assert!(
        ttl > 86_400_000 - 5_000 && ttl <= 86_400_000,
        "Some: PTTL {ttl}, expected about 86400 s"
    );
}

const SHORT_NEGATIVE: Strategy<Option<Item>, ItemKey> =
    Strategy::<Option<Item>, ItemKey>::obj("short_neg:<item_id>")
        .expire(60)
        .negative_expire(1);

#[tokio::test]
async fn none_expires_after_the_negative_ttl_while_some_stays() {
    let mut tasks = Vec::new();
    for (name, cache) in backends("neg_expiry").await {
        tasks.push(tokio::spawn(async move {
            let calls = AtomicUsize::new(0);
            let (missing, present) = (ItemKey { item_id: 1 }, ItemKey { item_id: 2 });
            fetch_maybe(&cache, &SHORT_NEGATIVE, &missing, &calls, None).await;
            fetch_maybe(&cache, &SHORT_NEGATIVE, &present, &calls, Some(item(2))).await;
            let filled = Instant::now();
            assert!(
                cache.exists(&SHORT_NEGATIVE, &missing).await.unwrap(),
                "{name}"
            );
            // The 1 s negative TTL passes: the None is gone within 1.2 s of its fill.
            wait_until_gone(
                &format!("{name}: the cached None"),
                filled,
                Duration::from_millis(1200),
                || async { cache.exists(&SHORT_NEGATIVE, &missing).await.unwrap() },
            )
            .await;

            assert!(
                !cache.exists(&SHORT_NEGATIVE, &missing).await.unwrap(),
                "{name}: the None expired"
            );
            let now = fetch_maybe(&cache, &SHORT_NEGATIVE, &missing, &calls, Some(item(1))).await;
            assert_eq!(
                now,
                Some(item(1)),
                "{name}: reloaded after the negative TTL"
            );
            let kept = fetch_maybe(&cache, &SHORT_NEGATIVE, &present, &calls, None).await;
            assert_eq!(kept, Some(item(2)), "{name}: Some keeps the normal TTL");
            assert_eq!(calls.load(Ordering::SeqCst), 3, "{name}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

const MEMBERS_NEG: Strategy<Vec<u64>, ItemKey, List> = Strategy::list("members_neg:<item_id>")
    .expire(3600)
    .negative_expire(30);
const TAGS_NEG: Strategy<Vec<String>, ItemKey, Set> = Strategy::set("tags_neg:<item_id>")
    .expire(3600)
    .negative_expire(30);

#[tokio::test]
async fn empty_collections_get_the_negative_ttl_in_redis() {
    let (cache, _) = redis_cache("neg_collections").await;
    let mut conn = raw_conn().await;
    let (empty, full) = (ItemKey { item_id: 1 }, ItemKey { item_id: 2 });

    cache
        .fetch(&MEMBERS_NEG, &empty, || async {
            Ok::<_, std::io::Error>(vec![])
        })
        .await
        .unwrap();
    let ttl = raw_pttl(&mut conn, &entry_redis_key(&cache, &MEMBERS_NEG, &empty)).await;
    assert!(ttl > 25_000 && ttl <= 30_000, "empty list: PTTL {ttl}");
    cache
        .fetch(&MEMBERS_NEG, &full, || async {
            Ok::<_, std::io::Error>(vec![1])
        })
        .await
        .unwrap();
    let ttl = raw_pttl(&mut conn, &entry_redis_key(&cache, &MEMBERS_NEG, &full)).await;
    assert!(ttl > 3_595_000 && ttl <= 3_600_000, "list: PTTL {ttl}");

    cache
        .fetch(&TAGS_NEG, &empty, || async {
            Ok::<_, std::io::Error>(vec![])
        })
        .await
        .unwrap();
    let ttl = raw_pttl(&mut conn, &entry_redis_key(&cache, &TAGS_NEG, &empty)).await;
    assert!(ttl > 25_000 && ttl <= 30_000, "empty set: PTTL {ttl}");
    cache
        .fetch(&TAGS_NEG, &full, || async {
            Ok::<_, std::io::Error>(vec!["a".to_string()])
        })
        .await
        .unwrap();
    let ttl = raw_pttl(&mut conn, &entry_redis_key(&cache, &TAGS_NEG, &full)).await;
    assert!(ttl > 3_595_000 && ttl <= 3_600_000, "set: PTTL {ttl}");
}

const PLAIN_OPTION: Strategy<Option<Item>, ItemKey> =
    Strategy::<Option<Item>, ItemKey>::obj("plain_opt:<item_id>").expire(600);

#[tokio::test]
async fn without_negative_expire_none_gets_the_normal_ttl() {
    let (cache, _) = redis_cache("neg_plain").await;
    let key = ItemKey { item_id: 1 };
    let calls = AtomicUsize::new(0);
    fetch_maybe(&cache, &PLAIN_OPTION, &key, &calls, None).await;
    let ttl = raw_pttl(
        &mut raw_conn().await,
        &entry_redis_key(&cache, &PLAIN_OPTION, &key),
    )
    .await;
    assert!(ttl > 595_000 && ttl <= 600_000, "PTTL {ttl}");
}
