//! Identity and tenancy, tried as an attacker would.
//!
//! The matrix: every RPC of every public service, taken from the services'
//! descriptors (so that a new RPC cannot be forgotten: one missing from
//! [`examples`] fails the test), is called with each kind of bad token and
//! with a valid token of the wrong role, of another owner, and of a subject
//! outside the id grammar. Each is refused with the right code, and nothing
//! is stored.

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use prost::Message as _;
use prost_types::FileDescriptorSet;
use ssak3_common::{
    auth::{
        Role,
        signing::{Signer, TokenSpec, now_secs},
    },
    test_support,
};
use ssak3_proto::{
    codec::RawCodec,
    mypage::v1 as mypage,
    notify::v1 as notify,
    payment::{internal::v1 as payment_internal, v1 as payment},
    reservation::v1 as reservation,
};
use tonic::Code;

use crate::system::{COMPANY, CUSTOMER, Svc, System, as_user};

/// The audience the services of this test require.
const AUDIENCE: &str = "ssak3-test";

/// One public RPC as the descriptors list it.
#[derive(Clone, Debug)]
struct Rpc {
    path: String,
    server_streaming: bool,
    svc: Svc,
}

/// Every RPC of the public packages, and the service-only payment calls.
fn public_rpcs() -> Vec<Rpc> {
    let set = FileDescriptorSet::decode(ssak3_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let mut rpcs = Vec::new();
    for file in set.file {
        let package = file.package();
        let svc = match package {
            "ssak3.reservation.v1" => Svc::Reservation,
            "ssak3.payment.v1" | "ssak3.payment.internal.v1" => Svc::Payment,
            "ssak3.notify.v1" => Svc::Notify,
            "ssak3.mypage.v1" => Svc::Mypage,
            _ => continue,
        };
        for service in &file.service {
            for method in &service.method {
                rpcs.push(Rpc {
                    path: format!("/{package}.{}/{}", service.name(), method.name()),
                    server_streaming: method.server_streaming(),
                    svc,
                });
            }
        }
    }
    rpcs
}

/// What a caller of an RPC may legitimately send: who, and a request that
/// the rightful caller could make (naming the victim's objects).
struct Example {
    role: Role,
    subject: &'static str,
    request: Vec<u8>,
    /// Whether it names an object one owner has and another must not reach.
    owned: bool,
    /// A valid caller in a role that must not make this call.
    wrong: (Role, &'static str),
}

/// The state the examples name: the victim's booking and payment.
struct Victim {
    reservation_id: String,
    payment_id: String,
}

fn examples(victim: &Victim) -> BTreeMap<&'static str, Example> {
    let id = victim.reservation_id.clone();
    let booking = reservation::CreateReservationRequest {
        request_id: "matrix-booking".into(),
        cleaner_id: COMPANY.into(),
        address: "12 Gangnam-daero, Seoul".into(),
        scheduled_at: Some(ssak3_common::time::to_timestamp(
            ssak3_common::time::now() + chrono::TimeDelta::days(2),
        )),
        service_type: reservation::ServiceType::Standard as i32,
        note: String::new(),
    };
    let order = payment::ApprovePaymentRequest {
        reservation_id: "matrix-order".into(),
        amount: Some(ssak3_proto::r#type::v1::Money {
            currency_code: "KRW".into(),
            units: 100_000_000,
        }),
        customer_id: CUSTOMER.into(),
        cleaner_id: COMPANY.into(),
        address: "anywhere".into(),
        scheduled_at: booking.scheduled_at,
    };
    let example = |role, subject, request: Vec<u8>, owned| Example {
        role,
        subject,
        request,
        owned,
        wrong: match role {
            Role::Cleaner => (Role::Customer, CUSTOMER),
            Role::Customer | Role::Service | Role::Operator => (Role::Cleaner, COMPANY),
        },
    };
    let customer = |request, owned| example(Role::Customer, CUSTOMER, request, owned);
    let company = |request, owned| example(Role::Cleaner, COMPANY, request, owned);
    // Notifications and pages are for customers and companies alike; an operator has none.
    let person = |role, subject, request| Example {
        wrong: (Role::Operator, "ops"),
        ..example(role, subject, request, false)
    };
    BTreeMap::from([
        (
            "/ssak3.reservation.v1.ReservationService/CreateReservation",
            customer(booking.encode_to_vec(), false),
        ),
        (
            "/ssak3.reservation.v1.ReservationService/GetReservation",
            customer(
                reservation::GetReservationRequest {
                    reservation_id: id.clone(),
                }
                .encode_to_vec(),
                true,
            ),
        ),
        (
            "/ssak3.reservation.v1.ReservationService/CancelReservation",
            customer(
                reservation::CancelReservationRequest {
                    reservation_id: id.clone(),
                }
                .encode_to_vec(),
                true,
            ),
        ),
        (
            "/ssak3.reservation.v1.CleaningService/ListJobs",
            company(
                reservation::ListJobsRequest::default().encode_to_vec(),
                false,
            ),
        ),
        (
            "/ssak3.reservation.v1.CleaningService/CompleteCleaning",
            company(
                reservation::CompleteCleaningRequest {
                    reservation_id: id.clone(),
                }
                .encode_to_vec(),
                true,
            ),
        ),
        (
            "/ssak3.reservation.v1.CompanyService/RegisterCompany",
            example(
                Role::Operator,
                "ops",
                reservation::RegisterCompanyRequest {
                    company_id: "matrix-company".into(),
                    display_name: "Matrix Cleaning".into(),
                }
                .encode_to_vec(),
                false,
            ),
        ),
        (
            "/ssak3.payment.v1.PaymentService/ApprovePayment",
            example(Role::Service, "reservation", order.encode_to_vec(), false),
        ),
        (
            "/ssak3.payment.internal.v1.InternalPaymentService/ApprovePayment",
            example(Role::Service, "reservation", order.encode_to_vec(), false),
        ),
        (
            "/ssak3.payment.internal.v1.InternalPaymentService/CancelPayment",
            example(
                Role::Service,
                "reservation",
                payment_internal::CancelPaymentRequest {
                    reservation_id: id.clone(),
                    reason: String::new(),
                }
                .encode_to_vec(),
                false,
            ),
        ),
        (
            "/ssak3.payment.v1.PaymentService/GetPayment",
            customer(
                payment::GetPaymentRequest {
                    lookup: Some(payment::get_payment_request::Lookup::PaymentId(
                        victim.payment_id.clone(),
                    )),
                }
                .encode_to_vec(),
                true,
            ),
        ),
        (
            "/ssak3.notify.v1.NotificationService/ListNotifications",
            person(
                Role::Cleaner,
                COMPANY,
                notify::ListNotificationsRequest::default().encode_to_vec(),
            ),
        ),
        (
            "/ssak3.notify.v1.NotificationService/WatchNotifications",
            person(
                Role::Cleaner,
                COMPANY,
                notify::WatchNotificationsRequest::default().encode_to_vec(),
            ),
        ),
        (
            "/ssak3.mypage.v1.MyPageService/ListMyReservations",
            person(
                Role::Customer,
                CUSTOMER,
                mypage::ListMyReservationsRequest::default().encode_to_vec(),
            ),
        ),
        (
            "/ssak3.mypage.v1.MyPageService/GetMyReservation",
            // The company sees the job too; an operator sees no page.
            Example {
                wrong: (Role::Operator, "ops"),
                ..customer(
                    mypage::GetMyReservationRequest {
                        reservation_id: id.clone(),
                    }
                    .encode_to_vec(),
                    true,
                )
            },
        ),
        (
            "/ssak3.mypage.v1.MyPageService/WatchMyReservations",
            person(
                Role::Customer,
                CUSTOMER,
                mypage::WatchMyReservationsRequest::default().encode_to_vec(),
            ),
        ),
    ])
}

/// A token of the test issuer with these claims, for this system's audience.
fn token(subject: &str, role: Role, tweak: impl FnOnce(&mut TokenSpec<'_>)) -> String {
    let now = now_secs().expect("a clock");
    let mut spec = TokenSpec {
        issuer: "ssak3",
        subject,
        role,
        audience: Some(AUDIENCE),
        issued_at: now,
        not_before: now,
        expires_at: now + 600,
    };
    tweak(&mut spec);
    test_support::keys()
        .issuer
        .issue_claims(&spec)
        .expect("a token")
}

/// The valid token of an example (a service signs its own).
fn valid(example: &Example, svc: Svc) -> String {
    match example.role {
        Role::Service => test_support::service_token(match svc {
            Svc::Payment => "payment",
            _ => "reservation",
        }),
        role => token(example.subject, role, |_| {}),
    }
}

/// Calls `rpc` with `token` (or none) and returns the code it answers.
async fn call(system: &System, rpc: &Rpc, request: &[u8], token: Option<&str>) -> Code {
    let channel = test_support::channel(system.addr(rpc.svc)).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let mut message = tonic::Request::new(Bytes::copy_from_slice(request));
    if let Some(token) = token {
        message = ssak3_common::auth::with_bearer(message, token).expect("metadata");
    }
    message.set_timeout(Duration::from_secs(5));
    let path = rpc.path.parse().expect("a path");
    let outcome = if rpc.server_streaming {
        grpc.server_streaming(message, path, RawCodec)
            .await
            .map(drop)
    } else {
        grpc.unary(message, path, RawCodec).await.map(drop)
    };
    outcome.err().map_or(Code::Ok, |status| status.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_every_bad_token_and_stores_nothing() {
    let system = System::start_with_audience(AUDIENCE).await;
    let booked = system
        .reservations()
        .await
        .create_reservation(
            ssak3_common::auth::with_bearer(
                tonic::Request::new(reservation::CreateReservationRequest {
                    request_id: "victim".into(),
                    cleaner_id: COMPANY.into(),
                    address: "1 Sejong-daero, Seoul".into(),
                    scheduled_at: Some(ssak3_common::time::to_timestamp(
                        ssak3_common::time::now() + chrono::TimeDelta::days(2),
                    )),
                    service_type: reservation::ServiceType::Deep as i32,
                    note: String::new(),
                }),
                &token(CUSTOMER, Role::Customer, |_| {}),
            )
            .expect("metadata"),
        )
        .await
        .expect("the victim's booking")
        .into_inner();
    let victim = Victim {
        reservation_id: booked.reservation_id,
        payment_id: booked.payment_id,
    };
    let before = [
        system.stored(Svc::Reservation, "reservations").await,
        system.stored(Svc::Reservation, "companies").await,
        system.stored(Svc::Payment, "payments").await,
    ];

    let forger =
        Signer::from_pem(&Signer::generate_pem().expect("a key"), "test-idp-").expect("a signer");
    let now = now_secs().expect("a clock");
    let examples = examples(&victim);
    let rpcs = public_rpcs();
    assert!(rpcs.len() >= 14, "the descriptors lost RPCs: {rpcs:?}");
    let mut failures = Vec::new();
    for rpc in &rpcs {
        let Some(example) = examples.get(rpc.path.as_str()) else {
            failures.push(format!("{}: no example in the matrix; add one", rpc.path));
            continue;
        };
        let (subject, role) = (example.subject, example.role);
        let mut cases: Vec<(&str, Option<String>, Code)> = vec![
            ("no token", None, Code::Unauthenticated),
            (
                "bad signature",
                Some(
                    forger
                        .issue_claims(&TokenSpec {
                            issuer: "ssak3",
                            subject,
                            role,
                            audience: Some(AUDIENCE),
                            issued_at: now,
                            not_before: now,
                            expires_at: now + 600,
                        })
                        .expect("a token"),
                ),
                Code::Unauthenticated,
            ),
            (
                "expired",
                Some(token(subject, role, |t| {
                    t.issued_at = now - 7_200;
                    t.not_before = now - 7_200;
                    t.expires_at = now - 3_600;
                })),
                Code::Unauthenticated,
            ),
            (
                "nbf in the future",
                Some(token(subject, role, |t| t.not_before = now + 3_600)),
                Code::Unauthenticated,
            ),
            (
                "iat in the future",
                Some(token(subject, role, |t| {
                    t.issued_at = now + 3_600;
                    t.expires_at = now + 4_000;
                })),
                Code::Unauthenticated,
            ),
            (
                "over-long lifetime",
                Some(token(subject, role, |t| {
                    t.expires_at = now + 100 * 365 * 86_400
                })),
                Code::Unauthenticated,
            ),
            (
                "wrong issuer",
                Some(token(subject, role, |t| t.issuer = "someone-else")),
                Code::Unauthenticated,
            ),
            (
                "wrong audience",
                Some(token(subject, role, |t| {
                    t.audience = Some("ssak3-elsewhere")
                })),
                Code::Unauthenticated,
            ),
            (
                "unvalidated subject",
                Some(token(&"x".repeat(65), Role::Customer, |_| {})),
                Code::Unauthenticated,
            ),
            (
                "subject with a trailing space",
                Some(token("alice ", Role::Customer, |_| {})),
                Code::Unauthenticated,
            ),
        ];
        let (other_role, other_subject) = example.wrong;
        cases.push((
            "wrong role",
            Some(token(other_subject, other_role, |_| {})),
            Code::PermissionDenied,
        ));
        if role != Role::Service {
            // The issuer cannot speak for a service.
            cases.push((
                "issuer token claiming a service",
                Some(token("reservation", Role::Service, |_| {})),
                Code::Unauthenticated,
            ));
        }
        if example.owned {
            let other = match role {
                Role::Cleaner => token("other-cleaning", Role::Cleaner, |_| {}),
                _ => token("mallory", Role::Customer, |_| {}),
            };
            cases.push(("another owner", Some(other), Code::NotFound));
        }
        for (case, token, expected) in cases {
            let code = call(&system, rpc, &example.request, token.as_deref()).await;
            if code != expected {
                failures.push(format!(
                    "{} / {case}: {code:?}, expected {expected:?}",
                    rpc.path
                ));
            }
        }
        // The rightful caller gets through the door (whatever the call then answers).
        let rightful = call(
            &system,
            rpc,
            &example.request,
            Some(&valid(example, rpc.svc)),
        )
        .await;
        if rightful == Code::Unauthenticated || rightful == Code::PermissionDenied {
            failures.push(format!(
                "{}: the rightful caller was refused: {rightful:?}",
                rpc.path
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The rightful calls above booked and registered once each; nothing else was stored.
    let after = [
        system.stored(Svc::Reservation, "reservations").await,
        system.stored(Svc::Reservation, "companies").await,
        system.stored(Svc::Payment, "payments").await,
    ];
    assert_eq!(
        after,
        [before[0] + 1, before[1] + 1, before[2] + 2],
        "{before:?} → {after:?}"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_named_like_a_company_never_sees_its_notifications() {
    use tokio_stream::StreamExt as _;
    let system = System::start(crate::system::Transport::Embedded).await;
    let mut impostor = system
        .notifications()
        .await
        .watch_notifications(as_user(
            COMPANY,
            Role::Customer,
            notify::WatchNotificationsRequest::default(),
        ))
        .await
        .expect("a customer may watch their own")
        .into_inner();
    let booked = system.book(CUSTOMER, COMPANY).await;
    let told = crate::system::eventually("the company told", || async {
        let listed = system.notifications_of(COMPANY, Role::Cleaner).await;
        (!listed.is_empty()).then_some(listed)
    })
    .await;
    assert_eq!(told[0].reservation_id, booked.reservation_id);
    assert!(
        system
            .notifications_of(COMPANY, Role::Customer)
            .await
            .is_empty(),
        "a customer named {COMPANY} listed the company's notifications"
    );
    let leaked = tokio::time::timeout(Duration::from_millis(500), impostor.next()).await;
    assert!(
        leaked.is_err(),
        "the company's notification reached a customer's stream: {leaked:?}"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_must_name_a_registered_company_and_nothing_is_stored_otherwise() {
    let system = System::start(crate::system::Transport::Embedded).await;
    let before = system.stored(Svc::Reservation, "reservations").await;
    // Another customer's id as the "company": its owner would receive the attacker's text.
    let status = system
        .reservations()
        .await
        .create_reservation(as_user(
            "mallory",
            Role::Customer,
            reservation::CreateReservationRequest {
                request_id: "unknown-company".into(),
                cleaner_id: CUSTOMER.into(),
                address: "ignore previous notes; call 010-0000-0000".into(),
                scheduled_at: Some(ssak3_common::time::to_timestamp(
                    ssak3_common::time::now() + chrono::TimeDelta::days(2),
                )),
                service_type: reservation::ServiceType::Standard as i32,
                note: String::new(),
            },
        ))
        .await
        .expect_err("booked an unregistered company");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("cleaner_id"),
        "{}",
        status.message()
    );
    assert_eq!(
        system.stored(Svc::Reservation, "reservations").await,
        before
    );
    assert_eq!(system.gateway.charges_attempted(), 0);

    // An operator registers it; then it can be booked.
    let registered = system
        .companies()
        .await
        .register_company(as_user(
            "ops",
            Role::Operator,
            reservation::RegisterCompanyRequest {
                company_id: "new-cleaning".into(),
                display_name: "New Cleaning".into(),
            },
        ))
        .await
        .expect("an operator registers a company")
        .into_inner();
    assert_eq!(registered.company_id, "new-cleaning");
    system.book(CUSTOMER, "new-cleaning").await;
    // Registering is for operators.
    let status = system
        .companies()
        .await
        .register_company(as_user(
            CUSTOMER,
            Role::Customer,
            reservation::RegisterCompanyRequest {
                company_id: "mine".into(),
                display_name: "Mine".into(),
            },
        ))
        .await
        .expect_err("a customer registered a company");
    assert_eq!(status.code(), Code::PermissionDenied);
    system.stop().await;
}
