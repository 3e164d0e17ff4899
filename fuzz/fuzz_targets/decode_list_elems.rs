//! Arbitrary elements under list and set entries of an in-memory cache, fetched as collections
//! of plain-text types (integers, strings, booleans, chars) and of codec-encoded types (structs,
//! options): the fetch returns the elements decoded one by one (a hit) when every element
//! decodes, and otherwise the loader's value, which replaces the entry (a miss).
#![no_main]

mod common;

use cacheobj::{List, Set, Strategy};
use common::{block_on, check, plant, Id, Raw};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Member {
    id: u64,
    role: String,
}

const RAW_LIST: Strategy<Vec<Raw>, Id, List> = Strategy::list("l:<id>");
const RAW_SET: Strategy<Vec<Raw>, Id, Set> = Strategy::set("s:<id>");
const U64S: Strategy<Vec<u64>, Id, List> = Strategy::list("l:<id>");
const I8S: Strategy<Vec<i8>, Id, List> = Strategy::list("l:<id>");
const BOOLS: Strategy<Vec<bool>, Id, List> = Strategy::list("l:<id>");
const CHARS: Strategy<Vec<char>, Id, List> = Strategy::list("l:<id>");
const STRINGS: Strategy<Vec<String>, Id, List> = Strategy::list("l:<id>");
const MEMBERS: Strategy<Vec<Member>, Id, List> = Strategy::list("l:<id>");
const OPTIONS: Strategy<Vec<Option<u32>>, Id, List> = Strategy::list("l:<id>");
const TAGS: Strategy<Vec<String>, Id, Set> = Strategy::set("s:<id>");

fn text<T: std::str::FromStr>(e: &[u8]) -> Option<T> {
    std::str::from_utf8(e).ok()?.parse().ok()
}

fn all<T>(elems: &[Vec<u8>], f: impl Fn(&[u8]) -> Option<T>) -> Option<Vec<T>> {
    elems.iter().map(|e| f(e)).collect()
}

fn same<T>(v: T) -> T {
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

fuzz_target!(|elems: Vec<Vec<u8>>| {
    block_on(async {
        let raw: Vec<Raw> = elems.iter().cloned().map(Raw).collect();
        macro_rules! list {
            ($what:literal, $s:expr, $expected:expr, $fresh:expr) => {
                plant(&RAW_LIST, raw.clone()).await;
                check($what, &$s, $expected, $fresh, same).await;
            };
        }
        list!("u64", U64S, all(&elems, text::<u64>), vec![1, 2]);
        list!("i8", I8S, all(&elems, text::<i8>), vec![-1]);
        list!("bool", BOOLS, all(&elems, text::<bool>), vec![true]);
        list!("char", CHARS, all(&elems, text::<char>), vec!['x']);
        list!(
            "String",
            STRINGS,
            all(&elems, |e| String::from_utf8(e.to_vec()).ok()),
            vec!["s".to_string()]
        );
        list!(
            "Member",
            MEMBERS,
            all(&elems, |e| common::rmp(e)),
            vec![Member {
                id: 1,
                role: "r".into()
            }]
        );
        list!(
            "Option<u32>",
            OPTIONS,
            all(&elems, |e| common::rmp(e)),
            vec![Some(3)]
        );

        // A set stores each distinct element once, in no particular order.
        plant(&RAW_SET, raw.clone()).await;
        let expected = all(&elems, |e| String::from_utf8(e.to_vec()).ok());
        check(
            "set of String",
            &TAGS,
            expected,
            vec!["t".to_string()],
            sorted,
        )
        .await;
    });
});
