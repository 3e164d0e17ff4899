//! What the local tier ([`Strategy::local`]) shows of itself, and how a read of Redis
//! (`fetch`, `fetch_many`) enters it.

use std::time::Duration;

use super::Cache;
use crate::budget::Started;
use crate::local::{Expiry, Ticket};
use crate::strategy::Strategy;

impl Cache {
    /// Whether the local tier serves and keeps values now: tracking is confirmed on every
    /// node. It starts with the first fetch of a strategy with [`Strategy::local`]; until
    /// then, while a tracking connection is lost, on the embedded backend, and when the
    /// server cannot track ([`Stats::local_fallback`](crate::Stats::local_fallback)),
    /// fetches go to the backend as without a local tier.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!cacheobj::Cache::in_memory().local_live());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn local_live(&self) -> bool {
        self.inner.local.as_ref().is_some_and(|l| l.is_live())
    }

    /// How many values of `strategy` the local tier holds (after pending evictions ran): for
    /// a status page, and to check its bound.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const ITEM: Strategy<String, ItemKey> = Strategy::obj("item:<item_id>").local(100);
    /// assert_eq!(Cache::in_memory().local_len(&ITEM), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn local_len<V, K, Kd>(&self, strategy: &Strategy<V, K, Kd>) -> u64 {
        self.inner
            .local
            .as_ref()
            .map_or(0, |l| l.entries(strategy.local_id()))
    }

    /// A ticket for a read of the entry at `key` that may enter the local tier, taken before
    /// the read goes out: an invalidation that arrives while it is on the wire keeps its value
    /// out. `None` without a tier, for a strategy without one, while the tier is not live, and
    /// for a read it does not admit; such a read need not ask for the entry's TTL.
    pub(crate) fn local_ticket<V, K, Kd>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &[u8],
    ) -> Option<Ticket> {
        let tier = self.inner.local.as_ref()?;
        let spec = strategy.local_spec()?;
        // Only a strategy's first ticket needs its prefix: not worked out on every read.
        let prefix = || {
            let head = strategy.key_template().split('<').next().unwrap_or("");
            [&self.inner.prefix[..], head.as_bytes()].concat()
        };
        tier.ticket(strategy.local_id(), &spec, prefix, key)
    }

    /// Keeps `value`, read from the entry at `key` under `ticket`, for at most the strategy's
    /// local TTL and never past the entry's expiry: the one `ttl` read with the value, or,
    /// when the read did not ask, the one the ticket knew. Both count from `started`, before
    /// the read went out: a TTL read some time before its reply got here, so a copy never
    /// outlives the entry.
    pub(crate) fn keep_local<V, K, Kd>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        ticket: Ticket,
        key: &[u8],
        value: &V,
        ttl: TtlRead,
        started: Started,
    ) {
        let (Some(tier), Some(spec)) = (self.inner.local.as_ref(), strategy.local_spec()) else {
            return;
        };
        // Only Redis has a tier that goes live, and its reads always start a clock.
        let Some(sent) = started.at() else {
            return;
        };
        let ticket = match ttl {
            TtlRead::Pttl(ms) => ticket.learned(Expiry::from_pttl(sent, ms)),
            TtlRead::NotAsked => ticket,
        };
        // A read that neither asked nor knew (none is sent so) keeps nothing.
        let Some(expiry) = ticket.expiry() else {
            return;
        };
        // A deadline, not a time left: however late the insert runs, the copy ends by then.
        let local_end = sent.checked_add(strategy.local_ttl_time());
        let until = match (local_end, expiry) {
            (Some(end), Expiry::At(at)) => end.min(at),
            (None, Expiry::At(at)) => at,
            (Some(end), Expiry::Never) => end,
            // A local TTL past what an instant holds, and an entry without expiry: a century.
            (None, Expiry::Never) => match sent.checked_add(Duration::from_secs(3_155_760_000)) {
                Some(end) => end,
                None => return,
            },
        };
        tier.keep(
            strategy.local_id(),
            &spec,
            ticket,
            key,
            value,
            until.into_std(),
        );
    }
}

/// What a read that may be kept said of its entry's TTL.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TtlRead {
    /// It did not ask: its ticket knew when the entry expires ([`Ticket::expiry`]).
    NotAsked,
    /// Its PTTL: milliseconds left, `None` for no expiry.
    Pttl(Option<u64>),
}

impl TtlRead {
    /// Whether a read under `ticket` must ask for the TTL to be kept.
    pub(crate) fn needed(ticket: Option<&Ticket>) -> bool {
        ticket.is_some_and(|t| t.expiry().is_none())
    }

    /// What a read said: `ttl` if it `asked`.
    pub(crate) fn of(asked: bool, ttl: Option<u64>) -> TtlRead {
        if asked {
            TtlRead::Pttl(ttl)
        } else {
            TtlRead::NotAsked
        }
    }
}
