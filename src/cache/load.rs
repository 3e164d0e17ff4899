//! The load driver: after a miss, one load per key in this process (the others await it), one
//! fill lease per key across processes, and the fill; and XFetch's early refresh.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Cache;
use crate::backend::{Acquire, Entry, Marker, Token};
use crate::budget::Budget;
use crate::error::Error;
use crate::flight::{self, FlightKey, FlightState, LeaderGuard, Outcome, Proof, Role};
use crate::key::CacheKey;
use crate::kind::Kind;
use crate::lock::lock;
use crate::observe::Op;
use crate::stats::Event;
use crate::strategy::Strategy;
use crate::value::{CacheValue, Payload};

/// One fetch's load after a miss: what [`Cache::load_coalesced`] and [`Cache::lead`] work on.
pub(super) struct Load<'a, V, K, Kd> {
    pub(super) op: &'a Op<'a>,
    pub(super) strategy: &'a Strategy<V, K, Kd>,
    pub(super) entry: &'a Entry,
    /// The cached value did not decode: take the lease over it.
    pub(super) force: bool,
    /// The read reached Redis; when it did not, load without a lease.
    pub(super) redis_ok: bool,
    /// The lease marker the fetch's read found, if any: whose load it may trust at once.
    pub(super) seen: Option<Marker>,
    /// What is left of the fetch's time on Redis.
    pub(super) budget: Budget,
}

/// How often a fetch starts over after the load it joined could not be proven fresh for it,
/// before it runs its own loader. Each retry needs an invalidation to race a load.
const MAX_RETRIES: u32 = 2;

/// Removes a key from the set of refreshing keys when the refresh ends or is cancelled.
struct RefreshGuard<'a> {
    set: &'a Mutex<HashSet<FlightKey>>,
    key: &'a FlightKey,
}

impl Drop for RefreshGuard<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(self.key);
    }
}

impl Cache {
    pub(super) async fn load_coalesced<V, K, Kd, F, Fut, E>(
        &self,
        mut load: Load<'_, V, K, Kd>,
        loader: F,
    ) -> Result<V, E>
    where
        K: CacheKey,
        Kd: Kind,
        V: CacheValue<Kd>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let inner = &*self.inner;
        let (op, entry) = (load.op, load.entry);
        let mut inherited = None;
        let mut retries = 0;
        // Once this fetch has seen a flight end, any flight it joins began after it did (the
        // ended one left the map before it said so): its value is fresh for this fetch.
        let mut newer = false;
        loop {
            let seen = &load.seen;
            let saw_lease = |token: &Token| seen.as_ref().is_some_and(|m| m.is_of(token));
            match inner.flights.join(entry, saw_lease) {
                Role::Leader(mut guard) => {
                    return self.lead(load, &mut guard, inherited, loader).await;
                }
                Role::Waiter(waiter) => {
                    op.bump(Event::CoalescedWait);
                    let waiter = if load.redis_ok && !newer {
                        waiter
                    } else {
                        waiter.trust_early()
                    };
                    let outcome = load.budget.wait(|left| flight::wait(waiter, left)).await;
                    let Some(outcome) = outcome else {
                        // The flight is still on Redis after this fetch's response timeout:
                        // load rather than wait on Redis longer (the leader fills).
                        op.fault(&load.budget.timed_out());
                        return op.load(loader).await;
                    };
                    match outcome {
                        Outcome::Value(payload) => {
                            match inner.decode(op, entry, &payload, load.strategy.value_codec()) {
                                Some(value) => return Ok(value),
                                None => return op.load(loader).await,
                            }
                        }
                        Outcome::Load => return op.load(loader).await,
                        Outcome::TakeOver(token) => (inherited, newer) = (token, true),
                        Outcome::Retry { voided } => {
                            if voided {
                                op.bump(Event::VoidedJoin);
                            }
                            retries += 1;
                            if retries > MAX_RETRIES {
                                // Invalidations keep racing the loads: this fetch's own load
                                // cannot predate its start.
                                return op.load(loader).await;
                            }
                            // What this fetch read is out of date: the new flight's lease
                            // request reads the entry again.
                            (inherited, load.force, load.seen) = (None, false, None);
                            newer = true;
                        }
                    }
                }
            }
        }
    }

    /// Takes the fill lease (or waits for another holder's fill), loads, and fills.
    async fn lead<V, K, Kd, F, Fut, E>(
        &self,
        load: Load<'_, V, K, Kd>,
        guard: &mut LeaderGuard,
        inherited: Option<Token>,
        loader: F,
    ) -> Result<V, E>
    where
        K: CacheKey,
        Kd: Kind,
        V: CacheValue<Kd>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let Load {
            op,
            strategy,
            entry,
            mut force,
            redis_ok,
            seen: _,
            mut budget,
        } = load;
        let inner = &*self.inner;
        let loc = entry.loc();
        let codec = strategy.value_codec();
        let mut lease = inherited;
        if lease.is_none() && redis_ok {
            let token = Token::new();
            // Armed before the request: if this fetch is dropped after Redis granted the
            // lease but before the reply is read, the lease is still released (or inherited).
            self.arm_release(guard, entry, token.clone());
            let deadline = Instant::now() + strategy.lease_time();
            let mut backoff = Duration::from_millis(2);
            let mut waiting = false;
            loop {
                if budget.is_spent() {
                    // This fetch has had its response timeout's worth of Redis: load without
                    // a lease rather than wait on it longer.
                    op.fault(&budget.timed_out());
                    break;
                }
                let attempt = guard.next_attempt();
                match budget
                    .spend(
                        inner
                            .backend
                            .acquire(loc, &token, strategy.lease_ms(), force),
                    )
                    .await
                {
                    Ok(Acquire::Acquired) => {
                        lease = Some(token);
                        break;
                    }
                    Ok(Acquire::Hit(payload)) => match inner.decode(op, entry, &payload, codec) {
                        Some(value) => {
                            if !waiting {
                                // Filled between our read and the lease attempt: still a hit.
                                op.bump(Event::Hit);
                            }
                            let proof = Proof::Read(attempt);
                            guard.finish(FlightState::Done(Arc::new(payload), proof));
                            return Ok(value);
                        }
                        None => force = true,
                    },
                    Ok(Acquire::Leased) => {
                        if self.is_orphan(entry) {
                            // Likely our own lease, left by a request that failed: its
                            // release is on the way, no fill is. Load without a lease.
                            break;
                        }
                        if !waiting {
                            waiting = true;
                            op.bump(Event::LeaseWait);
                            guard.waiting();
                        }
                        let now = Instant::now();
                        if now >= deadline {
                            op.bump(Event::LeaseTimeout);
                            break;
                        }
                        tokio::time::sleep(backoff.min(deadline - now)).await;
                        backoff = (backoff * 2).min(Duration::from_millis(50));
                    }
                    Err(e) => {
                        self.fault_and_release(op, &e, entry, token, strategy.lease_time());
                        break;
                    }
                }
            }
        }
        match &lease {
            Some(token) => self.arm_release(guard, entry, token.clone()),
            None => guard.drop_lease(),
        }
        guard.loading(lease.clone());
        match op.load(loader).await {
            Ok(value) => {
                match value.encode(codec) {
                    Ok(payload) => {
                        let payload = Arc::new(payload);
                        let mut proof = Proof::Unproven;
                        if let Some(token) = &lease {
                            // Waiters that may take the value now need not wait for the fill's
                            // round trip; the others wait for its verdict.
                            guard.loaded(payload.clone());
                            let ttl = strategy.fill_ttl_ms(value.is_negative());
                            match budget
                                .spend(inner.backend.fill(loc, token, &payload, ttl))
                                .await
                            {
                                Ok(true) => proof = Proof::Held,
                                Ok(false) => {
                                    proof = Proof::Voided;
                                    op.bump(Event::StaleFillRejected);
                                    tracing::debug!(key = %String::from_utf8_lossy(loc.key), "cacheobj: fill rejected: the key was invalidated or its lease expired during the load");
                                }
                                Err(e) => {
                                    // The fill may not have run: don't leave the lease behind.
                                    self.fault_and_release(
                                        op,
                                        &e,
                                        entry,
                                        token.clone(),
                                        strategy.lease_time(),
                                    );
                                }
                            }
                        }
                        guard.finish(FlightState::Done(payload, proof));
                    }
                    Err(e) => {
                        op.fault(&Error::Encode(e));
                        self.release_within(op, entry, lease, &mut budget, strategy.lease_time())
                            .await;
                        guard.finish(FlightState::Failed);
                    }
                }
                Ok(value)
            }
            Err(e) => {
                self.release_within(op, entry, lease, &mut budget, strategy.lease_time())
                    .await;
                guard.finish(FlightState::Failed);
                Err(e)
            }
        }
    }

    /// XFetch's winner reloads the value while everyone else keeps reading the current one.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn refresh_early<V, K, Kd, F, Fut, E>(
        &self,
        op: &Op<'_>,
        strategy: &Strategy<V, K, Kd>,
        entry: &Entry,
        current_payload: Payload,
        current: V,
        mut budget: Budget,
        loader: F,
    ) -> Result<V, E>
    where
        K: CacheKey,
        Kd: Kind,
        V: CacheValue<Kd>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let inner = &*self.inner;
        if !lock(&inner.refreshing).insert(entry.clone()) {
            return Ok(current);
        }
        let _guard = RefreshGuard {
            set: &inner.refreshing,
            key: entry,
        };
        op.bump(Event::EarlyRefresh);
        let Ok(value) = op.load(loader).await else {
            // The current value is still valid until it expires: serve it.
            return Ok(current);
        };
        let (Payload::Bytes(old), Ok(Payload::Bytes(new))) =
            (&current_payload, value.encode(strategy.value_codec()))
        else {
            return Ok(value);
        };
        let ttl = strategy.fill_ttl_ms(value.is_negative());
        match budget
            .spend(inner.backend.refill(entry.loc(), old, &new, ttl))
            .await
        {
            Ok(true) => {}
            Ok(false) => op.bump(Event::StaleFillRejected),
            Err(e) => op.fault(&e),
        }
        Ok(value)
    }
}
