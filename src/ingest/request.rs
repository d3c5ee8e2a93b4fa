//! One request body to events: content decoding (gzip, zstd) with a cap on the decoded size, framing by
//! Content-Type (JSON, JSON array, NDJSON, CloudEvents structured / batch / binary), and per-item parsing.
//!
//! Pure and synchronous, so it can be fuzzed and benchmarked without a server.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Read;

use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::envelope::{
    json_str, parse_event, parse_event_with_serde, parse_ordinary_event, Event, EventError, EventHeaders, EventLimits,
    RawJson, MAX_NAME_LEN,
};
use super::scan::check_depth;

/// Request-level limits (the per-event ones are in `event`).
#[derive(Debug, Clone)]
pub struct RequestLimits {
    pub max_decoded_bytes: usize,
    pub max_batch_events: usize,
    pub max_depth: usize,
    pub event: EventLimits,
}

/// How the body is framed, from its Content-Type (and the `ce-*` headers for CloudEvents binary mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON object, or a JSON array of them.
    Json,
    /// One JSON object per line; blank lines ignored.
    Ndjson,
    /// `application/cloudevents+json`: one structured CloudEvent.
    CloudEvent,
    /// `application/cloudevents-batch+json`: a JSON array of structured CloudEvents.
    CloudEventBatch,
    /// CloudEvents binary mode: attributes in `ce-*` headers, the body is the data.
    CloudEventBinary,
}

/// What the request's headers say about its body.
#[derive(Debug, Clone, Default)]
pub struct BodyMeta<'a> {
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    /// `ce-*` headers (name without the prefix, lower case) for binary mode.
    pub ce_headers: Vec<(String, String)>,
}

/// Why a whole request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    UnsupportedMediaType(String),
    UnsupportedEncoding(String),
    DecodedTooLarge {
        limit: usize,
    },
    Undecodable {
        encoding: &'static str,
        message: String,
    },
    InvalidUtf8 {
        at: usize,
    },
    TooDeep {
        limit: usize,
    },
    Malformed {
        message: String,
        line: usize,
        column: usize,
    },
    Empty,
    EmptyBatch,
    BatchTooLarge {
        events: usize,
        limit: usize,
    },
    /// A single-event request (one JSON object, a structured or binary CloudEvent) whose event is invalid.
    InvalidEvent(EventError),
}

/// One item of a request: its position, NDJSON line, and the event or why it was refused.
#[derive(Debug)]
pub struct Item<'a> {
    pub index: usize,
    pub line: Option<usize>,
    pub event: Result<Event<'a>, EventError>,
}

/// A parsed request: a single event (answered as one) or a batch (answered per item).
#[derive(Debug)]
pub enum Parsed<'a> {
    Single(Event<'a>),
    Batch(Vec<Item<'a>>),
}

impl Parsed<'_> {
    /// The same events, owning all of their text.
    pub fn into_owned(self) -> Parsed<'static> {
        match self {
            Parsed::Single(event) => Parsed::Single(event.into_owned()),
            Parsed::Batch(items) => Parsed::Batch(
                items
                    .into_iter()
                    .map(|Item { index, line, event }| Item { index, line, event: event.map(Event::into_owned) })
                    .collect(),
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

fn encoding(header: Option<&str>) -> Result<Encoding, RequestError> {
    let Some(value) = header else { return Ok(Encoding::Identity) };
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "zstd" => Ok(Encoding::Zstd),
        other => Err(RequestError::UnsupportedEncoding(other.to_string())),
    }
}

/// The framing for `meta`, or 415.
pub fn framing(meta: &BodyMeta<'_>) -> Result<Framing, RequestError> {
    // The media type before any parameters, compared without case and without copying it.
    let mime =
        meta.content_type.map_or("", |ct| ct[..memchr::memchr(b';', ct.as_bytes()).unwrap_or(ct.len())].trim_ascii());
    let is = |names: &[&str]| names.iter().any(|name| mime.eq_ignore_ascii_case(name));
    if is(&["application/cloudevents+json"]) {
        return Ok(Framing::CloudEvent);
    }
    if is(&["application/cloudevents-batch+json"]) {
        return Ok(Framing::CloudEventBatch);
    }
    if is(&["application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"]) {
        return Ok(Framing::Ndjson);
    }
    if meta.ce_headers.iter().any(|(k, _)| k == "specversion") {
        return Ok(Framing::CloudEventBinary);
    }
    // `curl -d` sends form-urlencoded, `navigator.sendBeacon` text/plain, and the Go service read any body
    // as JSON: keep those working.
    if is(&["", "application/json", "application/x-www-form-urlencoded", "text/plain"]) {
        Ok(Framing::Json)
    } else {
        Err(RequestError::UnsupportedMediaType(mime.to_ascii_lowercase()))
    }
}

/// Decodes the body, stopping as soon as the decoded size passes `limit` (a small bomb is never
/// inflated whole).
pub fn decode<'a>(body: &'a [u8], content_encoding: Option<&str>, limit: usize) -> Result<Cow<'a, [u8]>, RequestError> {
    let enc = encoding(content_encoding)?;
    let (name, reader): (&'static str, Box<dyn Read + 'a>) = match enc {
        Encoding::Identity => {
            return if body.len() > limit {
                Err(RequestError::DecodedTooLarge { limit })
            } else {
                Ok(Cow::Borrowed(body))
            };
        }
        Encoding::Gzip => ("gzip", Box::new(flate2::read::MultiGzDecoder::new(body))),
        Encoding::Zstd => (
            "zstd",
            Box::new(
                zstd::stream::read::Decoder::with_buffer(body)
                    .map_err(|e| RequestError::Undecodable { encoding: "zstd", message: e.to_string() })?,
            ),
        ),
    };
    let mut out = Vec::with_capacity((body.len() * 4).min(limit + 1));
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| RequestError::Undecodable { encoding: name, message: e.to_string() })?;
    if out.len() > limit {
        return Err(RequestError::DecodedTooLarge { limit });
    }
    Ok(Cow::Owned(out))
}

/// Decodes and parses a whole request body into events.
pub fn parse_request<'a>(
    meta: &BodyMeta<'_>,
    body: &'a [u8],
    now: OffsetDateTime,
    limits: &RequestLimits,
) -> Result<Parsed<'a>, RequestError> {
    parse_framed(framing(meta)?, meta, body, now, limits)
}

/// `parse_request` for a body whose `framing(meta)` is already known (the handler refuses an
/// unsupported type before reading the body).
pub fn parse_framed<'a>(
    framing: Framing,
    meta: &BodyMeta<'_>,
    body: &'a [u8],
    now: OffsetDateTime,
    limits: &RequestLimits,
) -> Result<Parsed<'a>, RequestError> {
    // The events borrow the body's text; a decoded body does not outlive this call, so theirs is copied.
    match decode(body, meta.content_encoding, limits.max_decoded_bytes)? {
        Cow::Borrowed(body) => parse_text(framing, meta, utf8(body)?, now, limits),
        Cow::Owned(decoded) => parse_text(framing, meta, utf8(&decoded)?, now, limits).map(Parsed::into_owned),
    }
}

/// `parse_framed` once the body is text.
fn parse_text<'a>(
    framing: Framing,
    meta: &BodyMeta<'_>,
    text: &'a str,
    now: OffsetDateTime,
    limits: &RequestLimits,
) -> Result<Parsed<'a>, RequestError> {
    let within_depth = || {
        check_depth(text.as_bytes(), limits.max_depth).map_err(|_| RequestError::TooDeep { limit: limits.max_depth })
    };
    let el = &limits.event;
    let single = matches!(framing, Framing::Json | Framing::CloudEvent) && !text.trim_start().starts_with('[');
    // An ordinary single envelope's nesting is measured by the fast path that parses it, as an NDJSON
    // line's is: no separate pass over the text (a sixteenth of a request's instructions). NDJSON checks
    // its lines itself; everything else passes `check_depth` before serde sees it.
    let ordinary = (single && framing == Framing::Json)
        .then(|| parse_ordinary_event(text, now, el))
        .flatten()
        .filter(|&(_, nesting)| nesting <= limits.max_depth);
    if ordinary.is_none() && framing != Framing::Ndjson {
        within_depth()?;
    }
    match framing {
        Framing::CloudEventBinary => {
            binary_cloud_event(meta, text, now).map(Parsed::Single).map_err(RequestError::InvalidEvent)
        }
        Framing::Json | Framing::CloudEvent if single => {
            if text.trim().is_empty() {
                return Err(RequestError::Empty);
            }
            let event = match ordinary {
                Some((event, _)) => event,
                None if framing == Framing::Json => parse_event_with_serde(text, now, el),
                None => structured_cloud_event(text, now, el),
            };
            event.map(Parsed::Single).map_err(|e| match e.code {
                "malformed_json" => malformed(text),
                _ => RequestError::InvalidEvent(e),
            })
        }
        Framing::Json | Framing::CloudEvent | Framing::CloudEventBatch => {
            if text.trim().is_empty() {
                return Err(RequestError::Empty);
            }
            let raw: Vec<&RawValue> = serde_json::from_str(text).map_err(|_| malformed(text))?;
            check_batch(raw.len(), limits)?;
            let cloud = framing != Framing::Json;
            Ok(Parsed::Batch(
                raw.into_iter()
                    .enumerate()
                    .map(|(index, raw)| Item {
                        index,
                        line: None,
                        event: if cloud {
                            structured_cloud_event(raw.get(), now, el)
                        } else {
                            parse_event(raw.get(), now, el)
                        },
                    })
                    .collect(),
            ))
        }
        Framing::Ndjson => ndjson(text, within_depth, now, limits),
    }
}

/// The body as text. simdutf8 checks it 32 or 64 bytes at a time where the CPU has the vector
/// instructions (found at run time), several times faster than `std::str::from_utf8` on a body that
/// is all ASCII; std words the error (the position of the first invalid byte).
fn utf8(body: &[u8]) -> Result<&str, RequestError> {
    simdutf8::basic::from_utf8(body)
        .or_else(|_| std::str::from_utf8(body))
        .map_err(|e| RequestError::InvalidUtf8 { at: e.valid_up_to() })
}

/// NDJSON: one event per line. The nesting limit holds as for any body (`check_depth` over the whole text,
/// before serde sees any of it), but an ordinary envelope's line is measured by the fast path that parses
/// it, which never hands text to serde: a body of only such lines needs no separate pass over it (that
/// pass was a tenth of the time of a batch).
fn ndjson<'a>(
    text: &'a str,
    within_depth: impl Fn() -> Result<(), RequestError>,
    now: OffsetDateTime,
    limits: &RequestLimits,
) -> Result<Parsed<'a>, RequestError> {
    // Sized by the newlines, so that it is not grown through every power of two. memchr counts them in
    // vector registers: `filter().count()` did not vectorize and cost 80 ns an event.
    let mut lines = Vec::with_capacity(memchr::memchr_iter(b'\n', text.as_bytes()).count() + 1);
    lines.extend(text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (i + 1, l)));
    // A body too deep is refused as such even when its batch is also empty or too large.
    check_batch(lines.len(), limits).or_else(|e| within_depth().and(Err(e)))?;
    let mut items = Vec::with_capacity(lines.len());
    let mut deepest = 0;
    // Lines that are not ordinary envelopes: serde parses them once the whole body has passed `check_depth`.
    let mut for_serde = Vec::new();
    for (index, &(line, json)) in lines.iter().enumerate() {
        let event = match parse_ordinary_event(json, now, &limits.event) {
            Some((event, nesting)) => {
                deepest = deepest.max(nesting);
                event
            }
            None => {
                for_serde.push(index);
                // Replaced below, unless the body is refused.
                Err(EventError { code: "malformed_json", field: None, message: String::new() })
            }
        };
        items.push(Item { index, line: Some(line), event });
    }
    // Each ordinary line is balanced, so the body nests as deep as its deepest line.
    if deepest > limits.max_depth || !for_serde.is_empty() {
        within_depth()?;
    }
    for index in for_serde {
        items[index].event = parse_event_with_serde(lines[index].1, now, &limits.event);
    }
    Ok(Parsed::Batch(items))
}

fn check_batch(n: usize, limits: &RequestLimits) -> Result<(), RequestError> {
    if n == 0 {
        Err(RequestError::EmptyBatch)
    } else if n > limits.max_batch_events {
        Err(RequestError::BatchTooLarge { events: n, limit: limits.max_batch_events })
    } else {
        Ok(())
    }
}

/// serde's error for the whole text, with its position.
fn malformed(text: &str) -> RequestError {
    match serde_json::from_str::<serde::de::IgnoredAny>(text) {
        Err(e) => RequestError::Malformed { message: e.to_string(), line: e.line(), column: e.column() },
        // The text is JSON but not of the expected shape (e.g. an array of non-objects is fine per item;
        // this is a top-level that is neither object nor array).
        Ok(_) => RequestError::Malformed { message: "expected a JSON object or array".into(), line: 1, column: 1 },
    }
}

const CE_REQUIRED: [&str; 4] = ["id", "source", "specversion", "type"];

fn ce_string(raw: &RawValue, field: &'static str) -> Result<String, EventError> {
    let value = json_str(raw).ok_or_else(|| ce_error(field, format!("`{field}` must be a string")))?;
    if value.is_empty() || value.chars().count() > MAX_NAME_LEN {
        return Err(ce_error(field, format!("`{field}` must be 1-{MAX_NAME_LEN} characters")));
    }
    Ok(value.into_owned())
}

fn ce_error(field: &'static str, message: String) -> EventError {
    EventError { code: "invalid_cloudevent", field: Some(field), message }
}

fn ce_time(text: &str) -> Result<OffsetDateTime, EventError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| ce_error("time", format!("`time` is not RFC 3339: {e}")))
}

/// A structured-mode CloudEvent (JSON object) mapped onto the envelope.
pub fn structured_cloud_event<'a>(
    json: &'a str,
    now: OffsetDateTime,
    limits: &EventLimits,
) -> Result<Event<'a>, EventError> {
    let attrs: BTreeMap<String, &'a RawValue> = serde_json::from_str(json).map_err(|e| EventError::malformed(&e))?;
    for name in CE_REQUIRED {
        if !attrs.contains_key(name) {
            return Err(EventError {
                code: "missing_field",
                field: Some(name),
                message: format!("CloudEvent attribute `{name}` is required"),
            });
        }
    }
    let specversion = ce_string(attrs["specversion"], "specversion")?;
    if specversion != "1.0" {
        return Err(ce_error("specversion", format!("specversion {specversion:?} is not supported; use 1.0")));
    }
    let mut event = Event {
        id: ce_string(attrs["id"], "id")?.into(),
        event_type: ce_string(attrs["type"], "type")?.into(),
        source: Some(ce_string(attrs["source"], "source")?),
        timestamp: now,
        key: None,
        headers: EventHeaders::default(),
        payload: RawJson::null(),
    };
    let mut extensions = Vec::new();
    for (name, raw) in &attrs {
        match name.as_str() {
            "id" | "type" | "source" | "specversion" => {}
            "time" => event.timestamp = ce_time(&ce_string(raw, "time")?)?,
            "partitionkey" => event.key = Some(ce_string(raw, "partitionkey")?),
            "data" | "data_base64" => event.payload = RawJson::from(*raw),
            other => {
                // Extension and optional attributes travel as `ce_<name>` headers (CloudEvents Kafka binding).
                let valid = !other.is_empty()
                    && other.len() <= 20
                    && other.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                if !valid {
                    return Err(ce_error(
                        "extension",
                        format!("attribute name {other:?} is not a valid CloudEvents name"),
                    ));
                }
                let value = match serde_json::from_str::<serde_json::Value>(raw.get()) {
                    Ok(serde_json::Value::String(s)) => s,
                    Ok(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => v.to_string(),
                    _ => {
                        return Err(ce_error(
                            "extension",
                            format!("attribute `{other}` must be a string, number or boolean"),
                        ))
                    }
                };
                extensions.push((format!("ce_{other}"), value));
            }
        }
    }
    event.headers = extensions.into_iter().collect();
    check_header_limits(&event, limits)?;
    Ok(event)
}

/// A binary-mode CloudEvent: attributes from `ce-*` headers, the body as data.
fn binary_cloud_event<'a>(meta: &BodyMeta<'_>, body: &'a str, now: OffsetDateTime) -> Result<Event<'a>, EventError> {
    let get = |name: &str| meta.ce_headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let required = |name: &'static str| -> Result<String, EventError> {
        match get(name) {
            Some(v) if !v.is_empty() && v.chars().count() <= MAX_NAME_LEN => Ok(v.to_string()),
            Some(_) => Err(ce_error(name, format!("header ce-{name} must be 1-{MAX_NAME_LEN} characters"))),
            None => Err(EventError {
                code: "missing_field",
                field: Some(name),
                message: format!("header ce-{name} is required"),
            }),
        }
    };
    let specversion = required("specversion")?;
    if specversion != "1.0" {
        return Err(ce_error("specversion", format!("specversion {specversion:?} is not supported; use 1.0")));
    }
    let mime = meta.content_type.map(|ct| ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    let is_json = mime.as_deref().is_none_or(|m| m == "application/json" || m.ends_with("+json"));
    let payload = if body.trim().is_empty() {
        RawJson::null()
    } else if is_json {
        RawJson::from(serde_json::from_str::<&RawValue>(body).map_err(|e| EventError::malformed(&e))?)
    } else {
        // Non-JSON data is carried as a JSON string; its type stays in `ce_datacontenttype`.
        let text =
            RawValue::from_string(serde_json::to_string(body).expect("strings serialize")).expect("a JSON string");
        RawJson::from(&*text).into_owned()
    };
    let mut headers = Vec::new();
    for (name, value) in &meta.ce_headers {
        if !matches!(name.as_str(), "id" | "type" | "source" | "specversion" | "time" | "partitionkey") {
            headers.push((format!("ce_{name}"), value.clone()));
        }
    }
    if let (false, Some(m)) = (is_json, mime) {
        headers.push(("ce_datacontenttype".into(), m));
    }
    Ok(Event {
        id: required("id")?.into(),
        event_type: required("type")?.into(),
        source: Some(required("source")?),
        timestamp: match get("time") {
            Some(t) => ce_time(t)?,
            None => now,
        },
        key: get("partitionkey").map(str::to_string),
        headers: headers.into_iter().collect(),
        payload,
    })
}

fn check_header_limits(event: &Event, limits: &EventLimits) -> Result<(), EventError> {
    let bytes: usize = event.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if event.headers.len() > limits.max_headers || bytes > limits.max_header_bytes {
        return Err(EventError {
            code: "headers_too_large",
            field: Some("headers"),
            message: format!(
                "{} headers of {bytes} bytes; the limits are {} headers and {} bytes",
                event.headers.len(),
                limits.max_headers,
                limits.max_header_bytes
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn limits() -> RequestLimits {
        RequestLimits {
            max_decoded_bytes: 1 << 20,
            max_batch_events: 100,
            max_depth: 32,
            event: EventLimits::default(),
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH
    }

    fn meta(ct: &str) -> BodyMeta<'_> {
        BodyMeta { content_type: Some(ct), ..Default::default() }
    }

    #[test]
    fn gzip_and_zstd_decode_and_bombs_stop_at_the_cap() {
        let json = br#"{"type":"t","payload":1}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(json).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(&*decode(&gz, Some("gzip"), 1024).unwrap(), json);
        let zs = zstd::encode_all(&json[..], 3).unwrap();
        assert_eq!(&*decode(&zs, Some("zstd"), 1024).unwrap(), json);

        let zeros = vec![0u8; 10 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&zeros).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 64 << 10);
        assert_eq!(decode(&bomb, Some("gzip"), 1 << 20).unwrap_err(), RequestError::DecodedTooLarge { limit: 1 << 20 });
        assert_eq!(decode(b"x", Some("br"), 10).unwrap_err(), RequestError::UnsupportedEncoding("br".into()));
        assert!(matches!(decode(b"not gzip", Some("gzip"), 10).unwrap_err(), RequestError::Undecodable { .. }));
    }

    #[test]
    fn ndjson_items_carry_their_line_numbers() {
        let body = b"{\"type\":\"a\",\"payload\":1}\n\n{\"type\":\"b\"}\n{oops\n";
        let Parsed::Batch(items) = parse_request(&meta("application/x-ndjson"), body, now(), &limits()).unwrap() else {
            panic!()
        };
        assert_eq!(items.iter().map(|i| i.line).collect::<Vec<_>>(), [Some(1), Some(3), Some(4)]);
        assert!(items[0].event.is_ok());
        assert_eq!(items[1].event.as_ref().unwrap_err().field, Some("payload"));
        assert_eq!(items[2].event.as_ref().unwrap_err().code, "malformed_json");
    }

    #[test]
    fn structured_cloud_event_maps_onto_the_envelope() {
        let body = br#"{"specversion":"1.0","id":"c1","source":"/shop","type":"order","time":"2024-01-01T00:00:00Z",
            "partitionkey":"cust-1","subject":"o-9","data":{"total":3}}"#;
        let Parsed::Single(e) = parse_request(&meta("application/cloudevents+json"), body, now(), &limits()).unwrap()
        else {
            panic!()
        };
        assert_eq!((&*e.id, &*e.event_type, e.source.as_deref()), ("c1", "order", Some("/shop")));
        assert_eq!(e.key.as_deref(), Some("cust-1"));
        assert_eq!(e.headers.get("ce_subject"), Some("o-9"));
        assert_eq!(e.payload.get(), r#"{"total":3}"#);
        let missing = br#"{"specversion":"1.0","id":"c1","type":"order"}"#;
        let err = parse_request(&meta("application/cloudevents+json"), missing, now(), &limits()).unwrap_err();
        assert!(matches!(err, RequestError::InvalidEvent(EventError { field: Some("source"), .. })), "{err:?}");
    }

    #[test]
    fn binary_cloud_event_reads_ce_headers() {
        let m = BodyMeta {
            content_type: Some("text/plain"),
            content_encoding: None,
            ce_headers: vec![
                ("specversion".into(), "1.0".into()),
                ("id".into(), "b1".into()),
                ("source".into(), "/s".into()),
                ("type".into(), "t".into()),
                ("traceid".into(), "x".into()),
            ],
        };
        let Parsed::Single(e) = parse_request(&m, b"hello", now(), &limits()).unwrap() else { panic!() };
        assert_eq!(e.payload.get(), r#""hello""#);
        assert_eq!(e.headers.get("ce_traceid"), Some("x"));
        assert_eq!(e.headers.get("ce_datacontenttype"), Some("text/plain"));
    }

    #[test]
    fn the_media_type_decides_the_framing_whatever_its_case_and_parameters() {
        for (content_type, expected) in [
            ("application/json", Framing::Json),
            (" Application/JSON ; charset=utf-8", Framing::Json),
            ("text/plain;charset=UTF-8", Framing::Json),
            ("APPLICATION/X-NDJSON", Framing::Ndjson),
            ("application/jsonl; x=y", Framing::Ndjson),
            ("application/cloudevents+json; charset=utf-8", Framing::CloudEvent),
            ("Application/CloudEvents-Batch+JSON", Framing::CloudEventBatch),
        ] {
            assert_eq!(framing(&meta(content_type)).unwrap(), expected, "{content_type}");
        }
        assert_eq!(
            framing(&meta("Application/XML; charset=utf-8")).unwrap_err(),
            RequestError::UnsupportedMediaType("application/xml".into())
        );
    }

    #[test]
    fn a_single_event_nests_no_deeper_than_the_limit_on_either_parsing_path() {
        let l = limits();
        let event = |arrays: usize, event_type: &str| {
            format!(r#"{{"type":"{event_type}","payload":{}1{}}}"#, "[".repeat(arrays), "]".repeat(arrays))
        };
        // The envelope is one level: 31 arrays inside it reach the limit of 32, 32 pass it. An ordinary
        // envelope is measured by the fast path that parses it, one with an escape by `check_depth`.
        for event_type in ["t", r"tA"] {
            let at_limit = event(31, event_type);
            assert!(matches!(
                parse_request(&meta("application/json"), at_limit.as_bytes(), now(), &l),
                Ok(Parsed::Single(_))
            ));
            let too_deep = event(32, event_type);
            assert_eq!(
                parse_request(&meta("application/json"), too_deep.as_bytes(), now(), &l).unwrap_err(),
                RequestError::TooDeep { limit: 32 },
                "{event_type}"
            );
        }
    }

    #[test]
    fn request_level_errors() {
        let l = limits();
        assert_eq!(parse_request(&meta("application/json"), b"  ", now(), &l).unwrap_err(), RequestError::Empty);
        assert_eq!(parse_request(&meta("application/json"), b"[]", now(), &l).unwrap_err(), RequestError::EmptyBatch);
        assert_eq!(
            parse_request(&meta("application/json"), b"\xff", now(), &l).unwrap_err(),
            RequestError::InvalidUtf8 { at: 0 }
        );
        assert!(matches!(
            parse_request(&meta("application/json"), b"[1,", now(), &l).unwrap_err(),
            RequestError::Malformed { .. }
        ));
        assert_eq!(
            parse_request(&meta("application/json"), &[b'['; 40], now(), &l).unwrap_err(),
            RequestError::TooDeep { limit: 32 }
        );
        assert_eq!(
            parse_request(&meta("application/xml"), b"<a/>", now(), &l).unwrap_err(),
            RequestError::UnsupportedMediaType("application/xml".into())
        );
        let many = "[".to_string() + &vec![r#"{"type":"t","payload":1}"#; 101].join(",") + "]";
        assert_eq!(
            parse_request(&meta("application/json"), many.as_bytes(), now(), &l).unwrap_err(),
            RequestError::BatchTooLarge { events: 101, limit: 100 }
        );
        for body in [&b"null"[..], b"42"] {
            assert!(matches!(
                parse_request(&meta("application/json"), body, now(), &l).unwrap_err(),
                RequestError::InvalidEvent(_)
            ));
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        json_value_with(".{0,20}")
    }

    /// Any JSON value whose strings match the regex `strings`.
    fn json_value_with(strings: &'static str) -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            strings.prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn limits() -> RequestLimits {
        RequestLimits {
            max_decoded_bytes: 1 << 20,
            max_batch_events: 1000,
            max_depth: 64,
            event: EventLimits::default(),
        }
    }

    proptest! {
        /// Any valid envelope parses back to what was sent, and its normalized form parses to itself.
        #[test]
        fn valid_envelopes_round_trip(
            id in proptest::option::of("[^\u{0}]{1,40}"),
            event_type in "[^\u{0}]{1,40}",
            key in proptest::option::of("[^\u{0}]{1,40}"),
            headers in prop::collection::btree_map("[a-z][a-z0-9-]{0,10}", ".{0,20}", 0..5),
            payload in json_value(),
            ts in proptest::option::of(0i64..4_000_000_000),
        ) {
            let mut env = serde_json::json!({"type": event_type, "payload": payload});
            if let Some(id) = &id { env["id"] = id.clone().into(); }
            if let Some(key) = &key { env["key"] = key.clone().into(); }
            if !headers.is_empty() { env["headers"] = serde_json::to_value(&headers).unwrap(); }
            let when = ts.map(|t| OffsetDateTime::from_unix_timestamp(t).unwrap());
            if let Some(w) = when { env["timestamp"] = w.format(&Rfc3339).unwrap().into(); }
            let body = serde_json::to_vec(&env).unwrap();
            let Parsed::Single(e) = parse_request(&BodyMeta::default(), &body, OffsetDateTime::UNIX_EPOCH, &limits()).unwrap() else {
                panic!("a single object is a single event")
            };
            if let Some(id) = &id { prop_assert_eq!(&e.id, id); }
            prop_assert_eq!(&e.event_type, &event_type);
            prop_assert_eq!(&e.key, &key);
            prop_assert_eq!(&e.headers, &headers.clone().into_iter().collect::<EventHeaders>());
            prop_assert_eq!(serde_json::from_str::<serde_json::Value>(e.payload.get()).unwrap(), payload);
            prop_assert_eq!(e.timestamp, when.unwrap_or(OffsetDateTime::UNIX_EPOCH));

            let normalized = e.to_json(&e.timestamp_rfc3339());
            let Parsed::Single(again) = parse_request(&BodyMeta::default(), &normalized, OffsetDateTime::now_utc(), &limits()).unwrap() else {
                panic!("normalized form is a single event")
            };
            prop_assert_eq!(again.to_json(&again.timestamp_rfc3339()), normalized);
        }

        /// The depth check agrees with the nesting of the value, whatever its strings hold.
        #[test]
        fn depth_check_matches_the_nesting(value in json_value_with(r#"[\[\]{}"\\a\n\u{1}é]{0,12}"#), limit in 0usize..6) {
            fn depth(v: &serde_json::Value) -> usize {
                match v {
                    serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
                    serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
                    _ => 0,
                }
            }
            let text = serde_json::to_string(&value).unwrap();
            prop_assert_eq!(check_depth(text.as_bytes(), limit).is_ok(), depth(&value) <= limit, "{}", text);
        }

        /// NDJSON bodies give what checking the whole body's depth first, then parsing every line with
        /// serde, gave: the same refusal, or the same items.
        #[test]
        fn ndjson_is_parsed_as_with_a_depth_check_first(
            lines in prop::collection::vec(prop::sample::select(&[
                r#"{"type":"t","payload":1}"#,
                r#"{"type":"t","headers":{},"payload":1}"#,
                r#" {"type":"t","headers":{"a":"b"},"payload":[]} "#,
                r#"{"type":"t","payload":[[{"a":[1]}]]}"#,
                r#"{"type":"t","payload":[[[[[[{}]]]]]]}"#,
                r#"{"type":"","payload":{"a":{"b":{}}}}"#,
                r#"{"type":"tA","payload":[[1]]}"#,
                r#"{"type":"t","payload":1,"extra":[[[[]]]]}"#,
                r#"{"type":"t","payload":[[["#,
                r#"{"type":"t","payload":"[[[["#,
                r#"]]]]"#,
                r#"{"type":"t","payload":""}"#,
                "",
                " 	",
            ][..]), 0..8),
            max_depth in 0usize..9,
            max_batch_events in 1usize..8,
        ) {
            let body = lines.join("\n");
            let limits = RequestLimits { max_depth, max_batch_events, ..limits() };
            let meta = BodyMeta { content_type: Some("application/x-ndjson"), ..Default::default() };
            let outcome = |event: &Result<Event, EventError>| match event {
                Ok(e) => Ok((e.event_type.to_string(), e.payload.get().to_string())),
                Err(e) => Err(e.clone()),
            };
            let expected = check_depth(body.as_bytes(), max_depth)
                .map_err(|_| RequestError::TooDeep { limit: max_depth })
                .and_then(|()| {
                    let lines: Vec<_> = body.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).collect();
                    check_batch(lines.len(), &limits)?;
                    Ok(lines.into_iter().map(|(i, l)| (i + 1, outcome(&parse_event(l, OffsetDateTime::UNIX_EPOCH, &limits.event)))).collect::<Vec<_>>())
                });
            let got = parse_request(&meta, body.as_bytes(), OffsetDateTime::UNIX_EPOCH, &limits).map(|parsed| match parsed {
                Parsed::Batch(items) => items.iter().map(|i| (i.line.unwrap(), outcome(&i.event))).collect::<Vec<_>>(),
                Parsed::Single(_) => unreachable!("NDJSON is a batch"),
            });
            prop_assert_eq!(got, expected, "{:?}", body);
        }

        /// Arbitrary bytes under any framing give events or an error, never a panic.
        #[test]
        fn arbitrary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), framing in 0usize..5) {
            let ct = ["application/json", "application/x-ndjson", "application/cloudevents+json",
                      "application/cloudevents-batch+json", "text/plain"][framing];
            let meta = BodyMeta { content_type: Some(ct), ..Default::default() };
            let _ = parse_request(&meta, &body, OffsetDateTime::UNIX_EPOCH, &limits());
        }
    }
}
