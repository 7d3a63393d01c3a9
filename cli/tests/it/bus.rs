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
    cancelled_at(reservation_id, 3)
}

fn cancelled_at(reservation_id: &str, version: i64) -> Message {
    let event = new_event(
        reservation_id,
        version,
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

/// Holds the first event of reservation `first` until an event of
/// `second` has begun (or a while has passed); records the versions of
/// `first`'s events in the order their handling ended.
struct Rendezvous {
    first: String,
    second: String,
    begun: Mutex<Vec<String>>,
    arrived: tokio::sync::Notify,
    met: Mutex<Option<bool>>,
    ended: Mutex<Vec<i64>>,
}

impl Rendezvous {
    fn new(first: &str, second: &str) -> Self {
        Self {
            first: first.into(),
            second: second.into(),
            begun: Mutex::default(),
            arrived: tokio::sync::Notify::new(),
            met: Mutex::default(),
            ended: Mutex::default(),
        }
    }

    fn has_begun(&self, reservation_id: &str) -> bool {
        let begun = self.begun.lock().unwrap_or_else(|e| e.into_inner());
        begun.iter().any(|id| id == reservation_id)
    }
}

impl Handler for Rendezvous {
    fn handle(&self, event: Event) -> HandlerFuture<'_> {
        Box::pin(async move {
            self.begun
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(event.reservation_id.clone());
            self.arrived.notify_waiters();
            if event.reservation_id == self.first {
                let mut met = self.met.lock().unwrap_or_else(|e| e.into_inner()).is_some();
                if !met {
                    let meeting = async {
                        loop {
                            let arrival = self.arrived.notified();
                            if self.has_begun(&self.second) {
                                return;
                            }
                            arrival.await;
                        }
                    };
                    met = tokio::time::timeout(std::time::Duration::from_secs(3), meeting)
                        .await
                        .is_ok();
                    *self.met.lock().unwrap_or_else(|e| e.into_inner()) = Some(met);
                }
                // Later versions take less time: handled side by side, they
                // would end out of order.
                let version = u64::try_from(event.version).unwrap_or(0);
                tokio::time::sleep(std::time::Duration::from_millis(20 - version.min(20))).await;
                self.ended
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(event.version);
            }
            Ok(())
        })
    }
}

/// Two reservations whose events fall in different lanes.
fn in_different_lanes() -> (String, String) {
    let lanes = ssak3_common::test_support::events_config("lanes").lanes;
    let lane = |id: &str| ssak3_common::events::consumer::lane_of(id, lanes);
    let first = "r-first".to_owned();
    let second = (0..)
        .map(|n| format!("r-second-{n}"))
        .find(|id| lane(id) != lane(&first))
        .expect("another lane");
    (first, second)
}

/// A consumer handles different reservations' events side by side (a slow
/// event does not hold up the queue, nor what arrives after it) and one
/// reservation's events in turn, in the order they were published.
async fn reservations_are_handled_side_by_side_each_in_turn(bus: Bus) {
    let (first, second) = in_different_lanes();
    let handler = Arc::new(Rendezvous::new(&first, &second));
    let metrics = Arc::new(ssak3_common::metrics::Metrics::new());
    let (stop_tx, stop) = watch::channel(false);
    let consumer = tokio::spawn({
        let bus = bus.clone();
        let handler: Arc<dyn Handler> = handler.clone();
        async move { bus.consume("payment", handler, metrics, stop).await }
    });
    let messages: Vec<Message> = (1..=8).map(|v| cancelled_at(&first, v)).collect();
    bus.publish(&messages).await.expect("publish");
    // The second reservation's event comes once the first's is in hand: a
    // consumer that fetched them together, or waited for one fetch to be
    // done before the next, would not hand it over until the first's ended.
    eventually("the first reservation's first event", || async {
        handler.has_begun(&first).then_some(())
    })
    .await;
    bus.publish(&[cancelled_at(&second, 1)])
        .await
        .expect("publish");

    eventually("every event of the first reservation", || async {
        let ended = handler.ended.lock().unwrap_or_else(|e| e.into_inner());
        (ended.len() == 8).then_some(())
    })
    .await;
    let met = *handler.met.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(
        met,
        Some(true),
        "the second reservation's event, published later, began while the first's first waited"
    );
    let ended = handler
        .ended
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert_eq!(
        ended,
        (1..=8).collect::<Vec<_>>(),
        "one reservation in turn"
    );
    let _ = stop_tx.send(true);
    consumer.await.expect("the consumer task");
}

#[tokio::test]
async fn reservations_are_handled_side_by_side_each_in_turn_on_rabbitmq() {
    let _shared = crate::system::BROKER.read().await;
    let broker = TestBroker::new(crate::system::topology());
    reservations_are_handled_side_by_side_each_in_turn(broker.bus("test")).await;
}

#[tokio::test]
async fn reservations_are_handled_side_by_side_each_in_turn_on_the_embedded_bus() {
    let embedded = TestEmbeddedBus::new(crate::system::topology()).await;
    reservations_are_handled_side_by_side_each_in_turn(embedded.bus.clone()).await;
}

/// Stopping does not wait for a settlement that cannot be made (the disk
/// full, say): what is left unsettled is delivered again after the restart.
#[tokio::test]
async fn a_consumer_whose_settlements_fail_still_stops_on_the_embedded_bus() -> anyhow::Result<()> {
    use diesel::{RunQueryDsl as _, sql_query};
    use ssak3_common::db::{Database, DatabaseUrl};

    let embedded = TestEmbeddedBus::new(crate::system::topology()).await;
    let file = DatabaseUrl::Sqlite(embedded.dir.path().join("events.db"));
    Database::connect(&file, 1)?
        .write(|c| {
            sql_query(
                "CREATE TRIGGER settling_fails BEFORE DELETE ON bus_messages \
                 BEGIN SELECT RAISE(ABORT, 'the disk is full'); END",
            )
            .execute(c)
        })
        .await?;
    let handler = Arc::new(Flaky::default());
    let metrics = Arc::new(ssak3_common::metrics::Metrics::new());
    let (stop_tx, stop) = watch::channel(false);
    let bus = embedded.bus.clone();
    let consumer = tokio::spawn({
        let (bus, handler): (Bus, Arc<dyn Handler>) = (bus.clone(), handler.clone());
        async move { bus.consume("payment", handler, metrics, stop).await }
    });
    bus.publish(&[cancelled("good")]).await?;
    eventually("the event handled", || async {
        (handler.deliveries("good") == 1).then_some(())
    })
    .await;
    stop_tx.send(true)?;
    tokio::time::timeout(std::time::Duration::from_secs(10), consumer)
        .await
        .expect("the consumer stops though its settlement fails")?;
    assert_eq!(
        bus.queue_depth("payment").await?,
        1,
        "still there to deliver again"
    );
    Ok(())
}

/// A consumer whose owner is gone without telling it to stop (its stop
/// signal's sender dropped) ends, rather than spinning on a signal that
/// can no longer come.
async fn a_consumer_whose_stop_signal_is_gone_ends(bus: Bus) {
    let handler = Arc::new(Flaky::default());
    let metrics = Arc::new(ssak3_common::metrics::Metrics::new());
    let (stop_tx, stop) = watch::channel(false);
    let consumer = tokio::spawn({
        let (bus, handler): (Bus, Arc<dyn Handler>) = (bus.clone(), handler.clone());
        async move { bus.consume("payment", handler, metrics, stop).await }
    });
    bus.publish(&[cancelled("good")]).await.expect("publish");
    eventually("the event handled", || async {
        (handler.deliveries("good") == 1).then_some(())
    })
    .await;
    drop(stop_tx);
    tokio::time::timeout(std::time::Duration::from_secs(10), consumer)
        .await
        .expect("the consumer ends when its stop signal is gone")
        .expect("the consumer task");
}

#[tokio::test]
async fn a_consumer_whose_stop_signal_is_gone_ends_on_rabbitmq() {
    let _shared = crate::system::BROKER.read().await;
    let broker = TestBroker::new(crate::system::topology());
    a_consumer_whose_stop_signal_is_gone_ends(broker.bus("test")).await;
}

#[tokio::test]
async fn a_consumer_whose_stop_signal_is_gone_ends_on_the_embedded_bus() {
    let embedded = TestEmbeddedBus::new(crate::system::topology()).await;
    a_consumer_whose_stop_signal_is_gone_ends(embedded.bus.clone()).await;
}
