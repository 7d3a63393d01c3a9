//! The my page service process: build (bind, connect), then run until shut down.

use std::{future::Future, net::SocketAddr, sync::Arc};

use ssak3_common::{
    auth::{Authenticator, JwtKeys},
    config::Config,
    db::{Database, DatabaseUrl},
    events::{Bus, Handler},
    server::ServiceHost,
};
use ssak3_proto::mypage::v1::my_page_service_server::{MyPageServiceServer, SERVICE_NAME};
use tokio::sync::broadcast;

use crate::{events::Projector, grpc::MyPageApi, storage};

/// The default port of the my page service.
pub const DEFAULT_PORT: u16 = 50054;

/// View updates kept for watchers that fall behind.
const FEED_CAPACITY: usize = 1024;

/// A my page service bound to its port, ready to run.
#[derive(Debug)]
pub struct App {
    host: ServiceHost,
    db: Database,
}

impl App {
    /// Builds the service; its events arrive through `bus`.
    pub async fn build(config: &Config, keys: JwtKeys, bus: Bus) -> anyhow::Result<Self> {
        let db = Database::connect(
            &DatabaseUrl::for_service(config, "mypage")?,
            config.database_pool_size,
        )?;
        let mut host = ServiceHost::bind(config, DEFAULT_PORT, &[SERVICE_NAME]).await?;
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let projector: Arc<dyn Handler> = Arc::new(Projector::new(db.clone(), feed.clone()));
        host.routes()
            .add_service(MyPageServiceServer::with_interceptor(
                MyPageApi::new(db.clone(), feed),
                Authenticator::new(keys),
            ));
        let metrics = host.metrics();
        host.worker("event consumer", move |stop| async move {
            bus.consume("mypage", projector, metrics, stop).await
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
