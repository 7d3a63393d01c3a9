//! Helpers for integration tests: a fresh database per test (a UUID-named
//! PostgreSQL database or a temporary SQLite file), tokens, and services
//! spawned on port 0 with a shutdown handle. `TEST_LOG=1` turns logs on.

use std::{future::Future, net::SocketAddr, path::PathBuf, pin::Pin, time::Duration};

use tokio::{sync::oneshot, task::JoinHandle};
pub use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    auth::{JwtKeys, Role},
    config::Config,
};

/// The server holding the per-test databases; override with `SSAK3_TEST_POSTGRES_URL`.
pub fn postgres_admin_url() -> String {
    std::env::var("SSAK3_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The signing secret tests share with the services they start.
pub const TEST_SECRET: &str = "test-secret";

/// Keys for [`TEST_SECRET`].
pub fn keys() -> JwtKeys {
    JwtKeys::new(TEST_SECRET.as_bytes())
}

/// `Bearer`-ready token for `subject` in `role`, valid for an hour.
pub fn token(subject: &str, role: Role) -> String {
    keys()
        .issue(subject, role, Duration::from_secs(3600))
        .unwrap_or_else(|e| panic!("{e}"))
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
        crate::telemetry::install(logs, provider);
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
            .unwrap_or_else(|e| panic!("PostgreSQL must run for the tests: {e:#}"));
        db
    }

    /// A SQLite file in a fresh temporary directory.
    pub fn sqlite() -> Self {
        Self::Sqlite {
            dir: tempfile::tempdir().unwrap_or_else(|e| panic!("no temp dir: {e}")),
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

    /// A service config on port 0 using this database and the test secret.
    pub fn config(&self) -> Config {
        Config {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            database_url: Some(self.url()),
            jwt_secret: Some(TEST_SECRET.into()),
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
}

impl Default for TestBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl TestBroker {
    pub fn new() -> Self {
        let namespace = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Self {
            config: events_config(&namespace),
        }
    }

    pub fn amqp(&self, client: &str) -> crate::events::amqp::AmqpBus {
        crate::events::amqp::AmqpBus::new(&amqp_url(), &self.config, client)
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
            .unwrap_or_else(|e| panic!("rabbitmqctl must be available: {e}"));
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
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("no temp dir: {e}"));
        let bus = Self::open(dir.path()).await;
        Self { bus, dir }
    }

    /// Opens the bus stored in `dir` (again, after a simulated restart).
    pub async fn open(dir: &std::path::Path) -> crate::events::Bus {
        crate::events::Bus::Embedded(
            crate::events::embedded::EmbeddedBus::open(
                &dir.join("events.db"),
                &events_config("embedded"),
            )
            .await
            .unwrap_or_else(|e| panic!("embedded bus: {e:#}")),
        )
    }
}
