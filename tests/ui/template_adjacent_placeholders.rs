use cacheobj::{CacheKey, Strategy};
use serde::Serialize;

#[derive(Serialize, CacheKey)]
struct K {
    a: u64,
    b: u64,
}

const S: Strategy<String, K> = Strategy::<String, K>::obj("<a><b>");

fn main() {
    let _ = S.key_template();
}
