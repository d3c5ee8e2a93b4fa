//! The Kafka record an event becomes: key, value, headers (CloudEvents Kafka binding) and timestamp.

use std::sync::Arc;

use rdkafka::message::{Header, OwnedHeaders};

use crate::ingest::envelope::Event;
use crate::telemetry::event_bytes;
use crate::telemetry::trace::TraceHeaders;

/// One record ready to hand to the producer.
pub struct OutboundRecord {
    pub topic: Arc<str>,
    /// The event's `key`; `None` when it had none and the id is the key (not copied).
    key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: RecordHeaders,
    pub timestamp_ms: i64,
}

impl OutboundRecord {
    /// The event's id: the value of the `ce_id` header, which every record has first (the id is not
    /// kept twice).
    pub fn id(&self) -> &str {
        std::str::from_utf8(self.headers.first_value()).expect("ce_id is pushed as str")
    }

    /// The Kafka record key: the event's `key`, else its id.
    pub fn key(&self) -> &[u8] {
        self.key.as_deref().unwrap_or(self.headers.first_value())
    }

    /// What the record counts against `QUEUE_MAX_BYTES`.
    pub fn queue_bytes(&self) -> u64 {
        event_bytes(self.key().len(), self.value.len())
    }
}

/// A record's headers in one buffer (name and value, each after its length), turned into librdkafka's
/// header list only when the record is handed to the producer: building that list costs an allocation
/// per header inside librdkafka, which is the Kafka step's work, not the request's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordHeaders {
    buf: Vec<u8>,
    count: usize,
}

impl RecordHeaders {
    /// Room for `count` headers whose names and values add up to `bytes`.
    pub fn with_capacity(count: usize, bytes: usize) -> Self {
        RecordHeaders { buf: Vec::with_capacity(bytes + 8 * count), count: 0 }
    }

    /// Headers already encoded as `push` encodes them (see `SPEC_AND_CONTENT_TYPE`): one copy.
    fn push_encoded(&mut self, encoded: &EncodedHeaders) {
        self.buf.extend_from_slice(encoded.bytes);
        self.count += encoded.count;
    }

    pub fn push(&mut self, name: &str, value: &[u8]) {
        for part in [name.as_bytes(), value] {
            self.buf.extend_from_slice(&(part.len() as u32).to_le_bytes());
            self.buf.extend_from_slice(part);
        }
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The first header's value (empty when there is none).
    fn first_value(&self) -> &[u8] {
        if self.count == 0 {
            return &[];
        }
        let (_name, rest) = split_part(&self.buf);
        split_part(rest).0
    }

    /// The headers in the order they were pushed.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let mut rest = &self.buf[..];
        let mut take = move || {
            let (part, tail) = split_part(rest);
            rest = tail;
            part
        };
        (0..self.count).map(move |_| {
            let name = std::str::from_utf8(take()).expect("names are pushed as str");
            (name, take())
        })
    }

    /// librdkafka's form, sized exactly (it grows a full list by reallocating it).
    pub fn to_kafka(&self) -> OwnedHeaders {
        self.iter().fold(OwnedHeaders::new_with_capacity(self.count), |h, (key, value)| {
            h.insert(Header { key, value: Some(value) })
        })
    }
}

/// The first name or value of `buf` (as `RecordHeaders::push` writes it: its length, then its bytes) and
/// what follows it.
fn split_part(buf: &[u8]) -> (&[u8], &[u8]) {
    let (len, tail) = buf.split_at(4);
    tail.split_at(u32::from_le_bytes(len.try_into().expect("four bytes")) as usize)
}

/// Constant headers, encoded once: each name and value after its length, as `RecordHeaders::push` writes
/// them.
struct EncodedHeaders {
    bytes: &'static [u8],
    count: usize,
}

/// `ce_specversion: 1.0` and `content-type: application/json`, the same on every record.
const SPEC_AND_CONTENT_TYPE: EncodedHeaders = EncodedHeaders {
    bytes: b"\x0e\0\0\0ce_specversion\x03\0\0\x001.0\x0c\0\0\0content-type\x10\0\0\0application/json",
    count: 2,
};

impl OutboundRecord {
    /// Encodes `event` for `topic`: key = `key` or id; value = the normalized envelope as JSON; headers
    /// `traceparent`/`tracestate` (the producer span, or the caller's context when tracing is off),
    /// `ce_id`, `ce_type`, `ce_time`, `ce_specversion`, `content-type` and the caller's own. The event is
    /// consumed: its key moves into the record rather than being copied.
    pub fn from_event(event: Event<'_>, topic: &Arc<str>, trace: &TraceHeaders) -> Self {
        let time = event.timestamp_rfc3339();
        let time = time.as_str();
        let value = event.to_json(time);
        let id = event.id.as_bytes();
        let (ty, source) = (event.event_type.as_bytes(), event.source.as_deref().map(str::as_bytes));
        let (traceparent, tracestate) = (trace.traceparent.as_deref(), trace.tracestate.as_deref());
        let optional = [traceparent.map(str::len), tracestate.map(str::len), source.map(|s| s.len())];
        let count = 5 + optional.iter().flatten().count() + event.headers.len();
        let bytes = 64
            + id.len()
            + ty.len()
            + time.len()
            + optional.iter().flatten().sum::<usize>()
            + event.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        let mut headers = RecordHeaders::with_capacity(count, bytes);
        // First: `id()` reads it from there.
        headers.push("ce_id", id);
        headers.push("ce_type", ty);
        headers.push("ce_time", time.as_bytes());
        headers.push_encoded(&SPEC_AND_CONTENT_TYPE);
        if let Some(tp) = traceparent {
            headers.push("traceparent", tp.as_bytes());
        }
        if let Some(ts) = tracestate {
            headers.push("tracestate", ts.as_bytes());
        }
        if let Some(source) = source {
            headers.push("ce_source", source);
        }
        for (name, value) in event.headers.iter() {
            headers.push(name, value.as_bytes());
        }
        let timestamp_ms = event.timestamp_millis();
        // `Event::partition_key`, taken by value: an event without a key keeps `None` and the id serves
        // as the key (see `key()`), not a copy of it.
        let key = event.key.map(String::into_bytes);
        OutboundRecord { topic: topic.clone(), key, value, headers, timestamp_ms }
    }
}

impl OutboundRecord {
    /// The spool form of a record that never reached librdkafka.
    pub fn into_spool_record(self) -> super::SpoolRecord {
        let headers = self.headers.iter().map(|(key, value)| (key.to_string(), Some(value.to_vec()))).collect();
        let id = self.id().to_string();
        super::SpoolRecord {
            key: Some(self.key.unwrap_or_else(|| id.clone().into_bytes())),
            id,
            topic: self.topic.to_string(),
            value: self.value,
            headers,
            timestamp_ms: Some(self.timestamp_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;
    use time::OffsetDateTime;

    use super::*;
    use crate::ingest::{parse_request, BodyMeta, EventLimits, Parsed, RequestLimits};

    /// The record's parts as text: key, value, headers in order, timestamp.
    fn encoded(record: &OutboundRecord) -> (String, String, Vec<(String, String)>, i64) {
        let headers = record
            .headers
            .iter()
            .map(|(key, value)| (key.to_string(), String::from_utf8(value.to_vec()).unwrap()))
            .collect();
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        (text(record.key()), text(&record.value), headers, record.timestamp_ms)
    }

    fn records(content_type: &str, body: &str, now: OffsetDateTime, trace: &TraceHeaders) -> Vec<OutboundRecord> {
        let limits = RequestLimits {
            max_decoded_bytes: 1 << 20,
            max_batch_events: 100,
            max_depth: 32,
            event: EventLimits::default(),
        };
        let meta = BodyMeta { content_type: Some(content_type), ..Default::default() };
        let events = match parse_request(&meta, body.as_bytes(), now, &limits).unwrap() {
            Parsed::Single(e) => vec![e],
            Parsed::Batch(items) => items.into_iter().map(|i| i.event.unwrap()).collect(),
        };
        let topic: Arc<str> = Arc::from("t");
        events.into_iter().map(|e| OutboundRecord::from_event(e, &topic, trace)).collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// librdkafka gets every header, in order, with its exact bytes (empty names and values included).
    #[test]
    fn headers_reach_librdkafka_unchanged() {
        let mut headers = RecordHeaders::with_capacity(4, 0);
        let long = "v".repeat(70_000);
        let list: [(&str, &[u8]); 4] =
            [("ce_id", b"e-1"), ("", b""), ("bin\u{e9}", &[0, 255, 10]), ("long", long.as_bytes())];
        for (name, value) in list {
            headers.push(name, value);
        }
        assert_eq!(headers.len(), 4);
        assert_eq!(headers.iter().collect::<Vec<_>>(), list);
        let kafka = headers.to_kafka();
        let got: Vec<_> = kafka.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect();
        let want: Vec<_> = list.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect();
        assert_eq!(got, want);
        assert!(RecordHeaders::default().is_empty() && RecordHeaders::default().to_kafka().count() == 0);
    }

    /// Pins the exact bytes of the record: any change to parsing or encoding must keep them.
    #[test]
    fn encoding_is_pinned() {
        let now = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_400_000).unwrap();
        let body = concat!(
            r#"{"type":"page.view","key":"user-1234","headers":{"tenant":"acme"},"payload":{"url":"https://example.com/a/b","ms":1234,"tags":["x","y"]}}"#,
            "\n",
            r#"{ "id" : "e-\u00e9\"1" , "type":"a\"b\u00e9\n\t\u0001/", "timestamp":"2024-01-02T03:04:05.5+01:00", "key":"k\\", "#,
            r#""headers":{"z":"1","a\u0007":"x\"y","m":"\ud83d\ude00"}, "payload" : { "a" : [1, 2.50, "\u00e9"] } }"#,
            "\n",
            r#"{"type":"t","timestamp":"2024-02-29T23:59:59.000000001Z","payload":null}"#,
            "\n",
            r#"{"type":"t","timestamp":"2024-02-29T12:00:00.100-00:30","payload":"s"}"#,
            "\n",
            r#"{"type":"t","timestamp":"0000-01-01T00:30:00+01:00","payload":0}"#,
            "\n",
        );
        let trace = TraceHeaders::default();
        let got: Vec<_> = records("application/x-ndjson", body, now, &trace).iter().map(encoded).collect();

        let id = String::from_utf8(got[0].2[0].1.clone().into_bytes()).unwrap();
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
        assert_eq!(
            got[0],
            (
                "user-1234".to_string(),
                format!(
                    r#"{{"id":"{id}","type":"page.view","timestamp":"2023-11-14T22:13:20.1234Z","key":"user-1234","headers":{{"tenant":"acme"}},"payload":{{"url":"https://example.com/a/b","ms":1234,"tags":["x","y"]}}}}"#
                ),
                pairs(&[
                    ("ce_id", &id),
                    ("ce_type", "page.view"),
                    ("ce_time", "2023-11-14T22:13:20.1234Z"),
                    ("ce_specversion", "1.0"),
                    ("content-type", "application/json"),
                    ("tenant", "acme"),
                ]),
                1_700_000_000_123,
            )
        );
        assert_eq!(
            got[1],
            (
                "k\\".to_string(),
                concat!(
                    r#"{"id":"e-é\"1","type":"a\"bé\n\t\u0001/","timestamp":"2024-01-02T02:04:05.5Z","key":"k\\","#,
                    r#""headers":{"a\u0007":"x\"y","m":"😀","z":"1"},"payload":{ "a" : [1, 2.50, "\u00e9"] }}"#
                )
                .to_string(),
                pairs(&[
                    ("ce_id", "e-é\"1"),
                    ("ce_type", "a\"bé\n\t\u{1}/"),
                    ("ce_time", "2024-01-02T02:04:05.5Z"),
                    ("ce_specversion", "1.0"),
                    ("content-type", "application/json"),
                    ("a\u{7}", "x\"y"),
                    ("m", "😀"),
                    ("z", "1"),
                ]),
                1_704_161_045_500,
            )
        );
        let times: Vec<_> = got[2..].iter().map(|r| (r.2[2].1.as_str(), r.3)).collect();
        assert_eq!(
            times,
            [
                ("2024-02-29T23:59:59.000000001Z", 1_709_251_199_000),
                ("2024-02-29T12:30:00.1Z", 1_709_209_800_100),
                // Before year 0 in UTC: not representable in RFC 3339, so the Unix seconds are written.
                ("-62167221000", -62_167_221_000_000),
            ]
        );
        assert!(got[4].1.contains(r#""timestamp":"-62167221000""#), "{}", got[4].1);
    }

    /// CloudEvents: `ce_source`, extension headers and trace context, in the record's header order.
    #[test]
    fn cloud_event_encoding_is_pinned() {
        let body = r#"{"specversion":"1.0","id":"c1","source":"/shop","type":"order","time":"2024-01-01T00:00:00Z",
            "partitionkey":"cust-1","subject":"o-9","seq":7,"data":{"total":3}}"#;
        let trace = TraceHeaders {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: Some("k=v".into()),
        };
        let got = encoded(&records("application/cloudevents+json", body, OffsetDateTime::UNIX_EPOCH, &trace)[0]);
        assert_eq!(
            got,
            (
                "cust-1".to_string(),
                r#"{"id":"c1","type":"order","source":"/shop","timestamp":"2024-01-01T00:00:00Z","key":"cust-1","headers":{"ce_seq":"7","ce_subject":"o-9"},"payload":{"total":3}}"#.to_string(),
                pairs(&[
                    ("ce_id", "c1"),
                    ("ce_type", "order"),
                    ("ce_time", "2024-01-01T00:00:00Z"),
                    ("ce_specversion", "1.0"),
                    ("content-type", "application/json"),
                    ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                    ("tracestate", "k=v"),
                    ("ce_source", "/shop"),
                    ("ce_seq", "7"),
                    ("ce_subject", "o-9"),
                ]),
                1_704_067_200_000,
            )
        );
    }

    #[test]
    fn the_constant_headers_are_encoded_as_push_encodes_them() {
        let mut pushed = RecordHeaders::default();
        pushed.push("ce_specversion", b"1.0");
        pushed.push("content-type", b"application/json");
        let mut encoded = RecordHeaders::default();
        encoded.push_encoded(&SPEC_AND_CONTENT_TYPE);
        assert_eq!(encoded, pushed);
        assert_eq!(
            encoded.iter().collect::<Vec<_>>(),
            [("ce_specversion", &b"1.0"[..]), ("content-type", b"application/json")]
        );
    }

    /// A record that never reached librdkafka keeps its key in the spool: the event's `key`, else its id
    /// (which the record does not copy into a key of its own).
    #[test]
    fn the_spool_form_keeps_the_key_or_the_id() {
        let now = OffsetDateTime::now_utc();
        let body =
            concat!(r#"{"id":"e-1","type":"t","payload":1}"#, "\n", r#"{"id":"e-2","type":"t","key":"k","payload":1}"#);
        let [plain, keyed]: [OutboundRecord; 2] =
            records("application/x-ndjson", body, now, &TraceHeaders::default()).try_into().ok().unwrap();
        assert_eq!((plain.key(), keyed.key()), (&b"e-1"[..], &b"k"[..]));
        assert_eq!(plain.queue_bytes(), crate::telemetry::event_bytes(3, plain.value.len()));
        let (plain, keyed) = (plain.into_spool_record(), keyed.into_spool_record());
        assert_eq!((plain.id.as_str(), plain.key.as_deref()), ("e-1", Some(&b"e-1"[..])));
        assert_eq!((keyed.id.as_str(), keyed.key.as_deref()), ("e-2", Some(&b"k"[..])));
    }
}
