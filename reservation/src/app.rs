//! The reservation service process: build (bind, connect), then run until shut down.

use std::{future::Future, net::SocketAddr};

use anyhow::Context as _;
use ssak3_common::{
    auth::{Authenticator, JwtKeys},
    config::Config,
    db::{Database, DatabaseUrl},
    events::{Bus, outbox},
    server::{self, ServiceHost},
};
use ssak3_proto::reservation::v1::{
    cleaning_service_server::{self, CleaningServiceServer},
    reservation_service_server::{self, ReservationServiceServer},
};

use crate::{
    bookings::Bookings,
    grpc::{CleaningApi, ReservationApi},
    payment_client::PaymentClient,
    reconciler::Reconciler,
    storage,
};

/// The default port of the reservation service.
pub const DEFAULT_PORT: u16 = 50051;

/// A reservation service bound to its port, ready to run.
pub struct App {
    host: ServiceHost,
    db: Database,
    payment: PaymentClient,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("db", &self.db).finish()
    }
}

impl App {
    /// Builds the service; its events leave through `bus`.
    pub async fn build(config: &Config, keys: JwtKeys, bus: Bus) -> anyhow::Result<Self> {
        let db = Database::connect(&DatabaseUrl::for_service(config, "reservation")?, 16)?;
        let payment = PaymentClient::new(
            &config.payment_endpoint,
            &config.payment_client,
            keys.clone(),
        )?;
        let listen = config
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)));
        let mut host = ServiceHost::new(
            server::bind(listen).await?,
            &[
                reservation_service_server::SERVICE_NAME,
                cleaning_service_server::SERVICE_NAME,
            ],
            config.shutdown_timing(),
        )?;
        let auth = Authenticator::new(keys);
        let relay = outbox::Relay::new(db.clone(), bus, &config.events);
        let bookings = Bookings::new(
            db.clone(),
            payment.clone(),
            config.prices.clone(),
            relay.waker(),
        );
        host.routes()
            .add_service(ReservationServiceServer::with_interceptor(
                ReservationApi::new(bookings.clone()),
                auth.clone(),
            ))
            .add_service(CleaningServiceServer::with_interceptor(
                CleaningApi::new(bookings),
                auth,
            ));
        let reconciler = Reconciler::new(db.clone(), payment.clone(), &config.reconcile);
        host.worker("reconciler", move |stop| reconciler.run(stop));
        host.worker("outbox relay", move |stop| relay.run(stop));
        Ok(Self { host, db, payment })
    }

    /// The address the service listens on.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.host.local_addr()
    }

    /// The payment client (its breaker state is what operators and tests watch).
    pub fn payment_client(&self) -> PaymentClient {
        self.payment.clone()
    }

    /// Migrates, serves until `shutdown`, then drains; the reconciler and the
    /// outbox relay run while serving.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let db = self.db;
        let startup = async move {
            db.migrate(storage::POSTGRES_MIGRATIONS, storage::SQLITE_MIGRATIONS)
                .await
                .context("reservation database migration")
        };
        self.host.run(startup, shutdown).await
    }
}
