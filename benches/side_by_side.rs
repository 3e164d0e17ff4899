//! cacheobj side by side with hand-written redis-rs, the `cached` crate's async Redis store,
//! moka, and `redis-benchmark`, in one run against one throwaway `redis-server`.
//!
//! ```text
//! bash scripts/bench.sh                # on a fresh machine: installs redis-server, then:
//! cargo bench --bench side_by_side
//! BENCH_ROUNDS=9 BENCH_RUN_MS=600 cargo bench --bench side_by_side
//! ```
//!
//! It starts its own `redis-server` on a free loopback port (`$CACHEOBJ_REDIS_SERVER`, else
//! `redis-server` on PATH; never the machine's Redis) and kills it at the end. Every contender
//! runs for `BENCH_RUN_MS` (default 250 ms) in each of `BENCH_ROUNDS` rounds (default 21); the
//! order of the contenders rotates from round to round. The table prints medians across rounds.
//! Each `ratio` line is the median of per-round ratios: the contenders of a round run next to
//! each other, so a ratio compares them under the same machine load, and the median drops the
//! rounds that a burst of other work on the shared machine skewed. The tokio runtime has 2
//! worker threads; the server shares the machine.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{fmt_dur, median, Ratio};

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::RedisServer;

use cached::{AsyncRedisCache, ConcurrentCachedAsync};
use cacheobj::Cache;
use cacheobj_strategies::{Item, ItemKey, ITEM};
use redis::aio::ConnectionManager;

// ---------------------------------------------------------------------------------------------
// Counting allocator: counts only while `COUNTING` is on, so the other measurements pay one
// relaxed load of a never-written flag per allocation and nothing else.
// ---------------------------------------------------------------------------------------------

struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

#[inline]
fn count_allocation() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

// ---------------------------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------------------------

/// cacheobj's key prefix; the hand-written contender formats the same keys itself.
const PREFIX: &str = "bench:";
/// Pre-filled items, ids `1..=HOT`: the hit paths cycle over them, fetch_many reads them all.
const HOT: u64 = 1000;
/// TTL of the hand-written and `cached` fills, as ITEM's `expire(86400)`.
const TTL_SECS: u64 = 86400;
/// Memory-backend operations are timed in batches of this many (one pair of clock reads per
/// batch), so the clock does not dominate sub-microsecond operations.
const MEMORY_BATCH: u64 = 16;
/// Sequential hits per allocation count.
const ALLOC_HITS: u64 = 10_000;

fn item(id: u64) -> Item {
    Item {
        id,
        name: format!("item #{id}"),
    }
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

/// Everything the contenders use, shared by all tasks.
struct Env {
    /// cacheobj on Redis.
    cache: Cache,
    /// cacheobj on the embedded backend.
    memory: Cache,
    /// Hand-written redis-rs: the same kind of connection cacheobj uses.
    raw: ConnectionManager,
    /// The `cached` crate's async Redis store (connection manager on).
    cached: AsyncRedisCache<u64, Item>,
    moka: moka::future::Cache<ItemKey, Item>,
    hot_keys: Vec<ItemKey>,
}

fn raw_key(id: u64) -> String {
    format!("{PREFIX}item:{id}")
}

/// Loads that cacheobj's hit paths must never run; counted and reported.
static UNEXPECTED_LOADS: AtomicU64 = AtomicU64::new(0);

async fn unexpected_load(id: u64) -> Result<Item, Infallible> {
    UNEXPECTED_LOADS.fetch_add(1, Ordering::Relaxed);
    Ok(item(id))
}

/// Empties the server and fills the hot items for each Redis contender.
async fn refill(env: &Env) {
    let mut conn = env.raw.clone();
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut conn)
        .await
        .expect("FLUSHDB");
    for key in &env.hot_keys {
        let id = key.item_id;
        env.cache
            .fetch(&ITEM, key, || async move { Ok::<_, Infallible>(item(id)) })
            .await
            .expect("infallible");
        let _ = env
            .cached
            .async_cache_set(id, item(id))
            .await
            .expect("cached: cache_set");
    }
}

// ---------------------------------------------------------------------------------------------
// Contenders and runs
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    HitCacheobj,
    HitRaw,
    HitCached,
    MissCacheobj,
    MissRaw,
    MissCached,
    ManyFetchMany,
    ManySequential,
    ManyMget,
    MemoryCacheobj,
    MemoryMoka,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::HitCacheobj | Op::MissCacheobj => "cacheobj fetch",
            Op::HitRaw => "redis-rs GET+decode",
            Op::MissRaw => "redis-rs GET miss+SET EX",
            Op::HitCached => "cached async_cache_get",
            Op::MissCached => "cached get miss+set",
            Op::ManyFetchMany => "cacheobj fetch_many(1000)",
            Op::ManySequential => "cacheobj 1000x fetch",
            Op::ManyMget => "redis-rs MGET 1000+decode",
            Op::MemoryCacheobj => "cacheobj in_memory fetch",
            Op::MemoryMoka => "moka::future get",
        }
    }

    /// Operations timed per clock sample.
    fn per_sample(self) -> u64 {
        match self {
            Op::MemoryCacheobj | Op::MemoryMoka => MEMORY_BATCH,
            _ => 1,
        }
    }
}

/// One group of contenders compared at one concurrency.
struct Scenario {
    name: &'static str,
    conc: usize,
    ops: &'static [Op],
    /// What one operation is, for the table.
    unit: &'static str,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "hit",
        conc: 1,
        ops: &[Op::HitCacheobj, Op::HitRaw, Op::HitCached],
        unit: "get",
    },
    Scenario {
        name: "hit",
        conc: 64,
        ops: &[Op::HitCacheobj, Op::HitRaw, Op::HitCached],
        unit: "get",
    },
    Scenario {
        name: "miss+fill",
        conc: 1,
        ops: &[Op::MissCacheobj, Op::MissRaw, Op::MissCached],
        unit: "get",
    },
    Scenario {
        name: "miss+fill",
        conc: 64,
        ops: &[Op::MissCacheobj, Op::MissRaw, Op::MissCached],
        unit: "get",
    },
    Scenario {
        name: "1000 keys",
        conc: 1,
        ops: &[Op::ManyFetchMany, Op::ManySequential, Op::ManyMget],
        unit: "batch",
    },
    Scenario {
        name: "memory hit",
        conc: 1,
        ops: &[Op::MemoryCacheobj, Op::MemoryMoka],
        unit: "get",
    },
];

/// One contender's run: per-operation latencies and wall time.
struct RunStats {
    ops_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

impl RunStats {
    fn new(mut samples: Vec<u64>, per_sample: u64, elapsed: Duration) -> RunStats {
        assert!(!samples.is_empty(), "a run completed no operation");
        samples.sort_unstable();
        let at = |q: f64| {
            let ns = samples[((samples.len() - 1) as f64 * q).round() as usize];
            Duration::from_nanos(ns / per_sample)
        };
        RunStats {
            ops_per_sec: (samples.len() as u64 * per_sample) as f64 / elapsed.as_secs_f64(),
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

/// Runs `op` in `conc` tasks until `dur` has passed.
async fn run(env: &Arc<Env>, op: Op, conc: usize, dur: Duration, run_id: u64) -> RunStats {
    let start = Instant::now();
    let deadline = start + dur;
    let tasks: Vec<_> = (0..conc as u64)
        .map(|task| tokio::spawn(worker(env.clone(), op, task, deadline, run_id)))
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.expect("a benchmark task panicked"));
    }
    RunStats::new(samples, op.per_sample(), start.elapsed())
}

/// One task's loop: returns nanoseconds per clock sample.
// The batch contenders do not use the cycle counter `timed!` advances.
#[allow(unused_assignments)]
async fn worker(env: Arc<Env>, op: Op, task: u64, deadline: Instant, run_id: u64) -> Vec<u64> {
    let mut samples: Vec<u64> = Vec::with_capacity(1 << 14);
    let mut conn = env.raw.clone();
    // Hot keys: each task starts somewhere else in the cycle. Fresh keys: disjoint per run and
    // per task, never seen before.
    let mut i: u64 = task.wrapping_mul(7919);
    let fresh_base = (run_id << 40) | (task << 28);
    let hot = |i: u64| env.hot_keys[(i % HOT) as usize];

    macro_rules! timed {
        ($body:block) => {
            loop {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                for _ in 0..op.per_sample() {
                    $body
                    i += 1;
                }
                samples.push(t0.elapsed().as_nanos() as u64);
            }
        };
    }

    match op {
        Op::HitCacheobj => timed!({
            let key = hot(i);
            let v = env
                .cache
                .fetch(&ITEM, &key, || unexpected_load(key.item_id))
                .await
                .expect("infallible");
            debug_assert_eq!(v.id, key.item_id);
        }),
        Op::HitRaw => timed!({
            let id = hot(i).item_id;
            let bytes: Option<Vec<u8>> = redis::cmd("GET")
                .arg(raw_key(id))
                .query_async(&mut conn)
                .await
                .expect("GET");
            let v: Item =
                rmp_serde::from_slice(&bytes.expect("raw hit path missed")).expect("decode");
            debug_assert_eq!(v.id, id);
        }),
        Op::HitCached => timed!({
            let id = hot(i).item_id;
            let v = env
                .cached
                .async_cache_get(&id)
                .await
                .expect("cached: cache_get")
                .expect("cached hit path missed");
            debug_assert_eq!(v.id, id);
        }),
        Op::MissCacheobj => timed!({
            let id = fresh_base + i;
            let v = env
                .cache
                .fetch(&ITEM, &ItemKey { item_id: id }, || async move {
                    Ok::<_, Infallible>(item(id))
                })
                .await
                .expect("infallible");
            debug_assert_eq!(v.id, id);
        }),
        Op::MissRaw => timed!({
            let id = fresh_base + i;
            let key = raw_key(id);
            let bytes: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("GET");
            assert!(bytes.is_none(), "raw miss path hit");
            let v = item(id);
            let encoded = rmp_serde::to_vec_named(&v).expect("encode");
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(encoded)
                .arg("EX")
                .arg(TTL_SECS)
                .query_async(&mut conn)
                .await
                .expect("SET EX");
        }),
        Op::MissCached => timed!({
            let id = fresh_base + i;
            let got = env.cached.async_cache_get(&id).await.expect("cached: get");
            assert!(got.is_none(), "cached miss path hit");
            let _ = env
                .cached
                .async_cache_set(id, item(id))
                .await
                .expect("cached: set");
        }),
        Op::ManyFetchMany => timed!({
            let values = env
                .cache
                .fetch_many(&ITEM, &env.hot_keys, |missing: Vec<ItemKey>| async move {
                    UNEXPECTED_LOADS.fetch_add(missing.len() as u64, Ordering::Relaxed);
                    Ok::<_, cacheobj::Error>(missing.iter().map(|k| item(k.item_id)).collect())
                })
                .await
                .expect("fetch_many");
            assert_eq!(values.len(), HOT as usize);
        }),
        Op::ManySequential => timed!({
            let mut values = Vec::with_capacity(HOT as usize);
            for key in &env.hot_keys {
                let v = env
                    .cache
                    .fetch(&ITEM, key, || unexpected_load(key.item_id))
                    .await
                    .expect("infallible");
                values.push(v);
            }
            assert_eq!(values.len(), HOT as usize);
        }),
        Op::ManyMget => timed!({
            let keys: Vec<String> = env.hot_keys.iter().map(|k| raw_key(k.item_id)).collect();
            let replies: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("MGET");
            let values: Vec<Item> = replies
                .iter()
                .map(|b| rmp_serde::from_slice(b.as_deref().expect("MGET missed")).expect("decode"))
                .collect();
            assert_eq!(values.len(), HOT as usize);
        }),
        Op::MemoryCacheobj => timed!({
            let key = hot(i);
            let v = env
                .memory
                .fetch(&ITEM, &key, || unexpected_load(key.item_id))
                .await
                .expect("infallible");
            std::hint::black_box(v);
        }),
        Op::MemoryMoka => timed!({
            let key = hot(i);
            let v = env.moka.get(&key).await.expect("moka missed");
            std::hint::black_box(v);
        }),
    }
    samples
}

// ---------------------------------------------------------------------------------------------
// redis-benchmark, sizes and allocations
// ---------------------------------------------------------------------------------------------

/// `redis-benchmark` beside `$CACHEOBJ_REDIS_SERVER`, else on PATH.
fn redis_benchmark_binary() -> PathBuf {
    if let Some(server) = std::env::var_os("CACHEOBJ_REDIS_SERVER").filter(|s| !s.is_empty()) {
        let beside = std::path::Path::new(&server).with_file_name("redis-benchmark");
        if beside.exists() {
            return beside;
        }
    }
    "redis-benchmark".into()
}

/// Runs `redis-benchmark ... -q` and returns its requests per second; `None` when the binary
/// is missing.
fn redis_benchmark(port: u16, extra: &[&str]) -> Option<f64> {
    let bin = redis_benchmark_binary();
    let output = match Command::new(&bin)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "get", "-n", "200000"])
        .args(extra)
        .arg("-q")
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot run {}: {e}", bin.display()),
    };
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "redis-benchmark failed ({}): {text}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // `-q` prints progress lines ending in '\r', then "GET: 123456.78 requests per second, ...".
    let line = text
        .split(['\r', '\n'])
        .rfind(|l| l.contains("requests per second"))
        .unwrap_or_else(|| panic!("no requests/s in redis-benchmark output: {text:?}"));
    let number = line
        .split_once(':')
        .map(|(_, rest)| rest.trim_start())
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse redis-benchmark line {line:?}"));
    Some(number)
}

/// Allocations per operation over `n` sequential runs of `op` (after a warm-up).
async fn allocations_per<F, Fut>(n: u64, mut op: F) -> f64
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..n.min(1000) {
        op(i).await;
    }
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for i in 0..n {
        op(i).await;
    }
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCATIONS.load(Ordering::SeqCst) as f64 / n as f64
}

/// Medians across rounds of one contender at one concurrency.
struct Summary {
    ops_per_sec: f64,
    min_ops: f64,
    max_ops: f64,
    p50: Duration,
    p99: Duration,
}

fn summarize(runs: &[RunStats]) -> Summary {
    let ops: Vec<f64> = runs.iter().map(|r| r.ops_per_sec).collect();
    let secs = |f: fn(&RunStats) -> Duration| {
        Duration::from_secs_f64(median(runs.iter().map(|r| f(r).as_secs_f64()).collect()))
    };
    Summary {
        ops_per_sec: median(ops.clone()),
        min_ops: ops.iter().copied().fold(f64::INFINITY, f64::min),
        max_ops: ops.iter().copied().fold(0.0, f64::max),
        p50: secs(|r| r.p50),
        p99: secs(|r| r.p99),
    }
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    let rounds = env_number("BENCH_ROUNDS", 21).max(1);
    let run_ms = env_number("BENCH_RUN_MS", 250).max(10);
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(bench(&server, rounds, Duration::from_millis(run_ms)));
    drop(runtime);
    drop(server); // kills the redis-server and removes its directory
}

async fn bench(server: &RedisServer, rounds: u64, run_for: Duration) {
    let started = Instant::now();
    let url = server.url();
    let version: String = {
        let client = redis::Client::open(url.as_str()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .expect("INFO");
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string()
    };
    println!(
        "side_by_side: redis-server {version} on 127.0.0.1:{} (throwaway), tokio 2 workers, \
         {} cores, {rounds} rounds x {} ms per contender, medians across rounds",
        server.port,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        run_for.as_millis()
    );

    let cache = common::bench_cache(server.port, PREFIX).await;
    let raw = redis::Client::open(url.as_str())
        .expect("url")
        .get_connection_manager()
        .await
        .expect("redis-rs ConnectionManager");
    let cached = AsyncRedisCache::<u64, Item>::builder("items")
        .connection_string(&url)
        .connection_manager(true)
        .ttl_secs(TTL_SECS)
        .build()
        .await
        .expect("cached: AsyncRedisCache");
    let memory = Cache::in_memory();
    let moka = moka::future::Cache::new(10_000);
    let hot_keys: Vec<ItemKey> = (1..=HOT).map(|item_id| ItemKey { item_id }).collect();
    for key in &hot_keys {
        let id = key.item_id;
        memory
            .fetch(&ITEM, key, || async move { Ok::<_, Infallible>(item(id)) })
            .await
            .expect("infallible");
        moka.insert(*key, item(id)).await;
    }
    assert_eq!(
        cache.entry_key(&ITEM, &hot_keys[0]).expect("renders").key,
        raw_key(1).as_bytes(),
        "the hand-written key must be cacheobj's"
    );
    let env = Arc::new(Env {
        cache,
        memory,
        raw,
        cached,
        moka,
        hot_keys,
    });

    // Warm-up: every contender once, results dropped.
    refill(&env).await;
    let mut run_id = 0;
    for s in SCENARIOS {
        for &op in s.ops {
            run_id += 1;
            run(&env, op, s.conc, run_for / 3, run_id).await;
        }
    }

    // Rounds, the contenders of each scenario in a rotating order.
    let mut results: HashMap<(Op, usize), Vec<RunStats>> = HashMap::new();
    let loads_before = UNEXPECTED_LOADS.load(Ordering::Relaxed);
    let stats_before = env.cache.stats();
    for round in 0..rounds {
        refill(&env).await;
        for s in SCENARIOS {
            let mut order = s.ops.to_vec();
            let shift = round as usize % order.len();
            order.rotate_left(shift);
            for op in order {
                run_id += 1;
                let stats = run(&env, op, s.conc, run_for, run_id).await;
                results.entry((op, s.conc)).or_default().push(stats);
            }
        }
    }
    let unexpected = UNEXPECTED_LOADS.load(Ordering::Relaxed) - loads_before;
    let stats_after = env.cache.stats();

    // The server's own ceiling, on an equally sized value under redis-benchmark's key.
    let mut conn = env.raw.clone();
    let item_bytes = rmp_serde::to_vec_named(&item(1)).expect("encode");
    let _: () = redis::cmd("SET")
        .arg("key:__rand_int__")
        .arg(&item_bytes)
        .query_async(&mut conn)
        .await
        .expect("SET");
    let rb_pipelined = redis_benchmark(server.port, &["-c", "64", "-P", "16"]);
    let rb_c1 = redis_benchmark(server.port, &["-c", "1"]);

    // Size of one cached Item.
    refill(&env).await;
    let strlen: u64 = redis::cmd("STRLEN")
        .arg(raw_key(1))
        .query_async(&mut conn)
        .await
        .expect("STRLEN");
    let usage: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(raw_key(1))
        .query_async(&mut conn)
        .await
        .expect("MEMORY USAGE");
    // The `cached` store's key of item 1 ends in ":items:1" (namespace:prefix:key).
    let cached_key: Option<String> = redis::cmd("KEYS")
        .arg("*items*")
        .query_async::<Vec<String>>(&mut conn)
        .await
        .expect("KEYS")
        .into_iter()
        .find(|k| k.ends_with(":items:1"));
    let cached_strlen: Option<u64> = match &cached_key {
        Some(k) => redis::cmd("STRLEN")
            .arg(k)
            .query_async(&mut conn)
            .await
            .ok(),
        None => None,
    };

    // Allocations per sequential hit.
    let alloc_memory = allocations_per(ALLOC_HITS, |i| {
        let env = &env;
        async move {
            let key = env.hot_keys[(i % HOT) as usize];
            let v = env
                .memory
                .fetch(&ITEM, &key, || unexpected_load(key.item_id))
                .await
                .expect("infallible");
            std::hint::black_box(v);
        }
    })
    .await;
    let alloc_redis = allocations_per(ALLOC_HITS, |i| {
        let env = &env;
        async move {
            let key = env.hot_keys[(i % HOT) as usize];
            let v = env
                .cache
                .fetch(&ITEM, &key, || unexpected_load(key.item_id))
                .await
                .expect("infallible");
            std::hint::black_box(v);
        }
    })
    .await;
    let alloc_raw = allocations_per(ALLOC_HITS, |i| {
        let mut conn = env.raw.clone();
        let id = env.hot_keys[(i % HOT) as usize].item_id;
        async move {
            let bytes: Option<Vec<u8>> = redis::cmd("GET")
                .arg(raw_key(id))
                .query_async(&mut conn)
                .await
                .expect("GET");
            let v: Item = rmp_serde::from_slice(&bytes.expect("hit")).expect("decode");
            std::hint::black_box(v);
        }
    })
    .await;
    let alloc_cached = allocations_per(ALLOC_HITS, |i| {
        let env = &env;
        async move {
            let id = env.hot_keys[(i % HOT) as usize].item_id;
            let v = env.cached.async_cache_get(&id).await.expect("cached get");
            std::hint::black_box(v.expect("hit"));
        }
    })
    .await;
    let alloc_moka = allocations_per(ALLOC_HITS, |i| {
        let env = &env;
        async move {
            let key = env.hot_keys[(i % HOT) as usize];
            std::hint::black_box(env.moka.get(&key).await.expect("hit"));
        }
    })
    .await;

    // ---- report ----
    let summaries: HashMap<(Op, usize), Summary> =
        results.iter().map(|(k, v)| (*k, summarize(v))).collect();
    println!();
    println!(
        "{:<11} {:>4}  {:<27} {:>13} {:>23} {:>9} {:>9}",
        "scenario", "conc", "contender", "ops/s", "(min..max over rounds)", "p50", "p99"
    );
    for s in SCENARIOS {
        for &op in s.ops {
            let m = &summaries[&(op, s.conc)];
            println!(
                "{:<11} {:>4}  {:<27} {:>13.0} {:>23} {:>9} {:>9}",
                s.name,
                s.conc,
                op.label(),
                m.ops_per_sec,
                format!("({:.0}..{:.0})", m.min_ops, m.max_ops),
                fmt_dur(m.p50),
                fmt_dur(m.p99),
            );
        }
        if s.unit == "batch" {
            println!(
                "{:<11} {:>4}  (ops/s above are batches of {HOT} keys per second)",
                "", ""
            );
        }
    }
    println!(
        "{:<11} {:>4}  (memory rows: latency is the mean of a batch of {MEMORY_BATCH} timed together)",
        "", ""
    );
    match (rb_pipelined, rb_c1) {
        (Some(p), Some(c1)) => {
            println!("redis-benchmark -t get -n 200000 -c 64 -P 16: {p:.0} requests/s");
            println!("redis-benchmark -t get -n 200000 -c 1:        {c1:.0} requests/s");
        }
        _ => println!(
            "redis-benchmark not found (looked for {}): server ceiling skipped",
            redis_benchmark_binary().display()
        ),
    }
    println!(
        "cacheobj stats during the rounds: hits {} misses {} errors {}; loads on hit paths: {unexpected}",
        stats_after.hits - stats_before.hits,
        stats_after.misses - stats_before.misses,
        stats_after.errors - stats_before.errors,
    );
    if unexpected > 0 || stats_after.errors > stats_before.errors {
        println!(
            "WARNING: a hit path ran its loader or failed open; its figures are not pure hits"
        );
    }

    // Per-round ratios of two contenders (`a` over `b`), as a median and a range.
    let per_round = |a: (Op, usize), b: (Op, usize), f: fn(&RunStats) -> f64| -> Ratio {
        Ratio::over(
            results[&a]
                .iter()
                .zip(&results[&b])
                .map(|(x, y)| f(x) / f(y))
                .collect(),
        )
    };
    let ops = |op: Op, conc: usize| (op, conc);
    let tput_of = |r: &RunStats| r.ops_per_sec;
    let p50_of = |r: &RunStats| r.p50.as_secs_f64();
    println!();
    println!(
        "# ratio lines: cacheobj / other, the median of {rounds} per-round ratios [min..max]."
    );
    println!("# Throughput ratios: > 1 means cacheobj is faster. Latency and time ratios: < 1");
    println!("# means cacheobj is faster (each line says which).");
    let ratio = |name: &str, r: Ratio, meaning: &str| {
        println!(
            "ratio {name} {:.3}  # [{:.3}..{:.3}] {meaning}",
            r.median, r.min, r.max
        );
    };
    let tput = "throughput ratio, higher is better";
    ratio(
        "hit_c1_vs_raw",
        per_round(ops(Op::HitCacheobj, 1), ops(Op::HitRaw, 1), tput_of),
        tput,
    );
    ratio(
        "hit_c1_vs_cached",
        per_round(ops(Op::HitCacheobj, 1), ops(Op::HitCached, 1), tput_of),
        tput,
    );
    ratio(
        "hit_c64_vs_raw",
        per_round(ops(Op::HitCacheobj, 64), ops(Op::HitRaw, 64), tput_of),
        tput,
    );
    ratio(
        "hit_c64_vs_cached",
        per_round(ops(Op::HitCacheobj, 64), ops(Op::HitCached, 64), tput_of),
        tput,
    );
    if let Some(p) = rb_pipelined {
        ratio(
            "hit_c64_vs_redis_benchmark_pipelined",
            Ratio::against(summaries[&(Op::HitCacheobj, 64)].ops_per_sec, p),
            "throughput ratio against the server's pipelined ceiling",
        );
    }
    if let Some(c1) = rb_c1 {
        ratio(
            "hit_c1_vs_redis_benchmark_c1",
            Ratio::against(summaries[&(Op::HitCacheobj, 1)].ops_per_sec, c1),
            "throughput ratio against redis-benchmark with 1 client, no pipelining",
        );
    }
    ratio(
        "lone_fetch_p50_vs_raw",
        per_round(ops(Op::HitCacheobj, 1), ops(Op::HitRaw, 1), p50_of),
        "latency ratio, lower is better",
    );
    ratio(
        "miss_c1_vs_raw",
        per_round(ops(Op::MissCacheobj, 1), ops(Op::MissRaw, 1), tput_of),
        tput,
    );
    ratio(
        "miss_c1_vs_cached",
        per_round(ops(Op::MissCacheobj, 1), ops(Op::MissCached, 1), tput_of),
        tput,
    );
    ratio(
        "miss_c64_vs_raw",
        per_round(ops(Op::MissCacheobj, 64), ops(Op::MissRaw, 64), tput_of),
        tput,
    );
    ratio(
        "fetch_many_1000_vs_sequential",
        per_round(
            ops(Op::ManyFetchMany, 1),
            ops(Op::ManySequential, 1),
            tput_of,
        ),
        "throughput ratio (speed-up), higher is better",
    );
    ratio(
        "fetch_many_1000_vs_mget",
        per_round(ops(Op::ManyFetchMany, 1), ops(Op::ManyMget, 1), tput_of),
        tput,
    );
    ratio(
        "memory_hit_vs_moka",
        per_round(ops(Op::MemoryMoka, 1), ops(Op::MemoryCacheobj, 1), tput_of),
        "time per hit ratio, lower is better",
    );
    println!(
        "bytes_per_item_in_redis {strlen}  # STRLEN of {}; MEMORY USAGE {} bytes with key and overhead; \
         the cached crate stores {} bytes for the same Item",
        raw_key(1),
        usage.map_or("?".to_string(), |u| u.to_string()),
        cached_strlen.map_or("?".to_string(), |u| u.to_string()),
    );
    println!(
        "allocations_per_hit memory {alloc_memory:.2}  # cacheobj fetch hit, in_memory backend, mean over {ALLOC_HITS}"
    );
    println!(
        "allocations_per_hit redis {alloc_redis:.2}  # cacheobj fetch hit on Redis, connection task included"
    );
    println!(
        "allocations_per_hit raw_redis_rs {alloc_raw:.2}  # baseline: GET + rmp_serde::from_slice"
    );
    println!("allocations_per_hit cached {alloc_cached:.2}  # baseline: cached async_cache_get");
    println!("allocations_per_hit moka {alloc_moka:.2}  # baseline: moka::future get");
    println!("total time {:.1}s", started.elapsed().as_secs_f64());
}
