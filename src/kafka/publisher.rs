//! The producer: hands records to librdkafka without blocking, turns delivery reports into metrics and
//! ack outcomes, and re-sends or dead-letters what failed.
//!
//! Delivery reports arrive on librdkafka's polling thread through `DeliveryContext::delivery`. The
//! success path does no allocation; a failure copies the record out of librdkafka and hands it to
//! `run_failures`, which retries it with backoff or writes it to the dead-letter topic. What the
//! dead-letter topic does not take either, and what is left when shutdown gives up, goes to the spool.
//!
//! A fatal librdkafka error (`fatal_error`, e.g. the idempotent producer fenced) ends a producer for good:
//! what it still holds is spooled, then [`Publisher::run_fatal_recovery`] puts a new one in its place and
//! the spool replay sends the spooled events on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use rdkafka::{ClientContext, Statistics};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use super::client_config::{client_config, ClientRole};
use super::delivery::{error_code, is_retriable, DeliveryOutcome, DeliveryTicket, Destination};
use super::spool::{Spool, SpoolRecord};
use crate::config::KafkaSettings;
use crate::telemetry::{event_bytes, Metrics};

/// A record whose delivery failed, copied out of librdkafka.
#[derive(Debug)]
pub struct FailedDelivery {
    pub ticket: Box<DeliveryTicket>,
    pub error: KafkaError,
    pub topic: Arc<str>,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Option<OwnedHeaders>,
    pub timestamp_ms: Option<i64>,
}

/// Headers the dead-letter path adds; dropped again when such a record is spooled for its own topic.
const DLQ_HEADERS: [&str; 4] = ["x-error-code", "x-error-message", "x-original-topic", "x-attempts"];

impl FailedDelivery {
    /// What the event counts against `QUEUE_MAX_BYTES` (the same as when it was accepted).
    fn queue_bytes(&self) -> u64 {
        event_bytes(self.key.as_ref().map_or(0, Vec::len), self.value.len())
    }

    /// The spool form: the event for its own topic, without dead-letter headers.
    fn into_spool_record(self) -> SpoolRecord {
        use rdkafka::message::Headers;
        let headers = self
            .headers
            .map(|h| {
                h.iter()
                    .filter(|hd| !DLQ_HEADERS.contains(&hd.key))
                    .map(|hd| (hd.key.to_string(), hd.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        SpoolRecord {
            id: self.ticket.id,
            topic: self.ticket.topic.to_string(),
            key: self.key,
            value: self.value,
            headers,
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// Receives delivery reports on librdkafka's polling thread.
pub struct DeliveryContext {
    metrics: Metrics,
    failures: mpsc::UnboundedSender<FailedDelivery>,
    spool: Arc<Spool>,
    /// Set at the end of shutdown, and when the producer is being replaced: failures are no longer
    /// retried through this producer, they go to the spool.
    abandoning: AtomicBool,
    /// Set once librdkafka reports a fatal error: this producer will never deliver again.
    fatal: AtomicBool,
    /// Wakes [`Publisher::run_fatal_recovery`] to check the client for a fatal error.
    check_fatal: Arc<Notify>,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "event_ingestor::kafka", error = %error, reason, "kafka client error");
        // A fatal error arrives here under its underlying code (e.g. ProducerFenced), so the recovery
        // task asks the client itself (`rd_kafka_fatal_error`).
        self.check_fatal.notify_one();
    }

    fn stats(&self, statistics: Statistics) {
        self.metrics.kafka_statistics(&statistics);
    }
}

impl DeliveryContext {
    fn new(
        metrics: Metrics,
        failures: mpsc::UnboundedSender<FailedDelivery>,
        spool: Arc<Spool>,
        check_fatal: Arc<Notify>,
    ) -> Self {
        Self {
            metrics,
            failures,
            spool,
            abandoning: AtomicBool::new(false),
            fatal: AtomicBool::new(false),
            check_fatal,
        }
    }

    fn mark_fatal(&self) {
        if !self.fatal.swap(true, Ordering::AcqRel) {
            self.check_fatal.notify_one();
        }
    }

    /// Routes a failure: a waiting caller is told at once (it may retry; a dead letter would duplicate);
    /// a replayed record goes back to the spool; anything else goes to `run_failures` for a retry or the
    /// dead-letter topic — or, once shutdown has given up or the producer has failed fatally, to the spool.
    fn fail(&self, failure: FailedDelivery) {
        let code = failure.error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::Fatal) {
            // `produce` refuses with ERR__FATAL before the error callback has run.
            self.mark_fatal();
        }
        if let Some((batch, index)) = &failure.ticket.ack {
            if failure.ticket.destination != Destination::Replay {
                self.metrics.failed_and_reported(failure.queue_bytes());
            }
            let message = failure.error.to_string();
            batch.resolve(*index, DeliveryOutcome::Failed { code: error_code(&failure.error), message });
            return;
        }
        // A purge only happens when this producer is given up (shutdown, or librdkafka's own purge
        // after a fatal error): retrying through it would fail again.
        let given_up = self.abandoning.load(Ordering::Acquire)
            || self.fatal.load(Ordering::Acquire)
            || matches!(code, Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight));
        if given_up {
            spool_or_count_lost(&self.spool, &self.metrics, failure);
            return;
        }
        if let Err(mpsc::error::SendError(failure)) = self.failures.send(failure) {
            spool_or_count_lost(&self.spool, &self.metrics, failure);
        }
    }
}

/// Spools a failed event; if the spool cannot take it either, says so and counts it lost.
fn spool_or_count_lost(spool: &Spool, metrics: &Metrics, failure: FailedDelivery) {
    let error = failure.error.to_string();
    if let Err(record) = spool.submit(failure.into_spool_record()) {
        tracing::error!(id = %record.id, topic = %record.topic, error, "event could not be delivered nor spooled; lost");
        metrics.lost(1, record.queue_bytes());
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<DeliveryTicket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<DeliveryTicket>) {
        match result {
            Ok(msg) => {
                let bytes = event_bytes(msg.key_len(), msg.payload_len());
                match ticket.destination {
                    Destination::Primary => self.metrics.published(ticket.received_at.elapsed(), bytes),
                    Destination::DeadLetter => self.metrics.dead_lettered(bytes),
                    Destination::Replay => self.metrics.replayed(),
                }
                if let Some((batch, index)) = &ticket.ack {
                    batch.resolve(
                        *index,
                        DeliveryOutcome::Delivered { partition: msg.partition(), offset: msg.offset() },
                    );
                }
            }
            Err((error, msg)) => self.fail(FailedDelivery {
                ticket,
                error: error.clone(),
                topic: Arc::from(msg.topic()),
                key: msg.key().map(<[u8]>::to_vec),
                value: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                headers: msg.headers().map(|h| h.detach()),
                timestamp_ms: msg.timestamp().to_millis(),
            }),
        }
    }
}

/// Failed deliveries waiting out their retry backoff.
#[derive(Default)]
struct Parked {
    timers: DelayQueue<u64>,
    items: std::collections::HashMap<u64, FailedDelivery>,
    next: u64,
}

impl Parked {
    fn park(&mut self, failed: FailedDelivery, delay: Duration) {
        self.next += 1;
        self.items.insert(self.next, failed);
        self.timers.insert(self.next, delay);
    }
}

/// A producer whose delivery reports go to `failures`, `spool` and `metrics`: the first one, and each
/// replacement after a fatal error.
fn create_producer(
    config: &ClientConfig,
    metrics: &Metrics,
    failures: &mpsc::UnboundedSender<FailedDelivery>,
    spool: &Arc<Spool>,
    check_fatal: &Arc<Notify>,
) -> Result<ThreadedProducer<DeliveryContext>, KafkaError> {
    let context = DeliveryContext::new(metrics.clone(), failures.clone(), spool.clone(), check_fatal.clone());
    config.create_with_context(context)
}

/// The producer and what it needs to retry, dead-letter, and replace itself after a fatal error.
pub struct Publisher {
    /// The live producer; replaced (never while a send holds it) after a fatal error.
    producer: RwLock<Arc<ThreadedProducer<DeliveryContext>>>,
    /// What a replacement producer is made from.
    client_config: ClientConfig,
    failures: mpsc::UnboundedSender<FailedDelivery>,
    check_fatal: Arc<Notify>,
    spool: Arc<Spool>,
    /// How long a fatally failed producer may take to report on what it had in flight.
    fatal_flush: Duration,
    dlq_topic: Arc<str>,
    max_retries: u32,
    retry_backoff: Duration,
    metrics: Metrics,
}

impl Publisher {
    /// Creates the producer. The returned receiver must be driven by [`Publisher::run_failures`].
    pub fn new(
        settings: &KafkaSettings,
        bootstrap: &str,
        queue_size: usize,
        metrics: Metrics,
        spool: Arc<Spool>,
    ) -> Result<(Arc<Self>, mpsc::UnboundedReceiver<FailedDelivery>), KafkaError> {
        let (failures, rx) = mpsc::unbounded_channel();
        let check_fatal = Arc::new(Notify::new());
        let client_config = client_config(settings, bootstrap, ClientRole::Producer, queue_size);
        let producer = create_producer(&client_config, &metrics, &failures, &spool, &check_fatal)?;
        let publisher = Publisher {
            producer: RwLock::new(Arc::new(producer)),
            client_config,
            failures,
            check_fatal,
            spool,
            fatal_flush: settings.write_timeout.min(Duration::from_secs(10)),
            dlq_topic: Arc::from(settings.dlq_topic.as_str()),
            max_retries: settings.max_retries,
            retry_backoff: settings.retry_backoff,
            metrics,
        };
        Ok((Arc::new(publisher), rx))
    }

    /// The live producer.
    pub fn producer(&self) -> Arc<ThreadedProducer<DeliveryContext>> {
        self.producer.read().expect("producer lock is never poisoned").clone()
    }

    /// Hands one record to librdkafka. Never sleeps a fixed 100 ms: when librdkafka's own buffer is full
    /// it yields for 1 ms, doubling to at most 50 ms, and the record is retried as returned.
    #[allow(clippy::too_many_arguments)]
    pub async fn send_raw(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: Option<OwnedHeaders>,
        timestamp_ms: Option<i64>,
        ticket: Box<DeliveryTicket>,
    ) {
        let mut record: BaseRecord<'_, [u8], [u8], Box<DeliveryTicket>> =
            BaseRecord::with_opaque_to(topic, ticket).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        if let Some(ts) = timestamp_ms {
            record = record.timestamp(ts);
        }
        let mut wait = Duration::from_millis(1);
        loop {
            // The lock is held only for the non-blocking enqueue, never across the wait below.
            let returned = {
                let producer = self.producer.read().expect("producer lock is never poisoned");
                match producer.send(record) {
                    Ok(()) => return,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => returned,
                    Err((error, returned)) => {
                        // Refused before it was queued (too large, unknown partition, fatal producer
                        // state): the same path as a failed delivery report.
                        producer.context().fail(FailedDelivery {
                            ticket: returned.delivery_opaque,
                            error,
                            topic: Arc::from(topic),
                            key: key.map(<[u8]>::to_vec),
                            value: value.to_vec(),
                            headers: returned.headers,
                            timestamp_ms,
                        });
                        return;
                    }
                }
            };
            record = returned;
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(50));
        }
    }

    /// Replaces the producer each time librdkafka reports a fatal error, until `stop`. A producer that
    /// fails again within a minute of the last replacement is replaced after a backoff (1 s doubling to
    /// 60 s), so a persistent cause (e.g. a revoked ACL) does not spin; its events are spooled meanwhile.
    pub async fn run_fatal_recovery(self: Arc<Self>, stop: CancellationToken) {
        let mut last: Option<Instant> = None;
        let mut backoff = Duration::ZERO;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.check_fatal.notified() => {}
            }
            if self.producer().client().fatal_error().is_none() {
                continue;
            }
            backoff = match last {
                Some(at) if at.elapsed() < Duration::from_secs(60) => {
                    (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
                }
                _ => Duration::ZERO,
            };
            if !backoff.is_zero() {
                tracing::warn!(?backoff, "the kafka producer failed fatally again soon after its replacement");
                self.producer().context().mark_fatal();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
            last = Some(Instant::now());
            let publisher = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || publisher.replace_fatal_producer()).await {
                tracing::error!(error = %e, "replacing the kafka producer failed");
            }
        }
    }

    /// Spools what the fatally failed producer still holds, then puts a new producer in its place. Until
    /// the swap, records handed to the old producer are refused with ERR__FATAL and spooled; the spool
    /// replay sends everything spooled here once the new producer is in place. Blocking.
    fn replace_fatal_producer(&self) {
        let started = Instant::now();
        let old = self.producer();
        old.context().mark_fatal();
        let (code, reason) = old.client().fatal_error().unwrap_or((RDKafkaErrorCode::Fatal, String::new()));
        tracing::error!(
            error_code = ?code,
            reason,
            in_flight = old.in_flight_count(),
            "the kafka producer failed fatally; spooling what it holds and replacing it"
        );
        // librdkafka has already failed what was queued (those reports are spooled); records in flight
        // still get their real outcome from the broker, so wait for those before giving up on them.
        if old.flush(self.fatal_flush).is_err() {
            tracing::warn!(in_flight = old.in_flight_count(), "records still in flight after the wait; spooling them");
        }
        old.context().abandoning.store(true, Ordering::Release);
        old.purge(PurgeConfig::default().queue().inflight());
        let _ = old.flush(Duration::from_millis(500));
        let replacement = loop {
            match create_producer(&self.client_config, &self.metrics, &self.failures, &self.spool, &self.check_fatal) {
                Ok(producer) => break producer,
                Err(e) => {
                    tracing::error!(error = %e, "cannot create a new kafka producer; trying again in 1 s");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        };
        *self.producer.write().expect("producer lock is never poisoned") = Arc::new(replacement);
        self.metrics.producer_recreated();
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            spool_bytes = self.spool.bytes(),
            "kafka producer replaced; spooled events are replayed through the new one"
        );
        // Dropping the old producer joins its polling thread.
        drop(old);
    }

    /// Retries (after a backoff) or dead-letters each failed delivery until `stop`; then spools the
    /// retries still waiting and whatever failed since.
    pub async fn run_failures(
        self: Arc<Self>,
        mut failures: mpsc::UnboundedReceiver<FailedDelivery>,
        stop: CancellationToken,
    ) {
        // Retries wait out their backoff here (not in detached tasks), so shutdown can spool them.
        let mut parked = Parked::default();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(failed) = failures.recv() => self.route(failed, &mut parked).await,
                Some(due) = parked.timers.next(), if !parked.timers.is_empty() => {
                    if let Some(f) = parked.items.remove(due.get_ref()) {
                        self.send_raw(&f.topic, f.key.as_deref(), &f.value, f.headers, f.timestamp_ms, f.ticket).await;
                    }
                }
            }
        }
        failures.close();
        let spool = &self.spool;
        let mut left = 0;
        for failed in std::iter::from_fn(|| failures.try_recv().ok()).chain(parked.items.into_values()) {
            left += 1;
            spool_or_count_lost(spool, &self.metrics, failed);
        }
        if left > 0 {
            tracing::warn!(events = left, "shutdown: spooled events that were waiting for a retry or a dead letter");
        }
    }

    async fn route(&self, mut failed: FailedDelivery, parked: &mut Parked) {
        match failed.ticket.destination {
            Destination::DeadLetter | Destination::Replay => {
                tracing::error!(
                    id = %failed.ticket.id,
                    error = %failed.error,
                    "the dead-letter topic did not take the event either; spooling it"
                );
                spool_or_count_lost(&self.spool, &self.metrics, failed);
            }
            Destination::Primary if is_retriable(&failed.error) && failed.ticket.attempt <= self.max_retries => {
                self.metrics.retried();
                let shift = (failed.ticket.attempt - 1).min(8);
                let delay = (self.retry_backoff * (1 << shift)).min(Duration::from_secs(30));
                tracing::debug!(id = %failed.ticket.id, attempt = failed.ticket.attempt, error = %failed.error, ?delay, "retrying delivery");
                failed.ticket.attempt += 1;
                parked.park(failed, delay);
            }
            Destination::Primary => {
                self.metrics.failed();
                tracing::warn!(
                    id = %failed.ticket.id,
                    topic = %failed.topic,
                    attempts = failed.ticket.attempt,
                    error = %failed.error,
                    "delivery failed terminally; writing to the dead-letter topic"
                );
                self.dead_letter(failed).await;
            }
        }
    }

    /// Writes a failed event to the dead-letter topic with headers naming the error, the original topic
    /// and the number of attempts.
    async fn dead_letter(&self, failed: FailedDelivery) {
        let code = error_code(&failed.error);
        let message = failed.error.to_string();
        let attempts = failed.ticket.attempt.to_string();
        let headers = failed
            .headers
            .unwrap_or_default()
            .insert(Header { key: "x-error-code", value: Some(code.as_bytes()) })
            .insert(Header { key: "x-error-message", value: Some(message.as_bytes()) })
            .insert(Header { key: "x-original-topic", value: Some(failed.topic.as_bytes()) })
            .insert(Header { key: "x-attempts", value: Some(attempts.as_bytes()) });
        let mut ticket = failed.ticket;
        ticket.destination = Destination::DeadLetter;
        let dlq = self.dlq_topic.clone();
        self.send_raw(&dlq, failed.key.as_deref(), &failed.value, Some(headers), failed.timestamp_ms, ticket).await;
    }

    /// Waits up to `timeout` for librdkafka to deliver everything it holds.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer().flush(timeout)
    }

    /// Gives up on what librdkafka still holds (end of the shutdown budget): purges it, and each purged
    /// event goes to the spool. Blocking; call from a blocking context.
    pub fn abandon(&self) {
        let producer = self.producer();
        producer.context().abandoning.store(true, Ordering::Release);
        producer.purge(PurgeConfig::default().queue().inflight());
        // Purged messages come back as delivery reports on the next poll.
        let _ = producer.flush(Duration::from_millis(500));
    }

    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// Records librdkafka still holds (queued or in flight to the broker).
    pub fn in_flight(&self) -> i32 {
        self.producer().in_flight_count()
    }
}

impl Publisher {
    /// Hands an encoded event to librdkafka (see [`Publisher::send_raw`]).
    pub async fn send(&self, record: super::OutboundRecord, ticket: Box<DeliveryTicket>) {
        self.send_raw(
            &record.topic,
            Some(record.key()),
            &record.value,
            Some(record.headers.to_kafka()),
            Some(record.timestamp_ms),
            ticket,
        )
        .await;
    }
}
