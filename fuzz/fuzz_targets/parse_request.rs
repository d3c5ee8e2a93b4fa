//! Fuzzes body decoding + framing + parsing + validation + record encoding: any bytes under any of the
//! supported Content-Types and encodings must give events or an error, never a panic or a hang.
#![no_main]

use std::sync::Arc;

use event_ingestor::ingest::{parse_request, BodyMeta, EventLimits, Parsed, RequestLimits};
use event_ingestor::kafka::OutboundRecord;
use event_ingestor::telemetry::trace::TraceHeaders;
use libfuzzer_sys::fuzz_target;

const TYPES: [&str; 6] = [
    "application/json",
    "application/x-ndjson",
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
    "text/plain",
    "application/octet-stream",
];
const ENCODINGS: [Option<&str>; 3] = [None, Some("gzip"), Some("zstd")];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let ce_headers = if selector & 0x80 != 0 {
        vec![
            ("specversion".to_string(), "1.0".to_string()),
            ("id".to_string(), "f".to_string()),
            ("source".to_string(), "/f".to_string()),
            ("type".to_string(), "t".to_string()),
        ]
    } else {
        Vec::new()
    };
    let meta = BodyMeta {
        content_type: Some(TYPES[(selector & 0x07) as usize % TYPES.len()]),
        content_encoding: ENCODINGS[((selector >> 3) & 0x03) as usize % ENCODINGS.len()],
        ce_headers,
    };
    let limits = RequestLimits { max_decoded_bytes: 1 << 20, max_batch_events: 1000, max_depth: 64, event: EventLimits::default() };
    let topic: Arc<str> = Arc::from("fuzz");
    if let Ok(parsed) = parse_request(&meta, body, time::OffsetDateTime::UNIX_EPOCH, &limits) {
        let events = match parsed {
            Parsed::Single(e) => vec![e],
            Parsed::Batch(items) => items.into_iter().filter_map(|i| i.event.ok()).collect(),
        };
        for e in events {
            let expected_id = e.id.clone();
            let record = OutboundRecord::from_event(e, &topic, &TraceHeaders::default());
            // The record value is always valid JSON that names the event's id. (Read as raw members: JSON
            // allows numbers like 6e666601 that an f64 cannot hold, and the payload is passed through as is.)
            let members: std::collections::BTreeMap<String, Box<serde_json_check::value::RawValue>> =
                serde_json_check::from_slice(&record.value).expect("record value is JSON");
            let id: String = serde_json_check::from_str(members["id"].get()).expect("id is a string");
            assert_eq!(id, expected_id);
        }
    }
});
