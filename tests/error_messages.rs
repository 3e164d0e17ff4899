//! What an error's message says: each kind of Redis failure is named, with what to check, so a
//! log line of `%error` alone says what to fix; the source keeps Redis's own words.
//!
//! Against real servers: ACL users (their own names) on the shared Redis for a wrong password
//! and NOPERM, a private server with `maxmemory 1` for OOM, a private paused server for a
//! timeout, a closed port for a refused connection, and a real WRONGTYPE reply.

mod support;

use std::error::Error as _;
use std::net::TcpListener;
use std::time::Duration;

use cacheobj::{Cache, CacheConfig, CacheKey, Counter, Error, Strategy};
use serde::Serialize;
use support::{raw_conn, raw_conn_to, redis_url, unique_prefix, RedisServer};

#[derive(Debug, Clone, Serialize, CacheKey)]
struct K {
    id: u64,
}

const COUNT: Strategy<i64, K, Counter> = Strategy::counter("count:<id>").expire(60);

/// The port of a `redis://127.0.0.1:<port>/` URL.
fn port_of(url: &str) -> u16 {
    let rest = url.trim_start_matches("redis://");
    let authority = rest.split('/').next().unwrap_or(rest);
    let hostport = authority.rsplit('@').next().unwrap_or(authority);
    hostport
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url:?}"))
}

/// A cache on `127.0.0.1:port`, as `user` (name, password) when given.
async fn cache(port: u16, user: Option<(&str, &str)>, timeout: Duration, prefix: &str) -> Cache {
    let auth = user.map_or(String::new(), |(name, pw)| format!("{name}:{pw}@"));
    let config = CacheConfig::builder()
        .url(format!("redis://{auth}127.0.0.1:{port}/"))
        .prefix(prefix.to_owned())
        .response_timeout(timeout)
        .build();
    Cache::connect(config).await.unwrap()
}

const TIMEOUT: Duration = Duration::from_secs(2);

/// An ACL user on the shared Redis, named after the test and removed on drop.
struct AclUser {
    name: String,
}

impl AclUser {
    async fn create(test: &str, rules: &[&str]) -> AclUser {
        let name = unique_prefix(test).replace(':', "-");
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(&name).arg("reset").arg("on");
        for rule in rules {
            cmd.arg(*rule);
        }
        cmd.query_async::<()>(&mut raw_conn().await)
            .await
            .unwrap_or_else(|e| panic!("ACL SETUSER {name} {rules:?}: {e}"));
        AclUser { name }
    }
}

impl Drop for AclUser {
    fn drop(&mut self) {
        // Best effort, on a blocking connection: Drop cannot await.
        if let Ok(mut conn) = redis::Client::open(redis_url()).and_then(|c| c.get_connection()) {
            let _ = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(&self.name)
                .query::<()>(&mut conn);
        }
    }
}

fn assert_names(err: &Error, expected: &str) {
    let message = err.to_string();
    assert!(
        message.contains(expected),
        "message {message:?} does not name {expected:?} ({err:?})"
    );
    assert!(err.source().is_some(), "no source for {message:?}");
}

#[tokio::test]
async fn a_wrong_password_says_authentication_was_refused() {
    let user = AclUser::create("wrongpass", &[">right-password", "~*", "+@all"]).await;
    let port = port_of(&redis_url());
    let user = Some((user.name.as_str(), "wrong-password"));
    let cache = cache(port, user, TIMEOUT, &unique_prefix("wrongpass")).await;
    let err = cache.ping().await.unwrap_err();
    assert_names(&err, "redis refused authentication");
    assert_names(&err, "username and password");
}

#[tokio::test]
async fn a_missing_key_permission_says_noperm() {
    let prefix = unique_prefix("noperm_key");
    // Every command, but no key under the cache's prefix.
    let user = AclUser::create("noperm_key", &[">pw", "~elsewhere:*", "+@all"]).await;
    let cache = cache(
        port_of(&redis_url()),
        Some((&user.name, "pw")),
        TIMEOUT,
        &prefix,
    )
    .await;
    cache.ping().await.unwrap();
    let err = cache
        .set_counter(&COUNT, &K { id: 1 }, 5)
        .await
        .unwrap_err();
    assert_names(&err, "redis denied permission for a command or key");
}

#[tokio::test]
async fn a_missing_command_permission_says_noperm() {
    // Every key, but not PING.
    let user = AclUser::create("noperm_cmd", &[">pw", "~*", "+@all", "-ping"]).await;
    let prefix = unique_prefix("noperm_cmd");
    let cache = cache(
        port_of(&redis_url()),
        Some((&user.name, "pw")),
        TIMEOUT,
        &prefix,
    )
    .await;
    let err = cache.ping().await.unwrap_err();
    assert_names(&err, "redis denied permission for a command or key");
}

#[tokio::test]
async fn a_full_server_says_out_of_memory() {
    let server = RedisServer::start();
    let mut conn = raw_conn_to(&server.url()).await;
    for (name, value) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1")] {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    let cache = cache(server.port, None, TIMEOUT, "oom:").await;
    let err = cache
        .set_counter(&COUNT, &K { id: 1 }, 5)
        .await
        .unwrap_err();
    assert_names(&err, "redis is out of memory");
    assert_names(&err, "maxmemory");
}

#[tokio::test]
async fn a_closed_port_says_the_connection_was_refused() {
    // A port that nothing listens on: bound, then released.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = cache(port, None, TIMEOUT, "refused:").await;
    let err = cache.ping().await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert_names(&err, "redis refused the connection");
    assert_names(&err, "host and port");
}

#[tokio::test]
async fn a_frozen_server_says_it_did_not_answer_in_time() {
    let server = RedisServer::start();
    let cache = cache(server.port, None, Duration::from_millis(200), "timeout:").await;
    cache.ping().await.unwrap();
    server.pause();
    let err = cache.ping().await.unwrap_err();
    server.resume();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("did not answer within") && message.contains("response_timeout"),
        "{message:?}"
    );
}

#[tokio::test]
async fn a_wrongtype_reply_says_another_type_is_there() {
    let key = format!("{}str", unique_prefix("wrongtype"));
    let mut conn = raw_conn().await;
    redis::cmd("SET")
        .arg(&key)
        .arg("x")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let reply = redis::cmd("LPUSH")
        .arg(&key)
        .arg("y")
        .query_async::<i64>(&mut conn)
        .await;
    let _ = redis::cmd("DEL")
        .arg(&key)
        .query_async::<i64>(&mut conn)
        .await;
    let err = Error::from(reply.unwrap_err());
    assert_names(&err, "redis holds another type under this key (WRONGTYPE)");
}
