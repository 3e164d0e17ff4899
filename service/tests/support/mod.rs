//! Test harness: throwaway redis-servers, a database per test (PostgreSQL or SQLite, from
//! `SERVICE_TEST_DB`), service processes, and query counts read on the database's side.
//!
//! Nothing here skips: a missing server or variable fails the test with the reason.
//! Everything waits for events (a line on a pipe, an answer) with a deadline, never a sleep.

#![allow(dead_code)] // each test file uses part of it

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgPool;
use sqlx::Row;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// How long any one wait may last before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing the test with `what` after [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {DEADLINE:?}: {what}"),
    }
}

/// Polls `check` every 20 ms until it returns `Some`, failing with `what` after the deadline.
pub async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    within(what, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn required_env(name: &str, why: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set ({why}); run the service suite with `bash scripts/service_test.sh`"
        ),
    }
}

/// A free loopback port (bound and released; a server started on it retries on a clash).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

fn unique(name: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{name}_{}_{n}", std::process::id())
}

// ---------------------------------------------------------------------------------------
// Redis

/// A throwaway redis-server of this test, which the test may kill and restart.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl Redis {
    /// Starts one on a free port (`CACHEOBJ_REDIS_SERVER` names the binary).
    pub async fn start() -> Redis {
        let dir = std::env::temp_dir().join(unique("svc-redis"));
        std::fs::create_dir_all(&dir).expect("redis temp dir");
        let mut redis = Redis {
            port: 0,
            child: None,
            dir,
        };
        for _ in 0..5 {
            redis.port = free_port();
            if redis.spawn().await {
                return redis;
            }
        }
        panic!("could not start a throwaway redis-server (5 ports tried)");
    }

    async fn spawn(&mut self) -> bool {
        let bin = required_env("CACHEOBJ_REDIS_SERVER", "the redis-server binary");
        let child = Command::new(&bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("could not run {bin}: {e}"));
        self.child = Some(child);
        // Ready when it answers PING, gone when it exited (port clash).
        let answered = within("redis-server to answer PING", async {
            loop {
                if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                    return false;
                }
                if ping(self.port).await {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if !answered {
            self.child = None;
        }
        answered
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL, and wait until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill redis-server");
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        assert!(
            self.spawn().await,
            "redis-server could not start again on port {}",
            self.port
        );
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn ping(port: u16) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && &buf == b"+PONG\r\n"
}

// ---------------------------------------------------------------------------------------
// Databases

/// Which database the suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Sqlite,
}

/// `SERVICE_TEST_DB`: `postgres` (with `SERVICE_TEST_PG_URL`) or `sqlite`.
pub fn kind() -> Kind {
    match required_env("SERVICE_TEST_DB", "postgres or sqlite").as_str() {
        "postgres" => Kind::Postgres,
        "sqlite" => Kind::Sqlite,
        other => panic!("SERVICE_TEST_DB={other:?}: expected postgres or sqlite"),
    }
}

/// A database of this test: its own PostgreSQL database, or its own SQLite file.
pub struct Database {
    pub kind: Kind,
    /// What the service gets as `DATABASE_URL`.
    pub url: String,
    name: String,
    admin: Option<PgPool>,
    file: Option<PathBuf>,
}

impl Database {
    pub async fn create(test: &str) -> Database {
        let name = unique(test).to_lowercase();
        match kind() {
            Kind::Postgres => {
                let admin_url = required_env(
                    "SERVICE_TEST_PG_URL",
                    "the throwaway PostgreSQL's postgres:// URL, as a superuser",
                );
                let admin = within(
                    "connecting to the test PostgreSQL",
                    PgPool::connect(&admin_url),
                )
                .await
                .unwrap_or_else(|e| panic!("cannot connect to {admin_url}: {e}"));
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&admin)
                    .await
                    .expect("CREATE DATABASE");
                let base = admin_url
                    .rsplit_once('/')
                    .map_or(admin_url.as_str(), |(b, _)| b);
                Database {
                    kind: Kind::Postgres,
                    url: format!("{base}/{name}"),
                    name,
                    admin: Some(admin),
                    file: None,
                }
            }
            Kind::Sqlite => {
                let file = std::env::temp_dir().join(format!("{name}.db"));
                Database {
                    kind: Kind::Sqlite,
                    url: format!("sqlite://{}", file.display()),
                    name,
                    admin: None,
                    file: Some(file),
                }
            }
        }
    }

    /// Item-row reads (`SELECT .. FROM items ..`) executed so far, counted by the database
    /// (`pg_stat_statements`) on PostgreSQL. SQLite runs inside the service, so there the
    /// figure is the services' own count (their `/metrics`), passed in.
    pub async fn item_reads(&self, services: &[&Service]) -> u64 {
        match &self.admin {
            Some(admin) => {
                let row = sqlx::query(
                    "SELECT COALESCE(SUM(s.calls), 0)::BIGINT AS n FROM pg_stat_statements s \
                     JOIN pg_database d ON d.oid = s.dbid \
                     WHERE d.datname = $1 AND s.query ILIKE 'select % from items %'",
                )
                .bind(&self.name)
                .fetch_one(admin)
                .await
                .expect("reading pg_stat_statements (is it in shared_preload_libraries?)");
                u64::try_from(row.get::<i64, _>("n")).unwrap_or(0)
            }
            None => {
                let mut n = 0;
                for s in services {
                    n += s.item_reads_metric().await;
                }
                n
            }
        }
    }

    /// PostgreSQL only: refuses new connections to this database and ends the open ones.
    pub async fn go_down(&self) {
        let admin = self.admin.as_ref().expect("go_down needs PostgreSQL");
        sqlx::query(&format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false",
            self.name
        ))
        .execute(admin)
        .await
        .expect("ALTER DATABASE .. ALLOW_CONNECTIONS false");
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .execute(admin)
        .await
        .expect("pg_terminate_backend");
    }

    /// PostgreSQL only: accepts connections again.
    pub async fn come_back(&self) {
        let admin = self.admin.as_ref().expect("come_back needs PostgreSQL");
        sqlx::query(&format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
            self.name
        ))
        .execute(admin)
        .await
        .expect("ALTER DATABASE .. ALLOW_CONNECTIONS true");
    }

    /// PostgreSQL only: the admin pool, for tests that lock tables.
    pub fn admin(&self) -> &PgPool {
        self.admin.as_ref().expect("needs PostgreSQL")
    }

    /// PostgreSQL only: a pool on this test's database (the service's tables).
    pub async fn own_pool(&self) -> PgPool {
        PgPool::connect(&self.url)
            .await
            .expect("connect to the test database")
    }

    /// PostgreSQL only: whether some session of this database waits on a lock.
    pub async fn someone_waits_on_a_lock(&self) -> bool {
        let row = sqlx::query(
            "SELECT COUNT(*)::BIGINT AS n FROM pg_stat_activity \
             WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind(&self.name)
        .fetch_one(self.admin())
        .await
        .expect("pg_stat_activity");
        row.get::<i64, _>("n") > 0
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
        }
        // PostgreSQL databases go with the throwaway cluster when the script stops it.
    }
}

// ---------------------------------------------------------------------------------------
// The service

/// One `cacheobj-service` process.
pub struct Service {
    pub url: String,
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_changed: Arc<Notify>,
    client: reqwest::Client,
}

/// Settings of a service process.
#[derive(Clone, Default)]
pub struct Options {
    pub redis: Option<String>,
    pub prefix: String,
    pub env: Vec<(String, String)>,
}

impl Service {
    pub async fn start(db: &Database, options: &Options) -> Service {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cacheobj-service"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BIND", "127.0.0.1:0")
            .env("DATABASE_URL", &db.url)
            .env("SEED_ITEMS", "200")
            .env("DB_ACQUIRE_TIMEOUT_MS", "1000")
            .env("CACHE_PREFIX", &options.prefix)
            .env("RUST_LOG", "info");
        if let Some(url) = &options.redis {
            cmd.env("CACHE_URL", url);
        }
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn cacheobj-service");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_changed = Arc::new(Notify::new());
        {
            let lines = Arc::clone(&stderr);
            let changed = Arc::clone(&stderr_changed);
            let pipe = child.stderr.take().expect("stderr");
            tokio::spawn(async move {
                let mut reader = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().expect("stderr lines").push(line);
                    changed.notify_waiters();
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = within("the service to print its address", async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("listening on ") {
                    return Some(url.to_owned());
                }
            }
            None
        })
        .await;
        let Some(url) = url else {
            let status = child.wait().await;
            panic!(
                "the service exited before listening ({status:?}); stderr:\n{}",
                stderr.lock().expect("stderr").join("\n")
            );
        };
        // Keep draining stdout so the service never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Service {
            url,
            child,
            stderr,
            stderr_changed,
            client: reqwest::Client::new(),
        }
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// GET `path`: status and body as JSON (`null` for an empty body).
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.send(self.client.get(format!("{}{path}", self.url)))
            .await
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
        let resp = within("a response", req.send())
            .await
            .expect("the request failed");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("response body");
        let body = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("status {status}, body is not JSON ({e}): {text}"))
        };
        (status, body)
    }

    pub async fn put_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.send(self.client.put(format!("{}{path}", self.url)).json(&body))
            .await
    }

    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.send(self.client.post(format!("{}{path}", self.url)).json(&body))
            .await
    }

    /// `/metrics` as `name{labels} -> value`.
    pub async fn metrics(&self) -> HashMap<String, f64> {
        let text = within(
            "/metrics",
            self.client.get(format!("{}/metrics", self.url)).send(),
        )
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("/metrics body");
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// Item-row reads this process made (its `service_db_queries_total` for single and
    /// batch item reads).
    pub async fn item_reads_metric(&self) -> u64 {
        let m = self.metrics().await;
        let get = |q: &str| {
            m.get(&format!("service_db_queries_total{{query=\"{q}\"}}"))
                .copied()
                .unwrap_or(0.0)
        };
        // Views reads `SELECT views FROM items`, which PostgreSQL counts as an item read too.
        (get("item") + get("items_batch") + get("views")) as u64
    }

    /// Waits until the service's log has a line containing `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        within(&format!("the service to log {needle:?}"), async {
            loop {
                let changed = self.stderr_changed.notified();
                if self
                    .stderr
                    .lock()
                    .expect("stderr")
                    .iter()
                    .any(|l| l.contains(needle))
                {
                    return;
                }
                changed.await;
            }
        })
        .await;
    }

    pub fn log(&self) -> String {
        self.stderr.lock().expect("stderr").join("\n")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("service pid");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        within("the service to exit", self.child.wait())
            .await
            .expect("wait for the service")
    }
}
