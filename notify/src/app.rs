//! The notify service process: build (bind, connect), then run until shut down.

use std::{future::Future, net::SocketAddr, sync::Arc};

use ssak3_common::{
    auth::{Authenticated, Verifier},
    changes::Changes,
    config::Config,
    db::{Database, DatabaseUrl},
    events::{Bus, Handler},
    live::{self, Feed},
    server::{MAX_REQUEST_BYTES, ServiceHost},
};
use ssak3_proto::notify::v1::notification_service_server::{
    NotificationServiceServer, SERVICE_NAME,
};

use crate::{
    config::Settings,
    delivery,
    events::{NotifyOnEvents, SUBSCRIPTION},
    grpc::NotificationApi,
    storage,
};

/// The default port of the notify service.
pub const DEFAULT_PORT: u16 = 50053;

/// A notify service bound to its port, ready to run.
#[derive(Debug)]
pub struct App {
    host: ServiceHost,
    db: Database,
}

impl App {
    /// Builds the service; its events arrive through `bus`.
    pub async fn build(config: &Config, settings: &Settings, bus: Bus) -> anyhow::Result<Self> {
        let verifier = Verifier::from_config(&config.auth, "notify", false).await?;
        let url = DatabaseUrl::for_service(config, "notify")?;
        let db = Database::connect(&url, config.database_pool_size)?;
        let mut host = ServiceHost::bind(config, DEFAULT_PORT, &[SERVICE_NAME]).await?;
        // Watchers hear of the notifications every replica stores.
        let changes = Changes::start(&url, "notify");
        let signals = changes.subscribe();
        let feed = Feed::new(config.streams.clone());
        let endpoints: Arc<[_]> = settings.notify.endpoints()?.into();
        let deliverer =
            delivery::Deliverer::new(db.clone(), &endpoints, &settings.notify, &host.metrics())?;
        let handler: Arc<dyn Handler> = Arc::new(NotifyOnEvents::new(
            db.clone(),
            endpoints,
            settings.notify.log_messages,
            deliverer.waker(),
            changes,
        ));
        host.routes().add_service(Authenticated::new(
            NotificationServiceServer::new(NotificationApi::new(db.clone(), feed.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
            verifier,
        ));
        host.worker("notification delivery", move |stop| deliverer.run(stop));
        host.worker("live streams", move |stop| {
            live::forward(signals, feed, stop)
        });
        let metrics = host.metrics();
        host.worker("event consumer", move |stop| async move {
            bus.consume(SUBSCRIPTION.queue, handler, metrics, stop)
                .await
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
            .run_migrated(self.db, storage::SCHEMA, shutdown)
            .await
    }
}
