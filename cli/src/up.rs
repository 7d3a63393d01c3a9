//! `ssak3 up`: all four services in one process.
//!
//! Everything that can be wrong with the set-up is checked before a service
//! starts, and reported in a sentence: a data directory that cannot be
//! written or is in use by another `ssak3 up`, a database or broker that
//! cannot be reached, a port in use.

use std::{future::Future, net::SocketAddr, path::PathBuf, pin::Pin, time::Duration};

use anyhow::Context as _;
use ssak3_common::{
    auth::{AuthConfig, Role, signing::DevelopmentKeys},
    config::Config,
    db::{self, DatabaseUrl},
    events::{Bus, amqp::AmqpBus, embedded::EmbeddedBus},
    server::{HealthStatus, health_of},
};
use tokio::sync::watch;

use crate::{
    Service, UpArgs,
    settings::{Settings, topology},
    tokens::Tokens,
};

/// The company `ssak3 up` registers, so that the walkthrough and the demo can book it.
pub const DEMO_COMPANY: (&str, &str) = ("acme-cleaning", "Acme Cleaning");

/// Token verification for a system of development: the configured issuer,
/// or else the development issuer of the data directory; reservation's
/// development key towards payment, unless one is configured.
fn development_auth(configured: &AuthConfig, keys: &DevelopmentKeys) -> AuthConfig {
    let mut auth = configured.clone();
    if auth.jwks.is_none() && auth.jwks_file.is_none() && auth.jwks_url.is_none() {
        auth.jwks_file = Some(keys.jwks_file.clone());
    }
    if auth.service_key.is_none() && auth.service_key_file.is_none() {
        auth.service_key_file = Some(keys.reservation_key_file.clone());
        auth.service_keys = Some(keys.reservation.jwks_json());
        auth.service_keys_file = None;
    }
    auth
}

/// Where each service's data and the events go.
#[derive(Debug)]
pub struct Plan {
    data_dir: PathBuf,
    database_url: Option<DatabaseUrl>,
    amqp_url: Option<String>,
    /// Held while the system runs, when its data or events are in `data_dir`.
    lock: Option<std::fs::File>,
}

/// Takes the data directory for this process: two systems over the same
/// SQLite files and in-process queues would both deliver every event. The
/// lock is the operating system's, so a process that dies gives it up.
fn lock_data_dir(data_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read as _, Seek as _, Write as _};
    let path = data_dir.join("ssak3.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            // The pid the holder wrote; anything else in the file is not shown.
            let mut holder = String::new();
            let _ = (&file).take(16).read_to_string(&mut holder);
            let holder = match holder.trim().parse::<u32>() {
                Ok(pid) => format!(" (pid {pid})"),
                Err(_) => String::new(),
            };
            anyhow::bail!(
                "data directory {} is in use by another ssak3 process{holder}; \
                 stop it, or give this one another --data-dir",
                data_dir.display()
            );
        }
        Err(std::fs::TryLockError::Error(error))
            if error.kind() == std::io::ErrorKind::Unsupported =>
        {
            eprintln!(
                "ssak3: the file system of {} cannot lock files: nothing keeps a second ssak3 up out of it",
                data_dir.display()
            );
            return Ok(file);
        }
        Err(std::fs::TryLockError::Error(error)) => {
            return Err(error).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}

impl Plan {
    pub fn new(config: &Config, args: &UpArgs) -> anyhow::Result<Self> {
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| config.data_dir.clone());
        let database_url = args
            .database_url
            .as_deref()
            .or(config.database_url.as_deref())
            .map(DatabaseUrl::parse)
            .transpose()?;
        // SQLite files or the in-process bus live in the data directory: check it once.
        if database_url.is_none() || args.amqp_url.is_none() {
            db::ensure_writable_dir(&data_dir)?;
        }
        Ok(Self {
            data_dir,
            database_url,
            amqp_url: args.amqp_url.clone(),
            lock: None,
        })
    }

    /// Keeps the data directory for this process while the plan lives,
    /// when the system's data or events are in it.
    fn take_data_dir(&mut self) -> anyhow::Result<()> {
        if self.database_url.is_none() || self.amqp_url.is_none() {
            self.lock = Some(lock_data_dir(&self.data_dir)?);
        }
        Ok(())
    }

    /// The database of `service`: `<url>_<service>`, or `DATA_DIR/<service>.db`.
    pub fn database(&self, service: Service) -> anyhow::Result<DatabaseUrl> {
        match &self.database_url {
            Some(url) => Ok(url.for_one_of_many(service.name())),
            None => Ok(DatabaseUrl::Sqlite(
                self.data_dir.join(format!("{}.db", service.name())),
            )),
        }
    }

    /// The event bus: RabbitMQ when asked for (checked now), else the in-process one.
    async fn bus(&self, config: &Config) -> anyhow::Result<Bus> {
        match &self.amqp_url {
            Some(url) => {
                let bus = AmqpBus::new(url, &config.events, "up", topology());
                bus.check().await?;
                Ok(Bus::Amqp(bus))
            }
            None => Ok(Bus::Embedded(
                EmbeddedBus::open(&self.data_dir.join("events.db"), &config.events, topology())
                    .await?,
            )),
        }
    }

    fn describe(&self) -> String {
        let data = match &self.database_url {
            Some(url) => format!("PostgreSQL {}_<service>", url.redacted()),
            None => format!("SQLite in {}", self.data_dir.display()),
        };
        let events = match &self.amqp_url {
            Some(url) => format!("RabbitMQ {}", db::redact(url)),
            None => format!(
                "in-process bus in {}",
                self.data_dir.join("events.db").display()
            ),
        };
        format!("data: {data}; events: {events}")
    }
}

/// A service's `run`, given the future that tells it to stop.
type Run = Box<
    dyn FnOnce(
            Pin<Box<dyn Future<Output = ()> + Send>>,
        ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>
        + Send,
>;

/// The four services, bound and ready to run.
pub struct System {
    endpoints: Vec<(&'static str, SocketAddr)>,
    admin: Vec<SocketAddr>,
    apps: Vec<(&'static str, Run)>,
    tokens: Tokens,
    plan: Plan,
}

impl System {
    /// Checks the set-up, prepares the databases and binds all four ports.
    pub async fn start(settings: Settings, args: &UpArgs) -> anyhow::Result<Self> {
        let config = &settings.common;
        let mut plan = Plan::new(config, args)?;
        plan.take_data_dir()?;
        let tokens = Tokens::of(&plan.data_dir, &config.auth)?;
        let keys = tokens
            .development_keys()
            .context("`ssak3 up` signs with the development keys of its data directory")?;
        let auth = development_auth(&config.auth, keys);
        anyhow::ensure!(
            args.base_port > 0,
            "--base-port must be a port number above 0"
        );
        let at = |offset: u16| -> anyhow::Result<SocketAddr> {
            let port = args
                .base_port
                .checked_add(offset)
                .context("--base-port is too high: four consecutive ports are needed")?;
            Ok(SocketAddr::new(args.host, port))
        };
        let mut configs = Vec::new();
        for (offset, service) in (0u16..).zip(Service::ALL) {
            let database = plan.database(service)?;
            tokio::task::spawn_blocking({
                let database = database.clone();
                move || database.create_if_missing()
            })
            .await??;
            configs.push(Config {
                listen: Some(at(offset)?),
                database_url: Some(database.to_url()),
                auth: auth.clone(),
                ..config.clone()
            });
        }
        let bus = plan.bus(config).await?;
        let reservation_settings = ssak3_reservation::Settings {
            payment_endpoint: match &args.payment_endpoint {
                Some(endpoint) => endpoint.clone(),
                None => format!("http://{}", at(1)?),
            },
            companies: vec![ssak3_reservation::config::CompanySeed {
                company_id: DEMO_COMPANY.0.into(),
                display_name: DEMO_COMPANY.1.into(),
            }],
            ..settings.reservation.clone()
        };

        let reservation =
            ssak3_reservation::App::build(&configs[0], &reservation_settings, bus.clone()).await?;
        let payment =
            ssak3_payment::App::build(&configs[1], &settings.payment, bus.clone()).await?;
        let notify = ssak3_notify::App::build(&configs[2], &settings.notify, bus.clone()).await?;
        let mypage = ssak3_mypage::App::build(&configs[3], bus).await?;
        let admin = vec![
            reservation.admin_addr()?,
            payment.admin_addr()?,
            notify.admin_addr()?,
            mypage.admin_addr()?,
        ];
        let endpoints = vec![
            ("reservation", reservation.local_addr()?),
            ("payment", payment.local_addr()?),
            ("notify", notify.local_addr()?),
            ("mypage", mypage.local_addr()?),
        ];
        let apps: Vec<(&'static str, Run)> = vec![
            (
                "reservation",
                Box::new(|stop| Box::pin(reservation.run(stop))),
            ),
            ("payment", Box::new(|stop| Box::pin(payment.run(stop)))),
            ("notify", Box::new(|stop| Box::pin(notify.run(stop)))),
            ("mypage", Box::new(|stop| Box::pin(mypage.run(stop)))),
        ];
        Ok(Self {
            endpoints,
            admin,
            apps,
            tokens,
            plan,
        })
    }

    pub fn endpoints(&self) -> &[(&'static str, SocketAddr)] {
        &self.endpoints
    }

    /// Runs every service until `shutdown` or until one of them fails. With
    /// `announce`, prints the welcome once all four serve.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()>,
        announce: bool,
    ) -> anyhow::Result<()> {
        let welcome = if announce {
            Some(self.welcome()?)
        } else {
            None
        };
        let endpoints = self.endpoints.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut services = tokio::task::JoinSet::new();
        for (name, run) in self.apps {
            let mut stop = stop_rx.clone();
            let stopped = Box::pin(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            });
            services.spawn(async move {
                run(stopped)
                    .await
                    .with_context(|| format!("{name} service"))
            });
        }
        let mut outcome = Ok(());
        let ready = async {
            for (_, addr) in &endpoints {
                while health_of(*addr).await != Some(HealthStatus::Serving) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            if let Some(welcome) = &welcome {
                println!("{welcome}");
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = shutdown => {}
            () = ready => {}
            Some(finished) = services.join_next() => {
                // A service stopped on its own: report why and stop the rest.
                outcome = finished.context("service task failed").and_then(|r| r);
            }
        }
        let _ = stop_tx.send(true);
        while let Some(finished) = services.join_next().await {
            let result = finished.context("service task failed").and_then(|r| r);
            if outcome.is_ok() {
                outcome = result;
            }
        }
        outcome
    }

    /// What a person needs to start: endpoints, tokens, a command to paste.
    fn welcome(&self) -> anyhow::Result<String> {
        use std::fmt::Write as _;
        let day = Duration::from_secs(86_400);
        let customer = self.tokens.issue("alice", Role::Customer, day)?;
        let cleaner = self.tokens.issue(DEMO_COMPANY.0, Role::Cleaner, day)?;
        let mut text = format!("Ssak3 is up ({}).\n", self.plan.describe());
        for ((name, addr), admin) in self.endpoints.iter().zip(&self.admin) {
            writeln!(
                text,
                "  {name:<12} grpc://{addr}   metrics http://{admin}/metrics"
            )?;
        }
        writeln!(text, "\nCustomer token (alice):\n  {customer}")?;
        writeln!(text, "Cleaner token (acme-cleaning):\n  {cleaner}")?;
        let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
            .format("%Y-%m-%dT10:00:00Z")
            .to_string();
        let reservation = self.endpoints[0].1;
        writeln!(
            text,
            "\nBook and pay (run it twice: same reservation, one charge):\n  \
             grpcurl -plaintext -H \"authorization: Bearer {customer}\" \\\n    \
             -d '{{\"request_id\": \"demo-1\", \"cleaner_id\": \"acme-cleaning\", \
             \"address\": \"12 Gangnam-daero, Seoul\", \"scheduled_at\": \"{tomorrow}\", \
             \"service_type\": \"SERVICE_TYPE_STANDARD\"}}' \\\n    \
             {reservation} ssak3.reservation.v1.ReservationService/CreateReservation"
        )?;
        writeln!(
            text,
            "\nThe whole story at once: ssak3 demo --target {reservation}"
        )?;
        write!(
            text,
            "Ctrl-C stops all services; the data stays for the next start."
        )?;
        Ok(text)
    }
}

/// A system of its own for `ssak3 demo --standalone` and `ssak3 bench`:
/// in a temporary directory, on free loopback ports, running in the
/// background until [`Background::stop`]. Given a PostgreSQL URL or a
/// broker, it uses databases and a namespace of its own there, and removes
/// them when it stops.
pub struct Background {
    /// Reservation, payment, notify, mypage.
    pub addrs: [SocketAddr; 4],
    /// Tokens the system accepts.
    pub tokens: Tokens,
    /// The system's event bus (benchmarks watch its queues drain).
    bus: Bus,
    plan: Plan,
    stop: tokio::sync::oneshot::Sender<()>,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Background {
    /// Starts the system (with `database_url`, `amqp_url`, `payment_endpoint`
    /// taken from `args`) and waits until all four serve.
    pub async fn start(mut settings: Settings, mut args: UpArgs) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("no temporary directory")?;
        let scratch = &uuid::Uuid::new_v4().simple().to_string()[..8];
        args.database_url = args
            .database_url
            .map(|url| anyhow::Ok(DatabaseUrl::parse(&url)?.for_one_of_many(scratch).to_url()))
            .transpose()?;
        if args.amqp_url.is_some() {
            let events = &mut settings.common.events;
            events.namespace = format!("{}-{scratch}", events.namespace);
        }
        args.data_dir = Some(dir.path().to_owned());
        args.host = std::net::IpAddr::from([127, 0, 0, 1]);
        args.base_port = ssak3_common::server::free_consecutive_ports(4)?;
        let plan = Plan::new(&settings.common, &args)?;
        let bus = plan.bus(&settings.common).await?;
        let system = System::start(settings, &args).await?;
        let tokens = system.tokens.clone();
        let e = system.endpoints();
        let addrs = [e[0].1, e[1].1, e[2].1, e[3].1];
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(system.run_until(
            async {
                let _ = stopped.await;
            },
            false,
        ));
        for addr in addrs {
            while health_of(addr).await != Some(HealthStatus::Serving) {
                anyhow::ensure!(!running.is_finished(), "the system stopped while starting");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(Self {
            addrs,
            tokens,
            bus,
            plan,
            stop,
            running,
            _dir: dir,
        })
    }

    /// Events waiting for their consumers, summed over all queues.
    pub async fn events_waiting(&self) -> anyhow::Result<u64> {
        let mut waiting = 0;
        for subscription in topology().subscriptions() {
            waiting += self.bus.queue_depth(subscription.queue).await?;
        }
        Ok(waiting)
    }

    /// Stops the system, removes its databases and broker objects, and
    /// reports how it ended.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        // Whatever became of the system, its scratch databases and queues go.
        let outcome = self
            .running
            .await
            .context("the system failed")
            .and_then(|ended| ended);
        if self.plan.database_url.is_some() {
            for service in Service::ALL {
                let database = self.plan.database(service)?;
                tokio::task::spawn_blocking(move || database.drop_if_exists()).await??;
            }
        }
        if let Bus::Amqp(bus) = &self.bus {
            bus.delete_topology().await?;
        }
        outcome
    }
}
