//! Telemetry: the Prometheus registry, JSON logs, and OTLP trace export with W3C trace context.

pub mod metrics;
pub mod trace;

pub use metrics::{event_bytes, HttpLabels, Metrics, QueueGauge};
pub use trace::TraceGuard;

use tracing_subscriber::{fmt, prelude::*, EnvFilter, Layer};

fn log_filter(log_level: &str) -> EnvFilter {
    match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::new(spec),
        _ => EnvFilter::new(log_level),
    }
}

fn json_layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        .with_writer(std::io::stdout)
}

/// Installs JSON logs and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific one) is set, OTLP
/// trace export. `RUST_LOG`, when set, wins over `LOG_LEVEL` so that an operator can turn up one module
/// (`RUST_LOG=event_ingestor::kafka=debug,info`). The exported spans are INFO spans of
/// `event_ingestor::http`; with `LOG_LEVEL` WARN or ERROR they stay enabled for export.
///
/// Call with the runtime the service runs on: the gRPC exporter lives on it.
pub fn init(log_level: &str, runtime: &tokio::runtime::Handle) -> TraceGuard {
    trace::install_propagator();
    let (guard, tracer) = trace::tracer(runtime);
    let mut filter = log_filter(log_level);
    if tracer.is_some() && std::env::var("RUST_LOG").is_err() && matches!(log_level, "warn" | "error") {
        // The server and producer spans are INFO spans of `event_ingestor::http`: keep them for export
        // when logs are quieter. (One global filter: per-layer filters were seen to drop events.)
        filter = filter.add_directive("event_ingestor::http=info".parse().expect("a valid directive"));
    }
    let otel = tracer.map(|t| tracing_opentelemetry::layer().with_tracer(t));
    let _ = tracing_subscriber::registry().with(filter).with(json_layer()).with(otel).try_init();
    if guard.enabled() {
        tracing::info!(endpoint = %guard.endpoint(), protocol = guard.protocol(), "exporting traces over OTLP");
    }
    guard
}

/// JSON logs only (tests, tools). A second call keeps the first subscriber.
pub fn init_logging(log_level: &str) {
    trace::install_propagator();
    let _ = tracing_subscriber::registry().with(log_filter(log_level)).with(json_layer()).try_init();
}
