//! The Redis backend: plain commands on the hot path, Lua scripts wherever a step must be
//! atomic. Every command and script touches exactly one key, so all of it runs on Redis Cluster.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Script, Value};

use super::batch::{deliver, Batch, Failure, ReadBatcher, Turn};
#[cfg(feature = "cluster")]
use super::breaker::slot;
use super::breaker::{now_ms, Breaker, Scope};
use super::{is_lease, Acquire, Loc, Lookup, Marker, Token};
use crate::error::{is_connection_error, Error};
use crate::kind::Shape;
use crate::value::Payload;

/// A connection to Redis: the library's own auto-reconnecting manager, one the user built, or
/// a Redis Cluster connection.
#[derive(Clone)]
pub(crate) enum RedisConn {
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    #[cfg(feature = "cluster")]
    Cluster(Arc<LazyCluster>),
}

/// A cluster connection made on first use, so that a cache starts while the cluster is down;
/// once made, redis-rs follows the cluster's topology and reconnects to nodes by itself.
#[cfg(feature = "cluster")]
pub(crate) struct LazyCluster {
    client: redis::cluster::ClusterClient,
    conn: RwLock<Option<redis::cluster_async::ClusterConnection>>,
    connecting: tokio::sync::Mutex<()>,
    /// Counts resets: a request that fails on a connection since dropped says nothing about
    /// the nodes.
    generation: AtomicU64,
}

#[cfg(feature = "cluster")]
impl LazyCluster {
    pub(crate) fn new(client: redis::cluster::ClusterClient) -> Self {
        LazyCluster {
            client,
            conn: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        }
    }

    fn current(&self) -> Option<redis::cluster_async::ClusterConnection> {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Drops the cached connection, so the next request makes a fresh one: an existing cluster
    /// connection can stay wedged after a master fails over under load.
    fn reset(&self) {
        let mut conn = self.conn.write().unwrap_or_else(|e| e.into_inner());
        *conn = None;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    async fn get(&self) -> RedisResult<redis::cluster_async::ClusterConnection> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let conn = self.client.get_async_connection().await?;
        *self.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        Ok(conn)
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Manager(c) => c.req_packed_command(cmd),
            RedisConn::Multiplexed(c) => c.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            RedisConn::Cluster(lazy) => Box::pin(async move {
                let mut conn = lazy.get().await?;
                conn.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "cluster")]
            RedisConn::Cluster(lazy) => Box::pin(async move {
                let mut conn = lazy.get().await?;
                conn.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Manager(c) => c.get_db(),
            RedisConn::Multiplexed(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            RedisConn::Cluster(_) => 0,
        }
    }
}

/// How to build a fresh connection manager: after a failure that the manager does not recover
/// from by itself (it reconnects after I/O errors only; a refused login stays refused).
#[derive(Clone)]
pub(crate) struct Rebuild {
    pub(crate) client: redis::Client,
    pub(crate) config: ConnectionManagerConfig,
}

#[derive(Clone)]
pub(crate) struct RedisBackend {
    conn: Arc<RwLock<RedisConn>>,
    rebuild: Option<Arc<Rebuild>>,
    last_rebuild_ms: Arc<AtomicU64>,
    timeout: Duration,
    breaker: Arc<Breaker>,
    /// A Redis Cluster (the connection is `RedisConn::Cluster`, for good).
    cluster: bool,
    /// A lookup of which cluster node serves a failed key is under way.
    #[cfg(feature = "cluster")]
    node_lookup: Arc<std::sync::atomic::AtomicBool>,
    /// A background ping is checking whether a failed standalone Redis answers again.
    probing: Arc<std::sync::atomic::AtomicBool>,
    /// Coalesces concurrent GETs into MGETs; not on a cluster, where MGET splits by slot.
    batcher: Option<Arc<ReadBatcher<Value>>>,
}

/// How many reads (GETs or MGET batches) may be on the wire at once before further reads queue
/// for the next batch.
const READS_IN_FLIGHT: usize = 2;

/// Holds a read slot; hands queued reads to a batch when the read ends or is cancelled.
struct Slot<'a> {
    backend: &'a RedisBackend,
    batcher: &'a Arc<ReadBatcher<Value>>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(batch) = self.batcher.next_or_release() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(
                        self.backend
                            .clone()
                            .run_batches(self.batcher.clone(), batch),
                    );
                }
                Err(_) => deliver(batch.reads, Err(Failure::Unavailable)),
            }
        }
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("timeout", &self.timeout)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

fn shape_name(shape: Shape) -> &'static str {
    match shape {
        Shape::Str | Shape::Hash => "string",
        Shape::List => "list",
        Shape::Set => "set",
    }
}

// Lua helpers shared by the scripts. `\193` is the 0xC1 byte that starts every marker.
const LUA_PRELUDE: &str = r#"
local LEASE = "\193cacheobj:lease:"
local EMPTY = "\193cacheobj:empty"
local function is_lease(v) return string.sub(v, 1, #LEASE) == LEASE end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function members(k, t)
  if t == 'list' then return redis.call('LRANGE', k, 0, -1) end
  return redis.call('SMEMBERS', k)
end
local function size(k, t)
  if t == 'list' then return redis.call('LLEN', k) end
  return redis.call('SCARD', k)
end
local function add(k, t, first)
  local cmd = 'SADD'
  if t == 'list' then cmd = 'RPUSH' end
  for i = first, #ARGV, 1000 do
    redis.call(cmd, k, unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
end
"#;

macro_rules! script {
    ($name:ident, $body:expr) => {
        static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(&format!("{}{}", LUA_PRELUDE, $body)));
    };
}

// A list or set read: {0} miss, {1} leased, {2, members} hit, {4} garbage.
// ARGV[1]: 'list' or 'set'.
script!(
    READ_COLLECTION,
    r#"
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
if t == 'none' then return {0} end
if t == ARGV[1] then return {2, members(k, t)} end
if t == 'string' then
  local v = redis.call('GET', k)
  if v == EMPTY then return {2, {}} end
  if is_lease(v) then return {1} end
end
return {4}
"#
);

// Takes the fill lease of a string, list or set entry unless a value is there.
// ARGV: marker, lease ms, shape, force ('1': replace a value that did not decode).
// Returns {0} acquired, {1} leased by another, {2, value} hit.
script!(
    ACQUIRE,
    r#"
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
if t == 'string' then
  local v = redis.call('GET', k)
  if is_lease(v) then return {1} end
  if ARGV[4] ~= '1' then
    if ARGV[3] == 'string' then return {2, v} end
    if v == EMPTY then return {2, {}} end
  end
elseif t == ARGV[3] and ARGV[4] ~= '1' then
  return {2, members(k, t)}
end
if t ~= 'none' then redis.call('DEL', k) end
redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
return {0}
"#
);

// Stores a value if our lease marker still holds the key. ARGV: marker, ttl ms (0: none),
// shape, then the value (string) or the elements (list, set; none for an empty one).
script!(
    FILL,
    r#"
local k = KEYS[1]
if redis.call('TYPE', k).ok ~= 'string' or redis.call('GET', k) ~= ARGV[1] then return 0 end
if ARGV[3] == 'string' then
  redis.call('SET', k, ARGV[4])
else
  redis.call('DEL', k)
  if #ARGV == 3 then redis.call('SET', k, EMPTY) else add(k, ARGV[3], 4) end
end
if ARGV[2] ~= '0' then redis.call('PEXPIRE', k, ARGV[2]) end
return 1
"#
);

// Replaces a string value if it is still the one read. ARGV: expected, new, ttl ms.
script!(
    REFILL,
    r#"
local k = KEYS[1]
if redis.call('TYPE', k).ok ~= 'string' or redis.call('GET', k) ~= ARGV[1] then return 0 end
if ARGV[3] ~= '0' then redis.call('SET', k, ARGV[2], 'PX', ARGV[3]) else redis.call('SET', k, ARGV[2]) end
return 1
"#
);

// Drops our lease. ARGV: marker.
script!(
    RELEASE,
    r#"
local k = KEYS[1]
if redis.call('TYPE', k).ok == 'string' and redis.call('GET', k) == ARGV[1] then redis.call('DEL', k) end
return 1
"#
);

// Increments a cached counter; anything else (a lease, garbage) is deleted, so a load in
// flight cannot fill a count from before this change. ARGV: delta.
script!(
    INCR,
    r#"
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
if t == 'none' then return false end
if t == 'string' then
  local r = redis.pcall('INCRBY', k, ARGV[1])
  if type(r) == 'number' then return r end
end
redis.call('DEL', k)
return false
"#
);

// Increments a counter, creating it with the delta (and the TTL) when it is not there.
// ARGV: delta, ttl ms.
script!(
    INCR_OR_CREATE,
    r#"
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
if t == 'string' then
  local r = redis.pcall('INCRBY', k, ARGV[1])
  if type(r) == 'number' then return r end
end
if t ~= 'none' then redis.call('DEL', k) end
if ARGV[2] ~= '0' then redis.call('SET', k, ARGV[1], 'PX', ARGV[2]) else redis.call('SET', k, ARGV[1]) end
return redis.call('INCRBY', k, 0)
"#
);

// Adds elements to a cached list or set, keeping its TTL. ARGV: shape, elements...
script!(
    PUSH,
    r#"
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
if t == ARGV[1] then add(k, t, 2) return size(k, t) end
if t == 'string' and redis.call('GET', k) == EMPTY then
  local ttl = redis.call('PTTL', k)
  redis.call('DEL', k)
  add(k, ARGV[1], 2)
  if ttl > 0 then redis.call('PEXPIRE', k, ttl) end
  return size(k, ARGV[1])
end
if t ~= 'none' then redis.call('DEL', k) end
return false
"#
);

// Removes elements from a cached list or set; an emptied one becomes the empty marker with the
// same TTL. ARGV: shape, elements...
script!(
    REMOVE,
    r#"
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
if t == ARGV[1] then
  local ttl = redis.call('PTTL', k)
  if t == 'list' then
    for i = 2, #ARGV do redis.call('LREM', k, 0, ARGV[i]) end
  else
    for i = 2, #ARGV, 1000 do redis.call('SREM', k, unpack(ARGV, i, math.min(i + 999, #ARGV))) end
  end
  local n = size(k, t)
  if n == 0 then
    if ttl > 0 then redis.call('SET', k, EMPTY, 'PX', ttl) else redis.call('SET', k, EMPTY) end
  end
  return n
end
if t == 'string' and redis.call('GET', k) == EMPTY then return 0 end
if t ~= 'none' then redis.call('DEL', k) end
return false
"#
);

// The size of a cached list or set. ARGV: shape.
script!(
    LEN,
    r#"
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
if t == ARGV[1] then return size(k, t) end
if t == 'string' and redis.call('GET', k) == EMPTY then return 0 end
return false
"#
);

// Whether a cached set holds an element. ARGV: element.
script!(
    CONTAINS,
    r#"
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
if t == 'set' then return redis.call('SISMEMBER', k, ARGV[1]) end
if t == 'string' and redis.call('GET', k) == EMPTY then return 0 end
return false
"#
);

// Takes the fill lease of a hash field. A hash field has no TTL of its own, so the marker
// carries its deadline (server time). ARGV: field, token, lease ms, force.
// Returns {0} acquired, {1} leased, {2, value} hit.
script!(
    HASH_ACQUIRE,
    r#"
local k, f = KEYS[1], ARGV[1]
local t = redis.call('TYPE', k).ok
if t ~= 'hash' and t ~= 'none' then redis.call('DEL', k) end
local now = now_ms()
local v = redis.call('HGET', k, f)
if v then
  if is_lease(v) then
    local deadline = tonumber(string.sub(v, #LEASE + 1, #LEASE + 13))
    if deadline and deadline > now then return {1} end
  elseif ARGV[4] ~= '1' then
    return {2, v}
  end
end
redis.call('HSET', k, f, LEASE .. string.format('%013d', now + tonumber(ARGV[3])) .. ':' .. ARGV[2])
local pttl = redis.call('PTTL', k)
if pttl >= 0 and pttl < tonumber(ARGV[3]) then redis.call('PEXPIRE', k, ARGV[3]) end
if pttl == -1 and redis.call('HLEN', k) == 1 then redis.call('PEXPIRE', k, ARGV[3]) end
return {0}
"#
);

// Stores a hash field if our lease marker still holds it; extends the hash's TTL to at least
// the fill's. ARGV: field, token, ttl ms (0: none), value.
script!(
    HASH_FILL,
    r#"
local k, f = KEYS[1], ARGV[1]
if redis.call('TYPE', k).ok ~= 'hash' then return 0 end
local v = redis.call('HGET', k, f)
if not v or not is_lease(v) or string.sub(v, -#ARGV[2]) ~= ARGV[2] then return 0 end
redis.call('HSET', k, f, ARGV[4])
local ttl = tonumber(ARGV[3])
if ttl == 0 then
  redis.call('PERSIST', k)
else
  local pttl = redis.call('PTTL', k)
  if pttl >= 0 and pttl < ttl then redis.call('PEXPIRE', k, ttl) end
end
return 1
"#
);

// Drops our lease on a hash field. ARGV: field, token.
script!(
    HASH_RELEASE,
    r#"
local k, f = KEYS[1], ARGV[1]
if redis.call('TYPE', k).ok ~= 'hash' then return 0 end
local v = redis.call('HGET', k, f)
if v and is_lease(v) and string.sub(v, -#ARGV[2]) == ARGV[2] then redis.call('HDEL', k, f) end
return 1
"#
);

/// `NAME key [field]`, built in place (`redis::cmd(..).arg(..)` returns a reference, and
/// cloning the command would copy its buffers).
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

fn key_cmd(name: &str, key: &[u8], field: Option<&[u8]>) -> Cmd {
    let mut cmd = redis::cmd(name);
    cmd.arg(key);
    if let Some(field) = field {
        cmd.arg(field);
    }
    cmd
}

fn is_auth_error(e: &redis::RedisError) -> bool {
    matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
}

fn is_wrong_type(e: &redis::RedisError) -> bool {
    e.code() == Some("WRONGTYPE")
}

/// A reply of a shape this library does not expect: treated like garbage, never a panic.
fn unexpected(what: &'static str) -> Error {
    Error::Redis(redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply",
        what.to_owned(),
    )))
}

fn into_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

fn into_elems(v: Value) -> Option<Vec<Vec<u8>>> {
    match v {
        Value::Array(items) | Value::Set(items) => items.into_iter().map(into_bytes).collect(),
        _ => None,
    }
}

fn into_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

/// Turns a read of a string value into a lookup.
fn string_lookup(v: Value) -> Lookup {
    match v {
        Value::Nil => Lookup::Miss,
        other => match into_bytes(other) {
            Some(b) if is_lease(&b) => Lookup::Leased(Marker::new(b)),
            Some(b) => Lookup::Hit(Payload::Bytes(b)),
            None => Lookup::Garbage,
        },
    }
}

/// Parses `{code, value?}` replies of the acquire and read scripts.
fn coded_reply(v: Value, shape: Shape) -> Result<(i64, Option<Payload>), Error> {
    let Value::Array(mut items) = v else {
        return Err(unexpected("script reply is not an array"));
    };
    let code = items
        .first()
        .and_then(into_i64)
        .ok_or_else(|| unexpected("script reply code"))?;
    let payload = if items.len() > 1 {
        let value = items.swap_remove(1);
        Some(match shape {
            Shape::Str | Shape::Hash => {
                Payload::Bytes(into_bytes(value).ok_or_else(|| unexpected("script reply value"))?)
            }
            Shape::List | Shape::Set => {
                Payload::Elems(into_elems(value).ok_or_else(|| unexpected("script reply members"))?)
            }
        })
    } else {
        None
    };
    Ok((code, payload))
}

fn opt_u64(v: Value) -> Result<Option<u64>, Error> {
    match v {
        Value::Nil => Ok(None),
        Value::Int(i) => Ok(Some(i.max(0) as u64)),
        _ => Err(unexpected("expected an integer or nil")),
    }
}

impl RedisBackend {
    pub(crate) fn new(
        conn: RedisConn,
        rebuild: Option<Rebuild>,
        timeout: Duration,
        retry_interval: Duration,
    ) -> Self {
        #[cfg(feature = "cluster")]
        let is_cluster = matches!(conn, RedisConn::Cluster(_));
        #[cfg(not(feature = "cluster"))]
        let is_cluster = false;
        let batcher = (!is_cluster).then(|| Arc::new(ReadBatcher::new(READS_IN_FLIGHT)));
        RedisBackend {
            batcher,
            conn: Arc::new(RwLock::new(conn)),
            rebuild: rebuild.map(Arc::new),
            last_rebuild_ms: Arc::new(AtomicU64::new(0)),
            timeout,
            breaker: Arc::new(Breaker::new(is_cluster, retry_interval)),
            cluster: is_cluster,
            #[cfg(feature = "cluster")]
            node_lookup: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            probing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    pub(crate) fn response_timeout(&self) -> Duration {
        self.timeout
    }

    fn conn(&self) -> RedisConn {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Which cluster connection requests go to now (0 off a cluster): see `LazyCluster::reset`.
    fn generation(&self) -> u64 {
        #[cfg(feature = "cluster")]
        if self.cluster {
            if let RedisConn::Cluster(lazy) = &*self.conn.read().unwrap_or_else(|e| e.into_inner())
            {
                return lazy.generation.load(Ordering::Acquire);
            }
        }
        0
    }

    /// Replaces the connection manager after a failure it does not recover from by itself,
    /// at most once per retry interval.
    fn maybe_rebuild(&self, e: &redis::RedisError) {
        let Some(rebuild) = &self.rebuild else {
            return;
        };
        if e.kind() != redis::ErrorKind::AuthenticationFailed && !is_auth_error(e) {
            return;
        }
        let now = now_ms();
        let last = self.last_rebuild_ms.load(Ordering::Relaxed);
        if last != 0 && now < last.saturating_add(self.breaker.retry_ms()) {
            return;
        }
        self.last_rebuild_ms.store(now.max(1), Ordering::Relaxed);
        match ConnectionManager::new_lazy_with_config(
            rebuild.client.clone(),
            rebuild.config.clone(),
        ) {
            Ok(manager) => {
                *self.conn.write().unwrap_or_else(|e| e.into_inner()) = RedisConn::Manager(manager);
            }
            Err(error) => {
                tracing::warn!(%error, "cacheobj: could not rebuild the redis connection")
            }
        }
    }

    /// After a timeout or connection failure on a cluster, starts over with a fresh cluster
    /// connection, at most once per retry interval.
    fn maybe_reset_cluster(&self) {
        // One node down opens its own slots only (a third of them with three masters): that is
        // the node, and a fresh connection would not help. More than half open means the
        // connection itself is stuck.
        // (A stuck connection also fails the node lookup: see `trip_node_of`.)
        #[cfg(feature = "cluster")]
        if self.breaker.open_share() > 0.5 {
            self.reset_cluster();
        }
    }

    /// Drops the cluster connection so the next request makes a fresh one, at most once per
    /// retry interval.
    #[cfg(feature = "cluster")]
    fn reset_cluster(&self) {
        if let RedisConn::Cluster(lazy) = &*self.conn.read().unwrap_or_else(|e| e.into_inner()) {
            let now = now_ms();
            let last = self.last_rebuild_ms.load(Ordering::Relaxed);
            if last == 0 || now >= last.saturating_add(self.breaker.retry_ms()) {
                self.last_rebuild_ms.store(now.max(1), Ordering::Relaxed);
                lazy.reset();
            }
        }
    }

    /// On a cluster, after a request for a key failed: finds the node that serves the key
    /// (`CLUSTER SLOTS`, in the background, one lookup at a time) and, if that node does not
    /// answer a PING either, opens the breaker for all of its slots, so its other keys skip
    /// Redis at once instead of each slot paying a timeout first. If it answers, the failure
    /// was not the node's (a connection being rebuilt, a slow moment): its slot reopens.
    fn trip_node_of(&self, scope: Scope<'_>) {
        #[cfg(feature = "cluster")]
        {
            let Scope::Key(key) = scope else {
                return;
            };
            if !self.cluster {
                return;
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            if self.node_lookup.swap(true, Ordering::AcqRel) {
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
                            backend.breaker.close(Scope::Key(&key));
                        } else {
                            backend.breaker.trip_slots(&ranges);
                        }
                    }
                }
                backend.node_lookup.store(false, Ordering::Release);
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
    /// After a standalone Redis failed: pings it in the background, backing off from 10 ms, for
    /// up to the retry interval, and lets requests through again as soon as one is answered.
    /// A dropped connection that reconnects at once (`CLIENT KILL`, a proxy restart) then
    /// costs milliseconds of cache misses, not a whole retry interval. (On a cluster, the node
    /// lookup does this job.)
    fn probe(&self) {
        if self.cluster || self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.probing.store(false, Ordering::Release);
            return;
        };
        let backend = self.clone();
        runtime.spawn(async move {
            let retry = Duration::from_millis(backend.breaker.retry_ms());
            let deadline = tokio::time::Instant::now() + retry;
            let mut pause = Duration::from_millis(10);
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(pause).await;
                // Not through `run_unchecked`: a failed probe must not extend the breaker.
                let mut conn = backend.conn();
                let ping = redis::cmd("PING");
                let pong =
                    tokio::time::timeout(backend.timeout, ping.query_async::<Value>(&mut conn))
                        .await;
                if matches!(pong, Ok(Ok(_))) {
                    backend.breaker.close(Scope::Any);
                    break;
                }
                pause = (pause * 2).min(retry / 4).max(Duration::from_millis(1));
            }
            backend.probing.store(false, Ordering::Release);
        });
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
        tokio::time::timeout(self.timeout, request).await.ok()?.ok()
    }

    fn classify(&self, e: redis::RedisError) -> Error {
        self.maybe_rebuild(&e);
        if e.is_timeout() {
            return Error::Timeout(self.timeout);
        }
        Error::Redis(e)
    }

    /// Runs one request, bounded by the response timeout and skipped while the breaker is open.
    async fn run<T, F, Fut>(&self, scope: Scope<'_>, f: F) -> Result<T, Error>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if self.breaker.is_open(scope) {
            return Err(Error::Unavailable);
        }
        self.run_unchecked(scope, self.timeout, f).await
    }

    /// Runs one request bounded by `timeout`, even while the breaker is open.
    async fn run_unchecked<T, F, Fut>(
        &self,
        scope: Scope<'_>,
        timeout: Duration,
        f: F,
    ) -> Result<T, Error>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let generation = self.generation();
        match tokio::time::timeout(timeout, f(self.conn())).await {
            Ok(Ok(v)) => {
                self.breaker.close(scope);
                Ok(v)
            }
            Ok(Err(e)) => {
                let failed =
                    is_connection_error(&e) || e.kind() == redis::ErrorKind::AuthenticationFailed;
                let error = self.classify(e);
                if failed || matches!(error, Error::Timeout(_)) {
                    self.failed(scope, &error, generation);
                }
                Err(error)
            }
            Err(_) => {
                let error = Error::Timeout(timeout);
                self.failed(scope, &error, generation);
                Err(error)
            }
        }
    }

    /// A request in `scope`, sent on connection `generation`, timed out or lost its
    /// connection: skip Redis there for a while and find out what failed.
    fn failed(&self, scope: Scope<'_>, error: &Error, generation: u64) {
        if generation != self.generation() {
            // It was stuck on a cluster connection that has been replaced since.
            return;
        }
        self.breaker.trip(scope, error);
        self.trip_node_of(scope);
        self.maybe_reset_cluster();
        self.probe();
    }

    /// Releases a lease whose acquisition failed (timed out): the request may still run on the
    /// server later and leave an orphaned lease, so this follows it on the same connection,
    /// whatever the breaker says, for up to the lease time.
    pub(crate) async fn release_after_failure(
        &self,
        loc: Loc<'_>,
        token: &Token,
        within: Duration,
    ) -> Result<(), Error> {
        if loc.shape == Shape::Hash {
            let mut invocation = HASH_RELEASE.key(loc.key);
            invocation.arg(loc.field).arg(token.as_str());
            self.run_unchecked(Scope::Key(loc.key), within, |mut c| async move {
                invocation.invoke_async::<Value>(&mut c).await
            })
            .await?;
        } else {
            let mut invocation = RELEASE.key(loc.key);
            invocation.arg(token.marker());
            self.run_unchecked(Scope::Key(loc.key), within, |mut c| async move {
                invocation.invoke_async::<Value>(&mut c).await
            })
            .await?;
        }
        Ok(())
    }

    async fn cmd(&self, scope: Scope<'_>, cmd: Cmd) -> Result<Value, Error> {
        self.run(scope, |mut c| async move {
            cmd.query_async::<Value>(&mut c).await
        })
        .await
    }

    async fn script(
        &self,
        script: &Script,
        key: &[u8],
        args: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> Result<Value, Error> {
        let mut invocation = script.key(key);
        args(&mut invocation);
        self.run(Scope::Key(key), |mut c| async move {
            invocation.invoke_async::<Value>(&mut c).await
        })
        .await
    }

    /// Sends batches of queued reads until no more queue up, then frees the slot. Each batch
    /// gets what is left of the response timeout of its oldest read.
    async fn run_batches(self, batcher: Arc<ReadBatcher<Value>>, mut batch: Batch<Value>) {
        loop {
            let left = self.timeout.saturating_sub(batch.oldest.elapsed());
            let replies = if left.is_zero() {
                Err(Failure::Timeout)
            } else if self.breaker.is_open(Scope::Any) {
                Err(Failure::Unavailable)
            } else {
                let mut cmd = redis::cmd("MGET");
                for (key, _) in &batch.reads {
                    cmd.arg(&key[..]);
                }
                let reply = self
                    .run_unchecked(Scope::Any, left, |mut c| async move {
                        cmd.query_async::<Value>(&mut c).await
                    })
                    .await;
                match reply {
                    Ok(Value::Array(items)) => Ok(items),
                    Ok(_) => Err(Failure::Failed("unexpected MGET reply".to_owned())),
                    Err(Error::Timeout(_)) => Err(Failure::Timeout),
                    Err(Error::Unavailable) => Err(Failure::Unavailable),
                    Err(e) => Err(Failure::Failed(e.to_string())),
                }
            };
            deliver(batch.reads, replies);
            // Let the tasks just woken run first: those that read again join the next batch
            // instead of trailing it in a batch of their own (fewer, fuller round trips;
            // measured ~10 % more hits/s at 64 tasks).
            tokio::task::yield_now().await;
            match batcher.next_or_release() {
                Some(next) => batch = next,
                None => return,
            }
        }
    }

    /// GET through the batcher: at once when a slot is free, else in the next MGET.
    async fn get(&self, key: &[u8]) -> Result<Value, Error> {
        let Some(batcher) = &self.batcher else {
            return self.cmd(Scope::Key(key), key_cmd("GET", key, None)).await;
        };
        if self.breaker.is_open(Scope::Key(key)) {
            return Err(Error::Unavailable);
        }
        match batcher.turn(key) {
            Turn::Go => {
                let _slot = Slot {
                    backend: self,
                    batcher,
                };
                self.cmd(Scope::Key(key), key_cmd("GET", key, None)).await
            }
            // No timer here: the batch that carries this read ends within the response
            // timeout of its arrival (see `run_batches`).
            Turn::Wait(rx) => match rx.await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(Failure::Timeout)) => Err(Error::Timeout(self.timeout)),
                Ok(Err(Failure::Unavailable)) | Err(_) => Err(Error::Unavailable),
                Ok(Err(Failure::Failed(e))) => Err(Error::Redis(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "batched read failed",
                    e,
                )))),
            },
        }
    }

    pub(crate) async fn read(&self, loc: Loc<'_>) -> Result<Lookup, Error> {
        match loc.shape {
            Shape::Str => match self.get(loc.key).await {
                Ok(v) => Ok(string_lookup(v)),
                Err(Error::Redis(e)) if is_wrong_type(&e) => Ok(Lookup::Garbage),
                Err(e) => Err(e),
            },
            Shape::Hash => match self
                .cmd(
                    Scope::Key(loc.key),
                    key_cmd("HGET", loc.key, Some(loc.field)),
                )
                .await
            {
                Ok(v) => Ok(string_lookup(v)),
                Err(Error::Redis(e)) if is_wrong_type(&e) => Ok(Lookup::Garbage),
                Err(e) => Err(e),
            },
            Shape::List | Shape::Set => {
                let reply = self
                    .script(&READ_COLLECTION, loc.key, |i| {
                        i.arg(shape_name(loc.shape));
                    })
                    .await?;
                Ok(match coded_reply(reply, loc.shape)? {
                    (0, _) => Lookup::Miss,
                    (1, _) => Lookup::Leased(Marker::default()),
                    (2, Some(p)) => Lookup::Hit(p),
                    _ => Lookup::Garbage,
                })
            }
        }
    }

    pub(crate) async fn read_with_ttl(&self, loc: Loc<'_>) -> Result<(Lookup, Option<u64>), Error> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(loc.key).cmd("PTTL").arg(loc.key);
        let replies = self
            .run(Scope::Key(loc.key), |mut c| async move {
                pipe.query_async::<Vec<Value>>(&mut c).await
            })
            .await?;
        let mut replies = replies.into_iter();
        let value = replies.next().unwrap_or(Value::Nil);
        let ttl = replies.next().as_ref().and_then(into_i64);
        let ttl = ttl.and_then(|t| u64::try_from(t).ok());
        Ok((string_lookup(value), ttl))
    }

    pub(crate) async fn acquire(
        &self,
        loc: Loc<'_>,
        token: &Token,
        lease_ms: u64,
        force: bool,
    ) -> Result<Acquire, Error> {
        let force = if force { "1" } else { "0" };
        let reply = if loc.shape == Shape::Hash {
            self.script(&HASH_ACQUIRE, loc.key, |i| {
                i.arg(loc.field)
                    .arg(token.as_str())
                    .arg(lease_ms)
                    .arg(force);
            })
            .await?
        } else {
            self.script(&ACQUIRE, loc.key, |i| {
                i.arg(token.marker())
                    .arg(lease_ms)
                    .arg(shape_name(loc.shape))
                    .arg(force);
            })
            .await?
        };
        Ok(match coded_reply(reply, loc.shape)? {
            (0, _) => Acquire::Acquired,
            (1, _) => Acquire::Leased,
            (2, Some(p)) => Acquire::Hit(p),
            _ => return Err(unexpected("acquire reply")),
        })
    }

    pub(crate) async fn fill(
        &self,
        loc: Loc<'_>,
        token: &Token,
        payload: &Payload,
        ttl_ms: u64,
    ) -> Result<bool, Error> {
        let reply = match (loc.shape, payload) {
            (Shape::Hash, Payload::Bytes(value)) => {
                self.script(&HASH_FILL, loc.key, |i| {
                    i.arg(loc.field)
                        .arg(token.as_str())
                        .arg(ttl_ms)
                        .arg(&value[..]);
                })
                .await?
            }
            (Shape::Str, Payload::Bytes(value)) => {
                self.script(&FILL, loc.key, |i| {
                    i.arg(token.marker())
                        .arg(ttl_ms)
                        .arg("string")
                        .arg(&value[..]);
                })
                .await?
            }
            (Shape::List | Shape::Set, Payload::Elems(elems)) => {
                self.script(&FILL, loc.key, |i| {
                    i.arg(token.marker()).arg(ttl_ms).arg(shape_name(loc.shape));
                    for e in elems {
                        i.arg(&e[..]);
                    }
                })
                .await?
            }
            _ => return Err(unexpected("payload does not match the strategy's kind")),
        };
        Ok(into_i64(&reply) == Some(1))
    }

    pub(crate) async fn refill(
        &self,
        loc: Loc<'_>,
        expected: &[u8],
        payload: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, Error> {
        let reply = self
            .script(&REFILL, loc.key, |i| {
                i.arg(expected).arg(payload).arg(ttl_ms);
            })
            .await?;
        Ok(into_i64(&reply) == Some(1))
    }

    pub(crate) async fn release(&self, loc: Loc<'_>, token: &Token) -> Result<(), Error> {
        if loc.shape == Shape::Hash {
            self.script(&HASH_RELEASE, loc.key, |i| {
                i.arg(loc.field).arg(token.as_str());
            })
            .await?;
        } else {
            self.script(&RELEASE, loc.key, |i| {
                i.arg(token.marker());
            })
            .await?;
        }
        Ok(())
    }

    pub(crate) async fn invalidate(&self, loc: Loc<'_>) -> Result<(), Error> {
        let cmd = if loc.shape == Shape::Hash {
            key_cmd("HDEL", loc.key, Some(loc.field))
        } else {
            key_cmd("DEL", loc.key, None)
        };
        match self.cmd(Scope::Key(loc.key), cmd).await {
            Err(Error::Redis(e)) if is_wrong_type(&e) => {
                // A hash strategy's key holds another type: nothing of ours is there, but
                // remove it so nothing stale can be read either.
                self.cmd(Scope::Key(loc.key), key_cmd("DEL", loc.key, None))
                    .await?;
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    pub(crate) async fn incr(&self, loc: Loc<'_>, delta: i64) -> Result<Option<i64>, Error> {
        let reply = self
            .script(&INCR, loc.key, |i| {
                i.arg(delta);
            })
            .await?;
        match reply {
            Value::Nil => Ok(None),
            Value::Int(n) => Ok(Some(n)),
            _ => Err(unexpected("incr reply")),
        }
    }

    pub(crate) async fn incr_or_create(
        &self,
        loc: Loc<'_>,
        delta: i64,
        ttl_ms: u64,
    ) -> Result<i64, Error> {
        let reply = self
            .script(&INCR_OR_CREATE, loc.key, |i| {
                i.arg(delta).arg(ttl_ms);
            })
            .await?;
        into_i64(&reply).ok_or_else(|| unexpected("incr reply"))
    }

    pub(crate) async fn set_string(
        &self,
        loc: Loc<'_>,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<(), Error> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(loc.key).arg(value);
        if ttl_ms > 0 {
            cmd.arg("PX").arg(ttl_ms);
        }
        self.cmd(Scope::Key(loc.key), cmd).await.map(|_| ())
    }

    pub(crate) async fn push(&self, loc: Loc<'_>, elems: &[Vec<u8>]) -> Result<Option<u64>, Error> {
        if elems.is_empty() {
            return self.len(loc).await;
        }
        let reply = self
            .script(&PUSH, loc.key, |i| {
                i.arg(shape_name(loc.shape));
                for e in elems {
                    i.arg(&e[..]);
                }
            })
            .await?;
        opt_u64(reply)
    }

    pub(crate) async fn remove(
        &self,
        loc: Loc<'_>,
        elems: &[Vec<u8>],
    ) -> Result<Option<u64>, Error> {
        if elems.is_empty() {
            return self.len(loc).await;
        }
        let reply = self
            .script(&REMOVE, loc.key, |i| {
                i.arg(shape_name(loc.shape));
                for e in elems {
                    i.arg(&e[..]);
                }
            })
            .await?;
        opt_u64(reply)
    }

    pub(crate) async fn len(&self, loc: Loc<'_>) -> Result<Option<u64>, Error> {
        let reply = self
            .script(&LEN, loc.key, |i| {
                i.arg(shape_name(loc.shape));
            })
            .await?;
        opt_u64(reply)
    }

    pub(crate) async fn contains(&self, loc: Loc<'_>, elem: &[u8]) -> Result<Option<bool>, Error> {
        let reply = self
            .script(&CONTAINS, loc.key, |i| {
                i.arg(elem);
            })
            .await?;
        Ok(opt_u64(reply)?.map(|n| n == 1))
    }

    pub(crate) async fn read_many(&self, locs: &[Loc<'_>]) -> Result<Vec<Lookup>, Error> {
        if locs.is_empty() {
            return Ok(Vec::new());
        }
        let replies = if locs.iter().all(|l| l.shape == Shape::Str) {
            // One MGET; redis-rs's cluster client splits it by slot.
            let mut cmd = redis::cmd("MGET");
            for loc in locs {
                cmd.arg(loc.key);
            }
            match self.cmd(Scope::Keys(locs), cmd).await? {
                Value::Array(items) => items,
                _ => return Err(unexpected("MGET reply")),
            }
        } else {
            // Concurrent requests share the multiplexed connection and go out as one pipeline;
            // unlike a `redis::Pipeline`, they may span cluster slots.
            let replies = futures_util::future::join_all(locs.iter().map(|loc| {
                let cmd = match loc.shape {
                    Shape::Hash => key_cmd("HGET", loc.key, Some(loc.field)),
                    _ => key_cmd("GET", loc.key, None),
                };
                self.cmd(Scope::Key(loc.key), cmd)
            }))
            .await;
            replies
                .into_iter()
                .map(|r| match r {
                    Err(Error::Redis(e)) if is_wrong_type(&e) => Ok(Value::Int(0)),
                    other => other,
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        if replies.len() != locs.len() {
            return Err(unexpected("batch reply length"));
        }
        Ok(replies
            .into_iter()
            .map(|v| match v {
                Value::ServerError(_) => Lookup::Garbage,
                other => string_lookup(other),
            })
            .collect())
    }

    pub(crate) async fn invalidate_many(&self, locs: &[Loc<'_>]) -> Result<(), Error> {
        // Concurrent, so pipelined on the connection, and free to span cluster slots.
        futures_util::future::join_all(locs.iter().map(|loc| self.invalidate(*loc)))
            .await
            .into_iter()
            .collect()
    }

    pub(crate) async fn ping(&self) -> Result<(), Error> {
        // A ping goes through even while the breaker is open: it is how callers check.
        self.run_unchecked(Scope::Any, self.timeout, |mut c| async move {
            redis::cmd("PING").query_async::<Value>(&mut c).await
        })
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_of_unexpected_shape_are_errors_not_panics() {
        assert!(coded_reply(Value::Nil, Shape::Str).is_err());
        assert!(coded_reply(Value::Array(vec![]), Shape::Str).is_err());
        assert!(coded_reply(
            Value::Array(vec![Value::Int(2), Value::Int(5)]),
            Shape::List
        )
        .is_err());
        assert!(matches!(string_lookup(Value::Int(3)), Lookup::Garbage));
        assert!(matches!(
            string_lookup(Value::BulkString(b"\xC1cacheobj:lease:x".to_vec())),
            Lookup::Leased(_)
        ));
        assert!(opt_u64(Value::Okay).is_err());
    }

    #[cfg(feature = "cluster")]
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
