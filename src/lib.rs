#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, rustdoc::broken_intra_doc_links)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod backend;
mod budget;
mod cache;
mod clock;
mod codec;
mod config;
mod depth;
mod error;
mod flight;
mod key;
mod kind;
mod lock;
mod stats;
mod strategy;
mod template;
mod value;

pub use cache::{Cache, EntryKey};
pub use cacheobj_derive::CacheKey;
pub use codec::Codec;
pub use config::CacheConfig;
pub use error::{CodecError, ConfigError, Error, KeyError};
pub use key::CacheKey;
pub use kind::{Batch, Counter, Hash, Kind, List, Obj, Set};
pub use stats::Stats;
pub use strategy::{Strategy, DEFAULT_LEASE};
pub use value::{CacheValue, Collection};

/// The `redis` crate this library is built on, for building clients and connections to hand to
/// [`Cache::from_client`] and [`Cache::from_connection`].
pub use redis;
