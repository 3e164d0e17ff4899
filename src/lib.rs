#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! For contributors: each file holds one idea.
//!
//! - `cache/`: the [`Cache`] handle. `connect` builds it; `fetch` is the hit path; `load`
//!   loads a missing value once (in-process coalescing in `flight`, the fill lease, the fill)
//!   and refreshes early; `local` shows the local tier's state; `lease` releases leases a
//!   failure or a cancellation left behind;
//!   `many` is `fetch_many`; `mutate`, `counter` and `collection` change entries.
//! - `backend/`: where entries live, behind one set of single-key operations: `memory` (the
//!   embedded store) and `redis/` (`conn`ections, `ops` and their Lua `scripts`, `reply`
//!   parsing, `batch`ing GETs into MGETs, the `breaker`, `health` and `cluster` failure
//!   handling).
//! - [`Strategy`] (`strategy`) renders keys with `template` and `key` ([`CacheKey`]); `kind`
//!   and `value` say what each kind holds, `codec` and `nesting_limit` how it is encoded.
//! - `local/`: the local tier of [`Strategy::local`] strategies: each strategy's `store`
//!   (moka), the `guard` that keeps raced reads out (per-key epochs, flushes), `admission`
//!   and `presence` (Bloom filters, `bloom`: which reads enter a full store, which keys a store
//!   may hold), and the `tracking` connections that receive Redis's invalidations.
//! - `budget` bounds a fetch's time on Redis; `error`, `stats`, `config`; `observe` counts each
//!   fetch's events per strategy (and in `metrics`) and keeps its span's outcome; `clock`,
//!   `fx_hash` and `lock` are small shared helpers.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, rustdoc::broken_intra_doc_links)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod backend;
mod budget;
mod cache;
mod clock;
mod codec;
mod config;
mod error;
mod flight;
mod fx_hash;
mod key;
mod kind;
mod local;
mod lock;
mod nesting_limit;
mod observe;
mod pending;
mod stats;
mod strategy;
mod template;
mod value;
mod written;

pub use cache::{Cache, EntryKey};
pub use cacheobj_derive::CacheKey;
pub use codec::Codec;
pub use config::CacheConfig;
pub use error::{BatchError, CodecError, ConfigError, Error, KeyError};
pub use key::CacheKey;
pub use kind::{Batch, Counter, Hash, Kind, List, Obj, Set};
pub use stats::Stats;
pub use strategy::{CounterValue, NegativeValue, Strategy, DEFAULT_LEASE, DEFAULT_LOCAL_TTL};
pub use value::{CacheValue, Collection};
pub use written::{Invalidation, Written};

/// The `redis` crate this library is built on, for building clients and connections to hand to
/// [`Cache::from_client`] and [`Cache::from_connection`].
pub use redis;
