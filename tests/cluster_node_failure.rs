//! One cluster node failing does not stop caching on the others: the breaker that makes
//! requests skip a failed Redis is kept per group of hash slots on a cluster. A master of a
//! private 3-master cluster is frozen (SIGSTOP, shorter than `cluster-node-timeout`, so the
//! cluster does not fail over or go down): fetches of its keys fail open, once after the
//! response timeout and then at once (the cache looks up the node's slots); fetches of the
//! other masters' keys stay hits.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cacheobj::{Cache, CacheConfig, Error};
use cacheobj_strategies::{Item, ItemKey, ITEM};
use support::cluster::{query, NodeInfo, RedisCluster};
use support::unique_prefix;

const RESPONSE: Duration = Duration::from_millis(100);

fn item(id: u64) -> Item {
    Item {
        id,
        name: format!("item #{id}"),
    }
}

async fn fetch(cache: &Cache, loads: &Arc<AtomicUsize>, id: u64) -> Duration {
    let loads = loads.clone();
    let started = Instant::now();
    let got = cache
        .fetch(&ITEM, &ItemKey { item_id: id }, || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(item(id))
        })
        .await
        .unwrap_or_else(|never| match never {});
    assert_eq!(got, item(id));
    started.elapsed()
}

/// The hash slot of item `id`'s entry, as `master` computes it.
fn slot_of(cache: &Cache, master: &NodeInfo, id: u64) -> i64 {
    let key = cache
        .entry_key(&ITEM, &ItemKey { item_id: id })
        .expect("renders")
        .key;
    redis::from_redis_value(
        query(master.port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(&key))
            .expect("CLUSTER KEYSLOT"),
    )
    .expect("a slot number")
}

fn serves(master: &NodeInfo, slot: i64) -> bool {
    master
        .slots
        .iter()
        .any(|&(lo, hi)| (i64::from(lo)..=i64::from(hi)).contains(&slot))
}

/// Items 1..=60, split into those whose key `master` serves and the others.
fn split_by_master(cache: &Cache, master: &NodeInfo) -> (Vec<u64>, Vec<u64>) {
    let (mut on_master, mut elsewhere) = (Vec::new(), Vec::new());
    for id in 1..=60u64 {
        if serves(master, slot_of(cache, master, id)) {
            on_master.push(id);
        } else {
            elsewhere.push(id);
        }
    }
    assert!(
        on_master.len() >= 5 && elsewhere.len() >= 10,
        "keys not spread over the masters: {} on port {}, {} elsewhere",
        on_master.len(),
        master.port,
        elsewhere.len()
    );
    (on_master, elsewhere)
}

/// A private 3-master cluster, a cache on it with every item 1..=60 filled, and the first
/// master with the items it serves.
struct Setup {
    cluster: RedisCluster,
    cache: Cache,
    master: NodeInfo,
    on_master: Vec<u64>,
    elsewhere: Vec<u64>,
    loads: Arc<AtomicUsize>,
}

async fn setup(test: &str) -> Setup {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start_masters_only)
        .await
        .expect("start the cluster");
    let cache = Cache::connect(
        CacheConfig::builder()
            .nodes(cluster.nodes())
            .prefix(unique_prefix(test))
            .response_timeout(RESPONSE)
            // Long enough that skipped slots stay skipped for the whole test.
            .retry_interval(Duration::from_secs(30))
            .build(),
    )
    .await
    .expect("connect");
    cache.ping().await.expect("the cluster answers");
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "{}", cluster.describe());
    let master = masters[0].clone();
    let (on_master, elsewhere) = split_by_master(&cache, &master);
    let loads = Arc::new(AtomicUsize::new(0));
    for &id in on_master.iter().chain(&elsewhere) {
        fetch(&cache, &loads, id).await;
    }
    assert_eq!(loads.load(Ordering::SeqCst), 60, "the first fetches load");
    Setup {
        cluster,
        cache,
        master,
        on_master,
        elsewhere,
        loads,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_does_not_stop_caching_on_the_others() {
    let Setup {
        cluster,
        cache,
        master: frozen,
        on_master: on_frozen,
        elsewhere,
        loads,
    } = setup("node_failure").await;

    // Items past 60 that the master serves, each in a slot of its own that none of
    // `on_frozen` is in: reads that tell whether the cache has skipped the master's slots.
    let mut taken: Vec<i64> = on_frozen
        .iter()
        .map(|&id| slot_of(&cache, &frozen, id))
        .collect();
    let mut probes = Vec::new();
    for id in 61..5_000u64 {
        if probes.len() == 60 {
            break;
        }
        let slot = slot_of(&cache, &frozen, id);
        if serves(&frozen, slot) && !taken.contains(&slot) {
            taken.push(slot);
            probes.push(id);
        }
    }
    assert_eq!(
        probes.len(),
        60,
        "not enough probe keys on port {}",
        frozen.port
    );

    cluster.pause_port(frozen.port);
    let outcome = async {
        // The frozen master's key: one response timeout, then the loader.
        let first = fetch(&cache, &loads, on_frozen[0]).await;
        // The other masters' keys: still hits.
        let before = loads.load(Ordering::SeqCst);
        let mut slowest_elsewhere = Duration::ZERO;
        for &id in &elsewhere {
            slowest_elsewhere = slowest_elsewhere.max(fetch(&cache, &loads, id).await);
        }
        let loads_elsewhere = loads.load(Ordering::SeqCst) - before;
        // The frozen master's other keys: at once, through the loader, once the cache has
        // looked up which node failed (CLUSTER SLOTS in the background; up to three tries of
        // one response timeout each, should it ask the frozen node). Wait for that lookup: a
        // read of a probe key, in a slot no request has failed on, is skipped at once. (One
        // read that reaches the frozen master times out after RESPONSE and tries the next
        // probe; the retry interval, 30 s, cannot end the wait.)
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut probed = 0;
        loop {
            let id = *probes.get(probed).unwrap_or_else(|| {
                panic!("{probed} probe keys of the frozen master were all read from it")
            });
            probed += 1;
            let read = cache.exists(&ITEM, &ItemKey { item_id: id }).await;
            if matches!(read, Err(Error::Unavailable)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the frozen master's slots were not skipped 10 s after it froze ({probed} \
                 probe reads, the last {read:?}): stats {:?}",
                cache.stats()
            );
        }
        let mut slowest_frozen = Duration::ZERO;
        for &id in &on_frozen[1..] {
            slowest_frozen = slowest_frozen.max(fetch(&cache, &loads, id).await);
        }
        (first, loads_elsewhere, slowest_elsewhere, slowest_frozen)
    }
    .await;
    cluster.resume_port(frozen.port);
    let (first, loads_elsewhere, slowest_elsewhere, slowest_frozen) = outcome;

    assert!(
        first >= RESPONSE && first < RESPONSE * 3,
        "the first fetch of a frozen master's key took {first:?} (response timeout {RESPONSE:?})"
    );
    assert_eq!(
        loads_elsewhere, 0,
        "keys of the healthy masters were loaded instead of read from the cache (slowest \
         fetch {slowest_elsewhere:?})"
    );
    assert!(
        slowest_frozen < RESPONSE,
        "a later fetch of a frozen master's key waited {slowest_frozen:?}: its slots should \
         be skipped at once"
    );
    eprintln!(
        "frozen master: first fetch {first:?}, later ones at most {slowest_frozen:?}; other \
         masters: {} hits, slowest {slowest_elsewhere:?}",
        elsewhere.len()
    );
    drop(cluster);
}

/// A master that misses one response timeout but answers again (here: frozen just long enough
/// for one fetch to time out) is not taken for failed: the node lookup finds it answering a
/// PING, so its slots stay in use and the timed-out key's slot reopens. Without that check
/// every key of the master would skip Redis for the whole retry interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_answers_again_keeps_its_slots() {
    let Setup {
        cluster,
        cache,
        master: slow,
        on_master: on_slow,
        loads,
        ..
    } = setup("node_hiccup").await;
    let filled = loads.load(Ordering::SeqCst);

    cluster.pause_port(slow.port);
    let first = fetch(&cache, &loads, on_slow[0]).await;
    cluster.resume_port(slow.port);
    assert!(
        first >= RESPONSE,
        "the fetch did not wait for the frozen master ({first:?})"
    );
    assert_eq!(loads.load(Ordering::SeqCst), filled + 1, "it failed open");

    // The lookup (CLUSTER SLOTS, then a PING of the node) runs in the background: wait until
    // it has reopened the timed-out key's slot, a read of that key goes to Redis again. (The
    // retry interval, 30 s, would reopen it too, but not within this wait.)
    let key = ItemKey {
        item_id: on_slow[0],
    };
    support::wait_until_async(
        "the node lookup reopened the timed-out key's slot",
        Duration::from_secs(10),
        || async { cache.exists(&ITEM, &key).await.is_ok() },
    )
    .await;
    let before = loads.load(Ordering::SeqCst);
    for &id in &on_slow {
        fetch(&cache, &loads, id).await;
    }
    assert_eq!(
        loads.load(Ordering::SeqCst) - before,
        0,
        "keys of a master that answers again were loaded instead of read from the cache: its \
         slots were skipped (stats {:?})",
        cache.stats()
    );
    drop(cluster);
}
