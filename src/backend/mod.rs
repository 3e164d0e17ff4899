//! Where entries live: Redis, or the embedded in-memory store. Both implement the same
//! single-key operations with the same semantics; see `FORMAT.md` for the stored layout.

mod memory;
mod redis;

use crate::error::Error;
use crate::kind::Shape;
use crate::value::Payload;

pub(crate) use self::memory::MemoryBackend;
pub(crate) use self::redis::RedisBackend;

/// Starts a fill lease marker. 0xC1 is never the first byte of a MessagePack value, so no
/// MessagePack-encoded value is mistaken for a marker.
pub(crate) const LEASE_PREFIX: &[u8] = b"\xC1cacheobj:lease:";
/// Stands for an empty list or set, which Redis cannot store.
pub(crate) const EMPTY_MARKER: &[u8] = b"\xC1cacheobj:empty";

/// Where an entry lives: its rendered key, its hash field (empty for the other kinds), and how
/// its kind lays the value out. Also the identity of the entry's in-process flight, so it is
/// equal to (and hashes like) another entry with the same key and field.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) key: Vec<u8>,
    pub(crate) field: Vec<u8>,
    pub(crate) shape: Shape,
}

impl Entry {
    /// The borrowed view the backends take.
    pub(crate) fn loc(&self) -> Loc<'_> {
        Loc {
            key: &self.key,
            field: &self.field,
            shape: self.shape,
        }
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.key == other.key && self.field == other.field
    }
}

impl Eq for Entry {}

impl std::hash::Hash for Entry {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
        self.field.hash(state);
    }
}

/// An [`Entry`], borrowed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Loc<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) field: &'a [u8],
    pub(crate) shape: Shape,
}

/// What a read found.
#[derive(Debug)]
pub(crate) enum Lookup {
    Hit(Payload),
    Miss,
    /// A fill lease: someone is loading the value.
    Leased(Marker),
    /// Something this library did not write (another type, a foreign string).
    Garbage,
}

/// What an attempt to take the fill lease found.
#[derive(Debug)]
pub(crate) enum Acquire {
    /// The lease is ours: load and fill.
    Acquired,
    /// A value was there after all.
    Hit(Payload),
    /// Someone else holds the lease.
    Leased,
}

/// The lease marker a read found, to tell whose lease it is (empty when the read could not
/// see it, as for lists and sets).
#[derive(Debug, Clone, Default)]
pub(crate) struct Marker(Vec<u8>);

impl Marker {
    pub(crate) fn new(bytes: Vec<u8>) -> Marker {
        Marker(bytes)
    }

    /// Whether this is the marker of the lease `token` (a string marker, or a hash marker,
    /// which ends with the token after its deadline).
    pub(crate) fn is_of(&self, token: &Token) -> bool {
        is_lease(&self.0) && self.0.ends_with(token.as_str().as_bytes())
    }
}

pub(crate) fn is_lease(bytes: &[u8]) -> bool {
    bytes.starts_with(LEASE_PREFIX)
}

/// A fill lease token: 128 random bits, as hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token(String);

impl Token {
    pub(crate) fn new() -> Token {
        Token(format!("{:032x}", fastrand::u128(..)))
    }

    /// The marker stored under a string, list or set key while the lease is held.
    pub(crate) fn marker(&self) -> Vec<u8> {
        let mut m = LEASE_PREFIX.to_vec();
        m.extend_from_slice(self.0.as_bytes());
        m
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The two backends.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    Redis(RedisBackend),
    Memory(MemoryBackend),
}

macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            Backend::Redis(b) => b.$method($($arg),*).await,
            Backend::Memory(b) => b.$method($($arg),*),
        }
    };
}

impl Backend {
    /// How long one Redis request may take; `None` for the embedded backend.
    pub(crate) fn response_timeout(&self) -> Option<std::time::Duration> {
        match self {
            Backend::Redis(b) => Some(b.response_timeout()),
            Backend::Memory(_) => None,
        }
    }

    pub(crate) async fn read(&self, loc: Loc<'_>) -> Result<Lookup, Error> {
        dispatch!(self.read(loc))
    }

    /// Reads a string entry and its remaining TTL in milliseconds (`None`: no TTL).
    pub(crate) async fn read_with_ttl(&self, loc: Loc<'_>) -> Result<(Lookup, Option<u64>), Error> {
        dispatch!(self.read_with_ttl(loc))
    }

    pub(crate) async fn acquire(
        &self,
        loc: Loc<'_>,
        token: &Token,
        lease_ms: u64,
        force: bool,
    ) -> Result<Acquire, Error> {
        dispatch!(self.acquire(loc, token, lease_ms, force))
    }

    /// Stores `payload` if the lease `token` still holds the entry. Returns whether it landed.
    pub(crate) async fn fill(
        &self,
        loc: Loc<'_>,
        token: &Token,
        payload: &Payload,
        ttl_ms: u64,
    ) -> Result<bool, Error> {
        dispatch!(self.fill(loc, token, payload, ttl_ms))
    }

    /// Replaces a string entry if it still holds `expected`. Returns whether it landed.
    pub(crate) async fn refill(
        &self,
        loc: Loc<'_>,
        expected: &[u8],
        payload: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, Error> {
        dispatch!(self.refill(loc, expected, payload, ttl_ms))
    }

    /// Drops a lease whose acquisition failed and may still land, bypassing the breaker.
    pub(crate) async fn release_after_failure(
        &self,
        loc: Loc<'_>,
        token: &Token,
        within: std::time::Duration,
    ) -> Result<(), Error> {
        match self {
            Backend::Redis(b) => b.release_after_failure(loc, token, within).await,
            Backend::Memory(b) => b.release(loc, token),
        }
    }

    /// Drops the lease `token` if it still holds the entry.
    pub(crate) async fn release(&self, loc: Loc<'_>, token: &Token) -> Result<(), Error> {
        dispatch!(self.release(loc, token))
    }

    pub(crate) async fn invalidate(&self, loc: Loc<'_>) -> Result<(), Error> {
        dispatch!(self.invalidate(loc))
    }

    pub(crate) async fn incr(&self, loc: Loc<'_>, delta: i64) -> Result<Option<i64>, Error> {
        dispatch!(self.incr(loc, delta))
    }

    pub(crate) async fn incr_or_create(
        &self,
        loc: Loc<'_>,
        delta: i64,
        ttl_ms: u64,
    ) -> Result<i64, Error> {
        dispatch!(self.incr_or_create(loc, delta, ttl_ms))
    }

    pub(crate) async fn set_string(
        &self,
        loc: Loc<'_>,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<(), Error> {
        dispatch!(self.set_string(loc, value, ttl_ms))
    }

    /// Adds elements to a cached list or set; `None` when it is not cached.
    pub(crate) async fn push(&self, loc: Loc<'_>, elems: &[Vec<u8>]) -> Result<Option<u64>, Error> {
        dispatch!(self.push(loc, elems))
    }

    /// Removes elements from a cached list or set; `None` when it is not cached.
    pub(crate) async fn remove(
        &self,
        loc: Loc<'_>,
        elems: &[Vec<u8>],
    ) -> Result<Option<u64>, Error> {
        dispatch!(self.remove(loc, elems))
    }

    pub(crate) async fn len(&self, loc: Loc<'_>) -> Result<Option<u64>, Error> {
        dispatch!(self.len(loc))
    }

    pub(crate) async fn contains(&self, loc: Loc<'_>, elem: &[u8]) -> Result<Option<bool>, Error> {
        dispatch!(self.contains(loc, elem))
    }

    /// Reads many string or hash entries in one round trip.
    pub(crate) async fn read_many(&self, locs: &[Loc<'_>]) -> Result<Vec<Lookup>, Error> {
        dispatch!(self.read_many(locs))
    }

    /// [`read_many`](Self::read_many), with each entry's TTL in milliseconds (`None`: no
    /// expiry; `Some(0)`: unknown, keep nothing).
    pub(crate) async fn read_many_with_ttl(
        &self,
        locs: &[Loc<'_>],
    ) -> Result<Vec<(Lookup, Option<u64>)>, Error> {
        dispatch!(self.read_many_with_ttl(locs))
    }

    /// Removes many entries in one round trip (not atomically).
    pub(crate) async fn invalidate_many(&self, locs: &[Loc<'_>]) -> Result<(), Error> {
        dispatch!(self.invalidate_many(locs))
    }

    pub(crate) async fn ping(&self) -> Result<(), Error> {
        dispatch!(self.ping())
    }
}
