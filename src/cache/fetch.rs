//! [`Cache::fetch`]: one read on the hit path; a miss goes to the load driver (`load`).

use std::future::Future;

use tracing::field::Empty;
use tracing::Instrument;

use super::load::Load;
use super::local::TtlRead;
use super::Cache;
use crate::backend::Lookup;
use crate::budget::Started;
use crate::error::Error;
use crate::key::CacheKey;
use crate::kind::{Kind, Shape};
use crate::observe;
use crate::stats::Event;
use crate::strategy::Strategy;
use crate::value::CacheValue;

/// XFetch: refresh when `-delta * ln(U)` reaches past the remaining TTL.
fn should_refresh(ttl_ms: Option<u64>, delta_ms: u64) -> bool {
    let Some(ttl) = ttl_ms else {
        return false;
    };
    let u = fastrand::f64().max(f64::MIN_POSITIVE);
    -(delta_ms as f64) * u.ln() >= ttl as f64
}

impl Cache {
    /// Reads the value, or runs `loader` and caches what it returns. A strategy with a local
    /// tier ([`Strategy::local`]) answers from process memory when it holds the value.
    ///
    /// Fails open: when the cache cannot be used (Redis down, slow past the response timeout,
    /// refusing; a key that does not render; a value that does not encode) the loader runs and
    /// its result is returned, and [`Stats::errors`](crate::Stats::errors) counts it. A cached value that does not
    /// decode is a miss; the loader's value replaces it.
    ///
    /// Concurrent fetches of one key share one load: in this process they await the first
    /// fetch's loader, across processes they wait (up to the strategy's lease time) for the fill
    /// of whoever holds the key's fill lease. A fetch waits on Redis for at most the response
    /// timeout in all, the time the first fetch spends on Redis for it included: past that, it
    /// runs its own loader. If the leading fetch is dropped, a waiter takes
    /// over its lease; if its loader fails, the leader gets that error and each waiter runs its
    /// own loader once and gets that result, uncached. A fill whose load began before an
    /// invalidation of the key never lands, and a fetch that starts after an invalidation
    /// returned (in any process) never returns a value loaded before it: a fetch that joined
    /// such a load starts over ([`Stats::voided_joins`](crate::Stats::voided_joins)).
    ///
    /// # Errors
    ///
    /// Only the loader's error.
    ///
    /// # Examples
    ///
    /// ```
    /// use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct UserKey { user_id: u64 }
    /// const NAME: Strategy<Option<String>, UserKey> =
    ///     Strategy::<Option<String>, UserKey>::obj("user:name:<user_id>").expire(600).negative_expire(30);
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let name = cache.fetch(&NAME, &UserKey { user_id: 7 }, || async {
    ///     Ok::<_, std::io::Error>(None) // not in the database: cached for 30 s
    /// }).await?;
    /// assert_eq!(name, None);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fetch<V, K, Kd, F, Fut, E>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
        loader: F,
    ) -> Result<V, E>
    where
        K: CacheKey,
        Kd: Kind,
        V: CacheValue<Kd>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let span = tracing::debug_span!(
            "cacheobj.fetch",
            strategy = strategy.strategy_name(),
            outcome = Empty,
            load_us = Empty,
            elapsed_us = Empty,
        );
        let started_at = observe::clock(&span);
        let inner = &*self.inner;
        let local = match (&inner.local, strategy.local_spec()) {
            (Some(tier), Some(spec)) => Some((tier, spec, strategy.local_id())),
            _ => None,
        };
        let mut rendered_key = None;
        if let Some((tier, spec, id)) = &local {
            // Looked up under a key rendered into a reused buffer: a local hit allocates
            // nothing but the clone it returns. It awaits nothing, so it is counted without
            // an `Op`.
            let found = tier.get_with(*id, spec, |buf| {
                strategy.render_key(buf, &inner.prefix, key).is_ok()
                    && buf.len() <= inner.max_key_len
            });
            match found {
                Ok(value) => {
                    observe::local_hit(
                        &inner.counters,
                        &inner.by_strategy,
                        strategy.strategy_name(),
                    );
                    observe::finish(&span, started_at, "hit");
                    crate::local::pace().await;
                    return Ok(value);
                }
                Err(key) => rendered_key = key,
            }
        }
        let rendered = match rendered_key {
            Some(out) => self.render_with(strategy, key, out),
            None => self.render(strategy, key),
        };
        if let Ok(entry) = &rendered {
            // The rendered key may hold personal data: TRACE only.
            tracing::trace!(key = %String::from_utf8_lossy(&entry.key), "cacheobj: fetch");
        }
        let op = &inner.op(strategy.strategy_name());
        // Records the outcome however the fetch ends. The hit path runs outside the span: it
        // logs nothing, and instrumenting it would move the whole fetch future once more.
        let _finish = observe::Finish::new(&span, op, started_at);
        let entry = match rendered {
            Ok(r) => r,
            Err(e) => {
                op.fault(&Error::Key(e));
                return op.load(loader).instrument(span.clone()).await;
            }
        };
        if local.is_some() {
            op.bump(Event::LocalMiss);
        }
        let loc = entry.loc();
        let codec = strategy.value_codec();
        let early = strategy.early_refresh_ms() > 0
            && Kd::SHAPE == Shape::Str
            && strategy.expire_after().is_some();
        let started = Started::now(inner.backend.response_timeout());
        if !inner.pending.is_empty() {
            if let Err(e) = self.settled(&entry).await {
                // This entry's invalidation has not landed: Redis may still hold what it
                // removes.
                op.fault(&e);
                return op.load(loader).instrument(span.clone()).await;
            }
        }
        // Taken before the read goes out: an invalidation that arrives while it is on the
        // wire keeps its value out of the local tier.
        let ticket = match local {
            Some(_) => self.local_ticket(strategy, &entry.key),
            None => None,
        };
        // A local copy must not outlive the entry: a read that may be kept reads its TTL too,
        // unless its ticket knows when the entry expires.
        let with_ttl = early || TtlRead::needed(ticket.as_ref());
        let read = if with_ttl {
            inner.backend.read_with_ttl(loc).await
        } else {
            inner.backend.read(loc).await.map(|l| (l, None))
        };
        let mut force = false;
        let mut redis_ok = true;
        let mut seen = None;
        match read {
            Ok((Lookup::Hit(payload), ttl)) => match inner.decode(op, &entry, &payload, codec) {
                Some(value) => {
                    op.bump(Event::Hit);
                    if let Some(ticket) = ticket {
                        let ttl = TtlRead::of(with_ttl, ttl);
                        self.keep_local(strategy, ticket, &entry.key, &value, ttl, started);
                    }
                    if early && should_refresh(ttl, strategy.early_refresh_ms()) {
                        return self
                            .refresh_early(
                                op,
                                strategy,
                                &entry,
                                payload,
                                value,
                                started.budget(),
                                loader,
                            )
                            .instrument(span.clone())
                            .await;
                    }
                    return Ok(value);
                }
                None => force = true,
            },
            Ok((Lookup::Garbage, _)) => {
                op.undecodable(loc.key, &Error::Unavailable);
                force = true;
            }
            Ok((Lookup::Leased(marker), _)) => seen = Some(marker),
            Ok((Lookup::Miss, _)) => {}
            Err(e) => {
                op.fault(&e);
                redis_ok = false;
            }
        }
        op.bump(Event::Miss);
        let load = Load {
            op,
            strategy,
            entry: &entry,
            force,
            redis_ok,
            seen,
            budget: started.budget(),
        };
        self.load_coalesced(load, loader)
            .instrument(span.clone())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfetch_never_refreshes_without_ttl_and_always_at_expiry() {
        assert!(!should_refresh(None, 100));
        assert!(should_refresh(Some(0), 100));
        // With 100 s left and a 1 ms load, a refresh needs u < e^-100000: never in practice.
        assert!(!(0..1000).any(|_| should_refresh(Some(100_000), 1)));
    }
}
