//! One notify service with its own database, bus and webhook receiver.

use ssak3_common::{
    auth::Role,
    db::{Database, DatabaseUrl},
    events::{Bus, Message, Topology, new_event},
    test_support::{self, Running, TestDb, TestEmbeddedBus, Webhook, as_user, channel},
};
use ssak3_notify::Settings;
use ssak3_proto::{
    events::v1::{self as ev, Event, event::Payload},
    notify::v1::{self as pb, notification_service_client::NotificationServiceClient},
};
use tonic::transport::Channel;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub const CUSTOMER: &str = "alice";
pub const COMPANY: &str = "acme-cleaning";

/// A running notify service.
pub struct Notify {
    pub webhook: Webhook,
    pub bus: Bus,
    pub settings: Settings,
    db: TestDb,
    running: Running,
    _bus: TestEmbeddedBus,
}

impl Notify {
    /// Delivers to a webhook, retrying quickly, at most `max_attempts` times.
    pub async fn start(max_attempts: u32) -> Self {
        Self::start_with(Webhook::start().await, |settings| {
            settings.notify.max_attempts = max_attempts;
        })
        .await
    }

    /// Delivers to `webhook` (its `default` endpoint), with settings changed by `configure`.
    pub async fn start_with(webhook: Webhook, configure: impl FnOnce(&mut Settings)) -> Self {
        Self::start_on(TestDb::sqlite(), webhook, configure).await
    }

    /// On a PostgreSQL database of its own, as replicas run.
    pub async fn start_on_postgres() -> Self {
        Self::start_on(TestDb::postgres(), Webhook::start().await, |_| {}).await
    }

    /// On `db`, delivering to `webhook`, with settings changed by `configure`.
    pub async fn start_on(
        db: TestDb,
        webhook: Webhook,
        configure: impl FnOnce(&mut Settings),
    ) -> Self {
        test_support::init_logs();
        let bus = TestEmbeddedBus::new(Topology::new(vec![ssak3_notify::SUBSCRIPTION])).await;
        let mut settings = Settings::default();
        settings.notify.webhook_url = Some(webhook.url());
        settings.notify.webhook_secret = Some(webhook.secret());
        settings.notify.retry_base_ms = 20;
        settings.notify.retry_max_ms = 50;
        configure(&mut settings);
        let running = start_app(&db, &settings, &bus.bus).await;
        Self {
            webhook,
            bus: bus.bus.clone(),
            settings,
            db,
            running,
            _bus: bus,
        }
    }

    /// Another replica on the same database and queue.
    pub async fn replica(&self) -> Running {
        start_app(&self.db, &self.settings, &self.bus).await
    }

    /// Another replica on the same database that consumes nothing (a bus
    /// of its own carries no events): whatever its watchers see, another
    /// replica stored.
    pub async fn idle_replica(&self) -> (Running, TestEmbeddedBus) {
        let bus = TestEmbeddedBus::new(Topology::new(vec![ssak3_notify::SUBSCRIPTION])).await;
        (start_app(&self.db, &self.settings, &bus.bus).await, bus)
    }

    /// The database, to cut its connections.
    pub fn test_db(&self) -> &TestDb {
        &self.db
    }

    pub async fn client(&self) -> NotificationServiceClient<Channel> {
        NotificationServiceClient::new(channel(self.running.addr).await)
    }

    pub async fn publish(&self, event: &Event) {
        self.bus
            .publish(&[Message::from(event)])
            .await
            .expect("the bus stores the event");
    }

    /// The first page of `who`'s notifications.
    pub async fn list(&self, who: &str, role: Role) -> Vec<pb::Notification> {
        self.client()
            .await
            .list_notifications(as_user(who, role, pb::ListNotificationsRequest::default()))
            .await
            .expect("list notifications")
            .into_inner()
            .notifications
    }

    /// The notify database, to read delivery state the API does not show.
    pub fn database(&self) -> Database {
        Database::connect(&DatabaseUrl::parse(&self.db.url()).expect("a URL"), 1)
            .expect("the notify database opens")
    }
}

async fn start_app(db: &TestDb, settings: &Settings, bus: &Bus) -> Running {
    let app = ssak3_notify::App::build(&db.config(), settings, bus.clone())
        .await
        .expect("notify builds");
    let addr = app.local_addr().expect("a bound address");
    Running::start(addr, |shutdown| app.run(shutdown)).await
}

/// `payment.approved` for a booking of `customer` with `company`.
pub fn approved(reservation_id: &str, customer: &str, company: &str) -> Event {
    new_event(
        reservation_id,
        2,
        Payload::PaymentApproved(ev::PaymentApproved {
            payment_id: format!("p-{reservation_id}"),
            reservation_id: reservation_id.into(),
            customer_id: customer.into(),
            cleaner_id: company.into(),
            address: "12 Gangnam-daero, Seoul".into(),
            scheduled_at: None,
            amount: Some(ssak3_proto::r#type::v1::Money {
                currency_code: "KRW".into(),
                units: 90_000,
            }),
        }),
    )
}

/// `cleaning.completed` of a booking of `customer` with `company`.
pub fn completed(reservation_id: &str, customer: &str, company: &str) -> Event {
    new_event(
        reservation_id,
        3,
        Payload::CleaningCompleted(ev::CleaningCompleted {
            reservation_id: reservation_id.into(),
            customer_id: customer.into(),
            cleaner_id: company.into(),
            completed_at: None,
        }),
    )
}
