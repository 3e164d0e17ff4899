//! Arbitrary bytes under obj and counter entries of an in-memory cache, fetched as several
//! value types and both codecs: the fetch returns exactly what rmp-serde / `postcard::from_bytes`
//! (both with the library's nesting limit of 128 levels) / `str::parse` make of the bytes (a
//! hit), or else the loader's value, which replaces the entry (a miss); never a panic, never a
//! hang.
#![no_main]

mod common;

use std::collections::BTreeMap;

use cacheobj::{Codec, Counter, Strategy};
use common::{block_on, check, plant, Id, Raw};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: u64,
    name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Unit,
    Newtype(u8),
    Tuple(i16, bool),
    Struct { x: i32, tag: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Doc {
    title: String,
    subtitle: Option<String>,
    ids: Vec<u32>,
    shape: Shape,
    attrs: BTreeMap<String, u8>,
    pair: (u8, i64),
    flag: bool,
    letter: char,
    bytes: Vec<u8>,
}

/// A recursive type: decoding stops at 128 levels of nesting (each `Tree` is two: a struct and
/// a sequence).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tree {
    label: u8,
    children: Vec<Tree>,
}

const RAW: Strategy<Raw, Id, Counter> = Strategy::counter("e:<id>");
const ITEM: Strategy<Item, Id> = Strategy::<Item, Id>::obj("e:<id>");
const ITEM_PC: Strategy<Item, Id> = Strategy::<Item, Id>::obj("e:<id>").codec(Codec::Postcard);
const DOC: Strategy<Doc, Id> = Strategy::<Doc, Id>::obj("e:<id>");
const DOC_PC: Strategy<Doc, Id> = Strategy::<Doc, Id>::obj("e:<id>").codec(Codec::Postcard);
const NAME: Strategy<Option<String>, Id> = Strategy::<Option<String>, Id>::obj("e:<id>");
const TREE: Strategy<Tree, Id> = Strategy::<Tree, Id>::obj("e:<id>");
const TREE_PC: Strategy<Tree, Id> = Strategy::<Tree, Id>::obj("e:<id>").codec(Codec::Postcard);
const COUNT: Strategy<i64, Id, Counter> = Strategy::counter("e:<id>");

fn doc() -> Doc {
    Doc {
        title: "t".into(),
        subtitle: None,
        ids: vec![1, 2],
        shape: Shape::Struct { x: -1, tag: None },
        attrs: BTreeMap::from([("a".to_string(), 1)]),
        pair: (1, -1),
        flag: true,
        letter: 'λ',
        bytes: vec![0, 255],
    }
}

fn same<T>(v: T) -> T {
    v
}

/// What cacheobj's postcard decoding makes of `data` as a `Tree`: `postcard::from_bytes`, but
/// no more than 128 levels of nesting, so at most 64 `Tree`s from the root to a leaf.
fn postcard_tree(data: &[u8]) -> Option<Tree> {
    let tree: Tree = postcard::from_bytes(data).ok()?;
    // The height, without recursion.
    let mut height = 0;
    let mut stack = vec![(&tree, 1)];
    while let Some((t, h)) = stack.pop() {
        height = height.max(h);
        stack.extend(t.children.iter().map(|c| (c, h + 1)));
    }
    (height <= 64).then_some(tree)
}

fuzz_target!(|data: &[u8]| {
    // A lease marker makes a fetch wait for the lease (by design): not what this explores.
    if data.starts_with(b"\xC1cacheobj:") {
        return;
    }
    block_on(async {
        let raw = Raw(data.to_vec());
        let item = Item {
            id: 7,
            name: "fresh".into(),
        };

        plant(&RAW, raw.clone()).await;
        check("Item msgpack", &ITEM, common::rmp(data), item.clone(), same).await;
        plant(&RAW, raw.clone()).await;
        check(
            "Item postcard",
            &ITEM_PC,
            postcard::from_bytes(data).ok(),
            item,
            same,
        )
        .await;
        plant(&RAW, raw.clone()).await;
        check("Doc msgpack", &DOC, common::rmp(data), doc(), same).await;
        plant(&RAW, raw.clone()).await;
        check(
            "Doc postcard",
            &DOC_PC,
            postcard::from_bytes(data).ok(),
            doc(),
            same,
        )
        .await;
        plant(&RAW, raw.clone()).await;
        check(
            "Option<String> msgpack",
            &NAME,
            common::rmp(data),
            Some("n".into()),
            same,
        )
        .await;
        plant(&RAW, raw.clone()).await;
        let leaf = Tree {
            label: 1,
            children: Vec::new(),
        };
        check("Tree msgpack", &TREE, common::rmp(data), leaf.clone(), same).await;
        plant(&RAW, raw.clone()).await;
        check("Tree postcard", &TREE_PC, postcard_tree(data), leaf, same).await;
        plant(&RAW, raw).await;
        let count = std::str::from_utf8(data).ok().and_then(|s| s.parse().ok());
        check("counter", &COUNT, count, 42, same).await;
    });
});
