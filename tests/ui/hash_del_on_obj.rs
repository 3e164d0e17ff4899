use cacheobj::{Cache, CacheKey, Strategy};
use serde::Serialize;

#[derive(Serialize, CacheKey)]
struct ItemKey {
    item_id: u64,
}

const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>");

async fn run(cache: Cache) {
    let key = ItemKey { item_id: 1 };
    let _ = cache.hash_del(&ITEM, &key).await;
}

fn main() {}
