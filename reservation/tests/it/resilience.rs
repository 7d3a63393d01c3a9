//! N1 and N3 under faults: payment stopped, hung, recovering; unknown outcomes settle.

use std::{sync::atomic::Ordering, time::Duration};

use ssak3_common::{auth::Role, config::GatewayConfig};
use ssak3_proto::{payment::v1 as payment_pb, reservation::v1 as pb};
use tonic::Code;
use tower_resilience_circuitbreaker::CircuitState;

use crate::support::{
    Backend, Mesh, Options, TestResult, as_caller, booking, eventually, retry_delay,
};

#[tokio::test]
async fn payment_down_answers_unavailable_with_retry_info_and_establishes_nothing() -> TestResult {
    let mut options = Options::new(Backend::Sqlite);
    options.reconcile.pending_timeout_ms = 300;
    let mut mesh = Mesh::start(options).await;
    mesh.stop_payment().await;

    let status = mesh
        .reservations()
        .await
        .create_reservation(as_caller(booking("req-1"), "alice", Role::Customer))
        .await
        .err()
        .unwrap_or_else(|| panic!("booking succeeded with payment down"));
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("pay again shortly"),
        "{}",
        status.message()
    );
    assert!(retry_delay(&status).is_some(), "RetryInfo detail missing");

    // Not established now, and rejected once the pending timeout passes.
    let stored = mesh.stored("alice", "req-1").await;
    assert!(stored.is_none_or(|r| !r.is_established()));
    eventually(
        Duration::from_secs(10),
        "the abandoned booking is rejected",
        || async {
            mesh.stored("alice", "req-1")
                .await
                .is_some_and(|r| r.state.as_str() == "REJECTED")
        },
    )
    .await;
    assert_eq!(mesh.stored_in_state("CONFIRMED").await, 0);
    assert_eq!(mesh.gateway.net_charged_units(), 0);
    Ok(())
}

#[tokio::test]
async fn a_hung_payment_trips_the_breaker_and_is_then_left_alone_until_it_recovers() -> TestResult {
    let mesh = Mesh::start(Options::new(Backend::Sqlite).with_breaker(200, 4, 1_500)).await;
    mesh.gateway.set_behaviour(GatewayConfig {
        latency_ms: 60_000,
        ..GatewayConfig::default()
    });
    let mut client = mesh.reservations().await;

    for n in 0..4 {
        let call = client.create_reservation(as_caller(
            booking(&format!("hung-{n}")),
            "alice",
            Role::Customer,
        ));
        // Returns at the deadline rather than waiting for the hung payment.
        let status = tokio::time::timeout(Duration::from_secs(10), call)
            .await?
            .err()
            .unwrap_or_else(|| panic!("booking succeeded with payment hung"));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(retry_delay(&status).is_some());
    }
    assert_eq!(
        mesh.payment_client.breaker().breaker_state(),
        CircuitState::Open
    );
    // Let the timed-out requests that are still on the wire land, then count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reached = mesh.payment_calls.approve_payment.load(Ordering::SeqCst);
    assert!(reached <= 4, "{reached} calls for 4 bookings");

    for n in 0..20 {
        let status = client
            .create_reservation(as_caller(
                booking(&format!("open-{n}")),
                "alice",
                Role::Customer,
            ))
            .await
            .err()
            .unwrap_or_else(|| panic!("booking succeeded with the breaker open"));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(retry_delay(&status).is_some());
    }
    assert_eq!(
        mesh.payment_calls.approve_payment.load(Ordering::SeqCst),
        reached,
        "calls reached payment while the breaker was open"
    );
    assert!(
        mesh.stored("alice", "open-0").await.is_none(),
        "nothing stored while open"
    );

    // Payment recovers: after the open period a probe goes through and closes the breaker.
    mesh.gateway.set_behaviour(GatewayConfig::default());
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let probe = client
        .create_reservation(as_caller(booking("probe"), "alice", Role::Customer))
        .await?
        .into_inner();
    assert_eq!(probe.state(), pb::ReservationState::Confirmed);
    assert_eq!(
        mesh.payment_client.breaker().breaker_state(),
        CircuitState::Closed
    );
    assert_eq!(
        mesh.payment_client
            .breaker()
            .transitions()
            .opened
            .load(Ordering::SeqCst),
        1
    );
    Ok(())
}

/// Payment approves after the reservation service stopped waiting for it.
async fn late_approval(
    options: Options,
    request: pb::CreateReservationRequest,
) -> (Mesh, tonic::Status) {
    let mesh = Mesh::start(options.with_breaker(200, 50, 60_000)).await;
    mesh.gateway.set_behaviour(GatewayConfig {
        latency_ms: 600,
        ..GatewayConfig::default()
    });
    let status = mesh
        .reservations()
        .await
        .create_reservation(as_caller(request, "alice", Role::Customer))
        .await
        .err()
        .unwrap_or_else(|| panic!("booking succeeded past the deadline"));
    // Payment finishes the charge although nobody waits for the answer.
    eventually(Duration::from_secs(10), "payment approves", || async {
        mesh.gateway.approved_charges() == 1
    })
    .await;
    mesh.gateway.set_behaviour(GatewayConfig::default());
    (mesh, status)
}

#[tokio::test]
async fn a_lost_approval_is_compensated_when_the_customer_does_not_retry() -> TestResult {
    let mut options = Options::new(Backend::Postgres);
    options.reconcile.pending_timeout_ms = 1_000;
    let (mesh, status) = late_approval(options, booking("late")).await;
    assert_eq!(status.code(), Code::Unavailable);

    eventually(
        Duration::from_secs(15),
        "the booking is rejected and its payment cancelled",
        || async {
            let rejected = mesh
                .stored("alice", "late")
                .await
                .is_some_and(|r| r.state.as_str() == "REJECTED");
            let id = mesh
                .stored("alice", "late")
                .await
                .map(|r| r.reservation_id.as_str().to_owned());
            let cancelled = match id {
                Some(id) => mesh
                    .payment_of(&id)
                    .await
                    .is_ok_and(|p| p.state() == payment_pb::PaymentState::Cancelled),
                None => false,
            };
            rejected && cancelled
        },
    )
    .await;
    assert_eq!(
        mesh.gateway.net_charged_units(),
        0,
        "the late charge was refunded"
    );
    assert_eq!(mesh.stored_in_state("CONFIRMED").await, 0);
    Ok(())
}

#[tokio::test]
async fn a_lost_approval_is_confirmed_when_the_customer_retries() -> TestResult {
    let request = booking("late");
    let (mesh, status) = late_approval(Options::new(Backend::Sqlite), request.clone()).await;
    assert_eq!(status.code(), Code::Unavailable);
    let retried = mesh
        .reservations()
        .await
        .create_reservation(as_caller(request, "alice", Role::Customer))
        .await?
        .into_inner();
    assert_eq!(retried.state(), pb::ReservationState::Confirmed);
    let payment = mesh.payment_of(&retried.reservation_id).await?;
    assert_eq!(payment.state(), payment_pb::PaymentState::Approved);
    assert_eq!(payment.payment_id, retried.payment_id);
    assert_eq!(mesh.gateway.approved_charges(), 1);
    Ok(())
}

#[tokio::test]
async fn a_cancellation_that_overtakes_the_charge_leaves_nothing_charged() -> TestResult {
    let mesh = Mesh::start(Options::new(Backend::Sqlite)).await;
    let mut payments = mesh.payments().await;
    let cancel = payment_pb::CancelPaymentRequest {
        reservation_id: "r-early".into(),
        reason: "abandoned".into(),
    };
    let cancelled = payments
        .cancel_payment(as_caller(cancel, "reservation", Role::Service))
        .await?
        .into_inner();
    assert_eq!(cancelled.state(), payment_pb::PaymentState::Cancelled);

    let late = payment_pb::ApprovePaymentRequest {
        reservation_id: "r-early".into(),
        amount: Some(payment_pb::Money {
            currency_code: "KRW".into(),
            units: 50_000,
        }),
        customer_id: "alice".into(),
        cleaner_id: "acme-cleaning".into(),
        address: "12 Gangnam-daero".into(),
        scheduled_at: booking("x").scheduled_at,
    };
    let answer = payments
        .approve_payment(as_caller(late, "reservation", Role::Service))
        .await?
        .into_inner();
    assert_eq!(answer.state(), payment_pb::PaymentState::Cancelled);
    assert_eq!(mesh.gateway.approved_charges(), 0);
    Ok(())
}
