//! Fail-open behaviour against a private `redis-server` per test: stopped, paused (SIGSTOP),
//! connections killed, wrong password. `fetch` must keep returning the loader's value within the
//! response timeout (plus the loader and a margin), mutations must return an error, and caching
//! must resume by itself once Redis answers again.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cacheobj::{Cache, CacheConfig, Error};
use cacheobj_strategies::{Item, ItemKey, ITEM, ITEM_STAT};
use support::{lease_under, raw_conn_to, unique_prefix, RedisServer};

/// What every loader costs.
const LOADER: Duration = Duration::from_millis(5);
/// Response timeout used by these tests.
const RESPONSE: Duration = Duration::from_millis(100);
/// Scheduling slack allowed on top of response timeout + loader.
const MARGIN: Duration = Duration::from_millis(150);
/// A single operation that takes longer than this is considered hung.
const HANG: Duration = Duration::from_secs(3);
/// How long caching may take to resume once Redis is back.
const RESUME_WITHIN: Duration = Duration::from_secs(5);

fn bound() -> Duration {
    RESPONSE + LOADER + MARGIN
}

fn item(id: u64) -> Item {
    Item {
        id,
        name: format!("item #{id}"),
    }
}

fn config(url: String, test: &str, retry: Duration) -> CacheConfig {
    CacheConfig::builder()
        .url(url)
        .prefix(unique_prefix(test))
        .response_timeout(RESPONSE)
        .retry_interval(retry)
        .build()
}

/// A cache plus a count of loader calls.
#[derive(Clone)]
struct Harness {
    cache: Cache,
    calls: Arc<AtomicUsize>,
}

impl Harness {
    async fn connect(config: CacheConfig) -> Harness {
        let cache = tokio::time::timeout(HANG, Cache::connect(config))
            .await
            .expect("Cache::connect hung")
            .expect("Cache::connect must succeed whatever state Redis is in");
        Harness {
            cache,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Fetches item `id` with a 5 ms loader; checks the value; returns the latency.
    async fn fetch(&self, id: u64) -> Duration {
        let calls = self.calls.clone();
        let start = Instant::now();
        let got = tokio::time::timeout(
            HANG,
            self.cache
                .fetch(&ITEM, &ItemKey { item_id: id }, || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    // The load's own work (not ordering): every loader costs LOADER.
                    tokio::time::sleep(LOADER).await;
                    Ok::<_, Infallible>(item(id))
                }),
        )
        .await
        .unwrap_or_else(|_| panic!("fetch of item {id} hung for {HANG:?}"));
        let elapsed = start.elapsed();
        let got = match got {
            Ok(v) => v,
            Err(never) => match never {},
        };
        assert_eq!(got, item(id), "fetch returned the wrong value");
        elapsed
    }

    /// Fetches `id` and expects a hit: no loader call.
    async fn expect_hit(&self, id: u64) {
        let before = self.calls();
        let hits = self.cache.stats().hits;
        self.fetch(id).await;
        assert_eq!(self.calls(), before, "expected a hit, the loader ran");
        assert!(self.cache.stats().hits > hits, "{:?}", self.cache.stats());
    }

    /// Polls until a fetch of `id` fills and the next fetch is a hit; returns how long it took.
    async fn wait_until_caching_resumes(&self, id: u64) -> Duration {
        let start = Instant::now();
        loop {
            self.fetch(id).await;
            let before = self.calls();
            let hits = self.cache.stats().hits;
            self.fetch(id).await;
            if self.calls() == before && self.cache.stats().hits > hits {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < RESUME_WITHIN,
                "caching did not resume within {RESUME_WITHIN:?}: stats {:?}, ping {:?}",
                self.cache.stats(),
                self.cache.ping().await
            );
            // Polling interval of a loop with a deadline (RESUME_WITHIN), not ordering.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `invalidate` and `incr` must fail (not hang, not report success).
    async fn expect_mutations_fail(&self, what: &str) -> (Error, Error) {
        let key = ItemKey { item_id: 1 };
        let start = Instant::now();
        let inv = tokio::time::timeout(HANG, self.cache.invalidate(&ITEM, &key))
            .await
            .unwrap_or_else(|_| panic!("invalidate hung ({what})"));
        let inv_time = start.elapsed();
        let start = Instant::now();
        let incr = tokio::time::timeout(HANG, self.cache.incr(&ITEM_STAT, &key, 1))
            .await
            .unwrap_or_else(|_| panic!("incr hung ({what})"));
        let incr_time = start.elapsed();
        let inv = inv.expect_err(&format!("invalidate reported success ({what})"));
        let incr = incr.expect_err(&format!("incr reported success ({what})"));
        assert!(
            inv_time < RESPONSE + MARGIN && incr_time < RESPONSE + MARGIN,
            "mutations took {inv_time:?} / {incr_time:?} ({what}), bound {:?}",
            RESPONSE + MARGIN
        );
        (inv, incr)
    }
}

/// Waits until the breaker lets requests through: a read of a key no test fetches goes to
/// Redis and succeeds (a success also closes it, as any would).
async fn wait_until_breaker_closed(h: &Harness) {
    let probe = ItemKey { item_id: 999_999 };
    support::wait_until_async(
        "the breaker has closed (a read of another key succeeds)",
        RESUME_WITHIN,
        || async { h.cache.exists(&ITEM, &probe).await.is_ok() },
    )
    .await;
}

async fn raw_cmd(url: &str, cmd: &redis::Cmd) -> redis::Value {
    let mut conn = raw_conn_to(url).await;
    tokio::time::timeout(HANG, cmd.query_async::<redis::Value>(&mut conn))
        .await
        .expect("raw command hung")
        .expect("raw command failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_succeeds_while_redis_is_down() {
    let mut server = RedisServer::start();
    server.stop();
    let h = Harness::connect(config(server.url(), "down", Duration::from_millis(200))).await;

    for id in 1..=5 {
        let took = h.fetch(id).await;
        assert!(
            took < bound(),
            "fetch {id} took {took:?} while Redis is down"
        );
    }
    assert_eq!(h.calls(), 5);
    let stats = h.cache.stats();
    assert!(stats.errors > 0, "{stats:?}");
    assert_eq!(stats.hits, 0, "{stats:?}");

    let start = Instant::now();
    let ping = tokio::time::timeout(HANG, h.cache.ping())
        .await
        .expect("ping hung");
    assert!(ping.is_err(), "ping succeeded while Redis is down");
    assert!(
        start.elapsed() < RESPONSE + MARGIN,
        "ping took {:?}",
        start.elapsed()
    );
    h.expect_mutations_fail("redis down").await;

    // Redis comes up after the service: caching starts by itself.
    tokio::task::block_in_place(|| server.restart());
    let took = h.wait_until_caching_resumes(7).await;
    eprintln!("connect_succeeds_while_redis_is_down: caching began {took:?} after Redis started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_redis() {
    let mut server = RedisServer::start();
    let h = Harness::connect(config(server.url(), "stopped", Duration::from_millis(200))).await;
    h.fetch(1).await;
    h.expect_hit(1).await;
    assert_eq!(h.calls(), 1);

    tokio::task::block_in_place(|| server.stop());
    let errors = h.cache.stats().errors;
    let mut max = Duration::ZERO;
    for round in 0..20 {
        let before = h.calls();
        let took = h.fetch(1).await;
        assert_eq!(
            h.calls(),
            before + 1,
            "round {round}: the loader did not run"
        );
        max = max.max(took);
        // Spread the rounds over more than one retry interval, so some fetches go to Redis.
        // Pacing, not ordering: no assertion depends on it (the first fetch already fails on
        // Redis), and a stalled runtime only spreads the rounds further.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        max < bound(),
        "max fetch latency with Redis stopped: {max:?}"
    );
    assert!(h.cache.stats().errors > errors, "{:?}", h.cache.stats());
    let (inv, incr) = h.expect_mutations_fail("redis stopped").await;
    assert!(inv.is_unavailable(), "{inv:?}");
    assert!(incr.is_unavailable(), "{incr:?}");

    tokio::task::block_in_place(|| server.restart());
    let took = h.wait_until_caching_resumes(2).await;
    eprintln!(
        "stopped_redis: max latency while stopped {max:?}; caching resumed {took:?} after restart"
    );
    h.cache
        .invalidate(&ITEM, &ItemKey { item_id: 2 })
        .await
        .unwrap();
    assert_eq!(
        h.cache
            .incr(&ITEM_STAT, &ItemKey { item_id: 2 }, 1)
            .await
            .unwrap(),
        None
    );
    h.cache.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_redis() {
    let server = RedisServer::start();
    let h = Harness::connect(config(server.url(), "paused", Duration::from_millis(300))).await;
    h.fetch(1).await;
    h.expect_hit(1).await;

    server.pause();
    let errors = h.cache.stats().errors;
    let mut max = Duration::ZERO;
    for round in 0..20u64 {
        let before = h.calls();
        // Alternate the cached key and fresh ones.
        let id = if round % 2 == 0 { 1 } else { 100 + round };
        let took = h.fetch(id).await;
        assert_eq!(
            h.calls(),
            before + 1,
            "round {round}: the loader did not run"
        );
        max = max.max(took);
        // Pacing over more than one retry interval, as in `stopped_redis`: not ordering.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        max < bound(),
        "max sequential fetch latency while paused: {max:?} (bound {:?})",
        bound()
    );
    assert!(h.cache.stats().errors > errors, "{:?}", h.cache.stats());

    // 64 concurrent fetches of cold keys, repeated until a round really goes to the frozen
    // Redis: until the retry interval has passed the breaker skips Redis and every fetch
    // returns at once; one that reaches Redis waits for the response timeout. (Any request
    // used to ask whether the breaker has closed would itself time out and trip it again.)
    let deadline = Instant::now() + RESUME_WITHIN;
    let mut round = 0u64;
    let concurrent_max = loop {
        let calls = h.calls();
        let tasks: Vec<_> = (0..64u64)
            .map(|i| {
                let h = h.clone();
                tokio::spawn(async move { h.fetch(1000 + round * 64 + i).await })
            })
            .collect();
        let mut concurrent_max = Duration::ZERO;
        for t in tasks {
            concurrent_max = concurrent_max.max(t.await.unwrap());
        }
        assert_eq!(h.calls(), calls + 64);
        assert!(
            concurrent_max < bound(),
            "max concurrent fetch latency while paused: {concurrent_max:?} (bound {:?})",
            bound()
        );
        if concurrent_max >= RESPONSE {
            break concurrent_max;
        }
        assert!(
            Instant::now() < deadline,
            "after {} rounds of 64 concurrent fetches in {RESUME_WITHIN:?}, none reached the \
             frozen Redis (retry interval 300 ms): stats {:?}",
            round + 1,
            h.cache.stats()
        );
        round += 1;
    };

    let (inv, incr) = h.expect_mutations_fail("redis paused").await;
    // An availability error. Which variant (`Error::Timeout`, `Error::Unavailable`, or today
    // mostly `Error::Redis(timed out)`) is pinned by `response_timeouts_are_reported_as_error_timeout`.
    assert!(inv.is_unavailable(), "{inv:?}");
    assert!(incr.is_unavailable(), "{incr:?}");
    let start = Instant::now();
    let ping = tokio::time::timeout(HANG, h.cache.ping())
        .await
        .expect("ping hung");
    assert!(ping.as_ref().is_err_and(Error::is_unavailable), "{ping:?}");
    assert!(
        start.elapsed() < RESPONSE + MARGIN,
        "ping took {:?}",
        start.elapsed()
    );

    server.resume();
    let took = h.wait_until_caching_resumes(2).await;
    eprintln!(
        "paused_redis: max sequential {max:?}, max concurrent {concurrent_max:?}; caching resumed {took:?} after SIGCONT"
    );
    // The value cached before the pause is still there.
    h.expect_hit(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connection() {
    let server = RedisServer::start();
    let h = Harness::connect(config(server.url(), "killed", Duration::from_millis(200))).await;
    h.fetch(1).await;
    h.expect_hit(1).await;

    let killed = raw_cmd(
        &server.url(),
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal"),
    )
    .await;
    assert!(
        matches!(killed, redis::Value::Int(n) if n >= 1),
        "CLIENT KILL killed nothing: {killed:?}"
    );

    for _ in 0..5 {
        let took = h.fetch(1).await;
        assert!(took < bound(), "fetch after CLIENT KILL took {took:?}");
    }
    let took = h.wait_until_caching_resumes(1).await;
    eprintln!("killed_connection: caching resumed {took:?} after CLIENT KILL");
    h.cache.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password() {
    let server = RedisServer::start();
    raw_cmd(
        &server.url(),
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg("secret"),
    )
    .await;
    let url = format!("redis://:wrong@127.0.0.1:{}/", server.port);
    let h = Harness::connect(config(url, "wrongpw", Duration::from_millis(200))).await;

    let start = Instant::now();
    let ping = tokio::time::timeout(HANG, h.cache.ping())
        .await
        .expect("ping hung with a wrong password");
    assert!(ping.is_err(), "ping succeeded with a wrong password");
    assert!(
        start.elapsed() < RESPONSE + MARGIN,
        "ping took {:?}",
        start.elapsed()
    );

    for id in 1..=3 {
        let took = h.fetch(id).await;
        assert!(took < bound(), "fetch took {took:?} with a wrong password");
    }
    assert_eq!(h.calls(), 3);
    assert!(h.cache.stats().errors > 0, "{:?}", h.cache.stats());
    h.expect_mutations_fail("wrong password").await;
}

// ---------------------------------------------------------------------------------------------
// Regression tests for library bugs found while writing the tests above (all fixed).
// ---------------------------------------------------------------------------------------------

/// Regression: a fill-lease ACQUIRE that timed out on the client still runs on Redis later and leaves
/// an orphaned lease marker (PX = lease time, 3 s for `ITEM`); every fetch of that key, in every
/// process, then waits for that lease although Redis answers fine again.
///
/// `CLIENT PAUSE <ms> WRITE` reproduces a short Redis stall deterministically: the GET of the
/// fetch goes through (a miss), the ACQUIRE script is held until the pause ends, the client gives
/// up after the response timeout (the fetch correctly returns the loader's value), and then
/// Redis runs the ACQUIRE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_lease_acquire_does_not_stall_later_fetches() {
    let server = RedisServer::start();
    let h = Harness::connect(config(server.url(), "orphan", Duration::from_millis(200))).await;
    // Fill one key, so the ACQUIRE/FILL scripts are loaded on the server (a NOSCRIPT reply
    // would hide the problem).
    h.fetch(1).await;
    h.expect_hit(1).await;

    raw_cmd(
        &server.url(),
        redis::cmd("CLIENT").arg("PAUSE").arg(500).arg("WRITE"),
    )
    .await;
    let took = h.fetch(5).await;
    assert!(took < bound(), "fetch during the write pause took {took:?}");
    // The pause ends after 500 ms: a write is held until then, and answered after the writes
    // held before it (the timed-out ACQUIRE).
    raw_cmd(
        &server.url(),
        redis::cmd("SET").arg(b"orphan:pause-ended").arg(1),
    )
    .await;
    // The breaker has closed: a read of another key goes to Redis and succeeds.
    wait_until_breaker_closed(&h).await;

    let entry = h.cache.entry_key(&ITEM, &ItemKey { item_id: 5 }).unwrap();
    let (orphan, pttl) = lease_under(&server.url(), &entry.key).await;

    let took = h.fetch(5).await;
    assert!(
        took < bound(),
        "a fetch after Redis recovered took {took:?} (bound {:?}); orphaned lease left by the \
         timed-out ACQUIRE: {orphan} (pttl {pttl} ms); stats {:?}",
        bound(),
        h.cache.stats()
    );
}

/// Regression: after an authentication failure the cache never reconnects, so caching does not resume
/// when the password is fixed on the server (password rotation, ACL user created late).
/// redis-rs's `ConnectionManager` caches the failed connection future and only replaces it
/// after an I/O error; `AuthenticationFailed` is not one, and the cache uses the manager with
/// `number_of_retries(0)` and never rebuilds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_resumes_once_the_password_is_fixed() {
    let server = RedisServer::start();
    raw_cmd(
        &server.url(),
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg("old"),
    )
    .await;
    let url = format!("redis://:new@127.0.0.1:{}/", server.port);
    let h = Harness::connect(config(url, "pwfix", Duration::from_millis(200))).await;
    h.fetch(1).await;
    assert!(
        h.cache.ping().await.is_err(),
        "ping succeeded with a wrong password"
    );

    // The operator rotates the server's password to the one the service is configured with.
    raw_cmd(
        &format!("redis://:old@127.0.0.1:{}/", server.port),
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg("new"),
    )
    .await;
    let took = h.wait_until_caching_resumes(2).await;
    eprintln!("caching resumed {took:?} after the password was fixed");
}

/// Regression (minor, documented contract): a request Redis does not answer within the response
/// timeout mostly comes back as `Error::Redis(timed out)`, not `Error::Timeout`, although
/// `Cache::ping` and `Error::Timeout` document `Error::Timeout` for exactly this. The cache
/// gives the `ConnectionManager` the same response timeout as its own `tokio::time::timeout`;
/// both fire on the same timer tick and the inner future, polled first, wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_timeouts_are_reported_as_error_timeout() {
    let server = RedisServer::start();
    let h = Harness::connect(config(server.url(), "timeout", Duration::from_millis(100))).await;
    h.fetch(1).await;
    server.pause();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(format!("ping: {:?}", h.cache.ping().await));
        // Past the retry interval: the invalidation really goes to the frozen Redis. Until
        // then the breaker answers it at once with `Unavailable`, without sending it.
        let deadline = Instant::now() + HANG;
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        let invalidated = loop {
            match h.cache.invalidate(&ITEM, &ItemKey { item_id: 1 }).await {
                Err(Error::Unavailable) => {
                    assert!(
                        Instant::now() < deadline,
                        "the breaker still skipped Redis {HANG:?} after the ping (retry \
                         interval 100 ms); got so far: {got:#?}"
                    );
                    tick.tick().await;
                }
                other => break other,
            }
        };
        got.push(format!("invalidate: {invalidated:?}"));
    }
    server.resume();
    let wrong: Vec<_> = got.iter().filter(|g| !g.contains("Timeout(")).collect();
    assert!(
        wrong.is_empty(),
        "expected Err(Timeout(100ms)) every time, got: {got:#?}"
    );
}

/// A TCP proxy in front of `target` that holds every reply for `delay` before passing it on:
/// a Redis that answers, but slowly.
async fn slow_proxy(target: u16, delay: Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let port = listener.local_addr().expect("proxy address").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            // Each chunk is passed on `delay` after it arrived, not after the previous one:
            // latency, not a slower line.
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match server_read.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                while let Some((arrived, bytes)) = rx.recv().await {
                    tokio::time::sleep_until((arrived + delay).into()).await;
                    if client_write.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Scheduling slack over one response timeout plus the loader, for a debug build on a busy
/// machine; small enough to tell one timeout (about 105 ms here) from three requests (245 ms).
const BUDGET_SLACK: Duration = Duration::from_millis(60);

/// Every request of a fetch counts against one response timeout: against a Redis that takes
/// 80 % of the timeout to answer each request, a cold fetch (read, lease request, fill) must
/// not take three of them. The read succeeds; the lease request gets what is left, times out,
/// and the fetch loads without a lease instead of waiting on Redis again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_spends_one_response_timeout_on_redis_in_all() {
    let server = RedisServer::start();
    let delay = RESPONSE * 8 / 10;
    let port = slow_proxy(server.port, delay).await;
    let h = Harness::connect(config(
        format!("redis://127.0.0.1:{port}"),
        "budget",
        Duration::from_millis(100),
    ))
    .await;
    // Connected (the handshake's round trips may outlast the first pings) and answering,
    // slowly, within the timeout.
    let deadline = Instant::now() + HANG;
    let took = loop {
        let ping = Instant::now();
        match h.cache.ping().await {
            Ok(()) => break ping.elapsed(),
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the slow Redis: {e}");
                // Polling interval of a loop with a deadline (HANG), not ordering.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            Err(e) => panic!("the slow Redis never answered a ping: {e}"),
        }
    };
    assert!(
        took >= delay,
        "the proxy did not delay the reply ({took:?})"
    );

    let mut worst = Duration::ZERO;
    for id in 1..=5 {
        worst = worst.max(h.fetch(id).await);
    }
    // Without the shared budget a cold fetch takes read + lease + fill = 3 x 80 ms + loader;
    // the bound leaves 60 ms of scheduling slack and stays well below that.
    assert!(
        worst <= RESPONSE + LOADER + BUDGET_SLACK,
        "a cold fetch took {worst:?} against a Redis answering in {delay:?} (response timeout \
         {RESPONSE:?}, loader {LOADER:?})"
    );
    assert_eq!(h.calls.load(Ordering::SeqCst), 5, "every cold fetch loaded");

    // fetch_many: the read, the lease requests and the fills share the timeout too. (Once the
    // breaker has closed, in case a timeout above opened it.)
    wait_until_breaker_closed(&h).await;
    let keys: Vec<ItemKey> = (100..110).map(|item_id| ItemKey { item_id }).collect();
    let started = Instant::now();
    let got = h
        .cache
        .fetch_many(&ITEM, &keys, |missing: Vec<ItemKey>| async move {
            // The load's own work, not ordering.
            tokio::time::sleep(LOADER).await;
            Ok::<_, Error>(missing.iter().map(|k| item(k.item_id)).collect())
        })
        .await
        .expect("fetch_many fails open");
    let took = started.elapsed();
    assert_eq!(
        got,
        keys.iter().map(|k| item(k.item_id)).collect::<Vec<_>>()
    );
    assert!(
        took <= RESPONSE + LOADER + BUDGET_SLACK,
        "a cold fetch_many took {took:?} against a Redis answering in {delay:?}"
    );
}

/// A dropped connection that comes back at once (CLIENT KILL) must not cost a whole retry
/// interval of misses: after the failure, a background ping lets requests through again as
/// soon as Redis answers. Here the retry interval is 5 s; caching must be back well before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_resumes_soon_after_a_dropped_connection_not_after_the_retry_interval() {
    let server = RedisServer::start();
    let retry = Duration::from_secs(5);
    let h = Harness::connect(config(server.url(), "probe", retry)).await;
    h.fetch(1).await;
    h.expect_hit(1).await;

    // Kill the connection while fetches run, until one of them has failed (and so opened
    // the breaker).
    let errors_before = h.cache.stats().errors;
    let deadline = Instant::now() + HANG;
    while h.cache.stats().errors == errors_before {
        assert!(
            Instant::now() < deadline,
            "no fetch failed after CLIENT KILL"
        );
        let load = {
            let h = h.clone();
            tokio::spawn(async move {
                for _ in 0..200 {
                    h.fetch(1).await;
                }
            })
        };
        raw_cmd(
            &server.url(),
            redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal"),
        )
        .await;
        load.await.expect("load task");
    }
    let failed_at = Instant::now();
    let took = h.wait_until_caching_resumes(1).await;
    let since_failure = failed_at.elapsed();
    eprintln!("caching resumed {took:?} after the failure (retry interval {retry:?})");
    assert!(
        since_failure < Duration::from_secs(1),
        "caching resumed only {since_failure:?} after a dropped connection (retry interval \
         {retry:?}): requests waited for the retry interval instead of a successful ping"
    );
}
