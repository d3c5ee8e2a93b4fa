//! The single place that turns settings into a librdkafka `ClientConfig`.

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};

use crate::config::KafkaSettings;

/// What the client is for: only the producer gets the delivery guarantees and batching settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRole {
    Producer,
    /// Consumers and admin clients (tests, the load generator, tooling).
    Other,
}

/// Builds the librdkafka configuration for `bootstrap` (the resolved broker list: for the embedded
/// cluster this is the mock cluster's address, not the literal `embedded`).
///
/// The operator's passthrough properties are applied last, so TLS/SASL and tuning can override anything
/// here — except the delivery guarantees, which this service's promise depends on.
pub fn client_config(settings: &KafkaSettings, bootstrap: &str, role: ClientRole, queue_size: usize) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap).set("client.id", "event-ingestor");
    if role == ClientRole::Producer {
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &settings.compression)
            .set("linger.ms", settings.linger.as_millis().to_string())
            .set("message.timeout.ms", settings.write_timeout.as_millis().to_string())
            .set("retry.backoff.ms", settings.retry_backoff.as_millis().to_string())
            // librdkafka's own buffer sits behind the ingest queue: large enough that it is never the
            // reason a worker waits while the broker keeps up.
            .set("queue.buffering.max.messages", (queue_size.saturating_mul(2)).max(100_000).to_string())
            .set("queue.buffering.max.kbytes", "262144")
            .set("statistics.interval.ms", "5000");
    }
    for (name, value) in &settings.properties {
        cfg.set(name, value);
    }
    if role == ClientRole::Producer {
        // An operator may tune batching, TLS and SASL, but not turn off what "never lose an acknowledged
        // event" rests on.
        cfg.set("enable.idempotence", "true").set("acks", "all");
    }
    cfg.set_log_level(RDKafkaLogLevel::Warning);
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn producer_guarantees_survive_passthrough() {
        let s = Settings::with_overrides(&[
            ("KAFKA_PROPERTY_ACKS", "1"),
            ("KAFKA_PROPERTY_LINGER_MS", "20"),
            ("KAFKA_PROPERTY_SECURITY_PROTOCOL", "SSL"),
        ])
        .unwrap();
        let cfg = client_config(&s.kafka, "b:9092", ClientRole::Producer, 1000);
        assert_eq!(cfg.get("acks"), Some("all"));
        assert_eq!(cfg.get("enable.idempotence"), Some("true"));
        assert_eq!(cfg.get("linger.ms"), Some("20"));
        assert_eq!(cfg.get("security.protocol"), Some("SSL"));
        assert_eq!(cfg.get("compression.type"), Some("lz4"));
        let consumer = client_config(&s.kafka, "b:9092", ClientRole::Other, 1000);
        assert_eq!(consumer.get("enable.idempotence"), None);
        assert_eq!(consumer.get("security.protocol"), Some("SSL"));
    }
}
