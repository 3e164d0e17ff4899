//! What the side-by-side benches (`side_by_side`, `local`) compute from their rounds: medians,
//! per-round ratios of two contenders, and durations for their tables. Each bench uses a part.
#![allow(dead_code)]

use std::time::Duration;

/// The median of `v` (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `d` in ns, us or ms, whichever reads best.
pub fn fmt_dur(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns}ns")
    } else if ns < 10_000_000 {
        format!("{:.1}us", ns as f64 / 1e3)
    } else {
        format!("{:.2}ms", ns as f64 / 1e6)
    }
}

/// A ratio between two contenders over the rounds: its median and range.
#[derive(Clone, Copy)]
pub struct Ratio {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Ratio {
    /// The median and range of per-round `ratios`.
    pub fn over(ratios: Vec<f64>) -> Ratio {
        Ratio {
            min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
            max: ratios.iter().copied().fold(0.0, f64::max),
            median: median(ratios),
        }
    }

    /// The ratio of a median (over rounds) to one outside measurement, such as
    /// redis-benchmark's.
    pub fn against(ours: f64, theirs: f64) -> Ratio {
        let r = ours / theirs;
        Ratio {
            median: r,
            min: r,
            max: r,
        }
    }
}

/// The benches' `Cache` on the throwaway server at `port`, checked to answer.
pub async fn bench_cache(port: u16, prefix: &str) -> cacheobj::Cache {
    let config = cacheobj::CacheConfig::builder()
        .host("127.0.0.1")
        .port(port)
        .prefix(prefix)
        // Generous, so no fetch under 64-task load fails open and runs its loader instead.
        .response_timeout(Duration::from_secs(5))
        .build();
    let cache = cacheobj::Cache::connect(config)
        .await
        .expect("Cache::connect");
    cache
        .ping()
        .await
        .expect("cacheobj cannot reach the bench Redis");
    cache
}
