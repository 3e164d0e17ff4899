//! Hostile bytes under cache keys and hostile key fields.
//!
//! Whatever another program (or an attacker with write access to Redis) puts under a key —
//! random bytes, truncated MessagePack, another Redis type, a header declaring a 4 GiB string,
//! array or map, a recursion bomb — a fetch is a miss: the loader's value is returned, the entry
//! is overwritten, nothing panics, and decoding allocates no more than the reply warrants
//! (checked with a counting global allocator). A key field of 1 MB renders to
//! `KeyError::TooLong`, mutations return `Error::Key`, fetch fails open, and no such key ever
//! reaches Redis. Every test starts its own `redis-server`.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Debug;
use std::process::Command;
use std::sync::atomic::Ordering;

use cacheobj::{
    Cache, CacheConfig, CacheKey, CacheValue, Codec, Counter, Error, Hash, KeyError, Kind, List,
    Set, Strategy,
};
use cacheobj_strategies::{Item, ItemKey, ITEM, ITEM_HASH, ITEM_MEMBERS, ITEM_STAT, ITEM_TAGS};
use proptest::collection::vec;
use proptest::prelude::any;
use proptest::test_runner::{Config, TestRunner};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use support::RedisServer;

// ---------------------------------------------------------------------------------------------
// A global allocator that records the largest single allocation made by the current thread
// while tracking is on.
// ---------------------------------------------------------------------------------------------

struct Counting;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: never panic inside the allocator, even while a thread is being torn down.
    if TRACKING.try_with(Cell::get).unwrap_or(false) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the bookkeeping only reads
// and writes const-initialized thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result and the largest single allocation it made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    TRACKING.with(|t| t.set(true));
    let out = f();
    TRACKING.with(|t| t.set(false));
    (out, LARGEST.with(Cell::get))
}

/// The most a ~10-byte hostile value may make the cache allocate at once.
const ALLOCATION_LIMIT: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// Raw bytes: written as they are by counter, list and set strategies (their text encoding
/// writes `serialize_bytes` verbatim), so a `Raw` strategy sharing a template with another
/// strategy plants arbitrary bytes under that strategy's key, on either backend.
#[derive(Debug, Clone, PartialEq)]
struct Raw(Vec<u8>);

// Not an integer: on purpose, so that a counter strategy plants any bytes.
impl cacheobj::CounterValue for Raw {}

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

/// A recursive value type (a tree, a JSON-like document): where a recursion bomb bites.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tree {
    children: Vec<Tree>,
}

/// A recursive enum: in MessagePack it nests without arrays (`{"Next": {"Next": ...}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Chain {
    End,
    Next(Box<Chain>),
}

const TREE: Strategy<Tree, ItemKey> = Strategy::<Tree, ItemKey>::obj("tree:<item_id>");
const CHAIN: Strategy<Chain, ItemKey> = Strategy::<Chain, ItemKey>::obj("chain:<item_id>");
const TREE_POSTCARD: Strategy<Tree, ItemKey> =
    Strategy::<Tree, ItemKey>::obj("tree_pc:<item_id>").codec(Codec::Postcard);
const NAME: Strategy<String, ItemKey> = Strategy::<String, ItemKey>::obj("name:<item_id>");
const NUMBERS: Strategy<Vec<u64>, ItemKey> =
    Strategy::<Vec<u64>, ItemKey>::obj("numbers:<item_id>");
const NUMBERS_POSTCARD: Strategy<Vec<u64>, ItemKey> =
    Strategy::<Vec<u64>, ItemKey>::obj("numbers_pc:<item_id>").codec(Codec::Postcard);
const POSTCARD_ITEM: Strategy<Item, ItemKey> =
    Strategy::<Item, ItemKey>::obj("pc:<item_id>").codec(Codec::Postcard);
const ITEM_LIST: Strategy<Vec<Item>, ItemKey, List> = Strategy::list("item_list:<item_id>");

// Raw strategies sharing the templates above (counters store strings, like obj strategies).
const RAW_ITEM: Strategy<Raw, ItemKey, Counter> = Strategy::counter("item:<item_id>");
const RAW_TREE: Strategy<Raw, ItemKey, Counter> = Strategy::counter("tree:<item_id>");
const RAW_CHAIN: Strategy<Raw, ItemKey, Counter> = Strategy::counter("chain:<item_id>");
const RAW_TREE_POSTCARD: Strategy<Raw, ItemKey, Counter> = Strategy::counter("tree_pc:<item_id>");
const RAW_NAME: Strategy<Raw, ItemKey, Counter> = Strategy::counter("name:<item_id>");
const RAW_NUMBERS: Strategy<Raw, ItemKey, Counter> = Strategy::counter("numbers:<item_id>");
const RAW_NUMBERS_POSTCARD: Strategy<Raw, ItemKey, Counter> =
    Strategy::counter("numbers_pc:<item_id>");
const RAW_POSTCARD_ITEM: Strategy<Raw, ItemKey, Counter> = Strategy::counter("pc:<item_id>");

fn item(id: u64) -> Item {
    Item {
        id,
        name: format!("fresh-{id}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn redis_cache(server: &RedisServer, prefix: &str) -> Cache {
    let cache = Cache::connect(
        CacheConfig::builder()
            .url(server.url())
            .prefix(prefix)
            .response_timeout(std::time::Duration::from_secs(2))
            .build(),
    )
    .await
    .expect("Cache::connect");
    cache.ping().await.expect("own redis answers");
    cache
}

async fn conn(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    support::raw_conn_to(&server.url()).await
}

async fn raw(server: &RedisServer, args: &[&[u8]]) -> redis::Value {
    let mut c = conn(server).await;
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(args[0])))
}

fn key_of<V, Kd: Kind>(cache: &Cache, s: &Strategy<V, ItemKey, Kd>, id: u64) -> Vec<u8> {
    cache.entry_key(s, &ItemKey { item_id: id }).unwrap().key
}

/// Fetches `key` with a loader returning `value`; returns what fetch returned and whether the
/// loader ran.
async fn fetch_counting<V, Kd>(
    cache: &Cache,
    strategy: &Strategy<V, ItemKey, Kd>,
    id: u64,
    value: V,
) -> (V, bool)
where
    Kd: Kind,
    V: CacheValue<Kd> + Clone,
{
    let ran = std::sync::atomic::AtomicBool::new(false);
    let got = cache
        .fetch(strategy, &ItemKey { item_id: id }, || async {
            ran.store(true, Ordering::SeqCst);
            Ok::<_, std::io::Error>(value.clone())
        })
        .await
        .expect("the loader never fails");
    (got, ran.load(Ordering::SeqCst))
}

/// The hostile entry must be a miss: the loader's value comes back, counted as undecodable,
/// and the next fetch is a hit on what the loader returned.
async fn assert_miss_then_hit<V, Kd>(
    what: &str,
    cache: &Cache,
    strategy: &Strategy<V, ItemKey, Kd>,
    id: u64,
    value: V,
) where
    Kd: Kind,
    V: CacheValue<Kd> + Clone + PartialEq + Debug,
{
    let before = cache.stats();
    let (got, ran) = fetch_counting(cache, strategy, id, value.clone()).await;
    assert!(ran, "{what}: the loader did not run");
    assert_eq!(got, value, "{what}: fetch returned something else");
    let after = cache.stats();
    assert_eq!(
        after.undecodable,
        before.undecodable + 1,
        "{what}: not counted as undecodable: {after:?}"
    );
    let (again, ran) = fetch_counting(cache, strategy, id, value.clone()).await;
    assert!(
        !ran,
        "{what}: the entry was not overwritten (second fetch loaded)"
    );
    assert_eq!(again, value, "{what}");
}

/// Plants `bytes` under the entry of a strategy sharing `raw`'s template (either backend).
async fn plant<Kd: Kind>(cache: &Cache, raw: &Strategy<Raw, ItemKey, Kd>, id: u64, bytes: &[u8])
where
    Raw: CacheValue<Kd>,
{
    let key = ItemKey { item_id: id };
    cache.invalidate(raw, &key).await.unwrap();
    let (got, ran) = fetch_counting(cache, raw, id, Raw(bytes.to_vec())).await;
    assert!(ran && got.0 == bytes, "planting failed");
}

fn is_marker(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\xC1cacheobj:")
}

// ---------------------------------------------------------------------------------------------
// Random bytes.
// ---------------------------------------------------------------------------------------------

/// Random bytes under an obj (MessagePack and postcard), counter, hash-field, list-element and
/// set-member entry. Each fetch returns exactly what the library's decoder makes of the bytes
/// (almost always a miss, then the loader's value, which replaces the entry), never panics.
#[test]
fn random_bytes_under_every_kind() {
    let server = RedisServer::start();
    let rt = runtime();
    let cache = rt.block_on(redis_cache(&server, "rand:"));
    let memory = Cache::in_memory();
    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    let id = Cell::new(0u64);
    runner
        .run(&vec(any::<u8>(), 0..48), |bytes| {
            if is_marker(&bytes) {
                return Ok(());
            }
            id.set(id.get() + 1);
            rt.block_on(random_case(&server, &cache, &memory, id.get(), &bytes));
            Ok(())
        })
        .unwrap();
}

async fn random_case(server: &RedisServer, cache: &Cache, memory: &Cache, id: u64, bytes: &[u8]) {
    let fresh = item(id);
    let key = ItemKey { item_id: id };

    // obj, MessagePack.
    let k = key_of(cache, &ITEM, id);
    raw(server, &[b"SET", &k, bytes]).await;
    let expected = rmp_serde::from_slice::<Item>(bytes).ok();
    let (got, ran) = fetch_counting(cache, &ITEM, id, fresh.clone()).await;
    check("obj msgpack", bytes, expected, got, ran, &fresh);
    if ran {
        let stored = raw(server, &[b"GET", &k]).await;
        assert_eq!(
            stored,
            redis::Value::BulkString(rmp_serde::to_vec_named(&fresh).unwrap()),
            "entry not overwritten after {bytes:02x?}"
        );
    }
    // The same on the memory backend.
    plant(memory, &RAW_ITEM, id, bytes).await;
    let (got, ran) = fetch_counting(memory, &ITEM, id, fresh.clone()).await;
    check(
        "memory obj msgpack",
        bytes,
        rmp_serde::from_slice::<Item>(bytes).ok(),
        got,
        ran,
        &fresh,
    );

    // obj, postcard.
    let k = key_of(cache, &POSTCARD_ITEM, id);
    raw(server, &[b"SET", &k, bytes]).await;
    let expected = postcard::from_bytes::<Item>(bytes).ok();
    let (got, ran) = fetch_counting(cache, &POSTCARD_ITEM, id, fresh.clone()).await;
    check("obj postcard", bytes, expected, got, ran, &fresh);

    // counter: decimal text.
    let k = key_of(cache, &ITEM_STAT, id);
    raw(server, &[b"SET", &k, bytes]).await;
    let expected = std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<i64>().ok());
    let (got, ran) = fetch_counting(cache, &ITEM_STAT, id, 42i64).await;
    check("counter", bytes, expected, got, ran, &42);

    // hash field.
    let hk = cache.entry_key(&ITEM_HASH, &key).unwrap();
    let field = hk.field.unwrap();
    raw(server, &[b"HSET", &hk.key, &field, bytes]).await;
    let expected = rmp_serde::from_slice::<Item>(bytes).ok();
    let (got, ran) = fetch_counting(cache, &ITEM_HASH, id, fresh.clone()).await;
    check("hash field", bytes, expected, got, ran, &fresh);

    // list element (u64 as text) and set member (String as text).
    let k = key_of(cache, &ITEM_MEMBERS, id);
    raw(server, &[b"DEL", &k]).await;
    raw(server, &[b"RPUSH", &k, bytes]).await;
    let expected = std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(|n| vec![n]);
    let (got, ran) = fetch_counting(cache, &ITEM_MEMBERS, id, vec![1u64, 2]).await;
    check("list element", bytes, expected, got, ran, &vec![1, 2]);

    let k = key_of(cache, &ITEM_TAGS, id);
    raw(server, &[b"DEL", &k]).await;
    raw(server, &[b"SADD", &k, bytes]).await;
    let expected = String::from_utf8(bytes.to_vec()).ok().map(|s| vec![s]);
    let (got, ran) = fetch_counting(cache, &ITEM_TAGS, id, vec!["t".to_string()]).await;
    check(
        "set member",
        bytes,
        expected,
        got,
        ran,
        &vec!["t".to_string()],
    );
}

/// `expected`: what decoding the bytes gives (a hit), or `None` (a miss: the loader's value).
fn check<V: PartialEq + Debug>(
    what: &str,
    bytes: &[u8],
    expected: Option<V>,
    got: V,
    ran: bool,
    loaded: &V,
) {
    match expected {
        Some(v) => {
            assert!(!ran, "{what}: {bytes:02x?} decodes, but the loader ran");
            assert_eq!(got, v, "{what}: {bytes:02x?}");
        }
        None => {
            assert!(
                ran,
                "{what}: {bytes:02x?} does not decode, but the loader did not run"
            );
            assert_eq!(&got, loaded, "{what}: {bytes:02x?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Truncated values and other Redis types.
// ---------------------------------------------------------------------------------------------

#[test]
fn truncated_messagepack_of_a_real_value() {
    let real = rmp_serde::to_vec_named(&Item {
        id: 123_456_789,
        name: "a real cached value, long enough to cut in many places".into(),
    })
    .unwrap();
    let postcard = postcard::to_stdvec(&item(77)).unwrap();
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let cache = redis_cache(&server, "trunc:").await;
        for cut in 0..real.len() {
            let id = cut as u64;
            raw(&server, &[b"SET", &key_of(&cache, &ITEM, id), &real[..cut]]).await;
            assert_miss_then_hit(&format!("cut at {cut}"), &cache, &ITEM, id, item(id)).await;
        }
        for cut in 0..postcard.len() {
            let id = 1000 + cut as u64;
            let k = key_of(&cache, &POSTCARD_ITEM, id);
            raw(&server, &[b"SET", &k, &postcard[..cut]]).await;
            assert_miss_then_hit(
                &format!("postcard cut at {cut}"),
                &cache,
                &POSTCARD_ITEM,
                id,
                item(id),
            )
            .await;
        }
    });
    // The same on the memory backend, with the largest allocation of each fetch.
    for cut in 0..real.len() {
        let largest = hostile_memory_fetch(
            &format!("cut at {cut}"),
            &RAW_ITEM,
            &ITEM,
            &real[..cut],
            item(1),
        );
        assert!(largest < ALLOCATION_LIMIT, "cut at {cut}: {largest} bytes");
    }
}

/// Builds the command that writes a value of some Redis type under a key.
type Writer = fn(&[u8]) -> Vec<Vec<u8>>;

#[test]
fn another_redis_type_under_each_kind() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let cache = redis_cache(&server, "types:").await;
        let writers: [(&str, Writer); 5] = [
            ("list", |k| {
                vec![b"RPUSH".to_vec(), k.to_vec(), b"a".to_vec()]
            }),
            ("set", |k| vec![b"SADD".to_vec(), k.to_vec(), b"a".to_vec()]),
            ("hash", |k| {
                vec![b"HSET".to_vec(), k.to_vec(), b"f".to_vec(), b"v".to_vec()]
            }),
            ("zset", |k| {
                vec![b"ZADD".to_vec(), k.to_vec(), b"1".to_vec(), b"m".to_vec()]
            }),
            ("stream", |k| {
                vec![
                    b"XADD".to_vec(),
                    k.to_vec(),
                    b"*".to_vec(),
                    b"f".to_vec(),
                    b"v".to_vec(),
                ]
            }),
        ];
        let mut id = 0;
        for (ty, write) in writers {
            for kind in ["obj", "counter", "list", "set", "hash-key"] {
                id += 1;
                let what = format!("{ty} under a {kind} entry");
                let k = match kind {
                    "obj" => key_of(&cache, &ITEM, id),
                    "counter" => key_of(&cache, &ITEM_STAT, id),
                    "list" => key_of(&cache, &ITEM_MEMBERS, id),
                    "set" => key_of(&cache, &ITEM_TAGS, id),
                    _ => key_of(&cache, &ITEM_HASH, id),
                };
                if (ty, kind) == ("list", "list")
                    || (ty, kind) == ("set", "set")
                    || (ty, kind) == ("hash", "hash-key")
                {
                    continue; // its own type: not hostile
                }
                raw(&server, &[b"DEL", &k]).await;
                let args = write(&k);
                let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                raw(&server, &args).await;
                match kind {
                    "obj" => assert_miss_then_hit(&what, &cache, &ITEM, id, item(id)).await,
                    "counter" => assert_miss_then_hit(&what, &cache, &ITEM_STAT, id, 5i64).await,
                    "list" => {
                        assert_miss_then_hit(&what, &cache, &ITEM_MEMBERS, id, vec![4u64]).await
                    }
                    "set" => {
                        assert_miss_then_hit(&what, &cache, &ITEM_TAGS, id, vec!["s".to_string()])
                            .await
                    }
                    _ => {
                        // Every item's field shares one hash key; another type there is garbage
                        // for all of them.
                        assert_miss_then_hit(&what, &cache, &ITEM_HASH, id, item(id)).await
                    }
                }
            }
        }
        assert_eq!(cache.stats().errors, 0, "{:?}", cache.stats());
    });
}

// ---------------------------------------------------------------------------------------------
// Huge length headers: a miss, and no allocation the size of the declared length.
// ---------------------------------------------------------------------------------------------

/// MessagePack headers declaring 4 GiB (or 4 G elements) followed by a few bytes.
const HUGE: &[(&str, &[u8])] = &[
    ("str32", &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a', b'b', b'c']),
    ("bin32", &[0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
    ("array32", &[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02]),
    ("map32", &[0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, b'a', 0x01]),
    ("ext32", &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02, 0x03]),
    // A map whose known field "name" declares a 4 GiB string.
    (
        "field str32",
        &[
            0x82, 0xa2, b'i', b'd', 0x01, 0xa4, b'n', b'a', b'm', b'e', 0xdb, 0xff, 0xff, 0xff,
            0xff, b'x',
        ],
    ),
];

/// postcard: varint lengths of u64::MAX and 2^32.
const HUGE_POSTCARD: &[(&str, &[u8])] = &[
    (
        "varint u64::MAX",
        &[
            0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, b'x',
        ],
    ),
    ("varint 2^32", &[0x80, 0x80, 0x80, 0x80, 0x10, 0x01]),
];

/// Plants each hostile value in the memory backend and fetches it through `strategy`: a miss,
/// and the largest allocation of the fetch (decode, loader, fill) stays small.
fn hostile_memory_fetch<V>(
    what: &str,
    raw: &Strategy<Raw, ItemKey, Counter>,
    strategy: &Strategy<V, ItemKey>,
    bytes: &[u8],
    value: V,
) -> usize
where
    V: CacheValue<cacheobj::Obj> + Clone + PartialEq + Debug,
{
    let memory = Cache::in_memory();
    let rt = runtime();
    rt.block_on(plant(&memory, raw, 1, bytes));
    let undecodable = memory.stats().undecodable;
    let ((got, ran), largest) =
        largest_allocation(|| rt.block_on(fetch_counting(&memory, strategy, 1, value.clone())));
    assert!(ran, "{what}: the loader did not run");
    assert_eq!(got, value, "{what}");
    assert_eq!(memory.stats().undecodable, undecodable + 1, "{what}");
    largest
}

#[test]
fn huge_length_headers_are_misses_without_huge_allocations() {
    let mut report = Vec::new();
    for (name, bytes) in HUGE {
        let as_item = hostile_memory_fetch(name, &RAW_ITEM, &ITEM, bytes, item(1));
        let as_string = hostile_memory_fetch(name, &RAW_NAME, &NAME, bytes, "n".to_string());
        let as_tree = hostile_memory_fetch(
            name,
            &RAW_TREE,
            &TREE,
            bytes,
            Tree {
                children: Vec::new(),
            },
        );
        report.push(format!(
            "{name}: Item {as_item} B, String {as_string} B, Tree {as_tree} B"
        ));
        for (ty, largest) in [("Item", as_item), ("String", as_string), ("Tree", as_tree)] {
            assert!(
                largest < ALLOCATION_LIMIT,
                "{name} ({} bytes) decoded as {ty} allocated {largest} bytes at once",
                bytes.len()
            );
        }
    }
    for (name, bytes) in HUGE_POSTCARD {
        let largest =
            hostile_memory_fetch(name, &RAW_POSTCARD_ITEM, &POSTCARD_ITEM, bytes, item(1));
        report.push(format!("postcard {name}: Item {largest} B"));
        assert!(
            largest < ALLOCATION_LIMIT,
            "postcard {name}: {largest} bytes"
        );
    }
    eprintln!("largest allocation per fetch:\n  {}", report.join("\n  "));
}

/// Regression (fixed by a declared-length check): collections are where serde preallocates from a declared length. serde caps
/// the preallocation at 1 MiB ("cautious" size hints), and rmp-serde hands it the declared
/// array length unchecked, so a 7-byte `array32` header under a `Vec<u64>` entry costs a 1 MiB
/// allocation on every fetch of it: a 150 000-fold amplification (bounded, freed at once).
/// postcard does not pass its length on (a few KiB). Measured for `Vec<u64>`; serde's maps
/// and other collections use the same capped size hint.
#[test]
fn huge_length_headers_under_collection_values() {
    let array32: &[u8] = &[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02];
    let msgpack = hostile_memory_fetch("array32", &RAW_NUMBERS, &NUMBERS, array32, vec![1, 2]);
    let varint: &[u8] = &[0x80, 0x80, 0x80, 0x80, 0x10, 0x01];
    let postcard = hostile_memory_fetch(
        "varint 2^32",
        &RAW_NUMBERS_POSTCARD,
        &NUMBERS_POSTCARD,
        varint,
        vec![1, 2],
    );
    eprintln!(
        "largest allocation decoding Vec<u64>: MessagePack array32 header ({} B) {msgpack} B, \
         postcard length 2^32 ({} B) {postcard} B",
        array32.len(),
        varint.len()
    );
    assert!(
        msgpack < ALLOCATION_LIMIT && postcard < ALLOCATION_LIMIT,
        "a {}-byte MessagePack array32 header decoded as Vec<u64> allocated {msgpack} bytes at \
         once; a {}-byte postcard length, {postcard} bytes",
        array32.len(),
        varint.len()
    );
}

/// The same headers through Redis: a miss, entry overwritten.
#[test]
fn huge_length_headers_through_redis() {
    let server = RedisServer::start();
    let rt = runtime();
    let setup = rt.block_on(async {
        let cache = redis_cache(&server, "huge:").await;
        let mut id = 0;
        for (name, bytes) in HUGE {
            id += 1;
            raw(&server, &[b"SET", &key_of(&cache, &ITEM, id), bytes]).await;
            assert_miss_then_hit(name, &cache, &ITEM, id, item(id)).await;
            raw(&server, &[b"SET", &key_of(&cache, &NUMBERS, id), bytes]).await;
            assert_miss_then_hit(name, &cache, &NUMBERS, id, vec![id]).await;
            let k = key_of(&cache, &ITEM_LIST, id);
            raw(&server, &[b"RPUSH", &k, bytes]).await;
            assert_miss_then_hit(name, &cache, &ITEM_LIST, id, vec![item(id)]).await;
        }
        for (name, bytes) in HUGE_POSTCARD {
            id += 1;
            raw(
                &server,
                &[b"SET", &key_of(&cache, &POSTCARD_ITEM, id), bytes],
            )
            .await;
            assert_miss_then_hit(name, &cache, &POSTCARD_ITEM, id, item(id)).await;
        }
        id += 1;
        raw(&server, &[b"SET", &key_of(&cache, &ITEM, id), HUGE[0].1]).await;
        (cache, id)
    });
    // Reading the hostile reply through Redis (redis-rs's buffers included) stays small too;
    // the connection's driver runs on this thread (a current-thread runtime).
    let (cache, id) = setup;
    let ((got, ran), largest) =
        largest_allocation(|| rt.block_on(fetch_counting(&cache, &ITEM, id, item(id))));
    assert!(ran && got == item(id));
    eprintln!("str32 header through redis: largest allocation {largest} bytes");
    assert!(largest < ALLOCATION_LIMIT, "{largest} bytes");
}

// ---------------------------------------------------------------------------------------------
// Recursion bombs. A stack overflow aborts the process, so the decoding runs in a child
// process (this test binary, running the test `child_bomb`) and the parent checks how it ended.
// ---------------------------------------------------------------------------------------------

const DEPTH: usize = 100_000;

fn bomb(prefix: &[u8], byte: u8, tail: &[u8]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend(std::iter::repeat_n(byte, DEPTH));
    v.extend_from_slice(tail);
    v
}

/// Runs the test `child_bomb` of this binary in a child process with
/// `HOSTILE_BOMB=<case>`; returns whether it succeeded, and its status and output.
fn in_child(case: &str, redis: Option<&RedisServer>) -> (bool, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_bomb", "--nocapture"])
        .args(["--test-threads", "1"])
        .env("HOSTILE_BOMB", case);
    if let Some(server) = redis {
        // The parent owns the server, so an aborting child cannot leak it.
        cmd.env("HOSTILE_BOMB_REDIS_PORT", server.port.to_string());
    }
    let out = cmd.output().expect("cannot run the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("bomb") || l.contains("overflow") || l.contains("panicked"))
        .collect();
    (
        out.status.success(),
        format!("{}: {}", out.status, text.join(" | ")),
    )
}

/// The decoding of one bomb, on a test thread's default (2 MiB) stack: the case
/// `HOSTILE_BOMB` names when run as a child, else the MessagePack bomb under `Item` in process.
/// The `*redis` cases fetch through the parent's server.
#[test]
fn child_bomb() {
    let case = std::env::var("HOSTILE_BOMB").unwrap_or_else(|_| "msgpack-item".to_string());
    let empty = Tree {
        children: Vec::new(),
    };
    match case.as_str() {
        // 100 000 nested one-element arrays where Item expects its `id`.
        "msgpack-item" => {
            hostile_memory_fetch(&case, &RAW_ITEM, &ITEM, &bomb(&[], 0x91, &[1]), item(1));
        }
        // ... as the value of a field Item does not know (skipped with IgnoredAny).
        "msgpack-unknown-field" => {
            let bytes = bomb(&[0x81, 0xa1, b'x'], 0x91, &[1]);
            hostile_memory_fetch(&case, &RAW_ITEM, &ITEM, &bytes, item(1));
        }
        // ... under a recursive value type.
        "msgpack-tree" => {
            hostile_memory_fetch(&case, &RAW_TREE, &TREE, &bomb(&[], 0x91, &[0x90]), empty);
        }
        // 100 000 nested enum variants, `{"Next": {"Next": ... "End"}}`.
        "msgpack-enum" => {
            let mut bytes = b"\x81\xa4Next".repeat(DEPTH);
            bytes.extend_from_slice(b"\xa3End");
            hostile_memory_fetch(&case, &RAW_CHAIN, &CHAIN, &bytes, Chain::End);
        }
        // 100 000 nested one-element `children` under a recursive type stored with postcard
        // (a postcard struct is its fields in order, a Vec its length and elements).
        "postcard-tree" => {
            let bytes = bomb(&[], 0x01, &[0x00]);
            hostile_memory_fetch(&case, &RAW_TREE_POSTCARD, &TREE_POSTCARD, &bytes, empty);
        }
        // ... through a real Redis.
        "postcard-redis" => {
            runtime().block_on(async {
                let (cache, mut conn) = bomb_redis_cache().await;
                let () = redis::cmd("SET")
                    .arg(key_of(&cache, &TREE_POSTCARD, 1))
                    .arg(bomb(&[], 0x01, &[0x00]))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let what = "postcard tree bomb through redis";
                assert_miss_then_hit(what, &cache, &TREE_POSTCARD, 1, empty).await;
            });
        }
        // Both MessagePack bombs under Item through a real Redis.
        "redis" => {
            runtime().block_on(async {
                let (cache, mut conn) = bomb_redis_cache().await;
                for (id, bytes) in [
                    (1, bomb(&[], 0x91, &[1])),
                    (2, bomb(&[0x81, 0xa1, b'x'], 0x91, &[1])),
                ] {
                    let () = redis::cmd("SET")
                        .arg(key_of(&cache, &ITEM, id))
                        .arg(bytes)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    let what = format!("bomb #{id} through redis");
                    assert_miss_then_hit(&what, &cache, &ITEM, id, item(id)).await;
                }
            });
        }
        other => panic!("unknown bomb {other}"),
    }
    eprintln!("bomb {case}: a miss");
}

/// A cache on the parent's server, and a raw connection to it.
async fn bomb_redis_cache() -> (Cache, redis::aio::MultiplexedConnection) {
    let port = std::env::var("HOSTILE_BOMB_REDIS_PORT").expect("the parent's redis port");
    let url = format!("redis://127.0.0.1:{port}/");
    let cache = Cache::connect(CacheConfig::builder().url(url.clone()).build())
        .await
        .unwrap();
    cache.ping().await.unwrap();
    (cache, support::raw_conn_to(&url).await)
}

fn assert_bomb_is_a_miss(case: &str) {
    let server = case.ends_with("redis").then(RedisServer::start);
    let (ok, out) = in_child(case, server.as_ref());
    assert!(
        ok,
        "recursion bomb {case} ({DEPTH} levels, ~100 KB) crashed the process instead of being a \
         miss: {out}"
    );
}

#[test]
fn messagepack_recursion_bomb_where_a_number_is_expected() {
    assert_bomb_is_a_miss("msgpack-item");
}

/// Regression (fixed by a depth limit of 128) in unoptimized builds: rmp-serde stops at depth 1024, but skipping an unknown field
/// nested 1024 deep needs more than a thread's default 2 MiB stack in a debug build (about
/// 2-4 KiB per level; a release build needs ~100 KiB in all). Any obj or hash strategy of a
/// struct type is affected: `{"x": [[[[...]]]]}` aborts a debug-built service.
#[test]
fn messagepack_recursion_bomb_in_an_unknown_field() {
    assert_bomb_is_a_miss("msgpack-unknown-field");
}

/// Regression in unoptimized builds, as above: 1024 levels of a recursive type overflow a 2 MiB
/// stack in a debug build (fine in release).
#[test]
fn messagepack_recursion_bomb_under_a_recursive_type() {
    assert_bomb_is_a_miss("msgpack-tree");
}

/// Regression (fixed by counting enums toward the depth limit of 128): rmp-serde's own limit
/// counts arrays and maps only, so 100 000 nested enum variants (~600 KB) overflowed the stack
/// and aborted the process.
#[test]
fn messagepack_recursion_bomb_of_enum_variants() {
    assert_bomb_is_a_miss("msgpack-enum");
}

/// Regression (fixed by a depth limit of 128, as for MessagePack): postcard has no nesting
/// limit of its own, so 100 000 levels of a recursive type stored with postcard overflowed the
/// stack and aborted the process.
#[test]
fn postcard_recursion_bomb_under_a_recursive_type() {
    assert_bomb_is_a_miss("postcard-tree");
}

/// The same through Redis.
#[test]
fn postcard_recursion_bomb_through_redis() {
    assert_bomb_is_a_miss("postcard-redis");
}

/// Fails in debug builds for the unknown-field bomb (see above).
#[test]
fn messagepack_recursion_bombs_through_redis() {
    assert_bomb_is_a_miss("redis");
}

// ---------------------------------------------------------------------------------------------
// Over-long keys.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, CacheKey)]
struct SearchKey {
    query: String,
    page: u64,
}

const SEARCH: Strategy<Vec<u64>, SearchKey> =
    Strategy::<Vec<u64>, SearchKey>::obj("search:<query>:<page>").expire(60);
const SEARCH_HITS: Strategy<i64, SearchKey, Counter> = Strategy::counter("hits:<query>");
const SEARCH_LIST: Strategy<Vec<u64>, SearchKey, List> = Strategy::list("list:<query>");
const SEARCH_SET: Strategy<Vec<u64>, SearchKey, Set> = Strategy::set("set:<query>");
const SEARCH_HASH: Strategy<u64, SearchKey, Hash> = Strategy::hash("h:<page>", "<query>");

async fn over_long_keys_on(name: &str, cache: &Cache, prefix_len: usize) {
    let huge = SearchKey {
        query: "q".repeat(1_000_000),
        page: 1,
    };
    // A key of exactly the limit renders; one byte more does not.
    let fixed = "search:".len() + ":1".len() + prefix_len;
    let at_limit = SearchKey {
        query: "q".repeat(1024 - fixed),
        page: 1,
    };
    assert_eq!(
        cache.entry_key(&SEARCH, &at_limit).unwrap().key.len(),
        1024,
        "{name}"
    );
    let over = SearchKey {
        query: "q".repeat(1025 - fixed),
        page: 1,
    };
    assert_eq!(
        cache.entry_key(&SEARCH, &over),
        Err(KeyError::TooLong {
            len: 1025,
            max: 1024
        }),
        "{name}"
    );

    match cache.entry_key(&SEARCH, &huge) {
        Err(KeyError::TooLong { len, max: 1024 }) => assert!(len >= 1_000_000, "{name}: {len}"),
        other => panic!("{name}: entry_key of a 1 MB field: {other:?}"),
    }
    // Hash strategies: an over-long field is refused like an over-long key.
    assert!(
        matches!(
            cache.entry_key(&SEARCH_HASH, &huge),
            Err(KeyError::TooLong { .. })
        ),
        "{name}"
    );

    // Mutations return the key error.
    let key_err = |r: Result<(), Error>, what: &str| {
        assert!(
            matches!(r, Err(Error::Key(KeyError::TooLong { .. }))),
            "{name}: {what}: {r:?}"
        )
    };
    key_err(cache.invalidate(&SEARCH, &huge).await, "invalidate");
    key_err(cache.hash_del(&SEARCH_HASH, &huge).await, "hash_del");
    key_err(cache.incr(&SEARCH_HITS, &huge, 1).await.map(|_| ()), "incr");
    key_err(
        cache
            .incr_or_create(&SEARCH_HITS, &huge, 1)
            .await
            .map(|_| ()),
        "incr_or_create",
    );
    key_err(
        cache.set_counter(&SEARCH_HITS, &huge, 1).await,
        "set_counter",
    );
    key_err(
        cache.list_push(&SEARCH_LIST, &huge, &[1]).await.map(|_| ()),
        "list_push",
    );
    key_err(
        cache.set_add(&SEARCH_SET, &huge, &[1]).await.map(|_| ()),
        "set_add",
    );
    key_err(cache.exists(&SEARCH, &huge).await.map(|_| ()), "exists");
    key_err(
        cache
            .invalidate_many(&SEARCH, &[at_limit.clone(), huge.clone()])
            .await,
        "invalidate_many",
    );

    // The key at the limit is cached normally.
    let got = cache
        .fetch(&SEARCH, &at_limit, || async {
            Ok::<_, std::io::Error>(vec![3])
        })
        .await
        .unwrap();
    assert_eq!(got, vec![3], "{name}");

    // fetch fails open: the loader's value, counted as an error, nothing stored.
    let errors = cache.stats().errors;
    for _ in 0..2 {
        let got = cache
            .fetch(&SEARCH, &huge, || async {
                Ok::<_, std::io::Error>(vec![7])
            })
            .await
            .unwrap();
        assert_eq!(got, vec![7], "{name}");
    }
    let got = cache
        .fetch(&SEARCH_HASH, &huge, || async { Ok::<_, std::io::Error>(9) })
        .await
        .unwrap();
    assert_eq!(got, 9, "{name}");
    let many = cache
        .fetch_many(
            &SEARCH,
            &[at_limit.clone(), huge.clone()],
            |keys| async move {
                Ok::<_, Error>(keys.iter().map(|k| vec![k.query.len() as u64]).collect())
            },
        )
        .await
        .unwrap();
    assert_eq!(
        many,
        vec![vec![(1024 - fixed) as u64], vec![1_000_000]],
        "{name}"
    );
    assert!(
        cache.stats().errors >= errors + 4,
        "{name}: {:?}",
        cache.stats()
    );
}

#[test]
fn over_long_keys_are_errors_and_never_reach_redis() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let prefix = "long:";
        let cache = redis_cache(&server, prefix).await;
        over_long_keys_on("redis", &cache, prefix.len()).await;
        let memory = Cache::in_memory_with(CacheConfig::builder().prefix(prefix).build()).unwrap();
        over_long_keys_on("memory", &memory, prefix.len()).await;

        // Nothing longer than the limit was ever written: the only key is the one at the limit.
        let mut c = conn(&server).await;
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(
            keys.iter().all(|k| k.len() <= 1024),
            "keys longer than 1024 bytes in redis: {:?}",
            keys.iter().map(Vec::len).collect::<Vec<_>>()
        );
        let dbsize: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
        assert_eq!(
            dbsize,
            1,
            "{:?}",
            keys.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert_eq!(keys[0].len(), 1024);
        let used: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut c)
            .await
            .unwrap();
        let used = used
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap();
        assert!(used < 50_000_000, "redis uses {used} bytes");
    });
}

#[test]
fn the_key_limit_counts_the_prefix() {
    // The limit counts the prefix: a 1020-byte prefix leaves 4 bytes.
    let prefix = "p".repeat(1020);
    let cache = Cache::in_memory_with(CacheConfig::builder().prefix(prefix).build()).unwrap();
    let k = SearchKey {
        query: String::new(),
        page: 1,
    };
    assert!(matches!(
        cache.entry_key(&SEARCH, &k),
        Err(KeyError::TooLong {
            len: 1029,
            max: 1024
        })
    ));
    // A prefix that does not fit is a configuration error.
    let bad = Cache::in_memory_with(CacheConfig::builder().prefix("p".repeat(1024)).build());
    assert!(matches!(bad, Err(Error::Config(_))), "{bad:?}");
}
