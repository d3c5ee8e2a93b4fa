//! The `raw-kafka` target: the same records the service would write, produced straight to the same broker
//! with the service's producer settings (idempotent, acks=all, lz4, linger 5 ms, the same buffer limits).
//! A "request" here is one record; a record counts as acknowledged when its delivery report says so.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use crate::common::{new_histogram, record_us};
use crate::load::{LoadOutcome, LoadSpec};
use crate::payload::Payloads;
use crate::verify::AckSet;

struct Shared {
    latency: Histogram<u64>,
    acked: Vec<u64>,
    errors: BTreeMap<String, u64>,
    error_samples: Vec<String>,
    window_ok: u64,
    last_window_done: Option<Instant>,
    last_done: Option<Instant>,
}

impl Shared {
    fn new() -> Self {
        Shared {
            latency: new_histogram(),
            acked: Vec::new(),
            errors: BTreeMap::new(),
            error_samples: Vec::new(),
            window_ok: 0,
            last_window_done: None,
            last_done: None,
        }
    }
}

struct RawContext {
    shared: Mutex<Shared>,
    ok: AtomicU64,
    failed: AtomicU64,
    warmup_end: Instant,
}

impl ClientContext for RawContext {}

impl ProducerContext for RawContext {
    /// (sequence, intended send time)
    type DeliveryOpaque = Box<(u64, Instant)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Box<(u64, Instant)>) {
        let now = Instant::now();
        let (seq, intended) = *opaque;
        let mut s = self.shared.lock().unwrap();
        s.last_done = Some(now);
        match result {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                s.acked.push(seq);
                if intended >= self.warmup_end {
                    record_us(&mut s.latency, now - intended);
                    s.window_ok += 1;
                    s.last_window_done = Some(now);
                }
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let key =
                    format!("delivery_error {}", e.rdkafka_error_code().map(|c| format!("{c:?}")).unwrap_or_default());
                *s.errors.entry(key).or_default() += 1;
                if s.error_samples.len() < 5 {
                    s.error_samples.push(format!("{seq}: {e}"));
                }
            }
        }
    }
}

/// The producer settings of the service (`src/kafka/client_config.rs`, defaults): keep in step.
pub fn producer_config(brokers: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("client.id", "loadgen-raw")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "10000")
        .set("retry.backoff.ms", "100")
        .set("queue.buffering.max.messages", "100000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("statistics.interval.ms", "0");
    cfg.set_log_level(RDKafkaLogLevel::Warning);
    cfg
}

/// Produces `spec`'s load (rate and count are per request × batch, so the same flags mean the same number of
/// events as against the service) on a dedicated thread. Blocking.
pub fn run_raw(brokers: &str, topic: &str, payloads: &Payloads, spec: &LoadSpec) -> anyhow::Result<LoadOutcome> {
    let batch = payloads.batch as u64;
    let cpu0 = crate::common::self_cpu_seconds();
    let start = Instant::now();
    let warmup = if spec.warmup >= spec.duration { Duration::ZERO } else { spec.warmup };
    let warmup_end = start + warmup;
    let end = start + spec.duration;
    let ctx =
        RawContext { shared: Mutex::new(Shared::new()), ok: AtomicU64::new(0), failed: AtomicU64::new(0), warmup_end };
    let producer: ThreadedProducer<RawContext> =
        producer_config(brokers).create_with_context(ctx).context("raw-kafka producer")?;
    let total = spec.count.map(|c| c * batch);
    let events_rate = spec.rate.map(|r| r * batch as f64);

    let mut value = Vec::with_capacity(512);
    let mut seq = 0u64;
    let mut next_progress = start + Duration::from_secs(1);
    let (mut last_sent, mut last_ok) = (0u64, 0u64);
    let mut send_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut ts_cache = (0i64, String::new());
    loop {
        if total.is_some_and(|t| seq >= t) {
            break;
        }
        let now = Instant::now();
        let intended = match events_rate {
            Some(r) => start + Duration::from_secs_f64(seq as f64 / r),
            None => now,
        };
        if intended >= end {
            break;
        }
        if intended > now + Duration::from_micros(500) {
            std::thread::sleep(intended - now);
        }
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        if ts_cache.0 != wall_ms / 1000 || ts_cache.1.is_empty() {
            ts_cache = (wall_ms / 1000, crate::common::now_rfc3339());
        }
        value.clear();
        payloads.write_record_value(&mut value, seq, &ts_cache.1);
        let id = payloads.event_id(seq);
        let headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header { key: "ce_id", value: Some(id.as_bytes()) })
            .insert(Header { key: "ce_type", value: Some("loadgen.event") })
            .insert(Header { key: "ce_time", value: Some(ts_cache.1.as_bytes()) })
            .insert(Header { key: "ce_specversion", value: Some("1.0") })
            .insert(Header { key: "content-type", value: Some("application/json") });
        let mut record = BaseRecord::with_opaque_to(topic, Box::new((seq, intended)))
            .key(id.as_bytes())
            .payload(&value[..])
            .headers(headers)
            .timestamp(wall_ms);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    *send_errors.entry(format!("send_error {e}")).or_default() += 1;
                    break;
                }
            }
        }
        seq += 1;
        if !spec.quiet && Instant::now() >= next_progress {
            let ok = producer.context().ok.load(Ordering::Relaxed);
            eprintln!(
                "[{}] t={:>3.0}s  {:>8} records/s sent  {:>8} delivered/s  delivered {:>9}  failed {}",
                spec.label,
                start.elapsed().as_secs_f64(),
                seq - last_sent,
                ok - last_ok,
                ok,
                producer.context().failed.load(Ordering::Relaxed)
            );
            (last_sent, last_ok) = (seq, ok);
            next_progress += Duration::from_secs(1);
        }
    }
    let flush = producer.flush(Duration::from_secs(30));
    if let Err(e) = flush {
        eprintln!("loadgen: raw-kafka flush: {e}");
    }
    let client_cpu_s = crate::common::self_cpu_seconds() - cpu0;
    let ctx = producer.context();
    let ok = ctx.ok.load(Ordering::Relaxed);
    let s = std::mem::replace(&mut *ctx.shared.lock().unwrap(), Shared::new());
    let mut acked = AckSet::new(seq);
    for a in &s.acked {
        acked.set(*a);
    }
    let mut status = s.errors;
    status.extend(send_errors);
    if ok > 0 {
        status.insert("delivered".into(), ok);
    }
    let window_s = s.last_window_done.map(|t| t.saturating_duration_since(warmup_end).as_secs_f64()).unwrap_or(0.0);
    let failed = ctx.failed.load(Ordering::Relaxed);
    Ok(LoadOutcome {
        requests_sent: seq,
        responses: ok + failed,
        ok_2xx: ok,
        status_counts: status,
        error_samples: s.error_samples,
        connects: 0,
        events_sent: seq,
        events_acked: acked.count(),
        seq_space: seq,
        acked,
        window_s,
        window_ok: s.window_ok,
        window_responses: s.window_ok,
        window_events_acked: s.window_ok,
        latency: s.latency.clone(),
        service_latency: s.latency,
        rejection_latency: new_histogram(),
        rejection_kernel_latency: new_histogram(),
        elapsed_s: s.last_done.map(|t| t.saturating_duration_since(start).as_secs_f64()).unwrap_or(0.0),
        client_cpu_s,
    })
}
