//! Entries that do not decode (garbage, another Redis type, a hostile MessagePack header, an old
//! value type) are misses: the loader runs, its value replaces the entry, and
//! `stats().undecodable` counts it. Nothing panics.

mod support;

use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};

use cacheobj::{Cache, CacheKey, CacheValue, Codec, Counter, Hash, Kind, List, Set, Strategy};
use cacheobj_strategies::{Item, ItemKey, ITEM, ITEM_HASH, ITEM_MEMBERS, ITEM_STAT, ITEM_TAGS};
use serde::{Deserialize, Serialize};
use support::{backends, entry_redis_key, raw_conn, raw_type, redis_cache};

fn item(id: u64) -> Item {
    Item {
        id,
        name: format!("fresh-{id}"),
    }
}

/// Fetches twice: the first fetch must load `value` and count one undecodable entry, the
/// second must be a hit on what the first wrote.
async fn assert_recovers<V, K, Kd>(
    what: &str,
    cache: &Cache,
    strategy: &Strategy<V, K, Kd>,
    key: &K,
    value: V,
) where
    K: CacheKey,
    Kd: Kind,
    V: CacheValue<Kd> + Clone + PartialEq + Debug,
{
    let before = cache.stats();
    let calls = AtomicUsize::new(0);
    let load = || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>(value.clone())
    };
    let got = cache.fetch(strategy, key, load).await.unwrap();
    assert_eq!(got, value, "{what}: the loader's value is returned");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "{what}: the loader ran");
    let after = cache.stats();
    assert_eq!(
        after.undecodable,
        before.undecodable + 1,
        "{what}: undecodable counted once ({after:?})"
    );

    let again = cache.fetch(strategy, key, load).await.unwrap();
    assert_eq!(again, value, "{what}: the entry was overwritten");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "{what}: the second fetch is a hit"
    );
    let last = cache.stats();
    assert_eq!(
        last.undecodable, after.undecodable,
        "{what}: no more undecodable"
    );
    assert_eq!(last.hits, after.hits + 1, "{what}: counted as a hit");
}

async fn redis_do(args: &[&[u8]]) {
    let mut conn = raw_conn().await;
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query_async(&mut conn).await.unwrap();
}

async fn raw_get(key: &[u8]) -> Option<Vec<u8>> {
    let mut conn = raw_conn().await;
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// A MessagePack str32 header declaring a 4 GiB string, followed by a few bytes.
const HUGE_STR: &[u8] = &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a', b'b', b'c'];
/// A MessagePack array32 header declaring 4 G elements.
const HUGE_ARRAY: &[u8] = &[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02];
/// A MessagePack map32 header declaring 4 G entries.
const HUGE_MAP: &[u8] = &[0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, b'a', 0x01];

#[tokio::test]
async fn garbage_bytes_under_an_obj_key() {
    let (cache, _) = redis_cache("undec_garbage").await;
    let key = ItemKey { item_id: 1 };
    let raw = entry_redis_key(&cache, &ITEM, &key);
    redis_do(&[b"SET", &raw, b"\xff\xfe not msgpack \x00"]).await;
    assert_recovers("garbage", &cache, &ITEM, &key, item(1)).await;
    assert_eq!(
        raw_get(&raw).await,
        Some(rmp_serde::to_vec_named(&item(1)).unwrap())
    );

    let empty = ItemKey { item_id: 2 };
    redis_do(&[b"SET", &entry_redis_key(&cache, &ITEM, &empty), b""]).await;
    assert_recovers("empty string", &cache, &ITEM, &empty, item(2)).await;
}

#[tokio::test]
async fn another_redis_type_under_an_obj_key() {
    let (cache, _) = redis_cache("undec_obj_type").await;
    let (k1, k2, k3) = (
        ItemKey { item_id: 1 },
        ItemKey { item_id: 2 },
        ItemKey { item_id: 3 },
    );
    redis_do(&[b"RPUSH", &entry_redis_key(&cache, &ITEM, &k1), b"a", b"b"]).await;
    assert_recovers("list under obj", &cache, &ITEM, &k1, item(1)).await;
    redis_do(&[b"SADD", &entry_redis_key(&cache, &ITEM, &k2), b"a"]).await;
    assert_recovers("set under obj", &cache, &ITEM, &k2, item(2)).await;
    redis_do(&[b"HSET", &entry_redis_key(&cache, &ITEM, &k3), b"f", b"v"]).await;
    assert_recovers("hash under obj", &cache, &ITEM, &k3, item(3)).await;
    let raw = entry_redis_key(&cache, &ITEM, &k1);
    assert_eq!(raw_type(&mut raw_conn().await, &raw).await, "string");
}

#[tokio::test]
async fn another_redis_type_under_a_list_or_set_key() {
    let (cache, _) = redis_cache("undec_coll_type").await;
    let mut conn = raw_conn().await;
    let (k1, k2) = (ItemKey { item_id: 1 }, ItemKey { item_id: 2 });

    let list_key = entry_redis_key(&cache, &ITEM_MEMBERS, &k1);
    redis_do(&[b"SET", &list_key, b"hello"]).await;
    assert_recovers(
        "string under list",
        &cache,
        &ITEM_MEMBERS,
        &k1,
        vec![1u64, 2],
    )
    .await;
    assert_eq!(raw_type(&mut conn, &list_key).await, "list");

    redis_do(&[b"SADD", &entry_redis_key(&cache, &ITEM_MEMBERS, &k2), b"1"]).await;
    assert_recovers("set under list", &cache, &ITEM_MEMBERS, &k2, vec![3u64]).await;

    let set_key = entry_redis_key(&cache, &ITEM_TAGS, &k1);
    redis_do(&[b"RPUSH", &set_key, b"x"]).await;
    assert_recovers(
        "list under set",
        &cache,
        &ITEM_TAGS,
        &k1,
        vec!["t".to_string()],
    )
    .await;
    assert_eq!(raw_type(&mut conn, &set_key).await, "set");

    redis_do(&[
        b"SET",
        &entry_redis_key(&cache, &ITEM_TAGS, &k2),
        b"\xc1\xc1",
    ])
    .await;
    assert_recovers(
        "string under set",
        &cache,
        &ITEM_TAGS,
        &k2,
        vec!["u".to_string()],
    )
    .await;
}

#[tokio::test]
async fn another_redis_type_or_garbage_under_a_hash_key() {
    let (cache, prefix) = redis_cache("undec_hash").await;
    let hash_key = format!("{prefix}item").into_bytes();
    redis_do(&[b"SET", &hash_key, b"not a hash"]).await;
    assert_recovers(
        "string under hash",
        &cache,
        &ITEM_HASH,
        &ItemKey { item_id: 1 },
        item(1),
    )
    .await;
    assert_eq!(raw_type(&mut raw_conn().await, &hash_key).await, "hash");

    // Garbage in one field: that field is replaced, the others stay.
    let other = ItemKey { item_id: 3 };
    cache
        .fetch(&ITEM_HASH, &other, || async {
            Ok::<_, std::io::Error>(item(3))
        })
        .await
        .unwrap();
    redis_do(&[b"HSET", &hash_key, b"2", b"\xff\xff"]).await;
    assert_recovers(
        "garbage field",
        &cache,
        &ITEM_HASH,
        &ItemKey { item_id: 2 },
        item(2),
    )
    .await;
    assert!(cache.exists(&ITEM_HASH, &other).await.unwrap());
    assert!(cache
        .exists(&ITEM_HASH, &ItemKey { item_id: 1 })
        .await
        .unwrap());

    redis_do(&[b"HSET", &hash_key, b"4", HUGE_STR]).await;
    assert_recovers(
        "4 GiB header in a field",
        &cache,
        &ITEM_HASH,
        &ItemKey { item_id: 4 },
        item(4),
    )
    .await;
}

const NAME: Strategy<String, ItemKey> =
    Strategy::<String, ItemKey>::obj("name:<item_id>").expire(60);
const MAYBE_NAME: Strategy<Option<String>, ItemKey> =
    Strategy::<Option<String>, ItemKey>::obj("maybe_name:<item_id>").expire(60);
const NUMBERS: Strategy<Vec<u64>, ItemKey> =
    Strategy::<Vec<u64>, ItemKey>::obj("numbers:<item_id>").expire(60);
const BLOB: Strategy<Vec<u8>, ItemKey> =
    Strategy::<Vec<u8>, ItemKey>::obj("blob:<item_id>").expire(60);
const POSTCARD_ITEM: Strategy<Item, ItemKey> = Strategy::<Item, ItemKey>::obj("pc:<item_id>")
    .expire(60)
    .codec(Codec::Postcard);
const ITEM_LIST: Strategy<Vec<Item>, ItemKey, List> =
    Strategy::list("item_list:<item_id>").expire(60);

#[tokio::test]
async fn a_messagepack_header_declaring_4_gib() {
    let (cache, _) = redis_cache("undec_huge").await;
    let k = ItemKey { item_id: 1 };
    for (what, bytes) in [
        ("str32", HUGE_STR),
        ("array32", HUGE_ARRAY),
        ("map32", HUGE_MAP),
    ] {
        redis_do(&[b"SET", &entry_redis_key(&cache, &ITEM, &k), bytes]).await;
        assert_recovers(&format!("{what} as Item"), &cache, &ITEM, &k, item(1)).await;
        redis_do(&[b"SET", &entry_redis_key(&cache, &NAME, &k), bytes]).await;
        assert_recovers(
            &format!("{what} as String"),
            &cache,
            &NAME,
            &k,
            "n".to_string(),
        )
        .await;
        redis_do(&[b"SET", &entry_redis_key(&cache, &MAYBE_NAME, &k), bytes]).await;
        assert_recovers(
            &format!("{what} as Option<String>"),
            &cache,
            &MAYBE_NAME,
            &k,
            Some("n".to_string()),
        )
        .await;
        redis_do(&[b"SET", &entry_redis_key(&cache, &NUMBERS, &k), bytes]).await;
        assert_recovers(
            &format!("{what} as Vec<u64>"),
            &cache,
            &NUMBERS,
            &k,
            vec![1, 2],
        )
        .await;
        redis_do(&[b"SET", &entry_redis_key(&cache, &BLOB, &k), bytes]).await;
        assert_recovers(&format!("{what} as Vec<u8>"), &cache, &BLOB, &k, vec![9u8]).await;
        // A structured list element goes through the codec too.
        let list_key = entry_redis_key(&cache, &ITEM_LIST, &k);
        redis_do(&[b"DEL", &list_key]).await;
        redis_do(&[b"RPUSH", &list_key, bytes]).await;
        assert_recovers(
            &format!("{what} as a list element"),
            &cache,
            &ITEM_LIST,
            &k,
            vec![item(1)],
        )
        .await;
    }
    // postcard: a varint length of u64::MAX for the name.
    let mut huge_postcard = vec![0x01];
    huge_postcard.extend_from_slice(&[0xff; 9]);
    huge_postcard.push(0x01);
    redis_do(&[
        b"SET",
        &entry_redis_key(&cache, &POSTCARD_ITEM, &k),
        &huge_postcard,
    ])
    .await;
    assert_recovers("postcard huge length", &cache, &POSTCARD_ITEM, &k, item(1)).await;
}

/// What `Item` looked like before it had a name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OldItem {
    id: u64,
}

#[tokio::test]
async fn a_value_of_an_old_type_in_redis() {
    let (cache, _) = redis_cache("undec_old_type").await;
    let k = ItemKey { item_id: 1 };
    let old = rmp_serde::to_vec_named(&OldItem { id: 1 }).unwrap();
    redis_do(&[b"SET", &entry_redis_key(&cache, &ITEM, &k), &old]).await;
    assert_recovers("OldItem as Item", &cache, &ITEM, &k, item(1)).await;

    let k2 = ItemKey { item_id: 2 };
    let number = rmp_serde::to_vec_named(&42u64).unwrap();
    redis_do(&[b"SET", &entry_redis_key(&cache, &ITEM, &k2), &number]).await;
    assert_recovers("u64 as Item", &cache, &ITEM, &k2, item(2)).await;

    // A counter holding text that is not an integer, and list elements of another type.
    redis_do(&[b"SET", &entry_redis_key(&cache, &ITEM_STAT, &k), b"12.5"]).await;
    assert_recovers("non-integer counter", &cache, &ITEM_STAT, &k, 3i64).await;
    redis_do(&[
        b"RPUSH",
        &entry_redis_key(&cache, &ITEM_MEMBERS, &k),
        b"1",
        b"two",
    ])
    .await;
    assert_recovers(
        "non-integer list element",
        &cache,
        &ITEM_MEMBERS,
        &k,
        vec![1u64, 2],
    )
    .await;
}

// Strategies of different kinds or value types sharing a template: on the memory backend this
// is the only way to put something undecodable under a key, and it must behave like Redis.
const OLD_SHAPE: Strategy<OldItem, ItemKey> =
    Strategy::<OldItem, ItemKey>::obj("shared:<item_id>").expire(60);
const NEW_SHAPE: Strategy<Item, ItemKey> =
    Strategy::<Item, ItemKey>::obj("shared:<item_id>").expire(60);
const SHARED_LIST: Strategy<Vec<u64>, ItemKey, List> =
    Strategy::list("shared:<item_id>").expire(60);
const SHARED_SET: Strategy<Vec<String>, ItemKey, Set> =
    Strategy::set("shared:<item_id>").expire(60);
const SHARED_COUNTER: Strategy<i64, ItemKey, Counter> =
    Strategy::counter("shared:<item_id>").expire(60);
const SHARED_HASH: Strategy<Item, ItemKey, Hash> =
    Strategy::hash("shared:<item_id>", "f").expire(60);
const LIST_OF_TEXT: Strategy<Vec<String>, ItemKey, List> =
    Strategy::list("shared:<item_id>").expire(60);

#[tokio::test]
async fn entries_of_another_kind_or_type_on_both_backends() {
    for (name, cache) in backends("undec_shared").await {
        let k = ItemKey { item_id: 1 };
        cache
            .fetch(&OLD_SHAPE, &k, || async {
                Ok::<_, std::io::Error>(OldItem { id: 1 })
            })
            .await
            .unwrap();
        assert_recovers(
            &format!("{name}: old type"),
            &cache,
            &NEW_SHAPE,
            &k,
            item(1),
        )
        .await;

        assert_recovers(
            &format!("{name}: obj under list"),
            &cache,
            &SHARED_LIST,
            &k,
            vec![5u64],
        )
        .await;
        assert_recovers(
            &format!("{name}: list under set"),
            &cache,
            &SHARED_SET,
            &k,
            vec!["s".to_string()],
        )
        .await;
        assert_recovers(
            &format!("{name}: set under counter"),
            &cache,
            &SHARED_COUNTER,
            &k,
            4i64,
        )
        .await;
        assert_recovers(
            &format!("{name}: counter under hash"),
            &cache,
            &SHARED_HASH,
            &k,
            item(1),
        )
        .await;
        assert_recovers(
            &format!("{name}: hash under obj"),
            &cache,
            &NEW_SHAPE,
            &k,
            item(2),
        )
        .await;

        // Text elements that do not parse as the element type.
        cache.invalidate(&LIST_OF_TEXT, &k).await.unwrap();
        cache
            .fetch(&LIST_OF_TEXT, &k, || async {
                Ok::<_, std::io::Error>(vec!["x".to_string()])
            })
            .await
            .unwrap();
        assert_recovers(
            &format!("{name}: text elements as u64"),
            &cache,
            &SHARED_LIST,
            &k,
            vec![6u64],
        )
        .await;

        // incr on a value that is not a count drops it instead of failing.
        cache
            .fetch(&NEW_SHAPE, &ItemKey { item_id: 2 }, || async {
                Ok::<_, std::io::Error>(item(2))
            })
            .await
            .unwrap();
        let got = cache
            .incr(&SHARED_COUNTER, &ItemKey { item_id: 2 }, 1)
            .await;
        assert!(
            matches!(got, Ok(None)),
            "{name}: incr on a non-count: {got:?}"
        );
        assert!(
            !cache
                .exists(&NEW_SHAPE, &ItemKey { item_id: 2 })
                .await
                .unwrap(),
            "{name}"
        );

        let s = cache.stats();
        assert_eq!(s.errors, 0, "{name}: {s:?}");
    }
}
