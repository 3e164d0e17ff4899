use cacheobj::CacheKey;
use serde::Serialize;

#[derive(Serialize, CacheKey)]
#[serde(rename_all = "camelCase")]
struct ItemKey {
    item_id: u64,
}

fn main() {}
