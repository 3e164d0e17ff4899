//! Micro benchmarks (criterion): key rendering through the public API and the two codecs on a
//! ~200-byte value. No Redis needed.
//!
//! ```text
//! cargo bench --bench micro                 # full run
//! cargo bench --bench micro -- --quick      # a few seconds
//! ```

use std::hint::black_box;

use cacheobj::{Cache, CacheKey, Strategy};
use cacheobj_strategies::{Item, ItemKey, ITEM};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde::{Deserialize, Serialize};

/// A key with three fields of different kinds.
#[derive(Debug, Clone, Serialize, CacheKey)]
struct TripleKey {
    a: u64,
    b: String,
    c: bool,
}

const TRIPLE: Strategy<Item, TripleKey> =
    Strategy::<Item, TripleKey>::obj("t:<a>:<b>:<c>").expire(60);

/// A typical row: a few integers, two strings and a list of ids, about 200 bytes as MessagePack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    id: u64,
    owner_id: u64,
    created_at: i64,
    score: i32,
    flags: u16,
    title: String,
    body: String,
    tags: Vec<u32>,
}

fn row() -> Row {
    Row {
        id: 1_234_567,
        owner_id: 42,
        created_at: 1_700_000_000,
        score: -17,
        flags: 0b1010,
        title: "A reasonably sized title".to_string(),
        body: "Some body text that makes the value look like a real cached row, not a toy."
            .to_string(),
        tags: (0..16).map(|i| i * 1000 + 7).collect(),
    }
}

fn keys(c: &mut Criterion) {
    let cache = Cache::in_memory();
    let one = ItemKey { item_id: 123_456 };
    let three = TripleKey {
        a: 987_654_321,
        b: "user-name_01".to_string(),
        c: true,
    };
    // Sanity: the rendered keys are what FORMAT.md says.
    assert_eq!(
        cache.entry_key(&ITEM, &one).expect("renders").key,
        b"item:123456"
    );
    assert_eq!(
        cache.entry_key(&TRIPLE, &three).expect("renders").key,
        b"t:987654321:user-name_01:true"
    );

    let mut group = c.benchmark_group("entry_key");
    group.throughput(Throughput::Elements(1));
    group.bench_function("1_field", |b| {
        b.iter(|| cache.entry_key(black_box(&ITEM), black_box(&one)))
    });
    group.bench_function("3_fields", |b| {
        b.iter(|| cache.entry_key(black_box(&TRIPLE), black_box(&three)))
    });
    group.finish();
}

fn codecs(c: &mut Criterion) {
    let value = row();
    let msgpack = rmp_serde::to_vec_named(&value).expect("encodes");
    let post = postcard::to_stdvec(&value).expect("encodes");
    assert_eq!(
        rmp_serde::from_slice::<Row>(&msgpack).expect("decodes"),
        value
    );
    assert_eq!(postcard::from_bytes::<Row>(&post).expect("decodes"), value);
    println!(
        "value size: messagepack (named) {} bytes, postcard {} bytes",
        msgpack.len(),
        post.len()
    );

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("messagepack_encode", |b| {
        b.iter(|| rmp_serde::to_vec_named(black_box(&value)).expect("encodes"))
    });
    group.bench_function("messagepack_decode", |b| {
        b.iter(|| rmp_serde::from_slice::<Row>(black_box(&msgpack)).expect("decodes"))
    });
    group.bench_function("postcard_encode", |b| {
        b.iter(|| postcard::to_stdvec(black_box(&value)).expect("encodes"))
    });
    group.bench_function("postcard_decode", |b| {
        b.iter(|| postcard::from_bytes::<Row>(black_box(&post)).expect("decodes"))
    });
    group.finish();
}

criterion_group!(benches, keys, codecs);
criterion_main!(benches);
