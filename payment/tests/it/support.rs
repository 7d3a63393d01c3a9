//! One payment service with its own database, gateway and bus.

use std::sync::Arc;

use ssak3_common::{
    events::Topology,
    test_support::{self, Running, TestDb, TestEmbeddedBus, as_service, channel},
    time,
};
use ssak3_payment::{Settings, config::GatewayConfig, gateway::SimulatedGateway};
use ssak3_proto::{
    payment::{
        internal::v1::{
            self as internal, internal_payment_service_client::InternalPaymentServiceClient,
        },
        v1::{self as pb, payment_service_client::PaymentServiceClient},
    },
    r#type::v1::Money,
};
use tonic::transport::Channel;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A running payment service.
pub struct Payment {
    pub gateway: Arc<SimulatedGateway>,
    _db: TestDb,
    running: Running,
    _bus: TestEmbeddedBus,
}

impl Payment {
    pub async fn start(db: TestDb, settings: Settings) -> Self {
        test_support::init_logs();
        let bus = TestEmbeddedBus::new(Topology::new(vec![ssak3_payment::SUBSCRIPTION])).await;
        let gateway = Arc::new(SimulatedGateway::new(settings.gateway.clone()));
        let app = ssak3_payment::App::build_with_gateway(
            &db.config(),
            &settings,
            bus.bus.clone(),
            gateway.clone(),
        )
        .await
        .expect("payment builds");
        let addr = app.local_addr().expect("a bound address");
        let running = Running::start(addr, |shutdown| app.run(shutdown)).await;
        Self {
            gateway,
            _db: db,
            running,
            _bus: bus,
        }
    }

    pub async fn sqlite() -> Self {
        Self::start(TestDb::sqlite(), Settings::default()).await
    }

    /// A client of the public PaymentService.
    pub async fn client(&self) -> PaymentServiceClient<Channel> {
        PaymentServiceClient::new(channel(self.running.addr).await)
    }

    /// A client of the service-only calls, as the reservation service has.
    pub async fn internal_client(&self) -> InternalPaymentServiceClient<Channel> {
        InternalPaymentServiceClient::new(channel(self.running.addr).await)
    }

    /// ApprovePayment as the reservation service calls it.
    pub async fn approve(
        &self,
        order: pb::ApprovePaymentRequest,
    ) -> Result<pb::Payment, tonic::Status> {
        self.internal_client()
            .await
            .approve_payment(as_service("payment", order))
            .await
            .map(tonic::Response::into_inner)
    }

    /// CancelPayment as the reservation service calls it.
    pub async fn cancel(&self, reservation_id: &str) -> Result<pb::Payment, tonic::Status> {
        self.internal_client()
            .await
            .cancel_payment(as_service(
                "payment",
                internal::CancelPaymentRequest {
                    reservation_id: reservation_id.into(),
                    reason: "cancelled by the customer".into(),
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }
}

/// A valid order for `reservation_id`, paid by `customer`.
pub fn order(reservation_id: &str, customer: &str, units: i64) -> pb::ApprovePaymentRequest {
    pb::ApprovePaymentRequest {
        reservation_id: reservation_id.into(),
        amount: Some(Money {
            currency_code: "KRW".into(),
            units,
        }),
        customer_id: customer.into(),
        cleaner_id: "acme-cleaning".into(),
        address: "12 Gangnam-daero, Seoul".into(),
        scheduled_at: Some(time::to_timestamp(time::now() + chrono::TimeDelta::days(1))),
    }
}

/// A gateway that is down.
pub fn gateway_down(retry_after_ms: u64) -> Settings {
    Settings {
        gateway: GatewayConfig {
            failure_rate: 1.0,
            retry_after_ms,
            ..GatewayConfig::default()
        },
    }
}
