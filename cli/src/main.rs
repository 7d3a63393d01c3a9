//! `ssak3`: the one-process runner and operator commands.
//!
//! - `ssak3 up` runs all four services in this process, with SQLite files and
//!   the durable in-process event bus in the data directory and the
//!   development signing key unless configured; `--amqp-url` switches the
//!   events to RabbitMQ.
//! - `ssak3 serve SERVICE` runs one service, as in a container; it refuses
//!   to start without a configured signing key.
//! - `ssak3 token` prints a bearer token the running system accepts.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use ssak3_common::{
    auth::{DEVELOPMENT_SECRET, JwtKeys, Role},
    config::Config,
    events::{Bus, amqp::AmqpBus, embedded::EmbeddedBus},
    server::shutdown_signal,
    telemetry,
};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "ssak3",
    version,
    about = "Home-cleaning bookings: run the services, issue tokens."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run all services in this process (ports 50051–50054 by default).
    Up {
        /// Where the services keep their SQLite files.
        #[arg(long, env = "SSAK3_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Host the services listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Port of the reservation service; the others follow it.
        #[arg(long, default_value_t = 50051)]
        base_port: u16,
        /// Carry events over this RabbitMQ broker instead of the in-process bus.
        #[arg(long)]
        amqp_url: Option<String>,
    },
    /// Run one service, configured by SSAK3_* variables (SSAK3_LISTEN, SSAK3_DATABASE_URL, …).
    Serve { service: Service },
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

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Service {
    Reservation,
    Payment,
    Notify,
    Mypage,
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
            eprintln!("ssak3: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, mut config: Config) -> anyhow::Result<()> {
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
            telemetry::init(config.log_format);
            let secret = config.jwt_secret.clone().context(
                "SSAK3_JWT_SECRET is not set: `ssak3 serve` will not start without a signing key \
                 (the built-in development key is only for `ssak3 up` and `ssak3 token`)",
            )?;
            let keys = JwtKeys::new(secret.as_bytes());
            let name = format!("{service:?}").to_lowercase();
            let bus = Bus::Amqp(AmqpBus::new(&config.amqp_url, &config.events, &name));
            match service {
                Service::Reservation => {
                    ssak3_reservation::App::build(&config, keys, bus)
                        .await?
                        .run(shutdown_signal())
                        .await
                }
                Service::Payment => {
                    ssak3_payment::App::build(&config, keys, bus)
                        .await?
                        .run(shutdown_signal())
                        .await
                }
                Service::Notify => {
                    ssak3_notify::App::build(&config, keys, bus)
                        .await?
                        .run(shutdown_signal())
                        .await
                }
                Service::Mypage => {
                    ssak3_mypage::App::build(&config, keys, bus)
                        .await?
                        .run(shutdown_signal())
                        .await
                }
            }
        }
        Command::Up {
            data_dir,
            host,
            base_port,
            amqp_url,
        } => {
            telemetry::init(config.log_format);
            if let Some(dir) = data_dir {
                config.data_dir = dir;
            }
            let bus = match amqp_url {
                Some(url) => Bus::Amqp(AmqpBus::new(&url, &config.events, "up")),
                None => Bus::Embedded(
                    EmbeddedBus::open(&config.data_dir.join("events.db"), &config.events).await?,
                ),
            };
            up(config, host, base_port, bus).await
        }
    }
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

/// Runs every service in this process until Ctrl-C or SIGTERM.
async fn up(
    config: Config,
    host: std::net::IpAddr,
    base_port: u16,
    bus: Bus,
) -> anyhow::Result<()> {
    let keys = signing_keys(&config);
    let at = |offset: u16| -> anyhow::Result<SocketAddr> {
        let port = base_port
            .checked_add(offset)
            .context("--base-port is too high")?;
        Ok(SocketAddr::new(host, port))
    };
    let with_listen = |addr: SocketAddr| Config {
        listen: Some(addr),
        ..config.clone()
    };
    let payment_addr = at(1)?;
    let reservation_config = Config {
        payment_endpoint: format!("http://{payment_addr}"),
        ..with_listen(at(0)?)
    };

    let reservation =
        ssak3_reservation::App::build(&reservation_config, keys.clone(), bus.clone()).await?;
    let payment =
        ssak3_payment::App::build(&with_listen(payment_addr), keys.clone(), bus.clone()).await?;
    let notify = ssak3_notify::App::build(&with_listen(at(2)?), keys.clone(), bus.clone()).await?;
    let mypage = ssak3_mypage::App::build(&with_listen(at(3)?), keys.clone(), bus).await?;

    let endpoints = [
        ("reservation", reservation.local_addr()?),
        ("payment", payment.local_addr()?),
        ("notify", notify.local_addr()?),
        ("mypage", mypage.local_addr()?),
    ];

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    };
    let mut services = tokio::task::JoinSet::new();
    services.spawn(reservation.run(stopped()));
    services.spawn(payment.run(stopped()));
    services.spawn(notify.run(stopped()));
    services.spawn(mypage.run(stopped()));

    print_welcome(&endpoints, &keys)?;

    tokio::select! {
        () = shutdown_signal() => {}
        Some(finished) = services.join_next() => {
            // A service stopped on its own: report why and stop the rest.
            let _ = stop_tx.send(true);
            finished.context("service task failed")??;
        }
    }
    let _ = stop_tx.send(true);
    while let Some(finished) = services.join_next().await {
        finished.context("service task failed")??;
    }
    Ok(())
}

fn print_welcome(endpoints: &[(&str, SocketAddr)], keys: &JwtKeys) -> anyhow::Result<()> {
    let day = Duration::from_secs(86_400);
    let customer = keys.issue("alice", Role::Customer, day)?;
    let cleaner = keys.issue("acme-cleaning", Role::Cleaner, day)?;
    println!("Ssak3 is up.");
    for (name, addr) in endpoints {
        println!("  {name:<12} grpc://{addr}");
    }
    println!("\nCustomer token (alice):\n  {customer}");
    println!("Cleaner token (acme-cleaning):\n  {cleaner}");
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%dT10:00:00Z")
        .to_string();
    println!(
        "\nBook and pay (run it twice: same reservation, one charge):\n  \
         grpcurl -plaintext -H \"authorization: Bearer {customer}\" \\\n    \
         -d '{{\"request_id\": \"demo-1\", \"cleaner_id\": \"acme-cleaning\", \
         \"address\": \"12 Gangnam-daero, Seoul\", \"scheduled_at\": \"{tomorrow}\", \
         \"service_type\": \"SERVICE_TYPE_STANDARD\"}}' \\\n    \
         {} ssak3.reservation.v1.ReservationService/CreateReservation",
        endpoints[0].1
    );
    println!("\nCtrl-C stops all services.");
    Ok(())
}
