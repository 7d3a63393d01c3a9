//! Logs and traces.
//!
//! Logs: human-readable lines by default, JSON when configured, on stderr so
//! that what a command prints for people stays on stdout; the filter comes
//! from `RUST_LOG` (default `info`). Secrets never reach them: URLs are
//! logged redacted, tokens not at all.
//!
//! Traces: every span also becomes an OpenTelemetry span, and the W3C trace
//! context travels in gRPC metadata and AMQP headers ([`traceparent`],
//! [`parent_from`]), so one booking is one trace across services and the
//! broker. Spans are exported over OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `SSAK3_OTLP_ENDPOINT`) is set; otherwise they are created, propagated
//! and logged by trace id, and dropped.

use std::collections::HashMap;

use opentelemetry::{
    Context,
    propagation::TextMapPropagator as _,
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, prelude::*};

use crate::config::LogFormat;

/// Flushes exported spans when dropped or shut down; keep it alive in `main`.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    fn flush(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The OTLP endpoint, if tracing export is configured.
fn otlp_endpoint() -> Option<String> {
    ["SSAK3_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// Installs logging and tracing for the process. Calling it again is harmless.
pub fn init(format: LogFormat) -> Telemetry {
    let mut builder = SdkTracerProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder()
            .with_service_name("ssak3")
            .build(),
    );
    let exporting = match otlp_endpoint() {
        Some(endpoint) => match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
        {
            Ok(exporter) => {
                builder = builder.with_batch_exporter(exporter);
                Some(endpoint)
            }
            Err(error) => {
                eprintln!("ssak3: traces will not be exported to {endpoint}: {error}");
                None
            }
        },
        None => None,
    };
    let provider = builder.build();
    install(Some(format), provider.clone());
    if let Some(endpoint) = exporting {
        tracing::info!(%endpoint, "exporting traces over OTLP");
    }
    Telemetry {
        provider: Some(provider),
    }
}

/// Sets the global subscriber: the filter, log lines in `format` (none
/// without one), and the OpenTelemetry layer over `provider`. False when a
/// subscriber was set already.
pub fn install(format: Option<LogFormat>, provider: SdkTracerProvider) -> bool {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,tower=warn,hyper=warn,lapin=warn"));
    let logs: Option<Box<dyn Layer<Registry> + Send + Sync>> = match format {
        Some(LogFormat::Text) => Some(fmt::layer().with_writer(std::io::stderr).boxed()),
        Some(LogFormat::Json) => Some(
            fmt::layer()
                .json()
                .with_current_span(true)
                .with_writer(std::io::stderr)
                .boxed(),
        ),
        None => None,
    };
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("ssak3"))
        .boxed();
    let mut layers = vec![traces];
    layers.extend(logs);
    tracing_subscriber::registry()
        .with(layers.with_filter(filter))
        .try_init()
        .is_ok()
}

/// The W3C `traceparent` of the current span, if it belongs to a trace.
pub fn traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The W3C `traceparent` of `span`, if it belongs to a trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// The trace context a `traceparent` value names (empty when it names none).
fn parent_from(traceparent: Option<&str>) -> Context {
    let mut carrier = HashMap::new();
    if let Some(value) = traceparent {
        carrier.insert("traceparent".to_owned(), value.to_owned());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes `span` a child of the trace `traceparent` names (if any) and
/// records the trace id on it, so that log lines within carry it.
pub fn join(span: &tracing::Span, traceparent: Option<&str>) {
    let parent = parent_from(traceparent);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace_id));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parent_from(Some(value));
        let span = context.span();
        assert_eq!(
            span.span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(
            !parent_from(Some("garbage"))
                .span()
                .span_context()
                .is_valid()
        );
        assert!(!parent_from(None).span().span_context().is_valid());
    }
}
