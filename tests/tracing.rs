//! The `tracing` spans: `cacheobj.fetch`, `cacheobj.fetch_many` and `cacheobj.mutate` carry the
//! strategy name and the outcome, and nothing at INFO or above shows a key's values.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cacheobj::{Cache, CacheConfig, CacheKey, Strategy};
use support::{redis_url, unique_prefix};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

#[derive(Debug, Clone, serde::Serialize, CacheKey)]
struct UserKey {
    user_id: u64,
}

/// A key value that must never appear at INFO or above.
const SECRET: u64 = 918_273_645;

const USER: Strategy<String, UserKey> = Strategy::obj("t:user:<user_id>").name("user");

type Fields = HashMap<String, String>;

struct Fields2(Fields);

impl Visit for Fields2 {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

/// What the layer saw: closed spans (name, level, fields) and events (level, fields).
#[derive(Default)]
struct Seen {
    spans: Vec<(String, Level, Fields)>,
    events: Vec<(Level, Fields)>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Seen>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields2(Fields::new());
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields.0);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(fields) = ext.get_mut::<Fields>() {
                let mut more = Fields2(std::mem::take(fields));
                values.record(&mut more);
                *fields = more.0;
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields2(Fields::new());
        event.record(&mut fields);
        let level = *event.metadata().level();
        self.0.lock().unwrap().events.push((level, fields.0));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            let fields = span
                .extensions()
                .get::<Fields>()
                .cloned()
                .unwrap_or_default();
            let meta = span.metadata();
            self.0
                .lock()
                .unwrap()
                .spans
                .push((meta.name().to_string(), *meta.level(), fields));
        }
    }
}

impl Capture {
    /// The fields of the closed spans called `name`, in closing order.
    fn spans(&self, name: &str) -> Vec<Fields> {
        let seen = self.0.lock().unwrap();
        seen.spans
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, f)| f.clone())
            .collect()
    }

    /// Fails if anything at INFO or above shows `needle`.
    fn assert_nothing_loud_shows(&self, needle: &str) {
        let seen = self.0.lock().unwrap();
        for (name, level, fields) in &seen.spans {
            if *level <= Level::INFO {
                assert!(
                    !fields.values().any(|v| v.contains(needle)),
                    "span {name} at {level} shows {needle}: {fields:?}"
                );
            }
        }
        for (level, fields) in &seen.events {
            if *level <= Level::INFO {
                assert!(
                    !fields.values().any(|v| v.contains(needle)),
                    "event at {level} shows {needle}: {fields:?}"
                );
            }
        }
    }
}

async fn fetch(cache: &Cache, user_id: u64) -> String {
    cache
        .fetch(&USER, &UserKey { user_id }, || async move {
            Ok::<_, Infallible>(format!("user {user_id}"))
        })
        .await
        .unwrap()
}

fn field<'a>(fields: &'a Fields, name: &str) -> &'a str {
    fields
        .get(name)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no field {name} in {fields:?}"))
}

#[tokio::test]
async fn a_miss_then_a_hit() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let cache = Cache::connect(
        CacheConfig::builder()
            .url(redis_url())
            .prefix(unique_prefix("tracing_hit"))
            .build(),
    )
    .await
    .unwrap();

    assert_eq!(fetch(&cache, SECRET).await, format!("user {SECRET}"));
    assert_eq!(fetch(&cache, SECRET).await, format!("user {SECRET}"));

    let spans = capture.spans("cacheobj.fetch");
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert_eq!(field(&spans[0], "strategy"), "user");
    assert_eq!(field(&spans[0], "outcome"), "miss");
    assert!(field(&spans[0], "load_us").parse::<u64>().is_ok());
    assert_eq!(field(&spans[1], "outcome"), "hit");
    assert!(field(&spans[1], "elapsed_us").parse::<u64>().is_ok());

    cache
        .invalidate(&USER, &UserKey { user_id: SECRET })
        .await
        .unwrap();
    let mutations = capture.spans("cacheobj.mutate");
    assert_eq!(mutations.len(), 1, "{mutations:?}");
    assert_eq!(field(&mutations[0], "op"), "invalidate");
    assert_eq!(field(&mutations[0], "strategy"), "user");
    assert_eq!(field(&mutations[0], "outcome"), "ok");

    let keys: Vec<UserKey> = [SECRET, 2]
        .iter()
        .map(|&user_id| UserKey { user_id })
        .collect();
    cache
        .fetch_many(&USER, &keys, |missing: Vec<UserKey>| async move {
            Ok::<_, Infallible>(
                missing
                    .iter()
                    .map(|k| format!("user {}", k.user_id))
                    .collect(),
            )
        })
        .await
        .unwrap();
    let many = capture.spans("cacheobj.fetch_many");
    assert_eq!(many.len(), 1, "{many:?}");
    assert_eq!(field(&many[0], "strategy"), "user");
    assert_eq!(field(&many[0], "keys"), "2");
    assert_eq!(field(&many[0], "outcome"), "miss");

    capture.assert_nothing_loud_shows(&SECRET.to_string());
}

#[tokio::test]
async fn fail_open() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    // Nothing listens on this port once the listener is gone.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = Cache::connect(
        CacheConfig::builder()
            .url(format!("redis://127.0.0.1:{port}/"))
            .prefix(unique_prefix("tracing_fail_open"))
            .connect_timeout(Duration::from_millis(100))
            .response_timeout(Duration::from_millis(100))
            .build(),
    )
    .await
    .unwrap();

    assert_eq!(fetch(&cache, SECRET).await, format!("user {SECRET}"));

    let spans = capture.spans("cacheobj.fetch");
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(field(&spans[0], "strategy"), "user");
    assert_eq!(field(&spans[0], "outcome"), "fail_open");
    assert!(cache.strategy_stats(&USER).errors >= 1);
    capture.assert_nothing_loud_shows(&SECRET.to_string());
}
