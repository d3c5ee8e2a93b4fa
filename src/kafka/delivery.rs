//! Delivery bookkeeping: the ticket that travels with each record through librdkafka, the waiting room for
//! `ack=kafka` requests, and the split between retriable and terminal delivery errors.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::Notify;

/// What happened to one event, as reported to an `ack=kafka` caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered { partition: i32, offset: i64 },
    Failed { code: String, message: String },
}

/// The events of one `ack=kafka` request, resolved one by one by delivery reports; the handler waits
/// until all are resolved or its deadline passes.
#[derive(Debug)]
pub struct AckBatch {
    outcomes: Vec<OnceLock<DeliveryOutcome>>,
    remaining: AtomicUsize,
    done: Notify,
}

impl AckBatch {
    pub fn new(len: usize) -> Arc<Self> {
        Arc::new(Self {
            outcomes: (0..len).map(|_| OnceLock::new()).collect(),
            remaining: AtomicUsize::new(len),
            done: Notify::new(),
        })
    }

    pub fn resolve(&self, index: usize, outcome: DeliveryOutcome) {
        if self.outcomes[index].set(outcome).is_ok() && self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    /// Waits until every event is resolved. Cancel-safe: the caller wraps it in its own timeout.
    pub async fn wait(&self) {
        if self.remaining.load(Ordering::Acquire) == 0 {
            return;
        }
        self.done.notified().await;
    }

    /// The outcome of each event so far; `None` for events still in flight.
    pub fn outcomes(&self) -> Vec<Option<DeliveryOutcome>> {
        self.outcomes.iter().map(|o| o.get().cloned()).collect()
    }
}

/// Where a record is going: its own topic, the dead-letter topic after failing there, or its own topic
/// again from the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Primary,
    DeadLetter,
    /// Replayed from the spool: holds no queue slot; a failure goes back to the spool.
    Replay,
}

/// Travels with each record through librdkafka and comes back in its delivery report.
#[derive(Debug)]
pub struct DeliveryTicket {
    pub id: String,
    /// The event's own topic (kept when the record goes to the DLQ, for the spool).
    pub topic: Arc<str>,
    pub received_at: Instant,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub destination: Destination,
    /// Set when a caller waits for this event (`ack=kafka`): the slot to resolve.
    pub ack: Option<(Arc<AckBatch>, usize)>,
    /// The producer span of the request: held until the last of its events is resolved, so the span
    /// lasts as long as the publish did.
    pub span: tracing::Span,
}

/// Whether another attempt can succeed. librdkafka already retried within `message.timeout.ms`; these
/// are the errors where waiting longer (a broker returning, a leader being elected) can still help.
pub fn is_retriable(err: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    match err.rdkafka_error_code() {
        Some(code) => matches!(
            code,
            MessageTimedOut
                | QueueFull
                | BrokerTransportFailure
                | AllBrokersDown
                | Resolve
                | RequestTimedOut
                | NetworkException
                | NotEnoughReplicas
                | NotEnoughReplicasAfterAppend
                | LeaderNotAvailable
                | NotLeaderForPartition
                | BrokerNotAvailable
                | ReplicaNotAvailable
                | NotCoordinator
                | CoordinatorLoadInProgress
                | CoordinatorNotAvailable
                | KafkaStorageError
                | OutOfOrderSequenceNumber
                | Retry
                | PurgeQueue
                | PurgeInflight
                | OperationTimedOut
        ),
        None => false,
    }
}

/// A short stable code for an error, used in headers, responses and logs.
pub fn error_code(err: &KafkaError) -> String {
    match err.rdkafka_error_code() {
        Some(code) => format!("{code:?}"),
        None => "KafkaError".to_string(),
    }
}
