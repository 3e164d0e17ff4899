use cacheobj::CacheKey;
use serde::Serialize;

#[derive(Serialize, CacheKey)]
struct ItemKey {
    item_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<String>,
}

fn main() {}
