//! Views built from events, whatever their order, shown to their owners only.

use std::time::Duration;

use ssak3_common::{
    auth::Role,
    test_support::{as_user, eventually},
};
use ssak3_proto::mypage::v1 as pb;
use tokio_stream::StreamExt as _;
use tonic::Code;

use crate::support::{COMPANY, CUSTOMER, MyPage, TestResult, refunded_story};

fn statuses(view: &pb::ReservationView) -> Vec<pb::ReservationStatus> {
    view.history.iter().map(pb::StatusChange::status).collect()
}

#[tokio::test]
async fn events_in_reverse_order_make_the_same_view() -> TestResult {
    let page = MyPage::start().await;
    let mut story = refunded_story("r-1", CUSTOMER, COMPANY);
    story.reverse();
    page.publish(&story).await;
    let view = eventually("the refunded view", || async {
        page.view(CUSTOMER, Role::Customer, "r-1")
            .await
            .ok()
            .filter(|v| v.history.len() == 3)
    })
    .await;
    assert_eq!(view.status(), pb::ReservationStatus::Refunded);
    assert_eq!(
        statuses(&view),
        [
            pb::ReservationStatus::Paid,
            pb::ReservationStatus::Cancelled,
            pb::ReservationStatus::Refunded
        ]
    );
    assert_eq!(view.price.map(|p| p.units), Some(50_000));
    Ok(())
}

#[tokio::test]
async fn a_view_is_its_customers_and_its_companys_and_nobody_elses() -> TestResult {
    let page = MyPage::start().await;
    page.publish(&refunded_story("r-1", CUSTOMER, COMPANY)[..1])
        .await;
    eventually("the view", || async {
        page.view(CUSTOMER, Role::Customer, "r-1").await.ok()
    })
    .await;
    assert!(page.view(COMPANY, Role::Cleaner, "r-1").await.is_ok());
    let other = page.view("mallory", Role::Customer, "r-1").await;
    let missing = page.view("mallory", Role::Customer, "r-404").await;
    assert_eq!(
        other.as_ref().map_err(|s| s.code()).err(),
        Some(Code::NotFound)
    );
    assert_eq!(
        other.map_err(|s| s.code()).err(),
        missing.map_err(|s| s.code()).err()
    );
    let operator = page.view("ops", Role::Operator, "r-1").await;
    assert_eq!(
        operator.map_err(|s| s.code()).err(),
        Some(Code::PermissionDenied)
    );
    Ok(())
}

#[tokio::test]
async fn reservation_ids_obey_the_id_grammar() -> TestResult {
    let page = MyPage::start().await;
    for id in ["", "has space", &"x".repeat(65)] {
        let status = page
            .view(CUSTOMER, Role::Customer, id)
            .await
            .expect_err("accepted an invalid id");
        assert_eq!(status.code(), Code::InvalidArgument, "{id:?}");
        assert!(
            status.message().len() < 200,
            "the id is echoed back: {}",
            status.message()
        );
    }
    Ok(())
}

#[tokio::test]
async fn lists_page_through_the_owners_reservations() -> TestResult {
    let page = MyPage::start().await;
    for n in 0..5 {
        page.publish(&refunded_story(&format!("r-{n}"), CUSTOMER, COMPANY)[..1])
            .await;
    }
    page.publish(&refunded_story("r-other", "bob", COMPANY)[..1])
        .await;
    let mut client = page.client().await;
    eventually("all six views", || async {
        let listed = client
            .clone()
            .list_my_reservations(as_user(
                COMPANY,
                Role::Cleaner,
                pb::ListMyReservationsRequest {
                    page_size: 100,
                    page_token: String::new(),
                },
            ))
            .await
            .ok()?
            .into_inner();
        (listed.reservations.len() == 6).then_some(())
    })
    .await;
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let listed = client
            .list_my_reservations(as_user(
                CUSTOMER,
                Role::Customer,
                pb::ListMyReservationsRequest {
                    page_size: 2,
                    page_token,
                },
            ))
            .await?
            .into_inner();
        assert!(listed.reservations.len() <= 2);
        seen.extend(listed.reservations.into_iter().map(|v| v.reservation_id));
        if listed.next_page_token.is_empty() {
            break;
        }
        page_token = listed.next_page_token;
    }
    seen.sort();
    assert_eq!(seen, ["r-0", "r-1", "r-2", "r-3", "r-4"]);
    Ok(())
}

#[tokio::test]
async fn a_watcher_sees_changes_to_its_own_reservations() -> TestResult {
    let page = MyPage::start().await;
    let mut watch = page
        .client()
        .await
        .watch_my_reservations(as_user(
            CUSTOMER,
            Role::Customer,
            pb::WatchMyReservationsRequest::default(),
        ))
        .await?
        .into_inner();
    page.publish(&refunded_story("r-bob", "bob", COMPANY)[..1])
        .await;
    page.publish(&refunded_story("r-1", CUSTOMER, COMPANY)[..1])
        .await;
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await?
        .expect("the stream stays open")?;
    assert_eq!(
        first.reservation_id, "r-1",
        "someone else's view reached the stream"
    );
    assert_eq!(first.status(), pb::ReservationStatus::Paid);
    Ok(())
}
