//! A history checker for the cache's central promise (#13): a read that starts after an
//! invalidation returned, in any process, never returns a value loaded before that
//! invalidation. A read that overlaps an invalidation may return either value.
//!
//! Every event takes a tick from one linearizable clock (an atomic in one process; a Redis
//! `INCR` across processes): a write's tick is taken after its invalidation returned, a read's
//! before it starts. So `read.started > write.returned` proves the read started after the
//! invalidation returned, and the checker has no false positives.
//!
//! With local tiers (#11) a `Cache` learns of another's invalidation from a Redis push, a
//! little after that invalidation returned: a stale read is then one of two kinds. *Own*: it
//! is stale against the writes of its own `Cache` alone (a read after this `Cache`'s own
//! invalidation returned saw the old value): never allowed. *Cross*: only another `Cache`'s
//! write makes it stale; the checker says how long after that write completed the read
//! started (each event also carries the wall clock, `SystemTime`, taken next to its tick:
//! every process is on one host), which the propagation bound limits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The wall clock in nanoseconds since the epoch: the same on every process of this host.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One recorded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A write by `cache` made `key` hold `version` in the database; its invalidation
    /// returned before tick `returned`, and at wall clock `at_ns` (taken as it returned,
    /// before the tick).
    Write {
        cache: u64,
        key: u64,
        version: u64,
        returned: u64,
        at_ns: u64,
    },
    /// A read of `key` through `cache` started after tick `started`, and at wall clock
    /// `at_ns` (taken after the tick, as it started), and returned `version`.
    Read {
        cache: u64,
        key: u64,
        started: u64,
        version: u64,
        at_ns: u64,
    },
}

impl Event {
    /// One line of text, for a worker process to hand its events to the parent.
    pub fn to_line(self) -> String {
        match self {
            Event::Write {
                cache,
                key,
                version,
                returned,
                at_ns,
            } => format!("W {cache} {key} {version} {returned} {at_ns}"),
            Event::Read {
                cache,
                key,
                started,
                version,
                at_ns,
            } => format!("R {cache} {key} {started} {version} {at_ns}"),
        }
    }

    /// Parses [`Event::to_line`]'s output.
    pub fn from_line(line: &str) -> Option<Event> {
        let mut parts = line.split_whitespace();
        let tag = parts.next()?;
        let mut n = [0u64; 5];
        for x in &mut n {
            *x = parts.next()?.parse().ok()?;
        }
        let [cache, key, b, c, at_ns] = n;
        match tag {
            "W" => Some(Event::Write {
                cache,
                key,
                version: b,
                returned: c,
                at_ns,
            }),
            "R" => Some(Event::Read {
                cache,
                key,
                started: b,
                version: c,
                at_ns,
            }),
            _ => None,
        }
    }
}

/// A read that started after a write's invalidation returned and saw an older version.
#[derive(Debug, Clone)]
pub struct StaleRead {
    /// Stale against its own `Cache`'s writes.
    pub own: bool,
    /// From the end of the first write that made its version old to the read's start.
    pub lag: Duration,
    pub what: String,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    pub reads: usize,
    pub writes: usize,
    /// Every stale read, own and cross.
    pub stale: Vec<StaleRead>,
}

impl Report {
    /// The stale reads against the reading `Cache`'s own writes.
    pub fn own(&self) -> Vec<&StaleRead> {
        self.stale.iter().filter(|s| s.own).collect()
    }

    /// p50, p99 and max of the stale reads' lags (zero without any).
    pub fn lags(&self) -> (Duration, Duration, Duration) {
        let mut lags: Vec<Duration> = self.stale.iter().map(|s| s.lag).collect();
        if lags.is_empty() {
            return (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        }
        lags.sort_unstable();
        let at = |q: f64| lags[((lags.len() - 1) as f64 * q).round() as usize];
        (at(0.5), at(0.99), lags[lags.len() - 1])
    }
}

/// The writes of each key: `(returned, version, at_ns)`.
type Writes = HashMap<u64, Vec<(u64, u64, u64)>>;

/// Writes of one key by the tick their invalidation returned: `(returned, newest version
/// written by then, wall clock of the write that first wrote it)`.
type Floor = Vec<(u64, u64, u64)>;

fn floors(writes: Writes) -> HashMap<u64, Floor> {
    writes
        .into_iter()
        .map(|(key, mut ws)| {
            ws.sort_unstable();
            let (mut newest, mut since) = (0, 0);
            let floor = ws
                .into_iter()
                .map(|(returned, version, at_ns)| {
                    if version > newest {
                        (newest, since) = (version, at_ns);
                    }
                    (returned, newest, since)
                })
                .collect();
            (key, floor)
        })
        .collect()
}

/// The newest version written to `key` by a write whose invalidation returned before tick
/// `started`, with that write's tick and wall clock.
fn floor_at(floors: &HashMap<u64, Floor>, key: u64, started: u64) -> Option<(u64, u64, u64)> {
    let floor = floors.get(&key)?;
    let before = floor.partition_point(|&(returned, _, _)| returned < started);
    before.checked_sub(1).map(|i| floor[i])
}

/// Checks a whole history.
pub fn check(events: &[Event]) -> Report {
    // key -> (returned, version, at_ns), for all writes and per cache.
    let mut all: Writes = HashMap::new();
    let mut by_cache: HashMap<u64, Writes> = HashMap::new();
    let mut report = Report::default();
    for e in events {
        if let Event::Write {
            cache,
            key,
            version,
            returned,
            at_ns,
        } = *e
        {
            all.entry(key).or_default().push((returned, version, at_ns));
            by_cache
                .entry(cache)
                .or_default()
                .entry(key)
                .or_default()
                .push((returned, version, at_ns));
            report.writes += 1;
        }
    }
    // Per key: the newest version any write that returned by then (or earlier) wrote.
    let all = floors(all);
    let by_cache: HashMap<u64, HashMap<u64, Floor>> = by_cache
        .into_iter()
        .map(|(cache, writes)| (cache, floors(writes)))
        .collect();
    for e in events {
        if let Event::Read {
            cache,
            key,
            started,
            version,
            at_ns,
        } = *e
        {
            report.reads += 1;
            let Some((returned, newest, _)) = floor_at(&all, key, started) else {
                continue;
            };
            if version >= newest {
                continue;
            }
            // The first write that made `version` old: newest only grows along the floor,
            // and where it passes `version` that write wrote it.
            let floor = &all[&key];
            let since = floor[floor.partition_point(|&(_, n, _)| n <= version)].2;
            let own = by_cache
                .get(&cache)
                .and_then(|f| floor_at(f, key, started))
                .is_some_and(|(_, own_newest, _)| version < own_newest);
            let lag = Duration::from_nanos(at_ns.saturating_sub(since));
            report.stale.push(StaleRead {
                own,
                lag,
                what: format!(
                    "key {key}: a read by cache {cache} that started at tick {started} returned \
                     version {version}, but version {newest} had been written and invalidated \
                     by tick {returned}{}, {lag:?} before it started",
                    if own { " (by this cache)" } else { "" }
                ),
            });
        }
    }
    report
}

/// The shared clock and "database" of a run: in this process, or in Redis (across processes).
#[derive(Clone)]
pub enum Shared {
    Local {
        clock: Arc<AtomicU64>,
        rows: Arc<Vec<AtomicU64>>,
    },
    Redis {
        conn: redis::aio::MultiplexedConnection,
        prefix: String,
    },
}

impl Shared {
    pub fn local(keys: u64) -> Shared {
        Shared::Local {
            clock: Arc::new(AtomicU64::new(0)),
            rows: Arc::new((0..keys).map(|_| AtomicU64::new(0)).collect()),
        }
    }

    /// The clock and rows live in the Redis at `url` under `prefix` (never the entries' own
    /// keys), so several processes share them.
    pub async fn redis(url: &str, prefix: &str) -> Shared {
        Shared::Redis {
            conn: super::raw_conn_to(url).await,
            prefix: format!("{prefix}history:"),
        }
    }

    async fn incr(conn: &redis::aio::MultiplexedConnection, key: String) -> u64 {
        let mut conn = conn.clone();
        redis::cmd("INCR")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("INCR on the history's Redis")
    }

    /// The next tick of the clock.
    pub async fn tick(&self) -> u64 {
        match self {
            Shared::Local { clock, .. } => clock.fetch_add(1, Ordering::SeqCst) + 1,
            Shared::Redis { conn, prefix } => Shared::incr(conn, format!("{prefix}clock")).await,
        }
    }

    /// Writes row `key` in the database: returns its new version.
    pub async fn bump(&self, key: u64) -> u64 {
        match self {
            Shared::Local { rows, .. } => rows[key as usize].fetch_add(1, Ordering::SeqCst) + 1,
            Shared::Redis { conn, prefix } => {
                Shared::incr(conn, format!("{prefix}row:{key}")).await
            }
        }
    }

    /// Reads row `key` from the database.
    pub async fn get(&self, key: u64) -> u64 {
        match self {
            Shared::Local { rows, .. } => rows[key as usize].load(Ordering::SeqCst),
            Shared::Redis { conn, prefix } => {
                let mut conn = conn.clone();
                let v: Option<u64> = redis::cmd("GET")
                    .arg(format!("{prefix}row:{key}"))
                    .query_async(&mut conn)
                    .await
                    .expect("GET on the history's Redis");
                v.unwrap_or(0)
            }
        }
    }
}

/// A loader's think time: 0–3 ms after it read the row, the window in which an invalidation
/// can race its fill. It shapes the workload; nothing waits on it to order events.
pub async fn think() {
    let micros = fastrand::u64(0..3000);
    if micros < 200 {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(std::time::Duration::from_micros(micros)).await;
    }
}
