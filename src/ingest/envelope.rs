//! The event envelope: parsing with errors that name the field, validation, and the normalized JSON form.
//!
//! `{"id"?: string, "type": string, "timestamp"?: RFC 3339, "key"?: string,
//!   "headers"?: {string: string}, "payload": any JSON}`
//!
//! The payload is kept as raw JSON text, borrowed from the body: validated once by the parser and copied
//! only into the record, never rebuilt.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::de::Deserializer;
use serde::Deserialize;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::scan;
use super::timestamp::Rfc3339Utc;

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

/// A valid, normalized event. Its id, type and payload borrow the request body's text where they can
/// (an ordinary envelope's always can): copying them out took three allocations an event.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub id: Cow<'a, str>,
    pub event_type: Cow<'a, str>,
    /// CloudEvents `source`, when the event came as a CloudEvent.
    pub source: Option<String>,
    pub timestamp: OffsetDateTime,
    pub key: Option<String>,
    pub headers: EventHeaders,
    pub payload: RawJson<'a>,
}

/// The caller's headers: sorted by name, each name once (a repeated name keeps its last value), the order
/// in which they go into the record value and its Kafka headers. A sorted `Vec` rather than a `BTreeMap`,
/// whose smallest node is over 500 bytes: allocating and freeing one per event cost 5 % of the batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventHeaders(Vec<(String, String)>);

impl EventHeaders {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(name, value)| (name.as_str(), value.as_str()))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        let at = self.0.binary_search_by(|(n, _)| n.as_str().cmp(name)).ok()?;
        Some(&self.0[at].1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, String)> for EventHeaders {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        let mut headers: Vec<_> = pairs.into_iter().collect();
        // Stable: a repeated name's values stay in their order, and the last one is moved into the entry
        // that is kept.
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        headers.dedup_by(|later, kept| {
            let repeated = later.0 == kept.0;
            if repeated {
                std::mem::swap(&mut later.1, &mut kept.1);
            }
            repeated
        });
        Self(headers)
    }
}

/// JSON text that a parser accepted, kept as it came. Not a `Box<RawValue>`, which only serde can make:
/// having serde parse again a payload that `scan` has checked took longer than `scan` over the whole
/// envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawJson<'a>(Cow<'a, str>);

impl<'a> RawJson<'a> {
    /// `null`.
    pub fn null() -> Self {
        Self::from(RawValue::NULL)
    }

    /// `text`, which must be one JSON value as serde or `scan` accepted it.
    fn accepted(text: &'a str) -> Self {
        Self(Cow::Borrowed(text))
    }

    pub fn get(&self) -> &str {
        &self.0
    }

    /// The same JSON, owning its text.
    pub fn into_owned(self) -> RawJson<'static> {
        RawJson(Cow::Owned(self.0.into_owned()))
    }
}

impl<'a> From<&'a RawValue> for RawJson<'a> {
    fn from(raw: &'a RawValue) -> Self {
        Self::accepted(raw.get())
    }
}

/// Every field as raw JSON, so each can be checked on its own and the error can name it.
/// A field given as `null` is `Some("null")`, not `None`, so that `"id": null` is refused rather than
/// silently replaced.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Wire<'a> {
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

/// The envelope's members as found in the text, before validation. A member that must be a string is
/// absent (`None`), not a string (`Some(None)`), or its value.
#[derive(Default)]
pub(crate) struct Members<'a> {
    pub id: Option<Option<Cow<'a, str>>>,
    pub event_type: Option<Option<Cow<'a, str>>>,
    pub timestamp: Option<Option<Cow<'a, str>>>,
    pub key: Option<Option<Cow<'a, str>>>,
    pub headers: Option<HeadersMember<'a>>,
    /// Already checked to be one JSON value.
    pub payload: Option<&'a str>,
}

/// The `headers` member: already read by the fast path, or JSON still to be checked.
pub(crate) enum HeadersMember<'a> {
    Parsed(EventHeaders),
    Json(&'a RawValue),
}

impl<'a> From<Wire<'a>> for Members<'a> {
    fn from(wire: Wire<'a>) -> Self {
        Members {
            id: wire.id.map(json_str),
            event_type: wire.event_type.map(json_str),
            timestamp: wire.timestamp.map(json_str),
            key: wire.key.map(json_str),
            headers: wire.headers.map(HeadersMember::Json),
            payload: wire.payload.map(RawValue::get),
        }
    }
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
pub fn parse_event<'a>(json: &'a str, now: OffsetDateTime, limits: &EventLimits) -> Result<Event<'a>, EventError> {
    // The fast path reads an ordinary envelope in one pass; serde reads everything else, and words the
    // errors. Both fill the same members, validated in one place.
    match scan::envelope(json) {
        Some((members, _)) => validate(members, now, limits),
        None => parse_event_with_serde(json, now, limits),
    }
}

/// `parse_event` for a text the fast path turned down (`parse_ordinary_event` gave `None`): serde alone,
/// without scanning the text a second time.
pub(crate) fn parse_event_with_serde<'a>(
    json: &'a str,
    now: OffsetDateTime,
    limits: &EventLimits,
) -> Result<Event<'a>, EventError> {
    validate(serde_json::from_str::<Wire<'_>>(json).map_err(|e| classify_wire_error(&e, json))?.into(), now, limits)
}

/// `parse_event` for an ordinary envelope (see `scan::envelope`), with how deep it nests as `check_depth`
/// counts it; `None` for any other text, which must then pass `check_depth` before `parse_event_with_serde`.
pub(crate) fn parse_ordinary_event<'a>(
    json: &'a str,
    now: OffsetDateTime,
    limits: &EventLimits,
) -> Option<(Result<Event<'a>, EventError>, usize)> {
    let (members, nesting) = scan::envelope(json)?;
    Some((validate(members, now, limits), nesting))
}

fn validate<'a>(members: Members<'a>, now: OffsetDateTime, limits: &EventLimits) -> Result<Event<'a>, EventError> {
    let event_type = match members.event_type {
        None => return Err(EventError::field("missing_field", "type", "`type` is required")),
        Some(value) => name_field(value, "type")?,
    };
    let id = match members.id {
        None => Cow::Owned(new_id()),
        Some(value) => name_field(value, "id")?,
    };
    let key = members.key.map(|value| name_field(value, "key").map(Cow::into_owned)).transpose()?;
    let timestamp = match members.timestamp {
        None => now,
        Some(value) => {
            let text = value.ok_or_else(|| {
                EventError::field("invalid_field", "timestamp", "`timestamp` must be an RFC 3339 string")
            })?;
            OffsetDateTime::parse(&text, &Rfc3339).map_err(|e| {
                EventError::field("invalid_field", "timestamp", format!("`timestamp` is not RFC 3339: {e}"))
            })?
        }
    };
    let headers = match members.headers {
        None => EventHeaders::default(),
        Some(headers) => check_headers(headers, limits)?,
    };
    let payload = match members.payload {
        None => return Err(EventError::field("missing_field", "payload", "`payload` is required")),
        Some(text) => RawJson::accepted(text),
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

/// A generated event id: a UUIDv7, so that ids sort by receive time.
fn new_id() -> String {
    // Straight into a buffer: `to_string` goes through `fmt` and a growing `String`.
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::now_v7().hyphenated().encode_lower(&mut text).to_owned()
}

/// The value of a JSON string, or `None` when `raw` is not a string. Borrowed when it has no escapes (the
/// common case): the parser has already checked the text between the quotes, which then is the value.
pub(crate) fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) if scan::is_plain(inner) => Some(Cow::Borrowed(inner)),
        _ => serde_json::from_str(text).ok().map(Cow::Owned),
    }
}

fn name_field<'a>(value: Option<Cow<'a, str>>, field: &'static str) -> Result<Cow<'a, str>, EventError> {
    let value =
        value.ok_or_else(|| EventError::field("invalid_field", field, format!("`{field}` must be a string")))?;
    if value.is_empty() {
        return Err(EventError::field("invalid_field", field, format!("`{field}` must not be empty")));
    }
    // A name has at most as many characters as bytes: only a long one needs counting.
    if value.len() > MAX_NAME_LEN && value.chars().count() > MAX_NAME_LEN {
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

fn check_headers(headers: HeadersMember<'_>, limits: &EventLimits) -> Result<EventHeaders, EventError> {
    let headers = match headers {
        HeadersMember::Parsed(headers) => headers,
        HeadersMember::Json(raw) => serde_json::from_str::<BTreeMap<String, String>>(raw.get())
            .map_err(|_| EventError::field("invalid_field", "headers", "`headers` must be an object of string values"))?
            .into_iter()
            .collect(),
    };
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
    if let Some((name, _)) = headers.iter().find(|(k, _)| k.is_empty() || reserved_header(k)) {
        return Err(EventError::field(
            "invalid_field",
            "headers",
            format!("header name {name:?} is empty or reserved (ce_*, content-type, traceparent, tracestate)"),
        ));
    }
    Ok(headers)
}

impl Event<'_> {
    /// The same event, owning all of its text.
    pub fn into_owned(self) -> Event<'static> {
        Event {
            id: Cow::Owned(self.id.into_owned()),
            event_type: Cow::Owned(self.event_type.into_owned()),
            source: self.source,
            timestamp: self.timestamp,
            key: self.key,
            headers: self.headers,
            payload: self.payload.into_owned(),
        }
    }

    /// The timestamp as RFC 3339 in UTC, as written into the record and its `ce_time` header.
    pub fn timestamp_rfc3339(&self) -> Rfc3339Utc {
        Rfc3339Utc::new(self.timestamp)
    }

    /// Milliseconds since the Unix epoch, the Kafka record timestamp.
    pub fn timestamp_millis(&self) -> i64 {
        // The nanoseconds divided by a million (truncated towards zero), without dividing an i128.
        let (seconds, nanos) = (self.timestamp.unix_timestamp(), self.timestamp.nanosecond());
        let millis = if seconds >= 0 { nanos / 1_000_000 } else { nanos.div_ceil(1_000_000) };
        seconds * 1000 + i64::from(millis)
    }

    /// The normalized envelope as JSON: the Kafka record value. Members in this order, absent optional
    /// ones left out, no whitespace: `{"id","type","source"?,"timestamp","key"?,"headers"?,"payload"}`.
    pub fn to_json(&self, timestamp: &str) -> Vec<u8> {
        let names = [Some(&*self.id), Some(&*self.event_type), self.source.as_deref(), self.key.as_deref()];
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
        let strings: usize = names.iter().flatten().map(|s| s.len()).sum::<usize>() + timestamp.len() + headers;
        // Member names, quotes and punctuation take less than 80 bytes; only escapes can outgrow this.
        let mut out = Vec::with_capacity(strings + self.payload.get().len() + 80);
        out.extend_from_slice(b"{\"id\":");
        write_json_str(&mut out, &self.id);
        out.extend_from_slice(b",\"type\":");
        write_json_str(&mut out, &self.event_type);
        if let Some(source) = &self.source {
            out.extend_from_slice(b",\"source\":");
            write_json_str(&mut out, source);
        }
        out.extend_from_slice(b",\"timestamp\":");
        write_json_str(&mut out, timestamp);
        if let Some(key) = &self.key {
            out.extend_from_slice(b",\"key\":");
            write_json_str(&mut out, key);
        }
        if !self.headers.is_empty() {
            out.extend_from_slice(b",\"headers\":");
            for (i, (name, value)) in self.headers.iter().enumerate() {
                out.push(if i == 0 { b'{' } else { b',' });
                write_json_str(&mut out, name);
                out.push(b':');
                write_json_str(&mut out, value);
            }
            out.push(b'}');
        }
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(self.payload.get().as_bytes());
        out.push(b'}');
        out
    }

    /// The partitioning key: the caller's `key`, else the event id.
    pub fn partition_key(&self) -> &str {
        self.key.as_deref().unwrap_or(&self.id)
    }
}

/// Writes `s` as a JSON string, exactly as serde_json does. Most strings need no escape: those are
/// copied between quotes after a check eight bytes at a time, where serde_json looks each byte up in a
/// table and branches on it.
pub(crate) fn write_json_str<B: bytes::BufMut>(out: &mut B, s: &str) {
    if scan::is_plain(s) {
        out.put_u8(b'"');
        out.put_slice(s.as_bytes());
        out.put_u8(b'"');
    } else {
        serde_json::to_writer(<&mut B as bytes::BufMut>::writer(out), s)
            .expect("writing a string into memory cannot fail");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
    }

    fn parse(json: &str) -> Result<Event<'_>, EventError> {
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
        assert_eq!(e.timestamp_rfc3339().as_str(), "2024-01-02T02:04:05.5Z");
        assert_eq!(e.timestamp_millis(), 1_704_161_045_500);
        assert_eq!(e.payload.get(), "null");
    }

    #[test]
    fn headers_are_sorted_and_a_repeated_name_keeps_its_last_value() {
        let pairs = [("b", "1"), ("a", "2"), ("b", "3"), ("c", "4"), ("b", "5"), ("a", "6")];
        let headers: EventHeaders = pairs.map(|(k, v)| (k.to_string(), v.to_string())).into_iter().collect();
        assert_eq!(headers.iter().collect::<Vec<_>>(), [("a", "6"), ("b", "5"), ("c", "4")]);
        assert_eq!((headers.get("b"), headers.get("d"), headers.len()), (Some("5"), None, 3));
        let e = parse(r#"{"type":"t","headers":{"z":"1","y":"2","z":"3"},"payload":1}"#).unwrap();
        assert_eq!(e.headers.iter().collect::<Vec<_>>(), [("y", "2"), ("z", "3")]);
        let e = parse(r#"{"type":"t","headers":{"z":"1","y":"\u0032","z":"3"},"payload":1}"#).unwrap();
        assert_eq!(e.headers.iter().collect::<Vec<_>>(), [("y", "2"), ("z", "3")]);
    }

    #[test]
    fn milliseconds_are_truncated_towards_zero() {
        for nanos in [
            0,
            1,
            999_999,
            1_000_000,
            1_500_000,
            1_700_000_000_123_456_789,
            -1,
            -999_999,
            -1_000_000,
            -1_500_000,
            -62_167_221_000_000_000_001,
        ] {
            let e = Event {
                timestamp: OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap(),
                ..parse(r#"{"type":"t","payload":1}"#).unwrap()
            };
            assert_eq!(i128::from(e.timestamp_millis()), nanos / 1_000_000, "{nanos}");
        }
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

    /// The full error (code, field, message) for invalid events, pinned: the fast paths must not change a
    /// word of what a client is told.
    #[test]
    fn error_messages_are_pinned() {
        let many: Vec<String> = (0..65).map(|i| format!(r#""h{i}":"v""#)).collect();
        let generated = [
            format!(r#"{{"type":"{}","payload":1}}"#, "é".repeat(257)),
            format!(r#"{{"type":"t","key":"{}","payload":1}}"#, r"\u00e9".repeat(257)),
            format!(r#"{{"type":"t","headers":{{{}}},"payload":1}}"#, many.join(",")),
            format!(r#"{{"type":"t","headers":{{"h":"{}"}},"payload":1}}"#, "v".repeat(16 * 1024)),
        ];
        let inputs = [
            r#"{"payload":1}"#,
            r#"{"type":"t"}"#,
            r#"{"type":5,"payload":1}"#,
            r#"{"type":"","payload":1}"#,
            r#"{"type":"\ud800","payload":1}"#,
            r#"{"type":"t","id":null,"payload":1}"#,
            r#"{"type":"t","id":"","payload":1}"#,
            r#"{"type":"t","key":[],"payload":1}"#,
            r#"{"type":"t","key":"","payload":1}"#,
            r#"{"type":"t","timestamp":5,"payload":1}"#,
            r#"{"type":"t","timestamp":"yesterday","payload":1}"#,
            r#"{"type":"t","headers":{"a":1},"payload":1}"#,
            r#"{"type":"t","headers":[],"payload":1}"#,
            r#"{"type":"t","headers":{"ce_id":"x"},"payload":1}"#,
            r#"{"type":"t","headers":{"":"x"},"payload":1}"#,
            r#"{"type":"t","headers":{"TraceParent":"x"},"payload":1}"#,
            r#"{"type":"t","payload":1,"extra":2}"#,
            r#"{"type":"t","type":"u","payload":1}"#,
            r#"{"type":"t","payload":"#,
            r#"{"type":5,"payload":"#,
            r#"{"type":"t","payload":1} x"#,
            "42",
            "[1]",
            r#""s""#,
            "",
        ]
        .into_iter()
        .chain(generated.iter().map(String::as_str));
        let expected = [
            ("missing_field", Some("type"), "`type` is required"),
            ("missing_field", Some("payload"), "`payload` is required"),
            ("invalid_field", Some("type"), "`type` must be a string"),
            ("invalid_field", Some("type"), "`type` must not be empty"),
            ("invalid_field", Some("type"), "`type` must be a string"),
            ("invalid_field", Some("id"), "`id` must be a string"),
            ("invalid_field", Some("id"), "`id` must not be empty"),
            ("invalid_field", Some("key"), "`key` must be a string"),
            ("invalid_field", Some("key"), "`key` must not be empty"),
            ("invalid_field", Some("timestamp"), "`timestamp` must be an RFC 3339 string"),
            ("invalid_field", Some("timestamp"), "`timestamp` is not RFC 3339: the 'year' component could not be parsed"),
            ("invalid_field", Some("headers"), "`headers` must be an object of string values"),
            ("invalid_field", Some("headers"), "`headers` must be an object of string values"),
            ("invalid_field", Some("headers"), r#"header name "ce_id" is empty or reserved (ce_*, content-type, traceparent, tracestate)"#),
            ("invalid_field", Some("headers"), r#"header name "" is empty or reserved (ce_*, content-type, traceparent, tracestate)"#),
            ("invalid_field", Some("headers"), r#"header name "TraceParent" is empty or reserved (ce_*, content-type, traceparent, tracestate)"#),
            ("unknown_field", None, "unknown field `extra`, expected one of `id`, `type`, `timestamp`, `key`, `headers`, `payload` at line 1 column 31"),
            ("invalid_event", None, "duplicate field `type` at line 1 column 18"),
            ("malformed_json", None, "EOF while parsing a value at line 1 column 22"),
            ("malformed_json", None, "EOF while parsing a value at line 1 column 20"),
            ("malformed_json", None, "trailing characters at line 1 column 26"),
            ("invalid_event", None, "an event must be a JSON object (invalid type: integer `42`, expected struct Wire at line 1 column 2)"),
            ("missing_field", Some("type"), "`type` is required"),
            ("invalid_event", None, r#"an event must be a JSON object (invalid type: string "s", expected struct Wire at line 1 column 3)"#),
            ("malformed_json", None, "EOF while parsing a value at line 1 column 0"),
            ("invalid_field", Some("type"), "`type` is longer than 256 characters"),
            ("invalid_field", Some("key"), "`key` is longer than 256 characters"),
            ("too_many_headers", Some("headers"), "`headers` has 65 entries; the limit is 64"),
            ("headers_too_large", Some("headers"), "`headers` hold 16385 bytes; the limit is 16384"),
        ];
        let got: Vec<_> = inputs.map(|json| parse(json).unwrap_err()).collect();
        let got: Vec<_> = got.iter().map(|e| (e.code, e.field, e.message.as_str())).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn names_are_counted_in_characters_and_may_be_escaped() {
        for json in [
            format!(r#"{{"type":"{}","payload":1}}"#, "é".repeat(256)),
            format!(r#"{{"type":"{}","payload":1}}"#, r"\u00e9".repeat(256)),
        ] {
            assert_eq!(parse(&json).unwrap().event_type, "é".repeat(256));
        }
        let e = parse(r#"{"type":"t","timestamp":"2024-01-01T00:00:00\u005a","payload":1}"#).unwrap();
        assert_eq!(e.timestamp.unix_timestamp(), 1_704_067_200);
    }

    /// serde_json's serialization of the envelope, the reference for the hand-written `to_json`.
    #[derive(serde::Serialize)]
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
        payload: Box<RawValue>,
    }

    proptest::proptest! {
        #[test]
        fn to_json_writes_what_serde_json_writes(
            id in "\\PC{0,12}|[\"\\\\\u{0}-\u{1f}\u{7f}a-z\u{2028}é😀]{0,12}",
            event_type in "[\"\\\\\u{0}-\u{1f}a\u{80}\u{ffff}]{0,40}",
            source in proptest::option::of("\\PC{0,12}"),
            key in proptest::option::of("[\"\\\\\u{0}-\u{1f}a]{0,12}"),
            headers in proptest::collection::btree_map("[\"\\\\\u{0}-\u{1f}a-c]{0,4}", "\\PC{0,6}|[\u{0}-\u{1f}]", 0..4),
            payload in "null|\\[1, \"\\\\u00e9\"\\]|\\{ \"a\" : \\{\\} \\}",
        ) {
            let event = Event {
                id: id.into(),
                event_type: event_type.into(),
                source,
                timestamp: now(),
                key,
                headers: headers.clone().into_iter().collect(),
                payload: RawJson::from(&*RawValue::from_string(payload).unwrap()).into_owned(),
            };
            let time = event.timestamp_rfc3339();
            let reference = serde_json::to_vec(&Normalized {
                id: &event.id,
                event_type: &event.event_type,
                source: event.source.as_deref(),
                timestamp: &time,
                key: event.key.as_deref(),
                headers: &headers,
                payload: RawValue::from_string(event.payload.get().to_owned()).unwrap(),
            })
            .unwrap();
            proptest::prop_assert_eq!(String::from_utf8(event.to_json(&time)).unwrap(), String::from_utf8(reference).unwrap());
        }
    }
}
