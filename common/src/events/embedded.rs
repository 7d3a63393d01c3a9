//! The in-process event bus of the one-process mode, durable in a SQLite
//! file so it keeps RabbitMQ's guarantees without a broker: a publish
//! returns once the event is stored for every subscribing queue, and a
//! message leaves its queue only when the consumer's transaction has
//! committed. A process killed mid-way delivers the rest after it restarts.

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use chrono::NaiveDateTime;
use diesel::prelude::*;
use tokio::sync::{Notify, mpsc, watch};

use ssak3_proto::events::v1::Event;

use super::{
    Message, PublishError, Topology,
    consumer::{self, Consumer, Verdict},
};
use crate::{
    config::EventsConfig,
    db::{Database, DatabaseUrl},
    time,
};

const MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/bus");

diesel::table! {
    bus_messages (id) {
        id -> BigInt,
        queue -> Text,
        event_id -> Text,
        routing_key -> Text,
        payload -> Binary,
        traceparent -> Nullable<Text>,
        deliveries -> Integer,
        available_at -> Timestamp,
        dead_reason -> Nullable<Text>,
    }
}

#[derive(Insertable)]
#[diesel(table_name = bus_messages, treat_none_as_default_value = false)]
struct NewRow<'a> {
    queue: &'a str,
    event_id: &'a str,
    routing_key: &'a str,
    payload: &'a [u8],
    traceparent: Option<String>,
    available_at: NaiveDateTime,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = bus_messages)]
struct Row {
    id: i64,
    payload: Vec<u8>,
    traceparent: Option<String>,
    deliveries: i32,
}

/// How long an idle consumer sleeps when nothing wakes it.
const IDLE: Duration = Duration::from_millis(500);
/// The most messages a consumer holds, whatever its prefetch: a fetch
/// names those in hand, one SQL variable each.
const MOST_IN_HAND: usize = 4096;

/// The messages a consumer has fetched and not yet settled.
#[derive(Debug, Default)]
struct InHand {
    ids: std::sync::Mutex<std::collections::HashSet<i64>>,
    /// Told when messages are settled, so there is room to fetch more.
    freed: Notify,
}

impl InHand {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<i64>> {
        self.ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ids(&self) -> Vec<i64> {
        self.lock().iter().copied().collect()
    }

    fn take(&self, ids: impl IntoIterator<Item = i64>) {
        self.lock().extend(ids);
    }

    fn release(&self, ids: &[i64]) {
        let mut held = self.lock();
        for id in ids {
            held.remove(id);
        }
        drop(held);
        self.freed.notify_one();
    }
}

/// The durable in-process bus. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedBus {
    db: Database,
    config: EventsConfig,
    topology: Topology,
    arrivals: Arc<HashMap<&'static str, Notify>>,
}

impl std::fmt::Debug for EmbeddedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBus").field("db", &self.db).finish()
    }
}

impl EmbeddedBus {
    /// Opens (creating if needed) the bus stored at `path`, with a queue for
    /// each subscription of `topology`.
    pub async fn open(
        path: &Path,
        config: &EventsConfig,
        topology: Topology,
    ) -> anyhow::Result<Self> {
        let db = Database::connect(&DatabaseUrl::Sqlite(path.to_owned()), 4)?;
        db.migrate(crate::db::Schema {
            postgres: &[MIGRATIONS],
            sqlite: &[MIGRATIONS],
        })
        .await?;
        let arrivals = topology
            .subscriptions()
            .iter()
            .map(|s| (s.queue, Notify::new()))
            .collect();
        Ok(Self {
            db,
            config: config.clone(),
            topology,
            arrivals: Arc::new(arrivals),
        })
    }

    /// Stores each message for every queue subscribed to it, in one transaction.
    pub async fn publish(&self, messages: &[Message]) -> Result<(), PublishError> {
        let messages = messages.to_vec();
        let mut touched: Vec<&'static str> = Vec::new();
        for message in &messages {
            touched.extend(self.topology.subscribers(&message.routing_key));
        }
        let topology = self.topology.clone();
        self.db
            .transaction(move |c| {
                let now = time::now().naive_utc();
                for message in &messages {
                    for queue in topology.subscribers(&message.routing_key) {
                        diesel::insert_into(bus_messages::table)
                            .values(NewRow {
                                queue,
                                event_id: &message.event_id,
                                routing_key: &message.routing_key,
                                payload: &message.payload,
                                traceparent: crate::telemetry::encode_carrier(
                                    &message.trace_context,
                                ),
                                available_at: now,
                            })
                            .execute(c)?;
                    }
                }
                Ok(())
            })
            .await
            .map_err(|e| PublishError {
                confirmed: 0,
                source: e.into(),
            })?;
        for queue in touched {
            if let Some(arrival) = self.arrivals.get(queue) {
                arrival.notify_one();
            }
        }
        Ok(())
    }

    /// Hands `service`'s messages to its handler until `stop`.
    ///
    /// Like the broker's consumers, it hands them over in lanes keyed by
    /// reservation: one reservation's events in turn, in the order they
    /// were published (one to be retried comes again later, as on
    /// RabbitMQ), and the lanes side by side, so that a slow event holds up
    /// only its own lane and the handler's writes of several events share
    /// its batches. At most `prefetch` messages are in hand at once; those
    /// handled meanwhile are settled together, in one transaction, and a
    /// crash before that delivers them again, for the handler's inbox to
    /// absorb.
    pub async fn consume(&self, consumer: Consumer, mut stop: watch::Receiver<bool>) {
        let mut failures = 0u32;
        while let Err(error) = self.consume_until_stopped(&consumer, &mut stop).await {
            // A lane or the settler is gone (a bug): start afresh, and what
            // was in hand is fetched again.
            failures += 1;
            tracing::error!(service = consumer.service, %error, "embedded bus consumer restarts");
            tokio::select! {
                _ = tokio::time::sleep(self.config.backoff(failures)) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// [`Self::consume`] until `stop`, or until one of its tasks is gone.
    async fn consume_until_stopped(
        &self,
        consumer: &Consumer,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let service = consumer.service;
        let idle = Notify::new();
        let arrival = self.arrivals.get(service).unwrap_or(&idle);
        let in_hand = Arc::new(InHand::default());
        let (handled, to_settle) = mpsc::unbounded_channel();
        let settling = tokio::spawn(self.clone().settle_all(
            to_settle,
            Arc::clone(&in_hand),
            stop.clone(),
        ));
        let lanes = self.config.lanes.max(1);
        let mut workers = tokio::task::JoinSet::new();
        let senders: Vec<_> = (0..lanes)
            .map(|_| {
                let (lane, mut messages) = mpsc::unbounded_channel::<(Event, Row)>();
                let (bus, consumer, handled, stop) = (
                    self.clone(),
                    consumer.clone(),
                    handled.clone(),
                    stop.clone(),
                );
                workers.spawn(async move {
                    let exchange = super::Names::new(&bus.config).exchange();
                    while let Some((event, row)) = messages.recv().await {
                        // Once stopping, what is left stays in its queue.
                        if !crate::server::stopping(&stop) {
                            let verdict = bus.deliver(&consumer, &exchange, event, &row).await;
                            let _ = handled.send((row.id, verdict));
                        }
                    }
                });
                lane
            })
            .collect();
        let room = usize::from(self.config.prefetch.max(1)).min(MOST_IN_HAND);
        let mut failures = 0u32;
        let mut outcome = Ok(());
        while !crate::server::stopping(stop) && outcome.is_ok() {
            if settling.is_finished() {
                outcome = Err(anyhow::anyhow!("the consumer's settling task is gone"));
                break;
            }
            match self.fetch(service, &in_hand, room).await {
                Ok(Some(rows)) if !rows.is_empty() => {
                    failures = 0;
                    for row in rows {
                        let sent = match consumer::decode(&row.payload) {
                            Ok(event) => {
                                let lane = consumer::lane_of(&event.reservation_id, lanes);
                                senders[lane].send((event, row)).is_ok()
                            }
                            Err(reason) => {
                                tracing::error!(queue = service, %reason, "poison message dead-lettered");
                                consumer.poison();
                                handled.send((row.id, Verdict::DeadLetter(reason))).is_ok()
                            }
                        };
                        if !sent {
                            // Its messages would stay in hand for good.
                            outcome = Err(anyhow::anyhow!("a consumer task is gone"));
                            break;
                        }
                    }
                }
                Ok(None) => tokio::select! {
                    _ = in_hand.freed.notified() => {}
                    _ = tokio::time::sleep(IDLE) => {}
                    _ = stop.changed() => {}
                },
                Ok(Some(_)) => {
                    failures = 0;
                    tokio::select! {
                        _ = arrival.notified() => {}
                        _ = in_hand.freed.notified() => {}
                        _ = tokio::time::sleep(IDLE) => {}
                        _ = stop.changed() => {}
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(service, error = %format!("{error:#}"), "embedded bus consumer failed");
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.backoff(failures)) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
        drop(senders);
        while workers.join_next().await.is_some() {}
        drop(handled);
        let _ = settling.await;
        outcome
    }

    /// Up to `room` less those in hand of the messages that are due and not
    /// in hand, in order; they are in hand from now on. `None` when `room`
    /// messages are in hand already.
    async fn fetch(
        &self,
        service: &'static str,
        in_hand: &InHand,
        room: usize,
    ) -> anyhow::Result<Option<Vec<Row>>> {
        let held = in_hand.ids();
        let Some(limit) = room.checked_sub(held.len()).filter(|&n| n > 0) else {
            return Ok(None);
        };
        let limit = i64::try_from(limit)?;
        let rows = self
            .db
            .read(move |c| {
                bus_messages::table
                    .filter(bus_messages::queue.eq(service))
                    .filter(bus_messages::dead_reason.is_null())
                    .filter(bus_messages::available_at.le(time::now().naive_utc()))
                    .filter(bus_messages::id.ne_all(held))
                    .order(bus_messages::id.asc())
                    .limit(limit)
                    .select(Row::as_select())
                    .load(c)
            })
            .await?;
        in_hand.take(rows.iter().map(|row| row.id));
        Ok(Some(rows))
    }

    /// Hands one message to the handler; what becomes of it.
    async fn deliver(
        &self,
        consumer: &Consumer,
        exchange: &str,
        event: Event,
        row: &Row,
    ) -> Verdict {
        let attempt = u32::try_from(row.deliveries).unwrap_or(0) + 1;
        let trace_context = row
            .traceparent
            .as_deref()
            .map(crate::telemetry::decode_carrier)
            .unwrap_or_default();
        let delivery = consumer::Delivery {
            system: super::MESSAGING_EMBEDDED,
            exchange,
            queue: consumer.service,
            trace_context: &trace_context,
        };
        consumer
            .judge(event, attempt, &self.config, &delivery)
            .await
    }

    /// Settles handled messages as they come, those that came meanwhile
    /// together, until every sender is gone; a failed settlement is tried
    /// again. Settled messages are no longer in hand.
    async fn settle_all(
        self,
        mut handled: mpsc::UnboundedReceiver<(i64, Verdict)>,
        in_hand: Arc<InHand>,
        stop: watch::Receiver<bool>,
    ) {
        let mut failures = 0u32;
        while let Some(first) = handled.recv().await {
            let mut verdicts = vec![first];
            while let Ok(more) = handled.try_recv() {
                verdicts.push(more);
            }
            let ids: Vec<i64> = verdicts.iter().map(|(id, _)| *id).collect();
            loop {
                match self.settle(verdicts.clone()).await {
                    Ok(()) => break,
                    Err(error) => {
                        failures += 1;
                        tracing::warn!(error = %format!("{error:#}"), "embedded bus could not settle messages");
                        if crate::server::stopping(&stop) {
                            // Stopping: what is unsettled is delivered again
                            // after the restart, and the inbox absorbs it.
                            return;
                        }
                        tokio::time::sleep(self.config.backoff(failures)).await;
                    }
                }
            }
            failures = 0;
            in_hand.release(&ids);
        }
    }

    /// Settles handled messages in one transaction: the acknowledged leave
    /// their queue in one statement, the others wait for their retry or
    /// are dead-lettered.
    async fn settle(&self, verdicts: Vec<(i64, Verdict)>) -> anyhow::Result<()> {
        if verdicts.is_empty() {
            return Ok(());
        }
        self.db
            .transaction(move |c| {
                let (acked, others): (Vec<_>, Vec<_>) = verdicts
                    .into_iter()
                    .partition(|(_, verdict)| *verdict == Verdict::Ack);
                let acked: Vec<i64> = acked.into_iter().map(|(id, _)| id).collect();
                diesel::delete(bus_messages::table.filter(bus_messages::id.eq_any(acked)))
                    .execute(c)?;
                for (id, verdict) in others {
                    let row = bus_messages::table.find(id);
                    let deliveries = bus_messages::deliveries.eq(bus_messages::deliveries + 1);
                    match verdict {
                        Verdict::Ack => 0,
                        Verdict::Retry(delay) => {
                            let at = time::now()
                                + chrono::TimeDelta::from_std(delay).unwrap_or_default();
                            diesel::update(row)
                                .set((deliveries, bus_messages::available_at.eq(at.naive_utc())))
                                .execute(c)?
                        }
                        Verdict::DeadLetter(reason) => diesel::update(row)
                            .set((deliveries, bus_messages::dead_reason.eq(reason)))
                            .execute(c)?,
                    };
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Messages in `service`'s queue, not dead-lettered.
    pub async fn queue_depth(&self, service: &'static str) -> anyhow::Result<i64> {
        Ok(self
            .db
            .read(move |c| {
                bus_messages::table
                    .filter(bus_messages::queue.eq(service))
                    .filter(bus_messages::dead_reason.is_null())
                    .count()
                    .get_result(c)
            })
            .await?)
    }

    /// Messages dead-lettered from `service`'s queue.
    pub async fn dead_letter_count(&self, service: &'static str) -> anyhow::Result<i64> {
        Ok(self
            .db
            .read(move |c| {
                bus_messages::table
                    .filter(bus_messages::queue.eq(service))
                    .filter(bus_messages::dead_reason.is_not_null())
                    .count()
                    .get_result(c)
            })
            .await?)
    }
}
