//! The local tier (`Strategy::local`) under faults, each on a private server or cluster: a
//! tracking connection killed, Redis restarted, frozen (SIGSTOP) or silently cut off, a
//! cluster master killed or failed over by hand. In each, a key changed while this process
//! could not hear of it is never served from the local tier once the loss was seen, fetches
//! keep working meanwhile, and the tier goes live again and serves the new value.
//!
//! Then the raced read, made deterministic with a proxy that holds the replies of the data
//! connection: a value read while its key's invalidation arrives is returned, not kept.
//!
//! Everything is ordered by events (stats, `local_live`, the proxy's reports), not by sleeps.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cacheobj::{Cache, CacheConfig, CacheKey, Strategy};
use serde::{Deserialize, Serialize};
use support::cluster::{query, RedisCluster};
use support::{entry_redis_key, raw_conn_to, unique_prefix, wait_until, RedisServer};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: u64,
    name: String,
}

#[derive(Debug, Clone, Serialize, CacheKey)]
struct ItemKey {
    item_id: u64,
}

const OBJ: Strategy<Item, ItemKey> = Strategy::obj("lf:<item_id>").expire(600).local(1_000);
/// A second local strategy, for [`drain`]: its own prefix, on the same tracking connection.
const MARK: Strategy<Item, ItemKey> = Strategy::obj("lfmark:<item_id>").expire(600).local(1_000);

/// Response timeout of the caches here: short, so that fail-open fetches are quick.
const RESPONSE: Duration = Duration::from_millis(300);
/// The tracking connections' heartbeat here.
const HEARTBEAT: Duration = Duration::from_millis(200);
/// How long anything here may take to happen (going live, a push arriving, a failover).
const LIVE: Duration = Duration::from_secs(20);
/// A fetch that takes longer than this hangs.
const HANG: Duration = Duration::from_secs(3);

fn item(id: u64, name: &str) -> Item {
    Item {
        id,
        name: name.to_owned(),
    }
}

fn key(id: u64) -> ItemKey {
    ItemKey { item_id: id }
}

fn config(url: String, prefix: &str, response: Duration) -> CacheConfig {
    CacheConfig::builder()
        .url(url)
        .prefix(prefix.to_owned())
        .response_timeout(response)
        .retry_interval(Duration::from_millis(200))
        .local_heartbeat(HEARTBEAT)
        .build()
}

async fn connect(config: CacheConfig) -> Cache {
    tokio::time::timeout(HANG, Cache::connect(config))
        .await
        .expect("Cache::connect hung")
        .expect("Cache::connect")
}

/// Fetches `strategy`'s item `id`; the loader (if it runs) returns `name`. Never hangs.
async fn fetch_from(
    cache: &Cache,
    strategy: &Strategy<Item, ItemKey>,
    id: u64,
    name: &str,
) -> Item {
    let name = name.to_owned();
    tokio::time::timeout(
        HANG,
        cache.fetch(strategy, &key(id), || async move {
            Ok::<_, std::io::Error>(item(id, &name))
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("fetch of {id} hung for {HANG:?}: {:?}", cache.stats()))
    .expect("the loader does not fail")
}

async fn fetch(cache: &Cache, id: u64, name: &str) -> Item {
    fetch_from(cache, &OBJ, id, name).await
}

/// Fetches until `id` is answered by the local tier, and checks that the value is `name`.
async fn warm_from(cache: &Cache, strategy: &Strategy<Item, ItemKey>, id: u64, name: &str) {
    let deadline = Instant::now() + LIVE;
    loop {
        let hits = cache.stats().local_hits;
        let got = fetch_from(cache, strategy, id, name).await;
        if cache.stats().local_hits > hits {
            assert_eq!(got, item(id, name), "the local tier holds another value");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no local hit within {LIVE:?}: {:?}",
            cache.stats()
        );
        tokio::task::yield_now().await;
    }
}

async fn warm(cache: &Cache, id: u64, name: &str) {
    warm_from(cache, &OBJ, id, name).await;
}

/// After a fault: waits until the tier is live again, then fetches until `id` is a local hit.
/// Every fetch must return `new` (what Redis holds, or what the loader gives for a missing
/// entry), never `old`. Returns how long after `since` the tier was seen live again.
async fn recovers(
    label: &str,
    cache: &Cache,
    id: u64,
    (old, new): (&str, &str),
    since: Instant,
) -> Duration {
    let first = fetch(cache, id, new).await;
    assert_ne!(
        first.name,
        old,
        "{label}: the old value was served: {:?}",
        cache.stats()
    );
    wait_until(&format!("{label}: the tier is live again"), LIVE, || {
        cache.local_live()
    })
    .await;
    let live_after = since.elapsed();
    let deadline = Instant::now() + LIVE;
    loop {
        let hits = cache.stats().local_hits;
        let got = fetch(cache, id, new).await;
        assert_ne!(
            got.name,
            old,
            "{label}: the old value was served: {:?}",
            cache.stats()
        );
        assert_eq!(got, item(id, new), "{label}");
        if cache.stats().local_hits > hits {
            return live_after;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: live again but no local hit within {LIVE:?}: {:?}",
            cache.stats()
        );
        tokio::task::yield_now().await;
    }
}

/// Whether a raw value is one of the library's entries (not missing, not a lease marker).
fn is_entry(value: &Option<Vec<u8>>) -> bool {
    value.as_ref().is_some_and(|v| !v.starts_with(b"\xC1"))
}

/// `GET` of a raw key on a standalone server.
async fn raw_get(url: &str, raw_key: &[u8]) -> Option<Vec<u8>> {
    let mut conn = raw_conn_to(url).await;
    redis::cmd("GET")
        .arg(raw_key)
        .query_async(&mut conn)
        .await
        .expect("GET")
}

/// Has `other` write `name` under `id` on the standalone server at `url`: fetches until the
/// entry is in Redis (a fetch right after a reconnect may fail open and write nothing).
async fn store(url: &str, other: &Cache, id: u64, name: &str) {
    let raw_key = entry_redis_key(other, &OBJ, &key(id));
    let deadline = Instant::now() + LIVE;
    loop {
        assert_eq!(fetch(other, id, name).await, item(id, name));
        if is_entry(&raw_get(url, &raw_key).await) {
            return;
        }
        assert!(Instant::now() < deadline, "the entry never landed");
        tokio::task::yield_now().await;
    }
}

/// The `id`s of the clients in a `CLIENT LIST` reply whose flags say tracking in BCAST mode
/// (`t` and `B`).
fn tracking_clients(list: &str) -> Vec<u64> {
    list.lines()
        .filter(|line| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix("flags="))
                .is_some_and(|flags| flags.contains('t') && flags.contains('B'))
        })
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix("id="))?
                .parse()
                .ok()
        })
        .collect()
}

async fn client_list(conn: &mut redis::aio::MultiplexedConnection) -> String {
    redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .expect("CLIENT LIST")
}

/// Waits until every tracking push sent so far has been handled: warms `MARK`'s item 1,
/// deletes it behind the library's back and waits until its invalidation removed it. Pushes
/// of one connection are handled in order, so every earlier one was handled too.
async fn drain(url: &str, cache: &Cache) {
    warm_from(cache, &MARK, 1, "mark").await;
    let mut raw = raw_conn_to(url).await;
    redis::cmd("DEL")
        .arg(entry_redis_key(cache, &MARK, &key(1)))
        .query_async::<()>(&mut raw)
        .await
        .expect("DEL");
    wait_until("the marker's invalidation arrives", LIVE, || {
        cache.local_len(&MARK) == 0
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Faults on a standalone server
// ---------------------------------------------------------------------------------------

/// `CLIENT KILL` of the tracking connection and a `DEL` of the key in one transaction: the
/// key changes after the connection is gone and before any new one could track. A reader
/// fetches the key all along: no fetch that starts after the flush may return the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tracking_connection_never_serves_what_changed_meanwhile() {
    let server = RedisServer::start();
    let prefix = unique_prefix("lf_kill");
    let cache = connect(config(server.url(), &prefix, RESPONSE)).await;
    warm(&cache, 1, "old").await;
    let mut raw = raw_conn_to(&server.url()).await;
    let tracking = tracking_clients(&client_list(&mut raw).await);
    assert_eq!(tracking.len(), 1, "one tracking connection: {tracking:?}");
    let flushes = cache.stats().local_flushes;

    // The reader: every fetch that starts once the flush is counted must not see "old".
    let stop = Arc::new(AtomicBool::new(false));
    let reads_after = Arc::new(AtomicU64::new(0));
    let reader = {
        let (cache, stop, reads_after) = (cache.clone(), stop.clone(), reads_after.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let after = cache.stats().local_flushes > flushes;
                let got = fetch(&cache, 1, "new").await;
                if after {
                    assert_ne!(
                        got.name,
                        "old",
                        "served after the flush: {:?}",
                        cache.stats()
                    );
                    reads_after.fetch_add(1, Ordering::SeqCst);
                }
                tokio::task::yield_now().await;
            }
        })
    };

    let killed_at = Instant::now();
    let (killed, deleted): (i64, i64) = redis::pipe()
        .atomic()
        .cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(tracking[0])
        .cmd("DEL")
        .arg(entry_redis_key(&cache, &OBJ, &key(1)))
        .query_async(&mut raw)
        .await
        .expect("MULTI CLIENT KILL ID, DEL, EXEC");
    assert_eq!((killed, deleted), (1, 1));
    wait_until("the lost connection flushes the tier", LIVE, || {
        cache.stats().local_flushes > flushes
    })
    .await;
    let noticed = killed_at.elapsed();
    let flushed_at = Instant::now();
    let live = recovers("CLIENT KILL", &cache, 1, ("old", "new"), flushed_at).await;
    // Let the reader see the tier live again too.
    let reads = reads_after.load(Ordering::SeqCst);
    wait_until("the reader reads on", LIVE, || {
        reads_after.load(Ordering::SeqCst) >= reads + 100
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    reader.await.expect("the reader never saw the old value");
    let stats = cache.stats();
    assert_eq!(stats.local_flushes, flushes + 1, "{stats:?}");
    let tracking = tracking_clients(&client_list(&mut raw).await);
    assert_eq!(
        tracking.len(),
        1,
        "one tracking connection again: {tracking:?}"
    );
    eprintln!(
        "CLIENT KILL: flushed {noticed:?} after the kill, live again {live:?} after that; \
         {} reader fetches after the flush; {stats:?}",
        reads_after.load(Ordering::SeqCst)
    );
}

/// Redis restarted without persistence: the entry is gone, and another client writes a new
/// value before this cache reads it again. While Redis is down, fetches fail open to the
/// loader and the tier stays off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_never_serves_the_value_from_before() {
    let mut server = RedisServer::start();
    let prefix = unique_prefix("lf_restart");
    let cache = connect(config(server.url(), &prefix, RESPONSE)).await;
    warm(&cache, 1, "old").await;
    let flushes = cache.stats().local_flushes;

    let stopped_at = Instant::now();
    tokio::task::block_in_place(|| server.stop());
    wait_until("the lost connection flushes the tier", LIVE, || {
        cache.stats().local_flushes > flushes
    })
    .await;
    let noticed = stopped_at.elapsed();
    assert!(!cache.local_live());
    let errors = cache.stats().errors;
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(
            fetch(&cache, 1, "down").await,
            item(1, "down"),
            "fails open"
        );
        assert!(
            started.elapsed() < RESPONSE + Duration::from_millis(500),
            "a fetch while Redis is down took {:?}",
            started.elapsed()
        );
    }
    assert!(cache.stats().errors > errors, "{:?}", cache.stats());
    assert!(!cache.local_live(), "live while Redis is down");

    tokio::task::block_in_place(|| server.restart());
    let restarted_at = Instant::now();
    let other = connect(config(server.url(), &prefix, Duration::from_secs(2))).await;
    store(&server.url(), &other, 1, "new").await;
    let live = recovers("restart", &cache, 1, ("old", "new"), restarted_at).await;
    let stats = cache.stats();
    assert!(stats.local_flushes > flushes, "{stats:?}");
    eprintln!(
        "restart: flushed {noticed:?} after the stop, live again {live:?} after the restart \
         (the new value written in between); {stats:?}"
    );
}

/// Redis frozen (SIGSTOP) past the response timeout: the heartbeat notices, the tier goes off,
/// fetches fail open; once it answers again another client overwrites the key with garbage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_is_noticed_by_the_heartbeat() {
    let server = RedisServer::start();
    let prefix = unique_prefix("lf_pause");
    let cache = connect(config(server.url(), &prefix, RESPONSE)).await;
    warm(&cache, 1, "old").await;
    let flushes = cache.stats().local_flushes;

    let paused_at = Instant::now();
    tokio::task::block_in_place(|| server.pause());
    wait_until("the heartbeat notices the frozen server", LIVE, || {
        !cache.local_live()
    })
    .await;
    let noticed = paused_at.elapsed();
    assert!(cache.stats().local_flushes > flushes, "{:?}", cache.stats());
    // A PING every HEARTBEAT, each given RESPONSE to answer.
    assert!(
        noticed < HEARTBEAT + RESPONSE + Duration::from_secs(1),
        "the heartbeat took {noticed:?} to notice"
    );
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(
            fetch(&cache, 1, "down").await,
            item(1, "down"),
            "fails open"
        );
        assert!(
            started.elapsed() < RESPONSE + Duration::from_millis(500),
            "a fetch while Redis is frozen took {:?}",
            started.elapsed()
        );
    }
    assert!(!cache.local_live(), "live while Redis is frozen");

    tokio::task::block_in_place(|| server.resume());
    let resumed_at = Instant::now();
    let mut raw = raw_conn_to(&server.url()).await;
    redis::cmd("SET")
        .arg(entry_redis_key(&cache, &OBJ, &key(1)))
        .arg(b"\x93garbage".as_slice())
        .query_async::<()>(&mut raw)
        .await
        .expect("SET");
    let undecodable = cache.stats().undecodable;
    let live = recovers("SIGSTOP", &cache, 1, ("old", "new"), resumed_at).await;
    let stats = cache.stats();
    assert!(
        stats.undecodable > undecodable,
        "the garbage was read: {stats:?}"
    );
    eprintln!(
        "SIGSTOP: the heartbeat noticed {noticed:?} after the pause, live again {live:?} after \
         SIGCONT (the garbage written in between); {stats:?}"
    );
}

// ---------------------------------------------------------------------------------------
// A proxy that can hold what Redis sends on chosen connections
// ---------------------------------------------------------------------------------------

/// What the proxy reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyEvent {
    /// The armed hold caught connection `n`: its request naming `PTTL` went on to Redis,
    /// whatever Redis sends back on it is held.
    Armed(usize),
    /// Bytes from Redis for connection `n` arrived and are held.
    Holding(usize),
}

/// One proxied connection.
struct Link {
    /// It sent `CLIENT TRACKING`: a tracking connection.
    tracking: AtomicBool,
    /// Whether what Redis sends on it is held.
    hold: tokio::sync::watch::Sender<bool>,
}

struct ProxyShared {
    /// Hold the replies of the next connection that sends `PTTL` (a local-miss read: the
    /// tracking connections never send it).
    armed: AtomicBool,
    links: std::sync::Mutex<Vec<Arc<Link>>>,
    events: tokio::sync::mpsc::UnboundedSender<ProxyEvent>,
}

/// A TCP proxy in front of a redis-server on loopback: the cache connects to it, data and
/// tracking connections alike; another client goes to the server directly.
struct Proxy {
    port: u16,
    shared: Arc<ProxyShared>,
    events: tokio::sync::mpsc::UnboundedReceiver<ProxyEvent>,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(ProxyShared {
            armed: AtomicBool::new(false),
            links: std::sync::Mutex::new(Vec::new()),
            events: tx,
        });
        let accepting = shared.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    continue; // the client sees its connection closed
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let link = Arc::new(Link {
                    tracking: AtomicBool::new(false),
                    hold: tokio::sync::watch::channel(false).0,
                });
                let n = {
                    let mut links = accepting.links.lock().expect("links");
                    links.push(link.clone());
                    links.len() - 1
                };
                tokio::spawn(Proxy::pump(n, client, server, link, accepting.clone()));
            }
        });
        Proxy {
            port,
            shared,
            events,
        }
    }

    async fn pump(
        n: usize,
        client: tokio::net::TcpStream,
        server: tokio::net::TcpStream,
        link: Arc<Link>,
        shared: Arc<ProxyShared>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let mut hold = link.hold.subscribe();
        let (up_link, up_shared) = (link.clone(), shared.clone());
        let up = async move {
            let mut buf = vec![0u8; 64 * 1024];
            // The last bytes of the previous chunk, for a command name split across reads.
            let mut tail: Vec<u8> = Vec::new();
            loop {
                let got = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(got) => got,
                };
                let mut window = std::mem::take(&mut tail);
                window.extend_from_slice(&buf[..got]);
                if contains(&window, b"\r\nTRACKING\r\n") {
                    up_link.tracking.store(true, Ordering::SeqCst);
                }
                // Held before the request goes on, so its reply cannot slip through.
                if contains(&window, b"\r\nPTTL\r\n")
                    && up_shared.armed.swap(false, Ordering::SeqCst)
                {
                    up_link.hold.send_replace(true);
                    let _ = up_shared.events.send(ProxyEvent::Armed(n));
                }
                if server_write.write_all(&buf[..got]).await.is_err() {
                    break;
                }
                tail = window[window.len().saturating_sub(16)..].to_vec();
            }
            let _ = server_write.shutdown().await;
        };
        let down = async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let got = match server_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(got) => got,
                };
                if *hold.borrow_and_update() {
                    let _ = shared.events.send(ProxyEvent::Holding(n));
                    if hold.wait_for(|held| !*held).await.is_err() {
                        break;
                    }
                }
                if client_write.write_all(&buf[..got]).await.is_err() {
                    break;
                }
            }
            let _ = client_write.shutdown().await;
        };
        tokio::join!(up, down);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Holds whatever Redis sends on the next connection that sends a `PTTL`.
    fn arm(&self) {
        self.shared.armed.store(true, Ordering::SeqCst);
    }

    /// Holds whatever Redis sends on every tracking connection open now: they are cut off
    /// silently (no close, no error), pushes and heartbeat replies alike. Returns how many.
    fn cut_tracking(&self) -> usize {
        let links = self.shared.links.lock().expect("links");
        let mut cut = 0;
        for link in links.iter().filter(|l| l.tracking.load(Ordering::SeqCst)) {
            if !link.hold.is_closed() {
                link.hold.send_replace(true);
                cut += 1;
            }
        }
        cut
    }

    /// Passes on everything held, and holds nothing more.
    fn release(&self) {
        for link in self.shared.links.lock().expect("links").iter() {
            link.hold.send_replace(false);
        }
    }

    /// The next event, within [`LIVE`].
    async fn next(&mut self) -> ProxyEvent {
        tokio::time::timeout(LIVE, self.events.recv())
            .await
            .expect("no proxy event within LIVE")
            .expect("the proxy stopped")
    }
}

// ---------------------------------------------------------------------------------------
// The raced read, and a silent cut, through the proxy
// ---------------------------------------------------------------------------------------

/// A cache through `proxy` (a response timeout long enough to hold its reads) and `other`
/// straight to `server`, on one prefix; the cache's tier is live with `OBJ` and `MARK`
/// tracked, `OBJ` holds nothing locally, and item 1 is `old` in Redis.
async fn raced_setup(server: &RedisServer, proxy: &Proxy, test: &str) -> (Cache, Cache) {
    let prefix = unique_prefix(test);
    let cache = connect(config(proxy.url(), &prefix, Duration::from_secs(5))).await;
    let other = connect(config(server.url(), &prefix, Duration::from_secs(2))).await;
    // A fill is not kept: this registers OBJ's prefix without holding anything.
    assert_eq!(fetch(&cache, 2, "two").await, item(2, "two"));
    store(&server.url(), &other, 1, "old").await;
    // Every push so far (the fills' included) is handled before the read's ticket is taken.
    drain(&server.url(), &cache).await;
    assert!(cache.local_live());
    assert_eq!(cache.local_len(&OBJ), 0);
    (cache, other)
}

/// Starts a fetch of item 1 and returns once its `GET`+`PTTL` reached Redis and the reply is
/// held by the proxy.
async fn held_fetch(proxy: &mut Proxy, cache: &Cache) -> tokio::task::JoinHandle<Item> {
    proxy.arm();
    let reading = {
        let cache = cache.clone();
        tokio::spawn(async move { fetch(&cache, 1, "loaded").await })
    };
    let ProxyEvent::Armed(link) = proxy.next().await else {
        panic!("the proxy held something else first");
    };
    assert_eq!(proxy.next().await, ProxyEvent::Holding(link));
    reading
}

/// "If the invalidation for a key arrives while its GET is on the wire, the value read is
/// returned but not kept": the reply is held until the write's push was handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_raced_by_an_invalidation_is_returned_not_kept() {
    let server = RedisServer::start();
    let mut proxy = Proxy::start(server.port).await;
    let (cache, other) = raced_setup(&server, &proxy, "lf_raced").await;
    let reading = held_fetch(&mut proxy, &cache).await;

    let invalidations = cache.stats().local_invalidations;
    other.invalidate(&OBJ, &key(1)).await.expect("invalidate");
    store(&server.url(), &other, 1, "new").await;
    wait_until("the write's invalidation arrives", LIVE, || {
        cache.stats().local_invalidations > invalidations
    })
    .await;
    proxy.release();

    let read = reading.await.expect("the raced fetch");
    assert_eq!(read, item(1, "old"), "the fetch returns what it read");
    assert_eq!(cache.local_len(&OBJ), 0, "the raced read was kept");
    let hits = cache.stats().local_hits;
    assert_eq!(fetch(&cache, 1, "loaded").await, item(1, "new"));
    assert_eq!(cache.stats().local_hits, hits, "served locally");
}

/// The control: the same held read with no write in between is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_read_with_no_write_in_between_is_kept() {
    let server = RedisServer::start();
    let mut proxy = Proxy::start(server.port).await;
    let (cache, _other) = raced_setup(&server, &proxy, "lf_held").await;
    let reading = held_fetch(&mut proxy, &cache).await;
    proxy.release();

    let read = reading.await.expect("the held fetch");
    assert_eq!(read, item(1, "old"));
    assert_eq!(cache.local_len(&OBJ), 1, "the read was not kept");
    let hits = cache.stats().local_hits;
    assert_eq!(fetch(&cache, 1, "loaded").await, item(1, "old"));
    assert_eq!(cache.stats().local_hits, hits + 1, "not served locally");
}

/// The tracking connection cut off silently (nothing it is sent gets through, nothing
/// closes), while another client changes the key: the old copy may be served until the
/// heartbeat notices, which bounds it; never after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_cut_tracking_connection_is_noticed_by_the_heartbeat() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port).await;
    let prefix = unique_prefix("lf_cut");
    let cache = connect(config(proxy.url(), &prefix, RESPONSE)).await;
    let other = connect(config(server.url(), &prefix, Duration::from_secs(2))).await;
    warm(&cache, 1, "old").await;
    let flushes = cache.stats().local_flushes;

    assert_eq!(proxy.cut_tracking(), 1, "one tracking connection to cut");
    let cut_at = Instant::now();
    other.invalidate(&OBJ, &key(1)).await.expect("invalidate");
    store(&server.url(), &other, 1, "new").await;
    let written = cut_at.elapsed();
    let (mut stale, mut fetches) = (0u64, 0u64);
    while cache.stats().local_flushes == flushes {
        if fetch(&cache, 1, "new").await.name == "old" {
            stale += 1;
        }
        fetches += 1;
        assert!(
            cut_at.elapsed() < LIVE,
            "the cut was never noticed: {:?}",
            cache.stats()
        );
        tokio::task::yield_now().await;
    }
    let noticed = cut_at.elapsed();
    assert!(
        noticed < HEARTBEAT + RESPONSE + Duration::from_secs(1),
        "the heartbeat took {noticed:?} to notice"
    );
    let live = recovers("silent cut", &cache, 1, ("old", "new"), Instant::now()).await;
    proxy.release();
    eprintln!(
        "silent cut: written {written:?} after the cut, noticed {noticed:?} after it, live again \
         {live:?} after that; {stale} of {fetches} fetches in between served the old copy; {:?}",
        cache.stats()
    );
}

// ---------------------------------------------------------------------------------------
// Faults on a cluster with replicas
// ---------------------------------------------------------------------------------------

fn cluster_config(nodes: Vec<String>, prefix: &str, response: Duration) -> CacheConfig {
    CacheConfig::builder()
        .nodes(nodes)
        .prefix(prefix.to_owned())
        .response_timeout(response)
        .retry_interval(Duration::from_millis(200))
        .local_heartbeat(HEARTBEAT)
        .build()
}

fn text(value: redis::Value) -> String {
    redis::from_redis_value(value).expect("a text reply")
}

/// The port of the master serving `raw_key`, and that master's node id. Asks until the node
/// asked agrees: right after the replicas are attached, a node can still list a replica as the
/// owner of its old master's slots (seen on Valkey 8.1).
fn owner_of(cluster: &RedisCluster, raw_key: &[u8]) -> (u16, String) {
    let port = cluster.live_ports()[0];
    let slot: i64 = redis::from_redis_value(
        query(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(raw_key)).expect("KEYSLOT"),
    )
    .expect("a slot");
    let started = Instant::now();
    loop {
        let owner = cluster.masters().into_iter().find(|m| {
            m.slots
                .iter()
                .any(|&(a, b)| (i64::from(a)..=i64::from(b)).contains(&slot))
        });
        if let Some(owner) = owner {
            return (owner.port, owner.id);
        }
        assert!(
            started.elapsed() < LIVE,
            "no master serves slot {slot}: {}",
            cluster.describe()
        );
        std::thread::yield_now();
    }
}

/// The port of a replica of the master `master_id`, asked until the node asked lists one (its
/// view can lag right after the replicas are attached).
fn replica_of(cluster: &RedisCluster, master_id: &str) -> u16 {
    let port = cluster.live_ports()[0];
    let started = Instant::now();
    loop {
        let replicas: Vec<String> = redis::from_redis_value(
            query(port, redis::cmd("CLUSTER").arg("REPLICAS").arg(master_id)).expect("REPLICAS"),
        )
        .expect("lines");
        let found = replicas.iter().find_map(|line| {
            let addr = line.split_whitespace().nth(1)?.split('@').next()?;
            addr.rsplit(':').next()?.parse().ok()
        });
        if let Some(found) = found {
            return found;
        }
        assert!(
            started.elapsed() < LIVE,
            "master {master_id} has no replica: {replicas:?}"
        );
        std::thread::yield_now();
    }
}

/// How many tracking (BCAST) clients each live node has, by port.
fn tracking_per_node(cluster: &RedisCluster) -> Vec<(u16, usize)> {
    cluster
        .live_ports()
        .into_iter()
        .map(|port| {
            let list = text(query(port, redis::cmd("CLIENT").arg("LIST")).expect("CLIENT LIST"));
            (port, tracking_clients(&list).len())
        })
        .collect()
}

/// Waits until the tier is live with a tracking connection on each of the six nodes, and
/// returns how long that took. Redis (7.0 and later) leaves a replica out of `CLUSTER SLOTS`
/// until it has replicated something (its offset is 0), so on a fresh cluster the tier first
/// tracks the masters only; `other` writes an entry to every master, and the tier's
/// heartbeat sees the replicas appear (a new node set: a flush, and a new session).
async fn wait_until_every_node_tracks(
    cluster: &RedisCluster,
    cache: &Cache,
    other: &Cache,
) -> Duration {
    let started = Instant::now();
    for id in 100..130 {
        fetch(other, id, "spread").await;
    }
    loop {
        let tracking = tokio::task::block_in_place(|| tracking_per_node(cluster));
        if cache.local_live() && tracking.len() == 6 && tracking.iter().all(|&(_, n)| n >= 1) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < LIVE,
            "the replicas are never tracked: {tracking:?}, {:?}",
            cache.stats()
        );
        tokio::task::yield_now().await;
    }
}

/// Has `other` write `name` under `id` on the cluster: invalidates (until the cluster
/// answers), then fetches until the entry is on the master serving it.
async fn store_on_cluster(cluster: &RedisCluster, other: &Cache, id: u64, name: &str) {
    let raw_key = entry_redis_key(other, &OBJ, &key(id));
    let deadline = Instant::now() + LIVE;
    while let Err(e) = other.invalidate(&OBJ, &key(id)).await {
        assert!(Instant::now() < deadline, "invalidate keeps failing: {e:?}");
        tokio::task::yield_now().await;
    }
    loop {
        assert_eq!(fetch(other, id, name).await, item(id, name));
        let stored = tokio::task::block_in_place(|| {
            cluster
                .query_key(redis::cmd("GET").arg(&raw_key), &raw_key)
                .ok()
                .and_then(|v| redis::from_redis_value::<Option<Vec<u8>>>(v).ok())
                .flatten()
        });
        if is_entry(&stored) {
            return;
        }
        assert!(Instant::now() < deadline, "the entry never landed");
        tokio::task::yield_now().await;
    }
}

/// The master serving the key is killed: its tracking connection closes, the tier flushes
/// and stays off until the promoted replica is tracked too; another cache then changes the
/// key through the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_master_never_serves_what_changed_meanwhile() {
    let mut cluster = tokio::task::spawn_blocking(RedisCluster::start_with_replicas)
        .await
        .expect("start the cluster");
    let prefix = unique_prefix("lf_master");
    let cache = connect(cluster_config(cluster.nodes(), &prefix, RESPONSE)).await;
    let other = connect(cluster_config(
        cluster.nodes(),
        &prefix,
        Duration::from_secs(2),
    ))
    .await;
    fetch(&cache, 1, "old").await;
    let all_tracked = wait_until_every_node_tracks(&cluster, &cache, &other).await;
    warm(&cache, 1, "old").await;
    let raw_key = entry_redis_key(&cache, &OBJ, &key(1));
    let (owner, _) = tokio::task::block_in_place(|| owner_of(&cluster, &raw_key));
    let on_owner = (2..)
        .find(|&id| {
            let raw_key = entry_redis_key(&cache, &OBJ, &key(id));
            tokio::task::block_in_place(|| owner_of(&cluster, &raw_key)).0 == owner
        })
        .expect("an item on the same master");
    let flushes = cache.stats().local_flushes;

    let killed_at = Instant::now();
    tokio::task::block_in_place(|| cluster.kill_port(owner));
    wait_until("the lost connection flushes the tier", LIVE, || {
        cache.stats().local_flushes > flushes
    })
    .await;
    let noticed = killed_at.elapsed();
    // Fetches go on while the cluster fails over: of another item on the killed master (not
    // item 1: a read of item 1 once the tier is live again could keep the old value,
    // legitimately, until the write), failing open to the loader.
    let errors = cache.stats().errors;
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(
            fetch(&cache, on_owner, "down").await,
            item(on_owner, "down")
        );
        worst = worst.max(started.elapsed());
    }
    assert!(cache.stats().errors > errors, "{:?}", cache.stats());
    assert!(!cache.local_live(), "live before the failover");
    let failover = tokio::task::block_in_place(|| cluster.wait_for_failover(LIVE))
        .unwrap_or_else(|e| panic!("{e}"));
    let failed_over_at = Instant::now();
    store_on_cluster(&cluster, &other, 1, "new").await;
    let live = recovers("master killed", &cache, 1, ("old", "new"), failed_over_at).await;
    let stats = cache.stats();
    assert!(stats.local_flushes > flushes, "{stats:?}");
    let tracking = tokio::task::block_in_place(|| tracking_per_node(&cluster));
    assert!(
        tracking.len() == 5 && tracking.iter().all(|&(_, n)| n >= 1),
        "every live node tracks again: {tracking:?}"
    );
    eprintln!(
        "master killed: flushed {noticed:?} after the kill; failover took {failover:?} more \
         (fetches meanwhile of an item on that master failed open, the slowest in {worst:?}); live again {live:?} after \
         the failover; every node tracked {all_tracked:?} after the first fetch; {stats:?}"
    );
}

/// Waits for an invalidation of `OBJ`'s item 1 (under `prefix`) on a tracking connection of
/// the test's own.
async fn next_invalidation(
    pushes: &mut tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    prefix: &str,
) {
    let wanted = format!("{prefix}lf:1").into_bytes();
    let names_item_1 = |push: &redis::PushInfo| {
        push.kind == redis::PushKind::Invalidate
            && matches!(push.data.first(), Some(redis::Value::Array(keys))
                if keys.contains(&redis::Value::BulkString(wanted.clone())))
    };
    tokio::time::timeout(LIVE, async {
        while let Some(push) = pushes.recv().await {
            if names_item_1(&push) {
                return;
            }
        }
        panic!("the test's tracking connection closed");
    })
    .await
    .expect("no invalidation of item 1 on the test's tracking connection");
}

/// A manual failover (`CLUSTER FAILOVER` on a replica): no connection closes and the node set
/// stays the same, so the session goes on, and the tier only stays coherent if the promoted
/// replica's tracking connection announces the writes it now takes as a master. A tracking
/// connection of the test's own, on that replica, checks Redis's side of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_announces_the_writes_it_takes() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start_with_replicas)
        .await
        .expect("start the cluster");
    let prefix = unique_prefix("lf_promoted");
    let cache = connect(cluster_config(cluster.nodes(), &prefix, RESPONSE)).await;
    let other = connect(cluster_config(
        cluster.nodes(),
        &prefix,
        Duration::from_secs(2),
    ))
    .await;
    let raw_key = entry_redis_key(&cache, &OBJ, &key(1));
    let (owner, owner_id) = tokio::task::block_in_place(|| owner_of(&cluster, &raw_key));
    let replica = tokio::task::block_in_place(|| replica_of(&cluster, &owner_id));

    fetch(&cache, 1, "old").await;
    let all_tracked = wait_until_every_node_tracks(&cluster, &cache, &other).await;
    // The test's own BCAST tracking connection on the replica.
    let (pushes_tx, mut pushes) = tokio::sync::mpsc::unbounded_channel::<redis::PushInfo>();
    let client = redis::Client::open(format!("redis://127.0.0.1:{replica}/?protocol=resp3"))
        .expect("a client");
    let mut own = client
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_push_sender(pushes_tx),
        )
        .await
        .expect("connect to the replica");
    redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("BCAST")
        .arg("PREFIX")
        .arg(&prefix)
        .query_async::<()>(&mut own)
        .await
        .expect("CLIENT TRACKING on the replica");
    // A replica announces the writes it replicates...
    store_on_cluster(&cluster, &other, 1, "old").await;
    next_invalidation(&mut pushes, &prefix).await;
    warm(&cache, 1, "old").await;
    let flushes = cache.stats().local_flushes;

    let reply = tokio::task::block_in_place(|| {
        query(replica, redis::cmd("CLUSTER").arg("FAILOVER")).expect("CLUSTER FAILOVER")
    });
    assert_eq!(reply, redis::Value::Okay);
    let started = Instant::now();
    loop {
        let (now, _) = tokio::task::block_in_place(|| owner_of(&cluster, &raw_key));
        if now == replica {
            break;
        }
        assert!(started.elapsed() < LIVE, "the replica was never promoted");
        tokio::task::yield_now().await;
    }
    let promoted = started.elapsed();
    assert!(cache.local_live(), "{:?}", cache.stats());
    assert_eq!(cache.local_len(&OBJ), 1, "{:?}", cache.stats());

    // ... and, promoted, the writes it takes. The pushes of the writes before the failover
    // came before the reply to this PING: drop them.
    redis::cmd("PING")
        .query_async::<()>(&mut own)
        .await
        .expect("PING");
    while pushes.try_recv().is_ok() {}
    while let Err(e) = other.invalidate(&OBJ, &key(1)).await {
        assert!(started.elapsed() < LIVE, "invalidate keeps failing: {e:?}");
        tokio::task::yield_now().await;
    }
    let written_at = Instant::now();
    next_invalidation(&mut pushes, &prefix).await;
    wait_until("the invalidation arrives", LIVE, || {
        cache.local_len(&OBJ) == 0
    })
    .await;
    let arrived = written_at.elapsed();
    let stats = cache.stats();
    assert_eq!(
        stats.local_flushes, flushes,
        "the session was lost (so this tested no announcement): {stats:?} (owner was {owner})"
    );
    assert!(cache.local_live());
    assert_eq!(fetch(&cache, 1, "new").await, item(1, "new"));
    eprintln!(
        "manual failover: every node tracked {all_tracked:?} after the first fetch; promoted in \
         {promoted:?}, the session kept; the invalidation through \
         the promoted replica arrived {arrived:?} after the write; {stats:?}"
    );
}

// ---------------------------------------------------------------------------------------
// A server that cannot track for us
// ---------------------------------------------------------------------------------------

/// A user without `CLIENT`: tracking cannot be turned on, so the tier falls back (said in
/// `Stats::local_fallback`), never goes live, and fetches go to Redis as without `local`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_client_tracking_the_tier_falls_back_to_redis() {
    let server = RedisServer::start();
    let mut raw = raw_conn_to(&server.url()).await;
    redis::cmd("ACL")
        .arg(&["SETUSER", "u", "on", ">pw", "~*", "&*", "+@all", "-client"])
        .query_async::<()>(&mut raw)
        .await
        .expect("ACL SETUSER");
    let url = format!("redis://u:pw@127.0.0.1:{}/", server.port);
    let cache = connect(config(
        url,
        &unique_prefix("lf_acl"),
        Duration::from_secs(2),
    ))
    .await;
    let loads = AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>(item(1, "one"))
    };
    assert_eq!(
        cache.fetch(&OBJ, &key(1), load).await.unwrap(),
        item(1, "one")
    );
    wait_until("the tier falls back", LIVE, || cache.stats().local_fallback).await;
    for _ in 0..20 {
        assert_eq!(
            cache.fetch(&OBJ, &key(1), load).await.unwrap(),
            item(1, "one")
        );
    }
    let stats = cache.stats();
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "the entry is read from Redis: {stats:?}"
    );
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert_eq!(stats.hits, 20, "{stats:?}");
    assert_eq!(stats.local_hits, 0, "{stats:?}");
    assert!(!cache.local_live());
    assert_eq!(cache.local_len(&OBJ), 0);
}

/// `calls=` of `command` (say `client|tracking`) in `INFO commandstats` of the node on `port`.
fn calls(port: u16, command: &str) -> u64 {
    let info = text(query(port, redis::cmd("INFO").arg("commandstats")).expect("INFO"));
    support::command_calls(&info)
        .into_iter()
        .find_map(|(name, calls)| (name == command).then_some(calls))
        .unwrap_or(0)
}

/// How many tracking sessions began on the node on `port`: its `CLIENT TRACKING` calls, or on
/// Redis 6.2, which counts `CLIENT`'s subcommands together (with the `CLIENT SETINFO` of each
/// connection this test opens), its `HELLO` calls: each session opens its RESP3 connection with
/// one, and nothing else here speaks RESP3.
fn tracking_sessions(port: u16) -> u64 {
    let info = text(query(port, redis::cmd("INFO").arg("server")).expect("INFO"));
    let version = info
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("redis_version:"))
        .expect("INFO server has redis_version")
        .to_owned();
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("redis_version:{version}"));
    if major >= 7 {
        calls(port, "client|tracking")
    } else {
        calls(port, "hello")
    }
}

/// A cluster whose `CLUSTER SLOTS` lists no node (no slot assigned yet): there is nothing to
/// track, so the tier must not go live; once the slots are assigned it tracks the node and
/// invalidations arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_lists_no_node_is_not_live_on_no_connection() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start_without_slots)
        .await
        .expect("start the node");
    let port = cluster.live_ports()[0];
    let prefix = unique_prefix("lf_noslots");
    let cache = connect(cluster_config(cluster.nodes(), &prefix, RESPONSE)).await;
    // CLUSTERDOWN: fails open, and starts the tier.
    assert_eq!(fetch(&cache, 1, "down").await, item(1, "down"));
    // The tier's first session found no node; it must try again rather than go live.
    let started = Instant::now();
    while tokio::task::block_in_place(|| tracking_sessions(port)) < 2 {
        assert!(
            started.elapsed() < LIVE,
            "the tier never looked at the cluster again (live: {}): {:?}",
            cache.local_live(),
            cache.stats()
        );
        tokio::task::yield_now().await;
    }
    assert!(!cache.local_live(), "live with no tracking connection");

    // ADDSLOTS with every slot, not ADDSLOTSRANGE, which Redis 6.2 has not.
    let reply = tokio::task::block_in_place(|| {
        query(
            port,
            redis::cmd("CLUSTER")
                .arg("ADDSLOTS")
                .arg((0..16384).collect::<Vec<u16>>()),
        )
        .expect("ADDSLOTS")
    });
    assert_eq!(reply, redis::Value::Okay);
    tokio::task::block_in_place(|| cluster.wait_for_failover(LIVE)).expect("the node serves");
    let other = connect(cluster_config(
        cluster.nodes(),
        &prefix,
        Duration::from_secs(2),
    ))
    .await;
    warm(&cache, 1, "old").await;
    let tracking = tokio::task::block_in_place(|| tracking_per_node(&cluster));
    assert_eq!(tracking, vec![(port, 1)]);
    while let Err(e) = other.invalidate(&OBJ, &key(1)).await {
        assert!(started.elapsed() < LIVE, "invalidate keeps failing: {e:?}");
        tokio::task::yield_now().await;
    }
    wait_until("the invalidation arrives", LIVE, || {
        cache.local_len(&OBJ) == 0
    })
    .await;
    assert_eq!(fetch(&cache, 1, "new").await, item(1, "new"));
}
