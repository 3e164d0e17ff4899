//! Shared helpers for the integration tests (each test file does `mod support;`).
//!
//! * [`redis_url`] / [`raw_conn`] / [`unique_prefix`]: the shared throwaway Redis
//!   that `scripts/test.sh` starts (`CACHEOBJ_TEST_REDIS_URL`). Tests never skip
//!   silently: without the variable they panic.
//! * [`RedisServer`]: a private `redis-server` per test, for tests that need to
//!   stop, restart, pause or resume the server.
//! * [`cluster_nodes`] / [`raw_cluster_conn`] / [`cluster_cache`]: the shared
//!   3-master Redis Cluster that `scripts/test.sh` starts
//!   (`CACHEOBJ_TEST_CLUSTER_NODES`).
//! * [`tls_url`] / [`ca_cert`]: the shared TLS redis-server and its CA
//!   (`CACHEOBJ_TEST_TLS_URL`, `CACHEOBJ_TEST_CA_CERT`).
//! * [`backends`]: the behaviour suite's three backends, "redis", "cluster" and
//!   "memory"; [`raw_conn_for`] a raw connection matching one of them.
//!
//! Only std + tokio + redis are used; signals go through the `kill` command.
#![allow(dead_code)]
pub mod cluster;
pub mod history;

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Environment variable holding the URL of the shared test Redis.
pub const REDIS_URL_ENV: &str = "CACHEOBJ_TEST_REDIS_URL";
/// Environment variable holding the path of the `redis-server` binary.
pub const REDIS_SERVER_ENV: &str = "CACHEOBJ_REDIS_SERVER";
/// Environment variable holding the shared test cluster's node URLs, comma-separated.
pub const CLUSTER_NODES_ENV: &str = "CACHEOBJ_TEST_CLUSTER_NODES";
/// Environment variable holding the `rediss://` URL of the shared TLS test server.
pub const TLS_URL_ENV: &str = "CACHEOBJ_TEST_TLS_URL";
/// Environment variable holding the path of the CA certificate (PEM) that signed the TLS
/// test server's certificate.
pub const CA_CERT_ENV: &str = "CACHEOBJ_TEST_CA_CERT";

/// How long a freshly started `redis-server` may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times [`RedisServer::start`] / [`RedisServer::restart`] try to bind.
const START_ATTEMPTS: usize = 5;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// URL of the shared throwaway Redis started by `scripts/test.sh`.
///
/// Panics if `CACHEOBJ_TEST_REDIS_URL` is not set: tests never skip silently.
pub fn redis_url() -> String {
    match std::env::var(REDIS_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "CACHEOBJ_TEST_REDIS_URL is not set: run the suite with `bash scripts/test.sh`, \
             which starts a throwaway redis-server"
        ),
    }
}

/// The node URLs of the shared 3-master Redis Cluster started by `scripts/test.sh`.
///
/// Panics if `CACHEOBJ_TEST_CLUSTER_NODES` is not set: tests never skip silently.
pub fn cluster_nodes() -> Vec<String> {
    let nodes: Vec<String> = std::env::var(CLUSTER_NODES_ENV)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    if nodes.is_empty() {
        panic!(
            "{CLUSTER_NODES_ENV} is not set: run the suite with `bash scripts/test.sh`, \
             which starts a throwaway 3-master Redis Cluster"
        );
    }
    nodes
}

/// The `rediss://` URL of the shared TLS redis-server started by `scripts/test.sh`.
///
/// Panics if `CACHEOBJ_TEST_TLS_URL` is not set: tests never skip silently.
pub fn tls_url() -> String {
    match std::env::var(TLS_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "{TLS_URL_ENV} is not set: run the suite with `bash scripts/test.sh`, \
             which starts a throwaway TLS redis-server"
        ),
    }
}

/// The CA certificate (PEM) that signed the TLS test server's certificate.
///
/// Panics if `CACHEOBJ_TEST_CA_CERT` is not set or the file does not exist.
pub fn ca_cert() -> PathBuf {
    match std::env::var_os(CA_CERT_ENV) {
        Some(p) if !p.is_empty() => {
            let path = PathBuf::from(p);
            assert!(
                path.is_file(),
                "{CA_CERT_ENV}={} is not a file: run the suite with `bash scripts/test.sh`",
                path.display()
            );
            path
        }
        _ => panic!(
            "{CA_CERT_ENV} is not set: run the suite with `bash scripts/test.sh`, \
             which generates the TLS test certificates"
        ),
    }
}

/// A key prefix unique to this call, e.g. `t:my_test:1234:1700000000000000000:7:`,
/// so tests running in parallel never touch each other's keys.
pub fn unique_prefix(test_name: &str) -> String {
    let pid = std::process::id();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("t:{test_name}:{pid}:{nanos}:{n}:")
}

/// A multiplexed connection to the shared test Redis ([`redis_url`]).
pub async fn raw_conn() -> redis::aio::MultiplexedConnection {
    raw_conn_to(&redis_url()).await
}

/// Whether a fill lease (FORMAT.md's lease marker) sits under `key` on the Redis at `url`, and
/// the key's PTTL in milliseconds: how tests spot a lease a failed request left behind.
pub async fn lease_under(url: &str, key: &[u8]) -> (bool, i64) {
    let mut conn = raw_conn_to(url).await;
    let value: Option<Vec<u8>> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    (
        value.is_some_and(|v| v.starts_with(b"\xC1cacheobj:lease:")),
        pttl,
    )
}

/// A multiplexed connection to `url`; panics with a clear message on failure.
pub async fn raw_conn_to(url: &str) -> redis::aio::MultiplexedConnection {
    let client =
        redis::Client::open(url).unwrap_or_else(|e| panic!("invalid Redis URL {url:?}: {e}"));
    match tokio::time::timeout(
        Duration::from_secs(10),
        client.get_multiplexed_async_connection(),
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!("cannot connect to Redis at {url}: {e}"),
        Err(_) => panic!("timed out after 10 s connecting to Redis at {url}"),
    }
}

/// A cluster connection to the shared test cluster ([`cluster_nodes`]); commands are routed
/// by key slot, like the library's own.
pub async fn raw_cluster_conn() -> redis::cluster_async::ClusterConnection {
    let nodes = cluster_nodes();
    let client = redis::cluster::ClusterClient::new(nodes.clone())
        .unwrap_or_else(|e| panic!("invalid cluster node URLs {nodes:?}: {e}"));
    match tokio::time::timeout(Duration::from_secs(10), client.get_async_connection()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!("cannot connect to the Redis Cluster at {nodes:?}: {e}"),
        Err(_) => panic!("timed out after 10 s connecting to the Redis Cluster at {nodes:?}"),
    }
}

/// A raw connection to one of the shared test servers.
pub enum RawConn {
    /// To the standalone server ([`raw_conn`]).
    Standalone(redis::aio::MultiplexedConnection),
    /// To the cluster ([`raw_cluster_conn`]).
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for RawConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RawConn::Standalone(c) => c.req_packed_command(cmd),
            RawConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RawConn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            RawConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RawConn::Standalone(c) => c.get_db(),
            RawConn::Cluster(c) => c.get_db(),
        }
    }
}

/// A raw connection to the server behind a [`backends`] label: the standalone server for
/// `"redis"`, the cluster for `"cluster"`, none for `"memory"`.
pub async fn raw_conn_for(label: &str) -> Option<RawConn> {
    match label {
        "redis" => Some(RawConn::Standalone(raw_conn().await)),
        "cluster" => Some(RawConn::Cluster(raw_cluster_conn().await)),
        "memory" => None,
        other => panic!("unknown backend label {other:?}"),
    }
}

/// The `redis-server` binary: `$CACHEOBJ_REDIS_SERVER`, else `redis-server` on PATH.
fn redis_server_binary() -> PathBuf {
    match std::env::var_os(REDIS_SERVER_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("redis-server"),
    }
}

/// A free loopback TCP port (bound to port 0, then released).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to pick a free port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("cannot read the local address of a bound socket: {e}"))
        .port()
}

fn unique_temp_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "cacheobj-test-redis-{}-{nanos}-{n}",
        std::process::id()
    ));
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", dir.display()));
    dir
}

fn read_logs(dir: &Path) -> String {
    let mut out = String::new();
    for name in ["redis.log", "stdout.log"] {
        if let Ok(s) = fs::read_to_string(dir.join(name)) {
            out.push_str(&format!("--- {name} ---\n{s}"));
        }
    }
    out
}

/// Sends `kill -<signal> <pid>`; returns whether it succeeded.
/// Sends `signal` with `kill`; for `STOP`, returns only once the process is stopped, so that
/// a test's clock starts the fault when it is in effect.
fn send_signal(pid: u32, signal: &str) -> bool {
    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if sent && signal == "STOP" {
        let deadline = Instant::now() + Duration::from_secs(5);
        while process_state(pid) != Some('T') {
            assert!(
                Instant::now() < deadline,
                "process {pid} did not stop within 5 s of SIGSTOP (state {:?})",
                process_state(pid)
            );
            thread::sleep(Duration::from_micros(200));
        }
    }
    sent
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `T` for stopped, ...).
fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: the state follows the last ')'.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Checks over raw RESP that the server on `port` answers PING with +PONG and
/// that it is the process `pid` (so we never mistake another server for ours).
fn probe(port: u16, pid: u32) -> bool {
    fn inner(port: u16, pid: u32) -> std::io::Result<bool> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        stream.write_all(b"*1\r\n$4\r\nPING\r\n")?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line != "+PONG\r\n" {
            return Ok(false); // e.g. -LOADING: not ready yet
        }
        stream.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")?;
        line.clear();
        reader.read_line(&mut line)?;
        let Some(len) = line
            .strip_prefix('$')
            .and_then(|l| l.trim_end().parse::<usize>().ok())
        else {
            return Ok(false);
        };
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        let body = String::from_utf8_lossy(&body);
        let expected = format!("process_id:{pid}");
        Ok(body.lines().any(|l| l.trim_end() == expected))
    }
    inner(port, pid).unwrap_or(false)
}

/// A private, throwaway `redis-server` on a free loopback port, with its own
/// temp dir and no persistence (unless [`start_persistent`](Self::start_persistent)).
/// Killed (and its dir removed) on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    dir: PathBuf,
    persistent: bool,
}

impl RedisServer {
    /// Starts a new server on a free loopback port and waits until it answers PING.
    pub fn start() -> RedisServer {
        RedisServer::start_with(false)
    }

    /// Like [`start`](Self::start), with an append-only file synced on every write, so what
    /// was written survives [`stop`](Self::stop) (a SIGKILL) and comes back on
    /// [`restart`](Self::restart): a restart that loses nothing.
    pub fn start_persistent() -> RedisServer {
        RedisServer::start_with(true)
    }

    fn start_with(persistent: bool) -> RedisServer {
        let dir = unique_temp_dir();
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match spawn_ready(port, &dir, persistent) {
                Ok(child) => {
                    return RedisServer {
                        port,
                        child,
                        dir,
                        persistent,
                    }
                }
                // Most likely somebody grabbed the port in between: try another one.
                Err(e) => last_err = e,
            }
        }
        let _ = fs::remove_dir_all(&dir);
        panic!(
            "could not start a throwaway redis-server after {START_ATTEMPTS} attempts: {last_err}"
        );
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL, also works while paused) and reaps it.
    /// The port stays known so [`restart`](Self::restart) can reuse it.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// Stops the server if it is running, then starts a new one on the same port
    /// and waits until it answers PING. Retries a few times in case the port is
    /// briefly unavailable.
    pub fn restart(&mut self) {
        self.stop();
        let mut last_err = String::new();
        for attempt in 0..START_ATTEMPTS {
            if attempt > 0 {
                thread::sleep(Duration::from_millis(200 * attempt as u64));
            }
            match spawn_ready(self.port, &self.dir, self.persistent) {
                Ok(child) => {
                    self.child = child;
                    return;
                }
                Err(e) => last_err = e,
            }
        }
        panic!(
            "could not restart redis-server on 127.0.0.1:{} after {START_ATTEMPTS} attempts: {last_err}",
            self.port
        );
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered.
    pub fn pause(&self) {
        let pid = self.child.id();
        assert!(
            send_signal(pid, "STOP"),
            "`kill -STOP {pid}` failed (is the redis-server still running?)"
        );
    }

    /// Unfreezes a paused server (SIGCONT).
    pub fn resume(&self) {
        let pid = self.child.id();
        assert!(
            send_signal(pid, "CONT"),
            "`kill -CONT {pid}` failed (is the redis-server still running?)"
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Only signal a child that has not been reaped (its pid could be reused).
        if matches!(self.child.try_wait(), Ok(None)) {
            send_signal(self.child.id(), "CONT");
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Spawns `redis-server` on `port` with `dir` as working dir and waits (up to
/// [`READY_TIMEOUT`]) until it answers PING. On failure the child is reaped and
/// an error (with the server's log) is returned.
fn spawn_ready(port: u16, dir: &Path, persistent: bool) -> Result<Child, String> {
    let bin = redis_server_binary();
    let out = File::create(dir.join("stdout.log"))
        .map_err(|e| format!("cannot create {}: {e}", dir.join("stdout.log").display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cannot clone log file handle: {e}"))?;
    let mut child = Command::new(&bin)
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(if persistent {
            ["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            ["--appendonly", "no", "--appendfsync", "everysec"]
        })
        .args(["--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {:?}: {e}. Install redis-server or set {REDIS_SERVER_ENV} \
                 (`bash scripts/test.sh` does both)",
                bin
            )
        });
    let pid = child.id();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(format!(
                    "redis-server on port {port} exited early ({status})\n{}",
                    read_logs(dir)
                ));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("cannot poll redis-server: {e}")),
        }
        if probe(port, pid) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "redis-server on 127.0.0.1:{port} did not answer PING with +PONG within {:?}\n{}",
                READY_TIMEOUT,
                read_logs(dir)
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Both backends, for the behaviour suite (tests/obj.rs, tests/list.rs, ...).
// ---------------------------------------------------------------------------

/// A [`cacheobj::Cache`] on the shared test Redis ([`redis_url`]) with a fresh
/// [`unique_prefix`], and that prefix.
pub async fn redis_cache(test: &str) -> (cacheobj::Cache, String) {
    let prefix = unique_prefix(test);
    // A generous response timeout: these tests check behaviour, not speed, and run on shared,
    // loaded machines (the fail-open tests set their own short timeouts).
    let config = cacheobj::CacheConfig::builder()
        .url(redis_url())
        .prefix(prefix.clone())
        .response_timeout(Duration::from_secs(2))
        .build();
    let cache = cacheobj::Cache::connect(config)
        .await
        .unwrap_or_else(|e| panic!("Cache::connect to {} failed: {e:?}", redis_url()));
    if let Err(e) = cache.ping().await {
        panic!("the test Redis at {} does not answer: {e:?}", redis_url());
    }
    (cache, prefix)
}

/// A [`cacheobj::Cache`] on the shared test cluster ([`cluster_nodes`]) with a fresh
/// [`unique_prefix`], and that prefix.
pub async fn cluster_cache(test: &str) -> (cacheobj::Cache, String) {
    let nodes = cluster_nodes();
    let prefix = unique_prefix(test);
    let config = cacheobj::CacheConfig::builder()
        .nodes(nodes.clone())
        .prefix(prefix.clone())
        .response_timeout(Duration::from_secs(2))
        .build();
    let cache = cacheobj::Cache::connect(config)
        .await
        .unwrap_or_else(|e| panic!("Cache::connect to the cluster {nodes:?} failed: {e:?}"));
    if let Err(e) = cache.ping().await {
        panic!("the test Redis Cluster at {nodes:?} does not answer: {e:?}");
    }
    (cache, prefix)
}

/// An in-memory [`cacheobj::Cache`] with a fresh [`unique_prefix`], and that prefix.
pub fn memory_cache(test: &str) -> (cacheobj::Cache, String) {
    let prefix = unique_prefix(test);
    let config = cacheobj::CacheConfig::builder()
        .prefix(prefix.clone())
        .build();
    let cache = cacheobj::Cache::in_memory_with(config)
        .unwrap_or_else(|e| panic!("Cache::in_memory_with failed: {e:?}"));
    (cache, prefix)
}

/// Every backend, labelled `"redis"` (the standalone server), `"cluster"` (the 3-master
/// cluster) and `"memory"`, each with its own fresh prefix: run the same assertions against
/// each (put the label in assertion messages). Panics unless `scripts/test.sh` started the
/// servers.
pub async fn backends(test: &str) -> Vec<(&'static str, cacheobj::Cache)> {
    let (redis, _) = redis_cache(test).await;
    let (cluster, _) = cluster_cache(test).await;
    let (memory, _) = memory_cache(test);
    vec![("redis", redis), ("cluster", cluster), ("memory", memory)]
}

/// The raw Redis key (prefix included) of an entry, as a `Vec<u8>` for raw commands.
pub fn entry_redis_key<V, K: cacheobj::CacheKey, Kd: cacheobj::Kind>(
    cache: &cacheobj::Cache,
    strategy: &cacheobj::Strategy<V, K, Kd>,
    key: &K,
) -> Vec<u8> {
    cache
        .entry_key(strategy, key)
        .unwrap_or_else(|e| panic!("entry_key failed: {e:?}"))
        .key
}

/// `PTTL` of a raw key on a test Redis: -2 missing, -1 no TTL, else milliseconds.
pub async fn raw_pttl(conn: &mut impl redis::aio::ConnectionLike, key: &[u8]) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("PTTL failed: {e}"))
}

/// `TYPE` of a raw key on a test Redis (`"none"` when missing).
pub async fn raw_type(conn: &mut impl redis::aio::ConnectionLike, key: &[u8]) -> String {
    let v: redis::Value = redis::cmd("TYPE")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("TYPE failed: {e}"));
    match v {
        redis::Value::SimpleString(s) => s,
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("unexpected TYPE reply {other:?}"),
    }
}

/// Waits until `done` holds, polling every millisecond; panics with `what` after `limit`.
/// Tests use it to order tasks by what they have done, not by how long they slept.
pub async fn wait_until(what: &str, limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Each command's `calls=` in the text of `INFO commandstats` (`"get"`, `"client|tracking"`).
pub fn command_calls(info: &str) -> Vec<(&str, u64)> {
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            Some((name, rest.split(',').next()?.parse().ok()?))
        })
        .collect()
}

/// `INFO commandstats` of the server on `conn`, as text.
pub async fn commandstats(conn: &mut impl redis::aio::ConnectionLike) -> String {
    redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("INFO commandstats failed: {e}"))
}

/// `INFO commandstats` calls of every command but those in `skip` (say the heartbeat's
/// `ping`, and `info`, the check itself).
pub async fn calls_except(conn: &mut impl redis::aio::ConnectionLike, skip: &[&str]) -> u64 {
    let info = commandstats(conn).await;
    command_calls(&info)
        .into_iter()
        .filter(|(name, _)| !skip.contains(name))
        .map(|(_, calls)| calls)
        .sum()
}

/// Polls `present` (is the entry still there?) every 10 ms until it says no: how tests wait
/// for a TTL to pass without sleeping it. Panics if it still says yes when checked more than
/// `within` after `since` (the instant before the entry was written): the entry outlived its TTL.
pub async fn wait_until_gone<F, Fut>(what: &str, since: Instant, within: Duration, mut present: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let checked = Instant::now();
        if !present().await {
            return;
        }
        let age = checked.duration_since(since);
        assert!(
            age <= within,
            "{what} was still there {age:?} after it was written (expected gone within {within:?})"
        );
    }
}

/// Polls the async condition `done` every 2 ms until it holds; panics with `what` after
/// `limit`. The async twin of [`wait_until`], for conditions that need a Redis round trip.
pub async fn wait_until_async<F, Fut>(what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if done().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {limit:?} waiting until {what}"
        );
        tick.tick().await;
    }
}
