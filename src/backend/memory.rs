//! The embedded in-memory backend: the same operations and semantics as the Redis scripts
//! (markers, leases, TTLs), on sharded maps in this process.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{is_lease, Acquire, Loc, Lookup, Marker, Token, EMPTY_MARKER, LEASE_PREFIX};
use crate::clock::now_ms;
use crate::error::Error;
use crate::kind::Shape;
use crate::lock::lock;
use crate::value::Payload;

const SHARDS: usize = 16;
/// Every this many writes to a shard, its expired entries are swept out.
const SWEEP_EVERY: u64 = 1024;

#[derive(Debug, Clone)]
enum Stored {
    Str(Vec<u8>),
    List(Vec<Vec<u8>>),
    Set(HashSet<Vec<u8>>),
    Hash(HashMap<Vec<u8>, Vec<u8>>),
}

#[derive(Debug)]
struct Entry {
    value: Stored,
    /// Expiry, in [`now_ms`] time; `None`: never.
    deadline: Option<u64>,
}

impl Entry {
    fn new(value: Stored, ttl_ms: u64) -> Entry {
        Entry {
            value,
            deadline: (ttl_ms > 0).then(|| now_ms().saturating_add(ttl_ms)),
        }
    }

    fn ttl_ms(&self) -> Option<u64> {
        self.deadline.map(|d| d.saturating_sub(now_ms()))
    }
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Vec<u8>, Entry>,
    writes: u64,
}

impl Shard {
    /// The live entry under `key`, dropping it first if it has expired.
    fn live(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let now = now_ms();
        if matches!(self.map.get(key), Some(e) if e.deadline.is_some_and(|d| d <= now)) {
            self.map.remove(key);
        }
        self.map.get_mut(key)
    }

    fn wrote(&mut self) {
        self.writes += 1;
        if self.writes.is_multiple_of(SWEEP_EVERY) {
            let now = now_ms();
            self.map.retain(|_, e| e.deadline.is_none_or(|d| d > now));
        }
    }

    fn put(&mut self, key: &[u8], entry: Entry) {
        self.map.insert(key.to_vec(), entry);
        self.wrote();
    }

    fn delete(&mut self, key: &[u8]) {
        self.map.remove(key);
        self.wrote();
    }
}

#[derive(Debug, Clone)]
pub(crate) struct MemoryBackend {
    shards: Arc<[Mutex<Shard>]>,
    hasher: RandomState,
}

fn hash_marker(token: &Token, deadline: u64) -> Vec<u8> {
    let mut m = LEASE_PREFIX.to_vec();
    m.extend_from_slice(format!("{deadline:013}:{}", token.as_str()).as_bytes());
    m
}

fn hash_lease_live(v: &[u8]) -> bool {
    let digits = v.get(LEASE_PREFIX.len()..LEASE_PREFIX.len() + 13);
    let deadline = digits
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse::<u64>().ok());
    deadline.is_some_and(|d| d > now_ms())
}

fn hash_lease_is(v: &[u8], token: &Token) -> bool {
    is_lease(v) && v.ends_with(token.as_str().as_bytes())
}

fn stored_elems(shape: Shape, elems: &[Vec<u8>]) -> Stored {
    match shape {
        Shape::List => Stored::List(elems.to_vec()),
        _ => Stored::Set(elems.iter().cloned().collect()),
    }
}

fn collection_payload(value: &Stored, shape: Shape) -> Option<Lookup> {
    match (value, shape) {
        (Stored::List(items), Shape::List) => Some(Lookup::Hit(Payload::Elems(items.clone()))),
        (Stored::Set(items), Shape::Set) => {
            Some(Lookup::Hit(Payload::Elems(items.iter().cloned().collect())))
        }
        (Stored::Str(v), _) if v == EMPTY_MARKER => Some(Lookup::Hit(Payload::Elems(Vec::new()))),
        (Stored::Str(v), _) if is_lease(v) => Some(Lookup::Leased(Marker::new(v.clone()))),
        _ => None,
    }
}

fn len_of(value: &Stored) -> Option<u64> {
    match value {
        Stored::List(items) => Some(items.len() as u64),
        Stored::Set(items) => Some(items.len() as u64),
        Stored::Str(v) if v == EMPTY_MARKER => Some(0),
        _ => None,
    }
}

fn same_shape(value: &Stored, shape: Shape) -> bool {
    matches!(
        (value, shape),
        (Stored::List(_), Shape::List) | (Stored::Set(_), Shape::Set)
    )
}

impl MemoryBackend {
    pub(crate) fn new() -> Self {
        MemoryBackend {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A panic while holding the lock cannot leave a shard half-updated in a way that
        // matters to a cache: keep serving.
        lock(&self.shards[i])
    }

    pub(crate) fn read(&self, loc: Loc<'_>) -> Result<Lookup, Error> {
        let mut shard = self.shard(loc.key);
        let Some(entry) = shard.live(loc.key) else {
            return Ok(Lookup::Miss);
        };
        Ok(match (loc.shape, &entry.value) {
            (Shape::Str, Stored::Str(v)) if is_lease(v) => Lookup::Leased(Marker::new(v.clone())),
            (Shape::Str, Stored::Str(v)) => Lookup::Hit(Payload::Bytes(v.clone())),
            (Shape::Hash, Stored::Hash(h)) => match h.get(loc.field) {
                None => Lookup::Miss,
                Some(v) if is_lease(v) => Lookup::Leased(Marker::new(v.clone())),
                Some(v) => Lookup::Hit(Payload::Bytes(v.clone())),
            },
            (Shape::List | Shape::Set, value) => {
                collection_payload(value, loc.shape).unwrap_or(Lookup::Garbage)
            }
            _ => Lookup::Garbage,
        })
    }

    pub(crate) fn read_many_with_ttl(
        &self,
        locs: &[Loc<'_>],
    ) -> Result<Vec<(Lookup, Option<u64>)>, Error> {
        locs.iter().map(|&loc| self.read_with_ttl(loc)).collect()
    }

    pub(crate) fn read_with_ttl(&self, loc: Loc<'_>) -> Result<(Lookup, Option<u64>), Error> {
        let lookup = self.read(loc)?;
        let ttl = self.shard(loc.key).live(loc.key).and_then(|e| e.ttl_ms());
        Ok((lookup, ttl))
    }

    pub(crate) fn acquire(
        &self,
        loc: Loc<'_>,
        token: &Token,
        lease_ms: u64,
        force: bool,
    ) -> Result<Acquire, Error> {
        let mut shard = self.shard(loc.key);
        if loc.shape == Shape::Hash {
            let entry = match shard.live(loc.key) {
                Some(e) if matches!(e.value, Stored::Hash(_)) => e,
                _ => {
                    shard.put(loc.key, Entry::new(Stored::Hash(HashMap::new()), lease_ms));
                    shard.live(loc.key).ok_or(Error::Unavailable)?
                }
            };
            let Stored::Hash(fields) = &mut entry.value else {
                return Err(Error::Unavailable);
            };
            if let Some(v) = fields.get(loc.field) {
                if is_lease(v) {
                    if hash_lease_live(v) {
                        return Ok(Acquire::Leased);
                    }
                } else if !force {
                    return Ok(Acquire::Hit(Payload::Bytes(v.clone())));
                }
            }
            fields.insert(
                loc.field.to_vec(),
                hash_marker(token, now_ms().saturating_add(lease_ms)),
            );
            // Like the script: the hash lives at least as long as the lease.
            let min_deadline = now_ms().saturating_add(lease_ms);
            if let Some(d) = entry.deadline {
                entry.deadline = Some(d.max(min_deadline));
            } else if fields.len() == 1 {
                entry.deadline = Some(min_deadline);
            }
            return Ok(Acquire::Acquired);
        }
        if let Some(entry) = shard.live(loc.key) {
            match &entry.value {
                Stored::Str(v) if is_lease(v) => return Ok(Acquire::Leased),
                Stored::Str(v) if !force && loc.shape == Shape::Str => {
                    return Ok(Acquire::Hit(Payload::Bytes(v.clone())))
                }
                Stored::Str(v) if !force && v == EMPTY_MARKER => {
                    return Ok(Acquire::Hit(Payload::Elems(Vec::new())))
                }
                value if !force && same_shape(value, loc.shape) => {
                    if let Some(Lookup::Hit(p)) = collection_payload(value, loc.shape) {
                        return Ok(Acquire::Hit(p));
                    }
                }
                _ => {}
            }
        }
        shard.put(loc.key, Entry::new(Stored::Str(token.marker()), lease_ms));
        Ok(Acquire::Acquired)
    }

    pub(crate) fn fill(
        &self,
        loc: Loc<'_>,
        token: &Token,
        payload: &Payload,
        ttl_ms: u64,
    ) -> Result<bool, Error> {
        let mut shard = self.shard(loc.key);
        let Some(entry) = shard.live(loc.key) else {
            return Ok(false);
        };
        if loc.shape == Shape::Hash {
            let (Stored::Hash(fields), Payload::Bytes(value)) = (&mut entry.value, payload) else {
                return Ok(false);
            };
            match fields.get(loc.field) {
                Some(v) if hash_lease_is(v, token) => {}
                _ => return Ok(false),
            }
            fields.insert(loc.field.to_vec(), value.clone());
            if ttl_ms == 0 {
                entry.deadline = None;
            } else if let Some(d) = entry.deadline {
                entry.deadline = Some(d.max(now_ms().saturating_add(ttl_ms)));
            }
            shard.wrote();
            return Ok(true);
        }
        match &entry.value {
            Stored::Str(v) if *v == token.marker() => {}
            _ => return Ok(false),
        }
        let value = match payload {
            Payload::Bytes(b) => Stored::Str(b.clone()),
            Payload::Elems(e) if e.is_empty() => Stored::Str(EMPTY_MARKER.to_vec()),
            Payload::Elems(e) => stored_elems(loc.shape, e),
        };
        shard.put(loc.key, Entry::new(value, ttl_ms));
        Ok(true)
    }

    pub(crate) fn refill(
        &self,
        loc: Loc<'_>,
        expected: &[u8],
        payload: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, Error> {
        let mut shard = self.shard(loc.key);
        match shard.live(loc.key) {
            Some(Entry {
                value: Stored::Str(v),
                ..
            }) if v == expected => {}
            _ => return Ok(false),
        }
        shard.put(loc.key, Entry::new(Stored::Str(payload.to_vec()), ttl_ms));
        Ok(true)
    }

    pub(crate) fn release(&self, loc: Loc<'_>, token: &Token) -> Result<(), Error> {
        let mut shard = self.shard(loc.key);
        let Some(entry) = shard.live(loc.key) else {
            return Ok(());
        };
        match &mut entry.value {
            Stored::Hash(fields)
                if loc.shape == Shape::Hash
                    && fields
                        .get(loc.field)
                        .is_some_and(|v| hash_lease_is(v, token)) =>
            {
                fields.remove(loc.field);
            }
            Stored::Str(v) if *v == token.marker() => shard.delete(loc.key),
            _ => {}
        }
        Ok(())
    }

    pub(crate) fn invalidate(&self, loc: Loc<'_>) -> Result<(), Error> {
        let mut shard = self.shard(loc.key);
        if loc.shape == Shape::Hash {
            if let Some(entry) = shard.live(loc.key) {
                match &mut entry.value {
                    Stored::Hash(fields) => {
                        fields.remove(loc.field);
                        if fields.is_empty() {
                            shard.delete(loc.key);
                        }
                    }
                    _ => shard.delete(loc.key),
                }
            }
            return Ok(());
        }
        shard.delete(loc.key);
        Ok(())
    }

    pub(crate) fn incr(&self, loc: Loc<'_>, delta: i64) -> Result<Option<i64>, Error> {
        let mut shard = self.shard(loc.key);
        let Some(entry) = shard.live(loc.key) else {
            return Ok(None);
        };
        if let Stored::Str(v) = &mut entry.value {
            if let Some(n) = parse_i64(v).and_then(|n| n.checked_add(delta)) {
                *v = n.to_string().into_bytes();
                return Ok(Some(n));
            }
        }
        // A lease or garbage: remove it, so a load in flight cannot fill an old count.
        shard.delete(loc.key);
        Ok(None)
    }

    pub(crate) fn incr_or_create(
        &self,
        loc: Loc<'_>,
        delta: i64,
        ttl_ms: u64,
    ) -> Result<i64, Error> {
        let mut shard = self.shard(loc.key);
        if let Some(entry) = shard.live(loc.key) {
            if let Stored::Str(v) = &mut entry.value {
                if let Some(n) = parse_i64(v).and_then(|n| n.checked_add(delta)) {
                    *v = n.to_string().into_bytes();
                    return Ok(n);
                }
            }
        }
        shard.put(
            loc.key,
            Entry::new(Stored::Str(delta.to_string().into_bytes()), ttl_ms),
        );
        Ok(delta)
    }

    pub(crate) fn set_string(&self, loc: Loc<'_>, value: &[u8], ttl_ms: u64) -> Result<(), Error> {
        self.shard(loc.key)
            .put(loc.key, Entry::new(Stored::Str(value.to_vec()), ttl_ms));
        Ok(())
    }

    pub(crate) fn push(&self, loc: Loc<'_>, elems: &[Vec<u8>]) -> Result<Option<u64>, Error> {
        if elems.is_empty() {
            // Nothing changes, so nothing in flight is cancelled (as on Redis).
            return self.len(loc);
        }
        let mut shard = self.shard(loc.key);
        let Some(entry) = shard.live(loc.key) else {
            return Ok(None);
        };
        match &mut entry.value {
            Stored::List(items) if loc.shape == Shape::List => {
                items.extend_from_slice(elems);
                Ok(Some(items.len() as u64))
            }
            Stored::Set(items) if loc.shape == Shape::Set => {
                items.extend(elems.iter().cloned());
                Ok(Some(items.len() as u64))
            }
            Stored::Str(v) if v == EMPTY_MARKER => {
                if !elems.is_empty() {
                    entry.value = stored_elems(loc.shape, elems);
                }
                Ok(len_of(&entry.value))
            }
            _ => {
                shard.delete(loc.key);
                Ok(None)
            }
        }
    }

    pub(crate) fn remove(&self, loc: Loc<'_>, elems: &[Vec<u8>]) -> Result<Option<u64>, Error> {
        if elems.is_empty() {
            return self.len(loc);
        }
        let mut shard = self.shard(loc.key);
        let Some(entry) = shard.live(loc.key) else {
            return Ok(None);
        };
        let len = match &mut entry.value {
            Stored::List(items) if loc.shape == Shape::List => {
                items.retain(|i| !elems.contains(i));
                items.len()
            }
            Stored::Set(items) if loc.shape == Shape::Set => {
                for e in elems {
                    items.remove(e);
                }
                items.len()
            }
            Stored::Str(v) if v == EMPTY_MARKER => return Ok(Some(0)),
            _ => {
                shard.delete(loc.key);
                return Ok(None);
            }
        };
        if len == 0 {
            entry.value = Stored::Str(EMPTY_MARKER.to_vec());
        }
        Ok(Some(len as u64))
    }

    pub(crate) fn len(&self, loc: Loc<'_>) -> Result<Option<u64>, Error> {
        let mut shard = self.shard(loc.key);
        Ok(shard.live(loc.key).and_then(|e| match &e.value {
            value if same_shape(value, loc.shape) => len_of(value),
            Stored::Str(v) if v == EMPTY_MARKER => Some(0),
            _ => None,
        }))
    }

    pub(crate) fn contains(&self, loc: Loc<'_>, elem: &[u8]) -> Result<Option<bool>, Error> {
        let mut shard = self.shard(loc.key);
        Ok(shard.live(loc.key).and_then(|e| match &e.value {
            Stored::Set(items) => Some(items.contains(elem)),
            Stored::Str(v) if v == EMPTY_MARKER => Some(false),
            _ => None,
        }))
    }

    pub(crate) fn read_many(&self, locs: &[Loc<'_>]) -> Result<Vec<Lookup>, Error> {
        locs.iter().map(|loc| self.read(*loc)).collect()
    }

    pub(crate) fn invalidate_many(&self, locs: &[Loc<'_>]) -> Result<(), Error> {
        locs.iter().try_for_each(|loc| self.invalidate(*loc))
    }

    pub(crate) fn ping(&self) -> Result<(), Error> {
        Ok(())
    }
}

fn parse_i64(v: &[u8]) -> Option<i64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}
