//! `ssak3`: the one-process runner and operator commands.
//!
//! - `ssak3 up` runs all four services in this process: SQLite files and the
//!   durable in-process event bus in the data directory, the development
//!   signing key unless configured; `--database-url` and `--amqp-url` switch
//!   to PostgreSQL and RabbitMQ.
//! - `ssak3 demo` drives the whole story against a running system, or its own.
//! - `ssak3 serve SERVICE` runs one service, as in a container; it refuses
//!   to start without the issuer's public keys (and reservation without its
//!   own key, payment without reservation's certificate).
//! - `ssak3 migrate` applies the database migrations and exits.
//! - `ssak3 check` checks a deployed release's services (what `helm test` runs).
//! - `ssak3 token` prints a bearer token the running system accepts.

mod bench;
mod check;
mod demo;
mod faults;
mod settings;
mod tokens;
mod up;

use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use ssak3_common::{
    auth::{Role, Verifier},
    config::Config,
    db::{Database, DatabaseUrl, Schema},
    events::{Bus, amqp::AmqpBus},
    server::shutdown_signal,
    telemetry,
};

use crate::{
    settings::{Settings, topology},
    tokens::Tokens,
};

/// jemalloc, whose background threads give memory back to the system once
/// it has been free for a while (ten seconds by default). With glibc's
/// allocator a service under sustained load kept growing although its live
/// heap did not (docs/benchmarks.md, "Memory under sustained load").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "ssak3",
    version,
    about = "Home-cleaning bookings: run the services, try them, issue tokens."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where `up` runs and what it runs on.
#[derive(clap::Args, Clone, Debug)]
pub struct UpArgs {
    /// Where the services keep their SQLite files and the event bus.
    #[arg(long, env = "SSAK3_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Host the services listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port of the reservation service; payment, notify and mypage take the next three.
    #[arg(long, default_value_t = 50051)]
    base_port: u16,
    /// PostgreSQL instead of SQLite: each service gets the database `<name>_<service>`
    /// (created if missing), e.g. postgres://postgres@127.0.0.1:5432/ssak3.
    #[arg(long)]
    database_url: Option<String>,
    /// Carry events over this RabbitMQ broker instead of the in-process bus.
    #[arg(long)]
    amqp_url: Option<String>,
    /// Where reservation calls payment (the breaker benchmark puts a relay that stalls in between).
    #[arg(skip)]
    payment_endpoint: Option<String>,
}

impl UpArgs {
    /// A system of its own: SQLite and the in-process bus; where and on which
    /// ports is for [`up::Background`] to choose.
    fn own() -> Self {
        Self {
            data_dir: None,
            host: IpAddr::from([127, 0, 0, 1]),
            base_port: 0,
            database_url: None,
            amqp_url: None,
            payment_endpoint: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// The bare tonic echo service alone.
    Echo,
    /// CreateReservation (unique request ids, one customer per client).
    Create,
    /// GetMyReservation on the read model.
    GetPage,
    /// 100 clients of CreateReservation, and echo in the same run: the rate ratio.
    Siege,
    /// Time from a booking's commit to my page PAID and to the company's notification.
    EventLag,
    /// Payment stalls under load a quarter of the way in and answers again
    /// at three quarters: when the breaker opens, what it sheds, when
    /// bookings are confirmed again.
    Breaker,
    /// A well-behaved client's p99 quietly and while idle connections,
    /// made-up paths and garbage requests flood the reservation service.
    Flood,
    /// Sustained bookings (open loop, 200/s unless --rate) for --duration-secs,
    /// memory sampled every --sample-secs: RSS should level off.
    Soak,
    /// The fault suite: the services as `ssak3 serve` processes on PostgreSQL
    /// and RabbitMQ, retrying clients, a schedule of faults, then an audit of
    /// what clients were told against the databases and the broker.
    Faults,
}

#[derive(Subcommand)]
enum Command {
    /// Run all services in this process (ports 50051–50054 by default).
    Up(UpArgs),
    /// Walk through the whole story (book, notify, complete, cancel, refund) and print a timeline.
    Demo {
        /// Reservation service of the system to drive; the others are on the next three ports.
        #[arg(long, default_value = "127.0.0.1:50051")]
        target: std::net::SocketAddr,
        /// Start a system of its own (in a temporary directory, on free ports) instead.
        #[arg(long)]
        standalone: bool,
        /// The data directory of the system driven, whose development key signs the tokens.
        #[arg(long, env = "SSAK3_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Load-test a scenario and print rate, latency percentiles and errors.
    Bench {
        #[arg(value_enum)]
        scenario: Scenario,
        /// Concurrent clients (in flight at most, open loop); 100, or 16 for faults.
        #[arg(long)]
        clients: Option<usize>,
        /// HTTP/2 connections the clients share.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// How long to run.
        #[arg(long, default_value_t = 60)]
        duration_secs: u64,
        /// Stop after this many calls instead.
        #[arg(long)]
        requests: Option<u64>,
        /// Open loop at this many calls per second (closed loop without it).
        #[arg(long)]
        rate: Option<u32>,
        /// A running system's reservation address (the others on the next ports);
        /// without it, the bench starts its own in a temporary directory.
        #[arg(long)]
        target: Option<std::net::SocketAddr>,
        /// For its own system: PostgreSQL (as `ssak3 up --database-url`).
        #[arg(long)]
        database_url: Option<String>,
        /// For its own system: RabbitMQ.
        #[arg(long)]
        amqp_url: Option<String>,
        /// How results are printed: text, or one JSON object per line
        /// (progress goes to stderr, on a terminal only).
        #[arg(long, value_enum, default_value_t = bench::Output::Text)]
        output: bench::Output,
        /// Soak: how often memory is sampled.
        #[arg(long, default_value_t = 30)]
        sample_secs: u64,
        /// Soak: sample these processes (e.g. `ssak3 serve` services driven
        /// with --target) instead of this one.
        #[arg(long = "pid")]
        pids: Vec<u32>,
        /// Faults: one fault of each kind, briefly (what the test command runs).
        #[arg(long)]
        short: bool,
    },
    /// Run one service, configured by SSAK3_* variables (SSAK3_LISTEN, SSAK3_DATABASE_URL, …).
    Serve { service: Service },
    /// Apply the database migrations, then exit: of one service (its SSAK3_DATABASE_URL),
    /// or without a service, of the databases `ssak3 up` uses.
    Migrate {
        #[arg(value_enum)]
        service: Option<Service>,
        /// Without a service: as `ssak3 up --database-url`.
        #[arg(long)]
        database_url: Option<String>,
        /// Without a service: as `ssak3 up --data-dir`.
        #[arg(long, env = "SSAK3_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// The database must exist already: do not connect to the server's
        /// `postgres` database to create it (for users without CREATEDB).
        #[arg(long)]
        no_create_database: bool,
    },
    /// Check deployed services (what `helm test` runs): for each NAME=HOST:PORT, gRPC health
    /// is SERVING and server reflection lists `ssak3.NAME.v1.*`.
    Check {
        #[arg(required = true)]
        targets: Vec<check::Target>,
        /// Deadline of each connection and call.
        #[arg(long, default_value_t = 5)]
        timeout_secs: u64,
    },
    /// Print a bearer token signed with an issuer key: the one named, else
    /// SSAK3_AUTH__ISSUER_KEY_FILE, else the development key of the data directory.
    Token {
        #[arg(long, value_enum)]
        role: TokenRole,
        /// Customer id, company id or operator name.
        #[arg(long)]
        subject: String,
        /// How long the token is valid, in seconds (at most the configured
        /// SSAK3_AUTH__MAX_TOKEN_LIFETIME_SECS, a day by default).
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
        /// The data directory whose development key signs (as `ssak3 up --data-dir`).
        #[arg(long, env = "SSAK3_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Sign with this issuer private key (PEM) instead, e.g. the evaluation
        /// issuer key a chart keeps in a Secret.
        #[arg(long, conflicts_with = "data_dir")]
        key_file: Option<PathBuf>,
        /// The name of that key: its certificate's common name, which starts its key id.
        #[arg(long, default_value = "ssak3-issuer")]
        key_name: String,
    },
}

/// Whom a development token may speak for (services sign their own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TokenRole {
    Customer,
    Cleaner,
    Operator,
}

impl From<TokenRole> for Role {
    fn from(role: TokenRole) -> Self {
        match role {
            TokenRole::Customer => Role::Customer,
            TokenRole::Cleaner => Role::Cleaner,
            TokenRole::Operator => Role::Operator,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Service {
    Reservation,
    Payment,
    Notify,
    Mypage,
}

impl Service {
    pub const ALL: [Service; 4] = [Self::Reservation, Self::Payment, Self::Notify, Self::Mypage];

    pub fn name(self) -> &'static str {
        match self {
            Self::Reservation => "reservation",
            Self::Payment => "payment",
            Self::Notify => "notify",
            Self::Mypage => "mypage",
        }
    }

    /// The service's schema: the migrations of its tables.
    fn schema(self) -> Schema {
        match self {
            Self::Reservation => ssak3_reservation::storage::SCHEMA,
            Self::Payment => ssak3_payment::storage::SCHEMA,
            Self::Notify => ssak3_notify::storage::SCHEMA,
            Self::Mypage => ssak3_mypage::storage::SCHEMA,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = Settings::load()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e:#}"))
        .and_then(|config| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(run(cli.command, config))
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, whatever the causes (libpq's messages span several).
            let message = format!("{error:#}");
            let message: Vec<&str> = message
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("ssak3: {}", message.join(" "));
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    let config = &settings.common;
    match command {
        Command::Token {
            role,
            subject,
            ttl_secs,
            data_dir,
            key_file,
            key_name,
        } => {
            let keys = match key_file {
                Some(path) => Tokens::from_key_file(&path, &key_name, &config.auth)?,
                None => issuer_tokens(config, data_dir.as_deref())?,
            };
            println!(
                "{}",
                keys.issue(&subject, role.into(), Duration::from_secs(ttl_secs))?
            );
            Ok(())
        }
        Command::Serve { service } => {
            let _telemetry = telemetry::init(config, &[service.name()]);
            serve(service, &settings).await
        }
        Command::Up(args) => {
            let services = Service::ALL.map(Service::name);
            let _telemetry = telemetry::init(config, &services);
            up::System::start(settings.clone(), &args)
                .await?
                .run_until(shutdown_signal(), true)
                .await
        }
        Command::Demo {
            target,
            standalone,
            data_dir,
        } => {
            if standalone {
                let system = up::Background::start(settings.clone(), UpArgs::own()).await?;
                let outcome = demo::run(system.addrs[0], &system.tokens).await;
                system.stop().await?;
                outcome
            } else {
                demo::run(target, &issuer_tokens(config, data_dir.as_deref())?).await
            }
        }
        Command::Bench {
            scenario,
            clients,
            connections,
            duration_secs,
            requests,
            rate,
            target,
            database_url,
            amqp_url,
            sample_secs,
            pids,
            short,
            output,
        } => {
            bench::set_output(output);
            if scenario == Scenario::Faults {
                let clients = clients.unwrap_or(16);
                let plan = if short {
                    faults::Plan::short(clients)
                } else {
                    faults::Plan::full(clients)
                };
                let target = faults::Target {
                    database_url: database_url.unwrap_or_else(|| {
                        "postgres://postgres@127.0.0.1:5432/ssak3?sslmode=disable".into()
                    }),
                    amqp_url: amqp_url
                        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
                };
                return faults::run(&plan, &target).await;
            }
            let clients = clients.unwrap_or(100);
            let rate = match (scenario, rate) {
                (Scenario::Soak, None) => Some(200),
                (_, rate) => rate,
            };
            let soak = bench::SoakArgs {
                every: Duration::from_secs(sample_secs.max(1)),
                pids,
            };
            let load = bench::Load {
                clients,
                connections,
                duration: Duration::from_secs(duration_secs),
                requests,
                rate,
            };
            run_bench(
                scenario,
                load,
                soak,
                target,
                database_url,
                amqp_url,
                settings.clone(),
            )
            .await
        }
        Command::Check {
            targets,
            timeout_secs,
        } => check::run(&targets, Duration::from_secs(timeout_secs)).await,
        Command::Migrate {
            service,
            database_url,
            data_dir,
            no_create_database,
        } => {
            let _telemetry = telemetry::init(config, &[]);
            let targets: Vec<(Service, DatabaseUrl)> = match service {
                None => {
                    let args = UpArgs {
                        data_dir,
                        database_url,
                        ..UpArgs::own()
                    };
                    let plan = up::Plan::new(config, &args)?;
                    Service::ALL
                        .into_iter()
                        .map(|s| Ok((s, plan.database(s)?)))
                        .collect::<anyhow::Result<_>>()?
                }
                Some(service) => {
                    vec![(service, DatabaseUrl::for_service(config, service.name())?)]
                }
            };
            for (service, url) in targets {
                if no_create_database {
                    migrate_existing(service, &url).await?;
                } else {
                    migrate(service, &url).await?;
                }
                println!("{:<12} migrated  {}", service.name(), url.redacted());
            }
            Ok(())
        }
    }
}

async fn serve(service: Service, settings: &Settings) -> anyhow::Result<()> {
    let config = &settings.common;
    // Refuse weak or development key material before anything starts.
    Verifier::from_config(&config.auth, service.name(), service == Service::Payment)
        .await?
        .refuse_development_keys()
        .await?;
    if service == Service::Reservation {
        config.auth.service_identity(service.name())?;
    }
    let bus = Bus::Amqp(AmqpBus::new(
        &config.amqp_url,
        &config.events,
        service.name(),
        topology(),
    ));
    let shutdown = shutdown_signal();
    match service {
        Service::Reservation => {
            ssak3_reservation::App::build(config, &settings.reservation, bus)
                .await?
                .run(shutdown)
                .await
        }
        Service::Payment => {
            ssak3_payment::App::build(config, &settings.payment, bus)
                .await?
                .run(shutdown)
                .await
        }
        Service::Notify => {
            ssak3_notify::App::build(config, &settings.notify, bus)
                .await?
                .run(shutdown)
                .await
        }
        Service::Mypage => {
            ssak3_mypage::App::build(config, bus)
                .await?
                .run(shutdown)
                .await
        }
    }
}

/// Applies `service`'s migrations to `url`, creating the database if missing.
pub async fn migrate(service: Service, url: &DatabaseUrl) -> anyhow::Result<()> {
    url.create_if_missing()?;
    migrate_existing(service, url).await
}

/// Applies `service`'s migrations to the database `url`, which must exist.
async fn migrate_existing(service: Service, url: &DatabaseUrl) -> anyhow::Result<()> {
    Database::connect(url, 1)?
        .migrate(service.schema())
        .await
        .with_context(|| format!("{} database migration", service.name()))
}

/// Tokens for a running system: signed with `SSAK3_AUTH__ISSUER_KEY_FILE`
/// (an issuer key named `ssak3-issuer`) when no data directory is named,
/// else with the development key of the data directory `ssak3 up` uses
/// (`--data-dir`, `SSAK3_DATA_DIR`, or the configured default).
fn issuer_tokens(config: &Config, data_dir: Option<&std::path::Path>) -> anyhow::Result<Tokens> {
    match (data_dir, &config.auth.issuer_key_file) {
        (None, Some(key_file)) => Tokens::from_key_file(key_file, "ssak3-issuer", &config.auth),
        _ => Tokens::of(data_dir.unwrap_or(&config.data_dir), &config.auth),
    }
}

/// How long the consumers of a system of its own took to catch up after the
/// load: a rate that leaves a growing backlog behind is not sustainable.
async fn report_backlog(system: Option<&up::Background>) -> anyhow::Result<()> {
    let Some(system) = system else {
        return Ok(());
    };
    let ended = std::time::Instant::now();
    loop {
        let waiting = system.events_waiting().await?;
        let after = ended.elapsed().as_secs_f64();
        if waiting == 0 {
            bench::emit(
                || format!("events: every queue empty {after:.1} s after the load ended"),
                serde_json::json!({"result": "backlog", "waiting": 0, "empty_after_seconds": after}),
            );
            return Ok(());
        }
        if after > 120.0 {
            bench::emit(
                || format!("events: {waiting} still waiting {after:.0} s after the load ended"),
                serde_json::json!({"result": "backlog", "waiting": waiting, "after_seconds": after}),
            );
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Runs a benchmark scenario against `target` or a system of its own.
async fn run_bench(
    scenario: Scenario,
    load: bench::Load,
    soak: bench::SoakArgs,
    target: Option<std::net::SocketAddr>,
    database_url: Option<String>,
    amqp_url: Option<String>,
    settings: Settings,
) -> anyhow::Result<()> {
    // Traces are recorded as in production (no exporter, no log lines).
    telemetry::install(
        None,
        telemetry::ServiceTracers::single(
            &opentelemetry_sdk::trace::SdkTracerProvider::builder().build(),
        ),
    );
    if scenario == Scenario::Echo {
        bench::echo(&load).await?.print();
        return Ok(());
    }
    let mut settings = settings;
    // The bench measures what the system can do, not what one caller may.
    settings.common.rate_limit.enabled = false;
    // Payment behind a relay that the breaker scenario stalls mid-run.
    let stall = if scenario == Scenario::Breaker {
        Some(bench::Stall::bind().await?)
    } else {
        None
    };
    let payment_relay = stall.as_ref().map(|s| format!("http://{}", s.addr));
    // A running system's tokens are made with its data directory's
    // development key; a system of its own brings its own.
    let (addrs, system, keys) = match target {
        Some(target) => {
            anyhow::ensure!(
                payment_relay.is_none(),
                "the breaker scenario runs on a system of its own"
            );
            let at = |n: u16| std::net::SocketAddr::new(target.ip(), target.port() + n);
            let keys = issuer_tokens(&settings.common, None)?;
            ([at(0), at(1), at(2), at(3)], None, keys)
        }
        None => {
            let args = UpArgs {
                database_url,
                amqp_url,
                payment_endpoint: payment_relay,
                ..UpArgs::own()
            };
            let system = up::Background::start(settings.clone(), args).await?;
            let keys = system.tokens.clone();
            (system.addrs, Some(system), keys)
        }
    };
    let outcome =
        match scenario {
            Scenario::Echo => Ok(()),
            Scenario::Create => {
                async {
                    bench::create(addrs[0], &keys, &load, "CreateReservation")
                        .await?
                        .print();
                    report_backlog(system.as_ref()).await
                }
                .await
            }
            Scenario::GetPage => bench::get_page(addrs[0], addrs[3], &keys, &load)
                .await
                .map(|r| r.print()),
            Scenario::Siege => {
                async {
                    let echo = bench::echo(&load).await?;
                    let create = bench::create(addrs[0], &keys, &load, "CreateReservation").await?;
                    echo.print();
                    create.print();
                    let percent = 100.0 * create.rate() / echo.rate().max(1e-9);
                    bench::emit(
                        || format!("CreateReservation at {percent:.1} % of the echo rate"),
                        serde_json::json!({"result": "ratio_to_echo", "percent": percent}),
                    );
                    report_backlog(system.as_ref()).await
                }
                .await
            }
            Scenario::EventLag => async {
                let rate = load.rate.unwrap_or(500);
                let (page, notified, bookings) =
                    bench::event_lag(addrs, &keys, rate, load.duration).await?;
                bench::emit(
                    || format!("{bookings} bookings at {rate}/s"),
                    serde_json::json!({"result": "bookings", "bookings": bookings, "rate": rate}),
                );
                bench::print_lag("commit → my page PAID", &page, bookings);
                bench::print_lag("commit → company notified", &notified, bookings);
                Ok(())
            }
            .await,
            Scenario::Breaker => match &stall {
                Some(stall) => {
                    stall.forward_to(addrs[1]);
                    let deadline =
                        Duration::from_millis(settings.reservation.payment_client.timeout_ms);
                    bench::breaker(addrs[0], &keys, &load, stall, deadline).await
                }
                None => Ok(()),
            },
            Scenario::Flood => {
                let shape = bench::Flood {
                    idle_connections: 2_000,
                    noisy_callers: 8,
                };
                bench::under_flood(addrs[0], &keys, &load, shape).await
            }
            Scenario::Faults => Ok(()),
            Scenario::Soak => {
                let watched: Vec<bench::Watched> = if soak.pids.is_empty() {
                    // A system of its own shares this process (and so the
                    // load generator's own memory, which is small and flat).
                    vec![bench::Watched::this("ssak3 bench (services + load)")]
                } else {
                    soak.pids.iter().copied().map(bench::Watched::pid).collect()
                };
                async {
                    bench::soak(addrs[0], &keys, &load, soak.every, &watched).await?;
                    report_backlog(system.as_ref()).await
                }
                .await
            }
        };
    if let Some(system) = system {
        system.stop().await?;
    }
    outcome
}
