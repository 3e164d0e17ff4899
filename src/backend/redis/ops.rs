//! The operations the cache runs: plain commands on the hot path, the scripts wherever a step
//! must be atomic.

use std::time::Duration;

use redis::Value;

use super::breaker::Scope;
use super::reply::{
    coded_reply, into_i64, is_wrong_type, opt_u64, pttl_ms, string_lookup, unexpected,
};
use super::scripts::*;
use super::{key_cmd, RedisBackend};
use crate::backend::{Acquire, Loc, Lookup, Marker, Token};
use crate::error::Error;
use crate::kind::Shape;
use crate::value::Payload;

impl RedisBackend {
    /// Releases a lease whose acquisition failed (timed out): the request may still run on the
    /// server later and leave an orphaned lease, so this follows it on the same connection,
    /// whatever the breaker says, for up to the lease time.
    pub(crate) async fn release_after_failure(
        &self,
        loc: Loc<'_>,
        token: &Token,
        within: Duration,
    ) -> Result<(), Error> {
        if loc.shape == Shape::Hash {
            let mut invocation = HASH_RELEASE.key(loc.key);
            invocation.arg(loc.field).arg(token.as_str());
            self.run_unchecked(Scope::Key(loc.key), within, |mut c| async move {
                invocation.invoke_async::<Value>(&mut c).await
            })
            .await?;
        } else {
            let mut invocation = RELEASE.key(loc.key);
            invocation.arg(token.marker());
            self.run_unchecked(Scope::Key(loc.key), within, |mut c| async move {
                invocation.invoke_async::<Value>(&mut c).await
            })
            .await?;
        }
        Ok(())
    }

    pub(crate) async fn read(&self, loc: Loc<'_>) -> Result<Lookup, Error> {
        match loc.shape {
            Shape::Str => match self.get(loc.key).await {
                Ok(v) => Ok(string_lookup(v)),
                Err(Error::Redis(e)) if is_wrong_type(&e) => Ok(Lookup::Garbage),
                Err(e) => Err(e),
            },
            Shape::Hash => match self
                .cmd(
                    Scope::Key(loc.key),
                    key_cmd("HGET", loc.key, Some(loc.field)),
                )
                .await
            {
                Ok(v) => Ok(string_lookup(v)),
                Err(Error::Redis(e)) if is_wrong_type(&e) => Ok(Lookup::Garbage),
                Err(e) => Err(e),
            },
            Shape::List | Shape::Set => {
                let reply = self
                    .script(&READ_COLLECTION, loc.key, |i| {
                        i.arg(shape_name(loc.shape));
                    })
                    .await?;
                Ok(match coded_reply(reply, loc.shape)? {
                    (0, _) => Lookup::Miss,
                    (1, _) => Lookup::Leased(Marker::default()),
                    (2, Some(p)) => Lookup::Hit(p),
                    _ => Lookup::Garbage,
                })
            }
        }
    }

    pub(crate) async fn read_with_ttl(&self, loc: Loc<'_>) -> Result<(Lookup, Option<u64>), Error> {
        let read = self.get_with_ttl(loc.key).await?;
        Ok((string_lookup(read.value), pttl_ms(&read.pttl)))
    }

    pub(crate) async fn acquire(
        &self,
        loc: Loc<'_>,
        token: &Token,
        lease_ms: u64,
        force: bool,
    ) -> Result<Acquire, Error> {
        let force = if force { "1" } else { "0" };
        let reply = if loc.shape == Shape::Hash {
            self.script(&HASH_ACQUIRE, loc.key, |i| {
                i.arg(loc.field)
                    .arg(token.as_str())
                    .arg(lease_ms)
                    .arg(force);
            })
            .await?
        } else {
            self.script(&ACQUIRE, loc.key, |i| {
                i.arg(token.marker())
                    .arg(lease_ms)
                    .arg(shape_name(loc.shape))
                    .arg(force);
            })
            .await?
        };
        Ok(match coded_reply(reply, loc.shape)? {
            (0, _) => Acquire::Acquired,
            (1, _) => Acquire::Leased,
            (2, Some(p)) => Acquire::Hit(p),
            _ => return Err(unexpected("acquire reply")),
        })
    }

    pub(crate) async fn fill(
        &self,
        loc: Loc<'_>,
        token: &Token,
        payload: &Payload,
        ttl_ms: u64,
    ) -> Result<bool, Error> {
        let reply = match (loc.shape, payload) {
            (Shape::Hash, Payload::Bytes(value)) => {
                self.script(&HASH_FILL, loc.key, |i| {
                    i.arg(loc.field)
                        .arg(token.as_str())
                        .arg(ttl_ms)
                        .arg(&value[..]);
                })
                .await?
            }
            (Shape::Str, Payload::Bytes(value)) => {
                self.script(&FILL, loc.key, |i| {
                    i.arg(token.marker())
                        .arg(ttl_ms)
                        .arg("string")
                        .arg(&value[..]);
                })
                .await?
            }
            (Shape::List | Shape::Set, Payload::Elems(elems)) => {
                self.script(&FILL, loc.key, |i| {
                    i.arg(token.marker()).arg(ttl_ms).arg(shape_name(loc.shape));
                    for e in elems {
                        i.arg(&e[..]);
                    }
                })
                .await?
            }
            _ => return Err(unexpected("payload does not match the strategy's kind")),
        };
        Ok(into_i64(&reply) == Some(1))
    }

    pub(crate) async fn refill(
        &self,
        loc: Loc<'_>,
        expected: &[u8],
        payload: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, Error> {
        let reply = self
            .script(&REFILL, loc.key, |i| {
                i.arg(expected).arg(payload).arg(ttl_ms);
            })
            .await?;
        Ok(into_i64(&reply) == Some(1))
    }

    pub(crate) async fn release(&self, loc: Loc<'_>, token: &Token) -> Result<(), Error> {
        if loc.shape == Shape::Hash {
            self.script(&HASH_RELEASE, loc.key, |i| {
                i.arg(loc.field).arg(token.as_str());
            })
            .await?;
        } else {
            self.script(&RELEASE, loc.key, |i| {
                i.arg(token.marker());
            })
            .await?;
        }
        Ok(())
    }

    pub(crate) async fn invalidate(&self, loc: Loc<'_>) -> Result<(), Error> {
        let cmd = if loc.shape == Shape::Hash {
            key_cmd("HDEL", loc.key, Some(loc.field))
        } else {
            key_cmd("DEL", loc.key, None)
        };
        match self.cmd(Scope::Key(loc.key), cmd).await {
            Err(Error::Redis(e)) if is_wrong_type(&e) => {
                // A hash strategy's key holds another type: nothing of ours is there, but
                // remove it so nothing stale can be read either.
                self.cmd(Scope::Key(loc.key), key_cmd("DEL", loc.key, None))
                    .await?;
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    pub(crate) async fn incr(&self, loc: Loc<'_>, delta: i64) -> Result<Option<i64>, Error> {
        let reply = self
            .script(&INCR, loc.key, |i| {
                i.arg(delta);
            })
            .await?;
        match reply {
            Value::Nil => Ok(None),
            Value::Int(n) => Ok(Some(n)),
            _ => Err(unexpected("incr reply")),
        }
    }

    pub(crate) async fn incr_or_create(
        &self,
        loc: Loc<'_>,
        delta: i64,
        ttl_ms: u64,
    ) -> Result<i64, Error> {
        let reply = self
            .script(&INCR_OR_CREATE, loc.key, |i| {
                i.arg(delta).arg(ttl_ms);
            })
            .await?;
        into_i64(&reply).ok_or_else(|| unexpected("incr reply"))
    }

    pub(crate) async fn set_string(
        &self,
        loc: Loc<'_>,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<(), Error> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(loc.key).arg(value);
        if ttl_ms > 0 {
            cmd.arg("PX").arg(ttl_ms);
        }
        self.cmd(Scope::Key(loc.key), cmd).await.map(|_| ())
    }

    pub(crate) async fn push(&self, loc: Loc<'_>, elems: &[Vec<u8>]) -> Result<Option<u64>, Error> {
        if elems.is_empty() {
            return self.len(loc).await;
        }
        let reply = self
            .script(&PUSH, loc.key, |i| {
                i.arg(shape_name(loc.shape));
                for e in elems {
                    i.arg(&e[..]);
                }
            })
            .await?;
        opt_u64(reply)
    }

    pub(crate) async fn remove(
        &self,
        loc: Loc<'_>,
        elems: &[Vec<u8>],
    ) -> Result<Option<u64>, Error> {
        if elems.is_empty() {
            return self.len(loc).await;
        }
        let reply = self
            .script(&REMOVE, loc.key, |i| {
                i.arg(shape_name(loc.shape));
                for e in elems {
                    i.arg(&e[..]);
                }
            })
            .await?;
        opt_u64(reply)
    }

    pub(crate) async fn len(&self, loc: Loc<'_>) -> Result<Option<u64>, Error> {
        let reply = self
            .script(&LEN, loc.key, |i| {
                i.arg(shape_name(loc.shape));
            })
            .await?;
        opt_u64(reply)
    }

    pub(crate) async fn contains(&self, loc: Loc<'_>, elem: &[u8]) -> Result<Option<bool>, Error> {
        let reply = self
            .script(&CONTAINS, loc.key, |i| {
                i.arg(elem);
            })
            .await?;
        Ok(opt_u64(reply)?.map(|n| n == 1))
    }

    pub(crate) async fn read_many(&self, locs: &[Loc<'_>]) -> Result<Vec<Lookup>, Error> {
        if locs.is_empty() {
            return Ok(Vec::new());
        }
        let replies = if locs.iter().all(|l| l.shape == Shape::Str) {
            // One MGET; redis-rs's cluster client splits it by slot.
            let mut cmd = redis::cmd("MGET");
            for loc in locs {
                cmd.arg(loc.key);
            }
            match self.cmd(Scope::Keys(locs), cmd).await? {
                Value::Array(items) => items,
                _ => return Err(unexpected("MGET reply")),
            }
        } else {
            // Concurrent requests share the multiplexed connection and go out as one pipeline;
            // unlike a `redis::Pipeline`, they may span cluster slots.
            let replies = futures_util::future::join_all(locs.iter().map(|loc| {
                let cmd = match loc.shape {
                    Shape::Hash => key_cmd("HGET", loc.key, Some(loc.field)),
                    _ => key_cmd("GET", loc.key, None),
                };
                self.cmd(Scope::Key(loc.key), cmd)
            }))
            .await;
            replies
                .into_iter()
                .map(|r| match r {
                    Err(Error::Redis(e)) if is_wrong_type(&e) => Ok(Value::Int(0)),
                    other => other,
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        if replies.len() != locs.len() {
            return Err(unexpected("batch reply length"));
        }
        Ok(replies
            .into_iter()
            .map(|v| match v {
                Value::ServerError(_) => Lookup::Garbage,
                other => string_lookup(other),
            })
            .collect())
    }

    /// [`read_many`](Self::read_many) with each entry's PTTL, for a batch whose values may
    /// enter the local tier: the MGET and the PTTLs go out together (concurrent requests on the
    /// multiplexed connection, one pipeline, free to span cluster slots).
    pub(crate) async fn read_many_with_ttl(
        &self,
        locs: &[Loc<'_>],
    ) -> Result<Vec<(Lookup, Option<u64>)>, Error> {
        let ttls = futures_util::future::join_all(
            locs.iter()
                .map(|loc| self.cmd(Scope::Key(loc.key), key_cmd("PTTL", loc.key, None))),
        );
        let (lookups, ttls) = futures_util::future::join(self.read_many(locs), ttls).await;
        let lookups = lookups?;
        if lookups.len() != ttls.len() {
            return Err(unexpected("batch reply length"));
        }
        Ok(lookups
            .into_iter()
            .zip(ttls)
            .map(|(lookup, pttl)| {
                // A PTTL that failed leaves the TTL unknown: a TTL of 0 keeps nothing.
                let ttl = pttl.map_or(Some(0), |v| pttl_ms(&v));
                (lookup, ttl)
            })
            .collect())
    }

    pub(crate) async fn invalidate_many(&self, locs: &[Loc<'_>]) -> Result<(), Error> {
        // Concurrent, so pipelined on the connection, and free to span cluster slots.
        futures_util::future::join_all(locs.iter().map(|loc| self.invalidate(*loc)))
            .await
            .into_iter()
            .collect()
    }

    pub(crate) async fn ping(&self) -> Result<(), Error> {
        // A ping goes through even while the breaker is open: it is how callers check.
        self.run_unchecked(Scope::Any, self.shared.timeout, |mut c| async move {
            redis::cmd("PING").query_async::<Value>(&mut c).await
        })
        .await
        .map(|_| ())
    }
}
