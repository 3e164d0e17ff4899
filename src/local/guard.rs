//! Which reads may enter the local tier: a read takes a [`Ticket`] before its request goes
//! out, and its value is kept only if no invalidation of its key, and no flush, came in
//! between.
//!
//! Keys map to stripes, each with an epoch that every invalidation of one of its keys bumps,
//! and a lock that makes "check the epoch, then insert" and "bump, then remove" exclusive.
//! Without the lock, a fill could check, an invalidation bump and remove, and the fill insert
//! the old value after the removal.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::lock::lock;

/// 1,024 stripes: two keys share one with odds 1 in 1,024, and then one's invalidation
/// voids the other's read in flight, which costs that read a place in the tier, no more.
const STRIPES: usize = 1024;

/// A read's place in the order of invalidations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    generation: u64,
    stripe: usize,
    epoch: u64,
}

struct Stripe {
    epoch: AtomicU64,
    lock: Mutex<()>,
}

pub(crate) struct Guard {
    /// Whether invalidations are being received now (tracking is confirmed on every node).
    live: AtomicBool,
    /// Bumped by every flush: a read that began before one is not kept.
    generation: AtomicU64,
    stripes: Box<[Stripe]>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("live", &self.is_live())
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// FNV-1a: keys are short, and this runs on every local lookup's miss and every invalidation.
fn stripe_of(key: &[u8]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h as usize) % STRIPES
}

impl Guard {
    pub(crate) fn new() -> Guard {
        Guard {
            live: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            stripes: (0..STRIPES)
                .map(|_| Stripe {
                    epoch: AtomicU64::new(0),
                    lock: Mutex::new(()),
                })
                .collect(),
        }
    }

    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Invalidations are received from now on. Called once tracking is confirmed, after the
    /// flush that followed the last loss.
    pub(crate) fn go_live(&self) {
        self.live.store(true, Ordering::Release);
    }

    /// A ticket for a read of `key` about to go out; `None` while invalidations may be lost.
    pub(crate) fn ticket(&self, key: &[u8]) -> Option<Ticket> {
        // The generation before `live`: a flush clears `live` before bumping it, so a ticket
        // either sees the flush's `live = false` or carries the old generation.
        let generation = self.generation.load(Ordering::Acquire);
        if !self.is_live() {
            return None;
        }
        let stripe = stripe_of(key);
        let epoch = self.stripes[stripe].epoch.load(Ordering::Acquire);
        Some(Ticket {
            generation,
            stripe,
            epoch,
        })
    }

    /// Runs `insert` if nothing invalidated the ticket's key or flushed since it was taken.
    /// Returns whether it ran.
    pub(crate) fn keep_if_current(&self, ticket: Ticket, insert: impl FnOnce()) -> bool {
        let stripe = &self.stripes[ticket.stripe];
        let _held = lock(&stripe.lock);
        let current = self.is_live()
            && self.generation.load(Ordering::Acquire) == ticket.generation
            && stripe.epoch.load(Ordering::Acquire) == ticket.epoch;
        if current {
            insert();
        }
        current
    }

    /// Voids the reads of `key` in flight, then runs `remove`, both before any read of the
    /// key can be kept again.
    pub(crate) fn invalidate(&self, key: &[u8], remove: impl FnOnce()) {
        let stripe = &self.stripes[stripe_of(key)];
        let _held = lock(&stripe.lock);
        stripe.epoch.fetch_add(1, Ordering::AcqRel);
        remove();
    }

    /// Invalidations may have been lost: stop serving, void every read in flight, then run
    /// `clear`. Returns whether the tier was live.
    pub(crate) fn flush(&self, clear: impl FnOnce()) -> bool {
        let was_live = self.live.swap(false, Ordering::AcqRel);
        self.generation.fetch_add(1, Ordering::AcqRel);
        // A keep that checked the old generation holds its stripe's lock until it inserted:
        // wait for each, so `clear` runs after every such insert.
        for stripe in self.stripes.iter() {
            drop(lock(&stripe.lock));
        }
        clear();
        was_live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Guard {
        let g = Guard::new();
        g.go_live();
        g
    }

    #[test]
    fn no_ticket_until_live() {
        let g = Guard::new();
        assert_eq!(g.ticket(b"k"), None);
        g.go_live();
        assert!(g.ticket(b"k").is_some());
    }

    #[test]
    fn a_read_with_no_invalidation_in_between_is_kept() {
        let g = live();
        let t = g.ticket(b"k").unwrap();
        assert!(g.keep_if_current(t, || {}));
    }

    #[test]
    fn an_invalidation_while_the_read_is_on_the_wire_voids_it() {
        let g = live();
        let t = g.ticket(b"k").unwrap();
        let mut removed = false;
        g.invalidate(b"k", || removed = true);
        assert!(removed);
        let mut inserted = false;
        assert!(!g.keep_if_current(t, || inserted = true));
        assert!(!inserted);
        // A read that starts after the invalidation is kept.
        let t = g.ticket(b"k").unwrap();
        assert!(g.keep_if_current(t, || {}));
    }

    #[test]
    fn a_flush_voids_every_read_in_flight_and_stops_tickets() {
        let g = live();
        let t = g.ticket(b"a").unwrap();
        let mut cleared = false;
        assert!(g.flush(|| cleared = true));
        assert!(cleared);
        assert_eq!(g.ticket(b"a"), None);
        g.go_live();
        assert!(!g.keep_if_current(t, || {}));
    }

    #[test]
    fn keys_spread_over_stripes() {
        let used: std::collections::HashSet<usize> = (0..10_000u32)
            .map(|i| stripe_of(format!("item:{i}").as_bytes()))
            .collect();
        assert!(used.len() > STRIPES * 9 / 10, "{} stripes used", used.len());
    }
}
