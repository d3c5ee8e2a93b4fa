//! The Prometheus registry and every metric the service exports, resolved once, off the hot path.
//!
//! Names of the Go service are kept (`events_received_total`, `events_published_total`,
//! `events_failed_total`, `ingest_queue_size`, `http_requests_total{status}`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::ingest::drain::Slots;

/// Labels of the per-request HTTP metrics: bounded (routes are templates, statuses are codes).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: &'static str,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrokerLabel {
    broker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabel {
    scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The bounded queue's capacity accounting, read at scrape time so the hot path pays nothing for it.
///
/// A slot is taken when an event is accepted and given back only when the event is resolved (published,
/// dead-lettered, reported failed to a waiting caller, spooled, or lost). So the depth counts every event
/// the service still owes to Kafka, wherever it sits: in the queue, in librdkafka, or waiting out a retry.
/// That is what bounds memory, what 503s protect, and what autoscaling should follow.
///
/// The same events are also counted in bytes (`QUEUE_MAX_BYTES`: the key and value of each, see
/// [`event_bytes`]), so that large events cannot hold more memory than that whatever `QUEUE_SIZE` is.
#[derive(Debug)]
pub struct QueueGauge {
    /// A slot per event accepted and not yet resolved; the resolved ones are counted for the drain-rate
    /// estimate behind `Retry-After`.
    slots: Slots,
    /// `QUEUE_MAX_BYTES`, and the bytes of the events holding a slot.
    pub max_bytes: u64,
    bytes: AtomicU64,
}

/// What one event counts against `QUEUE_MAX_BYTES`: its key and value, which every path an event takes
/// (librdkafka, a retry, the dead-letter topic, the spool) carries unchanged.
pub fn event_bytes(key_len: usize, value_len: usize) -> u64 {
    (key_len + value_len) as u64
}

impl QueueGauge {
    /// A queue of `capacity` events, not bounded in bytes (see `with_max_bytes`).
    pub fn new(capacity: usize) -> Self {
        Self::with_max_bytes(capacity, u64::MAX)
    }

    pub fn with_max_bytes(capacity: usize, max_bytes: u64) -> Self {
        Self { slots: Slots::new(capacity), max_bytes, bytes: AtomicU64::new(0) }
    }

    /// Takes `n` slots holding `bytes` in all, or returns false without waiting.
    pub fn try_take(&self, n: usize, bytes: u64) -> bool {
        if !self.slots.try_take(n) {
            return false;
        }
        let held = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        if held.saturating_add(bytes) > self.max_bytes {
            self.untake_bytes(bytes);
            self.slots.give_back(n);
            return false;
        }
        true
    }

    /// `QUEUE_SIZE`: events.
    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    /// Gives back `n` slots of resolved events holding `bytes`.
    pub fn release(&self, n: usize, bytes: u64) {
        self.untake_bytes(bytes);
        self.slots.finish(n);
    }

    /// Gives back slots of events that were never accepted (the queue closed under the request).
    pub fn give_back(&self, n: usize, bytes: u64) {
        self.untake_bytes(bytes);
        self.slots.give_back(n);
    }

    /// Saturating, so that a miscount could only ever make the budget larger, never refuse everything.
    fn untake_bytes(&self, bytes: u64) {
        let _ = self.bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| Some(b.saturating_sub(bytes)));
    }

    /// Bytes of the events holding a slot.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    pub fn resolved_total(&self) -> u64 {
        self.slots.finished()
    }

    /// Events accepted and not yet resolved.
    pub fn depth(&self) -> usize {
        self.slots.held()
    }

    /// The fuller of the two bounds, events or bytes, 0-1.
    pub fn utilization(&self) -> f64 {
        let events = self.depth() as f64 / self.capacity() as f64;
        let bytes = self.bytes() as f64 / self.max_bytes as f64;
        events.max(bytes).min(1.0)
    }
}

#[derive(Debug)]
struct QueueCollector(Arc<QueueGauge>);

impl Collector for QueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let q = &self.0;
        let gauges: [(&str, &str, f64); 5] = [
            (
                "ingest_queue_size",
                "Events accepted and not yet resolved (queued, in the producer or retrying)",
                q.depth() as f64,
            ),
            ("ingest_queue_capacity", "Capacity of the bounded ingest queue (QUEUE_SIZE)", q.capacity() as f64),
            ("ingest_queue_bytes", "Key and value bytes of the events in ingest_queue_size", q.bytes() as f64),
            (
                "ingest_queue_bytes_capacity",
                "Byte capacity of the bounded ingest queue (QUEUE_MAX_BYTES)",
                q.max_bytes as f64,
            ),
            (
                "ingest_queue_utilization",
                "Fraction of the ingest queue in use (events or bytes, the fuller), 0-1: the autoscaling signal",
                q.utilization(),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            let metric_encoder = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric_encoder)?;
        }
        Ok(())
    }
}

/// Every metric, shared by handle. Cloning is cheap.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    events_received: Counter,
    events_published: Counter,
    events_failed: Counter,
    events_dead_lettered: Counter,
    events_lost: Counter,
    events_retried: Counter,
    events_spooled: Counter,
    events_replayed: Counter,
    spool_corrupt: Counter,
    producer_recreated: Counter,
    spool_bytes: Gauge,
    unresolved_previous_run: Gauge,
    events_rejected: Family<ReasonLabel, Counter>,
    http_requests: Family<StatusLabel, Counter>,
    kafka_queue_messages: Gauge,
    kafka_queue_bytes: Gauge,
    kafka_rtt: Family<BrokerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    kafka_tx_errors: Family<BrokerLabel, Gauge>,
    kafka_tx_retries: Family<BrokerLabel, Gauge>,
    rate_limited: Family<ScopeLabel, Counter>,
    load_shed: Counter,
    panics: Counter,
    open_connections: Gauge,
    refused_connections: Counter,
    http_duration: Family<HttpLabels, Histogram>,
    /// The HTTP series resolved once each (off the hot path): counters by status, histograms by route
    /// and status class.
    http_by_status: HttpByStatus,
    http_by_route: HttpByRoute,
    delivery_duration: Histogram,
    batch_size: Histogram,
    queue: Arc<QueueGauge>,
}

/// Statuses 100-599.
type HttpByStatus = Box<[std::sync::OnceLock<Counter>; 500]>;
/// The ingest routes' labels (`HTTP_ROUTES`) by status class.
type HttpByRoute = [[std::sync::OnceLock<Histogram>; 5]; HTTP_ROUTES.len()];

/// The `route` labels the ingest listener uses.
const HTTP_ROUTES: [&str; 6] = [
    crate::http::EVENTS_PATH,
    crate::http::TOPIC_EVENTS_PATH,
    crate::http::BEACON_PATH_LABEL,
    crate::http::HEALTH_PATH,
    crate::http::OPENAPI_PATH,
    "unmatched",
];

impl Metrics {
    pub fn new(queue: Arc<QueueGauge>) -> Self {
        let mut registry = Registry::default();
        let events_received = Counter::default();
        registry.register("events_received", "Events accepted from clients", events_received.clone());
        let events_published = Counter::default();
        registry.register("events_published", "Events acknowledged by Kafka on their topic", events_published.clone());
        let events_failed = Counter::default();
        registry.register(
            "events_failed",
            "Events whose delivery to their topic failed terminally (then dead-lettered or lost)",
            events_failed.clone(),
        );
        let events_dead_lettered = Counter::default();
        registry.register("events_dlq", "Events written to the dead-letter topic", events_dead_lettered.clone());
        let events_lost = Counter::default();
        registry.register(
            "events_lost",
            "Accepted events that reached neither their topic nor the dead-letter topic",
            events_lost.clone(),
        );
        let events_retried = Counter::default();
        registry.register(
            "events_retried",
            "Delivery attempts repeated after a retriable failure",
            events_retried.clone(),
        );
        let events_spooled = Counter::default();
        registry.register(
            "events_spooled",
            "Events written to the local spool because neither their topic nor the DLQ took them",
            events_spooled.clone(),
        );
        let events_replayed = Counter::default();
        registry.register(
            "events_replayed",
            "Spooled events replayed to Kafka and acknowledged",
            events_replayed.clone(),
        );
        let spool_corrupt = Counter::default();
        registry.register(
            "spool_corrupt_segments",
            "Spool segments whose tail was torn or corrupt (skipped)",
            spool_corrupt.clone(),
        );
        let producer_recreated = Counter::default();
        registry.register(
            "kafka_producer_recreated",
            "Kafka producers replaced after a fatal librdkafka error (what they held was spooled)",
            producer_recreated.clone(),
        );
        let spool_bytes = Gauge::default();
        registry.register_with_unit("spool_size", "Bytes in the local spool", Unit::Bytes, spool_bytes.clone());
        let unresolved_previous_run = Gauge::default();
        registry.register(
            "events_unresolved_previous_run",
            "Events the previous run accepted but had not resolved when it stopped without a clean shutdown (upper bound)",
            unresolved_previous_run.clone(),
        );
        let events_rejected = Family::<ReasonLabel, Counter>::default();
        registry.register("events_rejected", "Events refused at ingest, by reason", events_rejected.clone());
        let http_requests = Family::<StatusLabel, Counter>::default();
        registry.register("http_requests", "HTTP requests on the ingest listener by status", http_requests.clone());
        let kafka_queue_messages = Gauge::default();
        registry.register(
            "kafka_producer_queue_messages",
            "Messages in librdkafka's producer queue (statistics)",
            kafka_queue_messages.clone(),
        );
        let kafka_queue_bytes = Gauge::default();
        registry.register_with_unit(
            "kafka_producer_queue",
            "Bytes in librdkafka's producer queue (statistics)",
            Unit::Bytes,
            kafka_queue_bytes.clone(),
        );
        let kafka_rtt = Family::<BrokerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register_with_unit(
            "kafka_broker_rtt",
            "Average broker round-trip time (librdkafka statistics)",
            Unit::Seconds,
            kafka_rtt.clone(),
        );
        let kafka_tx_errors = Family::<BrokerLabel, Gauge>::default();
        registry.register(
            "kafka_broker_request_errors",
            "Request errors to the broker since start (librdkafka txerrs)",
            kafka_tx_errors.clone(),
        );
        let kafka_tx_retries = Family::<BrokerLabel, Gauge>::default();
        registry.register(
            "kafka_broker_request_retries",
            "Request retries to the broker since start (librdkafka txretries)",
            kafka_tx_retries.clone(),
        );
        let rate_limited = Family::<ScopeLabel, Counter>::default();
        registry.register(
            "http_rate_limited",
            "Requests refused with 429, by limit (global, client, tenant)",
            rate_limited.clone(),
        );
        let load_shed = Counter::default();
        registry.register(
            "http_load_shed",
            "Requests refused with 503 because MAX_CONCURRENT_REQUESTS were in progress",
            load_shed.clone(),
        );
        let panics = Counter::default();
        registry.register("http_panics", "Handler panics caught and answered with 500", panics.clone());
        let open_connections = Gauge::default();
        registry.register("http_open_connections", "Open connections on the ingest listener", open_connections.clone());
        let refused_connections = Counter::default();
        registry.register(
            "http_refused_connections",
            "Connections closed at accept because MAX_CONNECTIONS were open",
            refused_connections.clone(),
        );
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.5, 14))
        });
        registry.register_with_unit(
            "http_request_duration",
            "Ingest listener request latency by route and status class",
            Unit::Seconds,
            http_duration.clone(),
        );
        let delivery_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register_with_unit(
            "event_delivery_duration",
            "Time from receipt of an event to Kafka's acknowledgement",
            Unit::Seconds,
            delivery_duration.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 4.0, 9));
        registry.register("ingest_batch_size", "Events per accepted request", batch_size.clone());
        // A gauge at 1 rather than an OpenMetrics `info`, so classic Prometheus text parsers (promtool)
        // read the exposition too.
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("event_ingestor_build_info", "Build information: the version label", build_info);
        registry.register_collector(Box::new(QueueCollector(queue.clone())));
        Metrics(Arc::new(Inner {
            registry,
            events_received,
            events_published,
            events_failed,
            events_dead_lettered,
            events_lost,
            events_retried,
            events_spooled,
            events_replayed,
            spool_corrupt,
            producer_recreated,
            spool_bytes,
            unresolved_previous_run,
            events_rejected,
            http_requests,
            kafka_queue_messages,
            kafka_queue_bytes,
            kafka_rtt,
            kafka_tx_errors,
            kafka_tx_retries,
            rate_limited,
            load_shed,
            panics,
            open_connections,
            refused_connections,
            http_duration,
            http_by_status: Box::new(std::array::from_fn(|_| std::sync::OnceLock::new())),
            http_by_route: Default::default(),
            delivery_duration,
            batch_size,
            queue,
        }))
    }

    pub fn queue(&self) -> &Arc<QueueGauge> {
        &self.0.queue
    }

    /// `n` events accepted into the queue (their slots already taken).
    pub fn accepted(&self, n: usize) {
        self.0.events_received.inc_by(n as u64);
        self.0.batch_size.observe(n as f64);
    }

    /// `n` events refused at ingest for `reason` (a stable problem code).
    pub fn rejected(&self, reason: &'static str, n: usize) {
        self.0.events_rejected.get_or_create(&ReasonLabel { reason }).inc_by(n as u64);
    }

    /// An event (of `bytes`, see `event_bytes`) acknowledged by Kafka on its topic.
    pub fn published(&self, since_receipt: std::time::Duration, bytes: u64) {
        self.0.events_published.inc();
        self.0.delivery_duration.observe(since_receipt.as_secs_f64());
        self.resolved(bytes);
    }

    /// `n` events (`bytes` in all) made durable in the spool: resolved as far as this process is concerned.
    pub fn spooled(&self, n: usize, bytes: u64) {
        self.0.events_spooled.inc_by(n as u64);
        self.0.queue.release(n, bytes);
    }

    /// A spooled event acknowledged by Kafka on replay (it holds no queue slot).
    pub fn replayed(&self) {
        self.0.events_replayed.inc();
    }

    pub fn producer_recreated(&self) {
        self.0.producer_recreated.inc();
    }

    pub fn spool_corrupt_segment(&self) {
        self.0.spool_corrupt.inc();
    }

    pub fn set_spool_bytes(&self, bytes: u64) {
        self.0.spool_bytes.set(bytes as i64);
    }

    pub fn set_unresolved_previous_run(&self, n: u64) {
        self.0.unresolved_previous_run.set(n as i64);
    }

    pub fn retried(&self) {
        self.0.events_retried.inc();
    }

    /// An event failed terminally on its topic and will be dead-lettered (still pending until then).
    pub fn failed(&self) {
        self.0.events_failed.inc();
    }

    /// An event whose delivery was refused by the caller's wait (`ack=kafka`): the client was told, so
    /// it is resolved without a dead letter.
    pub fn failed_and_reported(&self, bytes: u64) {
        self.0.events_failed.inc();
        self.resolved(bytes);
    }

    pub fn dead_lettered(&self, bytes: u64) {
        self.0.events_dead_lettered.inc();
        self.resolved(bytes);
    }

    /// `n` events (`bytes` in all) that could be neither delivered nor spooled.
    pub fn lost(&self, n: usize, bytes: u64) {
        self.0.events_lost.inc_by(n as u64);
        self.0.queue.release(n, bytes);
    }

    /// Every event still unresolved, counted lost (the end of a shutdown that could not spool them).
    pub fn lost_pending(&self) {
        let queue = &self.0.queue;
        self.lost(queue.depth(), queue.bytes());
    }

    /// `n` spooled events (no queue slot) that could not be kept.
    pub fn lost_after_spool(&self, n: usize) {
        self.0.events_lost.inc_by(n as u64);
    }

    fn resolved(&self, bytes: u64) {
        self.0.queue.release(1, bytes);
    }

    /// Events accepted and not yet resolved.
    pub fn pending(&self) -> usize {
        self.0.queue.depth()
    }

    /// librdkafka's periodic statistics (`statistics.interval.ms`). Broker labels are bounded by the
    /// cluster's brokers.
    pub fn kafka_statistics(&self, stats: &rdkafka::Statistics) {
        self.0.kafka_queue_messages.set(stats.msg_cnt as i64);
        self.0.kafka_queue_bytes.set(stats.msg_size as i64);
        for broker in stats.brokers.values().filter(|b| b.nodeid >= 0) {
            let label = BrokerLabel { broker: broker.nodeid.to_string() };
            if let Some(rtt) = &broker.rtt {
                self.0.kafka_rtt.get_or_create(&label).set(rtt.avg as f64 / 1e6);
            }
            self.0.kafka_tx_errors.get_or_create(&label).set(broker.txerrs as i64);
            self.0.kafka_tx_retries.get_or_create(&label).set(broker.txretries as i64);
        }
    }

    pub fn rate_limited(&self, scope: &'static str) {
        self.0.rate_limited.get_or_create(&ScopeLabel { scope }).inc();
    }

    pub fn load_shed(&self) {
        self.0.load_shed.inc();
    }

    pub fn panicked(&self) {
        self.0.panics.inc();
    }

    pub fn connection_opened(&self) {
        self.0.open_connections.inc();
    }

    pub fn connection_closed(&self) {
        self.0.open_connections.dec();
    }

    pub fn connection_refused(&self) {
        self.0.refused_connections.inc();
    }

    pub fn http_request(&self, route: &'static str, status: u16, elapsed: std::time::Duration) {
        let inner = &*self.0;
        match inner.http_by_status.get(usize::from(status).wrapping_sub(100)) {
            Some(slot) => slot.get_or_init(|| inner.http_requests.get_or_create_owned(&StatusLabel { status })).inc(),
            None => inner.http_requests.get_or_create(&StatusLabel { status }).inc(),
        };
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        let status_class = ["1xx", "2xx", "3xx", "4xx", "5xx"][class];
        let resolve = || inner.http_duration.get_or_create_owned(&HttpLabels { route, status_class });
        let seconds = elapsed.as_secs_f64();
        match HTTP_ROUTES.iter().position(|r| *r == route) {
            Some(r) => inner.http_by_route[r][class].get_or_init(resolve).observe(seconds),
            None => resolve().observe(seconds),
        }
    }

    /// The classic Prometheus text format (0.0.4), for scrapers and tools that do not speak OpenMetrics
    /// (promtool, older agents): counters are declared under their `_total` name and the OpenMetrics-only
    /// `# UNIT` and `# EOF` lines are dropped.
    pub fn encode_prometheus_text(&self) -> String {
        let open = self.encode();
        let counters: std::collections::HashSet<&str> =
            open.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
        let mut out = String::with_capacity(open.len() + 256);
        for line in open.lines() {
            if line.starts_with("# UNIT ") || line == "# EOF" {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
                let rest = line.strip_prefix(prefix)?;
                let (name, tail) = rest.split_once(' ')?;
                counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.0.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# metrics encoding failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[test]
    fn the_queue_is_bounded_by_events_and_by_bytes_whichever_fills_first() {
        let q = QueueGauge::with_max_bytes(10, 1000);
        assert!(q.try_take(2, 600));
        assert!(!q.try_take(1, 500), "600 + 500 bytes is over the budget");
        assert_eq!((q.depth(), q.bytes()), (2, 600), "a refused take leaves nothing behind");
        assert!(q.try_take(1, 400));
        assert_eq!(q.utilization(), 1.0, "the byte budget is full though 3 of 10 slots are taken");
        q.release(1, 400);
        assert!(q.try_take(8, 0));
        assert!(!q.try_take(1, 0), "and the slots bound it too");
        assert_eq!(q.utilization(), 1.0);
        q.release(10, 600);
        assert_eq!((q.depth(), q.bytes(), q.resolved_total()), (0, 0, 11));
        q.give_back(0, 0);
        assert_eq!(q.utilization(), 0.0);
        assert!(!q.try_take(11, 0), "a batch larger than the queue never fits");
        assert_eq!(q.depth(), 0);
    }

    #[test]
    fn slots_taken_from_several_threads_never_exceed_the_capacity() {
        let q = Arc::new(QueueGauge::new(8));
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (q, peak) = (q.clone(), peak.clone());
                std::thread::spawn(move || {
                    let mut taken = 0;
                    for _ in 0..20_000 {
                        if q.try_take(3, 1) {
                            peak.fetch_max(q.depth(), Ordering::Relaxed);
                            q.release(3, 1);
                            taken += 1;
                        }
                    }
                    taken
                })
            })
            .collect();
        let taken: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(taken > 0);
        assert!(peak.load(Ordering::Relaxed) <= 6, "at most two batches of 3 fit in 8 slots");
        assert_eq!((q.depth(), q.bytes(), q.resolved_total()), (0, 0, 3 * taken as u64));
    }
}
