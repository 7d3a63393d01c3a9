//! The `ssak3` binary as operators run it.

use std::process::Command;

use ssak3_common::auth::{DEVELOPMENT_SECRET, JwtKeys, Role};

fn ssak3() -> Command {
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
