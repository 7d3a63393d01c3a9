//! `ssak3 bench faults`: a Jepsen-style fault suite.
//!
//! The four services run as separate `ssak3 serve` processes on PostgreSQL
//! and RabbitMQ, in databases and a broker namespace of the suite's own
//! (dropped afterwards). Reservation reaches payment, and every service
//! reaches PostgreSQL and RabbitMQ, through fault-injecting TCP proxies.
//! Clients book (and cancel, and have the company complete) under load,
//! retrying transient answers with the same request id. Faults follow one
//! another on a schedule: kill -9 and SIGSTOP of each service, latency,
//! stalls and resets between reservation and payment and towards the
//! database and the broker, a database restart (every connection reset
//! and new ones refused for a while, the databases' server processes
//! terminated), the broker's connections closed by `rabbitmqctl`. Then the
//! load stops, the system is given time to settle, and the history is
//! audited against the databases and the broker (see [`audit`]).
//!
//! Nothing outside the suite's own is touched: the shared PostgreSQL and
//! RabbitMQ are never restarted, and only connections and backends of the
//! suite's own databases and namespace are closed.

pub mod audit;
mod load;
pub mod proxy;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use diesel::{Connection as _, PgConnection, RunQueryDsl as _, sql_query};
use ssak3_common::{
    auth::{AuthConfig, Role, signing::Signer},
    config::EventsConfig,
    db::DatabaseUrl,
    events::amqp::AmqpBus,
    server::{HealthStatus, health_of},
};
use ssak3_proto::mypage::v1::{self as mypage, my_page_service_client::MyPageServiceClient};
use tonic::transport::Channel;

use self::{
    audit::Snapshot,
    load::{Attempt, Clients, History},
    proxy::{FaultProxy, Mode},
};
use crate::{Service, settings::topology, tokens::Tokens};

/// How a run is shaped.
#[derive(Clone, Debug)]
pub struct Plan {
    pub clients: usize,
    /// How long each fault lasts, and how long the system is watched after it.
    pub hold: Duration,
    pub observe: Duration,
    pub faults: Vec<Fault>,
    /// How long the system may take to settle after the load.
    pub settle: Duration,
}

impl Plan {
    /// Every fault, each held long enough for the breaker, the pools and
    /// the reconciler to act.
    pub fn full(clients: usize) -> Self {
        use Service::{Mypage, Notify, Payment, Reservation};
        let mut faults = Vec::new();
        for service in [Payment, Reservation, Notify, Mypage] {
            faults.push(Fault::Kill(service));
            faults.push(Fault::Stop(service));
        }
        faults.extend([
            Fault::Link(
                Link::Payment,
                Disturbance::Latency(Duration::from_millis(300)),
            ),
            Fault::Link(Link::Payment, Disturbance::Stall),
            Fault::Link(Link::Payment, Disturbance::Reset),
            Fault::PostgresRestart,
            Fault::Link(
                Link::Postgres,
                Disturbance::Latency(Duration::from_millis(50)),
            ),
            Fault::Link(Link::Postgres, Disturbance::Stall),
            Fault::Link(Link::Broker, Disturbance::Refuse),
            Fault::BrokerConnectionsClosed,
            Fault::Link(Link::Broker, Disturbance::Stall),
        ]);
        Self {
            clients,
            hold: Duration::from_secs(6),
            observe: Duration::from_secs(10),
            faults,
            settle: Duration::from_secs(180),
        }
    }

    /// One fault of each kind, briefly: what the test command runs.
    pub fn short(clients: usize) -> Self {
        Self {
            clients,
            hold: Duration::from_secs(4),
            observe: Duration::from_secs(6),
            faults: vec![
                Fault::Kill(Service::Payment),
                Fault::Stop(Service::Reservation),
                Fault::Kill(Service::Notify),
                Fault::Link(Link::Payment, Disturbance::Stall),
                Fault::PostgresRestart,
                Fault::BrokerConnectionsClosed,
            ],
            settle: Duration::from_secs(120),
        }
    }
}

/// A connection the proxies can disturb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Reservation → payment.
    Payment,
    /// Every service → PostgreSQL.
    Postgres,
    /// Every service → RabbitMQ.
    Broker,
}

/// What a proxy does to a link for the length of a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disturbance {
    Latency(Duration),
    Stall,
    /// Every open connection reset once.
    Reset,
    /// Every connection reset and new ones refused.
    Refuse,
}

/// One fault of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9, restarted at the end of the fault.
    Kill(Service),
    /// SIGSTOP, SIGCONT at the end of the fault.
    Stop(Service),
    Link(Link, Disturbance),
    /// As a PostgreSQL restart: connections reset and refused, the suite's
    /// databases' server processes terminated.
    PostgresRestart,
    /// `rabbitmqctl close_connection` for every connection of the suite's namespace.
    BrokerConnectionsClosed,
}

impl Fault {
    fn describe(self) -> String {
        let link = |l: Link| match l {
            Link::Payment => "reservation→payment",
            Link::Postgres => "services→PostgreSQL",
            Link::Broker => "services→RabbitMQ",
        };
        match self {
            Self::Kill(s) => format!("kill -9 {}", s.name()),
            Self::Stop(s) => format!("SIGSTOP {}", s.name()),
            Self::Link(l, Disturbance::Latency(d)) => {
                format!("{} +{} ms", link(l), d.as_millis())
            }
            Self::Link(l, Disturbance::Stall) => format!("{} stalled", link(l)),
            Self::Link(l, Disturbance::Reset) => format!("{} reset", link(l)),
            Self::Link(l, Disturbance::Refuse) => format!("{} refused", link(l)),
            Self::PostgresRestart => "PostgreSQL restart".into(),
            Self::BrokerConnectionsClosed => "broker connections closed".into(),
        }
    }
}

/// Where the suite runs.
#[derive(Clone, Debug)]
pub struct Target {
    /// A PostgreSQL URL; the suite's databases are `<it>_<random>_<service>`.
    pub database_url: String,
    pub amqp_url: String,
}

/// One `ssak3 serve` process.
struct Process {
    service: Service,
    addr: SocketAddr,
    env: Vec<(String, String)>,
    child: Option<tokio::process::Child>,
}

/// The four services, their databases, namespace and proxies.
struct Cluster {
    exe: PathBuf,
    processes: Vec<Process>,
    databases: Vec<(Service, DatabaseUrl)>,
    namespace: String,
    amqp_url: String,
    payment_link: FaultProxy,
    postgres_link: FaultProxy,
    broker_link: FaultProxy,
    tokens: Tokens,
    logs: tempfile::TempDir,
}

/// A URL split around its host and port: what comes before, `host:port`,
/// and what comes after.
fn authority(url: &str) -> anyhow::Result<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://").context("a URL needs a scheme")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let prefix_len = scheme.len() + 3 + authority.len() - host_port.len();
    Ok((&url[..prefix_len], host_port, tail))
}

/// The address a URL points at, resolved.
fn address_of(url: &str, default_port: u16) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs as _;
    let (_, host_port, _) = authority(url)?;
    let with_port = if host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    };
    with_port
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("{host_port} resolves to nothing"))
}

/// `url` with its host and port replaced by `addr`.
fn through(url: &str, addr: SocketAddr) -> anyhow::Result<String> {
    let (prefix, _, tail) = authority(url)?;
    Ok(format!("{prefix}{addr}{tail}"))
}

impl Cluster {
    /// Proxies, keys and the plan of the processes; nothing made on the servers yet.
    async fn new(target: &Target) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("where is this program?")?;
        let scratch = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let base = DatabaseUrl::parse(&target.database_url)?;
        anyhow::ensure!(
            matches!(base, DatabaseUrl::Postgres(_)),
            "the fault suite runs on PostgreSQL"
        );
        let base = base.for_one_of_many(&format!("faults_{scratch}"));
        let databases: Vec<(Service, DatabaseUrl)> = Service::ALL
            .into_iter()
            .map(|s| (s, base.for_one_of_many(s.name())))
            .collect();
        let namespace = format!("faults-{scratch}");
        let logs = tempfile::Builder::new()
            .prefix("ssak3-faults-")
            .tempdir()
            .context("no temporary directory")?;

        // Keys of an issuer and of reservation made for this run.
        let issuer_pem = Signer::generate_pem()?;
        let reservation_pem = Signer::generate_pem()?;
        let issuer_key = logs.path().join("issuer.pem");
        std::fs::write(&issuer_key, &issuer_pem)?;
        let tokens = Tokens::from_key_file(&issuer_key, "faults-issuer", &AuthConfig::default())?;
        let issuer_jwks = Signer::from_pem(&issuer_pem, "faults-issuer:")?.jwks_json();
        let reservation_jwks = Signer::from_pem(&reservation_pem, "reservation:")?.jwks_json();

        let postgres_link = FaultProxy::start(address_of(&target.database_url, 5432)?).await?;
        let broker_link = FaultProxy::start(address_of(&target.amqp_url, 5672)?).await?;
        let base_port = ssak3_common::server::free_consecutive_ports(4)?;
        let addr = |n: u16| SocketAddr::from(([127, 0, 0, 1], base_port + n));
        let payment_link = FaultProxy::start(addr(1)).await?;
        let amqp_through = through(&target.amqp_url, broker_link.addr)?;

        let mut cluster = Self {
            exe,
            processes: Vec::new(),
            databases,
            namespace: namespace.clone(),
            amqp_url: target.amqp_url.clone(),
            payment_link,
            postgres_link,
            broker_link,
            tokens,
            logs,
        };
        for (n, service) in (0u16..).zip(Service::ALL) {
            let database = through(
                &cluster.databases[usize::from(n)].1.to_url(),
                cluster.postgres_link.addr,
            )?;
            let mut env: Vec<(String, String)> = vec![
                ("SSAK3_LISTEN".into(), addr(n).to_string()),
                ("SSAK3_DATABASE_URL".into(), database),
                // Four processes of a suite share the server's connections with others.
                ("SSAK3_DATABASE_POOL_SIZE".into(), "3".into()),
                ("SSAK3_AMQP_URL".into(), amqp_through.clone()),
                ("SSAK3_EVENTS__NAMESPACE".into(), namespace.clone()),
                ("SSAK3_AUTH__JWKS".into(), issuer_jwks.clone()),
                ("SSAK3_RATE_LIMIT__ENABLED".into(), "false".into()),
                ("SSAK3_SHUTDOWN_GRACE_MS".into(), "1000".into()),
            ];
            match service {
                Service::Reservation => env.extend([
                    ("SSAK3_AUTH__SERVICE_KEY".into(), reservation_pem.clone()),
                    (
                        "SSAK3_COMPANIES".into(),
                        format!(
                            "[{{company_id=\"{}\", display_name=\"Faults\"}}]",
                            load::COMPANY
                        ),
                    ),
                    (
                        "SSAK3_PAYMENT_ENDPOINT".into(),
                        format!("http://{}", cluster.payment_link.addr),
                    ),
                ]),
                Service::Payment => {
                    env.push(("SSAK3_AUTH__SERVICE_KEYS".into(), reservation_jwks.clone()));
                }
                Service::Notify | Service::Mypage => {}
            }
            cluster.processes.push(Process {
                service,
                addr: addr(n),
                env,
                child: None,
            });
        }
        Ok(cluster)
    }

    /// Creates and migrates the databases, starts the services, waits until they serve.
    async fn launch(&mut self) -> anyhow::Result<()> {
        for (service, url) in &self.databases {
            crate::migrate(*service, url).await?;
        }
        for n in 0..self.processes.len() {
            self.spawn(n)?;
        }
        for process in &self.processes {
            let waited = Instant::now();
            while health_of(process.addr).await != Some(HealthStatus::Serving) {
                anyhow::ensure!(
                    waited.elapsed() < Duration::from_secs(60),
                    "{} never served",
                    process.service.name(),
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    fn spawn(&mut self, n: usize) -> anyhow::Result<()> {
        let process = &mut self.processes[n];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(
            self.logs
                .path()
                .join(format!("{}.log", process.service.name())),
        )?;
        let child = tokio::process::Command::new(&self.exe)
            .args(["serve", process.service.name()])
            .env_remove("SSAK3_DATA_DIR")
            .env_remove("SSAK3_CONFIG")
            .envs(process.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("ssak3 serve")?;
        process.child = Some(child);
        Ok(())
    }

    fn index(&self, service: Service) -> usize {
        self.processes
            .iter()
            .position(|p| p.service == service)
            .unwrap_or_default()
    }

    fn pid(&self, service: Service) -> Option<u32> {
        self.processes[self.index(service)]
            .child
            .as_ref()
            .and_then(tokio::process::Child::id)
    }

    async fn signal(&self, service: Service, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid(service).context("the process is not running")?;
        let status = tokio::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
        Ok(())
    }

    fn proxy(&self, link: Link) -> &FaultProxy {
        match link {
            Link::Payment => &self.payment_link,
            Link::Postgres => &self.postgres_link,
            Link::Broker => &self.broker_link,
        }
    }

    async fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::Kill(service) => {
                let n = self.index(service);
                if let Some(mut child) = self.processes[n].child.take() {
                    child.start_kill()?;
                    child.wait().await?;
                }
            }
            Fault::Stop(service) => self.signal(service, "-STOP").await?,
            Fault::Link(link, Disturbance::Latency(d)) => self.proxy(link).set(Mode::Latency(d)),
            Fault::Link(link, Disturbance::Stall) => self.proxy(link).set(Mode::Stall),
            Fault::Link(link, Disturbance::Reset) => self.proxy(link).reset(),
            Fault::Link(link, Disturbance::Refuse) => self.proxy(link).set(Mode::Refuse),
            Fault::PostgresRestart => {
                self.postgres_link.set(Mode::Refuse);
                self.terminate_backends().await?;
            }
            Fault::BrokerConnectionsClosed => {
                let closed = self.close_broker_connections().await?;
                anyhow::ensure!(
                    closed > 0,
                    "no broker connection of the suite's namespace to close"
                );
            }
        }
        Ok(())
    }

    async fn heal(&mut self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::Kill(service) => self.spawn(self.index(service))?,
            Fault::Stop(service) => self.signal(service, "-CONT").await?,
            Fault::Link(link, _) => self.proxy(link).set(Mode::Pass),
            Fault::PostgresRestart => self.postgres_link.set(Mode::Pass),
            Fault::BrokerConnectionsClosed => {}
        }
        Ok(())
    }

    /// Ends the server processes of the suite's own databases.
    async fn terminate_backends(&self) -> anyhow::Result<()> {
        let names: Vec<String> = self
            .databases
            .iter()
            .filter_map(|(_, url)| database_name(&url.to_url()))
            .collect();
        let admin = admin_url(&self.databases[0].1.to_url())?;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut conn = PgConnection::establish(&admin)?;
            for name in names {
                sql_query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind::<diesel::sql_types::Text, _>(name)
                .execute(&mut conn)?;
            }
            Ok(())
        })
        .await?
    }

    /// Closes every broker connection named in the suite's namespace.
    async fn close_broker_connections(&self) -> anyhow::Result<usize> {
        let listed = tokio::process::Command::new("rabbitmqctl")
            .args(["-q", "list_connections", "pid", "client_properties"])
            .output()
            .await
            .context("rabbitmqctl")?;
        let marker = format!("{}/", self.namespace);
        let pids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter(|line| line.contains(&marker))
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect();
        for pid in &pids {
            tokio::process::Command::new("rabbitmqctl")
                .args(["-q", "close_connection", pid, "closed by the fault suite"])
                .output()
                .await?;
        }
        Ok(pids.len())
    }

    /// Messages in each of the namespace's queues, dead-letter queues included.
    async fn queues(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let listed = tokio::process::Command::new("rabbitmqctl")
            .args(["-q", "list_queues", "name", "messages"])
            .output()
            .await
            .context("rabbitmqctl")?;
        let prefix = format!("{}.", self.namespace);
        Ok(String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter_map(|line| {
                let (name, messages) = line.split_once(char::is_whitespace)?;
                Some((name.to_owned(), messages.trim().parse().ok()?))
            })
            .filter(|(name, _): &(String, u64)| name.starts_with(&prefix))
            .collect())
    }

    fn database(&self, service: Service) -> String {
        self.databases[self.index(service)].1.to_url()
    }

    /// What the databases, my page and the broker hold now.
    async fn snapshot(&self, customers: usize) -> anyhow::Result<Snapshot> {
        let (reservation, payment, notify) = (
            self.database(Service::Reservation),
            self.database(Service::Payment),
            self.database(Service::Notify),
        );
        let mut snapshot =
            tokio::task::spawn_blocking(move || read_databases(&reservation, &payment, &notify))
                .await??;
        snapshot.views = self.views(customers).await?;
        snapshot.queues = self.queues().await?;
        Ok(snapshot)
    }

    /// Every customer's my page.
    async fn views(&self, customers: usize) -> anyhow::Result<BTreeMap<String, String>> {
        let addr = self.processes[self.index(Service::Mypage)].addr;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let mut views = BTreeMap::new();
        for n in 0..customers {
            let token = self.tokens.issue(
                &format!("faults-customer-{n}"),
                Role::Customer,
                Duration::from_secs(600),
            )?;
            let mut page_token = String::new();
            loop {
                let request = ssak3_common::auth::with_bearer(
                    tonic::Request::new(mypage::ListMyReservationsRequest {
                        page_size: 500,
                        page_token: page_token.clone(),
                    }),
                    &token,
                )
                .map_err(tonic::Status::from)?;
                let page = MyPageServiceClient::new(channel.clone())
                    .list_my_reservations(request)
                    .await?
                    .into_inner();
                for view in page.reservations {
                    let status = view
                        .status()
                        .as_str_name()
                        .trim_start_matches("RESERVATION_STATUS_")
                        .to_owned();
                    views.insert(view.reservation_id, status);
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
        }
        Ok(views)
    }

    /// Stops the processes, drops the databases and the namespace; with
    /// `keep_logs`, the services' logs stay for a look.
    async fn remove(mut self, keep_logs: bool) -> anyhow::Result<()> {
        if keep_logs {
            self.logs.disable_cleanup(true);
        }
        for process in &mut self.processes {
            if let Some(mut child) = process.child.take() {
                if let Some(pid) = child.id() {
                    // A stopped process would not see SIGTERM.
                    let _ = tokio::process::Command::new("kill")
                        .args(["-CONT", &pid.to_string()])
                        .status()
                        .await;
                    let _ = tokio::process::Command::new("kill")
                        .args(["-TERM", &pid.to_string()])
                        .status()
                        .await;
                }
                if tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
        }
        let mut outcome = Ok(());
        for (_, url) in &self.databases {
            let url = url.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || url.drop_if_exists()).await? {
                outcome = Err(e);
            }
        }
        let events = EventsConfig {
            namespace: self.namespace.clone(),
            ..EventsConfig::default()
        };
        AmqpBus::new(&self.amqp_url, &events, "faults", topology())
            .delete_topology()
            .await?;
        outcome
    }
}

/// The database name of a PostgreSQL URL.
fn database_name(url: &str) -> Option<String> {
    let base = url.split('?').next()?;
    base.rsplit_once('/').map(|(_, name)| name.to_owned())
}

/// The server's `postgres` database, at the same address as `url`.
fn admin_url(url: &str) -> anyhow::Result<String> {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, _) = base
        .rsplit_once('/')
        .context("a database URL names a database")?;
    Ok(match query {
        Some(q) => format!("{server}/postgres?{q}"),
        None => format!("{server}/postgres"),
    })
}

mod rows {
    //! What the audit reads, as diesel reads it.
    use diesel::sql_types::{BigInt, Bool, Nullable, Text};

    #[derive(diesel::QueryableByName)]
    pub struct Reservation {
        #[diesel(sql_type = Text)]
        pub reservation_id: String,
        #[diesel(sql_type = Text)]
        pub customer_id: String,
        #[diesel(sql_type = Text)]
        pub state: String,
        #[diesel(sql_type = BigInt)]
        pub price_units: i64,
        #[diesel(sql_type = Text)]
        pub currency_code: String,
    }

    #[derive(diesel::QueryableByName)]
    pub struct Payment {
        #[diesel(sql_type = Text)]
        pub payment_id: String,
        #[diesel(sql_type = Text)]
        pub reservation_id: String,
        #[diesel(sql_type = Nullable<BigInt>)]
        pub amount_units: Option<i64>,
        #[diesel(sql_type = Nullable<Text>)]
        pub currency_code: Option<String>,
        #[diesel(sql_type = Text)]
        pub state: String,
    }

    #[derive(diesel::QueryableByName)]
    pub struct Notification {
        #[diesel(sql_type = Text)]
        pub reservation_id: String,
        #[diesel(sql_type = Text)]
        pub kind: String,
        #[diesel(sql_type = Text)]
        pub event_id: String,
    }

    #[derive(diesel::QueryableByName)]
    pub struct Published {
        #[diesel(sql_type = Text)]
        pub event_id: String,
        #[diesel(sql_type = Text)]
        pub routing_key: String,
        #[diesel(sql_type = Bool)]
        pub sent: bool,
    }
}

/// Reads reservation's, payment's and notify's tables, directly (not through the proxies).
fn read_databases(reservation: &str, payment: &str, notify: &str) -> anyhow::Result<Snapshot> {
    let outbox = "SELECT event_id, routing_key, sent_at IS NOT NULL AS sent FROM outbox";
    let mut conn = PgConnection::establish(reservation)?;
    let reservations: Vec<rows::Reservation> = sql_query(
        "SELECT reservation_id, customer_id, state, price_units, currency_code FROM reservations",
    )
    .load(&mut conn)?;
    let mut published: Vec<rows::Published> = sql_query(outbox).load(&mut conn)?;
    let mut conn = PgConnection::establish(payment)?;
    let payments: Vec<rows::Payment> = sql_query(
        "SELECT payment_id, reservation_id, amount_units, currency_code, state FROM payments",
    )
    .load(&mut conn)?;
    published.extend(sql_query(outbox).load::<rows::Published>(&mut conn)?);
    let mut conn = PgConnection::establish(notify)?;
    let notifications: Vec<rows::Notification> =
        sql_query("SELECT reservation_id, kind, event_id FROM notifications").load(&mut conn)?;
    Ok(Snapshot {
        reservations: reservations
            .into_iter()
            .map(|r| audit::Reservation {
                reservation_id: r.reservation_id,
                customer_id: r.customer_id,
                state: r.state,
                units: r.price_units,
                currency: r.currency_code,
            })
            .collect(),
        payments: payments
            .into_iter()
            .map(|p| audit::Payment {
                payment_id: p.payment_id,
                reservation_id: p.reservation_id,
                units: p.amount_units,
                currency: p.currency_code,
                state: p.state,
            })
            .collect(),
        notifications: notifications
            .into_iter()
            .map(|n| audit::Notification {
                reservation_id: n.reservation_id,
                kind: n.kind,
                event_id: n.event_id,
            })
            .collect(),
        published: published
            .into_iter()
            .map(|e| audit::Published {
                event_id: e.event_id,
                routing_key: e.routing_key,
                sent: e.sent,
            })
            .collect(),
        ..Snapshot::default()
    })
}

/// When a fault began, was healed, and its window ended.
#[derive(Clone, Copy, Debug)]
struct Window {
    fault: Option<Fault>,
    start: Instant,
    healed: Instant,
    end: Instant,
}

/// Runs the suite; an error when the audit finds a violation.
pub async fn run(plan: &Plan, target: &Target) -> anyhow::Result<()> {
    let mut cluster = Cluster::new(target).await?;
    // Interrupted (Ctrl-C, or the test command's time limit), the suite
    // still stops its processes and removes its databases and queues.
    let result = tokio::select! {
        result = async {
            cluster.launch().await?;
            schedule(plan, &mut cluster).await
        } => result,
        () = ssak3_common::server::shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    let logs = cluster.logs.path().to_owned();
    let kept = result.is_err();
    let removed = cluster.remove(kept).await;
    if kept {
        println!("the services' logs are kept in {}", logs.display());
    }
    match removed {
        Err(e) if result.is_ok() => Err(e.context("removing the suite's databases and queues")),
        _ => result,
    }
}

async fn schedule(plan: &Plan, cluster: &mut Cluster) -> anyhow::Result<()> {
    let reservation = cluster.processes[cluster.index(Service::Reservation)].addr;
    let tokens = cluster.tokens.clone();
    let channel: Channel =
        tonic::transport::Endpoint::from_shared(format!("http://{reservation}"))?
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
    let clients = Clients {
        channel,
        history: Arc::new(Mutex::new(History::default())),
        stop: Arc::new(AtomicBool::new(false)),
        patience: Duration::from_secs(60),
        company: Arc::new(tokens.issue(
            load::COMPANY,
            Role::Cleaner,
            Duration::from_secs(3_600),
        )?),
    };
    let mut running = tokio::task::JoinSet::new();
    for n in 0..plan.clients {
        let token = tokens.issue(
            &format!("faults-customer-{n}"),
            Role::Customer,
            Duration::from_secs(3_600),
        )?;
        running.spawn(clients.clone().run(n, token));
    }
    let began = Instant::now();
    println!(
        "{} clients booking; {} faults, each held {} s and watched {} s after",
        plan.clients,
        plan.faults.len(),
        plan.hold.as_secs(),
        plan.observe.as_secs()
    );
    // A quiet start for comparison.
    tokio::time::sleep(plan.observe).await;
    let mut windows = vec![Window {
        fault: None,
        start: began,
        healed: began,
        end: Instant::now(),
    }];
    for fault in &plan.faults {
        let start = Instant::now();
        println!(
            "{:>6.1} s  {}",
            start.duration_since(began).as_secs_f64(),
            fault.describe()
        );
        cluster.inject(*fault).await?;
        tokio::time::sleep(plan.hold).await;
        cluster.heal(*fault).await?;
        let healed = Instant::now();
        tokio::time::sleep(plan.observe).await;
        windows.push(Window {
            fault: Some(*fault),
            start,
            healed,
            end: Instant::now(),
        });
    }
    clients
        .stop
        .store(true, std::sync::atomic::Ordering::Relaxed);
    while running.join_next().await.is_some() {}
    let load_ended = Instant::now();
    let history = std::mem::take(&mut *clients.history.lock().unwrap_or_else(|e| e.into_inner()));
    print_table(&windows, &history);

    // Settle, then audit: the last snapshot that passes, or the violations
    // still there when the time is up.
    let bookings: Vec<audit::Booking> =
        history.bookings.iter().map(|t| t.booking.clone()).collect();
    let mut violations;
    loop {
        let snapshot = cluster.snapshot(plan.clients).await?;
        violations = audit::audit(&bookings, &snapshot);
        if violations.is_empty() || load_ended.elapsed() > plan.settle {
            summarize(&history, &snapshot, load_ended.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if violations.is_empty() {
        println!("audit: no violation");
        Ok(())
    } else {
        for v in violations.iter().take(50) {
            println!("VIOLATION {v}");
        }
        anyhow::bail!("the audit found {} violations", violations.len())
    }
}

fn summarize(history: &History, snapshot: &Snapshot, settled: Duration) {
    let confirmed = history
        .bookings
        .iter()
        .filter(|b| b.booking.confirmed.is_some())
        .count();
    let cancelled = history
        .bookings
        .iter()
        .filter(|b| b.booking.cancelled)
        .count();
    let cleaned = history
        .bookings
        .iter()
        .filter(|b| b.booking.cleaned)
        .count();
    let by_state = snapshot
        .reservations
        .iter()
        .fold(BTreeMap::<&str, usize>::new(), |mut m, r| {
            *m.entry(r.state.as_str()).or_default() += 1;
            m
        });
    println!(
        "{} bookings, {confirmed} confirmed to clients ({cancelled} cancelled, {cleaned} cleaned); \
         reservation holds {by_state:?}; {} payments, {} notifications, {} my page views; \
         audited {:.1} s after the load",
        history.bookings.len(),
        snapshot.payments.len(),
        snapshot.notifications.len(),
        snapshot.views.len(),
        settled.as_secs_f64()
    );
}

/// The table: per fault, bookings started in its window, those confirmed,
/// those retried, every answer by code, and the time from the fault's end
/// to the first booking confirmed by a call made after it.
fn print_table(windows: &[Window], history: &History) {
    println!(
        "\n{:<34} {:>9} {:>9} {:>8} {:>11}  answers by code",
        "fault", "attempted", "confirmed", "retried", "recovered"
    );
    for w in windows {
        let started: Vec<_> = history
            .bookings
            .iter()
            .filter(|b| b.started >= w.start && b.started < w.end)
            .collect();
        let confirmed = started
            .iter()
            .filter(|b| b.booking.confirmed.is_some())
            .count();
        let retried = started.iter().filter(|b| b.attempts > 1).count();
        let mut codes = BTreeMap::<String, usize>::new();
        for a in history
            .attempts
            .iter()
            .filter(|a| a.answered >= w.start && a.answered < w.end)
        {
            *codes.entry(format!("{:?}", a.code)).or_default() += 1;
        }
        let recovered = history
            .attempts
            .iter()
            .filter(|a: &&Attempt| a.confirmed && a.sent >= w.healed)
            .map(|a| a.answered)
            .min()
            .map_or_else(
                || "never".to_owned(),
                |at| format!("{:.2} s", at.duration_since(w.healed).as_secs_f64()),
            );
        let name = w
            .fault
            .map_or_else(|| "(none: quiet start)".to_owned(), Fault::describe);
        let codes: Vec<String> = codes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        println!(
            "{name:<34} {:>9} {:>9} {:>8} {:>11}  {}",
            started.len(),
            confirmed,
            retried,
            if w.fault.is_some() {
                recovered
            } else {
                "—".to_owned()
            },
            codes.join(", ")
        );
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_pointed_through_a_proxy() -> anyhow::Result<()> {
        let proxy = SocketAddr::from(([127, 0, 0, 1], 40_000));
        assert_eq!(
            through(
                "postgres://postgres@127.0.0.1:5432/ssak3_x?sslmode=disable",
                proxy
            )?,
            "postgres://postgres@127.0.0.1:40000/ssak3_x?sslmode=disable"
        );
        assert_eq!(
            through("amqp://guest:guest@localhost:5672/%2f", proxy)?,
            "amqp://guest:guest@127.0.0.1:40000/%2f"
        );
        assert_eq!(
            address_of("postgres://postgres@127.0.0.1/db", 5432)?,
            SocketAddr::from(([127, 0, 0, 1], 5432))
        );
        assert_eq!(
            database_name("postgres://p@h:1/name?x=y").as_deref(),
            Some("name")
        );
        assert_eq!(
            admin_url("postgres://p@h:1/name?x=y")?,
            "postgres://p@h:1/postgres?x=y"
        );
        Ok(())
    }
}
