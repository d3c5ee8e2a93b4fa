//! Replays the spool to Kafka in order once the broker answers, removing each segment when every one of
//! its records is acknowledged.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use tokio_util::sync::CancellationToken;

use super::delivery::{AckBatch, DeliveryOutcome, DeliveryTicket, Destination};
use super::spool::{read_segment, SpoolRecord};
use super::Publisher;
use crate::lifecycle::Readiness;
use crate::telemetry::Metrics;

/// What one replay pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplaySummary {
    pub segments: usize,
    pub replayed: usize,
    pub failed: usize,
    pub corrupt_segments: usize,
}

/// Every few seconds, while Kafka is reachable and the process is not draining, replays the spool.
pub async fn run(
    publisher: Arc<Publisher>,
    readiness: Arc<Readiness>,
    metrics: Metrics,
    ack_wait: Duration,
    stop: CancellationToken,
) {
    loop {
        let spool = publisher.spool();
        metrics.set_spool_bytes(spool.bytes());
        if spool.bytes() > 0 && readiness.kafka_ok() && !readiness.is_draining() {
            let summary = replay_once(&publisher, &metrics, ack_wait).await;
            if summary.segments > 0 {
                tracing::info!(?summary, "spool replayed");
            }
            metrics.set_spool_bytes(spool.bytes());
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Seals the current segment and replays every sealed one, oldest first. A segment is removed once all
/// its records are acknowledged; records Kafka refused go back to the spool; a corrupt tail is reported,
/// skipped, and the segment kept aside as `*.corrupt`.
pub async fn replay_once(publisher: &Publisher, metrics: &Metrics, ack_wait: Duration) -> ReplaySummary {
    let spool = publisher.spool();
    let mut summary = ReplaySummary::default();
    let sealed = match spool.rotate() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot list spool segments");
            return summary;
        }
    };
    for (_, path) in sealed {
        let contents = match tokio::task::block_in_place(|| read_segment(&path)) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(segment = %path.display(), error = %e, "cannot read spool segment");
                continue;
            }
        };
        summary.segments += 1;
        let n = contents.records.len();
        let batch = AckBatch::new(n);
        for (index, record) in contents.records.iter().enumerate() {
            let ticket = Box::new(DeliveryTicket {
                id: record.id.clone(),
                topic: Arc::from(record.topic.as_str()),
                received_at: std::time::Instant::now(),
                attempt: 1,
                destination: Destination::Replay,
                ack: Some((batch.clone(), index)),
                span: tracing::Span::none(),
            });
            publisher
                .send_raw(
                    &record.topic,
                    record.key.as_deref(),
                    &record.value,
                    Some(headers(record)),
                    record.timestamp_ms,
                    ticket,
                )
                .await;
        }
        let _ = tokio::time::timeout(ack_wait, batch.wait()).await;
        let mut failed = 0;
        for (record, outcome) in contents.records.into_iter().zip(batch.outcomes()) {
            match outcome {
                Some(DeliveryOutcome::Delivered { .. }) => summary.replayed += 1,
                _ => {
                    failed += 1;
                    if let Err(r) = spool.resubmit(record) {
                        // It holds no queue slot any more, so only the log and the counter tell.
                        tracing::error!(id = %r.id, "replay failed and the spool is full; event lost");
                        metrics.lost_after_spool(1);
                    }
                }
            }
        }
        summary.failed += failed;
        if failed > 0 {
            spool.sync();
        }
        let done = match &contents.corruption {
            Some(c) => {
                summary.corrupt_segments += 1;
                metrics.spool_corrupt_segment();
                let kept = spool.quarantine(&path);
                tracing::warn!(segment = %path.display(), offset = c.offset, reason = c.reason, ?kept,
                    "spool segment has a torn or corrupt tail: the valid records before it were replayed, the rest skipped");
                Ok(())
            }
            None => spool.remove(&path),
        };
        if let Err(e) = done {
            tracing::error!(segment = %path.display(), error = %e, "cannot remove a replayed spool segment");
        }
        if failed > 0 {
            // Kafka is refusing again: stop here and keep the rest in order for the next pass.
            break;
        }
    }
    summary
}

fn headers(record: &SpoolRecord) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(record.headers.len());
    for (key, value) in &record.headers {
        h = h.insert(Header { key, value: value.as_deref() });
    }
    h
}
