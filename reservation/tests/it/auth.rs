//! Who may call what: tokens, roles and ownership.

use ssak3_common::{
    auth::{JwtKeys, Role},
    test_support,
};
use ssak3_proto::{payment::v1 as payment_pb, reservation::v1 as pb};
use tonic::{Code, Request};

use crate::support::{Backend, Mesh, Options, TestResult, as_caller, booking, with_token};

#[tokio::test]
async fn tokens_and_roles_are_enforced() -> TestResult {
    let mesh = Mesh::start(Options::new(Backend::Sqlite)).await;
    let mut client = mesh.reservations().await;
    let code = |result: Result<tonic::Response<pb::Reservation>, tonic::Status>| {
        result.err().map(|s| s.code())
    };

    let no_token = client.create_reservation(Request::new(booking("a"))).await;
    assert_eq!(code(no_token), Some(Code::Unauthenticated));

    let forged = JwtKeys::new(b"not-the-key").issue(
        "alice",
        Role::Customer,
        std::time::Duration::from_secs(60),
    )?;
    let bad_signature = client
        .create_reservation(with_token(booking("b"), &forged))
        .await;
    assert_eq!(code(bad_signature), Some(Code::Unauthenticated));

    let expired =
        test_support::keys().issue_at("alice", Role::Customer, 1_000_000_000, 1_000_000_060)?;
    let expired = client
        .create_reservation(with_token(booking("c"), &expired))
        .await;
    assert_eq!(code(expired), Some(Code::Unauthenticated));

    let cleaner = client
        .create_reservation(as_caller(booking("d"), "acme-cleaning", Role::Cleaner))
        .await;
    assert_eq!(code(cleaner), Some(Code::PermissionDenied));
    assert_eq!(mesh.stored_count().await, 0, "rejected calls store nothing");

    let alices = client
        .create_reservation(as_caller(booking("e"), "alice", Role::Customer))
        .await?
        .into_inner();
    let get = |who: &str, role: Role| {
        as_caller(
            pb::GetReservationRequest {
                reservation_id: alices.reservation_id.clone(),
            },
            who,
            role,
        )
    };
    assert_eq!(
        code(client.get_reservation(get("bob", Role::Customer)).await),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(
            client
                .get_reservation(get("acme-cleaning", Role::Cleaner))
                .await
        ),
        Some(Code::PermissionDenied)
    );
    assert!(
        client
            .get_reservation(get("alice", Role::Customer))
            .await
            .is_ok()
    );
    Ok(())
}

#[tokio::test]
async fn only_services_may_charge() -> TestResult {
    let mesh = Mesh::start(Options::new(Backend::Sqlite)).await;
    let request = payment_pb::ApprovePaymentRequest {
        reservation_id: "r-1".into(),
        amount: Some(payment_pb::Money {
            currency_code: "KRW".into(),
            units: 1,
        }),
        customer_id: "alice".into(),
        cleaner_id: "acme-cleaning".into(),
        address: "x".into(),
        scheduled_at: booking("x").scheduled_at,
    };
    let status = mesh
        .payments()
        .await
        .approve_payment(as_caller(request, "alice", Role::Customer))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(status, Some(Code::PermissionDenied));
    assert_eq!(mesh.gateway.approved_charges(), 0);
    Ok(())
}
