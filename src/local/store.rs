//! One strategy's local store: decoded values in a moka cache, each with its own time to live.
//!
//! Strategies are generic over their value type, and `fetch` does not ask for `V: Clone +
//! 'static`; [`Strategy::local`](crate::Strategy::local) does. So the typed operations are
//! function pointers made there ([`LocalSpec`]), and the tier holds each store type-erased.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admission::Doorkeeper;
use super::bloom;
use super::presence::{Held, Presence};

/// What a strategy's `.local(..)` declared, with the typed operations on its store.
pub(crate) struct LocalSpec<V> {
    /// The bound: entries, or total weight when `weigher` is set.
    pub(crate) capacity: u64,
    pub(crate) weigher: Option<fn(&V) -> u32>,
    make: fn(&LocalSpec<V>) -> Arc<dyn AnyStore>,
    get: fn(&dyn AnyStore, &[u8]) -> Option<V>,
    keep: fn(&dyn AnyStore, &[u8], &V, Instant),
}

// Manual impls: a derive would ask `V: Clone`, and the spec holds no `V`.
impl<V> Clone for LocalSpec<V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<V> Copy for LocalSpec<V> {}

impl<V: Clone + Send + Sync + 'static> LocalSpec<V> {
    pub(crate) const fn new(capacity: u64) -> Self {
        LocalSpec {
            capacity,
            weigher: None,
            make: make::<V>,
            get: get::<V>,
            keep: keep::<V>,
        }
    }
}

impl<V> LocalSpec<V> {
    pub(crate) fn make(&self) -> Arc<dyn AnyStore> {
        (self.make)(self)
    }

    /// The value under `key`, cloned; `None` also when `store` holds another type's values
    /// (two strategies with one template and different types: neither is served locally).
    pub(crate) fn get(&self, store: &dyn AnyStore, key: &[u8]) -> Option<V> {
        (self.get)(store, key)
    }

    /// Keeps a clone of `value` until `until`.
    pub(crate) fn keep(&self, store: &dyn AnyStore, key: &[u8], value: &V, until: Instant) {
        (self.keep)(store, key, value, until)
    }
}

/// A store whatever its value type: what invalidations and flushes need.
pub(crate) trait AnyStore: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn invalidate(&self, key: &[u8]);
    fn clear(&self);
    /// Whether a read of `key` may be kept: always while the store has room; once it is full,
    /// only a key missed before (see `admission`).
    fn admits(&self, key: &[u8]) -> bool;
    /// Entries held, after pending evictions ran (for stats and tests).
    fn entries(&self) -> u64;
}

/// A value and when it must go: the earlier of the end of the strategy's local TTL and the
/// Redis entry's expiry. An instant, not a duration: moka starts an entry's life when its
/// insert runs, which can be long after the deadline was worked out (a stalled thread), and a
/// duration would then carry the copy past the entry's expiry.
#[derive(Clone)]
struct Slot<V> {
    value: V,
    until: Instant,
}

struct SlotTtl;

impl<V> moka::Expiry<Vec<u8>, Slot<V>> for SlotTtl {
    fn expire_after_create(&self, _: &Vec<u8>, slot: &Slot<V>, now: Instant) -> Option<Duration> {
        Some(slot.until.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &Vec<u8>,
        slot: &Slot<V>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.until.saturating_duration_since(now))
    }
}

struct Store<V> {
    cache: moka::sync::Cache<Vec<u8>, Slot<V>>,
    capacity: u64,
    /// Whether the store has been full since it was last cleared. moka counts an insert only
    /// once its pending work has run, so a store that lost entries to its own admission and
    /// eviction can look as if it had room again for a while, and keep every read meanwhile.
    /// Once full, it stays so, and new keys come in by the doorkeeper.
    full: AtomicBool,
    door: Doorkeeper,
    presence: Presence,
}

impl<V: Clone + Send + Sync + 'static> AnyStore for Store<V> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn invalidate(&self, key: &[u8]) {
        self.cache.invalidate(key);
    }

    fn clear(&self) {
        self.cache.invalidate_all();
        self.full.store(false, Ordering::Relaxed);
    }

    fn admits(&self, key: &[u8]) -> bool {
        if !self.full.load(Ordering::Relaxed) {
            if self.cache.weighted_size() < self.capacity {
                return true;
            }
            self.full.store(true, Ordering::Relaxed);
        }
        if !self.door.seen_before(bloom::hash(key)) {
            return false;
        }
        // moka weighs a newcomer against the entry it would push out by how often each was
        // read, counting misses; a miss that `presence` answered never reached it. Count this
        // one, so a key kept on its second miss is not turned away for never having been read.
        let _ = self.cache.get(key);
        true
    }

    fn entries(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}

fn make<V: Clone + Send + Sync + 'static>(spec: &LocalSpec<V>) -> Arc<dyn AnyStore> {
    let builder = moka::sync::Cache::builder()
        .max_capacity(spec.capacity)
        .expire_after(SlotTtl);
    let cache = match spec.weigher {
        Some(weigh) => builder
            .weigher(move |_: &Vec<u8>, slot: &Slot<V>| weigh(&slot.value))
            .build(),
        None => builder.build(),
    };
    Arc::new(Store {
        cache,
        capacity: spec.capacity,
        full: AtomicBool::new(false),
        door: Doorkeeper::new(spec.capacity),
        presence: Presence::new(spec.capacity),
    })
}

fn get<V: Clone + Send + Sync + 'static>(store: &dyn AnyStore, key: &[u8]) -> Option<V> {
    let store = store.as_any().downcast_ref::<Store<V>>()?;
    let hash = bloom::hash(key);
    let held = store.presence.held(hash);
    if held == Held::No {
        return None;
    }
    let slot = store.cache.get(key)?;
    if held == Held::Before {
        store.presence.note(hash);
    }
    Some(slot.value)
}

fn keep<V: Clone + Send + Sync + 'static>(
    store: &dyn AnyStore,
    key: &[u8],
    value: &V,
    until: Instant,
) {
    if let Some(store) = store.as_any().downcast_ref::<Store<V>>() {
        let slot = Slot {
            value: value.clone(),
            until,
        };
        // Noted first: a lookup that comes between finds the filters ahead of moka, not behind.
        store.presence.note(bloom::hash(key));
        store.cache.insert(key.to_vec(), slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_a_minute() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn keeps_gets_and_forgets_by_key() {
        let spec = LocalSpec::<String>::new(10);
        let store = spec.make();
        assert_eq!(spec.get(&*store, b"k"), None);
        spec.keep(&*store, b"k", &"v".to_string(), in_a_minute());
        assert_eq!(spec.get(&*store, b"k").as_deref(), Some("v"));
        store.invalidate(b"k");
        assert_eq!(spec.get(&*store, b"k"), None);
    }

    #[test]
    fn another_types_store_serves_nothing() {
        let store = LocalSpec::<String>::new(10).make();
        LocalSpec::<String>::new(10).keep(&*store, b"k", &"v".into(), in_a_minute());
        assert_eq!(LocalSpec::<u64>::new(10).get(&*store, b"k"), None);
    }

    #[test]
    fn the_bound_holds_under_a_scan() {
        let spec = LocalSpec::<u64>::new(100);
        let store = spec.make();
        for i in 0..10_000u64 {
            spec.keep(&*store, &i.to_be_bytes(), &i, in_a_minute());
        }
        assert!(store.entries() <= 100, "{} entries", store.entries());
    }

    #[test]
    fn a_weigher_bounds_total_weight() {
        let mut spec = LocalSpec::<String>::new(1_000);
        spec.weigher = Some(|s: &String| s.len() as u32);
        let store = spec.make();
        for i in 0..1_000u32 {
            spec.keep(&*store, &i.to_be_bytes(), &"x".repeat(100), in_a_minute());
        }
        assert!(
            store.entries() <= 10,
            "{} entries of weight 100",
            store.entries()
        );
    }

    #[test]
    fn a_full_store_admits_a_key_on_its_second_miss() {
        let spec = LocalSpec::<u64>::new(4);
        let store = spec.make();
        for i in 0..4u64 {
            assert!(store.admits(&i.to_be_bytes()), "room: every read is kept");
            spec.keep(&*store, &i.to_be_bytes(), &i, in_a_minute());
        }
        assert_eq!(store.entries(), 4);
        assert!(!store.admits(b"new"), "full: a first miss is only marked");
        assert!(store.admits(b"new"), "its second miss is kept");
    }

    #[test]
    fn a_slot_lives_no_longer_than_its_deadline() {
        let spec = LocalSpec::<u64>::new(10);
        let store = spec.make();
        spec.keep(&*store, b"k", &1, Instant::now());
        assert_eq!(spec.get(&*store, b"k"), None);
        // A deadline that passed before the insert ran (a stalled thread) keeps nothing
        // either: it is not a duration counted from the insert.
        let past = Instant::now();
        while Instant::now() == past {
            std::hint::spin_loop();
        }
        spec.keep(&*store, b"late", &1, past);
        assert_eq!(spec.get(&*store, b"late"), None);
    }
}
