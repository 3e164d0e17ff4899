//! Redis Cluster failure handling: finding the node that serves a failed key, opening the
//! breaker for all of its slots, and starting over with a fresh cluster connection when the
//! connection itself is stuck.

#[cfg(feature = "cluster")]
use std::sync::atomic::Ordering;

#[cfg(feature = "cluster")]
use redis::{Cmd, Value};

#[cfg(feature = "cluster")]
use super::breaker::slot;
use super::breaker::Scope;
#[cfg(feature = "cluster")]
use super::conn::RedisConn;
#[cfg(feature = "cluster")]
use super::reply::into_i64;
use super::RedisBackend;
#[cfg(feature = "cluster")]
use crate::clock::now_ms;
#[cfg(feature = "cluster")]
use crate::lock::read;

/// From a `CLUSTER SLOTS` reply, every slot range served by the master that serves `slot`
/// (none if the reply does not say).
#[cfg(feature = "cluster")]
fn node_ranges(reply: &Value, slot: u16) -> Vec<(u16, u16)> {
    // Each entry: [start, end, [host, port, id, ...], replicas...].
    let entries: Vec<(u16, u16, &[Value])> = match reply {
        Value::Array(entries) => entries
            .iter()
            .filter_map(|entry| match entry {
                Value::Array(fields) if fields.len() >= 3 => {
                    let start = into_i64(&fields[0]).and_then(|n| u16::try_from(n).ok())?;
                    let end = into_i64(&fields[1]).and_then(|n| u16::try_from(n).ok())?;
                    let master = match &fields[2] {
                        // Host and port.
                        Value::Array(node) if node.len() >= 2 => &node[..2],
                        _ => return None,
                    };
                    Some((start, end, master))
                }
                _ => None,
            })
            .collect(),
        _ => return Vec::new(),
    };
    let Some((_, _, failed)) = entries.iter().find(|(s, e, _)| (*s..=*e).contains(&slot)) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter(|(_, _, master)| master == failed)
        .map(|&(s, e, _)| (s, e))
        .collect()
}

impl RedisBackend {
    /// After a timeout or connection failure on a cluster, starts over with a fresh cluster
    /// connection, at most once per retry interval.
    pub(super) fn maybe_reset_cluster(&self) {
        // One node down opens its own slots only (a third of them with three masters): that is
        // the node, and a fresh connection would not help. More than half open means the
        // connection itself is stuck.
        // (A stuck connection also fails the node lookup: see `trip_node_of`.)
        #[cfg(feature = "cluster")]
        if self.shared.breaker.open_share() > 0.5 {
            self.reset_cluster();
        }
    }

    /// Drops the cluster connection so the next request makes a fresh one, at most once per
    /// retry interval.
    #[cfg(feature = "cluster")]
    fn reset_cluster(&self) {
        if let RedisConn::Cluster(lazy) = &*read(&self.shared.conn) {
            let now = now_ms();
            let last = self.shared.last_rebuild_ms.load(Ordering::Relaxed);
            if last == 0 || now >= last.saturating_add(self.shared.breaker.retry_ms()) {
                self.shared
                    .last_rebuild_ms
                    .store(now.max(1), Ordering::Relaxed);
                lazy.reset();
            }
        }
    }

    /// On a cluster, after a request for a key failed: finds the node that serves the key
    /// (`CLUSTER SLOTS`, in the background, one lookup at a time) and, if that node does not
    /// answer a PING either, opens the breaker for all of its slots, so its other keys skip
    /// Redis at once instead of each slot paying a timeout first. If it answers, the failure
    /// was not the node's (a connection being rebuilt, a slow moment): its slot reopens.
    pub(super) fn trip_node_of(&self, scope: Scope<'_>) {
        #[cfg(feature = "cluster")]
        {
            let Scope::Key(key) = scope else {
                return;
            };
            if !self.shared.cluster {
                return;
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            if self.shared.node_lookup.swap(true, Ordering::AcqRel) {
                return;
            }
            let backend = self.clone();
            let key = key.to_vec();
            runtime.spawn(async move {
                let slot = slot(&key);
                match backend.node_of(slot).await {
                    // No master answered: the cluster connection itself is likely stuck
                    // (redis-rs's can stay wedged after a master dies under load).
                    None => backend.reset_cluster(),
                    Some(ranges) => {
                        if backend
                            .to_master_of(slot, redis::cmd("PING"))
                            .await
                            .is_some()
                        {
                            backend.shared.breaker.close(Scope::Key(&key));
                        } else {
                            backend.shared.breaker.trip_slots(&ranges);
                        }
                    }
                }
                backend.shared.node_lookup.store(false, Ordering::Release);
            });
        }
        #[cfg(not(feature = "cluster"))]
        let _ = scope;
    }

    /// The slot ranges of the master that serves `slot`, from `CLUSTER SLOTS` asked of the
    /// masters of three slots far from it (other nodes, when slots are spread evenly; the
    /// failed node itself may not answer), all at once: within one response timeout.
    #[cfg(feature = "cluster")]
    async fn node_of(&self, slot: u16) -> Option<Vec<(u16, u16)>> {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let mut lookups: FuturesUnordered<_> = [8192u32, 5461, 10923]
            .into_iter()
            .map(|offset| {
                let mut cmd = redis::cmd("CLUSTER");
                cmd.arg("SLOTS");
                self.to_master_of(((u32::from(slot) + offset) % 16384) as u16, cmd)
            })
            .collect();
        while let Some(reply) = lookups.next().await {
            if let Some(reply) = reply {
                return Some(node_ranges(&reply, slot));
            }
        }
        None
    }

    /// Sends `cmd` to the master of `slot`, within one response timeout; `None` when it
    /// fails or times out.
    #[cfg(feature = "cluster")]
    async fn to_master_of(&self, slot: u16, cmd: Cmd) -> Option<Value> {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
        let RedisConn::Cluster(lazy) = self.conn() else {
            return None;
        };
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
            Route::with_slot(Slot::new(slot)?, SlotAddr::Master),
        ));
        let request = async move {
            let mut conn = lazy.get().await?;
            conn.route_command(cmd, routing).await
        };
        tokio::time::timeout(self.shared.timeout, request)
            .await
            .ok()?
            .ok()
    }
}

#[cfg(all(test, feature = "cluster"))]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_slot_ranges_come_from_cluster_slots() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let entry = |s: i64, e: i64, master: Value| {
            Value::Array(vec![Value::Int(s), Value::Int(e), master])
        };
        let reply = Value::Array(vec![
            entry(0, 100, node("10.0.0.1", 6379)),
            entry(101, 200, node("10.0.0.2", 6379)),
            entry(201, 300, node("10.0.0.1", 6379)),
            entry(301, 16383, node("10.0.0.3", 6379)),
            Value::Nil, // garbage entries are skipped
        ]);
        assert_eq!(node_ranges(&reply, 250), vec![(0, 100), (201, 300)]);
        assert_eq!(node_ranges(&reply, 150), vec![(101, 200)]);
        assert_eq!(node_ranges(&Value::Nil, 1), vec![]);
        assert_eq!(node_ranges(&Value::Array(vec![]), 1), vec![]);
    }
}
