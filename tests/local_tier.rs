//! The local tier (`Strategy::local`): hits from process memory, kept coherent by Redis's
//! invalidations, on a standalone server and on the cluster.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cacheobj::{Cache, CacheConfig, CacheKey, Counter, Strategy};
use serde::{Deserialize, Serialize};
use support::{cluster_cache, entry_redis_key, raw_conn_for, redis_cache, wait_until, RedisServer};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: u64,
    name: String,
}

#[derive(Debug, Clone, Serialize, CacheKey)]
struct ItemKey {
    item_id: u64,
}

const ITEM: Strategy<Item, ItemKey> = Strategy::obj("item:<item_id>").expire(600).local(1_000);
const SHORT: Strategy<Item, ItemKey> = Strategy::obj("short:<item_id>").expire(1).local(1_000);
const VIEWS: Strategy<i64, ItemKey, Counter> = Strategy::counter("views:<item_id>")
    .expire(600)
    .local(1_000);

/// A tier of four entries, and the same entries without a tier (to fill them).
const TINY: Strategy<Item, ItemKey> = Strategy::obj("tiny:<item_id>").expire(600).local(4);
const TINY_PLAIN: Strategy<Item, ItemKey> = Strategy::obj("tiny:<item_id>").expire(600);

/// Copies that could live an hour: only the Redis entry's TTL can end them sooner.
const LONG: Strategy<Item, ItemKey> = Strategy::obj("long:<item_id>")
    .expire(600)
    .local(1_000)
    .local_ttl(Duration::from_secs(3600));
const LONG_COUNT: Strategy<i64, ItemKey, Counter> = Strategy::counter("longcount:<item_id>")
    .expire(600)
    .local(1_000)
    .local_ttl(Duration::from_secs(3600));

/// Copies that live 300 ms of entries that live ten minutes: a read after a copy ended is a
/// local miss of a key whose entry has not changed.
const BRIEF: Strategy<Item, ItemKey> = Strategy::obj("brief:<item_id>")
    .expire(600)
    .local(1_000)
    .local_ttl(Duration::from_millis(300));

const LIVE: Duration = Duration::from_secs(20);

fn item(id: u64, name: &str) -> Item {
    Item {
        id,
        name: name.to_owned(),
    }
}

/// Fetches `ITEM` (or `strategy`), counting loader calls; the loader returns `name`.
async fn fetch(
    cache: &Cache,
    strategy: &Strategy<Item, ItemKey>,
    id: u64,
    calls: &AtomicUsize,
    name: &str,
) -> Item {
    cache
        .fetch(strategy, &ItemKey { item_id: id }, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(item(id, name))
        })
        .await
        .expect("the loader does not fail")
}

/// Fetches until the value is held locally: the first fetch loads and fills, a later one
/// reads it back from Redis and keeps it once the tier is live.
async fn warm(cache: &Cache, strategy: &Strategy<Item, ItemKey>, id: u64, name: &str) {
    let calls = AtomicUsize::new(0);
    let before = cache.stats().local_hits;
    let deadline = std::time::Instant::now() + LIVE;
    loop {
        fetch(cache, strategy, id, &calls, name).await;
        if cache.stats().local_hits > before {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no local hit within {LIVE:?}: {:?}",
            cache.stats()
        );
        tokio::task::yield_now().await;
    }
}

/// Fetches the counter `key` of `strategy` (loading `loaded` if it is missing) until a fetch
/// is answered by the local tier.
async fn warm_count(
    cache: &Cache,
    strategy: &Strategy<i64, ItemKey, Counter>,
    key: &ItemKey,
    loaded: i64,
) {
    let hits = cache.strategy_stats(strategy).local_hits;
    let deadline = std::time::Instant::now() + LIVE;
    while cache.strategy_stats(strategy).local_hits == hits {
        let load = || async move { Ok::<_, std::io::Error>(loaded) };
        cache.fetch(strategy, key, load).await.expect("count");
        assert!(
            std::time::Instant::now() < deadline,
            "no local counter hit within {LIVE:?}: {:?}",
            cache.stats()
        );
        tokio::task::yield_now().await;
    }
}

/// A cache on a private 3-master cluster.
async fn private_cluster_cache(test: &str) -> (support::cluster::RedisCluster, Cache) {
    let cluster = tokio::task::spawn_blocking(support::cluster::RedisCluster::start_masters_only)
        .await
        .expect("start a cluster");
    let cache = Cache::connect(
        CacheConfig::builder()
            .nodes(cluster.nodes())
            .prefix(support::unique_prefix(test))
            .response_timeout(Duration::from_secs(2))
            .build(),
    )
    .await
    .expect("connect");
    (cluster, cache)
}

/// `INFO commandstats` calls of every command but the tracking connections' heartbeat.
async fn commands(conn: &mut impl redis::aio::ConnectionLike) -> u64 {
    support::calls_except(conn, &["ping", "info"]).await
}

/// `INFO commandstats` calls of one command.
async fn calls_of(conn: &mut impl redis::aio::ConnectionLike, command: &str) -> u64 {
    let info = support::commandstats(conn).await;
    support::command_calls(&info)
        .into_iter()
        .find_map(|(name, calls)| (name == command).then_some(calls))
        .unwrap_or(0)
}

async fn private_cache(server: &RedisServer, test: &str) -> Cache {
    let config = CacheConfig::builder()
        .url(server.url())
        .prefix(support::unique_prefix(test))
        .response_timeout(Duration::from_secs(2))
        .build();
    Cache::connect(config).await.expect("connect")
}

#[tokio::test]
async fn a_full_tier_keeps_a_key_from_its_second_miss_on() {
    let server = RedisServer::start();
    let cache = private_cache(&server, "local_full").await;
    for id in 1..=4 {
        warm(&cache, &TINY, id, "held").await;
    }
    assert_eq!(cache.local_len(&TINY), 4, "{:?}", cache.stats());
    let calls = AtomicUsize::new(0);
    fetch(&cache, &TINY_PLAIN, 5, &calls, "new").await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the fill of key 5");
    let mut raw = support::raw_conn_to(&server.url()).await;

    // Its first miss reads Redis as a strategy without a tier does: no PTTL.
    let (pttl, misses) = (calls_of(&mut raw, "pttl").await, cache.stats().local_misses);
    assert_eq!(fetch(&cache, &TINY, 5, &calls, "x").await, item(5, "new"));
    assert_eq!(cache.stats().local_misses, misses + 1);
    assert_eq!(
        calls_of(&mut raw, "pttl").await,
        pttl,
        "a first miss read the TTL"
    );
    // Its second reads the TTL, to be kept; moka decides what it pushes out.
    assert_eq!(fetch(&cache, &TINY, 5, &calls, "x").await, item(5, "new"));
    assert_eq!(
        calls_of(&mut raw, "pttl").await,
        pttl + 1,
        "a second miss was not kept"
    );
    assert!(cache.local_len(&TINY) <= 4, "the bound holds");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no load but the fill");
}

#[tokio::test]
async fn fetch_many_keeps_what_it_reads_from_redis() {
    let server = RedisServer::start();
    let cache = private_cache(&server, "local_many").await;
    let keys: Vec<ItemKey> = (1..=3).map(|item_id| ItemKey { item_id }).collect();
    let expected: Vec<Item> = (1..=3).map(|id| item(id, "many")).collect();
    let load = |wanted: Vec<ItemKey>| async move {
        Ok::<_, std::io::Error>(wanted.iter().map(|k| item(k.item_id, "many")).collect())
    };
    // The first batch loads and fills; a later one reads the fills back and keeps them.
    let deadline = std::time::Instant::now() + LIVE;
    while cache.local_len(&ITEM) < 3 {
        let got: Vec<Item> = cache.fetch_many(&ITEM, &keys, load).await.expect("batch");
        assert_eq!(got, expected);
        assert!(
            std::time::Instant::now() < deadline,
            "fetch_many kept nothing: {:?}",
            cache.stats()
        );
        tokio::task::yield_now().await;
    }
    let mut raw = support::raw_conn_to(&server.url()).await;
    let before = commands(&mut raw).await;
    let hits = cache.stats().local_hits;
    let got: Vec<Item> = cache.fetch_many(&ITEM, &keys, load).await.expect("batch");
    assert_eq!(got, expected);
    assert_eq!(cache.stats().local_hits, hits + 3);
    assert_eq!(
        commands(&mut raw).await,
        before,
        "a held batch reached Redis"
    );

    // A copy kept by a batch leaves with its entry, like one kept by `fetch`.
    let redis_key = entry_redis_key(&cache, &ITEM, &keys[1]);
    redis::cmd("DEL")
        .arg(&redis_key)
        .query_async::<()>(&mut raw)
        .await
        .expect("DEL");
    wait_until("the DEL's invalidation arrives", LIVE, || {
        cache.local_len(&ITEM) == 2
    })
    .await;
}

#[tokio::test]
async fn a_local_hit_sends_nothing_to_redis() {
    let server = RedisServer::start();
    let cache = private_cache(&server, "local_nothing").await;
    warm(&cache, &ITEM, 1, "lamp").await;
    let mut raw = support::raw_conn_to(&server.url()).await;
    let before = commands(&mut raw).await;
    let calls = AtomicUsize::new(0);
    let (hits, all_hits) = (cache.stats().local_hits, cache.stats().hits);
    let own_hits = cache.strategy_stats(&ITEM).hits;
    for _ in 0..1_000 {
        assert_eq!(
            fetch(&cache, &ITEM, 1, &calls, "other").await,
            item(1, "lamp")
        );
    }
    assert_eq!(cache.stats().local_hits, hits + 1_000);
    // Local hits are hits, in the totals and in the strategy's own figures.
    assert_eq!(cache.stats().hits, all_hits + 1_000);
    assert_eq!(cache.strategy_stats(&ITEM).hits, own_hits + 1_000);
    assert_eq!(cache.strategy_stats(&ITEM).local_hits, hits + 1_000);
    // The INFO calls are not counted; nothing else reached the server.
    let after = commands(&mut raw).await;
    assert_eq!(
        after, before,
        "commands reached Redis during 1,000 local hits"
    );

    // A batch the tier holds whole needs no round trip either.
    for id in 2..=3 {
        warm(&cache, &ITEM, id, "lamp").await;
    }
    let keys: Vec<ItemKey> = (1..=3).map(|item_id| ItemKey { item_id }).collect();
    let before = commands(&mut raw).await;
    let hits = cache.stats().local_hits;
    let many = cache
        .fetch_many(&ITEM, &keys, |_| async {
            Ok::<_, std::io::Error>(Vec::new())
        })
        .await
        .expect("fetch_many");
    assert_eq!(
        many,
        vec![item(1, "lamp"), item(2, "lamp"), item(3, "lamp")]
    );
    assert_eq!(cache.stats().local_hits, hits + 3);
    assert_eq!(
        commands(&mut raw).await,
        before,
        "commands reached Redis during a local fetch_many"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// Runs the coherence checks on one deployment: `cache` and `other` share it, `raw` writes
/// behind the library's back.
async fn coherence(label: &str, cache: Cache, other: Cache) {
    let calls = AtomicUsize::new(0);
    let key = ItemKey { item_id: 7 };

    // Invalidation by another Cache.
    warm(&cache, &ITEM, 7, "v1").await;
    other.invalidate(&ITEM, &key).await.expect("invalidate");
    wait_until(
        &format!("{label}: the other Cache's invalidation arrives"),
        LIVE,
        || cache.local_len(&ITEM) == 0,
    )
    .await;
    assert_eq!(
        fetch(&cache, &ITEM, 7, &calls, "v2").await,
        item(7, "v2"),
        "{label}"
    );

    // A write behind the library's back (redis-cli, another language): a DEL.
    warm(&cache, &ITEM, 7, "v2").await;
    let redis_key = entry_redis_key(&cache, &ITEM, &key);
    let mut raw = raw_conn_for(label).await.expect("raw connection");
    redis::cmd("DEL")
        .arg(&redis_key)
        .query_async::<()>(&mut raw)
        .await
        .expect("DEL");
    wait_until(
        &format!("{label}: the DEL's invalidation arrives"),
        LIVE,
        || cache.local_len(&ITEM) == 0,
    )
    .await;
    assert_eq!(
        fetch(&cache, &ITEM, 7, &calls, "v3").await,
        item(7, "v3"),
        "{label}"
    );

    // Read your writes: this process's invalidate drops its copy before it returns.
    warm(&cache, &ITEM, 7, "v3").await;
    cache.invalidate(&ITEM, &key).await.expect("invalidate");
    assert_eq!(
        fetch(&cache, &ITEM, 7, &calls, "v4").await,
        item(7, "v4"),
        "{label}"
    );
    // And so does invalidate_after.
    warm(&cache, &ITEM, 7, "v4").await;
    let written = cache
        .invalidate_after(&ITEM, &key, || async {
            Ok::<_, std::io::Error>("row updated")
        })
        .await
        .expect("the write does not fail");
    assert_eq!(*written.value(), "row updated");
    assert!(written.is_invalidated());
    assert_eq!(
        fetch(&cache, &ITEM, 7, &calls, "v5").await,
        item(7, "v5"),
        "{label}"
    );

    // Counters: this process's incr is read back at once; another Cache's arrives.
    let load_views = || async { Ok::<_, std::io::Error>(10) };
    warm_count(&cache, &VIEWS, &key, 10).await;
    assert_eq!(cache.incr(&VIEWS, &key, 1).await.expect("incr"), Some(11));
    assert_eq!(
        cache.fetch(&VIEWS, &key, load_views).await.expect("views"),
        11,
        "{label}"
    );
    other.incr(&VIEWS, &key, 1).await.expect("incr");
    wait_until(
        &format!("{label}: the other Cache's incr arrives"),
        LIVE,
        || cache.local_len(&VIEWS) == 0,
    )
    .await;
    assert_eq!(
        cache.fetch(&VIEWS, &key, load_views).await.expect("views"),
        12,
        "{label}"
    );

    // A counter changed behind the library's back: redis-cli's INCRBY.
    let deadline = std::time::Instant::now() + LIVE;
    while cache.local_len(&VIEWS) == 0 {
        cache.fetch(&VIEWS, &key, load_views).await.expect("views");
        assert!(
            std::time::Instant::now() < deadline,
            "{label}: the counter is not held again"
        );
    }
    redis::cmd("INCRBY")
        .arg(entry_redis_key(&cache, &VIEWS, &key))
        .arg(5)
        .query_async::<()>(&mut raw)
        .await
        .expect("INCRBY");
    wait_until(
        &format!("{label}: the INCRBY's invalidation arrives"),
        LIVE,
        || cache.local_len(&VIEWS) == 0,
    )
    .await;
    assert_eq!(
        cache.fetch(&VIEWS, &key, load_views).await.expect("views"),
        17,
        "{label}"
    );
}

#[tokio::test]
async fn coherent_on_a_standalone_server() {
    let (cache, prefix) = redis_cache("local_coherent").await;
    let other = Cache::connect(
        CacheConfig::builder()
            .url(support::redis_url())
            .prefix(prefix)
            .build(),
    )
    .await
    .expect("connect");
    coherence("redis", cache, other).await;
}

#[tokio::test]
async fn coherent_on_the_cluster() {
    let (cache, prefix) = cluster_cache("local_coherent_cluster").await;
    let other = Cache::connect(
        CacheConfig::builder()
            .nodes(support::cluster_nodes())
            .prefix(prefix)
            .build(),
    )
    .await
    .expect("connect");
    coherence("cluster", cache, other).await;
}

#[tokio::test]
async fn a_local_copy_never_outlives_the_redis_entry() {
    let (cache, _) = redis_cache("local_ttl").await;
    warm(&cache, &SHORT, 3, "old").await;
    let redis_key = entry_redis_key(&cache, &SHORT, &ItemKey { item_id: 3 });
    let mut raw = support::raw_conn().await;
    // PTTL of an expired key deletes it and says -2.
    let deadline = std::time::Instant::now() + LIVE;
    while support::raw_pttl(&mut raw, &redis_key).await != -2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the entry never expired"
        );
        tokio::task::yield_now().await;
    }
    let calls = AtomicUsize::new(0);
    assert_eq!(
        fetch(&cache, &SHORT, 3, &calls, "new").await,
        item(3, "new")
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the expired entry was served locally"
    );
}

#[tokio::test]
async fn the_embedded_backend_accepts_local_strategies() {
    let cache = Cache::in_memory();
    let calls = AtomicUsize::new(0);
    for _ in 0..3 {
        assert_eq!(fetch(&cache, &ITEM, 1, &calls, "a").await, item(1, "a"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats().local_hits, 0);
    assert!(!cache.local_live());
}

#[tokio::test]
async fn a_server_that_refuses_tracking_falls_back_to_redis_reads() {
    let server = RedisServer::start();
    let mut admin = support::raw_conn_to(&server.url()).await;
    // Everything but CLIENT: the tier cannot enable tracking.
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("app")
        .arg("reset")
        .arg("on")
        .arg(">secret")
        .arg("~*")
        .arg("+@all")
        .arg("-client")
        .query_async(&mut admin)
        .await
        .expect("ACL SETUSER");
    let cache = Cache::connect(
        CacheConfig::builder()
            .host("127.0.0.1")
            .port(server.port)
            .username("app")
            .password("secret")
            .prefix(support::unique_prefix("local_fallback"))
            .response_timeout(Duration::from_secs(2))
            .build(),
    )
    .await
    .expect("connect");
    let calls = AtomicUsize::new(0);
    assert_eq!(fetch(&cache, &ITEM, 1, &calls, "a").await, item(1, "a"));
    wait_until("the tier falls back", LIVE, || cache.stats().local_fallback).await;
    for _ in 0..10 {
        assert_eq!(fetch(&cache, &ITEM, 1, &calls, "b").await, item(1, "a"));
    }
    let stats = cache.stats();
    assert_eq!((stats.local_hits, stats.hits, stats.loads), (0, 10, 1));
    assert!(!cache.local_live());
    // Invalidation still works: Redis-only reads see it at once.
    cache
        .invalidate(&ITEM, &ItemKey { item_id: 1 })
        .await
        .expect("invalidate");
    assert_eq!(fetch(&cache, &ITEM, 1, &calls, "c").await, item(1, "c"));
}

#[tokio::test]
async fn a_cache_built_on_a_connection_falls_back_to_redis_reads() {
    let client = redis::Client::open(support::redis_url()).expect("client");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let config = CacheConfig::builder()
        .prefix(support::unique_prefix("local_from_conn"))
        .build();
    let cache = Cache::from_connection(conn, config).expect("cache");
    let calls = AtomicUsize::new(0);
    assert_eq!(fetch(&cache, &ITEM, 1, &calls, "a").await, item(1, "a"));
    wait_until("the tier falls back", LIVE, || cache.stats().local_fallback).await;
    assert_eq!(fetch(&cache, &ITEM, 1, &calls, "b").await, item(1, "a"));
    assert_eq!(cache.stats().local_hits, 0);
}

#[tokio::test]
async fn a_local_counter_hit_sends_nothing_to_redis() {
    let server = RedisServer::start();
    let cache = private_cache(&server, "local_counter_nothing").await;
    let key = ItemKey { item_id: 1 };
    let load = || async { Ok::<_, std::io::Error>(41) };
    warm_count(&cache, &VIEWS, &key, 41).await;
    let mut raw = support::raw_conn_to(&server.url()).await;
    let before = commands(&mut raw).await;
    for _ in 0..100 {
        assert_eq!(cache.fetch(&VIEWS, &key, load).await.expect("views"), 41);
    }
    assert_eq!(
        commands(&mut raw).await,
        before,
        "commands reached Redis during local counter hits"
    );
}

/// A blocking connection to each live node of `cluster`, for [`cluster_commands`].
fn node_conns(cluster: &support::cluster::RedisCluster) -> Vec<redis::Connection> {
    cluster
        .live_ports()
        .into_iter()
        .map(|port| {
            let url = format!("redis://127.0.0.1:{port}/");
            let client = redis::Client::open(url.as_str()).expect("a node URL");
            let conn = client
                .get_connection_with_timeout(Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
            conn.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("read timeout");
            conn
        })
        .collect()
}

/// Calls of every command on every node but the heartbeat's and the check's own, asked over
/// `conns` ([`node_conns`], opened before the first count and kept: a new connection's own
/// handshake, redis-rs's `CLIENT SETINFO`, is counted by Redis 7.2+ and Valkey, and as `client`
/// by Redis 6.2).
fn cluster_commands(conns: &mut [redis::Connection]) -> u64 {
    const SKIP: [&str; 4] = ["ping", "info", "cluster|slots", "cluster"];
    let mut total = 0;
    for conn in conns {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(conn)
            .expect("INFO commandstats");
        total += support::command_calls(&info)
            .into_iter()
            .filter(|(name, _)| !SKIP.contains(name))
            .map(|(_, calls)| calls)
            .sum::<u64>();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_hit_on_the_cluster_sends_nothing_to_any_node() {
    let (cluster, cache) = private_cluster_cache("local_cluster_nothing").await;
    // Counters too: one per node, most likely, as the items. Both strategies are used once
    // first: a strategy's first use tracks its prefix, which flushes what the tier holds.
    let load_views = |id: u64| move || async move { Ok::<_, std::io::Error>(id as i64) };
    let first = ItemKey { item_id: 1 };
    cache
        .fetch(&VIEWS, &first, load_views(1))
        .await
        .expect("views");
    for id in 1..=6 {
        warm(&cache, &ITEM, id, "lamp").await;
    }
    for id in 1..=6 {
        warm_count(&cache, &VIEWS, &ItemKey { item_id: id }, id as i64).await;
    }
    let mut conns = tokio::task::block_in_place(|| node_conns(&cluster));
    let before = tokio::task::block_in_place(|| cluster_commands(&mut conns));
    let calls = AtomicUsize::new(0);
    let hits = cache.stats().local_hits;
    for round in 0..100u64 {
        let id = round % 6 + 1;
        assert_eq!(
            fetch(&cache, &ITEM, id, &calls, "other").await,
            item(id, "lamp")
        );
        let key = ItemKey { item_id: id };
        let views = cache.fetch(&VIEWS, &key, load_views(0)).await;
        assert_eq!(views.expect("views"), id as i64);
    }
    assert_eq!(cache.stats().local_hits, hits + 200);
    let after = tokio::task::block_in_place(|| cluster_commands(&mut conns));
    assert_eq!(
        after, before,
        "commands reached the cluster during local hits"
    );
}

#[tokio::test]
async fn flushdb_drops_every_local_copy_and_the_tier_stays_live() {
    let server = RedisServer::start();
    let cache = private_cache(&server, "local_flushdb").await;
    warm(&cache, &ITEM, 1, "old").await;
    let flushes = cache.stats().local_flushes;
    let mut raw = support::raw_conn_to(&server.url()).await;
    // Our own throwaway server: FLUSHDB touches nobody else's keys.
    let () = redis::cmd("FLUSHDB")
        .query_async(&mut raw)
        .await
        .expect("FLUSHDB");
    wait_until("the flush is announced", LIVE, || {
        cache.stats().local_flushes > flushes
    })
    .await;
    assert_eq!(cache.local_len(&ITEM), 0);
    assert!(
        cache.local_live(),
        "the connection that announced the flush still tracks"
    );
    let calls = AtomicUsize::new(0);
    assert_eq!(fetch(&cache, &ITEM, 1, &calls, "new").await, item(1, "new"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Runs `cmd` on every node over `conns`; the replies of the nodes that took it (a cluster's
/// other nodes answer MOVED).
fn on_every_node(conns: &mut [redis::Connection], cmd: &redis::Cmd) -> Vec<redis::Value> {
    tokio::task::block_in_place(|| {
        conns
            .iter_mut()
            .filter_map(|conn| cmd.query::<redis::Value>(conn).ok())
            .collect()
    })
}

/// Checks, for an obj and a counter strategy whose copies could live an hour, that a copy ends
/// with the Redis entry's TTL even when Redis announces nothing. The entry's TTL is cut to
/// 3 s (announced: the copy goes), the value is read and kept again, then writes are paused
/// (`CLIENT PAUSE WRITE`): Redis then expires no key, so nothing can send an invalidation, and
/// only the copy's own TTL, taken from the entry's, can end it.
async fn copies_die_with_the_entry(label: &str, cache: &Cache, conns: &mut [redis::Connection]) {
    let key = ItemKey { item_id: 1 };
    warm(cache, &LONG, 1, "old").await;
    warm_count(cache, &LONG_COUNT, &key, 5).await;
    for redis_key in [
        entry_redis_key(cache, &LONG, &key),
        entry_redis_key(cache, &LONG_COUNT, &key),
    ] {
        let replies = on_every_node(conns, redis::cmd("PEXPIRE").arg(&redis_key).arg(3_000));
        assert!(
            replies.contains(&redis::Value::Int(1)),
            "{label}: PEXPIRE found no entry: {replies:?}"
        );
    }
    wait_until(
        &format!("{label}: the PEXPIREs are announced"),
        LIVE,
        || cache.local_len(&LONG) == 0 && cache.local_len(&LONG_COUNT) == 0,
    )
    .await;
    warm(cache, &LONG, 1, "unused").await;
    let unused = AtomicUsize::new(0);
    assert_eq!(
        fetch(cache, &LONG, 1, &unused, "unused").await,
        item(1, "old"),
        "{label}: the entry expired before it was kept again"
    );
    warm_count(cache, &LONG_COUNT, &key, 5).await;

    let announced = cache.stats().local_invalidations;
    let pause = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(30_000)
        .arg("WRITE")
        .clone();
    assert_eq!(
        on_every_node(conns, &pause).len(),
        conns.len(),
        "{label}: CLIENT PAUSE refused"
    );
    wait_until(
        &format!("{label}: both copies end with the entry's TTL"),
        LIVE,
        || cache.local_len(&LONG) == 0 && cache.local_len(&LONG_COUNT) == 0,
    )
    .await;
    let invalidations = cache.stats().local_invalidations;
    on_every_node(conns, redis::cmd("CLIENT").arg("UNPAUSE"));
    assert_eq!(
        invalidations, announced,
        "{label}: an invalidation came while writes were paused"
    );

    // Neither is served again: the entries expired, so both load.
    let calls = AtomicUsize::new(0);
    assert_eq!(fetch(cache, &LONG, 1, &calls, "new").await, item(1, "new"));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "{label}: the expired obj was served"
    );
    let count = cache
        .fetch(&LONG_COUNT, &key, || async { Ok::<_, std::io::Error>(9) })
        .await
        .expect("count");
    assert_eq!(count, 9, "{label}: the expired counter was served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_ends_with_the_entry_even_when_redis_announces_nothing() {
    let server = RedisServer::start();
    let cache = private_cache(&server, "local_ttl_silent").await;
    let client = redis::Client::open(server.url()).expect("url");
    let conn = tokio::task::block_in_place(|| client.get_connection()).expect("connect");
    copies_die_with_the_entry("redis", &cache, &mut [conn]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_cluster_a_copy_ends_with_the_entry_even_when_redis_announces_nothing() {
    let (cluster, cache) = private_cluster_cache("local_ttl_silent_cluster").await;
    let mut conns = tokio::task::block_in_place(|| node_conns(&cluster));
    copies_die_with_the_entry("cluster", &cache, &mut conns).await;
}

/// A kept read learns when its entry expires. Until something changes the entry (which Redis
/// announces), the key's next reads, once their copies lived their local TTL, are GETs with no
/// PTTL; the copies they keep still end with the entry, even when Redis announces nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_read_again_keeps_the_expiry_it_learned_until_the_entry_changes() {
    let server = RedisServer::start();
    let cache = private_cache(&server, "local_expiry").await;
    let mut raw = support::raw_conn_to(&server.url()).await;
    warm(&cache, &BRIEF, 1, "old").await;
    let pttl = calls_of(&mut raw, "pttl").await;
    assert!(pttl >= 1, "the first kept read asked for no TTL");
    for round in 0..3 {
        wait_until("the copy lived its local TTL", LIVE, || {
            cache.local_len(&BRIEF) == 0
        })
        .await;
        let misses = cache.strategy_stats(&BRIEF).local_misses;
        warm(&cache, &BRIEF, 1, "unused").await;
        assert!(cache.strategy_stats(&BRIEF).local_misses > misses);
        assert_eq!(
            calls_of(&mut raw, "pttl").await,
            pttl,
            "round {round}: a read of an unchanged entry asked for its TTL again"
        );
    }

    // Another client's change of the TTL is announced: the next kept read asks again.
    let redis_key = entry_redis_key(&cache, &BRIEF, &ItemKey { item_id: 1 });
    let invalidations = cache.stats().local_invalidations;
    let set: i64 = redis::cmd("PEXPIRE")
        .arg(&redis_key)
        .arg(6_000)
        .query_async(&mut raw)
        .await
        .expect("PEXPIRE");
    // The entry now ends at most 6 s from here: its copies end some 20 times before it does.
    // Redis counts in whole milliseconds (a key expiring at T is read until the clock passes
    // T), so the entry may be read up to 1 ms past that.
    let ends_by = std::time::Instant::now() + Duration::from_millis(6_001);
    assert_eq!(set, 1, "PEXPIRE found no entry");
    wait_until("the PEXPIRE is announced", LIVE, || {
        cache.stats().local_invalidations > invalidations
    })
    .await;
    warm(&cache, &BRIEF, 1, "unused").await;
    assert_eq!(
        calls_of(&mut raw, "pttl").await,
        pttl + 1,
        "the read after the change did not ask for the new TTL"
    );

    // With writes paused Redis expires nothing, so announces nothing: copies kept by the
    // expiry learned must end with the entry all the same.
    let announced = cache.stats().local_invalidations;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(30_000)
        .arg("WRITE")
        .query_async(&mut raw)
        .await
        .expect("CLIENT PAUSE");
    let calls = AtomicUsize::new(0);
    // Local hits, and those on a copy kept after the one before it ended.
    let (mut hits, mut kept_again, mut missed) = (0, 0, false);
    let deadline = std::time::Instant::now() + LIVE;
    while calls.load(Ordering::SeqCst) == 0 {
        let before = std::time::Instant::now();
        let local = cache.strategy_stats(&BRIEF).local_hits;
        let got = fetch(&cache, &BRIEF, 1, &calls, "new").await;
        if cache.strategy_stats(&BRIEF).local_hits > local {
            assert!(
                before < ends_by,
                "a copy was served after its entry expired"
            );
            assert_eq!(got, item(1, "old"));
            hits += 1;
            kept_again += usize::from(std::mem::take(&mut missed));
        } else {
            missed = true;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the entry never expired"
        );
    }
    let silent = cache.stats().local_invalidations == announced;
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut raw)
        .await
        .expect("CLIENT UNPAUSE");
    assert!(silent, "an invalidation came while writes were paused");
    assert!(
        kept_again > 0,
        "no copy was kept again while the entry lived ({hits} local hits)"
    );
    eprintln!("{hits} local hits while paused, {kept_again} copies kept after one ended");
}
