//! List strategies: an ordered Redis LIST of plain-text elements.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use cacheobj::{Cache, List, Strategy};
use cacheobj_strategies::{ItemKey, ITEM_MEMBERS};
use support::{backends, entry_redis_key, raw_conn, raw_type, redis_cache};

async fn fetch_list(
    cache: &Cache,
    key: &ItemKey,
    calls: &AtomicUsize,
    value: Vec<u64>,
) -> Vec<u64> {
    cache
        .fetch(&ITEM_MEMBERS, key, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(value)
        })
        .await
        .unwrap()
}

async fn lrange(key: &[u8]) -> Vec<String> {
    let mut conn = raw_conn().await;
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn fetch_keeps_order_and_duplicates() {
    for (name, cache) in backends("list_order").await {
        let key = ItemKey { item_id: 1 };
        let calls = AtomicUsize::new(0);
        let value = vec![3, 1, 2, 1, 10];
        assert_eq!(
            fetch_list(&cache, &key, &calls, value.clone()).await,
            value,
            "{name}"
        );
        assert_eq!(
            fetch_list(&cache, &key, &calls, vec![9]).await,
            value,
            "{name}: hit"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
        assert_eq!(
            cache.list_len(&ITEM_MEMBERS, &key).await.unwrap(),
            Some(5),
            "{name}"
        );
    }
}

#[tokio::test]
async fn elements_are_plain_text_in_a_redis_list() {
    let (cache, prefix) = redis_cache("list_raw").await;
    let key = ItemKey { item_id: 2 };
    let calls = AtomicUsize::new(0);
    fetch_list(&cache, &key, &calls, vec![3, 1, 20]).await;
    let raw_key = entry_redis_key(&cache, &ITEM_MEMBERS, &key);
    assert_eq!(raw_key, format!("{prefix}item:members:2").into_bytes());
    assert_eq!(raw_type(&mut raw_conn().await, &raw_key).await, "list");
    assert_eq!(lrange(&raw_key).await, ["3", "1", "20"]);

    cache.list_push(&ITEM_MEMBERS, &key, &[7, 8]).await.unwrap();
    assert_eq!(lrange(&raw_key).await, ["3", "1", "20", "7", "8"]);
    cache.list_remove(&ITEM_MEMBERS, &key, &[1]).await.unwrap();
    assert_eq!(lrange(&raw_key).await, ["3", "20", "7", "8"]);
}

const NAMES: Strategy<Vec<String>, ItemKey, List> = Strategy::list("names:<item_id>").expire(60);

#[tokio::test]
async fn string_elements_are_stored_verbatim() {
    let (cache, _) = redis_cache("list_strings").await;
    let key = ItemKey { item_id: 3 };
    let value: Vec<String> = vec!["a b".into(), "ü:{x}".into(), String::new(), "42".into()];
    let got = cache
        .fetch(&NAMES, &key, || async {
            Ok::<_, std::io::Error>(value.clone())
        })
        .await
        .unwrap();
    assert_eq!(got, value);
    assert_eq!(lrange(&entry_redis_key(&cache, &NAMES, &key)).await, value);
    let again = cache
        .fetch(&NAMES, &key, || async { Ok::<_, std::io::Error>(vec![]) })
        .await
        .unwrap();
    assert_eq!(again, value);
}

#[tokio::test]
async fn push_remove_and_len_change_a_cached_list() {
    for (name, cache) in backends("list_ops").await {
        let key = ItemKey { item_id: 4 };
        let calls = AtomicUsize::new(0);
        fetch_list(&cache, &key, &calls, vec![1, 2]).await;
        assert_eq!(
            cache.list_push(&ITEM_MEMBERS, &key, &[3, 4]).await.unwrap(),
            Some(4),
            "{name}"
        );
        assert_eq!(
            cache.list_len(&ITEM_MEMBERS, &key).await.unwrap(),
            Some(4),
            "{name}"
        );
        assert_eq!(
            fetch_list(&cache, &key, &calls, vec![]).await,
            [1, 2, 3, 4],
            "{name}"
        );
        assert_eq!(
            cache.list_remove(&ITEM_MEMBERS, &key, &[2]).await.unwrap(),
            Some(3),
            "{name}"
        );
        assert_eq!(
            fetch_list(&cache, &key, &calls, vec![]).await,
            [1, 3, 4],
            "{name}"
        );
        // Removing takes out every occurrence.
        assert_eq!(
            cache.list_push(&ITEM_MEMBERS, &key, &[1]).await.unwrap(),
            Some(4),
            "{name}"
        );
        assert_eq!(
            cache.list_remove(&ITEM_MEMBERS, &key, &[1]).await.unwrap(),
            Some(2),
            "{name}"
        );
        assert_eq!(
            fetch_list(&cache, &key, &calls, vec![]).await,
            [3, 4],
            "{name}"
        );
        // Removing what is not there changes nothing.
        assert_eq!(
            cache.list_remove(&ITEM_MEMBERS, &key, &[99]).await.unwrap(),
            Some(2),
            "{name}"
        );
        // Empty pushes and removes report the length.
        assert_eq!(
            cache.list_push(&ITEM_MEMBERS, &key, &[]).await.unwrap(),
            Some(2),
            "{name}"
        );
        assert_eq!(
            cache.list_remove(&ITEM_MEMBERS, &key, &[]).await.unwrap(),
            Some(2),
            "{name}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
    }
}

#[tokio::test]
async fn ops_on_an_uncached_list_return_none_and_leave_it_uncached() {
    for (name, cache) in backends("list_uncached").await {
        let key = ItemKey { item_id: 5 };
        assert_eq!(
            cache.list_push(&ITEM_MEMBERS, &key, &[1]).await.unwrap(),
            None,
            "{name}"
        );
        assert_eq!(
            cache.list_remove(&ITEM_MEMBERS, &key, &[1]).await.unwrap(),
            None,
            "{name}"
        );
        assert_eq!(
            cache.list_len(&ITEM_MEMBERS, &key).await.unwrap(),
            None,
            "{name}"
        );
        assert!(!cache.exists(&ITEM_MEMBERS, &key).await.unwrap(), "{name}");
        let calls = AtomicUsize::new(0);
        assert_eq!(
            fetch_list(&cache, &key, &calls, vec![8, 9]).await,
            [8, 9],
            "{name}"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "{name}: the push did not create it"
        );
    }
    let (cache, _) = redis_cache("list_uncached_raw").await;
    let key = ItemKey { item_id: 5 };
    assert_eq!(
        cache.list_push(&ITEM_MEMBERS, &key, &[1]).await.unwrap(),
        None
    );
    let raw_key = entry_redis_key(&cache, &ITEM_MEMBERS, &key);
    assert_eq!(raw_type(&mut raw_conn().await, &raw_key).await, "none");
}

#[tokio::test]
async fn an_empty_list_is_cached_and_can_be_pushed_onto() {
    for (name, cache) in backends("list_empty").await {
        let key = ItemKey { item_id: 6 };
        let calls = AtomicUsize::new(0);
        assert!(
            fetch_list(&cache, &key, &calls, vec![]).await.is_empty(),
            "{name}"
        );
        assert!(
            fetch_list(&cache, &key, &calls, vec![1]).await.is_empty(),
            "{name}: the empty list is a hit"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
        assert!(cache.exists(&ITEM_MEMBERS, &key).await.unwrap(), "{name}");
        assert_eq!(
            cache.list_len(&ITEM_MEMBERS, &key).await.unwrap(),
            Some(0),
            "{name}"
        );
        assert_eq!(
            cache.list_remove(&ITEM_MEMBERS, &key, &[5]).await.unwrap(),
            Some(0),
            "{name}"
        );

        assert_eq!(
            cache.list_push(&ITEM_MEMBERS, &key, &[5]).await.unwrap(),
            Some(1),
            "{name}"
        );
        assert_eq!(
            cache.list_push(&ITEM_MEMBERS, &key, &[6]).await.unwrap(),
            Some(2),
            "{name}"
        );
        assert_eq!(
            fetch_list(&cache, &key, &calls, vec![]).await,
            [5, 6],
            "{name}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
    }
    let (cache, _) = redis_cache("list_empty_raw").await;
    let key = ItemKey { item_id: 6 };
    let calls = AtomicUsize::new(0);
    fetch_list(&cache, &key, &calls, vec![]).await;
    cache.list_push(&ITEM_MEMBERS, &key, &[5, 6]).await.unwrap();
    let raw_key = entry_redis_key(&cache, &ITEM_MEMBERS, &key);
    assert_eq!(raw_type(&mut raw_conn().await, &raw_key).await, "list");
    assert_eq!(lrange(&raw_key).await, ["5", "6"]);
}

#[tokio::test]
async fn removing_the_last_element_leaves_a_cached_empty_list() {
    for (name, cache) in backends("list_remove_last").await {
        let key = ItemKey { item_id: 7 };
        let calls = AtomicUsize::new(0);
        fetch_list(&cache, &key, &calls, vec![7, 7]).await;
        assert_eq!(
            cache.list_remove(&ITEM_MEMBERS, &key, &[7]).await.unwrap(),
            Some(0),
            "{name}"
        );
        assert_eq!(
            cache.list_len(&ITEM_MEMBERS, &key).await.unwrap(),
            Some(0),
            "{name}"
        );
        assert!(cache.exists(&ITEM_MEMBERS, &key).await.unwrap(), "{name}");
        assert!(
            fetch_list(&cache, &key, &calls, vec![1, 2])
                .await
                .is_empty(),
            "{name}: still cached, as empty"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
        assert_eq!(
            cache.list_push(&ITEM_MEMBERS, &key, &[8]).await.unwrap(),
            Some(1),
            "{name}"
        );
        assert_eq!(
            fetch_list(&cache, &key, &calls, vec![]).await,
            [8],
            "{name}"
        );
    }
}

#[tokio::test]
async fn invalidate_removes_a_cached_list() {
    for (name, cache) in backends("list_invalidate").await {
        let key = ItemKey { item_id: 8 };
        let calls = AtomicUsize::new(0);
        fetch_list(&cache, &key, &calls, vec![1]).await;
        cache.invalidate(&ITEM_MEMBERS, &key).await.unwrap();
        assert_eq!(
            cache.list_len(&ITEM_MEMBERS, &key).await.unwrap(),
            None,
            "{name}"
        );
        assert_eq!(
            fetch_list(&cache, &key, &calls, vec![2]).await,
            [2],
            "{name}"
        );
        // An emptied list is invalidated as well.
        cache.list_remove(&ITEM_MEMBERS, &key, &[2]).await.unwrap();
        cache.invalidate(&ITEM_MEMBERS, &key).await.unwrap();
        assert!(!cache.exists(&ITEM_MEMBERS, &key).await.unwrap(), "{name}");
    }
}

#[tokio::test]
async fn long_lists_roundtrip() {
    for (name, cache) in backends("list_long").await {
        let key = ItemKey { item_id: 9 };
        let calls = AtomicUsize::new(0);
        let value: Vec<u64> = (0..2500).collect();
        fetch_list(&cache, &key, &calls, value.clone()).await;
        assert_eq!(
            fetch_list(&cache, &key, &calls, vec![]).await,
            value,
            "{name}"
        );
        let more: Vec<u64> = (2500..4000).collect();
        assert_eq!(
            cache.list_push(&ITEM_MEMBERS, &key, &more).await.unwrap(),
            Some(4000),
            "{name}"
        );
        let evens: Vec<u64> = (0..4000).filter(|n| n % 2 == 0).collect();
        assert_eq!(
            cache
                .list_remove(&ITEM_MEMBERS, &key, &evens)
                .await
                .unwrap(),
            Some(2000),
            "{name}"
        );
        let odds: Vec<u64> = (0..4000).filter(|n| n % 2 == 1).collect();
        assert_eq!(
            fetch_list(&cache, &key, &calls, vec![]).await,
            odds,
            "{name}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
    }
}

/// An empty push or remove changes nothing, so it must not cancel a load in flight; both
/// backends must agree (Redis keeps the fill lease; it is what `list_len` does too).
///
/// The loader holds until the empty push and remove are done, so the order does not depend
/// on timing.
#[tokio::test]
async fn an_empty_push_or_remove_during_a_load_does_not_cancel_its_fill() {
    let mut tasks = Vec::new();
    for (name, cache) in backends("list_empty_op_during_load").await {
        tasks.push(tokio::spawn(async move {
            let key = ItemKey { item_id: 10 };
            let (loading_tx, loading_rx) = tokio::sync::oneshot::channel::<()>();
            let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
            let loader_cache = cache.clone();
            let load = tokio::spawn(async move {
                loader_cache
                    .fetch(&ITEM_MEMBERS, &key, || async move {
                        let _ = loading_tx.send(());
                        let _ = go_rx.await;
                        Ok::<_, std::io::Error>(vec![1u64])
                    })
                    .await
                    .unwrap()
            });
            loading_rx.await.expect("the loader runs");
            assert_eq!(
                cache.list_push(&ITEM_MEMBERS, &key, &[]).await.unwrap(),
                None,
                "{name}"
            );
            assert_eq!(
                cache.list_remove(&ITEM_MEMBERS, &key, &[]).await.unwrap(),
                None,
                "{name}"
            );
            go_tx.send(()).expect("the loader waits");
            assert_eq!(load.await.unwrap(), [1], "{name}");
            let stats = cache.stats();
            assert!(
                cache.exists(&ITEM_MEMBERS, &key).await.unwrap(),
                "{name}: the fill was cancelled by an empty push/remove ({stats:?})"
            );
            assert_eq!(stats.stale_fills_rejected, 0, "{name}: {stats:?}");
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        if let Err(e) = t.await {
            failures.push(e.to_string());
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
