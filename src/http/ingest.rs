//! The ingest routes: `POST /events` and `POST /topics/{topic}/events` (one event, a JSON array, NDJSON,
//! CloudEvents), `GET /health`.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::BufMut;
use serde::Serialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::access::{check_topic, Tenant};
use super::error::ApiError;
use super::AppState;
use crate::config::AckMode;
use crate::ingest::envelope::write_json_str;
use crate::ingest::request::{framing, parse_framed, Framing};
use crate::ingest::{BodyMeta, EventError, Item, Parsed, QueueError, RequestError};
use crate::kafka::{AckBatch, DeliveryOutcome, OutboundRecord};
use crate::telemetry::trace::TraceHeaders;
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `ack` query parameter, else the configured mode.
fn ack_mode(uri: &Uri, default: AckMode) -> Result<AckMode, ApiError> {
    let Some(query) = uri.query() else { return Ok(default) };
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == "ack" {
            return AckMode::parse(value).ok_or_else(|| {
                ApiError::bad_request("invalid_query", "`ack` must be `queued` or `kafka`").with("field", "ack")
            });
        }
    }
    Ok(default)
}

/// Reads the whole body, refusing early when it is (or announces itself as) larger than `limit`.
async fn read_body(mut body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    let too_large =
        || ApiError::too_large("body_too_large", format!("the request body exceeds {limit} bytes (MAX_BODY_BYTES)"));
    // The announced length (Content-Length), as hyper parsed it.
    let announced = axum::body::HttpBody::size_hint(&body).exact();
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // Frame by frame rather than `axum::body::to_bytes`: a body that arrives as one frame (a small one
    // always does) is kept as it is, with nothing allocated to gather it.
    let mut first: Option<axum::body::Bytes> = None;
    let mut gathered: Option<Vec<u8>> = None;
    let mut total = 0usize;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        let frame = frame.map_err(|e| {
            ApiError::bad_request("body_read_failed", format!("the request body could not be read: {e}"))
        })?;
        let Ok(data) = frame.into_data() else { continue };
        total += data.len();
        if total > limit {
            return Err(too_large());
        }
        match (&first, &mut gathered) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let mut all = Vec::with_capacity(announced.map_or(2 * total, |n| n as usize).max(total));
                all.extend_from_slice(head);
                all.extend_from_slice(&data);
                gathered = Some(all);
            }
            (Some(_), Some(all)) => all.extend_from_slice(&data),
        }
    }
    Ok(match gathered {
        Some(all) => all.into(),
        None => first.unwrap_or_default(),
    })
}

/// The headers that decide how the body is read, in one pass over the request's headers (the first of
/// a repeated `Content-Type` or `Content-Encoding` counts, as with `HeaderMap::get`).
fn body_meta(headers: &HeaderMap) -> BodyMeta<'_> {
    // The first value of each, readable or not.
    let (mut content_type, mut content_encoding) = (None, None);
    let mut ce_headers = Vec::new();
    for (name, value) in headers {
        if *name == header::CONTENT_TYPE {
            content_type.get_or_insert(value);
        } else if *name == header::CONTENT_ENCODING {
            content_encoding.get_or_insert(value);
        } else if let Some(attr) = name.as_str().strip_prefix("ce-") {
            if let Ok(value) = value.to_str() {
                ce_headers.push((attr.to_string(), value.to_string()));
            }
        }
    }
    BodyMeta {
        content_type: content_type.and_then(|v: &HeaderValue| v.to_str().ok()),
        content_encoding: content_encoding.and_then(|v: &HeaderValue| v.to_str().ok()),
        ce_headers,
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        use axum::http::StatusCode as S;
        match e {
            RequestError::UnsupportedMediaType(ct) => ApiError::new(
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "Content-Type {ct:?} is not supported; send application/json, application/x-ndjson, \
                     application/cloudevents+json or application/cloudevents-batch+json"
                ),
            ),
            RequestError::UnsupportedEncoding(enc) => ApiError::new(
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!("Content-Encoding {enc:?} is not supported; send identity, gzip or zstd"),
            ),
            RequestError::DecodedTooLarge { limit } => ApiError::too_large(
                "decoded_body_too_large",
                format!("the decoded body exceeds {limit} bytes (MAX_DECODED_BYTES)"),
            ),
            RequestError::Undecodable { encoding, message } => {
                ApiError::bad_request("invalid_encoding", format!("the body is not valid {encoding}: {message}"))
            }
            RequestError::InvalidUtf8 { at } => {
                ApiError::bad_request("invalid_utf8", format!("the body is not valid UTF-8 (at byte {at})"))
            }
            RequestError::TooDeep { limit } => ApiError::bad_request(
                "nesting_too_deep",
                format!("JSON nesting exceeds {limit} levels (MAX_JSON_DEPTH)"),
            ),
            RequestError::Malformed { message, line, column } => {
                ApiError::bad_request("malformed_json", format!("malformed JSON: {message}"))
                    .with("line", line)
                    .with("column", column)
            }
            RequestError::Empty => ApiError::bad_request("empty_body", "the request body is empty"),
            RequestError::EmptyBatch => ApiError::bad_request("empty_batch", "the batch holds no events"),
            RequestError::BatchTooLarge { events, limit } => ApiError::too_large(
                "batch_too_large",
                format!("the batch holds {events} events; the limit is {limit} (MAX_BATCH_EVENTS)"),
            ),
            RequestError::InvalidEvent(e) => ApiError::from_event(&e),
        }
    }
}

/// One item's answer in a batch response.
#[derive(Debug, Serialize)]
struct ItemResult {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
}

impl ItemResult {
    fn rejected(index: usize, line: Option<usize>, err: &EventError) -> Self {
        let mut error = json!({"code": err.code, "message": err.message});
        if let Some(field) = err.field {
            error["field"] = Value::from(field);
        }
        ItemResult { index, line, id: None, status: "rejected", partition: None, offset: None, error: Some(error) }
    }
}

/// `POST /events`: the default topic.
///
/// A plain function that returns the handler's future rather than an `async fn` awaiting it: an async
/// function keeps its arguments (the whole request) in its future next to the future it awaits, so
/// every request's future held, and moved, the request once more.
pub fn post_events(
    State(state): State<AppState>,
    req: Request,
) -> impl Future<Output = Result<Response, ApiError>> + Send + 'static {
    let topic = state.topics.default.clone();
    let (parts, body) = req.into_parts();
    ingest(state, topic, parts, body)
}

/// `POST /topics/{topic}/events`: a topic on the allowlist (`KAFKA_TOPIC_ALLOWLIST`), else 404.
pub async fn post_topic_events(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let Some(topic) = state.topics.get(&topic) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_topic",
            format!("topic {topic:?} is not writable here"),
        )
        .with("topic", topic));
    };
    let (parts, body) = req.into_parts();
    ingest(state, topic, parts, body).await
}

/// The handler's steps. Only the body read and the wait for broker acknowledgements are `await`s; the
/// rest is synchronous, so the future axum boxes per request stays small.
async fn ingest(
    state: AppState,
    topic: Arc<str>,
    parts: axum::http::request::Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let tenant = parts.extensions.get::<Arc<Tenant>>();
    check_topic(tenant, &topic)?;
    let received_at = Instant::now();
    let now = OffsetDateTime::now_utc();
    let mode = ack_mode(&parts.uri, state.ack_mode)?;
    let meta = body_meta(&parts.headers);
    // Refuse an unsupported type or encoding, or a request a full queue cannot take, before reading
    // the body.
    let framing = framing(&meta)?;
    if state.metrics.queue().depth() >= state.metrics.queue().capacity() {
        state.metrics.rejected("queue_full", 1);
        return Err(ApiError::unavailable(
            "queue_full",
            "the ingest queue is full; retry later",
            state.queue.retry_after_secs(1),
        ));
    }
    let bytes = read_body_within(&state, body).await?;
    let taken = accept(&state, &topic, &parts, framing, &meta, &bytes, Received { at: received_at, now, mode })?;
    match taken {
        Taken::Answered(response) => Ok(response),
        // Boxed: only `ack=kafka` requests carry this part of the handler.
        Taken::Publishing(publishing) => Box::pin(publishing.answer(&state)).await,
    }
}

/// When and how a request was received.
struct Received {
    at: Instant,
    now: OffsetDateTime,
    mode: AckMode,
}

/// The body within `BODY_READ_TIMEOUT`. A body already buffered (most small requests) is taken without
/// arming a timer.
async fn read_body_within(state: &AppState, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let mut read = std::pin::pin!(read_body(body, state.limits.max_body_bytes));
    let first = std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
        Poll::Ready(done) => Poll::Ready(Some(done)),
        Poll::Pending => Poll::Ready(None),
    });
    if let Some(done) = first.await {
        return done;
    }
    // Boxed: in place, the timer would make every request's future larger, where few reach this line.
    Box::pin(tokio::time::timeout(state.body_read_timeout, read)).await.map_err(|_| {
        state.metrics.rejected("body_read_timeout", 1);
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_read_timeout",
            "the body did not arrive within BODY_READ_TIMEOUT",
        )
    })?
}

/// What became of a request once its events were queued.
enum Taken {
    /// `queued` mode (or nothing to wait for): the answer.
    Answered(Response),
    /// `ack=kafka`: the answer comes with the broker's acknowledgements.
    Publishing(Publishing),
}

/// An `ack=kafka` request waiting for the broker.
struct Publishing {
    batch: Arc<AckBatch>,
    span: tracing::Span,
    topic: Arc<str>,
    kind: PublishingKind,
}

enum PublishingKind {
    Single { id: String },
    Batch { results: Vec<ItemResult>, slots: Vec<usize>, rejected: usize },
}

/// Parses, validates and encodes the body's events and queues them (synchronous: no `await`).
fn accept(
    state: &AppState,
    topic: &Arc<str>,
    parts: &axum::http::request::Parts,
    framing: Framing,
    meta: &BodyMeta<'_>,
    bytes: &[u8],
    received: Received,
) -> Result<Taken, ApiError> {
    let headers = &parts.headers;
    let tenant = parts.extensions.get::<Arc<Tenant>>();
    // Decoding a large or compressed body is CPU work: keep it off the other requests' way.
    let heavy = meta.content_encoding.is_some() || bytes.len() > 256 * 1024;
    let parse = || parse_framed(framing, meta, bytes, received.now, &state.limits.request);
    let parsed = if heavy { tokio::task::block_in_place(parse) } else { parse() };
    let parsed = parsed.map_err(|e| {
        state.metrics.rejected(rejection_reason(&e), 1);
        ApiError::from(e)
    })?;

    let n = match &parsed {
        Parsed::Single(_) => 1,
        Parsed::Batch(items) => items.iter().filter(|i| i.event.is_ok()).count(),
    };
    if state.access.limits.count_events {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        let client = state.access.limits.client_key(headers, peer, tenant.map(|t| &**t));
        state.access.limits.check_events(&client, tenant.map(|t| &**t), n).inspect_err(|e| {
            state
                .metrics
                .rate_limited(e.extensions.get("scope").and_then(|s| s.as_str()).map_or("global", scope_label));
            state.metrics.rejected("rate_limited", n);
        })?;
    }

    // The producer span (messaging semantic conventions); its context goes into the records' headers.
    // Only for sampled traces: an unsampled (or untraced) request skips its cost entirely.
    let span = if tracing::Span::current().context().span().span_context().is_sampled() {
        tracing::info_span!(
            "publish",
            otel.name = %format_args!("publish {topic}"),
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.operation.type = "publish",
            messaging.destination.name = %topic,
            messaging.batch.message_count = n,
            messaging.kafka.destination.partition = tracing::field::Empty,
            messaging.kafka.offset = tracing::field::Empty,
        )
    } else {
        tracing::Span::none()
    };
    let trace = TraceHeaders::for_records(&span, headers);

    match parsed {
        Parsed::Single(event) => {
            let record = OutboundRecord::from_event(event, topic, &trace);
            if record.value.len() > state.limits.max_event_bytes {
                state.metrics.rejected("event_too_large", 1);
                return Err(ApiError::from_event(&event_too_large(record.value.len(), state.limits.max_event_bytes)));
            }
            if received.mode == AckMode::Queued {
                // The answer is written before the record goes to the queue: no copy of the id for it.
                let answer = accepted_answer(record.id());
                enqueue(state, vec![record], received, span)?;
                return Ok(Taken::Answered(answer));
            }
            let id = record.id().to_string();
            match enqueue(state, vec![record], received, span.clone())? {
                None => Ok(Taken::Answered(accepted_answer(&id))),
                Some(batch) => Ok(Taken::Publishing(Publishing {
                    batch,
                    span,
                    topic: topic.clone(),
                    kind: PublishingKind::Single { id },
                })),
            }
        }
        Parsed::Batch(items) => accept_batch(state, topic, items, received, &trace, span),
    }
}

/// `202 {"status":"accepted","id":…}`: the most frequent answer, written without a serializer.
fn accepted_answer(id: &str) -> Response {
    // Exactly the answer's length unless the id needs escaping.
    let body = super::arena::carve(29 + id.len(), |body| {
        body.put_slice(br#"{"status":"accepted","id":"#);
        write_json_str(body, id);
        body.put_u8(b'}');
    });
    json_answer(StatusCode::ACCEPTED, body)
}

/// The 200 of a single event published with `ack=kafka`, written without a serializer (the fields in the
/// order serde's map gave them).
fn published_answer(id: &str, topic: &str, partition: i32, offset: i64) -> Response {
    use std::io::Write as _;
    let body = super::arena::carve(96 + id.len() + topic.len(), |body| {
        body.put_slice(br#"{"id":"#);
        write_json_str(body, id);
        let _ = write!(body.writer(), r#","offset":{offset},"partition":{partition},"status":"published","topic":"#);
        write_json_str(body, topic);
        body.put_u8(b'}');
    });
    json_answer(StatusCode::OK, body)
}

/// A JSON answer, built directly.
fn json_answer(status: StatusCode, body: axum::body::Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

impl Publishing {
    /// Waits for the broker's acknowledgements and answers.
    async fn answer(self, state: &AppState) -> Result<Response, ApiError> {
        let outcomes = wait_for_acks(state, &self.batch).await;
        let Publishing { span, topic, kind, .. } = self;
        match kind {
            PublishingKind::Single { id } => match outcomes.into_iter().next().flatten() {
                Some(DeliveryOutcome::Delivered { partition, offset }) => {
                    record_delivery(&span, partition, offset);
                    Ok(published_answer(&id, &topic, partition, offset))
                }
                Some(DeliveryOutcome::Failed { code, message }) => Err(delivery_failed(&code, &message).with("id", id)),
                None => Err(ack_timeout().with("id", id)),
            },
            PublishingKind::Batch { mut results, slots, rejected } => {
                let accepted_count = slots.len();
                let mut delivered = 0;
                let mut first_failure: Option<ApiError> = None;
                for (slot, outcome) in slots.iter().zip(outcomes) {
                    let item = &mut results[*slot];
                    match outcome {
                        Some(DeliveryOutcome::Delivered { partition, offset }) => {
                            delivered += 1;
                            item.status = "published";
                            item.partition = Some(partition);
                            item.offset = Some(offset);
                        }
                        Some(DeliveryOutcome::Failed { code, message }) => {
                            item.status = "failed";
                            item.error =
                                Some(json!({"code": "kafka_delivery_failed", "message": format!("{code}: {message}")}));
                            first_failure.get_or_insert_with(|| delivery_failed(&code, &message));
                        }
                        None => {
                            item.status = "failed";
                            item.error = Some(
                                json!({"code": "kafka_ack_timeout", "message": "no broker acknowledgement within KAFKA_WRITE_TIMEOUT"}),
                            );
                            first_failure.get_or_insert_with(ack_timeout);
                        }
                    }
                }
                let failed = accepted_count - delivered;
                if delivered == 0 {
                    let err = first_failure.unwrap_or_else(ack_timeout);
                    return Err(err.with("results", serde_json::to_value(&results).unwrap_or_default()));
                }
                let status = if failed + rejected == 0 { StatusCode::OK } else { StatusCode::MULTI_STATUS };
                let body = json!({"status": if status == StatusCode::OK { "published" } else { "partial" },
                    "published": delivered, "failed": failed, "rejected": rejected, "results": results});
                Ok((status, Json(body)).into_response())
            }
        }
    }
}

fn scope_label(s: &str) -> &'static str {
    match s {
        "client" => "client",
        "tenant" => "tenant",
        _ => "global",
    }
}

/// Puts where Kafka stored the event on the producer span (messaging semantic conventions).
fn record_delivery(span: &tracing::Span, partition: i32, offset: i64) {
    span.record("messaging.kafka.destination.partition", partition);
    span.record("messaging.kafka.offset", offset);
}

/// The metrics label of a request-level rejection.
fn rejection_reason(e: &RequestError) -> &'static str {
    match e {
        RequestError::UnsupportedMediaType(_) => "unsupported_media_type",
        RequestError::UnsupportedEncoding(_) => "unsupported_encoding",
        RequestError::DecodedTooLarge { .. } => "decoded_body_too_large",
        RequestError::Undecodable { .. } => "invalid_encoding",
        RequestError::InvalidUtf8 { .. } => "invalid_utf8",
        RequestError::TooDeep { .. } => "nesting_too_deep",
        RequestError::Malformed { .. } => "malformed_json",
        RequestError::Empty => "empty_body",
        RequestError::EmptyBatch => "empty_batch",
        RequestError::BatchTooLarge { .. } => "batch_too_large",
        RequestError::InvalidEvent(e) => e.code,
    }
}

fn event_too_large(size: usize, limit: usize) -> EventError {
    EventError {
        code: "event_too_large",
        field: None,
        message: format!("the encoded event is {size} bytes; the limit is {limit} (MAX_EVENT_BYTES)"),
    }
}

fn accept_batch(
    state: &AppState,
    topic: &Arc<str>,
    items: Vec<Item>,
    received: Received,
    trace: &TraceHeaders,
    span: tracing::Span,
) -> Result<Taken, ApiError> {
    let mut results = Vec::with_capacity(items.len());
    let mut records = Vec::with_capacity(items.len());
    // Position of each accepted record in `results`.
    let mut slots = Vec::with_capacity(items.len());
    for Item { index, line, event } in items {
        let parsed = event.and_then(|event| {
            let record = OutboundRecord::from_event(event, topic, trace);
            if record.value.len() > state.limits.max_event_bytes {
                return Err(event_too_large(record.value.len(), state.limits.max_event_bytes));
            }
            Ok(record)
        });
        match parsed {
            Ok(record) => {
                slots.push(results.len());
                results.push(ItemResult {
                    index,
                    line,
                    id: Some(record.id().to_string()),
                    status: "accepted",
                    partition: None,
                    offset: None,
                    error: None,
                });
                records.push(record);
            }
            Err(e) => {
                state.metrics.rejected(e.code, 1);
                results.push(ItemResult::rejected(index, line, &e));
            }
        }
    }
    let rejected = results.len() - records.len();
    if records.is_empty() {
        return Err(ApiError::bad_request("all_events_rejected", "no event of the batch is valid; see `results`")
            .with("results", serde_json::to_value(&results).unwrap_or_default()));
    }
    let accepted_count = records.len();
    if let Some(batch) = enqueue(state, records, received, span.clone())? {
        let kind = PublishingKind::Batch { results, slots, rejected };
        return Ok(Taken::Publishing(Publishing { batch, span, topic: topic.clone(), kind }));
    }
    let status = if rejected == 0 { StatusCode::ACCEPTED } else { StatusCode::MULTI_STATUS };
    let body = json!({"status": if rejected == 0 { "accepted" } else { "partial" },
        "accepted": accepted_count, "rejected": rejected, "results": results});
    Ok(Taken::Answered((status, Json(body)).into_response()))
}

/// Puts the records on the queue; under `ack=kafka` returns the batch to wait on.
fn enqueue(
    state: &AppState,
    records: Vec<OutboundRecord>,
    received: Received,
    span: tracing::Span,
) -> Result<Option<Arc<AckBatch>>, ApiError> {
    let n = records.len();
    if state.spool.is_full() {
        state.metrics.rejected("spool_full", n);
        return Err(ApiError::unavailable(
            "spool_full",
            "the local spool is at its size limit (SPOOL_MAX_BYTES): events that Kafka failed could not be kept",
            30,
        ));
    }
    let acks = (received.mode == AckMode::Kafka).then(|| AckBatch::new(n));
    match state.queue.try_push(records, acks.clone(), received.at, span) {
        Ok(()) => Ok(acks),
        Err(QueueError::Full { retry_after_secs }) => {
            state.metrics.rejected("queue_full", n);
            Err(ApiError::unavailable("queue_full", "the ingest queue is full; retry later", retry_after_secs))
        }
        Err(QueueError::TooLarge { capacity }) => {
            state.metrics.rejected("batch_too_large", n);
            Err(ApiError::too_large(
                "batch_too_large",
                format!("the batch holds {n} events; the queue holds at most {capacity} (QUEUE_SIZE)"),
            ))
        }
        Err(QueueError::TooManyBytes { bytes, max_bytes }) => {
            state.metrics.rejected("batch_too_large", n);
            Err(ApiError::too_large(
                "batch_too_large",
                format!("the events hold {bytes} bytes; the queue holds at most {max_bytes} (QUEUE_MAX_BYTES)"),
            ))
        }
        Err(QueueError::Closed) => {
            state.metrics.rejected("draining", n);
            Err(ApiError::unavailable("draining", "the service is shutting down; retry on another instance", 1))
        }
    }
}

/// Waits for the broker's acknowledgements, at most `KAFKA_WRITE_TIMEOUT` plus a margin for the retry.
async fn wait_for_acks(state: &AppState, batch: &Arc<AckBatch>) -> Vec<Option<DeliveryOutcome>> {
    let _ = tokio::time::timeout(state.ack_timeout, batch.wait()).await;
    batch.outcomes()
}

fn delivery_failed(code: &str, message: &str) -> ApiError {
    ApiError::unavailable("kafka_delivery_failed", format!("Kafka did not take the event: {code}: {message}"), 1)
}

fn ack_timeout() -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "kafka_ack_timeout",
        "no broker acknowledgement within KAFKA_WRITE_TIMEOUT",
    )
}

/// `GET /health`: kept from the Go service.
pub async fn health() -> &'static str {
    "OK"
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(res: Response) -> Vec<u8> {
        axum::body::to_bytes(res.into_body(), usize::MAX).await.expect("body").to_vec()
    }

    /// The hand-written answers are byte for byte what serde wrote before, escapes included.
    #[tokio::test]
    async fn written_answers_match_the_serialized_ones() {
        let (id, topic) = ("e-\"1\"\\\u{1}é", "orders.v1");
        let res = published_answer(id, topic, 2, 41);
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        let expected =
            json!({"status": "published", "id": id, "topic": topic, "partition": 2, "offset": 41}).to_string();
        assert_eq!(String::from_utf8(body_of(res).await).unwrap(), expected);

        let res = accepted_answer(id);
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        let body: Value = serde_json::from_slice(&body_of(res).await).unwrap();
        assert_eq!(body, json!({"status": "accepted", "id": id}));
    }
}
