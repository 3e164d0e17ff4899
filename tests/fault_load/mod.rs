//! A fault-under-load harness, shared by `tests/faults_under_load.rs` and
//! `examples/fault_report.rs` (both `mod support;` first, then include this file with
//! `#[path]`).
//!
//! [`run`] starts its own Redis (a standalone `redis-server`, or a 3-master + 3-replica
//! cluster), fills a few hundred keys, runs a steady load of fetches from many tasks for a
//! fixed window, injects one fault mid-way (from a plain thread, so the load's runtime is not
//! blocked), issues `invalidate`s while the fault lasts, and returns a [`Report`]: requests,
//! errors, loader calls, latencies, hit ratio over time, when hits resumed, and whether every
//! `invalidate` that returned `Ok` really removed its entry.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cacheobj::{Cache, CacheConfig, Strategy};
use cacheobj_strategies::{Item, ItemKey, ITEM};

use crate::support::cluster::RedisCluster;
use crate::support::RedisServer;

/// What every loader costs (a 1 ms database query).
pub const LOADER: Duration = Duration::from_millis(1);
/// `CacheConfig::response_timeout` of the cache under test.
pub const RESPONSE: Duration = Duration::from_millis(100);
/// `CacheConfig::retry_interval` of the cache under test.
pub const RETRY: Duration = Duration::from_millis(500);
/// A fetch that takes longer than this is recorded as hung (and the harness moves on).
pub const HANG: Duration = Duration::from_secs(10);
/// Width of one bucket of the hit-ratio timeline.
pub const BUCKET: Duration = Duration::from_millis(100);

/// The loaded keys: a short TTL with jitter, so entries keep expiring and the load keeps taking
/// fill leases and filling while the fault hits, not only reading.
pub const LOAD: Strategy<Item, ItemKey> = Strategy::<Item, ItemKey>::obj("load:<item_id>")
    .expire(2)
    .jitter(50);
/// Ids of the keys invalidated during the fault (cached with [`ITEM`], a day's TTL, never
/// touched by the load, so nothing refills them).
pub const INV_BASE: u64 = 1_000_000;

pub fn item(id: u64) -> Item {
    Item {
        id,
        name: format!("item #{id}"),
    }
}

/// The fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL one master of a 3-master + 3-replica cluster; its replica takes over.
    KillClusterMaster,
    /// Stop a standalone Redis (SIGKILL), start it again (empty) on the same port.
    StopRestart,
    /// SIGSTOP a standalone Redis for longer than the response timeout, then SIGCONT.
    Pause,
    /// `CLIENT KILL TYPE normal` on a standalone Redis: every client connection is closed.
    ClientKill,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillClusterMaster => "(a) kill one cluster master (3 masters + 3 replicas)",
            FaultKind::StopRestart => "(b) stop + restart standalone redis",
            FaultKind::Pause => "(c) SIGSTOP standalone redis, then SIGCONT",
            FaultKind::ClientKill => "(d) CLIENT KILL TYPE normal",
        }
    }
}

/// When and how long.
#[derive(Debug, Clone)]
pub struct Plan {
    pub kind: FaultKind,
    /// How long the load runs.
    pub window: Duration,
    /// When the fault is injected, from the start of the load.
    pub fault_at: Duration,
    /// How long a stop or a pause lasts before the restart or SIGCONT.
    pub fault_len: Duration,
    /// Load tasks.
    pub tasks: usize,
    /// Distinct keys fetched.
    pub keys: u64,
    /// `invalidate` calls, spread evenly over `inv_span` from the fault on.
    pub invalidations: u64,
    pub inv_span: Duration,
}

impl Plan {
    /// The example's plan: 64 tasks, 300 keys, an 8 s window (12 s for the cluster).
    pub fn report(kind: FaultKind) -> Plan {
        let cluster = kind == FaultKind::KillClusterMaster;
        Plan {
            kind,
            window: Duration::from_secs(if cluster { 12 } else { 8 }),
            fault_at: Duration::from_millis(2500),
            fault_len: Duration::from_millis(1500),
            tasks: 64,
            keys: 300,
            invalidations: 12,
            inv_span: match kind {
                FaultKind::KillClusterMaster => Duration::from_millis(4000),
                FaultKind::ClientKill => Duration::from_millis(600),
                _ => Duration::from_millis(1800),
            },
        }
    }

    /// The test's plan: shorter windows.
    pub fn test(kind: FaultKind) -> Plan {
        let cluster = kind == FaultKind::KillClusterMaster;
        Plan {
            kind,
            window: Duration::from_millis(if cluster { 7000 } else { 3500 }),
            fault_at: Duration::from_millis(1000),
            fault_len: Duration::from_millis(800),
            tasks: 64,
            keys: 300,
            invalidations: 8,
            inv_span: match kind {
                FaultKind::KillClusterMaster => Duration::from_millis(3500),
                FaultKind::ClientKill => Duration::from_millis(400),
                _ => Duration::from_millis(1000),
            },
        }
    }
}

/// Where the cache's Redis lives.
pub enum Target {
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

impl Target {
    fn start(kind: FaultKind) -> Target {
        match kind {
            FaultKind::KillClusterMaster => Target::Cluster(RedisCluster::start_with_replicas()),
            _ => Target::Standalone(RedisServer::start()),
        }
    }

    fn config(&self, prefix: &str) -> CacheConfig {
        let builder = CacheConfig::builder()
            .prefix(prefix)
            .response_timeout(RESPONSE)
            .retry_interval(RETRY);
        match self {
            Target::Standalone(s) => builder.url(s.url()).build(),
            Target::Cluster(c) => builder.nodes(c.nodes()).build(),
        }
    }

    /// Whether `key` exists, read straight from Redis (blocking).
    fn raw_exists(&self, key: &[u8]) -> Result<bool, String> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(key);
        let v = match self {
            Target::Standalone(s) => crate::support::cluster::query(s.port, &cmd),
            Target::Cluster(c) => c.query_key(&cmd, key),
        }
        .map_err(|e| e.to_string())?;
        match v {
            redis::Value::Int(n) => Ok(n > 0),
            other => Err(format!("unexpected EXISTS reply {other:?}")),
        }
    }

    /// Whether Redis serves every key again (blocking).
    fn healthy(&self) -> bool {
        match self {
            Target::Standalone(s) => {
                crate::support::cluster::query(s.port, &redis::cmd("PING")).is_ok()
            }
            Target::Cluster(c) => c.wait_for_failover(Duration::from_millis(1)).is_ok(),
        }
    }
}

/// One fetch.
#[derive(Debug, Clone, Copy)]
struct Sample {
    id: u64,
    /// When it started, from the start of the load.
    start_us: u64,
    latency_us: u64,
    /// The loader did not run for it (a cache hit, or a share of another fetch's load).
    cached: bool,
}

/// One `invalidate` issued during the fault.
#[derive(Debug, Clone)]
pub struct Invalidation {
    pub id: u64,
    pub at: Duration,
    pub took: Duration,
    /// `Ok`, or the error's `Debug`.
    pub result: Result<(), String>,
    /// Whether the entry was still in Redis once it was healthy again; `Err` if that could not
    /// be checked.
    pub present_after: Result<bool, String>,
}

impl Invalidation {
    /// Reported success but did not happen: the one outcome that must never occur.
    pub fn lied(&self) -> bool {
        self.result.is_ok() && !matches!(self.present_after, Ok(false))
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub plan: Plan,
    pub requests: u64,
    /// `fetch` returned `Err` (the loader never fails, so this must stay 0).
    pub errors: u64,
    /// `fetch` returned a value other than the loader's.
    pub wrong_values: u64,
    /// A fetch took longer than [`HANG`].
    pub hung: u64,
    /// Load tasks that panicked.
    pub panics: u64,
    pub loader_calls: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
    /// When the slowest fetch started, from the start of the load.
    pub max_at: Duration,
    /// The slowest fetch before the fault, during it (fault to recovery + 1 s), and after.
    pub max_before: Duration,
    pub max_during: Duration,
    pub max_after: Duration,
    pub p99_during: Duration,
    /// Fetches slower than `RESPONSE + LOADER + 150 ms`.
    pub over_bound: u64,
    /// When the fault was in effect (server dead or stopped, master killed, connections
    /// killed) and when it began to be undone (just before the restart or SIGCONT; replica
    /// promoted; the injection itself for CLIENT KILL).
    pub fault_at: Duration,
    pub recovered_at: Duration,
    /// Cluster only: how long the replica took to be promoted (cluster_state:ok again).
    pub failover: Option<Duration>,
    /// Hit ratio (`stats().hits / (hits + misses)`) before the fault.
    pub hit_ratio_before: f64,
    /// From `recovered_at` to the start of the first 100 ms bucket whose hit ratio is back to
    /// 90 % of `hit_ratio_before`; `None` if that never happened within the window.
    pub hits_resumed_after: Option<Duration>,
    /// Same, measured from the fault's injection.
    pub hits_resumed_after_fault: Option<Duration>,
    /// Per 100 ms bucket: (hits + misses, hits), from `Cache::stats`.
    pub timeline: Vec<(u64, u64)>,
    pub invalidations: Vec<Invalidation>,
    pub stats: cacheobj::Stats,
}

fn percentile(sorted: &[u64], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Duration::from_micros(sorted[i])
}

/// A small xorshift generator: the test crates have no RNG dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

struct Shared {
    cache: Cache,
    loader_calls: AtomicU64,
    errors: AtomicU64,
    wrong: AtomicU64,
    hung: AtomicU64,
}

async fn fetch_one(shared: &Shared, strategy: &Strategy<Item, ItemKey>, id: u64) -> (bool, bool) {
    let loaded = AtomicBool::new(false);
    let got = tokio::time::timeout(
        HANG,
        shared
            .cache
            .fetch(strategy, &ItemKey { item_id: id }, || async {
                loaded.store(true, Ordering::Relaxed);
                shared.loader_calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(LOADER).await;
                Ok::<_, std::io::Error>(item(id))
            }),
    )
    .await;
    match got {
        Ok(Ok(ref v)) => {
            if *v != item(id) {
                shared.wrong.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(Err(_)) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            shared.hung.fetch_add(1, Ordering::Relaxed);
        }
    }
    (got.is_ok(), !loaded.load(Ordering::Relaxed))
}

/// Times of the fault, from the start of the load.
struct FaultTimes {
    injected: Duration,
    recovered: Duration,
    failover: Option<Duration>,
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}

/// Injects the fault (blocking; runs on its own thread). The fault's span is measured
/// conservatively: `injected` once it is in effect (the process is dead or stopped, the
/// connections are killed), `recovered` before it is undone. Spawning `kill` or a new server
/// takes milliseconds on a loaded machine, and a request in that gap may rightly succeed.
fn inject(plan: &Plan, target: &Mutex<Target>, t0: Instant) -> FaultTimes {
    sleep_until(t0 + plan.fault_at);
    let mut target = target.lock().unwrap_or_else(|e| e.into_inner());
    match (plan.kind, &mut *target) {
        (FaultKind::KillClusterMaster, Target::Cluster(c)) => {
            c.kill_master(0);
            let injected = t0.elapsed();
            let failover = c.wait_for_failover(Duration::from_secs(20)).ok();
            let recovered = t0.elapsed();
            FaultTimes {
                injected,
                recovered,
                failover,
            }
        }
        (FaultKind::StopRestart, Target::Standalone(s)) => {
            s.stop();
            let injected = t0.elapsed();
            sleep_until(t0 + plan.fault_at + plan.fault_len);
            let recovered = t0.elapsed();
            s.restart();
            FaultTimes {
                injected,
                recovered,
                failover: None,
            }
        }
        (FaultKind::Pause, Target::Standalone(s)) => {
            s.pause();
            let injected = t0.elapsed();
            sleep_until(t0 + plan.fault_at + plan.fault_len);
            let recovered = t0.elapsed();
            s.resume();
            FaultTimes {
                injected,
                recovered,
                failover: None,
            }
        }
        (FaultKind::ClientKill, Target::Standalone(s)) => {
            let killed = crate::support::cluster::query(
                s.port,
                redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal"),
            );
            assert!(
                matches!(killed, Ok(redis::Value::Int(n)) if n >= 1),
                "CLIENT KILL killed nothing: {killed:?}"
            );
            let injected = t0.elapsed();
            FaultTimes {
                injected,
                recovered: injected,
                failover: None,
            }
        }
        _ => unreachable!("fault and target do not match"),
    }
}

/// Runs the plan (on the current tokio runtime; use a multi-thread runtime).
pub async fn run(plan: Plan) -> Report {
    let kind = plan.kind;
    let target = tokio::task::spawn_blocking(move || Target::start(kind))
        .await
        .expect("starting redis panicked");
    let prefix = format!("faults:{}:{}:", std::process::id(), kind as u8);
    let cache = Cache::connect(target.config(&prefix))
        .await
        .expect("Cache::connect");
    let target = Arc::new(Mutex::new(target));

    // Warm up: connected, every key cached.
    let ready = Instant::now();
    while cache.ping().await.is_err() {
        assert!(
            ready.elapsed() < Duration::from_secs(10),
            "redis never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shared = Arc::new(Shared {
        cache: cache.clone(),
        loader_calls: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        wrong: AtomicU64::new(0),
        hung: AtomicU64::new(0),
    });
    for id in 0..plan.keys {
        fetch_one(&shared, &LOAD, id).await;
    }
    for i in 0..plan.invalidations {
        fetch_one(&shared, &ITEM, INV_BASE + i).await;
    }
    let entry_keys: Vec<Vec<u8>> = (0..plan.invalidations)
        .map(|i| {
            cache
                .entry_key(
                    &ITEM,
                    &ItemKey {
                        item_id: INV_BASE + i,
                    },
                )
                .expect("entry_key")
                .key
        })
        .collect();
    {
        let target = target.clone();
        let keys = entry_keys.clone();
        let present = tokio::task::spawn_blocking(move || {
            let t = target.lock().unwrap_or_else(|e| e.into_inner());
            keys.iter().map(|k| t.raw_exists(k)).collect::<Vec<_>>()
        })
        .await
        .unwrap();
        assert!(
            present.iter().all(|p| matches!(p, Ok(true))),
            "the keys to invalidate were not cached before the fault: {present:?}"
        );
    }
    shared.loader_calls.store(0, Ordering::Relaxed);
    let stats_before = cache.stats();

    let t0 = Instant::now();
    let stop = t0 + plan.window;

    // The fault, on its own thread.
    let controller = {
        let plan = plan.clone();
        let target = target.clone();
        thread::spawn(move || inject(&plan, &target, t0))
    };

    // The load.
    let tasks: Vec<_> = (0..plan.tasks)
        .map(|t| {
            let shared = shared.clone();
            let keys = plan.keys;
            tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) * 0x1234_5678_9ABC));
                let mut samples = Vec::with_capacity(64 * 1024);
                while Instant::now() < stop {
                    let id = rng.next() % keys;
                    let start = Instant::now();
                    let (_, cached) = fetch_one(&shared, &LOAD, id).await;
                    samples.push(Sample {
                        id,
                        start_us: (start - t0).as_micros() as u64,
                        latency_us: start.elapsed().as_micros() as u64,
                        cached,
                    });
                }
                samples
            })
        })
        .collect();

    // Hits and misses per bucket, from the cache's own counters (a fetch that shares another
    // fetch's load is a miss, not a hit).
    let sampler = {
        let cache = cache.clone();
        let buckets = (plan.window.as_micros() / BUCKET.as_micros()) as u32;
        tokio::spawn(async move {
            let mut out = Vec::with_capacity(buckets as usize);
            let mut last = cache.stats();
            for b in 1..=buckets {
                tokio::time::sleep_until((t0 + BUCKET * b).into()).await;
                let now = cache.stats();
                let hits = now.hits - last.hits;
                out.push((hits + (now.misses - last.misses), hits));
                last = now;
            }
            out
        })
    };

    // The invalidations, spread over the fault.
    let invalidator = {
        let cache = cache.clone();
        let plan = plan.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            let step = plan.inv_span / plan.invalidations.max(1) as u32;
            for i in 0..plan.invalidations {
                let at = plan.fault_at + Duration::from_millis(5) + step * i as u32;
                tokio::time::sleep_until((t0 + at).into()).await;
                let id = INV_BASE + i;
                let start = Instant::now();
                let result =
                    tokio::time::timeout(HANG, cache.invalidate(&ITEM, &ItemKey { item_id: id }))
                        .await;
                let took = start.elapsed();
                out.push(Invalidation {
                    id,
                    at: start - t0,
                    took,
                    result: match result {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(format!("{e:?}")),
                        Err(_) => Err(format!("hung for {HANG:?}")),
                    },
                    present_after: Err("not checked".into()),
                });
            }
            out
        })
    };

    let mut samples = Vec::new();
    let mut panics = 0;
    for t in tasks {
        match t.await {
            Ok(s) => samples.extend(s),
            Err(_) => panics += 1,
        }
    }
    let mut invalidations = invalidator.await.expect("invalidator panicked");
    let timeline = sampler.await.expect("sampler panicked");
    let times = tokio::task::spawn_blocking(move || controller.join())
        .await
        .unwrap()
        .expect("fault injection panicked");
    let stats = cache.stats();

    // Once Redis is healthy again, check what each invalidation really did.
    {
        let target = target.clone();
        let keys = entry_keys;
        let checked = tokio::task::spawn_blocking(move || {
            let t = target.lock().unwrap_or_else(|e| e.into_inner());
            let deadline = Instant::now() + Duration::from_secs(20);
            while !t.healthy() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            keys.iter()
                .map(|k| {
                    let mut r = t.raw_exists(k);
                    for _ in 0..20 {
                        if r.is_ok() {
                            break;
                        }
                        thread::sleep(Duration::from_millis(100));
                        r = t.raw_exists(k);
                    }
                    r
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        for inv in &mut invalidations {
            inv.present_after = checked[(inv.id - INV_BASE) as usize].clone();
        }
    }

    summarize(
        plan,
        samples,
        timeline,
        panics,
        &shared,
        times,
        invalidations,
        stats_delta(&stats_before, &stats),
    )
}

fn stats_delta(a: &cacheobj::Stats, b: &cacheobj::Stats) -> cacheobj::Stats {
    let mut d = *b;
    d.hits -= a.hits;
    d.misses -= a.misses;
    d.loads -= a.loads;
    d.errors -= a.errors;
    d.undecodable -= a.undecodable;
    d.coalesced_waits -= a.coalesced_waits;
    d.lease_waits -= a.lease_waits;
    d.lease_timeouts -= a.lease_timeouts;
    d.stale_fills_rejected -= a.stale_fills_rejected;
    d.early_refreshes -= a.early_refreshes;
    d
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    plan: Plan,
    samples: Vec<Sample>,
    timeline: Vec<(u64, u64)>,
    panics: u64,
    shared: &Shared,
    times: FaultTimes,
    invalidations: Vec<Invalidation>,
    stats: cacheobj::Stats,
) -> Report {
    let bound_us = (RESPONSE + LOADER + Duration::from_millis(150)).as_micros() as u64;
    let fault_us = times.injected.as_micros() as u64;
    let during_end_us = (times.recovered + Duration::from_secs(1)).as_micros() as u64;
    let mut all: Vec<u64> = samples.iter().map(|s| s.latency_us).collect();
    all.sort_unstable();
    let mut during: Vec<u64> = samples
        .iter()
        .filter(|s| s.start_us >= fault_us && s.start_us < during_end_us)
        .map(|s| s.latency_us)
        .collect();
    during.sort_unstable();
    let max_in = |from: u64, to: u64| {
        Duration::from_micros(
            samples
                .iter()
                .filter(|s| s.start_us >= from && s.start_us < to)
                .map(|s| s.latency_us)
                .max()
                .unwrap_or(0),
        )
    };
    let slowest = samples.iter().max_by_key(|s| s.latency_us);
    if std::env::var_os("FAULT_DEBUG").is_some() {
        let mut slow: Vec<&Sample> = samples.iter().filter(|s| s.latency_us > bound_us).collect();
        slow.sort_by_key(|s| s.start_us);
        for s in slow {
            eprintln!(
                "slow: key {} started {:.1} ms took {:.1} ms cached {}",
                s.id,
                s.start_us as f64 / 1e3,
                s.latency_us as f64 / 1e3,
                s.cached
            );
        }
    }

    let ratio = |(n, c): (u64, u64)| if n == 0 { 0.0 } else { c as f64 / n as f64 };
    // Steady state before the fault: skip the first 500 ms.
    let first = (Duration::from_millis(500).as_micros() / BUCKET.as_micros()) as usize;
    let fault_bucket = (times.injected.as_micros() / BUCKET.as_micros()) as usize;
    let before: (u64, u64) = timeline[first.min(fault_bucket)..fault_bucket]
        .iter()
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let hit_ratio_before = ratio(before);
    // Hits drop first (the first bucket after the fault below 90 % of the steady ratio); they
    // have resumed at the first bucket, after both that drop and the end of the fault, that is
    // back to 90 % of the steady ratio.
    let good = |b: usize| timeline[b].0 > 0 && ratio(timeline[b]) >= 0.9 * hit_ratio_before;
    let last = timeline.len();
    let resumed_at = match (fault_bucket..last).find(|&b| !good(b)) {
        None => Some(times.injected), // hits never dropped
        Some(first_bad) => {
            let from = first_bad.max((times.recovered.as_micros() / BUCKET.as_micros()) as usize);
            (from..last).find(|&b| good(b)).map(|b| BUCKET * b as u32)
        }
    };
    let hits_resumed_after = resumed_at.map(|t| t.saturating_sub(times.recovered));
    let hits_resumed_after_fault = resumed_at.map(|t| t.saturating_sub(times.injected));

    Report {
        requests: samples.len() as u64,
        errors: shared.errors.load(Ordering::Relaxed),
        wrong_values: shared.wrong.load(Ordering::Relaxed),
        hung: shared.hung.load(Ordering::Relaxed),
        panics,
        loader_calls: shared.loader_calls.load(Ordering::Relaxed),
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        p999: percentile(&all, 0.999),
        max: percentile(&all, 1.0),
        max_at: Duration::from_micros(slowest.map_or(0, |s| s.start_us)),
        max_before: max_in(0, fault_us),
        max_during: max_in(fault_us, during_end_us),
        max_after: max_in(during_end_us, u64::MAX),
        p99_during: percentile(&during, 0.99),
        over_bound: samples.iter().filter(|s| s.latency_us > bound_us).count() as u64,
        fault_at: times.injected,
        recovered_at: times.recovered,
        failover: times.failover,
        hit_ratio_before,
        hits_resumed_after,
        hits_resumed_after_fault,
        timeline,
        invalidations,
        stats,
        plan,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

impl Report {
    /// A human-readable summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let p = &self.plan;
        out.push_str(&format!(
            "== {}\n   window {:?}, {} tasks, {} keys, loader {:?}, response_timeout {:?}, retry_interval {:?}\n",
            p.kind.name(),
            p.window,
            p.tasks,
            p.keys,
            LOADER,
            RESPONSE,
            RETRY
        ));
        out.push_str(&format!(
            "   fault at {}, over at {}{}\n",
            ms(self.fault_at),
            ms(self.recovered_at),
            match self.failover {
                Some(f) => format!(" (replica promoted {} after the kill)", ms(f)),
                None if p.kind == FaultKind::KillClusterMaster => " (NO failover)".to_owned(),
                None => String::new(),
            }
        ));
        out.push_str(&format!(
            "   requests served {}   errors returned {}   wrong values {}   hung {}   panics {}\n",
            self.requests, self.errors, self.wrong_values, self.hung, self.panics
        ));
        out.push_str(&format!(
            "   loader calls {}   cache stats (delta): hits {} misses {} errors {} lease_waits {} lease_timeouts {} stale_fills_rejected {}\n",
            self.loader_calls,
            self.stats.hits,
            self.stats.misses,
            self.stats.errors,
            self.stats.lease_waits,
            self.stats.lease_timeouts,
            self.stats.stale_fills_rejected
        ));
        out.push_str(&format!(
            "   latency p50 {}  p99 {}  p99.9 {}  worst {} (started at {})\n",
            ms(self.p50),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            ms(self.max_at)
        ));
        out.push_str(&format!(
            "   worst before fault {}  during (fault..over+1s) {} [p99 {}]  after {}   fetches > {}: {}\n",
            ms(self.max_before),
            ms(self.max_during),
            ms(self.p99_during),
            ms(self.max_after),
            ms(RESPONSE + LOADER + Duration::from_millis(150)),
            self.over_bound
        ));
        out.push_str(&format!(
            "   hit ratio before {:.1}%   hits resumed {} after the fault was over ({} after injection)\n",
            self.hit_ratio_before * 100.0,
            self.hits_resumed_after.map_or("NEVER".to_owned(), ms),
            self.hits_resumed_after_fault.map_or("NEVER".to_owned(), ms),
        ));
        out.push_str("   hit% per 200 ms: ");
        for chunk in self.timeline.chunks(2) {
            let (n, c) = chunk
                .iter()
                .fold((0u64, 0u64), |a, b| (a.0 + b.0, a.1 + b.1));
            match (c * 100).checked_div(n) {
                Some(pct) => out.push_str(&format!("{pct:>3} ")),
                None => out.push_str("  - "),
            }
        }
        out.push('\n');
        let ok = self
            .invalidations
            .iter()
            .filter(|i| i.result.is_ok())
            .count();
        let lied = self.invalidations.iter().filter(|i| i.lied()).count();
        out.push_str(&format!(
            "   invalidate during fault: {} Ok, {} Err; Ok but entry still there: {}\n",
            ok,
            self.invalidations.len() - ok,
            lied
        ));
        for inv in &self.invalidations {
            out.push_str(&format!(
                "     at {:>9} took {:>8}: {:<60} present after recovery: {}\n",
                ms(inv.at),
                ms(inv.took),
                match &inv.result {
                    Ok(()) => "Ok".to_owned(),
                    Err(e) => format!("Err({})", truncate(e, 56)),
                },
                match &inv.present_after {
                    Ok(p) => p.to_string(),
                    Err(e) => format!("unknown ({e})"),
                }
            ));
        }
        out
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_owned()
    } else {
        let mut end = n;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}
