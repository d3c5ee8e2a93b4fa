//! Ingest: the event envelope and the bounded queue with the worker pool that feeds the producer.

pub mod envelope;
pub mod queue;

pub use envelope::{parse_event, Event, EventError, EventLimits};
pub use queue::{IngestQueue, Job, QueueError, Sink};
