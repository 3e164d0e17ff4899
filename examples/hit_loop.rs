//! A loop of cache hits, for profilers and instruction counters: `fetch` of 1000 pre-filled
//! items (`cacheobj`), the same reads written by hand with redis-rs (GET + rmp-serde decode,
//! `raw`), `fetch` of a strategy whose local tier holds them (`local`), or moka used the way a
//! user would, a `future::Cache<String, Item>` keyed by the key formatted per call (`moka`), or
//! reads that miss a local tier far smaller than the items and go to Redis (`local-miss`), or
//! miss a tier with room and are kept (`kept-miss`: copies live 1 ms), against the same reads
//! of the strategy without a local tier (`plain-miss`), and those followed by an insert into a
//! moka cache by hand (`insert-miss`: what keeping a read costs whoever keeps it), from
//! `HIT_LOOP_TASKS` tasks (default 1), `HIT_LOOP_HITS` hits each (default 100,000). Prints
//! the hits and the time they took. Needs a Redis at `HIT_LOOP_URL`; `scripts/instructions_per_hit.sh` starts a
//! throwaway one and counts instructions per hit with callgrind.
//!
//! ```text
//! HIT_LOOP_URL=redis://127.0.0.1:6390 cargo run --release --example hit_loop -- cacheobj
//! HIT_LOOP_URL=redis://127.0.0.1:6390 cargo run --release --example hit_loop -- raw
//! HIT_LOOP_URL=redis://127.0.0.1:6390 cargo run --release --example hit_loop -- local
//! HIT_LOOP_URL=redis://127.0.0.1:6390 cargo run --release --example hit_loop -- moka
//! HIT_LOOP_URL=redis://127.0.0.1:6390 cargo run --release --example hit_loop -- local-miss
//! HIT_LOOP_URL=redis://127.0.0.1:6390 cargo run --release --example hit_loop -- kept-miss
//! HIT_LOOP_URL=redis://127.0.0.1:6390 cargo run --release --example hit_loop -- plain-miss
//! HIT_LOOP_URL=redis://127.0.0.1:6390 cargo run --release --example hit_loop -- insert-miss
//! ```

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cacheobj::{Cache, CacheConfig, Strategy};
use cacheobj_strategies::{Item, ItemKey, ITEM};

/// `ITEM` with a local tier: the same entries, answered from process memory.
const LOCAL_ITEM: Strategy<Item, ItemKey> = ITEM.local(2 * ITEMS);
/// `ITEM` with a local tier that holds few of the items: most reads miss it and go to Redis.
const SMALL_LOCAL_ITEM: Strategy<Item, ItemKey> = ITEM.local(16);
/// `ITEM` with room for every item but copies that live 1 ms: each read of the loop, which
/// comes back to an item long after that, misses, reads Redis, and is kept.
const BRIEF_LOCAL_ITEM: Strategy<Item, ItemKey> = ITEM
    .local(4 * ITEMS)
    .local_ttl(std::time::Duration::from_millis(1));

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Cacheobj,
    Raw,
    Local,
    Moka,
    LocalMiss,
    KeptMiss,
    PlainMiss,
    InsertMiss,
}

const ITEMS: u64 = 1000;
const PREFIX: &str = "hit_loop:";

fn env_or(name: &str, default: u64) -> Result<u64, Box<dyn std::error::Error>> {
    match std::env::var(name) {
        Ok(v) => Ok(v.trim().parse()?),
        Err(_) => Ok(default),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("HIT_LOOP_URL")
        .map_err(|_| "set HIT_LOOP_URL to a Redis this loop may write hit_loop:* keys to")?;
    let mode = match std::env::args().nth(1).as_deref() {
        None | Some("cacheobj") => Mode::Cacheobj,
        Some("raw") => Mode::Raw,
        Some("local") => Mode::Local,
        Some("moka") => Mode::Moka,
        Some("local-miss") => Mode::LocalMiss,
        Some("kept-miss") => Mode::KeptMiss,
        Some("plain-miss") => Mode::PlainMiss,
        Some("insert-miss") => Mode::InsertMiss,
        Some(other) => {
            return Err(format!(
                "unknown mode {other:?}: cacheobj, raw, local, moka, local-miss, kept-miss, \
                 plain-miss or insert-miss"
            )
            .into())
        }
    };
    let tasks = env_or("HIT_LOOP_TASKS", 1)?;
    let per_task = env_or("HIT_LOOP_HITS", 100_000)?;

    let cache = Cache::connect(
        CacheConfig::builder()
            .url(url.clone())
            .prefix(PREFIX)
            // Under valgrind on a busy machine, connecting alone can pass the default 250 ms.
            .response_timeout(std::time::Duration::from_secs(5))
            .build(),
    )
    .await?;
    cache.ping().await?;
    for item_id in 1..=ITEMS {
        let item = Item {
            id: item_id,
            name: format!("item #{item_id}"),
        };
        cache
            .fetch(&ITEM, &ItemKey { item_id }, || async move {
                Ok::<_, Infallible>(item)
            })
            .await?;
    }
    let raw = redis::Client::open(url.as_str())?
        .get_connection_manager()
        .await?;
    let moka = moka::future::Cache::<String, Item>::new(2 * ITEMS);
    // What `insert-miss` keeps its reads in: moka's sync cache, as the local tier's stores,
    // with room for every item and copies that live 1 ms, as `BRIEF_LOCAL_ITEM`'s.
    let kept_by_hand = moka::sync::Cache::<String, Item>::builder()
        .max_capacity(4 * ITEMS)
        .time_to_live(std::time::Duration::from_millis(1))
        .build();
    match mode {
        Mode::Local => warm_local(&cache).await?,
        Mode::Moka => {
            for item_id in 1..=ITEMS {
                let item = Item {
                    id: item_id,
                    name: format!("item #{item_id}"),
                };
                moka.insert(format!("{PREFIX}item:{item_id}"), item).await;
            }
        }
        Mode::Cacheobj | Mode::Raw | Mode::PlainMiss | Mode::InsertMiss => {}
        Mode::LocalMiss => wait_live(&cache, &SMALL_LOCAL_ITEM).await?,
        // One strategy per template and process: the first one used makes the store.
        Mode::KeptMiss => wait_live(&cache, &BRIEF_LOCAL_ITEM).await?,
    }

    // From here on, a `local` loop's reads must all be local hits.
    let misses_before = cache.stats().local_misses;
    let hits = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (cache, hits, mut conn) = (cache.clone(), hits.clone(), raw.clone());
        let (moka, kept_by_hand) = (moka.clone(), kept_by_hand.clone());
        handles.push(tokio::spawn(async move {
            let mut i = task * 7919;
            let mut n = 0;
            while n < per_task {
                let item_id = i % ITEMS + 1;
                let item: Item = match mode {
                    Mode::Raw => {
                        let bytes: Option<Vec<u8>> = redis::cmd("GET")
                            .arg(format!("{PREFIX}item:{item_id}"))
                            .query_async(&mut conn)
                            .await?;
                        rmp_serde::from_slice(&bytes.ok_or("a hit loop missed")?)?
                    }
                    Mode::Moka => moka
                        .get(&format!("{PREFIX}item:{item_id}"))
                        .await
                        .ok_or("a hit loop missed")?,
                    Mode::InsertMiss => {
                        let item = cache
                            .fetch(&ITEM, &ItemKey { item_id }, || async {
                                Err::<Item, _>("a hit loop missed")
                            })
                            .await?;
                        kept_by_hand.insert(format!("{PREFIX}item:{item_id}"), item.clone());
                        item
                    }
                    Mode::Cacheobj
                    | Mode::Local
                    | Mode::LocalMiss
                    | Mode::KeptMiss
                    | Mode::PlainMiss => {
                        let strategy = match mode {
                            Mode::Local => &LOCAL_ITEM,
                            Mode::LocalMiss => &SMALL_LOCAL_ITEM,
                            Mode::KeptMiss => &BRIEF_LOCAL_ITEM,
                            _ => &ITEM,
                        };
                        cache
                            .fetch(strategy, &ItemKey { item_id }, || async {
                                Err::<Item, _>("a hit loop missed")
                            })
                            .await?
                    }
                };
                std::hint::black_box(item);
                i += 1;
                n += 1;
            }
            hits.fetch_add(n, Ordering::Relaxed);
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for handle in handles {
        handle.await?.map_err(|e| e.to_string())?;
    }
    if mode == Mode::Local && cache.stats().local_misses != misses_before {
        return Err(format!("local hits went to Redis: {:?}", cache.stats()).into());
    }
    let mode = match mode {
        Mode::Cacheobj => "cacheobj",
        Mode::Raw => "raw",
        Mode::Local => "local",
        Mode::Moka => "moka",
        Mode::LocalMiss => "local-miss",
        Mode::KeptMiss => "kept-miss",
        Mode::PlainMiss => "plain-miss",
        Mode::InsertMiss => "insert-miss",
    };
    let hits = hits.load(Ordering::Relaxed);
    let took = started.elapsed();
    println!(
        "{mode} tasks {tasks} hits {hits} in {:.2} s ({:.0} hits/s)",
        took.as_secs_f64(),
        hits as f64 / took.as_secs_f64()
    );
    Ok(())
}

/// Waits until the local tier is live and tracks `ITEM`'s prefix: until `strategy` keeps a
/// read (or, with copies that live 1 ms, reads the key's TTL to keep it).
async fn wait_live(
    cache: &Cache,
    strategy: &Strategy<Item, ItemKey>,
) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        cache
            .fetch(strategy, &ItemKey { item_id: 1 }, || async {
                Err::<Item, _>("a warm-up read missed")
            })
            .await?;
        if cache.local_len(strategy) > 0 || cache.local_live() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the local tier never went live: {:?}", cache.stats()).into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Waits until the local tier is live, then reads every item until the tier holds them all.
async fn warm_local(cache: &Cache) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while cache.local_len(&LOCAL_ITEM) < ITEMS {
        if Instant::now() > deadline {
            return Err(
                format!("the local tier never held every item: {:?}", cache.stats()).into(),
            );
        }
        for item_id in 1..=ITEMS {
            cache
                .fetch(&LOCAL_ITEM, &ItemKey { item_id }, || async {
                    Err::<Item, _>("a warm-up read missed")
                })
                .await?;
        }
        if !cache.local_live() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    Ok(())
}
