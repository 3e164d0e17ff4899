use cacheobj::{CacheKey, Strategy};
use serde::Serialize;

#[derive(Serialize, CacheKey)]
struct ItemKey {
    item_id: u64,
}

// A `String` is never "not found", so negative caching would never apply.
const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>")
    .expire(3600)
    .negative_expire(30);

fn main() {
    let _ = ITEM.key_template();
}
