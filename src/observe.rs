//! What a fetch tells the outside: the per-strategy counters, the `metrics` facade (with the
//! `metrics` feature) and the outcome of its `tracing` span.

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::fx_hash::FxHasher;
use crate::stats::{Counters, Event, Stats};

/// The counters of each strategy name. A fetch finds its strategy's by the address of the
/// name (a const's string): among the first [`SLOTS`] names seen without a lock, past them
/// under a read lock, with a cheap hash rather than by hashing the name. Names are few (one per
/// strategy const), so the maps stay small and a write happens once per name (and per copy of
/// its string).
#[derive(Debug, Default)]
pub(crate) struct ByStrategy {
    maps: RwLock<Maps>,
    /// The first addresses seen and their counters, each set once under the write lock: a
    /// fetch then finds its counters with no read-modify-write of a lock (or of an `Arc`'s
    /// count) shared by every thread.
    slots: [OnceLock<Slot>; SLOTS],
}

/// The address of a name, and its counters.
type Slot = ((usize, usize), Arc<Counters>);

/// Names (addresses of names) found without a lock.
const SLOTS: usize = 32;

/// A strategy's counters, as an [`Op`] holds them.
#[derive(Debug)]
enum Own<'a> {
    /// In one of the slots, which live as long as the [`ByStrategy`].
    Slot(&'a Counters),
    Shared(Arc<Counters>),
}

impl std::ops::Deref for Own<'_> {
    type Target = Counters;

    fn deref(&self) -> &Counters {
        match self {
            Own::Slot(c) => c,
            Own::Shared(c) => c,
        }
    }
}

#[derive(Debug, Default)]
struct Maps {
    by_name: HashMap<&'static str, Arc<Counters>>,
    by_address: HashMap<(usize, usize), Arc<Counters>, BuildHasherDefault<FxHasher>>,
}

fn address(name: &'static str) -> (usize, usize) {
    (name.as_ptr() as usize, name.len())
}

impl ByStrategy {
    /// The counters of `name` in a slot, if its address has one.
    fn in_slot(&self, name: &'static str) -> Option<&Counters> {
        let at = address(name);
        self.slots
            .iter()
            .map_while(OnceLock::get)
            .find(|(a, _)| *a == at)
            .map(|(_, c)| &**c)
    }

    fn of(&self, name: &'static str) -> Arc<Counters> {
        let maps = self.maps.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = maps.by_address.get(&address(name)) {
            return c.clone();
        }
        drop(maps);
        let mut maps = self.maps.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = maps.by_address.get(&address(name)) {
            return c.clone();
        }
        let counters = maps.by_name.entry(name).or_default().clone();
        maps.by_address.insert(address(name), counters.clone());
        if let Some(slot) = self.slots.iter().find(|s| s.get().is_none()) {
            // Slots are set only here, under the write lock, once per address: this one is
            // still free.
            let _ = slot.set((address(name), counters.clone()));
        }
        counters
    }

    fn own(&self, name: &'static str) -> Own<'_> {
        match self.in_slot(name) {
            Some(c) => Own::Slot(c),
            None => Own::Shared(self.of(name)),
        }
    }

    /// Runs `f` on the counters of `name`: for a local hit, which counts once and does not
    /// await.
    pub(crate) fn with<R>(&self, name: &'static str, f: impl FnOnce(&Counters) -> R) -> R {
        f(&self.own(name))
    }

    pub(crate) fn get(&self, name: &str) -> Option<Stats> {
        let maps = self.maps.read().unwrap_or_else(PoisonError::into_inner);
        maps.by_name.get(name).map(|c| c.snapshot())
    }

    /// Every name seen so far with its figures, sorted by name.
    pub(crate) fn all(&self) -> Vec<(&'static str, Stats)> {
        let maps = self.maps.read().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = maps
            .by_name
            .iter()
            .map(|(n, c)| (*n, c.snapshot()))
            .collect();
        all.sort_unstable_by_key(|(n, _)| *n);
        all
    }
}

/// A fetch's outcome, for its span. Events raise it; the highest wins, so a fetch that waited
/// for a lease and then hit is a lease wait, and one that failed open is a fail-open whatever
/// else happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Outcome {
    None = 0,
    Hit,
    Miss,
    Coalesced,
    LeaseWait,
    VoidedJoin,
    StaleFillRejected,
    FailOpen,
}

impl Outcome {
    const ALL: [Outcome; 8] = [
        Outcome::None,
        Outcome::Hit,
        Outcome::Miss,
        Outcome::Coalesced,
        Outcome::LeaseWait,
        Outcome::VoidedJoin,
        Outcome::StaleFillRejected,
        Outcome::FailOpen,
    ];

    fn of(event: Event) -> Outcome {
        match event {
            Event::Hit => Outcome::Hit,
            Event::Miss => Outcome::Miss,
            Event::CoalescedWait => Outcome::Coalesced,
            Event::LeaseWait => Outcome::LeaseWait,
            Event::VoidedJoin => Outcome::VoidedJoin,
            Event::StaleFillRejected => Outcome::StaleFillRejected,
            Event::Error => Outcome::FailOpen,
            Event::LocalHit => Outcome::Hit,
            Event::Load
            | Event::Undecodable
            | Event::LeaseTimeout
            | Event::EarlyRefresh
            | Event::LocalMiss => Outcome::None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Outcome::None => "none",
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::LeaseWait => "lease_wait",
            Outcome::VoidedJoin => "voided_join",
            Outcome::StaleFillRejected => "stale_fill_rejected",
            Outcome::FailOpen => "fail_open",
        }
    }
}

/// A fetch the local tier answered: a hit and a local hit (a snapshot's `hits` include
/// `local_hits`), counted without an [`Op`], whose set-up would cost the hit as much again.
pub(crate) fn local_hit(total: &Counters, by_strategy: &ByStrategy, name: &'static str) {
    total.add(Event::LocalHit, 1);
    by_strategy.with(name, |own| own.add(Event::LocalHit, 1));
    #[cfg(feature = "metrics")]
    metrics_out::event(name, Event::LocalHit, 1);
}

/// One fetch (or `fetch_many`) of one strategy: counts each event in the cache's totals and
/// in the strategy's own counters (and its metrics), and keeps the outcome for the span.
pub(crate) struct Op<'a> {
    total: &'a Counters,
    own: Own<'a>,
    name: &'static str,
    outcome: AtomicU8,
}

impl<'a> Op<'a> {
    pub(crate) fn new(
        total: &'a Counters,
        by_strategy: &'a ByStrategy,
        name: &'static str,
    ) -> Self {
        Op {
            total,
            own: by_strategy.own(name),
            name,
            outcome: AtomicU8::new(Outcome::None as u8),
        }
    }

    pub(crate) fn bump(&self, event: Event) {
        self.add(event, 1);
    }

    pub(crate) fn add(&self, event: Event, n: u64) {
        if n == 0 {
            return;
        }
        self.total.add(event, n);
        self.own.add(event, n);
        let outcome = Outcome::of(event) as u8;
        // Most events do not raise the outcome: skip the read-modify-write then.
        if outcome > self.outcome.load(Ordering::Relaxed) {
            self.outcome.fetch_max(outcome, Ordering::Relaxed);
        }
        #[cfg(feature = "metrics")]
        metrics_out::event(self.name, event, n);
    }

    /// The outcome so far, as the span's `outcome` field shows it.
    pub(crate) fn outcome(&self) -> &'static str {
        let rank = self.outcome.load(Ordering::Relaxed);
        Outcome::ALL
            .get(usize::from(rank))
            .copied()
            .unwrap_or(Outcome::None)
            .as_str()
    }

    /// A cache operation failed and the loader runs instead: counted and logged. The error
    /// names no key's values: `fault`s are logged at WARN.
    pub(crate) fn fault(&self, error: &Error) {
        self.bump(Event::Error);
        if error.is_unavailable() {
            tracing::debug!(%error, strategy = self.name, "cacheobj: cache unavailable; the loader runs instead");
        } else {
            tracing::warn!(error = %error, source = ?std::error::Error::source(error), strategy = self.name, "cacheobj: cache operation failed; the loader runs instead");
        }
    }

    /// A cached value did not decode. The key is rendered only at DEBUG: its values may be
    /// personal data.
    pub(crate) fn undecodable(&self, key: &[u8], error: &dyn std::error::Error) {
        self.bump(Event::Undecodable);
        tracing::warn!(strategy = self.name, %error, "cacheobj: cached value does not decode; treating it as a miss");
        tracing::debug!(strategy = self.name, key = %String::from_utf8_lossy(key), "cacheobj: the undecodable entry");
    }

    /// Runs a loader, counting the call and its time.
    pub(crate) async fn load<T, Fut: Future<Output = T>>(&self, loader: impl FnOnce() -> Fut) -> T {
        self.bump(Event::Load);
        let started = Instant::now();
        let out = loader().await;
        self.loaded(started.elapsed());
        out
    }

    fn loaded(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.total.add_load_micros(micros);
        self.own.add_load_micros(micros);
        tracing::Span::current().record("load_us", micros);
        #[cfg(feature = "metrics")]
        metrics_out::load(self.name, took);
    }
}

/// Records a fetch's outcome and time in its span when dropped, however the fetch ends.
pub(crate) struct Finish<'a> {
    span: &'a tracing::Span,
    op: &'a Op<'a>,
    started: Option<Instant>,
}

impl<'a> Finish<'a> {
    /// `started`: [`clock`] of `span`, when the fetch began.
    pub(crate) fn new(span: &'a tracing::Span, op: &'a Op<'a>, started: Option<Instant>) -> Self {
        Finish { span, op, started }
    }
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        finish(self.span, self.started, self.op.outcome());
    }
}

/// Starts a span's clock only when someone listens to it.
pub(crate) fn clock(span: &tracing::Span) -> Option<Instant> {
    (!span.is_disabled()).then(Instant::now)
}

/// Records a span's outcome and elapsed time, when someone listens to it.
pub(crate) fn finish(span: &tracing::Span, started: Option<Instant>, outcome: &'static str) {
    if let Some(started) = started {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        span.record("outcome", outcome);
        span.record("elapsed_us", micros);
    }
}

/// The span of a mutation: `op` is the method (`invalidate`, `incr`, `list_push`, ...).
pub(crate) fn mutation_span(op: &'static str, strategy: &'static str) -> tracing::Span {
    tracing::debug_span!(
        "cacheobj.mutate",
        op,
        strategy,
        outcome = tracing::field::Empty,
        elapsed_us = tracing::field::Empty,
    )
}

/// A mutation's outcome: `ok`, or `error` (the caller gets the error).
pub(crate) fn result_outcome<T, E>(result: &Result<T, E>) -> &'static str {
    if result.is_ok() {
        "ok"
    } else {
        "error"
    }
}

/// The `metrics` facade: one counter per [`Stats`] field and a load-time histogram, labelled
/// by strategy name.
#[cfg(feature = "metrics")]
mod metrics_out {
    use std::time::Duration;

    use crate::stats::Event;

    pub(super) fn event(strategy: &'static str, event: Event, n: u64) {
        let name = match event {
            Event::Hit => "cacheobj_hits_total",
            Event::Miss => "cacheobj_misses_total",
            Event::Load => "cacheobj_loads_total",
            Event::Error => "cacheobj_errors_total",
            Event::Undecodable => "cacheobj_undecodable_total",
            Event::CoalescedWait => "cacheobj_coalesced_waits_total",
            Event::LeaseWait => "cacheobj_lease_waits_total",
            Event::LeaseTimeout => "cacheobj_lease_timeouts_total",
            Event::StaleFillRejected => "cacheobj_stale_fills_rejected_total",
            Event::EarlyRefresh => "cacheobj_early_refreshes_total",
            Event::VoidedJoin => "cacheobj_voided_joins_total",
            Event::LocalHit => "cacheobj_local_hits_total",
            Event::LocalMiss => "cacheobj_local_misses_total",
        };
        metrics::counter!(name, "strategy" => strategy).increment(n);
        // A local hit is a hit: `Stats::hits` counts it, and so does this counter.
        if event == Event::LocalHit {
            metrics::counter!("cacheobj_hits_total", "strategy" => strategy).increment(n);
        }
    }

    pub(super) fn load(strategy: &'static str, took: Duration) {
        metrics::histogram!("cacheobj_load_seconds", "strategy" => strategy).record(took);
    }

    /// The process-wide invalidation queue's counters, which belong to no one strategy.
    pub(crate) fn invalidation(name: &'static str) {
        metrics::counter!(name).increment(1);
    }
}

#[cfg(feature = "metrics")]
pub(crate) use metrics_out::invalidation as invalidation_metric;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_name_one_set_of_counters_whatever_its_address() {
        let by = ByStrategy::default();
        let literal: &'static str = "item";
        let copy: &'static str = Box::leak(String::from("item").into_boxed_str());
        assert!(Arc::ptr_eq(&by.of(literal), &by.of(copy)));
        assert!(!Arc::ptr_eq(&by.of(literal), &by.of("other")));
        by.of(copy).add(Event::Hit, 2);
        assert_eq!(by.get("item").map(|s| s.hits), Some(2));
        let names: Vec<_> = by.all().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["item", "other"]);
    }

    #[test]
    fn names_past_the_slots_are_counted_as_well() {
        let (total, by) = (Counters::default(), ByStrategy::default());
        let names: Vec<&'static str> = (0..SLOTS + 8)
            .map(|i| &*Box::leak(format!("s{i:02}").into_boxed_str()))
            .collect();
        for (i, &name) in names.iter().enumerate() {
            for _ in 0..=i {
                Op::new(&total, &by, name).bump(Event::Miss);
            }
            local_hit(&total, &by, name);
        }
        for (i, &name) in names.iter().enumerate() {
            let own = by.get(name).unwrap_or_default();
            assert_eq!((own.misses, own.local_hits), (i as u64 + 1, 1), "{name}");
        }
        assert_eq!(total.snapshot().local_hits, names.len() as u64);
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let (total, by) = (Counters::default(), ByStrategy::default());
        std::thread::scope(|scope| {
            for _ in 0..24 {
                scope.spawn(|| {
                    for _ in 0..1_000 {
                        Op::new(&total, &by, "item").bump(Event::Hit);
                    }
                });
            }
        });
        assert_eq!(total.snapshot().hits, 24_000, "more threads than shards");
        assert_eq!(by.get("item").map(|s| s.hits), Some(24_000));
    }

    #[test]
    fn a_local_hit_is_a_hit_in_the_totals_and_the_strategys_figures() {
        let (total, by) = (Counters::default(), ByStrategy::default());
        Op::new(&total, &by, "item").bump(Event::Hit);
        local_hit(&total, &by, "item");
        local_hit(&total, &by, "item");
        let (all, own) = (total.snapshot(), by.get("item").unwrap_or_default());
        assert_eq!((all.hits, all.local_hits), (3, 2));
        assert_eq!((own.hits, own.local_hits), (3, 2));
    }

    #[test]
    fn the_weightiest_event_is_the_outcome() {
        let (total, by) = (Counters::default(), ByStrategy::default());
        let op = Op::new(&total, &by, "item");
        assert_eq!(op.outcome(), "none");
        op.bump(Event::Miss);
        op.bump(Event::Load);
        assert_eq!(op.outcome(), "miss");
        op.bump(Event::LeaseWait);
        op.bump(Event::Hit);
        assert_eq!(op.outcome(), "lease_wait");
        op.bump(Event::Error);
        assert_eq!(op.outcome(), "fail_open");
        assert_eq!(
            (total.snapshot().misses, by.get("item").map(|s| s.hits)),
            (1, Some(1))
        );
    }
}
