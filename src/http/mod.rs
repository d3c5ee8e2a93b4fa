//! HTTP: the ingest router with its middleware stack, the admin router, and the shared `AppState`.

pub mod admin;
pub mod error;
pub mod ingest;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::error_handling::HandleErrorLayer;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{BoxError, Router};
use tower::ServiceBuilder;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::GlobalKeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

pub use error::ApiError;

use crate::config::{AckMode, Settings};
use crate::ingest::{EventLimits, IngestQueue, RequestLimits};
use crate::lifecycle::{Readiness, Shutdown};
use crate::telemetry::Metrics;

pub const EVENTS_PATH: &str = "/events";
pub const TOPIC_EVENTS_PATH: &str = "/topics/{topic}/events";
pub const HEALTH_PATH: &str = "/health";
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The OpenAPI 3.1 document of the whole API, kept in the repo and checked against the routes by tests.
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

/// Per-request limits of the ingest API.
#[derive(Debug, Clone)]
pub struct IngestLimits {
    pub max_body_bytes: usize,
    pub max_event_bytes: usize,
    pub request: RequestLimits,
}

/// The topics clients can write: the default, and the allowlist for `/topics/{topic}/events`.
#[derive(Debug)]
pub struct Topics {
    pub default: Arc<str>,
    allowed: std::collections::HashMap<String, Arc<str>>,
}

impl Topics {
    pub fn from_settings(settings: &Settings) -> Self {
        let default: Arc<str> = Arc::from(settings.kafka.topic.as_str());
        let mut allowed: std::collections::HashMap<String, Arc<str>> =
            settings.kafka.topic_allowlist.iter().map(|t| (t.clone(), Arc::from(t.as_str()))).collect();
        allowed.insert(settings.kafka.topic.clone(), default.clone());
        Topics { default, allowed }
    }

    pub fn get(&self, name: &str) -> Option<Arc<str>> {
        self.allowed.get(name).cloned()
    }
}

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub queue: IngestQueue,
    pub metrics: Metrics,
    pub readiness: Arc<Readiness>,
    pub shutdown: Shutdown,
    pub topics: Arc<Topics>,
    pub ack_mode: AckMode,
    /// How long an `ack=kafka` request waits for the broker.
    pub ack_timeout: Duration,
    pub limits: Arc<IngestLimits>,
    /// At its size limit, new events are refused: they could not be kept if Kafka failed them.
    pub spool: Arc<crate::kafka::Spool>,
}

impl IngestLimits {
    pub fn from_settings(settings: &Settings) -> Self {
        let i = &settings.ingest;
        IngestLimits {
            max_body_bytes: settings.http.max_body_bytes,
            max_event_bytes: i.max_event_bytes,
            request: RequestLimits {
                max_decoded_bytes: i.max_decoded_bytes,
                max_batch_events: i.max_batch_events,
                max_depth: i.max_json_depth,
                event: EventLimits { max_headers: i.max_event_headers, max_header_bytes: i.max_event_header_bytes },
            },
        }
    }
}

/// The ingest router wrapped in its middleware stack.
pub fn ingest_router(state: AppState, settings: &Settings) -> Router {
    let governor = (settings.rate_limit.rps > 0).then(|| {
        let period = Duration::from_nanos((1_000_000_000u64 / u64::from(settings.rate_limit.rps)).max(1));
        let config = GovernorConfigBuilder::default()
            .period(period)
            .burst_size(settings.rate_limit.burst)
            .key_extractor(GlobalKeyExtractor)
            .finish()
            .expect("period and burst are validated non-zero");
        GovernorLayer::new(config).error_handler(rate_limited)
    });

    let stack = ServiceBuilder::new()
        // Request id first, so every later layer and log line can carry it; echoed to the client.
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        // One span per request with method, route and request id; completion logged at debug.
        // Rejections are routine (a full queue, a bad event): logged at debug, never at error.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
                    tracing::debug_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        // Count and time every answer, including the ones produced by the layers below.
        .layer(middleware::from_fn_with_state(state.metrics.clone(), record_http))
        // A panicking handler answers 500 problem+json and the process keeps serving.
        .layer(CatchPanicLayer::custom(|_| ApiError::internal().into_response()))
        // Requests (including slow bodies) end at REQUEST_TIMEOUT with 408.
        .layer(HandleErrorLayer::new(|err: BoxError| async move {
            if err.is::<tower::timeout::error::Elapsed>() {
                ApiError::request_timeout()
            } else {
                ApiError::internal()
            }
        }))
        .timeout(settings.http.request_timeout)
        // Global rate limit (RATE_LIMIT_RPS / RATE_LIMIT_BURST), as in the Go service: 429 beyond it.
        .option_layer(governor);

    Router::new()
        .route(EVENTS_PATH, post(ingest::post_events))
        .route(TOPIC_EVENTS_PATH, post(ingest::post_topic_events))
        .route(HEALTH_PATH, get(ingest::health))
        .route(OPENAPI_PATH, get(openapi))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(state)
        .layer(stack)
}

async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

fn rate_limited(err: GovernorError) -> Response {
    match err {
        GovernorError::TooManyRequests { wait_time, .. } => ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "request rate above RATE_LIMIT_RPS",
        )
        .retry_after(wait_time.max(1))
        .into_response(),
        _ => ApiError::internal().into_response(),
    }
}

async fn record_http(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = match req.extensions().get::<MatchedPath>().map(MatchedPath::as_str) {
        Some(EVENTS_PATH) => EVENTS_PATH,
        Some(TOPIC_EVENTS_PATH) => TOPIC_EVENTS_PATH,
        Some(HEALTH_PATH) => HEALTH_PATH,
        Some(OPENAPI_PATH) => OPENAPI_PATH,
        _ => "unmatched",
    };
    let response = next.run(req).await;
    metrics.http_request(route, response.status().as_u16(), start.elapsed());
    response
}

/// What the binary serves and accepts, for the chart checks and operators (`event-ingestor describe`).
pub fn describe() -> serde_json::Value {
    let env: Vec<_> = crate::config::KEYS
        .iter()
        .map(|k| serde_json::json!({"name": k.env, "default": k.default, "accepts": k.accepts}))
        .collect();
    serde_json::json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "env": env,
        "env_prefixes": [crate::config::KAFKA_PROPERTY_PREFIX],
        "env_other": [crate::config::CONFIG_FILE_ENV, "RUST_LOG"],
        "routes": {
            "main": [
                {"method": "POST", "path": EVENTS_PATH},
                {"method": "POST", "path": TOPIC_EVENTS_PATH},
                {"method": "GET", "path": HEALTH_PATH},
                {"method": "GET", "path": OPENAPI_PATH},
            ],
            "admin": [
                {"method": "GET", "path": admin::METRICS_PATH},
                {"method": "GET", "path": admin::LIVENESS_PATH},
                {"method": "GET", "path": admin::READINESS_PATH},
                {"method": "POST", "path": admin::DRAIN_PATH},
            ],
        },
        "probes": {"port_setting": "ADMIN_PORT", "liveness": admin::LIVENESS_PATH, "readiness": admin::READINESS_PATH, "drain": admin::DRAIN_PATH, "metrics": admin::METRICS_PATH},
    })
}
