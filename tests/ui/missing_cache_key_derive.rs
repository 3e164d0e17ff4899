use cacheobj::{Cache, Strategy};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    id: u64,
}

// `CacheKey` forgotten: every error says to derive it.
#[derive(Serialize)]
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
