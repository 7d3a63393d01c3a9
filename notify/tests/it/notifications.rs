//! Events become one notification each, for the party they concern.

use std::time::Duration;

use ssak3_common::{
    auth::Role,
    test_support::{as_user, eventually},
};
use ssak3_proto::notify::v1::{self as pb, NotificationKind};
use tokio_stream::StreamExt as _;

use crate::support::{COMPANY, CUSTOMER, Notify, TestResult, approved, completed};

#[tokio::test]
async fn payments_are_told_to_the_company_completions_to_the_customer() -> TestResult {
    let notify = Notify::start(3).await;
    notify.publish(&approved("r-1", CUSTOMER, COMPANY)).await;
    notify.publish(&completed("r-1", CUSTOMER, COMPANY)).await;

    let company = eventually("the company's notification", || async {
        Some(notify.list(COMPANY, Role::Cleaner).await).filter(|n| !n.is_empty())
    })
    .await;
    assert_eq!(company.len(), 1);
    assert_eq!(company[0].kind(), NotificationKind::PaymentApproved);
    assert!(
        company[0]
            .message
            .contains("90000 KRW paid by customer alice"),
        "{}",
        company[0].message
    );
    let customer = eventually("the customer's notification", || async {
        Some(notify.list(CUSTOMER, Role::Customer).await).filter(|n| !n.is_empty())
    })
    .await;
    assert_eq!(customer.len(), 1);
    assert_eq!(customer[0].kind(), NotificationKind::CleaningCompleted);
    assert_eq!(customer[0].reservation_id, "r-1");
    Ok(())
}

#[tokio::test]
async fn an_event_delivered_twice_makes_one_notification() -> TestResult {
    let notify = Notify::start(3).await;
    let event = approved("r-1", CUSTOMER, COMPANY);
    notify.publish(&event).await;
    notify.publish(&event).await;
    notify.publish(&approved("r-2", CUSTOMER, COMPANY)).await;
    let listed = eventually("both bookings told", || async {
        Some(notify.list(COMPANY, Role::Cleaner).await).filter(|n| n.len() >= 2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        notify.list(COMPANY, Role::Cleaner).await.len(),
        2,
        "{listed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_watcher_sees_its_own_new_notifications_live() -> TestResult {
    let notify = Notify::start(3).await;
    let mut watch = notify
        .client()
        .await
        .watch_notifications(as_user(
            COMPANY,
            Role::Cleaner,
            pb::WatchNotificationsRequest::default(),
        ))
        .await?
        .into_inner();
    notify
        .publish(&approved("r-other", CUSTOMER, "other-cleaning"))
        .await;
    notify.publish(&approved("r-1", CUSTOMER, COMPANY)).await;
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await?
        .expect("the stream stays open")?;
    assert_eq!(
        first.reservation_id, "r-1",
        "another company's notification reached the stream"
    );
    assert_eq!(first.recipient_id, COMPANY);
    Ok(())
}

#[tokio::test]
async fn operators_have_no_notifications() -> TestResult {
    let notify = Notify::start(3).await;
    let status = notify
        .client()
        .await
        .list_notifications(as_user(
            "ops",
            Role::Operator,
            pb::ListNotificationsRequest::default(),
        ))
        .await
        .expect_err("an operator listed notifications");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    Ok(())
}

#[tokio::test]
async fn an_event_without_a_valid_recipient_is_dead_lettered() -> TestResult {
    let notify = Notify::start(3).await;
    notify.publish(&approved("r-1", CUSTOMER, "")).await;
    notify.publish(&approved("r-2", CUSTOMER, COMPANY)).await;
    eventually("the bad event dead-lettered", || async {
        (notify.bus.dead_letter_count("notify").await.ok()? == 1).then_some(())
    })
    .await;
    let listed = eventually("the next event handled", || async {
        Some(notify.list(COMPANY, Role::Cleaner).await).filter(|n| !n.is_empty())
    })
    .await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].reservation_id, "r-2");
    Ok(())
}
