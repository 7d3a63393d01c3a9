//! A rolling restart on real processes: two `ssak3 serve payment` behind a
//! client that, like a load balancer, follows their health; one gets SIGTERM
//! in the middle of the load.

use std::{
    net::SocketAddr,
    process::{Child, Command},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use ssak3_common::{
    auth,
    server::{HealthStatus, free_consecutive_ports, health_of},
    test_support::{self, TestBroker, TestDb},
};
use ssak3_proto::{
    payment::{
        internal::v1::internal_payment_service_client::InternalPaymentServiceClient, v1 as payment,
    },
    r#type::v1::Money,
};
use tonic::{Request, transport::Channel};

use crate::binary::ssak3;

/// The test keys as a service process reads them.
fn auth_env() -> Vec<(&'static str, String)> {
    let auth = test_support::auth_config();
    [
        ("SSAK3_AUTH__JWKS", auth.jwks),
        ("SSAK3_AUTH__SERVICE_KEYS", auth.service_keys),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|value| (name, value)))
    .collect()
}

/// `ssak3 serve payment` on `port`; killed if the test ends without it exiting.
struct Serve {
    child: Option<Child>,
    addr: SocketAddr,
}

impl Serve {
    fn start(port: u16, db: &TestDb, broker: &TestBroker) -> Self {
        let child = ssak3()
            .args(["serve", "payment"])
            .env("SSAK3_LISTEN", format!("127.0.0.1:{port}"))
            .envs(auth_env())
            .env("SSAK3_DATABASE_URL", db.url())
            .env("SSAK3_AMQP_URL", test_support::amqp_url())
            .env("SSAK3_EVENTS__NAMESPACE", &broker.config.namespace)
            .env("SSAK3_GATEWAY__LATENCY_MS", "150")
            .env("SSAK3_DRAIN_DELAY_MS", "1000")
            .env("SSAK3_SHUTDOWN_GRACE_MS", "5000")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot run ssak3 serve");
        Self {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    async fn wait_serving(&self) -> Duration {
        let started = Instant::now();
        while health_of(self.addr).await != Some(HealthStatus::Serving) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{} never served",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    }

    fn terminate(&self) {
        let pid = self
            .child
            .as_ref()
            .map(|c| c.id().to_string())
            .unwrap_or_default();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "cannot signal {pid}");
    }

    /// Waits for the process to exit and returns how it exited.
    async fn exit_status(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap_or_else(|| unreachable!());
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try wait") {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One call of the load: when it started, on which instance, how it ended.
struct Call {
    started: Instant,
    instance: usize,
    outcome: Result<(), tonic::Status>,
}

async fn approve(
    client: &mut InternalPaymentServiceClient<Channel>,
    token: &str,
) -> Result<(), tonic::Status> {
    let request = payment::ApprovePaymentRequest {
        reservation_id: uuid::Uuid::new_v4().to_string(),
        amount: Some(Money {
            currency_code: "KRW".into(),
            units: 50_000,
        }),
        customer_id: "alice".into(),
        cleaner_id: "acme-cleaning".into(),
        address: "12 Gangnam-daero, Seoul".into(),
        scheduled_at: Some(ssak3_common::time::to_timestamp(
            ssak3_common::time::now() + chrono::TimeDelta::days(2),
        )),
    };
    let request = auth::with_bearer(Request::new(request), token).map_err(tonic::Status::from)?;
    client.approve_payment(request).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_fails_no_call_that_started_before_the_signal() {
    let _shared = crate::system::BROKER.read().await;
    let db = TestDb::postgres();
    let broker = TestBroker::new(crate::system::topology());
    let base = free_consecutive_ports(2).expect("free consecutive ports");
    let mut leaving = Serve::start(base, &db, &broker);
    let staying = Serve::start(base + 1, &db, &broker);
    leaving.wait_serving().await;
    staying.wait_serving().await;

    let token = test_support::service_token("payment");
    let channels: Vec<Channel> = {
        let mut channels = Vec::new();
        for serve in [&leaving, &staying] {
            channels.push(
                tonic::transport::Endpoint::from_shared(format!("http://{}", serve.addr))
                    .expect("from shared")
                    .connect()
                    .await
                    .expect("connect"),
            );
        }
        channels
    };

    // The balancer's view of the leaving instance, from its health.
    let leaving_ready = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(Mutex::new(Vec::<Call>::new()));
    let turn = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (channels, leaving_ready, stop, calls, turn, token) = (
            channels.clone(),
            leaving_ready.clone(),
            stop.clone(),
            calls.clone(),
            turn.clone(),
            token.clone(),
        );
        clients.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let instance = if leaving_ready.load(Ordering::SeqCst) {
                    turn.fetch_add(1, Ordering::SeqCst) % 2
                } else {
                    1
                };
                let mut client = InternalPaymentServiceClient::new(channels[instance].clone());
                let started = Instant::now();
                let outcome = approve(&mut client, &token).await;
                calls.lock().unwrap_or_else(|e| e.into_inner()).push(Call {
                    started,
                    instance,
                    outcome,
                });
            }
        });
    }

    tokio::time::sleep(Duration::from_millis(800)).await;
    let signalled = Instant::now();
    leaving.terminate();
    // Watch the leaving instance: when it stops being ready, and when it stops answering.
    let (mut not_serving, mut gone) = (None, None);
    while gone.is_none() && signalled.elapsed() < Duration::from_secs(15) {
        match health_of(leaving.addr).await {
            Some(HealthStatus::Serving) => {}
            Some(_) => {
                if not_serving.is_none() {
                    not_serving = Some(signalled.elapsed());
                    leaving_ready.store(false, Ordering::SeqCst);
                }
            }
            None => gone = Some(signalled.elapsed()),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = leaving.exit_status().await;
    stop.store(true, Ordering::SeqCst);
    while clients.join_next().await.is_some() {}

    let not_serving = not_serving.expect("health never said NOT_SERVING");
    let gone = gone.expect("the listener never closed");
    assert!(
        not_serving < gone,
        "NOT_SERVING at {not_serving:?} must come before the listener closed at {gone:?}"
    );
    assert!(status.success(), "exit status {status}");

    let calls = calls.lock().unwrap_or_else(|e| e.into_inner());
    let before: Vec<&Call> = calls.iter().filter(|c| c.started < signalled).collect();
    let on_leaving = before.iter().filter(|c| c.instance == 0).count();
    assert!(
        on_leaving >= 4,
        "too little load reached the leaving instance: {on_leaving}"
    );
    for call in &before {
        assert!(
            call.outcome.is_ok(),
            "a call started before the signal failed: {:?}",
            call.outcome
        );
    }
    // After the switch, the staying instance took the load without failures.
    let after_switch: Vec<&Call> = calls
        .iter()
        .filter(|c| c.started >= signalled + not_serving && c.instance == 1)
        .collect();
    assert!(!after_switch.is_empty());
    assert!(after_switch.iter().all(|c| c.outcome.is_ok()));
}
