//! Failure handling: classifying errors, tripping the breaker, rebuilding a connection
//! manager that does not recover by itself, and probing a failed standalone server.

use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Value;

use super::breaker::Scope;
use super::conn::RedisConn;
use super::reply::is_auth_error;
use super::RedisBackend;
use crate::clock::now_ms;
use crate::error::Error;
use crate::lock::write;

impl RedisBackend {
    /// Replaces the connection manager after a failure it does not recover from by itself,
    /// at most once per retry interval.
    fn maybe_rebuild(&self, e: &redis::RedisError) {
        let Some(rebuild) = &self.shared.rebuild else {
            return;
        };
        if e.kind() != redis::ErrorKind::AuthenticationFailed && !is_auth_error(e) {
            return;
        }
        let now = now_ms();
        let last = self.shared.last_rebuild_ms.load(Ordering::Relaxed);
        if last != 0 && now < last.saturating_add(self.shared.breaker.retry_ms()) {
            return;
        }
        self.shared
            .last_rebuild_ms
            .store(now.max(1), Ordering::Relaxed);
        match ConnectionManager::new_lazy_with_config(
            rebuild.client.clone(),
            rebuild.config.clone(),
        ) {
            Ok(manager) => {
                *write(&self.shared.conn) = RedisConn::Manager(manager);
            }
            Err(error) => {
                tracing::warn!(%error, "cacheobj: could not rebuild the redis connection")
            }
        }
    }

    /// After a standalone Redis failed: pings it in the background, backing off from 10 ms, for
    /// up to the retry interval, and lets requests through again as soon as one is answered.
    /// A dropped connection that reconnects at once (`CLIENT KILL`, a proxy restart) then
    /// costs milliseconds of cache misses, not a whole retry interval. (On a cluster, the node
    /// lookup does this job.)
    fn probe(&self) {
        if self.shared.cluster || self.shared.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.shared.probing.store(false, Ordering::Release);
            return;
        };
        let backend = self.clone();
        runtime.spawn(async move {
            let retry = Duration::from_millis(backend.shared.breaker.retry_ms());
            let deadline = tokio::time::Instant::now() + retry;
            let mut pause = Duration::from_millis(10);
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(pause).await;
                // Not through `run_unchecked`: a failed probe must not extend the breaker.
                let mut conn = backend.conn();
                let ping = redis::cmd("PING");
                let pong = tokio::time::timeout(
                    backend.shared.timeout,
                    ping.query_async::<Value>(&mut conn),
                )
                .await;
                if matches!(pong, Ok(Ok(_))) {
                    backend.shared.breaker.close(Scope::Any);
                    break;
                }
                pause = (pause * 2).min(retry / 4).max(Duration::from_millis(1));
            }
            backend.shared.probing.store(false, Ordering::Release);
        });
    }

    pub(super) fn classify(&self, e: redis::RedisError) -> Error {
        self.maybe_rebuild(&e);
        if e.is_timeout() {
            return Error::Timeout(self.shared.timeout);
        }
        Error::Redis(e)
    }

    /// A request in `scope`, sent on connection `generation`, timed out or lost its
    /// connection: skip Redis there for a while and find out what failed.
    pub(super) fn failed(&self, scope: Scope<'_>, error: &Error, generation: u64) {
        if generation != self.generation() {
            // It was stuck on a cluster connection that has been replaced since.
            return;
        }
        self.shared.breaker.trip(scope, error);
        self.trip_node_of(scope);
        self.maybe_reset_cluster();
        self.probe();
    }
}
