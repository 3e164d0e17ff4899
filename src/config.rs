//! Connection and behaviour settings.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};
use typed_builder::TypedBuilder;

use crate::error::ConfigError;

/// How a [`Cache`](crate::Cache) reaches Redis, with Flask-CacheOBJ's names and defaults.
///
/// Plain data: build it with [`CacheConfig::builder`], read it from the environment with
/// [`CacheConfig::from_env`], or change the public fields. Whatever is wrong in it is reported
/// by [`Cache::connect`](crate::Cache::connect) as an error. `Debug` output never shows a
/// password.
///
/// # Examples
///
/// ```
/// use cacheobj::CacheConfig;
///
/// let config = CacheConfig::builder().host("127.0.0.1").port(6379).db(0).prefix("app:").build();
/// assert_eq!(config.prefix, "app:");
/// assert_eq!(config.connect_timeout, std::time::Duration::from_secs(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, TypedBuilder)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Redis host (`CACHE_HOST`). Default: `"localhost"`.
    #[builder(default = String::from("localhost"), setter(into))]
    pub host: String,
    /// Redis port (`CACHE_PORT`). Default: 6379.
    #[builder(default = 6379)]
    pub port: u16,
    /// Redis database index (`CACHE_DB`). Default: 0.
    #[builder(default = 0)]
    pub db: i64,
    /// Prepended to every key (`CACHE_PREFIX`). Default: `""`.
    #[builder(default, setter(into))]
    pub prefix: String,
    /// ACL user name (`CACHE_USERNAME`). Default: none.
    #[builder(default, setter(into, strip_option))]
    pub username: Option<String>,
    /// Password (`CACHE_PASSWORD`). Default: none.
    #[builder(default, setter(into, strip_option))]
    pub password: Option<String>,
    /// A `redis://` URL (`CACHE_URL`). When set, it replaces host, port, db, username and
    /// password. Default: none.
    #[builder(default, setter(into, strip_option))]
    pub url: Option<String>,
    /// Redis Cluster nodes as `redis://` (or `rediss://`) URLs (`CACHE_NODES`, comma-separated).
    /// When set, the cache runs on the cluster and `host`, `port`, `db` and `url` are ignored;
    /// `username`, `password` and `ca_cert` apply. Needs the `cluster` feature. Default: none.
    #[builder(default, setter(into))]
    pub nodes: Vec<String>,
    /// A PEM file of the CA certificate(s) that sign the servers' TLS certificates
    /// (`CACHE_CA_CERT`), for `rediss://` URLs; without it the system's roots are trusted.
    /// Needs the `tls` feature. Default: none.
    #[builder(default, setter(into, strip_option))]
    pub ca_cert: Option<PathBuf>,
    /// How long one connection attempt may take. Default: 1 second.
    #[builder(default = Duration::from_secs(1))]
    pub connect_timeout: Duration,
    /// How long one request may wait for Redis before it fails (and `fetch` runs the loader);
    /// the requests of one `fetch` (read, lease, fill, and those of another fetch whose load it
    /// joins) share it. Default: 250 milliseconds.
    #[builder(default = Duration::from_millis(250))]
    pub response_timeout: Duration,
    /// After Redis fails to answer, requests skip it and fail at once for up to this long, so
    /// an outage does not add a timeout to every request; on a standalone server a background
    /// ping ends it sooner once Redis answers. Default: 1 second.
    #[builder(default = Duration::from_secs(1))]
    pub retry_interval: Duration,
    /// The longest rendered key (prefix included), in bytes; longer keys are an error, so user
    /// input cannot put huge keys into Redis. Default: 1024.
    #[builder(default = 1024)]
    pub max_key_len: usize,
    /// How many failed invalidations may wait for retry at once (one per entry, however often
    /// it fails). When the queue is full, a failed invalidation is not retried: the caller is
    /// told ([`Invalidation::NotRetried`](crate::Invalidation::NotRetried)) and
    /// [`Stats::invalidations_dropped`](crate::Stats::invalidations_dropped) counts it. `0`
    /// turns retrying off. Default: 10,000.
    #[builder(default = 10_000)]
    pub invalidation_queue: usize,
    /// Whether `invalidate`, `invalidate_many` and `hash_del` queue their failures for retry
    /// too, as `invalidate_after` always does; they still return the error, as
    /// [`Error::InvalidationQueued`](crate::Error::InvalidationQueued). Default: `false`.
    #[builder(default = false)]
    pub queue_failed_invalidations: bool,
    /// How often the local tier checks that its tracking connections still answer (a `PING`
    /// each, bounded by `response_timeout`; on a cluster also `CLUSTER SLOTS`, to see new
    /// nodes). A connection that does not answer drops every local copy, so this bounds how
    /// long a silently cut connection can leave local copies unchecked. Only used by strategies
    /// with [`Strategy::local`](crate::Strategy::local). Default: 500 milliseconds.
    #[builder(default = Duration::from_millis(500))]
    pub local_heartbeat: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig::builder().build()
    }
}

const CERT_HEADER: &[u8] = b"-----BEGIN CERTIFICATE-----";

fn env_var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn parse_env<T: std::str::FromStr>(
    name: &'static str,
    expected: &'static str,
) -> Result<Option<T>, ConfigError> {
    match env_var(name) {
        None => Ok(None),
        Some(value) => value.parse().map(Some).map_err(|_| ConfigError::Env {
            name,
            value,
            expected,
        }),
    }
}

impl CacheConfig {
    /// Reads `CACHE_URL`, `CACHE_HOST`, `CACHE_PORT`, `CACHE_DB`, `CACHE_PREFIX`,
    /// `CACHE_USERNAME`, `CACHE_PASSWORD`, `CACHE_NODES` (comma-separated URLs) and
    /// `CACHE_CA_CERT`; unset or empty variables keep their defaults.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Env`] when `CACHE_PORT` or `CACHE_DB` is not a number.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = cacheobj::CacheConfig::from_env()?;
    /// assert!(config.port > 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_env() -> Result<CacheConfig, ConfigError> {
        let mut config = CacheConfig {
            url: env_var("CACHE_URL"),
            username: env_var("CACHE_USERNAME"),
            password: env_var("CACHE_PASSWORD"),
            nodes: env_var("CACHE_NODES")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|n| !n.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            ca_cert: env_var("CACHE_CA_CERT").map(PathBuf::from),
            ..CacheConfig::default()
        };
        if let Some(host) = env_var("CACHE_HOST") {
            config.host = host;
        }
        if let Some(port) = parse_env("CACHE_PORT", "a port number from 1 to 65535")? {
            config.port = port;
        }
        if let Some(db) = parse_env("CACHE_DB", "a database index from 0")? {
            config.db = db;
        }
        if let Some(prefix) = env_var("CACHE_PREFIX") {
            config.prefix = prefix;
        }
        Ok(config)
    }

    /// Checks the configuration and turns it into redis connection settings.
    pub(crate) fn connection_info(&self) -> Result<ConnectionInfo, ConfigError> {
        self.check_limits()?;
        if let Some(url) = &self.url {
            return url
                .as_str()
                .into_connection_info()
                .map_err(ConfigError::Url);
        }
        if self.host.is_empty() {
            return Err(ConfigError::EmptyHost);
        }
        if self.port == 0 {
            return Err(ConfigError::ZeroPort);
        }
        if self.db < 0 {
            return Err(ConfigError::NegativeDb(self.db));
        }
        let mut redis = RedisConnectionInfo::default().set_db(self.db);
        if let Some(username) = &self.username {
            redis = redis.set_username(username);
        }
        if let Some(password) = &self.password {
            redis = redis.set_password(password);
        }
        let info = ConnectionAddr::Tcp(self.host.clone(), self.port)
            .into_connection_info()
            .map_err(ConfigError::Url)?;
        Ok(info.set_redis_settings(redis))
    }

    /// The CA certificate's PEM bytes, if one is configured.
    pub(crate) fn read_ca_cert(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        match &self.ca_cert {
            None => Ok(None),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| ConfigError::CaCert {
                    path: path.clone(),
                    source,
                })?;
                // An empty or foreign file would leave TLS with nothing to trust: every request
                // would fail. Say so now.
                if !pem.windows(CERT_HEADER.len()).any(|w| w == CERT_HEADER) {
                    return Err(self.bad_ca_cert(
                        "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
                    ));
                }
                Ok(Some(pem))
            }
        }
    }

    /// A [`ConfigError::CaCert`] for a CA file whose content is unusable.
    pub(crate) fn bad_ca_cert(
        &self,
        why: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ConfigError {
        ConfigError::CaCert {
            path: self.ca_cert.clone().unwrap_or_default(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
        }
    }

    /// Checks the settings that do not concern the connection.
    pub(crate) fn check_limits(&self) -> Result<(), ConfigError> {
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
            ("retry_interval", self.retry_interval),
            ("local_heartbeat", self.local_heartbeat),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        if self.max_key_len <= self.prefix.len() {
            return Err(ConfigError::KeyLimit {
                max: self.max_key_len,
                prefix: self.prefix.len(),
            });
        }
        Ok(())
    }
}

/// Hides the password in a `redis://user:password@host` URL.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:<redacted>{}", &url[..scheme_end], &rest[at..])
        }
        None => url.to_owned(),
    }
}

impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("url", &self.url.as_deref().map(redact_url))
            .field(
                "nodes",
                &self.nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>(),
            )
            .field("ca_cert", &self.ca_cert)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("retry_interval", &self.retry_interval)
            .field("max_key_len", &self.max_key_len)
            .field("local_heartbeat", &self.local_heartbeat)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_password() {
        let config = CacheConfig::builder()
            .password("hunter2")
            .url("redis://app:hunter2@example:6379/0")
            .build();
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("redis://app:<redacted>@example:6379/0"),
            "{shown}"
        );
    }

    #[test]
    fn invalid_settings_are_errors() {
        let bad = CacheConfig::builder().port(0).build();
        assert!(matches!(bad.connection_info(), Err(ConfigError::ZeroPort)));
        let bad = CacheConfig::builder().db(-1).build();
        assert!(matches!(
            bad.connection_info(),
            Err(ConfigError::NegativeDb(-1))
        ));
        let bad = CacheConfig::builder().url("http://nope").build();
        assert!(matches!(bad.connection_info(), Err(ConfigError::Url(_))));
        let bad = CacheConfig::builder()
            .response_timeout(Duration::ZERO)
            .build();
        assert!(matches!(
            bad.connection_info(),
            Err(ConfigError::ZeroDuration("response_timeout"))
        ));
    }
}
