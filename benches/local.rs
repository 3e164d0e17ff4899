//! The local tier (`Strategy::local`) side by side with moka, redis-rs's own client-side cache
//! (`cache-aio`) and hand-written redis-rs, in one run against one throwaway `redis-server`.
//!
//! ```text
//! bash scripts/bench.sh local          # on a fresh machine: installs redis-server, then:
//! cargo bench --bench local
//! BENCH_ROUNDS=9 BENCH_RUN_MS=600 BENCH_SCAN_KEYS=200000 cargo bench --bench local
//! ```
//!
//! What it measures, each against its contenders in the same rounds:
//!
//! 1. local hit latency: `fetch` of a `.local(..)` strategy whose value is held locally, vs
//!    `moka::future::Cache<String, Item>` used as a user would (the key formatted per call);
//!    and that no command reaches Redis meanwhile (`INFO commandstats` around each run,
//!    without `ping`, the tracking heartbeat, and `info`, the check itself);
//! 2. hit throughput with 1 and 64 tasks: the same two, redis-rs's experimental client-side
//!    cache (RESP3, `cache-aio`) doing GET + decode, and a plain redis-rs GET + decode;
//! 3. local-miss cost, vs the same reads of a strategy without `.local`: reads that miss a
//!    full local tier far too small for the key set and go to Redis (its doorkeeper admits
//!    none of them: a plain GET each), and reads that miss a tier with room and are kept
//!    (copies that live 1 ms: a GET, a PTTL only on a key's first read, then an insert); the
//!    read without `.local` followed by an insert into a moka cache by hand shows what keeping
//!    a read costs whoever keeps it; redis-rs GET and GET+PTTL pipelined beside them show
//!    what the PTTL of a first kept read costs, and what the MGET coalescing of cacheobj saves;
//! 4. memory per local entry (live bytes after holding N entries, by a counting allocator) vs
//!    moka holding the same entries, and the bound under a scan of many distinct keys.
//!
//! It starts its own `redis-server` on a free loopback port (`$CACHEOBJ_REDIS_SERVER`, else
//! `redis-server` on PATH) and kills it at the end. Phases 1 to 3 run in `BENCH_ROUNDS` rounds
//! (default 21) of `BENCH_RUN_MS` (default 250 ms) per contender, the contenders of each group
//! in an order that rotates from round to round; each `ratio` line is the median of per-round
//! ratios. The tokio runtime has 2 worker threads; the server shares the machine.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{fmt_dur, median, Ratio};

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cacheobj::{Cache, CacheKey, Strategy};
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use support::RedisServer;

// ---------------------------------------------------------------------------------------------
// Counting allocator: while `MEASURING` is on, counts allocations and the net bytes allocated
// (allocated minus freed, by layout size); otherwise one relaxed load per call.
// ---------------------------------------------------------------------------------------------

struct CountingAlloc;

static MEASURING: AtomicBool = AtomicBool::new(false);
static NET_BYTES: AtomicI64 = AtomicI64::new(0);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

#[inline]
fn count(added: i64, allocation: bool) {
    if MEASURING.load(Ordering::Relaxed) {
        NET_BYTES.fetch_add(added, Ordering::Relaxed);
        if allocation {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64, true);
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64, true);
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as i64 - layout.size() as i64, true);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as i64), false);
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn start_measuring() {
    NET_BYTES.store(0, Ordering::SeqCst);
    ALLOCATIONS.store(0, Ordering::SeqCst);
    MEASURING.store(true, Ordering::SeqCst);
}

/// Net bytes and allocations since [`start_measuring`].
fn stop_measuring() -> (i64, u64) {
    MEASURING.store(false, Ordering::SeqCst);
    (
        NET_BYTES.load(Ordering::SeqCst),
        ALLOCATIONS.load(Ordering::SeqCst),
    )
}

// ---------------------------------------------------------------------------------------------
// The value, the strategies, the keys
// ---------------------------------------------------------------------------------------------

/// A row as a service would cache it: five fields, three of them on the heap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Item {
    id: u64,
    name: String,
    price: u64,
    tags: Vec<String>,
    updated_at: u64,
}

#[derive(Debug, Clone, Copy, Serialize, CacheKey)]
struct ItemKey {
    item_id: u64,
}

fn item(id: u64) -> Item {
    Item {
        id,
        name: format!("item #{id}"),
        price: 100 + id % 9_000,
        tags: vec!["tools".to_string(), format!("batch-{}", id % 16)],
        updated_at: 1_700_000_000 + id,
    }
}

/// cacheobj's key prefix.
const PREFIX: &str = "bench:";
/// TTL of every pre-filled entry, as the strategies' `expire(86400)`.
const TTL_SECS: u64 = 86400;
/// Items the hit phases cycle over, ids `1..=HOT`.
const HOT: u64 = 1000;
/// Keys the local-miss phase cycles over, ids `1..=MISS_KEYS`.
const MISS_KEYS: u64 = 10_000;
/// The local-miss phase's local tier: far smaller than its key set, so reads go to Redis.
const MISS_CAPACITY: u64 = 16;
/// The bound of the scan phase's local tier.
const SCAN_CAPACITY: u64 = 10_000;
/// `local_len` is sampled after every this many keys of the scan.
const SCAN_SAMPLE: u64 = 10_000;
/// In-process operations are timed in batches of this many (one pair of clock reads per
/// batch), so the clock does not dominate sub-microsecond operations.
const BATCH: u64 = 16;

/// Held locally: the hit phases. A long local TTL, so no copy expires during the rounds.
const LOCAL: Strategy<Item, ItemKey> = Strategy::obj("item:<item_id>")
    .expire(86400)
    .local(10_000)
    .local_ttl(Duration::from_secs(3600));
/// The local-miss phase, with and without the local tier, over the same Redis entries.
const MISS_LOCAL: Strategy<Item, ItemKey> = Strategy::obj("miss:<item_id>")
    .expire(86400)
    .local(MISS_CAPACITY);
const MISS_PLAIN: Strategy<Item, ItemKey> = Strategy::obj("miss:<item_id>").expire(86400);
/// The kept-miss contender: room for every key, but copies that live 1 ms, so each read
/// (which comes back to its key long after that) misses, reads Redis, and is kept. Its own
/// keys, with the same values as `miss:`: a store is found by its template.
const MISS_KEPT: Strategy<Item, ItemKey> = Strategy::obj("kept:<item_id>")
    .expire(86400)
    .local(2 * MISS_KEYS)
    .local_ttl(Duration::from_millis(1));
/// The memory phase: room for every entry it holds.
const MEM: Strategy<Item, ItemKey> = Strategy::obj("mem:<item_id>")
    .expire(86400)
    .local(1 << 20)
    .local_ttl(Duration::from_secs(3600));
/// The scan phase.
const SCAN: Strategy<Item, ItemKey> = Strategy::obj("scan:<item_id>")
    .expire(86400)
    .local(SCAN_CAPACITY);

/// The Redis key cacheobj reads for `template` (its text before `<`) and `id`.
fn cacheobj_key(head: &str, id: u64) -> String {
    format!("{PREFIX}{head}{id}")
}

/// The redis-rs contenders' own keys, outside every tracked prefix.
fn raw_key(id: u64) -> String {
    format!("raw:item:{id}")
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        _ => default,
    }
}

/// Loads that the hit paths must never run; counted and reported.
static UNEXPECTED_LOADS: AtomicU64 = AtomicU64::new(0);

async fn unexpected_load(id: u64) -> Result<Item, Infallible> {
    UNEXPECTED_LOADS.fetch_add(1, Ordering::Relaxed);
    Ok(item(id))
}

/// Writes `item(id)` for every id of `ids` under `key(id)`, in cacheobj's format (FORMAT.md:
/// `rmp_serde::to_vec_named`), with pipelined `SET .. EX`.
async fn fill(
    conn: &mut MultiplexedConnection,
    ids: std::ops::RangeInclusive<u64>,
    key: impl Fn(u64) -> String,
) {
    let mut pipe = redis::pipe();
    let mut queued = 0;
    for id in ids {
        let bytes = rmp_serde::to_vec_named(&item(id)).expect("encode");
        pipe.cmd("SET")
            .arg(key(id))
            .arg(bytes)
            .arg("EX")
            .arg(TTL_SECS)
            .ignore();
        queued += 1;
        if queued == 1000 {
            let () = pipe.query_async(conn).await.expect("pipelined SET");
            pipe = redis::pipe();
            queued = 0;
        }
    }
    if queued > 0 {
        let () = pipe.query_async(conn).await.expect("pipelined SET");
    }
}

/// Fetches `ids` through `strategy` until the local tier is live and holds `expect` entries
/// of it (the first read of a key keeps it only once tracking is confirmed).
async fn hold_locally(cache: &Cache, strategy: &Strategy<Item, ItemKey>, ids: &[u64], expect: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for &id in ids {
            let v = cache
                .fetch(strategy, &ItemKey { item_id: id }, || unexpected_load(id))
                .await
                .expect("infallible");
            assert_eq!(v.id, id);
        }
        if cache.local_live() && cache.local_len(strategy) >= expect {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the local tier did not hold {expect} entries within 30 s (live: {}, held: {}, {:?})",
            cache.local_live(),
            cache.local_len(strategy),
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `INFO commandstats` calls of every command but `ping` (the tracking heartbeat) and `info`
/// (this check).
async fn commands(conn: &mut MultiplexedConnection) -> u64 {
    support::calls_except(conn, &["ping", "info"]).await
}

/// `INFO commandstats` calls of `PTTL`.
async fn pttls(conn: &mut MultiplexedConnection) -> u64 {
    let info = support::commandstats(conn).await;
    support::command_calls(&info)
        .into_iter()
        .find_map(|(name, calls)| (name == "pttl").then_some(calls))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Contenders and runs
// ---------------------------------------------------------------------------------------------

/// Everything the contenders use, shared by all tasks.
struct Env {
    cache: Cache,
    moka: moka::future::Cache<String, Item>,
    /// Plain redis-rs (RESP2).
    raw: MultiplexedConnection,
    /// redis-rs with its client-side cache (RESP3, `CLIENT TRACKING ON`).
    csc: MultiplexedConnection,
    /// What `MissInsert` keeps its reads in: moka's sync cache (as the tier's stores), with
    /// room for every key and a 1 ms life, as `MISS_KEPT`.
    kept_by_hand: moka::sync::Cache<String, Item>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    /// cacheobj fetch, held locally.
    Local,
    /// moka::future get, key formatted per call.
    Moka,
    /// redis-rs cache-aio GET + decode (hits served from its cache).
    Csc,
    /// redis-rs GET + decode.
    Raw,
    /// cacheobj fetch of `MISS_LOCAL`: local misses read from Redis.
    MissLocal,
    /// cacheobj fetch of `MISS_KEPT`: local misses read from Redis and kept.
    MissKept,
    /// cacheobj fetch of `MISS_PLAIN`: the same reads without a local tier.
    MissPlain,
    /// The same, then an insert of the value into a moka cache by hand: the least a kept
    /// read can cost with moka as the store.
    MissInsert,
    /// redis-rs GET and PTTL pipelined, + decode: what a local miss sends, by hand.
    RawPipe,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Local => "cacheobj fetch (local hit)",
            Op::Moka => "moka::future get",
            Op::Csc => "redis-rs cache-aio GET+decode",
            Op::Raw => "redis-rs GET+decode",
            Op::MissLocal => "cacheobj .local, local miss",
            Op::MissKept => "cacheobj .local, miss kept",
            Op::MissPlain => "cacheobj without .local",
            Op::MissInsert => "without .local + moka insert",
            Op::RawPipe => "redis-rs GET+PTTL pipe+decode",
        }
    }

    /// Whether one operation stays in process (timed in batches, and, in the 64-task
    /// throughput group, followed by a yield per batch so that the tasks take turns).
    fn in_process(self) -> bool {
        matches!(self, Op::Local | Op::Moka | Op::Csc)
    }

    fn per_sample(self) -> u64 {
        if self.in_process() {
            BATCH
        } else {
            1
        }
    }
}

/// One group of contenders compared at one concurrency.
struct Scenario {
    name: &'static str,
    conc: usize,
    ops: &'static [Op],
    /// Yield after each timed batch of an in-process contender: with 64 tasks, which would
    /// otherwise run one after another (a hit from memory never waits); one task has no one
    /// to take turns with.
    yields: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "hit latency",
        conc: 1,
        ops: &[Op::Local, Op::Moka],
        yields: false,
    },
    Scenario {
        name: "hit tput",
        conc: 1,
        ops: &[Op::Local, Op::Moka, Op::Csc, Op::Raw],
        yields: false,
    },
    Scenario {
        name: "hit tput",
        conc: 64,
        ops: &[Op::Local, Op::Moka, Op::Csc, Op::Raw],
        yields: true,
    },
    Scenario {
        name: "local miss",
        conc: 1,
        ops: &[
            Op::MissLocal,
            Op::MissKept,
            Op::MissPlain,
            Op::MissInsert,
            Op::Raw,
            Op::RawPipe,
        ],
        yields: false,
    },
    Scenario {
        name: "local miss",
        conc: 64,
        ops: &[
            Op::MissLocal,
            Op::MissKept,
            Op::MissPlain,
            Op::MissInsert,
            Op::Raw,
            Op::RawPipe,
        ],
        yields: false,
    },
];

/// One contender's run.
struct RunStats {
    ops_per_sec: f64,
    /// Median time of one operation (of a batch's mean, for in-process contenders).
    p50: Duration,
}

impl RunStats {
    fn new(mut samples: Vec<u64>, per_sample: u64, elapsed: Duration) -> RunStats {
        assert!(!samples.is_empty(), "a run completed no operation");
        samples.sort_unstable();
        let p50 = samples[(samples.len() - 1) / 2] / per_sample;
        RunStats {
            ops_per_sec: (samples.len() as u64 * per_sample) as f64 / elapsed.as_secs_f64(),
            p50: Duration::from_nanos(p50),
        }
    }
}

async fn run(env: &Arc<Env>, op: Op, s: &Scenario, dur: Duration) -> RunStats {
    let start = Instant::now();
    let deadline = start + dur;
    let tasks: Vec<_> = (0..s.conc as u64)
        .map(|task| tokio::spawn(worker(env.clone(), op, task, deadline, s.yields)))
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.expect("a benchmark task panicked"));
    }
    RunStats::new(samples, op.per_sample(), start.elapsed())
}

/// One task's loop: nanoseconds per clock sample.
async fn worker(env: Arc<Env>, op: Op, task: u64, deadline: Instant, yields: bool) -> Vec<u64> {
    let mut samples: Vec<u64> = Vec::with_capacity(1 << 14);
    let mut conn = match op {
        Op::Csc => env.csc.clone(),
        _ => env.raw.clone(),
    };
    // Each task starts somewhere else in the cycle.
    let mut i: u64 = task.wrapping_mul(7919);
    let yields = yields && op.in_process();

    macro_rules! timed {
        ($keys:expr, |$id:ident| $body:block) => {
            loop {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                for _ in 0..op.per_sample() {
                    let $id = 1 + i % $keys;
                    $body
                    i += 1;
                }
                samples.push(t0.elapsed().as_nanos() as u64);
                if yields {
                    tokio::task::yield_now().await;
                }
            }
        };
    }

    match op {
        Op::Local => timed!(HOT, |id| {
            let v = env
                .cache
                .fetch(&LOCAL, &ItemKey { item_id: id }, || unexpected_load(id))
                .await
                .expect("infallible");
            debug_assert_eq!(v.id, id);
            std::hint::black_box(v);
        }),
        Op::Moka => timed!(HOT, |id| {
            let key = format!("item:{id}");
            let v = env.moka.get(&key).await.expect("moka missed");
            debug_assert_eq!(v.id, id);
            std::hint::black_box(v);
        }),
        Op::Csc | Op::Raw => timed!(HOT, |id| {
            let bytes: Option<Vec<u8>> = redis::cmd("GET")
                .arg(raw_key(id))
                .query_async(&mut conn)
                .await
                .expect("GET");
            let v: Item =
                rmp_serde::from_slice(&bytes.expect("redis-rs hit path missed")).expect("decode");
            debug_assert_eq!(v.id, id);
            std::hint::black_box(v);
        }),
        Op::RawPipe => timed!(HOT, |id| {
            let key = raw_key(id);
            let (bytes, _pttl): (Option<Vec<u8>>, i64) = redis::pipe()
                .cmd("GET")
                .arg(&key)
                .cmd("PTTL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("GET+PTTL");
            let v: Item =
                rmp_serde::from_slice(&bytes.expect("redis-rs hit path missed")).expect("decode");
            debug_assert_eq!(v.id, id);
            std::hint::black_box(v);
        }),
        Op::MissInsert => timed!(MISS_KEYS, |id| {
            let v = env
                .cache
                .fetch(&MISS_PLAIN, &ItemKey { item_id: id }, || {
                    unexpected_load(id)
                })
                .await
                .expect("infallible");
            debug_assert_eq!(v.id, id);
            env.kept_by_hand.insert(format!("kept:{id}"), v.clone());
            std::hint::black_box(v);
        }),
        Op::MissLocal | Op::MissKept | Op::MissPlain => {
            let strategy = match op {
                Op::MissLocal => &MISS_LOCAL,
                Op::MissKept => &MISS_KEPT,
                _ => &MISS_PLAIN,
            };
            timed!(MISS_KEYS, |id| {
                let v = env
                    .cache
                    .fetch(strategy, &ItemKey { item_id: id }, || unexpected_load(id))
                    .await
                    .expect("infallible");
                debug_assert_eq!(v.id, id);
                std::hint::black_box(v);
            })
        }
    }
    samples
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

/// Per-round ratios of two contenders, as a median and a range.
fn ratio_of(a: &[RunStats], b: &[RunStats], f: impl Fn(&RunStats, &RunStats) -> f64) -> Ratio {
    Ratio::over(a.iter().zip(b).map(|(x, y)| f(x, y)).collect())
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    let rounds = env_number("BENCH_ROUNDS", 21).max(1);
    let run_ms = env_number("BENCH_RUN_MS", 250).max(10);
    let mem_entries = env_number("BENCH_MEM_ENTRIES", 50_000).max(1);
    let scan_keys = env_number("BENCH_SCAN_KEYS", 1_000_000).max(1);
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let bound_held = runtime.block_on(bench(
        &server,
        rounds,
        Duration::from_millis(run_ms),
        mem_entries,
        scan_keys,
    ));
    drop(runtime);
    drop(server); // kills the redis-server and removes its directory
    assert!(bound_held, "the local tier held more than its bound");
}

/// Runs every phase and prints the report; returns whether the scan kept the bound.
async fn bench(
    server: &RedisServer,
    rounds: u64,
    run_for: Duration,
    mem_entries: u64,
    scan_keys: u64,
) -> bool {
    let started = Instant::now();
    let url = server.url();
    let client = redis::Client::open(url.as_str()).expect("url");
    let mut admin = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut admin)
        .await
        .expect("INFO");
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    println!(
        "local: redis-server {version} on 127.0.0.1:{} (throwaway), tokio 2 workers, {} cores, \
         {rounds} rounds x {} ms per contender, medians across rounds",
        server.port,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        run_for.as_millis()
    );

    // ---- set-up ----
    let cache = common::bench_cache(server.port, PREFIX).await;
    assert_eq!(
        cache
            .entry_key(&LOCAL, &ItemKey { item_id: 1 })
            .expect("renders")
            .key,
        cacheobj_key("item:", 1).as_bytes(),
        "the pre-filled keys must be cacheobj's"
    );
    let raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis-rs connection");
    let csc_client = redis::Client::open(format!("{url}?protocol=resp3")).expect("url");
    let csc_config = redis::AsyncConnectionConfig::new().set_cache_config(
        redis::caching::CacheConfig::new()
            .set_size(std::num::NonZeroUsize::new(10_000).expect("non-zero"))
            .set_default_client_ttl(Duration::from_secs(3600)),
    );
    let csc = csc_client
        .get_multiplexed_async_connection_with_config(&csc_config)
        .await
        .expect("redis-rs cache-aio connection (RESP3)");
    let moka = moka::future::Cache::new(10_000);

    fill(&mut admin, 1..=HOT, |id| cacheobj_key("item:", id)).await;
    fill(&mut admin, 1..=HOT, raw_key).await;
    fill(&mut admin, 1..=MISS_KEYS, |id| cacheobj_key("miss:", id)).await;
    fill(&mut admin, 1..=MISS_KEYS, |id| cacheobj_key("kept:", id)).await;
    // Every local strategy of the rounds starts tracking before the hot items are held: a new
    // prefix restarts tracking, which flushes the tier.
    hold_locally(&cache, &MISS_LOCAL, &[1], 1).await;
    // Registers `MISS_KEPT` (its copies expire at once, so none is waited for).
    cache
        .fetch(&MISS_KEPT, &ItemKey { item_id: 1 }, || unexpected_load(1))
        .await
        .expect("infallible");
    let hot: Vec<u64> = (1..=HOT).collect();
    hold_locally(&cache, &LOCAL, &hot, HOT).await;
    for &id in &hot {
        moka.insert(format!("item:{id}"), item(id)).await;
    }
    let kept_by_hand = moka::sync::Cache::builder()
        .max_capacity(2 * MISS_KEYS)
        .time_to_live(Duration::from_millis(1))
        .build();
    let env = Arc::new(Env {
        cache,
        moka,
        raw,
        csc,
        kept_by_hand,
    });

    // Warm-up: every contender once (the cache-aio connection reads each key once and keeps
    // it), results dropped.
    for s in SCENARIOS {
        for &op in s.ops {
            run(&env, op, s, run_for / 3).await;
        }
    }

    // ---- rounds ----
    // Keyed by scenario index: two groups run the same contenders with one task.
    let mut results: HashMap<(usize, Op), Vec<RunStats>> = HashMap::new();
    let loads_before = UNEXPECTED_LOADS.load(Ordering::Relaxed);
    let csc_before = env.csc.get_cache_statistics().unwrap_or_default();
    // Redis commands and cacheobj counters during each group's cacheobj runs.
    let mut local_hit_commands: u64 = 0;
    let mut local_hit_fetches: u64 = 0;
    let mut local_hit_misses: u64 = 0;
    let mut miss_local_hits: u64 = 0;
    let mut miss_local_fetches: u64 = 0;
    let mut miss_errors: u64 = 0;
    let mut kept_hits: u64 = 0;
    let mut kept_fetches: u64 = 0;
    let mut kept_pttls: u64 = 0;
    let flushes_before = env.cache.stats().local_flushes;
    for round in 0..rounds {
        for (si, s) in SCENARIOS.iter().enumerate() {
            let mut order = s.ops.to_vec();
            let shift = round as usize % order.len();
            order.rotate_left(shift);
            for op in order {
                let pttls_before = pttls(&mut admin).await;
                let commands_before = commands(&mut admin).await;
                let stats_before = env.cache.stats();
                let stats = run(&env, op, s, run_for).await;
                let stats_after = env.cache.stats();
                let sent = commands(&mut admin).await - commands_before;
                match op {
                    Op::Local => {
                        local_hit_commands += sent;
                        local_hit_fetches += stats_after.local_hits - stats_before.local_hits;
                        local_hit_misses += stats_after.local_misses - stats_before.local_misses;
                    }
                    Op::Moka => local_hit_commands += sent,
                    Op::MissLocal => {
                        miss_local_hits += stats_after.local_hits - stats_before.local_hits;
                        miss_local_fetches += (stats_after.local_hits - stats_before.local_hits)
                            + (stats_after.local_misses - stats_before.local_misses);
                    }
                    Op::MissKept => {
                        kept_hits += stats_after.local_hits - stats_before.local_hits;
                        kept_fetches += (stats_after.local_hits - stats_before.local_hits)
                            + (stats_after.local_misses - stats_before.local_misses);
                        kept_pttls += pttls(&mut admin).await - pttls_before;
                    }
                    _ => {}
                }
                miss_errors += stats_after.errors - stats_before.errors;
                results.entry((si, op)).or_default().push(stats);
            }
        }
    }
    let unexpected = UNEXPECTED_LOADS.load(Ordering::Relaxed) - loads_before;
    let flushes = env.cache.stats().local_flushes - flushes_before;
    let csc_after = env.csc.get_cache_statistics().unwrap_or_default();

    // ---- allocations per hit ----
    let allocs_local = allocations_per(10_000, |id| {
        let env = &env;
        async move {
            let v = env
                .cache
                .fetch(&LOCAL, &ItemKey { item_id: id }, || unexpected_load(id))
                .await
                .expect("infallible");
            std::hint::black_box(v);
        }
    })
    .await;
    let allocs_moka = allocations_per(10_000, |id| {
        let env = &env;
        async move {
            let key = format!("item:{id}");
            std::hint::black_box(env.moka.get(&key).await.expect("hit"));
        }
    })
    .await;

    // ---- memory per entry ----
    let memory = memory_per_entry(&env, &mut admin, mem_entries).await;

    // ---- the bound under a scan ----
    let scan = scan_bound(&env, &mut admin, scan_keys).await;

    // ---- report ----
    println!();
    println!(
        "{:<12} {:>4}  {:<31} {:>13} {:>25} {:>9}",
        "group", "conc", "contender", "ops/s", "(min..max over rounds)", "p50"
    );
    for (si, s) in SCENARIOS.iter().enumerate() {
        for &op in s.ops {
            let runs = &results[&(si, op)];
            let ops: Vec<f64> = runs.iter().map(|r| r.ops_per_sec).collect();
            let p50 = median(runs.iter().map(|r| r.p50.as_secs_f64()).collect());
            println!(
                "{:<12} {:>4}  {:<31} {:>13.0} {:>25} {:>9}",
                s.name,
                s.conc,
                op.label(),
                median(ops.clone()),
                format!(
                    "({:.0}..{:.0})",
                    ops.iter().copied().fold(f64::INFINITY, f64::min),
                    ops.iter().copied().fold(0.0, f64::max)
                ),
                fmt_dur(Duration::from_secs_f64(p50)),
            );
        }
    }
    println!(
        "{:<12} {:>4}  (in-process contenders: p50 is the mean of a batch of {BATCH} timed \
         together; in the 64-task tput group each task yields after each batch)",
        "", ""
    );
    println!(
        "redis_commands_during_local_hits {local_hit_commands}  # INFO commandstats around every \
         local-hit latency run (cacheobj and moka), ping and info excluded; {local_hit_fetches} \
         cacheobj local hits, {local_hit_misses} local misses in those runs"
    );
    println!(
        "redis-rs cache-aio during the rounds: {} hits, {} misses, {} invalidations",
        csc_after.hit - csc_before.hit,
        csc_after.miss - csc_before.miss,
        csc_after.invalidate - csc_before.invalidate,
    );
    println!(
        "local-miss runs: {miss_local_hits} local hits of {miss_local_fetches} fetches \
         ({:.2} %) with .local({MISS_CAPACITY}) over {MISS_KEYS} keys",
        100.0 * miss_local_hits as f64 / miss_local_fetches.max(1) as f64
    );
    println!(
        "kept-miss runs: {kept_hits} local hits of {kept_fetches} fetches ({:.2} %) with \
         .local({}) and a 1 ms local TTL over {MISS_KEYS} keys, {kept_pttls} PTTLs \
         ({:.2} per fetch: the expiry learned by a key's first kept read is reused); {} held \
         at the end",
        100.0 * kept_hits as f64 / kept_fetches.max(1) as f64,
        2 * MISS_KEYS,
        kept_pttls as f64 / kept_fetches.max(1) as f64,
        env.cache.local_len(&MISS_KEPT),
    );
    println!(
        "loads on hit paths: {unexpected}; cacheobj errors during the rounds: {miss_errors}; \
         local tier flushes: {flushes}"
    );
    if unexpected > 0 || miss_errors > 0 || local_hit_misses > 0 || flushes > 0 {
        println!(
            "WARNING: a hit path loaded, failed open or missed locally: its figures are not pure"
        );
    }
    println!(
        "allocations_per_hit cacheobj_local {allocs_local:.2} moka {allocs_moka:.2}  # mean over \
         10000 sequential hits; both clone the Item (4 heap blocks: its name, its tags and their \
         2 strings); moka's user also formats its key, cacheobj renders into a reused buffer"
    );
    memory.print();
    scan.print();

    // Scenario indexes: 0 latency, 1 and 2 throughput (1 and 64 tasks), 3 and 4 local miss.
    let r = |scenario: usize, op: Op| &results[&(scenario, op)][..];
    let slower = |x: &RunStats, y: &RunStats| y.ops_per_sec / x.ops_per_sec;
    let faster = |x: &RunStats, y: &RunStats| x.ops_per_sec / y.ops_per_sec;
    let p50_ratio = |x: &RunStats, y: &RunStats| x.p50.as_secs_f64() / y.p50.as_secs_f64();
    let lat = ratio_of(r(0, Op::Local), r(0, Op::Moka), slower);
    let lat_p50 = ratio_of(r(0, Op::Local), r(0, Op::Moka), p50_ratio);
    let t64_moka = ratio_of(r(2, Op::Local), r(2, Op::Moka), faster);
    let t64_csc = ratio_of(r(2, Op::Local), r(2, Op::Csc), faster);
    let t64_raw = ratio_of(r(2, Op::Local), r(2, Op::Raw), faster);
    let t1_moka = ratio_of(r(1, Op::Local), r(1, Op::Moka), faster);
    let t1_csc = ratio_of(r(1, Op::Local), r(1, Op::Csc), faster);
    let t1_raw = ratio_of(r(1, Op::Local), r(1, Op::Raw), faster);
    let miss1 = ratio_of(r(3, Op::MissLocal), r(3, Op::MissPlain), slower);
    let miss64 = ratio_of(r(4, Op::MissLocal), r(4, Op::MissPlain), slower);
    let kept1 = ratio_of(r(3, Op::MissKept), r(3, Op::MissPlain), slower);
    let kept64 = ratio_of(r(4, Op::MissKept), r(4, Op::MissPlain), slower);
    let insert1 = ratio_of(r(3, Op::MissInsert), r(3, Op::MissPlain), slower);
    let insert64 = ratio_of(r(4, Op::MissInsert), r(4, Op::MissPlain), slower);
    let kept_vs_insert64 = ratio_of(r(4, Op::MissKept), r(4, Op::MissInsert), slower);
    let pipe1 = ratio_of(r(3, Op::RawPipe), r(3, Op::Raw), slower);
    let pipe64 = ratio_of(r(4, Op::RawPipe), r(4, Op::Raw), slower);
    let plain64 = ratio_of(r(4, Op::MissPlain), r(4, Op::Raw), faster);

    println!();
    println!("# ratio lines: the median of {rounds} per-round ratios [min..max], target, verdict.");
    let line = |name: &str, r: Ratio, target: &str, met: Option<bool>, meaning: &str| {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "-",
        };
        println!(
            "ratio {name:<34} {:>7.3}  [{:.3}..{:.3}]  target {target:<7} {verdict:<6}  # {meaning}",
            r.median, r.min, r.max
        );
    };
    line(
        "local_hit_time_vs_moka",
        lat,
        "<= 1.5",
        Some(lat.median <= 1.5),
        "time per hit, cacheobj / moka (1 task); lower is better",
    );
    line(
        "local_hit_p50_vs_moka",
        lat_p50,
        "<= 1.5",
        Some(lat_p50.median <= 1.5),
        "p50 time per hit (of 16-hit batches), cacheobj / moka (1 task)",
    );
    line(
        "hit_tput_c64_vs_moka",
        t64_moka,
        ">= 0.7",
        Some(t64_moka.median >= 0.7),
        "throughput, cacheobj local / moka, 64 tasks; higher is better",
    );
    line(
        "hit_tput_c64_vs_redis_rs_cache_aio",
        t64_csc,
        "> 1",
        Some(t64_csc.median > 1.0),
        "throughput, cacheobj local / redis-rs cache-aio GET+decode, 64 tasks",
    );
    line(
        "hit_tput_c64_vs_redis_rs_get",
        t64_raw,
        "",
        None,
        "throughput, cacheobj local / redis-rs GET+decode, 64 tasks",
    );
    line(
        "hit_tput_c1_vs_moka",
        t1_moka,
        ">= 0.7",
        Some(t1_moka.median >= 0.7),
        "throughput, cacheobj local / moka, 1 task",
    );
    line(
        "hit_tput_c1_vs_redis_rs_cache_aio",
        t1_csc,
        "> 1",
        Some(t1_csc.median > 1.0),
        "throughput, cacheobj local / redis-rs cache-aio, 1 task",
    );
    line(
        "hit_tput_c1_vs_redis_rs_get",
        t1_raw,
        "",
        None,
        "throughput, cacheobj local / redis-rs GET+decode, 1 task",
    );
    line(
        "local_miss_time_c1_vs_no_local",
        miss1,
        "<= 1.05",
        Some(miss1.median <= 1.05),
        "time per read, .local (full, missing) / without .local, 1 task",
    );
    line(
        "local_miss_time_c64_vs_no_local",
        miss64,
        "<= 1.05",
        Some(miss64.median <= 1.05),
        "time per read, .local (full, missing) / without .local, 64 tasks",
    );
    line(
        "local_kept_miss_time_c1_vs_no_local",
        kept1,
        "<= 1.05",
        Some(kept1.median <= 1.05),
        "time per read, .local (missing, kept) / without .local, 1 task",
    );
    line(
        "local_kept_miss_time_c64_vs_no_local",
        kept64,
        "<= 1.05",
        Some(kept64.median <= 1.05),
        "time per read, .local (missing, kept) / without .local, 64 tasks",
    );
    line(
        "insert_by_hand_time_c1_vs_no_local",
        insert1,
        "",
        None,
        "time per read, without .local + moka insert / without .local, 1 task: keeping's floor",
    );
    line(
        "insert_by_hand_time_c64_vs_no_local",
        insert64,
        "",
        None,
        "the same, 64 tasks",
    );
    line(
        "local_kept_miss_time_c64_vs_insert_by_hand",
        kept_vs_insert64,
        "",
        None,
        "time per read, .local (missing, kept) / without .local + moka insert, 64 tasks",
    );
    line(
        "redis_rs_get_pttl_vs_get_c1",
        pipe1,
        "",
        None,
        "time per read, redis-rs GET+PTTL pipelined / GET, 1 task: the PTTL's share",
    );
    line(
        "redis_rs_get_pttl_vs_get_c64",
        pipe64,
        "",
        None,
        "the same, 64 tasks",
    );
    line(
        "no_local_vs_redis_rs_get_c64",
        plain64,
        "",
        None,
        "throughput, cacheobj without .local / redis-rs GET, 64 tasks: MGET coalescing",
    );
    let mem_ratio = memory.cacheobj / memory.moka;
    println!(
        "ratio {:<34} {:>7.3}  ({:.0} vs {:.0} bytes per entry)  # memory per entry, cacheobj local / moka",
        "bytes_per_entry_vs_moka", mem_ratio, memory.cacheobj, memory.moka
    );
    println!(
        "bound {:<34} {:>7}  target <= {SCAN_CAPACITY} {}  # most entries held, sampled every {SCAN_SAMPLE} of {} keys",
        "local_len_max_during_scan",
        scan.max_len,
        if scan.held() { "met" } else { "MISSED" },
        scan.keys
    );
    println!(
        "zero  {:<34} {:>7}  target 0 {}  # Redis commands during the local-hit runs",
        "redis_commands_during_local_hits",
        local_hit_commands,
        if local_hit_commands == 0 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!("total time {:.1}s", started.elapsed().as_secs_f64());
    scan.held()
}

/// Allocations per operation over `n` sequential runs of `op` on ids `1..=HOT` (after a
/// warm-up).
async fn allocations_per<F, Fut>(n: u64, mut op: F) -> f64
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..n.min(1000) {
        op(1 + i % HOT).await;
    }
    start_measuring();
    for i in 0..n {
        op(1 + i % HOT).await;
    }
    let (_, allocations) = stop_measuring();
    allocations as f64 / n as f64
}

// ---------------------------------------------------------------------------------------------
// Memory per entry
// ---------------------------------------------------------------------------------------------

struct Memory {
    entries: u64,
    cacheobj: f64,
    moka: f64,
    /// The Item's own size: `size_of::<Item>()` and its heap blocks.
    item_bytes: usize,
    key_bytes: usize,
    secs: f64,
}

impl Memory {
    fn print(&self) {
        println!(
            "bytes_per_entry cacheobj_local {:.0} moka {:.0}  # net bytes allocated and live after \
             holding {} entries, / entries; the Item itself is {} bytes (size_of + heap), its key \
             {} bytes; {:.1}s",
            self.cacheobj, self.moka, self.entries, self.item_bytes, self.key_bytes, self.secs
        );
    }
}

/// Fetches ids `start..=end` of `strategy` from `workers` tasks, each taking every
/// `workers`-th id.
async fn read_through(
    env: &Arc<Env>,
    strategy: &'static Strategy<Item, ItemKey>,
    start: u64,
    end: u64,
    workers: u64,
) {
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let env = env.clone();
            tokio::spawn(async move {
                let mut id = start + w;
                while id <= end {
                    let v = env
                        .cache
                        .fetch(strategy, &ItemKey { item_id: id }, || unexpected_load(id))
                        .await
                        .expect("infallible");
                    std::hint::black_box(v);
                    id += workers;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a reading task panicked");
    }
}

fn item_bytes(v: &Item) -> usize {
    std::mem::size_of::<Item>()
        + v.name.capacity()
        + v.tags.capacity() * std::mem::size_of::<String>()
        + v.tags.iter().map(String::capacity).sum::<usize>()
}

/// Live bytes per entry of the local tier holding `n` entries (read from Redis, as a service
/// would fill it), and of moka holding the same values under the same keys.
async fn memory_per_entry(env: &Arc<Env>, admin: &mut MultiplexedConnection, n: u64) -> Memory {
    let started = Instant::now();
    // Id 0 registers the store and starts tracking its prefix before the count.
    fill(admin, 0..=n, |id| cacheobj_key("mem:", id)).await;
    hold_locally(&env.cache, &MEM, &[0], 1).await;

    start_measuring();
    read_through(env, &MEM, 1, n, 16).await;
    let held = env.cache.local_len(&MEM).saturating_sub(1);
    let (bytes, _) = stop_measuring();
    assert!(
        held >= n * 99 / 100,
        "the local tier kept only {held} of {n} entries; the figure would not be per entry"
    );
    let cacheobj = bytes as f64 / held as f64;

    let moka: moka::future::Cache<String, Item> = moka::future::Cache::new(1 << 20);
    // The keys and values are made while counting, as the local tier's are.
    start_measuring();
    for id in 1..=n {
        moka.insert(cacheobj_key("mem:", id), item(id)).await;
    }
    moka.run_pending_tasks().await;
    let (bytes, _) = stop_measuring();
    let moka_per = bytes as f64 / moka.entry_count() as f64;
    // Both measured: drop each only now.
    drop(moka);
    Memory {
        entries: held,
        cacheobj,
        moka: moka_per,
        item_bytes: item_bytes(&item(n)),
        key_bytes: cacheobj_key("mem:", n).len(),
        secs: started.elapsed().as_secs_f64(),
    }
}

// ---------------------------------------------------------------------------------------------
// The bound under a scan
// ---------------------------------------------------------------------------------------------

struct Scan {
    keys: u64,
    max_len: u64,
    samples: u64,
    fill_secs: f64,
    scan_secs: f64,
    local_hits: u64,
}

impl Scan {
    fn held(&self) -> bool {
        self.max_len <= SCAN_CAPACITY
    }

    fn print(&self) {
        println!(
            "scan: {} distinct keys read through .local({SCAN_CAPACITY}): local_len at most {} \
             over {} samples ({}); filled in {:.1}s, read in {:.1}s ({:.0} reads/s, 64 tasks), \
             {} local hits",
            self.keys,
            self.max_len,
            self.samples,
            if self.held() {
                "the bound held"
            } else {
                "THE BOUND WAS EXCEEDED"
            },
            self.fill_secs,
            self.scan_secs,
            self.keys as f64 / self.scan_secs,
            self.local_hits,
        );
    }
}

/// Reads `keys` distinct keys, each once, through a local tier bounded to
/// [`SCAN_CAPACITY`] entries, sampling its length every [`SCAN_SAMPLE`] keys.
async fn scan_bound(env: &Arc<Env>, admin: &mut MultiplexedConnection, keys: u64) -> Scan {
    let filling = Instant::now();
    fill(admin, 0..=keys, |id| cacheobj_key("scan:", id)).await;
    let fill_secs = filling.elapsed().as_secs_f64();
    hold_locally(&env.cache, &SCAN, &[0], 1).await;
    let hits_before = env.cache.stats().local_hits;

    let scanning = Instant::now();
    let mut max_len = 0;
    let mut samples = 0;
    let mut start = 1;
    while start <= keys {
        let end = (start + SCAN_SAMPLE - 1).min(keys);
        let workers = 64;
        read_through(env, &SCAN, start, end, workers).await;
        max_len = max_len.max(env.cache.local_len(&SCAN));
        samples += 1;
        start = end + 1;
    }
    Scan {
        keys,
        max_len,
        samples,
        fill_secs,
        scan_secs: scanning.elapsed().as_secs_f64(),
        local_hits: env.cache.stats().local_hits - hits_before,
    }
}
