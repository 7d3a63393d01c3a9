//! The reservation service process: build (bind, connect), then run until shut down.

use std::{future::Future, net::SocketAddr, sync::Arc};

use ssak3_common::{
    auth::{Authenticator, JwtKeys},
    config::Config,
    db::{Database, DatabaseUrl},
    events::{Bus, outbox},
    metrics::Metrics,
    server::ServiceHost,
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
        let db = Database::connect(
            &DatabaseUrl::for_service(config, "reservation")?,
            config.database_pool_size,
        )?;
        let payment = PaymentClient::new(
            &config.payment_endpoint,
            &config.payment_client,
            keys.clone(),
        )?;
        let mut host = ServiceHost::bind(
            config,
            DEFAULT_PORT,
            &[
                reservation_service_server::SERVICE_NAME,
                cleaning_service_server::SERVICE_NAME,
            ],
        )
        .await?;
        let auth = Authenticator::new(keys);
        let relay = outbox::Relay::new(db.clone(), bus, &config.events, host.metrics());
        watch_breaker(&host.metrics(), payment.clone());
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

    /// Migrates, serves until `shutdown`, then drains; the reconciler and the
    /// outbox relay run while serving.
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

/// Mirrors the breaker on reservation → payment into the metrics at each scrape.
fn watch_breaker(metrics: &Arc<Metrics>, payment: PaymentClient) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let state = metrics.breaker_state.clone();
    let transitions = metrics.breaker_transitions.clone();
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
                .get_or_create(&vec![("to".to_owned(), to.to_owned())])
                .inc_by(now.saturating_sub(before));
        }
        Box::pin(async {})
    }));
}
