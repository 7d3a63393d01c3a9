//! Logs and traces.
//!
//! Logs: human-readable lines by default, JSON when configured, on stderr so
//! that what a command prints for people stays on stdout; the filter comes
//! from `RUST_LOG` (default `info`). Secrets never reach them: URLs are
//! logged redacted, tokens not at all.
//!
//! Traces: every span also becomes an OpenTelemetry span. Each service
//! reports as itself: it has a tracer provider of its own, whose resource
//! names it (`ssak3-reservation`, …), also when `ssak3 up` runs all four in
//! one process. A span belongs to the service whose root span it descends
//! from: server, consumer and producer spans name their service when they
//! [`join`] a trace, and their children inherit it through the
//! OpenTelemetry context ([`ServiceTracers`]).
//!
//! The trace context travels as W3C `traceparent`, `tracestate` and
//! `baggage` in gRPC metadata and AMQP headers, through the OpenTelemetry
//! propagator ([`propagator`]), so one booking is one trace across services
//! and the broker. Spans are exported over OTLP/gRPC only when an endpoint
//! is configured (`SSAK3_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`);
//! otherwise they are created, propagated and logged by trace id, and dropped.

use std::{collections::HashMap, sync::Arc};

use opentelemetry::{
    Context, KeyValue,
    propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator as _},
    trace::{SpanBuilder, TraceContextExt as _, Tracer, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{
    Resource,
    propagation::{BaggagePropagator, TraceContextPropagator},
    resource::{EnvResourceDetector, ResourceDetector as _},
    trace::SdkTracerProvider,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, prelude::*};

use crate::config::{Config, LogFormat};

/// The service a span belongs to, kept in the OpenTelemetry context of the
/// spans that name it and inherited by their children.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ServiceName(&'static str);

/// A tracer that hands each span to the tracer of its service's provider
/// (the one in the span's parent context), or to the process's own.
#[derive(Clone, Debug)]
pub struct ServiceTracers {
    own: opentelemetry_sdk::trace::Tracer,
    by_service: Arc<HashMap<&'static str, opentelemetry_sdk::trace::Tracer>>,
}

impl ServiceTracers {
    /// Every span to `provider`, whatever its service (tests, benchmarks).
    pub fn single(provider: &SdkTracerProvider) -> Self {
        Self {
            own: provider.tracer(TRACER),
            by_service: Arc::default(),
        }
    }

    fn tracer_for(&self, parent: &Context) -> &opentelemetry_sdk::trace::Tracer {
        parent
            .get::<ServiceName>()
            .and_then(|service| self.by_service.get(service.0))
            .unwrap_or(&self.own)
    }
}

impl Tracer for ServiceTracers {
    type Span = opentelemetry_sdk::trace::Span;

    fn build_with_context(&self, builder: SpanBuilder, parent_cx: &Context) -> Self::Span {
        self.tracer_for(parent_cx)
            .build_with_context(builder, parent_cx)
    }
}

/// The instrumentation scope of Ssak3's spans.
const TRACER: &str = "ssak3";

/// Flushes exported spans when dropped or shut down; keep it alive in `main`.
#[derive(Debug, Default)]
pub struct Telemetry {
    providers: Vec<SdkTracerProvider>,
}

impl Telemetry {
    fn flush(&mut self) {
        for provider in self.providers.drain(..) {
            let _ = provider.shutdown();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The OTLP endpoint, if tracing export is configured: `SSAK3_OTLP_ENDPOINT`
/// (read into `config`), else `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn otlp_endpoint(config: &Config) -> Option<String> {
    config
        .otlp_endpoint
        .clone()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|v| !v.is_empty())
}

/// The name a service reports as when nothing else names it: `ssak3-<service>`.
pub fn default_service_name(service: &str) -> String {
    format!("ssak3-{service}")
}

/// The resource of `service` (a short name such as `reservation`, or `None`
/// for the `ssak3` command itself): `service.name`, `service.version`,
/// `service.instance.id` and, when configured, `deployment.environment.name`
/// (and the older `deployment.environment`), then what
/// `OTEL_RESOURCE_ATTRIBUTES` says. When the process runs one service only
/// (`alone`), `OTEL_SERVICE_NAME`, else a `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`, names it; a process of several services
/// names each after itself, or they would be one in every trace viewer.
pub fn resource(service: Option<&str>, alone: bool, environment: Option<&str>) -> Resource {
    let fallback = service.map_or_else(|| TRACER.to_owned(), default_service_name);
    let from_env = EnvResourceDetector::new().detect();
    let name = if alone {
        std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| {
                from_env
                    .get(&opentelemetry::Key::from_static_str("service.name"))
                    .map(|v| v.to_string())
            })
            .unwrap_or(fallback)
    } else {
        fallback
    };
    let mut defaults = vec![
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()),
    ];
    if let Some(environment) = environment.filter(|e| !e.is_empty()) {
        defaults.push(KeyValue::new(
            "deployment.environment.name",
            environment.to_owned(),
        ));
        defaults.push(KeyValue::new(
            "deployment.environment",
            environment.to_owned(),
        ));
    }
    Resource::builder_empty()
        .with_attributes(defaults)
        .with_detector(Box::new(
            opentelemetry_sdk::resource::TelemetryResourceDetector,
        ))
        .with_detector(Box::new(EnvResourceDetector::new()))
        .with_service_name(name)
        .build()
}

/// Installs logging and tracing for a process that runs `services` (short
/// names; none for a command that runs no service): a tracer provider per
/// service, each with its own resource. Calling it again is harmless.
pub fn init(config: &Config, services: &[&'static str]) -> Telemetry {
    let endpoint = otlp_endpoint(config);
    let environment = config.deployment_environment.as_deref();
    let provider = |service: Option<&str>| {
        let mut builder = SdkTracerProvider::builder().with_resource(resource(
            service,
            services.len() <= 1,
            environment,
        ));
        if let Some(endpoint) = &endpoint {
            match opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
            {
                Ok(exporter) => builder = builder.with_batch_exporter(exporter),
                Err(error) => {
                    eprintln!("ssak3: traces will not be exported to {endpoint}: {error}");
                }
            }
        }
        builder.build()
    };
    // A single service is also the process's own: spans outside any of
    // its requests (start-up, background work) are its spans too.
    let own = provider(services.first().copied().filter(|_| services.len() == 1));
    let mut providers = vec![own.clone()];
    let mut by_service = HashMap::new();
    if services.len() > 1 {
        for service in services {
            let provider = provider(Some(service));
            by_service.insert(*service, provider.tracer(TRACER));
            providers.push(provider);
        }
    }
    let tracers = ServiceTracers {
        own: own.tracer(TRACER),
        by_service: Arc::new(by_service),
    };
    install(Some(config.log_format), tracers);
    if let Some(endpoint) = endpoint {
        tracing::info!(%endpoint, "exporting traces over OTLP");
    }
    Telemetry { providers }
}

/// Sets the global subscriber: the filter, log lines in `format` (none
/// without one), and the OpenTelemetry layer over `tracers`; and the global
/// propagator. False when a subscriber was set already.
pub fn install(format: Option<LogFormat>, tracers: ServiceTracers) -> bool {
    opentelemetry::global::set_text_map_propagator(propagator());
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
    let traces = tracing_opentelemetry::layer().with_tracer(tracers).boxed();
    let mut layers = vec![traces];
    layers.extend(logs);
    tracing_subscriber::registry()
        .with(layers.with_filter(filter))
        .try_init()
        .is_ok()
}

/// W3C trace context (`traceparent`, `tracestate`) and W3C baggage.
pub fn propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// The propagated fields of a trace context, by header name (`traceparent`,
/// `tracestate`, `baggage`): what travels in metadata, headers and the outbox.
pub type Carrier = HashMap<String, String>;

/// The trace context of the current span, as headers (empty outside a trace).
pub fn current_carrier() -> Carrier {
    carrier_of(&tracing::Span::current())
}

/// The trace context of `span`, as headers (empty if it belongs to no trace).
pub fn carrier_of(span: &tracing::Span) -> Carrier {
    let context = span.context();
    let mut carrier = Carrier::new();
    if context.span().span_context().is_valid() {
        propagator().inject_context(&context, &mut carrier);
    }
    carrier
}

/// The W3C `traceparent` of the current span, if it belongs to a trace.
pub fn traceparent() -> Option<String> {
    current_carrier().remove("traceparent")
}

/// A carrier as one line of text, for a column or an envelope field: the
/// bare `traceparent` when that is all there is (as rows written before
/// `tracestate` and `baggage` were kept hold), else `name=value` fields
/// separated by line feeds (header values have none). `None` when empty.
pub fn encode_carrier(carrier: &Carrier) -> Option<String> {
    match carrier.len() {
        0 => None,
        1 if carrier.contains_key("traceparent") => carrier.get("traceparent").cloned(),
        _ => {
            let mut fields: Vec<String> = carrier.iter().map(|(k, v)| format!("{k}={v}")).collect();
            fields.sort();
            Some(fields.join("\n"))
        }
    }
}

/// The carrier [`encode_carrier`] made (or a bare `traceparent`).
pub fn decode_carrier(text: &str) -> Carrier {
    if !text.contains('\n') && !text.starts_with("traceparent=") {
        return Carrier::from([("traceparent".to_owned(), text.to_owned())]);
    }
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Reads propagated fields from HTTP/2 headers (gRPC metadata).
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes the current span's trace context into a gRPC request's metadata.
pub fn inject_metadata(metadata: &mut tonic::metadata::MetadataMap) {
    struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);
    impl Injector for MetadataInjector<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                value.parse(),
            ) {
                self.0.insert(key, value);
            }
        }
    }
    let context = tracing::Span::current().context();
    if context.span().span_context().is_valid() {
        propagator().inject_context(&context, &mut MetadataInjector(metadata));
    }
}

/// Makes `span` a span of `service` and a child of the trace context in
/// `carrier` (if any, with its baggage), and records the trace id on it, so
/// that log lines within carry it.
pub fn join(span: &tracing::Span, service: &'static str, carrier: &dyn Extractor) {
    let parent = propagator()
        .extract_with_context(&Context::new(), carrier)
        .with_value(ServiceName(service));
    let _ = span.set_parent(parent);
    let trace_id = span.context().span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace_id));
}

/// The gRPC status-code attribute and error status of an RPC span that
/// ended with `code`. A server span is an error only for codes that say the
/// server failed (as the semantic conventions list them); a client span
/// for every code but OK.
pub fn record_rpc_status(span: &tracing::Span, code: tonic::Code, server: bool) {
    use tonic::Code::*;
    span.record("rpc.grpc.status_code", code as i64);
    span.record("rpc.response.status_code", crate::metrics::code_name(code));
    let failed = if server {
        matches!(
            code,
            Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
        )
    } else {
        code != Ok
    };
    if failed {
        span.record("otel.status_code", "error");
        span.record("error.type", crate::metrics::code_name(code));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carriers_round_trip_and_a_bare_traceparent_is_one() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            decode_carrier(value).get("traceparent").map(String::as_str),
            Some(value)
        );
        let carrier = Carrier::from([
            ("traceparent".to_owned(), value.to_owned()),
            ("tracestate".to_owned(), "vendor=a=b,other=c".to_owned()),
            ("baggage".to_owned(), "tenant=acme,k=v%3D1".to_owned()),
        ]);
        let encoded = encode_carrier(&carrier).expect("encoded");
        assert_eq!(decode_carrier(&encoded), carrier);
        let only = Carrier::from([("traceparent".to_owned(), value.to_owned())]);
        assert_eq!(encode_carrier(&only).as_deref(), Some(value));
        assert_eq!(encode_carrier(&Carrier::new()), None);
    }

    #[test]
    fn the_propagator_keeps_tracestate_and_baggage() {
        let carrier = Carrier::from([
            (
                "traceparent".to_owned(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            ),
            ("tracestate".to_owned(), "vendor=opaque".to_owned()),
            ("baggage".to_owned(), "tenant=acme".to_owned()),
        ]);
        let context = propagator().extract(&carrier);
        let mut out = Carrier::new();
        propagator().inject_context(&context, &mut out);
        assert_eq!(out, carrier);
    }

    #[test]
    fn one_service_alone_may_be_renamed_but_not_one_of_several() {
        let alone = resource(Some("payment"), true, Some("staging"));
        let get = |r: &Resource, k: &'static str| {
            r.get(&opentelemetry::Key::from_static_str(k))
                .map(|v| v.to_string())
        };
        // OTEL_SERVICE_NAME is not set in unit tests.
        if std::env::var_os("OTEL_SERVICE_NAME").is_none()
            && std::env::var_os("OTEL_RESOURCE_ATTRIBUTES").is_none()
        {
            assert_eq!(
                get(&alone, "service.name").as_deref(),
                Some("ssak3-payment")
            );
        }
        assert_eq!(
            get(&alone, "deployment.environment.name").as_deref(),
            Some("staging")
        );
        assert_eq!(
            get(&alone, "service.version").as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert!(get(&alone, "service.instance.id").is_some());
        let several = resource(Some("notify"), false, None);
        assert_eq!(
            get(&several, "service.name").as_deref(),
            Some("ssak3-notify")
        );
        assert_eq!(get(&several, "deployment.environment.name"), None);
    }
}
