//! Prometheus metrics, served in the text format on each service's admin
//! port (`/metrics`, and `/healthz` for anything that wants plain HTTP).
//!
//! Each service has its own [`Metrics`]: per-RPC counts by code and
//! latencies (a tower layer on the server), the payment breaker's state and
//! transitions, the outbox backlog and publish latency, consumer deliveries,
//! redeliveries, dead letters and handling latency, and notification
//! delivery outcomes. Gauges that mirror state elsewhere are refreshed when
//! scraped.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
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
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::net::TcpListener;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn latency() -> Histogram {
    // 0.5 ms … ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Refreshes gauges that mirror state kept elsewhere, before a scrape.
pub type Refresh = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// One service's metrics.
pub struct Metrics {
    registry: Registry,
    refreshers: Mutex<Vec<Arc<Refresh>>>,
    pub rpc_requests: Family<Labels, Counter>,
    pub rpc_duration: Family<Labels, Histogram>,
    pub breaker_state: Gauge,
    pub breaker_transitions: Family<Labels, Counter>,
    pub outbox_backlog: Gauge,
    pub outbox_published: Counter,
    pub outbox_publish_duration: Histogram,
    pub events_received: Family<Labels, Counter>,
    pub events_redelivered: Family<Labels, Counter>,
    pub events_dead_lettered: Family<Labels, Counter>,
    pub event_handling_duration: Family<Labels, Histogram>,
    pub notifications: Family<Labels, Counter>,
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
        let mut registry = Registry::with_prefix("ssak3");
        let rpc_requests = Family::<Labels, Counter>::default();
        let rpc_duration =
            Family::<Labels, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        let breaker_state = Gauge::default();
        let breaker_transitions = Family::<Labels, Counter>::default();
        let outbox_backlog = Gauge::default();
        let outbox_published = Counter::default();
        let outbox_publish_duration = latency();
        let events_received = Family::<Labels, Counter>::default();
        let events_redelivered = Family::<Labels, Counter>::default();
        let events_dead_lettered = Family::<Labels, Counter>::default();
        let event_handling_duration =
            Family::<Labels, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        let notifications = Family::<Labels, Counter>::default();
        registry.register(
            "grpc_server_requests",
            "gRPC calls served, by method and status code",
            rpc_requests.clone(),
        );
        registry.register(
            "grpc_server_request_duration_seconds",
            "Time to serve a gRPC call, by method",
            rpc_duration.clone(),
        );
        registry.register(
            "payment_breaker_open",
            "1 while the circuit breaker on reservation → payment is open, else 0",
            breaker_state.clone(),
        );
        registry.register(
            "payment_breaker_transitions",
            "Circuit breaker transitions, by the state entered",
            breaker_transitions.clone(),
        );
        registry.register(
            "outbox_backlog",
            "Events committed but not yet confirmed by the broker",
            outbox_backlog.clone(),
        );
        registry.register(
            "outbox_published",
            "Events the broker confirmed",
            outbox_published.clone(),
        );
        registry.register(
            "outbox_publish_duration_seconds",
            "Time to publish a batch and have it confirmed",
            outbox_publish_duration.clone(),
        );
        registry.register(
            "events_received",
            "Event deliveries, by event type",
            events_received.clone(),
        );
        registry.register(
            "events_redelivered",
            "Deliveries of events seen before, by event type",
            events_redelivered.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Events given up on, by event type",
            events_dead_lettered.clone(),
        );
        registry.register(
            "event_handling_duration_seconds",
            "Time to handle an event, by event type",
            event_handling_duration.clone(),
        );
        registry.register(
            "notification_deliveries",
            "Notification delivery attempts, by outcome",
            notifications.clone(),
        );
        Self {
            registry,
            refreshers: Mutex::new(Vec::new()),
            rpc_requests,
            rpc_duration,
            breaker_state,
            breaker_transitions,
            outbox_backlog,
            outbox_published,
            outbox_publish_duration,
            events_received,
            events_redelivered,
            events_dead_lettered,
            event_handling_duration,
            notifications,
        }
    }

    /// Runs `refresh` before every scrape.
    pub fn on_scrape(&self, refresh: Refresh) {
        self.refreshers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(refresh));
    }

    /// The metrics in the Prometheus text format, refreshed.
    pub async fn render(&self) -> String {
        let refreshers: Vec<Arc<Refresh>> = self
            .refreshers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for refresh in refreshers {
            refresh().await;
        }
        let mut text = String::new();
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// Records one served call.
    pub fn rpc(&self, method: &str, code: &str, seconds: f64) {
        self.rpc_requests
            .get_or_create(&labels(&[("method", method), ("code", code)]))
            .inc();
        self.rpc_duration
            .get_or_create(&labels(&[("method", method)]))
            .observe(seconds);
    }

    /// Records one event delivery and what became of it.
    pub fn event(&self, event_type: &str, attempt: u32, dead: bool, seconds: f64) {
        let by_type = labels(&[("event_type", event_type)]);
        self.events_received.get_or_create(&by_type).inc();
        if attempt > 1 {
            self.events_redelivered.get_or_create(&by_type).inc();
        }
        if dead {
            self.events_dead_lettered.get_or_create(&by_type).inc();
        }
        self.event_handling_duration
            .get_or_create(&by_type)
            .observe(seconds);
    }

    /// Records a notification delivery attempt: `delivered`, `retry` or `failed`.
    pub fn notification(&self, outcome: &str) {
        self.notifications
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc();
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `stop` turns true.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin port accept failed");
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let (status, content_type, body) = match request.uri().path() {
                            "/metrics" => (
                                200,
                                "text/plain; version=0.0.4; charset=utf-8",
                                metrics.render().await,
                            ),
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
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The admin port of a service listening on `grpc`: the same address, port + 1000.
pub fn admin_addr_for(grpc: SocketAddr) -> SocketAddr {
    let port = match grpc.port() {
        0 => 0,
        port => port.saturating_add(1000),
    };
    SocketAddr::new(grpc.ip(), port)
}

/// A tower layer that records every call's method, gRPC code and latency.
#[derive(Clone, Debug)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Clone, Debug)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
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
        let method = request.uri().path().trim_start_matches('/').to_owned();
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            // A trailers-only response (most errors) has the code in its headers.
            let code = grpc_code(response.headers());
            let recording = (!method.starts_with("grpc.")).then(|| Recording {
                metrics,
                method,
                started,
                code,
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
    method: String,
    started: Instant,
    code: Option<tonic::Code>,
}

impl Recording {
    fn finish(self, code: Option<tonic::Code>) {
        // No status at all: the call was cut off before it ended.
        let code = code.or(self.code).unwrap_or(tonic::Code::Cancelled);
        self.metrics.rpc(
            &self.method,
            &format!("{code:?}"),
            self.started.elapsed().as_secs_f64(),
        );
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
