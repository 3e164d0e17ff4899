//! Hash strategies: values live in one field of a Redis hash.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use cacheobj::{Cache, CacheKey, Hash, Strategy};
use cacheobj_strategies::{Item, ItemKey, ITEM_HASH};
use serde::Serialize;
use support::{backends, raw_conn, raw_pttl, raw_type, redis_cache};

fn item(id: u64, name: &str) -> Item {
    Item {
        id,
        name: name.to_owned(),
    }
}

async fn fetch_item<K: CacheKey>(
    cache: &Cache,
    strategy: &Strategy<Item, K, Hash>,
    key: &K,
    calls: &AtomicUsize,
    value: Item,
) -> Item {
    cache
        .fetch(strategy, key, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(value)
        })
        .await
        .unwrap()
}

async fn hget(key: &[u8], field: &[u8]) -> Option<Vec<u8>> {
    let mut conn = raw_conn().await;
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(&mut conn)
        .await
        .unwrap()
}

async fn hkeys(key: &[u8]) -> Vec<String> {
    let mut conn = raw_conn().await;
    let mut keys: Vec<String> = redis::cmd("HKEYS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    keys
}

#[tokio::test]
async fn miss_then_hit() {
    for (name, cache) in backends("hash_hit").await {
        let key = ItemKey { item_id: 1 };
        let calls = AtomicUsize::new(0);
        assert_eq!(
            fetch_item(&cache, &ITEM_HASH, &key, &calls, item(1, "a")).await,
            item(1, "a"),
            "{name}"
        );
        assert_eq!(
            fetch_item(&cache, &ITEM_HASH, &key, &calls, item(1, "b")).await,
            item(1, "a"),
            "{name}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
        assert!(cache.exists(&ITEM_HASH, &key).await.unwrap(), "{name}");
    }
}

#[tokio::test]
async fn values_live_in_a_field_of_the_hash_key() {
    let (cache, prefix) = redis_cache("hash_raw").await;
    let calls = AtomicUsize::new(0);
    for id in [1, 2] {
        let key = ItemKey { item_id: id };
        let value = item(id, "raw");
        fetch_item(&cache, &ITEM_HASH, &key, &calls, value.clone()).await;
        let entry = cache.entry_key(&ITEM_HASH, &key).unwrap();
        assert_eq!(entry.key, format!("{prefix}item").into_bytes());
        assert_eq!(entry.field, Some(id.to_string().into_bytes()));
        assert_eq!(
            hget(&entry.key, &id.to_string().into_bytes()).await,
            Some(rmp_serde::to_vec_named(&value).unwrap())
        );
    }
    let hash_key = format!("{prefix}item").into_bytes();
    assert_eq!(raw_type(&mut raw_conn().await, &hash_key).await, "hash");
    assert_eq!(hkeys(&hash_key).await, ["1", "2"]);
}

#[tokio::test]
async fn hash_del_removes_only_that_field() {
    for (name, cache) in backends("hash_del").await {
        let (k1, k2) = (ItemKey { item_id: 1 }, ItemKey { item_id: 2 });
        let calls = AtomicUsize::new(0);
        fetch_item(&cache, &ITEM_HASH, &k1, &calls, item(1, "a")).await;
        fetch_item(&cache, &ITEM_HASH, &k2, &calls, item(2, "b")).await;
        cache.hash_del(&ITEM_HASH, &k1).await.unwrap();
        assert!(!cache.exists(&ITEM_HASH, &k1).await.unwrap(), "{name}");
        assert!(
            cache.exists(&ITEM_HASH, &k2).await.unwrap(),
            "{name}: the other field stays"
        );
        assert_eq!(
            fetch_item(&cache, &ITEM_HASH, &k2, &calls, item(2, "x")).await,
            item(2, "b"),
            "{name}"
        );
        assert_eq!(
            fetch_item(&cache, &ITEM_HASH, &k1, &calls, item(1, "a2")).await,
            item(1, "a2"),
            "{name}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3, "{name}");
        // invalidate is the same operation.
        cache.invalidate(&ITEM_HASH, &k2).await.unwrap();
        assert!(!cache.exists(&ITEM_HASH, &k2).await.unwrap(), "{name}");
        assert!(cache.exists(&ITEM_HASH, &k1).await.unwrap(), "{name}");
        // Deleting a field that is not there is fine.
        cache
            .hash_del(&ITEM_HASH, &ItemKey { item_id: 77 })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn hash_del_leaves_the_other_fields_in_redis() {
    let (cache, prefix) = redis_cache("hash_del_raw").await;
    let calls = AtomicUsize::new(0);
    for id in [1, 2, 3] {
        fetch_item(
            &cache,
            &ITEM_HASH,
            &ItemKey { item_id: id },
            &calls,
            item(id, "v"),
        )
        .await;
    }
    cache
        .hash_del(&ITEM_HASH, &ItemKey { item_id: 2 })
        .await
        .unwrap();
    let hash_key = format!("{prefix}item").into_bytes();
    assert_eq!(hkeys(&hash_key).await, ["1", "3"]);
    cache
        .hash_del(&ITEM_HASH, &ItemKey { item_id: 1 })
        .await
        .unwrap();
    cache
        .hash_del(&ITEM_HASH, &ItemKey { item_id: 3 })
        .await
        .unwrap();
    assert_eq!(raw_type(&mut raw_conn().await, &hash_key).await, "none");
}

#[derive(Debug, Clone, Serialize, CacheKey)]
struct UserItemKey {
    user_id: u64,
    item_id: u64,
}

const USER_ITEMS: Strategy<Item, UserItemKey, Hash> =
    Strategy::hash("user:<user_id>:items", "<item_id>").expire(600);
const USER_ITEMS_V3: Strategy<Item, UserItemKey, Hash> =
    Strategy::hash("user:<user_id>:items", "<item_id>")
        .expire(600)
        .version(3);

#[tokio::test]
async fn a_hash_key_template_with_a_placeholder() {
    for (name, cache) in backends("hash_template").await {
        let u1 = UserItemKey {
            user_id: 1,
            item_id: 5,
        };
        let u2 = UserItemKey {
            user_id: 2,
            item_id: 5,
        };
        let e1 = cache.entry_key(&USER_ITEMS, &u1).unwrap();
        let e2 = cache.entry_key(&USER_ITEMS, &u2).unwrap();
        assert!(e1.key.ends_with(b"user:1:items"), "{name}: {:?}", e1.key);
        assert!(e2.key.ends_with(b"user:2:items"), "{name}: {:?}", e2.key);
        assert_eq!(e1.field.as_deref(), Some(&b"5"[..]), "{name}");
        assert_eq!(e2.field.as_deref(), Some(&b"5"[..]), "{name}");
        // The version goes on the field.
        let v3 = cache.entry_key(&USER_ITEMS_V3, &u1).unwrap();
        assert_eq!(v3.key, e1.key, "{name}");
        assert_eq!(v3.field.as_deref(), Some(&b"5#v3"[..]), "{name}");

        let calls = AtomicUsize::new(0);
        assert_eq!(
            fetch_item(&cache, &USER_ITEMS, &u1, &calls, item(5, "u1"))
                .await
                .name,
            "u1",
            "{name}"
        );
        assert_eq!(
            fetch_item(&cache, &USER_ITEMS, &u2, &calls, item(5, "u2"))
                .await
                .name,
            "u2",
            "{name}"
        );
        assert_eq!(
            fetch_item(&cache, &USER_ITEMS, &u1, &calls, item(5, "x"))
                .await
                .name,
            "u1",
            "{name}"
        );
        assert_eq!(
            fetch_item(&cache, &USER_ITEMS_V3, &u1, &calls, item(5, "v3"))
                .await
                .name,
            "v3",
            "{name}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3, "{name}");
        cache.hash_del(&USER_ITEMS, &u1).await.unwrap();
        assert!(!cache.exists(&USER_ITEMS, &u1).await.unwrap(), "{name}");
        assert!(cache.exists(&USER_ITEMS, &u2).await.unwrap(), "{name}");
        assert!(cache.exists(&USER_ITEMS_V3, &u1).await.unwrap(), "{name}");
    }
}

#[tokio::test]
async fn the_hash_key_gets_the_strategy_ttl() {
    let (cache, prefix) = redis_cache("hash_ttl").await;
    let mut conn = raw_conn().await;
    let calls = AtomicUsize::new(0);
    fetch_item(
        &cache,
        &ITEM_HASH,
        &ItemKey { item_id: 1 },
        &calls,
        item(1, "t"),
    )
    .await;
    let hash_key = format!("{prefix}item").into_bytes();
    let ttl = raw_pttl(&mut conn, &hash_key).await;
    assert!(ttl > 86_400_000 - 5_000 && ttl <= 86_400_000, "PTTL {ttl}");

    // A second field keeps the hash's TTL at least the strategy's.
    fetch_item(
        &cache,
        &ITEM_HASH,
        &ItemKey { item_id: 2 },
        &calls,
        item(2, "t"),
    )
    .await;
    let ttl = raw_pttl(&mut conn, &hash_key).await;
    assert!(ttl > 86_400_000 - 5_000 && ttl <= 86_400_000, "PTTL {ttl}");

    let u = UserItemKey {
        user_id: 9,
        item_id: 1,
    };
    fetch_item(&cache, &USER_ITEMS, &u, &calls, item(1, "t")).await;
    let ttl = raw_pttl(&mut conn, &cache.entry_key(&USER_ITEMS, &u).unwrap().key).await;
    assert!(ttl > 595_000 && ttl <= 600_000, "PTTL {ttl}");
}

#[tokio::test]
async fn a_loader_error_leaves_no_field_behind() {
    for (name, cache) in backends("hash_loader_error").await {
        let key = ItemKey { item_id: 3 };
        let calls = AtomicUsize::new(0);
        fetch_item(
            &cache,
            &ITEM_HASH,
            &ItemKey { item_id: 4 },
            &calls,
            item(4, "other"),
        )
        .await;
        let err = cache
            .fetch(&ITEM_HASH, &key, || async {
                Err::<Item, _>(std::io::Error::other("db"))
            })
            .await;
        assert!(err.is_err(), "{name}");
        assert!(!cache.exists(&ITEM_HASH, &key).await.unwrap(), "{name}");
        let started = std::time::Instant::now();
        assert_eq!(
            fetch_item(&cache, &ITEM_HASH, &key, &calls, item(3, "ok")).await,
            item(3, "ok"),
            "{name}"
        );
        assert!(
            started.elapsed().as_millis() < 1500,
            "{name}: waited on a leftover lease"
        );
        assert!(
            cache
                .exists(&ITEM_HASH, &ItemKey { item_id: 4 })
                .await
                .unwrap(),
            "{name}"
        );
    }
}
