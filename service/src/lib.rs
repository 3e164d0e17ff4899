//! An axum service over PostgreSQL or SQLite with cacheobj in front: the pattern to copy.
//!
//! - [`strategies`]: every cached value's key, TTL and kind, as consts.
//! - [`cached`]: the service's cache calls, one small function each.
//! - [`error`]: one error type, mapped to JSON responses with the right status.
//! - [`routes`]: the handlers; [`app`] wires them with the [`AppState`] (cache, pool).
//!
//! Configuration is read from the environment by [`Config::from_env`]; see the crate's
//! README section "In a service" in the repository root.

pub mod cached;
pub mod db;
pub mod error;
pub mod routes;
pub mod strategies;
pub mod telemetry;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use cacheobj::{Cache, CacheConfig};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::db::{Db, DbOptions};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 16 * 1024;

/// Everything a handler needs; cheap to clone (the cache and the pool are handles).
#[derive(Clone)]
pub struct AppState {
    /// The cache, on Redis or embedded.
    pub cache: Cache,
    /// The database pool.
    pub db: Db,
    /// `CACHE_BYPASS=1`: every read goes to the database (the load script's cache-off run).
    pub bypass: bool,
    /// Whether the cache is on Redis (`CACHE_URL`/`CACHE_HOST`/`CACHE_NODES`) or embedded.
    pub on_redis: bool,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}

/// A configuration error, reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An environment variable has a value that does not parse.
    #[error("{name}={value:?} is not valid: expected {expected}")]
    Env {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// The cache's settings.
    #[error("cache configuration: {0}")]
    Cache(#[from] cacheobj::ConfigError),
}

/// The service's settings, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `BIND`, default `127.0.0.1:3000`; port 0 picks a free port (printed at start-up).
    pub bind: SocketAddr,
    /// `DATABASE_URL`, default `sqlite://cacheobj-service.db` (created when missing).
    pub database_url: String,
    /// `DB_MAX_CONNECTIONS` (default 16) and `DB_ACQUIRE_TIMEOUT_MS` (default 2000).
    pub db: DbOptions,
    /// `SEED_ITEMS`: items `1..=n` inserted at start-up when missing (default 10000).
    pub seed_items: u64,
    /// `CACHE_BYPASS=1` turns the cache off.
    pub bypass: bool,
    /// The cache's settings (`CACHE_URL`, `CACHE_HOST`, `CACHE_PREFIX`, ...).
    pub cache: CacheConfig,
    /// Whether any Redis setting is present; without one the cache is embedded.
    pub on_redis: bool,
}

fn env(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse<T: std::str::FromStr>(
    name: &'static str,
    default: T,
    expected: &'static str,
) -> Result<T, ConfigError> {
    match env(name) {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|_| ConfigError::Env {
            name,
            value,
            expected,
        }),
    }
}

impl Config {
    /// Reads the settings.
    ///
    /// # Errors
    ///
    /// A variable that does not parse.
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut cache = CacheConfig::from_env()?;
        if env("CACHE_PREFIX").is_none() {
            cache.prefix = "svc:".into();
        }
        // A write's hash_del is retried like its invalidate_after when Redis is away.
        cache.queue_failed_invalidations = true;
        let on_redis = ["CACHE_URL", "CACHE_HOST", "CACHE_NODES"]
            .iter()
            .any(|n| env(n).is_some());
        let bypass = match env("CACHE_BYPASS").as_deref() {
            None | Some("0" | "false") => false,
            Some("1" | "true") => true,
            Some(other) => {
                return Err(ConfigError::Env {
                    name: "CACHE_BYPASS",
                    value: other.into(),
                    expected: "1 or 0",
                })
            }
        };
        Ok(Config {
            bind: parse(
                "BIND",
                SocketAddr::from(([127, 0, 0, 1], 3000)),
                "host:port",
            )?,
            database_url: env("DATABASE_URL")
                .unwrap_or_else(|| "sqlite://cacheobj-service.db".into()),
            db: DbOptions {
                max_connections: parse("DB_MAX_CONNECTIONS", 16, "a number of connections")?,
                acquire_timeout: Duration::from_millis(parse(
                    "DB_ACQUIRE_TIMEOUT_MS",
                    2000,
                    "milliseconds",
                )?),
            },
            seed_items: parse("SEED_ITEMS", 10_000, "a number of items")?,
            bypass,
            cache,
            on_redis,
        })
    }
}

/// The router: every route, the body limit, the JSON fallbacks and request metrics.
pub fn app(state: AppState) -> Router {
    use crate::routes::{
        add_member, add_tag, add_view, delete_item, get_item, get_item_hash, get_items,
        get_members, get_tags, get_views, no_route, put_item, wrong_method,
    };
    Router::new()
        .route("/items", get(get_items))
        .route(
            "/items/{id}",
            get(get_item).put(put_item).delete(delete_item),
        )
        .route("/items/{id}/hash", get(get_item_hash))
        .route("/items/{id}/views", get(get_views).post(add_view))
        .route("/items/{id}/members", get(get_members).post(add_member))
        .route("/items/{id}/tags", get(get_tags).post(add_tag))
        .route("/health", get(telemetry::health))
        .route("/metrics", get(telemetry::metrics))
        // After the routes: it sees the matched route, so the label is the template.
        .route_layer(axum::middleware::from_fn(telemetry::track))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// A start-up failure.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad settings.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The cache could not be built.
    #[error("cache: {0}")]
    Cache(#[from] cacheobj::Error),
    /// The database URL, migrations or seed failed.
    #[error("database at start-up: {0}")]
    Db(#[from] db::DbError),
    /// The metrics recorder.
    #[error("metrics: {0}")]
    Metrics(String),
    /// Binding or serving.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// Builds the state from `config`: opens the pool, migrates and seeds, connects the cache.
///
/// # Errors
///
/// See [`StartError`].
pub async fn state(config: &Config, metrics: PrometheusHandle) -> Result<AppState, StartError> {
    let db = Db::connect_lazy(&config.database_url, &config.db).map_err(db::DbError::from)?;
    db.migrate_and_seed(config.seed_items).await?;
    let cache = if config.on_redis {
        // Does not wait for Redis: the service starts, and fails open, while it is down.
        Cache::connect(config.cache.clone()).await?
    } else {
        Cache::in_memory_with(config.cache.clone())?
    };
    Ok(AppState {
        cache,
        db,
        bypass: config.bypass,
        on_redis: config.on_redis,
        metrics,
    })
}

/// Runs the service until SIGTERM or Ctrl-C, then lets in-flight requests finish.
///
/// # Errors
///
/// See [`StartError`].
pub async fn run(config: Config) -> Result<(), StartError> {
    let metrics = telemetry::install().map_err(StartError::Metrics)?;
    let state = state(&config, metrics).await?;
    let listener = tokio::net::TcpListener::bind(config.bind).await?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        database = state.db.kind(),
        cache = if state.on_redis { "redis" } else { "embedded" },
        bypass = state.bypass,
        "listening"
    );
    // On stdout, for scripts and tests that start the service on port 0.
    println!("listening on http://{addr}");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("in-flight requests finished; exiting");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
