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
//! Marks are two bits of a bitset (a Bloom filter with two hashes); the set is cleared after
//! `window` marks (ten per entry of the bound, as TinyLFU resets its counts), so a key counts
//! as seen again only if it came back within about that many first-time misses. A false positive only keeps a read that would otherwise not be kept:
//! admission never decides what is served, so it cannot make the tier stale.

use std::sync::atomic::{AtomicU64, Ordering};

/// Marks between clearings per unit of the store's bound: TinyLFU's sample of ten times the
/// cache's size. A key that comes back less often than that would not stay anyway.
const WINDOW_PER_ENTRY: u64 = 10;
/// The fewest marks between clearings, so a tiny tier still recognises keys that come back.
const MIN_WINDOW: u64 = 64;
/// The most, so the bitset of a large (or weighed) tier stays at 128 KiB.
const MAX_WINDOW: u64 = 1 << 17;
/// Bits per mark of the window: with two hashes, about 1.5 % false positives on average.
const BITS_PER_MARK: u64 = 8;

/// A doorkeeper for one store.
pub(crate) struct Doorkeeper {
    words: Box<[AtomicU64]>,
    marks: AtomicU64,
    window: u64,
}

impl std::fmt::Debug for Doorkeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorkeeper")
            .field("bits", &(self.words.len() * 64))
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Doorkeeper {
    /// A doorkeeper for a store bounded at `capacity` (entries, or total weight).
    pub(crate) fn new(capacity: u64) -> Doorkeeper {
        let window = capacity
            .saturating_mul(WINDOW_PER_ENTRY)
            .clamp(MIN_WINDOW, MAX_WINDOW);
        let bits = (window * BITS_PER_MARK).next_power_of_two();
        Doorkeeper {
            words: (0..bits / 64).map(|_| AtomicU64::new(0)).collect(),
            marks: AtomicU64::new(0),
            window,
        }
    }

    /// Whether a key with this `hash` was marked since the last clearing; marks it if not.
    pub(crate) fn seen_before(&self, hash: u64) -> bool {
        let bits = self.words.len() as u64 * 64;
        let mut seen = true;
        for half in [hash, hash.rotate_left(32)] {
            let bit = (half & 0xffff_ffff) % bits;
            let mask = 1u64 << (bit % 64);
            let word = &self.words[(bit / 64) as usize];
            // Reading first: a key that comes back often does not write a shared line.
            if word.load(Ordering::Relaxed) & mask == 0 {
                word.fetch_or(mask, Ordering::Relaxed);
                seen = false;
            }
        }
        if !seen && self.marks.fetch_add(1, Ordering::Relaxed) + 1 >= self.window {
            self.marks.store(0, Ordering::Relaxed);
            for word in self.words.iter() {
                word.store(0, Ordering::Relaxed);
            }
        }
        seen
    }
}

/// FNV-1a, finished so that both halves of the hash vary with every byte.
pub(crate) fn hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
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
        // Keys taken for seen (false positives) add no mark: go on until the set clears.
        let mut i = 0u64;
        while door.marks.load(Ordering::Relaxed) != 0 {
            door.seen_before(hash(&i.to_be_bytes()));
            i += 1;
            assert!(i < 2 * door.window, "no clearing after {i} keys");
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
