//! Helpers for integration tests: a fresh database per test (a UUID-named
//! PostgreSQL database or a temporary SQLite file), a broker namespace per
//! test, tokens and authenticated requests, services spawned on port 0 with
//! a shutdown handle, polling, and a webhook receiver. `TEST_LOG=1` turns
//! logs on. Only test binaries enable this module (feature `test-support`).

// Test helpers fail the test on the spot: a panic with its message is the report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Request, transport::Channel};
pub use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    auth::{self, AuthConfig, Role, signing::Signer},
    config::Config,
    events::{Bus, Message, Topology},
};

/// The server holding the per-test databases; override with `SSAK3_TEST_POSTGRES_URL`.
pub fn postgres_admin_url() -> String {
    std::env::var("SSAK3_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The keys of a test process, made once: an identity provider's, and the
/// reservation service's own.
#[derive(Debug)]
pub struct TestKeys {
    pub issuer: Signer,
    pub issuer_pem: String,
    pub reservation_pem: String,
    pub reservation: Signer,
}

/// The test process's keys.
pub fn keys() -> &'static TestKeys {
    static KEYS: std::sync::OnceLock<TestKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let issuer_pem = Signer::generate_pem().expect("a key");
        let reservation_pem = Signer::generate_pem().expect("a key");
        TestKeys {
            issuer: Signer::from_pem(&issuer_pem, "test-idp-").expect("a signer"),
            reservation: Signer::from_pem(&reservation_pem, "reservation:").expect("a signer"),
            issuer_pem,
            reservation_pem,
        }
    })
}

/// How the services under test verify tokens: the test issuer's public
/// key, the reservation service's own key, and payment trusting it.
pub fn auth_config() -> AuthConfig {
    let keys = keys();
    AuthConfig {
        jwks: Some(serde_json::to_string(&keys.issuer.jwks()).expect("json")),
        service_key: Some(keys.reservation_pem.clone()),
        service_keys: Some(serde_json::to_string(&keys.reservation.jwks()).expect("json")),
        ..AuthConfig::default()
    }
}

/// `Bearer`-ready token for `subject` in `role`, valid for an hour.
pub fn token(subject: &str, role: Role) -> String {
    keys()
        .issuer
        .issue(
            &AuthConfig::default().issuer,
            None,
            subject,
            role,
            Duration::from_secs(3600),
        )
        .expect("a test token")
}

/// A token of the reservation service for a call to `audience`, signed
/// with its own test key.
pub fn service_token(audience: &'static str) -> String {
    auth::ServiceIdentity::new("reservation", keys().reservation.clone())
        .token_for(audience)
        .expect("a service token")
}

/// `message` sent by the reservation service to `audience`.
pub fn as_service<T>(audience: &'static str, message: T) -> Request<T> {
    with_token(message, &service_token(audience))
}

/// `message` sent as `subject` in `role`.
pub fn as_user<T>(subject: &str, role: Role, message: T) -> Request<T> {
    with_token(message, &token(subject, role))
}

/// `message` sent with `authorization: Bearer <token>`.
pub fn with_token<T>(message: T, token: &str) -> Request<T> {
    auth::with_bearer(Request::new(message), token).expect("a token is valid metadata")
}

/// A connected channel to a server under test.
pub async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("an http URL")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot reach {addr}: {e}"))
}

/// Polls `check` every 50 ms until it returns `Some`, or fails the test after 30 s.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(Duration::from_secs(30), what, check).await
}

/// Polls `check` every 50 ms until it returns `Some`, or fails the test after `within`.
pub async fn eventually_within<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes bytes that need not be an event, as a broken producer would.
pub async fn publish_raw(bus: &Bus, routing_key: &str, payload: &[u8]) {
    bus.publish(&[Message {
        event_id: uuid::Uuid::new_v4().to_string(),
        routing_key: routing_key.to_owned(),
        payload: payload.to_vec(),
        trace_context: Default::default(),
    }])
    .await
    .expect("publish raw bytes");
}

/// Installs the test subscriber (see [`spans`]); logs only when `TEST_LOG` is set.
pub fn init_logs() {
    let _ = spans();
}

/// The spans this test process has finished, for tests of tracing. The
/// first call installs the process's subscriber: the OpenTelemetry layer
/// with an in-memory exporter, and log lines only with `TEST_LOG=1`.
pub fn spans() -> &'static opentelemetry_sdk::trace::InMemorySpanExporter {
    static SPANS: std::sync::OnceLock<opentelemetry_sdk::trace::InMemorySpanExporter> =
        std::sync::OnceLock::new();
    SPANS.get_or_init(|| {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporterBuilder::new().build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let logs = std::env::var_os("TEST_LOG").map(|_| crate::config::LogFormat::Text);
        crate::telemetry::install(logs, crate::telemetry::ServiceTracers::single(&provider));
        exporter
    })
}

/// A database that exists for one test.
#[derive(Debug)]
pub enum TestDb {
    Postgres { name: String },
    Sqlite { dir: tempfile::TempDir },
}

impl TestDb {
    /// Creates an empty, uniquely named PostgreSQL database.
    pub fn postgres() -> Self {
        let name = format!("ssak3_test_{}", uuid::Uuid::new_v4().simple());
        let db = Self::Postgres { name };
        db.database_url()
            .create_if_missing()
            .expect("PostgreSQL must run for the tests");
        db
    }

    /// A SQLite file in a fresh temporary directory.
    pub fn sqlite() -> Self {
        Self::Sqlite {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    fn database_url(&self) -> crate::db::DatabaseUrl {
        match self {
            Self::Postgres { .. } => crate::db::DatabaseUrl::Postgres(self.url()),
            Self::Sqlite { dir } => crate::db::DatabaseUrl::Sqlite(self.sqlite_path(dir)),
        }
    }

    /// The URL a service uses for this database.
    pub fn url(&self) -> String {
        match self {
            Self::Postgres { name } => {
                let admin = postgres_admin_url();
                let base = admin
                    .rsplit_once('/')
                    .map_or(admin.as_str(), |(base, _)| base);
                format!("{base}/{name}")
            }
            Self::Sqlite { dir } => format!("sqlite://{}", self.sqlite_path(dir).display()),
        }
    }

    fn sqlite_path(&self, dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("service.db")
    }

    /// Ends every server process connected to this PostgreSQL database, as
    /// a restart of the server or an administrator's shutdown does: the
    /// services' pooled connections break (SQLSTATE 57P01).
    pub fn terminate_connections(&self) {
        use diesel::{Connection as _, RunQueryDsl as _};
        let Self::Postgres { name } = self else {
            panic!("only a PostgreSQL database has server connections");
        };
        let mut admin = diesel::PgConnection::establish(&postgres_admin_url())
            .expect("PostgreSQL must run for the tests");
        diesel::sql_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind::<diesel::sql_types::Text, _>(name)
        .execute(&mut admin)
        .expect("connections terminated");
    }

    /// Ends the connections of the services' change listeners to this
    /// PostgreSQL database (see [`crate::changes`]), as a network fault
    /// would: they reconnect and resynchronise. Returns how many ended.
    pub fn terminate_change_listeners(&self) -> usize {
        use diesel::{Connection as _, RunQueryDsl as _};
        let Self::Postgres { name } = self else {
            panic!("only a PostgreSQL database has change listeners");
        };
        let mut admin = diesel::PgConnection::establish(&postgres_admin_url())
            .expect("PostgreSQL must run for the tests");
        diesel::sql_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name LIKE 'ssak3_%_changes'",
        )
        .bind::<diesel::sql_types::Text, _>(name)
        .execute(&mut admin)
        .expect("listeners terminated")
    }

    /// A service config on port 0 using this database and the test keys.
    pub fn config(&self) -> Config {
        Config {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            database_url: Some(self.url()),
            auth: auth_config(),
            // Tests book in bursts; the limits are tested on their own.
            rate_limit: crate::ratelimit::RateLimits {
                enabled: true,
                per_second: 1_000,
                burst: 1_000,
            },
            shutdown_grace_ms: 2_000,
            ..Config::default()
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = self.database_url().drop_if_exists();
    }
}

pub use crate::server::health_of;

/// The shutdown future handed to a service under test.
pub type ShutdownFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A service running in the test's runtime.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Spawns `run(shutdown)` for a service listening on `addr` and waits until it is SERVING.
    pub async fn start<F, Fut>(addr: SocketAddr, run: F) -> Self
    where
        F: FnOnce(ShutdownFuture) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let running = Self::spawn(addr, run);
        running.wait_until(ServingStatus::Serving).await;
        running
    }

    /// Spawns `run(shutdown)` for a service listening on `addr`, without waiting.
    pub fn spawn<F, Fut>(addr: SocketAddr, run: F) -> Self
    where
        F: FnOnce(ShutdownFuture) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown: ShutdownFuture = Box::pin(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(run(shutdown));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// `http://addr`, for clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The overall health status the service reports.
    pub async fn health(&self) -> Option<ServingStatus> {
        health_of(self.addr).await
    }

    /// Polls health until it reports `status` (panics after 20 s).
    pub async fn wait_until(&self, status: ServingStatus) {
        for _ in 0..400 {
            if self.health().await == Some(status) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("service at {} never reported {status:?}", self.addr);
    }

    /// Signals shutdown and waits for the service to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await?
    }
}

/// The broker the tests use (override with `SSAK3_TEST_AMQP_URL`).
pub fn amqp_url() -> String {
    std::env::var("SSAK3_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Event settings with a namespace of the test's own and quick retries.
pub fn events_config(namespace: &str) -> crate::config::EventsConfig {
    crate::config::EventsConfig {
        namespace: namespace.to_owned(),
        retry_base_ms: 20,
        retry_max_ms: 500,
        ..Default::default()
    }
}

/// RabbitMQ exchanges and queues under a namespace of one test; deleted on drop.
#[derive(Debug)]
pub struct TestBroker {
    pub config: crate::config::EventsConfig,
    pub topology: Topology,
}

impl TestBroker {
    /// A namespace of its own with the queues of `topology`.
    pub fn new(topology: Topology) -> Self {
        let namespace = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Self {
            config: events_config(&namespace),
            topology,
        }
    }

    pub fn amqp(&self, client: &str) -> crate::events::amqp::AmqpBus {
        crate::events::amqp::AmqpBus::new(&amqp_url(), &self.config, client, self.topology.clone())
    }

    pub fn bus(&self, client: &str) -> crate::events::Bus {
        crate::events::Bus::Amqp(self.amqp(client))
    }

    /// Closes every broker connection of this test's services, as a broker
    /// restart or an operator would (`rabbitmqctl close_connection`).
    /// Returns how many it closed.
    pub fn close_connections(&self) -> usize {
        let listed = std::process::Command::new("rabbitmqctl")
            .args(["-q", "list_connections", "pid", "client_properties"])
            .output()
            .expect("rabbitmqctl must be available");
        let marker = format!("{}/", self.config.namespace);
        let pids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter(|line| line.contains(&marker))
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect();
        for pid in &pids {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["-q", "close_connection", pid, "closed by a fault test"])
                .output();
        }
        pids.len()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let bus = self.amqp("cleanup");
        // Drop may run inside or outside a runtime; a thread of its own works in both.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(bus.delete_topology()))
        })
        .join();
    }
}

/// The durable in-process bus in a temporary directory.
#[derive(Debug)]
pub struct TestEmbeddedBus {
    pub bus: crate::events::Bus,
    pub dir: tempfile::TempDir,
}

impl TestEmbeddedBus {
    /// A bus with the queues of `topology` in a fresh temporary directory.
    pub async fn new(topology: Topology) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let bus = Self::open(dir.path(), topology).await;
        Self { bus, dir }
    }

    /// Opens the bus stored in `dir` (again, after a simulated restart).
    pub async fn open(dir: &std::path::Path, topology: Topology) -> crate::events::Bus {
        crate::events::Bus::Embedded(
            crate::events::embedded::EmbeddedBus::open(
                &dir.join("events.db"),
                &events_config("embedded"),
                topology,
            )
            .await
            .expect("the embedded bus opens"),
        )
    }
}

/// An HTTP endpoint that records the notifications POSTed to it (with their
/// headers) and can fail the first requests, as a flaky partner app would.
#[derive(Clone)]
pub struct Webhook {
    addr: SocketAddr,
    scheme: &'static str,
    received: Arc<Mutex<Vec<Received>>>,
    failures_left: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    /// The endpoint's signing secret (`whsec_…`), which the sender is given.
    secret: String,
    /// Requests whose Standard Webhooks signature did not verify.
    unverified: Arc<AtomicUsize>,
    /// How long each answer takes, in milliseconds.
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// One request a [`Webhook`] accepted.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: http::HeaderMap,
    pub json: serde_json::Value,
    /// When it was accepted (just before the answer was sent).
    pub at: std::time::Instant,
}

impl Webhook {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        Self::listen(None).await
    }

    /// Listens over TLS on a free port of 127.0.0.1, with a certificate of
    /// a CA of its own; returns the CA's certificate (PEM) as well, which a
    /// client must trust.
    pub async fn start_tls() -> (Self, String) {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("CA parameters");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "webhook test CA");
        let ca = ca_params.self_signed(&ca_key).expect("a CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("a server key");
        let certificate = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("server parameters")
            .signed_by(&key, &issuer)
            .expect("a server certificate");
        let config = tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![certificate.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("a TLS server configuration");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (Self::listen(Some(acceptor)).await, ca.pem())
    }

    async fn listen(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the webhook binds");
        let webhook = Self {
            addr: listener.local_addr().expect("a bound address"),
            scheme: if tls.is_some() { "https" } else { "http" },
            received: Arc::default(),
            failures_left: Arc::default(),
            requests: Arc::default(),
            secret: {
                use base64::Engine as _;
                let key: [u8; 24] = std::array::from_fn(|_| fastrand::u8(..));
                format!(
                    "whsec_{}",
                    base64::engine::general_purpose::STANDARD.encode(key)
                )
            },
            unverified: Arc::default(),
            delay_ms: Arc::default(),
        };
        let server = webhook.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = server.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let server = server.clone();
                        async move { server.receive(request).await }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => {
                            http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await
                        }
                        Some(tls) => {
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await
                        }
                    };
                });
            }
        });
        webhook
    }

    async fn receive(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let (parts, body) = request.into_parts();
        let body = body.collect().await?.to_bytes();
        let signed = standardwebhooks::Webhook::new(&self.secret)
            .and_then(|verifier| verifier.verify(&body, &parts.headers));
        if signed.is_err() {
            self.unverified.fetch_add(1, Ordering::SeqCst);
        }
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let failing = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let status = if failing {
            hyper::StatusCode::SERVICE_UNAVAILABLE
        } else {
            if let Ok(json) = serde_json::from_slice(&body) {
                self.received.lock().unwrap().push(Received {
                    headers: parts.headers,
                    json,
                    at: std::time::Instant::now(),
                });
            }
            hyper::StatusCode::NO_CONTENT
        };
        let mut response = hyper::Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        Ok(response)
    }

    pub fn url(&self) -> String {
        format!("{}://{}/notifications", self.scheme, self.addr)
    }

    /// The secret the sender signs with (Standard Webhooks, `whsec_…`).
    pub fn secret(&self) -> String {
        self.secret.clone()
    }

    /// Requests so far whose signature did not verify with [`Webhook::secret`].
    pub fn unverified(&self) -> usize {
        self.unverified.load(Ordering::SeqCst)
    }

    /// From now on, each answer takes `delay`, as a slow partner's would.
    pub fn delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// The next `n` requests are answered 503.
    pub fn fail_next(&self, n: usize) {
        self.failures_left.store(n, Ordering::SeqCst);
    }

    /// Requests received, failed ones included.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Every request accepted, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Notification ids accepted, in arrival order.
    pub fn delivered(&self) -> Vec<String> {
        self.received()
            .iter()
            .filter_map(|r| r.json["notification_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// Accepted notifications concerning `reservation_id`.
    pub fn delivered_for(&self, reservation_id: &str) -> Vec<serde_json::Value> {
        self.received()
            .into_iter()
            .filter(|r| r.json["reservation_id"] == reservation_id)
            .map(|r| r.json)
            .collect()
    }
}

/// A TCP link to a service that a test can sever, as a crash or a network
/// fault would: every connection open through it is closed at once, mid-call
/// if a call is in flight, while new connections still go through.
#[derive(Debug)]
pub struct Link {
    pub addr: SocketAddr,
    severed: tokio::sync::watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Link {
    /// Starts forwarding a port of its own on loopback to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let (severed, _) = tokio::sync::watch::channel(0_u64);
        let generations = severed.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut severed = generations.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = severed.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            severed,
            task,
        }
    }

    /// `http://addr`, for clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every connection open through the link.
    pub fn sever(&self) {
        self.severed.send_modify(|generation| *generation += 1);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}
