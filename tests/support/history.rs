//! A history checker for the cache's central promise (#13): a read that starts after an
//! invalidation returned, in any process, never returns a value loaded before that
//! invalidation. A read that overlaps an invalidation may return either value.
//!
//! Every event takes a tick from one linearizable clock (an atomic in one process; a Redis
//! `INCR` across processes): a write's tick is taken after its invalidation returned, a read's
//! before it starts. So `read.started > write.returned` proves the read started after the
//! invalidation returned, and the checker has no false positives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One recorded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A write made `key` hold `version` in the database; its invalidation returned before
    /// tick `returned`.
    Write {
        key: u64,
        version: u64,
        returned: u64,
    },
    /// A read of `key` started after tick `started` and returned `version`.
    Read {
        key: u64,
        started: u64,
        version: u64,
    },
}

impl Event {
    /// One line of text, for a worker process to hand its events to the parent.
    pub fn to_line(self) -> String {
        match self {
            Event::Write {
                key,
                version,
                returned,
            } => format!("W {key} {version} {returned}"),
            Event::Read {
                key,
                started,
                version,
            } => format!("R {key} {started} {version}"),
        }
    }

    /// Parses [`Event::to_line`]'s output.
    pub fn from_line(line: &str) -> Option<Event> {
        let mut parts = line.split_whitespace();
        let tag = parts.next()?;
        let a: u64 = parts.next()?.parse().ok()?;
        let b: u64 = parts.next()?.parse().ok()?;
        let c: u64 = parts.next()?.parse().ok()?;
        match tag {
            "W" => Some(Event::Write {
                key: a,
                version: b,
                returned: c,
            }),
            "R" => Some(Event::Read {
                key: a,
                started: b,
                version: c,
            }),
            _ => None,
        }
    }
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    pub reads: usize,
    pub writes: usize,
    /// Reads that started after a write's invalidation returned and saw an older version.
    pub stale: Vec<String>,
}

/// Checks a whole history.
pub fn check(events: &[Event]) -> Report {
    let mut writes: HashMap<u64, Vec<(u64, u64)>> = HashMap::new(); // key -> (returned, version)
    let mut report = Report::default();
    for e in events {
        if let Event::Write {
            key,
            version,
            returned,
        } = *e
        {
            writes.entry(key).or_default().push((returned, version));
            report.writes += 1;
        }
    }
    // Per key: writes by the tick their invalidation returned, with the newest version any
    // of them (or an earlier one) wrote.
    let mut floors: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    for (key, mut ws) in writes {
        ws.sort_unstable();
        let mut newest = 0;
        let floor = ws
            .into_iter()
            .map(|(returned, version)| {
                newest = newest.max(version);
                (returned, newest)
            })
            .collect();
        floors.insert(key, floor);
    }
    for e in events {
        if let Event::Read {
            key,
            started,
            version,
        } = *e
        {
            report.reads += 1;
            let Some(floor) = floors.get(&key) else {
                continue;
            };
            // The last write whose invalidation returned before this read started.
            let before = floor.partition_point(|&(returned, _)| returned < started);
            if before == 0 {
                continue;
            }
            let (returned, newest) = floor[before - 1];
            if version < newest {
                report.stale.push(format!(
                    "key {key}: a read that started at tick {started} returned version \
                     {version}, but version {newest} had been written and invalidated by tick \
                     {returned}"
                ));
            }
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
