//! No read predates an invalidation, checked against whole histories (#13): a read that starts
//! after an invalidation returned, in any process or `Cache`, never returns a value loaded
//! before it. Runs many `Cache` instances in one process (each has its own connection and
//! in-process flights, as a process would), and several processes (the test binary spawns
//! itself), on standalone Redis and the cluster, for obj, hash, counter, early refresh and
//! `fetch_many`; and pins the race that broke it with a deterministic interleaving.

mod support;

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cacheobj::{Cache, CacheConfig, CacheKey, Counter, Hash, Stats, Strategy, Written};
use serde::Serialize;
use support::history::{self, Event, Shared};

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

const KEYS: u64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Obj,
    Hash,
    Counter,
    EarlyRefresh,
    FetchMany,
}

impl Shape {
    const ALL: [Shape; 5] = [
        Shape::Obj,
        Shape::Hash,
        Shape::Counter,
        Shape::EarlyRefresh,
        Shape::FetchMany,
    ];

    fn name(self) -> &'static str {
        match self {
            Shape::Obj => "obj",
            Shape::Hash => "hash",
            Shape::Counter => "counter",
            Shape::EarlyRefresh => "early_refresh",
            Shape::FetchMany => "fetch_many",
        }
    }

    fn parse(s: &str) -> Shape {
        Shape::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .unwrap_or_else(|| panic!("unknown shape {s:?}"))
    }

    /// Percent of operations that write. Early refresh needs entries that live long enough
    /// to be refreshed.
    fn write_percent(self) -> u8 {
        match self {
            Shape::EarlyRefresh => 3,
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
        Shape::Counter => {
            let _serial = lock.lock().await;
            let version = w.shared.bump(id).await;
            cache
                .set_counter(&COUNT, &key, version as i64)
                .await
                .ok()
                .map(|()| version)
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
        Shape::Counter => {
            let id = ids[0];
            let shared = shared.clone();
            let v = cache
                .fetch(&COUNT, &K { id }, || async move {
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
                let cache = w.caches[t % w.caches.len()].clone();
                let mut events = Vec::with_capacity(per_task * 2);
                for _ in 0..per_task {
                    let id = fastrand::u64(0..KEYS);
                    let (me, writers) = w.writer;
                    let may_write = w.shape != Shape::Counter || id % writers == me;
                    if may_write && fastrand::u8(0..100) < w.shape.write_percent() {
                        let Some(version) = write(&w, &cache, id, &locks[id as usize]).await else {
                            continue;
                        };
                        let returned = w.shared.tick().await;
                        events.push(Event::Write {
                            key: id,
                            version,
                            returned,
                        });
                    } else {
                        let ids: Vec<u64> = if w.shape == Shape::FetchMany {
                            (0..3).map(|_| fastrand::u64(0..KEYS)).collect()
                        } else {
                            vec![id]
                        };
                        let started = w.shared.tick().await;
                        let versions = read(&w, &cache, &ids).await;
                        for (&key, version) in ids.iter().zip(versions) {
                            events.push(Event::Read {
                                key,
                                started,
                                version,
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

fn sum_stats(caches: &[Cache]) -> Stats {
    let mut total = Stats::default();
    for c in caches {
        let s = c.stats();
        total.loads += s.loads;
        total.errors += s.errors;
        total.coalesced_waits += s.coalesced_waits;
        total.stale_fills_rejected += s.stale_fills_rejected;
        total.voided_joins += s.voided_joins;
        total.early_refreshes += s.early_refreshes;
    }
    total
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

fn assert_fresh(label: &str, events: &[Event], stats: &Stats) {
    let report = history::check(events);
    println!(
        "history {label}: {} reads checked, {} writes, {} stale reads; loads {}, coalesced waits \
         {}, stale fills rejected {}, voided joins {}, early refreshes {}, errors {}",
        report.reads,
        report.writes,
        report.stale.len(),
        stats.loads,
        stats.coalesced_waits,
        stats.stale_fills_rejected,
        stats.voided_joins,
        stats.early_refreshes,
        stats.errors,
    );
    assert!(report.reads > 1000, "{label}: too few reads to tell");
    assert!(report.writes > 50, "{label}: too few writes to tell");
    assert!(
        report.stale.is_empty(),
        "{label}: {} stale reads, e.g. {:?}",
        report.stale.len(),
        &report.stale[..report.stale.len().min(5)]
    );
    // A timeout on a loaded machine fails open (the fetch loads, which is fresh) or leaves a
    // write out of the history: harmless here, but many would mean a broken setup.
    assert!(
        stats.errors * 100 <= report.reads as u64,
        "{label}: cache errors in more than 1 % of reads: {stats:?}"
    );
}

/// Six `Cache` instances on one server, 48 tasks over 4 keys, 12,000 operations, for each
/// shape; the clock and the "database" are atomics of this process.
async fn six_caches(backend: &str) {
    for shape in Shape::ALL {
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
        });
        let events = run(w).await;
        let stats = sum_stats(&caches);
        assert_fresh(
            &format!("{backend} x6 caches {}", shape.name()),
            &events,
            &stats,
        );
        if shape == Shape::EarlyRefresh {
            assert!(stats.early_refreshes > 0, "no early refresh ran: {stats:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_caches_on_one_redis_never_read_before_an_invalidation() {
    six_caches("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_caches_on_the_cluster_never_read_before_an_invalidation() {
    six_caches("cluster").await;
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
        });
        let events = run(w).await;
        assert_fresh(
            &format!("memory {}", shape.name()),
            &events,
            &sum_stats(&[cache]),
        );
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
/// with the clock and rows in the shared Redis. Spawned by
/// `four_processes_never_read_before_an_invalidation`, it starts when the parent says go and
/// writes its events to a file; run alone, it checks its own history.
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
    });
    let events = run(w).await;
    let stats = sum_stats(&caches);
    assert!(
        stats.errors * 100 <= w_ops as u64,
        "worker {index}: cache errors in more than 1 % of operations: {stats:?}"
    );
    match std::env::var(WORKER_OUT) {
        Ok(path) if spawned.is_some() => {
            let mut text: String = events.iter().map(|e| e.to_line() + "\n").collect();
            text.push_str(&format!(
                "S {} {} {} {}\n",
                stats.loads, stats.coalesced_waits, stats.stale_fills_rejected, stats.voided_joins
            ));
            std::fs::write(&path, text).expect("write the worker's history");
        }
        _ => assert_fresh(
            &format!("one worker {backend} {}", shape.name()),
            &events,
            &stats,
        ),
    }
}

/// Four processes, two `Cache`s each, share one Redis (or the cluster); their merged history
/// has no stale read.
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
    for mut child in children {
        let status = child.wait().expect("worker exit");
        assert!(status.success(), "a worker process failed: {status}");
    }
    let mut events = Vec::new();
    let mut stats = Stats::default();
    for out in &outs {
        let text = std::fs::read_to_string(out).expect("read a worker's history");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("S ") {
                let n: Vec<u64> = rest.split(' ').map(|x| x.parse().expect("stat")).collect();
                stats.loads += n[0];
                stats.coalesced_waits += n[1];
                stats.stale_fills_rejected += n[2];
                stats.voided_joins += n[3];
            } else {
                events.push(Event::from_line(line).expect("an event line"));
            }
        }
        let _ = std::fs::remove_file(out);
    }
    assert_fresh(
        &format!("{backend} 4 processes x2 caches {}", shape.name()),
        &events,
        &stats,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_never_read_before_an_invalidation() {
    for shape in [Shape::Obj, Shape::Hash, Shape::Counter, Shape::FetchMany] {
        four_processes("redis", shape).await;
    }
    four_processes("cluster", Shape::Obj).await;
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
