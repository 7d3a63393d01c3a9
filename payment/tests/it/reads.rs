//! Who reads which payment.

use ssak3_common::{
    auth::Role,
    test_support::{as_service, as_user},
};
use ssak3_proto::payment::v1::{self as pb, get_payment_request::Lookup};
use tonic::Code;

use crate::support::{Payment, TestResult, order};

fn by_payment(id: &str) -> pb::GetPaymentRequest {
    pb::GetPaymentRequest {
        lookup: Some(Lookup::PaymentId(id.into())),
    }
}

fn by_reservation(id: &str) -> pb::GetPaymentRequest {
    pb::GetPaymentRequest {
        lookup: Some(Lookup::ReservationId(id.into())),
    }
}

#[tokio::test]
async fn the_paying_customer_and_services_read_a_payment_nobody_else_does() -> TestResult {
    let payment = Payment::sqlite().await;
    let paid = payment.approve(order("r-1", "alice", 50_000)).await?;
    let mut client = payment.client().await;

    let own = client
        .get_payment(as_user(
            "alice",
            Role::Customer,
            by_payment(&paid.payment_id),
        ))
        .await?
        .into_inner();
    assert_eq!(own.state(), pb::PaymentState::Approved);
    let service = client
        .get_payment(as_service("payment", by_reservation("r-1")))
        .await?
        .into_inner();
    assert_eq!(service.payment_id, paid.payment_id);

    let company = client
        .get_payment(as_user(
            "acme-cleaning",
            Role::Cleaner,
            by_reservation("r-1"),
        ))
        .await
        .map_err(|s| s.code());
    assert_eq!(company.err(), Some(Code::PermissionDenied));
    Ok(())
}

#[tokio::test]
async fn another_customers_payment_and_a_missing_one_look_the_same() -> TestResult {
    let payment = Payment::sqlite().await;
    let paid = payment.approve(order("r-1", "alice", 50_000)).await?;
    let client = payment.client().await;
    let answer = |request: pb::GetPaymentRequest| {
        let mut client = client.clone();
        async move {
            let status = client
                .get_payment(as_user("mallory", Role::Customer, request))
                .await
                .expect_err("mallory read a payment");
            (status.code(), status.message().to_owned())
        }
    };
    let others = answer(by_payment(&paid.payment_id)).await;
    let missing = answer(by_payment("no-such-payment")).await;
    let others_by_reservation = answer(by_reservation("r-1")).await;
    let missing_by_reservation = answer(by_reservation("r-404")).await;
    assert_eq!(others.0, Code::NotFound);
    assert_eq!(others, missing);
    assert_eq!(others, others_by_reservation);
    assert_eq!(others, missing_by_reservation);
    Ok(())
}
