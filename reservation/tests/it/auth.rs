//! Who may call what: tokens, roles and ownership.

use ssak3_common::{
    auth::{
        Role,
        signing::{Signer, TokenSpec, now_secs},
    },
    test_support,
};
use ssak3_proto::reservation::v1 as pb;
use tonic::{Code, Request};

use crate::support::{Backend, Mesh, Options, TestResult, as_user, booking, with_token};

#[tokio::test]
async fn tokens_and_roles_are_enforced() -> TestResult {
    let mesh = Mesh::start(Options::new(Backend::Sqlite)).await;
    let mut client = mesh.reservations().await;
    let code = |result: Result<tonic::Response<pb::Reservation>, tonic::Status>| {
        result.err().map(|s| s.code())
    };

    let no_token = client.create_reservation(Request::new(booking("a"))).await;
    assert_eq!(code(no_token), Some(Code::Unauthenticated));

    let forged = Signer::from_pem(&Signer::generate_pem()?, "test-idp-")?.issue(
        "ssak3",
        None,
        "alice",
        Role::Customer,
        std::time::Duration::from_secs(60),
    )?;
    let bad_signature = client
        .create_reservation(with_token(booking("b"), &forged))
        .await;
    assert_eq!(code(bad_signature), Some(Code::Unauthenticated));

    let then = now_secs()? - 7_200;
    let expired = test_support::keys().issuer.issue_claims(&TokenSpec {
        issuer: "ssak3",
        subject: "alice",
        role: Role::Customer,
        audience: None,
        issued_at: then,
        not_before: then,
        expires_at: then + 60,
    })?;
    let expired = client
        .create_reservation(with_token(booking("c"), &expired))
        .await;
    assert_eq!(code(expired), Some(Code::Unauthenticated));

    let cleaner = client
        .create_reservation(as_user("acme-cleaning", Role::Cleaner, booking("d")))
        .await;
    assert_eq!(code(cleaner), Some(Code::PermissionDenied));
    assert_eq!(mesh.stored_count().await, 0, "rejected calls store nothing");

    let alices = client
        .create_reservation(as_user("alice", Role::Customer, booking("e")))
        .await?
        .into_inner();
    let get = |who: &str, role: Role| {
        as_user(
            who,
            role,
            pb::GetReservationRequest {
                reservation_id: alices.reservation_id.clone(),
            },
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
