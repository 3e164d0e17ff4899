//! [`Cache::fetch_many`] and [`Cache::invalidate_many`]: many keys in one round trip.

use std::collections::HashMap;
use std::future::Future;

use tracing::field::Empty;
use tracing::Instrument;

use super::local::TtlRead;
use super::Cache;
use crate::backend::{Acquire, Entry, Loc, Lookup, Token};
use crate::budget::Started;
use crate::error::{BatchError, Error};
use crate::key::CacheKey;
use crate::kind::{Batch, Kind};
use crate::observe::{self, Op};
use crate::stats::Event;
use crate::strategy::Strategy;
use crate::value::{CacheValue, Payload};
use crate::written::Invalidation;

/// The loader must return one value per key it was given.
fn check_len<V, E>(values: Vec<V>, expected: usize) -> Result<Vec<V>, BatchError<E>> {
    if values.len() == expected {
        Ok(values)
    } else {
        Err(BatchError::Cache(Error::BatchLength {
            expected,
            got: values.len(),
        }))
    }
}

/// One position of the keys, through the steps of a `fetch_many`.
struct Wanted<V> {
    entry: Entry,
    /// Its value, once read or loaded.
    value: Option<V>,
    /// What was read or loaded for it, for its duplicates to decode.
    payload: Option<Payload>,
    /// The first position of the same entry: itself, unless it is a later duplicate of a
    /// missing key (loaded once, at the first).
    origin: usize,
    /// Set while the value is still to be loaded.
    missing: Option<Missing>,
}

struct Missing {
    /// The cached value did not decode: replace it.
    force: bool,
    /// The fill lease, once taken.
    lease: Option<Token>,
}

impl<V> Wanted<V> {
    fn lease(&self) -> Option<&Token> {
        self.missing.as_ref().and_then(|m| m.lease.as_ref())
    }
}

impl Cache {
    /// Reads many entries in one round trip (MGET, or a pipeline of HGETs), calls `loader`
    /// once with only the keys that missed (so one `WHERE id IN (...)` query fills them all),
    /// and stores what it returns in one pipelined write, each under its fill lease. Results
    /// come back in the order of `keys`; duplicate keys are fine. The loader returns one value
    /// per key it gets, in that order; use `Option<V>` values and
    /// [`Strategy::negative_expire`] for keys it cannot find. Keys whose lease another caller
    /// holds are loaded too, but not filled. Fails open like [`fetch`](Self::fetch); unlike it,
    /// does not coalesce with concurrent fetches in this process. A loader that finds rows by
    /// key is simpler with [`fetch_many_by_key`](Self::fetch_many_by_key), which takes a map.
    /// With a local tier ([`Strategy::local`]) the batch is answered from process memory when
    /// the tier holds every key; otherwise it is read from Redis and the tier keeps what it
    /// admits, as [`fetch`](Self::fetch) does.
    ///
    /// # Errors
    ///
    /// [`BatchError::Loader`] with the loader's own error, untouched; or [`BatchError::Cache`]
    /// with [`Error::BatchLength`] when the loader returns a different number of values than it
    /// was given keys, or [`Error::Redecode`] when a key given more than once has a value that
    /// does not decode from its own encoding.
    ///
    /// # Examples
    ///
    /// ```
    /// use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(Debug, Clone, serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const NAME: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("name:<item_id>").expire(60);
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let keys: Vec<ItemKey> = (1..=3).map(|item_id| ItemKey { item_id }).collect();
    /// let names = cache
    ///     .fetch_many(&NAME, &keys, |missing: Vec<ItemKey>| async move {
    ///         // SELECT name FROM items WHERE id IN (...)
    ///         Ok::<_, cacheobj::Error>(missing.iter().map(|k| format!("item {}", k.item_id)).collect())
    ///     })
    ///     .await?;
    /// assert_eq!(names, ["item 1", "item 2", "item 3"]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fetch_many<V, K, Kd, F, Fut, E>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        keys: &[K],
        loader: F,
    ) -> Result<Vec<V>, BatchError<E>>
    where
        K: CacheKey + Clone,
        Kd: Batch,
        V: CacheValue<Kd>,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<Vec<V>, E>>,
    {
        let op = self.inner.op(strategy.strategy_name());
        let span = tracing::debug_span!(
            "cacheobj.fetch_many",
            strategy = strategy.strategy_name(),
            keys = keys.len(),
            outcome = Empty,
            load_us = Empty,
            elapsed_us = Empty,
        );
        let started = observe::clock(&span);
        let result = self
            .fetch_many_in(&op, strategy, keys, loader)
            .instrument(span.clone())
            .await;
        observe::finish(&span, started, op.outcome());
        result
    }

    /// Every value from the local tier, when it holds them all: then the batch needs no round
    /// trip. Otherwise `None`, and the whole batch is read from Redis, with the entries' TTLs
    /// for the keys the tier admits, which then keeps what it reads (see `fetch_many_in`).
    fn all_local<V, K, Kd>(
        &self,
        op: &Op<'_>,
        strategy: &Strategy<V, K, Kd>,
        wanted: &[Wanted<V>],
    ) -> Option<Vec<V>> {
        let tier = self.inner.local.as_ref()?;
        let spec = strategy.local_spec()?;
        let id = strategy.local_id();
        let mut values = Vec::with_capacity(wanted.len());
        for w in wanted {
            match tier.get(id, &spec, &w.entry.key) {
                Some(v) => values.push(v),
                None => {
                    op.add(Event::LocalMiss, wanted.len() as u64);
                    return None;
                }
            }
        }
        // Local hits count in `local_hits`, which `hits` includes.
        op.add(Event::LocalHit, values.len() as u64);
        Some(values)
    }

    async fn fetch_many_in<V, K, Kd, F, Fut, E>(
        &self,
        op: &Op<'_>,
        strategy: &Strategy<V, K, Kd>,
        keys: &[K],
        loader: F,
    ) -> Result<Vec<V>, BatchError<E>>
    where
        K: CacheKey + Clone,
        Kd: Batch,
        V: CacheValue<Kd>,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<Vec<V>, E>>,
    {
        let loader = |keys: Vec<K>| {
            let expected = keys.len();
            let loaded = loader(keys);
            async move {
                let values = loaded.await.map_err(BatchError::Loader)?;
                check_len(values, expected)
            }
        };
        let inner = &*self.inner;
        let codec = strategy.value_codec();
        let mut wanted = match keys
            .iter()
            .enumerate()
            .map(|(origin, k)| {
                self.render(strategy, k).map(|entry| Wanted {
                    entry,
                    value: None,
                    payload: None,
                    origin,
                    missing: None,
                })
            })
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(wanted) => wanted,
            Err(e) => {
                op.fault(&Error::Key(e));
                return op.load(|| loader(keys.to_vec())).await;
            }
        };
        if !inner.pending.is_empty() {
            for w in &wanted {
                if let Err(e) = self.settled(&w.entry).await {
                    // An invalidation among these keys has not landed: none of them is read
                    // from Redis (nor filled) this time.
                    op.fault(&e);
                    return op.load(|| loader(keys.to_vec())).await;
                }
            }
        }
        if let Some(values) = self.all_local(op, strategy, &wanted) {
            return Ok(values);
        }
        let missing = |force| Some(Missing { force, lease: None });
        let mut redis_ok = true;
        let started = Started::now(inner.backend.response_timeout());
        // As in `fetch`: a ticket per key the tier admits, taken before the read goes out.
        let tickets: Vec<_> = if strategy.local_spec().is_some() {
            wanted
                .iter()
                .map(|w| self.local_ticket(strategy, &w.entry.key))
                .collect()
        } else {
            Vec::new()
        };
        // Tickets that know their entries' expiries need no PTTL; one that does not asks for
        // every key's (one pipeline either way).
        let with_ttl = tickets.iter().any(|t| TtlRead::needed(t.as_ref()));
        // Duplicates are read like any key (MGET repeats the value), so the all-hit path
        // needs no de-duplication.
        let read = {
            let locs: Vec<Loc<'_>> = wanted.iter().map(|w| w.entry.loc()).collect();
            let read = if with_ttl {
                // A local copy must not outlive its entry: read the TTLs too.
                inner.backend.read_many_with_ttl(&locs).await
            } else {
                let lookups = inner.backend.read_many(&locs).await;
                lookups.map(|l| l.into_iter().map(|lookup| (lookup, None)).collect())
            };
            match read {
                Ok(lookups) if lookups.len() != locs.len() => {
                    Err(Error::UnexpectedReply("read_many: reply length mismatch"))
                }
                other => other,
            }
        };
        // The lease requests and the fills share what the read left of the response timeout.
        let mut budget = started.budget();
        match read {
            Ok(lookups) => {
                let mut hits = 0;
                for (i, (w, (lookup, ttl))) in wanted.iter_mut().zip(lookups).enumerate() {
                    match lookup {
                        Lookup::Hit(payload) => match inner.decode(op, &w.entry, &payload, codec) {
                            Some(v) => {
                                hits += 1;
                                if let Some(ticket) = tickets.get(i).copied().flatten() {
                                    self.keep_local(
                                        strategy,
                                        ticket,
                                        &w.entry.key,
                                        &v,
                                        TtlRead::of(with_ttl, ttl),
                                        started,
                                    );
                                }
                                w.value = Some(v);
                            }
                            None => w.missing = missing(true),
                        },
                        Lookup::Garbage => {
                            op.undecodable(&w.entry.key, &Error::Unavailable);
                            w.missing = missing(true);
                        }
                        Lookup::Miss | Lookup::Leased(_) => w.missing = missing(false),
                    }
                }
                op.add(Event::Hit, hits);
            }
            Err(e) => {
                op.fault(&e);
                redis_ok = false;
                for w in &mut wanted {
                    w.missing = missing(false);
                }
            }
        }
        // A missing key that appears more than once is loaded once: later positions point at
        // the first, and decode its payload at the end.
        let mut n_missing = wanted.iter().filter(|w| w.missing.is_some()).count();
        if n_missing > 1 {
            let mut first_of: HashMap<&Entry, usize> = HashMap::with_capacity(n_missing);
            let mut duplicates = Vec::new();
            for (i, w) in wanted.iter().enumerate() {
                if w.missing.is_some() {
                    let first = *first_of.entry(&w.entry).or_insert(i);
                    if first != i {
                        duplicates.push((i, first));
                    }
                }
            }
            for (i, first) in duplicates {
                wanted[i].origin = first;
                wanted[i].missing = None;
                n_missing -= 1;
            }
        }

        if n_missing > 0 && redis_ok {
            // Take the fill leases of the missing entries, concurrently (one pipeline on the
            // multiplexed connection).
            let tokens: Vec<Token> = (0..n_missing).map(|_| Token::new()).collect();
            let requests = wanted
                .iter()
                .filter_map(|w| w.missing.as_ref().map(|m| (w, m)))
                .zip(&tokens)
                .map(|((w, m), token)| {
                    inner
                        .backend
                        .acquire(w.entry.loc(), token, strategy.lease_ms(), m.force)
                });
            let attempts = match budget
                .spend(async { Ok(futures_util::future::join_all(requests).await) })
                .await
            {
                Ok(attempts) => attempts,
                // Cut short: any of them may still run on the server.
                Err(_) => tokens.iter().map(|_| Err(budget.timed_out())).collect(),
            };
            let still = wanted.iter_mut().filter(|w| w.missing.is_some());
            for (w, (token, result)) in still.zip(tokens.into_iter().zip(attempts)) {
                match result {
                    Ok(Acquire::Acquired) => {
                        if let Some(m) = &mut w.missing {
                            m.lease = Some(token);
                        }
                    }
                    Ok(Acquire::Hit(payload)) => {
                        if let Some(v) = inner.decode(op, &w.entry, &payload, codec) {
                            op.bump(Event::Hit);
                            w.value = Some(v);
                            w.payload = Some(payload);
                            w.missing = None;
                            n_missing -= 1;
                        }
                    }
                    Ok(Acquire::Leased) => op.bump(Event::LeaseWait),
                    Err(e) => {
                        self.fault_and_release(op, &e, &w.entry, token, strategy.lease_time())
                    }
                }
            }
        }
        if n_missing > 0 {
            op.add(Event::Miss, n_missing as u64);
            let keys_missing: Vec<K> = wanted
                .iter()
                .zip(keys)
                .filter(|(w, _)| w.missing.is_some())
                .map(|(_, k)| k.clone())
                .collect();
            let loaded = op.load(|| loader(keys_missing)).await;
            let loaded = match loaded {
                Ok(loaded) => loaded,
                Err(e) => {
                    let releases = wanted
                        .iter()
                        .filter_map(|w| w.lease().map(|t| self.release(op, &w.entry, Some(t))));
                    futures_util::future::join_all(releases).await;
                    return Err(e);
                }
            };
            let mut fills = Vec::new();
            let still = wanted.iter_mut().enumerate();
            for ((i, w), value) in still.filter(|(_, w)| w.missing.is_some()).zip(loaded) {
                match value.encode(codec) {
                    Ok(payload) => {
                        if let Some(token) = w.missing.take().and_then(|m| m.lease) {
                            let ttl = strategy.fill_ttl_ms(value.is_negative());
                            fills.push((i, token, ttl));
                        }
                        w.payload = Some(payload);
                    }
                    Err(e) => op.fault(&Error::Encode(e)),
                }
                w.missing = None;
                w.value = Some(value);
            }
            let requests = fills.iter().map(|(i, token, ttl)| {
                let w = &wanted[*i];
                async move {
                    match &w.payload {
                        Some(p) => inner.backend.fill(w.entry.loc(), token, p, *ttl).await,
                        None => Ok(false),
                    }
                }
            });
            let results = match budget
                .spend(async { Ok(futures_util::future::join_all(requests).await) })
                .await
            {
                Ok(results) => results,
                Err(_) => fills.iter().map(|_| Err(budget.timed_out())).collect(),
            };
            for ((i, token, _), result) in fills.into_iter().zip(results) {
                match result {
                    Ok(true) => {}
                    Ok(false) => op.bump(Event::StaleFillRejected),
                    Err(e) => self.fault_and_release(
                        op,
                        &e,
                        &wanted[i].entry,
                        token,
                        strategy.lease_time(),
                    ),
                }
            }
        }

        // Duplicates decode their entry's payload; the first position keeps its value.
        let mut out = Vec::with_capacity(keys.len());
        for i in 0..wanted.len() {
            let o = wanted[i].origin;
            let value = if o == i {
                wanted[i].value.take().ok_or(None)
            } else {
                match &wanted[o].payload {
                    Some(p) => V::decode(p, codec).map_err(Some),
                    None => Err(None),
                }
            };
            match value {
                Ok(v) => out.push(v),
                Err(source) => return Err(BatchError::Cache(Error::Redecode(source))),
            }
        }
        Ok(out)
    }

    /// [`fetch_many`](Self::fetch_many) with a loader that returns what it found by key (a
    /// `WHERE id IN (...)` query's rows, collected into a `HashMap`), so it need not put them
    /// in order. A key absent from the map was not found: it comes back `None`, and is cached
    /// for the strategy's [`negative_expire`](Strategy::negative_expire) when it has one. Keys
    /// the loader was not given but returns are ignored. The strategy's values must be
    /// `Option`s: that is what makes "not found" expressible.
    ///
    /// # Errors
    ///
    /// [`BatchError::Loader`] with the loader's own error, untouched (it needs no
    /// `From<cacheobj::Error>`); [`BatchError::Cache`] only if the codec cannot decode a value
    /// it has just encoded.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const NAME: Strategy<Option<String>, ItemKey> =
    ///     Strategy::obj("name:<item_id>").expire(60).negative_expire(5);
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let keys: Vec<ItemKey> = (1..=3).map(|item_id| ItemKey { item_id }).collect();
    /// let names = cache
    ///     .fetch_many_by_key(&NAME, &keys, |missing: Vec<ItemKey>| async move {
    ///         // SELECT id, name FROM items WHERE id IN (...): item 2 does not exist
    ///         let rows = missing.into_iter().filter(|k| k.item_id != 2);
    ///         Ok::<_, std::io::Error>(rows.map(|k| { let n = format!("item {}", k.item_id); (k, n) }).collect::<HashMap<_, _>>())
    ///     })
    ///     .await?;
    /// assert_eq!(names, [Some("item 1".to_string()), None, Some("item 3".to_string())]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fetch_many_by_key<T, K, Kd, F, Fut, E, S>(
        &self,
        strategy: &Strategy<Option<T>, K, Kd>,
        keys: &[K],
        loader: F,
    ) -> Result<Vec<Option<T>>, BatchError<E>>
    where
        K: CacheKey + Clone + Eq + std::hash::Hash,
        Kd: Batch,
        Option<T>: CacheValue<Kd>,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, T, S>, E>>,
        S: std::hash::BuildHasher,
    {
        self.fetch_many(strategy, keys, |wanted: Vec<K>| {
            let found = loader(wanted.clone());
            async move {
                let mut found = found.await?;
                Ok(wanted.iter().map(|k| found.remove(k)).collect())
            }
        })
        .await
    }

    /// Removes many entries in one round trip (a pipeline; not atomic as a whole, each removal
    /// is). Like [`invalidate`](Self::invalidate) for each key.
    ///
    /// # Errors
    ///
    /// A key did not render, or Redis failed: some entries may still be there.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(Debug, Clone, serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const NAME: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("name:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// cache.invalidate_many(&NAME, &[ItemKey { item_id: 1 }, ItemKey { item_id: 2 }]).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate_many<V, K, Kd>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        keys: &[K],
    ) -> Result<(), Error>
    where
        K: CacheKey,
        Kd: Kind,
    {
        let span = observe::mutation_span("invalidate_many", strategy.strategy_name());
        let started = observe::clock(&span);
        let result = self
            .invalidate_many_in(strategy, keys)
            .instrument(span.clone())
            .await;
        observe::finish(&span, started, observe::result_outcome(&result));
        result
    }

    async fn invalidate_many_in<V, K, Kd>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        keys: &[K],
    ) -> Result<(), Error>
    where
        K: CacheKey,
        Kd: Kind,
    {
        let entries = keys
            .iter()
            .map(|k| self.render(strategy, k))
            .collect::<Result<Vec<_>, _>>()?;
        let locs: Vec<Loc<'_>> = entries.iter().map(Entry::loc).collect();
        let forget = || {
            for entry in &entries {
                self.inner.flights.forget(entry);
            }
        };
        forget();
        if !self.inner.pending.is_empty() {
            for entry in &entries {
                self.settled(entry).await?;
            }
        }
        let result = self.inner.backend.invalidate_many(&locs).await;
        forget();
        for entry in &entries {
            self.forget_local(entry);
        }
        match result {
            Err(e) if self.inner.queue_failed && e.is_unavailable() => {
                // Each key's invalidation is retried; the batch reports the failure.
                let mut queued = true;
                for entry in &entries {
                    queued &= matches!(
                        self.queue(entry, Error::Unavailable),
                        Invalidation::Queued(_)
                    );
                }
                Err(if queued {
                    Error::InvalidationQueued(Box::new(e))
                } else {
                    e
                })
            }
            other => other,
        }
    }
}
