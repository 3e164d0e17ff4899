//! Circuit breaking: after a connection error or a timeout, requests skip Redis (and fail open
//! at once) until the retry interval has passed, instead of each waiting for the timeout.
//!
//! On a cluster the breaker is kept per hash slot: when one node dies, requests for its keys
//! skip Redis while the other nodes' keys keep being cached, so one node's failure does not
//! send every read to the database. (The first timeout on a node trips its key's slot; a
//! background `CLUSTER SLOTS` lookup then trips all the node's slots.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::backend::Loc;
use crate::clock::now_ms;
use crate::error::Error;

/// Hash slots in a Redis Cluster.
#[cfg(feature = "cluster")]
const SLOTS: usize = 16384;

/// Which cells a request answers to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope<'a> {
    /// Not tied to a key: a ping, or a batch on a standalone server. On a cluster it neither
    /// reads nor moves any cell.
    Any,
    /// One key.
    Key(&'a [u8]),
    /// Many keys in one request (MGET across slots): it is skipped while any of their slots is
    /// open, and a failure opens all of them, since it cannot tell which node failed.
    Keys(&'a [Loc<'a>]),
}

/// When each cell reopens to requests (milliseconds since the first call; 0: closed).
#[derive(Debug)]
pub(crate) struct Breaker {
    cells: Box<[AtomicU64]>,
    retry_ms: u64,
    /// When a trip was last logged at warn level, so a node's failure logs once, not once per
    /// cell.
    warned_ms: AtomicU64,
}

impl Breaker {
    /// One cell for a standalone server; one per hash slot (128 KiB) for a cluster.
    pub(crate) fn new(cluster: bool, retry_interval: Duration) -> Breaker {
        #[cfg(feature = "cluster")]
        let n = if cluster { SLOTS } else { 1 };
        #[cfg(not(feature = "cluster"))]
        let n = {
            let _ = cluster;
            1
        };
        Breaker {
            cells: (0..n).map(|_| AtomicU64::new(0)).collect(),
            retry_ms: retry_interval.as_millis().max(1) as u64,
            warned_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn retry_ms(&self) -> u64 {
        self.retry_ms
    }

    fn each(&self, scope: Scope<'_>, mut f: impl FnMut(&AtomicU64)) {
        if self.cells.len() == 1 {
            f(&self.cells[0]);
            return;
        }
        match scope {
            Scope::Any => {}
            Scope::Key(key) => f(&self.cells[self.cell_of(key)]),
            Scope::Keys(locs) => {
                for loc in locs {
                    f(&self.cells[self.cell_of(loc.key)]);
                }
            }
        }
    }

    #[cfg(feature = "cluster")]
    fn cell_of(&self, key: &[u8]) -> usize {
        usize::from(slot(key)) % self.cells.len()
    }

    #[cfg(not(feature = "cluster"))]
    fn cell_of(&self, _key: &[u8]) -> usize {
        0
    }

    /// Whether requests in `scope` skip Redis now.
    pub(crate) fn is_open(&self, scope: Scope<'_>) -> bool {
        let mut open = false;
        let mut now = None;
        self.each(scope, |cell| {
            let until = cell.load(Ordering::Relaxed);
            if until != 0 && *now.get_or_insert_with(now_ms) < until {
                open = true;
            }
        });
        open
    }

    /// A request in `scope` failed: skip Redis there for the retry interval.
    pub(crate) fn trip(&self, scope: Scope<'_>, error: &Error) {
        let now = now_ms();
        let until = now.saturating_add(self.retry_ms);
        let mut newly = false;
        self.each(scope, |cell| {
            newly |= cell.swap(until, Ordering::Relaxed) == 0
        });
        if newly {
            let warned = self.warned_ms.load(Ordering::Relaxed);
            if warned == 0 || now >= warned.saturating_add(self.retry_ms) {
                self.warned_ms.store(now.max(1), Ordering::Relaxed);
                tracing::warn!(%error, retry_in_ms = self.retry_ms, "cacheobj: redis failed; requests skip it until it is retried");
            }
        }
    }

    /// A request in `scope` succeeded.
    pub(crate) fn close(&self, scope: Scope<'_>) {
        let mut reopened = false;
        self.each(scope, |cell| {
            if cell.load(Ordering::Relaxed) != 0 && cell.swap(0, Ordering::Relaxed) != 0 {
                reopened = true;
            }
        });
        if reopened {
            tracing::info!("cacheobj: redis answers again");
        }
    }

    /// Opens every cell that holds a slot of `ranges` (inclusive slot ranges): all the slots
    /// of a node found to have failed.
    #[cfg(feature = "cluster")]
    pub(crate) fn trip_slots(&self, ranges: &[(u16, u16)]) {
        if self.cells.len() == 1 {
            return;
        }
        let until = now_ms().saturating_add(self.retry_ms);
        for &(start, end) in ranges {
            let (start, end) = (usize::from(start.min(end)), usize::from(start.max(end)));
            let last = end.min(self.cells.len() - 1);
            for cell in self.cells.iter().take(last + 1).skip(start) {
                cell.fetch_max(until, Ordering::Relaxed);
            }
        }
    }

    /// The share of cells open now, from 0 to 1: on a cluster, more than one node's worth
    /// suggests the connection itself is stuck rather than a node down.
    #[cfg(feature = "cluster")]
    pub(crate) fn open_share(&self) -> f64 {
        let now = now_ms();
        let open = self
            .cells
            .iter()
            .filter(|c| {
                let until = c.load(Ordering::Relaxed);
                until != 0 && now < until
            })
            .count();
        open as f64 / self.cells.len() as f64
    }
}

/// The cluster hash slot of a key: CRC16 (XMODEM) of its hash tag, or of the whole key.
#[cfg(feature = "cluster")]
pub(crate) fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .map(|close| &rest[..close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::Shape;

    fn loc(key: &[u8]) -> Loc<'_> {
        Loc {
            key,
            field: b"",
            shape: Shape::Str,
        }
    }

    #[test]
    fn a_standalone_breaker_has_one_cell() {
        let b = Breaker::new(false, Duration::from_secs(60));
        assert!(!b.is_open(Scope::Key(b"a")));
        b.trip(Scope::Key(b"a"), &Error::Unavailable);
        assert!(b.is_open(Scope::Key(b"b")));
        assert!(b.is_open(Scope::Any));
        b.close(Scope::Any);
        assert!(!b.is_open(Scope::Key(b"a")));
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn slots_match_redis() {
        // From the Redis Cluster specification.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        // The same as redis-rs's routing (which exposes its slot only through Debug).
        let keys: [&[u8]; 9] = [
            b"",
            b"{}",
            b"foo{}{bar}",
            b"{user1000}.following",
            b"user1000",
            b"app:item:42",
            b"app:{user:7}:profile",
            b"{{a}}",
            b"a}b{c",
        ];
        for key in keys {
            let theirs = format!("{:?}", redis::cluster_routing::Slot::for_key(key));
            assert_eq!(
                format!("Slot({})", slot(key)),
                theirs,
                "key {:?}",
                String::from_utf8_lossy(key)
            );
        }
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn a_cluster_breaker_opens_only_the_failed_keys_slot() {
        let b = Breaker::new(true, Duration::from_secs(60));
        // "foo" is in slot 12182, "bar" in 5061.
        b.trip(Scope::Key(b"foo"), &Error::Unavailable);
        assert!(b.is_open(Scope::Key(b"foo")));
        assert!(!b.is_open(Scope::Key(b"bar")));
        assert!(
            !b.is_open(Scope::Any),
            "a ping is never skipped on a cluster"
        );
        assert!(b.is_open(Scope::Keys(&[loc(b"bar"), loc(b"foo")])));
        assert!(!b.is_open(Scope::Keys(&[loc(b"bar")])));
        assert!((b.open_share() - 1.0 / 16384.0).abs() < 1e-9);
        b.trip(Scope::Keys(&[loc(b"bar")]), &Error::Unavailable);
        assert!(b.is_open(Scope::Key(b"bar")));
        b.close(Scope::Key(b"foo"));
        assert!(!b.is_open(Scope::Key(b"foo")));
        assert!(b.is_open(Scope::Key(b"bar")));
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn tripping_a_nodes_slots_opens_them_only() {
        let b = Breaker::new(true, Duration::from_secs(60));
        b.trip_slots(&[(0, 5460)]);
        assert!(b.is_open(Scope::Key(b"bar")), "slot 5061 is in 0..=5460");
        assert!(!b.is_open(Scope::Key(b"foo")), "slot 12182 is not");
        assert!((b.open_share() - 5461.0 / 16384.0).abs() < 1e-9);
        b.trip_slots(&[(16383, 16383), (9, 3)]); // out-of-order and edge ranges do not panic
    }
}
