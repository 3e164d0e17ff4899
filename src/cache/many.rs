//! [`Cache::fetch_many`] and [`Cache::invalidate_many`]: many keys in one round trip.

use std::collections::HashMap;
use std::future::Future;

use super::Cache;
use crate::backend::{Acquire, Entry, Loc, Lookup, Token};
use crate::budget::Started;
use crate::error::Error;
use crate::key::CacheKey;
use crate::kind::{Batch, Kind};
use crate::stats::bump;
use crate::strategy::Strategy;
use crate::value::{CacheValue, Payload};

/// The loader must return one value per key it was given.
fn check_len<V, E: From<Error>>(values: Vec<V>, expected: usize) -> Result<Vec<V>, E> {
    if values.len() == expected {
        Ok(values)
    } else {
        Err(Error::InvalidArgument(
            "fetch_many: the loader must return one value per key it is given, in order",
        )
        .into())
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
    /// does not coalesce with concurrent fetches in this process.
    ///
    /// # Errors
    ///
    /// The loader's error, or (converted into `E`) [`Error::InvalidArgument`] when the loader
    /// returns a different number of values than it was given keys, or [`Error::Redecode`]
    /// when a key given more than once has a value that does not decode from its own encoding.
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
    ) -> Result<Vec<V>, E>
    where
        K: CacheKey + Clone,
        Kd: Batch,
        V: CacheValue<Kd>,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<Vec<V>, E>>,
        E: From<Error>,
    {
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
                inner.fault(&Error::Key(e));
                let values = inner.load_uncached(|| loader(keys.to_vec())).await?;
                return check_len(values, keys.len());
            }
        };
        let missing = |force| Some(Missing { force, lease: None });
        let mut redis_ok = true;
        let started = Started::now(inner.backend.response_timeout());
        // Duplicates are read like any key (MGET repeats the value), so the all-hit path
        // needs no de-duplication.
        let read = {
            let locs: Vec<Loc<'_>> = wanted.iter().map(|w| w.entry.loc()).collect();
            match inner.backend.read_many(&locs).await {
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
                for (w, lookup) in wanted.iter_mut().zip(lookups) {
                    match lookup {
                        Lookup::Hit(payload) => match inner.decode(&w.entry, &payload, codec) {
                            Some(v) => {
                                hits += 1;
                                w.value = Some(v);
                            }
                            None => w.missing = missing(true),
                        },
                        Lookup::Garbage => {
                            inner.undecodable(&w.entry.key, &Error::Unavailable);
                            w.missing = missing(true);
                        }
                        Lookup::Miss | Lookup::Leased => w.missing = missing(false),
                    }
                }
                inner
                    .counters
                    .hits
                    .fetch_add(hits, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                inner.fault(&e);
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
                        if let Some(v) = inner.decode(&w.entry, &payload, codec) {
                            bump(&inner.counters.hits);
                            w.value = Some(v);
                            w.payload = Some(payload);
                            w.missing = None;
                            n_missing -= 1;
                        }
                    }
                    Ok(Acquire::Leased) => bump(&inner.counters.lease_waits),
                    Err(e) => self.fault_and_release(&e, &w.entry, token, strategy.lease_time()),
                }
            }
        }
        if n_missing > 0 {
            for _ in 0..n_missing {
                bump(&inner.counters.misses);
            }
            bump(&inner.counters.loads);
            let keys_missing: Vec<K> = wanted
                .iter()
                .zip(keys)
                .filter(|(w, _)| w.missing.is_some())
                .map(|(_, k)| k.clone())
                .collect();
            let loaded = loader(keys_missing)
                .await
                .and_then(|loaded| check_len(loaded, n_missing));
            let loaded = match loaded {
                Ok(loaded) => loaded,
                Err(e) => {
                    let releases = wanted
                        .iter()
                        .filter_map(|w| w.lease().map(|t| self.release(&w.entry, Some(t))));
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
                    Err(e) => inner.fault(&Error::Encode(e)),
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
                    Ok(false) => bump(&inner.counters.stale_fills_rejected),
                    Err(e) => {
                        self.fault_and_release(&e, &wanted[i].entry, token, strategy.lease_time())
                    }
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
                Err(source) => return Err(Error::Redecode(source).into()),
            }
        }
        Ok(out)
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
        let result = self.inner.backend.invalidate_many(&locs).await;
        forget();
        result
    }
}
