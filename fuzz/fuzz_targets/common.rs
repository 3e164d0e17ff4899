//! What the decoding targets share: an in-memory cache, a runtime, and a way to put arbitrary
//! bytes under an entry through the public API.
//!
//! Counter, list and set strategies write values that serialize as bytes verbatim (their
//! plain-text encoding), so a `Raw` strategy sharing a template with the strategy under test
//! plants any bytes under its entry; the fetch that follows runs the library's real decoding
//! path (codec, plain text, markers, fill), in process, with no Redis.
#![allow(dead_code)]

use std::cell::RefCell;
use std::sync::OnceLock;

use cacheobj::{Cache, CacheKey, CacheValue, Kind, Strategy};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq)]
pub struct Raw(pub Vec<u8>);

impl Serialize for Raw {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Raw;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Raw, E> {
                Ok(Raw(v.to_vec()))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw(v.as_bytes().to_vec()))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, CacheKey)]
pub struct Id {
    pub id: u64,
}

pub const KEY: Id = Id { id: 1 };

pub fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Cache::in_memory)
}

thread_local! {
    static RUNTIME: RefCell<tokio::runtime::Runtime> = RefCell::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime"),
    );
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| rt.borrow().block_on(f))
}

/// Fetches with a loader returning `value`: what came back, and whether the loader ran.
pub async fn fetch<V: CacheValue<Kd> + Clone, Kd: Kind>(
    strategy: &Strategy<V, Id, Kd>,
    value: V,
) -> (V, bool) {
    let mut ran = false;
    let got = cache()
        .fetch(strategy, &KEY, || {
            ran = true;
            async move { Ok::<_, std::convert::Infallible>(value) }
        })
        .await
        .unwrap_or_else(|never| match never {});
    (got, ran)
}

/// Puts `value` (verbatim bytes, through `raw`) under the entry of `KEY`.
pub async fn plant<V, Kd: Kind>(raw: &Strategy<V, Id, Kd>, value: V)
where
    V: CacheValue<Kd> + Clone,
{
    cache().invalidate(raw, &KEY).await.expect("invalidate");
    let (_, ran) = fetch(raw, value).await;
    assert!(ran, "planting did not store");
}

/// The entry now holds `stored`: a fetch must return `expected` when the bytes decode (a hit,
/// no load), and otherwise the loader's `fresh` value, which then replaces the entry.
pub async fn check<V, Kd>(
    what: &str,
    strategy: &Strategy<V, Id, Kd>,
    expected: Option<V>,
    fresh: V,
    normalize: impl Fn(V) -> V,
) where
    Kd: Kind,
    V: CacheValue<Kd> + Clone + PartialEq + std::fmt::Debug,
{
    let (got, ran) = fetch(strategy, fresh.clone()).await;
    match expected {
        Some(v) => {
            assert!(
                !ran,
                "{what}: the stored bytes decode to {v:?}, but the loader ran"
            );
            assert_eq!(
                normalize(got),
                normalize(v),
                "{what}: a hit returned another value"
            );
        }
        None => {
            assert!(
                ran,
                "{what}: the stored bytes do not decode, but the loader did not run ({got:?})"
            );
            assert_eq!(got, fresh, "{what}");
            let (again, ran) = fetch(strategy, fresh.clone()).await;
            assert!(!ran, "{what}: the loader's value did not replace the entry");
            assert_eq!(normalize(again), normalize(fresh), "{what}");
        }
    }
}

/// What cacheobj's MessagePack decoding accepts: rmp-serde, with nesting limited to 128 levels
/// (the library's limit; rmp-serde's own is 1024).
pub fn rmp<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
    let mut de = rmp_serde::Deserializer::from_read_ref(data);
    de.set_max_depth(128);
    T::deserialize(&mut de).ok()
}
