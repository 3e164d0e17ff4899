use cacheobj::{CacheKey, Counter, Strategy};
use serde::Serialize;

#[derive(Serialize, CacheKey)]
struct ItemKey {
    item_id: u64,
}

// `incr` could never change a string, so a counter of one is refused.
const NAME: Strategy<String, ItemKey, Counter> = Strategy::counter("name:<item_id>").expire(60);

fn main() {
    let _ = NAME.key_template();
}
