use cacheobj::{Cache, CacheKey, Strategy};
use serde::Serialize;

#[derive(Serialize, CacheKey)]
struct ItemKey {
    item_id: u64,
}

const OBJ_STRATEGY: Strategy<i64, ItemKey> = Strategy::<i64, ItemKey>::obj("item:<item_id>");

async fn run(cache: Cache) {
    let key = ItemKey { item_id: 1 };
    let _ = cache.incr(&OBJ_STRATEGY, &key, 1).await;
}

fn main() {}
