//! Delivery under faults, and the transitions the system refuses.

use std::collections::HashSet;

use prost::Message as _;
use ssak3_common::{
    auth::Role,
    events::{Bus, Message, new_event},
};
use ssak3_proto::{
    events::v1::{self as ev, event::Payload},
    mypage::v1::ReservationStatus,
    reservation::v1 as reservation,
};

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
            .filter(|v| v.status() == ReservationStatus::Paid)
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
        .expect("rabbitmqctl must be available");
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
        2,
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
        trace_context: Default::default(),
    };
    let bus = system.bus("test");
    for _ in 0..3 {
        bus.publish(std::slice::from_ref(&message))
            .await
            .expect("publish");
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
        .expect("view gone");
    assert_eq!(view.history.len(), 2, "{view:?}");
    let notices = system.notifications_of(COMPANY, Role::Cleaner).await;
    assert_eq!(notices.len(), 2, "{notices:?}");
    system.stop().await;
}

async fn poison_goes_to_the_dead_letter_queue(transport: Transport) {
    let system = System::start(transport).await;
    let bus = system.bus("test");
    let garbage = b"\xff\xfenot an event";
    ssak3_common::test_support::publish_raw(&bus, "payment.approved", garbage).await;

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
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("local addr")
    };
    let broker = system.broker.as_ref().unwrap_or_else(|| unreachable!());
    let cut_off = Bus::Amqp(ssak3_common::events::amqp::AmqpBus::new(
        &format!("amqp://guest:guest@{nowhere}/%2f"),
        &broker.config,
        "reservation",
        crate::system::topology(),
    ));
    system.start_service_with(Svc::Reservation, cut_off).await;
    let cancelled = cancel(&system, CUSTOMER, &id).await.expect("cancel");
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
            .filter(|v| v.status() == ReservationStatus::Refunded)
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
            .filter(|v| v.status() == ReservationStatus::Paid)
    })
    .await;
    system.stop().await;
}
