//! The four services started together for a test, over RabbitMQ and
//! PostgreSQL or over the in-process bus and SQLite, plus a webhook
//! receiver standing in for the companies' and customers' apps.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

pub use ssak3_common::test_support::{Webhook, as_user, eventually};
use ssak3_common::{
    auth::Role,
    config::Config,
    events::{Bus, Topology},
    test_support::{self, Running, TestBroker, TestDb, TestEmbeddedBus, channel},
    time,
};
use ssak3_payment::gateway::SimulatedGateway;
use ssak3_proto::{
    mypage::v1::{self as mypage, my_page_service_client::MyPageServiceClient},
    notify::v1::{self as notify, notification_service_client::NotificationServiceClient},
    reservation::v1::{
        self as reservation, cleaning_service_client::CleaningServiceClient,
        company_service_client::CompanyServiceClient,
        reservation_service_client::ReservationServiceClient,
    },
};
use tonic::transport::Channel;

/// How events travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// RabbitMQ, with a PostgreSQL database per service.
    Rabbit,
    /// The durable in-process bus, with SQLite files (the `ssak3 up` default).
    Embedded,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Svc {
    Reservation,
    Payment,
    Notify,
    Mypage,
}

pub const CUSTOMER: &str = "alice";
pub const COMPANY: &str = "acme-cleaning";

/// Every consuming service's queue, as `ssak3` declares them.
pub fn topology() -> Topology {
    Topology::new(vec![
        ssak3_payment::SUBSCRIPTION,
        ssak3_notify::SUBSCRIPTION,
        ssak3_mypage::SUBSCRIPTION,
    ])
}

/// Tests that restart the broker hold this exclusively; every other test
/// that uses RabbitMQ holds it shared, so a restart never surprises one.
pub static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A test's hold on [`BROKER`] (a read or write guard), released on drop.
type BrokerHold = Box<dyn std::any::Any + Send + Sync>;

pub struct System {
    configs: HashMap<Svc, Config>,
    running: HashMap<Svc, Running>,
    admin: HashMap<Svc, SocketAddr>,
    pub gateway: Arc<SimulatedGateway>,
    pub webhook: Webhook,
    pub broker: Option<TestBroker>,
    embedded: Option<TestEmbeddedBus>,
    _dbs: Vec<TestDb>,
    _hold: Option<BrokerHold>,
}

impl System {
    pub async fn start(transport: Transport) -> Self {
        let hold = match transport {
            Transport::Rabbit => Some(Box::new(BROKER.read().await) as BrokerHold),
            Transport::Embedded => None,
        };
        Self::start_holding(transport, hold, None).await
    }

    /// An embedded system whose services accept only tokens for `audience`.
    pub async fn start_with_audience(audience: &str) -> Self {
        Self::start_holding(Transport::Embedded, None, Some(audience)).await
    }

    /// A system over RabbitMQ that may restart the broker.
    pub async fn start_with_broker_to_itself() -> Self {
        let hold: BrokerHold = Box::new(BROKER.write().await);
        Self::start_holding(Transport::Rabbit, Some(hold), None).await
    }

    async fn start_holding(
        transport: Transport,
        hold: Option<BrokerHold>,
        audience: Option<&str>,
    ) -> Self {
        test_support::init_logs();
        let webhook = Webhook::start().await;
        let (broker, embedded) = match transport {
            Transport::Rabbit => (Some(TestBroker::new(topology())), None),
            Transport::Embedded => (None, Some(TestEmbeddedBus::new(topology()).await)),
        };
        let events = match (&broker, &embedded) {
            (Some(broker), _) => broker.config.clone(),
            _ => test_support::events_config("embedded"),
        };
        let mut dbs = Vec::new();
        let mut configs = HashMap::new();
        for svc in [Svc::Reservation, Svc::Payment, Svc::Notify, Svc::Mypage] {
            let db = match transport {
                Transport::Rabbit => TestDb::postgres(),
                Transport::Embedded => TestDb::sqlite(),
            };
            let mut config = Config {
                events: events.clone(),
                ..db.config()
            };
            config.auth.audience = audience.map(str::to_owned);
            configs.insert(svc, config);
            dbs.push(db);
        }
        let mut system = Self {
            configs,
            running: HashMap::new(),
            admin: HashMap::new(),
            gateway: Arc::new(SimulatedGateway::new(Default::default())),
            webhook,
            broker,
            embedded,
            _dbs: dbs,
            _hold: hold,
        };
        // Payment first: reservation is configured with its address.
        for svc in [Svc::Payment, Svc::Reservation, Svc::Notify, Svc::Mypage] {
            system.start_service(svc).await;
        }
        system
    }

    /// A bus for one service (RabbitMQ: a connection of its own).
    pub fn bus(&self, client: &str) -> Bus {
        match (&self.broker, &self.embedded) {
            (Some(broker), _) => broker.bus(client),
            (_, Some(embedded)) => embedded.bus.clone(),
            _ => unreachable!("a system has one transport"),
        }
    }

    /// Opens the in-process bus again from its file, as a restarted process would.
    pub async fn reopen_embedded_bus(&mut self) {
        if let Some(embedded) = &mut self.embedded {
            embedded.bus = TestEmbeddedBus::open(embedded.dir.path(), topology()).await;
        }
    }

    pub fn config(&self, svc: Svc) -> Config {
        self.configs[&svc].clone()
    }

    /// Starts `svc` (again) on its port, with `bus` or its usual one.
    pub async fn start_service_with(&mut self, svc: Svc, bus: Bus) {
        let config = self.config(svc);
        let (admin, running) = match svc {
            Svc::Reservation => {
                let payment = self.configs[&Svc::Payment]
                    .listen
                    .expect("payment starts first");
                let settings = ssak3_reservation::Settings {
                    payment_endpoint: format!("http://{payment}"),
                    companies: [COMPANY, "other-co", "other-cleaning"]
                        .into_iter()
                        .map(|id| ssak3_reservation::config::CompanySeed {
                            company_id: id.into(),
                            display_name: format!("{id} (a test company)"),
                        })
                        .collect(),
                    ..Default::default()
                };
                let app = ssak3_reservation::App::build(&config, &settings, bus)
                    .await
                    .expect("reservation builds");
                let admin = app.admin_addr().expect("reservation has an admin port");
                let addr = app.local_addr().expect("reservation is bound");
                (admin, Running::start(addr, |stop| app.run(stop)).await)
            }
            Svc::Payment => {
                let app = ssak3_payment::App::build_with_gateway(
                    &config,
                    &ssak3_payment::Settings::default(),
                    bus,
                    self.gateway.clone(),
                )
                .await
                .expect("payment builds");
                let admin = app.admin_addr().expect("payment has an admin port");
                let addr = app.local_addr().expect("payment is bound");
                (admin, Running::start(addr, |stop| app.run(stop)).await)
            }
            Svc::Notify => {
                let mut settings = ssak3_notify::Settings::default();
                settings.notify.webhook_url = Some(self.webhook.url());
                settings.notify.webhook_secret = Some(self.webhook.secret());
                settings.notify.retry_base_ms = 20;
                settings.notify.retry_max_ms = 200;
                let app = ssak3_notify::App::build(&config, &settings, bus)
                    .await
                    .expect("notify builds");
                let admin = app.admin_addr().expect("notify has an admin port");
                let addr = app.local_addr().expect("notify is bound");
                (admin, Running::start(addr, |stop| app.run(stop)).await)
            }
            Svc::Mypage => {
                let app = ssak3_mypage::App::build(&config, bus)
                    .await
                    .expect("mypage builds");
                let admin = app.admin_addr().expect("mypage has an admin port");
                let addr = app.local_addr().expect("mypage is bound");
                (admin, Running::start(addr, |stop| app.run(stop)).await)
            }
        };

        // Later starts reuse the ports, so that clients and callers find them again.
        if let Some(config) = self.configs.get_mut(&svc) {
            config.listen = Some(running.addr);
            config.admin_listen = Some(admin);
        }
        self.admin.insert(svc, admin);
        self.running.insert(svc, running);
    }

    pub async fn start_service(&mut self, svc: Svc) {
        let bus = self.bus(&format!("{svc:?}").to_lowercase());
        self.start_service_with(svc, bus).await;
    }

    /// Stops `svc` gracefully (drain, stop consumers and relay).
    pub async fn stop_service(&mut self, svc: Svc) {
        if let Some(running) = self.running.remove(&svc) {
            running
                .stop()
                .await
                .unwrap_or_else(|e| panic!("{svc:?} stopped with an error: {e:#}"));
        }
    }

    /// Stops every service, then drops the broker namespace and databases.
    pub async fn stop(mut self) {
        for svc in [Svc::Reservation, Svc::Notify, Svc::Mypage, Svc::Payment] {
            self.stop_service(svc).await;
        }
    }

    /// The Prometheus text `svc` serves on its admin port.
    pub async fn metrics(&self, svc: Svc) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(self.admin[&svc])
            .await
            .unwrap_or_else(|e| panic!("{svc:?} admin port: {e}"));
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
            .await
            .expect("write all");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("read to string");
        assert!(
            response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
            "{response}"
        );
        response
    }

    /// How many rows `table` of `svc`'s database holds.
    pub async fn stored(&self, svc: Svc, table: &'static str) -> i64 {
        use diesel::RunQueryDsl as _;
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let url = self.configs[&svc]
            .database_url
            .clone()
            .expect("a database URL");
        let db = ssak3_common::db::Database::connect(
            &ssak3_common::db::DatabaseUrl::parse(&url).expect("a URL"),
            1,
        )
        .expect("the database opens");
        db.read(move |c| {
            diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {table}")).get_result::<Count>(c)
        })
        .await
        .expect("the count")
        .n
    }

    pub fn addr(&self, svc: Svc) -> SocketAddr {
        self.configs[&svc].listen.unwrap_or_else(|| unreachable!())
    }

    pub async fn reservations(&self) -> ReservationServiceClient<Channel> {
        ReservationServiceClient::new(channel(self.addr(Svc::Reservation)).await)
    }

    pub async fn cleaning(&self) -> CleaningServiceClient<Channel> {
        CleaningServiceClient::new(channel(self.addr(Svc::Reservation)).await)
    }

    pub async fn companies(&self) -> CompanyServiceClient<Channel> {
        CompanyServiceClient::new(channel(self.addr(Svc::Reservation)).await)
    }

    pub async fn notifications(&self) -> NotificationServiceClient<Channel> {
        NotificationServiceClient::new(channel(self.addr(Svc::Notify)).await)
    }

    pub async fn mypage(&self) -> MyPageServiceClient<Channel> {
        MyPageServiceClient::new(channel(self.addr(Svc::Mypage)).await)
    }

    /// Books a standard cleaning for `customer` with `company`; it must confirm.
    pub async fn book(&self, customer: &str, company: &str) -> reservation::Reservation {
        let request = reservation::CreateReservationRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            cleaner_id: company.into(),
            address: "12 Gangnam-daero, Seoul".into(),
            scheduled_at: Some(time::to_timestamp(time::now() + chrono::TimeDelta::days(2))),
            service_type: reservation::ServiceType::Standard as i32,
            note: String::new(),
        };
        let booked = self
            .reservations()
            .await
            .create_reservation(as_user(customer, Role::Customer, request))
            .await
            .expect("booking failed")
            .into_inner();
        assert_eq!(
            booked.state,
            reservation::ReservationState::Confirmed as i32
        );
        booked
    }

    /// Everyone's notifications of `recipient` (all pages).
    pub async fn notifications_of(&self, recipient: &str, role: Role) -> Vec<notify::Notification> {
        let mut client = self.notifications().await;
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_notifications(as_user(
                    recipient,
                    role,
                    notify::ListNotificationsRequest {
                        page_size: 100,
                        page_token,
                    },
                ))
                .await
                .expect("list notifications")
                .into_inner();
            all.extend(page.notifications);
            if page.next_page_token.is_empty() {
                return all;
            }
            page_token = page.next_page_token;
        }
    }

    /// The my page view of a reservation, if it is there yet.
    pub async fn view(&self, user: &str, role: Role, id: &str) -> Option<mypage::ReservationView> {
        self.mypage()
            .await
            .get_my_reservation(as_user(
                user,
                role,
                mypage::GetMyReservationRequest {
                    reservation_id: id.into(),
                },
            ))
            .await
            .ok()
            .map(tonic::Response::into_inner)
    }

    /// Every my page view of `user` (all pages).
    pub async fn views_of(&self, user: &str, role: Role) -> Vec<mypage::ReservationView> {
        let mut client = self.mypage().await;
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_my_reservations(as_user(
                    user,
                    role,
                    mypage::ListMyReservationsRequest {
                        page_size: 100,
                        page_token,
                    },
                ))
                .await
                .expect("list my reservations")
                .into_inner();
            all.extend(page.reservations);
            if page.next_page_token.is_empty() {
                return all;
            }
            page_token = page.next_page_token;
        }
    }
}
