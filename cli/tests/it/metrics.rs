//! `/metrics` after a scripted run: every counter moved by exactly what happened.

use ssak3_common::auth::Role;
use ssak3_proto::reservation::v1 as reservation;
use tonic::Code;

use crate::system::{COMPANY, CUSTOMER, Svc, System, Transport, as_user, eventually};

fn assert_has(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "missing `{line}` in:\n{text}"
    );
}

const CREATE: &str = r#"grpc_service="ssak3.reservation.v1.ReservationService",grpc_method="CreateReservation",grpc_type="unary""#;

async fn create(system: &System, address: &str) -> Result<(), tonic::Status> {
    system
        .reservations()
        .await
        .create_reservation(as_user(
            CUSTOMER,
            Role::Customer,
            reservation::CreateReservationRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                cleaner_id: COMPANY.into(),
                address: address.into(),
                scheduled_at: Some(ssak3_common::time::to_timestamp(
                    ssak3_common::time::now() + chrono::TimeDelta::days(2),
                )),
                service_type: reservation::ServiceType::Standard as i32,
                note: String::new(),
            },
        ))
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_exactly_what_happened() {
    let mut system = System::start(Transport::Embedded).await;
    for _ in 0..3 {
        create(&system, "12 Gangnam-daero, Seoul")
            .await
            .expect("create");
    }
    let refused = create(&system, "").await.err().map(|s| s.code());
    assert_eq!(refused, Some(Code::InvalidArgument));
    eventually("three notifications delivered", || async {
        (system.webhook.delivered().len() == 3).then_some(())
    })
    .await;
    eventually("my page to have all three", || async {
        (system.views_of(CUSTOMER, Role::Customer).await.len() == 3).then_some(())
    })
    .await;

    let text = system.metrics(Svc::Reservation).await;
    assert_has(
        &text,
        &format!(r#"grpc_server_handled_total{{{CREATE},grpc_code="OK"}} 3"#),
    );
    assert_has(
        &text,
        &format!(r#"grpc_server_handled_total{{{CREATE},grpc_code="INVALID_ARGUMENT"}} 1"#),
    );
    assert_has(
        &text,
        &format!(r#"grpc_server_handling_seconds_count{{{CREATE}}} 4"#),
    );
    assert_has(&text, "ssak3_payment_breaker_open 0");

    let text = system.metrics(Svc::Payment).await;
    assert_has(
        &text,
        r#"grpc_server_handled_total{grpc_service="ssak3.payment.internal.v1.InternalPaymentService",grpc_method="ApprovePayment",grpc_type="unary",grpc_code="OK"} 3"#,
    );
    assert_has(&text, "ssak3_outbox_published_total 3");
    assert_has(&text, "ssak3_outbox_backlog 0");

    let text = system.metrics(Svc::Notify).await;
    assert_has(
        &text,
        r#"ssak3_events_received_total{event_type="payment.approved"} 3"#,
    );
    assert_has(
        &text,
        r#"ssak3_notification_deliveries_total{outcome="delivered"} 3"#,
    );
    let text = system.metrics(Svc::Mypage).await;
    assert_has(
        &text,
        r#"ssak3_events_received_total{event_type="payment.approved"} 3"#,
    );
    assert!(
        !text.contains("ssak3_events_dead_lettered_total{"),
        "{text}"
    );

    // Each service exports only the series of what it has.
    for (svc, absent) in [
        (
            Svc::Payment,
            &["ssak3_payment_breaker", "ssak3_notification"][..],
        ),
        (Svc::Notify, &["ssak3_payment_breaker", "ssak3_outbox"][..]),
        (
            Svc::Mypage,
            &[
                "ssak3_payment_breaker",
                "ssak3_outbox",
                "ssak3_notification",
            ][..],
        ),
        (Svc::Reservation, &["ssak3_notification"][..]),
    ] {
        let text = system.metrics(svc).await;
        for name in absent {
            assert!(!text.contains(name), "{svc:?} exports {name}:\n{text}");
        }
    }

    // Payment goes away: the breaker opens once, and says so.
    system.stop_service(Svc::Payment).await;
    for _ in 0..20 {
        let outcome = create(&system, "12 Gangnam-daero, Seoul").await;
        assert_eq!(outcome.err().map(|s| s.code()), Some(Code::Unavailable));
    }
    let text = system.metrics(Svc::Reservation).await;
    assert_has(
        &text,
        r#"ssak3_payment_breaker_transitions_total{to="open"} 1"#,
    );
    assert_has(&text, "ssak3_payment_breaker_open 1");
    assert_has(
        &text,
        &format!(r#"grpc_server_handled_total{{{CREATE},grpc_code="UNAVAILABLE"}} 20"#),
    );
    system.stop().await;
}
