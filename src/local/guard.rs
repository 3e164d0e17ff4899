//! Which reads may enter the local tier: a read takes a [`Ticket`] before its request goes
//! out, and its value is kept only if no invalidation of its key, and no flush, came in
//! between.
//!
//! Keys map to stripes, each with an epoch that every invalidation of one of its keys bumps,
//! and a lock that makes "check the epoch, then insert" and "bump, then remove" exclusive.
//! Without the lock, a fill could check, an invalidation bump and remove, and the fill insert
//! the old value after the removal.
//!
//! A stripe also remembers when the Redis entries of its keys expire, as the PTTL of a kept
//! read said, until an invalidation of the key or a flush. Every write to a tracked key, an
//! `EXPIRE` or `PERSIST` as much as a `SET` or a `DEL`, is announced, so while nothing was
//! announced the entry still ends when it did: the next read of the key, once its copy has
//! lived its local TTL, is a plain GET, not a GET and a PTTL (which doubles what Redis does for
//! a batch of reads: `benches/local`, "miss kept", 64 tasks).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::lock::{lock, try_lock};

/// 1,024 stripes: two keys share one with odds 1 in 1,024, and then one's invalidation
/// voids the other's read in flight, which costs that read a place in the tier, no more.
const STRIPES: usize = 1024;

/// The most expiry slots of a stripe (so 262,144 in all, 4 MiB), however large the stores.
const MAX_ENDS_PER_STRIPE: usize = 256;
/// The most expiry slots per entry of the stores' bounds: a stripe's slots double whenever
/// half are taken, up to this, so two keys seldom contend for one pair (with one slot per
/// entry, a fifth of the re-reads of 1,000 keys in `hit_loop kept-miss` sent a PTTL).
const ENDS_PER_ENTRY: u64 = 2;

/// When a key's Redis entry expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    At(Instant),
    Never,
}

impl Expiry {
    /// What a PTTL of `pttl_ms` (`None`: no expiry) says, for a request sent at `sent`: the
    /// entry ends no later than that.
    pub(crate) fn from_pttl(sent: Instant, pttl_ms: Option<u64>) -> Expiry {
        match pttl_ms {
            // Past what an `Instant` can hold (hundreds of millions of years): never.
            Some(ms) => sent
                .checked_add(Duration::from_millis(ms))
                .map_or(Expiry::Never, Expiry::At),
            None => Expiry::Never,
        }
    }

    /// Whether the entry has expired by now.
    pub(crate) fn is_past(self) -> bool {
        match self {
            Expiry::At(at) => at <= Instant::now(),
            Expiry::Never => false,
        }
    }
}

/// A read's place in the order of invalidations, and when its entry expires if that is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    generation: u64,
    stripe: usize,
    epoch: u64,
    tag: u64,
    expiry: Option<Expiry>,
    /// An expiry the read found out, to remember when it is kept.
    learned: Option<Expiry>,
    /// The stripe's keeps when the ticket was taken (`u64::MAX`: unknown).
    keeps: u64,
}

impl Ticket {
    /// When the key's entry expires, if a kept read of it said so and nothing changed it
    /// since: then the read need not ask for its TTL.
    pub(crate) fn expiry(&self) -> Option<Expiry> {
        self.expiry
    }

    /// The ticket of a read that found out when its entry expires: that expiry is what it
    /// keeps its value by, and is remembered for the key's next read if the value is kept.
    pub(crate) fn learned(self, expiry: Expiry) -> Ticket {
        Ticket {
            expiry: Some(expiry),
            learned: Some(expiry),
            ..self
        }
    }
}

struct Stripe {
    epoch: AtomicU64,
    lock: Mutex<Ends>,
}

/// The expiries a stripe remembers, by key tag, in pairs of slots (two-way set-associative):
/// a newer key pushes out an older one of its pair, which costs that key's next read a PTTL.
/// A slot is 16 bytes: the tag (0: empty) and the expiry in milliseconds from the guard's
/// `base`, rounded down so it is never later than the entry's ([`NEVER`]: none).
#[derive(Default)]
struct Ends {
    slots: Vec<(u64, u64)>,
    /// Slots taken.
    used: usize,
    /// Keeps in this stripe so far, and the tag and number of the last.
    keeps: u64,
    last_kept: (u64, u64),
}

/// The slot value of [`Expiry::Never`].
const NEVER: u64 = u64::MAX;

fn encode(expiry: Expiry, base: Instant) -> u64 {
    match expiry {
        Expiry::At(at) => {
            let ms = at.saturating_duration_since(base).as_millis();
            u64::try_from(ms).unwrap_or(NEVER - 1).min(NEVER - 1)
        }
        Expiry::Never => NEVER,
    }
}

fn decode(code: u64, base: Instant) -> Expiry {
    match code {
        NEVER => Expiry::Never,
        ms => base
            .checked_add(Duration::from_millis(ms))
            .map_or(Expiry::Never, Expiry::At),
    }
}

impl Ends {
    /// The first slot of the pair of `tag`.
    fn pair(&self, tag: u64) -> Option<usize> {
        let pairs = self.slots.len() / 2;
        // Past bit 0, which every tag has set. (Stripes come from another hash.)
        (pairs > 0).then(|| ((tag >> 1) % pairs as u64) as usize * 2)
    }

    fn find(&self, tag: u64) -> Option<usize> {
        let i = self.pair(tag)?;
        (i..i + 2).find(|&j| self.slots[j].0 == tag)
    }

    fn get(&self, tag: u64, base: Instant) -> Option<Expiry> {
        self.find(tag).map(|i| decode(self.slots[i].1, base))
    }

    /// Remembers `expiry` for `tag`, in at most `room` slots. The slots start as one pair
    /// and double whenever half of them are taken, so memory follows the keys remembered, not
    /// the stores' bounds.
    fn put(&mut self, tag: u64, expiry: Expiry, room: usize, base: Instant) {
        let room = room.max(2);
        if self.slots.is_empty() {
            self.slots = vec![(0, 0); 2];
        }
        if self.find(tag).is_none() && 2 * (self.used + 1) > self.slots.len() {
            let len = self.slots.len() * 2;
            if len <= room {
                self.rehash(len);
            }
        }
        let Some(i) = self.pair(tag) else {
            return;
        };
        let j = match self.find(tag).or_else(|| self.free(i)) {
            Some(j) => j,
            // Both taken: the tag's own bit picks which of the pair goes.
            None => i + (tag >> 63) as usize,
        };
        if self.slots[j].0 == 0 {
            self.used += 1;
        }
        self.slots[j] = (tag, encode(expiry, base));
    }

    fn free(&self, pair: usize) -> Option<usize> {
        (pair..pair + 2).find(|&j| self.slots[j].0 == 0)
    }

    /// Moves the slots into `len` slots; a tag whose new pair is taken is dropped.
    fn rehash(&mut self, len: usize) {
        let old = std::mem::replace(&mut self.slots, vec![(0, 0); len & !1]);
        self.used = 0;
        for (tag, code) in old.into_iter().filter(|&(tag, _)| tag != 0) {
            if let Some(j) = self.pair(tag).and_then(|i| self.free(i)) {
                self.slots[j] = (tag, code);
                self.used += 1;
            }
        }
    }

    fn forget(&mut self, tag: u64) {
        if let Some(i) = self.find(tag) {
            self.slots[i].0 = 0;
            self.used -= 1;
        }
    }

    fn clear(&mut self) {
        // The count goes on: a ticket taken before the flush must not see a keep of its key
        // made after it as its own.
        *self = Ends {
            keeps: self.keeps,
            ..Ends::default()
        };
    }

    /// Whether `tag` was kept since the stripe had made `keeps` keeps.
    fn kept_since(&self, tag: u64, keeps: u64) -> bool {
        self.last_kept.0 == tag && self.last_kept.1 > keeps
    }

    fn note_kept(&mut self, tag: u64) {
        self.keeps += 1;
        self.last_kept = (tag, self.keeps);
    }
}

pub(crate) struct Guard {
    /// Whether invalidations are being received now (tracking is confirmed on every node).
    live: AtomicBool,
    /// Bumped by every flush: a read that began before one is not kept.
    generation: AtomicU64,
    stripes: Box<[Stripe]>,
    /// The most expiry slots per stripe: the stores' bounds together, spread over the
    /// stripes.
    ends_per_stripe: AtomicUsize,
    /// The bound of every store registered, in entries (or weight).
    room: AtomicU64,
    /// Keyed, so a key cannot be chosen to pass for another and lend it its expiry.
    tags: std::hash::RandomState,
    /// What remembered expiries count from.
    base: Instant,
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
                    lock: Mutex::new(Ends::default()),
                })
                .collect(),
            ends_per_stripe: AtomicUsize::new(0),
            room: AtomicU64::new(0),
            tags: std::hash::RandomState::new(),
            base: Instant::now(),
        }
    }

    /// A store bounded at `capacity` registered: remember as many expiries more.
    pub(crate) fn add_room(&self, capacity: u64) {
        let add = |room: u64| room.saturating_add(capacity);
        let room = self
            .room
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| Some(add(r)))
            .map_or(u64::MAX, add);
        let pairs = room
            .saturating_mul(ENDS_PER_ENTRY)
            .div_ceil(2 * STRIPES as u64);
        let per_stripe = usize::try_from(pairs.saturating_mul(2))
            .unwrap_or(MAX_ENDS_PER_STRIPE)
            .min(MAX_ENDS_PER_STRIPE);
        self.ends_per_stripe.store(per_stripe, Ordering::Relaxed);
    }

    fn tag(&self, key: &[u8]) -> u64 {
        self.tags.hash_one(key) | 1
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
        let tag = self.tag(key);
        // Under the lock, as `invalidate` bumps the epoch and forgets the expiry: a ticket
        // never pairs an epoch with an expiry an invalidation removed before it. A stripe busy
        // now is not waited for (that would block this worker thread): the read asks for the
        // TTL instead.
        let ends = try_lock(&self.stripes[stripe].lock);
        let epoch = self.stripes[stripe].epoch.load(Ordering::Acquire);
        let (expiry, keeps) = ends.map_or((None, u64::MAX), |e| (e.get(tag, self.base), e.keeps));
        // Past, the entry is gone or going (its expiry is announced): ask again. So is an
        // expiry of 0 that stands for a PTTL that failed.
        let expiry = expiry.filter(|e| !e.is_past());
        Some(Ticket {
            generation,
            stripe,
            epoch,
            tag,
            expiry,
            learned: None,
            keeps,
        })
    }

    /// Runs `insert` if nothing invalidated the ticket's key or flushed since it was taken,
    /// and then remembers the expiry the read learned, if it did. Returns whether it ran.
    ///
    /// Tasks that read one key at once share one reply (`batch`), and each would insert it. A
    /// stripe busy now (another keep's insert, an invalidation) keeps nothing rather than block
    /// this worker thread, and a key kept by another read since this ticket was taken (so
    /// with nothing invalidated since: the same value) is not inserted again. The read's value
    /// is returned all the same. With 64 tasks over a full 16-entry tier (`hit_loop
    /// local-miss`), blocking on the stripe and inserting each reply cost about a fifth of the
    /// misses' throughput.
    pub(crate) fn keep_if_current(&self, ticket: Ticket, insert: impl FnOnce()) -> bool {
        let stripe = &self.stripes[ticket.stripe];
        let Some(mut ends) = try_lock(&stripe.lock) else {
            return false;
        };
        let current = self.is_live()
            && self.generation.load(Ordering::Acquire) == ticket.generation
            && stripe.epoch.load(Ordering::Acquire) == ticket.epoch;
        if !current {
            return false;
        }
        if !ends.kept_since(ticket.tag, ticket.keeps) {
            insert();
            ends.note_kept(ticket.tag);
        }
        if let Some(expiry) = ticket.learned {
            let room = self.ends_per_stripe.load(Ordering::Relaxed);
            ends.put(ticket.tag, expiry, room, self.base);
        }
        true
    }

    /// Voids the reads of `key` in flight and forgets when its entry expires, then runs
    /// `remove`, all before any read of the key can be kept again.
    pub(crate) fn invalidate(&self, key: &[u8], remove: impl FnOnce()) {
        let stripe = &self.stripes[stripe_of(key)];
        let mut ends = lock(&stripe.lock);
        stripe.epoch.fetch_add(1, Ordering::AcqRel);
        ends.forget(self.tag(key));
        remove();
    }

    /// Invalidations may have been lost: stop serving, void every read in flight, then run
    /// `clear`. Returns whether the tier was live.
    pub(crate) fn flush(&self, clear: impl FnOnce()) -> bool {
        let was_live = self.live.swap(false, Ordering::AcqRel);
        self.generation.fetch_add(1, Ordering::AcqRel);
        // A keep that checked the old generation holds its stripe's lock until it inserted:
        // wait for each, so `clear` runs after every such insert. What the stripes remember
        // of expiries goes too: announcements may have been lost.
        for stripe in self.stripes.iter() {
            lock(&stripe.lock).clear();
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
    fn an_expiry_is_remembered_until_its_key_is_invalidated_or_the_tier_flushed() {
        let g = live();
        g.add_room(10_000);
        // A whole number of milliseconds from the base: remembered exactly.
        let at = Expiry::At(g.base + Duration::from_secs(60));
        assert_eq!(g.ticket(b"k").unwrap().expiry(), None, "nothing read yet");
        // A read voided by an invalidation teaches nothing either.
        let t = g.ticket(b"k").unwrap();
        g.invalidate(b"k", || {});
        assert!(!g.keep_if_current(t.learned(at), || {}));
        assert_eq!(g.ticket(b"k").unwrap().expiry(), None);

        let t = g.ticket(b"k").unwrap();
        assert!(g.keep_if_current(t.learned(at), || {}));
        assert_eq!(g.ticket(b"k").unwrap().expiry(), Some(at));
        assert_eq!(g.ticket(b"other").unwrap().expiry(), None);
        g.invalidate(b"k", || {});
        assert_eq!(
            g.ticket(b"k").unwrap().expiry(),
            None,
            "an invalidation forgets it"
        );

        let t = g.ticket(b"k").unwrap();
        assert!(g.keep_if_current(t.learned(Expiry::Never), || {}));
        assert_eq!(g.ticket(b"k").unwrap().expiry(), Some(Expiry::Never));
        g.flush(|| {});
        g.go_live();
        assert_eq!(
            g.ticket(b"k").unwrap().expiry(),
            None,
            "a flush forgets them all"
        );

        let t = g.ticket(b"k").unwrap();
        assert!(g.keep_if_current(t.learned(Expiry::At(Instant::now())), || {}));
        assert_eq!(
            g.ticket(b"k").unwrap().expiry(),
            None,
            "an expiry past is asked again"
        );
    }

    #[test]
    fn reads_of_one_key_at_once_insert_it_once_and_a_later_read_again() {
        let g = live();
        let (first, second) = (g.ticket(b"k").unwrap(), g.ticket(b"k").unwrap());
        let inserts = std::cell::Cell::new(0);
        assert!(g.keep_if_current(first, || inserts.set(inserts.get() + 1)));
        assert!(g.keep_if_current(second, || inserts.set(inserts.get() + 1)));
        assert_eq!(
            inserts.get(),
            1,
            "the second read's reply was inserted again"
        );
        // A read that starts after that keep (its copy may have ended since) inserts.
        let later = g.ticket(b"k").unwrap();
        assert!(g.keep_if_current(later, || inserts.set(inserts.get() + 1)));
        assert_eq!(inserts.get(), 2);
        // So does one that began before the keep of another key of its stripe.
        let (mine, other) = (g.ticket(b"k").unwrap(), g.ticket(b"k").unwrap());
        let other = Ticket {
            tag: other.tag ^ 2,
            ..other
        };
        assert!(g.keep_if_current(other, || {}));
        assert!(g.keep_if_current(mine, || inserts.set(inserts.get() + 1)));
        assert_eq!(inserts.get(), 3);
    }

    #[test]
    fn room_for_expiries_grows_with_the_stores_and_stops_at_its_bound() {
        let g = Guard::new();
        assert_eq!(g.ends_per_stripe.load(Ordering::Relaxed), 0);
        g.add_room(16);
        assert_eq!(g.ends_per_stripe.load(Ordering::Relaxed), 2, "a pair");
        g.add_room(20_000);
        // 40,032 slots over 1,024 stripes: 20 pairs each.
        assert_eq!(g.ends_per_stripe.load(Ordering::Relaxed), 40);
        g.add_room(u64::MAX / 2);
        assert_eq!(
            g.ends_per_stripe.load(Ordering::Relaxed),
            MAX_ENDS_PER_STRIPE
        );
    }

    #[test]
    fn a_pair_holds_two_keys_and_a_third_pushes_one_out() {
        let mut ends = Ends::default();
        let (never, base) = (Expiry::Never, Instant::now());
        // Tags 3, 5 and 7 (odd, as every tag): the one pair of a two-slot stripe.
        ends.put(3, never, 2, base);
        ends.put(5, never, 2, base);
        assert_eq!(
            (ends.get(3, base), ends.get(5, base)),
            (Some(never), Some(never))
        );
        let at = Expiry::At(base + Duration::from_millis(1_500));
        ends.put(3, at, 2, base);
        assert_eq!(
            ends.get(3, base),
            Some(at),
            "a key's slot is updated in place"
        );
        ends.put(7, never, 2, base);
        assert_eq!(ends.get(7, base), Some(never));
        assert_eq!(
            [ends.get(3, base), ends.get(5, base)]
                .iter()
                .flatten()
                .count(),
            1,
            "one of the two went"
        );
        ends.forget(7);
        assert_eq!(ends.get(7, base), None);
    }

    #[test]
    fn slots_grow_with_the_keys_remembered_up_to_the_room() {
        let mut ends = Ends::default();
        let base = Instant::now();
        let tags: Vec<u64> = (0..64u64)
            .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
            .collect();
        for &tag in &tags[..8] {
            ends.put(tag, Expiry::Never, 1_024, base);
        }
        assert!(
            ends.slots.len() <= 64,
            "{} slots for 8 keys",
            ends.slots.len()
        );
        assert!(
            tags[..8].iter().all(|&t| ends.get(t, base).is_some()),
            "none lost while it grew"
        );
        for &tag in &tags {
            ends.put(tag, Expiry::Never, 16, base);
        }
        assert!(
            ends.slots.len() <= 16,
            "past the room: {} slots",
            ends.slots.len()
        );
        assert!(ends.get(tags[63], base).is_some(), "the newest is kept");
    }

    #[test]
    fn a_slot_never_holds_a_later_expiry_than_it_was_given() {
        let base = Instant::now();
        let at = base + Duration::from_micros(2_999_999);
        let Expiry::At(back) = decode(encode(Expiry::At(at), base), base) else {
            panic!("an expiry came back as none");
        };
        assert!(back <= at && at - back < Duration::from_millis(1));
        assert_eq!(decode(encode(Expiry::Never, base), base), Expiry::Never);
        // The longest PTTL is no panic, and comes back no later.
        let far = Expiry::from_pttl(base, Some(u64::MAX));
        assert!(
            matches!(decode(encode(far, base), base), Expiry::At(back) if back <= base + Duration::from_millis(u64::MAX))
        );
    }

    #[test]
    fn an_expiry_is_read_from_a_pttl_sent_at_an_instant() {
        let now = Instant::now();
        assert_eq!(Expiry::from_pttl(now, None), Expiry::Never);
        assert!(!Expiry::Never.is_past());
        let later = Expiry::from_pttl(now, Some(60_000));
        assert_eq!(later, Expiry::At(now + Duration::from_secs(60)));
        assert!(!later.is_past());
        assert!(Expiry::from_pttl(now, Some(0)).is_past());
    }

    #[test]
    fn keys_spread_over_stripes() {
        let used: std::collections::HashSet<usize> = (0..10_000u32)
            .map(|i| stripe_of(format!("item:{i}").as_bytes()))
            .collect();
        assert!(used.len() > STRIPES * 9 / 10, "{} stripes used", used.len());
    }
}
