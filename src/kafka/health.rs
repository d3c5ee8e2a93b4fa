//! Broker health: a periodic metadata fetch, the readiness signal that Kafka is reachable.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::Producer;
use tokio_util::sync::CancellationToken;

use super::Publisher;
use crate::lifecycle::Readiness;

/// Fetches metadata for `topic` every `refresh` (every 250 ms until the first success) and reports the
/// result to `readiness`. Runs until `stop` is cancelled.
pub async fn monitor(
    publisher: Arc<Publisher>,
    topic: String,
    refresh: Duration,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) {
    let timeout = refresh.clamp(Duration::from_millis(500), Duration::from_secs(5));
    let mut was_ok = None;
    loop {
        let p = publisher.clone();
        let t = topic.clone();
        let result = tokio::task::spawn_blocking(move || {
            let metadata = p.producer().client().fetch_metadata(Some(&t), timeout)?;
            let topic_error = metadata.topics().first().and_then(|m| m.error());
            Ok::<_, rdkafka::error::KafkaError>((metadata.brokers().len(), topic_error))
        })
        .await;
        let ok = match result {
            Ok(Ok((brokers, topic_error))) => {
                if let Some(err) = topic_error {
                    tracing::warn!(topic = %topic, error = ?err, "broker reports a problem with the topic");
                }
                readiness.kafka_reachable();
                if was_ok != Some(true) {
                    tracing::info!(brokers, topic = %topic, "kafka metadata fetched; brokers reachable");
                }
                true
            }
            Ok(Err(e)) => {
                readiness.kafka_unreachable();
                if was_ok != Some(false) {
                    tracing::warn!(error = %e, "kafka metadata fetch failed; brokers unreachable");
                }
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "metadata task failed");
                false
            }
        };
        was_ok = Some(ok);
        let wait = if readiness.kafka_ever_reachable() { refresh } else { Duration::from_millis(250) };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
