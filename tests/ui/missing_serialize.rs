use cacheobj::{CacheKey, Strategy};

#[derive(CacheKey)]
struct ItemKey {
    item_id: u64,
}

const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>");

fn main() {
    let _ = ITEM.key_template();
}
