//! Delivery under faults, and the transitions the system refuses.

use std::collections::HashSet;

use prost::Message as _;
use ssak3_common::{
    auth::Role,
    events::{Bus, Message, new_event},
};
use ssak3_proto::{
    events::v1::{self as ev, event::Payload},
    reservation::v1 as reservation,
};
use tonic::Code;

use crate::system::{COMPANY, CUSTOMER, Svc, System, Transport, as_user, eventually};

async fn cancel(
    system: &System,
    customer: &str,
    id: &str,
) -> Result<reservation::Reservation, tonic::Status> {
    system
        .reservations()
        .await
        .cancel_reservation(as_user(
            customer,
            Role::Customer,
            reservation::CancelReservationRequest {
                reservation_id: id.into(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn complete(
    system: &System,
    company: &str,
    id: &str,
) -> Result<reservation::Reservation, tonic::Status> {
    system
        .cleaning()
        .await
        .complete_cleaning(as_user(
            company,
            Role::Cleaner,
            reservation::CompleteCleaningRequest {
                reservation_id: id.into(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// The status of a call that must fail.
fn refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> tonic::Status {
    match result {
        Ok(value) => panic!("the call should have been refused, got {value:?}"),
        Err(status) => status,
    }
}

/// Waits until `n` bookings of the company are notified and on my page.
async fn settled(system: &System, ids: &[String]) {
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    eventually("every booking notified and on my page", || async {
        let notified: HashSet<String> = system
            .notifications_of(COMPANY, Role::Cleaner)
            .await
            .into_iter()
            .map(|n| n.reservation_id)
            .collect();
        let shown: HashSet<String> = system
            .views_of(CUSTOMER, Role::Customer)
            .await
            .into_iter()
            .filter(|v| v.status == "PAID")
            .map(|v| v.reservation_id)
            .collect();
        wanted
            .iter()
            .all(|id| notified.contains(*id) && shown.contains(*id))
            .then_some(())
    })
    .await;
}

/// Every notification of the company exactly once, in the store and at the webhook.
async fn assert_notified_once(system: &System, ids: &[String]) {
    let stored = system.notifications_of(COMPANY, Role::Cleaner).await;
    assert_eq!(stored.len(), ids.len(), "one notification per booking");
    let reservations: HashSet<&str> = stored.iter().map(|n| n.reservation_id.as_str()).collect();
    assert_eq!(reservations.len(), ids.len());
    let delivered = eventually("every webhook delivery", || async {
        let delivered = system.webhook.delivered();
        (delivered.len() >= ids.len()).then_some(delivered)
    })
    .await;
    let distinct: HashSet<&String> = delivered.iter().collect();
    assert_eq!(delivered.len(), ids.len(), "a notification went out twice");
    assert_eq!(distinct.len(), ids.len());
    let views = system.views_of(CUSTOMER, Role::Customer).await;
    assert_eq!(views.len(), ids.len());
    assert!(views.iter().all(|v| v.history.len() == 1), "{views:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_down_while_bookings_continue_catches_up_exactly_once() {
    let mut system = System::start(Transport::Rabbit).await;
    let mut ids = vec![system.book(CUSTOMER, COMPANY).await.reservation_id];
    settled(&system, &ids).await;

    system.stop_service(Svc::Notify).await;
    for _ in 0..5 {
        ids.push(system.book(CUSTOMER, COMPANY).await.reservation_id);
    }
    system.start_service(Svc::Notify).await;

    settled(&system, &ids).await;
    assert_notified_once(&system, &ids).await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connections_closed_mid_stream_recover_with_nothing_lost_or_doubled() {
    let system = System::start(Transport::Rabbit).await;
    let broker = system.broker.as_ref().unwrap_or_else(|| unreachable!());
    let mut ids = Vec::new();
    for round in 0..3 {
        for _ in 0..4 {
            ids.push(system.book(CUSTOMER, COMPANY).await.reservation_id);
        }
        // Publisher and consumers of all four services lose their connections.
        let closed = broker.close_connections();
        assert!(
            closed >= 3,
            "round {round}: closed only {closed} connections"
        );
    }
    settled(&system, &ids).await;
    assert_notified_once(&system, &ids).await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing_and_doubles_nothing() {
    let system = System::start_with_broker_to_itself().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(system.book(CUSTOMER, COMPANY).await.reservation_id);
    }
    let stopped = BrokerStopped::stop();
    // Bookings go on while the broker is away; their events wait in the outbox.
    for _ in 0..3 {
        ids.push(system.book(CUSTOMER, COMPANY).await.reservation_id);
    }
    drop(stopped);
    settled(&system, &ids).await;
    assert_notified_once(&system, &ids).await;
    system.stop().await;
}

/// The local broker stopped (its node keeps running); started again when
/// dropped, also when the test fails half-way.
struct BrokerStopped;

impl BrokerStopped {
    fn stop() -> Self {
        rabbitmqctl(&["stop_app"]);
        Self
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    }
}

/// Runs `rabbitmqctl` on the local broker; the test fails if it does.
fn rabbitmqctl(args: &[&str]) {
    let output = std::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("rabbitmqctl must be available: {e}"));
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_changes_nothing() {
    let system = System::start(Transport::Rabbit).await;
    let id = system.book(CUSTOMER, COMPANY).await.reservation_id;
    settled(&system, std::slice::from_ref(&id)).await;

    // The same payment.approved again, as a broker redelivery would bring it.
    let approved = new_event(
        &id,
        Payload::PaymentApproved(ev::PaymentApproved {
            payment_id: "p-duplicate".into(),
            reservation_id: id.clone(),
            customer_id: CUSTOMER.into(),
            cleaner_id: COMPANY.into(),
            address: "elsewhere".into(),
            scheduled_at: None,
            amount: None,
        }),
    );
    let message = Message {
        event_id: approved.event_id.clone(),
        routing_key: approved.event_type.clone(),
        payload: approved.encode_to_vec(),
        traceparent: None,
    };
    let bus = system.bus("test");
    for _ in 0..3 {
        bus.publish(std::slice::from_ref(&message))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // The first copy is a new event (a second approval); the other two must be no-ops.
    eventually("the new event to be applied", || async {
        system
            .view(CUSTOMER, Role::Customer, &id)
            .await
            .filter(|v| v.history.len() == 2)
    })
    .await;
    // The duplicates are acknowledged as no-ops: not applied, not retried
    // into the dead-letter queue. (Without the inbox, the unique keys would
    // refuse them and they would end up dead-lettered.)
    let Bus::Amqp(amqp) = &bus else {
        unreachable!()
    };
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    for service in ["notify", "mypage"] {
        assert_eq!(amqp.queue_depth(service).await.ok(), Some(0), "{service}");
        assert_eq!(
            amqp.dead_letter_count(service).await.ok(),
            Some(0),
            "{service}"
        );
    }
    let view = system
        .view(CUSTOMER, Role::Customer, &id)
        .await
        .unwrap_or_else(|| panic!("view gone"));
    assert_eq!(view.history.len(), 2, "{view:?}");
    let notices = system.notifications_of(COMPANY, Role::Cleaner).await;
    assert_eq!(notices.len(), 2, "{notices:?}");
    system.stop().await;
}

async fn poison_goes_to_the_dead_letter_queue(transport: Transport) {
    let system = System::start(transport).await;
    let bus = system.bus("test");
    let garbage = b"\xff\xfenot an event";
    bus.publish_raw("payment.approved", garbage)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));

    for service in ["notify", "mypage"] {
        eventually("the poison in the dead-letter queue", || async {
            let dead = bus.dead_letter_count(service).await.ok()?;
            (dead == 1).then_some(())
        })
        .await;
    }
    // The consumers kept going.
    let id = system.book(CUSTOMER, COMPANY).await.reservation_id;
    settled(&system, &[id]).await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_is_dead_lettered_and_the_next_event_processed_on_rabbitmq() {
    poison_goes_to_the_dead_letter_queue(Transport::Rabbit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_is_dead_lettered_and_the_next_event_processed_on_the_embedded_bus() {
    poison_goes_to_the_dead_letter_queue(Transport::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_while_the_relay_cannot_publish_goes_out_after_a_restart() {
    let mut system = System::start(Transport::Rabbit).await;
    let id = system.book(CUSTOMER, COMPANY).await.reservation_id;
    settled(&system, std::slice::from_ref(&id)).await;

    // Reservation restarted with a broker address where nothing listens: the
    // cancellation commits with its event, which cannot leave.
    system.stop_service(Svc::Reservation).await;
    let nowhere = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    };
    let broker = system.broker.as_ref().unwrap_or_else(|| unreachable!());
    let cut_off = Bus::Amqp(ssak3_common::events::amqp::AmqpBus::new(
        &format!("amqp://guest:guest@{nowhere}/%2f"),
        &broker.config,
        "reservation",
    ));
    system.start_service_with(Svc::Reservation, cut_off).await;
    let cancelled = cancel(&system, CUSTOMER, &id)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(
        cancelled.state,
        reservation::ReservationState::Cancelled as i32
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        system.gateway.net_charged_units(),
        50_000,
        "nothing can have been refunded"
    );

    // The relay dies with the process; the restarted one publishes the row.
    system.stop_service(Svc::Reservation).await;
    system.start_service(Svc::Reservation).await;
    eventually("the refund after the restart", || async {
        (system.gateway.net_charged_units() == 0).then_some(())
    })
    .await;
    eventually("my page to show REFUNDED", || async {
        system
            .view(CUSTOMER, Role::Customer, &id)
            .await
            .filter(|v| v.status == "REFUNDED")
    })
    .await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconsumed_event_on_the_embedded_bus_survives_a_restart() {
    let mut system = System::start(Transport::Embedded).await;
    system.stop_service(Svc::Mypage).await;
    let id = system.book(CUSTOMER, COMPANY).await.reservation_id;
    // Everything stops; the bus is reopened from its file, as after a crash.
    for svc in [Svc::Reservation, Svc::Payment, Svc::Notify] {
        system.stop_service(svc).await;
    }
    system.reopen_embedded_bus().await;
    system.start_service(Svc::Mypage).await;
    eventually("my page to catch up after the restart", || async {
        system
            .view(CUSTOMER, Role::Customer, &id)
            .await
            .filter(|v| v.status == "PAID")
    })
    .await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn illegal_transitions_are_refused_with_the_right_code() {
    let system = System::start(Transport::Embedded).await;
    let cleaned = system.book(CUSTOMER, COMPANY).await.reservation_id;
    let cancelled = system.book(CUSTOMER, COMPANY).await.reservation_id;

    // Another company cannot complete, nor another customer cancel.
    let other_company = complete(&system, "other-co", &cleaned).await;
    assert_eq!(refused(other_company).code(), Code::NotFound);
    let other_customer = cancel(&system, "mallory", &cleaned).await;
    assert_eq!(refused(other_customer).code(), Code::NotFound);

    complete(&system, COMPANY, &cleaned)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    cancel(&system, CUSTOMER, &cancelled)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));

    let status = refused(cancel(&system, CUSTOMER, &cleaned).await);
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("is CLEANED"),
        "{}",
        status.message()
    );
    let status = refused(complete(&system, COMPANY, &cancelled).await);
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("is CANCELLED"),
        "{}",
        status.message()
    );

    // Roles: a customer cannot complete; a cleaner cannot cancel.
    let status = refused(
        system
            .cleaning()
            .await
            .complete_cleaning(as_user(
                CUSTOMER,
                Role::Customer,
                reservation::CompleteCleaningRequest {
                    reservation_id: cleaned.clone(),
                },
            ))
            .await,
    );
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = refused(
        system
            .reservations()
            .await
            .cancel_reservation(as_user(
                COMPANY,
                Role::Cleaner,
                reservation::CancelReservationRequest {
                    reservation_id: cancelled.clone(),
                },
            ))
            .await,
    );
    assert_eq!(status.code(), Code::PermissionDenied);

    // Notifications and pages belong to people: a service token reads neither.
    let status = refused(
        system
            .notifications()
            .await
            .list_notifications(as_user(
                "reservation",
                Role::Service,
                ssak3_proto::notify::v1::ListNotificationsRequest::default(),
            ))
            .await,
    );
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = refused(
        system
            .mypage()
            .await
            .list_my_reservations(as_user(
                "reservation",
                Role::Service,
                ssak3_proto::mypage::v1::ListMyReservationsRequest::default(),
            ))
            .await,
    );
    assert_eq!(status.code(), Code::PermissionDenied);

    // A malformed id names the field.
    let status = refused(cancel(&system, CUSTOMER, "").await);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("reservation_id"),
        "{}",
        status.message()
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_paged_and_only_the_company_s_own() {
    let system = System::start(Transport::Embedded).await;
    let mut mine = Vec::new();
    for _ in 0..5 {
        mine.push(system.book(CUSTOMER, COMPANY).await.reservation_id);
    }
    system.book(CUSTOMER, "other-co").await;

    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = system
            .cleaning()
            .await
            .list_jobs(as_user(
                COMPANY,
                Role::Cleaner,
                reservation::ListJobsRequest {
                    page_size: 2,
                    page_token,
                },
            ))
            .await
            .unwrap_or_else(|s| panic!("{s:?}"))
            .into_inner();
        pages += 1;
        assert!(page.jobs.len() <= 2);
        seen.extend(page.jobs.into_iter().map(|j| j.reservation_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    let mut expected = mine.clone();
    expected.sort();
    seen.sort();
    assert_eq!(seen, expected);

    let status = refused(
        system
            .cleaning()
            .await
            .list_jobs(as_user(
                COMPANY,
                Role::Cleaner,
                reservation::ListJobsRequest {
                    page_size: 2,
                    page_token: "not-a-token".into(),
                },
            ))
            .await,
    );
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("page_token"),
        "{}",
        status.message()
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_is_retried_until_delivered_once() {
    let system = System::start(Transport::Embedded).await;
    system.webhook.fail_next(3);
    let id = system.book(CUSTOMER, COMPANY).await.reservation_id;
    let delivered = eventually("the webhook delivery", || async {
        let delivered = system.webhook.delivered_for(&id);
        (!delivered.is_empty()).then_some(delivered)
    })
    .await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        system.webhook.requests(),
        4,
        "three failures, then the delivery"
    );
    assert_eq!(delivered[0]["kind"], "PAYMENT_APPROVED");
    system.stop().await;
}
