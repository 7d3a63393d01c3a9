//! A reservation service and a payment service wired together for one test.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use diesel::{ExpressionMethods, QueryDsl, RunQueryDsl};
pub use ssak3_common::test_support::{as_service, as_user, eventually_within, with_token};
use ssak3_common::{
    config::{BreakerConfig, Config},
    db::{Database, DatabaseUrl},
    events::{Bus, Topology},
    ids::{CustomerId, RequestId},
    test_support::{self, Link, Running, TestDb, TestEmbeddedBus, channel},
    time,
};
use ssak3_payment::{config::GatewayConfig, gateway::SimulatedGateway};
use ssak3_proto::{
    payment::v1::{self as payment_pb, payment_service_client::PaymentServiceClient},
    reservation::v1::{
        self as pb, cleaning_service_client::CleaningServiceClient,
        reservation_service_client::ReservationServiceClient,
    },
};
use ssak3_reservation::{
    config::{CompanySeed, PaymentClientConfig, ReconcileConfig},
    domain::Reservation,
    payment_client::PaymentClient,
    storage,
};
use tonic::transport::Channel;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What a test may change about the pair.
#[derive(Clone, Debug)]
pub struct Options {
    pub backend: Backend,
    pub payment_client: PaymentClientConfig,
    pub reconcile: ReconcileConfig,
    pub gateway: GatewayConfig,
}

impl Options {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            payment_client: PaymentClientConfig {
                timeout_ms: 2_000,
                ..PaymentClientConfig::default()
            },
            // Long enough that nothing is reconciled unless a test asks for it.
            reconcile: ReconcileConfig {
                pending_timeout_ms: 600_000,
                interval_ms: 100,
                ..ReconcileConfig::default()
            },
            gateway: GatewayConfig::default(),
        }
    }

    /// A breaker that opens after `calls` failures and probes after `open_ms`.
    pub fn with_breaker(mut self, timeout_ms: u64, calls: usize, open_ms: u64) -> Self {
        self.payment_client.timeout_ms = timeout_ms;
        self.payment_client.breaker = BreakerConfig {
            failure_rate: 0.5,
            window_ms: 60_000,
            minimum_calls: calls,
            open_ms,
            half_open_calls: 1,
        };
        self
    }
}

/// The two services, their databases, and handles into them.
pub struct Mesh {
    pub reservation: Running,
    pub payment: Option<Running>,
    /// Reservation reaches payment through this link, which a test may sever.
    pub payment_link: Link,
    pub gateway: Arc<SimulatedGateway>,
    pub payment_client: PaymentClient,
    /// Payment's config, pinned to the port it first got so that it can be restarted.
    payment_config: Config,
    reservation_db: TestDb,
    payment_db: TestDb,
    _bus: TestEmbeddedBus,
}

fn test_db(backend: Backend) -> TestDb {
    match backend {
        Backend::Sqlite => TestDb::sqlite(),
        Backend::Postgres => TestDb::postgres(),
    }
}

/// The queues of the services these tests run: payment's refunds (and
/// none of notify's or my page's, which these tests do not start).
fn topology() -> Topology {
    Topology::new(vec![ssak3_payment::SUBSCRIPTION])
}

async fn start_payment(config: &Config, bus: &Bus, gateway: &Arc<SimulatedGateway>) -> Running {
    let app = ssak3_payment::App::build_with_gateway(
        config,
        &ssak3_payment::Settings::default(),
        bus.clone(),
        gateway.clone(),
    )
    .await
    .expect("payment builds");
    let addr = app.local_addr().expect("a bound address");
    Running::start(addr, |shutdown| app.run(shutdown)).await
}

impl Mesh {
    pub async fn start(options: Options) -> Self {
        test_support::init_logs();
        let payment_db = test_db(options.backend);
        let reservation_db = test_db(options.backend);
        let gateway = Arc::new(SimulatedGateway::new(options.gateway.clone()));
        let bus = TestEmbeddedBus::new(topology()).await;

        let mut payment_config = payment_db.config();
        let payment = start_payment(&payment_config, &bus.bus, &gateway).await;
        payment_config.listen = Some(payment.addr);
        let payment_link = Link::start(payment.addr).await;

        let settings = ssak3_reservation::Settings {
            companies: ["acme-cleaning", "other-co"]
                .into_iter()
                .map(|id| CompanySeed {
                    company_id: id.into(),
                    display_name: format!("{id} (a test company)"),
                })
                .collect(),
            payment_endpoint: payment_link.endpoint(),
            payment_client: options.payment_client.clone(),
            reconcile: options.reconcile.clone(),
            ..ssak3_reservation::Settings::default()
        };
        let app =
            ssak3_reservation::App::build(&reservation_db.config(), &settings, bus.bus.clone())
                .await
                .expect("reservation builds");
        let payment_client = app.payment_client();
        let addr = app.local_addr().expect("a bound address");
        let reservation = Running::start(addr, |shutdown| app.run(shutdown)).await;
        Self {
            reservation,
            payment: Some(payment),
            payment_link,
            gateway,
            payment_client,
            payment_config,
            reservation_db,
            payment_db,
            _bus: bus,
        }
    }

    /// Stops the payment service (its port then refuses connections).
    pub async fn stop_payment(&mut self) {
        if let Some(payment) = self.payment.take() {
            payment.stop().await.expect("payment stops");
        }
    }

    /// Breaks every connection both services hold to PostgreSQL, as a
    /// restart of the server does.
    pub fn terminate_database_connections(&self) {
        self.reservation_db.terminate_connections();
        self.payment_db.terminate_connections();
    }

    /// A client of the reservation service.
    pub async fn reservations(&self) -> ReservationServiceClient<Channel> {
        ReservationServiceClient::new(channel(self.reservation.addr).await)
    }

    /// The cleaning companies' client of the reservation service.
    pub async fn cleaning(&self) -> CleaningServiceClient<Channel> {
        CleaningServiceClient::new(channel(self.reservation.addr).await)
    }

    /// A client of the payment service.
    pub async fn payments(&self) -> PaymentServiceClient<Channel> {
        let addr = self
            .payment_config
            .listen
            .expect("payment's address is pinned");
        PaymentServiceClient::new(channel(addr).await)
    }

    /// Payment's view of a reservation's payment, as a service sees it.
    pub async fn payment_of(
        &self,
        reservation_id: &str,
    ) -> Result<payment_pb::Payment, tonic::Status> {
        let request = payment_pb::GetPaymentRequest {
            lookup: Some(payment_pb::get_payment_request::Lookup::ReservationId(
                reservation_id.to_owned(),
            )),
        };
        let response = self
            .payments()
            .await
            .get_payment(as_service("payment", request))
            .await?;
        Ok(response.into_inner())
    }

    /// Reads the reservation stored under a customer's request_id, straight from its database.
    pub async fn stored(&self, customer: &str, request_id: &str) -> Option<Reservation> {
        let customer = CustomerId::parse(customer).expect("a valid customer id");
        let request_id = RequestId::parse(request_id).expect("a valid request id");
        self.reservation_database()
            .read(move |c| storage::find_by_idempotency_key(c, &customer, &request_id))
            .await
            .expect("the reservation database answers")
    }

    /// How many reservations are stored.
    pub async fn stored_count(&self) -> i64 {
        self.reservation_database()
            .read(|c| storage::reservations::table.count().get_result(c))
            .await
            .expect("the reservation database answers")
    }

    /// How many reservations in `state` are stored.
    pub async fn stored_in_state(&self, state: &'static str) -> i64 {
        self.reservation_database()
            .read(move |c| {
                storage::reservations::table
                    .filter(storage::reservations::state.eq(state))
                    .count()
                    .get_result(c)
            })
            .await
            .expect("the reservation database answers")
    }

    pub fn reservation_database(&self) -> Database {
        let url = DatabaseUrl::parse(&self.reservation_db.url()).expect("a database URL");
        Database::connect(&url, 1).expect("the reservation database opens")
    }
}

/// A valid booking request for tomorrow.
pub fn booking(request_id: &str) -> pb::CreateReservationRequest {
    pb::CreateReservationRequest {
        request_id: request_id.to_owned(),
        cleaner_id: "acme-cleaning".into(),
        address: "12 Gangnam-daero, Seoul".into(),
        scheduled_at: Some(time::to_timestamp(Utc::now() + chrono::Duration::days(1))),
        service_type: pb::ServiceType::Standard as i32,
        note: "two cats; key under the mat".into(),
    }
}

/// The RetryInfo delay of an UNAVAILABLE status.
pub fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    use tonic_types::StatusExt as _;
    status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
}
