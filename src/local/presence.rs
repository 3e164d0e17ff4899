//! Which keys a store may hold, so that a local miss skips moka's lookup: a miss of a full
//! tier then costs about what the read costs without one.
//!
//! moka's `get` of an absent key hashes it (SipHash), probes its table, and records the miss
//! for its frequency sketch, which then costs a share of moka's upkeep: about 970 client
//! instructions in `scripts/instructions_per_hit.sh`, where the read itself, sent to Redis
//! without a local tier, costs 16,000. Two Bloom filters answer "not held" for most absent
//! keys in about 70.
//!
//! Every key kept is set in the current filter, and a hit found only in the previous one is set
//! again. After `epoch` new keys the previous filter is cleared and becomes the current one, so
//! a key read or kept in the last two epochs is always found, and a filter never fills up with
//! keys moka has long since evicted. A key neither read nor kept for two epochs (a cold one) can
//! be missed while moka still holds it: its read goes to Redis, and keeping it sets it again.
//! Skipping a lookup never serves anything, so no answer of these filters can make the tier
//! stale.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::bloom::{self, Bloom};

/// Bits per key of an epoch: with two probes, about 5 % false positives at its end.
const BITS_PER_KEY: u64 = 8;
/// The fewest and most keys per epoch; the most keeps a filter at 1 MiB.
const MIN_EPOCH: u64 = 64;
const MAX_EPOCH: u64 = 1 << 20;

/// What the filters say of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// Not held: no need to look.
    No,
    /// Perhaps, as of this epoch.
    Now,
    /// Perhaps, as of the previous epoch only: set it again if it is found.
    Before,
}

/// The key filters of one store.
#[derive(Debug)]
pub(crate) struct Presence {
    filters: [Bloom; 2],
    /// Index of the current filter.
    current: AtomicUsize,
    /// Keys newly set in the current filter.
    set: AtomicU64,
    epoch: u64,
}

impl Presence {
    /// Filters for a store bounded at `capacity` (entries, or total weight).
    pub(crate) fn new(capacity: u64) -> Presence {
        let epoch = capacity.clamp(MIN_EPOCH, MAX_EPOCH);
        Presence {
            filters: [(); 2].map(|_| Bloom::new(epoch * BITS_PER_KEY)),
            current: AtomicUsize::new(0),
            set: AtomicU64::new(0),
            epoch,
        }
    }

    /// Whether the store may hold the key with this `hash`.
    pub(crate) fn held(&self, hash: u64) -> Held {
        let current = self.current.load(Ordering::Relaxed) & 1;
        if self.filters[current].contains(hash) {
            Held::Now
        } else if self.filters[current ^ 1].contains(hash) {
            Held::Before
        } else {
            Held::No
        }
    }

    /// Notes that the store holds (or is about to hold) the key with this `hash`.
    pub(crate) fn note(&self, hash: u64) {
        let current = self.current.load(Ordering::Relaxed) & 1;
        if self.filters[current].insert(hash)
            && bloom::sampled(hash)
            && self.set.fetch_add(bloom::SAMPLE, Ordering::Relaxed) + bloom::SAMPLE
                == self.epoch.next_multiple_of(bloom::SAMPLE)
        {
            // Only the thread that reached the epoch turns it over. A key noted meanwhile in
            // the filter being cleared is missed for a while: a Redis read, no stale copy.
            let previous = current ^ 1;
            self.filters[previous].clear();
            self.current.store(previous, Ordering::Relaxed);
            self.set.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::bloom::hash;
    use super::*;

    #[test]
    fn a_noted_key_is_held_and_others_mostly_not() {
        let presence = Presence::new(1_000);
        assert_eq!(presence.held(hash(b"k")), Held::No);
        presence.note(hash(b"k"));
        assert_eq!(presence.held(hash(b"k")), Held::Now);
        let held = (0..1_000u64)
            .filter(|i| presence.held(hash(&i.to_be_bytes())) != Held::No)
            .count();
        assert!(held < 50, "{held} of 1,000 never noted");
    }

    #[test]
    fn a_key_noted_in_each_epoch_stays_and_a_cold_one_goes() {
        let presence = Presence::new(64);
        presence.note(hash(b"hot"));
        presence.note(hash(b"cold"));
        for epoch in 0..4u64 {
            // About one new key in `SAMPLE` is counted: note until the epoch turns over.
            let turned = presence.current.load(Ordering::Relaxed);
            let mut i = 0u64;
            while presence.current.load(Ordering::Relaxed) == turned {
                presence.note(hash(format!("{epoch}:{i}").as_bytes()));
                i += 1;
                assert!(i < 100 * MIN_EPOCH, "epoch {epoch} never turned over");
            }
            // A hit found in the previous filter only is noted again, as the store does.
            match presence.held(hash(b"hot")) {
                Held::No => panic!("a key read every epoch was lost in epoch {epoch}"),
                Held::Before => presence.note(hash(b"hot")),
                Held::Now => {}
            }
        }
        assert_eq!(
            presence.held(hash(b"cold")),
            Held::No,
            "a key neither read nor kept for epochs"
        );
    }
}
