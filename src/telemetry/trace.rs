//! OTLP trace export configured by the standard `OTEL_*` variables, and the W3C trace context carried from
//! HTTP requests into Kafka record headers.

use axum::http::HeaderName;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Keeps the tracer provider; `shutdown` flushes what is still buffered.
pub struct TraceGuard {
    provider: Option<SdkTracerProvider>,
    endpoint: String,
    protocol: &'static str,
}

impl TraceGuard {
    pub fn enabled(&self) -> bool {
        self.provider.is_some()
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn protocol(&self) -> &'static str {
        self.protocol
    }

    /// Flushes and stops the exporter (end of shutdown). Blocking.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                eprintln!("event-ingestor: flushing traces failed: {e}");
            }
        }
    }
}

/// The OTLP traces endpoint from the standard variables, unless `OTEL_TRACES_EXPORTER=none`.
pub fn otlp_endpoint() -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none") {
        return None;
    }
    var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

pub fn install_propagator() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
}

/// The tracer when an endpoint is configured and `OTEL_TRACES_EXPORTER` is not `none`.
pub(super) fn tracer(runtime: &tokio::runtime::Handle) -> (TraceGuard, Option<opentelemetry_sdk::trace::Tracer>) {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let off = TraceGuard { provider: None, endpoint: String::new(), protocol: "" };
    let Some(endpoint) = otlp_endpoint() else { return (off, None) };
    let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".into());
    let mut resource = Resource::builder();
    if var("OTEL_SERVICE_NAME").is_none()
        && !var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="))
    {
        resource = resource.with_service_name(env!("CARGO_PKG_NAME"));
    }
    let builder = SdkTracerProvider::builder().with_resource(resource.build());
    let (provider, protocol) = match protocol.as_str() {
        "grpc" => {
            // The gRPC exporter and its batch processor run on the service's runtime: export never
            // blocks a request.
            let _entered = runtime.enter();
            match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
                Ok(exporter) => {
                    let processor =
                        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                            exporter,
                            opentelemetry_sdk::runtime::Tokio,
                        )
                        .build();
                    (builder.with_span_processor(processor).build(), "grpc")
                }
                Err(e) => return failed(e),
            }
        }
        p @ ("http/protobuf" | "http/json") => {
            let wire = if p == "http/json" { Protocol::HttpJson } else { Protocol::HttpBinary };
            // The HTTP exporter's batch processor has its own thread.
            match opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(wire).build() {
                Ok(exporter) => (
                    builder.with_batch_exporter(exporter).build(),
                    if p == "http/json" { "http/json" } else { "http/protobuf" },
                ),
                Err(e) => return failed(e),
            }
        }
        other => {
            eprintln!("event-ingestor: OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not grpc, http/protobuf or http/json; traces are off");
            return (off, None);
        }
    };
    let tracer = provider.tracer(env!("CARGO_PKG_NAME"));
    (TraceGuard { provider: Some(provider), endpoint, protocol }, Some(tracer))
}

fn failed(e: impl std::fmt::Display) -> (TraceGuard, Option<opentelemetry_sdk::trace::Tracer>) {
    eprintln!("event-ingestor: cannot set up OTLP trace export ({e}); traces are off");
    (TraceGuard { provider: None, endpoint: String::new(), protocol: "" }, None)
}

struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes the request's `traceparent`/`tracestate` the parent of `span`, and records the trace and span
/// ids on the span so every log line inside it carries them.
pub fn adopt_remote_parent(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let cx = span.context();
    let span_context = cx.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", tracing::field::display(span_context.trace_id()));
        span.record("span_id", tracing::field::display(span_context.span_id()));
    }
}

/// W3C trace context for Kafka record headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl Injector for TraceHeaders {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = Some(value),
            "tracestate" if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

/// Parsed once: a lookup by `&str` parses and hashes the name on every request.
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

impl TraceHeaders {
    /// The context of `span` when tracing is on; else the caller's own `traceparent`/`tracestate`,
    /// forwarded unchanged (when well-formed) so that consumers can still continue the trace.
    pub fn for_records(span: &tracing::Span, request: &axum::http::HeaderMap) -> Self {
        let mut out = TraceHeaders::default();
        if !span.is_disabled() {
            let cx = span.context();
            if cx.span().span_context().is_valid() {
                opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut out));
                return out;
            }
        }
        let header = |name: &HeaderName| request.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        out.traceparent = header(&TRACEPARENT).filter(|t| valid_traceparent(t));
        if out.traceparent.is_some() {
            out.tracestate = header(&TRACESTATE).filter(|t| t.len() <= 512);
        }
        out
    }
}

/// `version-traceid-parentid-flags`, lower-case hex (W3C Trace Context).
pub fn valid_traceparent(t: &str) -> bool {
    let parts: Vec<&str> = t.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1] != "0".repeat(32)
        && parts[2] != "0".repeat(16)
}

/// The head-sampling decision for a request, taken *before* any span exists so that unsampled requests
/// cost nothing in the tracing pipeline. Follows `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` with the
/// SDK's default (`parentbased_always_on`); the SDK's own sampler then agrees for the spans we do create.
#[derive(Debug, Clone, Copy)]
pub struct HeadSampler {
    enabled: bool,
    parent_based: bool,
    ratio: f64,
}

impl HeadSampler {
    /// Off (nothing sampled, no spans) when no OTLP endpoint is configured.
    pub fn from_env() -> Self {
        let exporting = otlp_endpoint().is_some();
        let sampler = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_else(|_| "parentbased_always_on".into());
        let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG")
            .ok()
            .and_then(|a| a.parse::<f64>().ok())
            .unwrap_or(1.0)
            .clamp(0.0, 1.0);
        let (parent_based, ratio) = match sampler.as_str() {
            "always_on" => (false, 1.0),
            "always_off" => (false, 0.0),
            "traceidratio" => (false, arg),
            "parentbased_always_off" => (true, 0.0),
            "parentbased_traceidratio" => (true, arg),
            _ => (true, 1.0),
        };
        HeadSampler { enabled: exporting, parent_based, ratio }
    }

    /// Whether this request is traced: the caller's sampled flag when parent-based and present, else the
    /// ratio.
    pub fn sample(&self, headers: &axum::http::HeaderMap) -> bool {
        if !self.enabled {
            return false;
        }
        if self.parent_based {
            if let Some(tp) = headers.get(&TRACEPARENT).and_then(|v| v.to_str().ok()).filter(|t| valid_traceparent(t)) {
                return u8::from_str_radix(&tp[53..55], 16).is_ok_and(|flags| flags & 1 == 1);
            }
        }
        self.ratio >= 1.0 || (self.ratio > 0.0 && rand_unit() < self.ratio)
    }
}

/// A cheap uniform number in [0, 1) (not for cryptography).
fn rand_unit() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}
