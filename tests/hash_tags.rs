//! Redis Cluster hash tags: templates pass `{...}` through literally, so the entries of one
//! user under `user:{<user_id>}:...` land in one slot (on one node), where a multi-key script
//! can touch them together; fetch and invalidate work on them like on any key.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use cacheobj::{CacheKey, List, Strategy};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
}

#[derive(Debug, Clone, Serialize, CacheKey)]
struct UserKey {
    user_id: u64,
}

const PROFILE: Strategy<Profile, UserKey> =
    Strategy::<Profile, UserKey>::obj("user:{<user_id>}:profile").expire(60);
const FRIENDS: Strategy<Vec<u64>, UserKey, List> =
    Strategy::list("user:{<user_id>}:friends").expire(60);

async fn keyslot(conn: &mut support::RawConn, key: &[u8]) -> i64 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {:?}: {e}", String::from_utf8_lossy(key)))
}

#[tokio::test]
async fn a_users_entries_share_a_slot_on_the_cluster() {
    let (cache, prefix) = support::cluster_cache("hash_tags").await;
    assert!(
        !prefix.contains('{'),
        "the prefix must not hold a hash tag of its own: {prefix}"
    );
    let mut conn = support::raw_conn_for("cluster")
        .await
        .expect("a raw cluster connection");

    for user_id in [1u64, 42, 31337] {
        let user = UserKey { user_id };
        let profile_key = support::entry_redis_key(&cache, &PROFILE, &user);
        let friends_key = support::entry_redis_key(&cache, &FRIENDS, &user);
        let tag = format!("{{{user_id}}}");
        assert!(
            String::from_utf8_lossy(&profile_key).contains(&tag),
            "the template's braces are kept: {:?}",
            String::from_utf8_lossy(&profile_key)
        );
        let tag_slot = keyslot(&mut conn, tag.as_bytes()).await;
        assert_eq!(
            keyslot(&mut conn, &profile_key).await,
            tag_slot,
            "user {user_id}: the profile hashes by its tag only"
        );
        assert_eq!(
            keyslot(&mut conn, &friends_key).await,
            tag_slot,
            "user {user_id}: the friends list hashes by its tag only"
        );

        // Fetch: miss then hit, for both strategies.
        let loads = AtomicUsize::new(0);
        let load_profile = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(Profile {
                name: format!("user {user_id}"),
            })
        };
        for _ in 0..2 {
            let got = cache.fetch(&PROFILE, &user, load_profile).await.unwrap();
            assert_eq!(got.name, format!("user {user_id}"));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1, "user {user_id}: one load");
        let friends = cache
            .fetch(&FRIENDS, &user, || async {
                Ok::<_, Infallible>(vec![user_id + 1, user_id + 2])
            })
            .await
            .unwrap();
        assert_eq!(friends, [user_id + 1, user_id + 2]);
        assert_eq!(
            cache.list_push(&FRIENDS, &user, &[7]).await.unwrap(),
            Some(3)
        );

        // Both keys are on one node: a script may use them together (across slots, the
        // cluster would refuse it with CROSSSLOT).
        let both: i64 = redis::cmd("EVAL")
            .arg("return redis.call('EXISTS', KEYS[1]) + redis.call('EXISTS', KEYS[2])")
            .arg(2)
            .arg(&profile_key[..])
            .arg(&friends_key[..])
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("user {user_id}: a two-key script failed: {e}"));
        assert_eq!(both, 2, "user {user_id}: both entries are cached");

        // Invalidate one: the other stays; the next fetch loads again.
        cache.invalidate(&PROFILE, &user).await.unwrap();
        assert!(!cache.exists(&PROFILE, &user).await.unwrap());
        assert!(cache.exists(&FRIENDS, &user).await.unwrap());
        cache.fetch(&PROFILE, &user, load_profile).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2, "user {user_id}: reloaded");
        cache.invalidate(&FRIENDS, &user).await.unwrap();
        assert!(!cache.exists(&FRIENDS, &user).await.unwrap());
        assert_eq!(cache.list_len(&FRIENDS, &user).await.unwrap(), None);
    }
    let stats = cache.stats();
    assert_eq!(stats.errors, 0, "{stats:?}");
}
