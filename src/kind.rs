//! Marker types for the kinds of strategy.

/// What only this crate may name: users can use the kinds, not define them or read their
/// layout.
mod sealed {
    /// How a kind lays its value out in Redis.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Shape {
        /// One string value under one key.
        Str,
        /// A Redis LIST.
        List,
        /// A Redis SET.
        Set,
        /// One field of a Redis HASH.
        Hash,
    }

    pub trait Sealed {
        /// How the kind is laid out in Redis.
        const SHAPE: Shape;
    }
}

pub(crate) use sealed::Shape;

/// The kind of a [`Strategy`](crate::Strategy): [`Obj`], [`Counter`], [`List`], [`Set`] or
/// [`Hash`](struct@Hash). Sealed: the kinds are this crate's.
///
/// # Examples
///
/// ```
/// use cacheobj::{CacheKey, Counter, Kind, Strategy};
/// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
/// fn kind_name<V, K, Kd: Kind>(_: &Strategy<V, K, Kd>) -> &'static str {
///     std::any::type_name::<Kd>()
/// }
/// const VIEWS: Strategy<i64, ItemKey, Counter> = Strategy::counter("views:<item_id>");
/// assert!(kind_name(&VIEWS).ends_with("Counter"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Kind: sealed::Sealed + Copy + Send + Sync + 'static {}

macro_rules! kinds {
    ($($(#[$doc:meta])* $name:ident => $shape:ident;)*) => {$(
        $(#[$doc])*
        ///
        /// # Examples
        ///
        /// ```
        #[doc = concat!("let kind = cacheobj::", stringify!($name), ";")]
        #[doc = concat!("assert_eq!(format!(\"{kind:?}\"), \"", stringify!($name), "\");")]
        /// # Ok::<(), Box<dyn std::error::Error>>(())
        /// ```
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name;
        impl sealed::Sealed for $name {
            const SHAPE: Shape = Shape::$shape;
        }
        impl Kind for $name {}
    )*};
}

kinds! {
    /// One value under one key, encoded by the strategy's [`Codec`](crate::Codec)
    /// (Flask-CacheOBJ's `cache_obj`).
    Obj => Str;
    /// An integer stored as decimal text, so that Redis can `INCRBY` it
    /// (Flask-CacheOBJ's `cache_counter`).
    Counter => Str;
    /// An ordered Redis LIST (Flask-CacheOBJ's `cache_list` stores a SET; see [`Set`]).
    List => List;
    /// An unordered Redis SET.
    Set => Set;
    /// One field of a Redis HASH whose key may itself be a template
    /// (Flask-CacheOBJ's `cache_hash`).
    Hash => Hash;
}

/// The kinds [`Cache::fetch_many`](crate::Cache::fetch_many) reads in one round trip:
/// [`Obj`], [`Counter`] and [`Hash`](struct@Hash).
///
/// # Examples
///
/// ```
/// fn batchable<Kd: cacheobj::Batch>() {}
/// batchable::<cacheobj::Obj>();
/// batchable::<cacheobj::Hash>();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`fetch_many` cannot batch a `{Self}` strategy",
    label = "`fetch_many` reads obj, counter and hash strategies",
    note = "fetch list and set entries one at a time with `fetch`"
)]
pub trait Batch: Kind {}

impl Batch for Obj {}
impl Batch for Counter {}
impl Batch for Hash {}
