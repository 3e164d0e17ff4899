//! No read predates an invalidation, checked against whole histories (#13): a read that starts
//! after an invalidation returned, in any process or `Cache`, never returns a value loaded
//! before it. Runs many `Cache` instances in one process (each has its own connection and
//! in-process flights, as a process would), and several processes (the test binary spawns
//! itself), on standalone Redis and the cluster, for obj, hash, counter, early refresh and
//! `fetch_many`; and pins the race that broke it with a deterministic interleaving.
//!
//! With local tiers on (#11; obj and counter strategies with `.local(..)`), a `Cache` hears of
//! another's invalidation a little after it returned: there, no read may be stale against its
//! own `Cache`'s writes, and a read stale against another's may lag that write by at most a
//! generous propagation bound. Every run ends with every `Cache` serving the last version of
//! every key.

mod support;

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cacheobj::{Cache, CacheConfig, CacheKey, Counter, Hash, Stats, Strategy, Written};
use serde::Serialize;
use support::history::{self, Event, Shared, StaleRead};

#[derive(Debug, Clone, Serialize, CacheKey)]
struct K {
    id: u64,
}

const ROW: Strategy<u64, K> = Strategy::<u64, K>::obj("hist:row:<id>").expire(60);
const HASHED: Strategy<u64, K, Hash> = Strategy::hash("hist:rows", "<id>").expire(60);
const COUNT: Strategy<i64, K, Counter> = Strategy::counter("hist:count:<id>").expire(60);
// Refreshes often: XFetch refreshes a hit with a 1 s TTL ~30 % of the time.
const HOT: Strategy<u64, K> = Strategy::<u64, K>::obj("hist:hot:<id>")
    .expire(1)
    .early_refresh(Duration::from_millis(800));
const ROW_LOCAL: Strategy<u64, K> = Strategy::<u64, K>::obj("hist:lrow:<id>")
    .expire(60)
    .local(100);
const COUNT_LOCAL: Strategy<i64, K, Counter> =
    Strategy::counter("hist:lcount:<id>").expire(60).local(100);

/// How long a read may lag another `Cache`'s completed write with local tiers on: generous,
/// the machine is shared (tests/local_staleness.rs measures the propagation itself).
const LAG_BOUND: Duration = Duration::from_secs(1);
/// How long every `Cache` may take to serve the last versions once the writes are done.
const SETTLE_BOUND: Duration = Duration::from_secs(2);

const KEYS: u64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Obj,
    Hash,
    Counter,
    EarlyRefresh,
    FetchMany,
    LocalObj,
    LocalCounter,
}

impl Shape {
    const ALL: [Shape; 5] = [
        Shape::Obj,
        Shape::Hash,
        Shape::Counter,
        Shape::EarlyRefresh,
        Shape::FetchMany,
    ];
    /// The shapes with a local tier.
    const LOCAL: [Shape; 2] = [Shape::LocalObj, Shape::LocalCounter];

    fn name(self) -> &'static str {
        match self {
            Shape::Obj => "obj",
            Shape::Hash => "hash",
            Shape::Counter => "counter",
            Shape::EarlyRefresh => "early_refresh",
            Shape::FetchMany => "fetch_many",
            Shape::LocalObj => "local_obj",
            Shape::LocalCounter => "local_counter",
        }
    }

    fn is_local(self) -> bool {
        Shape::LOCAL.contains(&self)
    }

    fn is_counter(self) -> bool {
        matches!(self, Shape::Counter | Shape::LocalCounter)
    }

    fn parse(s: &str) -> Shape {
        Shape::ALL
            .into_iter()
            .chain(Shape::LOCAL)
            .find(|k| k.name() == s)
            .unwrap_or_else(|| panic!("unknown shape {s:?}"))
    }

    /// Percent of operations that write. Early refresh needs entries that live long enough
    /// to be refreshed; a local tier, copies that live long enough to be served.
    fn write_percent(self) -> u8 {
        match self {
            Shape::EarlyRefresh => 3,
            Shape::LocalObj | Shape::LocalCounter => 5,
            _ => 20,
        }
    }
}

/// One run's work: `tasks` tasks over `caches`, `ops` operations in all.
struct Workload {
    shape: Shape,
    caches: Vec<Cache>,
    shared: Shared,
    tasks: usize,
    ops: usize,
    /// Counter writes are a plain `set_counter` (last writer wins), so each key has one writer,
    /// serialized: `(this process's index, processes)`; key `k` is written by process
    /// `k % processes`.
    writer: (u64, u64),
    /// The id of `caches[0]` in the history (`caches[i]` is `first_cache + i`).
    first_cache: u64,
}

/// Writes row `id` and invalidates (or sets) its entry: the version written, or `None` when
/// the cache said its part did not land (Redis slow on a loaded machine), so the history does
/// not count it as an invalidation that returned.
async fn write(w: &Workload, cache: &Cache, id: u64, lock: &tokio::sync::Mutex<()>) -> Option<u64> {
    let shared = w.shared.clone();
    let key = K { id };
    let bump = || async move { Ok::<_, Infallible>(shared.bump(id).await) };
    // The write itself cannot fail here: what matters is whether its invalidation landed.
    let landed = |w: Result<Written<u64>, Infallible>| {
        let w = w.unwrap_or_else(|e| match e {});
        w.is_invalidated().then(|| w.into_value())
    };
    match w.shape {
        Shape::Obj | Shape::FetchMany => landed(cache.invalidate_after(&ROW, &key, bump).await),
        Shape::EarlyRefresh => landed(cache.invalidate_after(&HOT, &key, bump).await),
        Shape::Hash => landed(cache.invalidate_after(&HASHED, &key, bump).await),
        Shape::LocalObj => landed(cache.invalidate_after(&ROW_LOCAL, &key, bump).await),
        Shape::Counter | Shape::LocalCounter => {
            let strategy = if w.shape == Shape::Counter {
                &COUNT
            } else {
                &COUNT_LOCAL
            };
            let _serial = lock.lock().await;
            let version = w.shared.bump(id).await;
            // Retried (it is idempotent) so that Redis ends on the database's version: a
            // failed set would leave the counter behind it until the next write.
            for _ in 0..5 {
                if cache
                    .set_counter(strategy, &key, version as i64)
                    .await
                    .is_ok()
                {
                    return Some(version);
                }
            }
            None
        }
    }
}

/// Reads `ids`, returning the version read for each.
async fn read(w: &Workload, cache: &Cache, ids: &[u64]) -> Vec<u64> {
    let shared = w.shared.clone();
    let load = |id: u64| {
        let shared = shared.clone();
        move || async move {
            let v = shared.get(id).await;
            history::think().await;
            Ok::<_, Infallible>(v)
        }
    };
    let one = |v: Result<u64, Infallible>| vec![v.unwrap_or_else(|e| match e {})];
    match w.shape {
        Shape::Obj => one(cache.fetch(&ROW, &K { id: ids[0] }, load(ids[0])).await),
        Shape::EarlyRefresh => one(cache.fetch(&HOT, &K { id: ids[0] }, load(ids[0])).await),
        Shape::Hash => one(cache.fetch(&HASHED, &K { id: ids[0] }, load(ids[0])).await),
        Shape::LocalObj => one(cache
            .fetch(&ROW_LOCAL, &K { id: ids[0] }, load(ids[0]))
            .await),
        Shape::Counter | Shape::LocalCounter => {
            let id = ids[0];
            let shared = shared.clone();
            let strategy = if w.shape == Shape::Counter {
                &COUNT
            } else {
                &COUNT_LOCAL
            };
            let v = cache
                .fetch(strategy, &K { id }, || async move {
                    let v = shared.get(id).await as i64;
                    history::think().await;
                    Ok::<_, Infallible>(v)
                })
                .await
                .unwrap_or_else(|e| match e {});
            vec![v as u64]
        }
        Shape::FetchMany => {
            let keys: Vec<K> = ids.iter().map(|&id| K { id }).collect();
            cache
                .fetch_many(&ROW, &keys, |missing: Vec<K>| async move {
                    let mut out = Vec::with_capacity(missing.len());
                    for k in &missing {
                        out.push(shared.get(k.id).await);
                    }
                    history::think().await;
                    Ok::<_, cacheobj::Error>(out)
                })
                .await
                .unwrap_or_else(|e| panic!("fetch_many: {e}"))
        }
    }
}

async fn run(w: Arc<Workload>) -> Vec<Event> {
    let locks: Arc<Vec<tokio::sync::Mutex<()>>> =
        Arc::new((0..KEYS).map(|_| tokio::sync::Mutex::new(())).collect());
    let per_task = w.ops / w.tasks;
    let tasks: Vec<_> = (0..w.tasks)
        .map(|t| {
            let w = w.clone();
            let locks = locks.clone();
            tokio::spawn(async move {
                let index = t % w.caches.len();
                let cache = w.caches[index].clone();
                let cache_id = w.first_cache + index as u64;
                let mut events = Vec::with_capacity(per_task * 2);
                for _ in 0..per_task {
                    let id = fastrand::u64(0..KEYS);
                    let (me, writers) = w.writer;
                    let may_write = !w.shape.is_counter() || id % writers == me;
                    if may_write && fastrand::u8(0..100) < w.shape.write_percent() {
                        let Some(version) = write(&w, &cache, id, &locks[id as usize]).await else {
                            continue;
                        };
                        let at_ns = history::now_ns();
                        let returned = w.shared.tick().await;
                        events.push(Event::Write {
                            cache: cache_id,
                            key: id,
                            version,
                            returned,
                            at_ns,
                        });
                    } else {
                        let ids: Vec<u64> = if w.shape == Shape::FetchMany {
                            (0..3).map(|_| fastrand::u64(0..KEYS)).collect()
                        } else {
                            vec![id]
                        };
                        let started = w.shared.tick().await;
                        let at_ns = history::now_ns();
                        let versions = read(&w, &cache, &ids).await;
                        for (&key, version) in ids.iter().zip(versions) {
                            events.push(Event::Read {
                                cache: cache_id,
                                key,
                                started,
                                version,
                                at_ns,
                            });
                        }
                    }
                }
                events
            })
        })
        .collect();
    let mut events = Vec::new();
    for t in tasks {
        events.extend(t.await.expect("workload task"));
    }
    events
}

/// The counters the histories print, summed over `caches`.
fn sum_stats(caches: &[Cache]) -> Stats {
    let mut total = Stats::default();
    for c in caches {
        add_stats(&mut total, &c.stats());
    }
    total
}

fn add_stats(total: &mut Stats, s: &Stats) {
    total.hits += s.hits;
    total.misses += s.misses;
    total.loads += s.loads;
    total.errors += s.errors;
    total.coalesced_waits += s.coalesced_waits;
    total.stale_fills_rejected += s.stale_fills_rejected;
    total.voided_joins += s.voided_joins;
    total.early_refreshes += s.early_refreshes;
    total.local_hits += s.local_hits;
    total.local_misses += s.local_misses;
    total.local_invalidations += s.local_invalidations;
    total.local_flushes += s.local_flushes;
}

/// [`add_stats`]'s fields as a line of a worker's output, and back.
fn stats_line(s: &Stats) -> String {
    let n = [
        s.hits,
        s.misses,
        s.loads,
        s.errors,
        s.coalesced_waits,
        s.stale_fills_rejected,
        s.voided_joins,
        s.early_refreshes,
        s.local_hits,
        s.local_misses,
        s.local_invalidations,
        s.local_flushes,
    ];
    let n: Vec<String> = n.iter().map(u64::to_string).collect();
    format!("S {}", n.join(" "))
}

fn parse_stats(rest: &str) -> Stats {
    let n: Vec<u64> = rest.split(' ').map(|x| x.parse().expect("stat")).collect();
    let mut s = Stats::default();
    s.hits = n[0];
    s.misses = n[1];
    s.loads = n[2];
    s.errors = n[3];
    s.coalesced_waits = n[4];
    s.stale_fills_rejected = n[5];
    s.voided_joins = n[6];
    s.early_refreshes = n[7];
    s.local_hits = n[8];
    s.local_misses = n[9];
    s.local_invalidations = n[10];
    s.local_flushes = n[11];
    s
}

/// Once the writes are done: reads through every `Cache` until each serves the database's
/// version of every key, up to [`SETTLE_BOUND`]. Returns how long that took.
async fn settle(label: &str, w: &Workload) -> Duration {
    let started = std::time::Instant::now();
    for (i, cache) in w.caches.iter().enumerate() {
        for id in 0..KEYS {
            let want = w.shared.get(id).await;
            loop {
                let got = read(w, cache, &[id]).await[0];
                if got == want {
                    break;
                }
                assert!(
                    started.elapsed() < SETTLE_BOUND,
                    "{label}: cache {} still serves version {got} of key {id} (the database \
                     holds {want}) {SETTLE_BOUND:?} after the writes ended",
                    w.first_cache + i as u64
                );
                tokio::task::yield_now().await;
            }
        }
    }
    started.elapsed()
}

async fn connect(backend: &str, prefix: &str) -> Cache {
    let builder = CacheConfig::builder()
        .prefix(prefix.to_string())
        .response_timeout(Duration::from_secs(2));
    let config = match backend {
        "redis" => builder.url(support::redis_url()).build(),
        "cluster" => builder.nodes(support::cluster_nodes()).build(),
        other => panic!("unknown backend {other:?}"),
    };
    let cache = Cache::connect(config)
        .await
        .unwrap_or_else(|e| panic!("{backend}: connect: {e}"));
    cache
        .ping()
        .await
        .unwrap_or_else(|e| panic!("{backend}: ping: {e}"));
    cache
}

/// Checks a run's history. Without a local tier no read is stale. With one, no read is stale
/// against its own `Cache`'s writes, and a read stale against another's lags it by less than
/// [`LAG_BOUND`]; and the tier served some reads. `settled`: how long every `Cache` took to
/// serve the last versions.
fn assert_history(label: &str, shape: Shape, events: &[Event], stats: &Stats, settled: Duration) {
    let report = history::check(events);
    let own = report.own();
    let (l50, l99, lmax) = report.lags();
    println!(
        "history {label}: {} reads checked, {} writes, {} stale reads: {} against the reading \
         cache's own writes, {} against another cache's only, lag after that write \
         completed p50 {l50:?} p99 {l99:?} max {lmax:?}; local hits {} of {} fetches; \
         local invalidations {}, flushes {}; loads {}, coalesced waits {}, stale fills \
         rejected {}, voided joins {}, early refreshes {}, errors {}; every cache served the \
         last versions {settled:?} after the writes ended",
        report.reads,
        report.writes,
        report.stale.len(),
        own.len(),
        report.stale.len() - own.len(),
        stats.local_hits,
        stats.local_hits + stats.local_misses,
        stats.local_invalidations,
        stats.local_flushes,
        stats.loads,
        stats.coalesced_waits,
        stats.stale_fills_rejected,
        stats.voided_joins,
        stats.early_refreshes,
        stats.errors,
    );
    assert!(report.reads > 1000, "{label}: too few reads to tell");
    assert!(report.writes > 50, "{label}: too few writes to tell");
    let first = |stale: Vec<&StaleRead>| -> Vec<String> {
        stale.iter().take(5).map(|s| s.what.clone()).collect()
    };
    if shape.is_local() {
        assert!(
            own.is_empty(),
            "{label}: {} reads stale against their own cache's writes, e.g. {:?}",
            own.len(),
            first(own.clone())
        );
        assert!(
            lmax < LAG_BOUND,
            "{label}: a read lagged another cache's write by {lmax:?}, past {LAG_BOUND:?}: \
             {:?}",
            report
                .stale
                .iter()
                .filter(|s| s.lag >= LAG_BOUND)
                .take(5)
                .map(|s| &s.what)
                .collect::<Vec<_>>()
        );
        assert!(
            stats.local_hits > 0,
            "{label}: the local tier served nothing: {stats:?}"
        );
    } else {
        assert!(
            report.stale.is_empty(),
            "{label}: {} stale reads, e.g. {:?}",
            report.stale.len(),
            first(report.stale.iter().collect())
        );
    }
    // A timeout on a loaded machine fails open (the fetch loads, which is fresh) or leaves a
    // write out of the history: harmless here, but many would mean a broken setup.
    assert!(
        stats.errors * 100 <= report.reads as u64,
        "{label}: cache errors in more than 1 % of reads: {stats:?}"
    );
}

/// Six `Cache` instances on one server, 48 tasks over 4 keys, 12,000 operations, for each
/// of `shapes`; the clock and the "database" are atomics of this process.
async fn six_caches(backend: &str, shapes: &[Shape]) {
    for &shape in shapes {
        let prefix = support::unique_prefix(&format!("history_{backend}_{}", shape.name()));
        let mut caches = Vec::new();
        for _ in 0..6 {
            caches.push(connect(backend, &prefix).await);
        }
        let w = Arc::new(Workload {
            shape,
            caches: caches.clone(),
            shared: Shared::local(KEYS),
            tasks: 48,
            ops: 12_000,
            writer: (0, 1),
            first_cache: 0,
        });
        let label = format!("{backend} x6 caches {}", shape.name());
        let events = run(w.clone()).await;
        let settled = settle(&label, &w).await;
        let stats = sum_stats(&caches);
        assert_history(&label, shape, &events, &stats, settled);
        if shape == Shape::EarlyRefresh {
            assert!(stats.early_refreshes > 0, "no early refresh ran: {stats:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_caches_on_one_redis_never_read_before_an_invalidation() {
    six_caches("redis", &Shape::ALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_caches_on_the_cluster_never_read_before_an_invalidation() {
    six_caches("cluster", &Shape::ALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_caches_with_local_tiers_on_one_redis_lag_only_behind_other_caches() {
    six_caches("redis", &Shape::LOCAL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_caches_with_local_tiers_on_the_cluster_lag_only_behind_other_caches() {
    six_caches("cluster", &Shape::LOCAL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_embedded_cache_never_reads_before_an_invalidation() {
    for shape in Shape::ALL {
        let (cache, _) = support::memory_cache("history_memory");
        let w = Arc::new(Workload {
            shape,
            caches: vec![cache.clone()],
            shared: Shared::local(KEYS),
            tasks: 48,
            ops: 12_000,
            writer: (0, 1),
            first_cache: 0,
        });
        let label = format!("memory {}", shape.name());
        let events = run(w.clone()).await;
        let settled = settle(&label, &w).await;
        assert_history(&label, shape, &events, &sum_stats(&[cache]), settled);
    }
}

// --- several processes -------------------------------------------------------------------

const WORKER_PREFIX: &str = "CACHEOBJ_HISTORY_PREFIX";
const WORKER_BACKEND: &str = "CACHEOBJ_HISTORY_BACKEND";
const WORKER_SHAPE: &str = "CACHEOBJ_HISTORY_SHAPE";
const WORKER_INDEX: &str = "CACHEOBJ_HISTORY_INDEX";
const WORKER_COUNT: &str = "CACHEOBJ_HISTORY_PROCESSES";
const WORKER_OUT: &str = "CACHEOBJ_HISTORY_OUT";
const PROCESSES: u64 = 4;

/// Pops one element of the list `key`, waiting for it to be pushed (BLPOP, woken by the push;
/// each call blocks 100 ms at most, under the connection's response timeout) until `limit`.
async fn pop(key: &str, limit: Duration, what: &str) {
    let mut conn = support::raw_conn().await;
    let deadline = std::time::Instant::now() + limit;
    loop {
        let got: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(key)
            .arg(0.1)
            .query_async(&mut conn)
            .await
            .expect("BLPOP");
        if got.is_some() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} within {limit:?}"
        );
    }
}

async fn push(key: &str, n: u64) {
    let mut conn = support::raw_conn().await;
    let _: i64 = redis::cmd("RPUSH")
        .arg(key)
        .arg(vec![1; n as usize])
        .query_async(&mut conn)
        .await
        .expect("RPUSH");
}

/// One process's share of a multi-process run: two `Cache`s, 12 tasks, 3,000 operations,
/// with the clock and rows in the shared Redis. Spawned by `four_processes`, it starts when
/// the parent says go, says when its operations are done, and once every worker's are (the
/// parent says settle) reads until its `Cache`s serve the last versions; then writes its
/// events to a file. Run alone, it checks its own history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_worker() {
    let spawned = std::env::var(WORKER_PREFIX).ok();
    let prefix = spawned
        .clone()
        .unwrap_or_else(|| support::unique_prefix("history_worker"));
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let backend = env(WORKER_BACKEND, "redis");
    let shape = Shape::parse(&env(WORKER_SHAPE, "obj"));
    let index: u64 = env(WORKER_INDEX, "0").parse().expect("index");
    let processes: u64 = env(WORKER_COUNT, "1").parse().expect("process count");
    let caches = vec![
        connect(&backend, &prefix).await,
        connect(&backend, &prefix).await,
    ];
    let shared = Shared::redis(&support::redis_url(), &prefix).await;
    if spawned.is_some() {
        // Start together: say we are ready, then wait for the parent's go.
        push(&format!("{prefix}ready"), 1).await;
        pop(
            &format!("{prefix}go"),
            Duration::from_secs(60),
            "the parent says go",
        )
        .await;
    }
    let w_ops = 3_000;
    let w = Arc::new(Workload {
        shape,
        caches: caches.clone(),
        shared,
        tasks: 12,
        ops: w_ops,
        writer: (index, processes),
        first_cache: index * 2,
    });
    let events = run(w.clone()).await;
    let label = format!("worker {index} {backend} {}", shape.name());
    if spawned.is_some() {
        // Settle once nobody writes any more.
        push(&format!("{prefix}done"), 1).await;
        pop(
            &format!("{prefix}settle"),
            Duration::from_secs(60),
            "the parent says settle",
        )
        .await;
    }
    let settled = settle(&label, &w).await;
    let stats = sum_stats(&caches);
    assert!(
        stats.errors * 100 <= w_ops as u64,
        "worker {index}: cache errors in more than 1 % of operations: {stats:?}"
    );
    match std::env::var(WORKER_OUT) {
        Ok(path) if spawned.is_some() => {
            let mut text: String = events.iter().map(|e| e.to_line() + "\n").collect();
            text.push_str(&stats_line(&stats));
            text.push_str(&format!("\nQ {}\n", settled.as_micros()));
            std::fs::write(&path, text).expect("write the worker's history");
        }
        _ => assert_history(
            &format!("one worker {backend} {}", shape.name()),
            shape,
            &events,
            &stats,
            settled,
        ),
    }
}

/// Four processes, two `Cache`s each, share one Redis (or the cluster); their merged history
/// has no stale read (with local tiers: none against a read's own `Cache`, and bounded lags
/// behind the others), and every `Cache` ends on the last versions.
async fn four_processes(backend: &str, shape: Shape) {
    let prefix = support::unique_prefix(&format!("history_procs_{backend}_{}", shape.name()));
    let exe = std::env::current_exe().expect("test binary path");
    let dir = std::env::temp_dir();
    let outs: Vec<PathBuf> = (0..PROCESSES)
        .map(|i| {
            dir.join(format!(
                "cacheobj-history-{}-{}-{i}.txt",
                std::process::id(),
                prefix.replace(':', "_")
            ))
        })
        .collect();
    let children: Vec<_> = outs
        .iter()
        .enumerate()
        .map(|(i, out)| {
            Command::new(&exe)
                .args(["history_worker", "--exact", "--nocapture"])
                .env(WORKER_PREFIX, &prefix)
                .env(WORKER_BACKEND, backend)
                .env(WORKER_SHAPE, shape.name())
                .env(WORKER_INDEX, i.to_string())
                .env(WORKER_COUNT, PROCESSES.to_string())
                .env(WORKER_OUT, out)
                .spawn()
                .expect("spawn a worker process")
        })
        .collect();
    for _ in 0..PROCESSES {
        pop(
            &format!("{prefix}ready"),
            Duration::from_secs(120),
            "every worker gets ready",
        )
        .await;
    }
    push(&format!("{prefix}go"), PROCESSES).await;
    for _ in 0..PROCESSES {
        pop(
            &format!("{prefix}done"),
            Duration::from_secs(120),
            "every worker's operations end",
        )
        .await;
    }
    push(&format!("{prefix}settle"), PROCESSES).await;
    for mut child in children {
        let status = child.wait().expect("worker exit");
        assert!(status.success(), "a worker process failed: {status}");
    }
    let mut events = Vec::new();
    let mut stats = Stats::default();
    let mut settled = Duration::ZERO;
    for out in &outs {
        let text = std::fs::read_to_string(out).expect("read a worker's history");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("S ") {
                add_stats(&mut stats, &parse_stats(rest));
            } else if let Some(rest) = line.strip_prefix("Q ") {
                let us: u64 = rest.parse().expect("settle time");
                settled = settled.max(Duration::from_micros(us));
            } else {
                events.push(Event::from_line(line).expect("an event line"));
            }
        }
        let _ = std::fs::remove_file(out);
    }
    assert_history(
        &format!("{backend} 4 processes x2 caches {}", shape.name()),
        shape,
        &events,
        &stats,
        settled,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_never_read_before_an_invalidation() {
    for shape in [Shape::Obj, Shape::Hash, Shape::Counter, Shape::FetchMany] {
        four_processes("redis", shape).await;
    }
    four_processes("cluster", Shape::Obj).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_with_local_tiers_lag_only_behind_other_caches() {
    for shape in Shape::LOCAL {
        four_processes("redis", shape).await;
    }
    four_processes("cluster", Shape::LocalObj).await;
}

// --- the race, pinned --------------------------------------------------------------------

/// The interleaving of #13: `a` leads a load; `b` (another process, as far as `a` can tell)
/// writes and invalidates; a fetch on `a` starts after that and joins `a`'s load; the loader
/// returns the version it read before the write. The late fetch must not get it: it loads
/// again. A fetch that joined before the invalidation (its read saw the lease) overlapped it,
/// and may get the old version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_joins_a_load_voided_by_another_cache_loads_again() {
    let (a, prefix) = support::redis_cache("voided_join").await;
    let b = connect("redis", &prefix).await;
    let db = Shared::local(1);
    let key = K { id: 0 };

    let (loading_tx, loading_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let leader = {
        let (a, db) = (a.clone(), db.clone());
        tokio::spawn(async move {
            a.fetch(&ROW, &K { id: 0 }, || async move {
                let v = db.get(0).await;
                let _ = loading_tx.send(());
                let _ = go_rx.await;
                Ok::<_, Infallible>(v)
            })
            .await
        })
    };
    loading_rx.await.expect("the leader loads");
    // Joins before the invalidation: its read sees a's lease.
    let early = {
        let a = a.clone();
        tokio::spawn(async move {
            a.fetch(&ROW, &K { id: 0 }, || async { Ok::<_, Infallible>(99) })
                .await
        })
    };
    support::wait_until("the early fetch joins", Duration::from_secs(10), || {
        a.stats().coalesced_waits >= 1
    })
    .await;

    // b writes version 1 and invalidates: a's lease is gone.
    let db_b = db.clone();
    let written = b
        .invalidate_after(&ROW, &key, || async move {
            Ok::<_, Infallible>(db_b.bump(0).await)
        })
        .await
        .unwrap_or_else(|e| match e {});
    assert!(written.is_invalidated(), "{:?}", written.invalidation());
    assert_eq!(written.into_value(), 1);

    // Starts after the invalidation returned, and joins a's load.
    let late = {
        let (a, db) = (a.clone(), db.clone());
        tokio::spawn(async move {
            a.fetch(&ROW, &K { id: 0 }, || async move {
                Ok::<_, Infallible>(db.get(0).await)
            })
            .await
        })
    };
    support::wait_until("the late fetch joins", Duration::from_secs(10), || {
        a.stats().coalesced_waits >= 2
    })
    .await;
    go_tx.send(()).expect("the loader waits");

    assert_eq!(
        leader.await.expect("task").expect("infallible"),
        0,
        "the leader's own fetch overlapped the write"
    );
    assert_eq!(
        early.await.expect("task").expect("infallible"),
        0,
        "the early fetch overlapped the write: either version will do, and it had the old"
    );
    assert_eq!(
        late.await.expect("task").expect("infallible"),
        1,
        "a fetch that started after the invalidation got the voided load's value"
    );
    let stats = a.stats();
    assert_eq!(stats.loads, 2, "one extra load, for the race: {stats:?}");
    assert_eq!(stats.voided_joins, 1, "{stats:?}");
    assert_eq!(stats.stale_fills_rejected, 1, "{stats:?}");
    // The reload filled under its own lease.
    let cached = b
        .fetch(&ROW, &key, || async { Ok::<_, Infallible>(u64::MAX) })
        .await
        .expect("infallible");
    assert_eq!(cached, 1);
}

/// Without a race nothing is loaded twice: fetches that join a load in flight (their reads
/// see the leader's lease) take its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_joins_an_unraced_load_takes_its_value() {
    let (a, _) = support::redis_cache("unraced_join").await;
    let (loading_tx, loading_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let leader = {
        let a = a.clone();
        tokio::spawn(async move {
            a.fetch(&ROW, &K { id: 0 }, || async move {
                let _ = loading_tx.send(());
                let _ = go_rx.await;
                Ok::<_, Infallible>(7)
            })
            .await
        })
    };
    loading_rx.await.expect("the leader loads");
    let joiners: Vec<_> = (0..5)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move {
                a.fetch(&ROW, &K { id: 0 }, || async { Ok::<_, Infallible>(99) })
                    .await
            })
        })
        .collect();
    support::wait_until("five fetches join", Duration::from_secs(10), || {
        a.stats().coalesced_waits >= 5
    })
    .await;
    go_tx.send(()).expect("the loader waits");
    assert_eq!(leader.await.expect("task").expect("infallible"), 7);
    for j in joiners {
        assert_eq!(j.await.expect("task").expect("infallible"), 7);
    }
    let stats = a.stats();
    assert_eq!((stats.loads, stats.voided_joins), (1, 0), "{stats:?}");
}
