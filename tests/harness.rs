//! Sanity tests for the shared test harness in `tests/support`.

mod support;

use std::time::Duration;

use support::{raw_conn, raw_conn_to, unique_prefix, RedisServer};

async fn ping(conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async(conn).await
}

#[tokio::test]
async fn shared_server_answers_and_prefixes_are_unique() {
    let mut conn = raw_conn().await;
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");

    let a = unique_prefix("harness");
    let b = unique_prefix("harness");
    assert_ne!(a, b);
    assert!(a.starts_with("t:harness:") && a.ends_with(':'), "{a}");

    let key = format!("{a}k");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("v")
        .arg("EX")
        .arg(60)
        .query_async(&mut conn)
        .await
        .unwrap();
    let got: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(got, "v");
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn started_server_answers_ping() {
    let server = RedisServer::start();
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}/", server.port));
    let mut conn = raw_conn_to(&server.url()).await;
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
}

#[tokio::test]
async fn pause_blocks_and_resume_unblocks() {
    let server = RedisServer::start();
    let mut conn = raw_conn_to(&server.url()).await;
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");

    server.pause();
    let paused = tokio::time::timeout(Duration::from_millis(200), ping(&mut conn)).await;
    assert!(
        paused.is_err(),
        "PING answered while the server was paused: {paused:?}"
    );

    server.resume();
    let resumed = tokio::time::timeout(Duration::from_secs(5), ping(&mut conn))
        .await
        .expect("PING still blocked after resume");
    assert_eq!(resumed.unwrap(), "PONG");
}

#[tokio::test]
async fn stop_then_restart_on_same_port() {
    let mut server = RedisServer::start();
    let port = server.port;
    let url = server.url();
    let mut conn = raw_conn_to(&url).await;
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();

    server.stop();
    let client = redis::Client::open(url.as_str()).unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("connecting to a stopped server should fail fast, not hang");
    assert!(refused.is_err(), "connected to a stopped server");

    server.restart();
    assert_eq!(server.port, port);
    assert_eq!(server.url(), url);
    let mut conn = raw_conn_to(&url).await;
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    // No persistence: the restarted server starts empty.
    let got: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(got, None);
}
