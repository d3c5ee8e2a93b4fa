//! The admin listener's routes: `/metrics`, `/livez`, `/readyz`, `POST /drain`. No rate limiting or load
//! shedding applies here, so probes and scrapes keep answering under overload.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::error::ApiError;
use super::AppState;

pub const METRICS_PATH: &str = "/metrics";
pub const LIVENESS_PATH: &str = "/livez";
pub const READINESS_PATH: &str = "/readyz";
pub const DRAIN_PATH: &str = "/drain";

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(METRICS_PATH, get(metrics))
        .route(LIVENESS_PATH, get(livez))
        .route(READINESS_PATH, get(readyz))
        .route(DRAIN_PATH, post(drain))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(state)
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), the classic text format otherwise.
async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if wants_openmetrics {
        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
            .into_response()
    } else {
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.encode_prometheus_text())
            .into_response()
    }
}

/// Liveness never depends on Kafka: a broker outage must not get healthy pods restarted.
async fn livez() -> &'static str {
    "OK"
}

async fn readyz(State(state): State<AppState>) -> Response {
    let checks = state.readiness.checks();
    let ready = checks.iter().all(|c| c.ok);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"ready": ready, "checks": checks}))).into_response()
}

/// Starts the same drain as SIGTERM (for a preStop hook): readiness turns 503 at once.
async fn drain(State(state): State<AppState>) -> Response {
    tracing::info!("drain requested over the admin API");
    state.readiness.set_draining();
    state.shutdown.begin();
    (StatusCode::ACCEPTED, Json(json!({"status": "draining"}))).into_response()
}
