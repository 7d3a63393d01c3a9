//! The notify service process: build (bind, connect), then run until shut down.

use std::{future::Future, net::SocketAddr, sync::Arc};

use ssak3_common::{
    auth::{Authenticator, JwtKeys},
    config::Config,
    db::{Database, DatabaseUrl},
    events::{Bus, Handler},
    server::ServiceHost,
};
use ssak3_proto::notify::v1::notification_service_server::{
    NotificationServiceServer, SERVICE_NAME,
};
use tokio::sync::broadcast;

use crate::{delivery, events::NotifyOnEvents, grpc::NotificationApi, storage};

/// The default port of the notify service.
pub const DEFAULT_PORT: u16 = 50053;

/// Notifications kept for watchers that fall behind.
const FEED_CAPACITY: usize = 1024;

/// A notify service bound to its port, ready to run.
#[derive(Debug)]
pub struct App {
    host: ServiceHost,
    db: Database,
}

impl App {
    /// Builds the service; its events arrive through `bus`.
    pub async fn build(config: &Config, keys: JwtKeys, bus: Bus) -> anyhow::Result<Self> {
        let db = Database::connect(
            &DatabaseUrl::for_service(config, "notify")?,
            config.database_pool_size,
        )?;
        let mut host = ServiceHost::bind(config, DEFAULT_PORT, &[SERVICE_NAME]).await?;
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let deliverer = delivery::Deliverer::new(
            db.clone(),
            delivery::from_config(&config.notify)?,
            &config.notify,
            host.metrics(),
        );
        let handler: Arc<dyn Handler> = Arc::new(NotifyOnEvents::new(
            db.clone(),
            deliverer.waker(),
            feed.clone(),
        ));
        host.routes()
            .add_service(NotificationServiceServer::with_interceptor(
                NotificationApi::new(db.clone(), feed),
                Authenticator::new(keys),
            ));
        host.worker("notification delivery", move |stop| deliverer.run(stop));
        let metrics = host.metrics();
        host.worker("event consumer", move |stop| async move {
            bus.consume("notify", handler, metrics, stop).await
        });
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

    /// Migrates, serves until `shutdown`, then drains; consumes events while serving.
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
