//! What the API promises partners beyond single calls: the documented order
//! of every list, kept across pages, and watches that resume with nothing
//! missed and nothing repeated.

use std::time::Duration;

use ssak3_common::{
    auth::Role,
    db::{Database, DatabaseUrl},
    time,
};
use ssak3_proto::{
    mypage::v1::{self as mypage, ReservationStatus},
    notify::v1::{self as notify, watch_notifications_request::ResumePoint},
    reservation::v1 as reservation,
};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Code, Status};

use crate::system::{COMPANY, CUSTOMER, Svc, System, Transport, as_user, eventually};

/// Books for `customer` with COMPANY, `days` ahead.
async fn book_in(system: &System, customer: &str, days: i64) -> reservation::Reservation {
    system
        .reservations()
        .await
        .create_reservation(as_user(
            customer,
            Role::Customer,
            reservation::CreateReservationRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                cleaner_id: COMPANY.into(),
                address: "12 Gangnam-daero, Seoul".into(),
                scheduled_at: Some(time::to_timestamp(
                    time::now() + chrono::TimeDelta::days(days),
                )),
                service_type: reservation::ServiceType::Standard as i32,
                note: String::new(),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner()
}

fn micros(ts: Option<&prost_types::Timestamp>) -> i64 {
    ts.and_then(time::from_timestamp)
        .map_or_else(|| panic!("no timestamp"), |at| at.timestamp_micros())
}

/// The next item of a watch (fails the test after 30 s).
async fn next<T>(stream: &mut (impl Stream<Item = Result<T, Status>> + Unpin)) -> T {
    tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .unwrap_or_else(|_| panic!("nothing arrived on the watch"))
        .unwrap_or_else(|| panic!("the watch ended"))
        .unwrap_or_else(|s| panic!("{s:?}"))
}

/// Nothing more arrives on a watch for a while.
async fn quiet<T: std::fmt::Debug>(stream: &mut (impl Stream<Item = Result<T, Status>> + Unpin)) {
    let more = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
    assert!(more.is_err(), "unexpected {more:?}");
}

async fn every_list_keeps_its_documented_order_across_pages(transport: Transport) {
    let system = System::start(transport).await;
    // Booked in this order, scheduled in another.
    let mut booked = Vec::new();
    for days in [3, 1, 2, 5, 4] {
        booked.push(book_in(&system, CUSTOMER, days).await);
    }
    // Pages of two, so that every list spans three pages.
    let size = 2;

    // ListJobs: soonest scheduled first.
    let mut jobs = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = system
            .cleaning()
            .await
            .list_jobs(as_user(
                COMPANY,
                Role::Cleaner,
                reservation::ListJobsRequest {
                    page_size: size,
                    page_token,
                },
            ))
            .await
            .unwrap_or_else(|s| panic!("{s:?}"))
            .into_inner();
        assert!(page.jobs.len() <= 2);
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let mut by_schedule = booked.clone();
    by_schedule.sort_by_key(|r| micros(r.scheduled_at.as_ref()));
    let ids = |list: &[reservation::Reservation]| {
        list.iter()
            .map(|r| r.reservation_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&jobs), ids(&by_schedule));

    // ListMyReservations: newest booking first.
    let views = eventually("five views", || async {
        let mut views = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = system
                .mypage()
                .await
                .list_my_reservations(as_user(
                    CUSTOMER,
                    Role::Customer,
                    mypage::ListMyReservationsRequest {
                        page_size: size,
                        page_token,
                    },
                ))
                .await
                .ok()?
                .into_inner();
            views.extend(page.reservations);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        (views.len() == 5).then_some(views)
    })
    .await;
    let newest_first: Vec<String> = ids(&booked).into_iter().rev().collect();
    let listed: Vec<String> = views.iter().map(|v| v.reservation_id.clone()).collect();
    assert_eq!(listed, newest_first);

    // ListNotifications: newest first, by create_time, across pages.
    let notices = eventually("five notifications", || async {
        let mut notices = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = system
                .notifications()
                .await
                .list_notifications(as_user(
                    COMPANY,
                    Role::Cleaner,
                    notify::ListNotificationsRequest {
                        page_size: size,
                        page_token,
                    },
                ))
                .await
                .ok()?
                .into_inner();
            notices.extend(page.notifications);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        (notices.len() == 5).then_some(notices)
    })
    .await;
    let times: Vec<i64> = notices
        .iter()
        .map(|n| micros(n.create_time.as_ref()))
        .collect();
    assert!(
        times.windows(2).all(|pair| pair[0] > pair[1]),
        "not newest first: {times:?}"
    );
    let mut about: Vec<String> = notices.iter().map(|n| n.reservation_id.clone()).collect();
    about.sort();
    let mut expected = ids(&booked);
    expected.sort();
    assert_eq!(about, expected);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_keep_their_order_on_the_embedded_bus() {
    every_list_keeps_its_documented_order_across_pages(Transport::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_keep_their_order_over_rabbitmq_and_postgres() {
    every_list_keeps_its_documented_order_across_pages(Transport::Rabbit).await;
}

/// The company's notifications, newest first, once there are `count`.
async fn company_notices(system: &System, count: usize) -> Vec<notify::Notification> {
    eventually(&format!("{count} notifications"), || async {
        let notices = system.notifications_of(COMPANY, Role::Cleaner).await;
        (notices.len() >= count).then_some(notices)
    })
    .await
}

async fn watch_notifications(
    system: &System,
    subject: &str,
    role: Role,
    resume_point: Option<ResumePoint>,
) -> Result<tonic::Streaming<notify::Notification>, Status> {
    system
        .notifications()
        .await
        .watch_notifications(as_user(
            subject,
            role,
            notify::WatchNotificationsRequest { resume_point },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn a_notification_watch_resumes_without_gap_or_duplicate(transport: Transport) {
    let system = System::start(transport).await;
    book_in(&system, CUSTOMER, 1).await;
    book_in(&system, CUSTOMER, 2).await;
    let listed = company_notices(&system, 2).await;
    let oldest = &listed[1];

    // Resume after the older one: the newer one is replayed, then live.
    let after = Some(ResumePoint::AfterNotificationId(
        oldest.notification_id.clone(),
    ));
    let mut watch = watch_notifications(&system, COMPANY, Role::Cleaner, after)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let replayed = next(&mut watch).await;
    assert_eq!(replayed, listed[0]);
    let third = book_in(&system, CUSTOMER, 3).await;
    let live = next(&mut watch).await;
    assert_eq!(live.reservation_id, third.reservation_id);
    quiet(&mut watch).await;
    drop(watch);

    // Two more while nobody watches; resume after the last one received.
    let fourth = book_in(&system, CUSTOMER, 4).await;
    let fifth = book_in(&system, CUSTOMER, 5).await;
    company_notices(&system, 5).await;
    let after = Some(ResumePoint::AfterNotificationId(
        live.notification_id.clone(),
    ));
    let mut watch = watch_notifications(&system, COMPANY, Role::Cleaner, after)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let mut missed = vec![
        next(&mut watch).await.reservation_id,
        next(&mut watch).await.reservation_id,
    ];
    missed.sort();
    let mut expected = vec![fourth.reservation_id, fifth.reservation_id];
    expected.sort();
    assert_eq!(missed, expected);
    let sixth = book_in(&system, CUSTOMER, 6).await;
    assert_eq!(next(&mut watch).await.reservation_id, sixth.reservation_id);
    quiet(&mut watch).await;

    // A start time replays from the first notification at or after it.
    let since = Some(ResumePoint::StartTime(
        listed[0].create_time.unwrap_or_default(),
    ));
    let mut watch = watch_notifications(&system, COMPANY, Role::Cleaner, since)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(next(&mut watch).await, listed[0]);
    for _ in 0..4 {
        next(&mut watch).await;
    }
    quiet(&mut watch).await;

    // Another recipient's notification is not a resume point; garbage is refused.
    let theirs = Some(ResumePoint::AfterNotificationId(
        oldest.notification_id.clone(),
    ));
    let refused = watch_notifications(&system, CUSTOMER, Role::Customer, theirs).await;
    assert_eq!(refused.err().map(|s| s.code()), Some(Code::NotFound));
    let garbage = Some(ResumePoint::AfterNotificationId("x".repeat(65)));
    let refused = watch_notifications(&system, COMPANY, Role::Cleaner, garbage).await;
    assert_eq!(refused.err().map(|s| s.code()), Some(Code::InvalidArgument));
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_watches_resume_on_the_embedded_bus() {
    a_notification_watch_resumes_without_gap_or_duplicate(Transport::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_watches_resume_over_rabbitmq_and_postgres() {
    a_notification_watch_resumes_without_gap_or_duplicate(Transport::Rabbit).await;
}

async fn watch_pages(
    system: &System,
    after_update_time: Option<prost_types::Timestamp>,
) -> tonic::Streaming<mypage::ReservationView> {
    system
        .mypage()
        .await
        .watch_my_reservations(as_user(
            CUSTOMER,
            Role::Customer,
            mypage::WatchMyReservationsRequest { after_update_time },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner()
}

async fn view_with(
    system: &System,
    id: &str,
    status: ReservationStatus,
) -> mypage::ReservationView {
    eventually("the view", || async {
        system
            .view(CUSTOMER, Role::Customer, id)
            .await
            .filter(|v| v.status() == status)
    })
    .await
}

async fn a_page_watch_resumes_without_gap_or_duplicate(transport: Transport) {
    let system = System::start(transport).await;
    let first = book_in(&system, CUSTOMER, 1).await;
    let paid = view_with(&system, &first.reservation_id, ReservationStatus::Paid).await;

    // From the last view seen: nothing to replay, then live.
    let mut watch = watch_pages(&system, paid.update_time).await;
    quiet(&mut watch).await;
    let second = book_in(&system, CUSTOMER, 2).await;
    let live = next(&mut watch).await;
    assert_eq!(live.reservation_id, second.reservation_id);
    assert!(micros(live.update_time.as_ref()) > micros(paid.update_time.as_ref()));
    quiet(&mut watch).await;
    drop(watch);

    // Changes while nobody watches come back, in order, each once.
    system
        .reservations()
        .await
        .cancel_reservation(as_user(
            CUSTOMER,
            Role::Customer,
            reservation::CancelReservationRequest {
                reservation_id: first.reservation_id.clone(),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let third = book_in(&system, CUSTOMER, 3).await;
    let refunded = view_with(&system, &first.reservation_id, ReservationStatus::Refunded).await;
    let third_paid = view_with(&system, &third.reservation_id, ReservationStatus::Paid).await;
    let mut watch = watch_pages(&system, live.update_time).await;
    let mut replayed = vec![next(&mut watch).await, next(&mut watch).await];
    quiet(&mut watch).await;
    let times: Vec<i64> = replayed
        .iter()
        .map(|v| micros(v.update_time.as_ref()))
        .collect();
    assert!(times[0] < times[1], "{times:?}");
    replayed.sort_by(|a, b| a.reservation_id.cmp(&b.reservation_id));
    let mut expected = vec![refunded, third_paid];
    expected.sort_by(|a, b| a.reservation_id.cmp(&b.reservation_id));
    assert_eq!(replayed, expected);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_watches_resume_on_the_embedded_bus() {
    a_page_watch_resumes_without_gap_or_duplicate(Transport::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_watches_resume_over_rabbitmq_and_postgres() {
    a_page_watch_resumes_without_gap_or_duplicate(Transport::Rabbit).await;
}

/// Views that a migration dropped (as the one that made the status an enum
/// did) come back from their events when my page starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn my_page_rebuilds_dropped_views_from_their_events_at_start_up() {
    let mut system = System::start(Transport::Embedded).await;
    let booked = book_in(&system, CUSTOMER, 1).await;
    let before = view_with(&system, &booked.reservation_id, ReservationStatus::Paid).await;
    system.stop_service(Svc::Mypage).await;
    let config = system.config(Svc::Mypage);
    let db = Database::connect(
        &DatabaseUrl::for_service(&config, "mypage").unwrap_or_else(|e| panic!("{e}")),
        1,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    db.write(|c| {
        use diesel::RunQueryDsl as _;
        diesel::sql_query("DELETE FROM reservation_views").execute(c)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    system.start_service(Svc::Mypage).await;
    let after = system
        .view(CUSTOMER, Role::Customer, &booked.reservation_id)
        .await
        .unwrap_or_else(|| panic!("the view was not rebuilt"));
    assert_eq!(after.status(), ReservationStatus::Paid);
    assert_eq!(after.history, before.history);
    assert_eq!(after.price, before.price);
    assert!(micros(after.update_time.as_ref()) > micros(before.update_time.as_ref()));
    system.stop().await;
}
