//! The local tier: decoded values of [`Strategy::local`](crate::Strategy::local) strategies in
//! process memory, kept coherent with Redis by Redis itself.
//!
//! - `store`: one strategy's moka cache, and the typed operations its spec carries;
//! - `admission`: which reads may enter a full store;
//! - `presence`: which keys a store may hold, so a miss skips moka's lookup;
//! - `bloom`: the Bloom filter both of them use;
//! - `guard`: which reads may be kept (per-key epochs, flushes);
//! - `tracking`: the connections that receive Redis's invalidations, and their losses.
//!
//! A value enters the tier only from a read of Redis that took a ticket while the tier was
//! live and saw no invalidation of its key, nor a flush, before its reply was handled.
//! Fills are not kept: this process's own fill is announced back to it (BCAST tells every
//! tracking connection of every write), so the next read keeps the value instead.

mod admission;
mod bloom;
mod guard;
mod presence;
mod store;
mod tracking;

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use redis::PushInfo;

use self::guard::Guard;
pub(crate) use self::guard::{Expiry, Ticket};
use self::store::AnyStore;
pub(crate) use self::store::LocalSpec;
pub(crate) use self::tracking::{Source, Timing};
use crate::fx_hash::FxHasher;
use crate::lock::{lock, read, write};

/// Called on each local hit, which awaits nothing: a task looping on local hits would hold
/// its worker thread, and the tracking connections' readers (which apply Redis's
/// invalidations) might not run. Every 8th hit on a thread takes a unit of tokio's cooperative
/// budget, so such a loop yields about every 1,000 hits. (A unit on every hit, a yield every
/// 128, cost about 30 % of a local hit's mean time in `benches/local`.)
pub(crate) async fn pace() {
    thread_local! {
        static HITS: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
    }
    let n = HITS.with(|hits| {
        let n = hits.get().wrapping_add(1);
        hits.set(n);
        n
    });
    if n.is_multiple_of(8) {
        tokio::task::consume_budget().await;
    }
}

/// A strategy's store is found by its key template and version.
type StoreId = (&'static str, u32);

/// The stores by id. Every local lookup finds its store here, so the map hashes with FxHash's
/// step, 8 bytes at a time, rather than SipHash (a third of a local hit's own work): its keys
/// are the strategies' templates, consts of the program, not input that could be chosen to
/// collide.
type Stores = HashMap<StoreId, Arc<dyn AnyStore>, BuildHasherDefault<FxHasher>>;

/// The first stores registered are also found here, without a lock: a local hit's lookup then
/// costs no read-modify-write of a lock shared by every thread.
const UNLOCKED: usize = 16;

/// The local tier of one [`Cache`](crate::Cache) and its clones.
#[derive(Debug)]
pub(crate) struct LocalTier {
    shared: Arc<TierShared>,
    source: Source,
    timing: Timing,
    started: OnceLock<()>,
}

/// What the tier and its tracking connections share.
pub(crate) struct TierShared {
    guard: Guard,
    stores: RwLock<Stores>,
    /// The first [`UNLOCKED`] stores again, in the order registered, each set once under the
    /// write lock of `stores`.
    unlocked: [OnceLock<(StoreId, Arc<dyn AnyStore>)>; UNLOCKED],
    /// The key prefixes tracked: those of the local strategies used so far.
    prefixes: Mutex<Vec<Vec<u8>>>,
    /// Wakes the tracking task: a loss, or a new prefix.
    wake: Arc<tokio::sync::Notify>,
    /// The current session and whether it has lost a connection; see [`TierShared::go_live`].
    session: Mutex<SessionState>,
    invalidations: AtomicU64,
    flushes: AtomicU64,
    fallback: AtomicBool,
}

#[derive(Debug, Default)]
struct SessionState {
    id: u64,
    lost: bool,
}

impl std::fmt::Debug for TierShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TierShared")
            .field("guard", &self.guard)
            .field("stores", &read(&self.stores).len())
            .finish_non_exhaustive()
    }
}

/// The tier's own counters, for [`Stats`](crate::Stats).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TierStats {
    pub(crate) invalidations: u64,
    pub(crate) flushes: u64,
    pub(crate) fallback: bool,
}

impl LocalTier {
    pub(crate) fn new(source: Source, timing: Timing) -> LocalTier {
        LocalTier {
            shared: Arc::new(TierShared {
                guard: Guard::new(),
                stores: RwLock::new(Stores::default()),
                unlocked: std::array::from_fn(|_| OnceLock::new()),
                prefixes: Mutex::new(Vec::new()),
                wake: Arc::new(tokio::sync::Notify::new()),
                session: Mutex::new(SessionState::default()),
                invalidations: AtomicU64::new(0),
                flushes: AtomicU64::new(0),
                fallback: AtomicBool::new(false),
            }),
            source,
            timing,
            started: OnceLock::new(),
        }
    }

    /// The value of `key` if the tier holds it and is live.
    pub(crate) fn get<V>(&self, id: StoreId, spec: &LocalSpec<V>, key: &[u8]) -> Option<V> {
        if !self.shared.guard.is_live() {
            return None;
        }
        self.with_store(id, |store| spec.get(store, key))?
    }

    /// Runs `f` on the store of strategy `id`, if it is registered.
    fn with_store<R>(&self, id: StoreId, f: impl FnOnce(&dyn AnyStore) -> R) -> Option<R> {
        let unlocked = &self.shared.unlocked;
        for (sid, store) in unlocked.iter().map_while(OnceLock::get) {
            if sid.1 == id.1 && sid.0 == id.0 {
                return Some(f(&**store));
            }
        }
        // With a slot still free, the store is not registered (yet).
        unlocked[UNLOCKED - 1].get()?;
        let stores = read(&self.shared.stores);
        Some(f(&**stores.get(&id)?))
    }

    /// The value under the key `render` writes into a buffer reused by this thread, if the
    /// tier holds it and is live; `render` returns `false` for a key that does not render.
    /// A miss gives back the key rendered, if it was, so the read that follows does not
    /// render it again.
    pub(crate) fn get_with<V>(
        &self,
        id: StoreId,
        spec: &LocalSpec<V>,
        render: impl FnOnce(&mut Vec<u8>) -> bool,
    ) -> Result<V, Option<Vec<u8>>> {
        thread_local! {
            static KEY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        if !self.shared.guard.is_live() {
            return Err(None);
        }
        KEY.with(|key| {
            // Another borrow on this thread cannot be live (nothing here re-enters), but a
            // failed borrow only costs the local lookup, never a panic.
            let Ok(mut key) = key.try_borrow_mut() else {
                return Err(None);
            };
            key.clear();
            let found = if render(&mut key) {
                self.get(id, spec, &key).ok_or_else(|| Some(key.clone()))
            } else {
                Err(None)
            };
            // A huge key (from a caller's input, refused as too long) is not kept around.
            if key.capacity() > 4096 {
                *key = Vec::new();
            }
            found
        })
    }

    /// A ticket for a read of `key` that may enter the tier; registers the strategy (and
    /// starts tracking its prefix) on first use. `None` while the tier is not live, and for a
    /// read its store does not admit (full, and the key not missed before): such a read is
    /// a plain GET, as without the tier.
    pub(crate) fn ticket<V>(
        &self,
        id: StoreId,
        spec: &LocalSpec<V>,
        prefix: impl FnOnce() -> Vec<u8>,
        key: &[u8],
    ) -> Option<Ticket> {
        if !self.shared.guard.is_live() {
            // Registered all the same: the tracking task starts with the first use.
            if !read(&self.shared.stores).contains_key(&id) {
                self.register(id, spec, &prefix());
            }
            return None;
        }
        match self.with_store(id, |store| store.admits(key)) {
            Some(true) => {}
            Some(false) => return None,
            None => self.register(id, spec, &prefix()),
        }
        self.shared.guard.ticket(key)
    }

    /// Keeps `value` until `until` if nothing invalidated `key` since `ticket` was taken, and
    /// remembers the entry's expiry if the read learned it ([`Ticket::learned`]).
    pub(crate) fn keep<V>(
        &self,
        id: StoreId,
        spec: &LocalSpec<V>,
        ticket: Ticket,
        key: &[u8],
        value: &V,
        until: std::time::Instant,
    ) -> bool {
        if until <= std::time::Instant::now() {
            return false;
        }
        // Found as a lookup finds it: no read lock shared by every thread on a kept miss.
        self.with_store(id, |store| {
            self.shared
                .guard
                .keep_if_current(ticket, || spec.keep(store, key, value, until))
        })
        .unwrap_or(false)
    }

    /// Drops the local copies of `key` (this process changed it) and voids reads in flight.
    pub(crate) fn forget(&self, key: &[u8]) {
        self.shared.forget(key);
    }

    pub(crate) fn stats(&self) -> TierStats {
        let s = &self.shared;
        TierStats {
            invalidations: s.invalidations.load(Ordering::Relaxed),
            flushes: s.flushes.load(Ordering::Relaxed),
            fallback: s.fallback.load(Ordering::Relaxed),
        }
    }

    /// Entries held by the store of the strategy `id` (tests, and the memory benchmark).
    pub(crate) fn entries(&self, id: StoreId) -> u64 {
        read(&self.shared.stores)
            .get(&id)
            .map_or(0, |s| s.entries())
    }

    /// Whether local copies may be served now.
    pub(crate) fn is_live(&self) -> bool {
        self.shared.guard.is_live()
    }

    fn register<V>(&self, id: StoreId, spec: &LocalSpec<V>, prefix: &[u8]) {
        {
            let mut stores = write(&self.shared.stores);
            if stores.contains_key(&id) {
                return;
            }
            let store = spec.make();
            stores.insert(id, store.clone());
            self.shared.guard.add_room(spec.capacity);
            if let Some(slot) = self.shared.unlocked.iter().find(|s| s.get().is_none()) {
                // Slots are set only here, under the write lock: this one is still free.
                let _ = slot.set((id, store));
            }
        }
        let changed = {
            let mut prefixes = lock(&self.shared.prefixes);
            let before = prefixes.clone();
            prefixes.push(prefix.to_vec());
            *prefixes = tracking::minimal(std::mem::take(&mut *prefixes));
            *prefixes != before
        };
        if self.started.set(()).is_ok() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let tier = Arc::downgrade(&self.shared);
                runtime.spawn(tracking::run(tier, self.source.clone(), self.timing));
            }
        } else if changed {
            // The session tracks the old prefixes only: a read of the new strategy now could
            // be kept with nothing to announce its key's changes. Start over with all of them.
            let current = lock(&self.shared.session).id;
            self.shared
                .lose(current, "a new local strategy's prefix is tracked", true);
        }
    }
}

impl TierShared {
    fn prefixes(&self) -> Vec<Vec<u8>> {
        lock(&self.prefixes).clone()
    }

    fn forget(&self, key: &[u8]) {
        let stores = read(&self.stores);
        self.guard.invalidate(key, || {
            for store in stores.values() {
                store.invalidate(key);
            }
        });
    }

    /// Starts a new session: pushes and losses from older connections are ignored from now.
    fn begin_session(&self) -> u64 {
        let mut session = lock(&self.session);
        session.id += 1;
        session.lost = false;
        session.id
    }

    /// Goes live unless the session already lost a connection. Returns whether it did.
    fn go_live(&self, id: u64) -> bool {
        let session = lock(&self.session);
        if session.id != id || session.lost {
            return false;
        }
        self.guard.go_live();
        tracing::debug!("cacheobj: local tier live");
        true
    }

    /// Ends the session `id`: flushes the tier, so nothing is served from it until tracking
    /// is confirmed again, and wakes the tracking task if `wake` (unless it is the one
    /// calling). A session already lost is not flushed twice.
    fn lose(&self, id: u64, why: &str, wake: bool) {
        let mut session = lock(&self.session);
        if session.id != id || session.lost {
            return;
        }
        session.lost = true;
        let stores = read(&self.stores);
        let was_live = self.guard.flush(|| {
            for store in stores.values() {
                store.clear();
            }
        });
        if was_live {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("cacheobj: local tier flushed: {why}; reads go to Redis until tracking is confirmed again");
        }
        drop(stores);
        drop(session);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Redis was flushed (`FLUSHDB`, `FLUSHALL`): every copy goes, and since the connection
    /// that said so is still tracking, the tier stays live.
    fn flushed(&self, id: u64) {
        let session = lock(&self.session);
        let stores = read(&self.stores);
        self.guard.flush(|| {
            for store in stores.values() {
                store.clear();
            }
        });
        self.flushes.fetch_add(1, Ordering::Relaxed);
        if session.id == id && !session.lost {
            self.guard.go_live();
        }
    }

    /// Handles a push from a tracking connection of session `id`.
    fn on_push(&self, id: u64, push: PushInfo) {
        if tracking::is_disconnection(&push) {
            self.lose(id, "a tracking connection closed", true);
        } else if tracking::is_invalidate(&push) {
            match tracking::invalidated_keys(&push) {
                Some(keys) => {
                    self.invalidations
                        .fetch_add(keys.len() as u64, Ordering::Relaxed);
                    for key in keys {
                        self.forget(key);
                    }
                }
                None => {
                    self.invalidations.fetch_add(1, Ordering::Relaxed);
                    self.flushed(id);
                }
            }
        }
    }

    /// The deployment cannot track: the tier stays off, said once.
    fn fall_back(&self, why: &str) {
        if !self.fallback.swap(true, Ordering::Relaxed) {
            tracing::warn!("cacheobj: local tier off, reads go to Redis: {why}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;
    use std::time::Duration;

    #[test]
    fn every_store_is_found_past_the_unlocked_ones() {
        let second = Duration::from_secs(1);
        let timing = Timing {
            connect: second,
            response: second,
            heartbeat: second,
            retry: second,
        };
        let tier = LocalTier::new(Source::Unavailable("test"), timing);
        tier.shared.guard.go_live();
        let spec = LocalSpec::<u64>::new(10);
        let ids: Vec<StoreId> = (0..UNLOCKED as u32 + 4)
            .map(|i| (&*Box::leak(format!("t{i}:<id>").into_boxed_str()), i % 3))
            .collect();
        // Registering a strategy with a new prefix flushes the tier until tracking covers
        // it: register them all first; no task tracks here, so go live again by hand.
        for &id in &ids {
            let _ = tier.ticket(id, &spec, || id.0.as_bytes().to_vec(), b"k");
            tier.shared.guard.go_live();
        }
        for (n, &id) in ids.iter().enumerate() {
            let ticket = tier.ticket(id, &spec, || id.0.as_bytes().to_vec(), b"k");
            let ticket = ticket.expect("live");
            assert!(tier.keep(
                id,
                &spec,
                ticket,
                b"k",
                &(n as u64),
                std::time::Instant::now() + Duration::from_secs(60)
            ));
        }
        for (n, &id) in ids.iter().enumerate() {
            assert_eq!(tier.get(id, &spec, b"k"), Some(n as u64), "store {n}");
            // Found by content, as the map finds it.
            let copy: &'static str = Box::leak(id.0.to_owned().into_boxed_str());
            assert_eq!(tier.get((copy, id.1), &spec, b"k"), Some(n as u64));
        }
        assert_eq!(tier.get(("other:<id>", 0), &spec, b"k"), None);
    }

    #[test]
    fn store_ids_hash_by_content_not_address() {
        let build = BuildHasherDefault::<FxHasher>::default();
        let literal: &'static str = "item:<item_id>";
        let copy: &'static str = Box::leak(String::from(literal).into_boxed_str());
        assert_ne!(literal.as_ptr(), copy.as_ptr());
        assert_eq!(
            build.hash_one((literal, 3u32)),
            build.hash_one((copy, 3u32))
        );
        assert_ne!(
            build.hash_one((literal, 3u32)),
            build.hash_one((literal, 4u32))
        );
        // Templates sharing their first 8 bytes, or differing only past them, still differ.
        assert_ne!(
            build.hash_one(("item:<item_id>", 0u32)),
            build.hash_one(("item:<item_id>:x", 0u32))
        );
    }
}
