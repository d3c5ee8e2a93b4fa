//! HTTP: the ingest router with its middleware stack, the admin router, and the shared `AppState`.

pub mod access;
pub mod admin;
pub mod arena;
pub mod error;
pub mod ingest;
pub mod layers;
pub mod server;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower::ServiceBuilder;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::GlobalKeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use error::ApiError;

use crate::config::{AckMode, Settings};
use crate::ingest::{EventLimits, IngestQueue, RequestLimits};
use crate::lifecycle::{Readiness, Shutdown};
use crate::telemetry::Metrics;

pub const EVENTS_PATH: &str = "/events";
pub const TOPIC_EVENTS_PATH: &str = "/topics/{topic}/events";
pub const HEALTH_PATH: &str = "/health";
pub const OPENAPI_PATH: &str = "/openapi.json";
/// The default `BEACON_PATH`, and the route label of whatever path is configured.
pub const BEACON_PATH_LABEL: &str = "/beacon";

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

/// What every handler shares: one allocation, so the clones axum makes per request and per layer are
/// one reference count each.
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

impl AppState {
    pub fn new(shared: SharedState) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// The contents of [`AppState`].
pub struct SharedState {
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
    pub access: Arc<access::Access>,
    /// Decides per request whether it is traced (no span at all when not).
    pub sampler: crate::telemetry::trace::HeadSampler,
    pub beacon_path: Arc<str>,
    pub body_read_timeout: Duration,
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

/// The ingest API as one service: the routes inside the middleware stack. Cloned once per connection and
/// called in place for each of its requests (`server::serve`); the stack is outside the router, so it is
/// neither boxed nor cloned per route.
pub trait IngestService:
    tower::Service<Request, Response = Response, Error = Infallible, Future: Send + 'static> + Clone + Send + Sync + 'static
{
}

impl<T> IngestService for T where
    T: tower::Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The ingest router wrapped in its middleware stack. Called within a Tokio runtime: the load shedding
/// starts measuring how fast requests finish.
pub fn ingest_router(state: AppState, settings: &Settings) -> impl IngestService {
    let router = Router::new()
        .route(EVENTS_PATH, post(ingest::post_events))
        .route(TOPIC_EVENTS_PATH, post(ingest::post_topic_events))
        .route(&settings.access.beacon_path, post(ingest::post_events))
        .route(HEALTH_PATH, get(ingest::health))
        .route(OPENAPI_PATH, get(openapi))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(state.clone());
    stack(Routes { state: state.clone(), router }, state, settings)
}

/// The ingest routes: `POST /events` and the beacon path go straight to their handler, everything else
/// through the axum router (the same handler for those two, so the same answers). The hot path skips
/// route matching, the router's extension inserts and one of its two boxed futures a request.
///
/// Both paths answer with a boxed future: every layer above moves its inner future into its own, so
/// an unboxed router future (a whole request inside) made each request copy a few hundred bytes once a layer.
#[derive(Clone)]
struct Routes {
    state: AppState,
    router: Router,
}

impl tower::Service<Request> for Routes {
    type Response = Response;
    type Error = Infallible;
    type Future = futures_util::future::BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        // The router is always ready, and so is the handler.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let path = req.uri().path();
        if req.method() == axum::http::Method::POST && (path == EVENTS_PATH || path == &*self.state.beacon_path) {
            let state = axum::extract::State(self.state.clone());
            return Box::pin(futures_util::FutureExt::map(ingest::post_events(state, req), |answer| {
                Ok(answer.into_response())
            }));
        }
        Box::pin(tower::Service::call(&mut self.router, req))
    }
}

/// Wraps `routes` in the ingest middleware stack (public so tests can put a misbehaving route inside it).
/// Called within a Tokio runtime, as [`ingest_router`].
pub fn with_middleware(routes: Router<AppState>, state: AppState, settings: &Settings) -> impl IngestService {
    stack(routes.with_state(state.clone()), state, settings)
}

/// The ingest middleware stack around `routes`.
fn stack(routes: impl IngestService, state: AppState, settings: &Settings) -> impl IngestService {
    let rl = &settings.rate_limit;
    let by_requests = !rl.count_events;
    let global = (by_requests && rl.rps > 0).then(|| {
        let config = GovernorConfigBuilder::default()
            .period(period(rl.rps))
            .burst_size(rl.burst)
            .key_extractor(GlobalKeyExtractor)
            .finish()
            .expect("period and burst are validated non-zero");
        let (metrics, quota) = (state.metrics.clone(), quota_of(rl.rps, rl.burst));
        GovernorLayer::new(config).error_handler(move |e| governor_refusal(&metrics, "global", &quota, e))
    });
    let client = (by_requests && rl.client_rps > 0).then(|| {
        let config = GovernorConfigBuilder::default()
            .period(period(rl.client_rps))
            .burst_size(rl.client_burst)
            .key_extractor(access::ClientKeyExtractor { trusted: Arc::new(rl.trusted_proxies.clone()) })
            .finish()
            .expect("period and burst are validated non-zero");
        let (metrics, quota) = (state.metrics.clone(), quota_of(rl.client_rps, rl.client_burst));
        GovernorLayer::new(config).error_handler(move |e| governor_refusal(&metrics, "client", &quota, e))
    });
    // Its future boxed: held in place it would make every request's future larger (by two hundred bytes,
    // moved once by each layer above) whether CORS is configured or not.
    let cors = (!settings.access.cors_origins.is_empty()).then(|| {
        ServiceBuilder::new()
            .map_future(|answer| -> futures_util::future::BoxFuture<'static, _> { Box::pin(answer) })
            .layer(cors_layer(&settings.access.cors_origins))
            .into_inner()
    });
    let auth = state.access.keys.enabled().then(|| layers::AuthLayer::new(state.clone()));
    let sampler = state.sampler;
    let beacon_path = state.beacon_path.clone();

    let stack = ServiceBuilder::new()
        // Request id first, so every later layer and log line can carry it; echoed to the client.
        .layer(layers::RequestIdLayer::new())
        // The server span (HTTP semantic conventions), child of the caller's `traceparent`; its trace id
        // is on every log line of the request. Rejections are routine (a full queue, a bad event):
        // logged at debug, never at error.
        .layer(layers::TraceLayer::new(move |req: &Request| server_span(req, &sampler, &beacon_path)))
        // Count and time every answer, including the ones produced by the layers below.
        .layer(layers::HttpMetricsLayer::new(state.metrics.clone(), state.beacon_path.clone()))
        // A panicking handler answers 500 problem+json, is counted, and the process keeps serving.
        .layer(layers::CatchPanicLayer::new(state.metrics.clone()))
        // Browsers: preflights answered here, before authentication, for the configured origins only.
        .option_layer(cors)
        // Requests (including slow bodies) end at REQUEST_TIMEOUT: 408 problem+json.
        .layer(layers::RequestTimeoutLayer::new(settings.http.request_timeout))
        // Beyond MAX_CONCURRENT_REQUESTS, refuse at once (503 + a Retry-After from the rate requests
        // finish) rather than queue behind a full limit.
        .layer(layers::LoadShedLayer::new(
            settings.http.max_concurrent_requests,
            settings.http.request_timeout,
            state.metrics.clone(),
        ))
        // API keys (when configured): 401 without one; the tenant is known to the limits below.
        .option_layer(auth)
        // Global rate limit (RATE_LIMIT_RPS / RATE_LIMIT_BURST, as in the Go service): 429 beyond it.
        .option_layer(global)
        // Per-client rate limit (CLIENT_RATE_LIMIT_*), by tenant or client IP.
        .option_layer(client);
    // The body limit is the last step, in the handler: it reads the body against MAX_BODY_BYTES (early
    // on Content-Length) within BODY_READ_TIMEOUT, so its refusals are problem+json like the rest.

    stack.service(routes)
}

fn server_span(req: &Request, sampler: &crate::telemetry::trace::HeadSampler, beacon_path: &str) -> tracing::Span {
    let id = || req.headers().get(&layers::X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !sampler.sample(req.headers()) {
        // Not traced: a DEBUG span carrying the request id for debug logs, and above DEBUG no span at all
        // (a disabled span still checks for a `log` logger whenever it is entered, left or closed).
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return tracing::Span::none();
        }
        return tracing::debug_span!("request", method = %req.method(), request_id = %id());
    }
    let id = id();
    let route = layers::route_label(req.uri().path(), beacon_path);
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {}", req.method(), route),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = route,
        url.path = %req.uri().path(),
        http.response.status_code = tracing::field::Empty,
        request_id = %id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    crate::telemetry::trace::adopt_remote_parent(&span, req.headers());
    span
}

fn period(rps: u32) -> Duration {
    Duration::from_nanos((1_000_000_000u64 / u64::from(rps)).max(1))
}

fn quota_of(rps: u32, burst: u32) -> governor::Quota {
    governor::Quota::per_second(std::num::NonZeroU32::new(rps.max(1)).expect("max(1)"))
        .allow_burst(std::num::NonZeroU32::new(burst.max(1)).expect("max(1)"))
}

fn governor_refusal(metrics: &Metrics, scope: &'static str, quota: &governor::Quota, err: GovernorError) -> Response {
    match err {
        GovernorError::TooManyRequests { wait_time, .. } => {
            metrics.rate_limited(scope);
            access::rate_limited(scope, quota, Duration::from_secs(wait_time)).into_response()
        }
        _ => ApiError::internal().into_response(),
    }
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    use axum::http::{header, HeaderName, HeaderValue, Method};
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::POST, Method::GET, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            header::AUTHORIZATION,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("traceparent"),
            HeaderName::from_static("tracestate"),
        ])
        .expose_headers([header::RETRY_AFTER, HeaderName::from_static("x-request-id")])
        .max_age(Duration::from_secs(600))
}

async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
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
        "env_prefixes": [crate::config::KAFKA_PROPERTY_PREFIX, "OTEL_"],
        "env_other": [crate::config::CONFIG_FILE_ENV, "RUST_LOG"],
        "routes": {
            "main": [
                {"method": "POST", "path": EVENTS_PATH},
                {"method": "POST", "path": TOPIC_EVENTS_PATH},
                {"method": "POST", "path": BEACON_PATH_LABEL},
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
