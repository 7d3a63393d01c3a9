//! `ssak3 bench`: a gRPC load generator and the benchmark scenarios.
//!
//! N clients over M connections, closed loop (each client sends its next
//! call when the last one answered) or open loop (calls start at a fixed
//! rate whatever the answers; latency counts from the intended start, so a
//! stall is not hidden). Latencies go into an HDR histogram; errors are
//! counted by gRPC code. Every run of a system scenario also runs a bare
//! tonic echo service in the same process and reports the ratio.

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use crate::tokens::Tokens;
use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::json;
use ssak3_common::{
    auth::{self, Role},
    time,
};
use ssak3_proto::{
    bench::v1::{
        EchoRequest, EchoResponse,
        echo_service_client::EchoServiceClient,
        echo_service_server::{EchoService, EchoServiceServer},
    },
    mypage::v1::{self as mypage, my_page_service_client::MyPageServiceClient},
    notify::v1::{self as notify, notification_service_client::NotificationServiceClient},
    reservation::v1::{self as reservation, reservation_service_client::ReservationServiceClient},
};
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, transport::Channel};

/// How results are printed: lines of text, or one JSON object per line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

static OUTPUT: OnceLock<Output> = OnceLock::new();

/// Chooses how results are printed, once, before any is.
pub fn set_output(output: Output) {
    let _ = OUTPUT.set(output);
}

/// Prints one result: `text` as a line, or with `--output json` the object
/// `json` (with its `result` kind) on a line of its own.
pub fn emit(text: impl FnOnce() -> String, json: serde_json::Value) {
    match OUTPUT.get().copied().unwrap_or_default() {
        Output::Text => println!("{}", text()),
        Output::Json => println!("{json}"),
    }
}

/// Progress on stderr while a run goes on (elapsed, calls so far and their
/// rate, errors); drawn only on a terminal.
fn progress(name: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {prefix} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_prefix(name.to_owned());
    bar
}

/// How the load is shaped.
#[derive(Clone, Debug)]
pub struct Load {
    pub clients: usize,
    pub connections: usize,
    pub duration: Duration,
    /// Stop after this many calls instead of after `duration`.
    pub requests: Option<u64>,
    /// Calls per second, open loop; `None` is closed loop.
    pub rate: Option<u32>,
}

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    pub name: String,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
    /// Microseconds.
    pub latency: Histogram<u64>,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn print(&self) {
        let errors = if self.errors.is_empty() {
            "none".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        emit(
            || {
                format!(
                    "{:<28} {:>9.0} ok/s  ok {:>8}  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>8.2} ms  errors: {errors}",
                    self.name,
                    self.rate(),
                    self.ok,
                    self.ms(0.5),
                    self.ms(0.9),
                    self.ms(0.99),
                    self.ms(0.999),
                    self.latency.max() as f64 / 1000.0,
                )
            },
            json!({
                "result": "calls",
                "name": self.name,
                "ok": self.ok,
                "ok_per_second": self.rate(),
                "elapsed_seconds": self.elapsed.as_secs_f64(),
                "errors": self.errors,
                "latency_ms": {
                    "p50": self.ms(0.5),
                    "p90": self.ms(0.9),
                    "p99": self.ms(0.99),
                    "p99_9": self.ms(0.999),
                    "max": self.latency.max() as f64 / 1000.0,
                },
            }),
        );
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs … 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// Runs `call` under `load`; `call(i)` makes call number `i` on `channel`.
pub async fn run<F, Fut>(name: &str, channels: &[Channel], load: &Load, call: F) -> Report
where
    F: Fn(Channel, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let deadline = started + load.duration;
    let issued = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let budget = load.requests.unwrap_or(u64::MAX);
    let results = Arc::new(Mutex::new((
        0u64,
        BTreeMap::<String, u64>::new(),
        histogram(),
    )));
    let record = {
        let results = results.clone();
        move |outcome: Result<(), Status>, latency: Duration| {
            let mut guard = results.lock().unwrap_or_else(|e| e.into_inner());
            let (ok, errors, latencies) = &mut *guard;
            match outcome {
                Ok(()) => {
                    *ok += 1;
                    let _ = latencies.record(latency.as_micros().max(1) as u64);
                }
                Err(status) => *errors.entry(format!("{:?}", status.code())).or_default() += 1,
            }
        }
    };
    let bar = progress(name);
    let ticking = {
        let (bar, results) = (bar.clone(), results.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let (ok, errors) = {
                    let guard = results.lock().unwrap_or_else(|e| e.into_inner());
                    (guard.0, guard.1.values().sum::<u64>())
                };
                let rate = ok as f64 / started.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("ok {ok} ({rate:.0}/s)  errors {errors}"));
                bar.tick();
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    match load.rate {
        None => {
            for client in 0..load.clients {
                let channel = channels[client % channels.len()].clone();
                let (call, issued, record) = (call.clone(), issued.clone(), record.clone());
                tasks.spawn(async move {
                    loop {
                        let i = issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= budget || Instant::now() >= deadline {
                            break;
                        }
                        let sent = Instant::now();
                        let outcome = call(channel.clone(), i).await;
                        record(outcome, sent.elapsed());
                    }
                });
            }
        }
        Some(rate) => {
            // At most `clients` calls in flight; a call that cannot start on
            // time waits, and its latency still counts from when it was due.
            let slots = Arc::new(tokio::sync::Semaphore::new(load.clients));
            let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
            let mut i = 0u64;
            while i < budget {
                let due = started + interval.mul_f64(i as f64);
                if due >= deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let channel = channels[(i as usize) % channels.len()].clone();
                let (call, record) = (call.clone(), record.clone());
                tasks.spawn(async move {
                    let outcome = call(channel, i).await;
                    record(outcome, due.elapsed());
                    drop(slot);
                });
                // A finished task stays in the set until joined: reap as we
                // go, or a long open-loop run holds every call it made.
                while tasks.try_join_next().is_some() {}
                i += 1;
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    ticking.abort();
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let (ok, errors, latency) = std::mem::replace(
        &mut *results.lock().unwrap_or_else(|e| e.into_inner()),
        (0, BTreeMap::new(), histogram()),
    );
    Report {
        name: name.to_owned(),
        ok,
        errors,
        elapsed,
        latency,
    }
}

/// `connections` HTTP/2 connections to `addr`.
pub async fn connect(addr: SocketAddr, connections: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await
                .with_context(|| format!("nothing answers at {addr}"))?,
        );
    }
    Ok(channels)
}

/// The bare echo service.
#[derive(Debug, Default)]
pub struct Echo;

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse {
            payload: request.into_inner().payload,
        }))
    }
}

/// Starts the echo service on a free loopback port; it runs until the process ends.
pub async fn start_echo() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServiceServer::new(Echo))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok(addr)
}

/// Closed-loop echo under `load`.
pub async fn echo(load: &Load) -> anyhow::Result<Report> {
    let addr = start_echo().await?;
    let channels = connect(addr, load.connections).await?;
    Ok(run(
        "echo (bare tonic)",
        &channels,
        load,
        |channel, _| async move {
            EchoServiceClient::new(channel)
                .echo(EchoRequest {
                    payload: b"ssak3".to_vec(),
                })
                .await
                .map(drop)
        },
    )
    .await)
}

/// A booking request for customer `i % customers`, unique by request id.
fn booking(i: u64, run: &str) -> reservation::CreateReservationRequest {
    reservation::CreateReservationRequest {
        request_id: format!("bench-{run}-{i}"),
        cleaner_id: "acme-cleaning".into(),
        address: "12 Gangnam-daero, Seoul".into(),
        scheduled_at: Some(time::to_timestamp(time::now() + chrono::TimeDelta::days(2))),
        service_type: reservation::ServiceType::Standard as i32,
        note: String::new(),
    }
}

/// Tokens of `count` customers, `bench-customer-<n>`.
pub fn customer_tokens(keys: &Tokens, count: usize) -> anyhow::Result<Arc<Vec<String>>> {
    let tokens: Result<Vec<String>, _> = (0..count.max(1))
        .map(|n| {
            keys.issue(
                &format!("bench-customer-{n}"),
                Role::Customer,
                Duration::from_secs(3_600),
            )
        })
        .collect();
    Ok(Arc::new(tokens?))
}

fn signed<T>(token: &str, message: T) -> Result<Request<T>, Status> {
    auth::with_bearer(Request::new(message), token).map_err(Status::from)
}

/// CreateReservation under `load` against the reservation service at `addr`.
pub async fn create(
    addr: SocketAddr,
    keys: &Tokens,
    load: &Load,
    name: &str,
) -> anyhow::Result<Report> {
    let channels = connect(addr, load.connections).await?;
    let tokens = customer_tokens(keys, load.clients)?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    Ok(run(name, &channels, load, move |channel, i| {
        let tokens = tokens.clone();
        let request = signed(&tokens[(i as usize) % tokens.len()], booking(i, &run_id));
        async move {
            ReservationServiceClient::new(channel)
                .create_reservation(request?)
                .await
                .map(drop)
        }
    })
    .await)
}

/// GetMyReservation under `load`, reading the bookings `seed` made first.
pub async fn get_page(
    reservation_addr: SocketAddr,
    mypage_addr: SocketAddr,
    keys: &Tokens,
    load: &Load,
) -> anyhow::Result<Report> {
    let token = keys.issue("bench-reader", Role::Customer, Duration::from_secs(3_600))?;
    let mut client = ReservationServiceClient::new(connect(reservation_addr, 1).await?.remove(0));
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut ids = Vec::new();
    for i in 0..50 {
        let booked = client
            .create_reservation(signed(&token, booking(i, &run_id))?)
            .await?
            .into_inner();
        ids.push(booked.reservation_id);
    }
    // Wait until the read model has them all.
    let mut pages = MyPageServiceClient::new(connect(mypage_addr, 1).await?.remove(0));
    for id in &ids {
        let waited = Instant::now();
        loop {
            let found = pages
                .get_my_reservation(signed(
                    &token,
                    mypage::GetMyReservationRequest {
                        reservation_id: id.clone(),
                    },
                )?)
                .await;
            if found.is_ok() {
                break;
            }
            anyhow::ensure!(
                waited.elapsed() < Duration::from_secs(30),
                "my page never showed {id}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let channels = connect(mypage_addr, load.connections).await?;
    let ids = Arc::new(ids);
    Ok(run("GetMyReservation", &channels, load, move |channel, i| {
        let request = signed(
            &token,
            mypage::GetMyReservationRequest {
                reservation_id: ids[(i as usize) % ids.len()].clone(),
            },
        );
        async move {
            MyPageServiceClient::new(channel)
                .get_my_reservation(request?)
                .await
                .map(drop)
        }
    })
    .await)
}

/// Lag of one kind of effect after commits; either may be seen first (the
/// event can arrive before the booking's answer does).
#[derive(Default)]
struct Lag {
    committed: BTreeMap<String, Instant>,
    arrived: BTreeMap<String, Instant>,
    seen: Option<Histogram<u64>>,
}

impl Lag {
    fn record(&mut self, took: Duration) {
        let _ = self
            .seen
            .get_or_insert_with(histogram)
            .record(took.as_micros().max(1) as u64);
    }

    fn committed(&mut self, id: String, at: Instant) {
        match self.arrived.remove(&id) {
            Some(arrived) => self.record(arrived.saturating_duration_since(at)),
            None => {
                self.committed.insert(id, at);
            }
        }
    }

    fn arrived(&mut self, id: String, at: Instant) {
        match self.committed.remove(&id) {
            Some(committed) => self.record(at.saturating_duration_since(committed)),
            None => {
                self.arrived.insert(id, at);
            }
        }
    }
}

/// Event lag: bookings at `rate`/s for `duration`; for each, the time from
/// its confirmed answer (the commit) to the my page view showing PAID and
/// to the company's notification, both watched live.
pub async fn event_lag(
    addrs: [SocketAddr; 4],
    keys: &Tokens,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>, u64)> {
    let customer = keys.issue("bench-lag", Role::Customer, Duration::from_secs(3_600))?;
    let company = keys.issue("acme-cleaning", Role::Cleaner, Duration::from_secs(3_600))?;
    let page = Arc::new(Mutex::new(Lag::default()));
    let notified = Arc::new(Mutex::new(Lag::default()));

    let mut page_watch = MyPageServiceClient::new(connect(addrs[3], 1).await?.remove(0))
        .watch_my_reservations(signed(
            &customer,
            mypage::WatchMyReservationsRequest::default(),
        )?)
        .await?
        .into_inner();
    let mut notify_watch = NotificationServiceClient::new(connect(addrs[2], 1).await?.remove(0))
        .watch_notifications(signed(
            &company,
            notify::WatchNotificationsRequest::default(),
        )?)
        .await?
        .into_inner();
    let pages = {
        let page = page.clone();
        tokio::spawn(async move {
            while let Some(Ok(view)) = page_watch.next().await {
                if view.status() == mypage::ReservationStatus::Paid {
                    let now = Instant::now();
                    page.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .arrived(view.reservation_id, now);
                }
            }
        })
    };
    let notifications = {
        let notified = notified.clone();
        tokio::spawn(async move {
            while let Some(Ok(n)) = notify_watch.next().await {
                let now = Instant::now();
                notified
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .arrived(n.reservation_id, now);
            }
        })
    };

    let load = Load {
        clients: 64,
        connections: 2,
        duration,
        requests: None,
        rate: Some(rate),
    };
    let channels = connect(addrs[0], load.connections).await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let (page_commits, notify_commits) = (page.clone(), notified.clone());
    let report = run("event lag bookings", &channels, &load, move |channel, i| {
        let request = signed(&customer, booking(i, &run_id));
        let (page, notified) = (page_commits.clone(), notify_commits.clone());
        async move {
            let booked = ReservationServiceClient::new(channel)
                .create_reservation(request?)
                .await?
                .into_inner();
            let now = Instant::now();
            page.lock()
                .unwrap_or_else(|e| e.into_inner())
                .committed(booked.reservation_id.clone(), now);
            notified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .committed(booked.reservation_id, now);
            Ok(())
        }
    })
    .await;
    // Let the last events arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    pages.abort();
    notifications.abort();
    let take = |lag: &Mutex<Lag>| {
        lag.lock()
            .unwrap_or_else(|e| e.into_inner())
            .seen
            .take()
            .unwrap_or_else(histogram)
    };
    Ok((take(&page), take(&notified), report.ok))
}

/// Prints a latency histogram's percentiles in milliseconds.
pub fn print_lag(name: &str, h: &Histogram<u64>, bookings: u64) {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    emit(
        || {
            format!(
                "{name:<28} seen {:>6}/{bookings}  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms",
                h.len(),
                ms(0.5),
                ms(0.99),
                h.max() as f64 / 1000.0
            )
        },
        json!({
            "result": "lag",
            "name": name,
            "seen": h.len(),
            "bookings": bookings,
            "latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": h.max() as f64 / 1000.0},
        }),
    );
}

/// A TCP relay in front of payment that can stall: while stalled it stops
/// moving bytes either way, so calls in flight and new ones hang as they
/// would on a payment that stopped answering (connections stay open).
#[derive(Clone, Debug)]
pub struct Stall {
    /// Where the relay listens: reservation's payment endpoint.
    pub addr: SocketAddr,
    upstream: tokio::sync::watch::Sender<Option<SocketAddr>>,
    stalled: tokio::sync::watch::Sender<bool>,
}

impl Stall {
    /// Binds the relay; it forwards once [`Stall::forward_to`] names payment.
    pub async fn bind() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (upstream, _) = tokio::sync::watch::channel(None);
        let (stalled, _) = tokio::sync::watch::channel(false);
        let relay = Self {
            addr,
            upstream,
            stalled,
        };
        let accepting = relay.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut upstream = accepting.upstream.subscribe();
                let stalled = accepting.stalled.subscribe();
                tokio::spawn(async move {
                    let Ok(target) = upstream.wait_for(Option::is_some).await.map(|t| *t) else {
                        return;
                    };
                    let Some(target) = target else { return };
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::select! {
                        _ = pump(in_read, out_write, stalled.clone()) => {}
                        _ = pump(out_read, in_write, stalled) => {}
                    }
                });
            }
        });
        Ok(relay)
    }

    /// Starts forwarding to payment at `target`.
    pub fn forward_to(&self, target: SocketAddr) {
        self.upstream.send_replace(Some(target));
    }

    /// Stalls (`true`) or resumes (`false`) every connection.
    pub fn set(&self, stalled: bool) {
        self.stalled.send_replace(stalled);
    }
}

/// Copies `from` to `to`, holding still while `stalled`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just as the stall began wait with the rest.
        if stalled.wait_for(|s| !*s).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// One booking's outcome in the breaker run.
#[derive(Clone, Copy, Debug)]
struct Outcome {
    sent: Instant,
    took: Duration,
    code: tonic::Code,
}

/// The breaker under load: bookings run for `load.duration` against a real
/// payment behind `stall`; a quarter of the way in payment stops answering
/// (every call hangs), three quarters of the way in it answers again. What
/// callers see tells the breaker's story: calls that waited out the
/// deadline, then UNAVAILABLE answered at once (open: shed), then bookings
/// confirmed again (closed). `deadline` is reservation's payment deadline;
/// an UNAVAILABLE faster than a quarter of it was shed by the breaker.
pub async fn breaker(
    addr: SocketAddr,
    keys: &Tokens,
    load: &Load,
    stall: &Stall,
    deadline: Duration,
) -> anyhow::Result<()> {
    let channels = connect(addr, load.connections).await?;
    let token =
        Arc::new(keys.issue("bench-breaker", Role::Customer, Duration::from_secs(3_600))?);
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let recorded = outcomes.clone();
    let quarter = load.duration / 4;
    let started = Instant::now();
    let schedule = {
        let stall = stall.clone();
        tokio::spawn(async move {
            tokio::time::sleep(quarter).await;
            stall.set(true);
            let stalled_at = Instant::now();
            tokio::time::sleep(quarter * 2).await;
            stall.set(false);
            (stalled_at, Instant::now())
        })
    };
    let report = run("CreateReservation", &channels, load, move |channel, i| {
        let request = signed(&token, booking(i, &run_id));
        let recorded = recorded.clone();
        async move {
            let sent = Instant::now();
            let answer = ReservationServiceClient::new(channel)
                .create_reservation(request?)
                .await;
            let code = answer
                .as_ref()
                .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
            recorded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Outcome {
                    sent,
                    took: sent.elapsed(),
                    code,
                });
            answer.map(|_| ())
        }
    })
    .await;
    let (stalled_at, resumed_at) = schedule.await?;
    let outcomes = outcomes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let shed = |o: &Outcome| o.code == tonic::Code::Unavailable && o.took < deadline / 4;
    let since = |at: Instant, from: Instant| at.saturating_duration_since(from).as_secs_f64();
    let first_shed = outcomes
        .iter()
        .filter(|o| o.sent >= stalled_at && shed(o))
        .map(|o| o.sent + o.took)
        .min();
    let waited = outcomes
        .iter()
        .filter(|o| o.sent + o.took >= stalled_at && !shed(o) && o.code != tonic::Code::Ok)
        .filter(|o| first_shed.is_none_or(|at| o.sent < at))
        .count();
    let recovered = outcomes
        .iter()
        .filter(|o| o.sent >= resumed_at && o.code == tonic::Code::Ok)
        .map(|o| o.sent)
        .min();
    let mut shed_latency = histogram();
    for o in outcomes.iter().filter(|o| shed(o)) {
        let _ = shed_latency.record(o.took.as_micros().max(1) as u64);
    }
    let ms = |q: f64| shed_latency.value_at_quantile(q) as f64 / 1000.0;
    let opened = first_shed.map(|at| since(at, stalled_at));
    let confirmed_again = recovered.map(|at| since(at, resumed_at));
    emit(
        || {
            let opened = match opened {
                Some(s) => format!(
                    "breaker open {s:.2} s after the stall; {waited} calls waited out the deadline before it"
                ),
                None => format!("breaker never opened: {waited} calls waited out the deadline"),
            };
            let recovered = match confirmed_again {
                Some(s) => format!(
                    "bookings confirmed again {s:.2} s after payment answered (the breaker probes after its open time)"
                ),
                None => "no booking was confirmed after payment answered again".to_owned(),
            };
            format!(
                "{} calls in {:.1} s: {} confirmed, other answers {:?}\n\
                 payment stalled at {:.1} s, answering again at {:.1} s (deadline {} ms)\n\
                 {opened}\n\
                 shed while open: {} calls, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms\n\
                 {recovered}",
                outcomes.len(),
                report.elapsed.as_secs_f64(),
                report.ok,
                report.errors,
                since(stalled_at, started),
                since(resumed_at, started),
                deadline.as_millis(),
                shed_latency.len(),
                ms(0.5),
                ms(0.99),
                shed_latency.max() as f64 / 1000.0,
            )
        },
        json!({
            "result": "breaker",
            "calls": outcomes.len(),
            "confirmed": report.ok,
            "errors": report.errors,
            "deadline_ms": deadline.as_millis() as u64,
            "stalled_at_seconds": since(stalled_at, started),
            "resumed_at_seconds": since(resumed_at, started),
            "opened_after_seconds": opened,
            "waited_out_the_deadline": waited,
            "shed": shed_latency.len(),
            "shed_latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": shed_latency.max() as f64 / 1000.0},
            "confirmed_again_after_seconds": confirmed_again,
        }),
    );
    anyhow::ensure!(
        first_shed.is_some(),
        "the breaker never opened on a stalled payment"
    );
    Ok(())
}

/// `connections` HTTP/2 connections to `addr` from the loopback address `from`.
async fn connect_from(
    addr: SocketAddr,
    connections: usize,
    from: std::net::IpAddr,
) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .local_address(Some(from))
                .connect()
                .await
                .with_context(|| format!("nothing answers at {addr}"))?,
        );
    }
    Ok(channels)
}

/// What the flood throws at the service while it runs.
#[derive(Clone, Copy, Debug)]
pub struct Flood {
    /// Idle TCP connections held open (reopened when the server closes them).
    pub idle_connections: usize,
    /// Concurrent callers of made-up paths and garbage requests.
    pub noisy_callers: usize,
}

/// Holds the flood against `addr` from 127.0.0.1 until `stop` turns true;
/// returns how many calls and connections it made.
async fn flood(
    addr: SocketAddr,
    flood: Flood,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (u64, u64) {
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    // Idle connections: open, hold silently until closed, open again. They
    // come from eight loopback addresses, 127.0.0.10–17, so that as many as
    // the per-peer cap allows are held at once, as from eight machines.
    for i in 0..flood.idle_connections {
        let (mut stop, connections) = (stop.clone(), Arc::clone(&connections));
        let from = SocketAddr::from(([127, 0, 0, 10 + (i % 8) as u8], 0));
        tasks.spawn(async move {
            while !*stop.borrow() {
                let connected = async {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.bind(from)?;
                    socket.connect(addr).await
                };
                let Ok(mut stream) = connected.await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Send nothing; read (and drop) what the server sends, such
                // as its HTTP/2 settings, until it closes the connection.
                let mut buf = [0u8; 1024];
                let closed = async {
                    while let Ok(1..) = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
                    }
                };
                tokio::select! {
                    () = closed => {}
                    _ = stop.changed() => return,
                }
                // Closed by the server: wait a little before the next one.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    // Noise: made-up paths and undecodable bodies, without tokens.
    for n in 0..flood.noisy_callers {
        let (stop, calls) = (stop.clone(), Arc::clone(&calls));
        tasks.spawn(async move {
            let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map(|e| e.connect_lazy())
            else {
                return;
            };
            let mut i = 0u64;
            while !*stop.borrow() {
                i += 1;
                let path = if i.is_multiple_of(2) {
                    format!("/made.up.Service{n}/Method{i}")
                } else {
                    "/ssak3.reservation.v1.ReservationService/CreateReservation".to_owned()
                };
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                if grpc.ready().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let garbage = bytes::Bytes::from_static(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]);
                let Ok(path) = path.parse() else { continue };
                let _ = grpc
                    .unary(Request::new(garbage), path, ssak3_proto::codec::RawCodec)
                    .await;
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    (
        calls.load(std::sync::atomic::Ordering::Relaxed),
        connections.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// A well-behaved client's latency (GetReservation of its own booking, from
/// 127.0.0.2) quietly, then while a flood (from 127.0.0.1) runs.
pub async fn under_flood(
    addr: SocketAddr,
    keys: &Tokens,
    load: &Load,
    shape: Flood,
) -> anyhow::Result<()> {
    let good = std::net::IpAddr::from([127, 0, 0, 2]);
    let token = keys.issue("bench-good", Role::Customer, Duration::from_secs(3_600))?;
    let channels = connect_from(addr, load.connections, good).await?;
    let booked = ReservationServiceClient::new(channels[0].clone())
        .create_reservation(signed(&token, booking(0, "flood"))?)
        .await?
        .into_inner();
    let read = move |channel: Channel, _i: u64| {
        let request = signed(
            &token,
            reservation::GetReservationRequest {
                reservation_id: booked.reservation_id.clone(),
            },
        );
        async move {
            ReservationServiceClient::new(channel)
                .get_reservation(request?)
                .await
                .map(drop)
        }
    };
    let quiet = run("GetReservation (quiet)", &channels, load, read.clone()).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let flooding = tokio::spawn(flood(addr, shape, stop));
    // Let the flood build up before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loud = run("GetReservation (flood)", &channels, load, read).await;
    let _ = stop_tx.send(true);
    let (calls, connections) = flooding.await?;
    quiet.print();
    loud.print();
    let ratio = loud.ms(0.99) / quiet.ms(0.99).max(1e-6);
    emit(
        || {
            format!(
                "flood: {} idle connections held, {connections} opened, {calls} made-up or garbage calls\n\
                 p99 under the flood: {:.2} ms, {ratio:.2}× the quiet {:.2} ms",
                shape.idle_connections,
                loud.ms(0.99),
                quiet.ms(0.99)
            )
        },
        json!({
            "result": "flood",
            "idle_connections": shape.idle_connections,
            "connections_opened": connections,
            "garbage_calls": calls,
            "p99_ms": {"quiet": quiet.ms(0.99), "flood": loud.ms(0.99)},
            "p99_ratio": ratio,
        }),
    );
    Ok(())
}

/// The soak's own settings.
#[derive(Clone, Debug)]
pub struct SoakArgs {
    /// How often memory is sampled.
    pub every: Duration,
    /// Processes to sample instead of this one.
    pub pids: Vec<u32>,
}

/// A process whose memory the soak samples.
#[derive(Clone, Debug)]
pub struct Watched {
    /// What the table calls it.
    pub name: String,
    /// `None` is this process.
    pub pid: Option<u32>,
}

impl Watched {
    /// This process, under `name`.
    pub fn this(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            pid: None,
        }
    }

    /// Another process, named by its command name.
    pub fn pid(pid: u32) -> Self {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|comm| format!("{} {pid}", comm.trim()))
            .unwrap_or_else(|_| format!("pid {pid}"));
        Self {
            name,
            pid: Some(pid),
        }
    }

    /// Resident and anonymous resident memory now, in KiB.
    fn memory(&self) -> Option<Memory> {
        let path = match self.pid {
            Some(pid) => format!("/proc/{pid}/status"),
            None => "/proc/self/status".to_owned(),
        };
        Memory::parse(&std::fs::read_to_string(path).ok()?)
    }
}

/// A process's memory at one instant, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss: u64,
    pub anon: u64,
}

impl Memory {
    /// Reads `VmRSS` and `RssAnon` from a `/proc/<pid>/status` text.
    fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        };
        Some(Self {
            rss: field("VmRSS:")?,
            anon: field("RssAnon:")?,
        })
    }
}

/// One row of the soak's table.
#[derive(Clone, Debug)]
struct Sample {
    at: Duration,
    bookings: u64,
    /// Per watched process; `None` once it is gone.
    memory: Vec<Option<Memory>>,
}

/// Where the soak judges the plateau from: five minutes in, or a sixth of a
/// shorter run.
fn plateau_reference(duration: Duration) -> Duration {
    Duration::from_secs(300).min(duration / 6)
}

/// Sustained bookings at `load.rate` per second for `load.duration`; the
/// memory of every `watched` process is sampled every `every`. Prints the
/// table (minute, bookings so far, RSS and anonymous RSS per process) and
/// RSS at the end over RSS five minutes in: a plateau keeps it near 1.
pub async fn soak(
    addr: SocketAddr,
    keys: &Tokens,
    load: &Load,
    every: Duration,
    watched: &[Watched],
) -> anyhow::Result<()> {
    let channels = connect(addr, load.connections).await?;
    let tokens = customer_tokens(keys, load.clients)?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let bookings = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let take = {
        let (bookings, watched) = (bookings.clone(), watched.to_vec());
        move || Sample {
            at: started.elapsed(),
            bookings: bookings.load(std::sync::atomic::Ordering::Relaxed),
            memory: watched.iter().map(Watched::memory).collect(),
        }
    };
    println!("{}", header(watched));
    let samples = Arc::new(Mutex::new(vec![take()]));
    let sampler = {
        let (take, samples) = (take.clone(), samples.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at((started + every).into(), every);
            loop {
                ticks.tick().await;
                let sample = take();
                // Printed as it comes: a long run shows how it goes.
                println!("{}", row(&sample));
                samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(sample);
            }
        })
    };
    let counted = bookings.clone();
    let report = run(
        "CreateReservation (soak)",
        &channels,
        load,
        move |channel, i| {
            let request = signed(&tokens[(i as usize) % tokens.len()], booking(i, &run_id));
            let counted = counted.clone();
            async move {
                ReservationServiceClient::new(channel)
                    .create_reservation(request?)
                    .await?;
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
        },
    )
    .await;
    sampler.abort();
    let last = take();
    println!("{}", row(&last));
    let mut samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    samples.push(last);
    report.print();
    print_plateau(watched, &samples, load.duration);
    Ok(())
}

fn header(watched: &[Watched]) -> String {
    let mut line = format!("{:>7} {:>10}", "minute", "bookings");
    for w in watched {
        line.push_str(&format!("  {:>30}", format!("{} RSS / anon MiB", w.name)));
    }
    line
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn row(sample: &Sample) -> String {
    let mut line = format!(
        "{:>7.1} {:>10}",
        sample.at.as_secs_f64() / 60.0,
        sample.bookings
    );
    for memory in &sample.memory {
        let cell = match memory {
            Some(m) => format!("{:.1} / {:.1}", mib(m.rss), mib(m.anon)),
            None => "gone".to_owned(),
        };
        line.push_str(&format!("  {cell:>30}"));
    }
    line
}

/// RSS at the end over RSS at the reference point, per process.
fn print_plateau(watched: &[Watched], samples: &[Sample], duration: Duration) {
    let reference_at = plateau_reference(duration);
    let (Some(reference), Some(end)) = (
        samples.iter().find(|s| s.at >= reference_at),
        samples.last(),
    ) else {
        return;
    };
    for (n, w) in watched.iter().enumerate() {
        if let (Some(Some(from)), Some(Some(to))) = (reference.memory.get(n), end.memory.get(n)) {
            println!(
                "{}: RSS {:.1} MiB at {:.1} min, {:.1} MiB at {:.1} min: ratio {:.3} (anonymous {:.1} → {:.1} MiB, {:.3})",
                w.name,
                mib(from.rss),
                reference.at.as_secs_f64() / 60.0,
                mib(to.rss),
                end.at.as_secs_f64() / 60.0,
                to.rss as f64 / from.rss.max(1) as f64,
                mib(from.anon),
                mib(to.anon),
                to.anon as f64 / from.anon.max(1) as f64,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_read_from_proc_status() {
        let status = "Name:\tssak3\nVmPeak:\t  900 kB\nVmRSS:\t   45312 kB\nRssAnon:\t   20480 kB\nRssFile:\t 24832 kB\n";
        assert_eq!(
            Memory::parse(status),
            Some(Memory {
                rss: 45_312,
                anon: 20_480
            })
        );
        assert_eq!(Memory::parse("Name:\tssak3\n"), None);
        assert!(Watched::this("self").memory().is_some_and(|m| m.rss > 0));
    }

    #[test]
    fn the_plateau_is_judged_five_minutes_in_or_a_sixth_of_a_short_run() {
        assert_eq!(
            plateau_reference(Duration::from_secs(1_800)),
            Duration::from_secs(300)
        );
        assert_eq!(
            plateau_reference(Duration::from_secs(60)),
            Duration::from_secs(10)
        );
    }
}
