//! The transports on their own: bounded retries, then the dead-letter queue.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ssak3_common::{
    events::{Bus, Handler, HandlerError, Message, consumer::HandlerFuture, new_event},
    test_support::{TestBroker, TestEmbeddedBus},
};
use ssak3_proto::events::v1::{self as ev, Event, event::Payload};
use tokio::sync::watch;

use crate::system::eventually;

/// Fails every delivery of reservation "bad" as if its database were down;
/// applies the others. Counts the deliveries of each.
#[derive(Default)]
struct Flaky {
    deliveries: Mutex<HashMap<String, u32>>,
}

impl Flaky {
    fn deliveries(&self, reservation_id: &str) -> u32 {
        let seen = self.deliveries.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(reservation_id).copied().unwrap_or(0)
    }
}

impl Handler for Flaky {
    fn handle(&self, event: Event) -> HandlerFuture<'_> {
        Box::pin(async move {
            *self
                .deliveries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(event.reservation_id.clone())
                .or_default() += 1;
            if event.reservation_id == "bad" {
                Err(HandlerError::Retry(anyhow::anyhow!("database unavailable")))
            } else {
                Ok(())
            }
        })
    }
}

fn cancelled(reservation_id: &str) -> Message {
    let event = new_event(
        reservation_id,
        3,
        Payload::ReservationCancelled(ev::ReservationCancelled {
            reservation_id: reservation_id.into(),
            customer_id: "alice".into(),
            cleaner_id: "acme".into(),
            reason: String::new(),
        }),
    );
    Message::from(&event)
}

async fn retries_are_bounded(bus: Bus, max_deliveries: u32) {
    let handler = Arc::new(Flaky::default());
    let metrics = Arc::new(ssak3_common::metrics::Metrics::new());
    let (stop_tx, stop) = watch::channel(false);
    let consumer = tokio::spawn({
        let bus = bus.clone();
        let handler: Arc<dyn Handler> = handler.clone();
        let metrics = metrics.clone();
        async move { bus.consume("payment", handler, metrics, stop).await }
    });
    bus.publish(&[cancelled("bad"), cancelled("good")])
        .await
        .expect("publish");

    eventually("the good event", || async {
        (handler.deliveries("good") == 1).then_some(())
    })
    .await;
    eventually("the bad event to be dead-lettered", || async {
        let dead = bus.dead_letter_count("payment").await.ok()?;
        (dead == 1).then_some(())
    })
    .await;
    assert_eq!(handler.deliveries("bad"), max_deliveries);
    assert_eq!(handler.deliveries("good"), 1);
    // The metrics saw the same: every delivery, the redeliveries, one dead letter.
    let text = metrics.render().await;
    let kind = r#"{event_type="reservation.cancelled"}"#;
    for (name, value) in [
        ("ssak3_events_received_total", max_deliveries + 1),
        ("ssak3_events_redelivered_total", max_deliveries - 1),
        ("ssak3_events_dead_lettered_total", 1),
    ] {
        assert!(
            text.contains(&format!("{name}{kind} {value}\n")),
            "{name} {value}:\n{text}"
        );
    }
    let _ = stop_tx.send(true);
    consumer.await.expect("the consumer task");
}

#[tokio::test]
async fn a_failing_event_is_retried_a_bounded_number_of_times_on_rabbitmq() {
    let _shared = crate::system::BROKER.read().await;
    let broker = TestBroker::new(crate::system::topology());
    retries_are_bounded(broker.bus("test"), broker.config.max_deliveries).await;
}

#[tokio::test]
async fn a_failing_event_is_retried_a_bounded_number_of_times_on_the_embedded_bus() {
    let embedded = TestEmbeddedBus::new(crate::system::topology()).await;
    let max = ssak3_common::test_support::events_config("embedded").max_deliveries;
    retries_are_bounded(embedded.bus.clone(), max).await;
}

/// Broker connections agree on 16 KiB frames (the client buffers 32 frames
/// each way, so the broker's usual 128 KiB would cost 8 MiB per connection);
/// a `frame_max` in the URL still decides.
#[tokio::test]
async fn broker_connections_use_small_frames_unless_the_url_says_otherwise() {
    let _shared = crate::system::BROKER.read().await;
    let broker = TestBroker::new(crate::system::topology());
    let frame_max_of = |role: &str| -> Option<String> {
        let listed = std::process::Command::new("rabbitmqctl")
            .args(["-q", "list_connections", "frame_max", "client_properties"])
            .output()
            .expect("rabbitmqctl must be available");
        let marker = format!("{}/{role}", broker.config.namespace);
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .find(|line| line.contains(&marker))
            .and_then(|line| line.split_whitespace().next().map(str::to_owned))
    };
    let (connection, _channel) = broker
        .amqp("small")
        .connect("frames")
        .await
        .expect("connect");
    assert_eq!(frame_max_of("small/frames").as_deref(), Some("16384"));
    let _ = connection.close(200, "done".into()).await;

    let url = format!("{}?frame_max=65536", ssak3_common::test_support::amqp_url());
    let (connection, _channel) = ssak3_common::events::amqp::AmqpBus::new(
        &url,
        &broker.config,
        "large",
        crate::system::topology(),
    )
    .connect("frames")
    .await
    .expect("connect");
    assert_eq!(frame_max_of("large/frames").as_deref(), Some("65536"));
    let _ = connection.close(200, "done".into()).await;
}
