//! The event envelope: parsing with errors that name the field, validation, and the normalized JSON form.
//!
//! `{"id"?: string, "type": string, "timestamp"?: RFC 3339, "key"?: string,
//!   "headers"?: {string: string}, "payload": any JSON}`
//!
//! The payload is kept as raw JSON text: it is validated once by the parser and copied, never rebuilt.

use std::collections::BTreeMap;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Longest accepted `id`, `type` and `key` (characters of UTF-8 text).
pub const MAX_NAME_LEN: usize = 256;

/// Why one event was refused, naming the field where there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventError {
    /// A stable machine code (`missing_field`, `invalid_field`, `malformed_json`, ...).
    pub code: &'static str,
    /// The offending field, e.g. `type` or `headers`.
    pub field: Option<&'static str>,
    pub message: String,
}

impl EventError {
    fn field(code: &'static str, field: &'static str, message: impl Into<String>) -> Self {
        Self { code, field: Some(field), message: message.into() }
    }

    pub fn malformed(err: &serde_json::Error) -> Self {
        Self { code: "malformed_json", field: None, message: err.to_string() }
    }
}

impl std::fmt::Display for EventError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A valid, normalized event.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub event_type: String,
    /// CloudEvents `source`, when the event came as a CloudEvent.
    pub source: Option<String>,
    pub timestamp: OffsetDateTime,
    pub key: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub payload: Box<RawValue>,
}

/// Every field as raw JSON, so each can be checked on its own and the error can name it.
/// A field given as `null` is `Some("null")`, not `None`, so that `"id": null` is refused rather than
/// silently replaced.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "type", deserialize_with = "present")]
    event_type: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    key: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    headers: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Limits that apply to one event's fields.
#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    pub max_headers: usize,
    pub max_header_bytes: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        Self { max_headers: 64, max_header_bytes: 16 * 1024 }
    }
}

/// Parses and validates one event from its JSON text. `now` fills a missing timestamp so that every
/// event of one request carries the same receive time.
pub fn parse_event(json: &str, now: OffsetDateTime, limits: &EventLimits) -> Result<Event, EventError> {
    let wire: Wire<'_> = serde_json::from_str(json).map_err(|e| classify_wire_error(&e, json))?;

    let event_type = match wire.event_type {
        None => return Err(EventError::field("missing_field", "type", "`type` is required")),
        Some(raw) => name_field(raw, "type")?,
    };
    let id = match wire.id {
        None => uuid::Uuid::now_v7().to_string(),
        Some(raw) => name_field(raw, "id")?,
    };
    let key = wire.key.map(|raw| name_field(raw, "key")).transpose()?;
    let timestamp = match wire.timestamp {
        None => now,
        Some(raw) => {
            let text: String = serde_json::from_str(raw.get()).map_err(|_| {
                EventError::field("invalid_field", "timestamp", "`timestamp` must be an RFC 3339 string")
            })?;
            OffsetDateTime::parse(&text, &Rfc3339).map_err(|e| {
                EventError::field("invalid_field", "timestamp", format!("`timestamp` is not RFC 3339: {e}"))
            })?
        }
    };
    let headers = match wire.headers {
        None => BTreeMap::new(),
        Some(raw) => parse_headers(raw, limits)?,
    };
    let payload = match wire.payload {
        None => return Err(EventError::field("missing_field", "payload", "`payload` is required")),
        Some(raw) => raw.to_owned(),
    };
    Ok(Event { id, event_type, source: None, timestamp, key, headers, payload })
}

/// serde's messages for a wrong shape do not say which field; the top-level ones we can name.
fn classify_wire_error(err: &serde_json::Error, json: &str) -> EventError {
    use serde_json::error::Category;
    match err.classify() {
        Category::Data => {
            let msg = err.to_string();
            if msg.starts_with("unknown field") {
                EventError { code: "unknown_field", field: None, message: msg }
            } else if json.trim_start().starts_with('{') {
                EventError { code: "invalid_event", field: None, message: msg }
            } else {
                EventError {
                    code: "invalid_event",
                    field: None,
                    message: format!("an event must be a JSON object ({msg})"),
                }
            }
        }
        _ => EventError::malformed(err),
    }
}

fn name_field(raw: &RawValue, field: &'static str) -> Result<String, EventError> {
    let value: String = serde_json::from_str(raw.get())
        .map_err(|_| EventError::field("invalid_field", field, format!("`{field}` must be a string")))?;
    if value.is_empty() {
        return Err(EventError::field("invalid_field", field, format!("`{field}` must not be empty")));
    }
    if value.chars().count() > MAX_NAME_LEN {
        return Err(EventError::field(
            "invalid_field",
            field,
            format!("`{field}` is longer than {MAX_NAME_LEN} characters"),
        ));
    }
    Ok(value)
}

/// Header names reserved for the record headers the gateway writes itself.
fn reserved_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("ce_") || lower == "content-type" || lower == "traceparent" || lower == "tracestate"
}

fn parse_headers(raw: &RawValue, limits: &EventLimits) -> Result<BTreeMap<String, String>, EventError> {
    let headers: BTreeMap<String, String> = serde_json::from_str(raw.get())
        .map_err(|_| EventError::field("invalid_field", "headers", "`headers` must be an object of string values"))?;
    if headers.len() > limits.max_headers {
        return Err(EventError::field(
            "too_many_headers",
            "headers",
            format!("`headers` has {} entries; the limit is {}", headers.len(), limits.max_headers),
        ));
    }
    let bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > limits.max_header_bytes {
        return Err(EventError::field(
            "headers_too_large",
            "headers",
            format!("`headers` hold {bytes} bytes; the limit is {}", limits.max_header_bytes),
        ));
    }
    if let Some(name) = headers.keys().find(|k| k.is_empty() || reserved_header(k)) {
        return Err(EventError::field(
            "invalid_field",
            "headers",
            format!("header name {name:?} is empty or reserved (ce_*, content-type, traceparent, tracestate)"),
        ));
    }
    Ok(headers)
}

#[derive(Serialize)]
struct Normalized<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
    timestamp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: &'a BTreeMap<String, String>,
    payload: &'a RawValue,
}

impl Event {
    /// The timestamp as RFC 3339 in UTC, as written into the record and its `ce_time` header.
    pub fn timestamp_rfc3339(&self) -> String {
        self.timestamp
            .to_offset(time::UtcOffset::UTC)
            .format(&Rfc3339)
            .unwrap_or_else(|_| self.timestamp.unix_timestamp().to_string())
    }

    /// Milliseconds since the Unix epoch, the Kafka record timestamp.
    pub fn timestamp_millis(&self) -> i64 {
        (self.timestamp.unix_timestamp_nanos() / 1_000_000) as i64
    }

    /// The normalized envelope as JSON: the Kafka record value.
    pub fn to_json(&self, timestamp: &str) -> Vec<u8> {
        let normalized = Normalized {
            id: &self.id,
            event_type: &self.event_type,
            source: self.source.as_deref(),
            timestamp,
            key: self.key.as_deref(),
            headers: &self.headers,
            payload: &self.payload,
        };
        let mut out = Vec::with_capacity(self.payload.get().len() + 160);
        serde_json::to_writer(&mut out, &normalized).expect("serializing strings and raw JSON cannot fail");
        out
    }

    /// The partitioning key: the caller's `key`, else the event id.
    pub fn partition_key(&self) -> &str {
        self.key.as_deref().unwrap_or(&self.id)
    }
}

/// Rejects a JSON value whose nesting exceeds `max_depth` before it reaches serde (whose own recursion
/// limit is 128 and whose error would not say which limit was hit). Strings are skipped correctly.
pub fn check_depth(json: &[u8], max_depth: usize) -> Result<(), EventError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(EventError {
                        code: "nesting_too_deep",
                        field: None,
                        message: format!("JSON nesting exceeds the limit of {max_depth} levels"),
                    });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
    }

    fn parse(json: &str) -> Result<Event, EventError> {
        parse_event(json, now(), &EventLimits::default())
    }

    #[test]
    fn fills_id_and_timestamp() {
        let e = parse(r#"{"type":"click","payload":{"user_id":123}}"#).unwrap();
        assert_eq!(uuid::Uuid::parse_str(&e.id).unwrap().get_version_num(), 7);
        assert_eq!(e.timestamp, now());
        assert_eq!(e.partition_key(), e.id);
        let v: serde_json::Value = serde_json::from_slice(&e.to_json(&e.timestamp_rfc3339())).unwrap();
        assert_eq!(v["payload"]["user_id"], 123);
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20Z");
        assert!(v.get("key").is_none());
    }

    #[test]
    fn keeps_given_fields() {
        let e = parse(
            r#"{"id":"e-1","type":"t","timestamp":"2024-01-02T03:04:05.5+01:00","key":"k","headers":{"a":"b"},"payload":null}"#,
        )
        .unwrap();
        assert_eq!(e.id, "e-1");
        assert_eq!(e.partition_key(), "k");
        assert_eq!(e.timestamp_rfc3339(), "2024-01-02T02:04:05.5Z");
        assert_eq!(e.timestamp_millis(), 1_704_161_045_500);
        assert_eq!(e.payload.get(), "null");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"payload":1}"#, "missing_field", Some("type")),
            (r#"{"type":"t"}"#, "missing_field", Some("payload")),
            (r#"{"type":5,"payload":1}"#, "invalid_field", Some("type")),
            (r#"{"type":"t","id":null,"payload":1}"#, "invalid_field", Some("id")),
            (r#"{"type":"","payload":1}"#, "invalid_field", Some("type")),
            (r#"{"type":"t","timestamp":"yesterday","payload":1}"#, "invalid_field", Some("timestamp")),
            (r#"{"type":"t","headers":{"a":1},"payload":1}"#, "invalid_field", Some("headers")),
            (r#"{"type":"t","headers":{"ce_id":"x"},"payload":1}"#, "invalid_field", Some("headers")),
            (r#"{"type":"t","payload":1,"extra":2}"#, "unknown_field", None),
            (r#"{"type":"t","payload":"#, "malformed_json", None),
            ("42", "invalid_event", None),
        ];
        for (json, code, field) in cases {
            let err = parse(json).unwrap_err();
            assert_eq!((err.code, err.field), (code, field), "{json}: {err}");
        }
    }

    #[test]
    fn depth_check_skips_strings() {
        assert!(check_depth(br#"{"a":"[[[[[[[[[["}"#, 2).is_ok());
        assert!(check_depth(b"[[[1]]]", 3).is_ok());
        assert_eq!(check_depth(b"[[[[1]]]]", 3).unwrap_err().code, "nesting_too_deep");
    }
}
