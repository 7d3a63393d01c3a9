//! The payment service process: build (bind, connect), then run until shut down.

use std::{future::Future, net::SocketAddr, sync::Arc};

use ssak3_common::{
    auth::{Authenticator, JwtKeys},
    config::Config,
    db::{Database, DatabaseUrl},
    events::{Bus, Handler, outbox},
    server::ServiceHost,
};
use ssak3_proto::payment::v1::payment_service_server::{PaymentServiceServer, SERVICE_NAME};

use crate::{
    events::RefundOnCancel,
    gateway::{PaymentGateway, SimulatedGateway},
    grpc::{CallCounts, PaymentApi},
    payments::Payments,
    storage,
};

/// The default port of the payment service.
pub const DEFAULT_PORT: u16 = 50052;

/// A payment service bound to its port, ready to run.
pub struct App {
    host: ServiceHost,
    db: Database,
    counts: Arc<CallCounts>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("db", &self.db).finish()
    }
}

impl App {
    /// Builds the service with the simulated gateway configured in `config`.
    pub async fn build(config: &Config, keys: JwtKeys, bus: Bus) -> anyhow::Result<Self> {
        let gateway = Arc::new(SimulatedGateway::new(config.gateway.clone()));
        Self::build_with_gateway(config, keys, bus, gateway).await
    }

    /// Builds the service around a given gateway.
    pub async fn build_with_gateway(
        config: &Config,
        keys: JwtKeys,
        bus: Bus,
        gateway: Arc<dyn PaymentGateway>,
    ) -> anyhow::Result<Self> {
        let db = Database::connect(
            &DatabaseUrl::for_service(config, "payment")?,
            config.database_pool_size,
        )?;
        let mut host = ServiceHost::bind(config, DEFAULT_PORT, &[SERVICE_NAME]).await?;
        let metrics = host.metrics();
        let counts = Arc::new(CallCounts::default());
        let relay = outbox::Relay::new(db.clone(), bus.clone(), &config.events, metrics.clone());
        let payments = Payments::new(db.clone(), gateway, relay.waker());
        let refunds: Arc<dyn Handler> = Arc::new(RefundOnCancel::new(payments.clone()));
        let api = PaymentApi::new(payments, Arc::clone(&counts));
        host.worker("outbox relay", move |stop| relay.run(stop));
        host.worker("event consumer", move |stop| async move {
            bus.consume("payment", refunds, metrics, stop).await
        });
        host.routes()
            .add_service(PaymentServiceServer::with_interceptor(
                api,
                Authenticator::new(keys),
            ));
        Ok(Self { host, db, counts })
    }

    /// The admin (metrics) address.
    pub fn admin_addr(&self) -> anyhow::Result<SocketAddr> {
        self.host.admin_addr()
    }

    /// The address the service listens on.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.host.local_addr()
    }

    /// Counts of calls received.
    pub fn call_counts(&self) -> Arc<CallCounts> {
        Arc::clone(&self.counts)
    }

    /// Migrates the database, serves until `shutdown`, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        self.host
            .run_migrated(
                self.db,
                storage::POSTGRES_MIGRATIONS,
                storage::SQLITE_MIGRATIONS,
                shutdown,
            )
            .await
    }
}
