use cacheobj::{CacheKey, List, Strategy};
use serde::Serialize;

#[derive(Serialize, CacheKey)]
struct GroupKey {
    group_id: u64,
}

// A list strategy holds a collection of elements, not one string.
const MEMBERS: Strategy<String, GroupKey, List> = Strategy::list("members:<group_id>");

fn main() {
    let _ = MEMBERS.key_template();
}
