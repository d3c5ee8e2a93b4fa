//! Ingest: request bodies to events (decoding, framing, the envelope, CloudEvents) and the bounded queue
//! with the worker pool that feeds the producer.

pub mod drain;
pub mod envelope;
pub mod queue;
pub mod request;
mod scan;
pub mod timestamp;

pub use envelope::{parse_event, Event, EventError, EventHeaders, EventLimits, RawJson};
pub use queue::{IngestQueue, Job, QueueError, Sink};
pub use request::{parse_request, BodyMeta, Item, Parsed, RequestError, RequestLimits};
