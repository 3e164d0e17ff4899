//! An example domain and its cacheobj strategies, declared once as typed consts: the pattern to
//! copy. Examples, tests and benches import these.

use cacheobj::{CacheKey, Counter, Hash, List, Set, Strategy};
use serde::{Deserialize, Serialize};

/// A row of the `items` table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Item {
    /// Primary key.
    pub id: u64,
    /// Display name.
    pub name: String,
}

/// Identifies one item.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, CacheKey,
)]
pub struct ItemKey {
    /// The item's id.
    pub item_id: u64,
}

/// Identifies one user.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, CacheKey,
)]
pub struct UserKey {
    /// The user's id.
    pub user_id: u64,
}

/// One item, for a day.
pub const ITEM: Strategy<Item, ItemKey> =
    Strategy::<Item, ItemKey>::obj("item:<item_id>").expire(86400);

/// An item that may not exist: "not found" is cached for 30 seconds.
pub const MAYBE_ITEM: Strategy<Option<Item>, ItemKey> =
    Strategy::<Option<Item>, ItemKey>::obj("item:maybe:<item_id>")
        .expire(86400)
        .negative_expire(30);

/// An item's view count.
pub const ITEM_STAT: Strategy<i64, ItemKey, Counter> =
    Strategy::counter("item_stat:<item_id>").expire(86400);

/// The ids of an item's members, in order.
pub const ITEM_MEMBERS: Strategy<Vec<u64>, ItemKey, List> =
    Strategy::list("item:members:<item_id>").expire(60);

/// An item's tags.
pub const ITEM_TAGS: Strategy<Vec<String>, ItemKey, Set> =
    Strategy::set("item:tags:<item_id>").expire(60);

/// Items as fields of one Redis hash.
pub const ITEM_HASH: Strategy<Item, ItemKey, Hash> =
    Strategy::hash("item", "<item_id>").expire(86400);

/// A user's profile, with a Redis Cluster hash tag so all of a user's keys share a slot.
pub const USER_PROFILE: Strategy<Item, UserKey> =
    Strategy::<Item, UserKey>::obj("user:{<user_id>}:profile").expire(3600);
