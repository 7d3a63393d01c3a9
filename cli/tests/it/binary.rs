//! The `ssak3` binary as operators run it.

use std::process::Command;

use ssak3_common::auth::{DEVELOPMENT_SECRET, JwtKeys, Role};

pub fn ssak3() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ssak3"));
    // Start from a clean slate whatever the caller's environment holds.
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SSAK3_")) {
        command.env_remove(key);
    }
    command
}

#[test]
fn serve_refuses_to_start_without_a_signing_key() -> std::io::Result<()> {
    let output = ssak3().args(["serve", "payment"]).output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SSAK3_JWT_SECRET is not set"), "{stderr}");
    Ok(())
}

#[test]
fn token_is_signed_with_the_configured_or_development_key() -> Result<(), Box<dyn std::error::Error>>
{
    let output = ssak3()
        .args(["token", "--role", "customer", "--subject", "alice"])
        .output()?;
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout)?;
    let caller = JwtKeys::new(DEVELOPMENT_SECRET.as_bytes()).verify(token.trim())?;
    assert_eq!(
        (caller.subject.as_str(), caller.role),
        ("alice", Role::Customer)
    );

    let output = ssak3()
        .env("SSAK3_JWT_SECRET", "operator-key")
        .args(["token", "--role", "cleaner", "--subject", "acme"])
        .output()?;
    let token = String::from_utf8(output.stdout)?;
    assert!(JwtKeys::new(b"operator-key").verify(token.trim()).is_ok());
    assert!(
        JwtKeys::new(DEVELOPMENT_SECRET.as_bytes())
            .verify(token.trim())
            .is_err()
    );
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
fn refuses_to_start(args: &[&str]) -> String {
    let mut child = ssak3()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
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
    let base = ssak3_common::server::free_consecutive_ports(4).unwrap_or_else(|e| panic!("{e}"));
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
