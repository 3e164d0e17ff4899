use cacheobj::{Cache, CacheKey, Strategy};
use serde::Serialize;

// `Deserialize` forgotten: a cached value must be read back.
#[derive(Debug, Clone, Serialize)]
struct Item {
    id: u64,
}

#[derive(Serialize, CacheKey)]
struct ItemKey {
    item_id: u64,
}

const ITEM: Strategy<Item, ItemKey> = Strategy::<Item, ItemKey>::obj("item:<item_id>");

async fn run(cache: Cache) {
    let _ = cache
        .fetch(&ITEM, &ItemKey { item_id: 1 }, || async {
            Ok::<_, std::io::Error>(Item { id: 1 })
        })
        .await;
}

fn main() {}
