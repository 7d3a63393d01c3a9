//! Every way a token is refused, and the two trust domains kept apart.

use super::{signing::TokenSpec, *};

struct World {
    issuer: Signer,
    reservation: ServiceIdentity,
    payment: Verifier,
    notify: Verifier,
}

fn signer(prefix: &str) -> Signer {
    Signer::from_pem(&Signer::generate_pem().expect("a key"), prefix).expect("a signer")
}

fn jwks(signer: &Signer) -> String {
    serde_json::to_string(&signer.jwks()).expect("json")
}

async fn world(audience: Option<&str>) -> World {
    let issuer = signer("idp-");
    let reservation = ServiceIdentity::new("reservation", signer("reservation:"));
    let config = AuthConfig {
        jwks: Some(jwks(&issuer)),
        audience: audience.map(str::to_owned),
        service_keys: Some(serde_json::to_string(&reservation.jwks()).expect("json")),
        ..AuthConfig::default()
    };
    World {
        payment: Verifier::from_config(&config, "payment", true)
            .await
            .expect("payment"),
        notify: Verifier::from_config(&config, "notify", false)
            .await
            .expect("notify"),
        issuer,
        reservation,
    }
}

fn spec<'a>(subject: &'a str, role: Role) -> TokenSpec<'a> {
    let now = signing::now_secs().expect("a clock");
    TokenSpec {
        issuer: "ssak3",
        subject,
        role,
        audience: None,
        issued_at: now,
        not_before: now,
        expires_at: now + 600,
    }
}

async fn refusal(verifier: &Verifier, token: &str) -> String {
    match verifier.verify(token).await {
        Ok(caller) => panic!("accepted a token for {caller:?}"),
        Err(Refused(reason)) => reason,
    }
}

#[tokio::test]
async fn a_valid_token_names_its_caller() {
    let w = world(None).await;
    let token = w
        .issuer
        .issue_claims(&spec("alice", Role::Customer))
        .expect("token");
    let caller = w.notify.verify(&token).await.expect("valid");
    assert_eq!(caller.subject.as_str(), "alice");
    assert_eq!(caller.role, Role::Customer);
}

#[tokio::test]
async fn every_bad_claim_is_refused_with_its_reason() {
    let w = world(None).await;
    let now = signing::now_secs().expect("a clock");
    let forger = signer("idp-");
    let cases: Vec<(String, &str)> = vec![
        (
            forger
                .issue_claims(&spec("alice", Role::Customer))
                .expect("token"),
            "unknown signing key",
        ),
        (
            w.issuer
                .issue_claims(&TokenSpec {
                    expires_at: now - 3_600,
                    issued_at: now - 4_000,
                    not_before: now - 4_000,
                    ..spec("alice", Role::Customer)
                })
                .expect("token"),
            "expired",
        ),
        (
            w.issuer
                .issue_claims(&TokenSpec {
                    not_before: now + 3_600,
                    ..spec("alice", Role::Customer)
                })
                .expect("token"),
            "not valid yet",
        ),
        (
            w.issuer
                .issue_claims(&TokenSpec {
                    issued_at: now + 3_600,
                    expires_at: now + 4_000,
                    ..spec("alice", Role::Customer)
                })
                .expect("token"),
            "issued in the future",
        ),
        (
            w.issuer
                .issue_claims(&TokenSpec {
                    expires_at: now + 100 * 365 * 86_400,
                    ..spec("alice", Role::Customer)
                })
                .expect("token"),
            "lives longer",
        ),
        (
            w.issuer
                .issue_claims(&TokenSpec {
                    issuer: "someone-else",
                    ..spec("alice", Role::Customer)
                })
                .expect("token"),
            "unknown issuer",
        ),
        (
            w.issuer
                .issue_claims(&spec("alice ", Role::Customer))
                .expect("token"),
            "token subject",
        ),
        (
            w.issuer
                .issue_claims(&spec(&"a".repeat(65), Role::Customer))
                .expect("token"),
            "token subject",
        ),
        (
            w.issuer
                .issue_claims(&spec("reservation", Role::Service))
                .expect("token"),
            "does not speak for services",
        ),
        ("not.a.jwt".into(), "malformed"),
    ];
    for (token, reason) in cases {
        let refused = refusal(&w.notify, &token).await;
        assert!(
            refused.contains(reason),
            "{refused:?} should say {reason:?}"
        );
        assert!(!refused.contains(&token), "the token was echoed");
    }
}

#[tokio::test]
async fn a_tampered_token_has_a_bad_signature() {
    let w = world(None).await;
    let token = w
        .issuer
        .issue_claims(&spec("alice", Role::Customer))
        .expect("token");
    let (head, signature) = token.rsplit_once('.').expect("three parts");
    let mut other = w
        .issuer
        .issue_claims(&spec("mallory", Role::Customer))
        .expect("token");
    let payload = other.split('.').nth(1).expect("payload").to_owned();
    other = format!(
        "{}.{payload}.{signature}",
        head.split('.').next().expect("header")
    );
    assert!(
        refusal(&w.notify, &other)
            .await
            .contains("bad token signature")
    );
}

#[tokio::test]
async fn the_audience_is_checked_when_configured() {
    let w = world(Some("ssak3-prod")).await;
    let none = w
        .issuer
        .issue_claims(&spec("alice", Role::Customer))
        .expect("token");
    assert!(refusal(&w.notify, &none).await.contains("aud"));
    let wrong = w
        .issuer
        .issue_claims(&TokenSpec {
            audience: Some("ssak3-staging"),
            ..spec("alice", Role::Customer)
        })
        .expect("token");
    assert!(
        refusal(&w.notify, &wrong)
            .await
            .contains("another audience")
    );
    let right = w
        .issuer
        .issue_claims(&TokenSpec {
            audience: Some("ssak3-prod"),
            ..spec("alice", Role::Customer)
        })
        .expect("token");
    assert!(w.notify.verify(&right).await.is_ok());
}

#[tokio::test]
async fn only_the_callers_own_key_speaks_for_it_and_only_to_its_audience() {
    let w = world(None).await;
    let to_payment = w.reservation.token_for("payment").expect("token");
    let caller = w.payment.verify(&to_payment).await.expect("accepted");
    assert_eq!(
        (caller.subject.as_str(), caller.role),
        ("reservation", Role::Service)
    );
    // Another service does not accept it: its audience is payment, and it trusts no service.
    assert!(
        refusal(&w.notify, &to_payment)
            .await
            .contains("unknown signing key")
    );
    let to_notify = w.reservation.token_for("notify").expect("token");
    assert!(
        refusal(&w.payment, &to_notify)
            .await
            .contains("another audience")
    );
    // The service key cannot speak for a customer.
    let now = signing::now_secs().expect("a clock");
    let impersonation = w
        .reservation
        .signer
        .issue_claims(&TokenSpec {
            issuer: "ssak3-service/reservation",
            audience: Some("payment"),
            not_before: now,
            ..spec("alice", Role::Customer)
        })
        .expect("token");
    assert!(
        refusal(&w.payment, &impersonation)
            .await
            .contains("does not speak")
    );
}

#[tokio::test]
async fn development_keys_are_refused_when_asked() {
    let dev = signer(DEVELOPMENT_KID_PREFIX);
    let config = AuthConfig {
        jwks: Some(jwks(&dev)),
        ..AuthConfig::default()
    };
    let verifier = Verifier::from_config(&config, "notify", false)
        .await
        .expect("loads");
    assert!(verifier.refuse_development_keys().await.is_err());
    let production = Verifier::from_config(
        &AuthConfig {
            jwks: Some(jwks(&signer("idp-"))),
            ..AuthConfig::default()
        },
        "notify",
        false,
    )
    .await
    .expect("loads");
    assert!(production.refuse_development_keys().await.is_ok());
}

#[tokio::test]
async fn missing_or_doubled_key_sources_are_named() {
    let none = Verifier::from_config(&AuthConfig::default(), "notify", false).await;
    assert!(
        none.expect_err("no keys")
            .to_string()
            .contains("SSAK3_AUTH__JWKS_URL")
    );
    let both = AuthConfig {
        jwks: Some("{}".into()),
        jwks_url: Some("https://idp.example/jwks".into()),
        ..AuthConfig::default()
    };
    let doubled = Verifier::from_config(&both, "notify", false).await;
    assert!(
        doubled
            .expect_err("two sources")
            .to_string()
            .contains("only one")
    );
    let payment = AuthConfig {
        jwks: Some(jwks(&signer("idp-"))),
        ..AuthConfig::default()
    };
    let callers = Verifier::from_config(&payment, "payment", true).await;
    assert!(
        callers
            .expect_err("no callers")
            .to_string()
            .contains("SERVICE_KEYS")
    );
}

#[test]
fn wrong_role_is_permission_denied() {
    let caller = Caller {
        subject: Subject::parse("acme").expect("a valid subject"),
        role: Role::Cleaner,
    };
    assert!(matches!(
        caller.require(Role::Customer),
        Err(ApiError::PermissionDenied(_))
    ));
    assert_eq!(
        caller.company().map(|c| c.into_string()).ok(),
        Some("acme".into())
    );
    assert!(matches!(
        caller.customer(),
        Err(ApiError::PermissionDenied(_))
    ));
    assert!(caller.require_service("reservation").is_err());
}

/// A key pair made by Helm (`genPrivateKey "ecdsa"` and
/// `genSelfSignedCertWithKey "reservation"`: a SEC1 private key and a
/// certificate whose common name is a PrintableString), for tests only.
const CHART_KEY: &str = include_str!("testdata/reservation-sec1.pem");
const CHART_CERTIFICATE: &str = include_str!("testdata/reservation.crt");

#[tokio::test]
async fn a_service_key_and_certificate_as_a_chart_makes_them_work_together() {
    let issuer = signer("idp-");
    let config = AuthConfig {
        jwks: Some(jwks(&issuer)),
        service_key: Some(CHART_KEY.into()),
        service_keys: Some(CHART_CERTIFICATE.into()),
        ..AuthConfig::default()
    };
    let identity = config
        .service_identity("reservation")
        .expect("the SEC1 key loads");
    let payment = Verifier::from_config(&config, "payment", true)
        .await
        .expect("the certificate loads");
    let caller = payment
        .verify(&identity.token_for("payment").expect("token"))
        .await
        .expect("accepted");
    assert_eq!(caller.subject.as_str(), "reservation");
    // The certificate names the service: another service's key would not speak for reservation.
    let keys = keys::certificate_keys(CHART_CERTIFICATE).expect("parsed");
    assert!(
        keys.keys[0]
            .common
            .key_id
            .as_deref()
            .is_some_and(|kid| kid.starts_with("reservation:"))
    );
}

/// A JWKS that changes: the issuer adds a key, then drops the old one.
async fn rotation(source: KeySource, publish: impl Fn(&[&Signer])) {
    let old = signer("idp-");
    let new = signer("idp-");
    publish(&[&old]);
    let mut config = AuthConfig {
        jwks_refresh_ms: 200,
        ..AuthConfig::default()
    };
    match source {
        KeySource::File(path) => config.jwks_file = Some(path),
        KeySource::Url(url) => config.jwks_url = Some(url),
        KeySource::Inline(_) => unreachable!("an inline JWKS does not change"),
    }
    let verifier = Verifier::from_config(&config, "notify", false)
        .await
        .expect("loads");
    let by_old = old
        .issue_claims(&spec("alice", Role::Customer))
        .expect("token");
    let by_new = new
        .issue_claims(&spec("alice", Role::Customer))
        .expect("token");
    assert!(verifier.verify(&by_old).await.is_ok());
    assert!(
        refusal(&verifier, &by_new)
            .await
            .contains("unknown signing key")
    );

    publish(&[&old, &new]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        verifier.verify(&by_new).await.is_ok(),
        "the new key is listed"
    );
    assert!(
        verifier.verify(&by_old).await.is_ok(),
        "both keys during the rotation"
    );

    publish(&[&new]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(verifier.verify(&by_new).await.is_ok());
    assert!(
        refusal(&verifier, &by_old)
            .await
            .contains("unknown signing key"),
        "a removed key still verifies"
    );
}

fn jwks_of(keys: &[&Signer]) -> String {
    let set = jsonwebtoken::jwk::JwkSet {
        keys: keys.iter().flat_map(|k| k.jwks().keys).collect(),
    };
    serde_json::to_string(&set).expect("json")
}

#[tokio::test]
async fn keys_rotate_in_a_jwks_file() {
    let dir = tempfile::tempdir().expect("a directory");
    let path = dir.path().join("jwks.json");
    let file = path.clone();
    rotation(KeySource::File(path), move |keys| {
        std::fs::write(&file, jwks_of(keys)).expect("written");
    })
    .await;
}

#[tokio::test]
async fn keys_rotate_at_a_jwks_uri() {
    use std::sync::{Arc, Mutex};
    let published = Arc::new(Mutex::new(String::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bound");
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().expect("an address")
    );
    let served = Arc::clone(&published);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let served = Arc::clone(&served);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    let body = served.lock().expect("lock").clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    rotation(KeySource::Url(url), move |keys| {
        *published.lock().expect("lock") = jwks_of(keys);
    })
    .await;
}

/// Notify's verifier, trusting `issuer`'s key with `leeway_secs` of leeway.
async fn notify_trusting(issuer: &Signer, leeway_secs: u64) -> Verifier {
    let config = AuthConfig {
        jwks: Some(jwks(issuer)),
        leeway_secs,
        ..AuthConfig::default()
    };
    Verifier::from_config(&config, "notify", false)
        .await
        .expect("loads")
}

#[tokio::test]
async fn a_token_checked_once_is_served_from_memory_until_it_expires_and_only_as_it_is() {
    let issuer = signer("idp-");
    let verifier = notify_trusting(&issuer, 0).await;
    let now = signing::now_secs().expect("a clock");
    let token = issuer
        .issue_claims(&TokenSpec {
            expires_at: now + 2,
            ..spec("alice", Role::Customer)
        })
        .expect("token");
    let checked = || verifier.inner.signatures_checked.load(Ordering::Relaxed);
    for _ in 0..3 {
        assert_eq!(
            verifier.verify(&token).await.map(|c| c.subject.to_string()),
            Ok("alice".to_owned())
        );
    }
    assert_eq!(checked(), 1, "one signature check for three calls");

    // The remembered token's text, its signature changed, is checked anew.
    let mut forged: Vec<char> = token.chars().collect();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    assert!(!refusal(&verifier, &forged).await.is_empty());
    assert_eq!(checked(), 2, "the forged token went through the checks");

    // Once expired, it is refused as any expired token is.
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    assert!(refusal(&verifier, &token).await.contains("expired"));
}

#[tokio::test]
async fn only_tokens_of_a_bounded_size_are_remembered() {
    let issuer = signer("idp-");
    let verifier = notify_trusting(&issuer, AuthConfig::default().leeway_secs).await;
    let token = issuer
        .issue_claims(&spec("alice", Role::Customer))
        .expect("token");
    let (_, verified) = verifier.check(&token).await.expect("valid");
    let remembered = || verifier.inner.verified.lock().map(|m| m.len()).unwrap_or(0);
    verifier.remember(&"x".repeat(REMEMBERED_TOKEN_BYTES + 1), verified.clone());
    assert_eq!(remembered(), 0);
    verifier.remember(&token, verified);
    assert_eq!(remembered(), 1);
}
