//! The Redis backend: plain commands on the hot path, Lua scripts wherever a step must be
//! atomic. Every command and script touches exactly one key, so all of it runs on Redis Cluster.
//!
//! - `conn`: the connection (a manager, the user's connection, or a lazy cluster connection).
//! - `ops`: the operations the cache runs; `scripts`: their Lua; `reply`: reading replies.
//! - `batch`: coalescing concurrent GETs into MGETs.
//! - `breaker`, `health`, `cluster`: what happens when Redis, or one cluster node, fails.

mod batch;
mod breaker;
mod cluster;
mod conn;
mod health;
mod ops;
mod reply;
mod scripts;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
#[cfg(feature = "cluster")]
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::{Cmd, RedisResult, Script, Value};

use self::batch::{ReadBatcher, WithTtl, READS_IN_FLIGHT};
use self::breaker::{Breaker, Scope};
use self::conn::{Rebuild, RedisConn};
use crate::error::{is_connection_error, Error};
use crate::lock::read;

/// The Redis backend: cheap to clone, one reference count on the state its clones share.
#[derive(Clone)]
pub(crate) struct RedisBackend {
    shared: Arc<Shared>,
}

/// What every clone of a backend shares.
struct Shared {
    conn: RwLock<RedisConn>,
    rebuild: Option<Rebuild>,
    /// When the connection was last rebuilt or reset ([`now_ms`](crate::clock::now_ms) time;
    /// 0: never).
    last_rebuild_ms: AtomicU64,
    timeout: Duration,
    breaker: Breaker,
    /// A Redis Cluster (the connection is `RedisConn::Cluster`, for good).
    cluster: bool,
    /// A lookup of which cluster node serves a failed key is under way.
    #[cfg(feature = "cluster")]
    node_lookup: AtomicBool,
    /// A background ping is checking whether a failed standalone Redis answers again.
    probing: AtomicBool,
    /// Coalesces concurrent GETs into MGETs; not on a cluster, where MGET splits by slot.
    batcher: Option<ReadBatcher<Value>>,
    /// The same for the GET+PTTL reads of local-tier strategies (an MGET and the PTTLs).
    ttl_batcher: Option<ReadBatcher<WithTtl>>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("timeout", &self.shared.timeout)
            .field("breaker", &self.shared.breaker)
            .finish_non_exhaustive()
    }
}

/// `NAME key [field]`, built in place (`redis::cmd(..).arg(..)` returns a reference, and
/// cloning the command would copy its buffers).
fn key_cmd(name: &str, key: &[u8], field: Option<&[u8]>) -> Cmd {
    let mut cmd = redis::cmd(name);
    cmd.arg(key);
    if let Some(field) = field {
        cmd.arg(field);
    }
    cmd
}

impl RedisBackend {
    fn new(
        conn: RedisConn,
        rebuild: Option<Rebuild>,
        timeout: Duration,
        retry_interval: Duration,
    ) -> Self {
        #[cfg(feature = "cluster")]
        let is_cluster = matches!(conn, RedisConn::Cluster(_));
        #[cfg(not(feature = "cluster"))]
        let is_cluster = false;
        RedisBackend {
            shared: Arc::new(Shared {
                batcher: (!is_cluster).then(|| ReadBatcher::new(READS_IN_FLIGHT)),
                ttl_batcher: (!is_cluster).then(|| ReadBatcher::new(READS_IN_FLIGHT)),
                conn: RwLock::new(conn),
                rebuild,
                last_rebuild_ms: AtomicU64::new(0),
                timeout,
                breaker: Breaker::new(is_cluster, retry_interval),
                cluster: is_cluster,
                #[cfg(feature = "cluster")]
                node_lookup: AtomicBool::new(false),
                probing: AtomicBool::new(false),
            }),
        }
    }

    pub(crate) fn response_timeout(&self) -> Duration {
        self.shared.timeout
    }

    fn conn(&self) -> RedisConn {
        read(&self.shared.conn).clone()
    }

    /// Which cluster connection requests go to now (0 off a cluster): see `LazyCluster::reset`.
    fn generation(&self) -> u64 {
        #[cfg(feature = "cluster")]
        if self.shared.cluster {
            if let RedisConn::Cluster(lazy) = &*read(&self.shared.conn) {
                return lazy.generation.load(Ordering::Acquire);
            }
        }
        0
    }

    /// Runs one request, bounded by the response timeout and skipped while the breaker is open.
    async fn run<T, F, Fut>(&self, scope: Scope<'_>, f: F) -> Result<T, Error>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if self.shared.breaker.is_open(scope) {
            return Err(Error::Unavailable);
        }
        self.run_unchecked(scope, self.shared.timeout, f).await
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
                self.shared.breaker.close(scope);
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
}
