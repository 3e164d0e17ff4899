//! A concurrent blocked Bloom filter of two probes, the bits of the tier's two key filters
//! (`admission`, `presence`). Bits are set and read with relaxed atomics: either filter may be
//! wrong in either direction while it is cleared under a reader, and neither decides what is
//! served (see each), so a wrong answer costs a Redis read or a copy kept, never coherence.

use std::sync::atomic::{AtomicU64, Ordering};

/// A bitset probed at two bits of one 64-bit word per key: a lookup reads one cache line and
/// an insert writes at most one, where two probes anywhere in the set touched two. With 64
/// tasks on 2 threads each miss of a full tier marks a key in a filter both threads write, and
/// every line written moves between their caches.
pub(crate) struct Bloom {
    words: Box<[AtomicU64]>,
}

impl std::fmt::Debug for Bloom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bloom")
            .field("bits", &self.bits())
            .finish_non_exhaustive()
    }
}

/// The fewest bits of a filter: 32 cache lines, so that the threads of a small tier's misses
/// seldom write the same line (a filter of one line cost a full 16-entry tier's misses about a
/// tenth of their throughput with 64 tasks on 2 threads).
const MIN_BITS: u64 = 1 << 14;

/// Counts about one in `SAMPLE` events, by the key's hash: the counters of the filters are
/// shared by every thread, and all that matters is roughly when a window or epoch is full.
pub(crate) const SAMPLE: u64 = 8;

/// Whether the event of this `hash` is one of the counted.
pub(crate) fn sampled(hash: u64) -> bool {
    (hash >> 48).is_multiple_of(SAMPLE)
}

impl Bloom {
    /// A filter of at least `bits` bits (a power of two, at least `MIN_BITS`).
    pub(crate) fn new(bits: u64) -> Bloom {
        let bits = bits.max(MIN_BITS).next_power_of_two();
        Bloom {
            words: (0..bits / 64).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn bits(&self) -> u64 {
        self.words.len() as u64 * 64
    }

    /// The word of `hash`, and the mask of its two bits in it. The word comes from the low
    /// bits of the hash, the bits from its top twelve, so the two never depend on each other.
    fn probe(&self, hash: u64) -> (usize, u64) {
        let word = (hash as usize) & (self.words.len() - 1);
        let mask = (1u64 << (hash >> 58)) | (1u64 << ((hash >> 52) & 63));
        (word, mask)
    }

    /// Whether both bits of `hash` are set.
    pub(crate) fn contains(&self, hash: u64) -> bool {
        let (word, mask) = self.probe(hash);
        self.words[word].load(Ordering::Relaxed) & mask == mask
    }

    /// Sets both bits of `hash`; whether one of them was not set yet.
    pub(crate) fn insert(&self, hash: u64) -> bool {
        let (word, mask) = self.probe(hash);
        let word = &self.words[word];
        // Reading first: a key set already writes no shared line.
        if word.load(Ordering::Relaxed) & mask == mask {
            return false;
        }
        word.fetch_or(mask, Ordering::Relaxed);
        true
    }

    /// Clears every bit.
    pub(crate) fn clear(&self) {
        for word in self.words.iter() {
            word.store(0, Ordering::Relaxed);
        }
    }
}

/// A hash of the key, eight bytes at a step (a local hit computes it: FNV-1a's byte at a
/// step cost a local hit about 150 instructions more), finished with MurmurHash3's mixer so
/// that both halves of the hash vary with every byte. Not keyed: a key chosen to collide only
/// makes its own lookups go to moka or to Redis, which is where they go without these filters.
pub(crate) fn hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15 ^ key.len() as u64;
    let mut chunks = key.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(word))
            .wrapping_mul(0xff51_afd7_ed55_8ccd)
            .rotate_left(29);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(word)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_was_inserted_until_cleared() {
        let bloom = Bloom::new(64);
        assert!(!bloom.contains(hash(b"a")));
        assert!(bloom.insert(hash(b"a")));
        assert!(!bloom.insert(hash(b"a")), "set already");
        assert!(bloom.contains(hash(b"a")));
        bloom.clear();
        assert!(!bloom.contains(hash(b"a")));
    }

    #[test]
    fn few_false_positives_at_an_eighth_full() {
        let bloom = Bloom::new(8 * 4096);
        for i in 0..4096u64 {
            bloom.insert(hash(format!("in:{i}").as_bytes()));
        }
        let false_positives = (0..10_000u64)
            .filter(|i| bloom.contains(hash(format!("out:{i}").as_bytes())))
            .count();
        // About 5 % expected at the end of a window; a quarter would mean the bits clump.
        assert!(false_positives < 2_500, "{false_positives} of 10,000");
    }
}
