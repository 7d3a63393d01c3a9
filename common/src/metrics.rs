//! Prometheus metrics, served on each service's admin port (`/metrics`, and
//! `/healthz` for anything that wants plain HTTP): in OpenMetrics to a
//! scraper that asks for it (`Accept: application/openmetrics-text`), else
//! in the classic Prometheus text format (0.0.4), each under its own
//! content type ([`Exposition`]).
//!
//! Each service has its own [`Metrics`]: the per-RPC counts by code and
//! latencies that every server has (a tower layer on the server), and what
//! its components register for themselves ([`Metrics::register`]): the
//! outbox relay its backlog and publishing, an event consumer its
//! deliveries, a breaker its state. Gauges that mirror state elsewhere are
//! refreshed when scraped.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Metric, Registry},
};

/// Label pairs of a metric family.
pub type Labels = Vec<(String, String)>;

/// Label pairs from string slices, the values escaped for the text format
/// (the encoder writes them as they are).
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), escape(v)))
        .collect()
}

/// A label value as the exposition format requires it: `\`, `"` and line
/// feeds escaped.
pub fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A latency histogram: 1 ms … 20 s, with round bounds (`le="0.5"`,
/// `le="1"`) that SLOs and alerts name.
pub fn latency() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    ])
}

/// How long a stream stays open: 1 s … ~18 h.
fn stream_lifetime() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 9))
}

/// A family of latency histograms.
pub fn latency_family() -> Family<Labels, Histogram> {
    Family::<Labels, Histogram>::new_with_constructor(latency as fn() -> Histogram)
}

/// Refreshes gauges that mirror state kept elsewhere, before a scrape.
pub type Refresh = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// One service's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    refreshers: Mutex<Vec<Arc<Refresh>>>,
    rpc_started: Family<Labels, Counter>,
    rpc_handled: Family<Labels, Counter>,
    rpc_duration: Family<Labels, Histogram>,
    stream_duration: Family<Labels, Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics(..)")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let metrics = Self {
            registry: Mutex::new(Registry::default()),
            refreshers: Mutex::new(Vec::new()),
            rpc_started: Family::default(),
            rpc_handled: Family::default(),
            rpc_duration: latency_family(),
            stream_duration: Family::<Labels, Histogram>::new_with_constructor(
                stream_lifetime as fn() -> Histogram,
            ),
        };
        // The names and labels dashboards for gRPC servers expect
        // (go-grpc-middleware's), without the service prefix.
        let mut registry = metrics
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        registry.register(
            "grpc_server_started",
            "gRPC calls started, by service, method and type",
            metrics.rpc_started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "gRPC calls completed, by service, method, type and status code",
            metrics.rpc_handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from a unary call's start to its status, by service and method \
             (streams are in grpc_server_stream_duration_seconds)",
            metrics.rpc_duration.clone(),
        );
        registry.register(
            "grpc_server_stream_duration_seconds",
            "How long streaming calls stayed open, by service, method and type",
            metrics.stream_duration.clone(),
        );
        drop(registry);
        metrics
    }

    /// Adds a metric of a component to this service's exposition (named
    /// `ssak3_<name>`); returns it so the component keeps its handle.
    pub fn register<M: Metric + Clone>(&self, name: &str, help: &str, metric: M) -> M {
        self.registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sub_registry_with_prefix("ssak3")
            .register(name, help, metric.clone());
        metric
    }

    /// Runs `refresh` before every scrape.
    pub fn on_scrape(&self, refresh: Refresh) {
        self.refreshers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(refresh));
    }

    /// The metrics in the classic Prometheus text format, refreshed.
    pub async fn render(&self) -> String {
        self.render_as(Exposition::Text).await
    }

    /// The metrics in `format`, refreshed.
    pub async fn render_as(&self, format: Exposition) -> String {
        let refreshers: Vec<Arc<Refresh>> = self
            .refreshers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for refresh in refreshers {
            refresh().await;
        }
        let mut text = String::new();
        let _ = encode(
            &mut text,
            &self.registry.lock().unwrap_or_else(PoisonError::into_inner),
        );
        match format {
            Exposition::OpenMetrics => text,
            Exposition::Text => classic_text(&text),
        }
    }

    /// Records a call's start.
    fn rpc_started(&self, rpc: &RpcInfo) {
        self.rpc_started.get_or_create(&rpc.labels()).inc();
    }

    /// Records a call's end with its status code.
    fn rpc_handled(&self, rpc: &RpcInfo, code: tonic::Code, seconds: f64) {
        let mut by_code = rpc.labels();
        by_code.push(("grpc_code".to_owned(), code_name(code).to_owned()));
        self.rpc_handled.get_or_create(&by_code).inc();
        // A live stream stays open for hours: its lifetime says nothing of
        // latency, and would bury the unary calls' in one histogram.
        let durations = if rpc.kind == "unary" {
            &self.rpc_duration
        } else {
            &self.stream_duration
        };
        durations.get_or_create(&rpc.labels()).observe(seconds);
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `stop` turns true.
pub async fn serve_admin(
    acceptor: crate::connections::Acceptor,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = acceptor.accept() => accepted,
            _ = stop.changed() => return,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let (status, content_type, body) = match request.uri().path() {
                            "/metrics" => {
                                let format = Exposition::negotiate(
                                    request
                                        .headers()
                                        .get(hyper::header::ACCEPT)
                                        .and_then(|v| v.to_str().ok()),
                                );
                                (200, format.content_type(), metrics.render_as(format).await)
                            }
                            "/healthz" => (200, "text/plain", "ok\n".to_owned()),
                            _ => (404, "text/plain", "see /metrics or /healthz\n".to_owned()),
                        };
                        let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() = hyper::StatusCode::from_u16(status)
                            .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
                        if let Ok(value) = content_type.parse() {
                            response
                                .headers_mut()
                                .insert(hyper::header::CONTENT_TYPE, value);
                        }
                        Ok::<_, Infallible>(response)
                    }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .max_buf_size(64 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The two exposition formats a scraper may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0 text: counters declared as `x`, sampled as `x_total`; `# EOF`.
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4: counters declared under
    /// their sample's name, no `# EOF`.
    Text,
}

impl Exposition {
    /// The format an `Accept` header prefers: OpenMetrics when it ranks it
    /// above the classic text format (by `q`, then by order), else text.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let mut best: Option<(f32, Self)> = None;
        for range in accept.unwrap_or_default().split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let format = match media.as_str() {
                "application/openmetrics-text" => Self::OpenMetrics,
                "text/plain" | "text/*" | "*/*" => Self::Text,
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, format));
            }
        }
        best.map_or(Self::Text, |(_, format)| format)
    }

    /// The content type of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// OpenMetrics text as the classic text format: a counter family is
/// declared under the name of its samples (`x_total`), and the lines the
/// classic format does not know (`# UNIT`, `# EOF`) go.
fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let declared = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match declared {
            Some(line) => text.push_str(line.trim_end()),
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

/// The admin port of a service listening on `grpc`: the same address, port + 1000.
pub fn admin_addr_for(grpc: SocketAddr) -> SocketAddr {
    let port = match grpc.port() {
        0 => 0,
        port => port.saturating_add(1000),
    };
    SocketAddr::new(grpc.ip(), port)
}

/// The canonical name of a gRPC status code (`OK`, `INVALID_ARGUMENT`, …).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What the metrics say of one RPC: its service, method and kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcInfo {
    service: String,
    method: String,
    kind: &'static str,
}

impl RpcInfo {
    /// Every path outside the catalog: one set of series, whatever the path.
    fn unknown() -> Self {
        Self {
            service: "unknown".into(),
            method: "unknown".into(),
            kind: "unknown",
        }
    }

    fn labels(&self) -> Labels {
        labels(&[
            ("grpc_service", &self.service),
            ("grpc_method", &self.method),
            ("grpc_type", self.kind),
        ])
    }
}

/// The RPCs a server serves, by HTTP/2 path: the only label values the
/// per-RPC metrics take, so that made-up paths cannot add series.
#[derive(Clone, Debug, Default)]
pub struct RpcCatalog(Arc<std::collections::HashMap<String, RpcInfo>>);

impl RpcCatalog {
    /// The methods of `services` (fully-qualified names) in the descriptor sets.
    pub fn of(services: &[&str], descriptor_sets: &[&[u8]]) -> Self {
        use prost::Message as _;
        let mut paths = std::collections::HashMap::new();
        for set in descriptor_sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                continue;
            };
            for file in set.file {
                for service in &file.service {
                    let name = format!("{}.{}", file.package(), service.name());
                    if !services.contains(&name.as_str()) {
                        continue;
                    }
                    for method in &service.method {
                        let kind = match (method.client_streaming(), method.server_streaming()) {
                            (false, false) => "unary",
                            (false, true) => "server_stream",
                            (true, false) => "client_stream",
                            (true, true) => "bidi_stream",
                        };
                        paths.insert(
                            format!("/{name}/{}", method.name()),
                            RpcInfo {
                                service: name.clone(),
                                method: method.name().to_owned(),
                                kind,
                            },
                        );
                    }
                }
            }
        }
        Self(Arc::new(paths))
    }

    fn find(&self, path: &str) -> RpcInfo {
        self.0.get(path).cloned().unwrap_or_else(RpcInfo::unknown)
    }
}

/// A tower layer that records every call's start, and its end with the gRPC
/// code and latency, labelled from the [`RpcCatalog`].
#[derive(Clone, Debug)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
    catalog: RpcCatalog,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>, catalog: RpcCatalog) -> Self {
        Self { metrics, catalog }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            metrics: self.metrics.clone(),
            catalog: self.catalog.clone(),
        }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Clone, Debug)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
    catalog: RpcCatalog,
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: http_body::Body<Data = Bytes> + Send + 'static,
{
    type Response = http::Response<MeteredBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Health checks and reflection are left out: probes would drown the rest.
        let path = request.uri().path();
        let rpc = (!path.starts_with("/grpc.")).then(|| self.catalog.find(path));
        if let Some(rpc) = &rpc {
            self.metrics.rpc_started(rpc);
        }
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            // The server's span of this call (entered while this future runs).
            let span = tracing::Span::current();
            let response = future.await?;
            // A trailers-only response (most errors) has the code in its headers.
            let code = grpc_code(response.headers());
            let recording = rpc.map(|rpc| Recording {
                metrics,
                rpc,
                started,
                code,
                span,
            });
            Ok(response.map(|body| MeteredBody {
                inner: Box::pin(body),
                recording,
            }))
        })
    }
}

fn grpc_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map(tonic::Code::from)
}

struct Recording {
    metrics: Arc<Metrics>,
    rpc: RpcInfo,
    started: Instant,
    code: Option<tonic::Code>,
    span: tracing::Span,
}

impl Recording {
    fn finish(self, code: Option<tonic::Code>) {
        // No status at all: the call was cut off before it ended.
        let code = code.or(self.code).unwrap_or(tonic::Code::Cancelled);
        crate::telemetry::record_rpc_status(&self.span, code, true);
        self.metrics
            .rpc_handled(&self.rpc, code, self.started.elapsed().as_secs_f64());
    }
}

/// A response body that records the call once its trailers (the gRPC code) are sent.
pub struct MeteredBody<B> {
    inner: Pin<Box<B>>,
    recording: Option<Recording>,
}

impl<B: http_body::Body<Data = Bytes>> http_body::Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(recording) = self.recording.take()
                {
                    recording.finish(grpc_code(trailers));
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(recording) = self.recording.take() {
                    recording.finish(None);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        if let Some(recording) = self.recording.take() {
            recording.finish(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> RpcCatalog {
        RpcCatalog::of(
            &["ssak3.notify.v1.NotificationService"],
            &[ssak3_proto::FILE_DESCRIPTOR_SET],
        )
    }

    #[test]
    fn known_paths_are_labelled_and_every_other_path_is_one_unknown() {
        let catalog = catalog();
        let list = catalog.find("/ssak3.notify.v1.NotificationService/ListNotifications");
        assert_eq!(
            (list.service.as_str(), list.method.as_str(), list.kind),
            (
                "ssak3.notify.v1.NotificationService",
                "ListNotifications",
                "unary"
            )
        );
        let watch = catalog.find("/ssak3.notify.v1.NotificationService/WatchNotifications");
        assert_eq!(watch.kind, "server_stream");
        // A service this server does not serve is unknown too.
        for path in [
            "/a\"b",
            "/x\",code=\"OK\",method=\"y",
            "/ssak3.payment.v1.PaymentService/GetPayment",
        ] {
            assert_eq!(catalog.find(path), RpcInfo::unknown(), "{path}");
        }
    }

    #[tokio::test]
    async fn made_up_paths_add_no_series_and_codes_have_their_grpc_names() {
        let metrics = Metrics::new();
        let catalog = catalog();
        for n in 0..2_000 {
            let rpc = catalog.find(&format!("/random-{n}/\"{n}"));
            metrics.rpc_started(&rpc);
            metrics.rpc_handled(&rpc, tonic::Code::Unimplemented, 0.001);
        }
        let ok = catalog.find("/ssak3.notify.v1.NotificationService/ListNotifications");
        metrics.rpc_handled(&ok, tonic::Code::InvalidArgument, 0.002);
        let text = metrics.render().await;
        let series = text
            .lines()
            .filter(|l| l.starts_with("grpc_server_handled_total"))
            .count();
        assert_eq!(series, 2, "{text}");
        assert!(text.contains(
            r#"grpc_server_handled_total{grpc_service="unknown",grpc_method="unknown",grpc_type="unknown",grpc_code="UNIMPLEMENTED"} 2000"#
        ), "{text}");
        assert!(text.contains(r#"grpc_code="INVALID_ARGUMENT""#), "{text}");
    }

    #[tokio::test]
    async fn each_format_is_what_its_content_type_says() {
        let metrics = Metrics::new();
        let rpc = catalog().find("/ssak3.notify.v1.NotificationService/ListNotifications");
        metrics.rpc_started(&rpc);
        let text = metrics.render_as(Exposition::Text).await;
        assert!(
            text.contains("# TYPE grpc_server_started_total counter\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        let open = metrics.render_as(Exposition::OpenMetrics).await;
        assert!(
            open.contains("# TYPE grpc_server_started counter\n"),
            "{open}"
        );
        assert!(open.ends_with("# EOF\n"), "{open}");
    }

    #[test]
    fn the_accept_header_chooses_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            Exposition::negotiate(Some(prometheus)),
            Exposition::OpenMetrics
        );
        let classic = "text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5";
        assert_eq!(Exposition::negotiate(Some(classic)), Exposition::Text);
        assert_eq!(Exposition::negotiate(None), Exposition::Text);
        assert_eq!(Exposition::negotiate(Some("*/*")), Exposition::Text);
        assert_eq!(
            Exposition::negotiate(Some("application/openmetrics-text;q=0")),
            Exposition::Text
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("line\nbreak"), r"line\nbreak");
        assert_eq!(labels(&[("k", "x\",y=\"z")])[0].1, r#"x\",y=\"z"#);
    }
}
