//! The whole story F1–F8 through the public gRPC APIs, over RabbitMQ and
//! PostgreSQL and over the in-process bus with SQLite.

use ssak3_common::auth::Role;
use ssak3_proto::{
    mypage::v1 as mypage,
    mypage::v1::ReservationStatus,
    notify::v1::{self as notify, NotificationKind},
    reservation::v1::{self as reservation, ReservationState},
};
use tokio_stream::StreamExt as _;

use crate::system::{COMPANY, CUSTOMER, System, Transport, as_user, eventually};

fn statuses(view: &mypage::ReservationView) -> Vec<ReservationStatus> {
    view.history
        .iter()
        .map(mypage::StatusChange::status)
        .collect()
}

/// Book → company notified with the details → my page PAID → company
/// completes → customer notified (live and listed) → my page CLEANED.
async fn book_and_clean(transport: Transport) {
    let system = System::start(transport).await;
    // F1: book and pay in one call.
    let booked = system.book(CUSTOMER, COMPANY).await;
    let id = booked.reservation_id.clone();

    // F4: the company is told, with payment and reservation details.
    let approved = eventually("the company's payment notification", || async {
        system
            .notifications_of(COMPANY, Role::Cleaner)
            .await
            .into_iter()
            .find(|n| n.reservation_id == id)
    })
    .await;
    assert_eq!(approved.kind, NotificationKind::PaymentApproved as i32);
    assert_eq!(approved.recipient_id, COMPANY);
    for detail in [
        id.as_str(),
        "12 Gangnam-daero, Seoul",
        "50000 KRW",
        CUSTOMER,
        &booked.payment_id,
    ] {
        assert!(
            approved.message.contains(detail),
            "{detail:?} missing from {:?}",
            approved.message
        );
    }

    // F5: the customer sees it as PAID.
    let paid = eventually("my page to show PAID", || async {
        system
            .view(CUSTOMER, Role::Customer, &id)
            .await
            .filter(|v| v.status() == ReservationStatus::Paid)
    })
    .await;
    assert_eq!(paid.price.as_ref().map(|p| p.units), Some(50_000));
    assert_eq!(paid.cleaner_id, COMPANY);
    assert_eq!(paid.address, "12 Gangnam-daero, Seoul");

    // The company sees the job in its list and completes it (F2).
    let jobs = system
        .cleaning()
        .await
        .list_jobs(as_user(
            COMPANY,
            Role::Cleaner,
            reservation::ListJobsRequest::default(),
        ))
        .await
        .expect("listing jobs")
        .into_inner()
        .jobs;
    assert!(jobs.iter().any(|job| job.reservation_id == id));

    let mut page_watch = system
        .mypage()
        .await
        .watch_my_reservations(as_user(
            CUSTOMER,
            Role::Customer,
            mypage::WatchMyReservationsRequest::default(),
        ))
        .await
        .expect("watch my reservations")
        .into_inner();
    let mut watch = system
        .notifications()
        .await
        .watch_notifications(as_user(
            CUSTOMER,
            Role::Customer,
            notify::WatchNotificationsRequest::default(),
        ))
        .await
        .expect("watch notifications")
        .into_inner();
    let cleaned = system
        .cleaning()
        .await
        .complete_cleaning(as_user(
            COMPANY,
            Role::Cleaner,
            reservation::CompleteCleaningRequest {
                reservation_id: id.clone(),
            },
        ))
        .await
        .expect("completing the job")
        .into_inner();
    assert_eq!(cleaned.state, ReservationState::Cleaned as i32);

    // F3: the customer is told, live on the watch stream and in the list.
    let live = tokio::time::timeout(std::time::Duration::from_secs(30), watch.next())
        .await
        .expect("no live notification")
        .expect("watch ended")
        .expect("a notification, not an error");
    assert_eq!(live.kind, NotificationKind::CleaningCompleted as i32);
    assert_eq!(live.reservation_id, id);
    let listed = system.notifications_of(CUSTOMER, Role::Customer).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].notification_id, live.notification_id);

    // F5: the customer's page shows CLEANED with the whole history; the
    // company's page shows the same job.
    let view = eventually("my page to show CLEANED", || async {
        system
            .view(CUSTOMER, Role::Customer, &id)
            .await
            .filter(|v| v.status() == ReservationStatus::Cleaned)
    })
    .await;
    assert_eq!(
        statuses(&view),
        [ReservationStatus::Paid, ReservationStatus::Cleaned]
    );
    let streamed = tokio::time::timeout(std::time::Duration::from_secs(30), page_watch.next())
        .await
        .expect("no live view")
        .expect("watch ended")
        .expect("a view, not an error");
    assert_eq!(streamed, view);
    assert_eq!(system.view(COMPANY, Role::Cleaner, &id).await, Some(view));

    // Each notification went out through the webhook exactly once.
    let delivered = eventually("webhook deliveries", || async {
        let delivered = system.webhook.delivered_for(&id);
        (delivered.len() >= 2).then_some(delivered)
    })
    .await;
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    system.stop().await;
}

/// Book → cancel → payment refunded → company notified → my page REFUNDED.
async fn book_and_cancel(transport: Transport) {
    let system = System::start(transport).await;
    let booked = system.book(CUSTOMER, COMPANY).await;
    let id = booked.reservation_id.clone();
    assert_eq!(system.gateway.net_charged_units(), 50_000);

    // F6: the customer cancels.
    let cancelled = system
        .reservations()
        .await
        .cancel_reservation(as_user(
            CUSTOMER,
            Role::Customer,
            reservation::CancelReservationRequest {
                reservation_id: id.clone(),
            },
        ))
        .await
        .expect("cancelling")
        .into_inner();
    assert_eq!(cancelled.state, ReservationState::Cancelled as i32);

    // F7: the payment is cancelled and the money returned.
    eventually("the refund", || async {
        (system.gateway.net_charged_units() == 0).then_some(())
    })
    .await;

    // F8: the company is told of the cancellation.
    let notices = eventually("the company's cancellation notice", || async {
        let notices: Vec<_> = system
            .notifications_of(COMPANY, Role::Cleaner)
            .await
            .into_iter()
            .filter(|n| n.reservation_id == id)
            .collect();
        (notices.len() >= 2).then_some(notices)
    })
    .await;
    // Newest first.
    let kinds: Vec<i32> = notices.iter().map(|n| n.kind).collect();
    assert_eq!(
        kinds,
        [
            NotificationKind::PaymentCancelled as i32,
            NotificationKind::PaymentApproved as i32
        ]
    );
    assert!(
        notices[0].message.contains("50000 KRW refunded"),
        "{:?}",
        notices[0]
    );

    // F5: my page shows the refund.
    let view = eventually("my page to show REFUNDED", || async {
        system
            .view(CUSTOMER, Role::Customer, &id)
            .await
            .filter(|v| v.status() == ReservationStatus::Refunded)
    })
    .await;
    assert_eq!(
        statuses(&view),
        [
            ReservationStatus::Paid,
            ReservationStatus::Cancelled,
            ReservationStatus::Refunded
        ]
    );

    // Cancelling again changes nothing and says so plainly.
    let again = system
        .reservations()
        .await
        .cancel_reservation(as_user(
            CUSTOMER,
            Role::Customer,
            reservation::CancelReservationRequest {
                reservation_id: id.clone(),
            },
        ))
        .await
        .expect("cancelling")
        .into_inner();
    assert_eq!(again.state, ReservationState::Cancelled as i32);
    assert_eq!(system.gateway.net_charged_units(), 0);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booking_to_cleaning_over_rabbitmq_and_postgres() {
    book_and_clean(Transport::Rabbit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booking_to_refund_over_rabbitmq_and_postgres() {
    book_and_cancel(Transport::Rabbit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booking_to_cleaning_on_the_embedded_bus() {
    book_and_clean(Transport::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booking_to_refund_on_the_embedded_bus() {
    book_and_cancel(Transport::Embedded).await;
}
