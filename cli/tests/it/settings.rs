//! Every setting the README's table documents is one `ssak3 serve` accepts:
//! each service is started with every variable of the table set (those that
//! exclude each other in rounds), and must come up serving.

use std::{collections::BTreeMap, net::SocketAddr, process::Stdio, time::Duration};

use ssak3_common::test_support::{self, TestBroker, Webhook, eventually_within};

use crate::system::topology;

/// The variables the README's settings table names (alternatives spelt
/// `` `A__B` / `__C` `` expanded to `A__B`, `A__C`; `<NAME>` as `partner`).
fn documented() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README");
    let table = readme
        .split("| variable | default | meaning |")
        .nth(1)
        .expect("the README's settings table");
    let mut names = Vec::new();
    for row in table.lines().skip(2) {
        let Some(first) = row.strip_prefix('|').and_then(|r| r.split('|').next()) else {
            break;
        };
        let mut prefix = String::new();
        for token in first.split('`').skip(1).step_by(2) {
            let name = if let Some(rest) = token.strip_prefix("__") {
                format!("{prefix}__{rest}")
            } else {
                token.to_owned()
            };
            if !name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || "_<>".contains(c))
            {
                continue;
            }
            let name = name.replace("<NAME>", "PARTNER");
            prefix = name
                .rsplit_once("__")
                .map_or_else(String::new, |(p, _)| p.to_owned());
            names.push(name);
        }
    }
    assert!(names.len() > 40, "the table was not read: {names:?}");
    names
}

/// Variables of which one at a time is set.
const EXCLUSIVE: &[&[&str]] = &[
    &[
        "SSAK3_AUTH__JWKS",
        "SSAK3_AUTH__JWKS_FILE",
        "SSAK3_AUTH__JWKS_URL",
    ],
    &["SSAK3_AUTH__SERVICE_KEY", "SSAK3_AUTH__SERVICE_KEY_FILE"],
    &["SSAK3_AUTH__SERVICE_KEYS", "SSAK3_AUTH__SERVICE_KEYS_FILE"],
    &[
        "SSAK3_NOTIFY__WEBHOOK_SECRET",
        "SSAK3_NOTIFY__WEBHOOK_SECRET_FILE",
    ],
    &[
        "SSAK3_NOTIFY__WEBHOOKS__PARTNER__SECRET",
        "SSAK3_NOTIFY__WEBHOOKS__PARTNER__SECRET_FILE",
    ],
];

/// Answers every request with `body` (a JWKS), as an identity provider's `jwks_uri`.
async fn serve_jwks(body: String) -> SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_setting_is_accepted_by_serve() {
    let _broker_hold = crate::system::BROKER.read().await;
    let broker = TestBroker::new(topology());
    let dir = tempfile::tempdir().expect("a directory");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("a file");
        path.to_string_lossy().into_owned()
    };
    let keys = test_support::keys();
    let issuer_jwks = serde_json::to_string(&keys.issuer.jwks()).expect("json");
    let reservation_jwks = serde_json::to_string(&keys.reservation.jwks()).expect("json");
    let jwks_url = format!("http://{}/jwks", serve_jwks(issuer_jwks.clone()).await);
    let (webhook, ca_pem) = Webhook::start_tls().await;
    let secret = webhook.secret();

    let samples: BTreeMap<&str, String> = [
        ("SSAK3_LISTEN", String::new()),
        ("SSAK3_ADMIN_LISTEN", String::new()),
        ("SSAK3_DATABASE_URL", String::new()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9".into()),
        ("SSAK3_OTLP_ENDPOINT", "http://127.0.0.1:9".into()),
        ("OTEL_SERVICE_NAME", "ssak3-settings-test".into()),
        ("OTEL_RESOURCE_ATTRIBUTES", "service.namespace=test".into()),
        ("SSAK3_DEPLOYMENT_ENVIRONMENT", "test".into()),
        ("SSAK3_DATABASE_POOL_SIZE", "2".into()),
        ("SSAK3_DATA_DIR", dir.path().to_string_lossy().into_owned()),
        ("SSAK3_AUTH__ISSUER", "ssak3".into()),
        ("SSAK3_AUTH__AUDIENCE", "ssak3-test".into()),
        ("SSAK3_AUTH__JWKS_URL", jwks_url),
        ("SSAK3_AUTH__JWKS_FILE", write("jwks.json", &issuer_jwks)),
        ("SSAK3_AUTH__JWKS", issuer_jwks.clone()),
        ("SSAK3_AUTH__JWKS_REFRESH_MS", "60000".into()),
        ("SSAK3_AUTH__LEEWAY_SECS", "30".into()),
        ("SSAK3_AUTH__MAX_TOKEN_LIFETIME_SECS", "86400".into()),
        (
            "SSAK3_AUTH__SERVICE_KEY_FILE",
            write("reservation.pem", &keys.reservation_pem),
        ),
        ("SSAK3_AUTH__SERVICE_KEY", keys.reservation_pem.clone()),
        (
            "SSAK3_AUTH__SERVICE_KEYS_FILE",
            write("services.json", &reservation_jwks),
        ),
        ("SSAK3_AUTH__SERVICE_KEYS", reservation_jwks.clone()),
        (
            "SSAK3_AUTH__ISSUER_KEY_FILE",
            write("issuer.pem", &keys.issuer_pem),
        ),
        ("SSAK3_PAYMENT_ENDPOINT", "http://127.0.0.1:9".into()),
        (
            "SSAK3_COMPANIES",
            r#"[{company_id="acme-cleaning", display_name="Acme Cleaning"}]"#.into(),
        ),
        ("SSAK3_SHUTDOWN_GRACE_MS", "1000".into()),
        ("SSAK3_DRAIN_DELAY_MS", "0".into()),
        ("SSAK3_CONNECTIONS__MAX_CONNECTIONS", "100".into()),
        ("SSAK3_CONNECTIONS__MAX_CONNECTIONS_PER_PEER", "50".into()),
        ("SSAK3_CONNECTIONS__FIRST_BYTE_TIMEOUT_MS", "10000".into()),
        ("SSAK3_CONNECTIONS__IDLE_TIMEOUT_MS", "300000".into()),
        ("SSAK3_CONNECTIONS__KEEPALIVE_INTERVAL_MS", "30000".into()),
        ("SSAK3_CONNECTIONS__KEEPALIVE_TIMEOUT_MS", "10000".into()),
        ("SSAK3_CONNECTIONS__MAX_CONCURRENT_STREAMS", "200".into()),
        ("SSAK3_CONNECTIONS__MAX_HEADER_LIST_BYTES", "16384".into()),
        ("SSAK3_STREAMS__MAX_STREAMS", "100".into()),
        ("SSAK3_STREAMS__MAX_STREAMS_PER_SUBSCRIBER", "8".into()),
        ("SSAK3_STREAMS__BUFFER", "256".into()),
        ("SSAK3_STREAMS__RETRY_AFTER_MS", "5000".into()),
        ("SSAK3_RATE_LIMIT__ENABLED", "true".into()),
        ("SSAK3_RATE_LIMIT__PER_SECOND", "20".into()),
        ("SSAK3_RATE_LIMIT__BURST", "40".into()),
        ("SSAK3_LOG_FORMAT", "json".into()),
        ("SSAK3_PRICES__STANDARD", "50000".into()),
        ("SSAK3_PRICES__DEEP", "90000".into()),
        ("SSAK3_PRICES__MOVE_OUT", "150000".into()),
        ("SSAK3_PAYMENT_CLIENT__TIMEOUT_MS", "2000".into()),
        ("SSAK3_PAYMENT_CLIENT__CONCURRENCY_LIMIT", "256".into()),
        ("SSAK3_PAYMENT_CLIENT__RETRY_AFTER_MS", "5000".into()),
        ("SSAK3_PAYMENT_CLIENT__BREAKER__FAILURE_RATE", "0.5".into()),
        ("SSAK3_PAYMENT_CLIENT__BREAKER__WINDOW_MS", "2000".into()),
        ("SSAK3_PAYMENT_CLIENT__BREAKER__MINIMUM_CALLS", "5".into()),
        ("SSAK3_PAYMENT_CLIENT__BREAKER__OPEN_MS", "5000".into()),
        ("SSAK3_PAYMENT_CLIENT__BREAKER__HALF_OPEN_CALLS", "1".into()),
        ("SSAK3_RECONCILE__PENDING_TIMEOUT_MS", "60000".into()),
        ("SSAK3_RECONCILE__INTERVAL_MS", "5000".into()),
        ("SSAK3_RECONCILE__CLAIM_MS", "30000".into()),
        ("SSAK3_GATEWAY__LATENCY_MS", "0".into()),
        ("SSAK3_GATEWAY__FAILURE_RATE", "0.0".into()),
        ("SSAK3_GATEWAY__DECLINE_OVER_UNITS", "1000000".into()),
        ("SSAK3_GATEWAY__DECLINE_CUSTOMERS", "[mallory]".into()),
        ("SSAK3_GATEWAY__RETRY_AFTER_MS", "2000".into()),
        ("SSAK3_AMQP_URL", test_support::amqp_url()),
        ("SSAK3_EVENTS__NAMESPACE", broker.config.namespace.clone()),
        ("SSAK3_EVENTS__PREFETCH", "64".into()),
        ("SSAK3_EVENTS__MAX_DELIVERIES", "5".into()),
        ("SSAK3_EVENTS__LANES", "4".into()),
        ("SSAK3_EVENTS__RELAY_BATCH", "128".into()),
        ("SSAK3_EVENTS__CLAIM_MS", "10000".into()),
        ("SSAK3_EVENTS__RETRY_BASE_MS", "100".into()),
        ("SSAK3_EVENTS__RETRY_MAX_MS", "5000".into()),
        ("SSAK3_NOTIFY__WEBHOOK_URL", webhook.url()),
        ("SSAK3_NOTIFY__WEBHOOK_SECRET", secret.clone()),
        (
            "SSAK3_NOTIFY__WEBHOOK_SECRET_FILE",
            write("webhook.secret", &secret),
        ),
        ("SSAK3_NOTIFY__WEBHOOKS__PARTNER__URL", webhook.url()),
        ("SSAK3_NOTIFY__WEBHOOKS__PARTNER__SECRET", secret.clone()),
        (
            "SSAK3_NOTIFY__WEBHOOKS__PARTNER__SECRET_FILE",
            write("partner.secret", &secret),
        ),
        (
            "SSAK3_NOTIFY__WEBHOOKS__PARTNER__RECIPIENTS",
            r#"["cleaner:acme-cleaning"]"#.into(),
        ),
        ("SSAK3_NOTIFY__WEBHOOK_CA_FILE", write("ca.pem", &ca_pem)),
        ("SSAK3_NOTIFY__WEBHOOK_CONCURRENCY", "8".into()),
        ("SSAK3_NOTIFY__CLAIM_MS", "30000".into()),
        ("SSAK3_NOTIFY__WEBHOOK_TIMEOUT_MS", "2000".into()),
        ("SSAK3_NOTIFY__MAX_ATTEMPTS", "8".into()),
        ("SSAK3_NOTIFY__RETRY_BASE_MS", "200".into()),
        ("SSAK3_NOTIFY__RETRY_MAX_MS", "30000".into()),
        ("SSAK3_NOTIFY__LOG_MESSAGES", "false".into()),
    ]
    .into_iter()
    .collect();

    let names = documented();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !samples.contains_key(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "documented settings this test has no value for: {missing:?}"
    );

    let rounds = EXCLUSIVE.iter().map(|set| set.len()).max().unwrap_or(1);
    for round in 0..rounds {
        let env: Vec<(&str, &str)> = names
            .iter()
            .filter(|name| {
                EXCLUSIVE
                    .iter()
                    .find(|set| set.contains(&name.as_str()))
                    .is_none_or(|set| set[round.min(set.len() - 1)] == name.as_str())
            })
            .map(|name| (name.as_str(), samples[name.as_str()].as_str()))
            .collect();
        for service in ["reservation", "payment", "notify", "mypage"] {
            let (listen, admin) = (free_addr(), free_addr());
            let database = format!(
                "sqlite://{}",
                dir.path().join(format!("{service}.db")).display()
            );
            let log_path = dir.path().join(format!("{service}-{round}.log"));
            let log = std::fs::File::create(&log_path).expect("a log file");
            let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ssak3"))
                .args(["serve", service])
                .envs(env.iter().copied())
                .env("SSAK3_LISTEN", listen.to_string())
                .env("SSAK3_ADMIN_LISTEN", admin.to_string())
                .env("SSAK3_DATABASE_URL", &database)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("a log file"))
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .expect("ssak3 serve starts");
            let names_set: Vec<&str> = env.iter().map(|(k, _)| *k).collect();
            let names_set = &names_set;
            eventually_within(
                Duration::from_secs(60),
                &format!("{service} serving with every setting (round {round})"),
                || {
                    let exited = child.try_wait().ok().flatten();
                    let log_path = log_path.clone();
                    async move {
                        if let Some(status) = exited {
                            panic!(
                                "serve {service} exited ({status}) with {:?}:\n{}",
                                names_set,
                                std::fs::read_to_string(&log_path).unwrap_or_default()
                            );
                        }
                        (test_support::health_of(listen).await
                            == Some(test_support::ServingStatus::Serving))
                        .then_some(())
                    }
                },
            )
            .await;
            child.start_kill().expect("stop");
            child.wait().await.expect("it ends");
        }
    }
}
