//! The payment service process: build (bind, connect), then run until shut down.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use ssak3_common::{
    auth::{Authenticated, Verifier},
    config::Config,
    db::{Database, DatabaseUrl},
    events::{Bus, Handler, outbox},
    server::{MAX_REQUEST_BYTES, ServiceHost},
};
use ssak3_proto::payment::{
    internal::v1::internal_payment_service_server::{
        InternalPaymentServiceServer, SERVICE_NAME as INTERNAL_SERVICE_NAME,
    },
    v1::payment_service_server::{PaymentServiceServer, SERVICE_NAME},
};

use crate::{
    config::Settings,
    events::RefundOnCancel,
    gateway::{PaymentGateway, SimulatedGateway},
    grpc::PaymentApi,
    payments::Payments,
    storage,
};

/// The service's name: the audience of its callers' tokens.
pub const SERVICE: &str = "payment";

/// The default port of the payment service.
pub const DEFAULT_PORT: u16 = 50052;

/// A payment service bound to its port, ready to run.
pub struct App {
    host: ServiceHost,
    db: Database,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("db", &self.db).finish()
    }
}

impl App {
    /// Builds the service with the simulated gateway configured in `settings`.
    pub async fn build(config: &Config, settings: &Settings, bus: Bus) -> anyhow::Result<Self> {
        let gateway = Arc::new(SimulatedGateway::new(settings.gateway.clone()));
        Self::build_with_gateway(config, settings, bus, gateway).await
    }

    /// Builds the service around a given gateway.
    pub async fn build_with_gateway(
        config: &Config,
        settings: &Settings,
        bus: Bus,
        gateway: Arc<dyn PaymentGateway>,
    ) -> anyhow::Result<Self> {
        // Payment also accepts its callers' (reservation's) service tokens.
        let verifier = Verifier::from_config(&config.auth, SERVICE, true).await?;
        let db = Database::connect(
            &DatabaseUrl::for_service(config, SERVICE)?,
            config.database_pool_size,
        )?;
        let mut host =
            ServiceHost::bind(config, DEFAULT_PORT, &[SERVICE_NAME, INTERNAL_SERVICE_NAME]).await?;
        let metrics = host.metrics();
        let relay =
            outbox::Relay::new("payment", db.clone(), bus.clone(), &config.events, &metrics);
        let payments = Payments::new(
            db.clone(),
            gateway,
            relay.waker(),
            Duration::from_millis(settings.gateway.retry_after_ms),
        );
        let refunds: Arc<dyn Handler> = Arc::new(RefundOnCancel::new(payments.clone()));
        let api = PaymentApi::new(payments);
        host.worker("outbox relay", move |stop| relay.run(stop));
        host.worker("event consumer", move |stop| async move {
            bus.consume(crate::events::SUBSCRIPTION.queue, refunds, metrics, stop)
                .await
        });
        host.routes()
            .add_service(Authenticated::new(
                PaymentServiceServer::new(api.clone()).max_decoding_message_size(MAX_REQUEST_BYTES),
                verifier.clone(),
            ))
            .add_service(Authenticated::new(
                InternalPaymentServiceServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES),
                verifier,
            ));
        Ok(Self { host, db })
    }

    /// The admin (metrics) address.
    pub fn admin_addr(&self) -> anyhow::Result<SocketAddr> {
        self.host.admin_addr()
    }

    /// The address the service listens on.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.host.local_addr()
    }

    /// Migrates the database, serves until `shutdown`, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        self.host
            .run_migrated(self.db, storage::SCHEMA, shutdown)
            .await
    }
}
