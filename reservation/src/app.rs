//! The reservation service process: build (bind, connect), then run until shut down.

use std::{future::Future, net::SocketAddr};

use anyhow::Context as _;
use ssak3_common::{
    auth::{Authenticator, JwtKeys},
    config::Config,
    db::{Database, DatabaseUrl},
    server::{self, ServiceHost},
};
use ssak3_proto::reservation::v1::{
    cleaning_service_server::{self, CleaningServiceServer},
    reservation_service_server::{self, ReservationServiceServer},
};
use tokio::sync::watch;

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
    reconciler: Reconciler,
    payment: PaymentClient,
    grace: std::time::Duration,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("db", &self.db).finish()
    }
}

impl App {
    pub async fn build(config: &Config, keys: JwtKeys) -> anyhow::Result<Self> {
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
        )?;
        let auth = Authenticator::new(keys);
        let bookings = Bookings::new(db.clone(), payment.clone(), config.prices.clone());
        host.routes()
            .add_service(ReservationServiceServer::with_interceptor(
                ReservationApi::new(bookings),
                auth.clone(),
            ))
            .add_service(CleaningServiceServer::with_interceptor(CleaningApi, auth));
        Ok(Self {
            host,
            reconciler: Reconciler::new(db.clone(), payment.clone(), &config.reconcile),
            db,
            payment,
            grace: config.shutdown_grace(),
        })
    }

    /// The address the service listens on.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.host.local_addr()
    }

    /// The payment client (its breaker state is what operators and tests watch).
    pub fn payment_client(&self) -> PaymentClient {
        self.payment.clone()
    }

    /// Migrates, serves until `shutdown`, then drains; the reconciler runs while serving.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let (ready_tx, mut ready_rx) = watch::channel(false);
        let Self {
            host,
            db,
            reconciler,
            grace,
            ..
        } = self;
        // The reconciler starts once the schema exists, and stops with the server.
        let reconciling = tokio::spawn(async move {
            tokio::select! {
                ready = async { ready_rx.wait_for(|ready| *ready).await.is_ok() } => if ready {
                    reconciler.run(stop_rx).await;
                },
                _ = async { stop_rx.wait_for(|stopped| *stopped).await.is_ok() } => {}
            }
        });
        let startup = async move {
            db.migrate(storage::POSTGRES_MIGRATIONS, storage::SQLITE_MIGRATIONS)
                .await
                .context("reservation database migration")?;
            let _ = ready_tx.send(true);
            Ok(())
        };
        let served = host.run(startup, shutdown, grace).await;
        let _ = stop_tx.send(true);
        let _ = reconciling.await;
        served
    }
}
