use cacheobj::{CacheKey, Strategy};
use serde::Serialize;

#[derive(Serialize, CacheKey)]
struct K {
    item_id: u64,
}

const S: Strategy<String, K> = Strategy::<String, K>::obj("item:<>");

fn main() {
    let _ = S.key_template();
}
