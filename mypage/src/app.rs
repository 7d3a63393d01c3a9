//! The my page service process: build (bind, connect), then run until shut down.

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use ssak3_common::{
    auth::{Authenticated, Verifier},
    changes::Changes,
    config::Config,
    db::{Database, DatabaseUrl},
    events::{Bus, Handler},
    live::{self, Feed},
    server::{MAX_REQUEST_BYTES, ServiceHost},
};
use ssak3_proto::mypage::v1::my_page_service_server::{MyPageServiceServer, SERVICE_NAME};

use crate::{
    events::{Projector, SUBSCRIPTION},
    grpc::MyPageApi,
    storage,
};

/// The default port of the my page service.
pub const DEFAULT_PORT: u16 = 50054;

/// A my page service bound to its port, ready to run.
#[derive(Debug)]
pub struct App {
    host: ServiceHost,
    db: Database,
    changes: Changes,
}

impl App {
    /// Builds the service; its events arrive through `bus`.
    pub async fn build(config: &Config, bus: Bus) -> anyhow::Result<Self> {
        let verifier = Verifier::from_config(&config.auth, "mypage", false).await?;
        let url = DatabaseUrl::for_service(config, "mypage")?;
        let db = Database::connect(&url, config.database_pool_size)?;
        let mut host = ServiceHost::bind(config, DEFAULT_PORT, &[SERVICE_NAME]).await?;
        // Watchers hear of the views every replica stores.
        let changes = Changes::start(&url, "mypage");
        let signals = changes.subscribe();
        let feed = Feed::new(config.streams.clone());
        let projector: Arc<dyn Handler> = Arc::new(Projector::new(db.clone(), changes.clone()));
        host.routes().add_service(Authenticated::new(
            MyPageServiceServer::new(MyPageApi::new(db.clone(), feed.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
            verifier,
        ));
        let metrics = host.metrics();
        host.worker("event consumer", move |stop| async move {
            bus.consume(SUBSCRIPTION.queue, projector, metrics, stop)
                .await
        });
        host.worker("live streams", move |stop| {
            live::forward(signals, feed, stop)
        });
        Ok(Self { host, db, changes })
    }

    /// The admin (metrics) address.
    pub fn admin_addr(&self) -> anyhow::Result<SocketAddr> {
        self.host.admin_addr()
    }

    /// The address the service listens on.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.host.local_addr()
    }

    /// Migrates, rebuilds the views a migration dropped, serves until
    /// `shutdown`, then drains; consumes events while serving.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (db, changes) = (self.db, self.changes);
        let startup = async move {
            db.migrate(storage::SCHEMA)
                .await
                .context("database migration of mypage")?;
            rebuild_views(&db, &changes)
                .await
                .context("rebuilding my page's views")
        };
        self.host.run(startup, shutdown).await
    }
}

/// Views rebuilt per round at start-up.
const REBUILD_BATCH: i64 = 256;

/// Recomputes every view that is missing from its stored events; watchers
/// (of other replicas, already serving) hear of each.
async fn rebuild_views(db: &Database, changes: &Changes) -> anyhow::Result<()> {
    let mut rebuilt = 0_usize;
    loop {
        let ids = db
            .read(|c| storage::find_unprojected(c, REBUILD_BATCH))
            .await?;
        let mut progress = false;
        for id in ids {
            let marker = changes.clone();
            match db
                .transaction(move |c| storage::rebuild(c, &marker, &id))
                .await?
            {
                storage::Rebuilt::Stored(stored) => {
                    stored.committed(changes);
                    rebuilt += 1;
                    progress = true;
                }
                storage::Rebuilt::Present => progress = true,
                storage::Rebuilt::NoView => {}
            }
        }
        // Events that make no view stay as they are.
        if !progress {
            break;
        }
    }
    if rebuilt > 0 {
        tracing::info!(views = rebuilt, "rebuilt my page views from their events");
    }
    Ok(())
}
