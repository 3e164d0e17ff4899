//! In-process coalescing: concurrent fetches of one key share one load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::backend::{Entry, Token};
use crate::value::Payload;

/// A fetch's identity: its entry (the rendered key and, for hash strategies, the field).
pub(crate) type FlightKey = Entry;

/// How a flight ended, as its waiters see it.
#[derive(Debug, Clone)]
pub(crate) enum FlightState {
    /// The leader is on Redis (taking the fill lease).
    Pending,
    /// The leader is done with Redis for now: it loads, or waits for another caller's fill.
    Loading,
    /// The leader loaded (or read) this value.
    Done(Arc<Payload>),
    /// The leader's loader failed: each waiter runs its own loader.
    Failed,
    /// The leader was dropped mid-flight; a waiter takes over, inheriting its fill lease.
    Abandoned(Option<Token>),
}

type Map = Arc<Mutex<HashMap<FlightKey, Arc<watch::Sender<FlightState>>>>>;

#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Map,
}

pub(crate) enum Role {
    Leader(LeaderGuard),
    Waiter(watch::Receiver<FlightState>),
}

fn lock(
    map: &Map,
) -> std::sync::MutexGuard<'_, HashMap<FlightKey, Arc<watch::Sender<FlightState>>>> {
    // The map only holds senders; a panic elsewhere cannot leave it inconsistent.
    crate::lock::lock(map)
}

impl Flights {
    /// Joins the flight for `key`, leading it if there is none (only a leader copies the key).
    pub(crate) fn join(&self, key: &FlightKey) -> Role {
        let mut map = lock(&self.map);
        if let Some(tx) = map.get(key) {
            return Role::Waiter(tx.subscribe());
        }
        let key = key.clone();
        let tx = Arc::new(watch::channel(FlightState::Pending).0);
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

/// Waits until the flight ends. With a `limit`, gives up (`None`) once the limit has passed
/// while the leader was still on Redis: the waiter has had its response timeout's worth of
/// Redis, through the leader. Once the leader loads (or waits for another caller's fill), the
/// waiter waits for it, as the leader itself would.
pub(crate) async fn wait(
    mut rx: watch::Receiver<FlightState>,
    limit: Option<Duration>,
) -> Option<FlightState> {
    if let Some(limit) = limit {
        let off_redis = rx.wait_for(|s| !matches!(s, FlightState::Pending));
        if tokio::time::timeout(limit, off_redis).await.is_err() {
            return None;
        }
    }
    Some(
        match rx
            .wait_for(|s| !matches!(s, FlightState::Pending | FlightState::Loading))
            .await
        {
            Ok(state) => state.clone(),
            // The leader's guard always reports before it goes; this is only for safety.
            Err(_) => FlightState::Abandoned(None),
        },
    )
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

    /// The leader is done with Redis for now (it loads, or waits for another caller's fill):
    /// its waiters wait for it however long that takes.
    pub(crate) fn off_redis(&self) {
        self.tx.send_if_modified(|s| {
            let was_pending = matches!(s, FlightState::Pending);
            if was_pending {
                *s = FlightState::Loading;
            }
            was_pending
        });
    }

    /// The leader holds no lease (another holds it, or Redis failed): nothing to hand over.
    pub(crate) fn drop_lease(&mut self) {
        self.lease = None;
        self.on_orphaned_lease = None;
    }

    /// Tells the waiters how the flight ends before it has: the leader still has work to do
    /// (filling Redis) that they need not wait for. Fetches that join from now on get the
    /// same.
    pub(crate) fn publish(&self, state: FlightState) {
        self.tx.send_replace(state);
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

    #[tokio::test]
    async fn second_joiner_waits_for_the_first() {
        let flights = Flights::default();
        let Role::Leader(mut leader) = flights.join(&key()) else {
            panic!("first joiner must lead");
        };
        let Role::Waiter(rx) = flights.join(&key()) else {
            panic!("second joiner must wait");
        };
        leader.finish(FlightState::Done(Arc::new(Payload::Bytes(b"v".to_vec()))));
        assert!(
            matches!(wait(rx, None).await, Some(FlightState::Done(p)) if *p == Payload::Bytes(b"v".to_vec()))
        );
        assert!(matches!(flights.join(&key()), Role::Leader(_)));
    }

    #[tokio::test]
    async fn dropped_leader_hands_over_its_lease() {
        let flights = Flights::default();
        let Role::Leader(mut leader) = flights.join(&key()) else {
            panic!("first joiner must lead");
        };
        let token = Token::new();
        leader.hold_lease(
            token.clone(),
            Box::new(|_| panic!("must not release: a waiter inherits")),
        );
        let Role::Waiter(rx) = flights.join(&key()) else {
            panic!("second joiner must wait");
        };
        drop(leader);
        assert!(
            matches!(wait(rx, None).await, Some(FlightState::Abandoned(Some(t))) if t == token)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_on_a_leader_still_on_redis_after_its_limit() {
        let flights = Flights::default();
        let Role::Leader(_leader) = flights.join(&key()) else {
            panic!("first joiner must lead");
        };
        let Role::Waiter(rx) = flights.join(&key()) else {
            panic!("second joiner must wait");
        };
        let before = tokio::time::Instant::now();
        assert!(wait(rx, Some(Duration::from_millis(100))).await.is_none());
        assert_eq!(before.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_waits_for_a_leader_that_loads_past_its_limit() {
        let flights = Flights::default();
        let Role::Leader(mut leader) = flights.join(&key()) else {
            panic!("first joiner must lead");
        };
        let Role::Waiter(rx) = flights.join(&key()) else {
            panic!("second joiner must wait");
        };
        leader.off_redis();
        let load = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            leader.finish(FlightState::Done(Arc::new(Payload::Bytes(b"v".to_vec()))));
        });
        let got = wait(rx, Some(Duration::from_millis(100))).await;
        assert!(matches!(got, Some(FlightState::Done(_))), "{got:?}");
        load.await.unwrap();
    }

    #[tokio::test]
    async fn dropped_leader_without_waiters_releases() {
        let flights = Flights::default();
        let Role::Leader(mut leader) = flights.join(&key()) else {
            panic!("first joiner must lead");
        };
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
