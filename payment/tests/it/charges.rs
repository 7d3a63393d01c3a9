//! Charging once per reservation, cancelling before, during or after a charge.

use std::time::Duration;

use ssak3_common::{
    auth::Role,
    test_support::{TestDb, as_user},
};
use ssak3_payment::Settings;
use ssak3_proto::{
    payment::{internal::v1 as internal, v1 as pb},
    r#type::v1::Money,
};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::support::{Payment, TestResult, gateway_down, order};

#[tokio::test]
async fn an_order_is_charged_once_however_often_it_is_asked() -> TestResult {
    let payment = Payment::start(TestDb::postgres(), Settings::default()).await;
    let first = payment.approve(order("r-1", "alice", 50_000)).await?;
    let again = payment.approve(order("r-1", "alice", 50_000)).await?;
    assert_eq!(first.state(), pb::PaymentState::Approved);
    assert_eq!(first.payment_id, again.payment_id);
    assert_eq!(payment.gateway.approved_charges(), 1);
    assert_eq!(
        payment.gateway.charges_attempted(),
        1,
        "the retry found the payment"
    );

    let dearer = payment.approve(order("r-1", "alice", 90_000)).await;
    assert_eq!(
        dearer.map_err(|s| s.code()).err(),
        Some(Code::AlreadyExists)
    );
    let other_payer = payment.approve(order("r-1", "mallory", 50_000)).await;
    assert_eq!(
        other_payer.map_err(|s| s.code()).err(),
        Some(Code::AlreadyExists)
    );
    assert_eq!(payment.gateway.net_charged_units(), 50_000);
    Ok(())
}

#[tokio::test]
async fn a_cancellation_refunds_once_and_can_be_repeated() -> TestResult {
    let payment = Payment::sqlite().await;
    payment.approve(order("r-1", "alice", 50_000)).await?;
    let cancelled = payment.cancel("r-1").await?;
    let again = payment.cancel("r-1").await?;
    assert_eq!(cancelled.state(), pb::PaymentState::Cancelled);
    assert_eq!(again.state(), pb::PaymentState::Cancelled);
    assert_eq!(payment.gateway.net_charged_units(), 0);
    Ok(())
}

#[tokio::test]
async fn a_cancellation_that_overtakes_the_charge_leaves_nothing_charged() -> TestResult {
    let payment = Payment::sqlite().await;
    let cancelled = payment.cancel("r-early").await?;
    assert_eq!(cancelled.state(), pb::PaymentState::Cancelled);
    assert_eq!(cancelled.amount, None, "nothing was ordered yet");

    let late = payment.approve(order("r-early", "alice", 50_000)).await?;
    assert_eq!(late.state(), pb::PaymentState::Cancelled);
    assert_eq!(payment.gateway.charges_attempted(), 0);
    assert_eq!(payment.gateway.approved_charges(), 0);
    Ok(())
}

#[tokio::test]
async fn a_declined_charge_is_final_and_cancelling_it_changes_nothing() -> TestResult {
    let mut settings = Settings::default();
    settings.gateway.decline_customers = vec!["mallory".into()];
    let payment = Payment::start(TestDb::sqlite(), settings).await;
    let declined = payment.approve(order("r-1", "mallory", 50_000)).await?;
    assert_eq!(declined.state(), pb::PaymentState::Declined);
    assert!(!declined.decline_reason.is_empty());
    assert_eq!(
        payment.cancel("r-1").await?.state(),
        pb::PaymentState::Declined
    );
    assert_eq!(payment.gateway.net_charged_units(), 0);
    Ok(())
}

#[tokio::test]
async fn a_gateway_outage_is_unavailable_with_the_configured_retry_delay() -> TestResult {
    let payment = Payment::start(TestDb::sqlite(), gateway_down(1_234)).await;
    let status = payment
        .approve(order("r-1", "alice", 50_000))
        .await
        .expect_err("charged with the gateway down");
    assert_eq!(status.code(), Code::Unavailable);
    let delay = status.get_details_retry_info().and_then(|r| r.retry_delay);
    assert_eq!(delay, Some(Duration::from_millis(1_234)));
    assert!(
        !status.message().contains("outage"),
        "the gateway's own words stay in the log: {}",
        status.message()
    );
    Ok(())
}

/// The service-only calls, and ApprovePayment kept (deprecated) in the
/// public service, refuse customers and companies.
#[tokio::test]
#[allow(deprecated)]
async fn only_services_may_charge_or_refund() -> TestResult {
    let payment = Payment::sqlite().await;
    let mut public = payment.client().await;
    let mut client = payment.internal_client().await;
    for role in [Role::Customer, Role::Cleaner] {
        let charge = client
            .approve_payment(as_user("alice", role, order("r-1", "alice", 1)))
            .await
            .map_err(|s| s.code());
        assert_eq!(charge.err(), Some(Code::PermissionDenied), "{role}");
        let charge = public
            .approve_payment(as_user("alice", role, order("r-1", "alice", 1)))
            .await
            .map_err(|s| s.code());
        assert_eq!(charge.err(), Some(Code::PermissionDenied), "{role}");
        let refund = client
            .cancel_payment(as_user(
                "alice",
                role,
                internal::CancelPaymentRequest {
                    reservation_id: "r-1".into(),
                    reason: String::new(),
                },
            ))
            .await
            .map_err(|s| s.code());
        assert_eq!(refund.err(), Some(Code::PermissionDenied), "{role}");
    }
    assert_eq!(payment.gateway.charges_attempted(), 0);
    Ok(())
}

#[tokio::test]
async fn invalid_orders_name_the_field_and_store_nothing() -> TestResult {
    let payment = Payment::sqlite().await;
    let cases: Vec<(&str, pb::ApprovePaymentRequest)> = vec![
        ("reservation_id", order("", "alice", 1)),
        ("reservation_id", order("r 1", "alice", 1)),
        ("customer_id", order("r-1", "alice ", 1)),
        ("amount", order("r-1", "alice", 0)),
        (
            "amount",
            pb::ApprovePaymentRequest {
                amount: Some(Money {
                    currency_code: "krw".into(),
                    units: 1,
                }),
                ..order("r-1", "alice", 1)
            },
        ),
        (
            "cleaner_id",
            pb::ApprovePaymentRequest {
                cleaner_id: "x".repeat(65),
                ..order("r-1", "alice", 1)
            },
        ),
        (
            "address",
            pb::ApprovePaymentRequest {
                address: "line\nbreak".into(),
                ..order("r-1", "alice", 1)
            },
        ),
    ];
    for (field, request) in cases {
        let status = payment
            .approve(request)
            .await
            .expect_err("accepted an invalid order");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        let violations = status.get_details_bad_request().map(|b| b.field_violations);
        assert_eq!(
            violations
                .and_then(|v| v.first().map(|v| v.field.clone()))
                .as_deref(),
            Some(field)
        );
    }
    assert_eq!(payment.gateway.charges_attempted(), 0);
    Ok(())
}
