//! The library's error types.

use std::error::Error as StdError;

/// An error from a cache operation.
///
/// `fetch` never returns this type: it fails open and runs the loader instead. Mutations
/// (`invalidate`, `incr`, ...) return it, so a caller knows when an invalidation did not happen.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use cacheobj::{Cache, CacheConfig};
/// let config = CacheConfig::builder().host("127.0.0.1").port(1).build(); // nothing listens
/// let cache = Cache::connect(config).await?;
/// let err = cache.ping().await.unwrap_err();
/// assert!(err.is_unavailable(), "{err}");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// A key could not be rendered from its template.
    #[error("cache key could not be rendered")]
    Key(#[from] KeyError),
    /// A value could not be encoded for storage.
    #[error("value could not be encoded")]
    Encode(#[source] CodecError),
    /// Redis answered with an error, or the connection failed. The message names the kind
    /// (authentication refused, permission denied, connection refused, wrong type, out of
    /// memory, ...) and what to check; the source has Redis's own words.
    #[error("{}", redis_message(.0))]
    Redis(#[from] redis::RedisError),
    /// Redis answered with a reply of a shape this library does not expect (a script's reply
    /// that is not an array, a batch reply of the wrong length): something other than
    /// cacheobj wrote the key, or the server does not behave like Redis.
    #[error("redis sent an unexpected reply ({0}): check that only cacheobj writes these keys and that the server is redis-compatible")]
    UnexpectedReply(&'static str),
    /// [`Cache::fetch_many`](crate::Cache::fetch_many) was given a key more than once, and the
    /// value loaded for it did not decode from its own encoding for the later copies (or did
    /// not encode at all).
    #[error("a duplicate key's value does not decode from its own encoding: make the type's Serialize and Deserialize agree, or pass each key once")]
    Redecode(#[source] Option<CodecError>),
    /// Redis did not answer within the configured response timeout.
    #[error("redis did not answer within {0:?}: check the server's load and the network, or raise response_timeout")]
    Timeout(std::time::Duration),
    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// Redis failed recently and the cache is not trying it again until the retry interval has
    /// passed (see [`CacheConfig::retry_interval`](crate::CacheConfig::retry_interval)).
    #[error("redis is unavailable: it failed recently and is retried after the retry interval")]
    Unavailable,
    /// An ordered `fetch_many` loader returned a different number of values than it was given
    /// keys: return one value per key, in order, or use
    /// [`Cache::fetch_many_by_key`](crate::Cache::fetch_many_by_key), whose loader returns a
    /// map.
    #[error("fetch_many's loader returned {got} values for {expected} keys: return one per key, in order, or use fetch_many_by_key")]
    BatchLength {
        /// How many keys the loader was given.
        expected: usize,
        /// How many values it returned.
        got: usize,
    },
    /// An invalidation failed (see the source) and is queued: it is retried in the background
    /// until it lands, and this process does not read the entry from Redis until then.
    #[error("invalidation failed and is queued: it is retried until redis answers")]
    InvalidationQueued(#[source] Box<Error>),
}

impl Error {
    /// Whether this error says that Redis could not be reached or did not answer in time, as
    /// opposed to an error in the request itself.
    ///
    /// # Examples
    ///
    /// ```
    /// let err = cacheobj::Error::Unavailable;
    /// assert!(err.is_unavailable());
    /// ```
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Timeout(_) | Error::Unavailable => true,
            Error::InvalidationQueued(e) => e.is_unavailable(),
            Error::Redis(e) => is_connection_error(e),
            _ => false,
        }
    }
}

/// What a Redis error means for whoever reads the log line, and what to check. The error's
/// own text (Redis's reply, the OS error) stays in `source()`.
fn redis_message(e: &redis::RedisError) -> &'static str {
    use redis::ErrorKind;
    if e.kind() == ErrorKind::AuthenticationFailed || matches!(e.code(), Some("WRONGPASS")) {
        return "redis refused authentication: check the configured username and password";
    }
    match e.code() {
        Some("NOAUTH") => {
            return "redis requires authentication: configure a username and password";
        }
        Some("NOPERM") => {
            return "redis denied permission for a command or key (NOPERM): grant the ACL user the commands the cache runs and the keys under its prefix";
        }
        Some("WRONGTYPE") => {
            return "redis holds another type under this key (WRONGTYPE): something else writes under the strategy's keys; give the cache its own prefix";
        }
        Some("OOM") => {
            return "redis is out of memory and refuses writes (OOM): raise maxmemory or set an evicting maxmemory-policy such as allkeys-lru";
        }
        Some("READONLY") => {
            return "redis is a read-only replica (READONLY): point the cache at the primary";
        }
        Some("LOADING") => return "redis is loading its dataset: it answers once loaded",
        _ => {}
    }
    if e.is_connection_refusal() {
        return "redis refused the connection: check that a server listens at the configured host and port";
    }
    if e.is_timeout() {
        return "redis timed out: check the server's load and the network, or raise the timeouts";
    }
    if e.is_io_error() || e.is_connection_dropped() {
        return "the connection to redis failed: check the network and the server";
    }
    "redis command failed"
}

pub(crate) fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
}

/// An invalid configuration.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use cacheobj::{Cache, CacheConfig, ConfigError, Error};
/// let err = Cache::connect(CacheConfig::builder().port(0).build()).await.unwrap_err();
/// assert!(matches!(err, Error::Config(ConfigError::ZeroPort)));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An environment variable holds a value that cannot be parsed.
    #[error("environment variable {name} has an invalid value {value:?}: expected {expected}")]
    Env {
        /// The variable's name.
        name: &'static str,
        /// The value found.
        value: String,
        /// What was expected instead.
        expected: &'static str,
    },
    /// The host is empty.
    #[error("host is empty: set a host name or address, such as \"localhost\"")]
    EmptyHost,
    /// The port is 0.
    #[error("port 0 is not a valid redis port: use the server's port, 6379 by default")]
    ZeroPort,
    /// The database index is negative.
    #[error("db {0} is negative: redis databases are numbered from 0")]
    NegativeDb(i64),
    /// A timeout or interval is zero.
    #[error("{0} is zero: give it a positive duration")]
    ZeroDuration(&'static str),
    /// The maximum key length is too small to hold the prefix.
    #[error("max_key_len {max} cannot hold the {prefix}-byte prefix")]
    KeyLimit {
        /// The configured maximum.
        max: usize,
        /// The prefix's length in bytes.
        prefix: usize,
    },
    /// The CA certificate file could not be read.
    #[error("cannot read the CA certificate {path:?}")]
    CaCert {
        /// The configured path.
        path: std::path::PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The configuration needs a cargo feature this build does not have.
    #[error("this configuration needs cacheobj's `{0}` feature: enable it in Cargo.toml")]
    FeatureDisabled(&'static str),
    /// The URL could not be parsed.
    #[error("invalid redis url")]
    Url(#[source] redis::RedisError),
}

/// A key that could not be rendered from its template.
///
/// # Examples
///
/// ```
/// use cacheobj::{Cache, CacheConfig, CacheKey, KeyError, Strategy};
/// #[derive(serde::Serialize, CacheKey)]
/// struct SearchKey { query: String }
/// const SEARCH: Strategy<Vec<u64>, SearchKey> = Strategy::<Vec<u64>, SearchKey>::obj("search:<query>");
///
/// let cache = Cache::in_memory_with(CacheConfig::builder().max_key_len(64).build())?;
/// let long = SearchKey { query: "x".repeat(100) };
/// assert!(matches!(cache.entry_key(&SEARCH, &long), Err(KeyError::TooLong { len: 107, max: 64 })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key type did not serialize as a struct.
    #[error("cache keys must serialize as a struct with named fields")]
    NotAStruct,
    /// A field's value has a type that cannot be written into a key.
    #[error("field `{field}` cannot be written into a key: {what} values are not supported (use numbers, strings, booleans, chars, unit enum variants or options of these)")]
    Unsupported {
        /// The field.
        field: &'static str,
        /// The serde data model type that was found.
        what: &'static str,
    },
    /// A field the template names was not serialized.
    #[error("field `{0}` named by the template was not serialized by the key")]
    MissingField(&'static str),
    /// The rendered key is longer than the configured limit.
    #[error("rendered key is {len} bytes, more than the limit of {max}")]
    TooLong {
        /// The rendered key's length.
        len: usize,
        /// The limit ([`CacheConfig::max_key_len`](crate::CacheConfig::max_key_len)).
        max: usize,
    },
    /// A custom serializer error.
    #[error("key serialization failed: {0}")]
    Custom(String),
}

impl serde::ser::Error for KeyError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        KeyError::Custom(msg.to_string())
    }
}

/// A value that could not be encoded or decoded. Decoding errors never reach callers: a value
/// that does not decode is a miss.
///
/// # Examples
///
/// ```
/// let err: cacheobj::CodecError = serde::ser::Error::custom("unsupported value");
/// assert_eq!(err.to_string(), "unsupported value");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// MessagePack encoding failed.
    #[error("messagepack encoding failed")]
    MessagePackEncode(#[source] rmp_serde::encode::Error),
    /// MessagePack decoding failed.
    #[error("messagepack decoding failed")]
    MessagePackDecode(#[source] rmp_serde::decode::Error),
    /// postcard encoding or decoding failed.
    #[error("postcard encoding or decoding failed")]
    Postcard(#[source] postcard::Error),
    /// A stored value nests deeper than decoding allows (128 levels): a deeper one could
    /// overflow the stack while it decodes.
    #[error("value nests deeper than {} levels", crate::nesting_limit::MAX_DEPTH)]
    TooDeep,
    /// A plain-text element or counter could not be parsed.
    #[error("stored text is not a valid {0}")]
    Text(&'static str),
    /// Another serde error.
    #[error("{0}")]
    Custom(String),
}

impl serde::ser::Error for CodecError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        CodecError::Custom(msg.to_string())
    }
}

impl serde::de::Error for CodecError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        CodecError::Custom(msg.to_string())
    }
}

/// Why [`Cache::fetch_many`](crate::Cache::fetch_many) or
/// [`Cache::fetch_many_by_key`](crate::Cache::fetch_many_by_key) failed: the loader's own error,
/// untouched (so a loader can return `sqlx::Error` or any error of yours), or the library's.
///
/// # Examples
///
/// ```
/// use cacheobj::{BatchError, Error};
/// let e: BatchError<std::io::Error> = BatchError::Loader(std::io::Error::other("db down"));
/// assert_eq!(e.to_string(), "db down");
/// let e: BatchError<std::io::Error> = BatchError::Cache(Error::BatchLength { expected: 2, got: 1 });
/// assert!(e.to_string().starts_with("fetch_many's loader"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum BatchError<E> {
    /// The loader failed; nothing was cached.
    Loader(E),
    /// The library failed: the loader's result did not fit the keys it was given.
    Cache(Error),
}

impl<E: std::fmt::Display> std::fmt::Display for BatchError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The loader's error reads as it would without the cache.
            BatchError::Loader(e) => e.fmt(f),
            BatchError::Cache(e) => e.fmt(f),
        }
    }
}

impl<E: StdError + 'static> StdError for BatchError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            BatchError::Loader(e) => e.source(),
            BatchError::Cache(e) => e.source(),
        }
    }
}

// Compile-time proof that errors can cross threads and live in `Box<dyn Error + Send + Sync>`.
const _: fn() = || {
    fn check<T: StdError + Send + Sync + 'static>() {}
    check::<Error>();
    check::<ConfigError>();
    check::<KeyError>();
    check::<CodecError>();
    check::<BatchError<std::io::Error>>();
};
