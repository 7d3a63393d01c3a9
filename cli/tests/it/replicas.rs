//! Every service as N replicas, as the chart runs them: separate
//! `ssak3 serve` processes, each service's replicas on one PostgreSQL
//! database and one RabbitMQ queue, watchers on every replica, and one
//! replica killed (-9) in the middle.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    ops::Range,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use diesel::{RunQueryDsl as _, sql_query};
use ssak3_common::{
    auth::Role,
    db::{Database, DatabaseUrl},
    events::{EventType, Subscription, Topology},
    test_support::{self, TestBroker, TestDb, Webhook, as_user, channel, eventually_within},
    time,
};
use ssak3_proto::{
    mypage::v1::{self as mypage, my_page_service_client::MyPageServiceClient},
    notify::v1::{self as notify, notification_service_client::NotificationServiceClient},
    reservation::v1::{
        self as reservation, cleaning_service_client::CleaningServiceClient,
        reservation_service_client::ReservationServiceClient,
    },
};
use tokio_stream::StreamExt as _;

use crate::system::{BROKER, COMPANY, CUSTOMER, Svc};

/// A queue of the test's own that receives every event, to count what reaches the broker.
const TAP: Subscription = Subscription {
    queue: "tap",
    events: &EventType::ALL,
};

/// How long a replica's claim on a row (an outbox row, a webhook delivery)
/// lasts before others may take it.
const CLAIM_MS: u64 = 2_000;

fn name(svc: Svc) -> &'static str {
    match svc {
        Svc::Reservation => "reservation",
        Svc::Payment => "payment",
        Svc::Notify => "notify",
        Svc::Mypage => "mypage",
    }
}

/// A free port on loopback (bound, then released for the process to take),
/// never one handed out before in this test run: the system may give a
/// released port again, and two replicas (of one test or of two side by
/// side) would then meet on it.
fn free_addr() -> SocketAddr {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.insert(addr.port()) {
            return addr;
        }
    }
}

struct Replica {
    svc: Svc,
    addr: SocketAddr,
    child: Option<tokio::process::Child>,
    /// What it printed.
    log: std::path::PathBuf,
}

impl Replica {
    /// Waits until it serves. One that exited instead (its port taken
    /// meanwhile, say) fails the test at once with its log, rather than
    /// letting whatever else answers on its port pass for it.
    async fn wait_serving(&mut self) {
        let started = Instant::now();
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "{} on {} exited at start ({status}):\n{}",
                    name(self.svc),
                    self.addr,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if test_support::health_of(self.addr).await
                == Some(test_support::ServingStatus::Serving)
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{} not serving on {} after 60 s",
                name(self.svc),
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The processes, their databases and broker namespace, and a webhook.
struct Cluster {
    replicas: Vec<Replica>,
    dbs: HashMap<Svc, TestDb>,
    broker: TestBroker,
    webhook: Webhook,
    _logs: tempfile::TempDir,
}

impl Cluster {
    /// `counts` replicas of each service; reservation replica i calls payment replica i.
    async fn start(counts: [(Svc, usize); 4], webhook: Webhook) -> Self {
        test_support::init_logs();
        let topology = Topology::new(vec![
            ssak3_payment::SUBSCRIPTION,
            ssak3_notify::SUBSCRIPTION,
            ssak3_mypage::SUBSCRIPTION,
            TAP,
        ]);
        let broker = TestBroker::new(topology);
        broker
            .amqp("tap")
            .check()
            .await
            .expect("the broker takes the topology");
        let logs = tempfile::tempdir().expect("a log directory");
        let keys = test_support::keys();
        let issuer_jwks = serde_json::to_string(&keys.issuer.jwks()).expect("json");
        let reservation_jwks = serde_json::to_string(&keys.reservation.jwks()).expect("json");
        let dbs: HashMap<Svc, TestDb> = counts
            .iter()
            .map(|(svc, _)| (*svc, TestDb::postgres()))
            .collect();
        let payment_addrs: Vec<SocketAddr> = (0..counts[1].1).map(|_| free_addr()).collect();
        let mut replicas = Vec::new();
        for (svc, count) in counts {
            for n in 0..count {
                let addr = match svc {
                    Svc::Payment => payment_addrs[n],
                    _ => free_addr(),
                };
                let mut env: Vec<(&str, String)> = vec![
                    ("SSAK3_LISTEN", addr.to_string()),
                    ("SSAK3_DATABASE_URL", dbs[&svc].url()),
                    // Nine processes per test share the server's connections.
                    ("SSAK3_DATABASE_POOL_SIZE", "2".into()),
                    ("SSAK3_AMQP_URL", test_support::amqp_url()),
                    ("SSAK3_EVENTS__NAMESPACE", broker.config.namespace.clone()),
                    ("SSAK3_EVENTS__RETRY_BASE_MS", "20".into()),
                    ("SSAK3_EVENTS__RETRY_MAX_MS", "500".into()),
                    ("SSAK3_EVENTS__CLAIM_MS", CLAIM_MS.to_string()),
                    ("SSAK3_AUTH__JWKS", issuer_jwks.clone()),
                    ("SSAK3_RATE_LIMIT__ENABLED", "false".into()),
                    ("SSAK3_SHUTDOWN_GRACE_MS", "1000".into()),
                ];
                match svc {
                    Svc::Reservation => env.extend([
                        ("SSAK3_AUTH__SERVICE_KEY", keys.reservation_pem.clone()),
                        (
                            "SSAK3_COMPANIES",
                            format!("[{{company_id=\"{COMPANY}\", display_name=\"Acme\"}}]"),
                        ),
                        (
                            "SSAK3_PAYMENT_ENDPOINT",
                            format!("http://{}", payment_addrs[n % payment_addrs.len()]),
                        ),
                    ]),
                    Svc::Payment => {
                        env.push(("SSAK3_AUTH__SERVICE_KEYS", reservation_jwks.clone()))
                    }
                    Svc::Notify => env.extend([
                        ("SSAK3_NOTIFY__WEBHOOK_URL", webhook.url()),
                        ("SSAK3_NOTIFY__WEBHOOK_SECRET", webhook.secret()),
                        ("SSAK3_NOTIFY__WEBHOOK_TIMEOUT_MS", "1000".into()),
                        ("SSAK3_NOTIFY__RETRY_BASE_MS", "20".into()),
                        ("SSAK3_NOTIFY__RETRY_MAX_MS", "200".into()),
                        ("SSAK3_NOTIFY__CLAIM_MS", CLAIM_MS.to_string()),
                    ]),
                    Svc::Mypage => {}
                }
                let log_path = logs.path().join(format!("{}-{n}.log", name(svc)));
                let log = std::fs::File::create(&log_path).expect("a log file");
                let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ssak3"))
                    .args(["serve", name(svc)])
                    .env_remove("SSAK3_DATA_DIR")
                    .envs(env)
                    .env("RUST_LOG", "info")
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().expect("a log file"))
                    .stderr(log)
                    .kill_on_drop(true)
                    .spawn()
                    .expect("ssak3 serve starts");
                replicas.push(Replica {
                    svc,
                    addr,
                    child: Some(child),
                    log: log_path,
                });
            }
        }
        let mut cluster = Self {
            replicas,
            dbs,
            broker,
            webhook,
            _logs: logs,
        };
        for replica in &mut cluster.replicas {
            replica.wait_serving().await;
        }
        cluster
    }

    fn addrs(&self, svc: Svc) -> Vec<SocketAddr> {
        self.replicas
            .iter()
            .filter(|r| r.svc == svc && r.child.is_some())
            .map(|r| r.addr)
            .collect()
    }

    /// kill -9 replica `n` of `svc`; returns when the signal was sent and
    /// when the process was gone.
    async fn kill(&mut self, svc: Svc, n: usize) -> Range<Instant> {
        let replica = self
            .replicas
            .iter_mut()
            .filter(|r| r.svc == svc)
            .nth(n)
            .expect("such a replica");
        let mut child = replica.child.take().expect("it runs");
        let signalled = Instant::now();
        child.start_kill().expect("kill -9");
        child.wait().await.expect("it ends");
        signalled..Instant::now()
    }

    fn database(&self, svc: Svc) -> Database {
        let url = DatabaseUrl::parse(&self.dbs[&svc].url()).expect("a database URL");
        Database::connect(&url, 1).expect("the database opens")
    }

    /// Rows of `table` in `svc`'s database.
    async fn count(&self, svc: Svc, table: &'static str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        self.database(svc)
            .read(move |c| {
                sql_query(format!("SELECT COUNT(*) AS n FROM {table}")).get_result::<Count>(c)
            })
            .await
            .expect("the database answers")
            .n
    }

    /// Notifications of the notify database not yet delivered.
    async fn undelivered(&self) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        self.database(Svc::Notify)
            .read(|c| {
                sql_query(
                    "SELECT COUNT(*) AS n FROM notifications WHERE delivery_state <> 'DELIVERED'",
                )
                .get_result::<Count>(c)
            })
            .await
            .expect("the database answers")
            .n
    }
}

/// A live stream as its caller sees it: what it received, in order, and
/// the status it ended with, if it ended.
struct Watch<T> {
    seen: Arc<Mutex<Vec<T>>>,
    ended: Arc<Mutex<Option<tonic::Status>>>,
}

impl<T: Clone> Watch<T> {
    fn seen(&self) -> Vec<T> {
        self.seen.lock().unwrap().clone()
    }

    /// Fails the test if the stream ended: a live stream of a replica that
    /// is up does not end by itself.
    fn still_open(&self, what: &str) {
        if let Some(status) = self.ended.lock().unwrap().as_ref() {
            panic!("{what} ended: {status:?}");
        }
    }
}

/// Opens a live stream and returns once the service has answered it: it
/// has subscribed by then, so nothing stored from now on escapes the
/// stream. Gathers what the stream sends from then on.
async fn watch<T, F>(open: F) -> Watch<T>
where
    T: Send + 'static,
    F: Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
{
    let mut stream = open.await.expect("a live stream opens").into_inner();
    let (seen, ended) = (Arc::default(), Arc::default());
    let watch = Watch {
        seen: Arc::clone(&seen),
        ended: Arc::clone(&ended),
    };
    tokio::spawn(async move {
        let end = loop {
            match stream.next().await {
                Some(Ok(item)) => seen.lock().unwrap().push(item),
                Some(Err(status)) => break status,
                None => break tonic::Status::ok("the stream ended"),
            }
        };
        *ended.lock().unwrap() = Some(end);
    });
    watch
}

async fn watch_notifications(
    addr: SocketAddr,
    user: &str,
    role: Role,
) -> Watch<notify::Notification> {
    let mut client = NotificationServiceClient::new(channel(addr).await);
    watch(client.watch_notifications(as_user(
        user,
        role,
        notify::WatchNotificationsRequest::default(),
    )))
    .await
}

async fn watch_my_page(addr: SocketAddr, user: &str, role: Role) -> Watch<mypage::ReservationView> {
    let mut client = MyPageServiceClient::new(channel(addr).await);
    watch(client.watch_my_reservations(as_user(
        user,
        role,
        mypage::WatchMyReservationsRequest::default(),
    )))
    .await
}

fn booking() -> reservation::CreateReservationRequest {
    reservation::CreateReservationRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        cleaner_id: COMPANY.into(),
        address: "12 Gangnam-daero, Seoul".into(),
        scheduled_at: Some(time::to_timestamp(time::now() + chrono::TimeDelta::days(2))),
        service_type: reservation::ServiceType::Standard as i32,
        note: String::new(),
    }
}

/// The ids seen more than once, with how often.
fn duplicates(ids: impl Iterator<Item = String>) -> Vec<String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    counts
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, n)| format!("{id} ×{n}"))
        .collect()
}

/// The story through replicas: bookings through every reservation replica,
/// cancellations and completions, watchers on every notify and my page
/// replica, a slow webhook, and one notify replica killed while it is
/// delivering.
async fn the_story_holds_with(notify_replicas: usize) {
    let _hold = BROKER.read().await;
    let webhook = Webhook::start().await;
    // Slow enough that the killed replica dies with deliveries in flight.
    webhook.delay(Duration::from_millis(300));
    let mut cluster = Cluster::start(
        [
            (Svc::Payment, 2),
            (Svc::Reservation, 2),
            (Svc::Notify, notify_replicas),
            (Svc::Mypage, 2),
        ],
        webhook,
    )
    .await;

    // Every watch is open (answered) before anything happens.
    let notify_addrs = cluster.addrs(Svc::Notify);
    let mut company_watchers = Vec::new();
    let mut customer_watchers = Vec::new();
    for addr in &notify_addrs {
        company_watchers.push(watch_notifications(*addr, COMPANY, Role::Cleaner).await);
        customer_watchers.push(watch_notifications(*addr, CUSTOMER, Role::Customer).await);
    }
    let mut page_watchers = Vec::new();
    for addr in cluster.addrs(Svc::Mypage) {
        page_watchers.push(watch_my_page(addr, CUSTOMER, Role::Customer).await);
    }

    // Bookings four at a time, through every reservation replica.
    const ROUNDS: usize = 4;
    const AT_ONCE: usize = 4;
    const BOOKINGS: usize = ROUNDS * AT_ONCE;
    let reservation_addrs = cluster.addrs(Svc::Reservation);
    let mut booked = Vec::new();
    let mut killed = None;
    for round in 0..ROUNDS {
        let mut calls = tokio::task::JoinSet::new();
        for n in 0..AT_ONCE {
            let addr = reservation_addrs[n % reservation_addrs.len()];
            calls.spawn(async move {
                ReservationServiceClient::new(channel(addr).await)
                    .create_reservation(as_user(CUSTOMER, Role::Customer, booking()))
                    .await
                    .expect("a booking through either replica")
                    .into_inner()
                    .reservation_id
            });
        }
        booked.extend(calls.join_all().await);
        if round == ROUNDS / 2 {
            // The last notify replica dies with deliveries claimed and in flight.
            killed = Some(cluster.kill(Svc::Notify, notify_replicas - 1).await);
        }
    }
    let (cancelled, rest) = booked.split_at(3);
    let (completed, _) = rest.split_at(3);
    for (n, id) in cancelled.iter().enumerate() {
        ReservationServiceClient::new(channel(reservation_addrs[n % 2]).await)
            .cancel_reservation(as_user(
                CUSTOMER,
                Role::Customer,
                reservation::CancelReservationRequest {
                    reservation_id: id.clone(),
                },
            ))
            .await
            .expect("a cancellation through either replica");
    }
    for (n, id) in completed.iter().enumerate() {
        CleaningServiceClient::new(channel(reservation_addrs[n % 2]).await)
            .complete_cleaning(as_user(
                COMPANY,
                Role::Cleaner,
                reservation::CompleteCleaningRequest {
                    reservation_id: id.clone(),
                },
            ))
            .await
            .expect("a completion through either replica");
    }

    // The company: every payment approved and every refund; the customer:
    // every completed cleaning.
    let company_expected = BOOKINGS + cancelled.len();
    let customer_expected = completed.len();
    let within = Duration::from_secs(60);
    eventually_within(
        within,
        "every notification stored and delivered",
        || async {
            let stored = cluster.count(Svc::Notify, "notifications").await;
            (stored == (company_expected + customer_expected) as i64
                && cluster.undelivered().await == 0)
                .then_some(())
        },
    )
    .await;

    // Live streams on the surviving notify replicas saw everything of their
    // subscriber once; the killed one's streams never saw anything twice.
    let survivors = notify_replicas - 1;
    for (watchers, expected, who) in [
        (&company_watchers, company_expected, "company"),
        (&customer_watchers, customer_expected, "customer"),
    ] {
        for (n, watcher) in watchers.iter().enumerate() {
            if n < survivors {
                let what = format!("the {who} stream on notify {n}");
                eventually_within(within, &what, || async {
                    watcher.still_open(&what);
                    (watcher.seen().len() >= expected).then_some(())
                })
                .await;
            }
            let seen = watcher.seen();
            let twice = duplicates(seen.iter().map(|n| n.notification_id.clone()));
            assert!(
                twice.is_empty(),
                "{who} stream on notify {n} repeated {twice:?}"
            );
            if n < survivors {
                assert_eq!(seen.len(), expected, "{who} stream on notify {n}");
            }
            let mut ordered = seen.clone();
            ordered.sort_by_key(|n| n.create_time.map(|t| (t.seconds, t.nanos)));
            assert_eq!(
                seen.iter().map(|n| &n.notification_id).collect::<Vec<_>>(),
                ordered
                    .iter()
                    .map(|n| &n.notification_id)
                    .collect::<Vec<_>>(),
                "{who} stream on notify {n} out of order"
            );
        }
    }

    // Every my page watcher ends with every reservation in its final status.
    let finals: HashMap<&str, &str> = booked
        .iter()
        .map(|id| {
            let status = if cancelled.contains(id) {
                "REFUNDED"
            } else if completed.contains(id) {
                "CLEANED"
            } else {
                "PAID"
            };
            (id.as_str(), status)
        })
        .collect();
    for (n, watcher) in page_watchers.iter().enumerate() {
        let what = format!("the my page stream on replica {n}");
        // The reservations whose last view on the stream is not final, with
        // what the stream last said of them.
        let unfinished = || {
            let last: HashMap<String, String> = watcher
                .seen()
                .iter()
                .map(|v| {
                    (
                        v.reservation_id.clone(),
                        v.status().as_str_name().to_owned(),
                    )
                })
                .collect();
            finals
                .iter()
                .filter(|(id, status)| !last.get(**id).is_some_and(|s| s.ends_with(**status)))
                .map(|(id, status)| format!("{id}: {:?}, not {status}", last.get(*id)))
                .collect::<Vec<_>>()
        };
        let deadline = Instant::now() + within;
        while !unfinished().is_empty() && Instant::now() < deadline {
            watcher.still_open(&what);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let unfinished = unfinished();
        assert!(
            unfinished.is_empty(),
            "{what}, after {within:?}, left {} of {} reservations unfinished: {unfinished:#?}",
            unfinished.len(),
            finals.len()
        );
        let seen = watcher.seen();
        // A view sent twice for the same moment is a duplicate.
        let twice = duplicates(
            seen.iter()
                .map(|v| format!("{}@{:?}", v.reservation_id, v.update_time)),
        );
        assert!(
            twice.is_empty(),
            "my page stream on replica {n} repeated {twice:?}"
        );
    }

    // Each outbox row reached the broker once.
    let recorded = cluster.count(Svc::Reservation, "outbox").await
        + cluster.count(Svc::Payment, "outbox").await;
    let tapped = cluster
        .broker
        .amqp("tap")
        .queue_depth(TAP.queue)
        .await
        .expect("the tap queue");
    assert_eq!(
        i64::from(tapped),
        recorded,
        "events published ≠ events recorded"
    );

    // Each notification was POSTed once, signed, including those the killed
    // replica had claimed (the survivors took them over after its claim ran
    // out). The one repeat delivery allows (at least once, the webhook-id
    // being the receiver's idempotency key): a POST the endpoint accepted
    // just before the replica that sent it died, unrecorded, is sent again
    // by a survivor. Such a pair straddles the kill; any other repeat is a fault.
    let killed = killed.expect("a notify replica was killed");
    let mut posts: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
    for received in cluster.webhook.received() {
        let id = received
            .headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        posts.entry(id).or_default().push(received.at);
    }
    let around_the_kill = |at: &Instant| {
        if *at < killed.start {
            format!("-{:?}", killed.start - *at)
        } else {
            format!("+{:?}", *at - killed.start)
        }
    };
    let repeated: Vec<String> = posts
        .iter()
        .filter(|(_, at)| {
            at.len() > 1 && !(at.len() == 2 && at[0] < killed.end && at[1] > killed.end)
        })
        .map(|(id, at)| {
            let at: Vec<String> = at.iter().map(around_the_kill).collect();
            format!("{id} at {at:?} from the kill")
        })
        .collect();
    assert!(
        repeated.is_empty(),
        "notifications POSTed more than once: {repeated:?}"
    );
    assert_eq!(posts.len(), company_expected + customer_expected);
    assert_eq!(
        cluster.webhook.unverified(),
        0,
        "a POST without a valid signature"
    );

    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_every_service_tell_one_truth() {
    the_story_holds_with(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_notify_replicas_tell_the_same_truth() {
    the_story_holds_with(3).await;
}
