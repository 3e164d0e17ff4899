//! Set strategies: an unordered Redis SET of plain-text elements.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use cacheobj::{Cache, Set, Strategy};
use cacheobj_strategies::{ItemKey, ITEM_TAGS};
use support::{backends, entry_redis_key, raw_conn, raw_type, redis_cache};

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn fetch_tags(
    cache: &Cache,
    key: &ItemKey,
    calls: &AtomicUsize,
    value: Vec<String>,
) -> Vec<String> {
    let got = cache
        .fetch(&ITEM_TAGS, key, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(value)
        })
        .await
        .unwrap();
    sorted(got)
}

async fn smembers(key: &[u8]) -> Vec<String> {
    let mut conn = raw_conn().await;
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    sorted(members)
}

#[tokio::test]
async fn fetch_caches_the_members() {
    for (name, cache) in backends("set_fetch").await {
        let key = ItemKey { item_id: 1 };
        let calls = AtomicUsize::new(0);
        let tags = strings(&["b", "a", "c"]);
        assert_eq!(
            fetch_tags(&cache, &key, &calls, tags.clone()).await,
            ["a", "b", "c"],
            "{name}"
        );
        assert_eq!(
            fetch_tags(&cache, &key, &calls, vec![]).await,
            ["a", "b", "c"],
            "{name}: hit"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
        assert_eq!(
            cache.set_len(&ITEM_TAGS, &key).await.unwrap(),
            Some(3),
            "{name}"
        );
    }
}

#[tokio::test]
async fn duplicates_collapse() {
    for (name, cache) in backends("set_dups").await {
        let key = ItemKey { item_id: 2 };
        let calls = AtomicUsize::new(0);
        let got = fetch_tags(&cache, &key, &calls, strings(&["x", "x", "y"])).await;
        // The first fetch returns the loader's value as is; what is cached is a set.
        assert_eq!(got, ["x", "x", "y"], "{name}");
        assert_eq!(
            fetch_tags(&cache, &key, &calls, vec![]).await,
            ["x", "y"],
            "{name}"
        );
        assert_eq!(
            cache.set_len(&ITEM_TAGS, &key).await.unwrap(),
            Some(2),
            "{name}"
        );
    }
}

#[tokio::test]
async fn elements_are_plain_text_in_a_redis_set() {
    let (cache, prefix) = redis_cache("set_raw").await;
    let key = ItemKey { item_id: 3 };
    let calls = AtomicUsize::new(0);
    fetch_tags(&cache, &key, &calls, strings(&["red", "a b", "ü"])).await;
    let raw_key = entry_redis_key(&cache, &ITEM_TAGS, &key);
    assert_eq!(raw_key, format!("{prefix}item:tags:3").into_bytes());
    assert_eq!(raw_type(&mut raw_conn().await, &raw_key).await, "set");
    assert_eq!(smembers(&raw_key).await, ["a b", "red", "ü"]);
    cache
        .set_add(&ITEM_TAGS, &key, &strings(&["new"]))
        .await
        .unwrap();
    cache
        .set_remove(&ITEM_TAGS, &key, &strings(&["red"]))
        .await
        .unwrap();
    assert_eq!(smembers(&raw_key).await, ["a b", "new", "ü"]);
}

const IDS: Strategy<HashSet<u64>, ItemKey, Set> = Strategy::set("ids:<item_id>").expire(60);
const SORTED: Strategy<BTreeSet<i32>, ItemKey, Set> = Strategy::set("sorted:<item_id>").expire(60);

#[tokio::test]
async fn integer_sets_are_decimal_text() {
    let (cache, _) = redis_cache("set_ints").await;
    let key = ItemKey { item_id: 4 };
    let ids: HashSet<u64> = [1, 20, 300].into();
    let got = cache
        .fetch(&IDS, &key, || async {
            Ok::<_, std::io::Error>(ids.clone())
        })
        .await
        .unwrap();
    assert_eq!(got, ids);
    assert_eq!(
        smembers(&entry_redis_key(&cache, &IDS, &key)).await,
        ["1", "20", "300"]
    );
    let again = cache
        .fetch(&IDS, &key, || async {
            Ok::<_, std::io::Error>(HashSet::new())
        })
        .await
        .unwrap();
    assert_eq!(again, ids);

    let neg: BTreeSet<i32> = [-5, 0, 5].into();
    cache
        .fetch(&SORTED, &key, || async {
            Ok::<_, std::io::Error>(neg.clone())
        })
        .await
        .unwrap();
    let back = cache
        .fetch(&SORTED, &key, || async {
            Ok::<_, std::io::Error>(BTreeSet::new())
        })
        .await
        .unwrap();
    assert_eq!(back, neg);
}

#[tokio::test]
async fn add_rem_len_and_contains_change_a_cached_set() {
    for (name, cache) in backends("set_ops").await {
        let key = ItemKey { item_id: 5 };
        let calls = AtomicUsize::new(0);
        fetch_tags(&cache, &key, &calls, strings(&["a"])).await;
        assert_eq!(
            cache
                .set_add(&ITEM_TAGS, &key, &strings(&["b", "c"]))
                .await
                .unwrap(),
            Some(3),
            "{name}"
        );
        assert_eq!(
            cache
                .set_add(&ITEM_TAGS, &key, &strings(&["a"]))
                .await
                .unwrap(),
            Some(3),
            "{name}: already there"
        );
        assert_eq!(
            cache.set_len(&ITEM_TAGS, &key).await.unwrap(),
            Some(3),
            "{name}"
        );
        assert_eq!(
            cache
                .set_contains(&ITEM_TAGS, &key, &"b".to_string())
                .await
                .unwrap(),
            Some(true),
            "{name}"
        );
        assert_eq!(
            cache
                .set_contains(&ITEM_TAGS, &key, &"z".to_string())
                .await
                .unwrap(),
            Some(false),
            "{name}"
        );
        assert_eq!(
            cache
                .set_remove(&ITEM_TAGS, &key, &strings(&["b", "zz"]))
                .await
                .unwrap(),
            Some(2),
            "{name}"
        );
        assert_eq!(
            cache
                .set_contains(&ITEM_TAGS, &key, &"b".to_string())
                .await
                .unwrap(),
            Some(false),
            "{name}"
        );
        assert_eq!(
            fetch_tags(&cache, &key, &calls, vec![]).await,
            ["a", "c"],
            "{name}"
        );
        assert_eq!(
            cache.set_add(&ITEM_TAGS, &key, &[]).await.unwrap(),
            Some(2),
            "{name}"
        );
        assert_eq!(
            cache.set_remove(&ITEM_TAGS, &key, &[]).await.unwrap(),
            Some(2),
            "{name}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
    }
}

#[tokio::test]
async fn ops_on_an_uncached_set_return_none_and_leave_it_uncached() {
    for (name, cache) in backends("set_uncached").await {
        let key = ItemKey { item_id: 6 };
        let a = strings(&["a"]);
        assert_eq!(
            cache.set_add(&ITEM_TAGS, &key, &a).await.unwrap(),
            None,
            "{name}"
        );
        assert_eq!(
            cache.set_remove(&ITEM_TAGS, &key, &a).await.unwrap(),
            None,
            "{name}"
        );
        assert_eq!(
            cache.set_len(&ITEM_TAGS, &key).await.unwrap(),
            None,
            "{name}"
        );
        assert_eq!(
            cache.set_contains(&ITEM_TAGS, &key, &a[0]).await.unwrap(),
            None,
            "{name}"
        );
        assert!(!cache.exists(&ITEM_TAGS, &key).await.unwrap(), "{name}");
        let calls = AtomicUsize::new(0);
        assert_eq!(
            fetch_tags(&cache, &key, &calls, strings(&["q"])).await,
            ["q"],
            "{name}"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "{name}: set_add did not create it"
        );
    }
    let (cache, _) = redis_cache("set_uncached_raw").await;
    let key = ItemKey { item_id: 6 };
    assert_eq!(
        cache
            .set_add(&ITEM_TAGS, &key, &strings(&["a"]))
            .await
            .unwrap(),
        None
    );
    let raw_key = entry_redis_key(&cache, &ITEM_TAGS, &key);
    assert_eq!(raw_type(&mut raw_conn().await, &raw_key).await, "none");
}

#[tokio::test]
async fn an_empty_set_is_cached_and_can_be_added_to() {
    for (name, cache) in backends("set_empty").await {
        let key = ItemKey { item_id: 7 };
        let calls = AtomicUsize::new(0);
        assert!(
            fetch_tags(&cache, &key, &calls, vec![]).await.is_empty(),
            "{name}"
        );
        assert!(
            fetch_tags(&cache, &key, &calls, strings(&["x"]))
                .await
                .is_empty(),
            "{name}: the empty set is a hit"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
        assert!(cache.exists(&ITEM_TAGS, &key).await.unwrap(), "{name}");
        assert_eq!(
            cache.set_len(&ITEM_TAGS, &key).await.unwrap(),
            Some(0),
            "{name}"
        );
        assert_eq!(
            cache
                .set_contains(&ITEM_TAGS, &key, &"x".to_string())
                .await
                .unwrap(),
            Some(false),
            "{name}"
        );
        assert_eq!(
            cache
                .set_remove(&ITEM_TAGS, &key, &strings(&["x"]))
                .await
                .unwrap(),
            Some(0),
            "{name}"
        );
        assert_eq!(
            cache
                .set_add(&ITEM_TAGS, &key, &strings(&["x", "y"]))
                .await
                .unwrap(),
            Some(2),
            "{name}"
        );
        assert_eq!(
            fetch_tags(&cache, &key, &calls, vec![]).await,
            ["x", "y"],
            "{name}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
    }
    let (cache, _) = redis_cache("set_empty_raw").await;
    let key = ItemKey { item_id: 7 };
    let calls = AtomicUsize::new(0);
    fetch_tags(&cache, &key, &calls, vec![]).await;
    cache
        .set_add(&ITEM_TAGS, &key, &strings(&["x"]))
        .await
        .unwrap();
    let raw_key = entry_redis_key(&cache, &ITEM_TAGS, &key);
    assert_eq!(raw_type(&mut raw_conn().await, &raw_key).await, "set");
    assert_eq!(smembers(&raw_key).await, ["x"]);
}

#[tokio::test]
async fn removing_the_last_member_leaves_a_cached_empty_set() {
    for (name, cache) in backends("set_remove_last").await {
        let key = ItemKey { item_id: 8 };
        let calls = AtomicUsize::new(0);
        fetch_tags(&cache, &key, &calls, strings(&["only"])).await;
        assert_eq!(
            cache
                .set_remove(&ITEM_TAGS, &key, &strings(&["only"]))
                .await
                .unwrap(),
            Some(0),
            "{name}"
        );
        assert_eq!(
            cache.set_len(&ITEM_TAGS, &key).await.unwrap(),
            Some(0),
            "{name}"
        );
        assert!(cache.exists(&ITEM_TAGS, &key).await.unwrap(), "{name}");
        assert!(
            fetch_tags(&cache, &key, &calls, strings(&["new"]))
                .await
                .is_empty(),
            "{name}: still cached, as empty"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
        assert_eq!(
            cache
                .set_add(&ITEM_TAGS, &key, &strings(&["z"]))
                .await
                .unwrap(),
            Some(1),
            "{name}"
        );
        assert_eq!(
            fetch_tags(&cache, &key, &calls, vec![]).await,
            ["z"],
            "{name}"
        );
    }
}

/// `set_rem`, the name before `set_remove`, still compiles and removes.
#[tokio::test]
#[allow(deprecated)]
async fn the_deprecated_set_rem_still_removes() {
    let cache = Cache::in_memory();
    let key = ItemKey { item_id: 1 };
    let calls = AtomicUsize::new(0);
    fetch_tags(&cache, &key, &calls, strings(&["a"])).await;
    let left = cache.set_rem(&ITEM_TAGS, &key, &strings(&["a"])).await;
    assert_eq!(left.unwrap(), Some(0));
}
