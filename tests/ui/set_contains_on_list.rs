use cacheobj::{Cache, CacheKey, List, Strategy};
use serde::Serialize;

#[derive(Serialize, CacheKey)]
struct ItemKey {
    item_id: u64,
}

const TAGS: Strategy<Vec<String>, ItemKey, List> = Strategy::list("tags:<item_id>");

async fn run(cache: Cache) {
    let key = ItemKey { item_id: 1 };
    let _ = cache.set_contains(&TAGS, &key, &"a".to_string()).await;
}

fn main() {}
