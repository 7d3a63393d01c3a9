//! The `ssak3` binary as operators run it.

use std::process::Command;

use ssak3_common::auth::{
    AuthConfig, Role, Verifier,
    signing::{DevelopmentKeys, Signer},
};

pub fn ssak3() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ssak3"));
    // Start from a clean slate whatever the caller's environment holds.
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SSAK3_")) {
        command.env_remove(key);
    }
    command
}

/// What `ssak3 serve SERVICE` says when it refuses to start with `env`.
fn refusal(service: &str, env: &[(&str, &str)]) -> String {
    let output = ssak3()
        .args(["serve", service])
        .envs(env.iter().copied())
        .output()
        .expect("ssak3 runs");
    assert!(
        !output.status.success(),
        "serve {service} started with {env:?}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr.lines().last().unwrap_or_default().to_owned();
    assert!(line.starts_with("ssak3: "), "{stderr}");
    line
}

#[test]
fn serve_refuses_missing_weak_or_development_keys() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let development = DevelopmentKeys::load_or_create(dir.path())?;
    let production = Signer::from_pem(&Signer::generate_pem()?, "idp-")?.jwks_json();
    let oct = r#"{"keys":[{"kty":"oct","kid":"k","alg":"HS256","k":"c2VjcmV0LWtleQ"}]}"#;
    let dev_jwks = development.jwks_file.to_string_lossy().into_owned();
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("notify", vec![], "no token keys configured"),
        (
            "notify",
            vec![("SSAK3_AUTH__JWKS", "not json")],
            "is not a JWKS",
        ),
        ("notify", vec![("SSAK3_AUTH__JWKS", oct)], "shared secret"),
        (
            "notify",
            vec![("SSAK3_AUTH__JWKS_FILE", &dev_jwks)],
            "development key",
        ),
        (
            "notify",
            vec![("SSAK3_AUTH__JWKS_FILE", "/nonexistent/jwks.json")],
            "cannot read",
        ),
        (
            "reservation",
            vec![("SSAK3_AUTH__JWKS", &production)],
            "no service key",
        ),
        (
            "reservation",
            vec![
                ("SSAK3_AUTH__JWKS", &production),
                ("SSAK3_AUTH__SERVICE_KEY", "not a key"),
            ],
            "service key",
        ),
        (
            "payment",
            vec![("SSAK3_AUTH__JWKS", &production)],
            "SERVICE_KEYS",
        ),
    ];
    for (service, env, reason) in cases {
        let line = refusal(service, &env);
        assert!(line.contains(reason), "{service} {env:?}: {line}");
    }
    Ok(())
}

#[tokio::test]
async fn token_is_signed_with_the_development_key_of_the_data_directory()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let output = ssak3()
        .args([
            "token",
            "--role",
            "customer",
            "--subject",
            "alice",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout)?;
    let verifier = Verifier::from_config(
        &AuthConfig {
            jwks_file: Some(dir.path().join("jwks.json")),
            ..AuthConfig::default()
        },
        "reservation",
        false,
    )
    .await?;
    let caller = verifier.verify(token.trim()).await?;
    assert_eq!(
        (caller.subject.as_str(), caller.role),
        ("alice", Role::Customer)
    );
    // Services sign their own tokens: the development issuer makes none.
    let service = ssak3()
        .args([
            "token",
            "--role",
            "service",
            "--subject",
            "reservation",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()?;
    assert!(!service.status.success());
    Ok(())
}

#[test]
fn a_misspelt_setting_is_reported_not_ignored() -> std::io::Result<()> {
    let output = ssak3()
        .env("SSAK3_PAYMENT_ENDPIONT", "http://127.0.0.1:1")
        .args(["token", "--role", "customer", "--subject", "alice"])
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid configuration"), "{stderr}");
    Ok(())
}

/// Runs `ssak3 ARGS` that must fail at start-up; returns its stderr.
pub fn refuses_to_start(args: &[&str]) -> String {
    let mut child = ssak3()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try wait") {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!("ssak3 {args:?} started although it should not have");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    assert_eq!(status.code(), Some(1), "{stderr}");
    // Log lines may come first; the error is the last line, said once.
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("ssak3: "), "{stderr}");
    for noise in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(!stderr.contains(noise), "{stderr}");
    }
    last.to_owned()
}

#[test]
fn a_taken_port_is_named() -> std::io::Result<()> {
    let base = ssak3_common::server::free_consecutive_ports(4).expect("free consecutive ports");
    let _taken = std::net::TcpListener::bind(("127.0.0.1", base + 2))?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_string_lossy().into_owned();
    let stderr = refuses_to_start(&["up", "--data-dir", &data, "--base-port", &base.to_string()]);
    assert!(
        stderr.contains(&format!("port {} is already in use on 127.0.0.1", base + 2)),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn an_unreachable_database_is_named_without_its_password() -> std::io::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_string_lossy().into_owned();
    let stderr = refuses_to_start(&[
        "up",
        "--data-dir",
        &data,
        "--database-url",
        "postgres://ssak3:hunter2@127.0.0.1:1/ssak3",
    ]);
    assert!(
        stderr.contains(
            "cannot connect to the database server at postgres://ssak3:***@127.0.0.1:1/postgres"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    let stderr = refuses_to_start(&["up", "--data-dir", &data, "--database-url", "mysql://h/db"]);
    assert!(
        stderr.contains("is not supported: use postgres://"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn an_unreachable_broker_is_named_without_its_password() -> std::io::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_string_lossy().into_owned();
    let stderr = refuses_to_start(&[
        "up",
        "--data-dir",
        &data,
        "--amqp-url",
        "amqp://guest:s3cret@127.0.0.1:1/%2f",
    ]);
    assert!(
        stderr.contains("cannot reach the message broker at amqp://guest:***@127.0.0.1:1/%2f"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
    Ok(())
}

#[test]
fn a_malformed_broker_url_is_named_without_its_password() -> std::io::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_string_lossy().into_owned();
    let stderr = refuses_to_start(&[
        "up",
        "--data-dir",
        &data,
        "--amqp-url",
        "amqp://guest:s3cret@127.0.0.1:no-port/%2f",
    ]);
    assert!(
        stderr.contains("broker URL amqp://guest:***@127.0.0.1:no-port/%2f is invalid"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
    Ok(())
}

#[test]
fn a_data_directory_that_cannot_be_written_is_named() -> std::io::Result<()> {
    let dir = tempfile::tempdir()?;
    // A file where a directory should be: refused even for root.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"")?;
    let data = file.join("data").to_string_lossy().into_owned();
    let stderr = refuses_to_start(&["up", "--data-dir", &data]);
    assert!(
        stderr.contains(&format!("cannot create data directory {data}")),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn migrate_creates_a_missing_database_unless_told_it_must_exist() -> anyhow::Result<()> {
    use ssak3_common::{db::DatabaseUrl, test_support::postgres_admin_url};
    let admin = postgres_admin_url();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    let url = format!("{base}/ssak3_test_{}", uuid::Uuid::new_v4().simple());
    let migrate = |extra: &[&str]| {
        ssak3()
            .env("SSAK3_DATABASE_URL", &url)
            .args(["migrate", "payment"])
            .args(extra)
            .output()
    };

    let output = migrate(&["--no-create-database"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("does not exist"), "{stderr}");

    let output = migrate(&[])?;
    let result = DatabaseUrl::parse(&url)?.drop_if_exists();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("payment      migrated"));
    result
}

#[tokio::test]
async fn token_signs_with_a_given_issuer_key_that_its_certificate_verifies()
-> Result<(), Box<dyn std::error::Error>> {
    // A key pair as a chart makes it: a SEC1 key, a certificate named after it.
    let testdata = concat!(env!("CARGO_MANIFEST_DIR"), "/../common/src/auth/testdata");
    let output = ssak3()
        .args([
            "token",
            "--role",
            "operator",
            "--subject",
            "ops",
            "--key-name",
            "reservation",
        ])
        .arg("--key-file")
        .arg(format!("{testdata}/reservation-sec1.pem"))
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout)?;
    let verifier = Verifier::from_config(
        &AuthConfig {
            jwks_file: Some(format!("{testdata}/reservation.crt").into()),
            ..AuthConfig::default()
        },
        "reservation",
        false,
    )
    .await?;
    let caller = verifier.verify(token.trim()).await?;
    assert_eq!(
        (caller.subject.as_str(), caller.role),
        ("ops", Role::Operator)
    );
    Ok(())
}

#[test]
fn bench_prints_its_results_as_json_lines_when_asked() -> anyhow::Result<()> {
    let output = ssak3()
        .args(["bench", "create", "--duration-secs", "1", "--clients", "2"])
        .args(["--connections", "1", "--output", "json"])
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<serde_json::Value> = String::from_utf8(output.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let calls = results
        .iter()
        .find(|r| r["result"] == "calls")
        .expect("a result of the calls made");
    assert_eq!(calls["name"], "CreateReservation");
    assert!(calls["ok"].as_u64().is_some_and(|ok| ok > 0), "{calls}");
    assert!(
        calls["latency_ms"]["p99"]
            .as_f64()
            .is_some_and(|p99| p99 > 0.0)
    );
    assert_eq!(calls["errors"], serde_json::json!({}));
    assert!(
        results
            .iter()
            .any(|r| r["result"] == "backlog" && r["waiting"] == 0),
        "{results:?}"
    );
    Ok(())
}
