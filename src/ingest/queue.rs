//! The bounded ingest queue (`QUEUE_SIZE` events) and the `WORKER_POOL_SIZE` workers that drain it into
//! the producer.
//!
//! A request's events travel as one job so that one worker sends them in order (per-key order within a
//! request). Capacity is counted in events (see `QueueGauge`): an event holds its slot until it is
//! resolved, so a slow broker fills the queue and clients hear 503 instead of the process growing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::kafka::delivery::{AckBatch, DeliveryTicket, Destination};
use crate::kafka::{DeliveryOutcome, Ledger, OutboundRecord, Publisher, SpoolRecord};
use crate::telemetry::Metrics;

/// Where the workers hand events.
#[derive(Clone)]
pub enum Sink {
    Kafka(Arc<Publisher>),
    /// Benchmarks only (`PUBLISHER=noop`): every event is resolved as published at once.
    Noop(Metrics),
}

/// The events of one request, on their way to the producer.
pub struct Job {
    records: Vec<OutboundRecord>,
    acks: Option<Arc<AckBatch>>,
    received_at: Instant,
    span: tracing::Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// No room for the job now; retry after the given number of seconds.
    Full { retry_after_secs: u64 },
    /// More events than the whole queue can ever hold.
    TooLarge { capacity: usize },
    /// Shutting down: no new events.
    Closed,
}

/// The sending side of the queue, shared by all handlers.
#[derive(Clone)]
pub struct IngestQueue {
    tx: async_channel::Sender<Job>,
    /// Kept to take what is left when a shutdown gives up on the workers.
    rx: async_channel::Receiver<Job>,
    ledger: Arc<Ledger>,
    metrics: Metrics,
    /// Recent drain rate in events/s (updated every second).
    drain_rate: Arc<AtomicU64>,
}

impl IngestQueue {
    /// Creates the queue (capacity from the metrics' queue gauge) and starts `workers` workers.
    pub fn start(workers: usize, sink: Sink, metrics: Metrics, ledger: Arc<Ledger>) -> (Self, JoinSet<()>) {
        let (tx, rx) = async_channel::unbounded::<Job>();
        let worker_rx = rx.clone();
        let drain_rate = Arc::new(AtomicU64::new(0));
        let mut set = JoinSet::new();
        for _ in 0..workers {
            let rx = worker_rx.clone();
            let sink = sink.clone();
            set.spawn(async move {
                while let Ok(job) = rx.recv().await {
                    match &sink {
                        Sink::Kafka(publisher) => send_job(publisher, job).await,
                        Sink::Noop(metrics) => discard_job(metrics, job),
                    }
                }
            });
        }
        let queue = IngestQueue { tx, rx, ledger, metrics, drain_rate };
        tokio::spawn(queue.clone().estimate_drain_rate());
        (queue, set)
    }

    /// Queues the records of one request, or says why not. Never waits.
    pub fn try_push(
        &self,
        records: Vec<OutboundRecord>,
        acks: Option<Arc<AckBatch>>,
        received_at: Instant,
        span: tracing::Span,
    ) -> Result<(), QueueError> {
        if self.tx.is_closed() {
            return Err(QueueError::Closed);
        }
        let gauge = self.metrics.queue();
        let n = records.len();
        if n > gauge.capacity {
            return Err(QueueError::TooLarge { capacity: gauge.capacity });
        }
        if !gauge.try_take(n) {
            return Err(QueueError::Full { retry_after_secs: self.retry_after_secs(n) });
        }
        if self.tx.try_send(Job { records, acks, received_at, span }).is_err() {
            gauge.give_back(n);
            return Err(QueueError::Closed);
        }
        self.metrics.accepted(n);
        // On disk before the 2xx: after a crash the next start can tell how many were accepted.
        self.ledger.accepted(n as u64);
        Ok(())
    }

    /// Seconds until the queue has likely drained enough for `n` more events, from the current depth and
    /// drain rate; 1 s at least, 60 s at most.
    pub fn retry_after_secs(&self, n: usize) -> u64 {
        let depth = self.metrics.queue().depth() + n;
        let rate = self.drain_rate.load(Ordering::Relaxed).max(1);
        (depth as u64).div_ceil(rate).clamp(1, 60)
    }

    /// Stops taking jobs; queued jobs are still delivered by the workers, which then exit.
    pub fn close(&self) {
        self.tx.close();
    }

    /// The records of jobs no worker took (a shutdown that ran out of time), as spool records.
    pub fn take_remaining(&self) -> Vec<SpoolRecord> {
        let mut out = Vec::new();
        while let Ok(job) = self.rx.try_recv() {
            if let Some(acks) = &job.acks {
                for i in 0..job.records.len() {
                    acks.resolve(
                        i,
                        DeliveryOutcome::Failed { code: "Shutdown".into(), message: "shutting down".into() },
                    );
                }
            }
            out.extend(job.records.into_iter().map(OutboundRecord::into_spool_record));
        }
        out
    }

    async fn estimate_drain_rate(self) {
        let gauge = self.metrics.queue().clone();
        let mut last = gauge.resolved_total();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            if self.tx.is_closed() && self.tx.is_empty() {
                return;
            }
            let now = gauge.resolved_total();
            let rate = now - last;
            last = now;
            // Smooth a little so one idle second does not send clients away for a minute.
            let old = self.drain_rate.load(Ordering::Relaxed);
            self.drain_rate.store((old + 3 * rate) / 4, Ordering::Relaxed);
        }
    }
}

async fn send_job(publisher: &Publisher, job: Job) {
    let Job { records, acks, received_at, span } = job;
    for (index, record) in records.into_iter().enumerate() {
        let ticket = Box::new(DeliveryTicket {
            id: record.id.clone(),
            topic: record.topic.clone(),
            received_at,
            attempt: 1,
            destination: Destination::Primary,
            ack: acks.as_ref().map(|a| (a.clone(), index)),
            span: span.clone(),
        });
        publisher.send(record, ticket).await;
    }
}

fn discard_job(metrics: &Metrics, job: Job) {
    for index in 0..job.records.len() {
        metrics.published(job.received_at.elapsed());
        if let Some(acks) = &job.acks {
            acks.resolve(index, DeliveryOutcome::Delivered { partition: -1, offset: -1 });
        }
    }
}
