//! The four services started together for a test, over RabbitMQ and
//! PostgreSQL or over the in-process bus and SQLite, plus a webhook
//! receiver standing in for the companies' and customers' apps.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use ssak3_common::{
    auth::{self, Role},
    config::Config,
    events::Bus,
    test_support::{self, Running, TestBroker, TestDb, TestEmbeddedBus},
    time,
};
use ssak3_payment::gateway::SimulatedGateway;
use ssak3_proto::{
    mypage::v1::{self as mypage, my_page_service_client::MyPageServiceClient},
    notify::v1::{self as notify, notification_service_client::NotificationServiceClient},
    reservation::v1::{
        self as reservation, cleaning_service_client::CleaningServiceClient,
        reservation_service_client::ReservationServiceClient,
    },
};
use tonic::{Request, transport::Channel};

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
        Self::start_holding(transport, hold).await
    }

    /// A system over RabbitMQ that may restart the broker.
    pub async fn start_with_broker_to_itself() -> Self {
        let hold: BrokerHold = Box::new(BROKER.write().await);
        Self::start_holding(Transport::Rabbit, Some(hold)).await
    }

    async fn start_holding(transport: Transport, hold: Option<BrokerHold>) -> Self {
        test_support::init_logs();
        let webhook = Webhook::start().await;
        let (broker, embedded) = match transport {
            Transport::Rabbit => (Some(TestBroker::new()), None),
            Transport::Embedded => (None, Some(TestEmbeddedBus::new().await)),
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
            config.notify.webhook_url = Some(webhook.url());
            config.notify.retry_base_ms = 20;
            config.notify.retry_max_ms = 200;
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
            embedded.bus = TestEmbeddedBus::open(embedded.dir.path()).await;
        }
    }

    pub fn config(&self, svc: Svc) -> Config {
        self.configs[&svc].clone()
    }

    /// Starts `svc` (again) on its port, with `bus` or its usual one.
    pub async fn start_service_with(&mut self, svc: Svc, bus: Bus) {
        let mut config = self.config(svc);
        if svc == Svc::Reservation {
            let payment = self.configs[&Svc::Payment]
                .listen
                .unwrap_or_else(|| unreachable!());
            config.payment_endpoint = format!("http://{payment}");
        }
        let keys = test_support::keys();
        let fail = |e: anyhow::Error| -> ! { panic!("{svc:?} build: {e:#}") };
        let admin;
        let running = match svc {
            Svc::Reservation => {
                let app = ssak3_reservation::App::build(&config, keys, bus)
                    .await
                    .unwrap_or_else(|e| fail(e));
                let addr = app.local_addr().unwrap_or_else(|e| fail(e));
                admin = app.admin_addr().unwrap_or_else(|e| fail(e));
                Running::start(addr, |stop| app.run(stop)).await
            }
            Svc::Payment => {
                let app = ssak3_payment::App::build_with_gateway(
                    &config,
                    keys,
                    bus,
                    self.gateway.clone(),
                )
                .await
                .unwrap_or_else(|e| fail(e));
                let addr = app.local_addr().unwrap_or_else(|e| fail(e));
                admin = app.admin_addr().unwrap_or_else(|e| fail(e));
                Running::start(addr, |stop| app.run(stop)).await
            }
            Svc::Notify => {
                let app = ssak3_notify::App::build(&config, keys, bus)
                    .await
                    .unwrap_or_else(|e| fail(e));
                let addr = app.local_addr().unwrap_or_else(|e| fail(e));
                admin = app.admin_addr().unwrap_or_else(|e| fail(e));
                Running::start(addr, |stop| app.run(stop)).await
            }
            Svc::Mypage => {
                let app = ssak3_mypage::App::build(&config, keys, bus)
                    .await
                    .unwrap_or_else(|e| fail(e));
                let addr = app.local_addr().unwrap_or_else(|e| fail(e));
                admin = app.admin_addr().unwrap_or_else(|e| fail(e));
                Running::start(addr, |stop| app.run(stop)).await
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
            .unwrap_or_else(|e| panic!("{e}"));
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
            "{response}"
        );
        response
    }

    fn addr(&self, svc: Svc) -> SocketAddr {
        self.configs[&svc].listen.unwrap_or_else(|| unreachable!())
    }

    pub async fn reservations(&self) -> ReservationServiceClient<Channel> {
        ReservationServiceClient::new(channel(self.addr(Svc::Reservation)).await)
    }

    pub async fn cleaning(&self) -> CleaningServiceClient<Channel> {
        CleaningServiceClient::new(channel(self.addr(Svc::Reservation)).await)
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
            .unwrap_or_else(|status| panic!("booking failed: {status:?}"))
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
                .unwrap_or_else(|status| panic!("list notifications: {status:?}"))
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
                .unwrap_or_else(|status| panic!("list my reservations: {status:?}"))
                .into_inner();
            all.extend(page.reservations);
            if page.next_page_token.is_empty() {
                return all;
            }
            page_token = page.next_page_token;
        }
    }
}

/// `message` sent as `subject` with `role`.
pub fn as_user<T>(subject: &str, role: Role, message: T) -> Request<T> {
    auth::with_bearer(Request::new(message), &test_support::token(subject, role))
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot reach {addr}: {e}"))
}

/// Polls `check` until it returns `Some`, or fails the test after 30 s.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP endpoint that records the notifications POSTed to it and can
/// fail the first requests, as a flaky partner app would.
#[derive(Clone)]
pub struct Webhook {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<serde_json::Value>>>,
    failures_left: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl Webhook {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("webhook bind: {e}"));
        let webhook = Self {
            addr: listener.local_addr().unwrap_or_else(|e| panic!("{e}")),
            received: Arc::default(),
            failures_left: Arc::default(),
            requests: Arc::default(),
        };
        let server = webhook.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let server = server.clone();
                        async move { server.receive(request).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        webhook
    }

    async fn receive(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let body = request.into_body().collect().await?.to_bytes();
        let failing = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let status = if failing {
            hyper::StatusCode::SERVICE_UNAVAILABLE
        } else {
            if let Ok(json) = serde_json::from_slice(&body) {
                self.received
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(json);
            }
            hyper::StatusCode::NO_CONTENT
        };
        let mut response = hyper::Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        Ok(response)
    }

    pub fn url(&self) -> String {
        format!("http://{}/notifications", self.addr)
    }

    /// The next `n` requests are answered 503.
    pub fn fail_next(&self, n: usize) {
        self.failures_left.store(n, Ordering::SeqCst);
    }

    /// Requests received, failed ones included.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Notification ids accepted, in arrival order.
    pub fn delivered(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|json| json["notification_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// Accepted notifications concerning `reservation_id`.
    pub fn delivered_for(&self, reservation_id: &str) -> Vec<serde_json::Value> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|json| json["reservation_id"] == reservation_id)
            .cloned()
            .collect()
    }
}
