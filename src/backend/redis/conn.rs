//! Connections to Redis: the library's auto-reconnecting manager, one the user built, or a
//! Redis Cluster connection made on first use; and how to rebuild the manager.

#[cfg(feature = "cluster")]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "cluster")]
use std::sync::{Arc, RwLock};

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::RedisBackend;
use crate::config::CacheConfig;
#[cfg(feature = "cluster")]
use crate::lock::{read, write};

/// A connection to Redis: the library's own auto-reconnecting manager, one the user built, or
/// a Redis Cluster connection.
#[derive(Clone)]
pub(super) enum RedisConn {
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    #[cfg(feature = "cluster")]
    Cluster(Arc<LazyCluster>),
}

/// A cluster connection made on first use, so that a cache starts while the cluster is down;
/// once made, redis-rs follows the cluster's topology and reconnects to nodes by itself.
#[cfg(feature = "cluster")]
pub(super) struct LazyCluster {
    client: redis::cluster::ClusterClient,
    conn: RwLock<Option<redis::cluster_async::ClusterConnection>>,
    connecting: tokio::sync::Mutex<()>,
    /// Counts resets: a request that fails on a connection since dropped says nothing about
    /// the nodes.
    pub(super) generation: AtomicU64,
}

#[cfg(feature = "cluster")]
impl LazyCluster {
    fn new(client: redis::cluster::ClusterClient) -> Self {
        LazyCluster {
            client,
            conn: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        }
    }

    fn current(&self) -> Option<redis::cluster_async::ClusterConnection> {
        read(&self.conn).clone()
    }

    /// Drops the cached connection, so the next request makes a fresh one: an existing cluster
    /// connection can stay wedged after a master fails over under load.
    pub(super) fn reset(&self) {
        let mut conn = write(&self.conn);
        *conn = None;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) async fn get(&self) -> RedisResult<redis::cluster_async::ClusterConnection> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let conn = self.client.get_async_connection().await?;
        *write(&self.conn) = Some(conn.clone());
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
pub(super) struct Rebuild {
    pub(super) client: redis::Client,
    pub(super) config: ConnectionManagerConfig,
}

impl RedisBackend {
    /// A backend on the library's own connection manager for `client`: it reconnects by itself
    /// after I/O errors, and is rebuilt after failures it does not recover from.
    pub(crate) fn from_client(client: redis::Client, config: &CacheConfig) -> RedisResult<Self> {
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            // The backend bounds every request with its own timer, which also covers waiting
            // for a reconnect; a second timer per request inside redis-rs would only cost
            // (about 1,000 instructions per hit, measured with callgrind).
            .set_response_timeout(None)
            .set_number_of_retries(0);
        let manager =
            ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone())?;
        let rebuild = Rebuild {
            client,
            config: manager_config,
        };
        Ok(RedisBackend::new(
            RedisConn::Manager(manager),
            Some(rebuild),
            config.response_timeout,
            config.retry_interval,
        ))
    }

    /// A backend on a connection the user built; it does not reconnect by itself.
    pub(crate) fn from_connection(conn: MultiplexedConnection, config: &CacheConfig) -> Self {
        RedisBackend::new(
            RedisConn::Multiplexed(conn),
            None,
            config.response_timeout,
            config.retry_interval,
        )
    }

    /// A backend on a Redis Cluster, connected on first use.
    #[cfg(feature = "cluster")]
    pub(crate) fn cluster(client: redis::cluster::ClusterClient, config: &CacheConfig) -> Self {
        RedisBackend::new(
            RedisConn::Cluster(Arc::new(LazyCluster::new(client))),
            None,
            config.response_timeout,
            config.retry_interval,
        )
    }
}
