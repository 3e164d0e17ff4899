//! How long a local tier (#11) serves a value after another process invalidated it.
//!
//! Four reader processes (the test binary spawns itself), each with one `Cache`, read 8 hot
//! keys of a strategy with a local tier in a loop (a task per key, each read paced at 1 ms),
//! while the parent writes a row and invalidates its entry (`invalidate_after`) 1,000 times:
//! in rounds that write every key once, each round waiting until every reader said (through
//! a Redis list) that it served each new version. Rounds are ordered by those
//! acknowledgements, never by sleeps.
//!
//! Three figures per write, the worst over the readers:
//! - *stale*: from the writer's `invalidate_after` returning to the start of the last read
//!   that still returned an older version (0 when none started after it returned);
//! - *served*: from the same moment to the end of the first read that returned the new
//!   version (or a newer one) for good: the push, then the reload, and for all but the
//!   reader that takes the fill lease, its wait for the fill;
//! - *acked*: from the same moment to the writer receiving the last acknowledgement, on the
//!   writer's monotonic clock: an upper bound of *served*, plus a list push and pop.
//!
//! Readers record each change of the version they serve with the wall clock (`SystemTime`:
//! every process is on this host), the writer the moment its invalidation returned. The
//! figures are printed (p50/p99/max) and bounded generously (the machine is shared); the
//! readers must serve most fetches from the local tier, and every reader must end on the last
//! values.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cacheobj::{Cache, CacheConfig, CacheKey, Strategy};
use serde::Serialize;
use support::history::Shared;

#[derive(Debug, Clone, Serialize, CacheKey)]
struct K {
    id: u64,
}

const HOT: Strategy<u64, K> = Strategy::<u64, K>::obj("staleness:hot:<id>")
    .expire(60)
    .local(100);

const KEYS: u64 = 8;
const READERS: u64 = 4;
const WRITES: usize = 1_000;
/// Past this, a write's propagation fails the test: generous, the machine is shared.
const BOUND: Duration = Duration::from_secs(2);
/// How long a reader may take to get every key into its local tier, and the parent to wait
/// for the readers to start.
const START: Duration = Duration::from_secs(60);
/// Each reading task reads its key once a millisecond (tokio's timer granularity): the
/// workload's pace, as `history::think` is the history's, so that four readers and the writer
/// share two cores without starving Redis. It bounds the figures' resolution; nothing waits on
/// it to order events.
const READ_EVERY: Duration = Duration::from_millis(1);

const ENV_PREFIX: &str = "CACHEOBJ_STALENESS_PREFIX";
const ENV_INDEX: &str = "CACHEOBJ_STALENESS_INDEX";
const ENV_OUT: &str = "CACHEOBJ_STALENESS_OUT";

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

async fn connect(prefix: &str) -> Cache {
    let config = CacheConfig::builder()
        .url(support::redis_url())
        .prefix(prefix.to_string())
        .response_timeout(Duration::from_secs(2))
        .build();
    let cache = Cache::connect(config).await.expect("connect");
    cache.ping().await.expect("ping");
    cache
}

/// Pops one element of the list `key`, waiting for a push (BLPOP, 100 ms a call, under the
/// connection's response timeout) up to `limit`.
async fn pop(conn: &mut redis::aio::MultiplexedConnection, key: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let got: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(key)
            .arg(0.1)
            .query_async(conn)
            .await
            .expect("BLPOP");
        if let Some((_, value)) = got {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "nothing pushed to {key} within {limit:?}"
        );
    }
}

async fn push(conn: &mut redis::aio::MultiplexedConnection, key: &str, value: &str) {
    let _: i64 = redis::cmd("RPUSH")
        .arg(key)
        .arg(value)
        .query_async(conn)
        .await
        .expect("RPUSH");
}

async fn fetch(cache: &Cache, db: &Shared, id: u64) -> u64 {
    let db = db.clone();
    cache
        .fetch(&HOT, &K { id }, || async move {
            Ok::<_, Infallible>(db.get(id).await)
        })
        .await
        .unwrap_or_else(|e| match e {})
}

/// A change of the version one reader serves for a key.
#[derive(Debug, Clone, Copy)]
struct Change {
    key: u64,
    version: u64,
    /// When the first read that returned `version` returned (wall clock, ns).
    at: u64,
    /// When the last read that returned the previous version started (0 for the first).
    prev_start: u64,
}

/// What one reader did.
#[derive(Debug, Default)]
struct ReaderReport {
    /// Per key, in order.
    changes: Vec<Change>,
    fetches: u64,
    local_hits: u64,
    local_misses: u64,
    local_invalidations: u64,
    local_flushes: u64,
    loads: u64,
    load_micros: u64,
    lease_waits: u64,
    /// `(key, version served, database version)` once the writer stopped, and how long the
    /// reader took to serve the database's version of every key.
    last: Vec<(u64, u64, u64)>,
    settle: Duration,
}

impl ReaderReport {
    fn to_text(&self) -> String {
        let mut text = String::new();
        for c in &self.changes {
            text.push_str(&format!(
                "C {} {} {} {}\n",
                c.key, c.version, c.at, c.prev_start
            ));
        }
        for (k, v, db) in &self.last {
            text.push_str(&format!("L {k} {v} {db}\n"));
        }
        text.push_str(&format!(
            "S {} {} {} {} {} {} {} {} {}\n",
            self.fetches,
            self.local_hits,
            self.local_misses,
            self.local_invalidations,
            self.local_flushes,
            self.settle.as_micros(),
            self.loads,
            self.load_micros,
            self.lease_waits
        ));
        text
    }

    fn from_text(text: &str) -> ReaderReport {
        let mut r = ReaderReport::default();
        for line in text.lines() {
            let mut parts = line.split(' ');
            let tag = parts.next().expect("a tag");
            let n: Vec<u64> = parts.map(|x| x.parse().expect("a number")).collect();
            match tag {
                "C" => r.changes.push(Change {
                    key: n[0],
                    version: n[1],
                    at: n[2],
                    prev_start: n[3],
                }),
                "L" => r.last.push((n[0], n[1], n[2])),
                "S" => {
                    r.fetches = n[0];
                    r.local_hits = n[1];
                    r.local_misses = n[2];
                    r.local_invalidations = n[3];
                    r.local_flushes = n[4];
                    r.settle = Duration::from_micros(n[5]);
                    r.loads = n[6];
                    r.load_micros = n[7];
                    r.lease_waits = n[8];
                }
                other => panic!("unknown line {other:?}"),
            }
        }
        r
    }
}

/// One key's reading task: reads `id` in a loop until `stop`; each time it first serves a
/// newer version it pushes `"{index} {id} {version}"` to `acks`. Returns the changes of the
/// version it served, and how many fetches it made.
async fn read_key(
    cache: Cache,
    db: Shared,
    mut conn: redis::aio::MultiplexedConnection,
    acks: String,
    index: u64,
    id: u64,
    stop: Arc<AtomicBool>,
) -> (Vec<Change>, u64) {
    let mut changes = Vec::new();
    let mut fetches = 0;
    let (mut served, mut newest, mut last_start) = (None, 0, 0);
    let mut pace = tokio::time::interval(READ_EVERY);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::SeqCst) {
        pace.tick().await;
        let start = now_ns();
        let v = fetch(&cache, &db, id).await;
        let at = now_ns();
        fetches += 1;
        if served != Some(v) {
            served = Some(v);
            changes.push(Change {
                key: id,
                version: v,
                at,
                prev_start: last_start,
            });
        }
        last_start = start;
        if v > newest {
            newest = v;
            push(&mut conn, &acks, &format!("{index} {id} {v}")).await;
        }
    }
    (changes, fetches)
}

/// One reader: gets every key into its local tier, says it is ready, then reads each key in
/// its own task (as a server's requests would) until `{prefix}stop:{index}` is pushed. Then
/// it reads until it serves the database's version of every key.
async fn reader(prefix: &str, index: u64) -> ReaderReport {
    let cache = connect(prefix).await;
    let db = Shared::redis(&support::redis_url(), prefix).await;
    let mut conn = support::raw_conn().await;
    let mut report = ReaderReport::default();

    let deadline = Instant::now() + START;
    while cache.local_len(&HOT) < KEYS {
        for id in 0..KEYS {
            fetch(&cache, &db, id).await;
        }
        assert!(
            Instant::now() < deadline,
            "reader {index}: the local tier did not hold every key within {START:?}: {:?}",
            cache.stats()
        );
        tokio::task::yield_now().await;
    }
    let before = cache.stats();

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, key) = (stop.clone(), format!("{prefix}stop:{index}"));
        tokio::spawn(async move {
            let mut conn = support::raw_conn().await;
            pop(&mut conn, &key, Duration::from_secs(300)).await;
            stop.store(true, Ordering::SeqCst);
        })
    };
    let tasks: Vec<_> = (0..KEYS)
        .map(|id| {
            tokio::spawn(read_key(
                cache.clone(),
                db.clone(),
                conn.clone(),
                format!("{prefix}acks"),
                index,
                id,
                stop.clone(),
            ))
        })
        .collect();
    push(&mut conn, &format!("{prefix}ready"), &index.to_string()).await;
    for t in tasks {
        let (changes, fetches) = t.await.expect("a reading task");
        report.changes.extend(changes);
        report.fetches += fetches;
    }
    watcher.await.expect("the stop watcher");
    let stats = cache.stats();
    report.local_hits = stats.local_hits - before.local_hits;
    report.local_misses = stats.local_misses - before.local_misses;
    report.local_invalidations = stats.local_invalidations - before.local_invalidations;
    report.local_flushes = stats.local_flushes - before.local_flushes;
    report.loads = stats.loads - before.loads;
    report.load_micros = stats.load_micros - before.load_micros;
    report.lease_waits = stats.lease_waits - before.lease_waits;

    // The writer is done, and every reader acknowledged its last writes: every key must
    // come to (it should be at) its last version, bounded.
    let started = Instant::now();
    for id in 0..KEYS {
        let want = db.get(id).await;
        let mut got = fetch(&cache, &db, id).await;
        while got != want && started.elapsed() < BOUND {
            tokio::task::yield_now().await;
            got = fetch(&cache, &db, id).await;
        }
        report.last.push((id, got, want));
    }
    report.settle = started.elapsed();
    report
}

/// One write: its key and version, when its invalidation returned (wall clock, ns), and how
/// long until the last reader acknowledged the version (the writer's monotonic clock).
struct WriteRecord {
    key: u64,
    version: u64,
    returned_ns: u64,
    acked: Duration,
}

/// A write whose acknowledgements are awaited.
struct Open {
    version: u64,
    returned: Instant,
    returned_ns: u64,
    pending: Vec<bool>,
}

/// Makes `writes` writes in rounds: each round writes (and invalidates) every key once, in a
/// random order, then waits until each of `readers` acknowledged every one.
async fn writer(prefix: &str, readers: u64, writes: usize) -> Vec<WriteRecord> {
    let cache = connect(prefix).await;
    let db = Shared::redis(&support::redis_url(), prefix).await;
    let mut conn = support::raw_conn().await;
    let ready = format!("{prefix}ready");
    for _ in 0..readers {
        pop(&mut conn, &ready, START).await;
    }
    let acks = format!("{prefix}acks");
    let mut records = Vec::with_capacity(writes);
    while records.len() < writes {
        let mut ids: Vec<u64> = (0..KEYS).collect();
        fastrand::shuffle(&mut ids);
        ids.truncate(writes - records.len());
        let mut open: HashMap<u64, Open> = HashMap::new();
        for id in ids {
            let db = db.clone();
            let written = cache
                .invalidate_after(&HOT, &K { id }, || async move {
                    Ok::<_, Infallible>(db.bump(id).await)
                })
                .await
                .unwrap_or_else(|e| match e {});
            let (returned, returned_ns) = (Instant::now(), now_ns());
            assert!(
                written.is_invalidated(),
                "an invalidation did not land: {:?}",
                written.invalidation()
            );
            let version = written.into_value();
            let pending = vec![true; readers as usize];
            open.insert(
                id,
                Open {
                    version,
                    returned,
                    returned_ns,
                    pending,
                },
            );
        }
        while !open.is_empty() {
            let ack = pop(&mut conn, &acks, BOUND * 5).await;
            let n: Vec<u64> = ack.split(' ').map(|x| x.parse().expect("ack")).collect();
            let (reader, id, version) = (n[0] as usize, n[1], n[2]);
            let Some(w) = open.get_mut(&id) else { continue };
            if version >= w.version {
                w.pending[reader] = false;
            }
            if w.pending.iter().all(|p| !p) {
                records.push(WriteRecord {
                    key: id,
                    version: w.version,
                    returned_ns: w.returned_ns,
                    acked: w.returned.elapsed(),
                });
                open.remove(&id);
            }
        }
    }
    for i in 0..readers {
        push(&mut conn, &format!("{prefix}stop:{i}"), "stop").await;
    }
    records
}

/// How `reader` passed from the versions of `key` before `version` to it (or a newer one):
/// `(start of its last read that returned an older version, end of its first read that
/// returned this one or newer for good)`, `(0, first read)` if it never served an older one.
/// `None`: it never came to `version` for good.
fn passage(reader: &ReaderReport, key: u64, version: u64) -> Option<(u64, u64)> {
    let mine: Vec<&Change> = reader.changes.iter().filter(|c| c.key == key).collect();
    match mine.iter().rposition(|c| c.version < version) {
        Some(i) => mine.get(i + 1).map(|c| (c.prev_start, c.at)),
        None => mine.first().map(|c| (0, c.at)),
    }
}

fn percentiles(mut xs: Vec<Duration>) -> (Duration, Duration, Duration) {
    xs.sort_unstable();
    let at = |q: f64| xs[((xs.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), xs[xs.len() - 1])
}

/// Checks and prints a run: `records` from the writer, one report per reader.
fn judge(label: &str, records: &[WriteRecord], readers: &[ReaderReport], writes: usize) {
    assert_eq!(records.len(), writes, "{label}: every write was made");
    // Per write, over the readers: how long after the invalidation returned the last read
    // of an older version started (staleness), and the first read of the new one for good
    // returned (propagation).
    let (mut stale, mut served) = (Vec::new(), Vec::new());
    let mut stale_writes = 0;
    for w in records {
        let (mut s, mut p) = (Duration::ZERO, Duration::ZERO);
        for (i, r) in readers.iter().enumerate() {
            let (old, new) = passage(r, w.key, w.version).unwrap_or_else(|| {
                panic!(
                    "{label}: reader {i} never served key {} version {} for good",
                    w.key, w.version
                )
            });
            s = s.max(Duration::from_nanos(old.saturating_sub(w.returned_ns)));
            p = p.max(Duration::from_nanos(new.saturating_sub(w.returned_ns)));
        }
        stale_writes += usize::from(s > Duration::ZERO);
        stale.push(s);
        served.push(p);
    }
    let (s50, s99, smax) = percentiles(stale);
    let (p50, p99, pmax) = percentiles(served);
    let (a50, a99, amax) = percentiles(records.iter().map(|w| w.acked).collect());
    println!(
        "{label}: {} writes, {} readers. After a write's invalidation returned: stale (the \
         last read of an older version started; {stale_writes} writes had one) p50 {s50:?}, \
         p99 {s99:?}, max {smax:?}; served (every reader returned the new version) p50 \
         {p50:?}, p99 {p99:?}, max {pmax:?}; acked p50 {a50:?}, p99 {a99:?}, max {amax:?}",
        records.len(),
        readers.len()
    );
    for (i, r) in readers.iter().enumerate() {
        println!(
            "{label}: reader {i}: {} fetches, {} local hits ({:.1} %), {} local misses, {} \
             local invalidations, {} flushes, {} loads ({} µs each), {} lease waits, {} \
             version changes served; settled on the last values in {:?}",
            r.fetches,
            r.local_hits,
            r.local_hits as f64 * 100.0 / r.fetches.max(1) as f64,
            r.local_misses,
            r.local_invalidations,
            r.local_flushes,
            r.loads,
            r.load_micros / r.loads.max(1),
            r.lease_waits,
            r.changes.len(),
            r.settle
        );
    }
    assert!(
        smax < BOUND && pmax < BOUND && amax < BOUND,
        "{label}: a write took past {BOUND:?} to reach every reader (stale max {smax:?}, \
         served max {pmax:?}, acked max {amax:?})"
    );
    let finals: HashMap<u64, u64> = records.iter().map(|w| (w.key, w.version)).collect();
    for (i, r) in readers.iter().enumerate() {
        assert_eq!(r.last.len(), KEYS as usize, "{label}: reader {i}");
        for &(key, got, db) in &r.last {
            assert_eq!(
                got, db,
                "{label}: reader {i} still serves version {got} of key {key}, the database \
                 holds {db}"
            );
            assert_eq!(
                db,
                finals.get(&key).copied().unwrap_or(0),
                "{label}: key {key}: the database holds the writer's last version"
            );
        }
        // Most reads are local hits: the tier serves, it is not reading Redis each time.
        assert!(
            r.local_hits * 2 > r.fetches,
            "{label}: reader {i}: only {} of {} fetches were local hits",
            r.local_hits,
            r.fetches
        );
        assert!(
            r.local_invalidations as usize >= writes,
            "{label}: reader {i} received {} invalidations for {writes} writes",
            r.local_invalidations
        );
    }
}

/// A reader process of `four_readers_serve_each_write_soon_after_its_invalidation`, on one
/// thread (four spinning readers share the machine's cores with Redis and the writer). Run
/// alone, it is one reader and a writer in this process (200 writes), checked the same way.
#[tokio::test(flavor = "current_thread")]
async fn staleness_reader() {
    match std::env::var(ENV_PREFIX) {
        Ok(prefix) => {
            let index: u64 = std::env::var(ENV_INDEX)
                .expect("reader index")
                .parse()
                .expect("index");
            let report = reader(&prefix, index).await;
            let out = std::env::var(ENV_OUT).expect("report path");
            std::fs::write(out, report.to_text()).expect("write the reader's report");
        }
        Err(_) => {
            let prefix = support::unique_prefix("staleness_alone");
            let r = {
                let prefix = prefix.clone();
                tokio::spawn(async move { reader(&prefix, 0).await })
            };
            let records = writer(&prefix, 1, 200).await;
            let report = r.await.expect("the reader task");
            judge("one reader task", &records, &[report], 200);
        }
    }
}

/// The reader processes: if the parent fails before they exit, they are killed (each by its
/// own id) rather than left waiting for a stop that will not come.
struct Readers(Vec<std::process::Child>);

impl Drop for Readers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_readers_serve_each_write_soon_after_its_invalidation() {
    let prefix = support::unique_prefix("staleness");
    let exe = std::env::current_exe().expect("test binary path");
    let outs: Vec<PathBuf> = (0..READERS)
        .map(|i| {
            std::env::temp_dir().join(format!(
                "cacheobj-staleness-{}-{}-{i}.txt",
                std::process::id(),
                prefix.replace(':', "_")
            ))
        })
        .collect();
    let mut children = Readers(
        outs.iter()
            .enumerate()
            .map(|(i, out)| {
                Command::new(&exe)
                    .args(["staleness_reader", "--exact", "--nocapture"])
                    .env(ENV_PREFIX, &prefix)
                    .env(ENV_INDEX, i.to_string())
                    .env(ENV_OUT, out)
                    .spawn()
                    .expect("spawn a reader process")
            })
            .collect(),
    );
    let started = Instant::now();
    let records = writer(&prefix, READERS, WRITES).await;
    let writing = started.elapsed();
    for child in &mut children.0 {
        let status = child.wait().expect("reader exit");
        assert!(status.success(), "a reader process failed: {status}");
    }
    let reports: Vec<ReaderReport> = outs
        .iter()
        .map(|out| {
            let text = std::fs::read_to_string(out).expect("read a reader's report");
            let _ = std::fs::remove_file(out);
            ReaderReport::from_text(&text)
        })
        .collect();
    println!("4 processes: readers started and {WRITES} writes made in {writing:?}");
    judge("4 reader processes", &records, &reports, WRITES);
}
