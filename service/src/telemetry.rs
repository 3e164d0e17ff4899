//! `/metrics` (Prometheus text, through the `metrics` facade), request metrics, `/health`.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;

use crate::AppState;

/// Installs the global recorder, with histogram buckets for request latency, and a task that
/// keeps the exporter's histograms trimmed.
///
/// # Errors
///
/// A recorder is installed already.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("http_request_duration_seconds".into()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ],
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Counts every routed request and its latency, labelled by method, route template and
/// status (bounded: never the path's values).
pub async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: request metrics, database query counts, and the cache's figures per
/// strategy (`cacheobj_hits_total{strategy="item"}`, ...), which the library emits itself
/// through the `metrics` facade (its `metrics` feature).
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    metrics::gauge!("service_cache_bypass").set(if state.bypass { 1.0 } else { 0.0 });
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// How long `/health` waits for each dependency.
const PROBE: Duration = Duration::from_secs(1);

/// `GET /health`: 200 while the database answers, whatever Redis does (the cache fails
/// open); 503 when the database does not.
pub async fn health(State(state): State<AppState>) -> Response {
    let redis = if state.on_redis {
        match tokio::time::timeout(PROBE, state.cache.ping()).await {
            Ok(Ok(())) => "up",
            _ => "down",
        }
    } else {
        "embedded"
    };
    let database = match tokio::time::timeout(PROBE, state.db.ping()).await {
        Ok(Ok(())) => "up",
        _ => "down",
    };
    let up = database == "up";
    metrics::gauge!("service_redis_up").set(if redis == "down" { 0.0 } else { 1.0 });
    metrics::gauge!("service_database_up").set(if up { 1.0 } else { 0.0 });
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if !up { "down" } else if redis == "down" { "degraded" } else { "ok" },
        "database": { "kind": state.db.kind(), "state": database },
        "redis": redis,
        "cache_bypass": state.bypass,
    });
    (status, Json(body)).into_response()
}
