//! The `metrics` feature: each fetch's figures reach the installed recorder as counters and a
//! load-time histogram labelled by strategy name, matching `Cache::strategy_stats`. Run by
//! `scripts/test.sh` as `cargo test --features metrics --test metrics`.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;

use cacheobj::{Cache, CacheConfig, CacheKey, Strategy};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::{redis_url, unique_prefix};

#[derive(Debug, Clone, serde::Serialize, CacheKey)]
struct ItemKey {
    item_id: u64,
}

const NAMED: Strategy<String, ItemKey> = Strategy::obj("m:named:<item_id>").name("m_item");
const UNNAMED: Strategy<String, ItemKey> = Strategy::obj("m:plain:<item_id>");

/// The recorder's figures, summed over snapshots (a snapshot drains the counters).
struct Figures {
    snapshotter: Snapshotter,
    counters: Mutex<HashMap<(String, String), u64>>,
    histograms: Mutex<HashMap<(String, String), usize>>,
}

impl Figures {
    fn install() -> Figures {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this test binary");
        Figures {
            snapshotter,
            counters: Mutex::default(),
            histograms: Mutex::default(),
        }
    }

    fn take(&self) {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            let strategy = key
                .labels()
                .find(|l| l.key() == "strategy")
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            let id = (key.name().to_string(), strategy);
            match value {
                DebugValue::Counter(n) => {
                    *self.counters.lock().unwrap().entry(id).or_default() += n;
                }
                DebugValue::Histogram(values) => {
                    *self.histograms.lock().unwrap().entry(id).or_default() += values.len();
                }
                DebugValue::Gauge(_) => {}
            }
        }
    }

    fn counter(&self, name: &str, strategy: &str) -> u64 {
        self.take();
        let counters = self.counters.lock().unwrap();
        counters
            .get(&(name.to_string(), strategy.to_string()))
            .copied()
            .unwrap_or(0)
    }

    fn samples(&self, name: &str, strategy: &str) -> usize {
        self.take();
        let histograms = self.histograms.lock().unwrap();
        histograms
            .get(&(name.to_string(), strategy.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

async fn load(cache: &Cache, strategy: &Strategy<String, ItemKey>, item_id: u64) -> String {
    cache
        .fetch(strategy, &ItemKey { item_id }, || async move {
            Ok::<_, Infallible>(format!("item {item_id}"))
        })
        .await
        .unwrap()
}

/// One test: the recorder is global to this binary, and snapshots drain it.
#[tokio::test]
async fn fetches_reach_the_recorder_labelled_by_strategy_name() {
    let figures = Figures::install();
    let cache = Cache::connect(
        CacheConfig::builder()
            .url(redis_url())
            .prefix(unique_prefix("metrics"))
            .build(),
    )
    .await
    .unwrap();

    // Named: two misses (loads), then three hits.
    for id in [1, 2, 1, 2, 1] {
        assert_eq!(load(&cache, &NAMED, id).await, format!("item {id}"));
    }
    // Unnamed: labelled by its template.
    load(&cache, &UNNAMED, 1).await;

    assert_eq!(figures.counter("cacheobj_hits_total", "m_item"), 3);
    assert_eq!(figures.counter("cacheobj_misses_total", "m_item"), 2);
    assert_eq!(figures.counter("cacheobj_loads_total", "m_item"), 2);
    assert_eq!(figures.samples("cacheobj_load_seconds", "m_item"), 2);
    assert_eq!(figures.counter("cacheobj_errors_total", "m_item"), 0);
    assert_eq!(
        figures.counter("cacheobj_misses_total", "m:plain:<item_id>"),
        1
    );
    assert_eq!(
        figures.counter("cacheobj_hits_total", "m:plain:<item_id>"),
        0
    );

    // The same figures as the per-strategy stats.
    let stats = cache.strategy_stats(&NAMED);
    assert_eq!((stats.hits, stats.misses, stats.loads), (3, 2, 2));

    // fetch_many counts per key.
    let keys: Vec<ItemKey> = (1..=4).map(|item_id| ItemKey { item_id }).collect();
    let names = cache
        .fetch_many(&NAMED, &keys, |missing: Vec<ItemKey>| async move {
            Ok::<_, Infallible>(
                missing
                    .iter()
                    .map(|k| format!("item {}", k.item_id))
                    .collect(),
            )
        })
        .await
        .unwrap();
    assert_eq!(names, ["item 1", "item 2", "item 3", "item 4"]);
    assert_eq!(figures.counter("cacheobj_hits_total", "m_item"), 5);
    assert_eq!(figures.counter("cacheobj_misses_total", "m_item"), 4);
    assert_eq!(figures.counter("cacheobj_loads_total", "m_item"), 3);

    // No label ever holds a key's values: one series per strategy name.
    figures.take();
    let counters = figures.counters.lock().unwrap();
    let mut strategies: Vec<&str> = counters.keys().map(|(_, s)| s.as_str()).collect();
    strategies.sort_unstable();
    strategies.dedup();
    assert_eq!(strategies, ["m:plain:<item_id>", "m_item"]);
}
