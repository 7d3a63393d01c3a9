//! The in-process event bus of the one-process mode, durable in a SQLite
//! file so it keeps RabbitMQ's guarantees without a broker: a publish
//! returns once the event is stored for every subscribing queue, and a
//! message leaves its queue only when the consumer's transaction has
//! committed. A process killed mid-way delivers the rest after it restarts.

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use chrono::NaiveDateTime;
use diesel::prelude::*;
use tokio::sync::{Notify, watch};

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

    /// Hands `service`'s messages to `handler` in order until `stop`.
    pub async fn consume(&self, consumer: Consumer, mut stop: watch::Receiver<bool>) {
        let service = consumer.service;
        let idle = Notify::new();
        let arrival = self.arrivals.get(service).unwrap_or(&idle);
        let mut failures = 0u32;
        while !*stop.borrow() {
            let wait = match self.deliver_ready(&consumer, &stop).await {
                Ok(0) => {
                    failures = 0;
                    IDLE
                }
                Ok(_) => {
                    failures = 0;
                    continue;
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(service, error = %format!("{error:#}"), "embedded bus consumer failed");
                    self.config.backoff(failures)
                }
            };
            tokio::select! {
                _ = arrival.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Delivers the messages that are due; returns how many it settled.
    ///
    /// Like the broker's consumers, it hands them over in lanes keyed by
    /// reservation: one reservation's events in turn, in the order they
    /// were published (one to be retried comes again later, as on
    /// RabbitMQ), and the lanes side by side, so that the handler's writes
    /// of several events can share its batches. The messages handled are
    /// then settled together, in one transaction; a crash before that
    /// delivers them again, and the handler's inbox absorbs them. The next
    /// fetch waits for the slowest message of this one.
    async fn deliver_ready(
        &self,
        consumer: &Consumer,
        stop: &watch::Receiver<bool>,
    ) -> anyhow::Result<usize> {
        let service = consumer.service;
        let limit = i64::from(self.config.prefetch.max(1));
        let rows = self
            .db
            .read(move |c| {
                bus_messages::table
                    .filter(bus_messages::queue.eq(service))
                    .filter(bus_messages::dead_reason.is_null())
                    .filter(bus_messages::available_at.le(time::now().naive_utc()))
                    .order(bus_messages::id.asc())
                    .limit(limit)
                    .select(Row::as_select())
                    .load(c)
            })
            .await?;
        let lanes = self.config.lanes.max(1);
        let mut settled = Vec::with_capacity(rows.len());
        let mut by_lane: Vec<Vec<(Event, Row)>> = (0..lanes).map(|_| Vec::new()).collect();
        for row in rows {
            match consumer::decode(&row.payload) {
                Ok(event) => {
                    let lane = consumer::lane_of(&event.reservation_id, lanes);
                    by_lane[lane].push((event, row));
                }
                Err(reason) => {
                    tracing::error!(queue = service, %reason, "poison message dead-lettered");
                    consumer.poison();
                    settled.push((row.id, Verdict::DeadLetter(reason)));
                }
            }
        }
        let handled = futures_util::future::join_all(
            by_lane
                .into_iter()
                .filter(|lane| !lane.is_empty())
                .map(|lane| self.deliver_lane(consumer, lane, stop)),
        )
        .await;
        settled.extend(handled.into_iter().flatten());
        let count = settled.len();
        self.settle(settled).await?;
        Ok(count)
    }

    /// Hands one lane's messages to the handler in turn, until `stop`.
    async fn deliver_lane(
        &self,
        consumer: &Consumer,
        lane: Vec<(Event, Row)>,
        stop: &watch::Receiver<bool>,
    ) -> Vec<(i64, Verdict)> {
        let exchange = super::Names::new(&self.config).exchange();
        let mut verdicts = Vec::with_capacity(lane.len());
        for (event, row) in lane {
            if *stop.borrow() {
                break;
            }
            let attempt = u32::try_from(row.deliveries).unwrap_or(0) + 1;
            let trace_context = row
                .traceparent
                .as_deref()
                .map(crate::telemetry::decode_carrier)
                .unwrap_or_default();
            let delivery = consumer::Delivery {
                system: super::MESSAGING_EMBEDDED,
                exchange: &exchange,
                queue: consumer.service,
                trace_context: &trace_context,
            };
            let verdict = consumer
                .judge(event, attempt, &self.config, &delivery)
                .await;
            verdicts.push((row.id, verdict));
        }
        verdicts
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
