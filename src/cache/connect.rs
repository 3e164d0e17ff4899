//! Building a [`Cache`]: on Redis (standalone, cluster, TLS), on a client or connection the
//! application built, or in memory.

use redis::aio::MultiplexedConnection;

use super::Cache;
use crate::backend::{Backend, MemoryBackend, RedisBackend};
use crate::config::CacheConfig;
use crate::error::{ConfigError, Error};
use crate::local::Source;

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

/// Where a cluster cache's local tier opens its tracking connections: the seed nodes, with
/// the cluster client's credentials and CA.
#[cfg(feature = "cluster")]
fn cluster_tracking(config: &CacheConfig, ca_cert: Option<&[u8]>) -> Result<Source, Error> {
    use redis::IntoConnectionInfo;
    let mut seeds = Vec::with_capacity(config.nodes.len());
    for node in &config.nodes {
        let info = node
            .as_str()
            .into_connection_info()
            .map_err(ConfigError::Url)?;
        let mut settings = info.redis_settings().clone();
        if let Some(username) = &config.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &config.password {
            settings = settings.set_password(password);
        }
        let info = info.set_redis_settings(settings);
        let info = match ca_cert {
            None => info,
            Some(pem) => tls_client(info, pem.to_vec())
                .map_err(|e| config.bad_ca_cert(e))?
                .get_connection_info()
                .clone(),
        };
        seeds.push(info);
    }
    Ok(Source::Cluster(seeds))
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
        let tracking = cluster_tracking(&config, ca_cert.as_deref())?;
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
            Some(tracking),
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
        let tracking = Source::Standalone(Box::new(client.get_connection_info().clone()));
        let backend = RedisBackend::from_client(client, &config)?;
        let cache = Cache::with_backend(Backend::Redis(backend), &config, Some(tracking));
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
        let tracking = Source::Unavailable(
            "a cache built from a connection has no client to open tracking connections with; use Cache::from_client",
        );
        Ok(Cache::with_backend(
            Backend::Redis(backend),
            &config,
            Some(tracking),
        ))
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
            None,
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
            None,
        ))
    }
}
