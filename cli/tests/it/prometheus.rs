//! A real Prometheus (the `prometheus` binary scripts/test installs) scrapes
//! a running `ssak3 up` and evaluates the chart's rules; after a known load,
//! what PromQL says of bookings is what the test saw, and every query of the
//! chart's Grafana dashboard is one Prometheus accepts.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use ssak3_common::{
    auth::{Role, signing::DevelopmentKeys},
    server::free_consecutive_ports,
    test_support::eventually_within,
    time,
};
use ssak3_proto::reservation::v1::{
    self as reservation, reservation_service_client::ReservationServiceClient,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    system::{COMPANY, CUSTOMER},
    up::{Up, dev_token, signed},
};

const CREATE: &str =
    r#"grpc_service="ssak3.reservation.v1.ReservationService",grpc_method="CreateReservation""#;
const SERVER_FAULTS: &str =
    r#"grpc_code=~"UNKNOWN|DEADLINE_EXCEEDED|UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS""#;

/// A Prometheus server of the test's own, stopped on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes the admin ports of the services at `base` every second,
    /// labelled as the chart's monitors label them, and evaluates the
    /// chart's rule file.
    fn start(base: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../helm/ssak3/files/prometheus-rules.yaml"
        );
        let targets: String = ["reservation", "payment", "notify", "mypage"]
            .iter()
            .zip(0u16..)
            .map(|(service, offset)| {
                format!(
                    "      - targets: ['127.0.0.1:{}']\n        labels: {{ssak3_service: {service}, namespace: test}}\n",
                    base + offset + 1000
                )
            })
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: ['{rules}']\nscrape_configs:\n  - job_name: ssak3\n    static_configs:\n{targets}"
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("config");
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("`prometheus` must be installed (scripts/test installs Debian's package)");
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    /// GETs `path_and_query` from the HTTP API; the JSON body.
    async fn get(&self, path_and_query: &str) -> Option<serde_json::Value> {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.ok()?;
        let request = format!("GET {path_and_query} HTTP/1.0\r\nHost: prometheus\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }

    /// The result of an instant query: `(status, result)`.
    async fn query(&self, promql: &str) -> (String, serde_json::Value) {
        let body = self
            .get(&format!("/api/v1/query?query={}", encode(promql)))
            .await
            .unwrap_or_default();
        (
            body["status"].as_str().unwrap_or_default().to_owned(),
            body["data"]["result"].clone(),
        )
    }

    /// The value of a query of one series (none if it has none).
    async fn scalar(&self, promql: &str) -> Option<f64> {
        let (_, result) = self.query(promql).await;
        result[0]["value"][1].as_str()?.parse().ok()
    }
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_the_bookings_the_test_made() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_consecutive_ports(4).expect("free consecutive ports");
    // A payment gateway that fails a third of the charges: bookings that end UNAVAILABLE.
    let up = Up::start_with(
        dir.path(),
        base,
        &[],
        &[
            ("SSAK3_GATEWAY__FAILURE_RATE", "0.3"),
            ("SSAK3_RATE_LIMIT__ENABLED", "false"),
        ],
    )
    .await;
    let prometheus = Prometheus::start(base);
    eventually_within(
        Duration::from_secs(30),
        "Prometheus scraping all four",
        || async {
            let up = prometheus.scalar(r#"sum(up{job="ssak3"})"#).await;
            (up == Some(4.0)).then_some(())
        },
    )
    .await;

    let keys = DevelopmentKeys::load_or_create(&dir.path().join("data")).expect("development keys");
    let customer = dev_token(&keys, CUSTOMER, Role::Customer, Duration::from_secs(600));
    let mut client = ReservationServiceClient::connect(format!("http://{}", up.addr(0)))
        .await
        .expect("connecting to reservation");
    let mut book = async |n: usize| {
        // Every eighth booking is refused for its empty address.
        let address = if n % 8 == 7 {
            ""
        } else {
            "12 Gangnam-daero, Seoul"
        };
        let outcome = client
            .create_reservation(signed(
                &customer,
                reservation::CreateReservationRequest {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    cleaner_id: COMPANY.into(),
                    address: address.into(),
                    scheduled_at: Some(time::to_timestamp(
                        time::now() + chrono::TimeDelta::days(2),
                    )),
                    service_type: reservation::ServiceType::Standard as i32,
                    note: String::new(),
                },
            ))
            .await;
        let code = match outcome {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        ssak3_common::metrics::code_name(code).to_owned()
    };
    // A refused and an accepted booking first, so that their series exist
    // (a counter's first sample is where Prometheus starts counting from).
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for n in [7, 0] {
        *seen.entry(book(n).await).or_default() += 1;
    }
    eventually_within(
        Duration::from_secs(30),
        "the first bookings scraped",
        || async {
            let (_, result) = prometheus
                .query(&format!(
                    r#"grpc_server_handled_total{{{CREATE},grpc_code="INVALID_ARGUMENT"}}"#
                ))
                .await;
            (!result.as_array()?.is_empty()).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The codes whose series exist before the load: the first booking that
    // meant to succeed may have met a failing gateway, and then no series
    // of OK was there to count from.
    let before: Vec<String> = ["OK", "INVALID_ARGUMENT"]
        .into_iter()
        .filter(|code| seen.contains_key(*code))
        .map(str::to_owned)
        .collect();
    // The load, spread over a few scrapes.
    let mut load: BTreeMap<String, u32> = BTreeMap::new();
    for n in 1..=40 {
        let code = book(n).await;
        *seen.entry(code.clone()).or_default() += 1;
        *load.entry(code).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total: u32 = seen.values().sum();
    let faults = [
        "UNKNOWN",
        "DEADLINE_EXCEEDED",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
    ]
    .iter()
    .filter_map(|code| seen.get(*code))
    .sum::<u32>();
    assert!(seen.get("OK").is_some_and(|n| *n > 0), "{seen:?}");
    assert_eq!(seen.get("INVALID_ARGUMENT"), Some(&6), "{seen:?}");
    assert!(faults > 0, "the gateway failed no charge: {seen:?}");

    // The counts by code, as Prometheus scraped them.
    let by_code = eventually_within(Duration::from_secs(30), "the load scraped", || async {
        let (_, result) = prometheus
            .query(&format!(
                "sum by (grpc_code) (grpc_server_handled_total{{{CREATE}}})"
            ))
            .await;
        let by_code: BTreeMap<String, u32> = result
            .as_array()?
            .iter()
            .filter_map(|s| {
                let code = s["metric"]["grpc_code"].as_str()?.to_owned();
                let value: f64 = s["value"][1].as_str()?.parse().ok()?;
                Some((code, value as u32))
            })
            .collect();
        (by_code == seen).then_some(by_code)
    })
    .await;
    assert_eq!(by_code, seen);

    // The error ratio of bookings as the SLO counts it (refused input is no error).
    let ratio = prometheus
        .scalar(&format!(
            "sum(grpc_server_handled_total{{{CREATE},{SERVER_FAULTS}}}) / sum(grpc_server_handled_total{{{CREATE}}})"
        ))
        .await
        .expect("an error ratio");
    let expected = f64::from(faults) / f64::from(total);
    assert!((ratio - expected).abs() < 1e-9, "{ratio} != {expected}");
    // The booking rate over the load, of the codes whose series existed
    // before it (rates are extrapolated: close, not exact), and the chart's
    // recording rule for the SLO.
    let counted: u32 = before
        .iter()
        .map(|code| load.get(code).copied().unwrap_or(0))
        .sum();
    let rate = prometheus
        .scalar(&format!(
            r#"sum(increase(grpc_server_handled_total{{{CREATE},grpc_code=~"{}"}}[5m]))"#,
            before.join("|")
        ))
        .await
        .expect("a booking rate");
    assert!(
        rate > f64::from(counted) * 0.7 && rate < f64::from(counted) * 1.3,
        "{rate} bookings in 5m, the test made {counted}"
    );
    let recorded = eventually_within(Duration::from_secs(15), "the recording rule", || async {
        prometheus
            .scalar(r#"ssak3:booking_errors:ratio_rate5m{namespace="test"}"#)
            .await
    })
    .await;
    assert!(
        recorded > 0.0 && (recorded - expected).abs() < 0.2,
        "recorded {recorded}, the test saw {expected}"
    );
    // Each service's own series only: the breaker is reservation's.
    let (_, breakers) = prometheus.query("ssak3_payment_breaker_open").await;
    let owners: Vec<&str> = breakers
        .as_array()
        .expect("a vector")
        .iter()
        .filter_map(|s| s["metric"]["ssak3_service"].as_str())
        .collect();
    assert_eq!(owners, ["reservation"]);
    // OpenMetrics was negotiated, and counters are counters.
    let body = prometheus
        .get(&format!(
            "/api/v1/targets/metadata?metric=grpc_server_handled&match_target={}",
            encode(r#"{ssak3_service="reservation"}"#)
        ))
        .await
        .expect("metadata");
    assert_eq!(body["data"][0]["type"].as_str(), Some("counter"), "{body}");

    // Every query of the dashboard is valid PromQL.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../helm/ssak3/files/grafana-dashboard.json"
        ))
        .expect("the dashboard"),
    )
    .expect("JSON");
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .expect("an expression")
                .replace("$namespace", ".*")
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m");
            let (status, _) = prometheus.query(&expr).await;
            assert_eq!(status, "success", "{}: {expr}", panel["title"]);
            queries += 1;
        }
    }
    assert!(queries > 15);
    drop(prometheus);
    up.interrupt();
}
