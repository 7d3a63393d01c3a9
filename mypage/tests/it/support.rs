//! One my page service with its own database and bus.

use ssak3_common::{
    auth::Role,
    events::{Bus, Message, Topology, new_event},
    test_support::{self, Running, TestDb, TestEmbeddedBus, as_user, channel},
};
use ssak3_proto::{
    events::v1::{self as ev, Event, event::Payload},
    mypage::v1::{self as pb, my_page_service_client::MyPageServiceClient},
};
use tonic::transport::Channel;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub const CUSTOMER: &str = "alice";
pub const COMPANY: &str = "acme-cleaning";

/// A running my page service.
pub struct MyPage {
    pub bus: Bus,
    running: Running,
    db: TestDb,
    _bus: TestEmbeddedBus,
}

async fn start_app(db: &TestDb, bus: &Bus) -> Running {
    let app = ssak3_mypage::App::build(&db.config(), bus.clone())
        .await
        .expect("my page builds");
    let addr = app.local_addr().expect("a bound address");
    Running::start(addr, |shutdown| app.run(shutdown)).await
}

impl MyPage {
    pub async fn start() -> Self {
        Self::start_on(TestDb::sqlite()).await
    }

    /// On a PostgreSQL database of its own, as replicas run.
    pub async fn start_on_postgres() -> Self {
        Self::start_on(TestDb::postgres()).await
    }

    async fn start_on(db: TestDb) -> Self {
        test_support::init_logs();
        let bus = TestEmbeddedBus::new(Topology::new(vec![ssak3_mypage::SUBSCRIPTION])).await;
        let running = start_app(&db, &bus.bus).await;
        Self {
            bus: bus.bus.clone(),
            running,
            db,
            _bus: bus,
        }
    }

    /// Another replica on the same database that consumes nothing (a bus
    /// of its own carries no events): whatever its watchers see, another
    /// replica stored.
    pub async fn idle_replica(&self) -> (Running, TestEmbeddedBus) {
        let bus = TestEmbeddedBus::new(Topology::new(vec![ssak3_mypage::SUBSCRIPTION])).await;
        (start_app(&self.db, &bus.bus).await, bus)
    }

    pub async fn client(&self) -> MyPageServiceClient<Channel> {
        MyPageServiceClient::new(channel(self.running.addr).await)
    }

    pub async fn publish(&self, events: &[Event]) {
        let messages: Vec<Message> = events.iter().map(Message::from).collect();
        self.bus
            .publish(&messages)
            .await
            .expect("the bus stores the events");
    }

    /// `who`'s view of a reservation, or the status of the refusal.
    pub async fn view(
        &self,
        who: &str,
        role: Role,
        id: &str,
    ) -> Result<pb::ReservationView, tonic::Status> {
        self.client()
            .await
            .get_my_reservation(as_user(
                who,
                role,
                pb::GetMyReservationRequest {
                    reservation_id: id.into(),
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }
}

/// The events of a booking that was paid, cancelled and refunded.
pub fn refunded_story(id: &str, customer: &str, company: &str) -> Vec<Event> {
    let money = Some(ssak3_proto::r#type::v1::Money {
        currency_code: "KRW".into(),
        units: 50_000,
    });
    vec![
        new_event(
            id,
            2,
            Payload::PaymentApproved(ev::PaymentApproved {
                payment_id: format!("p-{id}"),
                reservation_id: id.into(),
                customer_id: customer.into(),
                cleaner_id: company.into(),
                address: "12 Gangnam-daero, Seoul".into(),
                scheduled_at: None,
                amount: money.clone(),
            }),
        ),
        new_event(
            id,
            3,
            Payload::ReservationCancelled(ev::ReservationCancelled {
                reservation_id: id.into(),
                customer_id: customer.into(),
                cleaner_id: company.into(),
                reason: "changed plans".into(),
            }),
        ),
        new_event(
            id,
            4,
            Payload::PaymentCancelled(ev::PaymentCancelled {
                payment_id: format!("p-{id}"),
                reservation_id: id.into(),
                customer_id: customer.into(),
                cleaner_id: company.into(),
                amount: money,
            }),
        ),
    ]
}
