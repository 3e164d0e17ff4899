mod support;
use cacheobj_strategies::{ItemKey, ITEM_MEMBERS};
use std::time::Duration;

#[tokio::test]
async fn probe_empty_push_during_load() {
    for (name, cache) in support::backends("probe2").await {
        let key = ItemKey { item_id: 1 };
        let c2 = cache.clone();
        let t = tokio::spawn(async move {
            c2.fetch(&ITEM_MEMBERS, &key, || async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok::<_, std::io::Error>(vec![1u64])
            })
            .await
            .unwrap()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let p = cache.list_push(&ITEM_MEMBERS, &key, &[]).await.unwrap();
        let r = cache.list_remove(&ITEM_MEMBERS, &key, &[]).await.unwrap();
        t.await.unwrap();
        let ex = cache.exists(&ITEM_MEMBERS, &key).await.unwrap();
        eprintln!(
            "{name}: push={p:?} remove={r:?} exists_after={ex} {:?}",
            cache.stats()
        );
    }
}
