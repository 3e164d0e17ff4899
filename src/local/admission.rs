//! Which reads may enter a full store: TinyLFU's doorkeeper, in front of moka's own admission.
//!
//! While a store has room, every read is kept. Once it is full, a key's first miss only marks
//! it here and its read goes to Redis as a plain GET; a second miss of the key within the
//! window reads the TTL too and is kept (moka's TinyLFU then decides whether it stays). A scan
//! or a one-off read of a full tier so costs what a read without the tier costs, instead of a
//! PTTL, a clone and an insert that moka's admission would throw away at once: in
//! `scripts/instructions_per_hit.sh`, a miss of a full 16-entry tier over 1,000 keys cost
//! about 29,700 client instructions before this doorkeeper and 17,250 after, against 15,970
//! for the same read without `.local`.
//!
//! Marks are two bits of a Bloom filter (`bloom`); the filter is cleared after
//! `window` marks (two per entry of the bound), so a key counts as seen again only if it came
//! back within about that many first-time misses. A false positive only keeps a read that would otherwise not be kept:
//! admission never decides what is served, so it cannot make the tier stale.

use std::sync::atomic::{AtomicU64, Ordering};

use super::bloom::{self, Bloom};

/// Marks between clearings per unit of the store's bound. A key that comes back only after
/// many more first-time misses than the store holds entries would likely have been pushed out
/// before it came back; a window of twice the bound keeps the filter a fifth of the size
/// TinyLFU's sample (ten times) would take.
const WINDOW_PER_ENTRY: u64 = 2;
/// The fewest marks between clearings, so a tiny tier still recognises keys that come back.
const MIN_WINDOW: u64 = 64;
/// The most, so the bitset of a large (or weighed) tier stays at 128 KiB.
const MAX_WINDOW: u64 = 1 << 17;
/// Bits per mark of the window: with two probes, about 1.5 % false positives on average.
const BITS_PER_MARK: u64 = 8;

/// A doorkeeper for one store.
#[derive(Debug)]
pub(crate) struct Doorkeeper {
    marked: Bloom,
    marks: AtomicU64,
    window: u64,
}

impl Doorkeeper {
    /// A doorkeeper for a store bounded at `capacity` (entries, or total weight).
    pub(crate) fn new(capacity: u64) -> Doorkeeper {
        let window = capacity
            .saturating_mul(WINDOW_PER_ENTRY)
            .clamp(MIN_WINDOW, MAX_WINDOW);
        Doorkeeper {
            marked: Bloom::new(window * BITS_PER_MARK),
            marks: AtomicU64::new(0),
            window,
        }
    }

    /// Whether a key with this `hash` was marked since the last clearing; marks it if not.
    pub(crate) fn seen_before(&self, hash: u64) -> bool {
        if !self.marked.insert(hash) {
            return true;
        }
        if bloom::sampled(hash)
            && self.marks.fetch_add(bloom::SAMPLE, Ordering::Relaxed) + bloom::SAMPLE >= self.window
        {
            self.marks.store(0, Ordering::Relaxed);
            self.marked.clear();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::bloom::hash;
    use super::*;

    #[test]
    fn a_key_is_seen_on_its_second_miss() {
        let door = Doorkeeper::new(16);
        assert!(!door.seen_before(hash(b"a")));
        assert!(door.seen_before(hash(b"a")));
        assert!(!door.seen_before(hash(b"b")));
    }

    #[test]
    fn marks_are_forgotten_after_the_window() {
        let door = Doorkeeper::new(16);
        assert!(!door.seen_before(hash(b"key")));
        // Keys taken for seen (false positives) add no mark, and about one mark in
        // `SAMPLE` is counted: go on until the set clears.
        let mut i = 0u64;
        loop {
            let before = door.marks.load(Ordering::Relaxed);
            door.seen_before(hash(&i.to_be_bytes()));
            i += 1;
            if door.marks.load(Ordering::Relaxed) < before {
                break;
            }
            assert!(i < 4 * door.window, "no clearing after {i} keys");
        }
        assert!(!door.seen_before(hash(b"key")), "cleared after the window");
    }

    #[test]
    fn few_keys_of_a_scan_pass_for_seen() {
        let door = Doorkeeper::new(16);
        let passed = (0..100_000u64)
            .filter(|i| door.seen_before(hash(format!("scan:{i}").as_bytes())))
            .count();
        // About 1.5 % expected; a tenth of the keys would mean the bits do not spread.
        assert!(passed < 10_000, "{passed} of 100,000 first misses passed");
    }
}
