//! Strategies: how one kind of value is cached, declared once as a `const`.

use std::fmt;
use std::hash::{Hash as StdHash, Hasher};
use std::marker::PhantomData;
use std::time::Duration;

use crate::codec::Codec;
use crate::error::KeyError;
use crate::key::{render, CacheKey};
use crate::kind::{Counter, Hash, Kind, List, Obj, Set};
use crate::local::LocalSpec;
use crate::template::Template;
use crate::value::Collection;

/// The longest TTL or lease a strategy keeps: 100 years. Longer ones are clamped to it, so
/// that Redis (which refuses expiry times past `i64` milliseconds) and the in-memory clock
/// never overflow.
const MAX_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

const fn clamp_ms(ms: u64) -> u64 {
    if ms > MAX_MS {
        MAX_MS
    } else {
        ms
    }
}

/// How long a fill lease lasts unless a strategy sets [`Strategy::lease`]: 3 seconds.
///
/// # Examples
///
/// ```
/// assert_eq!(cacheobj::DEFAULT_LEASE, std::time::Duration::from_secs(3));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3);

/// How long a local copy may live unless a strategy sets [`Strategy::local_ttl`]: 60 seconds.
/// A copy never outlives what was left of the Redis entry's TTL when it was read, either.
///
/// # Examples
///
/// ```
/// assert_eq!(cacheobj::DEFAULT_LOCAL_TTL, std::time::Duration::from_secs(60));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const DEFAULT_LOCAL_TTL: Duration = Duration::from_secs(60);

/// The values a [`Counter`] strategy holds: integers, which Redis stores as decimal text and
/// `INCRBY` changes in place. Implemented for the primitive integers; implement it for a
/// newtype that serializes as one of them (`#[serde(transparent)]`).
///
/// A counter of any other type would store what no `incr` can change, so it does not compile:
///
/// ```compile_fail,E0277
/// # use cacheobj::{CacheKey, Counter, Strategy};
/// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
/// const NAME: Strategy<String, ItemKey, Counter> = Strategy::counter("name:<item_id>");
/// ```
///
/// # Examples
///
/// ```
/// use cacheobj::{CacheKey, Counter, CounterValue, Strategy};
/// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
/// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
/// #[serde(transparent)]
/// struct Views(u64);
/// impl CounterValue for Views {}
///
/// const VIEWS: Strategy<Views, ItemKey, Counter> = Strategy::counter("views:<item_id>");
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let (cache, key) = (cacheobj::Cache::in_memory(), ItemKey { item_id: 1 });
/// cache.fetch(&VIEWS, &key, || async { Ok::<_, std::io::Error>(Views(41)) }).await?;
/// assert_eq!(cache.incr(&VIEWS, &key, 1).await?, Some(42));
/// # Ok(())
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a counter value: counters hold integers",
    label = "a counter strategy holds an integer type such as `i64`",
    note = "use an integer type, an `Obj` strategy for other values, or implement `CounterValue` for a newtype that serializes as an integer"
)]
pub trait CounterValue {}

macro_rules! counter_values {
    ($($t:ty),*) => {$(impl CounterValue for $t {})*};
}

counter_values!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);

/// The values that [`Strategy::negative_expire`] applies to: those with a "not found". `Option<T>`
/// (`None`) for [`Obj`] and [`Hash`](struct@Hash) strategies, any [`Collection`] (empty) for
/// [`List`] and [`Set`] strategies. Implement it for a newtype around an `Option` that
/// serializes as the `Option` does.
///
/// # Examples
///
/// ```
/// use cacheobj::{NegativeValue, Obj};
/// fn negative<V: NegativeValue<Obj>>() {}
/// negative::<Option<String>>();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`negative_expire` never applies to `{Self}` values: they have no \"not found\"",
    label = "negative caching needs a value that can say \"not found\"",
    note = "cache `Option<{Self}>` and let the loader return `None` for a missing row (for a list or set strategy, an empty collection), or leave `negative_expire` out"
)]
pub trait NegativeValue<Kd> {}

impl<T> NegativeValue<Obj> for Option<T> {}
impl<T> NegativeValue<Hash> for Option<T> {}
impl<C: Collection> NegativeValue<List> for C {}
impl<C: Collection> NegativeValue<Set> for C {}

/// Ties a strategy to its types without owning any (so it is `Send`, `Sync` and `Copy`).
type Types<V, K, Kd> = PhantomData<fn() -> (V, K, Kd)>;

/// A caching strategy: where values of type `V`, identified by keys of type `K`, live in Redis,
/// how long, and how they are encoded. `Kd` is the kind: [`Obj`] (the default), [`Counter`],
/// [`List`], [`Set`] or [`Hash`](struct@Hash).
///
/// Strategies are built in `const` items. The template is checked against the key's fields
/// while the const is evaluated, so a template that names a missing field, an unclosed or empty
/// placeholder, or two placeholders with no separator between them fail the build.
///
/// # Examples
///
/// ```
/// use cacheobj::{CacheKey, Counter, Strategy};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// pub struct Item { pub id: u64, pub name: String }
/// #[derive(Debug, Clone, Serialize, CacheKey)]
/// pub struct ItemKey { pub item_id: u64 }
///
/// pub const ITEM: Strategy<Item, ItemKey> =
///     Strategy::<Item, ItemKey>::obj("item:<item_id>").expire(86400);
/// pub const ITEM_STAT: Strategy<i64, ItemKey, Counter> =
///     Strategy::counter("item_stat:<item_id>").expire(86400);
///
/// assert_eq!(ITEM.key_template(), "item:<item_id>");
/// assert_eq!(ITEM.expire_after(), Some(std::time::Duration::from_secs(86400)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Strategy<V, K, Kd = Obj> {
    name: &'static str,
    key: Template,
    hash_key: Option<Template>,
    expire_ms: u64,
    negative_ms: Option<u64>,
    version: u32,
    codec: Codec,
    lease_ms: u64,
    jitter_percent: u8,
    early_refresh_ms: u64,
    local: Option<LocalSpec<V>>,
    local_ttl_ms: u64,
    local_weigher: Option<fn(&V) -> u32>,
    _types: Types<V, K, Kd>,
}

impl<V, K: CacheKey, Kd: Kind> Strategy<V, K, Kd> {
    const fn new(key: Template, hash_key: Option<Template>) -> Self {
        // The hash key names a hash strategy better than its field template does.
        let name = match &hash_key {
            Some(t) => t.source(),
            None => key.source(),
        };
        Strategy {
            name,
            key,
            hash_key,
            expire_ms: 0,
            negative_ms: None,
            version: 0,
            codec: Codec::MessagePack,
            lease_ms: DEFAULT_LEASE.as_millis() as u64,
            jitter_percent: 0,
            early_refresh_ms: 0,
            local: None,
            local_ttl_ms: DEFAULT_LOCAL_TTL.as_millis() as u64,
            local_weigher: None,
            _types: PhantomData,
        }
    }
}

impl<V, K> Strategy<V, K, Obj> {
    /// An object strategy: one value under the key `template` renders to.
    ///
    /// In a typed `const` the declared type gives the value and key types, so no turbofish is
    /// needed; `Strategy::<V, K>::obj(..)` is the same strategy, and is needed only where no
    /// type is written.
    ///
    /// # Panics
    ///
    /// Panics if the template is invalid; in a `const` that is a compile error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::obj("item:<item_id>");
    /// assert_eq!(ITEM.key_template(), "item:<item_id>");
    /// assert_eq!(ITEM, Strategy::<String, ItemKey>::obj("item:<item_id>"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn obj(template: &'static str) -> Self
    where
        K: CacheKey,
    {
        Self::new(Template::parse(template, K::FIELDS), None)
    }
}

impl<V, K> Strategy<V, K, Counter> {
    /// A counter strategy: an integer stored as decimal text, which `incr`/`decr` change in place.
    ///
    /// # Panics
    ///
    /// Panics if the template is invalid; in a `const` that is a compile error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Counter, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const VIEWS: Strategy<i64, ItemKey, Counter> = Strategy::counter("views:<item_id>").expire(60);
    /// assert_eq!(VIEWS.key_template(), "views:<item_id>");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn counter(template: &'static str) -> Self
    where
        V: CounterValue,
        K: CacheKey,
    {
        Self::new(Template::parse(template, K::FIELDS), None)
    }
}

impl<V, K> Strategy<V, K, List> {
    /// A list strategy: an ordered Redis LIST of elements.
    ///
    /// # Panics
    ///
    /// Panics if the template is invalid; in a `const` that is a compile error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, List, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const MEMBERS: Strategy<Vec<u64>, ItemKey, List> = Strategy::list("members:<item_id>");
    /// assert_eq!(MEMBERS.key_template(), "members:<item_id>");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn list(template: &'static str) -> Self
    where
        V: Collection,
        K: CacheKey,
    {
        Self::new(Template::parse(template, K::FIELDS), None)
    }
}

impl<V, K> Strategy<V, K, Set> {
    /// A set strategy: an unordered Redis SET of elements.
    ///
    /// # Panics
    ///
    /// Panics if the template is invalid; in a `const` that is a compile error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Set, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const TAGS: Strategy<Vec<String>, ItemKey, Set> = Strategy::set("tags:<item_id>");
    /// assert_eq!(TAGS.key_template(), "tags:<item_id>");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn set(template: &'static str) -> Self
    where
        V: Collection,
        K: CacheKey,
    {
        Self::new(Template::parse(template, K::FIELDS), None)
    }
}

impl<V, K> Strategy<V, K, Hash> {
    /// A hash strategy: values live in field `field` of the Redis hash `hash_key`. Both are
    /// templates.
    ///
    /// # Panics
    ///
    /// Panics if either template is invalid; in a `const` that is a compile error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Hash, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEMS: Strategy<String, ItemKey, Hash> = Strategy::hash("item", "<item_id>");
    /// assert_eq!(ITEMS.hash_template(), Some("item"));
    /// assert_eq!(ITEMS.key_template(), "<item_id>");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn hash(hash_key: &'static str, field: &'static str) -> Self
    where
        K: CacheKey,
    {
        Self::new(
            Template::parse(field, K::FIELDS),
            Some(Template::parse(hash_key, K::FIELDS)),
        )
    }
}

macro_rules! local_kinds {
    ($($kind:ident),*) => {$(
        impl<V: Clone + Send + Sync + 'static, K> Strategy<V, K, $kind> {
            /// Keeps up to `max_entries` decoded values of this strategy in process memory
            /// (the *local tier*), so that a hit costs no round trip and no decoding: only the
            /// clone of the value returned. Redis keeps every process's copies coherent: any
            /// write to a key (by any client, an expiry, an eviction, `FLUSHDB`) removes them,
            /// and this process's own `invalidate`, `invalidate_after` and counter changes
            /// remove its copy before they return. See the README's "Local tier" for what
            /// holds and when reads go to Redis instead.
            ///
            /// A copy lives at most [`local_ttl`](Self::local_ttl) (default
            /// [`DEFAULT_LOCAL_TTL`]) and never longer than the Redis entry's TTL had left.
            /// `max_entries` bounds the entries (or, with
            /// [`local_weigher`](Self::local_weigher), their total weight); moka evicts the
            /// least useful. While the tier has room, every value read from Redis is kept.
            /// Once it is full, a key's first miss reads Redis as a strategy without a local
            /// tier does (no TTL read, no insert), and its second miss within a window of about
            /// twice `max_entries` misses is kept: a scan of many keys costs what it costs
            /// without the tier, and does not push out the keys read often. For a value that is
            /// costly to clone, cache an `Arc<T>`: a local hit then costs one reference count.
            ///
            /// Besides its entries, the tier of a strategy holds two small filters sized by
            /// `max_entries` (which keys it may hold, and which missed lately): at least 6 KiB,
            /// 6.5 bytes per entry of the bound at 10,000 entries, 4 at 100,000, and at most
            /// 2.2 MiB. The cache also remembers when the entries of the keys it kept expire,
            /// so that a key read again after its copy lived its local TTL needs no `PTTL`:
            /// 16 bytes a slot, in slots that grow with the keys remembered, up to two per
            /// entry of all local strategies' bounds and 4 MiB.
            ///
            /// Only [`Obj`] and [`Counter`] strategies have a local tier. On the embedded
            /// backend it is not used: that store is already in process.
            ///
            /// # Examples
            ///
            /// ```
            /// # use cacheobj::{CacheKey, Strategy};
            /// # use std::time::Duration;
            /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
            /// const ITEM: Strategy<String, ItemKey> = Strategy::obj("item:<item_id>")
            ///     .expire(86400)
            ///     .local(10_000)
            ///     .local_ttl(Duration::from_secs(30));
            /// assert_eq!(ITEM.local_capacity(), Some(10_000));
            /// assert_eq!(ITEM.local_ttl_time(), Duration::from_secs(30));
            /// # Ok::<(), Box<dyn std::error::Error>>(())
            /// ```
            #[must_use]
            pub const fn local(mut self, max_entries: u64) -> Self {
                self.local = Some(LocalSpec::new(max_entries));
                self
            }
        }
    )*};
}

local_kinds!(Obj, Counter);

impl<V, K, Kd> Strategy<V, K, Kd> {
    /// The longest a local copy may live (see [`local`](Self::local)); it never outlives the
    /// Redis entry either. Default: [`DEFAULT_LOCAL_TTL`]. A shorter one bounds how long a copy
    /// could be served if Redis's announcement of a change never arrived while the connection
    /// that should carry it still answered (which the heartbeat does not see).
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy};
    /// # use std::time::Duration;
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> =
    ///     Strategy::obj("item:<item_id>").local(1_000).local_ttl(Duration::from_secs(5));
    /// assert_eq!(ITEM.local_ttl_time(), Duration::from_secs(5));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn local_ttl(mut self, ttl: Duration) -> Self {
        let ms = ttl.as_millis();
        self.local_ttl_ms = if ms > MAX_MS as u128 {
            MAX_MS
        } else {
            ms as u64
        };
        self
    }

    /// Bounds the local tier by weight rather than entries: [`local`](Self::local)'s bound is
    /// then the total of `weigh(value)` over the values held (for example their size in
    /// bytes).
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// // At most about 64 MiB of names.
    /// const NAME: Strategy<String, ItemKey> = Strategy::obj("name:<item_id>")
    ///     .local(64 << 20)
    ///     .local_weigher(|name: &String| name.len().min(u32::MAX as usize) as u32);
    /// assert_eq!(NAME.local_capacity(), Some(64 << 20));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn local_weigher(mut self, weigh: fn(&V) -> u32) -> Self {
        self.local_weigher = Some(weigh);
        self
    }

    /// The local tier's bound, when the strategy has one.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::obj("item:<item_id>");
    /// assert_eq!(ITEM.local_capacity(), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub const fn local_capacity(&self) -> Option<u64> {
        match &self.local {
            Some(spec) => Some(spec.capacity),
            None => None,
        }
    }

    /// The longest a local copy lives; see [`local_ttl`](Self::local_ttl).
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::obj("item:<item_id>").local(10);
    /// assert_eq!(ITEM.local_ttl_time(), cacheobj::DEFAULT_LOCAL_TTL);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub const fn local_ttl_time(&self) -> Duration {
        Duration::from_millis(self.local_ttl_ms)
    }

    /// The local tier's spec, weigher included.
    pub(crate) fn local_spec(&self) -> Option<LocalSpec<V>> {
        let mut spec = self.local?;
        spec.weigher = self.local_weigher;
        Some(spec)
    }

    /// Where the local tier finds this strategy's store.
    pub(crate) fn local_id(&self) -> (&'static str, u32) {
        (self.key.source(), self.version)
    }
}

impl<V, K, Kd> Strategy<V, K, Kd> {
    /// Names the strategy in its [`Cache::strategy_stats`](crate::Cache::strategy_stats), its
    /// metrics (the `strategy` label) and its tracing spans. Default: the key template (for a
    /// [`Hash`](struct@Hash) strategy, the hash key template). Strategies that share a name
    /// share their figures; keep names few and fixed, since each is a metric label.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Hash, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::obj("item:<item_id>").name("item");
    /// assert_eq!(ITEM.strategy_name(), "item");
    /// const PLAIN: Strategy<String, ItemKey> = Strategy::obj("item:<item_id>");
    /// assert_eq!(PLAIN.strategy_name(), "item:<item_id>");
    /// const ITEMS: Strategy<String, ItemKey, Hash> = Strategy::hash("items", "<item_id>");
    /// assert_eq!(ITEMS.strategy_name(), "items");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn name(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// The name set by [`name`](Self::name), or the template it defaults to.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::obj("item:<item_id>").name("item");
    /// assert_eq!(ITEM.strategy_name(), "item");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn strategy_name(&self) -> &'static str {
        self.name
    }

    /// Entries expire `secs` seconds after they are filled. Without it they never expire. For a
    /// [`Hash`](struct@Hash) strategy the TTL is the whole Redis hash's, extended on each fill to at least
    /// `secs` (Redis before 7.4 has no per-field TTL).
    ///
    /// # Panics
    ///
    /// Panics if `secs` is 0 (leave `expire` out instead); in a `const` that is a compile error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>").expire(60);
    /// assert_eq!(ITEM.expire_after(), Some(std::time::Duration::from_secs(60)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn expire(mut self, secs: u64) -> Self {
        if secs == 0 {
            panic!("cacheobj: expire(0) would expire entries at once: leave `.expire(..)` out for entries that never expire");
        }
        self.expire_ms = clamp_ms(secs.saturating_mul(1000));
        self
    }

    /// Negative caching: a loaded value that is "not found" (`None`, or an empty list or set) is
    /// cached for `secs` seconds instead of the strategy's `expire`. Use `Option<T>` values so a
    /// missing row is cached and does not reach the database on every request.
    ///
    /// # Panics
    ///
    /// Panics if `secs` is 0; in a `const` that is a compile error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<Option<String>, ItemKey> =
    ///     Strategy::<Option<String>, ItemKey>::obj("item:<item_id>").expire(3600).negative_expire(30);
    /// assert_eq!(ITEM.negative_expire_after(), Some(std::time::Duration::from_secs(30)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// Only for values that have a "not found": `Option<T>` for obj and hash strategies, a
    /// collection for list and set strategies (see [`NegativeValue`]). On any other value it would
    /// never apply, so it does not compile:
    ///
    /// ```compile_fail,E0277
    /// # use cacheobj::{CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> =
    ///     Strategy::<String, ItemKey>::obj("item:<item_id>").negative_expire(30);
    /// ```
    #[must_use]
    pub const fn negative_expire(mut self, secs: u64) -> Self
    where
        V: NegativeValue<Kd>,
    {
        if secs == 0 {
            panic!("cacheobj: negative_expire(0) would expire entries at once: leave it out to cache \"not found\" like any value");
        }
        self.negative_ms = Some(clamp_ms(secs.saturating_mul(1000)));
        self
    }

    /// A version that is part of every key (rendered as a `#v<n>` suffix), so a changed value
    /// type rolls out without reading entries written by the old one. Version 0, the default,
    /// adds nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>").version(2);
    /// assert_eq!(ITEM.key_version(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// The codec for obj and hash values and for structured list and set elements. Default:
    /// [`Codec::MessagePack`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Codec, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> =
    ///     Strategy::<String, ItemKey>::obj("item:<item_id>").codec(Codec::Postcard);
    /// assert_eq!(ITEM.value_codec(), Codec::Postcard);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// How long a fill lease lasts: the longest that other callers wait for a loader running
    /// elsewhere before they load themselves, and so the longest a crashed loader delays them.
    /// A load that outlasts its lease is returned but not cached. Default: [`DEFAULT_LEASE`].
    ///
    /// # Panics
    ///
    /// Panics if `lease` is shorter than a millisecond; in a `const` that is a compile error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy};
    /// # use std::time::Duration;
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> =
    ///     Strategy::<String, ItemKey>::obj("item:<item_id>").lease(Duration::from_millis(500));
    /// assert_eq!(ITEM.lease_time(), Duration::from_millis(500));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn lease(mut self, lease: Duration) -> Self {
        let ms = lease.as_millis();
        if ms == 0 {
            panic!("cacheobj: a lease must last at least a millisecond");
        }
        self.lease_ms = if ms > MAX_MS as u128 {
            MAX_MS
        } else {
            ms as u64
        };
        self
    }

    /// TTL jitter: each fill's TTL is shortened by a random amount of up to `percent` percent,
    /// so entries filled together do not all expire together. Default: 0.
    ///
    /// # Panics
    ///
    /// Panics if `percent` is over 100; in a `const` that is a compile error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> =
    ///     Strategy::<String, ItemKey>::obj("item:<item_id>").expire(600).jitter(10);
    /// assert_eq!(ITEM.jitter_percent(), 10);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn jitter(mut self, percent: u8) -> Self {
        if percent > 100 {
            panic!("cacheobj: jitter is a percentage of the TTL, at most 100");
        }
        self.jitter_percent = percent;
        self
    }

    /// Early refresh for hot keys (XFetch, Vattani et al., VLDB 2015): a hit whose entry expires
    /// soon reloads it in the background with a probability that rises as expiry nears, while
    /// readers keep getting the current value. `load_time` is about how long a load takes; a
    /// refresh happens, on average, about that long before expiry. Only for [`Obj`] and
    /// [`Counter`] strategies with an `expire`; costs a `PTTL` on each hit, in the same round
    /// trip. The refresh only lands if the entry was not invalidated or changed meanwhile.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy};
    /// # use std::time::Duration;
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const HOT: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("hot:<item_id>")
    ///     .expire(60)
    ///     .early_refresh(Duration::from_millis(200));
    /// assert_eq!(HOT.early_refresh_time(), Some(Duration::from_millis(200)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn early_refresh(mut self, load_time: Duration) -> Self {
        let ms = load_time.as_millis();
        self.early_refresh_ms = if ms > MAX_MS as u128 {
            MAX_MS
        } else if ms == 0 {
            1
        } else {
            ms as u64
        };
        self
    }

    /// The key template (for a [`Hash`](struct@Hash) strategy, the field template).
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>");
    /// assert_eq!(ITEM.key_template(), "item:<item_id>");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn key_template(&self) -> &'static str {
        self.key.source()
    }

    /// The hash key template of a [`Hash`](struct@Hash) strategy; `None` for other kinds.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Hash, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEMS: Strategy<String, ItemKey, Hash> = Strategy::hash("item", "<item_id>");
    /// assert_eq!(ITEMS.hash_template(), Some("item"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn hash_template(&self) -> Option<&'static str> {
        match &self.hash_key {
            Some(t) => Some(t.source()),
            None => None,
        }
    }

    /// The TTL set by [`expire`](Self::expire); `None` if entries never expire.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>");
    /// assert_eq!(ITEM.expire_after(), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn expire_after(&self) -> Option<Duration> {
        if self.expire_ms == 0 {
            None
        } else {
            Some(Duration::from_millis(self.expire_ms))
        }
    }

    /// The TTL of "not found" values set by [`negative_expire`](Self::negative_expire).
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<Option<String>, ItemKey> = Strategy::<Option<String>, ItemKey>::obj("item:<item_id>");
    /// assert_eq!(ITEM.negative_expire_after(), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn negative_expire_after(&self) -> Option<Duration> {
        match self.negative_ms {
            Some(ms) => Some(Duration::from_millis(ms)),
            None => None,
        }
    }

    /// The version set by [`version`](Self::version).
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>");
    /// assert_eq!(ITEM.key_version(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn key_version(&self) -> u32 {
        self.version
    }

    /// The version set by [`version`](Self::version); renamed
    /// [`key_version`](Self::key_version).
    #[must_use]
    #[deprecated(since = "0.1.1", note = "renamed `key_version`")]
    pub const fn get_version(&self) -> u32 {
        self.key_version()
    }

    /// The codec set by [`codec`](Self::codec).
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Codec, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>");
    /// assert_eq!(ITEM.value_codec(), Codec::MessagePack);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn value_codec(&self) -> Codec {
        self.codec
    }

    /// The codec set by [`codec`](Self::codec); renamed [`value_codec`](Self::value_codec).
    #[must_use]
    #[deprecated(since = "0.1.1", note = "renamed `value_codec`")]
    pub const fn get_codec(&self) -> Codec {
        self.value_codec()
    }

    /// The lease time set by [`lease`](Self::lease).
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy, DEFAULT_LEASE};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>");
    /// assert_eq!(ITEM.lease_time(), DEFAULT_LEASE);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn lease_time(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// The jitter set by [`jitter`](Self::jitter), in percent.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>");
    /// assert_eq!(ITEM.jitter_percent(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn jitter_percent(&self) -> u8 {
        self.jitter_percent
    }

    /// The load time set by [`early_refresh`](Self::early_refresh); `None` when off.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("item:<item_id>");
    /// assert_eq!(ITEM.early_refresh_time(), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn early_refresh_time(&self) -> Option<Duration> {
        if self.early_refresh_ms == 0 {
            None
        } else {
            Some(Duration::from_millis(self.early_refresh_ms))
        }
    }

    pub(crate) fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    pub(crate) fn early_refresh_ms(&self) -> u64 {
        self.early_refresh_ms
    }

    /// The TTL in milliseconds for a fill (0: none), with jitter applied.
    pub(crate) fn fill_ttl_ms(&self, negative: bool) -> u64 {
        let base = match (negative, self.negative_ms) {
            (true, Some(ms)) => ms,
            _ => self.expire_ms,
        };
        if base == 0 || self.jitter_percent == 0 {
            return base;
        }
        let span = base / 100 * u64::from(self.jitter_percent);
        base - fastrand::u64(0..=span).min(base - 1)
    }
}

impl<V, K: CacheKey, Kd> Strategy<V, K, Kd> {
    /// Renders the Redis key (for hash strategies, the hash key) into `out`.
    pub(crate) fn render_key(
        &self,
        out: &mut Vec<u8>,
        prefix: &[u8],
        key: &K,
    ) -> Result<(), KeyError> {
        match &self.hash_key {
            Some(hash_key) => render(out, prefix, hash_key, &[], key),
            None => render(out, prefix, &self.key, &self.version_suffix(), key),
        }
    }

    /// Renders the hash field of a hash strategy into `out`; does nothing for other kinds.
    pub(crate) fn render_field(&self, out: &mut Vec<u8>, key: &K) -> Result<(), KeyError> {
        if self.hash_key.is_some() {
            render(out, &[], &self.key, &self.version_suffix(), key)?;
        }
        Ok(())
    }

    fn version_suffix(&self) -> VersionSuffix {
        VersionSuffix::new(self.version)
    }
}

/// `#v<n>` on the stack, empty for version 0.
struct VersionSuffix {
    buf: [u8; 12],
    len: usize,
}

impl VersionSuffix {
    fn new(version: u32) -> Self {
        let mut s = VersionSuffix {
            buf: [0; 12],
            len: 0,
        };
        if version > 0 {
            let text = format!("#v{version}");
            s.buf[..text.len()].copy_from_slice(text.as_bytes());
            s.len = text.len();
        }
        s
    }
}

impl std::ops::Deref for VersionSuffix {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

// Manual impls: derives would demand the same traits of `V`, `K` and `Kd`, which a strategy never
// holds.
impl<V, K, Kd> Clone for Strategy<V, K, Kd> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<V, K, Kd> Copy for Strategy<V, K, Kd> {}

impl<V, K, Kd> PartialEq for Strategy<V, K, Kd> {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.key == other.key
            && self.hash_key == other.hash_key
            && self.expire_ms == other.expire_ms
            && self.negative_ms == other.negative_ms
            && self.version == other.version
            && self.codec == other.codec
            && self.lease_ms == other.lease_ms
            && self.jitter_percent == other.jitter_percent
            && self.early_refresh_ms == other.early_refresh_ms
            && self.local_capacity() == other.local_capacity()
            && self.local_ttl_ms == other.local_ttl_ms
    }
}

impl<V, K, Kd> Eq for Strategy<V, K, Kd> {}

impl<V, K, Kd> StdHash for Strategy<V, K, Kd> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
        self.hash_key.hash(state);
        self.expire_ms.hash(state);
        self.version.hash(state);
    }
}

impl<V, K, Kd> fmt::Debug for Strategy<V, K, Kd> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Strategy")
            .field("name", &self.name)
            .field("kind", &std::any::type_name::<Kd>())
            .field("hash_key", &self.hash_template())
            .field("key", &self.key.source())
            .field("expire", &self.expire_after())
            .field("negative_expire", &self.negative_expire_after())
            .field("version", &self.version)
            .field("codec", &self.codec)
            .field("lease", &self.lease_time())
            .field("jitter_percent", &self.jitter_percent)
            .field("early_refresh", &self.early_refresh_time())
            .field("local", &self.local_capacity())
            .field("local_ttl", &self.local_ttl_time())
            .field("local_weigher", &self.local_weigher.is_some())
            .finish()
    }
}
