//! The Kafka record an event becomes: key, value, headers (CloudEvents Kafka binding) and timestamp.

use std::sync::Arc;

use rdkafka::message::{Header, OwnedHeaders};

use crate::ingest::envelope::Event;
use crate::telemetry::trace::TraceHeaders;

/// One record ready to hand to the producer.
pub struct OutboundRecord {
    pub id: String,
    pub topic: Arc<str>,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: OwnedHeaders,
    pub timestamp_ms: i64,
}

impl OutboundRecord {
    /// Encodes `event` for `topic`: key = `key` or id; value = the normalized envelope as JSON; headers
    /// `traceparent`/`tracestate` (the producer span, or the caller's context when tracing is off),
    /// `ce_id`, `ce_type`, `ce_time`, `ce_specversion`, `content-type` and the caller's own.
    pub fn from_event(event: &Event, topic: &Arc<str>, trace: &TraceHeaders) -> Self {
        let time = event.timestamp_rfc3339();
        let value = event.to_json(&time);
        let mut headers = OwnedHeaders::new_with_capacity(5 + event.headers.len())
            .insert(Header { key: "ce_id", value: Some(event.id.as_bytes()) })
            .insert(Header { key: "ce_type", value: Some(event.event_type.as_bytes()) })
            .insert(Header { key: "ce_time", value: Some(time.as_bytes()) })
            .insert(Header { key: "ce_specversion", value: Some("1.0") })
            .insert(Header { key: "content-type", value: Some("application/json") });
        if let Some(tp) = &trace.traceparent {
            headers = headers.insert(Header { key: "traceparent", value: Some(tp.as_bytes()) });
        }
        if let Some(ts) = &trace.tracestate {
            headers = headers.insert(Header { key: "tracestate", value: Some(ts.as_bytes()) });
        }
        if let Some(source) = &event.source {
            headers = headers.insert(Header { key: "ce_source", value: Some(source.as_bytes()) });
        }
        for (name, value) in &event.headers {
            headers = headers.insert(Header { key: name, value: Some(value.as_bytes()) });
        }
        OutboundRecord {
            id: event.id.clone(),
            topic: topic.clone(),
            key: event.partition_key().as_bytes().to_vec(),
            value,
            headers,
            timestamp_ms: event.timestamp_millis(),
        }
    }
}

impl OutboundRecord {
    /// The spool form of a record that never reached librdkafka.
    pub fn into_spool_record(self) -> super::SpoolRecord {
        use rdkafka::message::Headers;
        let headers = self.headers.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect();
        super::SpoolRecord {
            id: self.id,
            topic: self.topic.to_string(),
            key: Some(self.key),
            value: self.value,
            headers,
            timestamp_ms: Some(self.timestamp_ms),
        }
    }
}
