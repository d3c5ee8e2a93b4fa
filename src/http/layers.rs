//! The hand-written layers of the ingest stack: request ids, the server span, HTTP metrics, panic
//! catching, the request timeout, load shedding and API-key authentication. Each is a plain `tower`
//! service whose future is a small struct around the inner one and whose answer is the inner answer:
//! no boxed future, no clone of the inner service and no re-boxed response body per request (axum's
//! `from_fn` boxes and clones; tower-http's trace and catch-panic layers wrap or box every body; tower's
//! timeout and load-shed layers need `HandleErrorLayer` to turn their errors into answers). Measured:
//! `cargo run --release --example http_stack` under callgrind, docs/benchmarks.md.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::header::HeaderName;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{ApiError, AppState, BEACON_PATH_LABEL, EVENTS_PATH, HEALTH_PATH, OPENAPI_PATH, TOPIC_EVENTS_PATH};
use crate::ingest::drain::{DrainRate, Slot, Slots};
use crate::telemetry::Metrics;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pin_project! {
    /// An answer given at once by the layer, or the inner service's, with something held until it is done.
    #[project = AnswerProj]
    pub enum Answer<F, G> {
        Now { response: Option<Response> },
        Later { #[pin] future: F, guard: G },
    }
}

impl<F, G, E> Future for Answer<F, G>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AnswerProj::Now { response } => Poll::Ready(Ok(response.take().expect("polled after completion"))),
            AnswerProj::Later { future, .. } => future.poll(cx),
        }
    }
}

fn now<F, G>(response: Response) -> Answer<F, G> {
    Answer::Now { response: Some(response) }
}

/// Implements `Layer` for a layer struct that is cloned into its service next to `inner`.
macro_rules! layer_service {
    ($layer:ident => $service:ident) => {
        #[derive(Clone)]
        pub struct $service<S> {
            layer: $layer,
            inner: S,
        }

        impl<S> Layer<S> for $layer {
            type Service = $service<S>;

            fn layer(&self, inner: S) -> $service<S> {
                $service { layer: self.clone(), inner }
            }
        }
    };
}

macro_rules! poll_ready_inner {
    () => {
        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            self.inner.poll_ready(cx)
        }
    };
}

// --- request ids ---------------------------------------------------------------------------------

/// Keeps the caller's `x-request-id` or sets a new one, and echoes it on the answer.
#[derive(Clone)]
pub struct RequestIdLayer {
    ids: Arc<RequestIds>,
}

/// A random per-process prefix and a counter: unique, no syscall and no formatting machinery per request.
struct RequestIds {
    prefix: [u8; 12],
    next: AtomicU64,
}

impl RequestIdLayer {
    pub fn new() -> Self {
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        let mut prefix = [0u8; 12];
        prefix.copy_from_slice(&uuid.as_bytes()[..12]);
        RequestIdLayer { ids: Arc::new(RequestIds { prefix, next: AtomicU64::new(0) }) }
    }
}

impl Default for RequestIdLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestIds {
    /// `<prefix>-<counter in hex>`.
    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 12 + 1 + 16];
        buf[..12].copy_from_slice(&self.prefix);
        buf[12] = b'-';
        let digits = (64 - n.leading_zeros() as usize).div_ceil(4).max(1);
        for i in 0..digits {
            buf[13 + i] = b"0123456789abcdef"[((n >> (4 * (digits - 1 - i))) & 0xf) as usize];
        }
        let text = &buf[..13 + digits];
        HeaderValue::from_maybe_shared(super::arena::carve(text.len(), |b| b.extend_from_slice(text)))
            .expect("hex digits and a dash are a valid header value")
    }
}

layer_service!(RequestIdLayer => RequestIdService);

impl<S, B> Service<Request> for RequestIdService<S>
where
    S: Service<Request, Response = axum::http::Response<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = WithRequestId<S::Future>;

    poll_ready_inner!();

    fn call(&mut self, mut req: Request) -> Self::Future {
        let id = match req.headers().get(&X_REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = self.layer.ids.next();
                req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
                id
            }
        };
        WithRequestId { inner: self.inner.call(req), id: Some(id) }
    }
}

pin_project! {
    pub struct WithRequestId<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, B, E> Future for WithRequestId<F>
where
    F: Future<Output = Result<axum::http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            res.headers_mut().entry(&X_REQUEST_ID).or_insert(id);
        }
        Poll::Ready(Ok(res))
    }
}

// --- server span -------------------------------------------------------------------------------

/// Runs each request inside the span `make_span` gives it (see `server_span`), puts the answer's status
/// on it and logs the answer at debug. 5xx answers are logged at debug too: they are counted, and the
/// layer that produced one logged why.
#[derive(Clone)]
pub struct TraceLayer<M> {
    make_span: M,
}

impl<M> TraceLayer<M> {
    pub fn new(make_span: M) -> Self {
        TraceLayer { make_span }
    }
}

#[derive(Clone)]
pub struct TraceService<M, S> {
    make_span: M,
    inner: S,
}

impl<M: Clone, S> Layer<S> for TraceLayer<M> {
    type Service = TraceService<M, S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService { make_span: self.make_span.clone(), inner }
    }
}

impl<M, S, B> Service<Request> for TraceService<M, S>
where
    M: Fn(&Request) -> tracing::Span,
    S: Service<Request, Response = axum::http::Response<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Traced<S::Future>;

    poll_ready_inner!();

    fn call(&mut self, req: Request) -> Self::Future {
        let span = (self.make_span)(&req);
        // The latency is only for the debug line: no clock read when that is off.
        let start = tracing::enabled!(tracing::Level::DEBUG).then(Instant::now);
        let inner = span.in_scope(|| self.inner.call(req));
        Traced { inner, span, start }
    }
}

pin_project! {
    pub struct Traced<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
        start: Option<Instant>,
    }
}

impl<F, B, E> Future for Traced<F>
where
    F: Future<Output = Result<axum::http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let res = std::task::ready!(this.inner.poll(cx))?;
        let status = res.status().as_u16();
        this.span.record("http.response.status_code", status);
        if let Some(start) = this.start {
            tracing::debug!(status, latency_us = start.elapsed().as_micros() as u64, "request finished");
        }
        Poll::Ready(Ok(res))
    }
}

// --- panics --------------------------------------------------------------------------------------

/// A panic in the layers below or the handler becomes a 500 problem+json answer, counted in
/// `http_panics_total`; the connection and the process keep serving.
#[derive(Clone)]
pub struct CatchPanicLayer {
    metrics: Metrics,
}

impl CatchPanicLayer {
    pub fn new(metrics: Metrics) -> Self {
        CatchPanicLayer { metrics }
    }
}

layer_service!(CatchPanicLayer => CatchPanicService);

impl<S> Service<Request> for CatchPanicService<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Answer<CatchUnwind<S::Future>, ()>;

    poll_ready_inner!();

    fn call(&mut self, req: Request) -> Self::Future {
        let inner = &mut self.inner;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.call(req))) {
            Ok(future) => {
                Answer::Later { future: CatchUnwind { inner: future, metrics: self.layer.metrics.clone() }, guard: () }
            }
            Err(panic) => now(panicked(&self.layer.metrics, panic)),
        }
    }
}

fn panicked(metrics: &Metrics, panic: Box<dyn std::any::Any + Send>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %message, "a request handler panicked; answered 500");
    metrics.panicked();
    ApiError::internal().into_response()
}

pin_project! {
    pub struct CatchUnwind<F> {
        #[pin]
        inner: F,
        metrics: Metrics,
    }
}

impl<F, E> Future for CatchUnwind<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let inner = this.inner;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => Poll::Ready(Ok(panicked(this.metrics, panic))),
        }
    }
}

// --- HTTP metrics --------------------------------------------------------------------------------

/// Counts and times every answer (`http_requests_total`, `http_request_duration_seconds`), labelled by
/// route template.
#[derive(Clone)]
pub struct HttpMetricsLayer {
    metrics: Metrics,
    beacon_path: Arc<str>,
}

impl HttpMetricsLayer {
    pub fn new(metrics: Metrics, beacon_path: Arc<str>) -> Self {
        HttpMetricsLayer { metrics, beacon_path }
    }
}

/// The route template a path is served by (the label of the HTTP metrics), without routing it.
pub fn route_label(path: &str, beacon_path: &str) -> &'static str {
    match path {
        EVENTS_PATH => EVENTS_PATH,
        HEALTH_PATH => HEALTH_PATH,
        OPENAPI_PATH => OPENAPI_PATH,
        p if p == beacon_path => BEACON_PATH_LABEL,
        p => match p.strip_prefix("/topics/").and_then(|rest| rest.strip_suffix("/events")) {
            Some(topic) if !topic.is_empty() && !topic.contains('/') => TOPIC_EVENTS_PATH,
            _ => "unmatched",
        },
    }
}

layer_service!(HttpMetricsLayer => HttpMetricsService);

impl<S, B> Service<Request> for HttpMetricsService<S>
where
    S: Service<Request, Response = axum::http::Response<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Timed<S::Future>;

    poll_ready_inner!();

    fn call(&mut self, req: Request) -> Self::Future {
        let route = route_label(req.uri().path(), &self.layer.beacon_path);
        Timed { inner: self.inner.call(req), metrics: self.layer.metrics.clone(), route, start: Instant::now() }
    }
}

pin_project! {
    pub struct Timed<F> {
        #[pin]
        inner: F,
        metrics: Metrics,
        route: &'static str,
        start: Instant,
    }
}

impl<F, B, E> Future for Timed<F>
where
    F: Future<Output = Result<axum::http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx))?;
        this.metrics.http_request(this.route, res.status().as_u16(), this.start.elapsed());
        Poll::Ready(Ok(res))
    }
}

// --- request timeout -----------------------------------------------------------------------------

/// Ends a request that is not answered within `REQUEST_TIMEOUT`: 408 problem+json. The timer is only
/// armed if the request is still in progress after its first poll (most are answered in that poll), and
/// counts from then: the first poll is the request's synchronous work, microseconds, and a clock read
/// for every request would cost more than that precision is worth.
#[derive(Clone)]
pub struct RequestTimeoutLayer {
    limit: Duration,
}

impl RequestTimeoutLayer {
    pub fn new(limit: Duration) -> Self {
        RequestTimeoutLayer { limit }
    }
}

layer_service!(RequestTimeoutLayer => RequestTimeoutService);

impl<S> Service<Request> for RequestTimeoutService<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Deadline<S::Future>;

    poll_ready_inner!();

    fn call(&mut self, req: Request) -> Self::Future {
        Deadline { inner: self.inner.call(req), sleep: None, limit: self.layer.limit }
    }
}

pin_project! {
    /// The timer is boxed: most requests never arm it, and a `Sleep` (over 100 bytes) held in place made
    /// every layer above and the connection move that much more with each request's future.
    pub struct Deadline<F> {
        #[pin]
        inner: F,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
        limit: Duration,
    }
}

impl<F, E> Future for Deadline<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(res) = this.inner.poll(cx) {
            return Poll::Ready(res);
        }
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(*this.limit)));
        std::task::ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Ok(ApiError::request_timeout().into_response()))
    }
}

// --- load shedding -------------------------------------------------------------------------------

/// At most `MAX_CONCURRENT_REQUESTS` requests in progress; one more is refused at once (never queued
/// behind the full limit) with 503 and a `Retry-After` of how long the requests in progress take to finish
/// at the rate they have been finishing (Little's law), at most REQUEST_TIMEOUT (no request lasts longer).
#[derive(Clone)]
pub struct LoadShedLayer {
    /// A slot per request in progress.
    in_progress: Arc<Slots>,
    finishing: Arc<DrainRate>,
    max_retry_after_secs: u64,
    metrics: Metrics,
}

impl LoadShedLayer {
    pub fn new(max_concurrent: usize, request_timeout: Duration, metrics: Metrics) -> Self {
        let in_progress = Arc::new(Slots::new(max_concurrent));
        let finishing = DrainRate::track(&in_progress, Slots::finished);
        let max_retry_after_secs = request_timeout.as_secs_f64().ceil() as u64;
        LoadShedLayer { in_progress, finishing, max_retry_after_secs, metrics }
    }
}

layer_service!(LoadShedLayer => LoadShedService);

impl<S> Service<Request> for LoadShedService<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Answer<S::Future, Slot>;

    poll_ready_inner!();

    fn call(&mut self, req: Request) -> Self::Future {
        let layer = &self.layer;
        // The request's place among those in progress, given back when it is answered.
        match layer.in_progress.enter() {
            Some(slot) => Answer::Later { future: self.inner.call(req), guard: slot },
            None => {
                layer.metrics.load_shed();
                let backlog = layer.in_progress.capacity() as u64;
                now(ApiError::overloaded_response(
                    layer.finishing.retry_after_secs(backlog, layer.max_retry_after_secs),
                ))
            }
        }
    }
}

// --- API keys ------------------------------------------------------------------------------------

/// API keys (installed only when keys are configured): 401 without a valid key; the tenant is put on
/// the request for the topic check and the limits below.
#[derive(Clone)]
pub struct AuthLayer {
    state: AppState,
}

impl AuthLayer {
    pub fn new(state: AppState) -> Self {
        AuthLayer { state }
    }
}

layer_service!(AuthLayer => AuthService);

impl<S> Service<Request> for AuthService<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Answer<S::Future, ()>;

    poll_ready_inner!();

    fn call(&mut self, mut req: Request) -> Self::Future {
        match super::access::authenticate(&self.layer.state, &mut req) {
            Ok(()) => Answer::Later { future: self.inner.call(req), guard: () },
            Err(refusal) => now(refusal.into_response()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_prefix_dash_hex_counter() {
        let ids = RequestIds { prefix: *b"0123456789ab", next: AtomicU64::new(0) };
        assert_eq!(ids.next(), "0123456789ab-0");
        assert_eq!(ids.next(), "0123456789ab-1");
        ids.next.store(0xfeed, Ordering::Relaxed);
        assert_eq!(ids.next(), "0123456789ab-feed");
        ids.next.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(ids.next(), "0123456789ab-ffffffffffffffff");
    }

    #[test]
    fn request_ids_written_into_one_arena_after_another_each_keep_their_text() {
        let ids = RequestIds { prefix: *b"0123456789ab", next: AtomicU64::new(0) };
        // Ten arenas' worth, all held at once: the ids of a full arena are not overwritten by the next.
        let held: Vec<HeaderValue> = (0..1_500).map(|_| ids.next()).collect();
        for (n, id) in held.iter().enumerate() {
            assert_eq!(id, format!("0123456789ab-{n:x}").as_str());
        }
    }

    #[test]
    fn route_labels_are_the_route_templates() {
        let label = |p| route_label(p, "/beacon");
        assert_eq!(label("/events"), EVENTS_PATH);
        assert_eq!(label("/topics/orders/events"), TOPIC_EVENTS_PATH);
        assert_eq!(label("/topics//events"), "unmatched");
        assert_eq!(label("/topics/a/b/events"), "unmatched");
        assert_eq!(label("/beacon"), BEACON_PATH_LABEL);
        assert_eq!(label("/health"), HEALTH_PATH);
        assert_eq!(label("/openapi.json"), OPENAPI_PATH);
        assert_eq!(label("/events/"), "unmatched");
        assert_eq!(label("/nope"), "unmatched");
    }
}
