//! The [`Cache`] handle: runs strategies against a backend.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use crate::backend::{Acquire, Backend, Loc, Lookup, MemoryBackend, RedisBackend, Token};
use crate::budget::{Budget, Started};
use crate::codec::encode_text;
use crate::config::CacheConfig;
use crate::error::{ConfigError, Error, KeyError};
use crate::flight::{self, FlightKey, FlightState, Flights, LeaderGuard, Role};
use crate::key::CacheKey;
use crate::kind::{Batch, Counter, Hash, Kind, List, Set, Shape};
use crate::stats::{bump, Counters, Stats};
use crate::strategy::Strategy;
use crate::value::{CacheValue, Collection, Payload};

/// Runs [`Strategy`]s against Redis or the embedded in-memory backend.
///
/// Cheap to clone (an `Arc`), `Send + Sync`; clones share one multiplexed, auto-reconnecting
/// connection, the in-process coalescing of loads, and the [`Stats`].
///
/// # Examples
///
/// ```
/// use cacheobj::{Cache, CacheKey, Strategy};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// struct Item { id: u64, name: String }
/// #[derive(Debug, Clone, Serialize, CacheKey)]
/// struct ItemKey { item_id: u64 }
/// const ITEM: Strategy<Item, ItemKey> = Strategy::<Item, ItemKey>::obj("item:<item_id>").expire(60);
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let cache = Cache::in_memory();
/// let key = ItemKey { item_id: 1 };
/// let item = cache
///     .fetch(&ITEM, &key, || async { Ok::<_, std::io::Error>(Item { id: 1, name: "a".into() }) })
///     .await?;
/// assert_eq!(item.name, "a");
/// cache.invalidate(&ITEM, &key).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

// `Cache` is shared across tasks and threads: keep it so.
const _: fn() = || {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<Cache>();
};

struct Inner {
    backend: Backend,
    prefix: Vec<u8>,
    max_key_len: usize,
    counters: Counters,
    flights: Flights,
    refreshing: Mutex<HashSet<FlightKey>>,
    /// Entries whose lease this process may have left behind (a lease or fill request that
    /// failed), with how many background releases follow it. A fetch that finds such an entry
    /// leased does not wait for a fill that is likely never to come.
    orphans: Arc<Mutex<HashMap<FlightKey, usize>>>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("backend", &self.inner.backend)
            .field("prefix", &String::from_utf8_lossy(&self.inner.prefix))
            .field("stats", &self.stats())
            .finish()
    }
}

/// Where an entry lives in Redis; see [`Cache::entry_key`].
///
/// # Examples
///
/// ```
/// # use cacheobj::{Cache, CacheKey, Hash, Strategy};
/// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
/// const ITEMS: Strategy<String, ItemKey, Hash> = Strategy::hash("item", "<item_id>");
/// let entry = Cache::in_memory().entry_key(&ITEMS, &ItemKey { item_id: 3 })?;
/// assert_eq!(entry.key, b"item");
/// assert_eq!(entry.field.as_deref(), Some(&b"3"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct EntryKey {
    /// The Redis key, prefix included.
    pub key: Vec<u8>,
    /// The hash field, for [`Hash`](struct@Hash) strategies.
    pub field: Option<Vec<u8>>,
}

/// A rendered key and hash field.
struct Rendered {
    key: Vec<u8>,
    field: Vec<u8>,
    shape: Shape,
}

impl Rendered {
    fn loc(&self) -> Loc<'_> {
        Loc {
            key: &self.key,
            field: &self.field,
            shape: self.shape,
        }
    }

    fn flight_key(&self) -> FlightKey {
        (self.key.clone(), self.field.clone())
    }
}

impl Inner {
    fn fault(&self, error: &Error) {
        bump(&self.counters.errors);
        if error.is_unavailable() {
            tracing::debug!(%error, "cacheobj: cache unavailable; the loader runs instead");
        } else {
            tracing::warn!(error = %error, source = ?std::error::Error::source(error), "cacheobj: cache operation failed; the loader runs instead");
        }
    }

    fn undecodable(&self, key: &[u8], error: &dyn std::error::Error) {
        bump(&self.counters.undecodable);
        tracing::warn!(key = %String::from_utf8_lossy(key), %error, "cacheobj: cached value does not decode; treating it as a miss");
    }
}

/// rustls needs a process-wide crypto provider; install ring's unless the application has
/// installed one.
#[cfg(feature = "tls")]
fn install_tls_provider() -> Result<(), Error> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    Ok(())
}

#[cfg(not(feature = "tls"))]
fn install_tls_provider() -> Result<(), Error> {
    Err(Error::Config(ConfigError::FeatureDisabled("tls")))
}

#[cfg(feature = "tls")]
fn tls_client(info: redis::ConnectionInfo, pem: Vec<u8>) -> redis::RedisResult<redis::Client> {
    redis::Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        },
    )
}

#[cfg(not(feature = "tls"))]
fn tls_client(_info: redis::ConnectionInfo, _pem: Vec<u8>) -> redis::RedisResult<redis::Client> {
    Err(redis::RedisError::from((
        redis::ErrorKind::InvalidClientConfig,
        "a CA certificate needs cacheobj's `tls` feature",
    )))
}

#[cfg(all(feature = "cluster", feature = "tls"))]
fn cluster_certs(
    builder: redis::cluster::ClusterClientBuilder,
    pem: Vec<u8>,
) -> Result<redis::cluster::ClusterClientBuilder, Error> {
    Ok(builder.certs(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

#[cfg(all(feature = "cluster", not(feature = "tls")))]
fn cluster_certs(
    _builder: redis::cluster::ClusterClientBuilder,
    _pem: Vec<u8>,
) -> Result<redis::cluster::ClusterClientBuilder, Error> {
    Err(Error::Config(ConfigError::FeatureDisabled("tls")))
}

/// The loader must return one value per key it was given.
fn check_len<V, E: From<Error>>(values: Vec<V>, expected: usize) -> Result<Vec<V>, E> {
    if values.len() == expected {
        Ok(values)
    } else {
        Err(Error::InvalidArgument(
            "fetch_many: the loader must return one value per key it is given, in order",
        )
        .into())
    }
}

/// XFetch: refresh when `-delta * ln(U)` reaches past the remaining TTL.
fn should_refresh(ttl_ms: Option<u64>, delta_ms: u64) -> bool {
    let Some(ttl) = ttl_ms else {
        return false;
    };
    let u = fastrand::f64().max(f64::MIN_POSITIVE);
    -(delta_ms as f64) * u.ln() >= ttl as f64
}

/// Removes a key from the set of refreshing keys when the refresh ends or is cancelled.
/// Locks a mutex, even one a panicking thread left poisoned: the sets it guards stay valid.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks an entry as having an orphaned lease while a background release runs.
struct Orphan {
    set: Arc<Mutex<HashMap<FlightKey, usize>>>,
    key: FlightKey,
}

impl Orphan {
    fn new(set: &Arc<Mutex<HashMap<FlightKey, usize>>>, key: FlightKey) -> Orphan {
        *lock(set).entry(key.clone()).or_insert(0) += 1;
        Orphan {
            set: set.clone(),
            key,
        }
    }
}

impl Drop for Orphan {
    fn drop(&mut self) {
        let mut set = lock(&self.set);
        if let Some(n) = set.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                set.remove(&self.key);
            }
        }
    }
}

struct RefreshGuard<'a> {
    set: &'a Mutex<HashSet<FlightKey>>,
    key: FlightKey,
}

impl Drop for RefreshGuard<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.key);
    }
}

impl Cache {
    /// A cache on Redis, as `config` says. It does not connect yet, so a service starts while
    /// Redis is down; it connects in the background and on first use, and reconnects by
    /// itself. Call [`ping`](Self::ping) to fail fast instead.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the configuration is invalid.
    ///
    /// # Examples
    ///
    /// ```
    /// use cacheobj::{Cache, CacheConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// // Nothing listens on port 1: connect still succeeds, fetches will run their loaders.
    /// let cache = Cache::connect(CacheConfig::builder().host("127.0.0.1").port(1).build()).await?;
    /// assert!(cache.ping().await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(config: CacheConfig) -> Result<Cache, Error> {
        config.check_limits()?;
        let ca_cert = config.read_ca_cert()?;
        if ca_cert.is_some()
            || config
                .url
                .as_deref()
                .is_some_and(|u| u.starts_with("rediss"))
        {
            install_tls_provider()?;
        }
        if !config.nodes.is_empty() {
            return Cache::connect_cluster(config, ca_cert);
        }
        let info = config.connection_info()?;
        let client = match ca_cert {
            None => redis::Client::open(info).map_err(ConfigError::Url)?,
            Some(pem) => tls_client(info, pem).map_err(|e| config.bad_ca_cert(e))?,
        };
        Cache::from_client(client, config).await
    }

    #[cfg(feature = "cluster")]
    fn connect_cluster(config: CacheConfig, ca_cert: Option<Vec<u8>>) -> Result<Cache, Error> {
        if config.nodes.iter().any(|n| n.starts_with("rediss")) {
            install_tls_provider()?;
        }
        let mut builder =
            redis::cluster::ClusterClientBuilder::new(config.nodes.iter().map(String::as_str))
                .connection_timeout(config.connect_timeout)
                .response_timeout(config.response_timeout);
        if let Some(username) = &config.username {
            builder = builder.username(username);
        }
        if let Some(password) = &config.password {
            builder = builder.password(password);
        }
        let has_ca = ca_cert.is_some();
        if let Some(pem) = ca_cert {
            builder = cluster_certs(builder, pem)?;
        }
        let client = builder.build().map_err(|e| {
            if has_ca {
                config.bad_ca_cert(e)
            } else {
                ConfigError::Url(e)
            }
        })?;
        let cache = Cache::with_backend(
            Backend::Redis(RedisBackend::cluster(client, &config)),
            &config,
        );
        let warm = cache.clone();
        tokio::spawn(async move {
            let _ = warm.ping().await;
        });
        Ok(cache)
    }

    #[cfg(not(feature = "cluster"))]
    fn connect_cluster(_config: CacheConfig, _ca_cert: Option<Vec<u8>>) -> Result<Cache, Error> {
        Err(Error::Config(ConfigError::FeatureDisabled("cluster")))
    }

    /// A cache on a `redis::Client` you built (Flask-CacheOBJ's `cache.mc = ...`); the
    /// connection settings of `config` are ignored, its timeouts and prefix apply.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `config`'s timeouts or key limit are invalid.
    ///
    /// # Examples
    ///
    /// ```
    /// use cacheobj::{Cache, CacheConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let client = cacheobj::redis::Client::open("redis://127.0.0.1:1/")?;
    /// let cache = Cache::from_client(client, CacheConfig::builder().prefix("app:").build()).await?;
    /// # let _ = cache;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn from_client(client: redis::Client, config: CacheConfig) -> Result<Cache, Error> {
        config.check_limits()?;
        let backend = RedisBackend::from_client(client, &config)?;
        let cache = Cache::with_backend(Backend::Redis(backend), &config);
        // Connect in the background, so the first fetch does not wait for it.
        let warm = cache.clone();
        tokio::spawn(async move {
            let _ = warm.ping().await;
        });
        Ok(cache)
    }

    /// A cache on a multiplexed connection you built. It does not reconnect by itself; prefer
    /// [`from_client`](Self::from_client) unless you manage the connection.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `config`'s timeouts or key limit are invalid.
    ///
    /// # Examples
    ///
    /// ```
    /// use cacheobj::{Cache, CacheConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let client = cacheobj::redis::Client::open("redis://127.0.0.1:1/")?;
    /// // Nothing listens on port 1 here; with a reachable server this yields a cache.
    /// if let Ok(conn) = client.get_multiplexed_async_connection().await {
    ///     let cache = Cache::from_connection(conn, CacheConfig::default())?;
    ///     cache.ping().await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_connection(
        conn: MultiplexedConnection,
        config: CacheConfig,
    ) -> Result<Cache, Error> {
        config.check_limits()?;
        let backend = RedisBackend::from_connection(conn, &config);
        Ok(Cache::with_backend(Backend::Redis(backend), &config))
    }

    /// A cache on the embedded in-memory backend: the same API and semantics (TTLs, leases,
    /// negative caching), in this process only. For tests, examples and single-process services.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = cacheobj::Cache::in_memory();
    /// assert_eq!(cache.stats().loads, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn in_memory() -> Cache {
        Cache::with_backend(
            Backend::Memory(MemoryBackend::new()),
            &CacheConfig::default(),
        )
    }

    /// Like [`in_memory`](Self::in_memory), with `config`'s prefix and key limit.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `config`'s timeouts or key limit are invalid.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = cacheobj::Cache::in_memory_with(cacheobj::CacheConfig::builder().prefix("t:").build())?;
    /// # let _ = cache;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn in_memory_with(config: CacheConfig) -> Result<Cache, Error> {
        config.check_limits()?;
        Ok(Cache::with_backend(
            Backend::Memory(MemoryBackend::new()),
            &config,
        ))
    }

    fn with_backend(backend: Backend, config: &CacheConfig) -> Cache {
        Cache {
            inner: Arc::new(Inner {
                backend,
                prefix: config.prefix.as_bytes().to_vec(),
                max_key_len: config.max_key_len,
                counters: Counters::default(),
                flights: Flights::default(),
                refreshing: Mutex::new(HashSet::new()),
                orphans: Arc::new(Mutex::new(HashMap::new())),
            }),
        }
    }

    /// The counters of this cache and its clones.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = cacheobj::Cache::in_memory();
    /// assert_eq!(cache.stats(), cacheobj::Stats::default());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// Checks that Redis answers.
    ///
    /// # Errors
    ///
    /// The Redis error, or [`Error::Timeout`] after the response timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// cacheobj::Cache::in_memory().ping().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ping(&self) -> Result<(), Error> {
        self.inner.backend.ping().await
    }

    fn render<V, K: CacheKey, Kd: Kind>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
    ) -> Result<Rendered, KeyError> {
        let mut out = Vec::new();
        strategy.render_key(&mut out, &self.inner.prefix, key)?;
        let mut field = Vec::new();
        strategy.render_field(&mut field, key)?;
        let max = self.inner.max_key_len;
        for len in [out.len(), field.len()] {
            if len > max {
                return Err(KeyError::TooLong { len, max });
            }
        }
        Ok(Rendered {
            key: out,
            field,
            shape: Kd::SHAPE,
        })
    }

    /// Where an entry lives: the Redis key (prefix included) and, for [`Hash`](struct@Hash) strategies, the
    /// hash field. For debugging, and for tools that inspect Redis directly.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the key does not render or is longer than
    /// [`CacheConfig::max_key_len`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>").version(2);
    /// let cache = Cache::in_memory_with(cacheobj::CacheConfig::builder().prefix("app:").build())?;
    /// let entry = cache.entry_key(&ITEM, &ItemKey { item_id: 5 })?;
    /// assert_eq!(entry.key, b"app:item:5#v2");
    /// assert_eq!(entry.field, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn entry_key<V, K: CacheKey, Kd: Kind>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
    ) -> Result<EntryKey, KeyError> {
        let rendered = self.render(strategy, key)?;
        Ok(EntryKey {
            key: rendered.key,
            field: (Kd::SHAPE == Shape::Hash).then_some(rendered.field),
        })
    }

    /// Reads the value, or runs `loader` and caches what it returns.
    ///
    /// Fails open: when the cache cannot be used (Redis down, slow past the response timeout,
    /// refusing; a key that does not render; a value that does not encode) the loader runs and
    /// its result is returned, and [`Stats::errors`] counts it. A cached value that does not
    /// decode is a miss; the loader's value replaces it.
    ///
    /// Concurrent fetches of one key share one load: in this process they await the first
    /// fetch's loader, across processes they wait (up to the strategy's lease time) for the fill
    /// of whoever holds the key's fill lease. A fetch waits on Redis for at most the response
    /// timeout in all, the time the first fetch spends on Redis for it included: past that, it
    /// runs its own loader. If the leading fetch is dropped, a waiter takes
    /// over its lease; if its loader fails, the leader gets that error and each waiter runs its
    /// own loader once and gets that result, uncached. A fill whose load began before an
    /// invalidation of the key never lands.
    ///
    /// # Errors
    ///
    /// Only the loader's error.
    ///
    /// # Examples
    ///
    /// ```
    /// use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct UserKey { user_id: u64 }
    /// const NAME: Strategy<Option<String>, UserKey> =
    ///     Strategy::<Option<String>, UserKey>::obj("user:name:<user_id>").expire(600).negative_expire(30);
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let name = cache.fetch(&NAME, &UserKey { user_id: 7 }, || async {
    ///     Ok::<_, std::io::Error>(None) // not in the database: cached for 30 s
    /// }).await?;
    /// assert_eq!(name, None);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fetch<V, K, Kd, F, Fut, E>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
        loader: F,
    ) -> Result<V, E>
    where
        K: CacheKey,
        Kd: Kind,
        V: CacheValue<Kd>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let inner = &*self.inner;
        let rendered = match self.render(strategy, key) {
            Ok(r) => r,
            Err(e) => {
                inner.fault(&Error::Key(e));
                bump(&inner.counters.loads);
                return loader().await;
            }
        };
        let loc = rendered.loc();
        let codec = strategy.get_codec();
        let early = strategy.early_refresh_ms() > 0
            && Kd::SHAPE == Shape::Str
            && strategy.expire_after().is_some();
        let started = Started::now(inner.backend.response_timeout());
        let read = if early {
            inner.backend.read_with_ttl(loc).await
        } else {
            inner.backend.read(loc).await.map(|l| (l, None))
        };
        let mut force = false;
        let mut redis_ok = true;
        match read {
            Ok((Lookup::Hit(payload), ttl)) => match V::decode(&payload, codec) {
                Ok(value) => {
                    bump(&inner.counters.hits);
                    if early && should_refresh(ttl, strategy.early_refresh_ms()) {
                        return self
                            .refresh_early(
                                strategy,
                                &rendered,
                                payload,
                                value,
                                started.budget(),
                                loader,
                            )
                            .await;
                    }
                    return Ok(value);
                }
                Err(e) => {
                    inner.undecodable(loc.key, &e);
                    force = true;
                }
            },
            Ok((Lookup::Garbage, _)) => {
                inner.undecodable(loc.key, &Error::Unavailable);
                force = true;
            }
            Ok((Lookup::Miss | Lookup::Leased, _)) => {}
            Err(e) => {
                inner.fault(&e);
                redis_ok = false;
            }
        }
        bump(&inner.counters.misses);
        self.load_coalesced(
            strategy,
            &rendered,
            force,
            redis_ok,
            started.budget(),
            loader,
        )
        .await
    }

    /// Reads many entries in one round trip (MGET, or a pipeline of HGETs), calls `loader`
    /// once with only the keys that missed (so one `WHERE id IN (...)` query fills them all),
    /// and stores what it returns in one pipelined write, each under its fill lease. Results
    /// come back in the order of `keys`; duplicate keys are fine. The loader returns one value
    /// per key it gets, in that order; use `Option<V>` values and
    /// [`Strategy::negative_expire`] for keys it cannot find. Keys whose lease another caller
    /// holds are loaded too, but not filled. Fails open like [`fetch`](Self::fetch); unlike it,
    /// does not coalesce with concurrent fetches in this process.
    ///
    /// # Errors
    ///
    /// The loader's error, or [`Error::InvalidArgument`] (converted into `E`) when the loader
    /// returns a different number of values than it was given keys.
    ///
    /// # Examples
    ///
    /// ```
    /// use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(Debug, Clone, serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const NAME: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("name:<item_id>").expire(60);
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let keys: Vec<ItemKey> = (1..=3).map(|item_id| ItemKey { item_id }).collect();
    /// let names = cache
    ///     .fetch_many(&NAME, &keys, |missing: Vec<ItemKey>| async move {
    ///         // SELECT name FROM items WHERE id IN (...)
    ///         Ok::<_, cacheobj::Error>(missing.iter().map(|k| format!("item {}", k.item_id)).collect())
    ///     })
    ///     .await?;
    /// assert_eq!(names, ["item 1", "item 2", "item 3"]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fetch_many<V, K, Kd, F, Fut, E>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        keys: &[K],
        loader: F,
    ) -> Result<Vec<V>, E>
    where
        K: CacheKey + Clone,
        Kd: Batch,
        V: CacheValue<Kd>,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<Vec<V>, E>>,
        E: From<Error>,
    {
        let inner = &*self.inner;
        let codec = strategy.get_codec();
        let rendered = match keys
            .iter()
            .map(|k| self.render(strategy, k))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(r) => r,
            Err(e) => {
                inner.fault(&Error::Key(e));
                bump(&inner.counters.loads);
                let values = loader(keys.to_vec()).await?;
                return check_len(values, keys.len());
            }
        };
        let locs: Vec<Loc<'_>> = rendered.iter().map(Rendered::loc).collect();
        let mut values: Vec<Option<V>> = std::iter::repeat_with(|| None).take(keys.len()).collect();
        // Payloads of what was loaded, for duplicates of missing keys to decode.
        let mut payloads: Vec<Option<Payload>> =
            std::iter::repeat_with(|| None).take(keys.len()).collect();
        let mut missing: Vec<(usize, bool)> = Vec::new(); // (position, force)
        let mut redis_ok = true;
        let started = Started::now(inner.backend.response_timeout());
        // Duplicates are read like any key (MGET repeats the value), so the all-hit path
        // needs no de-duplication.
        let read = match inner.backend.read_many(&locs).await {
            Ok(lookups) if lookups.len() != locs.len() => {
                Err(Error::Redis(redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "read_many: reply length mismatch",
                ))))
            }
            other => other,
        };
        // The lease requests and the fills share what the read left of the response timeout.
        let mut budget = started.budget();
        match read {
            Ok(lookups) => {
                let mut hits = 0;
                for (i, lookup) in lookups.into_iter().enumerate() {
                    match lookup {
                        Lookup::Hit(payload) => match V::decode(&payload, codec) {
                            Ok(v) => {
                                hits += 1;
                                values[i] = Some(v);
                            }
                            Err(e) => {
                                inner.undecodable(&rendered[i].key, &e);
                                missing.push((i, true));
                            }
                        },
                        Lookup::Garbage => {
                            inner.undecodable(&rendered[i].key, &Error::Unavailable);
                            missing.push((i, true));
                        }
                        Lookup::Miss | Lookup::Leased => missing.push((i, false)),
                    }
                }
                inner
                    .counters
                    .hits
                    .fetch_add(hits, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                inner.fault(&e);
                redis_ok = false;
                missing = (0..keys.len()).map(|i| (i, false)).collect();
            }
        }
        // A missing key that appears more than once is loaded once: later positions point at
        // the first, and decode its payload at the end.
        let mut origin: Vec<usize> = (0..keys.len()).collect();
        if missing.len() > 1 {
            let mut first_of: HashMap<(&[u8], &[u8]), usize> =
                HashMap::with_capacity(missing.len());
            missing.retain(|&(i, _)| {
                let first = *first_of
                    .entry((&rendered[i].key[..], &rendered[i].field[..]))
                    .or_insert(i);
                origin[i] = first;
                first == i
            });
        }

        if !missing.is_empty() {
            // Take the fill leases of the missing entries, concurrently (one pipeline on the
            // multiplexed connection).
            let mut leases: Vec<Option<Token>> = vec![None; missing.len()];
            if redis_ok {
                let tokens: Vec<Token> = missing.iter().map(|_| Token::new()).collect();
                let requests = missing.iter().zip(&tokens).map(|(&(i, force), token)| {
                    let loc = rendered[i].loc();
                    inner
                        .backend
                        .acquire(loc, token, strategy.lease_ms(), force)
                });
                let attempts = match budget
                    .spend(async { Ok(futures_util::future::join_all(requests).await) })
                    .await
                {
                    Ok(attempts) => attempts,
                    // Cut short: any of them may still run on the server.
                    Err(_) => missing.iter().map(|_| Err(budget.timed_out())).collect(),
                };
                let mut still_missing = Vec::with_capacity(missing.len());
                let mut kept_leases = Vec::with_capacity(missing.len());
                for (&(i, force), (token, result)) in
                    missing.iter().zip(tokens.into_iter().zip(attempts))
                {
                    match result {
                        Ok(Acquire::Acquired) => {
                            still_missing.push((i, force));
                            kept_leases.push(Some(token));
                        }
                        Ok(Acquire::Hit(payload)) => match V::decode(&payload, codec) {
                            Ok(v) => {
                                bump(&inner.counters.hits);
                                values[i] = Some(v);
                                payloads[i] = Some(payload);
                            }
                            Err(e) => {
                                inner.undecodable(&rendered[i].key, &e);
                                still_missing.push((i, force));
                                kept_leases.push(None);
                            }
                        },
                        Ok(Acquire::Leased) => {
                            bump(&inner.counters.lease_waits);
                            still_missing.push((i, force));
                            kept_leases.push(None);
                        }
                        Err(e) => {
                            inner.fault(&e);
                            self.release_in_background(&rendered[i], token, strategy.lease_time());
                            still_missing.push((i, force));
                            kept_leases.push(None);
                        }
                    }
                }
                missing = still_missing;
                leases = kept_leases;
            }
            if !missing.is_empty() {
                for _ in &missing {
                    bump(&inner.counters.misses);
                }
                bump(&inner.counters.loads);
                let wanted: Vec<K> = missing.iter().map(|&(i, _)| keys[i].clone()).collect();
                let loaded = loader(wanted)
                    .await
                    .and_then(|loaded| check_len(loaded, missing.len()));
                let loaded = match loaded {
                    Ok(loaded) => loaded,
                    Err(e) => {
                        let releases = missing.iter().zip(&leases).filter_map(|(&(i, _), t)| {
                            t.as_ref().map(|t| self.release(rendered[i].loc(), Some(t)))
                        });
                        futures_util::future::join_all(releases).await;
                        return Err(e);
                    }
                };
                let mut fills = Vec::new();
                for ((&(i, _), lease), value) in missing.iter().zip(leases).zip(loaded) {
                    match value.encode(codec) {
                        Ok(payload) => {
                            if let Some(token) = lease {
                                let ttl = strategy.fill_ttl_ms(value.is_negative());
                                fills.push((i, token, ttl));
                            }
                            payloads[i] = Some(payload);
                        }
                        Err(e) => inner.fault(&Error::Encode(e)),
                    }
                    values[i] = Some(value);
                }
                let requests = fills.iter().map(|(i, token, ttl)| {
                    let payload = payloads[*i].as_ref();
                    let loc = rendered[*i].loc();
                    async move {
                        match payload {
                            Some(p) => inner.backend.fill(loc, token, p, *ttl).await,
                            None => Ok(false),
                        }
                    }
                });
                let results = match budget
                    .spend(async { Ok(futures_util::future::join_all(requests).await) })
                    .await
                {
                    Ok(results) => results,
                    Err(_) => fills.iter().map(|_| Err(budget.timed_out())).collect(),
                };
                for ((i, token, _), result) in fills.into_iter().zip(results) {
                    match result {
                        Ok(true) => {}
                        Ok(false) => bump(&inner.counters.stale_fills_rejected),
                        Err(e) => {
                            inner.fault(&e);
                            self.release_in_background(&rendered[i], token, strategy.lease_time());
                        }
                    }
                }
            }
        }

        // Duplicates decode their entry's payload; the first position keeps its value.
        let mut out = Vec::with_capacity(keys.len());
        for i in 0..keys.len() {
            let o = origin[i];
            let value = if o == i {
                values[i].take()
            } else {
                payloads[o].as_ref().and_then(|p| V::decode(p, codec).ok())
            };
            match value {
                Some(v) => out.push(v),
                None => {
                    return Err(Error::InvalidArgument(
                        "fetch_many: a duplicate key's value could not be re-decoded",
                    )
                    .into())
                }
            }
        }
        Ok(out)
    }

    /// Removes many entries in one round trip (a pipeline; not atomic as a whole, each removal
    /// is). Like [`invalidate`](Self::invalidate) for each key.
    ///
    /// # Errors
    ///
    /// A key did not render, or Redis failed: some entries may still be there.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(Debug, Clone, serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const NAME: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("name:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// cache.invalidate_many(&NAME, &[ItemKey { item_id: 1 }, ItemKey { item_id: 2 }]).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate_many<V, K, Kd>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        keys: &[K],
    ) -> Result<(), Error>
    where
        K: CacheKey,
        Kd: Kind,
    {
        let rendered = keys
            .iter()
            .map(|k| self.render(strategy, k))
            .collect::<Result<Vec<_>, _>>()?;
        let locs: Vec<Loc<'_>> = rendered.iter().map(Rendered::loc).collect();
        let forget = || {
            for r in &rendered {
                self.inner.flights.forget(&r.flight_key());
            }
        };
        forget();
        let result = self.inner.backend.invalidate_many(&locs).await;
        forget();
        result
    }

    async fn load_coalesced<V, K, Kd, F, Fut, E>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        rendered: &Rendered,
        force: bool,
        redis_ok: bool,
        mut budget: Budget,
        loader: F,
    ) -> Result<V, E>
    where
        K: CacheKey,
        Kd: Kind,
        V: CacheValue<Kd>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let inner = &*self.inner;
        let mut inherited = None;
        loop {
            match inner.flights.join(rendered.flight_key()) {
                Role::Leader(mut guard) => {
                    return self
                        .lead(
                            strategy, rendered, &mut guard, inherited, force, redis_ok, budget,
                            loader,
                        )
                        .await;
                }
                Role::Waiter(rx) => {
                    bump(&inner.counters.coalesced_waits);
                    let state = budget.wait(|left| flight::wait(rx, left)).await;
                    let Some(state) = state else {
                        // The leader is still on Redis after this fetch's response timeout:
                        // load rather than wait on Redis longer (the leader fills).
                        inner.fault(&budget.timed_out());
                        bump(&inner.counters.loads);
                        return loader().await;
                    };
                    match state {
                        FlightState::Done(payload) => {
                            match V::decode(&payload, strategy.get_codec()) {
                                Ok(value) => return Ok(value),
                                Err(e) => {
                                    inner.undecodable(&rendered.key, &e);
                                    bump(&inner.counters.loads);
                                    return loader().await;
                                }
                            }
                        }
                        FlightState::Failed => {
                            bump(&inner.counters.loads);
                            return loader().await;
                        }
                        FlightState::Abandoned(token) => inherited = token,
                        FlightState::Pending | FlightState::Loading => inherited = None,
                    }
                }
            }
        }
    }

    /// Takes the fill lease (or waits for another holder's fill), loads, and fills.
    #[allow(clippy::too_many_arguments)]
    async fn lead<V, K, Kd, F, Fut, E>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        rendered: &Rendered,
        guard: &mut LeaderGuard,
        inherited: Option<Token>,
        mut force: bool,
        redis_ok: bool,
        mut budget: Budget,
        loader: F,
    ) -> Result<V, E>
    where
        K: CacheKey,
        Kd: Kind,
        V: CacheValue<Kd>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let inner = &*self.inner;
        let loc = rendered.loc();
        let codec = strategy.get_codec();
        let mut lease = inherited;
        if lease.is_none() && redis_ok {
            let token = Token::new();
            // Armed before the request: if this fetch is dropped after Redis granted the
            // lease but before the reply is read, the lease is still released (or inherited).
            self.arm_release(guard, rendered, token.clone());
            let deadline = Instant::now() + strategy.lease_time();
            let mut backoff = Duration::from_millis(2);
            let mut waiting = false;
            loop {
                if budget.is_spent() {
                    // This fetch has had its response timeout's worth of Redis: load without
                    // a lease rather than wait on it longer.
                    inner.fault(&budget.timed_out());
                    break;
                }
                match budget
                    .spend(
                        inner
                            .backend
                            .acquire(loc, &token, strategy.lease_ms(), force),
                    )
                    .await
                {
                    Ok(Acquire::Acquired) => {
                        lease = Some(token);
                        break;
                    }
                    Ok(Acquire::Hit(payload)) => match V::decode(&payload, codec) {
                        Ok(value) => {
                            if !waiting {
                                // Filled between our read and the lease attempt: still a hit.
                                bump(&inner.counters.hits);
                            }
                            guard.finish(FlightState::Done(Arc::new(payload)));
                            return Ok(value);
                        }
                        Err(e) => {
                            inner.undecodable(loc.key, &e);
                            force = true;
                        }
                    },
                    Ok(Acquire::Leased) => {
                        if self.is_orphan(rendered) {
                            // Likely our own lease, left by a request that failed: its
                            // release is on the way, no fill is. Load without a lease.
                            break;
                        }
                        if !waiting {
                            waiting = true;
                            bump(&inner.counters.lease_waits);
                            guard.off_redis();
                        }
                        let now = Instant::now();
                        if now >= deadline {
                            bump(&inner.counters.lease_timeouts);
                            break;
                        }
                        tokio::time::sleep(backoff.min(deadline - now)).await;
                        backoff = (backoff * 2).min(Duration::from_millis(50));
                    }
                    Err(e) => {
                        inner.fault(&e);
                        self.release_in_background(rendered, token, strategy.lease_time());
                        break;
                    }
                }
            }
        }
        match &lease {
            Some(token) => self.arm_release(guard, rendered, token.clone()),
            None => guard.drop_lease(),
        }
        bump(&inner.counters.loads);
        guard.off_redis();
        match loader().await {
            Ok(value) => {
                match value.encode(codec) {
                    Ok(payload) => {
                        // Waiters get the value now: the fill's round trip need not delay them.
                        let payload = Arc::new(payload);
                        guard.publish(FlightState::Done(payload.clone()));
                        if let Some(token) = &lease {
                            let ttl = strategy.fill_ttl_ms(value.is_negative());
                            match budget
                                .spend(inner.backend.fill(loc, token, &payload, ttl))
                                .await
                            {
                                Ok(true) => {}
                                Ok(false) => {
                                    bump(&inner.counters.stale_fills_rejected);
                                    tracing::debug!(key = %String::from_utf8_lossy(loc.key), "cacheobj: fill rejected: the key was invalidated or its lease expired during the load");
                                }
                                Err(e) => {
                                    // The fill may not have run: don't leave the lease behind.
                                    inner.fault(&e);
                                    self.release_in_background(
                                        rendered,
                                        token.clone(),
                                        strategy.lease_time(),
                                    );
                                }
                            }
                        }
                        guard.finish(FlightState::Done(payload));
                    }
                    Err(e) => {
                        inner.fault(&Error::Encode(e));
                        self.release_within(rendered, lease, &mut budget, strategy)
                            .await;
                        guard.finish(FlightState::Failed);
                    }
                }
                Ok(value)
            }
            Err(e) => {
                self.release_within(rendered, lease, &mut budget, strategy)
                    .await;
                guard.finish(FlightState::Failed);
                Err(e)
            }
        }
    }

    /// Tells the flight's guard which lease to hand to a waiter, or release (a compare-and-delete,
    /// harmless if the lease was never granted), should this fetch be dropped.
    fn arm_release(&self, guard: &mut LeaderGuard, rendered: &Rendered, token: Token) {
        let backend = self.inner.backend.clone();
        let (key, field, shape) = (rendered.key.clone(), rendered.field.clone(), rendered.shape);
        guard.hold_lease(
            token,
            Box::new(move |token| {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        let loc = Loc {
                            key: &key,
                            field: &field,
                            shape,
                        };
                        let _ = backend.release(loc, &token).await;
                    });
                }
            }),
        );
    }

    /// The lease request failed, but may still run on the server (a timeout, say): follow it
    /// with releases, so no orphaned lease makes others wait. A reconnect may carry the release
    /// on another connection and so overtake the request: repeat it, backing off, until the
    /// lease would have expired anyway. Each release is a compare-and-delete of our token.
    fn release_in_background(&self, rendered: &Rendered, token: Token, within: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let backend = self.inner.backend.clone();
        let (key, field, shape) = (rendered.key.clone(), rendered.field.clone(), rendered.shape);
        let orphan = Orphan::new(&self.inner.orphans, rendered.flight_key());
        runtime.spawn(async move {
            let _orphan = orphan;
            let loc = Loc {
                key: &key,
                field: &field,
                shape,
            };
            let deadline = Instant::now() + within;
            let mut pause = Duration::from_millis(25);
            while Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = backend.release_after_failure(loc, &token, left).await;
                tokio::time::sleep(pause.min(left)).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        });
    }

    /// Whether a background release of this entry's lease is under way in this process.
    fn is_orphan(&self, rendered: &Rendered) -> bool {
        lock(&self.inner.orphans).contains_key(&rendered.flight_key())
    }

    /// Releases a fetch's lease within what is left of its Redis budget; in the background
    /// when that runs out or the release fails.
    async fn release_within<V, K, Kd>(
        &self,
        rendered: &Rendered,
        lease: Option<Token>,
        budget: &mut Budget,
        strategy: &Strategy<V, K, Kd>,
    ) {
        let Some(token) = lease else {
            return;
        };
        if let Err(e) = budget
            .spend(self.inner.backend.release(rendered.loc(), &token))
            .await
        {
            self.inner.fault(&e);
            self.release_in_background(rendered, token, strategy.lease_time());
        }
    }

    async fn release(&self, loc: Loc<'_>, lease: Option<&Token>) {
        if let Some(token) = lease {
            if let Err(e) = self.inner.backend.release(loc, token).await {
                self.inner.fault(&e);
            }
        }
    }

    /// XFetch's winner reloads the value while everyone else keeps reading the current one.
    async fn refresh_early<V, K, Kd, F, Fut, E>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        rendered: &Rendered,
        current_payload: Payload,
        current: V,
        mut budget: Budget,
        loader: F,
    ) -> Result<V, E>
    where
        K: CacheKey,
        Kd: Kind,
        V: CacheValue<Kd>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let inner = &*self.inner;
        let key = rendered.flight_key();
        if !lock(&inner.refreshing).insert(key.clone()) {
            return Ok(current);
        }
        let _guard = RefreshGuard {
            set: &inner.refreshing,
            key,
        };
        bump(&inner.counters.early_refreshes);
        bump(&inner.counters.loads);
        let Ok(value) = loader().await else {
            // The current value is still valid until it expires: serve it.
            return Ok(current);
        };
        let (Payload::Bytes(old), Ok(Payload::Bytes(new))) =
            (&current_payload, value.encode(strategy.get_codec()))
        else {
            return Ok(value);
        };
        let ttl = strategy.fill_ttl_ms(value.is_negative());
        match budget
            .spend(inner.backend.refill(rendered.loc(), old, &new, ttl))
            .await
        {
            Ok(true) => {}
            Ok(false) => bump(&inner.counters.stale_fills_rejected),
            Err(e) => inner.fault(&e),
        }
        Ok(value)
    }

    /// Runs a mutation, then detaches in-process loads of the key that may predate it.
    async fn mutate<T>(
        &self,
        rendered: &Rendered,
        op: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let flight_key = rendered.flight_key();
        self.inner.flights.forget(&flight_key);
        let result = op.await;
        self.inner.flights.forget(&flight_key);
        result
    }

    /// Removes the entry: exactly what [`fetch`](Self::fetch) would read. A fill whose load
    /// began before this call will not land.
    ///
    /// # Errors
    ///
    /// The key did not render, or Redis failed: the entry may still be there.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// cache.invalidate(&ITEM, &ItemKey { item_id: 1 }).await?;
    /// assert!(!cache.exists(&ITEM, &ItemKey { item_id: 1 }).await?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate<V, K, Kd>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
    ) -> Result<(), Error>
    where
        K: CacheKey,
        Kd: Kind,
    {
        let rendered = self.render(strategy, key)?;
        self.mutate(&rendered, self.inner.backend.invalidate(rendered.loc()))
            .await
    }

    /// Runs `write` (say, a database update), then invalidates the entry: Flask-CacheOBJ's
    /// `delete_obj`. Nothing is invalidated when `write` fails.
    ///
    /// # Errors
    ///
    /// `write`'s error, or the invalidation's, converted into `E`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let rows = cache
    ///     .invalidate_after(&ITEM, &ItemKey { item_id: 1 }, || async {
    ///         Ok::<u64, cacheobj::Error>(1) // UPDATE items SET ... WHERE id = 1
    ///     })
    ///     .await?;
    /// assert_eq!(rows, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate_after<V, K, Kd, F, Fut, T, E>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
        write: F,
    ) -> Result<T, E>
    where
        K: CacheKey,
        Kd: Kind,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let out = write().await?;
        self.invalidate(strategy, key).await?;
        Ok(out)
    }

    /// Deletes the hash field of a [`Hash`](struct@Hash) strategy (Flask-CacheOBJ's `hash_del`).
    ///
    /// # Errors
    ///
    /// The key did not render, or Redis failed: the field may still be there.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Hash, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEMS: Strategy<String, ItemKey, Hash> = Strategy::hash("item", "<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// Cache::in_memory().hash_del(&ITEMS, &ItemKey { item_id: 1 }).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn hash_del<V, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Hash>,
        key: &K,
    ) -> Result<(), Error> {
        self.invalidate(strategy, key).await
    }

    /// Whether a value is cached (a fill in progress does not count).
    ///
    /// # Errors
    ///
    /// The key did not render, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// assert!(!Cache::in_memory().exists(&ITEM, &ItemKey { item_id: 1 }).await?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn exists<V, K, Kd>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
    ) -> Result<bool, Error>
    where
        K: CacheKey,
        Kd: Kind,
    {
        let rendered = self.render(strategy, key)?;
        Ok(matches!(
            self.inner.backend.read(rendered.loc()).await?,
            Lookup::Hit(_)
        ))
    }

    /// Adds `delta` to a cached counter. A counter that is not cached stays uncached and this
    /// returns `None`: inventing a count from `delta` would be wrong (Flask-CacheOBJ's INCR
    /// does). Use [`incr_or_create`](Self::incr_or_create) for counters that live only in Redis.
    ///
    /// # Errors
    ///
    /// The key did not render, or Redis failed: the counter may not have changed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Counter, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const VIEWS: Strategy<i64, ItemKey, Counter> = Strategy::counter("views:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let key = ItemKey { item_id: 1 };
    /// assert_eq!(cache.incr(&VIEWS, &key, 1).await?, None);
    /// cache.fetch(&VIEWS, &key, || async { Ok::<_, std::io::Error>(41) }).await?;
    /// assert_eq!(cache.incr(&VIEWS, &key, 1).await?, Some(42));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn incr<V, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Counter>,
        key: &K,
        delta: i64,
    ) -> Result<Option<i64>, Error> {
        let rendered = self.render(strategy, key)?;
        self.mutate(&rendered, self.inner.backend.incr(rendered.loc(), delta))
            .await
    }

    /// Subtracts `delta` from a cached counter; see [`incr`](Self::incr).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for `i64::MIN`; otherwise as [`incr`](Self::incr).
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Counter, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const VIEWS: Strategy<i64, ItemKey, Counter> = Strategy::counter("views:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let key = ItemKey { item_id: 1 };
    /// cache.set_counter(&VIEWS, &key, 10).await?;
    /// assert_eq!(cache.decr(&VIEWS, &key, 3).await?, Some(7));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn decr<V, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Counter>,
        key: &K,
        delta: i64,
    ) -> Result<Option<i64>, Error> {
        let delta = delta.checked_neg().ok_or(Error::InvalidArgument(
            "decr delta must be greater than i64::MIN",
        ))?;
        self.incr(strategy, key, delta).await
    }

    /// Adds `delta` to a counter, creating it at `delta` (with the strategy's TTL) when it is
    /// not there: for counters that live only in Redis, with no loader.
    ///
    /// # Errors
    ///
    /// The key did not render, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Counter, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const VIEWS: Strategy<i64, ItemKey, Counter> = Strategy::counter("views:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let key = ItemKey { item_id: 1 };
    /// assert_eq!(cache.incr_or_create(&VIEWS, &key, 1).await?, 1);
    /// assert_eq!(cache.incr_or_create(&VIEWS, &key, 1).await?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn incr_or_create<V, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Counter>,
        key: &K,
        delta: i64,
    ) -> Result<i64, Error> {
        let rendered = self.render(strategy, key)?;
        let ttl = strategy.fill_ttl_ms(false);
        self.mutate(
            &rendered,
            self.inner
                .backend
                .incr_or_create(rendered.loc(), delta, ttl),
        )
        .await
    }

    /// The cached count, or `None` when it is not cached.
    ///
    /// # Errors
    ///
    /// The key did not render, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Counter, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const VIEWS: Strategy<i64, ItemKey, Counter> = Strategy::counter("views:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// assert_eq!(cache.get_counter(&VIEWS, &ItemKey { item_id: 1 }).await?, None);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_counter<V, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Counter>,
        key: &K,
    ) -> Result<Option<i64>, Error> {
        let rendered = self.render(strategy, key)?;
        Ok(match self.inner.backend.read(rendered.loc()).await? {
            Lookup::Hit(Payload::Bytes(b)) => {
                std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok())
            }
            _ => None,
        })
    }

    /// Sets a counter to `value`, with the strategy's TTL; a load in flight will not fill.
    ///
    /// # Errors
    ///
    /// The key did not render, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Counter, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const VIEWS: Strategy<i64, ItemKey, Counter> = Strategy::counter("views:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// cache.set_counter(&VIEWS, &ItemKey { item_id: 1 }, 5).await?;
    /// assert_eq!(cache.get_counter(&VIEWS, &ItemKey { item_id: 1 }).await?, Some(5));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_counter<V, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Counter>,
        key: &K,
        value: i64,
    ) -> Result<(), Error> {
        let rendered = self.render(strategy, key)?;
        let ttl = strategy.fill_ttl_ms(false);
        let text = value.to_string();
        self.mutate(
            &rendered,
            self.inner
                .backend
                .set_string(rendered.loc(), text.as_bytes(), ttl),
        )
        .await
    }

    fn encode_elems<V: Collection, K, Kd>(
        strategy: &Strategy<V, K, Kd>,
        elems: &[V::Elem],
    ) -> Result<Vec<Vec<u8>>, Error> {
        elems
            .iter()
            .map(|e| encode_text(strategy.get_codec(), e))
            .collect::<Result<_, _>>()
            .map_err(Error::Encode)
    }

    async fn push<V: Collection, K: CacheKey, Kd: Kind>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
        elems: &[V::Elem],
    ) -> Result<Option<u64>, Error> {
        let rendered = self.render(strategy, key)?;
        let elems = Self::encode_elems(strategy, elems)?;
        self.mutate(&rendered, self.inner.backend.push(rendered.loc(), &elems))
            .await
    }

    async fn remove<V: Collection, K: CacheKey, Kd: Kind>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
        elems: &[V::Elem],
    ) -> Result<Option<u64>, Error> {
        let rendered = self.render(strategy, key)?;
        let elems = Self::encode_elems(strategy, elems)?;
        self.mutate(&rendered, self.inner.backend.remove(rendered.loc(), &elems))
            .await
    }

    async fn len<V, K: CacheKey, Kd: Kind>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
    ) -> Result<Option<u64>, Error> {
        let rendered = self.render(strategy, key)?;
        self.inner.backend.len(rendered.loc()).await
    }

    /// Appends elements to a cached list and returns its new length; `None` when the list is
    /// not cached (it stays uncached, and a load in flight will not fill).
    ///
    /// # Errors
    ///
    /// The key did not render, an element did not encode, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, List, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct GroupKey { group_id: u64 }
    /// const MEMBERS: Strategy<Vec<u64>, GroupKey, List> = Strategy::list("members:<group_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let key = GroupKey { group_id: 1 };
    /// cache.fetch(&MEMBERS, &key, || async { Ok::<_, std::io::Error>(vec![1, 2]) }).await?;
    /// assert_eq!(cache.list_push(&MEMBERS, &key, &[3]).await?, Some(3));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_push<V: Collection, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, List>,
        key: &K,
        elems: &[V::Elem],
    ) -> Result<Option<u64>, Error> {
        self.push(strategy, key, elems).await
    }

    /// Removes every occurrence of the elements from a cached list and returns its new length;
    /// `None` when it is not cached.
    ///
    /// # Errors
    ///
    /// The key did not render, an element did not encode, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, List, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct GroupKey { group_id: u64 }
    /// # const MEMBERS: Strategy<Vec<u64>, GroupKey, List> = Strategy::list("members:<group_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let key = GroupKey { group_id: 1 };
    /// cache.fetch(&MEMBERS, &key, || async { Ok::<_, std::io::Error>(vec![1, 2]) }).await?;
    /// assert_eq!(cache.list_remove(&MEMBERS, &key, &[1]).await?, Some(1));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_remove<V: Collection, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, List>,
        key: &K,
        elems: &[V::Elem],
    ) -> Result<Option<u64>, Error> {
        self.remove(strategy, key, elems).await
    }

    /// The length of a cached list; `None` when it is not cached.
    ///
    /// # Errors
    ///
    /// The key did not render, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, List, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct GroupKey { group_id: u64 }
    /// # const MEMBERS: Strategy<Vec<u64>, GroupKey, List> = Strategy::list("members:<group_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// assert_eq!(Cache::in_memory().list_len(&MEMBERS, &GroupKey { group_id: 1 }).await?, None);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_len<V, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, List>,
        key: &K,
    ) -> Result<Option<u64>, Error> {
        self.len(strategy, key).await
    }

    /// Adds elements to a cached set and returns its new size; `None` when it is not cached.
    ///
    /// # Errors
    ///
    /// The key did not render, an element did not encode, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Set, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const TAGS: Strategy<Vec<String>, ItemKey, Set> = Strategy::set("tags:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let key = ItemKey { item_id: 1 };
    /// cache.fetch(&TAGS, &key, || async { Ok::<_, std::io::Error>(vec!["a".to_string()]) }).await?;
    /// assert_eq!(cache.set_add(&TAGS, &key, &["b".to_string()]).await?, Some(2));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_add<V: Collection, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Set>,
        key: &K,
        elems: &[V::Elem],
    ) -> Result<Option<u64>, Error> {
        self.push(strategy, key, elems).await
    }

    /// Removes elements from a cached set and returns its new size; `None` when it is not
    /// cached.
    ///
    /// # Errors
    ///
    /// The key did not render, an element did not encode, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Set, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const TAGS: Strategy<Vec<String>, ItemKey, Set> = Strategy::set("tags:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let key = ItemKey { item_id: 1 };
    /// cache.fetch(&TAGS, &key, || async { Ok::<_, std::io::Error>(vec!["a".to_string()]) }).await?;
    /// assert_eq!(cache.set_rem(&TAGS, &key, &["a".to_string()]).await?, Some(0));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_rem<V: Collection, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Set>,
        key: &K,
        elems: &[V::Elem],
    ) -> Result<Option<u64>, Error> {
        self.remove(strategy, key, elems).await
    }

    /// The size of a cached set; `None` when it is not cached.
    ///
    /// # Errors
    ///
    /// The key did not render, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Set, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const TAGS: Strategy<Vec<String>, ItemKey, Set> = Strategy::set("tags:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// assert_eq!(Cache::in_memory().set_len(&TAGS, &ItemKey { item_id: 1 }).await?, None);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_len<V, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Set>,
        key: &K,
    ) -> Result<Option<u64>, Error> {
        self.len(strategy, key).await
    }

    /// Whether a cached set holds `elem`; `None` when the set is not cached.
    ///
    /// # Errors
    ///
    /// The key did not render, the element did not encode, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Set, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const TAGS: Strategy<Vec<String>, ItemKey, Set> = Strategy::set("tags:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let key = ItemKey { item_id: 1 };
    /// cache.fetch(&TAGS, &key, || async { Ok::<_, std::io::Error>(vec!["a".to_string()]) }).await?;
    /// assert_eq!(cache.set_contains(&TAGS, &key, &"a".to_string()).await?, Some(true));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_contains<V: Collection, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Set>,
        key: &K,
        elem: &V::Elem,
    ) -> Result<Option<bool>, Error> {
        let rendered = self.render(strategy, key)?;
        let elem = encode_text(strategy.get_codec(), elem).map_err(Error::Encode)?;
        self.inner.backend.contains(rendered.loc(), &elem).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfetch_never_refreshes_without_ttl_and_always_at_expiry() {
        assert!(!should_refresh(None, 100));
        assert!(should_refresh(Some(0), 100));
        // With 100 s left and a 1 ms load, a refresh needs u < e^-100000: never in practice.
        assert!(!(0..1000).any(|_| should_refresh(Some(100_000), 1)));
    }
}
