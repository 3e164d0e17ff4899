use cacheobj::CacheKey;
use serde::Serialize;

#[derive(Serialize, CacheKey)]
struct ItemKey(u64);

fn main() {}
