//! Server bootstrap shared by every service: gRPC health and reflection
//! (v1 and v1alpha, so grpcurl 1.8 works), readiness after start-up work,
//! and graceful shutdown.
//!
//! Lifecycle: the listener serves at once with health NOT_SERVING; when the
//! start-up work (migrations) has succeeded, health turns SERVING. On the
//! shutdown signal health turns NOT_SERVING at once; the server keeps
//! accepting calls for the drain delay (while load balancers notice), then
//! stops accepting, and in-flight calls get up to the grace period to finish.
//! Background workers (event relay, consumers, reconciler) start once the
//! start-up work has succeeded and are stopped after the server has drained.

use std::{future::Future, net::SocketAddr, pin::Pin, time::Duration};

use anyhow::Context as _;

use std::sync::Arc;

use crate::{
    config::{Config, ShutdownTiming},
    connections::{Acceptor, ConnectionLimits},
    metrics::{self, Metrics, RpcCatalog, RpcMetricsLayer},
};
use tokio::{net::TcpListener, sync::watch};
use tonic::service::RoutesBuilder;
use tonic_health::{ServingStatus, server::HealthReporter};

/// The largest request a service decodes (the largest valid one, a booking
/// with the longest address and note, is a few KiB).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Name of the health service, as served and as listed by reflection.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// The health check a liveness probe asks for: SERVING as long as the
/// process answers at all, also while it migrates or drains (readiness
/// asks for the overall status, "", which follows those).
pub const LIVENESS: &str = "liveness";

/// A background task of a service: runs until its receiver turns true.
type Worker =
    Box<dyn FnOnce(watch::Receiver<bool>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// One service process's gRPC server, before it runs.
pub struct ServiceHost {
    listener: TcpListener,
    admin: TcpListener,
    metrics: Arc<Metrics>,
    routes: RoutesBuilder,
    service_names: Vec<&'static str>,
    health: HealthReporter,
    workers: Vec<(&'static str, Worker)>,
    timing: ShutdownTiming,
    limits: ConnectionLimits,
}

impl std::fmt::Debug for ServiceHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHost")
            .field("services", &self.service_names)
            .finish()
    }
}

impl ServiceHost {
    /// Prepares a server on `listener` for the named gRPC services (their
    /// fully-qualified names, as health checks and reflection use them).
    /// Binds the gRPC port (`config.listen`, else 127.0.0.1:`default_port`) and
    /// the admin port, for the named gRPC services (their fully-qualified
    /// names, as health checks and reflection use them).
    pub async fn bind(
        config: &Config,
        default_port: u16,
        service_names: &[&'static str],
    ) -> anyhow::Result<Self> {
        let listen = config
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)));
        let listener = bind(listen).await?;
        let admin = bind(
            config
                .admin_listen
                .unwrap_or_else(|| metrics::admin_addr_for(listen)),
        )
        .await
        .context("admin port (metrics)")?;
        Self::new(
            listener,
            admin,
            service_names,
            config.shutdown_timing(),
            config.connections.clone(),
        )
    }

    fn new(
        listener: TcpListener,
        admin: TcpListener,
        service_names: &[&'static str],
        timing: ShutdownTiming,
        limits: ConnectionLimits,
    ) -> anyhow::Result<Self> {
        let (health, health_service) = tonic_health::server::health_reporter();

        let reflection_v1 = reflection(service_names)
            .build_v1()
            .context("cannot build reflection v1")?;
        let reflection_v1alpha = reflection(service_names)
            .build_v1alpha()
            .context("cannot build reflection v1alpha")?;

        let mut routes = RoutesBuilder::default();
        routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        Ok(Self {
            listener,
            admin,
            metrics: Arc::new(Metrics::new()),
            routes,
            service_names: service_names.to_vec(),
            health,
            workers: Vec::new(),
            timing,
            limits,
        })
    }

    /// Runs `worker` once start-up has succeeded; it is asked to stop (its
    /// receiver turns true) after the server has drained, and awaited.
    pub fn worker<F, Fut>(&mut self, name: &'static str, worker: F)
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.workers
            .push((name, Box::new(move |stop| Box::pin(worker(stop)))));
    }

    /// Where the service adds its own gRPC servers.
    pub fn routes(&mut self) -> &mut RoutesBuilder {
        &mut self.routes
    }

    /// This service's metrics, for its components to record into.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// The admin (metrics) address.
    pub fn admin_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.admin.local_addr()?)
    }

    /// The address the server is bound to.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `shutdown` completes, applying `schema`'s pending
    /// migrations to `db` as the start-up work (health says SERVING once they
    /// are done).
    pub async fn run_migrated(
        self,
        db: crate::db::Database,
        schema: crate::db::Schema,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let name = self.service_names.first().copied().unwrap_or("service");
        let startup = async move {
            db.migrate(schema)
                .await
                .with_context(|| format!("database migration of {name}"))
        };
        self.run(startup, shutdown).await
    }

    /// Serves until `shutdown` completes. `startup` runs while health reports
    /// NOT_SERVING; its failure stops the server and is returned.
    pub async fn run(
        self,
        startup: impl Future<Output = anyhow::Result<()>>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            admin,
            metrics,
            routes,
            service_names,
            health,
            workers,
            timing,
            limits,
        } = self;
        set_status(&health, &service_names, ServingStatus::NotServing).await;
        health
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ms = Duration::from_millis;
        let catalog = RpcCatalog::of(&service_names, &[ssak3_proto::FILE_DESCRIPTOR_SET]);
        let service = short_name(&service_names);
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                // What one connection may ask for; the acceptor bounds how many there are.
                .http2_keepalive_interval(Some(ms(limits.keepalive_interval_ms)))
                .http2_keepalive_timeout(Some(ms(limits.keepalive_timeout_ms)))
                .max_concurrent_streams(Some(limits.max_concurrent_streams))
                .http2_max_header_list_size(Some(limits.max_header_list_bytes))
                .trace_fn(move |request| server_span(service, request))
                .layer(RpcMetricsLayer::new(Arc::clone(&metrics), catalog))
                .add_routes(routes.routes())
                .serve_with_incoming_shutdown(
                    Acceptor::new(listener, limits.clone()).incoming(),
                    async {
                        let _ = stop_rx.await;
                    },
                ),
        );

        tokio::pin!(shutdown);
        let started = tokio::select! {
            started = startup => started,
            () = &mut shutdown => Ok(()),
        };
        let (workers_stop, workers_stopped) = watch::channel(false);
        // Metrics are served from the start (also while migrating and draining).
        let admin_server = tokio::spawn(metrics::serve_admin(
            Acceptor::new(admin, limits),
            Arc::clone(&metrics),
            workers_stopped.clone(),
        ));
        let mut running = tokio::task::JoinSet::new();
        if started.is_ok() {
            for (name, worker) in workers {
                let stop = workers_stopped.clone();
                running.spawn(async move {
                    worker(stop).await;
                    tracing::debug!(worker = name, "stopped");
                });
            }
            set_status(&health, &service_names, ServingStatus::Serving).await;
            tracing::info!(services = ?service_names, "serving");
            shutdown.await;
        }

        set_status(&health, &service_names, ServingStatus::NotServing).await;
        tracing::info!(
            drain_delay_ms = timing.drain_delay.as_millis() as u64,
            grace_ms = timing.grace.as_millis() as u64,
            "shutting down"
        );
        if started.is_ok() {
            tokio::time::sleep(timing.drain_delay).await;
        }
        let _ = stop_tx.send(());
        let abort = server.abort_handle();
        match tokio::time::timeout(timing.grace, server).await {
            Ok(served) => served.context("server task failed")??,
            Err(_) => {
                abort.abort();
                tracing::warn!("grace period over; in-flight calls were cut off");
            }
        }
        let _ = workers_stop.send(true);
        while running.join_next().await.is_some() {}
        let _ = admin_server.await;
        started
    }
}

/// The span of one call, following the semantic conventions for gRPC
/// servers: a span of `service`, and a child of the caller's trace context
/// (`traceparent`, `tracestate` and `baggage` metadata) if it sent one. Its
/// status code is recorded when the call ends ([`RpcMetricsLayer`]). Health
/// checks get none: probes would drown the rest.
fn server_span(service: &'static str, request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    if path.starts_with("/grpc.health.") {
        return tracing::Span::none();
    }
    let full = path.trim_start_matches('/');
    let (rpc_service, rpc_method) = full.split_once('/').unwrap_or((full, ""));
    let span = tracing::info_span!(
        "rpc",
        otel.name = %full,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.system.name = "grpc",
        rpc.service = %rpc_service,
        rpc.method = %rpc_method,
        rpc.grpc.status_code = tracing::field::Empty,
        rpc.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        server.address = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if let Some(authority) = request.uri().host().or_else(|| {
        request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    }) {
        span.record("server.address", authority);
    }
    crate::telemetry::join(
        &span,
        service,
        &crate::telemetry::HeaderExtractor(request.headers()),
    );
    span
}

/// The short name of the service that serves `names` (`reservation` for
/// `ssak3.reservation.v1.ReservationService`: packages are `ssak3.<service>.…`).
fn short_name(names: &[&'static str]) -> &'static str {
    names
        .first()
        .and_then(|name| name.split('.').nth(1))
        .unwrap_or("ssak3")
}

/// Reflection over the Ssak3 and health descriptors, listing only `service_names` and health.
/// The `google.rpc` error details are registered too, so that grpcurl can show the
/// `BadRequest` and `RetryInfo` our errors carry.
fn reflection(service_names: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ssak3_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(HEALTH_SERVICE);
    service_names
        .iter()
        .fold(builder, |builder, name| builder.with_service_name(*name))
}

async fn set_status(health: &HealthReporter, names: &[&'static str], status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in names {
        health.set_service_status(*name, status).await;
    }
}

/// Whether a background loop told by `stop` is to end: told so, or its
/// owner is gone without telling it (the sender dropped), after which
/// `stop.changed()` returns at once and a loop that only read the value
/// would spin.
pub fn stopping(stop: &tokio::sync::watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// What a health check answers.
pub type HealthStatus = tonic_health::pb::health_check_response::ServingStatus;

/// The overall health a server at `addr` reports, or `None` if it does not answer.
pub async fn health_of(addr: SocketAddr) -> Option<HealthStatus> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    HealthStatus::try_from(response.into_inner().status).ok()
}

/// A port on 127.0.0.1 that is free together with the `count - 1` after it
/// and with the admin ports of all of them (+ 1000, see
/// [`metrics::admin_addr_for`]), checked by binding, then released: for
/// running several services side by side. It is chosen below 32768, the
/// start of Linux's range for outgoing connections, so that no client socket
/// takes one of them between the check and the services binding (or a
/// restart binding them again).
pub fn free_consecutive_ports(count: u16) -> anyhow::Result<u16> {
    const LOW: u16 = 20_000;
    const HIGH: u16 = 31_000;
    for _ in 0..200 {
        let base = fastrand::u16(LOW..HIGH - count);
        let free = (base..base + count)
            .flat_map(|port| [port, port + 1000])
            .map(|port| std::net::TcpListener::bind(("127.0.0.1", port)))
            .collect::<Result<Vec<_>, _>>()
            .is_ok();
        if free {
            return Ok(base);
        }
    }
    anyhow::bail!("found no {count} consecutive free ports (with their admin ports) on 127.0.0.1")
}

/// Binds a listener, with a message that names the address when it is taken.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!("port {} is already in use on {}", addr.port(), addr.ip())
        } else {
            anyhow::anyhow!("cannot listen on {addr}: {error}")
        }
    })
}
