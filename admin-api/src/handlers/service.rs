//! Public routes: liveness, readiness, metrics and the OpenAPI document.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use carepath_engine::store::stats;
use serde::Serialize;
use serde_json::Value;

use crate::{ApiError, AppState};

#[derive(Serialize)]
pub(crate) struct Health {
    status: &'static str,
}

pub(crate) async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize)]
pub(crate) struct Ready {
    status: &'static str,
    backend: &'static str,
}

pub(crate) async fn ready(State(s): State<AppState>) -> Result<Json<Ready>, ApiError> {
    stats::ping(&s.pool)
        .await
        .map_err(|e| ApiError::Unavailable(format!("database: {e}")))?;
    Ok(Json(Ready {
        status: "ready",
        backend: s.pool.backend(),
    }))
}

pub(crate) async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

/// Prometheus text exposition: requests, latency, the scheduler's due backlog and lag, the
/// outbox backlog.
pub(crate) async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    let now = s.now();
    let backlog = stats::due_backlog(&s.pool, now).await?;
    let outbox = stats::outbox_backlog(&s.pool, now).await?;
    let m = &s.metrics;
    let mut out = String::new();
    out.push_str("# TYPE carepath_http_requests_total counter\n");
    out.push_str(&format!(
        "carepath_http_requests_total {}\n",
        m.requests.load(Ordering::Relaxed)
    ));
    out.push_str(&format!(
        "carepath_http_client_errors_total {}\n",
        m.client_errors.load(Ordering::Relaxed)
    ));
    out.push_str(&format!(
        "carepath_http_server_errors_total {}\n",
        m.server_errors.load(Ordering::Relaxed)
    ));
    out.push_str("# TYPE carepath_http_request_duration_seconds histogram\n");
    let mut cumulative = 0;
    for (i, le) in ["0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "+Inf"]
        .iter()
        .enumerate()
    {
        cumulative += m.latency[i].load(Ordering::Relaxed);
        out.push_str(&format!(
            "carepath_http_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}\n"
        ));
    }
    out.push_str(&format!(
        "carepath_http_request_duration_seconds_sum {}\n",
        m.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
    ));
    out.push_str(&format!(
        "carepath_http_request_duration_seconds_count {cumulative}\n"
    ));
    out.push_str(&format!("carepath_scheduler_due_backlog {}\n", backlog.due));
    out.push_str(&format!(
        "carepath_scheduler_lag_seconds {}\n",
        backlog
            .oldest_wake_at
            .map(|o| now.as_second() - o)
            .unwrap_or(0)
    ));
    out.push_str(&format!("carepath_outbox_backlog {outbox}\n"));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
