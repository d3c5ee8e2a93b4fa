//! The ingest routes: `POST /events` (one event, a JSON array, or NDJSON) and `GET /health`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::error::ApiError;
use super::AppState;
use crate::config::AckMode;
use crate::ingest::envelope::check_depth;
use crate::ingest::{parse_event, EventError, QueueError};
use crate::kafka::{AckBatch, DeliveryOutcome, OutboundRecord};

/// How the body is framed, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// One JSON object, or a JSON array of them.
    Json,
    /// One JSON object per line; blank lines ignored.
    Ndjson,
}

fn framing(headers: &HeaderMap) -> Result<Framing, ApiError> {
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        let enc = enc.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if !enc.is_empty() && enc != "identity" {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!("Content-Encoding {enc:?} is not supported; send identity"),
            ));
        }
    }
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Framing::Json);
    };
    let mime = ct.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        // `curl -d` sends form-urlencoded and the Go service read any body as JSON: keep both working.
        "" | "application/json" | "application/x-www-form-urlencoded" | "text/plain" => Ok(Framing::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/x-jsonlines" => {
            Ok(Framing::Ndjson)
        }
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type {other:?} is not supported; send application/json or application/x-ndjson"),
        )),
    }
}

/// The `ack` query parameter, else the configured mode.
fn ack_mode(uri: &Uri, default: AckMode) -> Result<AckMode, ApiError> {
    let Some(query) = uri.query() else {
        return Ok(default);
    };
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
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    let too_large =
        || ApiError::too_large("body_too_large", format!("the request body exceeds {limit} bytes (MAX_BODY_BYTES)"));
    let announced =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if err.is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            source = err.source();
        }
        ApiError::bad_request("body_read_failed", format!("the request body could not be read: {e}"))
    })
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

/// The body split into items: (JSON text, NDJSON line number).
enum Items<'a> {
    Single(&'a str),
    Batch(Vec<(&'a str, Option<usize>)>),
}

fn split_items<'a>(text: &'a str, framing: Framing) -> Result<Items<'a>, ApiError> {
    match framing {
        Framing::Json => {
            let trimmed = text.trim_start();
            if trimmed.starts_with('[') {
                let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| malformed(&e, None))?;
                Ok(Items::Batch(items.into_iter().map(|raw| (raw.get(), None)).collect()))
            } else if trimmed.is_empty() {
                Err(ApiError::bad_request("empty_body", "the request body is empty"))
            } else {
                Ok(Items::Single(text))
            }
        }
        Framing::Ndjson => Ok(Items::Batch(
            text.lines()
                .enumerate()
                .filter(|(_, line)| !line.trim().is_empty())
                .map(|(i, line)| (line, Some(i + 1)))
                .collect(),
        )),
    }
}

fn malformed(err: &serde_json::Error, line: Option<usize>) -> ApiError {
    ApiError::bad_request("malformed_json", format!("malformed JSON: {err}"))
        .with("line", line.unwrap_or(err.line()))
        .with("column", err.column())
}

/// `POST /events`.
pub async fn post_events(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let received_at = Instant::now();
    let now = OffsetDateTime::now_utc();
    let mode = ack_mode(&uri, state.ack_mode)?;
    let framing = framing(&headers)?;
    let bytes = read_body(&headers, body, state.limits.max_body_bytes).await?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        ApiError::bad_request("invalid_utf8", format!("the body is not valid UTF-8 (at byte {})", e.valid_up_to()))
    })?;
    check_depth(text.as_bytes(), state.limits.max_depth).map_err(|e| ApiError::from_event(&e))?;

    match split_items(text, framing)? {
        Items::Single(json) => {
            let event = parse_event(json, now, &state.limits.event).map_err(|e| {
                state.metrics.rejected(e.code, 1);
                if e.code == "malformed_json" {
                    ApiError::bad_request(e.code, format!("malformed JSON: {}", e.message))
                } else {
                    ApiError::from_event(&e)
                }
            })?;
            let record = OutboundRecord::from_event(&event, &state.topic);
            if record.value.len() > state.limits.max_event_bytes {
                state.metrics.rejected("event_too_large", 1);
                return Err(ApiError::too_large(
                    "event_too_large",
                    format!(
                        "the encoded event is {} bytes; the limit is {} (MAX_EVENT_BYTES)",
                        record.value.len(),
                        state.limits.max_event_bytes
                    ),
                ));
            }
            let id = record.id.clone();
            let acks = enqueue(&state, vec![record], mode, received_at)?;
            match acks {
                None => Ok((StatusCode::ACCEPTED, Json(json!({"status": "accepted", "id": id}))).into_response()),
                Some(batch) => {
                    let outcomes = wait_for_acks(&state, &batch).await;
                    match outcomes.into_iter().next().flatten() {
                        Some(DeliveryOutcome::Delivered { partition, offset }) => Ok((
                            StatusCode::OK,
                            Json(json!({"status": "published", "id": id, "topic": &*state.topic, "partition": partition, "offset": offset})),
                        )
                            .into_response()),
                        Some(DeliveryOutcome::Failed { code, message }) => Err(delivery_failed(&code, &message).with("id", id)),
                        None => Err(ack_timeout().with("id", id)),
                    }
                }
            }
        }
        Items::Batch(items) => ingest_batch(&state, items, now, mode, received_at).await,
    }
}

async fn ingest_batch(
    state: &AppState,
    items: Vec<(&str, Option<usize>)>,
    now: OffsetDateTime,
    mode: AckMode,
    received_at: Instant,
) -> Result<Response, ApiError> {
    if items.is_empty() {
        return Err(ApiError::bad_request("empty_batch", "the batch holds no events"));
    }
    if items.len() > state.limits.max_batch_events {
        return Err(ApiError::too_large(
            "batch_too_large",
            format!(
                "the batch holds {} events; the limit is {} (MAX_BATCH_EVENTS)",
                items.len(),
                state.limits.max_batch_events
            ),
        ));
    }
    let mut results = Vec::with_capacity(items.len());
    let mut records = Vec::with_capacity(items.len());
    // Position of each accepted record in `results`.
    let mut slots = Vec::with_capacity(items.len());
    for (index, (json, line)) in items.into_iter().enumerate() {
        let parsed = parse_event(json, now, &state.limits.event).and_then(|event| {
            let record = OutboundRecord::from_event(&event, &state.topic);
            if record.value.len() > state.limits.max_event_bytes {
                return Err(EventError {
                    code: "event_too_large",
                    field: None,
                    message: format!(
                        "the encoded event is {} bytes; the limit is {}",
                        record.value.len(),
                        state.limits.max_event_bytes
                    ),
                });
            }
            Ok(record)
        });
        match parsed {
            Ok(record) => {
                slots.push(results.len());
                results.push(ItemResult {
                    index,
                    line,
                    id: Some(record.id.clone()),
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
    if let Some(batch) = enqueue(state, records, mode, received_at)? {
        let outcomes = wait_for_acks(state, &batch).await;
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
        return Ok((status, Json(body)).into_response());
    }
    let status = if rejected == 0 { StatusCode::ACCEPTED } else { StatusCode::MULTI_STATUS };
    let body = json!({"status": if rejected == 0 { "accepted" } else { "partial" },
        "accepted": accepted_count, "rejected": rejected, "results": results});
    Ok((status, Json(body)).into_response())
}

/// Puts the records on the queue; under `ack=kafka` returns the batch to wait on.
fn enqueue(
    state: &AppState,
    records: Vec<OutboundRecord>,
    mode: AckMode,
    received_at: Instant,
) -> Result<Option<Arc<AckBatch>>, ApiError> {
    let n = records.len();
    let acks = (mode == AckMode::Kafka).then(|| AckBatch::new(n));
    match state.queue.try_push(records, acks.clone(), received_at) {
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
