use cacheobj::{Cache, CacheKey, List, Strategy};
use serde::Serialize;

#[derive(Clone, Serialize, CacheKey)]
struct GroupKey {
    group_id: u64,
}

const MEMBERS: Strategy<Vec<u64>, GroupKey, List> = Strategy::list("members:<group_id>");

async fn run(cache: Cache) {
    let keys = [GroupKey { group_id: 1 }];
    let _ = cache
        .fetch_many(&MEMBERS, &keys, |keys| async move {
            Ok::<_, cacheobj::Error>(keys.iter().map(|_| Vec::new()).collect())
        })
        .await;
}

fn main() {}
