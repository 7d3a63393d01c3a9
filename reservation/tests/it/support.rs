//! A reservation service and a payment service wired together for one test.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use chrono::Utc;
use diesel::{ExpressionMethods, QueryDsl, RunQueryDsl};
use ssak3_common::{
    auth::Role,
    config::{BreakerConfig, Config, GatewayConfig, PaymentClientConfig, ReconcileConfig},
    db::{Database, DatabaseUrl},
    events::Bus,
    test_support::{self, Running, TestDb, TestEmbeddedBus},
    time,
};
use ssak3_payment::{gateway::SimulatedGateway, grpc::CallCounts};
use ssak3_proto::{
    payment::v1::{self as payment_pb, payment_service_client::PaymentServiceClient},
    reservation::v1::{self as pb, reservation_service_client::ReservationServiceClient},
};
use ssak3_reservation::{domain::Reservation, payment_client::PaymentClient, storage};
use tonic::{Request, transport::Channel};

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
    pub gateway: Arc<SimulatedGateway>,
    pub payment_calls: Arc<CallCounts>,
    pub payment_client: PaymentClient,
    /// Payment's config, pinned to the port it first got so that it can be restarted.
    payment_config: Config,
    reservation_db: TestDb,
    _payment_db: TestDb,
    _bus: TestEmbeddedBus,
}

fn test_db(backend: Backend) -> TestDb {
    match backend {
        Backend::Sqlite => TestDb::sqlite(),
        Backend::Postgres => TestDb::postgres(),
    }
}

async fn start_payment(
    config: &Config,
    bus: &Bus,
    gateway: &Arc<SimulatedGateway>,
) -> (Running, Arc<CallCounts>) {
    let app = ssak3_payment::App::build_with_gateway(
        config,
        test_support::keys(),
        bus.clone(),
        gateway.clone(),
    )
    .await
    .unwrap_or_else(|e| panic!("payment build: {e:#}"));
    let calls = app.call_counts();
    let addr = app.local_addr().unwrap_or_else(|e| panic!("{e}"));
    (
        Running::start(addr, |shutdown| app.run(shutdown)).await,
        calls,
    )
}

impl Mesh {
    pub async fn start(options: Options) -> Self {
        test_support::init_logs();
        let payment_db = test_db(options.backend);
        let reservation_db = test_db(options.backend);
        let gateway = Arc::new(SimulatedGateway::new(options.gateway.clone()));
        let bus = TestEmbeddedBus::new().await;

        let mut payment_config = payment_db.config();
        let (payment, payment_calls) = start_payment(&payment_config, &bus.bus, &gateway).await;
        payment_config.listen = Some(payment.addr);

        let reservation_config = Config {
            payment_endpoint: payment.endpoint(),
            payment_client: options.payment_client.clone(),
            reconcile: options.reconcile.clone(),
            ..reservation_db.config()
        };
        let app = ssak3_reservation::App::build(
            &reservation_config,
            test_support::keys(),
            bus.bus.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("reservation build: {e:#}"));
        let payment_client = app.payment_client();
        let addr = app.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let reservation = Running::start(addr, |shutdown| app.run(shutdown)).await;
        Self {
            reservation,
            payment: Some(payment),
            gateway,
            payment_calls,
            payment_client,
            payment_config,
            reservation_db,
            _payment_db: payment_db,
            _bus: bus,
        }
    }

    /// Stops the payment service (its port then refuses connections).
    pub async fn stop_payment(&mut self) {
        if let Some(payment) = self.payment.take() {
            payment
                .stop()
                .await
                .unwrap_or_else(|e| panic!("payment stop: {e:#}"));
        }
    }

    /// A client of the reservation service.
    pub async fn reservations(&self) -> ReservationServiceClient<Channel> {
        ReservationServiceClient::new(channel(self.reservation.addr).await)
    }

    /// A client of the payment service.
    pub async fn payments(&self) -> PaymentServiceClient<Channel> {
        let addr = self.payment_config.listen.unwrap_or_else(|| unreachable!());
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
            .get_payment(as_caller(request, "reservation", Role::Service))
            .await?;
        Ok(response.into_inner())
    }

    /// Reads the reservation stored under a customer's request_id, straight from its database.
    pub async fn stored(&self, customer: &str, request_id: &str) -> Option<Reservation> {
        let (customer, request_id) = (customer.to_owned(), request_id.to_owned());
        self.reservation_database()
            .read(move |c| storage::find_by_idempotency_key(c, &customer, &request_id))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// How many reservations are stored.
    pub async fn stored_count(&self) -> i64 {
        self.reservation_database()
            .read(|c| storage::reservations::table.count().get_result(c))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
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
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn reservation_database(&self) -> Database {
        let url = DatabaseUrl::parse(&self.reservation_db.url()).unwrap_or_else(|e| panic!("{e}"));
        Database::connect(&url, 1).unwrap_or_else(|e| panic!("{e}"))
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// `message` sent with a valid token for `subject` in `role`.
pub fn as_caller<T>(message: T, subject: &str, role: Role) -> Request<T> {
    with_token(message, &test_support::token(subject, role))
}

/// `message` sent with `authorization: Bearer token`.
pub fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .unwrap_or_else(|_| unreachable!()),
    );
    request
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

/// Polls `check` every 50 ms until it holds (panics after `within`).
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

/// The RetryInfo delay of an UNAVAILABLE status.
pub fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    use tonic_types::StatusExt as _;
    status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
}
