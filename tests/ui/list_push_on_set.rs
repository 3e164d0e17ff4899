use cacheobj::{Cache, CacheKey, Set, Strategy};
use serde::Serialize;

#[derive(Serialize, CacheKey)]
struct GroupKey {
    group_id: u64,
}

const MEMBERS: Strategy<Vec<u64>, GroupKey, Set> = Strategy::set("members:<group_id>");

async fn run(cache: Cache) {
    let key = GroupKey { group_id: 1 };
    let _ = cache.list_push(&MEMBERS, &key, &[1, 2]).await;
}

fn main() {}
