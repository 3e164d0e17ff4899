//! The service's caching strategies, declared once as typed consts (the pattern of the
//! repository's `strategies/` crate). Handlers never spell a key or a TTL: they name a const.

use cacheobj::{CacheKey, Counter, Hash, List, Set, Strategy};
use serde::{Deserialize, Serialize};

/// A row of the `items` table, as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Primary key.
    pub id: u64,
    /// Display name.
    pub name: String,
}

/// Identifies one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, CacheKey)]
pub struct ItemKey {
    /// The item's id.
    pub item_id: u64,
}

/// One item, or "no such row": a missing id is cached for 30 s (`negative_expire`), so
/// requests for ids that do not exist do not all reach the database.
pub const ITEM: Strategy<Option<Item>, ItemKey> =
    Strategy::<Option<Item>, ItemKey>::obj("item:<item_id>")
        .name("item")
        .expire(3600)
        .negative_expire(30)
        .jitter(10);

/// The same rows as fields of one Redis hash (`GET /items/{id}/hash`).
pub const ITEM_HASH: Strategy<Option<Item>, ItemKey, Hash> = Strategy::hash("items", "<item_id>")
    .name("item_hash")
    .expire(3600)
    .negative_expire(30);

/// An item's view count, incremented in place while cached.
pub const ITEM_VIEWS: Strategy<i64, ItemKey, Counter> = Strategy::counter("item:views:<item_id>")
    .name("item_views")
    .expire(600);

/// The ids of an item's members, in the order they were added.
pub const ITEM_MEMBERS: Strategy<Vec<u64>, ItemKey, List> =
    Strategy::list("item:members:<item_id>")
        .name("item_members")
        .expire(600);

/// An item's tags.
pub const ITEM_TAGS: Strategy<Vec<String>, ItemKey, Set> = Strategy::set("item:tags:<item_id>")
    .name("item_tags")
    .expire(600);
