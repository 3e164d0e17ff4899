//! Rendering keys is injective: two different keys never share an entry, whatever their values
//! hold. The prefix comes first, and values cannot form a Redis Cluster hash tag.

use cacheobj::{Cache, CacheConfig, CacheKey, Strategy};
use proptest::prelude::{any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest, Just};
use proptest::strategy::Strategy as _;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, CacheKey)]
struct TwoStrings {
    x: String,
    y: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, CacheKey)]
struct Mixed {
    o: Option<String>,
    n: u64,
    f: bool,
}

const TWO: Strategy<u8, TwoStrings> = Strategy::<u8, TwoStrings>::obj("a:<x>:<y>");
const MIXED: Strategy<u8, Mixed> = Strategy::<u8, Mixed>::obj("b:<o>:<n>:<f>");
const TAGGED: Strategy<u8, TwoStrings> = Strategy::<u8, TwoStrings>::obj("t:{<x>}:<y>");
// Placeholders out of field order: rendered through the library's other (scratch) path.
const REVERSED: Strategy<u8, TwoStrings> = Strategy::<u8, TwoStrings>::obj("a:<y>:<x>");

fn render_two(cache: &Cache, k: &TwoStrings) -> Vec<u8> {
    cache.entry_key(&TWO, k).unwrap().key
}

fn render_mixed(cache: &Cache, k: &Mixed) -> Vec<u8> {
    cache.entry_key(&MIXED, k).unwrap().key
}

/// Undoes `%XX` escapes; `None` when the text is not a well-formed escaped value.
fn unescape(part: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < part.len() {
        match part[i] {
            b'%' => {
                let hex = std::str::from_utf8(part.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b"_.-".contains(&b) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Recovers the key from its rendering: the rendering holds all of the key.
fn parse_two(rendered: &[u8]) -> Option<TwoStrings> {
    let rest = rendered.strip_prefix(b"a:")?;
    let parts: Vec<&[u8]> = rest.split(|&b| b == b':').collect();
    let [x, y] = parts[..] else { return None };
    Some(TwoStrings {
        x: String::from_utf8(unescape(x)?).ok()?,
        y: String::from_utf8(unescape(y)?).ok()?,
    })
}

fn parse_mixed(rendered: &[u8]) -> Option<Mixed> {
    let rest = rendered.strip_prefix(b"b:")?;
    let parts: Vec<&[u8]> = rest.split(|&b| b == b':').collect();
    let [o, n, f] = parts[..] else { return None };
    let o = if o == b"%N" {
        None
    } else {
        Some(String::from_utf8(unescape(o)?).ok()?)
    };
    let n = std::str::from_utf8(n).ok()?.parse().ok()?;
    let f = match f {
        b"true" => true,
        b"false" => false,
        _ => return None,
    };
    Some(Mixed { o, n, f })
}

/// Strings built from the bytes that matter: separators, `%`, the `%N` none mark, braces,
/// digits, and some non-ASCII.
fn tricky() -> impl proptest::strategy::Strategy<Value = String> {
    prop_oneof![
        3 => "[:%N1{}a ]{0,5}",
        1 => any::<String>(),
        1 => Just("%N".to_string()),
        1 => Just(String::new()),
    ]
}

fn two() -> impl proptest::strategy::Strategy<Value = TwoStrings> {
    (tricky(), tricky()).prop_map(|(x, y)| TwoStrings { x, y })
}

fn mixed() -> impl proptest::strategy::Strategy<Value = Mixed> {
    (
        prop::option::of(tricky()),
        prop_oneof![0..20u64, any::<u64>()],
        any::<bool>(),
    )
        .prop_map(|(o, n, f)| Mixed { o, n, f })
}

#[test]
fn the_classic_collision_is_not_one() {
    let cache = Cache::in_memory();
    let a = TwoStrings {
        x: "1:2".into(),
        y: "3".into(),
    };
    let b = TwoStrings {
        x: "1".into(),
        y: "2:3".into(),
    };
    assert_ne!(render_two(&cache, &a), render_two(&cache, &b));
    assert_eq!(parse_two(&render_two(&cache, &a)), Some(a));
    assert_eq!(parse_two(&render_two(&cache, &b)), Some(b));
}

#[test]
fn none_and_strings_that_look_like_it_differ() {
    let cache = Cache::in_memory();
    let keys = [
        None,
        Some(""),
        Some("%N"),
        Some("%25N"),
        Some("N"),
        Some("true"),
    ]
    .map(|o| Mixed {
        o: o.map(str::to_string),
        n: 1,
        f: true,
    });
    let mut rendered: Vec<Vec<u8>> = keys.iter().map(|k| render_mixed(&cache, k)).collect();
    rendered.sort();
    rendered.dedup();
    assert_eq!(rendered.len(), keys.len(), "{rendered:?}");
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, CacheKey)]
struct Nested {
    o: Option<Option<u64>>,
}

const NESTED: Strategy<u8, Nested> = Strategy::<u8, Nested>::obj("n:<o>");

/// `None`, `Some(None)` and `Some(Some(1))` are different keys. The library may refuse some of
/// them (`KeyError::Unsupported`), but those it renders must render differently.
#[test]
fn nested_options_do_not_collide() {
    let cache = Cache::in_memory();
    let none = Nested { o: None };
    let some_none = Nested { o: Some(None) };
    let some_some = Nested { o: Some(Some(1)) };
    let mut ok = Vec::new();
    for k in [&none, &some_none, &some_some] {
        match cache.entry_key(&NESTED, k) {
            Ok(e) => ok.push((k.clone(), e.key)),
            // Refusing a key is fine, but only as an unsupported value.
            Err(e) => assert!(
                matches!(e, cacheobj::KeyError::Unsupported { field: "o", .. }),
                "{k:?}: expected KeyError::Unsupported, got {e:?}"
            ),
        }
    }
    for (i, (ka, ra)) in ok.iter().enumerate() {
        for (kb, rb) in &ok[i + 1..] {
            assert_ne!(
                ra,
                rb,
                "{ka:?} and {kb:?} both render to {:?}",
                String::from_utf8_lossy(ra)
            );
        }
    }
}

#[test]
fn the_prefix_comes_first() {
    let cache = Cache::in_memory_with(CacheConfig::builder().prefix("app{1}:").build()).unwrap();
    let k = TwoStrings {
        x: "x".into(),
        y: "y".into(),
    };
    assert_eq!(cache.entry_key(&TWO, &k).unwrap().key, b"app{1}:a:x:y");
    let m = Mixed {
        o: None,
        n: 7,
        f: false,
    };
    assert_eq!(
        cache.entry_key(&MIXED, &m).unwrap().key,
        b"app{1}:b:%N:7:false"
    );
}

proptest! {
    #[test]
    fn two_strings_never_collide(a in two(), b in two()) {
        let cache = Cache::in_memory();
        let (ra, rb) = (render_two(&cache, &a), render_two(&cache, &b));
        prop_assert_eq!(a == b, ra == rb, "{:?} vs {:?}", a, b);
    }

    #[test]
    fn two_strings_render_reversibly(k in two()) {
        let cache = Cache::in_memory();
        let rendered = render_two(&cache, &k);
        prop_assert_eq!(parse_two(&rendered), Some(k.clone()), "{:?}", String::from_utf8_lossy(&rendered));
    }

    #[test]
    fn out_of_order_placeholders_render_reversibly(k in two()) {
        let cache = Cache::in_memory();
        let rendered = cache.entry_key(&REVERSED, &k).unwrap().key;
        let swapped = parse_two(&rendered).map(|t| TwoStrings { x: t.y, y: t.x });
        prop_assert_eq!(swapped, Some(k.clone()), "{:?}", String::from_utf8_lossy(&rendered));
    }

    #[test]
    fn mixed_fields_never_collide(a in mixed(), b in mixed()) {
        let cache = Cache::in_memory();
        let (ra, rb) = (render_mixed(&cache, &a), render_mixed(&cache, &b));
        prop_assert_eq!(a == b, ra == rb, "{:?} vs {:?}", a, b);
    }

    #[test]
    fn mixed_fields_render_reversibly(k in mixed()) {
        let cache = Cache::in_memory();
        let rendered = render_mixed(&cache, &k);
        prop_assert_eq!(parse_mixed(&rendered), Some(k.clone()), "{:?}", String::from_utf8_lossy(&rendered));
    }

    #[test]
    fn neighbours_differ(x in tricky(), y in tricky(), extra in tricky()) {
        // Moving text from one field to the other never keeps the rendering.
        let cache = Cache::in_memory();
        let a = TwoStrings { x: format!("{x}{extra}"), y: y.clone() };
        let b = TwoStrings { x: x.clone(), y: format!("{extra}{y}") };
        prop_assert_eq!(a == b, render_two(&cache, &a) == render_two(&cache, &b));
    }

    #[test]
    fn the_prefix_comes_first_for_any_key(prefix in "[a-z:{}]{0,8}", k in two()) {
        let cache = Cache::in_memory_with(CacheConfig::builder().prefix(prefix.clone()).build()).unwrap();
        let key = cache.entry_key(&TWO, &k).unwrap().key;
        prop_assert!(key.starts_with(prefix.as_bytes()));
        prop_assert_eq!(parse_two(&key[prefix.len()..]), Some(k));
    }

    #[test]
    fn braces_in_values_are_escaped(k in two(), m in mixed()) {
        let cache = Cache::in_memory();
        for key in [render_two(&cache, &k), render_mixed(&cache, &m)] {
            prop_assert!(
                !key.contains(&b'{') && !key.contains(&b'}'),
                "a brace leaked into {:?}", String::from_utf8_lossy(&key)
            );
        }
    }

    #[test]
    fn the_hash_tag_is_the_templates(k in two()) {
        // Redis Cluster hashes the text between the first `{` and the next `}`: it must be
        // exactly the escaped `x`, whatever `x` and `y` hold.
        let cache = Cache::in_memory();
        let key = cache.entry_key(&TAGGED, &k).unwrap().key;
        let open = key.iter().position(|&b| b == b'{').unwrap();
        let close = open + 1 + key[open + 1..].iter().position(|&b| b == b'}').unwrap();
        prop_assert_eq!(open, 2);
        prop_assert_eq!(unescape(&key[open + 1..close]), Some(k.x.clone().into_bytes()));
        prop_assert_eq!(key.iter().filter(|&&b| b == b'{' || b == b'}').count(), 2);
        prop_assert_eq!(unescape(&key[close + 2..]), Some(k.y.clone().into_bytes()));
    }
}
