//! In-process coalescing: concurrent fetches of one key share one load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::backend::{Entry, Token};
use crate::value::Payload;

/// A fetch's identity: its entry (the rendered key and, for hash strategies, the field).
pub(crate) type FlightKey = Entry;

/// Where a flight is, as its waiters see it.
#[derive(Debug, Clone)]
pub(crate) enum FlightState {
    /// The leader is on Redis (taking the fill lease); its loader has not started. `attempt`:
    /// how many lease requests it has sent.
    Pending { attempt: u32 },
    /// The leader waits for another caller's fill, polling with lease requests; its loader has
    /// not started.
    Waiting { attempt: u32 },
    /// The leader's loader runs, under this fill lease (`None`: without one; no fill follows).
    Loading(Option<Token>),
    /// The loader returned this value, and the fill that may prove it fresh is on its way.
    Loaded(Arc<Payload>),
    /// The leader is done: this value, and what Redis said of it.
    Done(Arc<Payload>, Proof),
    /// The leader's loader failed: each waiter runs its own loader.
    Failed,
    /// The leader was dropped mid-flight; a waiter takes over, inheriting its fill lease.
    Abandoned(Option<Token>),
}

/// What Redis said of a leader's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proof {
    /// Redis holds it: the fill landed under the lease taken before the load, so no
    /// invalidation came between the lease and the fill.
    Held,
    /// The leader's lease request number `n` found it in Redis. That proves it fresh for a
    /// fetch that joined before request `n` was sent; one that joined later may have started
    /// after an invalidation that request's read predates.
    Read(u32),
    /// The fill was rejected: an invalidation (or a mutation, or the lease's expiry) came
    /// during the load, which may predate it.
    Voided,
    /// Nothing to tell: the leader loaded without a lease, or its fill failed.
    Unproven,
}

/// What a waiter may take from the flight it joined, by where the flight was when it joined.
/// A fetch must never return a value loaded before an invalidation that returned before the
/// fetch started (#13): a load that began before this fetch may be such a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trust {
    /// The load starts after this fetch started, or this fetch's own read saw the leader's
    /// lease still in place (no invalidation since the load began): the value is fresh for it
    /// as soon as the loader returns. A value the leader read from Redis is fresh for it if
    /// the request that read it was sent after the join: after request `after`.
    Early { after: u32 },
    /// The load began before this fetch: its value is fresh for it only if the fill lands,
    /// which proves that no invalidation came between the lease and the fill.
    Filled,
    /// The fill went out before this fetch joined, so it proves nothing for this fetch: start
    /// over once the flight ends.
    Reread,
}

/// What a waiter does when the flight it joined has told it enough.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Return this value.
    Value(Arc<Payload>),
    /// Run its own loader: the leader failed, or its value cannot be proven fresh.
    Load,
    /// Start over (a new flight, a new lease). `voided`: an invalidation raced the load.
    Retry { voided: bool },
    /// Lead, with the dropped leader's lease.
    TakeOver(Option<Token>),
}

impl Outcome {
    /// `None` while the flight has not told a waiter of this trust enough.
    fn of(state: &FlightState, trust: Trust) -> Option<Outcome> {
        Some(match state {
            FlightState::Pending { .. } | FlightState::Waiting { .. } | FlightState::Loading(_) => {
                return None
            }
            FlightState::Loaded(payload) => match trust {
                Trust::Early { .. } => Outcome::Value(payload.clone()),
                Trust::Filled | Trust::Reread => return None,
            },
            FlightState::Done(payload, proof) => match (trust, proof) {
                (Trust::Early { after }, Proof::Read(n)) if *n <= after => {
                    // The read may predate this fetch: read again.
                    Outcome::Retry { voided: false }
                }
                (Trust::Early { .. }, _) | (Trust::Filled, Proof::Held) => {
                    Outcome::Value(payload.clone())
                }
                (Trust::Filled, Proof::Voided) => Outcome::Retry { voided: true },
                (Trust::Filled, Proof::Unproven) => Outcome::Load,
                (Trust::Filled | Trust::Reread, Proof::Read(_)) | (Trust::Reread, _) => {
                    Outcome::Retry { voided: false }
                }
            },
            FlightState::Failed => Outcome::Load,
            FlightState::Abandoned(token) => Outcome::TakeOver(token.clone()),
        })
    }
}

type Map = Arc<Mutex<HashMap<FlightKey, Arc<watch::Sender<FlightState>>>>>;

#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Map,
}

pub(crate) enum Role {
    Leader(LeaderGuard),
    Waiter(Waiter),
}

/// A fetch that joined another's flight.
#[derive(Debug)]
pub(crate) struct Waiter {
    rx: watch::Receiver<FlightState>,
    trust: Trust,
}

impl Waiter {
    #[cfg(test)]
    pub(crate) fn trust(&self) -> Trust {
        self.trust
    }

    /// Takes the value as soon as the loader returns, whatever the flight's stage: for a fetch
    /// that could not read Redis (fail-open keeps one load per key while Redis is away; no
    /// invalidation can be seen then anyway), and for one that joins after a flight it was in
    /// ended (the flight it joins now began after it started).
    pub(crate) fn trust_early(mut self) -> Waiter {
        self.trust = Trust::Early { after: 0 };
        self
    }
}

fn lock(
    map: &Map,
) -> std::sync::MutexGuard<'_, HashMap<FlightKey, Arc<watch::Sender<FlightState>>>> {
    // The map only holds senders; a panic elsewhere cannot leave it inconsistent.
    crate::lock::lock(map)
}

impl Flights {
    /// Joins the flight for `key`, leading it if there is none. `saw_lease` tells whether this
    /// fetch's own read of Redis found the lease `token` in place. Only a leader copies the key.
    pub(crate) fn join(&self, key: &FlightKey, saw_lease: impl FnOnce(&Token) -> bool) -> Role {
        let mut map = lock(&self.map);
        if let Some(tx) = map.get(key) {
            let rx = tx.subscribe();
            // Read under the map's lock, after this fetch's read returned: a leader that was
            // still Pending here starts its loader later.
            let trust = match &*rx.borrow() {
                FlightState::Pending { attempt } | FlightState::Waiting { attempt } => {
                    Trust::Early { after: *attempt }
                }
                // No lease request follows the load.
                FlightState::Loading(Some(token)) if saw_lease(token) => {
                    Trust::Early { after: u32::MAX }
                }
                FlightState::Loading(_) => Trust::Filled,
                _ => Trust::Reread,
            };
            return Role::Waiter(Waiter { rx, trust });
        }
        let key = key.clone();
        let tx = Arc::new(watch::channel(FlightState::Pending { attempt: 0 }).0);
        map.insert(key.clone(), tx.clone());
        drop(map);
        Role::Leader(LeaderGuard {
            map: self.map.clone(),
            key,
            tx,
            lease: None,
            on_orphaned_lease: None,
            finished: false,
        })
    }

    /// Detaches the flight for `key`, so fetches that start from now on do not join a load
    /// that may have begun before an invalidation.
    pub(crate) fn forget(&self, key: &FlightKey) {
        lock(&self.map).remove(key);
    }
}

/// Waits until the flight has told this waiter what to do. With a `limit`, gives up (`None`)
/// once the limit has passed while the flight was on Redis for this waiter: while the leader
/// takes its lease, and, for a waiter that needs the fill's verdict, while the fill is on the
/// wire. The waiter has then had its response timeout's worth of Redis, through the leader.
/// The leader's loader, or its wait for another caller's fill, is not time on Redis: the
/// waiter waits for it, as the leader itself would.
pub(crate) async fn wait(waiter: Waiter, limit: Option<Duration>) -> Option<Outcome> {
    let Waiter { mut rx, trust } = waiter;
    let mut left = limit;
    if let Some(limit) = limit {
        let started = Instant::now();
        let off_redis = rx.wait_for(|s| !matches!(s, FlightState::Pending { .. }));
        if tokio::time::timeout(limit, off_redis).await.is_err() {
            return None;
        }
        left = Some(limit.saturating_sub(started.elapsed()));
    }
    let mut outcome = None;
    let told = rx
        .wait_for(|s| {
            outcome = Outcome::of(s, trust);
            outcome.is_some() || matches!(s, FlightState::Loaded(_))
        })
        .await
        .is_ok();
    if let Some(outcome) = outcome.take() {
        return Some(outcome);
    }
    if told {
        // Loaded, and this waiter needs the fill's verdict: the fill is on Redis.
        let verdict = rx.wait_for(|s| {
            outcome = Outcome::of(s, trust);
            outcome.is_some()
        });
        let told = match left {
            Some(left) => match tokio::time::timeout(left, verdict).await {
                Ok(told) => told.is_ok(),
                Err(_) => return None,
            },
            None => verdict.await.is_ok(),
        };
        if let (true, Some(outcome)) = (told, outcome) {
            return Some(outcome);
        }
    }
    // The leader's guard always reports before it goes; this is only for safety.
    Some(Outcome::TakeOver(None))
}

type ReleaseFn = Box<dyn FnOnce(Token) + Send + Sync>;

/// Held by the fetch that leads a flight. Dropping it unfinished (the fetch was cancelled)
/// hands its lease to a waiter, or releases the lease when nobody waits.
pub(crate) struct LeaderGuard {
    map: Map,
    key: FlightKey,
    tx: Arc<watch::Sender<FlightState>>,
    lease: Option<Token>,
    on_orphaned_lease: Option<ReleaseFn>,
    finished: bool,
}

impl LeaderGuard {
    /// Records the fill lease the leader holds, and how to release it if the leader is
    /// dropped with no one to hand it to.
    pub(crate) fn hold_lease(&mut self, token: Token, release: ReleaseFn) {
        self.lease = Some(token);
        self.on_orphaned_lease = Some(release);
    }

    /// The leader waits for another caller's fill: off Redis, its waiters wait for it however
    /// long that takes.
    pub(crate) fn waiting(&self) {
        self.tx.send_if_modified(|s| match *s {
            FlightState::Pending { attempt } => {
                *s = FlightState::Waiting { attempt };
                true
            }
            _ => false,
        });
    }

    /// Numbers the lease request the leader is about to send, so a fetch that joins from now
    /// on knows whether a value that request reads may predate it. Waiters are not woken: the
    /// number matters only to those who join.
    pub(crate) fn next_attempt(&self) -> u32 {
        let mut number = 0;
        self.tx.send_if_modified(|s| {
            if let FlightState::Pending { attempt } | FlightState::Waiting { attempt } = s {
                *attempt += 1;
                number = *attempt;
            }
            false
        });
        number
    }

    /// The leader's loader starts, under `lease` (or without one). Sent before the loader
    /// runs, so a fetch that joins later knows the load began before it.
    pub(crate) fn loading(&self, lease: Option<Token>) {
        self.tx.send_replace(FlightState::Loading(lease));
    }

    /// The leader holds no lease (another holds it, or Redis failed): nothing to hand over.
    pub(crate) fn drop_lease(&mut self) {
        self.lease = None;
        self.on_orphaned_lease = None;
    }

    /// Tells the waiters the loaded value before the fill: those that may take it at once
    /// need not wait for the fill's round trip. Sent before the fill goes out, so a fetch that
    /// joins from now on knows the fill proves nothing for it.
    pub(crate) fn loaded(&self, payload: Arc<Payload>) {
        self.tx.send_replace(FlightState::Loaded(payload));
    }

    pub(crate) fn finish(&mut self, state: FlightState) {
        self.finished = true;
        {
            let mut map = lock(&self.map);
            if map
                .get(&self.key)
                .is_some_and(|tx| Arc::ptr_eq(tx, &self.tx))
            {
                map.remove(&self.key);
            }
        }
        self.tx.send_replace(state);
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let lease = self.lease.take();
        let has_waiters = self.tx.receiver_count() > 0;
        if let (false, Some(token), Some(release)) =
            (has_waiters, lease.clone(), self.on_orphaned_lease.take())
        {
            release(token);
        }
        self.finish(FlightState::Abandoned(lease));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FlightKey {
        Entry {
            key: b"k".to_vec(),
            field: Vec::new(),
            shape: crate::kind::Shape::Str,
        }
    }

    fn payload(v: &[u8]) -> Arc<Payload> {
        Arc::new(Payload::Bytes(v.to_vec()))
    }

    fn join(flights: &Flights) -> Role {
        flights.join(&key(), |_| false)
    }

    fn lead(flights: &Flights) -> LeaderGuard {
        let Role::Leader(leader) = join(flights) else {
            panic!("first joiner must lead");
        };
        leader
    }

    fn wait_on(flights: &Flights) -> Waiter {
        let Role::Waiter(waiter) = join(flights) else {
            panic!("a later joiner must wait");
        };
        waiter
    }

    fn value_of(outcome: Option<Outcome>) -> Vec<u8> {
        match outcome {
            Some(Outcome::Value(p)) => match &*p {
                Payload::Bytes(b) => b.clone(),
                other => panic!("unexpected payload {other:?}"),
            },
            other => panic!("expected a value, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn second_joiner_waits_for_the_first() {
        let flights = Flights::default();
        let mut leader = lead(&flights);
        let waiter = wait_on(&flights);
        leader.finish(FlightState::Done(payload(b"v"), Proof::Held));
        assert_eq!(value_of(wait(waiter, None).await), b"v");
        assert!(matches!(join(&flights), Role::Leader(_)));
    }

    #[test]
    fn trust_follows_where_the_flight_was_at_the_join() {
        let flights = Flights::default();
        let leader = lead(&flights);
        assert_eq!(
            wait_on(&flights).trust(),
            Trust::Early { after: 0 },
            "pending"
        );
        leader.waiting();
        assert_eq!(
            wait_on(&flights).trust(),
            Trust::Early { after: 0 },
            "waiting"
        );
        let token = Token::new();
        leader.loading(Some(token.clone()));
        assert_eq!(wait_on(&flights).trust(), Trust::Filled, "loading");
        let Role::Waiter(saw) = flights.join(&key(), |t| *t == token) else {
            panic!("must wait");
        };
        assert_eq!(
            saw.trust(),
            Trust::Early { after: u32::MAX },
            "loading, own read saw the lease"
        );
        let Role::Waiter(other) = flights.join(&key(), |t| *t == Token::new()) else {
            panic!("must wait");
        };
        assert_eq!(other.trust(), Trust::Filled, "loading, another lease seen");
        leader.loaded(payload(b"v"));
        assert_eq!(wait_on(&flights).trust(), Trust::Reread, "fill sent");
        assert_eq!(
            wait_on(&flights).trust_early().trust(),
            Trust::Early { after: 0 }
        );
    }

    /// A value the leader's lease request read from Redis serves those who joined before that
    /// request went out; one who joined after it may have started after an invalidation the
    /// read predates (the request was on the wire when the key was invalidated): it reads again.
    #[tokio::test]
    async fn a_value_read_by_a_lease_request_serves_only_those_who_joined_before_it_was_sent() {
        let flights = Flights::default();
        let mut leader = lead(&flights);
        let before = wait_on(&flights);
        let n = leader.next_attempt();
        assert_eq!(n, 1);
        let after = wait_on(&flights);
        assert_eq!(after.trust(), Trust::Early { after: 1 });
        leader.finish(FlightState::Done(payload(b"v"), Proof::Read(n)));
        assert_eq!(value_of(wait(before, None).await), b"v");
        assert!(matches!(
            wait(after, None).await,
            Some(Outcome::Retry { voided: false })
        ));
    }

    /// The race of #13: a fetch joins a load that began before another process's invalidation
    /// (its read no longer sees the lease), and the fill is then rejected. It must not get the
    /// voided value; a fetch that joined before the load began may.
    #[tokio::test]
    async fn a_voided_load_is_retried_by_those_who_joined_after_it_began() {
        let flights = Flights::default();
        let mut leader = lead(&flights);
        let early = wait_on(&flights);
        leader.loading(Some(Token::new()));
        let late = wait_on(&flights);
        leader.loaded(payload(b"old"));
        let after_fill_sent = wait_on(&flights);
        leader.finish(FlightState::Done(payload(b"old"), Proof::Voided));
        assert_eq!(value_of(wait(early, None).await), b"old");
        assert!(matches!(
            wait(late, None).await,
            Some(Outcome::Retry { voided: true })
        ));
        assert!(matches!(
            wait(after_fill_sent, None).await,
            Some(Outcome::Retry { voided: false })
        ));
    }

    #[tokio::test]
    async fn a_landed_fill_serves_those_who_joined_during_the_load() {
        let flights = Flights::default();
        let mut leader = lead(&flights);
        leader.loading(Some(Token::new()));
        let late = wait_on(&flights);
        leader.loaded(payload(b"v"));
        leader.finish(FlightState::Done(payload(b"v"), Proof::Held));
        assert_eq!(value_of(wait(late, None).await), b"v");
    }

    #[tokio::test]
    async fn a_load_without_lease_serves_only_those_who_joined_before_it() {
        let flights = Flights::default();
        let mut leader = lead(&flights);
        let early = wait_on(&flights);
        leader.loading(None);
        let late = wait_on(&flights);
        let failed_read = wait_on(&flights).trust_early();
        leader.finish(FlightState::Done(payload(b"v"), Proof::Unproven));
        assert_eq!(value_of(wait(early, None).await), b"v");
        assert_eq!(value_of(wait(failed_read, None).await), b"v");
        assert!(matches!(wait(late, None).await, Some(Outcome::Load)));
    }

    #[tokio::test]
    async fn early_waiters_do_not_wait_for_the_fill() {
        let flights = Flights::default();
        let leader = lead(&flights);
        let early = wait_on(&flights);
        leader.loading(Some(Token::new()));
        leader.loaded(payload(b"v"));
        // The leader has not finished (its fill is on the wire): the early waiter has its value.
        assert_eq!(value_of(wait(early, None).await), b"v");
        drop(leader);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_needs_the_verdict_gives_up_on_a_slow_fill_after_its_limit() {
        let flights = Flights::default();
        let leader = lead(&flights);
        leader.loading(Some(Token::new()));
        let late = wait_on(&flights);
        let load = tokio::spawn(async move {
            // A long load is not time on Redis ...
            tokio::time::sleep(Duration::from_millis(500)).await;
            leader.loaded(payload(b"v"));
            // ... but a fill that never answers is.
            std::future::pending::<()>().await;
            drop(leader);
        });
        let before = tokio::time::Instant::now();
        assert!(wait(late, Some(Duration::from_millis(100))).await.is_none());
        assert_eq!(before.elapsed(), Duration::from_millis(600));
        load.abort();
    }

    #[tokio::test]
    async fn dropped_leader_hands_over_its_lease() {
        let flights = Flights::default();
        let mut leader = lead(&flights);
        let token = Token::new();
        leader.hold_lease(
            token.clone(),
            Box::new(|_| panic!("must not release: a waiter inherits")),
        );
        let waiter = wait_on(&flights);
        drop(leader);
        assert!(matches!(wait(waiter, None).await, Some(Outcome::TakeOver(Some(t))) if t == token));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_on_a_leader_still_on_redis_after_its_limit() {
        let flights = Flights::default();
        let _leader = lead(&flights);
        let waiter = wait_on(&flights);
        let before = tokio::time::Instant::now();
        assert!(wait(waiter, Some(Duration::from_millis(100)))
            .await
            .is_none());
        assert_eq!(before.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_waits_for_a_leader_that_loads_past_its_limit() {
        let flights = Flights::default();
        let mut leader = lead(&flights);
        let waiter = wait_on(&flights);
        leader.loading(None);
        let load = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            leader.finish(FlightState::Done(payload(b"v"), Proof::Unproven));
        });
        let got = wait(waiter, Some(Duration::from_millis(100))).await;
        assert_eq!(value_of(got), b"v");
        load.await.unwrap();
    }

    #[tokio::test]
    async fn dropped_leader_without_waiters_releases() {
        let flights = Flights::default();
        let mut leader = lead(&flights);
        let released = Arc::new(Mutex::new(None));
        let seen = released.clone();
        let token = Token::new();
        leader.hold_lease(
            token.clone(),
            Box::new(move |t| *seen.lock().unwrap() = Some(t)),
        );
        drop(leader);
        assert_eq!(released.lock().unwrap().clone(), Some(token));
    }
}
