//! The reservation service process: build (bind, connect), then run until shut down.

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context as _;

use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use ssak3_common::{
    auth::{Authenticated, Verifier},
    config::Config,
    db::{Database, DatabaseUrl},
    events::{Bus, outbox},
    ids::{CompanyId, Invalid},
    metrics::{Labels, Metrics, labels},
    ratelimit::WriteLimiter,
    server::{MAX_REQUEST_BYTES, ServiceHost},
};
use ssak3_proto::reservation::v1::{
    cleaning_service_server::{self, CleaningServiceServer},
    company_service_server::{self, CompanyServiceServer},
    reservation_service_server::{self, ReservationServiceServer},
};

use crate::{
    bookings::Bookings,
    companies::{Companies, parse_display_name},
    config::Settings,
    grpc::{CleaningApi, CompanyApi, ReservationApi},
    payment_client::PaymentClient,
    reconciler::Reconciler,
    storage::{self, Repository},
};

/// The service's name: its identity towards payment, its database and queue names.
pub const SERVICE: &str = "reservation";

/// The default port of the reservation service.
pub const DEFAULT_PORT: u16 = 50051;

/// A reservation service bound to its port, ready to run.
pub struct App {
    host: ServiceHost,
    db: Database,
    payment: PaymentClient,
    companies: Companies,
    seeds: Vec<(CompanyId, String)>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("db", &self.db).finish()
    }
}

impl App {
    /// Builds the service; its events leave through `bus`.
    pub async fn build(config: &Config, settings: &Settings, bus: Bus) -> anyhow::Result<Self> {
        let verifier = Verifier::from_config(&config.auth, SERVICE, false).await?;
        let db = Database::connect(
            &DatabaseUrl::for_service(config, SERVICE)?,
            config.database_pool_size,
        )?;
        let payment = PaymentClient::new(
            &settings.payment_endpoint,
            &settings.payment_client,
            config.auth.service_identity(SERVICE)?,
        )?;
        let mut host = ServiceHost::bind(
            config,
            DEFAULT_PORT,
            &[
                reservation_service_server::SERVICE_NAME,
                cleaning_service_server::SERVICE_NAME,
                company_service_server::SERVICE_NAME,
            ],
        )
        .await?;

        let relay = outbox::Relay::new(
            "reservation",
            db.clone(),
            bus,
            &config.events,
            &host.metrics(),
        );
        watch_breaker(&host.metrics(), payment.clone());
        let reservations = Repository::new(db.clone(), relay.waker());
        let companies = Companies::new(db.clone());
        let limiter = WriteLimiter::new(&config.rate_limit);
        let seeds = settings
            .companies
            .iter()
            .map(|seed| {
                Ok((
                    CompanyId::parse_field("companies.company_id", &seed.company_id)?,
                    parse_display_name(&seed.display_name)?,
                ))
            })
            .collect::<Result<Vec<_>, Invalid>>()
            .context("invalid company in the settings")?;
        let bookings = Bookings::new(
            reservations.clone(),
            companies.clone(),
            payment.clone(),
            settings.prices.clone(),
        );
        host.routes()
            .add_service(Authenticated::new(
                ReservationServiceServer::new(ReservationApi::new(
                    bookings.clone(),
                    limiter.clone(),
                ))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
                verifier.clone(),
            ))
            .add_service(Authenticated::new(
                CleaningServiceServer::new(CleaningApi::new(bookings, limiter.clone()))
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
                verifier.clone(),
            ))
            .add_service(Authenticated::new(
                CompanyServiceServer::new(CompanyApi::new(companies.clone(), limiter))
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
                verifier,
            ));
        let reconciler = Reconciler::new(reservations, payment.clone(), &settings.reconcile);
        host.worker("reconciler", move |stop| reconciler.run(stop));
        host.worker("outbox relay", move |stop| relay.run(stop));
        Ok(Self {
            host,
            db,
            payment,
            companies,
            seeds,
        })
    }

    /// The admin (metrics) address.
    pub fn admin_addr(&self) -> anyhow::Result<SocketAddr> {
        self.host.admin_addr()
    }

    /// The address the service listens on.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.host.local_addr()
    }

    /// The payment client (its breaker state is what operators and tests watch).
    pub fn payment_client(&self) -> PaymentClient {
        self.payment.clone()
    }

    /// Migrates and registers the configured companies, serves until
    /// `shutdown`, then drains; the reconciler and the outbox relay run while
    /// serving.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            host,
            db,
            companies,
            seeds,
            ..
        } = self;
        let startup = async move {
            db.migrate(storage::SCHEMA)
                .await
                .context("database migration of reservation")?;
            for (company_id, display_name) in seeds {
                companies
                    .register(company_id, display_name)
                    .await
                    .context("registering the configured companies")?;
            }
            Ok(())
        };
        host.run(startup, shutdown).await
    }
}

/// Registers the breaker on reservation → payment with the metrics and
/// mirrors its state into them at each scrape.
fn watch_breaker(metrics: &Arc<Metrics>, payment: PaymentClient) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let state = metrics.register(
        "payment_breaker_open",
        "1 while the circuit breaker on reservation → payment is open, else 0",
        Gauge::<i64>::default(),
    );
    let transitions = metrics.register(
        "payment_breaker_transitions",
        "Circuit breaker transitions, by the state entered",
        Family::<Labels, Counter>::default(),
    );
    let seen = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    metrics.on_scrape(Box::new(move || {
        state.set(i64::from(payment.is_open()));
        let counts = payment.breaker().transitions();
        for (i, (to, count)) in [("open", &counts.opened), ("closed", &counts.closed)]
            .into_iter()
            .enumerate()
        {
            let now = count.load(Ordering::Relaxed);
            let before = seen[i].swap(now, Ordering::Relaxed);
            transitions
                .get_or_create(&labels(&[("to", to)]))
                .inc_by(now.saturating_sub(before));
        }
        Box::pin(async {})
    }));
}
