use cacheobj::CacheKey;
use serde::Serialize;

#[derive(Serialize, CacheKey)]
enum ItemKey {
    Item { item_id: u64 },
}

fn main() {}
