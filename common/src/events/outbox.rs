//! The transactional outbox: events commit with the state change that caused
//! them, and a relay publishes them afterwards, marking each sent only once
//! the transport has confirmed it. Rows left unsent by a crash go out after
//! the restart; a row published twice (crash between confirm and mark) is
//! absorbed by the consumers' inbox.
//!
//! Every producing service has this table (see its migrations):
//! `outbox(seq, event_id, routing_key, payload, traceparent, created_at, sent_at)`.

use std::{sync::Arc, time::Duration};

use chrono::NaiveDateTime;
use diesel::prelude::*;
use prost::Message as _;
use ssak3_proto::events::v1::Event;
use tokio::sync::{Notify, watch};

use super::{Bus, Message};
use crate::{
    config::EventsConfig,
    db::{Database, DbConnection},
    metrics::Metrics,
    time,
};

diesel::table! {
    outbox (seq) {
        seq -> BigInt,
        event_id -> Text,
        routing_key -> Text,
        payload -> Binary,
        traceparent -> Nullable<Text>,
        created_at -> Timestamp,
        sent_at -> Nullable<Timestamp>,
    }
}

#[derive(Insertable)]
#[diesel(table_name = outbox)]
struct NewRow<'a> {
    event_id: &'a str,
    routing_key: &'a str,
    payload: Vec<u8>,
    traceparent: Option<&'a str>,
    created_at: NaiveDateTime,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = outbox)]
struct Row {
    seq: i64,
    event_id: String,
    routing_key: String,
    payload: Vec<u8>,
    traceparent: Option<String>,
}

/// Adds `event` to the outbox; call it inside the transaction that changes the state.
pub fn record(conn: &mut DbConnection, event: &Event) -> QueryResult<()> {
    diesel::insert_into(outbox::table)
        .values(NewRow {
            event_id: &event.event_id,
            routing_key: &event.event_type,
            payload: event.encode_to_vec(),
            traceparent: Some(event.traceparent.as_str()).filter(|t| !t.is_empty()),
            created_at: time::now().naive_utc(),
        })
        .execute(conn)
        .map(drop)
}

/// Events recorded but not yet confirmed by the transport.
pub fn backlog(conn: &mut DbConnection) -> QueryResult<i64> {
    outbox::table
        .filter(outbox::sent_at.is_null())
        .count()
        .get_result(conn)
}

/// Tells the relay that events were committed, so it need not wait for its next poll.
#[derive(Clone, Debug, Default)]
pub struct Waker(Arc<Notify>);

impl Waker {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// Publishes a service's outbox.
#[derive(Debug)]
pub struct Relay {
    db: Database,
    bus: Bus,
    waker: Waker,
    config: EventsConfig,
    metrics: Arc<Metrics>,
}

/// How often the relay looks at the outbox when nobody wakes it.
const POLL: Duration = Duration::from_millis(500);
/// How long sent rows are kept (for inspection) before they are pruned.
const KEEP_SENT: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// How long the relay keeps trying to empty the outbox once asked to stop.
const FLUSH: Duration = Duration::from_secs(2);

impl Relay {
    /// A relay for `db`'s outbox; its backlog and publishing show in `metrics`.
    pub fn new(db: Database, bus: Bus, config: &EventsConfig, metrics: Arc<Metrics>) -> Self {
        let backlog_db = db.clone();
        let gauge = metrics.outbox_backlog.clone();
        metrics.on_scrape(Box::new(move || {
            let db = backlog_db.clone();
            let gauge = gauge.clone();
            Box::pin(async move {
                if let Ok(n) = db.read(backlog).await {
                    gauge.set(n);
                }
            })
        }));
        Self {
            db,
            bus,
            waker: Waker::default(),
            config: config.clone(),
            metrics,
        }
    }

    /// The handle that producers call after committing events.
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// Publishes until `stop` turns true, then makes a last bounded attempt
    /// to empty the outbox.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut failures = 0u32;
        let mut last_prune = std::time::Instant::now();
        loop {
            if *stop.borrow() {
                break;
            }
            let delay = match self.publish_batch().await {
                Ok(0) => {
                    failures = 0;
                    if last_prune.elapsed() > Duration::from_secs(60) {
                        last_prune = std::time::Instant::now();
                        if let Err(error) = self.prune().await {
                            tracing::warn!(%error, "pruning the outbox failed");
                        }
                    }
                    POLL
                }
                Ok(_) => {
                    failures = 0;
                    continue;
                }
                Err(error) => {
                    failures += 1;
                    let delay = self.config.backoff(failures);
                    tracing::warn!(error = %format!("{error:#}"), retry_in = ?delay, "outbox relay cannot publish");
                    delay
                }
            };
            tokio::select! {
                _ = self.waker.0.notified(), if failures == 0 => {}
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => {}
            }
        }
        let flush = async {
            while let Ok(n) = self.publish_batch().await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(FLUSH, flush).await;
    }

    /// Publishes the oldest unsent rows; returns how many went out.
    async fn publish_batch(&self) -> anyhow::Result<usize> {
        let limit = self.config.relay_batch;
        let rows = self
            .db
            .read(move |c| {
                outbox::table
                    .filter(outbox::sent_at.is_null())
                    .order(outbox::seq.asc())
                    .limit(limit)
                    .select(Row::as_select())
                    .load(c)
            })
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        // A producer span per event, in the trace of the work that wrote it;
        // consumers continue from the producer span. They end with the batch.
        let mut spans = Vec::with_capacity(rows.len());
        let messages: Vec<Message> = rows
            .into_iter()
            .map(|r| {
                let span = tracing::info_span!(
                    "publish",
                    otel.name = %format!("{} publish", r.routing_key),
                    otel.kind = "producer",
                    messaging.operation.type = "send",
                    messaging.destination.name = %r.routing_key,
                    messaging.message.id = %r.event_id,
                    trace_id = tracing::field::Empty,
                );
                crate::telemetry::join(&span, r.traceparent.as_deref());
                let traceparent = crate::telemetry::traceparent_of(&span).or(r.traceparent);
                spans.push(span);
                Message {
                    event_id: r.event_id,
                    routing_key: r.routing_key,
                    payload: r.payload,
                    traceparent,
                }
            })
            .collect();
        let started = std::time::Instant::now();
        let (confirmed, failure) = match self.bus.publish(&messages).await {
            Ok(()) => (messages.len(), None),
            Err(e) => (e.confirmed, Some(e.source)),
        };
        self.metrics
            .outbox_publish_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.outbox_published.inc_by(confirmed as u64);
        if confirmed > 0 {
            let sent: Vec<i64> = seqs[..confirmed].to_vec();
            self.db
                .write(move |c| {
                    diesel::update(outbox::table.filter(outbox::seq.eq_any(sent)))
                        .set(outbox::sent_at.eq(time::now().naive_utc()))
                        .execute(c)
                })
                .await?;
        }
        drop(spans);
        match failure {
            Some(error) => Err(error),
            None => Ok(confirmed),
        }
    }

    async fn prune(&self) -> anyhow::Result<()> {
        let cutoff = (time::now() - KEEP_SENT).naive_utc();
        self.db
            .write(move |c| {
                diesel::delete(outbox::table.filter(outbox::sent_at.lt(cutoff))).execute(c)
            })
            .await?;
        Ok(())
    }
}
