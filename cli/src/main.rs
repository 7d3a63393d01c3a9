//! `ssak3`: the one-process runner and operator commands.
//!
//! - `ssak3 up` runs all four services in this process: SQLite files and the
//!   durable in-process event bus in the data directory, the development
//!   signing key unless configured; `--database-url` and `--amqp-url` switch
//!   to PostgreSQL and RabbitMQ.
//! - `ssak3 demo` drives the whole story against a running system, or its own.
//! - `ssak3 serve SERVICE` runs one service, as in a container; it refuses
//!   to start without a configured signing key.
//! - `ssak3 migrate` applies the database migrations and exits.
//! - `ssak3 token` prints a bearer token the running system accepts.

mod demo;
mod up;

use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use ssak3_common::{
    auth::{DEVELOPMENT_SECRET, JwtKeys, Role},
    config::Config,
    db::{Database, DatabaseUrl},
    events::{Bus, amqp::AmqpBus},
    server::shutdown_signal,
    telemetry,
};

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
    },
    /// Print a bearer token signed with SSAK3_JWT_SECRET (or the development key).
    Token {
        #[arg(long, value_enum)]
        role: Role,
        /// Customer id, company id or service name.
        #[arg(long)]
        subject: String,
        /// How long the token is valid, in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
    },
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

    /// The service's embedded migrations: PostgreSQL, SQLite.
    fn migrations(
        self,
    ) -> (
        diesel_migrations::EmbeddedMigrations,
        diesel_migrations::EmbeddedMigrations,
    ) {
        match self {
            Self::Reservation => (
                ssak3_reservation::storage::POSTGRES_MIGRATIONS,
                ssak3_reservation::storage::SQLITE_MIGRATIONS,
            ),
            Self::Payment => (
                ssak3_payment::storage::POSTGRES_MIGRATIONS,
                ssak3_payment::storage::SQLITE_MIGRATIONS,
            ),
            Self::Notify => (
                ssak3_notify::storage::POSTGRES_MIGRATIONS,
                ssak3_notify::storage::SQLITE_MIGRATIONS,
            ),
            Self::Mypage => (
                ssak3_mypage::storage::POSTGRES_MIGRATIONS,
                ssak3_mypage::storage::SQLITE_MIGRATIONS,
            ),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = Config::load()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
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

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Token {
            role,
            subject,
            ttl_secs,
        } => {
            let keys = signing_keys(&config);
            println!(
                "{}",
                keys.issue(&subject, role, Duration::from_secs(ttl_secs))?
            );
            Ok(())
        }
        Command::Serve { service } => {
            let _telemetry = telemetry::init(config.log_format);
            serve(service, config).await
        }
        Command::Up(args) => {
            let _telemetry = telemetry::init(config.log_format);
            up::System::start(config, &args)
                .await?
                .run_until(shutdown_signal(), true)
                .await
        }
        Command::Demo { target, standalone } => {
            if standalone {
                let dir = tempfile::tempdir().context("no temporary directory for the demo")?;
                let args = UpArgs {
                    data_dir: Some(dir.path().to_owned()),
                    host: IpAddr::from([127, 0, 0, 1]),
                    base_port: ssak3_common::server::free_consecutive_ports(4)?,
                    database_url: None,
                    amqp_url: None,
                };
                let system = up::System::start(config.clone(), &args).await?;
                let target = system.endpoints()[0].1;
                let (stop, finished) = tokio::sync::oneshot::channel::<()>();
                let running = tokio::spawn(system.run_until(
                    async {
                        let _ = finished.await;
                    },
                    false,
                ));
                let outcome = demo::run(target, &signing_keys(&config)).await;
                let _ = stop.send(());
                running.await.context("the demo system failed")??;
                outcome
            } else {
                demo::run(target, &signing_keys(&config)).await
            }
        }
        Command::Migrate {
            service,
            database_url,
            data_dir,
        } => {
            let _telemetry = telemetry::init(config.log_format);
            let targets: Vec<(Service, DatabaseUrl)> = match service {
                None => {
                    let args = UpArgs {
                        data_dir,
                        host: IpAddr::from([127, 0, 0, 1]),
                        base_port: 50051,
                        database_url,
                        amqp_url: None,
                    };
                    let plan = up::Plan::new(&config, &args)?;
                    Service::ALL
                        .into_iter()
                        .map(|s| Ok((s, plan.database(s)?)))
                        .collect::<anyhow::Result<_>>()?
                }
                Some(service) => {
                    vec![(service, DatabaseUrl::for_service(&config, service.name())?)]
                }
            };
            for (service, url) in targets {
                migrate(service, &url).await?;
                println!("{:<12} migrated  {}", service.name(), url.redacted());
            }
            Ok(())
        }
    }
}

async fn serve(service: Service, config: Config) -> anyhow::Result<()> {
    let secret = config.jwt_secret.clone().context(
        "SSAK3_JWT_SECRET is not set: `ssak3 serve` will not start without a signing key \
         (the built-in development key is only for `ssak3 up` and `ssak3 token`)",
    )?;
    let keys = JwtKeys::new(secret.as_bytes());
    let bus = Bus::Amqp(AmqpBus::new(
        &config.amqp_url,
        &config.events,
        service.name(),
    ));
    let shutdown = shutdown_signal();
    match service {
        Service::Reservation => {
            ssak3_reservation::App::build(&config, keys, bus)
                .await?
                .run(shutdown)
                .await
        }
        Service::Payment => {
            ssak3_payment::App::build(&config, keys, bus)
                .await?
                .run(shutdown)
                .await
        }
        Service::Notify => {
            ssak3_notify::App::build(&config, keys, bus)
                .await?
                .run(shutdown)
                .await
        }
        Service::Mypage => {
            ssak3_mypage::App::build(&config, keys, bus)
                .await?
                .run(shutdown)
                .await
        }
    }
}

/// Applies `service`'s migrations to `url`.
pub async fn migrate(service: Service, url: &DatabaseUrl) -> anyhow::Result<()> {
    url.create_if_missing()?;
    let (postgres, sqlite) = service.migrations();
    Database::connect(url, 1)?
        .migrate(postgres, sqlite)
        .await
        .with_context(|| format!("{} database migration", service.name()))
}

fn signing_keys(config: &Config) -> JwtKeys {
    JwtKeys::new(
        config
            .jwt_secret
            .as_deref()
            .unwrap_or(DEVELOPMENT_SECRET)
            .as_bytes(),
    )
}
