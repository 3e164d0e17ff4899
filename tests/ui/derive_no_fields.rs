use cacheobj::CacheKey;
use serde::Serialize;

#[derive(Serialize, CacheKey)]
struct ItemKey {}

fn main() {}
