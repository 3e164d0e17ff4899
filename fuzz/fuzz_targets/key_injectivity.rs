//! Two different keys never render to the same entry: for arbitrary pairs of keys of a struct
//! with String, Option<String>, u64 and bool fields, through templates in field order, out of
//! order with a Redis Cluster hash tag, and a hash strategy's key and field. Values never add a
//! `{` or `}` (so never forge a hash tag) and use only `A-Z a-z 0-9 _ . - %`.
#![no_main]

use arbitrary::Arbitrary;
use cacheobj::{Cache, CacheConfig, CacheKey, EntryKey, Hash, KeyError, Kind, Strategy};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use std::sync::OnceLock;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, CacheKey, Arbitrary)]
struct Key {
    s: String,
    o: Option<String>,
    n: u64,
    b: bool,
}

const IN_ORDER: Strategy<u8, Key> = Strategy::<u8, Key>::obj("k:<s>:<o>:<n>:<b>");
const OUT_OF_ORDER: Strategy<u8, Key> = Strategy::<u8, Key>::obj("r:<n>:{<o>}/<b>:<s>").version(3);
const HASHED: Strategy<u8, Key, Hash> = Strategy::hash("h:<b>", "<o>:<s>:<n>");

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| {
        Cache::in_memory_with(
            CacheConfig::builder()
                .prefix("app:{x}:")
                .max_key_len(1 << 20)
                .build(),
        )
        .expect("config")
    })
}

fn render<Kd: Kind>(s: &Strategy<u8, Key, Kd>, k: &Key) -> Option<EntryKey> {
    match cache().entry_key(s, k) {
        Ok(e) => Some(e),
        Err(KeyError::TooLong { .. }) => None,
        Err(e) => panic!("{k:?} does not render: {e:?}"),
    }
}

fn value_bytes_ok(e: &EntryKey, literal_braces: usize) {
    let all = e.key.iter().chain(e.field.iter().flatten());
    let braces = all.clone().filter(|&&c| c == b'{' || c == b'}').count();
    assert_eq!(braces, literal_braces, "a value added a brace: {e:?}");
    assert!(
        all.clone()
            .all(|&c| c.is_ascii_alphanumeric() || b"_.-%:{}/#".contains(&c)),
        "unexpected byte in {e:?}"
    );
}

fn check<Kd: Kind>(s: &Strategy<u8, Key, Kd>, a: &Key, b: &Key, braces: usize) {
    let (Some(ea), Some(eb)) = (render(s, a), render(s, b)) else {
        return;
    };
    value_bytes_ok(&ea, braces);
    value_bytes_ok(&eb, braces);
    if a == b {
        assert_eq!(ea, eb, "one key, two renderings");
    } else {
        assert_ne!(ea, eb, "{a:?} and {b:?} share an entry");
    }
}

fuzz_target!(|pair: (Key, Key)| {
    let (a, b) = pair;
    // The prefix brings two literal braces, OUT_OF_ORDER two more.
    check(&IN_ORDER, &a, &b, 2);
    check(&OUT_OF_ORDER, &a, &b, 4);
    check(&HASHED, &a, &b, 2);
    // Near misses: one field changed.
    let mut c = a.clone();
    c.b = !c.b;
    check(&IN_ORDER, &a, &c, 2);
    check(&HASHED, &a, &c, 2);
    let mut d = a.clone();
    d.o = match d.o.take() {
        None => Some(String::new()),
        Some(s) if s.is_empty() => None,
        Some(s) => Some(s[..s.len() - s.chars().last().map_or(0, char::len_utf8)].to_owned()),
    };
    check(&OUT_OF_ORDER, &a, &d, 4);
});
