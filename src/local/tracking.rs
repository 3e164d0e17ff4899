//! The tracking connections that keep the local tier coherent: one RESP3 connection per
//! Redis node (one on a standalone server; every master and replica of a cluster), each in
//! `CLIENT TRACKING ON BCAST` mode over the local strategies' key prefixes.
//!
//! Why BCAST on connections of our own rather than tracking the reading connections:
//! - the reads go through redis-rs's connection manager or cluster client, which reconnect on
//!   their own; a fresh connection would not be tracking, and nothing would tell us. These
//!   connections never reconnect by themselves, so each loss is seen and flushes the tier;
//! - BCAST needs no state per key on the server and no `CLIENT TRACKING` on the connections
//!   that read, and it sees writes to keys this process has not read yet;
//! - the cost: every write under a local strategy's prefix is announced to every process,
//!   held or not. Only the local strategies' prefixes are tracked.
//!
//! Pushes are handled inside redis-rs's connection driver as they are parsed, in the order
//! Redis sent them, so no queue can fill or reorder them.

use std::sync::Weak;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ProtocolVersion, PushInfo,
    PushKind, RedisError, Value,
};

use super::TierShared;

/// Where the tracking connections go.
#[derive(Clone)]
pub(crate) enum Source {
    /// A standalone server: the reading client's settings, over RESP3.
    Standalone(Box<ConnectionInfo>),
    /// A cluster: seeds to ask for the nodes; each node is reached with the first seed's
    /// settings (credentials, TLS) and its own address.
    Cluster(Vec<ConnectionInfo>),
    /// The cache has no client to open connections with (it was given a connection).
    Unavailable(&'static str),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Standalone(_) => f.write_str("Standalone"),
            Source::Cluster(seeds) => write!(f, "Cluster({} seeds)", seeds.len()),
            Source::Unavailable(why) => write!(f, "Unavailable({why})"),
        }
    }
}

impl Source {
    pub(crate) fn resp3(info: &ConnectionInfo) -> ConnectionInfo {
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        info.clone().set_redis_settings(settings)
    }
}

/// Timings of the tracking connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) connect: Duration,
    pub(crate) response: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) retry: Duration,
}

/// Why a session could not start.
enum Failure {
    /// Redis did not answer: try again.
    Transient(RedisError),
    /// The server cannot track (no RESP3, no `CLIENT TRACKING`, not allowed): fall back.
    Unsupported(String),
}

/// Only a refusal that retrying cannot cure turns the tier off: no RESP3, no permission, a
/// command or option the server does not know. Anything else (down, loading, failing over,
/// out of clients) is retried.
fn classify(e: RedisError) -> Failure {
    use redis::{ErrorKind, ServerErrorKind};
    let detail = e.detail().unwrap_or_default().to_ascii_lowercase();
    let unsupported = match e.kind() {
        ErrorKind::RESP3NotSupported | ErrorKind::Server(ServerErrorKind::NoPerm) => true,
        ErrorKind::Server(ServerErrorKind::ResponseError) => {
            detail.contains("unknown") || detail.contains("syntax")
        }
        _ => false,
    };
    if unsupported {
        Failure::Unsupported(e.to_string())
    } else {
        Failure::Transient(e)
    }
}

/// One node's tracking connection.
struct Tracked {
    addr: String,
    conn: MultiplexedConnection,
}

/// The connections of one session: all tracking, or the session ends.
struct Session {
    conns: Vec<Tracked>,
    /// Cluster: the node set this session covers, sorted.
    nodes: Vec<String>,
    /// Cluster: the seed node the set was asked of, and which the heartbeat asks again:
    /// nodes' views differ while a failover converges, so another node's answer would be a
    /// change of view, not of nodes.
    view: Option<Tracked>,
}

/// Runs the tracking connections until the tier is dropped: connect, confirm tracking, go
/// live; on any loss, flush and start again.
pub(crate) async fn run(tier: Weak<TierShared>, source: Source, timing: Timing) {
    let mut backoff = timing.retry.min(Duration::from_millis(100));
    loop {
        let Some(shared) = tier.upgrade() else { return };
        if let Source::Unavailable(why) = &source {
            shared.fall_back(why);
            return;
        }
        // The session first, then its prefixes: a prefix added after this snapshot ends
        // this session (see `LocalTier::register`), so none is left untracked.
        let session_id = shared.begin_session();
        let prefixes = shared.prefixes();
        let started = tokio::time::timeout(
            timing.connect + timing.response * 4,
            connect(&tier, session_id, &source, &prefixes, timing),
        )
        .await;
        let session = match started {
            Ok(Ok(session)) => session,
            Ok(Err(Failure::Unsupported(why))) => {
                shared.fall_back(&why);
                return;
            }
            Ok(Err(Failure::Transient(e))) => {
                tracing::debug!(error = %e, "cacheobj: local tier: tracking connection failed");
                drop(shared);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(timing.retry.max(Duration::from_millis(100)));
                continue;
            }
            Err(_) => {
                drop(shared);
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        backoff = timing.retry.min(Duration::from_millis(100));
        if !shared.go_live(session_id) {
            continue;
        }
        let wake = shared.wake.clone();
        drop(shared);
        let why = watch(&tier, &session, &wake, &prefixes, timing).await;
        let Some(shared) = tier.upgrade() else { return };
        // This task starts the next session itself: no wake-up for it.
        shared.lose(session_id, why, false);
    }
}

/// Waits for the session to end: a loss reported by a connection, a failed heartbeat, a new
/// prefix, or a change of the cluster's nodes. Returns why.
async fn watch(
    tier: &Weak<TierShared>,
    session: &Session,
    wake: &tokio::sync::Notify,
    prefixes: &[Vec<u8>],
    timing: Timing,
) -> &'static str {
    loop {
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(timing.heartbeat) => {}
        }
        let Some(shared) = tier.upgrade() else {
            return "cache dropped";
        };
        if !shared.guard.is_live() {
            return "a tracking connection was lost";
        }
        if shared.prefixes() != prefixes {
            return "a new local strategy's prefix";
        }
        drop(shared);
        for tracked in &session.conns {
            let mut conn = tracked.conn.clone();
            let ping = redis::cmd("PING");
            match tokio::time::timeout(timing.response, ping.query_async::<Value>(&mut conn)).await
            {
                Ok(Ok(_)) => {}
                _ => {
                    tracing::debug!(node = %tracked.addr, "cacheobj: local tier: heartbeat failed");
                    return "a tracking connection did not answer its heartbeat";
                }
            }
        }
        if let Some(view) = &session.view {
            let mut conn = view.conn.clone();
            let host = split_addr(&view.addr).map_or("", |(host, _)| host);
            match tokio::time::timeout(timing.response, cluster_nodes(&mut conn, host)).await {
                Ok(Ok(nodes)) if nodes == session.nodes => {}
                Ok(Ok(_)) => return "the cluster's nodes changed",
                _ => return "a tracking connection did not answer its heartbeat",
            }
        }
    }
}

async fn connect(
    tier: &Weak<TierShared>,
    session_id: u64,
    source: &Source,
    prefixes: &[Vec<u8>],
    timing: Timing,
) -> Result<Session, Failure> {
    match source {
        Source::Standalone(info) => {
            let conn = track(tier, session_id, info, prefixes, timing).await?;
            let addr = info.addr().to_string();
            Ok(Session {
                conns: vec![Tracked { addr, conn }],
                nodes: Vec::new(),
                view: None,
            })
        }
        Source::Cluster(seeds) => {
            let mut last = None;
            for seed in seeds {
                match cluster_session(tier, session_id, seed, prefixes, timing).await {
                    Ok(session) => return Ok(session),
                    Err(Failure::Transient(e)) => last = Some(e),
                    Err(unsupported) => return Err(unsupported),
                }
            }
            Err(Failure::Transient(last.unwrap_or_else(|| {
                RedisError::from((redis::ErrorKind::Io, "no cluster seed node"))
            })))
        }
        Source::Unavailable(why) => Err(Failure::Unsupported((*why).to_owned())),
    }
}

async fn cluster_session(
    tier: &Weak<TierShared>,
    session_id: u64,
    seed: &ConnectionInfo,
    prefixes: &[Vec<u8>],
    timing: Timing,
) -> Result<Session, Failure> {
    // The seed's own connection tracks too, so the node list and the connections agree on
    // one view of the cluster.
    let first = track(tier, session_id, seed, prefixes, timing).await?;
    let nodes = cluster_nodes(&mut first.clone(), host_of(seed.addr()))
        .await
        .map_err(classify)?;
    let mut conns = Vec::with_capacity(nodes.len());
    for node in &nodes {
        let Some((host, port)) = split_addr(node) else {
            continue;
        };
        let info = seed.clone().set_addr(with_host(seed.addr(), host, port));
        let conn = track(tier, session_id, &info, prefixes, timing).await?;
        conns.push(Tracked {
            addr: node.clone(),
            conn,
        });
    }
    // No slot assigned yet (a cluster being set up): nothing to track is not "every node
    // tracks". Live on no connection, the heartbeat would check nothing and never see the
    // nodes come: try again instead.
    if conns.is_empty() {
        return Err(Failure::Transient(RedisError::from((
            redis::ErrorKind::Io,
            "the cluster lists no node (no slot assigned)",
        ))));
    }
    // The seed's own tracking connection, unless the seed is one of the nodes: then that
    // node's connection, so each node has one.
    let addr = format!("{}:{}", host_of(seed.addr()), port_of(seed.addr()));
    let conn = match conns.iter().find(|t| t.addr == addr) {
        Some(same) => same.conn.clone(),
        None => first,
    };
    let view = Tracked { addr, conn };
    Ok(Session {
        conns,
        nodes,
        view: Some(view),
    })
}

fn split_addr(node: &str) -> Option<(&str, u16)> {
    let (host, port) = node.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

fn with_host(addr: &ConnectionAddr, host: &str, port: u16) -> ConnectionAddr {
    match addr {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    }
}

fn port_of(addr: &ConnectionAddr) -> u16 {
    match addr {
        ConnectionAddr::Tcp(_, port) | ConnectionAddr::TcpTls { port, .. } => *port,
        _ => 0,
    }
}

fn host_of(addr: &ConnectionAddr) -> &str {
    match addr {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host,
        _ => "",
    }
}

/// Every node of the cluster that `CLUSTER SLOTS` lists, asked of the node at
/// `answering_host`, as sorted `host:port`: the masters and their replicas (a replica that is
/// promoted keeps announcing the writes it applies, so a failover that loses no node keeps the
/// session). Redis 7 leaves out a replica that has replicated nothing yet (offset 0, as on a
/// fresh cluster) or has failed: once it appears the node set has changed, which the
/// heartbeat sees (a flush, and a session that tracks it too).
async fn cluster_nodes(
    conn: &mut MultiplexedConnection,
    answering_host: &str,
) -> Result<Vec<String>, RedisError> {
    let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    Ok(slot_nodes(reply, answering_host))
}

/// The nodes of a `CLUSTER SLOTS` reply. As redis-rs's cluster client reads it (so the nodes
/// tracked are the nodes it sends commands to): an empty, NULL or wildcard endpoint means the
/// node that answered (a node that never met another one does not know its own IP; an
/// `unknown-endpoint` deployment behind a load balancer sends NULL), and `?` a node with no
/// known endpoint, which is left out.
fn slot_nodes(reply: Value, answering_host: &str) -> Vec<String> {
    let mut nodes = Vec::new();
    let Value::Array(ranges) = reply else {
        return nodes;
    };
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        for node in parts.into_iter().skip(2) {
            let Value::Array(fields) = node else { continue };
            let mut fields = fields.into_iter();
            let host = match fields.next() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
                Some(Value::SimpleString(s)) => s,
                Some(Value::Nil) => String::new(),
                _ => continue,
            };
            let Some(Value::Int(port)) = fields.next() else {
                continue;
            };
            let host = match host.as_str() {
                "?" => continue,
                "" | "0.0.0.0" | "::" => answering_host.to_owned(),
                _ => host,
            };
            if host.is_empty() {
                continue;
            }
            nodes.push(format!("{host}:{port}"));
        }
    }
    nodes.sort();
    nodes.dedup();
    nodes
}

/// Opens one node's tracking connection and confirms `CLIENT TRACKING ON BCAST`.
async fn track(
    tier: &Weak<TierShared>,
    session_id: u64,
    info: &ConnectionInfo,
    prefixes: &[Vec<u8>],
    timing: Timing,
) -> Result<MultiplexedConnection, Failure> {
    let client =
        Client::open(Source::resp3(info)).map_err(|e| Failure::Unsupported(e.to_string()))?;
    let on_push = {
        let tier = tier.clone();
        move |push: PushInfo| -> Result<(), std::convert::Infallible> {
            if let Some(shared) = tier.upgrade() {
                shared.on_push(session_id, push);
            }
            Ok(())
        }
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timing.connect))
        .set_response_timeout(Some(timing.response))
        .set_push_sender(on_push);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(classify)?;
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("TRACKING").arg("ON").arg("BCAST");
    // An empty prefix (a template that starts with a placeholder, and no cache prefix) covers
    // every key, which is BCAST with no prefix at all.
    if !prefixes.iter().any(Vec::is_empty) {
        for prefix in prefixes {
            cmd.arg("PREFIX").arg(prefix.as_slice());
        }
    }
    cmd.query_async::<()>(&mut conn).await.map_err(classify)?;
    Ok(conn)
}

/// The keys an `invalidate` push names; `None` for a flush (`FLUSHDB`, `FLUSHALL`), which
/// names none.
pub(crate) fn invalidated_keys(push: &PushInfo) -> Option<Vec<&[u8]>> {
    let mut keys = Vec::new();
    match push.data.first() {
        Some(Value::Array(items)) | Some(Value::Set(items)) => {
            for item in items {
                if let Value::BulkString(key) = item {
                    keys.push(key.as_slice());
                }
            }
            Some(keys)
        }
        _ => None,
    }
}

pub(crate) fn is_invalidate(push: &PushInfo) -> bool {
    push.kind == PushKind::Invalidate
}

pub(crate) fn is_disconnection(push: &PushInfo) -> bool {
    push.kind == PushKind::Disconnection
}

/// The smallest set of prefixes that covers `prefixes`: Redis refuses overlapping ones.
pub(crate) fn minimal(mut prefixes: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    prefixes.sort();
    prefixes.dedup();
    let mut out: Vec<Vec<u8>> = Vec::new();
    for p in prefixes {
        if !out.iter().any(|kept| p.starts_with(kept)) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_that_overlap_are_merged() {
        let got = minimal(vec![
            b"app:item:".to_vec(),
            b"app:".to_vec(),
            b"other:".to_vec(),
            b"app:".to_vec(),
        ]);
        assert_eq!(got, vec![b"app:".to_vec(), b"other:".to_vec()]);
    }

    #[test]
    fn an_empty_prefix_covers_everything() {
        assert_eq!(
            minimal(vec![b"a".to_vec(), Vec::new()]),
            vec![Vec::<u8>::new()]
        );
    }

    #[test]
    fn an_unknown_endpoint_is_the_node_that_answered() {
        let node = |host: Value, port: i64| Value::Array(vec![host, Value::Int(port)]);
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(8000),
                node(bulk(""), 7000),
                node(Value::Nil, 7003),
            ]),
            Value::Array(vec![
                Value::Int(8001),
                Value::Int(16383),
                node(bulk("10.0.0.2"), 7001),
                node(bulk("?"), 7004),
                node(bulk("0.0.0.0"), 7005),
            ]),
        ]);
        assert_eq!(
            slot_nodes(reply, "seed.example"),
            vec![
                "10.0.0.2:7001",
                "seed.example:7000",
                "seed.example:7003",
                "seed.example:7005"
            ]
        );
        assert!(slot_nodes(Value::Array(Vec::new()), "seed.example").is_empty());
    }

    #[test]
    fn invalidate_pushes_name_keys_or_a_flush() {
        let push = PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Array(vec![Value::BulkString(b"k".to_vec())])],
        };
        assert_eq!(invalidated_keys(&push), Some(vec![&b"k"[..]]));
        let flush = PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Nil],
        };
        assert_eq!(invalidated_keys(&flush), None);
    }
}
