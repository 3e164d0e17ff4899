//! TLS, ACL users and key-prefix isolation.
//!
//! * TLS: the TLS-only redis-server of `scripts/test.sh` (`CACHEOBJ_TEST_TLS_URL`), whose
//!   certificate is signed by a CA generated at test time (`CACHEOBJ_TEST_CA_CERT`). With that
//!   CA the cache works; with a CA that did not sign it, it fails open (fetch runs the loader,
//!   promptly); a CA file that cannot be read is a configuration error.
//! * ACL: a private redis-server per case, with a user `app` limited to `app:*` keys and a set
//!   of commands: everything the cache does works under the minimal set, and a cache whose
//!   prefix is outside the user's keys fails open on fetch and returns NOPERM on mutations.
//! * Isolation: two caches with prefixes `a:` and `b:` on one Redis never see each other's
//!   entries.

mod support;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cacheobj::{
    Cache, CacheConfig, CacheKey, ConfigError, Counter, Error, Hash, List, Set, Strategy,
};
use serde::{Deserialize, Serialize};
use support::{raw_conn_to, unique_prefix, RedisServer};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    id: u64,
    name: String,
}

#[derive(Debug, Clone, Serialize, CacheKey)]
struct K {
    id: u64,
}

const OBJ: Strategy<Row, K> = Strategy::<Row, K>::obj("obj:<id>").expire(60);
const MAYBE: Strategy<Option<Row>, K> = Strategy::<Option<Row>, K>::obj("maybe:<id>")
    .expire(60)
    .negative_expire(10);
const HOT: Strategy<Row, K> = Strategy::<Row, K>::obj("hot:<id>")
    .expire(60)
    .early_refresh(Duration::from_millis(50));
const COUNT: Strategy<i64, K, Counter> = Strategy::counter("count:<id>").expire(60);
const LIST: Strategy<Vec<u64>, K, List> = Strategy::list("list:<id>").expire(60);
const SET: Strategy<Vec<String>, K, Set> = Strategy::set("set:<id>").expire(60);
const HASH: Strategy<Row, K, Hash> = Strategy::hash("hash", "<id>").expire(60);
/// A hash without a TTL: its fill makes the hash persistent (PERSIST).
const HASH_FOREVER: Strategy<Row, K, Hash> = Strategy::hash("hash:forever", "<id>");

fn row(id: u64, name: &str) -> Row {
    Row {
        id,
        name: name.to_owned(),
    }
}

/// Fetches OBJ `id`, counting loader calls; the loader returns `row(id, name)`.
async fn fetch_obj(cache: &Cache, id: u64, name: &str, calls: &AtomicUsize) -> Row {
    cache
        .fetch(&OBJ, &K { id }, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(row(id, name))
        })
        .await
        .expect("infallible loader")
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

fn tls_config(url: String, ca_cert: Option<PathBuf>, test: &str) -> CacheConfig {
    let builder = CacheConfig::builder()
        .url(url)
        .prefix(unique_prefix(test))
        .response_timeout(Duration::from_secs(2));
    match ca_cert {
        Some(path) => builder.ca_cert(path).build(),
        None => builder.build(),
    }
}

/// A fresh temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique_prefix(test).replace(':', "-"));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed CA certificate that did not sign the test server's certificate.
fn unrelated_ca(dir: &Path) -> PathBuf {
    let (cert, key) = (dir.join("other-ca.crt"), dir.join("other-ca.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-new", "-nodes", "-days", "1"])
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-subj", "/CN=not the cacheobj test CA"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl: {e} (`bash scripts/test.sh` installs it)"));
    assert!(
        out.status.success(),
        "openssl could not make a throwaway CA: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cert
}

/// Over TLS with the right CA: ping, miss then hit, invalidate.
async fn check_tls_works(url: String) {
    let cache = Cache::connect(tls_config(url.clone(), Some(support::ca_cert()), "tls_ok"))
        .await
        .unwrap_or_else(|e| panic!("Cache::connect({url}) failed: {e:?}"));
    cache
        .ping()
        .await
        .unwrap_or_else(|e| panic!("ping over TLS to {url} failed: {e:?}"));
    let calls = AtomicUsize::new(0);
    assert_eq!(fetch_obj(&cache, 1, "first", &calls).await, row(1, "first"));
    assert_eq!(
        fetch_obj(&cache, 1, "second", &calls).await,
        row(1, "first")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "{url}: miss, then hit");
    cache.invalidate(&OBJ, &K { id: 1 }).await.unwrap();
    assert_eq!(fetch_obj(&cache, 1, "third", &calls).await, row(1, "third"));
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.errors), (1, 0), "{url}: {stats:?}");
}

#[tokio::test]
async fn tls_with_the_signing_ca_caches() {
    check_tls_works(support::tls_url()).await;
}

/// A local-tier strategy over TLS: its tracking connection is made with the same CA, so the
/// tier goes live, answers from memory, and drops a copy that another cache's write replaced.
#[tokio::test]
async fn over_tls_the_local_tier_tracks_and_is_coherent() {
    const LOCAL: Strategy<Row, K> = Strategy::<Row, K>::obj("local:<id>").expire(60).local(100);
    let config = tls_config(support::tls_url(), Some(support::ca_cert()), "tls_local");
    let prefix = config.prefix.clone();
    let cache = Cache::connect(config).await.expect("connect over TLS");
    let other = Cache::connect(
        CacheConfig::builder()
            .url(support::tls_url())
            .ca_cert(support::ca_cert())
            .prefix(prefix)
            .response_timeout(Duration::from_secs(2))
            .build(),
    )
    .await
    .expect("connect over TLS");
    let load = |name: &'static str| move || async move { Ok::<_, Infallible>(row(1, name)) };
    let deadline = Instant::now() + Duration::from_secs(20);
    // The first fetch fills and starts tracking; a later one reads the fill back and keeps it.
    while cache.stats().local_hits == 0 {
        assert_eq!(
            cache
                .fetch(&LOCAL, &K { id: 1 }, load("old"))
                .await
                .unwrap(),
            row(1, "old")
        );
        assert!(
            Instant::now() < deadline,
            "no local hit over TLS within 20 s: {:?}",
            cache.stats()
        );
        tokio::task::yield_now().await;
    }
    assert!(cache.local_live(), "tracking over TLS is not live");
    assert_eq!(cache.local_len(&LOCAL), 1);

    // Another cache's write is announced over the TLS tracking connection.
    other
        .invalidate(&LOCAL, &K { id: 1 })
        .await
        .expect("invalidate");
    let filled = other
        .fetch(&LOCAL, &K { id: 1 }, load("new"))
        .await
        .unwrap();
    assert_eq!(filled, row(1, "new"));
    while cache.local_len(&LOCAL) != 0 {
        assert!(
            Instant::now() < deadline,
            "the write was not announced over TLS: {:?}",
            cache.stats()
        );
        tokio::task::yield_now().await;
    }
    let got = cache
        .fetch(&LOCAL, &K { id: 1 }, load("unused"))
        .await
        .unwrap();
    assert_eq!(got, row(1, "new"), "the replaced copy was served");
    let stats = cache.stats();
    assert!(stats.local_invalidations > 0, "{stats:?}");
    assert_eq!(stats.local_flushes, 0, "{stats:?}");
}

/// The server certificate names both `127.0.0.1` (IP SAN) and `localhost` (DNS SAN): either
/// host verifies.
#[tokio::test]
async fn tls_verifies_the_localhost_name_too() {
    let url = support::tls_url().replace("127.0.0.1", "localhost");
    assert!(url.contains("localhost"), "{url}");
    check_tls_works(url).await;
}

/// With a CA that does not verify the server, every request fails, promptly: ping errors,
/// fetch runs the loader each time and returns its value, mutations return the error.
async fn check_tls_fails_open(ca_cert: Option<PathBuf>, what: &str) {
    let cache = Cache::connect(tls_config(support::tls_url(), ca_cert, "tls_bad"))
        .await
        .unwrap_or_else(|e| panic!("{what}: Cache::connect must not fail: {e:?}"));
    let started = Instant::now();
    let ping = tokio::time::timeout(Duration::from_secs(10), cache.ping())
        .await
        .unwrap_or_else(|_| panic!("{what}: ping hung"));
    assert!(ping.is_err(), "{what}: ping must fail: {ping:?}");
    let calls = AtomicUsize::new(0);
    for n in 1..=3 {
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            fetch_obj(&cache, 1, "loaded", &calls),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: fetch hung"));
        assert_eq!(got, row(1, "loaded"), "{what}: fetch fails open");
        assert_eq!(calls.load(Ordering::SeqCst), n, "{what}: nothing cached");
    }
    let inv = cache.invalidate(&OBJ, &K { id: 1 }).await;
    assert!(inv.is_err(), "{what}: invalidate must report: {inv:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "{what}: failing took {elapsed:?}"
    );
    let stats = cache.stats();
    assert!(stats.errors > 0, "{what}: errors are counted: {stats:?}");
    assert_eq!(stats.hits, 0, "{what}: {stats:?}");
}

#[tokio::test]
async fn tls_with_a_ca_that_did_not_sign_the_server_fails_open() {
    let dir = TempDir::new("tls_wrong_ca");
    check_tls_fails_open(Some(unrelated_ca(&dir.0)), "unrelated CA").await;
}

#[tokio::test]
async fn tls_without_a_ca_cert_trusts_only_the_system_roots_and_fails_open() {
    check_tls_fails_open(None, "system roots").await;
}

/// A CA file with no PEM block in it trusts nothing. Today `Cache::connect` accepts it and
/// every request fails the TLS handshake (fail-open); refusing it as a configuration error
/// would be as good. Either way: no panic, no hang, the loader's value.
#[tokio::test]
async fn a_ca_cert_without_any_certificate_is_refused_or_fails_open() {
    let dir = TempDir::new("tls_no_cert");
    let path = dir.0.join("empty.pem");
    std::fs::write(&path, "this file holds no PEM block\n").unwrap();
    let probe = Cache::connect(tls_config(
        support::tls_url(),
        Some(path.clone()),
        "tls_no_cert",
    ))
    .await;
    match probe {
        Err(Error::Config(_)) => {}
        Err(other) => panic!("a CA file without certificates: unexpected error {other:?}"),
        Ok(_) => check_tls_fails_open(Some(path), "PEM without certificates").await,
    }
}

/// A PEM block that does not decode is refused by `Cache::connect`.
#[tokio::test]
async fn a_ca_cert_that_does_not_parse_is_a_config_error() {
    let dir = TempDir::new("tls_bad_pem");
    let path = dir.0.join("broken.pem");
    std::fs::write(
        &path,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let r = Cache::connect(tls_config(support::tls_url(), Some(path), "tls_bad_pem")).await;
    assert!(
        matches!(r, Err(Error::Config(_))),
        "a broken PEM block: {r:?}"
    );
}

#[tokio::test]
async fn a_missing_ca_cert_file_is_a_config_error() {
    let dir = TempDir::new("tls_missing_ca");
    let missing = dir.0.join("does-not-exist.pem");
    let r = Cache::connect(tls_config(
        support::tls_url(),
        Some(missing.clone()),
        "tls_missing_ca",
    ))
    .await;
    match r {
        Err(Error::Config(ConfigError::CaCert { path, source })) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{source}");
        }
        other => panic!("expected Err(Config(CaCert {{ .. }})), got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// ACL
// ---------------------------------------------------------------------------------------------

/// The least the cache needs, as single commands: the commands it sends (GET, MGET, HGET, DEL,
/// HDEL, SET, PTTL, PING, EVALSHA, SCRIPT LOAD when a script is not cached yet) and the ones
/// its Lua scripts call (Redis checks those against the user's ACL too).
const MINIMAL_COMMANDS: &str =
    "+get +mget +hget +set +del +hdel +pttl +ping +evalsha +script|load \
     +type +pexpire +persist +incrby +lrange +llen +rpush +lrem +smembers +scard +sadd +srem \
     +sismember +hset +hlen +time";
/// The least the cache needs, as categories: `@read`, `@write` and `@scripting`, plus PING and
/// TIME (both only `@fast`, `@connection`).
const MINIMAL_CATEGORIES: &str = "+@read +@write +@scripting +ping +time";
/// The usual "everything but admin": the scripts' commands are not `@dangerous`.
const ALL_BUT_DANGEROUS: &str = "+@all -@dangerous";

/// A private redis-server with the user `app` (password `secret`) on `app:*` keys with `rules`.
async fn server_with_app_user(rules: &str) -> RedisServer {
    let server = RedisServer::start();
    let mut admin = raw_conn_to(&server.url()).await;
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg("app")
        .arg("reset")
        .arg("on")
        .arg(">secret")
        .arg("~app:*");
    for rule in rules.split_whitespace() {
        cmd.arg(rule);
    }
    let () = cmd
        .query_async(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("ACL SETUSER app ... {rules}: {e}"));
    server
}

async fn app_cache(server: &RedisServer, prefix: &str) -> Cache {
    Cache::connect(
        CacheConfig::builder()
            .host("127.0.0.1")
            .port(server.port)
            .username("app")
            .password("secret")
            .prefix(prefix)
            .response_timeout(Duration::from_secs(2))
            .build(),
    )
    .await
    .expect("connect as app")
}

/// Every kind of fetch, every mutation and every invalidation, on a cache that may use its
/// keys: all must work with no error counted.
async fn exercise_every_operation(what: &str, cache: &Cache) {
    cache
        .ping()
        .await
        .unwrap_or_else(|e| panic!("{what}: ping: {e:?}"));
    let k = K { id: 1 };
    let calls = AtomicUsize::new(0);

    // obj: miss, hit, invalidate, invalidate_after, exists.
    assert_eq!(
        fetch_obj(cache, 1, "a", &calls).await,
        row(1, "a"),
        "{what}"
    );
    assert_eq!(
        fetch_obj(cache, 1, "b", &calls).await,
        row(1, "a"),
        "{what}"
    );
    assert!(cache.exists(&OBJ, &k).await.unwrap(), "{what}");
    cache.invalidate(&OBJ, &k).await.unwrap();
    assert!(!cache.exists(&OBJ, &k).await.unwrap(), "{what}");
    assert_eq!(
        fetch_obj(cache, 1, "c", &calls).await,
        row(1, "c"),
        "{what}"
    );
    let written = cache
        .invalidate_after(&OBJ, &k, || async { Ok::<_, Error>(()) })
        .await
        .unwrap();
    assert!(
        written.is_invalidated(),
        "{what}: {:?}",
        written.invalidation()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "{what}: obj loads");

    // Negative caching, and an early-refresh strategy (GET + PTTL).
    let none = cache
        .fetch(&MAYBE, &k, || async { Ok::<_, Infallible>(None) })
        .await
        .unwrap();
    assert_eq!(none, None, "{what}");
    assert!(
        cache.exists(&MAYBE, &k).await.unwrap(),
        "{what}: None cached"
    );
    for _ in 0..3 {
        let hot = cache
            .fetch(&HOT, &k, || async { Ok::<_, Infallible>(row(1, "hot")) })
            .await
            .unwrap();
        assert_eq!(hot, row(1, "hot"), "{what}");
    }

    // Batches.
    let ks: Vec<K> = (10..13).map(|id| K { id }).collect();
    let got = cache
        .fetch_many(&OBJ, &ks, |m: Vec<K>| async move {
            Ok::<_, Error>(m.iter().map(|k| row(k.id, "batch")).collect())
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 3, "{what}");
    cache.invalidate_many(&OBJ, &ks).await.unwrap();
    assert!(!cache.exists(&OBJ, &ks[0]).await.unwrap(), "{what}");

    // counter
    let n = cache
        .fetch(&COUNT, &k, || async { Ok::<_, Infallible>(5) })
        .await
        .unwrap();
    assert_eq!(n, 5, "{what}");
    assert_eq!(cache.incr(&COUNT, &k, 2).await.unwrap(), Some(7), "{what}");
    assert_eq!(cache.decr(&COUNT, &k, 1).await.unwrap(), Some(6), "{what}");
    assert_eq!(
        cache.get_counter(&COUNT, &k).await.unwrap(),
        Some(6),
        "{what}"
    );
    cache.set_counter(&COUNT, &k, 9).await.unwrap();
    assert_eq!(
        cache.get_counter(&COUNT, &k).await.unwrap(),
        Some(9),
        "{what}"
    );
    cache.invalidate(&COUNT, &k).await.unwrap();
    assert_eq!(
        cache.incr_or_create(&COUNT, &k, 3).await.unwrap(),
        3,
        "{what}"
    );

    // list
    let list = cache
        .fetch(&LIST, &k, || async { Ok::<_, Infallible>(vec![1u64, 2]) })
        .await
        .unwrap();
    assert_eq!(list, [1, 2], "{what}");
    assert_eq!(
        cache.list_push(&LIST, &k, &[3]).await.unwrap(),
        Some(3),
        "{what}"
    );
    assert_eq!(
        cache.list_remove(&LIST, &k, &[1]).await.unwrap(),
        Some(2),
        "{what}"
    );
    assert_eq!(cache.list_len(&LIST, &k).await.unwrap(), Some(2), "{what}");
    let list = cache
        .fetch(&LIST, &k, || async { Ok::<_, Infallible>(vec![9u64]) })
        .await
        .unwrap();
    assert_eq!(list, [2, 3], "{what}: list hit");
    cache.invalidate(&LIST, &k).await.unwrap();
    let empty = cache
        .fetch(&LIST, &K { id: 2 }, || async {
            Ok::<_, Infallible>(vec![])
        })
        .await
        .unwrap();
    assert!(empty.is_empty(), "{what}");
    assert_eq!(
        cache.list_push(&LIST, &K { id: 2 }, &[4]).await.unwrap(),
        Some(1),
        "{what}: push onto the cached empty list"
    );

    // set
    let set = cache
        .fetch(&SET, &k, || async {
            Ok::<_, Infallible>(vec!["x".to_string()])
        })
        .await
        .unwrap();
    assert_eq!(set, ["x"], "{what}");
    assert_eq!(
        cache.set_add(&SET, &k, &["y".to_string()]).await.unwrap(),
        Some(2),
        "{what}"
    );
    assert_eq!(
        cache
            .set_contains(&SET, &k, &"y".to_string())
            .await
            .unwrap(),
        Some(true),
        "{what}"
    );
    assert_eq!(
        cache
            .set_remove(&SET, &k, &["x".to_string()])
            .await
            .unwrap(),
        Some(1),
        "{what}"
    );
    assert_eq!(cache.set_len(&SET, &k).await.unwrap(), Some(1), "{what}");
    let set = cache
        .fetch(&SET, &k, || async {
            Ok::<_, Infallible>(vec!["z".to_string()])
        })
        .await
        .unwrap();
    assert_eq!(set, ["y"], "{what}: set hit");
    cache.invalidate(&SET, &k).await.unwrap();

    // hash
    let h = cache
        .fetch(&HASH, &k, || async { Ok::<_, Infallible>(row(1, "h")) })
        .await
        .unwrap();
    assert_eq!(h, row(1, "h"), "{what}");
    let h = cache
        .fetch(&HASH, &k, || async { Ok::<_, Infallible>(row(1, "other")) })
        .await
        .unwrap();
    assert_eq!(h, row(1, "h"), "{what}: hash hit");
    let hs = cache
        .fetch_many(&HASH, &[K { id: 1 }, K { id: 2 }], |m: Vec<K>| async move {
            Ok::<_, Error>(m.iter().map(|k| row(k.id, "hm")).collect())
        })
        .await
        .unwrap();
    assert_eq!(hs, [row(1, "h"), row(2, "hm")], "{what}");
    cache.hash_del(&HASH, &k).await.unwrap();
    assert!(!cache.exists(&HASH, &k).await.unwrap(), "{what}");
    cache.invalidate(&HASH, &K { id: 2 }).await.unwrap();
    let hf = cache
        .fetch(&HASH_FOREVER, &k, || async {
            Ok::<_, Infallible>(row(1, "f"))
        })
        .await
        .unwrap();
    assert_eq!(hf, row(1, "f"), "{what}");
    assert!(cache.exists(&HASH_FOREVER, &k).await.unwrap(), "{what}");
    cache.hash_del(&HASH_FOREVER, &k).await.unwrap();

    // A load that fails releases its lease.
    let failed = cache
        .fetch(&OBJ, &K { id: 3 }, || async { Err::<Row, _>("db down") })
        .await;
    assert_eq!(failed, Err("db down"), "{what}");

    let stats = cache.stats();
    assert_eq!(stats.errors, 0, "{what}: {stats:?}");
    assert_eq!(stats.undecodable, 0, "{what}: {stats:?}");
}

#[tokio::test]
async fn an_acl_user_with_the_minimal_commands_can_do_everything_on_its_keys() {
    for rules in [MINIMAL_COMMANDS, MINIMAL_CATEGORIES, ALL_BUT_DANGEROUS] {
        // A new server per rule set, so SCRIPT LOAD is exercised each time.
        let server = server_with_app_user(rules).await;
        let cache = app_cache(&server, "app:").await;
        exercise_every_operation(rules, &cache).await;
    }
}

/// Each rule set without one of its commands: whatever is left out, something fails. Shows
/// that [`MINIMAL_COMMANDS`] is minimal.
#[tokio::test]
async fn every_minimal_command_is_needed() {
    let commands: Vec<&str> = MINIMAL_COMMANDS.split_whitespace().collect();
    let mut unneeded = Vec::new();
    for left_out in &commands {
        let rules: Vec<&str> = commands.iter().copied().filter(|c| c != left_out).collect();
        eprintln!("every_minimal_command_is_needed: without {left_out} (a panic is expected)");
        let server = server_with_app_user(&rules.join(" ")).await;
        let cache = app_cache(&server, "app:").await;
        let outcome = tokio::spawn(async move {
            exercise_every_operation("", &cache).await;
        })
        .await;
        if outcome.is_ok() {
            unneeded.push(*left_out);
        }
    }
    assert!(
        unneeded.is_empty(),
        "everything still works without {unneeded:?}"
    );
}

#[tokio::test]
async fn a_prefix_outside_the_users_keys_fails_open_and_mutations_say_noperm() {
    let server = server_with_app_user(MINIMAL_COMMANDS).await;
    let allowed = app_cache(&server, "app:").await;
    let denied = app_cache(&server, "other:").await;
    denied.ping().await.expect("the login itself works");
    let k = K { id: 1 };

    // Every kind of fetch returns the loader's value, counted as an error, nothing cached.
    let calls = AtomicUsize::new(0);
    for _ in 0..2 {
        assert_eq!(
            fetch_obj(&denied, 1, "loaded", &calls).await,
            row(1, "loaded")
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "nothing is cached");
    let n = denied
        .fetch(&COUNT, &k, || async { Ok::<_, Infallible>(5) })
        .await
        .unwrap();
    assert_eq!(n, 5);
    let list = denied
        .fetch(&LIST, &k, || async { Ok::<_, Infallible>(vec![1u64]) })
        .await
        .unwrap();
    assert_eq!(list, [1]);
    let set = denied
        .fetch(&SET, &k, || async {
            Ok::<_, Infallible>(vec!["s".to_string()])
        })
        .await
        .unwrap();
    assert_eq!(set, ["s"]);
    let h = denied
        .fetch(&HASH, &k, || async { Ok::<_, Infallible>(row(1, "h")) })
        .await
        .unwrap();
    assert_eq!(h, row(1, "h"));
    let many = denied
        .fetch_many(&OBJ, &[K { id: 5 }, K { id: 6 }], |m: Vec<K>| async move {
            Ok::<_, Error>(m.iter().map(|k| row(k.id, "m")).collect())
        })
        .await
        .unwrap();
    assert_eq!(many, [row(5, "m"), row(6, "m")]);
    let stats = denied.stats();
    assert!(stats.errors > 0, "{stats:?}");
    assert_eq!(stats.hits, 0, "{stats:?}");

    // Mutations return Redis's NOPERM.
    fn is_noperm(r: &Result<impl std::fmt::Debug, Error>) -> bool {
        matches!(r, Err(Error::Redis(e)) if e.code() == Some("NOPERM"))
    }
    let r = denied.invalidate(&OBJ, &k).await;
    assert!(is_noperm(&r), "invalidate: {r:?}");
    let r = denied.invalidate(&LIST, &k).await;
    assert!(is_noperm(&r), "invalidate list: {r:?}");
    let r = denied.hash_del(&HASH, &k).await;
    assert!(is_noperm(&r), "hash_del: {r:?}");
    let r = denied.incr(&COUNT, &k, 1).await;
    assert!(is_noperm(&r), "incr: {r:?}");
    let r = denied.set_counter(&COUNT, &k, 1).await;
    assert!(is_noperm(&r), "set_counter: {r:?}");
    let r = denied.list_push(&LIST, &k, &[2]).await;
    assert!(is_noperm(&r), "list_push: {r:?}");
    let r = denied.set_add(&SET, &k, &["t".to_string()]).await;
    assert!(is_noperm(&r), "set_add: {r:?}");
    let r = denied
        .invalidate_many(&OBJ, &[K { id: 5 }, K { id: 6 }])
        .await;
    assert!(is_noperm(&r), "invalidate_many: {r:?}");

    // A refused key is not an outage: the same cache keeps trying Redis (no circuit breaker),
    // and another cache of the same user is unaffected.
    let r = denied.invalidate(&OBJ, &k).await;
    assert!(is_noperm(&r), "still NOPERM, not Unavailable: {r:?}");
    exercise_every_operation("app: beside other:", &allowed).await;
}

// ---------------------------------------------------------------------------------------------
// Isolation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn caches_with_different_prefixes_never_read_each_others_entries() {
    let server = RedisServer::start();
    let connect = |prefix: &'static str| {
        Cache::connect(
            CacheConfig::builder()
                .url(server.url())
                .prefix(prefix)
                .response_timeout(Duration::from_secs(2))
                .build(),
        )
    };
    let a = connect("a:").await.expect("connect a");
    let b = connect("b:").await.expect("connect b");
    let k = K { id: 1 };

    // obj
    let (ca, cb) = (AtomicUsize::new(0), AtomicUsize::new(0));
    assert_eq!(fetch_obj(&a, 1, "from a", &ca).await, row(1, "from a"));
    assert!(
        !b.exists(&OBJ, &k).await.unwrap(),
        "b does not see a's entry"
    );
    assert_eq!(fetch_obj(&b, 1, "from b", &cb).await, row(1, "from b"));
    assert_eq!(fetch_obj(&a, 1, "again", &ca).await, row(1, "from a"));
    assert_eq!(fetch_obj(&b, 1, "again", &cb).await, row(1, "from b"));
    assert_eq!(
        (ca.load(Ordering::SeqCst), cb.load(Ordering::SeqCst)),
        (1, 1)
    );
    a.invalidate(&OBJ, &k).await.unwrap();
    assert!(!a.exists(&OBJ, &k).await.unwrap());
    assert!(
        b.exists(&OBJ, &k).await.unwrap(),
        "a's invalidation leaves b's entry"
    );

    // counter
    a.fetch(&COUNT, &k, || async { Ok::<_, Infallible>(1) })
        .await
        .unwrap();
    assert_eq!(
        b.incr(&COUNT, &k, 1).await.unwrap(),
        None,
        "b has no counter"
    );
    assert_eq!(a.incr(&COUNT, &k, 1).await.unwrap(), Some(2));
    assert_eq!(b.incr_or_create(&COUNT, &k, 10).await.unwrap(), 10);
    assert_eq!(a.get_counter(&COUNT, &k).await.unwrap(), Some(2));

    // list, set, hash
    a.fetch(&LIST, &k, || async { Ok::<_, Infallible>(vec![1u64]) })
        .await
        .unwrap();
    assert_eq!(b.list_len(&LIST, &k).await.unwrap(), None);
    let bl = b
        .fetch(&LIST, &k, || async { Ok::<_, Infallible>(vec![2u64, 3]) })
        .await
        .unwrap();
    assert_eq!(bl, [2, 3]);
    assert_eq!(a.list_len(&LIST, &k).await.unwrap(), Some(1));
    a.fetch(&SET, &k, || async {
        Ok::<_, Infallible>(vec!["a".to_string()])
    })
    .await
    .unwrap();
    assert_eq!(
        b.set_contains(&SET, &k, &"a".to_string()).await.unwrap(),
        None
    );
    a.fetch(&HASH, &k, || async { Ok::<_, Infallible>(row(1, "ha")) })
        .await
        .unwrap();
    let bh = b
        .fetch(&HASH, &k, || async { Ok::<_, Infallible>(row(1, "hb")) })
        .await
        .unwrap();
    assert_eq!(bh, row(1, "hb"), "b's hash field is its own");
    b.hash_del(&HASH, &k).await.unwrap();
    assert!(a.exists(&HASH, &k).await.unwrap(), "a's hash field stays");

    // Batches
    let ks = [K { id: 1 }, K { id: 2 }];
    let got = a
        .fetch_many(&OBJ, &ks, |m: Vec<K>| async move {
            Ok::<_, Error>(m.iter().map(|k| row(k.id, "a batch")).collect())
        })
        .await
        .unwrap();
    assert_eq!(got, [row(1, "a batch"), row(2, "a batch")]);
    let got = b
        .fetch_many(&OBJ, &ks, |m: Vec<K>| async move {
            Ok::<_, Error>(m.iter().map(|k| row(k.id, "b batch")).collect())
        })
        .await
        .unwrap();
    assert_eq!(got, [row(1, "from b"), row(2, "b batch")]);

    // Everything in Redis is under one of the two prefixes.
    let mut conn = raw_conn_to(&server.url()).await;
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    for key in &keys {
        assert!(
            key.starts_with(b"a:") || key.starts_with(b"b:"),
            "{:?}",
            String::from_utf8_lossy(key)
        );
    }
    assert_eq!(a.stats().errors + b.stats().errors, 0);
}
