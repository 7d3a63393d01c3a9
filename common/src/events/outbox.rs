//! The transactional outbox: events commit with the state change that caused
//! them, and a relay publishes them afterwards, marking each sent only once
//! the transport has confirmed it. Rows left unsent by a crash go out after
//! the restart; a row published twice (crash between confirm and mark) is
//! absorbed by the consumers' inbox.
//!
//! Every replica of a service runs a relay over the one outbox table. A
//! relay claims the rows it publishes (`claimed_until`, taken with
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL), so each row goes to the broker
//! once; the rows of a replica that dies after claiming them go to another
//! when the claim runs out (`events.claim_ms`). Consumers order a
//! reservation's events by their version, so batches published side by side
//! by two replicas need no order between them.
//!
//! Every producing service has this table, created by [`POSTGRES_MIGRATIONS`]
//! and [`SQLITE_MIGRATIONS`] in its schema:
//! `outbox(seq, event_id, routing_key, payload, traceparent, created_at, sent_at)`;
//! `traceparent` holds the trace context the event was written in
//! ([`crate::telemetry::encode_carrier`]: a bare `traceparent`, or with
//! `tracestate` and `baggage`).

use std::{sync::Arc, time::Duration};

use chrono::NaiveDateTime;
use diesel::prelude::*;
use prost::Message as _;
use ssak3_proto::events::v1::Event;
use tokio::sync::{Notify, watch};

use super::{Bus, Message};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};

use crate::{
    config::EventsConfig,
    db::{Database, DbConnection, prepared},
    metrics::{self, Metrics},
    time,
};

/// The outbox table, for a producing service's [`crate::db::Schema`].
pub const POSTGRES_MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/outbox/postgres");
pub const SQLITE_MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/outbox/sqlite");

diesel::table! {
    outbox (seq) {
        seq -> BigInt,
        event_id -> Text,
        routing_key -> Text,
        payload -> Binary,
        traceparent -> Nullable<Text>,
        created_at -> Timestamp,
        sent_at -> Nullable<Timestamp>,
        claimed_until -> Nullable<Timestamp>,
    }
}

#[derive(QueryableByName)]
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
    record_all(conn, std::slice::from_ref(event))
}

/// Adds `events` to the outbox in one statement, in order (the relay
/// publishes them in that order); call it inside the transaction that
/// changes the state.
pub fn record_all(conn: &mut DbConnection, events: &[Event]) -> QueryResult<()> {
    use diesel::sql_types::{Binary, Nullable, Text, Timestamp};
    if events.is_empty() {
        return Ok(());
    }
    let now = time::now().naive_utc();
    let sql = format!(
        "INSERT INTO outbox (event_id, routing_key, payload, traceparent, created_at) VALUES {}",
        crate::db::rows(events.len(), 5, 1)
    );
    events
        .iter()
        .fold(crate::db::multi_row(sql, events.len()), |insert, event| {
            insert
                .bind::<Text, _>(event.event_id.as_str())
                .bind::<Text, _>(event.event_type.as_str())
                .bind::<Binary, _>(event.encode_to_vec())
                .bind::<Nullable<Text>, _>(crate::telemetry::encode_carrier(
                    &super::trace_context_of(event),
                ))
                .bind::<Timestamp, _>(now)
        })
        .execute(conn)
        .map(drop)
}

/// Claims up to `limit` of the oldest unsent rows that no other replica
/// holds a live claim on, until `until`, and returns them in order. On
/// PostgreSQL, rows another replica is claiming at this moment are skipped
/// (`FOR UPDATE SKIP LOCKED`) rather than waited for; SQLite has one writer.
fn claim(
    conn: &mut DbConnection,
    limit: i64,
    now: NaiveDateTime,
    until: NaiveDateTime,
) -> QueryResult<Vec<Row>> {
    use diesel::sql_types::{BigInt, Timestamp};
    // One text per backend.
    let mut rows: Vec<Row> = prepared(format!(
        "UPDATE outbox SET claimed_until = $1 WHERE seq IN (\
           SELECT seq FROM outbox \
           WHERE sent_at IS NULL AND (claimed_until IS NULL OR claimed_until < $2) \
           ORDER BY seq LIMIT $3 {}) \
         RETURNING seq, event_id, routing_key, payload, traceparent",
        conn.skip_locked()
    ))
    .bind::<Timestamp, _>(until)
    .bind::<Timestamp, _>(now)
    .bind::<BigInt, _>(limit)
    .load(conn)?;
    rows.sort_unstable_by_key(|row| row.seq);
    Ok(rows)
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

/// What the relay reports: how far behind it is, and how publishing goes.
#[derive(Clone, Debug)]
struct RelayMetrics {
    published: Counter,
    publish_duration: Histogram,
}

/// Publishes a service's outbox.
#[derive(Debug)]
pub struct Relay {
    /// The service whose outbox it publishes (its spans are this service's).
    service: &'static str,
    db: Database,
    bus: Bus,
    waker: Waker,
    config: EventsConfig,
    metrics: RelayMetrics,
}

/// How often the relay looks at the outbox when nobody wakes it.
const POLL: Duration = Duration::from_millis(500);
/// How long sent rows are kept (for inspection) before they are pruned.
const KEEP_SENT: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// How long the relay keeps trying to empty the outbox once asked to stop.
const FLUSH: Duration = Duration::from_secs(2);

impl Relay {
    /// A relay for `service`'s outbox in `db`; its backlog and publishing
    /// show in `metrics`.
    pub fn new(
        service: &'static str,
        db: Database,
        bus: Bus,
        config: &EventsConfig,
        metrics: &Metrics,
    ) -> Self {
        let backlog_db = db.clone();
        let gauge = metrics.register(
            "outbox_backlog",
            "Events committed but not yet confirmed by the broker",
            Gauge::<i64>::default(),
        );
        let relay_metrics = RelayMetrics {
            published: metrics.register(
                "outbox_published",
                "Events the broker confirmed",
                Counter::default(),
            ),
            publish_duration: metrics.register(
                "outbox_publish_duration_seconds",
                "Time to publish a batch and have it confirmed",
                metrics::latency(),
            ),
        };
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
            service,
            db,
            bus,
            waker: Waker::default(),
            config: config.clone(),
            metrics: relay_metrics,
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
            if crate::server::stopping(&stop) {
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

    /// Claims the oldest unsent rows and publishes them; returns how many went out.
    async fn publish_batch(&self) -> anyhow::Result<usize> {
        let limit = self.config.relay_batch;
        let now = time::now();
        let until = now + chrono::TimeDelta::milliseconds(self.config.claim_ms as i64);
        let rows = self
            .db
            .write(move |c| claim(c, limit, now.naive_utc(), until.naive_utc()))
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        // A producer span per event, in the trace of the work that wrote it;
        // consumers continue from the producer span. They end with the batch.
        let mut spans = Vec::with_capacity(rows.len());
        let exchange = super::Names::new(&self.config).exchange();
        let system = self.bus.messaging_system();
        let messages: Vec<Message> = rows
            .into_iter()
            .map(|r| {
                // The semantic conventions for messaging (RabbitMQ): the
                // destination is the exchange, the routing key an attribute.
                let span = tracing::info_span!(
                    "publish",
                    otel.name = %format!("publish {exchange}"),
                    otel.kind = "producer",
                    otel.status_code = tracing::field::Empty,
                    messaging.system = system,
                    messaging.operation.type = "send",
                    messaging.operation.name = "publish",
                    messaging.destination.name = %exchange,
                    messaging.rabbitmq.destination.routing_key = %r.routing_key,
                    messaging.message.id = %r.event_id,
                    error.type = tracing::field::Empty,
                    trace_id = tracing::field::Empty,
                );
                let written_in = r
                    .traceparent
                    .as_deref()
                    .map(crate::telemetry::decode_carrier)
                    .unwrap_or_default();
                crate::telemetry::join(&span, self.service, &written_in);
                let trace_context = crate::telemetry::carrier_of(&span);
                spans.push(span);
                Message {
                    event_id: r.event_id,
                    routing_key: r.routing_key,
                    payload: r.payload,
                    trace_context,
                }
            })
            .collect();
        let started = std::time::Instant::now();
        let (confirmed, failure) = match self.bus.publish(&messages).await {
            Ok(()) => (messages.len(), None),
            Err(e) => (e.confirmed, Some(e.source)),
        };
        self.metrics
            .publish_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.published.inc_by(confirmed as u64);
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
        if failure.is_some() {
            for span in &spans[confirmed..] {
                span.record("otel.status_code", "error");
                span.record("error.type", "unconfirmed");
            }
        }
        drop(spans);
        match failure {
            Some(error) => {
                // Not published: free the rest at once for the next attempt
                // (of this replica or another) instead of when the claim runs out.
                let unsent: Vec<i64> = seqs[confirmed..].to_vec();
                let _ = self
                    .db
                    .write(move |c| {
                        diesel::update(outbox::table.filter(outbox::seq.eq_any(unsent)))
                            .set(outbox::claimed_until.eq(None::<NaiveDateTime>))
                            .execute(c)
                    })
                    .await;
                Err(error)
            }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use chrono::TimeDelta;
    use ssak3_proto::events::v1::{CleaningCompleted, event::Payload};

    use super::*;
    use crate::db::{DatabaseUrl, Schema};

    const SCHEMA: Schema = Schema {
        postgres: &[POSTGRES_MIGRATIONS],
        sqlite: &[SQLITE_MIGRATIONS],
    };

    /// An outbox holding `n` events.
    async fn outbox_with(url: &DatabaseUrl, n: usize) -> anyhow::Result<Database> {
        url.create_if_missing()?;
        let db = Database::connect(url, 4)?;
        db.migrate(SCHEMA).await?;
        db.write(move |c| {
            for _ in 0..n {
                let payload = Payload::CleaningCompleted(CleaningCompleted::default());
                record(c, &crate::events::new_event("r-1", 3, payload))?;
            }
            Ok(())
        })
        .await?;
        Ok(db)
    }

    fn seqs(rows: &[Row]) -> BTreeSet<i64> {
        rows.iter().map(|row| row.seq).collect()
    }

    /// Two replicas claiming at the same time on PostgreSQL never get the same row.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_claiming_side_by_side_share_the_rows_out() -> anyhow::Result<()> {
        let url = crate::db::scratch_postgres()?;
        let first = outbox_with(&url, 200).await?;
        let second = Database::connect(&url, 4)?;
        let claim_all = |db: Database| async move {
            let mut claimed = Vec::new();
            loop {
                let now = time::now().naive_utc();
                let rows = db
                    .write(move |c| claim(c, 7, now, now + TimeDelta::seconds(60)))
                    .await?;
                if rows.is_empty() {
                    return Ok::<_, anyhow::Error>(claimed);
                }
                claimed.extend(seqs(&rows));
            }
        };
        let (a, b) = tokio::join!(claim_all(first.clone()), claim_all(second));
        let (a, b) = (a?, b?);
        drop(first);
        url.drop_if_exists()?;
        let (a_set, b_set): (BTreeSet<i64>, BTreeSet<i64>) =
            (a.iter().copied().collect(), b.iter().copied().collect());
        assert_eq!(a.len() + b.len(), 200, "a row was claimed twice");
        assert!(a_set.is_disjoint(&b_set));
        assert_eq!(a_set.union(&b_set).count(), 200);
        Ok(())
    }

    /// A replica that claimed rows and died holds them only until its claim
    /// runs out; then another replica gets them, oldest first.
    async fn a_dead_replicas_claim_runs_out(url: DatabaseUrl) -> anyhow::Result<()> {
        let db = outbox_with(&url, 5).await?;
        let now = time::now().naive_utc();
        let lease = TimeDelta::seconds(10);
        let dead = db.write(move |c| claim(c, 3, now, now + lease)).await?;
        assert_eq!(seqs(&dead).len(), 3);
        let others = db.write(move |c| claim(c, 10, now, now + lease)).await?;
        assert!(seqs(&dead).is_disjoint(&seqs(&others)));
        assert_eq!(others.len(), 2);
        let before_expiry = now + lease - TimeDelta::milliseconds(1);
        let nothing = db
            .write(move |c| claim(c, 10, before_expiry, before_expiry + lease))
            .await?;
        assert!(nothing.is_empty(), "a live claim was taken");
        let later = now + lease * 2 + TimeDelta::milliseconds(1);
        let taken_over = db
            .write(move |c| claim(c, 10, later, later + lease))
            .await?;
        assert_eq!(seqs(&taken_over).len(), 5);
        assert!(
            taken_over.windows(2).all(|w| w[0].seq < w[1].seq),
            "oldest first"
        );
        drop(db);
        url.drop_if_exists()
    }

    /// Claiming rows on PostgreSQL leaves their indexes alone: the claimed
    /// version fits on the row's page, as a heap-only update.
    #[tokio::test]
    async fn claims_are_heap_only_updates_on_postgres() -> anyhow::Result<()> {
        #[derive(QueryableByName)]
        struct Updates {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n_tup_upd: i64,
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n_tup_hot_upd: i64,
        }
        let url = crate::db::scratch_postgres()?;
        let db = outbox_with(&url, 300).await?;
        let now = time::now().naive_utc();
        let updates = db
            .write(move |c| {
                c.transaction(|c| {
                    let claimed = claim(c, 300, now, now + TimeDelta::seconds(60))?;
                    assert_eq!(claimed.len(), 300);
                    // This transaction's own writes, before they reach the statistics.
                    diesel::sql_query(
                        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables \
                         WHERE relname = 'outbox'",
                    )
                    .get_result::<Updates>(c)
                })
            })
            .await?;
        drop(db);
        url.drop_if_exists()?;
        assert_eq!(updates.n_tup_upd, 300);
        assert!(
            updates.n_tup_hot_upd * 10 >= updates.n_tup_upd * 9,
            "{} of {} claims added index entries",
            updates.n_tup_upd - updates.n_tup_hot_upd,
            updates.n_tup_upd
        );
        Ok(())
    }

    /// A relay whose owner is gone without telling it to stop (its stop
    /// signal's sender dropped) publishes what is left and ends, rather
    /// than polling the outbox in a loop without pause.
    #[tokio::test]
    async fn a_relay_whose_stop_signal_is_gone_ends() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = outbox_with(&DatabaseUrl::Sqlite(dir.path().join("outbox.db")), 3).await?;
        let config = EventsConfig::default();
        let bus = Bus::Embedded(
            crate::events::embedded::EmbeddedBus::open(
                &dir.path().join("events.db"),
                &config,
                crate::events::Topology::new([]),
            )
            .await?,
        );
        let relay = Relay::new("payment", db.clone(), bus, &config, &Metrics::new());
        let (stop_tx, stop) = watch::channel(false);
        drop(stop_tx);
        tokio::time::timeout(Duration::from_secs(10), relay.run(stop))
            .await
            .map_err(|_| anyhow::anyhow!("the relay did not end"))?;
        assert_eq!(db.read(backlog).await?, 0, "what was left is published");
        Ok(())
    }

    #[tokio::test]
    async fn a_dead_replicas_claim_runs_out_on_postgres() -> anyhow::Result<()> {
        a_dead_replicas_claim_runs_out(crate::db::scratch_postgres()?).await
    }

    #[tokio::test]
    async fn a_dead_replicas_claim_runs_out_on_sqlite() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        a_dead_replicas_claim_runs_out(DatabaseUrl::Sqlite(dir.path().join("outbox.db"))).await
    }
}
