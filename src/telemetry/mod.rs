//! Telemetry: the Prometheus registry and the JSON log subscriber.

pub mod metrics;

pub use metrics::{HttpLabels, Metrics, QueueGauge};

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Installs the JSON log subscriber. `RUST_LOG`, when set, wins over `LOG_LEVEL` so that an operator can
/// turn up one module (`RUST_LOG=event_ingestor::kafka=debug,info`).
///
/// librdkafka's own logs arrive through the `rdkafka::client` target at their librdkafka level.
pub fn init_logging(log_level: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::new(spec),
        _ => EnvFilter::new(log_level),
    };
    let json = fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        .with_writer(std::io::stdout);
    // A second call (tests spawning several apps) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(filter).with(json).try_init();
}
